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
//! whose boundaries depend on a non-ASCII character. Counts are memoized per
//! thread because natural language repeats heavily: first for whole segments
//! between cuts (see [`for_each_cut`]), then for pieces. On the benchmark's
//! English chats this counts about 330 MB/s on one core, against 105 MB/s
//! for a per-piece `HashMap` memo.

use std::cell::RefCell;

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
    /// Loads the o200k tables (about 100 ms and 70 MB, once per process) now
    /// rather than on the first count.
    pub fn new() -> Self {
        bpe_openai::o200k_base();
        O200k
    }
}

/// Segments and pieces up to this many bytes are memoized inline in
/// [`CountCache`]; longer ones (long words, URLs, runs of symbols) are rare
/// and counted piece by piece.
const MAX_CACHED_PIECE: usize = 15;

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo::new());
}

impl TokenCounter for O200k {
    fn name(&self) -> &str {
        "o200k_base"
    }

    fn count(&self, text: &str) -> usize {
        let tok = bpe_openai::o200k_base();
        MEMO.with(|memo| {
            // A re-entrant call cannot happen here, but fall back to uncached
            // counting rather than panic if a borrow is ever outstanding.
            let Ok(mut memo) = memo.try_borrow_mut() else {
                return split_o200k(text).map(|p| tok.bpe.count(p.as_bytes())).sum();
            };
            // Cuts first, lookups second: the lookup loop has no
            // data-dependent branches, so the processor overlaps the memo's
            // cache misses instead of meeting them one at a time.
            let mut cuts = std::mem::take(&mut memo.cuts);
            cuts.clear();
            for_each_cut(text.as_bytes(), |cut| cuts.push(cut));
            cuts.push(text.len());
            let mut total = 0usize;
            let mut start = 0;
            for &cut in &cuts {
                total += memo.segment(text, start, cut, tok);
                start = cut;
            }
            memo.cuts = cuts;
            total
        })
    }
}

/// Calls `f` with every position `p` where a space follows an ASCII byte
/// that is not whitespace, in order.
///
/// An o200k piece always starts at such a space: no alternative of the
/// regex puts a space after a non-whitespace character in the same piece
/// (letters, digits and punctuation runs stop at it, and the trailing
/// `[\r\n/]*` of punctuation does not take spaces). Nor can what follows the
/// space change how the text before it splits: the only lookaround (`$`,
/// `(?!\S)`) concerns runs of whitespace, and the text before the cut ends in
/// a non-whitespace byte. So the text splits into the same pieces as the
/// concatenation of its segments split one by one, and a segment (a word with
/// its leading space and trailing punctuation, typically) can be memoized
/// whole. A non-ASCII byte before the space could be Unicode whitespace, so
/// there is no cut after one.
#[inline]
fn for_each_cut(b: &[u8], mut f: impl FnMut(usize)) {
    // Sixty-four bytes at a time: one mask of spaces and one of bytes that
    // may precede a cut, so the loop below runs once per cut, and its exit
    // is mispredicted once per window rather than once per word.
    let mut carry = 0u64; // whether the byte before the window may precede a cut
    let mut base = 0;
    let mut emit = |(space, not_before): (u64, u64), base: usize, carry: &mut u64| {
        let before = !not_before;
        let mut cuts = space & (before << 1 | *carry);
        *carry = before >> 63;
        while cuts != 0 {
            f(base + cuts.trailing_zeros() as usize);
            cuts &= cuts - 1;
        }
    };
    let (windows, rest) = b.as_chunks::<64>();
    for w in windows {
        emit(window_masks(w), base, &mut carry);
        base += 64;
    }
    if rest.is_empty() {
        return;
    }
    let masks = match b.last_chunk::<64>() {
        // The text's last 64 bytes, shifted so that bit 0 is `rest[0]`: the
        // bits shifted in past the end are clear, as if the text went on in
        // NUL bytes.
        Some(last) => {
            let (space, not_before) = window_masks(last);
            let shift = (64 - rest.len()) as u32;
            (space >> shift, not_before >> shift)
        }
        None => {
            // NUL padding is neither a space nor whitespace: it adds no cut.
            let mut w = [0u8; 64];
            w[..rest.len()].copy_from_slice(rest);
            window_masks(&w)
        }
    };
    emit(masks, base, &mut carry);
}

