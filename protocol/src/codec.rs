//! Frame and payload encoding: the only place that knows about bincode, and
//! the one that builds the `LengthDelimitedCodec` (`connection` frames its
//! streams with what [`frame_codec`] returns).
//!
//! Every decode runs with a size limit: without it, a 13-byte frame whose
//! string-length prefix claims 2^63 bytes makes bincode try to allocate that
//! much and abort the process. With it, decoding fails in microseconds.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::LengthDelimitedCodec;

use crate::{Error, MAX_FRAME};

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Builds the framing codec: 4-byte big-endian length, explicit maximum.
pub fn frame_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame.min(MAX_FRAME))
        .new_codec()
}

/// Encodes one message into a frame payload.
///
/// # Errors
/// Fails only if the message cannot be represented within the limit.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(message, config()).map_err(|err| Error::Encode(err.to_string()))
}

/// Decodes one frame payload, requiring that every byte is consumed.
///
/// # Errors
/// [`Error::Decode`] for anything that is not exactly one valid message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    let (message, used) =
        bincode::serde::decode_from_slice(payload, config()).map_err(|err| Error::Decode(err.to_string()))?;
    if used != payload.len() {
        return Err(Error::Decode(format!("{} trailing bytes after the message", payload.len() - used)));
    }
    Ok(message)
}
