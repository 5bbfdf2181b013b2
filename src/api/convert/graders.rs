//! Graders: domain <-> wire.

use crate::error::Error;
use crate::graders::{GraderErrors, GraderResult, Sample};
use crate::proto::json::{json_from_struct, json_from_value, struct_from_json};
use crate::proto::{self, timestamp};
use crate::store::GraderRecord;

pub fn grader_json(grader: Option<prost_types::Struct>) -> Result<serde_json::Value, Error> {
    grader.map(json_from_struct).ok_or_else(|| {
        Error::invalid(
            "grader",
            "a grader object (or {\"name\": ...} of a saved one) is required",
        )
    })
}

pub fn item(item: Option<prost_types::Struct>) -> serde_json::Value {
    item.map_or_else(|| serde_json::json!({}), json_from_struct)
}

/// The wire sample; `output_json` comes from the text when the caller did not give it.
pub fn sample(sample: Option<proto::Sample>) -> Sample {
    let s = sample.unwrap_or_default();
    let mut out = Sample::from_model_output(s.output_text);
    if let Some(json) = s.output_json.map(json_from_value).filter(|v| !v.is_null()) {
        out.output_json = Some(json);
    }
    if let Some(tools) = s.output_tools {
        out.output_tools = tools.values.into_iter().map(json_from_value).collect();
    }
    out
}

fn errors(e: GraderErrors) -> proto::GraderErrors {
    proto::GraderErrors {
        formula_parse_error: e.formula_parse_error,
        sample_parse_error: e.sample_parse_error,
        invalid_variable_error: e.invalid_variable_error,
        python_grader_runtime_error: e.python_grader_runtime_error,
        python_grader_runtime_error_details: e.python_grader_runtime_error_details,
        python_grader_server_error: e.python_grader_server_error,
        model_grader_server_error: e.model_grader_server_error,
        model_grader_server_error_details: e.model_grader_server_error_details,
        model_grader_parse_error: e.model_grader_parse_error,
        model_grader_refusal_error: e.model_grader_refusal_error,
        other_error: e.other_error,
        python_grader_server_error_type: e.python_grader_server_error_type,
        other_error_details: e.other_error_details,
    }
}

pub fn grader_result(r: GraderResult) -> proto::GraderResult {
    proto::GraderResult {
        reward: r.reward,
        sub_rewards: r.sub_rewards.into_iter().collect(),
        metadata: Some(proto::GraderResultMetadata {
            name: r.metadata.name.to_string(),
            r#type: r.metadata.kind.to_string(),
            execution_time_seconds: r.metadata.execution_time.as_secs_f64(),
            errors: Some(errors(r.metadata.errors().clone())),
            token_usage: r.metadata.token_usage.into_iter().collect(),
        }),
    }
}

pub fn saved_grader(g: GraderRecord) -> proto::SavedGrader {
    proto::SavedGrader {
        name: g.name,
        grader: Some(struct_from_json(&g.grader)),
        created_at: Some(timestamp(g.created_at)),
    }
}
