//! The messages of each role, one enum per direction, named sender to
//! receiver.
//!
//! bincode writes a variant's index: append new variants at the end, never
//! reorder or remove one, and bump [`crate::PROTOCOL_VERSION`] on any change.
//! The golden-bytes tests at the bottom catch accidents.
//!
//! Times are milliseconds since the Unix epoch; clients format them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{
    Branch, CommitId, CommitPrefix, DeploymentState, HostState, Label, Name, ReleaseKind, ReleaseState,
    RepoUrl, TaskId, TaskState,
};

// ---------------------------------------------------------------- observer

/// Observer to dispatcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObserverToDispatcher {
    /// Queue a test of `commit` unless this (repository, commit) is known.
    Submit(Submit),
    /// Answer to a [`DispatcherToObserver::Ping`] with the same sequence
    /// number: the dispatcher closes an observer that stays silent.
    Pong(Pong),
    /// A branch tip submitted by one of the observer's schedules: always a
    /// new task (trigger `schedule`), even when the commit was tested before.
    /// Answered like `Submit`, in the same order.
    SubmitScheduled(Submit),
}

/// A commit seen on a branch of a repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submit {
    pub repo: RepoUrl,
    pub branch: Branch,
    pub commit: CommitId,
    /// Runner labels the commit's `.baton.toml` requires.
    pub labels: Vec<Label>,
}

/// Dispatcher to observer: one answer per `Submit`, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatcherToObserver {
    /// The submission is durable (committed to the database).
    Accepted(Accepted),
    /// The submission was refused and will never be accepted as it is.
    Refused(Refused),
    /// Heartbeat, sent every heartbeat interval between the answers; answer
    /// with an [`ObserverToDispatcher::Pong`].
    Ping(Ping),
}

/// A submission recorded, or recognised as already recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub task_id: TaskId,
    /// True when the (repository, commit) was already known.
    pub duplicate: bool,
}

/// A request that was refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub reason: String,
}

// ------------------------------------------------------------------ runner

/// Runner to dispatcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunnerToDispatcher {
    /// First message after the handshake: what the runner is and holds.
    Register(Register),
    /// Answer to a [`Ping`] with the same sequence number.
    Pong(Pong),
    /// A piece of a task's console output.
    Output(Output),
    /// A task's final result.
    Result(TaskResult),
    /// The runner is stopping: assign it nothing more.
    Draining,
    /// A slot was freed without a result (an attempt the dispatcher told it
    /// to forget is gone): the runner may be asked for work again.
    SlotFreed(SlotFreed),
}

/// A runner's slot came free; `free_slots` is how many it has now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotFreed {
    pub free_slots: u32,
}

/// What a runner offers and which tasks it still holds from before a
/// reconnect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub labels: Vec<Label>,
    pub slots: u32,
    pub host: HostFacts,
    pub held: Vec<Held>,
}

/// Facts about the runner's host, shown by `baton runners`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub os: String,
    pub arch: String,
    pub cpus: u32,
}

/// A task attempt a runner is running or has finished but not delivered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub task_id: TaskId,
    pub attempt: u32,
}

/// Heartbeat answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub seq: u64,
}

/// Console output bytes of one attempt, starting at byte `offset` of its log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub task_id: TaskId,
    pub attempt: u32,
    pub offset: u64,
    pub data: Vec<u8>,
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("task_id", &self.task_id)
            .field("attempt", &self.attempt)
            .field("offset", &self.offset)
            .field("len", &self.data.len())
            .finish()
    }
}

/// How an attempt ended, as the runner saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The test command exited 0.
    Passed,
    /// The test command exited non-zero, was killed, or timed out.
    Failed,
    /// The runner could not run the test (fetch, checkout, spawn failed).
    Error,
    /// The dispatcher aborted the attempt.
    Aborted,
    /// The runner did not start the attempt (it is stopping, or has no free
    /// slot): the dispatcher gives the task to another runner.
    Refused,
}

/// Counts of tests recognised in the output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
}

