//! Models and chat: domain <-> wire.

use crate::error::{Error, Result};
use crate::inference::{ChatEvent, ChatRequest};
use crate::models::stored::Piece;
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
        files: Vec::new(),
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
        files: info
            .files
            .into_iter()
            .map(|f| proto::ModelFile {
                name: f.name,
                sha256: f.sha256,
                bytes: f.bytes,
            })
            .collect(),
    }
}

/// A message of UploadModel after its first: a file's start or its bytes.
pub fn model_upload_piece(message: proto::UploadModelRequest) -> Result<Piece> {
    use proto::upload_model_request::Payload;
    match message.payload {
        Some(Payload::File(file)) => Ok(Piece::File {
            name: file.name,
            bytes: file.bytes,
        }),
        Some(Payload::Chunk(bytes)) => Ok(Piece::Chunk(bytes)),
        Some(Payload::Metadata(_)) => Err(Error::invalid("metadata", "only the first message may carry metadata")),
        None => Err(Error::invalid("payload", "a message carries a file or a chunk")),
    }
}

/// A Chat request as the chat seam takes it: model, OpenAI messages, and
/// the sampling settings given (the model's server applies OpenAI's
/// defaults to the rest).
pub fn chat(req: proto::ChatRequest) -> ChatRequest {
    let messages = req
        .messages
        .into_iter()
        .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
        .collect();
    let s = req.sampling.unwrap_or_default();
    ChatRequest {
        model: req.model,
        messages,
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        max_tokens: s.max_tokens,
        seed: s.seed,
        stop: s.stop,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        logit_bias: (!s.logit_bias.is_empty()).then(|| s.logit_bias.into_iter().collect()),
        ..Default::default()
    }
}

/// A stream's event; `completion_id` names the stored completion on its
/// end (empty when not stored).
pub fn chat_response(event: ChatEvent, completion_id: &str) -> proto::ChatResponse {
    use proto::chat_response::Payload;
    let payload = match event {
        ChatEvent::Delta(text) => Payload::Delta(text),
        ChatEvent::End(end) => Payload::End(proto::ChatEnd {
            finish_reason: end.finish_reason,
            prompt_tokens: u32::try_from(end.usage.prompt).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(end.usage.completion).unwrap_or(u32::MAX),
            completion_id: completion_id.to_string(),
        }),
    };
    proto::ChatResponse { payload: Some(payload) }
}

pub fn stored_completion(c: crate::completions::model::StoredCompletion) -> proto::StoredCompletion {
    proto::StoredCompletion {
        created_at: Some(timestamp(c.created_at)),
        request: Some(proto::json::struct_from_json(&c.request)),
        choices: c.choices.iter().map(proto::json::struct_from_json).collect(),
        id: c.id,
        model: c.model,
        metadata: c.metadata.into_iter().collect(),
        prompt_tokens: c.prompt_tokens,
        completion_tokens: c.completion_tokens,
    }
}
