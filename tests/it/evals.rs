//! Evals over real gRPC: a test server on port 0 whose HTTP provider is the
//! test-only OpenAI stub, so sampling, faults and restarts are scripted.

use std::time::Duration;

use crate::common::openai_stub::{Reply, Stub, chat_body};
use crate::common::*;
use lathe::client::Channel;
use lathe::config::ServeConfig;
use lathe::proto::json::struct_from_json;
use lathe::proto::{self, eval_service_client::EvalServiceClient, watch_eval_run_response::Payload};
use serde_json::{Value, json};

/// A safety net for waits on events, not a pacing device.
const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn config(dir: &std::path::Path, stub_url: &str) -> ServeConfig {
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

pub(crate) async fn evals(server: &TestServer) -> EvalServiceClient<Channel> {
    EvalServiceClient::new(server.channel().await)
}

pub(crate) async fn upload_items(server: &TestServer, rows: &[Value]) -> String {
    let bytes: String = rows.iter().map(|r| format!("{r}\n")).collect();
    let mut client = server.datasets().await;
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

pub(crate) fn exact_match() -> proto::TestingCriterion {
    proto::TestingCriterion {
        grader: Some(struct_from_json(&json!({
            "type": "string_check", "name": "exact", "operation": "eq",
            "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"
        }))),
        pass_threshold: None,
        name: String::new(),
    }
}

pub(crate) async fn create_eval(client: &mut EvalServiceClient<Channel>) -> String {
    client
        .create_eval(proto::CreateEvalRequest {
            name: "arithmetic".into(),
            item_schema: Some(struct_from_json(&json!({
                "type": "object", "required": ["answer"], "properties": {"answer": {"type": "string"}}
            }))),
            testing_criteria: vec![exact_match()],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .expect("create eval")
        .into_inner()
        .eval
        .unwrap()
        .id
}

/// An eval of one criterion; its id.
pub(crate) async fn create_eval_with(
    client: &mut EvalServiceClient<Channel>,
    name: &str,
    criterion: proto::TestingCriterion,
) -> String {
    client
        .create_eval(proto::CreateEvalRequest {
            name: name.into(),
            testing_criteria: vec![criterion],
            ..Default::default()
        })
        .await
        .expect("create eval")
        .into_inner()
        .eval
        .unwrap()
        .id
}

pub(crate) fn numbered(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"n": i, "answer": i.to_string()})).collect()
}

fn model_source() -> proto::create_eval_run_request::Source {
    model_source_of("stub/m")
}

/// `model` asked "what is {{ item.n }}", at temperature 0 with seed 7.
pub(crate) fn model_source_of(model: &str) -> proto::create_eval_run_request::Source {
    proto::create_eval_run_request::Source::Model(proto::ModelSource {
        model: model.into(),
        input_messages: Some(prost_types::ListValue {
            values: vec![lathe::proto::json::value_from_json(
                &json!({"role": "user", "content": "what is {{ item.n }}"}),
            )],
        }),
        sampling_params: Some(proto::EvalSamplingParams {
            temperature: Some(0.0),
            seed: Some(7),
            ..Default::default()
        }),
        tools: None,
        response_format: None,
        item_reference: String::new(),
    })
}

/// The item number in a chat request ("what is 17" -> 17).
pub(crate) fn item_number(body: &Value) -> usize {
    body["messages"][0]["content"]
        .as_str()
        .and_then(|c| c.strip_prefix("what is "))
        .and_then(|n| n.parse().ok())
        .expect("a templated prompt")
}

/// Right answers except for multiples of three.
fn answer(n: usize) -> Reply {
    let text = if n.is_multiple_of(3) {
        "wrong".to_string()
    } else {
        n.to_string()
    };
    Reply::Json(chat_body(&text))
}

pub(crate) async fn create_run(
    client: &mut EvalServiceClient<Channel>,
    eval_id: &str,
    dataset_id: &str,
    source: proto::create_eval_run_request::Source,
    concurrency: u32,
    error_rate_threshold: f64,
) -> proto::EvalRun {
    client
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: eval_id.into(),
            dataset_id: dataset_id.into(),
            source: Some(source),
            concurrency,
            error_rate_threshold,
            name: String::new(),
            ..Default::default()
        })
        .await
        .expect("create run")
        .into_inner()
        .run
        .unwrap()
}

