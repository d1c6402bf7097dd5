//! Security and bad input (issue 6, SPEC §9): hostile bytes, frames and
//! strings, wrong tokens, impostor runners, endless and binary test output,
//! a full disk. Each test attacks the real dispatcher binary and ends by
//! checking that it still serves a normal client and that nothing it
//! acknowledged before the attack was lost.
//!
//! Hostile frames are written by hand over a blocking socket ([`Raw`]), so
//! they can be what no real peer would send; impostor runners speak the real
//! protocol through `protocol::peer::dial`. Covered elsewhere: a commit that
//! does not exist (`foundation`), runners that vanish or freeze and a
//! dispatcher killed mid-write (`durability`).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use protocol::codec::{decode, encode};
use protocol::handshake::{DispatcherHandshake, Hello, Proof, Role};
use protocol::message::{
    DispatcherToRunner, Forget, Held, HostFacts, Outcome, Pong, Register, ResultAck, RunnerToDispatcher,
    TaskResult,
};
use protocol::{Connection, Name, Secret, TaskId, HANDSHAKE_TIMEOUT, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::foundation::process_alive;
use crate::support::{self, baton, baton_with_env, show, wait_final, wait_for, Dispatcher, Repo, PATIENCE};

/// The commit of the task every test submits before its attack.
const WITNESS_COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
/// Its repository, which no runner could fetch anyway.
const WITNESS_REPO: &str = "/srv/git/witness.git";
/// A label no runner in these tests has, so the witness task stays pending.
const WITNESS_LABEL: &str = "unserved";

// ------------------------------------------------------------ hostile bytes

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

// ------------------------------------------------------------------ tokens

#[test]
fn wrong_and_missing_tokens_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path(), "token", "correct horse battery staple\n");
    let wrong = token_file(tmp.path(), "wrong", "Tr0ub4dor&3\n");
    let (token_arg, wrong_arg) = (token.display().to_string(), wrong.display().to_string());
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--token-file", &token_arg]);
    let auth = [("BATON_TOKEN_FILE", token_arg.as_str())];
    let witness = submit_witness(&dispatcher.addr, &auth);

    // The client: no token, a wrong one by flag, a wrong one by environment.
    let by_env = [("BATON_TOKEN_FILE", wrong_arg.as_str())];
    let attempts = [
        (vec!["status"], &[][..]),
        (vec!["--token-file", &wrong_arg, "status"], &[][..]),
        (vec!["status"], &by_env[..]),
    ];
    for (args, env) in attempts {
        let args = args.as_slice();
        let output = baton_with_env(&dispatcher.addr, args, env);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "baton {args:?} {env:?}: {}\n{stderr}", output.status);
        assert!(stderr.contains("authentication failed"), "baton {args:?} {env:?} said:\n{stderr}");
        assert!(
            output.stdout.is_empty(),
            "baton {args:?} printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
    }

    // By hand: no proof, a wrong secret, the right secret proving another
    // name (a proof is bound to the nonce, the role and the name), garbage.
    let secret = Secret::from_file(&token).unwrap().0;
    let impostor = Secret::new(b"guess".to_vec()).unwrap();
    let (mallory, other_name) = (Name::new("mallory").unwrap(), Name::new("someone-else").unwrap());
    for what in ["no proof", "a wrong secret", "another name's proof", "a runner's proof", "garbage"] {
        let mut peer = Raw::connect(&dispatcher.addr);
        peer.send(&hello(PROTOCOL_VERSION, Role::Client, mallory.as_str()));
        let DispatcherHandshake::Challenge(challenge) = peer.recv() else { panic!("{what}: no challenge") };
        assert!(challenge.auth_required);
        let nonce = &challenge.nonce;
        let mac = match what {
            "no proof" => None,
            "a wrong secret" => Some(impostor.prove(nonce, Role::Client, &mallory)),
            "another name's proof" => Some(secret.prove(nonce, Role::Client, &other_name)),
            "a runner's proof" => Some(secret.prove(nonce, Role::Runner, &mallory)),
            _ => Some(vec![0; 7]),
        };
        peer.send(&Proof { mac, nonce: [7; 32] });
        match peer.recv::<DispatcherHandshake>() {
            DispatcherHandshake::Reject(reject) => {
                assert_eq!(reject.reason, "authentication failed", "{what}")
            }
            other => panic!("{what}: expected a reject, got {other:?}"),
        }
        peer.wait_closed("a rejected peer to be disconnected");
    }

    // A runner with the wrong token never registers, and says why.
    let work_dir = tmp.path().join("runner-wrong");
    let runner = support::daemon(
        "baton-runner",
        &["--dispatcher", &dispatcher.addr, "--work-dir", &work_dir.display().to_string(), "--name", "wrong"],
        &[("BATON_TOKEN_FILE", &wrong_arg)],
        tmp.path().join("runner-wrong.log"),
    );
    wait_logged(&runner, "authentication failed");
    let runners = baton_json_with_env(&dispatcher.addr, &["runners"], &auth);
    assert_eq!(runners, serde_json::json!([]), "a runner with a wrong token registered");

    assert_still_serving(&dispatcher.addr, &auth, &witness);
}

