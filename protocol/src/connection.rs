//! `Connection<In, Out>`: typed frames over one TCP stream.
//!
//! The type parameters are the message enums of one direction each, so a
//! wrong-direction send does not compile. A connection splits into a
//! [`Receiver`] owned by the read loop and a [`Sender`] owned by one writer
//! task, instead of `select!`ing over a half-finished send.

use std::marker::PhantomData;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::codec::{decode, encode, frame_codec};
use crate::Error;

/// The reading half of a byte stream (plain TCP or TLS).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a byte stream (plain TCP or TLS).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected byte stream, plain or TLS, split into halves, before framing.
pub struct Transport {
    read: BoxRead,
    write: BoxWrite,
    peer: SocketAddr,
}

impl Transport {
    /// A plain TCP stream.
    ///
    /// # Errors
    /// When the socket has no peer address (it was closed).
    pub fn plain(stream: TcpStream) -> std::io::Result<Transport> {
        let peer = stream.peer_addr()?;
        // Frames are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Transport { read: Box::new(read), write: Box::new(write), peer })
    }

    /// Any stream, for example a TLS one.
    pub fn from_stream<S>(stream: S, peer: SocketAddr) -> Transport
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (read, write) = tokio::io::split(stream);
        Transport { read: Box::new(read), write: Box::new(write), peer }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

/// What a connection can be made from: a [`Transport`] or a plain
/// `TcpStream`.
pub trait IntoTransport {
    /// Converts.
    ///
    /// # Errors
    /// As [`Transport::plain`].
    fn into_transport(self) -> std::io::Result<Transport>;
}

impl IntoTransport for Transport {
    fn into_transport(self) -> std::io::Result<Transport> {
        Ok(self)
    }
}

impl IntoTransport for TcpStream {
    fn into_transport(self) -> std::io::Result<Transport> {
        Transport::plain(self)
    }
}

/// Both halves of a connection, typed by direction.
pub struct Connection<In, Out> {
    receiver: Receiver<In>,
    sender: Sender<Out>,
    peer: SocketAddr,
}

/// The reading half.
pub struct Receiver<In> {
    frames: FramedRead<BoxRead, LengthDelimitedCodec>,
    max_frame: usize,
    _in: PhantomData<fn() -> In>,
}

/// The writing half.
pub struct Sender<Out> {
    frames: FramedWrite<BoxWrite, LengthDelimitedCodec>,
    _out: PhantomData<fn(Out)>,
}

impl<In: DeserializeOwned, Out: Serialize> Connection<In, Out> {
    /// Frames a connected stream (a `TcpStream` or a [`Transport`]) with the
    /// given maximum frame size.
    ///
    /// # Errors
    /// When a TCP stream has no peer address (it was closed).
    pub fn new(stream: impl IntoTransport, max_frame: usize) -> std::io::Result<Connection<In, Out>> {
        let transport = stream.into_transport()?;
        Ok(Connection {
            receiver: Receiver {
                frames: FramedRead::new(transport.read, frame_codec(max_frame)),
                max_frame,
                _in: PhantomData,
            },
            sender: Sender {
                frames: FramedWrite::new(transport.write, frame_codec(max_frame)),
                _out: PhantomData,
            },
            peer: transport.peer,
        })
    }

    /// See [`Receiver::recv`].
    pub async fn recv(&mut self) -> Result<Option<In>, Error> {
        self.receiver.recv().await
    }

