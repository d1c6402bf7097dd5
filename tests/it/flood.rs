//! Authenticated peers are never starved by unauthenticated sockets (issue
//! 12, item 6): thousands of silent TCP connections, held and re-opened, stop
//! neither `baton status` nor a runner's registration; an observer that
//! answers no ping is closed; the flood is reported in a few lines, not one
//! per connection.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::message::{DispatcherToObserver, ObserverToDispatcher};
use protocol::{Name, Role};

use crate::support::{self, baton, baton_json, wait_for, Dispatcher, PATIENCE};

const FAST: &[&str] = &["--heartbeat-interval", "200ms", "--heartbeat-misses", "3"];

/// Silent connections held at once.
const N_SILENT: usize = 2_000;

/// Lets this process hold the flood's sockets.
fn raise_fd_limit(wanted: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0, "raising the file limit");
        }
    }
    assert!(
        limit.rlim_cur >= wanted,
        "cannot hold {wanted} sockets: the hard file limit is {}",
        limit.rlim_max
    );
}

/// Opens a connection that never says anything; `None` if the connect
/// itself failed (the dispatcher may close faster than we open).
fn silent(addr: SocketAddr) -> Option<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()
}

fn status_succeeds(addr: &str) -> Result<(), String> {
    let output = baton(addr, &["status", "--json"]);
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn two_thousand_silent_connections_stop_neither_status_nor_a_runner() {
    raise_fd_limit(N_SILENT as u64 + 2_000);
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let addr: SocketAddr = dispatcher.addr.parse().unwrap();

    // A flood held open all at once.
    let held: Vec<TcpStream> = (0..N_SILENT).filter_map(|_| silent(addr)).collect();
    assert!(held.len() > N_SILENT / 2, "only {} of {N_SILENT} connections opened", held.len());
    let mut failures = Vec::new();
    for _ in 0..20 {
        if let Err(err) = status_succeeds(&dispatcher.addr) {
            failures.push(err);
        }
    }
    assert_eq!(failures, Vec::<String>::new(), "status failed under a held flood");

    // A flood that keeps re-opening while a runner registers and status is
    // asked for.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            let mut n_opened = 0usize;
            // Bounded: at most 10,000 connections, and never more than 300 at once.
            while !stop.load(Ordering::Relaxed) && n_opened < 10_000 {
                if let Some(stream) = silent(addr) {
                    open.push(stream);
                }
                n_opened += 1;
                if open.len() > 300 {
                    open.remove(0);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            n_opened
        })
    };
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    wait_for("the runner to register during the flood", || {
        let runners = baton_json(&dispatcher.addr, &["runners"]);
        runners.as_array()?.iter().any(|runner| runner["name"] == "r1").then_some(())
    });
    for _ in 0..20 {
        if let Err(err) = status_succeeds(&dispatcher.addr) {
            failures.push(err);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let n_churned = churn.join().unwrap();
    assert_eq!(failures, Vec::<String>::new(), "status failed under a re-opening flood of {n_churned}");
    drop(held);

    // The flood is summed up, not logged line by line: one warning with a
    // count per interval (10 s), so wait for the next one.
    let log = wait_for("the flood's summary warning", || {
        let log = dispatcher.daemon.log();
        log.contains("connections closed before completing the handshake").then_some(log)
    });
    let n_warnings = log.lines().filter(|line| line.contains("WARN")).count();
    assert!(n_warnings < 50, "{n_warnings} warnings for the flood:\n{log}");
}

#[test]
fn an_observer_that_answers_no_ping_is_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), FAST);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let n_pings = runtime.block_on(async {
        let name = Name::new("mute-observer").unwrap();
        let (mut conn, _) = protocol::peer::dial::<DispatcherToObserver, ObserverToDispatcher>(
            &dispatcher.addr,
            Role::Observer,
            &name,
            None,
            protocol::MAX_FRAME,
        )
        .await
        .unwrap();
        let mut n_pings = 0;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, conn.recv()).await {
                Err(_) => panic!("a silent observer was kept for {PATIENCE:?}"),
                Ok(Ok(Some(DispatcherToObserver::Ping(_)))) => n_pings += 1,
                Ok(Ok(Some(other))) => panic!("unexpected {other:?}"),
                Ok(Ok(None) | Err(_)) => break n_pings,
            }
        }
    });
    assert!(n_pings >= 1, "closed without being pinged");

    // A raw socket that completed nothing is closed too (the handshake
    // deadline), and the dispatcher still serves.
    let mut raw = silent(dispatcher.addr.parse().unwrap()).unwrap();
    raw.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let closed = match raw.read(&mut buf) {
        Ok(n_read) => n_read == 0,
        Err(err) => !matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    };
    assert!(closed && started.elapsed() < PATIENCE, "a silent socket was kept");
    status_succeeds(&dispatcher.addr).unwrap();
}
