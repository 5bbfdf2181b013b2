//! A job's spec from a create request: the defaults and the checks.
//!
//! Architecture invariant: this is the one owner of a spec's defaults
//! (LoRA settings, the seed) and of its ranges. Every problem is reported
//! once, under the field path the gRPC request names it by
//! (`method.supervised.batch_size`, `lora.rank`, ...). Trainers check only
//! what is theirs to know (which methods and modules they support), the
//! wire layer only converts, and a REST front door uses the same paths'
//! owner through the same service.

use std::collections::BTreeMap;

use super::model::{CheckpointEval, EarlyStopping, JobSpec, Lora, Method, MethodKind, Resources, Webhook};
use super::webhook::WebhookPolicy;
use crate::error::FieldViolation;

/// A create request as the jobs service takes it: what the user gave,
/// unset fields as `None`.
#[derive(Clone, Debug, Default)]
pub struct CreateJob {
    pub base_model: String,
    pub training_dataset_id: String,
    pub validation_dataset_id: Option<String>,
    /// None: supervised with every hyperparameter on auto.
    pub method: Option<Method>,
    /// None: every LoRA setting at its default.
    pub lora: Option<LoraRequest>,
    /// None: a random seed, recorded in the job.
    pub seed: Option<u64>,
    pub suffix: String,
    pub metadata: BTreeMap<String, String>,
    pub priority: i32,
    pub early_stopping: Option<EarlyStopping>,
    pub webhook: Option<Webhook>,
    pub checkpoint_eval: Option<CheckpointEval>,
    pub resources: Resources,
    pub idempotency_key: Option<String>,
}

/// The most CPUs and GPUs one job may ask for.
pub const MAX_CPUS: f64 = 1024.0;
pub const MAX_GPUS: f64 = 64.0;

/// LoRA settings as requested; `None` takes the default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraRequest {
    pub rank: Option<u32>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    /// Empty: every projection.
    pub target_modules: Vec<String>,
}

/// Largest seed (OpenAI's: a 31-bit integer).
pub const MAX_SEED: u64 = 2_147_483_647;

/// The spec `req` asks for, defaults filled in, and every problem with it.
pub fn build(req: &CreateJob) -> (JobSpec, Vec<FieldViolation>) {
    let kind = req.method.as_ref().map_or(MethodKind::Supervised, |m| m.kind);
    let mut defaults = Lora::default();
    if kind != MethodKind::Supervised {
        // DPO and GRPO train without dropout (as TRL's DPO): DPO's policy
        // starts exactly at its reference, and GRPO's log-probs are those
        // of the policy that sampled.
        defaults.dropout = 0.0;
    }
    let lora = match &req.lora {
        None => defaults,
        Some(l) => Lora {
            rank: l.rank.unwrap_or(defaults.rank),
            alpha: l.alpha.unwrap_or(defaults.alpha),
            dropout: l.dropout.unwrap_or(defaults.dropout),
            target_modules: if l.target_modules.is_empty() {
                defaults.target_modules
            } else {
                l.target_modules.clone()
            },
        },
    };
    let spec = JobSpec {
        base_model: req.base_model.clone(),
        training_dataset_id: req.training_dataset_id.clone(),
        validation_dataset_id: req.validation_dataset_id.clone().filter(|id| !id.is_empty()),
        method: req.method.clone().unwrap_or(Method {
            kind: MethodKind::Supervised,
            hyperparameters: Default::default(),
            grader: None,
            response_format: None,
        }),
        lora,
        seed: req.seed.unwrap_or_else(|| rand::random::<u32>() as u64 & MAX_SEED),
        suffix: req.suffix.clone(),
        metadata: req.metadata.clone(),
        priority: req.priority,
        early_stopping: req.early_stopping.clone(),
        webhook: req.webhook.clone(),
        checkpoint_eval: req.checkpoint_eval.clone(),
        start_from: None,
        resources: req.resources.clone(),
    };
    let violations = check(&spec);
    (spec, violations)
}

/// The field path of a method's setting, as the request names it.
pub fn method_field(kind: MethodKind, name: &str) -> String {
    format!("method.{}.{name}", kind.as_str())
}

/// OpenAI's `response_format`: `{"type": "json_object"}` or `{"type": "json_schema",
/// "json_schema": {"name": ..., "schema": {...}, "strict": ...}}`.
fn check_response_format(v: &mut Vec<FieldViolation>, f: &serde_json::Value, field: &str) {
    match f.get("type").and_then(|t| t.as_str()) {
        Some("json_object") => {}
        Some("json_schema") => {
            let s = &f["json_schema"];
            if s["name"].as_str().is_none_or(str::is_empty) {
                v.push(FieldViolation::new(
                    format!("{field}.json_schema.name"),
                    "must be a non-empty string",
                ));
            }
            if !s["schema"].is_object() {
                v.push(FieldViolation::new(
                    format!("{field}.json_schema.schema"),
                    "must be a JSON Schema object",
                ));
            }
        }
        Some("text") => v.push(FieldViolation::new(
            format!("{field}.type"),
            "text is the default; leave response_format out",
        )),
        _ => v.push(FieldViolation::new(
            format!("{field}.type"),
            "must be json_schema or json_object",
        )),
    }
}

