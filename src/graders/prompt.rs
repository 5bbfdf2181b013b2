//! What a model grader sends: its message templates, rendered into chat
//! messages, and its sampling settings, as a chat-seam request.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::sample::Sample;
use super::template::{RenderError, Template};
use crate::inference::ChatRequest;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub seed: Option<i64>,
    pub top_p: Option<f64>,
    pub temperature: Option<f64>,
    pub max_completion_tokens: Option<u64>,
    pub reasoning_effort: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Vec<ContentPart>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    Image { url: String, detail: Option<String> },
    Audio { data: String, format: String },
}

impl ChatMessage {
    /// The message as OpenAI's JSON: text-only content as one string,
    /// anything else as content parts.
    pub fn to_openai(&self) -> Value {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|p| match p {
                ContentPart::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        let content = if texts.len() == self.content.len() {
            Value::String(texts.join(""))
        } else {
            Value::Array(
                self.content
                    .iter()
                    .map(|p| match p {
                        ContentPart::Text { text } => json!({"type": "text", "text": text}),
                        ContentPart::Image { url, detail } => json!({"type": "image_url", "image_url": {
                            "url": url, "detail": detail.clone().unwrap_or_else(|| "auto".into())}}),
                        ContentPart::Audio { data, format } => {
                            json!({"type": "input_audio", "input_audio": {"data": data, "format": format}})
                        }
                    })
                    .collect(),
            )
        };
        json!({"role": self.role, "content": content})
    }
}

/// The chat request a model grader sends: its messages, its sampling
/// parameters, and OpenAI's structured output with the grader's schema
/// (each provider turns that into what its server takes).
pub fn grader_request(model: &str, messages: &[ChatMessage], params: &SamplingParams, schema: Value) -> ChatRequest {
    ChatRequest {
        model: model.to_string(),
        messages: messages.iter().map(ChatMessage::to_openai).collect(),
        temperature: params.temperature,
        top_p: params.top_p,
        max_tokens: params
            .max_completion_tokens
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        // The same bits: a seed is a name for a random stream, not a number.
        seed: params.seed.map(|s| s as u64),
        reasoning_effort: params.reasoning_effort.clone(),
        response_format: Some(json!({"type": "json_schema",
            "json_schema": {"name": "grader_output", "schema": schema, "strict": true}})),
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MessageTemplate {
    pub role: String,
    pub content: Vec<ContentPartTemplate>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ContentPartTemplate {
    Text(Template),
    Image { url: Template, detail: Option<String> },
    Audio { data: Template, format: String },
}

pub(crate) fn render_messages(
    input: &[MessageTemplate],
    sample: &Sample,
    item: &Value,
) -> Result<Vec<ChatMessage>, RenderError> {
    input
        .iter()
        .map(|m| {
            let content = m
                .content
                .iter()
                .map(|p| {
                    Ok(match p {
                        ContentPartTemplate::Text(t) => ContentPart::Text {
                            text: t.render(sample, item)?,
                        },
                        ContentPartTemplate::Image { url, detail } => ContentPart::Image {
                            url: url.render(sample, item)?,
                            detail: detail.clone(),
                        },
                        ContentPartTemplate::Audio { data, format } => ContentPart::Audio {
                            data: data.render(sample, item)?,
                            format: format.clone(),
                        },
                    })
                })
                .collect::<Result<Vec<_>, RenderError>>()?;
            Ok(ChatMessage {
                role: m.role.clone(),
                content,
            })
        })
        .collect()
}
