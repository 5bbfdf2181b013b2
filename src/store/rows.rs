//! Row <-> record mapping shared by the SQL backends. Nested values are
//! stored as JSON text so every backend keeps the same columns.

use std::str::FromStr;

use sqlx::{ColumnIndex, Decode, Row, Type};

use super::StoreError;
use crate::datasets::model::{DatasetRecord, DatasetState};
use crate::datasets::report::Purpose;

pub fn to_json<T: serde::Serialize>(value: &T) -> String {
    // Our own plain data types always serialize.
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}

fn from_json<T: serde::de::DeserializeOwned>(id: &str, column: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt {
        id: id.to_string(),
        reason: format!("column {column}: {e}"),
    })
}

pub fn dataset_from_row<'r, R>(row: &'r R) -> Result<DatasetRecord, StoreError>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let id: String = row.try_get("id")?;
    let purpose: String = row.try_get("purpose")?;
    let state: String = row.try_get("state")?;
    let lineage: Option<String> = row.try_get("lineage")?;
    let bytes: i64 = row.try_get("bytes")?;
    let metadata: String = row.try_get("metadata")?;
    let report: String = row.try_get("report")?;
    let stats: String = row.try_get("stats")?;
    Ok(DatasetRecord {
        filename: row.try_get("filename")?,
        display_name: row.try_get("display_name")?,
        purpose: Purpose::from_str(&purpose).map_err(|_| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown purpose {purpose:?}"),
        })?,
        state: DatasetState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("unknown state {state:?}"),
        })?,
        bytes: bytes as u64,
        sha256: row.try_get("sha256")?,
        created_at: row.try_get("created_at")?,
        metadata: from_json(&id, "metadata", &metadata)?,
        report: from_json(&id, "report", &report)?,
        stats: from_json(&id, "stats", &stats)?,
        lineage: match lineage {
            Some(text) => Some(from_json(&id, "lineage", &text)?),
            None => None,
        },
        id,
    })
}
