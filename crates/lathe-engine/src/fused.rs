//! Fused CPU ops of the decoder, each one autograd node with its own backward.
//!
//! candle keeps every intermediate tensor of the forward pass alive until
//! backward. Composed from elementwise ops, an RMS norm keeps three
//! activations, a rotary embedding on a gathered, transposed head layout
//! about six, a masked softmax five score-sized arrays and the SwiGLU gate
//! one more: most of a training step's memory after the adapted
//! projections (see [`super::frozen`]). Each op here keeps only its output
//! (its input is kept anyway as the output of the op before it) and makes
//! one pass over memory instead of several.
//!
//! candle's own fused kernels record no backward pass (the reference's
//! "silent gradient loss"); these do, and `tests` check values and
//! gradients against the composed ops in [`super::model`]. They run on the
//! CPU only; other devices take the composed path.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

/// Rows per parallel task of the row-wise ops (keeps rayon's overhead small
/// next to the work).
const MIN_ROWS: usize = 32;

type R<T> = candle_core::Result<T>;

/// A custom op's contiguous f32 CPU input.
pub(crate) fn input<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> R<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{what}: f32 expected");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: contiguous input expected"),
    }
}

/// Runs `f` on a tensor's f32 CPU data (a copy only if it is not contiguous).
pub(crate) fn read<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> R<T>) -> R<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("fused op: CPU tensor expected");
    };
    f(input(cpu, layout, "fused op")?)
}

fn out(data: Vec<f32>, shape: impl Into<Shape>) -> R<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(data), shape.into()))
}

// ---------------------------------------------------------------- RMS norm

