//! Human output: borderless aligned tables for lists (`tasks`, `runners`) and
//! `key: value` blocks for single things (`show`, `abort`, `status`).
//!
//! Every function returns the text instead of printing it, and takes `now_ms`
//! and a [`Style`] instead of looking at the clock or the terminal, so tests
//! pin the exact output. Colours, and the wrapping of long values in blocks
//! to the terminal's width, happen only when stdout is a terminal; a pipe
//! gets plain text. Table rows are never wrapped.

use std::io::IsTerminal;

use comfy_table::{presets, Attribute, Cell, CellAlignment, Color, ContentArrangement, Table};
use protocol::message::{PoolInfo, ReleaseInfo, RunnerInfo, RunnerState, StatusReport, Summary, TaskInfo};
use protocol::view::{count, duration, relative, rfc3339};
use protocol::TaskState;

/// Commits in tables are cut to this many characters; `show` prints them whole.
const SHORT_COMMIT: usize = 10;

/// Written where a value is absent (no runner yet, not finished).
const NONE: &str = "-";

/// How the output will be seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Style {
    /// Stdout is a terminal: wrap long values in blocks to its width.
    pub terminal: bool,
    /// Colour states and headers.
    pub colour: bool,
}

impl Style {
    /// What a pipe gets; tests pin their output with it.
    #[cfg(test)]
    pub const PLAIN: Style = Style { terminal: false, colour: false };

    /// Looks at stdout and `NO_COLOR` (<https://no-color.org>).
    pub fn detect() -> Style {
        let terminal = std::io::stdout().is_terminal();
        let no_colour = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Style { terminal, colour: terminal && !no_colour }
    }
}

/// `baton tasks`: one line per task, newest first as the dispatcher sent them.
pub fn tasks(tasks: &[TaskInfo], now_ms: i64, style: Style) -> String {
    if tasks.is_empty() {
        return "no tasks\n".into();
    }
    let mut table = table(
        style,
        &["ID", "STATE", "REPO", "BRANCH", "COMMIT", "RUNNER", "ATTEMPTS", "CREATED", "DURATION"],
    );
    for task in tasks {
        table.add_row(vec![
            Cell::new(task.id),
            state_cell(task.state, style),
            Cell::new(&task.repo),
            Cell::new(&task.branch),
            Cell::new(short_commit(task.commit.as_str())),
            Cell::new(task.runner.as_ref().map_or(NONE, |name| name.as_str())),
            Cell::new(task.attempts),
            Cell::new(relative(now_ms, task.created_at_ms)),
            Cell::new(task_duration(task, now_ms).map_or_else(|| NONE.to_string(), duration)),
        ]);
    }
    align_right(&mut table, &[0, 6]);
    finish(&table)
}

/// `baton releases`: one line per release record.
pub fn releases(releases: &[ReleaseInfo], now_ms: i64, style: Style) -> String {
    if releases.is_empty() {
        return "no releases\n".into();
    }
    let mut table =
        table(style, &["VERSION", "STATE", "REPO", "BRANCH", "COMMIT", "TAG", "KIND", "CREATED", "TRIGGER"]);
    for release in releases {
        let kind = match release.rollback_to {
            Some(version) => format!("rollback to r{version}"),
            None => release.kind.to_string(),
        };
        table.add_row(vec![
            Cell::new(format!("r{}", release.version)),
            Cell::new(release.state),
            Cell::new(&release.repo),
            Cell::new(&release.branch),
            Cell::new(short_commit(release.commit.as_str())),
            Cell::new(release.tag.as_ref().map_or(NONE, |tag| tag.as_str())),
            Cell::new(kind),
            Cell::new(relative(now_ms, release.created_at_ms)),
            Cell::new(&release.trigger),
        ]);
    }
    finish(&table)
}

/// `baton runners`: one line per runner; a POOL column when a runner
/// manager runs some of them.
pub fn runners(
    runners: &[RunnerInfo],
    pool_of: &std::collections::HashMap<protocol::Name, protocol::Name>,
    now_ms: i64,
    style: Style,
) -> String {
    if runners.is_empty() {
        return "no runners\n".into();
    }
    let mut headers = vec!["NAME", "STATE", "ADDRESS", "LABELS", "TASKS", "SLOTS", "LAST SEEN", "HOST"];
    let with_pools = !pool_of.is_empty();
    if with_pools {
        headers.push("POOL");
    }
    let mut table = table(style, &headers);
    for runner in runners {
        let tasks: Vec<String> = runner.tasks.iter().map(ToString::to_string).collect();
        let pool =
            with_pools.then(|| Cell::new(pool_of.get(&runner.name).map_or(NONE, |pool| pool.as_str())));
        table.add_row(
            vec![
                Cell::new(&runner.name),
                runner_state_cell(runner.state, style),
                Cell::new(&runner.address),
                Cell::new(or_none(join(&runner.labels))),
                Cell::new(or_none(tasks.join(","))),
                Cell::new(format!("{}/{}", runner.tasks.len(), runner.slots)),
                Cell::new(relative(now_ms, runner.last_seen_ms)),
                Cell::new(host(runner)),
            ]
            .into_iter()
            .chain(pool)
            .collect::<Vec<_>>(),
        );
    }
    align_right(&mut table, &[5]);
    finish(&table)
}