/// The final result of one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResult {
    pub task_id: TaskId,
    pub attempt: u32,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub summary: Option<Summary>,
    /// Why the attempt failed or errored, when it was not the test itself
    /// (`timeout`, `commit not found`, ...).
    pub reason: Option<String>,
    /// Total length of the attempt's console output, so the dispatcher
    /// knows whether it has all of it.
    pub output_len: u64,
    /// A tag pointing at the commit, if the runner's copy has one (for
    /// release records).
    pub tag: Option<Branch>,
    /// For a deploy job that failed: the step that failed (`pre_deploy`,
    /// `deploy` or `post_deploy`).
    pub failed_step: Option<String>,
    /// Each test's name and outcome, as far as the output and JUnit XML
    /// files tell (bounded by the runner; failures first).
    pub tests: Vec<TestCase>,
}

/// How one test ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestStatus {
    Passed,
    Failed,
    Skipped,
}

impl TestStatus {
    /// The spelling in SQLite and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TestStatus::Passed => "passed",
            TestStatus::Failed => "failed",
            TestStatus::Skipped => "skipped",
        }
    }

    /// The inverse of [`TestStatus::as_str`].
    pub fn parse(text: &str) -> Option<TestStatus> {
        match text {
            "passed" => Some(TestStatus::Passed),
            "failed" => Some(TestStatus::Failed),
            "skipped" => Some(TestStatus::Skipped),
            _ => None,
        }
    }
}

/// One test of a run: its name as its framework prints it, and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    pub name: String,
    pub status: TestStatus,
}

/// Dispatcher to runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatcherToRunner {
    /// Answer to [`Register`]: which held attempts to resume.
    Registered(Registered),
    /// Heartbeat; answer with a [`Pong`].
    Ping(Ping),
    /// Run this attempt.
    Assign(Assign),
    /// Stop this attempt and report it aborted.
    Abort(Abort),
    /// The result of this attempt is recorded (or refused): forget it.
    ResultAck(ResultAck),
    /// This attempt is no longer yours: stop it and discard what it made.
    Forget(Forget),
    /// Send this attempt's output again from byte `output_offset`, then its
    /// result: the dispatcher could not store what it was sent (disk full).
    Resend(Resend),
}

/// Which attempt's output to send again, and from where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resend {
    pub task_id: TaskId,
    pub attempt: u32,
    pub output_offset: u64,
}

/// Which held attempts the dispatcher adopts, and which it refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub resume: Vec<Resume>,
    pub forget: Vec<Forget>,
    /// How often the dispatcher pings, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Pings a runner may miss before it is lost; the runner applies the
    /// mirror rule: no frame for `interval × misses` means the link is dead.
    pub heartbeat_misses: u32,
}

/// Keep going with an attempt; send its output from byte `output_offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub task_id: TaskId,
    pub attempt: u32,
    pub output_offset: u64,
}

/// Heartbeat request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub seq: u64,
}

/// One attempt of a task, handed to a runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    pub task_id: TaskId,
    pub attempt: u32,
    pub repo: RepoUrl,
    pub branch: Branch,
    pub commit: CommitId,
    /// What to run in the checkout.
    pub job: Job,
}

/// What an attempt runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Job {
    /// The repository's tests (`.baton.toml`, the runner's default).
    Test,
    /// A release's deploy steps, on a runner labelled `deploy`.
    Deploy(Deploy),
    /// A release's deploy steps on one host of an environment (SPEC §12).
    DeployHost(DeployHost),
}

/// The deploy steps of a release for one host of an environment: the steps
/// get `BATON_ENVIRONMENT` and `BATON_HOST` besides the variables of
/// [`Deploy`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployHost {
    pub deploy: Deploy,
    pub environment: Name,
    pub host: Name,
}

/// The deploy steps of a release, run in order; the first failure stops.
///
/// The commands are the dispatcher operator's configuration, passed through
/// verbatim; nothing in them is built from network input. The runner gives
/// the release, commit and previous commit to them as environment variables.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    /// The release's version, `r<N>`.
    pub release: String,
    pub previous_commit: Option<CommitId>,
    pub steps: Vec<DeployStep>,
}

/// One deploy step: a name (`pre_deploy`, `deploy`, `post_deploy`) and the
/// command run with `sh -c`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployStep {
    pub name: String,
    pub command: String,
}

