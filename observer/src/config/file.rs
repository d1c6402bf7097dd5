//! The `--config` TOML file, parsed as written: [`super::Config::from_cli`]
//! merges it under the flags and validates it.
//!
//! Relative paths in the file are relative to the file's folder, so a config
//! file and the state file next to it can move together.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::Mode;
use crate::cli::LogFormat;

/// The `--config` TOML file: the long flags in snake_case, plus `[[repo]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub(super) dispatcher: Option<String>,
    pub(super) poll: Option<String>,
    pub(super) watch: Option<bool>,
    pub(super) safety_poll: Option<String>,
    #[serde(alias = "branches")]
    pub(super) branch: Option<Vec<String>>,
    pub(super) mode: Option<Mode>,
    pub(super) state_file: Option<PathBuf>,
    pub(super) clone_url: Option<String>,
    pub(super) cache_dir: Option<PathBuf>,
    pub(super) initial: Option<usize>,
    pub(super) max_new: Option<usize>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) tls_ca: Option<PathBuf>,
    pub(super) tls_server_name: Option<String>,
    pub(super) name: Option<String>,
    pub(super) log_format: Option<LogFormat>,
    pub(super) webhook: Option<String>,
    pub(super) webhook_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) repo: Vec<FileRepo>,
    #[serde(default)]
    pub(super) schedule: Vec<FileSchedule>,
    /// The file's folder: relative paths in the file are relative to it.
    #[serde(skip)]
    pub(super) base_dir: PathBuf,
}

/// One `[[repo]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileRepo {
    pub(super) path: String,
    #[serde(alias = "branch")]
    pub(super) branches: Option<Vec<String>>,
    pub(super) mode: Option<Mode>,
    pub(super) clone_url: Option<String>,
    /// The name a forge's push payload gives this repository (`full_name`,
    /// `path_with_namespace`), or the NAME of `POST /hook/NAME`.
    pub(super) webhook_name: Option<String>,
}

/// One `[[schedule]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSchedule {
    /// Names the schedule in logs and the state file [default: `repo branch cron`].
    pub(super) name: Option<String>,
    /// An observed repository: its `path` as in `[[repo]]` or its location as submitted.
    pub(super) repo: String,
    pub(super) branch: String,
    pub(super) cron: String,
    #[serde(default)]
    pub(super) labels: Vec<String>,
}

impl FileConfig {
    /// Reads and parses a config file.
    ///
    /// # Errors
    /// An unreadable file, invalid TOML or an unknown key.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let mut file: FileConfig =
            toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
        let absolute = std::path::absolute(path).context("resolving the config file's path")?;
        file.base_dir = absolute.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(file)
    }

    /// Resolves a path written in the file against the file's folder.
    pub(super) fn path(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }
}
