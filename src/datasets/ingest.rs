//! Streaming, parallel, bounded-memory JSONL ingestion.
//!
//! Bytes arrive in arbitrary chunks. Complete lines are gathered into blocks
//! of about [`BLOCK_BYTES`]; each block's lines are validated in parallel on
//! the rayon pool and merged strictly in line order, so the report does not
//! depend on chunking or thread timing.
//!
//! Memory: the block buffer (at most `BLOCK_BYTES` plus one line of at most
//! `max_line_bytes`; longer lines are discarded while streaming), one block's
//! results waiting to be merged while the next validates, histograms
//! keyed by distinct values, at most [`MAX_DISTINCT_LABELS`] labels, and for
//! duplicate detection one 128-bit fingerprint plus a line number per valid
//! row (about 32 bytes per row).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use rayon::prelude::*;

use crate::datasets::format::{LineOptions, LineOutcome, validate_line};
use crate::datasets::lines::for_each_byte;
use crate::datasets::report::{
    DatasetStats, Histogram, Problem, Purpose, Severity, ValidationReport, codes, default_epochs,
};
use crate::datasets::tokens::TokenCounter;

/// Lines are handed to the thread pool in blocks of roughly this size: big
/// enough to amortize the fork/join, small enough to keep memory flat.
pub const BLOCK_BYTES: usize = 2 << 20;
/// The first block is this small, and each next one twice the size until
/// [`BLOCK_BYTES`]: the pool starts validating once the first chunk is in,
/// instead of idling while a whole block arrives.
const FIRST_BLOCK_BYTES: usize = 256 << 10;
/// A step of `push` may overshoot the block size by this much.
const STEP_BYTES: usize = 64 << 10;
pub const DEFAULT_MAX_LINE_BYTES: usize = 4 << 20;
pub const DEFAULT_MAX_PROBLEMS: usize = 100;
/// OpenAI's RFT training-file limit.
pub const MAX_RFT_ROWS: u64 = 50_000;
/// Documented minimum number of training examples.
pub const MIN_EXAMPLES: u64 = 10;
/// Labels beyond this many distinct values, and labels longer than
/// [`MAX_LABEL_BYTES`], are counted under [`OTHER_LABEL`]: the counts go
/// into every `Dataset` message, so a pointer at free text must neither grow
/// memory with the file nor make a dataset too big to list.
pub const MAX_DISTINCT_LABELS: usize = 1_000;
pub const MAX_LABEL_BYTES: usize = 200;
pub const OTHER_LABEL: &str = "<other>";

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestOptions {
    pub line: LineOptions,
    /// Longer lines are rejected with `line_too_long` without being buffered.
    pub max_line_bytes: usize,
    /// How many errors, and separately warnings, are listed; counts keep counting.
    pub max_problems: usize,
}

impl IngestOptions {
    pub fn new(purpose: Purpose) -> Self {
        IngestOptions {
            line: LineOptions::new(purpose),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_problems: DEFAULT_MAX_PROBLEMS,
        }
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions::new(Purpose::Sft)
    }
}

/// A line that is being discarded because it exceeded `max_line_bytes`.
struct Skipping {
    line: u64,
    bytes: u64,
    /// Excluded from the reported length, as in `classify`, so the message
    /// does not depend on which path (and thus which chunking) saw the line.
    bom: bool,
    last_cr: bool,
}

impl Skipping {
    fn len(&self) -> u64 {
        self.bytes - 3 * u64::from(self.bom) - u64::from(self.last_cr)
    }
}

enum LineResult {
    Blank,
    TooLong(u64),
    Row(LineOutcome),
}

pub struct Ingestor {
    opts: IngestOptions,
    tokens: Arc<dyn TokenCounter>,
    /// Unprocessed bytes: complete lines, then possibly a partial one.
    buf: Vec<u8>,
    /// How much of `buf` is known to contain no newline.
    scanned: usize,
    /// Size of the block being gathered.
    block_bytes: usize,
    /// Line number of the first line in `buf`.
    next_line: u64,
    skipping: Option<Skipping>,
    /// The last validated block's results, in line order; merged into `acc`
    /// while the next block validates.
    pending: Vec<(u64, LineResult)>,
    acc: Accumulator,
}

