//! Keys and projects: every RPC of every service, called with another
//! project's key on a project's resources, answers NOT_FOUND or
//! PERMISSION_DENIED and changes nothing. The RPCs are enumerated from the
//! descriptor set, so a new one without a case here fails this test.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::scripted::{MODEL, ScriptedTrainer};
use crate::common::*;
use futures::StreamExt;
use lathe::proto::json::struct_from_json;
use lathe::proto::{
    self, admin_service_client::AdminServiceClient, dataset_service_client::DatasetServiceClient,
    eval_service_client::EvalServiceClient, fine_tuning_service_client::FineTuningServiceClient,
    grader_service_client::GraderServiceClient, model_service_client::ModelServiceClient,
};
use prost::Message;
use serde_json::json;
use tonic::Code;

/// Typed clients of every service over one connection with one key.
struct Clients {
    admin: AdminServiceClient<Channel>,
    datasets: DatasetServiceClient<Channel>,
    jobs: FineTuningServiceClient<Channel>,
    models: ModelServiceClient<Channel>,
    graders: GraderServiceClient<Channel>,
    evals: EvalServiceClient<Channel>,
}

impl Clients {
    async fn new(server: &TestServer, key: &str) -> Clients {
        let channel = server.channel_with(key).await;
        Clients {
            admin: AdminServiceClient::new(channel.clone()),
            datasets: DatasetServiceClient::new(channel.clone()),
            jobs: FineTuningServiceClient::new(channel.clone()),
            models: ModelServiceClient::new(channel.clone()),
            graders: GraderServiceClient::new(channel.clone()),
            evals: EvalServiceClient::new(channel),
        }
    }
}

/// Makes project `id` and a member key in it; returns the key's secret.
async fn project_with_key(admin: &mut AdminServiceClient<Channel>, id: &str) -> String {
    admin
        .create_project(proto::CreateProjectRequest {
            id: id.into(),
            ..Default::default()
        })
        .await
        .expect("create project");
    admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: id.into(),
            name: format!("{id} ci"),
            owner: "ci@example.com".into(),
            role: proto::Role::Member as i32,
        })
        .await
        .expect("create key")
        .into_inner()
        .secret
}

/// What project A made.
struct Owned {
    train: String,
    items: String,
    job: String,
    model: String,
    grader: String,
    eval: String,
    run: String,
    /// A's stored chat completion.
    completion: String,
    /// A's prompt optimisation.
    optimization: String,
    item: String,
}

