//! The OpenAI-compatible REST door: OpenAI's routes under `/v1`, on the
//! gRPC port, over the same services as the gRPC door. Users' `openai`
//! SDK code works with `base_url` pointed here.
//!
//! A handler reads the request (`Json`, `Query`, `Path` here answer a body
//! that does not fit with OpenAI's error object), converts it into a domain
//! call with the `Caller` the gate found (`Authed`), awaits it, and converts
//! the answer to OpenAI's shape (`wire`).
//!
//! Architecture invariant: nothing here decides anything a service
//! decides (defaults, ranges, visibility); errors cross back through the one
//! `From<Error> for ApiError`. Nothing below this module sees axum or HTTP.
//! The OpenAPI document (`/v1/openapi.json`) is generated from the handlers'
//! `#[utoipa::path]` and the wire types' schemas.

// Plain data and orchestration: nothing here needs unsafe, so nothing may use it.
#![forbid(unsafe_code)]

mod chat;
mod error;
mod evals;
mod files;
mod graders;
mod jobs;
mod kit;
mod models;
mod stored;
mod synth;
mod wire;

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use self::error::{ApiError, ErrorBody, ErrorObject};
pub use self::kit::Rest;

/// The path prefix this door serves; the gate sends refusals on it back as
/// OpenAI's error object.
pub const PREFIX: &str = "/v1/";

/// Whether `path` is the REST door's.
pub fn serves(path: &str) -> bool {
    path.starts_with(PREFIX)
}

/// An error answered before a handler ran (the gate's refusals).
pub fn error_response(error: crate::error::Error) -> Response {
    ApiError::from(error).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Lathe: OpenAI-compatible REST API",
        description = "Files, fine-tuning, graders, evals, chat completions and models, as OpenAI's \
                       `openai` SDK calls them, and Lathe's own routes under /v1/lathe/ (datasets \
                       made from what models answered). Every call takes `Authorization: Bearer <API key>`."
    ),
    components(schemas(ErrorBody, ErrorObject)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// Every route and its OpenAPI document.
fn routes() -> OpenApiRouter<Rest> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(models::routes())
        .merge(files::routes())
        .merge(jobs::routes())
        .merge(graders::routes())
        .merge(evals::routes())
        .merge(chat::routes())
        .merge(synth::routes())
}

/// The OpenAPI document of what this door serves.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut api = routes().into_openapi();
    describe_responses(&mut api);
    api
}

/// OpenAPI requires a description on every response; an annotation that
/// gives none gets its status's reason phrase ("Bad Request").
fn describe_responses(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            for (status, response) in operation.responses.responses.iter_mut() {
                if let RefOr::T(response) = response
                    && response.description.is_empty()
                {
                    response.description = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|code| http::StatusCode::from_u16(code).ok())
                        .and_then(|code| code.canonical_reason())
                        .unwrap_or("Response")
                        .to_string();
                }
            }
        }
    }
}

/// The door as an axum router, ready to merge with the gRPC routes.
pub fn router(rest: Rest) -> axum::Router {
    let (router, mut api) = routes().split_for_parts();
    describe_responses(&mut api);
    let api = Arc::new(api);
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let api = api.clone();
                async move { axum::Json(api.as_ref().clone()) }
            }),
        )
        .route("/v1/{*rest}", axum::routing::any(no_route))
        .route_layer(axum::middleware::from_fn(name_route))
        .method_not_allowed_fallback(no_route)
        // JSON bodies (an eval's inline items, a long chat) up to 32 MiB;
        // file routes lift this and stream instead.
        .layer(axum::extract::DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .with_state(rest)
}

/// Names the route that served a call in its answer, by its template
/// (`/v1/files/{file_id}`, never the path with the id), for the gate's
/// request metrics.
async fn name_route(
    route: axum::extract::MatchedPath,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    response
        .extensions_mut()
        .insert(crate::telemetry::Route(route.as_str().to_string()));
    response
}

/// The largest JSON body a route reads whole.
pub const JSON_BODY_LIMIT: usize = 32 << 20;

/// The 404 for a `/v1/` path no route serves, and for the gRPC door's
/// fallback to use on such paths.
pub async fn no_route(method: http::Method, uri: http::Uri) -> Response {
    ApiError::no_route(&method, uri.path()).into_response()
}
