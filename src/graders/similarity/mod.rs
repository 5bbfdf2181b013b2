//! Deterministic text-similarity metrics, each a port of the Python library that users'
//! numbers come from.
//!
//! Choices where OpenAI does not name its implementation (see `README` in the report and
//! `scripts/grader_reference.py`, which computes the same numbers with the libraries):
//! - `fuzzy_match`: `rapidfuzz.fuzz.ratio(input, reference) / 100` (no preprocessing).
//! - tokenization for bleu/gleu/meteor: Python's `str.split()` (Unicode whitespace runs).
//!   Azure's evaluators for the same metric list use `nltk.word_tokenize`; the two agree
//!   on text whose punctuation is already space-separated.
//! - `bleu`: nltk `sentence_bleu`, 4-gram uniform weights, smoothing `method4` (the NIST
//!   geometric smoothing Azure's BLEU evaluator uses; unsmoothed BLEU is ~0 for any answer
//!   shorter than four words, which would make the grader useless for short answers).
//! - `gleu`: nltk `sentence_gleu` (1..4-grams). `meteor`: nltk `meteor_score` with its
//!   defaults (alpha 0.9, beta 3, gamma 0.5, lowercasing, Porter stems, WordNet synonyms).
//! - `rouge_*`: rouge-score `RougeScorer([type], use_stemmer=False)` F-measure; the
//!   stemmed variant is available through [`rouge_n`]/[`rouge_l`] for parity tests.

mod fx;
mod porter;
mod wordnet;

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::Hash;

use fx::FxBuildHasher;

use serde::{Deserialize, Serialize};

pub use porter::stem as porter_stem;
pub use wordnet::preload as preload_wordnet;

/// `text_similarity.evaluation_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimilarityMetric {
    FuzzyMatch,
    Bleu,
    Gleu,
    Meteor,
    #[serde(rename = "rouge_1")]
    Rouge1,
    #[serde(rename = "rouge_2")]
    Rouge2,
    #[serde(rename = "rouge_3")]
    Rouge3,
    #[serde(rename = "rouge_4")]
    Rouge4,
    #[serde(rename = "rouge_5")]
    Rouge5,
    #[serde(rename = "rouge_l")]
    RougeL,
    Cosine,
}

impl SimilarityMetric {
    pub const ALL: [SimilarityMetric; 11] = [
        Self::FuzzyMatch,
        Self::Bleu,
        Self::Gleu,
        Self::Meteor,
        Self::Rouge1,
        Self::Rouge2,
        Self::Rouge3,
        Self::Rouge4,
        Self::Rouge5,
        Self::RougeL,
        Self::Cosine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FuzzyMatch => "fuzzy_match",
            Self::Bleu => "bleu",
            Self::Gleu => "gleu",
            Self::Meteor => "meteor",
            Self::Rouge1 => "rouge_1",
            Self::Rouge2 => "rouge_2",
            Self::Rouge3 => "rouge_3",
            Self::Rouge4 => "rouge_4",
            Self::Rouge5 => "rouge_5",
            Self::RougeL => "rouge_l",
            Self::Cosine => "cosine",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Whether the metric is computed locally (everything but `cosine`).
    pub fn is_deterministic(self) -> bool {
        self != Self::Cosine
    }
}

/// nltk `SmoothingFunction` methods supported for BLEU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BleuSmoothing {
    /// `method0`: no smoothing (nltk's default).
    None,
    /// `method1`: add epsilon = 0.1 to zero-match precisions.
    Method1,
    /// `method4`: NIST geometric smoothing scaled by 1 / ln(hypothesis length), k = 5.
    Method4,
}

pub const DEFAULT_BLEU_SMOOTHING: BleuSmoothing = BleuSmoothing::Method4;
pub const DEFAULT_ROUGE_STEMMING: bool = false;

