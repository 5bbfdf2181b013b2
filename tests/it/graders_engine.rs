//! The engine end to end with provider doubles: OpenAI's documented grader examples,
//! error flags, model-grader retries and caching, multi formulas, batches and dry runs.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lathe::graders::{
    CallPolicy, EmbedError, Embedder, GradeContext, Grader, ResultCache, Sample, TokenUsage, dry_run, grade_batch,
    parse, run,
};
use lathe::inference::{ChatCompletion, ChatError, ChatModel, ChatRequest, ChatStream, chat};
use serde_json::{Value, json};

/// Answers from a script; records what it was asked.
#[derive(Default)]
struct ScriptedModel {
    replies: Mutex<VecDeque<Result<ChatCompletion, ChatError>>>,
    calls: AtomicUsize,
    delay: Option<Duration>,
    seen: Mutex<Vec<ChatRequest>>,
}

impl ScriptedModel {
    fn new(replies: Vec<Result<ChatCompletion, ChatError>>) -> Arc<ScriptedModel> {
        Arc::new(ScriptedModel {
            replies: Mutex::new(replies.into()),
            ..Default::default()
        })
    }
}

fn text(t: &str) -> Result<ChatCompletion, ChatError> {
    Ok(ChatCompletion {
        text: t.to_string(),
        usage: TokenUsage {
            prompt: 100,
            completion: 20,
        },
        finish_reason: "stop".into(),
        ..Default::default()
    })
}

fn failure(retryable: bool) -> Result<ChatCompletion, ChatError> {
    Err(ChatError::Upstream {
        retryable,
        status: None,
        message: if retryable {
            "429 rate limited"
        } else {
            "400 bad request"
        }
        .to_string(),
    })
}

#[async_trait]
impl ChatModel for ScriptedModel {
    async fn stream(&self, request: ChatRequest) -> Result<ChatStream, ChatError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(request);
        }
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        let next = self.replies.lock().ok().and_then(|mut r| r.pop_front());
        next.unwrap_or_else(|| text("{\"result\": 1.0, \"steps\": []}"))
            .map(chat::stream_of)
    }
}

struct FixedEmbedder;

#[async_trait]
impl Embedder for FixedEmbedder {
    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts
            .iter()
            .map(|t| {
                if t.contains("cat") {
                    vec![1.0, 0.0]
                } else {
                    vec![1.0, 1.0]
                }
            })
            .collect())
    }
}

fn ctx_with(model: Arc<ScriptedModel>) -> GradeContext {
    GradeContext {
        model_client: Some(model),
        model_calls: CallPolicy {
            timeout: Duration::from_secs(5),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
        },
        ..GradeContext::default()
    }
}

fn grader(json: Value) -> Grader {
    parse(&json).unwrap_or_else(|v| panic!("{v:?}"))
}

// --- OpenAI's documented examples -------------------------------------------------

#[tokio::test]
async fn openai_string_check_example() {
    let g = grader(json!({
        "type": "string_check", "name": "Example string check grader",
        "input": "{{sample.output_text}}", "reference": "{{item.label}}", "operation": "eq"
    }));
    let ctx = GradeContext::default();
    let item = json!({"label": "Paris"});
    assert_eq!(
        run(&g, &Sample::from_model_output("Paris"), &item, &ctx).await.reward,
        1.0
    );
    assert_eq!(
        run(&g, &Sample::from_model_output("paris"), &item, &ctx).await.reward,
        0.0
    );
    let r = run(&g, &Sample::from_model_output("Paris"), &item, &ctx).await;
    assert_eq!(r.metadata.kind, "string_check");
    assert_eq!(&*r.metadata.name, "Example string check grader");
}

#[tokio::test]
async fn openai_text_similarity_example() {
    let g = grader(json!({
        "type": "text_similarity", "name": "Example text similarity grader",
        "input": "{{sample.output_text}}", "reference": "{{item.label}}", "evaluation_metric": "fuzzy_match"
    }));
    let r = run(
        &g,
        &Sample::from_model_output("fuzy wuzy had no hair"),
        &json!({"label": "fuzzy wuzzy had no hair"}),
        &GradeContext::default(),
    )
    .await;
    // rapidfuzz.fuzz.ratio("fuzy wuzy had no hair", "fuzzy wuzzy had no hair") / 100
    assert!((r.reward - 0.9545454545454546).abs() < 1e-9, "{}", r.reward);
}

