//! Datasets: OpenAI JSONL formats, streaming validation and statistics, and
//! the dataset service (upload, list, split, download, delete).

pub mod format;
pub mod ingest;
pub mod lines;
pub mod manager;
pub mod model;
pub mod report;
pub mod tokens;
