//! Token counting for dataset statistics.
//!
//! Counts must equal Python `tiktoken`'s `len(enc.encode_ordinary(text))` for
//! `o200k_base`; special-token strings such as `<|endoftext|>` are counted as
//! ordinary text (plain `enc.encode` would raise on them, which is useless for
//! a validator). `scripts/tiktoken_crosscheck.py` checks this against Python.
//!
//! Pre-tokenization (the tiktoken split regex) costs more than the BPE itself
//! in `bpe-openai`, so [`O200k`] splits ASCII text with a hand-written matcher
//! that reproduces the regex exactly and falls back to the regex for any piece
//! whose boundaries depend on a non-ASCII character. Piece counts are memoized
//! per thread because natural-language pieces repeat heavily.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Counts tokens of a text. Implementations must be deterministic.
pub trait TokenCounter: Send + Sync {
    /// Tokenizer name recorded in [`crate::datasets::report::DatasetStats::tokenizer`].
    fn name(&self) -> &str;
    /// Number of tokens in `text`.
    fn count(&self, text: &str) -> usize;
}

/// tiktoken `o200k_base` (GPT-4o family) via `bpe-openai`.
#[derive(Clone, Copy, Debug, Default)]
pub struct O200k;

impl O200k {
    pub fn new() -> Self {
        O200k
    }
}

/// Pieces longer than this are rare (long words, URLs, runs of symbols) and
/// would only bloat the memo, so they are counted directly.
const MAX_CACHED_PIECE: usize = 24;
/// Bounds per-thread memory; the memo is simply dropped when it fills up.
const MAX_CACHE_ENTRIES: usize = 1 << 16;

thread_local! {
    static PIECE_CACHE: RefCell<HashMap<Box<[u8]>, u32, BuildHasherDefault<FxHasher>>> =
        RefCell::new(HashMap::default());
}

impl TokenCounter for O200k {
    fn name(&self) -> &str {
        "o200k_base"
    }

    fn count(&self, text: &str) -> usize {
        let tok = bpe_openai::o200k_base();
        let bpe = &tok.bpe;
        PIECE_CACHE.with(|cache| {
            // A re-entrant call cannot happen here, but fall back to uncached
            // counting rather than panic if a borrow is ever outstanding.
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return split_o200k(text).map(|p| bpe.count(p.as_bytes())).sum();
            };
            let mut total = 0usize;
            for piece in split_o200k(text) {
                let bytes = piece.as_bytes();
                if bytes.len() > MAX_CACHED_PIECE {
                    total += bpe.count(bytes);
                    continue;
                }
                if let Some(&n) = cache.get(bytes) {
                    total += n as usize;
                    continue;
                }
                let n = bpe.count(bytes);
                if cache.len() >= MAX_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(bytes.into(), n as u32);
                total += n;
            }
            total
        })
    }
}

/// Reference counter that uses `bpe-openai` unmodified; used to check the fast
/// path and as a baseline in benchmarks.
#[derive(Clone, Copy, Debug, Default)]
pub struct O200kReference;

impl TokenCounter for O200kReference {
    fn name(&self) -> &str {
        "o200k_base"
    }

    fn count(&self, text: &str) -> usize {
        bpe_openai::o200k_base().count(text)
    }
}

/// Splits `text` into the same pieces as the o200k pre-tokenization regex.
pub fn split_o200k(text: &str) -> impl Iterator<Item = &str> {
    FastSplit { text, pos: 0 }
}

struct FastSplit<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for FastSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.text.get(self.pos..)?;
        if rest.is_empty() {
            return None;
        }
        let len = match ascii_piece_len(rest.as_bytes()) {
            Some(n) => n,
            None => regex_piece_len(rest),
        };
        // Never loop forever, even if the regex were to return an empty match.
        let len = len.max(rest.chars().next().map_or(1, char::len_utf8));
        let piece = rest.get(..len)?;
        self.pos += len;
        Some(piece)
    }
}

fn regex_piece_len(rest: &str) -> usize {
    bpe_openai::o200k_base().split(rest).next().map_or(rest.len(), str::len)
}

/// Signals that the match depends on a non-ASCII character; the regex decides.
struct Bail;

