//! The storage suite every backend must pass. A backend's test module calls
//! `store_suite!(expression that makes a fresh, empty store)`.

use std::collections::BTreeMap;

use super::{Cursor, DatasetQuery, Store};
use crate::datasets::model::{DatasetRecord, DatasetState, Lineage};
use crate::datasets::report::{DatasetStats, Purpose, ValidationReport};

pub fn dataset(id: &str, created_at: i64, purpose: Option<Purpose>) -> DatasetRecord {
    let mut metadata = BTreeMap::new();
    metadata.insert("team".to_string(), "search".to_string());
    DatasetRecord {
        id: id.to_string(),
        project: "default".to_string(),
        filename: "train.jsonl".to_string(),
        display_name: "Train".to_string(),
        purpose: purpose.unwrap_or(Purpose::Sft),
        state: DatasetState::Ready,
        bytes: 1234,
        sha256: format!("{:0>64}", created_at),
        created_at,
        metadata,
        report: ValidationReport {
            total_rows: 12,
            valid_rows: 12,
            ..Default::default()
        },
        stats: DatasetStats {
            rows: 12,
            tokenizer: "o200k_base".to_string(),
            ..Default::default()
        },
        lineage: None,
    }
}

fn id(n: u32) -> String {
    format!("ds_{n:026}")
}

pub async fn insert_get_roundtrip(store: impl Store) {
    let mut record = dataset(&id(1), 1_700_000_000_000, Some(Purpose::Dpo));
    record.state = DatasetState::Failed;
    record.lineage = Some(Lineage {
        source_dataset_id: id(9),
        split: "validation".to_string(),
        validation_fraction: 0.25,
        seed: 7,
        stratify_by: Some("/label".to_string()),
    });
    store.insert_dataset(&record).await.unwrap();
    assert_eq!(store.get_dataset(&record.id).await.unwrap(), Some(record));
    assert_eq!(store.get_dataset(&id(2)).await.unwrap(), None);
}

pub async fn insert_twice_conflicts(store: impl Store) {
    let record = dataset(&id(1), 5, None);
    store.insert_dataset(&record).await.unwrap();
    let err = store.insert_dataset(&record).await.unwrap_err();
    assert!(matches!(err, super::StoreError::Conflict(_)), "{err}");
    // The first row is untouched.
    assert_eq!(store.get_dataset(&record.id).await.unwrap(), Some(record));
}

