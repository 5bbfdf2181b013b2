//! OpenAI grader JSON, parsed as users send it, into typed graders.
//!
//! Parsing collects every problem instead of stopping at the first, because
//! ValidateGrader answers with all field violations at once. Fields that only the eval
//! variants use (`pass_threshold`) and fields Lathe does not act on (`image_tag`) are
//! accepted so that JSON copied from OpenAI docs validates unchanged.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::formula::Formula;
use super::prompt::{ContentPartTemplate, MessageTemplate, SamplingParams};
use super::similarity::SimilarityMetric;
use super::template::Template;

/// Largest accepted python grader source, OpenAI's documented limit.
pub const MAX_PYTHON_SOURCE_BYTES: usize = 256 * 1024;

/// Violations name the offending field by dotted path, e.g. `graders.similarity.evaluation_metric`.
pub use crate::error::FieldViolation;

#[derive(Debug, Clone, PartialEq)]
pub enum Grader {
    StringCheck(StringCheckGrader),
    TextSimilarity(TextSimilarityGrader),
    Python(PythonGrader),
    ScoreModel(ScoreModelGrader),
    LabelModel(LabelModelGrader),
    Multi(MultiGrader),
}

impl Grader {
    pub fn name(&self) -> &str {
        self.shared_name()
    }

    /// The name, shared rather than copied (each result carries it).
    pub fn name_arc(&self) -> Arc<str> {
        Arc::clone(self.shared_name())
    }

    fn shared_name(&self) -> &Arc<str> {
        match self {
            Grader::StringCheck(g) => &g.name,
            Grader::TextSimilarity(g) => &g.name,
            Grader::Python(g) => &g.name,
            Grader::ScoreModel(g) => &g.name,
            Grader::LabelModel(g) => &g.name,
            Grader::Multi(g) => &g.name,
        }
    }

