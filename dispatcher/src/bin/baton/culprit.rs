//! What the client shows of SPEC §14: `show --tests` (each test of a task's
//! last run), `baton flaky` (tests by flip rate), and the flaky and culprit
//! lines of `show`.
//!
//! It pairs the `TestCases` question with its answer and renders; the JSON
//! shapes live in `protocol::view`.

use comfy_table::{Cell, CellAlignment};
use protocol::message::{ClientToDispatcher, DispatcherToClient, FlakyTest, TaskInfo, TestCase};
use protocol::view::{self, relative};
use protocol::TaskId;

use crate::command::unexpected;
use crate::render::{self, Style};
use crate::session::{Session, ANSWER_TIMEOUT};

/// The per-test outcomes of a task's last run.
///
/// # Errors
/// A broken connection, the dispatcher's `Error`, or an answer of another kind.
pub async fn tests_of(session: &mut Session, task_id: TaskId) -> anyhow::Result<Vec<TestCase>> {
    session.send(&ClientToDispatcher::TestCases(task_id)).await?;
    match session.answer(Some(ANSWER_TIMEOUT)).await? {
        DispatcherToClient::TestCases(Some(tests)) => Ok(tests),
        DispatcherToClient::TestCases(None) => anyhow::bail!("no task with id {task_id}"),
        DispatcherToClient::Error(reason) => anyhow::bail!("{reason}"),
        other => Err(unexpected(&other)),
    }
}

/// `show --tests`: the task's JSON object with a `tests` array, or its block
/// followed by a table of the tests.
pub fn with_tests(shown: String, tests: &[TestCase], as_json: bool, style: Style) -> String {
    if as_json {
        // `shown` is the task object `present` printed; add the key to it.
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&shown) else { return shown };
        value["tests"] = tests.iter().map(view::test_case).collect();
        let text =
            if style.terminal { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
        return text.map(|text| text + "\n").unwrap_or(shown);
    }
    if tests.is_empty() {
        return shown + "\nno per-test outcomes recognised\n";
    }
    let mut table = render::table(style, &["TEST", "OUTCOME"]);
    for test in tests {
        table.add_row(vec![Cell::new(&test.name), Cell::new(test.status.as_str())]);
    }
    format!("{shown}\n{}", render::finish(&table))
}

/// `baton flaky`: one line per test.
pub fn flaky(tests: &[FlakyTest], now_ms: i64, style: Style) -> String {
    if tests.is_empty() {
        return "no test has failed\n".into();
    }
    let mut table =
        render::table(style, &["TEST", "REPO", "RUNS", "FAILURES", "FLIPS", "FLIP RATE", "LAST SEEN"]);
    for test in tests {
        let rate = 100.0 * test.flip_rate();
        table.add_row(vec![
            Cell::new(&test.name),
            Cell::new(&test.repo),
            Cell::new(test.runs).set_alignment(CellAlignment::Right),
            Cell::new(test.failures).set_alignment(CellAlignment::Right),
            Cell::new(test.flips).set_alignment(CellAlignment::Right),
            Cell::new(format!("{rate:.0} %")).set_alignment(CellAlignment::Right),
            Cell::new(relative(now_ms, test.last_seen_ms)),
        ]);
    }
    render::finish(&table)
}

/// The lines `show` adds for a flaky task and for a failed task whose
/// culprit is known.
pub fn task_rows(task: &TaskInfo) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    if task.flaky {
        let failed =
            if task.flaky_tests.is_empty() { "none named".to_string() } else { task.flaky_tests.join(", ") };
        rows.push(("flaky", format!("yes: passed on a retry; failed before: {failed}")));
    }
    if let Some(culprit) = &task.culprit {
        rows.push((
            "culprit",
            format!(
                "first failing commit: {} (found by bisection in {} steps)",
                culprit.commit, culprit.steps
            ),
        ));
    }
    rows
}

#[cfg(test)]
mod tests {
    use protocol::message::{Culprit, TestStatus};
    use protocol::view::fixtures;
    use protocol::{CommitId, RepoUrl};

    use super::*;

    const PLAIN: Style = Style { terminal: false, colour: false };

    #[test]
    fn show_tests_adds_a_table_or_a_json_key() {
        let tests = vec![
            TestCase { name: "t.T.test_b".into(), status: TestStatus::Failed },
            TestCase { name: "t.T.test_a".into(), status: TestStatus::Passed },
        ];
        let text = with_tests("id: 7\n".into(), &tests, false, PLAIN);
        assert_eq!(text, "id: 7\n\nTEST        OUTCOME\nt.T.test_b  failed\nt.T.test_a  passed\n");
        let json = with_tests("{\"id\":7}\n".into(), &tests, true, PLAIN);
        assert_eq!(
            json,
            "{\"id\":7,\"tests\":[{\"name\":\"t.T.test_b\",\"outcome\":\"failed\"},\
             {\"name\":\"t.T.test_a\",\"outcome\":\"passed\"}]}\n"
        );
    }

    #[test]
    fn flaky_and_culprit_lines() {
        let task = TaskInfo {
            flaky: true,
            flaky_tests: vec!["t.a".into()],
            culprit: Some(Culprit {
                commit: CommitId::new(fixtures::COMMIT).unwrap(),
                steps: 5,
                tasks: vec![TaskId::new(9).unwrap()],
            }),
            ..fixtures::task_info()
        };
        let rows = task_rows(&task);
        assert_eq!(rows[0], ("flaky", "yes: passed on a retry; failed before: t.a".to_string()));
        assert_eq!(
            rows[1].1,
            format!("first failing commit: {} (found by bisection in 5 steps)", fixtures::COMMIT)
        );
        assert!(task_rows(&fixtures::task_info()).is_empty());
    }

    #[test]
    fn flaky_table() {
        let tests = vec![FlakyTest {
            repo: RepoUrl::new("/srv/app.git").unwrap(),
            name: "t.a".into(),
            runs: 4,
            failures: 2,
            flips: 1,
            last_seen_ms: fixtures::NOON_MS,
        }];
        let text = flaky(&tests, fixtures::NOON_MS + 60_000, PLAIN);
        assert!(text.starts_with("TEST  REPO"), "{text}");
        assert!(text.contains("t.a   /srv/app.git     4         2      1       25 %  1m ago"), "{text}");
        assert_eq!(flaky(&[], 0, PLAIN), "no test has failed\n");
    }
}
