//! FineTuningService and ModelService over real gRPC, with the test-only
//! scripted trainer.

use std::time::Duration;

use crate::common::scripted::{MODEL, ScriptedTrainer, expected_state};
use crate::common::*;
use lathe::client::Channel;
use lathe::proto::{
    self, DatasetPurpose, JobState, fine_tuning_service_client::FineTuningServiceClient, job_event,
    model_service_client::ModelServiceClient, watch_job_response::Payload,
};
use tonic::Code;
use tonic_types::StatusExt;

struct Env {
    server: TestServer,
    jobs: FineTuningServiceClient<Channel>,
    train_id: String,
    _dir: tempfile::TempDir,
}

async fn env(trainer: ScriptedTrainer) -> Env {
    env_with(trainer, |_| {}).await
}

/// `env` with server settings of its own.
async fn env_with(trainer: ScriptedTrainer, settings: impl FnOnce(&mut lathe::config::ServeConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.job_poll_millis = 50;
    settings(&mut config);
    let server = TestServer::start_full(config, lathe::app::Engine::Custom(Some(std::sync::Arc::new(trainer)))).await;
    let mut datasets = server.datasets().await;
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    let jobs = FineTuningServiceClient::new(server.channel().await);
    Env {
        server,
        jobs,
        train_id: train.id,
        _dir: dir,
    }
}

fn create(train: &str) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        base_model: MODEL.into(),
        training_dataset_id: train.into(),
        suffix: "demo".into(),
        seed: Some(7),
        ..Default::default()
    }
}

/// Every event from `after`, then the terminal job.
async fn watch_all(
    jobs: &mut FineTuningServiceClient<Channel>,
    id: &str,
    after: u64,
) -> (Vec<proto::JobEvent>, proto::Job) {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.into(),
            after_seq: after,
        })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload.unwrap() {
            Payload::Event(e) => events.push(e),
            Payload::End(end) => {
                assert!(stream.message().await.unwrap().is_none(), "end is last");
                return (events, end.job.unwrap());
            }
        }
    }
    panic!("watch ended without its terminal message");
}

/// Waits on the event stream until `pred` holds for an event.
async fn wait_for(
    jobs: &mut FineTuningServiceClient<Channel>,
    id: &str,
    pred: impl Fn(&proto::JobEvent) -> bool,
) -> u64 {
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(msg) = stream.message().await.unwrap() {
        if let Some(Payload::Event(e)) = msg.payload
            && pred(&e)
        {
            return e.seq;
        }
    }
    panic!("condition never held");
}

fn states(events: &[proto::JobEvent]) -> Vec<i32> {
    events
        .iter()
        .filter_map(|e| match e.data {
            Some(job_event::Data::State(s)) => Some(s),
            _ => None,
        })
        .collect()
}

fn metric_step(e: &proto::JobEvent) -> Option<u64> {
    match &e.data {
        Some(job_event::Data::Metrics(m)) => Some(m.step),
        _ => None,
    }
}

