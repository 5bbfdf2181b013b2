//! Generation on quantized weights: the frozen base's projections and LM
//! head kept in their GGUF quantization for inference, so a decode step
//! reads a quarter to a fifth of the f32 bytes. Training keeps the f32
//! weights (its backward needs them); LoRA adapters apply in f32 on top.
//!
//! Q4_1 and Q8_0 (SmolLM2's GGUF holds both; they are what a model whose
//! width is not a multiple of 256 gets, where the K-quants cannot be used)
//! run on kernels of Lathe's own, because candle 0.11's are slow for them:
//! its Q4_1 dot product is its scalar reference loop, and on AVX2 (no
//! VNNI) its Q8_0 matmul reads every weight row once per activation row; in
//! a profile of batch-32 decoding its Q8_0 LM head (a fifth of the
//! weights) took more time than all Q4_1 projections on the kernel below.
//! Every other GGUF quantization goes to candle's `QMatMul`.
//!
//! The kernels follow llama.cpp's Q4_1 x Q8_1 and Q8_0 x Q8_0 schemes: each
//! activation row is quantized to 8 bits per block of 32 (a scale and the
//! block's sum), so a block's dot product is `d_w * d_x * sum(q_w * q_x)`
//! (`+ m_w * sum(x)` for Q4_1), computed in integers, with the unpacked
//! weight block reused for four activation rows. Each row's result depends
//! on that row alone: a request decodes the same tokens whatever else
//! shares its batch.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};
use rayon::prelude::*;

use super::{EngineError, Result};

const QK: usize = 32;

/// One Q4_1 block as GGUF stores it: scale and minimum (f16), then 32
/// 4-bit values, element `j` in the low nibble of byte `j` and element
/// `j + 16` in its high nibble.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct BlockQ41 {
    dm: [u16; 2],
    qs: [u8; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ41>() == 20);

/// One block of a quantized activation row: `x ~ d * qs`, `s = d * sum(qs)`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct BlockQ8 {
    d: f32,
    s: f32,
    qs: [i8; QK],
}

impl BlockQ8 {
    const ZERO: BlockQ8 = BlockQ8 {
        d: 0.0,
        s: 0.0,
        qs: [0; QK],
    };
}

/// One Q8_0 block as GGUF stores it: scale (f16), then 32 signed bytes.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct BlockQ80 {
    d: u16,
    qs: [i8; QK],
}

const _: () = assert!(std::mem::size_of::<BlockQ80>() == 34);

/// A weight block type with a kernel here.
trait Block: Copy + Send + Sync + 'static {
    const BYTES: usize;
    fn parse(b: &[u8]) -> Self;
    fn dot<const N: usize>(kernel: Kernel, w: &[Self], acts: &[&[BlockQ8]; N], out: &mut [f32]);
}

impl Block for BlockQ41 {
    const BYTES: usize = 20;

    fn parse(b: &[u8]) -> Self {
        BlockQ41 {
            dm: [u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]])],
            qs: b[4..20].try_into().expect("16 bytes"),
        }
    }

    fn dot<const N: usize>(kernel: Kernel, w: &[Self], acts: &[&[BlockQ8]; N], out: &mut [f32]) {
        match kernel {
            Kernel::Scalar => {
                for (o, a) in out.iter_mut().zip(acts) {
                    *o = dot_scalar_q41(w, a);
                }
            }
            // SAFETY: `detect` saw AVX2, FMA and F16C on this CPU; the
            // lengths are checked inside.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::dot_q41::<N>(w, acts, out) },
        }
    }
}

impl Block for BlockQ80 {
    const BYTES: usize = 34;

    fn parse(b: &[u8]) -> Self {
        BlockQ80 {
            d: u16::from_le_bytes([b[0], b[1]]),
            qs: std::array::from_fn(|i| b[2 + i] as i8),
        }
    }

    fn dot<const N: usize>(kernel: Kernel, w: &[Self], acts: &[&[BlockQ8]; N], out: &mut [f32]) {
        match kernel {
            Kernel::Scalar => {
                for (o, a) in out.iter_mut().zip(acts) {
                    *o = dot_scalar_q80(w, a);
                }
            }
            // SAFETY: as for Q4_1.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { avx2::dot_q80::<N>(w, acts, out) },
        }
    }
}

