//! Hostile bytes: noise, truncated, oversized and unknown frames, silent
//! connections and floods close only the connection that sent them.

use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::*;

#[test]
fn random_bytes_close_only_that_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);

    // On many connections at once: unframed noise (its first four bytes are
    // a random length) from peers that never said hello, and noise inside
    // well-formed frames from peers before and after the handshake. Each
    // peer then stops sending, so noise whose length prefix promises more
    // than follows is a truncated frame (a peer that keeps such a frame open
    // is the silent-connection test's case).
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut peers = Vec::new();
    for idx in 0..48 {
        let noise = random_bytes(&mut seed, 1 + idx * 37);
        let (mut peer, bytes) = match idx % 3 {
            0 => (Raw::connect(&dispatcher.addr), noise),
            1 => (Raw::connect(&dispatcher.addr), frame(&noise)),
            _ => (Raw::admitted(&dispatcher.addr, Role::Client, None), frame(&noise)),
        };
        // The dispatcher may close while we write; what matters is that it does.
        let _ = peer.write(&bytes);
        let _ = peer.stream.shutdown(Shutdown::Write);
        peers.push(peer);
    }
    for peer in &mut peers {
        let took = peer.wait_closed("a connection that sent random bytes to be closed");
        assert!(took < HANDSHAKE_TIMEOUT, "closed only after {took:?}: the noise went unnoticed");
    }

    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_truncated_frame_closes_only_that_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);

    // Half a hello, then the sending side closed: the dispatcher sees the
    // stream end mid-frame and closes at once, not at the handshake deadline.
    let hello = frame(&encode(&hello(PROTOCOL_VERSION, Role::Client, "half")).unwrap());
    let mut peer = Raw::connect(&dispatcher.addr);
    peer.write(&hello[..hello.len() / 2]).unwrap();
    peer.stream.shutdown(Shutdown::Write).unwrap();
    let took = peer.wait_closed("a truncated hello to close the connection");
    assert!(took < HANDSHAKE_TIMEOUT, "closed only after {took:?}: the truncation went unnoticed");

    // The same after a handshake: a request whose header promises 100 bytes
    // and whose sender stops after 3.
    let mut peer = Raw::admitted(&dispatcher.addr, Role::Client, None);
    peer.write(&[0, 0, 0, 100, 0, 1, 2]).unwrap();
    peer.stream.shutdown(Shutdown::Write).unwrap();
    peer.wait_closed("a truncated request to close the connection");

    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_100_mib_length_prefix_is_refused_from_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let huge = (100u32 * 1024 * 1024).to_be_bytes();

    // Nothing follows the header: the connection is closed from the header
    // alone, without waiting for (or buffering) the 100 MiB.
    for role in [None, Some(Role::Client), Some(Role::Runner), Some(Role::Observer)] {
        let mut peer = match role {
            None => Raw::connect(&dispatcher.addr),
            Some(role) => Raw::admitted(&dispatcher.addr, role, None),
        };
        peer.write(&huge).unwrap();
        let took = peer.wait_closed("an oversized frame to close the connection");
        assert!(took < HANDSHAKE_TIMEOUT, "{role:?}: closed only after {took:?}, not from the header");
    }
    wait_logged(&dispatcher.daemon, "frame larger than the maximum");

    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_wrong_protocol_version_is_rejected_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);

    for version in [0, PROTOCOL_VERSION + 1, 999, u32::MAX] {
        let mut peer = Raw::connect(&dispatcher.addr);
        peer.send(&hello(version, Role::Runner, "from-the-future"));
        match peer.recv::<DispatcherHandshake>() {
            DispatcherHandshake::Reject(reject) => {
                assert!(
                    reject.reason.contains("version"),
                    "reason {:?} does not mention the version",
                    reject.reason
                );
                assert!(
                    reject.reason.contains(&version.to_string()),
                    "reason {:?} lacks {version}",
                    reject.reason
                );
            }
            other => panic!("version {version}: expected a reject, got {other:?}"),
        }
        peer.wait_closed("a rejected peer to be disconnected");
    }

    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn an_unknown_message_kind_after_the_handshake_closes_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);

    // Each role's enum has fewer than 10 variants; bincode writes the index
    // as a varint, so 200 is one byte and 0xfb 0xff 0xff is 65,535. A valid
    // message first shows the connection itself was sound.
    for unknown in [vec![200u8], vec![0xfb, 0xff, 0xff], vec![0xfc, 0xff, 0xff, 0xff, 0x7f]] {
        let mut client = Raw::admitted(&dispatcher.addr, Role::Client, None);
        client.send_payload(&[0]); // ClientToDispatcher::Status
        let status = client.recv_frame().expect("a status answer");
        assert_eq!(status[0], 0, "expected DispatcherToClient::Status");
        client.send_payload(&unknown);
        assert!(client.wait_closed_silently(), "client: an unknown kind {unknown:?} was answered");

        let mut runner = Raw::admitted(&dispatcher.addr, Role::Runner, None);
        runner.send(&register(Vec::new()));
        let registered: DispatcherToRunner = runner.recv();
        assert!(matches!(registered, DispatcherToRunner::Registered(_)), "{registered:?}");
        runner.send_payload(&unknown);
        runner.wait_closed("a runner that sent an unknown kind to be closed");

        let mut observer = Raw::admitted(&dispatcher.addr, Role::Observer, None);
        observer.send_payload(&unknown);
        assert!(observer.wait_closed_silently(), "observer: an unknown kind {unknown:?} was answered");
    }
    wait_for("the impostor runners to be dead", || {
        let runners = support::baton_json(&dispatcher.addr, &["runners"]);
        runners.as_array()?.iter().all(|runner| runner["state"] == "dead").then_some(())
    });

    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn silent_connections_are_dropped_at_the_handshake_deadline_and_block_nobody() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);

    let started = Instant::now();
    let mut silent: Vec<(&str, Raw)> = Vec::new();
    for _ in 0..20 {
        silent.push(("says nothing", Raw::connect(&dispatcher.addr)));
    }
    let mut after_hello = Raw::connect(&dispatcher.addr);
    after_hello.send(&hello(PROTOCOL_VERSION, Role::Client, "mute"));
    silent.push(("stops after its hello", after_hello));
    let mut mid_frame = Raw::connect(&dispatcher.addr);
    mid_frame.write(&[0, 0, 0, 50, 1]).unwrap();
    silent.push(("stops mid-frame", mid_frame));
    // A runner that is admitted but never registers.
    silent.push(("never registers", Raw::admitted(&dispatcher.addr, Role::Runner, None)));

    // Meanwhile everyone else is served at once.
    let served = Instant::now();
    let second = submit(&dispatcher.addr, &[], WITNESS_REPO, &"b".repeat(40))
        .expect("a submission while others are silent");
    support::baton_json(&dispatcher.addr, &["status"]);
    assert!(
        served.elapsed() < HANDSHAKE_TIMEOUT,
        "a normal client waited {:?} behind silent peers",
        served.elapsed()
    );
    assert!(show(&dispatcher.addr, &second).is_some());

    for (what, peer) in &mut silent {
        let took = peer.wait_closed(&format!("the peer that {what} to be dropped"));
        let since_start = started.elapsed();
        assert!(
            since_start >= HANDSHAKE_TIMEOUT - Duration::from_millis(250),
            "the peer that {what} was dropped after {since_start:?} ({took:?} of waiting), before the deadline"
        );
    }

    assert_still_serving(&dispatcher.addr, &[], &witness);
}

