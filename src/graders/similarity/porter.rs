//! nltk's `PorterStemmer()` in its default `NLTK_EXTENSIONS` mode, ported rule for rule.
//!
//! METEOR's stem stage and rouge-score's `use_stemmer=True` both call this stemmer, so
//! the port keeps nltk's quirks (its irregular-form pool, the 2-letter cvc rule, the
//! literal `*d` suffix fallthrough) instead of following the 1980 paper. It works on
//! `char`s because nltk indexes Python code points, and non-ASCII letters count as
//! consonants there too.

/// Words nltk maps without running the rules (its `irregular_forms` table, inverted).
const POOL: &[(&str, &str)] = &[
    ("sky", "sky"),
    ("skies", "sky"),
    ("dying", "die"),
    ("lying", "lie"),
    ("tying", "tie"),
    ("news", "news"),
    ("innings", "inning"),
    ("inning", "inning"),
    ("outings", "outing"),
    ("outing", "outing"),
    ("cannings", "canning"),
    ("canning", "canning"),
    ("howe", "howe"),
    ("proceed", "proceed"),
    ("exceed", "exceed"),
    ("succeed", "succeed"),
];

type Word = Vec<char>;

#[derive(Clone, Copy)]
enum Cond {
    None,
    PositiveMeasure,
    MeasureGt1,
    /// step 1b's `*d` rule: the stem's last letter is not l, s or z.
    NotLsz(char),
    /// step 1b's final rule: m == 1 and the stem ends consonant-vowel-consonant.
    MeasureOneCvc,
    /// step 1c (nltk): the stem is longer than one letter and ends in a consonant.
    LongConsonantEnd,
    /// step 2 `logi` (nltk): the measure of the word minus 3 letters is positive.
    LogiWordMinus3,
    /// step 4 `ion`: m > 1 and the stem ends in s or t.
    IonStem,
    /// step 5b `ll`: the measure of the word minus its last letter exceeds 1.
    LlWord,
}

struct Rule {
    suffix: &'static str,
    replacement: Replacement,
    cond: Cond,
}