/// A matrix of blocks, (rows, cols) row-major in blocks of 32 along a row.
#[derive(Clone)]
struct Blocks<B> {
    rows: usize,
    cols: usize,
    blocks: Vec<B>,
}

/// A frozen weight (out, in) in a quantized format, for inference.
#[derive(Clone)]
pub struct QuantWeight(Inner);

#[derive(Clone)]
enum Inner {
    Q4_1(Blocks<BlockQ41>),
    Q8_0(Blocks<BlockQ80>),
    Candle {
        matmul: QMatMul,
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
    },
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (rows, cols) = self.dims();
        write!(f, "QuantWeight({:?}, {rows}x{cols})", self.dtype())
    }
}

fn f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

impl QuantWeight {
    /// The quantized form of a GGUF tensor (out, in), its rows reordered by
    /// `row_order` (new row i = stored row `row_order[i]`) where given.
    /// None for unquantized tensors (F32, F16, BF16): there is nothing to gain.
    pub fn from_qtensor(q: &QTensor, row_order: Option<&[usize]>) -> Result<Option<Self>> {
        let dtype = q.dtype();
        if matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return Ok(None);
        }
        let (rows, cols) = q.shape().dims2()?;
        let block = dtype.block_size();
        if cols % block != 0 {
            return Err(EngineError::Load(format!(
                "a {dtype:?} tensor of {cols} columns is not whole blocks of {block}"
            )));
        }
        let row_bytes = cols / block * dtype.type_size();
        let data = q.data()?;
        if data.len() != rows * row_bytes {
            return Err(EngineError::Load(format!(
                "a {dtype:?} tensor ({rows}, {cols}) holds {} bytes, expected {}",
                data.len(),
                rows * row_bytes
            )));
        }
        let ordered: std::borrow::Cow<'_, [u8]> = match row_order {
            None => data,
            Some(order) => {
                if order.len() != rows || order.iter().any(|&r| r >= rows) {
                    return Err(EngineError::Load("row order does not fit the tensor".into()));
                }
                let mut out = Vec::with_capacity(data.len());
                for &r in order {
                    out.extend_from_slice(&data[r * row_bytes..(r + 1) * row_bytes]);
                }
                out.into()
            }
        };
        fn parse<B: Block>(data: &[u8], rows: usize, cols: usize) -> Blocks<B> {
            Blocks {
                rows,
                cols,
                blocks: data.chunks_exact(B::BYTES).map(B::parse).collect(),
            }
        }
        match dtype {
            GgmlDType::Q4_1 => return Ok(Some(QuantWeight(Inner::Q4_1(parse(&ordered, rows, cols))))),
            GgmlDType::Q8_0 => return Ok(Some(QuantWeight(Inner::Q8_0(parse(&ordered, rows, cols))))),
            _ => {}
        }
        let t = candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &ordered, vec![rows, cols], &q.device())?;
        Ok(Some(QuantWeight(Inner::Candle {
            matmul: QMatMul::from_qtensor(t)?,
            dtype,
            rows,
            cols,
        })))
    }

    /// (out, in).
    pub fn dims(&self) -> (usize, usize) {
        match &self.0 {
            Inner::Q4_1(b) => (b.rows, b.cols),
            Inner::Q8_0(b) => (b.rows, b.cols),
            Inner::Candle { rows, cols, .. } => (*rows, *cols),
        }
    }

    pub fn dtype(&self) -> GgmlDType {
        match &self.0 {
            Inner::Q4_1(_) => GgmlDType::Q4_1,
            Inner::Q8_0(_) => GgmlDType::Q8_0,
            Inner::Candle { dtype, .. } => *dtype,
        }
    }

    /// Bytes the weight holds.
    pub fn bytes(&self) -> usize {
        let (rows, cols) = self.dims();
        let dtype = self.dtype();
        rows * cols / dtype.block_size() * dtype.type_size()
    }

    /// `x @ w.T` for `x` (n, in) on the CPU: (n, out).
    pub fn matmul(&self, x: &Tensor) -> Result<Tensor> {
        let (n, inp) = x.dims2()?;
        let (out, cols) = self.dims();
        if inp != cols {
            return Err(EngineError::Data(format!(
                "({n}, {inp}) @ a quantized ({out}, {cols}) weight"
            )));
        }
        let host = || -> Result<Vec<f32>> { Ok(x.contiguous()?.flatten_all()?.to_vec1::<f32>()?) };
        let y = match &self.0 {
            Inner::Q4_1(b) => b.matmul(&host()?, n),
            Inner::Q8_0(b) => b.matmul(&host()?, n),
            Inner::Candle { matmul, .. } => return Ok(matmul.forward(&x.contiguous()?)?),
        };
        Ok(Tensor::from_vec(y, (n, out), x.device())?)
    }
}