/// Scores a deterministic metric; `None` for `cosine`, which needs an embedder.
pub fn score(metric: SimilarityMetric, input: &str, reference: &str) -> Option<f64> {
    let value = match metric {
        SimilarityMetric::FuzzyMatch => fuzzy_match(input, reference),
        SimilarityMetric::Bleu => bleu(input, reference, DEFAULT_BLEU_SMOOTHING),
        SimilarityMetric::Gleu => gleu(input, reference),
        SimilarityMetric::Meteor => meteor(input, reference),
        SimilarityMetric::Rouge1 => rouge_n(input, reference, 1, DEFAULT_ROUGE_STEMMING),
        SimilarityMetric::Rouge2 => rouge_n(input, reference, 2, DEFAULT_ROUGE_STEMMING),
        SimilarityMetric::Rouge3 => rouge_n(input, reference, 3, DEFAULT_ROUGE_STEMMING),
        SimilarityMetric::Rouge4 => rouge_n(input, reference, 4, DEFAULT_ROUGE_STEMMING),
        SimilarityMetric::Rouge5 => rouge_n(input, reference, 5, DEFAULT_ROUGE_STEMMING),
        SimilarityMetric::RougeL => rouge_l(input, reference, DEFAULT_ROUGE_STEMMING),
        SimilarityMetric::Cosine => return None,
    };
    Some(value)
}

/// Python's `str.split()`: besides Unicode White_Space it also splits on the ASCII
/// information separators U+001C..U+001F.
pub fn py_split(text: &str) -> Vec<&str> {
    if !text.is_ascii() {
        return text
            .split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
            .filter(|t| !t.is_empty())
            .collect();
    }
    split_bytes(text, |b| matches!(b, b' ' | b'\t'..=b'\r' | 0x1c..=0x1f))
}

