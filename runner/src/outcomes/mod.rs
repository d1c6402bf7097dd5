//! Each test's name and outcome, from a test's console output and from the
//! JUnit XML files it left in its checkout.
//!
//! Recognised in the output (the same tail `summary` reads), one line per
//! test:
//!
//! - Python unittest `-v`: `test_add (pkg.mod.Class.test_add) ... ok`
//!   (`FAIL`, `ERROR`, `skipped 'why'`, `expected failure`, `unexpected success`);
//! - pytest `-v`: `tests/test_a.py::Class::test_x PASSED   [ 50%]`, and the
//!   `-rA` short summary: `FAILED tests/test_a.py::test_y - AssertionError`;
//! - cargo test: `test tests::adds ... ok` (`FAILED`, `ignored`);
//! - cargo nextest: `PASS [   0.043s] (1/2) crate tests::adds` (`FAIL`,
//!   `TIMEOUT`, `SIGSEGV`, ... count as failed).
//!
//! JUnit XML (`junit`): `<testcase classname name>` with a `failure` or
//! `error` child (failed), a `skipped` child (skipped), or none (passed).
//!
//! A test named twice in one run (nextest repeats failures at its end, and
//! prints the inner cargo test lines too) keeps its worst outcome. The list
//! sent to the dispatcher is bounded by [`bound`]: failures first and always
//! (up to [`MAX_FAILURES`]), then the others up to the runner's
//! `--max-test-names`. Names are cut at [`MAX_NAME`] bytes.
//! It does not guess: a line in none of these shapes names no test.

use std::collections::BTreeMap;

use protocol::message::{TestCase, TestStatus};

pub mod junit;

/// Longest test name kept, in bytes.
pub const MAX_NAME: usize = 512;

/// Failures are always reported, up to this many (a wire frame must stay
/// far below its 8 MiB limit: 10,000 names of 512 bytes are 5 MiB).
pub const MAX_FAILURES: usize = 10_000;

/// The default of `--max-test-names`.
pub const DEFAULT_MAX_NAMES: usize = 1_000;

/// Tests seen so far in one attempt, by name.
#[derive(Debug, Default)]
pub struct Collected {
    by_name: BTreeMap<String, TestStatus>,
}

impl Collected {
    /// Notes one test; a name seen before keeps its worst outcome.
    pub fn add(&mut self, name: &str, status: TestStatus) {
        let name = cut(name.trim());
        if name.is_empty() {
            return;
        }
        // Bounded input gives a bounded map, but a hostile output of a
        // million distinct names would still cost memory: stop collecting
        // passes far past anything reported.
        if self.by_name.len() >= 4 * MAX_FAILURES && status != TestStatus::Failed {
            return;
        }
        let slot = self.by_name.entry(name).or_insert(status);
        if rank(status) > rank(*slot) {
            *slot = status;
        }
    }

    /// Every test recognised in `output`.
    #[cfg(test)]
    pub fn add_output(&mut self, output: &str) {
        self.add_lines(&crate::summary::plain_lines(output));
    }

    /// Every test recognised in `lines` (the output without its ANSI escape
    /// sequences, `summary::plain_lines`).
    pub fn add_lines(&mut self, lines: &[String]) {
        for line in lines {
            if let Some((name, status)) = recognise(line) {
                self.add(&name, status);
            }
        }
    }

    /// How many distinct tests were seen.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The list to report: see [`bound`].
    pub fn into_reported(self, max_names: usize) -> Vec<TestCase> {
        bound(self.by_name.into_iter().map(|(name, status)| TestCase { name, status }).collect(), max_names)
    }
}

/// Failures first (all of them, up to [`MAX_FAILURES`]), then the other
/// tests in name order until `max_names` names in all.
pub fn bound(tests: Vec<TestCase>, max_names: usize) -> Vec<TestCase> {
    let (mut failed, others): (Vec<_>, Vec<_>) =
        tests.into_iter().partition(|test| test.status == TestStatus::Failed);
    failed.truncate(MAX_FAILURES);
    let room = max_names.saturating_sub(failed.len());
    failed.extend(others.into_iter().take(room));
    failed
}

fn rank(status: TestStatus) -> u8 {
    match status {
        TestStatus::Skipped => 0,
        TestStatus::Passed => 1,
        TestStatus::Failed => 2,
    }
}

