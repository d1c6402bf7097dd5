//! The scenarios, one module each, and the table that names them.
//!
//! A scenario starts what it needs in its own temp dir ([`Ctx::dir`]), on
//! loopback ports chosen at run time, measures, and returns its figures.
//! Everything it starts is owned by guards, so an error or Ctrl-C (which
//! drops its future) kills it all.

mod bisect;
mod checkout;
mod e2e_passed;
mod failover;
mod failover_freeze;
mod failover_kill;
mod flood;
mod logs;
mod manager_scale;
mod memory;
mod orphans;
mod pipeline;
mod query;
mod seed;
mod stall;
mod throughput;
mod watch_latency;
mod web;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::report::Figure;
use crate::support::Bins;

/// What a scenario gets.
pub struct Ctx {
    pub bins: Bins,
    /// The scenario's own temp dir, removed afterwards unless `--keep`.
    pub dir: PathBuf,
    /// `--reps`: samples per figure instead of the scenario's default.
    pub reps: Option<u32>,
}

impl Ctx {
    /// The sample count: `--reps`, or the scenario's default.
    pub fn reps_or(&self, default: u32) -> usize {
        self.reps.unwrap_or(default) as usize
    }
}

/// A scenario's result, boxed so the table can hold plain function pointers.
pub type Run<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Vec<Figure>>> + 'a>>;

/// One named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub run: for<'a> fn(&'a Ctx) -> Run<'a>,
}

/// Every scenario, in the order `baton-bench` runs them by default: the
/// dispatcher-only ones first.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "throughput",
        about:
            "tasks/s, 50 simulated runners, durable SQLite, feature branch and main (20,000 tasks; default 3)",
        run: |ctx| Box::pin(throughput::run(ctx)),
    },
    Scenario {
        name: "query",
        about: "wall time of `baton tasks --limit 50` and `baton show` with 1,000,000 tasks (default 20)",
        run: |ctx| Box::pin(query::run(ctx)),
    },
    Scenario {
        name: "memory",
        about: "RSS of a dispatcher with 1,000 runners, of an idle runner and an idle observer (default 1)",
        run: |ctx| Box::pin(memory::run(ctx)),
    },
    Scenario {
        name: "watch_latency",
        about: "git push -> test started, observer --watch, p50 and p95 (default 30 pushes)",
        run: |ctx| Box::pin(watch_latency::run(ctx)),
    },
    Scenario {
        name: "e2e_passed",
        about: "git push -> `passed` for a one-test unittest suite (default 20 pushes)",
        run: |ctx| Box::pin(e2e_passed::run(ctx)),
    },
    Scenario {
        name: "failover_kill",
        about: "kill -9 of the busy runner -> attempt 2 started on the idle one (default 5)",
        run: |ctx| Box::pin(failover_kill::run(ctx)),
    },
    Scenario {
        name: "failover_freeze",
        about: "SIGSTOP of the busy runner -> attempt 2 started on the idle one (default 5)",
        run: |ctx| Box::pin(failover_freeze::run(ctx)),
    },
    Scenario {
        name: "checkout",
        about:
            "submission -> test started, 2,000-commit 300-file repository, cold cache then warm (default 10)",
        run: |ctx| Box::pin(checkout::run(ctx)),
    },
    Scenario {
        name: "manager_scale",
        about: "runner manager, pool MIN 0 MAX 10, 50 tasks at once: time to 10 busy, back to MIN, RSS (default 2)",
        run: |ctx| Box::pin(manager_scale::run(ctx)),
    },
    Scenario {
        name: "web_polled",
        about: "throughput_tasks without and with 200 HTTP clients polling the task list once a second (default 3)",
        run: |ctx| Box::pin(throughput::run_polled(ctx)),
    },
    Scenario {
        name: "web",
        about: "web service with 1,000,000 tasks: GET / and /api/v1/tasks?limit=50, a test's line -> followed log (default 20)",
        run: |ctx| Box::pin(web::run(ctx)),
    },
    Scenario {
        name: "orphans",
        about: "kill -9 of a runner whose test forks -> its processes left 2 s later (default 5)",
        run: |ctx| Box::pin(orphans::run(ctx)),
    },
    Scenario {
        name: "flood",
        about: "2,000 silent connections held -> `baton status` success rate and wall time (default 5 rounds of 10)",
        run: |ctx| Box::pin(flood::run(ctx)),
    },
    Scenario {
        name: "logs",
        about: "zstd on 16 MB of `python3 -m unittest -v` output: ratio, compress and decompress MB/s (default 5)",
        run: |ctx| Box::pin(logs::run(ctx)),
    },
    Scenario {
        name: "stall",
        about: "SIGSTOP of the dispatcher for 2x its heartbeat window, 4 runners busy -> runners lost, extra attempts (default 5)",
        run: |ctx| Box::pin(stall::run(ctx)),
    },
    Scenario {
        name: "bisect",
        about: "first failing commit among 64 after the last pass, 4 runners, a 1 s test: steps and wall time (default 3)",
        run: |ctx| Box::pin(bisect::run(ctx)),
    },
];

/// The scenarios named on the command line, or all.
///
/// # Errors
/// An unknown name.
pub fn select(names: &[String]) -> anyhow::Result<Vec<&'static Scenario>> {
    if names.is_empty() {
        return Ok(ALL.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            ALL.iter().find(|scenario| scenario.name == name.as_str()).ok_or_else(|| {
                let known: Vec<&str> = ALL.iter().map(|scenario| scenario.name).collect();
                anyhow::anyhow!("unknown scenario {name:?}; known: {}", known.join(", "))
            })
        })
        .collect()
}
