#!/usr/bin/env python3
"""Generate a large, deterministic SFT chat JSONL file for validator / tokenizer benchmarks.

  python3 scripts/gen_sft_bench.py --mb 100 --out /tmp/sft_bench_100mb.jsonl [--seed 0]

Each line: {"messages": [system, (user, assistant) x 1-4]}, about 3% of rows also carry "tools",
an assistant message with "tool_calls" (content null), "tool" messages with tool_call_id, and
sometimes "parallel_tool_calls". A few percent of earlier assistant turns carry "weight": 0.
Text is made of real English sentences (a fixed set plus sentences built from templates over a
vocabulary of real words), so a BPE tokenizer sees realistic text; message lengths run from a few
words to several paragraphs, with the odd list, number, code span or non-ASCII character.

MB here is 10^6 bytes; the file is cut at the first row boundary at or past --mb. The same
--seed and --mb always give byte-identical output (standard library only, Python 3.8+).
"""
import argparse
import json
import os
import random
import sys
import time

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a friendly customer support agent for an online bookstore. Keep answers short and polite.",
    "You are an expert software engineer. Explain your reasoning clearly and include code when it helps.",
    "You are a travel planning assistant. Suggest practical itineraries and mention costs where you can.",
    "You are a patient tutor for high school mathematics and science.",
    "You are a cooking assistant. Give precise quantities in metric units.",
    "You are a concise assistant. Answer in at most three sentences unless asked for more detail.",
    "You are a writing coach who gives constructive, specific feedback.",
    "You are an assistant for a bank's mobile app. Never ask for full card numbers or passwords.",
    "You are a research assistant. Summarise sources faithfully and say when you are unsure.",
]

FIXED = [
    "The quick brown fox jumps over the lazy dog.",
    "Thanks for reaching out, I'm happy to help with that.",
    "Could you tell me a little more about what you're trying to do?",
    "That depends on a few things, so let me walk you through the main options.",
    "In most cases the simplest approach is also the most reliable one.",
    "I'd recommend starting small and measuring before you optimise anything.",
    "Let me know if you'd like me to go into more detail on any of these points.",
    "If that doesn't work, try restarting the application and signing in again.",
    "The museum is open from 9 a.m. to 6 p.m. every day except Monday.",
    "Water boils at 100 degrees Celsius at sea level, but at a lower temperature at altitude.",
    "A balanced diet includes vegetables, whole grains, lean protein and healthy fats.",
    "The train from London to Edinburgh takes about four and a half hours.",
    "Remember to back up your files before upgrading the operating system.",
    "The meeting has been moved to Thursday afternoon at half past two.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "It's worth reading the documentation first, because the defaults changed in the last release.",
    "Honestly, I'm not sure, but here's what I would check first.",
    "Your order has shipped and should arrive within three to five business days.",
    "The function returns None when the key is missing, so check for that before using the result.",
    "We've all been there: the deadline is tomorrow and the tests still fail.",
    "Good question! The short answer is yes, but there are a couple of caveats.",
    "The café on the corner serves the best croissants in town, according to my neighbours.",
    "Prices start at €12 per person, and children under six travel free.",
    "Don't forget to drink water and take short breaks when you study for long periods.",
]

DET = ["the", "a", "this", "that", "every", "each", "our", "your", "their", "one"]
ADJ = ["new", "old", "simple", "complex", "quiet", "busy", "small", "large", "important", "useful",
       "reliable", "expensive", "cheap", "modern", "traditional", "local", "remote", "popular",
       "careful", "quick", "slow", "strange", "familiar", "private", "public", "difficult", "easy",
       "beautiful", "practical", "final", "early", "late", "recent", "common", "rare", "healthy"]
NOUN = ["customer", "project", "report", "server", "garden", "city", "teacher", "student", "recipe",
        "database", "question", "answer", "budget", "meeting", "manager", "library", "museum", "train",
        "ticket", "account", "payment", "window", "computer", "network", "river", "mountain", "village",
        "company", "team", "problem", "solution", "design", "document", "email", "message", "schedule",
        "kitchen", "doctor", "patient", "engine", "algorithm", "function", "variable", "record",
        "contract", "invoice", "delivery", "holiday", "weekend", "flight", "hotel", "restaurant",
        "market", "price", "policy", "result", "experiment", "theory", "history", "language", "story",
        "article", "camera", "battery", "screen", "keyboard", "password", "update", "feature", "bug"]
