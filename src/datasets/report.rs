//! Report types produced by dataset ingestion. They are stored as JSON, so
//! every type here round-trips through serde.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a dataset file is for; decides which line format is expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Supervised fine-tuning, chat format.
    Sft,
    /// Direct preference optimization pairs.
    Dpo,
    /// Reinforcement fine-tuning items (messages plus grader-visible fields).
    Rft,
    /// Eval items: any JSON object.
    Eval,
}

impl Purpose {
    pub const ALL: [Purpose; 4] = [Purpose::Sft, Purpose::Dpo, Purpose::Rft, Purpose::Eval];

    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Sft => "sft",
            Purpose::Dpo => "dpo",
            Purpose::Rft => "rft",
            Purpose::Eval => "eval",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The purpose an upload asks for: one format, or any fine-tuning format
/// (OpenAI's `fine-tune`, which covers supervised, preference and
/// reinforcement data alike), told by the file's first row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PurposeChoice {
    Exactly(Purpose),
    FineTune,
}

impl PurposeChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            PurposeChoice::Exactly(p) => p.as_str(),
            PurposeChoice::FineTune => "fine-tune",
        }
    }

    /// The stored form back (`as_str`'s output).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fine-tune" => Some(PurposeChoice::FineTune),
            other => Purpose::ALL
                .into_iter()
                .find(|p| p.as_str() == other)
                .map(PurposeChoice::Exactly),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown dataset purpose '{0}' (expected sft, dpo, rft or eval)")]
pub struct ParsePurposeError(pub String);

impl FromStr for Purpose {
    type Err = ParsePurposeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Accept OpenAI's method names too, since users copy them from job specs.
        match s.trim().to_ascii_lowercase().as_str() {
            "sft" | "supervised" | "fine-tune" => Ok(Purpose::Sft),
            "dpo" | "preference" => Ok(Purpose::Dpo),
            "rft" | "reinforcement" => Ok(Purpose::Rft),
            "eval" | "evals" => Ok(Purpose::Eval),
            _ => Err(ParsePurposeError(s.to_string())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The row (or file) is rejected.
    Error,
    /// Worth telling the user; does not reject anything.
    Warning,
}

/// One finding. `code` is a stable snake_case identifier (see [`codes`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// 1-based line number; 0 means the whole file.
    pub line: u64,
    /// RFC 6901 JSON pointer into the line; "" means the whole line.
    pub pointer: String,
    pub code: &'static str,
    pub message: String,
    pub severity: Severity,
}

/// Deserialization form of [`Problem`]: codes are `&'static str` so that hot
/// paths never allocate them, and known codes map back to their constants.
#[derive(Deserialize)]
struct ProblemWire {
    line: u64,
    pointer: String,
    code: String,
    message: String,
    severity: Severity,
}

impl<'de> Deserialize<'de> for Problem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ProblemWire::deserialize(d).map(Problem::from)
    }
}

impl From<ProblemWire> for Problem {
    fn from(w: ProblemWire) -> Self {
        Problem {
            line: w.line,
            pointer: w.pointer,
            code: codes::intern(&w.code),
            message: w.message,
            severity: w.severity,
        }
    }
}