/// `baton show` and `baton abort`: every field, the commit in full.
pub fn task(task: &TaskInfo, now_ms: i64, style: Style) -> String {
    let optional_time = |ms: Option<i64>| ms.map_or_else(|| NONE.to_string(), |ms| when(ms, now_ms));
    let mut rows = vec![
        ("id", Cell::new(task.id)),
        ("state", state_cell(task.state, style)),
        ("repo", Cell::new(&task.repo)),
        ("branch", Cell::new(&task.branch)),
        ("commit", Cell::new(&task.commit)),
        ("trigger", Cell::new(&task.trigger)),
        ("labels", Cell::new(or_none(join(&task.labels)))),
        ("attempts", Cell::new(task.attempts)),
        ("runner", Cell::new(task.runner.as_ref().map_or(NONE, |name| name.as_str()))),
        ("exit code", Cell::new(task.exit_code.map_or_else(|| NONE.to_string(), |code| code.to_string()))),
        ("created", Cell::new(when(task.created_at_ms, now_ms))),
        ("started", Cell::new(optional_time(task.started_at_ms))),
        ("finished", Cell::new(optional_time(task.finished_at_ms))),
        ("duration", Cell::new(task_duration(task, now_ms).map_or_else(|| NONE.to_string(), duration))),
        ("summary", Cell::new(task.summary.as_ref().map_or_else(|| NONE.to_string(), summary))),
    ];
    if let Some(by) = &task.requested_by {
        rows.insert(6, ("requested by", Cell::new(by)));
    }
    if let Some(by) = &task.aborted_by {
        rows.push(("aborted by", Cell::new(by)));
    }
    if let Some(reason) = &task.reason {
        rows.push(("reason", Cell::new(reason)));
    }
    rows.extend(crate::culprit::task_rows(task).into_iter().map(|(key, value)| (key, Cell::new(value))));
    block(rows, style)
}

/// `baton status`; a `pools` line when runner managers report pools.
pub fn status(report: &StatusReport, pools: &[PoolInfo], style: Style) -> String {
    let tasks: Vec<String> =
        TaskState::ALL.into_iter().map(|state| format!("{} {state}", count(report, state))).collect();
    let pools: Vec<String> = pools
        .iter()
        .map(|pool| {
            format!(
                "{} {} of {}..{} ({} busy, {} pending)",
                pool.name, pool.size, pool.min, pool.max, pool.busy, pool.pending
            )
        })
        .collect();
    let pools = (!pools.is_empty()).then(|| ("pools", Cell::new(pools.join("; "))));
    // 0 until the dispatcher's first measurement, just after it starts.
    let size = (report.data_dir_bytes > 0).then(|| ("data dir", Cell::new(bytes(report.data_dir_bytes))));
    let full = report.data_dir_full.map(|free| {
        ("storage", Cell::new(format!("data dir full: {free} bytes free (reads only, submissions refused)")))
    });
    block(
        full.into_iter()
            .chain([
                ("version", Cell::new(&report.version)),
                ("uptime", Cell::new(duration(report.uptime_ms))),
                (
                    "runners",
                    Cell::new(format!(
                        "{} idle, {} busy, {} dead",
                        report.runners_idle, report.runners_busy, report.runners_dead
                    )),
                ),
                ("tasks", Cell::new(tasks.join(", "))),
            ])
            .chain(size)
            .chain(pools)
            .collect(),
        style,
    )
}

/// "3 passed, 1 failed, 0 skipped".
pub fn summary(summary: &Summary) -> String {
    format!("{} passed, {} failed, {} skipped", summary.passed, summary.failed, summary.skipped)
}

/// The first [`SHORT_COMMIT`] characters of a commit id.
pub fn short_commit(commit: &str) -> &str {
    // Commit ids are ASCII hex (checked while decoding), so any byte index is
    // a character boundary.
    &commit[..commit.len().min(SHORT_COMMIT)]
}

