//! Byte-level BPE tokenizer (GPT-2 / Hugging Face `tokenizers` style), loaded
//! from a GGUF vocabulary or a Hugging Face `tokenizer.json`.
//!
//! Encoding: special/added tokens are cut out of the text first (leftmost,
//! longest), the rest is pre-tokenized (regex splits, digit splits, the
//! GPT-2 regex of the `ByteLevel` step), and each pre-token's bytes are merged
//! by rank, lowest first, leftmost on ties -- the same order as `tokenizers`.
//! Decoding maps the byte-level alphabet back to bytes (lossy UTF-8).
//!
//! Known gaps: normalizers other than none/NFC are refused, and NFC is taken
//! as a no-op (text that is not already NFC may tokenize differently from
//! Hugging Face's Qwen2 tokenizer). SentencePiece vocabularies are refused.

use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, RwLock};

use fancy_regex::Regex;
use serde_json::{Value, json};

/// GPT-2's pre-tokenizer regex (also `tokenizers`' `ByteLevel` with `use_regex`).
pub const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's pre-tokenizer regex.
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's pre-tokenizer regex.
pub const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_REGEX: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Words up to this many bytes are cached; the cache is cleared when it holds
/// `CACHE_ENTRIES` words.
const CACHE_MAX_WORD: usize = 64;
const CACHE_ENTRIES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(
        "unsupported tokenizer model {0:?}: only byte-level BPE is supported (\"gpt2\" in GGUF, \"BPE\" with a ByteLevel pre-tokenizer in tokenizer.json)"
    )]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer {0}")]
    UnsupportedPreTokenizer(String),
    #[error("unsupported normalizer {0}")]
    UnsupportedNormalizer(String),
    #[error("invalid tokenizer.json: {0}")]
    Json(String),
    #[error("invalid pre-tokenizer regex {pattern:?}: {message}")]
    Regex { pattern: String, message: String },
    #[error("invalid vocabulary: {0}")]
    Vocab(String),
}

/// What a GGUF file's metadata holds about its tokenizer.
#[derive(Debug, Clone, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`, e.g. "gpt2".
    pub model: String,
    /// `tokenizer.ggml.pre`, e.g. "smollm", "llama-bpe", "qwen2", "gpt2", "default".
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte); may be empty.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, "a b".
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    Removed,
    Isolated,
    MergedWithPrevious,
    MergedWithNext,
    Contiguous,
}

impl Behavior {
    fn name(self) -> &'static str {
        match self {
            Behavior::Removed => "Removed",
            Behavior::Isolated => "Isolated",
            Behavior::MergedWithPrevious => "MergedWithPrevious",
            Behavior::MergedWithNext => "MergedWithNext",
            Behavior::Contiguous => "Contiguous",
        }
    }
}

enum PreStep {
    /// `source` is the regex as written; `literal` when it came from a `String` pattern.
    Split {
        re: PreRegex,
        source: String,
        literal: bool,
        behavior: Behavior,
        invert: bool,
    },
    Digits {
        individual: bool,
    },
    /// Byte-level: with `use_regex`, split with GPT-2's regex first.
    ByteLevel {
        add_prefix_space: bool,
        re: Option<PreRegex>,
    },
}

struct Added {
    id: u32,
    content: String,
    special: bool,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
    normalized: bool,
}

/// Pre-token bytes -> ids.
type WordCache = RwLock<HashMap<Box<[u8]>, Box<[u32]>>>;

struct Inner {
    /// id -> token as the vocabulary spells it (byte-level alphabet); None for holes.
    tokens: Vec<Option<String>>,
    vocab: HashMap<String, u32>,
    /// id -> the bytes it decodes to.
    token_bytes: Vec<Box<[u8]>>,
    /// Raw bytes -> id, for `ignore_merges` (whole pre-token in the vocabulary).
    bytes_vocab: HashMap<Box<[u8]>, u32>,
    byte_ids: [Option<u32>; 256],
    /// (left, right) -> (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Merges in rank order, for export.
    merge_list: Vec<(u32, u32)>,
    ignore_merges: bool,
    pre: Vec<PreStep>,
    added: Vec<Added>,
    /// first byte -> indices into `added`, longest content first.
    added_by_first: Vec<Vec<usize>>,
    special: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    cache: WordCache,
}

/// A byte-level BPE tokenizer. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.inner.merge_list.len())
            .field("added", &self.inner.added.len())
            .field("bos", &self.inner.bos)
            .field("eos", &self.inner.eos)
            .field("add_bos", &self.inner.add_bos)
            .finish()
    }
}

/// GPT-2's byte -> char table.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (b'!' as u32..=b'~' as u32).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        table[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    table
}

fn unicode_to_bytes() -> HashMap<char, u8> {
    bytes_to_unicode()
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect()
}

