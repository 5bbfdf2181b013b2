//! A test-only OpenAI-compatible HTTP server: answers chat completions and
//! embeddings, and injects faults from a script (status codes with
//! Retry-After, slow replies, malformed bodies). A chat request that asks
//! for a stream gets its answer as server-sent events, a few characters a
//! chunk. Never in the product.
// Each test binary uses a different part of the stub.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with this chat completion (or other JSON) body; as server-sent
    /// chunks when the request asked for a stream.
    Json(String),
    /// 200 with this JSON body even when a stream was asked for (servers
    /// that ignore `stream`).
    Whole(String),
    /// A stream of this chat completion cut off before its end.
    Cut(String),
    /// This status, with an optional Retry-After in seconds.
    Status(u16, Option<u32>),
    /// Wait, then behave like the inner reply.
    Slow(Duration, Box<Reply>),
    /// 200 with a body that is not JSON.
    Malformed,
    /// Wait until the gate is opened (`Stub::open_gate`), then behave like
    /// the inner reply; a client that gives up drops it.
    Gated(Box<Reply>),
}

/// Answers a chat request (its JSON body) when the script is empty.
pub type Responder = Arc<dyn Fn(&serde_json::Value) -> Reply + Send + Sync>;

#[derive(Default)]
pub struct Stub {
    script: Mutex<VecDeque<Reply>>,
    /// What to answer when the script is empty.
    pub default_chat: Mutex<String>,
    pub requests: Mutex<Vec<(String, String, String)>>,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    pub responder: Mutex<Option<Responder>>,
    gate_open: std::sync::atomic::AtomicBool,
    gate: tokio::sync::Notify,
    /// Requests waiting at the gate now.
    pub gated: AtomicUsize,
    /// Gated requests the client gave up on.
    pub dropped: AtomicUsize,
    /// Wakes tests when a request arrives or reaches the gate.
    pub arrived: tokio::sync::Notify,
}

impl Stub {
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().extend(replies);
    }

    pub fn respond_with(&self, f: impl Fn(&serde_json::Value) -> Reply + Send + Sync + 'static) {
        *self.responder.lock().unwrap() = Some(Arc::new(f));
    }

    pub fn open_gate(&self) {
        self.gate_open.store(true, Ordering::SeqCst);
        self.gate.notify_waiters();
    }

    /// Chat requests whose first message's content is `content`.
    pub fn requests_for(&self, content: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, body)| {
                serde_json::from_str::<serde_json::Value>(body).is_ok_and(|b| b["messages"][0]["content"] == content)
            })
            .count()
    }

    /// Waits until `n` gated requests were dropped by the client.
    pub async fn wait_dropped(&self, n: usize) {
        loop {
            let arrived = self.arrived.notified();
            if self.dropped.load(Ordering::SeqCst) >= n {
                return;
            }
            arrived.await;
        }
    }

    /// Waits until `n` requests wait at the gate.
    pub async fn wait_gated(&self, n: usize) {
        loop {
            let arrived = self.arrived.notified();
            if self.gated.load(Ordering::SeqCst) >= n {
                return;
            }
            arrived.await;
        }
    }
}

pub fn chat_body(content: &str) -> String {
    serde_json::json!({
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
    .to_string()
}

/// Starts the stub on 127.0.0.1:0; returns its base URL (".../v1").
pub async fn start() -> (Arc<Stub>, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let stub = Arc::new(Stub::default());
    *stub.default_chat.lock().unwrap() = chat_body(r#"{"result": 0.5, "steps": []}"#);
    let s = stub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let s = s.clone();
            tokio::spawn(async move { serve(s, sock).await });
        }
    });
    (stub, url)
}

