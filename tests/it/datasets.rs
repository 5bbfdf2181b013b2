//! DatasetService over real gRPC, against a real server on port 0.

use crate::common::*;
use lathe::proto::{self, DatasetPurpose, DatasetState};
use tonic::Code;
use tonic_types::StatusExt;

const SFT_TRAIN: &str = "banking77/banking77_train_sft.jsonl";
const LAST_CONTENT: &str = "/messages/-1/content";

#[tokio::test]
async fn banking77_upload_get_list_download_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let bytes = std::fs::read(fixture(SFT_TRAIN)).unwrap();

    let d = upload_bytes(
        &mut client,
        "banking77_train_sft.jsonl",
        DatasetPurpose::Sft,
        LAST_CONTENT,
        &bytes,
        7777,
    )
    .await
    .unwrap();
    assert_eq!(d.state, DatasetState::Ready as i32, "{:?}", d.validation);
    assert!(d.id.starts_with("ds_"));
    assert_eq!(d.bytes, bytes.len() as u64);
    assert_eq!(d.sha256, sha256_hex(&bytes));
    assert_eq!(d.metadata.get("source").map(String::as_str), Some("test"));
    let report = d.validation.clone().unwrap();
    assert_eq!(
        (report.total_rows, report.valid_rows, report.invalid_rows),
        (500, 500, 0)
    );
    assert!(report.errors.is_empty());
    let stats = d.stats.clone().unwrap();
    assert_eq!(stats.rows, 500);
    assert_eq!(stats.tokenizer, "o200k_base");
    let tokens = stats.tokens_per_example.unwrap();
    assert!(tokens.min > 20 && tokens.max < 200 && tokens.p50 >= tokens.min && tokens.p95 <= tokens.max);
    assert!(stats.trained_tokens_per_example.unwrap().total > 500);
    assert_eq!(stats.label_counts.values().sum::<u64>(), 500);
    assert!(stats.label_counts.len() > 60, "Banking77 has 77 intents");
    assert_eq!(stats.default_epochs, 3);
    assert_eq!(stats.estimated_trained_tokens, tokens.total * 3);

    let got = client
        .get_dataset(proto::GetDatasetRequest { id: d.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(got, d);

    let listed = client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.datasets, vec![d.clone()]);
    assert!(listed.next_page_token.is_empty());

    let (downloaded, end) = download_all(&mut client, &d.id).await;
    assert_eq!(downloaded, bytes);
    assert_eq!(
        (end.bytes, end.sha256.as_str()),
        (bytes.len() as u64, d.sha256.as_str())
    );
    server.stop().await;
}

