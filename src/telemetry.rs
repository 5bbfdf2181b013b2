//! Prometheus metrics: the names and labels of what the server counts and
//! measures, the process's recorder, and the text `GET /metrics` answers.
//!
//! Every part records through the functions here (the lease machine, the
//! jobs scheduler, the Ray executor, the eval runner, the grader engine, the
//! gate), so each
//! name and its labels are written once. The recorder is the `metrics`
//! facade's global one (`metrics-exporter-prometheus`, without a listener
//! of its own: the server's route renders it), installed once per process
//! by the first server that starts; what is recorded before that, or in a
//! process that never serves (the CLI), goes nowhere. Queue depth is not
//! recorded: each scrape counts the store's rows.
//!
//! Architecture invariant: a label's values come from small fixed sets
//! (kinds of work, states, training methods, grader types and error flags,
//! the gRPC methods the server serves, REST route templates, status codes).
//! An id, a path with an id in it, a model, project or file name never
//! becomes a label: each value would be a new series, kept for good.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use prost::Message;

use crate::evals::model::RunState;
use crate::jobs::model::JobState;
use crate::store::{LeaseKind, LeaseStore};

/// Calls answered, by `door` (grpc, rest), `route` and `status`.
pub const REQUESTS: &str = "lathe_requests_total";
/// Seconds from a call's arrival to the end of its answer (a stream's last
/// message), by the same labels as [`REQUESTS`].
pub const REQUEST_SECONDS: &str = "lathe_request_duration_seconds";
/// Rows of leased work by `kind` (job, eval_run) and `state`, counted in the
/// store at each scrape.
pub const QUEUE_DEPTH: &str = "lathe_queue_depth";
/// Lease changes this process made, by `kind`.
pub const LEASES_CLAIMED: &str = "lathe_leases_claimed_total";
pub const LEASES_RENEWED: &str = "lathe_leases_renewed_total";
pub const LEASES_EXPIRED: &str = "lathe_leases_expired_total";
pub const LEASES_RELEASED: &str = "lathe_leases_released_total";
/// Training steps and the tokens they trained on, by `method`.
pub const TRAINING_STEPS: &str = "lathe_training_steps_total";
pub const TRAINING_TOKENS: &str = "lathe_training_tokens_total";
/// The last step's throughput, by `method`.
pub const TRAINING_TOKENS_PER_SECOND: &str = "lathe_training_tokens_per_second";
/// Eval items recorded, by `status` (pass, fail, error).
pub const EVAL_ITEMS: &str = "lathe_eval_items_total";
/// Seconds an eval item took: sampling (unless precomputed) and grading.
pub const EVAL_ITEM_SECONDS: &str = "lathe_eval_item_duration_seconds";
/// Seconds one grade took, by `grader` type.
pub const GRADER_SECONDS: &str = "lathe_grader_duration_seconds";
/// Grades with an error flag set, by `grader` type and `error` (the flag).
pub const GRADER_ERRORS: &str = "lathe_grader_errors_total";

/// 1 while a dependency (database, object_store, ray) answers this
/// process's health checks, 0 while it does not, by `dependency`.
pub const DEPENDENCY_UP: &str = "lathe_dependency_up";
/// 1 while the Ray cluster's Jobs API answers this process, 0 while it
/// cannot be reached (a process that dispatches jobs to Ray only).
pub const RAY_REACHABLE: &str = "lathe_ray_reachable";
/// Ray jobs this process submitted, adopted (found submitted earlier),
/// stopped, saw fail, and had refused, by `event`.
pub const RAY_JOBS: &str = "lathe_ray_jobs_total";

/// Histogram buckets in seconds: a string_check's microseconds to a
/// stream's minutes.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
];

/// How often recorded histogram samples are folded into their buckets
/// between scrapes (they wait in memory until then).
const UPKEEP: Duration = Duration::from_secs(5);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs this process's recorder the first time (every server in a
/// process shares it, so counters are the process's) and returns its handle.
pub fn install() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed in this process; /metrics shows queue depth only");
        }
        describe();
        let upkeep = handle.clone();
        let started = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no metrics upkeep thread: histogram samples wait for the next scrape");
        }
        handle
    })
}