#[derive(Default)]
struct Accumulator {
    report: ValidationReport,
    messages: Histogram,
    tokens: Histogram,
    trained: Histogram,
    billed_tokens: u64,
    tool_call_examples: u64,
    image_parts: u64,
    label_counts: BTreeMap<String, u64>,
    first_seen: HashMap<u128, u64, BuildHasherDefault<FingerprintHasher>>,
}

impl Ingestor {
    pub fn new(opts: IngestOptions, tokens: Arc<dyn TokenCounter>) -> Self {
        Ingestor {
            opts,
            tokens,
            // Sized for a full block once, instead of doubling its way there
            // (each step a copy into memory the kernel must zero).
            buf: Vec::with_capacity(BLOCK_BYTES + STEP_BYTES),
            scanned: 0,
            block_bytes: FIRST_BLOCK_BYTES,
            next_line: 1,
            skipping: None,
            pending: Vec::new(),
            acc: Accumulator::default(),
        }
    }

    /// Feeds the next bytes of the file; chunk boundaries may fall anywhere.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if let Some(skip) = &mut self.skipping {
                let nl = rest.iter().position(|&b| b == b'\n');
                let consumed = &rest[..nl.unwrap_or(rest.len())];
                skip.bytes += consumed.len() as u64;
                if let Some(&last) = consumed.last() {
                    skip.last_cr = last == b'\r';
                }
                let Some(nl) = nl else {
                    return;
                };
                let (line, len) = (skip.line, skip.len());
                self.skipping = None;
                self.merge_pending();
                self.acc.merge(&self.opts, line, LineResult::TooLong(len));
                self.next_line = line + 1;
                rest = &rest[nl + 1..];
                continue;
            }
            // Bounded steps keep the buffer near BLOCK_BYTES even when the
            // caller hands over a whole file at once.
            let room = self.block_bytes.saturating_sub(self.buf.len()).max(STEP_BYTES);
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() >= self.block_bytes {
                self.process_complete_lines();
                self.block_bytes = (self.block_bytes * 2).min(BLOCK_BYTES);
                if self.buf.len() > self.opts.max_line_bytes {
                    // `buf` now holds only the start of one overlong line.
                    self.skipping = Some(Skipping {
                        line: self.next_line,
                        bytes: self.buf.len() as u64,
                        bom: self.next_line == 1 && self.buf.starts_with(UTF8_BOM),
                        last_cr: self.buf.last() == Some(&b'\r'),
                    });
                    self.buf.clear();
                    self.scanned = 0;
                }
            }
        }
    }

    /// Validates everything up to the last newline in `buf`, and meanwhile
    /// merges the previous block's results, so the serial parts of a block
    /// (finding its lines, merging its results) overlap parallel work.
    fn process_complete_lines(&mut self) {
        let Some(last_nl) = memchr::memrchr(b'\n', &self.buf[self.scanned..]).map(|i| i + self.scanned) else {
            self.scanned = self.buf.len();
            return;
        };
        let block = &self.buf[..=last_nl];
        let (opts, tokens) = (&self.opts, self.tokens.as_ref());
        let (acc, mut pending) = (&mut self.acc, std::mem::take(&mut self.pending));
        let first_line = self.next_line;
        let ((), (results, next_line)) = rayon::join(
            move || {
                for (no, r) in pending.drain(..) {
                    acc.merge(opts, no, r);
                }
            },
            move || validate_block(opts, tokens, block, first_line),
        );
        self.pending = results;
        self.next_line = next_line;
        self.buf.drain(..=last_nl);
        self.scanned = self.buf.len();
    }

    fn merge_pending(&mut self) {
        for (no, r) in self.pending.drain(..) {
            self.acc.merge(&self.opts, no, r);
        }
    }

    /// Validates the remaining bytes and returns the report and statistics.
    pub fn finish(mut self) -> (ValidationReport, DatasetStats) {
        self.scanned = 0;
        self.process_complete_lines();
        self.merge_pending();
        if let Some(skip) = self.skipping.take() {
            self.acc.merge(&self.opts, skip.line, LineResult::TooLong(skip.len()));
        } else if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let r = classify(&self.opts, self.tokens.as_ref(), self.next_line, &buf, true);
            self.acc.merge(&self.opts, self.next_line, r);
        }
        self.acc.finish(&self.opts, self.tokens.name())
    }
}

