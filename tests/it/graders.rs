//! GraderService over real gRPC: every deterministic grader type, validation details,
//! multi formulas, python graders in the sandbox, saved graders, GradeBatch and the CLI.

use crate::common::*;
use lathe::client::Channel;
use lathe::proto::json::{json_from_struct, struct_from_json};
use lathe::proto::{self, grade_batch_request, grader_service_client::GraderServiceClient};
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

struct Env {
    server: TestServer,
    client: GraderServiceClient<Channel>,
    _dir: tempfile::TempDir,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let client = GraderServiceClient::new(server.channel().await);
    Env {
        server,
        client,
        _dir: dir,
    }
}

fn sample(text: &str) -> Option<proto::Sample> {
    Some(proto::Sample {
        output_text: text.to_string(),
        ..Default::default()
    })
}

async fn run(client: &mut GraderServiceClient<Channel>, grader: Value, text: &str, item: Value) -> proto::GraderResult {
    client
        .run_grader(proto::RunGraderRequest {
            grader: Some(struct_from_json(&grader)),
            sample: sample(text),
            item: Some(struct_from_json(&item)),
        })
        .await
        .expect("run grader")
        .into_inner()
        .result
        .expect("result")
}

fn errors(r: &proto::GraderResult) -> proto::GraderErrors {
    r.metadata.clone().unwrap().errors.unwrap()
}

fn string_check(operation: &str) -> Value {
    json!({
        "type": "string_check",
        "name": "check",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference_answer }}",
        "operation": operation,
    })
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_error_details()
        .bad_request()
        .expect("bad request details")
        .field_violations
        .iter()
        .map(|v| (v.field.clone(), v.description.clone()))
        .collect()
}

#[tokio::test]
async fn string_check_operations_follow_openai() {
    let mut env = env().await;
    let item = json!({"reference_answer": "Paris"});
    for (op, text, want) in [
        ("eq", "Paris", 1.0),
        ("eq", "paris", 0.0),
        ("ne", "London", 1.0),
        ("ne", "Paris", 0.0),
        ("like", "It is Paris.", 1.0),
        ("like", "it is paris.", 0.0),
        ("ilike", "it is PARIS.", 1.0),
        ("ilike", "Rome", 0.0),
    ] {
        let r = run(&mut env.client, string_check(op), text, item.clone()).await;
        assert_eq!(r.reward, want, "{op} {text:?}");
        let meta = r.metadata.clone().unwrap();
        assert_eq!((meta.name.as_str(), meta.r#type.as_str()), ("check", "string_check"));
        assert!(meta.execution_time_seconds >= 0.0);
        assert_eq!(errors(&r), proto::GraderErrors::default());
    }
}

#[tokio::test]
async fn openai_reference_examples_run_unchanged() {
    let mut env = env().await;
    // The string_check example from OpenAI's grader guide.
    let grader = json!({
        "type": "string_check",
        "name": "Example string check grader",
        "input": "{{sample.output_text}}",
        "reference": "{{item.label}}",
        "operation": "eq"
    });
    let r = run(&mut env.client, grader, "positive", json!({"label": "positive"})).await;
    assert_eq!(r.reward, 1.0);

    // Template paths into output_json, filled from the sample text because it parses.
    let grader = json!({
        "type": "string_check",
        "name": "tool name",
        "input": "{{ sample.output_json.answer[0] }}",
        "reference": "{{ item.expected }}",
        "operation": "eq"
    });
    let r = run(
        &mut env.client,
        grader.clone(),
        r#"{"answer": ["42", "x"]}"#,
        json!({"expected": "42"}),
    )
    .await;
    assert_eq!(r.reward, 1.0);
    // Not JSON: output_json is absent, which is a sample parse error, not a silent 0.
    let r = run(&mut env.client, grader, "answer: 42", json!({"expected": "42"})).await;
    assert_eq!(r.reward, 0.0);
    assert!(errors(&r).sample_parse_error || errors(&r).invalid_variable_error);

    // A missing item variable is an invalid_variable_error.
    let r = run(&mut env.client, string_check("eq"), "Paris", json!({})).await;
    assert_eq!(r.reward, 0.0);
    assert!(errors(&r).invalid_variable_error);
}

#[tokio::test]
async fn text_similarity_metrics_score_in_range() {
    let mut env = env().await;
    let item = json!({"reference": "the cat sat on the mat"});
    for metric in [
        "fuzzy_match",
        "bleu",
        "gleu",
        "meteor",
        "rouge_1",
        "rouge_2",
        "rouge_3",
        "rouge_4",
        "rouge_5",
        "rouge_l",
    ] {
        let grader = json!({
            "type": "text_similarity",
            "name": metric,
            "input": "{{ sample.output_text }}",
            "reference": "{{ item.reference }}",
            "evaluation_metric": metric,
        });
        let same = run(&mut env.client, grader.clone(), "the cat sat on the mat", item.clone()).await;
        // METEOR keeps a small fragmentation penalty even for identical text, as nltk does.
        let best = if metric == "meteor" { 0.99 } else { 1.0 - 1e-9 };
        assert!(
            same.reward >= best && same.reward <= 1.0,
            "{metric}: identical text scores {}",
            same.reward
        );
        let other = run(&mut env.client, grader, "a dog lay on the rug", item.clone()).await;
        assert!(
            (0.0..1.0).contains(&other.reward),
            "{metric}: different text scores {}",
            other.reward
        );
        assert_eq!(errors(&other), proto::GraderErrors::default(), "{metric}");
    }
    // fuzzy_match is rapidfuzz's ratio: 1 - indel distance / total length.
    let fuzzy = json!({
        "type": "text_similarity",
        "name": "fuzzy",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference }}",
        "evaluation_metric": "fuzzy_match",
    });
    let r = run(&mut env.client, fuzzy, "kitten", json!({"reference": "sitting"})).await;
    assert!((r.reward - 0.615_384_615).abs() < 1e-6, "{}", r.reward);
}

