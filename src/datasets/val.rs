//! The rows' JSON tree, shared by the fast parser (`json`) that builds it
//! and the validator (`format`) that reads it.

use std::borrow::Cow;

/// JSON value borrowing unescaped strings from the input line. Objects keep
/// key order (for faithful re-serialization of `tool_calls`/`tools` when
/// counting tokens); with duplicate keys the last one wins, as in Python.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(Cow<'a, str>),
    Arr(Vec<Val<'a>>),
    Obj(Vec<(Cow<'a, str>, Val<'a>)>),
}
