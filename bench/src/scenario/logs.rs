//! `logs`: zstd on real test output, as the dispatcher stores a finished
//! task's log (issue 16, item 4). No daemon runs: the scenario calls the
//! dispatcher's own `logs::compress` (write `.zst.tmp`, sync, rename,
//! remove the plain file) and `logs::open` (the reader every log view uses).
//!
//! The output is generated here, never committed: `python3 -m unittest -v`
//! over a generated suite of [`TESTS`] tests that print a line each, with
//! about 2 % failing (tracebacks) and 1 % skipped, stdout and stderr in one
//! file as a runner captures them; the run is repeated until the log holds
//! at least [`MIN_BYTES`].
//!
//! Figures: `logs_compression_ratio` (plain bytes over compressed bytes),
//! `logs_compress_speed` (plain MB/s through `compress`, its fsync
//! included) and `logs_decompress_speed` (plain MB/s read back through
//! `open`). One sample per repetition; the page cache is warm.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context;
use dispatcher::files::DataDir;
use protocol::TaskId;

use super::Ctx;
use crate::report::Figure;

/// Tests in the generated suite.
const TESTS: usize = 20_000;
/// The log is at least this long (a long test run's output).
const MIN_BYTES: usize = 16 * 1024 * 1024;

/// Runs the scenario.
///
/// # Errors
/// When python3 is missing or the files cannot be written.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let reps = ctx.reps_or(5);
    let output = test_output(ctx)?;
    let files = DataDir::create(&ctx.dir.join("data"))?;
    let task_id = TaskId::new(1).map_err(anyhow::Error::msg)?;
    let plain = output.len() as f64;
    let (mut ratios, mut compress, mut decompress) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let _ = std::fs::remove_file(dispatcher::logs::compressed_path(&files, task_id));
        std::fs::write(files.log_path(task_id), &output).context("writing the plain log")?;
        let started = Instant::now();
        let (_, compressed) =
            dispatcher::logs::compress(&files, task_id)?.context("the plain log was not found")?;
        compress.push(plain / 1e6 / started.elapsed().as_secs_f64());
        ratios.push(plain / compressed as f64);

        let started = Instant::now();
        let mut reader =
            dispatcher::logs::open(&files, task_id)?.context("the compressed log was not found")?;
        let mut back = Vec::with_capacity(output.len());
        reader.read_to_end(&mut back)?;
        decompress.push(plain / 1e6 / started.elapsed().as_secs_f64());
        anyhow::ensure!(back == output, "the log did not read back byte for byte");
    }
    println!("# logs: {:.1} MB of `python3 -m unittest -v` output", plain / 1e6);
    Ok(vec![
        Figure::new("logs_compression_ratio", "x", ratios),
        Figure::new("logs_compress_speed", "MB/s", compress),
        Figure::new("logs_decompress_speed", "MB/s", decompress),
    ])
}

/// Runs the generated suite until its output is long enough.
fn test_output(ctx: &Ctx) -> anyhow::Result<Vec<u8>> {
    let suite = ctx.dir.join("suite");
    std::fs::create_dir_all(&suite)?;
    std::fs::write(suite.join("test_generated.py"), suite_source())?;
    let mut output = Vec::new();
    let mut run = 0;
    while output.len() < MIN_BYTES {
        let log = ctx.dir.join(format!("run{run}.log"));
        let file = std::fs::File::create(&log)?;
        let status = Command::new("python3")
            .args(["-m", "unittest", "-v", "test_generated"])
            .current_dir(&suite)
            .env("BATON_BENCH_RUN", run.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .status()
            .context("running python3 -m unittest (python3 is needed)")?;
        // The suite fails on purpose; only a crash is an error.
        anyhow::ensure!(status.code().is_some(), "the generated suite was killed: {status}");
        output.extend(std::fs::read(&log)?);
        run += 1;
    }
    Ok(output)
}

/// A unittest module of [`TESTS`] tests in 40 classes: each prints what it
/// checks; every 50th fails with a message, every 97th is skipped.
fn suite_source() -> String {
    format!(
        r#"import os
import unittest

RUN = int(os.environ.get("BATON_BENCH_RUN", "0"))


def make(i):
    def test(self):
        value = (i * 7919 + RUN) % 1000
        print("case %d: input=%d expected=%d" % (i, value, i % 13))
        if i % 97 == 0:
            self.skipTest("not on this platform")
        if i % 50 == 0:
            self.assertEqual(value % 7, 100, "case %d: checksum mismatch for %r" % (i, {{"input": value}}))
    return test


for c in range(40):
    cls = type("TestModule%02d" % c, (unittest.TestCase,), {{}})
    for i in range(c, {TESTS}, 40):
        setattr(cls, "test_case_%05d" % i, make(i))
    globals()[cls.__name__] = cls
"#
    )
}