#[tokio::test]
async fn providerless_graders_say_why_instead_of_scoring_zero_silently() {
    let mut env = env().await;
    let cosine = json!({
        "type": "text_similarity",
        "name": "cos",
        "input": "{{ sample.output_text }}",
        "reference": "{{ item.reference }}",
        "evaluation_metric": "cosine",
    });
    let r = run(&mut env.client, cosine, "a", json!({"reference": "a"})).await;
    assert_eq!(r.reward, 0.0);
    let e = errors(&r);
    assert!(e.other_error && e.other_error_details.contains("embeddings"), "{e:?}");

    let model = json!({
        "type": "score_model",
        "name": "judge",
        "model": "gpt-4o-2024-08-06",
        "input": [{"role": "user", "content": "Score {{ sample.output_text }}"}],
    });
    let r = run(&mut env.client, model, "a", json!({})).await;
    assert_eq!(r.reward, 0.0);
    assert!(errors(&r).model_grader_server_error);
}

#[tokio::test]
async fn validate_reports_every_field_violation() {
    let mut env = env().await;
    let ok = env
        .client
        .validate_grader(proto::ValidateGraderRequest {
            grader: Some(struct_from_json(&string_check("eq"))),
        })
        .await
        .expect("valid grader")
        .into_inner();
    assert_eq!(json_from_struct(ok.grader.unwrap()), string_check("eq"));

    let bad = json!({
        "type": "string_check",
        "name": "check",
        "input": "{{ sample.output_text }}",
        "reference": "{{ nope.x }}",
        "operation": "equals",
    });
    let status = env
        .client
        .validate_grader(proto::ValidateGraderRequest {
            grader: Some(struct_from_json(&bad)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&status).into_iter().map(|(f, _)| f).collect();
    assert!(fields.contains(&"grader.operation".to_string()), "{fields:?}");
    assert!(fields.contains(&"grader.reference".to_string()), "{fields:?}");

    let status = env
        .client
        .validate_grader(proto::ValidateGraderRequest {
            grader: Some(struct_from_json(&json!({"type": "regex", "name": "r"}))),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(violations(&status).iter().any(|(f, _)| f == "grader.type"));

    let status = env
        .client
        .validate_grader(proto::ValidateGraderRequest { grader: None })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

fn multi(formula: &str) -> Value {
    json!({
        "type": "multi",
        "name": "combined",
        "graders": {
            "exact": string_check("eq"),
            "close": {
                "type": "text_similarity",
                "name": "close",
                "input": "{{ sample.output_text }}",
                "reference": "{{ item.reference_answer }}",
                "evaluation_metric": "fuzzy_match"
            }
        },
        "calculate_output": formula,
    })
}

#[tokio::test]
async fn multi_combines_sub_rewards_and_flags_formula_errors() {
    let mut env = env().await;
    let item = json!({"reference_answer": "205"});
    let r = run(&mut env.client, multi("0.5 * exact + 0.5 * close"), "205", item.clone()).await;
    assert_eq!(r.reward, 1.0);
    assert_eq!(r.sub_rewards.get("exact"), Some(&1.0));
    assert_eq!(r.sub_rewards.get("close"), Some(&1.0));
    assert_eq!(r.metadata.as_ref().unwrap().r#type, "multi");

    let r = run(&mut env.client, multi("max(exact, close) ^ 2"), "2050", item.clone()).await;
    let close = r.sub_rewards["close"];
    assert_eq!(r.sub_rewards["exact"], 0.0);
    assert!((r.reward - close * close).abs() < 1e-9);

    // A syntax error is caught before anything runs.
    let status = env
        .client
        .run_grader(proto::RunGraderRequest {
            grader: Some(struct_from_json(&multi("exact +* close"))),
            sample: sample("205"),
            item: Some(struct_from_json(&item)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        violations(&status).iter().any(|(f, _)| f == "grader.calculate_output"),
        "{:?}",
        violations(&status)
    );

    // Division by zero happens at run time: reward 0 with the error flagged.
    let r = run(&mut env.client, multi("exact / (close - close)"), "205", item).await;
    assert_eq!(r.reward, 0.0);
    let e = errors(&r);
    assert!(e.other_error || e.formula_parse_error, "{e:?}");
    assert!(!e.other_error_details.is_empty());
}

fn python(source: &str) -> Value {
    json!({"type": "python", "name": "py", "source": source})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_graders_run_in_the_sandbox() {
    let mut env = env().await;
    let source =
        "def grade(sample, item):\n    return 1.0 if sample['output_text'].strip() == item['answer'] else 0.25\n";
    let r = run(&mut env.client, python(source), " 42 ", json!({"answer": "42"})).await;
    assert_eq!(r.reward, 1.0, "{:?}", errors(&r));
    let r = run(&mut env.client, python(source), "41", json!({"answer": "42"})).await;
    assert_eq!(r.reward, 0.25);

    let failing = "def grade(sample, item):\n    return 1 / 0\n";
    let r = run(&mut env.client, python(failing), "x", json!({})).await;
    assert_eq!(r.reward, 0.0);
    let e = errors(&r);
    assert!(e.python_grader_runtime_error, "{e:?}");
    assert!(
        e.python_grader_runtime_error_details.contains("ZeroDivisionError"),
        "{e:?}"
    );

    // Syntax errors are found by ValidateGrader, in the sandbox.
    let status = env
        .client
        .validate_grader(proto::ValidateGraderRequest {
            grader: Some(struct_from_json(&python("def grade(sample, item)\n    return 1\n"))),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(violations(&status).iter().any(|(f, _)| f == "grader.source"));
}

#[tokio::test]
async fn saved_graders_create_get_list_and_run_by_name() {
    let mut env = env().await;
    let names = ["exact_v1", "exact-v2", "Alpha"];
    for name in names {
        let saved = env
            .client
            .create_grader(proto::CreateGraderRequest {
                name: name.to_string(),
                grader: Some(struct_from_json(&string_check("eq"))),
            })
            .await
            .expect("create")
            .into_inner()
            .grader
            .unwrap();
        assert_eq!(saved.name, name);
        assert!(saved.created_at.unwrap().seconds > 1_600_000_000);
    }
    let got = env
        .client
        .get_grader(proto::GetGraderRequest {
            name: "exact_v1".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .grader
        .unwrap();
    assert_eq!(json_from_struct(got.grader.unwrap()), string_check("eq"));

    let status = env
        .client
        .create_grader(proto::CreateGraderRequest {
            name: "exact_v1".into(),
            grader: Some(struct_from_json(&string_check("ne"))),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    let status = env
        .client
        .create_grader(proto::CreateGraderRequest {
            name: "bad name!".into(),
            grader: Some(struct_from_json(&string_check("eq"))),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status)[0].0, "name");

    let status = env
        .client
        .create_grader(proto::CreateGraderRequest {
            name: "invalid".into(),
            grader: Some(struct_from_json(&json!({"type": "string_check"}))),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "graders are validated before saving"
    );

    let status = env
        .client
        .get_grader(proto::GetGraderRequest { name: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = env
            .client
            .list_graders(proto::ListGradersRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.graders.len() <= 2);
        listed.extend(page.graders.into_iter().map(|g| g.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(listed, ["Alpha", "exact-v2", "exact_v1"]);

    let r = run(
        &mut env.client,
        json!({"name": "exact_v1"}),
        "Paris",
        json!({"reference_answer": "Paris"}),
    )
    .await;
    assert_eq!(r.reward, 1.0);
    let status = env
        .client
        .run_grader(proto::RunGraderRequest {
            grader: Some(struct_from_json(&json!({"name": "missing"}))),
            sample: sample("x"),
            item: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

fn batch_message(payload: grade_batch_request::Payload) -> proto::GradeBatchRequest {
    proto::GradeBatchRequest { payload: Some(payload) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grade_batch_answers_every_pair_in_order() {
    let mut env = env().await;
    const N: usize = 1000;
    let mut messages = vec![batch_message(grade_batch_request::Payload::Grader(struct_from_json(
        &string_check("eq"),
    )))];
    for i in 0..N {
        // Every third answer is right, so the order is visible in the rewards.
        let answer = if i % 3 == 0 { i.to_string() } else { format!("{i}x") };
        messages.push(batch_message(grade_batch_request::Payload::Pair(proto::GradePair {
            sample: sample(&answer),
            item: Some(struct_from_json(&json!({"reference_answer": i.to_string()}))),
        })));
    }
    let mut stream = env
        .client
        .grade_batch(tokio_stream::iter(messages))
        .await
        .expect("grade batch")
        .into_inner();
    let mut seen = 0;
    let mut end = None;
    while let Some(message) = stream.message().await.expect("batch message") {
        let result = match message.payload.expect("payload") {
            proto::grade_batch_response::Payload::End(e) => {
                end = Some(e);
                continue;
            }
            proto::grade_batch_response::Payload::Result(r) => r,
        };
        assert!(end.is_none(), "end is the last message");
        assert_eq!(message.index, seen as u64);
        let reward = result.reward;
        assert_eq!(reward, if seen % 3 == 0 { 1.0 } else { 0.0 }, "pair {seen}");
        seen += 1;
    }
    assert_eq!(seen, N);
    assert_eq!(end.expect("terminal message").count, N as u64);
}

#[tokio::test]
async fn grade_batch_needs_a_valid_grader_first() {
    let mut env = env().await;
    let pair = batch_message(grade_batch_request::Payload::Pair(proto::GradePair {
        sample: sample("x"),
        item: None,
    }));
    let status = env
        .client
        .grade_batch(tokio_stream::iter(vec![pair.clone()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let bad = batch_message(grade_batch_request::Payload::Grader(struct_from_json(&json!({
        "type": "string_check", "name": "x"
    }))));
    let status = env
        .client
        .grade_batch(tokio_stream::iter(vec![bad, pair]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(!violations(&status).is_empty());

    // A second grader mid-stream ends the batch with INVALID_ARGUMENT after the pairs before it.
    let grader = batch_message(grade_batch_request::Payload::Grader(struct_from_json(&string_check(
        "eq",
    ))));
    let pair = batch_message(grade_batch_request::Payload::Pair(proto::GradePair {
        sample: sample("a"),
        item: Some(struct_from_json(&json!({"reference_answer": "a"}))),
    }));
    let mut stream = env
        .client
        .grade_batch(tokio_stream::iter(vec![grader.clone(), pair, grader]))
        .await
        .expect("grade batch")
        .into_inner();
    let first = stream.message().await.expect("first result").expect("a message");
    let Some(proto::grade_batch_response::Payload::Result(result)) = first.payload else {
        panic!("the first answer is a result");
    };
    assert_eq!(result.reward, 1.0);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_runs_validates_saves_and_dry_runs_graders() {
    let env = env().await;
    let dir = tempfile::tempdir().unwrap();
    let grader = dir.path().join("grader.json");
    let item = dir.path().join("item.json");
    std::fs::write(&grader, string_check("eq").to_string()).unwrap();
    std::fs::write(&item, json!({"reference_answer": "205"}).to_string()).unwrap();
    let addr = env.server.url();
    let (g, i) = (grader.to_str().unwrap(), item.to_str().unwrap());

    let out = lathe(
        &addr,
        &[
            "graders", "run", "--grader", g, "--sample", "205", "--item", i, "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(printed["reward"], json!(1.0));
    assert_eq!(printed["metadata"]["type"], "string_check");

    let out = lathe(
        &addr,
        &["graders", "run", "--grader", g, "--sample", "204", "--item", i],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("reward: 0"));

    let out = lathe(&addr, &["graders", "validate", g]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let broken = dir.path().join("broken.json");
    std::fs::write(
        &broken,
        json!({"type": "string_check", "name": "x", "operation": "eq"}).to_string(),
    )
    .unwrap();
    let out = lathe(&addr, &["graders", "validate", broken.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("input"));

    let out = lathe(&addr, &["graders", "create", "answer-eq", g]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = lathe(&addr, &["graders", "get", "answer-eq", "--json"]);
    let saved: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(saved["grader"], string_check("eq"));
    let out = lathe(&addr, &["graders", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("answer-eq"));

    // Dry run over the RFT fixture: right answers for half of the rows.
    let mut datasets = env.server.datasets().await;
    let dataset = upload_fixture(&mut datasets, "rft.jsonl", proto::DatasetPurpose::Rft, "").await;
    let rows: Vec<Value> = std::fs::read_to_string(fixture("rft.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let samples: String = rows
        .iter()
        .enumerate()
        .map(|(n, row)| {
            let answer = if n % 2 == 0 {
                row["reference_answer"].as_str().unwrap().to_string()
            } else {
                "?".into()
            };
            format!("{}\n", Value::String(answer))
        })
        .collect();
    let samples_path = dir.path().join("samples.jsonl");
    std::fs::write(&samples_path, samples).unwrap();
    let out = lathe(
        &addr,
        &[
            "graders",
            "test",
            g,
            &dataset.id,
            "--samples",
            samples_path.to_str().unwrap(),
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["count"], rows.len());
    let expected_mean = rows.len().div_ceil(2) as f64 / rows.len() as f64;
    assert!(
        (report["mean"].as_f64().unwrap() - expected_mean).abs() < 1e-9,
        "{report}"
    );
    // Row 6 has reference_json instead of reference_answer: an invalid variable, counted.
    assert!((report["error_rate"].as_f64().unwrap() - 1.0 / rows.len() as f64).abs() < 1e-9);
    assert_eq!(report["errors_by_kind"]["invalid_variable_error"], json!(1));
    assert_eq!(report["guessability"]["empty_answer_mean"], json!(0.0));
    let out = lathe(
        &addr,
        &[
            "graders",
            "test",
            g,
            &dataset.id,
            "--samples",
            samples_path.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("guessability"));
}

/// `setup-python` builds the environment from the package index (one pinned package here,
/// OpenAI's whole list in the README's opt-in run); a server on that data dir grades the
/// OpenAI cookbook's rapidfuzz grader exactly as rapidfuzz itself scores, and names a
/// module the environment lacks at validation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_python_builds_the_environment_that_the_server_grades_in() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
        .args([
            "graders",
            "setup-python",
            "--json",
            "--no-defaults",
            "--package",
            "rapidfuzz==3.10.1",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .expect("run lathe");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["modules_ok"], json!(["rapidfuzz"]));
    assert!(
        report["installed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().eq_ignore_ascii_case("rapidfuzz==3.10.1")),
        "{report}"
    );
    let python = data.join("python-env/bin/python3");
    let (text, reference) = ("fuzzy wuzzy was a bear", "fuzzy wuzzy had no hair");
    let want = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys; from rapidfuzz import fuzz, utils; print(fuzz.WRatio(sys.argv[1], sys.argv[2], processor=utils.default_process) / 100.0)",
            text,
            reference,
        ])
        .output()
        .unwrap();
    let want: f64 = String::from_utf8(want.stdout).unwrap().trim().parse().unwrap();

    let server = TestServer::start(&data).await;
    let mut client = GraderServiceClient::new(server.channel().await);
    let cookbook = json!({
        "type": "python", "name": "python_grader", "image_tag": "2025-05-08",
        "source": "from rapidfuzz import fuzz, utils\n\ndef grade(sample, item) -> float:\n    output_text = sample[\"output_text\"]\n    reference_answer = item[\"reference_answer\"]\n    return fuzz.WRatio(output_text, reference_answer, processor=utils.default_process) / 100.0\n"
    });
    let result = client
        .run_grader(proto::RunGraderRequest {
            grader: Some(struct_from_json(&cookbook)),
            sample: sample(text),
            item: Some(struct_from_json(&json!({"reference_answer": reference}))),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    assert!(
        result
            .metadata
            .as_ref()
            .unwrap()
            .errors
            .as_ref()
            .is_none_or(|e| !e.python_grader_runtime_error),
        "{result:?}"
    );
    assert!(want > 0.0 && want < 1.0);
    assert!(
        (result.reward - want).abs() < 1e-12,
        "{} vs rapidfuzz's {want}",
        result.reward
    );
    // numpy is not in this environment: validation names it.
    let numpy = json!({"type": "python", "name": "n", "source": "import numpy as np\ndef grade(s, i):\n    return float(np.mean([1.0]))\n"});
    let err = client
        .validate_grader(proto::ValidateGraderRequest {
            grader: Some(struct_from_json(&numpy)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let v = err.get_details_bad_request().unwrap().field_violations;
    assert!(
        v.iter()
            .any(|v| v.field == "grader.source" && v.description.contains("numpy")),
        "{v:?}"
    );
    server.stop().await;
}
