//! The REST door's one error mapping: a domain `Error` (or a body the
//! door could not read) becomes OpenAI's error object with the HTTP status
//! the `openai` SDK turns into the matching exception (`BadRequestError`,
//! `NotFoundError`, `RateLimitError`, ...).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{Error, INTERNAL};
use crate::store::StoreError;

/// An error as the REST door answers it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorObject,
    /// Sent as `retry-after` (seconds) and `retry-after-ms`, which the SDK honours.
    pub retry_after: Option<Duration>,
}

/// OpenAI's error body: `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorObject,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorObject {
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request field at fault, where there is one.
    pub param: Option<String>,
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorObject {
                message: message.into(),
                kind: kind.into(),
                param: None,
                code: None,
            },
            retry_after: None,
        }
    }

    /// A 400 about one field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Error::invalid(param, message).into()
    }

    /// A 404 for a path no route serves.
    pub fn no_route(method: &http::Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Lathe serves no {method} {path}; see /v1/openapi.json for what it serves"),
        )
        .code("unknown_url")
    }

    pub fn code(mut self, code: &str) -> Self {
        self.body.code = Some(code.into());
        self
    }

    fn param(mut self, param: impl Into<String>) -> Self {
        self.body.param = Some(param.into());
        self
    }
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        use StatusCode as S;
        let message = err.to_string();
        let invalid = |status| ApiError::new(status, "invalid_request_error", message.clone());
        match err {
            Error::InvalidArgument(violations) => {
                let error = invalid(S::BAD_REQUEST).code("invalid_value");
                match violations.into_iter().next() {
                    Some(first) => error.param(first.field),
                    None => error,
                }
            }
            Error::NotFound { .. } => invalid(S::NOT_FOUND).code("not_found"),
            // OpenAI answers 400 for a request the record's state refuses
            // (cancelling a finished job); 409 would make the SDK retry it.
            Error::FailedPrecondition { .. } => invalid(S::BAD_REQUEST).code("invalid_state"),
            Error::ResourceExhausted(_) => invalid(S::PAYLOAD_TOO_LARGE).code("limit_exceeded"),
            Error::Overloaded { retry_after, .. } => ApiError {
                retry_after: Some(retry_after),
                ..ApiError::new(S::TOO_MANY_REQUESTS, "rate_limit_error", message).code("rate_limit_exceeded")
            },
            Error::Store(StoreError::OverQuota { .. }) => {
                ApiError::new(S::TOO_MANY_REQUESTS, "rate_limit_error", message).code("quota_exceeded")
            }
            Error::Store(StoreError::Conflict(_)) => invalid(S::CONFLICT).code("conflict"),
            Error::Cancelled(_) => invalid(S::REQUEST_TIMEOUT).code("cancelled"),
            Error::Unavailable(_) => ApiError::new(S::SERVICE_UNAVAILABLE, "server_error", message),
            Error::Unauthenticated(_) => {
                ApiError::new(S::UNAUTHORIZED, "authentication_error", message).code("invalid_api_key")
            }
            Error::PermissionDenied(_) => {
                ApiError::new(S::FORBIDDEN, "permission_error", message).code("permission_denied")
            }
            Error::Store(_) | Error::Blob(_) | Error::Internal(_) => {
                // Internal causes are logged here, once, and not leaked.
                tracing::error!(error = %message, "internal error");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "server_error", INTERNAL)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(ErrorBody { error: self.body })).into_response();
        if let Some(after) = self.retry_after {
            let headers = response.headers_mut();
            // Whole seconds, rounded up, for clients that read only this one.
            let secs = after.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(http::header::RETRY_AFTER, v);
            }
            if let Ok(v) = HeaderValue::from_str(&after.as_millis().to_string()) {
                headers.insert("retry-after-ms", v);
            }
        }
        response
    }
}

