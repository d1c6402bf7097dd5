//! Degraded, not dead, on a full data dir (issue 12, item 2).
//!
//! The scheduler enters this mode when a write into the data dir fails for
//! lack of space, or at start-up when less than [`MIN_FREE`] is left. While
//! in it: reads are served, submissions refused with "data dir full: N
//! bytes free", runners kept connected (they keep their spools), output not
//! written (it is asked for again later), and `baton status` says so. Each
//! heartbeat tick looks at the free space; with [`RESUME_FREE`] back the
//! mode ends by itself and the missing output is asked for again.

use std::path::{Path, PathBuf};

/// Below this (or an eighth of a small filesystem), the data dir counts as
/// full at start-up.
pub const MIN_FREE: u64 = 1 << 20;

/// Free space that ends the mode (or a quarter of a small filesystem):
/// more than [`MIN_FREE`], so that one freed log does not make the
/// dispatcher flap in and out of it.
pub const RESUME_FREE: u64 = 4 << 20;

/// Whether the data dir is full, and how it is measured.
#[derive(Debug)]
pub struct Disk {
    root: PathBuf,
    /// The bytes free when the mode was entered or last measured; `None`
    /// while there is room.
    full: Option<u64>,
}

impl Disk {
    /// Measures `root` now: full if less than [`MIN_FREE`] is left.
    pub fn new(root: &Path) -> Disk {
        let mut disk = Disk { root: root.to_path_buf(), full: None };
        let low = |(free, total): (u64, u64)| free < MIN_FREE.min(total / 8);
        if let Some((free, _)) = space(root).filter(|space| low(*space)) {
            tracing::warn!(bytes_free = free, data_dir = %root.display(), "data dir full at start-up; serving reads only until space returns");
            disk.full = Some(free);
        }
        disk
    }

    /// `Some(bytes free)` while the data dir is full.
    pub fn full(&self) -> Option<u64> {
        self.full
    }

    /// A write failed: enter the mode if the failure was for lack of space.
    ///
    /// # Returns
    /// Whether the error is a full disk.
    pub fn write_failed(&mut self, err: &anyhow::Error) -> bool {
        if !is_disk_full(err) {
            return false;
        }
        if self.full.is_none() {
            let free = space(&self.root).map_or(0, |(free, _)| free);
            tracing::error!(
                bytes_free = free,
                "data dir full: refusing submissions and holding output until space returns"
            );
            self.full = Some(free);
        }
        true
    }

    /// While full: measures again.
    ///
    /// # Returns
    /// True when the mode just ended.
    pub fn check(&mut self) -> bool {
        if self.full.is_none() {
            return false;
        }
        let (free, total) = space(&self.root).unwrap_or((0, 0));
        if free >= RESUME_FREE.min(total / 4) && free > 0 {
            tracing::info!(bytes_free = free, "data dir has room again; resuming");
            self.full = None;
            return true;
        }
        self.full = Some(free);
        false
    }

    /// The refusal a submission gets while the disk is full.
    pub fn refusal(&self) -> Option<String> {
        self.full.map(|free| format!("data dir full: {free} bytes free; try again later"))
    }
}

/// Whether an error (anywhere in its chain) is ENOSPC, EDQUOT or SQLite's
/// SQLITE_FULL.
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                || io.kind() == std::io::ErrorKind::StorageFull;
        }
        if let Some(rusqlite::Error::SqliteFailure(failure, _)) = cause.downcast_ref::<rusqlite::Error>() {
            return failure.code == rusqlite::ErrorCode::DiskFull;
        }
        false
    })
}

/// Bytes available to unprivileged writers on the filesystem of `path`,
/// and its size.
pub fn space(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to
    // writable memory of the right type; statvfs only writes to it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    Some((stat.f_bavail.saturating_mul(stat.f_frsize), stat.f_blocks.saturating_mul(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_anywhere_in_the_chain_is_a_full_disk() {
        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let err = anyhow::Error::new(io).context("writing logs/1.log");
        assert!(is_disk_full(&err));
        let other = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(!is_disk_full(&other));
    }

    #[test]
    fn free_space_of_a_real_directory_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = space(dir.path()).unwrap();
        assert!(free <= total);
        let disk = Disk::new(dir.path());
        assert_eq!(disk.refusal().is_some(), disk.full().is_some());
    }
}
