//! Services declared in the API whose engines are not built yet. Their
//! generated default methods answer UNIMPLEMENTED, so clients see the whole
//! API and a precise status for each RPC.

use crate::proto::eval_service_server::EvalService;

#[derive(Debug, Default)]
pub struct EvalApi;

#[tonic::async_trait]
impl EvalService for EvalApi {}
