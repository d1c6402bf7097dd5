//! The scheduler as data: scripted events against a [`Core`] and a temp-dir
//! store, with [`Core::check_invariants`] after every step (hyperqueue's
//! `sanity_check`). No process, no socket: each test runs in milliseconds.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::message::{
    Accepted, DeployStep, DispatcherToRunner, Held, HostFacts, Job, Outcome, Output, Pong, Register,
    ReleaseInfo, RunnerToDispatcher, TaskInfo, TaskResult, TestCase, TestStatus,
};
use protocol::{Branch, CommitId, Label, Name, ReleaseState, RepoUrl, TaskId, TaskState};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;

use super::{
    life, printable, printable_line, reactor, step, Change, ConnId, Core, Effects, Event, LogProgress,
    ReleaseChange, Settings, Sinks,
};
use crate::config::{Releases, RepoSettings};
use crate::files::{DataDir, FileJob};
use crate::store::{NewTask, Store, TaskKind, Trigger};

const REPO: &str = "/srv/git/app";

/// A scheduler core on a temp-dir store, and the far ends of everything it
/// talks to.
struct Harness {
    dir: tempfile::TempDir,
    settings: Settings,
    store: Store,
    core: Core,
    sinks: Sinks,
    files: Receiver<FileJob>,
    changes: broadcast::Receiver<Change>,
    /// Each runner connection's queue, as its writer task would read it.
    runners: HashMap<ConnId, mpsc::Receiver<DispatcherToRunner>>,
    /// Each connection's wire evidence, as its writer and reader note it.
    wires: HashMap<ConnId, Arc<super::LastHeard>>,
    next_conn: ConnId,
    next_commit: u32,
}

fn settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_secs(1),
        heartbeat_misses: 3,
        max_attempts: 3,
        retry_failed: 0,
        output_cap: 1 << 20,
        releases: Releases::default(),
        notifiers: Arc::new(Vec::new()),
    }
}

fn name(text: &str) -> Name {
    Name::new(text).unwrap()
}

impl Harness {
    fn new(settings: Settings) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let files = DataDir::create(dir.path()).unwrap();
        let store = Store::open(&files.database(), crate::store::Sync::Normal).unwrap();
        let core = Core::recover(&store, files, settings.clone()).unwrap();
        let (file_writer, file_jobs) = sync_channel(4096);
        let (changes, change_receiver) = broadcast::channel(4096);
        let sinks = Sinks { outbox: Arc::new(Notify::new()), file_writer, changes };
        let harness = Harness {
            dir,
            settings,
            store,
            core,
            sinks,
            files: file_jobs,
            changes: change_receiver,
            runners: HashMap::new(),
            wires: HashMap::new(),
            next_conn: 1,
            next_commit: 1,
        };
        harness.check();
        harness
    }

    fn check(&self) {
        self.core.check_invariants(&self.store);
    }

    /// One batch: events, a scheduling pass, the commit, the effects, and
    /// the invariants.
    fn step(&mut self, events: Vec<Event>) {
        let effects = step(&mut self.core, &mut self.store, events.into_iter()).unwrap();
        self.perform(effects);
    }

    fn perform(&mut self, effects: Effects) {
        effects.perform(&mut self.core, &self.sinks);
        while self.files.try_recv().is_ok() {}
        self.check();
    }

    /// A heartbeat tick at `now`.
    fn tick_at(&mut self, now: Instant) {
        let mut effects = Effects::default();
        let tx = self.store.begin().unwrap();
        reactor::on_tick(&mut self.core, &tx, &mut effects, now).unwrap();
        life::schedule(&mut self.core, &tx, &mut effects).unwrap();
        tx.commit().unwrap();
        self.perform(effects);
    }

    fn ask<T>(&mut self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> T {
        let (reply, mut answer) = oneshot::channel();
        self.step(vec![make(reply)]);
        answer.try_recv().expect("answered after the commit")
    }

    /// A dispatcher restart: the live state rebuilt from the store; every
    /// runner connection is gone.
    fn restart(&mut self) {
        let files = DataDir::create(self.dir.path()).unwrap();
        self.core = Core::recover(&self.store, files, self.settings.clone()).unwrap();
        self.runners.clear();
        self.check();
    }

    fn new_task(&mut self, branch: &str) -> NewTask {
        let commit = format!("{:040x}", self.next_commit);
        self.next_commit += 1;
        NewTask {
            repo: RepoUrl::new(REPO).unwrap(),
            branch: Branch::new(branch).unwrap(),
            commit: CommitId::new(commit).unwrap(),
            labels: Vec::new(),
            trigger: Trigger::Observer,
            kind: TaskKind::Test,
            release_id: None,
            requested_by: None,
            host: None,
            deployment_id: None,
        }
    }

    fn submit(&mut self) -> TaskId {
        let task = self.new_task("feature");
        self.submit_task(task)
    }

    fn submit_task(&mut self, task: NewTask) -> TaskId {
        let accepted: Result<Accepted, String> = self.ask(|reply| Event::Submit { task, reply });
        accepted.unwrap().task_id
    }

    /// A runner connection registering with `held` attempts.
    fn connect(&mut self, runner: &str, slots: u32, labels: &[&str], held: &[(TaskId, u32)]) -> ConnId {
        let (conn, event) = self.register(runner, slots, labels, held);
        self.step(vec![event]);
        conn
    }

    /// A new connection and its registration event, for a batch.
    fn register(
        &mut self,
        runner: &str,
        slots: u32,
        labels: &[&str],
        held: &[(TaskId, u32)],
    ) -> (ConnId, Event) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (outbox, queue) = mpsc::channel(super::RUNNER_OUTBOX);
        self.runners.insert(conn, queue);
        let heard = Arc::new(super::LastHeard::new());
        self.wires.insert(conn, Arc::clone(&heard));
        let register = Register {
            labels: labels.iter().map(|label| Label::new(*label).unwrap()).collect(),
            slots,
            host: HostFacts { os: "linux".into(), arch: "x86_64".into(), cpus: 2 },
            held: held
                .iter()
                .map(|(task_id, attempt)| Held { task_id: *task_id, attempt: *attempt })
                .collect(),
        };
        let event = Event::RunnerUp {
            conn,
            name: name(runner),
            address: "127.0.0.1:1".into(),
            register,
            outbox,
            kill: CancellationToken::new(),
            heard,
        };
        (conn, event)
    }

    /// The connection's writer put a ping on the socket at `at`.
    fn pinged_at(&self, conn: ConnId, at: Instant) {
        self.wires[&conn].pinged_at(at);
    }

    fn runner_says(&mut self, conn: ConnId, message: RunnerToDispatcher) {
        // The connection's reader notes every frame before the scheduler
        // sees it.
        if let Some(wire) = self.wires.get(&conn) {
            wire.note();
        }
        self.step(vec![Event::FromRunner { conn, message }]);
    }

    fn down(&mut self, conn: ConnId) {
        self.step(vec![Event::RunnerDown { conn, reason: "connection closed".into() }]);
    }

    /// What the dispatcher sent down a connection since the last look.
    fn sent(&mut self, conn: ConnId) -> Vec<DispatcherToRunner> {
        let queue = self.runners.get_mut(&conn).expect("a known connection");
        std::iter::from_fn(|| queue.try_recv().ok()).collect()
    }

    /// The assignments among what was sent, as (task, attempt, job).
    fn assigned(&mut self, conn: ConnId) -> Vec<(TaskId, u32, Job)> {
        self.sent(conn)
            .into_iter()
            .filter_map(|message| match message {
                DispatcherToRunner::Assign(assign) => Some((assign.task_id, assign.attempt, assign.job)),
                _ => None,
            })
            .collect()
    }

    fn result(&mut self, conn: ConnId, task_id: TaskId, attempt: u32, outcome: Outcome) {
        self.result_with_tests(conn, task_id, attempt, outcome, &[]);
    }

    fn result_with_tests(
        &mut self,
        conn: ConnId,
        task_id: TaskId,
        attempt: u32,
        outcome: Outcome,
        tests: &[(&str, TestStatus)],
    ) {
        let tests =
            tests.iter().map(|(name, status)| TestCase { name: name.to_string(), status: *status }).collect();
        let result = TaskResult {
            task_id,
            attempt,
            outcome,
            exit_code: Some(0),
            duration_ms: 5,
            summary: None,
            reason: None,
            output_len: 0,
            tag: None,
            failed_step: None,
            tests,
        };
        self.runner_says(conn, RunnerToDispatcher::Result(result));
    }

    fn output(&mut self, conn: ConnId, task_id: TaskId, attempt: u32, offset: u64, data: &[u8]) {
        let output = Output { task_id, attempt, offset, data: data.to_vec() };
        self.runner_says(conn, RunnerToDispatcher::Output(output));
    }

    fn task(&self, task_id: TaskId) -> TaskInfo {
        let tx_store = crate::store::Reader::open(&self.core.files.database()).unwrap();
        tx_store.task(task_id).unwrap().expect("a stored task")
    }

    fn log(&self, task_id: TaskId) -> Vec<u8> {
        std::fs::read(self.core.files.log_path(task_id)).unwrap_or_default()
    }

    fn acks(&mut self, conn: ConnId) -> Vec<(TaskId, bool)> {
        self.sent(conn)
            .into_iter()
            .filter_map(|message| match message {
                DispatcherToRunner::ResultAck(ack) => Some((ack.task_id, ack.accepted)),
                _ => None,
            })
            .collect()
    }

    /// Task state changes published since the last call.
    fn changes(&mut self) -> Vec<(TaskId, TaskState, u32)> {
        self.published()
            .into_iter()
            .filter_map(|change| match change {
                Change::Task(change) => Some((change.task_id, change.state, change.attempt)),
                _ => None,
            })
            .collect()
    }

    /// Everything published since the last call.
    fn published(&mut self) -> Vec<Change> {
        std::iter::from_fn(|| self.changes.try_recv().ok()).collect()
    }
}