/// A body that is not the JSON the route takes: 400, with the field at
/// fault as `param` when the body parsed but a value did not fit (a wrong
/// type, an unknown field), 415 for a wrong content type.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match &rejection {
            JsonRejection::JsonDataError(e) => {
                // axum reads bodies through serde_path_to_error: a source
                // (behind axum's own error) names the path to the value that
                // did not fit.
                let path = std::iter::successors(std::error::Error::source(e), |s| s.source())
                    .find_map(|s| s.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>())
                    .map(|e| (e.path().to_string(), e.inner().to_string()));
                match path {
                    // The message names the path once (the violation's
                    // display puts it first).
                    Some((path, inner)) if path != "." && inner.starts_with("unknown field") => {
                        ApiError::invalid(path, inner).code("unknown_parameter")
                    }
                    Some((path, inner)) if path != "." => ApiError::invalid(path, inner),
                    Some((_, inner)) => unknown_field(&inner),
                    None => ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", rejection.body_text()),
                }
            }
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request_error",
                "expected a JSON body with content-type: application/json",
            )
            .code("unsupported_media_type"),
            _ => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!("the body is not valid JSON: {}", rejection.body_text()),
            )
            .code("invalid_json"),
        }
    }
}

/// serde names an unknown top-level field only in its message
/// ("unknown field `foo`, expected one of ..."): make it the `param`.
fn unknown_field(message: &str) -> ApiError {
    let field = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_string);
    let mut error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message.to_string());
    if let Some(field) = field {
        error = error.param(field).code("unknown_parameter");
    } else if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        error = error.param(field).code("missing_required_parameter");
    }
    error
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let param = text
            .split("unknown field `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string);
        let error = ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", text).code("invalid_query");
        match param {
            Some(p) => error.param(p),
            None => error,
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_openai_statuses() {
        let e = ApiError::from(Error::invalid("training_file", "no such file"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.body.param.as_deref(), Some("training_file"));
        assert_eq!(
            ApiError::from(Error::not_found("file", "f")).status,
            StatusCode::NOT_FOUND
        );
        let e = ApiError::from(Error::Overloaded {
            message: "full".into(),
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        let response = e.into_response();
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1500");
        let e = ApiError::from(Error::Internal("disk on fire at /secret".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.body.message.contains("/secret"));
        assert_eq!(
            ApiError::from(Error::Unauthenticated("no".into())).status,
            StatusCode::UNAUTHORIZED
        );
    }

    /// Through axum's own `Json` rejection, as handlers see it.
    #[test]
    fn bodies_that_do_not_fit_name_the_field() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            model: String,
            temperature: Option<f64>,
            inner: Option<Inner>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            on: Option<bool>,
        }
        let param = |body: &str| {
            let rejection = axum::Json::<Body>::from_bytes(body.as_bytes()).unwrap_err();
            let e = ApiError::from(rejection);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            e.body.param
        };
        assert_eq!(
            param(r#"{"model": "m", "temperatur": 1}"#).as_deref(),
            Some("temperatur")
        );
        assert_eq!(
            param(r#"{"model": "m", "temperature": "hot"}"#).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            param(r#"{"model": "m", "inner": {"of": 1}}"#).as_deref(),
            Some("inner.of")
        );
        assert_eq!(param(r#"{"temperature": 1}"#).as_deref(), Some("model"));
        let unknown =
            ApiError::from(axum::Json::<Body>::from_bytes(br#"{"model": "m", "temperatur": 1}"#).unwrap_err());
        assert_eq!(unknown.body.code.as_deref(), Some("unknown_parameter"));
        assert!(
            unknown
                .body
                .message
                .starts_with("invalid argument: temperatur: unknown field"),
            "{}",
            unknown.body.message
        );
    }

    #[test]
    fn unknown_and_missing_fields_become_params() {
        let e = unknown_field("unknown field `suffixx`, expected one of `model`, `suffix`");
        assert_eq!(e.body.param.as_deref(), Some("suffixx"));
        let e = unknown_field("missing field `model`");
        assert_eq!(e.body.param.as_deref(), Some("model"));
    }
}
