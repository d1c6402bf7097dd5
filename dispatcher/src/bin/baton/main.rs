//! `baton`, the command-line client of a Baton dispatcher (SPEC §6).
//!
//! This file only parses the command line, runs the command on a one-thread
//! runtime and maps how it ended to an exit code: 0 success, 1 a failed
//! request, 2 a dispatcher that cannot be reached (clap also exits 2 for a
//! malformed command line).
//!
//! The client is a program of its own that happens to live in the
//! dispatcher's package (SPEC §1): of Baton's crates it uses `protocol` only
//! (the wire, and `protocol::view` for JSON shapes and times), never the
//! dispatcher's library; a test below keeps it so.

mod cli;
mod command;
mod culprit;
mod deploy;
mod git;
mod key;
mod log;
mod render;
mod request;
mod session;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::command::{Console, Outcome};
use crate::render::Style;
use crate::request::Invocation;
use crate::session::ConnectionFailed;

/// Runs one command and exits 0, 1 or 2 (see the module docs).
fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Unsuccessful) => ExitCode::FAILURE,
        // The reader went away (`baton log 7 | head`): nothing is wrong.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "error: {err:#}");
            if err.downcast_ref::<ConnectionFailed>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Everything between parsing and the exit code, on real stdout and stderr.
fn run(cli: cli::Cli) -> anyhow::Result<Outcome> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let invocation = Invocation::from_cli(cli, &cwd)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr());
    let mut console = Console { out: &mut stdout, err: &mut stderr, style: Style::detect() };
    runtime.block_on(command::run(&invocation, &mut console))
}

/// Whether the error is stdout's reader having gone away.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn a_broken_pipe_anywhere_in_the_chain_is_recognised() {
        let broken =
            anyhow::Error::from(io::Error::from(io::ErrorKind::BrokenPipe)).context("writing to stdout");
        assert!(is_broken_pipe(&broken));
        let other = anyhow::Error::from(io::Error::from(io::ErrorKind::PermissionDenied)).context("writing");
        assert!(!is_broken_pipe(&other));
    }

    /// The client shares the wire and its views with the dispatcher, not the
    /// dispatcher's internals (ARCHITECTURE.md).
    #[test]
    fn the_client_uses_no_dispatcher_code() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/baton");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let source = std::fs::read_to_string(&path).unwrap();
            let forbidden = ["dispatcher", "::"].concat();
            assert!(!source.contains(&forbidden), "{} uses the dispatcher library", path.display());
        }
    }
}
