//! The engine's byte-level BPE tokenizer and chat-template renderer agree with
//! Python on SmolLM2-135M-Instruct: exact ids from Hugging Face `tokenizers`,
//! and exact text from transformers' chat-template renderer (the fixture was
//! made by scripts/tokenizer_reference.py from the same GGUF file).
//!
//! The model is found at $LATHE_SMOLLM2_GGUF or <repo>/models/; without it the
//! test says so and passes, except under CI=true, where it fails.

use std::collections::HashMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use lathe_engine::chat_template::ChatTemplate;
use lathe_engine::tokenizer::{GgufVocab, Tokenizer};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smollm2_tokenizer.jsonl");

fn model_path() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("LATHE_SMOLLM2_GGUF").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")),
    ];
    let found = candidates.into_iter().flatten().find(|p| p.is_file());
    if found.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true but the SmolLM2 GGUF is missing: set LATHE_SMOLLM2_GGUF or put it in models/");
        }
        eprintln!(
            "\n*** SKIPPING engine_tokenizer: no SmolLM2-135M-Instruct.Q4_1.gguf \
             (set LATHE_SMOLLM2_GGUF or put it in <repo>/models/) ***\n"
        );
    }
    found
}

/// A GGUF metadata value (only what the tokenizer needs is kept whole).
#[derive(Debug, Clone)]
enum Meta {
    Int(i64),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    Ints(Vec<i64>),
    Other,
}

struct Gguf<R: Read> {
    r: R,
}

impl<R: Read> Gguf<R> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).expect("truncated GGUF");
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
    fn string(&mut self) -> String {
        let n = self.u64() as usize;
        let mut b = vec![0u8; n];
        self.r.read_exact(&mut b).expect("truncated GGUF string");
        String::from_utf8(b).expect("GGUF string is not UTF-8")
    }
    /// A scalar of GGUF type `t` (0 u8, 1 i8, 2 u16, 3 i16, 4 u32, 5 i32, 6 f32,
    /// 7 bool, 8 string, 10 u64, 11 i64, 12 f64).
    fn scalar(&mut self, t: u32) -> Meta {
        match t {
            0 => Meta::Int(self.bytes::<1>()[0] as i64),
            1 => Meta::Int(self.bytes::<1>()[0] as i8 as i64),
            2 => Meta::Int(u16::from_le_bytes(self.bytes()) as i64),
            3 => Meta::Int(i16::from_le_bytes(self.bytes()) as i64),
            4 => Meta::Int(self.u32() as i64),
            5 => Meta::Int(i32::from_le_bytes(self.bytes()) as i64),
            6 => {
                self.bytes::<4>();
                Meta::Other
            }
            7 => Meta::Bool(self.bytes::<1>()[0] != 0),
            8 => Meta::Str(self.string()),
            10 => Meta::Int(self.u64() as i64),
            11 => Meta::Int(i64::from_le_bytes(self.bytes())),
            12 => {
                self.bytes::<8>();
                Meta::Other
            }
            _ => panic!("unknown GGUF value type {t}"),
        }
    }
    fn value(&mut self, t: u32) -> Meta {
        if t != 9 {
            return self.scalar(t);
        }
        let et = self.u32();
        let n = self.u64() as usize;
        match et {
            8 => Meta::Strs((0..n).map(|_| self.string()).collect()),
            9 => {
                (0..n).for_each(|_| {
                    let _ = self.value(9);
                });
                Meta::Other
            }
            _ => Meta::Ints(
                (0..n)
                    .map(|_| match self.scalar(et) {
                        Meta::Int(i) => i,
                        Meta::Bool(b) => b as i64,
                        _ => 0,
                    })
                    .collect(),
            ),
        }
    }
}

/// The key/value metadata of a GGUF v2/v3 file.
fn read_gguf_metadata(path: &Path) -> HashMap<String, Meta> {
    let mut g = Gguf {
        r: BufReader::new(std::fs::File::open(path).unwrap()),
    };
    assert_eq!(&g.bytes::<4>(), b"GGUF", "not a GGUF file");
    let version = g.u32();
    assert!((2..=3).contains(&version), "GGUF version {version}");
    let _tensors = g.u64();
    let kvs = g.u64();
    let mut out = HashMap::new();
    for _ in 0..kvs {
        let key = g.string();
        let t = g.u32();
        out.insert(key, g.value(t));
    }
    out
}