/// Stop an attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub task_id: TaskId,
    pub attempt: u32,
}

/// The fate of a [`TaskResult`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultAck {
    pub task_id: TaskId,
    pub attempt: u32,
    /// False when the result was refused (the attempt is not current).
    pub accepted: bool,
    pub reason: Option<String>,
}

/// An attempt taken away from a runner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forget {
    pub task_id: TaskId,
    pub attempt: u32,
    pub reason: String,
}

// ------------------------------------------------------------------ client

/// Client (`baton`) to dispatcher: one request per connection or several in
/// sequence, each answered in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientToDispatcher {
    Status,
    Runners,
    Tasks(TaskQuery),
    Show(Selector),
    Submit(ManualSubmit),
    Rerun(TaskId),
    Abort(TaskId),
    /// Console output of a task; with `follow`, streamed until it ends.
    Log(LogRequest),
    /// Release records, newest first.
    Releases(ReleaseQuery),
    /// Redeploy an earlier release.
    Rollback(RollbackRequest),
    /// The commits of a repository's tasks that start with a prefix
    /// (`baton submit REPO PREFIX` when the client cannot read the
    /// repository itself); answered with `Commits`.
    Commits(CommitQuery),
    /// The runner managers' pools (answered with `Pools`).
    Pools,
    /// `baton deploy REPO VERSION --env E`: ask for a deployment (answered
    /// with `Deployment`).
    Deploy(DeploymentRequest),
    /// `baton approve REPO VERSION --env E` (answered with `Deployment`).
    Approve(DeploymentRequest),
    /// `baton reject REPO VERSION --env E --reason TEXT` (answered with
    /// `Deployment`).
    Reject(RejectRequest),
    /// `baton deployments [--repo R] [--env E]`, newest first (answered with
    /// `Deployments`).
    Deployments(DeploymentQuery),
    /// `baton rollback REPO --env E [--to VERSION]` (answered with
    /// `Deployment`).
    RollbackEnv(EnvRollbackRequest),
    /// The per-test outcomes of a task's last attempt (answered with
    /// `TestCases`).
    TestCases(TaskId),
    /// Tests by flip rate (answered with `Flaky`).
    Flaky(FlakyQuery),
}

/// A release of a repository in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRequest {
    pub repo: RepoUrl,
    pub version: u32,
    pub env: Name,
}

/// A rejection and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectRequest {
    pub repo: RepoUrl,
    pub version: u32,
    pub env: Name,
    pub reason: String,
}

/// Filters for `baton deployments`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentQuery {
    pub repo: Option<RepoUrl>,
    pub env: Option<Name>,
}

/// A return to an earlier release in one environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvRollbackRequest {
    pub repo: RepoUrl,
    pub env: Name,
    /// Default: the environment's release before its current one.
    pub to: Option<u32>,
}

/// Filters for `baton flaky`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyQuery {
    pub repo: Option<RepoUrl>,
    pub limit: u32,
}

/// A test's record across the runs the dispatcher knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlakyTest {
    pub repo: RepoUrl,
    pub name: String,
    /// Runs with an outcome for this test.
    pub runs: u64,
    pub failures: u64,
    /// Commits on which it both failed and passed.
    pub flips: u64,
    pub last_seen_ms: i64,
}

impl FlakyTest {
    /// Flips per run, 0 without runs.
    pub fn flip_rate(&self) -> f64 {
        if self.runs == 0 {
            0.0
        } else {
            self.flips as f64 / self.runs as f64
        }
    }
}

/// A commit prefix within one repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitQuery {
    pub repo: RepoUrl,
    pub prefix: CommitPrefix,
}

/// Filters for `baton releases`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseQuery {
    pub repo: Option<RepoUrl>,
}

/// `baton rollback REPO [--to VERSION]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub repo: RepoUrl,
    /// The version to go back to; default: the release before the current
    /// one.
    pub to: Option<u32>,
}

/// Filters for `baton tasks`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskQuery {
    pub repo: Option<RepoUrl>,
    pub state: Option<TaskState>,
    pub limit: u32,
}

