//! Rendering API objects for people and for scripts, and reading the files people name.

use serde_json::{Value, json};
use tonic::Status;
use tonic_types::StatusExt;

use crate::proto;

/// A client-side error that keeps the server's field details readable,
/// with the CLI's own hints on what to run next (the API gives none: it
/// does not know which client is calling).
pub fn status_error(status: Status) -> anyhow::Error {
    let mut text = format!("{} ({:?})", status.message(), status.code());
    let details = status.get_error_details();
    let mut hints = Vec::new();
    if let Some(bad) = details.bad_request() {
        for v in &bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
            if let Some(hint) = field_hint(&v.field, &v.description)
                && !hints.contains(&hint)
            {
                hints.push(hint);
            }
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for v in &failure.violations {
            if v.r#type == "DATASET_STATE" && v.subject.starts_with("ds_") {
                hints.push(format!("see its validation report: lathe datasets get {}", v.subject));
            }
        }
    }
    for hint in hints {
        text.push_str(&format!("\n  hint: {hint}"));
    }
    anyhow::anyhow!(text)
}

/// What to run next for a field violation the CLI recognises.
fn field_hint(field: &str, description: &str) -> Option<String> {
    if field == "base_model" && description.contains("is registered") {
        return Some("register a base model first: lathe models add PATH --name NAME".into());
    }
    if field == "path" && description.contains("model roots") {
        return Some(
            "the server reads the path on its own disk, under its model roots: DATA_DIR/models and ./models \
             where it started, or those given with lathe serve --model-root DIR"
                .into(),
        );
    }
    if field == "webhook.url" && description.contains("https://") {
        return Some("a server started with --webhook-allow-http also takes http:// webhooks".into());
    }
    if field == "webhook.url" && description.contains("non-public address") {
        return Some(
            "a server started with --webhook-allow-private-addresses also sends webhooks to its network".into(),
        );
    }
    if field.ends_with("eval_id") && description.contains("is not an eval") {
        return Some("create an eval first: lathe evals create --name NAME --criterion GRADER.json".into());
    }
    None
}

pub fn purpose_name(value: i32) -> &'static str {
    match proto::DatasetPurpose::try_from(value) {
        Ok(proto::DatasetPurpose::Sft) => "sft",
        Ok(proto::DatasetPurpose::Dpo) => "dpo",
        Ok(proto::DatasetPurpose::Rft) => "rft",
        Ok(proto::DatasetPurpose::Eval) => "eval",
        _ => "unspecified",
    }
}

pub fn state_name(value: i32) -> &'static str {
    match proto::DatasetState::try_from(value) {
        Ok(proto::DatasetState::Ready) => "READY",
        Ok(proto::DatasetState::Failed) => "FAILED",
        _ => "UNSPECIFIED",
    }
}

