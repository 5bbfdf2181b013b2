#!/usr/bin/env python3
"""Reference fixture for the Rust byte-level BPE tokenizer and chat-template renderer.

Writes tests/fixtures/smollm2_tokenizer.jsonl from the SmolLM2-135M-Instruct GGUF, using
Hugging Face `tokenizers` for token ids and transformers' own Jinja renderer for chat text.
Nothing here shares code with the Rust side.

    python -m venv .venv && .venv/bin/pip install gguf transformers tokenizers jinja2   # no torch needed
    .venv/bin/python scripts/tokenizer_reference.py [--gguf PATH] [--banking77 CSV] [--out JSONL]

Fixture lines:
  {"kind":"encode","text":..., "parse_special":bool, "ids":[...]}
      ids as SmolLM2's own Hugging Face tokenizer.json splits text: Sequence[Digits(individual_digits=true),
      ByteLevel(add_prefix_space=false, use_regex=true)], which is also llama.cpp's "smollm" pre-tokenizer
      (`\\p{N}` then the GPT-2 regex). Where transformers' GGUF loader (which knows no "smollm" split and so
      falls back to a plain GPT-2 ByteLevel, digits in runs) disagrees, the line also carries
      "ids_transformers_gguf" for the record.
  {"kind":"chat","messages":[...],"tools":...,"add_generation_prompt":bool,"text":...,"template"?:...}
      rendered with transformers.utils.chat_template_utils.render_jinja_template (what apply_chat_template
      uses); "template" is absent for the GGUF's own template. Messages are written in OpenAI form
      (content parts, tool-call arguments as JSON strings) and normalised the way the Rust renderer
      promises to before rendering: text parts joined with "\\n", arguments parsed to objects.
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

REPO = Path(__file__).resolve().parent.parent


def read_vocab(path):
    r = GGUFReader(path)

    def field(key):
        return r.fields.get(key)

    def strings(key):
        f = field(key)
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    def scalar(key):
        f = field(key)
        if f is None:
            return None
        v = f.parts[f.data[0]]
        return bytes(v).decode("utf-8") if f.types[0].name == "STRING" else v.tolist()[0]

    tt = field("tokenizer.ggml.token_type")
    return {
        "model": scalar("tokenizer.ggml.model"),
        "pre": scalar("tokenizer.ggml.pre"),
        "tokens": strings("tokenizer.ggml.tokens"),
        "token_type": [int(tt.parts[i][0]) for i in tt.data] if tt else [],
        "merges": strings("tokenizer.ggml.merges"),
        "bos_token_id": scalar("tokenizer.ggml.bos_token_id"),
        "eos_token_id": scalar("tokenizer.ggml.eos_token_id"),
        "unk_token_id": scalar("tokenizer.ggml.unknown_token_id"),
        "pad_token_id": scalar("tokenizer.ggml.padding_token_id"),
        "add_bos_token": bool(scalar("tokenizer.ggml.add_bos_token") or False),
        "chat_template": scalar("tokenizer.chat_template"),
        "architecture": scalar("general.architecture"),
    }


def smollm2_tokenizer(v):
    """SmolLM2's tokenizer.json layout, rebuilt from the GGUF's vocabulary and merges."""
    assert v["model"] == "gpt2" and v["pre"] == "smollm", (v["model"], v["pre"])
    # Evidence the vocabulary was trained on single digits: no token holds two of them.
    assert not any(sum(c.isdigit() for c in t) >= 2 for t in v["tokens"]), "multi-digit token found"
    vocab = {t: i for i, t in enumerate(v["tokens"])}
    merges = [tuple(m.split(" ", 1)) for m in v["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(v["tokens"], v["token_type"]) if ty == 3]
    )
    return tok


def transformers_gguf_tokenizer(v):
    """What transformers' GGUF loader builds (read_gguf_metadata needs torch, so the dict is built here)."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer

    d = {
        "tokenizer_type": v["model"],
        "pre_tokenizer_type": v["pre"],
        "tokens": v["tokens"],
        "token_type": v["token_type"],
        "merges": v["merges"],
        "bos_token_id": v["bos_token_id"],
        "eos_token_id": v["eos_token_id"],
        "unk_token_id": v["unk_token_id"],
        "pad_token_id": v["pad_token_id"],
    }
    tok, _ = convert_gguf_tokenizer(v["architecture"], d)
    return tok


