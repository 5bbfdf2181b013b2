//! The scale-out proof: real `lathe` processes (two API replicas, two
//! workers) on one Postgres database and one S3 bucket (moto), each with a
//! data directory of its own, the embedded engine training a tiny model
//! uploaded into the bucket. Four SFT jobs and two eval runs are created
//! through both replicas and watched through both; one worker is killed -9
//! mid-training and one replica mid-watch. Every job and run ends well, no
//! watcher misses or repeats an event, every adapter in the bucket equals
//! an uninterrupted run's, and the bucket holds nothing no record uses.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::moto::Moto;
use crate::common::process::LatheProcess;
use crate::common::*;
use lathe::blobs::Blobs;
use lathe::proto::{
    self, DatasetPurpose, EvalRunState, JobState, eval_service_client::EvalServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, model_service_client::ModelServiceClient,
};
use lathe::store::Store;

const SECRETS_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const PATIENCE: Duration = Duration::from_secs(600);
/// Every process's blobs: `s3://BUCKET/PREFIX`.
const BUCKET: &str = "lathe-scale-out";
const PREFIX: &str = "proof";

fn sft_job(train: &str, valid: &str) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        base_model: "tiny".into(),
        training_dataset_id: train.into(),
        validation_dataset_id: valid.into(),
        suffix: "words".into(),
        seed: Some(3),
        method: Some(proto::FineTuningMethod {
            method: Some(proto::fine_tuning_method::Method::Supervised(proto::SupervisedMethod {
                n_epochs: auto_int(10),
                batch_size: auto_int(4),
                learning_rate_multiplier: Some(proto::AutoDouble {
                    value: Some(proto::auto_double::Value::Number(10.0)),
                }),
            })),
        }),
        ..Default::default()
    }
}

/// What one watcher saw: every event's (or item's) sequence number in the
/// order received, across reconnections.
#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    reconnects: usize,
}

/// What a watch's message says: the next sequence number, or the end.
enum Step<T> {
    Seq(u64),
    End(T),
}

/// Watches from the start on `urls[0]`; when that replica goes away, goes
/// on from the cursor on the next. `open` starts the watch on a connection
/// after a sequence number; `step` reads each message. Returns the end.
async fn watch<M, T, Fut>(
    urls: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    open: impl Fn(Channel, u64) -> Fut,
    step: fn(M) -> Step<T>,
) -> T
where
    Fut: Future<Output = Result<tonic::Response<tonic::Streaming<M>>, tonic::Status>>,
{
    let mut at = 0;
    loop {
        let url = &urls[at.min(urls.len() - 1)];
        let after_seq = seen.lock().unwrap().seqs.last().copied().unwrap_or(0);
        let mut stream = match open(connect(url, ADMIN_KEY).await, after_seq).await {
            Ok(s) => s.into_inner(),
            Err(_) => {
                at += 1;
                seen.lock().unwrap().reconnects += 1;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(msg)) => match step(msg) {
                    Step::Seq(seq) => seen.lock().unwrap().seqs.push(seq),
                    Step::End(end) => return end,
                },
                Ok(None) => panic!("a watch ended without its terminal message"),
                // The replica went away: go on from the cursor elsewhere.
                Err(_) => {
                    at += 1;
                    seen.lock().unwrap().reconnects += 1;
                    break;
                }
            }
        }
    }
}

/// [`watch`] on a job's events.
async fn watch_job(urls: Vec<String>, id: String, seen: Arc<Mutex<Seen>>) -> proto::Job {
    let open = move |channel, after_seq| {
        let job_id = id.clone();
        async move {
            let mut jobs = FineTuningServiceClient::new(channel);
            jobs.watch_job(proto::WatchJobRequest { job_id, after_seq }).await
        }
    };
    watch(urls, seen, open, |msg: proto::WatchJobResponse| {
        match msg.payload.unwrap() {
            proto::watch_job_response::Payload::Event(e) => Step::Seq(e.seq),
            proto::watch_job_response::Payload::End(end) => Step::End(end.job.unwrap()),
        }
    })
    .await
}

/// [`watch`] on an eval run's progress.
async fn watch_run(urls: Vec<String>, id: String, seen: Arc<Mutex<Seen>>) -> proto::EvalRun {
    let open = move |channel, after_seq| {
        let run_id = id.clone();
        async move {
            let mut evals = EvalServiceClient::new(channel);
            evals
                .watch_eval_run(proto::WatchEvalRunRequest { run_id, after_seq })
                .await
        }
    };
    watch(urls, seen, open, |msg: proto::WatchEvalRunResponse| {
        match msg.payload.unwrap() {
            proto::watch_eval_run_response::Payload::Progress(p) => Step::Seq(p.seq),
            proto::watch_eval_run_response::Payload::End(run) => Step::End(run),
        }
    })
    .await
}

