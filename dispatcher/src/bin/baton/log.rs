//! `baton log`: copying a task's console output from the dispatcher to
//! stdout as it arrives.
//!
//! Test output may hold any bytes (SPEC §9), and a script redirecting it to a
//! file must get them unchanged, so a pipe or file receives each chunk byte
//! for byte. Only a terminal gets text, decoded leniently across chunk
//! boundaries so a character split between two chunks is not mangled.

use anyhow::Context;
use protocol::message::{DispatcherToClient, LogRequest};
use protocol::TaskState;

use crate::command::{unexpected, Console, Outcome};
use crate::session::{Session, ANSWER_TIMEOUT};

/// Streams the answers to a `Log` request (already sent) until `LogEnd`.
///
/// # Returns
/// Without `--follow`, success. With it, success only if the task passed;
/// the final state is reported on stderr either way.
///
/// # Errors
/// An `Error` answer, a broken connection, or a failed write to stdout.
pub async fn stream(
    session: &mut Session,
    request: &LogRequest,
    console: &mut Console<'_>,
) -> anyhow::Result<Outcome> {
    // A followed task may be silent for minutes; only a plain dump is bounded.
    let timeout = if request.follow { None } else { Some(ANSWER_TIMEOUT) };
    let mut decoder = console.style.terminal.then(LossyUtf8::default);
    let mut at_line_start = true;
    loop {
        match session.answer(timeout).await? {
            DispatcherToClient::LogChunk(bytes) => {
                match &mut decoder {
                    Some(decoder) => console.out.write_all(decoder.decode(&bytes).as_bytes()),
                    None => console.out.write_all(&bytes),
                }
                .and_then(|()| console.out.flush())
                .context("writing the log to stdout")?;
                if let Some(&last) = bytes.last() {
                    at_line_start = last == b'\n';
                }
            }
            DispatcherToClient::LogEnd(task) => {
                if let Some(decoder) = &mut decoder {
                    console
                        .out
                        .write_all(decoder.finish().as_bytes())
                        .context("writing the log to stdout")?;
                }
                console.out.flush().context("writing the log to stdout")?;
                // On a terminal the two streams share the screen: end the
                // output's last line so the verdict starts a line of its own.
                let newline = if console.style.terminal && !at_line_start { "\n" } else { "" };
                // Why a task has no (or little) output is its reason: say it,
                // on stderr so that stdout stays the log's exact bytes.
                // A plain dump says only that; a follower always hears the end.
                let reason = task.reason.as_deref().filter(|_| task.state.is_final());
                let verdict = match reason {
                    Some(reason) => format!("task {} ended: {}: {reason}", task.id, task.state),
                    None => format!("task {} ended: {}", task.id, task.state),
                };
                if request.follow || reason.is_some() {
                    let _ = writeln!(console.err, "{newline}{verdict}");
                }
                if !request.follow {
                    return Ok(Outcome::Success);
                }
                return Ok(if task.state == TaskState::Passed {
                    Outcome::Success
                } else {
                    Outcome::Unsuccessful
                });
            }
            DispatcherToClient::Error(reason) => anyhow::bail!(reason),
            other => return Err(unexpected(&other)),
        }
    }
}

/// Lossy UTF-8 decoding of a byte stream cut into arbitrary chunks: an
/// incomplete sequence at the end of a chunk waits for the next one, invalid
/// bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct LossyUtf8 {
    /// The start of a character whose remaining bytes have not arrived (at
    /// most 3 bytes).
    pending: Vec<u8>,
}

impl LossyUtf8 {
    /// Decodes what `bytes` completes, keeping an unfinished character back.
    pub fn decode(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::with_capacity(self.pending.len());
        let mut rest = self.pending.as_slice();
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(err) => {
                    let (valid, after) = rest.split_at(err.valid_up_to());
                    text.push_str(&String::from_utf8_lossy(valid));
                    match err.error_len() {
                        Some(invalid) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[invalid..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        text
    }

    /// Ends the stream: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            char::REPLACEMENT_CHARACTER.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_chunks_survives() {
        let mut decoder = LossyUtf8::default();
        let text = "héllo → wörld ✓";
        let mut out = String::new();
        for chunk in text.as_bytes().chunks(1) {
            out.push_str(&decoder.decode(chunk));
        }
        out.push_str(&decoder.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut decoder = LossyUtf8::default();
        assert_eq!(decoder.decode(b"a\xffb\xc3"), "a\u{fffd}b");
        assert_eq!(decoder.decode(b"\xa9\xe2\x82"), "é");
        assert_eq!(decoder.finish(), "\u{fffd}");
        assert_eq!(decoder.finish(), "");
        assert_eq!(decoder.decode(b"\xc3(x"), "\u{fffd}(x");
    }
}
