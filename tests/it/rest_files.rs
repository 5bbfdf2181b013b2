//! `/v1/files` and `/v1/uploads` over HTTP, against a real server on port
//! 0: multipart uploads streamed through validation, lists paged with
//! `after`, content, deletion, OpenAI errors for bad input with nothing
//! stored, the Uploads API (parts, complete in a named order, cancel,
//! restarts, projects), and files answering what `GetDataset` answers.

use std::path::Path;

use crate::common::*;
use crate::rest::{http, openai_error};
use lathe::config::ServeConfig;
use lathe::proto::{self, DatasetPurpose, DatasetState};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

const SFT: &str = "banking77/banking77_train_sft.jsonl";

fn form(purpose: &str, filename: &str, bytes: Vec<u8>) -> Form {
    Form::new()
        .text("purpose", purpose.to_string())
        .part("file", Part::bytes(bytes).file_name(filename.to_string()))
}

async fn post_form(url: &str, key: &str, form: Form) -> reqwest::Response {
    http()
        .post(format!("{url}/v1/files"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .await
        .expect("POST /v1/files")
}

/// Uploads `bytes` as a file and returns the file object.
async fn upload_file(server: &TestServer, purpose: &str, filename: &str, bytes: Vec<u8>) -> Value {
    let response = post_form(&server.url(), server.admin_key(), form(purpose, filename, bytes)).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn get(server: &TestServer, path: &str) -> reqwest::Response {
    get_with(server, server.admin_key(), path).await
}

async fn get_with(server: &TestServer, key: &str, path: &str) -> reqwest::Response {
    http()
        .get(format!("{}/v1/{path}", server.url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn get_json(server: &TestServer, path: &str) -> Value {
    let response = get(server, path).await;
    assert_eq!(response.status(), 200, "GET {path}");
    response.json().await.unwrap()
}

async fn post_json(server: &TestServer, key: &str, path: &str, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}/v1/{path}", server.url()))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

/// Ten valid SFT rows, distinct by `tag`.
fn sft_rows(tag: &str, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| {
            format!(
                "{}\n",
                json!({"messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": format!("{tag} question {i}")},
                    {"role": "assistant", "content": format!("{tag} answer {i}")}
                ]})
            )
        })
        .collect::<String>()
        .into_bytes()
}

async fn assert_no_files(server: &TestServer, data: &Path) {
    let list = get_json(server, "files").await;
    assert_eq!(list["data"], json!([]), "no file is listed");
    assert_eq!(list["has_more"], false);
    assert_no_blobs(data);
}

#[tokio::test]
async fn a_file_is_uploaded_listed_read_and_deleted() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let bytes = std::fs::read(fixture(SFT)).unwrap();
    let file = upload_file(&server, "fine-tune", "train.jsonl", bytes.clone()).await;
    let id = file["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ds_"), "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], bytes.len() as u64);
    assert_eq!(file["filename"], "train.jsonl");
    assert_eq!(file["purpose"], "fine-tune");
    assert_eq!(file["status"], "processed");
    assert_eq!(file["status_details"], Value::Null);
    assert_eq!(file["expires_at"], Value::Null);
    assert_eq!(file["lathe"]["format"], "sft");
    assert_eq!(file["lathe"]["rows"], 500);
    assert_eq!(file["lathe"]["valid_rows"], 500);
    assert_eq!(file["lathe"]["sha256"], sha256_hex(&bytes));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (file["created_at"].as_i64().unwrap() - now).abs() < 60,
        "seconds, not ms: {file}"
    );

    assert_eq!(get_json(&server, &format!("files/{id}")).await, file);
    let list = get_json(&server, "files").await;
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"], json!([file.clone()]));
    assert_eq!(list["has_more"], false);
    assert_eq!((&list["first_id"], &list["last_id"]), (&json!(id), &json!(id)));

    let content = get(&server, &format!("files/{id}/content")).await;
    assert_eq!(content.status(), 200);
    assert_eq!(content.headers()["content-type"], "application/octet-stream");
    assert_eq!(content.headers()["content-length"], bytes.len().to_string().as_str());
    assert_eq!(content.bytes().await.unwrap().as_ref(), bytes.as_slice());

    let deleted: Value = http()
        .delete(format!("{}/v1/files/{id}", server.url()))
        .bearer_auth(server.admin_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(deleted, json!({"id": id, "object": "file", "deleted": true}));
    let gone = get(&server, &format!("files/{id}")).await;
    assert_eq!(openai_error(gone, 404).await["code"], "not_found");
    let gone = get(&server, &format!("files/{id}/content")).await;
    openai_error(gone, 404).await;
    assert_no_files(&server, data.path()).await;
    server.stop().await;
}

/// The file object and GetDataset describe the same record: id, size,
/// creation time (seconds), name, purpose and state; a file the gRPC door
/// kept as FAILED is a file with status `error`.
#[tokio::test]
async fn a_file_is_what_get_dataset_answers() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let mut grpc = server.datasets().await;
    let dpo = std::fs::read(fixture("dpo.jsonl")).unwrap();
    let rest = upload_file(&server, "fine-tune", "prefs.jsonl", dpo).await;
    let broken = upload_fixture(&mut grpc, "sft_broken.jsonl", DatasetPurpose::Sft, "").await;

    for file in [rest, get_json(&server, &format!("files/{}", broken.id)).await] {
        let id = file["id"].as_str().unwrap();
        let d = grpc
            .get_dataset(proto::GetDatasetRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .dataset
            .unwrap();
        assert_eq!(d.id, id);
        assert_eq!(file["bytes"], d.bytes);
        assert_eq!(file["created_at"], d.created_at.unwrap().seconds);
        assert_eq!(file["filename"], d.filename.as_str());
        assert_eq!(file["lathe"]["sha256"], d.sha256.as_str());
        let (format, purpose) = match DatasetPurpose::try_from(d.purpose).unwrap() {
            DatasetPurpose::Sft => ("sft", "fine-tune"),
            DatasetPurpose::Dpo => ("dpo", "fine-tune"),
            DatasetPurpose::Rft => ("rft", "fine-tune"),
            DatasetPurpose::Eval => ("eval", "evals"),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (&file["lathe"]["format"], &file["purpose"]),
            (&json!(format), &json!(purpose))
        );
        let report = d.validation.unwrap();
        assert_eq!(file["lathe"]["rows"], report.total_rows);
        assert_eq!(file["lathe"]["valid_rows"], report.valid_rows);
        match DatasetState::try_from(d.state).unwrap() {
            DatasetState::Ready => assert_eq!(file["status"], "processed"),
            DatasetState::Failed => {
                assert_eq!(file["status"], "error");
                let details = file["status_details"].as_str().unwrap();
                assert!(details.contains("line 3"), "{details}");
            }
            other => panic!("{other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn fine_tune_files_take_their_format_from_the_first_row() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    for (fixture_name, purpose, format) in [
        ("dpo.jsonl", "fine-tune", "dpo"),
        ("rft.jsonl", "fine-tune", "rft"),
        ("sft_tools.jsonl", "fine-tune", "sft"),
        ("eval_items.jsonl", "evals", "eval"),
        ("sft_tools.jsonl", "eval", "eval"),
    ] {
        let bytes = std::fs::read(fixture(fixture_name)).unwrap();
        let file = upload_file(&server, purpose, fixture_name, bytes).await;
        assert_eq!(file["lathe"]["format"], format, "{fixture_name}: {file}");
        assert_eq!(file["status"], "processed", "{file}");
    }
    let evals = get_json(&server, "files?purpose=evals").await;
    assert_eq!(evals["data"].as_array().unwrap().len(), 2);
    let tuning = get_json(&server, "files?purpose=fine-tune").await;
    assert_eq!(tuning["data"].as_array().unwrap().len(), 3);
    let batch = get_json(&server, "files?purpose=batch").await;
    assert_eq!((&batch["data"], &batch["has_more"]), (&json!([]), &json!(false)));
    server.stop().await;
}

#[tokio::test]
async fn files_page_with_after_and_limit_both_ways() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let mut made = Vec::new();
    for i in 0..5 {
        let file = upload_file(
            &server,
            "fine-tune",
            &format!("f{i}.jsonl"),
            sft_rows(&format!("f{i}"), 10),
        )
        .await;
        made.push(file["id"].as_str().unwrap().to_string());
    }
    for (order, expected) in [
        ("desc", made.iter().rev().cloned().collect::<Vec<_>>()),
        ("asc", made.clone()),
    ] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let path = match &after {
                Some(a) => format!("files?limit=2&order={order}&after={a}"),
                None => format!("files?limit=2&order={order}"),
            };
            let page = get_json(&server, &path).await;
            pages += 1;
            let page_ids = ids(&page);
            assert_eq!(page["first_id"], json!(page_ids.first()));
            assert_eq!(page["last_id"], json!(page_ids.last()));
            seen.extend(page_ids);
            if page["has_more"] == false {
                break;
            }
            assert_eq!(page["has_more"], true);
            after = page["last_id"].as_str().map(str::to_string);
        }
        assert_eq!(seen, expected, "{order}");
        assert_eq!(pages, 3, "2 + 2 + 1");
    }
    assert_eq!(
        ids(&get_json(&server, "files").await),
        made.iter().rev().cloned().collect::<Vec<_>>()
    );
    let first_page = get_json(&server, "files?limit=5").await;
    assert_eq!(first_page["has_more"], false, "exactly a page left");

    for (query, param) in [
        ("files?limit=0", "limit"),
        ("files?limit=10001", "limit"),
        ("files?order=sideways", "order"),
        ("files?purpose=nonsense", "purpose"),
        ("files?after=ds_00000000000000000000000000", "after"),
        ("files?after=file-abc", "after"),
        ("files?colour=red", "colour"),
    ] {
        let error = openai_error(get(&server, query).await, 400).await;
        assert_eq!(error["param"], param, "{query}: {error}");
    }
    server.stop().await;
}

/// Each bad upload is a 4xx OpenAI error, and none leaves a record or a blob.
#[tokio::test]
async fn bad_uploads_are_openai_errors_and_store_nothing() {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::embedded(data.path());
    config.max_upload_bytes = 256 << 10;
    let server = TestServer::start_with(config).await;
    let (url, key) = (server.url(), server.admin_key().to_string());

    // Not JSONL: refused with its first problems and their lines.
    let not_jsonl = b"name,answer\nparis,yes\n".to_vec();
    let error = openai_error(
        post_form(&url, &key, form("fine-tune", "table.csv", not_jsonl)).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "file");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("line 1") && message.contains("invalid_json"),
        "{message}"
    );
    assert!(message.contains("nothing was stored"), "{message}");
    // Valid JSON, wrong rows: the problem is named where it is.
    let mut rows = sft_rows("ok", 3);
    rows.extend_from_slice(b"{\"messages\":[{\"role\":\"asistant\",\"content\":\"x\"}]}\n");
    let error = openai_error(post_form(&url, &key, form("fine-tune", "t.jsonl", rows)).await, 400).await;
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("line 4") && message.contains("unrecognized_role"),
        "{message}"
    );
    // Empty.
    let error = openai_error(
        post_form(&url, &key, form("fine-tune", "e.jsonl", Vec::new())).await,
        400,
    )
    .await;
    assert_eq!(error["param"], "file");

    // Over the one-upload limit (several times over, so the server reads
    // on after refusing): 413, pointing at the Uploads API.
    let big = sft_rows("big", 20_000);
    assert!(big.len() > 4 * (256 << 10));
    let error = openai_error(post_form(&url, &key, form("fine-tune", "big.jsonl", big)).await, 413).await;
    assert!(error["message"].as_str().unwrap().contains("/v1/uploads"), "{error}");

    // Not multipart.
    let response = http()
        .post(format!("{url}/v1/files"))
        .bearer_auth(&key)
        .json(&json!({"purpose": "fine-tune", "file": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(response, 415).await["code"], "unsupported_media_type");
    let response = http()
        .post(format!("{url}/v1/files"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    openai_error(response, 415).await;

    // The file before the purpose; no purpose; another product's purpose;
    // an unknown purpose; no file; a field Lathe does not take, before or
    // after the file; expires_after.
    let file_first = Form::new()
        .part("file", Part::bytes(sft_rows("a", 10)).file_name("a.jsonl"))
        .text("purpose", "fine-tune");
    let cases = [
        (file_first, "purpose"),
        (
            Form::new().part("file", Part::bytes(sft_rows("a", 10)).file_name("a.jsonl")),
            "purpose",
        ),
        (form("batch", "a.jsonl", sft_rows("a", 10)), "purpose"),
        (form("assistants", "a.jsonl", sft_rows("a", 10)), "purpose"),
        (form("fine-tuning", "a.jsonl", sft_rows("a", 10)), "purpose"),
        (Form::new().text("purpose", "fine-tune"), "file"),
        (
            Form::new()
                .text("purpose", "fine-tune")
                .part("file", Part::bytes(sft_rows("a", 10))),
            "file",
        ),
        (
            Form::new()
                .text("purpose", "fine-tune")
                .text("colour", "red")
                .part("file", Part::bytes(sft_rows("a", 10)).file_name("a.jsonl")),
            "colour",
        ),
        (
            form("fine-tune", "a.jsonl", sft_rows("a", 10)).text("colour", "red"),
            "colour",
        ),
        (
            Form::new()
                .text("purpose", "fine-tune")
                .text("expires_after[anchor]", "created_at")
                .text("expires_after[seconds]", "3600")
                .part("file", Part::bytes(sft_rows("a", 10)).file_name("a.jsonl")),
            "expires_after",
        ),
    ];
    for (form, param) in cases {
        let error = openai_error(post_form(&url, &key, form).await, 400).await;
        assert_eq!(error["param"], param, "{error}");
    }
    assert_no_files(&server, data.path()).await;

    // The server still takes a good file after all that.
    let response = post_form(&url, &key, form("fine-tune", "good.jsonl", sft_rows("good", 10))).await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}

/// Creates an upload of `bytes` and returns its id.
async fn create_upload(server: &TestServer, key: &str, bytes: usize) -> String {
    let response = post_json(
        server,
        key,
        "uploads",
        json!({"filename": "big.jsonl", "purpose": "fine-tune", "bytes": bytes, "mime_type": "text/jsonl"}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let upload: Value = response.json().await.unwrap();
    assert_eq!(upload["object"], "upload");
    assert_eq!(upload["status"], "pending");
    assert_eq!(upload["bytes"], bytes);
    assert_eq!(upload["filename"], "big.jsonl");
    assert_eq!(upload["purpose"], "fine-tune");
    assert_eq!(upload["file"], Value::Null);
    let (created, expires) = (
        upload["created_at"].as_i64().unwrap(),
        upload["expires_at"].as_i64().unwrap(),
    );
    assert_eq!(expires - created, 3600, "an hour, in seconds");
    upload["id"].as_str().unwrap().to_string()
}

async fn add_part(server: &TestServer, key: &str, upload: &str, bytes: &[u8]) -> reqwest::Response {
    http()
        .post(format!("{}/v1/uploads/{upload}/parts", server.url()))
        .bearer_auth(key)
        .multipart(Form::new().part("data", Part::bytes(bytes.to_vec()).file_name("blob")))
        .send()
        .await
        .unwrap()
}

/// Adds a part and returns its id.
async fn part_id(server: &TestServer, upload: &str, bytes: &[u8]) -> String {
    let response = add_part(server, server.admin_key(), upload, bytes).await;
    assert_eq!(response.status(), 200);
    let part: Value = response.json().await.unwrap();
    assert_eq!(part["object"], "upload.part");
    assert_eq!(part["upload_id"], upload);
    part["id"].as_str().unwrap().to_string()
}

async fn complete(server: &TestServer, upload: &str, body: Value) -> reqwest::Response {
    post_json(server, server.admin_key(), &format!("uploads/{upload}/complete"), body).await
}

/// The file in three pieces, cut inside lines (the parts are bytes, not rows).
fn three_pieces() -> (Vec<u8>, [Vec<u8>; 3]) {
    let whole = sft_rows("parts", 30);
    let (a, rest) = whole.split_at(whole.len() / 3 + 7);
    let (b, c) = rest.split_at(rest.len() / 2 - 5);
    (whole.clone(), [a.to_vec(), b.to_vec(), c.to_vec()])
}

#[tokio::test]
async fn uploads_assemble_their_parts_in_the_named_order() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let (whole, [a, b, c]) = three_pieces();
    let upload = create_upload(&server, server.admin_key(), whole.len()).await;
    // Parts arrive in any order; completing names the file's.
    let pc = part_id(&server, &upload, &c).await;
    let pa = part_id(&server, &upload, &a).await;
    let pb = part_id(&server, &upload, &b).await;

    // Not adding up, a stranger part, a part twice, a wrong digest: each a
    // 400 that changes nothing.
    for (body, param) in [
        (json!({"part_ids": [pa, pb]}), "part_ids"),
        (
            json!({"part_ids": [pa, pb, "part_01m97sd67ysf3taqkh8qefcvf4"]}),
            "part_ids[2]",
        ),
        (json!({"part_ids": [pa, pa, pb, pc]}), "part_ids[1]"),
        (json!({"part_ids": []}), "part_ids"),
        (json!({"part_ids": [pa, pb, pc], "md5": "0".repeat(32)}), "md5"),
        (json!({"part_ids": [pa, pb, pc], "md5": "nope"}), "md5"),
        (json!({"part_ids": [pa, pb, pc], "extra": 1}), "extra"),
    ] {
        let error = openai_error(complete(&server, &upload, body).await, 400).await;
        assert_eq!(error["param"], param, "{error}");
    }
    // In the order they arrived, the lines are cut wrong: refused with the
    // problems, and the upload stays pending with its parts.
    let error = openai_error(complete(&server, &upload, json!({"part_ids": [pc, pa, pb]})).await, 400).await;
    assert_eq!(error["param"], "file");
    assert!(error["message"].as_str().unwrap().contains("invalid_json"), "{error}");
    assert!(ids(&get_json(&server, "files").await).is_empty());

    let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(&whole));
    let response = complete(&server, &upload, json!({"part_ids": [pa, pb, pc], "md5": md5})).await;
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done["id"], upload);
    assert_eq!(done["status"], "completed");
    let file = &done["file"];
    assert_eq!(file["object"], "file");
    assert_eq!(file["bytes"], whole.len());
    assert_eq!(file["filename"], "big.jsonl");
    assert_eq!(file["status"], "processed");
    assert_eq!(file["lathe"]["rows"], 30);
    let id = file["id"].as_str().unwrap();
    assert_eq!(&get_json(&server, &format!("files/{id}")).await, file);
    let content = get(&server, &format!("files/{id}/content"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(content.as_ref(), whole.as_slice(), "the parts, in the named order");
    // The parts' blobs are gone: the file's is the only one.
    assert_eq!(files_under(&data.path().join("blobs")).len(), 1);

    // A completed upload takes nothing more.
    let error = openai_error(complete(&server, &upload, json!({"part_ids": [pa, pb, pc]})).await, 400).await;
    assert_eq!(error["code"], "invalid_state");
    openai_error(add_part(&server, server.admin_key(), &upload, b"more").await, 400).await;
    let cancel = post_json(
        &server,
        server.admin_key(),
        &format!("uploads/{upload}/cancel"),
        json!({}),
    )
    .await;
    openai_error(cancel, 400).await;
    server.stop().await;
}

#[tokio::test]
async fn uploads_refuse_bad_parts_and_cancel() {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::embedded(data.path());
    config.max_upload_part_bytes = 1000;
    config.max_assembled_upload_bytes = 1 << 20;
    let server = TestServer::start_with(config).await;
    let key = server.admin_key().to_string();

    for (body, param) in [
        (
            json!({"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 0, "mime_type": "text/jsonl"}),
            "bytes",
        ),
        (
            json!({"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 2 << 20, "mime_type": "text/jsonl"}),
            "bytes",
        ),
        (
            json!({"filename": "", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl"}),
            "filename",
        ),
        (
            json!({"filename": "a.jsonl", "purpose": "vision", "bytes": 10, "mime_type": "image/png"}),
            "purpose",
        ),
        (
            json!({"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 10}),
            "mime_type",
        ),
        (
            json!({"filename": "a.jsonl", "purpose": "fine-tune", "bytes": 10, "mime_type": "text/jsonl",
                   "expires_after": {"anchor": "created_at", "seconds": 3600}}),
            "expires_after",
        ),
    ] {
        let error = openai_error(post_json(&server, &key, "uploads", body).await, 400).await;
        assert_eq!(error["param"], param, "{error}");
    }

    let upload = create_upload(&server, &key, 1500).await;
    // Over the part limit: 413; over the announced size: 400.
    openai_error(add_part(&server, &key, &upload, &[b'x'; 1001]).await, 413).await;
    part_id(&server, &upload, &[b'x'; 1000]).await;
    let error = openai_error(add_part(&server, &key, &upload, &[b'x'; 501]).await, 400).await;
    assert_eq!(error["param"], "data");
    let error = openai_error(add_part(&server, &key, &upload, b"").await, 400).await;
    assert_eq!(error["param"], "data");
    let no_data = http()
        .post(format!("{}/v1/uploads/{upload}/parts", server.url()))
        .bearer_auth(&key)
        .multipart(Form::new().text("bytes", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(no_data, 400).await["param"], "bytes");
    part_id(&server, &upload, &[b'x'; 500]).await;
    assert_eq!(files_under(&data.path().join("blobs")).len(), 2);

    let cancel = post_json(&server, &key, &format!("uploads/{upload}/cancel"), json!({})).await;
    assert_eq!(cancel.status(), 200);
    let cancelled: Value = cancel.json().await.unwrap();
    assert_eq!(
        (&cancelled["id"], &cancelled["status"]),
        (&json!(upload), &json!("cancelled"))
    );
    assert_no_blobs(data.path());
    let error = openai_error(add_part(&server, &key, &upload, b"x").await, 400).await;
    assert_eq!(error["code"], "invalid_state");
    openai_error(complete(&server, &upload, json!({"part_ids": []})).await, 400).await;

    let missing = "upload_00000000000000000000000000";
    openai_error(add_part(&server, &key, missing, b"x").await, 404).await;
    openai_error(
        post_json(&server, &key, &format!("uploads/{missing}/cancel"), json!({})).await,
        404,
    )
    .await;
    assert_no_files(&server, data.path()).await;
    server.stop().await;
}

/// Uploads and their parts are records and blobs: a restart keeps them.
#[tokio::test]
async fn uploads_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let (whole, [a, b, c]) = three_pieces();
    let server = TestServer::start(data.path()).await;
    let upload = create_upload(&server, server.admin_key(), whole.len()).await;
    let pa = part_id(&server, &upload, &a).await;
    let pb = part_id(&server, &upload, &b).await;
    server.stop().await;

    let server = TestServer::start(data.path()).await;
    let pc = part_id(&server, &upload, &c).await;
    let response = complete(&server, &upload, json!({"part_ids": [pa, pb, pc]})).await;
    assert_eq!(response.status(), 200);
    let done: Value = response.json().await.unwrap();
    let id = done["file"]["id"].as_str().unwrap();
    let content = get(&server, &format!("files/{id}/content"))
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(content.as_ref(), whole.as_slice());
    server.stop().await;
}

/// Another project's files and uploads do not exist for a caller.
#[tokio::test]
async fn another_projects_files_and_uploads_are_not_found() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let mut admin = proto::admin_service_client::AdminServiceClient::new(server.channel().await);
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
            owner: "other@example.com".into(),
            role: proto::Role::Member as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;

    let file = upload_file(&server, "fine-tune", "mine.jsonl", sft_rows("mine", 10)).await;
    let id = file["id"].as_str().unwrap();
    let (whole, [a, ..]) = three_pieces();
    let upload = create_upload(&server, server.admin_key(), whole.len()).await;
    let pa = part_id(&server, &upload, &a).await;

    for path in [format!("files/{id}"), format!("files/{id}/content")] {
        openai_error(get_with(&server, &other, &path).await, 404).await;
    }
    let theirs: Value = get_with(&server, &other, "files").await.json().await.unwrap();
    assert_eq!(theirs["data"], json!([]));
    let error = openai_error(get_with(&server, &other, &format!("files?after={id}")).await, 400).await;
    assert_eq!(error["param"], "after");
    let delete = http()
        .delete(format!("{}/v1/files/{id}", server.url()))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    openai_error(delete, 404).await;
    openai_error(add_part(&server, &other, &upload, b"x").await, 404).await;
    let complete = post_json(
        &server,
        &other,
        &format!("uploads/{upload}/complete"),
        json!({"part_ids": [pa]}),
    )
    .await;
    openai_error(complete, 404).await;
    openai_error(
        post_json(&server, &other, &format!("uploads/{upload}/cancel"), json!({})).await,
        404,
    )
    .await;

    // All still there for their owner.
    assert_eq!(get(&server, &format!("files/{id}")).await.status(), 200);
    let cancel = post_json(
        &server,
        server.admin_key(),
        &format!("uploads/{upload}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(cancel.status(), 200);
    server.stop().await;
}

/// A pending upload past its expiry is expired: it takes nothing more, and
/// its parts are gone.
#[tokio::test]
async fn uploads_expire() {
    let data = tempfile::tempdir().unwrap();
    let mut config = ServeConfig::embedded(data.path());
    config.upload_expiry_secs = 1;
    let server = TestServer::start_with(config).await;
    let key = server.admin_key().to_string();
    let upload = post_json(
        &server,
        &key,
        "uploads",
        json!({"filename": "a.jsonl", "purpose": "evals", "bytes": 10, "mime_type": "text/jsonl"}),
    )
    .await
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(
        upload["expires_at"].as_i64().unwrap() - upload["created_at"].as_i64().unwrap(),
        1
    );
    assert_eq!(upload["purpose"], "evals");
    let id = upload["id"].as_str().unwrap();
    let part = part_id(&server, id, b"{\"a\": 1}").await;
    assert_eq!(files_under(&data.path().join("blobs")).len(), 1);
    // Expiry is wall-clock time, which the test cannot pause.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let error = openai_error(complete(&server, id, json!({"part_ids": [part]})).await, 400).await;
    assert!(error["message"].as_str().unwrap().contains("expired"), "{error}");
    assert_no_blobs(data.path());
    server.stop().await;
}
