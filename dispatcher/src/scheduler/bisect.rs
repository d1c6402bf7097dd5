//! Bisection (SPEC §14): when a branch's newest tested commit fails, its
//! previous tested commit passed, and commits between them were not tested,
//! the first failing commit is found by testing midpoints of the untested
//! first-parent range, one step at a time, as tasks of kind `bisect`.
//!
//! - The range comes from `git rev-list --first-parent GOOD..BAD`, run by the
//!   dispatcher on the repository when it is a local path (arguments, never a
//!   shell line); a repository the dispatcher cannot read is not bisected.
//! - A step that passes moves the lower bound, one that fails the upper; one
//!   that ends `error` is skipped (`git bisect skip`), and one that was
//!   aborted (preempted by ordinary work) is tested again.
//! - Bisect tasks come after all ordinary work: they go only to runners with
//!   nothing else to do, and an ordinary task that finds no free runner
//!   preempts a running bisect step.
//! - A newer passing test task of the branch cancels the bisection.
//! - The state is the `bisections` table and the bisect tasks' rows, so a
//!   restarted dispatcher resumes where it stopped.
//!
//! Data ([`Bisections`]) and functions over `(&mut Core, &Tx, &mut Effects)`
//! like the rest of the scheduler; life calls [`task_finished`] from its one
//! `finish`, and `schedule` calls [`resume`], [`choose`] and [`preempt`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use protocol::{Branch, CommitId, Name, NotificationEvent, RepoUrl, TaskId, TaskState};

use super::{life, now_ms, tasks, Core, Effects};
use crate::store::{BisectStep, BisectionRow, LiveTask, NewTask, Store, TaskKind, Trigger, Tx};

/// Longest range bisected: a longer one is a branch rewritten or a
/// repository imported, not a regression to find.
pub(super) const MAX_RANGE: usize = 4096;

/// The bisections under way, by id.
#[derive(Default)]
pub(crate) struct Bisections {
    active: BTreeMap<i64, Bisection>,
    /// Set by [`Bisections::recover`] until [`resume`] has given each
    /// recovered bisection its next step; in between, every bisection
    /// always has one (or has ended), so scheduling passes skip the walk.
    resume_due: bool,
}

/// One bisection under way.
struct Bisection {
    repo: RepoUrl,
    branch: Branch,
    /// The failed test task whose first failing commit is sought.
    bad_task: TaskId,
    /// First-parent history after the last passing commit, oldest first;
    /// the last is the bad task's commit.
    commits: Vec<CommitId>,
    /// What is known of each commit, by index.
    verdicts: BTreeMap<usize, Verdict>,
    /// Bisect tasks made, oldest first.
    tasks: Vec<TaskId>,
    /// Steps that gave an answer.
    steps: u32,
    /// The step queued or running; at most one at a time.
    current: Option<TaskId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Good,
    Bad,
    /// It could not be tested (`error`): skipped like `git bisect skip`.
    Skip,
}

impl Verdict {
    /// What a final state says of a commit; `None` for no answer (aborted).
    fn of(state: TaskState) -> Option<Verdict> {
        match state {
            TaskState::Passed => Some(Verdict::Good),
            TaskState::Failed => Some(Verdict::Bad),
            TaskState::Error => Some(Verdict::Skip),
            _ => None,
        }
    }
}

/// What to do next in a range of `len` commits.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// Test the commit at this index.
    Test(usize),
    /// The commit at this index is the first failing one.
    Found(usize),
}

