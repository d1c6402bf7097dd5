//! Deployments to environments (issue 18, SPEC §12): runners labelled as
//! hosts on one machine, whose deploy step appends `ENVIRONMENT HOST
//! RELEASE` to a file, so each test sees which host got which release, in
//! which order.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{self, baton, baton_json, wait_final, wait_for, Daemon, Dispatcher, Repo};

/// A repository, its hosts' log, and the dispatcher config deploying it.
struct Setup {
    tmp: tempfile::TempDir,
    repo: Repo,
    hosts_log: PathBuf,
}

impl Setup {
    /// `environments` is the text of the `[[repo.environment]]` tables.
    /// The deploy step logs the host; the post-deploy health check fails
    /// where the release holds a file `fail-<environment>`; a file
    /// `gate-<host>` in the temp dir, when `gated` names the host, holds
    /// its deploy step until it exists.
    fn new(environments: &str, extra: &str) -> (Setup, String) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::init(&tmp.path().join("repo"));
        let hosts_log = tmp.path().join("hosts.log");
        let gates = tmp.path().display();
        let config = format!(
            "[[repo]]\nurl = \"{repo}\"\n\
             deploy = \"while [ -e {gates}/hold-$BATON_HOST ] && [ ! -e {gates}/gate-$BATON_HOST ]; do sleep 0.05; done; \
             echo $BATON_ENVIRONMENT $BATON_HOST $BATON_RELEASE >> {log}\"\n\
             post_deploy = \"test ! -e fail-$BATON_ENVIRONMENT\"\n{environments}\n{extra}",
            repo = repo.path.display(),
            log = hosts_log.display(),
        );
        let path = tmp.path().join("dispatcher.toml");
        std::fs::write(&path, config).unwrap();
        let path = path.display().to_string();
        (Setup { tmp, repo, hosts_log }, path)
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn repo_arg(&self) -> String {
        self.repo.path.display().to_string()
    }

