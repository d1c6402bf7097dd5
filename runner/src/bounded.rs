//! Reading a file of the checked-out tree whose size the repository decides
//! (`.baton.toml`, JUnit reports) with a cap on the read itself: a size
//! checked first says nothing of a file that grows, or of a link to
//! `/dev/zero`, which reports 0 bytes and never ends.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// The whole file at `path`, or `None` when it holds more than `max` bytes
/// (reading stops one byte past `max`).
///
/// # Errors
/// Opening or reading the file.
pub fn read_at_most(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_within_the_cap_is_read_whole_and_a_longer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.xml");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_at_most(&path, 5).unwrap().as_deref(), Some(&b"12345"[..]));
        assert_eq!(read_at_most(&path, 4).unwrap(), None);
    }

    #[test]
    fn an_endless_file_is_refused_after_the_cap() {
        assert_eq!(read_at_most(Path::new("/dev/zero"), 1024).unwrap(), None);
    }
}