fn describe() {
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Calls answered, by door (grpc, rest), route (gRPC method or REST route template) and status"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        Unit::Seconds,
        "Seconds from a call's arrival to the end of its answer"
    );
    describe_counter!(
        LEASES_CLAIMED,
        Unit::Count,
        "Leases this process claimed, by kind of work"
    );
    describe_counter!(
        LEASES_RENEWED,
        Unit::Count,
        "Leases this process renewed, by kind of work"
    );
    describe_counter!(
        LEASES_EXPIRED,
        Unit::Count,
        "Items whose worker's lease expired, re-queued by this process, by kind of work"
    );
    describe_counter!(
        LEASES_RELEASED,
        Unit::Count,
        "Unfinished items this process gave back to the queue at shutdown, by kind of work"
    );
    describe_counter!(TRAINING_STEPS, Unit::Count, "Training steps taken, by method");
    describe_counter!(TRAINING_TOKENS, Unit::Count, "Tokens trained on, by method");
    describe_gauge!(
        TRAINING_TOKENS_PER_SECOND,
        "Tokens per second of the last training step reported, by method"
    );
    describe_counter!(EVAL_ITEMS, Unit::Count, "Eval items recorded, by status");
    describe_histogram!(
        EVAL_ITEM_SECONDS,
        Unit::Seconds,
        "Seconds an eval item took to sample and grade"
    );
    describe_histogram!(GRADER_SECONDS, Unit::Seconds, "Seconds one grade took, by grader type");
    describe_counter!(
        GRADER_ERRORS,
        Unit::Count,
        "Grades with an error flag set, by grader type and flag"
    );
    describe_gauge!(
        DEPENDENCY_UP,
        "1 while a dependency answers this process's health checks, 0 while it does not, by dependency"
    );
    describe_gauge!(
        RAY_REACHABLE,
        "1 while the Ray cluster's Jobs API answers, 0 while it cannot be reached"
    );
    describe_counter!(
        RAY_JOBS,
        Unit::Count,
        "Ray jobs submitted, adopted, stopped, failed or refused, by event"
    );
}

/// Rows of leased work by state, for each kind counted.
pub type QueueDepth = Vec<(LeaseKind, BTreeMap<String, u64>)>;

/// What a scrape of `/metrics` reads: the process's metrics, and the queue
/// depth counted in the store at that moment.
#[derive(Clone)]
pub struct Scrape {
    leases: Arc<dyn LeaseStore>,
}

impl Scrape {
    pub fn new(leases: Arc<dyn LeaseStore>) -> Self {
        Scrape { leases }
    }

    /// The scrape's text (Prometheus' text format).
    pub async fn render(&self) -> String {
        let mut queues = QueueDepth::new();
        for kind in LeaseKind::ALL {
            match self.leases.count_by_state(kind).await {
                Ok(counts) => queues.push((kind, counts)),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: could not count the queues; scraped without queue depth");
                    return render(None);
                }
            }
        }
        render(Some(&queues))
    }
}

/// The text of one scrape: every metric recorded in this process, then the
/// queue depth counted for it (every state a kind has, zero where no row is
/// in it); without a count (the store failed), no queue depth at all rather
/// than an old one.
pub fn render(queues: Option<&QueueDepth>) -> String {
    let mut text = install().render();
    if let Some(queues) = queues {
        text.push_str(&render_queues(queues));
    }
    text
}

/// Queue depth through a recorder of its own, made for this scrape: the
/// gauges hold this count and nothing older, and servers sharing a process
/// never see each other's.
fn render_queues(queues: &QueueDepth) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        describe_gauge!(QUEUE_DEPTH, Unit::Count, "Rows of leased work by kind and state");
        for (kind, counts) in queues {
            let known = states(*kind);
            for state in known {
                let n = counts.get(*state).copied().unwrap_or(0);
                gauge!(QUEUE_DEPTH, "kind" => kind.name(), "state" => *state).set(n as f64);
            }
            // A state this build does not know (a newer replica's) still counts.
            for (state, n) in counts.iter().filter(|(s, _)| !known.contains(&s.as_str())) {
                gauge!(QUEUE_DEPTH, "kind" => kind.name(), "state" => state.clone()).set(*n as f64);
            }
        }
    });
    handle.render()
}

fn states(kind: LeaseKind) -> &'static [&'static str] {
    static JOB: OnceLock<Vec<&'static str>> = OnceLock::new();
    static RUN: OnceLock<Vec<&'static str>> = OnceLock::new();
    match kind {
        LeaseKind::Job => JOB.get_or_init(|| JobState::ALL.iter().map(|s| s.as_str()).collect()),
        LeaseKind::EvalRun | LeaseKind::Optimization => {
            RUN.get_or_init(|| RunState::ALL.iter().map(|s| s.as_str()).collect())
        }
    }
}

// The lease machine.

pub fn lease_claimed(kind: LeaseKind) {
    counter!(LEASES_CLAIMED, "kind" => kind.name()).increment(1);
}

pub fn lease_renewed(kind: LeaseKind) {
    counter!(LEASES_RENEWED, "kind" => kind.name()).increment(1);
}

pub fn lease_expired(kind: LeaseKind) {
    counter!(LEASES_EXPIRED, "kind" => kind.name()).increment(1);
}

pub fn lease_released(kind: LeaseKind) {
    counter!(LEASES_RELEASED, "kind" => kind.name()).increment(1);
}

// Dispatching to Ray (`jobs::ray`).

/// Whether the Ray cluster answered the last call.
/// What the last health check of `dependency` found.
pub fn dependency_up(dependency: crate::error::Dependency, up: bool) {
    gauge!(DEPENDENCY_UP, "dependency" => dependency.name()).set(if up { 1.0 } else { 0.0 });
}

pub fn ray_reachable(up: bool) {
    gauge!(RAY_REACHABLE).set(if up { 1.0 } else { 0.0 });
}

