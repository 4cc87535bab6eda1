//! The wire decoders: the IPC codec (gateway and bridge-agent), the bridge frame parser
//! (bridge-agent and mcp-bridge) and the stdio relay's SSE reader (`mcp-bridge --stdio`).
use bytes::{Bytes, BytesMut};
use provider_shared::bridge::BridgeFrame;
use provider_shared::ipc::{IpcCodec, IpcFrame};
use tokio_util::codec::{Decoder, Encoder};

use crate::piece_length_and_rest;

/// The frames of an IPC byte stream arriving in `pieces`, and the error that ended it, if any.
fn ipc_frames<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> (Vec<IpcFrame>, Option<String>) {
    let mut codec = IpcCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => return (frames, Some(err.to_string())),
            }
        }
    }
    (frames, None)
}

/// Any byte stream on the Unix socket: decoding does not depend on how the stream is cut, and
/// every frame decoded is encoded back to itself.
pub fn ipc_codec(data: &[u8]) {
    let (length, bytes) = piece_length_and_rest(data);
    let whole = ipc_frames(std::iter::once(bytes));
    let cut = ipc_frames(bytes.chunks(length));
    assert_eq!(whole, cut, "decoding depends on how the stream is cut");
    for frame in whole.0 {
        let mut codec = IpcCodec::default();
        let mut buf = BytesMut::new();
        if let Err(err) = codec.encode(frame.clone(), &mut buf) {
            panic!("a decoded frame does not encode: {err}: {frame:?}");
        }
        let again = codec.decode(&mut buf);
        assert!(
            matches!(&again, Ok(Some(f)) if *f == frame),
            "{frame:?} came back as {again:?}"
        );
    }
}

/// Any WebSocket text frame (tungstenite hands over only valid UTF-8): a frame that parses is
/// written back as text that parses to the same frame.
pub fn bridge_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = BridgeFrame::parse(text) {
        let again = BridgeFrame::parse(&frame.to_text());
        assert_eq!(again.as_ref(), Ok(&frame), "{text}");
    }
}

/// Any answer body on the relay's connection to mcp-bridge: the events read do not depend on how
/// the body arrives in pieces.
pub fn relay_sse(data: &[u8]) {
    let (length, bytes) = piece_length_and_rest(data);
    let whole = mcp_bridge::relay::sse_data_of(vec![Bytes::copy_from_slice(bytes)]);
    let cut =
        mcp_bridge::relay::sse_data_of(bytes.chunks(length).map(Bytes::copy_from_slice).collect());
    assert_eq!(whole, cut, "the events depend on how the body is cut");
}
