//! Base models in the blob store: the tiny model uploaded through the API
//! is fine-tuned and chatted with on a server whose model roots never held
//! it; a model imported from a path is stored the same way; uploads that
//! are not a model are refused, naming the file, and leave nothing behind.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::models::{gguf_file, hf_dir};
use lathe::client::Channel;
use lathe::proto::{
    self, DatasetPurpose, JobState, fine_tuning_service_client::FineTuningServiceClient,
    model_service_client::ModelServiceClient, upload_model_request::Payload, watch_job_response::Payload as Watch,
};
use tonic::Code;
use tonic_types::StatusExt;

/// A model's files as a client sends them: (name, bytes).
type Files = Vec<(String, Vec<u8>)>;

/// A server with an empty model root: no model is on its disk.
async fn server(dir: &Path) -> TestServer {
    let mut config = lathe::config::ServeConfig::embedded(dir.join("data"));
    config.job_poll_millis = 50;
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    config.model_roots = vec![root];
    TestServer::start_with(config).await
}

fn message(payload: Payload) -> proto::UploadModelRequest {
    proto::UploadModelRequest { payload: Some(payload) }
}

/// UploadModel's messages for `files` (name, bytes), in chunks of `chunk`.
fn messages(name: &str, files: &[(String, Vec<u8>)], chunk: usize) -> Vec<proto::UploadModelRequest> {
    let mut out = vec![message(Payload::Metadata(proto::UploadModelMetadata {
        name: name.into(),
    }))];
    for (file, bytes) in files {
        out.push(message(Payload::File(proto::UploadModelFile {
            name: file.clone(),
            bytes: bytes.len() as u64,
        })));
        out.extend(bytes.chunks(chunk).map(|c| message(Payload::Chunk(c.to_vec().into()))));
    }
    out
}