HARD_CASES = [
    "",
    " ",
    "  ",
    "\n",
    "\n\n\n",
    "\t",
    " \t \n ",
    "hello",
    " hello",
    "  hello",
    "   hello   world   ",
    "hello\n\nworld",
    "hello \n world",
    "line1\r\nline2\r\n",
    "tabs\tand\t\ttabs",
    "trailing spaces   ",
    "12345 3.14",
    "0",
    "007 and 1,000,000.50",
    "call 555-0199 or +1 (800) 123-4567",
    "x=12345678901234567890",
    "v2.0.1-rc3",
    "2024-01-31T12:34:56Z",
    "$100.00 £50 €20 ¥1000",
    "I'm you're we've they'll she'd it's don't",
    "I'M YOU'RE WE'VE",
    "'s 't 're",
    "rock 'n' roll",
    "café naïve résumé Über straße",
    "Ελληνικά кириллица",
    "日本語のテキストです。",
    "中文字符和English混合",
    "한국어 텍스트",
    "عربي نص",
    "हिन्दी पाठ",
    "😀",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧‍👦",
    "flags 🇫🇷🇯🇵",
    "Ⅻ ½ ² ٣ ۴",
    "zero\u200bwidth",
    "nbsp\u00a0here",
    "e\u0301 combining",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "a<|im_end|>b",
    "<|im_start|><|im_end|>",
    "<|im_start",
    "text <|endoftext|> more <repo_name>x",
    "<filename>main.rs<file_sep>fn main() {}",
    "fn main() {\n    println!(\"Hello, world!\");\n}\n",
    "def f(x):\n\treturn x ** 2  # square\n",
    "if (a && b || !c) { return a->b; }",
    "<html><body class=\"x\">&amp;</body></html>",
    "SELECT * FROM users WHERE id = 42;",
    "https://example.com/path?q=1&r=two#frag",
    "user@example.com",
    "C:\\Users\\name\\file.txt",
    "!!!???...---***",
    "....",
    "``` code ```",
    "a\n\nb\n\n\nc",
    "      indented",
    "\n  leading newline and spaces",
    "MiXeD CaSe WoRdS",
    "camelCaseIdentifier snake_case_identifier",
    "ALLCAPS",
    "The quick brown fox jumps over the lazy dog.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 100,
    " " * 40 + "x",
    "ab" * 60,
    "1" * 30,
    "-" * 80,
    "😀" * 10,
    "naïve café" * 5,
    "Why hasn't my card arrived yet?",
    "My top-up failed; I was charged £20.",
    "I need to change my PIN!!!",
    "\u0000null\u0001bytes",
    "\u007fdel",
    "\ufeffbom",
    "mixed\u3000ideographic space",
    "ﬁ ligature",
    "x²+y²=z²",
    "1st 2nd 3rd 4th",
    "COVID-19",
    "it’s curly “quotes”",
    "em—dash and en–dash…",
]

PARSE_SPECIAL_BOTH = {t for t in HARD_CASES if "<" in t and "|" in t or "<repo_name>" in t or "<filename>" in t}


