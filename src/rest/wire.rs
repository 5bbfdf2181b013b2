//! Shapes every resource shares: OpenAI's list page, its query, the
//! deletion answer, and timestamps in Unix seconds.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET` list query: `after` (the last id of the previous page) and
/// `limit` (1 to 100, default 20), as every OpenAI list takes them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// The id of the last object of the previous page.
    pub after: Option<String>,
    /// 1 to 100; 20 when absent.
    pub limit: Option<i64>,
}

impl PageQuery {
    /// The page size as the services take it (they refuse out-of-range
    /// sizes with a violation on `page_size`, renamed here to `limit`).
    pub fn page_size(&self) -> Result<i32, super::error::ApiError> {
        match self.limit {
            None => Ok(20),
            Some(n @ 1..=100) => Ok(n as i32),
            Some(_) => Err(super::error::ApiError::invalid("limit", "must be between 1 and 100")),
        }
    }
}

/// A list's `order` query: true for `asc` (oldest first), false for
/// `desc`; `default_ascending` when absent (each list keeps OpenAI's own
/// default).
pub fn ascending(order: Option<&str>, default_ascending: bool) -> Result<bool, super::error::ApiError> {
    match order {
        None => Ok(default_ascending),
        Some("asc") => Ok(true),
        Some("desc") => Ok(false),
        Some(other) => Err(super::error::ApiError::invalid(
            "order",
            format!("must be asc or desc, not {other:?}"),
        )),
    }
}

/// OpenAI's list page. `has_more` is always present: the SDK pages on
/// with `after=last_id` until it is false.
#[derive(Debug, Serialize, ToSchema)]
pub struct List<T> {
    /// Always `list`.
    #[schema(inline = false)]
    pub object: &'static str,
    pub data: Vec<T>,
    pub has_more: bool,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
}

/// Objects that have an id a page can start after.
pub trait HasId {
    fn id(&self) -> &str;
}

impl<T: HasId> List<T> {
    pub fn new(data: Vec<T>, has_more: bool) -> Self {
        List {
            object: "list",
            first_id: data.first().map(|d| d.id().to_string()),
            last_id: data.last().map(|d| d.id().to_string()),
            data,
            has_more,
        }
    }
}

/// `{id, object, deleted: true}`, the answer to every delete.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub id: String,
    pub object: &'static str,
    pub deleted: bool,
}

impl Deleted {
    pub fn new(id: String, object: &'static str) -> Self {
        Deleted {
            id,
            object,
            deleted: true,
        }
    }
}

/// A list's `order` query as the services take it: oldest first unless
/// `desc` (the lists that use it default to `asc`, as OpenAI's do).
pub fn order(order: Option<&str>) -> Result<crate::evals::model::Order, super::error::ApiError> {
    use crate::evals::model::Order;
    Ok(if ascending(order, true)? {
        Order::Ascending
    } else {
        Order::Descending
    })
}

/// Records keep Unix milliseconds; OpenAI's objects carry seconds.
pub fn seconds(millis: i64) -> i64 {
    millis.div_euclid(1000)
}

/// Tokens of a chat completion (OpenAI's `usage`).
#[derive(Debug, Default, Clone, Copy, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}
