//! Frames on a QUIC stream beyond one request and one answer: a subscription's `events`, a
//! replication stream's records and acks. Shared by the node and the standby.

use paycore_protocol::{FRAME_BYTES_MAX, Frame, decode, encode};

/// Writes one frame, encoding it into `bytes` (reused between calls); false when the peer has
/// gone or the frame does not encode.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    request_id: u64,
    frame: &Frame,
    bytes: &mut Vec<u8>,
) -> bool {
    bytes.clear();
    encode(frame, request_id, bytes).is_ok() && send.write_all(bytes).await.is_ok()
}

/// [`write_frame`] with a buffer of its own, for the occasional frame.
pub async fn send_frame(send: &mut quinn::SendStream, request_id: u64, frame: &Frame) -> bool {
    write_frame(send, request_id, frame, &mut Vec::new()).await
}

/// Reads one whole frame (`Ok(None)` at the end of the stream).
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Option<(u64, Frame)>, String> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(error.to_string()),
    }
    let frame_bytes = 4 + u32::from_le_bytes(prefix) as usize;
    if frame_bytes > FRAME_BYTES_MAX {
        return Err(format!("frame of {frame_bytes} bytes"));
    }
    let mut bytes = vec![0u8; frame_bytes];
    bytes[..4].copy_from_slice(&prefix);
    recv.read_exact(&mut bytes[4..])
        .await
        .map_err(|e| e.to_string())?;
    decode(&bytes).map(Some).map_err(|e| e.to_string())
}
