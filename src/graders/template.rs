//! `{{ namespace.path }}` templates as OpenAI graders use them.
//!
//! Only the `item` and `sample` namespaces exist. Paths take `.key`, `[index]` and
//! `["key"]` steps. A variable that does not resolve is an error the caller turns into
//! `invalid_variable_error`; rendering it as an empty string would silently reward or
//! punish every sample the same way.

use std::borrow::Cow;

use serde_json::Value;

use super::sample::Sample;

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
    /// Set when the whole template is one of the two variables nearly every grader
    /// uses, so [`Template::render_cow`] reads it without walking a path.
    direct: Option<Direct>,
}

#[derive(Debug, Clone, PartialEq)]
enum Direct {
    /// `{{ sample.output_text }}`
    OutputText,
    /// `{{ item.key }}`
    ItemKey(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Literal(String),
    Variable(Variable),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Variable {
    pub namespace: Namespace,
    pub path: Vec<Step>,
    /// The expression as written, for error messages.
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Item,
    Sample,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// Why a variable did not render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The path does not exist in the item or the sample.
    Missing(String),
    /// The template reads `sample.output_json` but the sample text was not JSON.
    SampleNotJson(String),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(v) => write!(f, "template variable {{{{ {v} }}}} does not exist"),
            Self::SampleNotJson(v) => write!(f, "{{{{ {v} }}}} needs the sample output to be valid JSON"),
        }
    }
}

const MAX_PATH_STEPS: usize = 64;

impl Template {
    /// Parses a template; the error explains the first bad `{{ ... }}`.
    pub fn parse(raw: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = raw;
        let mut literal = String::new();
        while let Some(open) = rest.find("{{") {
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else {
                // An unclosed `{{` is plain text, as in Jinja-free OpenAI templates.
                break;
            };
            literal.push_str(&rest[..open]);
            let expr = after[..close].trim();
            let variable = parse_variable(expr)?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Variable(variable));
            rest = &after[close + 2..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        let direct = match parts.as_slice() {
            [Part::Variable(v)] => match (v.namespace, v.path.as_slice()) {
                (Namespace::Sample, [Step::Key(k)]) if k == "output_text" => Some(Direct::OutputText),
                (Namespace::Item, [Step::Key(k)]) => Some(Direct::ItemKey(k.clone())),
                _ => None,
            },
            _ => None,
        };
        Ok(Template {
            raw: raw.to_string(),
            parts,
            direct,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.parts.iter().filter_map(|p| match p {
            Part::Variable(v) => Some(v),
            Part::Literal(_) => None,
        })
    }

    /// Like [`Template::render`], borrowing when the template is one literal or one
    /// variable that is a string (the usual `{{ sample.output_text }}`).
    pub fn render_cow<'a>(&'a self, sample: &'a Sample, item: &'a Value) -> Result<Cow<'a, str>, RenderError> {
        match &self.direct {
            Some(Direct::OutputText) => return Ok(Cow::Borrowed(&sample.output_text)),
            Some(Direct::ItemKey(key)) => {
                if let Some(Value::String(s)) = item.as_object().and_then(|map| map.get(key)) {
                    return Ok(Cow::Borrowed(s));
                }
            }
            None => {}
        }
        match self.parts.as_slice() {
            [] => Ok(Cow::Borrowed("")),
            [Part::Literal(text)] => Ok(Cow::Borrowed(text)),
            [Part::Variable(var)] => Ok(match resolve(var, sample, item)? {
                Resolved::Str(s) => Cow::Borrowed(s),
                Resolved::Json(Cow::Borrowed(Value::String(s))) => Cow::Borrowed(s),
                Resolved::Json(v) => Cow::Owned(match v.as_ref() {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }),
            }),
            _ => self.render(sample, item).map(Cow::Owned),
        }
    }

    /// Renders with strings inserted raw and other JSON values as compact JSON.
    pub fn render(&self, sample: &Sample, item: &Value) -> Result<String, RenderError> {
        if let [Part::Literal(text)] = self.parts.as_slice() {
            return Ok(text.clone());
        }
        let mut out = String::with_capacity(self.raw.len());
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Variable(var) => match resolve(var, sample, item)? {
                    Resolved::Str(s) => out.push_str(s),
                    Resolved::Json(v) => match v.as_ref() {
                        Value::String(s) => out.push_str(s),
                        other => out.push_str(&other.to_string()),
                    },
                },
            }
        }
        Ok(out)
    }
}

