//! Per-line validation of OpenAI-format training and eval data.
//!
//! A line is parsed once into `Val`, a JSON tree that borrows unescaped
//! strings from the line, and every rule walks that tree so problems carry a
//! precise RFC 6901 pointer. Nesting depth is enforced during parsing, so no
//! input can exhaust the stack.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::{self, Write as _};

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::datasets::report::{Problem, Purpose, codes};
use crate::datasets::tokens::TokenCounter;
use crate::datasets::val::Val;

/// OpenAI's per-example limit for the gpt-4o family.
pub const DEFAULT_TOKEN_LIMIT: u64 = 65_536;
pub const DEFAULT_MAX_DEPTH: usize = 64;
/// Vision guide: at most 10 images per example.
pub const MAX_IMAGES_PER_EXAMPLE: u64 = 10;
/// Cookbook accounting: every message costs 3 tokens of framing, and every
/// example 3 more for the assistant reply priming.
const TOKENS_PER_MESSAGE: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const TOKENS_PER_EXAMPLE: u64 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineOptions {
    pub purpose: Purpose,
    /// Examples above this many tokens get `over_token_limit` (they would be truncated).
    pub token_limit: u64,
    /// Deepest allowed array/object nesting of a line.
    pub max_depth: usize,
    /// JSON pointer of a label to count (see [`extract_label`]).
    pub label_pointer: Option<String>,
}

impl LineOptions {
    pub fn new(purpose: Purpose) -> Self {
        LineOptions {
            purpose,
            token_limit: DEFAULT_TOKEN_LIMIT,
            max_depth: DEFAULT_MAX_DEPTH,
            label_pointer: None,
        }
    }
}

impl Default for LineOptions {
    fn default() -> Self {
        LineOptions::new(Purpose::Sft)
    }
}

/// Statistics of one valid row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExampleStats {
    pub messages: u64,
    pub tokens: u64,
    pub trained_tokens: u64,
    pub has_tool_calls: bool,
    pub image_parts: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LineOutcome {
    pub problems: Vec<Problem>,
    /// `Some` iff the line has no errors.
    pub example: Option<ExampleStats>,
    /// Value at `label_pointer`, when set and present.
    pub label: Option<String>,
    /// Hash of the parsed JSON structure (whitespace and escape spelling do
    /// not matter; key order does); 0 when the line did not parse.
    pub fingerprint: u128,
}

impl LineOutcome {
    pub fn has_errors(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.severity == crate::datasets::report::Severity::Error)
    }
}

// ---------------------------------------------------------------------------
// JSON tree

impl<'a> Val<'a> {
    fn get(&self, key: &str) -> Option<&Val<'a>> {
        match self {
            Val::Obj(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::Num(_) => "a number",
            Val::Str(_) => "a string",
            Val::Arr(_) => "an array",
            Val::Obj(_) => "an object",
        }
    }

    /// Keys in first-seen order without duplicates (last value wins in `get`).
    fn keys(&self) -> impl Iterator<Item = &str> {
        let entries: &[(Cow<'a, str>, Val<'a>)] = match self {
            Val::Obj(e) => e,
            _ => &[],
        };
        // Rows are made of small objects, where looking back is cheaper than
        // hashing and allocates nothing; large ones get a set.
        let mut seen = (entries.len() > 16).then(|| std::collections::HashSet::with_capacity(entries.len()));
        entries
            .iter()
            .enumerate()
            .filter(move |&(i, (k, _))| match &mut seen {
                Some(seen) => seen.insert(k.as_ref()),
                None => !entries[..i].iter().any(|(prev, _)| prev == k),
            })
            .map(|(_, (k, _))| k.as_ref())
    }

    fn hash_into(&self, h: &mut Fingerprinter) {
        match self {
            Val::Null => h.write_u8(0),
            Val::Bool(b) => h.write_u8(1 + u8::from(*b)),
            Val::Num(n) => {
                h.write_u8(3);
                let mut buf = NumBuf::default();
                let _ = write!(buf, "{n}");
                h.write_bytes(&buf.bytes[..buf.len]);
            }
            Val::Str(s) => {
                h.write_u8(4);
                h.write_bytes(s.as_bytes());
            }
            Val::Arr(items) => {
                h.write_u8(5);
                h.write_u64(items.len() as u64);
                for v in items {
                    v.hash_into(h);
                }
            }
            Val::Obj(entries) => {
                h.write_u8(6);
                h.write_u64(entries.len() as u64);
                for (k, v) in entries {
                    h.write_bytes(k.as_bytes());
                    v.hash_into(h);
                }
            }
        }
    }
}

/// Number text without allocating (serde_json numbers are at most ~25 bytes).
struct NumBuf {
    bytes: [u8; 40],
    len: usize,
}

impl Default for NumBuf {
    fn default() -> Self {
        NumBuf { bytes: [0; 40], len: 0 }
    }
}

impl fmt::Write for NumBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The parsed value in a canonical byte encoding (type tags, lengths and
/// unescaped strings), hashed once with XXH3-128: whitespace and escape
/// spelling do not change it, and accidental collisions across millions of
/// rows are negligible. One pass over a buffer is several times cheaper than
/// feeding a streaming hasher field by field.
struct Fingerprinter {
    buf: Vec<u8>,
}

impl Fingerprinter {
    fn with_capacity(bytes: usize) -> Self {
        Fingerprinter {
            buf: Vec::with_capacity(bytes),
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn write_u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn write_bytes(&mut self, v: &[u8]) {
        self.write_u64(v.len() as u64);
        self.buf.extend_from_slice(v);
    }
    fn finish(&self) -> u128 {
        xxhash_rust::xxh3::xxh3_128(&self.buf)
    }
}

impl Serialize for Val<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Val::Null => s.serialize_unit(),
            Val::Bool(b) => s.serialize_bool(*b),
            Val::Num(n) => n.serialize(s),
            Val::Str(v) => s.serialize_str(v),
            Val::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Val::Obj(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k.as_ref(), v)?;
                }
                map.end()
            }
        }
    }
}

/// Deserializes a [`Val`] while counting depth; the shared flag tells the
/// caller that a failure was the depth limit rather than bad syntax.
#[derive(Clone, Copy)]
struct ValSeed<'f> {
    depth: usize,
    max_depth: usize,
    too_deep: &'f Cell<bool>,
}

impl ValSeed<'_> {
    fn nested<E: de::Error>(self) -> Result<Self, E> {
        if self.depth >= self.max_depth {
            self.too_deep.set(true);
            return Err(E::custom("nesting too deep"));
        }
        Ok(ValSeed {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for ValSeed<'_> {
    type Value = Val<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Val<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValSeed<'_> {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(Val::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::Num(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val<'de>, E> {
        serde_json::Number::from_f64(v)
            .map(Val::Num)
            .ok_or_else(|| E::custom("number out of range"))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        let inner = self.nested()?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(inner)? {
            items.push(v);
        }
        Ok(Val::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        let inner = self.nested()?;
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let v = map.next_value_seed(inner)?;
            entries.push((k, v));
        }
        Ok(Val::Obj(entries))
    }
}

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

pub(crate) enum ParseError {
    TooDeep,
    Json(serde_json::Error),
}

/// Parses one line: the fast parser for what it accepts (nearly every row),
/// serde_json for the rest and for the wording of every error.
pub(crate) fn parse_val(text: &str, max_depth: usize) -> Result<Val<'_>, ParseError> {
    match super::json::parse(text, max_depth) {
        Some(v) => Ok(v),
        None => parse_val_serde(text, max_depth),
    }
}

pub(super) fn parse_val_serde(text: &str, max_depth: usize) -> Result<Val<'_>, ParseError> {
    let too_deep = Cell::new(false);
    let seed = ValSeed {
        depth: 0,
        max_depth,
        too_deep: &too_deep,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let res = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match res {
        Ok(v) => Ok(v),
        Err(_) if too_deep.get() => Err(ParseError::TooDeep),
        // serde_json's own guard (depth 128) fires first if max_depth is higher.
        Err(e) if e.to_string().contains("recursion limit exceeded") => Err(ParseError::TooDeep),
        Err(e) => Err(ParseError::Json(e)),
    }
}

// ---------------------------------------------------------------------------
// JSON pointers

/// Appends an RFC 6901 reference token to `ptr`.
fn push_token(ptr: &mut String, token: &str) {
    ptr.push('/');
    for c in token.chars() {
        match c {
            '~' => ptr.push_str("~0"),
            '/' => ptr.push_str("~1"),
            c => ptr.push(c),
        }
    }
}

/// A JSON pointer built lazily: validating a valid row names no field, so
/// the path is only rendered when a problem is reported.
#[derive(Clone, Copy)]
enum Ptr<'p> {
    Root,
    Key(&'p Ptr<'p>, &'p str),
    Index(&'p Ptr<'p>, usize),
}

const MESSAGES: Ptr<'static> = Ptr::Key(&Ptr::Root, "messages");
const INPUT: Ptr<'static> = Ptr::Key(&Ptr::Root, "input");
const INPUT_MESSAGES: Ptr<'static> = Ptr::Key(&INPUT, "messages");

impl<'p> Ptr<'p> {
    fn key(&'p self, token: &'p str) -> Ptr<'p> {
        Ptr::Key(self, token)
    }

    fn at(&'p self, i: usize) -> Ptr<'p> {
        Ptr::Index(self, i)
    }

    fn render(&self, out: &mut String) {
        match *self {
            Ptr::Root => {}
            Ptr::Key(parent, token) => {
                parent.render(out);
                push_token(out, token);
            }
            Ptr::Index(parent, i) => {
                parent.render(out);
                let _ = write!(out, "/{i}");
            }
        }
    }
}

impl From<&Ptr<'_>> for String {
    fn from(p: &Ptr<'_>) -> String {
        let mut s = String::new();
        p.render(&mut s);
        s
    }
}

