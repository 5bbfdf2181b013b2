//! Autograd nodes for frozen weights: a matmul that back-propagates to its input
//! only, and a LoRA-adapted projection that keeps one activation instead of five.
//!
//! candle's own matmul backward computes the gradient of both operands, so
//! a frozen weight would cost a second matmul and a weight-sized gradient
//! per layer per step. This op carries the weight inside itself, where the
//! autograd graph cannot see it, and its `bwd` returns `grad @ W` alone.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

struct FrozenMatmul {
    /// (out, in)
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = tensor_of(storage, layout, "frozen-matmul input")?;
        into_storage(&x.matmul(&self.w.t()?)?)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// `x @ w.T` for a 2-D `x` (n, in) and frozen `w` (out, in). When `x`
/// needs no gradient (inference), a plain matmul.
pub fn frozen_matmul(x: &Tensor, w: &Tensor, track: bool) -> candle_core::Result<Tensor> {
    if track && x.device().is_cpu() {
        x.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })
    } else {
        // On accelerators the weight gradient is computed and dropped.
        x.matmul(&w.detach().t()?)
    }
}

/// Dropout on a LoRA input, kept as one bit per element: the f32 mask and the
/// masked copy of `x` that candle's ops would keep alive until backward cost
/// two activations per adapted projection.
#[derive(Clone)]
pub struct DropoutMask {
    bits: Vec<u64>,
    len: usize,
    /// `1 / keep`: what kept elements are multiplied by.
    scale: f32,
}

impl DropoutMask {
    /// One draw per element, in element order: an element is kept when the draw
    /// is below `keep`.
    pub fn sample(len: usize, keep: f32, mut draw: impl FnMut() -> f32) -> Self {
        let mut bits = vec![0u64; len.div_ceil(64)];
        for i in 0..len {
            if draw() < keep {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        DropoutMask {
            bits,
            len,
            scale: 1.0 / keep,
        }
    }

    /// `x * mask`, for a contiguous `x` of `len` elements.
    fn apply(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        if data.len() != self.len {
            candle_core::bail!("dropout mask: {} elements for a tensor of {}", self.len, data.len());
        }
        let out: Vec<f32> = data
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if self.bits[i / 64] >> (i % 64) & 1 == 1 {
                    v * self.scale
                } else {
                    0.0
                }
            })
            .collect();
        Tensor::from_vec(out, x.shape(), x.device())
    }
}

/// `x @ W.T + scale * (dropout(x) @ A.T) @ B.T` as one autograd node, for a frozen
/// `W` (out, in) and the adapter's `A` (r, in) and `B` (out, r).
///
/// Composed from candle ops, one adapted projection keeps five activations alive
/// until backward (the base output, the dropout mask, the masked input, the
/// low-rank product and the scaled delta); summed over seven projections that is
/// most of a training step's memory. This node keeps only its output: `bwd`
/// recomputes the rank-r product (n x r, cheap) and returns the gradients of
/// `x`, `A` and `B`; the frozen weight gets none.
struct LoraLinear {
    w: Tensor,
    scale: f64,
    mask: Option<DropoutMask>,
}

impl LoraLinear {
    fn dropped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.mask {
            Some(m) => m.apply(x),
            None => Ok(x.clone()),
        }
    }
}

/// A custom op's CPU input as a tensor of its own (a copy of the contiguous f32 data).
fn tensor_of(storage: &CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<Tensor> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: f32 expected");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Tensor::from_slice(&data[start..end], layout.shape(), &candle_core::Device::Cpu),
        None => candle_core::bail!("{what}: contiguous data expected"),
    }
}

