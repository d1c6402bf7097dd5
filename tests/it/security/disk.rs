//! A full disk degrades the dispatcher without losing what it acknowledged
//! (issue 12; the test with running tasks is `full_disk`).

use super::*;
use crate::support::{unless_opted_out, Tmpfs};

#[test]
fn a_full_disk_degrades_the_dispatcher_without_losing_what_it_acknowledged() {
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
    // A full disk degrades the dispatcher (issue 12): it rolls the batch
    // back, rebuilds its memory from the database, serves reads and refuses
    // submissions with a clear reason until space returns.
    wait_for("the dispatcher to report its data dir full", || {
        let output = baton(&dispatcher.addr, &["status", "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).ok()?;
        status["data_dir_full"].is_object().then_some(())
    });
    wait_logged(&dispatcher.daemon, "data dir full");
    let output =
        submit(&dispatcher.addr, &[], WITNESS_REPO, &"f".repeat(40)).expect_err("accepted on a full disk");
    assert!(String::from_utf8_lossy(&output.stderr).contains("data dir full"), "{output:?}");
    for id in &acknowledged {
        let task = show(&dispatcher.addr, id).unwrap_or_else(|| panic!("acknowledged task {id} was lost"));
        assert_eq!(task["state"], "pending", "{task:#}");
    }

    // With room again it resumes by itself; a restart serves every
    // acknowledged task too.
    std::fs::remove_file(&filler).unwrap();
    wait_for("the dispatcher to resume", || {
        let output = baton(&dispatcher.addr, &["status", "--json"]);
        let status: Value = serde_json::from_slice(&output.stdout).ok()?;
        status["data_dir_full"].is_null().then_some(())
    });
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
