#!/usr/bin/env python3
"""Check lathe's o200k_base token counts against Python tiktoken.

1. Produce the corpus (texts plus lathe's counts) from Rust:
     LATHE_TOKEN_CORPUS=/tmp/corpus.jsonl \
       cargo test --release --lib -- --ignored dump_crosscheck_corpus
2. pip install tiktoken
3. python3 scripts/tiktoken_crosscheck.py /tmp/corpus.jsonl [--vocab o200k_base.tiktoken[.gz]]

tiktoken downloads its vocabulary from openaipublic.blob.core.windows.net. When
that is unreachable, pass --vocab (bpe-openai ships the file gzipped in its
crate under data/); its SHA-256 is checked against tiktoken's own expected hash,
and the split pattern and special tokens are taken from tiktoken_ext, so only
the rank file is supplied locally. Counts use encode_ordinary (special-token
strings are counted as text, as lathe does).
"""
import argparse
import gzip
import hashlib
import json
import sys

import tiktoken
import tiktoken_ext.openai_public as public

EXPECTED_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"


def load_encoding(vocab):
    if vocab is None:
        return tiktoken.get_encoding("o200k_base")
    raw = open(vocab, "rb").read()
    if vocab.endswith(".gz"):
        raw = gzip.decompress(raw)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != EXPECTED_SHA256:
        sys.exit(f"vocab sha256 {digest} != tiktoken's expected {EXPECTED_SHA256}")
    import base64

    ranks = {
        base64.b64decode(tok): int(rank)
        for tok, rank in (line.split() for line in raw.splitlines() if line)
    }
    # Reuse tiktoken's own definition, swapping only the rank loader.
    orig = public.load_tiktoken_bpe
    public.load_tiktoken_bpe = lambda *a, **k: ranks
    try:
        spec = public.o200k_base()
    finally:
        public.load_tiktoken_bpe = orig
    return tiktoken.Encoding(
        name=spec["name"],
        pat_str=spec["pat_str"],
        mergeable_ranks=spec["mergeable_ranks"],
        special_tokens=spec["special_tokens"],
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("--vocab")
    args = ap.parse_args()
    enc = load_encoding(args.vocab)
    n = mismatches = tokens = 0
    with open(args.corpus, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            want = len(enc.encode_ordinary(row["text"]))
            n += 1
            tokens += want
            if want != row["count"]:
                mismatches += 1
                if mismatches <= 10:
                    print(f"MISMATCH lathe={row['count']} tiktoken={want} text={row['text']!r}")
    print(f"tiktoken {tiktoken.__version__}: {n} texts, {tokens} tokens, {mismatches} mismatches")
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
