//! The decoder forward pass (llama / qwen2) over a frozen base with an
//! optional LoRA adapter, built only from differentiable candle ops.
//!
//! candle's fused kernels (`softmax_last_dim`, `rms_norm`, `rope`) record no
//! backward pass, so gradients would silently stop at them. On the CPU the
//! norms, head layout and rotary embedding, attention softmax and SwiGLU
//! are this crate's own fused ops with a backward ([`super::fused`]); on
//! other devices they are composed from candle ops that have one. The
//! base's linear layers go through [`frozen_matmul`] (or, adapted and
//! training on the CPU, [`lora_linear`]), which compute no gradient for
//! the frozen weight.

use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};

use super::config::ModelConfig;
use super::frozen::{DropoutMask, frozen_matmul, lora_add, lora_infer, lora_linear};
use super::fused::{self, HeadLayout};
use super::lora::Adapter;
use super::quant::QuantWeight;
use super::weights::{Proj, QuantWeights, Weights};
use super::{EngineError, Result, rng::Rng};

const MASKED: f32 = -1e9;
/// Up to this many new positions per sequence, inference attends with
/// [`fused::decode_attention`] rather than batched matmuls.
const DECODE_ROWS: usize = 16;

/// A frozen base model: weights plus rotary tables.
pub struct BaseModel {
    pub config: ModelConfig,
    pub weights: Weights,
    cos: Tensor,
    sin: Tensor,
    pub device: Device,
    /// Decode steps on the CPU multiply by the quantized weights where the
    /// model has them (see [`crate::quant`]); off, by the f32 ones.
    pub quantized: bool,
}