/// The midpoint of the commits not yet known, skipping those that cannot
/// be tested; or the first failing commit once none is left between the
/// last good and the first bad.
fn next(len: usize, verdicts: &BTreeMap<usize, Verdict>) -> Next {
    let last = len.saturating_sub(1);
    let bad = verdicts.iter().filter(|(_, verdict)| **verdict == Verdict::Bad).map(|(idx, _)| *idx);
    let high = bad.min().unwrap_or(last).min(last);
    let good = verdicts.iter().filter(|(idx, verdict)| **verdict == Verdict::Good && **idx < high);
    let low = good.map(|(idx, _)| idx + 1).max().unwrap_or(0);
    let candidates: Vec<usize> =
        (low..high).filter(|idx| verdicts.get(idx) != Some(&Verdict::Skip)).collect();
    // Testing index m leaves [low, m) or [m + 1, high) unknown: halve them.
    let middle = low + (high - low) / 2;
    match candidates.iter().min_by_key(|idx| idx.abs_diff(middle)) {
        Some(idx) => Next::Test(*idx),
        None => Next::Found(high),
    }
}

impl Bisections {
    /// The bisections a store left running, with what their steps found.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub(crate) fn recover(store: &Store) -> anyhow::Result<Bisections> {
        let mut bisections = Bisections::default();
        for (row, steps) in store.running_bisections()? {
            bisections.resume_row(row, steps);
        }
        if !bisections.active.is_empty() {
            tracing::info!(bisections = bisections.active.len(), "resuming bisections");
            bisections.resume_due = true;
        }
        Ok(bisections)
    }

    fn resume_row(&mut self, row: BisectionRow, steps: Vec<BisectStep>) {
        let mut bisection = Bisection {
            repo: row.repo,
            branch: row.branch,
            bad_task: row.bad_task,
            verdicts: BTreeMap::from([(row.commits.len().saturating_sub(1), Verdict::Bad)]),
            commits: row.commits,
            tasks: row.tasks,
            steps: 0,
            current: None,
        };
        for step in steps {
            if !step.state.is_final() {
                bisection.current = Some(step.task_id);
            } else if let Some(verdict) = Verdict::of(step.state) {
                if let Some(idx) = bisection.commits.iter().position(|commit| *commit == step.commit) {
                    bisection.verdicts.insert(idx, verdict);
                    bisection.steps += 1;
                }
            }
        }
        self.active.insert(row.id, bisection);
    }

    /// Whether `task_id` is the current step of a bisection.
    fn owner_of(&self, task_id: TaskId) -> Option<i64> {
        self.active.iter().find(|(_, bisection)| bisection.current == Some(task_id)).map(|(id, _)| *id)
    }

    /// What holds within the bisections alone, given the live tasks.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self, tasks: &super::tasks::Tasks) {
        for (id, bisection) in &self.active {
            assert!(!bisection.commits.is_empty(), "bisection {id} has no commits");
            assert_eq!(
                bisection.verdicts.get(&(bisection.commits.len() - 1)),
                Some(&Verdict::Bad),
                "bisection {id}: its last commit failed"
            );
            assert!(
                self.resume_due || bisection.current.is_some(),
                "bisection {id} has no step and none is due"
            );
            if let Some(task_id) = bisection.current {
                assert!(tasks.is_live(task_id), "bisection {id}: its step {task_id} is not live");
                assert!(bisection.tasks.contains(&task_id), "bisection {id}: step {task_id} is not listed");
            }
            assert!(
                bisection.steps as usize <= bisection.tasks.len(),
                "bisection {id}: more steps than tasks"
            );
        }
    }
}

/// What a finished task means for bisections: a step's answer, a failure
/// to bisect, or a newer pass that cancels.
pub(super) fn task_finished(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    task: &LiveTask,
    state: TaskState,
) -> anyhow::Result<()> {
    match (task.kind, state) {
        (TaskKind::Bisect, _) => {
            let Some(id) = core.bisections.owner_of(task.id) else { return Ok(()) };
            let Some(bisection) = core.bisections.active.get_mut(&id) else { return Ok(()) };
            bisection.current = None;
            if let Some(verdict) = Verdict::of(state) {
                if let Some(idx) = bisection.commits.iter().position(|commit| *commit == task.commit) {
                    bisection.verdicts.insert(idx, verdict);
                    bisection.steps += 1;
                }
            }
            tracing::info!(bisection = id, task_id = %task.id, commit = %task.commit, state = %state, "bisect step ended");
            advance(core, tx, effects, id)
        }
        (TaskKind::Test, TaskState::Failed) => start(core, tx, effects, task),
        (TaskKind::Test, TaskState::Passed) => cancel_older(core, tx, effects, task),
        _ => Ok(()),
    }
}

