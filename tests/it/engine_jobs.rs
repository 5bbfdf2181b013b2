//! The embedded engine behind the API: a tiny model the test writes is
//! registered, fine-tuned by a real job (SFT with LoRA), paused and resumed
//! to the same adapter as an uninterrupted run, and chatted with, all over
//! real gRPC on port 0.

use crate::common::*;
use lathe::client::Channel;
use lathe::proto::json::struct_from_json;
use lathe::proto::{
    self, DatasetPurpose, JobState, eval_service_client::EvalServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, job_event, model_service_client::ModelServiceClient,
    watch_job_response::Payload,
};
use tonic::Code;
use tonic_types::StatusExt;

struct Env {
    server: TestServer,
    jobs: FineTuningServiceClient<Channel>,
    models: ModelServiceClient<Channel>,
    train: String,
    valid: String,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny-model");
    lathe_engine::tiny::write_tiny_model(&model_dir, 2, 32, 1).unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path().join("data"));
    config.job_poll_millis = 50;
    config.model_roots = vec![dir.path().to_path_buf()];
    let server = TestServer::start_with(config).await;
    let mut models = ModelServiceClient::new(server.channel().await);
    models
        .register_model(proto::RegisterModelRequest {
            name: "tiny".into(),
            path: model_dir.display().to_string(),
        })
        .await
        .unwrap();
    let mut datasets = server.datasets().await;
    let train = upload_bytes(
        &mut datasets,
        "train.jsonl",
        DatasetPurpose::Sft,
        "",
        sft_lines(24, 0).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    let valid = upload_bytes(
        &mut datasets,
        "valid.jsonl",
        DatasetPurpose::Sft,
        "",
        sft_lines(12, 100).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    let jobs = FineTuningServiceClient::new(server.channel().await);
    Env {
        server,
        jobs,
        models,
        train: train.id,
        valid: valid.id,
        _dir: dir,
    }
}

fn create(env: &Env, epochs: i64) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        base_model: "tiny".into(),
        training_dataset_id: env.train.clone(),
        validation_dataset_id: env.valid.clone(),
        suffix: "words".into(),
        seed: Some(3),
        method: Some(proto::FineTuningMethod {
            method: Some(proto::fine_tuning_method::Method::Supervised(proto::SupervisedMethod {
                n_epochs: auto_int(epochs),
                batch_size: auto_int(4),
                learning_rate_multiplier: Some(proto::AutoDouble {
                    value: Some(proto::auto_double::Value::Number(10.0)),
                }),
            })),
        }),
        ..Default::default()
    }
}

/// The field paths of a status's violations, in order.
fn violation_fields(err: &tonic::Status) -> Vec<String> {
    err.get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// A job's events from the first, live.
async fn watch(jobs: &mut FineTuningServiceClient<Channel>, id: &str) -> tonic::Streaming<proto::WatchJobResponse> {
    jobs.watch_job(proto::WatchJobRequest {
        job_id: id.into(),
        after_seq: 0,
    })
    .await
    .unwrap()
    .into_inner()
}

async fn watch_all(jobs: &mut FineTuningServiceClient<Channel>, id: &str) -> (Vec<proto::JobEvent>, proto::Job) {
    let mut stream = watch(jobs, id).await;
    let mut events = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload.unwrap() {
            Payload::Event(e) => events.push(e),
            Payload::End(end) => return (events, end.job.unwrap()),
        }
    }
    panic!("no terminal message");
}