/// A vocabulary token to the bytes it stands for; characters outside the byte
/// alphabet stand for their own UTF-8 (as the `ByteLevel` decoder does).
fn token_to_bytes(token: &str, map: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(token.len());
    for c in token.chars() {
        match map.get(&c) {
            Some(&b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

fn compile(pattern: &str) -> Result<PreRegex, TokenizerError> {
    PreRegex::new(pattern)
}

/// A pre-tokenizer regex. The usual ones end in `\s+(?!\S)|\s+`, and that
/// look-ahead alone puts fancy-regex on its slow backtracking engine (4x
/// slower); for those known patterns the look-ahead is dropped and its effect
/// applied by hand (`fixup`), which a unit test checks against the original.
struct PreRegex {
    re: Regex,
    /// Some for the fast form: whether whitespace runs holding a newline are
    /// left alone (they were matched by an earlier `\s*[\r\n]+`).
    fixup: Option<bool>,
}

impl PreRegex {
    fn new(pattern: &str) -> Result<Self, TokenizerError> {
        const TAIL: &str = r"|\s+(?!\S)|\s+";
        let known = [GPT2_REGEX, LLAMA3_REGEX, QWEN2_REGEX, TEKKEN_REGEX, GPT4O_REGEX].contains(&pattern);
        let err = |e: fancy_regex::Error| TokenizerError::Regex {
            pattern: pattern.to_string(),
            message: e.to_string(),
        };
        match pattern.strip_suffix(TAIL) {
            Some(head) if known => Ok(PreRegex {
                re: Regex::new(&format!(r"{head}|\s+")).map_err(err)?,
                fixup: Some(head.ends_with(r"|\s*[\r\n]+")),
            }),
            _ => Ok(PreRegex {
                re: Regex::new(pattern).map_err(err)?,
                fixup: None,
            }),
        }
    }

    /// Calls `f` with each match's byte range, leftmost first.
    fn for_each_match(&self, s: &str, mut f: impl FnMut(usize, usize)) {
        let Some(newline_exempt) = self.fixup else {
            for m in self.re.find_iter(s) {
                let Ok(m) = m else { break };
                f(m.start(), m.end());
            }
            return;
        };
        let mut pos = 0;
        while pos < s.len() {
            let Ok(Some(m)) = self.re.find_from_pos(s, pos) else {
                break;
            };
            let (a, mut b) = (m.start(), m.end());
            let run = &s[a..b];
            // `\s+(?!\S)`: a whitespace run followed by a non-space leaves its
            // last character to the next token.
            if b < s.len() && run.chars().all(char::is_whitespace) && !(newline_exempt && run.contains(['\r', '\n'])) {
                let last = run.chars().next_back().map_or(0, char::len_utf8);
                if b - last > a {
                    b -= last;
                }
            }
            if a == b {
                break;
            }
            f(a, b);
            pos = b;
        }
    }
}

fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~ ".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Pre-tokenizer steps for a GGUF `tokenizer.ggml.pre`, as llama.cpp (and the
/// Hugging Face tokenizer.json each was converted from) splits.
fn gguf_pre_steps(pre: Option<&str>) -> Result<(Vec<PreStep>, bool), TokenizerError> {
    let split = |re: &str| -> Result<PreStep, TokenizerError> {
        Ok(PreStep::Split {
            re: compile(re)?,
            source: re.to_string(),
            literal: false,
            behavior: Behavior::Isolated,
            invert: false,
        })
    };
    let byte_level = |use_regex: bool| -> Result<PreStep, TokenizerError> {
        Ok(PreStep::ByteLevel {
            add_prefix_space: false,
            re: if use_regex { Some(compile(GPT2_REGEX)?) } else { None },
        })
    };
    let name = pre.unwrap_or("default");
    Ok(match name {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling" => {
            (vec![byte_level(true)?], false)
        }
        // Digits one by one, then GPT-2's regex: the HF tokenizer.json these came
        // from is Sequence[Digits(individual_digits), ByteLevel(use_regex)].
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva" => {
            (vec![PreStep::Digits { individual: true }, byte_level(true)?], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" | "dbrx"
        | "smaug-bpe" => (vec![split(LLAMA3_REGEX)?, byte_level(false)?], true),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "kormo" => {
            (vec![split(QWEN2_REGEX)?, byte_level(false)?], false)
        }
        "tekken" => (vec![split(TEKKEN_REGEX)?, byte_level(false)?], false),
        "gpt-4o" | "llama4" => (vec![split(GPT4O_REGEX)?, byte_level(false)?], false),
        other => {
            return Err(TokenizerError::UnsupportedPreTokenizer(format!(
                "tokenizer.ggml.pre = {other:?} (supported: gpt2, default, smollm, starcoder, llama-bpe, llama3, qwen2, tekken, gpt-4o and aliases)"
            )));
        }
    })
}

fn parse_behavior(v: &Value) -> Result<Behavior, TokenizerError> {
    Ok(match v.as_str().unwrap_or("Isolated") {
        "Removed" => Behavior::Removed,
        "Isolated" => Behavior::Isolated,
        "MergedWithPrevious" => Behavior::MergedWithPrevious,
        "MergedWithNext" => Behavior::MergedWithNext,
        "Contiguous" => Behavior::Contiguous,
        other => return Err(TokenizerError::Json(format!("unknown Split behavior {other:?}"))),
    })
}

/// Flattens a tokenizer.json pre_tokenizer into steps.
fn json_pre_steps(v: &Value, out: &mut Vec<PreStep>) -> Result<(), TokenizerError> {
    if v.is_null() {
        return Ok(());
    }
    match v["type"].as_str().unwrap_or("") {
        "Sequence" => {
            for p in v["pretokenizers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                json_pre_steps(p, out)?;
            }
        }
        "ByteLevel" => {
            let use_regex = v["use_regex"].as_bool().unwrap_or(true);
            out.push(PreStep::ByteLevel {
                add_prefix_space: v["add_prefix_space"].as_bool().unwrap_or(false),
                re: if use_regex { Some(compile(GPT2_REGEX)?) } else { None },
            });
        }
        "Digits" => out.push(PreStep::Digits {
            individual: v["individual_digits"].as_bool().unwrap_or(false),
        }),
        "Split" => {
            let (source, literal) = if let Some(r) = v["pattern"]["Regex"].as_str() {
                (r.to_string(), false)
            } else if let Some(s) = v["pattern"]["String"].as_str() {
                (s.to_string(), true)
            } else {
                return Err(TokenizerError::Json("Split pre-tokenizer without a pattern".into()));
            };
            let re = compile(&if literal { escape_regex(&source) } else { source.clone() })?;
            out.push(PreStep::Split {
                re,
                source,
                literal,
                behavior: parse_behavior(&v["behavior"])?,
                invert: v["invert"].as_bool().unwrap_or(false),
            });
        }
        other => {
            return Err(TokenizerError::UnsupportedPreTokenizer(format!(
                "{other:?} in tokenizer.json (supported: ByteLevel, Split, Digits, Sequence)"
            )));
        }
    }
    Ok(())
}

fn check_normalizer(v: &Value) -> Result<(), TokenizerError> {
    if v.is_null() {
        return Ok(());
    }
    match v["type"].as_str().unwrap_or("") {
        // NFC is taken as a no-op: nearly all text already is NFC.
        "NFC" => Ok(()),
        "Sequence" => {
            for n in v["normalizers"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                check_normalizer(n)?;
            }
            Ok(())
        }
        other => Err(TokenizerError::UnsupportedNormalizer(format!(
            "{other:?} in tokenizer.json"
        ))),
    }
}

/// The BOS a post_processor adds in front of a single sequence, if any.
fn post_processor_bos(v: &Value, vocab: &HashMap<String, u32>) -> Option<u32> {
    match v["type"].as_str().unwrap_or("") {
        "Sequence" => v["processors"]
            .as_array()?
            .iter()
            .find_map(|p| post_processor_bos(p, vocab)),
        "TemplateProcessing" => {
            let first = v["single"].as_array()?.first()?;
            let name = first["SpecialToken"]["id"].as_str()?;
            v["special_tokens"][name]["ids"]
                .as_array()
                .and_then(|ids| ids.first())
                .and_then(Value::as_u64)
                .map(|i| i as u32)
                .or_else(|| vocab.get(name).copied())
        }
        _ => None,
    }
}

struct Builder {
    tokens: Vec<Option<String>>,
    merges: Vec<(String, String)>,
    added: Vec<Added>,
    pre: Vec<PreStep>,
    ignore_merges: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    pad: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
}

impl Builder {
    fn build(self) -> Result<Tokenizer, TokenizerError> {
        let map = unicode_to_bytes();
        let n = self.tokens.len();
        if n == 0 {
            return Err(TokenizerError::Vocab("no tokens".into()));
        }
        let mut vocab = HashMap::with_capacity(n);
        for (i, t) in self.tokens.iter().enumerate() {
            if let Some(t) = t {
                vocab.insert(t.clone(), i as u32);
            }
        }
        let added_ids: std::collections::HashSet<u32> = self.added.iter().map(|a| a.id).collect();
        let mut token_bytes: Vec<Box<[u8]>> = Vec::with_capacity(n);
        let mut bytes_vocab = HashMap::with_capacity(if self.ignore_merges { n } else { 0 });
        for (i, t) in self.tokens.iter().enumerate() {
            let b: Box<[u8]> = match t {
                None => Box::new([]),
                Some(t) if added_ids.contains(&(i as u32)) => t.as_bytes().into(),
                Some(t) => token_to_bytes(t, &map).into(),
            };
            if self.ignore_merges && !added_ids.contains(&(i as u32)) && !b.is_empty() {
                bytes_vocab.insert(b.clone(), i as u32);
            }
            token_bytes.push(b);
        }
        let table = bytes_to_unicode();
        let mut byte_ids = [None; 256];
        for (b, c) in table.iter().enumerate() {
            byte_ids[b] = vocab.get(&c.to_string()).copied();
        }
        let mut merges = HashMap::with_capacity(self.merges.len());
        let mut merge_list = Vec::with_capacity(self.merges.len());
        let mut joined = String::new();
        for (a, b) in &self.merges {
            let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) else {
                continue;
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let Some(&im) = vocab.get(&joined) else { continue };
            let rank = merge_list.len() as u32;
            // The first (best) rank of a repeated pair wins.
            merges.entry((ia, ib)).or_insert_with(|| {
                merge_list.push((ia, ib));
                (rank, im)
            });
        }
        let mut special = vec![false; n];
        let mut added = self.added;
        for a in &added {
            if a.special {
                special[a.id as usize] = true;
            }
        }
        // Longest first, so a scan takes the longest match at a position.
        added.sort_by(|x, y| y.content.len().cmp(&x.content.len()).then(x.id.cmp(&y.id)));
        let mut added_by_first = vec![Vec::new(); 256];
        for (i, a) in added.iter().enumerate() {
            if let Some(&b) = a.content.as_bytes().first() {
                added_by_first[b as usize].push(i);
            }
        }
        let check = |id: Option<u32>, what: &str| -> Result<Option<u32>, TokenizerError> {
            match id {
                Some(i) if i as usize >= n => Err(TokenizerError::Vocab(format!(
                    "{what} id {i} is outside the vocabulary ({n} tokens)"
                ))),
                other => Ok(other),
            }
        };
        Ok(Tokenizer {
            inner: Arc::new(Inner {
                tokens: self.tokens,
                vocab,
                token_bytes,
                bytes_vocab,
                byte_ids,
                merges,
                merge_list,
                ignore_merges: self.ignore_merges,
                pre: self.pre,
                added,
                added_by_first,
                special,
                bos: check(self.bos, "bos")?,
                eos: check(self.eos, "eos")?,
                pad: check(self.pad, "pad")?,
                unk: check(self.unk, "unk")?,
                add_bos: self.add_bos,
                cache: RwLock::new(HashMap::new()),
            }),
        })
    }
}

fn split_merge(m: &str) -> Option<(String, String)> {
    let (a, b) = m.split_once(' ')?;
    Some((a.to_string(), b.to_string()))
}

/// Where a piece of text lives: the input (buffer 0) or an owned buffer.
#[derive(Clone, Copy)]
struct Piece {
    buf: usize,
    start: usize,
    end: usize,
}

impl Tokenizer {
    /// A tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(v: GgufVocab) -> Result<Self, TokenizerError> {
        if v.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(format!(
                "{} (tokenizer.ggml.model)",
                v.model
            )));
        }
        if !v.token_types.is_empty() && v.token_types.len() != v.tokens.len() {
            return Err(TokenizerError::Vocab(format!(
                "{} token types for {} tokens",
                v.token_types.len(),
                v.tokens.len()
            )));
        }
        let (pre, ignore_merges) = gguf_pre_steps(v.pre.as_deref())?;
        let map = unicode_to_bytes();
        let mut added = Vec::new();
        let mut push_added = |id: usize, special: bool| {
            let content = String::from_utf8_lossy(&token_to_bytes(&v.tokens[id], &map)).into_owned();
            if !content.is_empty() {
                added.push(Added {
                    id: id as u32,
                    content,
                    special,
                    lstrip: false,
                    rstrip: false,
                    single_word: false,
                    normalized: false,
                });
            }
        };
        if v.token_types.is_empty() {
            let mut ids: Vec<u32> = [v.bos_id, v.eos_id, v.pad_id].into_iter().flatten().collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                if (id as usize) < v.tokens.len() {
                    push_added(id as usize, true);
                }
            }
        } else {
            for (i, &t) in v.token_types.iter().enumerate() {
                match t {
                    2 | 3 => push_added(i, true),
                    4 => push_added(i, false),
                    _ => {}
                }
            }
        }
        let merges = v
            .merges
            .iter()
            .map(|m| split_merge(m).ok_or_else(|| TokenizerError::Vocab(format!("merge {m:?} is not \"a b\""))))
            .collect::<Result<Vec<_>, _>>()?;
        Builder {
            tokens: v.tokens.into_iter().map(Some).collect(),
            merges,
            added,
            pre,
            ignore_merges,
            bos: v.bos_id,
            eos: v.eos_id,
            pad: v.pad_id,
            unk: v.unk_id,
            add_bos: v.add_bos,
        }
        .build()
    }

    /// A tokenizer from a Hugging Face `tokenizer.json` (byte-level BPE).
    ///
    /// tokenizer.json does not name BOS/EOS (tokenizer_config.json does): BOS is
    /// the token the post_processor puts first (and then `add_bos` is true); EOS
    /// is the first of the usual end markers that is an added special token.
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| TokenizerError::Json(e.to_string()))?;
        let model = &v["model"];
        let kind = model["type"]
            .as_str()
            .unwrap_or(if model["merges"].is_array() { "BPE" } else { "" });
        if kind != "BPE" {
            return Err(TokenizerError::UnsupportedModel(format!("{kind} (model.type)")));
        }
        if model["byte_fallback"].as_bool() == Some(true) {
            return Err(TokenizerError::UnsupportedModel(
                "BPE with byte_fallback (SentencePiece-style)".into(),
            ));
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if model[key].as_str().is_some_and(|s| !s.is_empty()) {
                return Err(TokenizerError::UnsupportedModel(format!("BPE with {key}")));
            }
        }
        check_normalizer(&v["normalizer"])?;
        let mut pre = Vec::new();
        json_pre_steps(&v["pre_tokenizer"], &mut pre)?;
        if !pre.iter().any(|s| matches!(s, PreStep::ByteLevel { .. })) {
            return Err(TokenizerError::UnsupportedModel(
                "BPE without a ByteLevel pre-tokenizer (not byte-level)".into(),
            ));
        }

        let vocab_obj = model["vocab"]
            .as_object()
            .ok_or_else(|| TokenizerError::Json("model.vocab is not an object".into()))?;
        let mut pairs: Vec<(String, u32)> = Vec::with_capacity(vocab_obj.len());
        for (t, id) in vocab_obj {
            let id = id
                .as_u64()
                .ok_or_else(|| TokenizerError::Json(format!("vocab id of {t:?} is not a number")))?;
            pairs.push((t.clone(), id as u32));
        }
        let mut added = Vec::new();
        for a in v["added_tokens"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let (Some(id), Some(content)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(TokenizerError::Json(format!("added token without id/content: {a}")));
            };
            pairs.push((content.to_string(), id as u32));
            if !content.is_empty() {
                added.push(Added {
                    id: id as u32,
                    content: content.to_string(),
                    special: a["special"].as_bool().unwrap_or(false),
                    lstrip: a["lstrip"].as_bool().unwrap_or(false),
                    rstrip: a["rstrip"].as_bool().unwrap_or(false),
                    single_word: a["single_word"].as_bool().unwrap_or(false),
                    normalized: a["normalized"].as_bool().unwrap_or(false),
                });
            }
        }
        let size = pairs.iter().map(|(_, i)| *i as usize + 1).max().unwrap_or(0);
        if size > 16 * 1024 * 1024 {
            return Err(TokenizerError::Vocab(format!(
                "token id {} is implausibly large",
                size - 1
            )));
        }
        let mut tokens = vec![None; size];
        for (t, id) in pairs {
            tokens[id as usize] = Some(t);
        }
        let mut merges = Vec::new();
        for m in model["merges"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let pair = match m {
                Value::String(s) => split_merge(s),
                Value::Array(a) if a.len() == 2 => a[0]
                    .as_str()
                    .zip(a[1].as_str())
                    .map(|(x, y)| (x.to_string(), y.to_string())),
                _ => None,
            };
            merges.push(pair.ok_or_else(|| TokenizerError::Json(format!("bad merge {m}")))?);
        }
        let vocab_map: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.clone().map(|t| (t, i as u32)))
            .collect();
        let bos = post_processor_bos(&v["post_processor"], &vocab_map);
        let find_special = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| added.iter().find(|a| a.special && a.content == *n).map(|a| a.id))
        };
        let eos = find_special(&[
            "<|im_end|>",
            "<|eot_id|>",
            "<|end_of_text|>",
            "<|endoftext|>",
            "</s>",
            "<eos>",
            "<|end|>",
        ]);
        let pad = find_special(&["<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>"]);
        let unk = model["unk_token"].as_str().and_then(|u| vocab_map.get(u).copied());
        Builder {
            tokens,
            merges,
            added,
            pre,
            ignore_merges: model["ignore_merges"].as_bool().unwrap_or(false),
            bos,
            eos,
            pad,
            unk,
            add_bos: bos.is_some(),
        }
        .build()
    }

    /// Token ids for `text`, without BOS. With `parse_special`, special tokens
    /// written in the text (e.g. "<|im_start|>") become their ids; non-special
    /// added tokens are always matched whole.
    pub fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        let inner = &*self.inner;
        let mut start = 0;
        if !inner.added.is_empty() {
            let bytes = text.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let cands = &inner.added_by_first[bytes[i] as usize];
                let hit = if cands.is_empty() {
                    None
                } else {
                    cands.iter().map(|&k| &inner.added[k]).find(|a| {
                        (parse_special || !a.special)
                            && bytes[i..].starts_with(a.content.as_bytes())
                            && (!a.single_word || self.is_single_word(text, i, i + a.content.len()))
                    })
                };
                let Some(a) = hit else {
                    i += 1;
                    continue;
                };
                let mut seg_end = i;
                if a.lstrip {
                    seg_end = start + text[start..i].trim_end().len();
                }
                self.encode_plain(&text[start..seg_end], &mut out);
                out.push(a.id);
                i += a.content.len();
                if a.rstrip {
                    i = text.len() - text[i..].trim_start().len();
                }
                start = i;
            }
        }
        self.encode_plain(&text[start..], &mut out);
        out
    }

    fn is_single_word(&self, text: &str, s: usize, e: usize) -> bool {
        let before = text[..s].chars().next_back();
        let after = text[e..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !word(before) && !word(after)
    }

    /// Pre-tokenizes and merges text that holds no added tokens.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let inner = &*self.inner;
        let mut bufs: Vec<String> = Vec::new();
        let mut pieces = vec![Piece {
            buf: usize::MAX,
            start: 0,
            end: text.len(),
        }];
        let mut next = Vec::new();
        for step in &inner.pre {
            next.clear();
            for p in &pieces {
                let s: &str = if p.buf == usize::MAX {
                    &text[p.start..p.end]
                } else {
                    &bufs[p.buf][p.start..p.end]
                };
                match step {
                    PreStep::Digits { individual } => split_digits(s, *individual, |a, b| {
                        next.push(Piece {
                            buf: p.buf,
                            start: p.start + a,
                            end: p.start + b,
                        })
                    }),
                    PreStep::Split {
                        re, behavior, invert, ..
                    } => split_regex(re, s, *behavior, *invert, |a, b| {
                        next.push(Piece {
                            buf: p.buf,
                            start: p.start + a,
                            end: p.start + b,
                        })
                    }),
                    PreStep::ByteLevel { add_prefix_space, re } => {
                        let (buf, base, s) = if *add_prefix_space && !s.starts_with(' ') {
                            bufs.push(format!(" {s}"));
                            let k = bufs.len() - 1;
                            (k, 0, bufs[k].as_str())
                        } else {
                            (p.buf, p.start, s)
                        };
                        match re {
                            Some(re) => split_regex(re, s, Behavior::Isolated, false, |a, b| {
                                next.push(Piece {
                                    buf,
                                    start: base + a,
                                    end: base + b,
                                })
                            }),
                            None => next.push(Piece {
                                buf,
                                start: base,
                                end: base + s.len(),
                            }),
                        }
                    }
                }
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        for p in &pieces {
            let s: &str = if p.buf == usize::MAX {
                &text[p.start..p.end]
            } else {
                &bufs[p.buf][p.start..p.end]
            };
            self.bpe_word(s.as_bytes(), out);
        }
    }

    /// Merges one pre-token's bytes, appending the ids.
    fn bpe_word(&self, word: &[u8], out: &mut Vec<u32>) {
        let inner = &*self.inner;
        if word.is_empty() {
            return;
        }
        if word.len() == 1 {
            if let Some(id) = inner.byte_ids[word[0] as usize].or(inner.unk) {
                out.push(id);
            }
            return;
        }
        if inner.ignore_merges
            && let Some(&id) = inner.bytes_vocab.get(word)
        {
            out.push(id);
            return;
        }
        let cacheable = word.len() <= CACHE_MAX_WORD;
        if cacheable
            && let Ok(cache) = inner.cache.read()
            && let Some(ids) = cache.get(word)
        {
            out.extend_from_slice(ids);
            return;
        }
        let mut syms: Vec<u32> = word
            .iter()
            .filter_map(|&b| inner.byte_ids[b as usize].or(inner.unk))
            .collect();
        if syms.len() <= 48 {
            // Short words: scan for the best pair each round.
            loop {
                let mut best: Option<(u32, usize, u32)> = None;
                for i in 0..syms.len().saturating_sub(1) {
                    if let Some(&(rank, id)) = inner.merges.get(&(syms[i], syms[i + 1]))
                        && best.is_none_or(|(r, _, _)| rank < r)
                    {
                        best = Some((rank, i, id));
                    }
                }
                let Some((_, i, id)) = best else { break };
                syms[i] = id;
                syms.remove(i + 1);
            }
        } else {
            syms = self.bpe_long(syms);
        }
        if cacheable && let Ok(mut cache) = inner.cache.write() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(word.into(), syms.clone().into_boxed_slice());
        }
        out.extend_from_slice(&syms);
    }

    /// Long words: a heap of candidate merges over a linked list of symbols.
    fn bpe_long(&self, ids: Vec<u32>) -> Vec<u32> {
        let inner = &*self.inner;
        let n = ids.len();
        let mut id = ids;
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        let push =
            |heap: &mut BinaryHeap<std::cmp::Reverse<(u32, usize, u32, u32)>>, l: usize, r: usize, id: &[u32]| {
                if let Some(&(rank, _)) = inner.merges.get(&(id[l], id[r])) {
                    heap.push(std::cmp::Reverse((rank, l, id[l], id[r])));
                }
            };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, i, i + 1, &id);
        }
        while let Some(std::cmp::Reverse((_, l, a, b))) = heap.pop() {
            let r = next[l];
            if !alive[l] || r >= n || id[l] != a || id[r] != b {
                continue;
            }
            let (_, merged) = inner.merges[&(a, b)];
            id[l] = merged;
            alive[r] = false;
            next[l] = next[r];
            if next[r] < n {
                prev[next[r]] = l;
            }
            if prev[l] < n {
                push(&mut heap, prev[l], l, &id);
            }
            if next[l] < n {
                push(&mut heap, l, next[l], &id);
            }
        }
        (0..n).filter(|&i| alive[i]).map(|i| id[i]).collect()
    }

    /// Text for `ids` (lossy UTF-8); `skip_special` drops special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id, skip_special));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn token_bytes(&self, id: u32, skip_special: bool) -> &[u8] {
        let inner = &*self.inner;
        match inner.token_bytes.get(id as usize) {
            Some(_) if skip_special && inner.special[id as usize] => &[],
            Some(b) => b,
            None => &[],
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.vocab.get(token).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.inner.tokens.get(id as usize).and_then(|t| t.as_deref())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.tokens.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.inner.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.inner.eos
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.inner.pad
    }

    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    /// Control tokens (GGUF types 2 and 3) and special added tokens.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner.special.get(id as usize).copied().unwrap_or(false)
    }

    /// The vocabulary and merges in Hugging Face tokenizer.json form (so a
    /// merged model can be written out in HF layout).
    pub fn to_tokenizer_json(&self) -> Value {
        let inner = &*self.inner;
        let tok = |i: u32| inner.tokens[i as usize].clone().unwrap_or_default();
        let mut vocab = serde_json::Map::new();
        for (i, t) in inner.tokens.iter().enumerate() {
            if let Some(t) = t {
                vocab.insert(t.clone(), json!(i));
            }
        }
        let merges: Vec<Value> = inner
            .merge_list
            .iter()
            .map(|&(a, b)| json!(format!("{} {}", tok(a), tok(b))))
            .collect();
        let mut added: Vec<&Added> = inner.added.iter().collect();
        added.sort_by_key(|a| a.id);
        let added: Vec<Value> = added
            .iter()
            .map(|a| {
                json!({
                    "id": a.id, "content": a.content, "single_word": a.single_word, "lstrip": a.lstrip,
                    "rstrip": a.rstrip, "normalized": a.normalized, "special": a.special,
                })
            })
            .collect();
        let steps: Vec<Value> = inner
            .pre
            .iter()
            .map(|s| match s {
                PreStep::Split {
                    source,
                    literal,
                    behavior,
                    invert,
                    ..
                } => json!({
                    "type": "Split",
                    "pattern": if *literal { json!({"String": source}) } else { json!({"Regex": source}) },
                    "behavior": behavior.name(), "invert": invert,
                }),
                PreStep::Digits { individual } => json!({"type": "Digits", "individual_digits": individual}),
                PreStep::ByteLevel { add_prefix_space, re } => json!({
                    "type": "ByteLevel", "add_prefix_space": add_prefix_space, "trim_offsets": true,
                    "use_regex": re.is_some(),
                }),
            })
            .collect();
        let pre_tokenizer = if steps.len() == 1 {
            steps.into_iter().next().unwrap()
        } else {
            json!({"type": "Sequence", "pretokenizers": steps})
        };
        let post_processor = match inner.bos.filter(|_| inner.add_bos) {
            Some(b) => {
                let name = tok(b);
                json!({
                    "type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [
                        {"SpecialToken": {"id": name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": name, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
                    ],
                    "special_tokens": {name.clone(): {"id": name, "ids": [b], "tokens": [name]}},
                })
            }
            None => json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true}),
        };
        json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": inner.ignore_merges, "vocab": vocab, "merges": merges,
            },
        })
    }

    /// An incremental decoder for streaming generated tokens.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tok: self,
            skip_special,
            pending: Vec::new(),
        }
    }
}