/// Quantizes one row of `QK`-multiple length to 8-bit blocks.
fn quantize_row(x: &[f32], out: &mut [BlockQ8]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            let r = (v * id).round() as i32;
            *q = r as i8;
            sum += r;
        }
        // Scales rounded to f16 as ggml stores them, so the products are
        // llama.cpp's (its KV cache in f16 remains a difference).
        b.d = half::f16::from_f32(d).to_f32();
        b.s = half::f16::from_f32(d * sum as f32).to_f32();
    }
}

/// Output rows handled per task: enough tasks to balance the pool, few
/// enough that scheduling stays a small share of a decode step.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).max(16)
}

impl<B: Block> Blocks<B> {
    /// `x @ self.T` for `x` (n, cols) row-major: (n, rows) row-major.
    fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        let nb = self.cols / QK;
        let mut acts = vec![BlockQ8::ZERO; n * nb];
        for (row, out) in x.chunks_exact(self.cols).zip(acts.chunks_exact_mut(nb)) {
            quantize_row(row, out);
        }
        let kernel = Kernel::detect();
        // Each task owns a band of output rows (weight rows) for every
        // activation row: `yt` is (rows, n), transposed after when n > 1.
        let per = chunk_rows(self.rows);
        let mut yt = vec![0f32; self.rows * n];
        yt.par_chunks_mut(per * n).enumerate().for_each(|(c, band)| {
            let first = c * per;
            for (i, out) in band.chunks_exact_mut(n).enumerate() {
                let w = &self.blocks[(first + i) * nb..(first + i + 1) * nb];
                let act = |r: usize| &acts[r * nb..(r + 1) * nb];
                let mut r = 0;
                // Four activation rows per pass over the weight row (its
                // nibbles unpacked once), then the rest one by one.
                while r + 4 <= n {
                    B::dot::<4>(
                        kernel,
                        w,
                        &[act(r), act(r + 1), act(r + 2), act(r + 3)],
                        &mut out[r..r + 4],
                    );
                    r += 4;
                }
                while r < n {
                    B::dot::<1>(kernel, w, &[act(r)], &mut out[r..r + 1]);
                    r += 1;
                }
            }
        });
        if n == 1 {
            return yt;
        }
        let mut y = vec![0f32; n * self.rows];
        for (j, col) in yt.chunks_exact(n).enumerate() {
            for (r, v) in col.iter().enumerate() {
                y[r * self.rows + j] = *v;
            }
        }
        y
    }
}

#[derive(Clone, Copy)]
enum Kernel {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl Kernel {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            let avx2 = *AVX2.get_or_init(|| {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            });
            if avx2 {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }
}

fn dot_scalar_q41(w: &[BlockQ41], a: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let mut sum = 0i32;
        for j in 0..16 {
            sum += (wb.qs[j] & 0x0f) as i32 * ab.qs[j] as i32 + (wb.qs[j] >> 4) as i32 * ab.qs[j + 16] as i32;
        }
        acc += f16(wb.dm[0]) * ab.d * sum as f32 + f16(wb.dm[1]) * ab.s;
    }
    acc
}