    /// The hosts' log: `(environment, host, release)` lines in order.
    fn hosts(&self) -> Vec<String> {
        std::fs::read_to_string(&self.hosts_log).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Commits, submits on `main` and waits for the test to pass.
    fn release(&self, addr: &str, files: &[(&str, &str)], message: &str) {
        let mut all = vec![("tests/test_sum.py", support::unittest(true))];
        all.extend(files.iter().map(|(path, text)| (*path, text.to_string())));
        let all: Vec<(&str, &str)> = all.iter().map(|(path, text)| (*path, text.as_str())).collect();
        let commit = self.repo.commit(&all, message);
        let accepted = baton_json(addr, &["submit", &self.repo_arg(), &commit, "--branch", "main"]);
        let task = wait_final(addr, &accepted["id"].as_i64().unwrap().to_string());
        assert_eq!(task["state"], "passed", "{task:#}");
    }
}

/// Starts runners labelled as hosts and waits until all are registered.
fn hosts(root: &Path, addr: &str, hosts: &[(&str, &str)]) -> Vec<Daemon> {
    let daemons: Vec<Daemon> =
        hosts.iter().map(|(name, labels)| support::runner(root, addr, name, &["--labels", labels])).collect();
    wait_for("every host to register", || {
        let runners = baton_json(addr, &["runners"]);
        let n_live = runners.as_array()?.iter().filter(|runner| runner["state"] != "dead").count();
        (n_live == hosts.len()).then_some(())
    });
    daemons
}

fn deployments(addr: &str, env: &str) -> Vec<Value> {
    baton_json(addr, &["deployments", "--env", env]).as_array().unwrap().clone()
}

/// Waits until the newest deployment of `version` in `env` is in `state`.
fn wait_deployment(addr: &str, env: &str, version: &str, state: &str) -> Value {
    wait_for(&format!("{version} to be {state} in {env}"), || {
        let found = deployments(addr, env).into_iter().find(|d| d["version"] == version)?;
        (found["state"] == state).then_some(found)
    })
}

/// `baton ARGS --json`, expected to fail: its stderr.
fn refused(addr: &str, args: &[&str]) -> String {
    let output = baton(addr, args);
    assert!(!output.status.success(), "{args:?} succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const STAGING_AND_PRODUCTION: &str = "\
[[repo.environment]]
name = \"staging\"
labels = [\"deploy\", \"staging\"]
auto = true
[[repo.environment]]
name = \"production\"
labels = [\"deploy\", \"prod\"]
auto = true
after = \"staging\"
approval = true
canary = 1
auto_rollback = true
";

#[test]
fn a_release_goes_through_staging_to_an_approved_gray_production_and_a_bad_canary_rolls_back() {
    let events = tempfile::NamedTempFile::new().unwrap();
    let notifier = format!(
        "[[notifier]]\ncommand = [\"sh\", \"-c\", \"cat >> {}; echo >> {}\"]\n\
         events = [\"deployment_waiting\", \"deployment_started\", \"deployment_deployed\", \"deployment_failed\", \"rollback\"]\n",
        events.path().display(),
        events.path().display()
    );
    let (setup, config) = Setup::new(STAGING_AND_PRODUCTION, &notifier);
    let dispatcher = Dispatcher::start(&setup.path().join("data"), &["--config", &config]);
    let addr = dispatcher.addr.as_str();
    let _hosts = hosts(
        setup.path(),
        addr,
        &[
            ("tests", "test"),
            ("stage-a", "deploy,staging"),
            ("prod-a", "deploy,prod"),
            ("prod-b", "deploy,prod"),
        ],
    );

    setup.release(addr, &[], "good");
    let staged = wait_deployment(addr, "staging", "r1", "deployed");
    assert_eq!(staged["hosts"], serde_json::json!({ "stage-a": "deployed" }), "{staged:#}");
    assert_eq!(staged["requested_by"], "release r1");
    let waiting = wait_for("production to wait for approval", || {
        let found = deployments(addr, "production").into_iter().find(|d| d["version"] == "r1")?;
        (found["waiting_for"] == "approval").then_some(found)
    });
    assert_eq!(waiting["state"], "waiting");
    assert_eq!(waiting["approved_by"], Value::Null);
    assert_eq!(setup.hosts(), ["staging stage-a r1"], "nothing reaches production before approval");

    let approved = baton_json(addr, &["approve", &setup.repo_arg(), "r1", "--env", "production"]);
    assert_eq!(approved["approved_by"], "baton", "{approved:#}");
    assert!(approved["approved_at"].is_string());
    let deployed = wait_deployment(addr, "production", "r1", "deployed");
    assert_eq!(deployed["hosts"], serde_json::json!({ "prod-a": "deployed", "prod-b": "deployed" }));
    assert_eq!(deployed["host_details"][0]["canary"], true);
    assert_eq!(deployed["host_details"][1]["canary"], false);
    assert_eq!(
        setup.hosts(),
        ["staging stage-a r1", "production prod-a r1", "production prod-b r1"],
        "the canary first, then the rest"
    );
    assert!(deployed["finished_at"].is_string() && deployed["created_at"].is_string());

    // A release whose health check fails in production only.
    setup.release(addr, &[("fail-production", "")], "bad in production");
    wait_deployment(addr, "staging", "r2", "deployed");
    wait_for("r2 to wait for approval in production", || {
        let found = deployments(addr, "production").into_iter().find(|d| d["version"] == "r2")?;
        (found["waiting_for"] == "approval").then_some(())
    });
    baton_json(addr, &["approve", &setup.repo_arg(), "r2", "--env", "production"]);
    let failed = wait_deployment(addr, "production", "r2", "failed");
    assert_eq!(failed["hosts"], serde_json::json!({ "prod-a": "failed", "prod-b": "skipped" }), "{failed:#}");
    assert!(failed["reason"].as_str().unwrap().contains("prod-a failed in post_deploy"), "{failed:#}");
    let rollback = wait_for("the canary's rollback to r1", || {
        let found = deployments(addr, "production").into_iter().find(|d| d["kind"] == "rollback")?;
        (found["state"] == "deployed").then_some(found)
    });
    assert_eq!(rollback["version"], "r1");
    assert_eq!(rollback["hosts"], serde_json::json!({ "prod-a": "deployed" }), "only the canary host");
    assert_eq!(rollback["requested_by"], "auto-rollback of r2");
    assert_eq!(
        setup.hosts(),
        [
            "staging stage-a r1",
            "production prod-a r1",
            "production prod-b r1",
            "staging stage-a r2",
            "production prod-a r2",
            "production prod-a r1",
        ],
        "prod-b never got r2"
    );

    // Every record is mirrored as a JSON file.
    let all = baton_json(addr, &["deployments"]);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 5, "{all:#?}");
    let releases = dispatcher.data_dir.join("releases");
    let repo_dir = std::fs::read_dir(&releases).unwrap().next().unwrap().unwrap().path();
    for deployment in all {
        let file = repo_dir.join("deployments").join(format!("d{}.json", deployment["id"]));
        wait_for(&format!("{} to mirror the record", file.display()), || {
            let text = std::fs::read_to_string(&file).ok()?;
            let on_disk: Value = serde_json::from_str(&text).ok()?;
            (&on_disk == deployment).then_some(())
        });
    }

    // Going backwards is a rollback, not a deploy.
    let why = refused(addr, &["deploy", &setup.repo_arg(), "r1", "--env", "staging"]);
    assert!(why.contains("r1 is older than r2"), "{why}");
    assert!(why.contains("baton rollback"), "{why}");
    let rolled = baton_json(addr, &["rollback", &setup.repo_arg(), "--env", "staging", "--to", "r1"]);
    assert_eq!((rolled["kind"].as_str(), rolled["version"].as_str()), (Some("rollback"), Some("r1")));
    wait_for("the staging rollback to finish", || {
        let found = deployments(addr, "staging").into_iter().find(|d| d["kind"] == "rollback")?;
        (found["state"] == "deployed").then_some(())
    });
    wait_deployment(addr, "staging", "r2", "rolled_back");
    assert_eq!(setup.hosts().last().map(String::as_str), Some("staging stage-a r1"));

    // The notifier heard of each kind of change, with the deployment.
    let told = wait_for("the notifier to hear of the staging rollback", || {
        let text = std::fs::read_to_string(events.path()).ok()?;
        let told: Vec<Value> = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let rollbacks = told.iter().filter(|event| event["event"] == "rollback").count();
        (rollbacks == 2).then_some(told)
    });
    for kind in ["deployment_waiting", "deployment_started", "deployment_deployed", "deployment_failed"] {
        assert!(told.iter().any(|event| event["event"] == kind), "no {kind} in {told:#?}");
    }
    let failed = told.iter().find(|event| event["event"] == "deployment_failed").unwrap();
    assert_eq!(
        (failed["deployment"]["version"].as_str(), failed["deployment"]["environment"].as_str()),
        (Some("r2"), Some("production"))
    );
}

#[test]
fn after_and_needs_make_a_deployment_wait_until_they_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Repo::init(&tmp.path().join("api"));
    let (setup, config) = Setup::new(
        &format!(
            "[[repo.environment]]\nname = \"staging\"\nlabels = [\"deploy\"]\n\
             [[repo.environment]]\nname = \"production\"\nlabels = [\"deploy\"]\nauto = true\nafter = \"staging\"\n\
             needs = [{{ repo = \"{api}\", environment = \"production\" }}]\n",
            api = api.path.display()
        ),
        &format!(
            "[[repo]]\nurl = \"{api}\"\ndeploy = \"true\"\n\
             [[repo.environment]]\nname = \"production\"\nlabels = [\"deploy\"]\n",
            api = api.path.display()
        ),
    );
    let dispatcher = Dispatcher::start(&setup.path().join("data"), &["--config", &config]);
    let addr = dispatcher.addr.as_str();
    let _hosts = hosts(setup.path(), addr, &[("host-1", "deploy")]);

    setup.release(addr, &[], "app");
    let waiting = wait_for("production to wait for staging", || {
        let found = deployments(addr, "production").into_iter().next()?;
        (found["waiting_for"].as_str()? == "after: r1 deployed in staging").then_some(found)
    });
    assert_eq!(waiting["state"], "waiting");
    assert!(deployments(addr, "staging").is_empty(), "staging has no auto");

    baton_json(addr, &["deploy", &setup.repo_arg(), "r1", "--env", "staging"]);
    wait_deployment(addr, "staging", "r1", "deployed");
    let needs = format!("needs: a release of {} deployed in production", api.path.display());
    wait_for("production to wait for the api", || {
        let found = deployments(addr, "production")
            .into_iter()
            .find(|d| d["repo"] != api.path.display().to_string())?;
        (found["waiting_for"].as_str()? == needs).then_some(())
    });

    let commit = api.commit(&[("tests/test_sum.py", &support::unittest(true))], "api");
    let accepted =
        baton_json(addr, &["submit", &api.path.display().to_string(), &commit, "--branch", "main"]);
    wait_final(addr, &accepted["id"].as_i64().unwrap().to_string());
    let api_arg = api.path.display().to_string();
    let asked = baton_json(addr, &["deploy", &api_arg, "r1", "--env", "production"]);
    assert_eq!(asked["requested_by"], "baton");
    let app = wait_for("the app to reach production once the api is there", || {
        let found = deployments(addr, "production").into_iter().find(|d| d["repo"] == setup.repo_arg())?;
        (found["state"] == "deployed").then_some(found)
    });
    assert_eq!(app["waiting_for"], Value::Null);
    assert_eq!(setup.hosts(), ["staging host-1 r1", "production host-1 r1"]);
}

#[test]
fn a_waiting_deployment_can_be_rejected_and_other_approval_refuses_the_requester() {
    let (setup, config) = Setup::new(
        "[[repo.environment]]\nname = \"production\"\nlabels = [\"deploy\"]\napproval = \"other\"\n",
        "",
    );
    let dispatcher = Dispatcher::start(&setup.path().join("data"), &["--config", &config]);
    let addr = dispatcher.addr.as_str();
    let _hosts = hosts(setup.path(), addr, &[("host-1", "deploy")]);
    setup.release(addr, &[], "one");
    let asked = baton_json(addr, &["deploy", &setup.repo_arg(), "r1", "--env", "production"]);
    assert_eq!((asked["state"].as_str(), asked["waiting_for"].as_str()), (Some("waiting"), Some("approval")));
    let why = refused(addr, &["approve", &setup.repo_arg(), "r1", "--env", "production"]);
    assert!(why.contains("may not approve it"), "{why}");
    let rejected = baton_json(
        addr,
        &["reject", &setup.repo_arg(), "r1", "--env", "production", "--reason", "change freeze"],
    );
    assert_eq!(rejected["state"], "rejected");
    assert_eq!(rejected["reason"], "rejected by baton: change freeze");
    assert!(rejected["finished_at"].is_string());
    let why = refused(addr, &["approve", &setup.repo_arg(), "r1", "--env", "production"]);
    assert!(why.contains("not waiting"), "{why}");
    assert!(setup.hosts().is_empty());
}

#[test]
fn a_dispatcher_killed_during_a_canary_resumes_without_deploying_any_host_twice() {
    let (setup, config) = Setup::new(
        "[[repo.environment]]\nname = \"production\"\nlabels = [\"deploy\"]\nauto = true\ncanary = \"50%\"\n",
        "",
    );
    let mut dispatcher = Dispatcher::start(&setup.path().join("data"), &["--config", &config]);
    let addr = dispatcher.addr.clone();
    let _hosts = hosts(setup.path(), &addr, &[("host-a", "deploy"), ("host-b", "deploy")]);
    // host-a, the canary, holds in its deploy step until the gate opens.
    std::fs::write(setup.path().join("hold-host-a"), "").unwrap();
    setup.release(&addr, &[], "one");
    let canary = wait_for("the canary to be deploying", || {
        let found = deployments(&addr, "production").into_iter().next()?;
        (found["state"] == "canary" && found["hosts"]["host-a"] == "deploying").then_some(found)
    });
    assert_eq!(canary["hosts"]["host-b"], "waiting");
    let task = canary["host_details"][0]["task"].to_string();
    wait_for("the canary's task to run", || {
        (support::show(&addr, &task)?["state"] == "running").then_some(())
    });

    dispatcher.restart(&["--config", &config]);
    std::fs::write(setup.path().join("gate-host-a"), "").unwrap();
    let deployed = wait_deployment(&addr, "production", "r1", "deployed");
    assert_eq!(deployed["hosts"], serde_json::json!({ "host-a": "deployed", "host-b": "deployed" }));
    assert_eq!(setup.hosts(), ["production host-a r1", "production host-b r1"], "each host once");
    let canary_task = support::show(&addr, &task).unwrap();
    assert_eq!(canary_task["attempts"], 1, "re-adopted, not run again: {canary_task:#}");
}

/// Starts a dispatcher on a config that must be refused: its stderr.
fn refused_config(environments: &str) -> String {
    let (setup, config) = Setup::new(environments, "");
    let data = setup.path().join("data");
    let output = std::process::Command::new(support::bin("baton-dispatcher"))
        .args(["--listen", "127.0.0.1:0", "--http", "off", "--data-dir", &data.display().to_string()])
        .args(["--config", &config])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn environments_are_validated_at_start_up() {
    let why =
        refused_config("[[repo.environment]]\nname = \"prod\"\nlabels = [\"deploy\"]\nafter = \"staging\"\n");
    assert!(why.contains("after = \"staging\" names no environment"), "{why}");
    let why = refused_config(
        "[[repo.environment]]\nname = \"a\"\nlabels = [\"x\"]\nafter = \"b\"\n\
         [[repo.environment]]\nname = \"b\"\nlabels = [\"x\"]\nafter = \"a\"\n",
    );
    assert!(why.contains("after makes a cycle: a -> b -> a"), "{why}");
    let why = refused_config(
        "[[repo.environment]]\nname = \"prod\"\nlabels = [\"x\"]\n\
         needs = [{ repo = \"/srv/git/nowhere\", environment = \"prod\" }]\n",
    );
    assert!(why.contains("needs /srv/git/nowhere which is not a configured [[repo]]"), "{why}");
    let why = refused_config("[[repo.environment]]\nname = \"prod\"\nlabels = [\"x\"]\ncanary = \"100%\"\n");
    assert!(why.contains("canary = \"100%\""), "{why}");
    let why = refused_config("[[repo.environment]]\nname = \"prod\"\nlabels = [\"x\"]\ncanary = 0\n");
    assert!(why.contains("canary = 0"), "{why}");
    let why =
        refused_config("[[repo.environment]]\nname = \"prod\"\nlabels = [\"x\"]\napproval = \"others\"\n");
    assert!(why.contains("approval \"others\""), "{why}");
}

#[test]
fn the_web_api_lists_deployments_and_steers_them_like_the_client() {
    use crate::web::{get, post};
    let (setup, config) = Setup::new(
        "[[repo.environment]]\nname = \"production\"\nlabels = [\"deploy\"]\napproval = true\n",
        "",
    );
    let dispatcher = Dispatcher::start(&setup.path().join("data"), &["--config", &config]);
    let addr = dispatcher.addr.as_str();
    let http = dispatcher.http.clone().expect("the web service runs");
    let _hosts = hosts(setup.path(), addr, &[("host-1", "deploy")]);
    setup.release(addr, &[], "one");

    let body = serde_json::json!({ "repo": setup.repo_arg(), "version": "r1", "env": "production" });
    let asked = post(&http, "/api/v1/deployments", body.to_string().as_bytes(), None);
    assert_eq!(asked.status, 201, "{}", asked.text());
    let asked = asked.json();
    assert_eq!(asked["waiting_for"], "approval");
    assert!(asked["requested_by"].as_str().unwrap().starts_with("web "), "{asked:#}");
    let listed = get(&http, "/api/v1/deployments?env=production").json();
    assert_eq!(listed, baton_json(addr, &["deployments", "--env", "production"]), "the same keys as --json");
    let page = get(&http, "/releases").text();
    assert!(
        page.contains(&format!("/api/v1/deployments/{}/approve", asked["id"])),
        "a waiting one has buttons"
    );

    post(&http, "/api/v1/deployments/x/approve", b"", None).assert_error(400);
    post(&http, "/api/v1/deployments/999/approve", b"", None).assert_error(404);
    post(&http, "/api/v1/deployments", b"{\"repo\": 1}", None).assert_error(400);
    let approved = post(&http, &format!("/api/v1/deployments/{}/approve", asked["id"]), b"", None);
    assert_eq!(approved.status, 200, "{}", approved.text());
    post(&http, &format!("/api/v1/deployments/{}/approve", asked["id"]), b"", None).assert_error(409);
    wait_deployment(addr, "production", "r1", "deployed");
    assert_eq!(setup.hosts(), ["production host-1 r1"]);
}