/// Splits on numeric chars (`char::is_numeric`, i.e. \p{N}): each alone, or runs.
fn split_digits(s: &str, individual: bool, mut emit: impl FnMut(usize, usize)) {
    let mut start = 0;
    let mut run_start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        if c.is_numeric() {
            if individual {
                if start < i {
                    emit(start, i);
                }
                emit(i, i + c.len_utf8());
                start = i + c.len_utf8();
            } else if run_start.is_none() {
                if start < i {
                    emit(start, i);
                }
                run_start = Some(i);
            }
        } else if let Some(r) = run_start.take() {
            emit(r, i);
            start = i;
        }
    }
    if let Some(r) = run_start {
        emit(r, s.len());
    } else if start < s.len() {
        emit(start, s.len());
    }
}

/// Splits `s` by a regex, as `tokenizers`' Split with the given behavior.
fn split_regex(re: &PreRegex, s: &str, behavior: Behavior, invert: bool, mut emit: impl FnMut(usize, usize)) {
    if behavior == Behavior::Isolated {
        // Every match and every gap is a piece of its own: no need to collect.
        let mut last = 0;
        re.for_each_match(s, |a, b| {
            if a == b {
                return;
            }
            if last < a {
                emit(last, a);
            }
            emit(a, b);
            last = b;
        });
        if last < s.len() {
            emit(last, s.len());
        }
        return;
    }
    // Segments covering `s`: (start, end, is_match).
    let mut segs: Vec<(usize, usize, bool)> = Vec::new();
    let mut last = 0;
    re.for_each_match(s, |a, b| {
        if a == b {
            return;
        }
        if last < a {
            segs.push((last, a, false));
        }
        segs.push((a, b, true));
        last = b;
    });
    if last < s.len() {
        segs.push((last, s.len(), false));
    }
    if invert {
        for seg in &mut segs {
            seg.2 = !seg.2;
        }
    }
    match behavior {
        Behavior::Isolated => segs.iter().for_each(|&(a, b, _)| emit(a, b)),
        Behavior::Removed => segs.iter().filter(|s| !s.2).for_each(|&(a, b, _)| emit(a, b)),
        // As `tokenizers`: a match joins its neighbour unless that neighbour is itself a match.
        Behavior::MergedWithPrevious => {
            let mut out: Vec<(usize, usize)> = Vec::new();
            let mut previous_match = false;
            for &(a, b, m) in &segs {
                match out.last_mut() {
                    Some(last) if m && !previous_match => last.1 = b,
                    _ => out.push((a, b)),
                }
                previous_match = m;
            }
            out.into_iter().for_each(|(a, b)| emit(a, b));
        }
        Behavior::MergedWithNext => {
            let mut out: Vec<(usize, usize)> = Vec::new();
            let mut previous_match = false;
            for &(a, b, m) in segs.iter().rev() {
                match out.last_mut() {
                    Some(last) if m && !previous_match => last.0 = a,
                    _ => out.push((a, b)),
                }
                previous_match = m;
            }
            out.into_iter().rev().for_each(|(a, b)| emit(a, b));
        }
        Behavior::Contiguous => {
            let mut cur: Option<(usize, usize, bool)> = None;
            for &(a, b, m) in &segs {
                cur = match cur {
                    Some((ca, _, cm)) if cm && m => Some((ca, b, true)),
                    Some(c) => {
                        emit(c.0, c.1);
                        Some((a, b, m))
                    }
                    None => Some((a, b, m)),
                };
            }
            if let Some(c) = cur {
                emit(c.0, c.1);
            }
        }
    }
}

