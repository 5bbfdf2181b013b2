//! Loading a frozen base model: weights as f32 tensors in Hugging Face
//! layout, the tokenizer and the chat template, from either a Hugging Face
//! directory (config.json + *.safetensors, sharded or not, + tokenizer.json)
//! or a GGUF file (dequantized; tokenizer and template from its metadata).

use std::{collections::HashMap, path::Path};

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, quantized::gguf_file};

use crate::quant::QuantWeight;

use super::config::ModelConfig;
use super::tokenizer::{GgufVocab, Tokenizer};
use super::{EngineError, Result};

/// The seven projections LoRA can adapt, in a fixed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// PEFT's target-module name.
    pub fn name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    pub fn parse(name: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The Hugging Face module path inside a decoder layer.
    pub fn hf_path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    fn gguf_name(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// (in, out) features of this projection.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        match self {
            Proj::Q => (c.hidden_size, q),
            Proj::K | Proj::V => (c.hidden_size, kv),
            Proj::O => (q, c.hidden_size),
            Proj::Gate | Proj::Up => (c.hidden_size, c.intermediate_size),
            Proj::Down => (c.intermediate_size, c.hidden_size),
        }
    }
}

/// A frozen linear layer: `w` is (out, in).
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub input_norm: Tensor,
    pub post_attention_norm: Tensor,
    /// Indexed by `Proj as usize`.
    pub proj: Vec<Linear>,
}

/// The base model's weights, f32, Hugging Face layout (Q and K rows in the
/// half-split rotary order).
#[derive(Clone, Debug)]
pub struct Weights {
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// Shares `embed` when the embeddings are tied.
    pub lm_head: Tensor,
    /// The projections and LM head in their GGUF quantization, for
    /// inference (None for models loaded unquantized, and once anything
    /// changes the f32 weights, which stay the truth).
    pub quant: Option<Arc<QuantWeights>>,
}

/// Quantized copies of a model's frozen matrices (see [`crate::quant`]).
#[derive(Debug, Default)]
pub struct QuantWeights {
    /// Per layer, indexed by `Proj as usize`.
    pub layers: Vec<Vec<Option<QuantWeight>>>,
    pub lm_head: Option<QuantWeight>,
}

impl QuantWeights {
    /// Bytes the quantized matrices hold.
    pub fn bytes(&self) -> usize {
        let layers: usize = self.layers.iter().flatten().flatten().map(QuantWeight::bytes).sum();
        layers + self.lm_head.as_ref().map_or(0, QuantWeight::bytes)
    }
}

impl Weights {
    /// Every tensor under its Hugging Face name (for writing a merged model).
    pub fn named(&self, tied: bool) -> Vec<(String, Tensor)> {
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), self.embed.clone()),
            ("model.norm.weight".to_string(), self.norm.clone()),
        ];
        if !tied {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), layer.input_norm.clone()));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                layer.post_attention_norm.clone(),
            ));
            for proj in Proj::ALL {
                let lin = &layer.proj[proj as usize];
                out.push((format!("{p}.{}.weight", proj.hf_path()), lin.w.clone()));
                if let Some(b) = &lin.b {
                    out.push((format!("{p}.{}.bias", proj.hf_path()), b.clone()));
                }
            }
        }
        out
    }
}

/// Everything the engine needs of a base model.
pub struct LoadedModel {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    /// The model's own chat template (Jinja), if it has one.
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
    /// Token ids that end generation.
    pub stop_ids: Vec<u32>,
}

fn err(path: &Path, what: impl std::fmt::Display) -> EngineError {
    EngineError::Load(format!("{}: {what}", path.display()))
}

