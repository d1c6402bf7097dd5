//! Remote repositories: fetching one into its bare mirror in the cache, so
//! that it can be read like a local repository.
//!
//! The mirror uses the explicit refspec `+refs/heads/*:refs/heads/*` (a bare
//! mirror has no configured one) and no tags. A fetch does not prune, so
//! branches the remote deleted are deleted here by hand, and the mirror's HEAD
//! follows the remote's so "the HEAD branch" means the same on both sides.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use gix::refs::transaction::{Change, LogChange, PreviousValue, RefEdit, RefLog};
use gix::remote::Direction;

use super::branches;

/// The refspec of a mirror: every branch of the remote, as the same branch.
const MIRROR_REFSPEC: &str = "+refs/heads/*:refs/heads/*";

/// Fetches every branch of `url` into the bare mirror `cache` (creating it),
/// prunes branches the remote no longer has and points the mirror's HEAD
/// where the remote's points.
pub(super) fn fetch(url: &str, cache: &Path, interrupt: &AtomicBool) -> anyhow::Result<gix::Repository> {
    let repo = match gix::open(cache) {
        Ok(repo) => repo,
        Err(_) if !cache.exists() => {
            std::fs::create_dir_all(cache).with_context(|| format!("creating cache {}", cache.display()))?;
            gix::init_bare(cache).with_context(|| format!("creating cache {}", cache.display()))?
        }
        Err(err) => {
            return Err(err)
                .with_context(|| format!("opening cache {} (remove it to start afresh)", cache.display()))
        }
    };
    let remote = repo
        .remote_at(url)
        .with_context(|| format!("parsing url {url}"))?
        .with_fetch_tags(gix::remote::fetch::Tags::None)
        .with_refspecs([MIRROR_REFSPEC], Direction::Fetch)
        .context("setting the fetch refspec")?;
    let connection = remote.connect(Direction::Fetch).with_context(|| format!("connecting to {url}"))?;
    // HEAD as an implicit refspec makes the remote list it (and its target)
    // despite the prefix filter, so the mirror knows the default branch.
    let head = gix::refspec::parse("HEAD".into(), gix::refspec::parse::Operation::Fetch)
        .context("parsing the HEAD refspec")?
        .to_owned();
    let options = gix::remote::ref_map::Options { extra_refspecs: vec![head], ..Default::default() };
    let prepare = connection
        .prepare_fetch(gix::progress::Discard, options)
        .with_context(|| format!("listing refs of {url}"))?;
    let remote_refs = prepare.ref_map().remote_refs.clone();
    let mut remote_head = None;
    let mut remote_branches = HashSet::new();
    for remote_ref in &remote_refs {
        use gix::protocol::handshake::Ref;
        match remote_ref {
            Ref::Symbolic { full_ref_name, target, .. } | Ref::Unborn { full_ref_name, target }
                if full_ref_name == "HEAD" && target.starts_with(b"refs/heads/") =>
            {
                remote_head = Some(target.to_string());
            }
            _ => {
                let name = remote_ref.unpack().0.to_string();
                if name.starts_with("refs/heads/") {
                    remote_branches.insert(name);
                }
            }
        }
    }
    if remote_branches.is_empty() {
        // An empty remote: there is nothing to receive (and gix would call
        // the fetch a refspec mismatch).
        drop(prepare);
    } else {
        prepare.receive(gix::progress::Discard, interrupt).with_context(|| format!("fetching {url}"))?;
    }
    mirror_refs(&repo, &remote_branches, remote_head.as_deref()).context("updating the cache's refs")?;
    Ok(repo)
}

/// Deletes mirrored branches the remote no longer has and moves HEAD.
fn mirror_refs(repo: &gix::Repository, remote: &HashSet<String>, head: Option<&str>) -> anyhow::Result<()> {
    let log = || LogChange {
        mode: RefLog::AndReference,
        force_create_reflog: false,
        message: "baton-observer".into(),
    };
    let mut edits = Vec::new();
    for branch in branches(repo)?.into_keys() {
        let name = format!("refs/heads/{branch}");
        if !remote.contains(&name) {
            let name = name.try_into().context("naming a stale branch")?;
            edits.push(RefEdit {
                change: Change::Delete { expected: PreviousValue::Any, log: RefLog::AndReference },
                name,
                deref: false,
            });
        }
    }
    if let Some(head) = head {
        let current = repo.head_name().context("reading the cache's HEAD")?;
        if current.as_ref().map(|name| name.as_bstr().to_string()).as_deref() != Some(head) {
            edits.push(RefEdit {
                change: Change::Update {
                    log: log(),
                    expected: PreviousValue::Any,
                    new: gix::refs::Target::Symbolic(head.try_into().context("naming the remote's HEAD")?),
                },
                name: "HEAD".try_into().context("naming HEAD")?,
                deref: false,
            });
        }
    }
    if !edits.is_empty() {
        repo.edit_references_as(edits, None)?;
    }
    Ok(())
}
