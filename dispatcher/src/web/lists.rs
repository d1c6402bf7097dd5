//! Task lists as the web serves them, each kept until the scheduler's next
//! commit: 200 dashboards polling `GET /api/v1/tasks?limit=50` (issue 14)
//! cost one query and one JSON rendering per commit, not one per poll, and
//! when nothing changes, none.
//!
//! The key is [`Handle::committed`], which counts up after each commit and
//! before that batch's replies: an answer cached under the number a request
//! reads when it starts shows every commit that request could know of, so
//! a list is never older than what a client was told (a submission it just
//! made is in it). Under load the number moves with every batch, and polls
//! that arrive within one batch share one query.
//!
//! Deliberately not here: the SQL (`store::web`), the JSON shapes (`json`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use axum::body::Bytes;
use protocol::message::TaskInfo;

use super::api::TaskQuery;
use protocol::view::TaskJson;

use super::ApiError;
use crate::readers::Readers;
use crate::scheduler::Handle;

/// Distinct queries kept per commit; past it, a new query replaces them all
/// (dashboards ask a few; a crawler paging through history asks many, each
/// once).
const MAX_KEPT: usize = 32;
/// About the length of one task's JSON, to size a list's body at once.
const BYTES_PER_TASK: usize = 600;

/// One query's answer at one commit.
pub struct List {
    pub tasks: Vec<TaskInfo>,
    /// The API's JSON body, rendered by the first request that wants it.
    json: OnceLock<Bytes>,
}

impl List {
    /// The `GET /api/v1/tasks` body: the tasks as `baton tasks --json` shows
    /// them.
    pub fn json(&self) -> Bytes {
        self.json
            .get_or_init(|| {
                let tasks: Vec<TaskJson<'_>> = self.tasks.iter().map(TaskJson).collect();
                let mut body = Vec::with_capacity(BYTES_PER_TASK * tasks.len());
                // Serialising strings, numbers and lists cannot fail.
                let _ = serde_json::to_writer(&mut body, &tasks);
                Bytes::from(body)
            })
            .clone()
    }
}

/// The cache.
pub struct Lists {
    scheduler: Handle,
    readers: Arc<Readers>,
    /// The commit the lists were read at, and the lists.
    kept: Mutex<(u64, HashMap<TaskQuery, Arc<List>>)>,
}

impl Lists {
    pub fn new(scheduler: Handle, readers: Arc<Readers>) -> Lists {
        Lists { scheduler, readers, kept: Mutex::new((0, HashMap::new())) }
    }

    /// Tasks newest first, as `query` says, read at the latest commit.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn get(&self, query: TaskQuery) -> Result<Arc<List>, ApiError> {
        let committed = self.scheduler.committed();
        {
            let kept = self.kept.lock().unwrap_or_else(|err| err.into_inner());
            if kept.0 == committed {
                if let Some(list) = kept.1.get(&query) {
                    return Ok(Arc::clone(list));
                }
            }
        }
        let asked = query.clone();
        let tasks = self
            .readers
            .query(move |reader| {
                reader.tasks_page(asked.repo.as_ref(), asked.state, asked.before, asked.limit)
            })
            .await?;
        let list = Arc::new(List { tasks, json: OnceLock::new() });
        let mut kept = self.kept.lock().unwrap_or_else(|err| err.into_inner());
        // Read at `committed` or later: good for `committed`, and never
        // kept over a list of a newer commit.
        if kept.0 < committed || (kept.0 == committed && kept.1.len() >= MAX_KEPT) {
            *kept = (committed, HashMap::new());
        }
        if kept.0 == committed {
            kept.1.insert(query, Arc::clone(&list));
        }
        Ok(list)
    }
}