/// How long the task ran, or for a running one, has been running.
fn task_duration(task: &TaskInfo, now_ms: i64) -> Option<u64> {
    match (task.duration_ms, task.state, task.started_at_ms) {
        (Some(ms), _, _) => Some(ms),
        (None, TaskState::Running, Some(started)) => u64::try_from(now_ms.saturating_sub(started)).ok(),
        _ => None,
    }
}

/// An absolute time with its relative reading: "2026-05-01T12:00:00.000Z (3m ago)".
fn when(ms: i64, now_ms: i64) -> String {
    match rfc3339(ms) {
        Some(text) => format!("{text} ({})", relative(now_ms, ms)),
        None => format!("invalid time ({ms} ms since the epoch)"),
    }
}

/// "linux/x86_64, 8 cpus", or [`NONE`] when the runner told nothing.
fn host(runner: &RunnerInfo) -> String {
    let facts = &runner.host;
    if facts.os.is_empty() && facts.arch.is_empty() {
        return NONE.to_string();
    }
    let cpus = if facts.cpus == 1 { "1 cpu".to_string() } else { format!("{} cpus", facts.cpus) };
    format!("{}/{}, {cpus}", facts.os, facts.arch)
}

/// Comma-separated, no spaces, so a cell stays one word.
fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// [`NONE`] for an empty cell, which would otherwise look like a gap.
fn or_none(text: String) -> String {
    if text.is_empty() {
        NONE.to_string()
    } else {
        text
    }
}

/// A task state, coloured by how it ended.
fn state_cell(state: TaskState, style: Style) -> Cell {
    let colour = match state {
        TaskState::Pending => None,
        TaskState::Running => Some(Color::Cyan),
        TaskState::Passed => Some(Color::Green),
        TaskState::Failed => Some(Color::Red),
        TaskState::Error => Some(Color::Magenta),
        TaskState::Aborted => Some(Color::DarkGrey),
    };
    coloured(Cell::new(state), colour, style)
}

/// A runner state, coloured like the task states.
fn runner_state_cell(state: RunnerState, style: Style) -> Cell {
    let colour = match state {
        RunnerState::Idle => Color::Green,
        RunnerState::Busy => Color::Cyan,
        RunnerState::Dead => Color::Red,
    };
    coloured(Cell::new(state.as_str()), Some(colour), style)
}

/// Applies `colour` when the style allows colours.
fn coloured(cell: Cell, colour: Option<Color>, style: Style) -> Cell {
    match colour {
        Some(colour) if style.colour => cell.fg(colour),
        _ => cell,
    }
}

/// A borderless table with a header, one line per row whatever the width
/// (as `kubectl get` does): cells wrapped into several lines would break
/// commits and paths apart and defeat `grep`.
pub(crate) fn table(style: Style, header: &[&str]) -> Table {
    let mut table = bare_table(style, ContentArrangement::Disabled);
    let header: Vec<Cell> =
        header
            .iter()
            .map(|title| {
                if style.colour {
                    Cell::new(title).add_attribute(Attribute::Bold)
                } else {
                    Cell::new(title)
                }
            })
            .collect();
    table.set_header(header);
    no_left_margin(&mut table);
    table
}

/// A table without borders. Off a terminal comfy-table is told not to look
/// at the terminal at all, so the output depends on nothing but the rows.
fn bare_table(style: Style, arrangement: ContentArrangement) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    if style.terminal {
        table.set_content_arrangement(arrangement);
    } else {
        table.force_no_tty().set_content_arrangement(ContentArrangement::Disabled);
    }
    if style.colour {
        // Colour the words, not the padding around them.
        table.enforce_styling().style_text_only();
    }
    table
}

/// `key: value` lines, values aligned, as a two-column table so that long
/// values wrap under themselves on a terminal.
fn block(rows: Vec<(&str, Cell)>, style: Style) -> String {
    let mut table = bare_table(style, ContentArrangement::Dynamic);
    for (key, value) in rows {
        table.add_row(vec![Cell::new(format!("{key}:")), value]);
    }
    no_left_margin(&mut table);
    // One space after the colon: the key column's right padding is enough.
    if let Some(values) = table.column_mut(1) {
        values.set_padding((0, 0));
    }
    finish(&table)
}

/// Lines start at column 0 like any other command's output; without a
/// border, comfy-table's left padding would indent every line by one.
fn no_left_margin(table: &mut Table) {
    if let Some(first) = table.column_mut(0) {
        first.set_padding((0, 1));
    }
}

