//! Schedules (issue 16, SPEC §13): `[[schedule]]` tables in the observer's
//! config submit a branch's tip as a new task with trigger `schedule`, even
//! though the commit was tested, at the times of a cron expression in the
//! observer's local time; a schedule missed while the observer was down runs
//! once when it starts. The observer polls once an hour, and no runner is
//! started: the tasks stay pending.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Local, Timelike, Utc};
use serde_json::Value;

use crate::support::{self, baton_json, wait_for, Daemon, Dispatcher, Repo};

/// A repository with one commit, a dispatcher, and the observer's folder.
struct Setup {
    tmp: tempfile::TempDir,
    repo: Repo,
    dispatcher: Dispatcher,
}

impl Setup {
    fn new() -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repo::init(&tmp.path().join("repo"));
        repo.commit(&[("file.txt", "one")], "one");
        let dispatcher = Dispatcher::start(&tmp.path().join("data"), &[]);
        Setup { tmp, repo, dispatcher }
    }

    fn state_file(&self) -> PathBuf {
        self.tmp.path().join("state.json")
    }

    /// Writes the state file as a stopped observer would have left it.
    fn last_fired(&self, name: &str, at: DateTime<Utc>) {
        let state =
            serde_json::json!({"version": 1, "repositories": {}, "schedules": {name: at.to_rfc3339()}});
        std::fs::write(self.state_file(), state.to_string()).unwrap();
    }

    /// Starts the observer with one `[[schedule]]` named `name`.
    fn observer(&self, name: &str, cron: &str) -> Daemon {
        let config = format!(
            "dispatcher = {:?}\npoll = \"1h\"\nstate_file = \"state.json\"\n\n[[repo]]\npath = \"repo\"\n\n\
             [[schedule]]\nname = {name:?}\nrepo = \"repo\"\nbranch = \"main\"\ncron = {cron:?}\nlabels = [\"nightly\"]\n",
            self.dispatcher.addr
        );
        let path = self.tmp.path().join("observer.toml");
        std::fs::write(&path, config).unwrap();
        let log = self.tmp.path().join(format!("observer-{}.log", Utc::now().timestamp_micros()));
        support::daemon("baton-observer", &["--config", path.to_str().unwrap()], &[], log)
    }

    /// Every task as (id, commit, trigger, labels), oldest first.
    fn tasks(&self) -> Vec<(i64, String, String, Vec<String>)> {
        let tasks = baton_json(&self.dispatcher.addr, &["tasks", "--limit", "1000"]);
        let mut tasks: Vec<_> = tasks
            .as_array()
            .unwrap()
            .iter()
            .map(|task| {
                let text = |key: &str| task[key].as_str().unwrap_or_default().to_string();
                let labels = task["labels"]
                    .as_array()
                    .map(|labels| labels.iter().filter_map(Value::as_str).map(str::to_string).collect())
                    .unwrap_or_default();
                (task["id"].as_i64().unwrap(), text("commit"), text("trigger"), labels)
            })
            .collect();
        tasks.sort();
        tasks
    }

    fn scheduled(&self) -> Vec<(i64, String, String, Vec<String>)> {
        self.tasks().into_iter().filter(|task| task.2 == "schedule").collect()
    }

    /// Waits until the state file records `name` as fired after `after`
    /// (the dispatcher acknowledged the submission), and returns that time.
    fn wait_fired_after(&self, name: &str, after: DateTime<Utc>) -> DateTime<Utc> {
        wait_for(&format!("schedule {name} recorded as fired"), || {
            let fired = fired(&self.state_file(), name)?;
            (fired > after).then_some(fired)
        })
    }
}

fn fired(state_file: &Path, name: &str) -> Option<DateTime<Utc>> {
    let state: Value = serde_json::from_slice(&std::fs::read(state_file).ok()?).ok()?;
    let at = DateTime::parse_from_rfc3339(state["schedules"][name].as_str()?).ok()?;
    Some(at.with_timezone(&Utc))
}

#[test]
fn a_schedule_due_within_seconds_submits_the_tested_tip_again() {
    let setup = Setup::new();
    let commit = setup.repo.git(&["rev-parse", "HEAD"]);
    // A six-field expression (seconds first) naming one second a few
    // seconds ahead, in local time. Had the schedule been due before the
    // observer runs, the missed-while-down rule would fire it just the same.
    let now = Local::now();
    let due = (now + Duration::seconds(4)).with_nanosecond(0).unwrap();
    let cron = due.format("%-S %-M %-H %-d %-m *").to_string();
    setup.last_fired("soon", now.with_timezone(&Utc) - Duration::seconds(1));
    let _observer = setup.observer("soon", &cron);

    let scheduled = wait_for("the scheduled submission", || {
        let scheduled = setup.scheduled();
        (!scheduled.is_empty()).then_some(scheduled)
    });
    let fired = setup.wait_fired_after("soon", now.with_timezone(&Utc));
    assert_eq!(fired, due.with_timezone(&Utc), "the firing stands for the expression's time");
    let tasks = setup.tasks();
    assert_eq!(setup.scheduled().len(), 1, "{tasks:?}");
    let (_, scheduled_commit, _, labels) = &scheduled[0];
    assert_eq!(scheduled_commit, &commit);
    assert_eq!(labels, &["nightly"]);
    // The same commit was also submitted (and tested) as an observed commit.
    wait_for("the observed submission", || {
        setup.tasks().iter().any(|task| task.1 == commit && task.2 == "observer").then_some(())
    });
}

#[test]
fn a_schedule_missed_while_down_runs_once_at_start() {
    let setup = Setup::new();
    let long_ago: DateTime<Utc> = "2020-01-01T00:00:00Z".parse().unwrap();
    // Daily at 03:00 local: missed hundreds of times since.
    setup.last_fired("nightly", long_ago);
    let mut observer = setup.observer("nightly", "0 3 * * *");
    let fired = setup.wait_fired_after("nightly", long_ago);
    assert_eq!(setup.scheduled().len(), 1, "{:?}", setup.tasks());
    assert!(fired > Utc::now() - Duration::days(2) && fired <= Utc::now(), "the latest missed time: {fired}");

    // A restart finds nothing missed: a new commit is submitted as usual,
    // and no second scheduled run comes with it.
    observer.terminate();
    let second = setup.repo.commit(&[("file.txt", "two")], "two");
    let _observer = setup.observer("nightly", "0 3 * * *");
    wait_for("the new commit", || setup.tasks().iter().any(|task| task.1 == second).then_some(()));
    assert_eq!(setup.scheduled().len(), 1, "{:?}", setup.tasks());
    assert_eq!(self::fired(&setup.state_file(), "nightly"), Some(fired));
}