/// Loads the model at `path`: a GGUF file, or a directory with config.json
/// (Hugging Face layout) or exactly one .gguf file.
pub fn load(path: &Path, device: &Device) -> Result<LoadedModel> {
    if path.is_file() {
        return load_gguf(path, device);
    }
    if path.join("config.json").is_file() {
        return load_hf(path, device);
    }
    let ggufs: Vec<_> = std::fs::read_dir(path)
        .map_err(|e| err(path, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => load_gguf(one, device),
        _ => Err(err(path, "expected config.json or exactly one .gguf file")),
    }
}

fn build_layers(config: &ModelConfig, mut take: impl FnMut(&str) -> Result<Option<Tensor>>) -> Result<Weights> {
    let mut need = |name: &str| -> Result<Tensor> {
        take(name)?.ok_or_else(|| EngineError::Load(format!("the model has no tensor {name}")))
    };
    let embed = need("model.embed_tokens.weight")?;
    let norm = need("model.norm.weight")?;
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let input_norm = need(&format!("{p}.input_layernorm.weight"))?;
        let post_attention_norm = need(&format!("{p}.post_attention_layernorm.weight"))?;
        let mut proj = Vec::with_capacity(7);
        for pr in Proj::ALL {
            let w = need(&format!("{p}.{}.weight", pr.hf_path()))?;
            let (i_f, o_f) = pr.dims(config);
            if w.dims() != [o_f, i_f] {
                return Err(EngineError::Load(format!(
                    "{p}.{}.weight has shape {:?}, expected [{o_f}, {i_f}]",
                    pr.hf_path(),
                    w.dims()
                )));
            }
            let b = if config.attention_bias && matches!(pr, Proj::Q | Proj::K | Proj::V) {
                Some(need(&format!("{p}.{}.bias", pr.hf_path()))?)
            } else {
                None
            };
            proj.push(Linear { w, b });
        }
        layers.push(Layer {
            input_norm,
            post_attention_norm,
            proj,
        });
    }
    let lm_head = if config.tie_word_embeddings {
        embed.clone()
    } else {
        match take("lm_head.weight")? {
            Some(t) => t,
            None => embed.clone(),
        }
    };
    if embed.dims() != [config.vocab_size, config.hidden_size] {
        return Err(EngineError::Load(format!(
            "embed_tokens has shape {:?}, expected [{}, {}]",
            embed.dims(),
            config.vocab_size,
            config.hidden_size
        )));
    }
    Ok(Weights {
        embed,
        layers,
        norm,
        lm_head,
        quant: None,
    })
}

fn load_hf(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let config_text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| err(dir, e))?;
    let config_json: serde_json::Value =
        serde_json::from_str(&config_text).map_err(|e| err(dir, format!("config.json: {e}")))?;
    let config = ModelConfig::from_hf_json(&config_json).map_err(|e| err(dir, e))?;

    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| err(dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err(dir, "no .safetensors files"));
    }
    for f in &files {
        let loaded = candle_core::safetensors::load(f, device).map_err(|e| err(f, e))?;
        tensors.extend(loaded);
    }
    let weights = build_layers(&config, |name| {
        tensors
            .remove(name)
            .map(|t| t.to_dtype(DType::F32))
            .transpose()
            .map_err(EngineError::from)
    })?;

    let tok_bytes = std::fs::read(dir.join("tokenizer.json")).map_err(|e| err(dir, format!("tokenizer.json: {e}")))?;
    let tokenizer = Tokenizer::from_tokenizer_json(&tok_bytes).map_err(|e| err(dir, format!("tokenizer.json: {e}")))?;

    let tc: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let token_str = |v: &serde_json::Value| -> Option<String> {
        v.as_str()
            .map(str::to_string)
            .or_else(|| v["content"].as_str().map(str::to_string))
    };
    let chat_template = match &tc["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    let named = |key: &str, id: Option<u32>| {
        token_str(&tc[key])
            .or_else(|| id.and_then(|i| tokenizer.id_to_token(i)).map(str::to_string))
            .unwrap_or_default()
    };
    let bos_token = named("bos_token", tokenizer.bos_id());
    let eos_token = named("eos_token", tokenizer.eos_id());
    let mut stop_ids: Vec<u32> = tokenizer.token_to_id(&eos_token).into_iter().collect();
    if let Some(gc) = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    {
        match &gc["eos_token_id"] {
            serde_json::Value::Number(n) => stop_ids.extend(n.as_u64().map(|x| x as u32)),
            serde_json::Value::Array(a) => stop_ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32)),
            _ => {}
        }
    }
    stop_ids.extend(config_json["eos_token_id"].as_u64().map(|x| x as u32));
    finish(
        config,
        weights,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        stop_ids,
    )
}