/// Splits on single-byte separators; only valid when separators are ASCII and every
/// non-separator byte belongs to a token (true for ASCII text, and for rouge's
/// "anything but [a-z0-9]" rule on any UTF-8).
fn split_bytes(text: &str, is_sep: impl Fn(u8) -> bool) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() / 4 + 1);
    let mut start = None;
    for (i, &b) in bytes.iter().enumerate() {
        match (is_sep(b), start) {
            (true, Some(s)) => {
                out.push(&text[s..i]);
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push(&text[s..]);
    }
    out
}

/// `rapidfuzz.fuzz.ratio(input, reference) / 100`: normalized Indel similarity over code
/// points, 1.0 for two empty strings.
///
/// Like rapidfuzz, the common prefix and suffix are matched before the bit-parallel LCS
/// runs on what is left: graded answers are often close to their reference, and the
/// affixes cost a byte compare each instead of a step of the recurrence.
pub fn fuzzy_match(input: &str, reference: &str) -> f64 {
    let (a, b) = (input.as_bytes(), reference.as_bytes());
    let ascii = input.is_ascii() && reference.is_ascii();
    let mut prefix = common_prefix(a, b);
    let mut suffix = common_suffix(&a[prefix..], &b[prefix..]);
    if !ascii {
        // Identical bytes so far, so both strings have their char boundaries in the
        // same places.
        while !input.is_char_boundary(prefix) {
            prefix -= 1;
        }
        while !input.is_char_boundary(input.len() - suffix) {
            suffix -= 1;
        }
    }
    let count = |s: &str| if ascii { s.len() } else { s.chars().count() };
    let affix_chars = count(&input[..prefix]) + count(&input[input.len() - suffix..]);
    let (mid_a, mid_b) = (
        &input[prefix..input.len() - suffix],
        &reference[prefix..reference.len() - suffix],
    );
    let (la, lb) = (count(mid_a), count(mid_b));
    let lensum = la + lb + 2 * affix_chars;
    if lensum == 0 {
        return 1.0;
    }
    let (short, long, short_len) = if la <= lb {
        (mid_a, mid_b, la)
    } else {
        (mid_b, mid_a, lb)
    };
    let lcs = affix_chars + lcs_str(short, short_len, long);
    let dist = lensum - 2 * lcs;
    let ratio = 100.0 * (1.0 - dist as f64 / lensum as f64);
    ratio / 100.0
}

fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Length of the common byte prefix, eight bytes at a time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let diff = word_at(a, i) ^ word_at(b, i);
        if diff != 0 {
            return i + (diff.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[i..n].iter().zip(&b[i..n]).take_while(|(x, y)| x == y).count()
}

/// Length of the common byte suffix, eight bytes at a time.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (ea, eb) = (a.len(), b.len());
    let mut i = 0;
    while i + 8 <= n {
        // Little-endian: the last byte of each block is the word's top byte.
        let diff = word_at(a, ea - i - 8) ^ word_at(b, eb - i - 8);
        if diff != 0 {
            return i + (diff.leading_zeros() / 8) as usize;
        }
        i += 8;
    }
    i + a[..ea - i]
        .iter()
        .rev()
        .zip(b[..eb - i].iter().rev())
        .take(n - i)
        .take_while(|(x, y)| x == y)
        .count()
}

/// LCS length in chars of `short` (`short_len` chars) and `long`.
fn lcs_str(short: &str, short_len: usize, long: &str) -> usize {
    if short_len == 0 {
        return 0;
    }
    if short.is_ascii() {
        // Bytes of a multi-byte char are all >= 0x80 and match no ASCII pattern char,
        // and a char that matches nothing leaves the recurrence's vector as it is: so
        // `long` can be walked byte by byte, whatever it holds.
        return match short_len {
            ..=64 => lcs_ascii_word::<u64>(short.as_bytes(), long.as_bytes()),
            65..=128 => lcs_ascii_word::<u128>(short.as_bytes(), long.as_bytes()),
            _ => lcs_ascii_blocks(short.as_bytes(), long.as_bytes()),
        };
    }
    match short_len {
        ..=64 => lcs_word::<u64>(short, short_len, long),
        65..=128 => lcs_word::<u128>(short, short_len, long),
        _ => lcs_chars(short, short_len, long),
    }
}

/// A machine word (or two) used as a bit vector in Hyyrö's LCS recurrence.
trait BitWord:
    Copy + std::ops::BitAnd<Output = Self> + std::ops::BitOr<Output = Self> + std::ops::Not<Output = Self>
{
    const ZERO: Self;
    const MAX: Self;
    fn bit(i: usize) -> Self;
    /// The lowest `n` bits set, `n` at most the width.
    fn low_bits(n: usize) -> Self;
    fn wrapping_add(self, other: Self) -> Self;
    fn count_ones(self) -> usize;
}

macro_rules! bit_word {
    ($t:ty) => {
        impl BitWord for $t {
            const ZERO: Self = 0;
            const MAX: Self = <$t>::MAX;
            fn bit(i: usize) -> Self {
                1 << i
            }
            fn low_bits(n: usize) -> Self {
                <$t>::MAX.checked_shr(<$t>::BITS - n as u32).unwrap_or(0)
            }
            fn wrapping_add(self, other: Self) -> Self {
                <$t>::wrapping_add(self, other)
            }
            fn count_ones(self) -> usize {
                <$t>::count_ones(self) as usize
            }
        }
    };
}

bit_word!(u64);
// Two words as one: the carry between them is the CPU's add-with-carry.
bit_word!(u128);

/// Bit-parallel LCS for a pattern of at most `W::BITS` chars, with a table lookup for
/// ASCII (the common case) and a short scan for everything else.
fn lcs_word<W: BitWord>(short: &str, short_len: usize, long: &str) -> usize {
    let mut ascii = [W::ZERO; 128];
    let mut other: Vec<(char, W)> = Vec::new();
    for (i, c) in short.chars().enumerate() {
        if c.is_ascii() {
            ascii[c as usize] = ascii[c as usize] | W::bit(i);
        } else if let Some(slot) = other.iter_mut().find(|(k, _)| *k == c) {
            slot.1 = slot.1 | W::bit(i);
        } else {
            other.push((c, W::bit(i)));
        }
    }
    let mut v = W::MAX;
    for c in long.chars() {
        let m = if c.is_ascii() {
            ascii[c as usize]
        } else {
            other.iter().find(|(k, _)| *k == c).map_or(W::ZERO, |(_, m)| *m)
        };
        let u = v & m;
        v = v.wrapping_add(u) | (v & !m);
    }
    (!v & W::low_bits(short_len)).count_ones()
}

/// [`lcs_word`] for an ASCII pattern, walking `long` byte by byte (see [`lcs_str`]).
fn lcs_ascii_word<W: BitWord>(short: &[u8], long: &[u8]) -> usize {
    let mut table = [W::ZERO; 128];
    for (i, &c) in short.iter().enumerate() {
        let slot = &mut table[usize::from(c & 0x7f)];
        *slot = *slot | W::bit(i);
    }
    let mut v = W::MAX;
    for &c in long {
        let m = table[usize::from(c & 0x7f)];
        let m = if c < 0x80 { m } else { W::ZERO };
        let u = v & m;
        v = v.wrapping_add(u) | (v & !m);
    }
    (!v & W::low_bits(short.len())).count_ones()
}

/// [`lcs_chars`] for an ASCII pattern longer than 128 chars.
fn lcs_ascii_blocks(short: &[u8], long: &[u8]) -> usize {
    let words = short.len().div_ceil(64);
    let mut table = vec![0u64; 128 * words];
    for (i, &c) in short.iter().enumerate() {
        table[usize::from(c & 0x7f) * words + i / 64] |= 1u64 << (i % 64);
    }
    let mut v = vec![u64::MAX; words];
    for &c in long {
        if c < 0x80 {
            let at = usize::from(c) * words;
            advance(&mut v, &table[at..at + words]);
        }
    }
    count_zeros(&v, short.len())
}

/// Multi-word version of [`lcs_word`] for patterns longer than 128 chars.
fn lcs_chars(short: &str, short_len: usize, long: &str) -> usize {
    let words = short_len.div_ceil(64);
    let mut ascii = vec![0u64; 128 * words];
    let mut other: HashMap<char, Vec<u64>, FxBuildHasher> = HashMap::default();
    for (i, c) in short.chars().enumerate() {
        let bit = 1u64 << (i % 64);
        if c.is_ascii() {
            ascii[c as usize * words + i / 64] |= bit;
        } else {
            other.entry(c).or_insert_with(|| vec![0; words])[i / 64] |= bit;
        }
    }
    let zeros = vec![0u64; words];
    let mut v = vec![u64::MAX; words];
    for c in long.chars() {
        let pm: &[u64] = if c.is_ascii() {
            &ascii[c as usize * words..(c as usize + 1) * words]
        } else {
            other.get(&c).map_or(&zeros, |m| m.as_slice())
        };
        advance(&mut v, pm);
    }
    count_zeros(&v, short_len)
}

/// One step of Hyyrö's recurrence over a multi-word bit vector: V = (V + (V & M)) | (V & !M).
fn advance(v: &mut [u64], pm: &[u64]) {
    let mut carry = 0u64;
    for (vw, &m) in v.iter_mut().zip(pm) {
        let u = *vw & m;
        let (sum1, c1) = vw.overflowing_add(u);
        let (sum2, c2) = sum1.overflowing_add(carry);
        carry = u64::from(c1 || c2);
        *vw = sum2 | (*vw & !m);
    }
}

fn count_zeros(v: &[u64], len: usize) -> usize {
    let mut zeros = 0usize;
    for (w, vw) in v.iter().enumerate() {
        let bits = (len - w * 64).min(64);
        let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
        zeros += (!vw & mask).count_ones() as usize;
    }
    zeros
}

/// Length of the longest common subsequence, bit-parallel (Hyyrö 2004) so that long texts
/// cost O(n * m / 64) and O(m) memory instead of a full table.
pub fn lcs_len<T: Eq + Hash + Copy>(a: &[T], b: &[T]) -> usize {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if short.is_empty() {
        return 0;
    }
    let words = short.len().div_ceil(64);
    let mut symbol_ids: HashMap<T, usize, FxBuildHasher> = HashMap::default();
    let mut masks: Vec<u64> = Vec::new();
    for (i, &sym) in short.iter().enumerate() {
        let next = symbol_ids.len();
        let id = *symbol_ids.entry(sym).or_insert(next);
        if id == next {
            masks.resize(masks.len() + words, 0);
        }
        masks[id * words + i / 64] |= 1u64 << (i % 64);
    }
    let mut v = vec![u64::MAX; words];
    for sym in long {
        if let Some(&id) = symbol_ids.get(sym) {
            advance(&mut v, &masks[id * words..(id + 1) * words]);
        }
    }
    count_zeros(&v, short.len())
}

/// Maps tokens to dense ids so n-grams can be packed into integers. Ids stay below
/// 2^25 (inputs are capped far below that many tokens), so five of them fit in a u128.
struct Interner<'a> {
    ids: HashMap<&'a str, u32, FxBuildHasher>,
}

