//! Target function calls enumerated from OpenAI function definitions: the
//! first step of making function-calling data from tool schemas. Each
//! argument gets candidate values from its schema (every `enum` value,
//! both booleans, numbers at and inside their bounds, dates for date
//! formats, `examples`, `default`, or values the request gives for a field
//! name); an optional argument may also be left out. The calls are the
//! product of the candidates per function, sampled evenly across functions
//! (then uniformly within each) when the product exceeds the budget; the
//! same definitions, budget and seed give the same calls.

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use crate::error::FieldViolation;

/// Candidate values kept per argument (an `enum` longer than this is
/// sampled), so one argument cannot swamp a function's product.
pub const MAX_VALUES_PER_ARGUMENT: usize = 16;
/// Combinations of a nested object kept as its candidates.
const NESTED_COMBINATIONS: usize = 4;
/// Deepest nesting of objects and arrays followed.
const MAX_DEPTH: usize = 4;

/// One call to make data for.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetCall {
    pub function: String,
    pub arguments: Map<String, Value>,
}

/// How a function's calls were chosen.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionPlan {
    pub name: String,
    /// Every combination of its candidates (saturating).
    pub combinations: u128,
    pub chosen: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub calls: Vec<TargetCall>,
    pub functions: Vec<FunctionPlan>,
}

/// A function's arguments and their candidates (`None`: left out).
struct Function {
    name: String,
    arguments: Vec<(String, Vec<Option<Value>>)>,
}

impl Function {
    fn combinations(&self) -> u128 {
        self.arguments
            .iter()
            .fold(1u128, |n, (_, c)| n.saturating_mul(c.len() as u128))
    }

    /// Combination `index` in mixed radix, the last argument fastest.
    fn call(&self, mut index: u128) -> TargetCall {
        let mut picks = vec![0usize; self.arguments.len()];
        for (i, (_, candidates)) in self.arguments.iter().enumerate().rev() {
            let radix = candidates.len() as u128;
            picks[i] = (index % radix) as usize;
            index /= radix;
        }
        let mut arguments = Map::new();
        for ((name, candidates), pick) in self.arguments.iter().zip(picks) {
            if let Some(v) = &candidates[pick] {
                arguments.insert(name.clone(), v.clone());
            }
        }
        TargetCall {
            function: self.name.clone(),
            arguments,
        }
    }
}

