//! Per-test outcomes and flaky tests (SPEC §14, issue 17): a test that fails
//! on its first run and passes on its second ends `passed` and flaky under
//! `--retry-failed`, and is named by `baton flaky`; `show --tests` lists the
//! tests of unittest's `-v` output and of a JUnit XML file the test wrote.

use crate::support::{baton, baton_json, runner, wait_final, Dispatcher, Repo};

/// A unittest module with a stable test and one that fails until `marker`
/// exists (it creates it on its first run). The marker lives outside the
/// checkout, which is fresh for every run.
fn flaky_suite(marker: &std::path::Path) -> String {
    format!(
        "import os, unittest\n\n\
         class T(unittest.TestCase):\n\
        \x20   def test_stable(self):\n\
        \x20       self.assertTrue(True)\n\n\
        \x20   def test_sometimes(self):\n\
        \x20       marker = {marker:?}\n\
        \x20       if not os.path.exists(marker):\n\
        \x20           open(marker, 'w').close()\n\
        \x20           self.fail('first run')\n",
        marker = marker.display().to_string()
    )
}

#[test]
fn a_test_that_fails_once_and_then_passes_is_flaky() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &["--retry-failed", "1"]);
    let repo = Repo::init(&tmp.path().join("repo"));
    let marker = tmp.path().join("marker");
    let commit = repo.commit(&[("tests/test_flaky.py", &flaky_suite(&marker))], "a flaky test");
    let _r1 = runner(tmp.path(), &dispatcher.addr, "r1", &[]);
    let _r2 = runner(tmp.path(), &dispatcher.addr, "r2", &[]);

    let repo_arg = repo.path.display().to_string();
    let accepted = baton_json(&dispatcher.addr, &["submit", &repo_arg, &commit]);
    let id = accepted["id"].to_string();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!(task["state"], "passed", "{task:#}");
    assert_eq!(task["flaky"], true, "{task:#}");
    assert_eq!(task["attempts"], 2, "{task:#}");
    assert_eq!(task["flaky_tests"], serde_json::json!(["test_flaky.T.test_sometimes"]), "{task:#}");

    let shown = baton_json(&dispatcher.addr, &["show", &id, "--tests"]);
    let tests = shown["tests"].as_array().expect("a tests array").clone();
    assert_eq!(
        tests,
        vec![
            serde_json::json!({"name": "test_flaky.T.test_sometimes", "outcome": "passed"}),
            serde_json::json!({"name": "test_flaky.T.test_stable", "outcome": "passed"}),
        ],
        "{shown:#}"
    );

    let flaky = baton_json(&dispatcher.addr, &["flaky", "--repo", &repo_arg]);
    let rows = flaky.as_array().expect("an array");
    assert_eq!(rows.len(), 1, "only a test that failed is listed: {flaky:#}");
    let row = &rows[0];
    assert_eq!(row["name"], "test_flaky.T.test_sometimes", "{flaky:#}");
    assert_eq!(
        (row["runs"].as_u64(), row["failures"].as_u64(), row["flips"].as_u64()),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(row["repo"], repo_arg.as_str());

    let text = baton(&dispatcher.addr, &["flaky"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("test_flaky.T.test_sometimes"), "{text}");
    let shown = baton(&dispatcher.addr, &["show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("failed before: test_flaky.T.test_sometimes"), "{shown}");
    let http = dispatcher.http.as_deref().expect("the web service");
    let api = crate::web::get(http, "/api/v1/flaky");
    let api: serde_json::Value = serde_json::from_slice(&api.body).expect("JSON");
    assert_eq!(api, flaky, "the API and the client agree");
    let page = crate::web::get(http, "/flaky");
    assert!(String::from_utf8_lossy(&page.body).contains("test_flaky.T.test_sometimes"));
    let page = crate::web::get(http, &format!("/tasks/{id}"));
    assert!(String::from_utf8_lossy(&page.body).contains("passed on a retry"));
}

#[test]
fn without_retries_a_failure_stays_a_failure_and_junit_reports_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
    let repo = Repo::init(&tmp.path().join("repo"));
    // The test writes a Surefire-style report into its checkout and fails.
    let config = "[test]\ncommand = \"\"\"mkdir -p target/surefire-reports && \
        printf '<testsuite><testcase classname=\\\"com.example.AppTest\\\" name=\\\"works\\\"/>\
        <testcase classname=\\\"com.example.AppTest\\\" name=\\\"breaks\\\"><failure message=\\\"no\\\"/></testcase>\
        </testsuite>' > target/surefire-reports/TEST-com.example.AppTest.xml && exit 1\"\"\"\n";
    let commit = repo.commit(&[(".baton.toml", config)], "a failing junit suite");
    let _r1 = runner(tmp.path(), &dispatcher.addr, "r1", &[]);

    let repo_arg = repo.path.display().to_string();
    let accepted = baton_json(&dispatcher.addr, &["submit", &repo_arg, &commit]);
    let id = accepted["id"].to_string();
    let task = wait_final(&dispatcher.addr, &id);
    assert_eq!((task["state"].as_str(), task["attempts"].as_u64()), (Some("failed"), Some(1)), "{task:#}");
    assert_eq!(task["flaky"], false, "{task:#}");

    let shown = baton_json(&dispatcher.addr, &["show", &id, "--tests"]);
    assert_eq!(
        shown["tests"],
        serde_json::json!([
            {"name": "com.example.AppTest.breaks", "outcome": "failed"},
            {"name": "com.example.AppTest.works", "outcome": "passed"},
        ]),
        "{shown:#}"
    );
    let flaky = baton_json(&dispatcher.addr, &["flaky"]);
    assert_eq!(flaky[0]["name"], "com.example.AppTest.breaks", "{flaky:#}");
    assert_eq!(flaky[0]["flips"], 0, "{flaky:#}");
}
