//! `/v1/fine_tuning/jobs` over HTTP with the scripted trainer: OpenAI's
//! job, event and checkpoint objects, paging with `after`, control, bad
//! input as 400s naming OpenAI's field, other projects' jobs as 404s, and
//! the same record answered by REST and by gRPC.

use std::time::Duration;

use crate::common::scripted::{MODEL, ScriptedTrainer};
use crate::common::*;
use crate::rest::{http, openai_error};
use lathe::proto::{
    self, DatasetPurpose, admin_service_client::AdminServiceClient,
    fine_tuning_service_client::FineTuningServiceClient, watch_job_response::Payload,
};
use serde_json::{Value, json};

struct Env {
    server: TestServer,
    url: String,
    key: String,
    grpc: FineTuningServiceClient<Channel>,
    train: String,
    _dir: tempfile::TempDir,
}

async fn env(trainer: ScriptedTrainer) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_trainer(dir.path(), trainer).await;
    let mut datasets = server.datasets().await;
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    Env {
        url: format!("{}/v1", server.url()),
        key: server.admin_key().to_string(),
        grpc: FineTuningServiceClient::new(server.channel().await),
        train: train.id,
        server,
        _dir: dir,
    }
}

impl Env {
    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        http()
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.get_as(&self.key, path).await
    }

    async fn get_as(&self, key: &str, path: &str) -> reqwest::Response {
        http()
            .get(format!("{}{path}", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// Creates a job from `body`; answers its object.
    async fn create(&self, body: Value) -> Value {
        ok(self.post("/fine_tuning/jobs", body).await).await
    }

    /// Waits (on gRPC's watch) for the job to end; answers its REST object.
    async fn finish(&mut self, id: &str) -> Value {
        let mut stream = self
            .grpc
            .watch_job(proto::WatchJobRequest {
                job_id: id.into(),
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        while let Some(msg) = stream.message().await.unwrap() {
            if let Some(Payload::End(_)) = msg.payload {
                return ok(self.get(&format!("/fine_tuning/jobs/{id}")).await).await;
            }
        }
        panic!("watch ended without its terminal message");
    }

    async fn grpc_job(&mut self, id: &str) -> proto::Job {
        self.grpc
            .get_job(proto::GetJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap()
    }

    /// Every page of a list, following `after`; answers the items.
    async fn all_pages(&self, path: &str, limit: usize) -> Vec<Value> {
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let mut url = format!("{path}{sep}limit={limit}");
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page = ok(self.get(&url).await).await;
            assert_eq!(page["object"], "list");
            let data = page["data"].as_array().unwrap().clone();
            assert!(data.len() <= limit);
            let more = page["has_more"].as_bool().expect("has_more is always there");
            if !data.is_empty() {
                assert_eq!(page["first_id"], data[0]["id"]);
                assert_eq!(page["last_id"], data[data.len() - 1]["id"]);
            }
            items.extend(data);
            if !more {
                return items;
            }
            after = Some(page["last_id"].as_str().unwrap().to_string());
        }
    }
}

async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// A 400 and its `param`.
async fn bad(response: reqwest::Response) -> String {
    let error = openai_error(response, 400).await;
    assert_eq!(error["type"], "invalid_request_error", "{error}");
    error["param"].as_str().unwrap_or_default().to_string()
}

fn sft(train: &str) -> Value {
    json!({
        "model": MODEL,
        "training_file": train,
        "suffix": "demo",
        "seed": 7,
        "metadata": {"team": "search"},
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    })
}

/// OpenAI's status for a gRPC state, by the enum's own name.
fn status_of(state: i32) -> String {
    proto::JobState::try_from(state)
        .unwrap()
        .as_str_name()
        .trim_start_matches("JOB_STATE_")
        .to_lowercase()
}

fn auto_int(v: &Option<proto::AutoInt>) -> Value {
    match v.as_ref().and_then(|a| a.value) {
        Some(proto::auto_int::Value::Number(n)) => json!(n),
        _ => json!("auto"),
    }
}

fn auto_double(v: &Option<proto::AutoDouble>) -> Value {
    match v.as_ref().and_then(|a| a.value) {
        Some(proto::auto_double::Value::Number(n)) => json!(n),
        _ => json!("auto"),
    }
}

#[tokio::test]
async fn a_job_created_over_rest_runs_to_a_model_that_models_lists() {
    let mut env = env(ScriptedTrainer::default()).await;
    let job = env.create(sft(&env.train)).await;
    let id = job["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("job_"), "{job}");
    assert_eq!(job["object"], "fine_tuning.job");
    assert!(
        ["validating_files", "queued", "running"].contains(&job["status"].as_str().unwrap()),
        "{job}"
    );
    assert_eq!(job["model"], MODEL);
    assert_eq!(job["training_file"], env.train.as_str());
    assert_eq!(job["validation_file"], Value::Null);
    assert_eq!(job["seed"], 7);
    assert_eq!(job["metadata"], json!({"team": "search"}));
    assert_eq!(job["user_provided_suffix"], "demo");
    assert_eq!(job["organization_id"], "default");
    assert_eq!(job["fine_tuned_model"], Value::Null);
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["result_files"], json!([]));
    assert_eq!(job["integrations"], json!([]));
    assert_eq!(
        job["hyperparameters"],
        json!({"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"})
    );
    assert_eq!(
        job["method"],
        json!({"type": "supervised", "supervised": {"hyperparameters":
            {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto"}}})
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let created = job["created_at"].as_i64().unwrap();
    assert!((now - created).abs() < 60, "seconds, not milliseconds: {created}");

    let done = env.finish(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let model = done["fine_tuned_model"].as_str().unwrap().to_string();
    assert_eq!(model, format!("ft:{MODEL}:demo:{id}"));
    assert!(done["finished_at"].as_i64().unwrap() >= created);
    assert!(done["trained_tokens"].as_u64().unwrap() > 0);

    // The model is one /v1/models names and retrieves.
    let one = ok(env.get(&format!("/models/{model}")).await).await;
    assert_eq!(one["id"], model.as_str());
    assert_eq!(one["job_id"], id.as_str());
    let all = ok(env.get("/models").await).await;
    assert!(
        all["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == model.as_str()),
        "{all}"
    );

    // The legacy top-level hyperparameters make a supervised job too.
    let legacy = env
        .create(json!({"model": MODEL, "training_file": env.train, "hyperparameters": {"n_epochs": 3, "batch_size": "auto"}}))
        .await;
    assert_eq!(legacy["method"]["type"], "supervised");
    assert_eq!(legacy["hyperparameters"]["n_epochs"], 3);
    assert_eq!(legacy["method"]["supervised"]["hyperparameters"]["n_epochs"], 3);
    // So does a body with no method and no hyperparameters, every one auto,
    // with nulls where the SDK sends them.
    let plain = env
        .create(
            json!({"model": MODEL, "training_file": env.train, "suffix": null, "seed": null,
            "validation_file": null, "metadata": null, "integrations": []}),
        )
        .await;
    assert_eq!(plain["hyperparameters"]["n_epochs"], "auto");
    assert_eq!(plain["user_provided_suffix"], Value::Null);
    assert!(plain["seed"].as_u64().is_some());
    env.server.stop().await;
}

#[tokio::test]
async fn dpo_and_reinforcement_methods_come_back_as_openai_writes_them() {
    let mut env = env(ScriptedTrainer::default()).await;
    let mut datasets = env.server.datasets().await;
    let dpo = upload_fixture(&mut datasets, "dpo.jsonl", DatasetPurpose::Dpo, "").await;
    let rft = upload_fixture(&mut datasets, "rft.jsonl", DatasetPurpose::Rft, "").await;
    let job = env
        .create(json!({"model": MODEL, "training_file": dpo.id,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": "auto"}}}}))
        .await;
    assert_eq!(
        job["method"],
        json!({"type": "dpo", "dpo": {"hyperparameters": {"batch_size": "auto", "beta": 0.2,
            "learning_rate_multiplier": "auto", "n_epochs": "auto", "rpo_alpha": "auto"}}})
    );
    let grader = json!({"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference_answer }}", "operation": "eq"});
    let job = env
        .create(json!({"model": MODEL, "training_file": rft.id,
            "method": {"type": "reinforcement", "reinforcement": {"grader": grader,
                "hyperparameters": {"reasoning_effort": "low", "compute_multiplier": 2, "eval_interval": 3}}}}))
        .await;
    let r = &job["method"]["reinforcement"];
    assert_eq!(job["method"]["type"], "reinforcement");
    assert_eq!(r["grader"], grader);
    assert_eq!(r["hyperparameters"]["reasoning_effort"], "low");
    assert_eq!(r["hyperparameters"]["compute_multiplier"], 2.0);
    assert_eq!(r["hyperparameters"]["eval_interval"], 3);
    assert_eq!(r["hyperparameters"]["eval_samples"], "auto");
    let grpc = env.grpc_job(job["id"].as_str().unwrap()).await;
    let Some(proto::fine_tuning_method::Method::Reinforcement(m)) = grpc.method.unwrap().method else {
        panic!("a reinforcement job over gRPC too");
    };
    assert_eq!(m.reasoning_effort, "low");
    assert_eq!(auto_int(&m.eval_interval), json!(3));
    assert_eq!(auto_double(&m.compute_multiplier), json!(2.0));
    env.server.stop().await;
}

#[tokio::test]
async fn events_and_checkpoints_page_newest_first_with_after() {
    let mut env = env(ScriptedTrainer::default()).await;
    let job = env.create(sft(&env.train)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let done = env.finish(&id).await;
    let model = done["fine_tuned_model"].as_str().unwrap().to_string();

    // Events: newest first, paged 7 at a time to the first.
    let events = env.all_pages(&format!("/fine_tuning/jobs/{id}/events"), 7).await;
    let grpc_events = env
        .grpc
        .list_job_events(proto::ListJobEventsRequest {
            job_id: id.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), grpc_events.len(), "every event, once");
    let want: Vec<String> = grpc_events
        .iter()
        .rev()
        .map(|e| format!("ftevent-{id}-{}", e.seq))
        .collect();
    let got: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, want, "newest first, no gaps or repeats across pages");
    for (rest, grpc) in events.iter().zip(grpc_events.iter().rev()) {
        assert_eq!(rest["object"], "fine_tuning.job.event");
        assert_eq!(rest["message"], grpc.message.as_str());
        assert_eq!(rest["created_at"], grpc.created_at.unwrap().seconds);
        assert!(["info", "warn", "error"].contains(&rest["level"].as_str().unwrap()));
    }
    assert_eq!(events[0]["data"], json!({"status": "succeeded"}), "{}", events[0]);
    assert!(
        events.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("created fine-tuning job")
    );
    let metrics: Vec<&Value> = events.iter().filter(|e| e["type"] == "metrics").collect();
    assert_eq!(metrics.len(), 20, "one metrics event per step");
    assert_eq!(metrics[0]["data"]["step"], 20);
    assert_eq!(metrics[0]["data"]["total_steps"], 20);
    assert!(metrics[0]["data"]["train_loss"].as_f64().is_some());
    let checkpoint_event = events
        .iter()
        .find(|e| e["data"]["step_number"] == 20)
        .expect("a checkpoint event");
    assert_eq!(checkpoint_event["type"], "message");
    assert_eq!(
        checkpoint_event["data"]["fine_tuned_model_checkpoint"],
        format!("{model}:ckpt-step-20")
    );
    // A page after the second event holds the rest.
    let page = ok(env
        .get(&format!(
            "/fine_tuning/jobs/{id}/events?after={}",
            events[1]["id"].as_str().unwrap()
        ))
        .await)
    .await;
    assert_eq!(page["data"][0]["id"], events[2]["id"]);
    // An id that is not one of this job's events is refused on `after`.
    for after in ["nope", "ftevent-job_00000000000000000000000000-3"] {
        assert_eq!(
            bad(env.get(&format!("/fine_tuning/jobs/{id}/events?after={after}")).await).await,
            "after"
        );
    }
    assert_eq!(
        bad(env.get(&format!("/fine_tuning/jobs/{id}/events?limit=0")).await).await,
        "limit"
    );

    // Checkpoints: steps 20, 15, 10, 5; ten a page by default.
    let all = ok(env.get(&format!("/fine_tuning/jobs/{id}/checkpoints")).await).await;
    assert_eq!(all["has_more"], false);
    let steps: Vec<u64> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step_number"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [20, 15, 10, 5]);
    let paged = env.all_pages(&format!("/fine_tuning/jobs/{id}/checkpoints"), 3).await;
    assert_eq!(&paged, all["data"].as_array().unwrap());
    let first = &paged[0];
    assert_eq!(first["object"], "fine_tuning.job.checkpoint");
    assert_eq!(first["fine_tuning_job_id"], id.as_str());
    assert_eq!(first["fine_tuned_model_checkpoint"], format!("{model}:ckpt-step-20"));
    assert_eq!(first["metrics"]["step"], 20);
    assert!(first["metrics"]["train_loss"].as_f64().is_some());
    assert!(first["metrics"]["valid_loss"].as_f64().is_some());
    assert!(first["metrics"].get("full_valid_loss").is_some());
    let page = ok(env
        .get(&format!(
            "/fine_tuning/jobs/{id}/checkpoints?limit=2&after={}",
            paged[1]["id"].as_str().unwrap()
        ))
        .await)
    .await;
    assert_eq!(page["data"], json!([paged[2], paged[3]]));
    assert_eq!(page["has_more"], false);
    assert_eq!(
        bad(env
            .get(&format!("/fine_tuning/jobs/{id}/checkpoints?after=ckpt_nope"))
            .await)
        .await,
        "after"
    );
    env.server.stop().await;
}

#[tokio::test]
async fn rest_and_grpc_answer_the_same_job() {
    let mut env = env(ScriptedTrainer::default()).await;
    let created = env.create(sft(&env.train)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let rest = env.finish(&id).await;
    let grpc = env.grpc_job(&id).await;
    assert_eq!(rest["id"], grpc.id.as_str());
    assert_eq!(rest["status"], status_of(grpc.state).as_str());
    assert_eq!(rest["created_at"], grpc.created_at.unwrap().seconds);
    assert_eq!(rest["finished_at"], grpc.finished_at.unwrap().seconds);
    assert_eq!(rest["fine_tuned_model"], grpc.fine_tuned_model.as_str());
    assert_eq!(rest["model"], grpc.base_model.as_str());
    assert_eq!(rest["training_file"], grpc.training_dataset_id.as_str());
    assert_eq!(rest["seed"], grpc.seed);
    assert_eq!(rest["trained_tokens"], grpc.trained_tokens);
    assert_eq!(rest["user_provided_suffix"], grpc.suffix.as_str());
    assert_eq!(rest["metadata"], json!(grpc.metadata));
    let Some(proto::fine_tuning_method::Method::Supervised(s)) = grpc.method.unwrap().method else {
        panic!("a supervised job");
    };
    let hyperparameters = json!({
        "n_epochs": auto_int(&s.n_epochs),
        "batch_size": auto_int(&s.batch_size),
        "learning_rate_multiplier": auto_double(&s.learning_rate_multiplier),
    });
    assert_eq!(rest["hyperparameters"], hyperparameters);
    assert_eq!(rest["method"]["supervised"]["hyperparameters"], hyperparameters);
    assert_eq!(rest["error"], Value::Null);
    assert!(grpc.error.is_none());

    // The same checkpoints.
    let checkpoints = ok(env.get(&format!("/fine_tuning/jobs/{id}/checkpoints")).await).await;
    let grpc_checkpoints = env
        .grpc
        .list_checkpoints(proto::ListCheckpointsRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .checkpoints;
    let rest_checkpoints = checkpoints["data"].as_array().unwrap();
    assert_eq!(rest_checkpoints.len(), grpc_checkpoints.len());
    for (r, g) in rest_checkpoints.iter().zip(&grpc_checkpoints) {
        assert_eq!(r["id"], g.id.as_str());
        assert_eq!(r["step_number"], g.step_number);
        assert_eq!(r["created_at"], g.created_at.unwrap().seconds);
        assert_eq!(r["fine_tuned_model_checkpoint"], g.fine_tuned_model_checkpoint.as_str());
        let m = g.metrics.as_ref().unwrap();
        assert_eq!(r["metrics"]["train_loss"], json!(m.train_loss));
        assert_eq!(r["metrics"]["valid_loss"], json!(m.valid_loss));
    }

    // A failed job's error, the same way.
    let mut env = self::env(ScriptedTrainer {
        fail_at: Some(3),
        ..Default::default()
    })
    .await;
    let created = env.create(sft(&env.train)).await;
    let id = created["id"].as_str().unwrap().to_string();
    let rest = env.finish(&id).await;
    let grpc = env.grpc_job(&id).await;
    assert_eq!(rest["status"], "failed");
    assert_eq!(rest["status"], status_of(grpc.state).as_str());
    let error = grpc.error.unwrap();
    assert_eq!(rest["error"]["code"], error.code.as_str());
    assert_eq!(rest["error"]["message"], error.message.as_str());
    assert_eq!(rest["fine_tuned_model"], Value::Null);
    env.server.stop().await;
}

#[tokio::test]
async fn jobs_list_newest_first_pages_with_after_and_filters_by_metadata() {
    let env = env(ScriptedTrainer::default()).await;
    let mut ids = Vec::new();
    for team in ["a", "b", "a"] {
        let mut body = sft(&env.train);
        body["metadata"] = json!({"team": team});
        ids.push(env.create(body).await["id"].as_str().unwrap().to_string());
    }
    let listed: Vec<String> = env
        .all_pages("/fine_tuning/jobs", 2)
        .await
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();
    assert_eq!(listed, ids, "newest first, each once");
    let page = ok(env.get("/fine_tuning/jobs?limit=2").await).await;
    assert_eq!(page["has_more"], true);
    let page = ok(env.get(&format!("/fine_tuning/jobs?limit=2&after={}", ids[1])).await).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["has_more"], false);

    let team_a = ok(env.get("/fine_tuning/jobs?metadata[team]=a").await).await;
    let got: Vec<&str> = team_a["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str(), ids[2].as_str()]);
    let none = ok(env.get("/fine_tuning/jobs?metadata%5Bteam%5D=c").await).await;
    assert_eq!(none["data"], json!([]));
    assert_eq!(none["has_more"], false);

    assert_eq!(bad(env.get("/fine_tuning/jobs?metadata=null").await).await, "metadata");
    assert_eq!(bad(env.get("/fine_tuning/jobs?status=queued").await).await, "status");
    assert_eq!(bad(env.get("/fine_tuning/jobs?limit=101").await).await, "limit");
    assert_eq!(bad(env.get("/fine_tuning/jobs?limit=many").await).await, "limit");
    assert_eq!(bad(env.get("/fine_tuning/jobs?after=job_nope").await).await, "after");
    env.server.stop().await;
}

#[tokio::test]
async fn cancel_pause_and_resume_over_rest() {
    let mut env = env(ScriptedTrainer {
        steps: 2000,
        checkpoint_every: 5,
        step_time: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let job = env.create(sft(&env.train)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let paused = ok(env.post(&format!("/fine_tuning/jobs/{id}/pause"), json!({})).await).await;
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["id"], id.as_str());
    let refused = env.post(&format!("/fine_tuning/jobs/{id}/pause"), json!({})).await;
    assert_eq!(openai_error(refused, 400).await["code"], "invalid_state");
    let resumed = ok(env.post(&format!("/fine_tuning/jobs/{id}/resume"), json!({})).await).await;
    assert_eq!(resumed["status"], "queued");
    let refused = env.post(&format!("/fine_tuning/jobs/{id}/resume"), json!({})).await;
    assert_eq!(openai_error(refused, 400).await["code"], "invalid_state");
    let cancelled = ok(env.post(&format!("/fine_tuning/jobs/{id}/cancel"), json!({})).await).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].as_i64().is_some());
    let done = env.finish(&id).await;
    assert_eq!(done["status"], "cancelled");
    assert_eq!(done["fine_tuned_model"], Value::Null);
    let refused = env.post(&format!("/fine_tuning/jobs/{id}/cancel"), json!({})).await;
    assert_eq!(openai_error(refused, 400).await["code"], "invalid_state");
    // The SDK's control calls send no body at all.
    let bare = http()
        .post(format!("{}/fine_tuning/jobs/{id}/pause", env.url))
        .bearer_auth(&env.key)
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(bare, 400).await["code"], "invalid_state");
    env.server.stop().await;
}

#[tokio::test]
async fn bad_create_requests_are_400s_naming_the_param_and_store_nothing() {
    let env = env(ScriptedTrainer::default()).await;
    let mut datasets = env.server.datasets().await;
    let items = upload_fixture(&mut datasets, "eval_items.jsonl", DatasetPurpose::Eval, "").await;
    let train = env.train.clone();
    let with = |patch: Value| {
        let mut body = sft(&train);
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let hp = |h: Value| json!({"method": {"type": "supervised", "supervised": {"hyperparameters": h}}});
    let cases = [
        (json!({"suffixx": "x"}), "suffixx"),
        (json!({"training_file": null}), "training_file"),
        (json!({"model": null}), "model"),
        (
            hp(json!({"n_epochs": "many"})),
            "method.supervised.hyperparameters.n_epochs",
        ),
        (hp(json!({"epochs": 2})), "method.supervised.hyperparameters.epochs"),
        (hp(json!({"n_epochs": 0})), "method.supervised.hyperparameters.n_epochs"),
        (
            hp(json!({"batch_size": 2.5})),
            "method.supervised.hyperparameters.batch_size",
        ),
        (
            hp(json!({"learning_rate_multiplier": -1})),
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        (
            json!({"method": null, "hyperparameters": {"n_epochs": "many"}}),
            "hyperparameters.n_epochs",
        ),
        (
            json!({"method": null, "hyperparameters": {"n_epochs": 51}}),
            "hyperparameters.n_epochs",
        ),
        (json!({"hyperparameters": {"n_epochs": 2}}), "hyperparameters"),
        (
            json!({"method": {"type": "dpo", "supervised": {}}}),
            "method.supervised",
        ),
        (json!({"method": {"type": "sft"}}), "method.type"),
        (
            json!({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}}}),
            "method.dpo.hyperparameters.beta",
        ),
        (json!({"method": {"type": "dpo"}}), "training_file"),
        (
            json!({"method": {"type": "reinforcement"}}),
            "method.reinforcement.grader",
        ),
        (json!({"training_file": "file-abc"}), "training_file"),
        (
            json!({"training_file": "ds_00000000000000000000000000"}),
            "training_file",
        ),
        (json!({"training_file": items.id}), "training_file"),
        (
            json!({"validation_file": "ds_00000000000000000000000000"}),
            "validation_file",
        ),
        (json!({"model": "gpt-4o-mini"}), "model"),
        (json!({"seed": "x"}), "seed"),
        (json!({"seed": -1}), "seed"),
        (json!({"suffix": "a:b"}), "suffix"),
        (json!({"metadata": {"team": 3}}), "metadata.team"),
        (
            json!({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}),
            "integrations",
        ),
    ];
    for (patch, param) in cases {
        let response = env.post("/fine_tuning/jobs", with(patch.clone())).await;
        let error = openai_error(response, 400).await;
        assert_eq!(error["param"], param, "{patch}: {error}");
    }
    let not_json = http()
        .post(format!("{}/fine_tuning/jobs", env.url))
        .bearer_auth(&env.key)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    openai_error(not_json, 400).await;
    let wrong_type = http()
        .post(format!("{}/fine_tuning/jobs", env.url))
        .bearer_auth(&env.key)
        .body(sft(&env.train).to_string())
        .send()
        .await
        .unwrap();
    openai_error(wrong_type, 415).await;
    let listed = ok(env.get("/fine_tuning/jobs").await).await;
    assert_eq!(listed["data"], json!([]), "nothing stored");
    env.server.stop().await;
}

#[tokio::test]
async fn another_projects_job_is_not_found() {
    let env = env(ScriptedTrainer {
        steps: 2000,
        step_time: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let job = env.create(sft(&env.train)).await;
    let id = job["id"].as_str().unwrap().to_string();
    let mut admin = AdminServiceClient::new(env.server.channel().await);
    admin
        .create_project(proto::CreateProjectRequest {
            id: "other".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let other = admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: "other".into(),
            name: "other".into(),
            owner: "tests".into(),
            role: proto::Role::Member as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    for path in [
        format!("/fine_tuning/jobs/{id}"),
        format!("/fine_tuning/jobs/{id}/events"),
        format!("/fine_tuning/jobs/{id}/checkpoints"),
        "/fine_tuning/jobs/ftjob-abc123".to_string(),
    ] {
        let error = openai_error(env.get_as(&other, &path).await, 404).await;
        assert_eq!(error["code"], "not_found", "{path}");
    }
    for action in ["cancel", "pause", "resume"] {
        let response = http()
            .post(format!("{}/fine_tuning/jobs/{id}/{action}", env.url))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        openai_error(response, 404).await;
    }
    let theirs = ok(env.get_as(&other, "/fine_tuning/jobs").await).await;
    assert_eq!(theirs["data"], json!([]));
    assert_eq!(
        bad(env.get_as(&other, &format!("/fine_tuning/jobs?after={id}")).await).await,
        "after",
        "another project's job is no place to start a page"
    );
    // Nor is another project's file something to train on.
    let response = http()
        .post(format!("{}/fine_tuning/jobs", env.url))
        .bearer_auth(&other)
        .json(&sft(&env.train))
        .send()
        .await
        .unwrap();
    assert_eq!(bad(response).await, "training_file");
    // Untouched: still running in its own project.
    let mine = ok(env.get(&format!("/fine_tuning/jobs/{id}")).await).await;
    assert_ne!(mine["status"], "cancelled");
    let cancelled = ok(env.post(&format!("/fine_tuning/jobs/{id}/cancel"), json!({})).await).await;
    assert_eq!(cancelled["status"], "cancelled");
    env.server.stop().await;
}
