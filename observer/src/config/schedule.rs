//! `[[schedule]]` tables resolved: each names an observed repository, a
//! branch and a cron expression, checked once at start-up so a typo stops the
//! observer with the schedule named instead of never firing.
//!
//! Expressions are parsed with croner: the five fields of crontab
//! (`minute hour day-of-month month day-of-week`), or six with seconds first;
//! the times are the observer's local time (what `crate::schedule` does
//! with them).

use std::path::Path;

use anyhow::{bail, Context};
use croner::parser::{CronParser, Seconds};
use croner::Cron;
use protocol::{Branch, Label, RepoUrl};

use super::file::FileSchedule;
use super::{is_url, Location, RepoConfig};

/// One schedule, validated.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Names the schedule in logs and keys its last fire time in the state file.
    pub key: String,
    /// The observed repository whose branch it submits.
    pub repo: RepoUrl,
    /// The branch whose tip it submits.
    pub branch: Branch,
    /// When.
    pub cron: Cron,
    /// Runner labels added to those the commit's `.baton.toml` requires.
    pub labels: Vec<Label>,
}

/// Parses a cron expression of five fields, or six with seconds first.
///
/// # Errors
/// An expression croner refuses, with its reason.
pub fn parse_cron(expression: &str) -> anyhow::Result<Cron> {
    let parser = CronParser::builder().seconds(Seconds::Optional).build();
    parser.parse(expression).map_err(|err| anyhow::anyhow!("{err}"))
}

/// Resolves the `[[schedule]]` tables against the observed repositories
/// (`base` is the config file's folder, for relative paths).
///
/// # Errors
/// A schedule whose repository is not observed, or whose branch, cron
/// expression or labels are invalid; two schedules with one key.
pub(super) fn resolve(
    entries: &[FileSchedule],
    base: &Path,
    repos: &[RepoConfig],
) -> anyhow::Result<Vec<Schedule>> {
    let mut schedules: Vec<Schedule> = Vec::new();
    for (idx, entry) in entries.iter().enumerate() {
        let what = match &entry.name {
            Some(name) => format!("schedule {name:?}"),
            None => format!("schedule #{} ({} {} {:?})", idx + 1, entry.repo, entry.branch, entry.cron),
        };
        let schedule = resolve_one(entry, base, repos).with_context(|| what.clone())?;
        if schedules.iter().any(|other| other.key == schedule.key) {
            bail!("{what}: another schedule has the same name; give each a distinct `name`");
        }
        schedules.push(schedule);
    }
    Ok(schedules)
}

fn resolve_one(entry: &FileSchedule, base: &Path, repos: &[RepoConfig]) -> anyhow::Result<Schedule> {
    let repo = find_repo(&entry.repo, base, repos)
        .with_context(|| format!("repo {:?} is not one of the observed repositories", entry.repo))?;
    let branch = Branch::new(entry.branch.clone()).map_err(anyhow::Error::msg).context("invalid branch")?;
    let cron =
        parse_cron(&entry.cron).with_context(|| format!("invalid cron expression {:?}", entry.cron))?;
    let labels = entry
        .labels
        .iter()
        .map(|label| Label::new(label.clone()).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("invalid label")?;
    let key = match &entry.name {
        Some(name) if name.trim().is_empty() => bail!("an empty name"),
        Some(name) => name.clone(),
        None => format!("{} {} {}", repo.id, branch, entry.cron),
    };
    Ok(Schedule { key, repo: repo.id.clone(), branch, cron, labels })
}

/// The observed repository `text` names: its location as submitted, its URL,
/// or a local path (relative to `base`) that resolves to it.
fn find_repo<'a>(text: &str, base: &Path, repos: &'a [RepoConfig]) -> Option<&'a RepoConfig> {
    let canonical = if is_url(text) { None } else { std::fs::canonicalize(base.join(text)).ok() };
    repos.iter().find(|repo| {
        repo.id.as_str() == text
            || match &repo.location {
                Location::Remote { url, .. } => url == text,
                Location::Local(path) => canonical.as_deref() == Some(path.as_path()),
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_are_accepted() {
        assert!(parse_cron("0 3 * * *").is_ok());
        assert!(parse_cron("*/5 * * * * *").is_ok());
        assert!(parse_cron("0 3 * * mon-fri").is_ok());
        for bad in ["", "0 3 * *", "61 * * * *", "nightly", "0 3 * * * * * *"] {
            assert!(parse_cron(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
