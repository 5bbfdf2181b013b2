//! Per-project quotas and fair sharing, under load: four projects with
//! quotas submit jobs, uploads and calls at once; the quotas hold, a busy
//! project does not starve the others, and nothing accepted is lost.

use std::time::Duration;

use crate::common::scripted::{MODEL, ScriptedTrainer};
use crate::common::*;
use lathe::proto::{
    self, admin_service_client::AdminServiceClient, dataset_service_client::DatasetServiceClient,
    fine_tuning_service_client::FineTuningServiceClient,
};
use tonic::Code;
use tonic_types::StatusExt;

fn millis(t: Option<prost_types::Timestamp>) -> i64 {
    let t = t.expect("timestamp");
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

async fn project(admin: &mut AdminServiceClient<Channel>, id: &str, quotas: proto::ProjectQuotas) -> String {
    admin
        .create_project(proto::CreateProjectRequest {
            id: id.into(),
            quotas: Some(quotas),
        })
        .await
        .expect("create project");
    admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: id.into(),
            name: "load".into(),
            owner: "load@example.com".into(),
            role: proto::Role::Member as i32,
        })
        .await
        .expect("create key")
        .into_inner()
        .secret
}

/// Submits `n` jobs as fast as it can; returns the accepted ids and how
/// many were refused by the queued-jobs quota (with RetryInfo).
async fn submit(jobs: &mut FineTuningServiceClient<Channel>, train: &str, n: usize) -> (Vec<String>, usize) {
    let (mut ids, mut refused) = (Vec::new(), 0);
    for _ in 0..n {
        match jobs
            .create_job(proto::CreateJobRequest {
                base_model: MODEL.into(),
                training_dataset_id: train.into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => ids.push(r.into_inner().job.unwrap().id),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("max_queued_jobs"), "{}", status.message());
                assert!(status.get_error_details().retry_info().is_some());
                refused += 1;
            }
        }
    }
    (ids, refused)
}