/// A task by id, or the newest task of a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selector {
    Id(TaskId),
    Commit(CommitPrefix),
}

/// A manual trigger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualSubmit {
    pub repo: RepoUrl,
    pub branch: Branch,
    pub commit: CommitId,
    pub labels: Vec<Label>,
}

/// Which output to send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    pub task_id: TaskId,
    pub follow: bool,
}

/// Dispatcher to client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatcherToClient {
    Status(StatusReport),
    Runners(Vec<RunnerInfo>),
    Tasks(Vec<TaskInfo>),
    /// Answer to `Show`: `None` when nothing matches.
    Task(Option<Box<TaskInfo>>),
    Accepted(Accepted),
    /// Answer to `Abort`: the task as it is now.
    Aborted(Box<TaskInfo>),
    /// A piece of console output (answer to `Log`, possibly many).
    LogChunk(Vec<u8>),
    /// The end of `Log`: the task as it is now.
    LogEnd(Box<TaskInfo>),
    /// The request failed; the reason is for a human.
    Error(String),
    Releases(Vec<ReleaseInfo>),
    /// Answer to `Rollback`: the rollback record.
    Release(Box<ReleaseInfo>),
    /// Answer to `Commits`: the matching commits, at most two (one is the
    /// answer; two say the prefix is ambiguous).
    Commits(Vec<CommitId>),
    /// Answer to `Pools`: every pool of every connected runner manager.
    Pools(Vec<PoolInfo>),
    Deployments(Vec<DeploymentInfo>),
    /// Answer to `Deploy`, `Approve`, `Reject` and `RollbackEnv`.
    Deployment(Box<DeploymentInfo>),
    /// Answer to `TestCases`: `None` when there is no such task.
    TestCases(Option<Vec<TestCase>>),
    /// Answer to `Flaky`: tests by flip rate, highest first.
    Flaky(Vec<FlakyTest>),
}

/// A deployment: one release in one environment, host by host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentInfo {
    pub id: i64,
    pub repo: RepoUrl,
    pub version: u32,
    pub commit: CommitId,
    pub environment: Name,
    pub state: DeploymentState,
    /// `release`, or `rollback` for a return to an earlier release.
    pub kind: ReleaseKind,
    /// What a waiting deployment waits for (`approval`, `after staging`, ...).
    pub waiting_for: Option<String>,
    /// Who asked for it: a client's name, or `release rN` for an automatic one.
    pub requested_by: String,
    pub approved_by: Option<String>,
    pub approved_at_ms: Option<i64>,
    /// Why it was rejected or failed, or what it rolled back.
    pub reason: Option<String>,
    pub hosts: Vec<DeploymentHost>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
}

/// One host of a deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentHost {
    pub name: Name,
    pub canary: bool,
    pub state: HostState,
    pub task_id: Option<TaskId>,
}

/// A runner manager's pool as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub name: Name,
    pub labels: Vec<Label>,
    pub min: u32,
    pub max: u32,
    /// Runners the manager keeps in the pool now (starting ones included).
    pub size: u32,
    /// Those of them the dispatcher sees running a task.
    pub busy: u32,
    /// Pending tasks whose labels the pool satisfies.
    pub pending: u32,
    /// The pool's runners, by name.
    pub runners: Vec<Name>,
}

/// A release record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub repo: RepoUrl,
    pub version: u32,
    pub tag: Option<Branch>,
    pub branch: Branch,
    pub commit: CommitId,
    /// The test task that passed (a release) or the release rolled back to
    /// (a rollback: see `rollback_to`).
    pub task_id: Option<TaskId>,
    /// The task deploying this release, if deploy steps are configured.
    pub deploy_task_id: Option<TaskId>,
    pub created_at_ms: i64,
    /// The version of the release before this one.
    pub previous: Option<u32>,
    pub kind: ReleaseKind,
    /// For a rollback, the version whose commit it redeploys.
    pub rollback_to: Option<u32>,
    pub state: ReleaseState,
    /// Who or what made it: `task 12`, `baton rollback`, `auto-rollback of r5`.
    pub trigger: String,
}