/// Right-aligns numeric columns.
fn align_right(table: &mut Table, columns: &[usize]) {
    for &index in columns {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// The table without trailing spaces, ending in a newline.
pub(crate) fn finish(table: &Table) -> String {
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// Bytes for people: `812 B`, `3.4 MiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use protocol::message::HostFacts;
    use protocol::view::fixtures::{self, NOON_MS};
    use protocol::{Name, TaskId};

    use super::*;

    #[test]
    fn tasks_table() {
        let running = TaskInfo {
            id: TaskId::new(12).unwrap(),
            state: TaskState::Running,
            attempts: 1,
            runner: Some(Name::new("builder-2").unwrap()),
            started_at_ms: Some(NOON_MS + 60_000),
            ..fixtures::pending_task()
        };
        let now = NOON_MS + 180_000;
        let text = tasks(&[running, fixtures::task_info(), fixtures::pending_task()], now, Style::PLAIN);
        let expected = "\
ID  STATE    REPO          BRANCH  COMMIT      RUNNER     ATTEMPTS  CREATED  DURATION
12  running  /srv/app.git  main    0123456789  builder-2         1  3m ago   2m
 7  failed   /srv/app.git  main    0123456789  r1                2  3m ago   4.2s
 8  pending  /srv/app.git  main    0123456789  -                 0  3m ago   -
";
        assert_eq!(text, expected, "\n{text}");
        assert_eq!(tasks(&[], now, Style::PLAIN), "no tasks\n");
    }

    #[test]
    fn runners_table() {
        let idle = RunnerInfo {
            name: Name::new("r2").unwrap(),
            address: "[::1]:5000".into(),
            labels: vec![],
            state: RunnerState::Idle,
            slots: 1,
            tasks: vec![],
            last_seen_ms: NOON_MS - 2_000,
            host: HostFacts { os: "macos".into(), arch: "aarch64".into(), cpus: 1 },
        };
        let dead = RunnerInfo { host: HostFacts::default(), ..idle.clone() };
        let dead = RunnerInfo { name: Name::new("r3").unwrap(), state: RunnerState::Dead, ..dead };
        let text =
            runners(&[fixtures::runner_info(), idle, dead], &Default::default(), NOON_MS, Style::PLAIN);
        let expected = "\
NAME  STATE  ADDRESS         LABELS     TASKS  SLOTS  LAST SEEN  HOST
r1    busy   10.0.0.5:41234  linux,x86  7,9      2/2  0s ago     linux/x86_64, 8 cpus
r2    idle   [::1]:5000      -          -        0/1  2s ago     macos/aarch64, 1 cpu
r3    dead   [::1]:5000      -          -        0/1  2s ago     -
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn show_block() {
        let task_info = TaskInfo { reason: Some("timeout after 10m".into()), ..fixtures::task_info() };
        let text = task(&task_info, NOON_MS + 65_000, Style::PLAIN);
        let expected = format!(
            "\
id:        7
state:     failed
repo:      /srv/app.git
branch:    main
commit:    {}
trigger:   observer
labels:    linux
attempts:  2
runner:    r1
exit code: 1
created:   2026-05-01T12:00:00.000Z (1m ago)
started:   2026-05-01T12:00:01.500Z (1m ago)
finished:  2026-05-01T12:00:05.750Z (59s ago)
duration:  4.2s
summary:   3 passed, 1 failed, 0 skipped
reason:    timeout after 10m
",
            fixtures::COMMIT
        );
        assert_eq!(text, expected, "\n{text}");
        let pending = task(&fixtures::pending_task(), NOON_MS, Style::PLAIN);
        assert!(pending.contains("\nstarted:   -\n"), "{pending}");
        assert!(pending.contains("\nsummary:   -\n"), "{pending}");
        assert!(!pending.contains("reason"), "{pending}");
    }

    #[test]
    fn status_block() {
        let text = status(&fixtures::status_report(), &[], Style::PLAIN);
        let expected = "\
version: 0.1.0
uptime:  1h 2m 3s
runners: 2 idle, 1 busy, 0 dead
tasks:   3 pending, 1 running, 40 passed, 2 failed, 0 error, 0 aborted
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn colours_only_when_asked() {
        let coloured = Style { terminal: false, colour: true };
        assert!(tasks(&[fixtures::task_info()], NOON_MS, coloured).contains("\x1b["));
        assert!(!tasks(&[fixtures::task_info()], NOON_MS, Style::PLAIN).contains('\x1b'));
    }

    #[test]
    fn commits_are_shortened_to_ten_characters() {
        assert_eq!(short_commit(fixtures::COMMIT), "0123456789");
        assert_eq!(short_commit("abcd"), "abcd");
    }
}
