//! Datasets made from eval runs' answers over real gRPC: distillation into
//! SFT rows and preference pairs into DPO rows. The models are the test-only
//! OpenAI stub, scripted per model so which items pass is known.

use crate::common::openai_stub::{Reply, chat_body};
use crate::common::*;
use crate::evals::{
    config, create_eval, create_eval_with, create_run, evals, item_number, model_source_of, numbered, upload_items,
    violations, watch_all,
};
use lathe::client::Channel;
use lathe::proto::json::value_from_json;
use lathe::proto::{self, dataset_service_client::DatasetServiceClient};
use serde_json::{Value, json};
use tonic::Code;

fn source(model: &str) -> proto::create_eval_run_request::Source {
    model_source_of(&format!("stub/{model}"))
}

/// The teacher answers wrongly on multiples of 4 and fails on 11; the
/// student answers wrongly on multiples of 3.
fn teacher_and_student(body: &Value) -> Reply {
    let n = item_number(body);
    match body["model"].as_str() {
        Some("teacher") if n == 11 => Reply::Status(500, None),
        Some("teacher") if n.is_multiple_of(4) => Reply::Json(chat_body("nope")),
        Some("student") if n.is_multiple_of(3) => Reply::Json(chat_body("wrong")),
        // Never answers: its runs stay unfinished.
        Some("gated") => Reply::Gated(Box::new(Reply::Json(chat_body("late")))),
        _ => Reply::Json(chat_body(&n.to_string())),
    }
}

struct Runs {
    server: TestServer,
    datasets: DatasetServiceClient<Channel>,
    items: String,
    teacher: String,
    student: String,
    _dir: tempfile::TempDir,
    _stub: std::sync::Arc<crate::common::openai_stub::Stub>,
}

/// A finished teacher run and student run over 12 numbered items.
async fn runs() -> Runs {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(teacher_and_student);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let items = upload_items(&server, &numbered(12)).await;
    let mut finished = Vec::new();
    for model in ["teacher", "student"] {
        let run = create_run(&mut client, &eval_id, &items, source(model), 4, 1.0).await;
        let (_, end) = watch_all(&mut client, &run.id, 0).await;
        assert_eq!(end.state, proto::EvalRunState::Completed as i32, "{end:?}");
        finished.push(run.id);
    }
    let datasets = server.datasets().await;
    Runs {
        server,
        datasets,
        items,
        teacher: finished[0].clone(),
        student: finished[1].clone(),
        _dir: dir,
        _stub: stub,
    }
}

