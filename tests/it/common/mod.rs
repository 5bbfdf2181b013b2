//! A real server on 127.0.0.1:0 per test, and clients for it.
#![allow(dead_code)]

pub mod moto;
pub mod openai_stub;
pub mod process;
pub mod scripted;

use std::path::{Path, PathBuf};

pub use lathe::client::Channel;
use lathe::config::ServeConfig;
use lathe::proto::{self, dataset_service_client::DatasetServiceClient, upload_dataset_request};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// The admin key every test server is started with (`default` project).
pub const ADMIN_KEY: &str = "sk-lathe-test-admin-0123456789abcdef0123456789abcdef";

/// A client connection to `url` with `key`.
pub async fn connect(url: &str, key: &str) -> Channel {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    Channel::new(channel, Some(key)).unwrap()
}

/// A connection to a `lathe serve` child on loopback, with the admin key it
/// wrote into `data_dir` on its first start.
pub async fn connect_local(url: &str, data_dir: &Path) -> Channel {
    let key = lathe::auth::read_key_file(&data_dir.join(lathe::auth::ADMIN_KEY_FILE)).expect("admin.key");
    connect(url, &key).await
}

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub config: ServeConfig,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(ServeConfig::embedded(data_dir)).await
    }

    pub async fn start_with(config: ServeConfig) -> Self {
        Self::start_full(config, lathe::app::Engine::Embedded).await
    }

    pub async fn start_with_trainer(data_dir: &Path, trainer: scripted::ScriptedTrainer) -> Self {
        let mut config = ServeConfig::embedded(data_dir);
        config.job_poll_millis = 50;
        Self::start_full(config, lathe::app::Engine::Custom(Some(std::sync::Arc::new(trainer)))).await
    }

    pub async fn start_full(mut config: ServeConfig, engine: lathe::app::Engine) -> Self {
        if config.admin_key.is_none() {
            config.admin_key = Some(lathe::config::Secret(ADMIN_KEY.to_string()));
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(lathe::server::run_with(listener, config.clone(), engine, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            config,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The server's address as a URL: `https://localhost:PORT` when it
    /// serves TLS (the name its test certificate is for).
    pub fn url(&self) -> String {
        if self.config.tls.tls_cert.is_some() {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// A connection with the admin key of the `default` project.
    pub async fn channel(&self) -> Channel {
        // The listener is bound before `start` returns, so connecting cannot
        // race the server: no sleeps or retries needed.
        connect(&self.url(), self.admin_key()).await
    }

    pub fn admin_key(&self) -> &str {
        self.config.admin_key.as_ref().map_or(ADMIN_KEY, |k| k.0.as_str())
    }

    /// A connection with `key`.
    pub async fn channel_with(&self, key: &str) -> Channel {
        connect(&self.url(), key).await
    }

    pub async fn datasets(&self) -> DatasetServiceClient<Channel> {
        DatasetServiceClient::new(self.channel().await)
    }

    /// Waits until the server returns on its own (a worker started for one
    /// job), without signalling it to stop.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.task.take().expect("running").await.expect("server task")
    }

    /// Signals shutdown without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals shutdown and waits until the server has drained and returned.
    pub async fn stop(mut self) {
        self.signal_stop();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server run");
        }
    }
}

/// A file under tests/fixtures, or under data/ for names starting "banking77/".
pub fn fixture(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if name.starts_with("banking77/") {
        root.join("data").join(name)
    } else {
        root.join("tests/fixtures").join(name)
    }
}

pub fn metadata_message(
    filename: &str,
    purpose: proto::DatasetPurpose,
    label_field: &str,
) -> proto::UploadDatasetRequest {
    proto::UploadDatasetRequest {
        payload: Some(upload_dataset_request::Payload::Metadata(
            proto::UploadDatasetMetadata {
                filename: filename.to_string(),
                purpose: purpose as i32,
                display_name: String::new(),
                metadata: [("source".to_string(), "test".to_string())].into(),
                label_field: label_field.to_string(),
            },
        )),
    }
}

pub fn chunk_message(bytes: &[u8]) -> proto::UploadDatasetRequest {
    proto::UploadDatasetRequest {
        payload: Some(upload_dataset_request::Payload::Chunk(bytes.to_vec().into())),
    }
}

/// An upload fed message by message: its metadata is sent, and the call
/// is running. The channel holds one message, so each `send` returns only
/// once the call has taken the message before it.
pub async fn start_upload(
    mut client: DatasetServiceClient<Channel>,
    filename: &str,
    purpose: proto::DatasetPurpose,
) -> (
    tokio::sync::mpsc::Sender<proto::UploadDatasetRequest>,
    JoinHandle<Result<tonic::Response<proto::UploadDatasetResponse>, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(metadata_message(filename, purpose, "")).await.unwrap();
    let call = tokio::spawn(async move {
        client
            .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    (tx, call)
}

/// Uploads `bytes` in chunks of `chunk` bytes.
pub async fn upload_bytes(
    client: &mut DatasetServiceClient<Channel>,
    filename: &str,
    purpose: proto::DatasetPurpose,
    label_field: &str,
    bytes: &[u8],
    chunk: usize,
) -> Result<proto::Dataset, tonic::Status> {
    let mut messages = vec![metadata_message(filename, purpose, label_field)];
    messages.extend(bytes.chunks(chunk.max(1)).map(chunk_message));
    let response = client.upload_dataset(tokio_stream::iter(messages)).await?;
    Ok(response.into_inner().dataset.expect("dataset in response"))
}

pub async fn upload_fixture(
    client: &mut DatasetServiceClient<Channel>,
    name: &str,
    purpose: proto::DatasetPurpose,
    label_field: &str,
) -> proto::Dataset {
    let bytes = std::fs::read(fixture(name)).expect("read fixture");
    upload_bytes(client, name, purpose, label_field, &bytes, 64 << 10)
        .await
        .expect("upload")
}

pub async fn download_all(
    client: &mut DatasetServiceClient<Channel>,
    id: &str,
) -> (Vec<u8>, proto::DownloadDatasetEnd) {
    let mut stream = client
        .download_dataset(proto::DownloadDatasetRequest { id: id.to_string() })
        .await
        .expect("download")
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(msg) = stream.message().await.expect("download message") {
        match msg.payload.expect("payload") {
            proto::download_dataset_response::Payload::Chunk(c) => bytes.extend_from_slice(&c),
            proto::download_dataset_response::Payload::End(end) => {
                assert!(
                    stream.message().await.expect("after end").is_none(),
                    "end is the last message"
                );
                return (bytes, end);
            }
        }
    }
    panic!("download ended without its terminal message");
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Asserts that nothing is stored under `data_dir`'s blob directory: no
/// blob and nothing in staging.
pub fn assert_no_blobs(data_dir: &Path) {
    assert!(
        files_under(&data_dir.join("blobs")).is_empty(),
        "{:?}",
        files_under(data_dir)
    );
}

/// The one-word answers of the tiny SFT data sets ([`sft_lines`]).
pub const WORDS: [&str; 4] = ["alpha", "bravo", "charlie", "delta"];

/// `n` SFT lines that answer "item K" with `WORDS[K % 4]`, K counting from
/// `offset`: small enough for the tiny model to learn in a few epochs.
/// `n` rows of "item k" answered by one of `WORDS`, with no system message.
pub fn word_lines(n: usize) -> String {
    (0..n)
        .map(|k| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("item {}", k % 4)},
                {"role": "assistant", "content": WORDS[k % 4]},
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

/// An eval "words" whose one criterion is an exact match of the sample
/// with `reference` (a template over the item).
pub fn exact_match_eval(reference: &str) -> proto::CreateEvalRequest {
    proto::CreateEvalRequest {
        name: "words".into(),
        testing_criteria: vec![proto::TestingCriterion {
            grader: Some(lathe::proto::json::struct_from_json(&serde_json::json!({
                "type": "string_check", "name": "exact", "operation": "eq",
                "input": "{{ sample.output_text }}", "reference": reference
            }))),
            pass_threshold: None,
            name: String::new(),
        }],
        ..Default::default()
    }
}

/// A run of `eval_id` on `dataset_id` sampled from the model `model`
/// (greedy, seeded), its one message's content from `content` (a template
/// over the item).
pub fn model_run(
    eval_id: &str,
    dataset_id: &str,
    model: &str,
    content: &str,
    max_tokens: u32,
    concurrency: u32,
) -> proto::CreateEvalRunRequest {
    proto::CreateEvalRunRequest {
        eval_id: eval_id.into(),
        dataset_id: dataset_id.into(),
        source: Some(proto::create_eval_run_request::Source::Model(proto::ModelSource {
            model: model.into(),
            input_messages: Some(prost_types::ListValue {
                values: vec![lathe::proto::json::value_from_json(
                    &serde_json::json!({"role": "user", "content": content}),
                )],
            }),
            sampling_params: Some(proto::EvalSamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(max_tokens),
                seed: Some(7),
                ..Default::default()
            }),
            ..Default::default()
        })),
        concurrency,
        ..Default::default()
    }
}

pub fn sft_lines(n: usize, offset: usize) -> String {
    (0..n)
        .map(|i| {
            let k = i + offset;
            serde_json::json!({"messages": [
                {"role": "system", "content": "Answer with one word."},
                {"role": "user", "content": format!("item {}", k % 4)},
                {"role": "assistant", "content": WORDS[k % 4]},
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

/// A hyperparameter set to `n`.
pub fn auto_int(n: i64) -> Option<proto::AutoInt> {
    Some(proto::AutoInt {
        value: Some(proto::auto_int::Value::Number(n)),
    })
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A job's checkpoints as ListCheckpoints pages them, newest first (the
/// first page, which holds them all in these tests).
pub async fn list_checkpoints(
    jobs: &mut proto::fine_tuning_service_client::FineTuningServiceClient<Channel>,
    job_id: &str,
) -> Vec<proto::Checkpoint> {
    jobs.list_checkpoints(proto::ListCheckpointsRequest {
        job_id: job_id.to_string(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .checkpoints
}

/// Runs the CLI against the server at `addr` with the test admin key.
pub fn lathe(addr: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
        .args(args)
        .env("LATHE_ADDR", addr)
        .env("LATHE_API_KEY", ADMIN_KEY)
        .output()
        .expect("run lathe")
}

/// A database of its own on the test Postgres server (LATHE_TEST_POSTGRES_URL),
/// for tests of several processes sharing one. Without that variable the
/// test is skipped, except under CI (CI=true), where it fails.
pub struct TestDatabase {
    pub url: String,
    server: String,
    name: String,
}

impl TestDatabase {
    pub async fn create() -> Option<Self> {
        let Ok(url) = std::env::var("LATHE_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("CI").is_err(),
                "LATHE_TEST_POSTGRES_URL must be set in CI so the replica tests run"
            );
            eprintln!("skipping: LATHE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let (server, _) = url.rsplit_once('/').expect("a database URL");
        let name = lathe::ids::new_id("lathe_it").to_lowercase();
        let admin = sqlx::PgPool::connect(&url).await.expect("connect to the test database");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create a database");
        admin.close().await;
        Some(Self {
            url: format!("{server}/{name}"),
            server: url.clone(),
            name,
        })
    }

    /// Drops the database (connections still open to it are closed).
    pub async fn drop(self) {
        let admin = sqlx::PgPool::connect(&self.server).await.expect("connect");
        sqlx::query(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .execute(&admin)
            .await
            .expect("drop the database");
        admin.close().await;
    }
}

/// `examples/scripted_server.rs` as a child process on `data_dir`: `steps`
/// steps of `step_millis`, leases of `lease_secs`, with `env` (its blob
/// store, say). Returns it and its URL once it listens.
pub fn scripted_server(
    data_dir: &Path,
    steps: u64,
    step_millis: u64,
    lease_secs: u64,
    env: &[(&str, String)],
) -> (std::process::Child, String) {
    use std::io::BufRead;
    // Tests run from target/<profile>/deps; examples sit in target/<profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(format!("scripted_server{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} missing: cargo test builds examples", bin.display());
    let mut child = std::process::Command::new(bin)
        .arg(data_dir)
        .args([steps, step_millis, lease_secs].map(|n| n.to_string()))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();
    (child, format!("http://{addr}"))
}
