//! Dataset ingestion: streaming validation of OpenAI-format JSONL training
//! and eval files, plus token statistics.
//!
//! - [`format`](mod@format): per-line rules for each [`Purpose`] (SFT chat, DPO, RFT, eval).
//! - [`ingest`]: chunked, parallel, bounded-memory driver ([`Ingestor`]).
//! - `json`: the fast JSON parser for rows (serde_json words the errors).
//! - [`tokens`]: token counting (tiktoken `o200k_base`, exact).
//! - [`report`]: the report and statistics types, stored as JSON.
//! - [`manager`]: the dataset service (upload, list, get, delete, download, split).
//! - [`uploads`]: files sent in parts (OpenAI's Uploads API), assembled
//!   through the same pipeline.
//! - [`lines`]: reading a stored dataset back row by row.
//! - [`model`]: the stored dataset record.
//!
//! Problem codes are stable snake_case strings listed in [`report::codes`]:
//!
//! | code | severity | meaning |
//! |---|---|---|
//! | `data_type` | error | line is JSON but not an object |
//! | `missing_messages_list` | error | `messages` absent, not an array, or empty |
//! | `message_missing_key` | error | message (or tool call) lacks `role`, `content`, `tool_call_id`, `id`, `function`, `name`, `arguments` |
//! | `message_unrecognized_key` | error | unknown key in a message, content part, tool call; or a key not allowed for the role (`weight`/`tool_calls`/`function_call` off assistant, `tool_call_id` off tool) |
//! | `unrecognized_role` | error | role outside the purpose's set |
//! | `missing_content` | error | content null/empty/wrong type without `tool_calls`/`function_call` |
//! | `example_missing_assistant_message` | error | SFT example has no assistant message |
//! | `invalid_json` | error | line does not parse (message has the column) |
//! | `invalid_utf8` | error | line is not UTF-8 (message has the byte offset in the line) |
//! | `line_too_long` | error | line longer than `max_line_bytes` (never buffered whole) |
//! | `nesting_too_deep` | error | arrays/objects nested deeper than `max_depth` |
//! | `truncated_last_line` | error | last line has no newline and does not parse |
//! | `empty_file` | error | no rows at all (file-level, line 0) |
//! | `invalid_type` | error | a known field has the wrong JSON type |
//! | `invalid_value` | error | a known field has a bad value (weight not 0/1, DPO shape, tool type, ...) |
//! | `missing_key` | error | required non-message key missing (DPO outputs, tool `function`, part `text`, ...) |
//! | `image_not_allowed` | error | image outside a user message, or in a text-only format (DPO) |
//! | `invalid_image_url` | error | not http(s) or `data:image/(jpeg\|png\|webp);base64,` |
//! | `too_many_images` | error | more than 10 images in one example |
//! | `wrong_purpose` | error | row has another purpose's signature keys |
//! | `too_many_rows` | error | RFT file over 50,000 rows (file-level) |
//! | `utf8_bom` | warning | leading byte order mark, stripped |
//! | `blank_line` | warning | whitespace-only line, skipped (not a row) |
//! | `unrecognized_key` | warning | unknown top-level / tool / DPO input key, ignored |
//! | `missing_system_message` | warning | SFT example without system/developer message |
//! | `missing_user_message` | warning | no user message |
//! | `too_few_examples` | warning | fewer than 10 rows (file-level; not for eval) |
//! | `duplicate_example` | warning | same JSON as an earlier row (message names its line) |
//! | `over_token_limit` | warning | example over `token_limit` tokens (would be truncated) |
//! | `no_trained_assistant_message` | warning | every assistant message has weight 0 |
//! | `invalid_tool_arguments` | warning | tool call `arguments` is not valid JSON |
//! | `ends_with_assistant_message` | warning | RFT row ends with an assistant message |
//! | `identical_preferences` | warning | DPO preferred == non-preferred |
//! | `missing_label` | warning | `label_pointer` set but no scalar at it |

pub mod format;
pub mod ingest;
mod json;
pub mod lines;
pub mod manager;
pub mod model;
pub mod report;
pub mod tokens;
pub mod uploads;
mod val;

pub use format::{ExampleStats, LineOptions, LineOutcome, extract_label, validate_line};
pub use ingest::{IngestOptions, Ingestor, ingest_bytes};
pub use report::{DatasetStats, Problem, Purpose, Severity, Summary, TokenSummary, ValidationReport};
pub use tokens::{O200k, TokenCounter};