enum Resolved<'a> {
    Str(&'a str),
    Json(Cow<'a, Value>),
}

fn resolve<'a>(var: &Variable, sample: &'a Sample, item: &'a Value) -> Result<Resolved<'a>, RenderError> {
    let missing = || RenderError::Missing(var.text.clone());
    let (start, rest): (Cow<'a, Value>, &[Step]) = match var.namespace {
        Namespace::Item => (Cow::Borrowed(item), var.path.as_slice()),
        Namespace::Sample => {
            let Some((first, rest)) = var.path.split_first() else {
                return Ok(Resolved::Json(Cow::Owned(sample.to_json())));
            };
            let Step::Key(field) = first else {
                return Err(missing());
            };
            match field.as_str() {
                "output_text" if rest.is_empty() => return Ok(Resolved::Str(&sample.output_text)),
                "output_text" => return Err(missing()),
                "output_json" => match &sample.output_json {
                    Some(json) => (Cow::Borrowed(json), rest),
                    None => return Err(RenderError::SampleNotJson(var.text.clone())),
                },
                "output_tools" => (Cow::Owned(Value::Array(sample.output_tools.clone())), rest),
                "choices" => (Cow::Owned(Value::Array(sample.choices.clone())), rest),
                _ => return Err(missing()),
            }
        }
    };
    let mut current = start;
    for step in rest {
        current = match current {
            Cow::Borrowed(v) => Cow::Borrowed(step_into(v, step).ok_or_else(missing)?),
            Cow::Owned(v) => Cow::Owned(step_into(&v, step).ok_or_else(missing)?.clone()),
        };
    }
    Ok(Resolved::Json(current))
}

/// The item's value at a path such as `item.messages` (OpenAI's
/// `item_reference`).
pub fn lookup<'a>(path: &str, item: &'a Value) -> Result<&'a Value, String> {
    let var = parse_variable(path.trim())?;
    if var.namespace != Namespace::Item {
        return Err(format!("{path:?} is not an item path (item.field)"));
    }
    let mut value = item;
    for step in &var.path {
        value = step_into(value, step).ok_or_else(|| RenderError::Missing(var.text.clone()).to_string())?;
    }
    Ok(value)
}

fn step_into<'v>(value: &'v Value, step: &Step) -> Option<&'v Value> {
    match (value, step) {
        (Value::Object(map), Step::Key(k)) => map.get(k),
        (Value::Array(items), Step::Index(i)) => items.get(*i),
        // `a.0` reads like an index on arrays.
        (Value::Array(items), Step::Key(k)) => k.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    }
}

