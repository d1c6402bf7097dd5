//! `baton-bench`: measures the figures of SPEC §8 against the real release
//! binaries, which it finds next to its own executable (`scripts/bench.sh`
//! builds them and runs it).
//!
//! This file parses the command line, prints the header, and runs the chosen
//! scenarios one after the other, each in its own temp dir, on one
//! current-thread runtime. One thread keeps the load generator's footprint
//! small on a 2-core machine, and it means every child process is spawned by
//! the main thread, so the parent-death signal set on children (see
//! `support`) fires only when the bench itself dies. Ctrl-C drops the running
//! scenario, whose guards kill what it started.

mod client;
mod report;
mod scenario;
mod sim;
mod support;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::report::Figure;
use crate::support::Bins;

/// Measures Baton's SPEC §8 figures against the real binaries.
#[derive(Debug, Parser)]
#[command(name = "baton-bench", version)]
struct Cli {
    /// Scenarios to run, in this order [default: all]; `--list` names them.
    #[arg(value_name = "SCENARIO")]
    scenarios: Vec<String>,
    /// Samples per figure, overriding each scenario's default (at least 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    reps: Option<u32>,
    /// Keep each scenario's temp dir (daemon logs, data dirs) and print where.
    #[arg(long)]
    keep: bool,
    /// List the scenarios with their default sample counts and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for scenario in scenario::ALL {
            println!("{:<16} {}", scenario.name, scenario.about);
        }
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("baton-bench: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen scenarios; `Ok(false)` when any of them failed.
fn run(cli: Cli) -> anyhow::Result<bool> {
    let chosen = scenario::select(&cli.scenarios)?;
    let bins = Bins::locate()?;
    support::raise_fd_limit().context("raising the open-file limit")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    report::print_header(&bins);
    let mut all_ok = true;
    let mut figures: Vec<Figure> = Vec::new();
    // Every scenario's temp dir is removed at the end of the run, not when
    // its scenario ends. `throughput` alone leaves some 130,000 files (result
    // and release files of 120,000 tasks); on an ext4 without a journal (CI's
    // and this workplace's root file system) the kernel avoids reusing an
    // inode for 60 to 360 s after its file is deleted, scanning past every
    // such inode at each file creation (`recently_deleted` under
    // `ext4_create` in `perf`). Removing them between scenarios made every
    // file the next ones create cost ~0.4 ms instead of ~0.05 ms, which
    // doubled `watch_latency` and `checkout_warm`: a cost of the harness's
    // clean-up, not of Baton.
    let mut finished = Vec::new();
    for scenario in chosen {
        let dir = tempfile::Builder::new()
            .prefix(&format!("baton-bench-{}-", scenario.name))
            .tempdir()
            .context("creating a temp dir")?;
        let ctx = scenario::Ctx { bins: bins.clone(), dir: dir.path().to_path_buf(), reps: cli.reps };
        eprintln!("# {}: running in {}", scenario.name, dir.path().display());
        let outcome = runtime.block_on(async {
            tokio::select! {
                outcome = (scenario.run)(&ctx) => Some(outcome),
                _ = tokio::signal::ctrl_c() => None,
            }
        });
        match outcome {
            Some(Ok(measured)) => {
                for figure in &measured {
                    println!("{}", figure.line());
                }
                figures.extend(measured);
            }
            Some(Err(err)) => {
                all_ok = false;
                println!("{} FAILED: {err:#}", scenario.name);
                support::print_log_tails(dir.path());
            }
            None => {
                eprintln!("interrupted; every process started by the bench has been killed");
                return Ok(false);
            }
        }
        if cli.keep {
            let kept = dir.keep();
            eprintln!("# {}: kept {}", scenario.name, kept.display());
        } else {
            finished.push(dir);
        }
    }
    report::print_targets(&figures);
    drop(finished);
    Ok(all_ok)
}
