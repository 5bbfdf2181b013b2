//! Observability: Prometheus metrics at `GET /metrics` on the server's own
//! port (no key), and JSON logs whose lines from a job's or an eval run's
//! work name it.
//!
//! Counters belong to the process, and test servers share one: the
//! in-process test reads them before and after its work and asserts on the
//! difference (at least its own work, should another test's run beside it),
//! and exactly on what only its server has (queue depth, counted in its
//! store). The test with a `lathe serve` child of its own asserts exact
//! counts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::scripted::{MODEL, ScriptedTrainer};
use crate::common::*;
use lathe::client::Channel;
use lathe::config::ServeConfig;
use lathe::proto::json::struct_from_json;
use lathe::proto::{
    self, DatasetPurpose, JobState, eval_service_client::EvalServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, grader_service_client::GraderServiceClient,
    model_service_client::ModelServiceClient, watch_eval_run_response, watch_job_response,
};
use serde_json::{Value, json};

/// One sample of a scrape: a series and its value.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape of `/metrics`, parsed.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
}

impl Scrape {
    /// The sum of the samples of `name` whose labels include `labels`
    /// (0 when there are none).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    fn matching<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// How much `name` with `labels` grew since `before`.
    fn grew(&self, before: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels) - before.get(name, labels)
    }
}

/// Prometheus' text format, as much as the exporter writes: `# ` comment
/// lines, and `name{k="v",...} value` samples.
fn parse(text: &str) -> Scrape {
    let samples = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => (
                    name,
                    parse_labels(
                        rest.strip_suffix('}')
                            .unwrap_or_else(|| panic!("unclosed labels: {line}")),
                    ),
                ),
            };
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad name in {line}"
            );
            Sample {
                name: name.to_string(),
                labels,
                value,
            }
        })
        .collect();
    Scrape { samples }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "label {key} in {text}");
        let mut value = String::new();
        loop {
            match chars.next().unwrap_or_else(|| panic!("unclosed value in {text}")) {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape in {text}"),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            Some(',') => {}
            None => return labels,
            Some(c) => panic!("{c:?} after a label in {text}"),
        }
    }
}

/// Scrapes `url`'s `/metrics`, with `key` as a bearer token if given.
async fn scrape(http: &reqwest::Client, url: &str, key: Option<&str>) -> Scrape {
    let mut request = http.get(format!("{url}/metrics"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    parse(&response.text().await.unwrap())
}

/// Whether `text` holds something shaped like a Lathe id (`prefix_` and 26
/// base32 characters).
fn holds_an_id(text: &str) -> bool {
    const ALPHABET: &[u8] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let bytes = text.as_bytes();
    (0..bytes.len())
        .any(|i| bytes[i] == b'_' && bytes.len() > i + 26 && bytes[i + 1..=i + 26].iter().all(|b| ALPHABET.contains(b)))
}

/// No label of any series holds an id, a path with one, or any of `ids`.
fn assert_no_id_in_labels(scrape: &Scrape, ids: &[&str]) {
    for sample in &scrape.samples {
        for (key, value) in &sample.labels {
            assert!(
                !holds_an_id(value) && !ids.iter().any(|id| value.contains(id)),
                "{}: label {key}={value:?} holds an id",
                sample.name
            );
        }
    }
}

fn exact_match() -> proto::TestingCriterion {
    proto::TestingCriterion {
        grader: Some(struct_from_json(&json!({
            "type": "string_check", "name": "exact", "operation": "eq",
            "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"
        }))),
        ..Default::default()
    }
}

/// Creates an eval over `rows` (`{"item": {"answer"}, "sample"}` rows,
/// graded by exact match), runs it on the precomputed samples and watches
/// it to its end; returns the eval, the items' dataset and the ended run.
async fn run_eval(channel: Channel, rows: &[Value]) -> (String, String, proto::EvalRun) {
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(channel.clone());
    let bytes: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let items = upload_bytes(
        &mut datasets,
        "items.jsonl",
        DatasetPurpose::Eval,
        "",
        bytes.as_bytes(),
        4096,
    )
    .await
    .expect("upload items");
    let mut evals = EvalServiceClient::new(channel);
    let eval = evals
        .create_eval(proto::CreateEvalRequest {
            name: "metrics".into(),
            testing_criteria: vec![exact_match()],
            ..Default::default()
        })
        .await
        .expect("create eval")
        .into_inner()
        .eval
        .unwrap();
    let run = evals
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: eval.id.clone(),
            dataset_id: items.id.clone(),
            source: Some(proto::create_eval_run_request::Source::Precomputed(
                proto::PrecomputedSource::default(),
            )),
            ..Default::default()
        })
        .await
        .expect("create run")
        .into_inner()
        .run
        .unwrap();
    let mut stream = evals
        .watch_eval_run(proto::WatchEvalRunRequest {
            run_id: run.id.clone(),
            after_seq: 0,
        })
        .await
        .expect("watch run")
        .into_inner();
    while let Some(message) = stream.message().await.expect("watch message") {
        if let Some(watch_eval_run_response::Payload::End(run)) = message.payload {
            assert!(stream.message().await.unwrap().is_none(), "end is last");
            return (eval.id, items.id, run);
        }
    }
    panic!("the watch ended without its terminal message");
}

