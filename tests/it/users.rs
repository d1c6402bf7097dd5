//! People (issue 18 item 5, SPEC §12): `[[user]]` tables with OpenSSH keys
//! made by `ssh-keygen`, clients proving a user with `baton --key-file`, the
//! roles deciding who steers, and steering records naming the user.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{self, baton_command, wait_for, Dispatcher, Repo};

/// Makes an Ed25519 key pair with `ssh-keygen` (a passphrase when given) and
/// returns the private key's path; the public key is next to it (`.pub`).
fn keygen(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
    keygen_kind(dir, name, "ed25519", passphrase)
}

fn keygen_kind(dir: &Path, name: &str, kind: &str, passphrase: &str) -> PathBuf {
    let path = dir.join(name);
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", passphrase, "-C", &format!("{name}@test"), "-f"])
        .arg(&path)
        .output()
        .expect("running ssh-keygen (package openssh-client)");
    assert!(output.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&output.stderr));
    path
}

fn public_line(key: &Path) -> String {
    std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_string()
}

/// A `[[user]]` table.
fn user_table(name: &str, key: &Path, roles: &str) -> String {
    format!("[[user]]\nname = \"{name}\"\npublic_key = \"{}\"\nroles = [{roles}]\n\n", public_line(key))
}

/// Someone running `baton`: with a key file or a token file, and a home
/// without `~/.ssh`, so nothing but what the test gives is presented.
struct Person {
    env: Vec<(String, String)>,
    args: Vec<String>,
}

impl Person {
    fn new(home: &Path) -> Person {
        Person { env: vec![("HOME".into(), home.display().to_string())], args: Vec::new() }
    }

    fn with_key(home: &Path, key: &Path) -> Person {
        Person::new(home).arg("--key-file", &key.display().to_string())
    }

    fn with_token(home: &Path, token: &Path) -> Person {
        let mut person = Person::new(home);
        person.env.push(("BATON_TOKEN_FILE".into(), token.display().to_string()));
        person
    }

    fn arg(mut self, flag: &str, value: &str) -> Person {
        self.args.extend([flag.to_string(), value.to_string()]);
        self
    }

    fn run(&self, addr: &str, args: &[&str]) -> Output {
        let mut all: Vec<&str> = self.args.iter().map(String::as_str).collect();
        all.extend(args);
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        baton_command(addr, &all, &env).output().expect("running baton")
    }

    /// Runs `baton ARGS --json`, which must succeed.
    fn json(&self, addr: &str, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        support::json_output(&all, &self.run(addr, &all))
    }

    /// Runs `baton ARGS`, which must fail with `exit` and say `words`.
    #[track_caller]
    fn refused(&self, addr: &str, args: &[&str], exit: i32, words: &str) {
        let output = self.run(addr, args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(exit), "baton {args:?}: stderr: {stderr}");
        assert!(stderr.contains(words), "baton {args:?}: expected {words:?} in stderr: {stderr}");
    }

    fn wait_state(&self, addr: &str, id: i64, states: &[&str]) -> Value {
        wait_for(&format!("task {id} in {states:?}"), || {
            let task = self.json(addr, &["show", &id.to_string()]);
            states.contains(&task["state"].as_str()?).then_some(task)
        })
    }
}

/// A `$HOME` for the client and a directory for the keys, under `root`.
fn home_and_keys(root: &Path) -> (PathBuf, PathBuf) {
    let (home, keys) = (root.join("home"), root.join("keys"));
    std::fs::create_dir(&home).unwrap();
    std::fs::create_dir(&keys).unwrap();
    (home, keys)
}

fn id(accepted: &Value) -> i64 {
    accepted["id"].as_i64().expect("an id")
}