/// Starts a bisection for a failed test task if its branch's previous
/// tested commit passed and commits between were not tested.
fn start(core: &mut Core, tx: &Tx<'_>, effects: &mut Effects, task: &LiveTask) -> anyhow::Result<()> {
    let Some((good, TaskState::Passed)) = tx.previous_tested(&task.repo, &task.branch, task.id)? else {
        return Ok(());
    };
    let Some(path) = local_path(&task.repo) else {
        tracing::info!(task_id = %task.id, repo = %task.repo, "not bisected: the repository is not a local path");
        return Ok(());
    };
    let commits = match first_parent(&path, &good, &task.commit) {
        Ok(commits) => commits,
        Err(err) => {
            tracing::warn!(task_id = %task.id, repo = %task.repo, commit = %task.commit, error = %format!("{err:#}"),
                "not bisected: cannot list the commits since the last pass");
            return Ok(());
        }
    };
    if commits.len() < 2 || commits.last() != Some(&task.commit) {
        return Ok(());
    }
    let mut verdicts = BTreeMap::from([(commits.len() - 1, Verdict::Bad)]);
    for (idx, commit) in commits[..commits.len() - 1].iter().enumerate() {
        match tx.tested_state(&task.repo, commit)? {
            // A commit of the range is still being tested (`--mode every`
            // with a later commit done first): its own result will tell.
            Some(state) if !state.is_final() => return Ok(()),
            Some(state) => {
                if let Some(verdict) = Verdict::of(state) {
                    verdicts.insert(idx, verdict);
                }
            }
            None => {}
        }
    }
    if verdicts.len() == commits.len() {
        return Ok(());
    }
    let id = tx.insert_bisection(&task.repo, &task.branch, &good, task.id, &commits, now_ms())?;
    tracing::info!(bisection = id, task_id = %task.id, repo = %task.repo, branch = %task.branch, good = %good,
        bad = %task.commit, commits = commits.len(), "bisecting");
    let bisection = Bisection {
        repo: task.repo.clone(),
        branch: task.branch.clone(),
        bad_task: task.id,
        commits,
        verdicts,
        tasks: Vec::new(),
        steps: 0,
        current: None,
    };
    core.bisections.active.insert(id, bisection);
    advance(core, tx, effects, id)
}

/// Queues the next step of a bisection, or records its culprit.
fn advance(core: &mut Core, tx: &Tx<'_>, effects: &mut Effects, id: i64) -> anyhow::Result<()> {
    let Some(bisection) = core.bisections.active.get(&id) else { return Ok(()) };
    if bisection.current.is_some() {
        return Ok(());
    }
    match next(bisection.commits.len(), &bisection.verdicts) {
        Next::Found(idx) => found(core, tx, effects, id, idx),
        Next::Test(idx) => {
            let labels = tx.task(bisection.bad_task)?.map(|task| task.labels).unwrap_or_default();
            let step = NewTask {
                repo: bisection.repo.clone(),
                branch: bisection.branch.clone(),
                commit: bisection.commits[idx].clone(),
                labels,
                trigger: Trigger::Bisect,
                kind: TaskKind::Bisect,
                release_id: None,
                host: None,
                deployment_id: None,
                requested_by: None,
            };
            let (accepted, queued) = tasks::insert(tx, step, now_ms())?;
            tx.add_bisect_task(id, accepted.task_id)?;
            if let Some(bisection) = core.bisections.active.get_mut(&id) {
                bisection.current = Some(accepted.task_id);
                bisection.tasks.push(accepted.task_id);
            }
            if let Some(queued) = queued {
                life::queue(core, effects, queued);
            }
            Ok(())
        }
    }
}

