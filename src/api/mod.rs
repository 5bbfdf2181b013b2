//! The gRPC layer: thin handlers that validate the wire shape, convert to a
//! domain call, and convert the answer back.
//!
//! Architecture invariant: nothing below this module sees a tonic or prost
//! type; errors cross back through the one `From<Error> for Status`.

// Plain data and orchestration: nothing here needs unsafe, so nothing may use it.
#![forbid(unsafe_code)]

mod admin;
pub mod convert;
mod datasets;
mod evals;
mod graders;
mod jobs;
mod models;

pub use self::admin::{AdminApi, caller};
pub use self::datasets::DatasetApi;
pub use self::evals::EvalApi;
pub use self::graders::GraderApi;
pub use self::jobs::FineTuningApi;
pub use self::models::ModelApi;
