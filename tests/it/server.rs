//! The server's surface: health, reflection, bad input on every service,
//! and the CLI talking to it.

use crate::common::*;
use lathe::proto;
use tonic::Code;

#[tokio::test]
async fn health_reports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    // The server as a whole, and each service by its full name.
    for service in [
        "",
        "lathe.v1.DatasetService",
        "lathe.v1.FineTuningService",
        "lathe.v1.ModelService",
        "lathe.v1.GraderService",
        "lathe.v1.EvalService",
    ] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e:?}"))
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "lathe.v1.NoSuchService".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "lathe.v1.DatasetService",
        "lathe.v1.FineTuningService",
        "lathe.v1.ModelService",
        "lathe.v1.GraderService",
        "lathe.v1.EvalService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn empty_requests_are_bad_input_on_chat_and_evals() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let channel = server.channel().await;
    // Chat is served by the local engine: an empty request names no model.
    let err = proto::model_service_client::ModelServiceClient::new(channel.clone())
        .chat(proto::ChatRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // EvalService is built: an empty id is bad input, not a missing method.
    let err = proto::eval_service_client::EvalServiceClient::new(channel)
        .get_eval_run(proto::GetEvalRunRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uploads_lists_splits_downloads_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let addr = server.url();
    let file = fixture("banking77/banking77_train_sft.jsonl")
        .to_str()
        .unwrap()
        .to_string();
    let out_path = dir.path().join("copy.jsonl");
    let out_str = out_path.to_str().unwrap().to_string();
    let addr2 = addr.clone();
    let (upload, list, split, download, broken) = tokio::task::spawn_blocking(move || {
        let upload = lathe(
            &addr2,
            &[
                "--json",
                "datasets",
                "upload",
                &file,
                "--purpose",
                "sft",
                "--label-field",
                "/messages/-1/content",
                "--metadata",
                "team=risk",
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&upload.stdout).expect("upload json");
        let id = v["id"].as_str().unwrap().to_string();
        let list = lathe(&addr2, &["datasets", "list"]);
        let split = lathe(
            &addr2,
            &[
                "--json",
                "datasets",
                "split",
                &id,
                "--validation-fraction",
                "0.1",
                "--seed",
                "3",
            ],
        );
        let download = lathe(&addr2, &["datasets", "download", &id, "-o", &out_str]);
        let broken = lathe(
            &addr2,
            &[
                "datasets",
                "upload",
                fixture("sft_broken.jsonl").to_str().unwrap(),
                "--purpose",
                "sft",
            ],
        );
        (upload, list, split, download, broken)
    })
    .await
    .unwrap();

    assert!(upload.status.success(), "{}", String::from_utf8_lossy(&upload.stderr));
    let v: serde_json::Value = serde_json::from_slice(&upload.stdout).unwrap();
    assert_eq!(v["state"], "ready");
    assert_eq!(v["purpose"], "sft");
    assert_eq!(v["metadata"]["team"], "risk");
    assert_eq!(v["validation"]["valid_rows"], 500);
    let id = v["id"].as_str().unwrap();

    let list = String::from_utf8(list.stdout).unwrap();
    assert!(list.contains(id) && list.contains("READY"), "{list}");

    assert!(split.status.success());
    let s: serde_json::Value = serde_json::from_slice(&split.stdout).unwrap();
    assert_eq!(s["validation"]["validation"]["total_rows"], 50);
    assert_eq!(s["train"]["lineage"]["source_dataset_id"], id);

    assert!(
        download.status.success(),
        "{}",
        String::from_utf8_lossy(&download.stderr)
    );
    assert_eq!(
        std::fs::read(&out_path).unwrap(),
        std::fs::read(fixture("banking77/banking77_train_sft.jsonl")).unwrap()
    );

    // A file that fails validation is stored, shown, and exits with 2.
    assert_eq!(broken.status.code(), Some(2));
    let text = String::from_utf8(broken.stdout).unwrap();
    assert!(
        text.contains("FAILED") && text.contains("unrecognized_role") && text.contains("/messages/2/role"),
        "{text}"
    );

    let addr3 = addr.clone();
    let id2 = id.to_string();
    let (delete, get) = tokio::task::spawn_blocking(move || {
        (
            lathe(&addr3, &["datasets", "delete", &id2]),
            lathe(&addr3, &["datasets", "get", &id2]),
        )
    })
    .await
    .unwrap();
    assert!(delete.status.success());
    assert_eq!(get.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&get.stderr).contains("not found"));
    server.stop().await;
}

/// The CLI writes UploadDataset's wire format itself (one read per chunk,
/// no re-encoding): a file of several chunks arrives byte for byte, and the
/// server's refusals, in the trailers or before any chunk is read, reach the
/// user with their field details.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uploads_many_chunks_exactly_and_reports_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path().join("data"));
    config.max_upload_bytes = 600_000;
    let server = TestServer::start_with(config).await;
    let addr = server.url();

    // About 1 MB: four chunks of 256 KiB. Rows differ, so none is a duplicate.
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 1_000_000 {
        text.push_str(&format!(
            "{{\"messages\":[{{\"role\":\"user\",\"content\":\"question {i}: how do I top up?\"}},\
             {{\"role\":\"assistant\",\"content\":\"answer {i}: use the app.\"}}]}}\n"
        ));
        i += 1;
    }
    let rows = i;
    let small = dir.path().join("small.jsonl");
    let large = dir.path().join("large.jsonl");
    let cut = text[..500_000].rfind('\n').unwrap() + 1;
    std::fs::write(&small, &text[..cut]).unwrap();
    std::fs::write(&large, &text).unwrap();
    let small_rows = text[..cut].lines().count();
    let (small_s, large_s) = (small.to_str().unwrap().to_string(), large.to_str().unwrap().to_string());

    let addr2 = addr.clone();
    let (ok, too_large, bad_meta) = tokio::task::spawn_blocking(move || {
        let ok = lathe(&addr2, &["--json", "datasets", "upload", &small_s, "--purpose", "sft"]);
        let too_large = lathe(&addr2, &["datasets", "upload", &large_s, "--purpose", "sft"]);
        let mut args = vec!["datasets", "upload", small_s.as_str(), "--purpose", "sft"];
        let pairs: Vec<String> = (0..17).map(|k| format!("k{k}=v")).collect();
        for pair in &pairs {
            args.extend(["--metadata", pair.as_str()]);
        }
        let bad_meta = lathe(&addr2, &args);
        (ok, too_large, bad_meta)
    })
    .await
    .unwrap();

    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(cut as u64));
    assert_eq!(v["sha256"], sha256_hex(&text.as_bytes()[..cut]));
    assert_eq!(v["validation"]["valid_rows"].as_u64(), Some(small_rows as u64));
    assert!(rows > small_rows);

    assert_eq!(too_large.status.code(), Some(1));
    let err = String::from_utf8_lossy(&too_large.stderr);
    assert!(err.contains("size limit") && err.contains("ResourceExhausted"), "{err}");

    assert_eq!(bad_meta.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad_meta.stderr);
    assert!(
        err.contains("InvalidArgument") && err.contains("metadata.metadata: at most 16 key-value pairs"),
        "{err}"
    );

    // Only the one good upload is stored; the refused ones left nothing.
    let mut client = server.datasets().await;
    let list = client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.datasets.len(), 1);
    assert_eq!(list.datasets[0].sha256, v["sha256"].as_str().unwrap());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_logs_json_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-json", "--data-dir"])
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (addr, lines) = logged_address(&mut child).await;
    let mut client = lathe::proto::dataset_service_client::DatasetServiceClient::new(
        connect_local(&format!("http://{addr}"), dir.path()).await,
    );
    client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap();

    let rest = stop_cleanly(child, lines, libc::SIGTERM).await;
    assert!(
        rest.iter()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
}

