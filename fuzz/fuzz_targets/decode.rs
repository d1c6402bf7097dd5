//! Fuzz target `decode`: the fuzzer's bytes are a stream arriving on a Baton
//! connection.
//!
//! The whole input is decoded as one payload of every type a peer reads from
//! the wire (the handshake frames and the six message enums), then cut into
//! frames by the real frame codec and every frame decoded the same way.
//! Decoding must never panic, abort or allocate what the input did not pay
//! for, and whatever decodes must survive a second encode and decode
//! unchanged.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::codec::{decode, encode, frame_codec};
use protocol::handshake::{DispatcherHandshake, Hello, Proof};
use protocol::message::{
    ClientToDispatcher, DispatcherToClient, DispatcherToObserver, DispatcherToRunner, ObserverToDispatcher,
    RunnerToDispatcher,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::Decoder;

/// A small frame limit, so the fuzzer also reaches the oversized-frame path.
const FUZZ_MAX_FRAME: usize = 4096;

fuzz_target!(|data: &[u8]| {
    decode_as_every_type(data);
    let mut codec = frame_codec(FUZZ_MAX_FRAME);
    let mut buffer = BytesMut::from(data);
    // Frames until the bytes run out (Ok(None)) or the codec refuses a length
    // (Err), after which a real connection is closed.
    while let Ok(Some(frame)) = codec.decode(&mut buffer) {
        assert!(frame.len() <= FUZZ_MAX_FRAME, "the codec let an oversized frame through");
        decode_as_every_type(&frame);
    }
});

fn decode_as_every_type(payload: &[u8]) {
    round_trip::<Hello>(payload);
    round_trip::<DispatcherHandshake>(payload);
    round_trip::<Proof>(payload);
    round_trip::<ObserverToDispatcher>(payload);
    round_trip::<DispatcherToObserver>(payload);
    round_trip::<RunnerToDispatcher>(payload);
    round_trip::<DispatcherToRunner>(payload);
    round_trip::<ClientToDispatcher>(payload);
    round_trip::<DispatcherToClient>(payload);
}

fn round_trip<T>(payload: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(value) = decode::<T>(payload) {
        let bytes = encode(&value).expect("a decoded message encodes again");
        let back: T = decode(&bytes).expect("a re-encoded message decodes");
        assert_eq!(back, value, "a message changed through encode and decode");
    }
}
