//! Store tests: in-memory and temp-dir SQLite.

use super::*;

fn new_task(commit: char, trigger: Trigger) -> NewTask {
    NewTask {
        repo: RepoUrl::new("/srv/app.git").unwrap(),
        branch: Branch::new("main").unwrap(),
        commit: CommitId::new(commit.to_string().repeat(40)).unwrap(),
        labels: vec![Label::new("linux").unwrap()],
        trigger,
        kind: TaskKind::Test,
        release_id: None,
        requested_by: None,
        host: None,
        deployment_id: None,
    }
}

/// A file-backed store (readers need a file) in a temp dir.
fn file_store() -> (tempfile::TempDir, Store, Reader) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    let store = Store::open(&path, Sync::Normal).unwrap();
    let reader = Reader::open(&path).unwrap();
    (dir, store, reader)
}

#[test]
fn observer_duplicates_are_not_inserted_but_manual_and_scheduled_ones_are() {
    let mut store = Store::open_in_memory().unwrap();
    let tx = store.begin().unwrap();
    let (first, inserted) = tx.insert_task(&new_task('a', Trigger::Observer), 1).unwrap();
    assert!(inserted);
    let (again, inserted) = tx.insert_task(&new_task('a', Trigger::Observer), 2).unwrap();
    assert_eq!((again, inserted), (first, false));
    let (manual, inserted) = tx.insert_task(&new_task('a', Trigger::Manual), 3).unwrap();
    assert!(inserted && manual > first);
    // A schedule submits a tip even when it was tested: a new task each time.
    let (scheduled, inserted) = tx.insert_task(&new_task('a', Trigger::Schedule), 4).unwrap();
    assert!(inserted && scheduled > manual);
    let (again, inserted) = tx.insert_task(&new_task('a', Trigger::Schedule), 5).unwrap();
    assert!(inserted && again > scheduled);
    tx.commit().unwrap();
    assert_eq!(store.live_tasks().unwrap().len(), 4);
}

#[test]
fn a_task_s_life_is_recorded() {
    let (_dir, mut store, reader) = file_store();
    let runner = Name::new("r1").unwrap();
    let tx = store.begin().unwrap();
    let (id, _) = tx.insert_task(&new_task('b', Trigger::Observer), 10).unwrap();
    tx.start_attempt(id, 1, &runner, 11).unwrap();
    tx.requeue(id, "runner lost").unwrap();
    tx.start_attempt(id, 2, &runner, 12).unwrap();
    let summary = Summary { passed: 3, failed: 1, skipped: 0 };
    let finish = Finish {
        state: TaskState::Failed,
        exit_code: Some(1),
        duration_ms: Some(40),
        summary: Some(summary),
        reason: None,
        at_ms: 13,
        tag: None,
        failed_step: None,
    };
    tx.finish(id, &finish).unwrap();
    tx.commit().unwrap();
    let task = reader.task(id).unwrap().unwrap();
    assert_eq!(task.state, TaskState::Failed);
    assert_eq!(task.attempts, 2);
    assert_eq!(task.runner, Some(runner));
    assert_eq!(task.exit_code, Some(1));
    assert_eq!(task.summary, Some(summary));
    assert_eq!((task.created_at_ms, task.started_at_ms, task.finished_at_ms), (10, Some(12), Some(13)));
    assert_eq!(task.labels, vec![Label::new("linux").unwrap()]);
    assert_eq!(task.trigger, "observer");
    assert!(store.live_tasks().unwrap().is_empty());
    let counts = store.count_by_state().unwrap();
    assert!(counts.contains(&(TaskState::Failed, 1)) && counts.contains(&(TaskState::Pending, 0)));
    assert!(store.integrity_ok().unwrap());
}

#[test]
fn queries_filter_and_order_newest_first() {
    let (_dir, mut store, reader) = file_store();
    let tx = store.begin().unwrap();
    let ids: Vec<TaskId> = ['a', 'b', 'c']
        .iter()
        .map(|c| tx.insert_task(&new_task(*c, Trigger::Observer), 1).unwrap().0)
        .collect();
    tx.finish(ids[1], &Finish { exit_code: Some(0), ..Finish::ended(TaskState::Passed) }).unwrap();
    tx.commit().unwrap();
    let all: Vec<TaskId> = reader.tasks(None, None, 50).unwrap().iter().map(|t| t.id).collect();
    assert_eq!(all, vec![ids[2], ids[1], ids[0]]);
    let pending = reader.tasks(None, Some(TaskState::Pending), 1).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, ids[2]);
    let other_repo = RepoUrl::new("/srv/other.git").unwrap();
    assert!(reader.tasks(Some(&other_repo), None, 50).unwrap().is_empty());
    let by_prefix = reader.newest_for_commit(&CommitPrefix::new("bbbb").unwrap()).unwrap().unwrap();
    assert_eq!(by_prefix.id, ids[1]);
    assert!(reader.newest_for_commit(&CommitPrefix::new("dddd").unwrap()).unwrap().is_none());
}

