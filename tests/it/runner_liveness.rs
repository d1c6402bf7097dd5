//! The runner's side of liveness (issue 12, item 3): a runner that hears
//! nothing from its dispatcher for the heartbeat window drops the link and
//! reconnects at once, keeping its test, which is re-adopted rather than
//! rerun.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::support::{self, baton_json, wait_final, wait_for, Dispatcher, Repo};

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--heartbeat-misses", "3"];

/// A TCP forwarder between runners and the dispatcher that can silence the
/// connections open so far, as a cut link does: nothing passes either way,
/// and no reset or close reaches the other side.
struct Proxy {
    addr: String,
    accepted: Arc<AtomicUsize>,
    /// One switch per forwarded connection: set, its downstream is dropped.
    cuts: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let cuts: Arc<Mutex<Vec<Arc<AtomicBool>>>> = Arc::default();
        let upstream = upstream.to_string();
        {
            let accepted = Arc::clone(&accepted);
            let cuts = Arc::clone(&cuts);
            // The threads end with the test process; bounded by the runner's
            // reconnects.
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&upstream) else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let cut = Arc::new(AtomicBool::new(false));
                    cuts.lock().unwrap().push(Arc::clone(&cut));
                    pump(client.try_clone().unwrap(), server.try_clone().unwrap(), Arc::clone(&cut));
                    pump(server, client, cut);
                }
            });
        }
        Proxy { addr, accepted, cuts }
    }

    /// Silences every connection forwarded so far, both ways.
    fn cut(&self) {
        for cut in self.cuts.lock().unwrap().iter() {
            cut.store(true, Ordering::SeqCst);
        }
    }
}

/// Copies `from` to `to` until either closes; while `cut` is set, reads and
/// drops instead, so the sender is not blocked and the receiver hears nothing,
/// and a close is not passed on either (the sockets are kept open until the
/// test process ends).
fn pump(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n_read = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n_read) => n_read,
            };
            if !cut.load(Ordering::SeqCst) && to.write_all(&buf[..n_read]).is_err() {
                break;
            }
        }
        if cut.load(Ordering::SeqCst) {
            std::mem::forget(from);
            std::mem::forget(to);
        } else {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}

/// The dispatcher's host vanishes without a reset reaching the runner (the
/// proxy silences the old connection both ways and never closes it), and a
/// new dispatcher starts on the same address and data dir.
#[test]
fn a_runner_that_hears_nothing_reconnects_to_a_new_dispatcher_and_keeps_its_test() {
    let tmp = tempfile::tempdir().unwrap();
    let gate = tmp.path().join("gate");
    std::fs::create_dir_all(&gate).unwrap();
    let baton_toml = format!(
        "[test]\ncommand = \"echo started attempt $BATON_ATTEMPT; touch {gate}/started; \
         while [ ! -e {gate}/go ]; do sleep 0.1; done; echo finished attempt $BATON_ATTEMPT\"\n",
        gate = gate.display()
    );
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[(".baton.toml", &baton_toml)], "a long test");
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let proxy = Proxy::start(&dispatcher.addr);
    let runner = support::runner(tmp.path(), &proxy.addr, "r1", &[]);
    let accepted = baton_json(&dispatcher.addr, &["submit", &repo.path.display().to_string(), &commit]);
    let id = accepted["id"].as_i64().unwrap().to_string();
    wait_for("the test to start", || gate.join("started").exists().then_some(()));
    assert_eq!(proxy.accepted.load(Ordering::SeqCst), 1);

    proxy.cut();
    // The new dispatcher waits 5 s for the runner to re-adopt its task; the
    // runner's window, learnt from the old one, is 1.2 s.
    dispatcher.restart(&["--heartbeat-interval", "200ms", "--heartbeat-misses", "25"]);
    wait_for("the runner to notice the silent dispatcher and reconnect", || {
        (proxy.accepted.load(Ordering::SeqCst) >= 2).then_some(())
    });
    // It judged the silence by the window it had learnt (the old rule
    // waited a fixed 60 s), not by a clock of this test.
    let window = "no message from the dispatcher for 1.2s";
    assert!(runner.log().contains(window), "wanted {window:?} in the runner's log:\n{}", runner.log());
    wait_for("the runner to re-adopt its task on the new connection", || {
        let runners = baton_json(&dispatcher.addr, &["runners"]);
        let busy = runners.as_array()?.iter().any(|r| r["name"] == "r1" && r["state"] == "busy");
        busy.then_some(())
    });
    std::fs::write(gate.join("go"), "").unwrap();

    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["attempts"], 1, "re-adopted, not rerun: {task:#}");
    let log = String::from_utf8_lossy(&support::stored_log(&dispatcher.data_dir, &id)).into_owned();
    assert_eq!(log.matches("started attempt").count(), 1, "output delivered once: {log}");
    assert!(log.contains("finished attempt 1"), "{log}");
}