#[test]
fn the_right_token_works_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let token = token_file(tmp.path(), "token", "s3cret shared by every daemon\n");
    let token_arg = token.display().to_string();
    let auth = [("BATON_TOKEN_FILE", token_arg.as_str())];
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "passing test");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--token-file", &token_arg]);
    let witness = submit_witness(&dispatcher.addr, &auth);
    // The runner by environment, the observer by flag.
    let work_dir = tmp.path().join("runner-r1").display().to_string();
    let _runner = support::daemon(
        "baton-runner",
        &["--dispatcher", &dispatcher.addr, "--work-dir", &work_dir, "--name", "r1"],
        &auth,
        tmp.path().join("runner-r1.log"),
    );
    let _observer = support::observer(
        tmp.path(),
        &dispatcher.addr,
        &repo.path,
        &["--poll", "100ms", "--token-file", &token_arg],
    );

    let task = wait_for("the commit to pass", || {
        let output =
            baton_with_env(&dispatcher.addr, &["--token-file", &token_arg, "show", &commit, "--json"], &[]);
        let task: Value = serde_json::from_slice(&output.stdout).ok()?;
        matches!(task["state"].as_str(), Some("passed" | "failed" | "error")).then_some(task)
    });
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["runner"], "r1", "{task:#}");
    let runners = baton_json_with_env(&dispatcher.addr, &["runners"], &auth);
    assert_eq!(runners[0]["name"], "r1", "{runners:#}");
    assert_still_serving(&dispatcher.addr, &auth, &task["id"].to_string());
    assert_still_serving(&dispatcher.addr, &auth, &witness);
}

