//! Model hyperparameters, read from a Hugging Face `config.json` or a GGUF
//! file's metadata, for the decoder-only architectures the engine runs
//! (llama: SmolLM2, Llama 3; qwen2: Qwen2.5).

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// "llama" or "qwen2".
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Qwen2 has biases on the q, k and v projections.
    pub attention_bias: bool,
    /// Llama 3.1-style rope scaling, when the model uses it.
    pub rope_scaling: Option<Llama3RopeScaling>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(v: &serde_json::Value) -> Result<Self, String> {
        let arch = v["model_type"]
            .as_str()
            .ok_or("config.json has no model_type")?
            .to_string();
        let get = |k: &str| -> Result<usize, String> {
            v[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format!("config.json has no integer {k}"))
        };
        let hidden_size = get("hidden_size")?;
        let num_heads = get("num_attention_heads")?;
        let num_kv_heads = v["num_key_value_heads"]
            .as_u64()
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = v["head_dim"]
            .as_u64()
            .map(|x| x as usize)
            .unwrap_or(hidden_size / num_heads.max(1));
        let rope_scaling = match v.get("rope_scaling") {
            Some(s) if s["rope_type"].as_str().or(s["type"].as_str()) == Some("llama3") => Some(Llama3RopeScaling {
                factor: s["factor"].as_f64().unwrap_or(8.0),
                low_freq_factor: s["low_freq_factor"].as_f64().unwrap_or(1.0),
                high_freq_factor: s["high_freq_factor"].as_f64().unwrap_or(4.0),
                original_max_position_embeddings: s["original_max_position_embeddings"].as_u64().unwrap_or(8192)
                    as usize,
            }),
            Some(s) if !s.is_null() => {
                return Err(format!("rope_scaling {s} is not supported (only llama3-style)"));
            }
            _ => None,
        };
        let config = Self {
            attention_bias: v["attention_bias"].as_bool().unwrap_or(arch == "qwen2"),
            architecture: arch,
            vocab_size: get("vocab_size")?,
            hidden_size,
            intermediate_size: get("intermediate_size")?,
            num_layers: get("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: v["rope_theta"].as_f64().unwrap_or(10_000.0),
            max_position_embeddings: v["max_position_embeddings"].as_u64().unwrap_or(2048) as usize,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            rope_scaling,
        };
        config.check()?;
        Ok(config)
    }

    /// The `config.json` a merged model is written with.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": [if self.architecture == "qwen2" { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
            "model_type": self.architecture,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if self.architecture == "llama" {
            v["attention_bias"] = self.attention_bias.into();
        }
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        v
    }

    pub fn check(&self) -> Result<(), String> {
        if !crate::SUPPORTED.contains(&self.architecture.as_str()) {
            return Err(format!("architecture {:?} is not supported", self.architecture));
        }
        if self.num_heads == 0 || self.num_kv_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "{} attention heads cannot be grouped over {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim {} must be even and positive", self.head_dim));
        }
        if self.hidden_size == 0 || self.intermediate_size == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return Err("hidden_size, intermediate_size, num_hidden_layers and vocab_size must be positive".into());
        }
        Ok(())
    }

    /// Inverse frequencies for rotary embeddings (head_dim / 2 of them).
    pub fn inv_freq(&self) -> Vec<f64> {
        let half = self.head_dim / 2;
        let mut f: Vec<f64> = (0..half)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / self.head_dim as f64))
            .collect();
        if let Some(s) = &self.rope_scaling {
            let old = s.original_max_position_embeddings as f64;
            let low_wavelen = old / s.low_freq_factor;
            let high_wavelen = old / s.high_freq_factor;
            for x in &mut f {
                let wavelen = 2.0 * std::f64::consts::PI / *x;
                if wavelen > low_wavelen {
                    *x /= s.factor;
                } else if wavelen >= high_wavelen {
                    let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    *x = (1.0 - smooth) * *x / s.factor + smooth * *x;
                }
            }
        }
        f
    }
}