/// Stable problem codes.
pub mod codes {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};

    // Errors from the OpenAI cookbook validator (same names).
    pub const DATA_TYPE: &str = "data_type";
    pub const MISSING_MESSAGES_LIST: &str = "missing_messages_list";
    pub const MESSAGE_MISSING_KEY: &str = "message_missing_key";
    pub const MESSAGE_UNRECOGNIZED_KEY: &str = "message_unrecognized_key";
    pub const UNRECOGNIZED_ROLE: &str = "unrecognized_role";
    pub const MISSING_CONTENT: &str = "missing_content";
    pub const EXAMPLE_MISSING_ASSISTANT_MESSAGE: &str = "example_missing_assistant_message";

    // Further errors.
    pub const INVALID_JSON: &str = "invalid_json";
    pub const INVALID_UTF8: &str = "invalid_utf8";
    pub const LINE_TOO_LONG: &str = "line_too_long";
    pub const NESTING_TOO_DEEP: &str = "nesting_too_deep";
    pub const TRUNCATED_LAST_LINE: &str = "truncated_last_line";
    pub const EMPTY_FILE: &str = "empty_file";
    pub const INVALID_TYPE: &str = "invalid_type";
    pub const INVALID_VALUE: &str = "invalid_value";
    pub const MISSING_KEY: &str = "missing_key";
    pub const IMAGE_NOT_ALLOWED: &str = "image_not_allowed";
    pub const INVALID_IMAGE_URL: &str = "invalid_image_url";
    pub const TOO_MANY_IMAGES: &str = "too_many_images";
    pub const WRONG_PURPOSE: &str = "wrong_purpose";
    pub const TOO_MANY_ROWS: &str = "too_many_rows";

    // Warnings.
    pub const UTF8_BOM: &str = "utf8_bom";
    pub const BLANK_LINE: &str = "blank_line";
    pub const UNRECOGNIZED_KEY: &str = "unrecognized_key";
    pub const MISSING_SYSTEM_MESSAGE: &str = "missing_system_message";
    pub const MISSING_USER_MESSAGE: &str = "missing_user_message";
    pub const TOO_FEW_EXAMPLES: &str = "too_few_examples";
    pub const DUPLICATE_EXAMPLE: &str = "duplicate_example";
    pub const OVER_TOKEN_LIMIT: &str = "over_token_limit";
    pub const NO_TRAINED_ASSISTANT_MESSAGE: &str = "no_trained_assistant_message";
    pub const INVALID_TOOL_ARGUMENTS: &str = "invalid_tool_arguments";
    pub const ENDS_WITH_ASSISTANT_MESSAGE: &str = "ends_with_assistant_message";
    pub const IDENTICAL_PREFERENCES: &str = "identical_preferences";
    pub const MISSING_LABEL: &str = "missing_label";

    pub const ALL: &[&str] = &[
        DATA_TYPE,
        MISSING_MESSAGES_LIST,
        MESSAGE_MISSING_KEY,
        MESSAGE_UNRECOGNIZED_KEY,
        UNRECOGNIZED_ROLE,
        MISSING_CONTENT,
        EXAMPLE_MISSING_ASSISTANT_MESSAGE,
        INVALID_JSON,
        INVALID_UTF8,
        LINE_TOO_LONG,
        NESTING_TOO_DEEP,
        TRUNCATED_LAST_LINE,
        EMPTY_FILE,
        INVALID_TYPE,
        INVALID_VALUE,
        MISSING_KEY,
        IMAGE_NOT_ALLOWED,
        INVALID_IMAGE_URL,
        TOO_MANY_IMAGES,
        WRONG_PURPOSE,
        TOO_MANY_ROWS,
        UTF8_BOM,
        BLANK_LINE,
        UNRECOGNIZED_KEY,
        MISSING_SYSTEM_MESSAGE,
        MISSING_USER_MESSAGE,
        TOO_FEW_EXAMPLES,
        DUPLICATE_EXAMPLE,
        OVER_TOKEN_LIMIT,
        NO_TRAINED_ASSISTANT_MESSAGE,
        INVALID_TOOL_ARGUMENTS,
        ENDS_WITH_ASSISTANT_MESSAGE,
        IDENTICAL_PREFERENCES,
        MISSING_LABEL,
    ];

    /// Maps a code string to its `'static` constant; unknown codes (from a
    /// newer version) are leaked once each, bounded by the number of codes.
    pub fn intern(s: &str) -> &'static str {
        if let Some(c) = ALL.iter().find(|c| **c == s) {
            return c;
        }
        static EXTRA: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
        let set = EXTRA.get_or_init(|| Mutex::new(HashSet::new()));
        let mut set = match set.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(c) = set.get(s) {
            return c;
        }
        let leaked: &'static str = Box::leak(s.to_string().into_boxed_str());
        set.insert(leaked);
        leaked
    }
}

