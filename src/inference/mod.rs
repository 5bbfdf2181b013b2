//! Model providers and the one chat seam. Every caller that wants a chat
//! completion (eval sampling, model graders, the gRPC Chat RPC) goes through
//! [`ChatModel`] (`chat.rs`), served by [`ModelRouter`] (`router.rs`), which
//! sends each model name to the local engine or to an OpenAI-compatible HTTP
//! provider (OpenAI itself, vLLM, llama.cpp's server, Ollama, ...;
//! `providers.rs`), configured by name.
//!
//! Architecture invariant: API keys come from an environment variable or a
//! file named in the configuration, are read at start-up, and are never
//! stored, logged or returned. Every provider bounds its own concurrency and
//! request rate, and retries rate limits and server errors with backoff,
//! honouring Retry-After. This module knows neither the store nor the wire.

pub mod chat;
mod providers;
mod router;
mod sse;

pub use chat::{
    ChatCompletion, ChatEnd, ChatError, ChatEvent, ChatModel, ChatRequest, ChatStream, LocalModels, TokenUsage,
};
pub use providers::{EmbedError, Embedder, HttpProvider, ProviderConfig, ProviderError, Providers, StructuredOutput};
pub use router::ModelRouter;
