//! `/v1/evals` over REST, as the `openai` SDK calls it: evals, runs from a
//! file of samples or sampling a model (the test-only OpenAI stub as a
//! provider), output items, paging with `after`, cancel by both routes,
//! deletes, bad input, other projects, and the same data as gRPC.

use std::time::Duration;

use crate::common::openai_stub::{Reply, chat_body};
use crate::common::*;
use crate::rest::{http, openai_error};
use lathe::config::ServeConfig;
use lathe::proto::{
    self, admin_service_client::AdminServiceClient, eval_service_client::EvalServiceClient,
    watch_eval_run_response::Payload,
};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(30);

/// A server whose provider `stub` is the OpenAI stub at `stub_url`.
fn config(dir: &std::path::Path, stub_url: &str) -> ServeConfig {
    let providers = dir.join("providers.json");
    std::fs::write(
        &providers,
        json!([{"name": "stub", "base_url": stub_url, "max_retries": 0, "timeout_secs": 60, "max_concurrency": 64}])
            .to_string(),
    )
    .unwrap();
    let mut config = ServeConfig::embedded(dir.join("data"));
    config.providers = Some(providers);
    config.job_poll_millis = 100;
    config
}

/// REST calls with one key; each answers its status and JSON body.
struct Api {
    url: String,
    key: String,
}

impl Api {
    fn new(server: &TestServer, key: &str) -> Api {
        Api {
            url: format!("{}/v1", server.url()),
            key: key.to_string(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.bearer_auth(&self.key).send().await.unwrap();
        let status = response.status().as_u16();
        assert!(response.headers().contains_key("x-request-id"));
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(http().get(format!("{}{path}", self.url))).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(http().post(format!("{}{path}", self.url)).json(&body)).await
    }

    async fn post_empty(&self, path: &str) -> (u16, Value) {
        self.send(http().post(format!("{}{path}", self.url))).await
    }

    async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(http().delete(format!("{}{path}", self.url))).await
    }

    /// A 200's body; panics with the error otherwise.
    async fn ok(&self, answer: (u16, Value)) -> Value {
        assert_eq!(answer.0, 200, "{}", answer.1);
        answer.1
    }

    /// A 400's `param`; panics otherwise.
    fn param(answer: &(u16, Value)) -> String {
        assert_eq!(answer.0, 400, "{}", answer.1);
        answer.1["error"]["param"].as_str().unwrap_or_default().to_string()
    }
}

fn exact_match() -> Value {
    json!({
        "type": "string_check", "name": "exact", "operation": "eq",
        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"
    })
}

fn item_schema() -> Value {
    json!({"type": "object", "properties": {"n": {"type": "integer"}, "answer": {"type": "string"}}, "required": ["answer"]})
}

fn eval_body(name: &str) -> Value {
    json!({
        "name": name,
        "data_source_config": {"type": "custom", "item_schema": item_schema(), "include_sample_schema": true},
        "testing_criteria": [exact_match()],
        "metadata": {"team": "search"}
    })
}

/// `n` items; the samples of multiples of three are wrong.
fn rows_with_samples(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let answer = if i % 3 == 0 { "wrong".to_string() } else { i.to_string() };
            json!({"item": {"n": i, "answer": i.to_string()}, "sample": {"output_text": answer}})
        })
        .collect()
}

async fn upload_rows(server: &TestServer, key: &str, rows: &[Value]) -> String {
    let bytes: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let mut client = proto::dataset_service_client::DatasetServiceClient::new(server.channel_with(key).await);
    let d = upload_bytes(
        &mut client,
        "items.jsonl",
        proto::DatasetPurpose::Eval,
        "",
        bytes.as_bytes(),
        4096,
    )
    .await
    .expect("upload");
    assert_eq!(d.state, proto::DatasetState::Ready as i32, "{d:?}");
    d.id
}

/// Waits on the run's watch stream for its end.
async fn wait_end(server: &TestServer, key: &str, run_id: &str) -> proto::EvalRun {
    let mut client = EvalServiceClient::new(server.channel_with(key).await);
    let mut stream = client
        .watch_eval_run(proto::WatchEvalRunRequest {
            run_id: run_id.into(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        let msg = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .expect("a terminal message");
        if let Some(Payload::End(run)) = msg.payload {
            return run;
        }
    }
}

/// Every page of a list, `limit` at a time, following `after=last_id`.
async fn pages(api: &Api, path: &str, limit: usize) -> Vec<Vec<Value>> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(a) => format!("{path}{sep}limit={limit}&after={a}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let page = api.ok(api.get(&url).await).await;
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit);
        if let (Some(first), Some(last)) = (data.first(), data.last()) {
            assert_eq!((&page["first_id"], &page["last_id"]), (&first["id"], &last["id"]));
        }
        let more = page["has_more"].as_bool().expect("has_more is always there");
        after = page["last_id"].as_str().map(str::to_string);
        out.push(data);
        if !more {
            return out;
        }
    }
}