/// Per-layer keys and values of the tokens seen so far, in buffers of
/// (B, kv_heads, capacity, head_dim) written in place: a decode step writes
/// its new keys and values and attends over a view of the first `len`
/// positions, instead of copying the whole cache into a longer tensor.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache that holds `capacity` positions before it has to grow.
    pub fn with_capacity(capacity: usize) -> Self {
        KvCache {
            capacity,
            ..Default::default()
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the batch rows in `idx` (rows that finished leave).
    pub fn retain_rows(&mut self, idx: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.index_select(idx, 0)?;
            *v = v.index_select(idx, 0)?;
        }
        Ok(())
    }

    /// Rows of the batch this cache holds (0 before the first step).
    pub fn rows(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .next()
            .and_then(|(k, _)| k.dim(0).ok())
            .unwrap_or(0)
    }

    /// Appends `other`'s rows to this batch (continuous batching: rows that
    /// were prefilled on their own join a running batch). The shorter side
    /// is padded on the left so that both end at the same position; returns
    /// the padding put before (this cache's rows, `other`'s rows). The
    /// result has room for `capacity` positions.
    pub fn join(&mut self, other: &KvCache, capacity: usize) -> Result<(usize, usize)> {
        if other.layers.len() != self.layers.len() && self.rows() > 0 {
            return Err(EngineError::Data("caches of different models cannot join".into()));
        }
        let mine = self.rows() > 0;
        let (l, p) = (if mine { self.len } else { 0 }, other.len);
        let t = l.max(p);
        let cap = capacity.max(t);
        let place = |src: &Tensor, len: usize| -> Result<Tensor> {
            let (b, kvh, _, hd) = src.dims4()?;
            let dst = Tensor::zeros((b, kvh, cap, hd), src.dtype(), src.device())?;
            dst.slice_set(&src.narrow(2, 0, len)?.contiguous()?, 2, t - len)?;
            Ok(dst)
        };
        let layers = other
            .layers
            .iter()
            .enumerate()
            .map(|(i, theirs)| -> Result<Option<(Tensor, Tensor)>> {
                let Some((ok, ov)) = theirs else {
                    return Ok(None);
                };
                let (nk, nv) = (place(ok, p)?, place(ov, p)?);
                match self.layers.get(i).and_then(Option::as_ref).filter(|_| mine) {
                    Some((sk, sv)) => Ok(Some((
                        Tensor::cat(&[&place(sk, l)?, &nk], 0)?,
                        Tensor::cat(&[&place(sv, l)?, &nv], 0)?,
                    ))),
                    None => Ok(Some((nk, nv))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        self.layers = layers;
        self.len = t;
        self.capacity = cap;
        Ok((t - l, t - p))
    }

    /// Drops the first `n` positions (every row's are padding by then).
    pub fn trim_front(&mut self, n: usize) -> Result<()> {
        let n = n.min(self.len);
        if n == 0 {
            return Ok(());
        }
        let keep = self.len - n;
        for (k, v) in self.layers.iter_mut().flatten() {
            let (b, kvh, cap, hd) = k.dims4()?;
            let nk = Tensor::zeros((b, kvh, cap, hd), k.dtype(), k.device())?;
            let nv = Tensor::zeros((b, kvh, cap, hd), v.dtype(), v.device())?;
            nk.slice_set(&k.narrow(2, n, keep)?.contiguous()?, 2, 0)?;
            nv.slice_set(&v.narrow(2, n, keep)?.contiguous()?, 2, 0)?;
            (*k, *v) = (nk, nv);
        }
        self.len = keep;
        Ok(())
    }

    /// Appends layer `i`'s new keys and values (B, kv_heads, L, head_dim) at
    /// position `past` and returns views of all `past + L` positions.
    fn append(&mut self, i: usize, past: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kvh, l, hd) = k.dims4()?;
        let need = past + l;
        let grow = match &self.layers[i] {
            Some((ck, _)) => ck.dim(2)? < need,
            None => true,
        };
        if grow {
            let cap = need.max(self.capacity).max(2 * past);
            let ck = Tensor::zeros((b, kvh, cap, hd), k.dtype(), k.device())?;
            let cv = Tensor::zeros((b, kvh, cap, hd), v.dtype(), v.device())?;
            if let Some((pk, pv)) = &self.layers[i] {
                ck.slice_set(&pk.narrow(2, 0, past)?.contiguous()?, 2, 0)?;
                cv.slice_set(&pv.narrow(2, 0, past)?.contiguous()?, 2, 0)?;
            }
            self.layers[i] = Some((ck, cv));
        }
        let (ck, cv) = self.layers[i].as_ref().expect("allocated above");
        ck.slice_set(k, 2, past)?;
        cv.slice_set(v, 2, past)?;
        if i + 1 == self.layers.len() {
            self.len = need;
        }
        Ok((ck.narrow(2, 0, need)?, cv.narrow(2, 0, need)?))
    }
}

/// Training-time state threaded through the forward pass.
pub struct TrainState<'a> {
    pub dropout: f32,
    pub rng: &'a mut Rng,
}

/// One forward call's inputs.
pub struct Input<'a> {
    /// (B, L) token ids.
    pub ids: &'a Tensor,
    /// B*L rotary positions, row-major.
    pub positions: &'a Tensor,
    /// Additive attention mask (B, 1, 1, L, T_past + L), or none for a
    /// plain causal mask over one unpadded sequence without cache.
    pub mask: Option<&'a Tensor>,
    /// Sequences packed into one row (B = 1, no cache), attended one by
    /// one; `mask` is then unused.
    pub segments: Option<&'a Segments>,
}

/// Sequences packed into one row for the linear layers, laid out as a
/// padded batch for attention only: attention then costs the sum of the
/// squared lengths instead of the square of their sum (and keeps that much
/// less for the backward pass), while no matmul outside attention computes
/// padding.
pub struct Segments {
    /// For each slot of the padded (B, L) layout, its packed row (padding
    /// points at row 0; it is masked as a key and dropped as a query).
    gather: Tensor,
    /// For each packed row, its slot in the padded layout.
    scatter: Tensor,
    /// (B, 1, 1, L, L): causal within each sequence, padding masked.
    mask: Tensor,
    /// `gather` and `scatter` on the host, for the fused CPU ops.
    gather_rows: Arc<Vec<u32>>,
    scatter_slots: Arc<Vec<u32>>,
    batch: usize,
    len: usize,
}

impl Segments {
    pub fn new(lengths: &[usize], device: &Device) -> Result<Self> {
        Self::build(lengths, |_, _, _| true, device)
    }

    /// Groups that share a prefix, each packed once: `groups[g]` is
    /// `(prefix, first, second)` token counts, laid out as the prefix, then
    /// the first continuation, then the second. Attention is causal, and the
    /// second continuation sees the prefix and itself, never the first: so
    /// each continuation is computed as if it followed the prefix alone
    /// (with positions restarting after the prefix, which the caller gives),
    /// while the prefix is computed once (DPO's prompt, shared by its
    /// preferred and non-preferred completion).
    pub fn forked(groups: &[(usize, usize, usize)], device: &Device) -> Result<Self> {
        let shared: Vec<(usize, Vec<usize>)> = groups.iter().map(|&(p, a, b)| (p, vec![a, b])).collect();
        Self::shared(&shared, device)
    }

    /// [`Segments::forked`] with any number of continuations: `groups[g]` is
    /// `(prefix, continuation lengths)`, laid out as the prefix, then each
    /// continuation in turn; each continuation sees the prefix and itself,
    /// never another (GRPO's prompt, shared by its group's completions).
    pub fn shared(groups: &[(usize, Vec<usize>)], device: &Device) -> Result<Self> {
        let lengths: Vec<usize> = groups.iter().map(|(p, c)| p + c.iter().sum::<usize>()).collect();
        // Per segment, each position's branch: 0 for the prefix, k + 1 for
        // continuation k.
        let branch: Vec<Vec<u32>> = groups
            .iter()
            .map(|(p, c)| {
                let mut b = vec![0u32; *p];
                for (k, &n) in c.iter().enumerate() {
                    b.extend(std::iter::repeat_n(k as u32 + 1, n));
                }
                b
            })
            .collect();
        Self::build(
            &lengths,
            |g, i, j| {
                let b = &branch[g];
                b[j] == 0 || b[j] == b[i]
            },
            device,
        )
    }

    /// `allowed(segment, i, j)`: whether token `i` of a segment may attend to
    /// its token `j <= i`.
    fn build(lengths: &[usize], allowed: impl Fn(usize, usize, usize) -> bool, device: &Device) -> Result<Self> {
        let batch = lengths.len();
        let len = lengths.iter().copied().max().unwrap_or(0);
        let mut gather = vec![0u32; batch * len];
        let mut scatter = Vec::with_capacity(lengths.iter().sum());
        let mut mask = vec![MASKED; batch * len * len];
        let mut row = 0u32;
        for (b, &n) in lengths.iter().enumerate() {
            for i in 0..n {
                gather[b * len + i] = row;
                scatter.push((b * len + i) as u32);
                row += 1;
            }
            for i in 0..len {
                for j in 0..n.min(i + 1) {
                    // Padding queries (i >= n) keep a causal row over the
                    // real keys, as before; they are dropped anyway.
                    if i >= n || allowed(b, i, j) {
                        mask[(b * len + i) * len + j] = 0.0;
                    }
                }
            }
        }
        let n = scatter.len();
        Ok(Self {
            gather: Tensor::from_slice(&gather, batch * len, device)?,
            scatter: Tensor::from_slice(&scatter, n, device)?,
            mask: Tensor::from_vec(mask, (batch, 1, 1, len, len), device)?,
            gather_rows: Arc::new(gather),
            scatter_slots: Arc::new(scatter),
            batch,
            len,
        })
    }
}

/// Sequences packed into one row, the tokens whose log-probabilities are
/// wanted, and where each is predicted from: what DPO and GRPO score.
pub struct PackedTargets {
    pub ids: Vec<u32>,
    /// One rotary position per id.
    pub positions: Vec<u32>,
    /// For target `i`, the packed row whose output predicts it.
    pub rows: Vec<u32>,
    pub targets: Vec<u32>,
}

impl PackedTargets {
    /// The log-probability of each target (logits divided by `temperature`)
    /// in one forward over the packed row attended by `segments`: a flat
    /// tensor, tracked for gradients when `train` is given. `what` names a
    /// sequence in the error when one is longer than the model's positions.
    pub fn logps(
        self,
        model: &BaseModel,
        adapter: Option<&Adapter>,
        segments: &Segments,
        temperature: f64,
        train: Option<TrainState<'_>>,
        what: &str,
    ) -> Result<Tensor> {
        let dev = &model.device;
        if self.positions.iter().any(|&x| x as usize >= model.max_positions()) {
            return Err(EngineError::Data(format!(
                "{what} is longer than the model's {} positions",
                model.max_positions()
            )));
        }
        let l = self.ids.len();
        let ids = Tensor::from_vec(self.ids, (1, l), dev)?;
        let positions = Tensor::from_vec(self.positions, l, dev)?;
        let track = train.is_some();
        let hidden = model.forward(
            &Input {
                ids: &ids,
                positions: &positions,
                mask: None,
                segments: Some(segments),
            },
            adapter,
            None,
            train,
        )?;
        let n = self.rows.len();
        let picked = hidden.index_select(&Tensor::from_vec(self.rows, n, dev)?, 0)?;
        let logits = model.logits(&picked, track)?;
        let logits = if temperature == 1.0 {
            logits
        } else {
            (logits / temperature)?
        };
        Ok(log_softmax(&logits)?
            .gather(&Tensor::from_vec(self.targets, (n, 1), dev)?, 1)?
            .flatten_all()?)
    }
}

impl BaseModel {
    pub fn new(config: ModelConfig, weights: Weights, device: Device) -> Result<Self> {
        crate::tune_allocator();
        let max_pos = config.max_position_embeddings.clamp(1, 32_768);
        let inv = config.inv_freq();
        let half = inv.len();
        let mut cos = Vec::with_capacity(max_pos * half * 2);
        let mut sin = Vec::with_capacity(max_pos * half * 2);
        for p in 0..max_pos {
            for _ in 0..2 {
                for f in &inv {
                    let a = p as f64 * f;
                    cos.push(a.cos() as f32);
                    sin.push(a.sin() as f32);
                }
            }
        }
        let cos = Tensor::from_vec(cos, (max_pos, half * 2), &device)?;
        let sin = Tensor::from_vec(sin, (max_pos, half * 2), &device)?;
        Ok(Self {
            quantized: weights.quant.is_some() && device.is_cpu(),
            config,
            weights,
            cos,
            sin,
            device,
        })
    }

    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    fn linear(
        &self,
        x: &Tensor,
        layer: usize,
        proj: Proj,
        adapter: Option<&Adapter>,
        train: &mut Option<TrainState<'_>>,
        generating: bool,
    ) -> Result<Tensor> {
        let lin = &self.weights.layers[layer].proj[proj as usize];
        let track = train.is_some();
        let pair = adapter.and_then(|ad| ad.pair(layer, proj));
        if let Some(q) = self.quant(|q| q.layers.get(layer)?.get(proj as usize)?.as_ref(), generating) {
            let mut y = q.matmul(x)?;
            if let Some((a, bm, scale)) = pair {
                y = lora_add(&y, x, a, bm, scale)?;
            }
            return Ok(match &lin.b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            });
        }
        if let Some((a, bm, scale)) = pair
            && x.device().is_cpu()
        {
            let y = match train.as_mut() {
                // Training: one autograd node per adapted projection.
                Some(t) => {
                    let mask = (t.dropout > 0.0).then(|| {
                        let keep = 1.0 - t.dropout;
                        DropoutMask::sample(x.elem_count(), keep, || t.rng.next_f32())
                    });
                    lora_linear(x, &lin.w, a, bm, scale, mask)?
                }
                None => lora_infer(x, &lin.w, a, bm, scale)?,
            };
            return Ok(match &lin.b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            });
        }
        let mut y = frozen_matmul(x, &lin.w, track)?;
        if let Some(b) = &lin.b {
            y = y.broadcast_add(b)?;
        }
        if let Some((a, bm, scale)) = pair {
            let xin = match train {
                Some(t) if t.dropout > 0.0 => {
                    let keep = 1.0 - t.dropout;
                    let n = x.elem_count();
                    let mask: Vec<f32> = (0..n)
                        .map(|_| if t.rng.next_f32() < keep { 1.0 / keep } else { 0.0 })
                        .collect();
                    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)?
                }
                _ => x.clone(),
            };
            let low = xin.matmul(&a.t()?)?;
            let delta = low.matmul(&bm.t()?)?;
            y = (y + (delta * scale)?)?;
        }
        Ok(y)
    }

    /// Runs the decoder; returns the final-normed hidden states (B*L, d).
    pub fn forward(
        &self,
        input: &Input<'_>,
        adapter: Option<&Adapter>,
        mut cache: Option<&mut KvCache>,
        mut train: Option<TrainState<'_>>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, l) = input.ids.dims2()?;
        let (h, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let rep = h / kvh;
        let flat_ids = input.ids.flatten_all()?;
        let mut x = self.weights.embed.index_select(&flat_ids, 0)?; // (B*L, d)
        // The attention layout: the input's own, or packed rows gathered
        // into a padded batch.
        let (ab, al) = match input.segments {
            Some(s) => {
                if b != 1 || cache.is_some() {
                    return Err(EngineError::Data("packed segments take one row and no cache".into()));
                }
                (s.batch, s.len)
            }
            None => (b, l),
        };
        let positions = match input.segments {
            Some(s) => input.positions.index_select(&s.gather, 0)?,
            None => input.positions.clone(),
        };
        let cos = self.cos.index_select(&positions, 0)?.reshape((ab, 1, al, hd))?;
        let sin = self.sin.index_select(&positions, 0)?.reshape((ab, 1, al, hd))?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let causal;
        let mask = match (input.segments, input.mask) {
            (Some(s), _) => Some(&s.mask),
            (None, Some(m)) => Some(m),
            (None, None) if l > 1 => {
                causal = causal_mask(l, past, &self.device)?;
                Some(&causal)
            }
            (None, None) => None,
        };
        let gather = |t: Tensor| -> Result<Tensor> {
            Ok(match input.segments {
                Some(s) => t.index_select(&s.gather, 0)?,
                None => t,
            })
        };
        if cache.is_some() && train.is_some() {
            return Err(EngineError::Data("a KV cache is for inference, not training".into()));
        }
        // Decode steps (one new token per row) read every weight for a few
        // rows: the quantized weights, a quarter of the bytes, are faster.
        // A prefill multiplies many rows, where f32 gemm computes faster
        // than the quantized kernels (measured: an eval's prompts prefilled
        // on the quantized kernels ran at half the items/s); it also keeps a
        // row's decoding independent of how many rows it was prefilled with.
        let generating = cache.is_some() && l == 1;
        if let Some(cache) = cache.as_deref_mut()
            && cache.layers.len() != c.num_layers
        {
            cache.layers = vec![None; c.num_layers];
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let track = train.is_some();
        // The fused CPU ops' view of the attention layout.
        let heads = if self.device.is_cpu() {
            let (ab_al, hd_) = (ab * al, hd);
            let host =
                |t: &Tensor| -> Result<Arc<Vec<f32>>> { Ok(Arc::new(t.reshape(ab_al * hd_)?.to_vec1::<f32>()?)) };
            Some(HeadLayout {
                batch: ab,
                len: al,
                head_dim: hd,
                gather: input.segments.map(|s| s.gather_rows.clone()),
                scatter: input.segments.map(|s| s.scatter_slots.clone()),
                cos: host(&cos)?,
                sin: host(&sin)?,
            })
        } else {
            None
        };
        let norm = |x: &Tensor, w: &Tensor| -> Result<Tensor> {
            match heads {
                Some(_) => Ok(fused::rms_norm(x, w, c.rms_norm_eps)?),
                None => rms_norm_composed(x, w, c.rms_norm_eps),
            }
        };
        for i in 0..c.num_layers {
            let lw = &self.weights.layers[i];
            let xn = norm(&x, &lw.input_norm)?;
            let q = self.linear(&xn, i, Proj::Q, adapter, &mut train, generating)?;
            let k = self.linear(&xn, i, Proj::K, adapter, &mut train, generating)?;
            let v = self.linear(&xn, i, Proj::V, adapter, &mut train, generating)?;
            let (q, mut k, mut v) = match &heads {
                Some(hl) => (
                    fused::to_heads(&q, h, hl, true)?,
                    fused::to_heads(&k, kvh, hl, true)?,
                    fused::to_heads(&v, kvh, hl, false)?,
                ),
                None => {
                    let q = gather(q)?.reshape((ab, al, h, hd))?.transpose(1, 2)?.contiguous()?;
                    let k = gather(k)?.reshape((ab, al, kvh, hd))?.transpose(1, 2)?.contiguous()?;
                    let v = gather(v)?.reshape((ab, al, kvh, hd))?.transpose(1, 2)?.contiguous()?;
                    (rope(&q, &cos, &sin)?, rope(&k, &cos, &sin)?, v)
                }
            };
            if !track {
                // Inference keeps no autograd history (an adapter's
                // variables would otherwise chain every step's graph
                // through the cache).
                k = k.detach();
                v = v.detach();
            }
            if let Some(cache) = cache.as_deref_mut() {
                (k, v) = cache.append(i, past, &k, &v)?;
            }
            let attn = if heads.is_some() && !track && al <= DECODE_ROWS {
                fused::decode_attention(&q, &k, &v, mask, scale)?
            } else {
                let t = k.dim(2)?;
                // Grouped-query attention without repeating K and V: the query
                // heads sharing a K/V head are stacked along the rows.
                let qg = q.reshape((ab, kvh, rep * al, hd))?;
                let scores = qg.matmul(&k.t()?)?;
                let probs = match &heads {
                    Some(_) => fused::masked_softmax(&scores, mask, scale, al)?,
                    None => {
                        let scores = (scores * scale)?.reshape((ab, kvh, rep, al, t))?;
                        let scores = match mask {
                            Some(m) => scores.broadcast_add(m)?,
                            None => scores,
                        };
                        softmax(&scores)?.reshape((ab, kvh, rep * al, t))?
                    }
                };
                let attn = probs.matmul(&v)?; // (B, kvh, rep*L, hd)
                attn.reshape((ab, h, al, hd))?
            };
            let attn = match &heads {
                Some(hl) => fused::from_heads(&attn, hl)?,
                None => {
                    let attn = attn.transpose(1, 2)?.contiguous()?.reshape((ab * al, h * hd))?;
                    match input.segments {
                        Some(s) => attn.index_select(&s.scatter, 0)?,
                        None => attn,
                    }
                }
            };
            let o = self.linear(&attn, i, Proj::O, adapter, &mut train, generating)?;
            x = (x + o)?;
            let xn = norm(&x, &lw.post_attention_norm)?;
            let gate = self.linear(&xn, i, Proj::Gate, adapter, &mut train, generating)?;
            let up = self.linear(&xn, i, Proj::Up, adapter, &mut train, generating)?;
            let act = match heads {
                Some(_) => fused::silu_mul(&gate, &up)?,
                None => (gate.silu()? * up)?,
            };
            let down = self.linear(&act, i, Proj::Down, adapter, &mut train, generating)?;
            x = (x + down)?;
            if !track {
                x = x.detach();
            }
        }
        norm(&x, &self.weights.norm)
    }

    /// Logits (N, vocab) for hidden rows (N, d), from the f32 weights (what
    /// training and its reference log-probabilities see).
    pub fn logits(&self, hidden: &Tensor, track: bool) -> Result<Tensor> {
        Ok(frozen_matmul(hidden, &self.weights.lm_head, track)?)
    }

    /// Logits for sampling: from the quantized LM head where generation
    /// uses one (see [`BaseModel::quantized`]).
    pub fn sampling_logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match self.quant(|q| q.lm_head.as_ref(), true) {
            Some(q) => q.matmul(hidden),
            None => self.logits(hidden, false),
        }
    }

    /// The quantized weight `pick` names, when `generating` (a KV-cached
    /// forward) may use one. Training and the log-probabilities it compares
    /// against (DPO's reference, GRPO's old policy) stay on the f32 weights.
    fn quant(
        &self,
        pick: impl FnOnce(&QuantWeights) -> Option<&QuantWeight>,
        generating: bool,
    ) -> Option<&QuantWeight> {
        if !generating || !self.quantized {
            return None;
        }
        self.weights.quant.as_deref().and_then(pick)
    }
}

