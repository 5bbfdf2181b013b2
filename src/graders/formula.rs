//! `multi.calculate_output`: arithmetic over sub-grader rewards.
//!
//! Grammar (precedence low to high): `+ -`, `* /`, unary `-`/`+`, `^` (right
//! associative, so `-2^2 == -4` and `2^-1 == 0.5` as in Python), then numbers, names,
//! calls and parentheses. Functions: min, max (one or more arguments), abs, floor, ceil,
//! exp, sqrt, log (natural). Names are checked against the sub-graders at parse time so a
//! typo is a validation error, not a silent zero at training time.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Formula {
    text: String,
    expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Num(f64),
    Var(String),
    Neg(Box<Expr>),
    Bin(Op, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Min,
    Max,
    Abs,
    Floor,
    Ceil,
    Exp,
    Sqrt,
    Log,
}

impl Func {
    fn from_name(name: &str) -> Option<Func> {
        Some(match name {
            "min" => Func::Min,
            "max" => Func::Max,
            "abs" => Func::Abs,
            "floor" => Func::Floor,
            "ceil" => Func::Ceil,
            "exp" => Func::Exp,
            "sqrt" => Func::Sqrt,
            "log" => Func::Log,
            _ => return None,
        })
    }

    fn variadic(self) -> bool {
        matches!(self, Func::Min | Func::Max)
    }
}

/// Why a formula could not be evaluated for one sample.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("division by zero in calculate_output")]
    DivisionByZero,
    #[error("calculate_output is not a finite number ({0})")]
    NotFinite(String),
    #[error("calculate_output refers to unknown sub-grader '{0}'")]
    UnknownName(String),
}

const MAX_DEPTH: usize = 64;
const MAX_LEN: usize = 4096;

