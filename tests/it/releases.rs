//! Release records, deploy steps, rollback and notifications (issue 8).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::mpsc;

use serde_json::Value;

use crate::support::{self, baton, baton_json, wait_final, wait_for, Dispatcher, Repo};

fn submit(addr: &str, repo: &Repo, commit: &str, branch: &str) -> Value {
    let accepted =
        baton_json(addr, &["submit", &repo.path.display().to_string(), commit, "--branch", branch]);
    wait_final(addr, &accepted["id"].as_i64().unwrap().to_string())
}

fn releases(addr: &str) -> Vec<Value> {
    baton_json(addr, &["releases"]).as_array().unwrap().clone()
}

/// Waits until release `version` (e.g. "r2") is in `state`.
fn wait_release(addr: &str, version: &str, state: &str) -> Value {
    wait_for(&format!("release {version} to be {state}"), || {
        releases(addr).into_iter().find(|r| r["version"] == version && r["state"] == state)
    })
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("dispatcher.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn passing_commits_on_release_branches_become_numbered_releases() {
    let tmp = tempfile::tempdir().unwrap();
    let events = tmp.path().join("events.jsonl");
    let config = write_config(
        tmp.path(),
        &format!("[[notifier]]\ncommand = [\"sh\", \"-c\", \"cat >> {}\"]\n", events.display()),
    );
    let repo = Repo::init(&tmp.path().join("repo"));
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--config", &config]);
    let _runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let first = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "one");
    repo.git(&["tag", "v1.0"]);
    assert_eq!(submit(&dispatcher.addr, &repo, &first, "main")["state"], "passed");
    let broken = repo.commit(&[("tests/test_sum.py", &support::unittest(false))], "broken");
    assert_eq!(submit(&dispatcher.addr, &repo, &broken, "main")["state"], "failed");
    let fixed = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "fixed");
    assert_eq!(submit(&dispatcher.addr, &repo, &fixed, "main")["state"], "passed");
    let feature = repo.commit(&[("README", "feature")], "feature work");
    assert_eq!(submit(&dispatcher.addr, &repo, &feature, "feature")["state"], "passed");

    let listed = releases(&dispatcher.addr);
    let versions: Vec<(&str, &str)> =
        listed.iter().map(|r| (r["version"].as_str().unwrap(), r["commit"].as_str().unwrap())).collect();
    assert_eq!(versions, [("r2", fixed.as_str()), ("r1", first.as_str())], "{listed:#?}");
    assert_eq!(listed[1]["tag"], "v1.0");
    assert_eq!(listed[0]["previous"], "r1");
    assert_eq!(listed[0]["state"], "recorded");
    let dir = wait_for("the releases folder", || {
        std::fs::read_dir(dispatcher.data_dir.join("releases")).ok()?.next()?.ok()
    })
    .path();
    for release in &listed {
        let file = dir.join(format!("{}.json", release["version"].as_str().unwrap()));
        let text = wait_for("the release file", || std::fs::read_to_string(&file).ok());
        let mut on_disk: Value = serde_json::from_str(&text).unwrap();
        on_disk["state"] = release["state"].clone();
        assert_eq!(&on_disk, release, "{} matches the database", file.display());
    }

    let kinds = wait_for("the notifier to receive every event", || {
        let text = std::fs::read_to_string(&events).ok()?;
        let kinds: Vec<String> = text
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["event"].as_str().unwrap().to_string())
            .collect();
        (kinds.len() >= 4).then_some(kinds)
    });
    assert_eq!(kinds, ["release_recorded", "task_failed", "task_recovered", "release_recorded"]);
}

