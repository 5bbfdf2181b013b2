// TEMPORARY STUB
use super::report::Purpose;
pub struct LineOptions { pub purpose: Purpose, pub token_limit: u64, pub max_depth: usize, pub label_pointer: Option<String> }
pub fn extract_label(value: &serde_json::Value, pointer: &str) -> Option<String> { value.pointer(pointer).and_then(|v| v.as_str()).map(str::to_string) }
