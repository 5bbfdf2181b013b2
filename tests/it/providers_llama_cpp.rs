//! Opt-in: the OpenAI-compatible HTTP provider against a real server,
//! llama-cpp-python's (`python -m llama_cpp.server`) serving the SmolLM2
//! GGUF: chat completions with sampling parameters and JSON mode,
//! embeddings, a score_model grader with structured output, and an eval
//! run over gRPC.
//!
//! Runs when LATHE_LLAMA_CPP_PYTHON names a Python that has
//! `llama-cpp-python[server]` installed; the model is models/SmolLM2-135M-
//! Instruct.Q4_1.gguf (`lathe models pull --dir models`). Without the
//! variable every test here returns at once, saying so.
//!
//! ```sh
//! LATHE_LLAMA_CPP_PYTHON=/path/to/venv/bin/python cargo test --test providers_llama_cpp
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use lathe::graders::{ChatMessage, ContentPart, SamplingParams, grader_request};
use lathe::inference::{ChatEvent, ChatModel, ChatRequest, ModelRouter, ProviderConfig, Providers};
use lathe::proto::json::{struct_from_json, value_from_json};
use lathe::proto::{self, eval_service_client::EvalServiceClient, grader_service_client::GraderServiceClient};
use serde_json::{Value, json};

/// A llama-cpp-python server on a free port, stopped when dropped.
struct LlamaServer {
    child: Child,
    url: String,
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `python -m llama_cpp.server` with mean pooling. SmolLM2's GGUF names no
/// pooling type, so llama.cpp would answer embeddings with one vector per
/// token (the provider refuses those), and llama-cpp-python's server has no
/// flag for pooling: this sets the default of its `Llama` constructor.
const MEAN_POOLED_SERVER: &str = r#"
import runpy, sys
import llama_cpp
init = llama_cpp.Llama.__init__
def pooled(self, *args, **kwargs):
    kwargs.setdefault("pooling_type", llama_cpp.LLAMA_POOLING_TYPE_MEAN)
    init(self, *args, **kwargs)
llama_cpp.Llama.__init__ = pooled
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"#;

/// None (and a note on stderr) unless the opt-in variable is set.
async fn llama_server() -> Option<LlamaServer> {
    let Ok(python) = std::env::var("LATHE_LLAMA_CPP_PYTHON") else {
        eprintln!("skipped: set LATHE_LLAMA_CPP_PYTHON to a Python with llama-cpp-python[server]");
        return None;
    };
    let model = model_path();
    assert!(
        model.exists(),
        "{} is missing: run `lathe models pull --dir models`",
        model.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(python)
        .args([
            "-c",
            MEAN_POOLED_SERVER,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["--model", &model.display().to_string(), "--model_alias", "smollm2"])
        .args(["--n_ctx", "2048", "--embedding", "true", "--n_threads", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start llama_cpp.server");
    let server = LlamaServer {
        child,
        url: format!("http://127.0.0.1:{port}/v1"),
    };
    // The server process loads the model before it listens: wait for it.
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(r) = http.get(format!("{}/models", server.url)).send().await
            && r.status().is_success()
        {
            return Some(server);
        }
        assert!(Instant::now() < deadline, "llama_cpp.server did not come up");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn provider(url: &str) -> ProviderConfig {
    serde_json::from_value(json!({
        "name": "llama", "base_url": url, "max_concurrency": 2, "timeout_secs": 120,
        "embedding_model": "smollm2", "structured_output": "json_object"
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_llama_cpp_server_answers_chats_embeddings_graders_and_evals() {
    let Some(llama) = llama_server().await else { return };
    let providers = Arc::new(Providers::from_configs(vec![provider(&llama.url)]).unwrap());
    let router = ModelRouter::new(providers.clone(), None);

    // A chat completion with sampling parameters and a token limit.
    let capital = ChatRequest {
        model: "llama/smollm2".into(),
        messages: vec![json!({"role": "user", "content": "What is the capital of France? One word."})],
        temperature: Some(0.0),
        max_tokens: Some(8),
        seed: Some(1),
        ..Default::default()
    };
    let out = router.complete(capital.clone()).await.unwrap();
    assert!(!out.text.trim().is_empty(), "{out:?}");
    assert!(out.usage.prompt > 5, "{out:?}");
    assert!((1..=8).contains(&out.usage.completion), "{out:?}");
    assert!(["stop", "length"].contains(&out.finish_reason.as_str()), "{out:?}");
    // Greedy with a seed: the same answer twice, streamed or collected.
    let again = router.complete(capital.clone()).await.unwrap();
    assert_eq!(again.text, out.text);
    let mut stream = router.stream(capital).await.unwrap();
    let mut streamed = String::new();
    let mut end = None;
    while let Some(event) = stream.recv().await {
        match event.unwrap() {
            ChatEvent::Delta(d) => streamed.push_str(&d),
            ChatEvent::End(e) => end = Some(e),
        }
    }
    assert_eq!(streamed, out.text);
    // (Its server ignores stream_options: a stream reports no usage.)
    assert_eq!(end.expect("an end").finish_reason, out.finish_reason);

    // JSON mode: the server constrains the output to JSON.
    let out = router
        .complete(ChatRequest {
            model: "llama/smollm2".into(),
            messages: vec![json!({"role": "user", "content": "Give a JSON object with a field \"city\"."})],
            temperature: Some(0.0),
            max_tokens: Some(48),
            response_format: Some(json!({"type": "json_object"})),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(out.text.trim_start().starts_with('{'), "{out:?}");
    if out.finish_reason == "stop" {
        serde_json::from_str::<Value>(&out.text).unwrap_or_else(|e| panic!("{e}: {:?}", out.text));
    }

    // Embeddings, for text_similarity cosine.
    let embedder = providers.embedder().expect("an embedding model is configured");
    let vectors = embedder
        .embed(&["the cat sat".to_string(), "a dog ran".to_string()])
        .await
        .unwrap();
    assert_eq!(vectors.len(), 2);
    assert!(vectors[0].len() >= 64 && vectors[0].len() == vectors[1].len());
    assert!(vectors[0].iter().all(|x| x.is_finite()));

    // A model grader's structured output through the chat seam.
    let graded = router
        .complete(grader_request(
            "llama/smollm2",
            &[ChatMessage {
                role: "user".into(),
                content: vec![ContentPart::Text {
                    text: "Score from 0 to 1 how polite this is: 'Thank you so much!'".into(),
                }],
            }],
            &SamplingParams {
                temperature: Some(0.0),
                max_completion_tokens: Some(64),
                ..Default::default()
            },
            json!({
                "type": "object",
                "properties": {"result": {"type": "number"}, "steps": {"type": "array", "items": {"type": "string"}}},
                "required": ["result"]
            }),
        ))
        .await
        .unwrap();
    let parsed: Value = serde_json::from_str(&graded.text).unwrap_or_else(|e| panic!("{e}: {:?}", graded.text));
    assert!(parsed["result"].is_number(), "{parsed}");

    // Through the service: a score_model grader and an eval run.
    let dir = tempfile::tempdir().unwrap();
    let providers_file = dir.path().join("providers.json");
    std::fs::write(
        &providers_file,
        json!([{"name": "llama", "base_url": llama.url, "max_concurrency": 2, "timeout_secs": 120,
                "structured_output": "json_object"}])
        .to_string(),
    )
    .unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path().join("data"));
    config.providers = Some(providers_file);
    let server = TestServer::start_with(config).await;

    // The grader schema puts `steps` before `result`: the answer needs room
    // for the steps (64 tokens end it mid-step, a parse error).
    let mut graders = GraderServiceClient::new(server.channel().await);
    let result = graders
        .run_grader(proto::RunGraderRequest {
            grader: Some(struct_from_json(&json!({
                "type": "score_model", "name": "polite", "model": "llama/smollm2",
                "input": [{"role": "user", "content": "Score from 0 to 1 how polite this is: {{ sample.output_text }}"}],
                "range": [0, 1], "sampling_params": {"temperature": 0, "max_completions_tokens": 256}
            }))),
            sample: Some(proto::Sample {
                output_text: "Thank you so much!".into(),
                ..Default::default()
            }),
            item: Some(struct_from_json(&json!({}))),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    let meta = result.metadata.unwrap();
    let errors = meta.errors.unwrap_or_default();
    assert!(
        !errors.model_grader_server_error && !errors.model_grader_parse_error,
        "{errors:?}"
    );
    assert!((0.0..=1.0).contains(&result.reward), "{}", result.reward);
    assert!(meta.token_usage.values().any(|t| *t > 0), "{:?}", meta.token_usage);

    let items: String = [("2+2", "4"), ("3+3", "6"), ("1+1", "2"), ("5+5", "10")]
        .iter()
        .map(|(q, a)| format!("{}\n", json!({"q": q, "answer": a})))
        .collect();
    let mut datasets = server.datasets().await;
    let dataset = upload_bytes(
        &mut datasets,
        "sums.jsonl",
        proto::DatasetPurpose::Eval,
        "",
        items.as_bytes(),
        1024,
    )
    .await
    .unwrap();
    let mut evals = EvalServiceClient::new(server.channel().await);
    let eval = evals
        .create_eval(proto::CreateEvalRequest {
            name: "sums".into(),
            item_schema: None,
            testing_criteria: vec![proto::TestingCriterion {
                grader: Some(struct_from_json(&json!({
                    "type": "string_check", "name": "has answer", "operation": "like",
                    "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"
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
        .unwrap();
    let run = evals
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: eval.id,
            dataset_id: dataset.id,
            source: Some(proto::create_eval_run_request::Source::Model(proto::ModelSource {
                model: "llama/smollm2".into(),
                input_messages: Some(prost_types::ListValue {
                    values: vec![value_from_json(
                        &json!({"role": "user", "content": "What is {{ item.q }}? Answer with the number."}),
                    )],
                }),
                sampling_params: Some(proto::EvalSamplingParams {
                    temperature: Some(0.0),
                    max_tokens: Some(12),
                    ..Default::default()
                }),
                ..Default::default()
            })),
            concurrency: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let mut stream = evals
        .watch_eval_run(proto::WatchEvalRunRequest {
            run_id: run.id,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut end = None;
    while let Some(msg) = stream.message().await.unwrap() {
        if let Some(proto::watch_eval_run_response::Payload::End(run)) = msg.payload {
            end = Some(run);
        }
    }
    let run = end.expect("the watch ends with the run");
    assert_eq!(run.state, proto::EvalRunState::Completed as i32, "{run:?}");
    let counts = run.result_counts.unwrap();
    assert_eq!((counts.total, counts.errored), (4, 0), "{counts:?}");
    let usage = run
        .per_model_usage
        .iter()
        .find(|u| u.model == "llama/smollm2")
        .expect("usage of the sampled model");
    assert!(usage.prompt_tokens > 20 && usage.completion_tokens > 0, "{usage:?}");
    server.stop().await;
}
