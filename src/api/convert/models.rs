//! Models and chat: domain <-> wire.

use crate::models::{BaseModelInfo, ModelKind, ModelRecord};
use crate::proto;
use crate::proto::timestamp;

pub fn model(m: ModelRecord) -> proto::Model {
    let info = m.info.unwrap_or_else(|| BaseModelInfo {
        path: String::new(),
        format: String::new(),
        architecture: String::new(),
        parameters: 0,
        context_length: 0,
    });
    proto::Model {
        id: m.id,
        kind: match m.kind {
            ModelKind::Base => proto::ModelKind::Base,
            ModelKind::FineTuned => proto::ModelKind::FineTuned,
        } as i32,
        base_model: m.base_model,
        job_id: m.job_id.unwrap_or_default(),
        architecture: info.architecture,
        parameters: info.parameters,
        context_length: info.context_length.min(u32::MAX as u64) as u32,
        created_at: Some(timestamp(m.created_at)),
        path: info.path,
        format: info.format,
        checkpoint_step: m.checkpoint_step.unwrap_or(0),
    }
}

/// A Chat request as the engine takes it: model, OpenAI messages, sampling
/// (OpenAI's defaults where unset: temperature 1, top_p 1).
pub fn chat(req: proto::ChatRequest) -> (String, Vec<serde_json::Value>, lathe_engine::generate::Sampling) {
    let messages = req
        .messages
        .into_iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    let s = req.sampling.unwrap_or_default();
    let sampling = lathe_engine::generate::Sampling {
        temperature: s.temperature.unwrap_or(1.0),
        top_p: s.top_p.unwrap_or(1.0),
        top_k: s.top_k.unwrap_or(0) as usize,
        max_tokens: s.max_tokens.unwrap_or(256) as usize,
        seed: s.seed.unwrap_or(0),
        stop: s.stop,
    };
    (req.model, messages, sampling)
}
