#!/usr/bin/env python3
"""Convert the Banking77 CSVs into Lathe / OpenAI fine-tuning JSONL.

Writes, into --out-dir:
  banking77_train_sft.jsonl   SFT chat rows: system + user(text) + assistant(label)
  banking77_test_sft.jsonl    the same shape for the test split (usable as a validation file)
  banking77_test_items.jsonl  eval items: {"text": ..., "label": ...}

Sampling matches shared/peers/banking77/common.py exactly: each split is sampled with its own
random.Random(seed).sample(rows, n) (seed 0, 500 train / 300 test by default), so the rows and
their order are the ones the peer baseline trained and evaluated on. --all keeps every row in
file order instead.

Standard library only.

  python3 scripts/banking77_to_jsonl.py --out-dir data/banking77
"""
import argparse
import csv
import json
import os
import random
import sys

SYSTEM = ("Classify the customer's banking query into exactly one intent label. "
          "Answer with the label only.")

_HERE = os.path.dirname(os.path.abspath(__file__))
# scripts/ -> repo root -> workspace root holding shared/ (the project's usual layout), or a
# shared/ folder inside the repo.
_CANDIDATES = [
    os.path.join(_HERE, "..", "..", "shared", "data", "banking77"),
    os.path.join(_HERE, "..", "shared", "data", "banking77"),
    "/work/shared/data/banking77",
]


def default_data_dir():
    env = os.environ.get("BANKING77_DIR")
    if env:
        return env
    for c in _CANDIDATES:
        if os.path.isfile(os.path.join(c, "train.csv")):
            return os.path.normpath(c)
    return os.path.normpath(_CANDIDATES[0])


def read_split(data_dir, name):
    with open(os.path.join(data_dir, name), newline="", encoding="utf-8") as f:
        return [(r["text"], r["category"]) for r in csv.DictReader(f)]


def messages(text, label=None):
    m = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
    if label is not None:
        m.append({"role": "assistant", "content": label})
    return m


def write_jsonl(path, rows):
    # ensure_ascii=False keeps the text readable; "\n" line endings on every platform.
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=default_data_dir(),
                    help="folder with train.csv, test.csv, categories.json (env BANKING77_DIR)")
    ap.add_argument("--out-dir", default=".", help="where to write the JSONL files")
    ap.add_argument("--train-n", type=int, default=500)
    ap.add_argument("--test-n", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--all", action="store_true", help="keep every row, in file order (no sampling)")
    a = ap.parse_args(argv)

    train = read_split(a.data_dir, "train.csv")
    test = read_split(a.data_dir, "test.csv")
    with open(os.path.join(a.data_dir, "categories.json"), encoding="utf-8") as f:
        cats = set(json.load(f))
    bad = sorted({lab for _, lab in train + test} - cats)
    if bad:
        sys.exit(f"labels not in categories.json: {bad[:5]}")

    if not a.all:
        if a.train_n > len(train) or a.test_n > len(test):
            sys.exit(f"asked for {a.train_n}/{a.test_n} rows, have {len(train)}/{len(test)}")
        # Same calls, same order as common.splits(): one fresh Random(seed) per split.
        train = random.Random(a.seed).sample(train, a.train_n)
        test = random.Random(a.seed).sample(test, a.test_n)

    os.makedirs(a.out_dir, exist_ok=True)
    outs = {
        "banking77_train_sft.jsonl": [{"messages": messages(t, l)} for t, l in train],
        "banking77_test_sft.jsonl": [{"messages": messages(t, l)} for t, l in test],
        "banking77_test_items.jsonl": [{"text": t, "label": l} for t, l in test],
    }
    for name, rows in outs.items():
        p = os.path.join(a.out_dir, name)
        write_jsonl(p, rows)
        print(f"wrote {p}: {len(rows)} rows, {os.path.getsize(p)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