#[derive(Clone, Copy)]
enum Replacement {
    Str(&'static str),
    Char(char),
}

const fn rule(suffix: &'static str, replacement: &'static str, cond: Cond) -> Rule {
    Rule {
        suffix,
        replacement: Replacement::Str(replacement),
        cond,
    }
}

/// Stems one word the way `nltk.stem.porter.PorterStemmer().stem(word)` does.
pub fn stem(word: &str) -> String {
    if let Some((_, base)) = POOL.iter().find(|(form, _)| *form == word) {
        return (*base).to_string();
    }
    let lowered = if word.is_ascii() {
        word.to_ascii_lowercase()
    } else {
        word.to_lowercase()
    };
    // nltk compares the length of the word as given, not of its lowercased form.
    if word.chars().count() <= 2 {
        return lowered;
    }
    let mut w: Word = lowered.chars().collect();
    step1a(&mut w);
    step1b(&mut w);
    apply_rules(&mut w, STEP1C);
    step2(&mut w);
    apply_rules(&mut w, STEP3);
    apply_rules(&mut w, STEP4);
    step5a(&mut w);
    apply_rules(&mut w, STEP5B);
    w.into_iter().collect()
}

fn is_consonant(w: &[char], i: usize) -> bool {
    match w[i] {
        'a' | 'e' | 'i' | 'o' | 'u' => false,
        'y' => i == 0 || !is_consonant(w, i - 1),
        _ => true,
    }
}

fn measure(stem: &[char]) -> usize {
    let mut count = 0;
    let mut prev_vowel = false;
    for i in 0..stem.len() {
        let consonant = is_consonant(stem, i);
        if consonant && prev_vowel {
            count += 1;
        }
        prev_vowel = !consonant;
    }
    count
}

fn contains_vowel(stem: &[char]) -> bool {
    (0..stem.len()).any(|i| !is_consonant(stem, i))
}

fn ends_double_consonant(w: &[char]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

fn ends_cvc(w: &[char]) -> bool {
    let n = w.len();
    (n >= 3
        && is_consonant(w, n - 3)
        && !is_consonant(w, n - 2)
        && is_consonant(w, n - 1)
        && !matches!(w[n - 1], 'w' | 'x' | 'y'))
        || (n == 2 && !is_consonant(w, 0) && is_consonant(w, 1))
}

/// Suffixes are ASCII, so bytes and chars line up.
fn ends_with(w: &[char], suffix: &str) -> bool {
    let n = suffix.len();
    w.len() >= n
        && w[w.len() - n..]
            .iter()
            .zip(suffix.bytes())
            .all(|(c, b)| *c == char::from(b))
}

fn check(cond: Cond, stem: &[char], word: &[char]) -> bool {
    match cond {
        Cond::None => true,
        Cond::PositiveMeasure => measure(stem) > 0,
        Cond::MeasureGt1 => measure(stem) > 1,
        Cond::NotLsz(c) => !matches!(c, 'l' | 's' | 'z'),
        Cond::MeasureOneCvc => measure(stem) == 1 && ends_cvc(stem),
        Cond::LongConsonantEnd => stem.len() > 1 && is_consonant(stem, stem.len() - 1),
        Cond::LogiWordMinus3 => measure(&word[..word.len().saturating_sub(3)]) > 0,
        Cond::IonStem => measure(stem) > 1 && matches!(stem.last(), Some('s' | 't')),
        Cond::LlWord => measure(&word[..word.len().saturating_sub(1)]) > 1,
    }
}

/// `_apply_rule_list`: the first rule whose suffix matches decides, whether or not its
/// condition holds.
fn apply_rules(w: &mut Word, rules: &[Rule]) {
    for r in rules {
        let stem_len = if r.suffix == "*d" && ends_double_consonant(w) {
            w.len() - 2
        } else if ends_with(w, r.suffix) {
            w.len() - r.suffix.len()
        } else {
            continue;
        };
        if check(r.cond, &w[..stem_len], w) {
            w.truncate(stem_len);
            match r.replacement {
                Replacement::Str(s) => w.extend(s.chars()),
                Replacement::Char(c) => w.push(c),
            }
        }
        return;
    }
}

fn replace_suffix(w: &mut Word, suffix_len: usize, replacement: &str) {
    w.truncate(w.len() - suffix_len);
    w.extend(replacement.chars());
}

const STEP1A: &[Rule] = &[
    rule("sses", "ss", Cond::None),
    rule("ies", "i", Cond::None),
    rule("ss", "ss", Cond::None),
    rule("s", "", Cond::None),
];

fn step1a(w: &mut Word) {
    if ends_with(w, "ies") && w.len() == 4 {
        replace_suffix(w, 3, "ie");
        return;
    }
    apply_rules(w, STEP1A);
}

fn step1b(w: &mut Word) {
    if ends_with(w, "ied") {
        let replacement = if w.len() == 4 { "ie" } else { "i" };
        replace_suffix(w, 3, replacement);
        return;
    }
    if ends_with(w, "eed") {
        if measure(&w[..w.len() - 3]) > 0 {
            replace_suffix(w, 3, "ee");
        }
        return;
    }
    let mut stem_len = None;
    for suffix in ["ed", "ing"] {
        if ends_with(w, suffix) && contains_vowel(&w[..w.len() - suffix.len()]) {
            stem_len = Some(w.len() - suffix.len());
            break;
        }
    }
    let Some(stem_len) = stem_len else {
        return;
    };
    w.truncate(stem_len);
    // contains_vowel guarantees a non-empty stem.
    let last = w.last().copied().unwrap_or(' ');
    apply_rules(
        w,
        &[
            rule("at", "ate", Cond::None),
            rule("bl", "ble", Cond::None),
            rule("iz", "ize", Cond::None),
            Rule {
                suffix: "*d",
                replacement: Replacement::Char(last),
                cond: Cond::NotLsz(last),
            },
            rule("", "e", Cond::MeasureOneCvc),
        ],
    );
}

const STEP1C: &[Rule] = &[rule("y", "i", Cond::LongConsonantEnd)];

const STEP2: &[Rule] = {
    use Cond::PositiveMeasure as P;
    &[
        rule("ational", "ate", P),
        rule("tional", "tion", P),
        rule("enci", "ence", P),
        rule("anci", "ance", P),
        rule("izer", "ize", P),
        rule("bli", "ble", P),
        rule("alli", "al", P),
        rule("entli", "ent", P),
        rule("eli", "e", P),
        rule("ousli", "ous", P),
        rule("ization", "ize", P),
        rule("ation", "ate", P),
        rule("ator", "ate", P),
        rule("alism", "al", P),
        rule("iveness", "ive", P),
        rule("fulness", "ful", P),
        rule("ousness", "ous", P),
        rule("aliti", "al", P),
        rule("iviti", "ive", P),
        rule("biliti", "ble", P),
        rule("fulli", "ful", P),
        rule("logi", "log", Cond::LogiWordMinus3),
    ]
};

fn step2(w: &mut Word) {
    if ends_with(w, "alli") && measure(&w[..w.len() - 4]) > 0 {
        replace_suffix(w, 4, "al");
        step2(w);
        return;
    }
    apply_rules(w, STEP2);
}

const STEP3: &[Rule] = {
    use Cond::PositiveMeasure as P;
    &[
        rule("icate", "ic", P),
        rule("ative", "", P),
        rule("alize", "al", P),
        rule("iciti", "ic", P),
        rule("ical", "ic", P),
        rule("ful", "", P),
        rule("ness", "", P),
    ]
};

const STEP4: &[Rule] = {
    use Cond::MeasureGt1 as M;
    &[
        rule("al", "", M),
        rule("ance", "", M),
        rule("ence", "", M),
        rule("er", "", M),
        rule("ic", "", M),
        rule("able", "", M),
        rule("ible", "", M),
        rule("ant", "", M),
        rule("ement", "", M),
        rule("ment", "", M),
        rule("ent", "", M),
        rule("ion", "", Cond::IonStem),
        rule("ou", "", M),
        rule("ism", "", M),
        rule("ate", "", M),
        rule("iti", "", M),
        rule("ous", "", M),
        rule("ive", "", M),
        rule("ize", "", M),
    ]
};

fn step5a(w: &mut Word) {
    if ends_with(w, "e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            w.pop();
        }
    }
}

const STEP5B: &[Rule] = &[rule("ll", "l", Cond::LlWord)];

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn matches_nltk_on_classic_words() {
        // Expected values come from nltk 3.9.1 PorterStemmer().stem.
        let cases = [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("feed", "feed"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("sing", "sing"),
            ("conflated", "conflat"),
            ("troubled", "troubl"),
            ("sized", "size"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generalizations", "gener"),
            ("dying", "die"),
            ("skies", "sky"),
            ("running", "run"),
            ("is", "is"),
        ];
        for (word, expected) in cases {
            assert_eq!(stem(word), expected, "stem({word})");
        }
    }
}
