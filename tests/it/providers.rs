//! The OpenAI-compatible HTTP provider against a test-only server that
//! injects 429s, 500s, slow replies and malformed bodies, through the router
//! every caller uses (streamed as server-sent events); and model graders,
//! cosine similarity and the Chat RPC through it over real gRPC.

use std::{sync::atomic::Ordering, time::Duration};

use crate::common::openai_stub::{Reply, chat_body};
use crate::common::*;
use lathe::inference::{ChatEnd, ChatError, ChatEvent, ChatModel, ChatRequest, ModelRouter, ProviderConfig, Providers};
use lathe::proto::json::struct_from_json;
use lathe::proto::{self, grader_service_client::GraderServiceClient};
use serde_json::json;

fn config(url: &str, key_file: Option<std::path::PathBuf>) -> ProviderConfig {
    serde_json::from_value(json!({
        "name": "stub", "base_url": url, "api_key_file": key_file, "max_retries": 3,
        "timeout_secs": 2, "embedding_model": "emb-1"
    }))
    .unwrap()
}

/// The router over `configs`, without a local engine.
fn router(configs: Vec<ProviderConfig>) -> ModelRouter {
    ModelRouter::new(std::sync::Arc::new(Providers::from_configs(configs).unwrap()), None)
}

/// A streamed completion read to its end: its deltas and its end.
async fn streamed(router: &ModelRouter, request: ChatRequest) -> Result<(Vec<String>, ChatEnd), ChatError> {
    let mut stream = router.stream(request).await?;
    let mut deltas = Vec::new();
    while let Some(event) = stream.recv().await {
        match event? {
            ChatEvent::Delta(d) => deltas.push(d),
            ChatEvent::End(end) => {
                assert!(stream.recv().await.is_none(), "the end is last");
                return Ok((deltas, end));
            }
        }
    }
    panic!("the stream ended without its end");
}

fn user(model: &str, text: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![json!({"role": "user", "content": text})],
        ..Default::default()
    }
}

#[tokio::test]
async fn retries_429_and_500_honouring_retry_after_then_succeeds() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-test\n").unwrap();
    stub.script([
        Reply::Status(429, Some(0)),
        Reply::Status(503, None),
        Reply::Json(chat_body("hello")),
    ]);
    let providers = Providers::from_configs(vec![config(&url, Some(key))]).unwrap();
    let out = ModelRouter::new(std::sync::Arc::new(providers), None)
        .complete(user("stub/m", "hi"))
        .await
        .unwrap();
    assert_eq!(out.text, "hello");
    assert_eq!((out.usage.prompt, out.usage.completion), (11, 7));
    let requests = stub.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert!(
        requests
            .iter()
            .all(|(path, auth, _)| path == "/v1/chat/completions" && auth == "Bearer sk-test")
    );
    let body: serde_json::Value = serde_json::from_str(&requests[0].2).unwrap();
    assert_eq!(body["model"], "m");
    assert_eq!(body["messages"][0]["content"], "hi");
    assert!(body.get("stream").is_none(), "a collected completion is one JSON body");
    let providers = Providers::from_configs(vec![config(&url, Some(dir.path().join("key")))]).unwrap();
    assert!(
        !format!("{providers:?}").contains("sk-test"),
        "the key never shows in debug output"
    );
}

#[tokio::test]
async fn malformed_bodies_and_client_errors_fail_without_retrying() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let router = router(vec![config(&url, None)]);
    stub.script([Reply::Malformed]);
    let err = router.complete(user("m", "x")).await.unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");
    stub.script([Reply::Status(400, None)]);
    let err = router.complete(user("m", "x")).await.unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    assert!(!err.is_retryable(), "the provider retried what it could");
    assert_eq!(stub.requests.lock().unwrap().len(), 2, "no retries for either");
    // A stream cut short is an error that may pass on a second try.
    stub.script([Reply::Cut(chat_body("a long answer"))]);
    let err = streamed(&router, user("m", "x")).await.unwrap_err();
    assert!(err.is_retryable() && err.to_string().contains("ended before"), "{err}");
}

