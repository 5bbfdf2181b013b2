//! The graders engine: OpenAI grader JSON in, rewards out.
//!
//! Architecture invariant: this module knows nothing about gRPC or HTTP. Model calls (the
//! chat seam, `crate::inference::ChatModel`), embeddings and python execution come in
//! through [`GradeContext`], so the service decides which models exist and tests
//! substitute doubles.
//!
//! Entry points: [`parse`] (ValidateGrader), [`run`] (RunGrader), [`grade_batch`]
//! (GradeBatch) and [`dry_run`] (score distribution and guessability before training).

mod batch;
mod dry_run;
mod formula;
mod grade;
mod model;
mod prompt;
mod python;
mod result;
mod sample;
pub mod service;
pub mod similarity;
mod spec;
mod string_check;
pub mod template;

pub use batch::{grade_batch, grade_batch_blocking};
pub use dry_run::{ConstantAnswer, DryRunReport, Guessability, HistogramBin, dry_run};
pub use formula::{EvalError, Formula};
pub use grade::{GradeContext, run, run_deterministic, validate};
pub use model::{
    CallPolicy, EmbedError, Embedder, ResultCache, TokenUsage, label_schema, parse_label, parse_score, score_schema,
};
pub use prompt::{ChatMessage, ContentPart, ContentPartTemplate, MessageTemplate, SamplingParams, grader_request};
pub use python::env as python_env;
pub use python::{
    PoolError, PythonOutcome, PythonPool, PythonPoolConfig, SandboxLevel, SandboxPolicy, SandboxReport,
    source_hash as python_source_hash,
};
pub use result::{GraderErrors, GraderMetadata, GraderResult};
pub use sample::Sample;
pub use similarity::SimilarityMetric;
pub use spec::{
    FieldViolation, Grader, LabelModelGrader, MAX_PYTHON_SOURCE_BYTES, MultiGrader, PythonGrader, ScoreModelGrader,
    StringCheckGrader, StringCheckOp, TextSimilarityGrader, defines_grade, parse,
};
pub use template::{Namespace, RenderError, Step, Template, Variable};