    /// See [`Sender::send`].
    pub async fn send(&mut self, message: &Out) -> Result<(), Error> {
        self.sender.send(message).await
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Re-types the connection for the messages of the next phase (after the
    /// handshake). Frames already buffered are kept.
    pub fn retype<In2: DeserializeOwned, Out2: Serialize>(self) -> Connection<In2, Out2> {
        Connection {
            receiver: Receiver {
                frames: self.receiver.frames,
                max_frame: self.receiver.max_frame,
                _in: PhantomData,
            },
            sender: Sender { frames: self.sender.frames, _out: PhantomData },
            peer: self.peer,
        }
    }

    /// Changes the largest frame either half accepts (raised once the
    /// handshake has admitted the peer).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        let max_frame = max_frame.min(crate::MAX_FRAME);
        self.receiver.max_frame = max_frame;
        self.receiver.frames.decoder_mut().set_max_frame_length(max_frame);
        self.sender.frames.encoder_mut().set_max_frame_length(max_frame);
    }

    /// Splits into the reading and the writing half.
    pub fn split(self) -> (Receiver<In>, Sender<Out>) {
        (self.receiver, self.sender)
    }
}

impl<In: DeserializeOwned> Receiver<In> {
    /// Reads the next message.
    ///
    /// # Returns
    /// `Ok(None)` when the peer closed the connection between frames.
    ///
    /// # Errors
    /// [`Error::FrameTooLarge`] for an oversized length header (nothing of it
    /// is buffered), [`Error::Io`] when the peer vanished mid-frame,
    /// [`Error::Decode`] for a whole frame that is not a message. After any
    /// error the connection must be dropped.
    pub async fn recv(&mut self) -> Result<Option<In>, Error> {
        match self.frames.next().await {
            None => Ok(None),
            Some(Ok(frame)) => decode(&frame).map(Some),
            Some(Err(err)) => {
                let too_large = err.get_ref().is_some_and(|inner| inner.is::<LengthDelimitedCodecError>());
                if too_large {
                    Err(Error::FrameTooLarge { max: self.max_frame })
                } else {
                    Err(Error::Io(err))
                }
            }
        }
    }
}

impl<Out: Serialize> Sender<Out> {
    /// Encodes and writes one message, flushing it.
    ///
    /// # Errors
    /// I/O errors of the socket; [`Error::FrameTooLarge`] for a message over
    /// the frame limit (a bug in the sender: messages are built to fit).
    pub async fn send(&mut self, message: &Out) -> Result<(), Error> {
        self.feed(message).await?;
        self.flush().await
    }

    /// Encodes and buffers one message without flushing.
    ///
    /// # Errors
    /// As [`Sender::send`].
    pub async fn feed(&mut self, message: &Out) -> Result<(), Error> {
        let payload = encode(message)?;
        let max = self.frames.encoder().max_frame_length();
        if payload.len() > max {
            return Err(Error::FrameTooLarge { max });
        }
        self.frames.feed(Bytes::from(payload)).await?;
        Ok(())
    }

    /// Writes out everything buffered.
    ///
    /// # Errors
    /// I/O errors of the socket.
    pub async fn flush(&mut self) -> Result<(), Error> {
        SinkExt::<Bytes>::flush(&mut self.frames).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::handshake::{self, Role};
    use crate::message::{DispatcherToObserver, ObserverToDispatcher};
    use crate::types::Name;

    /// A connected pair: raw client stream, typed server connection.
    async fn pair(max_frame: usize) -> (TcpStream, Connection<ObserverToDispatcher, DispatcherToObserver>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Connection::new(server, max_frame).unwrap())
    }

