//! ModelService: registering base models from real files, listing them
//! beside fine-tuned models, and clear errors for what is not a model; Chat
//! against the local engine's bounded queue (full, and freed by a client
//! that leaves).

use crate::common::*;
use lathe::proto::{self, ModelKind, model_service_client::ModelServiceClient};
use tonic::Code;
use tonic_types::StatusExt;

/// A tiny Hugging Face layout: config.json, one safetensors shard (header
/// only matters for registration), tokenizer.json.
pub(crate) fn hf_dir(root: &std::path::Path, model_type: &str) -> std::path::PathBuf {
    let dir = root.join(format!("hf-{model_type}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"model_type": "{model_type}", "max_position_embeddings": 2048, "hidden_size": 8}}"#),
    )
    .unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[4,8],"data_offsets":[0,128]},"b":{"dtype":"F32","shape":[8],"data_offsets":[128,160]},"__metadata__":{"format":"pt"}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.extend(vec![0u8; 160]);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    dir
}

/// A GGUF v3 header: architecture, context length, one 16x4 tensor.
pub(crate) fn gguf_file(root: &std::path::Path) -> std::path::PathBuf {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, s: &str| {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(2u64.to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, "qwen2");
    s(&mut b, "qwen2.context_length");
    b.extend(4u32.to_le_bytes());
    b.extend(32768u32.to_le_bytes());
    s(&mut b, "token_embd.weight");
    b.extend(2u32.to_le_bytes());
    b.extend(16u64.to_le_bytes());
    b.extend(4u64.to_le_bytes());
    b.extend(0u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    let path = root.join("tiny-qwen.gguf");
    std::fs::write(&path, b).unwrap();
    path
}

#[tokio::test]
async fn base_models_register_list_and_unregister() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    // DATA_DIR/models is one of the default model roots.
    let models_dir = data.path().join("models");
    std::fs::create_dir_all(&models_dir).unwrap();
    let mut models = ModelServiceClient::new(server.channel().await);
    let register = |name: &str, path: &std::path::Path| proto::RegisterModelRequest {
        name: name.into(),
        path: path.display().to_string(),
    };

    let llama = models
        .register_model(register("tiny-llama", &hf_dir(&models_dir, "llama")))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(llama.kind, ModelKind::Base as i32);
    assert_eq!(
        (
            llama.architecture.as_str(),
            llama.format.as_str(),
            llama.parameters,
            llama.context_length
        ),
        ("llama", "safetensors", 40, 2048)
    );
    let qwen = models
        .register_model(register("tiny-qwen", &gguf_file(&models_dir)))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(
        (qwen.architecture.as_str(), qwen.format.as_str(), qwen.parameters),
        ("qwen2", "gguf", 64)
    );
    assert_eq!(qwen.context_length, 32768);

    let err = models
        .register_model(register("tiny-qwen", &gguf_file(&models_dir)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    for (name, path, needle) in [
        ("bad name!", models_dir.clone(), "name"),
        ("gpt2", hf_dir(&models_dir, "gpt2"), "not supported"),
        ("empty", models_dir.join("nothing-here"), "model roots"),
    ] {
        let err = models.register_model(register(name, &path)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name}");
        let details = err.get_error_details();
        let v = &details.bad_request().unwrap().field_violations[0];
        assert!(
            v.field.contains(needle) || v.description.contains(needle),
            "{name}: {v:?}"
        );
    }

    let base = models
        .list_models(proto::ListModelsRequest {
            kind: ModelKind::Base as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(
        base.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["tiny-llama", "tiny-qwen"]
    );
    let fine = models
        .list_models(proto::ListModelsRequest {
            kind: ModelKind::FineTuned as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(fine.is_empty());
    assert!(
        base.iter().all(|m| !m.path.is_empty()),
        "admins see where a base model is"
    );

    // A member's key sees the shared base models, without their server paths,
    // and may not register or delete them.
    let mut admin = lathe::proto::admin_service_client::AdminServiceClient::new(server.channel().await);
    admin
        .create_project(proto::CreateProjectRequest {
            id: "team".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: "team".into(),
            role: proto::Role::Member as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut member = ModelServiceClient::new(server.channel_with(&secret).await);
    let seen = member
        .get_model(proto::GetModelRequest { id: "tiny-qwen".into() })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!((seen.architecture.as_str(), seen.path.as_str()), ("qwen2", ""));
    let listed = member
        .list_models(proto::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(
        listed.len() == 2 && listed.iter().all(|m| m.path.is_empty()),
        "{listed:?}"
    );
    for status in [
        member
            .register_model(register("mine", &hf_dir(&models_dir, "llama")))
            .await
            .unwrap_err(),
        member
            .delete_model(proto::DeleteModelRequest { id: "tiny-qwen".into() })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }

    models
        .delete_model(proto::DeleteModelRequest { id: "tiny-qwen".into() })
        .await
        .unwrap();
    let err = models
        .get_model(proto::GetModelRequest { id: "tiny-qwen".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        models_dir.join("tiny-qwen.gguf").exists(),
        "unregistering leaves the user's files"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_models_add_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let path = hf_dir(&dir.path().join("models"), "qwen2");
    let addr = server.url();
    let out = tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
                .args(args)
                .env("LATHE_ADDR", &addr)
                .env("LATHE_API_KEY", ADMIN_KEY)
                .output()
                .unwrap()
        };
        let add = run(&["--json", "models", "add", path.to_str().unwrap(), "--name", "q"]);
        let list = run(&["models", "list", "--kind", "base"]);
        let outside = run(&["models", "add", "/etc/shadow", "--name", "shadow"]);
        (add, list, outside)
    })
    .await
    .unwrap();
    assert!(!out.2.status.success());
    let refused = String::from_utf8_lossy(&out.2.stderr);
    assert!(
        refused.contains("model roots") && refused.contains("hint: the server reads the path on its own disk"),
        "{refused}"
    );
    assert!(out.0.status.success(), "{}", String::from_utf8_lossy(&out.0.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.0.stdout).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["architecture"].as_str()),
        (Some("base"), Some("qwen2"))
    );
    let list = String::from_utf8(out.1.stdout).unwrap();
    assert!(list.contains("q ") && list.contains("qwen2 safetensors"), "{list}");
    server.stop().await;
}

/// A server whose local engine holds one generation at a time, with a tiny
/// random model registered as "tiny".
async fn one_slot_server(dir: &std::path::Path) -> (TestServer, ModelServiceClient<lathe::client::Channel>) {
    slots_server(dir, 1).await
}

async fn slots_server(dir: &std::path::Path, slots: usize) -> (TestServer, ModelServiceClient<lathe::client::Channel>) {
    let model_dir = dir.join("tiny-model");
    lathe_engine::tiny::write_tiny_model(&model_dir, 2, 64, 3).unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.join("data"));
    config.max_queued_generations = slots;
    config.model_roots = vec![model_dir.clone()];
    let server = TestServer::start_with(config).await;
    let mut models = ModelServiceClient::new(server.channel().await);
    models
        .register_model(proto::RegisterModelRequest {
            name: "tiny".into(),
            path: model_dir.display().to_string(),
        })
        .await
        .unwrap();
    (server, models)
}

/// A greedy chat with the tiny model.
fn chat(content: &str, max_tokens: u32) -> proto::ChatRequest {
    proto::ChatRequest {
        store: false,
        metadata: Default::default(),
        model: "tiny".into(),
        messages: vec![proto::ChatMessage {
            role: "user".into(),
            content: content.into(),
        }],
        sampling: Some(proto::SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ..Default::default()
        }),
    }
}

/// Reads a chat to its end: the text and the end message.
async fn read_chat(mut stream: tonic::Streaming<proto::ChatResponse>) -> (String, proto::ChatEnd) {
    let mut text = String::new();
    while let Some(msg) = stream.message().await.unwrap() {
        match msg.payload.unwrap() {
            proto::chat_response::Payload::Delta(d) => text.push_str(&d),
            proto::chat_response::Payload::End(end) => {
                assert!(stream.message().await.unwrap().is_none(), "the end is last");
                return (text, end);
            }
        }
    }
    panic!("the chat ended without its end message");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_generation_queue_answers_resource_exhausted_with_retry_info() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut models) = one_slot_server(dir.path()).await;
    // The call returns once the chat holds the engine's one place; a long
    // prompt keeps it there for a while (its prefill alone).
    let first = models.chat(chat(&"x".repeat(800), 16)).await.unwrap().into_inner();
    let err = models.chat(chat("hi", 4)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let retry = err.get_error_details().retry_info().expect("RetryInfo").retry_delay;
    assert!(retry.is_some_and(|d| !d.is_zero()), "{retry:?}");
    // Once the first chat is over, its place is free again.
    let (_, end) = read_chat(first).await;
    assert!(end.prompt_tokens > 800, "{end:?}");
    let (_, end) = read_chat(models.chat(chat("hi", 4)).await.unwrap().into_inner()).await;
    assert!((1..=4).contains(&end.completion_tokens), "{end:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_chat_frees_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut models) = one_slot_server(dir.path()).await;
    // How long the long chat takes when read to its end.
    let start = std::time::Instant::now();
    let (text, end) = read_chat(models.chat(chat("hello", 600)).await.unwrap().into_inner()).await;
    let full = start.elapsed();
    assert_eq!(
        (end.finish_reason.as_str(), end.completion_tokens),
        ("length", 600),
        "the test needs a chat that runs to its limit: {text:?}"
    );

    // The same chat, left after its first piece of text.
    let mut stream = models.chat(chat("hello", 600)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(first.payload, Some(proto::chat_response::Payload::Delta(_))),
        "{first:?}"
    );
    drop(stream);
    // The engine lets it go at its next token, long before its 600th: the
    // one place is free again at once.
    let start = std::time::Instant::now();
    let next = loop {
        match models.chat(chat("hi", 2)).await {
            Ok(next) => break next.into_inner(),
            Err(e) if e.code() == Code::ResourceExhausted => tokio::task::yield_now().await,
            Err(e) => panic!("{e:?}"),
        }
    };
    let waited = start.elapsed();
    read_chat(next).await;
    assert!(
        waited < full / 4,
        "waited {waited:?} for the engine; the whole chat takes {full:?}"
    );
    server.stop().await;
}

/// Continuous batching: a chat that arrives while another decodes joins
/// the running batch at its next token instead of waiting for it to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_joins_the_running_batch_instead_of_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (server, models) = slots_server(dir.path(), 2).await;
    let mut long = models.clone().chat(chat("hello", 600)).await.unwrap().into_inner();
    // The long chat is decoding; it is read to its end beside the short one.
    long.message().await.unwrap().unwrap();
    let long = tokio::spawn(async move {
        let (_, end) = read_chat(long).await;
        (end, std::time::Instant::now())
    });
    let (short_text, short_end) = read_chat(models.clone().chat(chat("hi", 3)).await.unwrap().into_inner()).await;
    let short_done = std::time::Instant::now();
    assert!((1..=3).contains(&short_end.completion_tokens), "{short_end:?}");
    let (long_end, long_done) = long.await.unwrap();
    assert_eq!(
        (long_end.finish_reason.as_str(), long_end.completion_tokens),
        ("length", 600)
    );
    assert!(short_done < long_done, "the short chat waited for the long one to end");
    // And the short answer is the one it gets alone.
    let (alone, _) = read_chat(models.clone().chat(chat("hi", 3)).await.unwrap().into_inner()).await;
    assert_eq!(short_text, alone);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_sequence_ends_the_streamed_text_where_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut models) = one_slot_server(dir.path()).await;
    let (full, end) = read_chat(models.chat(chat("hello", 40)).await.unwrap().into_inner()).await;
    assert_eq!(end.finish_reason, "length", "{full:?}");
    // Three characters from the middle of the answer as the stop sequence:
    // the streamed text must end where they first start, never show them.
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let mut request = chat("hello", 40);
    request.sampling.as_mut().unwrap().stop = vec![stop.clone()];
    let (text, end) = read_chat(models.chat(request).await.unwrap().into_inner()).await;
    assert_eq!(end.finish_reason, "stop");
    assert_eq!(text, full[..full.find(&stop).unwrap()], "stop {stop:?}");
    server.stop().await;
}

/// What a status may not carry: the server's directories (data dir, model
/// roots, working directory) and its pid.
fn assert_reveals_nothing(status: &tonic::Status, dirs: &[&std::path::Path]) {
    let text = format!("{} {:?}", status.message(), status.get_error_details());
    let cwd = std::env::current_dir().unwrap();
    for dir in dirs.iter().copied().chain([cwd.as_path()]) {
        assert!(!text.contains(&*dir.to_string_lossy()), "{dir:?} in {text}");
    }
    let pid = std::process::id().to_string();
    assert!(
        !text.split(|c: char| !c.is_ascii_digit()).any(|n| n == pid),
        "the pid in {text}"
    );
}

/// Registration reads only under the model roots, and a refusal reads the
/// same whether or not something is there: no file oracle, no planting of
/// stored bytes, the server keeps serving, nothing is stored.
#[tokio::test]
async fn registration_outside_the_model_roots_is_one_refusal() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    let outside = outer.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // The data dir inside the root: its blobs are still never a model.
    let mut config = lathe::config::ServeConfig::embedded(root.join("data"));
    config.model_roots = vec![root.clone()];
    let server = TestServer::start_with(config).await;
    let mut models = ModelServiceClient::new(server.channel().await);
    let mut datasets = server.datasets().await;

    let real_model = hf_dir(&outside, "llama");
    std::os::unix::fs::symlink(&real_model, root.join("escape")).unwrap();
    let ready = upload_fixture(&mut datasets, "sft_tools.jsonl", proto::DatasetPurpose::Sft, "").await;
    let blob = |sha: &str| root.join("data/blobs/blobs/sha256").join(&sha[..2]).join(sha);
    assert!(
        blob(&ready.sha256).is_file(),
        "the stored bytes are where the probe found them"
    );
    let failed = upload_bytes(
        &mut datasets,
        "model.gguf",
        proto::DatasetPurpose::Sft,
        "",
        &std::fs::read(gguf_file(&outside)).unwrap(),
        1 << 16,
    )
    .await
    .unwrap();
    assert_eq!(failed.state, proto::DatasetState::Failed as i32);

    let refused = [
        std::path::PathBuf::from("/etc/shadow"),
        "/proc/self/environ".into(),
        "/etc/does-not-exist".into(),
        root.join("escape"),
        root.join("../outside/hf-llama"),
        root.join("nothing-here"),
        blob(&ready.sha256),
        blob(&failed.sha256),
        root.join("data/lathe.db"),
    ];
    let mut descriptions = std::collections::BTreeSet::new();
    for path in &refused {
        let err = models
            .register_model(proto::RegisterModelRequest {
                name: "probe".into(),
                path: path.display().to_string(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{path:?}: {err:?}");
        let details = err.get_error_details();
        let v = &details.bad_request().unwrap().field_violations;
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].field, "path");
        descriptions.insert(v[0].description.clone());
        assert_eq!(
            err.message(),
            format!("invalid argument: path: {}", v[0].description),
            "{path:?}"
        );
        assert_reveals_nothing(&err, &[&root, &outside]);
    }
    assert_eq!(
        descriptions.into_iter().collect::<Vec<_>>(),
        ["must be a model directory or GGUF file under one of the server's model roots"],
        "one answer whatever is there"
    );
    let listed = models
        .list_models(proto::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.models.is_empty(), "nothing stored");

    // Inside the root, what is wrong with a model is said, without the
    // server's paths; and a model there registers.
    std::fs::create_dir_all(root.join("empty")).unwrap();
    let err = models
        .register_model(proto::RegisterModelRequest {
            name: "empty".into(),
            path: root.join("empty").display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("neither config.json"), "{}", err.message());
    assert_reveals_nothing(&err, &[&root.join("empty")]);
    let inside = hf_dir(&root, "qwen2");
    models
        .register_model(proto::RegisterModelRequest {
            name: "inside".into(),
            path: inside.display().to_string(),
        })
        .await
        .unwrap();
    server.stop().await;
}

/// The errors the probe saw (a model whose files vanished, a stored blob
/// that went missing) say what is wrong without the server's paths, pid or
/// working directory.
#[tokio::test]
async fn errors_name_no_server_paths() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut models) = one_slot_server(dir.path()).await;
    std::fs::remove_dir_all(dir.path().join("tiny-model")).unwrap();
    let err = models.chat(chat("hi", 4)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("tiny"), "{}", err.message());
    assert_reveals_nothing(&err, &[dir.path()]);

    let mut datasets = server.datasets().await;
    let ds = upload_fixture(&mut datasets, "sft_tools.jsonl", proto::DatasetPurpose::Sft, "").await;
    for file in files_under(&dir.path().join("data/blobs")) {
        std::fs::remove_file(file).unwrap();
    }
    let status = match datasets
        .download_dataset(proto::DownloadDatasetRequest { id: ds.id.clone() })
        .await
    {
        Err(status) => status,
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Err(status) => break status,
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a download of a missing blob ended cleanly"),
                }
            }
        }
    };
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_reveals_nothing(&status, &[dir.path()]);
    server.stop().await;
}