#[inline]
fn is_upper(c: u8) -> bool {
    c.is_ascii_uppercase()
}
#[inline]
fn is_lower(c: u8) -> bool {
    c.is_ascii_lowercase()
}
#[inline]
fn is_ws(c: u8) -> bool {
    matches!(c, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}
/// `[^\s\p{L}\p{N}]` restricted to ASCII.
#[inline]
fn is_punct(c: u8) -> bool {
    c < 0x80 && !is_ws(c) && !c.is_ascii_alphanumeric()
}
/// `[^\r\n\p{L}\p{N}]` restricted to ASCII.
#[inline]
fn is_prefix(c: u8) -> bool {
    c < 0x80 && c != b'\r' && c != b'\n' && !c.is_ascii_alphanumeric()
}

/// Byte at `i`, `None` at end of text, `Err(Bail)` when non-ASCII.
#[inline]
fn at(b: &[u8], i: usize) -> Result<Option<u8>, Bail> {
    match b.get(i) {
        None => Ok(None),
        Some(&c) if c >= 0x80 => Err(Bail),
        Some(&c) => Ok(Some(c)),
    }
}

/// Length of the first o200k piece of `b`, or `None` if a non-ASCII character
/// could influence it.
///
/// The regex (leftmost-first, greedy, backtracking semantics) is
/// ```text
/// A  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
/// B |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
/// C |\p{N}{1,3}
/// D | ?[^\s\p{L}\p{N}]+[\r\n/]*
/// E |\s*[\r\n]+
/// F |\s+$
/// G |\s+(?!\S)
/// H |\s+
/// ```
fn ascii_piece_len(b: &[u8]) -> Option<usize> {
    ascii_piece_len_inner(b).ok().flatten()
}

fn ascii_piece_len_inner(b: &[u8]) -> Result<Option<usize>, Bail> {
    let Some(c) = at(b, 0)? else {
        return Ok(None);
    };
    if c.is_ascii_alphabetic() {
        return letters(b, 0);
    }
    if is_prefix(c)
        && let Some(end) = letters(b, 1)?
    {
        return Ok(Some(end));
    }
    if c.is_ascii_digit() {
        let mut end = 1;
        while end < 3 {
            match at(b, end)? {
                Some(d) if d.is_ascii_digit() => end += 1,
                _ => break,
            }
        }
        return Ok(Some(end));
    }
    // D
    let punct_start = if c == b' ' {
        match at(b, 1)? {
            Some(d) if is_punct(d) => Some(1),
            _ => None,
        }
    } else if is_punct(c) {
        Some(0)
    } else {
        None
    };
    if let Some(start) = punct_start {
        let mut end = start + 1;
        while let Some(d) = at(b, end)? {
            if !is_punct(d) {
                break;
            }
            end += 1;
        }
        // [\r\n/]* cannot match a non-ASCII character, so no bail here.
        while let Some(&d) = b.get(end) {
            if d != b'\r' && d != b'\n' && d != b'/' {
                break;
            }
            end += 1;
        }
        return Ok(Some(end));
    }
    if is_ws(c) {
        let mut end = 1;
        let mut last_nl = if c == b'\r' || c == b'\n' { Some(0) } else { None };
        while let Some(d) = at(b, end)? {
            if !is_ws(d) {
                break;
            }
            if d == b'\r' || d == b'\n' {
                last_nl = Some(end);
            }
            end += 1;
        }
        if let Some(nl) = last_nl {
            return Ok(Some(nl + 1)); // E
        }
        if end == b.len() {
            return Ok(Some(end)); // F
        }
        if end >= 2 {
            return Ok(Some(end - 1)); // G
        }
        return Ok(Some(end)); // H
    }
    Err(Bail)
}

/// Alternatives A and B starting at `j` (after an optional prefix character).
fn letters(b: &[u8], j: usize) -> Result<Option<usize>, Bail> {
    let mut k = j;
    while let Some(c) = at(b, k)? {
        if !is_upper(c) {
            break;
        }
        k += 1;
    }
    let mut m = k;
    while let Some(c) = at(b, m)? {
        if !is_lower(c) {
            break;
        }
        m += 1;
    }
    if m > k || k > j {
        // A when lowercase letters follow, otherwise B (uppercase run only).
        return contraction(b, m).map(Some);
    }
    Ok(None)
}

/// Optional `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `m`.
fn contraction(b: &[u8], m: usize) -> Result<usize, Bail> {
    if at(b, m)? != Some(b'\'') {
        return Ok(m);
    }
    let Some(c1) = at(b, m + 1)? else {
        return Ok(m);
    };
    let c1 = c1.to_ascii_lowercase();
    if matches!(c1, b's' | b't' | b'm' | b'd') {
        return Ok(m + 2);
    }
    if matches!(c1, b'r' | b'v' | b'l') {
        let want = match c1 {
            b'r' | b'v' => b'e',
            _ => b'l',
        };
        if let Some(c2) = at(b, m + 2)?
            && c2.to_ascii_lowercase() == want
        {
            return Ok(m + 3);
        }
    }
    // Case-insensitive matching of 's'/'k' also covers some non-ASCII
    // characters, but `at` already bailed on those.
    Ok(m)
}

/// Small, fast hasher for the per-thread piece memo (keys are short byte
/// strings produced locally, so HashDoS is not a concern).
#[derive(Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
        let rem = chunks.remainder();
        if !rem.is_empty() {
            let mut w = [0u8; 8];
            w[..rem.len()].copy_from_slice(rem);
            self.add(u64::from_le_bytes(w) ^ ((rem.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const ALPHABET: &[&str] = &[
        "a",
        "b",
        "Z",
        "Q",
        "x",
        "'",
        "'s",
        "'S",
        "'re",
        "'LL",
        "'ve",
        "'d",
        "'m",
        "'t",
        " ",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\r",
        "\x0b",
        "\x0c",
        "1",
        "23",
        "4567",
        ".",
        ",",
        "!",
        "/",
        "//",
        "(",
        ")",
        "{",
        "}",
        "\"",
        "\\",
        "-",
        "_",
        "#",
        "\0",
        "\x7f",
        "é",
        "É",
        "ſ",
        "ß",
        "中",
        "文",
        "\u{a0}",
        "\u{2028}",
        "\u{3000}",
        "²",
        "٣",
        "—",
        "“",
        "😀",
        "\u{301}",
        "ǅ",
        "ʰ",
        "Hello",
        "world",
        "HTTP",
        "isn",
        "I",
        "URL",
        "<|endoftext|>",
        "ﬁ",
    ];

    fn random_text(rng: &mut StdRng) -> String {
        let n = rng.random_range(0..40);
        (0..n).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]).collect()
    }

    #[test]
    fn fast_split_equals_regex_split() {
        let tok = bpe_openai::o200k_base();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50_000 {
            let text = random_text(&mut rng);
            let fast: Vec<&str> = split_o200k(&text).collect();
            let slow: Vec<&str> = tok.split(&text).collect();
            assert_eq!(fast, slow, "text {text:?}");
        }
    }

    #[test]
    fn cached_count_equals_reference() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..5_000 {
            let text = random_text(&mut rng);
            assert_eq!(O200k.count(&text), O200kReference.count(&text), "{text:?}");
        }
    }

    #[test]
    fn known_counts() {
        // Values from Python: len(tiktoken.get_encoding("o200k_base").encode_ordinary(s)).
        assert_eq!(O200k.count(""), 0);
        assert_eq!(O200k.count("hello world"), 2);
        assert_eq!(O200k.name(), "o200k_base");
    }

    /// Writes `{"text", "count"}` lines for `scripts/tiktoken_crosscheck.py`:
    /// `LATHE_TOKEN_CORPUS=/tmp/corpus.jsonl cargo test --release -- --ignored dump_crosscheck_corpus`
    #[test]
    #[ignore]
    fn dump_crosscheck_corpus() {
        use std::io::Write;
        let path = std::env::var("LATHE_TOKEN_CORPUS").unwrap_or("/tmp/lathe_token_corpus.jsonl".into());
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut write = |text: &str| {
            let line = serde_json::json!({"text": text, "count": O200k.count(text)});
            writeln!(out, "{line}").unwrap();
        };
        let mut rng = StdRng::seed_from_u64(2024);
        for _ in 0..20_000 {
            write(&random_text(&mut rng));
        }
        for fixed in [
            "",
            "<|endoftext|> is ordinary text here",
            "Hello, world! I'm fine; you're not. THEY'LL see.",
            "def f(x):\n    return x**2  # square\r\n\t\tdone   \n\n\n",
            "https://example.com/a/b?c=d&e=f//\n",
            "Ünïcödé façade naïve café — “quotes” …",
            "日本語のテキストと中文文本，还有한국어。",
            "emoji 😀👍🏽 and ZWJ 👨‍👩‍👧 sequences",
            "numbers 1234567 3.14159 1e10 0x1F 1,000,000",
            "   leading and trailing spaces   ",
            "\u{a0}non-breaking\u{a0} spaces\u{2028}line sep",
        ] {
            write(fixed);
        }
        if let Ok(data) = std::fs::read_to_string(std::env::temp_dir().join("lathe_bench_sft.jsonl")) {
            for line in data.lines().take(300) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                for m in v["messages"].as_array().unwrap() {
                    write(m["content"].as_str().unwrap());
                }
            }
        }
    }
}
