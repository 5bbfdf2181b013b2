//! Faults of the parts Lathe runs on, with real `lathe` processes training
//! the tiny model: Postgres restarted mid-job (a cluster of the test's own,
//! stopped at once and started again), the object store (moto) out of
//! reach for a minute, a worker cut off from the database while another
//! takes its job over, and a database that does not answer at start-up.
//! Work waits and goes on by itself, gRPC health names the dependency that
//! is down while it is, the job's events say what happened, and nothing is
//! lost or written twice: every event once, in order, and the adapter equal
//! to an uninterrupted run's.
//!
//! Network faults go through `Proxy`, a TCP relay the test can cut: the
//! far side looks down (connections reset, new ones refused at once).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::moto::Moto;
use crate::common::process::LatheProcess;
use crate::common::*;
use lathe::proto::{
    self, DatasetPurpose, JobState, eval_service_client::EvalServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, model_service_client::ModelServiceClient,
    watch_job_response::Payload,
};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::health_check_response::ServingStatus;

const BUCKET: &str = "lathe-faults";

/// A TCP relay to `target` that the test can cut and restore.
struct Proxy {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let live: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (d, l) = (down.clone(), live.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if d.load(Ordering::SeqCst) {
                    // Closed at once: nobody is there.
                    drop(inbound);
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut live = l.lock().unwrap();
                live.retain(|h| !h.is_finished());
                live.push(relay.abort_handle());
            }
        });
        Proxy { addr, down, live, task }
    }

    /// Drops every connection through the relay and refuses new ones.
    fn cut(&self) {
        self.down.store(true, Ordering::SeqCst);
        for relay in self.live.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn restore(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// A Postgres cluster of the test's own on a free port, so that stopping
/// it disturbs no other test. Run as the `postgres` user when the test
/// runs as root (initdb refuses root).
struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Cluster {
    /// None (after a notice) where Postgres' server programs are missing;
    /// CI has them.
    fn start() -> Option<Cluster> {
        let bin = Command::new("pg_config").arg("--bindir").output().ok().and_then(|o| {
            let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            dir.join("initdb").exists().then_some(dir)
        });
        let Some(bin) = bin else {
            assert!(std::env::var("CI").is_err(), "CI must have Postgres' initdb and pg_ctl");
            eprintln!("skipping: no initdb (pg_config --bindir)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster { dir, bin, port };
        if cluster.as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = cluster.data();
        cluster.run("initdb", &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8"]);
        cluster.pg_ctl_start();
        Some(cluster)
    }

    fn as_root(&self) -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut command = if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = command.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &options, "-l", &log, "-w", "start"],
        );
    }

    /// A crash: every connection dropped, nothing shut down cleanly.
    fn kill(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "-w", "stop"]);
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(if self.as_root() { "runuser" } else { "true" })
            .args(if self.as_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .output();
    }
}

/// The tiny model under `dir` and the common arguments of a process whose
/// leases last `lease` seconds.
fn args(role: &[&str], dir: &Path, data: &str, database: &str, lease: u64) -> Vec<String> {
    let models = dir.join("models");
    if !models.join("tiny").exists() {
        lathe_engine::tiny::write_tiny_model(&models.join("tiny"), 2, 32, 1).unwrap();
    }
    let mut args: Vec<String> = role.iter().map(|s| s.to_string()).collect();
    for (flag, value) in [
        ("--data-dir", dir.join(data).display().to_string()),
        ("--database-url", database.to_string()),
        ("--model-root", models.display().to_string()),
        ("--job-poll-millis", "250".into()),
        ("--job-lease-secs", lease.to_string()),
        ("--health-check-secs", "1".into()),
        (
            "--secrets-key",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff".into(),
        ),
    ] {
        args.push(flag.into());
        args.push(value);
    }
    args
}

/// Registers the tiny model and uploads a training file of `rows` through
/// `url`; returns the training dataset's id.
async fn set_up(url: &str, dir: &Path, rows: usize) -> String {
    let channel = connect(url, ADMIN_KEY).await;
    ModelServiceClient::new(channel.clone())
        .register_model(proto::RegisterModelRequest {
            name: "tiny".into(),
            path: dir.join("models/tiny").display().to_string(),
        })
        .await
        .unwrap();
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(channel);
    upload_bytes(
        &mut datasets,
        "train.jsonl",
        DatasetPurpose::Sft,
        "",
        word_lines(rows).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap()
    .id
}

/// A job of `epochs` on the tiny model; every such job ends with the same
/// adapter, however it was interrupted.
async fn create_job(url: &str, train: &str, epochs: i64) -> String {
    let auto = |n| {
        Some(proto::AutoInt {
            value: Some(proto::auto_int::Value::Number(n)),
        })
    };
    FineTuningServiceClient::new(connect(url, ADMIN_KEY).await)
        .create_job(proto::CreateJobRequest {
            base_model: "tiny".into(),
            training_dataset_id: train.into(),
            suffix: "faults".into(),
            seed: Some(5),
            method: Some(proto::FineTuningMethod {
                method: Some(proto::fine_tuning_method::Method::Supervised(proto::SupervisedMethod {
                    n_epochs: auto(epochs),
                    batch_size: auto(4),
                    learning_rate_multiplier: Some(proto::AutoDouble {
                        value: Some(proto::auto_double::Value::Number(10.0)),
                    }),
                })),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id
}

/// An eval of `rows` items (exact match of the tiny model's answer) and a
/// run of it on the tiny model, through `url`; returns the run's id.
async fn start_eval_run(url: &str, rows: usize) -> String {
    let channel = connect(url, ADMIN_KEY).await;
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(channel.clone());
    let items = upload_bytes(
        &mut datasets,
        "items.jsonl",
        DatasetPurpose::Eval,
        "",
        word_lines(rows).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap()
    .id;
    let mut evals = EvalServiceClient::new(channel);
    let eval = evals
        .create_eval(exact_match_eval("{{ item.messages[1].content }}"))
        .await
        .unwrap()
        .into_inner()
        .eval
        .unwrap();
    evals
        .create_eval_run(model_run(
            &eval.id,
            &items,
            "tiny",
            "{{ item.messages[0].content }}",
            8,
            2,
        ))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
        .id
}

/// Follows a server stream through `url` until `next` says how it ended,
/// opening it again with `open` (from the cursor the caller keeps) when an
/// outage breaks it or the server cannot be reached yet.
async fn follow<T, R>(
    url: &str,
    mut open: impl FnMut(
        lathe::client::Channel,
    )
        -> futures::future::BoxFuture<'static, Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
    mut next: impl FnMut(T) -> Option<R>,
) -> R {
    let deadline = Instant::now() + Duration::from_secs(600);
    let pause = || tokio::time::sleep(Duration::from_millis(500));
    loop {
        assert!(
            Instant::now() < deadline,
            "{url}: the watch did not end within 10 minutes"
        );
        let Ok(channel) = tonic::transport::Channel::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
        else {
            pause().await;
            continue;
        };
        let Ok(stream) = open(lathe::client::Channel::new(channel, Some(ADMIN_KEY)).unwrap()).await else {
            pause().await;
            continue;
        };
        let mut stream = stream.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    if let Some(ended) = next(msg) {
                        return ended;
                    }
                }
                Ok(None) => panic!("a watch ended without its terminal message"),
                Err(_) => {
                    pause().await;
                    break;
                }
            }
        }
    }
}

/// An eval run's progress through `url` until it ends: the sequence
/// numbers seen, and the run as it ended.
async fn watch_run(url: &str, id: &str) -> (Vec<u64>, proto::EvalRun) {
    let cursor = AtomicU64::new(0);
    let mut seqs = Vec::new();
    let open = |channel| {
        let request = proto::WatchEvalRunRequest {
            run_id: id.to_string(),
            after_seq: cursor.load(Ordering::SeqCst),
        };
        Box::pin(async move { EvalServiceClient::new(channel).watch_eval_run(request).await }) as _
    };
    let run = follow(url, open, |msg: proto::WatchEvalRunResponse| {
        match msg.payload.unwrap() {
            proto::watch_eval_run_response::Payload::Progress(p) => {
                cursor.store(p.seq, Ordering::SeqCst);
                seqs.push(p.seq);
                None
            }
            proto::watch_eval_run_response::Payload::End(run) => Some(run),
        }
    })
    .await;
    (seqs, run)
}

/// A job's events from `seen` on, through `url`, as they come, until
/// `until` says so or the job ends (then its end too).
async fn watch(
    url: &str,
    id: &str,
    seen: &mut Vec<proto::JobEvent>,
    mut until: impl FnMut(&proto::JobEvent) -> bool,
) -> Option<proto::Job> {
    let cursor = AtomicU64::new(seen.last().map_or(0, |e| e.seq));
    let open = |channel| {
        let request = proto::WatchJobRequest {
            job_id: id.to_string(),
            after_seq: cursor.load(Ordering::SeqCst),
        };
        Box::pin(async move { FineTuningServiceClient::new(channel).watch_job(request).await }) as _
    };
    follow(url, open, |msg: proto::WatchJobResponse| match msg.payload.unwrap() {
        Payload::Event(e) => {
            cursor.store(e.seq, Ordering::SeqCst);
            let stop = until(&e);
            seen.push(e);
            stop.then_some(None)
        }
        Payload::End(end) => Some(end.job),
    })
    .await
}

fn messages(events: &[proto::JobEvent]) -> String {
    events
        .iter()
        .map(|e| format!("{} {}", e.seq, e.message))
        .collect::<Vec<_>>()
        .join("\n")
}

fn step_of(e: &proto::JobEvent) -> Option<u64> {
    match &e.data {
        Some(proto::job_event::Data::Metrics(m)) => Some(m.step),
        _ => None,
    }
}

/// Every event once, in order; each stretch of training (from the start or
/// a resume) reports consecutive steps: a runner that lost its job wrote
/// nothing after.
fn assert_whole(events: &[proto::JobEvent]) {
    let log = messages(events);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "events have gaps or repeats:\n{log}");
    }
    let mut last: Option<u64> = None;
    for e in events {
        if e.message.starts_with("resuming from checkpoint step ") {
            last = e.message.rsplit(' ').next().and_then(|s| s.parse().ok());
        }
        if let Some(step) = step_of(e) {
            assert_eq!(
                step,
                last.map_or(1, |s| s + 1),
                "steps out of order at event {}:\n{log}",
                e.seq
            );
            last = Some(step);
        }
    }
}

fn state(job: &Option<proto::Job>) -> i32 {
    job.as_ref().map_or(-1, |j| j.state)
}

/// Follows the job to its end after the fault: it succeeded, its events
/// are whole and say `what` happened, and health says `service` is back.
async fn after_the_fault(
    server: &LatheProcess,
    job: &str,
    events: &mut Vec<proto::JobEvent>,
    what: &str,
    service: &str,
) {
    let end = watch(&server.url, job, events, |_| false).await;
    let log = messages(events);
    assert_eq!(state(&end), JobState::Succeeded as i32, "{log}\n{}", server.log());
    assert_whole(events);
    assert!(log.contains(what), "{log}");
    server
        .health_becomes(service, ServingStatus::Serving, Duration::from_secs(15))
        .await;
}

/// The adapter of the same job run without a fault (through `url`).
async fn calm_adapter(url: &str, database: &str, train: &str, epochs: i64) -> String {
    let calm = create_job(url, train, epochs).await;
    let mut events = Vec::new();
    let end = watch(url, &calm, &mut events, |_| false).await;
    assert_eq!(state(&end), JobState::Succeeded as i32, "{}", messages(&events));
    final_adapter(database, &calm).await
}

/// The adapter of the job's last checkpoint: its bytes' sha256, from the
/// store's records.
async fn final_adapter(database: &str, id: &str) -> String {
    let store = lathe::store::open(database).await.unwrap();
    let ckpts = store.list_checkpoints(id, None, 1).await.unwrap();
    let file = ckpts[0]
        .files
        .iter()
        .find(|f| f.name == "adapter_model.safetensors")
        .unwrap();
    file.sha256.clone()
}

/// Postgres crashes mid-training, with an eval run in flight too, and is
/// back 10 s later, within their leases (20 s). The job waits, says so, and
/// ends as an uninterrupted one does; the run records every item once, in
/// order; health reported the database down meanwhile. (An outage longer
/// than the lease hands the job to the next claim: the last test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rides_out_a_postgres_restart() {
    let Some(cluster) = Cluster::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = cluster.url();
    let server = LatheProcess::start("server", &args(&["serve"], dir.path(), "data", &db, 20), &[]).await;
    assert_eq!(server.health("lathe.database").await, ServingStatus::Serving);
    let train = set_up(&server.url, dir.path(), 24).await;
    let job = create_job(&server.url, &train, 30).await;
    let mut events = Vec::new();
    let early = watch(&server.url, &job, &mut events, |e| {
        e.message.starts_with("checkpoint saved")
    })
    .await;
    assert!(early.is_none(), "the job ended before the fault: {}", messages(&events));
    // An eval run in flight too: it waits as well, and records every item once.
    let run = start_eval_run(&server.url, 200).await;
    let run_url = server.url.clone();
    let run_id = run.clone();
    let run_watch = tokio::spawn(async move { watch_run(&run_url, &run_id).await });
    let mut evals = EvalServiceClient::new(server.channel().await);
    let in_flight = loop {
        let r = evals
            .get_eval_run(proto::GetEvalRunRequest { id: run.clone() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        let ended = ![
            proto::EvalRunState::Queued as i32,
            proto::EvalRunState::InProgress as i32,
        ]
        .contains(&r.state);
        if r.completed > 0 || ended {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(in_flight.state, proto::EvalRunState::InProgress as i32, "{in_flight:?}");

    cluster.kill();
    let down = Instant::now();
    server
        .health_becomes("lathe.database", ServingStatus::NotServing, Duration::from_secs(15))
        .await;
    assert_eq!(
        server.health("").await,
        ServingStatus::Serving,
        "the server itself is alive"
    );
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    cluster.pg_ctl_start();

    after_the_fault(
        &server,
        &job,
        &mut events,
        "the database could not be reached for",
        "lathe.database",
    )
    .await;
    let (seqs, run) = run_watch.await.unwrap();
    assert_eq!(run.state, proto::EvalRunState::Completed as i32, "{run:?}");
    assert_eq!(seqs, (1..=200).collect::<Vec<u64>>(), "every item once, in order");

    // The same job without a fault ends with the same adapter.
    assert_eq!(
        final_adapter(&db, &job).await,
        calm_adapter(&server.url, &db, &train, 30).await
    );
}

/// The object store is out of reach for a minute mid-training: the job
/// says so, waits, and ends as an uninterrupted one does; health reported
/// the object store down meanwhile; the bucket holds only what records use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rides_out_the_object_store_out_of_reach_for_a_minute() {
    let Some(moto) = Moto::start().await else { return };
    moto.create_bucket(BUCKET).await;
    let target = moto.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(target).await;
    let mut env = moto.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", format!("http://{}", proxy.addr)));
    env.push(("LATHE_BLOB_URL", format!("s3://{BUCKET}/faults")));
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("lathe.db").display());
    let server = LatheProcess::start("server", &args(&["serve"], dir.path(), "data", &db, 6), &env).await;
    let train = set_up(&server.url, dir.path(), 24).await;
    let job = create_job(&server.url, &train, 30).await;
    let mut events = Vec::new();
    let early = watch(&server.url, &job, &mut events, |e| {
        e.message.starts_with("checkpoint saved")
    })
    .await;
    assert!(early.is_none(), "the job ended before the fault: {}", messages(&events));

    proxy.cut();
    let cut = Instant::now();
    server
        .health_becomes("lathe.object_store", ServingStatus::NotServing, Duration::from_secs(15))
        .await;
    assert_eq!(server.health("lathe.database").await, ServingStatus::Serving);
    let scraped = reqwest::get(format!("{}/metrics", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"lathe_dependency_up{dependency="object_store"} 0"#,
        r#"lathe_dependency_up{dependency="database"} 1"#,
    ] {
        assert!(scraped.lines().any(|l| l == line), "{line} in {scraped}");
    }
    // The next checkpoint meets the outage, and the job's log says so while
    // it lasts.
    let early = watch(&server.url, &job, &mut events, |e| {
        e.message
            .starts_with("the object store cannot be reached while saving the checkpoint")
    })
    .await;
    assert!(early.is_none(), "{}", messages(&events));
    assert!(cut.elapsed() < Duration::from_secs(60), "{}", messages(&events));
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(cut.elapsed())).await;
    proxy.restore();

    after_the_fault(
        &server,
        &job,
        &mut events,
        "the object store could not be reached for",
        "lathe.object_store",
    )
    .await;

    assert_eq!(
        final_adapter(&db, &job).await,
        calm_adapter(&server.url, &db, &train, 30).await
    );

    // Nothing in the bucket that no record uses, nothing left staged.
    let store = lathe::store::open(&db).await.unwrap();
    let in_use = store.blobs_in_use().await.unwrap();
    for key in moto.objects(BUCKET).await {
        let sha = key.strip_prefix("faults/blobs/sha256/").map(|rest| &rest[3..]);
        assert!(
            sha.is_some_and(|sha| in_use.iter().any(|u| u == sha)),
            "orphaned object {key}"
        );
    }
}

/// A worker cut off from the database mid-job: its lease runs out, another
/// worker resumes the job from its checkpoint, and when the first one can
/// reach the database again it stops without writing into the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_database_loses_its_job_and_writes_nothing_after() {
    let Some(db) = TestDatabase::create().await else { return };
    let (host, _) = db
        .url
        .split_once("://")
        .unwrap()
        .1
        .split_once('@')
        .unwrap()
        .1
        .split_once('/')
        .unwrap();
    let target: SocketAddr = tokio::net::lookup_host(host).await.unwrap().next().unwrap();
    let proxy = Proxy::start(target).await;
    let through_proxy = db.url.replacen(host, &proxy.addr.to_string(), 1);
    let dir = tempfile::tempdir().unwrap();
    let api = LatheProcess::start(
        "api",
        &args(&["serve", "--role", "api"], dir.path(), "data", &db.url, 6),
        &[],
    )
    .await;
    let cut_off = LatheProcess::start(
        "cut-off worker",
        &args(&["worker"], dir.path(), "data", &through_proxy, 6),
        &[],
    )
    .await;
    let train = set_up(&api.url, dir.path(), 48).await;
    let job = create_job(&api.url, &train, 50).await;
    let mut events = Vec::new();
    let early = watch(&api.url, &job, &mut events, |e| {
        e.message.starts_with("checkpoint saved")
    })
    .await;
    assert!(early.is_none(), "the job ended before the fault: {}", messages(&events));
    let first = cut_off.worker_id();
    assert!(messages(&events).contains(&format!("running on worker {first}")));

    proxy.cut();
    cut_off
        .health_becomes("lathe.database", ServingStatus::NotServing, Duration::from_secs(15))
        .await;
    let other = LatheProcess::start("other worker", &args(&["worker"], dir.path(), "data", &db.url, 6), &[]).await;
    let second = other.worker_id();
    let early = watch(&api.url, &job, &mut events, |e| {
        e.message.contains(&format!("running on worker {second}"))
    })
    .await;
    assert!(early.is_none(), "{}", messages(&events));
    // The first worker is back while the second trains: its next write is
    // refused, and it stops.
    proxy.restore();
    let back = Instant::now();
    while !cut_off.log().contains("no longer holds the") {
        assert!(back.elapsed() < Duration::from_secs(30), "{}", cut_off.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let end = watch(&api.url, &job, &mut events, |_| false).await;
    let log = messages(&events);
    assert_eq!(state(&end), JobState::Succeeded as i32, "{log}");
    assert_whole(&events);
    assert!(
        log.contains("stopped responding; re-queued to resume from checkpoint step"),
        "{log}"
    );

    assert_eq!(
        final_adapter(&db.url, &job).await,
        calm_adapter(&api.url, &db.url, &train, 50).await
    );
    drop((api, cut_off, other));
    db.drop().await;
}

/// A database nobody answers at stops start-up, naming the setting and not
/// the password.
#[tokio::test]
async fn an_unreachable_database_stops_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_lathe"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args([
            "--database-url",
            &format!("postgres://lathe:hunter2@127.0.0.1:{port}/lathe"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--database-url (LATHE_DATABASE_URL) postgres://lathe:<redacted>@127.0.0.1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}