/// `baton status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub uptime_ms: u64,
    pub runners_idle: u32,
    pub runners_busy: u32,
    pub runners_dead: u32,
    /// Number of tasks in each state, every state listed.
    pub tasks: Vec<(TaskState, u64)>,
    /// Set while the data dir is full: the bytes free. Reads are served,
    /// submissions refused, runners kept; it clears by itself.
    pub data_dir_full: Option<u64>,
    /// Bytes in the data dir (database, logs, results, releases), as last
    /// measured by the dispatcher's pruner.
    pub data_dir_bytes: u64,
}

/// A runner as the dispatcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub name: Name,
    pub address: String,
    pub labels: Vec<Label>,
    pub state: RunnerState,
    pub slots: u32,
    pub tasks: Vec<TaskId>,
    pub last_seen_ms: i64,
    pub host: HostFacts,
}

/// A runner's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunnerState {
    Idle,
    Busy,
    Dead,
}

impl RunnerState {
    /// The lowercase name used in JSON and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerState::Idle => "idle",
            RunnerState::Busy => "busy",
            RunnerState::Dead => "dead",
        }
    }
}

/// A task as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub id: TaskId,
    pub repo: RepoUrl,
    pub branch: Branch,
    pub commit: CommitId,
    pub state: TaskState,
    pub attempts: u32,
    pub runner: Option<Name>,
    pub exit_code: Option<i32>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub duration_ms: Option<u64>,
    pub summary: Option<Summary>,
    pub reason: Option<String>,
    pub labels: Vec<Label>,
    /// What created the task: `observer`, `manual`, `rerun` or `deploy`.
    pub trigger: String,
    /// `test`, or `deploy` for a release's deploy steps.
    pub kind: String,
    /// A failed run was retried (`--retry-failed`) and a retry passed.
    pub flaky: bool,
    /// For a flaky task: the tests that failed before the retry passed.
    pub flaky_tests: Vec<String>,
    /// For a failed task: the first failing commit, once bisection found it.
    pub culprit: Option<Culprit>,
    /// Who asked for a task a client created (submit, rerun): the proven
    /// user, or the client's name.
    pub requested_by: Option<String>,
    /// Who asked to abort it.
    pub aborted_by: Option<String>,
}

/// The first failing commit of a range, found by bisection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Culprit {
    pub commit: CommitId,
    /// Bisect tasks run to find it.
    pub steps: u32,
    /// Those tasks.
    pub tasks: Vec<TaskId>,
}

// ----------------------------------------------------------------- manager

/// Runner manager to dispatcher.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ManagerToDispatcher {
    /// The manager's pools and their runners; sent after connecting and on
    /// every change. The dispatcher answers with a [`Load`] at once and then
    /// whenever the load changes.
    Pools(Vec<PoolReport>),
    /// Take this runner out of scheduling if it is idle; answered with
    /// [`Drained`]. Once drained the runner gets no work until it registers
    /// again, so stopping it cannot cut a task short.
    Drain(Name),
}

/// One pool of a runner manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    pub name: Name,
    pub labels: Vec<Label>,
    pub min: u32,
    pub max: u32,
    /// The runners the manager started for the pool and still has.
    pub runners: Vec<Name>,
}

/// Dispatcher to runner manager.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DispatcherToManager {
    /// What is waiting and who is working, pushed on change (coalesced: a
    /// manager that reads slowly gets the newest load, not every one).
    Load(Load),
    /// The answer to a [`ManagerToDispatcher::Drain`].
    Drained(Drained),
}

/// The pending tasks, grouped by the labels they need, and the connected
/// runners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub pending: Vec<PendingGroup>,
    pub runners: Vec<RunnerLoad>,
}

/// `count` pending tasks that need (at least) `labels`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingGroup {
    pub labels: Vec<Label>,
    pub count: u32,
}

/// A connected runner as a manager sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerLoad {
    pub name: Name,
    pub labels: Vec<Label>,
    pub state: LoadState,
}

/// Whether a connected runner can take work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadState {
    Idle,
    Busy,
    /// Stopping: it finishes what it has and takes nothing new.
    Draining,
}

/// Whether a runner was drained; `reason` says why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    pub runner: Name,
    pub drained: bool,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests;