impl<'a> Interner<'a> {
    fn with_capacity(n: usize) -> Self {
        Interner {
            ids: HashMap::with_capacity_and_hasher(n, FxBuildHasher::default()),
        }
    }

    fn ids(&mut self, tokens: &[&'a str]) -> Vec<u32> {
        tokens
            .iter()
            .map(|t| {
                let next = self.ids.len() as u32;
                *self.ids.entry(t).or_insert(next)
            })
            .collect()
    }
}

/// Clipped n-gram overlap (sum of min counts) and both totals, over interned ids.
fn id_ngram_overlap(a: &[u32], b: &[u32], n: usize) -> (usize, usize, usize) {
    const ID_BITS: u32 = 25;
    if n == 0 || n > 5 || a.iter().chain(b).any(|&id| id >= 1 << ID_BITS) {
        return ngram_overlap(a, b, n);
    }
    fn keys(t: &[u32], n: usize) -> Vec<u128> {
        const ID_BITS: u32 = 25;
        if t.len() < n {
            return Vec::new();
        }
        let mut k: Vec<u128> = t
            .windows(n)
            .map(|w| w.iter().fold(0u128, |acc, &id| (acc << ID_BITS) | u128::from(id)))
            .collect();
        k.sort_unstable();
        k
    }
    let (ka, kb) = (keys(a, n), keys(b, n));
    (merge_common(&ka, &kb), ka.len(), kb.len())
}

fn merge_common<K: Ord>(a: &[K], b: &[K]) -> usize {
    let (mut i, mut j, mut common) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                common += 1;
                i += 1;
                j += 1;
            }
        }
    }
    common
}

