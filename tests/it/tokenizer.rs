//! Token counts equal tiktoken's o200k_base on strings chosen to stress the
//! pre-tokenizer (the fixture was made with Python tiktoken by
//! scripts/tiktoken_counts.py).

use lathe::datasets::tokens::{O200k, TokenCounter};

#[test]
fn o200k_counts_match_python_tiktoken() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/o200k_counts.jsonl");
    let text = std::fs::read_to_string(path).unwrap();
    let tokenizer = O200k::new();
    let mut checked = 0;
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let s = v["text"].as_str().unwrap();
        let expected = v["tokens"].as_u64().unwrap() as usize;
        assert_eq!(tokenizer.count(s), expected, "line {}: {s:?}", i + 1);
        checked += 1;
    }
    assert!(checked >= 300, "only {checked} cases");
}
