//! Reading a file of the checked-out tree whose size and kind the
//! repository decides (`.baton.toml`, JUnit reports): only a regular file
//! (a link may point at one), with a cap on the read itself. A size checked
//! first says nothing of a file that grows, and a link to `/dev/zero`
//! reports 0 bytes and never ends; one to a FIFO or a terminal would block
//! the read (and the open: it is made non-blocking).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The whole file at `path`, or `None` when it holds more than `max` bytes
/// (reading stops one byte past `max`).
///
/// # Errors
/// Opening or reading the file; a path that is not a regular file.
pub fn read_at_most(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let file: File = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
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
    fn a_device_or_a_fifo_is_refused_without_reading_it() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        for path in [Path::new("/dev/zero"), &fifo] {
            let err = read_at_most(path, 1024).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{}", path.display());
        }
    }
}
