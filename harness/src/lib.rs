//! The harness around Baton's real binaries, for the integration tests
//! (`tests/`) and the benchmark (`bench/`), and nothing else: it is never
//! published and no daemon depends on it.
//!
//! - [`bins`]: where the built binaries are.
//! - [`daemon`]: a started binary as a guard that kills (SIGKILL) and reaps
//!   it when dropped, its stderr kept in a log file.
//! - [`git`]: repositories made and driven with the git CLI, through one
//!   [`git::Repo::run`].
//! - [`peer`]: a runner that speaks the real protocol, for what the real
//!   runner will not do (impostors, thousands of simulated runners).
//! - [`procs`]: processes as `/proc` shows them (alive, group, marked by
//!   an environment variable), to prove nothing a test started outlives it.
//! - [`system`]: what needs root: a small tmpfs, a network namespace.
//! - [`wait`]: deadlines instead of sleeps.
//!
//! Everything returns `anyhow::Result`: the benchmark reports errors, and the
//! tests' own `support` module turns them into panics with the whole chain.

pub mod bins;
pub mod daemon;
pub mod git;
pub mod peer;
pub mod procs;
pub mod system;
pub mod wait;

pub use bins::Bins;
pub use daemon::{Daemon, Launch};
pub use git::Repo;
pub use wait::{wait_for, Deadline, PATIENCE};