#[tokio::test]
async fn openai_score_model_example() {
    let g = grader(json!({
        "type": "score_model", "name": "Example score model grader",
        "input": [{"role": "user", "content": "Score how close the reference answer is to the model answer. Score 1.0 if they are the same and 0.0 if they are different. Return just a floating point score\n\nReference answer: {{item.label}}\n\nModel answer: {{sample.output_text}}"}],
        "model": "o4-mini-2025-04-16",
        "sampling_params": {"temperature": 1, "top_p": 1, "seed": 42}
    }));
    let model = ScriptedModel::new(vec![text(
        "```json\n{\"result\": 0.9, \"steps\": [{\"description\": \"d\", \"conclusion\": \"c\"}]}\n```",
    )]);
    let r = run(
        &g,
        &Sample::from_model_output("Paris"),
        &json!({"label": "Paris"}),
        &ctx_with(model.clone()),
    )
    .await;
    assert_eq!(r.reward, 0.9);
    assert_eq!(r.metadata.token_usage.get("o4-mini-2025-04-16"), Some(&120));
    let seen = model.seen.lock().expect("lock");
    let request = &seen[0];
    assert_eq!(request.model, "o4-mini-2025-04-16");
    assert_eq!(request.messages[0]["role"], "user");
    let text = request.messages[0]["content"].as_str().expect("text content");
    assert!(
        text.ends_with("Reference answer: Paris\n\nModel answer: Paris"),
        "{text}"
    );
    assert_eq!(
        (request.temperature, request.top_p, request.seed),
        (Some(1.0), Some(1.0), Some(42))
    );
    let format = request.response_format.as_ref().expect("structured output");
    assert_eq!(format["type"], "json_schema");
    assert_eq!(
        format["json_schema"]["schema"]["properties"]["result"]["type"],
        "number"
    );
}

#[tokio::test]
async fn openai_label_model_example() {
    let g = grader(json!({
        "type": "label_model", "name": "First label grader", "model": "gpt-4o-mini-2024-07-18",
        "input": [
            {"role": "system", "content": "Classify the sentiment of the following statement as one of positive, neutral, or negative"},
            {"role": "user", "content": "Statement: {{item.response}}"}
        ],
        "passing_labels": ["positive"], "labels": ["positive", "neutral", "negative"]
    }));
    let model = ScriptedModel::new(vec![
        text("{\"result\": \"positive\"}"),
        text("{\"result\": \"negative\"}"),
        text("angry"),
    ]);
    let ctx = ctx_with(model);
    let item = json!({"response": "I love it"});
    let s = Sample::from_model_output("");
    assert_eq!(run(&g, &s, &item, &ctx).await.reward, 1.0);
    assert_eq!(run(&g, &s, &item, &ctx).await.reward, 0.0);
    let r = run(&g, &s, &item, &ctx).await;
    assert_eq!(r.reward, 0.0);
    assert!(r.metadata.errors().model_grader_parse_error);
}

#[tokio::test]
async fn openai_multi_example() {
    let g = grader(json!({
        "type": "multi",
        "graders": {
            "name": {"name": "name", "type": "string_check", "input": "{{sample.output_json.name}}", "reference": "{{item.name}}", "operation": "eq"},
            "email": {"name": "email", "type": "string_check", "input": "{{sample.output_json.email}}", "reference": "{{item.email}}", "operation": "eq"}
        },
        "calculate_output": "(name + email) / 2"
    }));
    let item = json!({"name": "Ada", "email": "ada@example.com"});
    let r = run(
        &g,
        &Sample::from_model_output("{\"name\": \"Ada\", \"email\": \"ada@x.org\"}"),
        &item,
        &GradeContext::default(),
    )
    .await;
    assert_eq!(r.reward, 0.5);
    assert_eq!(r.sub_rewards.get("name"), Some(&1.0));
    assert_eq!(r.sub_rewards.get("email"), Some(&0.0));
    assert!(!r.metadata.errors().other_error);
    // Not JSON: the sub-graders cannot read output_json.
    let r = run(&g, &Sample::from_model_output("Ada"), &item, &GradeContext::default()).await;
    assert_eq!(r.reward, 0.0);
    assert!(r.metadata.errors().sample_parse_error);
}

#[test]
fn openai_python_example_validates() {
    let g = grader(json!({
        "type": "python", "name": "python_grader", "image_tag": "2025-05-08",
        "source": "from rapidfuzz import fuzz, utils\n\ndef grade(sample, item) -> float:\n    output_text = sample[\"output_text\"]\n    reference_answer = item[\"reference_answer\"]\n    return fuzz.WRatio(output_text, reference_answer, processor=utils.default_process) / 100.0\n"
    }));
    assert_eq!(g.kind(), "python");
}

// --- error flags ---------------------------------------------------------------------

