//! Test counts recognised in a test's console output.
//!
//! Pure functions over text; the caller reads the output's tail (at most
//! [`TAIL_BYTES`]) and passes it in. Recognised, one summary per run of a
//! framework, every run added up (a script may run several suites, and cargo
//! prints one `test result:` line per test binary):
//!
//! - Python unittest: `Ran N tests` followed by `OK`, `OK (skipped=2)` or
//!   `FAILED (failures=1, errors=2, skipped=1)`;
//! - pytest: `==== 3 passed, 1 failed, 2 skipped in 0.12s ====` (items in any
//!   order, with or without the `=` frame, errors counted as failed);
//! - cargo test: `test result: ok. 8 passed; 0 failed; 1 ignored; ...`;
//! - cargo nextest: `Summary [ 0.1s] 5 tests run: 5 passed, 1 skipped`;
//! - a plain `N passed, N failed` line, optionally `, N skipped`.
//!
//! It does not guess: output that matches none of these has no summary.

use protocol::message::Summary;

/// How much of the end of the output is scanned for a summary.
pub const TAIL_BYTES: u64 = 1024 * 1024;

/// The counts recognised in `output`, or `None` when nothing matches.
#[cfg(test)]
pub fn summarize(output: &str) -> Option<Summary> {
    summarize_lines(&plain_lines(output))
}

/// The lines of `output` without their ANSI escape sequences: what
/// [`summarize_lines`] and `outcomes::Collected::add_lines` read.
pub fn plain_lines(output: &str) -> Vec<String> {
    output.lines().map(strip_ansi).collect()
}

/// The counts recognised in `lines` (see [`plain_lines`]), or `None` when
/// nothing matches.
pub fn summarize_lines(lines: &[String]) -> Option<Summary> {
    let mut total: Option<Summary> = None;
    for (line_idx, line) in lines.iter().enumerate() {
        let line = line.trim();
        let found = unittest(line, &lines[line_idx + 1..])
            .or_else(|| pytest(line))
            .or_else(|| cargo_test(line))
            .or_else(|| nextest(line))
            .or_else(|| plain(line));
        if let Some(found) = found {
            let sum = total.get_or_insert_with(Summary::default);
            sum.passed = sum.passed.saturating_add(found.passed);
            sum.failed = sum.failed.saturating_add(found.failed);
            sum.skipped = sum.skipped.saturating_add(found.skipped);
        }
    }
    total
}

/// `Ran N tests in 0.01s`, with the verdict on one of the next few lines.
fn unittest(line: &str, following: &[String]) -> Option<Summary> {
    let rest = line.strip_prefix("Ran ")?;
    let (n_tests, rest) = rest.split_once(' ')?;
    let n_tests: u32 = n_tests.parse().ok()?;
    if !(rest.starts_with("tests") || rest.starts_with("test ") || rest == "test") {
        return None;
    }
    // unittest prints a blank line between `Ran` and the verdict; allow a
    // little slack for interleaved stderr.
    let verdict =
        following.iter().map(|line| line.trim()).filter(|line| !line.is_empty()).take(3).find(|line| {
            line.starts_with("OK") || line.starts_with("FAILED") || line.starts_with("NO TESTS RAN")
        })?;
    let details = verdict.split_once('(').map(|(_, inner)| inner.trim_end_matches(')')).unwrap_or("");
    let mut failed = 0u32;
    let mut skipped = 0u32;
    for item in details.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else { continue };
        let Ok(value) = value.trim().parse::<u32>() else { continue };
        match key.trim() {
            "failures" | "errors" => failed = failed.saturating_add(value),
            "skipped" => skipped = skipped.saturating_add(value),
            _ => {}
        }
    }
    let passed = n_tests.saturating_sub(failed).saturating_sub(skipped);
    Some(Summary { passed, failed, skipped })
}

/// pytest's final line: `N passed, M failed in 0.12s`, usually framed by
/// `=` signs (not with `-q`).
fn pytest(line: &str) -> Option<Summary> {
    let inner = line.trim_matches('=').trim();
    let (counts, timing) = inner.rsplit_once(" in ")?;
    let seconds = timing.split_whitespace().next()?.strip_suffix('s')?;
    seconds.parse::<f64>().ok()?;
    let mut summary = Summary::default();
    let mut recognised = false;
    for (count, word) in counted_items(counts, ',')? {
        match word {
            "passed" => summary.passed = summary.passed.saturating_add(count),
            "failed" | "error" | "errors" => summary.failed = summary.failed.saturating_add(count),
            "skipped" => summary.skipped = summary.skipped.saturating_add(count),
            "xfailed" | "xpassed" | "warning" | "warnings" | "deselected" | "rerun" => {}
            _ => return None,
        }
        recognised = true;
    }
    recognised.then_some(summary)
}

/// `test result: ok. 8 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s`.
fn cargo_test(line: &str) -> Option<Summary> {
    let rest = line.strip_prefix("test result: ")?;
    let (_, counts) = rest.split_once(". ")?;
    let mut summary = Summary::default();
    let mut recognised = false;
    for item in counts.split(';') {
        let mut words = item.split_whitespace();
        let (Some(count), Some(word)) = (words.next(), words.next()) else { continue };
        let Ok(count) = count.parse::<u32>() else { continue };
        match word {
            "passed" => summary.passed = count,
            "failed" => summary.failed = count,
            "ignored" => summary.skipped = count,
            _ => continue,
        }
        recognised = true;
    }
    recognised.then_some(summary)
}