/// For a 64-byte window: bit `i` of the first mask is set where byte `i` is
/// a space, and of the second where byte `i` cannot precede a cut (ASCII
/// whitespace, or a byte of a non-ASCII character).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn window_masks(w: &[u8; 64]) -> (u64, u64) {
    use std::arch::x86_64::*;
    let mut space = 0u64;
    let mut not_before = 0u64;
    for k in 0..4 {
        // SAFETY: SSE2 is part of x86_64; the load reads 16 of the window's
        // 64 bytes, at offset 16 * k < 64.
        let (sp, bad) = unsafe {
            let v = _mm_loadu_si128(w.as_ptr().add(16 * k).cast::<__m128i>());
            let sp = _mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8));
            // \t, \n, \x0b, \x0c and \r are 9..=13: v - 9 <= 4, unsigned.
            let t = _mm_sub_epi8(v, _mm_set1_epi8(9));
            let ctl = _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(4)), t);
            let ws = _mm_or_si128(sp, ctl);
            // The sign bit is the non-ASCII bit.
            (_mm_movemask_epi8(sp), _mm_movemask_epi8(_mm_or_si128(ws, v)))
        };
        space |= u64::from(sp as u16) << (16 * k);
        not_before |= u64::from(bad as u16) << (16 * k);
    }
    (space, not_before)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn window_masks(w: &[u8; 64]) -> (u64, u64) {
    window_masks_portable(w)
}

/// [`window_masks`] by the byte classes, for other processors and as the
/// definition the SIMD version is tested against.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn window_masks_portable(w: &[u8; 64]) -> (u64, u64) {
    let mut space = 0u64;
    let mut not_before = 0u64;
    for (i, &c) in w.iter().enumerate() {
        space |= u64::from(c == b' ') << i;
        not_before |= u64::from(CLASS[c as usize] & (LETTER | DIGIT | PUNCT) == 0) << i;
    }
    (space, not_before)
}

/// 4,096 buckets: 16,384 segments in 256 KiB per thread. The benchmark's
/// chats have about 10,000 distinct segments; with 1,024 buckets 11% of
/// lookups missed, and 16,384 buckets were slower again (more cache misses
/// per lookup).
const SEGMENT_BUCKETS: usize = 1 << 12;
/// 1,024 buckets: 4,096 pieces in 64 KiB per thread.
const PIECE_BUCKETS: usize = 1 << 10;

/// Per-thread memos: token counts of whole segments (see [`for_each_cut`]),
/// and of pieces for segments that miss or are too long to memoize.
struct Memo {
    /// Scratch space for one text's cut positions.
    cuts: Vec<usize>,
    segments: CountCache<SEGMENT_BUCKETS>,
    pieces: CountCache<PIECE_BUCKETS>,
}

impl Memo {
    fn new() -> Self {
        Memo {
            cuts: Vec::new(),
            segments: CountCache::new(),
            pieces: CountCache::new(),
        }
    }

    /// Tokens in `text[start..end]`, a segment between two cuts.
    #[inline]
    fn segment(&mut self, text: &str, start: usize, end: usize, tok: &bpe_openai::Tokenizer) -> usize {
        let len = end.wrapping_sub(start);
        let pieces = &mut self.pieces;
        // The text is sliced (and its char boundaries checked) only on a
        // miss; a hit needs just the bytes of the key.
        let count = |pieces: &mut CountCache<PIECE_BUCKETS>| {
            text.get(start..end)
                .map_or(0, |segment| count_pieces(segment, pieces, tok))
        };
        if (1..=MAX_CACHED_PIECE).contains(&len) && end <= text.len() {
            let key = PieceKey::load(text.as_bytes(), start, len);
            self.segments.get_or_insert(key, || count(pieces)) as usize
        } else {
            count(pieces)
        }
    }
}

/// Tokens in `text`, piece by piece, memoizing short pieces in `memo`.
fn count_pieces(text: &str, memo: &mut CountCache<PIECE_BUCKETS>, tok: &bpe_openai::Tokenizer) -> usize {
    split_o200k(text)
        .map(|piece| {
            let b = piece.as_bytes();
            if b.len() <= MAX_CACHED_PIECE {
                memo.get_or_insert(PieceKey::load(b, 0, b.len()), || tok.bpe.count(b)) as usize
            } else {
                tok.bpe.count(b)
            }
        })
        .sum()
}

/// A piece of at most 15 bytes packed into two words: bytes 0..8 in `lo`,
/// bytes 8..15 in the low 56 bits of `hi`, the length in the top four bits
/// of `hi` (so pieces ending in NUL bytes stay distinct and no key is 0).
/// Bits 56..60 of `hi` are left for the memo to store the count in.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PieceKey {
    lo: u64,
    hi: u64,
}