impl From<Ptr<'_>> for String {
    fn from(p: Ptr<'_>) -> String {
        String::from(&p)
    }
}

/// Splits a pointer into unescaped reference tokens; `None` if malformed.
fn pointer_tokens(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/')
        .map(|t| {
            let mut out = String::with_capacity(t.len());
            let mut chars = t.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return None,
                    }
                } else {
                    out.push(c);
                }
            }
            Some(out)
        })
        .collect()
}

/// RFC 6901 array index (no leading zeros, no sign), plus "-1" for the last
/// element.
fn array_index(token: &str, len: usize) -> Option<usize> {
    if token == "-1" {
        return len.checked_sub(1);
    }
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse::<usize>().ok().filter(|&i| i < len)
}

/// Looks up `pointer` (RFC 6901, where the array index "-1" means the last
/// element) and renders the value as a label: strings as-is, numbers and
/// booleans as their JSON text, anything else `None`.
pub fn extract_label(value: &serde_json::Value, pointer: &str) -> Option<String> {
    let tokens = pointer_tokens(pointer)?;
    let mut cur = value;
    for t in &tokens {
        cur = match cur {
            serde_json::Value::Object(m) => m.get(t.as_str())?,
            serde_json::Value::Array(a) => a.get(array_index(t, a.len())?)?,
            _ => return None,
        };
    }
    match cur {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn extract_label_val(value: &Val<'_>, tokens: &[String]) -> Option<String> {
    let mut cur = value;
    for t in tokens {
        cur = match cur {
            Val::Obj(_) => cur.get(t)?,
            Val::Arr(a) => a.get(array_index(t, a.len())?)?,
            _ => return None,
        };
    }
    match cur {
        Val::Str(s) => Some(s.to_string()),
        Val::Num(n) => Some(n.to_string()),
        Val::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Validation

struct Checker<'o> {
    line: u64,
    opts: &'o LineOptions,
    tokens: &'o dyn TokenCounter,
    problems: Vec<Problem>,
    errors: usize,
}

impl Checker<'_> {
    fn err(&mut self, pointer: impl Into<String>, code: &'static str, message: impl Into<String>) {
        self.errors += 1;
        self.problems.push(Problem::error(self.line, pointer, code, message));
    }

    fn warn(&mut self, pointer: impl Into<String>, code: &'static str, message: impl Into<String>) {
        self.problems.push(Problem::warning(self.line, pointer, code, message));
    }

    fn count(&self, s: &str) -> u64 {
        self.tokens.count(s) as u64
    }

    /// Tokens of a value's compact JSON text (how tools and tool calls reach the model).
    fn count_json(&self, v: &Val<'_>) -> u64 {
        match serde_json::to_string(v) {
            Ok(s) => self.count(&s),
            Err(_) => 0,
        }
    }
}

const SFT_ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];
const SFT_ROLES_SHOWN: &str = "system, developer, user, assistant, tool";
const RFT_ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];
const MESSAGE_KEYS: &[&str] = &[
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
    "function_call",
    "weight",
];
const SFT_TOP_KEYS: &[&str] = &["messages", "tools", "parallel_tool_calls", "functions"];
/// A row's own notes (Lathe's made datasets say there where each row came
/// from); training ignores it, so it is no unrecognized key.
const ROW_METADATA: &str = "metadata";

#[derive(Clone, Copy)]
struct MsgRules {
    roles: &'static [&'static str],
    images: bool,
}

#[derive(Default)]
struct MsgInfo {
    /// One of the allowed roles, when the message has one.
    role: Option<&'static str>,
    tokens: u64,
    trained: bool,
    has_tool_calls: bool,
    images: u64,
}

/// Validates one JSONL line. `line` excludes the newline; a trailing `\r`
/// is ignored. Never panics.
pub fn validate_line(line_no: u64, line: &[u8], opts: &LineOptions, tokens: &dyn TokenCounter) -> LineOutcome {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut c = Checker {
        line: line_no,
        opts,
        tokens,
        problems: Vec::new(),
        errors: 0,
    };
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            c.err(
                "",
                codes::INVALID_UTF8,
                format!(
                    "line is not valid UTF-8: invalid byte sequence at byte offset {} of the line",
                    e.valid_up_to()
                ),
            );
            return finish(c, None, None, 0);
        }
    };
    let val = match parse_val(text, opts.max_depth) {
        Ok(v) => v,
        Err(ParseError::TooDeep) => {
            c.err(
                "",
                codes::NESTING_TOO_DEEP,
                format!("JSON nesting is deeper than {} levels", opts.max_depth.min(127)),
            );
            return finish(c, None, None, 0);
        }
        Err(ParseError::Json(e)) => {
            c.err(
                "",
                codes::INVALID_JSON,
                format!("invalid JSON at column {}: {}", e.column(), json_error_text(&e)),
            );
            return finish(c, None, None, 0);
        }
    };
    let mut fp = Fingerprinter::with_capacity(line.len());
    val.hash_into(&mut fp);
    let fingerprint = fp.finish();

    let label = match &opts.label_pointer {
        Some(ptr) if matches!(val, Val::Obj(_)) => {
            let label = pointer_tokens(ptr).and_then(|t| extract_label_val(&val, &t));
            if label.is_none() {
                c.warn(
                    ptr.clone(),
                    codes::MISSING_LABEL,
                    format!("no string, number or boolean label at '{ptr}'"),
                );
            }
            label
        }
        _ => None,
    };

    let Val::Obj(_) = &val else {
        c.err(
            "",
            codes::DATA_TYPE,
            format!("each line must be a JSON object, found {}", val.kind()),
        );
        return finish(c, None, label, fingerprint);
    };
    let stats = match opts.purpose {
        Purpose::Sft => check_sft(&mut c, &val),
        Purpose::Dpo => check_dpo(&mut c, &val),
        Purpose::Rft => check_rft(&mut c, &val),
        Purpose::Eval => Some(check_eval(&mut c, &val)),
    };
    finish(c, stats, label, fingerprint)
}

/// serde_json appends " at line 1 column N"; the column is reported separately.
fn json_error_text(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn finish(c: Checker<'_>, stats: Option<ExampleStats>, label: Option<String>, fingerprint: u128) -> LineOutcome {
    let example = if c.errors == 0 { stats } else { None };
    LineOutcome {
        problems: c.problems,
        example,
        label,
        fingerprint,
    }
}

/// Which fine-tuning format a row is in, told by the same signature keys
/// as `wrong_purpose`: DPO pairs (`input` with a preferred or non-preferred
/// output), RFT items (messages without an assistant reply, plus item
/// fields), otherwise chat SFT, whose rules then report anything else
/// (a line that is not a JSON object included). OpenAI's `fine-tune`
/// purpose covers all three; an upload with it takes its first row's.
pub fn fine_tune_format(line: &[u8]) -> Purpose {
    let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
    let Ok(serde_json::Value::Object(row)) = serde_json::from_slice::<serde_json::Value>(line) else {
        return Purpose::Sft;
    };
    let has = |k: &str| row.contains_key(k);
    if has("input") && (has("preferred_output") || has("non_preferred_output")) {
        return Purpose::Dpo;
    }
    let item_fields = row.keys().any(|k| !SFT_TOP_KEYS.contains(&k.as_str()));
    if let Some(serde_json::Value::Array(messages)) = row.get("messages") {
        let has_assistant = messages
            .iter()
            .any(|m| m.get("role").and_then(serde_json::Value::as_str) == Some("assistant"));
        if !has_assistant && item_fields {
            return Purpose::Rft;
        }
    }
    Purpose::Sft
}

/// Keys whose presence identifies a purpose, checked before format rules so
/// the user gets one clear error instead of a cascade.
fn detect_wrong_purpose(c: &mut Checker<'_>, row: &Val<'_>) -> bool {
    let has = |k: &str| row.get(k).is_some();
    let looks_dpo = has("input") && (has("preferred_output") || has("non_preferred_output"));
    let purpose = c.opts.purpose;
    if looks_dpo && purpose != Purpose::Dpo && purpose != Purpose::Eval {
        let present: Vec<&str> = ["input", "preferred_output", "non_preferred_output"]
            .into_iter()
            .filter(|k| has(k))
            .collect();
        c.err(
            "",
            codes::WRONG_PURPOSE,
            format!(
                "this row looks like DPO preference data ({}); upload it with purpose dpo",
                present.join(", ")
            ),
        );
        return true;
    }
    if purpose == Purpose::Dpo && has("messages") && !has("input") {
        c.err(
            "",
            codes::WRONG_PURPOSE,
            "this row looks like chat data (messages) rather than DPO preference data \
             (input, preferred_output, non_preferred_output); upload it with purpose sft or rft",
        );
        return true;
    }
    if purpose == Purpose::Sft && !has("messages") && has("prompt") && has("completion") {
        c.err(
            "",
            codes::WRONG_PURPOSE,
            "this row uses the legacy prompt/completion format, which chat fine-tuning does \
             not accept; convert it to messages, or upload it with purpose eval",
        );
        return true;
    }
    if purpose == Purpose::Sft {
        // RFT rows carry grader fields next to messages and end on a user turn.
        let item_fields: Vec<&str> = row.keys().filter(|k| !SFT_TOP_KEYS.contains(k)).collect();
        if let Some(Val::Arr(msgs)) = row.get("messages") {
            let has_assistant = msgs
                .iter()
                .any(|m| m.get("role").and_then(Val::as_str) == Some("assistant"));
            if !has_assistant && !item_fields.is_empty() {
                c.err(
                    "",
                    codes::WRONG_PURPOSE,
                    format!(
                        "this row looks like reinforcement fine-tuning data (messages without an \
                         assistant reply, plus item fields {}); upload it with purpose rft",
                        quote_list(&item_fields)
                    ),
                );
                return true;
            }
        }
    }
    false
}

fn quote_list(items: &[&str]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(|k| format!("'{k}'")).collect();
    let mut s = shown.join(", ");
    if items.len() > 5 {
        s.push_str(", ...");
    }
    s
}

/// The `messages` array, or a `missing_messages_list` error.
fn messages_of<'v, 'a>(c: &mut Checker<'_>, obj: &'v Val<'a>, ptr: &Ptr<'_>) -> Option<&'v [Val<'a>]> {
    match obj.get("messages") {
        Some(Val::Arr(m)) if !m.is_empty() => Some(m),
        Some(Val::Arr(_)) => {
            c.err(
                ptr.key("messages"),
                codes::MISSING_MESSAGES_LIST,
                "'messages' must be a non-empty array",
            );
            None
        }
        Some(other) => {
            c.err(
                ptr.key("messages"),
                codes::MISSING_MESSAGES_LIST,
                format!("'messages' must be an array, found {}", other.kind()),
            );
            None
        }
        None => {
            c.err(ptr, codes::MISSING_MESSAGES_LIST, "row has no 'messages' list");
            None
        }
    }
}

