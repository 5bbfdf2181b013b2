//! Rows in OpenAI's fine-tuning formats, built from a model's answers.

use serde_json::{Map, Value, json};

use super::calls::TargetCall;
use crate::evals::model::OutputItemRecord;

/// A model's answer: its text and the tool calls it made.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    pub tool_calls: Vec<Value>,
}

impl Answer {
    pub fn of(item: &OutputItemRecord) -> Self {
        Self {
            text: item.detail.sample.clone(),
            tool_calls: item.detail.tool_calls.clone(),
        }
    }

    /// An assistant message's answer (its text and tool calls).
    pub fn of_message(message: &Value) -> Self {
        Self {
            text: message["content"].as_str().unwrap_or_default().to_string(),
            tool_calls: message["tool_calls"].as_array().cloned().unwrap_or_default(),
        }
    }

    pub fn text(text: &str) -> Self {
        Self {
            text: text.to_string(),
            tool_calls: Vec::new(),
        }
    }

    /// Neither text nor a tool call.
    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty() && self.tool_calls.is_empty()
    }

    /// Text and no tool calls: what a DPO output holds.
    pub fn is_text(&self) -> bool {
        !self.text.trim().is_empty() && self.tool_calls.is_empty()
    }

    /// The answer as an assistant message.
    fn message(&self) -> Value {
        let mut m = Map::new();
        m.insert("role".into(), json!("assistant"));
        if self.tool_calls.is_empty() {
            m.insert("content".into(), json!(self.text));
        } else {
            // A call with no text says so with null, as the chat API does.
            let content = if self.text.trim().is_empty() {
                Value::Null
            } else {
                json!(self.text)
            };
            m.insert("content".into(), content);
            m.insert("tool_calls".into(), Value::Array(self.tool_calls.clone()));
        }
        Value::Object(m)
    }
}

/// An SFT row: the input messages, then the answer.
pub fn sft(input: &[Value], tools: Option<&Value>, answer: &Answer, metadata: Value) -> Value {
    let mut messages = input.to_vec();
    messages.push(answer.message());
    let mut row = Map::new();
    row.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = tools {
        row.insert("tools".into(), tools.clone());
    }
    row.insert("metadata".into(), metadata);
    Value::Object(row)
}

/// A DPO row: one input, a preferred and a non-preferred answer.
pub fn dpo(
    input: &[Value],
    tools: Option<&Value>,
    preferred: &Answer,
    non_preferred: &Answer,
    metadata: Value,
) -> Value {
    let mut inner = Map::new();
    inner.insert("messages".into(), Value::Array(input.to_vec()));
    if let Some(tools) = tools {
        inner.insert("tools".into(), tools.clone());
    }
    json!({
        "input": Value::Object(inner),
        "preferred_output": [preferred.message()],
        "non_preferred_output": [non_preferred.message()],
        "metadata": metadata,
    })
}

/// A run's item with its answer as `field` and where that came from as
/// `field` + "_from". The caller checks the item has neither.
pub fn eval_item(item: &Value, field: &str, answer: &Answer, from: Value) -> Value {
    let mut row = item.as_object().cloned().unwrap_or_default();
    row.insert(field.to_string(), json!(answer.text));
    row.insert(format!("{field}_from"), from);
    Value::Object(row)
}

/// An eval item for one target call: the function, its arguments, the call
/// written out for prompts (`get_weather(city="Paris", days=3)`) and the
/// function's definition.
pub fn call_item(call: &TargetCall, tool: &Value) -> Value {
    let args: Vec<String> = call.arguments.iter().map(|(k, v)| format!("{k}={v}")).collect();
    json!({
        "function": call.function,
        "arguments": Value::Object(call.arguments.clone()),
        "call_text": format!("{}({})", call.function, args.join(", ")),
        "tool": tool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{LineOptions, O200k, Purpose, validate_line};

    fn valid(purpose: Purpose, row: &Value) -> bool {
        let line = row.to_string();
        let out = validate_line(1, line.as_bytes(), &LineOptions::new(purpose), &O200k);
        assert!(out.problems.is_empty(), "{line}: {:?}", out.problems);
        true
    }

    fn input() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "Classify."}),
            json!({"role": "user", "content": "my card is lost"}),
        ]
    }

    #[test]
    fn sft_rows_end_with_the_answer_and_validate_without_warnings() {
        let row = sft(
            &input(),
            None,
            &Answer::text("lost_or_stolen_card"),
            json!({"run_id": "r"}),
        );
        assert_eq!(
            row["messages"][2],
            json!({"role": "assistant", "content": "lost_or_stolen_card"})
        );
        assert_eq!(row["metadata"]["run_id"], "r");
        assert!(valid(Purpose::Sft, &row));
    }

    #[test]
    fn tool_calls_become_the_assistant_turn_with_the_tools_offered() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let call = json!({"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}});
        let answer = Answer {
            text: String::new(),
            tool_calls: vec![call.clone()],
        };
        let row = sft(&input(), Some(&tools), &answer, json!({}));
        assert_eq!(row["messages"][2]["content"], Value::Null);
        assert_eq!(row["messages"][2]["tool_calls"][0], call);
        assert_eq!(row["tools"], tools);
        assert!(valid(Purpose::Sft, &row));
    }

    #[test]
    fn dpo_rows_pair_two_answers_to_one_input() {
        let row = dpo(
            &input(),
            None,
            &Answer::text("good"),
            &Answer::text("bad"),
            json!({"x": 1}),
        );
        assert_eq!(row["input"]["messages"], json!(input()));
        assert_eq!(row["preferred_output"][0]["content"], "good");
        assert_eq!(row["non_preferred_output"][0]["content"], "bad");
        assert!(valid(Purpose::Dpo, &row));
    }

    #[test]
    fn a_call_item_writes_the_call_out() {
        let mut arguments = Map::new();
        arguments.insert("city".into(), json!("Paris"));
        arguments.insert("days".into(), json!(3));
        let call = TargetCall {
            function: "get_weather".into(),
            arguments,
        };
        let item = call_item(&call, &json!({"type": "function"}));
        assert_eq!(item["call_text"], r#"get_weather(city="Paris", days=3)"#);
        assert_eq!(item["arguments"]["days"], 3);
        let empty = TargetCall {
            function: "ping".into(),
            arguments: Map::new(),
        };
        assert_eq!(call_item(&empty, &json!({}))["call_text"], "ping()");
    }

    #[test]
    fn what_an_answer_holds() {
        assert!(Answer::text("  ").is_empty());
        assert!(!Answer::text("  ").is_text());
        let call = Answer {
            text: String::new(),
            tool_calls: vec![json!({})],
        };
        assert!(!call.is_empty() && !call.is_text());
    }
}
