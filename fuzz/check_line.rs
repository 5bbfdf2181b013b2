//! The fuzz target's property, in a file of its own so that the main
//! crate's tests (`tests/datasets.rs`) compile and run it too: CI
//! never builds the fuzz crate, but it cannot drift from what CI checks.

use std::sync::Arc;

use lathe::datasets::tokens::O200k;
use lathe::datasets::{IngestOptions, Ingestor, LineOptions, Purpose, validate_line};

/// Any bytes: validating them as a line, and streaming them through the
/// ingestor in chunks, gives a consistent answer and never panics.
pub fn check(data: &[u8]) {
    // The first byte picks the purpose and a chunk size, so one corpus
    // exercises every format and the streaming path.
    let Some((&sel, line)) = data.split_first() else {
        return;
    };
    let purpose = Purpose::ALL[usize::from(sel) % 4];
    let opts = LineOptions {
        label_pointer: Some("/messages/-1/content".into()),
        ..LineOptions::new(purpose)
    };
    let out = validate_line(1, line, &opts, &O200k);
    assert_eq!(out.example.is_some(), !out.has_errors());

    let ingest_opts = IngestOptions {
        line: opts,
        max_line_bytes: 4096,
        max_problems: 3,
    };
    let mut ing = Ingestor::new(ingest_opts, Arc::new(O200k));
    for chunk in line.chunks(usize::from(sel >> 2) + 1) {
        ing.push(chunk);
    }
    let (report, stats) = ing.finish();
    assert_eq!(report.total_rows, report.valid_rows + report.invalid_rows);
    assert_eq!(stats.rows, report.valid_rows);
}