fn finish(
    config: ModelConfig,
    weights: Weights,
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    bos_token: String,
    eos_token: String,
    mut stop_ids: Vec<u32>,
) -> Result<LoadedModel> {
    // ChatML models end a turn with <|im_end|> whatever their eos says.
    if chat_template.as_deref().is_some_and(|t| t.contains("<|im_end|>"))
        && let Some(id) = tokenizer.token_to_id("<|im_end|>")
    {
        stop_ids.push(id);
    }
    if let Some(id) = tokenizer.eos_id() {
        stop_ids.push(id);
    }
    stop_ids.sort_unstable();
    stop_ids.dedup();
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(EngineError::Load(format!(
            "the tokenizer has {} tokens but the model only {} embeddings",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    Ok(LoadedModel {
        config,
        weights,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        stop_ids,
    })
}

fn md_u(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<u64> {
    let v = md.get(key)?;
    v.to_u64()
        .ok()
        .or_else(|| v.to_u32().ok().map(u64::from))
        .or_else(|| v.to_i32().ok().map(|x| x as u64))
        .or_else(|| v.to_i64().ok().map(|x| x as u64))
}

fn md_f(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<f64> {
    let v = md.get(key)?;
    v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok())
}

fn md_s(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<String> {
    md.get(key).and_then(|v| v.to_string().ok()).cloned()
}

fn md_strings(md: &HashMap<String, gguf_file::Value>, key: &str) -> Vec<String> {
    md.get(key)
        .and_then(|v| v.to_vec().ok())
        .map(|a| a.iter().filter_map(|x| x.to_string().ok().cloned()).collect())
        .unwrap_or_default()
}

/// llama.cpp's converter permutes Q and K rows of llama models for its
/// interleaved rotary layout: row `i` in Hugging Face's half-split order is
/// stored row `unpermuted_rows(..)[i]`.
fn unpermuted_rows(out: usize, heads: usize) -> Vec<usize> {
    let hd = out / heads.max(1);
    let half = hd / 2;
    (0..out)
        .map(|r| {
            let (h, rest) = (r / hd, r % hd);
            let (t, i) = (rest / half, rest % half);
            h * hd + i * 2 + t
        })
        .collect()
}

/// `w` (f32) with its rows back in Hugging Face's order.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let rows: Vec<u32> = unpermuted_rows(w.dim(0)?, heads)
        .into_iter()
        .map(|r| r as u32)
        .collect();
    let n = rows.len();
    Ok(w.index_select(&Tensor::from_vec(rows, n, w.device())?, 0)?)
}

fn load_gguf(path: &Path, device: &Device) -> Result<LoadedModel> {
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(|e| err(path, e))?);
    let content = gguf_file::Content::read(&mut file).map_err(|e| err(path, e))?;
    let md = &content.metadata;
    let arch = md_s(md, "general.architecture").ok_or_else(|| err(path, "no general.architecture"))?;
    let key = |k: &str| format!("{arch}.{k}");
    let need = |k: &str| md_u(md, &key(k)).ok_or_else(|| err(path, format!("no {}", key(k))));
    let hidden_size = need("embedding_length")? as usize;
    let num_heads = need("attention.head_count")? as usize;
    let num_kv_heads = md_u(md, &key("attention.head_count_kv")).unwrap_or(num_heads as u64) as usize;
    let tokens = md_strings(md, "tokenizer.ggml.tokens");
    let vocab_size = md_u(md, &key("vocab_size"))
        .map(|x| x as usize)
        .or_else(|| content.tensor_infos.get("token_embd.weight").map(|t| t.shape.dims()[0]))
        .unwrap_or(tokens.len());
    let head_dim = md_u(md, &key("attention.key_length"))
        .map(|x| x as usize)
        .unwrap_or(hidden_size / num_heads.max(1));
    let config = ModelConfig {
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        architecture: arch.clone(),
        vocab_size,
        hidden_size,
        intermediate_size: need("feed_forward_length")? as usize,
        num_layers: need("block_count")? as usize,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: md_f(md, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
        rope_theta: md_f(md, &key("rope.freq_base")).unwrap_or(10_000.0),
        max_position_embeddings: md_u(md, &key("context_length")).unwrap_or(2048) as usize,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        rope_scaling: None,
    };
    config.check().map_err(|e| err(path, e))?;
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(err(
            path,
            "GGUF rope frequency factors (Llama 3.1 long context) are not supported; use the Hugging Face layout",
        ));
    }

    let permuted = arch == "llama";
    // Quantized copies for inference, keyed by GGUF name, with llama's Q
    // and K rows in the same (un-permuted) order as the f32 weights.
    let mut quantized: HashMap<String, QuantWeight> = HashMap::new();
    let mut read = |gguf_name: &str| -> Result<Option<Tensor>> {
        if !content.tensor_infos.contains_key(gguf_name) {
            return Ok(None);
        }
        let q = content
            .tensor(&mut file, gguf_name, device)
            .map_err(|e| err(path, format!("{gguf_name}: {e}")))?;
        // The projections and the LM head: the embeddings only where they
        // are the LM head too.
        let lm_head = match gguf_name {
            "output.weight" => true,
            "token_embd.weight" => config.tie_word_embeddings,
            _ => false,
        };
        let projection = gguf_name.starts_with("blk.") && !gguf_name.contains("norm");
        if device.is_cpu() && q.shape().rank() == 2 && gguf_name.ends_with(".weight") && (lm_head || projection) {
            let heads = match gguf_name {
                n if permuted && n.ends_with("attn_q.weight") => Some(config.num_heads),
                n if permuted && n.ends_with("attn_k.weight") => Some(config.num_kv_heads),
                _ => None,
            };
            let order = heads.map(|h| unpermuted_rows(q.shape().dims()[0], h));
            if let Some(w) =
                QuantWeight::from_qtensor(&q, order.as_deref()).map_err(|e| err(path, format!("{gguf_name}: {e}")))?
            {
                quantized.insert(gguf_name.to_string(), w);
            }
        }
        let t = q
            .dequantize(device)
            .map_err(|e| err(path, format!("{gguf_name}: {e}")))?;
        Ok(Some(t.to_dtype(DType::F32)?))
    };
    let weights = build_layers(&config, |hf_name| {
        let Some(rest) = hf_name.strip_prefix("model.layers.") else {
            return match hf_name {
                "model.embed_tokens.weight" => read("token_embd.weight"),
                "model.norm.weight" => read("output_norm.weight"),
                "lm_head.weight" => read("output.weight"),
                _ => Ok(None),
            };
        };
        let (idx, tail) = rest.split_once('.').unwrap_or((rest, ""));
        let g = match tail {
            "input_layernorm.weight" => format!("blk.{idx}.attn_norm.weight"),
            "post_attention_layernorm.weight" => format!("blk.{idx}.ffn_norm.weight"),
            _ => {
                let (module, kind) = tail.rsplit_once('.').unwrap_or((tail, ""));
                let proj = Proj::ALL
                    .into_iter()
                    .find(|p| p.hf_path() == module)
                    .ok_or_else(|| EngineError::Load(format!("unknown tensor {hf_name}")))?;
                format!("blk.{idx}.{}.{kind}", proj.gguf_name())
            }
        };
        let t = read(&g)?;
        match (t, permuted) {
            (Some(t), true) if g.ends_with("attn_q.weight") => Ok(Some(unpermute(&t, config.num_heads)?)),
            (Some(t), true) if g.ends_with("attn_k.weight") => Ok(Some(unpermute(&t, config.num_kv_heads)?)),
            (t, _) => Ok(t),
        }
    })?;

    let mut weights = weights;
    if !quantized.is_empty() {
        let mut q = QuantWeights {
            layers: (0..config.num_layers)
                .map(|i| {
                    Proj::ALL
                        .into_iter()
                        .map(|p| quantized.remove(&format!("blk.{i}.{}.weight", p.gguf_name())))
                        .collect()
                })
                .collect(),
            lm_head: None,
        };
        q.lm_head = match quantized.remove("output.weight") {
            Some(w) => Some(w),
            None if config.tie_word_embeddings => quantized.remove("token_embd.weight"),
            None => None,
        };
        weights.quant = Some(Arc::new(q));
    }

    let model = md_s(md, "tokenizer.ggml.model").unwrap_or_default();
    let id = |k: &str| md_u(md, k).map(|x| x as u32);
    let vocab = GgufVocab {
        model,
        pre: md_s(md, "tokenizer.ggml.pre"),
        tokens,
        token_types: md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|a| a.iter().filter_map(|x| x.to_i32().ok()).collect())
            .unwrap_or_default(),
        merges: md_strings(md, "tokenizer.ggml.merges"),
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        add_bos: md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
    };
    let tokenizer = Tokenizer::from_gguf(vocab).map_err(|e| err(path, format!("tokenizer: {e}")))?;
    let chat_template = md_s(md, "tokenizer.chat_template");
    let tok_str = |id: Option<u32>| {
        id.and_then(|i| tokenizer.id_to_token(i))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let bos_token = tok_str(tokenizer.bos_id());
    let eos_token = tok_str(tokenizer.eos_id());
    finish(
        config,
        weights,
        tokenizer,
        chat_template,
        bos_token,
        eos_token,
        Vec::new(),
    )
}

/// Random weights for `config` (normal-ish, small), for tests and for the
/// tiny model `quickstart --small` builds for itself.
pub fn random_weights(config: &ModelConfig, seed: u64, device: &Device) -> Result<Weights> {
    let mut rng = super::rng::Rng::new(seed);
    let mut rand = |shape: &[usize], scale: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        // Sum of uniforms: cheap and close enough to normal.
        let v: Vec<f32> = (0..n)
            .map(|_| (rng.next_f32() + rng.next_f32() + rng.next_f32() - 1.5) * 2.0 * scale)
            .collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    };
    let d = config.hidden_size;
    let ones = |n: usize| Tensor::ones(n, DType::F32, device);
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    tensors.insert("model.embed_tokens.weight".into(), rand(&[config.vocab_size, d], 0.5)?);
    tensors.insert("model.norm.weight".into(), ones(d)?);
    if !config.tie_word_embeddings {
        tensors.insert("lm_head.weight".into(), rand(&[config.vocab_size, d], 0.5)?);
    }
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        tensors.insert(format!("{p}.input_layernorm.weight"), ones(d)?);
        tensors.insert(format!("{p}.post_attention_layernorm.weight"), ones(d)?);
        for proj in Proj::ALL {
            let (inp, out) = proj.dims(config);
            let scale = 1.0 / (inp as f32).sqrt();
            tensors.insert(format!("{p}.{}.weight", proj.hf_path()), rand(&[out, inp], scale)?);
            if config.attention_bias && matches!(proj, Proj::Q | Proj::K | Proj::V) {
                tensors.insert(format!("{p}.{}.bias", proj.hf_path()), rand(&[out], 0.1)?);
            }
        }
    }
    build_layers(config, |name| Ok(tensors.remove(name)))
}