#[test]
fn reopening_keeps_the_schema_and_refuses_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    drop(Store::open(&path, Sync::Full).unwrap());
    drop(Store::open(&path, Sync::Full).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&path, Sync::Full).err().unwrap();
    assert!(format!("{err:#}").contains("newer than this dispatcher"), "{err:#}");
}

fn release(kind: ReleaseKind) -> NewRelease {
    NewRelease {
        repo: RepoUrl::new("/srv/app.git").unwrap(),
        tag: None,
        branch: Branch::new("main").unwrap(),
        commit: CommitId::new("c".repeat(40)).unwrap(),
        task_id: None,
        kind,
        rollback_to: None,
        state: ReleaseState::Recorded,
        trigger: "test".into(),
    }
}

#[test]
fn versions_increase_per_repository_and_link_the_previous_one() {
    let mut store = Store::open_in_memory().unwrap();
    let tx = store.begin().unwrap();
    let first = tx.insert_release(&release(ReleaseKind::Release), 1).unwrap();
    let second = tx.insert_release(&release(ReleaseKind::Rollback), 2).unwrap();
    let mut elsewhere = release(ReleaseKind::Release);
    elsewhere.repo = RepoUrl::new("/srv/other.git").unwrap();
    let other = tx.insert_release(&elsewhere, 3).unwrap();
    assert_eq!((first.info.version, first.info.previous), (1, None));
    assert_eq!((second.info.version, second.info.previous), (2, Some(1)));
    assert_eq!((other.info.version, other.info.previous), (1, None));
    tx.set_release_state(first.id, ReleaseState::Deployed).unwrap();
    let listed = tx.releases_of(&first.info.repo).unwrap();
    assert_eq!(listed.iter().map(|r| r.info.version).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(listed[1].info.state, ReleaseState::Deployed);
    tx.commit().unwrap();
}

/// A database made by the version before notifier names (schema v2): its
/// release records read back typed, and its queued events, which point at
/// notifiers by position, are named after the configured notifiers in order.
#[test]
fn a_version_2_database_migrates_and_its_queued_events_get_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    {
        // Exactly what the previous version created and wrote.
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        tx.execute_batch(SCHEMA_V1).unwrap();
        tx.execute_batch(SCHEMA_V2).unwrap();
        tx.pragma_update(None, "user_version", 2).unwrap();
        tx.execute_batch(
            "INSERT INTO releases (repo, version, branch, commit_id, created_at, kind, state, trigger)
               VALUES ('/srv/app.git', 1, 'main', 'cccccccccccccccccccccccccccccccccccccccc', 1, 'rollback',
                       'rolled_back', 'baton rollback');
             INSERT INTO outbox (notifier, event, created_at, next_at) VALUES (0, '{\"event\":\"a\"}', 1, 1);
             INSERT INTO outbox (notifier, event, created_at, next_at) VALUES (1, '{\"event\":\"b\"}', 2, 2);
             INSERT INTO outbox (notifier, event, created_at, next_at) VALUES (5, '{\"event\":\"c\"}', 3, 3);",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut store = Store::open(&path, Sync::Normal).unwrap();
    let version: i64 = store.conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
    assert_eq!(version, MIGRATIONS.len() as i64);
    let names = [Name::new("chat").unwrap(), Name::new("hook").unwrap()];
    let tx = store.begin().unwrap();
    assert_eq!(tx.name_positional_notifications(&names).unwrap(), 2);
    let releases = tx.releases_of(&RepoUrl::new("/srv/app.git").unwrap()).unwrap();
    assert_eq!(
        (releases[0].info.kind, releases[0].info.state),
        (ReleaseKind::Rollback, ReleaseState::RolledBack)
    );
    // New events point at names; the ids go on from the old ones.
    tx.enqueue_notification(&names[1], "{}", 4).unwrap();
    tx.commit().unwrap();
    let reader = Reader::open(&path).unwrap();
    let due = reader.due_notifications(10).unwrap();
    let mut heads: Vec<(i64, String)> = due.into_iter().map(|out| (out.id, out.notifier)).collect();
    heads.sort();
    assert_eq!(heads, vec![(1, "chat".into()), (2, "hook".into()), (3, "#5".into())]);
    // The release states are stored as the same strings as before.
    let state: String = store.conn.query_row("SELECT state FROM releases", [], |row| row.get(0)).unwrap();
    assert_eq!(state, "rolled_back");
    let max_id: i64 = store.conn.query_row("SELECT MAX(id) FROM outbox", [], |row| row.get(0)).unwrap();
    assert_eq!(max_id, 4);
}

/// A database of the version before deployments (every migration but the
/// last): its release and its running deploy task read back, the task with
/// no host and no deployment, and deployments are recorded beside them.
#[test]
fn a_database_from_before_deployments_migrates_with_its_deploy_tasks() {
    use protocol::message::DeploymentHost;
    use protocol::{DeploymentState, HostState};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.db");
    {
        let mut conn = rusqlite::Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for migration in &MIGRATIONS[..MIGRATIONS.len() - 1] {
            tx.execute_batch(migration).unwrap();
        }
        tx.pragma_update(None, "user_version", (MIGRATIONS.len() - 1) as i64).unwrap();
        tx.execute_batch(
            "INSERT INTO releases (repo, version, branch, commit_id, created_at, kind, state, trigger)
               VALUES ('/srv/app.git', 1, 'main', 'cccccccccccccccccccccccccccccccccccccccc', 1, 'release',
                       'deploying', 'task 1');
             INSERT INTO tasks (repo, branch, commit_id, trigger, state, created_at, labels, kind, release_id,
                                attempts, runner)
               VALUES ('/srv/app.git', 'main', 'cccccccccccccccccccccccccccccccccccccccc', 'deploy', 'running', 1,
                       'deploy', 'deploy', 1, 1, 'd1');",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut store = Store::open(&path, Sync::Normal).unwrap();
    let live = store.live_tasks().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].kind, live[0].release_id, &live[0].host, live[0].deployment_id),
        (TaskKind::Deploy, Some(1), &None, None)
    );
    let tx = store.begin().unwrap();
    let release = tx.releases_of(&RepoUrl::new("/srv/app.git").unwrap()).unwrap().remove(0);
    assert_eq!(release.info.state, ReleaseState::Deploying);
    let new = NewDeployment {
        repo: release.info.repo.clone(),
        release_id: release.id,
        version: 1,
        commit: release.info.commit.clone(),
        environment: Name::new("staging").unwrap(),
        kind: ReleaseKind::Release,
        requested_by: "release r1".into(),
        reason: None,
    };
    let mut deployment = tx.insert_deployment(&new, 5).unwrap();
    assert_eq!(deployment.info.state, DeploymentState::Waiting);
    deployment.info.state = DeploymentState::Canary;
    deployment.info.hosts = vec![DeploymentHost {
        name: Name::new("h1").unwrap(),
        canary: true,
        state: HostState::Deploying,
        task_id: Some(live[0].id),
    }];
    tx.update_deployment(&deployment.info, 6).unwrap();
    tx.set_deployment_host(deployment.info.id, 0, &deployment.info.hosts[0]).unwrap();
    let read = tx.deployment(deployment.info.id).unwrap().unwrap();
    assert_eq!(read.info, deployment.info);
    tx.commit().unwrap();
    assert_eq!(store.deployments_changed_since(6).unwrap(), vec![deployment.info.clone()]);
    assert!(store.deployments_changed_since(7).unwrap().is_empty());
    let reader = Reader::open(&path).unwrap();
    assert_eq!(
        reader.deployments(None, Some(&Name::new("staging").unwrap())).unwrap(),
        vec![deployment.info]
    );
    assert!(reader.deployments(None, Some(&Name::new("production").unwrap())).unwrap().is_empty());
}

#[test]
fn a_task_list_statement_is_prepared_once() {
    let (_dir, mut store, reader) = file_store();
    let tx = store.begin().unwrap();
    for c in ['a', 'b', 'c'] {
        tx.insert_task(&new_task(c, Trigger::Observer), 1).unwrap();
    }
    tx.commit().unwrap();
    for _ in 0..3 {
        assert_eq!(reader.tasks(None, None, 50).unwrap().len(), 3);
        assert_eq!(reader.tasks(None, Some(TaskState::Pending), 50).unwrap().len(), 3);
    }
    // Pages below different ids share one statement, never recompiled.
    let newest = reader.tasks(None, None, 1).unwrap()[0].id;
    for before in [newest, TaskId::new(newest.get() - 1).unwrap(), newest] {
        reader.tasks_page(None, None, Some(before), 50).unwrap();
    }
    let paged = reader
        .conn
        .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id < ?1 ORDER BY id DESC LIMIT 50"))
        .unwrap();
    assert_eq!(paged.get_status(rusqlite::StatementStatus::Run), 3);
    assert_eq!(paged.get_status(rusqlite::StatementStatus::RePrepare), 0);
    // The same cached statements (each ran three times), never recompiled:
    // a bound LIMIT or state made SQLite recompile them at every run.
    for filter in ["", " WHERE state = 'pending'"] {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks{filter} ORDER BY id DESC LIMIT 50");
        let statement = reader.conn.prepare_cached(&sql).unwrap();
        assert_eq!(statement.get_status(rusqlite::StatementStatus::Run), 3, "{filter}");
        assert_eq!(statement.get_status(rusqlite::StatementStatus::RePrepare), 0, "{filter}");
    }
}