fn check_sft(c: &mut Checker<'_>, row: &Val<'_>) -> Option<ExampleStats> {
    if detect_wrong_purpose(c, row) {
        return None;
    }
    for k in row.keys() {
        if !SFT_TOP_KEYS.contains(&k) && k != ROW_METADATA {
            c.warn(
                Ptr::Root.key(k),
                codes::UNRECOGNIZED_KEY,
                format!("unrecognized key '{k}' is ignored"),
            );
        }
    }
    let mut tokens = TOKENS_PER_EXAMPLE;
    tokens += check_tools(c, row, &Ptr::Root);
    tokens += check_parallel_tool_calls(c, row, &Ptr::Root);
    tokens += check_functions(c, row);
    let msgs = messages_of(c, row, &Ptr::Root)?;
    let rules = MsgRules {
        roles: SFT_ROLES,
        images: true,
    };
    let mut stats = ExampleStats {
        messages: msgs.len() as u64,
        ..Default::default()
    };
    let (mut has_system, mut has_user, mut has_assistant, mut any_trained) = (false, false, false, false);
    for (i, m) in msgs.iter().enumerate() {
        let info = check_message(c, m, &MESSAGES.at(i), rules);
        tokens += info.tokens;
        stats.image_parts += info.images;
        stats.has_tool_calls |= info.has_tool_calls;
        match info.role {
            Some("system" | "developer") => has_system = true,
            Some("user") => has_user = true,
            Some("assistant") => {
                has_assistant = true;
                if info.trained {
                    any_trained = true;
                    stats.trained_tokens += info.tokens;
                }
            }
            _ => {}
        }
    }
    if !has_assistant {
        c.err(
            "/messages",
            codes::EXAMPLE_MISSING_ASSISTANT_MESSAGE,
            "example has no assistant message to train on",
        );
    } else if !any_trained {
        c.warn(
            "/messages",
            codes::NO_TRAINED_ASSISTANT_MESSAGE,
            "every assistant message has weight 0, so nothing in this example is trained",
        );
    }
    if !has_system {
        c.warn(
            "/messages",
            codes::MISSING_SYSTEM_MESSAGE,
            "example has no system or developer message",
        );
    }
    if !has_user {
        c.warn("/messages", codes::MISSING_USER_MESSAGE, "example has no user message");
    }
    check_image_count(c, stats.image_parts, "/messages");
    stats.tokens = tokens;
    check_token_limit(c, tokens);
    Some(stats)
}

fn check_image_count(c: &mut Checker<'_>, images: u64, ptr: &str) {
    if images > MAX_IMAGES_PER_EXAMPLE {
        c.err(
            ptr,
            codes::TOO_MANY_IMAGES,
            format!("example has {images} images; at most {MAX_IMAGES_PER_EXAMPLE} are allowed"),
        );
    }
}

fn check_token_limit(c: &mut Checker<'_>, tokens: u64) {
    if tokens > c.opts.token_limit {
        c.warn(
            "",
            codes::OVER_TOKEN_LIMIT,
            format!(
                "example has {tokens} tokens, over the {}-token limit; it will be truncated",
                c.opts.token_limit
            ),
        );
    }
}

fn check_message(c: &mut Checker<'_>, m: &Val<'_>, ptr: &Ptr<'_>, rules: MsgRules) -> MsgInfo {
    let mut info = MsgInfo::default();
    let Val::Obj(_) = m else {
        c.err(
            ptr,
            codes::INVALID_TYPE,
            format!("message must be an object, found {}", m.kind()),
        );
        return info;
    };
    info.tokens = TOKENS_PER_MESSAGE;
    let role = match m.get("role") {
        None => {
            c.err(ptr, codes::MESSAGE_MISSING_KEY, "message is missing 'role'");
            None
        }
        Some(Val::Str(r)) => {
            info.tokens += c.count(r);
            if let Some(&known) = rules.roles.iter().find(|&&known| known == r.as_ref()) {
                Some(known)
            } else {
                let shown = if rules.roles == SFT_ROLES {
                    SFT_ROLES_SHOWN.to_string()
                } else {
                    rules.roles.join(", ")
                };
                c.err(
                    ptr.key("role"),
                    codes::UNRECOGNIZED_ROLE,
                    format!("role '{r}' is not one of {shown}"),
                );
                None
            }
        }
        Some(other) => {
            c.err(
                ptr.key("role"),
                codes::INVALID_TYPE,
                format!("'role' must be a string, found {}", other.kind()),
            );
            None
        }
    };
    info.role = role;
    let is_assistant = role == Some("assistant");

    for k in m.keys() {
        if !MESSAGE_KEYS.contains(&k) {
            c.err(
                ptr.key(k),
                codes::MESSAGE_UNRECOGNIZED_KEY,
                format!(
                    "message key '{k}' is not one of role, content, name, tool_calls, \
                     tool_call_id, function_call, weight"
                ),
            );
            continue;
        }
        let only_for = match k {
            "tool_calls" | "function_call" | "weight" => Some("assistant"),
            "tool_call_id" => Some("tool"),
            _ => None,
        };
        if let (Some(want), Some(r)) = (only_for, role)
            && r != want
        {
            c.err(
                ptr.key(k),
                codes::MESSAGE_UNRECOGNIZED_KEY,
                format!("'{k}' is only allowed on {want} messages, not {r}"),
            );
        }
    }

    if let Some(name) = m.get("name") {
        match name {
            Val::Str(s) => info.tokens += c.count(s) + TOKENS_PER_NAME,
            other => c.err(
                ptr.key("name"),
                codes::INVALID_TYPE,
                format!("'name' must be a string, found {}", other.kind()),
            ),
        }
    }

    let mut has_call = false;
    if let Some(tc) = m.get("tool_calls") {
        let tptr = ptr.key("tool_calls");
        if check_tool_calls(c, tc, &tptr) {
            has_call = true;
            info.has_tool_calls = true;
        }
        info.tokens += c.count_json(tc);
    }
    if let Some(fc) = m.get("function_call") {
        let fptr = ptr.key("function_call");
        if check_function_call(c, fc, &fptr) {
            has_call = true;
            info.has_tool_calls = true;
        }
        info.tokens += c.count_json(fc);
    }

    if role == Some("tool") {
        match m.get("tool_call_id") {
            None => c.err(
                ptr,
                codes::MESSAGE_MISSING_KEY,
                "tool message is missing 'tool_call_id'",
            ),
            Some(Val::Str(s)) => info.tokens += c.count(s),
            Some(other) => c.err(
                ptr.key("tool_call_id"),
                codes::INVALID_TYPE,
                format!("'tool_call_id' must be a string, found {}", other.kind()),
            ),
        }
    }

    info.trained = is_assistant;
    if let Some(w) = m.get("weight") {
        match w {
            Val::Num(n) if n.as_f64() == Some(0.0) => info.trained = false,
            Val::Num(n) if n.as_f64() == Some(1.0) => {}
            other => c.err(
                ptr.key("weight"),
                codes::INVALID_VALUE,
                format!("'weight' must be 0 or 1, found {}", describe(other)),
            ),
        }
    }

    let cptr = ptr.key("content");
    match m.get("content") {
        None if has_call => {}
        None => c.err(ptr, codes::MESSAGE_MISSING_KEY, "message is missing 'content'"),
        Some(Val::Null) if has_call => {}
        Some(Val::Str(s)) if s.is_empty() && has_call => {}
        Some(Val::Str(s)) if s.is_empty() => c.err(
            cptr,
            codes::MISSING_CONTENT,
            "'content' is empty and the message has no tool_calls or function_call",
        ),
        Some(Val::Null) => c.err(
            cptr,
            codes::MISSING_CONTENT,
            "'content' is null and the message has no tool_calls or function_call",
        ),
        Some(Val::Str(s)) => info.tokens += c.count(s),
        Some(Val::Arr(parts)) if parts.is_empty() && !has_call => c.err(
            cptr,
            codes::MISSING_CONTENT,
            "'content' is an empty array and the message has no tool_calls or function_call",
        ),
        Some(Val::Arr(parts)) => {
            let images_ok = rules.images && role == Some("user");
            for (i, part) in parts.iter().enumerate() {
                let pptr = cptr.at(i);
                let (t, img) = check_part(c, part, &pptr, images_ok, rules.images, role);
                info.tokens += t;
                info.images += img;
            }
        }
        Some(other) => c.err(
            cptr,
            codes::MISSING_CONTENT,
            format!(
                "'content' must be a string or an array of content parts, found {}",
                other.kind()
            ),
        ),
    }
    info
}

