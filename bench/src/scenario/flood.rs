//! `flood`: 2,000 silent TCP connections held open to a dispatcher, then 50
//! `baton status` calls one after the other, each by the real CLI (issue 12,
//! item 6). Figures: the share of calls that succeed, in %, one sample per
//! round of ten calls (expected 100), and the wall time of the calls that
//! succeed (p50 and p95).
//!
//! The bench's open-file limit is raised to the hard one first, as the
//! integration test does; the dispatcher inherits it.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Ctx;
use crate::report::{Bound, Figure};
use crate::support::{self, Dispatcher};

/// Silent connections held at once.
const SILENT: usize = 2_000;
/// `baton status` calls per round; the success rate is one sample per round.
const ROUND: usize = 10;
/// How long one `baton status` may take before it counts as failed.
const CALL_PATIENCE: Duration = Duration::from_secs(10);

/// Runs the scenario.
///
/// # Errors
/// When the setup fails or too few connections open.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let rounds = ctx.reps_or(5);
    support::raise_fd_limit()?;
    let dispatcher = Dispatcher::start(&ctx.bins, &ctx.dir, &ctx.dir.join("data"), &[])?;
    let addr: SocketAddr = dispatcher.addr.parse().context("the dispatcher's address")?;
    let held = tokio::task::spawn_blocking(move || {
        (0..SILENT)
            .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok())
            .collect::<Vec<TcpStream>>()
    })
    .await
    .context("opening the flood")?;
    anyhow::ensure!(held.len() > SILENT / 2, "only {} of {SILENT} connections opened", held.len());

    let baton = ctx.bins.path("baton")?;
    let mut rates = Vec::with_capacity(rounds);
    let mut times = Vec::with_capacity(rounds * ROUND);
    for _ in 0..rounds {
        let mut ok = 0;
        for _ in 0..ROUND {
            let started = Instant::now();
            let call = tokio::process::Command::new(&baton)
                .args(["--dispatcher", &dispatcher.addr, "status", "--json"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .status();
            if let Ok(Ok(status)) = tokio::time::timeout(CALL_PATIENCE, call).await {
                if status.success() {
                    ok += 1;
                    times.push(started.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        rates.push(ok as f64 * 100.0 / ROUND as f64);
    }
    drop(held);
    Ok(vec![
        Figure::new("flood_status_ok", "%", rates).target(Bound::AtLeast(100.0)),
        Figure::new("flood_status_time", "ms", times).p95(),
    ])
}
