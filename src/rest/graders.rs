//! Routes of this resource (being built).

use utoipa_axum::router::OpenApiRouter;

use super::kit::Rest;

pub fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::new()
}
