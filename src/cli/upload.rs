//! The client side of `UploadDataset`, written against the wire format
//! rather than through the generated client.
//!
//! The generated client encodes every message into a fresh buffer: each
//! chunk would be read from the file into one buffer and copied into
//! another, and on a short-lived CLI process every one of those buffers is
//! memory the kernel must zero on first touch (measured: 40% of the
//! client's CPU for a 100 MB upload). Here a chunk is read once, into a
//! recycled buffer that already has room in front for its message header,
//! and that buffer is the HTTP/2 body frame.
//!
//! The protocol (gRPC over HTTP/2) is small: every message is a 1-byte
//! compression flag, a 4-byte big-endian length and the protobuf bytes; the
//! reply's status is in the trailers (or in the headers, when the server
//! answers before reading the request). `UploadDatasetRequest.chunk` is
//! field 2, a length-delimited `bytes`, so a chunk message is the tag byte
//! `0x12`, the chunk's length as a varint, then the chunk.

use std::io::Read;
use std::sync::{Arc, Mutex};

use crate::client::Channel;
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tonic::codegen::{Service, http};
use tonic::{Code, Status};

use crate::proto;

const PATH: &str = "/lathe.v1.DatasetService/UploadDataset";
/// Room in front of each chunk for its header: the 5-byte gRPC prefix, the
/// field tag and a varint of at most 10 bytes.
const HEADROOM: usize = 16;
/// Replies larger than this are refused, as tonic's default decode limit.
const MAX_REPLY: usize = 4 << 20;

/// Uploads `file`, calling `progress` with the bytes read so far. Errors are
/// the server's status, or the file's I/O error (the upload is then cut off,
/// so the server stores nothing).
pub async fn upload_file(
    channel: &Channel,
    file: std::fs::File,
    metadata: proto::UploadDatasetMetadata,
    chunk: usize,
    progress: impl Fn(u64) + Send + 'static,
) -> Result<proto::UploadDatasetResponse, Status> {
    let first = proto::UploadDatasetRequest {
        payload: Some(proto::upload_dataset_request::Payload::Metadata(metadata)),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
    let reader = tokio::task::spawn_blocking(move || read_chunks(file, chunk, first, &tx, progress));
    let body = tonic::body::Body::new(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ));
    let result = call(channel, body).await;
    // The reader stops by itself once the body is gone; an I/O error it
    // met explains a cut-off upload better than the status that followed.
    match reader.await {
        Ok(Err(io)) => Err(read_error(&io)),
        _ => result,
    }
}

/// Sends the metadata message, then the file in `chunk`-byte messages, each
/// read straight into a recycled buffer behind its header.
fn read_chunks(
    mut file: std::fs::File,
    chunk: usize,
    first: proto::UploadDatasetRequest,
    tx: &tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Status>>,
    progress: impl Fn(u64),
) -> std::io::Result<()> {
    if tx.blocking_send(Ok(Frame::data(message(&first)))).is_err() {
        return Ok(());
    }
    let pool = Arc::new(Pool::default());
    let mut sent = 0u64;
    loop {
        let mut buf = pool.take(HEADROOM + chunk);
        buf.resize(HEADROOM, 0);
        let n = match (&mut file).take(chunk as u64).read_to_end(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(read_error(&e)));
                return Err(e);
            }
        };
        if n == 0 {
            return Ok(());
        }
        let start = write_chunk_header(&mut buf[..HEADROOM], n);
        sent += n as u64;
        progress(sent);
        let frame = Bytes::from_owner(Pooled {
            buf,
            pool: pool.clone(),
        })
        .slice(start..);
        if tx.blocking_send(Ok(Frame::data(frame))).is_err() {
            return Ok(());
        }
    }
}

/// Writes the header of a chunk message of `n` bytes at the end of
/// `headroom`; returns where the message starts.
fn write_chunk_header(headroom: &mut [u8], n: usize) -> usize {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    // Field 2 with wire type 2 fits the key in one byte.
    let fields = 1 + encoded_len_varint(n as u64);
    let start = headroom.len() - (5 + fields);
    headroom[start] = 0;
    headroom[start + 1..start + 5].copy_from_slice(&((fields + n) as u32).to_be_bytes());
    let mut out = &mut headroom[start + 5..];
    encode_key(2, WireType::LengthDelimited, &mut out);
    encode_varint(n as u64, &mut out);
    start
}

/// One whole gRPC message: uncompressed flag, length, protobuf bytes.
fn message(m: &impl Message) -> Bytes {
    let len = m.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    m.encode_raw(&mut out);
    out.into()
}