/// Splits `block` (whole lines, the first numbered `first_line`) and
/// validates its lines in parallel; returns the results in line order and the
/// number of the line after the block.
fn validate_block(
    opts: &IngestOptions,
    tokens: &dyn TokenCounter,
    block: &[u8],
    first_line: u64,
) -> (Vec<(u64, LineResult)>, u64) {
    let mut lines = Vec::with_capacity(block.len() / 512 + 1);
    let mut line_no = first_line;
    let mut start = 0;
    // The one serial scan of the block (memchr: SIMD).
    for_each_byte(block, b'\n', |i| {
        lines.push((line_no, &block[start..i]));
        line_no += 1;
        start = i + 1;
    });
    let results = lines
        .par_iter()
        .with_min_len(4)
        .map(|&(no, line)| (no, classify(opts, tokens, no, line, false)))
        .collect();
    (results, line_no)
}

fn classify(
    opts: &IngestOptions,
    tokens: &dyn TokenCounter,
    line_no: u64,
    line: &[u8],
    unterminated: bool,
) -> LineResult {
    let mut line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut bom = false;
    if line_no == 1
        && let Some(rest) = line.strip_prefix(UTF8_BOM)
    {
        line = rest;
        bom = true;
    }
    if line.len() > opts.max_line_bytes {
        return LineResult::TooLong(line.len() as u64);
    }
    if line.iter().all(u8::is_ascii_whitespace) && !bom {
        return LineResult::Blank;
    }
    let mut out = if line.iter().all(u8::is_ascii_whitespace) {
        LineOutcome::default()
    } else {
        validate_line(line_no, line, &opts.line, tokens)
    };
    if unterminated {
        for p in &mut out.problems {
            if p.code == codes::INVALID_JSON {
                p.code = codes::TRUNCATED_LAST_LINE;
                p.message = format!(
                    "the last line has no trailing newline and is not valid JSON; the file may \
                     be truncated ({})",
                    p.message
                );
            }
        }
    }
    if bom {
        out.problems.insert(
            0,
            Problem::warning(
                line_no,
                "",
                codes::UTF8_BOM,
                "file starts with a UTF-8 byte order mark; it was ignored",
            ),
        );
        if out.example.is_none() && !out.has_errors() {
            // A BOM followed by nothing is a blank line, not a row.
            out.problems
                .push(Problem::warning(line_no, "", codes::BLANK_LINE, "blank line skipped"));
        }
    }
    LineResult::Row(out)
}