#[tokio::test]
async fn a_job_runs_to_a_fine_tuned_model_with_gapless_events() {
    let mut env = env(ScriptedTrainer::default()).await;
    let job = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert!(job.id.starts_with("job_"));
    let (events, done) = watch_all(&mut env.jobs, &job.id, 0).await;

    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>(), "gapless from 1");
    assert_eq!(
        states(&events),
        [
            JobState::ValidatingFiles,
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded
        ]
        .map(|s| s as i32)
    );
    assert_eq!(
        events.iter().filter_map(metric_step).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert_eq!(done.fine_tuned_model, format!("ft:{MODEL}:demo:{}", job.id));
    assert_eq!(done.fine_tuned_checkpoint_step, 20);
    assert_eq!(done.trained_tokens, 20 * 12);
    assert_eq!(done.attempts, 1);

    let ckpts = env
        .jobs
        .list_checkpoints(proto::ListCheckpointsRequest {
            job_id: job.id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ckpts.checkpoints.iter().map(|c| c.step_number).collect::<Vec<_>>(),
        [20, 15]
    );
    assert_eq!(
        ckpts.checkpoints[0].fine_tuned_model_checkpoint,
        format!("{}:ckpt-step-20", done.fine_tuned_model)
    );
    assert!(!ckpts.next_page_token.is_empty());

    let page = env
        .jobs
        .list_job_events(proto::ListJobEventsRequest {
            job_id: job.id.clone(),
            page_size: 5,
            after_seq: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5, 6, 7, 8]);

    let mut models = ModelServiceClient::new(env.server.channel().await);
    let model = models
        .get_model(proto::GetModelRequest {
            id: done.fine_tuned_model.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(
        (model.job_id.as_str(), model.base_model.as_str()),
        (job.id.as_str(), MODEL)
    );
    let listed = models
        .list_models(proto::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.models.len(), 1);
    models
        .delete_model(proto::DeleteModelRequest {
            id: done.fine_tuned_model.clone(),
        })
        .await
        .unwrap();
    let err = models
        .get_model(proto::GetModelRequest {
            id: done.fine_tuned_model,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The job keeps its history.
    let again = env
        .jobs
        .get_job(proto::GetJobRequest { id: job.id })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(again.state, JobState::Succeeded as i32);
    env.server.stop().await;
}

#[tokio::test]
async fn create_rejects_bad_requests_with_field_details_and_is_idempotent() {
    let mut env = env(ScriptedTrainer::default()).await;
    let mut datasets = env.server.datasets().await;
    let eval = upload_fixture(&mut datasets, "eval_items.jsonl", DatasetPurpose::Eval, "").await;
    let broken = upload_fixture(&mut datasets, "sft_broken.jsonl", DatasetPurpose::Sft, "").await;

    let field_of = |s: &tonic::Status| {
        s.get_error_details()
            .bad_request()
            .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let err = env.jobs.create_job(create(&eval.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(field_of(&err), ["training_dataset_id"]);
    let err = env.jobs.create_job(create(&broken.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = env
        .jobs
        .create_job(create("ds_00000000000000000000000000"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let mut bad = create(&env.train_id);
    bad.base_model = "nope".into();
    bad.lora = Some(proto::LoraConfig {
        rank: 999,
        ..Default::default()
    });
    bad.method = Some(proto::FineTuningMethod {
        method: Some(proto::fine_tuning_method::Method::Supervised(proto::SupervisedMethod {
            n_epochs: Some(proto::AutoInt {
                value: Some(proto::auto_int::Value::Number(0)),
            }),
            ..Default::default()
        })),
    });
    bad.early_stopping = Some(proto::EarlyStopping {
        patience: 2,
        min_delta: 0.0,
    });
    bad.resources = Some(proto::JobResources { cpus: -1.0, gpus: 65.0 });
    let err = env.jobs.create_job(bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = field_of(&err);
    for f in [
        "method.supervised.n_epochs",
        "lora.rank",
        "early_stopping.patience",
        "base_model",
        "resources.cpus",
        "resources.gpus",
    ] {
        assert!(fields.iter().any(|x| x == f), "{f} missing in {fields:?}");
    }

    let mut rft = create(&env.train_id);
    rft.method = Some(proto::FineTuningMethod {
        method: Some(proto::fine_tuning_method::Method::Reinforcement(Default::default())),
    });
    let err = env.jobs.create_job(rft).await.unwrap_err();
    assert!(
        field_of(&err).contains(&"method.reinforcement.grader".to_string()),
        "{err:?}"
    );

    // A retried create with the same key gives the same job, not a second.
    let mut keyed = create(&env.train_id);
    keyed.idempotency_key = "retry-me".into();
    // What a job's worker reserves on a Ray cluster: kept as asked.
    keyed.resources = Some(proto::JobResources { cpus: 0.0, gpus: 0.5 });
    let a = env
        .jobs
        .create_job(keyed.clone())
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(a.resources, Some(proto::JobResources { cpus: 0.0, gpus: 0.5 }));
    let b = env.jobs.create_job(keyed).await.unwrap().into_inner().job.unwrap();
    assert_eq!(a.id, b.id);
    let all = env
        .jobs
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.jobs.len(), 1);
    env.server.stop().await;
}

#[tokio::test]
async fn cancel_is_prompt_and_leaves_usable_checkpoints() {
    let mut env = env(ScriptedTrainer {
        steps: 100_000,
        checkpoint_every: 3,
        step_time: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let job = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    wait_for(&mut env.jobs, &job.id, |e| metric_step(e) >= Some(7)).await;

    // In use: the training file cannot be deleted.
    let mut datasets = env.server.datasets().await;
    let err = datasets
        .delete_dataset(proto::DeleteDatasetRequest {
            id: env.train_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let cancelled = env
        .jobs
        .cancel_job(proto::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled as i32);
    let (events, end) = watch_all(&mut env.jobs, &job.id, 0).await;
    assert_eq!(end.state, JobState::Cancelled as i32);
    assert_eq!(*states(&events).last().unwrap(), JobState::Cancelled as i32);
    let err = env
        .jobs
        .cancel_job(proto::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let ckpts = list_checkpoints(&mut env.jobs, &job.id).await;
    assert!(ckpts.len() >= 2);
    // The job is finished, so its dataset is free again.
    env.server.stop().await;
    let mut datasets = {
        let server = TestServer::start(env._dir.path()).await;
        let c = server.datasets().await;
        std::mem::forget(server);
        c
    };
    datasets
        .delete_dataset(proto::DeleteDatasetRequest {
            id: env.train_id.clone(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn pause_and_resume_continue_exactly_from_the_last_checkpoint() {
    let steps = 60;
    let mut env = env(ScriptedTrainer {
        steps,
        checkpoint_every: 4,
        step_time: Duration::from_millis(3),
        ..Default::default()
    })
    .await;
    let job = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    wait_for(&mut env.jobs, &job.id, |e| metric_step(e) >= Some(10)).await;
    let paused = env
        .jobs
        .pause_job(proto::PauseJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(paused.state, JobState::Paused as i32);
    let err = env
        .jobs
        .pause_job(proto::PauseJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let resumed = env
        .jobs
        .resume_job(proto::ResumeJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(resumed.state, JobState::Queued as i32);
    let (events, done) = watch_all(&mut env.jobs, &job.id, 0).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert!(done.attempts >= 2);
    assert!(
        events
            .iter()
            .any(|e| e.message.starts_with("resuming from checkpoint step"))
    );

    // The resumed run ends in exactly the state of an uninterrupted one.
    let last = env
        .jobs
        .list_checkpoints(proto::ListCheckpointsRequest {
            job_id: job.id.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints
        .remove(0);
    assert_eq!(last.step_number, steps);
    let state = read_checkpoint_state(&env._dir, &job.id, steps).await;
    assert_eq!(state, expected_state(steps));
    env.server.stop().await;
}

#[tokio::test]
async fn a_shutdown_gives_the_running_job_back_and_a_restart_resumes_it_exactly() {
    let steps = 60;
    let trainer = ScriptedTrainer {
        steps,
        checkpoint_every: 4,
        step_time: Duration::from_millis(3),
        ..Default::default()
    };
    let mut env = env(trainer.clone()).await;
    let job = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    wait_for(&mut env.jobs, &job.id, |e| metric_step(e) >= Some(10)).await;
    // Returns once the scheduler has stopped the job and handed it back.
    env.server.stop().await;

    let server = TestServer::start_with_trainer(env._dir.path(), trainer).await;
    let mut jobs = FineTuningServiceClient::new(server.channel().await);
    let (events, done) = watch_all(&mut jobs, &job.id, 0).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert_eq!(done.attempts, 2);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gapless across the restart"
    );
    assert_eq!(
        states(&events),
        [
            JobState::ValidatingFiles,
            JobState::Queued,
            JobState::Running,
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded
        ]
        .map(|s| s as i32)
    );
    let handed_back = events
        .iter()
        .find(|e| {
            e.message
                .starts_with("server shutting down; re-queued to resume from checkpoint step ")
        })
        .expect("the hand-back event");
    assert_eq!(handed_back.level, proto::EventLevel::Warn as i32);
    let state = read_checkpoint_state(&env._dir, &job.id, steps).await;
    assert_eq!(state, expected_state(steps), "resumed exactly where it stopped");
    server.stop().await;
}

/// Reads state.json of a checkpoint straight from the blob store.
async fn read_checkpoint_state(dir: &tempfile::TempDir, job_id: &str, step: u64) -> u64 {
    let url = format!("sqlite://{}", dir.path().join("lathe.db").display());
    let store = lathe::store::open(&url).await.unwrap();
    let ckpt = store
        .list_checkpoints(job_id, Some(step + 1), 1)
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    let file = &ckpt.files[0];
    let blobs = lathe::blobs::Blobs::local(dir.path().join("blobs")).unwrap();
    let bytes = blobs.read_range(&file.sha256, 0..file.bytes).await.unwrap();
    assert_eq!(sha256_hex(&bytes), file.sha256, "checkpoint intact");
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["acc"].as_u64().unwrap()
}

#[tokio::test]
async fn watch_resumes_from_a_cursor_without_gaps_or_repeats() {
    let mut env = env(ScriptedTrainer::default()).await;
    let job = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (all, _) = watch_all(&mut env.jobs, &job.id, 0).await;
    for cut in [0, 1, 5, all.len() as u64 - 1, all.len() as u64] {
        let (rest, end) = watch_all(&mut env.jobs, &job.id, cut).await;
        assert_eq!(rest, all[cut as usize..].to_vec(), "after {cut}");
        assert_eq!(end.state, JobState::Succeeded as i32);
    }
    env.server.stop().await;
}

#[tokio::test]
async fn early_stopping_keeps_the_best_checkpoint() {
    let mut env = env(ScriptedTrainer {
        steps: 40,
        checkpoint_every: 5,
        valid_losses: vec![1.0, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0, 1.1],
        ..Default::default()
    })
    .await;
    let mut mk = create(&env.train_id);
    mk.validation_dataset_id = env.train_id.clone();
    mk.early_stopping = Some(proto::EarlyStopping {
        patience: 2,
        min_delta: 0.0,
    });
    let job = env.jobs.create_job(mk).await.unwrap().into_inner().job.unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id, 0).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    assert_eq!(done.fine_tuned_checkpoint_step, 10, "the 0.7 checkpoint");
    assert!(done.stop_reason.contains("early stopping"), "{}", done.stop_reason);
    assert!(
        events.iter().all(|e| metric_step(e) <= Some(20)),
        "stopped after two worse evaluations"
    );
    assert!(
        events.iter().any(|e| e.message.contains("identical")),
        "warned about identical files"
    );
    env.server.stop().await;
}

#[tokio::test]
async fn a_failing_trainer_fails_the_job_with_an_actionable_error() {
    let mut env = env(ScriptedTrainer {
        fail_at: Some(7),
        ..Default::default()
    })
    .await;
    let job = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (_, done) = watch_all(&mut env.jobs, &job.id, 0).await;
    assert_eq!(done.state, JobState::Failed as i32);
    let error = done.error.unwrap();
    assert_eq!(error.code, "out_of_memory");
    assert!(error.message.contains("batch_size"));
    env.server.stop().await;
}

#[tokio::test]
async fn queued_jobs_start_by_priority() {
    let mut env = env(ScriptedTrainer {
        steps: 30,
        step_time: Duration::from_millis(2),
        ..Default::default()
    })
    .await;
    let first = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    wait_for(&mut env.jobs, &first.id, |e| metric_step(e) >= Some(1)).await;
    let low = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut urgent = create(&env.train_id);
    urgent.priority = 10;
    let high = env.jobs.create_job(urgent).await.unwrap().into_inner().job.unwrap();
    let (_, low_done) = watch_all(&mut env.jobs, &low.id, 0).await;
    let (_, high_done) = watch_all(&mut env.jobs, &high.id, 0).await;
    let started = |j: &proto::Job| {
        let t = j.started_at.unwrap();
        (t.seconds, t.nanos)
    };
    assert!(started(&high_done) < started(&low_done), "priority 10 ran first");
    let filtered = env
        .jobs
        .list_jobs(proto::ListJobsRequest {
            state: JobState::Succeeded as i32,
            base_model: MODEL.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.jobs.len(), 3);
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_and_one_that_never_reads() {
    let steps = 300;
    let mut env = env(ScriptedTrainer {
        steps,
        checkpoint_every: 50,
        step_time: Duration::from_micros(500),
        ..Default::default()
    })
    .await;
    let job = env
        .jobs
        .create_job(create(&env.train_id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let channel = env.server.channel().await;
    // The stalled watcher opens its stream and never reads it.
    let mut stalled_client = FineTuningServiceClient::new(env.server.channel().await);
    let _stalled = stalled_client
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap();
    let mut watchers = Vec::new();
    for _ in 0..199 {
        let mut c = FineTuningServiceClient::new(channel.clone());
        let id = job.id.clone();
        watchers.push(tokio::spawn(async move { watch_all(&mut c, &id, 0).await }));
    }
    let mut lengths = std::collections::BTreeSet::new();
    for w in watchers {
        let (events, end) = w.await.unwrap();
        assert_eq!(end.state, JobState::Succeeded as i32);
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
        lengths.insert(events.len());
    }
    assert_eq!(lengths.len(), 1, "every watcher saw the same complete log");
    env.server.stop().await;
}

#[tokio::test]
async fn terminal_states_post_a_signed_webhook_with_retries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/lathe", hook.local_addr().unwrap());
    let receiver = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for attempt in 0..2 {
            let (mut sock, _) = hook.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = sock.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    if buf.len() >= head_end + 4 + len {
                        break;
                    }
                }
            }
            let status = if attempt == 0 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            sock.write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            bodies.push(String::from_utf8(buf).unwrap());
        }
        bodies
    });
    // The listener is a plain-http loopback one, which only an operator's
    // settings let webhooks reach.
    let mut env = env_with(ScriptedTrainer::default(), |c| {
        c.webhook_allow_http = true;
        c.webhook_allow_private_addresses = true;
    })
    .await;
    let mut req = create(&env.train_id);
    req.webhook = Some(proto::Webhook {
        url,
        secret: "s3cret".into(),
    });
    let job = env.jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    assert!(!format!("{job:?}").contains("s3cret"), "the secret is never returned");
    watch_all(&mut env.jobs, &job.id, 0).await;
    let requests = receiver.await.unwrap();
    assert_eq!(requests.len(), 2, "retried after a 500");
    let last = &requests[1];
    let (head, body) = last.split_once("\r\n\r\n").unwrap();
    let sig = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("lathe-signature: ")
                .map(str::to_string)
        })
        .unwrap();
    let t: i64 = sig.split(',').next().unwrap().trim_start_matches("t=").parse().unwrap();
    assert_eq!(sig, lathe::jobs::webhook::signature("s3cret", t, body.as_bytes()));
    let payload: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["type"], "fine_tuning.job.succeeded");
    assert_eq!(payload["data"]["id"], job.id);
    env.server.stop().await;
    // The store holds the secret sealed (`secrets`): not in the database's files.
    for file in ["lathe.db", "lathe.db-wal"] {
        let bytes = std::fs::read(env._dir.path().join(file)).unwrap_or_default();
        assert!(
            !bytes.windows(6).any(|w| w == b"s3cret"),
            "{file} holds the webhook secret in clear"
        );
    }
    assert!(env._dir.path().join("secrets.key").exists());
}

#[tokio::test]
async fn webhooks_to_non_public_addresses_or_plain_http_are_refused_at_create() {
    let env = env(ScriptedTrainer::default()).await;
    let mut jobs = env.jobs.clone();
    for (url, why) in [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.0.0.1/hook", "private"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:192.168.0.1]/hook", "private"),
        ("https://100.64.0.1/hook", "private"),
        ("http://example.com/hook", "https://"),
    ] {
        let mut req = create(&env.train_id);
        req.webhook = Some(proto::Webhook {
            url: url.into(),
            secret: "s3cret".into(),
        });
        let err = jobs.create_job(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        let bad = err.get_details_bad_request().unwrap();
        assert_eq!(bad.field_violations.len(), 1, "{url}: {bad:?}");
        assert_eq!(bad.field_violations[0].field, "webhook.url", "{url}");
        assert!(bad.field_violations[0].description.contains(why), "{url}: {bad:?}");
        assert!(!err.message().contains("s3cret"));
    }
    let listed = jobs
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.jobs.is_empty(), "nothing was created");
    env.server.stop().await;
}

#[tokio::test]
async fn a_webhook_name_that_resolves_to_loopback_is_never_contacted() {
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://localhost:{}/hooks/lathe", hook.local_addr().unwrap().port());
    // Plain http allowed, private addresses not: the name passes at create
    // and is refused when sending.
    let mut env = env_with(ScriptedTrainer::default(), |c| c.webhook_allow_http = true).await;
    let mut req = create(&env.train_id);
    req.webhook = Some(proto::Webhook {
        url,
        secret: "s3cret".into(),
    });
    let job = env.jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    let (_, done) = watch_all(&mut env.jobs, &job.id, 0).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    // The refusal is recorded after the terminal event; wait for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        let events = env
            .jobs
            .list_job_events(proto::ListJobEventsRequest {
                job_id: job.id.clone(),
                page_size: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if let Some(e) = events.iter().find(|e| e.message.starts_with("webhook")) {
            break e.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "no webhook event: {events:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refusal.message.contains("refused"), "{}", refusal.message);
    assert!(refusal.message.contains("localhost"), "{}", refusal.message);
    assert!(!refusal.message.contains("s3cret"));
    // Refused before any connection: the listener has nothing waiting.
    let accepted = tokio::time::timeout(Duration::from_millis(200), hook.accept()).await;
    assert!(accepted.is_err(), "the loopback listener was contacted");
    env.server.stop().await;
}

#[tokio::test]
async fn without_a_trainer_create_job_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_full(
        lathe::config::ServeConfig::embedded(dir.path()),
        lathe::app::Engine::Custom(None),
    )
    .await;
    let mut datasets = server.datasets().await;
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    let mut jobs = FineTuningServiceClient::new(server.channel().await);
    let err = jobs.create_job(create(&train.id)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("no trainer"), "{}", err.message());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_creates_watches_and_exits_non_zero_on_failure() {
    let env = env(ScriptedTrainer {
        fail_at: Some(15),
        ..Default::default()
    })
    .await;
    let addr = env.server.url();
    let train = env.train_id.clone();
    let (watched, list, events) = tokio::task::spawn_blocking(move || {
        let watched = lathe(
            &addr,
            &[
                "--json",
                "jobs",
                "create",
                "--model",
                MODEL,
                "--training-file",
                &train,
                "--suffix",
                "cli",
                "--watch",
            ],
        );
        let list = lathe(&addr, &["jobs", "list", "--state", "failed"]);
        let first: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&watched.stdout).lines().next().unwrap()).unwrap();
        let id = first["id"].as_str().unwrap().to_string();
        let events = lathe(&addr, &["jobs", "events", &id, "--after", "2"]);
        (watched, list, events)
    })
    .await
    .unwrap();
    assert_eq!(watched.status.code(), Some(2), "a failed job exits non-zero");
    let out = String::from_utf8(watched.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["end"]["status"], "failed");
    assert_eq!(last["end"]["error"]["code"], "out_of_memory");
    assert!(
        out.lines().any(|l| l.contains("\"type\":\"metrics\"")),
        "metrics streamed"
    );
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains("failed"), "{list}");
    let events = String::from_utf8(events.stdout).unwrap();
    assert!(events.lines().next().unwrap().trim_start().starts_with('3'), "{events}");
    env.server.stop().await;
}
