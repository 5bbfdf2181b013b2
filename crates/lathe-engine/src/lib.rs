//! Lathe's embedded engine: loads small open models (llama, qwen2) from a
//! Hugging Face directory or a GGUF file, fine-tunes LoRA adapters on a
//! frozen base, and generates with a KV cache, on candle.
//!
//! Architecture invariant: this crate knows nothing of jobs, the store, the
//! wire or an async runtime. Its dependency tree holds no tokio, sqlx or
//! tonic, so that isolation is a compile error rather than a convention.
//! The main crate adapts it: `lathe::engine::trainer` to the jobs'
//! `Trainer` seam, `lathe::engine::local` to the chat seam. Everything here
//! is plain tensors, files and callbacks.

pub mod chat_template;
pub mod config;
pub mod device;
pub mod dpo;
pub mod fetch;
pub mod frozen;
pub mod fused;
pub mod generate;
pub mod grpo;
pub mod lora;
pub mod method;
pub mod model;
pub mod optim;
pub mod quant;
pub mod rng;
pub mod sft;
pub mod tiny;
pub mod tokenizer;
pub mod train;
pub mod weights;

/// Architectures the engine is built for.
pub const SUPPORTED: [&str; 2] = ["llama", "qwen2"];

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

/// `mi_option_purge_delay` in mimalloc v3's `mimalloc.h` (the sys crate
/// names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Lets mimalloc keep freed memory for a second before giving it back to the
/// OS (its default is 10 ms). A training step frees and reallocates hundreds
/// of megabytes of activations; returned at once, every page came back
/// zero-filled by the kernel on the next step (`clear_page` was 14% of a
/// step's profile); ingestion's per-block buffers did the same. An operator's
/// `MIMALLOC_PURGE_DELAY` wins. Idempotent; the server calls it at start and
/// the engine when a model loads. Harmless where mimalloc is not the global
/// allocator (the option is then never read).
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            // The operator chose; mimalloc read it at start.
            return;
        }
        // SAFETY: sets a documented option to a documented value; mimalloc
        // reads options atomically.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 1000) };
    });
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

#[cfg(test)]
mod tests {
    use super::MI_OPTION_PURGE_DELAY;

    #[test]
    fn the_allocator_purge_delay_is_set() {
        // Run with MIMALLOC_PURGE_DELAY=777 to see that this option is the
        // one that variable sets, and that the operator's value stays.
        // SAFETY: reads a documented option.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        println!("purge delay before: {before}");
        super::tune_allocator();
        let want = match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(v) => v.parse().unwrap(),
            Err(_) => 1000,
        };
        // SAFETY: reads a documented option.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, want);
    }
}
