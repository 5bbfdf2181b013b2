//! Prompt optimisation runs over real gRPC, with the test-only OpenAI stub
//! as the student (it answers right only when the prompt tells it how, or
//! on even numbers once it is shown demonstrations) and as the reflection
//! model: given candidates that do not help are rejected, the reflection's
//! rewrite is kept and wins, demonstrations are drawn from training items,
//! the comparison is paired, budgets hold, and bad requests are refused.

use crate::common::openai_stub::{Reply, chat_body};
use crate::common::*;
use crate::evals::{config, create_eval, evals, numbered, upload_items};
use lathe::client::Channel;
use lathe::proto::{self, eval_service_client::EvalServiceClient};
use serde_json::{Value, json};
use tonic::Code;

const DIGITS: &str = "Answer with the number's digits only.";

/// The student: right when a system message says `DIGITS`; with
/// demonstrations (assistant turns), right on even numbers; else wrong.
/// The reflector: always proposes `DIGITS`.
fn student_and_reflector(body: &Value) -> Reply {
    let messages = body["messages"].as_array().unwrap();
    if body["model"] == "reflector" {
        let asked = messages[0]["content"].as_str().unwrap();
        assert!(asked.contains("Answer:") && asked.contains("Score:"), "{asked}");
        return Reply::Json(chat_body(&format!(
            "Let me think.\n<instructions>{DIGITS}</instructions>"
        )));
    }
    if body["model"] == "gated" {
        return Reply::Gated(Box::new(Reply::Json(chat_body("late"))));
    }
    let n: usize = messages.last().unwrap()["content"]
        .as_str()
        .and_then(|c| c.strip_prefix("what is "))
        .and_then(|n| n.parse().ok())
        .expect("a templated prompt");
    let told = messages.iter().any(|m| m["role"] == "system" && m["content"] == DIGITS);
    let shown = messages.iter().any(|m| m["role"] == "assistant");
    if told || (shown && n.is_multiple_of(2)) {
        Reply::Json(chat_body(&n.to_string()))
    } else {
        Reply::Json(chat_body("a number"))
    }
}

struct Setup {
    server: TestServer,
    evals: EvalServiceClient<Channel>,
    eval: String,
    train: String,
    validation: String,
    test: String,
    _dir: tempfile::TempDir,
    _stub: std::sync::Arc<crate::common::openai_stub::Stub>,
}

async fn setup() -> Setup {
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.respond_with(student_and_reflector);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut evals = evals(&server).await;
    let eval = create_eval(&mut evals).await;
    let items = numbered(30);
    let train = upload_items(&server, &items[..16]).await;
    let validation = upload_items(&server, &items[16..24]).await;
    let test = upload_items(&server, &items[24..]).await;
    Setup {
        server,
        evals,
        eval,
        train,
        validation,
        test,
        _dir: dir,
        _stub: stub,
    }
}

fn request(s: &Setup, budget: u64) -> proto::CreatePromptOptimizationRequest {
    proto::CreatePromptOptimizationRequest {
        eval_id: s.eval.clone(),
        model: "stub/student".into(),
        input_messages: Some(lathe::proto::json::list_value(&[
            json!({"role": "user", "content": "what is {{ item.n }}"}),
        ])),
        instructions: "Be helpful.".into(),
        train_dataset_id: s.train.clone(),
        validation_dataset_id: s.validation.clone(),
        minibatch_size: 4,
        budget: Some(proto::RunBudget {
            max_model_calls: budget,
            max_tokens: 0,
        }),
        seed: 3,
        ..Default::default()
    }
}