fn range_i(v: &mut Vec<FieldViolation>, field: String, value: Option<i64>, lo: i64, hi: i64) {
    if let Some(x) = value
        && !(lo..=hi).contains(&x)
    {
        v.push(FieldViolation::new(
            field,
            format!("must be auto or between {lo} and {hi}"),
        ));
    }
}

/// Every range and shape problem of a spec (datasets, models and what
/// the trainer supports are the service's and the trainer's to check).
pub fn check(spec: &JobSpec) -> Vec<FieldViolation> {
    let mut v = Vec::new();
    if spec.base_model.trim().is_empty() {
        v.push(FieldViolation::new("base_model", "a base model is required"));
    }
    if spec.training_dataset_id.is_empty() {
        v.push(FieldViolation::new(
            "training_dataset_id",
            "a training dataset is required",
        ));
    }
    if spec.suffix.chars().count() > 64 {
        v.push(FieldViolation::new("suffix", "at most 64 characters"));
    }
    if spec.suffix.contains(':') {
        v.push(FieldViolation::new(
            "suffix",
            "may not contain ':' (it separates the model id's parts)",
        ));
    }
    if spec.seed > MAX_SEED {
        v.push(FieldViolation::new("seed", format!("must be between 0 and {MAX_SEED}")));
    }
    crate::limits::check_metadata("metadata", &spec.metadata, &mut v);
    let kind = spec.method.kind;
    let h = &spec.method.hyperparameters;
    range_i(&mut v, method_field(kind, "n_epochs"), h.n_epochs, 1, 50);
    range_i(&mut v, method_field(kind, "batch_size"), h.batch_size, 1, 256);
    if let Some(lr) = h.learning_rate_multiplier
        && !(lr.is_finite() && lr > 0.0 && lr <= 100.0)
    {
        v.push(FieldViolation::new(
            method_field(kind, "learning_rate_multiplier"),
            "must be auto or a number in (0, 100]",
        ));
    }
    match kind {
        MethodKind::Dpo => {
            if let Some(beta) = h.beta
                && !(beta > 0.0 && beta <= 2.0)
            {
                v.push(FieldViolation::new(
                    method_field(kind, "beta"),
                    "must be auto or in (0, 2]",
                ));
            }
            if let Some(a) = h.rpo_alpha
                && !(a.is_finite() && (0.0..=10.0).contains(&a))
            {
                v.push(FieldViolation::new(
                    method_field(kind, "rpo_alpha"),
                    "must be auto or in [0, 10] (the weight of the preferred output's NLL; 0 is plain DPO)",
                ));
            }
        }
        MethodKind::Reinforcement => {
            range_i(
                &mut v,
                method_field(kind, "eval_interval"),
                h.eval_interval,
                1,
                i64::MAX,
            );
            range_i(&mut v, method_field(kind, "eval_samples"), h.eval_samples, 1, i64::MAX);
            range_i(
                &mut v,
                method_field(kind, "generations_per_prompt"),
                h.generations_per_prompt,
                2,
                64,
            );
            range_i(
                &mut v,
                method_field(kind, "max_completion_tokens"),
                h.max_completion_tokens,
                1,
                8192,
            );
            if let Some(c) = h.compute_multiplier {
                if !(c.is_finite() && c > 1e-5 && c <= 10.0) {
                    v.push(FieldViolation::new(
                        method_field(kind, "compute_multiplier"),
                        "must be auto or a number in (0.00001, 10]",
                    ));
                } else if h.generations_per_prompt.is_some() {
                    v.push(FieldViolation::new(
                        method_field(kind, "compute_multiplier"),
                        "scales the auto generations_per_prompt; give one of the two, not both",
                    ));
                }
            }
            if let Some(beta) = h.beta
                && !(beta.is_finite() && (0.0..=10.0).contains(&beta))
            {
                v.push(FieldViolation::new(
                    method_field(kind, "beta"),
                    "must be auto or in [0, 10] (the KL coefficient; 0 needs no reference)",
                ));
            }
            if let Some(e) = &h.reasoning_effort
                && !matches!(e.as_str(), "low" | "medium" | "high")
            {
                v.push(FieldViolation::new(
                    method_field(kind, "reasoning_effort"),
                    "must be auto, low, medium or high",
                ));
            }
            let field = method_field(kind, "grader");
            match &spec.method.grader {
                None => v.push(FieldViolation::new(field, "reinforcement fine-tuning needs a grader")),
                Some(g) if !g.is_object() => v.push(FieldViolation::new(field, "must be a grader object")),
                Some(g) if g.get("type").and_then(|t| t.as_str()) == Some("label_model") => {
                    v.push(FieldViolation::new(
                        field,
                        "label_model cannot be the top-level RFT grader; use score_model or wrap it in multi",
                    ))
                }
                _ => {}
            }
            if let Some(f) = &spec.method.response_format {
                check_response_format(&mut v, f, &method_field(kind, "response_format"));
            }
        }
        MethodKind::Supervised => {}
    }
    let l = &spec.lora;
    if !(1..=256).contains(&l.rank) {
        v.push(FieldViolation::new("lora.rank", "must be between 1 and 256"));
    }
    if !(l.alpha.is_finite() && l.alpha > 0.0) {
        v.push(FieldViolation::new("lora.alpha", "must be a positive number"));
    }
    if !(0.0..1.0).contains(&l.dropout) {
        v.push(FieldViolation::new("lora.dropout", "must be in [0, 1)"));
    } else if kind == MethodKind::Dpo && l.dropout > 0.0 {
        v.push(FieldViolation::new(
            "lora.dropout",
            "DPO trains without dropout (as TRL does), so the policy starts exactly at its reference; leave it at 0",
        ));
    } else if kind == MethodKind::Reinforcement && l.dropout > 0.0 {
        v.push(FieldViolation::new(
            "lora.dropout",
            "reinforcement fine-tuning trains without dropout, so the log-probs trained on are those of the \
             policy that sampled; leave it at 0",
        ));
    }
    for (field, value, max) in [
        ("resources.cpus", spec.resources.cpus, MAX_CPUS),
        ("resources.gpus", spec.resources.gpus, MAX_GPUS),
    ] {
        if let Some(x) = value
            && !(x > 0.0 && x <= max)
        {
            v.push(FieldViolation::new(field, format!("must be above 0 and at most {max}")));
        }
    }
    if let Some(es) = &spec.early_stopping
        && es.patience > 0
        && spec.validation_dataset_id.is_none()
    {
        v.push(FieldViolation::new(
            "early_stopping.patience",
            "early stopping watches validation metrics: give a validation dataset",
        ));
    }
    v
}