/// Every setting also comes from the environment, and ctrl-c (SIGINT)
/// stops the server as cleanly as SIGTERM.
#[tokio::test]
async fn serve_binary_takes_its_settings_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere.db");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
        .arg("serve")
        .current_dir(dir.path())
        .env("LATHE_LISTEN", "127.0.0.1:0")
        .env("LATHE_DATA_DIR", dir.path().join("data"))
        .env("LATHE_DATABASE_URL", format!("sqlite://{}", elsewhere.display()))
        .env("LATHE_MAX_UPLOAD_BYTES", "1000")
        .env("LATHE_LOG_JSON", "true")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (addr, lines) = logged_address(&mut child).await;
    assert!(!addr.ends_with(":0"), "{addr}");
    let mut client = lathe::proto::dataset_service_client::DatasetServiceClient::new(
        connect_local(&format!("http://{addr}"), &dir.path().join("data")).await,
    );
    let err = upload_bytes(
        &mut client,
        "big.jsonl",
        proto::DatasetPurpose::Eval,
        "",
        &[b'x'; 2000],
        500,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("1000 bytes"), "{err:?}");
    assert!(elsewhere.exists(), "the database is where LATHE_DATABASE_URL says");
    assert!(dir.path().join("data").join("blobs").is_dir());
    assert!(
        !dir.path().join("lathe-data").exists(),
        "the default data dir was not used"
    );

    stop_cleanly(child, lines, libc::SIGINT).await;
}

