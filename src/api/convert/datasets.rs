//! Datasets: domain <-> wire.

use crate::datasets::model::{DatasetRecord, DatasetState, Lineage};
use crate::datasets::report::{DatasetStats, Problem, Purpose, Severity, Summary, TokenSummary, ValidationReport};
use crate::proto;
use crate::proto::timestamp;

pub fn purpose_from_proto(value: i32) -> Option<Purpose> {
    match proto::DatasetPurpose::try_from(value).ok()? {
        proto::DatasetPurpose::Unspecified => None,
        proto::DatasetPurpose::Sft => Some(Purpose::Sft),
        proto::DatasetPurpose::Dpo => Some(Purpose::Dpo),
        proto::DatasetPurpose::Rft => Some(Purpose::Rft),
        proto::DatasetPurpose::Eval => Some(Purpose::Eval),
    }
}

pub fn purpose_to_proto(purpose: Purpose) -> proto::DatasetPurpose {
    match purpose {
        Purpose::Sft => proto::DatasetPurpose::Sft,
        Purpose::Dpo => proto::DatasetPurpose::Dpo,
        Purpose::Rft => proto::DatasetPurpose::Rft,
        Purpose::Eval => proto::DatasetPurpose::Eval,
    }
}

fn state_to_proto(state: DatasetState) -> proto::DatasetState {
    match state {
        DatasetState::Ready => proto::DatasetState::Ready,
        DatasetState::Failed => proto::DatasetState::Failed,
    }
}

fn problem(p: Problem) -> proto::ValidationProblem {
    proto::ValidationProblem {
        line: p.line,
        pointer: p.pointer,
        code: p.code.to_string(),
        message: p.message,
        severity: match p.severity {
            Severity::Error => proto::ProblemSeverity::Error,
            Severity::Warning => proto::ProblemSeverity::Warning,
        } as i32,
    }
}

fn report(r: ValidationReport) -> proto::ValidationReport {
    proto::ValidationReport {
        total_rows: r.total_rows,
        valid_rows: r.valid_rows,
        invalid_rows: r.invalid_rows,
        errors: r.errors.into_iter().map(problem).collect(),
        warnings: r.warnings.into_iter().map(problem).collect(),
        error_counts: r.error_counts.into_iter().collect(),
        warning_counts: r.warning_counts.into_iter().collect(),
        problems_truncated: r.problems_truncated,
    }
}

fn summary(s: Summary) -> proto::CountSummary {
    proto::CountSummary {
        min: s.min,
        max: s.max,
        mean: s.mean,
    }
}

fn tokens(s: TokenSummary) -> proto::TokenSummary {
    proto::TokenSummary {
        min: s.min,
        max: s.max,
        mean: s.mean,
        p50: s.p50,
        p95: s.p95,
        total: s.total,
    }
}

fn stats(s: DatasetStats) -> proto::DatasetStats {
    proto::DatasetStats {
        rows: s.rows,
        messages_per_example: Some(summary(s.messages_per_example)),
        tokens_per_example: Some(tokens(s.tokens_per_example)),
        trained_tokens_per_example: Some(tokens(s.trained_tokens_per_example)),
        tool_call_examples: s.tool_call_examples,
        image_parts: s.image_parts,
        label_field: s.label_field.unwrap_or_default(),
        label_counts: s.label_counts.into_iter().collect(),
        default_epochs: s.default_epochs,
        estimated_trained_tokens: s.estimated_trained_tokens,
        tokenizer: s.tokenizer,
    }
}

fn lineage(l: Lineage) -> proto::DatasetLineage {
    proto::DatasetLineage {
        source_dataset_id: l.source_dataset_id,
        split: l.split,
        validation_fraction: l.validation_fraction,
        seed: l.seed,
        stratify_by: l.stratify_by.unwrap_or_default(),
    }
}

pub fn synthesis_counts(c: crate::synth::Counts) -> proto::SynthesisCounts {
    proto::SynthesisCounts {
        items: c.items,
        kept: c.kept,
        below_threshold: c.below_threshold,
        errored: c.errored,
        unusable: c.unusable,
    }
}

pub fn function_calls(f: crate::synth::calls::FunctionPlan) -> proto::FunctionCalls {
    proto::FunctionCalls {
        name: f.name,
        combinations: u64::try_from(f.combinations).unwrap_or(u64::MAX),
        chosen: f.chosen,
    }
}

pub fn dataset(d: DatasetRecord) -> proto::Dataset {
    proto::Dataset {
        id: d.id,
        filename: d.filename,
        display_name: d.display_name,
        purpose: purpose_to_proto(d.purpose) as i32,
        state: state_to_proto(d.state) as i32,
        bytes: d.bytes,
        sha256: d.sha256,
        created_at: Some(timestamp(d.created_at)),
        metadata: d.metadata.into_iter().collect(),
        validation: Some(report(d.report)),
        stats: Some(stats(d.stats)),
        lineage: d.lineage.map(lineage),
    }
}