VERB_PAST = ["changed", "improved", "delayed", "approved", "rejected", "reviewed", "finished", "started",
             "reported", "explained", "described", "tested", "fixed", "broke", "updated", "moved",
             "cancelled", "booked", "visited", "measured", "noticed", "ignored", "shared", "opened",
             "closed", "received", "sent", "built", "planned", "organised", "compared", "recorded"]
VERB_BASE = ["change", "improve", "check", "approve", "review", "finish", "start", "report", "explain",
             "describe", "test", "fix", "update", "move", "cancel", "book", "visit", "measure", "share",
             "open", "close", "send", "build", "plan", "organise", "compare", "record", "reset",
             "install", "configure", "export", "import", "delete", "restore", "schedule", "translate"]
ADV = ["quickly", "carefully", "quietly", "finally", "recently", "usually", "often", "rarely",
       "probably", "certainly", "clearly", "slowly", "easily", "already", "still", "almost"]
PREP = ["in", "on", "with", "for", "after", "before", "during", "without", "about", "near", "from",
        "under", "across", "through", "behind", "between"]
CONN = ["However,", "Meanwhile,", "As a result,", "In practice,", "For example,", "On the other hand,",
        "Fortunately,", "In short,", "That said,", "Because of this,", "Later,", "Overall,"]
NAMES = ["Alice", "Ben", "Chloé", "David", "Elena", "Farid", "Grace", "Hiroshi", "Isabel", "Jonas",
         "Kavya", "Liam", "Mei", "Noah", "Olivia", "Pedro", "Zoë"]
PLACES = ["Paris", "Berlin", "Tokyo", "Lisbon", "Toronto", "Nairobi", "São Paulo", "Sydney", "Oslo",
          "Dublin", "Seoul", "Mumbai", "Kraków", "Reykjavík"]
CODE = ["`len(items)`", "`git rebase -i HEAD~3`", "`SELECT * FROM orders WHERE id = 42;`",
        "`cargo test --release`", "`npm install`", "`x = [i * i for i in range(10)]`",
        "`fn main() { println!(\"hello\"); }`", "`docker compose up -d`", "`chmod +x run.sh`"]


def build_pool(rng, n):
    pool = list(FIXED)
    c = rng.choice
    templates = [
        lambda: f"{c(DET).capitalize()} {c(ADJ)} {c(NOUN)} {c(VERB_PAST)} {c(DET)} {c(NOUN)} {c(PREP)} {c(DET)} {c(ADJ)} {c(NOUN)}.",
        lambda: f"{c(CONN)} {c(NAMES)} {c(ADV)} {c(VERB_PAST)} the {c(NOUN)} {c(PREP)} {c(PLACES)}.",
        lambda: f"How do I {c(VERB_BASE)} {c(DET)} {c(NOUN)} {c(PREP)} {c(DET)} {c(NOUN)}?",
        lambda: f"Can you help me {c(VERB_BASE)} the {c(ADJ)} {c(NOUN)} before {c(['Monday', 'Friday', 'the weekend', 'next week', 'tomorrow'])}?",
        lambda: f"You should {c(ADV)} {c(VERB_BASE)} the {c(NOUN)} first, then {c(VERB_BASE)} the {c(NOUN)}.",
        lambda: f"The {c(NOUN)} costs {rng.randint(2, 990)}.{rng.randint(0, 99):02d} dollars, which is {rng.randint(2, 60)}% more than last year.",
        lambda: f"It's {c(ADV)} {c(ADJ)} to {c(VERB_BASE)} {c(DET)} {c(NOUN)}, so don't {c(VERB_BASE)} it {c(PREP)} the {c(NOUN)}.",
        lambda: f"To {c(VERB_BASE)} the {c(NOUN)}, run {c(CODE)} and {c(VERB_BASE)} the {c(NOUN)}.",
        lambda: f"{c(NAMES)} and {c(NAMES)} {c(VERB_PAST)} {rng.randint(2, 40)} {c(NOUN)}s {c(PREP)} {c(PLACES)} in {rng.randint(1990, 2024)}.",
        lambda: f"Why doesn't the {c(NOUN)} {c(VERB_BASE)} when I {c(VERB_BASE)} the {c(ADJ)} {c(NOUN)}?",
        lambda: f"We're {c(ADV)} {c(['planning', 'trying', 'hoping', 'going'])} to {c(VERB_BASE)} the {c(NOUN)}, but they'll need a {c(ADJ)} {c(NOUN)} first.",
    ]
    while len(pool) < n:
        pool.append(rng.choice(templates)())
    return pool


