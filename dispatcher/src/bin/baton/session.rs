//! The client's one connection to the dispatcher: dial and handshake, send
//! the request, read answers, each wait bounded unless the caller streams.
//!
//! Every way this can fail is a [`ConnectionFailed`], which `main` turns into
//! exit code 2 so scripts can tell "the dispatcher said no" (exit 1) from "the
//! dispatcher was not there". What the answers mean is not decided here.

use std::fmt;
use std::time::Duration;

use protocol::handshake::Role;
use protocol::message::{ClientToDispatcher, DispatcherToClient};
use protocol::peer::Credentials;
use protocol::{Connection, Name};

/// The name the client gives in its hello.
pub const CLIENT_NAME: &str = "baton";

/// How long to wait for each answer frame, except while following a log.
///
/// A dispatcher answers queries from its database in milliseconds; 30 s
/// leaves room for a loaded one and still frees a script that talks to a
/// frozen one.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// The dispatcher could not be reached, or the connection to it broke.
#[derive(Debug)]
pub struct ConnectionFailed {
    /// The whole message, address and cause included.
    message: String,
}

impl fmt::Display for ConnectionFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectionFailed {}

/// An open, authenticated connection to the dispatcher.
pub struct Session {
    connection: Connection<DispatcherToClient, ClientToDispatcher>,
    address: String,
}

impl Session {
    /// Dials `address` and completes the handshake as a client.
    ///
    /// # Errors
    /// "cannot reach the dispatcher at ADDR: CAUSE" for a refused or timed-out
    /// connection, an unresolvable address or a rejected handshake.
    pub async fn open(address: &str, credentials: &Credentials) -> Result<Session, ConnectionFailed> {
        // The constant is a valid name; the expect cannot fire.
        let name = Name::new(CLIENT_NAME).expect("CLIENT_NAME is a valid peer name");
        match protocol::peer::dial_with(address, Role::Client, &name, credentials, protocol::MAX_FRAME).await
        {
            Ok((connection, _welcome)) => Ok(Session { connection, address: address.to_string() }),
            Err(err) => Err(ConnectionFailed {
                message: format!("cannot reach the dispatcher at {address}: {}", describe_handshake(&err)),
            }),
        }
    }

    /// Sends one request.
    ///
    /// # Errors
    /// The connection broke.
    pub async fn send(&mut self, request: &ClientToDispatcher) -> Result<(), ConnectionFailed> {
        self.connection.send(request).await.map_err(|err| self.lost(describe(&err)))
    }

    /// Reads the next answer, waiting at most `timeout` when one is given.
    ///
    /// # Errors
    /// The connection closed or broke, a frame was not a valid answer, or the
    /// timeout passed.
    pub async fn answer(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<DispatcherToClient, ConnectionFailed> {
        let received = match timeout {
            Some(limit) => match tokio::time::timeout(limit, self.connection.recv()).await {
                Ok(received) => received,
                Err(_) => return Err(self.lost(format!("no answer within {}s", limit.as_secs()))),
            },
            None => self.connection.recv().await,
        };
        match received {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => Err(self.lost("the dispatcher closed the connection".into())),
            Err(err) => Err(self.lost(describe(&err))),
        }
    }

    /// The error for a connection that broke after the handshake.
    fn lost(&self, cause: String) -> ConnectionFailed {
        ConnectionFailed {
            message: format!("lost the connection to the dispatcher at {}: {cause}", self.address),
        }
    }
}

/// The cause as a person reads it: "connection refused" rather than
/// "connection i/o: Connection refused (os error 111)".
fn describe(err: &protocol::Error) -> String {
    match err {
        protocol::Error::Io(io) => describe_io(io),
        other => other.to_string(),
    }
}

/// The cause of a failed handshake. A peer whose first bytes are not a
/// Baton frame (a web server, SSH, the wrong port) yields a frame error that
/// would read as if a dispatcher had misbehaved; say what it means instead.
fn describe_handshake(err: &protocol::Error) -> String {
    match err {
        protocol::Error::FrameTooLarge { .. }
        | protocol::Error::Decode(_)
        | protocol::Error::Handshake(_) => {
            format!("the peer does not speak the Baton protocol ({err})")
        }
        other => describe(other),
    }
}

/// The OS message without its "(os error N)" tail, lowercased.
fn describe_io(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => &text[..at],
        _ => text.as_str(),
    };
    // The OS capitalises its messages ("Connection refused"); ours are
    // lowercase. A second capital ("DNS ...") means an acronym: keep it.
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_ascii_uppercase() && !second.is_ascii_uppercase() => {
            format!("{}{}", first.to_ascii_lowercase(), &text[1..])
        }
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn io_causes_read_like_sentences() {
        let refused = io::Error::from_raw_os_error(111);
        assert_eq!(describe(&protocol::Error::Io(refused)), "connection refused");
        let custom = io::Error::other("DNS lookup failed");
        assert_eq!(describe_io(&custom), "DNS lookup failed");
        assert_eq!(
            describe(&protocol::Error::Rejected { reason: "authentication failed".into() }),
            "rejected by the dispatcher: authentication failed"
        );
    }

    #[tokio::test]
    async fn a_peer_that_is_not_a_dispatcher_is_named_as_such() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let reply = b"HTTP/1.0 400 Bad Request\r\n\r\n";
            tokio::io::AsyncWriteExt::write_all(&mut stream, reply).await.unwrap();
            stream
        });
        let Err(err) = Session::open(&address, &Credentials::default()).await else {
            panic!("a web server was taken for a dispatcher")
        };
        let _stream = server.await.unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot reach the dispatcher at {address}: the peer does not speak the Baton protocol \
                 (frame larger than the maximum of {} bytes)",
                protocol::handshake::HANDSHAKE_MAX_FRAME
            )
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        // Bind then drop: the port is free and nobody listens on it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let Err(err) = Session::open(&address, &Credentials::default()).await else {
            panic!("connected to a closed port")
        };
        assert_eq!(err.to_string(), format!("cannot reach the dispatcher at {address}: connection refused"));
    }
}