/// A blob's object key in the bucket (`Blobs::address` under the prefix).
fn object_key(sha256: &str) -> String {
    format!("{PREFIX}/{}", Blobs::address(sha256))
}

/// The adapter of a job's last checkpoint, read from the bucket.
async fn final_adapter(store: &dyn Store, moto: &Moto, job: &str) -> Vec<u8> {
    let ckpts = store.list_checkpoints(job, None, 100).await.unwrap();
    let last = ckpts.iter().max_by_key(|c| c.step).unwrap();
    let file = last
        .files
        .iter()
        .find(|f| f.name == "adapter_model.safetensors")
        .unwrap();
    let bytes = moto.get(BUCKET, &object_key(&file.sha256)).await;
    assert_eq!(
        sha256_hex(&bytes),
        file.sha256,
        "{job}: the adapter's bytes match its address"
    );
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_and_eval_runs_survive_a_killed_worker_and_a_killed_replica() {
    let Some(db) = TestDatabase::create().await else { return };
    let Some(moto) = Moto::start().await else {
        db.drop().await;
        return;
    };
    moto.create_bucket(BUCKET).await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing on disk is shared: each process has a data directory (model
    // cache, graders' environment) of its own, and the bucket holds every
    // byte. The admin and secrets keys come from the environment.
    let blob_url = format!("s3://{BUCKET}/{PREFIX}");
    let mut env = moto.env();
    env.push(("LATHE_SECRETS_KEY", SECRETS_KEY.to_string()));
    let args = |data: &str, role: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = role.iter().map(|s| s.to_string()).collect();
        for (flag, value) in [
            ("--listen", "127.0.0.1:0".to_string()),
            ("--data-dir", dir.path().join(data).display().to_string()),
            ("--database-url", db.url.clone()),
            ("--blob-url", blob_url.clone()),
            ("--job-poll-millis", "250".to_string()),
            ("--job-lease-secs", "3".to_string()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        args.push("--log-json".into());
        args
    };
    let a = LatheProcess::start("replica A", &args("a", &["serve", "--role", "api"]), &env).await;
    let mut b = LatheProcess::start("replica B", &args("b", &["serve", "--role", "api"]), &env).await;
    let mut w1 = LatheProcess::start("worker 1", &args("w1", &["worker"]), &env).await;
    let w2 = LatheProcess::start("worker 2", &args("w2", &["worker"]), &env).await;
    let urls = [a.url.clone(), b.url.clone()];

    // Set-up through replica A: the model (uploaded into the bucket from a
    // directory only this client has) and the data.
    let client_side = dir.path().join("client");
    lathe_engine::tiny::write_tiny_model(&client_side.join("tiny"), 2, 32, 1).unwrap();
    let (url, path) = (a.url.clone(), client_side.join("tiny").display().to_string());
    let out = tokio::task::spawn_blocking(move || lathe(&url, &["models", "upload", &path, "--name", "tiny"]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&client_side).unwrap();
    let channel = connect(&a.url, ADMIN_KEY).await;
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(channel.clone());
    let upload = async |datasets: &mut proto::dataset_service_client::DatasetServiceClient<Channel>,
                        name: &str,
                        purpose: DatasetPurpose,
                        lines: String| {
        upload_bytes(datasets, name, purpose, "", lines.as_bytes(), 1 << 16)
            .await
            .unwrap()
            .id
    };
    let train = upload(&mut datasets, "train.jsonl", DatasetPurpose::Sft, sft_lines(24, 0)).await;
    let valid = upload(&mut datasets, "valid.jsonl", DatasetPurpose::Sft, sft_lines(12, 100)).await;
    let items = upload(&mut datasets, "items.jsonl", DatasetPurpose::Eval, sft_lines(16, 7)).await;
    let mut evals = EvalServiceClient::new(channel.clone());
    let eval = evals
        .create_eval(exact_match_eval("{{ item.messages[2].content }}"))
        .await
        .unwrap()
        .into_inner()
        .eval
        .unwrap();

    // Four jobs and two runs, created through both replicas, each watched
    // through both (starting on a different one).
    let mut job_ids = Vec::new();
    for i in 0..4 {
        let mut jobs = FineTuningServiceClient::new(connect(&urls[i % 2], ADMIN_KEY).await);
        let job = jobs
            .create_job(sft_job(&train, &valid))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        job_ids.push(job.id);
    }
    let mut run_ids = Vec::new();
    for url in &urls {
        let mut evals = EvalServiceClient::new(connect(url, ADMIN_KEY).await);
        let run = evals
            .create_eval_run(model_run(
                &eval.id,
                &items,
                "tiny",
                "{{ item.messages[1].content }}",
                4,
                4,
            ))
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        run_ids.push(run.id);
    }
    // Both orders of the replicas, a watcher for each.
    let orders = [urls.to_vec(), vec![urls[1].clone(), urls[0].clone()]];
    let mut job_watches = Vec::new();
    for id in &job_ids {
        for order in &orders {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let watch = tokio::spawn(watch_job(order.clone(), id.clone(), seen.clone()));
            job_watches.push((id.clone(), seen, watch));
        }
    }
    let mut run_watches = Vec::new();
    for id in &run_ids {
        for order in &orders {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let watch = tokio::spawn(watch_run(order.clone(), id.clone(), seen.clone()));
            run_watches.push((id.clone(), seen, watch));
        }
    }

    // Kill worker 1 -9 once a job it runs has a checkpoint, then replica B
    // while every watch is live.
    let store = lathe::store::open(&db.url).await.unwrap();
    let w1_id = w1.worker_id();
    let interrupted = tokio::time::timeout(PATIENCE, async {
        loop {
            for id in &job_ids {
                let job = store.get_job(id).await.unwrap().unwrap();
                // Leases are held per claim, as `{worker}.{n}`.
                let running_on_w1 = job
                    .lease_owner
                    .as_deref()
                    .and_then(|owner| owner.rsplit_once('.'))
                    .is_some_and(|(worker, _)| worker == w1_id);
                if running_on_w1 && !store.list_checkpoints(id, None, 1).await.unwrap().is_empty() {
                    return id.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("worker 1 trains a job to a checkpoint");
    w1.kill();
    b.kill();
    // What the bucket holds as worker 1 dies: the only place its leftovers
    // (a checkpoint it was writing) can be. moto may still be finishing a
    // request the worker sent before it died, and has no way to say so.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let objects_at_kill: BTreeSet<String> = moto.objects(BUCKET).await.into_iter().collect();
    let uploads_at_kill: BTreeSet<(String, String)> = moto.open_uploads(BUCKET).await.into_iter().collect();

    let mut ended_jobs = Vec::new();
    for (id, seen, watch) in job_watches {
        let job = tokio::time::timeout(PATIENCE, watch)
            .await
            .expect("job watch ends")
            .unwrap();
        assert_eq!(job.state, JobState::Succeeded as i32, "{id}: {:?}", job.error);
        ended_jobs.push((id, seen));
    }
    for (id, seen, watch) in run_watches {
        let run = tokio::time::timeout(PATIENCE, watch)
            .await
            .expect("run watch ends")
            .unwrap();
        assert_eq!(run.state, EvalRunState::Completed as i32, "{id}: {run:?}");
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.seqs,
            (1..=16).collect::<Vec<u64>>(),
            "{id}: every item once, in order, across reconnections"
        );
    }

    // No watcher missed or repeated an event; watchers that started on B
    // went on from their cursor on A.
    let mut reconnected = 0;
    for (id, seen) in &ended_jobs {
        let events = store.list_events(id, 0, 100_000).await.unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen.seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "{id}: every event once, in order"
        );
        reconnected += seen.reconnects;
    }
    assert!(
        reconnected >= 4,
        "the watchers on replica B went on elsewhere ({reconnected})"
    );

    // The interrupted job resumed on worker 2, and every job ends with the
    // adapter of an uninterrupted run (same data, seed and settings), as
    // the bucket holds it.
    let events = store.list_events(&interrupted, 0, 100_000).await.unwrap();
    let attempts: BTreeSet<u32> = events.iter().map(|e| e.attempt).filter(|a| *a > 0).collect();
    assert!(
        attempts.len() >= 2,
        "{interrupted} ran again after the kill: {attempts:?}"
    );
    assert!(
        events.iter().any(|e| e.message.contains("resuming at step")),
        "{interrupted} resumed from its checkpoint"
    );
    // The processes kept no blobs on their disks; worker 2 read the model
    // from the bucket into its own cache.
    for data in ["a", "b", "w1", "w2"] {
        let blobs = files_under(&dir.path().join(data).join("blobs"));
        assert!(blobs.is_empty(), "{data} keeps blobs on disk: {blobs:?}");
    }
    assert!(!files_under(&dir.path().join("w2/model-cache")).is_empty());
    let mut adapters = BTreeSet::new();
    for id in &job_ids {
        adapters.insert(final_adapter(&*store, &moto, id).await);
    }
    assert_eq!(adapters.len(), 1, "every job ends with the same adapter");

    // Every object that no record uses is worker 1's (it was there when the
    // worker died), or a pruned checkpoint's blob that a delete kept because
    // it was written moments ago (`blobs::RECENT_COMMIT`: another worker may
    // have committed the same bytes for a record on its way). The survivors
    // left nothing staged, not even an upload open.
    let in_use: BTreeSet<String> = store.blobs_in_use().await.unwrap().into_iter().collect();
    let used_keys: BTreeSet<String> = in_use.iter().map(|sha| object_key(sha)).collect();
    let objects: BTreeSet<String> = moto.objects(BUCKET).await.into_iter().collect();
    let leftovers: Vec<&String> = objects.difference(&used_keys).collect();
    for key in &leftovers {
        assert!(
            objects_at_kill.contains(*key) || key.starts_with(&format!("{PREFIX}/blobs/sha256/")),
            "{key}: no record uses it and it appeared after worker 1 died"
        );
    }
    let open: BTreeSet<(String, String)> = moto.open_uploads(BUCKET).await.into_iter().collect();
    assert!(
        open.is_subset(&uploads_at_kill),
        "uploads left open by the processes that lived: {:?}",
        open.difference(&uploads_at_kill).collect::<Vec<_>>()
    );
    eprintln!(
        "worker 1 left {} object(s) ({leftovers:?}) and {} open upload(s) behind",
        leftovers.len(),
        open.len()
    );

    // A start-up once those are a day old (`SHARED_SETTLE`) sweeps them: the same recovery, run here with that age passed. Then
    // the bucket holds exactly the blobs the records use.
    let settled = Blobs::s3(moto.builder(), BUCKET, PREFIX)
        .await
        .unwrap()
        .settling_for(Duration::ZERO);
    lathe::datasets::manager::Datasets::new(
        store.clone(),
        settled,
        Arc::new(lathe::datasets::O200k),
        lathe::config::ServeConfig::embedded(dir.path().join("sweep")).dataset_limits(),
    )
    .recover()
    .await
    .unwrap();
    let objects: BTreeSet<String> = moto.objects(BUCKET).await.into_iter().collect();
    assert_eq!(objects, used_keys, "the bucket holds the blobs in use, and only them");

    drop((a, w2));
    drop(store);
    db.drop().await;
}

/// BENCHMARKS.md's event latency: a worker process trains a tiny job; a
/// watcher on an API replica (another process) records, for each event,
/// how long after its write (the event's `created_at`, same machine clock)
/// it arrived. Opt-in: `cargo test --test it event_latency -- --ignored
/// --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark"]
async fn event_latency_from_a_worker_to_a_watcher_on_another_replica() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    lathe_engine::tiny::write_tiny_model(&models.join("tiny"), 2, 32, 1).unwrap();
    let data = dir.path().join("data");
    let args = |role: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = role.iter().map(|s| s.to_string()).collect();
        for (flag, value) in [
            ("--listen", "127.0.0.1:0".to_string()),
            ("--data-dir", data.display().to_string()),
            ("--database-url", db.url.clone()),
            ("--model-root", models.display().to_string()),
            // Polls this slow never deliver an event: only NOTIFY does.
            ("--job-poll-millis", "60000".to_string()),
        ] {
            args.push(flag.into());
            args.push(value);
        }
        args.push("--log-json".into());
        args
    };
    let env = [("LATHE_SECRETS_KEY", SECRETS_KEY.to_string())];
    let api = LatheProcess::start("replica", &args(&["serve", "--role", "api"]), &env).await;
    let _worker = LatheProcess::start("worker", &args(&["worker"]), &env).await;
    let channel = connect(&api.url, ADMIN_KEY).await;
    ModelServiceClient::new(channel.clone())
        .register_model(proto::RegisterModelRequest {
            name: "tiny".into(),
            path: models.join("tiny").display().to_string(),
        })
        .await
        .unwrap();
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(channel.clone());
    let train = upload_bytes(
        &mut datasets,
        "t.jsonl",
        DatasetPurpose::Sft,
        "",
        sft_lines(24, 0).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap()
    .id;
    let mut jobs = FineTuningServiceClient::new(channel);
    let mut req = sft_job(&train, "");
    if let Some(proto::fine_tuning_method::Method::Supervised(m)) = req.method.as_mut().and_then(|m| m.method.as_mut())
    {
        m.n_epochs = auto_int(40);
    }
    let job = jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut latencies = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload.unwrap() {
            proto::watch_job_response::Payload::Event(e) => {
                let now = lathe::ids::now_millis();
                let at = e.created_at.unwrap();
                let written = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
                // Events written before the watch began are backlog, not live.
                if e.seq > 3 {
                    latencies.push(now - written);
                }
            }
            proto::watch_job_response::Payload::End(_) => break,
        }
    }
    latencies.sort_unstable();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "{} live events: p50 {} ms, p99 {} ms, max {} ms",
        latencies.len(),
        pick(0.5),
        pick(0.99),
        latencies.last().unwrap()
    );
    drop(api);
    db.drop().await;
}