/// Reads a watch to its end: the progress events' sequence numbers, and the
/// terminal run. Fails on anything after the terminal message.
pub(crate) async fn watch_all(
    client: &mut EvalServiceClient<Channel>,
    run_id: &str,
    after_seq: u64,
) -> (Vec<proto::EvalProgress>, proto::EvalRun) {
    let mut stream = client
        .watch_eval_run(proto::WatchEvalRunRequest {
            run_id: run_id.into(),
            after_seq,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut progress = Vec::new();
    loop {
        let msg = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("watch stalled")
            .expect("watch message")
            .expect("the stream ends with a terminal message");
        match msg.payload.expect("payload") {
            Payload::Progress(p) => progress.push(p),
            Payload::End(run) => {
                assert!(stream.message().await.expect("after end").is_none(), "end is last");
                return (progress, run);
            }
        }
    }
}

fn seqs(progress: &[proto::EvalProgress]) -> Vec<u64> {
    progress.iter().map(|p| p.seq).collect()
}

async fn all_items(
    client: &mut EvalServiceClient<Channel>,
    run_id: &str,
    status: proto::OutputItemStatus,
) -> Vec<proto::OutputItem> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_output_items(proto::ListOutputItemsRequest {
                run_id: run_id.into(),
                status: status as i32,
                page_size: 50,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list items")
            .into_inner();
        out.extend(page.items);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_run_over_200_items_reaches_the_exact_pass_count_and_watch_resumes_from_a_cursor() {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(|body| answer(item_number(body)));
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let dataset_id = upload_items(&server, &numbered(200)).await;

    let run = create_run(&mut client, &eval_id, &dataset_id, model_source(), 0, 0.0).await;
    assert_eq!(run.state, proto::EvalRunState::Queued as i32);
    assert_eq!(run.concurrency, 16, "the default");
    let (live, end) = watch_all(&mut client, &run.id, 0).await;
    assert_eq!(
        seqs(&live),
        (1..=200).collect::<Vec<_>>(),
        "gapless, in order, no repeats"
    );
    let last = live.last().unwrap();
    assert_eq!((last.completed, last.total), (200, 200));
    assert!(last.items_per_second > 0.0);

    // 0, 3, ..., 198 are answered wrongly: 67 fail, 133 pass.
    assert_eq!(end.state, proto::EvalRunState::Completed as i32, "{end:?}");
    let counts = end.result_counts.unwrap();
    assert_eq!(
        (counts.total, counts.passed, counts.failed, counts.errored),
        (200, 133, 67, 0)
    );
    let exact = &end.per_criterion[0];
    assert_eq!((exact.name.as_str(), exact.passed, exact.failed), ("exact", 133, 67));
    assert!((exact.pass_rate - 0.665).abs() < 1e-12);
    assert!(exact.ci_low < 0.665 && exact.ci_high > 0.665);
    let usage = &end.per_model_usage[0];
    assert_eq!((usage.model.as_str(), usage.invocations), ("stub/m", 200));
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (11 * 200, 7 * 200));
    assert!(end.finished_at.is_some() && end.started_at.is_some());
    assert_eq!(stub.requests.lock().unwrap().len(), 200, "one request per item");
    let body: Value = serde_json::from_str(&stub.requests.lock().unwrap()[0].2).unwrap();
    assert_eq!(
        (body["temperature"].clone(), body["seed"].clone(), body["model"].clone()),
        (json!(0.0), json!(7), json!("m"))
    );

    // Resume from a cursor: exactly what came after it, then one end.
    let (rest, end2) = watch_all(&mut client, &run.id, 150).await;
    assert_eq!(seqs(&rest), (151..=200).collect::<Vec<_>>());
    assert_eq!(rest, live[150..].to_vec(), "the same events as live");
    assert_eq!(end2.result_counts, end.result_counts);

    let failed = all_items(&mut client, &run.id, proto::OutputItemStatus::Fail).await;
    assert_eq!(failed.len(), 67);
    assert!(
        failed
            .iter()
            .all(|i| i.index % 3 == 0 && i.sample == "wrong" && !i.results[0].passed)
    );
    let all = all_items(&mut client, &run.id, proto::OutputItemStatus::Unspecified).await;
    assert_eq!(
        all.iter().map(|i| i.index).collect::<Vec<_>>(),
        (0..200).collect::<Vec<_>>()
    );
    assert_eq!(
        lathe::proto::json::json_from_value(all[5].input.clone().unwrap().values[0].clone()),
        json!({"role": "user", "content": "what is 5"})
    );

    let runs = client
        .list_eval_runs(proto::ListEvalRunsRequest {
            eval_id: eval_id.clone(),
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(runs.runs.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_restarted_server_resumes_the_run_without_sampling_or_grading_items_again() {
    let (stub, url) = crate::common::openai_stub::start().await;
    // The first half answers at once; the second waits at the gate.
    stub.respond_with(|body| {
        let n = item_number(body);
        if n < 100 {
            answer(n)
        } else {
            Reply::Gated(Box::new(answer(n)))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url);
    let server = TestServer::start_with(config.clone()).await;
    let (eval_id, run_id) = {
        let mut client = evals(&server).await;
        let eval_id = create_eval(&mut client).await;
        let dataset_id = upload_items(&server, &numbered(200)).await;
        let run = create_run(&mut client, &eval_id, &dataset_id, model_source(), 8, 0.0).await;
        // Items are dispatched in order: 0..99 finish, then 8 wait.
        tokio::time::timeout(PATIENCE, stub.wait_gated(8))
            .await
            .expect("8 gated requests");
        let mut stream = client
            .watch_eval_run(proto::WatchEvalRunRequest {
                run_id: run.id.clone(),
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        loop {
            let msg = tokio::time::timeout(PATIENCE, stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(Payload::Progress(p)) = msg.payload
                && p.completed == 100
            {
                break;
            }
        }
        (eval_id, run.id)
    };
    server.stop().await;
    // The stopped server dropped its in-flight requests.
    tokio::time::timeout(PATIENCE, stub.wait_dropped(8))
        .await
        .expect("in-flight requests dropped");
    stub.open_gate();

    let server = TestServer::start_with(config).await;
    let mut client = evals(&server).await;
    let (progress, end) = watch_all(&mut client, &run_id, 0).await;
    assert_eq!(end.state, proto::EvalRunState::Completed as i32, "{end:?}");
    assert_eq!(
        seqs(&progress),
        (1..=200).collect::<Vec<_>>(),
        "one gapless log across the restart"
    );
    let counts = end.result_counts.unwrap();
    assert_eq!((counts.passed, counts.failed, counts.errored), (133, 67, 0));
    for n in 0..100 {
        assert_eq!(
            stub.requests_for(&format!("what is {n}")),
            1,
            "item {n} was sampled once"
        );
    }
    let requests = stub.requests.lock().unwrap().len();
    assert_eq!(requests, 200 + 8, "only the 8 dropped items were sampled again");
    let all = all_items(&mut client, &run_id, proto::OutputItemStatus::Unspecified).await;
    assert_eq!(all.len(), 200);
    assert_eq!(end.eval_id, eval_id);
    server.stop().await;
}

#[tokio::test]
async fn cancel_stops_dispatching_and_drops_in_flight_requests() {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(|body| Reply::Gated(Box::new(answer(item_number(body)))));
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let dataset_id = upload_items(&server, &numbered(50)).await;
    let run = create_run(&mut client, &eval_id, &dataset_id, model_source(), 4, 0.0).await;
    tokio::time::timeout(PATIENCE, stub.wait_gated(4))
        .await
        .expect("4 in flight");
    let mut datasets = server.datasets().await;
    let busy = datasets
        .delete_dataset(proto::DeleteDatasetRequest { id: dataset_id.clone() })
        .await
        .unwrap_err();
    assert_eq!(
        busy.code(),
        tonic::Code::FailedPrecondition,
        "a running eval pins its dataset"
    );

    let canceled = client
        .cancel_eval_run(proto::CancelEvalRunRequest { id: run.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(canceled.state, proto::EvalRunState::Canceled as i32);
    tokio::time::timeout(PATIENCE, stub.wait_dropped(4))
        .await
        .expect("in-flight requests dropped");
    let (progress, end) = watch_all(&mut client, &run.id, 0).await;
    assert!(progress.is_empty(), "nothing in flight was recorded");
    assert_eq!(end.state, proto::EvalRunState::Canceled as i32);
    stub.open_gate();
    assert_eq!(
        stub.requests.lock().unwrap().len(),
        4,
        "nothing dispatched after the cancel"
    );
    assert!(
        all_items(&mut client, &run.id, proto::OutputItemStatus::Unspecified)
            .await
            .is_empty()
    );
    let again = client
        .cancel_eval_run(proto::CancelEvalRunRequest { id: run.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert!(again.message().contains("canceled"), "{}", again.message());
    datasets
        .delete_dataset(proto::DeleteDatasetRequest { id: dataset_id })
        .await
        .expect("a canceled run lets go of its dataset");
    server.stop().await;
}

/// 500s, 429s and malformed bodies for items ending in 1, 2 and 3.
fn faulty(stub: &Stub) {
    stub.respond_with(|body| {
        let n = item_number(body);
        match n % 10 {
            1 => Reply::Status(500, None),
            2 => Reply::Status(429, Some(0)),
            3 => Reply::Malformed,
            _ => Reply::Json(chat_body(&n.to_string())),
        }
    });
}

#[tokio::test]
async fn provider_faults_are_item_errors_until_the_error_rate_fails_the_run() {
    let (stub, url) = crate::common::openai_stub::start().await;
    faulty(&stub);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let dataset_id = upload_items(&server, &numbered(100)).await;

    let run = create_run(&mut client, &eval_id, &dataset_id, model_source(), 8, 0.0).await;
    let (progress, end) = watch_all(&mut client, &run.id, 0).await;
    assert_eq!(end.state, proto::EvalRunState::Completed as i32, "{end:?}");
    let counts = end.result_counts.unwrap();
    assert_eq!((counts.passed, counts.failed, counts.errored), (70, 0, 30));
    assert_eq!(
        progress.iter().filter(|p| !p.error.is_empty()).count(),
        30,
        "errors as they happen"
    );
    let errors = all_items(&mut client, &run.id, proto::OutputItemStatus::Error).await;
    assert_eq!(errors.len(), 30);
    assert!(errors.iter().all(|i| (1..=3).contains(&(i.index % 10))));
    assert!(
        errors.iter().any(|i| i.error.contains("HTTP 500")),
        "{:?}",
        errors[0].error
    );
    assert!(errors.iter().any(|i| i.error.contains("429")));
    assert!(errors.iter().any(|i| i.error.contains("not JSON")));
    assert!(errors.iter().all(|i| i.error.starts_with("sampling failed")));

    // The same faults over a stricter threshold fail the run.
    let run = create_run(&mut client, &eval_id, &dataset_id, model_source(), 8, 0.2).await;
    let (_, end) = watch_all(&mut client, &run.id, 0).await;
    assert_eq!(end.state, proto::EvalRunState::Failed as i32, "{end:?}");
    assert!(end.error.contains("error-rate threshold of 20%"), "{}", end.error);
    let counts = end.result_counts.unwrap();
    assert!(counts.passed + counts.errored < 100 && counts.errored * 5 > counts.passed + counts.errored);
    server.stop().await;
}

#[tokio::test]
async fn comparing_precomputed_runs_gives_pass_rates_and_the_exact_mcnemar_p_value() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    // A passes items 0..20, B passes 10..22: 10 pass only in A, 2 only in B.
    let rows: Vec<Value> = (0..30)
        .map(|i| {
            let a = if i < 20 { "x" } else { "no" };
            let b = if (10..22).contains(&i) { "x" } else { "no" };
            json!({"answer": "x", "a": a, "b": b})
        })
        .collect();
    let dataset_id = upload_items(&server, &rows).await;
    let precomputed = |t: &str| {
        proto::create_eval_run_request::Source::Precomputed(proto::PrecomputedSource {
            sample_template: t.into(),
        })
    };
    let a = create_run(&mut client, &eval_id, &dataset_id, precomputed("{{ item.a }}"), 0, 0.0).await;
    let b = create_run(&mut client, &eval_id, &dataset_id, precomputed("{{ item.b }}"), 0, 0.0).await;
    let (_, end_a) = watch_all(&mut client, &a.id, 0).await;
    let (_, end_b) = watch_all(&mut client, &b.id, 0).await;
    assert_eq!(end_a.result_counts.unwrap().passed, 20);
    assert_eq!(end_b.result_counts.unwrap().passed, 12);
    assert!(end_a.model.is_empty() && end_a.per_model_usage.is_empty());

    let cmp = client
        .compare_eval_runs(proto::CompareEvalRunsRequest {
            run_ids: vec![a.id.clone(), b.id.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    let rate_a = &cmp.runs[0].per_criterion[0];
    assert!((rate_a.pass_rate - 20.0 / 30.0).abs() < 1e-12);
    // Wilson 95% for 20/30, by hand.
    assert!((rate_a.ci_low - 0.487_800_5).abs() < 1e-6 && (rate_a.ci_high - 0.807_695_0).abs() < 1e-6);
    assert!((cmp.runs[1].per_criterion[0].pass_rate - 12.0 / 30.0).abs() < 1e-12);
    let test = cmp.paired_tests.iter().find(|t| t.criterion == "exact").unwrap();
    assert_eq!(
        (test.shared_items, test.baseline_only_passed, test.run_only_passed),
        (30, 10, 2)
    );
    // Exact McNemar: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    assert!((test.p_value - 158.0 / 4096.0).abs() < 1e-12, "{}", test.p_value);
    assert!(test.significant);
    assert_eq!(
        (test.baseline_run_id.as_str(), test.run_id.as_str()),
        (a.id.as_str(), b.id.as_str())
    );
    let all = cmp.paired_tests.iter().find(|t| t.criterion == "all").unwrap();
    assert_eq!(all.p_value, test.p_value);
    let disagree: Vec<u64> = cmp.disagreements.iter().map(|d| d.index).collect();
    assert_eq!(disagree, (0..10).chain(20..22).collect::<Vec<_>>());
    assert_eq!(
        cmp.disagreements[0].statuses,
        vec![
            proto::OutputItemStatus::Pass as i32,
            proto::OutputItemStatus::Fail as i32
        ]
    );

    let err = client
        .compare_eval_runs(proto::CompareEvalRunsRequest {
            run_ids: vec![a.id.clone()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn precomputed_rows_with_item_and_sample_need_no_template() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let rows = vec![
        json!({"item": {"answer": "4"}, "sample": "4"}),
        json!({"item": {"answer": "5"}, "sample": "six"}),
    ];
    let dataset_id = upload_items(&server, &rows).await;
    let source = proto::create_eval_run_request::Source::Precomputed(proto::PrecomputedSource::default());
    let run = create_run(&mut client, &eval_id, &dataset_id, source, 0, 0.0).await;
    let (_, end) = watch_all(&mut client, &run.id, 0).await;
    let counts = end.result_counts.unwrap();
    assert_eq!((counts.total, counts.passed, counts.failed), (2, 1, 1));
    server.stop().await;
}

pub(crate) fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.description.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn bad_input_is_refused_with_field_violations() {
    // A provider serves "stub/m", so the model is known and only the
    // items and templates are at fault.
    let (_stub, url) = crate::common::openai_stub::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;

    let err = client
        .create_eval(proto::CreateEvalRequest {
            name: "bad".into(),
            item_schema: Some(struct_from_json(&json!({"type": "object", "pattern": "x"}))),
            testing_criteria: vec![
                proto::TestingCriterion {
                    grader: Some(struct_from_json(
                        &json!({"type": "string_check", "name": "s", "input": "a"}),
                    )),
                    pass_threshold: None,
                    name: String::new(),
                },
                proto::TestingCriterion {
                    grader: Some(struct_from_json(&json!({
                        "type": "text_similarity", "name": "t", "input": "{{ sample.output_text }}",
                        "reference": "{{ item.answer }}", "evaluation_metric": "bleu"
                    }))),
                    pass_threshold: None,
                    name: String::new(),
                },
            ],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert!(fields.contains(&"item_schema.pattern".to_string()), "{fields:?}");
    assert!(
        fields.iter().any(|f| f.starts_with("testing_criteria[0].grader")),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"testing_criteria[1].pass_threshold".to_string()),
        "{fields:?}"
    );

    let eval_id = create_eval(&mut client).await;
    let dataset_id = upload_items(&server, &[json!({"n": 1, "answer": "1"}), json!({"n": 2})]).await;
    let err = client
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: eval_id.clone(),
            dataset_id: dataset_id.clone(),
            source: Some(model_source()),
            concurrency: 0,
            error_rate_threshold: 0.0,
            name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let v = violations(&err);
    assert_eq!(v[0].0, "dataset_id");
    assert!(v[0].1.contains("item 1") && v[0].1.contains("answer"), "{v:?}");

    let err = client
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: eval_id.clone(),
            dataset_id,
            source: None,
            concurrency: 1000,
            error_rate_threshold: 2.0,
            name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["source", "concurrency", "error_rate_threshold"]);

    // A template that names a field no item has: one violation, on the
    // template, not one per item on the dataset.
    let dataset_id = upload_items(
        &server,
        &[json!({"n": 1, "answer": "1"}), json!({"n": 2, "answer": "2"})],
    )
    .await;
    let mut source = model_source();
    if let proto::create_eval_run_request::Source::Model(m) = &mut source {
        m.input_messages = Some(prost_types::ListValue {
            values: vec![
                lathe::proto::json::value_from_json(&json!({"role": "system", "content": "be brief"})),
                lathe::proto::json::value_from_json(&json!({"role": "user", "content": "{{ item.nope }}"})),
            ],
        });
    }
    let err = client
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: eval_id.clone(),
            dataset_id: dataset_id.clone(),
            source: Some(source),
            concurrency: 0,
            error_rate_threshold: 0.0,
            name: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let v = violations(&err);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].0, "model.input_messages[1]");
    assert!(v[0].1.contains("item 0") && v[0].1.contains("1 more"), "{v:?}");

    // A criterion's name, when given, names it; two criteria of one name
    // are refused on the name that clashes.
    let named = |name: &str| proto::TestingCriterion {
        name: name.into(),
        ..exact_match()
    };
    let eval = client
        .create_eval(proto::CreateEvalRequest {
            name: "named".into(),
            item_schema: None,
            testing_criteria: vec![named("first"), named("second")],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .expect("two criteria of one grader under two names")
        .into_inner()
        .eval
        .unwrap();
    let names: Vec<&str> = eval.testing_criteria.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    let err = client
        .create_eval(proto::CreateEvalRequest {
            name: "clash".into(),
            item_schema: None,
            testing_criteria: vec![named("same"), named("same")],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["testing_criteria[1].name"]);
    // A saved grader by name: the eval keeps the grader object itself.
    let mut graders = lathe::proto::grader_service_client::GraderServiceClient::new(server.channel().await);
    graders
        .create_grader(proto::CreateGraderRequest {
            name: "exact-v1".into(),
            grader: exact_match().grader,
        })
        .await
        .expect("save grader");
    let saved = |name: &str| proto::TestingCriterion {
        grader: Some(struct_from_json(&json!({"name": name}))),
        pass_threshold: None,
        name: String::new(),
    };
    let eval = client
        .create_eval(proto::CreateEvalRequest {
            name: "saved".into(),
            item_schema: None,
            testing_criteria: vec![saved("exact-v1")],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .expect("create eval from a saved grader")
        .into_inner()
        .eval
        .unwrap();
    assert_eq!(eval.testing_criteria[0].name, "exact");
    assert_eq!(eval.testing_criteria[0].grader, exact_match().grader);
    let err = client
        .create_eval(proto::CreateEvalRequest {
            name: "missing".into(),
            item_schema: None,
            testing_criteria: vec![saved("nope")],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    let err = client
        .get_eval_run(proto::GetEvalRunRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn a_model_nothing_serves_is_refused_when_the_run_is_created() {
    // No providers: a bare name must be a model the local engine knows.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let dataset_id = upload_items(&server, &numbered(3)).await;
    for model in ["llama-3-8b", "stub/m"] {
        let mut source = model_source();
        if let proto::create_eval_run_request::Source::Model(m) = &mut source {
            m.model = model.into();
        }
        let err = client
            .create_eval_run(proto::CreateEvalRunRequest {
                eval_id: eval_id.clone(),
                dataset_id: dataset_id.clone(),
                source: Some(source),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{model}");
        let v = violations(&err);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].0, "model.model");
        assert!(v[0].1.contains(model), "{v:?}");
    }
    let runs = client
        .list_eval_runs(proto::ListEvalRunsRequest {
            eval_id,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(runs.runs.is_empty(), "nothing was created");
    server.stop().await;
}

#[tokio::test]
async fn a_run_whose_every_item_errored_fails_however_few_items_it_has() {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(|_| Reply::Status(500, None));
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let dataset_id = upload_items(&server, &numbered(3)).await;
    let run = create_run(&mut client, &eval_id, &dataset_id, model_source(), 0, 0.0).await;
    let (_, end) = watch_all(&mut client, &run.id, 0).await;
    assert_eq!(end.state, proto::EvalRunState::Failed as i32, "{end:?}");
    assert!(end.error.contains("every one of its 3 items errored"), "{}", end.error);
    assert!(end.error.contains("HTTP 500"), "{}", end.error);
    assert_eq!(end.result_counts.unwrap().errored, 3);
    server.stop().await;
}

/// The evals of a listing in the order (sort key, id) says, either way.
fn sorted(mut evals: Vec<proto::Eval>, key: fn(&proto::Eval) -> i64, descending: bool) -> Vec<String> {
    evals.sort_by(|a, b| (key(a), &a.id).cmp(&(key(b), &b.id)));
    if descending {
        evals.reverse();
    }
    evals.into_iter().map(|e| e.id).collect()
}

fn seconds_millis(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.unwrap();
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

/// Every eval ListEvals gives, a page of one at a time.
async fn list_all_evals(
    client: &mut EvalServiceClient<Channel>,
    order: proto::ListOrder,
    sort: proto::EvalSortField,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_evals(proto::ListEvalsRequest {
                page_size: 1,
                page_token: token,
                order: order as i32,
                sort: sort as i32,
            })
            .await
            .expect("list evals")
            .into_inner();
        assert!(page.evals.len() <= 1);
        ids.extend(page.evals.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn evals_list_update_and_delete_with_their_runs_and_items() {
    let (stub, url) = crate::common::openai_stub::start().await;
    // Items 0-5 are answered; the rest wait at the gate, so the run stays in progress.
    stub.respond_with(|body| {
        let n = item_number(body);
        if n < 6 {
            answer(n)
        } else {
            Reply::Gated(Box::new(answer(n)))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;
    let first = create_eval(&mut client).await;
    let second = create_eval(&mut client).await;

    // Listed newest first by default, oldest first when asked, page by page.
    let all = client
        .list_evals(proto::ListEvalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(all.next_page_token.is_empty());
    let created = |e: &proto::Eval| seconds_millis(&e.created_at);
    assert_eq!(
        all.evals.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        sorted(all.evals.clone(), created, true)
    );
    assert_eq!(
        list_all_evals(
            &mut client,
            proto::ListOrder::Ascending,
            proto::EvalSortField::Unspecified
        )
        .await,
        sorted(all.evals.clone(), created, false)
    );
    assert_eq!(all.evals.len(), 2);

    // An update renames and replaces metadata; a bad one changes nothing.
    let updated = client
        .update_eval(proto::UpdateEvalRequest {
            id: first.clone(),
            name: Some("renamed".into()),
            metadata: [("stage".to_string(), "2".to_string())].into(),
            replace_metadata: true,
        })
        .await
        .unwrap()
        .into_inner()
        .eval
        .unwrap();
    assert_eq!(
        (updated.name.as_str(), updated.metadata.get("stage").map(String::as_str)),
        ("renamed", Some("2"))
    );
    assert!(seconds_millis(&updated.updated_at) > seconds_millis(&updated.created_at));
    let too_many = (0..17).map(|i| (format!("k{i}"), "v".to_string())).collect();
    let refused = client
        .update_eval(proto::UpdateEvalRequest {
            id: first.clone(),
            name: Some(String::new()),
            metadata: too_many,
            replace_metadata: true,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("name") && refused.message().contains("metadata"),
        "{}",
        refused.message()
    );
    let kept = client
        .update_eval(proto::UpdateEvalRequest {
            id: first.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .eval
        .unwrap();
    assert_eq!(
        (kept.name.as_str(), kept.metadata.len()),
        ("renamed", 1),
        "unset fields stay"
    );
    let by_update = client
        .list_evals(proto::ListEvalsRequest {
            order: proto::ListOrder::Descending as i32,
            sort: proto::EvalSortField::UpdatedAt as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .evals;
    let other = by_update.iter().find(|e| e.id == second).unwrap();
    // The update came after the second eval was made (the same millisecond
    // at worst, when ids break the tie).
    assert!(seconds_millis(&updated.updated_at) >= seconds_millis(&other.updated_at));
    if seconds_millis(&updated.updated_at) > seconds_millis(&other.updated_at) {
        assert_eq!(by_update[0].id, first, "the updated eval comes first");
    }
    assert_eq!(
        list_all_evals(
            &mut client,
            proto::ListOrder::Descending,
            proto::EvalSortField::UpdatedAt
        )
        .await,
        sorted(by_update.clone(), |e| seconds_millis(&e.updated_at), true)
    );

    // Two runs of the first eval: one done, one in progress after six items.
    let dataset_id = upload_items(&server, &numbered(10)).await;
    let precomputed = proto::create_eval_run_request::Source::Precomputed(proto::PrecomputedSource {
        sample_template: "{{ item.answer }}".into(),
    });
    let done = create_run(&mut client, &first, &dataset_id, precomputed, 0, 0.0).await;
    let (_, done) = watch_all(&mut client, &done.id, 0).await;
    assert_eq!(done.state, proto::EvalRunState::Completed as i32);
    let running = create_run(&mut client, &first, &dataset_id, model_source(), 2, 0.0).await;
    tokio::time::timeout(PATIENCE, stub.wait_gated(2))
        .await
        .expect("2 in flight");
    let runs_in = |state: proto::EvalRunState, order: proto::ListOrder| proto::ListEvalRunsRequest {
        eval_id: first.clone(),
        state: state as i32,
        order: order as i32,
        ..Default::default()
    };
    let ids = |runs: Vec<proto::EvalRun>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let completed = client
        .list_eval_runs(runs_in(proto::EvalRunState::Completed, proto::ListOrder::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(completed.runs), std::slice::from_ref(&done.id));
    let oldest_first = client
        .list_eval_runs(runs_in(proto::EvalRunState::Unspecified, proto::ListOrder::Ascending))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(oldest_first.runs), [done.id.clone(), running.id.clone()]);

    // Items: the last first on request, by status, and one by one.
    let mut watch = client
        .watch_eval_run(proto::WatchEvalRunRequest {
            run_id: running.id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for seq in 1..=6 {
        let msg = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("watch stalled")
            .unwrap()
            .unwrap();
        assert!(matches!(msg.payload, Some(Payload::Progress(p)) if p.seq == seq));
    }
    let recorded = client
        .list_output_items(proto::ListOutputItemsRequest {
            run_id: running.id.clone(),
            order: proto::ListOrder::Descending as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(recorded.iter().map(|i| i.index).collect::<Vec<_>>(), [5, 4, 3, 2, 1, 0]);
    let failed = all_items(&mut client, &running.id, proto::OutputItemStatus::Fail).await;
    assert_eq!(failed.iter().map(|i| i.index).collect::<Vec<_>>(), [0, 3]);
    let one = client
        .get_output_item(proto::GetOutputItemRequest {
            id: failed[1].id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .item
        .unwrap();
    assert_eq!(one, failed[1]);
    assert_eq!(
        (one.run_id.as_str(), one.usage.as_ref().map(|u| u.model.as_str())),
        (running.id.as_str(), Some("stub/m"))
    );
    assert_eq!(
        one.usage.as_ref().map(|u| (u.prompt_tokens, u.completion_tokens)),
        Some((11, 7))
    );
    let missing = one.id.replace("_3", "_9");
    let status = client
        .get_output_item(proto::GetOutputItemRequest { id: missing })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = client
        .get_output_item(proto::GetOutputItemRequest { id: "item_1".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // Deleting a finished run takes its items; deleting the eval stops the
    // running one and takes everything else.
    client
        .delete_eval_run(proto::DeleteEvalRunRequest { id: done.id.clone() })
        .await
        .unwrap();
    let status = client
        .get_eval_run(proto::GetEvalRunRequest { id: done.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let deleted = client
        .delete_eval(proto::DeleteEvalRequest { id: first.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.deleted && deleted.id == first);
    tokio::time::timeout(PATIENCE, stub.wait_dropped(2))
        .await
        .expect("the deleted run's requests in flight are dropped");
    let ended = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .expect("the watch ends")
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::NotFound, "a watcher of a deleted run");
    for result in [
        client
            .get_eval(proto::GetEvalRequest { id: first.clone() })
            .await
            .map(|_| ()),
        client
            .get_eval_run(proto::GetEvalRunRequest { id: running.id.clone() })
            .await
            .map(|_| ()),
        client
            .get_output_item(proto::GetOutputItemRequest { id: one.id.clone() })
            .await
            .map(|_| ()),
        client
            .delete_eval(proto::DeleteEvalRequest { id: first.clone() })
            .await
            .map(|_| ()),
    ] {
        assert_eq!(result.unwrap_err().code(), tonic::Code::NotFound);
    }
    stub.open_gate();
    assert_eq!(
        stub.requests.lock().unwrap().len(),
        8,
        "nothing dispatched after the delete"
    );
    let left = client
        .list_evals(proto::ListEvalsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids_of(&left.evals), [second]);
    server
        .datasets()
        .await
        .delete_dataset(proto::DeleteDatasetRequest { id: dataset_id })
        .await
        .expect("no unfinished run holds the dataset");
    server.stop().await;
}

fn ids_of(evals: &[proto::Eval]) -> Vec<String> {
    evals.iter().map(|e| e.id.clone()).collect()
}

/// `lathe evals list|update|delete` over the same RPCs the REST door's
/// evals routes use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_updates_and_deletes_evals() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start(data.path()).await;
    let addr = server.url();
    let criterion = data.path().join("criterion.json");
    std::fs::write(
        &criterion,
        json!({"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
               "reference": "{{item.label}}", "operation": "eq"})
        .to_string(),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = lathe(&addr, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let created: Value = serde_json::from_str(
        run(&[
            "evals",
            "create",
            "--name",
            "first",
            "--criterion",
            criterion.to_str().unwrap(),
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(run(&["evals", "list"]).contains(&format!("{id}  first")));

    let updated: Value = serde_json::from_str(
        run(&[
            "evals",
            "update",
            &id,
            "--name",
            "renamed",
            "--metadata",
            "team=search",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["metadata"], json!({"team": "search"}));
    let cleared: Value =
        serde_json::from_str(run(&["evals", "update", &id, "--clear-metadata", "--json"]).trim()).unwrap();
    assert_eq!(cleared["metadata"], json!({}));
    assert_eq!(cleared["name"], "renamed", "an update without --name keeps it");

    assert_eq!(run(&["evals", "delete", &id]).trim(), format!("deleted {id}"));
    assert!(run(&["evals", "list", "--json"]).trim().is_empty(), "no eval left");
    let again = lathe(&addr, &["evals", "delete", &id]);
    assert!(!again.status.success(), "a deleted eval is gone");
    server.stop().await;
}

#[tokio::test]
async fn a_budget_stops_a_run_cleanly_and_one_that_cannot_cover_an_item_is_refused() {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(|body| answer(item_number(body)));
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut client = evals(&server).await;
    let eval_id = create_eval(&mut client).await;
    let dataset_id = upload_items(&server, &numbered(20)).await;
    let budgeted = |max_model_calls, max_tokens, concurrency| proto::CreateEvalRunRequest {
        eval_id: eval_id.clone(),
        dataset_id: dataset_id.clone(),
        source: Some(model_source()),
        concurrency,
        budget: Some(proto::RunBudget {
            max_model_calls,
            max_tokens,
        }),
        ..Default::default()
    };

    // Five calls, one per item: five items, however many are in flight.
    let run = client
        .create_eval_run(budgeted(5, 0, 4))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.planned_model_calls, 20, "one sample per item");
    let (progress, end) = watch_all(&mut client, &run.id, 0).await;
    assert_eq!(end.state, proto::EvalRunState::Completed as i32, "{end:?}");
    assert!(end.budget_exhausted);
    assert_eq!((end.completed, progress.len()), (5, 5));
    assert_eq!(end.per_model_usage[0].invocations, 5);
    assert!(
        end.error.contains("budget of 5 model calls") && end.error.contains("after 5 of 20 items"),
        "{}",
        end.error
    );
    assert_eq!(stub.requests.lock().unwrap().len(), 5, "no call past the budget");

    // 40 tokens at 18 an item, one at a time: the third item passes it.
    let run = client
        .create_eval_run(budgeted(0, 40, 1))
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let (_, end) = watch_all(&mut client, &run.id, 0).await;
    assert_eq!((end.completed, end.budget_exhausted), (3, true), "{end:?}");
    assert_eq!(end.per_model_usage[0].total_tokens, 54);

    // Without a budget the run does every item and says nothing of one.
    let run = create_run(&mut client, &eval_id, &dataset_id, model_source(), 4, 0.0).await;
    let (_, end) = watch_all(&mut client, &run.id, 0).await;
    assert_eq!(
        (end.completed, end.budget_exhausted, end.error.as_str()),
        (20, false, "")
    );

    // A model grader makes each item two calls: one call covers none.
    let judge = proto::TestingCriterion {
        grader: Some(struct_from_json(&json!({
            "type": "label_model", "name": "judge", "model": "stub/judge",
            "input": [{"role": "user", "content": "{{ sample.output_text }}"}],
            "labels": ["good", "bad"], "passing_labels": ["good"]
        }))),
        ..Default::default()
    };
    let judged = create_eval_with(&mut client, "judged", judge).await;
    let err = client
        .create_eval_run(proto::CreateEvalRunRequest {
            eval_id: judged,
            ..budgeted(1, 0, 4)
        })
        .await
        .unwrap_err();
    let v = violations(&err);
    assert_eq!(v[0].0, "budget.max_model_calls");
    assert!(v[0].1.contains("takes 2"), "{}", v[0].1);
}
