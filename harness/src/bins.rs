//! Where the workspace's binaries are: next to the running executable
//! (`baton-bench` in `target/release/`), or one directory up from a test
//! executable (`target/debug/deps/`). `CARGO_BIN_EXE_*` is set only for a
//! package's own binaries, so the tests look there as ripgrep's do.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The directory the binaries are taken from.
#[derive(Clone, Debug)]
pub struct Bins {
    dir: PathBuf,
}

impl Bins {
    /// The running executable's directory, or its parent when that is
    /// cargo's `deps/` (a test executable).
    ///
    /// # Errors
    /// When the executable's path cannot be read.
    pub fn locate() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe().context("finding the running executable's path")?;
        let mut dir = exe.parent().context("the running executable has no parent directory")?;
        if dir.file_name().is_some_and(|name| name == "deps") {
            dir = dir.parent().context("deps/ has no parent directory")?;
        }
        Ok(Bins { dir: dir.to_path_buf() })
    }

    /// The directory the binaries are taken from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of binary `name`.
    ///
    /// # Errors
    /// When it is missing (not built yet).
    pub fn path(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(name);
        anyhow::ensure!(
            path.is_file(),
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh and scripts/bench.sh do)",
            path.display()
        );
        Ok(path)
    }
}