/// Clipped n-gram overlap (sum of min counts) and both totals, by sorting the windows.
fn ngram_overlap<T: Ord>(a: &[T], b: &[T], n: usize) -> (usize, usize, usize) {
    if n == 0 {
        return (0, 0, 0);
    }
    fn windows<T: Ord>(t: &[T], n: usize) -> Vec<&[T]> {
        if t.len() < n {
            return Vec::new();
        }
        let mut w: Vec<&[T]> = t.windows(n).collect();
        w.sort_unstable();
        w
    }
    let (wa, wb) = (windows(a, n), windows(b, n));
    (merge_common(&wa, &wb), wa.len(), wb.len())
}

/// nltk `sentence_bleu([reference.split()], input.split(), smoothing_function=...)`.
pub fn bleu(input: &str, reference: &str, smoothing: BleuSmoothing) -> f64 {
    let hyp = py_split(input);
    let refr = py_split(reference);
    bleu_tokens(&hyp, &refr, smoothing)
}

pub fn bleu_tokens(hyp: &[&str], refr: &[&str], smoothing: BleuSmoothing) -> f64 {
    const MAX_N: usize = 4;
    let mut interner = Interner::with_capacity(hyp.len() + refr.len());
    let (hyp_ids, ref_ids) = (interner.ids(hyp), interner.ids(refr));
    let mut numerators = [0usize; MAX_N];
    let mut denominators = [0usize; MAX_N];
    for n in 1..=MAX_N {
        let (clipped, hyp_total, _) = id_ngram_overlap(&hyp_ids, &ref_ids, n);
        numerators[n - 1] = clipped;
        denominators[n - 1] = hyp_total.max(1);
    }
    if numerators[0] == 0 {
        return 0.0;
    }
    let hyp_len = hyp.len();
    let ref_len = refr.len();
    let bp = if hyp_len > ref_len {
        1.0
    } else if hyp_len == 0 {
        0.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    // Each precision is either a ratio, a smoothed float, or absent (nltk skips p <= 0).
    let mut precisions: [Option<f64>; MAX_N] = [None; MAX_N];
    let mut incvnt = 1i32;
    for i in 0..MAX_N {
        let (num, den) = (numerators[i], denominators[i]);
        precisions[i] = if num != 0 {
            Some(num as f64 / den as f64)
        } else {
            match smoothing {
                BleuSmoothing::None => Some(f64::MIN_POSITIVE),
                BleuSmoothing::Method1 => Some((0.0 + 0.1) / den as f64),
                BleuSmoothing::Method4 if hyp_len > 1 => {
                    let numerator = 1.0 / (f64::from(2i32.pow(incvnt as u32) * 5) / (hyp_len as f64).ln());
                    incvnt += 1;
                    Some(numerator / den as f64)
                }
                BleuSmoothing::Method4 => None,
            }
        };
    }
    let terms: Vec<f64> = precisions
        .iter()
        .flatten()
        .filter(|p| **p > 0.0)
        .map(|p| 0.25 * p.ln())
        .collect();
    bp * fsum(&terms).exp()
}

/// `math.fsum`: exactly rounded sum (Shewchuk's partials), as nltk sums the log terms.
fn fsum(values: &[f64]) -> f64 {
    let mut partials: Vec<f64> = Vec::new();
    for &v in values {
        let mut x = v;
        let mut i = 0;
        for j in 0..partials.len() {
            let mut y = partials[j];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[i] = lo;
                i += 1;
            }
            x = hi;
        }
        partials.truncate(i);
        partials.push(x);
    }
    partials.iter().sum()
}

