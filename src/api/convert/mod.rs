//! Domain <-> wire conversions, in one place, one file per resource.
//!
//! Architecture invariant: conversions only convert. Defaults, ranges
//! and every other rule belong to the services, which a REST front door
//! calls the same way.

mod admin;
mod datasets;
mod evals;
mod graders;
mod jobs;
mod models;

pub use admin::*;
pub use datasets::*;
pub use evals::*;
pub use graders::*;
pub use jobs::*;
pub use models::*;