/// Fingerprints are already uniform 128-bit hashes, so their low half is
/// the table hash; rehashing them with SipHash showed in profiles.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Accumulator {
    fn add_problem(&mut self, opts: &IngestOptions, p: Problem, capped: bool) {
        let (list, counts) = match p.severity {
            Severity::Error => (&mut self.report.errors, &mut self.report.error_counts),
            Severity::Warning => (&mut self.report.warnings, &mut self.report.warning_counts),
        };
        match counts.get_mut(p.code) {
            Some(n) => *n += 1,
            None => {
                counts.insert(p.code.to_string(), 1);
            }
        }
        if !capped || list.len() < opts.max_problems {
            list.push(p);
        } else {
            self.report.problems_truncated = true;
        }
    }

    fn merge(&mut self, opts: &IngestOptions, line: u64, r: LineResult) {
        match r {
            LineResult::Blank => {
                self.add_problem(
                    opts,
                    Problem::warning(line, "", codes::BLANK_LINE, "blank line skipped"),
                    true,
                );
            }
            LineResult::TooLong(len) => {
                self.report.total_rows += 1;
                self.report.invalid_rows += 1;
                self.add_problem(
                    opts,
                    Problem::error(
                        line,
                        "",
                        codes::LINE_TOO_LONG,
                        format!("line is {len} bytes, over the {}-byte limit", opts.max_line_bytes),
                    ),
                    true,
                );
            }
            LineResult::Row(out) => {
                if out.example.is_none() && !out.has_errors() {
                    // BOM-only first line: warnings only, not a row.
                    for p in out.problems {
                        self.add_problem(opts, p, true);
                    }
                    return;
                }
                self.report.total_rows += 1;
                for p in out.problems {
                    self.add_problem(opts, p, true);
                }
                let Some(ex) = out.example else {
                    self.report.invalid_rows += 1;
                    return;
                };
                self.report.valid_rows += 1;
                match self.first_seen.entry(out.fingerprint) {
                    Entry::Occupied(first) => {
                        let first = *first.get();
                        self.add_problem(
                            opts,
                            Problem::warning(
                                line,
                                "",
                                codes::DUPLICATE_EXAMPLE,
                                format!("row is an exact duplicate of line {first}"),
                            ),
                            true,
                        );
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(line);
                    }
                }
                self.messages.add(ex.messages);
                self.tokens.add(ex.tokens);
                self.trained.add(ex.trained_tokens);
                self.billed_tokens = self.billed_tokens.saturating_add(ex.tokens.min(opts.line.token_limit));
                self.tool_call_examples += u64::from(ex.has_tool_calls);
                self.image_parts += ex.image_parts;
                if let Some(label) = out.label {
                    if let Some(n) = self.label_counts.get_mut(&label) {
                        *n += 1;
                    } else if self.label_counts.len() < MAX_DISTINCT_LABELS && label.len() <= MAX_LABEL_BYTES {
                        self.label_counts.insert(label, 1);
                    } else {
                        *self.label_counts.entry(OTHER_LABEL.to_string()).or_insert(0) += 1;
                    }
                }
            }
        }
    }

    fn finish(mut self, opts: &IngestOptions, tokenizer: &str) -> (ValidationReport, DatasetStats) {
        let purpose = opts.line.purpose;
        let rows = self.report.total_rows;
        // File-level problems are always listed: there are few and they matter most.
        if rows == 0 {
            self.add_problem(
                opts,
                Problem::error(0, "", codes::EMPTY_FILE, "file contains no examples"),
                false,
            );
        } else if rows < MIN_EXAMPLES && purpose != Purpose::Eval {
            self.add_problem(
                opts,
                Problem::warning(
                    0,
                    "",
                    codes::TOO_FEW_EXAMPLES,
                    format!("file has {rows} examples; at least {MIN_EXAMPLES} are required for training"),
                ),
                false,
            );
        }
        if purpose == Purpose::Rft && rows > MAX_RFT_ROWS {
            self.add_problem(
                opts,
                Problem::error(
                    0,
                    "",
                    codes::TOO_MANY_ROWS,
                    format!("file has {rows} rows; reinforcement fine-tuning allows at most {MAX_RFT_ROWS}"),
                ),
                false,
            );
        }
        let valid = self.report.valid_rows;
        let epochs = default_epochs(valid);
        let trained = match purpose {
            Purpose::Rft | Purpose::Eval => Histogram::default(),
            _ => self.trained,
        };
        let stats = DatasetStats {
            rows: valid,
            messages_per_example: self.messages.summary(),
            tokens_per_example: self.tokens.token_summary(),
            trained_tokens_per_example: trained.token_summary(),
            tool_call_examples: self.tool_call_examples,
            image_parts: self.image_parts,
            label_field: opts.line.label_pointer.clone(),
            label_counts: self.label_counts,
            default_epochs: epochs,
            estimated_trained_tokens: self.billed_tokens.saturating_mul(u64::from(epochs)),
            tokenizer: tokenizer.to_string(),
        };
        (self.report, stats)
    }
}

