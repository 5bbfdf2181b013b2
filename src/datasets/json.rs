//! The fast path of [`format::parse_val`](super::format): a recursive-descent
//! JSON parser that builds [`Val`] straight from the line, borrowing every
//! string without escapes.
//!
//! Invariant: it accepts a subset of what serde_json accepts and, where it
//! accepts, builds the same tree; anything else (every syntax error, too deep
//! a nesting, lone surrogates, unusual numbers) answers `None`, and the caller
//! parses the line again with serde_json, which alone words the error
//! messages. Valid rows, nearly all rows, never take that second pass. The
//! differential tests below hold it to this.

use std::borrow::Cow;

use super::val::Val;

/// Parses `text` as one JSON value nested at most `max_depth` containers
/// deep, or `None` if serde_json must decide.
pub(super) fn parse(text: &str, max_depth: usize) -> Option<Val<'_>> {
    let mut p = Parser {
        text,
        b: text.as_bytes(),
        i: 0,
        // Deeper than this, serde_json's own recursion limit (128) may be
        // what answers, so such lines are left to it.
        max_depth: max_depth.min(100),
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    (p.i == p.b.len()).then_some(v)
}

struct Parser<'a> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    max_depth: usize,
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// Skips JSON whitespace (space, tab, newline, carriage return).
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Val<'a>> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string().map(Val::Str)
            }
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b't' => self.literal(b"true", Val::Bool(true)),
            b'f' => self.literal(b"false", Val::Bool(false)),
            b'n' => self.literal(b"null", Val::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], v: Val<'a>) -> Option<Val<'a>> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(v)
        } else {
            None
        }
    }

    fn array(&mut self, depth: usize) -> Option<Val<'a>> {
        let mut items = Vec::new();
        if !self.open(depth, b']')? {
            loop {
                items.push(self.value(depth + 1)?);
                if self.next(b']')? {
                    break;
                }
            }
        }
        Some(Val::Arr(items))
    }

    fn object(&mut self, depth: usize) -> Option<Val<'a>> {
        let mut entries = Vec::new();
        if !self.open(depth, b'}')? {
            loop {
                if self.peek()? != b'"' {
                    return None;
                }
                self.i += 1;
                let key = self.string()?;
                self.ws();
                if self.peek()? != b':' {
                    return None;
                }
                self.i += 1;
                self.ws();
                entries.push((key, self.value(depth + 1)?));
                if self.next(b'}')? {
                    break;
                }
            }
        }
        Some(Val::Obj(entries))
    }

    /// Consumes a container's opening byte and the whitespace after it;
    /// `Some(true)` if `close` follows at once (and is consumed). Same depth
    /// rule as serde's path: a container at depth `max_depth` is one too many.
    fn open(&mut self, depth: usize, close: u8) -> Option<bool> {
        if depth >= self.max_depth {
            return None;
        }
        self.i += 1;
        self.ws();
        let empty = self.peek()? == close;
        self.i += usize::from(empty);
        Some(empty)
    }

    /// After an element: `Some(true)` at `close` (consumed), `Some(false)`
    /// after a comma and the whitespace that follows it.
    fn next(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = self.peek()?;
        if c != b',' && c != close {
            return None;
        }
        self.i += 1;
        if c == close {
            return Some(true);
        }
        self.ws();
        Some(false)
    }

    /// The rest of a string whose opening quote is consumed.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let start = self.i;
        let end = self.special(start);
        match self.b.get(end)? {
            b'"' => {
                self.i = end + 1;
                // Quotes are ASCII, so both ends are char boundaries.
                Some(Cow::Borrowed(self.text.get(start..end)?))
            }
            b'\\' => {
                let mut s = String::with_capacity(end - start + 16);
                s.push_str(self.text.get(start..end)?);
                self.i = end;
                self.escaped(s).map(Cow::Owned)
            }
            // A raw control character: serde_json rejects it.
            _ => None,
        }
    }

    /// Continues a string at a backslash, unescaping into `s`.
    fn escaped(&mut self, mut s: String) -> Option<String> {
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return Some(s);
                }
                b'\\' => {
                    let c = *self.b.get(self.i + 1)?;
                    self.i += 2;
                    match c {
                        b'"' => s.push('"'),
                        b'\\' => s.push('\\'),
                        b'/' => s.push('/'),
                        b'b' => s.push('\u{8}'),
                        b'f' => s.push('\u{c}'),
                        b'n' => s.push('\n'),
                        b'r' => s.push('\r'),
                        b't' => s.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let c = match hi {
                                0xD800..=0xDBFF => {
                                    // Only a well-formed pair; serde_json
                                    // words every other case.
                                    if self.b.get(self.i..self.i + 2)? != b"\\u" {
                                        return None;
                                    }
                                    self.i += 2;
                                    let lo = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&lo) {
                                        return None;
                                    }
                                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))?
                                }
                                0xDC00..=0xDFFF => return None,
                                _ => char::from_u32(hi)?,
                            };
                            s.push(c);
                        }
                        _ => return None,
                    }
                }
                _ => {
                    let start = self.i;
                    let end = self.special(start);
                    match self.b.get(end)? {
                        b'"' | b'\\' => {
                            s.push_str(self.text.get(start..end)?);
                            self.i = end;
                        }
                        _ => return None,
                    }
                }
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.b.get(self.i..self.i + 4)?;
        let mut v = 0;
        for &d in digits {
            v = v * 16 + (d as char).to_digit(16)?;
        }
        self.i += 4;
        Some(v)
    }

    /// Position of the first `"`, `\` or control character at or after `i`
    /// (the end of the line if none).
    #[inline]
    fn special(&self, i: usize) -> usize {
        special(self.b, i)
    }

    /// Integers of up to 18 digits directly; anything else serde_json parses
    /// from the number's own text, so floats round exactly as it rounds them.
    fn number(&mut self) -> Option<Val<'a>> {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let digits_start = self.i;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = n.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
            self.i += 1;
        }
        let digits = self.i - digits_start;
        if digits == 0 || (digits > 1 && self.b[digits_start] == b'0') {
            return None;
        }
        let simple = !matches!(self.peek(), Some(b'.' | b'e' | b'E')) && digits <= 18;
        if simple && !neg {
            return Some(Val::Num(n.into()));
        }
        if simple && n != 0 {
            // At most 18 digits: fits an i64.
            return Some(Val::Num((-(n as i64)).into()));
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            let f = self.i;
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
            if self.i == f {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            let e = self.i;
            while let Some(b'0'..=b'9') = self.peek() {
                self.i += 1;
            }
            if self.i == e {
                return None;
            }
        }
        let text = self.text.get(start..self.i)?;
        serde_json::from_str::<serde_json::Number>(text).ok().map(Val::Num)
    }
}