#[test]
fn runner_text_is_made_printable_and_bounded() {
    assert_eq!(printable("linux", 64), "linux");
    assert_eq!(printable("a\u{1b}[2Jb\r\0\n\tc", 64), "a\u{fffd}[2Jb\u{fffd}\u{fffd}\n\tc");
    assert_eq!(printable_line("a\u{1b}[2Jb\n\t", 64), "a\u{fffd}[2Jb\u{fffd}\u{fffd}");
    assert_eq!(printable("ééé", 5), "éé");
}

#[test]
fn a_task_is_submitted_assigned_streamed_and_passed() {
    let mut h = Harness::new(settings());
    let task = h.submit();
    assert_eq!(h.task(task).state, TaskState::Pending);
    let conn = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(conn), vec![(task, 1, Job::Test)]);
    assert_eq!(h.task(task).state, TaskState::Running);

    h.output(conn, task, 1, 0, b"hello ");
    // A resend after a reconnect overlaps what is stored; only the new
    // bytes are kept.
    h.output(conn, task, 1, 3, b"lo world\n");
    h.output(conn, task, 1, 0, b"hel");
    assert_eq!(h.log(task), b"hello world\n");

    h.runner_says(conn, RunnerToDispatcher::Pong(Pong { seq: 1 }));
    h.result(conn, task, 1, Outcome::Passed);
    assert_eq!(h.acks(conn), vec![(task, true)]);
    let info = h.task(task);
    assert_eq!((info.state, info.attempts), (TaskState::Passed, 1));
    assert_eq!(
        h.changes(),
        vec![(task, TaskState::Pending, 0), (task, TaskState::Running, 1), (task, TaskState::Passed, 1)]
    );
}

#[test]
fn a_duplicate_observer_submission_is_acknowledged_not_queued() {
    let mut h = Harness::new(settings());
    let task = h.new_task("main");
    let first: Result<Accepted, String> = h.ask(|reply| Event::Submit { task: task.clone(), reply });
    let second: Result<Accepted, String> = h.ask(|reply| Event::Submit { task, reply });
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!((first.task_id, first.duplicate, second.duplicate), (second.task_id, false, true));
    assert_eq!(h.core.tasks.count(TaskState::Pending), 1);
}

#[test]
fn work_goes_to_free_slots_with_the_right_labels_and_not_to_a_draining_runner() {
    let mut h = Harness::new(settings());
    let mut gpu_task = h.new_task("feature");
    gpu_task.labels = vec![Label::new("gpu").unwrap()];
    let gpu_task = h.submit_task(gpu_task);
    let plain = [h.submit(), h.submit(), h.submit()];
    let r1 = h.connect("r1", 2, &[], &[]);
    let assigned: Vec<TaskId> = h.assigned(r1).into_iter().map(|(task, _, _)| task).collect();
    assert_eq!(assigned, vec![plain[0], plain[1]], "oldest first, never a task needing a missing label");
    // A runner that says it is draining in the batch it registers in.
    let (r2, register) = h.register("r2", 2, &["gpu"], &[]);
    h.step(vec![register, Event::FromRunner { conn: r2, message: RunnerToDispatcher::Draining }]);
    assert!(h.assigned(r2).is_empty(), "a draining runner gets nothing");
    let r3 = h.connect("r3", 1, &["gpu"], &[]);
    assert_eq!(h.assigned(r3), vec![(gpu_task, 1, Job::Test)]);
    assert_eq!(h.core.tasks.pending(plain[2]).map(|t| t.id), Some(plain[2]));
}

