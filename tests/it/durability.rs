//! kill -9 the server while a job runs; on restart the job resumes from its
//! last checkpoint, the event log has no gap and no repeat, and checkpoints
//! are intact. Uses the scripted trainer in examples/scripted_server.rs.

use crate::common::scripted::{MODEL, expected_state};
use crate::common::*;
use lathe::proto::{
    self, DatasetPurpose, JobState, fine_tuning_service_client::FineTuningServiceClient, job_event,
    watch_job_response::Payload,
};

fn start(data_dir: &std::path::Path) -> (std::process::Child, String) {
    scripted_server(data_dir, 400, 10, 1, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_job_then_restart_resumes_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, url) = start(dir.path());
    let channel = crate::common::connect_local(&url, dir.path()).await;
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(channel.clone());
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    let mut jobs = FineTuningServiceClient::new(channel);
    let job = jobs
        .create_job(proto::CreateJobRequest {
            base_model: MODEL.into(),
            training_dataset_id: train.id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();

    // Watch until a few checkpoints exist, then kill -9 mid-step.
    let mut before = Vec::new();
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    while let Ok(Some(msg)) = stream.message().await {
        let Some(Payload::Event(e)) = msg.payload else { break };
        let step = match &e.data {
            Some(job_event::Data::Metrics(m)) => m.step,
            _ => 0,
        };
        before.push(e);
        if step >= 35 {
            break;
        }
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();

    let (mut server, url) = start(dir.path());
    let channel = crate::common::connect_local(&url, dir.path()).await;
    let mut jobs = FineTuningServiceClient::new(channel);
    let mut stream = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut after = Vec::new();
    let done = loop {
        match stream.message().await.unwrap().unwrap().payload.unwrap() {
            Payload::Event(e) => after.push(e),
            Payload::End(end) => break end.job.unwrap(),
        }
    };
    server.kill().unwrap();
    server.wait().unwrap();

    assert_eq!(done.state, JobState::Succeeded as i32);
    assert_eq!(done.attempts, 2);
    // Nothing recorded before the kill was lost or changed, and the log
    // has no gap and no repeat.
    assert_eq!(after[..before.len()], before[..]);
    let seqs: Vec<u64> = after.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=after.len() as u64).collect::<Vec<_>>());
    let requeued = after
        .iter()
        .find(|e| {
            e.message
                .contains("stopped responding; re-queued to resume from checkpoint step")
        })
        .expect("a re-queue event");
    let step: u64 = requeued.message.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((30..=40).contains(&step), "resumed from step {step}");
    assert!(
        after
            .iter()
            .any(|e| e.message == format!("resuming from checkpoint step {step}"))
    );

    // The resumed run ends exactly where an uninterrupted one would, and
    // every checkpoint's bytes still match their recorded hash.
    let store = lathe::store::open(&format!("sqlite://{}", dir.path().join("lathe.db").display()))
        .await
        .unwrap();
    let blobs = lathe::blobs::Blobs::local(dir.path().join("blobs")).unwrap();
    let checkpoints = store.list_checkpoints(&job.id, None, 1000).await.unwrap();
    assert_eq!(checkpoints.len(), 40);
    for c in &checkpoints {
        for f in &c.files {
            let bytes = blobs.read_range(&f.sha256, 0..f.bytes).await.unwrap();
            assert_eq!(sha256_hex(&bytes), f.sha256);
        }
    }
    let last = &checkpoints[0];
    let bytes = blobs
        .read_range(&last.files[0].sha256, 0..last.files[0].bytes)
        .await
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(state["step"], 400);
    assert_eq!(state["acc"].as_u64().unwrap(), expected_state(400));
}