async fn serve(stub: Arc<Stub>, mut sock: tokio::net::TcpStream) {
    // One request per connection (we answer with connection: close).
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head, body) = loop {
        let Ok(n) = sock.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break (text[..end].to_string(), text[end + 4..end + 4 + len].to_string());
            }
        }
    };
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    let auth = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("authorization:")
                .then(|| l[14..].trim().to_string())
        })
        .unwrap_or_default();
    stub.requests.lock().unwrap().push((path.clone(), auth, body.clone()));
    let now = stub.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stub.max_in_flight.fetch_max(now, Ordering::SeqCst);

    let scripted = stub.script.lock().unwrap().pop_front();
    let responder = stub.responder.lock().unwrap().clone();
    let mut reply = scripted.unwrap_or_else(|| {
        if path.ends_with("/embeddings") {
            Reply::Json(embeddings_for(&body))
        } else if let Some(f) = responder {
            f(&serde_json::from_str(&body).unwrap_or_default())
        } else {
            Reply::Json(stub.default_chat.lock().unwrap().clone())
        }
    });
    loop {
        match reply {
            Reply::Slow(delay, inner) => {
                tokio::time::sleep(delay).await;
                reply = *inner;
            }
            Reply::Gated(inner) => {
                let counted = GatedGuard::enter(&stub);
                let mut probe = [0u8; 1];
                loop {
                    let opened = stub.gate.notified();
                    if stub.gate_open.load(Ordering::SeqCst) {
                        break;
                    }
                    tokio::select! {
                        () = opened => {}
                        // The client hung up (EOF or reset): it dropped the request.
                        _ = sock.read(&mut probe) => {
                            drop(counted);
                            stub.dropped.fetch_add(1, Ordering::SeqCst);
                            stub.arrived.notify_waiters();
                            stub.in_flight.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                    }
                }
                drop(counted);
                reply = *inner;
            }
            _ => break,
        }
    }
    let request: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let streamed = request["stream"] == true;
    let include_usage = request["stream_options"]["include_usage"] == true;
    let response = match reply {
        Reply::Json(body) if streamed => {
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
                .await;
            for frame in sse_frames(&body, include_usage, true) {
                // Halves, so a reader sees frames split across reads.
                let (a, b) = frame.as_bytes().split_at(frame.len() / 2);
                for part in [a, b] {
                    let _ = sock.write_all(part).await;
                    let _ = sock.flush().await;
                }
            }
            String::new()
        }
        Reply::Cut(body) => {
            let mut out = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n".to_string();
            out.extend(sse_frames(&body, include_usage, false));
            out
        }
        Reply::Json(body) | Reply::Whole(body) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
        Reply::Status(code, retry) => {
            let extra = retry.map(|s| format!("retry-after: {s}\r\n")).unwrap_or_default();
            format!("HTTP/1.1 {code} Error\r\n{extra}content-length: 5\r\nconnection: close\r\n\r\nerror")
        }
        Reply::Malformed => {
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{\"choices".into()
        }
        Reply::Slow(..) | Reply::Gated(..) => unreachable!(),
    };
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
    stub.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// A chat completion body as `chat.completion.chunk` frames: the role, the
/// content three characters a chunk, a refusal, each tool call in two
/// pieces, the finish reason, the usage when asked for, and `[DONE]`.
/// Without `complete`, only the role and the content's first chunk.
pub fn sse_frames(body: &str, include_usage: bool, complete: bool) -> Vec<String> {
    use serde_json::json;
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let choice = &v["choices"][0];
    let message = &choice["message"];
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut chunks = vec![chunk(json!({"role": "assistant", "content": ""}), json!(null))];
    let content: Vec<char> = message["content"].as_str().unwrap_or_default().chars().collect();
    for piece in content.chunks(3) {
        chunks.push(chunk(json!({"content": piece.iter().collect::<String>()}), json!(null)));
        if !complete {
            return chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
        }
    }
    if let Some(refusal) = message["refusal"].as_str() {
        chunks.push(chunk(json!({"refusal": refusal}), json!(null)));
    }
    for (i, call) in message["tool_calls"].as_array().into_iter().flatten().enumerate() {
        let args = call["function"]["arguments"].as_str().unwrap_or_default();
        let (a, b) = args.split_at(args.len() / 2);
        chunks.push(chunk(
            json!({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                   "function": {"name": call["function"]["name"], "arguments": a}}]}),
            json!(null),
        ));
        chunks.push(chunk(
            json!({"tool_calls": [{"index": i, "function": {"arguments": b}}]}),
            json!(null),
        ));
    }
    chunks.push(chunk(json!({}), choice["finish_reason"].clone()));
    if include_usage && v["usage"].is_object() {
        chunks.push(json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": v["usage"]}));
    }
    let mut frames: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    frames.push("data: [DONE]\n\n".into());
    frames
}

/// Counts a request waiting at the gate, until it passes or is dropped.
struct GatedGuard<'a>(&'a Stub);

impl<'a> GatedGuard<'a> {
    fn enter(stub: &'a Stub) -> Self {
        stub.gated.fetch_add(1, Ordering::SeqCst);
        stub.arrived.notify_waiters();
        GatedGuard(stub)
    }
}

impl Drop for GatedGuard<'_> {
    fn drop(&mut self) {
        self.0.gated.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Deterministic vectors: [len, vowels, 1] per input text.
fn embeddings_for(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let inputs: Vec<String> = v["input"]
        .as_array()
        .map(|a| a.iter().map(|x| x.as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default();
    let data: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let vowels = t.chars().filter(|c| "aeiou".contains(*c)).count();
            serde_json::json!({"object": "embedding", "index": i, "embedding": [t.len() as f64, vowels as f64, 1.0]})
        })
        .collect();
    serde_json::json!({"object": "list", "data": data, "usage": {"prompt_tokens": 3, "total_tokens": 3}}).to_string()
}
