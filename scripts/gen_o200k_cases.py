#!/usr/bin/env python3
"""Print the tokenizer test strings (one JSON string per line) behind tests/fixtures/o200k_counts.jsonl.

  python3 scripts/gen_o200k_cases.py | python3 scripts/tiktoken_counts.py - > tests/fixtures/o200k_counts.jsonl

Covers English prose, code, numbers, whitespace runs, newlines, punctuation, contractions,
unicode (CJK, emoji incl. ZWJ sequences, accented letters, RTL scripts), and long repeated
characters. Deterministic (no randomness beyond a fixed seed).
"""
import json
import random

CASES = [
    # empty and tiny
    "", " ", "a", "A", "I", ".", "\n", "\t", "hello", "Hello", "HELLO", "hello world", "Hello, world!",
    # English prose
    "The quick brown fox jumps over the lazy dog.",
    "Classify the customer's banking query into exactly one intent label. Answer with the label only.",
    "I am still waiting on my card?",
    "What can I do if my card still hasn't arrived after 2 weeks?",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "In 1492, Columbus sailed the ocean blue.",
    "Fine-tuning adapts a pre-trained model to a narrower task with a small, labelled dataset.",
    "She sells sea-shells by the sea-shore.",
    "antidisestablishmentarianism", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious", "Lathe", "lathe", "LATHE", "fine-tuning", "FineTuning",
    "camelCaseIdentifier", "snake_case_identifier", "SCREAMING_SNAKE_CASE", "kebab-case-name",
    "e-mail", "U.S.A.", "e.g. i.e. etc.", "Mr. Smith and Dr. Jones",
    # contractions (the 's 't 're 've 'm 'll 'd branches, upper and lower case)
    "it's", "It's", "IT'S", "don't", "Don't", "DON'T", "they're", "THEY'RE", "we've", "I'm", "I'M",
    "you'll", "YOU'LL", "she'd", "SHE'D", "rock 'n' roll", "o'clock", "the dog's bone", "the dogs' bones",
    "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "x's", "l'amour", "Don’t",
    "'quoted'", "''", "'''", "'s'", "it''s",
    # numbers
    "0", "1", "12", "123", "1234", "12345", "123456", "1234567", "12345678901234567890",
    "3.14159", "-42", "+1 (555) 010-9999", "1,000,000", "1.000.000,00", "1e-9", "0xDEADBEEF", "0b101010",
    "2024-11-25", "2024-11-25T14:30:00Z", "14:30", "v1.2.3", "192.168.0.1", "$19.99", "€1.249,90", "50%",
    "1st 2nd 3rd 4th", "ORD-10492", "call_8Kq2WfZ1", "x2", "A1B2C3", "ℕ ∋ 42",
    # whitespace runs
    "  ", "   ", "    ", "        ", "                ", "a  b", "a   b", "a    b", "  leading", "trailing  ",
    " \t ", "\t\t", "\t\tindented", "a\tb", "word \n", " \n ", "x\u00a0y", "\u3000", "a\u2009b",
    # newlines
    "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", "line one\nline two", "line one\n\nline two",
    "para one.\n\n\npara two.", "ends with newline\n", "\nstarts with newline", "  \n  \n", "a\r\nb\r\nc",
    "1. first\n2. second\n3. third", "- item\n- item\n  - nested",
    # punctuation
    "!", "?!", "...", "…", "!!!", "???", "--", "---", "—", "–", "()", "[]", "{}", "<>", "\"\"", "``",
    "Wait... what?!", "Hello!!!!!!", "a, b; c: d.", "(see above)", "[1]", "{\"a\": 1}", "#hashtag @mention",
    "email@example.com", "https://example.com/path?q=1&r=2#frag", "C:\\Windows\\System32", "/usr/local/bin",
    "~/.cache/lathe-tiktoken", "«guillemets»", "„Anführungszeichen“", "¿Qué?", "¡Hola!", "§ 12 Abs. 3",
    "***bold***", "__init__", "->", "=>", "!=", "==", "<=", ">=", "::", "&&", "||", "...rest",
    # code
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n    println!(\"Hello, world!\");\n}\n",
    "for (let i = 0; i < 10; i++) { console.log(i); }",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "<div class=\"container\"><p>Hello</p></div>",
    "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}",
    "x = [i * i for i in range(10) if i % 2 == 0]",
    "git commit -m \"Fix off-by-one in tokenizer\"",
    "$ cargo test --release -- --nocapture",
    "    if (x) {\n        return y;\n    }",
    "\tindented with tab\n\t\tand two tabs",
    "let mut v: Vec<u32> = Vec::with_capacity(1024);",
    "async fn handler(req: Request<Body>) -> Result<Response<Body>, Infallible>",
    "import numpy as np; np.quantile(values, 0.9)",
    "// TODO(lathe): remove this\n/* block */",
    "SGVsbG8gV29ybGQ=", "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==",
    "a1b2c3d4e5f6a7b8c9d0", "550e8400-e29b-41d4-a716-446655440000",
    # accented / European
    "café", "naïve", "résumé", "Zoë", "Ångström", "über", "straße", "STRASSE", "Kraków", "São Paulo",
    "Reykjavík", "crème brûlée", "façade", "œuvre", "Ærøskøbing", "İstanbul", "ı", "Ελληνικά", "Привет, мир!",
    "Здравствуйте", "Dobrý den", "Cześć", "Ça va ? Très bien.", "e\u0301", "n\u0303", "ﬁ", "Ⅻ",
    # CJK and other scripts
    "你好", "你好，世界！", "中华人民共和国", "我喜欢学习机器学习。", "日本語", "こんにちは", "東京は日本の首都です。",
    "カタカナ", "한국어", "안녕하세요", "ภาษาไทย", "हिन्दी", "नमस्ते दुनिया", "العربية", "مرحبا بالعالم", "עברית",
    "שלום עולם", "Tiếng Việt", "ქართული", "Հայերեն", "አማርኛ", "汉字kanji混合mixed", "１２３", "ＡＢＣ",
    # emoji
    "😀", "👍", "🍕", "🙃", "❤️", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸🇬🇧", "best pizza near me 🍕",
    "🔥🔥🔥", "😀😃😄😁😆", "Done ✅", "⚠️ warning", "★☆", "→ ← ↑ ↓", "∑∫√∞", "©®™", "\U0001F9D1\u200D\U0001F4BB",
    # control / unusual
    "\u0000", "\u0007", "\u001b[31mred\u001b[0m", "\ufeffBOM", "\u200b", "zero\u200bwidth", "\ufffd",
    "<|endoftext|>", "<|endofprompt|>", "<|im_start|>user", "<s>", "</s>", "[INST]",
    # long repeated characters
    "a" * 10, "a" * 100, "a" * 1000, "aaaa bbbb", "ab" * 100, " " * 100, "\n" * 50, "\t" * 20, "." * 100,
    "-" * 80, "=" * 80, "_" * 64, "#" * 40, "0" * 50, "9" * 33, "!" * 25, "😀" * 20, "你" * 30, "é" * 40,
    "ha" * 50, "lol " * 30, "\r\n" * 20, " \n" * 30, "abc" * 333, "x" * 4096,
]


def extra(rng):
    words = ("the of and to in is you that it he was for on are as with his they at be this have from or one "
             "had by word but not what all were we when your can said there use an each which she do how their "
             "if will up other about out many then them these so some her would make like him into time has look "
             "two more write go see number no way could people my than first water been call who oil its now find "
             "long down day did get come made may part over new sound take only little work know place year live "
             "me back give most very after thing our just name good sentence man think say great where help through "
             "much before line right too mean old any same tell boy follow came want show also around form three "
             "small set put end does another well large must big even such because turn here why ask went men "
             "read need land different home us move try kind hand picture again change off play spell air away").split()
    out = []
    for i in range(60):
        n = rng.randint(1, 40)
        s = " ".join(rng.choice(words) for _ in range(n))
        r = rng.random()
        if r < 0.2:
            s = s.capitalize() + "."
        elif r < 0.3:
            s = s.upper()
        elif r < 0.4:
            s = s.replace(" ", "  ")
        elif r < 0.5:
            s = s.replace(" ", "\n", 2)
        elif r < 0.6:
            s = f"{s} {rng.randint(0, 10**rng.randint(1, 12))}"
        elif r < 0.7:
            s = s + rng.choice(["!", "?", "...", " 😀", "'s", "n't", "'re"])
        out.append(s)
    return out


def main():
    cases = CASES + extra(random.Random(0))
    seen = set()
    for c in cases:
        if c in seen:
            continue
        seen.add(c)
        print(json.dumps(c, ensure_ascii=True))


if __name__ == "__main__":
    main()
