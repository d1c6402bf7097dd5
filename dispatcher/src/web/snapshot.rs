//! The scheduler's status and runners as the web shows them, asked for at
//! most once per [`FRESH`] however many clients poll: so 200 clients
//! refreshing a page send the scheduler four events a second, not 200.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::message::{RunnerInfo, StatusReport};
use tokio::sync::Mutex;

use crate::scheduler::{Event, Handle, Stopped};

/// How old a snapshot may be when served.
const FRESH: Duration = Duration::from_millis(250);

/// Status and runners at one moment.
#[derive(Clone)]
pub struct View {
    pub status: StatusReport,
    pub runners: Vec<RunnerInfo>,
}

/// The cache; one request refreshes it while the others wait for that.
pub struct Snapshot {
    scheduler: Handle,
    latest: Mutex<Option<(Instant, Arc<View>)>>,
}

impl Snapshot {
    pub fn new(scheduler: Handle) -> Snapshot {
        Snapshot { scheduler, latest: Mutex::new(None) }
    }

    /// A view at most [`FRESH`] old.
    ///
    /// # Errors
    /// The scheduler has stopped.
    pub async fn get(&self) -> Result<Arc<View>, Stopped> {
        let mut latest = self.latest.lock().await;
        if let Some((at, view)) = latest.as_ref() {
            if at.elapsed() < FRESH {
                return Ok(Arc::clone(view));
            }
        }
        let status = self.scheduler.ask(|reply| Event::Status { reply }).await?;
        let runners = self.scheduler.ask(|reply| Event::Runners { reply }).await?;
        let view = Arc::new(View { status, runners });
        *latest = Some((Instant::now(), Arc::clone(&view)));
        Ok(view)
    }
}