#[test]
fn a_lost_runner_requeues_its_task_until_the_attempts_are_spent() {
    let mut h = Harness::new(Settings { max_attempts: 2, ..settings() });
    let task = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(r1).len(), 1);
    h.published();
    h.down(r1);
    assert_eq!(h.task(task).state, TaskState::Pending);
    assert!(h.published().contains(&Change::RunnerLost { runner: name("r1") }), "subscribers hear of it");
    let r2 = h.connect("r2", 1, &[], &[]);
    assert_eq!(h.assigned(r2), vec![(task, 2, Job::Test)]);
    // A silent runner is lost once it was silent for the window while a
    // ping actually sent went unanswered for an interval, on the scheduler's
    // clock (issue 12): silence without a ping written proves nothing.
    let start = Instant::now();
    h.tick_at(start + Duration::from_secs(10));
    assert_eq!(h.task(task).state, TaskState::Running, "judged before any ping went unanswered");
    h.pinged_at(r2, start + Duration::from_secs(10));
    h.tick_at(start + Duration::from_secs(10) + h.settings.heartbeat_interval / 2);
    assert_eq!(
        h.task(task).state,
        TaskState::Running,
        "judged before the ping had an interval to be answered"
    );
    h.tick_at(start + Duration::from_secs(20));
    let info = h.task(task);
    assert_eq!((info.state, info.attempts), (TaskState::Error, 2));
    assert!(info.reason.unwrap().starts_with("gave up after 2 attempts; last: runner r2 lost"));
}

#[test]
fn a_runner_that_answers_its_pings_is_never_lost() {
    let mut h = Harness::new(settings());
    let r1 = h.connect("r1", 1, &[], &[]);
    let start = Instant::now();
    for round in 1..=10u32 {
        let at = start + h.settings.heartbeat_interval * round;
        h.pinged_at(r1, at);
        h.runner_says(r1, RunnerToDispatcher::Pong(Pong { seq: u64::from(round) }));
        h.tick_at(at + h.settings.dead_after() * 2);
    }
    let runners = h.core.runners.silent(
        start + h.settings.dead_after() * 30,
        h.settings.dead_after(),
        h.settings.heartbeat_interval,
    );
    assert!(runners.is_empty(), "{runners:?}");
    // The scheduler sends no pings itself: the connection's writer does.
    assert!(h.sent(r1).iter().all(|message| !matches!(message, DispatcherToRunner::Ping(_))));
}

#[test]
fn after_a_restart_a_runner_re_adopts_its_task_and_an_absent_one_is_requeued() {
    let mut h = Harness::new(settings());
    let kept = h.submit();
    let abandoned = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    let r2 = h.connect("r2", 1, &[], &[]);
    assert_eq!(h.assigned(r1), vec![(kept, 1, Job::Test)]);
    assert_eq!(h.assigned(r2), vec![(abandoned, 1, Job::Test)]);
    h.output(r1, kept, 1, 0, b"before the restart\n");

    h.restart();
    let r1 = h.connect("r1", 1, &[], &[(kept, 1)]);
    let sent = h.sent(r1);
    let DispatcherToRunner::Registered(registered) = &sent[0] else { panic!("{sent:?}") };
    assert_eq!(registered.resume.len(), 1);
    assert_eq!((registered.resume[0].task_id, registered.resume[0].output_offset), (kept, 19));
    h.output(r1, kept, 1, 19, b"after\n");
    assert_eq!(h.log(kept), b"before the restart\nafter\n");

    // r2 does not come back within the grace (counted from the restart),
    // which is longer than a runner's longest wait between reconnection
    // tries: its task runs again; r1, heard since, is not lost.
    let restarted = h.core.tasks.running(abandoned).and_then(|running| running.orphaned_at).unwrap();
    assert!(h.settings.orphan_grace() > protocol::peer::LONGEST_RECONNECT_WAIT);
    h.tick_at(restarted + h.settings.orphan_grace());
    assert_eq!(h.task(abandoned).state, TaskState::Running, "still waiting at the end of the grace");
    h.tick_at(restarted + h.settings.orphan_grace() + Duration::from_nanos(1));
    assert_eq!(h.task(abandoned).state, TaskState::Pending);
    h.result(r1, kept, 1, Outcome::Passed);
    assert_eq!(h.assigned(r1), vec![(abandoned, 2, Job::Test)]);
}

#[test]
fn a_runner_restarted_without_its_task_loses_it() {
    let mut h = Harness::new(settings());
    let task = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(r1).len(), 1);
    // The same runner registers again (its old connection not yet closed)
    // holding nothing: the task ran in its previous life and is requeued,
    // then handed to it again as attempt 2.
    let again = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(again), vec![(task, 2, Job::Test)]);
    // The old connection's close is not the runner's.
    h.down(r1);
    assert_eq!(h.task(task).state, TaskState::Running);
}

#[test]
fn a_stale_attempt_is_forgotten_and_its_output_and_result_refused() {
    let mut h = Harness::new(settings());
    let task = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(r1).len(), 1);
    h.down(r1);
    let r2 = h.connect("r2", 1, &[], &[]);
    assert_eq!(h.assigned(r2), vec![(task, 2, Job::Test)]);

    // r1 comes back holding attempt 1.
    let r1 = h.connect("r1", 1, &[], &[(task, 1)]);
    let sent = h.sent(r1);
    let DispatcherToRunner::Registered(registered) = &sent[0] else { panic!("{sent:?}") };
    assert_eq!((registered.forget.len(), registered.resume.len()), (1, 0));
    h.output(r1, task, 1, 0, b"stale");
    h.result(r1, task, 1, Outcome::Failed);
    assert_eq!(h.acks(r1), vec![(task, false)]);
    assert_eq!(h.log(task), b"");
    assert_eq!(h.task(task).state, TaskState::Running);

    h.result(r2, task, 2, Outcome::Passed);
    assert_eq!(h.acks(r2), vec![(task, true)]);
    // A resend of a recorded result is acknowledged and not recorded twice.
    h.result(r2, task, 2, Outcome::Failed);
    assert_eq!(h.acks(r2), vec![(task, true)]);
    assert_eq!(h.task(task).state, TaskState::Passed);
}