    async fn send_raw(stream: &mut TcpStream, bytes: &[u8]) {
        stream.write_all(bytes).await.unwrap();
        stream.flush().await.unwrap();
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header() {
        let (mut client, mut server) = pair(1024).await;
        // A 100 MiB length prefix and nothing else: refused without waiting
        // for (or allocating) the payload.
        send_raw(&mut client, &(100u32 * 1024 * 1024).to_be_bytes()).await;
        assert!(matches!(server.recv().await, Err(Error::FrameTooLarge { max: 1024 })));
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error_and_a_clean_close_is_none() {
        let (mut client, mut server) = pair(1024).await;
        send_raw(&mut client, &[0, 0, 0, 10, 1, 2]).await;
        drop(client);
        assert!(matches!(server.recv().await, Err(Error::Io(_))));
        let (client, mut server) = pair(1024).await;
        drop(client);
        assert!(matches!(server.recv().await, Ok(None)));
    }

    #[tokio::test]
    async fn random_bytes_and_unknown_variants_do_not_decode() {
        let (mut client, mut server) = pair(1024).await;
        send_raw(&mut client, &frame(&[0x7f, 0xde, 0xad, 0xbe, 0xef])).await;
        assert!(matches!(server.recv().await, Err(Error::Decode(_))));
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..500 {
            let len = (seed % 64) as usize;
            let payload: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            // Must return, never panic or abort; most are errors.
            let _ = crate::codec::decode::<ObserverToDispatcher>(&payload);
        }
    }

    #[tokio::test]
    async fn a_length_prefix_claiming_2_pow_63_bytes_fails_cleanly() {
        // Variant 0 (Submit), then the repository string's length as a
        // bincode varint: 0xfd + u64 little endian = 2^63 - 1 bytes.
        let mut payload = vec![0x00, 0xfd];
        payload.extend_from_slice(&(i64::MAX as u64).to_le_bytes());
        let (mut client, mut server) = pair(1024).await;
        send_raw(&mut client, &frame(&payload)).await;
        assert!(matches!(server.recv().await, Err(Error::Decode(_))));
    }

    #[tokio::test]
    async fn trailing_bytes_are_refused() {
        let mut payload = crate::codec::encode(&DispatcherToObserver::Refused(crate::message::Refused {
            reason: "x".into(),
        }))
        .unwrap();
        payload.push(0);
        assert!(crate::codec::decode::<DispatcherToObserver>(&payload).is_err());
    }

    #[tokio::test]
    async fn a_wrong_version_is_rejected_with_a_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            handshake::accept::<ObserverToDispatcher, DispatcherToObserver>(stream, None, None, 1024).await
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn: Connection<handshake::DispatcherHandshake, handshake::Hello> =
            Connection::new(stream, 1024).unwrap();
        let hello = handshake::Hello { version: 999, role: Role::Observer, name: Name::new("o").unwrap() };
        conn.send(&hello).await.unwrap();
        match conn.recv().await.unwrap().unwrap() {
            handshake::DispatcherHandshake::Reject(reject) => {
                assert!(reject.reason.contains("version mismatch"), "{}", reject.reason)
            }
            other => panic!("expected a reject, got {other:?}"),
        }
        assert!(matches!(
            server.await.unwrap(),
            Err(Error::VersionMismatch { ours: crate::PROTOCOL_VERSION, theirs: 999 })
        ));
    }

    #[tokio::test]
    async fn the_shared_secret_is_checked() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let secret = crate::Secret::new(b"s3cret".to_vec()).unwrap();
        let server_secret = secret.clone();
        let server = tokio::spawn(async move {
            let mut results = Vec::new();
            for _ in 0..2 {
                let (stream, _) = listener.accept().await.unwrap();
                let accepted = handshake::accept::<ObserverToDispatcher, DispatcherToObserver>(
                    stream,
                    Some(&server_secret),
                    None,
                    1024,
                )
                .await;
                results.push(accepted.map(|(_, admitted)| admitted.authenticated));
            }
            results
        });
        let name = Name::new("o").unwrap();
        let wrong = crate::Secret::new(b"guess".to_vec()).unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        let refused = handshake::connect::<DispatcherToObserver, ObserverToDispatcher>(
            stream,
            Role::Observer,
            &name,
            Some(&wrong),
            1024,
        )
        .await;
        assert!(matches!(refused, Err(Error::Rejected { ref reason }) if reason == "authentication failed"));
        let stream = TcpStream::connect(addr).await.unwrap();
        let admitted = handshake::connect::<DispatcherToObserver, ObserverToDispatcher>(
            stream,
            Role::Observer,
            &name,
            Some(&secret),
            1024,
        )
        .await;
        assert!(admitted.is_ok());
        let results = server.await.unwrap();
        assert!(results[0].is_err());
        assert!(matches!(results[1], Ok(true)));
    }
}