async fn call(channel: &Channel, body: tonic::body::Body) -> Result<proto::UploadDatasetResponse, Status> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(PATH)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(body)
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| Service::poll_ready(&mut channel, cx))
        .await
        .map_err(transport_error)?;
    let response = Service::call(&mut channel, request).await.map_err(transport_error)?;
    let (head, body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Err(Status::unknown(format!("the server answered HTTP {}", head.status)));
    }
    // A server that fails the call before reading it answers with headers
    // only, the status among them.
    if let Some(status) = Status::from_header_map(&head.headers) {
        return Err(if status.code() == Code::Ok {
            Status::internal("the server ended the upload without a reply")
        } else {
            status
        });
    }
    let collected = body.collect().await.map_err(|e| Status::from_error(e.into()))?;
    let trailers = collected.trailers().cloned();
    let data = collected.to_bytes();
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() != Code::Ok => return Err(status),
        Some(_) => {}
        None => return Err(Status::internal("the server's reply has no grpc-status")),
    }
    decode_reply(&data)
}

fn decode_reply(data: &[u8]) -> Result<proto::UploadDatasetResponse, Status> {
    let bad = |why: &str| Status::internal(format!("malformed reply: {why}"));
    if data.len() < 5 {
        return Err(bad("shorter than a message header"));
    }
    if data[0] != 0 {
        return Err(bad("compressed, though the request asked for none"));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if len > MAX_REPLY {
        return Err(bad("larger than 4 MiB"));
    }
    if data.len() != 5 + len {
        return Err(bad("not exactly one message"));
    }
    proto::UploadDatasetResponse::decode(&data[5..]).map_err(|e| bad(&e.to_string()))
}

fn read_error(e: &std::io::Error) -> Status {
    Status::new(Code::Aborted, format!("reading the file: {e}"))
}

fn transport_error(e: tonic::transport::Error) -> Status {
    Status::unavailable(format!("connection: {e}"))
}

/// Buffers that come back when the frame that owns one is dropped (sent).
#[derive(Default)]
struct Pool(Mutex<Vec<Vec<u8>>>);

impl Pool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut free| free.pop());
        match reused {
            Some(mut buf) => {
                buf.clear();
                buf
            }
            None => Vec::with_capacity(capacity),
        }
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Ok(mut free) = self.pool.0.lock() {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written header and prost agree on every varint width.
    #[test]
    fn chunk_messages_decode_as_the_generated_type() {
        for n in [0usize, 1, 127, 128, 300, 16_383, 16_384, 262_144, 2_097_151, 2_097_152] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let mut buf = vec![0u8; HEADROOM];
            buf.extend_from_slice(&payload);
            let start = write_chunk_header(&mut buf[..HEADROOM], n);
            let framed = &buf[start..];
            assert_eq!(framed[0], 0);
            let len = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
            assert_eq!(len, framed.len() - 5, "length prefix for {n}");
            let decoded = proto::UploadDatasetRequest::decode(&framed[5..]).unwrap();
            let expected = proto::UploadDatasetRequest {
                payload: Some(proto::upload_dataset_request::Payload::Chunk(payload.into())),
            };
            assert_eq!(decoded, expected, "chunk of {n} bytes");
            assert_eq!(
                &framed[5..],
                &expected.encode_to_vec()[..],
                "same bytes as prost for {n}"
            );
        }
    }

    #[test]
    fn replies_must_be_one_uncompressed_message() {
        let reply = proto::UploadDatasetResponse {
            dataset: Some(proto::Dataset {
                id: "ds_1".into(),
                ..Default::default()
            }),
        };
        let good = message(&reply);
        assert_eq!(decode_reply(&good).unwrap(), reply);
        let mut compressed = good.to_vec();
        compressed[0] = 1;
        assert!(decode_reply(&compressed).unwrap_err().message().contains("compressed"));
        assert!(decode_reply(&good[..good.len() - 1]).is_err());
        assert!(decode_reply(&good[..3]).is_err());
        let mut two = good.to_vec();
        two.extend_from_slice(&good);
        assert!(decode_reply(&two).is_err());
    }

    #[test]
    fn buffers_return_to_the_pool_when_their_frame_is_dropped() {
        let pool = Arc::new(Pool::default());
        let mut buf = pool.take(64);
        buf.extend_from_slice(b"hello");
        let ptr = buf.as_ptr();
        let frame = Bytes::from_owner(Pooled {
            buf,
            pool: pool.clone(),
        })
        .slice(1..);
        assert_eq!(&frame[..], b"ello");
        drop(frame);
        let again = pool.take(64);
        assert_eq!(again.as_ptr(), ptr);
        assert!(again.is_empty());
    }
}