/// Watches a job to its end; returns its metrics events and the job.
async fn watch_job(jobs: &mut FineTuningServiceClient<Channel>, id: &str) -> (Vec<proto::JobMetrics>, proto::Job) {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.into(),
            after_seq: 0,
        })
        .await
        .expect("watch job")
        .into_inner();
    let mut steps = Vec::new();
    while let Some(message) = stream.message().await.expect("watch message") {
        match message.payload.unwrap() {
            watch_job_response::Payload::Event(e) => {
                if let Some(proto::job_event::Data::Metrics(m)) = e.data {
                    steps.push(m);
                }
            }
            watch_job_response::Payload::End(end) => {
                assert!(stream.message().await.unwrap().is_none(), "end is last");
                return (steps, end.job.unwrap());
            }
        }
    }
    panic!("the watch ended without its terminal message");
}

/// Three items pass and two fail.
fn eval_rows() -> Vec<Value> {
    ["4", "5", "6", "7", "8"]
        .iter()
        .enumerate()
        .map(|(i, answer)| {
            let sample = if i < 3 { answer.to_string() } else { "wrong".to_string() };
            json!({"item": {"answer": answer}, "sample": sample})
        })
        .collect()
}

#[tokio::test]
async fn metrics_need_no_key_and_count_the_work_and_the_calls_by_route() {
    const STEPS: u64 = 25;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::embedded(dir.path());
    config.job_poll_millis = 50;
    // Renewed every third of a second: the job's second of steps sees some.
    config.job_lease_secs = 1;
    let trainer = ScriptedTrainer {
        steps: STEPS,
        checkpoint_every: 5,
        step_time: Duration::from_millis(40),
        ..Default::default()
    };
    let server = TestServer::start_full(config, lathe::app::Engine::Custom(Some(Arc::new(trainer)))).await;
    let url = server.url();
    let http = reqwest::Client::new();
    // Open like health: no key, and a wrong one is not refused either.
    let before = scrape(&http, &url, None).await;
    scrape(&http, &url, Some("sk-lathe-not-a-key")).await;

    // A job through gRPC.
    let mut datasets = server.datasets().await;
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    let rows = std::fs::read_to_string(fixture("sft_tools.jsonl"))
        .unwrap()
        .lines()
        .count() as f64;
    let mut jobs = FineTuningServiceClient::new(server.channel().await);
    let job = jobs
        .create_job(proto::CreateJobRequest {
            base_model: MODEL.into(),
            training_dataset_id: train.id.clone(),
            ..Default::default()
        })
        .await
        .expect("create job")
        .into_inner()
        .job
        .unwrap();
    let (steps, done) = watch_job(&mut jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");
    assert_eq!(steps.len() as u64, STEPS);

    // An eval run, and a grade with an error flag.
    let (eval_id, items_id, run) = run_eval(server.channel().await, &eval_rows()).await;
    assert_eq!(run.state, proto::EvalRunState::Completed as i32, "{run:?}");
    let graded = GraderServiceClient::new(server.channel().await)
        .run_grader(proto::RunGraderRequest {
            grader: Some(struct_from_json(&json!({
                "type": "string_check", "name": "missing", "operation": "eq",
                "input": "{{ sample.output_text }}", "reference": "{{ item.nowhere }}"
            }))),
            sample: Some(proto::Sample {
                output_text: "x".into(),
                ..Default::default()
            }),
            item: Some(struct_from_json(&json!({}))),
        })
        .await
        .expect("run grader")
        .into_inner();
    let errors = graded.result.unwrap().metadata.unwrap().errors.unwrap();
    assert!(errors.invalid_variable_error, "{errors:?}");

    // The REST door: a job read by its route (with its id in the path), and
    // a call refused before any route.
    let read = http
        .get(format!("{url}/v1/fine_tuning/jobs/{}", job.id))
        .bearer_auth(server.admin_key())
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let refused = http.get(format!("{url}/v1/files")).send().await.unwrap();
    assert_eq!(refused.status(), 401);

    let after = scrape(&http, &url, None).await;
    let grew = |name: &str, labels: &[(&str, &str)]| after.grew(&before, name, labels);

    // Leases, by kind.
    assert!(grew("lathe_leases_claimed_total", &[("kind", "job")]) >= 1.0);
    assert!(grew("lathe_leases_claimed_total", &[("kind", "eval_run")]) >= 1.0);
    assert!(grew("lathe_leases_renewed_total", &[("kind", "job")]) >= 1.0);
    // Training: every step and the tokens it trained on, by method.
    let supervised = [("method", "supervised")];
    assert!(grew("lathe_training_steps_total", &supervised) >= STEPS as f64);
    assert!(grew("lathe_training_tokens_total", &supervised) >= STEPS as f64 * rows);
    assert!(after.get("lathe_training_tokens_per_second", &supervised) > 0.0);
    // Eval items by status, each timed; every grade timed by grader type,
    // and the error flag counted.
    assert!(grew("lathe_eval_items_total", &[("status", "pass")]) >= 3.0);
    assert!(grew("lathe_eval_items_total", &[("status", "fail")]) >= 2.0);
    assert!(grew("lathe_eval_item_duration_seconds_count", &[]) >= 5.0);
    assert!(grew("lathe_grader_duration_seconds_count", &[("grader", "string_check")]) >= 6.0);
    let flag = [("grader", "string_check"), ("error", "invalid_variable_error")];
    assert!(grew("lathe_grader_errors_total", &flag) >= 1.0);

    // Calls by gRPC method or REST route template, door and status; the
    // scrapes themselves are not calls.
    let calls = [
        ("grpc", "/lathe.v1.DatasetService/UploadDataset", "Ok"),
        ("grpc", "/lathe.v1.FineTuningService/CreateJob", "Ok"),
        ("grpc", "/lathe.v1.FineTuningService/WatchJob", "Ok"),
        ("grpc", "/lathe.v1.EvalService/CreateEvalRun", "Ok"),
        ("grpc", "/lathe.v1.EvalService/WatchEvalRun", "Ok"),
        ("grpc", "/lathe.v1.GraderService/RunGrader", "Ok"),
        ("rest", "GET /v1/fine_tuning/jobs/{fine_tuning_job_id}", "200"),
        ("rest", "unrouted", "401"),
    ];
    for (door, route, status) in calls {
        let labels = [("door", door), ("route", route), ("status", status)];
        assert!(grew("lathe_requests_total", &labels) >= 1.0, "{labels:?}");
        assert!(
            grew("lathe_request_duration_seconds_count", &labels) >= 1.0,
            "{labels:?}"
        );
        assert!(after.get("lathe_request_duration_seconds_bucket", &labels) > 0.0);
    }
    assert_eq!(
        after.matching("lathe_requests_total", &[("route", "/metrics")]).count(),
        0
    );

    // Queue depth is this server's store, counted at the scrape: every
    // state of each kind, zero where nothing is.
    for (kind, finished, states) in [
        (
            "job",
            "succeeded",
            &[
                "validating_files",
                "queued",
                "running",
                "succeeded",
                "failed",
                "cancelled",
                "paused",
            ][..],
        ),
        (
            "eval_run",
            "completed",
            &["queued", "in_progress", "completed", "failed", "canceled"][..],
        ),
    ] {
        for state in states {
            let expected = if *state == finished { 1.0 } else { 0.0 };
            let labels = [("kind", kind), ("state", *state)];
            assert_eq!(after.matching("lathe_queue_depth", &labels).count(), 1, "{labels:?}");
            assert_eq!(after.get("lathe_queue_depth", &labels), expected, "{labels:?}");
        }
    }

    // No label names a resource.
    let request_id = read.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_no_id_in_labels(&after, &[&job.id, &train.id, &eval_id, &items_id, &run.id, &request_id]);
    server.stop().await;
}

/// `lathe serve --log-json` in a process of its own: a real job on a tiny
/// model and an eval run. Each log line from their work names the job or
/// the run by the span it is in, and the process's metrics count exactly
/// this work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_job_and_the_run_and_a_process_counts_exactly_its_work() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny-model");
    lathe_engine::tiny::write_tiny_model(&model_dir, 2, 32, 1).unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lathe"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-json",
            "--job-poll-millis",
            "50",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--model-root")
        .arg(dir.path())
        .env("LATHE_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // A thread reads the log as it comes, so the server never waits on a
    // full pipe, and says where it listens.
    let log: Arc<Mutex<Vec<Value>>> = Arc::default();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let reader = {
        let (log, stderr) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let line = line.unwrap();
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                if let Some(addr) = v.get("addr").and_then(Value::as_str)
                    && let Some(tx) = addr_tx.take()
                {
                    let _ = tx.send(addr.to_string());
                }
                log.lock().unwrap().push(v);
            }
        })
    };
    let addr = addr_rx.await.expect("the server logged its address");
    let url = format!("http://{addr}");
    let channel = connect_local(&url, &data).await;

    ModelServiceClient::new(channel.clone())
        .register_model(proto::RegisterModelRequest {
            name: "tiny".into(),
            path: model_dir.display().to_string(),
        })
        .await
        .expect("register model");
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(channel.clone());
    let train = upload_bytes(
        &mut datasets,
        "train.jsonl",
        DatasetPurpose::Sft,
        "",
        word_lines(12).as_bytes(),
        1 << 16,
    )
    .await
    .expect("upload");
    let auto = |n| {
        Some(proto::AutoInt {
            value: Some(proto::auto_int::Value::Number(n)),
        })
    };
    let mut jobs = FineTuningServiceClient::new(channel.clone());
    let job = jobs
        .create_job(proto::CreateJobRequest {
            base_model: "tiny".into(),
            training_dataset_id: train.id.clone(),
            seed: Some(3),
            method: Some(proto::FineTuningMethod {
                method: Some(proto::fine_tuning_method::Method::Supervised(proto::SupervisedMethod {
                    n_epochs: auto(1),
                    batch_size: auto(4),
                    learning_rate_multiplier: None,
                })),
            }),
            ..Default::default()
        })
        .await
        .expect("create job")
        .into_inner()
        .job
        .unwrap();
    let (steps, done) = watch_job(&mut jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");
    assert_eq!(steps.len(), 3, "12 rows in batches of 4");
    let (_, _, run) = run_eval(channel.clone(), &eval_rows()).await;
    assert_eq!(run.state, proto::EvalRunState::Completed as i32, "{run:?}");

    // Only this test's work ran in this process: every count is exact.
    let metrics = scrape(&reqwest::Client::new(), &url, None).await;
    let supervised = [("method", "supervised")];
    for (name, labels, expected) in [
        ("lathe_leases_claimed_total", &[("kind", "job")][..], 1.0),
        ("lathe_leases_claimed_total", &[("kind", "eval_run")], 1.0),
        ("lathe_training_steps_total", &supervised, 3.0),
        ("lathe_training_tokens_total", &supervised, done.trained_tokens as f64),
        ("lathe_eval_items_total", &[("status", "pass")], 3.0),
        ("lathe_eval_items_total", &[("status", "fail")], 2.0),
        ("lathe_eval_item_duration_seconds_count", &[], 5.0),
        (
            "lathe_grader_duration_seconds_count",
            &[("grader", "string_check")],
            5.0,
        ),
        ("lathe_queue_depth", &[("kind", "job"), ("state", "succeeded")], 1.0),
        (
            "lathe_queue_depth",
            &[("kind", "eval_run"), ("state", "completed")],
            1.0,
        ),
    ] {
        assert_eq!(metrics.get(name, labels), expected, "{name} {labels:?}");
    }
    assert!(done.trained_tokens > 0);
    for (route, calls) in [
        ("/lathe.v1.ModelService/RegisterModel", 1.0),
        ("/lathe.v1.DatasetService/UploadDataset", 2.0),
        ("/lathe.v1.FineTuningService/CreateJob", 1.0),
        ("/lathe.v1.FineTuningService/WatchJob", 1.0),
        ("/lathe.v1.EvalService/CreateEval", 1.0),
    ] {
        let labels = [("door", "grpc"), ("route", route), ("status", "Ok")];
        assert_eq!(metrics.get("lathe_requests_total", &labels), calls, "{route}");
    }
    assert_no_id_in_labels(&metrics, &[&job.id, &train.id, &run.id]);

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    reader.join().unwrap();
    let log = log.lock().unwrap();

    // The lines logged in a span carry it (`span`) and the spans around it
    // (`spans`); the job's and the run's work name them there.
    let in_span = |message: &str, span: &str, field: &str, id: &str| {
        let line = log
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in {log:#?}"));
        assert_eq!(line["span"]["name"], span, "{line}");
        assert_eq!(line["span"][field], id, "{line}");
        assert!(
            line["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s[field] == id)),
            "{line}"
        );
    };
    in_span("training", "job", "job_id", &job.id);
    in_span("job succeeded", "job", "job_id", &job.id);
    in_span("eval run completed", "eval_run", "run_id", &run.id);
    // Every line logged in the job's span names the job.
    let in_job: Vec<&Value> = log.iter().filter(|l| l["span"]["name"] == "job").collect();
    assert!(in_job.len() >= 2, "{in_job:#?}");
    assert!(
        in_job.iter().all(|l| l["span"]["job_id"] == job.id.as_str()),
        "{in_job:#?}"
    );
}
