//! JUnit XML reports the test left in its checkout: `TEST-*.xml` (Ant,
//! Maven Surefire, Gradle) and `junit*.xml` (pytest `--junitxml`, jest,
//! go-junit-report), found by a bounded walk of the tree.
//!
//! quick-xml reads them as a stream; only `testcase` elements and their
//! `failure`, `error` and `skipped` children matter. A file that is not XML
//! stops its own reading where it breaks, with what was read so far kept.

use std::path::{Path, PathBuf};

use protocol::message::TestStatus;
use quick_xml::events::{BytesStart, Event};

use super::Collected;

/// Directories below the checkout searched for reports.
const MAX_DEPTH: usize = 6;

/// Directory entries looked at in all, so a huge tree (`node_modules`) costs
/// a bounded time.
const MAX_ENTRIES: usize = 20_000;

/// Report files read.
const MAX_FILES: usize = 64;

/// Largest report file read.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Whether `name` is a report's file name.
fn is_report(name: &str) -> bool {
    name.ends_with(".xml") && (name.starts_with("TEST-") || name.starts_with("junit"))
}

/// The report files under `tree`, in path order (symbolic links are not
/// followed, `.git` is not entered).
pub fn find_reports(tree: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut entries_seen = 0usize;
    let mut dirs = vec![(tree.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            entries_seen += 1;
            if entries_seen > MAX_ENTRIES {
                found.sort();
                return found;
            }
            let Ok(kind) = entry.file_type() else { continue };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() && depth < MAX_DEPTH && name != ".git" {
                dirs.push((entry.path(), depth + 1));
            } else if kind.is_file() && is_report(&name) && found.len() < MAX_FILES {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// Reads every report under `tree` into `collected`.
pub fn collect(tree: &Path, collected: &mut Collected) {
    for path in find_reports(tree) {
        match crate::bounded::read_at_most(&path, MAX_FILE_BYTES) {
            Ok(Some(xml)) => parse(&xml, collected),
            Ok(None) => {
                tracing::warn!(path = %path.display(), max = MAX_FILE_BYTES, "junit report skipped: too large")
            }
            Err(err) => tracing::warn!(path = %path.display(), error = %err, "cannot read a junit report"),
        }
    }
}

/// The test cases of one report.
pub fn parse(xml: &[u8], collected: &mut Collected) {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut buf = Vec::new();
    // The test case being read (an open `<testcase>`), and its outcome.
    let mut open: Option<(String, TestStatus)> = None;
    loop {
        let event = match reader.read_event_into(&mut buf) {
            Ok(event) => event,
            Err(err) => {
                tracing::warn!(error = %err, "junit report ends in invalid xml");
                break;
            }
        };
        match event {
            Event::Start(element) if element.local_name().as_ref() == b"testcase" => {
                open = Some((case_name(&element), TestStatus::Passed));
            }
            Event::Empty(element) if element.local_name().as_ref() == b"testcase" => {
                collected.add(&case_name(&element), TestStatus::Passed);
            }
            Event::Start(element) | Event::Empty(element) => {
                if let Some((_, status)) = open.as_mut() {
                    match element.local_name().as_ref() {
                        b"failure" | b"error" => *status = TestStatus::Failed,
                        b"skipped" if *status != TestStatus::Failed => *status = TestStatus::Skipped,
                        _ => {}
                    }
                }
            }
            Event::End(element) if element.local_name().as_ref() == b"testcase" => {
                if let Some((name, status)) = open.take() {
                    collected.add(&name, status);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
}

/// `classname.name`, or `name` alone when there is no class name.
fn case_name(element: &BytesStart<'_>) -> String {
    let mut class = String::new();
    let mut name = String::new();
    for attribute in element.attributes().flatten() {
        let Ok(value) = attribute.unescape_value() else { continue };
        match attribute.key.local_name().as_ref() {
            b"classname" => class = value.into_owned(),
            b"name" => name = value.into_owned(),
            _ => {}
        }
    }
    match (class.is_empty(), name.is_empty()) {
        (_, true) => String::new(),
        (true, false) => name,
        (false, false) => format!("{class}.{name}"),
    }
}