fn metrics(events: &[proto::JobEvent]) -> Vec<proto::JobMetrics> {
    events
        .iter()
        .filter_map(|e| match &e.data {
            Some(job_event::Data::Metrics(m)) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

async fn final_adapter(env: &mut Env, job: &str) -> Vec<u8> {
    // The checkpoint's files as stored: read through the store and the
    // blob directory the server writes.
    let store = lathe::store::open(&env.server.config.database_url()).await.unwrap();
    let ckpts = store.list_checkpoints(job, None, 100).await.unwrap();
    let last = ckpts.iter().max_by_key(|c| c.step).unwrap();
    let file = last
        .files
        .iter()
        .find(|f| f.name == "adapter_model.safetensors")
        .expect("a PEFT adapter in every checkpoint");
    let blob = env
        .server
        .config
        .blob_dir()
        .join("blobs/sha256")
        .join(&file.sha256[..2])
        .join(&file.sha256);
    std::fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sft_job_trains_checkpoints_and_serves_its_model() {
    let mut env = env().await;
    let job = env
        .jobs
        .create_job(create(&env, 12))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);
    let m = metrics(&events);
    assert_eq!(m.len(), 72, "12 epochs of 24 examples in batches of 4");
    assert_eq!(m.last().unwrap().total_steps, 72);
    let first = m.first().unwrap().train_loss.unwrap();
    let last_valid = m.iter().rev().find_map(|x| x.valid_loss).unwrap();
    assert!(
        last_valid < first * 0.5,
        "validation loss {last_valid} should fall well below the first training loss {first}"
    );
    assert!(m.iter().any(|x| x.valid_mean_token_accuracy.is_some()));
    // SFT's token accuracy keeps its names; SFT has no other values.
    assert!(
        m.iter()
            .all(|x| x.train_mean_token_accuracy.is_some() && x.values.is_empty())
    );
    assert!(done.trained_tokens > 0);

    // The model is listed and answers, streaming.
    let model_id = done.fine_tuned_model.clone();
    assert!(model_id.starts_with("ft:tiny:words:"), "{model_id}");
    let got = env
        .models
        .get_model(proto::GetModelRequest { id: model_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(got.base_model, "tiny");
    for model in ["tiny".to_string(), model_id.clone()] {
        let mut stream = env
            .models
            .chat(proto::ChatRequest {
                store: false,
                metadata: Default::default(),
                model: model.clone(),
                messages: vec![
                    proto::ChatMessage {
                        role: "system".into(),
                        content: "Answer with one word.".into(),
                    },
                    proto::ChatMessage {
                        role: "user".into(),
                        content: "item 3".into(),
                    },
                ],
                sampling: Some(proto::SamplingParams {
                    temperature: Some(0.0),
                    max_tokens: Some(12),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let mut text = String::new();
        let mut end = None;
        while let Some(msg) = stream.message().await.unwrap() {
            match msg.payload.unwrap() {
                proto::chat_response::Payload::Delta(d) => text.push_str(&d),
                proto::chat_response::Payload::End(e) => end = Some(e),
            }
        }
        let end = end.expect("a chat ends with its end message");
        assert!(end.prompt_tokens > 10, "{model}: {end:?}");
        assert!(end.completion_tokens >= 1 && end.completion_tokens <= 12);
        assert!(["stop", "length"].contains(&end.finish_reason.as_str()));
        if model == model_id {
            assert_eq!(text, "delta", "the fine-tuned model learned item 3 → delta");
        }
    }

    // The base model stays while a fine-tuned model needs it.
    let err = env
        .models
        .delete_model(proto::DeleteModelRequest { id: "tiny".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&model_id), "{}", err.message());
    env.models
        .delete_model(proto::DeleteModelRequest { id: model_id.clone() })
        .await
        .unwrap();
    env.models
        .delete_model(proto::DeleteModelRequest { id: "tiny".into() })
        .await
        .unwrap();
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_end_with_the_same_adapter_as_an_uninterrupted_run() {
    let mut env = env().await;
    let straight = env
        .jobs
        .create_job(create(&env, 4))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (_, done) = watch_all(&mut env.jobs, &straight.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32);
    let expected = final_adapter(&mut env, &straight.id).await;

    let job = env
        .jobs
        .create_job(create(&env, 4))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    // Pause once the first checkpoint exists, then resume.
    let mut stream = watch(&mut env.jobs, &job.id).await;
    while let Some(msg) = stream.message().await.unwrap() {
        if let Some(Payload::Event(e)) = msg.payload
            && matches!(e.data, Some(job_event::Data::Checkpoint(_)))
        {
            break;
        }
    }
    drop(stream);
    env.jobs
        .pause_job(proto::PauseJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    // The job's events say when it has stopped: paused, or (had the pause
    // come too late) succeeded.
    let mut stream = watch(&mut env.jobs, &job.id).await;
    let stopped = loop {
        let msg = stream
            .message()
            .await
            .unwrap()
            .expect("the stream stays open until the job ends");
        match msg.payload.unwrap() {
            Payload::Event(e) => match e.data {
                Some(job_event::Data::State(s)) if s == JobState::Paused as i32 => break s,
                _ => {}
            },
            Payload::End(end) => break end.job.unwrap().state,
        }
    };
    drop(stream);
    let paused = env
        .jobs
        .get_job(proto::GetJobRequest { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(stopped, JobState::Paused as i32, "the job paused before finishing");
    assert_eq!(paused.state, JobState::Paused as i32, "the job paused before finishing");
    env.jobs
        .resume_job(proto::ResumeJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);
    assert!(
        events.iter().any(|e| e.message.contains("resuming at step")),
        "the trainer resumed from a checkpoint"
    );
    // Events say which attempt wrote them: the resumed attempt trains the
    // steps after its checkpoint again, and keeping each step's latest
    // attempt gives every step once, in order.
    let attempts: std::collections::BTreeSet<u32> = events
        .iter()
        .filter(|e| matches!(e.data, Some(job_event::Data::Metrics(_))))
        .map(|e| e.attempt)
        .collect();
    assert_eq!(attempts, [1, 2].into(), "metrics come from both attempts");
    assert_eq!(events.first().unwrap().attempt, 0, "created before any attempt");
    let mut latest = std::collections::BTreeMap::new();
    for e in &events {
        if let Some(job_event::Data::Metrics(m)) = &e.data {
            latest.retain(|step: &u64, attempt: &mut u32| *attempt >= e.attempt || *step < m.step);
            latest.insert(m.step, e.attempt);
        }
    }
    let total = metrics(&events).last().unwrap().total_steps;
    assert_eq!(
        latest.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>()
    );
    assert_eq!(
        final_adapter(&mut env, &job.id).await,
        expected,
        "resumed run ends elsewhere"
    );
    env.server.stop().await;
}

#[tokio::test]
async fn create_job_checks_the_model_and_method_against_the_embedded_trainer() {
    let mut env = env().await;
    let mut req = create(&env, 1);
    req.base_model = "not-registered".into();
    req.method = Some(proto::FineTuningMethod {
        method: Some(proto::fine_tuning_method::Method::Dpo(proto::DpoMethod::default())),
    });
    req.lora = Some(proto::LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "attention".into()],
    });
    let err = env.jobs.create_job(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields = violation_fields(&err);
    // DPO on SFT data: the purposes clash; the module name is unknown.
    for f in ["base_model", "training_dataset_id", "lora.target_modules[1]"] {
        assert!(fields.contains(&f.to_string()), "{f} missing from {fields:?}");
    }
    let purposes = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .find(|v| v.field == "training_dataset_id")
        .unwrap()
        .description;
    assert!(purposes.contains("sft") && purposes.contains("dpo"), "{purposes}");
    let mut unique = fields.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), fields.len(), "each problem once: {fields:?}");
    // Reinforcement without a grader is refused on that field.
    let mut rft = create(&env, 1);
    rft.method = Some(proto::FineTuningMethod {
        method: Some(proto::fine_tuning_method::Method::Reinforcement(Default::default())),
    });
    let err = env.jobs.create_job(rft).await.unwrap_err();
    let fields = violation_fields(&err);
    assert!(
        fields.contains(&"method.reinforcement.grader".to_string()),
        "{fields:?}"
    );
    assert!(
        !err.message().contains("lathe "),
        "the API gives no CLI hints: {}",
        err.message()
    );
    // A chat with an unknown model is NOT_FOUND, a bad role INVALID_ARGUMENT.
    let err = env
        .models
        .chat(proto::ChatRequest {
            store: false,
            metadata: Default::default(),
            model: "nope".into(),
            messages: vec![proto::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            sampling: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = env
        .models
        .chat(proto::ChatRequest {
            store: false,
            metadata: Default::default(),
            model: "tiny".into(),
            messages: vec![proto::ChatMessage {
                role: "robot".into(),
                content: "hi".into(),
            }],
            sampling: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    env.server.stop().await;
}

/// An eval whose one criterion compares the answer with the validation
/// row's own assistant message (or, with `never`, with a word never said).
async fn word_eval(env: &Env, never: bool) -> String {
    let reference = if never {
        "zulu-never-said"
    } else {
        "{{ item.messages[2].content }}"
    };
    let mut evals = EvalServiceClient::new(env.server.channel().await);
    evals
        .create_eval(proto::CreateEvalRequest {
            name: "words".into(),
            item_schema: None,
            testing_criteria: vec![proto::TestingCriterion {
                grader: Some(struct_from_json(&serde_json::json!({
                    "type": "string_check", "name": "exact", "operation": "eq",
                    "input": "{{ sample.output_text }}", "reference": reference
                }))),
                pass_threshold: None,
                name: String::new(),
            }],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .eval
        .unwrap()
        .id
}

fn checkpoint_eval(eval_id: &str) -> Option<proto::CheckpointEval> {
    Some(proto::CheckpointEval {
        eval_id: eval_id.into(),
        sampling_params: Some(proto::EvalSamplingParams {
            max_tokens: Some(12),
            ..Default::default()
        }),
        criterion: "exact".into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_evals_score_every_checkpoint_and_pick_the_best_one() {
    let mut env = env().await;
    let eval_id = word_eval(&env, false).await;
    let mut req = create(&env, 12);
    req.checkpoint_eval = checkpoint_eval(&eval_id);
    // Patience longer than the run: nothing stops early, but the best
    // checkpoint by eval pass rate becomes the model.
    req.early_stopping = Some(proto::EarlyStopping {
        patience: 100,
        min_delta: 0.0,
    });
    let job = env.jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    assert_eq!(job.checkpoint_eval.as_ref().unwrap().eval_id, eval_id);
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);

    let checkpoints = list_checkpoints(&mut env.jobs, &job.id).await;
    assert!(checkpoints.len() >= 5, "{} checkpoints", checkpoints.len());
    // Oldest first.
    let mut scored: Vec<(u64, f64, String)> = checkpoints
        .iter()
        .map(|c| {
            let m = c.metrics.clone().unwrap();
            let rate = m.eval_pass_rate.unwrap_or_else(|| {
                let log: Vec<&str> = events
                    .iter()
                    .map(|e| e.message.as_str())
                    .filter(|m| !m.starts_with("step "))
                    .collect();
                panic!(
                    "checkpoint {} has no eval pass rate ({} events): {log:?}",
                    c.step_number,
                    events.len()
                )
            });
            assert!(!m.eval_run_id.is_empty());
            (c.step_number, rate, m.eval_run_id)
        })
        .collect();
    scored.sort_by_key(|s| s.0);
    let (first, last) = (scored[0].1, scored.last().unwrap().1);
    let mut evals = EvalServiceClient::new(env.server.channel().await);
    let last_items = evals
        .list_output_items(proto::ListOutputItemsRequest {
            run_id: scored.last().unwrap().2.clone(),
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    let samples: Vec<(&str, &str)> = last_items
        .iter()
        .map(|i| (i.sample.as_str(), i.error.as_str()))
        .collect();
    assert!(
        last >= 0.75,
        "the trained model answers the validation rows: {scored:?}; samples {samples:?}"
    );
    assert!(last > first, "the pass rate rises with training: {scored:?}");
    let best = scored.iter().map(|s| s.1).fold(f64::MIN, f64::max);
    let best_step = scored.iter().find(|s| s.1 == best).unwrap().0;
    assert_eq!(done.fine_tuned_checkpoint_step, best_step, "{scored:?}");

    // Each score is a real eval run on the validation rows, named after the
    // job and step, with the checkpoint's model.
    let (step, rate, run_id) = scored.last().unwrap().clone();
    let run = evals
        .get_eval_run(proto::GetEvalRunRequest { id: run_id })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.name, format!("{} checkpoint step {step}", job.id));
    assert_eq!(run.model, format!("{}:ckpt-step-{step}", done.fine_tuned_model));
    let counts = run.result_counts.unwrap();
    assert_eq!(counts.total, 12);
    assert_eq!(counts.passed as f64 / 12.0, rate);
    // The pass rates are job metrics in the event stream too.
    let from_events: Vec<f64> = metrics(&events).iter().filter_map(|m| m.eval_pass_rate).collect();
    assert_eq!(from_events.len(), scored.len());
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grader_that_never_passes_stops_training_early() {
    let mut env = env().await;
    let eval_id = word_eval(&env, true).await;
    let mut req = create(&env, 12);
    req.checkpoint_eval = checkpoint_eval(&eval_id);
    req.early_stopping = Some(proto::EarlyStopping {
        patience: 2,
        min_delta: 0.0,
    });
    let job = env.jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);
    assert!(done.stop_reason.contains("eval_pass_rate"), "{}", done.stop_reason);
    let rates: Vec<(u64, f64)> = metrics(&events)
        .iter()
        .filter_map(|m| Some((m.step, m.eval_pass_rate?)))
        .collect();
    assert_eq!(
        rates.len(),
        3,
        "one evaluation, then two without improvement: {rates:?}"
    );
    assert!(rates.iter().all(|r| r.1 == 0.0));
    assert_eq!(done.fine_tuned_checkpoint_step, rates[0].0);
    assert!(
        metrics(&events).last().unwrap().step < 72,
        "stopped before the last step"
    );
    env.server.stop().await;
}

#[tokio::test]
async fn create_job_checks_its_checkpoint_eval() {
    let mut env = env().await;
    let eval_id = word_eval(&env, false).await;
    let violations = |err: tonic::Status| -> Vec<String> {
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        err.get_details_bad_request()
            .unwrap()
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    };
    let mut req = create(&env, 1);
    req.checkpoint_eval = checkpoint_eval("eval_00000000000000000000000000");
    let fields = violations(env.jobs.create_job(req).await.unwrap_err());
    assert_eq!(fields, ["checkpoint_eval.eval_id"]);

    let mut req = create(&env, 1);
    req.checkpoint_eval = checkpoint_eval(&eval_id);
    req.checkpoint_eval.as_mut().unwrap().criterion = "nope".into();
    req.checkpoint_eval.as_mut().unwrap().input_messages = Some(prost_types::ListValue {
        values: vec![lathe::proto::json::value_from_json(
            &serde_json::json!({"role": "user", "content": "{{ sample.output_text }}"}),
        )],
    });
    let fields = violations(env.jobs.create_job(req).await.unwrap_err());
    assert_eq!(
        fields,
        ["checkpoint_eval.criterion", "checkpoint_eval.input_messages[0].content"]
    );

    let mut req = create(&env, 1);
    req.validation_dataset_id = String::new();
    req.checkpoint_eval = checkpoint_eval(&eval_id);
    let fields = violations(env.jobs.create_job(req).await.unwrap_err());
    assert_eq!(fields, ["checkpoint_eval"]);
    env.server.stop().await;
}

/// Preference pairs over `sft_lines`' task: the right word preferred, the
/// next word not.
fn dpo_lines(n: usize, offset: usize) -> String {
    (0..n)
        .map(|i| {
            let k = i + offset;
            serde_json::json!({
                "input": {"messages": [
                    {"role": "system", "content": "Answer with one word."},
                    {"role": "user", "content": format!("item {}", k % 4)},
                ]},
                "preferred_output": [{"role": "assistant", "content": WORDS[k % 4]}],
                "non_preferred_output": [{"role": "assistant", "content": WORDS[(k + 1) % 4]}],
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn dpo(env: &Env, base_model: &str, train: &str, valid: &str) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        base_model: base_model.into(),
        training_dataset_id: train.into(),
        validation_dataset_id: valid.into(),
        suffix: "prefs".into(),
        seed: Some(5),
        method: Some(proto::FineTuningMethod {
            method: Some(proto::fine_tuning_method::Method::Dpo(proto::DpoMethod {
                n_epochs: auto_int(4),
                batch_size: auto_int(4),
                learning_rate_multiplier: Some(proto::AutoDouble {
                    value: Some(proto::auto_double::Value::Number(50.0)),
                }),
                beta: Some(proto::AutoDouble {
                    value: Some(proto::auto_double::Value::Number(0.5)),
                }),
                rpo_alpha: None,
            })),
        }),
        early_stopping: Some(proto::EarlyStopping {
            patience: 0,
            min_delta: 0.0,
        }),
        ..create(env, 1)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpo_continues_an_sft_model_against_it_as_reference_and_learns_the_preferences() {
    let mut env = env().await;
    // SFT first (OpenAI's recommended order), briefly.
    let sft = env
        .jobs
        .create_job(create(&env, 2))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (_, sft) = watch_all(&mut env.jobs, &sft.id).await;
    assert_eq!(sft.state, JobState::Succeeded as i32, "{:?}", sft.error);
    let mut datasets = env.server.datasets().await;
    let pairs = |n, offset| dpo_lines(n, offset);
    let train = upload_bytes(
        &mut datasets,
        "prefs.jsonl",
        DatasetPurpose::Dpo,
        "",
        pairs(24, 0).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    let valid = upload_bytes(
        &mut datasets,
        "prefs_valid.jsonl",
        DatasetPurpose::Dpo,
        "",
        pairs(8, 100).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();

    let job = env
        .jobs
        .create_job(dpo(&env, &sft.fine_tuned_model, &train.id, &valid.id))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.base_model, "tiny", "the job trains on the SFT model's base");
    assert_eq!(job.start_from, sft.fine_tuned_model);
    assert_eq!(job.lora.as_ref().unwrap().dropout, 0.0, "DPO trains without dropout");
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);
    assert!(
        done.fine_tuned_model.starts_with("ft:tiny:prefs:"),
        "{}",
        done.fine_tuned_model
    );
    let log = events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("\n");
    assert!(
        log.contains("training (dpo): 24 preference pairs (8 validation)"),
        "{log}"
    );
    assert!(log.contains("continuing from ft:tiny:words:"), "{log}");
    assert!(log.contains("0 pairs truncated"), "{log}");
    assert!(log.contains("beta 0.5; rpo_alpha 0;"), "{log}");
    assert!(log.contains("reference: the model the job starts from"), "{log}");
    let m = metrics(&events);
    let first = m.first().unwrap();
    // The policy starts at its reference (the SFT adapter): log 2.
    assert!(
        (first.train_loss.unwrap() - std::f64::consts::LN_2).abs() < 1e-4,
        "{first:?}"
    );
    for name in [
        "train_rewards/chosen",
        "train_rewards/rejected",
        "train_rewards/accuracies",
        "train_rewards/margins",
        "train_logps/chosen",
        "train_logps/rejected",
    ] {
        assert!(
            first.values.contains_key(name),
            "{name} missing from {:?}",
            first.values
        );
    }
    let last_valid = m.iter().rev().find(|x| x.valid_loss.is_some()).unwrap();
    assert!(
        last_valid.valid_loss.unwrap() < std::f64::consts::LN_2,
        "{last_valid:?}"
    );
    assert!(last_valid.values["valid_rewards/accuracies"] > 0.5, "{last_valid:?}");
    assert!(last_valid.values["valid_rewards/margins"] > 0.0, "{last_valid:?}");
    // Checkpoints keep the metrics and the reference log-probs.
    let ckpts = list_checkpoints(&mut env.jobs, &job.id).await;
    assert!(
        ckpts[0]
            .metrics
            .as_ref()
            .unwrap()
            .values
            .contains_key("train_rewards/margins")
    );
    let store = lathe::store::open(&env.server.config.database_url()).await.unwrap();
    let stored = store.list_checkpoints(&job.id, None, 1).await.unwrap();
    assert!(
        stored[0]
            .files
            .iter()
            .any(|f| f.name == lathe_engine::dpo::REFERENCE_FILE)
    );
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpo_bad_input_is_refused_at_create_and_an_unloadable_model_fails_with_its_code() {
    let mut env = env().await;
    let mut datasets = env.server.datasets().await;
    let pairs = upload_bytes(
        &mut datasets,
        "prefs.jsonl",
        DatasetPurpose::Dpo,
        "",
        dpo_lines(8, 0).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    // A DPO job on SFT data, and an SFT job on DPO data: both name both purposes.
    for (req, field) in [
        (dpo(&env, "tiny", &env.train, ""), "training_dataset_id"),
        (
            proto::CreateJobRequest {
                training_dataset_id: pairs.id.clone(),
                validation_dataset_id: String::new(),
                ..create(&env, 1)
            },
            "training_dataset_id",
        ),
    ] {
        let err = env.jobs.create_job(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let v = err.get_details_bad_request().unwrap().field_violations;
        let v = v.iter().find(|v| v.field == field).unwrap();
        assert!(
            v.description.contains("sft") && v.description.contains("dpo"),
            "{}",
            v.description
        );
    }
    // DPO with dropout: refused, on that field.
    let mut req = dpo(&env, "tiny", &pairs.id, "");
    req.lora = Some(proto::LoraConfig {
        dropout: 0.1,
        ..Default::default()
    });
    let err = env.jobs.create_job(req).await.unwrap_err();
    let fields = violation_fields(&err);
    assert_eq!(fields, ["lora.dropout"]);
    // RPO's weight out of range: refused, on that field.
    let mut req = dpo(&env, "tiny", &pairs.id, "");
    if let Some(proto::fine_tuning_method::Method::Dpo(d)) = req.method.as_mut().and_then(|m| m.method.as_mut()) {
        d.rpo_alpha = Some(proto::AutoDouble {
            value: Some(proto::auto_double::Value::Number(-1.0)),
        });
    }
    let err = env.jobs.create_job(req).await.unwrap_err();
    assert_eq!(violation_fields(&err), ["method.dpo.rpo_alpha"]);

    // A model whose files went away: the job fails with a code to act on.
    let gone = env._dir.path().join("gone-model");
    lathe_engine::tiny::write_tiny_model(&gone, 2, 32, 1).unwrap();
    env.models
        .register_model(proto::RegisterModelRequest {
            name: "gone".into(),
            path: gone.display().to_string(),
        })
        .await
        .unwrap();
    std::fs::remove_dir_all(&gone).unwrap();
    let job = env
        .jobs
        .create_job(dpo(&env, "gone", &pairs.id, ""))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (_, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    assert_eq!(done.error.unwrap().code, "model_load_failed");
    env.server.stop().await;
}

/// RFT prompts over `sft_lines`' task: the word to answer is `answer`, for
/// the grader only.
fn rft_lines(n: usize, offset: usize) -> String {
    (0..n)
        .map(|i| {
            let k = i + offset;
            serde_json::json!({
                "messages": [
                    {"role": "system", "content": "Answer with one word."},
                    {"role": "user", "content": format!("item {}", k % 4)},
                ],
                "answer": WORDS[k % 4],
            })
            .to_string()
                + "\n"
        })
        .collect()
}

fn rft(env: &Env, train: &str, valid: &str, grader: serde_json::Value) -> proto::CreateJobRequest {
    proto::CreateJobRequest {
        training_dataset_id: train.into(),
        validation_dataset_id: valid.into(),
        suffix: "rl".into(),
        seed: Some(7),
        method: Some(proto::FineTuningMethod {
            method: Some(proto::fine_tuning_method::Method::Reinforcement(
                proto::ReinforcementMethod {
                    n_epochs: auto_int(2),
                    batch_size: auto_int(4),
                    learning_rate_multiplier: Some(proto::AutoDouble {
                        value: Some(proto::auto_double::Value::Number(100.0)),
                    }),
                    grader: Some(struct_from_json(&grader)),
                    eval_interval: auto_int(2),
                    generations_per_prompt: auto_int(4),
                    max_completion_tokens: auto_int(8),
                    ..Default::default()
                },
            )),
        }),
        ..create(env, 1)
    }
}

/// The reinforcement method of an RFT request, to adjust.
fn reinforcement(req: &mut proto::CreateJobRequest) -> &mut proto::ReinforcementMethod {
    match req.method.as_mut().and_then(|m| m.method.as_mut()) {
        Some(proto::fine_tuning_method::Method::Reinforcement(r)) => r,
        _ => panic!("not an RFT request"),
    }
}

/// Uploads RFT prompts; returns the dataset's id.
async fn upload_rft(env: &Env, name: &str, lines: String) -> String {
    let mut datasets = env.server.datasets().await;
    upload_bytes(&mut datasets, name, DatasetPurpose::Rft, "", lines.as_bytes(), 1 << 16)
        .await
        .unwrap()
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rft_samples_grades_and_trains_with_the_jobs_grader_and_reports_openais_metrics() {
    let mut env = env().await;
    let mut datasets = env.server.datasets().await;
    let train = upload_bytes(
        &mut datasets,
        "rl.jsonl",
        DatasetPurpose::Rft,
        "",
        rft_lines(8, 0).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    let valid = upload_bytes(
        &mut datasets,
        "rl_valid.jsonl",
        DatasetPurpose::Rft,
        "",
        rft_lines(4, 100).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    // Partial credit, so that a random model's samples differ in reward.
    let grader = serde_json::json!({
        "type": "text_similarity", "name": "close to the word", "evaluation_metric": "fuzzy_match",
        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
    });
    let job = env
        .jobs
        .create_job(rft(&env, &train.id, &valid.id, grader))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.lora.as_ref().unwrap().dropout, 0.0, "RFT trains without dropout");
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);
    assert!(
        done.fine_tuned_model.starts_with("ft:tiny:rl:"),
        "{}",
        done.fine_tuned_model
    );
    let log = events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("\n");
    assert!(
        log.contains("training (reinforcement): 8 prompts (4 validation)"),
        "{log}"
    );
    assert!(
        log.contains("4 completions per prompt at temperature 1, at most 8 tokens"),
        "{log}"
    );
    assert!(log.contains("the grader dry-ran"), "{log}");
    let m = metrics(&events);
    assert_eq!(m.len(), 4, "2 epochs of 2 steps");
    for x in &m {
        assert!(x.train_reward_mean.is_some_and(|r| (0.0..=1.0).contains(&r)), "{x:?}");
        for name in [
            "train_reward_std",
            "train_frac_reward_zero_std",
            "train_completions/mean_length",
            "train_time/sampling_s",
            "train_time/grading_s",
            "train_time/training_s",
        ] {
            assert!(x.values.contains_key(name), "{name} missing from {:?}", x.values);
        }
    }
    let valid_rewards: Vec<f64> = m.iter().filter_map(|x| x.valid_reward_mean).collect();
    assert_eq!(valid_rewards.len(), 2, "validation every 2 steps");
    // The fine-tuned model is the checkpoint with the best valid reward
    // (the first, among equals).
    let best = m
        .iter()
        .filter(|x| x.valid_reward_mean.is_some())
        .fold(None::<&proto::JobMetrics>, |best, x| match best {
            Some(b) if b.valid_reward_mean >= x.valid_reward_mean => Some(b),
            _ => Some(x),
        })
        .unwrap();
    assert_eq!(done.fine_tuned_checkpoint_step, best.step, "{valid_rewards:?}");
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rft_bad_input_is_refused_at_create_or_fails_before_training() {
    let mut env = env().await;
    let mut datasets = env.server.datasets().await;
    let train = upload_bytes(
        &mut datasets,
        "rl.jsonl",
        DatasetPurpose::Rft,
        "",
        rft_lines(8, 0).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    let check = serde_json::json!({
        "type": "string_check", "name": "word", "operation": "eq",
        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
    });
    // reasoning_effort on a model without a reasoning mode, dropout, and
    // both generations_per_prompt and compute_multiplier: refused.
    let mut req = rft(&env, &train.id, "", check.clone());
    if let Some(proto::fine_tuning_method::Method::Reinforcement(r)) =
        req.method.as_mut().and_then(|m| m.method.as_mut())
    {
        r.reasoning_effort = "high".into();
        r.compute_multiplier = Some(proto::AutoDouble {
            value: Some(proto::auto_double::Value::Number(2.0)),
        });
    }
    req.lora = Some(proto::LoraConfig {
        dropout: 0.1,
        ..Default::default()
    });
    let err = env.jobs.create_job(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violation_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "lora.dropout",
            "method.reinforcement.compute_multiplier",
            "method.reinforcement.reasoning_effort"
        ]
    );
    // An RFT job on SFT data names both purposes.
    let err = env
        .jobs
        .create_job(rft(&env, &env.train, "", check.clone()))
        .await
        .unwrap_err();
    let v = err.get_details_bad_request().unwrap().field_violations;
    let v = v.iter().find(|v| v.field == "training_dataset_id").unwrap();
    assert!(
        v.description.contains("sft") && v.description.contains("rft"),
        "{}",
        v.description
    );
    // A grader reading a field the rows lack fails before the first step,
    // naming the file and the line.
    let mut missing = check.clone();
    missing["reference"] = "{{ item.label }}".into();
    let job = env
        .jobs
        .create_job(rft(&env, &train.id, "", missing))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    let error = done.error.unwrap();
    assert_eq!(error.code, "grader_failed_validation");
    assert!(
        error.message.contains("training file's line 1") && error.message.contains("invalid_variable_error"),
        "{}",
        error.message
    );
    assert!(metrics(&events).is_empty(), "no step was trained");
    // A response_format OpenAI does not have.
    let mut req = rft(&env, &train.id, "", check.clone());
    reinforcement(&mut req).response_format = Some(struct_from_json(&serde_json::json!({"type": "xml"})));
    let err = env.jobs.create_job(req).await.unwrap_err();
    assert_eq!(violation_fields(&err), ["method.reinforcement.response_format.type"]);
    env.server.stop().await;
}

/// An RFT job keeps the files of its three best checkpoints by
/// valid_reward_mean (the fine-tuned model's among them); the others'
/// records stay, without files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rft_keeps_the_files_of_its_three_best_checkpoints() {
    let mut env = env().await;
    let train = upload_rft(&env, "rl.jsonl", rft_lines(8, 0)).await;
    let valid = upload_rft(&env, "rl_valid.jsonl", rft_lines(4, 100)).await;
    let grader = serde_json::json!({
        "type": "text_similarity", "name": "close to the word", "evaluation_metric": "fuzzy_match",
        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}",
    });
    let mut req = rft(&env, &train, &valid, grader);
    reinforcement(&mut req).eval_interval = auto_int(1);
    reinforcement(&mut req).n_epochs = auto_int(3);
    let job = env.jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);
    let store = lathe::store::open(&env.server.config.database_url()).await.unwrap();
    let all = store.list_checkpoints(&job.id, None, 100).await.unwrap();
    assert_eq!(all.len(), 6, "3 epochs of 2 steps, a checkpoint each");
    let kept: Vec<u64> = all.iter().filter(|c| !c.files.is_empty()).map(|c| c.step).collect();
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.contains(&done.fine_tuned_checkpoint_step), "{kept:?}");
    let reward = |step: u64| {
        all.iter()
            .find(|c| c.step == step)
            .and_then(|c| c.metrics.valid_reward_mean)
            .unwrap()
    };
    let worst_kept = kept.iter().map(|s| reward(*s)).fold(f64::INFINITY, f64::min);
    for c in all.iter().filter(|c| c.files.is_empty()) {
        assert!(
            reward(c.step) <= worst_kept,
            "step {} was better than a kept one",
            c.step
        );
    }
    let log = events.iter().map(|e| e.message.as_str()).collect::<Vec<_>>().join("\n");
    assert!(log.contains("checkpoint files removed at step"), "{log}");
    env.server.stop().await;
}

/// With a response_format, samples are parsed as JSON for the grader; the
/// tiny model's text is not a JSON object, so every sample scores 0 as a
/// sample_parse_error, reported per step, and the job still trains to the
/// end: the samples' errors are not the grader's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rft_with_a_response_format_reports_unparsable_samples_without_failing() {
    let mut env = env().await;
    let train = upload_rft(&env, "rl.jsonl", rft_lines(8, 0)).await;
    let grader = serde_json::json!({
        "type": "string_check", "name": "answer field", "operation": "eq",
        "input": "{{ sample.output_json.answer }}", "reference": "{{ item.answer }}",
    });
    let mut req = rft(&env, &train, "", grader);
    reinforcement(&mut req).response_format = Some(struct_from_json(&serde_json::json!({
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": true, "schema": {
            "type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}}
    })));
    let job = env.jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Succeeded as i32, "{:?}", done.error);
    let m = metrics(&events);
    assert_eq!(m.len(), 4);
    for x in &m {
        assert_eq!(x.train_reward_mean, Some(0.0), "{x:?}");
        assert_eq!(x.values["train_grader_errors/sample_parse_error"], 16.0, "{x:?}");
    }
    env.server.stop().await;
}

/// The grader's dry run sees the file's answers as training will see
/// samples: without a response_format there is no `sample.output_json`, so
/// a grader that reads it fails the job before any step, naming the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rft_grader_reading_output_json_without_a_response_format_fails_its_dry_run() {
    let mut env = env().await;
    let lines: String = (0..8)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({
                    "messages": [{"role": "user", "content": format!("say {i}")},
                                 {"role": "assistant", "content": format!("{{\"answer\": \"{i}\"}}")}],
                    "answer": i.to_string()
                })
            )
        })
        .collect();
    let train = upload_rft(&env, "rl.jsonl", lines).await;
    let grader = serde_json::json!({
        "type": "string_check", "name": "answer field", "operation": "eq",
        "input": "{{ sample.output_json.answer }}", "reference": "{{ item.answer }}",
    });
    let req = rft(&env, &train, "", grader);
    let job = env.jobs.create_job(req).await.unwrap().into_inner().job.unwrap();
    let (events, done) = watch_all(&mut env.jobs, &job.id).await;
    assert_eq!(done.state, JobState::Failed as i32);
    let error = done.error.unwrap();
    assert_eq!(error.code, "grader_failed_validation", "{error:?}");
    assert!(metrics(&events).is_empty(), "no step ran");
    env.server.stop().await;
}