pub async fn list_pages_newest_first_without_gaps(store: impl Store) {
    // Several rows share a timestamp so the id tiebreak is exercised.
    for n in 0..25u32 {
        let purpose = if n % 3 == 0 { Purpose::Eval } else { Purpose::Sft };
        store
            .insert_dataset(&dataset(&id(n), 1000 + (n / 2) as i64, Some(purpose)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_datasets(&DatasetQuery {
                project: "default".into(),
                after: after.clone(),
                limit: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some(Cursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        seen.extend(page.into_iter().map(|d| d.id));
    }
    let mut expected: Vec<String> = (0..25).map(id).collect();
    expected.sort_by_key(|i| std::cmp::Reverse((1000 + (i[3..].parse::<i64>().unwrap() / 2), i.clone())));
    assert_eq!(seen, expected);

    let evals = store
        .list_datasets(&DatasetQuery {
            project: "default".into(),
            purposes: vec![Purpose::Eval],
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(evals.len(), 9);
    assert!(evals.iter().all(|d| d.purpose == Purpose::Eval));
}

/// Oldest first pages the other way, and a set of purposes selects each of
/// them (OpenAI's `fine-tune` lists SFT, DPO and RFT datasets).
pub async fn list_pages_oldest_first_and_by_purposes(store: impl Store) {
    let purposes = [Purpose::Sft, Purpose::Dpo, Purpose::Rft, Purpose::Eval];
    for n in 0..20u32 {
        store
            .insert_dataset(&dataset(&id(n), 1000 + (n / 3) as i64, Some(purposes[n as usize % 4])))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_datasets(&DatasetQuery {
                project: "default".into(),
                purposes: vec![Purpose::Sft, Purpose::Rft],
                after: after.clone(),
                oldest_first: true,
                limit: 3,
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(Cursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        seen.extend(page.into_iter().map(|d| (d.id, d.purpose)));
    }
    let expected: Vec<(String, Purpose)> = (0..20u32)
        .filter(|n| n % 2 == 0)
        .map(|n| (id(n), purposes[n as usize % 4]))
        .collect();
    assert_eq!(seen, expected, "ids are created in order, so oldest first is id order");
    let newest = store
        .list_datasets(&DatasetQuery {
            project: "default".into(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest[0].id, id(19));
}

pub async fn delete_returns_record_once(store: impl Store) {
    let record = dataset(&id(1), 5, None);
    store.insert_dataset(&record).await.unwrap();
    assert_eq!(store.delete_dataset(&record.id).await.unwrap(), Some(record.clone()));
    assert_eq!(store.delete_dataset(&record.id).await.unwrap(), None);
    assert_eq!(store.get_dataset(&record.id).await.unwrap(), None);
}

pub async fn blob_references_follow_rows(store: impl Store) {
    let mut a = dataset(&id(1), 5, None);
    let mut b = dataset(&id(2), 6, None);
    a.sha256 = "aa".repeat(32);
    b.sha256 = a.sha256.clone();
    store.insert_dataset(&a).await.unwrap();
    store.insert_dataset(&b).await.unwrap();
    assert_eq!(store.blobs_in_use().await.unwrap(), vec![a.sha256.clone()]);
    store.delete_dataset(&a.id).await.unwrap();
    assert!(store.blob_in_use(&a.sha256).await.unwrap());
    store.delete_dataset(&b.id).await.unwrap();
    assert!(!store.blob_in_use(&a.sha256).await.unwrap());
    assert!(store.blobs_in_use().await.unwrap().is_empty());
    // A FAILED dataset keeps its report, not its bytes: its row holds no blob.
    let mut failed = dataset(&id(3), 7, None);
    failed.sha256 = a.sha256.clone();
    failed.state = DatasetState::Failed;
    store.insert_dataset(&failed).await.unwrap();
    assert!(!store.blob_in_use(&a.sha256).await.unwrap());
    assert!(store.blobs_in_use().await.unwrap().is_empty());
}

// ---- jobs ----

use super::{JobQuery, LeaseKind, Leased, Transition};
use crate::jobs::model::{
    CheckpointFile, CheckpointRecord, EventData, JobPatch, JobRecord, JobSpec, JobState, Level, Lora, Method,
    MethodKind, Metrics, NewEvent,
};
use crate::models::model::{ModelKind, ModelRecord};

pub fn job(n: u32, created_at: i64, priority: i32, key: Option<&str>) -> JobRecord {
    let spec = JobSpec {
        base_model: "tiny".into(),
        training_dataset_id: id(1),
        validation_dataset_id: None,
        method: Method {
            kind: MethodKind::Supervised,
            hyperparameters: Default::default(),
            grader: None,
            response_format: None,
        },
        lora: Lora::default(),
        seed: 7,
        suffix: "t".into(),
        metadata: [("team".to_string(), format!("t{}", n % 2))].into(),
        priority,
        early_stopping: None,
        webhook: None,
        checkpoint_eval: None,
        start_from: None,
        resources: Default::default(),
    };
    let mut job = JobRecord::new(
        format!("job_{n:026}"),
        "default".into(),
        spec,
        key.map(str::to_string),
        created_at,
    );
    job.state = JobState::Queued;
    job
}

fn created() -> NewEvent {
    NewEvent::state(JobState::Queued, Level::Info, "created")
}

/// The dataset the suite's jobs and eval runs name (`id(1)`): they may only
/// be created on a dataset that exists and is ready.
async fn seed_datasets(store: &impl Store) {
    store.insert_dataset(&dataset(&id(1), 1, None)).await.unwrap();
}

/// A dataset cannot be deleted while an unfinished job or eval run uses
/// it, and nothing new can be created on a dataset that is gone or failed:
/// checked one after the other, and with deletes and creates racing.
pub async fn datasets_in_use_are_kept_and_gone_ones_refuse_new_work(store: impl Store) {
    use super::StoreError;
    use crate::evals::model::RunState;
    store.insert_dataset(&dataset(&id(1), 1, None)).await.unwrap();
    let mut failed = dataset(&id(2), 2, None);
    failed.state = DatasetState::Failed;
    store.insert_dataset(&failed).await.unwrap();

    let on = |n: u32, training: u32, validation: Option<u32>| {
        let mut j = job(n, 10 + i64::from(n), 0, None);
        j.spec.training_dataset_id = id(training);
        j.spec.validation_dataset_id = validation.map(id);
        j
    };
    for (j, missing) in [(on(1, 9, None), 9), (on(2, 2, None), 2), (on(3, 1, Some(9)), 9)] {
        match store.insert_job(&j, &created()).await {
            Err(StoreError::Gone(ds)) => assert_eq!(ds, id(missing)),
            other => panic!("job on a missing or failed dataset: {other:?}"),
        }
        assert_eq!(store.get_job(&j.id).await.unwrap(), None);
    }

    let j = on(4, 1, None);
    store.insert_job(&j, &created()).await.unwrap();
    assert!(matches!(store.delete_dataset(&id(1)).await, Err(StoreError::InUse(_))));
    assert!(store.get_dataset(&id(1)).await.unwrap().is_some(), "kept while in use");
    let ev = NewEvent::state(JobState::Cancelled, Level::Info, "cancelled");
    store
        .transition_job(
            &j.id,
            &[JobState::Queued],
            JobState::Cancelled,
            &JobPatch::default(),
            &ev,
            20,
        )
        .await
        .unwrap();
    assert_eq!(store.delete_dataset(&id(1)).await.unwrap().map(|d| d.id), Some(id(1)));
    assert_eq!(store.delete_dataset(&id(1)).await.unwrap(), None);
    assert!(matches!(
        store.insert_job(&on(5, 1, None), &created()).await,
        Err(StoreError::Gone(_))
    ));

    // Eval runs pin their dataset the same way.
    let eval = eval_record(1);
    store.insert_eval(&eval).await.unwrap();
    store.insert_dataset(&dataset(&id(1), 3, None)).await.unwrap();
    let mut run = run_record(1, &eval.id, 30);
    run.spec.dataset_id = id(1);
    store.insert_eval_run(&run).await.unwrap();
    assert_eq!(run.state, RunState::Queued);
    assert!(matches!(store.delete_dataset(&id(1)).await, Err(StoreError::InUse(_))));
    let mut orphan = run_record(2, &eval.id, 31);
    orphan.spec.dataset_id = id(9);
    assert!(matches!(store.insert_eval_run(&orphan).await, Err(StoreError::Gone(_))));

    // Prompt optimisations pin their training, validation and held-out data.
    for (n, which) in [(3u32, 0), (4, 1), (5, 2)] {
        store
            .insert_dataset(&dataset(&id(n), 40 + i64::from(n), None))
            .await
            .unwrap();
        let mut o = optimization_record(n, 40);
        match which {
            0 => o.spec.train_dataset_id = id(n),
            1 => o.spec.validation_dataset_id = id(n),
            _ => o.spec.test_dataset_id = Some(id(n)),
        }
        store.insert_optimization(&o).await.unwrap();
        assert!(
            matches!(store.delete_dataset(&id(n)).await, Err(StoreError::InUse(_))),
            "{which}"
        );
        store
            .finish_optimization(&o.id, &[RunState::Queued], RunState::Canceled, None, 50)
            .await
            .unwrap()
            .unwrap();
        assert!(store.delete_dataset(&id(n)).await.unwrap().is_some(), "{which}");
    }

    // Racing: each round, a delete and a create on the same fresh dataset.
    // Either may win, never both.
    for round in 0..20u32 {
        let ds = 100 + round;
        store
            .insert_dataset(&dataset(&id(ds), 100 + i64::from(round), None))
            .await
            .unwrap();
        let j = on(100 + round, ds, None);
        let (ds_id, ev) = (id(ds), created());
        let (deleted, created_job) = tokio::join!(store.delete_dataset(&ds_id), store.insert_job(&j, &ev));
        match (deleted, created_job) {
            (Ok(Some(_)), Err(StoreError::Gone(_))) => {}
            (Err(StoreError::InUse(_)), Ok(_)) => {
                assert!(store.get_dataset(&id(ds)).await.unwrap().is_some());
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

pub async fn jobs_insert_is_idempotent_by_key(store: impl Store) {
    seed_datasets(&store).await;
    let a = job(1, 10, 0, Some("k1"));
    let (got, created_now) = store.insert_job(&a, &created()).await.unwrap();
    assert!(created_now);
    assert_eq!(got, a);
    let mut retry = job(2, 11, 0, Some("k1"));
    retry.spec.suffix = "other".into();
    let (got, created_now) = store.insert_job(&retry, &created()).await.unwrap();
    assert!(!created_now);
    assert_eq!(got.id, a.id, "the retried create returns the first job");
    assert_eq!(store.get_job(&retry.id).await.unwrap(), None);
    let events = store.list_events(&a.id, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].seq, 1);
}

pub async fn jobs_transitions_are_compare_and_set_with_gapless_events(store: impl Store) {
    seed_datasets(&store).await;
    let a = job(1, 10, 0, None);
    store.insert_job(&a, &created()).await.unwrap();
    let patch = JobPatch {
        stop_reason: Some("asked".into()),
        ..Default::default()
    };
    let ev = NewEvent::state(JobState::Paused, Level::Info, "paused");
    let Transition::Done(job, event) = store
        .transition_job(&a.id, &[JobState::Queued], JobState::Paused, &patch, &ev, 20)
        .await
        .unwrap()
    else {
        panic!("expected a transition");
    };
    assert_eq!(job.state, JobState::Paused);
    assert_eq!(job.stop_reason.as_deref(), Some("asked"));
    assert_eq!(event.seq, 2);
    // Not allowed from PAUSED: nothing changes, the current job comes back.
    let r = store
        .transition_job(
            &a.id,
            &[JobState::Running],
            JobState::Succeeded,
            &JobPatch::default(),
            &ev,
            30,
        )
        .await
        .unwrap();
    assert_eq!(r, Transition::Conflict(Some(job.clone())));
    let r = store
        .transition_job(
            "job_missing",
            &[JobState::Running],
            JobState::Succeeded,
            &JobPatch::default(),
            &ev,
            30,
        )
        .await
        .unwrap();
    assert_eq!(r, Transition::Conflict(None));
    for i in 0..5 {
        let e = store
            .append_event(&a.id, &NewEvent::info(format!("log {i}")), 40)
            .await
            .unwrap();
        assert_eq!(e.seq, 3 + i);
    }
    let events = store.list_events(&a.id, 2, 3).await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(events[0].message, "log 0");
    assert_eq!(events[0].data, EventData::Message);
    // Newest first, for a door that lists the latest events first.
    let seqs = |events: Vec<crate::jobs::model::JobEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(seqs(store.list_events_before(&a.id, None, 3).await.unwrap()), [7, 6, 5]);
    assert_eq!(
        seqs(store.list_events_before(&a.id, Some(5), 10).await.unwrap()),
        [4, 3, 2, 1]
    );
    assert!(store.list_events_before(&a.id, Some(1), 10).await.unwrap().is_empty());
    assert!(
        store
            .list_events_before("job_missing", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// What the lease mechanism adds for jobs: a claim counts the attempt, and
/// every lease change appends its event with the job's next sequence
/// number, in the same transaction; a change without its event is refused
/// and writes nothing.
pub async fn jobs_lease_changes_count_attempts_and_append_events(store: impl Store) {
    seed_datasets(&store).await;
    let a = job(1, 10, 0, None);
    store.insert_job(&a, &created()).await.unwrap();
    let kind = LeaseKind::Job;
    assert!(matches!(
        store.claim_next(kind, "w1", None, 100, 200, None).await,
        Err(super::StoreError::EventMissing(_))
    ));
    assert_eq!(store.get_job(&a.id).await.unwrap().unwrap().state, JobState::Queued);

    let running = NewEvent::state(JobState::Running, Level::Info, "running on worker w1");
    let change = store
        .claim_next(kind, "w1", None, 100, 200, Some(&running))
        .await
        .unwrap()
        .unwrap();
    let claimed = change.item.into_job().unwrap();
    assert_eq!(
        (claimed.state, claimed.attempts, claimed.started_at),
        (JobState::Running, 1, Some(100))
    );
    let event = change.event.unwrap();
    assert_eq!(
        (event.seq, event.created_at, event.message.as_str()),
        (2, 100, "running on worker w1")
    );
    assert_eq!(event.data, running.data);

    let requeued = NewEvent::state(JobState::Queued, Level::Warn, "the worker stopped responding");
    let change = store
        .requeue_expired(kind, &a.id, 250, Some(&requeued))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.event.map(|e| (e.seq, e.level)), Some((3, Level::Warn)));
    let change = store
        .claim_next(kind, "w2", None, 260, 400, Some(&running))
        .await
        .unwrap()
        .unwrap();
    let again = change.item.into_job().unwrap();
    assert_eq!(
        (again.attempts, again.started_at),
        (2, Some(100)),
        "attempts count, the start stays"
    );
    assert_eq!(change.event.map(|e| e.seq), Some(4));

    assert!(matches!(
        store.release_lease(kind, &a.id, "w2", 300, None).await,
        Err(super::StoreError::EventMissing(_))
    ));
    let held = store.get_job(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (held.state, held.lease_owner.as_deref()),
        (JobState::Running, Some("w2"))
    );
    let released = NewEvent::state(JobState::Queued, Level::Warn, "server shutting down; re-queued");
    let change = store
        .release_lease(kind, &a.id, "w2", 300, Some(&released))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.event.map(|e| e.seq), Some(5));
    let events = store.list_events(&a.id, 0, 10).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "no gaps"
    );
    assert_eq!(events[4].message, "server shutting down; re-queued");
}

pub async fn jobs_checkpoints_need_the_lease_and_pin_blobs(store: impl Store) {
    seed_datasets(&store).await;
    let a = job(1, 10, 0, None);
    store.insert_job(&a, &created()).await.unwrap();
    let running = NewEvent::state(JobState::Running, Level::Info, "running");
    store
        .claim_next(LeaseKind::Job, "w1", None, 10, 1000, Some(&running))
        .await
        .unwrap()
        .unwrap();
    let checkpoint = |step: u64, sha: &str| CheckpointRecord {
        id: format!("ckpt_{sha}{step:025}"),
        job_id: a.id.clone(),
        step,
        created_at: 50 + step as i64,
        metrics: Metrics {
            step,
            train_loss: Some(1.0 / step as f64),
            ..Default::default()
        },
        files: vec![CheckpointFile {
            name: "adapter_model.safetensors".into(),
            sha256: sha.repeat(64),
            bytes: 10,
        }],
    };
    let event = |step: u64| NewEvent {
        level: Level::Info,
        message: format!("checkpoint at step {step}"),
        data: EventData::Checkpoint {
            checkpoint_id: String::new(),
            step,
            metrics: Metrics::default(),
        },
    };
    assert!(
        store
            .insert_checkpoint(&checkpoint(1, "a"), "intruder", &event(1))
            .await
            .unwrap()
            .is_none()
    );
    // So are a runner's events and its job's end.
    let note = NewEvent::info("step 1");
    assert!(
        store
            .append_held_event(&a.id, "intruder", &note, 20)
            .await
            .unwrap()
            .is_none()
    );
    let noted = store.append_held_event(&a.id, "w1", &note, 20).await.unwrap().unwrap();
    let fenced_end = JobPatch {
        finished_at: Some(30),
        release_lease: true,
        held_by: Some("intruder".into()),
        ..Default::default()
    };
    let failed = NewEvent::state(JobState::Failed, Level::Error, "failed");
    let refused = store
        .transition_job(&a.id, &[JobState::Running], JobState::Failed, &fenced_end, &failed, 30)
        .await
        .unwrap();
    assert!(matches!(refused, Transition::Conflict(Some(ref j)) if j.state == JobState::Running));
    let e = store
        .insert_checkpoint(&checkpoint(1, "a"), "w1", &event(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.seq, noted.seq + 1, "a refused write takes no sequence number");
    // The same write again (a retry whose first answer was lost): its
    // event as it was, nothing written twice.
    let again = store
        .insert_checkpoint(&checkpoint(1, "a"), "w1", &event(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, e);
    assert_eq!(store.list_events(&a.id, 0, 100).await.unwrap().last(), Some(&e));
    let EventData::Checkpoint { checkpoint_id, .. } = &e.data else {
        panic!("checkpoint event expected")
    };
    assert_eq!(checkpoint_id, &checkpoint(1, "a").id);
    store
        .insert_checkpoint(&checkpoint(2, "b"), "w1", &event(2))
        .await
        .unwrap()
        .unwrap();
    // A step re-run after a resume replaces that step's files.
    store
        .insert_checkpoint(&checkpoint(2, "c"), "w1", &event(2))
        .await
        .unwrap()
        .unwrap();
    let list = store.list_checkpoints(&a.id, None, 10).await.unwrap();
    assert_eq!(list.iter().map(|c| c.step).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(list[0].files[0].sha256, "c".repeat(64));
    assert_eq!(store.list_checkpoints(&a.id, Some(2), 10).await.unwrap().len(), 1);
    // A checkpoint's step by its id, within its job only.
    assert_eq!(store.checkpoint_step(&a.id, &list[1].id).await.unwrap(), Some(1));
    assert_eq!(store.checkpoint_step(&a.id, "ckpt_missing").await.unwrap(), None);
    assert_eq!(store.checkpoint_step("job_other", &list[1].id).await.unwrap(), None);
    // A checkpoint eval adds its pass rate afterwards; files stay.
    let mut scored = list[1].metrics.clone();
    scored.eval_pass_rate = Some(0.75);
    scored.eval_run_id = Some("evalrun_x".into());
    assert!(store.update_checkpoint_metrics(&a.id, 1, &scored).await.unwrap());
    assert!(!store.update_checkpoint_metrics(&a.id, 99, &scored).await.unwrap());
    let list = store.list_checkpoints(&a.id, None, 10).await.unwrap();
    assert_eq!(list[1].metrics, scored);
    assert_eq!(list[1].files[0].sha256, "a".repeat(64));
    assert!(store.blob_in_use(&"a".repeat(64)).await.unwrap());
    assert!(!store.blob_in_use(&"b".repeat(64)).await.unwrap());
    // Pruning a checkpoint's files keeps its record and unpins its blobs.
    store
        .insert_checkpoint(&checkpoint(3, "d"), "w1", &event(3))
        .await
        .unwrap()
        .unwrap();
    let freed = store.delete_checkpoint_files(&a.id, &[3, 99]).await.unwrap();
    assert_eq!(freed, ["d".repeat(64)]);
    assert!(!store.blob_in_use(&"d".repeat(64)).await.unwrap());
    let list = store.list_checkpoints(&a.id, None, 10).await.unwrap();
    assert_eq!(
        list.iter().map(|c| (c.step, c.files.len())).collect::<Vec<_>>(),
        [(3, 0), (2, 1), (1, 1)]
    );
    assert!(store.delete_checkpoint_files(&a.id, &[3]).await.unwrap().is_empty());

    assert!(store.dataset_in_use(&id(1)).await.unwrap());
    let model = ModelRecord {
        id: "ft:tiny:t:job".into(),
        project: Some("default".into()),
        kind: ModelKind::FineTuned,
        base_model: "tiny".into(),
        job_id: Some(a.id.clone()),
        checkpoint_step: Some(2),
        created_at: 99,
        info: None,
    };
    store.insert_model(&model).await.unwrap();
    assert_eq!(store.get_model(&model.id).await.unwrap(), Some(model.clone()));
    assert_eq!(
        store.list_models("default", None, None, 10).await.unwrap(),
        vec![model.clone()]
    );
    let base = ModelRecord {
        id: "tiny".into(),
        project: None,
        kind: ModelKind::Base,
        base_model: "tiny".into(),
        job_id: None,
        checkpoint_step: None,
        created_at: 98,
        info: Some(crate::models::BaseModelInfo {
            path: "/models/tiny".into(),
            format: "gguf".into(),
            architecture: "llama".into(),
            parameters: 64,
            context_length: 8192,
            files: Vec::new(),
        }),
    };
    // A stored base model's files pin their blobs until it is deleted.
    let mut stored = base.clone();
    stored.id = "stored".into();
    stored.base_model = "stored".into();
    if let Some(info) = &mut stored.info {
        info.path.clear();
        info.files = ["e", "f"]
            .iter()
            .map(|c| crate::models::model::ModelFile {
                name: format!("{c}.safetensors"),
                sha256: c.repeat(64),
                bytes: 10,
            })
            .collect();
    }
    store.register_model(&stored).await.unwrap();
    assert_eq!(store.get_model("stored").await.unwrap(), Some(stored.clone()));
    assert!(store.blob_in_use(&"e".repeat(64)).await.unwrap());
    assert!(store.blobs_in_use().await.unwrap().contains(&"f".repeat(64)));
    let (_, freed) = store.delete_model("stored").await.unwrap().unwrap();
    assert_eq!(freed.len(), 2);
    assert!(!store.blob_in_use(&"e".repeat(64)).await.unwrap());
    assert!(!store.blobs_in_use().await.unwrap().contains(&"f".repeat(64)));
    store.register_model(&base).await.unwrap();
    assert!(matches!(
        store.register_model(&base).await,
        Err(super::StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .list_models("default", Some(ModelKind::Base), None, 10)
            .await
            .unwrap(),
        vec![base.clone()]
    );
    assert_eq!(
        store
            .list_models("default", Some(ModelKind::FineTuned), None, 10)
            .await
            .unwrap(),
        vec![model.clone()]
    );
    assert_eq!(
        store
            .list_models("default", None, Some("ft:tiny:t:job"), 10)
            .await
            .unwrap(),
        vec![base.clone()]
    );
    assert_eq!(
        store.fine_tuned_models_of("tiny", 10).await.unwrap(),
        vec![model.id.clone()]
    );
    assert!(store.fine_tuned_models_of("other", 10).await.unwrap().is_empty());
    assert!(
        !store.forget_fine_tuned_model("tiny").await.unwrap(),
        "base models are not forgotten"
    );
    let (deleted, mut shas) = store.delete_model(&model.id).await.unwrap().unwrap();
    shas.sort();
    assert_eq!(deleted, model);
    assert_eq!(shas, ["a".repeat(64), "c".repeat(64)]);
    assert!(!store.blob_in_use(&"a".repeat(64)).await.unwrap());
    assert_eq!(
        store.list_checkpoints(&a.id, None, 10).await.unwrap().len(),
        3,
        "history stays"
    );
    let done = NewEvent::state(JobState::Succeeded, Level::Info, "done");
    store
        .transition_job(
            &a.id,
            &[JobState::Running],
            JobState::Succeeded,
            &JobPatch::default(),
            &done,
            100,
        )
        .await
        .unwrap();
    assert!(
        !store.dataset_in_use(&id(1)).await.unwrap(),
        "finished jobs do not pin datasets"
    );
}

pub async fn jobs_list_filters_and_pages(store: impl Store) {
    seed_datasets(&store).await;
    for n in 0..9u32 {
        let mut j = job(n, 100 + n as i64, 0, None);
        if n % 3 == 0 {
            j.spec.base_model = "other".into();
        }
        store.insert_job(&j, &created()).await.unwrap();
    }
    let page = |after: Option<super::Cursor>| JobQuery {
        metadata: vec![("team".into(), "t1".into())],
        after,
        limit: 2,
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let jobs = store.list_jobs(&page(after.clone())).await.unwrap();
        if jobs.is_empty() {
            break;
        }
        let last = jobs.last().unwrap();
        after = Some(super::Cursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        seen.extend(jobs.into_iter().map(|j| j.id));
    }
    assert_eq!(seen, [7u32, 5, 3, 1].map(|n| job(n, 0, 0, None).id));
    let other = store
        .list_jobs(&JobQuery {
            base_model: Some("other".into()),
            state: Some(JobState::Queued),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(other.len(), 3);
}

fn saved_grader(name: &str, created_at: i64) -> super::GraderRecord {
    super::GraderRecord {
        project: "default".to_string(),
        name: name.to_string(),
        grader: serde_json::json!({
            "type": "string_check",
            "name": name,
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.answer }}",
            "operation": "eq",
            "nested": {"weights": [0.5, 1.25], "unicode": "é"}
        }),
        created_at,
    }
}

fn stored_completion(
    n: u32,
    project: &str,
    model: &str,
    created_at: i64,
    tags: &[(&str, &str)],
) -> crate::completions::model::StoredCompletion {
    crate::completions::model::StoredCompletion {
        id: format!("chatcmpl-{n:026}"),
        project: project.to_string(),
        model: model.to_string(),
        created_at,
        metadata: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        request: serde_json::json!({"messages": [{"role": "user", "content": format!("q{n}")}], "temperature": 0.5}),
        choices: vec![
            serde_json::json!({"index": 0, "message": {"role": "assistant", "content": format!("a{n}")},
                                         "finish_reason": "stop"}),
        ],
        prompt_tokens: 7,
        completion_tokens: n as u64,
    }
}

pub async fn completions_filter_by_model_and_metadata_page_and_change(store: impl Store) {
    use crate::evals::model::Order;
    use crate::store::types::CompletionQuery;
    let rows = [
        stored_completion(1, "default", "m1", 100, &[("team", "search"), ("env", "prod")]),
        stored_completion(2, "default", "m2", 200, &[("team", "search")]),
        stored_completion(3, "default", "m1", 200, &[("team", "ads"), ("env", "prod")]),
        stored_completion(4, "other", "m1", 300, &[("team", "search"), ("env", "prod")]),
        stored_completion(5, "default", "m1", 400, &[("team", "search"), ("env", "prod")]),
    ];
    for c in &rows {
        store.insert_completion(c).await.unwrap();
    }
    assert_eq!(store.get_completion(&rows[0].id).await.unwrap(), Some(rows[0].clone()));
    let err = store.insert_completion(&rows[0]).await.unwrap_err();
    assert!(matches!(err, super::StoreError::Conflict(_)), "{err}");
    let query = |model: Option<&str>,
                 tags: &[(&str, &str)],
                 order,
                 after: Option<&crate::completions::model::StoredCompletion>,
                 limit| CompletionQuery {
        project: "default".into(),
        model: model.map(str::to_string),
        metadata: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        order,
        after: after.map(|c| Cursor {
            created_at: c.created_at,
            id: c.id.clone(),
        }),
        limit,
    };
    let ids =
        |found: Vec<crate::completions::model::StoredCompletion>| found.into_iter().map(|c| c.id).collect::<Vec<_>>();
    let id = |i: usize| rows[i].id.clone();
    // Oldest first, ties by id; the other project's never.
    let all = store
        .list_completions(&query(None, &[], Order::Ascending, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(all), vec![id(0), id(1), id(2), id(4)]);
    let newest = store
        .list_completions(&query(None, &[], Order::Descending, None, 2))
        .await
        .unwrap();
    assert_eq!(ids(newest), vec![id(4), id(2)]);
    let next = store
        .list_completions(&query(None, &[], Order::Descending, Some(&rows[2]), 2))
        .await
        .unwrap();
    assert_eq!(ids(next), vec![id(1), id(0)]);
    let m1 = store
        .list_completions(&query(Some("m1"), &[], Order::Ascending, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(m1), vec![id(0), id(2), id(4)]);
    let both = [("team", "search"), ("env", "prod")];
    let tagged = store
        .list_completions(&query(Some("m1"), &both, Order::Ascending, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(tagged), vec![id(0), id(4)]);
    let after = store
        .list_completions(&query(None, &both, Order::Ascending, Some(&rows[0]), 10))
        .await
        .unwrap();
    assert_eq!(ids(after), vec![id(4)]);
    let none = store
        .list_completions(&query(None, &[("team", "nobody")], Order::Ascending, None, 10))
        .await
        .unwrap();
    assert!(none.is_empty());

    // New metadata replaces the old, in the row and in what filters find.
    let relabelled = std::collections::BTreeMap::from([("team".to_string(), "ads".to_string())]);
    let changed = store
        .set_completion_metadata(&rows[0].id, &relabelled)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.metadata, relabelled);
    assert_eq!(changed.choices, rows[0].choices, "only the metadata changes");
    let ads = store
        .list_completions(&query(None, &[("team", "ads")], Order::Ascending, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(ads), vec![id(0), id(2)]);
    let prod = store
        .list_completions(&query(None, &[("env", "prod")], Order::Ascending, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(prod), vec![id(2), id(4)]);
    let missing = format!("chatcmpl-{:026}", 99);
    assert_eq!(
        store.set_completion_metadata(&missing, &relabelled).await.unwrap(),
        None
    );

    assert!(store.delete_completion(&rows[2].id).await.unwrap());
    assert!(!store.delete_completion(&rows[2].id).await.unwrap());
    assert_eq!(store.get_completion(&rows[2].id).await.unwrap(), None);
    let ads = store
        .list_completions(&query(None, &[("team", "ads")], Order::Ascending, None, 10))
        .await
        .unwrap();
    assert_eq!(ids(ads), vec![id(0)]);
}

pub async fn graders_insert_get_and_conflict(store: impl Store) {
    let g = saved_grader("exact-match_v1", 1_700_000_000_123);
    store.insert_grader(&g).await.unwrap();
    assert_eq!(store.get_grader("default", &g.name).await.unwrap(), Some(g.clone()));
    assert_eq!(store.get_grader("default", "missing").await.unwrap(), None);
    let mut again = saved_grader("exact-match_v1", 5);
    again.grader = serde_json::json!({"type": "multi"});
    let err = store.insert_grader(&again).await.unwrap_err();
    assert!(
        matches!(err, super::StoreError::Conflict(ref n) if n == "exact-match_v1"),
        "{err}"
    );
    assert_eq!(
        store.get_grader("default", &g.name).await.unwrap(),
        Some(g),
        "a conflict changes nothing"
    );
}

pub async fn graders_list_pages_in_name_order(store: impl Store) {
    let names = ["b", "A", "a-1", "a_1", "Z9", "c"];
    for (i, name) in names.iter().enumerate() {
        store.insert_grader(&saved_grader(name, i as i64)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_graders("default", after.as_deref(), 4).await.unwrap();
        assert!(page.len() <= 4);
        let Some(last) = page.last() else { break };
        after = Some(last.name.clone());
        seen.extend(page.into_iter().map(|g| g.name));
    }
    // Byte order on every backend.
    assert_eq!(seen, ["A", "Z9", "a-1", "a_1", "b", "c"]);
    assert!(store.list_graders("default", Some("c"), 10).await.unwrap().is_empty());
}

pub fn eval_record(n: u32) -> crate::evals::model::EvalRecord {
    use crate::evals::model::*;
    EvalRecord {
        id: format!("eval_{n:026}"),
        project: "default".into(),
        name: "arithmetic".into(),
        spec: EvalSpec {
            item_schema: Some(serde_json::json!({"type": "object"})),
            include_sample_schema: true,
            criteria: vec![Criterion {
                name: "exact".into(),
                grader: serde_json::json!({"type": "string_check", "name": "exact"}),
                pass_threshold: 1.0,
            }],
            metadata: BTreeMap::new(),
        },
        created_at: 10,
        updated_at: 10,
    }
}

pub fn optimization_record(n: u32, created_at: i64) -> crate::optimize::model::OptimizationRecord {
    use crate::optimize::model::*;
    OptimizationRecord {
        id: format!("popt_{n:026}"),
        project: "default".into(),
        spec: OptimizationSpec {
            name: String::new(),
            eval_id: eval_record(1).id,
            model: "m".into(),
            input_messages: vec![serde_json::json!({"role": "user", "content": "{{ item.a }}"})],
            sampling: Default::default(),
            instructions: "Answer.".into(),
            candidate_instructions: vec!["Answer briefly.".into()],
            reflection_model: None,
            train_dataset_id: id(1),
            validation_dataset_id: id(1),
            test_dataset_id: None,
            max_demos: 0,
            demo_answer_field: None,
            minibatch_size: 8,
            max_model_calls: 100,
            calls_per_item: 1,
            seed: 0,
            concurrency: 8,
        },
        state: crate::evals::model::RunState::Queued,
        search: Search::default(),
        error: None,
        created_at,
        started_at: None,
        finished_at: None,
        lease_owner: None,
        lease_expires_at: None,
    }
}

/// A run's search is saved only under its lease, and finishing it is a
/// compare-and-set on its state.
pub async fn optimizations_save_under_the_lease_and_finish_once(store: impl Store) {
    use crate::evals::model::RunState;
    use crate::store::LeaseKind;
    let o = optimization_record(1, 10);
    store.insert_optimization(&o).await.unwrap();
    assert_eq!(store.get_optimization(&o.id).await.unwrap(), Some(o.clone()));
    let mut search = crate::optimize::model::Search {
        steps: 3,
        calls_used: 40,
        ..Default::default()
    };
    assert!(
        !store.save_optimization(&o.id, "w1", &search).await.unwrap(),
        "not claimed"
    );
    store
        .claim_next(LeaseKind::Optimization, "w1", None, 100, 200, None)
        .await
        .unwrap()
        .unwrap();
    assert!(
        !store.save_optimization(&o.id, "w2", &search).await.unwrap(),
        "another worker's lease"
    );
    assert!(store.save_optimization(&o.id, "w1", &search).await.unwrap());
    let saved = store.get_optimization(&o.id).await.unwrap().unwrap();
    assert_eq!((saved.search.steps, saved.search.calls_used), (3, 40));
    let done = store
        .finish_optimization(&o.id, &[RunState::InProgress], RunState::Completed, None, 300)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state, done.finished_at, done.lease_owner),
        (RunState::Completed, Some(300), None)
    );
    search.steps = 4;
    assert!(
        !store.save_optimization(&o.id, "w1", &search).await.unwrap(),
        "finished"
    );
    let again = store
        .finish_optimization(
            &o.id,
            &[RunState::Queued, RunState::InProgress],
            RunState::Canceled,
            None,
            400,
        )
        .await
        .unwrap();
    assert_eq!(again, None);
    assert_eq!(store.get_optimization(&o.id).await.unwrap().unwrap().search.steps, 3);
}

pub fn run_record(n: u32, eval: &str, created_at: i64) -> crate::evals::model::RunRecord {
    use crate::evals::model::*;
    RunRecord {
        id: format!("evalrun_{n:026}"),
        project: "default".into(),
        eval_id: eval.to_string(),
        spec: RunSpec {
            name: String::new(),
            dataset_id: id(1),
            source: DataSource::Precomputed {
                sample_template: "{{ item.a }}".into(),
            },
            concurrency: 4,
            error_rate_threshold: 0.5,
            criteria: vec!["exact".into()],
            metadata: BTreeMap::from([("team".to_string(), "search".to_string())]),
            budget: Budget {
                max_model_calls: Some(30),
                max_tokens: None,
            },
            calls_per_item: 1,
        },
        state: RunState::Queued,
        total: 3,
        progress: Progress {
            per_criterion: vec![CriterionCounts::default()],
            ..Default::default()
        },
        error: None,
        created_at,
        started_at: None,
        finished_at: None,
        lease_owner: None,
        lease_expires_at: None,
    }
}

/// Ten items of `run` in dataset order, after `after_index`.
fn items(run: &str, status: Option<crate::evals::model::ItemStatus>, after_index: Option<u64>) -> super::ItemQuery {
    super::ItemQuery {
        run_id: run.to_string(),
        status,
        order: crate::evals::model::Order::Ascending,
        after_index,
        limit: 10,
    }
}

fn output_item(
    run: &str,
    index: u64,
    status: crate::evals::model::ItemStatus,
    completed: u64,
) -> crate::evals::model::OutputItemRecord {
    use crate::evals::model::*;
    OutputItemRecord {
        run_id: run.to_string(),
        index,
        seq: 0,
        status,
        detail: ItemDetail {
            item: serde_json::json!({"a": index}),
            sample: index.to_string(),
            ..Default::default()
        },
        progress: Progress {
            completed,
            ..Default::default()
        },
        created_at: 100 + index as i64,
    }
}

pub async fn evals_runs_are_leased_and_record_items_with_gapless_seqs(store: impl Store) {
    seed_datasets(&store).await;
    use crate::evals::model::{ItemStatus, RunState};
    let eval = eval_record(1);
    store.insert_eval(&eval).await.unwrap();
    assert_eq!(store.get_eval(&eval.id).await.unwrap(), Some(eval.clone()));
    assert!(matches!(
        store.insert_eval(&eval).await,
        Err(super::StoreError::Conflict(_))
    ));
    let run = run_record(1, &eval.id, 20);
    store.insert_eval_run(&run).await.unwrap();
    assert_eq!(store.get_eval_run(&run.id).await.unwrap(), Some(run.clone()));
    assert!(
        store.dataset_in_use(&run.spec.dataset_id).await.unwrap(),
        "a queued run pins its dataset"
    );

    // Claimed by one worker; the lease mechanism itself is tested by the
    // `leases_*` functions for every kind.
    let kind = LeaseKind::EvalRun;
    let claimed = store
        .claim_next(kind, "w1", None, 1000, 2000, None)
        .await
        .unwrap()
        .unwrap();
    let claimed = claimed.item.into_eval_run().unwrap();
    assert_eq!((claimed.state, claimed.started_at), (RunState::InProgress, Some(1000)));
    assert_eq!(claimed.lease_owner.as_deref(), Some("w1"));

    // Only the holder records; each item gets the next seq and the run its tallies.
    assert_eq!(
        store
            .record_output_item(&output_item(&run.id, 2, ItemStatus::Pass, 1), "w2")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .record_output_item(&output_item(&run.id, 2, ItemStatus::Pass, 1), "w1")
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .record_output_item(&output_item(&run.id, 0, ItemStatus::Fail, 2), "w1")
            .await
            .unwrap(),
        Some(2)
    );
    assert!(matches!(
        store
            .record_output_item(&output_item(&run.id, 0, ItemStatus::Fail, 3), "w1")
            .await,
        Err(super::StoreError::Conflict(_))
    ));
    assert_eq!(
        store.get_eval_run(&run.id).await.unwrap().unwrap().progress.completed,
        2
    );
    let by_index = store.list_output_items(&items(&run.id, None, None)).await.unwrap();
    assert_eq!(
        by_index.iter().map(|i| (i.index, i.seq)).collect::<Vec<_>>(),
        [(0, 2), (2, 1)]
    );
    assert_eq!(by_index[1].detail.sample, "2");
    let fails = store
        .list_output_items(&items(&run.id, Some(ItemStatus::Fail), None))
        .await
        .unwrap();
    assert_eq!(fails.len(), 1);
    assert!(
        store
            .list_output_items(&items(&run.id, None, Some(0)))
            .await
            .unwrap()
            .len()
            == 1
    );
    let by_seq = store.list_output_items_by_seq(&run.id, 1, 10).await.unwrap();
    assert_eq!((by_seq.len(), by_seq[0].index, by_seq[0].progress.completed), (1, 0, 2));

    // A lease that ran out is re-queued and taken over; the old holder can
    // no longer record.
    assert!(
        store
            .requeue_expired(kind, &run.id, 5000, None)
            .await
            .unwrap()
            .is_some()
    );
    let taken = store
        .claim_next(kind, "w2", None, 5000, 6000, None)
        .await
        .unwrap()
        .unwrap();
    let taken = taken.item.into_eval_run().unwrap();
    assert_eq!(
        (taken.lease_owner.as_deref(), taken.started_at),
        (Some("w2"), Some(1000))
    );
    assert_eq!(
        store
            .record_output_item(&output_item(&run.id, 1, ItemStatus::Pass, 3), "w1")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .record_output_item(&output_item(&run.id, 1, ItemStatus::Pass, 3), "w2")
            .await
            .unwrap(),
        Some(3)
    );

    // A batch gets consecutive seqs in slice order, and the run the tallies
    // of its last item; a batch is all or nothing.
    let batch = [
        output_item(&run.id, 4, ItemStatus::Pass, 4),
        output_item(&run.id, 3, ItemStatus::Fail, 5),
    ];
    assert_eq!(store.record_output_items(&batch, "w1").await.unwrap(), None);
    assert_eq!(store.record_output_items(&batch, "w2").await.unwrap(), Some(5));
    assert_eq!(
        store.get_eval_run(&run.id).await.unwrap().unwrap().progress.completed,
        5
    );
    let dup = [
        output_item(&run.id, 5, ItemStatus::Pass, 6),
        output_item(&run.id, 4, ItemStatus::Pass, 7),
    ];
    assert!(matches!(
        store.record_output_items(&dup, "w2").await,
        Err(super::StoreError::Conflict(_))
    ));
    assert_eq!(store.record_output_items(&[], "w2").await.unwrap(), None);
    let after = store.list_output_items_by_seq(&run.id, 3, 10).await.unwrap();
    assert_eq!(
        after
            .iter()
            .map(|i| (i.seq, i.index, i.progress.completed))
            .collect::<Vec<_>>(),
        [(4, 4, 4), (5, 3, 5)]
    );
    assert_eq!(
        store.get_eval_run(&run.id).await.unwrap().unwrap().progress.completed,
        5,
        "the refused batch left the tallies alone"
    );
    assert_eq!(
        store
            .record_output_item(&output_item(&run.id, 5, ItemStatus::Pass, 6), "w2")
            .await
            .unwrap(),
        Some(6),
        "the refused batch used no seqs"
    );

    // Finishing is compare-and-set and drops the lease; nothing records after.
    let done = store
        .finish_eval_run(&run.id, &[RunState::InProgress], RunState::Completed, None, Some(7000))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state, done.finished_at, done.lease_owner),
        (RunState::Completed, Some(7000), None)
    );
    assert!(
        store
            .finish_eval_run(
                &run.id,
                &[RunState::Queued, RunState::InProgress],
                RunState::Canceled,
                None,
                None
            )
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim_next(kind, "w3", None, 9000, 9999, None)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store.renew_lease(kind, &run.id, "w2", 9999).await.unwrap().is_none(),
        "a finished run has no lease to renew"
    );
    assert_eq!(
        store
            .record_output_item(&output_item(&run.id, 9, ItemStatus::Pass, 4), "w2")
            .await
            .unwrap(),
        None
    );
}

pub async fn evals_runs_list_newest_first_per_eval(store: impl Store) {
    use super::RunQuery;
    use crate::evals::model::Order;
    seed_datasets(&store).await;
    let (a, b) = (eval_record(1), eval_record(2));
    store.insert_eval(&a).await.unwrap();
    store.insert_eval(&b).await.unwrap();
    for n in 0..7u32 {
        let eval = if n == 3 { &b.id } else { &a.id };
        store
            .insert_eval_run(&run_record(n, eval, 100 + (n / 2) as i64))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = store
            .list_eval_runs(&RunQuery {
                eval_id: a.id.clone(),
                state: None,
                order: Order::Descending,
                after: after.clone(),
                limit: 4,
            })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        after = Some(Cursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        seen.extend(page.into_iter().map(|r| r.id));
    }
    let expected: Vec<String> = [6u32, 5, 4, 2, 1, 0]
        .iter()
        .map(|n| format!("evalrun_{n:026}"))
        .collect();
    assert_eq!(seen, expected);
    // The oldest queued run is claimed first.
    let first = store
        .claim_next(LeaseKind::EvalRun, "w", None, 1, 2, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.item.id(), format!("evalrun_{:026}", 0));
}

/// Every eval of `project` in the listing's order, two a page.
async fn all_evals(
    store: &impl Store,
    project: &str,
    sort: crate::evals::model::EvalSort,
    order: crate::evals::model::Order,
) -> Vec<String> {
    use crate::evals::model::EvalSort;
    let mut seen = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = store
            .list_evals(&super::EvalQuery {
                project: project.into(),
                sort,
                order,
                after: after.clone(),
                limit: 2,
            })
            .await
            .unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(Cursor {
            created_at: match sort {
                EvalSort::CreatedAt => last.created_at,
                EvalSort::UpdatedAt => last.updated_at,
            },
            id: last.id.clone(),
        });
        seen.extend(page.into_iter().map(|e| e.id));
    }
    seen
}

/// A project's evals list by creation or update time, either way, and page
/// without gaps or repeats (ties broken by id); an update is
/// compare-and-set on `updated_at`; deleting an eval takes its runs and
/// their output items with it, and says which runs went.
pub async fn evals_list_update_and_delete(store: impl Store) {
    use crate::evals::model::{EvalSort, ItemStatus, Order};
    seed_datasets(&store).await;
    let ids = |ns: &[u32]| ns.iter().map(|n| format!("eval_{n:026}")).collect::<Vec<_>>();
    for n in 0..5u32 {
        let mut e = eval_record(n);
        e.created_at = 100 + (n / 2) as i64;
        e.updated_at = e.created_at;
        store.insert_eval(&e).await.unwrap();
    }
    let mut theirs = eval_record(9);
    theirs.project = "b".into();
    store.insert_eval(&theirs).await.unwrap();
    let (created, updated) = (EvalSort::CreatedAt, EvalSort::UpdatedAt);
    let (asc, desc) = (Order::Ascending, Order::Descending);
    assert_eq!(all_evals(&store, "default", created, asc).await, ids(&[0, 1, 2, 3, 4]));
    assert_eq!(all_evals(&store, "default", created, desc).await, ids(&[4, 3, 2, 1, 0]));
    assert_eq!(all_evals(&store, "b", created, desc).await, ids(&[9]));
    assert!(all_evals(&store, "c", updated, asc).await.is_empty());

    // An update writes name, spec and time only over the version it read.
    let mut e1 = store.get_eval(&ids(&[1])[0]).await.unwrap().unwrap();
    e1.name = "renamed".into();
    e1.spec.metadata.insert("stage".into(), "2".into());
    e1.updated_at = 500;
    assert!(store.update_eval(&e1, 100).await.unwrap());
    assert_eq!(store.get_eval(&e1.id).await.unwrap(), Some(e1.clone()));
    let mut stale = e1.clone();
    stale.name = "lost".into();
    stale.updated_at = 600;
    assert!(
        !store.update_eval(&stale, 100).await.unwrap(),
        "a stale update is refused"
    );
    assert!(!store.update_eval(&eval_record(7), 10).await.unwrap(), "no such eval");
    assert_eq!(store.get_eval(&e1.id).await.unwrap().unwrap().name, "renamed");
    assert_eq!(all_evals(&store, "default", updated, asc).await, ids(&[0, 2, 3, 4, 1]));
    assert_eq!(all_evals(&store, "default", updated, desc).await, ids(&[1, 4, 3, 2, 0]));
    assert_eq!(all_evals(&store, "default", created, asc).await, ids(&[0, 1, 2, 3, 4]));

    // Deleting eval 1 deletes its two runs and their items, not eval 0's run.
    let (r1, r2, r3) = (
        run_record(1, &e1.id, 20),
        run_record(2, &e1.id, 21),
        run_record(3, &ids(&[0])[0], 22),
    );
    for r in [&r1, &r2, &r3] {
        store.insert_eval_run(r).await.unwrap();
    }
    let claimed = store
        .claim_next(LeaseKind::EvalRun, "w1", None, 1000, 2000, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.item.id(), r1.id);
    assert_eq!(
        store
            .record_output_item(&output_item(&r1.id, 0, ItemStatus::Pass, 1), "w1")
            .await
            .unwrap(),
        Some(1)
    );
    let mut gone = store.delete_eval(&e1.id).await.unwrap().expect("deleted");
    gone.sort();
    assert_eq!(gone, [r1.id.clone(), r2.id.clone()]);
    assert_eq!(store.get_eval(&e1.id).await.unwrap(), None);
    assert_eq!(store.get_eval_run(&r1.id).await.unwrap(), None);
    assert_eq!(store.get_eval_run(&r2.id).await.unwrap(), None);
    assert_eq!(store.get_output_item(&r1.id, 0).await.unwrap(), None);
    assert!(
        store
            .list_output_items(&items(&r1.id, None, None))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_eval_run(&r3.id).await.unwrap().is_some());
    assert_eq!(store.delete_eval(&e1.id).await.unwrap(), None, "deleted once");
    assert!(
        matches!(
            store.insert_eval_run(&run_record(4, &e1.id, 23)).await,
            Err(super::StoreError::Gone(_))
        ),
        "no run is made for a deleted eval"
    );
    assert!(
        store
            .record_output_item(&output_item(&r1.id, 1, ItemStatus::Pass, 2), "w1")
            .await
            .unwrap()
            .is_none(),
        "the worker of a deleted run records nothing"
    );
    assert!(
        store
            .renew_lease(LeaseKind::EvalRun, &r1.id, "w1", 3000)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(all_evals(&store, "default", created, asc).await, ids(&[0, 2, 3, 4]));
}

/// An eval's runs filter by state and list either way; a run's items filter
/// by status, list either way from a row, and are read one by one;
/// deleting a run takes its items with it.
pub async fn evals_runs_and_items_filter_order_and_delete(store: impl Store) {
    use super::RunQuery;
    use crate::evals::model::{ItemStatus, Order, RunState};
    seed_datasets(&store).await;
    let eval = eval_record(1);
    store.insert_eval(&eval).await.unwrap();
    let run_ids = |ns: &[u32]| ns.iter().map(|n| format!("evalrun_{n:026}")).collect::<Vec<_>>();
    for n in 0..5u32 {
        store
            .insert_eval_run(&run_record(n, &eval.id, 100 + n as i64))
            .await
            .unwrap();
    }
    for n in [1, 3] {
        store
            .finish_eval_run(
                &run_ids(&[n])[0],
                &[RunState::Queued],
                RunState::Canceled,
                None,
                Some(1),
            )
            .await
            .unwrap()
            .unwrap();
    }
    let list = |state: Option<RunState>, order: Order, after: Option<u32>, limit: usize| {
        let after = after.map(|n| Cursor {
            created_at: 100 + n as i64,
            id: format!("evalrun_{n:026}"),
        });
        let store = &store;
        let eval_id = eval.id.clone();
        async move {
            store
                .list_eval_runs(&RunQuery {
                    eval_id,
                    state,
                    order,
                    after,
                    limit,
                })
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    let (asc, desc) = (Order::Ascending, Order::Descending);
    let canceled = Some(RunState::Canceled);
    assert_eq!(list(canceled, desc, None, 10).await, run_ids(&[3, 1]));
    assert_eq!(list(canceled, asc, None, 10).await, run_ids(&[1, 3]));
    assert_eq!(list(None, asc, None, 2).await, run_ids(&[0, 1]));
    assert_eq!(list(None, asc, Some(1), 2).await, run_ids(&[2, 3]));
    assert_eq!(list(Some(RunState::Queued), desc, Some(4), 10).await, run_ids(&[2, 0]));
    assert!(list(Some(RunState::Failed), asc, None, 10).await.is_empty());

    // Run 0 (the oldest queued) records six items; multiples of 3 fail.
    let run = run_ids(&[0])[0].clone();
    let claimed = store
        .claim_next(LeaseKind::EvalRun, "w1", None, 1000, 2000, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.item.id(), run);
    let batch: Vec<_> = (0..6u64)
        .map(|i| {
            let status = if i % 3 == 0 { ItemStatus::Fail } else { ItemStatus::Pass };
            output_item(&run, i, status, i + 1)
        })
        .collect();
    assert_eq!(store.record_output_items(&batch, "w1").await.unwrap(), Some(6));
    let items_of = |status: Option<ItemStatus>, order: Order, after_index: Option<u64>| {
        let store = &store;
        let run_id = run.clone();
        async move {
            store
                .list_output_items(&super::ItemQuery {
                    run_id,
                    status,
                    order,
                    after_index,
                    limit: 10,
                })
                .await
                .unwrap()
                .into_iter()
                .map(|i| i.index)
                .collect::<Vec<_>>()
        }
    };
    let fail = Some(ItemStatus::Fail);
    assert_eq!(items_of(fail, asc, None).await, [0, 3]);
    assert_eq!(items_of(fail, desc, None).await, [3, 0]);
    assert_eq!(items_of(None, desc, Some(4)).await, [3, 2, 1, 0]);
    assert_eq!(items_of(None, asc, Some(4)).await, [5]);
    assert!(items_of(Some(ItemStatus::Error), asc, None).await.is_empty());
    let third = store.get_output_item(&run, 3).await.unwrap().unwrap();
    assert_eq!(
        (third.status, third.detail.item.clone(), third.seq),
        (ItemStatus::Fail, serde_json::json!({"a": 3}), 4)
    );
    assert_eq!(store.get_output_item(&run, 9).await.unwrap(), None);
    assert_eq!(store.get_output_item(&run_ids(&[2])[0], 3).await.unwrap(), None);

    // Deleting the run takes its items; the other runs stay.
    let deleted = store.delete_eval_run(&run).await.unwrap().unwrap();
    assert_eq!(
        (deleted.id.as_str(), deleted.state),
        (run.as_str(), RunState::InProgress)
    );
    assert_eq!(store.get_output_item(&run, 3).await.unwrap(), None);
    assert!(items_of(None, asc, None).await.is_empty());
    assert_eq!(store.delete_eval_run(&run).await.unwrap(), None, "deleted once");
    assert_eq!(list(None, asc, None, 10).await, run_ids(&[1, 2, 3, 4]));
    assert!(store.get_eval(&eval.id).await.unwrap().is_some());
}

// ---- leases, the same for every kind of leased work ----

/// The dataset and the eval the queued items need.
pub async fn seed_leases(store: &impl Store) {
    seed_datasets(store).await;
    store.insert_eval(&eval_record(1)).await.unwrap();
}

/// Queues one item of `kind` with a fresh id (unlike `queue`'s, unique
/// across every schema of a database), after `seed_leases`.
pub async fn queue_fresh(store: &impl Store, kind: LeaseKind) -> String {
    match kind {
        LeaseKind::Job => {
            let mut j = job(1, 10, 0, None);
            j.id = crate::ids::new_id("job");
            store.insert_job(&j, &created()).await.unwrap();
            j.id
        }
        LeaseKind::EvalRun => {
            let mut r = run_record(1, &eval_record(1).id, 10);
            r.id = crate::ids::new_id("evalrun");
            store.insert_eval_run(&r).await.unwrap();
            r.id
        }
        LeaseKind::Optimization => {
            let mut o = optimization_record(1, 10);
            o.id = crate::ids::new_id("popt");
            store.insert_optimization(&o).await.unwrap();
            o.id
        }
    }
}

/// Queues item `n` of `kind`, created at `created_at` (priority counts for
/// jobs only); returns its id.
async fn queue(store: &impl Store, kind: LeaseKind, n: u32, created_at: i64, priority: i32) -> String {
    match kind {
        LeaseKind::Job => {
            let j = job(n, created_at, priority, None);
            store.insert_job(&j, &created()).await.unwrap();
            j.id
        }
        LeaseKind::EvalRun => {
            let r = run_record(n, &eval_record(1).id, created_at);
            store.insert_eval_run(&r).await.unwrap();
            r.id
        }
        LeaseKind::Optimization => {
            let o = optimization_record(n, created_at);
            store.insert_optimization(&o).await.unwrap();
            o.id
        }
    }
}

/// The event a lease change of `kind` appends: jobs need one, eval runs
/// have no event log.
fn lease_event(kind: LeaseKind, to: JobState) -> Option<NewEvent> {
    kind.has_event_log()
        .then(|| NewEvent::state(to, Level::Info, format!("now {}", to.as_str())))
}

async fn claim(store: &impl Store, kind: LeaseKind, worker: &str, now: i64, until: i64) -> Option<Leased> {
    let event = lease_event(kind, JobState::Running);
    let change = store
        .claim_next(kind, worker, None, now, until, event.as_ref())
        .await
        .unwrap()?;
    assert_eq!(change.event.is_some(), kind.has_event_log());
    Some(change.item)
}

/// An item's state (as stored), lease owner and expiry.
fn lease_of(item: &Leased) -> (&'static str, Option<&str>, Option<i64>) {
    match item {
        Leased::Job(j) => (j.state.as_str(), j.lease_owner.as_deref(), j.lease_expires_at),
        Leased::EvalRun(r) => (r.state.as_str(), r.lease_owner.as_deref(), r.lease_expires_at),
        Leased::Optimization(o) => (o.state.as_str(), o.lease_owner.as_deref(), o.lease_expires_at),
    }
}

fn leased_state(kind: LeaseKind) -> &'static str {
    match kind {
        LeaseKind::Job => "running",
        LeaseKind::EvalRun | LeaseKind::Optimization => "in_progress",
    }
}

async fn get(store: &impl Store, kind: LeaseKind, id: &str) -> Leased {
    match kind {
        LeaseKind::Job => Leased::Job(store.get_job(id).await.unwrap().unwrap()),
        LeaseKind::EvalRun => Leased::EvalRun(store.get_eval_run(id).await.unwrap().unwrap()),
        LeaseKind::Optimization => Leased::Optimization(store.get_optimization(id).await.unwrap().unwrap()),
    }
}

/// Jobs go highest priority first, then oldest; eval runs oldest first;
/// ties by id. A claim leases the item to the worker and keeps the time it
/// first started.
pub async fn leases_claim_in_queue_order(store: impl Store) {
    seed_leases(&store).await;
    for kind in LeaseKind::ALL {
        // (n, created_at, priority)
        for (n, at, priority) in [(1, 10, 0), (2, 11, 5), (3, 12, 5), (4, 9, 0), (5, 10, 0)] {
            queue(&store, kind, n, at, priority).await;
        }
        let mut order = Vec::new();
        while let Some(item) = claim(&store, kind, "w1", 100, 200).await {
            assert_eq!(lease_of(&item), (leased_state(kind), Some("w1"), Some(200)));
            let started = match &item {
                Leased::Job(j) => j.started_at,
                Leased::EvalRun(r) => r.started_at,
                Leased::Optimization(o) => o.started_at,
            };
            assert_eq!(started, Some(100));
            order.push(item.id().to_string());
        }
        let expected: Vec<String> = match kind {
            LeaseKind::Job => [2, 3, 4, 1, 5].map(|n| job(n, 0, 0, None).id).into(),
            LeaseKind::EvalRun => [4, 1, 5, 2, 3].map(|n| run_record(n, "", 0).id).into(),
            LeaseKind::Optimization => [4, 1, 5, 2, 3].map(|n| optimization_record(n, 0).id).into(),
        };
        assert_eq!(order, expected, "{kind:?}");
    }
}

/// A claim for one item (a worker started for one job) takes that item or
/// nothing, whatever else is queued ahead of it.
pub async fn leases_claim_only_the_named_item(store: impl Store) {
    seed_leases(&store).await;
    for kind in LeaseKind::ALL {
        let first = queue(&store, kind, 1, 10, 9).await;
        let wanted = queue(&store, kind, 2, 11, 0).await;
        let event = lease_event(kind, JobState::Running);
        let missing = match kind {
            LeaseKind::Job => job(99, 0, 0, None).id,
            LeaseKind::EvalRun => run_record(99, "", 0).id,
            LeaseKind::Optimization => optimization_record(99, 0).id,
        };
        let none = store
            .claim_next(kind, "w1", Some(&missing), 100, 200, event.as_ref())
            .await
            .unwrap();
        assert!(none.is_none(), "{kind:?}: an id not queued claims nothing");
        let change = store
            .claim_next(kind, "w1", Some(&wanted), 100, 200, event.as_ref())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(change.item.id(), wanted, "{kind:?}");
        let again = store
            .claim_next(kind, "w2", Some(&wanted), 100, 200, event.as_ref())
            .await
            .unwrap();
        assert!(again.is_none(), "{kind:?}: a leased item is not claimed twice");
        let next = claim(&store, kind, "w2", 100, 200).await.unwrap();
        assert_eq!(next.id(), first, "{kind:?}: the rest of the queue is untouched");
    }
}

/// Only the holder renews a lease; a renewal answers the item as it is.
pub async fn leases_renew_by_the_holder_only(store: impl Store) {
    seed_leases(&store).await;
    for kind in LeaseKind::ALL {
        let id = queue(&store, kind, 1, 10, 0).await;
        assert!(
            store.renew_lease(kind, &id, "w1", 300).await.unwrap().is_none(),
            "not leased yet"
        );
        claim(&store, kind, "w1", 100, 200).await.unwrap();
        let renewed = store.renew_lease(kind, &id, "w1", 300).await.unwrap().unwrap();
        assert_eq!(lease_of(&renewed), (leased_state(kind), Some("w1"), Some(300)));
        assert!(
            store.renew_lease(kind, &id, "w2", 900).await.unwrap().is_none(),
            "not w2's lease"
        );
        assert_eq!(
            lease_of(&get(&store, kind, &id).await),
            (leased_state(kind), Some("w1"), Some(300)),
            "a refused renewal changes nothing"
        );
        assert!(store.renew_lease(kind, "missing", "w1", 300).await.unwrap().is_none());
    }
}

/// A lease that ran out goes back to the queue (only then, and once), and
/// the next claim takes the item again; its old holder can renew no more.
pub async fn leases_expire_and_are_requeued(store: impl Store) {
    seed_leases(&store).await;
    for kind in LeaseKind::ALL {
        let a = queue(&store, kind, 1, 10, 0).await;
        let b = queue(&store, kind, 2, 11, 0).await;
        claim(&store, kind, "w1", 100, 200).await.unwrap();
        claim(&store, kind, "w2", 100, 400).await.unwrap();
        assert!(
            store.expired_leases(kind, 200).await.unwrap().is_empty(),
            "due at 200, not before"
        );
        assert_eq!(store.expired_leases(kind, 250).await.unwrap(), std::slice::from_ref(&a));
        assert_eq!(store.expired_leases(kind, 500).await.unwrap(), [a.clone(), b.clone()]);

        let event = lease_event(kind, JobState::Queued);
        assert!(
            store
                .requeue_expired(kind, &b, 250, event.as_ref())
                .await
                .unwrap()
                .is_none(),
            "b's lease is still valid"
        );
        let change = store
            .requeue_expired(kind, &a, 250, event.as_ref())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease_of(&change.item), ("queued", None, None));
        assert_eq!(change.event.is_some(), kind.has_event_log());
        assert!(
            store
                .requeue_expired(kind, &a, 250, event.as_ref())
                .await
                .unwrap()
                .is_none(),
            "once"
        );
        assert!(store.expired_leases(kind, 250).await.unwrap().is_empty());

        let again = claim(&store, kind, "w3", 260, 600).await.unwrap();
        assert_eq!(again.id(), a);
        assert!(
            store.renew_lease(kind, &a, "w1", 700).await.unwrap().is_none(),
            "w1 lost it"
        );
        assert!(claim(&store, kind, "w3", 260, 600).await.is_none(), "b is still w2's");
    }
}

/// A worker gives an item it holds back to the queue; nobody else can.
pub async fn leases_release_back_to_the_queue(store: impl Store) {
    seed_leases(&store).await;
    for kind in LeaseKind::ALL {
        let a = queue(&store, kind, 1, 10, 0).await;
        let event = lease_event(kind, JobState::Queued);
        assert!(
            store
                .release_lease(kind, &a, "w1", 50, event.as_ref())
                .await
                .unwrap()
                .is_none(),
            "not leased"
        );
        claim(&store, kind, "w1", 100, 200).await.unwrap();
        assert!(
            store
                .release_lease(kind, &a, "w2", 150, event.as_ref())
                .await
                .unwrap()
                .is_none(),
            "not w2's"
        );
        assert_eq!(lease_of(&get(&store, kind, &a).await).1, Some("w1"));
        let change = store
            .release_lease(kind, &a, "w1", 150, event.as_ref())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(lease_of(&change.item), ("queued", None, None));
        assert_eq!(change.event.is_some(), kind.has_event_log());
        assert!(
            store
                .release_lease(kind, &a, "w1", 150, event.as_ref())
                .await
                .unwrap()
                .is_none()
        );
        assert!(store.renew_lease(kind, &a, "w1", 300).await.unwrap().is_none());
        let again = claim(&store, kind, "w2", 160, 300).await.unwrap();
        assert_eq!(again.id(), a);
    }
}

/// Items of each kind are counted by state (the queue depth metrics
/// report); states without items are left out, and kinds are counted
/// apart.
pub async fn leases_count_items_by_state(store: impl Store) {
    use crate::evals::model::RunState;
    seed_leases(&store).await;
    for kind in LeaseKind::ALL {
        assert!(store.count_by_state(kind).await.unwrap().is_empty(), "{kind:?}");
    }
    for kind in LeaseKind::ALL {
        let mut ids = Vec::new();
        for n in 1..=5 {
            ids.push(queue(&store, kind, n, 10 + i64::from(n), 0).await);
        }
        // The two oldest are claimed.
        claim(&store, kind, "w1", 100, 200).await.unwrap();
        claim(&store, kind, "w1", 100, 200).await.unwrap();
        // One of the claimed items finishes.
        match kind {
            LeaseKind::Job => {
                let event = NewEvent::state(JobState::Succeeded, Level::Info, "done");
                let done = store
                    .transition_job(
                        &ids[0],
                        &[JobState::Running],
                        JobState::Succeeded,
                        &JobPatch::default(),
                        &event,
                        300,
                    )
                    .await
                    .unwrap();
                assert!(matches!(done, Transition::Done(..)), "{done:?}");
            }
            LeaseKind::EvalRun => {
                let done = store
                    .finish_eval_run(&ids[0], &[RunState::InProgress], RunState::Completed, None, Some(300))
                    .await
                    .unwrap();
                assert!(done.is_some());
            }
            LeaseKind::Optimization => {
                let done = store
                    .finish_optimization(&ids[0], &[RunState::InProgress], RunState::Completed, None, 300)
                    .await
                    .unwrap();
                assert!(done.is_some());
            }
        }
        let finished = match kind {
            LeaseKind::Job => "succeeded",
            LeaseKind::EvalRun | LeaseKind::Optimization => "completed",
        };
        let expected = BTreeMap::from([
            ("queued".to_string(), 3),
            (leased_state(kind).to_string(), 1),
            (finished.to_string(), 1),
        ]);
        assert_eq!(store.count_by_state(kind).await.unwrap(), expected, "{kind:?}");
    }
}

/// Claimers racing for the same queue never get the same item, and
/// between them take all of it.
pub async fn leases_concurrent_claimers_never_share_an_item(store: impl Store) {
    use std::sync::Arc;
    const ITEMS: u32 = 24;
    const CLAIMERS: usize = 4;
    seed_leases(&store).await;
    let store = Arc::new(store);
    for kind in LeaseKind::ALL {
        for n in 0..ITEMS {
            queue(&*store, kind, n, 10 + i64::from(n % 3), 0).await;
        }
        let start = Arc::new(tokio::sync::Barrier::new(CLAIMERS));
        let mut claimers = tokio::task::JoinSet::new();
        for w in 0..CLAIMERS {
            let (store, start) = (store.clone(), start.clone());
            claimers.spawn(async move {
                let worker = format!("w{w}");
                start.wait().await;
                let mut got = Vec::new();
                while let Some(item) = claim(&*store, kind, &worker, 100, 200).await {
                    got.push((item.id().to_string(), worker.clone()));
                    tokio::task::yield_now().await;
                }
                got
            });
        }
        let mut claimed = BTreeMap::new();
        while let Some(got) = claimers.join_next().await {
            for (id, worker) in got.unwrap() {
                assert!(claimed.insert(id.clone(), worker).is_none(), "{id} claimed twice");
            }
        }
        assert_eq!(claimed.len(), ITEMS as usize, "{kind:?}: every item claimed once");
        for (id, worker) in &claimed {
            assert_eq!(lease_of(&get(&*store, kind, id).await).1, Some(worker.as_str()));
        }
    }
}

/// Expands to one test per suite function for a backend. `$make` is an
/// async expression giving `Option<store>`: a fresh, empty store, or None
/// when the backend is not available here (the test then passes vacuously,
/// which only a backend's own `$make` may decide, e.g. never under CI).
#[macro_export]
macro_rules! store_suite {
    ($make:expr) => {
        $crate::store_suite!(@tests $make;
            insert_get_roundtrip,
            insert_twice_conflicts,
            list_pages_newest_first_without_gaps,
            list_pages_oldest_first_and_by_purposes,
            delete_returns_record_once,
            blob_references_follow_rows,
            uploads_take_parts_while_pending_and_pin_their_blobs,
            uploads_complete_into_a_dataset_once,
            jobs_insert_is_idempotent_by_key,
            jobs_transitions_are_compare_and_set_with_gapless_events,
            jobs_lease_changes_count_attempts_and_append_events,
            jobs_checkpoints_need_the_lease_and_pin_blobs,
            jobs_list_filters_and_pages,
            graders_insert_get_and_conflict,
            completions_filter_by_model_and_metadata_page_and_change,
            optimizations_save_under_the_lease_and_finish_once,
            graders_list_pages_in_name_order,
            records_are_scoped_by_project,
            projects_keys_and_audit,
            evals_runs_are_leased_and_record_items_with_gapless_seqs,
            evals_runs_list_newest_first_per_eval,
            evals_list_update_and_delete,
            evals_runs_and_items_filter_order_and_delete,
            datasets_in_use_are_kept_and_gone_ones_refuse_new_work,
            leases_claim_in_queue_order,
            leases_claim_only_the_named_item,
            leases_renew_by_the_holder_only,
            leases_expire_and_are_requeued,
            leases_release_back_to_the_queue,
            leases_count_items_by_state,
            leases_concurrent_claimers_never_share_an_item
        );
    };
    (@tests $make:expr; $($name:ident),*) => {
        mod suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(store) = $make {
                        $crate::store::suite::$name(store).await;
                    }
                }
            )*
        }
    };
}

/// Lists see one project's records; base models are everyone's; grader
/// names are unique per project only.
pub async fn records_are_scoped_by_project(store: impl Store) {
    use crate::models::model::{ModelKind, ModelRecord};
    store
        .insert_project(&crate::auth::model::Project {
            id: "b".into(),
            created_at: 1,
            quotas: Default::default(),
        })
        .await
        .unwrap();
    let mut mine = dataset(&id(1), 10, None);
    mine.project = "b".into();
    store.insert_dataset(&mine).await.unwrap();
    store.insert_dataset(&dataset(&id(2), 11, None)).await.unwrap();
    let list = |project: &str| DatasetQuery {
        project: project.into(),
        limit: 10,
        ..Default::default()
    };
    let b: Vec<String> = store
        .list_datasets(&list("b"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(b, [id(1)]);
    let d: Vec<String> = store
        .list_datasets(&list("default"))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(d, [id(2)]);
    assert_eq!(store.get_dataset(&id(1)).await.unwrap().unwrap().project, "b");

    let mut j = job(1, 5, 0, None);
    j.project = "b".into();
    store.insert_job(&j, &created()).await.unwrap();
    store.insert_job(&job(2, 6, 0, None), &created()).await.unwrap();
    let jobs = |project: Option<&str>| JobQuery {
        project: project.map(str::to_string),
        limit: 10,
        ..Default::default()
    };
    let b = store.list_jobs(&jobs(Some("b"))).await.unwrap();
    assert_eq!(b.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), [j.id.clone()]);
    assert_eq!(b[0].project, "b");
    assert_eq!(
        store.list_jobs(&jobs(None)).await.unwrap().len(),
        2,
        "the server's own queries see all"
    );

    let base = ModelRecord {
        id: "tiny".into(),
        project: None,
        kind: ModelKind::Base,
        base_model: "tiny".into(),
        job_id: None,
        checkpoint_step: None,
        created_at: 1,
        info: None,
    };
    let tuned = |project: &str, name: &str| ModelRecord {
        id: name.into(),
        project: Some(project.into()),
        kind: ModelKind::FineTuned,
        base_model: "tiny".into(),
        job_id: None,
        checkpoint_step: Some(1),
        created_at: 2,
        info: None,
    };
    store.register_model(&base).await.unwrap();
    store.insert_model(&tuned("b", "ft:tiny:b:x")).await.unwrap();
    store.insert_model(&tuned("default", "ft:tiny:d:y")).await.unwrap();
    let names = |models: Vec<ModelRecord>| models.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_models("b", None, None, 10).await.unwrap()),
        ["ft:tiny:b:x", "tiny"]
    );
    assert_eq!(
        names(store.list_models("default", None, None, 10).await.unwrap()),
        ["ft:tiny:d:y", "tiny"]
    );
    assert_eq!(
        store
            .get_model("ft:tiny:b:x")
            .await
            .unwrap()
            .unwrap()
            .project
            .as_deref(),
        Some("b")
    );
    assert!(store.forget_fine_tuned_model("ft:tiny:d:y").await.unwrap());
    assert!(store.get_model("ft:tiny:d:y").await.unwrap().is_none());
    assert!(!store.forget_fine_tuned_model("ft:tiny:d:y").await.unwrap());

    let mut g = saved_grader("same", 1);
    store.insert_grader(&g).await.unwrap();
    g.project = "b".into();
    g.grader = serde_json::json!({"type": "multi"});
    store.insert_grader(&g).await.unwrap();
    assert_eq!(store.get_grader("b", "same").await.unwrap(), Some(g.clone()));
    assert_ne!(store.get_grader("default", "same").await.unwrap(), Some(g));
    assert_eq!(store.list_graders("b", None, 10).await.unwrap().len(), 1);
    assert!(store.get_grader("c", "same").await.unwrap().is_none());

    let mut e = eval_record(1);
    e.project = "b".into();
    store.insert_eval(&e).await.unwrap();
    assert_eq!(store.get_eval(&e.id).await.unwrap().unwrap().project, "b");
    let mut r = run_record(1, &e.id, 5);
    r.project = "b".into();
    store.insert_eval_run(&r).await.unwrap();
    assert_eq!(store.get_eval_run(&r.id).await.unwrap().unwrap().project, "b");
}

/// Projects, keys by hash, revocation and the audit log.
pub async fn projects_keys_and_audit(store: impl Store) {
    use crate::auth::model::{ApiKeyRecord, AuditEvent, Project, Role};
    assert!(
        store.get_project("default").await.unwrap().is_some(),
        "migrations make the default project"
    );
    let p = Project {
        id: "team-a".into(),
        created_at: 5,
        quotas: crate::auth::model::Quotas {
            max_running_jobs: Some(2),
            max_queued_jobs: None,
            max_dataset_bytes: Some(1 << 40),
            requests_per_second: Some(2.5),
        },
    };
    store.insert_project(&p).await.unwrap();
    assert!(matches!(
        store.insert_project(&p).await,
        Err(super::StoreError::Conflict(_))
    ));
    let ids: Vec<String> = store
        .list_projects(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(ids, ["default", "team-a"]);
    assert_eq!(store.list_projects(Some("default"), 10).await.unwrap(), vec![p.clone()]);

    assert!(!store.has_admin_key().await.unwrap());
    let key = |n: u32, project: &str, role: Role| ApiKeyRecord {
        id: format!("key_{n:026}"),
        project: project.into(),
        name: format!("k{n}"),
        owner: "ops@example.com".into(),
        role,
        secret_hash: format!("{n:064}"),
        redacted: "sk-lathe-abcd...wxyz".into(),
        created_at: 10 + n as i64,
        last_used_at: None,
        revoked_at: None,
    };
    let member = key(1, "team-a", Role::Member);
    store.insert_api_key(&member).await.unwrap();
    assert!(!store.has_admin_key().await.unwrap());
    let admin = key(2, "default", Role::Admin);
    store.insert_api_key(&admin).await.unwrap();
    assert!(store.has_admin_key().await.unwrap());
    let mut same_hash = key(3, "default", Role::Member);
    same_hash.secret_hash = member.secret_hash.clone();
    assert!(matches!(
        store.insert_api_key(&same_hash).await,
        Err(super::StoreError::Conflict(_))
    ));
    assert_eq!(
        store.api_key_by_hash(&member.secret_hash).await.unwrap(),
        Some(member.clone())
    );
    assert_eq!(store.api_key_by_hash(&"f".repeat(64)).await.unwrap(), None);
    assert_eq!(
        store.list_api_keys(Some("team-a"), None, 10).await.unwrap(),
        vec![member.clone()]
    );
    assert_eq!(store.list_api_keys(None, None, 10).await.unwrap().len(), 2);
    store.touch_api_key(&member.id, 77).await.unwrap();
    let revoked = store.revoke_api_key(&member.id, 88).await.unwrap().unwrap();
    assert_eq!((revoked.last_used_at, revoked.revoked_at), (Some(77), Some(88)));
    let again = store.revoke_api_key(&member.id, 99).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(88), "the first revocation stands");
    assert!(store.revoke_api_key("key_missing", 1).await.unwrap().is_none());
    store.revoke_api_key(&admin.id, 90).await.unwrap();
    assert!(!store.has_admin_key().await.unwrap());

    let event = |n: i64| AuditEvent {
        seq: 0,
        at: n,
        key_id: member.id.clone(),
        project: "team-a".into(),
        method: format!("/lathe.v1.DatasetService/DeleteDataset{n}"),
        outcome: "Ok".into(),
    };
    store.insert_audit_events(&[event(1), event(2)]).await.unwrap();
    store.insert_audit_events(&[event(3)]).await.unwrap();
    let newest = store.list_audit_events(None, 2).await.unwrap();
    assert_eq!(newest.iter().map(|e| e.at).collect::<Vec<_>>(), [3, 2]);
    assert!(newest[0].seq > newest[1].seq);
    let rest = store.list_audit_events(Some(newest[1].seq), 10).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.at).collect::<Vec<_>>(), [1]);
}

fn new_upload(n: u32, bytes: u64) -> crate::datasets::model::UploadRecord {
    crate::datasets::model::UploadRecord {
        id: format!("upload_{n:026}"),
        project: "default".into(),
        filename: "big.jsonl".into(),
        purpose: crate::datasets::report::PurposeChoice::FineTune,
        bytes,
        mime_type: "application/jsonl".into(),
        state: crate::datasets::model::UploadState::Pending,
        created_at: 1000 + n as i64,
        expires_at: 5000 + n as i64,
        dataset_id: None,
    }
}

fn part(upload: u32, n: u32, bytes: u64, sha: &str) -> crate::datasets::model::UploadPartRecord {
    crate::datasets::model::UploadPartRecord {
        id: format!("part_{upload:013}{n:013}"),
        upload_id: format!("upload_{upload:026}"),
        bytes,
        sha256: sha.repeat(32),
        created_at: 2000 + n as i64,
    }
}

/// Parts go to pending uploads only, up to the announced bytes; their blobs
/// are in use while their rows exist; cancelling and expiring hand the
/// blobs back once and leave the upload in its end state.
pub async fn uploads_take_parts_while_pending_and_pin_their_blobs(store: impl Store) {
    use super::{PartAdded, UploadEnd};
    use crate::datasets::model::UploadState;
    let u = new_upload(1, 10);
    store.insert_upload(&u).await.unwrap();
    assert!(matches!(
        store.insert_upload(&u).await.unwrap_err(),
        super::StoreError::Conflict(_)
    ));
    assert_eq!(store.get_upload(&u.id).await.unwrap(), Some(u.clone()));
    assert_eq!(store.get_upload("upload_nope").await.unwrap(), None);

    assert_eq!(
        store.insert_upload_part(&part(1, 2, 4, "bb")).await.unwrap(),
        PartAdded::Added
    );
    assert_eq!(
        store.insert_upload_part(&part(1, 1, 4, "aa")).await.unwrap(),
        PartAdded::Added
    );
    assert_eq!(
        store.insert_upload_part(&part(1, 3, 3, "cc")).await.unwrap(),
        PartAdded::TooLarge { stored: 8 },
        "8 bytes stored, 3 more pass the announced 10"
    );
    assert_eq!(
        store.insert_upload_part(&part(1, 4, 2, "aa")).await.unwrap(),
        PartAdded::Added
    );
    let parts = store.list_upload_parts(&u.id).await.unwrap();
    let ids: Vec<&str> = parts.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, [part(1, 1, 0, "").id, part(1, 2, 0, "").id, part(1, 4, 0, "").id]);
    assert_eq!(parts[0], part(1, 1, 4, "aa"));
    assert!(store.blob_in_use(&"aa".repeat(32)).await.unwrap());
    assert!(store.blob_in_use(&"bb".repeat(32)).await.unwrap());
    assert!(!store.blob_in_use(&"cc".repeat(32)).await.unwrap());
    let mut in_use = store.blobs_in_use().await.unwrap();
    in_use.sort();
    assert_eq!(in_use, ["aa".repeat(32), "bb".repeat(32)]);

    let UploadEnd::Done { upload, mut blobs } = store.end_upload(&u.id, UploadState::Cancelled).await.unwrap() else {
        panic!("a pending upload is cancelled");
    };
    blobs.sort();
    assert_eq!(upload.state, UploadState::Cancelled);
    assert_eq!(blobs, ["aa".repeat(32), "aa".repeat(32), "bb".repeat(32)]);
    assert!(store.list_upload_parts(&u.id).await.unwrap().is_empty());
    assert!(store.blobs_in_use().await.unwrap().is_empty());
    assert_eq!(
        store.end_upload(&u.id, UploadState::Cancelled).await.unwrap(),
        UploadEnd::NotPending(Some(upload.clone()))
    );
    assert_eq!(
        store.insert_upload_part(&part(1, 5, 1, "dd")).await.unwrap(),
        PartAdded::NotPending(Some(upload))
    );
    assert_eq!(
        store.insert_upload_part(&part(9, 1, 1, "dd")).await.unwrap(),
        PartAdded::NotPending(None)
    );
    assert_eq!(
        store.end_upload("upload_nope", UploadState::Cancelled).await.unwrap(),
        UploadEnd::NotPending(None)
    );

    // Expiry: pending uploads due at `now`, soonest first.
    for n in [2, 3, 4] {
        store.insert_upload(&new_upload(n, 10)).await.unwrap();
    }
    store.insert_upload_part(&part(2, 1, 5, "ee")).await.unwrap();
    assert_eq!(store.expired_uploads(5002, 10).await.unwrap(), [new_upload(2, 0).id]);
    assert_eq!(
        store.expired_uploads(5004, 2).await.unwrap(),
        [new_upload(2, 0).id, new_upload(3, 0).id]
    );
    let UploadEnd::Done { upload: expired, blobs } = store
        .end_upload(&new_upload(2, 0).id, UploadState::Expired)
        .await
        .unwrap()
    else {
        panic!("a pending upload expires");
    };
    assert_eq!((expired.state, blobs), (UploadState::Expired, vec!["ee".repeat(32)]));
    assert_eq!(
        store.expired_uploads(i64::MAX, 10).await.unwrap(),
        [new_upload(3, 0).id, new_upload(4, 0).id],
        "ended uploads are not pending"
    );
}

/// Completing inserts the dataset, marks the upload and drops its parts in
/// one step, once; a refused dataset (over quota) leaves the upload pending
/// with its parts.
pub async fn uploads_complete_into_a_dataset_once(store: impl Store) {
    use super::UploadEnd;
    use crate::datasets::model::UploadState;
    let u = new_upload(1, 8);
    store.insert_upload(&u).await.unwrap();
    store.insert_upload_part(&part(1, 1, 4, "aa")).await.unwrap();
    store.insert_upload_part(&part(1, 2, 4, "bb")).await.unwrap();

    // Over the project's storage quota: nothing changes.
    store
        .set_project_quotas(
            "default",
            &crate::auth::model::Quotas {
                max_dataset_bytes: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut d = dataset(&id(1), 3000, None);
    d.bytes = 1000;
    d.sha256 = "ff".repeat(32);
    let err = store.complete_upload(&u.id, &d).await.unwrap_err();
    assert!(matches!(err, super::StoreError::OverQuota { .. }), "{err}");
    assert_eq!(store.get_dataset(&d.id).await.unwrap(), None);
    assert_eq!(store.get_upload(&u.id).await.unwrap(), Some(u.clone()));
    assert_eq!(store.list_upload_parts(&u.id).await.unwrap().len(), 2);

    d.bytes = 8;
    let UploadEnd::Done { upload, mut blobs } = store.complete_upload(&u.id, &d).await.unwrap() else {
        panic!("a pending upload completes");
    };
    blobs.sort();
    assert_eq!(blobs, ["aa".repeat(32), "bb".repeat(32)]);
    assert_eq!(upload.state, UploadState::Completed);
    assert_eq!(upload.dataset_id.as_deref(), Some(d.id.as_str()));
    assert_eq!(store.get_upload(&u.id).await.unwrap(), Some(upload.clone()));
    assert_eq!(store.get_dataset(&d.id).await.unwrap(), Some(d.clone()));
    assert!(store.list_upload_parts(&u.id).await.unwrap().is_empty());
    assert_eq!(store.blobs_in_use().await.unwrap(), ["ff".repeat(32)]);

    let mut again = dataset(&id(2), 3001, None);
    again.bytes = 8;
    assert_eq!(
        store.complete_upload(&u.id, &again).await.unwrap(),
        UploadEnd::NotPending(Some(upload)),
        "a second completion changes nothing"
    );
    assert_eq!(store.get_dataset(&again.id).await.unwrap(), None);
}
