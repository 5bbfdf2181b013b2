//! JSON <-> `google.protobuf.Struct`/`Value`/`ListValue`: how OpenAI's
//! free-form JSON (graders, items, messages) travels in Lathe's messages.
//! Used by the server's conversions and by clients alike.

pub fn json_from_value(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            // Whole numbers come back as integers, as users wrote them.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(n as i64)
            } else {
                serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.into_iter().map(json_from_value).collect()),
        Some(Kind::StructValue(s)) => json_from_struct(s),
    }
}

pub fn json_from_struct(s: prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.into_iter().map(|(k, v)| (k, json_from_value(v))).collect())
}

pub fn value_from_json(v: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(_) => Kind::StructValue(struct_from_json(v)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn struct_from_json(v: &serde_json::Value) -> prost_types::Struct {
    let fields = match v {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), value_from_json(v))).collect(),
        _ => Default::default(),
    };
    prost_types::Struct { fields }
}

/// A JSON array from a `ListValue` (empty when absent).
pub fn json_list(l: Option<prost_types::ListValue>) -> Vec<serde_json::Value> {
    l.map(|l| l.values.into_iter().map(json_from_value).collect())
        .unwrap_or_default()
}

pub fn list_value(values: &[serde_json::Value]) -> prost_types::ListValue {
    prost_types::ListValue {
        values: values.iter().map(value_from_json).collect(),
    }
}
