//! Read queries of the web report service (a commit's tasks; its pages of tasks are `Reader::tasks_page`).

use anyhow::Context;
use protocol::message::TaskInfo;
use protocol::CommitPrefix;
use rusqlite::params;

use super::{task_info, Reader, TASK_COLUMNS};

impl Reader {
    /// The tasks of the commits starting with `prefix`, newest first.
    ///
    /// # Errors
    /// SQLite errors.
    pub fn tasks_of_commit(&self, prefix: &CommitPrefix, limit: u32) -> anyhow::Result<Vec<TaskInfo>> {
        let upper = format!("{prefix}g");
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE commit_id >= ?1 AND commit_id < ?2 ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![prefix.as_str(), upper, limit], task_info)?;
        rows.collect::<Result<_, _>>().context("listing a commit's tasks")
    }
}
