//! AdamW with inspectable state (so a checkpoint can hold it and resume is
//! exact), the learning-rate schedules, and global-norm gradient clipping.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::fused::read;
use super::{EngineError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// PyTorch's defaults with transformers' weight decay of 0.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// PyTorch's AdamW (decoupled weight decay, bias-corrected moments).
pub struct AdamW {
    pub params: AdamWParams,
    /// Optimizer steps taken.
    pub t: u64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: &[Var], params: AdamWParams) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(Self {
            params,
            t: 0,
            m: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
            v: vars.iter().map(zeros).collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update of every var with its gradient at learning rate `lr`.
    pub fn step(&mut self, vars: &[Var], grads: &[Tensor], lr: f64) -> Result<()> {
        let p = self.params;
        self.t += 1;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
        for (i, (var, g)) in vars.iter().zip(grads).enumerate() {
            let theta = var.as_tensor();
            if theta.device().is_cpu() && theta.dtype() == candle_core::DType::F32 {
                // One pass over each variable's elements: the same arithmetic
                // as the composed ops below, without their thirteen tensors.
                let (m, v, new) = read(theta, |th| {
                    read(g, |g| {
                        read(&self.m[i], |m0| {
                            read(&self.v[i], |v0| {
                                let (b1, b2) = (p.beta1 as f32, p.beta2 as f32);
                                let (c1, c2) = ((1.0 - p.beta1) as f32, (1.0 - p.beta2) as f32);
                                let (bc1, bc2, eps) = (bc1 as f32, bc2 as f32, p.eps as f32);
                                let (lr32, decay) = (lr as f32, (1.0 - lr * p.weight_decay) as f32);
                                let n = th.len();
                                let (mut m, mut v, mut new) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
                                for k in 0..n {
                                    m[k] = m0[k] * b1 + g[k] * c1;
                                    v[k] = v0[k] * b2 + g[k] * g[k] * c2;
                                    let decayed = if p.weight_decay > 0.0 { th[k] * decay } else { th[k] };
                                    let update = (m[k] / bc1) / ((v[k] / bc2).sqrt() + eps);
                                    new[k] = decayed - update * lr32;
                                }
                                Ok((m, v, new))
                            })
                        })
                    })
                })?;
                let (shape, dev) = (theta.shape().clone(), theta.device().clone());
                var.set(&Tensor::from_vec(new, shape.clone(), &dev)?)?;
                self.m[i] = Tensor::from_vec(m, shape.clone(), &dev)?;
                self.v[i] = Tensor::from_vec(v, shape, &dev)?;
                continue;
            }
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let decayed = if p.weight_decay > 0.0 {
                (theta * (1.0 - lr * p.weight_decay))?
            } else {
                theta.clone()
            };
            let denom = ((&v / bc2)?.sqrt()? + p.eps)?;
            let update = ((&m / bc1)? / denom)?;
            var.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments, named for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.m.len() * 2);
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            out.push((format!("m.{i:05}"), m.clone()));
            out.push((format!("v.{i:05}"), v.clone()));
        }
        out
    }

    pub fn load_state(&mut self, t: u64, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        for i in 0..self.m.len() {
            let get = |k: String| {
                tensors
                    .get(&k)
                    .cloned()
                    .ok_or_else(|| EngineError::Data(format!("optimizer state has no {k}")))
            };
            let m = get(format!("m.{i:05}"))?;
            let v = get(format!("v.{i:05}"))?;
            if m.dims() != self.m[i].dims() || v.dims() != self.v[i].dims() {
                return Err(EngineError::Data("optimizer state does not fit the adapter".into()));
            }
            self.m[i] = m;
            self.v[i] = v;
        }
        self.t = t;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Linear,
    Cosine,
    Constant,
}

/// transformers' schedules with linear warmup: the multiplier for the
/// update numbered `step` (0-based) of `total`.
pub fn lr_factor(schedule: Schedule, step: u64, warmup: u64, total: u64) -> f64 {
    if step < warmup {
        return step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    match schedule {
        Schedule::Constant => 1.0,
        Schedule::Linear => (1.0 - progress).max(0.0),
        Schedule::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

/// Scales the gradients so that their global L2 norm is at most `max_norm`
/// (as torch's clip_grad_norm_); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter() {
        total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    let norm = total.sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let c = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * c)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        assert_eq!(lr_factor(Schedule::Linear, 0, 0, 10), 1.0);
        assert!((lr_factor(Schedule::Linear, 9, 0, 10) - 0.1).abs() < 1e-12);
        assert_eq!(lr_factor(Schedule::Linear, 0, 2, 10), 0.0);
        assert_eq!(lr_factor(Schedule::Linear, 1, 2, 10), 0.5);
        assert_eq!(lr_factor(Schedule::Cosine, 2, 2, 10), 1.0);
        assert!(lr_factor(Schedule::Cosine, 6, 2, 10) - 0.5 < 1e-12);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_against_the_gradient_sign() {
        let dev = candle_core::Device::Cpu;
        let var = Var::from_vec(vec![1.0f32, -1.0], 2, &dev).unwrap();
        let mut opt = AdamW::new(std::slice::from_ref(&var), AdamWParams::default()).unwrap();
        let g = Tensor::from_vec(vec![0.5f32, -2.0], 2, &dev).unwrap();
        opt.step(std::slice::from_ref(&var), &[g], 0.1).unwrap();
        let v = var.as_tensor().to_vec1::<f32>().unwrap();
        assert!((v[0] - 0.9).abs() < 1e-5 && (v[1] + 0.9).abs() < 1e-5, "{v:?}");
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let dev = candle_core::Device::Cpu;
        let mut g = vec![
            Tensor::from_vec(vec![3.0f32], 1, &dev).unwrap(),
            Tensor::from_vec(vec![4.0f32], 1, &dev).unwrap(),
        ];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        let a = g[0].to_vec1::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-4);
    }
}