/// `Summary [   0.003s] 5 tests run: 5 passed, 1 skipped` (cargo nextest).
fn nextest(line: &str) -> Option<Summary> {
    let rest = line.strip_prefix("Summary [")?;
    let (_, rest) = rest.split_once(']')?;
    let (_, counts) = rest.split_once(" run: ")?;
    let mut summary = Summary::default();
    let mut recognised = false;
    for item in counts.split(',') {
        let mut words = item.split_whitespace();
        let (Some(count), Some(word)) = (words.next(), words.next()) else { continue };
        let Ok(count) = count.parse::<u32>() else { continue };
        match word {
            "passed" => summary.passed = summary.passed.saturating_add(count),
            "failed" | "timed" => summary.failed = summary.failed.saturating_add(count),
            "skipped" => summary.skipped = summary.skipped.saturating_add(count),
            _ => continue,
        }
        recognised = true;
    }
    recognised.then_some(summary)
}

/// A line that is exactly `N passed, N failed` or `N passed, N failed, N skipped`.
fn plain(line: &str) -> Option<Summary> {
    let items = counted_items(line.trim_end_matches('.'), ',')?;
    match items.as_slice() {
        [(passed, "passed"), (failed, "failed")] => {
            Some(Summary { passed: *passed, failed: *failed, skipped: 0 })
        }
        [(passed, "passed"), (failed, "failed"), (skipped, "skipped")] => {
            Some(Summary { passed: *passed, failed: *failed, skipped: *skipped })
        }
        _ => None,
    }
}

/// Splits `3 passed, 1 failed` into `[(3, "passed"), (1, "failed")]`; `None`
/// unless every item is exactly a count and a word.
fn counted_items(text: &str, separator: char) -> Option<Vec<(u32, &str)>> {
    text.split(separator)
        .map(|item| {
            let mut words = item.split_whitespace();
            let count = words.next()?.parse::<u32>().ok()?;
            let word = words.next()?;
            words.next().is_none().then_some((count, word))
        })
        .collect()
}

/// Removes ANSI escape sequences (colours), which pytest and cargo add when
/// told to.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.clone().next() == Some('[') {
                chars.next();
                // A control sequence ends with a byte in @..=~.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(output: &str, expected: Option<(u32, u32, u32)>) {
        let got = summarize(output).map(|s| (s.passed, s.failed, s.skipped));
        assert_eq!(got, expected, "output:\n{output}");
    }

    #[test]
    fn unittest_ok() {
        check("test_a (t.T) ... ok\n\n----------------------------------------------------------------------\nRan 3 tests in 0.001s\n\nOK\n", Some((3, 0, 0)));
        check("Ran 1 test in 0.000s\n\nOK\n", Some((1, 0, 0)));
    }

    #[test]
    fn unittest_skipped_and_failed() {
        check("Ran 5 tests in 0.01s\n\nOK (skipped=2)\n", Some((3, 0, 2)));
        check("Ran 10 tests in 0.2s\n\nFAILED (failures=1, errors=2, skipped=1)\n", Some((6, 3, 1)));
        check("Ran 2 tests in 0.2s\n\nFAILED (errors=2)\n", Some((0, 2, 0)));
        check("Ran 0 tests in 0.000s\n\nNO TESTS RAN\n", Some((0, 0, 0)));
    }

    #[test]
    fn unittest_without_a_verdict_is_not_a_summary() {
        check("Ran 3 tests in 0.001s\n", None);
        check("Ran away from home\nOK\n", None);
    }

    #[test]
    fn pytest_lines_in_any_order() {
        check("=========== 3 passed, 1 failed, 2 skipped in 0.12s ===========\n", Some((3, 1, 2)));
        check("==== 1 failed, 2 passed, 1 warning in 0.50s ====\n", Some((2, 1, 0)));
        check("=== 2 errors, 4 passed in 1.20s (0:00:01) ===\n", Some((4, 2, 0)));
        check("== 1 passed, 1 error in 0.1s ==\n", Some((1, 1, 0)));
        check("3 passed in 0.02s\n", Some((3, 0, 0)));
        check(
            "\u{1b}[32m==== \u{1b}[1m5 passed\u{1b}[0m\u{1b}[32m in 0.03s ====\u{1b}[0m\n",
            Some((5, 0, 0)),
        );
    }

    #[test]
    fn cargo_test_lines_are_summed() {
        let output = "running 9 tests\ntest a ... ok\n\
            test result: ok. 8 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\n\
            running 3 tests\n\
            test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n\
            Doc-tests x\n\
            test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";
        check(output, Some((9, 2, 1)));
    }

    #[test]
    fn nextest_summary() {
        check("     Summary [   0.003s] 6 tests run: 5 passed, 1 skipped\n", Some((5, 0, 1)));
        check(
            "Summary [ 1.2s] 4 tests run: 2 passed (1 slow), 1 failed, 1 timed out, 3 skipped\n",
            Some((2, 2, 3)),
        );
    }

    #[test]
    fn plain_lines() {
        check("7 passed, 2 failed\n", Some((7, 2, 0)));
        check("  7 passed, 2 failed, 1 skipped\n", Some((7, 2, 1)));
        check("we passed, 2 failed\n", None);
        check("7 passed, 2 failed, 1 skipped, 4 others\n", None);
    }

    #[test]
    fn mixed_output_adds_up_every_run() {
        let output = "building...\nwarning: unused variable\n\
            test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            some: line: with colons\n\
            ......F\n\
            ======================================================================\n\
            FAIL: test_x (tests.test_a.T)\n\
            ----------------------------------------------------------------------\n\
            Ran 7 tests in 0.004s\n\n\
            FAILED (failures=1)\n\
            1 passed, 0 failed\n";
        check(output, Some((11, 1, 0)));
    }

    #[test]
    fn noise_is_not_a_summary() {
        check("", None);
        check("hello\nworld\n= in 0.1s =\nthings passed in 0.5s\n", None);
        check("test result: \n", None);
        check("test result: ok. nothing to see\n", None);
    }
}