/// Position of the first `"`, `\` or control character at or after `i` in
/// `b` (`b.len()` if none): sixteen bytes at a time with SSE2.
#[cfg(target_arch = "x86_64")]
#[inline]
fn special(b: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::*;
    while let Some(w) = b.get(i..i + 16) {
        // SAFETY: SSE2 is part of x86_64; the load reads the 16 bytes of `w`.
        let hits = unsafe {
            let v = _mm_loadu_si128(w.as_ptr().cast::<__m128i>());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned v <= 0x1f exactly when min(v, 0x1f) == v.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control))
        };
        if hits != 0 {
            return i + hits.trailing_zeros() as usize;
        }
        i += 16;
    }
    special_tail(b, i)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn special(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(w) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
        let quote = w ^ (LO * u64::from(b'"'));
        let backslash = w ^ (LO * u64::from(b'\\'));
        // A byte's high bit is set if it is zero (for the two XORs) or
        // below 0x20; only the lowest set bit is exact, which is the one
        // used.
        let hits = (quote.wrapping_sub(LO) & !quote)
            | (backslash.wrapping_sub(LO) & !backslash)
            | (w.wrapping_sub(LO * 0x20) & !w);
        let hits = hits & HI;
        if hits != 0 {
            return i + hits.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    special_tail(b, i)
}

/// [`special`] byte by byte: the definition, and the last few bytes.
#[inline]
fn special_tail(b: &[u8], mut i: usize) -> usize {
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::super::format::{ParseError, parse_val_serde};
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Where the fast parser answers, serde's path answers the same.
    fn agrees(text: &str, depth: usize) -> bool {
        match parse(text, depth) {
            Some(v) => matches!(parse_val_serde(text, depth), Ok(w) if w == v),
            None => true,
        }
    }

    const CASES: &[&str] = &[
        r#"{"messages":[{"role":"user","content":"Hi"}]}"#,
        " \t{ \"a\" : [ 1 , -2 , 3.5 , -0 , 0 , 1e3 , 2E-2 , -0.0 , 123456789012345678 , 1234567890123456789 , 18446744073709551616 , -9223372036854775809 ] } \r",
        r#"{"s":"esc \" \\ \/ \b \f \n \r \t \u00e9 \ud83d\ude00 end","k\"ey":null,"t":true,"f":false}"#,
        r#"{"dup":1,"dup":2,"nested":{"a":{"b":{"c":[[],{}]}}}}"#,
        r#""just a string""#,
        "[]",
        "{}",
        "42",
        "\"café \u{1F600}\"",
        r#"{"lone":"\ud800"}"#,
        r#"{"lone":"\udc00x"}"#,
        r#"{"bad":"\x"}"#,
        "{\"ctrl\":\"a\u{1}b\"}",
        r#"{"a":1,}"#,
        r#"[1,]"#,
        r#"{"a" 1}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":1e}"#,
        r#"{"a":-}"#,
        r#"{"a":tru}"#,
        r#"{"a":nul"#,
        r#"{"a":"unterminated"#,
        r#"{"a":1} x"#,
        r#"{"a":1e400}"#,
        r#"{"a":NaN}"#,
        "",
        "   ",
    ];

    #[test]
    fn special_finds_the_first_quote_backslash_or_control() {
        let mut rng = StdRng::seed_from_u64(3);
        for len in 0..70 {
            for _ in 0..50 {
                let b: Vec<u8> = (0..len)
                    .map(|_| match rng.random_range(0..40) {
                        0 => b'"',
                        1 => b'\\',
                        2 => rng.random_range(0..0x20),
                        3 => [0x20, 0x7f, 0x80, 0xff, 0x21, 0x5b, 0x5d][rng.random_range(0..7)],
                        _ => rng.random_range(0x20..=0xff),
                    })
                    .collect();
                for i in 0..=len {
                    assert_eq!(special(&b, i), special_tail(&b, i), "{b:?} from {i}");
                }
            }
        }
    }

    #[test]
    fn agrees_with_serde_on_cases() {
        for text in CASES {
            assert!(agrees(text, 64), "{text}");
        }
        // What the fast path must accept, not leave to the slow one.
        for text in &CASES[..9] {
            assert!(parse(text, 64).is_some(), "{text}");
        }
        assert!(parse("[[[[1]]]]", 4).is_some());
        assert!(parse("[[[[[1]]]]]", 4).is_none());
        assert!(matches!(parse_val_serde("[[[[[1]]]]]", 4), Err(ParseError::TooDeep)));
    }

    /// Random JSON-ish text, valid and not: every accepted line agrees.
    #[test]
    fn agrees_with_serde_on_random_text() {
        const PIECES: &[&str] = &[
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            " ",
            "\"",
            "\\",
            "\\u",
            "\\ud83d",
            "\\ude00",
            "\\n",
            "a",
            "é",
            "1",
            "0",
            "-",
            ".",
            "e",
            "+",
            "true",
            "false",
            "null",
            "\"k\"",
            "\"v\"",
            "\t",
            "\u{1}",
            "12345678901234567890",
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut accepted = 0;
        for _ in 0..200_000 {
            let n = rng.random_range(1..24);
            let text: String = (0..n).map(|_| PIECES[rng.random_range(0..PIECES.len())]).collect();
            assert!(agrees(&text, 3), "{text:?}");
            accepted += usize::from(parse(&text, 3).is_some());
        }
        assert!(accepted > 1_000, "only {accepted} random texts parsed");
    }

    #[test]
    fn agrees_with_serde_on_real_rows() {
        let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut rows = 0;
        for entry in std::fs::read_dir(data).unwrap().flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            for line in text.lines() {
                assert!(agrees(line, 64), "{}: {line}", entry.path().display());
                rows += 1;
            }
        }
        assert!(rows > 50, "only {rows} fixture rows");
    }
}