fn describe(v: &Val<'_>) -> String {
    match v {
        Val::Num(n) => n.to_string(),
        Val::Bool(b) => b.to_string(),
        Val::Str(s) => format!("\"{}\"", truncate_chars(s, 40)),
        other => other.kind().to_string(),
    }
}

fn truncate_chars(s: &str, max: usize) -> Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((i, _)) => Cow::Owned(format!("{}...", &s[..i])),
        None => Cow::Borrowed(s),
    }
}

/// Returns (text tokens, image parts).
fn check_part(
    c: &mut Checker<'_>,
    part: &Val<'_>,
    ptr: &Ptr<'_>,
    images_ok: bool,
    images_in_format: bool,
    role: Option<&str>,
) -> (u64, u64) {
    let Val::Obj(_) = part else {
        c.err(
            ptr,
            codes::INVALID_TYPE,
            format!("content part must be an object, found {}", part.kind()),
        );
        return (0, 0);
    };
    let ty = match part.get("type") {
        Some(Val::Str(t)) => t.as_ref(),
        Some(other) => {
            c.err(
                ptr.key("type"),
                codes::INVALID_TYPE,
                format!("content part 'type' must be a string, found {}", other.kind()),
            );
            return (0, 0);
        }
        None => {
            c.err(ptr, codes::MISSING_KEY, "content part is missing 'type'");
            return (0, 0);
        }
    };
    let allowed: &[&str] = match ty {
        "text" => &["type", "text"],
        "image_url" => &["type", "image_url"],
        other => {
            c.err(
                ptr.key("type"),
                codes::INVALID_VALUE,
                format!(
                    "content part type '{other}' is not supported; only text and image_url \
                     (audio and file inputs are not supported for fine-tuning)"
                ),
            );
            return (0, 0);
        }
    };
    for k in part.keys() {
        if !allowed.contains(&k) {
            c.err(
                ptr.key(k),
                codes::MESSAGE_UNRECOGNIZED_KEY,
                format!("'{k}' is not a key of a {ty} content part"),
            );
        }
    }
    if ty == "text" {
        return match part.get("text") {
            Some(Val::Str(s)) => (c.count(s), 0),
            Some(other) => {
                c.err(
                    ptr.key("text"),
                    codes::INVALID_TYPE,
                    format!("'text' must be a string, found {}", other.kind()),
                );
                (0, 0)
            }
            None => {
                c.err(ptr, codes::MISSING_KEY, "text content part is missing 'text'");
                (0, 0)
            }
        };
    }
    if !images_ok {
        let why = if images_in_format {
            format!(
                "images are only allowed in user messages, not {}",
                role.unwrap_or("this role")
            )
        } else {
            "this format is text only; images are not allowed".to_string()
        };
        c.err(ptr, codes::IMAGE_NOT_ALLOWED, why);
        return (0, 1);
    }
    let iptr = ptr.key("image_url");
    let Some(img) = part.get("image_url") else {
        c.err(ptr, codes::MISSING_KEY, "image_url content part is missing 'image_url'");
        return (0, 1);
    };
    let Val::Obj(_) = img else {
        c.err(
            iptr,
            codes::INVALID_TYPE,
            format!("'image_url' must be an object, found {}", img.kind()),
        );
        return (0, 1);
    };
    for k in img.keys() {
        if k != "url" && k != "detail" {
            c.err(
                iptr.key(k),
                codes::MESSAGE_UNRECOGNIZED_KEY,
                format!("'{k}' is not a key of image_url (url, detail)"),
            );
        }
    }
    match img.get("url") {
        Some(Val::Str(u)) => {
            if !valid_image_url(u) {
                c.err(
                    iptr.key("url"),
                    codes::INVALID_IMAGE_URL,
                    format!(
                        "image url must be http(s) or a base64 data URL of a JPEG, PNG or WEBP \
                         image, found '{}'",
                        truncate_chars(u, 40)
                    ),
                );
            }
        }
        Some(other) => c.err(
            iptr.key("url"),
            codes::INVALID_TYPE,
            format!("'url' must be a string, found {}", other.kind()),
        ),
        None => c.err(iptr, codes::MISSING_KEY, "image_url is missing 'url'"),
    }
    if let Some(d) = img.get("detail")
        && !matches!(d.as_str(), Some("low" | "high" | "auto"))
    {
        c.err(
            iptr.key("detail"),
            codes::INVALID_VALUE,
            format!("'detail' must be low, high or auto, found {}", describe(d)),
        );
    }
    (0, 1)
}

fn valid_image_url(u: &str) -> bool {
    let lower_prefix = |p: &str| u.len() >= p.len() && u.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    if lower_prefix("https://") || lower_prefix("http://") {
        return u.len() > if lower_prefix("https://") { 8 } else { 7 };
    }
    for mime in ["jpeg", "jpg", "png", "webp"] {
        let prefix = format!("data:image/{mime};base64,");
        if lower_prefix(&prefix) {
            let payload = &u[prefix.len()..];
            return !payload.is_empty()
                && payload
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        }
    }
    false
}

/// Returns whether the message really carries at least one call.
fn check_tool_calls(c: &mut Checker<'_>, tc: &Val<'_>, ptr: &Ptr<'_>) -> bool {
    let Val::Arr(calls) = tc else {
        c.err(
            ptr,
            codes::INVALID_TYPE,
            format!("'tool_calls' must be an array, found {}", tc.kind()),
        );
        return false;
    };
    if calls.is_empty() {
        c.err(ptr, codes::INVALID_VALUE, "'tool_calls' must not be empty");
        return false;
    }
    for (i, call) in calls.iter().enumerate() {
        let cp = ptr.at(i);
        let Val::Obj(_) = call else {
            c.err(
                cp,
                codes::INVALID_TYPE,
                format!("tool call must be an object, found {}", call.kind()),
            );
            continue;
        };
        for k in call.keys() {
            if !matches!(k, "id" | "type" | "function") {
                c.err(
                    cp.key(k),
                    codes::MESSAGE_UNRECOGNIZED_KEY,
                    format!("'{k}' is not a key of a tool call (id, type, function)"),
                );
            }
        }
        require_str(c, call, &cp, "id", "tool call");
        match call.get("type") {
            Some(Val::Str(t)) if t == "function" => {}
            Some(other) => c.err(
                cp.key("type"),
                codes::INVALID_VALUE,
                format!("tool call 'type' must be \"function\", found {}", describe(other)),
            ),
            None => c.err(cp, codes::MESSAGE_MISSING_KEY, "tool call is missing 'type'"),
        }
        match call.get("function") {
            Some(f) => {
                check_function_call(c, f, &cp.key("function"));
            }
            None => c.err(cp, codes::MESSAGE_MISSING_KEY, "tool call is missing 'function'"),
        }
    }
    true
}