#[tokio::test]
async fn missing_variable_is_an_error_not_an_empty_string() {
    let g = grader(
        json!({"type": "string_check", "name": "s", "input": "{{sample.output_text}}", "reference": "{{item.nope}}", "operation": "ne"}),
    );
    let r = run(
        &g,
        &Sample::from_model_output("x"),
        &json!({"label": "x"}),
        &GradeContext::default(),
    )
    .await;
    assert_eq!(r.reward, 0.0, "ne against an empty string would have passed");
    assert!(r.metadata.errors().invalid_variable_error);
}

#[tokio::test]
async fn cosine_needs_an_embedder() {
    let g = grader(
        json!({"type": "text_similarity", "name": "c", "input": "{{sample.output_text}}", "reference": "{{item.a}}", "evaluation_metric": "cosine"}),
    );
    let item = json!({"a": "a cat"});
    let r = run(
        &g,
        &Sample::from_model_output("the cat"),
        &item,
        &GradeContext::default(),
    )
    .await;
    assert!(r.metadata.errors().other_error);
    assert!(r.metadata.errors().other_error_details.contains("embeddings provider"));
    let ctx = GradeContext {
        embedder: Some(Arc::new(FixedEmbedder)),
        ..GradeContext::default()
    };
    assert!((run(&g, &Sample::from_model_output("the cat"), &item, &ctx).await.reward - 1.0).abs() < 1e-9);
    let r = run(&g, &Sample::from_model_output("a dog"), &item, &ctx).await;
    assert!((r.reward - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-6);
}

#[tokio::test]
async fn multi_division_by_zero_is_other_error() {
    let g = grader(json!({"type": "multi", "name": "m", "calculate_output": "a / b",
    "graders": {
        "a": {"type": "string_check", "input": "{{sample.output_text}}", "reference": "x", "operation": "eq"},
        "b": {"type": "string_check", "input": "{{sample.output_text}}", "reference": "y", "operation": "eq"}
    }}));
    let r = run(
        &g,
        &Sample::from_model_output("x"),
        &json!({}),
        &GradeContext::default(),
    )
    .await;
    assert_eq!(r.reward, 0.0);
    assert!(r.metadata.errors().other_error);
    assert!(r.metadata.errors().other_error_details.contains("division by zero"));
}

// --- model graders: range, refusal, retries, timeouts, cache ----------------------------

fn score_grader() -> Grader {
    grader(
        json!({"type": "score_model", "name": "s", "model": "m", "range": [0, 10],
        "input": [{"role": "user", "content": "{{sample.output_text}}"}]}),
    )
}

#[tokio::test]
async fn score_is_clamped_and_junk_is_a_parse_error() {
    let model = ScriptedModel::new(vec![text("{\"result\": 14}"), text("{\"result\": -3}"), text("eleven")]);
    let ctx = ctx_with(model);
    let s = Sample::from_model_output("a");
    assert_eq!(run(&score_grader(), &s, &json!({}), &ctx).await.reward, 10.0);
    assert_eq!(run(&score_grader(), &s, &json!({}), &ctx).await.reward, 0.0);
    let r = run(&score_grader(), &s, &json!({}), &ctx).await;
    assert!(r.metadata.errors().model_grader_parse_error);
}

#[tokio::test]
async fn refusal_is_flagged() {
    let model = ScriptedModel::new(vec![Ok(ChatCompletion {
        refusal: Some("I can't help with that".into()),
        ..Default::default()
    })]);
    let r = run(
        &score_grader(),
        &Sample::from_model_output("a"),
        &json!({}),
        &ctx_with(model),
    )
    .await;
    assert!(r.metadata.errors().model_grader_refusal_error);
    assert_eq!(r.reward, 0.0);
}

// Backoffs and retry-after waits run on tokio's paused clock: no real waiting.
#[tokio::test(start_paused = true)]
async fn retryable_errors_are_retried_and_permanent_ones_are_not() {
    let model = ScriptedModel::new(vec![failure(true), failure(true), text("{\"result\": 7}")]);
    let r = run(
        &score_grader(),
        &Sample::from_model_output("a"),
        &json!({}),
        &ctx_with(model.clone()),
    )
    .await;
    assert_eq!(r.reward, 7.0);
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);

    let model = ScriptedModel::new(vec![failure(false), text("{\"result\": 7}")]);
    let r = run(
        &score_grader(),
        &Sample::from_model_output("a"),
        &json!({}),
        &ctx_with(model.clone()),
    )
    .await;
    assert!(r.metadata.errors().model_grader_server_error);
    assert!(r.metadata.errors().model_grader_server_error_details.contains("400"));
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);

    // A full local queue is retried after the delay it names.
    let model = ScriptedModel::new(vec![
        Err(ChatError::Overloaded {
            retry_after: Duration::from_secs(5),
            message: "the queue is full".into(),
        }),
        text("{\"result\": 5}"),
    ]);
    let r = run(
        &score_grader(),
        &Sample::from_model_output("a"),
        &json!({}),
        &ctx_with(model.clone()),
    )
    .await;
    assert_eq!(r.reward, 5.0);
    assert_eq!(model.calls.load(Ordering::SeqCst), 2);
}

