//! Autograd nodes for frozen weights: a matmul that back-propagates to its input
//! only, and a LoRA-adapted projection that keeps one activation instead of five.
//!
//! candle's own matmul backward computes the gradient of both operands, so
//! a frozen weight would cost a second matmul and a weight-sized gradient
//! per layer per step. This op carries the weight inside itself, where the
//! autograd graph cannot see it, and its `bwd` returns `grad @ W` alone.
//!
//! The CPU kernels call `gemm` (the crate candle itself uses) on the
//! operands' own buffers through [`gemm_into`], accumulating into one output
//! where candle's ops would allocate a tensor per intermediate and copy the
//! op's input and output once more each.

use std::borrow::Cow;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, bail};

use super::fused::{input, read};

type R<T> = candle_core::Result<T>;

/// A row-major matrix (`rows` x `cols`) used as a gemm operand, transposed
/// when `t`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    t: bool,
}

impl<'a> Mat<'a> {
    fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            t: false,
        }
    }

    fn t(self) -> Self {
        Mat { t: !self.t, ..self }
    }

    /// (rows, cols, row stride, column stride) of the operand as used.
    fn shape(&self) -> (usize, usize, isize, isize) {
        if self.t {
            (self.cols, self.rows, 1, self.cols as isize)
        } else {
            (self.rows, self.cols, self.cols as isize, 1)
        }
    }
}