impl Formula {
    /// Parses `text`, accepting only names in `names`.
    pub fn parse(text: &str, names: &[&str]) -> Result<Formula, String> {
        if text.len() > MAX_LEN {
            return Err(format!("formula longer than {MAX_LEN} characters"));
        }
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            names,
            depth: 0,
        };
        let expr = p.expr()?;
        if let Some(tok) = p.tokens.get(p.pos) {
            return Err(format!("unexpected {} at end of formula", tok.describe()));
        }
        Ok(Formula {
            text: text.to_string(),
            expr,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn eval(&self, vars: &BTreeMap<String, f64>) -> Result<f64, EvalError> {
        let v = eval(&self.expr, vars)?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(EvalError::NotFinite(v.to_string()))
        }
    }
}

fn eval(e: &Expr, vars: &BTreeMap<String, f64>) -> Result<f64, EvalError> {
    Ok(match e {
        Expr::Num(n) => *n,
        Expr::Var(name) => *vars.get(name).ok_or_else(|| EvalError::UnknownName(name.clone()))?,
        Expr::Neg(inner) => -eval(inner, vars)?,
        Expr::Bin(op, l, r) => {
            let (a, b) = (eval(l, vars)?, eval(r, vars)?);
            match op {
                Op::Add => a + b,
                Op::Sub => a - b,
                Op::Mul => a * b,
                Op::Div if b == 0.0 => return Err(EvalError::DivisionByZero),
                Op::Div => a / b,
                Op::Pow => a.powf(b),
            }
        }
        Expr::Call(f, args) => {
            let vals = args.iter().map(|a| eval(a, vars)).collect::<Result<Vec<_>, _>>()?;
            let x = vals.first().copied().unwrap_or(f64::NAN);
            match f {
                Func::Min => vals.iter().copied().fold(f64::INFINITY, f64::min),
                Func::Max => vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                Func::Abs => x.abs(),
                Func::Floor => x.floor(),
                Func::Ceil => x.ceil(),
                Func::Exp => x.exp(),
                Func::Sqrt => x.sqrt(),
                Func::Log => x.ln(),
            }
        }
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Sym(char),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Num(n) => format!("number {n}"),
            Tok::Ident(s) => format!("name '{s}'"),
            Tok::Sym(c) => format!("'{c}'"),
        }
    }
}

fn lex(text: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            if i < chars.len() && matches!(chars[i], 'e' | 'E') {
                let mut j = i + 1;
                if j < chars.len() && matches!(chars[j], '+' | '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    i = j;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                }
            }
            let s: String = chars[start..i].iter().collect();
            out.push(Tok::Num(s.parse().map_err(|_| format!("bad number '{s}'"))?));
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if "+-*/^(),".contains(c) {
            out.push(Tok::Sym(c));
            i += 1;
        } else {
            return Err(format!("unexpected character '{c}' in formula"));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    tokens: Vec<Tok>,
    pos: usize,
    names: &'a [&'a str],
    depth: usize,
}

impl Parser<'_> {
    fn peek_sym(&self) -> Option<char> {
        match self.tokens.get(self.pos) {
            Some(Tok::Sym(c)) => Some(*c),
            _ => None,
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek_sym() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("formula nested deeper than {MAX_DEPTH} levels"));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let mut lhs = self.term()?;
        loop {
            let op = match self.peek_sym() {
                Some('+') => Op::Add,
                Some('-') => Op::Sub,
                _ => break,
            };
            self.pos += 1;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(self.term()?));
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Expr, String> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek_sym() {
                Some('*') => Op::Mul,
                Some('/') => Op::Div,
                _ => break,
            };
            self.pos += 1;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(self.unary()?));
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let e = if self.eat('-') {
            Expr::Neg(Box::new(self.unary()?))
        } else if self.eat('+') {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Ok(e)
    }

    fn power(&mut self) -> Result<Expr, String> {
        let base = self.primary()?;
        if self.eat('^') {
            let exponent = self.unary()?;
            return Ok(Expr::Bin(Op::Pow, Box::new(base), Box::new(exponent)));
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<Expr, String> {
        let Some(tok) = self.tokens.get(self.pos).cloned() else {
            return Err("formula ends too early".into());
        };
        self.pos += 1;
        match tok {
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Sym('(') => {
                let e = self.expr()?;
                if !self.eat(')') {
                    return Err("missing ')'".into());
                }
                Ok(e)
            }
            Tok::Ident(name) if self.peek_sym() == Some('(') => {
                let Some(func) = Func::from_name(&name) else {
                    return Err(format!(
                        "unknown function '{name}' (allowed: min, max, abs, floor, ceil, exp, sqrt, log)"
                    ));
                };
                self.pos += 1;
                let mut args = Vec::new();
                if !self.eat(')') {
                    loop {
                        args.push(self.expr()?);
                        if self.eat(')') {
                            break;
                        }
                        if !self.eat(',') {
                            return Err(format!("expected ',' or ')' in call to {name}"));
                        }
                    }
                }
                match (func.variadic(), args.len()) {
                    (true, 0) => Err(format!("{name} needs at least one argument")),
                    (false, n) if n != 1 => Err(format!("{name} takes exactly one argument, got {n}")),
                    _ => Ok(Expr::Call(func, args)),
                }
            }
            Tok::Ident(name) => {
                if self.names.contains(&name.as_str()) {
                    Ok(Expr::Var(name))
                } else {
                    Err(format!(
                        "unknown name '{name}' (sub-graders: {})",
                        if self.names.is_empty() {
                            "none".to_string()
                        } else {
                            self.names.join(", ")
                        }
                    ))
                }
            }
            other => Err(format!("unexpected {}", other.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_with(text: &str, vars: &[(&str, f64)]) -> Result<f64, String> {
        let names: Vec<&str> = vars.iter().map(|(n, _)| *n).collect();
        let f = Formula::parse(text, &names)?;
        let map = vars.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        f.eval(&map).map_err(|e| e.to_string())
    }

    #[test]
    fn precedence_and_functions() {
        assert_eq!(eval_with("1 + 2 * 3", &[]), Ok(7.0));
        assert_eq!(eval_with("-2^2", &[]), Ok(-4.0));
        assert_eq!(eval_with("2^3^2", &[]), Ok(512.0));
        assert_eq!(eval_with("2^-1", &[]), Ok(0.5));
        assert_eq!(eval_with("(1 + 2) * 3", &[]), Ok(9.0));
        assert_eq!(eval_with("min(a, b, 0.7) + max(a)", &[("a", 0.2), ("b", 0.9)]), Ok(0.4));
        assert_eq!(
            eval_with("abs(-1) + floor(1.5) + ceil(1.2) + sqrt(4) + exp(0) + log(1)", &[]),
            Ok(7.0)
        );
        assert_eq!(eval_with("0.5 * a + 0.5 * b", &[("a", 1.0), ("b", 0.0)]), Ok(0.5));
        assert_eq!(eval_with("1e-1 * 10", &[]), Ok(1.0));
    }

    #[test]
    fn clear_errors() {
        assert!(
            eval_with("a + c", &[("a", 1.0)])
                .unwrap_err()
                .contains("unknown name 'c'")
        );
        assert!(eval_with("foo(1)", &[]).unwrap_err().contains("unknown function 'foo'"));
        assert!(eval_with("1 +", &[]).is_err());
        assert!(eval_with("(1", &[]).is_err());
        assert!(eval_with("1 2", &[]).is_err());
        assert!(eval_with("abs(1, 2)", &[]).is_err());
        assert!(eval_with("1 $ 2", &[]).is_err());
        assert_eq!(
            eval_with("a / b", &[("a", 1.0), ("b", 0.0)]),
            Err("division by zero in calculate_output".into())
        );
        assert!(
            eval_with("sqrt(0 - 1)", &[])
                .unwrap_err()
                .contains("not a finite number")
        );
        let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
        assert!(eval_with(&deep, &[]).unwrap_err().contains("nested deeper"));
    }
}