#[test]
fn a_refused_assignment_goes_back_to_the_queue() {
    let mut h = Harness::new(settings());
    let task = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(r1).len(), 1);
    h.result(r1, task, 1, Outcome::Refused);
    // A refusal spends no attempt, and the runner is not asked again until
    // it reports a free slot (issue 12).
    let sent = h.sent(r1);
    assert!(matches!(&sent[0], DispatcherToRunner::ResultAck(ack) if ack.accepted), "{sent:?}");
    assert_eq!(sent.len(), 1, "asked again before it reported a free slot: {sent:?}");
    let info = h.task(task);
    assert_eq!((info.state, info.attempts), (TaskState::Pending, 0));
    h.runner_says(r1, RunnerToDispatcher::SlotFreed(protocol::message::SlotFreed { free_slots: 1 }));
    assert_eq!(h.assigned(r1), vec![(task, 1, Job::Test)]);
}

#[test]
fn abort_ends_a_queued_task_at_once_and_a_running_one_through_its_runner() {
    let mut h = Harness::new(settings());
    let queued = h.submit();
    let aborted: Result<TaskInfo, String> =
        h.ask(|reply| Event::Abort { task_id: queued, by: "tester".into(), reply });
    assert_eq!(aborted.unwrap().state, TaskState::Aborted);

    let running = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(r1).len(), 1);
    let answer: Result<TaskInfo, String> =
        h.ask(|reply| Event::Abort { task_id: running, by: "tester".into(), reply });
    assert_eq!(answer.unwrap().state, TaskState::Running);
    assert!(matches!(h.sent(r1).as_slice(), [DispatcherToRunner::Abort(_)]));
    // The runner is lost before it reports: the task ends aborted anyway.
    h.down(r1);
    assert_eq!(h.task(running).state, TaskState::Aborted);

    let again: Result<TaskInfo, String> =
        h.ask(|reply| Event::Abort { task_id: running, by: "tester".into(), reply });
    assert!(again.unwrap_err().contains("already ended"));
    let rerun: Result<Accepted, String> =
        h.ask(|reply| Event::Rerun { task_id: running, by: "tester".into(), reply });
    assert_ne!(rerun.unwrap().task_id, running);
}

/// Steering records name who asked (issue 18: people approve).
#[test]
fn steering_records_name_who_asked() {
    let mut h = Harness::new(settings());
    let observed = h.submit();
    assert_eq!((h.task(observed).requested_by, h.task(observed).aborted_by), (None, None));
    let aborted: Result<TaskInfo, String> =
        h.ask(|reply| Event::Abort { task_id: observed, by: "alice".into(), reply });
    assert_eq!(aborted.unwrap().aborted_by.as_deref(), Some("alice"));

    let running = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    assert_eq!(h.assigned(r1).len(), 1);
    let _: Result<TaskInfo, String> =
        h.ask(|reply| Event::Abort { task_id: running, by: "bob".into(), reply });
    h.down(r1);
    let ended = h.task(running);
    assert_eq!((ended.state, ended.aborted_by.as_deref()), (TaskState::Aborted, Some("bob")));
    // Asking again after the end changes nothing.
    let again: Result<TaskInfo, String> =
        h.ask(|reply| Event::Abort { task_id: running, by: "mallory".into(), reply });
    assert!(again.is_err());
    assert_eq!(h.task(running).aborted_by.as_deref(), Some("bob"));

    let rerun: Result<Accepted, String> =
        h.ask(|reply| Event::Rerun { task_id: running, by: "carol".into(), reply });
    let new = h.task(rerun.unwrap().task_id);
    assert_eq!((new.trigger.as_str(), new.requested_by.as_deref()), ("rerun", Some("carol")));
    assert_eq!(new.aborted_by, None);
}

#[test]
fn followers_hear_of_a_new_attempt_output_and_the_end_after_the_commit() {
    let mut h = Harness::new(settings());
    let task = h.submit();
    let follower: Option<watch::Receiver<LogProgress>> =
        h.ask(|reply| Event::Follow { task_id: task, reply });
    let mut follower = follower.expect("a live task");
    assert_eq!(*follower.borrow_and_update(), LogProgress { attempt: 0, len: 0, ended: false });
    let r1 = h.connect("r1", 1, &[], &[]);
    assert_eq!(*follower.borrow_and_update(), LogProgress { attempt: 1, len: 0, ended: false });
    h.output(r1, task, 1, 0, b"abc");
    assert_eq!(*follower.borrow_and_update(), LogProgress { attempt: 1, len: 3, ended: false });
    h.result(r1, task, 1, Outcome::Passed);
    assert_eq!(*follower.borrow_and_update(), LogProgress { attempt: 1, len: 3, ended: true });
    let late: Option<watch::Receiver<LogProgress>> = h.ask(|reply| Event::Follow { task_id: task, reply });
    assert!(late.is_none(), "an ended task has no follower");
}

#[test]
fn output_past_the_cap_is_cut_with_a_marker() {
    let mut h = Harness::new(Settings { output_cap: 4, ..settings() });
    let task = h.submit();
    let r1 = h.connect("r1", 1, &[], &[]);
    h.sent(r1);
    h.output(r1, task, 1, 0, b"abcdef");
    h.output(r1, task, 1, 6, b"gh");
    assert_eq!(h.log(task), b"abcd\n[baton: output truncated at 4 bytes]\n");
    assert_eq!(h.core.tasks.running(task).unwrap().log_len, 8, "resume offsets count the runner's bytes");
}

#[test]
fn a_passed_release_branch_deploys_and_rolls_back() {
    let steps = vec![DeployStep { name: "deploy".into(), command: "true".into() }];
    let repo = RepoSettings {
        url: RepoUrl::new(REPO).unwrap(),
        release_branches: None,
        steps,
        auto_rollback: false,
        forge_repo: None,
        environments: Vec::new(),
    };
    let releases = Releases { repos: vec![repo], ..Releases::default() };
    let mut h = Harness::new(Settings { releases, ..settings() });
    let deployer = h.connect("deployer", 1, &["deploy"], &[]);
    let repo_url = RepoUrl::new(REPO).unwrap();
    let release_changes = |published: Vec<Change>| -> Vec<(u32, ReleaseState)> {
        published
            .into_iter()
            .filter_map(|change| match change {
                Change::Release(ReleaseChange { repo, version, state }) if repo == repo_url => {
                    Some((version, state))
                }
                _ => None,
            })
            .collect()
    };
    for version in 1..=2 {
        let task = h.new_task("main");
        let task = h.submit_task(task);
        let assigned = h.assigned(deployer);
        assert_eq!(assigned[0].0, task);
        h.result(deployer, task, 1, Outcome::Passed);
        // The release's deploy task goes to the runner with the label.
        let deploys = h.assigned(deployer);
        let [(deploy, 1, Job::Deploy(job))] = deploys.as_slice() else { panic!("{deploys:?}") };
        assert_eq!(h.task(*deploy).kind, "deploy");
        h.result(deployer, *deploy, 1, Outcome::Passed);
        assert!(job.release.starts_with('r'));
        // Subscribers (the web's live releases page) see each state.
        let seen = release_changes(h.published());
        assert_eq!(seen, vec![(version, ReleaseState::Deploying), (version, ReleaseState::Deployed)]);
    }
    let repo_url = RepoUrl::new(REPO).unwrap();
    let rolled: Result<ReleaseInfo, String> =
        h.ask(|reply| Event::Rollback { repo: repo_url.clone(), to: None, by: None, reply });
    let rolled = rolled.unwrap();
    assert_eq!((rolled.kind.as_str(), rolled.rollback_to), ("rollback", Some(1)));
    assert_eq!(
        release_changes(h.published()),
        vec![(2, ReleaseState::RolledBack), (3, ReleaseState::Deploying)]
    );
    let deploy = rolled.deploy_task_id.expect("a rollback with deploy steps deploys");
    assert!(matches!(h.assigned(deployer).as_slice(), [(id, 1, Job::Deploy(_))] if *id == deploy));
    let none: Result<ReleaseInfo, String> =
        h.ask(|reply| Event::Rollback { repo: repo_url, to: Some(9), by: None, reply });
    assert!(none.unwrap_err().contains("no release r9"));
}