#[tokio::test]
async fn broken_file_is_stored_failed_with_located_problems() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let d = upload_fixture(&mut client, "sft_broken.jsonl", DatasetPurpose::Sft, "").await;
    assert_eq!(d.state, DatasetState::Failed as i32);
    let report = d.validation.unwrap();
    assert_eq!(report.total_rows, 15, "16 lines, one blank");
    assert_eq!(report.valid_rows, 7);
    let find = |line: u64, code: &str| {
        report
            .errors
            .iter()
            .find(|p| p.line == line && p.code == code)
            .unwrap_or_else(|| panic!("no {code} on line {line}: {:#?}", report.errors))
    };
    let role = find(3, "unrecognized_role");
    assert_eq!(role.pointer, "/messages/2/role");
    assert_eq!(
        role.message,
        "role 'asistant' is not one of system, developer, user, assistant, tool"
    );
    let missing = find(5, "message_missing_key");
    assert_eq!(missing.pointer, "/messages/1");
    assert!(missing.message.contains("content"), "{}", missing.message);
    assert_eq!(find(6, "message_unrecognized_key").pointer, "/messages/1/metadata");
    find(7, "data_type");
    find(8, "invalid_json");
    find(10, "example_missing_assistant_message");
    assert_eq!(find(12, "invalid_value").pointer, "/messages/2/weight");
    find(14, "wrong_purpose");
    assert!(report.warnings.iter().any(|p| p.line == 11 && p.code == "blank_line"));

    // A FAILED dataset keeps its report, not its bytes: nothing may use it,
    // so they are not left on the server's disk.
    assert_no_blobs(dir.path());
    let again = client
        .get_dataset(proto::GetDatasetRequest { id: d.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(again.validation.unwrap().valid_rows, 7, "the report stays");
    let err = client
        .download_dataset(proto::DownloadDatasetRequest { id: d.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("failed validation"), "{}", err.message());
    // Nor split (nor, later, trained on).
    let err = client
        .split_dataset(proto::SplitDatasetRequest {
            id: d.id.clone(),
            validation_fraction: 0.2,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    server.stop().await;
}

#[tokio::test]
async fn a_failed_upload_of_bytes_a_ready_dataset_holds_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let ready = upload_fixture(&mut client, "sft_tools.jsonl", DatasetPurpose::Sft, "").await;
    assert_eq!(ready.state, DatasetState::Ready as i32);
    let failed = upload_fixture(&mut client, "sft_tools.jsonl", DatasetPurpose::Dpo, "").await;
    assert_eq!(failed.state, DatasetState::Failed as i32);
    assert_eq!(failed.sha256, ready.sha256);
    let (bytes, _) = download_all(&mut client, &ready.id).await;
    assert_eq!(bytes, std::fs::read(fixture("sft_tools.jsonl")).unwrap());
    // Deleting the READY one removes the bytes; the FAILED row holds none.
    client
        .delete_dataset(proto::DeleteDatasetRequest { id: ready.id.clone() })
        .await
        .unwrap();
    assert_no_blobs(dir.path());
    server.stop().await;
}

#[tokio::test]
async fn every_purpose_accepts_its_fixture_and_bom_crlf_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    for (name, purpose) in [
        ("sft_tools.jsonl", DatasetPurpose::Sft),
        ("dpo.jsonl", DatasetPurpose::Dpo),
        ("rft.jsonl", DatasetPurpose::Rft),
        ("eval_items.jsonl", DatasetPurpose::Eval),
        ("crlf_bom.jsonl", DatasetPurpose::Sft),
        ("banking77/banking77_test_items.jsonl", DatasetPurpose::Eval),
    ] {
        let d = upload_fixture(&mut client, name, purpose, "").await;
        let report = d.validation.clone().unwrap();
        assert_eq!(d.state, DatasetState::Ready as i32, "{name}: {:#?}", report.errors);
        assert!(report.total_rows >= 10, "{name}");
    }
    // The same rows under the wrong purpose are refused row by row.
    let d = upload_fixture(&mut client, "dpo.jsonl", DatasetPurpose::Sft, "").await;
    assert_eq!(d.state, DatasetState::Failed as i32);
    assert!(d.validation.unwrap().error_counts.contains_key("wrong_purpose"));
    server.stop().await;
}

#[tokio::test]
async fn hostile_bytes_get_reports_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.max_line_bytes = 64 << 10;
    let server = TestServer::start_with(config).await;
    let mut client = server.datasets().await;
    let ok = r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", Vec::new(), "empty_file"),
        (
            "utf8",
            [ok.as_bytes(), b"\n{\"messages\":\"\xff\xfe\"}\n"].concat(),
            "invalid_utf8",
        ),
        (
            "nested",
            [b"{\"messages\":".as_slice(), &vec![b'['; 10_000]].concat(),
            "nesting_too_deep",
        ),
        (
            "long",
            [ok.as_bytes(), b"\n", &vec![b' '; 70 << 10], b"\n"].concat(),
            "line_too_long",
        ),
        (
            "truncated",
            [ok.as_bytes(), b"\n{\"messages\":[{\"role\":\"us"].concat(),
            "truncated_last_line",
        ),
        ("scalar", b"42\n".to_vec(), "data_type"),
    ];
    for (name, bytes, code) in cases {
        let d = upload_bytes(&mut client, name, DatasetPurpose::Sft, "", &bytes, 1000)
            .await
            .unwrap_or_else(|s| panic!("{name}: {s}"));
        assert_eq!(d.state, DatasetState::Failed as i32, "{name}");
        let report = d.validation.unwrap();
        assert!(
            report.error_counts.contains_key(code),
            "{name}: expected {code}, got {:?}",
            report.error_counts
        );
    }
    // The server is still serving after all of that.
    client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn malformed_uploads_are_invalid_argument_with_field_details() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;

    // Bytes before metadata.
    let err = client
        .upload_dataset(tokio_stream::iter(vec![chunk_message(b"{}\n")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.get_error_details().bad_request().unwrap().field_violations[0].field,
        "metadata"
    );

    // Missing purpose and filename, both reported.
    let err = upload_bytes(&mut client, "", DatasetPurpose::Unspecified, "", b"{}\n", 10)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = err
        .get_error_details()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(fields, ["metadata.filename", "metadata.purpose"]);

    // Metadata twice.
    let msgs = vec![
        metadata_message("a.jsonl", DatasetPurpose::Eval, ""),
        metadata_message("a.jsonl", DatasetPurpose::Eval, ""),
    ];
    let err = client.upload_dataset(tokio_stream::iter(msgs)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = client
        .get_dataset(proto::GetDatasetRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .get_dataset(proto::GetDatasetRequest {
            id: "ds_00000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .list_datasets(proto::ListDatasetsRequest {
            page_token: "forged".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nothing was stored by any of it.
    let listed = client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().datasets.is_empty());
    server.stop().await;
    assert_no_blobs(dir.path());
}

#[tokio::test]
async fn size_limit_is_resource_exhausted_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.max_upload_bytes = 10_000;
    let server = TestServer::start_with(config).await;
    let mut client = server.datasets().await;
    let line = br#"{"item":"0123456789012345678901234567890123456789"}"#;
    let bytes: Vec<u8> = line.iter().chain(b"\n").copied().cycle().take(20_000).collect();
    let err = upload_bytes(&mut client, "big.jsonl", DatasetPurpose::Eval, "", &bytes, 1024)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(
        client
            .list_datasets(proto::ListDatasetsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .datasets
            .is_empty()
    );
    server.stop().await;
    assert_no_blobs(dir.path());
}

#[tokio::test]
async fn upload_cut_off_midway_leaves_no_dataset_and_no_blob() {
    let dir = tempfile::tempdir().unwrap();
    // One upload at a time, and small: a probe upload then tells whether
    // the first one is inside the server (holding the only upload slot).
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.max_concurrent_uploads = 1;
    config.max_upload_bytes = 1 << 20;
    let server = TestServer::start_with(config).await;
    let first = async || {
        let (tx, call) = start_upload(server.datasets().await, "cut.jsonl", DatasetPurpose::Eval).await;
        // Refused at once (see below), the call drops its end: no unwrap.
        let _ = tx.send(chunk_message(&vec![b'{'; 100_000])).await;
        let _ = tx.send(chunk_message(b"\"a\": 1")).await;
        (tx, call)
    };
    let (mut tx, mut call) = first().await;
    // Until the first upload holds the slot, a probe gets the slot and is
    // refused for its size, leaving nothing; once it does, the probe is
    // refused for want of a slot. Either way each try is one round trip.
    let mut probe = server.datasets().await;
    let oversized = vec![b'x'; (1 << 20) + 1];
    let mut tries = 0;
    loop {
        tries += 1;
        let err = upload_bytes(
            &mut probe,
            "probe.jsonl",
            DatasetPurpose::Eval,
            "",
            &oversized,
            64 << 10,
        )
        .await
        .expect_err("the probe is always refused");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        if err.message().contains("concurrent uploads") {
            break;
        }
        assert!(err.message().contains("size limit"), "{err:?}");
        assert!(tries < 10_000, "the first upload never reached the server");
        // A probe can hold the slot at the instant the first upload asks for
        // it (a loaded machine); then the first is refused: start it again.
        if call.is_finished() {
            let refused = call.await.unwrap().expect_err("the first upload cannot finish");
            assert!(refused.message().contains("concurrent uploads"), "{refused:?}");
            (tx, call) = first().await;
        }
    }
    // The server is midway through the first upload: the client vanishes.
    call.abort();
    let _ = call.await;
    drop(tx);

    let mut client = server.datasets().await;
    let listed = client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().datasets.is_empty());
    // The server dropped the handler when the client vanished; its clean-up
    // runs in the background, and stopping clears whatever it has not yet.
    server.stop().await;
    assert_no_blobs(dir.path());
}

/// When the grace period runs out, an upload still streaming is dropped
/// and leaves nothing behind: no dataset, no blob, nothing in staging, by
/// the time the server has stopped (not only after the next start).
#[tokio::test]
async fn upload_dropped_at_the_end_of_the_grace_period_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.shutdown_grace_secs = 0;
    let mut server = TestServer::start_with(config).await;
    // More than the server's 2 MiB stream window, one message at a time:
    // the last send returns only once the server has read from the upload,
    // so its blob writer (and staging file) exists.
    let (tx, call) = start_upload(server.datasets().await, "dropped.jsonl", DatasetPurpose::Eval).await;
    let line = b"{\"question\": \"how do I top up?\"}\n".repeat(8 << 10);
    for _ in 0..(6 << 20) / line.len() {
        tx.send(chunk_message(&line)).await.unwrap();
    }
    assert!(
        !files_under(&dir.path().join("blobs").join("staging")).is_empty(),
        "the upload is staged"
    );
    server.signal_stop();
    // A bound, so that an upload that is never dropped fails the test
    // instead of hanging it.
    let err = tokio::time::timeout(std::time::Duration::from_secs(60), call)
        .await
        .expect("the server dropped the upload")
        .unwrap()
        .expect_err("the upload was dropped");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    drop(tx);
    server.stop().await;
    assert_no_blobs(dir.path());
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let listed = client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap();
    assert!(listed.into_inner().datasets.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_upload_finish() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path()).await;
    let channel = server.channel().await;
    let bytes = std::fs::read(fixture(SFT_TRAIN)).unwrap();
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let client = lathe::proto::dataset_service_client::DatasetServiceClient::new(channel.clone());
    let (tx, call) = start_upload(client, "train.jsonl", DatasetPurpose::Sft).await;
    tx.send(chunk_message(first)).await.unwrap();
    // HTTP/2 streams on one connection are taken in order: once this later
    // request is answered, the server has accepted the upload.
    lathe::proto::dataset_service_client::DatasetServiceClient::new(channel)
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap();
    server.signal_stop();
    tx.send(chunk_message(rest)).await.unwrap();
    drop(tx);
    let d = call
        .await
        .unwrap()
        .expect("upload finishes during drain")
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(d.state, DatasetState::Ready as i32);
    server.stop().await;

    // And it is really there after a restart.
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let (downloaded, _) = download_all(&mut client, &d.id).await;
    assert_eq!(downloaded, bytes);
    server.stop().await;
}

#[tokio::test]
async fn pagination_walks_every_dataset_once_and_filters_by_purpose() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let purpose = if i % 2 == 0 {
            DatasetPurpose::Eval
        } else {
            DatasetPurpose::Sft
        };
        let name = if purpose == DatasetPurpose::Eval {
            "eval_items.jsonl"
        } else {
            "sft_tools.jsonl"
        };
        ids.push(upload_fixture(&mut client, name, purpose, "").await.id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_datasets(proto::ListDatasetsRequest {
                page_size: 3,
                page_token: token,
                purpose: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.datasets.len() <= 3);
        seen.extend(page.datasets.into_iter().map(|d| d.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");

    let evals = client
        .list_datasets(proto::ListDatasetsRequest {
            purpose: DatasetPurpose::Eval as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .datasets;
    assert_eq!(evals.len(), 4);
    let err = client
        .list_datasets(proto::ListDatasetsRequest {
            page_size: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn identical_content_shares_a_blob_until_the_last_delete() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let a = upload_fixture(&mut client, "eval_items.jsonl", DatasetPurpose::Eval, "").await;
    let b = upload_fixture(&mut client, "eval_items.jsonl", DatasetPurpose::Eval, "").await;
    assert_ne!(a.id, b.id);
    assert_eq!(a.sha256, b.sha256);
    let blobs = dir.path().join("blobs/blobs");
    assert_eq!(files_under(&blobs).len(), 1);

    let r = client
        .delete_dataset(proto::DeleteDatasetRequest { id: a.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(r.deleted);
    let err = client
        .get_dataset(proto::GetDatasetRequest { id: a.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .delete_dataset(proto::DeleteDatasetRequest { id: a.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // b still downloads intact.
    let (bytes, _) = download_all(&mut client, &b.id).await;
    assert_eq!(bytes, std::fs::read(fixture("eval_items.jsonl")).unwrap());
    client
        .delete_dataset(proto::DeleteDatasetRequest { id: b.id.clone() })
        .await
        .unwrap();
    assert!(files_under(&blobs).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn stratified_split_is_deterministic_and_keeps_label_proportions() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let d = upload_fixture(&mut client, SFT_TRAIN, DatasetPurpose::Sft, LAST_CONTENT).await;
    let split = |seed: u64| proto::SplitDatasetRequest {
        id: d.id.clone(),
        validation_fraction: 0.2,
        seed,
        stratify_by: LAST_CONTENT.into(),
    };
    let r = client.split_dataset(split(7)).await.unwrap().into_inner();
    let (train, valid) = (r.train.unwrap(), r.validation.unwrap());
    for side in [&train, &valid] {
        assert_eq!(side.state, DatasetState::Ready as i32);
        let lineage = side.lineage.clone().unwrap();
        assert_eq!(lineage.source_dataset_id, d.id);
        assert_eq!(lineage.stratify_by, LAST_CONTENT);
    }
    let (tr, va) = (
        train.validation.clone().unwrap().total_rows,
        valid.validation.clone().unwrap().total_rows,
    );
    assert_eq!(tr + va, 500);
    assert!((90..=110).contains(&va), "about a fifth in validation: {va}");

    // Per label, validation gets round(n × 0.2) rows.
    let source_counts = d.stats.clone().unwrap().label_counts;
    let valid_counts = valid.stats.clone().unwrap().label_counts;
    for (label, n) in &source_counts {
        let expected = ((*n as f64) * 0.2).round() as u64;
        assert_eq!(valid_counts.get(label).copied().unwrap_or(0), expected, "label {label}");
    }

    // Together the two sides are exactly the source rows.
    let (source, _) = download_all(&mut client, &d.id).await;
    let (t, _) = download_all(&mut client, &train.id).await;
    let (v, _) = download_all(&mut client, &valid.id).await;
    let mut rows: Vec<&[u8]> = t
        .split(|b| *b == b'\n')
        .chain(v.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
        .collect();
    let mut expected: Vec<&[u8]> = source.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    rows.sort();
    expected.sort();
    assert_eq!(rows, expected);

    // Same seed, same split; another seed, another split.
    let again = client.split_dataset(split(7)).await.unwrap().into_inner();
    assert_eq!(again.validation.unwrap().sha256, valid.sha256);
    let other = client.split_dataset(split(8)).await.unwrap().into_inner();
    assert_ne!(other.validation.unwrap().sha256, valid.sha256);

    for fraction in [0.0, 1.0, f64::NAN] {
        let err = client
            .split_dataset(proto::SplitDatasetRequest {
                id: d.id.clone(),
                validation_fraction: fraction,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.get_error_details().bad_request().unwrap().field_violations[0].field,
            "validation_fraction"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn restart_sweeps_leftovers_of_a_killed_upload() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    let kept = upload_fixture(&mut client, "eval_items.jsonl", DatasetPurpose::Eval, "").await;
    server.stop().await;

    // What a kill -9 can leave: a half-written staging file, and a blob
    // committed just before its row would have been inserted.
    let staging = dir.path().join("blobs/staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::write(staging.join("up_0000#1"), b"partial").unwrap();
    let orphan = dir.path().join(format!("blobs/blobs/sha256/ab/{}", "ab".repeat(32)));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"orphan").unwrap();

    let server = TestServer::start(dir.path()).await;
    let mut client = server.datasets().await;
    // Recovery runs before the first request is served.
    client
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap();
    assert!(files_under(&staging).is_empty());
    assert!(!orphan.exists());
    let (bytes, _) = download_all(&mut client, &kept.id).await;
    assert_eq!(sha256_hex(&bytes), kept.sha256);
    server.stop().await;
}

// The fuzz target's property (`fuzz/check_line.rs`) on every fixture line
// and on random mutations of them, so CI compiles and runs what
// `cargo fuzz run validate_line` checks.
#[path = "../../fuzz/check_line.rs"]
mod check_line;

#[test]
fn fuzz_property_holds_on_fixture_lines_and_their_mutations() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut lines = Vec::new();
    for name in [
        "sft_broken.jsonl",
        "sft_tools.jsonl",
        "dpo.jsonl",
        "rft.jsonl",
        "eval_items.jsonl",
        "crlf_bom.jsonl",
    ] {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        lines.extend(bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec));
    }
    assert!(lines.len() > 30);
    let mut rng = StdRng::seed_from_u64(2);
    for line in &lines {
        for sel in 0..8u8 {
            let mut input = vec![sel.wrapping_mul(37)];
            input.extend_from_slice(line);
            check_line::check(&input);
        }
        for _ in 0..20 {
            let mut input = vec![rng.random::<u8>()];
            input.extend_from_slice(line);
            for _ in 0..rng.random_range(1..4) {
                if input.len() > 1 {
                    let at = rng.random_range(1..input.len());
                    match rng.random_range(0..3) {
                        0 => input[at] = rng.random(),
                        1 => input.truncate(at),
                        _ => {
                            let copy = input[at..].to_vec();
                            input.extend_from_slice(&copy);
                        }
                    }
                }
            }
            check_line::check(&input);
        }
    }
    check_line::check(&[]);
}