impl Problem {
    pub fn error(line: u64, pointer: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            line,
            pointer: pointer.into(),
            code,
            message: message.into(),
            severity: Severity::Error,
        }
    }

    pub fn warning(line: u64, pointer: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Problem {
            line,
            pointer: pointer.into(),
            code,
            message: message.into(),
            severity: Severity::Warning,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.line == 0 {
            write!(f, "file: {sev} {}: {}", self.code, self.message)
        } else if self.pointer.is_empty() {
            write!(f, "line {}: {sev} {}: {}", self.line, self.code, self.message)
        } else {
            write!(
                f,
                "line {} {}: {sev} {}: {}",
                self.line, self.pointer, self.code, self.message
            )
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Non-blank lines seen.
    pub total_rows: u64,
    /// Rows without errors.
    pub valid_rows: u64,
    /// Rows with at least one error.
    pub invalid_rows: u64,
    /// The first `max_problems` row errors in line order, then file-level errors.
    pub errors: Vec<Problem>,
    /// The first `max_problems` row warnings in line order, then file-level warnings.
    pub warnings: Vec<Problem>,
    /// Every error by code, including those not listed.
    pub error_counts: BTreeMap<String, u64>,
    /// Every warning by code, including those not listed.
    pub warning_counts: BTreeMap<String, u64>,
    /// Whether some problems were counted but not listed.
    pub problems_truncated: bool,
}

impl ValidationReport {
    /// True when there is at least one row and no error anywhere.
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
            && self.error_counts.values().all(|&n| n == 0)
            && self.total_rows > 0
            && self.valid_rows > 0
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
}

/// Percentiles use the nearest-rank method, so they are always observed values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenSummary {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub p50: u64,
    pub p95: u64,
    pub total: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Valid rows counted.
    pub rows: u64,
    pub messages_per_example: Summary,
    pub tokens_per_example: TokenSummary,
    /// Tokens of assistant messages that are trained on (weight != 0; DPO:
    /// the preferred output; RFT and eval: 0).
    pub trained_tokens_per_example: TokenSummary,
    pub tool_call_examples: u64,
    pub image_parts: u64,
    pub label_field: Option<String>,
    pub label_counts: BTreeMap<String, u64>,
    pub default_epochs: u32,
    /// Sum over rows of min(tokens, token_limit), times `default_epochs`
    /// (the cookbook's billing estimate).
    pub estimated_trained_tokens: u64,
    pub tokenizer: String,
}

/// OpenAI's default-epochs heuristic: target 3 epochs, raised for small
/// datasets (up to 25) and lowered for large ones (down to 1).
pub fn default_epochs(n_examples: u64) -> u32 {
    const TARGET: u64 = 3;
    const MIN_TARGET_EXAMPLES: u64 = 100;
    const MAX_TARGET_EXAMPLES: u64 = 25_000;
    const MIN_DEFAULT_EPOCHS: u64 = 1;
    const MAX_DEFAULT_EPOCHS: u64 = 25;
    if n_examples == 0 {
        return TARGET as u32;
    }
    let n = n_examples;
    let epochs = if n.saturating_mul(TARGET) < MIN_TARGET_EXAMPLES {
        MAX_DEFAULT_EPOCHS.min(MIN_TARGET_EXAMPLES / n)
    } else if n.saturating_mul(TARGET) > MAX_TARGET_EXAMPLES {
        MIN_DEFAULT_EPOCHS.max(MAX_TARGET_EXAMPLES / n)
    } else {
        TARGET
    };
    epochs as u32
}

/// Exact distribution of per-row values with memory proportional to the
/// number of distinct values (token counts are bounded by line size), not to
/// the number of rows.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: BTreeMap<u64, u64>,
    n: u64,
    sum: u128,
}