async fn wait(evals: &mut EvalServiceClient<Channel>, id: &str) -> proto::PromptOptimization {
    let mut last = None;
    for _ in 0..600 {
        let o = evals
            .get_prompt_optimization(proto::GetPromptOptimizationRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .optimization
            .unwrap();
        if !matches!(
            proto::EvalRunState::try_from(o.state),
            Ok(proto::EvalRunState::Queued | proto::EvalRunState::InProgress)
        ) {
            return o;
        }
        last = Some(o);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the optimisation did not end: {last:?}");
}

/// Starts a run and waits for it to end.
async fn run(
    evals: &mut EvalServiceClient<Channel>,
    ask: proto::CreatePromptOptimizationRequest,
) -> proto::PromptOptimization {
    let created = evals
        .create_prompt_optimization(ask)
        .await
        .unwrap()
        .into_inner()
        .optimization
        .unwrap();
    wait(evals, &created.id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reflections_rewrite_beats_the_original_and_given_candidates_that_do_not_help() {
    let mut s = setup().await;
    let created = s
        .evals
        .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
            candidate_instructions: vec!["Say hello first.".into()],
            reflection_model: "stub/reflector".into(),
            test_dataset_id: s.test.clone(),
            ..request(&s, 120)
        })
        .await
        .unwrap()
        .into_inner()
        .optimization
        .unwrap();
    assert!(created.id.starts_with("popt_"));
    let o = wait(&mut s.evals, &created.id).await;
    assert_eq!(o.state, proto::EvalRunState::Completed as i32, "{o:?}");
    // The original, then the reflection's rewrite; the given candidate
    // did not beat the original on its minibatch.
    let origins: Vec<&str> = o.candidates.iter().map(|c| c.origin.as_str()).collect();
    assert_eq!(origins, ["original", "reflection"], "{o:?}");
    assert_eq!(o.candidates[1].instructions, DIGITS);
    assert_eq!(o.candidates[1].parent, 0);
    assert_eq!(o.best, 1);
    assert_eq!(
        (o.candidates[0].validation_mean, o.candidates[1].validation_mean),
        (0.0, 1.0)
    );
    assert!(o.rejected >= 1, "{o:?}");
    // Paired on the validation items and on the held-out ones.
    let v = o.validation.clone().unwrap();
    assert_eq!((v.items, v.original_passed, v.best_passed), (8, 0, 8));
    assert_eq!((v.mean_difference, v.ci_low, v.ci_high), (1.0, 1.0, 1.0));
    assert!(v.mcnemar_p < 0.01, "{v:?}");
    let t = o.test.clone().unwrap();
    assert_eq!((t.dataset_id.as_str(), t.items, t.best_passed), (s.test.as_str(), 6, 6));
    // Within its budget, and it says what stopped it.
    assert!(o.model_calls <= 120 && o.model_calls > 8, "{o:?}");
    assert!(o.stopped.contains("budget"), "{}", o.stopped);
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demonstrations_come_from_training_items_with_a_reference() {
    let mut s = setup().await;
    let ask = proto::CreatePromptOptimizationRequest {
        max_demos: 2,
        demo_answer_field: "/answer".into(),
        ..request(&s, 80)
    };
    let o = run(&mut s.evals, ask.clone()).await;
    assert_eq!(o.state, proto::EvalRunState::Completed as i32, "{o:?}");
    let best = &o.candidates[o.best as usize];
    assert_eq!(best.origin, "demonstrations", "{o:?}");
    assert_eq!(best.demos.len(), 2);
    assert!(best.demos.iter().all(|d| *d < 16), "training rows: {best:?}");
    // Right on the even validation items (16, 18, 20, 22).
    assert_eq!(best.validation_passed, 4, "{o:?}");
    assert!(o.model_calls <= 80);
    // The same seed makes the same search.
    let again = run(&mut s.evals, ask).await;
    let demos = |o: &proto::PromptOptimization| o.candidates.iter().map(|c| c.demos.clone()).collect::<Vec<_>>();
    assert_eq!(demos(&again), demos(&o));
    assert_eq!(
        (again.steps, again.rejected, again.model_calls),
        (o.steps, o.rejected, o.model_calls)
    );
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_a_run_can_be_cancelled() {
    let mut s = setup().await;
    let field = |e: &tonic::Status| {
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        e.message().to_string()
    };
    // The original on 8 validation items and 6 held-out items twice: 20 calls.
    let e = s
        .evals
        .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
            test_dataset_id: s.test.clone(),
            ..request(&s, 19)
        })
        .await
        .unwrap_err();
    assert!(field(&e).contains("budget.max_model_calls"), "{e:?}");
    let e = s
        .evals
        .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
            max_demos: 2,
            ..request(&s, 100)
        })
        .await
        .unwrap_err();
    assert!(field(&e).contains("demo_answer_field"), "{e:?}");
    let e = s
        .evals
        .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
            input_messages: Some(lathe::proto::json::list_value(&[
                json!({"role": "user", "content": "{{ item.missing }}"}),
            ])),
            ..request(&s, 100)
        })
        .await
        .unwrap_err();
    assert!(field(&e).contains("input_messages"), "{e:?}");
    let e = s
        .evals
        .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
            max_demos: 2,
            demo_answer_field: "/nowhere".into(),
            ..request(&s, 100)
        })
        .await
        .unwrap_err();
    assert!(field(&e).contains("demo_answer_field"), "{e:?}");

    // A model that never answers keeps the run in progress until cancelled.
    let created = s
        .evals
        .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
            model: "stub/gated".into(),
            ..request(&s, 100)
        })
        .await
        .unwrap()
        .into_inner()
        .optimization
        .unwrap();
    let cancelled = s
        .evals
        .cancel_prompt_optimization(proto::CancelPromptOptimizationRequest { id: created.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .optimization
        .unwrap();
    assert_eq!(cancelled.state, proto::EvalRunState::Canceled as i32);
    let again = s
        .evals
        .cancel_prompt_optimization(proto::CancelPromptOptimizationRequest { id: created.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    let missing = s
        .evals
        .get_prompt_optimization(proto::GetPromptOptimizationRequest {
            id: "popt_00000000000000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    s.server.stop().await;
}

/// A run stopped mid-search (its worker shut down while the reflection
/// model had not answered) resumes on the next server from its saved
/// state and ends as an uninterrupted run of the same request does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_resumes_from_its_saved_search_and_ends_as_an_uninterrupted_one() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (stub, url) = crate::common::openai_stub::start().await;
    let hold = Arc::new(AtomicBool::new(true));
    let holding = hold.clone();
    stub.respond_with(move |body| {
        if body["model"] == "reflector" && holding.load(Ordering::SeqCst) {
            return Reply::Gated(Box::new(Reply::Json(chat_body("late"))));
        }
        student_and_reflector(body)
    });
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut evals = evals(&server).await;
    let eval = create_eval(&mut evals).await;
    let items = numbered(30);
    let s = Setup {
        eval,
        train: upload_items(&server, &items[..16]).await,
        validation: upload_items(&server, &items[16..24]).await,
        test: upload_items(&server, &items[24..]).await,
        evals,
        server,
        _dir: tempfile::tempdir().unwrap(),
        _stub: stub,
    };
    let ask = proto::CreatePromptOptimizationRequest {
        reflection_model: "stub/reflector".into(),
        ..request(&s, 60)
    };
    let Setup { server, mut evals, .. } = s;
    let id = evals
        .create_prompt_optimization(ask.clone())
        .await
        .unwrap()
        .into_inner()
        .optimization
        .unwrap()
        .id;
    // The original is scored and saved; the first reflection never answers.
    let mut saved = None;
    for _ in 0..400 {
        let o = evals
            .get_prompt_optimization(proto::GetPromptOptimizationRequest { id: id.clone() })
            .await
            .unwrap()
            .into_inner()
            .optimization
            .unwrap();
        if o.candidates.len() == 1 {
            saved = Some(o);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let saved = saved.expect("the original was scored");
    assert_eq!((saved.steps, saved.model_calls), (0, 8), "{saved:?}");
    server.stop().await;

    hold.store(false, Ordering::SeqCst);
    let server = TestServer::start_with(config(dir.path(), &url)).await;
    let mut evals = crate::evals::evals(&server).await;
    let resumed = wait(&mut evals, &id).await;
    assert_eq!(resumed.state, proto::EvalRunState::Completed as i32, "{resumed:?}");
    let fresh = run(&mut evals, ask).await;
    let shape = |o: &proto::PromptOptimization| {
        (
            o.candidates
                .iter()
                .map(|c| (c.instructions.clone(), c.demos.clone()))
                .collect::<Vec<_>>(),
            o.steps,
            o.rejected,
            o.model_calls,
            o.best,
        )
    };
    assert_eq!(shape(&resumed), shape(&fresh));
    assert_eq!(resumed.candidates[1].instructions, DIGITS);
    server.stop().await;
}
