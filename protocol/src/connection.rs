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
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec, LengthDelimitedCodecError};

use crate::codec::{decode, encode, frame_codec};
use crate::Error;

/// Both halves of a connection, typed by direction.
pub struct Connection<In, Out> {
    receiver: Receiver<In>,
    sender: Sender<Out>,
    peer: SocketAddr,
}

/// The reading half.
pub struct Receiver<In> {
    frames: FramedRead<OwnedReadHalf, LengthDelimitedCodec>,
    max_frame: usize,
    _in: PhantomData<fn() -> In>,
}

/// The writing half.
pub struct Sender<Out> {
    frames: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    _out: PhantomData<fn(Out)>,
}

impl<In: DeserializeOwned, Out: Serialize> Connection<In, Out> {
    /// Frames a connected stream with the given maximum frame size.
    pub fn new(stream: TcpStream, max_frame: usize) -> std::io::Result<Connection<In, Out>> {
        let peer = stream.peer_addr()?;
        // Frames are small and latency matters more than packet count.
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        Ok(Connection {
            receiver: Receiver {
                frames: FramedRead::new(read, frame_codec(max_frame)),
                max_frame,
                _in: PhantomData,
            },
            sender: Sender { frames: FramedWrite::new(write, frame_codec(max_frame)), _out: PhantomData },
            peer,
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