impl Histogram {
    pub fn add(&mut self, v: u64) {
        *self.counts.entry(v).or_insert(0) += 1;
        self.n += 1;
        self.sum += u128::from(v);
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn total(&self) -> u64 {
        u64::try_from(self.sum).unwrap_or(u64::MAX)
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum as f64 / self.n as f64
        }
    }

    /// Nearest-rank percentile: the smallest value with at least `p`% of
    /// observations at or below it.
    pub fn percentile(&self, p: u32) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let p = u128::from(p.min(100));
        let rank = ((p * u128::from(self.n)).div_ceil(100)).max(1);
        let mut seen: u128 = 0;
        for (&v, &c) in &self.counts {
            seen += u128::from(c);
            if seen >= rank {
                return v;
            }
        }
        self.counts.keys().next_back().copied().unwrap_or(0)
    }

    pub fn summary(&self) -> Summary {
        Summary {
            min: self.counts.keys().next().copied().unwrap_or(0),
            max: self.counts.keys().next_back().copied().unwrap_or(0),
            mean: self.mean(),
        }
    }

    pub fn token_summary(&self) -> TokenSummary {
        let s = self.summary();
        TokenSummary {
            min: s.min,
            max: s.max,
            mean: s.mean,
            p50: self.percentile(50),
            p95: self.percentile(95),
            total: self.total(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_round_trip() {
        for p in Purpose::ALL {
            assert_eq!(p.as_str().parse::<Purpose>(), Ok(p));
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{}\"", p.as_str()));
        }
        assert!("sfx".parse::<Purpose>().is_err());
    }

    #[test]
    fn epochs_heuristic() {
        assert_eq!(default_epochs(1), 25);
        assert_eq!(default_epochs(3), 25);
        assert_eq!(default_epochs(4), 25);
        assert_eq!(default_epochs(5), 20);
        assert_eq!(default_epochs(10), 10);
        assert_eq!(default_epochs(33), 3);
        assert_eq!(default_epochs(34), 3);
        assert_eq!(default_epochs(8_333), 3);
        assert_eq!(default_epochs(8_334), 2);
        assert_eq!(default_epochs(12_500), 2);
        assert_eq!(default_epochs(12_501), 1);
        assert_eq!(default_epochs(1_000_000), 1);
    }

    #[test]
    fn percentiles_match_sorting() {
        let mut h = Histogram::default();
        let mut all = Vec::new();
        let mut x: u64 = 99;
        for _ in 0..1001 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let v = (x >> 33) % 500;
            h.add(v);
            all.push(v);
        }
        all.sort_unstable();
        for p in [1u32, 5, 50, 90, 95, 99, 100] {
            let rank = (p as usize * all.len()).div_ceil(100).max(1);
            assert_eq!(h.percentile(p), all[rank - 1], "p{p}");
        }
        let t = h.token_summary();
        assert_eq!(t.min, all[0]);
        assert_eq!(t.max, all[all.len() - 1]);
        assert_eq!(t.total, all.iter().sum::<u64>());
        // Small hand-checked case.
        let mut h = Histogram::default();
        for v in [10, 20, 30, 40] {
            h.add(v);
        }
        assert_eq!(h.percentile(50), 20);
        assert_eq!(h.percentile(95), 40);
        assert_eq!(h.percentile(0), 10);
        assert_eq!(Histogram::default().percentile(50), 0);
    }

    #[test]
    fn report_round_trips_json() {
        let mut r = ValidationReport::default();
        r.errors
            .push(Problem::error(3, "/messages/0", codes::INVALID_TYPE, "x"));
        r.errors.push(Problem::error(4, "", "some_future_code", "y"));
        let j = serde_json::to_string(&r).unwrap();
        let back: ValidationReport = serde_json::from_str(&j).unwrap();
        assert_eq!(back, r);
    }
}
