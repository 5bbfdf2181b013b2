//! The gRPC layer: thin handlers that validate the wire shape, convert to a
//! domain call, and convert the answer back.
//!
//! Architecture invariant: nothing below this module sees a tonic or prost
//! type; errors cross back through the one `From<Error> for Status`.

pub mod convert;
mod datasets;
mod evals;
mod graders;
mod jobs;

pub use self::datasets::DatasetApi;
pub use self::evals::EvalApi;
pub use self::graders::GraderApi;
pub use self::jobs::{FineTuningApi, ModelApi};