CHATS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are a banking assistant."}, {"role": "user", "content": "My card is lost."}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke.\n\nMake it short."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ],
    [{"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]}],
    [{"role": "user", "content": "  leading and trailing spaces  \n"}],
    [{"role": "user", "content": "unicode: café 日本 😀"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
]

# A tool-calling template in the style of Qwen2.5 / Hermes, exercising tojson, namespace, loop,
# string methods (pycompat), raise_exception and whitespace control.
TOOLS_TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}
{{- messages[0]['content'] }}
{%- else %}
{{- 'You are a helpful assistant.' }}
{%- endif %}
{{- "\\n\\n# Tools\\n\\n<tools>" }}
{%- for tool in tools %}
{{- "\\n" }}
{{- tool | tojson }}
{%- endfor %}
{{- "\\n</tools><|im_end|>\\n" }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant', 'tool'] %}
        {{- raise_exception('unknown role ' + message.role) }}
    {%- endif %}
    {%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}
        {%- set ns.turns = ns.turns + 1 %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>' + '\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls if message.tool_calls %}
            {%- set tool_call = tool_call.function if tool_call.function is defined else tool_call %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' + tool_call.arguments | tojson + '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Keys in sorted order: Lathe's serde_json is built without `preserve_order`, so the Rust side sees
# every JSON object key-sorted, and `tojson` of an unsorted tool would differ only in key order.
WEATHER_TOOL = {
    "function": {
        "description": "Current weather for a city, in °C.",
        "name": "get_weather",
        "parameters": {
            "properties": {"city": {"description": "City name", "type": "string"}, "units": {"enum": ["c", "f"], "type": "string"}},
            "required": ["city"],
            "type": "object",
        },
    },
    "type": "function",
}

TOOL_CHATS = [
    (
        [
            {"role": "system", "content": "You can call tools."},
            {"role": "user", "content": "  Weather in Paris? "},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"units\": \"c\"}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21.5}"},
            {"role": "tool", "tool_call_id": "c2", "content": "sunny"},
            {"role": "assistant", "content": "It is 21.5 °C and sunny."},
        ],
        [WEATHER_TOOL],
    ),
    ([{"role": "user", "content": "No tools here <b>&</b>"}], None),
    ([{"role": "system", "content": "sys"}, {"role": "user", "content": "a"}, {"role": "system", "content": "late system"}], None),
]


def normalise(messages):
    """The message normalisation the Rust renderer promises (content parts joined, arguments parsed)."""
    out = []
    for m in messages:
        m = {k: v for k, v in m.items() if v is not None}
        if isinstance(m.get("content"), list):
            m["content"] = "\n".join(p["text"] for p in m["content"] if p.get("type") == "text")
        if "tool_calls" in m:
            calls = []
            for c in m["tool_calls"]:
                c = json.loads(json.dumps(c))
                args = c.get("function", {}).get("arguments")
                if isinstance(args, str):
                    try:
                        parsed = json.loads(args)
                        if isinstance(parsed, dict):
                            c["function"]["arguments"] = parsed
                    except ValueError:
                        pass
                calls.append(c)
            m["tool_calls"] = calls
        out.append(m)
    return out


def render(template, messages, tools, add_generation_prompt, bos, eos):
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[normalise(messages)],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos,
        eos_token=eos,
    )
    return rendered[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.environ.get("LATHE_SMOLLM2_GGUF", str(REPO / "models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    ap.add_argument("--banking77", default=str(REPO / "../shared/data/banking77/test.csv"))
    ap.add_argument("--out", default=str(REPO / "tests/fixtures/smollm2_tokenizer.jsonl"))
    ap.add_argument("--n-banking", type=int, default=200)
    args = ap.parse_args()

    v = read_vocab(args.gguf)
    ref = smollm2_tokenizer(v)
    ref_plain = smollm2_tokenizer(v)
    ref_plain.encode_special_tokens = True  # special tokens in the text are plain text
    tf = transformers_gguf_tokenizer(v)

    with open(args.banking77, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    banking = [r["text"] for r in rows[: args.n_banking]]

    lines = []
    differ = 0
    cases = [(t, False) for t in banking + HARD_CASES] + [(t, True) for t in HARD_CASES if t in PARSE_SPECIAL_BOTH]
    for text, parse_special in cases:
        enc = ref if parse_special else ref_plain
        ids = enc.encode(text, add_special_tokens=False).ids
        assert enc.decode(ids, skip_special_tokens=False) == text, text
        line = {"kind": "encode", "text": text, "parse_special": parse_special, "ids": ids}
        if parse_special:
            tf_ids = tf.encode(text, add_special_tokens=False).ids
            if tf_ids != ids:
                line["ids_transformers_gguf"] = tf_ids
                differ += 1
        else:
            tf.encode_special_tokens = True
            tf_ids = tf.encode(text, add_special_tokens=False).ids
            tf.encode_special_tokens = False
            if tf_ids != ids:
                line["ids_transformers_gguf"] = tf_ids
                differ += 1
        lines.append(line)

    bos = v["tokens"][v["bos_token_id"]]
    eos = v["tokens"][v["eos_token_id"]]
    template = v["chat_template"]
    n_chat = 0
    for msgs in CHATS:
        for agp in (True, False):
            text = render(template, msgs, None, agp, bos, eos)
            lines.append({"kind": "chat", "messages": msgs, "tools": None, "add_generation_prompt": agp, "text": text})
            n_chat += 1
    for msgs, tools in TOOL_CHATS:
        for agp in (True, False):
            text = render(TOOLS_TEMPLATE, msgs, tools, agp, bos, eos)
            lines.append(
                {"kind": "chat", "template": TOOLS_TEMPLATE, "messages": msgs, "tools": tools, "add_generation_prompt": agp, "text": text}
            )
            n_chat += 1

    header = {
        "kind": "meta",
        "gguf": os.path.basename(args.gguf),
        "pre": v["pre"],
        "pre_tokenizer": "Sequence[Digits(individual_digits=true), ByteLevel(add_prefix_space=false, use_regex=true)]",
        "vocab_size": len(v["tokens"]),
        "bos_token": bos,
        "eos_token": eos,
        "add_bos": v["add_bos_token"],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for line in [header] + lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    n_enc = len(lines) - n_chat
    print(f"wrote {out}: {n_enc} encode lines ({differ} where transformers' GGUF loader differs), {n_chat} chat lines", file=sys.stderr)


if __name__ == "__main__":
    main()
