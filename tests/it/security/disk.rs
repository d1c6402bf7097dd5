//! A full disk stops the dispatcher without losing what it acknowledged.

use super::*;
use crate::support::{unless_opted_out, Tmpfs};

#[test]
fn a_full_disk_stops_the_dispatcher_without_losing_what_it_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mount_point = tmp.path().join("small");
    // A 2 MiB filesystem needs mount(2), which needs root: CI runs as root,
    // and a developer without it opts out explicitly (`harness::system`).
    let mounted = unless_opted_out(Tmpfs::mount(&mount_point, "2m"), "the full-disk test");
    let Some(_mount) = support::ok(mounted) else { return };
    let data_dir = mount_point.join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    // The log stays outside the small filesystem, so the reason is written.
    let data_arg = data_dir.display().to_string();
    let args = ["--listen", "127.0.0.1:0", "--data-dir", &data_arg];
    let mut dispatcher = Dispatcher::start_with(&data_dir, &args, &[], tmp.path().join("dispatcher.log"));
    let mut acknowledged = vec![submit_witness(&dispatcher.addr, &[])];

    // Fill the disk, then submit until the dispatcher can no longer commit.
    let filler = mount_point.join("filler");
    fill(&filler);
    let mut refused = None;
    for n in 0..64 {
        match submit(&dispatcher.addr, &[], WITNESS_REPO, &format!("{n:040x}")) {
            Ok(id) => acknowledged.push(id),
            Err(output) => {
                refused = Some(output);
                break;
            }
        }
    }
    let output = refused.expect("64 submissions acknowledged on a full disk");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(!stderr.trim().is_empty(), "a refused submission without a reason");
    // Storage failures stop the dispatcher with a clear error (see
    // ARCHITECTURE.md) rather than let its memory run ahead of the database.
    wait_for("the dispatcher to stop", || {
        (baton(&dispatcher.addr, &["status"]).status.code() == Some(2)).then_some(())
    });
    wait_logged(&dispatcher.daemon, "disk is full");

    // With room again, a restart serves every acknowledged task.
    std::fs::remove_file(&filler).unwrap();
    dispatcher.restart(&[]);
    for id in &acknowledged {
        let task = show(&dispatcher.addr, id).unwrap_or_else(|| panic!("acknowledged task {id} was lost"));
        assert_eq!(task["state"], "pending", "{task:#}");
    }
    let after =
        submit(&dispatcher.addr, &[], WITNESS_REPO, &"e".repeat(40)).expect("a submission after the restart");
    assert_still_serving(&dispatcher.addr, &[], &after);
    assert_still_serving(&dispatcher.addr, &[], &acknowledged[0]);
}
