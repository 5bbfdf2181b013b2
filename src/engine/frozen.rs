//! A matmul against a frozen weight that back-propagates to its input only.
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
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen-matmul: f32 input expected");
        };
        let x = match layout.contiguous_offsets() {
            Some((start, end)) => Tensor::from_slice(&data[start..end], layout.shape(), &candle_core::Device::Cpu)?,
            None => candle_core::bail!("frozen-matmul: contiguous input expected"),
        };
        let y = x.matmul(&self.w.t()?)?;
        let shape = y.shape().clone();
        let (storage, y_layout) = y.storage_and_layout();
        let Storage::Cpu(CpuStorage::F32(out)) = &*storage else {
            candle_core::bail!("frozen-matmul: unexpected output storage");
        };
        let out = match y_layout.contiguous_offsets() {
            Some((start, end)) => out[start..end].to_vec(),
            None => candle_core::bail!("frozen-matmul: non-contiguous output"),
        };
        Ok((CpuStorage::F32(out), shape))
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
