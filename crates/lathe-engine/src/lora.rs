//! LoRA adapters: initialisation as PEFT does it, PEFT's file layout
//! (`adapter_model.safetensors` + `adapter_config.json`, so vLLM, LoRAX and
//! PEFT load them), and merging into the base weights.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::config::ModelConfig;
use super::rng::Rng;
use super::weights::{Proj, Weights};
use super::{EngineError, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<Proj>,
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// An adapter over a base model: for each layer and adapted projection, A
/// (r, in) and B (out, r); the update is `scale * B @ A`.
#[derive(Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    /// [layer][proj as usize]
    pairs: Vec<Vec<Option<(Tensor, Tensor)>>>,
}

impl Adapter {
    /// A fresh adapter (A ~ U(-1/sqrt(in), 1/sqrt(in)) as PEFT's kaiming
    /// init with a=sqrt(5); B = 0), and its trainable variables in a fixed
    /// order: layer by layer, projection by projection, A then B.
    pub fn init(model: &ModelConfig, config: LoraConfig, rng: &mut Rng, device: &Device) -> Result<(Self, Vec<Var>)> {
        let mut vars = Vec::new();
        let mut pairs = Vec::with_capacity(model.num_layers);
        for _ in 0..model.num_layers {
            let mut row = vec![None; 7];
            for proj in Proj::ALL {
                if !config.targets.contains(&proj) {
                    continue;
                }
                let (inp, out) = proj.dims(model);
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..config.rank * inp)
                    .map(|_| (rng.next_f32() * 2.0 - 1.0) * bound)
                    .collect();
                let a = Var::from_vec(a, (config.rank, inp), device)?;
                let b = Var::zeros((out, config.rank), DType::F32, device)?;
                row[proj as usize] = Some((a.as_tensor().clone(), b.as_tensor().clone()));
                vars.push(a);
                vars.push(b);
            }
            pairs.push(row);
        }
        Ok((Self { config, pairs }, vars))
    }

    pub fn pair(&self, layer: usize, proj: Proj) -> Option<(&Tensor, &Tensor, f64)> {
        self.pairs
            .get(layer)?
            .get(proj as usize)?
            .as_ref()
            .map(|(a, b)| (a, b, self.config.scale()))
    }

    /// PEFT names for every tensor, in the same order as `init`'s vars.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, row) in self.pairs.iter().enumerate() {
            for proj in Proj::ALL {
                if let Some((a, b)) = &row[proj as usize] {
                    let p = format!("base_model.model.model.layers.{i}.{}", proj.hf_path());
                    out.push((format!("{p}.lora_A.weight"), a.clone()));
                    out.push((format!("{p}.lora_B.weight"), b.clone()));
                }
            }
        }
        out
    }

    /// `adapter_config.json` as PEFT writes it.
    pub fn peft_config(&self, base_model: &str) -> serde_json::Value {
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": self.config.targets.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "use_dora": false,
            "inference_mode": true,
            "modules_to_save": null,
        })
    }

    /// The two PEFT files: (adapter_model.safetensors, adapter_config.json).
    pub fn to_peft(&self, base_model: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        let tensors = write_safetensors(&self.named())?;
        let config =
            serde_json::to_vec_pretty(&self.peft_config(base_model)).map_err(|e| EngineError::Load(e.to_string()))?;
        Ok((tensors, config))
    }

    /// Reads PEFT files written by Lathe or PEFT.
    pub fn from_peft(model: &ModelConfig, safetensors: &[u8], config: &[u8], device: &Device) -> Result<Self> {
        let cfg: serde_json::Value =
            serde_json::from_slice(config).map_err(|e| EngineError::Load(format!("adapter_config.json: {e}")))?;
        let rank = cfg["r"]
            .as_u64()
            .ok_or_else(|| EngineError::Load("adapter_config.json has no r".into()))? as usize;
        let alpha = cfg["lora_alpha"].as_f64().unwrap_or(rank as f64);
        if cfg["use_rslora"].as_bool() == Some(true) || cfg["use_dora"].as_bool() == Some(true) {
            return Err(EngineError::Load("rsLoRA and DoRA adapters are not supported".into()));
        }
        let tensors = candle_core::safetensors::load_buffer(safetensors, device)?;
        let mut pairs: Vec<Vec<Option<(Tensor, Tensor)>>> = vec![vec![None; 7]; model.num_layers];
        let mut targets = Vec::new();
        let mut by_name: HashMap<String, Tensor> = tensors;
        for (i, row) in pairs.iter_mut().enumerate() {
            for proj in Proj::ALL {
                let p = format!("base_model.model.model.layers.{i}.{}", proj.hf_path());
                let a = by_name.remove(&format!("{p}.lora_A.weight"));
                let b = by_name.remove(&format!("{p}.lora_B.weight"));
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let (inp, out) = proj.dims(model);
                        if a.dims() != [rank, inp] || b.dims() != [out, rank] {
                            return Err(EngineError::Load(format!(
                                "{p}: lora shapes {:?} and {:?} do not fit the model",
                                a.dims(),
                                b.dims()
                            )));
                        }
                        row[proj as usize] = Some((a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?));
                        if !targets.contains(&proj) {
                            targets.push(proj);
                        }
                    }
                    (None, None) => {}
                    _ => return Err(EngineError::Load(format!("{p}: lora_A without lora_B or the reverse"))),
                }
            }
        }
        if targets.is_empty() {
            return Err(EngineError::Load(
                "the adapter has no LoRA tensors for this model".into(),
            ));
        }
        targets.sort();
        Ok(Self {
            config: LoraConfig {
                rank,
                alpha,
                dropout: cfg["lora_dropout"].as_f64().unwrap_or(0.0),
                targets,
            },
            pairs,
        })
    }

    /// The base weights with this adapter folded in: W + scale * B @ A.
    pub fn merge_into(&self, weights: &Weights) -> Result<Weights> {
        let mut merged = weights.clone();
        // The quantized copies hold the base alone.
        merged.quant = None;
        let scale = self.config.scale();
        for (i, layer) in merged.layers.iter_mut().enumerate() {
            for proj in Proj::ALL {
                if let Some((a, b)) = &self.pairs[i][proj as usize] {
                    let lin = &mut layer.proj[proj as usize];
                    lin.w = (&lin.w + (b.matmul(a)? * scale)?)?;
                }
            }
        }
        Ok(merged)
    }
}

/// Serialises f32 tensors in the safetensors format (names sorted).
pub fn write_safetensors(tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let sorted: BTreeMap<&str, &Tensor> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in &sorted {
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let start = data.len();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut h = serde_json::to_vec(&header).map_err(|e| EngineError::Load(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}