def make_text(rng, pool, kind):
    """kind: 'short' (user-ish) or 'long' (assistant-ish)."""
    r = rng.random()
    if kind == "short":
        n = 1 if r < 0.45 else (rng.randint(2, 4) if r < 0.9 else rng.randint(5, 12))
        return " ".join(rng.choices(pool, k=n))
    if r < 0.2:
        return " ".join(rng.choices(pool, k=rng.randint(1, 2)))
    paras = 1 if r < 0.55 else rng.randint(2, 5)
    out = []
    for _ in range(paras):
        if rng.random() < 0.12:
            items = rng.choices(pool, k=rng.randint(2, 5))
            out.append("\n".join(f"{i + 1}. {s}" for i, s in enumerate(items)))
        else:
            out.append(" ".join(rng.choices(pool, k=rng.randint(2, 7))))
    return "\n\n".join(out)


TOOLS = [
    {"type": "function", "function": {"name": "get_current_weather", "description": "Get the current weather for a city.",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}},
    {"type": "function", "function": {"name": "lookup_order", "description": "Look up an order by id.",
     "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}},
    {"type": "function", "function": {"name": "search_docs", "description": "Search the documentation.",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}}, "required": ["query"]}}},
]


def tool_row(rng, pool, idx):
    sysm = {"role": "system", "content": rng.choice(SYSTEMS)}
    which = rng.randrange(3)
    n_calls = 2 if rng.random() < 0.3 else 1
    calls, results = [], []
    for j in range(n_calls):
        cid = f"call_{idx:07d}_{j}"
        if which == 0:
            city = rng.choice(PLACES)
            args = {"location": city, "unit": "celsius"}
            res = {"temperature": rng.randint(-10, 35), "unit": "celsius", "conditions": rng.choice(["sunny", "cloudy", "light rain", "snow", "windy"])}
        elif which == 1:
            args = {"order_id": f"ORD-{rng.randint(10000, 99999)}"}
            res = {"status": rng.choice(["shipped", "delivered", "processing"]), "eta_days": rng.randint(1, 7)}
        else:
            args = {"query": rng.choice(pool)[:60], "max_results": 3}
            res = [{"title": rng.choice(pool)[:40], "snippet": rng.choice(pool)}]
        calls.append({"id": cid, "type": "function", "function": {"name": TOOLS[which]["function"]["name"], "arguments": json.dumps(args, ensure_ascii=False)}})
        results.append({"role": "tool", "tool_call_id": cid, "content": json.dumps(res, ensure_ascii=False)})
    msgs = [sysm, {"role": "user", "content": make_text(rng, pool, "short")},
            {"role": "assistant", "content": None, "tool_calls": calls}]
    msgs += results
    msgs.append({"role": "assistant", "content": make_text(rng, pool, "long")})
    row = {"messages": msgs, "tools": TOOLS}
    if n_calls > 1:
        row["parallel_tool_calls"] = True
    return row


def chat_row(rng, pool):
    msgs = [{"role": "system", "content": rng.choice(SYSTEMS)}]
    turns = rng.choices([1, 2, 3, 4], weights=[45, 30, 15, 10])[0]
    for t in range(turns):
        msgs.append({"role": "user", "content": make_text(rng, pool, "short")})
        a = {"role": "assistant", "content": make_text(rng, pool, "long")}
        if t < turns - 1 and rng.random() < 0.1:
            a["weight"] = 0
        msgs.append(a)
    return {"messages": msgs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=100.0, help="target size in MB (10^6 bytes)")
    ap.add_argument("--out", default="sft_bench.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    rng = random.Random(a.seed)
    pool = build_pool(rng, 6000)
    target = int(a.mb * 1_000_000)
    size = rows = 0
    buf = []
    dumps = json.JSONEncoder(ensure_ascii=False).encode
    with open(a.out, "wb") as f:
        while size < target:
            row = tool_row(rng, pool, rows) if rng.random() < 0.03 else chat_row(rng, pool)
            line = (dumps(row) + "\n").encode("utf-8")
            buf.append(line)
            size += len(line)
            rows += 1
            if len(buf) >= 2000:
                f.write(b"".join(buf))
                buf.clear()
        f.write(b"".join(buf))
    dt = time.perf_counter() - t0
    print(json.dumps({"out": a.out, "bytes": size, "rows": rows, "seconds": round(dt, 2)}), file=sys.stderr)


if __name__ == "__main__":
    main()