/// Something that happened to one of this process's Ray jobs: `submitted`,
/// `adopted`, `stopped`, `failed` or `refused`.
pub fn ray_job(event: &'static str) {
    counter!(RAY_JOBS, "event" => event).increment(1);
}

// Training, evals and graders.

/// A training step a trainer reported: `tokens` it trained on, if it said.
pub fn training_step(method: &'static str, tokens: Option<u64>, tokens_per_second: Option<f64>) {
    counter!(TRAINING_STEPS, "method" => method).increment(1);
    if let Some(tokens) = tokens {
        counter!(TRAINING_TOKENS, "method" => method).increment(tokens);
    }
    if let Some(rate) = tokens_per_second.filter(|r| r.is_finite()) {
        gauge!(TRAINING_TOKENS_PER_SECOND, "method" => method).set(rate);
    }
}

/// An eval item that took `took` to sample and grade.
pub fn eval_item_done(took: Duration) {
    histogram!(EVAL_ITEM_SECONDS).record(took.as_secs_f64());
}

/// Eval items recorded in the store, by status.
pub fn eval_item_recorded(status: &'static str) {
    counter!(EVAL_ITEMS, "status" => status).increment(1);
}

/// One grade of a `grader` type, with the error flags it set.
pub fn graded(grader: &'static str, took: Duration, errors: &[&'static str]) {
    histogram!(GRADER_SECONDS, "grader" => grader).record(took.as_secs_f64());
    for error in errors {
        counter!(GRADER_ERRORS, "grader" => grader, "error" => *error).increment(1);
    }
}

// Requests (the gate).

/// The route template that served a REST call (never the path with its
/// ids), which the REST door puts in its answer's extensions for the gate.
#[derive(Clone, Debug)]
pub struct Route(pub String);

/// A call's route label for the gRPC door: its method's path when the
/// server serves that method, otherwise `unknown` (a client may send any
/// path; a label may only take the server's own).
pub fn grpc_route(path: &str) -> &'static str {
    static METHODS: OnceLock<HashSet<String>> = OnceLock::new();
    let methods = METHODS.get_or_init(|| {
        [
            crate::proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]
        .into_iter()
        .filter_map(|set| prost_types::FileDescriptorSet::decode(set).ok())
        .flat_map(|set| set.file)
        .flat_map(|file| {
            let package = file.package().to_string();
            file.service.into_iter().flat_map(move |service| {
                let prefix = match package.as_str() {
                    "" => service.name().to_string(),
                    package => format!("{package}.{}", service.name()),
                };
                service
                    .method
                    .into_iter()
                    .map(move |method| format!("/{prefix}/{}", method.name()))
            })
        })
        .collect()
    });
    methods.get(path).map_or("unknown", String::as_str)
}

/// A call answered: `route` and `status` as [`REQUESTS`] labels them.
pub fn request_done(door: &'static str, route: String, status: String, took: Duration) {
    let labels = [("door", door.to_string()), ("route", route), ("status", status)];
    histogram!(REQUEST_SECONDS, &labels).record(took.as_secs_f64());
    counter!(REQUESTS, &labels).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_routes_are_the_served_methods_and_nothing_else() {
        assert_eq!(
            grpc_route("/lathe.v1.FineTuningService/CreateJob"),
            "/lathe.v1.FineTuningService/CreateJob"
        );
        assert_eq!(
            grpc_route("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(
            grpc_route("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(grpc_route("/lathe.v1.FineTuningService/job_0123"), "unknown");
        assert_eq!(grpc_route("/anything/else"), "unknown");
        assert_eq!(grpc_route("/metrics"), "unknown");
    }

    #[test]
    fn queue_depth_lists_every_state_of_each_kind_and_only_this_count() {
        let queues: QueueDepth = vec![
            (
                LeaseKind::Job,
                BTreeMap::from([("queued".to_string(), 3), ("running".to_string(), 1)]),
            ),
            (LeaseKind::EvalRun, BTreeMap::from([("someday".to_string(), 2)])),
        ];
        let text = render_queues(&queues);
        assert!(text.contains("# TYPE lathe_queue_depth gauge"), "{text}");
        for line in [
            r#"lathe_queue_depth{kind="job",state="queued"} 3"#,
            r#"lathe_queue_depth{kind="job",state="running"} 1"#,
            r#"lathe_queue_depth{kind="job",state="paused"} 0"#,
            r#"lathe_queue_depth{kind="eval_run",state="in_progress"} 0"#,
            r#"lathe_queue_depth{kind="eval_run",state="someday"} 2"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        let rows = text.lines().filter(|l| l.starts_with("lathe_queue_depth{")).count();
        assert_eq!(rows, JobState::ALL.len() + RunState::ALL.len() + 1);
        // The next scrape's count replaces this one entirely.
        let later = render_queues(&vec![(LeaseKind::Job, BTreeMap::new())]);
        assert!(
            !later.contains("eval_run") && later.contains(r#"state="queued"} 0"#),
            "{later}"
        );
    }
}