/// Convenience: validates a whole in-memory file.
pub fn ingest_bytes(
    data: &[u8],
    opts: IngestOptions,
    tokens: Arc<dyn TokenCounter>,
) -> (ValidationReport, DatasetStats) {
    let mut ing = Ingestor::new(opts, tokens);
    ing.push(data);
    ing.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::format::tests::{DPO_OK, RFT_OK, SFT_OK, mutate};
    use crate::datasets::tokens::O200k;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn counter() -> Arc<dyn TokenCounter> {
        Arc::new(O200k)
    }

    fn ingest(data: &[u8], opts: IngestOptions) -> (ValidationReport, DatasetStats) {
        ingest_bytes(data, opts, counter())
    }

    fn sft_file(rows: usize) -> String {
        (0..rows)
            .map(|i| format!("{}\n", SFT_OK.replace("Hi there", &format!("Hi there #{i}"))))
            .collect()
    }

    /// SFT, with the last message's content as each row's label.
    fn last_message_labels() -> IngestOptions {
        IngestOptions {
            line: LineOptions {
                label_pointer: Some("/messages/-1/content".into()),
                ..LineOptions::new(Purpose::Sft)
            },
            ..IngestOptions::default()
        }
    }

    fn codes(list: &[Problem]) -> Vec<(u64, &'static str)> {
        list.iter().map(|p| (p.line, p.code)).collect()
    }

    #[test]
    fn newline_scan_matches_naive() {
        let mut rng = StdRng::seed_from_u64(5);
        for len in 0..200 {
            let data: Vec<u8> = (0..len)
                .map(|_| if rng.random_bool(0.2) { b'\n' } else { rng.random() })
                .collect();
            let mut got = Vec::new();
            for_each_byte(&data, b'\n', |i| got.push(i));
            let want: Vec<usize> = (0..len).filter(|&i| data[i] == b'\n').collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn clean_file_is_valid() {
        let (r, s) = ingest(sft_file(12).as_bytes(), IngestOptions::default());
        assert!(r.is_valid(), "{r:?}");
        assert!(r.warnings.is_empty());
        assert_eq!((r.total_rows, r.valid_rows, r.invalid_rows), (12, 12, 0));
        assert_eq!(s.rows, 12);
        assert_eq!(s.default_epochs, 8);
        assert_eq!(s.estimated_trained_tokens, s.tokens_per_example.total * 8);
        assert_eq!(s.messages_per_example.min, 3);
        assert_eq!(s.tokenizer, "o200k_base");
        assert!(s.trained_tokens_per_example.total > 0);
    }

    #[test]
    fn crlf_bom_and_blank_lines() {
        let mut data = b"\xEF\xBB\xBF".to_vec();
        data.extend_from_slice(sft_file(11).replace('\n', "\r\n").as_bytes());
        data.extend_from_slice(b"\r\n   \n");
        data.extend_from_slice(sft_file(1).replace("#0", "#x").as_bytes());
        let (r, s) = ingest(&data, IngestOptions::default());
        assert!(r.is_valid(), "{:?}", r.errors);
        assert_eq!(
            codes(&r.warnings),
            [(1, "utf8_bom"), (12, "blank_line"), (13, "blank_line")]
        );
        assert_eq!(r.total_rows, 12);
        assert_eq!(s.rows, 12);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let mut data = b"\xEF\xBB\xBF".to_vec();
        data.extend_from_slice(sft_file(5).as_bytes());
        data.extend_from_slice("{\"messages\":[{\"role\":\"user\",\"content\":\"h\u{e9}llo \u{1f600}\"},{\"role\":\"assistant\",\"content\":\"\u{4e2d}\u{6587}\"}]}\r\n".as_bytes());
        data.extend_from_slice(b"\n[1]\n{bad json\n\xff\xfe\n");
        data.extend_from_slice(sft_file(2).as_bytes());
        data.extend_from_slice(b"\r\n");
        data.extend_from_slice(&SFT_OK.as_bytes()[..40]);
        let opts = || IngestOptions {
            max_line_bytes: 300,
            ..IngestOptions::default()
        };
        let whole = ingest(&data, opts());
        assert!(whole.0.error_counts.contains_key("truncated_last_line"));
        assert!(whole.0.warning_counts.contains_key("duplicate_example"));
        let mut rng = StdRng::seed_from_u64(42);
        for round in 0..200 {
            let mut ing = Ingestor::new(opts(), counter());
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = if round == 0 {
                    1
                } else {
                    rng.random_range(1..40).min(rest.len())
                };
                ing.push(&rest[..n]);
                rest = &rest[n..];
            }
            assert_eq!(ing.finish(), whole, "round {round}");
        }
    }

    #[test]
    fn overlong_lines_are_streamed_past() {
        for max_line_bytes in [1_000, BLOCK_BYTES / 2] {
            let mut data = b"\xEF\xBB\xBF".to_vec();
            data.extend_from_slice(sft_file(3).replace('\n', "\r\n").as_bytes());
            let huge = format!(
                "{{\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}\n",
                "x".repeat(BLOCK_BYTES * 2)
            );
            data.extend_from_slice(huge.as_bytes());
            data.extend_from_slice(sft_file(2).replace("#", "@").as_bytes());
            data.extend_from_slice(b"{\"unterminated\":\"");
            data.extend_from_slice("y".repeat(BLOCK_BYTES * 2).as_bytes());
            let opts = || IngestOptions {
                max_line_bytes,
                ..IngestOptions::default()
            };
            for chunk in [7_919, 1 << 20, (1 << 20) + 1, data.len()] {
                let mut ing = Ingestor::new(opts(), counter());
                for c in data.chunks(chunk) {
                    ing.push(c);
                    assert!(ing.buf.capacity() <= 2 * BLOCK_BYTES + max_line_bytes + (128 << 10));
                }
                let (r, s) = ing.finish();
                assert_eq!(codes(&r.errors), [(4, "line_too_long"), (7, "line_too_long")]);
                assert!(
                    r.errors[0]
                        .message
                        .starts_with(&format!("line is {} bytes", huge.len() - 1))
                );
                assert_eq!((r.total_rows, r.valid_rows), (7, 5));
                assert_eq!(s.rows, 5);
            }
        }
    }

    #[test]
    fn overlong_line_length_does_not_depend_on_chunking() {
        let mut data = b"\xEF\xBB\xBF\"".to_vec();
        data.extend(std::iter::repeat_n(b'x', BLOCK_BYTES + 10));
        data.extend_from_slice(b"\"\r\n");
        data.extend_from_slice(sft_file(10).as_bytes());
        let opts = || IngestOptions {
            max_line_bytes: 1000,
            ..IngestOptions::default()
        };
        let whole = ingest(&data, opts());
        assert_eq!(codes(&whole.0.errors), [(1, "line_too_long")]);
        let expected = format!("line is {} bytes", BLOCK_BYTES + 12);
        assert!(whole.0.errors[0].message.starts_with(&expected));
        for chunk in [4096, 1 << 20, BLOCK_BYTES + 16, BLOCK_BYTES + 17] {
            let mut ing = Ingestor::new(opts(), counter());
            data.chunks(chunk).for_each(|c| ing.push(c));
            assert_eq!(ing.finish(), whole, "chunk {chunk}");
        }
    }

    #[test]
    fn truncated_last_line_and_unterminated_valid_line() {
        let mut data = sft_file(10);
        data.push_str(&SFT_OK[..50]);
        let (r, _) = ingest(data.as_bytes(), IngestOptions::default());
        assert_eq!(codes(&r.errors), [(11, "truncated_last_line")]);
        assert!(!r.is_valid());
        // A complete last line without a newline is fine.
        let data = sft_file(10) + SFT_OK;
        let (r, _) = ingest(data.as_bytes(), IngestOptions::default());
        assert!(r.is_valid());
        assert_eq!(r.total_rows, 11);
        // An invalid line in the middle is plain invalid_json.
        let data = format!("{}\n{}", &SFT_OK[..50], sft_file(10));
        let (r, _) = ingest(data.as_bytes(), IngestOptions::default());
        assert_eq!(codes(&r.errors), [(1, "invalid_json")]);
    }

    #[test]
    fn empty_and_tiny_files() {
        for data in [&b""[..], b"\n\n  \r\n", b"\xEF\xBB\xBF"] {
            let (r, s) = ingest(data, IngestOptions::default());
            assert_eq!(codes(&r.errors), [(0, "empty_file")], "{data:?}");
            assert!(!r.is_valid());
            assert_eq!(s.rows, 0);
        }
        let (r, _) = ingest(sft_file(3).as_bytes(), IngestOptions::default());
        assert!(r.is_valid());
        assert_eq!(codes(&r.warnings), [(0, "too_few_examples")]);
        let (r, _) = ingest(b"{\"a\":1}\n", IngestOptions::new(Purpose::Eval));
        assert!(r.is_valid() && r.warnings.is_empty());
    }

    #[test]
    fn non_object_and_invalid_utf8_lines() {
        let mut data = sft_file(10).into_bytes();
        data.extend_from_slice(b"[1,2]\n\"s\"\n{\"messages\":\"\xc3\x28\"}\n");
        let (r, _) = ingest(&data, IngestOptions::default());
        assert_eq!(
            codes(&r.errors),
            [(11, "data_type"), (12, "data_type"), (13, "invalid_utf8")]
        );
        assert!(r.errors[2].message.contains("byte offset 13"));
        assert_eq!((r.valid_rows, r.invalid_rows), (10, 3));
    }

    #[test]
    fn duplicates_name_the_first_line() {
        let mut data = sft_file(10);
        data.push_str(&sft_file(3));
        let (r, _) = ingest(data.as_bytes(), IngestOptions::default());
        assert_eq!(
            codes(&r.warnings),
            [
                (11, "duplicate_example"),
                (12, "duplicate_example"),
                (13, "duplicate_example")
            ]
        );
        assert_eq!(r.warnings[1].message, "row is an exact duplicate of line 2");
        assert_eq!(r.warnings[1].pointer, "");
        assert!(r.is_valid());
    }

    #[test]
    fn problem_cap_keeps_counting() {
        let mut data = String::new();
        for i in 0..250 {
            data.push_str(&format!("[{i}]\n{{\"messages\":[{{\"role\":\"user\",\"content\":\"q{i}\"}},{{\"role\":\"assistant\",\"content\":\"a\"}}],\"x\":1}}\n"));
        }
        let opts = IngestOptions {
            max_problems: 100,
            ..IngestOptions::default()
        };
        let (r, s) = ingest(data.as_bytes(), opts);
        assert_eq!(r.errors.len(), 100);
        assert_eq!(r.error_counts.get("data_type"), Some(&250));
        assert_eq!(r.warnings.len(), 100);
        assert_eq!(r.warning_counts.get("unrecognized_key"), Some(&250));
        assert_eq!(r.warning_counts.get("missing_system_message"), Some(&250));
        assert!(r.problems_truncated);
        assert_eq!((r.total_rows, r.valid_rows, r.invalid_rows), (500, 250, 250));
        assert_eq!(s.rows, 250);
        assert_eq!(r.errors[99].line, 199);
    }

    #[test]
    fn stats_and_labels() {
        let mut data = String::new();
        let labels = ["yes", "no", "yes", "maybe"];
        for (i, l) in labels.iter().enumerate() {
            let img = if i == 0 {
                r#",{"type":"image_url","image_url":{"url":"https://x/a.png"}}"#
            } else {
                ""
            };
            data.push_str(&format!(
                r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"q{i}"}}{img}]}},{{"role":"assistant","content":"{l}"}}]}}"#
            ));
            data.push('\n');
        }
        data.push_str(r#"{"messages":[{"role":"user","content":"x"},{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]}]}"#);
        data.push('\n');
        let (r, s) = ingest(data.as_bytes(), last_message_labels());
        assert_eq!(r.valid_rows, 5);
        assert_eq!(r.warning_counts.get("missing_label"), Some(&1));
        assert_eq!(s.label_field.as_deref(), Some("/messages/-1/content"));
        let expected: BTreeMap<String, u64> = [("maybe", 1), ("no", 1), ("yes", 2)]
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        assert_eq!(s.label_counts, expected);
        assert_eq!(s.image_parts, 1);
        assert_eq!(s.tool_call_examples, 1);
        assert_eq!(s.default_epochs, 20);
        assert_eq!(s.messages_per_example.mean, 2.0);
        let t = &s.tokens_per_example;
        assert!(t.min <= t.p50 && t.p50 <= t.p95 && t.p95 <= t.max);
        assert_eq!(s.estimated_trained_tokens, t.total * 20);
    }

    /// A label pointer at free text: long values and values past the
    /// distinct-label cap are counted, but under `<other>`.
    #[test]
    fn label_counts_stay_small() {
        let mut data = String::new();
        let long = "y".repeat(MAX_LABEL_BYTES + 1);
        data.push_str(&format!(
            r#"{{"messages":[{{"role":"user","content":"q"}},{{"role":"assistant","content":"{long}"}}]}}"#
        ));
        data.push('\n');
        for i in 0..MAX_DISTINCT_LABELS + 5 {
            data.push_str(&format!(
                r#"{{"messages":[{{"role":"user","content":"q{i}"}},{{"role":"assistant","content":"label {i}"}}]}}"#
            ));
            data.push('\n');
        }
        let (r, s) = ingest(data.as_bytes(), last_message_labels());
        assert_eq!(r.valid_rows as usize, MAX_DISTINCT_LABELS + 6);
        // The long label went to <other>; then 1,000 distinct labels (the
        // cap counts <other> itself), then the rest to <other>.
        assert_eq!(s.label_counts.len(), MAX_DISTINCT_LABELS);
        assert!(s.label_counts.keys().all(|k| k.len() <= MAX_LABEL_BYTES));
        assert_eq!(s.label_counts.values().sum::<u64>() as usize, MAX_DISTINCT_LABELS + 6);
        assert_eq!(s.label_counts[OTHER_LABEL], 7);
    }

    #[test]
    fn rft_row_limit_and_dpo_file() {
        let data = format!("{RFT_OK}\n").repeat(50_001);
        let opts = IngestOptions {
            max_problems: 0,
            ..IngestOptions::new(Purpose::Rft)
        };
        let (r, s) = ingest(data.as_bytes(), opts);
        assert_eq!(codes(&r.errors), [(0, "too_many_rows")]);
        assert_eq!(s.rows, 50_001);
        assert_eq!(s.trained_tokens_per_example.total, 0);
        assert_eq!(s.default_epochs, 1);

        let data = format!("{DPO_OK}\n").repeat(10);
        let (r, s) = ingest(data.as_bytes(), IngestOptions::new(Purpose::Dpo));
        assert_eq!(r.errors, []);
        assert_eq!(r.warning_counts.get("duplicate_example"), Some(&9));
        assert!(s.trained_tokens_per_example.total > 0);
    }

    #[test]
    fn report_serializes() {
        let (r, s) = ingest(b"[1]\n", IngestOptions::default());
        let r2: ValidationReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let s2: DatasetStats = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!((r2, s2), (r, s));
    }

    #[test]
    fn mini_fuzz_ingestor() {
        let seeds = [SFT_OK, DPO_OK, RFT_OK];
        let mut rng = StdRng::seed_from_u64(99);
        for round in 0..150 {
            let mut data = Vec::new();
            for _ in 0..rng.random_range(0..12) {
                let mut line = seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec();
                if rng.random_bool(0.7) {
                    mutate(&mut rng, &mut line, &seeds);
                }
                data.extend_from_slice(&line);
                data.extend_from_slice(if rng.random_bool(0.2) { b"\r\n" } else { b"\n" });
            }
            if rng.random_bool(0.5) && !data.is_empty() {
                let cut = rng.random_range(0..data.len());
                data.truncate(cut);
            }
            let purpose = Purpose::ALL[round % 4];
            let opts = || IngestOptions {
                max_line_bytes: 200,
                max_problems: 5,
                ..IngestOptions::new(purpose)
            };
            let whole = ingest(&data, opts());
            let mut ing = Ingestor::new(opts(), counter());
            for c in data.chunks(rng.random_range(1..64)) {
                ing.push(c);
            }
            let chunked = ing.finish();
            assert_eq!(chunked, whole);
            let (r, s) = whole;
            assert_eq!(r.total_rows, r.valid_rows + r.invalid_rows);
            assert_eq!(s.rows, r.valid_rows);
            if !r.error_counts.is_empty() {
                assert!(!r.is_valid());
            }
        }
    }
}
