//! `/v1/fine_tuning/alpha/graders/{run,validate}` over HTTP: OpenAI's
//! `GraderRunResponse` for deterministic, python and model graders, the
//! same answer as gRPC's RunGrader, and invalid graders as 400s whose
//! `param` points into `grader`.

use crate::common::openai_stub::chat_body;
use crate::common::*;
use crate::rest::{http, openai_error};
use lathe::proto::json::struct_from_json;
use lathe::proto::{self, grader_service_client::GraderServiceClient};
use serde_json::{Value, json};

struct Env {
    server: TestServer,
    url: String,
    key: String,
    grpc: GraderServiceClient<Channel>,
    _dir: tempfile::TempDir,
}

async fn start(config: impl FnOnce(&mut lathe::config::ServeConfig)) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = lathe::config::ServeConfig::embedded(dir.path());
    config(&mut cfg);
    let server = TestServer::start_with(cfg).await;
    Env {
        url: format!("{}/v1/fine_tuning/alpha/graders", server.url()),
        key: server.admin_key().to_string(),
        grpc: GraderServiceClient::new(server.channel().await),
        server,
        _dir: dir,
    }
}

impl Env {
    async fn post(&self, action: &str, body: Value) -> reqwest::Response {
        http()
            .post(format!("{}/{action}", self.url))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn run(&self, grader: &Value, sample: &str, item: &Value) -> Value {
        let response = self
            .post("run", json!({"grader": grader, "model_sample": sample, "item": item}))
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        check_shape(&body);
        body
    }

    async fn grpc_run(&mut self, grader: &Value, sample: &str, item: &Value) -> proto::GraderResult {
        self.grpc
            .run_grader(proto::RunGraderRequest {
                grader: Some(struct_from_json(grader)),
                sample: Some(proto::Sample {
                    output_text: sample.into(),
                    ..Default::default()
                }),
                item: Some(struct_from_json(item)),
            })
            .await
            .unwrap()
            .into_inner()
            .result
            .unwrap()
    }
}

const FLAGS: [&str; 11] = [
    "formula_parse_error",
    "invalid_variable_error",
    "model_grader_parse_error",
    "model_grader_refusal_error",
    "model_grader_server_error",
    "other_error",
    "python_grader_runtime_error",
    "python_grader_server_error",
    "sample_parse_error",
    "truncated_observation_error",
    "unresponsive_reward_error",
];

/// Every field the SDK's `GraderRunResponse` reads, with its type.
fn check_shape(r: &Value) {
    assert!(r["reward"].is_number(), "{r}");
    assert!(r["sub_rewards"].is_object(), "{r}");
    assert!(r["model_grader_token_usage_per_model"].is_object(), "{r}");
    let m = &r["metadata"];
    assert!(m["name"].is_string() && m["type"].is_string(), "{r}");
    assert!(m["execution_time"].is_number(), "{r}");
    assert!(m["scores"].is_object(), "{r}");
    assert!(m["token_usage"].is_null() || m["token_usage"].is_u64(), "{r}");
    assert!(m.get("sampled_model_name").is_some(), "{r}");
    for flag in FLAGS {
        assert!(m["errors"][flag].is_boolean(), "{flag}: {r}");
    }
    for details in [
        "model_grader_server_error_details",
        "python_grader_runtime_error_details",
        "python_grader_server_error_type",
    ] {
        let v = &m["errors"][details];
        assert!(v.is_null() || v.is_string(), "{details}: {r}");
    }
}

/// What both doors must agree on (not the time each took).
fn assert_same(rest: &Value, grpc: &proto::GraderResult) {
    assert_eq!(rest["reward"], json!(grpc.reward));
    assert_eq!(rest["sub_rewards"], json!(grpc.sub_rewards));
    let meta = grpc.metadata.as_ref().unwrap();
    assert_eq!(rest["metadata"]["name"], meta.name.as_str());
    assert_eq!(rest["metadata"]["type"], meta.r#type.as_str());
    let e = meta.errors.as_ref().unwrap();
    let errors = &rest["metadata"]["errors"];
    for (flag, set) in [
        ("formula_parse_error", e.formula_parse_error),
        ("invalid_variable_error", e.invalid_variable_error),
        ("model_grader_parse_error", e.model_grader_parse_error),
        ("model_grader_refusal_error", e.model_grader_refusal_error),
        ("model_grader_server_error", e.model_grader_server_error),
        ("other_error", e.other_error),
        ("python_grader_runtime_error", e.python_grader_runtime_error),
        ("python_grader_server_error", e.python_grader_server_error),
        ("sample_parse_error", e.sample_parse_error),
    ] {
        assert_eq!(errors[flag], set, "{flag}");
    }
    let usage: u64 = meta.token_usage.values().sum();
    if usage == 0 {
        assert_eq!(rest["metadata"]["token_usage"], Value::Null);
    } else {
        assert_eq!(rest["metadata"]["token_usage"], usage);
    }
    for (model, tokens) in &meta.token_usage {
        assert_eq!(
            rest["model_grader_token_usage_per_model"][model]["total_tokens"],
            *tokens
        );
    }
}

fn string_check(operation: &str) -> Value {
    json!({"type": "string_check", "name": "exact", "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference_answer }}", "operation": operation})
}

#[tokio::test]
async fn string_check_and_multi_run_as_run_grader_does() {
    let mut env = start(|_| {}).await;
    let item = json!({"reference_answer": "Paris"});
    for (op, sample, want) in [("eq", "Paris", 1.0), ("eq", "paris", 0.0), ("ilike", "in PARIS!", 1.0)] {
        let grader = string_check(op);
        let rest = env.run(&grader, sample, &item).await;
        assert_eq!(rest["reward"], want, "{op} {sample}");
        assert_eq!(rest["metadata"]["type"], "string_check");
        assert_eq!(rest["metadata"]["scores"], json!({"exact": want}));
        assert_eq!(rest["metadata"]["token_usage"], Value::Null);
        assert_eq!(rest["model_grader_token_usage_per_model"], json!({}));
        assert_same(&rest, &env.grpc_run(&grader, sample, &item).await);
    }

    let multi = json!({"type": "multi", "name": "combined", "calculate_output": "0.5 * exact + 0.5 * close",
        "graders": {"exact": string_check("eq"), "close": {"type": "text_similarity", "name": "close",
            "input": "{{ sample.output_text }}", "reference": "{{ item.reference_answer }}",
            "evaluation_metric": "fuzzy_match"}}});
    let rest = env.run(&multi, "Pariss", &item).await;
    assert_eq!(rest["sub_rewards"]["exact"], 0.0);
    let close = rest["sub_rewards"]["close"].as_f64().unwrap();
    assert!(close > 0.5 && close < 1.0, "{rest}");
    assert_eq!(rest["reward"], json!(0.5 * close));
    assert_eq!(rest["metadata"]["scores"], rest["sub_rewards"]);
    assert_same(&rest, &env.grpc_run(&multi, "Pariss", &item).await);

    // A template naming what the item lacks: the flag, as over gRPC.
    let missing = json!({});
    let rest = env.run(&string_check("eq"), "Paris", &missing).await;
    assert_eq!(rest["reward"], 0.0);
    assert_same(&rest, &env.grpc_run(&string_check("eq"), "Paris", &missing).await);

    // `item` may be left out (or null); `model_sample` may not.
    let grader = json!({"type": "string_check", "name": "s", "input": "{{ sample.output_text }}",
        "reference": "42", "operation": "eq"});
    let response = env.post("run", json!({"grader": grader, "model_sample": "42"})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reward"], 1.0);
    // A JSON sample fills sample.output_json.
    let json_grader = json!({"type": "string_check", "name": "j", "input": "{{ sample.output_json.answer }}",
        "reference": "42", "operation": "eq"});
    let rest = env.run(&json_grader, r#"{"answer": "42"}"#, &Value::Null).await;
    assert_eq!(rest["reward"], 1.0, "{rest}");
    env.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_graders_run_in_the_sandbox_with_their_errors() {
    let mut env = start(|_| {}).await;
    let grader = json!({"type": "python", "name": "py", "source":
        "def grade(sample, item):\n    return 1.0 if sample['output_text'].strip() == item['answer'] else 0.25\n"});
    let item = json!({"answer": "42"});
    let rest = env.run(&grader, " 42 ", &item).await;
    assert_eq!(rest["reward"], 1.0, "{rest}");
    assert_same(&rest, &env.grpc_run(&grader, " 42 ", &item).await);
    let rest = env.run(&grader, "41", &item).await;
    assert_eq!(rest["reward"], 0.25);

    let failing = json!({"type": "python", "name": "boom", "source": "def grade(sample, item):\n    return 1 / 0\n"});
    let rest = env.run(&failing, "x", &json!({})).await;
    assert_eq!(rest["reward"], 0.0);
    let errors = &rest["metadata"]["errors"];
    assert_eq!(errors["python_grader_runtime_error"], true, "{rest}");
    assert!(
        errors["python_grader_runtime_error_details"]
            .as_str()
            .unwrap()
            .contains("ZeroDivisionError"),
        "{rest}"
    );
    assert_same(&rest, &env.grpc_run(&failing, "x", &json!({})).await);

    // Validation compiles the source in the sandbox.
    let broken = json!({"type": "python", "name": "py", "source": "def grade(sample, item)\n    return 1\n"});
    let error = openai_error(env.post("validate", json!({"grader": broken})).await, 400).await;
    assert_eq!(error["param"], "grader.source", "{error}");
    env.server.stop().await;
}

#[tokio::test]
async fn score_model_graders_report_their_token_usage_per_model() {
    let (stub, stub_url) = crate::common::openai_stub::start().await;
    let providers = tempfile::tempdir().unwrap();
    let providers_file = providers.path().join("providers.json");
    std::fs::write(
        &providers_file,
        json!([{"name": "stub", "base_url": stub_url}]).to_string(),
    )
    .unwrap();
    let mut env = start(|c| c.providers = Some(providers_file)).await;
    *stub.default_chat.lock().unwrap() =
        chat_body(r#"{"result": 0.8, "steps": [{"description": "d", "conclusion": "c"}]}"#);
    let grader = json!({"type": "score_model", "name": "judge", "model": "stub/judge-1",
        "input": [{"role": "user", "content": "Answer: {{ sample.output_text }} Reference: {{ item.reference }}"}]});
    let item = json!({"reference": "card arrival"});
    let rest = env.run(&grader, "card_arrival", &item).await;
    assert!((rest["reward"].as_f64().unwrap() - 0.8).abs() < 1e-12, "{rest}");
    assert_eq!(rest["metadata"]["type"], "score_model");
    assert_eq!(rest["metadata"]["token_usage"], 18, "{rest}");
    assert_eq!(
        rest["model_grader_token_usage_per_model"],
        json!({"stub/judge-1": {"total_tokens": 18}})
    );
    let sent = stub.requests.lock().unwrap().last().unwrap().2.clone();
    assert!(sent.contains("Answer: card_arrival Reference: card arrival"), "{sent}");
    // A different sample, so neither answer comes from the result cache.
    assert_same(
        &env.run(&grader, "card arrived", &item).await,
        &env.grpc_run(&grader, "card arrived?", &item).await,
    );
    // Without an answer from the model: the server-error flag and its details.
    *stub.default_chat.lock().unwrap() = chat_body("not json at all");
    let rest = env.run(&grader, "something else", &item).await;
    assert_eq!(rest["reward"], 0.0);
    assert_eq!(rest["metadata"]["errors"]["model_grader_parse_error"], true, "{rest}");
    env.server.stop().await;
}

#[tokio::test]
async fn validate_answers_the_grader_or_a_400_pointing_into_it() {
    let mut env = start(|_| {}).await;
    let good = string_check("eq");
    let response = env.post("validate", json!({"grader": good})).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"grader": good}));
    let grpc = env
        .grpc
        .validate_grader(proto::ValidateGraderRequest {
            grader: Some(struct_from_json(&good)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        lathe::proto::json::json_from_struct(grpc.grader.unwrap()),
        body["grader"]
    );

    let bad_op = json!({"type": "string_check", "name": "c", "input": "{{ sample.output_text }}",
        "reference": "x", "operation": "equals"});
    let bad_type = json!({"type": "regex", "name": "r"});
    let bad_formula = json!({"type": "multi", "name": "m", "calculate_output": "a +* b",
        "graders": {"a": string_check("eq")}});
    for (action, body, param) in [
        ("validate", json!({"grader": bad_op}), "grader.operation"),
        ("validate", json!({"grader": bad_type}), "grader.type"),
        ("validate", json!({"grader": bad_formula}), "grader.calculate_output"),
        ("validate", json!({}), "grader"),
        ("validate", json!({"grader": good, "extra": 1}), "extra"),
        (
            "run",
            json!({"grader": bad_op, "model_sample": "x"}),
            "grader.operation",
        ),
        (
            "run",
            json!({"grader": good, "model_sample": "x", "item": "not an object"}),
            "item",
        ),
        ("run", json!({"grader": good}), "model_sample"),
        ("run", json!({"grader": good, "model_sample": 3}), "model_sample"),
        (
            "run",
            json!({"grader": good, "model_sample": "x", "sample": {}}),
            "sample",
        ),
    ] {
        let error = openai_error(env.post(action, body.clone()).await, 400).await;
        assert_eq!(error["param"], param, "{action} {body}: {error}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    env.server.stop().await;
}