/// `{name, arguments}` as in `tool_calls[].function` and `function_call`.
fn check_function_call(c: &mut Checker<'_>, f: &Val<'_>, ptr: &Ptr<'_>) -> bool {
    let Val::Obj(_) = f else {
        c.err(
            ptr,
            codes::INVALID_TYPE,
            format!("function call must be an object, found {}", f.kind()),
        );
        return false;
    };
    for k in f.keys() {
        if k != "name" && k != "arguments" {
            c.err(
                ptr.key(k),
                codes::MESSAGE_UNRECOGNIZED_KEY,
                format!("'{k}' is not a key of a function call (name, arguments)"),
            );
        }
    }
    require_str(c, f, ptr, "name", "function call");
    match f.get("arguments") {
        Some(Val::Str(a)) => {
            if serde_json::from_str::<serde::de::IgnoredAny>(a).is_err() {
                c.warn(
                    ptr.key("arguments"),
                    codes::INVALID_TOOL_ARGUMENTS,
                    "'arguments' is not valid JSON",
                );
            }
        }
        Some(other) => c.err(
            ptr.key("arguments"),
            codes::INVALID_TYPE,
            format!("'arguments' must be a string of JSON, found {}", other.kind()),
        ),
        None => c.err(ptr, codes::MESSAGE_MISSING_KEY, "function call is missing 'arguments'"),
    }
    true
}

fn require_str(c: &mut Checker<'_>, obj: &Val<'_>, ptr: &Ptr<'_>, key: &str, what: &str) {
    match obj.get(key) {
        Some(Val::Str(_)) => {}
        Some(other) => c.err(
            ptr.key(key),
            codes::INVALID_TYPE,
            format!("'{key}' must be a string, found {}", other.kind()),
        ),
        None => c.err(ptr, codes::MESSAGE_MISSING_KEY, format!("{what} is missing '{key}'")),
    }
}

/// Validates `tools` on `obj` and returns its token cost.
fn check_tools(c: &mut Checker<'_>, obj: &Val<'_>, ptr: &Ptr<'_>) -> u64 {
    let Some(tools) = obj.get("tools") else {
        return 0;
    };
    let tptr = ptr.key("tools");
    let Val::Arr(items) = tools else {
        c.err(
            tptr,
            codes::INVALID_TYPE,
            format!("'tools' must be an array, found {}", tools.kind()),
        );
        return 0;
    };
    for (i, t) in items.iter().enumerate() {
        let p = tptr.at(i);
        let Val::Obj(_) = t else {
            c.err(
                p,
                codes::INVALID_TYPE,
                format!("tool must be an object, found {}", t.kind()),
            );
            continue;
        };
        match t.get("type") {
            Some(Val::Str(s)) if s == "function" => {}
            Some(other) => c.err(
                p.key("type"),
                codes::INVALID_VALUE,
                format!("tool 'type' must be \"function\", found {}", describe(other)),
            ),
            None => c.err(p, codes::MISSING_KEY, "tool is missing 'type'"),
        }
        for k in t.keys() {
            if k != "type" && k != "function" {
                c.warn(
                    p.key(k),
                    codes::UNRECOGNIZED_KEY,
                    format!("unrecognized tool key '{k}' is ignored"),
                );
            }
        }
        match t.get("function") {
            Some(f) => check_function_def(c, f, &p.key("function")),
            None => c.err(p, codes::MISSING_KEY, "tool is missing 'function'"),
        }
    }
    c.count_json(tools)
}

fn check_parallel_tool_calls(c: &mut Checker<'_>, obj: &Val<'_>, ptr: &Ptr<'_>) -> u64 {
    match obj.get("parallel_tool_calls") {
        None | Some(Val::Bool(_)) => {}
        Some(other) => c.err(
            ptr.key("parallel_tool_calls"),
            codes::INVALID_TYPE,
            format!("'parallel_tool_calls' must be a boolean, found {}", other.kind()),
        ),
    }
    0
}

/// Deprecated top-level `functions` (1 to 128 definitions).
fn check_functions(c: &mut Checker<'_>, obj: &Val<'_>) -> u64 {
    let Some(fs) = obj.get("functions") else {
        return 0;
    };
    let Val::Arr(items) = fs else {
        c.err(
            "/functions",
            codes::INVALID_TYPE,
            format!("'functions' must be an array, found {}", fs.kind()),
        );
        return 0;
    };
    if items.is_empty() || items.len() > 128 {
        c.err(
            "/functions",
            codes::INVALID_VALUE,
            format!("'functions' must have 1 to 128 entries, found {}", items.len()),
        );
    }
    for (i, f) in items.iter().enumerate() {
        check_function_def(c, f, &Ptr::Root.key("functions").at(i));
    }
    c.count_json(fs)
}

/// `{name, description?, parameters?: object, strict?: bool}`.
fn check_function_def(c: &mut Checker<'_>, f: &Val<'_>, ptr: &Ptr<'_>) {
    let Val::Obj(_) = f else {
        c.err(
            ptr,
            codes::INVALID_TYPE,
            format!("function definition must be an object, found {}", f.kind()),
        );
        return;
    };
    match f.get("name") {
        Some(Val::Str(n)) if !n.is_empty() => {}
        Some(other) => c.err(
            ptr.key("name"),
            codes::INVALID_VALUE,
            format!("function 'name' must be a non-empty string, found {}", describe(other)),
        ),
        None => c.err(ptr, codes::MISSING_KEY, "function definition is missing 'name'"),
    }
    if let Some(d) = f.get("description")
        && d.as_str().is_none()
    {
        c.err(
            ptr.key("description"),
            codes::INVALID_TYPE,
            format!("'description' must be a string, found {}", d.kind()),
        );
    }
    if let Some(p) = f.get("parameters")
        && !matches!(p, Val::Obj(_))
    {
        c.err(
            ptr.key("parameters"),
            codes::INVALID_TYPE,
            format!("'parameters' must be a JSON Schema object, found {}", p.kind()),
        );
    }
    if let Some(s) = f.get("strict")
        && !matches!(s, Val::Bool(_) | Val::Null)
    {
        c.err(
            ptr.key("strict"),
            codes::INVALID_TYPE,
            format!("'strict' must be a boolean, found {}", s.kind()),
        );
    }
    for k in f.keys() {
        if !matches!(k, "name" | "description" | "parameters" | "strict") {
            c.warn(
                ptr.key(k),
                codes::UNRECOGNIZED_KEY,
                format!("unrecognized function key '{k}' is ignored"),
            );
        }
    }
}

fn check_dpo(c: &mut Checker<'_>, row: &Val<'_>) -> Option<ExampleStats> {
    if detect_wrong_purpose(c, row) {
        return None;
    }
    for k in row.keys() {
        if !matches!(k, "input" | "preferred_output" | "non_preferred_output" | ROW_METADATA) {
            c.warn(
                Ptr::Root.key(k),
                codes::UNRECOGNIZED_KEY,
                format!("unrecognized key '{k}' is ignored"),
            );
        }
    }
    let text_only = MsgRules {
        roles: SFT_ROLES,
        images: false,
    };
    let mut stats = ExampleStats::default();
    let mut input_tokens = TOKENS_PER_EXAMPLE;
    match row.get("input") {
        None => c.err("", codes::MISSING_KEY, "row is missing 'input'"),
        Some(input @ Val::Obj(_)) => {
            for k in input.keys() {
                if !matches!(k, "messages" | "tools" | "parallel_tool_calls") {
                    c.warn(
                        INPUT.key(k),
                        codes::UNRECOGNIZED_KEY,
                        format!("unrecognized input key '{k}' is ignored"),
                    );
                }
            }
            input_tokens += check_tools(c, input, &INPUT);
            check_parallel_tool_calls(c, input, &INPUT);
            if let Some(msgs) = messages_of(c, input, &INPUT) {
                stats.messages += msgs.len() as u64;
                let mut has_user = false;
                let mut last_role = None;
                for (i, m) in msgs.iter().enumerate() {
                    let info = check_message(c, m, &INPUT_MESSAGES.at(i), text_only);
                    input_tokens += info.tokens;
                    stats.has_tool_calls |= info.has_tool_calls;
                    has_user |= info.role == Some("user");
                    last_role = info.role;
                }
                if last_role == Some("assistant") {
                    c.err(
                        INPUT_MESSAGES.at(msgs.len() - 1),
                        codes::INVALID_VALUE,
                        "DPO input must not end with an assistant message; the preferred and \
                         non-preferred outputs are the final assistant turn",
                    );
                }
                if !has_user {
                    c.warn(
                        "/input/messages",
                        codes::MISSING_USER_MESSAGE,
                        "input has no user message",
                    );
                }
            }
        }
        Some(other) => c.err(
            "/input",
            codes::INVALID_TYPE,
            format!("'input' must be an object, found {}", other.kind()),
        ),
    }
    let pref = check_dpo_output(c, row, "preferred_output", text_only);
    let non_pref = check_dpo_output(c, row, "non_preferred_output", text_only);
    if let (Some((pm, pt)), Some((nm, nt))) = (&pref, &non_pref) {
        if pm == nm {
            c.warn(
                "/non_preferred_output",
                codes::IDENTICAL_PREFERENCES,
                "preferred_output and non_preferred_output are identical, so the pair teaches nothing",
            );
        }
        stats.messages += 2;
        stats.trained_tokens = *pt;
        stats.tokens = input_tokens + pt + nt;
        check_token_limit(c, input_tokens + (*pt).max(*nt));
    }
    Some(stats)
}

