//! A tiny llama-architecture model in Hugging Face layout, made on the spot
//! from random weights and a byte-level tokenizer: for the test suite and
//! for `quickstart --small`, so the whole path (register, train, generate,
//! evaluate) runs on a machine with no model files and no network.

use std::path::Path;

use candle_core::Device;
use serde_json::json;

use super::config::ModelConfig;
use super::lora::write_safetensors;
use super::weights::random_weights;
use super::{EngineError, Result};

/// GPT-2's byte → printable character table used by byte-level BPE vocabularies.
pub fn bytes_to_unicode() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        table[b as usize] = char::from_u32(c).expect("valid code point");
    }
    table
}

pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The tiny model's shape: 259 tokens (256 bytes + 3 specials).
pub fn tiny_config(layers: usize, hidden: usize) -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        vocab_size: 259,
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: hidden / 4,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 1024,
        tie_word_embeddings: true,
        attention_bias: false,
        rope_scaling: None,
    }
}

/// Writes a tiny random model to `dir` (config.json, model.safetensors,
/// tokenizer.json, tokenizer_config.json).
pub fn write_tiny_model(dir: &Path, layers: usize, hidden: usize, seed: u64) -> Result<()> {
    let io = |e: std::io::Error| EngineError::Load(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let config = tiny_config(layers, hidden);
    let weights = random_weights(&config, seed, &Device::Cpu)?;
    let st = write_safetensors(&weights.named(true))?;
    std::fs::write(dir.join("model.safetensors"), st).map_err(io)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&config.to_hf_json()).expect("JSON"),
    )
    .map_err(io)?;
    let table = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (b, c) in table.iter().enumerate() {
        vocab.insert(c.to_string(), json!(b));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), json!(256 + i));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []},
    });
    std::fs::write(
        dir.join("tokenizer.json"),
        serde_json::to_vec(&tokenizer).expect("JSON"),
    )
    .map_err(io)?;
    let tc = json!({
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "chat_template": CHATML_TEMPLATE,
        "model_max_length": config.max_position_embeddings,
    });
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_vec_pretty(&tc).expect("JSON"),
    )
    .map_err(io)?;
    Ok(())
}