#[test]
fn roles_decide_who_steers_and_records_name_the_user() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, keys) = home_and_keys(tmp.path());
    let (alice, rita, stranger) =
        (keygen(&keys, "alice", ""), keygen(&keys, "rita", ""), keygen(&keys, "stranger", ""));
    let locked = keygen(&keys, "locked", "a passphrase");
    let token = tmp.path().join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let config = tmp.path().join("dispatcher.toml");
    std::fs::write(
        &config,
        user_table("alice", &alice, "\"trigger\"") + &user_table("rita", &rita, "\"read\""),
    )
    .unwrap();
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "one");
    let repo_arg = repo.path.display().to_string();
    let token_arg = token.display().to_string();
    let dispatcher = Dispatcher::start(
        &tmp.path().join("data"),
        &["--config", &config.display().to_string(), "--token-file", &token_arg],
    );
    let addr = dispatcher.addr.as_str();
    let _runner = support::runner(tmp.path(), addr, "r1", &["--token-file", &token_arg]);
    let (alice_client, rita_client) = (Person::with_key(&home, &alice), Person::with_key(&home, &rita));
    let secret_client = Person::with_token(&home, &token);

    // Rita reads with her key alone, but may not submit.
    assert!(rita_client.json(addr, &["status"])["tasks"].is_object());
    rita_client.refused(
        addr,
        &["submit", &repo_arg, &commit],
        1,
        "not allowed: user rita lacks the trigger role",
    );

    // Alice may; the task names her, and so does her rerun.
    let submitted = alice_client.json(addr, &["submit", &repo_arg, &commit]);
    let task = secret_client.wait_state(addr, id(&submitted), &["passed"]);
    assert_eq!(task["requested_by"], "alice", "{task:#}");
    let rerun = alice_client.json(addr, &["rerun", &id(&submitted).to_string()]);
    let task = secret_client.wait_state(addr, id(&rerun), &["passed"]);
    assert_eq!((task["trigger"].as_str(), task["requested_by"].as_str()), (Some("rerun"), Some("alice")));

    // A task no runner can take stays pending: alice aborts it, and the
    // record says so; rita may not abort anything.
    let stuck = alice_client.json(addr, &["submit", &repo_arg, &commit, "--label", "nowhere"]);
    let stuck_id = id(&stuck).to_string();
    rita_client.refused(addr, &["abort", &stuck_id], 1, "lacks the trigger role");
    let aborted = alice_client.json(addr, &["abort", &stuck_id]);
    assert_eq!((aborted["state"].as_str(), aborted["aborted_by"].as_str()), (Some("aborted"), Some("alice")));
    let shown = secret_client.json(addr, &["show", &stuck_id]);
    assert_eq!(shown["aborted_by"], "alice");
    assert_eq!(shown["requested_by"], "alice");

    // The shared secret alone still reads but no longer steers.
    assert!(secret_client.json(addr, &["tasks"]).as_array().is_some_and(|tasks| tasks.len() == 3));
    secret_client.refused(addr, &["submit", &repo_arg, &commit], 1, "this dispatcher has users; prove one");
    // Nor does the web API, which cannot prove a user.
    let http = dispatcher.http.as_deref().expect("the web service runs");
    let body = serde_json::json!({ "repo": repo_arg, "commit": commit }).to_string();
    let answer = crate::web::post(http, "/api/v1/tasks", body.as_bytes(), Some("s3cret"));
    answer.assert_error(403);
    assert!(answer.text().contains("cannot prove a user"), "{}", answer.text());

    // A key not in the config, and a configured name with the wrong key,
    // are refused at the handshake with a clear reason.
    let refused = Person::with_key(&home, &stranger);
    refused.refused(addr, &["status"], 2, "no user has the key SHA256:");
    let impostor = Person::with_key(&home, &rita).arg("--user", "alice");
    impostor.refused(addr, &["submit", &repo_arg, &commit], 2, "is not user alice's");
    // Claiming her own name with her own key is fine.
    let named = Person::with_key(&home, &alice).arg("--user", "alice");
    assert!(named.json(addr, &["status"])["runners"].is_object());
    // An encrypted key is not used, and the client says why.
    Person::with_key(&home, &locked).refused(addr, &["status"], 1, "is encrypted with a passphrase");
    // Nothing of those refusals created a task.
    assert_eq!(secret_client.json(addr, &["tasks"]).as_array().map(Vec::len), Some(3));
}

#[test]
fn without_users_the_client_name_is_recorded_and_keys_are_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let stranger = keygen(tmp.path(), "stranger", "");
    let repo = Repo::init(&tmp.path().join("repo"));
    let commit = repo.commit(&[("README", "one")], "one");
    let repo_arg = repo.path.display().to_string();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let addr = dispatcher.addr.as_str();
    // Loopback steers, as before; a key is presented and ignored.
    let client = Person::with_key(&home, &stranger);
    let stuck = client.json(addr, &["submit", &repo_arg, &commit, "--label", "nowhere"]);
    let aborted = Person::new(&home).json(addr, &["abort", &id(&stuck).to_string()]);
    assert_eq!(aborted["requested_by"], "baton", "{aborted:#}");
    assert_eq!(aborted["aborted_by"], "baton", "{aborted:#}");
}