/// Returns the output message and its tokens when it is well-formed.
fn check_dpo_output<'v, 'a>(
    c: &mut Checker<'_>,
    row: &'v Val<'a>,
    key: &str,
    rules: MsgRules,
) -> Option<(&'v Val<'a>, u64)> {
    let ptr = Ptr::Root.key(key);
    let out = match row.get(key) {
        None => {
            c.err("", codes::MISSING_KEY, format!("row is missing '{key}'"));
            return None;
        }
        Some(Val::Arr(items)) if items.len() == 1 => &items[0],
        Some(Val::Arr(items)) => {
            c.err(
                ptr,
                codes::INVALID_VALUE,
                format!(
                    "'{key}' must contain exactly 1 assistant message, found {}",
                    items.len()
                ),
            );
            return None;
        }
        Some(other) => {
            c.err(
                ptr,
                codes::INVALID_TYPE,
                format!(
                    "'{key}' must be an array with 1 assistant message, found {}",
                    other.kind()
                ),
            );
            return None;
        }
    };
    let mptr = ptr.at(0);
    let before = c.errors;
    let info = check_message(c, out, &mptr, rules);
    if let Some(r) = info.role
        && r != "assistant"
    {
        c.err(
            mptr.key("role"),
            codes::INVALID_VALUE,
            format!("'{key}' message must have role 'assistant', found '{r}'"),
        );
    }
    (c.errors == before).then_some((out, info.tokens))
}

fn check_rft(c: &mut Checker<'_>, row: &Val<'_>) -> Option<ExampleStats> {
    if detect_wrong_purpose(c, row) {
        return None;
    }
    let mut tokens = TOKENS_PER_EXAMPLE + check_tools(c, row, &Ptr::Root);
    let msgs = messages_of(c, row, &Ptr::Root)?;
    let rules = MsgRules {
        roles: RFT_ROLES,
        images: true,
    };
    let mut stats = ExampleStats {
        messages: msgs.len() as u64,
        ..Default::default()
    };
    let mut has_user = false;
    let mut last_role = None;
    for (i, m) in msgs.iter().enumerate() {
        let info = check_message(c, m, &MESSAGES.at(i), rules);
        tokens += info.tokens;
        stats.image_parts += info.images;
        stats.has_tool_calls |= info.has_tool_calls;
        has_user |= info.role == Some("user");
        last_role = info.role;
    }
    if last_role == Some("assistant") {
        c.warn(
            MESSAGES.at(msgs.len() - 1),
            codes::ENDS_WITH_ASSISTANT_MESSAGE,
            "the last message is an assistant message; RFT samples the assistant reply itself",
        );
    }
    if !has_user {
        c.warn("/messages", codes::MISSING_USER_MESSAGE, "example has no user message");
    }
    check_image_count(c, stats.image_parts, "/messages");
    stats.tokens = tokens;
    check_token_limit(c, tokens);
    Some(stats)
}