/// `x / rms(x) * w` over the last dimension, for a frozen `w`.
struct RmsNorm {
    w: Arc<Vec<f32>>,
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> R<(CpuStorage, Shape)> {
        let x = input(storage, layout, "rms-norm input")?;
        let d = self.w.len();
        if d == 0 || x.len() % d != 0 {
            bail!("rms-norm: {} elements do not make rows of {d}", x.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_exact_mut(d)
            .zip(x.par_chunks_exact(d))
            .with_min_len(MIN_ROWS)
            .for_each(|(yr, xr)| {
                let r = inv_rms(xr, self.eps);
                for ((y, x), w) in yr.iter_mut().zip(xr).zip(self.w.iter()) {
                    *y = x * r * w;
                }
            });
        out(y, layout.shape().clone())
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> R<Option<Tensor>> {
        let d = self.w.len();
        let dx = read(arg, |x| {
            read(grad, |g| {
                let mut dx = vec![0f32; x.len()];
                for ((xr, gr), dr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
                    let r = inv_rms(xr, self.eps);
                    let s = xr
                        .iter()
                        .zip(gr)
                        .zip(self.w.iter())
                        .map(|((x, g), w)| g * w * x)
                        .sum::<f32>()
                        / d as f32;
                    let r3s = r * r * r * s;
                    for (((dv, x), g), w) in dr.iter_mut().zip(xr).zip(gr).zip(self.w.iter()) {
                        *dv = r * w * g - r3s * x;
                    }
                }
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// RMS norm over the last dimension of a CPU `x` with a frozen weight `w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> R<Tensor> {
    let w = Arc::new(w.flatten_all()?.to_vec1::<f32>()?);
    x.contiguous()?.apply_op1(RmsNorm { w, eps: eps as f32 })
}

// ------------------------------------------------------- heads and rotary

/// Where the rows of a (N, heads * head_dim) projection go in the attention
/// layout (B, heads, L, head_dim): slot `b * L + p` reads row `gather[slot]`
/// (or row `slot` when there is no gather), and is rotated by `cos[slot]`,
/// `sin[slot]` (each `head_dim` long) when there is a rotary table.
#[derive(Clone)]
pub struct HeadLayout {
    pub batch: usize,
    pub len: usize,
    pub head_dim: usize,
    pub gather: Option<Arc<Vec<u32>>>,
    /// For each packed row, its slot (the inverse of `gather`); none when
    /// rows and slots coincide.
    pub scatter: Option<Arc<Vec<u32>>>,
    pub cos: Arc<Vec<f32>>,
    pub sin: Arc<Vec<f32>>,
}

impl HeadLayout {
    fn src(&self, slot: usize) -> usize {
        match &self.gather {
            Some(g) => g[slot] as usize,
            None => slot,
        }
    }

    fn rows(&self) -> usize {
        match &self.scatter {
            Some(s) => s.len(),
            None => self.batch * self.len,
        }
    }
}

/// Half-split rotary embedding of one head vector (Hugging Face's `rotate_half`).
fn rotate(x: &[f32], c: &[f32], s: &[f32], y: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        y[i] = x[i] * c[i] - x[i + half] * s[i];
        y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
    }
}

/// The transpose of [`rotate`], accumulated into `dx`.
fn rotate_back(g: &[f32], c: &[f32], s: &[f32], dx: &mut [f32]) {
    let half = g.len() / 2;
    for i in 0..half {
        dx[i] += g[i] * c[i] + g[i + half] * s[i + half];
        dx[i + half] += g[i + half] * c[i + half] - g[i] * s[i];
    }
}

struct ToHeads {
    layout: HeadLayout,
    heads: usize,
    rope: bool,
}

impl CustomOp1 for ToHeads {
    fn name(&self) -> &'static str {
        "fused-to-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> R<(CpuStorage, Shape)> {
        let x = input(storage, layout, "to-heads input")?;
        let HeadLayout {
            batch, len, head_dim, ..
        } = self.layout;
        let (h, hd) = (self.heads, head_dim);
        let width = h * hd;
        let rows = x.len() / width.max(1);
        if x.len() != rows * width || rows != self.layout.rows() {
            bail!(
                "to-heads: {} elements for {} rows of {width}",
                x.len(),
                self.layout.rows()
            );
        }
        let mut y = vec![0f32; batch * h * len * hd];
        for b in 0..batch {
            for p in 0..len {
                let slot = b * len + p;
                let src = self.layout.src(slot);
                if src >= rows {
                    bail!("to-heads: slot {slot} reads row {src} of {rows}");
                }
                let (c, s) = (
                    &self.layout.cos[slot * hd..(slot + 1) * hd],
                    &self.layout.sin[slot * hd..(slot + 1) * hd],
                );
                for hh in 0..h {
                    let xv = &x[src * width + hh * hd..src * width + (hh + 1) * hd];
                    let o = ((b * h + hh) * len + p) * hd;
                    let yv = &mut y[o..o + hd];
                    if self.rope {
                        rotate(xv, c, s, yv);
                    } else {
                        yv.copy_from_slice(xv);
                    }
                }
            }
        }
        out(y, (batch, h, len, hd))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> R<Option<Tensor>> {
        let HeadLayout {
            batch, len, head_dim, ..
        } = self.layout;
        let (h, hd) = (self.heads, head_dim);
        let width = h * hd;
        let rows = self.layout.rows();
        let dx = read(grad, |g| {
            let mut dx = vec![0f32; rows * width];
            for b in 0..batch {
                for p in 0..len {
                    let slot = b * len + p;
                    let src = self.layout.src(slot);
                    let (c, s) = (
                        &self.layout.cos[slot * hd..(slot + 1) * hd],
                        &self.layout.sin[slot * hd..(slot + 1) * hd],
                    );
                    for hh in 0..h {
                        let o = ((b * h + hh) * len + p) * hd;
                        let gv = &g[o..o + hd];
                        let dv = &mut dx[src * width + hh * hd..src * width + (hh + 1) * hd];
                        if self.rope {
                            rotate_back(gv, c, s, dv);
                        } else {
                            for (d, g) in dv.iter_mut().zip(gv) {
                                *d += g;
                            }
                        }
                    }
                }
            }
            Ok(dx)
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// A (N, heads * head_dim) projection in the attention layout (B, heads, L,
/// head_dim), rotated when `rope`.
pub fn to_heads(x: &Tensor, heads: usize, layout: &HeadLayout, rope: bool) -> R<Tensor> {
    x.contiguous()?.apply_op1(ToHeads {
        layout: layout.clone(),
        heads,
        rope,
    })
}

struct FromHeads {
    layout: HeadLayout,
}

impl FromHeads {
    fn slot(&self, row: usize) -> usize {
        match &self.layout.scatter {
            Some(s) => s[row] as usize,
            None => row,
        }
    }
}

impl CustomOp1 for FromHeads {
    fn name(&self) -> &'static str {
        "fused-from-heads"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> R<(CpuStorage, Shape)> {
        let a = input(storage, layout, "from-heads input")?;
        let (b, h, l, hd) = layout.shape().dims4()?;
        if b != self.layout.batch || l != self.layout.len {
            bail!(
                "from-heads: ({b}, {l}) is not the layout's ({}, {})",
                self.layout.batch,
                self.layout.len
            );
        }
        let rows = self.layout.rows();
        let width = h * hd;
        let mut y = vec![0f32; rows * width];
        for r in 0..rows {
            let slot = self.slot(r);
            let (bb, p) = (slot / l, slot % l);
            for hh in 0..h {
                let o = ((bb * h + hh) * l + p) * hd;
                y[r * width + hh * hd..r * width + (hh + 1) * hd].copy_from_slice(&a[o..o + hd]);
            }
        }
        out(y, (rows, width))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> R<Option<Tensor>> {
        let (b, h, l, hd) = arg.dims4()?;
        let width = h * hd;
        let da = read(grad, |g| {
            let mut da = vec![0f32; b * h * l * hd];
            for r in 0..self.layout.rows() {
                let slot = self.slot(r);
                let (bb, p) = (slot / l, slot % l);
                for hh in 0..h {
                    let o = ((bb * h + hh) * l + p) * hd;
                    for (d, g) in da[o..o + hd]
                        .iter_mut()
                        .zip(&g[r * width + hh * hd..r * width + (hh + 1) * hd])
                    {
                        *d += g;
                    }
                }
            }
            Ok(da)
        })?;
        Ok(Some(Tensor::from_vec(da, arg.shape(), arg.device())?))
    }
}

/// Attention output (B, heads, L, head_dim) back to rows (N, heads * head_dim),
/// the inverse of [`to_heads`] without rotation.
pub fn from_heads(attn: &Tensor, layout: &HeadLayout) -> R<Tensor> {
    attn.contiguous()?.apply_op1(FromHeads { layout: layout.clone() })
}

// ------------------------------------------------------- masked softmax

/// `softmax(scale * scores + mask)` over the last dimension of scores
/// (B, kv_heads, rep * L, T) with an additive mask (B or 1, 1, 1, L, T).
struct MaskedSoftmax {
    scale: f32,
    mask: Option<Tensor>,
    /// L: the query rows per (batch, kv head, rep) block.
    len: usize,
}

impl CustomOp1 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> R<(CpuStorage, Shape)> {
        let s = input(storage, layout, "softmax input")?;
        let dims = layout.shape().dims();
        let (Some(&b), Some(&t)) = (dims.first(), dims.last()) else {
            bail!("softmax: empty shape");
        };
        if t == 0 || self.len == 0 {
            return out(Vec::new(), layout.shape().clone());
        }
        let rows = s.len() / t;
        let per_batch = rows / b.max(1);
        let mut y = vec![0f32; s.len()];
        let run = |m: Option<&[f32]>, y: &mut [f32]| -> R<()> {
            let mb = m.map_or(0, |m| m.len() / (self.len * t));
            if m.is_some() && mb != 1 && mb != b {
                bail!("softmax: a mask for {mb} rows, scores for {b}");
            }
            y.par_chunks_exact_mut(t)
                .zip(s.par_chunks_exact(t))
                .enumerate()
                .with_min_len(MIN_ROWS)
                .for_each(|(r, (yr, sr))| {
                    let mrow = m.map(|m| {
                        let bb = if mb == 1 { 0 } else { r / per_batch };
                        let o = (bb * self.len + r % self.len) * t;
                        &m[o..o + t]
                    });
                    for (j, (yv, sv)) in yr.iter_mut().zip(sr).enumerate() {
                        *yv = sv * self.scale + mrow.map_or(0.0, |m| m[j]);
                    }
                    softmax_in_place(yr);
                });
            Ok(())
        };
        match &self.mask {
            Some(m) => read(m, |m| run(Some(m), &mut y))?,
            None => run(None, &mut y)?,
        }
        out(y, layout.shape().clone())
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> R<Option<Tensor>> {
        let t = arg.dim(candle_core::D::Minus1)?;
        let ds = read(res, |y| {
            read(grad, |g| {
                let mut ds = vec![0f32; y.len()];
                ds.par_chunks_exact_mut(t)
                    .zip(y.par_chunks_exact(t).zip(g.par_chunks_exact(t)))
                    .with_min_len(MIN_ROWS)
                    .for_each(|(dr, (yr, gr))| {
                        let dot = yr.iter().zip(gr).map(|(y, g)| y * g).sum::<f32>();
                        for ((d, y), g) in dr.iter_mut().zip(yr).zip(gr) {
                            *d = self.scale * y * (g - dot);
                        }
                    });
                Ok(ds)
            })
        })?;
        Ok(Some(Tensor::from_vec(ds, arg.shape(), arg.device())?))
    }
}

/// Softmax of one row, in place (shifted by its maximum).
fn softmax_in_place(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// Attention probabilities `softmax(scale * scores + mask)`; `len` is the
/// number of query positions (the mask's second-to-last dimension).
pub fn masked_softmax(scores: &Tensor, mask: Option<&Tensor>, scale: f64, len: usize) -> R<Tensor> {
    scores.contiguous()?.apply_op1(MaskedSoftmax {
        scale: scale as f32,
        mask: mask.map(Tensor::detach),
        len,
    })
}

// ------------------------------------------------- attention for decoding

/// Attention of a few new query positions over a KV cache, for inference
/// (no autograd): `q` (B, heads, L, hd) contiguous; `k`, `v` (B, kv_heads,
/// T, hd) views with unit stride along hd (a cache's first T positions);
/// `mask` (B or 1, 1, 1, L, T) additive. Returns (B, heads, L, hd).
///
/// With one or a few query rows per sequence, candle's batched matmul runs
/// two tiny gemm calls per (sequence, kv head) and the softmax ops allocate
/// five score arrays; here each query row is one pass over its keys and
/// values, sequences split across threads.
pub fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> R<Tensor> {
    let (b, h, l, hd) = q.dims4()?;
    let (kb, kvh, t, khd) = k.dims4()?;
    if kb != b || khd != hd || v.dims4()? != (b, kvh, t, hd) || kvh == 0 || h % kvh != 0 {
        bail!(
            "decode attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    let rep = h / kvh;
    let scale = scale as f32;
    let view = |x: &Tensor| -> R<(usize, [usize; 3])> {
        let st = x.layout().stride();
        if st[3] != 1 {
            bail!("decode attention: keys and values need unit stride along head_dim");
        }
        Ok((x.layout().start_offset(), [st[0], st[1], st[2]]))
    };
    let (ko, ks) = view(k)?;
    let (vo, vs) = view(v)?;
    let (k_store, _) = k.storage_and_layout();
    let (v_store, _) = v.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) = (&*k_store, &*v_store) else {
        bail!("decode attention: f32 CPU keys and values expected");
    };
    let last = |o: usize, s: [usize; 3]| o + (b - 1) * s[0] + (kvh - 1) * s[1] + (t - 1) * s[2] + hd;
    if b > 0 && t > 0 && (last(ko, ks) > kd.len() || last(vo, vs) > vd.len()) {
        bail!("decode attention: a key or value view runs past its storage");
    }
    let qc = q.contiguous()?;
    let (q_store, q_layout) = qc.storage_and_layout();
    let Storage::Cpu(qcpu) = &*q_store else {
        bail!("decode attention: CPU queries expected");
    };
    let qs = input(qcpu, q_layout, "decode attention queries")?;
    let mut y = vec![0f32; b * h * l * hd];
    let mut run = |m: Option<&[f32]>| -> R<()> {
        let mb = m.map_or(0, |m| m.len() / (l * t).max(1));
        if m.is_some() && mb != 1 && mb != b {
            bail!("decode attention: a mask for {mb} rows, {b} sequences");
        }
        y.par_chunks_mut(h * l * hd).enumerate().for_each(|(bb, yb)| {
            let mut p = vec![0f32; t];
            for hh in 0..h {
                let g = hh / rep;
                let kbase = ko + bb * ks[0] + g * ks[1];
                let vbase = vo + bb * vs[0] + g * vs[1];
                for i in 0..l {
                    let qo = ((bb * h + hh) * l + i) * hd;
                    let qv = &qs[qo..qo + hd];
                    let mrow = m.map(|m| {
                        let o = ((if mb == 1 { 0 } else { bb }) * l + i) * t;
                        &m[o..o + t]
                    });
                    for (j, pj) in p.iter_mut().enumerate() {
                        let kv = &kd[kbase + j * ks[2]..kbase + j * ks[2] + hd];
                        *pj = dot(qv, kv) * scale + mrow.map_or(0.0, |m| m[j]);
                    }
                    softmax_in_place(&mut p);
                    let yo = (hh * l + i) * hd;
                    let out = &mut yb[yo..yo + hd];
                    for (j, pj) in p.iter().enumerate() {
                        let vv = &vd[vbase + j * vs[2]..vbase + j * vs[2] + hd];
                        for (o, v) in out.iter_mut().zip(vv) {
                            *o += pj * v;
                        }
                    }
                }
            }
        });
        Ok(())
    };
    match mask {
        Some(m) => read(m, |m| run(Some(m)))?,
        None => run(None)?,
    }
    Tensor::from_vec(y, (b, h, l, hd), q.device())
}

/// A dot product in 16 independent lanes (vectorizes; head_dim is 64 or 128).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

// ------------------------------------------------------------- SwiGLU

/// `silu(gate) * up`.
struct SiluMul;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, us: &CpuStorage, ul: &Layout) -> R<(CpuStorage, Shape)> {
        let g = input(gs, gl, "silu-mul gate")?;
        let u = input(us, ul, "silu-mul up")?;
        if g.len() != u.len() {
            bail!("silu-mul: gate {} and up {} elements", g.len(), u.len());
        }
        let y = g
            .par_iter()
            .zip(u)
            .with_min_len(4096)
            .map(|(g, u)| g * sigmoid(*g) * u)
            .collect();
        out(y, gl.shape().clone())
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> R<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = read(gate, |g| {
            read(up, |u| {
                read(grad, |d| {
                    let mut dg = vec![0f32; g.len()];
                    let mut du = vec![0f32; g.len()];
                    dg.par_iter_mut()
                        .zip(du.par_iter_mut())
                        .enumerate()
                        .with_min_len(4096)
                        .for_each(|(i, (dg, du))| {
                            let sg = sigmoid(g[i]);
                            *du = d[i] * g[i] * sg;
                            *dg = d[i] * u[i] * sg * (1.0 + g[i] * (1.0 - sg));
                        });
                    Ok((dg, du))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dg, gate.shape(), gate.device())?),
            Some(Tensor::from_vec(du, up.shape(), up.device())?),
        ))
    }
}

/// The SwiGLU activation `silu(gate) * up`.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> R<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::max_abs_diff as diff;
    use crate::model;

    fn randn(shape: &[usize], seed: u64) -> Var {
        let mut rng = crate::rng::Rng::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Forward values and the gradient of `sum(y * probe)` agree between a
    /// fused op and its composition.
    fn check(x: &Var, fused: impl Fn(&Tensor) -> Tensor, composed: impl Fn(&Tensor) -> Tensor, tol: f32) {
        let yf = fused(x.as_tensor());
        let yc = composed(x.as_tensor());
        assert!(diff(&yf, &yc) < tol, "values differ by {}", diff(&yf, &yc));
        let probe = randn(yf.dims(), 99).as_tensor().detach();
        let gf = (yf * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gc = (yc * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gc) = (gf.get(x.as_tensor()).unwrap(), gc.get(x.as_tensor()).unwrap());
        assert!(diff(gf, gc) < tol, "gradients differ by {}", diff(gf, gc));
        assert!(gf.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
    }

    #[test]
    fn rms_norm_matches_composed_ops() {
        let x = randn(&[7, 16], 1);
        let w = randn(&[16], 2).as_tensor().detach();
        check(
            &x,
            |x| rms_norm(x, &w, 1e-5).unwrap(),
            |x| model::rms_norm_composed(x, &w, 1e-5).unwrap(),
            1e-5,
        );
    }

    #[test]
    fn masked_softmax_matches_composed_ops() {
        // (B=2, kv=2, rep*L = 3*4, T=5) scores with a per-batch (2,1,1,4,5) mask.
        let s = randn(&[2, 2, 12, 5], 3);
        let mut m = vec![0f32; 2 * 4 * 5];
        for (i, v) in m.iter_mut().enumerate() {
            if (i * 7) % 5 == 0 {
                *v = -1e9;
            }
        }
        let mask = Tensor::from_vec(m, (2, 1, 1, 4, 5), &Device::Cpu).unwrap();
        let composed = |s: &Tensor, mask: &Tensor, scale: f64| {
            let s = (s * scale)
                .unwrap()
                .reshape((2, 2, 3, 4, 5))
                .unwrap()
                .broadcast_add(mask)
                .unwrap();
            model::softmax(&s).unwrap().reshape((2, 2, 12, 5)).unwrap()
        };
        // A mask per batch row, then one mask for every batch row, then none.
        let one = mask.narrow(0, 1, 1).unwrap().contiguous().unwrap();
        for (m, scale) in [(&mask, 0.125), (&one, 0.5)] {
            check(
                &s,
                |s| masked_softmax(s, Some(m), scale, 4).unwrap(),
                |s| composed(s, m, scale),
                1e-6,
            );
        }
        check(
            &s,
            |s| masked_softmax(s, None, 1.0, 4).unwrap(),
            |s| model::softmax(s).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn silu_mul_matches_composed_ops() {
        let g = randn(&[6, 10], 4);
        let u = randn(&[6, 10], 5);
        check(
            &g,
            |g| silu_mul(g, u.as_tensor()).unwrap(),
            |g| (g.silu().unwrap() * u.as_tensor()).unwrap(),
            1e-6,
        );
        check(
            &u,
            |u| silu_mul(g.as_tensor(), u).unwrap(),
            |u| (g.as_tensor().silu().unwrap() * u).unwrap(),
            1e-6,
        );
    }

    #[test]
    fn heads_match_gather_transpose_and_rope() {
        // Two sequences of 3 and 1 rows packed into 4 rows, laid out as (2, h, 3, hd).
        let (h, hd) = (2, 4);
        let x = randn(&[4, h * hd], 6);
        let gather = vec![0u32, 1, 2, 3, 0, 0];
        let scatter = vec![0u32, 1, 2, 3];
        let cos = randn(&[6, hd], 7).as_tensor().detach();
        let sin = randn(&[6, hd], 8).as_tensor().detach();
        let layout = HeadLayout {
            batch: 2,
            len: 3,
            head_dim: hd,
            gather: Some(Arc::new(gather.clone())),
            scatter: Some(Arc::new(scatter.clone())),
            cos: Arc::new(cos.flatten_all().unwrap().to_vec1().unwrap()),
            sin: Arc::new(sin.flatten_all().unwrap().to_vec1().unwrap()),
        };
        let gather_t = Tensor::new(gather.as_slice(), &Device::Cpu).unwrap();
        let scatter_t = Tensor::new(scatter.as_slice(), &Device::Cpu).unwrap();
        let heads = |x: &Tensor| {
            x.index_select(&gather_t, 0)
                .unwrap()
                .reshape((2, 3, h, hd))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let (c4, s4) = (cos.reshape((2, 1, 3, hd)).unwrap(), sin.reshape((2, 1, 3, hd)).unwrap());
        check(
            &x,
            |x| to_heads(x, h, &layout, true).unwrap(),
            |x| model::rope(&heads(x), &c4, &s4).unwrap(),
            1e-6,
        );
        check(&x, |x| to_heads(x, h, &layout, false).unwrap(), heads, 1e-6);
        let a = randn(&[2, h, 3, hd], 9);
        let back = |a: &Tensor| {
            a.transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((6, h * hd))
                .unwrap()
                .index_select(&scatter_t, 0)
                .unwrap()
        };
        check(&a, |a| from_heads(a, &layout).unwrap(), back, 1e-6);
    }

    #[test]
    fn decode_attention_matches_batched_matmuls_over_a_cache_view() {
        let (b, h, kvh, l, hd, cap, t) = (2, 6, 2, 3, 8, 10, 7);
        let q = randn(&[b, h, l, hd], 11).as_tensor().detach();
        let k = randn(&[b, kvh, cap, hd], 12).as_tensor().narrow(2, 0, t).unwrap();
        let v = randn(&[b, kvh, cap, hd], 13).as_tensor().narrow(2, 0, t).unwrap();
        let mut m = vec![0f32; b * l * t];
        for (i, x) in m.iter_mut().enumerate() {
            if i % 4 == 1 {
                *x = -1e9;
            }
        }
        let mask = Tensor::from_vec(m, (b, 1, 1, l, t), &Device::Cpu).unwrap();
        let composed = |mask: Option<&Tensor>| {
            let rep = h / kvh;
            let qg = q.reshape((b, kvh, rep * l, hd)).unwrap();
            let s = (qg.matmul(&k.t().unwrap()).unwrap() * 0.3)
                .unwrap()
                .reshape((b, kvh, rep, l, t))
                .unwrap();
            let s = match mask {
                Some(m) => s.broadcast_add(m).unwrap(),
                None => s,
            };
            let p = model::softmax(&s).unwrap().reshape((b, kvh, rep * l, t)).unwrap();
            p.matmul(&v).unwrap().reshape((b, h, l, hd)).unwrap()
        };
        for mask in [Some(&mask), None] {
            let got = decode_attention(&q, &k, &v, mask, 0.3).unwrap();
            assert!(
                diff(&got, &composed(mask)) < 1e-5,
                "differs by {}",
                diff(&got, &composed(mask))
            );
        }
    }
}