fn dot_scalar_q80(w: &[BlockQ80], a: &[BlockQ8]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let sum: i32 = wb.qs.iter().zip(&ab.qs).map(|(&x, &y)| x as i32 * y as i32).sum();
        acc += f16(wb.d) * ab.d * sum as f32;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{BlockQ8, BlockQ41, BlockQ80};

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Q4_1 weights: see [`super::Block::dot`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q41<const N: usize>(w: &[BlockQ41], acts: &[&[BlockQ8]; N], out: &mut [f32]) {
        let nb = w.len();
        assert!(
            acts.iter().all(|a| a.len() == nb),
            "activation rows as long as the weight row"
        );
        assert_eq!(out.len(), N);
        let low = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut mins = [0f32; N];
        for (b, wb) in w.iter().enumerate() {
            // SAFETY: 16 bytes read from a [u8; 16]; 4 bytes from [u16; 2].
            let (q4, d, m) = unsafe {
                let raw = _mm_loadu_si128(wb.qs.as_ptr() as *const __m128i);
                let lo = _mm_and_si128(raw, low);
                let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(
                    std::ptr::read_unaligned(wb.dm.as_ptr() as *const i32),
                ));
                let d = _mm_cvtss_f32(dm);
                let m = _mm_cvtss_f32(_mm_movehdup_ps(dm));
                (_mm256_set_m128i(hi, lo), d, m)
            };
            for k in 0..N {
                let ab = &acts[k][b];
                // SAFETY: 32 bytes read from an [i8; 32].
                let a = unsafe { _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i) };
                // u8 (0..15) x i8 pairs summed into i16 (|.| <= 3810), then i32.
                let sum = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, a), ones);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * ab.d), acc[k]);
                mins[k] += m * ab.s;
            }
        }
        for k in 0..N {
            // SAFETY: same target features as this function.
            out[k] = unsafe { hsum(acc[k]) } + mins[k];
        }
    }

    /// Q8_0 weights: see [`super::Block::dot`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q80<const N: usize>(w: &[BlockQ80], acts: &[&[BlockQ8]; N], out: &mut [f32]) {
        let nb = w.len();
        assert!(
            acts.iter().all(|a| a.len() == nb),
            "activation rows as long as the weight row"
        );
        assert_eq!(out.len(), N);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, wb) in w.iter().enumerate() {
            // SAFETY: 32 bytes read from an [i8; 32].
            let q = unsafe { _mm256_loadu_si256(wb.qs.as_ptr() as *const __m256i) };
            // maddubs takes unsigned x signed: |w| against a with w's sign
            // (|.| <= 127, so a pair's sum fits i16).
            let abs = _mm256_sign_epi8(q, q);
            let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(wb.d as i32)));
            for k in 0..N {
                let ab = &acts[k][b];
                // SAFETY: 32 bytes read from an [i8; 32].
                let a = unsafe { _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i) };
                let sum = _mm256_madd_epi16(_mm256_maddubs_epi16(abs, _mm256_sign_epi8(a, q)), ones);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), _mm256_set1_ps(d * ab.d), acc[k]);
            }
        }
        for k in 0..N {
            // SAFETY: same target features as this function.
            out[k] = unsafe { hsum(acc[k]) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_q41(rows: usize, cols: usize, seed: u64) -> (QTensor, Tensor) {
        let mut rng = Rng::new(seed);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.next_f32() * 2.0 - 1.0).collect();
        let t = Tensor::from_vec(v, (rows, cols), &candle_core::Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q4_1).unwrap();
        let deq = q.dequantize(&candle_core::Device::Cpu).unwrap();
        (q, deq)
    }

    /// The largest magnitude in `t`.
    fn largest(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn random_x(n: usize, cols: usize, seed: u64) -> Tensor {
        let mut rng = Rng::new(seed);
        let v: Vec<f32> = (0..n * cols).map(|_| rng.next_f32() * 4.0 - 2.0).collect();
        Tensor::from_vec(v, (n, cols), &candle_core::Device::Cpu).unwrap()
    }

    #[test]
    fn q4_1_matmul_matches_the_dequantized_f32_product() {
        let (q, deq) = random_q41(100, 576, 1);
        let w = QuantWeight::from_qtensor(&q, None).unwrap().unwrap();
        assert!(matches!(w.0, Inner::Q4_1(_)));
        assert_eq!(w.bytes(), 100 * 576 / 32 * 20);
        for n in [1, 3, 4, 9] {
            let x = random_x(n, 576, 2 + n as u64);
            let got = w.matmul(&x).unwrap();
            let want = x.matmul(&deq.t().unwrap()).unwrap();
            // The activations' 8-bit rounding: relative error well under 1%
            // of the product's scale.
            let scale = largest(&want);
            let diff = crate::max_abs_diff(&got, &want);
            assert!(diff < 0.01 * scale, "n={n}: {diff} against a scale of {scale}");
        }
    }

    #[test]
    fn the_simd_kernel_agrees_with_the_scalar_one_and_candles_reference() {
        let (q, _) = random_q41(37, 1536, 3);
        let Inner::Q4_1(m) = QuantWeight::from_qtensor(&q, None).unwrap().unwrap().0 else {
            panic!("Q4_1")
        };
        let x = random_x(5, 1536, 4);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got = m.matmul(&xs, 5);
        let nb = 1536 / QK;
        for r in 0..5 {
            let mut a = vec![BlockQ8::ZERO; nb];
            quantize_row(&xs[r * 1536..(r + 1) * 1536], &mut a);
            for j in 0..37 {
                let want = dot_scalar_q41(&m.blocks[j * nb..(j + 1) * nb], &a);
                let g = got[r * 37 + j];
                assert!(
                    (g - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "({r}, {j}): {g} vs {want}"
                );
            }
        }
        // candle's own (scalar) Q4_1 x Q8_1 path computes the same scheme.
        let reference = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let got = Tensor::from_vec(got, (5, 37), &candle_core::Device::Cpu).unwrap();
        assert!(crate::max_abs_diff(&got, &reference) < 0.05);
    }

    #[test]
    fn each_row_is_computed_alone() {
        // A row's result is bitwise the same whatever shares its batch.
        let (q, _) = random_q41(64, 576, 5);
        let w = QuantWeight::from_qtensor(&q, None).unwrap().unwrap();
        let x = random_x(7, 576, 6);
        let all = w.matmul(&x).unwrap().to_vec2::<f32>().unwrap();
        for (r, row) in all.iter().enumerate() {
            let alone = w.matmul(&x.narrow(0, r, 1).unwrap()).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(&alone[0], row);
        }
    }

    #[test]
    fn rows_can_be_reordered_q8_0_has_its_kernel_and_other_types_go_to_candle() {
        let (q, _) = random_q41(8, 64, 7);
        let order = [7, 6, 5, 4, 3, 2, 1, 0];
        let w = QuantWeight::from_qtensor(&q, Some(&order)).unwrap().unwrap();
        let x = random_x(1, 64, 8);
        let got = w.matmul(&x).unwrap().to_vec2::<f32>().unwrap();
        let plain = QuantWeight::from_qtensor(&q, None).unwrap().unwrap();
        let want = plain.matmul(&x).unwrap().to_vec2::<f32>().unwrap();
        let reversed: Vec<f32> = want[0].iter().rev().copied().collect();
        assert_eq!(got[0], reversed);

        let (_, deq) = random_q41(40, 512, 9);
        let x = random_x(6, 512, 10);
        let want = x.matmul(&deq.t().unwrap()).unwrap();
        let scale = largest(&want);
        for (dtype, own) in [(GgmlDType::Q8_0, true), (GgmlDType::Q4K, false)] {
            let q = QTensor::quantize(&deq, dtype).unwrap();
            let w = QuantWeight::from_qtensor(&q, None).unwrap().unwrap();
            assert_eq!(w.dtype(), dtype);
            assert_eq!(matches!(w.0, Inner::Q8_0(_)), own, "{dtype:?}");
            // Q4_K re-quantizes the weights: a looser bound.
            let bound = if own { 0.01 } else { 0.1 };
            let diff = crate::max_abs_diff(&w.matmul(&x).unwrap(), &want);
            assert!(diff < bound * scale, "{dtype:?}: {diff} against {scale}");
        }
        if let Inner::Q8_0(m) = QuantWeight::from_qtensor(&QTensor::quantize(&deq, GgmlDType::Q8_0).unwrap(), None)
            .unwrap()
            .unwrap()
            .0
        {
            // The SIMD kernel and the scalar one agree.
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = m.matmul(&xs, 6);
            let mut a = vec![BlockQ8::ZERO; 16];
            quantize_row(&xs[..512], &mut a);
            for (j, g) in got.iter().take(40).enumerate() {
                let want = dot_scalar_q80(&m.blocks[j * 16..(j + 1) * 16], &a);
                assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0));
            }
        }
        let f = QTensor::quantize(&deq, GgmlDType::F32).unwrap();
        assert!(QuantWeight::from_qtensor(&f, None).unwrap().is_none());
    }
}
