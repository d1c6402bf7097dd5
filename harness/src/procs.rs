//! Processes as Linux's `/proc` shows them: whether one is alive, its state
//! and process group, its command line, and which processes carry a marker
//! in their environment. Tests and the benchmark use it to prove that
//! nothing a test started outlives it, and to kill only what is theirs.
//!
//! A process that vanishes between the listing and the reading of its files
//! simply does not count: every reader returns `None`, `false` or an empty
//! value for it.

/// The environment variable that marks a test's processes: a test exports
/// `BATON_ORPHAN_MARK=MARKER`, and [`marked`] finds every process that
/// inherited it, whatever it forked or renamed itself to.
pub const MARK_VAR: &str = "BATON_ORPHAN_MARK";

/// The fields of `/proc/PID/stat` after the command name (which is in
/// parentheses and may hold anything): state, ppid, pgrp, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The state letter (`R`, `S`, `T` for stopped, `Z` for a zombie, ...), or
/// `None` when there is no such process.
pub fn state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Whether `pid` is a live process: a zombie waiting to be reaped is not.
pub fn alive(pid: i32) -> bool {
    !matches!(state(pid), None | Some('Z' | 'X'))
}

/// The process group of a process.
pub fn pgid(pid: i32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// The command line, its arguments joined by spaces (empty when unreadable).
pub fn cmdline(pid: i32) -> String {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&bytes).replace('\0', " ").trim_end().to_string()
}

/// Every process id.
fn pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Live processes whose environment carries `MARK_VAR=marker`.
pub fn marked(marker: &str) -> Vec<i32> {
    let needle = format!("{MARK_VAR}={marker}").into_bytes();
    pids()
        .into_iter()
        .filter(|pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|byte| *byte == 0).any(|var| var == needle.as_slice()) && alive(*pid)
        })
        .collect()
}

/// Live processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    pids().into_iter().filter(|pid| self::pgid(*pid) == Some(pgid) && alive(*pid)).collect()
}

/// SIGKILLs `pid` if its command line contains `needle` (a work folder of
/// the caller's own), so that a pid read from a file that outlived its
/// process never kills a stranger. Returns whether it sent the signal.
pub fn kill_if_cmdline_contains(pid: i32, needle: &str) -> bool {
    if !cmdline(pid).contains(needle) {
        return false;
    }
    // SAFETY: kill(2) on a pid whose command line names the caller's folder;
    // no memory is involved.
    unsafe { libc::kill(pid, libc::SIGKILL) == 0 }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    #[test]
    fn a_marked_child_is_found_alive_then_gone() {
        let marker = format!("procs-test-{}", std::process::id());
        let mut child = Command::new("sleep")
            .arg("60")
            .env(MARK_VAR, &marker)
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep runs");
        let pid = child.id() as i32;
        let found = crate::wait_for("the marked child", crate::PATIENCE, || {
            Some(marked(&marker)).filter(|pids| !pids.is_empty())
        });
        assert_eq!(found.unwrap(), [pid]);
        assert!(alive(pid));
        assert_eq!(cmdline(pid), "sleep 60");
        assert_eq!(pgid(pid), pgid(std::process::id() as i32), "same group as the test");
        assert!(kill_if_cmdline_contains(pid, "sleep 60"));
        child.wait().unwrap();
        assert!(!alive(pid));
        assert_eq!(marked(&marker), Vec::<i32>::new());
        assert!(!kill_if_cmdline_contains(pid, "sleep"), "no such process any more");
    }
}
