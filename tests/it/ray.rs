//! Fine-tuning jobs dispatched through a real Ray cluster: a Ray head on
//! 127.0.0.1 started and stopped by the test (`ray start --head --block`,
//! from `pip install 'ray[default]'`; the `ray` executable is named by
//! LATHE_TEST_RAY, which `.ci/run` sets; without it the test prints a notice
//! and passes, except under CI), a
//! Lathe control plane (`lathe serve --ray-address`) as a child process, and
//! the real `lathe worker --job` binary as every Ray job's entrypoint. The
//! control plane and the workers share Postgres (a fresh database on the
//! server of LATHE_TEST_POSTGRES_URL) and the data directory's blobs.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::common::process::LatheProcess;
use crate::common::*;
use lathe::proto::{
    self, DatasetPurpose, JobState, fine_tuning_service_client::FineTuningServiceClient, job_event,
    model_service_client::ModelServiceClient, watch_job_response::Payload,
};
use lathe::ray::{RayClient, RayJob, RayStatus, Submission, Submitted};
use tonic_health::pb::health_check_response::ServingStatus;

/// A Ray head on 127.0.0.1 of its own (own ports, own temp dir), stopped
/// when dropped.
struct RayCluster {
    child: Option<Child>,
    client: RayClient,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `ray` executable, or None (with a notice) when LATHE_TEST_RAY is
/// unset; CI (CI=true) installs Ray and sets it, so there it must be set.
fn ray_bin(test: &str) -> Option<PathBuf> {
    match std::env::var_os("LATHE_TEST_RAY") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            assert!(
                std::env::var("CI").is_err(),
                "LATHE_TEST_RAY must be set in CI so the Ray tests run"
            );
            eprintln!(
                "skipping {test}: LATHE_TEST_RAY is not set (the path of `ray` from `pip install 'ray[default]'`)"
            );
            None
        }
    }
}