const COUNT_SHIFT: u32 = 56;
const COUNT_BITS: u64 = 0xF << COUNT_SHIFT;

/// For a piece of `n` bytes, the masks that keep its bytes in `lo` and `hi`.
static KEY_MASKS: [(u64, u64); 16] = {
    let mut t = [(0, 0); 16];
    let mut n = 0;
    while n < 16 {
        const fn bits(n: usize) -> u64 {
            if n >= 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 }
        }
        t[n] = (bits(n), bits(n.saturating_sub(8)));
        n += 1;
    }
    t
};

impl PieceKey {
    /// Packs `bytes[pos..pos + len]` (`1 <= len <= 15`). Reads 16 bytes at
    /// once and masks off what follows the piece; near the end of the text
    /// it reads the text's last 16 bytes and shifts the piece down, so only
    /// texts shorter than 16 bytes take the byte-by-byte path.
    #[inline]
    fn load(bytes: &[u8], pos: usize, len: usize) -> Self {
        debug_assert!((1..=MAX_CACHED_PIECE).contains(&len));
        let word16 = |w: &[u8]| <[u8; 16]>::try_from(w).map_or(0, u128::from_le_bytes);
        let v = match bytes.get(pos..pos + 16) {
            Some(w) => word16(w),
            None => match bytes.len().checked_sub(16) {
                // The piece ends inside the last 16 bytes, so `pos` is
                // 1 to 15 bytes past `last`.
                Some(last) => word16(&bytes[last..])
                    .checked_shr(8 * pos.saturating_sub(last) as u32)
                    .unwrap_or(0),
                None => {
                    let mut b = [0u8; 16];
                    for (d, &s) in b.iter_mut().zip(bytes.get(pos..).unwrap_or_default()) {
                        *d = s;
                    }
                    u128::from_le_bytes(b)
                }
            },
        };
        let (lo_mask, hi_mask) = KEY_MASKS[len & 15];
        PieceKey {
            lo: v as u64 & lo_mask,
            // At most 7 bytes here, so the count and length bits start clear.
            hi: ((v >> 64) as u64 & hi_mask) | (len as u64) << 60,
        }
    }