fn load(path: &Path) -> (Tokenizer, String, String, String) {
    let md = read_gguf_metadata(path);
    let s = |k: &str| match md.get(k) {
        Some(Meta::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let id = |k: &str| match md.get(k) {
        Some(Meta::Int(i)) => Some(*i as u32),
        _ => None,
    };
    let tokens = match md.get("tokenizer.ggml.tokens") {
        Some(Meta::Strs(t)) => t.clone(),
        other => panic!("tokenizer.ggml.tokens: {other:?}"),
    };
    let merges = match md.get("tokenizer.ggml.merges") {
        Some(Meta::Strs(m)) => m.clone(),
        _ => Vec::new(),
    };
    let token_types = match md.get("tokenizer.ggml.token_type") {
        Some(Meta::Ints(t)) => t.iter().map(|&x| x as i32).collect(),
        _ => Vec::new(),
    };
    let vocab = GgufVocab {
        model: s("tokenizer.ggml.model").unwrap_or_default(),
        pre: s("tokenizer.ggml.pre"),
        tokens,
        token_types,
        merges,
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        add_bos: matches!(md.get("tokenizer.ggml.add_bos_token"), Some(Meta::Bool(true))),
    };
    let tok = Tokenizer::from_gguf(vocab).unwrap();
    let name = |i: Option<u32>| i.and_then(|i| tok.id_to_token(i)).unwrap_or_default().to_string();
    let (bos, eos) = (name(tok.bos_id()), name(tok.eos_id()));
    let template = s("tokenizer.chat_template").expect("no chat template in the GGUF");
    (tok, template, bos, eos)
}

fn fixture() -> Vec<serde_json::Value> {
    std::fs::read_to_string(FIXTURE)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn smollm2_matches_python_reference() {
    let Some(path) = model_path() else { return };
    let (tok, template, bos, eos) = load(&path);
    let lines = fixture();
    let meta = &lines[0];
    assert_eq!(meta["kind"], "meta");
    assert_eq!(tok.vocab_size() as u64, meta["vocab_size"].as_u64().unwrap());
    assert_eq!(bos, meta["bos_token"].as_str().unwrap());
    assert_eq!(eos, meta["eos_token"].as_str().unwrap());
    assert_eq!(tok.add_bos(), meta["add_bos"].as_bool().unwrap());
    let gguf_template = ChatTemplate::new(&template, &bos, &eos).unwrap();
    // The same tokenizer, written out as tokenizer.json and read back.
    let exported = Tokenizer::from_tokenizer_json(tok.to_tokenizer_json().to_string().as_bytes()).unwrap();

    let (mut encodes, mut chats, mut failures) = (0, 0, Vec::new());
    for (n, line) in lines.iter().enumerate().skip(1) {
        match line["kind"].as_str().unwrap() {
            "encode" => {
                let text = line["text"].as_str().unwrap();
                let parse_special = line["parse_special"].as_bool().unwrap();
                let want: Vec<u32> = line["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect();
                let got = tok.encode(text, parse_special);
                if got != want {
                    failures.push(format!(
                        "line {}: encode {text:?} (parse_special {parse_special})\n  want {want:?}\n  got  {got:?}",
                        n + 1
                    ));
                }
                let back = tok.decode(&got, false);
                if back != text {
                    failures.push(format!("line {}: decode(encode({text:?})) = {back:?}", n + 1));
                }
                let re = exported.encode(text, parse_special);
                if re != got {
                    failures.push(format!(
                        "line {}: exported tokenizer.json encodes {text:?} as {re:?}",
                        n + 1
                    ));
                }
                encodes += 1;
            }
            "chat" => {
                let messages = line["messages"].as_array().unwrap();
                let tools = line.get("tools").filter(|t| !t.is_null());
                let agp = line["add_generation_prompt"].as_bool().unwrap();
                let own;
                let t = match line["template"].as_str() {
                    Some(src) => {
                        own = ChatTemplate::new(src, &bos, &eos).unwrap();
                        &own
                    }
                    None => &gguf_template,
                };
                match t.render(messages, tools, agp) {
                    Ok(got) if got == line["text"].as_str().unwrap() => {}
                    Ok(got) => failures.push(format!(
                        "line {}: chat render differs\n  want {:?}\n  got  {got:?}",
                        n + 1,
                        line["text"].as_str().unwrap()
                    )),
                    Err(e) => failures.push(format!("line {}: chat render failed: {e}", n + 1)),
                }
                chats += 1;
            }
            other => panic!("line {}: unknown kind {other:?}", n + 1),
        }
    }
    eprintln!("checked {encodes} encodes and {chats} chat renders against the Python reference");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        encodes >= 250 && chats >= 10,
        "fixture too small: {encodes} encodes, {chats} chats"
    );

    // Speed: Banking77-size strings (the first 200 encode lines), warm cache.
    let texts: Vec<&str> = lines[1..]
        .iter()
        .filter(|l| l["kind"] == "encode")
        .take(200)
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    for t in &texts {
        tok.encode(t, false);
    }
    let rounds = 20;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for t in &texts {
            std::hint::black_box(tok.encode(t, false));
        }
    }
    let ns = start.elapsed().as_nanos() / (rounds * texts.len()) as u128;
    eprintln!("encode: {ns} ns per Banking77 string (warm cache)");
}

#[test]
fn smollm2_stream_decoder_matches_decode() {
    let Some(path) = model_path() else { return };
    let (tok, ..) = load(&path);
    let text = "Streaming 😀 émoji, 日本語 and <|im_end|> text👨‍👩‍👧";
    let ids = tok.encode(text, true);
    let mut d = tok.stream_decoder(false);
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(id);
        assert!(!piece.contains('\u{FFFD}'), "split a character at {id}");
        out.push_str(&piece);
    }
    out.push_str(&d.finish());
    assert_eq!(out, text);
    let mut d = tok.stream_decoder(true);
    let skipped: String = ids.iter().map(|&id| d.push(id)).collect::<String>() + &d.finish();
    assert_eq!(skipped, tok.decode(&ids, true));
    assert!(!skipped.contains("<|im_end|>"));
}
