//! Stored chat completions: `store: true` over REST (whole and streamed)
//! and the gRPC Chat RPC keep what was asked and answered; OpenAI's routes
//! list (by model, metadata, pages), show, relabel and delete them; another
//! project sees none; and they become SFT rows or eval items.

use std::collections::HashMap;

use crate::common::openai_stub::{Reply, chat_body};
use crate::common::*;
use crate::rest::{http, openai_error};
use crate::rest_chat::{chunks, stub_server};
use lathe::proto::{self, dataset_service_client::DatasetServiceClient, model_service_client::ModelServiceClient};
use serde_json::{Value, json};

async fn get(server: &TestServer, key: &str, path: &str) -> reqwest::Response {
    http()
        .get(format!("{}/v1/chat/completions{path}", server.url()))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    body
}

async fn create(server: &TestServer, body: Value) -> reqwest::Response {
    http()
        .post(format!("{}/v1/chat/completions", server.url()))
        .bearer_auth(server.admin_key())
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
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_completions_are_listed_filtered_relabelled_and_deleted_over_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    let key = server.admin_key().to_string();
    stub.script([
        Reply::Json(chat_body("first answer")),
        Reply::Json(chat_body("second answer")),
        Reply::Json(chat_body("not kept")),
    ]);
    let ask = |text: &str| {
        json!({"model": "stub/gpt-x", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]})
    };
    let mut first = ask("one");
    first["store"] = json!(true);
    first["temperature"] = json!(0.25);
    first["metadata"] = json!({"team": "search", "kind": "faq"});
    let first = json_of(create(&server, first).await).await;
    let first_id = first["id"].as_str().unwrap().to_string();

    // A streamed answer is stored before its last frame is sent.
    let mut second = ask("two");
    second["store"] = json!(true);
    second["stream"] = json!(true);
    second["metadata"] = json!({"team": "ads"});
    let streamed = chunks(create(&server, second).await).await;
    let second_id = streamed[0]["id"].as_str().unwrap().to_string();
    let mut third = ask("three");
    third["metadata"] = json!({"team": "search"});
    json_of(create(&server, third).await).await;

    // Oldest first, as OpenAI lists them; the answer not stored is absent.
    let all = json_of(get(&server, &key, "").await).await;
    assert_eq!(ids(&all), vec![first_id.clone(), second_id.clone()], "{all}");
    assert_eq!(all["has_more"], false);
    let kept = &all["data"][0];
    assert_eq!(kept["object"], "chat.completion");
    assert_eq!(kept["model"], "stub/gpt-x");
    assert_eq!(kept["metadata"], json!({"team": "search", "kind": "faq"}));
    assert_eq!(kept["choices"], first["choices"], "the answer as it was given");
    assert_eq!(kept["usage"], first["usage"]);
    assert_eq!(kept["request"]["temperature"], 0.25);
    assert_eq!(all["data"][1]["choices"][0]["message"]["content"], "second answer");

    let newest = json_of(get(&server, &key, "?order=desc&limit=1").await).await;
    assert_eq!(
        (ids(&newest), &newest["has_more"]),
        (vec![second_id.clone()], &json!(true))
    );
    let next = json_of(get(&server, &key, &format!("?order=desc&limit=1&after={second_id}")).await).await;
    assert_eq!(ids(&next), vec![first_id.clone()]);
    let search = json_of(get(&server, &key, "?metadata[team]=search").await).await;
    assert_eq!(ids(&search), vec![first_id.clone()]);
    let both = json_of(
        get(
            &server,
            &key,
            "?metadata[team]=search&metadata[kind]=faq&model=stub/gpt-x",
        )
        .await,
    )
    .await;
    assert_eq!(ids(&both), vec![first_id.clone()]);
    let other_model = json_of(get(&server, &key, "?model=stub/other").await).await;
    assert!(ids(&other_model).is_empty());

    // One, and the messages it was asked with, each with an id.
    let one = json_of(get(&server, &key, &format!("/{first_id}")).await).await;
    assert_eq!(one["id"], first_id.as_str());
    let messages = json_of(get(&server, &key, &format!("/{first_id}/messages")).await).await;
    assert_eq!(messages["data"][0]["id"], format!("{first_id}-0"));
    assert_eq!(messages["data"][1]["content"], "one");
    let page = json_of(
        get(
            &server,
            &key,
            &format!("/{first_id}/messages?limit=1&after={first_id}-0"),
        )
        .await,
    )
    .await;
    assert_eq!(
        (page["data"][0]["role"].as_str(), &page["has_more"]),
        (Some("user"), &json!(false))
    );

    // Relabelling replaces the metadata, and filters follow.
    let relabelled = json_of(
        http()
            .post(format!("{}/v1/chat/completions/{first_id}", server.url()))
            .bearer_auth(&key)
            .json(&json!({"metadata": {"team": "ads", "reviewed": "yes"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(relabelled["metadata"], json!({"team": "ads", "reviewed": "yes"}));
    let ads = json_of(get(&server, &key, "?metadata[team]=ads").await).await;
    assert_eq!(ids(&ads), vec![first_id.clone(), second_id.clone()]);

    // Bad input is a 400 naming the param, and stores nothing.
    let many: HashMap<String, String> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
    let mut too_many = ask("four");
    too_many["store"] = json!(true);
    too_many["metadata"] = json!(many);
    let error = openai_error(create(&server, too_many).await, 400).await;
    assert_eq!(error["param"], "metadata", "{error}");
    let error = openai_error(
        get(&server, &key, "?after=chatcmpl-01JZZZZZZZZZZZZZZZZZZZZZZZ").await,
        400,
    )
    .await;
    assert_eq!(error["param"], "after", "{error}");
    let error = openai_error(get(&server, &key, "?colour=red").await, 400).await;
    assert_eq!(error["param"], "colour", "{error}");
    openai_error(get(&server, &key, "/chatcmpl-nope").await, 404).await;
    assert_eq!(ids(&json_of(get(&server, &key, "").await).await).len(), 2);

    // Another project's key sees none of them.
    let mut admin = proto::admin_service_client::AdminServiceClient::new(server.channel().await);
    admin
        .create_project(proto::CreateProjectRequest {
            id: "b".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let b_key = admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: "b".into(),
            role: proto::Role::Member as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert!(ids(&json_of(get(&server, &b_key, "").await).await).is_empty());
    openai_error(get(&server, &b_key, &format!("/{first_id}")).await, 404).await;
    let delete = |k: String, id: String| {
        let url = format!("{}/v1/chat/completions/{id}", server.url());
        async move { http().delete(url).bearer_auth(k).send().await.unwrap() }
    };
    openai_error(delete(b_key.clone(), first_id.clone()).await, 404).await;

    let deleted = json_of(delete(key.clone(), first_id.clone()).await).await;
    assert_eq!(
        deleted,
        json!({"id": first_id, "object": "chat.completion.deleted", "deleted": true})
    );
    openai_error(get(&server, &key, &format!("/{first_id}")).await, 404).await;
    assert_eq!(ids(&json_of(get(&server, &key, "").await).await), vec![second_id]);
    server.stop().await;
}

/// Asks the test provider through the gRPC Chat RPC; returns the end.
async fn chat(
    models: &mut ModelServiceClient<lathe::client::Channel>,
    text: &str,
    store: bool,
    team: &str,
) -> proto::ChatEnd {
    let mut stream = models
        .chat(proto::ChatRequest {
            model: "stub/gpt-x".into(),
            messages: vec![proto::ChatMessage {
                role: "user".into(),
                content: text.into(),
            }],
            sampling: None,
            store,
            metadata: [("team".to_string(), team.to_string())].into(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(msg) = stream.message().await.unwrap() {
        if let Some(proto::chat_response::Payload::End(end)) = msg.payload {
            return end;
        }
    }
    panic!("no end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_chat_stores_and_stored_completions_become_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let (server, stub) = stub_server(dir.path()).await;
    stub.script((0..4).map(|i| Reply::Json(chat_body(&format!("answer {i}")))));
    let channel = server.channel().await;
    let mut models = ModelServiceClient::new(channel.clone());
    let mut datasets = DatasetServiceClient::new(channel);
    let mut stored = Vec::new();
    for (i, team) in ["search", "search", "ads"].iter().enumerate() {
        let end = chat(&mut models, &format!("question {i}"), true, team).await;
        assert!(end.completion_id.starts_with("chatcmpl-"), "{end:?}");
        stored.push(end.completion_id);
    }
    let unstored = chat(&mut models, "question 3", false, "search").await;
    assert!(unstored.completion_id.is_empty());

    let listed = models
        .list_stored_completions(proto::ListStoredCompletionsRequest {
            metadata: [("team".to_string(), "search".to_string())].into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.completions.len(), 1);
    assert_eq!(listed.completions[0].id, stored[0]);
    assert!(!listed.next_page_token.is_empty());
    let rest = models
        .list_stored_completions(proto::ListStoredCompletionsRequest {
            metadata: [("team".to_string(), "search".to_string())].into(),
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rest.completions.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![stored[1].clone()]
    );
    assert!(rest.next_page_token.is_empty());

    // SFT rows: the messages, then the answer; each row names its completion.
    let made = datasets
        .create_dataset_from_completions(proto::CreateDatasetFromCompletionsRequest {
            model: "stub/gpt-x".into(),
            completion_metadata: [("team".to_string(), "search".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let dataset = made.dataset.unwrap();
    assert_eq!(dataset.purpose, proto::DatasetPurpose::Sft as i32);
    assert_eq!(
        dataset.state,
        proto::DatasetState::Ready as i32,
        "validated like any file"
    );
    assert_eq!(dataset.metadata["lathe.synthesis"], "stored_completions");
    let counts = made.counts.unwrap();
    assert_eq!((counts.items, counts.kept), (2, 2));
    let (bytes, _) = download_all(&mut datasets, &dataset.id).await;
    let rows: Vec<Value> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first = models
        .get_stored_completion(proto::GetStoredCompletionRequest { id: stored[0].clone() })
        .await
        .unwrap()
        .into_inner()
        .completion
        .unwrap();
    let answer = lathe::proto::json::json_from_struct(first.choices[0].clone())["message"]["content"].clone();
    assert_eq!(answer, "answer 0");
    assert_eq!(rows[0]["messages"][0], json!({"role": "user", "content": "question 0"}));
    assert_eq!(rows[0]["messages"][1], json!({"role": "assistant", "content": answer}));
    assert_eq!(rows[0]["metadata"]["completion_id"], stored[0].as_str());
    assert_eq!(rows[1]["metadata"]["completion_id"], stored[1].as_str());

    // Eval items carry the answer for a next run; a limit takes the oldest.
    let items = datasets
        .create_dataset_from_completions(proto::CreateDatasetFromCompletionsRequest {
            purpose: proto::DatasetPurpose::Eval as i32,
            answer_field: "reference".into(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (bytes, _) = download_all(&mut datasets, &items.dataset.unwrap().id).await;
    let item: Value = serde_json::from_slice(bytes.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(item["messages"], json!([{"role": "user", "content": "question 0"}]));
    assert_eq!(item["reference"], answer);
    assert_eq!(item["reference_from"]["completion_id"], stored[0].as_str());
    assert_eq!(items.counts.unwrap().kept, 1);

    // Relabel, then nothing matches the old label: refused, nothing stored.
    models
        .update_stored_completion(proto::UpdateStoredCompletionRequest {
            id: stored[2].clone(),
            metadata: [("team".to_string(), "growth".to_string())].into(),
        })
        .await
        .unwrap();
    let before = datasets
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets
        .len();
    let none = datasets
        .create_dataset_from_completions(proto::CreateDatasetFromCompletionsRequest {
            completion_metadata: [("team".to_string(), "ads".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition, "{none:?}");
    let bad = datasets
        .create_dataset_from_completions(proto::CreateDatasetFromCompletionsRequest {
            purpose: proto::DatasetPurpose::Dpo as i32,
            answer_field: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("purpose"), "{bad:?}");
    let after = datasets
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets
        .len();
    assert_eq!(before, after);

    // The CLI: list as JSON, then a dataset of the relabelled one.
    let addr = server.url();
    let out = tokio::task::spawn_blocking(move || {
        let listed = lathe(&addr, &["completions", "list", "--where", "team=growth", "--json"]);
        let made = lathe(
            &addr,
            &["datasets", "from-completions", "--where", "team=growth", "--json"],
        );
        (listed, made)
    })
    .await
    .unwrap();
    assert!(out.0.status.success(), "{}", String::from_utf8_lossy(&out.0.stderr));
    let listed: Value = serde_json::from_slice(&out.0.stdout).unwrap();
    assert_eq!(listed["completions"][0]["id"], stored[2].as_str());
    assert!(out.1.status.success(), "{}", String::from_utf8_lossy(&out.1.stderr));
    models
        .delete_stored_completion(proto::DeleteStoredCompletionRequest { id: stored[2].clone() })
        .await
        .unwrap();
    let gone = models
        .get_stored_completion(proto::GetStoredCompletionRequest { id: stored[2].clone() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    server.stop().await;
}
