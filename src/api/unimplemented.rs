//! Services declared in the API whose engines are not built yet. Their
//! generated default methods answer UNIMPLEMENTED, so clients see the whole
//! API and a precise status for each RPC.

use crate::proto::{
    eval_service_server::EvalService, fine_tuning_service_server::FineTuningService,
    grader_service_server::GraderService, model_service_server::ModelService,
};

#[derive(Debug, Default)]
pub struct FineTuningApi;
#[derive(Debug, Default)]
pub struct ModelApi;
#[derive(Debug, Default)]
pub struct GraderApi;
#[derive(Debug, Default)]
pub struct EvalApi;

#[tonic::async_trait]
impl FineTuningService for FineTuningApi {}
#[tonic::async_trait]
impl ModelService for ModelApi {}
#[tonic::async_trait]
impl GraderService for GraderApi {}
#[tonic::async_trait]
impl EvalService for EvalApi {}