fn check_eval(c: &mut Checker<'_>, row: &Val<'_>) -> ExampleStats {
    fn walk(c: &Checker<'_>, v: &Val<'_>, total: &mut u64) {
        match v {
            Val::Str(s) => *total += c.count(s),
            Val::Arr(items) => items.iter().for_each(|x| walk(c, x, total)),
            Val::Obj(entries) => entries.iter().for_each(|(_, x)| walk(c, x, total)),
            _ => {}
        }
    }
    let mut tokens = 0;
    walk(c, row, &mut tokens);
    let messages = match row.get("messages") {
        Some(Val::Arr(m)) => m.len() as u64,
        _ => 0,
    };
    ExampleStats {
        messages,
        tokens,
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datasets::report::Severity;
    use crate::datasets::tokens::O200k;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    pub(crate) const SFT_OK: &str = r#"{"messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Hi there"},{"role":"assistant","content":"Hello! How can I help?"}]}"#;
    pub(crate) const DPO_OK: &str = r#"{"input":{"messages":[{"role":"user","content":"Capital of France?"}]},"preferred_output":[{"role":"assistant","content":"Paris."}],"non_preferred_output":[{"role":"assistant","content":"Lyon."}]}"#;
    pub(crate) const RFT_OK: &str = r#"{"messages":[{"role":"developer","content":"Answer briefly."},{"role":"user","content":"2+2?"}],"reference_answer":"4","difficulty":3}"#;

    fn run(purpose: Purpose, line: &str) -> LineOutcome {
        validate_line(7, line.as_bytes(), &LineOptions::new(purpose), &O200k)
    }

    fn sft(line: &str) -> LineOutcome {
        run(Purpose::Sft, line)
    }

    fn codes_of(out: &LineOutcome, sev: Severity) -> Vec<&'static str> {
        out.problems
            .iter()
            .filter(|p| p.severity == sev)
            .map(|p| p.code)
            .collect()
    }

    fn errors(out: &LineOutcome) -> Vec<&'static str> {
        codes_of(out, Severity::Error)
    }

    fn warnings(out: &LineOutcome) -> Vec<&'static str> {
        codes_of(out, Severity::Warning)
    }

    fn find<'o>(out: &'o LineOutcome, code: &str) -> &'o Problem {
        out.problems
            .iter()
            .find(|p| p.code == code)
            .unwrap_or_else(|| panic!("no {code} in {:?}", out.problems))
    }

    #[test]
    fn fine_tune_rows_tell_their_format() {
        assert_eq!(fine_tune_format(SFT_OK.as_bytes()), Purpose::Sft);
        assert_eq!(fine_tune_format(DPO_OK.as_bytes()), Purpose::Dpo);
        assert_eq!(fine_tune_format(RFT_OK.as_bytes()), Purpose::Rft);
        assert_eq!(fine_tune_format(format!("\u{feff}{DPO_OK}").as_bytes()), Purpose::Dpo);
        assert_eq!(fine_tune_format(b"not json"), Purpose::Sft);
        assert_eq!(fine_tune_format(b"[1]"), Purpose::Sft);
    }

    #[test]
    fn valid_sft_and_token_accounting() {
        let out = sft(SFT_OK);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let ex = out.example.expect("valid");
        let t = |s: &str| O200k.count(s) as u64;
        let msg = |r: &str, c: &str| 3 + t(r) + t(c);
        let assistant = msg("assistant", "Hello! How can I help?");
        let expected = 3 + msg("system", "You are helpful.") + msg("user", "Hi there") + assistant;
        assert_eq!(ex.tokens, expected);
        assert_eq!(ex.trained_tokens, assistant);
        assert_eq!(ex.messages, 3);
        assert!(!ex.has_tool_calls);
        assert_ne!(out.fingerprint, 0);
    }

    #[test]
    fn name_costs_one_extra_token() {
        let a = sft(SFT_OK).example.unwrap().tokens;
        let b = sft(&SFT_OK.replace(r#""role":"user","#, r#""role":"user","name":"bob","#))
            .example
            .unwrap()
            .tokens;
        assert_eq!(b, a + O200k.count("bob") as u64 + 1);
    }

    #[test]
    fn unrecognized_role_reads_exactly() {
        let line = r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"asistant","content":"a"}]}"#;
        let out = validate_line(536, line.as_bytes(), &LineOptions::default(), &O200k);
        let p = find(&out, "unrecognized_role");
        assert_eq!(p.line, 536);
        assert_eq!(p.pointer, "/messages/2/role");
        assert_eq!(
            p.message,
            "role 'asistant' is not one of system, developer, user, assistant, tool"
        );
        assert_eq!(p.severity, Severity::Error);
        assert!(out.example.is_none());
    }

    #[test]
    fn cookbook_error_codes() {
        for line in ["[1,2]", "\"text\"", "null", "42"] {
            let out = sft(line);
            assert_eq!(errors(&out), ["data_type"], "{line}");
        }
        let out = sft("{}");
        assert_eq!(errors(&out), ["missing_messages_list"]);
        assert_eq!(find(&out, "missing_messages_list").pointer, "");
        let out = sft(r#"{"messages":[]}"#);
        assert_eq!(find(&out, "missing_messages_list").pointer, "/messages");
        assert_eq!(errors(&sft(r#"{"messages":"hi"}"#)), ["missing_messages_list"]);

        let out = sft(r#"{"messages":[{"content":"x"},{"role":"assistant","content":"y"}]}"#);
        assert_eq!(errors(&out), ["message_missing_key"]);
        assert_eq!(find(&out, "message_missing_key").pointer, "/messages/0");
        let out = sft(r#"{"messages":[{"role":"user"},{"role":"assistant","content":"y"}]}"#);
        assert_eq!(errors(&out), ["message_missing_key"]);
        assert!(find(&out, "message_missing_key").message.contains("'content'"));

        let out = sft(r#"{"messages":[{"role":"user","content":"x","foo":1},{"role":"assistant","content":"y"}]}"#);
        assert_eq!(errors(&out), ["message_unrecognized_key"]);
        assert_eq!(find(&out, "message_unrecognized_key").pointer, "/messages/0/foo");
        let out = sft(r#"{"messages":[{"role":"user","content":"x","weight":1},{"role":"assistant","content":"y"}]}"#);
        assert_eq!(errors(&out), ["message_unrecognized_key"]);

        for content in ["null", "\"\"", "[]", "5"] {
            let line = format!(
                r#"{{"messages":[{{"role":"user","content":"x"}},{{"role":"assistant","content":{content}}}]}}"#
            );
            let out = sft(&line);
            assert_eq!(errors(&out), ["missing_content"], "{content}");
            assert_eq!(find(&out, "missing_content").pointer, "/messages/1/content");
        }

        let out = sft(r#"{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]}"#);
        assert_eq!(errors(&out), ["example_missing_assistant_message"]);
    }

    #[test]
    fn structural_errors() {
        let out = sft(r#"{"messages":["hi",{"role":"assistant","content":"y"}]}"#);
        assert_eq!(errors(&out), ["invalid_type"]);
        assert_eq!(find(&out, "invalid_type").pointer, "/messages/0");
        let out = sft(r#"{"messages":[{"role":7,"content":"x"},{"role":"assistant","content":"y"}]}"#);
        assert_eq!(errors(&out), ["invalid_type"]);
        let out = sft(&SFT_OK.replace(r#""content":"Hello! How can I help?""#, r#""content":"Hi","weight":2"#));
        assert_eq!(errors(&out), ["invalid_value"]);
        assert_eq!(find(&out, "invalid_value").pointer, "/messages/2/weight");
        let out = sft(&SFT_OK.replace(r#"{"messages""#, r#"{"tools":[{"type":"web"}],"messages""#));
        assert_eq!(errors(&out), ["invalid_value", "missing_key"]);
        let out = sft(&SFT_OK.replace(r#"{"messages""#, r#"{"parallel_tool_calls":"yes","messages""#));
        assert_eq!(errors(&out), ["invalid_type"]);
        let out = sft(&SFT_OK.replace(r#"{"messages""#, r#"{"functions":[],"messages""#));
        assert_eq!(errors(&out), ["invalid_value"]);
    }

    #[test]
    fn json_and_encoding_errors() {
        let out = sft(r#"{"messages": [}"#);
        assert_eq!(errors(&out), ["invalid_json"]);
        assert!(find(&out, "invalid_json").message.contains("column"));
        let out = sft(&format!("{SFT_OK} x"));
        assert_eq!(errors(&out), ["invalid_json"]);

        let mut bad = br#"{"messages":"#.to_vec();
        bad.extend_from_slice(b"\"ab\xff\"}");
        let out = validate_line(3, &bad, &LineOptions::default(), &O200k);
        assert_eq!(errors(&out), ["invalid_utf8"]);
        let p = find(&out, "invalid_utf8");
        assert_eq!(p.line, 3);
        assert!(p.message.contains("byte offset 15"), "{}", p.message);
        assert_eq!(out.fingerprint, 0);
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflow() {
        for open in ["[", "{\"a\":"] {
            let line = open.repeat(100_000);
            let out = sft(&line);
            assert_eq!(errors(&out), ["nesting_too_deep"], "{open}");
        }
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let mut opts = LineOptions::new(Purpose::Eval);
        let obj = |inner: &str| format!(r#"{{"x":{inner}}}"#);
        // The object itself is level 1.
        let out = validate_line(1, obj(&nested(63)).as_bytes(), &opts, &O200k);
        assert!(errors(&out).is_empty(), "{:?}", out.problems);
        let out = validate_line(1, obj(&nested(64)).as_bytes(), &opts, &O200k);
        assert_eq!(errors(&out), ["nesting_too_deep"]);
        // Above serde_json's own limit of 128 the result is the same code.
        opts.max_depth = 1000;
        let out = validate_line(1, obj(&nested(200)).as_bytes(), &opts, &O200k);
        assert_eq!(errors(&out), ["nesting_too_deep"]);
    }

    #[test]
    fn warnings_that_do_not_reject() {
        let out = sft(r#"{"messages":[{"role":"assistant","content":"y"}]}"#);
        assert!(out.example.is_some());
        assert_eq!(warnings(&out), ["missing_system_message", "missing_user_message"]);

        let out = sft(&SFT_OK.replace(r#"{"messages""#, r#"{"id":5,"messages""#));
        assert_eq!(warnings(&out), ["unrecognized_key"]);
        assert_eq!(find(&out, "unrecognized_key").pointer, "/id");
        assert!(out.example.is_some());

        let out = sft(&SFT_OK.replace(r#""content":"Hello! How can I help?""#, r#""content":"Hi","weight":0"#));
        assert_eq!(warnings(&out), ["no_trained_assistant_message"]);
        assert_eq!(out.example.unwrap().trained_tokens, 0);

        let opts = LineOptions {
            token_limit: 10,
            ..LineOptions::default()
        };
        let out = validate_line(1, SFT_OK.as_bytes(), &opts, &O200k);
        assert_eq!(warnings(&out), ["over_token_limit"]);
        assert!(out.example.is_some());
    }

    #[test]
    fn tool_calls() {
        let line = r#"{"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"parallel_tool_calls":false,"messages":[{"role":"user","content":"Weather?"},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]},{"role":"tool","tool_call_id":"c1","content":"sunny"},{"role":"assistant","content":"It is sunny."}]}"#;
        let out = sft(line);
        assert!(errors(&out).is_empty(), "{:?}", out.problems);
        let ex = out.example.unwrap();
        assert!(ex.has_tool_calls);
        let without_tools = sft(&line.replace(
            r#""tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],"#,
            "",
        ));
        let tools_json = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#;
        assert_eq!(
            ex.tokens,
            without_tools.example.unwrap().tokens + O200k.count(tools_json) as u64
        );

        let out = sft(&line.replace(r#"{\"city\":\"Paris\"}"#, "city=Paris"));
        assert_eq!(warnings(&out), ["invalid_tool_arguments", "missing_system_message"]);
        assert_eq!(
            find(&out, "invalid_tool_arguments").pointer,
            "/messages/1/tool_calls/0/function/arguments"
        );
        assert!(out.example.is_some());

        let out = sft(&line.replace(r#""tool_call_id":"c1","#, ""));
        assert_eq!(errors(&out), ["message_missing_key"]);
        let out = sft(&line.replace(
            r#""type":"function","function":{"name":"get_weather","arguments""#,
            r#""type":"fn","function":{"name":"get_weather","arguments""#,
        ));
        assert_eq!(errors(&out), ["invalid_value"]);
        // Deprecated function_call and function role are accepted.
        let legacy = r#"{"messages":[{"role":"user","content":"q"},{"role":"assistant","function_call":{"name":"f","arguments":"{}"}},{"role":"function","name":"f","content":"r"},{"role":"assistant","content":"done"}],"functions":[{"name":"f"}]}"#;
        let out = sft(legacy);
        assert!(errors(&out).is_empty(), "{:?}", out.problems);
    }

    #[test]
    fn images() {
        let img = |url: &str| format!(r#"{{"type":"image_url","image_url":{{"url":"{url}","detail":"low"}}}}"#);
        let row = |parts: &str, role: &str| {
            format!(
                r#"{{"messages":[{{"role":"{role}","content":[{{"type":"text","text":"look"}},{parts}]}},{{"role":"assistant","content":"a cat"}}]}}"#
            )
        };
        let out = sft(&row(&img("https://x.test/cat.png"), "user"));
        assert!(errors(&out).is_empty(), "{:?}", out.problems);
        assert_eq!(out.example.unwrap().image_parts, 1);
        let out = sft(&row(&img("data:image/png;base64,iVBORw0KGgo="), "user"));
        assert!(errors(&out).is_empty(), "{:?}", out.problems);

        let out = sft(&row(&img("ftp://x/cat.png"), "user"));
        assert_eq!(errors(&out), ["invalid_image_url"]);
        assert_eq!(
            find(&out, "invalid_image_url").pointer,
            "/messages/0/content/1/image_url/url"
        );
        assert_eq!(
            errors(&sft(&row(&img("data:image/gif;base64,R0lG"), "user"))),
            ["invalid_image_url"]
        );
        let out = sft(&row(&img("https://x.test/a.png"), "system"));
        assert_eq!(errors(&out), ["image_not_allowed"]);
        let bad_detail = row(&img("https://x/a.png").replace("low", "ultra"), "user");
        assert_eq!(errors(&sft(&bad_detail)), ["invalid_value"]);
        let audio = row(r#"{"type":"input_audio","input_audio":{}}"#, "user");
        assert_eq!(errors(&sft(&audio)), ["invalid_value"]);

        let many: Vec<String> = (0..11).map(|_| img("https://x.test/a.png")).collect();
        let out = sft(&row(&many.join(","), "user"));
        assert_eq!(errors(&out), ["too_many_images"]);
        let ten: Vec<String> = (0..10).map(|_| img("https://x.test/a.png")).collect();
        assert_eq!(sft(&row(&ten.join(","), "user")).example.unwrap().image_parts, 10);
    }

    #[test]
    fn dpo_rules() {
        let out = run(Purpose::Dpo, DPO_OK);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        let ex = out.example.unwrap();
        assert_eq!(
            ex.trained_tokens,
            3 + O200k.count("assistant") as u64 + O200k.count("Paris.") as u64
        );

        let same = DPO_OK.replace("Lyon.", "Paris.");
        assert_eq!(warnings(&run(Purpose::Dpo, &same)), ["identical_preferences"]);

        let ends_assistant = DPO_OK.replace(
            r#"{"role":"user","content":"Capital of France?"}]"#,
            r#"{"role":"user","content":"Capital of France?"},{"role":"assistant","content":"Hm"}]"#,
        );
        let out = run(Purpose::Dpo, &ends_assistant);
        assert_eq!(errors(&out), ["invalid_value"]);
        assert_eq!(find(&out, "invalid_value").pointer, "/input/messages/1");

        let two = DPO_OK.replace(
            r#""preferred_output":[{"role":"assistant","content":"Paris."}]"#,
            r#""preferred_output":[{"role":"assistant","content":"Paris."},{"role":"assistant","content":"P"}]"#,
        );
        assert_eq!(errors(&run(Purpose::Dpo, &two)), ["invalid_value"]);
        let user_out = DPO_OK.replace(
            r#"[{"role":"assistant","content":"Lyon."}]"#,
            r#"[{"role":"user","content":"Lyon."}]"#,
        );
        let out = run(Purpose::Dpo, &user_out);
        assert_eq!(errors(&out), ["invalid_value"]);
        assert_eq!(find(&out, "invalid_value").pointer, "/non_preferred_output/0/role");
        let image = DPO_OK.replace(
            r#""content":"Capital of France?""#,
            r#""content":[{"type":"image_url","image_url":{"url":"https://x/a.png"}}]"#,
        );
        assert_eq!(errors(&run(Purpose::Dpo, &image)), ["image_not_allowed"]);
        let missing = r#"{"input":{"messages":[{"role":"user","content":"q"}]},"preferred_output":[{"role":"assistant","content":"a"}]}"#;
        assert_eq!(errors(&run(Purpose::Dpo, missing)), ["missing_key"]);
    }

    #[test]
    fn rft_rules() {
        let out = run(Purpose::Rft, RFT_OK);
        assert!(out.problems.is_empty(), "{:?}", out.problems);
        assert_eq!(out.example.unwrap().trained_tokens, 0);
        let ends = RFT_OK.replace(
            r#"{"role":"user","content":"2+2?"}]"#,
            r#"{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"}]"#,
        );
        let out = run(Purpose::Rft, &ends);
        assert_eq!(warnings(&out), ["ends_with_assistant_message"]);
        assert_eq!(find(&out, "ends_with_assistant_message").pointer, "/messages/2");
        let func = RFT_OK.replace(r#""role":"developer""#, r#""role":"function""#);
        let out = run(Purpose::Rft, &func);
        assert_eq!(errors(&out), ["unrecognized_role"]);
        assert_eq!(
            find(&out, "unrecognized_role").message,
            "role 'function' is not one of system, developer, user, assistant, tool"
        );
        assert_eq!(
            errors(&run(Purpose::Rft, r#"{"answer":"4"}"#)),
            ["missing_messages_list"]
        );
    }

    #[test]
    fn eval_items_are_any_object() {
        let out = run(
            Purpose::Eval,
            r#"{"question":"What is 2+2?","answer":"4","n":[1,"two"]}"#,
        );
        assert!(out.problems.is_empty());
        let expected = ["What is 2+2?", "4", "two"]
            .iter()
            .map(|s| O200k.count(s) as u64)
            .sum::<u64>();
        assert_eq!(out.example.unwrap().tokens, expected);
        assert!(run(Purpose::Eval, DPO_OK).example.is_some());
        assert_eq!(errors(&run(Purpose::Eval, "[]")), ["data_type"]);
    }

    #[test]
    fn wrong_purpose() {
        let out = sft(DPO_OK);
        assert_eq!(errors(&out), ["wrong_purpose"]);
        assert_eq!(
            find(&out, "wrong_purpose").message,
            "this row looks like DPO preference data (input, preferred_output, \
             non_preferred_output); upload it with purpose dpo"
        );
        let partial = r#"{"input":{"messages":[]},"preferred_output":[]}"#;
        assert_eq!(
            find(&sft(partial), "wrong_purpose").message,
            "this row looks like DPO preference data (input, preferred_output); upload it with purpose dpo"
        );
        assert_eq!(errors(&run(Purpose::Rft, DPO_OK)), ["wrong_purpose"]);
        let out = run(Purpose::Dpo, SFT_OK);
        assert_eq!(errors(&out), ["wrong_purpose"]);
        let out = sft(RFT_OK);
        assert_eq!(errors(&out), ["wrong_purpose"]);
        assert!(find(&out, "wrong_purpose").message.contains("purpose rft"));
        let legacy = r#"{"prompt":"a","completion":"b"}"#;
        assert_eq!(errors(&sft(legacy)), ["wrong_purpose"]);
    }

    #[test]
    fn labels() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"messages":[{"content":"first"},{"content":"last"}],"n":3,"f":1.5,"b":true,"o":{},"a/b":{"c~d":"esc"},"arr":[]}"#,
        )
        .unwrap();
        assert_eq!(extract_label(&v, "/messages/-1/content").as_deref(), Some("last"));
        assert_eq!(extract_label(&v, "/messages/0/content").as_deref(), Some("first"));
        assert_eq!(extract_label(&v, "/n").as_deref(), Some("3"));
        assert_eq!(extract_label(&v, "/f").as_deref(), Some("1.5"));
        assert_eq!(extract_label(&v, "/b").as_deref(), Some("true"));
        assert_eq!(extract_label(&v, "/a~1b/c~0d").as_deref(), Some("esc"));
        assert_eq!(extract_label(&v, "/o"), None);
        assert_eq!(extract_label(&v, "/arr/-1"), None);
        assert_eq!(extract_label(&v, "/messages/2/content"), None);
        assert_eq!(extract_label(&v, "/messages/01/content"), None);
        assert_eq!(extract_label(&v, "/messages/-2/content"), None);
        assert_eq!(extract_label(&v, "n"), None);
        assert_eq!(extract_label(&v, "/x~2"), None);

        let opts = LineOptions {
            label_pointer: Some("/messages/-1/content".into()),
            ..LineOptions::default()
        };
        let out = validate_line(1, SFT_OK.as_bytes(), &opts, &O200k);
        assert_eq!(out.label.as_deref(), Some("Hello! How can I help?"));
        let opts = LineOptions {
            label_pointer: Some("/category".into()),
            ..LineOptions::default()
        };
        let out = validate_line(1, SFT_OK.as_bytes(), &opts, &O200k);
        assert_eq!(out.label, None);
        assert_eq!(warnings(&out), ["missing_label"]);
        assert!(out.example.is_some());
    }

    #[test]
    fn fingerprint_ignores_formatting_only() {
        let a = sft(SFT_OK).fingerprint;
        let spaced = SFT_OK.replace(",", " , ").replace(":", " : ");
        assert_eq!(sft(&spaced).fingerprint, a);
        let escaped = SFT_OK.replace("Hi there", "Hi th\\u0065re");
        assert_eq!(sft(&escaped).fingerprint, a);
        assert_ne!(sft(&SFT_OK.replace("Hi there", "Hi there!")).fingerprint, a);
    }

    /// Fixed-seed mutation loop: no input may panic, and the
    /// example-iff-no-errors contract must hold.
    #[test]
    fn mini_fuzz_validate_line() {
        let seeds = [
            SFT_OK,
            DPO_OK,
            RFT_OK,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://a/b.png"}}]},{"role":"assistant","tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]}],"tools":[{"type":"function","function":{"name":"f"}}]}"#,
        ];
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let opts: Vec<LineOptions> = Purpose::ALL
            .iter()
            .map(|&p| LineOptions {
                label_pointer: Some("/messages/-1/content".into()),
                ..LineOptions::new(p)
            })
            .collect();
        for _ in 0..6_000 {
            let mut line = seeds[rng.random_range(0..seeds.len())].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..4) {
                mutate(&mut rng, &mut line, &seeds);
            }
            for o in &opts {
                let out = validate_line(1, &line, o, &O200k);
                assert_eq!(
                    out.example.is_some(),
                    !out.has_errors(),
                    "{}",
                    String::from_utf8_lossy(&line)
                );
            }
        }
    }

    pub(crate) fn mutate(rng: &mut StdRng, line: &mut Vec<u8>, seeds: &[&str]) {
        if line.is_empty() {
            line.push(b'{');
        }
        let i = rng.random_range(0..line.len());
        match rng.random_range(0..6) {
            0 => line[i] ^= 1 << rng.random_range(0..8),
            1 => line.truncate(i),
            2 => {
                let other = seeds[rng.random_range(0..seeds.len())].as_bytes();
                let j = rng.random_range(0..other.len());
                line.truncate(i);
                line.extend_from_slice(&other[j..]);
            }
            3 => {
                let tokens: &[&[u8]] = &[
                    b"[",
                    b"]",
                    b"{",
                    b"}",
                    b"\"",
                    b",",
                    b":",
                    b"null",
                    b"\\",
                    b"\xe2\x82",
                    b"-1",
                    b"1e999",
                    b"\"role\":\"tool\"",
                ];
                let t = tokens[rng.random_range(0..tokens.len())];
                line.splice(i..i, t.iter().copied());
            }
            4 => {
                line.remove(i);
            }
            _ => {
                let j = rng.random_range(i..line.len());
                let dup = line[i..j].to_vec();
                line.splice(j..j, dup);
            }
        }
    }
}
