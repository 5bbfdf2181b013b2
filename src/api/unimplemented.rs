//! Services declared in the API whose engines are not built yet. Their
//! generated default methods answer UNIMPLEMENTED, so clients see the whole
//! API and a precise status for each RPC.

use crate::proto::{eval_service_server::EvalService, grader_service_server::GraderService};

#[derive(Debug, Default)]
pub struct GraderApi;
#[derive(Debug, Default)]
pub struct EvalApi;

#[tonic::async_trait]
impl GraderService for GraderApi {}
#[tonic::async_trait]
impl EvalService for EvalApi {}