#[test]
fn without_a_token_file_only_loopback_peers_are_admitted() {
    let Some(ip) = non_loopback_ipv4() else {
        // Nothing to test from: every address of this host is loopback.
        eprintln!("skipped: this host has no non-loopback IPv4 address to connect from");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start_on(&tmp.path().join("data"), "0.0.0.0:0", &[]);
    let port = dispatcher.addr.rsplit(':').next().unwrap().to_string();
    let (loopback, outside) = (format!("127.0.0.1:{port}"), format!("{ip}:{port}"));
    let witness = submit_witness(&loopback, &[]);

    let mut peer = Raw::connect(&outside);
    peer.send(&hello(PROTOCOL_VERSION, Role::Runner, "outsider"));
    match peer.recv::<DispatcherHandshake>() {
        DispatcherHandshake::Reject(reject) => assert!(reject.reason.contains("loopback"), "{reject:?}"),
        other => panic!("a non-loopback peer was not rejected: {other:?}"),
    }
    let output = baton(&outside, &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
    assert_still_serving(&loopback, &[], &witness);

    // With a token file the same peer is admitted once it proves the secret.
    let token = token_file(tmp.path(), "token", "s3cret");
    let token_arg = token.display().to_string();
    let secured = Dispatcher::start_on(&tmp.path().join("data2"), "0.0.0.0:0", &["--token-file", &token_arg]);
    let port = secured.addr.rsplit(':').next().unwrap();
    let output = baton(&format!("{ip}:{port}"), &["--token-file", &token_arg, "status", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

// -------------------------------------------------------- impostor runners

#[test]
fn a_runner_cannot_report_someone_else_s_task() {
    let tmp = tempfile::tempdir().unwrap();
    let gated = Gated::new(tmp.path());
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let id = submit(&dispatcher.addr, &[], &gated.repo_arg(), &gated.commit).unwrap();
    gated.wait_started(&dispatcher.addr, &id, "r1");
    let task_id = TaskId::new(id.parse().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    runtime.block_on(async {
        let mut mallory = Impostor::dial(&dispatcher.addr).await;
        // Claiming the attempt at registration: told to forget it.
        mallory.send(register(vec![Held { task_id, attempt: 1 }])).await;
        let DispatcherToRunner::Registered(registered) = mallory.next().await else {
            panic!("not registered")
        };
        assert!(registered.resume.is_empty(), "{registered:?}");
        assert_eq!(
            registered.forget.iter().map(|forget| (forget.task_id, forget.attempt)).collect::<Vec<_>>(),
            [(task_id, 1)]
        );
        // Output is dropped without an answer; results are refused.
        mallory
            .send(RunnerToDispatcher::Output(protocol::message::Output {
                task_id,
                attempt: 1,
                offset: 0,
                data: b"INJECTED BY MALLORY\n".to_vec(),
            }))
            .await;
        for (claimed, attempt) in [(task_id, 1), (task_id, 2), (task_id, 0), (TaskId::new(999).unwrap(), 1)] {
            mallory.send(RunnerToDispatcher::Result(passed(claimed, attempt))).await;
            match mallory.next().await {
                DispatcherToRunner::ResultAck(ResultAck { task_id, attempt: acked, accepted, reason }) => {
                    assert_eq!((task_id, acked), (claimed, attempt));
                    assert!(!accepted, "mallory's result for {claimed} attempt {attempt} was accepted");
                    assert!(reason.is_some_and(|reason| reason.contains("not current")));
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    });
    let task = show(&dispatcher.addr, &id).unwrap();
    assert_eq!(task["state"], "running", "{task:#}");
    assert_eq!((task["runner"].as_str(), task["attempts"].as_i64()), (Some("r1"), Some(1)), "{task:#}");

    gated.open();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!((task["runner"].as_str(), task["attempts"].as_i64()), (Some("r1"), Some(1)), "{task:#}");
    let log = std::fs::read(dispatcher.data_dir.join(format!("logs/{id}.log"))).unwrap();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("finished") && !log.contains("INJECTED"), "{log}");

    // Once it is final, a "failed" result from another runner changes nothing.
    runtime.block_on(async {
        let mut mallory = Impostor::dial(&dispatcher.addr).await;
        mallory.send(register(Vec::new())).await;
        mallory.next().await;
        let mut failed = passed(task_id, 1);
        failed.outcome = Outcome::Failed;
        failed.exit_code = Some(1);
        mallory.send(RunnerToDispatcher::Result(failed)).await;
        let answer = mallory.next().await;
        assert!(
            matches!(answer, DispatcherToRunner::ResultAck(ResultAck { accepted: false, .. })),
            "{answer:?}"
        );
    });
    let after = show(&dispatcher.addr, &id).unwrap();
    assert_eq!((&after["state"], &after["exit_code"]), (&task["state"], &task["exit_code"]), "{after:#}");
    assert_still_serving(&dispatcher.addr, &[], &id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn an_assigned_runner_cannot_crash_the_dispatcher_with_absurd_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    // Only mallory has the label, so mallory is assigned the task.
    let args = ["submit", "--label", "mallory", WITNESS_REPO, &"f".repeat(40), "--json"];
    let id = support::baton_json(&dispatcher.addr, &args[..args.len() - 1])["id"].to_string();
    let task_id = TaskId::new(id.parse().unwrap()).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    runtime.block_on(async {
        let mut mallory = Impostor::dial(&dispatcher.addr).await;
        let RunnerToDispatcher::Register(mut register) = register(Vec::new()) else { unreachable!() };
        register.labels = vec![protocol::Label::new("mallory").unwrap()];
        mallory.send(RunnerToDispatcher::Register(register)).await;
        assert!(matches!(mallory.next().await, DispatcherToRunner::Registered(_)));
        let DispatcherToRunner::Assign(assign) = mallory.next().await else { panic!("not assigned") };
        assert_eq!(assign.task_id, task_id);
        // Offsets whose end overflows a u64, then a result whose every
        // number is at its limit.
        for offset in [u64::MAX - 3, u64::MAX, 0] {
            let output =
                protocol::message::Output { task_id, attempt: 1, offset, data: b"0123456789".to_vec() };
            mallory.send(RunnerToDispatcher::Output(output)).await;
        }
        let result = TaskResult {
            task_id,
            attempt: 1,
            outcome: Outcome::Failed,
            exit_code: Some(i32::MIN),
            duration_ms: u64::MAX,
            summary: Some(protocol::message::Summary {
                passed: u32::MAX,
                failed: u32::MAX,
                skipped: u32::MAX,
            }),
            reason: Some("a\0b\nstate: passed\n".repeat(1000)),
            output_len: u64::MAX,
            tag: None,
            failed_step: Some("\0".repeat(1000)),
        };
        mallory.send(RunnerToDispatcher::Result(result)).await;
        let answer = mallory.next().await;
        assert!(
            matches!(answer, DispatcherToRunner::ResultAck(ResultAck { accepted: true, .. })),
            "{answer:?}"
        );
    });
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!((task["state"].as_str(), task["exit_code"].as_i64()), (Some("failed"), Some(i32::MIN.into())));
    // The reason is kept printable and bounded: no control character but a
    // newline or a tab reaches a terminal through `baton show`.
    let reason = task["reason"].as_str().unwrap();
    let unprintable = |c: char| c.is_control() && c != '\n' && c != '\t';
    assert!(reason.len() <= 4096 && !reason.chars().any(unprintable), "{reason:?}");
    assert!(reason.starts_with("a\u{fffd}b\nstate: passed"), "{reason:?}");
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

// --------------------------------------------------------- hostile strings

#[test]
fn hostile_commits_and_repositories_are_refused_by_baton_submit() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let marker = tmp.path().join("pwned");
    let touch = format!("$(touch {})", marker.display());
    let backticks = format!("`touch {}`", marker.display());
    let valid = "c".repeat(40);

    let mut cases: Vec<(Vec<String>, &str)> = Vec::new();
    for commit in
        [";rm -rf /", "../../etc/passwd", &touch, &backticks, "-uexploit", "", &"C".repeat(40), "HEAD"]
    {
        cases.push((
            vec!["submit".into(), "--".into(), WITNESS_REPO.into(), commit.into()],
            "invalid commit id",
        ));
    }
    // What is not a valid location is tried as a relative path, which does
    // not exist; what looks absolute or like a URL is refused as it is.
    let relative =
        [";rm -rf /", "$(touch pwned)", "../baton-no-such-dir/../x", &touch, "ext::sh -c touch% /tmp/pwned"];
    for repo in relative.into_iter().chain(["-uexploit", "--upload-pack=touch /tmp/pwned"]) {
        cases.push((vec!["submit".into(), "--".into(), repo.into(), valid.clone()], "repository"));
    }
    for repo in ["/srv/git/../../etc", "file:///srv/../../etc", "ssh://host/../../etc", "/srv/a\tb"] {
        cases.push((vec!["submit".into(), "--".into(), repo.into(), valid.clone()], "invalid repository"));
    }
    for branch in ["-uexploit", &touch, "../x", "a;rm -rf /", "a\nb"] {
        let branch = format!("--branch={branch}");
        cases.push((vec!["submit".into(), branch, WITNESS_REPO.into(), valid.clone()], "invalid branch"));
    }
    for (args, expected) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = baton(&dispatcher.addr, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "baton {args:?}: {}\n{stderr}", output.status);
        assert!(stderr.contains(expected), "baton {args:?} said {stderr:?}, expected {expected:?}");
        assert!(
            output.stdout.is_empty(),
            "baton {args:?} printed {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    // Without `--`, an argument that looks like an option is clap's to refuse.
    let output = baton(&dispatcher.addr, &["submit", WITNESS_REPO, "-uexploit"]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));

    assert!(!marker.exists(), "a hostile string reached a shell");
    assert_only_task(&dispatcher.addr, &[], &witness);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_crafted_frame_with_hostile_strings_is_not_decoded() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let marker = tmp.path().join("pwned");
    let touch = format!("$(touch {})", marker.display());
    let (repo, branch, commit) = (WITNESS_REPO, "main", "d".repeat(40));

    // (repository, branch, commit) as raw strings, bypassing every check the
    // real client and observer make before sending.
    let hostile: Vec<(&str, &str, &str)> = vec![
        (repo, branch, ";rm -rf /"),
        (repo, branch, &touch),
        (repo, branch, "../../../../etc/passwd"),
        (repo, branch, "-uexploit"),
        (";rm -rf /", branch, &commit),
        ("../../etc", branch, &commit),
        ("/srv/../../etc", branch, &commit),
        (&touch, branch, &commit),
        ("-uexploit", branch, &commit),
        ("ext::sh -c touch% /tmp/pwned", branch, &commit),
        (repo, "-uexploit", &commit),
        (repo, &touch, &commit),
        (repo, "../../x", &commit),
        (repo, "a\u{0}b", &commit),
    ];
    for (repo, branch, commit) in &hostile {
        let strings = [bincode_str(repo), bincode_str(branch), bincode_str(commit)].concat();
        // ObserverToDispatcher::Submit is variant 0, with an empty label list.
        let mut observer = Raw::admitted(&dispatcher.addr, Role::Observer, None);
        observer.send_payload(&[&[0u8][..], &strings, &[0u8][..]].concat());
        assert!(observer.wait_closed_silently(), "observer: ({repo:?}, {branch:?}, {commit:?}) was answered");
        // ClientToDispatcher::Submit is variant 4, with an empty label list.
        let mut client = Raw::admitted(&dispatcher.addr, Role::Client, None);
        client.send_payload(&[&[4u8][..], &strings, &[0u8][..]].concat());
        assert!(client.wait_closed_silently(), "client: ({repo:?}, {branch:?}, {commit:?}) was answered");
    }
    assert!(!marker.exists(), "a hostile string reached a shell");
    assert_only_task(&dispatcher.addr, &[], &witness);

    // The control: the same hand-made frame with valid strings is accepted,
    // so the refusals above were the strings' doing, not the encoding's.
    let mut observer = Raw::admitted(&dispatcher.addr, Role::Observer, None);
    let strings = [bincode_str(repo), bincode_str(branch), bincode_str(&commit)].concat();
    observer.send_payload(&[&[0u8][..], &strings, &[0u8][..]].concat());
    let answer: protocol::message::DispatcherToObserver = observer.recv();
    assert!(matches!(answer, protocol::message::DispatcherToObserver::Accepted(_)), "{answer:?}");
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn shell_syntax_in_valid_repository_paths_and_branches_never_runs() {
    // Not under a `.tmp` directory: a branch component may not start with '.'.
    let tmp = tempfile::Builder::new().prefix("baton-sec").tempdir().unwrap();
    let root = tmp.path().display().to_string();
    // A repository path and a branch that the checked types accept (they are
    // a valid absolute path and a valid git branch name) but that a shell
    // would run; and an ssh URL whose host is an ssh option.
    let repo_path = tmp.path().join(format!("$(touch {root}/pwned-repo)"));
    let branch = format!("$(touch${{IFS}}{root}/pwned-branch)");
    let ssh = "ssh://-oProxyCommand=cd${IFS}~;touch${IFS}pwned-ssh/x.git";
    let repo = Repo::init(&repo_path);
    let command = "[test]\ncommand = \"printf '%s\\\\n' \\\"$BATON_REPO\\\" \\\"$BATON_BRANCH\\\"\"\n";
    let commit = repo.commit(&[(".baton.toml", command)], "prints its repository and branch");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let work_dir = tmp.path().join("runner-r1").display().to_string();
    // HOME is where the ssh payload would write.
    let _runner = support::daemon(
        "baton-runner",
        &["--dispatcher", &dispatcher.addr, "--work-dir", &work_dir, "--name", "r1"],
        &[("HOME", &root)],
        tmp.path().join("runner-r1.log"),
    );

    let over_ssh = submit(&dispatcher.addr, &[], ssh, &commit).expect("a valid ssh URL is accepted");
    let task = wait_final(&dispatcher.addr, &over_ssh);
    assert_eq!(task["state"], "error", "{task:#}");
    assert!(task["reason"].as_str().is_some_and(|reason| !reason.is_empty()), "{task:#}");

    let repo_arg = repo_path.display().to_string();
    let output = baton(&dispatcher.addr, &["submit", "--branch", &branch, &repo_arg, &commit, "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let id = serde_json::from_slice::<Value>(&output.stdout).unwrap()["id"].to_string();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(
        (task["repo"].as_str(), task["branch"].as_str()),
        (Some(repo_arg.as_str()), Some(branch.as_str()))
    );
    let log = std::fs::read_to_string(dispatcher.data_dir.join(format!("logs/{id}.log"))).unwrap();
    assert_eq!(log, format!("{repo_arg}\n{branch}\n"), "the test saw other values than were submitted");

    for marker in ["pwned-repo", "pwned-branch", "pwned-ssh"] {
        assert!(!tmp.path().join(marker).exists(), "{marker}: a submitted string ran as shell code");
    }
    assert_still_serving(&dispatcher.addr, &[], &id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

// ---------------------------------------------------------------- checkout

#[test]
fn commits_that_cannot_be_checked_out_end_in_error_and_the_runner_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let good = repo.commit(&[(".baton.toml", "[test]\ncommand = \"echo '1 passed, 0 failed'\"\n")], "good");
    // Trees git itself would never write (`git fsck` flags them), made by
    // hand: entries named "..", "../../x" and ".git", each of which would
    // put a file outside the checkout or into its repository metadata.
    let toml = repo.git(&["rev-parse", "HEAD:.baton.toml"]);
    let blob = git_with_input(&repo, &["hash-object", "-w", "--stdin"], b"escaped\n");
    let inner = raw_tree(&repo, &[("100644", "escaped", &blob)]);
    let dot_git = raw_tree(&repo, &[("100644", "config", &blob)]);
    let hostile_trees = [
        ("dot-dot", raw_tree(&repo, &[("40000", "..", &inner), ("100644", ".baton.toml", &toml)]), ".."),
        (
            "slashes",
            raw_tree(&repo, &[("100644", "../../escaped", &blob), ("100644", ".baton.toml", &toml)]),
            "/",
        ),
        (
            "dot-git",
            raw_tree(&repo, &[("100644", ".baton.toml", &toml), ("40000", ".git", &dot_git)]),
            ".git",
        ),
    ];
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "only", &[]);
    let repo_arg = repo.path.display().to_string();

    for (name, tree, refused) in &hostile_trees {
        let commit = repo.git(&["commit-tree", tree, "-m", name]);
        repo.git(&["update-ref", &format!("refs/heads/{name}"), &commit]);
        let id = submit(&dispatcher.addr, &[], &repo_arg, &commit).unwrap();
        let task = wait_final(&dispatcher.addr, &id);
        assert_eq!(task["state"], "error", "{name}: {task:#}");
        let reason = task["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(refused), "{name}: the reason does not name {refused:?}: {task:#}");
    }
    let escaped = find_named(tmp.path(), "escaped");
    assert!(escaped.is_empty(), "a hostile tree was written: {escaped:?}");

    let id = submit(&dispatcher.addr, &[], &repo_arg, &good).unwrap();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!((task["state"].as_str(), task["runner"].as_str()), (Some("passed"), Some("only")), "{task:#}");
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

// ------------------------------------------------------------- test output

#[test]
fn test_output_with_any_bytes_is_stored_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    // Every byte value, invalid UTF-8, NULs, colons, CR/LF, an escape
    // sequence, then 256 KiB of noise: several output chunks.
    let mut payload: Vec<u8> = (0..=255u8).collect();
    payload.extend_from_slice(
        b"\0:\0::\n\r\n\x1b[31mred\x1b[0m\xff\xfe\xc3\x28\xed\xa0\x80 task: 1\nstate: passed\n",
    );
    let mut seed = 0x1234_5678_9abc_def1u64;
    payload.extend(random_bytes(&mut seed, 256 * 1024));
    payload.extend_from_slice(b"\ntrailing bytes without a newline:\0");
    let repo = Repo::init(&tmp.path().join("repo"));
    std::fs::write(repo.path.join("payload.bin"), &payload).unwrap();
    let commit = repo.commit(&[(".baton.toml", "[test]\ncommand = \"cat payload.bin\"\n")], "binary output");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let id = submit(&dispatcher.addr, &[], &repo.path.display().to_string(), &commit).unwrap();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    let stored = std::fs::read(dispatcher.data_dir.join(format!("logs/{id}.log"))).unwrap();
    assert_bytes_eq(&stored, &payload, "DIR/logs");
    let printed = baton(&dispatcher.addr, &["log", &id]);
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    assert_bytes_eq(&printed.stdout, &payload, "baton log");
    let report = support::result_file(&dispatcher.data_dir, &commit);
    assert!(report.ends_with(&payload), "test_results/{commit} does not end with the output");
    assert_still_serving(&dispatcher.addr, &[], &id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn huge_output_is_capped_and_the_runner_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let cap: usize = 1024 * 1024;
    // 20 MiB of a known pattern, far over the cap and over the frame limit.
    let command = "[test]\ncommand = \"yes 0123456789abcdef | head -c 20971520\"\n";
    let repo = Repo::init(&tmp.path().join("repo"));
    let loud = repo.commit(&[(".baton.toml", command)], "very loud test");
    let quiet = repo.commit(&[(".baton.toml", "[test]\ncommand = \"echo '1 passed, 0 failed'\"\n")], "quiet");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--output-cap", &cap.to_string()]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let repo_arg = repo.path.display().to_string();

    let loud_id = submit(&dispatcher.addr, &[], &repo_arg, &loud).unwrap();
    let quiet_id = submit(&dispatcher.addr, &[], &repo_arg, &quiet).unwrap();
    let task = wait_final(&dispatcher.addr, &loud_id);
    assert_eq!(task["state"], "passed", "{task:#}");
    let stored = std::fs::read(dispatcher.data_dir.join(format!("logs/{loud_id}.log"))).unwrap();
    let pattern = b"0123456789abcdef\n".repeat(cap / 17 + 1);
    assert_bytes_eq(&stored[..cap.min(stored.len())], &pattern[..cap], "the first bytes up to the cap");
    let marker = &stored[cap.min(stored.len())..];
    assert!(
        String::from_utf8_lossy(marker).contains("truncated"),
        "after the cap: {:?}",
        String::from_utf8_lossy(marker)
    );
    assert!(marker.len() < 200, "{} bytes kept past the cap", marker.len());

    let task = wait_final(&dispatcher.addr, &quiet_id);
    assert_eq!((task["state"].as_str(), task["runner"].as_str()), (Some("passed"), Some("r1")), "{task:#}");
    assert_still_serving(&dispatcher.addr, &[], &loud_id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

#[test]
fn a_test_that_never_ends_times_out_and_the_runner_takes_the_next_task() {
    let tmp = tempfile::tempdir().unwrap();
    let pid_file = tmp.path().join("endless.pid");
    let endless =
        format!("[test]\ncommand = \"echo $$ > {}; exec sleep 600\"\ntimeout = \"1s\"\n", pid_file.display());
    let repo = Repo::init(&tmp.path().join("repo"));
    let stuck = repo.commit(&[(".baton.toml", &endless)], "a test that never ends");
    let next = repo.commit(&[(".baton.toml", "[test]\ncommand = \"echo '1 passed, 0 failed'\"\n")], "next");
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let witness = submit_witness(&dispatcher.addr, &[]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "only", &[]);
    let repo_arg = repo.path.display().to_string();

    let stuck_id = submit(&dispatcher.addr, &[], &repo_arg, &stuck).unwrap();
    let next_id = submit(&dispatcher.addr, &[], &repo_arg, &next).unwrap();
    let task = wait_final(&dispatcher.addr, &stuck_id);
    assert_eq!(task["state"], "failed", "{task:#}");
    assert_eq!(task["reason"], "timeout", "{task:#}");
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    wait_for("the timed-out test process to be killed", || (!process_alive(pid)).then_some(()));

    let task = wait_final(&dispatcher.addr, &next_id);
    assert_eq!((task["state"].as_str(), task["runner"].as_str()), (Some("passed"), Some("only")), "{task:#}");
    assert_still_serving(&dispatcher.addr, &[], &stuck_id);
    assert_still_serving(&dispatcher.addr, &[], &witness);
}

// --------------------------------------------------------------- full disk

#[test]
fn a_full_disk_stops_the_dispatcher_without_losing_what_it_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mount_point = tmp.path().join("small");
    // A 2 MiB filesystem needs mount(2), which needs root (or CAP_SYS_ADMIN).
    // Without it there is no honest way to fill a disk, so say so and stop.
    let Some(_mount) = Tmpfs::mount(&mount_point, "2m") else {
        eprintln!("skipped: cannot mount a 2 MiB tmpfs here (needs root); the full-disk case is untested");
        return;
    };
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

// ------------------------------------------------------------------ helpers

/// A peer that writes the wire format by hand over a blocking socket, so a
/// test can send what no real peer would.
struct Raw {
    stream: TcpStream,
    /// Bytes received and not yet returned as a frame.
    buffer: Vec<u8>,
}

/// What one read from the socket brought.
enum Received {
    Data,
    Nothing,
    Closed,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap_or_else(|err| panic!("connecting to {addr}: {err}"));
        stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, buffer: Vec::new() }
    }

    /// Connects and completes the handshake; panics unless welcomed.
    fn admitted(addr: &str, role: Role, secret: Option<&Secret>) -> Raw {
        let mut peer = Raw::connect(addr);
        let name = Name::new(format!("raw-{}", role.as_str())).unwrap();
        peer.send(&Hello { version: PROTOCOL_VERSION, role, name: name.clone() });
        let DispatcherHandshake::Challenge(challenge) = peer.recv() else { panic!("no challenge") };
        peer.send(&Proof {
            mac: secret.map(|secret| secret.prove(&challenge.nonce, role, &name)),
            nonce: [7; 32],
        });
        match peer.recv() {
            DispatcherHandshake::Welcome(_) => peer,
            other => panic!("not admitted: {other:?}"),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn send_payload(&mut self, payload: &[u8]) {
        self.write(&frame(payload)).expect("sending a frame");
    }

    fn send<T: Serialize>(&mut self, message: &T) {
        self.send_payload(&encode(message).unwrap());
    }

    fn read(&mut self) -> Received {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Received::Closed,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Received::Data
            }
            Err(err)
                if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Received::Nothing
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => Received::Nothing,
            // Reset: the dispatcher closed with our bytes still unread.
            Err(_) => Received::Closed,
        }
    }

    /// The next frame's payload, or `None` once the dispatcher closed.
    fn recv_frame(&mut self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.buffer.len() >= 4 {
                let len = u32::from_be_bytes(self.buffer[..4].try_into().unwrap()) as usize;
                if self.buffer.len() >= 4 + len {
                    let payload = self.buffer[4..4 + len].to_vec();
                    self.buffer.drain(..4 + len);
                    return Some(payload);
                }
            }
            match self.read() {
                Received::Data => {}
                Received::Closed => return None,
                Received::Nothing => assert!(Instant::now() < deadline, "no frame from the dispatcher"),
            }
        }
    }

    fn recv<T: DeserializeOwned>(&mut self) -> T {
        let payload = self.recv_frame().expect("the dispatcher closed the connection");
        decode(&payload).expect("the dispatcher's frame decodes")
    }

    /// Waits until the dispatcher closes the connection, discarding what it
    /// sends meanwhile; returns how long that took.
    fn wait_closed(&mut self, what: &str) -> Duration {
        let started = Instant::now();
        loop {
            match self.read() {
                Received::Closed => return started.elapsed(),
                Received::Data => self.buffer.clear(),
                Received::Nothing => assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}"),
            }
        }
    }

    /// As [`Raw::wait_closed`]; returns whether nothing at all was sent
    /// before the close.
    fn wait_closed_silently(&mut self) -> bool {
        let started = Instant::now();
        let mut silent = self.buffer.is_empty();
        loop {
            match self.read() {
                Received::Closed => return silent,
                Received::Data => {
                    silent = false;
                    self.buffer.clear();
                }
                Received::Nothing => assert!(started.elapsed() < PATIENCE, "timed out waiting for the close"),
            }
        }
    }
}

/// Writes `frame` over and over on a second handle of `peer`'s socket until
/// the dispatcher closes it; returns how many were written.
fn flood(peer: &Raw, frame: &[u8]) -> std::thread::JoinHandle<u64> {
    const PER_WRITE: u64 = 512;
    let mut stream = peer.stream.try_clone().unwrap();
    let batch = frame.repeat(PER_WRITE as usize);
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0;
        // Bounded, so a dispatcher that never disconnects fails the test
        // (in `wait_closed`) instead of hanging it.
        while started.elapsed() < PATIENCE && stream.write_all(&batch).is_ok() {
            sent += PER_WRITE;
        }
        sent
    })
}

/// An impostor runner speaking the real protocol.
struct Impostor {
    conn: Connection<DispatcherToRunner, RunnerToDispatcher>,
}

impl Impostor {
    async fn dial(addr: &str) -> Impostor {
        let name = Name::new("mallory").unwrap();
        let (conn, _) =
            protocol::peer::dial(addr, Role::Runner, &name, None, protocol::MAX_FRAME).await.unwrap();
        Impostor { conn }
    }

    async fn send(&mut self, message: RunnerToDispatcher) {
        self.conn.send(&message).await.unwrap();
    }

    /// The next message that is not a ping; pings are answered.
    async fn next(&mut self) -> DispatcherToRunner {
        loop {
            let received = tokio::time::timeout(PATIENCE, self.conn.recv()).await.expect("an answer in time");
            match received.expect("a valid frame").expect("the connection open") {
                DispatcherToRunner::Ping(ping) => {
                    self.send(RunnerToDispatcher::Pong(Pong { seq: ping.seq })).await
                }
                DispatcherToRunner::Forget(Forget { .. }) => {}
                other => return other,
            }
        }
    }
}

/// A repository whose test prints a line, blocks until `go` exists in the
/// gate directory, then passes.
struct Gated {
    repo: Repo,
    commit: String,
    gate: PathBuf,
}

impl Gated {
    fn new(root: &Path) -> Gated {
        let gate = root.join("gate");
        std::fs::create_dir_all(&gate).unwrap();
        let command = format!(
            "[test]\ncommand = \"echo started; touch {gate}/started; \
             while [ ! -e {gate}/go ]; do sleep 0.02; done; echo finished; echo '1 passed, 0 failed'\"\n",
            gate = gate.display()
        );
        let repo = Repo::init(&root.join("gated"));
        let commit = repo.commit(&[(".baton.toml", &command)], "gated test");
        Gated { repo, commit, gate }
    }

    fn repo_arg(&self) -> String {
        self.repo.path.display().to_string()
    }

    /// Waits until the task's test is running on `runner`.
    fn wait_started(&self, addr: &str, id: &str, runner: &str) {
        let marker = self.gate.join("started");
        wait_for("the gated test to start", || marker.exists().then_some(()));
        let task = show(addr, id).unwrap();
        assert_eq!(
            (task["state"].as_str(), task["runner"].as_str()),
            (Some("running"), Some(runner)),
            "{task:#}"
        );
    }

    fn open(&self) {
        std::fs::write(self.gate.join("go"), "").unwrap();
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs { path: path.to_path_buf() })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a process still holding a file cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes zeros to `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if let Err(err) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "filling the disk: {err}");
            return;
        }
    }
}

/// Submits a task with `baton submit`; the task id, or the whole output when
/// it failed.
fn submit(addr: &str, env: &[(&str, &str)], repo: &str, commit: &str) -> Result<String, Output> {
    let output = baton_with_env(addr, &["submit", repo, commit, "--json"], env);
    if !output.status.success() {
        return Err(output);
    }
    let accepted: Value = serde_json::from_slice(&output.stdout).unwrap();
    Ok(accepted["id"].as_i64().expect("an id").to_string())
}

/// The task each test acknowledges before its attack: pending forever, as
/// it needs a label no runner has (impostor runners included).
fn submit_witness(addr: &str, env: &[(&str, &str)]) -> String {
    let args = ["submit", "--label", WITNESS_LABEL, WITNESS_REPO, WITNESS_COMMIT, "--json"];
    let output = baton_with_env(addr, &args, env);
    assert!(output.status.success(), "submitting the witness: {}", String::from_utf8_lossy(&output.stderr));
    let accepted: Value = serde_json::from_slice(&output.stdout).unwrap();
    accepted["id"].as_i64().expect("an id").to_string()
}

/// The dispatcher still answers a normal client and still has the task
/// `id`, in the state and with the commit it had.
fn assert_still_serving(addr: &str, env: &[(&str, &str)], id: &str) {
    let status = baton_json_with_env(addr, &["status"], env);
    assert!(status["tasks"].is_object() && status["runners"].is_object(), "{status:#}");
    let task = baton_json_with_env(addr, &["show", id], env);
    assert_eq!(task["id"].to_string(), id, "{task:#}");
    if task["commit"] == WITNESS_COMMIT {
        assert_eq!(
            (task["repo"].as_str(), task["state"].as_str()),
            (Some(WITNESS_REPO), Some("pending")),
            "{task:#}"
        );
    }
}

/// The dispatcher holds exactly one task, `id`: nothing was queued.
fn assert_only_task(addr: &str, env: &[(&str, &str)], id: &str) {
    let tasks = baton_json_with_env(addr, &["tasks"], env);
    let ids: Vec<String> = tasks.as_array().unwrap().iter().map(|task| task["id"].to_string()).collect();
    assert_eq!(ids, [id], "tasks were queued: {tasks:#}");
}

fn baton_json_with_env(addr: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = baton_with_env(addr, &all, env);
    assert!(output.status.success(), "baton {all:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits until `daemon` has logged `text` (a connection may close before
/// the line about it is written).
fn wait_logged(daemon: &support::Daemon, text: &str) {
    wait_for(&format!("{} to log {text:?}", daemon.name), || daemon.log().contains(text).then_some(()));
}

/// A token file readable by its owner only.
fn token_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn hello(version: u32, role: Role, name: &str) -> Hello {
    Hello { version, role, name: Name::new(name).unwrap() }
}

fn register(held: Vec<Held>) -> RunnerToDispatcher {
    RunnerToDispatcher::Register(Register { labels: Vec::new(), slots: 1, host: HostFacts::default(), held })
}

fn passed(task_id: TaskId, attempt: u32) -> TaskResult {
    TaskResult {
        task_id,
        attempt,
        outcome: Outcome::Passed,
        exit_code: Some(0),
        duration_ms: 1,
        summary: None,
        reason: None,
        output_len: 0,
        tag: None,
        failed_step: None,
    }
}

/// Runs git in `repo` with `input` on stdin; returns trimmed stdout.
fn git_with_input(repo: &Repo, args: &[&str], input: &[u8]) -> String {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(&repo.path)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "git {args:?} failed");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Writes a tree object with exactly these (mode, name, object id) entries,
/// in this order, bypassing git's checks; returns its id.
fn raw_tree(repo: &Repo, entries: &[(&str, &str, &str)]) -> String {
    let mut bytes = Vec::new();
    for (mode, name, id) in entries {
        bytes.extend_from_slice(format!("{mode} {name}\0").as_bytes());
        let raw: Vec<u8> =
            (0..id.len()).step_by(2).map(|at| u8::from_str_radix(&id[at..at + 2], 16).unwrap()).collect();
        bytes.extend_from_slice(&raw);
    }
    git_with_input(repo, &["hash-object", "-t", "tree", "--literally", "-w", "--stdin"], &bytes)
}

/// Every path under `root` whose file name is `name`.
fn find_named(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_name() == name {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                dirs.push(path);
            }
        }
    }
    found
}

/// A frame: 4-byte big-endian length, then the payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// A string as bincode 2 writes it: a varint length (one byte below 251),
/// then the bytes, unchecked.
fn bincode_str(text: &str) -> Vec<u8> {
    assert!(text.len() < 251, "a one-byte length prefix only");
    let mut bytes = vec![text.len() as u8];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// Deterministic noise (xorshift64).
fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

/// Compares bytes, reporting the first difference instead of two dumps.
fn assert_bytes_eq(got: &[u8], expected: &[u8], what: &str) {
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}: got {:?}, expected {:?}", got[at], expected[at]);
    }
    assert_eq!(got.len(), expected.len(), "{what}: length differs");
}

/// A non-loopback IPv4 address of this host, if it has one.
fn non_loopback_ipv4() -> Option<Ipv4Addr> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `addrs` with a list we free below; the list
    // is only read while it is alive.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cursor = addrs;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        // SAFETY: a non-null ifa_addr points to a sockaddr whose family says
        // its real type; AF_INET means sockaddr_in.
        let ip = unsafe {
            (!entry.ifa_addr.is_null() && i32::from((*entry.ifa_addr).sa_family) == libc::AF_INET).then(
                || {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))
                },
            )
        };
        if let Some(ip) = ip.filter(|ip| !ip.is_loopback()) {
            found = Some(ip);
            break;
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `addrs` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(addrs) };
    found
}
