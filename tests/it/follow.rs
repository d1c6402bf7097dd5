//! `baton log --follow` shows exactly the stored log (issue 11, item 1): a
//! test that writes to stdout and stderr in turn, with short pauses, is
//! followed by clients that attach before it starts, the moment it starts
//! and in the middle of its output; each one's bytes must equal `baton log
//! ID` after the end, byte for byte.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::support::{self, baton, wait_final, wait_for, Dispatcher, Repo};

/// Rounds of one task each: the race this guards against showed in about two
/// runs of five with a single follower, and every round has ten.
const ROUNDS: usize = 6;
/// Followers attaching while the output grows, in each round.
const MID_STREAM: usize = 6;

/// A unittest test interleaving stdout and stderr writes (unittest's `-v`
/// prefix goes to stderr as well), each flushed, with pauses between them so
/// that output arrives while followers attach.
const INTERLEAVED: &str = r#"import sys, time, unittest


class L(unittest.TestCase):
    def test_live(self):
        for i in range(80):
            sys.stdout.write("OUT-%d\n" % i)
            sys.stdout.flush()
            time.sleep(0.004)
            sys.stderr.write("ERR-%d " % i)
            sys.stderr.flush()
            time.sleep(0.004)
"#;

/// One `baton log ID --follow` whose stdout goes to a file.
struct Follower {
    what: String,
    child: Child,
    out: std::path::PathBuf,
}

impl Follower {
    fn start(dir: &Path, addr: &str, id: &str, what: &str) -> Follower {
        let out = dir.join(format!("follow-{id}-{}.out", what.replace(' ', "-")));
        let file = File::create(&out).expect("creating a follower's output file");
        let child = Command::new(support::bin("baton"))
            .args(["--dispatcher", addr, "log", id, "--follow"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::null())
            .spawn()
            .expect("starting baton log --follow");
        Follower { what: what.to_string(), child, out }
    }

    /// Waits for the follower to exit (it must succeed: the task passes) and
    /// returns what it printed.
    fn finish(mut self) -> Vec<u8> {
        let status = support::wait_exit(&mut self.child, &format!("follower {}", self.what));
        assert!(status.success(), "follower {} exited {status}", self.what);
        std::fs::read(&self.out).expect("reading a follower's output")
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stored log, as `baton log ID` prints it.
fn stored_log(addr: &str, id: &str) -> Vec<u8> {
    let output = baton(addr, &["log", id]);
    assert!(output.status.success(), "baton log {id}: {}", String::from_utf8_lossy(&output.stderr));
    output.stdout
}

#[test]
fn followers_see_exactly_the_stored_log_wherever_they_attach() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    for round in 0..ROUNDS {
        let commit = repo.commit(&[("tests/test_live.py", INTERLEAVED)], &format!("round {round}"));
        let repo_arg = repo.path.display().to_string();
        let accepted = support::baton_json(&dispatcher.addr, &["submit", &repo_arg, &commit]);
        let id = accepted["id"].as_i64().expect("a numeric id").to_string();

        // No runner is connected between rounds, so the task is pending.
        let mut followers = vec![Follower::start(tmp.path(), &dispatcher.addr, &id, "before start")];
        let runner = support::runner(&tmp.path().join(format!("r{round}")), &dispatcher.addr, "r1", &[]);
        for n in 0..3 {
            followers.push(Follower::start(tmp.path(), &dispatcher.addr, &id, &format!("at once {n}")));
        }
        wait_for("the task's first output", || (!stored_log(&dispatcher.addr, &id).is_empty()).then_some(()));
        // Mid-stream followers attach one by one as the log grows.
        let mut seen = 0;
        for n in 0..MID_STREAM {
            seen = wait_for("the log to grow or the task to end", || {
                let len = stored_log(&dispatcher.addr, &id).len();
                let ended =
                    support::show(&dispatcher.addr, &id).is_some_and(|task| task["state"] != "running");
                (len > seen || ended).then_some(len)
            });
            followers.push(Follower::start(tmp.path(), &dispatcher.addr, &id, &format!("mid-stream {n}")));
        }

        let task = wait_final(&dispatcher.addr, &id);
        assert_eq!(task["state"], "passed", "{task:#}");
        let stored = stored_log(&dispatcher.addr, &id);
        assert!(stored.windows(6).any(|w| w == b"ERR-39"), "{}", String::from_utf8_lossy(&stored));
        for follower in followers {
            let what = follower.what.clone();
            let followed = follower.finish();
            assert!(
                followed == stored,
                "round {round}: follower {what} differs from the stored log\nfollowed:\n{}\nstored:\n{}",
                String::from_utf8_lossy(&followed),
                String::from_utf8_lossy(&stored)
            );
        }
        drop(runner);
        wait_for("the runner to be gone", || {
            let runners = support::baton_json(&dispatcher.addr, &["runners"]);
            runners.as_array()?.iter().all(|runner| runner["state"] == "dead").then_some(())
        });
    }
}