async fn finished(jobs: &mut FineTuningServiceClient<Channel>, ids: &[String]) -> Vec<proto::Job> {
    let mut out = Vec::new();
    for id in ids {
        for attempt in 0.. {
            let job = jobs
                .get_job(proto::GetJobRequest { id: id.clone() })
                .await
                .unwrap()
                .into_inner()
                .job
                .unwrap();
            if job.finished_at.is_some() {
                out.push(job);
                break;
            }
            assert!(attempt < 1200, "job {id} did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_projects_under_load_keep_their_quotas_and_share_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let trainer = ScriptedTrainer {
        steps: 10,
        checkpoint_every: 10,
        step_time: Duration::from_millis(20),
        ..Default::default()
    };
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.job_poll_millis = 20;
    config.max_concurrent_jobs = 2;
    let server = TestServer::start_full(config, lathe::app::Engine::Custom(Some(std::sync::Arc::new(trainer)))).await;
    let mut admin = AdminServiceClient::new(server.channel().await);

    // "busy" queues many jobs and may hold 8 queued; "small" queues two;
    // "capped" runs one at a time; "limited" has little storage and a low
    // request rate.
    let busy = project(
        &mut admin,
        "busy",
        proto::ProjectQuotas {
            max_queued_jobs: Some(8),
            ..Default::default()
        },
    )
    .await;
    let small = project(&mut admin, "small", proto::ProjectQuotas::default()).await;
    let capped = project(
        &mut admin,
        "capped",
        proto::ProjectQuotas {
            max_running_jobs: Some(1),
            ..Default::default()
        },
    )
    .await;
    let limited = project(
        &mut admin,
        "limited",
        proto::ProjectQuotas {
            max_dataset_bytes: Some(6_000),
            requests_per_second: Some(5.0),
            ..Default::default()
        },
    )
    .await;

    let fixture = std::fs::read(fixture("sft_tools.jsonl")).unwrap();
    let mut clients = Vec::new();
    for key in [&busy, &small, &capped] {
        let channel = server.channel_with(key).await;
        let mut datasets = DatasetServiceClient::new(channel.clone());
        let train = upload_bytes(&mut datasets, "t.jsonl", proto::DatasetPurpose::Sft, "", &fixture, 4096)
            .await
            .unwrap();
        clients.push((FineTuningServiceClient::new(channel), train.id));
    }

    // Busy's burst first; the others a moment later, behind its queue.
    let mut submissions = Vec::new();
    for (i, ((mut jobs, train), n)) in clients.into_iter().zip([20usize, 2, 4]).enumerate() {
        submissions.push(tokio::spawn(async move {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            let (ids, refused) = submit(&mut jobs, &train, n).await;
            let done = finished(&mut jobs, &ids).await;
            (done, refused)
        }));
    }
    let limited_calls = {
        let channel = server.channel_with(&limited).await;
        tokio::spawn(async move {
            let mut datasets = DatasetServiceClient::new(channel);
            let mut out = Vec::new();
            for _ in 0..30 {
                out.push(
                    datasets
                        .list_datasets(proto::ListDatasetsRequest::default())
                        .await
                        .map_err(|s| (s.code(), s.get_error_details().retry_info().and_then(|r| r.retry_delay))),
                );
            }
            out
        })
    };
    let mut results = Vec::new();
    for s in submissions {
        results.push(s.await.unwrap());
    }
    let names = ["busy", "small", "capped"];

    // Nothing accepted is lost: every accepted job succeeded.
    for ((done, _), name) in results.iter().zip(names) {
        assert!(
            done.iter().all(|j| j.state == proto::JobState::Succeeded as i32),
            "{name}: {done:?}"
        );
    }
    // The queued quota refused some of busy's burst, and nobody else's.
    let (busy_done, busy_refused) = &results[0];
    assert!(*busy_refused >= 1, "busy's 20 submissions were all accepted");
    assert_eq!(busy_done.len() + busy_refused, 20);
    assert_eq!((results[1].1, results[2].1), (0, 0));
    // The running quota holds: capped's jobs never overlap in time.
    let mut spans: Vec<(i64, i64)> = results[2]
        .0
        .iter()
        .map(|j| (millis(j.started_at), millis(j.finished_at)))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[1].0 >= w[0].1, "capped ran two jobs at once: {w:?}");
    }
    // Fair sharing: small's first job, queued behind busy's, starts when a
    // worker next frees, within about a job's time (first in, first out
    // would make it wait for busy's whole queue: eight jobs on two workers).
    let wait = |done: &Vec<proto::Job>| -> Vec<i64> {
        done.iter()
            .map(|j| millis(j.started_at) - millis(j.created_at))
            .collect()
    };
    let mean = |w: &[i64]| w.iter().sum::<i64>() as f64 / w.len() as f64;
    let (wb, ws, wc) = (wait(&results[0].0), wait(&results[1].0), wait(&results[2].0));
    let run_ms: Vec<i64> = results[0]
        .0
        .iter()
        .map(|j| millis(j.finished_at) - millis(j.started_at))
        .collect();
    println!(
        "mean wait ms: busy {:.0} ({} jobs), small {:.0} ({}), capped {:.0} ({}); a job runs {:.0} ms",
        mean(&wb),
        wb.len(),
        mean(&ws),
        ws.len(),
        mean(&wc),
        wc.len(),
        mean(&run_ms)
    );
    assert!(
        (*ws.iter().min().unwrap() as f64) < 1.5 * mean(&run_ms) + 100.0,
        "small waited behind busy's queue: {ws:?}, a job runs {run_ms:?}"
    );
    assert!(mean(&ws) < mean(&wb), "small waited as long as busy");

    // The request rate: a burst past five a second is refused with a delay,
    // and the rest are served.
    let calls = limited_calls.await.unwrap();
    let refused: Vec<_> = calls.iter().filter_map(|c| c.as_ref().err()).collect();
    assert!(!refused.is_empty(), "30 calls at once all passed a 5/s quota");
    assert!(calls.iter().filter(|c| c.is_ok()).count() >= 5);
    for (code, delay) in &refused {
        assert_eq!(*code, Code::ResourceExhausted);
        assert!(delay.is_some_and(|d| d <= Duration::from_secs(1)), "{delay:?}");
    }

    // Storage: an upload that would pass the quota is refused and leaves no
    // blob; one that fits is stored.
    tokio::time::sleep(Duration::from_millis(1100)).await; // the rate quota refills
    let mut limited_datasets = DatasetServiceClient::new(server.channel_with(&limited).await);
    let blobs_before = files_under(&dir.path().join("blobs")).len();
    let big = b"{}\n".repeat(2_500);
    let status = upload_bytes(
        &mut limited_datasets,
        "big.jsonl",
        proto::DatasetPurpose::Eval,
        "",
        &big,
        4096,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_dataset_bytes"), "{}", status.message());
    assert_eq!(
        files_under(&dir.path().join("blobs")).len(),
        blobs_before,
        "the refused upload left a blob"
    );
    let fits = upload_bytes(
        &mut limited_datasets,
        "ok.jsonl",
        proto::DatasetPurpose::Eval,
        "",
        b"{}\n{}\n",
        4096,
    )
    .await
    .unwrap();
    assert_eq!(fits.state, proto::DatasetState::Ready as i32);
    server.stop().await;
}