/// The webhook's URL under the server's policy: its scheme, and a literal
/// address's range (names are checked when the webhook is sent).
pub fn check_webhook(spec: &JobSpec, policy: WebhookPolicy) -> Option<FieldViolation> {
    let hook = spec.webhook.as_ref()?;
    if hook.url.chars().count() > crate::limits::URL_CHARS {
        return Some(FieldViolation::new(
            "webhook.url",
            format!("at most {} characters", crate::limits::URL_CHARS),
        ));
    }
    let why = super::webhook::check_url(&hook.url, policy).err()?;
    Some(FieldViolation::new("webhook.url", why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::model::Hyperparameters;

    fn request() -> CreateJob {
        CreateJob {
            base_model: "m".into(),
            training_dataset_id: "ds_x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_filled_in_here() {
        let (spec, v) = build(&request());
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(spec.lora, Lora::default());
        assert_eq!(spec.method.kind, MethodKind::Supervised);
        assert!(spec.seed <= MAX_SEED);
        let mut req = request();
        req.lora = Some(LoraRequest {
            rank: Some(4),
            ..Default::default()
        });
        req.seed = Some(7);
        let (spec, _) = build(&req);
        assert_eq!((spec.lora.rank, spec.lora.alpha, spec.seed), (4, 16.0, 7));
    }

    #[test]
    fn each_problem_once_under_its_wire_path() {
        let mut req = request();
        req.training_dataset_id.clear();
        req.lora = Some(LoraRequest {
            rank: Some(0),
            ..Default::default()
        });
        req.method = Some(Method {
            kind: MethodKind::Supervised,
            hyperparameters: Hyperparameters {
                n_epochs: Some(0),
                batch_size: Some(1000),
                ..Default::default()
            },
            grader: None,
            response_format: None,
        });
        let (_, v) = build(&req);
        let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "training_dataset_id",
                "method.supervised.n_epochs",
                "method.supervised.batch_size",
                "lora.rank"
            ]
        );
    }

    #[test]
    fn resources_are_above_zero_and_bounded() {
        let mut req = request();
        req.resources = Resources {
            cpus: Some(0.5),
            gpus: Some(0.25),
        };
        let (spec, v) = build(&req);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(spec.resources.gpus, Some(0.25), "kept in the spec");
        for (cpus, gpus) in [(-1.0, f64::NAN), (MAX_CPUS + 1.0, MAX_GPUS + 1.0)] {
            req.resources = Resources {
                cpus: Some(cpus),
                gpus: Some(gpus),
            };
            let (_, v) = build(&req);
            let fields: Vec<&str> = v.iter().map(|f| f.field.as_str()).collect();
            assert_eq!(fields, ["resources.cpus", "resources.gpus"]);
        }
    }
}