/// Incremental decoding for token streaming: push ids, get back the text that
/// became complete (never splits a UTF-8 character).
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text it completed (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending
            .extend_from_slice(self.tok.token_bytes(id, self.skip_special));
        let mut out = String::new();
        let mut at = 0;
        loop {
            match std::str::from_utf8(&self.pending[at..]) {
                Ok(s) => {
                    out.push_str(s);
                    at = self.pending.len();
                    break;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[at..at + good]).unwrap());
                    at += good;
                    match e.error_len() {
                        // Invalid bytes: nothing can complete them.
                        Some(n) => {
                            out.push('\u{FFFD}');
                            at += n;
                        }
                        // An incomplete character at the end: wait for more.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..at);
        out
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    pub fn finish(self) -> String {
        String::from_utf8_lossy(&self.pending).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny byte-level tokenizer.json: bytes for "a b c h i ␠", merges that
    /// build "ab", "abc", "Ġa", "hi", two added tokens.
    fn tiny_json() -> String {
        let table = bytes_to_unicode();
        let mut vocab = serde_json::Map::new();
        // Every byte gets a token so any text encodes.
        for (b, c) in table.iter().enumerate() {
            vocab.insert(c.to_string(), json!(b));
        }
        for (i, t) in ["ab", "abc", "Ġa", "hi", "Ġab"].iter().enumerate() {
            vocab.insert(t.to_string(), json!(256 + i));
        }
        json!({
            "version": "1.0",
            "added_tokens": [
                {"id": 261, "content": "<|im_start|>", "special": true, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false},
                {"id": 262, "content": "<|im_end|>", "special": true, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false},
                {"id": 263, "content": "<think>", "special": false, "lstrip": false, "rstrip": false, "normalized": false, "single_word": false},
            ],
            "normalizer": null,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            ]},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [],
                "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [261], "tokens": ["<|im_start|>"]}}},
            "decoder": {"type": "ByteLevel"},
            "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", ["ab", "c"], "Ġ a", "h i", "Ġ ab"]},
        })
        .to_string()
    }

    #[test]
    fn tokenizer_json_encodes_decodes() {
        let t = Tokenizer::from_tokenizer_json(tiny_json().as_bytes()).unwrap();
        assert_eq!(t.vocab_size(), 264);
        assert_eq!(t.bos_id(), Some(261));
        assert!(t.add_bos());
        assert_eq!(t.eos_id(), Some(262));
        assert_eq!(t.token_to_id("abc"), Some(257));
        assert_eq!(t.id_to_token(259), Some("hi"));
        // "abc" merges fully; " ab" -> "Ġ" "ab" (rank 0 beats "Ġ a") -> "Ġab"; digits one by one.
        assert_eq!(t.encode("abc ab hi", false), vec![257, 260, 32, 259]);
        assert_eq!(t.encode("12", false), vec![b'1' as u32, b'2' as u32]);
        // Special tokens: only with parse_special; non-special added ones always.
        assert_eq!(t.encode("<|im_start|>hi", true), vec![261, 259]);
        assert_ne!(t.encode("<|im_start|>hi", false)[0], 261);
        assert_eq!(t.encode("<think>hi", false), vec![263, 259]);
        assert!(t.is_special(261) && !t.is_special(263) && !t.is_special(257));
        let text = "<|im_start|>abc ab\n\n  hi<|im_end|> é😀";
        let ids = t.encode(text, true);
        assert_eq!(t.decode(&ids, false), text);
        assert_eq!(t.decode(&ids, true), "abc ab\n\n  hi é😀");
        assert_eq!(t.encode("", true), Vec::<u32>::new());
    }

    #[test]
    fn export_roundtrips() {
        let t = Tokenizer::from_tokenizer_json(tiny_json().as_bytes()).unwrap();
        let j = t.to_tokenizer_json();
        let t2 = Tokenizer::from_tokenizer_json(j.to_string().as_bytes()).unwrap();
        for s in ["abc ab hi", "<|im_start|>x 123<think>", "  \n\tabab c"] {
            assert_eq!(t.encode(s, true), t2.encode(s, true), "{s:?}");
        }
        assert_eq!(t2.bos_id(), Some(261));
        assert_eq!(j["model"]["merges"][1], json!("ab c"));
    }

    #[test]
    fn gguf_vocab_builds() {
        let table = bytes_to_unicode();
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
        tokens.extend(table.iter().map(|c| c.to_string()));
        tokens.push("ab".into());
        let mut types = vec![3, 3];
        types.extend(std::iter::repeat_n(1, 257));
        let t = Tokenizer::from_gguf(GgufVocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            token_types: types,
            merges: vec!["a b".into()],
            bos_id: Some(1),
            eos_id: Some(0),
            ..Default::default()
        })
        .unwrap();
        let a = t.token_to_id("a").unwrap();
        assert_eq!(t.encode("ab<|im_start|>", true), vec![258, 1]);
        assert_eq!(t.encode("ba", false), vec![t.token_to_id("b").unwrap(), a]);
        assert!(t.is_special(0) && t.is_special(1));
        assert!(
            Tokenizer::from_gguf(GgufVocab {
                model: "llama".into(),
                ..Default::default()
            })
            .is_err()
        );
        let bad_pre = GgufVocab {
            model: "gpt2".into(),
            pre: Some("nope".into()),
            tokens: vec!["a".into()],
            ..Default::default()
        };
        assert!(Tokenizer::from_gguf(bad_pre).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn long_words_match_short_path() {
        let t = Tokenizer::from_tokenizer_json(tiny_json().as_bytes()).unwrap();
        // 60 bytes takes the heap path; the same text in short pieces the scan path.
        let long = "abcab".repeat(12);
        let mut short = Vec::new();
        for _ in 0..12 {
            short.extend(t.encode("abcab", false));
        }
        assert_eq!(t.encode(&long, false), short);
    }

    #[test]
    fn stream_decoder_holds_partial_chars() {
        let t = Tokenizer::from_tokenizer_json(tiny_json().as_bytes()).unwrap();
        // 😀 is F0 9F 98 80: four byte tokens.
        let ids = t.encode("hi😀!", false);
        assert_eq!(ids.len(), 6);
        let mut d = t.stream_decoder(true);
        let outs: Vec<String> = ids.iter().map(|&i| d.push(i)).collect();
        assert_eq!(outs, vec!["hi", "", "", "", "😀", "!"]);
        assert_eq!(d.finish(), "");
        // A dangling half character comes out as U+FFFD at the end.
        let mut d = t.stream_decoder(true);
        assert_eq!(d.push(ids[1]), "");
        assert_eq!(d.push(261), "");
        assert_eq!(d.finish(), "\u{FFFD}");
        // A byte that can never start a character is replaced at once.
        let mut d = t.stream_decoder(false);
        assert_eq!(d.push(0x80), "\u{FFFD}");
        assert_eq!(d.push(261), "<|im_start|>");
    }

    #[test]
    fn fast_regexes_match_fancy_regex() {
        let alphabet = [
            ' ', ' ', '\n', '\r', '\t', 'a', 'B', '1', '.', 'é', '\u{3000}', '\'', 's', '😀', '\u{a0}',
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let texts: Vec<String> = (0..4000)
            .map(|_| (0..1 + rand(14)).map(|_| alphabet[rand(alphabet.len())]).collect())
            .chain(["  a", "a  ", "\n\n a", " \n \n  b", "x \t\ty", "   ", "a\r\n\r\n  \n b"].map(String::from))
            .collect();
        for pattern in [GPT2_REGEX, LLAMA3_REGEX, QWEN2_REGEX, TEKKEN_REGEX, GPT4O_REGEX] {
            let fast = PreRegex::new(pattern).unwrap();
            assert!(fast.fixup.is_some());
            let slow = PreRegex {
                re: Regex::new(pattern).unwrap(),
                fixup: None,
            };
            for t in &texts {
                let (mut x, mut y) = (Vec::new(), Vec::new());
                fast.for_each_match(t, |a, b| x.push((a, b)));
                slow.for_each_match(t, |a, b| y.push((a, b)));
                assert_eq!(x, y, "{pattern} on {t:?}");
            }
        }
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Tokenizer>();
    }

    #[test]
    fn split_behaviors() {
        let re = PreRegex::new("-").unwrap();
        let run = |b: Behavior, inv: bool| {
            let mut v = Vec::new();
            split_regex(&re, "a-b--c", b, inv, |x, y| v.push(&"a-b--c"[x..y]));
            v
        };
        assert_eq!(run(Behavior::Isolated, false), ["a", "-", "b", "-", "-", "c"]);
        assert_eq!(run(Behavior::Removed, false), ["a", "b", "c"]);
        assert_eq!(run(Behavior::MergedWithPrevious, false), ["a-", "b-", "-", "c"]);
        assert_eq!(run(Behavior::MergedWithNext, false), ["a", "-b", "-", "-c"]);
        assert_eq!(run(Behavior::Contiguous, false), ["a", "-", "b", "--", "c"]);
        assert_eq!(run(Behavior::Removed, true), ["-", "-", "-"]);
        let mut v = Vec::new();
        split_digits("ab12c3", false, |x, y| v.push(&"ab12c3"[x..y]));
        assert_eq!(v, ["ab", "12", "c", "3"]);
    }
}
