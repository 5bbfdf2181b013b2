//! Models: base models registered by name from a path, or uploaded or
//! imported into the blob store (checked and described without loading
//! their weights), the fine-tuned models jobs make, and the resolution of a
//! model name into what the engine loads (a stored model through this
//! process's model cache).
//!
//! Architecture invariant: registration reads only headers and small
//! config files (`inspect`), so it is fast and memory-flat whatever the
//! model's size; the trainer and the inference engine load weights, this
//! module never does. Records live in the store's `models` table
//! (`ModelStore`); `kind` tells base and fine-tuned models apart. A path
//! is registered only when it resolves under one of the operator's model
//! roots (`ModelRoots`), and a refusal never says what is on the disk.

mod cache;
pub mod gguf;
mod import;
mod inspect;
pub mod model;
mod roots;
mod service;
pub mod stored;

pub use inspect::{check_name, inspect};
pub use model::{BaseModelInfo, ModelFile, ModelKind, ModelRecord, Resolved};
pub use roots::ModelRoots;
pub use service::Models;
