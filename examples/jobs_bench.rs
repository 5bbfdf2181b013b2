//! Job event fan-out and read latency, measured from a second process.
//!
//!     cargo build --release --examples
//!     target/release/examples/jobs_bench [STEPS]
//!
//! 1. The plain SQLite write path on this machine: one INSERT per
//!    transaction (WAL, synchronous=NORMAL, as Lathe opens it), and Lathe's
//!    own event append (sequence bump + insert in one transaction).
//! 2. A `scripted_server` process (release, test-only trainer with no
//!    per-step delay) runs a job of STEPS steps while W watchers follow it
//!    from this process: the job's own event rate, and events delivered per
//!    second to all watchers, for W = 0, 1, 50, 200 (one of them never reads).
//! 3. GetJob and ListJobs latency (p50/p99) from 32 concurrent clients, with
//!    the server idle and while a job runs.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lathe::client::Channel;
use lathe::proto::{
    self, DatasetPurpose, dataset_service_client::DatasetServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, upload_dataset_request, watch_job_response::Payload,
};

fn start_server(dir: &std::path::Path, steps: u64) -> (Child, String) {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().join("scripted_server");
    let mut child = Command::new(bin)
        .arg(dir)
        .args([steps.to_string().as_str(), "0", "15"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("scripted_server next to this binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap().to_string();
    (child, format!("http://{addr}"))
}

/// A connection with the admin key the server wrote into `dir`.
async fn connect(url: &str, dir: &std::path::Path) -> Channel {
    let key = lathe::auth::local_admin_key(dir).unwrap();
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    Channel::new(channel, Some(&key)).unwrap()
}

async fn sqlite_baseline(n: usize) -> (f64, f64) {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use std::str::FromStr;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("plain.db").display());
    let opts = SqliteConnectOptions::from_str(&url)
        .unwrap()
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
    sqlx::query("CREATE TABLE e (job TEXT, seq INTEGER, data TEXT, PRIMARY KEY (job, seq))")
        .execute(&pool)
        .await
        .unwrap();
    let t = Instant::now();
    for i in 0..n {
        sqlx::query("INSERT INTO e VALUES ('j', ?, '{\"step\":1,\"train_loss\":0.5}')")
            .bind(i as i64)
            .execute(&pool)
            .await
            .unwrap();
    }
    let plain = n as f64 / t.elapsed().as_secs_f64();

    let url = format!("sqlite://{}", dir.path().join("lathe.db").display());
    let store = lathe::store::open(&url).await.unwrap();
    let spec = serde_json::from_value(serde_json::json!({
        "base_model": "m", "training_dataset_id": "ds_x", "validation_dataset_id": null,
        "method": {"kind": "supervised", "hyperparameters": {}, "grader": null},
        "lora": {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["q_proj"]},
        "seed": 0, "suffix": "", "metadata": {}, "priority": 0, "early_stopping": null, "webhook": null
    }))
    .unwrap();
    let job =
        lathe::jobs::model::JobRecord::new("job_00000000000000000000000000".into(), "default".into(), spec, None, 0);
    let event = lathe::jobs::model::NewEvent::info("step");
    store.insert_job(&job, &event).await.unwrap();
    let t = Instant::now();
    for _ in 0..n {
        store.append_event(&job.id, &event, 1).await.unwrap();
    }
    (plain, n as f64 / t.elapsed().as_secs_f64())
}

async fn upload(channel: Channel) -> String {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sft_tools.jsonl")).unwrap();
    let msgs = vec![
        proto::UploadDatasetRequest {
            payload: Some(upload_dataset_request::Payload::Metadata(
                proto::UploadDatasetMetadata {
                    filename: "t.jsonl".into(),
                    purpose: DatasetPurpose::Sft as i32,
                    ..Default::default()
                },
            )),
        },
        proto::UploadDatasetRequest {
            payload: Some(upload_dataset_request::Payload::Chunk(bytes.into())),
        },
    ];
    DatasetServiceClient::new(channel)
        .upload_dataset(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap()
        .id
}

async fn create(channel: Channel, train: &str) -> String {
    FineTuningServiceClient::new(channel)
        .create_job(proto::CreateJobRequest {
            base_model: "tiny-test-model".into(),
            training_dataset_id: train.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id
}

async fn watch(channel: Channel, id: String) -> (usize, Instant) {
    let mut stream = FineTuningServiceClient::new(channel)
        .watch_job(proto::WatchJobRequest {
            job_id: id,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload {
            Some(Payload::Event(_)) => n += 1,
            Some(Payload::End(_)) => return (n, Instant::now()),
            None => {}
        }
    }
    panic!("no end")
}

/// The job's own rate: events over the time from its first to last event.
async fn job_rate(channel: Channel, id: &str) -> (u64, f64) {
    let mut client = FineTuningServiceClient::new(channel);
    let mut events = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_job_events(proto::ListJobEventsRequest {
                job_id: id.into(),
                page_size: 1000,
                page_token: token,
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let ts = |e: &proto::JobEvent| {
        let t = e.created_at.unwrap();
        t.seconds as f64 + t.nanos as f64 / 1e9
    };
    let span = ts(events.last().unwrap()) - ts(&events[2]);
    (events.len() as u64, (events.len() - 3) as f64 / span)
}

async fn wait_done(channel: Channel, id: &str) {
    watch(channel, id.to_string()).await;
}

async fn latency(channel: Channel, job: &str, clients: usize, secs: u64) -> (Vec<f64>, Vec<f64>) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let channel = channel.clone();
        let job = job.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = FineTuningServiceClient::new(channel);
            let (mut get, mut list) = (Vec::new(), Vec::new());
            let mut k = i;
            while Instant::now() < deadline {
                let t = Instant::now();
                if k % 2 == 0 {
                    client.get_job(proto::GetJobRequest { id: job.clone() }).await.unwrap();
                    get.push(t.elapsed().as_secs_f64() * 1e3);
                } else {
                    client
                        .list_jobs(proto::ListJobsRequest {
                            page_size: 20,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    list.push(t.elapsed().as_secs_f64() * 1e3);
                }
                k += 1;
            }
            (get, list)
        }));
    }
    let (mut get, mut list) = (Vec::new(), Vec::new());
    for t in tasks {
        let (g, l) = t.await.unwrap();
        get.extend(g);
        list.extend(l);
    }
    get.sort_by(|a, b| a.total_cmp(b));
    list.sort_by(|a, b| a.total_cmp(b));
    (get, list)
}

/// The server process's peak resident memory (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
            })
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let steps: u64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(3000);
    let (plain, lathe_append) = sqlite_baseline(5000).await;
    println!("plain SQLite write path: {plain:.0} inserts/s; Lathe append_event: {lathe_append:.0} events/s");

    println!(
        "| watchers | job events | job's own rate (events/s) | delivered (events/s, all watchers) | wall s | server peak RSS MB |"
    );
    println!("|---|---|---|---|---|---|");
    for watchers in [0usize, 1, 50, 200] {
        let dir = tempfile::tempdir().unwrap();
        let (mut server, url) = start_server(dir.path(), steps);
        let channel = connect(&url, dir.path()).await;
        let train = upload(channel.clone()).await;
        let t0 = Instant::now();
        let id = create(channel.clone(), &train).await;
        // One watcher on its own connection never reads.
        let stalled = if watchers > 0 {
            let own = connect(&url, dir.path()).await;
            let mut client = FineTuningServiceClient::new(own);
            Some(
                client
                    .watch_job(proto::WatchJobRequest {
                        job_id: id.clone(),
                        after_seq: 0,
                    })
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let mut tasks = Vec::new();
        for _ in 0..watchers.saturating_sub(1) {
            tasks.push(tokio::spawn(watch(channel.clone(), id.clone())));
        }
        let mut delivered = 0;
        let mut last = t0;
        for t in tasks {
            let (n, at) = t.await.unwrap();
            delivered += n;
            last = last.max(at);
        }
        if watchers <= 1 {
            wait_done(channel.clone(), &id).await;
            last = Instant::now();
        }
        let wall = last.duration_since(t0).as_secs_f64();
        let (n_events, own_rate) = job_rate(channel.clone(), &id).await;
        let rss = peak_rss_mb(server.id());
        drop(stalled);
        println!(
            "| {watchers} | {n_events} | {own_rate:.0} | {:.0} | {wall:.2} | {rss:.1} |",
            delivered as f64 / wall
        );
        server.kill().unwrap();
        server.wait().unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = start_server(dir.path(), steps * 3);
    let channel = connect(&url, dir.path()).await;
    let train = upload(channel.clone()).await;
    let mut client = FineTuningServiceClient::new(channel.clone());
    for _ in 0..50 {
        // Fill the table a little so ListJobs has pages to read.
        let id = create(channel.clone(), &train).await;
        client.cancel_job(proto::CancelJobRequest { id }).await.unwrap();
    }
    let idle_job = create(channel.clone(), &train).await;
    println!("| load | call | calls | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (label, busy) in [("job running", true), ("idle", false)] {
        if !busy {
            wait_done(channel.clone(), &idle_job).await;
        }
        let (get, list) = latency(channel.clone(), &idle_job, 32, 5).await;
        for (name, v) in [("GetJob", &get), ("ListJobs(20)", &list)] {
            println!(
                "| 32 clients, {label} | {name} | {} | {:.2} | {:.2} | {:.2} |",
                v.len(),
                pct(v, 0.5),
                pct(v, 0.99),
                v.last().unwrap()
            );
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