#[test]
fn two_cores_live_in_one_process() {
    // No process globals: two schedulers side by side keep to themselves.
    let mut one = Harness::new(settings());
    let mut two = Harness::new(settings());
    one.submit();
    one.submit();
    two.submit();
    assert_eq!((one.core.tasks.count(TaskState::Pending), two.core.tasks.count(TaskState::Pending)), (2, 1));
}

#[test]
fn a_manager_drains_only_idle_runners_and_a_drained_runner_gets_no_work() {
    let mut h = Harness::new(settings());
    let busy = h.connect("busy", 1, &[], &[]);
    let idle = h.connect("idle", 1, &[], &[]);
    let task = h.submit();
    let on_busy = h.assigned(busy).len() + h.assigned(idle).len();
    assert_eq!(on_busy, 1);
    let runner_of = h.core.tasks.running(task).and_then(|running| running.task.runner.clone()).unwrap();
    let free = if runner_of.as_str() == "busy" { name("idle") } else { name("busy") };
    let refused = h.ask(|reply| Event::Drain { runner: runner_of.clone(), reply });
    assert_eq!(refused, Err("runner is busy".to_string()));
    assert_eq!(h.ask(|reply| Event::Drain { runner: free.clone(), reply }), Ok(()));
    assert_eq!(
        h.ask(|reply| Event::Drain { runner: name("nobody"), reply }),
        Err("no such runner".to_string())
    );
    // New work waits rather than go to the drained runner.
    let next = h.submit();
    assert!(h.assigned(busy).is_empty() && h.assigned(idle).is_empty());
    assert!(h.core.tasks.pending(next).is_some());
    let load = super::manager::snapshot(&h.core);
    assert_eq!(load.pending.iter().map(|group| group.count).sum::<u32>(), 1);
    let drained = load.runners.iter().find(|runner| runner.name == free).unwrap();
    assert_eq!(drained.state, protocol::message::LoadState::Draining);
}

/// Retention (issue 16): only ended tasks go, the counts by state follow the
/// rows (checked by the harness after every step), and a log is pruned once.
#[test]
fn pruning_removes_only_ended_tasks_and_keeps_the_counts() {
    let mut h = Harness::new(settings());
    let conn = h.connect("r1", 1, &[], &[]);
    let ended = h.submit();
    assert_eq!(h.assigned(conn), vec![(ended, 1, Job::Test)]);
    h.result(conn, ended, 1, Outcome::Failed);
    let logged = h.submit();
    assert_eq!(h.assigned(conn), vec![(logged, 1, Job::Test)]);
    h.result(conn, logged, 1, Outcome::Passed);
    let running = h.submit();
    assert_eq!(h.assigned(conn), vec![(running, 1, Job::Test)]);
    let pending = h.submit();

    let pruned =
        h.ask(|reply| Event::Prune { tasks: vec![ended, running, pending], logs: vec![logged], reply });
    let gone: Vec<TaskId> = pruned.tasks.iter().map(|task| task.id).collect();
    assert_eq!(gone, vec![ended], "only the ended task goes");
    assert_eq!(pruned.tasks[0].state, TaskState::Failed);
    assert_eq!(pruned.logs, vec![logged]);
    let status = h.ask(|reply| Event::Status { reply });
    let count = |state| status.tasks.iter().find(|(s, _)| *s == state).map(|(_, n)| *n);
    assert_eq!(count(TaskState::Failed), Some(0));
    assert_eq!(count(TaskState::Passed), Some(1));
    let again = h.ask(|reply| Event::Prune { tasks: vec![ended], logs: vec![logged, pending], reply });
    assert!(again.tasks.is_empty() && again.logs.is_empty(), "{again:?}");
}

/// A repository with a staging (auto) and a production environment (auto,
/// after staging, approval, one canary, auto-rollback).
fn environments() -> Settings {
    use crate::config::{Approval, Canary, Environment};
    let labels = |names: &[&str]| names.iter().map(|label| Label::new(*label).unwrap()).collect::<Vec<_>>();
    let staging = Environment {
        name: name("staging"),
        labels: labels(&["deploy", "staging"]),
        auto: true,
        after: None,
        approval: Approval::None,
        canary: Canary::None,
        needs: Vec::new(),
        auto_rollback: false,
    };
    let production = Environment {
        name: name("production"),
        labels: labels(&["deploy", "prod"]),
        auto: true,
        after: Some(name("staging")),
        approval: Approval::Other,
        canary: Canary::Hosts(1),
        needs: Vec::new(),
        auto_rollback: true,
    };
    let repo = RepoSettings {
        url: RepoUrl::new(REPO).unwrap(),
        release_branches: None,
        steps: vec![DeployStep { name: "deploy".into(), command: "true".into() }],
        auto_rollback: false,
        environments: vec![staging, production],
        forge_repo: None,
    };
    Settings { releases: Releases { repos: vec![repo], ..Releases::default() }, ..settings() }
}

impl Harness {
    /// Runs a test of a new commit on `main` to a pass on `tester`: a release.
    fn release(&mut self, tester: ConnId) {
        let mut task = self.new_task("main");
        task.labels = vec![Label::new("test").unwrap()];
        let task = self.submit_task(task);
        let assigned = self.assigned(tester);
        assert_eq!(assigned.first().map(|(id, _, _)| *id), Some(task), "{assigned:?}");
        self.result(tester, task, 1, Outcome::Passed);
    }

