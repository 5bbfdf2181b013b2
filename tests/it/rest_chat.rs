//! `POST /v1/chat/completions`: OpenAI's shapes, whole and streamed, over a
//! provider (the OpenAI test stub) and the local engine (a tiny random
//! model); `n`, `stop`, tools, `response_format`; 404s, 400s that name the
//! field, 429 with retry-after from a full queue; a client that leaves a
//! stream frees the engine; and the same answer as the gRPC Chat RPC.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::openai_stub::{self, Reply, Stub, chat_body};
use crate::common::*;
use crate::rest::{http, openai_error};
use lathe::proto::{self, model_service_client::ModelServiceClient};
use serde_json::{Value, json};

/// A server with the tiny random model registered as `tiny` (its engine
/// holding at most `queue` generations) and, when given, the stub as
/// provider `stub`.
async fn tiny_server(dir: &Path, queue: usize, provider: Option<&str>) -> TestServer {
    let model_dir = dir.join("tiny-model");
    lathe_engine::tiny::write_tiny_model(&model_dir, 2, 64, 3).unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.join("data"));
    config.max_queued_generations = queue;
    config.model_roots = vec![model_dir.clone()];
    if let Some(url) = provider {
        let file = dir.join("providers.json");
        std::fs::write(&file, json!([{"name": "stub", "base_url": url}]).to_string()).unwrap();
        config.providers = Some(file);
    }
    let server = TestServer::start_with(config).await;
    ModelServiceClient::new(server.channel().await)
        .register_model(proto::RegisterModelRequest {
            name: "tiny".into(),
            path: model_dir.display().to_string(),
        })
        .await
        .unwrap();
    server
}

pub(crate) async fn stub_server(dir: &Path) -> (TestServer, std::sync::Arc<Stub>) {
    let (stub, url) = openai_stub::start().await;
    (tiny_server(dir, 8, Some(&url)).await, stub)
}

async fn post(server: &TestServer, body: &Value) -> reqwest::Response {
    post_as(server, server.admin_key(), body).await
}

async fn post_as(server: &TestServer, key: &str, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// A 200 answer's JSON body.
async fn ok(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

/// A 400's `param`.
async fn refused(server: &TestServer, body: &Value) -> String {
    let error = openai_error(post(server, body).await, 400).await;
    assert_eq!(error["type"], "invalid_request_error", "{error}");
    error["param"]
        .as_str()
        .unwrap_or_else(|| panic!("no param: {error}"))
        .to_string()
}

/// A streamed answer's `data:` frames, read to the end.
async fn frames(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_string)
        .collect()
}

/// The chunks of a stream that ended in `[DONE]`.
pub(crate) async fn chunks(response: reqwest::Response) -> Vec<Value> {
    let frames = frames(response).await;
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"), "{frames:?}");
    let chunks: Vec<Value> = frames[..frames.len() - 1]
        .iter()
        .map(|f| serde_json::from_str(f).unwrap())
        .collect();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk", "{c}");
        assert!(c["id"].as_str().unwrap().starts_with("chatcmpl-"), "{c}");
        assert_eq!(c["id"], chunks[0]["id"], "one id for every chunk");
    }
    chunks
}

/// The text of choice `index` in `chunks`, and its finish reason.
fn streamed_text(chunks: &[Value], index: u64) -> (String, String) {
    let mine = chunks
        .iter()
        .flat_map(|c| c["choices"].as_array().unwrap())
        .filter(|c| c["index"] == index);
    let (mut text, mut finish) = (String::new(), None);
    for (i, choice) in mine.enumerate() {
        assert_eq!(
            choice["delta"].get("role").is_some(),
            i == 0,
            "the first delta, and only it, carries the role: {choice}"
        );
        assert!(finish.is_none(), "the finish reason comes last: {choice}");
        text.push_str(choice["delta"]["content"].as_str().unwrap_or_default());
        finish = choice["finish_reason"].as_str().map(str::to_string);
    }
    (text, finish.expect("a finish reason"))
}

/// What the stub was sent last.
fn sent(stub: &Stub) -> Value {
    serde_json::from_str(&stub.requests.lock().unwrap().last().expect("a request").2).unwrap()
}

fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_providers_completion_in_openais_shape() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    stub.script([Reply::Json(chat_body("hello there"))]);
    let before = lathe::ids::now_millis() / 1000;
    let body = ok(post(
        &server,
        &with(
            user("stub/gpt-x", "hi"),
            json!({"temperature": 0.5, "top_p": 0.9, "seed": -3, "stop": "END",
                   "max_completion_tokens": 12, "user": "u-1", "metadata": {"k": "v"}, "store": false,
                   "logprobs": false, "frequency_penalty": 0.5, "presence_penalty": -1,
                   "logit_bias": {"50256": -100}, "service_tier": "auto"}),
        ),
    )
    .await)
    .await;
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"), "{body}");
    assert_eq!(body["object"], "chat.completion");
    let created = body["created"].as_i64().unwrap();
    assert!((before..=before + 5).contains(&created), "{created} vs {before}");
    assert_eq!(body["model"], "stub/gpt-x");
    assert_eq!(
        body["choices"],
        json!([{"index": 0, "finish_reason": "stop", "logprobs": null,
                "message": {"role": "assistant", "content": "hello there", "refusal": null}}])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    // What the provider was asked: its own model name and every setting.
    let asked = sent(&stub);
    assert_eq!(asked["model"], "gpt-x");
    assert_eq!(asked["messages"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(
        (
            &asked["temperature"],
            &asked["top_p"],
            &asked["max_tokens"],
            &asked["stop"]
        ),
        (&json!(0.5), &json!(0.9), &json!(12), &json!(["END"]))
    );
    assert_eq!(asked["seed"], json!((-3i64) as u64), "the same 64 bits");
    assert_eq!(
        (&asked["frequency_penalty"], &asked["presence_penalty"]),
        (&json!(0.5), &json!(-1.0))
    );
    assert_eq!(asked["logit_bias"], json!({"50256": -100.0}));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_in_done_with_usage_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    let answer = "one two three four five";
    stub.script([Reply::Json(chat_body(answer)), Reply::Json(chat_body(answer))]);

    let streamed = with(
        user("stub/m", "count"),
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let chunks = chunks(post(&server, &streamed).await).await;
    assert!(chunks.len() > 4, "text comes in pieces: {chunks:?}");
    assert_eq!(streamed_text(&chunks, 0), (answer.to_string(), "stop".to_string()));
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18})
    );
    assert!(rest.iter().all(|c| c["usage"].is_null() && c.get("usage").is_some()));

    let plain = with(user("stub/m", "count"), json!({"stream": true}));
    let chunks = self::chunks(post(&server, &plain).await).await;
    assert_eq!(streamed_text(&chunks, 0).0, answer);
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && !c["choices"].as_array().unwrap().is_empty()),
        "no usage unless asked: {chunks:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_and_tool_calls_whole_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    let call = json!({"id": "call_7", "type": "function",
                      "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
    let reply = json!({"id": "x", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": null, "tool_calls": [call]}}],
        "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}})
    .to_string();
    stub.script([Reply::Json(reply.clone()), Reply::Json(reply)]);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let request = with(
        user("stub/m", "weather in Paris?"),
        json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
               "parallel_tool_calls": false}),
    );

    let body = ok(post(&server, &request).await).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(choice["message"]["tool_calls"], json!([call]));
    let asked = sent(&stub);
    assert_eq!(
        (
            &asked["tools"],
            &asked["tool_choice"]["function"]["name"],
            &asked["parallel_tool_calls"]
        ),
        (&tools, &json!("get_weather"), &json!(false))
    );

    let chunks = chunks(post(&server, &with(request, json!({"stream": true}))).await).await;
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(deltas.len(), 1, "{chunks:?}");
    assert_eq!(
        deltas[0],
        &json!({"index": 0, "id": "call_7", "type": "function", "function": call["function"]})
    );
    assert_eq!(streamed_text(&chunks, 0), (String::new(), "tool_calls".to_string()));

    // A named tool that is not offered, and tool_choice without tools.
    let bad = with(
        user("stub/m", "x"),
        json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
    );
    assert_eq!(refused(&server, &bad).await, "tool_choice.function.name");
    let bad = with(user("stub/m", "x"), json!({"tool_choice": "auto"}));
    assert_eq!(refused(&server, &bad).await, "tool_choice");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_format_goes_to_a_provider_and_is_refused_where_it_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    stub.script([Reply::Json(chat_body(r#"{"city": "Paris"}"#))]);
    let format = json!({"type": "json_schema", "json_schema": {"name": "place", "strict": true,
        "schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}});
    let body = ok(post(
        &server,
        &with(user("stub/m", "where?"), json!({"response_format": format})),
    )
    .await)
    .await;
    let content: Value = serde_json::from_str(body["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert_eq!(content, json!({"city": "Paris"}));
    assert_eq!(sent(&stub)["response_format"], format);

    // The local engine cannot hold its output to a format: a 400, not an
    // answer that ignores it.
    let requests = stub.requests.lock().unwrap().len();
    for format in [format.clone(), json!({"type": "json_object"})] {
        let local = with(user("tiny", "where?"), json!({"response_format": format}));
        assert_eq!(refused(&server, &local).await, "response_format");
    }
    let text = with(
        user("tiny", "hi"),
        json!({"response_format": {"type": "text"}, "max_tokens": 3}),
    );
    ok(post(&server, &text).await).await;
    for (format, param) in [
        (json!({"type": "xml"}), "response_format.type"),
        (json!({"type": "json_schema"}), "response_format.json_schema"),
        (
            json!({"type": "json_schema", "json_schema": {"name": "bad name"}}),
            "response_format.json_schema.name",
        ),
    ] {
        let bad = with(user("stub/m", "x"), json!({"response_format": format}));
        assert_eq!(refused(&server, &bad).await, param);
    }
    assert_eq!(
        stub.requests.lock().unwrap().len(),
        requests,
        "nothing refused reached the provider"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_400_naming_the_param() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    let base = user("stub/m", "hi");
    let cases = [
        (json!({"temperatur": 1}), "temperatur"),
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"temperature": 5}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
        (json!({"max_completion_tokens": -1}), "max_completion_tokens"),
        (json!({"max_completion_tokens": 5, "max_tokens": 6}), "max_tokens"),
        (json!({"n": 0}), "n"),
        (json!({"n": 129}), "n"),
        (json!({"stop": 3}), "stop"),
        (json!({"stop": ["a", ""]}), "stop"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (json!({"frequency_penalty": 2.5}), "frequency_penalty"),
        (json!({"presence_penalty": -3}), "presence_penalty"),
        (json!({"logit_bias": {"eos": -100}}), "logit_bias"),
        (json!({"logit_bias": {"50256": -101}}), "logit_bias"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"audio": {"voice": "alloy", "format": "mp3"}}), "audio"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"stream_options": {"include_usage": true}}), "stream_options"),
        (
            json!({"stream": true, "stream_options": {"include_usag": true}}),
            "stream_options.include_usag",
        ),
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"tools": [{"type": "function", "function": {}}]}),
            "tools[0].function.name",
        ),
    ];
    for (extra, param) in cases {
        assert_eq!(
            refused(&server, &with(base.clone(), extra.clone())).await,
            param,
            "{extra}"
        );
    }
    let missing = json!({"messages": [{"role": "user", "content": "x"}]});
    assert_eq!(refused(&server, &missing).await, "model");
    let response = http()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(server.admin_key())
        .body(base.to_string())
        .send()
        .await
        .unwrap();
    openai_error(response, 415).await;
    // Local-engine limits name OpenAI's fields too, and what it cannot do.
    for (extra, param) in [
        (json!({"max_completion_tokens": 1_000_000}), "max_completion_tokens"),
        (json!({"max_tokens": 1_000_000}), "max_tokens"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}),
            "tool_choice",
        ),
        (json!({"reasoning_effort": "high"}), "reasoning_effort"),
        (json!({"logit_bias": {"999999": 5}}), "logit_bias"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "messages[0].content[0].type",
        ),
    ] {
        let body = with(user("tiny", "hi"), extra.clone());
        assert_eq!(refused(&server, &body).await, param, "{extra}");
    }
    assert!(
        stub.requests.lock().unwrap().is_empty(),
        "nothing refused reached the provider"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_other_projects_models_are_not_found() {
    let dir = tempfile::tempdir().unwrap();
    // The scripted trainer's fine-tuned models have no weights: the stub
    // answers for them (as the default provider), so what decides is whose
    // model it is.
    let (stub, url) = openai_stub::start().await;
    let providers = dir.path().join("providers.json");
    std::fs::write(&providers, json!([{"name": "stub", "base_url": url}]).to_string()).unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.job_poll_millis = 50;
    config.providers = Some(providers);
    let trainer = std::sync::Arc::new(scripted::ScriptedTrainer::default());
    let server = TestServer::start_full(config, lathe::app::Engine::Custom(Some(trainer))).await;
    let channel = server.channel().await;
    let mut admin = proto::admin_service_client::AdminServiceClient::new(channel.clone());
    let mut keys = Vec::new();
    for project in ["a", "b"] {
        admin
            .create_project(proto::CreateProjectRequest {
                id: project.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let key = admin
            .create_api_key(proto::CreateApiKeyRequest {
                project_id: project.into(),
                role: proto::Role::Member as i32,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secret;
        keys.push(key);
    }
    let a = server.channel_with(&keys[0]).await;
    let mut datasets = proto::dataset_service_client::DatasetServiceClient::new(a.clone());
    let train = upload_fixture(&mut datasets, "sft_tools.jsonl", proto::DatasetPurpose::Sft, "").await;
    let mut jobs = proto::fine_tuning_service_client::FineTuningServiceClient::new(a);
    let job = jobs
        .create_job(proto::CreateJobRequest {
            base_model: scripted::MODEL.into(),
            training_dataset_id: train.id,
            suffix: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let model = loop {
        let job = jobs
            .get_job(proto::GetJobRequest { id: job.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if job.state == proto::JobState::Succeeded as i32 {
            break job.fine_tuned_model;
        }
        assert!(job.state < proto::JobState::Succeeded as i32, "{job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(model.starts_with("ft:"), "{model}");

    let error = openai_error(post_as(&server, &keys[1], &user(&model, "hi")).await, 404).await;
    assert_eq!(error["code"], "not_found");
    let streamed = with(user(&model, "hi"), json!({"stream": true}));
    openai_error(post_as(&server, &keys[1], &streamed).await, 404).await;
    assert!(stub.requests.lock().unwrap().is_empty(), "B's calls reached no model");
    let own = ok(post_as(&server, &keys[0], &user(&model, "hi")).await).await;
    assert_eq!(own["model"], model.as_str());
    assert_eq!(sent(&stub)["model"], model.as_str());
    server.stop().await;

    // Without providers, a name no one serves is not found.
    let dir = tempfile::tempdir().unwrap();
    let server = tiny_server(dir.path(), 8, None).await;
    let error = openai_error(post(&server, &user("no-such-model", "hi")).await, 404).await;
    assert_eq!(error["code"], "not_found");
    server.stop().await;
}

/// A chat body for the tiny model.
fn tiny(text: &str, extra: Value) -> Value {
    with(user("tiny", text), extra)
}

/// The gRPC Chat answer for the same settings: its text, finish reason and usage.
async fn grpc_chat(server: &TestServer, text: &str, sampling: proto::SamplingParams) -> (String, String, u32, u32) {
    let mut models = ModelServiceClient::new(server.channel().await);
    let mut stream = models
        .chat(proto::ChatRequest {
            store: false,
            metadata: Default::default(),
            model: "tiny".into(),
            messages: vec![proto::ChatMessage {
                role: "user".into(),
                content: text.into(),
            }],
            sampling: Some(sampling),
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = String::new();
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload.unwrap() {
            proto::chat_response::Payload::Delta(d) => out.push_str(&d),
            proto::chat_response::Payload::End(end) => {
                return (out, end.finish_reason, end.prompt_tokens, end.completion_tokens);
            }
        }
    }
    panic!("no end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_what_grpc_chat_answers_with_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let server = tiny_server(dir.path(), 8, None).await;
    let settings = json!({"temperature": 2.0, "top_p": 0.95, "seed": 7, "max_completion_tokens": 24});
    let body = ok(post(&server, &tiny("tell me a story", settings.clone())).await).await;
    let (text, finish, prompt, completion) = grpc_chat(
        &server,
        "tell me a story",
        proto::SamplingParams {
            temperature: Some(2.0),
            top_p: Some(0.95),
            seed: Some(7),
            max_tokens: Some(24),
            ..Default::default()
        },
    )
    .await;
    assert!(!text.is_empty());
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["content"], text.as_str());
    assert_eq!(choice["finish_reason"], finish.as_str());
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": prompt, "completion_tokens": completion,
               "total_tokens": prompt + completion})
    );
    // Streamed, the same text.
    let streamed = with(tiny("tell me a story", settings), json!({"stream": true}));
    let chunks = chunks(post(&server, &streamed).await).await;
    assert_eq!(streamed_text(&chunks, 0), (text.clone(), finish));
    // Another seed, another story.
    let other = ok(post(
        &server,
        &tiny(
            "tell me a story",
            json!({"temperature": 1.0, "seed": 8, "max_completion_tokens": 24}),
        ),
    )
    .await)
    .await;
    assert_ne!(other["choices"][0]["message"]["content"], text.as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_answers_n_different_choices_that_a_seed_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    let settings = json!({"temperature": 2.0, "seed": 11, "max_completion_tokens": 16, "n": 2});
    let two = ok(post(&server, &tiny("hello", settings.clone())).await).await;
    let choices = two["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert_eq!((&choices[0]["index"], &choices[1]["index"]), (&json!(0), &json!(1)));
    assert_ne!(choices[0]["message"], choices[1]["message"], "{two}");
    // The seed names both answers; the first is the one-answer request's.
    let again = ok(post(&server, &tiny("hello", settings.clone())).await).await;
    assert_eq!(again["choices"], two["choices"]);
    let one = ok(post(&server, &tiny("hello", with(settings.clone(), json!({"n": 1})))).await).await;
    assert_eq!(one["choices"][0]["message"], choices[0]["message"]);
    // The prompt is counted once, the completions of both.
    let usage = &two["usage"];
    assert_eq!(usage["prompt_tokens"], one["usage"]["prompt_tokens"]);
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!(
        completion > one["usage"]["completion_tokens"].as_u64().unwrap() && completion <= 32,
        "{usage}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion
    );
    // Unseeded answers differ too.
    let unseeded = ok(post(
        &server,
        &tiny("hello", json!({"temperature": 2.0, "max_tokens": 16, "n": 3})),
    )
    .await)
    .await;
    let texts: std::collections::BTreeSet<String> = unseeded["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["message"]["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 3, "{unseeded}");

    // Streamed, the same answers, each under its index, and the same usage.
    let streamed = with(
        tiny("hello", settings),
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let chunks = chunks(post(&server, &streamed).await).await;
    for (i, choice) in choices.iter().enumerate() {
        let (text, finish) = streamed_text(&chunks, i as u64);
        assert_eq!(choice["message"]["content"], text.as_str(), "choice {i}");
        assert_eq!(choice["finish_reason"], finish.as_str());
    }
    assert_eq!(&chunks.last().unwrap()["usage"], usage);

    // A provider is asked once per answer, each on its own seed.
    let body = ok(post(&server, &with(user("stub/m", "hi"), json!({"n": 2, "seed": 5}))).await).await;
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    assert_eq!(body["usage"]["completion_tokens"], 14);
    let mut seeds: Vec<Value> = stub
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, b)| serde_json::from_str::<Value>(b).unwrap()["seed"].clone())
        .collect();
    seeds.sort_by_key(|s| s.as_u64());
    assert_eq!(seeds, [json!(5), json!(6)]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_ends_the_text_where_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let server = tiny_server(dir.path(), 8, None).await;
    let greedy = json!({"temperature": 0, "max_completion_tokens": 40});
    let full = ok(post(&server, &tiny("hello", greedy.clone())).await).await;
    assert_eq!(full["choices"][0]["finish_reason"], "length", "{full}");
    let full = full["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    for stop in [json!(stop), json!(["\u{1}never", stop])] {
        let body = ok(post(&server, &tiny("hello", with(greedy.clone(), json!({"stop": stop})))).await).await;
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], expected, "stop {stop}");
        let streamed = tiny("hello", with(greedy.clone(), json!({"stop": stop, "stream": true})));
        let chunks = chunks(post(&server, &streamed).await).await;
        assert_eq!(streamed_text(&chunks, 0), (expected.to_string(), "stop".to_string()));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_a_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = tiny_server(dir.path(), 1, None).await;
    // A gRPC chat holds the engine's one place; a long prompt keeps it there
    // a while (its prefill alone).
    let mut models = ModelServiceClient::new(server.channel().await);
    let held = models
        .chat(proto::ChatRequest {
            store: false,
            metadata: Default::default(),
            model: "tiny".into(),
            messages: vec![proto::ChatMessage {
                role: "user".into(),
                content: "x".repeat(800),
            }],
            sampling: Some(proto::SamplingParams {
                temperature: Some(0.0),
                max_tokens: Some(16),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    for stream in [false, true] {
        let response = post(&server, &tiny("hi", json!({"stream": stream, "max_tokens": 4}))).await;
        let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        let retry_ms: u64 = response.headers()["retry-after-ms"].to_str().unwrap().parse().unwrap();
        assert!(retry_after >= 1 && retry_ms > 0, "{retry_after} {retry_ms}");
        let error = openai_error(response, 429).await;
        assert_eq!(error["type"], "rate_limit_error", "{error}");
    }
    drop(held);
    // Once the engine's place is free again, REST is served.
    let body = loop {
        let response = post(&server, &tiny("hi", json!({"max_tokens": 4}))).await;
        if response.status() != 429 {
            break ok(response).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["object"], "chat.completion");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_stream_frees_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let server = tiny_server(dir.path(), 1, None).await;
    let long = json!({"temperature": 0, "max_completion_tokens": 600, "stream": true});
    let start = Instant::now();
    let chunks = chunks(post(&server, &tiny("hello", long.clone())).await).await;
    let full = start.elapsed();
    assert_eq!(
        streamed_text(&chunks, 0).1,
        "length",
        "the test needs a chat that runs to its limit"
    );

    // The same stream, left after its first piece of text.
    let mut response = post(&server, &tiny("hello", long)).await;
    let mut seen = String::new();
    while !seen.contains("\"content\":\"") || seen.matches("data: ").count() < 2 {
        seen.push_str(&String::from_utf8_lossy(&response.chunk().await.unwrap().unwrap()));
    }
    drop(response);
    let start = Instant::now();
    loop {
        let response = post(&server, &tiny("hi", json!({"max_tokens": 2}))).await;
        if response.status() != 429 {
            ok(response).await;
            break;
        }
        tokio::task::yield_now().await;
    }
    let waited = start.elapsed();
    assert!(
        waited < full / 4,
        "waited {waited:?} for the engine; the whole stream takes {full:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_on_a_whole_answer_frees_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let server = tiny_server(dir.path(), 1, None).await;
    let long = tiny("hello", json!({"temperature": 0, "max_completion_tokens": 600}));
    let start = Instant::now();
    let body = ok(post(&server, &long).await).await;
    let full = start.elapsed();
    assert_eq!(
        body["choices"][0]["finish_reason"], "length",
        "the test needs a chat that runs to its limit"
    );

    // The same request, given up on long before its answer: the server
    // drops the completion with the connection.
    let gave_up = http()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(server.admin_key())
        .timeout(full / 10)
        .json(&long)
        .send()
        .await;
    assert!(gave_up.is_err_and(|e| e.is_timeout()));
    let start = Instant::now();
    loop {
        let response = post(&server, &tiny("hi", json!({"max_tokens": 2}))).await;
        if response.status() != 429 {
            ok(response).await;
            break;
        }
        tokio::task::yield_now().await;
    }
    let waited = start.elapsed();
    assert!(
        waited < full / 2,
        "waited {waited:?} for the engine; the whole answer takes {full:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_is_an_error_frame() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    stub.script([Reply::Cut(chat_body("a long answer that is cut"))]);
    let frames = frames(post(&server, &with(user("stub/m", "x"), json!({"stream": true}))).await).await;
    let (last, before) = frames.split_last().unwrap();
    let error: Value = serde_json::from_str(last).unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().contains("ended before"),
        "{error}"
    );
    assert!(error["error"]["type"].is_string());
    assert!(before.iter().all(|f| f != "[DONE]"), "{frames:?}");
    let text: String = before
        .iter()
        .map(|f| serde_json::from_str::<Value>(f).unwrap())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert!("a long answer that is cut".starts_with(&text), "{text}");
    server.stop().await;
}
