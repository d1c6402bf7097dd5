//! `failover_kill`: `kill -9` of the runner running a task, to the task
//! running again on the other, idle runner (SPEC §8: at most 150 ms). The
//! kernel closes the dead runner's connection at once, so this measures the
//! dispatcher noticing, requeueing, committing and assigning, plus the idle
//! runner's checkout and the test's start. See `failover` for the setup.

use super::failover::{self, Fault};
use super::Ctx;
use crate::report::{Bound, Figure};

/// Runs the scenario.
///
/// # Errors
/// When the setup or a trial fails.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let times = failover::measure(ctx, Fault::Kill, ctx.reps_or(5)).await?;
    Ok(vec![Figure::new("failover_kill", "ms", times).target(Bound::AtMost(150.0))])
}
