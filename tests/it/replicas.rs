//! Several processes on one Postgres database: API replicas that run no
//! work, workers that serve no API, and a worker started for one job. Each
//! "process" is a server in this test process with a role of its own; they
//! share only the database and the blob directory, as separate machines
//! share a database and an object store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::common::scripted::{MODEL, ScriptedTrainer};
use crate::common::*;
use lathe::config::{Role, ServeConfig};
use lathe::proto::{
    self, DatasetPurpose, JobState, fine_tuning_service_client::FineTuningServiceClient, watch_job_response::Payload,
};

/// Longer than any test here: a server that finds work or events only by
/// polling would time the test out.
const NEVER_POLL_MILLIS: u64 = 600_000;

const SECRETS_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn config(dir: &Path, db: &TestDatabase, role: Role) -> ServeConfig {
    let mut config = ServeConfig::embedded(dir);
    config.database_url = Some(db.url.clone());
    config.role = role;
    config.job_poll_millis = NEVER_POLL_MILLIS;
    config.secrets_key = Some(lathe::config::Secret(SECRETS_KEY.into()));
    config
}

async fn start(config: ServeConfig, trainer: &ScriptedTrainer) -> TestServer {
    TestServer::start_full(config, lathe::app::Engine::Custom(Some(Arc::new(trainer.clone())))).await
}

fn create(train: &str) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        base_model: MODEL.into(),
        training_dataset_id: train.into(),
        suffix: "replicas".into(),
        seed: Some(7),
        ..Default::default()
    }
}

/// Every event of a job's watch from the start, then its terminal job.
async fn watch_all(server: &TestServer, id: &str) -> (Vec<proto::JobEvent>, proto::Job) {
    let mut jobs = FineTuningServiceClient::new(server.channel().await);
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
            Payload::Event(e) => events.push(e),
            Payload::End(end) => return (events, end.job.unwrap()),
        }
    }
    panic!("watch ended without its terminal message");
}

#[tokio::test]
async fn a_worker_runs_what_a_replica_queued_and_watchers_on_every_replica_see_every_event() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let trainer = ScriptedTrainer {
        steps: 30,
        checkpoint_every: 10,
        step_time: Duration::from_millis(20),
        ..Default::default()
    };
    let a = start(config(dir.path(), &db, Role::Api), &trainer).await;
    let b = start(config(dir.path(), &db, Role::Api), &trainer).await;
    let worker = start(config(dir.path(), &db, Role::Worker), &trainer).await;

    let mut datasets = a.datasets().await;
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    // Created on B; watched on A and B from before the worker claims it.
    let mut jobs_b = FineTuningServiceClient::new(b.channel().await);
    let job = jobs_b
        .create_job(create(&train.id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (on_a, on_b) = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join(watch_all(&a, &job.id), watch_all(&b, &job.id)),
    )
    .await
    .expect("the worker claims on the queue's notification and watchers hear every event without polling");

    for (events, done) in [&on_a, &on_b] {
        assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "gapless from 1, no repeats"
        );
    }
    assert_eq!(on_a.0, on_b.0, "both replicas stream the same log");
    assert!(!done_fine_tuned_model(&on_a.1).is_empty());

    // A worker serves health but not the API.
    let mut on_worker = FineTuningServiceClient::new(worker.channel().await);
    let refused = on_worker
        .get_job(proto::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");

    for server in [a, b, worker] {
        server.stop().await;
    }
    db.drop().await;
}

fn done_fine_tuned_model(job: &proto::Job) -> String {
    job.fine_tuned_model.clone()
}

#[tokio::test]
async fn a_worker_for_one_job_runs_only_that_job_and_then_stops() {
    let Some(db) = TestDatabase::create().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let trainer = ScriptedTrainer::default();
    let api = start(config(dir.path(), &db, Role::Api), &trainer).await;
    let mut datasets = api.datasets().await;
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    let mut jobs = FineTuningServiceClient::new(api.channel().await);
    let first = jobs
        .create_job(create(&train.id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let wanted = jobs
        .create_job(create(&train.id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    let mut worker_config = config(dir.path(), &db, Role::Worker);
    worker_config.only_job = Some(wanted.id.clone());
    let worker = start(worker_config, &trainer).await;
    // It stops on its own once the job has run.
    tokio::time::timeout(Duration::from_secs(60), worker.wait())
        .await
        .expect("the worker stops after its job")
        .expect("a clean stop");
    let get = |id: &str| proto::GetJobRequest { id: id.into() };
    let done = jobs.get_job(get(&wanted.id)).await.unwrap().into_inner().job.unwrap();
    assert_eq!(done.state, JobState::Succeeded as i32);
    let untouched = jobs.get_job(get(&first.id)).await.unwrap().into_inner().job.unwrap();
    assert_eq!(untouched.state, JobState::Queued as i32, "not this worker's job");

    // Started for a job that has ended, a worker has nothing to do.
    let mut again = config(dir.path(), &db, Role::Worker);
    again.only_job = Some(wanted.id.clone());
    let again = start(again, &trainer).await;
    tokio::time::timeout(Duration::from_secs(30), again.wait())
        .await
        .expect("a worker for an ended job stops at once")
        .expect("a clean stop");

    // Started for a job that does not exist, it stops with an error.
    let mut unknown = config(dir.path(), &db, Role::Worker);
    unknown.only_job = Some("job_00000000000000000000000000".into());
    let unknown = start(unknown, &trainer).await;
    let err = tokio::time::timeout(Duration::from_secs(30), unknown.wait())
        .await
        .expect("a worker for no job stops at once")
        .unwrap_err();
    assert!(err.to_string().contains("no such job"), "{err}");

    api.stop().await;
    db.drop().await;
}

#[tokio::test]
async fn split_roles_need_a_shared_database_and_secrets_key() {
    let dir = tempfile::tempdir().unwrap();
    for role in [Role::Api, Role::Worker] {
        let mut config = ServeConfig::embedded(dir.path());
        config.role = role;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let err = lathe::server::run(listener, config, std::future::pending())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("--database-url") && err.contains("postgres"), "{err}");
    }
    let Some(db) = TestDatabase::create().await else { return };
    let mut config = ServeConfig::embedded(dir.path());
    config.role = Role::Worker;
    config.database_url = Some(db.url.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = lathe::server::run(listener, config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("LATHE_SECRETS_KEY"), "{err}");
    db.drop().await;
}
