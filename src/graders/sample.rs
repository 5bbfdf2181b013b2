//! What a grader sees of the model's answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The sampled answer, in the shape OpenAI passes to graders and python `grade()`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub output_text: String,
    /// Filled when the output text is valid JSON (see [`Sample::from_model_output`]).
    #[serde(default)]
    pub output_json: Option<Value>,
    #[serde(default)]
    pub output_tools: Vec<Value>,
    #[serde(default)]
    pub choices: Vec<Value>,
}

impl Sample {
    /// A sample for RunGrader's `model_sample` string. OpenAI fills `output_json` when the
    /// sample text is valid JSON; any JSON value counts, surrounding whitespace allowed.
    pub fn from_model_output(text: impl Into<String>) -> Sample {
        let output_text = text.into();
        let output_json = serde_json::from_str::<Value>(output_text.trim()).ok();
        Sample {
            output_text,
            output_json,
            output_tools: Vec::new(),
            choices: Vec::new(),
        }
    }

    /// The JSON a python grader receives as `sample`.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "output_text": self.output_text,
            "output_json": self.output_json,
            "output_tools": self.output_tools,
            "choices": self.choices,
            "output_audio": Value::Null,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Sample;

    #[test]
    fn output_json_only_for_valid_json() {
        assert_eq!(
            Sample::from_model_output(" {\"a\": 1} ").output_json,
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(Sample::from_model_output("a: 1").output_json, None);
        assert_eq!(Sample::from_model_output("").output_json, None);
    }
}