#[test]
fn bad_user_tables_stop_the_dispatcher_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ecdsa = keygen_kind(tmp.path(), "ecdsa", "ecdsa", "");
    let alice = keygen(tmp.path(), "alice", "");
    let cases = [
        (user_table("alice", &ecdsa, "\"read\""), "only ssh-ed25519 keys are accepted"),
        (user_table("alice", &alice, "\"deploy\""), "[[user]] alice: unknown role \"deploy\""),
        (user_table("alice", &alice, "\"read\"") + &user_table("alice", &alice, "\"read\""), "given twice"),
        (
            "[[user]]\nname = \"alice\"\npublic_key = \"ssh-ed25519 AAAA\"\nroles = [\"read\"]\n".to_string(),
            "public_key is not an OpenSSH public key line",
        ),
    ];
    for (text, words) in cases {
        let config = tmp.path().join("dispatcher.toml");
        std::fs::write(&config, &text).unwrap();
        let data = tmp.path().join("data");
        let output = Command::new(support::bin("baton-dispatcher"))
            .args(["--listen", "127.0.0.1:0", "--http", "off", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .expect("running baton-dispatcher");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started with {text}");
        assert!(stderr.contains(words), "expected {words:?} in: {stderr}");
    }
}

/// Approvals of deployments (issue 18 items 4 and 5): roles limited to
/// environments, `approved_by` naming the person, and `approval = "other"`
/// refusing the requester's own approval.
#[test]
fn approvals_are_given_by_people_with_the_role_in_that_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, keys) = home_and_keys(tmp.path());
    let [tina, sam, pat, olga] = ["tina", "sam", "pat", "olga"].map(|name| keygen(&keys, name, ""));
    let repo = Repo::init(&tmp.path().join("repo"));
    let hosts_log = tmp.path().join("hosts.log");
    let config = tmp.path().join("dispatcher.toml");
    let sam_table =
        user_table("sam", &sam, "\"approve\"").replace("\n\n", "\nenvironments = [\"staging\"]\n\n");
    std::fs::write(
        &config,
        format!(
            "[[repo]]\nurl = \"{repo}\"\ndeploy = \"echo $BATON_ENVIRONMENT $BATON_HOST $BATON_RELEASE >> {log}\"\n\
             [[repo.environment]]\nname = \"staging\"\nlabels = [\"deploy\"]\nauto = true\napproval = true\n\
             [[repo.environment]]\nname = \"production\"\nlabels = [\"deploy\"]\napproval = \"other\"\n\n{users}",
            repo = repo.path.display(),
            log = hosts_log.display(),
            users = user_table("tina", &tina, "\"trigger\"")
                + &sam_table
                + &user_table("pat", &pat, "\"approve\"")
                + &user_table("olga", &olga, "\"approve\""),
        ),
    )
    .unwrap();
    let dispatcher =
        Dispatcher::start(&tmp.path().join("data"), &["--config", &config.display().to_string()]);
    let addr = dispatcher.addr.as_str();
    let _host = support::runner(tmp.path(), addr, "host-1", &["--labels", "deploy"]);
    let [tina, sam, pat, olga] = [tina, sam, pat, olga].map(|key| Person::with_key(&home, &key));
    let repo_arg = repo.path.display().to_string();
    let hosts = || std::fs::read_to_string(&hosts_log).unwrap_or_default();
    let deployment = |env: &str| -> Option<Value> {
        let all = tina.json(addr, &["deployments", "--env", env]);
        all.as_array()?.iter().find(|found| found["version"] == "r1").cloned()
    };

    // Tina's passing commit on main becomes r1, which waits for approval
    // in staging.
    let commit = repo.commit(&[("tests/test_sum.py", &support::unittest(true))], "one");
    let submitted = tina.json(addr, &["submit", &repo_arg, &commit, "--branch", "main"]);
    tina.wait_state(addr, id(&submitted), &["passed"]);
    wait_for("r1 to wait for approval in staging", || {
        (deployment("staging")?["waiting_for"] == "approval").then_some(())
    });

    // Tina may trigger but not approve; Sam approves staging only.
    tina.refused(
        addr,
        &["approve", &repo_arg, "r1", "--env", "staging"],
        1,
        "user tina lacks the approve role",
    );
    let approved = sam.json(addr, &["approve", &repo_arg, "r1", "--env", "staging"]);
    assert_eq!(approved["approved_by"], "sam", "{approved:#}");
    wait_for("r1 deployed in staging", || (deployment("staging")?["state"] == "deployed").then_some(()));
    assert_eq!(hosts(), "staging host-1 r1\n");

    // Pat asks for production, which needs someone else's approval: not
    // his own, not Sam's (staging only); Olga's.
    let asked = pat.json(addr, &["deploy", &repo_arg, "r1", "--env", "production"]);
    assert_eq!(
        (asked["requested_by"].as_str(), asked["waiting_for"].as_str()),
        (Some("pat"), Some("approval"))
    );
    pat.refused(
        addr,
        &["approve", &repo_arg, "r1", "--env", "production"],
        1,
        "pat asked for this deployment",
    );
    sam.refused(
        addr,
        &["approve", &repo_arg, "r1", "--env", "production"],
        1,
        "user sam may not approve in environment production",
    );
    tina.refused(addr, &["deploy", &repo_arg, "r1", "--env", "production"], 1, "lacks the approve role");
    assert_eq!(hosts(), "staging host-1 r1\n", "nothing refused reached a host");
    let approved = olga.json(addr, &["approve", &repo_arg, "r1", "--env", "production"]);
    assert_eq!(approved["approved_by"], "olga", "{approved:#}");
    let deployed = wait_for("r1 deployed in production", || {
        deployment("production").filter(|found| found["state"] == "deployed")
    });
    assert_eq!(
        (deployed["requested_by"].as_str(), deployed["approved_by"].as_str()),
        (Some("pat"), Some("olga"))
    );
    assert_eq!(hosts(), "staging host-1 r1\nproduction host-1 r1\n");
}