/// A GPU asked of a build without CUDA stops the start with a message naming
/// the setting, whether it came as the flag or from LATHE_DEVICE.
#[cfg(not(feature = "cuda"))]
#[test]
fn serve_binary_refuses_cuda_in_a_build_without_it() {
    let dir = tempfile::tempdir().unwrap();
    for (args, env) in [
        (&["serve", "--device", "cuda"][..], None),
        (&["serve"][..], Some("cuda:1")),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"));
        cmd.args(args)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"));
        if let Some(device) = env {
            cmd.env("LATHE_DEVICE", device);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("--device") && stderr.contains("built without CUDA support"),
            "{args:?} {env:?}: {stderr}"
        );
    }
    assert!(!dir.path().join("data").exists(), "nothing was started");
}

/// Reads a `serve --log-json` child's log until the line that names the
/// address it listens on; returns that address and the rest of the log.
async fn logged_address(
    child: &mut std::process::Child,
) -> (String, std::io::Lines<std::io::BufReader<std::process::ChildStderr>>) {
    use std::io::{BufRead, BufReader};
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::task::spawn_blocking(move || {
        for line in lines.by_ref() {
            let line = line.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            if let Some(addr) = v.get("addr").and_then(|a| a.as_str()) {
                return (addr.to_string(), lines);
            }
        }
        panic!("server never logged its address");
    })
    .await
    .unwrap()
}

/// Sends `signal` to a serve child; checks that it exits successfully after
/// logging that it is shutting down, and returns the rest of its log.
async fn stop_cleanly(
    mut child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    signal: libc::c_int,
) -> Vec<String> {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
    rest
}

#[test]
fn serve_help_lists_the_server_flags_only() {
    let help = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
            .args(args)
            .output()
            .expect("run lathe");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let serve = help(&["serve", "--help"]);
    assert!(serve.contains("--listen") && serve.contains("--data-dir"), "{serve}");
    assert!(!serve.contains("--addr") && !serve.contains("--json"), "{serve}");
    let client = help(&["datasets", "list", "--help"]);
    assert!(client.contains("--addr") && client.contains("--json"), "{client}");
    assert!(!client.contains("--listen"), "{client}");
}