/// nltk `sentence_gleu([reference.split()], input.split())` with 1..4-grams.
pub fn gleu(input: &str, reference: &str) -> f64 {
    let hyp = py_split(input);
    let refr = py_split(reference);
    let mut interner = Interner::with_capacity(hyp.len() + refr.len());
    let (hyp_ids, ref_ids) = (interner.ids(&hyp), interner.ids(&refr));
    let (mut tp, mut tpfp, mut tpfn) = (0, 0, 0);
    for n in 1..=4 {
        let (common, h, r) = id_ngram_overlap(&hyp_ids, &ref_ids, n);
        tp += common;
        tpfp += h;
        tpfn += r;
    }
    let n_all = tpfp.max(tpfn);
    if n_all == 0 {
        return 0.0;
    }
    tp as f64 / n_all as f64
}

/// nltk `meteor_score([reference.split()], input.split())` with its defaults.
pub fn meteor(input: &str, reference: &str) -> f64 {
    let hyp: Vec<(usize, String)> = py_split(input).into_iter().map(str::to_lowercase).enumerate().collect();
    let refr: Vec<(usize, String)> = py_split(reference)
        .into_iter()
        .map(str::to_lowercase)
        .enumerate()
        .collect();
    let (translation_length, reference_length) = (hyp.len(), refr.len());

    let (mut matches, hyp, refr) = match_enums(hyp, refr, |h, r| h == r);
    let hyp: Vec<(usize, String)> = hyp.into_iter().map(|(i, w)| (i, porter::stem(&w))).collect();
    let refr: Vec<(usize, String)> = refr.into_iter().map(|(i, w)| (i, porter::stem(&w))).collect();
    let (stem_matches, hyp, refr) = match_enums(hyp, refr, |h, r| h == r);
    let (syn_matches, _, _) = wordnet_match(hyp, refr);
    matches.extend(stem_matches);
    matches.extend(syn_matches);
    matches.sort_by_key(|m| m.0);

    let matches_count = matches.len() as f64;
    if matches.is_empty() || translation_length == 0 || reference_length == 0 {
        return 0.0;
    }
    let (alpha, beta, gamma) = (0.9f64, 3.0f64, 0.5f64);
    let precision = matches_count / translation_length as f64;
    let recall = matches_count / reference_length as f64;
    let fmean = (precision * recall) / (alpha * precision + (1.0 - alpha) * recall);
    let frag_frac = count_chunks(&matches) as f64 / matches_count;
    let penalty = gamma * frag_frac.powf(beta);
    (1.0 - penalty) * fmean
}

type Enum = Vec<(usize, String)>;

/// `_match_enums`: scan hypotheses from the end, pair each with the last unmatched
/// reference that satisfies `eq`, and remove both.
fn match_enums(mut hyp: Enum, mut refr: Enum, eq: impl Fn(&str, &str) -> bool) -> (Vec<(usize, usize)>, Enum, Enum) {
    let mut matched = Vec::new();
    for i in (0..hyp.len()).rev() {
        if let Some(j) = (0..refr.len()).rev().find(|&j| eq(&hyp[i].1, &refr[j].1)) {
            matched.push((hyp[i].0, refr[j].0));
            hyp.remove(i);
            refr.remove(j);
        }
    }
    (matched, hyp, refr)
}

