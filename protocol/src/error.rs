//! The protocol's one error type; callers branch on its variants.

/// What can go wrong on a Baton connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed or the peer vanished mid-frame.
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's length header exceeded the configured maximum.
    #[error("frame larger than the maximum of {max} bytes")]
    FrameTooLarge { max: usize },
    /// A frame arrived whole but its payload is not a valid message.
    #[error("undecodable frame: {0}")]
    Decode(String),
    /// A message could not be encoded (only when it exceeds the frame limit).
    #[error("unencodable message: {0}")]
    Encode(String),
    /// The peers speak different protocol versions.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch { ours: u32, theirs: u32 },
    /// The dispatcher refused the handshake and said why.
    #[error("rejected by the dispatcher: {reason}")]
    Rejected { reason: String },
    /// The peer closed the connection during the handshake.
    #[error("connection closed during the handshake")]
    ClosedEarly,
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    Timeout,
    /// The peer broke the handshake's sequence of frames.
    #[error("handshake violated: {0}")]
    Handshake(&'static str),
}
