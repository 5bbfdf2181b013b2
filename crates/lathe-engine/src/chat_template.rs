//! Chat templates: a model's Jinja template rendered with minijinja the way
//! transformers' `apply_chat_template` renders it with Jinja2 (trim_blocks,
//! lstrip_blocks, no trailing newline; `raise_exception`, `strftime_now`, and
//! a `tojson` that writes what Python's `json.dumps` writes).
//!
//! Messages come in OpenAI form and are normalised first: content given as
//! parts becomes one string (text parts joined with "\n"), `null` fields are
//! dropped (as transformers drops `None`), and tool-call arguments given as a
//! JSON string are parsed to an object, which is what templates expect.
//!
//! Known difference: JSON object keys reach templates sorted (serde_json and
//! minijinja maps here do not keep insertion order), so `tojson` of a tool
//! whose keys were not sorted differs from Python in key order only.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};

/// A ChatML template for models without one.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("invalid chat template: {0}")]
    Syntax(String),
    #[error("rendering the chat template: {0}")]
    Render(String),
    #[error("invalid messages: {0}")]
    Messages(String),
}

/// A compiled chat template. `Send + Sync`.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            strftime_utc(&fmt, now_unix())
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// Renders a conversation. `messages` are OpenAI chat messages; `tools` an
    /// OpenAI tools array.
    pub fn render(
        &self,
        messages: &[serde_json::Value],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let messages = messages.iter().map(normalise_message).collect::<Result<Vec<_>, _>>()?;
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TemplateError::Syntax(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(&messages),
            tools => tools.filter(|t| !t.is_null()).map(Value::from_serialize).unwrap_or(Value::from(())),
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            add_generation_prompt => add_generation_prompt,
        };
        tmpl.render(ctx).map_err(|e| TemplateError::Render(describe(&e)))
    }
}

/// OpenAI message -> what chat templates expect (see the module docs).
fn normalise_message(m: &serde_json::Value) -> Result<serde_json::Value, TemplateError> {
    use serde_json::Value as J;
    let J::Object(obj) = m else {
        return Err(TemplateError::Messages(format!("a message must be an object, got {m}")));
    };
    let mut out = serde_json::Map::new();
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        let v = match (k.as_str(), v) {
            ("content", J::Array(parts)) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter(|p| p["type"] == "text" || (p.get("type").is_none() && p["text"].is_string()))
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                J::String(texts.join("\n"))
            }
            ("tool_calls", J::Array(calls)) => J::Array(calls.iter().map(parse_arguments).collect()),
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Ok(J::Object(out))
}

fn parse_arguments(call: &serde_json::Value) -> serde_json::Value {
    let mut call = call.clone();
    if let Some(args) = call.pointer_mut("/function/arguments")
        && let Some(s) = args.as_str()
        && let Ok(parsed @ serde_json::Value::Object(_)) = serde_json::from_str::<serde_json::Value>(s)
    {
        *args = parsed;
    }
    call
}