#[tokio::test]
async fn slow_replies_time_out_then_retry() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let router = router(vec![config(&url, None)]);
    stub.script([Reply::Slow(
        Duration::from_secs(4),
        Box::new(Reply::Json(chat_body("late"))),
    )]);
    let out = router.complete(user("m", "x")).await.unwrap();
    assert_eq!(
        out.text, r#"{"result": 0.5, "steps": []}"#,
        "the retry got the default answer"
    );
    assert_eq!(stub.requests.lock().unwrap().len(), 2);
}

/// Sends `n` chats at once and waits until all have succeeded.
async fn chat_at_once(router: &std::sync::Arc<ModelRouter>, n: usize) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let r = router.clone();
            tokio::spawn(async move { r.complete(user("m", "x")).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn concurrency_is_bounded_per_provider() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let mut c = config(&url, None);
    c.max_concurrency = 2;
    let router = std::sync::Arc::new(router(vec![c]));
    stub.script((0..10).map(|_| Reply::Slow(Duration::from_millis(50), Box::new(Reply::Json(chat_body("ok"))))));
    chat_at_once(&router, 10).await;
    assert_eq!(stub.max_in_flight.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn model_graders_and_cosine_run_through_a_configured_provider() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers_file = dir.path().join("providers.json");
    std::fs::write(
        &providers_file,
        json!([{"name": "stub", "base_url": url, "embedding_model": "emb-1"}]).to_string(),
    )
    .unwrap();
    let mut cfg = lathe::config::ServeConfig::embedded(dir.path());
    cfg.providers = Some(providers_file);
    let server = TestServer::start_with(cfg).await;
    let mut client = GraderServiceClient::new(server.channel().await);
    let run = |grader: serde_json::Value, text: &str| proto::RunGraderRequest {
        grader: Some(struct_from_json(&grader)),
        sample: Some(proto::Sample {
            output_text: text.into(),
            ..Default::default()
        }),
        item: Some(struct_from_json(&json!({"reference": "card arrival"}))),
    };

    *stub.default_chat.lock().unwrap() =
        chat_body(r#"{"result": 0.8, "steps": [{"description": "d", "conclusion": "c"}]}"#);
    let score = json!({"type": "score_model", "name": "judge", "model": "stub/judge-1",
        "input": [{"role": "user", "content": "Answer: {{ sample.output_text }} Reference: {{ item.reference }}"}]});
    let r = client
        .run_grader(run(score, "card_arrival"))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!((r.reward - 0.8).abs() < 1e-12, "{r:?}");
    let meta = r.metadata.unwrap();
    assert!(!meta.errors.unwrap().model_grader_server_error);
    assert_eq!(meta.token_usage.values().sum::<u64>(), 18);
    let sent = stub.requests.lock().unwrap().last().unwrap().2.clone();
    assert!(sent.contains("Answer: card_arrival Reference: card arrival"), "{sent}");

    *stub.default_chat.lock().unwrap() = chat_body(r#"{"result": "correct"}"#);
    let label = json!({"type": "label_model", "name": "l", "model": "judge-1",
        "input": [{"role": "user", "content": "{{ sample.output_text }}"}],
        "labels": ["correct", "wrong"], "passing_labels": ["correct"]});
    let r = client
        .run_grader(run(label, "x"))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert_eq!(r.reward, 1.0, "{r:?}");
    let sent: serde_json::Value = serde_json::from_str(&stub.requests.lock().unwrap().last().unwrap().2).unwrap();
    assert_eq!(
        sent["model"], "judge-1",
        "a bare model name goes to the default provider"
    );
    assert_eq!(
        sent["response_format"]["type"], "json_schema",
        "structured output is asked for"
    );

    let cosine = json!({"type": "text_similarity", "name": "c", "evaluation_metric": "cosine",
        "input": "{{ sample.output_text }}", "reference": "{{ item.reference }}"});
    let r = client
        .run_grader(run(cosine, "card arrival"))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(
        (r.reward - 1.0).abs() < 1e-6,
        "identical texts embed identically: {r:?}"
    );
    let r2 = client
        .run_grader(run(
            json!({"type": "text_similarity", "name": "c", "evaluation_metric": "cosine",
                "input": "{{ sample.output_text }}", "reference": "{{ item.reference }}"}),
            "zz",
        ))
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    // [2,0,1] vs [12,4,1]: cos = 25 / (sqrt(5) * sqrt(161))
    let expected = 25.0 / (5f64.sqrt() * 161f64.sqrt());
    assert!((r2.reward - expected).abs() < 1e-6, "{} vs {expected}", r2.reward);
    server.stop().await;
}

#[tokio::test]
async fn chat_model_sends_tools_and_response_format_and_parses_tool_calls() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let call =
        json!({"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}});
    let reply = json!({
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": null, "tool_calls": [call]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3}
    })
    .to_string();
    stub.script([Reply::Json(reply.clone()), Reply::Json(reply)]);
    let providers = std::sync::Arc::new(Providers::from_configs(vec![config(&url, None)]).unwrap());
    let router = ModelRouter::new(providers, None);
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    let request = ChatRequest {
        model: "stub/m".into(),
        messages: vec![json!({"role": "user", "content": "hi"})],
        temperature: Some(0.0),
        max_tokens: Some(16),
        seed: Some(3),
        stop: vec!["\n".into()],
        tools: Some(tools.clone()),
        response_format: Some(json!({"type": "json_object"})),
        ..Default::default()
    };
    let out = router.complete(request.clone()).await.unwrap();
    assert_eq!((out.text.as_str(), out.finish_reason.as_str()), ("", "tool_calls"));
    assert_eq!(out.tool_calls, vec![call.clone()]);
    assert_eq!((out.usage.prompt, out.usage.completion), (5, 3));
    // Streamed, the call comes in pieces and is put back together.
    let (deltas, end) = streamed(&router, request).await.unwrap();
    assert!(deltas.is_empty(), "{deltas:?}");
    assert_eq!((end.finish_reason.as_str(), end.tool_calls), ("tool_calls", vec![call]));
    let body: serde_json::Value = serde_json::from_str(&stub.requests.lock().unwrap()[0].2).unwrap();
    assert_eq!(body["model"], "m");
    assert_eq!(body["tools"], tools);
    assert_eq!(body["response_format"], json!({"type": "json_object"}));
    assert_eq!(
        (body["stop"].clone(), body["max_tokens"].clone(), body["seed"].clone()),
        (json!(["\n"]), json!(16), json!(3))
    );

    // A bare name no local model has goes to the default provider as it is.
    stub.script([Reply::Json(chat_body("hi"))]);
    assert_eq!(router.complete(user("llama", "x")).await.unwrap().text, "hi");
    let body: serde_json::Value = serde_json::from_str(&stub.requests.lock().unwrap()[2].2).unwrap();
    assert_eq!(body["model"], "llama");
    // Without providers or a local engine, no name is served.
    let none = ModelRouter::new(std::sync::Arc::new(Providers::default()), None);
    let err = none.complete(user("stub/m", "x")).await.unwrap_err();
    assert!(matches!(&err, ChatError::NotFound(m) if m == "stub/m"), "{err:?}");
    // A bad request is refused before anything is sent.
    let err = router
        .complete(ChatRequest {
            temperature: Some(3.0),
            ..user("stub/m", "x")
        })
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("sampling.temperature"), "{err}");
    assert_eq!(stub.requests.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_streamed_chat_yields_what_the_collected_one_does() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let router = router(vec![config(&url, None)]);
    let text = "Streaming, a few characters at a time: déjà vu ✓";
    let mut body: serde_json::Value = serde_json::from_str(&chat_body(text)).unwrap();
    body["choices"][0]["message"]["refusal"] = json!("no");
    let body = body.to_string();
    stub.script([Reply::Json(body.clone()), Reply::Json(body.clone()), Reply::Whole(body)]);
    let (deltas, end) = streamed(&router, user("stub/m", "x")).await.unwrap();
    assert!(deltas.len() > 3, "the text came in pieces: {deltas:?}");
    assert_eq!(deltas.concat(), text);
    assert_eq!(end.finish_reason, "stop");
    assert_eq!((end.usage.prompt, end.usage.completion), (11, 7));
    assert_eq!(end.refusal.as_deref(), Some("no"));
    let sent: Vec<serde_json::Value> = stub
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_str(&r.2).unwrap())
        .collect();
    assert_eq!(
        (
            sent[0]["stream"].clone(),
            sent[0]["stream_options"]["include_usage"].clone()
        ),
        (json!(true), json!(true))
    );
    // The same answer not streamed.
    let collected = router.complete(user("stub/m", "x")).await.unwrap();
    assert_eq!(
        (collected.text.as_str(), collected.usage, collected.refusal.as_deref()),
        (text, end.usage, Some("no"))
    );
    // A server that ignores `stream` answers whole, and that streams too.
    let (deltas, whole_end) = streamed(&router, user("stub/m", "x")).await.unwrap();
    assert_eq!((deltas.concat(), whole_end), (text.to_string(), end));
}

#[tokio::test]
async fn a_reader_that_leaves_frees_the_providers_slot() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let mut c = config(&url, None);
    c.max_concurrency = 1;
    let router = router(vec![c]);
    // The first answer is sent in full but never read to its end.
    stub.script([
        Reply::Json(chat_body(&"word ".repeat(2000))),
        Reply::Json(chat_body("second")),
    ]);
    let mut stream = router.stream(user("stub/m", "x")).await.unwrap();
    assert!(matches!(stream.recv().await, Some(Ok(ChatEvent::Delta(_)))));
    drop(stream);
    let out = tokio::time::timeout(Duration::from_secs(10), router.complete(user("stub/m", "y")))
        .await
        .expect("the one slot came back")
        .unwrap();
    assert_eq!(out.text, "second");
}

#[tokio::test]
async fn embeddings_that_are_not_one_vector_of_numbers_are_errors_not_wrong_vectors() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let providers = std::sync::Arc::new(Providers::from_configs(vec![config(&url, None)]).unwrap());
    let embedder = providers.embedder().expect("an embedding model is configured");
    let texts = ["the cat".to_string()];
    // What llama.cpp's server answers for a model without pooling: one
    // vector per token.
    stub.script([Reply::Json(
        json!({"object": "list", "data": [{"object": "embedding", "index": 0,
                "embedding": [[0.1, 0.2], [0.3, 0.4]]}]})
        .to_string(),
    )]);
    let e = embedder.embed(&texts).await.unwrap_err();
    assert!(
        e.message.contains("one per token") && e.message.contains("pooling"),
        "{}",
        e.message
    );
    stub.script([Reply::Json(
        json!({"data": [{"index": 0, "embedding": [0.1, "x"]}]}).to_string(),
    )]);
    let e = embedder.embed(&texts).await.unwrap_err();
    assert!(e.message.contains("not a number"), "{}", e.message);
    // A well-formed answer still works on the same provider.
    assert_eq!(embedder.embed(&texts).await.unwrap(), vec![vec![7.0, 2.0, 1.0]]);
}

#[tokio::test]
async fn structured_output_follows_the_provider_setting() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let schema = json!({"type": "object", "properties": {"result": {"type": "number"}}});
    let mut sent = vec![];
    for setting in ["json_schema", "json_object", "none"] {
        let mut cfg =
            serde_json::to_value(json!({"name": "stub", "base_url": url, "structured_output": setting})).unwrap();
        cfg["max_retries"] = json!(0);
        let router = router(vec![serde_json::from_value(cfg).unwrap()]);
        stub.script([Reply::Json(chat_body(r#"{"result": 1}"#))]);
        let request = lathe::graders::grader_request("m", &[], &Default::default(), schema.clone());
        router
            .complete(ChatRequest {
                messages: user("m", "grade").messages,
                ..request
            })
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_str(&stub.requests.lock().unwrap().last().unwrap().2).unwrap();
        sent.push(body["response_format"].clone());
    }
    assert_eq!(sent[0]["type"], "json_schema");
    assert_eq!(sent[0]["json_schema"]["schema"], schema);
    assert_eq!(sent[1], json!({"type": "json_object", "schema": schema}));
    assert!(sent[2].is_null(), "{}", sent[2]);
    assert!(
        serde_json::from_value::<ProviderConfig>(json!({"name": "x", "base_url": url, "structured_output": "xml"}))
            .is_err()
    );
}

#[tokio::test]
async fn the_rate_limit_spaces_requests() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let mut c = config(&url, None);
    c.requests_per_second = Some(20.0);
    c.max_concurrency = 10;
    let router = std::sync::Arc::new(router(vec![c]));
    stub.script((0..6).map(|_| Reply::Json(chat_body("ok"))));
    let start = std::time::Instant::now();
    chat_at_once(&router, 6).await;
    // Six requests at 20 per second: the sixth leaves 5 gaps of 50 ms after
    // the first, however they are scheduled. (A lower bound only: a slow
    // machine cannot fail it.)
    assert!(start.elapsed() >= Duration::from_millis(245), "{:?}", start.elapsed());
    assert_eq!(stub.requests.lock().unwrap().len(), 6);
}

#[tokio::test]
async fn the_chat_rpc_streams_a_providers_answer() {
    let (stub, url) = crate::common::openai_stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let providers_file = dir.path().join("providers.json");
    std::fs::write(&providers_file, json!([{"name": "stub", "base_url": url}]).to_string()).unwrap();
    let mut cfg = lathe::config::ServeConfig::embedded(dir.path());
    cfg.providers = Some(providers_file);
    let server = TestServer::start_with(cfg).await;
    let mut models = proto::model_service_client::ModelServiceClient::new(server.channel().await);
    stub.script([Reply::Json(chat_body("one two three four"))]);
    let mut stream = models
        .chat(proto::ChatRequest {
            store: false,
            metadata: Default::default(),
            model: "stub/m".into(),
            messages: vec![proto::ChatMessage {
                role: "user".into(),
                content: "count".into(),
            }],
            sampling: Some(proto::SamplingParams {
                max_tokens: Some(9),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let (mut deltas, mut end) = (Vec::new(), None);
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload.unwrap() {
            proto::chat_response::Payload::Delta(d) => deltas.push(d),
            proto::chat_response::Payload::End(e) => end = Some(e),
        }
    }
    assert!(deltas.len() > 1, "{deltas:?}");
    assert_eq!(deltas.concat(), "one two three four");
    let end = end.expect("an end message");
    assert_eq!(
        (end.finish_reason.as_str(), end.prompt_tokens, end.completion_tokens),
        ("stop", 11, 7)
    );
    let body: serde_json::Value = serde_json::from_str(&stub.requests.lock().unwrap()[0].2).unwrap();
    assert_eq!(
        (body["model"].clone(), body["max_tokens"].clone()),
        (json!("m"), json!(9))
    );
    // A provider's refusal of the request is the call's error.
    stub.script([Reply::Status(400, None)]);
    let err = models
        .chat(proto::ChatRequest {
            store: false,
            metadata: Default::default(),
            model: "stub/m".into(),
            messages: vec![proto::ChatMessage {
                role: "user".into(),
                content: "x".into(),
            }],
            sampling: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("400"), "{err:?}");
    server.stop().await;
}