    /// The OpenAI `type` string.
    pub fn kind(&self) -> &'static str {
        match self {
            Grader::StringCheck(_) => "string_check",
            Grader::TextSimilarity(_) => "text_similarity",
            Grader::Python(_) => "python",
            Grader::ScoreModel(_) => "score_model",
            Grader::LabelModel(_) => "label_model",
            Grader::Multi(_) => "multi",
        }
    }

    /// Whether grading is a pure local computation (no python, model or embedding call),
    /// so it can run on a CPU pool without any service configured.
    pub fn is_deterministic(&self) -> bool {
        match self {
            Grader::StringCheck(_) => true,
            Grader::TextSimilarity(g) => g.metric.is_deterministic(),
            Grader::Python(_) | Grader::ScoreModel(_) | Grader::LabelModel(_) => false,
            Grader::Multi(m) => m.graders.iter().all(|(_, g)| g.is_deterministic()),
        }
    }

    /// The template that names the expected answer, if the grader has one; dry runs use
    /// it to build constant and shuffled answers.
    pub fn reference_template(&self) -> Option<&Template> {
        match self {
            Grader::StringCheck(g) => Some(&g.reference),
            Grader::TextSimilarity(g) => Some(&g.reference),
            Grader::Multi(m) => m.graders.iter().find_map(|(_, g)| g.reference_template()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringCheckOp {
    Eq,
    Ne,
    Like,
    Ilike,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StringCheckGrader {
    /// Shared with every result this grader produces.
    pub name: Arc<str>,
    pub input: Template,
    pub reference: Template,
    pub operation: StringCheckOp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TextSimilarityGrader {
    /// Shared with every result this grader produces.
    pub name: Arc<str>,
    pub input: Template,
    pub reference: Template,
    pub metric: SimilarityMetric,
    pub pass_threshold: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PythonGrader {
    /// Shared with every result this grader produces.
    pub name: Arc<str>,
    pub source: String,
    pub image_tag: Option<String>,
    /// The worker trust domain it runs in: its own source's hash, or for a `multi`
    /// grader's python sub-graders the hash of all of them (one author's code in one
    /// grader, so they share warm workers instead of evicting each other).
    pub domain: [u8; 32],
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreModelGrader {
    /// Shared with every result this grader produces.
    pub name: Arc<str>,
    pub model: String,
    pub input: Vec<MessageTemplate>,
    pub range: (f64, f64),
    pub sampling_params: SamplingParams,
    pub pass_threshold: Option<f64>,
    /// The grader's JSON, compact; part of the result-cache key.
    pub identity: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelModelGrader {
    /// Shared with every result this grader produces.
    pub name: Arc<str>,
    pub model: String,
    pub input: Vec<MessageTemplate>,
    pub labels: Vec<String>,
    pub passing_labels: Vec<String>,
    pub sampling_params: SamplingParams,
    pub identity: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MultiGrader {
    /// Shared with every result this grader produces.
    pub name: Arc<str>,
    /// Sub-graders by the name `calculate_output` uses, in a stable order.
    pub graders: Vec<(String, Grader)>,
    pub calculate_output: Formula,
}

/// Puts a multi grader's python sub-graders in one trust domain.
fn share_python_domain(graders: &mut [(String, Grader)]) {
    let mut sources = String::new();
    for (name, g) in graders.iter() {
        if let Grader::Python(p) = g {
            sources.push_str(&format!("{}\0{name}\0{}\0", p.source.len(), p.source));
        }
    }
    let domain = super::python::source_hash(&sources);
    for (_, g) in graders.iter_mut() {
        if let Grader::Python(p) = g {
            p.domain = domain;
        }
    }
}

/// ValidateGrader: parses OpenAI grader JSON or lists everything wrong with it.
pub fn parse(json: &Value) -> Result<Grader, Vec<FieldViolation>> {
    let mut v = Violations::default();
    let grader = parse_grader(json, "", true, &mut v);
    match grader {
        Some(g) if v.0.is_empty() => Ok(g),
        _ => {
            if v.0.is_empty() {
                v.push("", "invalid grader");
            }
            Err(v.0)
        }
    }
}

#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }
}

fn field(prefix: &str, key: &str) -> String {
    format!("{prefix}{key}")
}

struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
}

impl<'a> Obj<'a> {
    fn string(&self, key: &str, v: &mut Violations) -> Option<&'a str> {
        match self.map.get(key) {
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                v.push(field(self.prefix, key), "must be a string");
                None
            }
            None => {
                v.push(field(self.prefix, key), "is required");
                None
            }
        }
    }

    fn template(&self, key: &str, v: &mut Violations) -> Option<Template> {
        let raw = self.string(key, v)?;
        match Template::parse(raw) {
            Ok(t) => Some(t),
            Err(e) => {
                v.push(field(self.prefix, key), e);
                None
            }
        }
    }

    fn optional_number(&self, key: &str, v: &mut Violations) -> Option<f64> {
        match self.map.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(_) => {
                v.push(field(self.prefix, key), "must be a number");
                None
            }
        }
    }
}

fn parse_grader(json: &Value, prefix: &str, top_level: bool, v: &mut Violations) -> Option<Grader> {
    let Some(map) = json.as_object() else {
        v.push(prefix.trim_end_matches('.'), "grader must be a JSON object");
        return None;
    };
    let o = Obj { map, prefix };
    let kind = o.string("type", v)?;
    let name = match map.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(Arc::<str>::from(s.as_str())),
        Some(Value::String(_)) => {
            v.push(field(prefix, "name"), "must not be empty");
            None
        }
        Some(_) => {
            v.push(field(prefix, "name"), "must be a string");
            None
        }
        // Several OpenAI doc examples omit the top-level name; the type stands in for it.
        None if top_level => Some(kind.into()),
        // Sub-graders of a map-form multi are named by their key.
        None => Some("".into()),
    };
    let grader = match kind {
        "string_check" => {
            let input = o.template("input", v);
            let reference = o.template("reference", v);
            let operation = match o.string("operation", v) {
                Some("eq") => Some(StringCheckOp::Eq),
                Some("ne") => Some(StringCheckOp::Ne),
                Some("like") => Some(StringCheckOp::Like),
                Some("ilike") => Some(StringCheckOp::Ilike),
                Some(other) => {
                    v.push(
                        field(prefix, "operation"),
                        format!("unknown operation '{other}' (expected eq, ne, like or ilike)"),
                    );
                    None
                }
                None => None,
            };
            Grader::StringCheck(StringCheckGrader {
                name: name?,
                input: input?,
                reference: reference?,
                operation: operation?,
            })
        }
        "text_similarity" => {
            let input = o.template("input", v);
            let reference = o.template("reference", v);
            let metric = o.string("evaluation_metric", v).and_then(|m| {
                let parsed = SimilarityMetric::from_name(m);
                if parsed.is_none() {
                    let known: Vec<&str> = SimilarityMetric::ALL.iter().map(|m| m.as_str()).collect();
                    v.push(
                        field(prefix, "evaluation_metric"),
                        format!("unknown metric '{m}' (expected one of {})", known.join(", ")),
                    );
                }
                parsed
            });
            let pass_threshold = o.optional_number("pass_threshold", v);
            Grader::TextSimilarity(TextSimilarityGrader {
                name: name?,
                input: input?,
                reference: reference?,
                metric: metric?,
                pass_threshold,
            })
        }
        "python" => {
            let source = o.string("source", v).and_then(|s| {
                if s.len() > MAX_PYTHON_SOURCE_BYTES {
                    v.push(
                        field(prefix, "source"),
                        format!(
                            "source is {} bytes, over the {MAX_PYTHON_SOURCE_BYTES}-byte limit",
                            s.len()
                        ),
                    );
                    return None;
                }
                if !defines_grade(s) {
                    v.push(
                        field(prefix, "source"),
                        "source must define a top-level `def grade(sample, item)`",
                    );
                    return None;
                }
                Some(s.to_string())
            });
            let image_tag = match map.get("image_tag") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    v.push(field(prefix, "image_tag"), "must be a string");
                    None
                }
            };
            let source = source?;
            Grader::Python(PythonGrader {
                name: name?,
                domain: super::python::source_hash(&source),
                source,
                image_tag,
            })
        }
        "score_model" | "label_model" => {
            let model = o.string("model", v).and_then(|m| {
                if m.trim().is_empty() {
                    v.push(field(prefix, "model"), "must not be empty");
                    return None;
                }
                Some(m.to_string())
            });
            let input = parse_messages(map.get("input"), &field(prefix, "input"), v);
            let sampling_params =
                parse_sampling_params(map.get("sampling_params"), &field(prefix, "sampling_params"), v);
            let identity = json.to_string();
            if kind == "score_model" {
                let range = parse_range(map.get("range"), &field(prefix, "range"), v);
                let pass_threshold = o.optional_number("pass_threshold", v);
                Grader::ScoreModel(ScoreModelGrader {
                    name: name?,
                    model: model?,
                    input: input?,
                    range: range?,
                    sampling_params: sampling_params?,
                    pass_threshold,
                    identity,
                })
            } else {
                let labels = string_list(map.get("labels"), &field(prefix, "labels"), v);
                let passing = string_list(map.get("passing_labels"), &field(prefix, "passing_labels"), v);
                if let (Some(labels), Some(passing)) = (&labels, &passing) {
                    let known: BTreeSet<&String> = labels.iter().collect();
                    let stray: Vec<&str> = passing
                        .iter()
                        .filter(|p| !known.contains(p))
                        .map(String::as_str)
                        .collect();
                    if !stray.is_empty() {
                        v.push(
                            field(prefix, "passing_labels"),
                            format!(
                                "passing_labels must be a subset of labels; not in labels: {}",
                                stray.join(", ")
                            ),
                        );
                    }
                }
                Grader::LabelModel(LabelModelGrader {
                    name: name?,
                    model: model?,
                    input: input?,
                    labels: labels?,
                    passing_labels: passing?,
                    sampling_params: sampling_params?,
                    identity,
                })
            }
        }
        "multi" => {
            if !top_level {
                v.push(field(prefix, "type"), "multi graders cannot be nested");
                return None;
            }
            let graders = parse_sub_graders(map.get("graders"), &field(prefix, "graders"), v);
            let formula_text = o.string("calculate_output", v);
            let formula = match (&graders, formula_text) {
                (Some(graders), Some(text)) => {
                    let names: Vec<&str> = graders.iter().map(|(n, _)| n.as_str()).collect();
                    match Formula::parse(text, &names) {
                        Ok(f) => Some(f),
                        Err(e) => {
                            v.push(field(prefix, "calculate_output"), e);
                            None
                        }
                    }
                }
                _ => None,
            };
            let mut graders = graders?;
            share_python_domain(&mut graders);
            Grader::Multi(MultiGrader {
                name: name?,
                graders,
                calculate_output: formula?,
            })
        }
        other => {
            v.push(
                field(prefix, "type"),
                format!(
                    "unknown grader type '{other}' (expected string_check, text_similarity, python, score_model, label_model or multi)"
                ),
            );
            return None;
        }
    };
    Some(grader)
}

fn parse_sub_graders(value: Option<&Value>, prefix: &str, v: &mut Violations) -> Option<Vec<(String, Grader)>> {
    let Some(map) = value.and_then(Value::as_object) else {
        v.push(
            prefix,
            "must be an object mapping names to graders (or a single grader)",
        );
        return None;
    };
    if map.is_empty() {
        v.push(prefix, "must contain at least one grader");
        return None;
    }
    // The SDK types `graders` as one grader; the docs use a map keyed by formula name.
    if matches!(map.get("type"), Some(Value::String(_))) {
        let single = parse_grader(value?, &format!("{prefix}."), false, v)?;
        let name = single.name().to_string();
        if name.is_empty() {
            v.push(format!("{prefix}.name"), "is required");
            return None;
        }
        return Some(vec![(name, single)]);
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (key, sub) in map {
        let sub_prefix = format!("{prefix}.{key}.");
        if !key.chars().all(|c| c.is_alphanumeric() || c == '_') || key.starts_with(|c: char| c.is_ascii_digit()) {
            v.push(
                format!("{prefix}.{key}"),
                "sub-grader names must be identifiers (letters, digits, '_') to be usable in calculate_output",
            );
            ok = false;
        }
        match parse_grader(sub, &sub_prefix, false, v) {
            Some(mut g) => {
                set_name_if_empty(&mut g, key);
                out.push((key.clone(), g));
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn set_name_if_empty(g: &mut Grader, key: &str) {
    let name = match g {
        Grader::StringCheck(g) => &mut g.name,
        Grader::TextSimilarity(g) => &mut g.name,
        Grader::Python(g) => &mut g.name,
        Grader::ScoreModel(g) => &mut g.name,
        Grader::LabelModel(g) => &mut g.name,
        Grader::Multi(g) => &mut g.name,
    };
    if name.is_empty() {
        *name = Arc::from(key);
    }
}

/// A careful static check: a line starting (column 0, outside nothing we can see) with
/// `def grade(` or `async def grade(`, or a top-level `grade = ...` binding. The python
/// pool can confirm with an `ast` parse (`validate_deep`).
pub fn defines_grade(source: &str) -> bool {
    source.lines().any(|line| {
        let rest = line
            .strip_prefix("def ")
            .or_else(|| line.strip_prefix("async def "))
            .map(str::trim_start);
        if let Some(rest) = rest {
            return rest
                .strip_prefix("grade")
                .is_some_and(|r| r.trim_start().starts_with('('));
        }
        line.strip_prefix("grade")
            .is_some_and(|r| r.trim_start().starts_with('=') && !r.trim_start().starts_with("=="))
    })
}

fn string_list(value: Option<&Value>, name: &str, v: &mut Violations) -> Option<Vec<String>> {
    let Some(items) = value.and_then(Value::as_array) else {
        v.push(name, "must be an array of strings");
        return None;
    };
    if items.is_empty() {
        v.push(name, "must not be empty");
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(s) => out.push(s.to_string()),
            None => {
                v.push(format!("{name}[{i}]"), "must be a string");
                return None;
            }
        }
    }
    Some(out)
}

fn parse_range(value: Option<&Value>, name: &str, v: &mut Violations) -> Option<(f64, f64)> {
    let Some(value) = value.filter(|x| !x.is_null()) else {
        return Some((0.0, 1.0));
    };
    let bounds: Option<Vec<f64>> = value.as_array().map(|a| a.iter().filter_map(Value::as_f64).collect());
    match bounds.as_deref() {
        Some(&[lo, hi]) if value.as_array().is_some_and(|a| a.len() == 2) && lo < hi => Some((lo, hi)),
        _ => {
            v.push(name, "must be [min, max] with min < max");
            None
        }
    }
}

fn parse_sampling_params(value: Option<&Value>, name: &str, v: &mut Violations) -> Option<SamplingParams> {
    let Some(value) = value.filter(|x| !x.is_null()) else {
        return Some(SamplingParams::default());
    };
    let Some(map) = value.as_object() else {
        v.push(name, "must be an object");
        return None;
    };
    let mut p = SamplingParams::default();
    let mut ok = true;
    for (key, val) in map {
        let f = format!("{name}.{key}");
        match key.as_str() {
            "seed" => match val.as_i64() {
                Some(s) => p.seed = Some(s),
                None if val.is_null() => {}
                None => {
                    v.push(f, "must be an integer");
                    ok = false;
                }
            },
            "top_p" | "temperature" => match val.as_f64() {
                Some(x) if x >= 0.0 && (key != "top_p" || x <= 1.0) => {
                    if key == "top_p" {
                        p.top_p = Some(x);
                    } else {
                        p.temperature = Some(x);
                    }
                }
                None if val.is_null() => {}
                _ => {
                    v.push(f, "out of range");
                    ok = false;
                }
            },
            "max_completions_tokens" | "max_completion_tokens" => match val.as_u64() {
                Some(n) if n > 0 => p.max_completion_tokens = Some(n),
                None if val.is_null() => {}
                _ => {
                    v.push(f, "must be a positive integer");
                    ok = false;
                }
            },
            "reasoning_effort" => match val.as_str() {
                Some(e @ ("minimal" | "low" | "medium" | "high")) => p.reasoning_effort = Some(e.to_string()),
                None if val.is_null() => {}
                _ => {
                    v.push(f, "must be one of minimal, low, medium, high");
                    ok = false;
                }
            },
            _ => {
                v.push(f, "unknown sampling parameter");
                ok = false;
            }
        }
    }
    ok.then_some(p)
}

fn parse_messages(value: Option<&Value>, name: &str, v: &mut Violations) -> Option<Vec<MessageTemplate>> {
    let Some(items) = value.and_then(Value::as_array) else {
        v.push(name, "must be an array of messages");
        return None;
    };
    if items.is_empty() {
        v.push(name, "must contain at least one message");
        return None;
    }
    let mut out = Vec::new();
    let mut ok = true;
    for (i, msg) in items.iter().enumerate() {
        let prefix = format!("{name}[{i}]");
        match parse_message(msg, &prefix, v) {
            Some(m) => out.push(m),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn parse_message(msg: &Value, prefix: &str, v: &mut Violations) -> Option<MessageTemplate> {
    let Some(map) = msg.as_object() else {
        v.push(prefix, "must be an object");
        return None;
    };
    if map.get("type").is_some_and(|t| t.as_str() != Some("message")) {
        v.push(format!("{prefix}.type"), "must be \"message\"");
    }
    let role = match map.get("role").and_then(Value::as_str) {
        Some(r @ ("user" | "assistant" | "system" | "developer")) => Some(r.to_string()),
        _ => {
            v.push(
                format!("{prefix}.role"),
                "must be one of user, assistant, system, developer",
            );
            None
        }
    };
    let content_field = format!("{prefix}.content");
    let content = match map.get("content") {
        Some(Value::String(s)) => template_at(s, &content_field, v).map(|t| vec![ContentPartTemplate::Text(t)]),
        Some(part @ Value::Object(_)) => parse_part(part, &content_field, v).map(|p| vec![p]),
        Some(Value::Array(parts)) => {
            let mut out = Vec::new();
            let mut ok = true;
            for (i, part) in parts.iter().enumerate() {
                match parse_part(part, &format!("{content_field}[{i}]"), v) {
                    Some(p) => out.push(p),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        _ => {
            v.push(
                content_field,
                "must be a string, a content part or an array of content parts",
            );
            None
        }
    };
    Some(MessageTemplate {
        role: role?,
        content: content?,
    })
}

fn template_at(raw: &str, name: &str, v: &mut Violations) -> Option<Template> {
    match Template::parse(raw) {
        Ok(t) => Some(t),
        Err(e) => {
            v.push(name, e);
            None
        }
    }
}

fn parse_part(part: &Value, name: &str, v: &mut Violations) -> Option<ContentPartTemplate> {
    let kind = part.get("type").and_then(Value::as_str);
    let text_of = |key: &str, v: &mut Violations| match part.get(key).and_then(Value::as_str) {
        Some(s) => template_at(s, &format!("{name}.{key}"), v),
        None => {
            v.push(format!("{name}.{key}"), "is required");
            None
        }
    };
    match kind {
        Some("input_text" | "output_text") => text_of("text", v).map(ContentPartTemplate::Text),
        Some("input_image") => {
            let url = text_of("image_url", v)?;
            let detail = part.get("detail").and_then(Value::as_str).map(str::to_string);
            Some(ContentPartTemplate::Image { url, detail })
        }
        Some("input_audio") => {
            let audio = part.get("input_audio");
            let data = audio.and_then(|a| a.get("data")).and_then(Value::as_str);
            let format = audio.and_then(|a| a.get("format")).and_then(Value::as_str);
            match (data, format) {
                (Some(d), Some(f)) => Some(ContentPartTemplate::Audio {
                    data: template_at(d, &format!("{name}.input_audio.data"), v)?,
                    format: f.to_string(),
                }),
                _ => {
                    v.push(format!("{name}.input_audio"), "needs data and format");
                    None
                }
            }
        }
        _ => {
            v.push(
                format!("{name}.type"),
                "must be input_text, output_text, input_image or input_audio",
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(json: Value) -> Vec<String> {
        parse(&json).unwrap_err().into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn reports_every_violation_with_its_path() {
        assert_eq!(fields(json!({"type": "nope", "name": "x"})), vec!["type"]);
        assert_eq!(
            fields(json!({"type": "string_check", "name": "x", "input": "{{ foo.a }}", "operation": "gt"})),
            vec!["input", "reference", "operation"]
        );
        let multi = json!({
            "type": "multi", "name": "m", "calculate_output": "similarity + nope",
            "graders": {
                "similarity": {"type": "text_similarity", "input": "{{sample.output_text}}", "reference": "{{item.a}}", "evaluation_metric": "blue"},
                "inner": {"type": "multi", "graders": {}, "calculate_output": "1"}
            }
        });
        let f = fields(multi);
        assert!(f.contains(&"graders.similarity.evaluation_metric".to_string()), "{f:?}");
        assert!(f.contains(&"graders.inner.type".to_string()), "{f:?}");
    }

    #[test]
    fn label_and_python_rules() {
        let label = json!({"type": "label_model", "name": "l", "model": "gpt-4o-mini", "input": [{"role": "user", "content": "{{item.q}}"}],
            "labels": ["a", "b"], "passing_labels": ["a", "c"]});
        assert_eq!(fields(label), vec!["passing_labels"]);
        assert_eq!(
            fields(json!({"type": "python", "name": "p", "source": "def other(): pass"})),
            vec!["source"]
        );
        let big = format!(
            "def grade(s, i):\n    return 1.0\n#{}",
            "x".repeat(MAX_PYTHON_SOURCE_BYTES)
        );
        assert_eq!(
            fields(json!({"type": "python", "name": "p", "source": big})),
            vec!["source"]
        );
        assert!(defines_grade(
            "import math\n\ndef grade (sample, item) -> float:\n    return 1.0\n"
        ));
        assert!(!defines_grade("class A:\n    def grade(self): pass\n"));
    }

    #[test]
    fn multi_accepts_single_grader_form() {
        let g = parse(&json!({"type": "multi", "name": "m", "calculate_output": "exact * 2",
            "graders": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}", "reference": "{{item.a}}", "operation": "eq"}}))
        .unwrap();
        let Grader::Multi(m) = g else { panic!("not multi") };
        assert_eq!(m.graders[0].0, "exact");
    }
}