fn wordnet_match(mut hyp: Enum, mut refr: Enum) -> (Vec<(usize, usize)>, Enum, Enum) {
    let mut matched = Vec::new();
    for i in (0..hyp.len()).rev() {
        let syns = wordnet::Synonyms::of(&hyp[i].1);
        if let Some(j) = (0..refr.len()).rev().find(|&j| syns.contains(&refr[j].1)) {
            matched.push((hyp[i].0, refr[j].0));
            hyp.remove(i);
            refr.remove(j);
        }
    }
    (matched, hyp, refr)
}

fn count_chunks(matches: &[(usize, usize)]) -> usize {
    let mut chunks = 1;
    for pair in matches.windows(2) {
        if !(pair[1].0 == pair[0].0 + 1 && pair[1].1 == pair[0].1 + 1) {
            chunks += 1;
        }
    }
    chunks
}

/// rouge-score's tokenizer: lowercase, non-`[a-z0-9]` runs become separators, tokens longer
/// than three characters are Porter-stemmed when asked.
pub fn rouge_tokens(text: &str, stem: bool) -> Vec<String> {
    let lowered = lowercase(text);
    rouge_token_slices(&lowered, stem)
        .into_iter()
        .map(Cow::into_owned)
        .collect()
}

fn lowercase(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        if text.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(text.to_ascii_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    } else {
        Cow::Owned(text.to_lowercase())
    }
}

fn rouge_token_slices(lowered: &str, stem: bool) -> Vec<Cow<'_, str>> {
    split_bytes(lowered, |b| !(b.is_ascii_lowercase() || b.is_ascii_digit()))
        .into_iter()
        .map(|t| {
            if stem && t.len() > 3 {
                Cow::Owned(porter::stem(t))
            } else {
                Cow::Borrowed(t)
            }
        })
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
        .collect()
}

fn f_measure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

/// rouge-score `rougeN` F-measure with `reference` as the target.
pub fn rouge_n(input: &str, reference: &str, n: usize, stem: bool) -> f64 {
    let (pred, target) = rouge_ids(input, reference, stem);
    let (overlap, pred_count, target_count) = id_ngram_overlap(&pred, &target, n);
    let precision = overlap as f64 / pred_count.max(1) as f64;
    let recall = overlap as f64 / target_count.max(1) as f64;
    f_measure(precision, recall)
}

/// rouge-score `rougeL` F-measure with `reference` as the target.
pub fn rouge_l(input: &str, reference: &str, stem: bool) -> f64 {
    let (pred, target) = rouge_ids(input, reference, stem);
    if pred.is_empty() || target.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(&target, &pred) as f64;
    f_measure(lcs / pred.len() as f64, lcs / target.len() as f64)
}

/// Both texts tokenized the rouge-score way and mapped to shared ids.
fn rouge_ids(input: &str, reference: &str, stem: bool) -> (Vec<u32>, Vec<u32>) {
    let (pred_text, target_text) = (lowercase(input), lowercase(reference));
    if !stem {
        // Unstemmed tokens are exactly the [a-z0-9] runs, so no owned strings are needed.
        let sep = |b: u8| !(b.is_ascii_lowercase() || b.is_ascii_digit());
        let (pred, target) = (split_bytes(&pred_text, sep), split_bytes(&target_text, sep));
        let mut interner = Interner::with_capacity(pred.len() + target.len());
        return (interner.ids(&pred), interner.ids(&target));
    }
    let pred = rouge_token_slices(&pred_text, stem);
    let target = rouge_token_slices(&target_text, stem);
    let pred_refs: Vec<&str> = pred.iter().map(|t| t.as_ref()).collect();
    let target_refs: Vec<&str> = target.iter().map(|t| t.as_ref()).collect();
    let mut interner = Interner::with_capacity(pred_refs.len() + target_refs.len());
    (interner.ids(&pred_refs), interner.ids(&target_refs))
}