/// At most [`MAX_NAME`] bytes, cut on a character boundary, without
/// control characters.
fn cut(name: &str) -> String {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn recognise(line: &str) -> Option<(String, TestStatus)> {
    let trimmed = line.trim();
    // cargo test's lines start the line; indented ones are cargo test output
    // that nextest captured and replays, already named by its own line.
    unittest(trimmed)
        .or_else(|| cargo_test(line.trim_end()))
        .or_else(|| pytest_verbose(trimmed))
        .or_else(|| pytest_short(trimmed))
        .or_else(|| nextest(trimmed))
}

/// `test_add (pkg.Class.test_add) ... ok`; before Python 3.11 the
/// parentheses hold the class only: `test_add (pkg.Class) ... ok`.
fn unittest(line: &str) -> Option<(String, TestStatus)> {
    let (head, verdict) = line.rsplit_once(" ... ")?;
    let (method, rest) = head.split_once(" (")?;
    let qualified = rest.strip_suffix(')')?;
    if method.contains(char::is_whitespace) || qualified.contains(char::is_whitespace) || qualified.is_empty()
    {
        return None;
    }
    let status = match verdict.trim() {
        "ok" | "expected failure" => TestStatus::Passed,
        "FAIL" | "ERROR" | "unexpected success" => TestStatus::Failed,
        skipped if skipped.starts_with("skipped") => TestStatus::Skipped,
        _ => return None,
    };
    let name = if qualified.ends_with(&format!(".{method}")) {
        qualified.to_string()
    } else {
        format!("{qualified}.{method}")
    };
    Some((name, status))
}

/// `test tests::adds ... ok`, `... FAILED`, `... ignored` (or
/// `ignored, reason`).
fn cargo_test(line: &str) -> Option<(String, TestStatus)> {
    let rest = line.strip_prefix("test ")?;
    let (name, verdict) = rest.rsplit_once(" ... ")?;
    if name.contains(char::is_whitespace) {
        return None;
    }
    let status = match verdict.trim() {
        "ok" => TestStatus::Passed,
        "FAILED" => TestStatus::Failed,
        ignored if ignored.starts_with("ignored") => TestStatus::Skipped,
        _ => return None,
    };
    Some((name.to_string(), status))
}

fn pytest_status(word: &str) -> Option<TestStatus> {
    match word {
        "PASSED" | "XFAIL" | "XPASS" => Some(TestStatus::Passed),
        "FAILED" | "ERROR" => Some(TestStatus::Failed),
        "SKIPPED" => Some(TestStatus::Skipped),
        _ => None,
    }
}

/// `tests/test_a.py::Class::test_x PASSED   [ 50%]`.
fn pytest_verbose(line: &str) -> Option<(String, TestStatus)> {
    let mut words = line.split_whitespace();
    let name = words.next()?;
    let status = pytest_status(words.next()?)?;
    name.contains("::").then(|| (name.to_string(), status))
}

/// `FAILED tests/test_a.py::test_y - AssertionError: 2 != 3` (`-rA`).
fn pytest_short(line: &str) -> Option<(String, TestStatus)> {
    let mut words = line.split_whitespace();
    let status = pytest_status(words.next()?)?;
    let name = words.next()?;
    name.contains("::").then(|| (name.to_string(), status))
}

/// `PASS [   0.043s] (1/2) crate tests::adds`; the `(n/m)` counter is new
/// in nextest 0.9.100.
fn nextest(line: &str) -> Option<(String, TestStatus)> {
    let (word, rest) = line.split_once(' ')?;
    let status = match word {
        "PASS" | "LEAK" => TestStatus::Passed,
        "FAIL" | "TIMEOUT" | "ABORT" | "LEAK-FAIL" => TestStatus::Failed,
        "SKIP" => TestStatus::Skipped,
        signal if signal.starts_with("SIG") && signal.len() > 3 => TestStatus::Failed,
        _ => return None,
    };
    let rest = rest.trim_start().strip_prefix('[')?;
    let (timing, rest) = rest.split_once(']')?;
    timing.trim().strip_suffix('s')?.parse::<f64>().ok()?;
    let mut rest = rest.trim_start();
    if let Some(counted) = rest.strip_prefix('(') {
        rest = counted.split_once(')')?.1.trim_start();
    }
    (!rest.is_empty()).then(|| (rest.to_string(), status))
}

#[cfg(test)]
mod tests;
