//! Tokens: wrong and missing secrets are rejected, the right one works end to
//! end, and without a token file only loopback peers are admitted.

use protocol::handshake::Proof;
use protocol::Secret;

use super::*;
use crate::support::{unless_opted_out, Netns};

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
        peer.send(&Proof { mac, nonce: [7; 32], user: None });
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
    // A network namespace of the test's own, whose loopback also has an
    // address outside 127/8: a peer dialling it is not a loopback peer, on
    // any machine. Making one needs root: CI runs as root, and a developer
    // without it opts out explicitly (`harness::system`).
    const OUTSIDE_IP: &str = "10.200.0.1";
    let netns = Netns::new().and_then(|netns| netns.add_address(OUTSIDE_IP).map(|()| netns));
    let Some(netns) = support::ok(unless_opted_out(netns, "the non-loopback test")) else { return };
    let in_netns = |addr: &str, args: &[&str]| {
        let mut command = support::baton_command(addr, args, &[]);
        support::ok(netns.enter(&mut command));
        command.output().expect("running baton in the namespace")
    };
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start_in(&netns, &tmp.path().join("data"), &[]);
    let port = dispatcher.addr.rsplit(':').next().unwrap().to_string();
    let (loopback, outside) = (format!("127.0.0.1:{port}"), format!("{OUTSIDE_IP}:{port}"));
    let output = in_netns(&loopback, &["status", "--json"]);
    assert!(output.status.success(), "a loopback client: {}", String::from_utf8_lossy(&output.stderr));

    let dial = outside.clone();
    let mut peer = support::ok(netns.within(move || Raw::connect(&dial)));
    peer.send(&hello(PROTOCOL_VERSION, Role::Runner, "outsider"));
    match peer.recv::<DispatcherHandshake>() {
        DispatcherHandshake::Reject(reject) => assert!(reject.reason.contains("loopback"), "{reject:?}"),
        other => panic!("a non-loopback peer was not rejected: {other:?}"),
    }
    let output = in_netns(&outside, &["status"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
    let output = in_netns(&loopback, &["status", "--json"]);
    assert!(output.status.success(), "after the outsider: {}", String::from_utf8_lossy(&output.stderr));

    // With a token file the same peer is admitted once it proves the secret.
    let token = token_file(tmp.path(), "token", "s3cret");
    let token_arg = token.display().to_string();
    let secured = Dispatcher::start_in(&netns, &tmp.path().join("data2"), &["--token-file", &token_arg]);
    let port = secured.addr.rsplit(':').next().unwrap();
    let output = in_netns(&format!("{OUTSIDE_IP}:{port}"), &["--token-file", &token_arg, "status", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}
