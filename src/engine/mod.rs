//! Adapters from the engine crate (`lathe_engine`) to the services:
//! `trainer.rs` puts it behind the jobs' `Trainer` seam and `local.rs`
//! behind the chat seam, with a catalog that resolves model names through
//! the store.
//!
//! Architecture invariant: the engine crate knows nothing of this crate;
//! everything that connects it to jobs, the store, blobs or the async
//! runtime lives here.

pub mod local;
pub mod trainer;

use lathe_engine::EngineError;

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
