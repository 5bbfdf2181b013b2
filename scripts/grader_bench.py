"""Python side of examples/grader_bench.rs: the same pairs, the same formulas as
scripts/grader_reference.py, single-threaded, one JSON line per grader.

    NLTK_DATA=/tmp/lathe-nltk-data python3 scripts/grader_bench.py [--seconds 0.5]
"""
import json
import os
import re
import sys
import time
import warnings

from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from nltk.translate.gleu_score import sentence_gleu
from nltk.translate.meteor_score import meteor_score
from nltk.corpus import wordnet
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

warnings.filterwarnings("ignore")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "grader_reference.jsonl")


TEMPLATE_RE = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")


def render(template, sample, item):
    """What a Python grader service does before the metric: resolve {{ ns.path }}."""

    def sub(m):
        namespace, *path = m.group(1).split(".")
        value = {"sample": sample, "item": item}[namespace]
        for key in path:
            value = value[key]
        return value if isinstance(value, str) else json.dumps(value)

    return TEMPLATE_RE.sub(sub, template)


def timed(pairs, budget, fn):
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        for a, b in pairs:
            fn(a, b)
        done += len(pairs)
    return done, time.perf_counter() - start


def main():
    budget = float(sys.argv[sys.argv.index("--seconds") + 1]) if "--seconds" in sys.argv else 0.5
    pairs = []
    with open(FIXTURE) as f:
        for line in f:
            row = json.loads(line)
            if "input" in row:
                pairs.append((row["input"], row["reference"]))
    wordnet.ensure_loaded()
    smooth = SmoothingFunction().method4
    scorers = {}

    def rouge(kind):
        scorer = scorers.setdefault(kind, rouge_scorer.RougeScorer([kind], use_stemmer=False))
        return lambda a, b: scorer.score(b, a)[kind].fmeasure

    graders = {
        "string_check": lambda a, b: 1.0 if a == b else 0.0,
        "fuzzy_match": lambda a, b: fuzz.ratio(a, b) / 100,
        "bleu": lambda a, b: sentence_bleu([b.split()], a.split(), smoothing_function=smooth),
        "gleu": lambda a, b: sentence_gleu([b.split()], a.split()),
        "meteor": lambda a, b: meteor_score([b.split()], a.split()),
        "rouge_1": rouge("rouge1"),
        "rouge_2": rouge("rouge2"),
        "rouge_3": rouge("rouge3"),
        "rouge_4": rouge("rouge4"),
        "rouge_5": rouge("rouge5"),
        "rouge_l": rouge("rougeL"),
    }
    samples = [({"output_text": a, "output_json": None, "output_tools": [], "choices": []}, {"reference": b})
               for a, b in pairs]
    for name, fn in graders.items():
        def grader(sample, item, fn=fn):
            return fn(render("{{sample.output_text}}", sample, item), render("{{ item.reference }}", sample, item))

        for label, data, call in ((name, samples, grader), (name + "/metric", pairs, fn)):
            done, secs = timed(data, budget, call)
            print(json.dumps({"grader": label, "pairs": done, "seconds": secs, "pairs_per_s": done / secs,
                              "us_per_pair": secs * 1e6 / done}))


if __name__ == "__main__":
    main()