/// Records the first failing commit on the bad task and tells the notifiers.
fn found(core: &mut Core, tx: &Tx<'_>, effects: &mut Effects, id: i64, idx: usize) -> anyhow::Result<()> {
    let Some(bisection) = core.bisections.active.remove(&id) else { return Ok(()) };
    let culprit = &bisection.commits[idx];
    tx.end_bisection(id, Some(culprit), bisection.steps, now_ms())?;
    tracing::info!(bisection = id, task_id = %bisection.bad_task, repo = %bisection.repo, branch = %bisection.branch,
        commit = %culprit, steps = bisection.steps, "first failing commit found");
    let event = NotificationEvent::CulpritFound;
    let body = serde_json::json!({
        "event": event.as_str(),
        "at": protocol::view::rfc3339(now_ms()),
        "task": {
            "id": bisection.bad_task.get(),
            "repo": bisection.repo.as_str(),
            "branch": bisection.branch.as_str(),
            "commit": bisection.commits.last().map(CommitId::as_str),
        },
        "culprit": {
            "commit": culprit.as_str(),
            "steps": bisection.steps,
            "tasks": bisection.tasks.iter().map(|task| task.get()).collect::<Vec<_>>(),
        },
    })
    .to_string();
    for notifier in core.settings.notifiers.iter().filter(|notifier| notifier.wants(event)) {
        tx.enqueue_notification(&notifier.name, &body, now_ms())?;
        effects.outbox_changed = true;
    }
    Ok(())
}

/// A newer passing test of the branch cancels its bisections (and their
/// queued or running step).
fn cancel_older(core: &mut Core, tx: &Tx<'_>, effects: &mut Effects, task: &LiveTask) -> anyhow::Result<()> {
    let cancelled: Vec<i64> = core
        .bisections
        .active
        .iter()
        .filter(|(_, b)| b.repo == task.repo && b.branch == task.branch && b.bad_task < task.id)
        .map(|(id, _)| *id)
        .collect();
    for id in cancelled {
        let Some(bisection) = core.bisections.active.remove(&id) else { continue };
        tx.end_bisection(id, None, bisection.steps, now_ms())?;
        tracing::info!(bisection = id, task_id = %task.id, commit = %task.commit, "bisection cancelled: a newer commit passed");
        if let Some(step) = bisection.current {
            if let Err(why) = life::abort(core, tx, effects, step, "bisection")? {
                tracing::debug!(task_id = %step, why, "bisect step of a cancelled bisection already ended");
            }
        }
    }
    Ok(())
}

/// Bisections without a step (a restart between a step's end and the next)
/// get one, on the first scheduling pass after a restart; afterwards
/// [`task_finished`] gives a bisection its next step as the last one ends.
pub(super) fn resume(core: &mut Core, tx: &Tx<'_>, effects: &mut Effects) -> anyhow::Result<()> {
    if !core.bisections.resume_due {
        return Ok(());
    }
    core.bisections.resume_due = false;
    let idle: Vec<i64> =
        core.bisections.active.iter().filter(|(_, b)| b.current.is_none()).map(|(id, _)| *id).collect();
    for id in idle {
        advance(core, tx, effects, id)?;
    }
    Ok(())
}

/// Bisect tasks for the runners that are still free once ordinary work was
/// placed and have nothing running at all, oldest first.
pub(super) fn choose(core: &Core, free: &[(Name, usize)]) -> Vec<(TaskId, Name)> {
    let mut idle: Vec<&Name> = free
        .iter()
        .filter(|(name, free_slots)| {
            core.runners
                .get(name)
                .is_some_and(|runner| runner.tasks.is_empty() && runner.slots as usize == *free_slots)
        })
        .map(|(name, _)| name)
        .collect();
    let mut chosen = Vec::new();
    if idle.is_empty() {
        return chosen;
    }
    for task in core.tasks.pending_bisect() {
        let fits = idle.iter().position(|name| {
            let labels = core.runners.get(name).map(|runner| runner.labels.as_slice()).unwrap_or_default();
            task.labels.iter().all(|needed| labels.contains(needed))
        });
        if let Some(idx) = fits {
            chosen.push((task.id, idle.remove(idx).clone()));
            if idle.is_empty() {
                break;
            }
        }
    }
    chosen
}

