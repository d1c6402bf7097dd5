//! The scheduler as data: scripted events against a [`Core`] and a temp-dir
//! store, with [`Core::check_invariants`] after every step (hyperqueue's
//! `sanity_check`). No process, no socket: each test runs in milliseconds.

use std::collections::HashMap;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::message::{
    Accepted, DeployStep, DispatcherToRunner, Held, HostFacts, Job, Outcome, Output, Pong, Register,
    ReleaseInfo, RunnerToDispatcher, TaskInfo, TaskResult,
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
    // A silent runner is lost once pings actually sent went unanswered for
    // the window, on the scheduler's clock (issue 12): silence without a
    // ping written proves nothing.
    let start = Instant::now();
    h.tick_at(start + Duration::from_secs(10));
    assert_eq!(h.task(task).state, TaskState::Running, "judged before any ping went unanswered");
    h.pinged_at(r2, start + Duration::from_secs(10));
    h.tick_at(start + Duration::from_secs(10) + h.settings.dead_after());
    assert_eq!(h.task(task).state, TaskState::Running, "judged at the window, not past it");
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
    let runners = h.core.runners.silent(start + h.settings.dead_after() * 30, h.settings.dead_after());
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

    // r2 does not come back within the window (counted from the restart):
    // its task runs again; r1, heard since, is not lost.
    let restarted = h.core.tasks.running(abandoned).and_then(|running| running.orphaned_at).unwrap();
    h.tick_at(restarted + h.settings.dead_after() + Duration::from_nanos(1));
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
