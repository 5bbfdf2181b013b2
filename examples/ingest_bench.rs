//! Throughput benchmark for dataset ingestion.
//!
//! Usage: `cargo run --release --example ingest_bench [FILE.jsonl] [--reference]`
//! Without FILE, a ~100 MB synthetic SFT file is generated at
//! `$TMPDIR/lathe_bench_sft.jsonl` (reused on later runs). `--reference`
//! uses bpe-openai's unmodified counter instead of the fast path;
//! `--no-tokenizer` measures parsing and validation alone; `--count-only`
//! times the token counter alone, on one thread, over every message content.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use lathe::datasets::tokens::{O200k, O200kReference, TokenCounter};
use lathe::datasets::{IngestOptions, Ingestor, Purpose};

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "you",
    "that",
    "it",
    "for",
    "on",
    "with",
    "as",
    "your",
    "can",
    "be",
    "this",
    "are",
    "or",
    "we",
    "have",
    "not",
    "will",
    "from",
    "by",
    "I",
    "order",
    "account",
    "please",
    "help",
    "customer",
    "product",
    "refund",
    "shipping",
    "days",
    "function",
    "return",
    "value",
    "error",
    "request",
    "response",
    "data",
    "model",
    "training",
    "example",
    "Thanks",
    "However,",
    "First,",
    "Next,",
    "Finally,",
    "don't",
    "it's",
    "we're",
    "you'll",
    "API",
    "JSON",
    "HTTP",
    "2024",
    "42",
    "3.14",
    "e.g.",
    "(see",
    "below)",
    "—",
    "\"quoted\"",
    "step-by-step",
    "configuration",
    "performance",
    "understand",
    "information",
];

fn sentence(rng: &mut u64, out: &mut String) {
    let n = 6 + (next(rng) % 18) as usize;
    for i in 0..n {
        let w = WORDS[(next(rng) % WORDS.len() as u64) as usize];
        if i == 0 {
            let mut c = w.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(w);
        }
    }
    out.push_str(if next(rng).is_multiple_of(7) { "?" } else { "." });
}

fn paragraph(rng: &mut u64, sentences: usize) -> String {
    let mut s = String::new();
    for i in 0..sentences {
        if i > 0 {
            s.push_str(if next(rng).is_multiple_of(5) { "\n\n" } else { " " });
        }
        sentence(rng, &mut s);
    }
    s
}

fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn generate(path: &std::path::Path, target: usize) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut written = 0;
    while written < target {
        let turns = 1 + (next(&mut rng) % 4) as usize;
        let mut msgs = vec![serde_json::json!({"role": "system", "content": paragraph(&mut rng, 2)})];
        for _ in 0..turns {
            let u = 2 + (next(&mut rng) % 10) as usize;
            let a = 4 + (next(&mut rng) % 40) as usize;
            msgs.push(serde_json::json!({"role": "user", "content": paragraph(&mut rng, u)}));
            msgs.push(serde_json::json!({"role": "assistant", "content": paragraph(&mut rng, a)}));
        }
        let line = serde_json::to_string(&serde_json::json!({ "messages": msgs }))?;
        f.write_all(line.as_bytes())?;
        f.write_all(b"\n")?;
        written += line.len() + 1;
    }
    f.flush()
}

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Isolates parsing and validation cost from tokenization.
struct NoTokens;

impl TokenCounter for NoTokens {
    fn name(&self) -> &str {
        "none"
    }
    fn count(&self, text: &str) -> usize {
        text.len() / 4
    }
}

/// Times `tokens.count` over every message's string content on one thread.
fn count_only(path: &std::path::Path, tokens: &dyn TokenCounter) -> std::io::Result<()> {
    let data = std::fs::read_to_string(path)?;
    let mut texts = Vec::new();
    for line in data.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        for m in v["messages"].as_array().into_iter().flatten() {
            if let Some(c) = m["content"].as_str() {
                texts.push(c.to_string());
            }
        }
    }
    drop(data);
    let bytes: usize = texts.iter().map(String::len).sum();
    // The best of five rounds: these machines are shared and noisy.
    let mut best = f64::INFINITY;
    let mut total = 0;
    for _ in 0..5 {
        let start = Instant::now();
        total = texts.iter().map(|t| tokens.count(t)).sum::<usize>();
        best = best.min(start.elapsed().as_secs_f64());
    }
    println!(
        "count only: {} texts, {:.1} MB, {total} tokens, best of 5 {best:.3} s, {:.1} MB/s on one thread",
        texts.len(),
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / best
    );
    Ok(())
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let reference = args.iter().any(|a| a == "--reference");
    let path = match args.iter().find(|a| !a.starts_with("--")) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let p = std::env::temp_dir().join("lathe_bench_sft.jsonl");
            if !p.exists() {
                eprintln!("generating {}", p.display());
                generate(&p, 100_000_000)?;
            }
            p
        }
    };
    let tokens: Arc<dyn TokenCounter> = if reference {
        Arc::new(O200kReference)
    } else if args.iter().any(|a| a == "--no-tokenizer") {
        Arc::new(NoTokens)
    } else {
        Arc::new(O200k)
    };
    lathe::tune_allocator();
    // Load the BPE tables outside the timed region.
    tokens.count("warm up");
    if args.iter().any(|a| a == "--count-only") {
        return count_only(&path, tokens.as_ref());
    }
    let mut file = std::fs::File::open(&path)?;
    let start = Instant::now();
    let mut ing = Ingestor::new(IngestOptions::new(Purpose::Sft), tokens);
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        ing.push(&buf[..n]);
    }
    let (report, stats) = ing.finish();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "file {} ({:.1} MB), threads {}, tokenizer {}{}",
        path.display(),
        bytes as f64 / 1e6,
        rayon::current_num_threads(),
        stats.tokenizer,
        if reference { " (reference counter)" } else { "" }
    );
    println!(
        "{:.2} s, {:.1} MB/s, {:.0} rows/s, rows {} (valid {}), tokens {} ({:.1} M tokens/s), p50 {} p95 {} max {}",
        secs,
        bytes as f64 / 1e6 / secs,
        report.total_rows as f64 / secs,
        report.total_rows,
        report.valid_rows,
        stats.tokens_per_example.total,
        stats.tokens_per_example.total as f64 / 1e6 / secs,
        stats.tokens_per_example.p50,
        stats.tokens_per_example.p95,
        stats.tokens_per_example.max,
    );
    println!(
        "errors {:?} warnings {:?} peak RSS {:.0} MiB",
        report.error_counts,
        report.warning_counts,
        peak_rss_mib().unwrap_or(0.0)
    );
    Ok(())
}