/// Jinja's `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False,
/// indent=None, separators=None, sort_keys=False)`, no HTML escaping.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent: Option<String> = match kwargs.get::<Option<Value>>("indent")? {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => Some(" ".repeat(i64::try_from(v)?.max(0) as usize)),
        },
    };
    let (item_sep, key_sep) = match kwargs.get::<Option<Vec<String>>>("separators")? {
        Some(s) if s.len() == 2 => (s[0].clone(), s[1].clone()),
        Some(_) => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be a pair",
            ));
        }
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    kwargs.assert_all_used()?;
    let json =
        serde_json::to_value(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let opts = DumpOpts {
        ensure_ascii,
        sort_keys,
        indent,
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    dump(&json, &opts, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct DumpOpts {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

/// Python's `json.dumps`.
fn dump(v: &serde_json::Value, o: &DumpOpts, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = &o.indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    match v {
        J::Null => out.push_str("null"),
        J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        J::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&py_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        J::String(s) => dump_str(s, o.ensure_ascii, out),
        J::Array(a) if a.is_empty() => out.push_str("[]"),
        J::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                dump(x, o, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(m) if m.is_empty() => out.push_str("{}"),
        J::Object(m) => {
            let mut entries: Vec<(&String, &serde_json::Value)> = m.iter().collect();
            if o.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push('{');
            for (i, (k, x)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(&o.item_sep);
                }
                newline(out, level + 1);
                dump_str(k, o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                dump(x, o, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
    }
}

fn dump_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ensure_ascii && (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` (as json.dumps writes floats).
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if f == 0.0 {
        return if f.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Shortest round-trip digits and decimal exponent.
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').unwrap();
    let exp: i32 = exp.parse().unwrap();
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') { s } else { format!("{s}.0") }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", exp.abs())
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `strftime` for a UTC timestamp (the common specifiers; others are kept as written).
fn strftime_utc(fmt: &str, unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (h, mi, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday.
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let cum = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = cum[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let month = MONTHS[(m - 1) as usize];
    let day = DAYS[weekday];
    let h12 = if h % 12 == 0 { 12 } else { h % 12 };
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('-') => match chars.next() {
                Some('d') => out.push_str(&d.to_string()),
                Some('m') => out.push_str(&m.to_string()),
                Some('H') => out.push_str(&h.to_string()),
                Some('I') => out.push_str(&h12.to_string()),
                Some(o) => {
                    out.push_str("%-");
                    out.push(o);
                }
                None => out.push_str("%-"),
            },
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{h12:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month),
            Some('b') | Some('h') => out.push_str(&month[..3]),
            Some('A') => out.push_str(day),
            Some('a') => out.push_str(&day[..3]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('F') => out.push_str(&format!("{y}-{m:02}-{d:02}")),
            Some('T') => out.push_str(&format!("{h:02}:{mi:02}:{s:02}")),
            Some('Z') => out.push_str("UTC"),
            Some('z') => out.push_str("+0000"),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chatml_renders() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let msgs = [
            json!({"role": "system", "content": "S"}),
            json!({"role": "user", "content": "hi"}),
        ];
        assert_eq!(
            t.render(&msgs, None, true).unwrap(),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            t.render(&msgs[1..], None, false).unwrap(),
            "<|im_start|>user\nhi<|im_end|>\n"
        );
    }

    #[test]
    fn content_parts_and_arguments_are_normalised() {
        let src = "{% for m in messages %}{{ m.content }}|{% for c in m.tool_calls %}{{ c.function.arguments.city }}{{ c.function.arguments | tojson }}{% endfor %};{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let msgs = [
            json!({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "b"}]}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "w", "arguments": "{\"city\": \"Paris\", \"n\": [1, 2.5, null]}"}}]}),
            json!({"role": "assistant", "content": "x", "tool_calls": [{"function": {"name": "w", "arguments": "not json"}}]}),
        ];
        assert_eq!(
            t.render(&msgs, None, false).unwrap(),
            "a\nb|;|Paris{\"city\": \"Paris\", \"n\": [1, 2.5, null]};x|\"not json\";"
        );
    }

    #[test]
    fn tojson_matches_python() {
        let t = ChatTemplate::new(
            "{{ x | tojson }} {{ x | tojson(indent=2) }} {{ x | tojson(ensure_ascii=true) }} {{ x | tojson(separators=[',', ':']) }}",
            "",
            "",
        )
        .unwrap();
        let env = &t.env;
        let out = env
            .get_template("chat")
            .unwrap()
            .render(minijinja::context! { x => Value::from_serialize(json!({"a": [1, 1.0, 1e20, "é<&>\n"], "b": {}})) })
            .unwrap();
        assert_eq!(
            out,
            "{\"a\": [1, 1.0, 1e+20, \"é<&>\\n\"], \"b\": {}} {\n  \"a\": [\n    1,\n    1.0,\n    1e+20,\n    \"é<&>\\n\"\n  ],\n  \"b\": {}\n} {\"a\": [1, 1.0, 1e+20, \"\\u00e9<&>\\n\"], \"b\": {}} {\"a\":[1,1.0,1e+20,\"é<&>\\n\"],\"b\":{}}"
        );
    }

    #[test]
    fn helpers_and_errors() {
        let t = ChatTemplate::new(
            "{% if messages | length == 0 %}{{ raise_exception('need a message') }}{% endif %}{{ bos_token }}{{ messages[0].content.strip().upper() }}{{ eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(
            t.render(&[json!({"role": "user", "content": "  hi "})], None, false)
                .unwrap(),
            "<s>HI</s>"
        );
        let e = t.render(&[], None, false).unwrap_err().to_string();
        assert!(e.contains("need a message"), "{e}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        // trim_blocks + lstrip_blocks, and no trailing newline kept.
        let t = ChatTemplate::new(
            "  {% if true %}\nA\n  {% endif %}\n{% if tools %}T{% endif %}\n",
            "",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "A\n");
        assert_eq!(
            t.render(&[], Some(&json!([{"type": "function"}])), false).unwrap(),
            "A\nT"
        );
    }

    #[test]
    fn strftime() {
        // 2024-02-29T13:05:09Z, a Thursday.
        let ts = 1_709_211_909;
        assert_eq!(
            strftime_utc("%Y-%m-%d %H:%M:%S %a %A %b %B %j %I%p %-d %y %%", ts),
            "2024-02-29 13:05:09 Thu Thursday Feb February 060 01PM 29 24 %"
        );
        assert_eq!(strftime_utc("%d %b %Y", 0), "01 Jan 1970");
        let t = ChatTemplate::new("{{ strftime_now('%Y') | length }}", "", "").unwrap();
        assert_eq!(t.render(&[], None, false).unwrap(), "4");
    }

    #[test]
    fn floats_like_python() {
        for (f, s) in [
            (0.5, "0.5"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-2.5e-7, "-2.5e-07"),
            (123.456, "123.456"),
        ] {
            assert_eq!(py_float(f), s);
        }
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<ChatTemplate>();
    }
}