    #[inline]
    fn hash(&self) -> u64 {
        (self.lo ^ self.hi.rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
}

/// Token counts of short texts (segments or pieces): a set-associative cache with four
/// 16-byte entries per 64-byte bucket, so a lookup touches one cache line and
/// compares inline keys (no pointer chasing, no allocation). A miss replaces
/// an entry chosen by the hash, so memory stays at `64 * N` bytes per
/// thread and the memo follows whatever vocabulary the current file uses.
/// It is kept small on purpose: a larger table is slower because the hot
/// entries spread over more cache lines and pages. `N`, the number of
/// buckets, is a power of two; as a constant it lets the compiler see that
/// every index is in bounds.
struct CountCache<const N: usize> {
    buckets: Box<[Bucket; N]>,
}

/// Each entry is a [`PieceKey`] with its count in `COUNT_BITS`; all zero
/// when empty (a key's length bits are never zero).
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Bucket([(u64, u64); 4]);

impl<const N: usize> CountCache<N> {
    fn new() -> Self {
        const { assert!(N.is_power_of_two() && N > 1) };
        let buckets = vec![Bucket::default(); N].into_boxed_slice();
        CountCache {
            buckets: buckets
                .try_into()
                .unwrap_or_else(|_| unreachable!("N buckets were made")),
        }
    }

    #[inline]
    fn get_or_insert(&mut self, key: PieceKey, count: impl FnOnce() -> usize) -> u32 {
        let h = key.hash();
        let bucket = &mut self.buckets[(h >> (64 - N.ilog2())) as usize];
        // Branch-free over the four entries: which one matches is random,
        // so a branch per entry would be mispredicted on most lookups.
        let mut hit = 0;
        for &(lo, hi) in &bucket.0 {
            let differs = (lo ^ key.lo) | ((hi & !COUNT_BITS) ^ key.hi);
            hit |= std::hint::select_unpredictable(differs == 0, hi, 0);
        }
        if hit != 0 {
            return ((hit & COUNT_BITS) >> COUNT_SHIFT) as u32;
        }
        // A piece of at most 15 bytes has at most 15 tokens.
        let n = count().min(15) as u32;
        let victim = bucket.0.iter().position(|&(_, hi)| hi == 0).unwrap_or((h & 3) as usize);
        bucket.0[victim] = (key.lo, key.hi | u64::from(n) << COUNT_SHIFT);
        n
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
        if self.pos >= self.text.len() {
            return None;
        }
        let len = piece_len(self.text, self.pos);
        let piece = self.text.get(self.pos..self.pos + len)?;
        self.pos += len;
        Some(piece)
    }
}

/// Length of the o200k piece that starts at byte `pos` of `text`: at least one
/// character, at most the rest of the text, and ending on a char boundary.
/// `pos` must be a char boundary below `text.len()`.
#[inline]
fn piece_len(text: &str, pos: usize) -> usize {
    let bytes = text.as_bytes();
    if let Some(n) = bytes.get(pos..).and_then(ascii_piece_len) {
        return n;
    }
    let Some(rest) = text.get(pos..) else {
        return bytes.len().saturating_sub(pos).max(1);
    };
    // Never loop forever, even if the regex were to return an empty match.
    regex_piece_len(rest).max(rest.chars().next().map_or(1, char::len_utf8))
}

fn regex_piece_len(rest: &str) -> usize {
    bpe_openai::o200k_base().split(rest).next().map_or(rest.len(), str::len)
}

// Byte classes for the ASCII matcher. Every byte has exactly one class.
const UPPER: u8 = 1;
const LOWER: u8 = 2;
const DIGIT: u8 = 4;
/// `\s` other than `\r` and `\n`: space, tab, vertical tab, form feed.
const SPACE: u8 = 8;
/// `\r` and `\n`.
const NEWLINE: u8 = 16;
/// Any other ASCII byte: `[^\s\p{L}\p{N}]` restricted to ASCII.
const PUNCT: u8 = 32;
/// A byte of a non-ASCII character: the regex decides.
const HIGH: u8 = 64;
const LETTER: u8 = UPPER | LOWER;
const WS: u8 = SPACE | NEWLINE;

static CLASS: [u8; 256] = {
    let mut t = [PUNCT; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b >= 0x80 {
            HIGH
        } else if b.is_ascii_uppercase() {
            UPPER
        } else if b.is_ascii_lowercase() {
            LOWER
        } else if b.is_ascii_digit() {
            DIGIT
        } else if b == b'\r' || b == b'\n' {
            NEWLINE
        } else if matches!(b, b'\t' | 0x0B | 0x0C | b' ') {
            SPACE
        } else {
            PUNCT
        };
        c += 1;
    }
    t
};

/// Class of `b[i]`; 0 (no class) past the end.
#[inline(always)]
fn class(b: &[u8], i: usize) -> u8 {
    match b.get(i) {
        Some(&c) => CLASS[c as usize],
        None => 0,
    }
}

/// End of the run of bytes of class `want` starting at `i`; `None` if the
/// run stops at a non-ASCII byte (which might belong to it).
#[inline(always)]
fn run(b: &[u8], mut i: usize, want: u8) -> Option<usize> {
    loop {
        let c = class(b, i);
        if c & want == 0 {
            return if c == HIGH { None } else { Some(i) };
        }
        i += 1;
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
#[inline]
fn ascii_piece_len(b: &[u8]) -> Option<usize> {
    let c = class(b, 0);
    // A and B: an optional prefix, an uppercase run, a lowercase run (one
    // of the two runs non-empty), an optional contraction. In ASCII, A
    // matches when lowercase letters follow and B when only uppercase do,
    // and both end at the same place.
    let start = if c & LETTER != 0 {
        Some(0)
    } else if c & (PUNCT | SPACE) != 0 {
        match class(b, 1) {
            HIGH => return None,
            n if n & LETTER != 0 => Some(1),
            _ => None,
        }
    } else {
        None
    };
    if let Some(j) = start {
        let k = run(b, j, UPPER)?;
        let m = run(b, k, LOWER)?;
        return contraction(b, m);
    }
    if c == DIGIT {
        // C: at most three digits; a non-ASCII digit could be the next one.
        let mut end = 1;
        while end < 3 {
            match class(b, end) {
                DIGIT => end += 1,
                HIGH => return None,
                _ => break,
            }
        }
        return Some(end);
    }
    // D: an optional space, then punctuation, then `[\r\n/]*`. A leading
    // punctuation byte followed by a non-ASCII one bailed above.
    let punct_start = if c == PUNCT {
        Some(0)
    } else if b.first() == Some(&b' ') && class(b, 1) == PUNCT {
        Some(1)
    } else {
        None
    };
    if let Some(start) = punct_start {
        let mut end = run(b, start + 1, PUNCT)?;
        // [\r\n/]* cannot match a non-ASCII character, so no bail here.
        while matches!(b.get(end), Some(b'\r' | b'\n' | b'/')) {
            end += 1;
        }
        return Some(end);
    }
    if c & WS != 0 {
        let end = run(b, 1, WS)?;
        if let Some(nl) = b[..end].iter().rposition(|&d| d == b'\r' || d == b'\n') {
            return Some(nl + 1); // E
        }
        if end == b.len() {
            return Some(end); // F
        }
        if end >= 2 {
            return Some(end - 1); // G
        }
        return Some(end); // H
    }
    None
}

/// End of an optional `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `m`; `None` if a
/// non-ASCII character decides (case-insensitive `s` also matches `ſ`).
#[inline]
fn contraction(b: &[u8], m: usize) -> Option<usize> {
    match b.get(m) {
        Some(b'\'') => {}
        Some(&c) if c >= 0x80 => return None,
        _ => return Some(m),
    }
    let Some(&c1) = b.get(m + 1) else {
        return Some(m);
    };
    if c1 >= 0x80 {
        return None;
    }
    match c1.to_ascii_lowercase() {
        b's' | b't' | b'm' | b'd' => Some(m + 2),
        c1 @ (b'r' | b'v' | b'l') => {
            let want = if c1 == b'l' { b'l' } else { b'e' };
            match b.get(m + 2) {
                Some(&c2) if c2 >= 0x80 => None,
                Some(&c2) if c2.to_ascii_lowercase() == want => Some(m + 3),
                _ => Some(m),
            }
        }
        _ => Some(m),
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

    /// The definition of a cut, byte by byte.
    fn cuts_naive(b: &[u8]) -> Vec<usize> {
        (1..b.len())
            .filter(|&p| b[p] == b' ' && CLASS[b[p - 1] as usize] & (LETTER | DIGIT | PUNCT) != 0)
            .collect()
    }

    #[test]
    fn cuts_match_their_definition() {
        let mut rng = StdRng::seed_from_u64(5);
        // Every byte value, around window edges, in every length up to three windows.
        for len in 0..200 {
            for _ in 0..20 {
                let b: Vec<u8> = (0..len)
                    .map(|_| match rng.random_range(0..4) {
                        0 => b' ',
                        1 => [b'\t', b'\n', 0x0b, 0x0c, b'\r', b'a', b'.', 0, 0x80, 0xff][rng.random_range(0..10)],
                        _ => rng.random(),
                    })
                    .collect();
                let mut got = Vec::new();
                for_each_cut(&b, |p| got.push(p));
                assert_eq!(got, cuts_naive(&b), "{b:?}");
                if let Some(w) = b.first_chunk::<64>() {
                    assert_eq!(window_masks(w), window_masks_portable(w));
                }
            }
        }
    }

    #[test]
    fn piece_keys_pack_exactly_the_piece() {
        let mut rng = StdRng::seed_from_u64(7);
        for text_len in 1..60 {
            let b: Vec<u8> = (0..text_len).map(|_| rng.random_range(1..=255)).collect();
            for pos in 0..text_len {
                for len in 1..=MAX_CACHED_PIECE.min(text_len - pos) {
                    let mut want = [0u8; 16];
                    want[..len].copy_from_slice(&b[pos..pos + len]);
                    let key = PieceKey::load(&b, pos, len);
                    assert_eq!(key.lo, u64::from_le_bytes(want[..8].try_into().unwrap()));
                    assert_eq!(key.hi & !(0xF << 60), u64::from_le_bytes(want[8..].try_into().unwrap()));
                    assert_eq!(key.hi >> 60, len as u64, "{text_len} {pos} {len}");
                }
            }
        }
    }

    #[test]
    fn cached_count_equals_reference() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..20_000 {
            let text = random_text(&mut rng);
            assert_eq!(O200k.count(&text), O200kReference.count(&text), "{text:?}");
        }
        // Longer texts hit the memo's entries again and cross more cuts.
        for _ in 0..2_000 {
            let text: String = (0..8).map(|_| random_text(&mut rng)).collect();
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
            for line in data.lines().take(2000) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                // Assistant messages with tool calls may have no string content.
                for m in v["messages"].as_array().unwrap() {
                    if let Some(content) = m["content"].as_str() {
                        write(content);
                    }
                }
            }
        }
    }
}