// A model that takes ten minutes, against a two-minute timeout, on tokio's
// paused clock: the test takes no time.
#[tokio::test(start_paused = true)]
async fn slow_models_time_out_after_every_attempt() {
    let model = Arc::new(ScriptedModel {
        delay: Some(Duration::from_secs(600)),
        ..Default::default()
    });
    let mut ctx = ctx_with(model.clone());
    ctx.model_calls.timeout = Duration::from_secs(120);
    let r = run(&score_grader(), &Sample::from_model_output("a"), &json!({}), &ctx).await;
    assert!(r.metadata.errors().model_grader_server_error);
    assert!(
        r.metadata
            .errors()
            .model_grader_server_error_details
            .contains("timed out")
    );
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn cache_serves_repeated_samples() {
    let model = ScriptedModel::new(vec![text("{\"result\": 4}"), text("{\"result\": 9}")]);
    let ctx = GradeContext {
        cache: Some(Arc::new(ResultCache::new(16))),
        ..ctx_with(model.clone())
    };
    let s = Sample::from_model_output("same answer");
    let first = run(&score_grader(), &s, &json!({"q": 1}), &ctx).await;
    let second = run(&score_grader(), &s, &json!({"q": 1}), &ctx).await;
    assert_eq!((first.reward, second.reward), (4.0, 4.0));
    assert_eq!(model.calls.load(Ordering::SeqCst), 1);
    assert!(second.metadata.token_usage.is_empty(), "a cache hit spends no tokens");
    let other = run(&score_grader(), &s, &json!({"q": 2}), &ctx).await;
    assert_eq!(other.reward, 9.0);
}

// --- batches and dry runs ------------------------------------------------------------

#[tokio::test]
async fn batch_keeps_input_order() {
    let g = Arc::new(grader(
        json!({"type": "text_similarity", "name": "t", "input": "{{sample.output_text}}", "reference": "{{item.r}}", "evaluation_metric": "rouge_1"}),
    ));
    let pairs: Vec<(Sample, Value)> = (0..200)
        .map(|i| {
            (
                Sample::from_model_output(format!("w{i} common")),
                json!({"r": format!("w{i} common")}),
            )
        })
        .collect();
    let results = grade_batch(g, pairs, &GradeContext::default(), 8).await;
    assert_eq!(results.len(), 200);
    assert!(results.iter().all(|r| r.reward == 1.0));

    let model = ScriptedModel::new(
        (0..20)
            .map(|i| text(&format!("{{\"result\": {}}}", i as f64 / 20.0)))
            .collect(),
    );
    let g = Arc::new(score_grader());
    let pairs: Vec<(Sample, Value)> = (0..20)
        .map(|i| (Sample::from_model_output(format!("{i}")), json!({})))
        .collect();
    let results = grade_batch(g, pairs, &ctx_with(model), 1).await;
    let rewards: Vec<f64> = results.iter().map(|r| r.reward).collect();
    assert_eq!(rewards, (0..20).map(|i| i as f64 / 20.0).collect::<Vec<_>>());
}

#[tokio::test]
async fn dry_run_flags_a_guessable_grader() {
    let g = Arc::new(grader(
        json!({"type": "string_check", "name": "yes", "input": "{{sample.output_text}}", "reference": "{{item.label}}", "operation": "eq"}),
    ));
    let pairs: Vec<(Sample, Value)> = (0..10)
        .map(|i| {
            let label = if i < 8 { "yes" } else { "no" };
            let answer = if i % 2 == 0 { label } else { "maybe" };
            (Sample::from_model_output(answer), json!({"label": label}))
        })
        .collect();
    let report = dry_run(g, pairs, &GradeContext::default(), 4).await;
    assert_eq!(report.count, 10);
    assert!((report.mean - 0.5).abs() < 1e-9);
    let constant = report.guessability.constant_answer.as_ref().expect("has a reference");
    assert_eq!(constant.answer, "yes");
    assert!((constant.mean_reward - 0.8).abs() < 1e-9);
    assert!(
        report.guessability.warnings.iter().any(|w| w.contains("\"yes\"")),
        "{:?}",
        report.guessability.warnings
    );
    assert_eq!(report.histogram.iter().map(|b| b.count).sum::<usize>(), 10);
    assert_eq!(report.error_rate, 0.0);
}