fn parse_variable(expr: &str) -> Result<Variable, String> {
    let bad = |why: &str| format!("unsupported template expression {{{{ {expr} }}}}: {why}");
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len() && !matches!(chars[*i], '.' | '[' | ']' | '"' | '\'') && !chars[*i].is_whitespace() {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let head = ident(&mut i);
    let namespace = match head.as_str() {
        "item" => Namespace::Item,
        "sample" => Namespace::Sample,
        "" => return Err(bad("expected a variable such as item.answer")),
        other => {
            return Err(bad(&format!(
                "unknown namespace '{other}' (only 'item' and 'sample' exist)"
            )));
        }
    };
    let mut path = Vec::new();
    while i < chars.len() {
        if path.len() >= MAX_PATH_STEPS {
            return Err(bad("path too deep"));
        }
        match chars[i] {
            '.' => {
                i += 1;
                let key = ident(&mut i);
                if key.is_empty() {
                    return Err(bad("empty key after '.'"));
                }
                path.push(Step::Key(key));
            }
            '[' => {
                i += 1;
                let step = if i < chars.len() && matches!(chars[i], '"' | '\'') {
                    let quote = chars[i];
                    i += 1;
                    let start = i;
                    while i < chars.len() && chars[i] != quote {
                        i += 1;
                    }
                    if i >= chars.len() {
                        return Err(bad("unterminated quoted key"));
                    }
                    let key: String = chars[start..i].iter().collect();
                    i += 1;
                    Step::Key(key)
                } else {
                    let start = i;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                    let digits: String = chars[start..i].iter().collect();
                    Step::Index(
                        digits
                            .parse()
                            .map_err(|_| bad("index must be a non-negative integer"))?,
                    )
                };
                if i >= chars.len() || chars[i] != ']' {
                    return Err(bad("expected ']'"));
                }
                i += 1;
                path.push(step);
            }
            c if c.is_whitespace() => return Err(bad("filters and expressions are not supported")),
            _ => return Err(bad("expected '.' or '['")),
        }
    }
    Ok(Variable {
        namespace,
        path,
        text: expr.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample(text: &str) -> Sample {
        Sample::from_model_output(text)
    }

    #[test]
    fn renders_paths_with_whitespace_variations() {
        let item = json!({"answer": "Paris", "meta": {"n": 3, "tags": ["a", "b"]}});
        let s = Sample {
            output_tools: vec![json!({"function": {"name": "lookup"}})],
            ..sample("{\"city\": \"Paris\", \"score\": 0.5}")
        };
        let t = Template::parse("{{item.answer}}|{{ item.meta.n }}|{{  item.meta.tags[1]}}|{{ item.meta }}").unwrap();
        assert_eq!(
            t.render(&s, &item).unwrap(),
            "Paris|3|b|{\"n\":3,\"tags\":[\"a\",\"b\"]}"
        );
        let t = Template::parse("{{ sample.output_json.city }} {{sample.output_json.score}}").unwrap();
        assert_eq!(t.render(&s, &item).unwrap(), "Paris 0.5");
        let t = Template::parse("{{ sample.output_tools[0].function.name }}").unwrap();
        assert_eq!(t.render(&s, &item).unwrap(), "lookup");
        let t = Template::parse("{{ item[\"answer\"] }}").unwrap();
        assert_eq!(t.render(&s, &item).unwrap(), "Paris");
    }

    #[test]
    fn single_variable_templates_borrow_and_agree_with_render() {
        let item = json!({"reference": "Paris", "n": 3, "list": [1], "nested": {"k": "v"}});
        let s = sample("Paris!");
        for (raw, expected) in [
            ("{{ sample.output_text }}", Some("Paris!")),
            ("{{item.reference}}", Some("Paris")),
            ("{{ item.n }}", Some("3")),
            ("{{ item.list }}", Some("[1]")),
            ("{{ item.nested.k }}", Some("v")),
            ("{{ item.missing }}", None),
        ] {
            let t = Template::parse(raw).unwrap();
            let cow = t.render_cow(&s, &item);
            assert_eq!(cow.as_deref().ok(), expected, "{raw}");
            assert_eq!(cow.map(|c| c.into_owned()), t.render(&s, &item), "{raw}");
        }
        let t = Template::parse("{{ item.reference }}").unwrap();
        assert!(matches!(t.render_cow(&s, &item), Ok(Cow::Borrowed("Paris"))));
        // An item that is not an object has no keys.
        assert_eq!(
            t.render_cow(&s, &json!(["Paris"])),
            Err(RenderError::Missing("item.reference".into()))
        );
    }

    #[test]
    fn missing_variables_are_errors_not_empty_strings() {
        let t = Template::parse("{{ item.nope }}").unwrap();
        assert_eq!(
            t.render(&sample("x"), &json!({})),
            Err(RenderError::Missing("item.nope".into()))
        );
        let t = Template::parse("{{ sample.output_json.a }}").unwrap();
        assert!(matches!(
            t.render(&sample("not json"), &json!({})),
            Err(RenderError::SampleNotJson(_))
        ));
    }

    #[test]
    fn rejects_unknown_namespaces_and_filters() {
        assert!(
            Template::parse("{{ foo.bar }}")
                .unwrap_err()
                .contains("unknown namespace 'foo'")
        );
        assert!(Template::parse("{{ item.x | upper }}").is_err());
        assert!(Template::parse("{{ item.x[abc] }}").is_err());
        assert_eq!(
            Template::parse("no {{ braces")
                .unwrap()
                .render(&sample(""), &json!({}))
                .unwrap(),
            "no {{ braces"
        );
    }
}