/// Cosine similarity of two embeddings; `None` when the lengths differ or a norm is 0.
pub fn cosine(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return None;
    }
    Some(dot / (na.sqrt() * nb.sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_matches_naive_table_across_word_boundaries() {
        let a: Vec<char> = "the quick brown fox jumps over the lazy dog again and again and again"
            .chars()
            .collect();
        let b: Vec<char> = "a quick brown dog jumped over the lazy fox, again and again!"
            .chars()
            .collect();
        assert_eq!(lcs_len(&a, &b), lcs_table(&a, &b));
    }

    /// The textbook table, for checking the bit-parallel paths.
    fn lcs_table(a: &[char], b: &[char]) -> usize {
        let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                table[i][j] = if a[i - 1] == b[j - 1] {
                    table[i - 1][j - 1] + 1
                } else {
                    table[i - 1][j].max(table[i][j - 1])
                };
            }
        }
        table[a.len()][b.len()]
    }

    /// rapidfuzz's ratio, straight from the definition.
    fn ratio_by_table(a: &str, b: &str) -> f64 {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let lensum = a.len() + b.len();
        if lensum == 0 {
            return 1.0;
        }
        1.0 - (lensum - 2 * lcs_table(&a, &b)) as f64 / lensum as f64
    }

    fn assert_ratio(a: &str, b: &str) {
        let expected = ratio_by_table(a, b);
        assert!((fuzzy_match(a, b) - expected).abs() < 1e-12, "{a:?} {b:?}");
        assert!((fuzzy_match(b, a) - expected).abs() < 1e-12, "{b:?} {a:?}");
    }

    #[test]
    fn fuzzy_match_lcs_paths_agree_with_the_table_at_every_width() {
        // Pattern lengths across the u64, u128 and multi-word paths and their edges, for
        // ASCII patterns (walked as bytes) and mixed ones (walked as chars), on random
        // strings and on edited copies that share a prefix and a suffix.
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as usize
        };
        for alphabet in ["abcde éü漢 ", "abcde ", "ab"] {
            let alphabet: Vec<char> = alphabet.chars().collect();
            for short_len in [0, 1, 2, 63, 64, 65, 100, 127, 128, 129, 200] {
                for _ in 0..4 {
                    let long_len = short_len + next() % 40;
                    let a: String = (0..short_len).map(|_| alphabet[next() % alphabet.len()]).collect();
                    let b: String = (0..long_len).map(|_| alphabet[next() % alphabet.len()]).collect();
                    assert_ratio(&a, &b);
                    let mut edited: Vec<char> = b.chars().collect();
                    for _ in 0..1 + next() % 4 {
                        let at = next() % (edited.len() + 1);
                        match next() % 3 {
                            0 if at < edited.len() => drop(edited.remove(at)),
                            1 if at < edited.len() => edited[at] = alphabet[next() % alphabet.len()],
                            _ => edited.insert(at, alphabet[next() % alphabet.len()]),
                        }
                    }
                    assert_ratio(&b, &edited.into_iter().collect::<String>());
                }
            }
        }
    }

    #[test]
    fn fuzzy_match_affixes_stop_at_char_boundaries() {
        // é (C3 A9) and è (C3 A8) share their first byte; é and © (C2 A9) their last.
        for (a, b) in [
            ("xé", "xè"),
            ("éx", "©x"),
            ("aé", "a©"),
            ("éé", "é"),
            ("漢字", "漢"),
            ("a漢b", "a字b"),
            ("same", "same"),
            ("préfix-x-süffix", "préfix-yy-süffix"),
            ("", "é"),
        ] {
            assert_ratio(a, b);
        }
    }

    #[test]
    fn fuzzy_match_matches_rapidfuzz_examples() {
        assert!((fuzzy_match("abc", "abd") - 0.6666666666666667).abs() < 1e-12);
        assert_eq!(fuzzy_match("", ""), 1.0);
        assert_eq!(fuzzy_match("a", ""), 0.0);
    }

    #[test]
    fn python_split_semantics() {
        assert_eq!(py_split(" a\u{1f}b\u{a0}c  "), vec!["a", "b", "c"]);
        assert!(py_split("   ").is_empty());
    }
}