    /// The host deploy jobs sent to `conn`: (task, environment, host, release).
    fn host_jobs(&mut self, conn: ConnId) -> Vec<(TaskId, String, String, String)> {
        self.assigned(conn)
            .into_iter()
            .map(|(task, _, job)| match job {
                Job::DeployHost(job) => {
                    (task, job.environment.to_string(), job.host.to_string(), job.deploy.release)
                }
                other => panic!("not a host deploy: {other:?}"),
            })
            .collect()
    }

    fn steer(&mut self, steer: super::Steer, by: &str) -> Result<protocol::message::DeploymentInfo, String> {
        let by = by.to_string();
        self.ask(|reply| Event::Deployment { steer, by, reply })
    }

    fn deployments(&self, env: &str) -> Vec<protocol::message::DeploymentInfo> {
        let reader = crate::store::Reader::open(&self.core.files.database()).unwrap();
        reader.deployments(None, Some(&name(env))).unwrap()
    }
}

fn request(version: u32, env: &str) -> protocol::message::DeploymentRequest {
    protocol::message::DeploymentRequest { repo: RepoUrl::new(REPO).unwrap(), version, env: name(env) }
}

#[test]
fn a_release_reaches_staging_then_production_after_approval_canary_first() {
    use protocol::{DeploymentState, HostState};
    let mut h = Harness::new(environments());
    let tester = h.connect("tester", 1, &["test"], &[]);
    let stage = h.connect("stage-a", 1, &["deploy", "staging"], &[]);
    let prod_a = h.connect("prod-a", 1, &["deploy", "prod"], &[]);
    let prod_b = h.connect("prod-b", 1, &["deploy", "prod"], &[]);
    h.release(tester);
    let staging = h.host_jobs(stage);
    assert_eq!(
        staging.iter().map(|j| (j.1.as_str(), j.2.as_str(), j.3.as_str())).collect::<Vec<_>>(),
        [("staging", "stage-a", "r1")]
    );
    assert!(h.host_jobs(prod_a).is_empty() && h.host_jobs(prod_b).is_empty());
    assert_eq!(h.deployments("production")[0].waiting_for.as_deref(), Some("after: r1 deployed in staging"));
    h.result(stage, staging[0].0, 1, Outcome::Passed);
    assert_eq!(h.deployments("staging")[0].state, DeploymentState::Deployed);
    assert_eq!(h.deployments("production")[0].waiting_for.as_deref(), Some("approval"));

    // approval = "other": the requester may not approve; anyone else may.
    let requester = h.deployments("production")[0].requested_by.clone();
    let refused = h.steer(super::Steer::Approve(request(1, "production")), &requester);
    assert!(refused.unwrap_err().contains("may not approve"));
    let approved = h.steer(super::Steer::Approve(request(1, "production")), "alice").unwrap();
    assert_eq!((approved.state, approved.approved_by.as_deref()), (DeploymentState::Canary, Some("alice")));
    let canary = h.host_jobs(prod_a);
    assert_eq!(canary.len(), 1);
    assert!(h.host_jobs(prod_b).is_empty(), "the other host waits for the canary");
    h.result(prod_a, canary[0].0, 1, Outcome::Passed);
    let rest = h.host_jobs(prod_b);
    assert_eq!(rest.len(), 1);
    assert_eq!(h.deployments("production")[0].state, DeploymentState::Deploying);
    h.result(prod_b, rest[0].0, 1, Outcome::Passed);
    let deployed = &h.deployments("production")[0];
    assert_eq!(deployed.state, DeploymentState::Deployed);
    assert!(deployed.hosts.iter().all(|host| host.state == HostState::Deployed));

    // A second release fails on the canary: the other host is never touched
    // and the canary gets r1 back.
    h.release(tester);
    let staging = h.host_jobs(stage);
    h.result(stage, staging[0].0, 1, Outcome::Passed);
    h.steer(super::Steer::Approve(request(2, "production")), "alice").unwrap();
    let canary = h.host_jobs(prod_a);
    h.result(prod_a, canary[0].0, 1, Outcome::Failed);
    let listed = h.deployments("production");
    let failed = listed.iter().find(|d| d.version == 2).unwrap();
    assert_eq!(failed.state, DeploymentState::Failed);
    let states: Vec<HostState> = failed.hosts.iter().map(|host| host.state).collect();
    assert_eq!(states, [HostState::Failed, HostState::Skipped]);
    let rollback = h.host_jobs(prod_a);
    assert_eq!(rollback.iter().map(|j| j.3.as_str()).collect::<Vec<_>>(), ["r1"]);
    assert!(h.host_jobs(prod_b).is_empty());
    h.result(prod_a, rollback[0].0, 1, Outcome::Passed);
    let newest = &h.deployments("production")[0];
    assert_eq!((newest.kind, newest.state), (protocol::ReleaseKind::Rollback, DeploymentState::Deployed));

    // Going backwards is refused, unless it is a rollback.
    let older = h.steer(super::Steer::Deploy(request(1, "staging")), "alice");
    assert!(older.unwrap_err().contains("r1 is older than r2"));
    let rollback = protocol::message::EnvRollbackRequest {
        repo: RepoUrl::new(REPO).unwrap(),
        env: name("staging"),
        to: None,
    };
    let rolled = h.steer(super::Steer::Rollback(rollback), "alice").unwrap();
    assert_eq!((rolled.version, rolled.kind), (1, protocol::ReleaseKind::Rollback));
    assert_eq!(h.deployments("staging")[1].state, DeploymentState::RolledBack);
}

#[test]
fn a_deployment_without_hosts_waits_for_one_and_a_restart_keeps_host_tasks() {
    use protocol::DeploymentState;
    let mut h = Harness::new(environments());
    let tester = h.connect("tester", 1, &["test"], &[]);
    h.release(tester);
    let waiting = &h.deployments("staging")[0];
    assert_eq!(waiting.waiting_for.as_deref(), Some("hosts: a runner with labels deploy, staging"));
    let stage = h.connect("stage-a", 1, &["deploy", "staging"], &[]);
    let jobs = h.host_jobs(stage);
    assert_eq!(jobs.len(), 1, "the new host gets the waiting deployment");
    // The dispatcher restarts while the host deploys; the host re-adopts
    // its task and its result finishes the deployment: no second task.
    h.restart();
    let stage = h.connect("stage-a", 1, &["deploy", "staging"], &[(jobs[0].0, 1)]);
    assert!(h.host_jobs(stage).is_empty());
    h.result(stage, jobs[0].0, 1, Outcome::Passed);
    let deployed = &h.deployments("staging")[0];
    assert_eq!(deployed.state, DeploymentState::Deployed);
    assert_eq!(deployed.hosts.len(), 1);
}

