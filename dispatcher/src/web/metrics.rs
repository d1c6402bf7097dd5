//! `/metrics` in the Prometheus text format (SPEC §10), through the official
//! `prometheus-client` crate.
//!
//! Gauges (`baton_tasks`, `baton_runners`, `baton_queue_depth`) are set from
//! the scheduler's status snapshot at each scrape. The counters
//! (`baton_tasks_finished_total`, `baton_runners_lost_total`) and the
//! histograms are fed by the scheduler's published changes since this
//! process started: a task's time from queued to running and from running to
//! its end is measured from the changes this process saw (tasks queued before
//! the dispatcher started are not in the histograms).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use protocol::message::RunnerState;
use protocol::{TaskId, TaskState};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::{json, ApiError, Web};
use crate::scheduler::Change;

type Labels = Vec<(&'static str, &'static str)>;

/// Live tasks whose start times are remembered at most; beyond it the
/// oldest marks are dropped (their durations go unmeasured).
const MAX_TRACKED: usize = 100_000;

/// The series, registered once.
pub struct Metrics {
    registry: Arc<Registry>,
    tasks: Family<Labels, Gauge>,
    runners: Family<Labels, Gauge>,
    queue_depth: Gauge,
    finished: Family<Labels, Counter>,
    runners_lost: Counter,
    submit_to_running: Histogram,
    task_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let tasks = Family::<Labels, Gauge>::default();
        let runners = Family::<Labels, Gauge>::default();
        let queue_depth = Gauge::default();
        let finished = Family::<Labels, Counter>::default();
        let runners_lost = Counter::default();
        // 1 ms to about 9 minutes.
        let submit_to_running = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        // 10 ms to about 1.5 hours.
        let task_duration = Histogram::new(exponential_buckets(0.01, 2.0, 20));
        let mut registry = Registry::default();
        registry.register("baton_tasks", "Tasks by state", tasks.clone());
        registry.register(
            "baton_tasks_finished",
            "Tasks that reached a final state, by state",
            finished.clone(),
        );
        registry.register("baton_runners", "Runners by state", runners.clone());
        registry.register("baton_queue_depth", "Pending tasks", queue_depth.clone());
        registry.register("baton_runners_lost", "Runners declared lost", runners_lost.clone());
        registry.register(
            "baton_submit_to_running_seconds",
            "Time from queued to handed to a runner",
            submit_to_running.clone(),
        );
        registry.register(
            "baton_task_duration_seconds",
            "Time from running to a final state",
            task_duration.clone(),
        );
        registry.register(
            "baton_build",
            "The dispatcher's version",
            Info::new(vec![("version", protocol::BATON_VERSION)]),
        );
        Metrics {
            registry: Arc::new(registry),
            tasks,
            runners,
            queue_depth,
            finished,
            runners_lost,
            submit_to_running,
            task_duration,
        }
    }

    /// Feeds counters and histograms from the scheduler's state changes
    /// until `shutdown`.
    pub fn follow(&self, mut changes: broadcast::Receiver<Change>, shutdown: CancellationToken) {
        let finished = self.finished.clone();
        let runners_lost = self.runners_lost.clone();
        let submit_to_running = self.submit_to_running.clone();
        let task_duration = self.task_duration.clone();
        tokio::spawn(async move {
            let mut since: HashMap<TaskId, i64> = HashMap::new();
            // Each final state's counter, looked up in the family once.
            let mut finished_in: HashMap<TaskState, Counter> = HashMap::new();
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    change = changes.recv() => change,
                };
                let at_ms = crate::time::now_ms();
                match change {
                    Ok(Change::RunnerLost { .. }) => {
                        runners_lost.inc();
                    }
                    Ok(Change::Release(_) | Change::Deployment(_)) => {}
                    Ok(Change::Task(change)) => {
                        let started = since.remove(&change.task_id);
                        match change.state {
                            TaskState::Pending | TaskState::Running => {
                                if change.state == TaskState::Running {
                                    if let Some(queued) = started {
                                        submit_to_running.observe(seconds(at_ms - queued));
                                    }
                                }
                                if since.len() < MAX_TRACKED {
                                    since.insert(change.task_id, at_ms);
                                }
                            }
                            final_state => {
                                finished_in
                                    .entry(final_state)
                                    .or_insert_with(|| {
                                        finished.get_or_create(&vec![("state", final_state.as_str())]).clone()
                                    })
                                    .inc();
                                if let Some(running) = started {
                                    task_duration.observe(seconds(at_ms - running));
                                }
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "metrics fell behind the scheduler's state changes");
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// Serialises scrapes: encoding is quick, and one at a time keeps the gauges
/// of one scrape consistent.
static SCRAPE: Mutex<()> = Mutex::new(());

pub async fn serve(State(web): State<Arc<Web>>) -> Result<Response, ApiError> {
    let view = web.snapshot.get().await.map_err(ApiError::unavailable)?;
    let metrics = &web.metrics;
    let mut text = String::new();
    {
        let _scrape = SCRAPE.lock().unwrap_or_else(|err| err.into_inner());
        for state in TaskState::ALL {
            let count = json::count(&view.status, state);
            metrics.tasks.get_or_create(&vec![("state", state.as_str())]).set(count as i64);
        }
        metrics.queue_depth.set(json::count(&view.status, TaskState::Pending) as i64);
        for (state, count) in [
            (RunnerState::Idle, view.status.runners_idle),
            (RunnerState::Busy, view.status.runners_busy),
            (RunnerState::Dead, view.status.runners_dead),
        ] {
            metrics.runners.get_or_create(&vec![("state", state.as_str())]).set(count as i64);
        }
        encode(&mut text, &metrics.registry).map_err(|_| ApiError::unavailable("encoding metrics failed"))?;
    }
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response())
}
