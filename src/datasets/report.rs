// TEMPORARY STUB (replaced by the real module)
use std::collections::BTreeMap;
use serde::{Deserialize, Serialize};
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)] pub enum Purpose { Sft, Dpo, Rft, Eval }
impl Purpose { pub fn as_str(self) -> &'static str { match self { Purpose::Sft => "sft", Purpose::Dpo => "dpo", Purpose::Rft => "rft", Purpose::Eval => "eval" } } }
impl std::str::FromStr for Purpose { type Err = (); fn from_str(s: &str) -> Result<Self, ()> { match s { "sft" => Ok(Purpose::Sft), "dpo" => Ok(Purpose::Dpo), "rft" => Ok(Purpose::Rft), "eval" => Ok(Purpose::Eval), _ => Err(()) } } }
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)] pub enum Severity { Error, Warning }
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)] pub struct Problem { pub line: u64, pub pointer: String, pub code: String, pub message: String, pub severity: Severity }
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)] pub struct ValidationReport { pub total_rows: u64, pub valid_rows: u64, pub invalid_rows: u64, pub errors: Vec<Problem>, pub warnings: Vec<Problem>, pub error_counts: BTreeMap<String,u64>, pub warning_counts: BTreeMap<String,u64>, pub problems_truncated: bool }
impl ValidationReport { pub fn is_valid(&self) -> bool { self.error_counts.is_empty() && self.total_rows > 0 } }
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)] pub struct Summary { pub min: u64, pub max: u64, pub mean: f64 }
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)] pub struct TokenSummary { pub min: u64, pub max: u64, pub mean: f64, pub p50: u64, pub p95: u64, pub total: u64 }
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)] pub struct DatasetStats { pub rows: u64, pub messages_per_example: Summary, pub tokens_per_example: TokenSummary, pub trained_tokens_per_example: TokenSummary, pub tool_call_examples: u64, pub image_parts: u64, pub label_field: Option<String>, pub label_counts: BTreeMap<String,u64>, pub default_epochs: u32, pub estimated_trained_tokens: u64, pub tokenizer: String }
