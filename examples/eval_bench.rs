//! Eval throughput against an OpenAI-compatible endpoint with a fixed
//! latency (issue 6's benchmark).
//!
//! Starts a keep-alive HTTP/1.1 server that answers every chat completion
//! after exactly `--latency-ms` (in a child process: this same program with
//! `--endpoint MS`), then a Lathe server (SQLite, local blobs)
//! whose provider points at it, and runs one eval per concurrency level:
//! each item is rendered, sampled through the provider, graded with a
//! string_check and recorded in the store, and the run is watched to its
//! end over gRPC. For each level it then runs the Python peer
//! (`bench/eval_peer.py`: asyncio + aiohttp + a semaphore, the same
//! requests and the same string check, results kept in memory) against
//! the same server.
//!
//! ```sh
//! cargo run --release --example eval_bench -- --latency-ms 100 --seconds 5 \
//!     --python /path/to/venv/bin/python
//! ```
//! Prints one JSON object per (latency, concurrency, client).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lathe::proto::json::{struct_from_json, value_from_json};
use lathe::proto::{
    self, dataset_service_client::DatasetServiceClient, eval_service_client::EvalServiceClient, upload_dataset_request,
    watch_eval_run_response,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

struct Args {
    latencies: Vec<u64>,
    levels: Vec<u32>,
    seconds: f64,
    python: Option<String>,
    /// Serve only the endpoint, with this latency (the child process).
    endpoint: Option<u64>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        latencies: vec![],
        levels: vec![1, 16, 64, 256],
        seconds: 5.0,
        python: None,
        endpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow::anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--latency-ms" => a.latencies.push(value()?.parse()?),
            "--levels" => a.levels = value()?.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--seconds" => a.seconds = value()?.parse()?,
            "--python" => a.python = Some(value()?),
            "--endpoint" => a.endpoint = Some(value()?.parse()?),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    if a.latencies.is_empty() {
        a.latencies.push(100);
    }
    Ok(a)
}

/// The fixed-latency endpoint: every POST is answered after `latency`
/// with a chat completion whose content is the number in the prompt
/// ("what is 17" -> "17"), so every item passes; a GET answers how many
/// completions it has served.
async fn latency_server(latency: Duration) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let _ = sock.set_nodelay(true);
            let count = count.clone();
            tokio::spawn(async move {
                let (read, mut write) = sock.into_split();
                let mut reader = BufReader::new(read);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    let mut get = None;
                    // Request line and headers.
                    loop {
                        line.clear();
                        match reader.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        get.get_or_insert_with(|| line.starts_with("GET "));
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = l.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; length];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if get == Some(true) {
                        // GET: how many completions were served so far.
                        let reply = json!({"served": count.load(Ordering::Relaxed)}).to_string();
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", reply.len());
                        if write.write_all(format!("{head}{reply}").as_bytes()).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    tokio::time::sleep(latency).await;
                    let request: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let prompt = request["messages"][0]["content"].as_str().unwrap_or_default();
                    let answer = prompt.rsplit(' ').next().unwrap_or_default();
                    let reply = json!({
                        "id": "chatcmpl-bench", "object": "chat.completion",
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
                    })
                    .to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        reply.len()
                    );
                    count.fetch_add(1, Ordering::Relaxed);
                    if write.write_all(head.as_bytes()).await.is_err()
                        || write.write_all(reply.as_bytes()).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    Ok(url)
}

async fn upload(client: &mut DatasetServiceClient<lathe::client::Channel>, n: usize) -> anyhow::Result<String> {
    let bytes: String = (0..n)
        .map(|i| format!("{}\n", json!({"n": i, "answer": i.to_string()})))
        .collect();
    let mut messages = vec![proto::UploadDatasetRequest {
        payload: Some(upload_dataset_request::Payload::Metadata(
            proto::UploadDatasetMetadata {
                filename: format!("items-{n}.jsonl"),
                purpose: proto::DatasetPurpose::Eval as i32,
                ..Default::default()
            },
        )),
    }];
    messages.extend(bytes.as_bytes().chunks(256 << 10).map(|c| proto::UploadDatasetRequest {
        payload: Some(upload_dataset_request::Payload::Chunk(c.to_vec().into())),
    }));
    let d = client
        .upload_dataset(tokio_stream::iter(messages))
        .await?
        .into_inner()
        .dataset
        .ok_or_else(|| anyhow::anyhow!("no dataset"))?;
    Ok(d.id)
}

/// The endpoint in a process of its own, as a real one would be: its
/// runtime does not share Lathe's. Returns the child (killed when dropped)
/// and the endpoint's URL.
async fn spawn_endpoint(latency_ms: u64) -> anyhow::Result<(tokio::process::Child, String)> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--endpoint", &latency_ms.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut url = String::new();
    BufReader::new(stdout).read_line(&mut url).await?;
    anyhow::ensure!(url.starts_with("http://"), "the endpoint said {url:?}");
    Ok((child, url.trim().to_string()))
}

/// Completions the endpoint has served.
async fn served(url: &str) -> anyhow::Result<usize> {
    let v: Value = serde_json::from_slice(&reqwest::get(format!("{url}/count")).await?.bytes().await?)?;
    v["served"]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| anyhow::anyhow!("bad count {v}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    if let Some(latency_ms) = a.endpoint {
        let url = latency_server(Duration::from_millis(latency_ms)).await?;
        println!("{url}");
        std::future::pending::<()>().await;
    }
    for &latency_ms in &a.latencies {
        let latency = Duration::from_millis(latency_ms);
        let (_endpoint, url) = spawn_endpoint(latency_ms).await?;
        let dir = tempfile::tempdir()?;
        let providers = dir.path().join("providers.json");
        std::fs::write(
            &providers,
            json!([{"name": "bench", "base_url": url, "max_concurrency": 256, "timeout_secs": 60, "max_retries": 0}])
                .to_string(),
        )?;
        let mut config = lathe::config::ServeConfig::embedded(dir.path().join("data"));
        config.providers = Some(providers);
        let key = lathe::auth::local_admin_key(&dir.path().join("data"))?;
        config.admin_key = Some(lathe::config::Secret(key.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = format!("http://{}", listener.local_addr()?);
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let server = tokio::spawn(lathe::server::run_with(
            listener,
            config,
            lathe::app::Engine::Custom(None),
            async move { s.cancelled().await },
        ));
        let channel = loop {
            match tonic::transport::Endpoint::from_shared(addr.clone())?.connect().await {
                Ok(c) => break lathe::client::Channel::new(c, Some(&key))?,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let mut datasets = DatasetServiceClient::new(channel.clone());
        let mut evals = EvalServiceClient::new(channel);
        let eval_id = evals
            .create_eval(proto::CreateEvalRequest {
                name: "bench".into(),
                item_schema: None,
                testing_criteria: vec![proto::TestingCriterion {
                    grader: Some(struct_from_json(&json!({
                        "type": "string_check", "name": "exact", "operation": "eq",
                        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"
                    }))),
                    pass_threshold: None,
                    name: String::new(),
                }],
                metadata: Default::default(),
                ..Default::default()
            })
            .await?
            .into_inner()
            .eval
            .ok_or_else(|| anyhow::anyhow!("no eval"))?
            .id;
        for &c in &a.levels {
            let ideal = c as f64 / latency.as_secs_f64();
            // Enough items for about `seconds` at the ideal rate, and at
            // least 4 full waves of requests.
            let n = ((ideal * a.seconds) as usize).max(4 * c as usize);
            let dataset = upload(&mut datasets, n).await?;
            let before = served(&url).await?;
            let start = Instant::now();
            let run = evals
                .create_eval_run(proto::CreateEvalRunRequest {
                    eval_id: eval_id.clone(),
                    dataset_id: dataset,
                    source: Some(proto::create_eval_run_request::Source::Model(proto::ModelSource {
                        model: "bench/m".into(),
                        input_messages: Some(prost_types::ListValue {
                            values: vec![value_from_json(
                                &json!({"role": "user", "content": "what is {{ item.n }}"}),
                            )],
                        }),
                        sampling_params: Some(proto::EvalSamplingParams {
                            temperature: Some(0.0),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })),
                    concurrency: c,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .run
                .ok_or_else(|| anyhow::anyhow!("no run"))?;
            // Creating a run checks every item against the templates first.
            let create = start.elapsed().as_secs_f64();
            let mut end = None;
            let mut stream = evals
                .watch_eval_run(proto::WatchEvalRunRequest {
                    run_id: run.id.clone(),
                    after_seq: 0,
                })
                .await?
                .into_inner();
            while let Some(msg) = stream.message().await? {
                if let Some(watch_eval_run_response::Payload::End(run)) = msg.payload {
                    end = Some(run);
                }
            }
            let wall = start.elapsed().as_secs_f64();
            let run = end.ok_or_else(|| anyhow::anyhow!("the watch ended without the run"))?;
            let counts = run.result_counts.unwrap_or_default();
            anyhow::ensure!(counts.passed as usize == n, "expected {n} passed items, got {counts:?}");
            anyhow::ensure!(served(&url).await? - before == n, "one request per item");
            let rate = n as f64 / wall;
            println!(
                "{}",
                json!({"client": "lathe", "latency_ms": latency_ms, "concurrency": c, "items": n,
                       "wall_s": wall, "create_s": create, "items_per_s": rate, "ideal_items_per_s": ideal,
                       "of_ideal": rate / ideal})
            );
            if let Some(python) = &a.python {
                let out = tokio::process::Command::new(python)
                    .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/eval_peer.py"))
                    .args([
                        "--url",
                        &url,
                        "--concurrency",
                        &c.to_string(),
                        "--items",
                        &n.to_string(),
                    ])
                    .output()
                    .await?;
                anyhow::ensure!(
                    out.status.success(),
                    "the Python peer failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let mut peer: Value = serde_json::from_slice(&out.stdout)?;
                let rate = peer["items_per_s"].as_f64().unwrap_or(0.0);
                peer["latency_ms"] = json!(latency_ms);
                peer["ideal_items_per_s"] = json!(ideal);
                peer["of_ideal"] = json!(rate / ideal);
                println!("{peer}");
            }
        }
        stop.cancel();
        server.await??;
    }
    Ok(())
}