/// The calls for `tools` (OpenAI's `[{"type": "function", "function":
/// {...}}]`, or the bare function objects) within `budget`. `values` gives
/// candidates for arguments by name (free-text strings need them, or
/// `enum`, `examples` or `default` in their schema). Problems name the
/// tool and argument (`tools[2].function.parameters.properties.city`).
pub fn plan(
    tools: &[Value],
    values: &BTreeMap<String, Vec<Value>>,
    budget: u64,
    seed: u64,
) -> Result<Plan, Vec<FieldViolation>> {
    let mut problems = Vec::new();
    if tools.is_empty() {
        problems.push(FieldViolation::new("tools", "give at least one function definition"));
    }
    if budget == 0 {
        problems.push(FieldViolation::new("max_calls", "must be at least 1"));
    }
    let mut functions = Vec::new();
    let mut names = BTreeSet::new();
    for (i, tool) in tools.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        if let Some(f) = function(tool, &format!("tools[{i}]"), values, &mut rng, &mut problems) {
            if !names.insert(f.name.clone()) {
                problems.push(FieldViolation::new(
                    format!("tools[{i}]"),
                    format!("function {:?} is defined twice", f.name),
                ));
            }
            functions.push(f);
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let totals: Vec<u128> = functions.iter().map(Function::combinations).collect();
    let shares = shares(&totals, budget);
    let mut calls = Vec::new();
    let mut plans = Vec::new();
    for (i, ((f, total), share)) in functions.iter().zip(&totals).zip(&shares).enumerate() {
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        for index in choose(*total, *share, &mut rng) {
            calls.push(f.call(index));
        }
        plans.push(FunctionPlan {
            name: f.name.clone(),
            combinations: *total,
            chosen: *share,
        });
    }
    Ok(Plan {
        calls,
        functions: plans,
    })
}

/// The budget split across functions: as evenly as their totals allow,
/// what a small function cannot use going to the others.
fn shares(totals: &[u128], budget: u64) -> Vec<u64> {
    let mut shares = vec![0u64; totals.len()];
    let mut left = budget;
    loop {
        let open: Vec<usize> = (0..totals.len())
            .filter(|&i| u128::from(shares[i]) < totals[i])
            .collect();
        if open.is_empty() || left == 0 {
            return shares;
        }
        let each = (left / open.len() as u64).max(1);
        for i in open {
            if left == 0 {
                break;
            }
            let room = totals[i] - u128::from(shares[i]);
            let give = u128::from(each.min(left)).min(room) as u64;
            shares[i] += give;
            left -= give;
        }
    }
}

/// `k` distinct indices below `total`, ascending: all of them when `k`
/// covers them, else a uniform sample.
fn choose(total: u128, k: u64, rng: &mut StdRng) -> Vec<u128> {
    if u128::from(k) >= total {
        return (0..total).collect();
    }
    let mut picked = BTreeSet::new();
    if total <= 4 * u128::from(k) {
        // Dense: a partial shuffle of every index.
        let mut all: Vec<u128> = (0..total).collect();
        for i in 0..k as usize {
            let j = rng.random_range(i..all.len());
            all.swap(i, j);
        }
        picked.extend(all.into_iter().take(k as usize));
    } else {
        while (picked.len() as u64) < k {
            picked.insert(rng.random_range(0..total));
        }
    }
    picked.into_iter().collect()
}

fn function(
    tool: &Value,
    at: &str,
    values: &BTreeMap<String, Vec<Value>>,
    rng: &mut StdRng,
    problems: &mut Vec<FieldViolation>,
) -> Option<Function> {
    let (def, at) = match tool.get("function") {
        Some(def) if tool.get("type").and_then(Value::as_str).unwrap_or("function") == "function" => {
            (def, format!("{at}.function"))
        }
        Some(_) => {
            problems.push(FieldViolation::new(
                format!("{at}.type"),
                "only function tools make calls",
            ));
            return None;
        }
        None => (tool, at.to_string()),
    };
    let Some(name) = def.get("name").and_then(Value::as_str).filter(|n| valid_name(n)) else {
        problems.push(FieldViolation::new(
            format!("{at}.name"),
            "a function needs a name of 1 to 64 letters, digits, underscores or dashes",
        ));
        return None;
    };
    let params_at = format!("{at}.parameters");
    let Some(params) = def.get("parameters") else {
        return Some(Function {
            name: name.to_string(),
            arguments: Vec::new(),
        });
    };
    let before = problems.len();
    let arguments = object_arguments(params, &params_at, name, values, rng, 0, problems);
    (problems.len() == before).then(|| Function {
        name: name.to_string(),
        arguments,
    })
}

fn valid_name(n: &str) -> bool {
    (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The schema's type, with the spellings of Python-made schemas (BFCL's
/// `dict`, `float`, `tuple`) read as JSON Schema's.
fn type_of(schema: &Value) -> Option<&str> {
    let t = match schema.get("type")? {
        Value::String(t) => t.as_str(),
        // ["string", "null"]: the first non-null type.
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).find(|t| *t != "null")?,
        _ => return None,
    };
    Some(match t {
        "dict" => "object",
        "float" => "number",
        "tuple" => "array",
        other => other,
    })
}

fn object_arguments(
    schema: &Value,
    at: &str,
    function: &str,
    values: &BTreeMap<String, Vec<Value>>,
    rng: &mut StdRng,
    depth: usize,
    problems: &mut Vec<FieldViolation>,
) -> Vec<(String, Vec<Option<Value>>)> {
    if !schema.is_object() || type_of(schema).is_some_and(|t| t != "object") {
        problems.push(FieldViolation::new(
            at,
            format!("function {function}: parameters must be a JSON Schema of type object"),
        ));
        return Vec::new();
    }
    let empty = Map::new();
    let properties = match schema.get("properties") {
        None => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => {
            problems.push(FieldViolation::new(
                format!("{at}.properties"),
                format!("function {function}: properties must be an object"),
            ));
            return Vec::new();
        }
    };
    let required: Vec<&str> = match schema.get("required") {
        None => Vec::new(),
        Some(Value::Array(r)) if r.iter().all(Value::is_string) => r.iter().filter_map(Value::as_str).collect(),
        Some(_) => {
            problems.push(FieldViolation::new(
                format!("{at}.required"),
                format!("function {function}: required must be a list of argument names"),
            ));
            return Vec::new();
        }
    };
    for r in &required {
        if !properties.contains_key(*r) {
            problems.push(FieldViolation::new(
                format!("{at}.required"),
                format!("function {function}: {r:?} is required but not among its properties"),
            ));
        }
    }
    let mut arguments = Vec::new();
    for (name, prop) in properties {
        let prop_at = format!("{at}.properties.{name}");
        let Some(mut candidates) = candidates(prop, &prop_at, function, name, values, rng, depth, problems) else {
            continue;
        };
        let mut options: Vec<Option<Value>> = candidates.drain(..).map(Some).collect();
        if !required.contains(&name.as_str()) {
            options.push(None);
        }
        arguments.push((name.clone(), options));
    }
    arguments
}

#[allow(clippy::too_many_arguments)]
fn candidates(
    schema: &Value,
    at: &str,
    function: &str,
    name: &str,
    values: &BTreeMap<String, Vec<Value>>,
    rng: &mut StdRng,
    depth: usize,
    problems: &mut Vec<FieldViolation>,
) -> Option<Vec<Value>> {
    let violation =
        |message: String| FieldViolation::new(at, format!("function {function}, argument {name}: {message}"));
    macro_rules! fail {
        ($message:expr) => {{
            problems.push(violation($message));
            return None;
        }};
    }
    if !schema.is_object() {
        fail!("its schema must be a JSON object".into());
    }
    if depth >= MAX_DEPTH {
        fail!(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    if let Some(given) = values.get(name).filter(|v| !v.is_empty()) {
        return Some(bounded(given.clone(), rng));
    }
    if let Some(c) = schema.get("const") {
        return Some(vec![c.clone()]);
    }
    for key in ["enum", "examples"] {
        match schema.get(key) {
            Some(Value::Array(list)) if !list.is_empty() => return Some(bounded(list.clone(), rng)),
            Some(_) => fail!(format!("{key} must be a non-empty list")),
            None => {}
        }
    }
    let default = schema.get("default").filter(|d| !d.is_null()).cloned();
    let mut out = match type_of(schema) {
        Some("boolean") => vec![json!(true), json!(false)],
        Some("null") => vec![Value::Null],
        Some("integer") => match int_bounds(schema) {
            Ok((lo, hi)) => numbers(lo, hi, rng).into_iter().map(|n| json!(n)).collect(),
            Err(m) => fail!(m),
        },
        Some("number") => match float_bounds(schema) {
            Ok((lo, hi)) => {
                let mid = (lo + (hi - lo) * rng.random_range(0.2..0.8) * 100.0).round() / 100.0;
                let mut v = vec![json!(lo), json!(mid.clamp(lo, hi)), json!(hi)];
                v.dedup();
                v
            }
            Err(m) => fail!(m),
        },
        Some("string") => match schema.get("format").and_then(Value::as_str) {
            Some("date") => (0..2).map(|_| json!(date(rng))).collect(),
            Some("date-time") => (0..2).map(|_| json!(format!("{}T{}Z", date(rng), time(rng)))).collect(),
            Some("time") => (0..2).map(|_| json!(time(rng))).collect(),
            _ if default.is_some() => Vec::new(),
            _ => fail!(
                "free text: give its values (by argument name), or enum, examples or default in its schema".into()
            ),
        },
        Some("array") => {
            let Some(items) = schema.get("items") else {
                fail!("an array needs an items schema".into());
            };
            let inner = candidates(
                items,
                &format!("{at}.items"),
                function,
                name,
                values,
                rng,
                depth + 1,
                problems,
            )?;
            let min = schema.get("minItems").and_then(Value::as_u64).unwrap_or(1).max(1) as usize;
            let max = schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .map_or(usize::MAX, |m| m as usize);
            let mut lists = Vec::new();
            for n in [min, min + 1] {
                if n <= max && n <= inner.len() {
                    lists.push(json!(inner[..n].to_vec()));
                }
            }
            if lists.is_empty() {
                fail!(format!("cannot make a list of {min} items from its item values"));
            }
            lists
        }
        Some("object") => {
            let before = problems.len();
            let nested = Function {
                name: function.to_string(),
                arguments: object_arguments(schema, at, function, values, rng, depth + 1, problems),
            };
            if problems.len() > before {
                return None;
            }
            let total = nested.combinations();
            choose(total, NESTED_COMBINATIONS as u64, rng)
                .into_iter()
                .map(|i| Value::Object(nested.call(i).arguments))
                .collect()
        }
        Some(other) => fail!(format!("unknown type {other:?}")),
        None => fail!("its schema has no type (or enum, const, examples)".into()),
    };
    if let Some(d) = default
        && !out.contains(&d)
    {
        out.insert(0, d);
    }
    Some(out)
}

/// At most [`MAX_VALUES_PER_ARGUMENT`], in their order.
fn bounded(mut list: Vec<Value>, rng: &mut StdRng) -> Vec<Value> {
    if list.len() > MAX_VALUES_PER_ARGUMENT {
        let keep: BTreeSet<usize> = choose(list.len() as u128, MAX_VALUES_PER_ARGUMENT as u64, rng)
            .into_iter()
            .map(|i| i as usize)
            .collect();
        list = list
            .into_iter()
            .enumerate()
            .filter(|(i, _)| keep.contains(i))
            .map(|(_, v)| v)
            .collect();
    }
    list
}

fn int_bounds(schema: &Value) -> Result<(i64, i64), String> {
    let get = |k: &str| schema.get(k).and_then(Value::as_f64);
    let lo = get("minimum")
        .map(|m| m.ceil() as i64)
        .or(get("exclusiveMinimum").map(|m| m.floor() as i64 + 1));
    let hi = get("maximum")
        .map(|m| m.floor() as i64)
        .or(get("exclusiveMaximum").map(|m| m.ceil() as i64 - 1));
    let (lo, hi) = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo, hi),
        (Some(lo), None) => (lo, lo.saturating_add(100)),
        (None, Some(hi)) => (hi.saturating_sub(100), hi),
        (None, None) => (1, 100),
    };
    if lo > hi {
        return Err(format!("its bounds leave no integer ({lo} > {hi})"));
    }
    Ok((lo, hi))
}

fn float_bounds(schema: &Value) -> Result<(f64, f64), String> {
    let get = |k: &str| schema.get(k).and_then(Value::as_f64);
    let lo = get("minimum").or(get("exclusiveMinimum"));
    let hi = get("maximum").or(get("exclusiveMaximum"));
    let (lo, hi) = match (lo, hi) {
        (Some(lo), Some(hi)) => (lo, hi),
        (Some(lo), None) => (lo, lo + 100.0),
        (None, Some(hi)) => (hi - 100.0, hi),
        (None, None) => (0.0, 100.0),
    };
    if lo > hi || !lo.is_finite() || !hi.is_finite() {
        return Err(format!("its bounds leave no number ({lo} > {hi})"));
    }
    Ok((lo, hi))
}

/// The bounds and one value strictly inside them, when there is room.
fn numbers(lo: i64, hi: i64, rng: &mut StdRng) -> Vec<i64> {
    let mut v = vec![lo];
    if hi - lo >= 2 {
        v.push(rng.random_range(lo + 1..hi));
    }
    if hi != lo {
        v.push(hi);
    }
    v
}

fn date(rng: &mut StdRng) -> String {
    format!(
        "{}-{:02}-{:02}",
        rng.random_range(2024..=2027),
        rng.random_range(1..=12),
        rng.random_range(1..=28)
    )
}

fn time(rng: &mut StdRng) -> String {
    format!("{:02}:{:02}:00", rng.random_range(0..24), rng.random_range(0..4) * 15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!({"type": "function", "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "required": ["city"], "properties": {
                "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "alerts": {"type": "boolean"}
            }}
        }})
    }

    fn no_values() -> BTreeMap<String, Vec<Value>> {
        BTreeMap::new()
    }

    #[test]
    fn every_combination_when_the_budget_covers_the_product() {
        let p = plan(&[weather()], &no_values(), 10_000, 7).unwrap();
        // city 3 (required) × unit 2+absent × days 3+absent × alerts 2+absent.
        assert_eq!(p.functions[0].combinations, 3 * 3 * 4 * 3);
        assert_eq!(p.calls.len(), 108);
        let distinct: BTreeSet<String> = p
            .calls
            .iter()
            .map(|c| Value::Object(c.arguments.clone()).to_string())
            .collect();
        assert_eq!(distinct.len(), 108, "no call twice");
        assert!(
            p.calls.iter().all(|c| c.arguments.contains_key("city")),
            "required is always there"
        );
        assert!(
            p.calls.iter().any(|c| !c.arguments.contains_key("unit")),
            "optional may be left out"
        );
        let days: BTreeSet<i64> = p
            .calls
            .iter()
            .filter_map(|c| c.arguments.get("days")?.as_i64())
            .collect();
        assert!(days.contains(&1) && days.contains(&7) && days.len() == 3, "{days:?}");
        assert!(days.iter().all(|d| (1..=7).contains(d)));
    }

    #[test]
    fn over_budget_the_calls_are_shared_evenly_and_the_same_seed_gives_the_same_calls() {
        let small = json!({"name": "ping", "parameters": {"type": "object", "properties": {}}});
        let tools = [
            weather(),
            small.clone(),
            json!({"name": "other", "parameters": weather()["function"]["parameters"]}),
        ];
        let p = plan(&tools, &no_values(), 41, 1).unwrap();
        let chosen: Vec<u64> = p.functions.iter().map(|f| f.chosen).collect();
        // ping has one call; the other two split the rest.
        assert_eq!(chosen, [20, 1, 20]);
        assert_eq!(p.calls.len(), 41);
        assert_eq!(plan(&tools, &no_values(), 41, 1).unwrap(), p, "deterministic");
        assert_ne!(
            plan(&tools, &no_values(), 41, 2).unwrap().calls,
            p.calls,
            "the seed matters"
        );
        let weather_calls: BTreeSet<String> = p.calls[..20]
            .iter()
            .map(|c| Value::Object(c.arguments.clone()).to_string())
            .collect();
        assert_eq!(weather_calls.len(), 20, "distinct within a function");
    }

    #[test]
    fn free_text_needs_values_and_bad_schemas_name_their_function_and_argument() {
        let search = json!({"name": "search", "parameters": {"type": "object", "required": ["query"],
            "properties": {"query": {"type": "string"}, "when": {"type": "string", "format": "date"}}}});
        let err = plan(std::slice::from_ref(&search), &no_values(), 10, 0).unwrap_err();
        assert_eq!(err[0].field, "tools[0].parameters.properties.query");
        assert!(
            err[0]
                .description
                .contains("function search, argument query: free text"),
            "{err:?}"
        );

        let values = BTreeMap::from([("query".to_string(), vec![json!("rust"), json!("tonic")])]);
        let p = plan(std::slice::from_ref(&search), &values, 100, 0).unwrap();
        assert_eq!(p.functions[0].combinations, 2 * 3);
        let dates: Vec<&str> = p
            .calls
            .iter()
            .filter_map(|c| c.arguments.get("when")?.as_str())
            .collect();
        assert!(
            dates.iter().all(|d| d.len() == 10 && d.as_bytes()[4] == b'-'),
            "{dates:?}"
        );

        let bad = [
            json!({"type": "function", "function": {"parameters": {}}}),
            json!({"name": "f", "parameters": {"type": "object", "required": ["x"], "properties": {}}}),
            json!({"name": "g", "parameters": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 1}}}}),
            json!({"name": "h", "parameters": {"type": "object", "properties": {"e": {"enum": []}}}}),
            json!({"name": "f", "parameters": {"type": "string"}}),
            json!({"name": "i", "parameters": {"type": "object", "properties": {"x": {"type": "color"}}}}),
        ];
        let err = plan(&bad, &no_values(), 10, 0).unwrap_err();
        let fields: Vec<&str> = err.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "tools[0].function.name",
                "tools[1].parameters.required",
                "tools[2].parameters.properties.n",
                "tools[3].parameters.properties.e",
                "tools[4].parameters",
                "tools[5].parameters.properties.x",
            ],
            "{err:?}"
        );
        assert!(plan(&[], &no_values(), 10, 0).is_err());
        assert!(plan(&[weather()], &no_values(), 0, 0).is_err());
    }

    #[test]
    fn nested_objects_arrays_and_python_style_types() {
        let tool = json!({"name": "book", "parameters": {"type": "dict", "required": ["guests", "room"], "properties": {
            "guests": {"type": "array", "items": {"type": "string", "enum": ["ana", "bo", "cy"]}, "maxItems": 2},
            "room": {"type": "dict", "required": ["kind"], "properties": {
                "kind": {"type": "string", "enum": ["single", "double"]},
                "floor": {"type": "integer", "minimum": 1, "maximum": 1}
            }},
            "budget": {"type": "float", "minimum": 50, "maximum": 500}
        }}});
        let p = plan(&[tool], &no_values(), 1000, 3).unwrap();
        for call in &p.calls {
            let guests = call.arguments["guests"].as_array().unwrap();
            assert!((1..=2).contains(&guests.len()));
            assert!(call.arguments["room"]["kind"].is_string());
            if let Some(b) = call.arguments.get("budget") {
                assert!((50.0..=500.0).contains(&b.as_f64().unwrap()));
            }
        }
        // guests 2 lists × room (2 kinds × floor 1|absent = 4) × budget 3+absent.
        assert_eq!(p.functions[0].combinations, 2 * 4 * 4);
    }

    #[test]
    fn shares_fill_what_small_functions_leave() {
        assert_eq!(shares(&[1000, 1000], 10), [5, 5]);
        assert_eq!(shares(&[2, 1000, 1000], 10), [2, 4, 4]);
        assert_eq!(shares(&[3, 3], 100), [3, 3]);
        assert_eq!(shares(&[1000, 1000, 1000], 2), [1, 1, 0]);
    }
}