impl RayCluster {
    async fn start(ray: &Path, dashboard_port: u16) -> Self {
        let began = Instant::now();
        // Ray's socket paths must stay short: a directory right under /tmp.
        let dir = tempfile::Builder::new().prefix("lr").tempdir_in("/tmp").unwrap();
        let log = std::fs::File::create(dir.path().join("ray-start.log")).unwrap();
        let child = Command::new(ray)
            .args([
                "start",
                "--head",
                "--block",
                "--num-cpus=2",
                "--node-ip-address=127.0.0.1",
                "--dashboard-host=127.0.0.1",
                "--disable-usage-stats",
            ])
            .arg(format!("--dashboard-port={dashboard_port}"))
            .arg(format!("--port={}", free_port()))
            .arg(format!("--ray-client-server-port={}", free_port()))
            .arg(format!("--dashboard-agent-listen-port={}", free_port()))
            .arg(format!("--temp-dir={}", dir.path().display()))
            // Its own process group, so the whole head can be stopped.
            .process_group(0)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ray");
        let client = RayClient::new(&format!("http://127.0.0.1:{dashboard_port}")).unwrap();
        let mut cluster = Self {
            child: Some(child),
            client,
            _dir: dir,
        };
        // Ray is another program: its API answering is the only sign it is up.
        while cluster.client.version().await.is_err() {
            if let Some(status) = cluster.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(cluster._dir.path().join("ray-start.log")).unwrap_or_default();
                panic!("ray start exited with {status}:\n{log}");
            }
            assert!(
                began.elapsed() < Duration::from_secs(120),
                "Ray did not start in 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("ray: head up in {:.1} s", began.elapsed().as_secs_f64());
        cluster
    }

    fn address(&self) -> &str {
        self.client.address()
    }

    /// SIGTERM to `ray start --block`, which stops what it started (Ray
    /// drains running jobs for up to 30 s first); the group is killed if
    /// that takes over a minute.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let began = Instant::now();
        let pid = child.id() as i32;
        // SAFETY: kill(2) on the child we started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        while child.try_wait().unwrap().is_none() {
            if began.elapsed() > Duration::from_secs(60) {
                // SAFETY: kill(2) on the process group the child leads.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("ray: head stopped in {:.1} s", began.elapsed().as_secs_f64());
    }
}

impl Drop for RayCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for a Ray job to end (Ray's jobs are another program's: polled).
async fn ray_ended(client: &RayClient, id: &str) -> RayJob {
    let began = Instant::now();
    loop {
        let job = client.job(id).await.unwrap().expect("the Ray job exists");
        if job.status.is_terminal() {
            return job;
        }
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "{id} still {:?}",
            job.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `lathe serve` dispatching to Ray, configured by its environment.
struct ControlPlane;

impl ControlPlane {
    async fn start(env: &[(&str, String)]) -> LatheProcess {
        LatheProcess::start("control plane", &["serve".to_string()], env).await
    }
}

/// The key every process of the test seals and opens secrets with.
const SECRETS_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// What the control plane's `/metrics` answers.
async fn metrics(plane: &LatheProcess) -> String {
    let response = reqwest::get(format!("{}/metrics", plane.url)).await.unwrap();
    assert!(response.status().is_success());
    response.text().await.unwrap()
}

fn create(train: &str, epochs: i64) -> proto::CreateJobRequest {
    let auto = |n| {
        Some(proto::AutoInt {
            value: Some(proto::auto_int::Value::Number(n)),
        })
    };
    proto::CreateJobRequest {
        base_model: "tiny".into(),
        training_dataset_id: train.into(),
        suffix: "ray".into(),
        seed: Some(5),
        method: Some(proto::FineTuningMethod {
            method: Some(proto::fine_tuning_method::Method::Supervised(proto::SupervisedMethod {
                n_epochs: auto(epochs),
                batch_size: auto(4),
                learning_rate_multiplier: None,
            })),
        }),
        ..Default::default()
    }
}

/// Watches a job from its first event; `until` may stop early (returns
/// None for the job then).
async fn watch(
    jobs: &mut FineTuningServiceClient<Channel>,
    id: &str,
    mut until: impl FnMut(&proto::JobEvent) -> bool,
) -> (Vec<proto::JobEvent>, Option<proto::Job>) {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload.unwrap() {
            Payload::Event(e) => {
                let stop = until(&e);
                events.push(e);
                if stop {
                    return (events, None);
                }
            }
            Payload::End(end) => return (events, end.job),
        }
    }
    panic!("no terminal message");
}

/// Our submissions for `job_id`, by submission id.
async fn submissions(ray: &RayClient, job_id: &str) -> Vec<(String, RayStatus)> {
    let mut mine: Vec<(String, RayStatus)> = ray
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.meta("lathe_job_id") == Some(job_id))
        .map(|j| (j.submission_id, j.status))
        .collect();
    mine.sort_by(|a, b| a.0.cmp(&b.0));
    mine
}

/// The final adapter's bytes of a finished job, from its last checkpoint.
async fn final_adapter(db_url: &str, data_dir: &Path, job_id: &str) -> Vec<u8> {
    let store = lathe::store::open(db_url).await.unwrap();
    let ckpts = store.list_checkpoints(job_id, None, 1).await.unwrap();
    let file = ckpts[0]
        .files
        .iter()
        .find(|f| f.name == "adapter_model.safetensors")
        .unwrap()
        .clone();
    let blobs = lathe::blobs::Blobs::local(data_dir.join("blobs")).unwrap();
    blobs.read_range(&file.sha256, 0..file.bytes).await.unwrap().to_vec()
}

fn messages(events: &[proto::JobEvent]) -> String {
    events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("\n")
}

fn step_of(e: &proto::JobEvent) -> Option<u64> {
    match &e.data {
        Some(job_event::Data::Checkpoint(c)) => Some(c.step_number),
        _ => None,
    }
}

/// The Jobs REST client against a real Ray head: submission ids are unique
/// (a second submission is `Exists`, nothing starts), statuses, logs,
/// failures, stops, listing; then Lathe's control plane dispatching real
/// jobs through it: they succeed, a Ray job stopped mid-training resumes in
/// a new Ray job from its checkpoint to the adapter an uninterrupted run
/// makes, a control plane killed and restarted adopts its Ray job instead
/// of submitting again, and a worker that cannot start fails its job after
/// the allowed tries with Ray's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_through_a_real_ray_cluster() {
    let Some(ray_bin) = ray_bin("jobs_run_through_a_real_ray_cluster") else {
        return;
    };
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // A hang fails the test (the cluster and servers stop as they drop)
    // rather than holding CI until its limit.
    tokio::time::timeout(Duration::from_secs(600), on_ray(&ray_bin, &db))
        .await
        .expect("the Ray test took over 10 minutes");
    db.drop().await;
}