/// `dst = (dst if accumulate) + beta * lhs @ rhs` for a row-major `dst`, with
/// candle's thread count. Shapes are checked; the gemm call itself is the only
/// unsafe code.
fn gemm_into(dst: &mut [f32], accumulate: bool, lhs: Mat<'_>, rhs: Mat<'_>, beta: f32) -> R<()> {
    let (m, k, lhs_rs, lhs_cs) = lhs.shape();
    let (k2, n, rhs_rs, rhs_cs) = rhs.shape();
    if k != k2 || dst.len() != m * n || lhs.data.len() != lhs.rows * lhs.cols || rhs.data.len() != rhs.rows * rhs.cols {
        bail!("gemm: ({m}, {k}) @ ({k2}, {n}) into {} elements", dst.len());
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the checks above make every pointer cover the matrix its
    // dimensions and strides describe; `dst` is a unique borrow, so it
    // aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs_cs,
            lhs_rs,
            rhs.data.as_ptr(),
            rhs_cs,
            rhs_rs,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

/// The (rows, cols) of a 2-D custom-op input.
fn dims2(layout: &Layout) -> R<(usize, usize)> {
    layout.shape().dims2()
}

struct FrozenMatmul {
    /// (out, in)
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = input(storage, layout, "frozen-matmul input")?;
        let (n, inp) = dims2(layout)?;
        let (out, _) = self.w.dims2()?;
        let mut y = vec![0f32; n * out];
        read(&self.w, |w| {
            gemm_into(&mut y, false, Mat::new(x, n, inp), Mat::new(w, out, inp).t(), 1.0)
        })?;
        Ok((CpuStorage::F32(y), (n, out).into()))
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

/// `x @ w.T + scale * (xd @ a.T) @ b.T` into one buffer, where `xd` is `x`
/// after dropout (or `x` itself): `x` (n, in), `w` (out, in), `a` (r, in),
/// `b` (out, r).
#[allow(clippy::too_many_arguments)]
fn lora_forward(
    x: &[f32],
    xd: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    n: usize,
    out: usize,
    scale: f32,
) -> R<Vec<f32>> {
    let inp = x.len().checked_div(n).unwrap_or(0);
    let mut y = vec![0f32; n * out];
    gemm_into(&mut y, false, Mat::new(x, n, inp), Mat::new(w, out, inp).t(), 1.0)?;
    add_lora_delta(&mut y, xd, a, b, n, out, scale)?;
    Ok(y)
}

/// `y += scale * (x @ a.T) @ b.T`: `y` (n, out), `x` (n, in), `a` (r, in),
/// `b` (out, r).
fn add_lora_delta(y: &mut [f32], x: &[f32], a: &[f32], b: &[f32], n: usize, out: usize, scale: f32) -> R<()> {
    let inp = x.len().checked_div(n).unwrap_or(0);
    let r = a.len().checked_div(inp).unwrap_or(0);
    let mut low = vec![0f32; n * r];
    gemm_into(&mut low, false, Mat::new(x, n, inp), Mat::new(a, r, inp).t(), 1.0)?;
    gemm_into(y, true, Mat::new(&low, n, r), Mat::new(b, out, r).t(), scale)
}

/// `x @ w.T + scale * (x @ a.T) @ b.T` for inference on the CPU (no
/// autograd): `x` (n, in), frozen `w` (out, in), `a` (r, in), `b` (out, r).
/// Three gemm calls write into one output buffer, where candle's ops would
/// allocate the base output, the rank-r product, the delta, the scaled delta
/// and their sum (a third of a batched decode step went to that).
pub fn lora_infer(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> R<Tensor> {
    let (n, inp) = x.dims2()?;
    let (out, w_in) = w.dims2()?;
    let (r, a_in) = a.dims2()?;
    let (b_out, b_r) = b.dims2()?;
    if w_in != inp || a_in != inp || b_out != out || b_r != r {
        bail!("lora: x ({n}, {inp}), W ({out}, {w_in}), A ({r}, {a_in}), B ({b_out}, {b_r}) do not fit");
    }
    let y = read(x, |xs| {
        read(w, |ws| {
            read(a, |as_| {
                read(b, |bs| lora_forward(xs, xs, ws, as_, bs, n, out, scale as f32))
            })
        })
    })?;
    Tensor::from_vec(y, (n, out), x.device())
}

/// `y + scale * (x @ a.T) @ b.T` for inference on the CPU: a LoRA update on
/// top of a base output computed elsewhere (a quantized weight's): `y`
/// (n, out), `x` (n, in), `a` (r, in), `b` (out, r).
pub fn lora_add(y: &Tensor, x: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> R<Tensor> {
    let (n, inp) = x.dims2()?;
    let (yn, out) = y.dims2()?;
    let (r, a_in) = a.dims2()?;
    let (b_out, b_r) = b.dims2()?;
    if yn != n || a_in != inp || b_out != out || b_r != r {
        bail!("lora: y ({yn}, {out}), x ({n}, {inp}), A ({r}, {a_in}), B ({b_out}, {b_r}) do not fit");
    }
    let mut out_v = y.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    read(x, |xs| {
        read(a, |as_| {
            read(b, |bs| add_lora_delta(&mut out_v, xs, as_, bs, n, out, scale as f32))
        })
    })?;
    Tensor::from_vec(out_v, (n, out), x.device())
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

    /// `x * mask` for `x` of `len` elements.
    fn apply(&self, data: &[f32]) -> R<Vec<f32>> {
        if data.len() != self.len {
            bail!("dropout mask: {} elements for a tensor of {}", self.len, data.len());
        }
        Ok(data
            .iter()
            .enumerate()
            .map(|(i, v)| {
                if self.bits[i / 64] >> (i % 64) & 1 == 1 {
                    v * self.scale
                } else {
                    0.0
                }
            })
            .collect())
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
    fn dropped<'a>(&self, x: &'a [f32]) -> R<Cow<'a, [f32]>> {
        Ok(match &self.mask {
            Some(m) => Cow::Owned(m.apply(x)?),
            None => Cow::Borrowed(x),
        })
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
    ) -> R<(CpuStorage, Shape)> {
        let x = input(xs, xl, "lora-linear input")?;
        let a = input(a_s, al, "lora-linear lora_A")?;
        let b = input(bs, bl, "lora-linear lora_B")?;
        let (n, inp) = dims2(xl)?;
        let (out, w_in) = self.w.dims2()?;
        if dims2(al)?.1 != inp || w_in != inp || dims2(bl)? != (out, dims2(al)?.0) {
            bail!(
                "lora-linear: x {:?}, A {:?}, B {:?} do not fit W ({out}, {w_in})",
                xl.dims(),
                al.dims(),
                bl.dims()
            );
        }
        let xd = self.dropped(x)?;
        let y = read(&self.w, |w| lora_forward(x, &xd, w, a, b, n, out, self.scale as f32))?;
        Ok((CpuStorage::F32(y), (n, out).into()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> R<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, inp) = x.dims2()?;
        let (r, _) = a.dims2()?;
        let (out, _) = b.dims2()?;
        let scale = self.scale as f32;
        let mut grad_x = vec![0f32; n * inp];
        let mut grad_a = vec![0f32; r * inp];
        let mut grad_b = vec![0f32; out * r];
        read(x, |xs| {
            read(a, |a| {
                read(b, |b| {
                    read(grad, |g| {
                        read(&self.w, |w| {
                            let xd = self.dropped(xs)?;
                            let g = Mat::new(g, n, out);
                            // low = xd @ A.T (n, r), recomputed rather than kept.
                            let mut low = vec![0f32; n * r];
                            gemm_into(&mut low, false, Mat::new(&xd, n, inp), Mat::new(a, r, inp).t(), 1.0)?;
                            // dB = scale * g.T @ low; dlow = scale * g @ B; dA = dlow.T @ xd.
                            gemm_into(&mut grad_b, false, g.t(), Mat::new(&low, n, r), scale)?;
                            let mut grad_low = vec![0f32; n * r];
                            gemm_into(&mut grad_low, false, g, Mat::new(b, out, r), scale)?;
                            gemm_into(
                                &mut grad_a,
                                false,
                                Mat::new(&grad_low, n, r).t(),
                                Mat::new(&xd, n, inp),
                                1.0,
                            )?;
                            // dx = g @ W + dropout(dlow @ A).
                            gemm_into(&mut grad_x, false, g, Mat::new(w, out, inp), 1.0)?;
                            match &self.mask {
                                None => {
                                    gemm_into(&mut grad_x, true, Mat::new(&grad_low, n, r), Mat::new(a, r, inp), 1.0)
                                }
                                Some(m) => {
                                    let mut t = vec![0f32; n * inp];
                                    gemm_into(&mut t, false, Mat::new(&grad_low, n, r), Mat::new(a, r, inp), 1.0)?;
                                    for (d, v) in grad_x.iter_mut().zip(m.apply(&t)?) {
                                        *d += v;
                                    }
                                    Ok(())
                                }
                            }
                        })
                    })
                })
            })
        })?;
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(grad_x, (n, inp), dev)?),
            Some(Tensor::from_vec(grad_a, (r, inp), dev)?),
            Some(Tensor::from_vec(grad_b, (out, r), dev)?),
        ))
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
    use candle_core::{Device, Var};

    use super::*;
    use crate::max_abs_diff as max_diff;
    use crate::rng::Rng;

    fn random(rng: &mut Rng, shape: (usize, usize)) -> Tensor {
        let v: Vec<f32> = (0..shape.0 * shape.1).map(|_| rng.next_f32() - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
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
                    let ones = Tensor::from_vec(m.apply(&vec![1f32; n * d_in]).unwrap(), (n, d_in), &Device::Cpu);
                    x.as_tensor().mul(&ones.unwrap()).unwrap()
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
    fn lora_add_matches_composed_ops() {
        let mut rng = Rng::new(3);
        let x = random(&mut rng, (3, 8));
        let w = random(&mut rng, (5, 8));
        let a = random(&mut rng, (2, 8));
        let b = random(&mut rng, (5, 2));
        let y = x.matmul(&w.t().unwrap()).unwrap();
        let want = lora_infer(&x, &w, &a, &b, 0.5).unwrap();
        let got = lora_add(&y, &x, &a, &b, 0.5).unwrap();
        assert!(max_diff(&got, &want) < 1e-5);
        assert!(lora_add(&y, &x, &b, &b, 0.5).is_err());
    }

    #[test]
    fn lora_infer_matches_composed_ops() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (5, 12), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (7, 12), &dev).unwrap();
        let a = Tensor::randn(0f32, 1.0, (3, 12), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (7, 3), &dev).unwrap();
        let want = (x.matmul(&w.t().unwrap()).unwrap()
            + (x.matmul(&a.t().unwrap()).unwrap().matmul(&b.t().unwrap()).unwrap() * 0.5).unwrap())
        .unwrap();
        let got = lora_infer(&x, &w, &a, &b, 0.5).unwrap();
        assert!(max_diff(&got, &want) < 1e-4);
        assert!(lora_infer(&x, &w, &b, &b, 0.5).is_err());
    }

    #[test]
    fn dropout_masks_draw_once_per_element_and_scale_kept_values() {
        let mut draws = [0.1f32, 0.9, 0.5, 0.7].into_iter().cycle();
        let m = DropoutMask::sample(130, 0.6, || draws.next().unwrap());
        let v = m.apply(&[1f32; 130]).unwrap();
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