fn ids_of(files: &[proto::Dataset]) -> Vec<String> {
    files.iter().map(|f| f.id.clone()).collect()
}

fn ids(values: &[Value]) -> Vec<String> {
    values.iter().map(|v| v["id"].as_str().unwrap().to_string()).collect()
}

fn seconds(t: &Option<prost_types::Timestamp>) -> i64 {
    t.as_ref().unwrap().seconds
}

#[tokio::test]
async fn an_eval_runs_a_file_of_samples_and_pages_updates_and_deletes_over_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let api = Api::new(&server, server.admin_key());

    let eval = api.ok(api.post("/evals", eval_body("arithmetic")).await).await;
    let eval_id = eval["id"].as_str().unwrap().to_string();
    assert_eq!(
        (eval["object"].as_str(), eval["name"].as_str()),
        (Some("eval"), Some("arithmetic"))
    );
    assert_eq!(eval["metadata"], json!({"team": "search"}));
    let config = &eval["data_source_config"];
    assert_eq!(config["type"], "custom");
    assert_eq!(config["schema"]["properties"]["item"], item_schema());
    assert_eq!(config["schema"]["required"], json!(["item", "sample"]));
    assert_eq!(config["schema"]["properties"]["sample"]["type"], "object");
    assert_eq!(eval["testing_criteria"], json!([exact_match()]), "the grader as given");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (eval["created_at"].as_i64().unwrap() - now).abs() < 60,
        "seconds: {eval}"
    );
    assert_eq!(api.ok(api.get(&format!("/evals/{eval_id}")).await).await, eval);

    // A run over a file whose rows carry their samples.
    let file = upload_rows(&server, server.admin_key(), &rows_with_samples(10)).await;
    let created = api
        .ok(api
            .post(
                &format!("/evals/{eval_id}/runs"),
                json!({"name": "from the file", "metadata": {"try": "1"},
                       "data_source": {"type": "jsonl", "source": {"type": "file_id", "id": file}}}),
            )
            .await)
        .await;
    let run_id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        (
            created["object"].as_str(),
            created["status"].as_str(),
            created["eval_id"].as_str()
        ),
        (Some("eval.run"), Some("queued"), Some(eval_id.as_str()))
    );
    assert_eq!(
        created["data_source"],
        json!({"type": "jsonl", "source": {"type": "file_id", "id": file}})
    );
    assert_eq!(
        (&created["name"], &created["metadata"]),
        (&json!("from the file"), &json!({"try": "1"}))
    );
    wait_end(&server, server.admin_key(), &run_id).await;
    let run = api.ok(api.get(&format!("/evals/{eval_id}/runs/{run_id}")).await).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["result_counts"],
        json!({"total": 10, "passed": 6, "failed": 4, "errored": 0})
    );
    assert_eq!(
        run["per_testing_criteria_results"],
        json!([{"testing_criteria": "exact", "passed": 6, "failed": 4}])
    );
    assert_eq!((&run["error"], &run["report_url"]), (&Value::Null, &Value::Null));

    // The failures, and every item page by page in the file's order.
    let items = format!("/evals/{eval_id}/runs/{run_id}/output_items");
    let failed = api.ok(api.get(&format!("{items}?status=fail")).await).await;
    let failed = failed["data"].as_array().unwrap().clone();
    assert_eq!(
        failed
            .iter()
            .map(|i| i["datasource_item_id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 3, 6, 9]
    );
    for item in &failed {
        assert_eq!(
            (
                item["object"].as_str(),
                item["status"].as_str(),
                item["run_id"].as_str(),
                item["eval_id"].as_str()
            ),
            (
                Some("eval.run.output_item"),
                Some("fail"),
                Some(run_id.as_str()),
                Some(eval_id.as_str())
            )
        );
        assert_eq!(item["results"][0]["name"], "exact");
        assert_eq!(
            (&item["results"][0]["passed"], &item["results"][0]["score"]),
            (&json!(false), &json!(0.0))
        );
        assert_eq!(
            item["sample"]["output"],
            json!([{"role": "assistant", "content": "wrong"}])
        );
    }
    assert_eq!(failed[1]["datasource_item"], json!({"n": 3, "answer": "3"}));
    let passed = api.ok(api.get(&format!("{items}?status=pass&limit=100")).await).await;
    assert_eq!(passed["data"].as_array().unwrap().len(), 6);
    let paged = pages(&api, &items, 3).await;
    assert_eq!(paged.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
    let all: Vec<Value> = paged.concat();
    assert_eq!(
        all.iter()
            .map(|i| i["datasource_item_id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let reversed = pages(&api, &format!("{items}?order=desc"), 4).await.concat();
    assert_eq!(ids(&reversed), ids(&all).into_iter().rev().collect::<Vec<_>>());
    let failed_desc = pages(&api, &format!("{items}?status=fail&order=desc"), 3)
        .await
        .concat();
    assert_eq!(
        failed_desc
            .iter()
            .map(|i| i["datasource_item_id"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [9, 6, 3, 0]
    );
    let third = &all[3];
    let one = api
        .ok(api.get(&format!("{items}/{}", third["id"].as_str().unwrap())).await)
        .await;
    assert_eq!(&one, third);

    // Evals page with after, either way; updates rename and replace metadata.
    let more: Vec<String> = {
        let mut out = Vec::new();
        for name in ["b", "c"] {
            let e = api.ok(api.post("/evals", eval_body(name)).await).await;
            out.push(e["id"].as_str().unwrap().to_string());
        }
        out
    };
    let listed = pages(&api, "/evals", 2).await;
    assert_eq!(listed.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    let oldest_first = ids(&listed.concat());
    let mut expected = vec![eval_id.clone(), more[0].clone(), more[1].clone()];
    // Ids sort by creation time, so oldest first is id order.
    expected.sort();
    assert_eq!(oldest_first, expected);
    let newest_first = ids(&pages(&api, "/evals?order=desc", 2).await.concat());
    assert_eq!(newest_first, expected.iter().rev().cloned().collect::<Vec<_>>());

    let renamed = api
        .ok(api
            .post(
                &format!("/evals/{eval_id}"),
                json!({"name": "renamed", "metadata": {"stage": "2"}}),
            )
            .await)
        .await;
    assert_eq!(
        (&renamed["name"], &renamed["metadata"]),
        (&json!("renamed"), &json!({"stage": "2"}))
    );
    assert_eq!(renamed["testing_criteria"], eval["testing_criteria"], "criteria stay");
    let cleared = api
        .ok(api.post(&format!("/evals/{eval_id}"), json!({"metadata": null})).await)
        .await;
    assert_eq!(
        (&cleared["name"], &cleared["metadata"]),
        (&json!("renamed"), &json!({}))
    );
    let by_update = ids(&pages(&api, "/evals?order_by=updated_at&order=desc", 10).await.concat());
    assert_eq!(by_update[0], eval_id, "updated last, listed first");

    // A model nothing serves (this server has no provider) is refused,
    // and the file its inline items became goes with the refusal.
    let unserved = api
        .post(
            &format!("/evals/{eval_id}/runs"),
            json!({"data_source": completions(inline_items(2))}),
        )
        .await;
    assert_eq!(Api::param(&unserved), "data_source.model", "{}", unserved.1);
    let files = server
        .datasets()
        .await
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets;
    assert_eq!(ids_of(&files), std::slice::from_ref(&file));

    // Deleting the run, then the eval.
    let gone = api
        .ok(api.delete(&format!("/evals/{eval_id}/runs/{run_id}")).await)
        .await;
    assert_eq!(
        gone,
        json!({"object": "eval.run.deleted", "deleted": true, "run_id": run_id})
    );
    openai_error_of(api.get(&format!("/evals/{eval_id}/runs/{run_id}")).await, 404);
    openai_error_of(
        api.get(&format!("{items}/{}", third["id"].as_str().unwrap())).await,
        404,
    );
    let gone = api.ok(api.delete(&format!("/evals/{eval_id}")).await).await;
    assert_eq!(
        gone,
        json!({"object": "eval.deleted", "deleted": true, "eval_id": eval_id})
    );
    openai_error_of(api.get(&format!("/evals/{eval_id}")).await, 404);
    openai_error_of(api.get(&format!("/evals/{eval_id}/runs")).await, 404);
    openai_error_of(api.delete(&format!("/evals/{eval_id}")).await, 404);
    assert_eq!(ids(&pages(&api, "/evals", 10).await.concat()), more);
    server.stop().await;
}

/// Checks an error answer's shape (as `openai_error` does for a response).
fn openai_error_of(answer: (u16, Value), status: u16) -> Value {
    assert_eq!(answer.0, status, "{}", answer.1);
    let error = answer.1["error"].clone();
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{}", answer.1);
    assert!(
        error.get("param").is_some() && error.get("code").is_some(),
        "{}",
        answer.1
    );
    error
}

/// The item number in a chat request ("what is 17" -> 17).
fn item_number(body: &Value) -> usize {
    body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .and_then(|c| c.strip_prefix("what is "))
        .and_then(|n| n.parse().ok())
        .expect("a templated prompt")
}

fn completions(content: Value) -> Value {
    json!({
        "type": "completions",
        "source": content,
        "model": "stub/m",
        "input_messages": {"type": "template", "template": [
            {"role": "system", "content": "Answer with the number."},
            {"type": "message", "role": "user", "content": {"type": "input_text", "text": "what is {{ item.n }}"}}
        ]},
        "sampling_params": {"temperature": 0.0, "seed": 7, "max_completion_tokens": 50, "top_p": 1.0}
    })
}

fn inline_items(n: usize) -> Value {
    let content: Vec<Value> = (0..n)
        .map(|i| json!({"item": {"n": i, "answer": i.to_string()}}))
        .collect();
    json!({"type": "file_content", "content": content})
}

#[tokio::test]
async fn a_completions_run_samples_a_provider_model_on_inline_items() {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(|body| {
        let n = item_number(body);
        Reply::Json(chat_body(&if n == 2 { "wrong".to_string() } else { n.to_string() }))
    });
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let api = Api::new(&server, server.admin_key());
    let eval = api.ok(api.post("/evals", eval_body("sampled")).await).await;
    let eval_id = eval["id"].as_str().unwrap();

    let created = api
        .ok(api
            .post(
                &format!("/evals/{eval_id}/runs"),
                json!({"data_source": completions(inline_items(4))}),
            )
            .await)
        .await;
    let run_id = created["id"].as_str().unwrap();
    assert_eq!(created["model"], "stub/m");
    let source = &created["data_source"];
    assert_eq!(
        (&source["type"], &source["model"]),
        (&json!("completions"), &json!("stub/m"))
    );
    assert_eq!(source["source"]["type"], "file_id", "inline content became a file");
    assert_eq!(
        source["input_messages"],
        json!({"type": "template", "template": [
            {"role": "system", "content": "Answer with the number."},
            {"role": "user", "content": "what is {{ item.n }}"}
        ]})
    );
    assert_eq!(
        source["sampling_params"],
        json!({"temperature": 0.0, "seed": 7, "max_completion_tokens": 50, "top_p": 1.0})
    );
    let file = source["source"]["id"].as_str().unwrap();
    let datasets = server
        .datasets()
        .await
        .get_dataset(proto::GetDatasetRequest { id: file.into() })
        .await
        .unwrap()
        .into_inner()
        .dataset
        .unwrap();
    assert_eq!(datasets.purpose, proto::DatasetPurpose::Eval as i32);

    wait_end(&server, server.admin_key(), run_id).await;
    let run = api.ok(api.get(&format!("/evals/{eval_id}/runs/{run_id}")).await).await;
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(
        run["result_counts"],
        json!({"total": 4, "passed": 3, "failed": 1, "errored": 0})
    );
    assert_eq!(
        run["per_model_usage"],
        json!([{"model_name": "stub/m", "invocation_count": 4, "prompt_tokens": 44,
                "completion_tokens": 28, "total_tokens": 72, "cached_tokens": 0}])
    );
    let body: Value = serde_json::from_str(&stub.requests.lock().unwrap()[0].2).unwrap();
    assert_eq!(
        (
            &body["model"],
            &body["temperature"],
            &body["seed"],
            &body["max_tokens"],
            &body["top_p"]
        ),
        (&json!("m"), &json!(0.0), &json!(7), &json!(50), &json!(1.0))
    );
    let failed = api
        .ok(api
            .get(&format!("/evals/{eval_id}/runs/{run_id}/output_items?status=fail"))
            .await)
        .await;
    let item = &failed["data"][0];
    assert_eq!(item["datasource_item_id"], 2);
    assert_eq!(
        item["sample"],
        json!({
            "input": [
                {"role": "system", "content": "Answer with the number."},
                {"role": "user", "content": "what is 2"}
            ],
            "output": [{"role": "assistant", "content": "wrong"}],
            "finish_reason": "stop",
            "model": "stub/m",
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18, "cached_tokens": 0},
            "error": null,
            "temperature": 0.0,
            "max_completion_tokens": 50,
            "top_p": 1.0,
            "seed": 7
        })
    );

    // Fine-tuning rows are items too: their messages are the input.
    let rows: Vec<Value> = (0..3)
        .map(|i| {
            json!({"item": {"answer": i.to_string(), "messages": [
                {"role": "user", "content": format!("what is {i}")},
                {"role": "assistant", "content": i.to_string()}
            ]}})
        })
        .collect();
    let by_reference = api
        .ok(api
            .post(
                &format!("/evals/{eval_id}/runs"),
                json!({"data_source": {
                    "type": "completions", "model": "stub/m",
                    "source": {"type": "file_content", "content": rows},
                    "input_messages": {"type": "item_reference", "item_reference": "item.messages"}
                }}),
            )
            .await)
        .await;
    assert_eq!(
        by_reference["data_source"]["input_messages"],
        json!({"type": "item_reference", "item_reference": "item.messages"})
    );
    let end = wait_end(&server, server.admin_key(), by_reference["id"].as_str().unwrap()).await;
    let counts = end.result_counts.unwrap();
    assert_eq!((counts.passed, counts.failed), (2, 1));
    server.stop().await;
}

#[tokio::test]
async fn a_run_is_canceled_by_either_route_the_sdks_use() {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(|body| Reply::Gated(Box::new(Reply::Json(chat_body(&item_number(body).to_string())))));
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let api = Api::new(&server, server.admin_key());
    let eval = api.ok(api.post("/evals", eval_body("slow")).await).await;
    let runs = format!("/evals/{}/runs", eval["id"].as_str().unwrap());
    let mut made = Vec::new();
    for _ in 0..3 {
        let run = api
            .ok(api
                .post(&runs, json!({"data_source": completions(inline_items(3))}))
                .await)
            .await;
        made.push(run["id"].as_str().unwrap().to_string());
    }
    tokio::time::timeout(PATIENCE, stub.wait_gated(1))
        .await
        .expect("sampling started");

    let current = api
        .ok(api.post_empty(&format!("{runs}/{}/cancel", made[0])).await)
        .await;
    assert_eq!(
        (&current["id"], &current["status"]),
        (&json!(made[0]), &json!("canceled"))
    );
    let legacy = api.ok(api.post_empty(&format!("{runs}/{}", made[1])).await).await;
    assert_eq!(
        (&legacy["id"], &legacy["status"]),
        (&json!(made[1]), &json!("canceled"))
    );
    let again = openai_error_of(api.post_empty(&format!("{runs}/{}/cancel", made[0])).await, 400);
    assert!(again["message"].as_str().unwrap().contains("canceled"), "{again}");

    let canceled = api.ok(api.get(&format!("{runs}?status=canceled")).await).await;
    let mut listed = ids(canceled["data"].as_array().unwrap());
    listed.sort();
    assert_eq!(listed, made[..2].to_vec());
    assert_eq!(canceled["has_more"], false);
    let all = pages(&api, &runs, 2).await.concat();
    let mut expected = made.clone();
    expected.sort();
    assert_eq!(ids(&all), expected, "oldest first");
    let newest = pages(&api, &format!("{runs}?order=desc"), 2).await.concat();
    assert_eq!(ids(&newest), expected.iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!(
        api.ok(api.get(&format!("{runs}?status=failed")).await).await["data"],
        json!([])
    );

    // Deleting a run that is still going stops it.
    let gone = api.ok(api.delete(&format!("{runs}/{}", made[2])).await).await;
    assert_eq!(gone["deleted"], true);
    openai_error_of(api.post_empty(&format!("{runs}/{}/cancel", made[2])).await, 404);
    stub.open_gate();
    server.stop().await;
}

#[tokio::test]
async fn rest_and_grpc_answer_the_same_eval_run_and_output_item() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let api = Api::new(&server, server.admin_key());
    let eval = api.ok(api.post("/evals", eval_body("same")).await).await;
    let eval_id = eval["id"].as_str().unwrap();
    let run = api
        .ok(api
            .post(
                &format!("/evals/{eval_id}/runs"),
                json!({"name": "r", "metadata": {"k": "v"}, "data_source": {"type": "jsonl", "source":
                    {"type": "file_content", "content": rows_with_samples(4)}}}),
            )
            .await)
        .await;
    let run_id = run["id"].as_str().unwrap();
    wait_end(&server, server.admin_key(), run_id).await;
    let run = api.ok(api.get(&format!("/evals/{eval_id}/runs/{run_id}")).await).await;
    let items = api
        .ok(api.get(&format!("/evals/{eval_id}/runs/{run_id}/output_items")).await)
        .await;
    let item = &items["data"][0];

    let mut grpc = EvalServiceClient::new(server.channel().await);
    let g_eval = grpc
        .get_eval(proto::GetEvalRequest { id: eval_id.into() })
        .await
        .unwrap()
        .into_inner()
        .eval
        .unwrap();
    assert_eq!(eval["id"], json!(g_eval.id));
    assert_eq!(eval["name"], json!(g_eval.name));
    assert_eq!(eval["created_at"], json!(seconds(&g_eval.created_at)));
    assert_eq!(eval["metadata"], json!(g_eval.metadata));
    assert_eq!(
        eval["data_source_config"]["schema"]["properties"]["item"],
        lathe::proto::json::json_from_struct(g_eval.item_schema.unwrap())
    );
    assert!(g_eval.include_sample_schema);
    assert_eq!(g_eval.testing_criteria.len(), 1);
    assert_eq!(
        eval["testing_criteria"][0]["name"],
        json!(g_eval.testing_criteria[0].name)
    );
    assert_eq!(
        eval["testing_criteria"][0],
        lathe::proto::json::json_from_struct(g_eval.testing_criteria[0].grader.clone().unwrap())
    );

    let g_run = grpc
        .get_eval_run(proto::GetEvalRunRequest { id: run_id.into() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(g_run.state, proto::EvalRunState::Completed as i32);
    assert_eq!(run["status"], "completed");
    assert_eq!(
        (run["id"].as_str(), run["eval_id"].as_str()),
        (Some(g_run.id.as_str()), Some(g_run.eval_id.as_str()))
    );
    assert_eq!(run["created_at"], json!(seconds(&g_run.created_at)));
    assert_eq!(
        (&run["name"], &run["metadata"]),
        (&json!(g_run.name), &json!(g_run.metadata))
    );
    assert_eq!(run["model"], json!(g_run.model));
    assert_eq!(run["data_source"]["source"]["id"], json!(g_run.dataset_id));
    let c = g_run.result_counts.unwrap();
    assert_eq!(
        run["result_counts"],
        json!({"total": c.total, "passed": c.passed, "failed": c.failed, "errored": c.errored})
    );
    let per = &g_run.per_criterion[0];
    assert_eq!(
        run["per_testing_criteria_results"],
        json!([{"testing_criteria": per.name, "passed": per.passed, "failed": per.failed}])
    );

    let g_item = grpc
        .get_output_item(proto::GetOutputItemRequest {
            id: item["id"].as_str().unwrap().into(),
        })
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    let g_listed = grpc
        .list_output_items(proto::ListOutputItemsRequest {
            run_id: run_id.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(g_listed[0], g_item);
    assert_eq!(
        (item["id"].as_str(), item["run_id"].as_str()),
        (Some(g_item.id.as_str()), Some(g_item.run_id.as_str()))
    );
    assert_eq!(item["datasource_item_id"], json!(g_item.index));
    assert_eq!(item["created_at"], json!(seconds(&g_item.created_at)));
    assert_eq!(item["status"], "fail");
    assert_eq!(g_item.status, proto::OutputItemStatus::Fail as i32);
    assert_eq!(
        item["datasource_item"],
        lathe::proto::json::json_from_struct(g_item.item.unwrap())
    );
    assert_eq!(item["sample"]["output"][0]["content"], json!(g_item.sample));
    let r = &g_item.results[0];
    assert_eq!(
        (
            &item["results"][0]["name"],
            &item["results"][0]["type"],
            &item["results"][0]["score"],
            &item["results"][0]["passed"]
        ),
        (&json!(r.name), &json!(r.r#type), &json!(r.score), &json!(r.passed))
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_eval_input_is_a_400_naming_the_param_and_stores_nothing() {
    let (_stub, url) = crate::common::openai_stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let api = Api::new(&server, server.admin_key());
    let with = |patch: Value| {
        let mut body = eval_body("bad");
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases = [
        (with(json!({"colour": "red"})), "colour"),
        (with(json!({"name": 5})), "name"),
        (with(json!({"name": ""})), "name"),
        (
            with(json!({"data_source_config": {"type": "logs", "metadata": {"usecase": "chat"}}})),
            "data_source_config.type",
        ),
        (
            with(json!({"data_source_config": {"type": "custom"}})),
            "data_source_config.item_schema",
        ),
        (
            with(json!({"data_source_config": {"type": "custom", "item_schema": {"type": "object"}, "extra": 1}})),
            "data_source_config.extra",
        ),
        (
            with(json!({"data_source_config": {"type": "custom", "item_schema": {"type": "thing"}}})),
            "data_source_config.item_schema.type",
        ),
        (with(json!({"testing_criteria": "exact"})), "testing_criteria"),
        (with(json!({"testing_criteria": []})), "testing_criteria"),
        (
            with(
                json!({"testing_criteria": [{"type": "string_check", "name": "x", "operation": "nope",
                "input": "{{ sample.output_text }}", "reference": "a"}]}),
            ),
            "testing_criteria[0].operation",
        ),
        (
            with(json!({"testing_criteria": [{"type": "text_similarity", "name": "sim",
                "evaluation_metric": "fuzzy_match", "input": "{{ sample.output_text }}", "reference": "a"}]})),
            "testing_criteria[0].pass_threshold",
        ),
        (
            with(
                json!({"testing_criteria": [{"type": "text_similarity", "name": "sim", "pass_threshold": "high",
                "evaluation_metric": "fuzzy_match", "input": "{{ sample.output_text }}", "reference": "a"}]}),
            ),
            "testing_criteria[0].pass_threshold",
        ),
        (with(json!({"metadata": {"k": 1}})), "metadata.k"),
    ];
    for (body, param) in cases {
        let answer = api.post("/evals", body.clone()).await;
        openai_error_of(answer.clone(), 400);
        assert_eq!(Api::param(&answer), param, "{body}: {}", answer.1);
    }
    assert_eq!(
        api.ok(api.get("/evals").await).await["data"],
        json!([]),
        "no eval stored"
    );

    // Bad runs store no run and no file.
    let eval = api.ok(api.post("/evals", eval_body("good")).await).await;
    let runs = format!("/evals/{}/runs", eval["id"].as_str().unwrap());
    let file = upload_rows(&server, server.admin_key(), &rows_with_samples(2)).await;
    let jsonl = |source: Value| json!({"data_source": {"type": "jsonl", "source": source}});
    let sampled_badly = |patch: Value| {
        let mut ds = completions(inline_items(2));
        for (k, v) in patch.as_object().unwrap() {
            ds[k] = v.clone();
        }
        json!({"data_source": ds})
    };
    let cases = [
        (
            json!({"data_source": {"type": "responses", "source": {"type": "file_id", "id": file}}}),
            "data_source.type",
        ),
        (json!({"data_source": {"type": "jsonl"}}), "data_source"),
        (jsonl(json!({"type": "file_id"})), "data_source.source.id"),
        (jsonl(json!({"type": "stored_completions"})), "data_source.source.type"),
        (
            jsonl(json!({"type": "file_id", "id": "ds_00000000000000000000000000"})),
            "",
        ),
        (
            jsonl(json!({"type": "file_content", "content": [{"item": {"n": 1}}]})),
            "data_source.source.content",
        ),
        (
            jsonl(
                json!({"type": "file_content", "content": [{"item": {"answer": "1"}, "sample": {"output_text": "1"}, "x": 1}]}),
            ),
            "data_source.source.content[0].x",
        ),
        (
            jsonl(json!({"type": "file_content", "content": [{"item": {"answer": "1"}, "sample": "1"}]})),
            "data_source.source.content[0].sample",
        ),
        (sampled_badly(json!({"model": null})), "data_source.model"),
        (
            sampled_badly(json!({"sampling_params": {"temperature": 5.0}})),
            "data_source.sampling_params.temperature",
        ),
        (
            sampled_badly(json!({"sampling_params": {"max_completion_tokens": 0}})),
            "data_source.sampling_params.max_completion_tokens",
        ),
        (
            sampled_badly(json!({"sampling_params": {"reasoning_effort": "high"}})),
            "data_source.sampling_params.reasoning_effort",
        ),
        (
            sampled_badly(json!({"sampling_params": {"frequency_penalty": 1}})),
            "data_source.sampling_params.frequency_penalty",
        ),
        (
            sampled_badly(json!({"input_messages": {"type": "template", "template": [
                {"role": "user", "content": "{{ item.missing }}"}]}})),
            "data_source.input_messages.template[0]",
        ),
        (
            sampled_badly(json!({"input_messages": {"type": "template", "template": [
                {"role": "user", "content": "{{ sample.output_text }}"}]}})),
            "data_source.input_messages.template[0].content",
        ),
        (
            json!({"data_source": {"type": "jsonl", "source": {"type": "file_id", "id": file}}, "metadata": {"": "x"}}),
            "metadata[]",
        ),
    ];
    for (body, param) in cases {
        let answer = api.post(&runs, body.clone()).await;
        if param.is_empty() {
            openai_error_of(answer, 404);
            continue;
        }
        openai_error_of(answer.clone(), 400);
        assert_eq!(Api::param(&answer), param, "{body}: {}", answer.1);
    }
    assert_eq!(api.ok(api.get(&runs).await).await["data"], json!([]), "no run stored");
    let files = server
        .datasets()
        .await
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets;
    assert_eq!(files.len(), 1, "no file left from inline content: {files:?}");

    // Bad queries.
    for (query, param) in [
        ("/evals?limit=0", "limit"),
        ("/evals?order=sideways", "order"),
        ("/evals?order_by=name", "order_by"),
        ("/evals?after=eval_00000000000000000000000000", "after"),
        ("/evals?colour=red", "colour"),
        (&format!("{runs}?status=maybe") as &str, "status"),
        (&format!("{runs}?after=evalrun_00000000000000000000000000"), "after"),
    ] {
        let answer = api.get(query).await;
        openai_error_of(answer.clone(), 400);
        assert_eq!(Api::param(&answer), param, "{query}: {}", answer.1);
    }
    let response = http()
        .post(format!("{}/v1/evals", server.url()))
        .bearer_auth(server.admin_key())
        .body("not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    openai_error(response, 400).await;
    server.stop().await;
}

/// Makes project `id` with a member key; returns the key.
async fn project_key(server: &TestServer, id: &str) -> String {
    let mut admin = AdminServiceClient::new(server.channel().await);
    admin
        .create_project(proto::CreateProjectRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: id.into(),
            name: "ci".into(),
            owner: "ci@example.com".into(),
            role: proto::Role::Member as i32,
        })
        .await
        .unwrap()
        .into_inner()
        .secret
}

#[tokio::test]
async fn another_projects_evals_runs_and_items_are_not_found_over_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let a = Api::new(&server, &project_key(&server, "a").await);
    let b = Api::new(&server, &project_key(&server, "b").await);
    let eval = a.ok(a.post("/evals", eval_body("a's")).await).await;
    let eval_id = eval["id"].as_str().unwrap();
    let run = a
        .ok(a
            .post(
                &format!("/evals/{eval_id}/runs"),
                json!({"data_source": {"type": "jsonl", "source":
                    {"type": "file_content", "content": rows_with_samples(2)}}}),
            )
            .await)
        .await;
    let run_id = run["id"].as_str().unwrap();
    wait_end(&server, &a.key, run_id).await;
    let items = a
        .ok(a.get(&format!("/evals/{eval_id}/runs/{run_id}/output_items")).await)
        .await;
    let item_id = items["data"][0]["id"].as_str().unwrap();

    let eval_path = format!("/evals/{eval_id}");
    let run_path = format!("{eval_path}/runs/{run_id}");
    for answer in [
        b.get(&eval_path).await,
        b.post(&eval_path, json!({"name": "b's now"})).await,
        b.get(&format!("{eval_path}/runs")).await,
        b.post(
            &format!("{eval_path}/runs"),
            json!({"data_source": {"type": "jsonl", "source": {"type": "file_content", "content": rows_with_samples(1)}}}),
        )
        .await,
        b.get(&run_path).await,
        b.post_empty(&format!("{run_path}/cancel")).await,
        b.post_empty(&run_path).await,
        b.get(&format!("{run_path}/output_items")).await,
        b.get(&format!("{run_path}/output_items/{item_id}")).await,
        b.delete(&run_path).await,
        b.delete(&eval_path).await,
    ] {
        let error = openai_error_of(answer, 404);
        assert_eq!(error["code"], "not_found");
    }
    assert_eq!(b.ok(b.get("/evals").await).await["data"], json!([]));
    let after = b.get(&format!("/evals?after={eval_id}")).await;
    assert_eq!(Api::param(&after), "after");
    // A's own run of another of its evals does not answer under this eval.
    let other = a.ok(a.post("/evals", eval_body("other")).await).await;
    let crossed = a
        .get(&format!("/evals/{}/runs/{run_id}", other["id"].as_str().unwrap()))
        .await;
    openai_error_of(crossed, 404);

    // Nothing of A changed.
    assert_eq!(a.ok(a.get(&eval_path).await).await, eval);
    assert_eq!(a.ok(a.get(&run_path).await).await["status"], "completed");
    let files = proto::dataset_service_client::DatasetServiceClient::new(server.channel_with(&b.key).await)
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets;
    assert!(files.is_empty(), "B's refused run left no file: {files:?}");
    server.stop().await;
}
