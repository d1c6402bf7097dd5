//! A peer that writes the wire format by hand over a blocking socket, so a
//! test can send what no real peer would: noise, truncated and oversized
//! frames, unknown message kinds, floods.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use protocol::codec::{decode, encode};
use protocol::handshake::{DispatcherHandshake, Hello, Proof, Role};
use protocol::{Name, Secret, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::support::PATIENCE;

/// A peer that writes the wire format by hand over a blocking socket, so a
/// test can send what no real peer would.
pub struct Raw {
    pub stream: TcpStream,
    /// Bytes received and not yet returned as a frame.
    buffer: Vec<u8>,
}

/// What one read from the socket brought.
enum Received {
    Data,
    Nothing,
    Closed,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap_or_else(|err| panic!("connecting to {addr}: {err}"));
        stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream, buffer: Vec::new() }
    }

    /// Connects and completes the handshake; panics unless welcomed.
    pub fn admitted(addr: &str, role: Role, secret: Option<&Secret>) -> Raw {
        let mut peer = Raw::connect(addr);
        let name = Name::new(format!("raw-{}", role.as_str())).unwrap();
        peer.send(&Hello { version: PROTOCOL_VERSION, role, name: name.clone() });
        let DispatcherHandshake::Challenge(challenge) = peer.recv() else { panic!("no challenge") };
        peer.send(&Proof {
            mac: secret.map(|secret| secret.prove(&challenge.nonce, role, &name)),
            nonce: [7; 32],
            user: None,
        });
        match peer.recv() {
            DispatcherHandshake::Welcome(_) => peer,
            other => panic!("not admitted: {other:?}"),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn send_payload(&mut self, payload: &[u8]) {
        self.write(&frame(payload)).expect("sending a frame");
    }

    pub fn send<T: Serialize>(&mut self, message: &T) {
        self.send_payload(&encode(message).unwrap());
    }

    fn read(&mut self) -> Received {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Received::Closed,
            Ok(n) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Received::Data
            }
            Err(err)
                if matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                Received::Nothing
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => Received::Nothing,
            // Reset: the dispatcher closed with our bytes still unread.
            Err(_) => Received::Closed,
        }
    }

    /// The next frame's payload, or `None` once the dispatcher closed.
    pub fn recv_frame(&mut self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.buffer.len() >= 4 {
                let len = u32::from_be_bytes(self.buffer[..4].try_into().unwrap()) as usize;
                if self.buffer.len() >= 4 + len {
                    let payload = self.buffer[4..4 + len].to_vec();
                    self.buffer.drain(..4 + len);
                    return Some(payload);
                }
            }
            match self.read() {
                Received::Data => {}
                Received::Closed => return None,
                Received::Nothing => assert!(Instant::now() < deadline, "no frame from the dispatcher"),
            }
        }
    }

    pub fn recv<T: DeserializeOwned>(&mut self) -> T {
        let payload = self.recv_frame().expect("the dispatcher closed the connection");
        decode(&payload).expect("the dispatcher's frame decodes")
    }

    /// Waits until the dispatcher closes the connection, discarding what it
    /// sends meanwhile; returns how long that took.
    pub fn wait_closed(&mut self, what: &str) -> Duration {
        let started = Instant::now();
        loop {
            match self.read() {
                Received::Closed => return started.elapsed(),
                Received::Data => self.buffer.clear(),
                Received::Nothing => assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}"),
            }
        }
    }

    /// As [`Raw::wait_closed`]; returns whether nothing at all was sent
    /// before the close.
    pub fn wait_closed_silently(&mut self) -> bool {
        let started = Instant::now();
        let mut silent = self.buffer.is_empty();
        loop {
            match self.read() {
                Received::Closed => return silent,
                Received::Data => {
                    silent = false;
                    self.buffer.clear();
                }
                Received::Nothing => assert!(started.elapsed() < PATIENCE, "timed out waiting for the close"),
            }
        }
    }
}

/// Writes `frame` over and over on a second handle of `peer`'s socket until
/// the dispatcher closes it; returns how many were written.
pub fn flood(peer: &Raw, frame: &[u8]) -> std::thread::JoinHandle<u64> {
    const PER_WRITE: u64 = 512;
    let mut stream = peer.stream.try_clone().unwrap();
    let batch = frame.repeat(PER_WRITE as usize);
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0;
        // Bounded, so a dispatcher that never disconnects fails the test
        // (in `wait_closed`) instead of hanging it.
        while started.elapsed() < PATIENCE && stream.write_all(&batch).is_ok() {
            sent += PER_WRITE;
        }
        sent
    })
}

/// A frame: 4-byte big-endian length, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// A string as bincode 2 writes it: a varint length (one byte below 251),
/// then the bytes, unchecked.
pub fn bincode_str(text: &str) -> Vec<u8> {
    assert!(text.len() < 251, "a one-byte length prefix only");
    let mut bytes = vec![text.len() as u8];
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// Deterministic noise (xorshift64).
pub fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}