/// An ordinary task left waiting while a runner that could take it runs a
/// bisect step stops that step (it is tested again later).
pub(super) fn preempt(
    core: &mut Core,
    tx: &Tx<'_>,
    effects: &mut Effects,
    waiting: &[TaskId],
) -> anyhow::Result<()> {
    if waiting.is_empty() || core.bisections.active.is_empty() {
        return Ok(());
    }
    let steps: Vec<TaskId> = core.bisections.active.values().filter_map(|b| b.current).collect();
    for step in steps {
        let Some(running) = core.tasks.running(step) else { continue };
        if running.aborting || running.orphaned_at.is_some() {
            continue;
        }
        let Some(runner) = running.task.runner.as_ref().and_then(|name| core.runners.get(name)) else {
            continue;
        };
        let wanted = waiting.iter().filter_map(|task_id| core.tasks.pending(*task_id)).any(|task| {
            task.kind != TaskKind::Bisect && task.labels.iter().all(|needed| runner.labels.contains(needed))
        });
        if wanted {
            tracing::info!(task_id = %step, runner = %runner.name, "bisect step preempted by ordinary work");
            life::abort(core, tx, effects, step, "bisection")?.ok();
        }
    }
    Ok(())
}

/// The repository's directory when its location is a local path.
fn local_path(repo: &RepoUrl) -> Option<PathBuf> {
    let text = repo.as_str();
    let path = PathBuf::from(text.strip_prefix("file://").unwrap_or(text));
    (path.is_absolute() && path.is_dir()).then_some(path)
}

/// `git rev-list --first-parent GOOD..BAD`, oldest first (arguments, never a
/// shell line; the repository is local, so nothing waits on a network).
fn first_parent(repo: &std::path::Path, good: &CommitId, bad: &CommitId) -> anyhow::Result<Vec<CommitId>> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-list", "--first-parent", &format!("--max-count={}", MAX_RANGE + 1)])
        .arg(format!("{good}..{bad}"))
        .arg("--")
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "git rev-list: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let mut commits: Vec<CommitId> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| CommitId::new(line.trim()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(commits.len() <= MAX_RANGE, "more than {MAX_RANGE} commits since the last pass");
    commits.reverse();
    Ok(commits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(len: usize, first_bad: usize, errors: &[usize]) -> (usize, u32) {
        let mut verdicts = BTreeMap::from([(len - 1, Verdict::Bad)]);
        let mut steps = 0;
        loop {
            match next(len, &verdicts) {
                Next::Found(idx) => return (idx, steps),
                Next::Test(idx) => {
                    steps += 1;
                    let verdict = if errors.contains(&idx) {
                        Verdict::Skip
                    } else if idx >= first_bad {
                        Verdict::Bad
                    } else {
                        Verdict::Good
                    };
                    assert!(verdicts.insert(idx, verdict).is_none(), "index {idx} tested twice");
                }
            }
        }
    }

    #[test]
    fn every_culprit_of_a_range_is_found_within_log2_steps() {
        for len in 1..=64usize {
            let limit = usize::BITS - (len.saturating_sub(1)).leading_zeros();
            for first_bad in 0..len {
                let (found, steps) = run(len, first_bad, &[]);
                assert_eq!(found, first_bad, "range of {len}");
                assert!(steps <= limit, "range of {len}, culprit {first_bad}: {steps} steps > {limit}");
            }
        }
    }

    #[test]
    fn commits_that_end_in_error_are_skipped() {
        // 32 commits, the 20th (index 19) breaks; its neighbours cannot be built.
        assert_eq!(run(32, 19, &[15, 16, 18]).0, 19);
        // The culprit itself cannot be built: the first commit known bad is
        // named, as git bisect does when only skipped commits remain.
        assert_eq!(run(32, 19, &[19]).0, 20);
    }
}