#[test]
fn a_failed_run_is_retried_on_another_runner_and_a_pass_makes_it_flaky() {
    let mut h = Harness::new(Settings { retry_failed: 2, max_attempts: 1, ..settings() });
    let r1 = h.connect("r1", 1, &[], &[]);
    let task = h.submit();
    assert_eq!(h.assigned(r1), vec![(task, 1, Job::Test)]);
    let r2 = h.connect("r2", 1, &[], &[]);
    h.result_with_tests(
        r1,
        task,
        1,
        Outcome::Failed,
        &[("t.a", TestStatus::Failed), ("t.b", TestStatus::Passed)],
    );
    assert_eq!(h.acks(r1), vec![(task, true)]);
    assert!(h.assigned(r1).is_empty(), "the retry avoids the runner that failed it while another is free");
    assert_eq!(h.assigned(r2), vec![(task, 2, Job::Test)]);
    assert_eq!(h.task(task).state, TaskState::Running);

    h.result_with_tests(
        r2,
        task,
        2,
        Outcome::Passed,
        &[("t.a", TestStatus::Passed), ("t.b", TestStatus::Passed)],
    );
    let info = h.task(task);
    assert_eq!(
        (info.state, info.attempts, info.flaky, info.flaky_tests),
        (TaskState::Passed, 2, true, vec!["t.a".to_string()])
    );
    let reader = crate::store::Reader::open(&h.core.files.database()).unwrap();
    let tests = reader.test_cases(task).unwrap().unwrap();
    assert_eq!(tests.len(), 2, "the last attempt's outcomes: {tests:?}");
    let flaky = reader.flaky_tests(None, 10).unwrap();
    let rows: Vec<_> =
        flaky.iter().map(|test| (test.name.as_str(), test.runs, test.failures, test.flips)).collect();
    assert_eq!(rows, vec![("t.a", 2, 1, 1)]);
}

#[test]
fn retries_end_after_n_failed_runs_and_a_lone_runner_takes_them() {
    let mut h = Harness::new(Settings { retry_failed: 1, ..settings() });
    let r1 = h.connect("r1", 1, &[], &[]);
    let task = h.submit();
    assert_eq!(h.assigned(r1), vec![(task, 1, Job::Test)]);
    h.result_with_tests(r1, task, 1, Outcome::Failed, &[("t.a", TestStatus::Failed)]);
    assert_eq!(h.assigned(r1), vec![(task, 2, Job::Test)], "no other runner: the same one retries");
    h.result_with_tests(r1, task, 2, Outcome::Failed, &[("t.a", TestStatus::Failed)]);
    let info = h.task(task);
    assert_eq!((info.state, info.attempts, info.flaky), (TaskState::Failed, 2, false));
    assert!(h.assigned(r1).is_empty());
    let reader = crate::store::Reader::open(&h.core.files.database()).unwrap();
    let flaky = reader.flaky_tests(None, 10).unwrap();
    let rows: Vec<_> =
        flaky.iter().map(|test| (test.name.as_str(), test.runs, test.failures, test.flips)).collect();
    assert_eq!(rows, vec![("t.a", 2, 2, 0)], "failed twice is not a flip");
}

