"""Reference scores for the text_similarity metrics, computed with the Python libraries.

Writes tests/fixtures/grader_reference.jsonl: one JSON object per (input, reference) pair
with every metric, plus `{"porter": ...}` lines with nltk Porter stems. The Rust test
tests/it/graders_similarity_reference.rs compares every number to 1e-6.

Setup: scripts/setup_reference_env.sh (pins nltk 3.9.1, rapidfuzz 3.10.1, rouge-score
0.1.2 and lays out WordNet 3.0 for nltk), then:
    NLTK_DATA=/tmp/lathe-nltk-data python3 scripts/grader_reference.py

The calls below are the exact formulas the Rust engine claims to reproduce:
  fuzzy_match  rapidfuzz.fuzz.ratio(input, reference) / 100
  bleu         sentence_bleu([ref.split()], inp.split(), smoothing_function=method4)
  gleu         sentence_gleu([ref.split()], inp.split())
  meteor       meteor_score([ref.split()], inp.split())
  rouge_N/L    RougeScorer([type], use_stemmer=False).score(ref, inp)[type].fmeasure
"""
import csv
import json
import os
import random
import sys
import warnings

from nltk.stem.porter import PorterStemmer
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import meteor_score
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANKING = os.environ.get("BANKING77", "/work/shared/data/banking77/train.csv")
OUT = os.path.join(ROOT, "tests", "fixtures", "grader_reference.jsonl")

SMOOTH = SmoothingFunction()
ROUGE_TYPES = ["rouge1", "rouge2", "rouge3", "rouge4", "rouge5", "rougeL"]
SCORERS = {t: rouge_scorer.RougeScorer([t], use_stemmer=False) for t in ROUGE_TYPES}
STEM_SCORERS = {t: rouge_scorer.RougeScorer([t], use_stemmer=True) for t in ("rouge1", "rouge2", "rougeL")}


def metrics(inp, ref):
    h, r = inp.split(), ref.split()
    out = {
        "fuzzy_match": fuzz.ratio(inp, ref) / 100,
        "bleu": float(sentence_bleu([r], h, smoothing_function=SMOOTH.method4)),
        "bleu_method0": float(sentence_bleu([r], h)),
        "bleu_method1": float(sentence_bleu([r], h, smoothing_function=SMOOTH.method1)),
        "gleu": float(sentence_gleu([r], h)),
        "meteor": float(meteor_score([r], h)),
    }
    for t in ROUGE_TYPES:
        name = "rouge_l" if t == "rougeL" else "rouge_" + t[-1]
        out[name] = SCORERS[t].score(ref, inp)[t].fmeasure
    for t, s in STEM_SCORERS.items():
        name = ("rouge_l" if t == "rougeL" else "rouge_" + t[-1]) + "_stem"
        out[name] = s.score(ref, inp)[t].fmeasure
    return out


def banking_rows():
    with open(BANKING, newline="") as f:
        return list(csv.DictReader(f))


