//! A small JSON-schema subset for eval items: `type`, `required`,
//! `properties`, `enum` and `items`. Enough to catch a dataset that does not
//! fit an eval before a run spends model calls on it; unknown keywords are
//! refused when the eval is created rather than silently ignored.

use serde_json::Value;

const KEYWORDS: &[&str] = &[
    "type",
    "required",
    "properties",
    "enum",
    "items",
    "additionalProperties",
    "title",
    "description",
    "$schema",
];
const TYPES: &[&str] = &["object", "array", "string", "number", "integer", "boolean", "null"];

/// Problems with the schema itself, as (JSON pointer, message).
pub fn check_schema(schema: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    check_at(schema, "", &mut out);
    out
}

fn check_at(schema: &Value, at: &str, out: &mut Vec<(String, String)>) {
    let Some(map) = schema.as_object() else {
        out.push((at.to_string(), "a schema is a JSON object".into()));
        return;
    };
    for key in map.keys() {
        if !KEYWORDS.contains(&key.as_str()) {
            out.push((
                format!("{at}/{key}"),
                format!("unsupported keyword {key:?}; supported: type, required, properties, enum, items"),
            ));
        }
    }
    match map.get("type") {
        None => {}
        Some(Value::String(t)) if TYPES.contains(&t.as_str()) => {}
        Some(Value::Array(ts)) if ts.iter().all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t))) => {}
        Some(_) => out.push((
            format!("{at}/type"),
            format!("must be one of {TYPES:?} or a list of them"),
        )),
    }
    if let Some(r) = map.get("required")
        && !r.as_array().is_some_and(|a| a.iter().all(Value::is_string))
    {
        out.push((format!("{at}/required"), "must be a list of property names".into()));
    }
    if let Some(e) = map.get("enum")
        && !e.is_array()
    {
        out.push((format!("{at}/enum"), "must be a list of values".into()));
    }
    match map.get("properties") {
        None => {}
        Some(Value::Object(props)) => {
            for (name, sub) in props {
                check_at(sub, &format!("{at}/properties/{name}"), out);
            }
        }
        Some(_) => out.push((format!("{at}/properties"), "must be an object of schemas".into())),
    }
    if let Some(items) = map.get("items") {
        check_at(items, &format!("{at}/items"), out);
    }
    if let Some(extra) = map.get("additionalProperties")
        && !extra.is_boolean()
    {
        check_at(extra, &format!("{at}/additionalProperties"), out);
    }
}

/// Where `value` breaks `schema` (already checked), as (JSON pointer into
/// the value, message); at most `limit` problems.
pub fn validate(schema: &Value, value: &Value, limit: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    validate_at(schema, value, "", &mut out, limit);
    out
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(v: &Value, t: &str) -> bool {
    let actual = type_name(v);
    actual == t || (t == "number" && actual == "integer")
}

fn validate_at(schema: &Value, value: &Value, at: &str, out: &mut Vec<(String, String)>, limit: usize) {
    if out.len() >= limit {
        return;
    }
    let Some(map) = schema.as_object() else { return };
    let types: Vec<&str> = match map.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
        out.push((
            at.to_string(),
            format!("expected {}, found {}", types.join(" or "), type_name(value)),
        ));
        return;
    }
    if let Some(Value::Array(allowed)) = map.get("enum")
        && !allowed.contains(value)
    {
        out.push((
            at.to_string(),
            format!("must be one of {}", Value::Array(allowed.clone())),
        ));
    }
    if let Value::Object(obj) = value {
        if let Some(Value::Array(required)) = map.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(name) {
                    out.push((format!("{at}/{name}"), "is required".into()));
                }
            }
        }
        let props = map.get("properties").and_then(Value::as_object);
        for (name, v) in obj {
            let here = format!("{at}/{name}");
            match props.and_then(|p| p.get(name)) {
                Some(sub) => validate_at(sub, v, &here, out, limit),
                None => match map.get("additionalProperties") {
                    Some(Value::Bool(false)) => out.push((here, "is not an allowed property".into())),
                    Some(sub @ Value::Object(_)) => validate_at(sub, v, &here, out, limit),
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(sub)) = (value, map.get("items")) {
        for (i, v) in items.iter().enumerate() {
            validate_at(sub, v, &format!("{at}/{i}"), out, limit);
        }
    }
    out.truncate(limit);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn schemas_are_checked_and_items_validated() {
        let schema = json!({
            "type": "object",
            "required": ["question", "answer"],
            "properties": {
                "question": {"type": "string"},
                "answer": {"type": "string", "enum": ["yes", "no"]},
                "tags": {"type": "array", "items": {"type": "string"}},
                "n": {"type": "number"}
            }
        });
        assert!(check_schema(&schema).is_empty());
        assert!(
            validate(
                &schema,
                &json!({"question": "q", "answer": "yes", "tags": ["a"], "n": 3}),
                10
            )
            .is_empty()
        );
        let problems = validate(&schema, &json!({"answer": "maybe", "tags": ["a", 1]}), 10);
        let pointers: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/question", "/answer", "/tags/1"]);
        assert_eq!(validate(&schema, &json!([1]), 10)[0].1, "expected object, found array");

        let bad = check_schema(&json!({"type": "thing", "pattern": "x", "properties": {"a": 3}}));
        let pointers: Vec<&str> = bad.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/pattern", "/type", "/properties/a"]);
    }
}
