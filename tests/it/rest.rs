//! The REST door's shared behaviour: keys and OpenAI's error object on
//! every refusal, `x-request-id` on every answer, unknown routes, the
//! OpenAPI document, and `/v1/models` answering what `GetModel` answers.

use crate::common::*;
use lathe::proto::{self, model_service_client::ModelServiceClient};
use serde_json::Value;

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Checks an OpenAI error answer and returns its `error` object.
pub(crate) async fn openai_error(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert!(
        response.headers().contains_key("x-request-id"),
        "x-request-id on errors"
    );
    let body: Value = response.json().await.expect("a JSON error body");
    let error = body["error"].clone();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
    error
}

#[tokio::test]
async fn every_refusal_is_an_openai_error_with_a_request_id() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let url = server.url();
    let no_key = http().get(format!("{url}/v1/models")).send().await.unwrap();
    let error = openai_error(no_key, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    let bad_key = http()
        .get(format!("{url}/v1/models"))
        .bearer_auth("sk-lathe-nope")
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(bad_key, 401).await, error, "one answer for every bad key");

    let key = server.admin_key();
    let unknown = http()
        .get(format!("{url}/v1/nothing/here"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(unknown, 404).await["code"], "unknown_url");
    let wrong_method = http()
        .put(format!("{url}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    openai_error(wrong_method, 404).await;
    let missing = http()
        .get(format!("{url}/v1/models/no-such-model"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(openai_error(missing, 404).await["code"], "not_found");

    let ok = http()
        .get(format!("{url}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let id = ok.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(id.starts_with("req_"), "{id}");
    server.stop().await;
}

#[tokio::test]
async fn the_openapi_document_names_what_is_served() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let doc: Value = http()
        .get(format!("{}/v1/openapi.json", server.url()))
        .bearer_auth(server.admin_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert!(doc["paths"]["/v1/models"]["get"].is_object(), "{doc}");
    assert!(doc["paths"]["/v1/models/{model}"]["delete"].is_object(), "{doc}");
    assert_eq!(
        lathe::rest::openapi().paths.paths.len(),
        doc["paths"].as_object().unwrap().len()
    );
    server.stop().await;
}

#[tokio::test]
async fn models_answer_what_get_model_answers() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let models_dir = data.path().join("models");
    std::fs::create_dir_all(&models_dir).unwrap();
    let path = crate::models::gguf_file(&models_dir);
    let mut grpc = ModelServiceClient::new(server.channel().await);
    grpc.register_model(proto::RegisterModelRequest {
        name: "tiny-qwen".into(),
        path: path.display().to_string(),
    })
    .await
    .unwrap();
    let model = grpc
        .get_model(proto::GetModelRequest { id: "tiny-qwen".into() })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();

    let url = server.url();
    let key = server.admin_key();
    let list: Value = http()
        .get(format!("{url}/v1/models"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], "tiny-qwen");
    let one: Value = http()
        .get(format!("{url}/v1/models/tiny-qwen"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"].as_array().unwrap(), &vec![one.clone()]);
    assert_eq!(one["id"], model.id);
    assert_eq!(one["object"], "model");
    assert_eq!(one["owned_by"], "system");
    assert_eq!(one["created"], model.created_at.unwrap().seconds);

    // A member may not unregister a shared base model: 403, and it stays.
    let mut admin = lathe::proto::admin_service_client::AdminServiceClient::new(server.channel().await);
    let member = admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: "default".into(),
            name: "member".into(),
            owner: "tests".into(),
            role: proto::Role::Member as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let refused = http()
        .delete(format!("{url}/v1/models/tiny-qwen"))
        .bearer_auth(&member)
        .send()
        .await
        .unwrap();
    openai_error(refused, 403).await;
    let deleted: Value = http()
        .delete(format!("{url}/v1/models/tiny-qwen"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        deleted,
        serde_json::json!({"id": "tiny-qwen", "object": "model", "deleted": true})
    );
    server.stop().await;
}