async fn rows(datasets: &mut DatasetServiceClient<Channel>, id: &str) -> Vec<Value> {
    let (bytes, _) = download_all(datasets, id).await;
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn counts(c: Option<proto::SynthesisCounts>) -> (u64, u64, u64, u64, u64) {
    let c = c.unwrap();
    (c.items, c.kept, c.below_threshold, c.errored, c.unusable)
}

fn distill(run: &str) -> proto::CreateDistilledDatasetRequest {
    proto::CreateDistilledDatasetRequest {
        run_id: run.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn distillation_keeps_the_answers_that_passed_as_sft_rows() {
    let mut r = runs().await;
    let made = r
        .datasets
        .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
            metadata: [("team".to_string(), "support".to_string())].into(),
            ..distill(&r.teacher)
        })
        .await
        .unwrap()
        .into_inner();
    // 0, 4 and 8 fail; 11 errored; the other 8 passed.
    assert_eq!(counts(made.counts), (12, 8, 3, 1, 0));
    let d = made.dataset.unwrap();
    assert_eq!(d.state, proto::DatasetState::Ready as i32, "{d:?}");
    assert_eq!(d.purpose, proto::DatasetPurpose::Sft as i32);
    assert_eq!(d.filename, format!("distilled-{}.jsonl", r.teacher));
    let report = d.validation.as_ref().unwrap();
    assert_eq!((report.valid_rows, report.errors.len()), (8, 0), "{report:?}");
    // The rows' metadata is no unrecognized key (the warnings are the
    // prompt's: it has no system message).
    assert!(!report.warning_counts.contains_key("unrecognized_key"), "{report:?}");
    assert_eq!(d.metadata["team"], "support");
    assert_eq!(d.metadata["lathe.synthesis"], "distillation");
    assert_eq!(d.metadata["lathe.source_runs"], r.teacher);

    let rows = rows(&mut r.datasets, &d.id).await;
    let kept: Vec<usize> = rows
        .iter()
        .map(|row| row["messages"][1]["content"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(kept, [1, 2, 3, 5, 6, 7, 9, 10], "in dataset order");
    assert_eq!(
        rows[0]["messages"],
        json!([{"role": "user", "content": "what is 1"}, {"role": "assistant", "content": "1"}])
    );
    let provenance = &rows[0]["metadata"];
    assert_eq!(provenance["run_id"], r.teacher.as_str());
    assert_eq!(provenance["model"], "stub/teacher");
    assert_eq!(provenance["scores"], json!({"exact": 1.0}));
    let mut evals = evals(&r.server).await;
    let item = evals
        .get_output_item(proto::GetOutputItemRequest {
            id: provenance["output_item_id"].as_str().unwrap().into(),
        })
        .await
        .expect("the row names its output item")
        .into_inner();
    assert_eq!(item.item.unwrap().sample, "1");

    // A score threshold on a criterion: failed items score 0, so a
    // threshold of 0 keeps every graded item and never the errored one.
    let all = r
        .datasets
        .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
            criterion: "exact".into(),
            min_score: Some(0.0),
            filename: "all.jsonl".into(),
            ..distill(&r.teacher)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(all.counts), (12, 11, 0, 1, 0));
    assert_eq!(all.dataset.unwrap().filename, "all.jsonl");

    // The CLI makes the same dataset.
    let addr = r.server.url();
    let out = tokio::task::spawn_blocking({
        let teacher = r.teacher.clone();
        move || lathe(&addr, &["datasets", "distill", &teacher, "--json"])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["counts"]["kept"], 8);
    assert_eq!(printed["dataset"]["purpose"], "sft");
}

#[tokio::test]
async fn preference_pairs_prefer_the_higher_scored_answer_or_the_reference() {
    let mut r = runs().await;
    let made = r
        .datasets
        .create_preference_dataset(proto::CreatePreferenceDatasetRequest {
            run_id: r.student.clone(),
            preferred: Some(proto::create_preference_dataset_request::Preferred::PreferredRunId(
                r.teacher.clone(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The runs disagree on 3, 6, 9 (the teacher passed) and 4, 8 (the
    // student passed); both failed 0 and passed the rest; 11 errored.
    assert_eq!(counts(made.counts), (12, 5, 6, 1, 0));
    let d = made.dataset.unwrap();
    assert_eq!(d.purpose, proto::DatasetPurpose::Dpo as i32);
    assert_eq!(d.state, proto::DatasetState::Ready as i32, "{d:?}");
    let report = d.validation.as_ref().unwrap();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(!report.warning_counts.contains_key("unrecognized_key"), "{report:?}");
    assert_eq!(d.metadata["lathe.source_runs"], format!("{},{}", r.student, r.teacher));
    let made_rows = rows(&mut r.datasets, &d.id).await;
    let pairs: Vec<(String, String)> = made_rows
        .iter()
        .map(|row| {
            (
                row["preferred_output"][0]["content"].as_str().unwrap().to_string(),
                row["non_preferred_output"][0]["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("3", "wrong"),
        ("4", "nope"),
        ("6", "wrong"),
        ("8", "nope"),
        ("9", "wrong"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(pairs, expected);
    assert_eq!(
        made_rows[0]["input"]["messages"],
        json!([{"role": "user", "content": "what is 3"}])
    );
    assert_eq!(made_rows[1]["metadata"]["preferred"]["run_id"], r.student.as_str());
    assert_eq!(made_rows[1]["metadata"]["non_preferred"]["run_id"], r.teacher.as_str());

    // Against the items' reference answers: the student's failed answers.
    let made = r
        .datasets
        .create_preference_dataset(proto::CreatePreferenceDatasetRequest {
            run_id: r.student.clone(),
            preferred: Some(proto::create_preference_dataset_request::Preferred::ReferenceField(
                "/answer".into(),
            )),
            criterion: "exact".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(made.counts), (12, 4, 8, 0, 0));
    let rows = rows(&mut r.datasets, &made.dataset.unwrap().id).await;
    let preferred: Vec<&str> = rows
        .iter()
        .map(|row| row["preferred_output"][0]["content"].as_str().unwrap())
        .collect();
    assert_eq!(preferred, ["0", "3", "6", "9"]);
    assert!(
        rows.iter()
            .all(|row| row["non_preferred_output"][0]["content"] == "wrong")
    );
}

#[tokio::test]
async fn bad_requests_are_refused_and_store_nothing() {
    let mut r = runs().await;
    let before = r
        .datasets
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets
        .len();

    let err = r.datasets.create_distilled_dataset(distill("nope")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(violations(&err)[0].0, "run_id");
    let unknown = lathe::ids::new_id("evalrun");
    let err = r
        .datasets
        .create_distilled_dataset(distill(&unknown))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let err = r
        .datasets
        .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
            min_score: Some(0.5),
            ..distill(&r.teacher)
        })
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "criterion");
    let err = r
        .datasets
        .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
            criterion: "fuzzy".into(),
            min_score: Some(0.5),
            ..distill(&r.teacher)
        })
        .await
        .unwrap_err();
    let v = violations(&err);
    assert_eq!(v[0].0, "criterion");
    assert!(v[0].1.contains("exact"), "names the criteria it has: {}", v[0].1);

    // A selection nothing meets.
    let err = r
        .datasets
        .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
            criterion: "exact".into(),
            min_score: Some(2.0),
            ..distill(&r.teacher)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("11 did not meet the selection"),
        "{}",
        err.message()
    );

    // A run that has not finished.
    let mut evals_client = evals(&r.server).await;
    let eval = evals_client
        .get_eval_run(proto::GetEvalRunRequest { id: r.teacher.clone() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap()
        .eval_id;
    let unfinished = create_run(&mut evals_client, &eval, &r.items, source("gated"), 1, 1.0).await;
    let err = r
        .datasets
        .create_distilled_dataset(distill(&unfinished.id))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("finished run"), "{}", err.message());
    evals_client
        .cancel_eval_run(proto::CancelEvalRunRequest { id: unfinished.id })
        .await
        .unwrap();

    let pairs = |preferred| proto::CreatePreferenceDatasetRequest {
        run_id: r.student.clone(),
        preferred,
        ..Default::default()
    };
    use proto::create_preference_dataset_request::Preferred;
    let err = r.datasets.create_preference_dataset(pairs(None)).await.unwrap_err();
    assert_eq!(violations(&err)[0].0, "preferred");
    let err = r
        .datasets
        .create_preference_dataset(pairs(Some(Preferred::ReferenceField("answer".into()))))
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "reference_field");
    let err = r
        .datasets
        .create_preference_dataset(pairs(Some(Preferred::PreferredRunId(r.student.clone()))))
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "preferred_run_id");

    // A run over other items does not pair.
    let mut evals = evals_client;
    let other_items = upload_items(&r.server, &numbered(3)).await;
    assert_ne!(other_items, r.items);
    let other = create_run(&mut evals, &eval, &other_items, source("teacher"), 1, 1.0).await;
    watch_all(&mut evals, &other.id, 0).await;
    let err = r
        .datasets
        .create_preference_dataset(pairs(Some(Preferred::PreferredRunId(other.id.clone()))))
        .await
        .unwrap_err();
    let v = violations(&err);
    assert_eq!(v[0].0, "preferred_run_id");
    assert!(v[0].1.contains("same items"), "{}", v[0].1);

    let after = r
        .datasets
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets
        .len();
    assert_eq!(after, before + 1, "only the second item file was stored");
}

/// A chat completion that calls `name` with `arguments` (JSON text).
fn tool_call_body(name: &str, arguments: &str) -> String {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}]
        }}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    })
    .to_string()
}

/// The teacher writes "please call NAME with ARGS" for the call in its
/// prompt; the checker calls what a request names, except that it mistakes
/// Tokyo for Paris.
fn teacher_and_checker(body: &Value) -> Reply {
    let content = body["messages"][0]["content"].as_str().unwrap_or_default();
    match body["model"].as_str() {
        Some("teacher") => {
            let prompt: Value = serde_json::from_str(content.strip_prefix("Request for: ").unwrap()).unwrap();
            Reply::Json(chat_body(&format!(
                "please call {} with {}",
                prompt["function"].as_str().unwrap(),
                prompt["arguments"]
            )))
        }
        Some("checker") => {
            assert_eq!(
                body["tools"].as_array().map(Vec::len),
                Some(2),
                "the checker is offered the tools"
            );
            let (name, args) = content
                .strip_prefix("please call ")
                .and_then(|r| r.split_once(" with "))
                .unwrap();
            Reply::Json(tool_call_body(name, &args.replace("Tokyo", "Paris")))
        }
        other => panic!("unexpected model {other:?}"),
    }
}

#[tokio::test]
async fn function_calling_data_from_tool_schemas_through_a_teacher_and_a_checker() {
    if !std::path::Path::new("/usr/bin/python3").exists() {
        eprintln!("skipping: the checking grader is a python grader and needs /usr/bin/python3");
        return;
    }
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(teacher_and_checker);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut datasets = server.datasets().await;
    let mut evals = evals(&server).await;
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object",
            "required": ["city"], "properties": {
                "city": {"type": "string", "enum": ["Paris", "Tokyo"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}},
        {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}
    ]);
    let tool_list = lathe::proto::json::list_value(tools.as_array().unwrap());

    // 1. The target calls: city 2 × unit 2+absent, and ping().
    let made = datasets
        .create_tool_call_items(proto::CreateToolCallItemsRequest {
            tools: Some(tool_list.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let functions: Vec<(String, u64, u64)> = made
        .functions
        .iter()
        .map(|f| (f.name.clone(), f.combinations, f.chosen))
        .collect();
    assert_eq!(functions, [("get_weather".into(), 6, 6), ("ping".into(), 1, 1)]);
    let calls = made.dataset.unwrap();
    assert_eq!(calls.purpose, proto::DatasetPurpose::Eval as i32);
    let items = rows(&mut datasets, &calls.id).await;
    assert_eq!(items.len(), 7);
    assert_eq!(items[6]["call_text"], "ping()");
    assert_eq!(items[0]["tool"]["function"]["name"], "get_weather");

    // 2. The teacher writes a request for each call.
    let nonempty = proto::TestingCriterion {
        grader: Some(lathe::proto::json::struct_from_json(&json!({
            "type": "string_check", "name": "wrote something", "operation": "ne",
            "input": "{{ sample.output_text }}", "reference": ""
        }))),
        ..Default::default()
    };
    let writing = create_eval_with(&mut evals, "requests", nonempty).await;
    let prompt = |content: &str| {
        Some(prost_types::ListValue {
            values: vec![value_from_json(&json!({"role": "user", "content": content}))],
        })
    };
    let teacher = create_run(
        &mut evals,
        &writing,
        &calls.id,
        proto::create_eval_run_request::Source::Model(proto::ModelSource {
            model: "stub/teacher".into(),
            input_messages: prompt(
                r#"Request for: {"function": "{{ item.function }}", "arguments": {{ item.arguments }}}"#,
            ),
            ..Default::default()
        }),
        4,
        0.0,
    )
    .await;
    let (_, end) = watch_all(&mut evals, &teacher.id, 0).await;
    assert_eq!(end.result_counts.unwrap().passed, 7, "{end:?}");

    // 3. The requests as items for the checker.
    let requests = datasets
        .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
            purpose: proto::DatasetPurpose::Eval as i32,
            answer_field: "request".into(),
            ..distill(&teacher.id)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(requests.counts), (7, 7, 0, 0, 0));
    let requests = requests.dataset.unwrap();
    assert_eq!(requests.purpose, proto::DatasetPurpose::Eval as i32);
    let request_items = rows(&mut datasets, &requests.id).await;
    assert_eq!(request_items[6]["request"], "please call ping with {}");
    assert_eq!(request_items[6]["request_from"]["run_id"], teacher.id.as_str());
    assert_eq!(request_items[6]["function"], "ping", "the item's own fields stay");

    // 4. The checker answers each request with the tools; a python grader
    // keeps the calls that reproduce the target.
    let same_call = proto::TestingCriterion {
        grader: Some(lathe::proto::json::struct_from_json(&json!({
            "type": "python", "name": "same call",
            "source": ([
                "import json",
                "def grade(sample, item):",
                "    calls = sample.get('output_tools') or []",
                "    if len(calls) != 1:",
                "        return 0.0",
                "    f = calls[0]['function']",
                "    same = f['name'] == item['function'] and json.loads(f['arguments'] or '{}') == item['arguments']",
                "    return float(same)",
            ].join("\n"))
        }))),
        pass_threshold: Some(1.0),
        ..Default::default()
    };
    let checking = create_eval_with(&mut evals, "check calls", same_call).await;
    // Through the CLI, which reads the tools from a file (`--tools`).
    let tools_file = dir.path().join("checker-tools.json");
    std::fs::write(&tools_file, tools.to_string()).unwrap();
    let addr = server.url();
    let requests_id = requests.id.clone();
    let out = tokio::task::spawn_blocking(move || {
        lathe(
            &addr,
            &[
                "evals",
                "run",
                &checking,
                "--dataset",
                &requests_id,
                "--model",
                "stub/checker",
                "--prompt",
                "{{ item.request }}",
                "--tools",
                tools_file.to_str().unwrap(),
                "--concurrency",
                "4",
                "--json",
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let checker: Value = serde_json::from_slice(&out.stdout).unwrap();
    let checker_id = checker["id"].as_str().unwrap().to_string();
    let (_, end) = watch_all(&mut evals, &checker_id, 0).await;
    let result = end.result_counts.unwrap();
    // The three Tokyo calls came back as Paris.
    assert_eq!((result.passed, result.failed, result.errored), (4, 3, 0), "{end:?}");

    // 5. The reproduced calls distil into SFT rows with tools and tool_calls.
    let sft = datasets
        .create_distilled_dataset(distill(&checker_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(sft.counts), (7, 4, 3, 0, 0));
    let d = sft.dataset.unwrap();
    assert_eq!(
        (d.purpose, d.state),
        (proto::DatasetPurpose::Sft as i32, proto::DatasetState::Ready as i32)
    );
    let rows = rows(&mut datasets, &d.id).await;
    assert!(rows.iter().all(|r| r["tools"].as_array().map(Vec::len) == Some(2)));
    let calls: Vec<(String, Value)> = rows
        .iter()
        .map(|r| {
            let f = &r["messages"][1]["tool_calls"][0]["function"];
            (
                f["name"].as_str().unwrap().to_string(),
                serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    assert!(calls.iter().all(|(_, args)| args.get("city") != Some(&json!("Tokyo"))));
    assert!(calls.contains(&("ping".to_string(), json!({}))));
    assert_eq!(rows[0]["messages"][0]["role"], "user");
    assert!(
        rows[0]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .starts_with("please call get_weather")
    );
}

#[tokio::test]
async fn tool_schemas_that_cannot_make_calls_are_refused_naming_the_function_and_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut datasets = server.datasets().await;
    let tools = json!([{"type": "function", "function": {"name": "search", "parameters": {"type": "object",
        "required": ["query"], "properties": {"query": {"type": "string"}}}}}]);
    let request = |values: std::collections::HashMap<String, prost_types::ListValue>, max_calls| {
        proto::CreateToolCallItemsRequest {
            tools: Some(lathe::proto::json::list_value(tools.as_array().unwrap())),
            values,
            max_calls,
            ..Default::default()
        }
    };
    let err = datasets
        .create_tool_call_items(request(Default::default(), 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = violations(&err);
    assert_eq!(v[0].0, "tools[0].function.parameters.properties.query");
    assert!(v[0].1.contains("function search, argument query"), "{}", v[0].1);
    let err = datasets
        .create_tool_call_items(request(Default::default(), 1_000_000))
        .await
        .unwrap_err();
    assert_eq!(violations(&err)[0].0, "max_calls");
    let values = [(
        "query".to_string(),
        lathe::proto::json::list_value(&[json!("rust"), json!("grpc")]),
    )]
    .into();
    let made = datasets
        .create_tool_call_items(request(values, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.functions[0].chosen, 2);
    let listed = datasets
        .list_datasets(proto::ListDatasetsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .datasets;
    assert_eq!(listed.len(), 1, "the refused requests stored nothing");

    // The CLI reads the tools and the values from files.
    let tools_file = dir.path().join("tools.json");
    let values_file = dir.path().join("values.json");
    std::fs::write(&tools_file, tools.to_string()).unwrap();
    std::fs::write(&values_file, json!({"query": ["a", "b", "c"]}).to_string()).unwrap();
    let addr = server.url();
    let out = tokio::task::spawn_blocking(move || {
        lathe(
            &addr,
            &[
                "datasets",
                "tool-calls",
                tools_file.to_str().unwrap(),
                "--values",
                values_file.to_str().unwrap(),
                "--max-calls",
                "2",
                "--json",
            ],
        )
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        printed["functions"][0],
        json!({"name": "search", "combinations": 3, "chosen": 2})
    );
    assert_eq!(printed["dataset"]["purpose"], "eval");
}

async fn file_count(server: &TestServer) -> usize {
    let files: Value = crate::rest::http()
        .get(format!("{}/v1/files?limit=100", server.url()))
        .bearer_auth(server.admin_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    files["data"].as_array().unwrap().len()
}

async fn post_lathe(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = crate::rest::http()
        .post(format!("{}/v1/lathe/datasets/{path}", server.url()))
        .bearer_auth(server.admin_key())
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_rest_door_makes_the_same_datasets() {
    let r = runs().await;
    let (status, made) = post_lathe(
        &r.server,
        "distillations",
        json!({"run_id": r.teacher, "metadata": {"team": "support"}}),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["file"]["object"], "file");
    assert_eq!(made["file"]["purpose"], "fine-tune");
    assert_eq!(made["file"]["status"], "processed");
    assert_eq!(
        made["counts"],
        json!({"items": 12, "kept": 8, "below_threshold": 3, "errored": 1, "unusable": 0})
    );
    // The file is one like any other: listed, read back.
    let id = made["file"]["id"].as_str().unwrap();
    let content = crate::rest::http()
        .get(format!("{}/v1/files/{id}/content", r.server.url()))
        .bearer_auth(r.server.admin_key())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(content.lines().count(), 8);

    let (status, items) = post_lathe(
        &r.server,
        "distillations",
        json!({"run_id": r.teacher, "purpose": "evals", "answer_field": "reference"}),
    )
    .await;
    assert_eq!((status, &items["file"]["purpose"]), (200, &json!("evals")), "{items}");

    let (status, pairs) = post_lathe(
        &r.server,
        "preference_pairs",
        json!({"run_id": r.student, "preferred_run_id": r.teacher}),
    )
    .await;
    assert_eq!(status, 200, "{pairs}");
    assert!(pairs["counts"]["kept"].as_u64().unwrap() > 0, "{pairs}");

    let tools = json!([{"type": "function", "function": {"name": "set_mode", "parameters": {
        "type": "object", "properties": {"mode": {"type": "string", "enum": ["a", "b", "c"]}},
        "required": ["mode"]}}}]);
    let (status, calls) = post_lathe(&r.server, "tool_call_items", json!({"tools": tools, "seed": 1})).await;
    assert_eq!(status, 200, "{calls}");
    assert_eq!(
        calls["functions"],
        json!([{"name": "set_mode", "combinations": 3, "chosen": 3}])
    );

    // Errors name the body's fields; a selection that keeps nothing is a
    // 400 that stores nothing.
    let (status, error) = post_lathe(
        &r.server,
        "distillations",
        json!({"run_id": r.teacher, "purpose": "dpo"}),
    )
    .await;
    assert_eq!((status, &error["error"]["param"]), (400, &json!("purpose")), "{error}");
    let (status, error) = post_lathe(
        &r.server,
        "preference_pairs",
        json!({"run_id": r.student, "preferred_run_id": r.teacher, "reference_field": "/answer"}),
    )
    .await;
    assert_eq!(
        (status, &error["error"]["param"]),
        (400, &json!("preferred_run_id")),
        "{error}"
    );
    let (status, error) = post_lathe(
        &r.server,
        "tool_call_items",
        json!({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}]}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    assert!(
        error["error"]["param"].as_str().unwrap().starts_with("tools[0]"),
        "{error}"
    );
    let (status, error) = post_lathe(
        &r.server,
        "distillations",
        json!({"run_id": r.teacher, "colour": "red"}),
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let files_before = file_count(&r.server).await;
    let (status, error) = post_lathe(&r.server, "from_completions", json!({"model": "nobody"})).await;
    assert_eq!(
        (status, &error["error"]["code"]),
        (400, &json!("invalid_state")),
        "{error}"
    );
    let files_after = file_count(&r.server).await;
    assert_eq!(files_before, files_after);
    r.server.stop().await;
}