/// A git repository of `n` commits on `main` (`git` with a fixed identity);
/// returns its path and the commits, oldest first.
fn repo_of(dir: &std::path::Path, n: usize) -> (String, Vec<CommitId>) {
    let git = |args: &[&str]| {
        let output = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=Baton", "-c", "user.email=ci@baton.invalid"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    std::fs::create_dir_all(dir).unwrap();
    git(&["init", "-q", "-b", "main"]);
    let commits = (1..=n)
        .map(|idx| {
            git(&["commit", "-q", "--allow-empty", "-m", &format!("commit {idx}")]);
            CommitId::new(git(&["rev-parse", "HEAD"])).unwrap()
        })
        .collect();
    (dir.display().to_string(), commits)
}

impl Harness {
    fn submit_commit(&mut self, repo: &str, commit: &CommitId) -> TaskId {
        let task = NewTask {
            repo: RepoUrl::new(repo).unwrap(),
            branch: Branch::new("main").unwrap(),
            commit: commit.clone(),
            labels: Vec::new(),
            trigger: Trigger::Manual,
            kind: TaskKind::Test,
            release_id: None,
            host: None,
            deployment_id: None,
            requested_by: None,
        };
        self.submit_task(task)
    }

    /// Answers every assignment on `conn`: commits from index `first_bad`
    /// on fail, those in `errors` end in error, the rest pass. Returns the
    /// tasks answered.
    fn answer_bisect(
        &mut self,
        conn: ConnId,
        commits: &[CommitId],
        first_bad: usize,
        errors: &[usize],
    ) -> Vec<TaskId> {
        let mut answered = Vec::new();
        for (task_id, attempt, _) in self.assigned(conn) {
            let idx = commits.iter().position(|commit| *commit == self.task(task_id).commit).unwrap();
            let outcome = if errors.contains(&idx) {
                Outcome::Error
            } else if idx >= first_bad {
                Outcome::Failed
            } else {
                Outcome::Passed
            };
            self.result(conn, task_id, attempt, outcome);
            answered.push(task_id);
        }
        answered
    }
}

#[test]
fn a_failure_after_untested_commits_is_bisected_to_its_first_failing_commit() {
    let notifier = crate::config::Notifier {
        name: name("culprits"),
        target: crate::config::NotifierTarget::Command(vec!["true".into()]),
        events: Some(vec![protocol::NotificationEvent::CulpritFound]),
    };
    let mut h = Harness::new(Settings { notifiers: Arc::new(vec![notifier]), ..settings() });
    let (repo, commits) = repo_of(&h.dir.path().join("repo"), 33);
    let r1 = h.connect("r1", 1, &[], &[]);
    let good = h.submit_commit(&repo, &commits[0]);
    assert_eq!(h.answer_bisect(r1, &commits, 20, &[]), vec![good]);
    let bad = h.submit_commit(&repo, &commits[32]);
    assert_eq!(h.answer_bisect(r1, &commits, 20, &[]), vec![bad]);
    let mut steps = 0;
    while h.task(bad).culprit.is_none() {
        let answered = h.answer_bisect(r1, &commits, 20, &[]);
        assert_eq!(answered.len(), 1, "one bisect step at a time");
        assert_eq!(h.task(answered[0]).kind, "bisect");
        steps += 1;
        assert!(steps <= 6, "more than 6 steps");
    }
    let culprit = h.task(bad).culprit.unwrap();
    assert_eq!(culprit.commit, commits[20]);
    assert_eq!((culprit.steps, culprit.tasks.len()), (steps, steps as usize));
    assert_eq!(h.task(bad).state, TaskState::Failed);
    assert!(h.assigned(r1).is_empty(), "nothing more to test");
    let reader = crate::store::Reader::open(&h.core.files.database()).unwrap();
    let outbox = reader.due_notifications(i64::MAX).unwrap();
    assert_eq!(outbox.len(), 1, "only culprit_found is wanted: {outbox:?}");
    let event: serde_json::Value = serde_json::from_str(&outbox[0].event).unwrap();
    assert_eq!(event["event"], "culprit_found");
    assert_eq!(event["culprit"]["commit"], commits[20].as_str());
    assert_eq!(event["task"]["id"], bad.get());
}

#[test]
fn ordinary_work_preempts_a_bisect_step_which_runs_again_after() {
    let mut h = Harness::new(settings());
    let (repo, commits) = repo_of(&h.dir.path().join("repo"), 9);
    let r1 = h.connect("r1", 1, &[], &[]);
    let good = h.submit_commit(&repo, &commits[0]);
    assert_eq!(h.answer_bisect(r1, &commits, 5, &[]), vec![good]);
    let bad = h.submit_commit(&repo, &commits[8]);
    assert_eq!(h.answer_bisect(r1, &commits, 5, &[]), vec![bad]);
    let sent = h.assigned(r1);
    assert_eq!(sent.len(), 1);
    let (step, attempt, _) = sent[0].clone();
    // An ordinary task arrives while the only runner runs the bisect step.
    let ordinary = h.submit();
    let aborts: Vec<TaskId> = h
        .sent(r1)
        .into_iter()
        .filter_map(|message| match message {
            DispatcherToRunner::Abort(abort) => Some(abort.task_id),
            _ => None,
        })
        .collect();
    assert_eq!(aborts, vec![step], "the bisect step makes room");
    h.result(r1, step, attempt, Outcome::Aborted);
    assert_eq!(h.assigned(r1), vec![(ordinary, 1, Job::Test)], "the ordinary task goes first");
    h.result(r1, ordinary, 1, Outcome::Passed);
    // A passing ordinary task of another branch cancels nothing; the step
    // is tested again, then the bisection goes on to the culprit.
    while h.task(bad).culprit.is_none() {
        assert_eq!(h.answer_bisect(r1, &commits, 5, &[]).len(), 1);
    }
    assert_eq!(h.task(bad).culprit.unwrap().commit, commits[5]);
}

#[test]
fn a_bisection_skips_errors_and_resumes_after_a_restart() {
    let mut h = Harness::new(settings());
    let (repo, commits) = repo_of(&h.dir.path().join("repo"), 17);
    let r1 = h.connect("r1", 1, &[], &[]);
    let good = h.submit_commit(&repo, &commits[0]);
    assert_eq!(h.answer_bisect(r1, &commits, 11, &[]), vec![good]);
    let bad = h.submit_commit(&repo, &commits[16]);
    assert_eq!(h.answer_bisect(r1, &commits, 11, &[]), vec![bad]);
    // The first step (commit 8 of 16) ends in error and is skipped.
    assert_eq!(h.answer_bisect(r1, &commits, 11, &[8]).len(), 1);
    let sent = h.assigned(r1);
    let (step, attempt, _) = sent[0].clone();
    h.restart();
    let r1 = h.connect("r1", 1, &[], &[(step, attempt)]);
    let idx = commits.iter().position(|commit| *commit == h.task(step).commit).unwrap();
    let outcome = if idx >= 11 { Outcome::Failed } else { Outcome::Passed };
    h.result(r1, step, attempt, outcome);
    while h.task(bad).culprit.is_none() {
        assert_eq!(h.answer_bisect(r1, &commits, 11, &[8]).len(), 1);
    }
    assert_eq!(h.task(bad).culprit.unwrap().commit, commits[11]);
}

#[test]
fn a_newer_passing_commit_cancels_a_bisection() {
    let mut h = Harness::new(settings());
    let (repo, commits) = repo_of(&h.dir.path().join("repo"), 9);
    let r1 = h.connect("r1", 1, &[], &[]);
    let good = h.submit_commit(&repo, &commits[0]);
    assert_eq!(h.answer_bisect(r1, &commits, 5, &[]), vec![good]);
    let bad = h.submit_commit(&repo, &commits[7]);
    assert_eq!(h.answer_bisect(r1, &commits, 5, &[]), vec![bad]);
    let (step, _, _) = h.assigned(r1)[0].clone();
    let newer = h.submit_commit(&repo, &commits[8]);
    // The step is preempted for the newer commit, which passes.
    h.result(r1, step, 1, Outcome::Aborted);
    assert_eq!(h.assigned(r1), vec![(newer, 1, Job::Test)]);
    h.result(r1, newer, 1, Outcome::Passed);
    assert!(h.assigned(r1).is_empty(), "no more bisect steps");
    assert!(h.task(bad).culprit.is_none());
}

#[test]
fn a_range_with_a_commit_still_being_tested_is_not_bisected() {
    let mut h = Harness::new(settings());
    let (repo, commits) = repo_of(&h.dir.path().join("repo"), 9);
    let r1 = h.connect("r1", 2, &[], &[]);
    let good = h.submit_commit(&repo, &commits[0]);
    assert_eq!(h.answer_bisect(r1, &commits, 5, &[]), vec![good]);
    // `--mode every` after a burst: every commit has a task, and a later
    // one ends first.
    let tasks: Vec<TaskId> = commits[1..].iter().map(|commit| h.submit_commit(&repo, commit)).collect();
    let sent = h.assigned(r1);
    assert_eq!(sent.iter().map(|(task, _, _)| *task).collect::<Vec<_>>(), tasks[..2].to_vec());
    h.result(r1, tasks[1], 1, Outcome::Failed);
    h.result(r1, tasks[0], 1, Outcome::Passed);
    for task in &tasks[2..] {
        let sent = h.assigned(r1);
        for (task_id, attempt, _) in sent {
            h.result(r1, task_id, attempt, Outcome::Passed);
        }
        assert!(h.task(*task).state.is_final() || h.core.tasks.is_live(*task));
    }
    while let Some((task_id, attempt, _)) = h.assigned(r1).pop() {
        assert_ne!(h.task(task_id).kind, "bisect", "nothing to bisect: every commit has its own task");
        h.result(r1, task_id, attempt, Outcome::Passed);
    }
    assert!(h.task(tasks[1]).culprit.is_none());
}