#[test]
fn deploys_run_on_the_deploy_runner_and_a_failed_health_check_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let steps = tmp.path().join("steps.log");
    let repo = Repo::init(&tmp.path().join("repo"));
    let config = write_config(
        tmp.path(),
        &format!(
            "[[repo]]\nurl = \"{repo}\"\npre_deploy = \"echo pre $BATON_RELEASE >> {log}\"\n\
             deploy = \"echo deploy $BATON_RELEASE $BATON_COMMIT prev=$BATON_PREVIOUS_COMMIT >> {log}\"\n\
             post_deploy = \"echo post $BATON_RELEASE >> {log}; test -e healthy\"\nauto_rollback = true\n",
            repo = repo.path.display(),
            log = steps.display()
        ),
    );
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--config", &config]);
    let _tests = support::runner(tmp.path(), &dispatcher.addr, "tests", &[]);
    let _deployer = support::runner(tmp.path(), &dispatcher.addr, "deployer", &["--labels", "deploy"]);

    let good = repo.commit(&[("tests/test_sum.py", &support::unittest(true)), ("healthy", "")], "good");
    submit(&dispatcher.addr, &repo, &good, "main");
    let r1 = wait_release(&dispatcher.addr, "r1", "deployed");
    let deploy_task = support::show(&dispatcher.addr, &r1["deploy_task"].to_string()).unwrap();
    assert_eq!(deploy_task["runner"], "deployer", "{deploy_task:#}");
    assert_eq!(deploy_task["kind"], "deploy");
    let log = std::fs::read_to_string(&steps).unwrap();
    assert_eq!(log, format!("pre r1\ndeploy r1 {good} prev=\npost r1\n"));

    // The next commit passes its tests but fails the health check.
    repo.git(&["rm", "-q", "healthy"]);
    let sick = repo.commit(&[], "sick");
    submit(&dispatcher.addr, &repo, &sick, "main");
    wait_release(&dispatcher.addr, "r2", "failed");
    let r3 = wait_release(&dispatcher.addr, "r3", "deployed");
    assert_eq!((r3["kind"].as_str(), r3["rollback_to"].as_str()), (Some("rollback"), Some("r1")), "{r3:#}");
    assert_eq!(r3["commit"], good.as_str());
    assert_eq!(r3["trigger"], "auto-rollback of r2");

    // r3 already runs r1's commit and r2 failed, so no earlier good release
    // has another commit: name the target explicitly.
    let output =
        baton(&dispatcher.addr, &["rollback", &repo.path.display().to_string(), "--to", "r1", "--json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let r4: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((r4["version"].as_str(), r4["trigger"].as_str()), (Some("r4"), Some("baton rollback")));
    wait_release(&dispatcher.addr, "r4", "deployed");
    wait_release(&dispatcher.addr, "r3", "rolled_back");
    let log = std::fs::read_to_string(&steps).unwrap();
    assert!(log.ends_with("post r4\n"), "{log}");
}

/// A tiny HTTP server: answers every request 200 and sends each body down
/// the channel.
fn http_sink(listener: TcpListener) -> mpsc::Receiver<Value> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if sender.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        }
    });
    receiver
}

#[test]
fn an_http_notifier_gets_the_events_made_while_it_was_down_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    // Reserve a port, then leave it closed: the notifier is down.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = write_config(tmp.path(), &format!("[[notifier]]\nurl = \"http://127.0.0.1:{port}/hook\"\n"));
    let repo = Repo::init(&tmp.path().join("repo"));
    let mut dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--config", &config]);
    let runner = support::runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let broken = repo.commit(&[("tests/test_sum.py", &support::unittest(false))], "broken");
    submit(&dispatcher.addr, &repo, &broken, "topic");

    dispatcher.restart(&["--config", &config]);
    let fixed = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "fixed");
    submit(&dispatcher.addr, &repo, &fixed, "topic");
    drop(runner);

    let received = http_sink(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let mut events = Vec::new();
    while events.len() < 2 {
        let event = received.recv_timeout(support::PATIENCE).expect("a notification");
        events.push(event);
    }
    let kinds: Vec<&str> = events.iter().map(|event| event["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["task_failed", "task_recovered"]);
    assert_eq!(events[0]["task"]["commit"], broken.as_str());
    assert_eq!(events[1]["task"]["commit"], fixed.as_str());
}