/// A tensor computed inside a custom op, as the op's CPU output.
fn into_storage(y: &Tensor) -> candle_core::Result<(CpuStorage, Shape)> {
    let y = y.contiguous()?;
    let shape = y.shape().clone();
    let (storage, layout) = y.storage_and_layout();
    let Storage::Cpu(CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("custom op: f32 CPU output expected");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok((CpuStorage::F32(data[start..end].to_vec()), shape)),
        None => candle_core::bail!("custom op: contiguous output expected"),
    }
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = tensor_of(xs, xl, "lora-linear input")?;
        let a = tensor_of(a_s, al, "lora-linear lora_A")?;
        let b = tensor_of(bs, bl, "lora-linear lora_B")?;
        let base = x.matmul(&self.w.t()?)?;
        let delta = self.dropped(&x)?.matmul(&a.t()?)?.matmul(&b.t()?)?;
        into_storage(&(base + (delta * self.scale)?)?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, grad) = (x.detach(), a.detach(), b.detach(), grad.detach());
        let xd = self.dropped(&x)?;
        let low = xd.matmul(&a.t()?)?; // (n, r)
        let grad_b = (grad.t()?.matmul(&low)? * self.scale)?; // (out, r)
        let grad_low = (grad.matmul(&b)? * self.scale)?; // (n, r)
        let grad_a = grad_low.t()?.matmul(&xd)?; // (r, in)
        let grad_x = (grad.matmul(&self.w)? + self.dropped(&grad_low.matmul(&a)?)?)?;
        Ok((Some(grad_x), Some(grad_a), Some(grad_b)))
    }
}

/// A LoRA-adapted projection of a 2-D `x` (n, in) for training on the CPU; see
/// [`LoraLinear`].
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    mask: Option<DropoutMask>,
) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op3(
        a,
        b,
        LoraLinear {
            w: w.clone(),
            scale,
            mask,
        },
    )
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::engine::rng::Rng;

    fn random(rng: &mut Rng, shape: (usize, usize)) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.next_f32() - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn lora_linear_matches_composed_ops_in_value_and_gradients() {
        let (n, d_in, d_out, r) = (7, 12, 5, 3);
        for dropout in [0.0f32, 0.3] {
            let mut rng = Rng::new(11);
            let w = random(&mut rng, (d_out, d_in));
            let x = Var::from_tensor(&random(&mut rng, (n, d_in))).unwrap();
            let a = Var::from_tensor(&random(&mut rng, (r, d_in))).unwrap();
            let b = Var::from_tensor(&random(&mut rng, (d_out, r))).unwrap();
            let weights = random(&mut rng, (n, d_out));
            let scale = 2.0;
            let keep = 1.0 - dropout;
            let mask = (dropout > 0.0).then(|| {
                let mut draws = Rng::new(5);
                DropoutMask::sample(n * d_in, keep, || draws.next_f32())
            });

            let fused = lora_linear(&x, &w, &a, &b, scale, mask.clone()).unwrap();
            let fused_grads = (&fused * &weights).unwrap().sum_all().unwrap().backward().unwrap();

            let xd = match &mask {
                Some(m) => {
                    let ones = Tensor::ones((n, d_in), DType::F32, &Device::Cpu).unwrap();
                    x.as_tensor().mul(&m.apply(&ones).unwrap()).unwrap()
                }
                None => x.as_tensor().clone(),
            };
            let composed = (x.matmul(&w.t().unwrap()).unwrap()
                + (xd.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap() * scale).unwrap())
            .unwrap();
            let composed_grads = (&composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();

            assert!(max_diff(&fused, &composed) < 1e-5, "dropout {dropout}: values differ");
            for (name, v) in [("x", &x), ("A", &a), ("B", &b)] {
                let (g1, g2) = (fused_grads.get(v).unwrap(), composed_grads.get(v).unwrap());
                assert!(max_diff(g1, g2) < 1e-5, "dropout {dropout}: gradient of {name} differs");
            }
            assert!(fused_grads.get(&w).is_none(), "the frozen weight got a gradient");
        }
    }

    #[test]
    fn dropout_masks_draw_once_per_element_and_scale_kept_values() {
        let mut draws = [0.1f32, 0.9, 0.5, 0.7].into_iter().cycle();
        let m = DropoutMask::sample(130, 0.6, || draws.next().unwrap());
        let x = Tensor::ones((10, 13), DType::F32, &Device::Cpu).unwrap();
        let v = m.apply(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, got) in v.iter().enumerate() {
            let want = if [0.1f32, 0.9, 0.5, 0.7][i % 4] < 0.6 {
                1.0 / 0.6
            } else {
                0.0
            };
            assert!((got - want).abs() < 1e-6, "element {i}: {got} vs {want}");
        }
    }
}