/// Every file of a directory, by name.
fn read_dir(dir: &Path) -> Files {
    let mut files: Files = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

async fn upload(
    models: &mut ModelServiceClient<Channel>,
    name: &str,
    files: &[(String, Vec<u8>)],
) -> Result<proto::Model, tonic::Status> {
    let response = models
        .upload_model(tokio_stream::iter(messages(name, files, 100_000)))
        .await?;
    Ok(response.into_inner().model.unwrap())
}

fn chat(model: &str) -> proto::ChatRequest {
    proto::ChatRequest {
        store: false,
        metadata: Default::default(),
        model: model.into(),
        messages: vec![proto::ChatMessage {
            role: "user".into(),
            content: "item 1".into(),
        }],
        sampling: Some(proto::SamplingParams {
            temperature: Some(0.0),
            max_tokens: Some(4),
            ..Default::default()
        }),
    }
}

/// Chats to the end; the end message's completion tokens.
async fn chat_to_end(models: &mut ModelServiceClient<Channel>, model: &str) -> u32 {
    let mut stream = models.chat(chat(model)).await.unwrap().into_inner();
    while let Some(msg) = stream.message().await.unwrap() {
        if let Some(proto::chat_response::Payload::End(end)) = msg.payload {
            return end.completion_tokens;
        }
    }
    panic!("the chat with {model} had no end");
}

fn blob_files(data: &Path) -> Vec<PathBuf> {
    files_under(&data.join("blobs/blobs"))
        .into_iter()
        .chain(files_under(&data.join("blobs/staging")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_model_trains_and_chats_on_a_server_that_never_had_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("client-side/tiny");
    lathe_engine::tiny::write_tiny_model(&source, 2, 32, 1).unwrap();
    let server = server(dir.path()).await;
    let mut models = ModelServiceClient::new(server.channel().await);
    let files = read_dir(&source);
    let model = upload(&mut models, "tiny-up", &files).await.unwrap();
    // Only the client had the files.
    std::fs::remove_dir_all(dir.path().join("client-side")).unwrap();
    assert_eq!(
        (model.kind, model.format.as_str(), model.path.as_str()),
        (proto::ModelKind::Base as i32, "safetensors", "")
    );
    assert!(model.parameters > 0 && !model.architecture.is_empty(), "{model:?}");
    let names: Vec<&str> = model.files.iter().map(|f| f.name.as_str()).collect();
    let sent: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, sent);
    for (f, (_, bytes)) in model.files.iter().zip(&files) {
        assert_eq!((f.bytes, f.sha256.clone()), (bytes.len() as u64, sha256_hex(bytes)));
    }

    let mut datasets = server.datasets().await;
    let train = upload_bytes(
        &mut datasets,
        "train.jsonl",
        DatasetPurpose::Sft,
        "",
        word_lines(16).as_bytes(),
        1 << 16,
    )
    .await
    .unwrap();
    let mut jobs = FineTuningServiceClient::new(server.channel().await);
    let job = jobs
        .create_job(proto::CreateJobRequest {
            base_model: "tiny-up".into(),
            training_dataset_id: train.id.clone(),
            suffix: "up".into(),
            seed: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    let mut watch = jobs
        .watch_job(proto::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let done = loop {
        if let Watch::End(end) = watch.message().await.unwrap().unwrap().payload.unwrap() {
            break end.job.unwrap();
        }
    };
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}");
    assert!(chat_to_end(&mut models, &done.fine_tuned_model).await > 0);
    assert!(chat_to_end(&mut models, "tiny-up").await > 0);

    // The engine read the model cache's verified copy.
    let data = dir.path().join("data");
    let cached = files_under(&data.join("model-cache"));
    assert_eq!(cached.len(), files.len(), "{cached:?}");
    assert!(cached.iter().all(|p| !p.to_string_lossy().contains(".fetch-")));

    // Deleting the models takes the stored files with them.
    for id in [done.fine_tuned_model.as_str(), "tiny-up"] {
        models
            .delete_model(proto::DeleteModelRequest { id: id.into() })
            .await
            .unwrap();
    }
    let left = blob_files(&data);
    for f in &model.files {
        assert!(
            !left.iter().any(|p| p.ends_with(&f.sha256)),
            "{} outlived its model",
            f.name
        );
    }
    assert!(files_under(&data.join("model-cache")).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn an_import_from_a_path_under_the_roots_is_stored_in_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let root = dir.path().join("root");
    let tiny = root.join("tiny");
    lathe_engine::tiny::write_tiny_model(&tiny, 2, 32, 1).unwrap();
    std::fs::write(tiny.join("README.md"), "not part of the model").unwrap();
    let mut models = ModelServiceClient::new(server.channel().await);
    let model = models
        .import_model(proto::ImportModelRequest {
            name: "tiny-imported".into(),
            source: tiny.display().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(model.path, "");
    assert!(model.files.iter().all(|f| f.name != "README.md"));
    assert!(model.files.iter().any(|f| f.name == "config.json"));
    // The stored copy is what the engine loads: the source can go.
    std::fs::remove_dir_all(&tiny).unwrap();
    assert!(chat_to_end(&mut models, "tiny-imported").await > 0);

    // One GGUF file (headers only: enough to store and describe it).
    let gguf = models
        .import_model(proto::ImportModelRequest {
            name: "qwen-gguf".into(),
            source: gguf_file(&root).display().to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(
        (gguf.format.as_str(), gguf.architecture.as_str(), gguf.files.len()),
        ("gguf", "qwen2", 1)
    );

    // Outside the roots: the registration's one refusal, under `source`.
    let outside = hf_dir(dir.path(), "llama");
    let err = models
        .import_model(proto::ImportModelRequest {
            name: "outside".into(),
            source: outside.display().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = err.get_error_details().bad_request().unwrap().field_violations[0].clone();
    assert_eq!(v.field, "source");
    assert!(v.description.contains("model roots"), "{v:?}");
    server.stop().await;
}

#[tokio::test]
async fn uploads_that_are_not_a_model_are_refused_naming_the_file_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let mut models = ModelServiceClient::new(server.channel().await);
    let hf = read_dir(&hf_dir(dir.path(), "llama"));
    let file = |name: &str| hf.iter().find(|(n, _)| n == name).unwrap().clone();
    let named = |name: &str, bytes: &[u8]| (name.to_string(), bytes.to_vec());
    let gguf = named("tiny.gguf", &std::fs::read(gguf_file(dir.path())).unwrap());
    let cases: Vec<(&str, Files, &str)> = vec![
        (
            "architecture",
            vec![
                named("config.json", br#"{"model_type": "gpt2"}"#),
                file("model.safetensors"),
                file("tokenizer.json"),
            ],
            "config.json: architecture \"gpt2\" is not supported",
        ),
        (
            "truncated weights",
            vec![
                file("config.json"),
                named("model.safetensors", &[1, 0, 0]),
                file("tokenizer.json"),
            ],
            "model.safetensors is not a safetensors file",
        ),
        (
            "no tokenizer",
            vec![file("config.json"), file("model.safetensors")],
            "the model has no tokenizer.json",
        ),
        (
            "not a model file",
            vec![file("config.json"), named("pytorch_model.bin", b"weights")],
            "\"pytorch_model.bin\" is not a model file",
        ),
        (
            "gguf and more",
            vec![file("config.json"), gguf.clone()],
            "a GGUF model is one .gguf file alone",
        ),
        ("no files", vec![], "no files"),
    ];
    for (case, files, says) in cases {
        let err = upload(&mut models, "bad", &files).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {err:?}");
        let v = err.get_error_details().bad_request().unwrap().field_violations[0].clone();
        assert_eq!(v.field, "files", "{case}");
        assert!(v.description.contains(says), "{case}: {}", v.description);
    }

    // A file whose chunks do not add up to its header.
    let mut short = messages("bad", std::slice::from_ref(&gguf), 1 << 20);
    if let Some(Payload::File(f)) = &mut short[1].payload {
        f.bytes += 10;
    }
    let err = models.upload_model(tokio_stream::iter(short)).await.unwrap_err();
    assert!(
        err.message().contains("tiny.gguf: ") && err.message().contains("where its header announced"),
        "{err:?}"
    );
    // Metadata first, and once.
    let mut no_metadata = messages("bad", std::slice::from_ref(&gguf), 1 << 20);
    no_metadata.remove(0);
    let err = models.upload_model(tokio_stream::iter(no_metadata)).await.unwrap_err();
    let v = err.get_error_details().bad_request().unwrap().field_violations[0].clone();
    assert_eq!(v.field, "metadata", "{err:?}");

    assert!(blob_files(&dir.path().join("data")).is_empty(), "nothing is stored");
    let listed = models
        .list_models(proto::ListModelsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.models.is_empty());

    // A name taken, and a caller who is not an admin.
    upload(&mut models, "taken", std::slice::from_ref(&gguf)).await.unwrap();
    let err = upload(&mut models, "taken", std::slice::from_ref(&gguf))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let mut admin = lathe::proto::admin_service_client::AdminServiceClient::new(server.channel().await);
    let secret = admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: "default".into(),
            role: proto::Role::Member as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut member = ModelServiceClient::new(server.channel_with(&secret).await);
    let err = upload(&mut member, "mine", std::slice::from_ref(&gguf))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    server.stop().await;
}

/// `lathe models upload` sends a directory's model files (and nothing
/// else), a chunk at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_models_upload_sends_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path()).await;
    let source = dir.path().join("client-side/hf-qwen2");
    let model = hf_dir(&dir.path().join("client-side"), "qwen2");
    std::fs::write(model.join("notes.txt"), "mine").unwrap();
    let addr = server.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
            .args(["--json", "models", "upload", source.to_str().unwrap(), "--name", "q"])
            .env("LATHE_ADDR", &addr)
            .env("LATHE_API_KEY", ADMIN_KEY)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "qwen2");
    let names: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["config.json", "model.safetensors", "tokenizer.json"]);
    server.stop().await;
}