/// A request nested 10,000 levels deep (INVALID_ARGUMENT, from the codec)
/// and one over the message size limit are refused clearly, and the server
/// goes on serving.
#[test]
fn deeply_nested_and_oversized_requests_are_refused() {
    use prost_types::{ListValue, Struct, Value, value::Kind};
    // Building, encoding and dropping a deep value recurses on this side: a
    // thread with room for it, and a runtime of its own. 1,000 levels is ten
    // times the decoder's limit; prost's encoder measures each level's
    // children again, so the cost grows with depth squared (10,000 levels
    // held this runtime's thread for ~30 s in a debug build, long enough for
    // the server's database pool to time out opening).
    let run = std::thread::Builder::new().stack_size(512 << 20).spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let server = TestServer::start(dir.path()).await;
            let mut graders = proto::grader_service_client::GraderServiceClient::new(server.channel().await);
            let string = |s: String| Value {
                kind: Some(Kind::StringValue(s)),
            };
            let grader = |extra: Value| {
                Some(Struct {
                    fields: [
                        ("type".to_string(), string("string_check".into())),
                        ("extra".to_string(), extra),
                    ]
                    .into(),
                })
            };
            let mut deep = string("x".into());
            for _ in 0..1_000 {
                deep = Value {
                    kind: Some(Kind::ListValue(ListValue { values: vec![deep] })),
                };
            }
            let nested = graders
                .validate_grader(proto::ValidateGraderRequest { grader: grader(deep) })
                .await
                .unwrap_err();
            let oversized = graders
                .validate_grader(proto::ValidateGraderRequest {
                    grader: grader(string("x".repeat(5 << 20))),
                })
                .await
                .unwrap_err();
            // Still serving: a plain invalid grader gets its field violation.
            let after = graders
                .validate_grader(proto::ValidateGraderRequest {
                    grader: grader(string("x".into())),
                })
                .await
                .unwrap_err();
            server.stop().await;
            (nested, oversized, after)
        })
    });
    let (nested, oversized, after) = run.unwrap().join().unwrap();
    assert_eq!(nested.code(), Code::InvalidArgument, "{nested:?}");
    assert!(nested.message().contains("100 levels"), "{}", nested.message());
    // tonic's own answer to a message over its 4 MiB limit.
    assert_eq!(oversized.code(), Code::OutOfRange, "{oversized:?}");
    assert!(oversized.message().contains("too large"), "{}", oversized.message());
    assert_eq!(after.code(), Code::InvalidArgument, "{after:?}");
}

/// Strings a client sends are bounded, each refused on its own field.
#[tokio::test]
async fn oversized_strings_are_refused_on_their_fields() {
    use lathe::proto::json::struct_from_json;
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let channel = server.channel().await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        status.get_error_details().bad_request().unwrap().field_violations[0]
            .field
            .clone()
    };
    let mut evals = lathe::proto::eval_service_client::EvalServiceClient::new(channel.clone());
    let status = evals
        .create_eval(proto::CreateEvalRequest {
            name: "e".into(),
            item_schema: None,
            testing_criteria: vec![proto::TestingCriterion {
                grader: Some(struct_from_json(&serde_json::json!({
                    "type": "string_check", "name": "x", "operation": "eq",
                    "input": "{{ sample.output_text }}", "reference": "a"
                }))),
                pass_threshold: None,
                name: String::new(),
            }],
            metadata: [("team".to_string(), "x".repeat(513))].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field(status), "metadata[team]");
    let mut datasets = server.datasets().await;
    let d = upload_fixture(&mut datasets, "sft_tools.jsonl", proto::DatasetPurpose::Sft, "").await;
    let status = datasets
        .split_dataset(proto::SplitDatasetRequest {
            id: d.id.clone(),
            validation_fraction: 0.5,
            seed: 1,
            stratify_by: format!("/{}", "a".repeat(300)),
        })
        .await
        .unwrap_err();
    assert_eq!(field(status), "stratify_by");
    let mut jobs = lathe::proto::fine_tuning_service_client::FineTuningServiceClient::new(channel);
    let status = jobs
        .create_job(proto::CreateJobRequest {
            base_model: "m".into(),
            training_dataset_id: d.id,
            webhook: Some(proto::Webhook {
                url: format!("https://example.com/{}", "a".repeat(3000)),
                secret: String::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let details = status.get_error_details();
    let fields: Vec<_> = details
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert!(fields.contains(&"webhook.url".to_string()), "{fields:?}");
    server.stop().await;
}