fn severity_name(value: i32) -> &'static str {
    match proto::ProblemSeverity::try_from(value) {
        Ok(proto::ProblemSeverity::Error) => "error",
        Ok(proto::ProblemSeverity::Warning) => "warning",
        _ => "unspecified",
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn rfc3339(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref().map(|t| t.to_string()).unwrap_or_default()
}

fn problem_json(p: &proto::ValidationProblem) -> Value {
    json!({
        "line": p.line, "pointer": p.pointer, "code": p.code,
        "message": p.message, "severity": severity_name(p.severity),
    })
}

pub fn dataset_json(d: &proto::Dataset) -> Value {
    let report = d.validation.clone().unwrap_or_default();
    let stats = d.stats.clone().unwrap_or_default();
    let tokens = |t: Option<proto::TokenSummary>| {
        let t = t.unwrap_or_default();
        json!({"min": t.min, "max": t.max, "mean": t.mean, "p50": t.p50, "p95": t.p95, "total": t.total})
    };
    let messages = stats.messages_per_example.unwrap_or_default();
    json!({
        "id": d.id,
        "object": "dataset",
        "filename": d.filename,
        "display_name": d.display_name,
        "purpose": purpose_name(d.purpose),
        "state": state_name(d.state).to_lowercase(),
        "bytes": d.bytes,
        "sha256": d.sha256,
        "created_at": rfc3339(&d.created_at),
        "metadata": d.metadata,
        "validation": {
            "total_rows": report.total_rows,
            "valid_rows": report.valid_rows,
            "invalid_rows": report.invalid_rows,
            "errors": report.errors.iter().map(problem_json).collect::<Vec<_>>(),
            "warnings": report.warnings.iter().map(problem_json).collect::<Vec<_>>(),
            "error_counts": report.error_counts,
            "warning_counts": report.warning_counts,
            "problems_truncated": report.problems_truncated,
        },
        "stats": {
            "rows": stats.rows,
            "messages_per_example": {"min": messages.min, "max": messages.max, "mean": messages.mean},
            "tokens_per_example": tokens(stats.tokens_per_example),
            "trained_tokens_per_example": tokens(stats.trained_tokens_per_example),
            "tool_call_examples": stats.tool_call_examples,
            "image_parts": stats.image_parts,
            "label_field": stats.label_field,
            "label_counts": stats.label_counts,
            "default_epochs": stats.default_epochs,
            "estimated_trained_tokens": stats.estimated_trained_tokens,
            "tokenizer": stats.tokenizer,
        },
        "lineage": d.lineage.as_ref().map(|l| json!({
            "source_dataset_id": l.source_dataset_id, "split": l.split,
            "validation_fraction": l.validation_fraction, "seed": l.seed, "stratify_by": l.stratify_by,
        })),
    })
}

/// One line per dataset, for `list`.
pub fn dataset_row(d: &proto::Dataset) -> String {
    let rows = d.validation.as_ref().map(|r| r.total_rows).unwrap_or(0);
    format!(
        "{:<29}  {:<5}  {:<6}  {:>10}  {:>8} rows  {}",
        d.id,
        purpose_name(d.purpose),
        state_name(d.state),
        human_bytes(d.bytes),
        rows,
        d.display_name
    )
}

/// The full report, for `get` and `upload`.
pub fn dataset_text(d: &proto::Dataset) -> String {
    let mut out = String::new();
    let report = d.validation.clone().unwrap_or_default();
    let stats = d.stats.clone().unwrap_or_default();
    out.push_str(&format!(
        "{}  {}  {}  {}\n",
        d.id,
        state_name(d.state),
        purpose_name(d.purpose),
        d.display_name
    ));
    out.push_str(&format!(
        "  file      {} ({}), sha256 {}\n",
        d.filename,
        human_bytes(d.bytes),
        d.sha256
    ));
    if let Some(l) = &d.lineage {
        out.push_str(&format!(
            "  split     {} of {} (validation fraction {}, seed {}{})\n",
            l.split,
            l.source_dataset_id,
            l.validation_fraction,
            l.seed,
            if l.stratify_by.is_empty() {
                String::new()
            } else {
                format!(", stratified by {}", l.stratify_by)
            }
        ));
    }
    out.push_str(&format!(
        "  rows      {} total, {} valid, {} invalid\n",
        report.total_rows, report.valid_rows, report.invalid_rows
    ));
    if stats.rows > 0 {
        let m = stats.messages_per_example.unwrap_or_default();
        let t = stats.tokens_per_example.unwrap_or_default();
        let a = stats.trained_tokens_per_example.unwrap_or_default();
        // Eval items have no messages to train on.
        let chat = d.purpose != proto::DatasetPurpose::Eval as i32;
        if chat {
            out.push_str(&format!(
                "  messages  min {} / mean {:.1} / max {} per example\n",
                m.min, m.mean, m.max
            ));
        }
        out.push_str(&format!(
            "  tokens    min {} / p50 {} / mean {:.1} / p95 {} / max {} per example, {} in all ({})\n",
            t.min, t.p50, t.mean, t.p95, t.max, t.total, stats.tokenizer
        ));
        if chat {
            out.push_str(&format!(
                "  trained   {} assistant tokens in all (mean {:.1} per example)\n",
                a.total, a.mean
            ));
        }
        if stats.tool_call_examples > 0 || stats.image_parts > 0 {
            out.push_str(&format!(
                "  extras    {} examples with tool calls, {} image parts\n",
                stats.tool_call_examples, stats.image_parts
            ));
        }
        if chat {
            out.push_str(&format!(
                "  epochs    {} by default, about {} trained tokens\n",
                stats.default_epochs, stats.estimated_trained_tokens
            ));
        }
        if !stats.label_counts.is_empty() {
            let mut labels: Vec<_> = stats.label_counts.iter().collect();
            labels.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let top: Vec<String> = labels.iter().take(5).map(|(l, n)| format!("{l} {n}")).collect();
            out.push_str(&format!(
                "  labels    {} distinct at {}; most common: {}\n",
                labels.len(),
                stats.label_field,
                top.join(", ")
            ));
        }
    }
    let counts = |m: &std::collections::HashMap<String, u64>| {
        let mut v: Vec<_> = m.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        v.sort();
        v.join(", ")
    };
    if !report.error_counts.is_empty() {
        out.push_str(&format!("  errors    {}\n", counts(&report.error_counts)));
        for p in &report.errors {
            out.push_str(&format!(
                "    line {:<6} {:<24} {:<34} {}\n",
                p.line, p.pointer, p.code, p.message
            ));
        }
    }
    if !report.warning_counts.is_empty() {
        out.push_str(&format!("  warnings  {}\n", counts(&report.warning_counts)));
        for p in report.warnings.iter().take(10) {
            out.push_str(&format!(
                "    line {:<6} {:<24} {:<34} {}\n",
                p.line, p.pointer, p.code, p.message
            ));
        }
        if report.warnings.len() > 10 {
            out.push_str("    … (use --json for every listed problem)\n");
        }
    }
    if report.problems_truncated {
        out.push_str("  (only the first problems are listed; the counts are complete)\n");
    }
    out
}

/// A JSON file the user named (a grader, an item, a response format, ...).
pub(crate) fn read_json(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}
