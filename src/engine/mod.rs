//! The embedded engine: loads small open models (llama, qwen2) from a
//! Hugging Face directory or a GGUF file, fine-tunes LoRA adapters on a
//! frozen base (SFT), and generates with a KV cache, on candle.
//!
//! Architecture invariant: the engine knows nothing of jobs, the store or
//! the wire. `trainer.rs` adapts it to the jobs' `Trainer` seam and
//! `local.rs` to the `ChatModel` seam; everything else is plain tensors.

pub mod chat_template;
pub mod config;
pub mod fetch;
pub mod frozen;
pub mod fused;
pub mod generate;
pub mod local;
pub mod lora;
pub mod model;
pub mod optim;
pub mod rng;
pub mod sft;
pub mod tiny;
pub mod tokenizer;
pub mod train;
pub mod trainer;
pub mod weights;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("loading the model: {0}")]
    Load(String),
    #[error("{0}")]
    Data(String),
    #[error("model {0} not found")]
    NotFound(String),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<EngineError> for crate::error::Error {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(id) => crate::error::Error::not_found("model", id),
            EngineError::Data(m) => crate::error::Error::invalid("messages", m),
            EngineError::Load(m) => crate::error::Error::precondition("MODEL_LOAD", "model", m),
            EngineError::Candle(e) => crate::error::Error::Internal(e.to_string()),
        }
    }
}

/// Largest absolute difference between two tensors of one shape (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}