// ---------------------------------------------------------------- flooding

#[test]
fn a_flooding_client_is_disconnected_while_others_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);

    // Status requests as fast as the socket takes them, answers drained so
    // the dispatcher is never held up by a full socket.
    let mut flooder = Raw::admitted(&dispatcher.addr, Role::Client, None);
    let flood = flood(&flooder, &frame(&[0]));
    let normal = support::baton_json(&dispatcher.addr, &["status"]);
    assert!(normal["tasks"].is_object(), "{normal:#}");
    flooder.wait_closed("the flooding client to be disconnected");
    let sent = flood.join().unwrap();
    assert!(sent > 2000, "disconnected after only {sent} requests: the burst allowance is 2000");
    wait_logged(&dispatcher.daemon, "client is flooding");

    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_flooding_runner_is_disconnected_and_a_running_task_is_undisturbed() {
    let tmp = tempfile::tempdir().unwrap();
    let gated = Gated::new(tmp.path());
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let running = submit(&dispatcher.addr, &[], &gated.repo_arg(), &gated.commit).unwrap();
    gated.wait_started(&dispatcher.addr, &running, "r1");

    // Pongs as fast as the socket takes them.
    let mut flooder = Raw::admitted(&dispatcher.addr, Role::Runner, None);
    flooder.send(&register(Vec::new()));
    let pong = frame(&encode(&RunnerToDispatcher::Pong(Pong { seq: 1 })).unwrap());
    let flood = flood(&flooder, &pong);
    let normal = support::baton_json(&dispatcher.addr, &["status"]);
    assert!(normal["tasks"].is_object(), "{normal:#}");
    flooder.wait_closed("the flooding runner to be disconnected");
    let sent = flood.join().unwrap();
    assert!(sent > 40_000, "disconnected after only {sent} pongs: the burst allowance is 40,000");
    wait_logged(&dispatcher.daemon, "flooding: too many messages per second");

    gated.open();
    let task = wait_final(&dispatcher.addr, &running);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!((task["runner"].as_str(), task["attempts"].as_i64()), (Some("r1"), Some(1)), "{task:#}");
    assert_still_serving(&dispatcher.addr, &[], &running);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}
