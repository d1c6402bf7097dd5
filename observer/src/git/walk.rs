//! Which commits are new on a branch, and in what order they are submitted.
//!
//! The set is `git rev-list TIP ^SEEN...`, walked with gix (newest first by
//! commit time, so a limit keeps the newest); the order is then made
//! topological by hand, parents before children, side branches of a merge
//! kept together, which is what `git rev-list --topo-order --reverse` prints.
//! Doing the ordering here keeps the walk proportional to the new commits:
//! gix's topological walker computes in-degrees over the whole history when
//! the repository has no commit-graph file.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use gix::traverse::commit::simple::CommitTimeOrder;
use gix::ObjectId;

use super::{commit_id, NewCommit};

/// Commits reachable from `tip` and not from `hidden`: the newest `limit` by
/// commit time, returned oldest first in topological order, and how many
/// there were in all (counted only when `count_all`).
pub(super) fn new_commits(
    repo: &gix::Repository,
    tip: ObjectId,
    hidden: &[ObjectId],
    limit: usize,
    count_all: bool,
) -> anyhow::Result<(Vec<NewCommit>, usize)> {
    if limit == 0 && !count_all {
        return Ok((Vec::new(), 0));
    }
    let walk = repo
        .rev_walk([tip])
        .with_hidden(hidden.iter().copied())
        .sorting(gix::revision::walk::Sorting::ByCommitTime(CommitTimeOrder::NewestFirst))
        .all()
        .context("starting the commit walk")?;
    let mut kept: Vec<(ObjectId, Vec<ObjectId>)> = Vec::new();
    let mut total = 0;
    for info in walk {
        let info = info.context("walking commits")?;
        total += 1;
        if kept.len() < limit {
            kept.push((info.id, info.parent_ids.iter().copied().collect()));
        } else if !count_all {
            break;
        }
    }
    let ordered = topological(tip, kept);
    let new = ordered
        .into_iter()
        .map(|(id, parents)| NewCommit {
            commit: commit_id(id),
            parents: parents.into_iter().map(commit_id).collect(),
            labels: required_labels(repo, id),
        })
        .collect();
    Ok((new, total))
}

/// The runner labels the commit's `.baton.toml` asks for (`[test] labels`),
/// so the dispatcher sends it only to runners that have them. A file that
/// cannot be read asks for none here; the runner reports it as invalid.
pub(super) fn required_labels(repo: &gix::Repository, id: ObjectId) -> Vec<protocol::Label> {
    #[derive(serde::Deserialize)]
    struct RepoConfig {
        test: Option<TestSection>,
    }
    #[derive(serde::Deserialize)]
    struct TestSection {
        labels: Option<Vec<String>>,
    }
    let text = (|| -> Option<String> {
        let tree = repo.find_commit(id).ok()?.tree().ok()?;
        let entry = tree.lookup_entry_by_path(".baton.toml").ok()??;
        let object = entry.object().ok()?;
        // A repository config is small; a huge blob is not one.
        (object.data.len() <= 64 * 1024).then(|| String::from_utf8(object.data.clone()).ok())?
    })();
    let Some(config) = text.and_then(|text| toml::from_str::<RepoConfig>(&text).ok()) else {
        return Vec::new();
    };
    let labels = config.test.and_then(|test| test.labels).unwrap_or_default();
    labels.into_iter().filter_map(|label| protocol::Label::new(label).ok()).collect()
}

/// Orders `commits` (newest first by time) parents before children, keeping
/// each side branch of a merge together as `git rev-list --topo-order
/// --reverse` does: a depth-first walk from the tip that visits first parents
/// first and emits a commit after its parents.
fn topological(tip: ObjectId, commits: Vec<(ObjectId, Vec<ObjectId>)>) -> Vec<(ObjectId, Vec<ObjectId>)> {
    let in_set: HashMap<ObjectId, usize> =
        commits.iter().enumerate().map(|(idx, (id, _))| (*id, idx)).collect();
    let mut emitted: HashSet<ObjectId> = HashSet::with_capacity(commits.len());
    let mut order = Vec::with_capacity(commits.len());
    // Roots: the tip, then, oldest first, any kept commit the tip reaches
    // only through left-out ones (possible when the limit cut by commit time
    // and clocks were skewed).
    let roots = std::iter::once(tip).chain(commits.iter().rev().map(|(id, _)| *id));
    for root in roots {
        if !in_set.contains_key(&root) || emitted.contains(&root) {
            continue;
        }
        // Each frame: a commit and how many of its parents were visited.
        let mut stack: Vec<(ObjectId, usize)> = vec![(root, 0)];
        // Guards against a cycle, which only a corrupt repository could hold.
        let mut on_stack: HashSet<ObjectId> = HashSet::from([root]);
        while let Some((id, next_parent)) = stack.last_mut() {
            let parents = &commits[in_set[id]].1;
            match parents.get(*next_parent) {
                Some(parent) => {
                    *next_parent += 1;
                    let parent = *parent;
                    if in_set.contains_key(&parent) && !emitted.contains(&parent) && on_stack.insert(parent) {
                        stack.push((parent, 0));
                    }
                }
                None => {
                    let id = *id;
                    stack.pop();
                    emitted.insert(id);
                    order.push(id);
                }
            }
        }
    }
    let mut by_id: HashMap<ObjectId, Vec<ObjectId>> = commits.into_iter().collect();
    order
        .into_iter()
        .map(|id| {
            // Every emitted id came from `commits`.
            let parents = by_id.remove(&id).unwrap_or_default();
            (id, parents)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[byte; 20])
    }

    #[test]
    fn parents_come_first_and_side_branches_stay_together() {
        // 1 <- 2 <- 4(merge of 2 and 3) <- 5, and 1 <- 3; given newest first.
        let commits = vec![
            (id(5), vec![id(4)]),
            (id(4), vec![id(2), id(3)]),
            (id(3), vec![id(1)]),
            (id(2), vec![id(1)]),
            (id(1), vec![id(0)]),
        ];
        let order: Vec<ObjectId> = topological(id(5), commits).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, [id(1), id(2), id(3), id(4), id(5)]);
    }

    #[test]
    fn commits_cut_off_from_the_tip_are_still_emitted() {
        // The tip's parent was left out by the limit.
        let commits = vec![(id(9), vec![id(8)]), (id(7), vec![id(6)])];
        let order: Vec<ObjectId> = topological(id(9), commits).into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, [id(9), id(7)]);
    }
}