async fn on_ray(ray_bin: &Path, db: &TestDatabase) {
    let began = Instant::now();
    let dashboard_port = free_port();
    let mut cluster = RayCluster::start(ray_bin, dashboard_port).await;
    let ray = cluster.client.clone();

    // --- The client.
    let hello = Submission {
        entrypoint: "echo hello from $WHO".into(),
        submission_id: "client-hello".into(),
        metadata: [("k".to_string(), "v".to_string())].into(),
        env_vars: [("WHO".to_string(), "ray".to_string())].into(),
        num_cpus: 1.0,
        num_gpus: 0.0,
    };
    assert_eq!(ray.submit(&hello).await.unwrap(), Submitted::New);
    let again = Submission {
        entrypoint: "echo a second run".into(),
        ..hello.clone()
    };
    assert_eq!(ray.submit(&again).await.unwrap(), Submitted::Exists);
    let done = ray_ended(&ray, "client-hello").await;
    assert_eq!(done.status, RayStatus::Succeeded);
    assert_eq!(done.meta("k"), Some("v"));
    assert_eq!(
        done.entrypoint, "echo hello from $WHO",
        "the first submission ran, once"
    );
    let tail = ray.log_tail("client-hello").await.unwrap();
    assert_eq!(tail, "hello from ray", "the entrypoint's output, without Ray's lines");
    let failing = Submission {
        entrypoint: "echo broken >&2; exit 7".into(),
        submission_id: "client-fails".into(),
        num_cpus: 1.0,
        ..Default::default()
    };
    ray.submit(&failing).await.unwrap();
    let failed = ray_ended(&ray, "client-fails").await;
    assert_eq!((failed.status, failed.driver_exit_code), (RayStatus::Failed, Some(7)));
    assert!(failed.message.unwrap().contains("exit code 7"));
    let sleeper = Submission {
        entrypoint: "sleep 300".into(),
        submission_id: "client-sleeps".into(),
        num_cpus: 1.0,
        ..Default::default()
    };
    ray.submit(&sleeper).await.unwrap();
    assert!(ray.stop("client-sleeps").await.unwrap());
    assert_eq!(ray_ended(&ray, "client-sleeps").await.status, RayStatus::Stopped);
    assert!(ray.job("no-such-job").await.unwrap().is_none());
    assert!(!ray.stop("no-such-job").await.unwrap());
    let listed: Vec<String> = ray.list().await.unwrap().into_iter().map(|j| j.submission_id).collect();
    for id in ["client-hello", "client-fails", "client-sleeps"] {
        assert!(listed.contains(&id.to_string()), "{listed:?}");
    }
    eprintln!("ray: client checks done at {:.1} s", began.elapsed().as_secs_f64());

    // --- Lathe on Ray.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let model_dir = dir.path().join("tiny-model");
    lathe_engine::tiny::write_tiny_model(&model_dir, 2, 32, 1).unwrap();
    let worker = format!(
        "{} worker --job {{job_id}} --listen 127.0.0.1:0 --log-json",
        env!("CARGO_BIN_EXE_lathe")
    );
    let ray_address = cluster.address().to_string();
    let env = |entrypoint: &str, max_failures: u32| -> Vec<(&'static str, String)> {
        vec![
            ("LATHE_DATABASE_URL", db.url.clone()),
            ("LATHE_DATA_DIR", data_dir.display().to_string()),
            ("LATHE_ADMIN_KEY", ADMIN_KEY.to_string()),
            ("LATHE_SECRETS_KEY", SECRETS_KEY.to_string()),
            ("LATHE_MODEL_ROOTS", dir.path().display().to_string()),
            ("LATHE_JOB_LEASE_SECS", "6".into()),
            ("LATHE_JOB_POLL_MILLIS", "200".into()),
            ("LATHE_RAY_ADDRESS", ray_address.clone()),
            ("LATHE_RAY_ENTRYPOINT", entrypoint.to_string()),
            (
                "LATHE_RAY_FORWARD_ENV",
                "LATHE_DATABASE_URL,LATHE_SECRETS_KEY,LATHE_DATA_DIR,LATHE_JOB_LEASE_SECS,LATHE_JOB_POLL_MILLIS".into(),
            ),
            ("LATHE_RAY_MAX_FAILURES", max_failures.to_string()),
        ]
    };
    let plane = ControlPlane::start(&env(&worker, 3)).await;
    let mut models = ModelServiceClient::new(plane.channel().await);
    models
        .register_model(proto::RegisterModelRequest {
            name: "tiny".into(),
            path: model_dir.display().to_string(),
        })
        .await
        .unwrap();
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(plane.channel().await);
    let train = upload_bytes(
        &mut datasets,
        "train.jsonl",
        DatasetPurpose::Sft,
        "",
        word_lines(16).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap()
    .id;
    let mut jobs = FineTuningServiceClient::new(plane.channel().await);
    let new_job = |jobs: &mut FineTuningServiceClient<Channel>, epochs| {
        let mut jobs = jobs.clone();
        let request = create(&train, epochs);
        async move { jobs.create_job(request).await.unwrap().into_inner().job.unwrap() }
    };

    // Two jobs at once, each in its own Ray job, both to success.
    let (a, b) = (new_job(&mut jobs, 8).await, new_job(&mut jobs, 8).await);
    let (a_events, a_done) = watch(&mut jobs, &a.id, |_| false).await;
    let (_, b_done) = watch(&mut jobs, &b.id, |_| false).await;
    let (a_done, b_done) = (a_done.unwrap(), b_done.unwrap());
    assert_eq!(
        a_done.state,
        JobState::Succeeded as i32,
        "{}\n{}",
        messages(&a_events),
        plane.log()
    );
    assert_eq!(b_done.state, JobState::Succeeded as i32);
    assert_eq!(a_done.attempts, 1);
    let a_first = format!("lathe-{}-0-1", a.id);
    assert!(messages(&a_events).contains(&format!("submitted to Ray as Ray job {a_first}")));
    for job in [&a, &b] {
        let subs = submissions(&ray, &job.id).await;
        assert_eq!(subs.len(), 1, "{subs:?}");
        assert_eq!(ray_ended(&ray, &subs[0].0).await.status, RayStatus::Succeeded);
    }
    let uninterrupted = final_adapter(&db.url, &data_dir, &a.id).await;
    assert_eq!(final_adapter(&db.url, &data_dir, &b.id).await, uninterrupted);
    eprintln!(
        "ray: two jobs through Ray done at {:.1} s",
        began.elapsed().as_secs_f64()
    );

    // `ray job stop` mid-training: the job resumes in a new Ray job from its
    // last checkpoint and ends with the adapter of an uninterrupted run.
    let c = new_job(&mut jobs, 8).await;
    let (_, cut) = watch(&mut jobs, &c.id, |e| step_of(e).is_some_and(|s| s >= 8)).await;
    assert!(cut.is_none(), "stopped before the end");
    let c_first = format!("lathe-{}-0-1", c.id);
    assert!(ray.stop(&c_first).await.unwrap());
    let (c_events, c_done) = watch(&mut jobs, &c.id, |_| false).await;
    let c_done = c_done.unwrap();
    let log = messages(&c_events);
    assert_eq!(c_done.state, JobState::Succeeded as i32, "{log}");
    assert_eq!(c_done.attempts, 2, "{log}");
    assert!(log.contains("resuming from checkpoint step"), "{log}");
    // Whether "Ray job … was stopped" is written depends on a race: the
    // worker's SIGTERM gives the job back (attempt 2 is queued) before or
    // after the executor sees Ray's STOPPED; a later attempt supersedes the
    // earlier one's tries, so the event is not required here.
    let subs = submissions(&ray, &c.id).await;
    let c_second = format!("lathe-{}-1-1", c.id);
    assert_eq!(
        subs.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        [c_first.clone(), c_second.clone()]
    );
    assert_eq!(ray_ended(&ray, &c_first).await.status, RayStatus::Stopped);
    assert_eq!(ray_ended(&ray, &c_second).await.status, RayStatus::Succeeded);
    assert_eq!(final_adapter(&db.url, &data_dir, &c.id).await, uninterrupted);
    eprintln!(
        "ray: stop and resume done at {:.1} s; the job's events:\n{log}",
        began.elapsed().as_secs_f64()
    );

    // The control plane killed (-9) right after it submitted: the restarted
    // one adopts the Ray job, and Ray saw one submission.
    let d = new_job(&mut jobs, 8).await;
    watch(&mut jobs, &d.id, |e| e.message.starts_with("submitted to Ray")).await;
    plane.stop(libc::SIGKILL);
    let plane = ControlPlane::start(&env(&worker, 3)).await;
    let mut jobs = FineTuningServiceClient::new(plane.channel().await);
    let (d_events, d_done) = watch(&mut jobs, &d.id, |_| false).await;
    assert_eq!(
        d_done.unwrap().state,
        JobState::Succeeded as i32,
        "{}",
        messages(&d_events)
    );
    let d_first = format!("lathe-{}-0-1", d.id);
    let subs = submissions(&ray, &d.id).await;
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0].0, d_first);
    assert_eq!(ray_ended(&ray, &d_first).await.status, RayStatus::Succeeded);
    let submitted = d_events.iter().filter(|e| e.message.starts_with("submitted to Ray"));
    assert_eq!(submitted.count(), 1);
    eprintln!(
        "ray: restart without a second submission done at {:.1} s",
        began.elapsed().as_secs_f64()
    );

    // The Ray head goes away: dispatching pauses and the waiting job says
    // so; a head back at the same address gets the job, which succeeds.
    cluster.stop();
    let f = new_job(&mut jobs, 8).await;
    watch(&mut jobs, &f.id, |e| e.message.contains("cannot be reached")).await;
    let scraped = metrics(&plane).await;
    assert!(scraped.lines().any(|l| l == "lathe_ray_reachable 0"), "{scraped}");
    plane
        .health_becomes("lathe.ray", ServingStatus::NotServing, Duration::from_secs(30))
        .await;
    assert_eq!(
        plane.health("").await,
        ServingStatus::Serving,
        "the server itself is up"
    );
    cluster = RayCluster::start(ray_bin, dashboard_port).await;
    let (f_events, f_done) = watch(&mut jobs, &f.id, |_| false).await;
    let log = messages(&f_events);
    assert_eq!(f_done.unwrap().state, JobState::Succeeded as i32, "{log}");
    assert!(log.contains("the Ray cluster answers again"), "{log}");
    let f_first = format!("lathe-{}-0-1", f.id);
    assert_eq!(ray_ended(&ray, &f_first).await.status, RayStatus::Succeeded);
    assert_eq!(submissions(&ray, &f.id).await.len(), 1);
    let scraped = metrics(&plane).await;
    assert!(scraped.lines().any(|l| l == "lathe_ray_reachable 1"), "{scraped}");
    plane
        .health_becomes("lathe.ray", ServingStatus::Serving, Duration::from_secs(30))
        .await;
    assert!(
        scraped.contains(r#"lathe_ray_jobs_total{event="submitted"} 1"#),
        "this control plane submitted f only: {scraped}"
    );
    eprintln!("ray: head gone and back done at {:.1} s", began.elapsed().as_secs_f64());

    // The head gone while a job trains in its cluster, and back: the job's
    // worker (the Ray job's entrypoint outlives the head here) keeps its
    // lease, so the new head gets no second submission; the job ends with
    // an uninterrupted run's adapter, its events whole.
    let g = new_job(&mut jobs, 8).await;
    let (_, cut) = watch(&mut jobs, &g.id, |e| step_of(e).is_some_and(|s| s >= 8)).await;
    assert!(cut.is_none(), "the head went before the end");
    cluster.stop();
    cluster = RayCluster::start(ray_bin, dashboard_port).await;
    let (g_events, g_done) = watch(&mut jobs, &g.id, |_| false).await;
    let log = messages(&g_events);
    assert_eq!(g_done.unwrap().state, JobState::Succeeded as i32, "{log}");
    let seqs: Vec<u64> = g_events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{log}");
    assert_eq!(final_adapter(&db.url, &data_dir, &g.id).await, uninterrupted);
    assert_eq!(submissions(&ray, &g.id).await, [], "no second Ray job for g");
    plane.stop(libc::SIGTERM);
    eprintln!(
        "ray: head gone mid-training done at {:.1} s; the job's events:\n{log}",
        began.elapsed().as_secs_f64()
    );

    // A worker that cannot start: two tries, then the job fails with Ray's words.
    let broken = "echo no gpu for {job_id} | tr a-z A-Z >&2; exit 3";
    let plane = ControlPlane::start(&env(broken, 2)).await;
    let mut jobs = FineTuningServiceClient::new(plane.channel().await);
    let e = new_job(&mut jobs, 1).await;
    let (e_events, e_done) = watch(&mut jobs, &e.id, |_| false).await;
    let e_done = e_done.unwrap();
    let log = messages(&e_events);
    assert_eq!(e_done.state, JobState::Failed as i32, "{log}");
    let error = e_done.error.unwrap();
    assert_eq!(error.code, "ray_failed");
    assert!(error.message.contains("exit code 3"), "{}", error.message);
    assert!(
        log.contains(&format!("NO GPU FOR {}", e.id.to_uppercase())) && !log.contains("Running entrypoint"),
        "the log's tail is in the events: {log}"
    );
    let subs = submissions(&ray, &e.id).await;
    assert_eq!(
        subs,
        [
            (format!("lathe-{}-0-1", e.id), RayStatus::Failed),
            (format!("lathe-{}-0-2", e.id), RayStatus::Failed)
        ]
    );
    plane.stop(libc::SIGTERM);
    eprintln!("ray: bounded failures done at {:.1} s", began.elapsed().as_secs_f64());

    drop(cluster);
    eprintln!("ray: all done in {:.1} s", began.elapsed().as_secs_f64());
}

/// A Ray address nobody answers at stops start-up with a message naming
/// the setting, and so do Ray settings that cannot work (checked before
/// anything is reached: the database here is never connected to).
#[tokio::test]
async fn bad_ray_settings_stop_start_up_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let serve = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lathe"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(["--ray-address", &nobody])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let postgres = [
        "--database-url",
        "postgres://postgres@127.0.0.1:1/never",
        "--secrets-key",
        SECRETS_KEY,
    ];
    let stderr = serve(&postgres);
    assert!(
        stderr.contains("--ray-address (LATHE_RAY_ADDRESS): the Ray Jobs API at")
            && stderr.contains("cannot be reached"),
        "{stderr}"
    );
    let stderr = serve(&[]);
    assert!(
        stderr.contains("--ray-address (LATHE_RAY_ADDRESS) needs a database the workers Ray starts share"),
        "{stderr}"
    );
    let stderr = serve(&[&postgres[..], &["--ray-entrypoint", "lathe worker"]].concat());
    assert!(stderr.contains("--ray-entrypoint (LATHE_RAY_ENTRYPOINT)"), "{stderr}");
}
