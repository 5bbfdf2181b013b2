//! Pagination shared by every List RPC: page sizes, opaque cursor tokens,
//! and cutting a one-longer fetch into a page and its next token.

use crate::error::{Error, Result};
use crate::store::Cursor;

/// A request's page size: 0 means 20, at most 1000.
pub fn limit(page_size: i32) -> Result<usize> {
    match page_size {
        0 => Ok(20),
        1..=1000 => Ok(page_size as usize),
        _ => Err(Error::invalid("page_size", "must be between 0 (default 20) and 1000")),
    }
}

/// Takes rows fetched with `limit + 1` and returns the page and the token
/// for the next one (empty on the last page), made from the page's last row.
pub fn split<T>(mut rows: Vec<T>, limit: usize, token: impl Fn(&T) -> String) -> (Vec<T>, String) {
    if rows.len() <= limit {
        return (rows, String::new());
    }
    rows.truncate(limit);
    let next = rows.last().map(token).unwrap_or_default();
    (rows, next)
}

/// Takes rows fetched with `limit + 1` and returns the page and whether
/// more rows follow it (for doors that page by the last record's id).
pub fn cut<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

/// A newest-first position as an opaque token: `prefix` names the listing
/// so a token from one RPC is refused by another.
pub fn encode_cursor(prefix: &str, created_at: i64, id: &str) -> String {
    format!("{prefix}{}", hex::encode(format!("{created_at}:{id}")))
}

/// The cursor in a token from `encode_cursor(prefix, ..)`; empty is None.
/// `rpc` names the listing in the error.
pub fn decode_cursor(prefix: &str, token: &str, rpc: &str) -> Result<Option<Cursor>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", format!("not a page token from a previous {rpc} response"));
    let raw = token.strip_prefix(prefix).ok_or_else(bad)?;
    let text = String::from_utf8(hex::decode(raw).map_err(|_| bad())?).map_err(|_| bad())?;
    let (ts, id) = text.split_once(':').ok_or_else(bad)?;
    Ok(Some(Cursor {
        created_at: ts.parse().map_err(|_| bad())?,
        id: id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_roundtrip_and_reject_garbage_and_foreign_tokens() {
        let t = encode_cursor("dsp1.", 1_700_000_000_123, "ds_00000000000000000000000001");
        assert_eq!(
            decode_cursor("dsp1.", &t, "ListDatasets").unwrap(),
            Some(Cursor {
                created_at: 1_700_000_000_123,
                id: "ds_00000000000000000000000001".into()
            })
        );
        assert!(decode_cursor("dsp1.", "garbage", "ListDatasets").is_err());
        assert!(decode_cursor("dsp1.", "dsp1.zz", "ListDatasets").is_err());
        assert!(
            decode_cursor("jp1.", &t, "ListJobs").is_err(),
            "another listing's token"
        );
        assert_eq!(decode_cursor("dsp1.", "", "ListDatasets").unwrap(), None);
    }

    #[test]
    fn split_gives_a_token_only_when_more_rows_exist() {
        assert_eq!(split(vec![1, 2], 2, |x| x.to_string()), (vec![1, 2], String::new()));
        assert_eq!(
            split(vec![1, 2, 3], 2, |x| x.to_string()),
            (vec![1, 2], "2".to_string())
        );
        assert_eq!(cut(vec![1, 2, 3], 2), (vec![1, 2], true));
        assert_eq!(cut(vec![1, 2], 2), (vec![1, 2], false));
        assert!(limit(0).is_ok() && limit(1000).is_ok() && limit(1001).is_err() && limit(-1).is_err());
    }
}
