//! A small pool of read-only SQLite connections for client queries, used
//! from blocking threads so queries never stall the async runtime or the
//! scheduler.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::store::Reader;

/// Connections kept open between queries.
const POOL_SIZE: usize = 4;

/// The pool.
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Reader>>,
}

impl Readers {
    /// A pool over the database at `path`; connections open lazily.
    pub fn new(path: PathBuf) -> Arc<Readers> {
        Arc::new(Readers { path, idle: Mutex::new(Vec::new()) })
    }

    /// Runs `query` on a pooled connection in a blocking thread.
    ///
    /// # Errors
    /// The query's error, or opening a connection failed.
    pub async fn query<T, F>(self: &Arc<Self>, query: F) -> anyhow::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Reader) -> anyhow::Result<T> + Send + 'static,
    {
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || pool.query_blocking(query)).await?
    }

    /// Runs `query` on a pooled connection in the calling thread (a thread
    /// of the dispatcher's own, never the async runtime's).
    ///
    /// # Errors
    /// The query's error, or opening a connection failed.
    pub fn query_blocking<T>(&self, query: impl FnOnce(&Reader) -> anyhow::Result<T>) -> anyhow::Result<T> {
        // The lock is held only to pop or push, never across a query.
        let reader = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let reader = match reader {
            Some(reader) => reader,
            None => Reader::open(&self.path)?,
        };
        let result = query(&reader);
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_SIZE {
            idle.push(reader);
        }
        result
    }
}