def perturb(rng, text):
    words = text.split()
    if not words:
        return text
    op = rng.randrange(5)
    if op == 0 and len(words) > 2:
        i = rng.randrange(len(words))
        del words[i]
    elif op == 1:
        rng.shuffle(words)
    elif op == 2:
        words = [w.upper() if rng.random() < 0.3 else w for w in words]
    elif op == 3:
        words.insert(rng.randrange(len(words) + 1), rng.choice(["really", "please", "the", "card", "my"]))
    else:
        words = words[: max(1, len(words) // 2)]
    return " ".join(words)


EDGE_CASES = [
    ("", ""),
    ("", "reference"),
    ("input", ""),
    ("   ", " \t\n"),
    ("a", "a"),
    ("a", "b"),
    ("Paris", "paris"),
    ("the the the the", "the cat"),
    ("the cat sat on the mat", "the cat sat on the mat"),
    ("the cat sat on the mat", "a cat was sitting on the rug"),
    ("The quick brown fox jumps over the lazy dog.", "A fast brown fox leaps over a lazy dog."),
    ("It is a guide to action which ensures that the military always obeys the commands of the party",
     "It is a guide to action that ensures that the military will forever heed Party commands"),
    ("Hello, world!", "Hello world"),
    ("hello,world", "hello world"),
    ("!!! ??? ...", "..."),
    ("café naïve résumé", "cafe naive resume"),
    ("日本語のテキスト", "日本語のテキスト"),
    ("Ünïcödé wörds here", "unicode words here"),
    ("emoji 😀 test", "emoji test 😀"),
    ("İstanbul KELVIN", "istanbul kelvin"),
    ("repeated repeated repeated words words", "repeated words"),
    ("running runs ran runner", "run running runs"),
    ("generalizations relational conditional", "generalization relate condition"),
    ("the cars are driving quickly", "the automobile drives fast"),
    ("I bought a new automobile", "I purchased a new car"),
    ("big large huge", "large big enormous"),
    ("tabs\tand\nnewlines", "tabs and newlines"),
    ("a\u001fb\u001cc", "a b c"),
    ("non\u00a0breaking space", "non breaking space"),
    ("one", "one two three four five six"),
    ("one two three four five six", "one"),
    ("1 2 3 4 5", "1 2 3 4 5 6"),
    ("x" * 300, "x" * 299 + "y"),
    ("word " * 70, "word " * 65 + "other " * 5),
    ("skies dying lying news innings", "sky die lie news inning"),
    ("happily hopping feeds agreed plastered", "happy hop feed agree plaster"),
    ("CAPITAL Letters MIXED", "capital letters mixed"),
    ("ice_cream is tasty", "ice cream is tasty"),
    ("dogs barked loudly", "the dog was barking"),
    ("geese mice children", "goose mouse child"),
]


def main():
    rng = random.Random(77)
    rows = banking_rows()
    by_cat = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r["text"])
    pairs = list(EDGE_CASES)
    sample = rng.sample(rows, 260)
    for i, r in enumerate(sample):
        text = r["text"]
        kind = i % 6
        if kind == 0:
            pairs.append((text, text))
        elif kind == 1:
            pairs.append((perturb(rng, text), text))
        elif kind == 2:
            pairs.append((rng.choice(by_cat[r["category"]]), text))
        elif kind == 3:
            pairs.append((rng.choice(rows)["text"], text))
        elif kind == 4:
            pairs.append((r["category"].replace("_", " "), text))
        else:
            pairs.append((text.lower(), perturb(rng, text)))
    stemmer = PorterStemmer()
    words = sorted({w.lower() for a, b in pairs for w in (a + " " + b).split()})
    extra = ["caresses", "ponies", "ties", "feed", "agreed", "plastered", "motoring", "sing", "conflated",
             "troubled", "sized", "hopping", "tanned", "falling", "hissing", "fizzed", "failing", "filing",
             "happy", "sky", "relational", "conditional", "rational", "valenci", "hesitanci", "digitizer",
             "conformabli", "radicalli", "differentli", "vileli", "analogousli", "vietnamization",
             "predication", "operator", "feudalism", "decisiveness", "hopefulness", "callousness",
             "formaliti", "sensitiviti", "sensibiliti", "triplicate", "formative", "formalize",
             "electriciti", "electrical", "hopeful", "goodness", "revival", "allowance", "inference",
             "airliner", "gyroscopic", "adjustable", "defensible", "irritant", "replacement",
             "adjustment", "dependent", "adoption", "homologou", "communism", "activate", "angulariti",
             "homologous", "effective", "bowdlerize", "probate", "rate", "cease", "controll", "roll",
             "generously", "fluently", "biology", "ax*ded", "a", "is", "ies", "dies", "lied", "spied",
             "flies", "ly", "y", "yy", "syzygy", "xyz", "éléphant", "naïveté"]
    words = sorted(set(words) | set(extra))
    with open(OUT, "w") as f:
        for w in words:
            f.write(json.dumps({"porter": w, "stem": stemmer.stem(w)}, ensure_ascii=False) + "\n")
        for inp, ref in pairs:
            f.write(json.dumps({"input": inp, "reference": ref, "scores": metrics(inp, ref)}, ensure_ascii=False) + "\n")
    print(f"wrote {len(pairs)} pairs and {len(words)} stems to {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