/// Causal mask for `l` new tokens after `past` cached ones: (1,1,1,L,past+L).
pub fn causal_mask(l: usize, past: usize, device: &Device) -> Result<Tensor> {
    let t = past + l;
    let m: Vec<f32> = (0..l)
        .flat_map(|i| (0..t).map(move |j| if j <= past + i { 0.0 } else { MASKED }))
        .collect();
    Ok(Tensor::from_vec(m, (1, 1, 1, l, t), device)?)
}

/// Block-diagonal causal mask for sequences packed into one row:
/// `segments[i]` names the sequence token i belongs to.
pub fn packed_mask(segments: &[u32], device: &Device) -> Result<Tensor> {
    let l = segments.len();
    let m: Vec<f32> = (0..l)
        .flat_map(|i| {
            (0..l).map(move |j| {
                if j <= i && segments[j] == segments[i] {
                    0.0
                } else {
                    MASKED
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(m, (1, 1, 1, l, l), device)?)
}

/// Mask for a batch of left-padded rows with a cache: `valid[b][j]` says
/// whether key position j of row b is a real token.
pub fn padded_mask(valid: &[Vec<bool>], l: usize, device: &Device) -> Result<Tensor> {
    let b = valid.len();
    let t = valid.first().map(Vec::len).unwrap_or(0);
    let past = t - l;
    let mut m = Vec::with_capacity(b * l * t);
    for row in valid {
        for i in 0..l {
            for (j, ok) in row.iter().enumerate() {
                m.push(if *ok && j <= past + i { 0.0 } else { MASKED });
            }
        }
    }
    Ok(Tensor::from_vec(m, (b, 1, 1, l, t), device)?)
}

/// RMS norm from differentiable ops (candle's fused one has no backward).
pub fn rms_norm_composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension from differentiable ops.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// log-softmax over the last dimension.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Half-split rotary embedding (Hugging Face's `rotate_half`).
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Ids as a (1, n) u32 tensor and positions 0..n.
pub fn single(ids: &[u32], device: &Device) -> Result<(Tensor, Tensor)> {
    let t = Tensor::from_slice(ids, (1, ids.len()), device)?;
    let p: Vec<u32> = (0..ids.len() as u32).collect();
    Ok((t, Tensor::from_vec(p, ids.len(), device)?))
}

pub fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}
