//! `failover_freeze`: SIGSTOP of the runner running a task, to the task
//! running again on the other runner, with the default heartbeats (1 s, 3
//! misses; SPEC §8: at most 3.5 s). The frozen runner keeps its connection
//! open, so only the missed heartbeats reveal it. See `failover` for the
//! setup; the frozen runner is continued and killed after each trial.

use super::failover::{self, Fault};
use super::Ctx;
use crate::report::{Bound, Figure};

/// Runs the scenario.
///
/// # Errors
/// When the setup or a trial fails.
pub async fn run(ctx: &Ctx) -> anyhow::Result<Vec<Figure>> {
    let times = failover::measure(ctx, Fault::Freeze, ctx.reps_or(5)).await?;
    Ok(vec![Figure::new("failover_freeze", "ms", times).target(Bound::AtMost(3500.0))])
}