async fn make_resources(a: &mut Clients) -> Owned {
    let train = upload_fixture(&mut a.datasets, "sft_tools.jsonl", proto::DatasetPurpose::Sft, "").await;
    let rows: String = (0..5)
        .map(|i| format!("{}\n", json!({"answer": i.to_string()})))
        .collect();
    let items = upload_bytes(
        &mut a.datasets,
        "items.jsonl",
        proto::DatasetPurpose::Eval,
        "",
        rows.as_bytes(),
        4096,
    )
    .await
    .expect("upload items");
    let job = a
        .jobs
        .create_job(proto::CreateJobRequest {
            base_model: MODEL.into(),
            training_dataset_id: train.id.clone(),
            suffix: "a".into(),
            ..Default::default()
        })
        .await
        .expect("create job")
        .into_inner()
        .job
        .unwrap();
    let job = wait_job(&mut a.jobs, &job.id).await;
    assert_eq!(job.state, proto::JobState::Succeeded as i32, "{job:?}");
    let grader = json!({
        "type": "string_check", "name": "exact", "operation": "eq",
        "input": "{{ sample.output_text }}", "reference": "{{ item.answer }}"
    });
    a.graders
        .create_grader(proto::CreateGraderRequest {
            name: "exact".into(),
            grader: Some(struct_from_json(&grader)),
        })
        .await
        .expect("save grader");
    let eval = a
        .evals
        .create_eval(proto::CreateEvalRequest {
            name: "a's eval".into(),
            item_schema: None,
            testing_criteria: vec![proto::TestingCriterion {
                grader: Some(struct_from_json(&json!({"name": "exact"}))),
                pass_threshold: None,
                name: String::new(),
            }],
            metadata: Default::default(),
            ..Default::default()
        })
        .await
        .expect("create eval")
        .into_inner()
        .eval
        .unwrap();
    let run = a
        .evals
        .create_eval_run(precomputed_run(&eval.id, &items.id))
        .await
        .expect("create run")
        .into_inner()
        .run
        .unwrap();
    let run = wait_run(&mut a.evals, &run.id).await;
    assert_eq!(run.state, proto::EvalRunState::Completed as i32, "{run:?}");
    let item = a
        .evals
        .list_output_items(proto::ListOutputItemsRequest {
            run_id: run.id.clone(),
            ..Default::default()
        })
        .await
        .expect("list items")
        .into_inner()
        .items
        .remove(0)
        .id;
    // A stored completion, answered by the test provider.
    let mut chat = a
        .models
        .chat(proto::ChatRequest {
            model: "stub/gpt-x".into(),
            messages: vec![proto::ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            store: true,
            ..Default::default()
        })
        .await
        .expect("chat")
        .into_inner();
    let mut completion = String::new();
    while let Some(msg) = chat.message().await.expect("chat stream") {
        if let Some(proto::chat_response::Payload::End(end)) = msg.payload {
            completion = end.completion_id;
        }
    }
    assert!(completion.starts_with("chatcmpl-"), "{completion:?}");
    let optimization = a
        .evals
        .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
            eval_id: eval.id.clone(),
            model: "stub/gpt-x".into(),
            input_messages: Some(lathe::proto::json::list_value(&[
                json!({"role": "user", "content": "{{ item.answer }}"}),
            ])),
            train_dataset_id: items.id.clone(),
            validation_dataset_id: items.id.clone(),
            budget: Some(proto::RunBudget {
                max_model_calls: 100,
                max_tokens: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("create prompt optimization")
        .into_inner()
        .optimization
        .unwrap()
        .id;
    Owned {
        optimization,
        completion,
        train: train.id,
        items: items.id,
        model: job.fine_tuned_model.clone(),
        job: job.id,
        grader: "exact".into(),
        eval: eval.id,
        run: run.id,
        item,
    }
}

fn precomputed_run(eval: &str, dataset: &str) -> proto::CreateEvalRunRequest {
    proto::CreateEvalRunRequest {
        eval_id: eval.into(),
        dataset_id: dataset.into(),
        source: Some(proto::create_eval_run_request::Source::Precomputed(
            proto::PrecomputedSource {
                sample_template: "{{ item.answer }}".into(),
            },
        )),
        concurrency: 0,
        error_rate_threshold: 0.0,
        name: String::new(),
        ..Default::default()
    }
}

async fn wait_job(jobs: &mut FineTuningServiceClient<Channel>, id: &str) -> proto::Job {
    for _ in 0..600 {
        let job = jobs
            .get_job(proto::GetJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        if !job.fine_tuned_model.is_empty() && job.finished_at.is_some() {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("job {id} did not finish");
}

async fn wait_run(evals: &mut EvalServiceClient<Channel>, id: &str) -> proto::EvalRun {
    for _ in 0..600 {
        let run = evals
            .get_eval_run(proto::GetEvalRunRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        if run.state == proto::EvalRunState::Completed as i32 || run.state == proto::EvalRunState::Failed as i32 {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {id} did not finish");
}

/// Every `/package.Service/Method` in the API's descriptor set.
fn every_rpc() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(lathe::proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = BTreeSet::new();
    for file in set.file {
        let package = file.package().to_string();
        for service in &file.service {
            for method in &service.method {
                out.insert(format!("/{package}.{}/{}", service.name(), method.name()));
            }
        }
    }
    out
}

fn denied<T: std::fmt::Debug>(rpc: &str, result: Result<T, tonic::Status>) -> Code {
    let code = match result {
        Ok(v) => panic!("{rpc} with another project's key succeeded: {v:?}"),
        Err(status) => status.code(),
    };
    assert!(
        matches!(code, Code::NotFound | Code::PermissionDenied),
        "{rpc}: {code:?} (wanted NOT_FOUND or PERMISSION_DENIED)"
    );
    code
}

/// B's call of `rpc` on A's resources; `Some(code)` when it was refused,
/// `None` for the few calls that succeed without touching A (lists, which
/// must omit A's records, and B's own identity), checked here too.
async fn call_as_b(rpc: &str, b: &mut Clients, a: &Owned) -> Option<Code> {
    let id = |s: &str| s.to_string();
    let code = match rpc {
        "/lathe.v1.AdminService/CreateProject" => denied(
            rpc,
            b.admin
                .create_project(proto::CreateProjectRequest {
                    id: id("c"),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.AdminService/UpdateProjectQuotas" => denied(
            rpc,
            b.admin
                .update_project_quotas(proto::UpdateProjectQuotasRequest {
                    project_id: id("a"),
                    quotas: Some(proto::ProjectQuotas {
                        max_running_jobs: Some(0),
                        ..Default::default()
                    }),
                })
                .await,
        ),
        "/lathe.v1.AdminService/ListProjects" => {
            denied(rpc, b.admin.list_projects(proto::ListProjectsRequest::default()).await)
        }
        "/lathe.v1.AdminService/CreateApiKey" => denied(
            rpc,
            b.admin
                .create_api_key(proto::CreateApiKeyRequest {
                    project_id: id("a"),
                    role: proto::Role::Admin as i32,
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.AdminService/ListApiKeys" => denied(
            rpc,
            b.admin
                .list_api_keys(proto::ListApiKeysRequest {
                    project_id: id("a"),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.AdminService/RevokeApiKey" => denied(
            rpc,
            b.admin
                .revoke_api_key(proto::RevokeApiKeyRequest { id: id("key_x") })
                .await,
        ),
        "/lathe.v1.AdminService/ListAuditEvents" => denied(
            rpc,
            b.admin
                .list_audit_events(proto::ListAuditEventsRequest::default())
                .await,
        ),
        "/lathe.v1.AdminService/GetCaller" => {
            let me = b
                .admin
                .get_caller(proto::GetCallerRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(me.key.unwrap().project_id, "b");
            return None;
        }
        "/lathe.v1.DatasetService/UploadDataset" => {
            // An upload only ever makes B's own dataset; it cannot name A's.
            let d = upload_bytes(&mut b.datasets, "b.jsonl", proto::DatasetPurpose::Eval, "", b"{}\n", 64)
                .await
                .unwrap();
            b.datasets
                .delete_dataset(proto::DeleteDatasetRequest { id: d.id })
                .await
                .unwrap();
            return None;
        }
        "/lathe.v1.DatasetService/GetDataset" => denied(
            rpc,
            b.datasets
                .get_dataset(proto::GetDatasetRequest { id: a.train.clone() })
                .await,
        ),
        "/lathe.v1.DatasetService/ListDatasets" => {
            let list = b
                .datasets
                .list_datasets(proto::ListDatasetsRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(list.datasets.is_empty(), "B lists A's datasets: {list:?}");
            return None;
        }
        "/lathe.v1.DatasetService/DeleteDataset" => denied(
            rpc,
            b.datasets
                .delete_dataset(proto::DeleteDatasetRequest { id: a.items.clone() })
                .await,
        ),
        "/lathe.v1.DatasetService/DownloadDataset" => denied(
            rpc,
            b.datasets
                .download_dataset(proto::DownloadDatasetRequest { id: a.train.clone() })
                .await,
        ),
        "/lathe.v1.DatasetService/SplitDataset" => denied(
            rpc,
            b.datasets
                .split_dataset(proto::SplitDatasetRequest {
                    id: a.train.clone(),
                    validation_fraction: 0.5,
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.DatasetService/CreateDistilledDataset" => denied(
            rpc,
            b.datasets
                .create_distilled_dataset(proto::CreateDistilledDatasetRequest {
                    run_id: a.run.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.DatasetService/CreatePreferenceDataset" => denied(
            rpc,
            b.datasets
                .create_preference_dataset(proto::CreatePreferenceDatasetRequest {
                    run_id: a.run.clone(),
                    preferred: Some(proto::create_preference_dataset_request::Preferred::ReferenceField(
                        "/answer".into(),
                    )),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.DatasetService/CreateToolCallItems" => {
            // It reads no record: it only ever makes B's own dataset.
            let made = b
                .datasets
                .create_tool_call_items(proto::CreateToolCallItemsRequest {
                    tools: Some(lathe::proto::json::list_value(&[serde_json::json!({"name": "ping"})])),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            b.datasets
                .delete_dataset(proto::DeleteDatasetRequest {
                    id: made.dataset.unwrap().id,
                })
                .await
                .unwrap();
            return None;
        }
        "/lathe.v1.FineTuningService/CreateJob" => denied(
            rpc,
            b.jobs
                .create_job(proto::CreateJobRequest {
                    base_model: MODEL.into(),
                    training_dataset_id: a.train.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.FineTuningService/GetJob" => {
            denied(rpc, b.jobs.get_job(proto::GetJobRequest { id: a.job.clone() }).await)
        }
        "/lathe.v1.FineTuningService/ListJobs" => {
            let list = b
                .jobs
                .list_jobs(proto::ListJobsRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(list.jobs.is_empty(), "B lists A's jobs: {list:?}");
            return None;
        }
        "/lathe.v1.FineTuningService/CancelJob" => denied(
            rpc,
            b.jobs.cancel_job(proto::CancelJobRequest { id: a.job.clone() }).await,
        ),
        "/lathe.v1.FineTuningService/PauseJob" => denied(
            rpc,
            b.jobs.pause_job(proto::PauseJobRequest { id: a.job.clone() }).await,
        ),
        "/lathe.v1.FineTuningService/ResumeJob" => denied(
            rpc,
            b.jobs.resume_job(proto::ResumeJobRequest { id: a.job.clone() }).await,
        ),
        "/lathe.v1.FineTuningService/ListJobEvents" => denied(
            rpc,
            b.jobs
                .list_job_events(proto::ListJobEventsRequest {
                    job_id: a.job.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.FineTuningService/ListCheckpoints" => denied(
            rpc,
            b.jobs
                .list_checkpoints(proto::ListCheckpointsRequest {
                    job_id: a.job.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.FineTuningService/WatchJob" => denied(
            rpc,
            b.jobs
                .watch_job(proto::WatchJobRequest {
                    job_id: a.job.clone(),
                    after_seq: 0,
                })
                .await,
        ),
        "/lathe.v1.ModelService/RegisterModel" => denied(
            rpc,
            b.models
                .register_model(proto::RegisterModelRequest {
                    name: id("planted"),
                    path: id("/tmp"),
                })
                .await,
        ),
        "/lathe.v1.ModelService/UploadModel" => denied(
            rpc,
            b.models
                .upload_model(tokio_stream::iter(vec![proto::UploadModelRequest {
                    payload: Some(proto::upload_model_request::Payload::Metadata(
                        proto::UploadModelMetadata { name: id("planted") },
                    )),
                }]))
                .await,
        ),
        "/lathe.v1.ModelService/ImportModel" => denied(
            rpc,
            b.models
                .import_model(proto::ImportModelRequest {
                    name: id("planted"),
                    source: id("/tmp"),
                })
                .await,
        ),
        "/lathe.v1.ModelService/ListModels" => {
            let list = b
                .models
                .list_models(proto::ListModelsRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(
                list.models.iter().all(|m| m.id != a.model),
                "B lists A's fine-tuned model: {list:?}"
            );
            return None;
        }
        "/lathe.v1.ModelService/GetModel" => denied(
            rpc,
            b.models.get_model(proto::GetModelRequest { id: a.model.clone() }).await,
        ),
        "/lathe.v1.ModelService/DeleteModel" => denied(
            rpc,
            b.models
                .delete_model(proto::DeleteModelRequest { id: a.model.clone() })
                .await,
        ),
        "/lathe.v1.ModelService/Chat" => denied(
            rpc,
            b.models
                .chat(proto::ChatRequest {
                    model: a.model.clone(),
                    messages: vec![proto::ChatMessage {
                        role: id("user"),
                        content: id("hi"),
                    }],
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.ModelService/ListStoredCompletions" => {
            let list = b
                .models
                .list_stored_completions(proto::ListStoredCompletionsRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(list.completions.is_empty(), "B lists A's completions: {list:?}");
            return None;
        }
        "/lathe.v1.ModelService/GetStoredCompletion" => denied(
            rpc,
            b.models
                .get_stored_completion(proto::GetStoredCompletionRequest {
                    id: a.completion.clone(),
                })
                .await,
        ),
        "/lathe.v1.ModelService/UpdateStoredCompletion" => denied(
            rpc,
            b.models
                .update_stored_completion(proto::UpdateStoredCompletionRequest {
                    id: a.completion.clone(),
                    metadata: [(id("planted"), id("yes"))].into(),
                })
                .await,
        ),
        "/lathe.v1.ModelService/DeleteStoredCompletion" => denied(
            rpc,
            b.models
                .delete_stored_completion(proto::DeleteStoredCompletionRequest {
                    id: a.completion.clone(),
                })
                .await,
        ),
        "/lathe.v1.DatasetService/CreateDatasetFromCompletions" => {
            // B's filter reaches only B's own completions: there are none.
            let err = b
                .datasets
                .create_dataset_from_completions(proto::CreateDatasetFromCompletionsRequest::default())
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            err.code()
        }
        "/lathe.v1.GraderService/RunGrader" => denied(
            rpc,
            b.graders
                .run_grader(proto::RunGraderRequest {
                    grader: Some(struct_from_json(&json!({"name": a.grader}))),
                    sample: Some(proto::Sample {
                        output_text: id("1"),
                        ..Default::default()
                    }),
                    item: Some(struct_from_json(&json!({"answer": "1"}))),
                })
                .await,
        ),
        "/lathe.v1.GraderService/ValidateGrader" => denied(
            rpc,
            // A model grader that would sample A's fine-tuned model.
            b.graders
                .validate_grader(proto::ValidateGraderRequest {
                    grader: Some(struct_from_json(&json!({
                        "type": "score_model", "name": "judge", "model": a.model,
                        "input": [{"role": "user", "content": "Rate {{ sample.output_text }}"}],
                        "range": [0, 1]
                    }))),
                })
                .await,
        ),
        "/lathe.v1.GraderService/GradeBatch" => {
            let first = proto::GradeBatchRequest {
                payload: Some(proto::grade_batch_request::Payload::Grader(struct_from_json(
                    &json!({"name": a.grader}),
                ))),
            };
            // The grader is resolved before any pair: the refusal is the
            // call's status, or the stream's first message.
            let answer = match b.graders.grade_batch(futures::stream::iter([first])).await {
                Ok(response) => response.into_inner().message().await,
                Err(status) => Err(status),
            };
            denied(rpc, answer)
        }
        "/lathe.v1.GraderService/CreateGrader" => {
            // Called last (see the loop): B's own grader of the same name is
            // B's, A's stays A's (checked after).
            b.graders
                .create_grader(proto::CreateGraderRequest {
                    name: a.grader.clone(),
                    grader: Some(struct_from_json(&json!({
                        "type": "string_check", "name": "b", "operation": "ne",
                        "input": "x", "reference": "y"
                    }))),
                })
                .await
                .unwrap();
            return None;
        }
        "/lathe.v1.GraderService/GetGrader" => denied(
            rpc,
            b.graders
                .get_grader(proto::GetGraderRequest { name: a.grader.clone() })
                .await,
        ),
        "/lathe.v1.GraderService/ListGraders" => {
            let list = b
                .graders
                .list_graders(proto::ListGradersRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(list.graders.is_empty(), "B lists A's grader: {list:?}");
            return None;
        }
        "/lathe.v1.EvalService/CreateEval" => {
            // Criteria naming A's grader resolve to B's own (made above), never A's.
            return None;
        }
        "/lathe.v1.EvalService/GetEval" => denied(
            rpc,
            b.evals.get_eval(proto::GetEvalRequest { id: a.eval.clone() }).await,
        ),
        "/lathe.v1.EvalService/ListEvals" => {
            let list = b
                .evals
                .list_evals(proto::ListEvalsRequest::default())
                .await
                .unwrap()
                .into_inner();
            assert!(list.evals.is_empty(), "B lists A's evals: {list:?}");
            return None;
        }
        "/lathe.v1.EvalService/UpdateEval" => denied(
            rpc,
            b.evals
                .update_eval(proto::UpdateEvalRequest {
                    id: a.eval.clone(),
                    name: Some(id("b's now")),
                    replace_metadata: true,
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.EvalService/DeleteEval" => denied(
            rpc,
            b.evals
                .delete_eval(proto::DeleteEvalRequest { id: a.eval.clone() })
                .await,
        ),
        "/lathe.v1.EvalService/DeleteEvalRun" => denied(
            rpc,
            b.evals
                .delete_eval_run(proto::DeleteEvalRunRequest { id: a.run.clone() })
                .await,
        ),
        "/lathe.v1.EvalService/GetOutputItem" => denied(
            rpc,
            b.evals
                .get_output_item(proto::GetOutputItemRequest { id: a.item.clone() })
                .await,
        ),
        "/lathe.v1.EvalService/CreateEvalRun" => {
            denied(rpc, b.evals.create_eval_run(precomputed_run(&a.eval, &a.items)).await)
        }
        "/lathe.v1.EvalService/GetEvalRun" => denied(
            rpc,
            b.evals
                .get_eval_run(proto::GetEvalRunRequest { id: a.run.clone() })
                .await,
        ),
        "/lathe.v1.EvalService/ListEvalRuns" => denied(
            rpc,
            b.evals
                .list_eval_runs(proto::ListEvalRunsRequest {
                    eval_id: a.eval.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.EvalService/CreatePromptOptimization" => denied(
            rpc,
            b.evals
                .create_prompt_optimization(proto::CreatePromptOptimizationRequest {
                    eval_id: a.eval.clone(),
                    model: id("stub/gpt-x"),
                    input_messages: Some(lathe::proto::json::list_value(&[
                        json!({"role": "user", "content": "{{ item.answer }}"}),
                    ])),
                    train_dataset_id: a.items.clone(),
                    validation_dataset_id: a.items.clone(),
                    budget: Some(proto::RunBudget {
                        max_model_calls: 100,
                        max_tokens: 0,
                    }),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.EvalService/GetPromptOptimization" => denied(
            rpc,
            b.evals
                .get_prompt_optimization(proto::GetPromptOptimizationRequest {
                    id: a.optimization.clone(),
                })
                .await,
        ),
        "/lathe.v1.EvalService/CancelPromptOptimization" => denied(
            rpc,
            b.evals
                .cancel_prompt_optimization(proto::CancelPromptOptimizationRequest {
                    id: a.optimization.clone(),
                })
                .await,
        ),
        "/lathe.v1.EvalService/CancelEvalRun" => denied(
            rpc,
            b.evals
                .cancel_eval_run(proto::CancelEvalRunRequest { id: a.run.clone() })
                .await,
        ),
        "/lathe.v1.EvalService/ListOutputItems" => denied(
            rpc,
            b.evals
                .list_output_items(proto::ListOutputItemsRequest {
                    run_id: a.run.clone(),
                    ..Default::default()
                })
                .await,
        ),
        "/lathe.v1.EvalService/WatchEvalRun" => denied(
            rpc,
            b.evals
                .watch_eval_run(proto::WatchEvalRunRequest {
                    run_id: a.run.clone(),
                    after_seq: 0,
                })
                .await,
        ),
        "/lathe.v1.EvalService/CompareEvalRuns" => denied(
            rpc,
            b.evals
                .compare_eval_runs(proto::CompareEvalRunsRequest {
                    run_ids: vec![a.run.clone(), a.run.clone().replace('0', "1")],
                })
                .await,
        ),
        other => panic!("no cross-tenant case for {other}: add one to tests/it/tenancy.rs"),
    };
    Some(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_projects_key_reaches_nothing_of_a_project_through_any_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let (stub, url) = crate::common::openai_stub::start().await;
    stub.script([crate::common::openai_stub::Reply::Json(
        crate::common::openai_stub::chat_body("hello"),
    )]);
    let providers = dir.path().join("providers.json");
    std::fs::write(&providers, json!([{"name": "stub", "base_url": url}]).to_string()).unwrap();
    let mut config = lathe::config::ServeConfig::embedded(dir.path());
    config.job_poll_millis = 50;
    config.providers = Some(providers);
    let trainer = std::sync::Arc::new(ScriptedTrainer::default());
    let server = TestServer::start_full(config, lathe::app::Engine::Custom(Some(trainer))).await;
    let mut root = Clients::new(&server, server.admin_key()).await;
    let key_a = project_with_key(&mut root.admin, "a").await;
    let key_b = project_with_key(&mut root.admin, "b").await;
    let mut a = Clients::new(&server, &key_a).await;
    let mut b = Clients::new(&server, &key_b).await;
    let owned = make_resources(&mut a).await;

    let rpcs = every_rpc();
    assert_eq!(rpcs.len(), 61, "{rpcs:?}");
    // B saving a grader under A's grader's name comes last, so the calls
    // that name a saved grader are tried while B has none of its own.
    let create_grader = "/lathe.v1.GraderService/CreateGrader";
    let mut refused = 0;
    for rpc in rpcs
        .iter()
        .filter(|r| *r != create_grader)
        .chain([&create_grader.to_string()])
    {
        if call_as_b(rpc, &mut b, &owned).await.is_some() {
            refused += 1;
        }
    }
    let theirs = b
        .graders
        .get_grader(proto::GetGraderRequest {
            name: owned.grader.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(format!("{theirs:?}").contains("\"ne\""), "B got A's grader: {theirs:?}");
    assert!(refused >= 30, "{refused} of {} refused", rpcs.len());

    // Nothing of A changed: its records are all there, in the states they had.
    let job = a
        .jobs
        .get_job(proto::GetJobRequest { id: owned.job.clone() })
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(job.state, proto::JobState::Succeeded as i32);
    let completion = a
        .models
        .get_stored_completion(proto::GetStoredCompletionRequest {
            id: owned.completion.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .completion
        .unwrap();
    assert!(
        completion.metadata.is_empty(),
        "B relabelled A's completion: {completion:?}"
    );
    for id in [&owned.train, &owned.items] {
        a.datasets
            .get_dataset(proto::GetDatasetRequest { id: id.clone() })
            .await
            .unwrap();
    }
    a.models
        .get_model(proto::GetModelRequest {
            id: owned.model.clone(),
        })
        .await
        .unwrap();
    let grader = a
        .graders
        .get_grader(proto::GetGraderRequest {
            name: owned.grader.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        format!("{grader:?}").contains("\"eq\""),
        "A's grader was replaced: {grader:?}"
    );
    let run = a
        .evals
        .get_eval_run(proto::GetEvalRunRequest { id: owned.run.clone() })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    assert_eq!(run.state, proto::EvalRunState::Completed as i32);
    let eval = a
        .evals
        .get_eval(proto::GetEvalRequest { id: owned.eval.clone() })
        .await
        .unwrap()
        .into_inner()
        .eval
        .unwrap();
    assert_eq!((eval.name.as_str(), eval.updated_at), ("a's eval", eval.created_at));
    a.evals
        .get_output_item(proto::GetOutputItemRequest { id: owned.item.clone() })
        .await
        .unwrap();
    let mut download = a
        .datasets
        .download_dataset(proto::DownloadDatasetRequest {
            id: owned.items.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(download.next().await.is_some());

    // A's own lists still show A's records; the audit log saw B's attempts.
    let listed = a
        .jobs
        .list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.jobs.len(), 1);
    let audit = root
        .admin
        .list_audit_events(proto::ListAuditEventsRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(audit.events.iter().any(|e| e.project_id == "b"
        && e.method == "/lathe.v1.FineTuningService/CancelJob"
        && e.outcome == "NotFound"));
    server.stop().await;
}

#[tokio::test]
async fn missing_unknown_and_revoked_keys_get_the_same_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut root = Clients::new(&server, server.admin_key()).await;
    let secret = project_with_key(&mut root.admin, "team").await;
    let mut member = Clients::new(&server, &secret).await;
    let me = member
        .admin
        .get_caller(proto::GetCallerRequest {})
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!((me.project_id.as_str(), me.role), ("team", proto::Role::Member as i32));
    assert!(!me.redacted_value.contains(&secret[14..secret.len() - 4]), "{me:?}");

    // No key, a made-up key, a malformed header: one answer, no hint.
    let unauthenticated = |r: Result<_, tonic::Status>| {
        let status = r.map(|_: tonic::Response<proto::ListDatasetsResponse>| ()).unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        status.message().to_string()
    };
    let anonymous = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let none = unauthenticated(
        DatasetServiceClient::new(Channel::new(anonymous, None).unwrap())
            .list_datasets(proto::ListDatasetsRequest::default())
            .await,
    );
    let made_up = unauthenticated(
        Clients::new(&server, "sk-lathe-0000000000000000000000000000000000000000")
            .await
            .datasets
            .list_datasets(proto::ListDatasetsRequest::default())
            .await,
    );
    assert_eq!(none, made_up);

    // A revoked key stops working (within the cache's two seconds).
    root.admin
        .revoke_api_key(proto::RevokeApiKeyRequest { id: me.id.clone() })
        .await
        .unwrap();
    let mut revoked = None;
    for _ in 0..50 {
        match member
            .datasets
            .list_datasets(proto::ListDatasetsRequest::default())
            .await
        {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(status) => {
                revoked = Some(status);
                break;
            }
        }
    }
    let revoked = revoked.expect("a revoked key kept working");
    assert_eq!(revoked.code(), Code::Unauthenticated);
    assert_eq!(revoked.message(), none);

    // Members manage nothing; health probes need no key.
    let mut other = Clients::new(&server, &project_with_key(&mut root.admin, "other").await).await;
    let status = other
        .admin
        .create_api_key(proto::CreateApiKeyRequest {
            project_id: "other".into(),
            role: proto::Role::Admin as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let anonymous = tonic::transport::Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(anonymous)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

/// `lathe serve` on loopback writes an owner-only admin key the CLI finds;
/// on any other address without keys it refuses to start.
#[tokio::test]
async fn a_first_local_start_writes_an_admin_key_and_an_open_one_needs_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env_remove("LATHE_ADMIN_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen beyond loopback without API keys"),
        "{stderr}"
    );
    assert!(!data.join("admin.key").exists());

    let mut config = lathe::config::ServeConfig::embedded(&data);
    config.admin_key = None;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(lathe::server::run(listener, config, async move {
        let _ = stopped.await;
    }));
    let key_file = data.join("admin.key");
    for _ in 0..100 {
        if key_file.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let channel = connect_local(&url, &data).await;
    let me = AdminServiceClient::new(channel)
        .get_caller(proto::GetCallerRequest {})
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    assert_eq!(
        (me.project_id.as_str(), me.role),
        ("default", proto::Role::Admin as i32)
    );
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_projects_and_keys_and_a_new_key_works() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let addr = server.url();
    tokio::task::spawn_blocking(move || {
        let ok = |out: std::process::Output| {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        };
        ok(lathe(&addr, &["projects", "create", "cli-team"]));
        let made: serde_json::Value = serde_json::from_str(&ok(lathe(
            &addr,
            &[
                "--json",
                "keys",
                "create",
                "--project",
                "cli-team",
                "--name",
                "ci",
                "--owner",
                "me@example.com",
            ],
        )))
        .unwrap();
        let secret = made["secret"].as_str().unwrap().to_string();
        assert!(secret.starts_with("sk-lathe-"));
        let me = ok(std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
            .args(["--json", "whoami"])
            .env("LATHE_ADDR", &addr)
            .env("LATHE_API_KEY", &secret)
            .output()
            .unwrap());
        let me: serde_json::Value = serde_json::from_str(&me).unwrap();
        assert_eq!(
            (me["project_id"].as_str(), me["role"].as_str()),
            (Some("cli-team"), Some("member"))
        );
        let listed = ok(lathe(&addr, &["keys", "list", "--project", "cli-team"]));
        assert!(
            listed.contains("cli-team") && !listed.contains(&secret[9..]),
            "{listed}"
        );
        let audit = ok(lathe(&addr, &["audit"]));
        assert!(audit.contains("/lathe.v1.AdminService/CreateApiKey"), "{audit}");
        // A member's key manages nothing.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lathe"))
            .args(["keys", "list"])
            .env("LATHE_ADDR", &addr)
            .env("LATHE_API_KEY", &secret)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("needs an admin key"));
    })
    .await
    .unwrap();
    server.stop().await;
}
