//! Attention of new rows over an f16 KV cache, with causal or tree visibility.
//!
//! New row `i` of a sequence sees every committed row (`0..prefix_len`) and, among the new rows,
//! itself plus the rows its mask allows: all earlier ones (causal) or its tree ancestors. Keys are
//! visited in cache order and the masked ones are skipped, so a row sees the same keys in the
//! same order whether its ancestors are committed or new: results are batch invariant.
//!
//! Grouped-query attention: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.

use crate::lanes::{exp_nonpositive, reduce16, LANES};
use crate::pool::{chunk_range, ThreadPool};
use crate::{Error, Result};
use half::f16;
use std::sync::Mutex;

/// Which new rows a new row may attend to.
#[derive(Clone, Copy, Debug)]
pub enum Visibility<'a> {
    /// Row `i` sees new rows `0..=i`.
    Causal,
    /// Row `i` sees new row `j` when bit `j` of `masks[i]` is set (itself and its ancestors).
    Tree(&'a [u64]),
}

/// Head counts and size shared by every sequence of a call.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
}

/// One sequence's share of an attention call.
pub struct AttentionSeq<'a> {
    /// Queries of the new rows, `n_new * n_heads * head_dim`, already rotated.
    pub q: &'a [f32],
    /// This layer's key cache rows (`n_kv_heads * head_dim` each), holding at least
    /// `prefix_len + n_new` rows (the new rows' keys already written).
    pub k: &'a [f16],
    /// This layer's value cache rows, as `k`.
    pub v: &'a [f16],
    /// Committed rows before the new ones.
    pub prefix_len: usize,
    /// Who sees whom among the new rows.
    pub visibility: Visibility<'a>,
    /// Output, `n_new * n_heads * head_dim`.
    pub out: &'a mut [f32],
}

impl AttentionSeq<'_> {
    fn n_new(&self, shape: &AttentionShape) -> usize {
        self.q.len() / (shape.n_heads * shape.head_dim)
    }
}

/// Per-thread score buffers, sized for the longest context.
pub struct AttentionScratch {
    scores: Vec<Mutex<Vec<f32>>>,
    use_avx512: bool,
}

impl AttentionScratch {
    /// Buffers for `n_threads` threads and up to `max_ctx` visible keys.
    pub fn new(n_threads: usize, max_ctx: usize) -> Self {
        Self::with_isa(n_threads, max_ctx, crate::qdot::avx512_available())
    }
    /// As [`AttentionScratch::new`] with the kernel path chosen (`false` = portable).
    pub fn with_isa(n_threads: usize, max_ctx: usize, use_avx512: bool) -> Self {
        Self {
            scores: (0..n_threads.max(1))
                .map(|_| Mutex::new(vec![0f32; max_ctx]))
                .collect(),
            use_avx512: use_avx512 && crate::qdot::avx512_available(),
        }
    }
    fn max_ctx(&self) -> usize {
        self.scores[0].lock().map_or(0, |s| s.len())
    }
}

/// (row, head) items per pool chunk.
const ITEMS_PER_CHUNK: usize = 4;

/// Sequences one call can take.
pub const MAX_SEQS: usize = 64;

struct OutPtr(*mut f32);
// SAFETY: each (row, head) output slice is written by exactly one thread (static split).
unsafe impl Sync for OutPtr {}

/// Runs attention for every sequence, splitting (sequence, row, head) items over the pool.
pub fn attention(
    pool: &ThreadPool,
    scratch: &AttentionScratch,
    shape: AttentionShape,
    seqs: &mut [AttentionSeq<'_>],
) -> Result<()> {
    let AttentionShape {
        n_heads,
        n_kv_heads,
        head_dim,
    } = shape;
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 || head_dim % 2 != 0 {
        return Err(Error::Shape(format!(
            "attention: {n_heads} heads over {n_kv_heads} KV heads of {head_dim}"
        )));
    }
    let row_q = n_heads * head_dim;
    let row_kv = n_kv_heads * head_dim;
    for s in seqs.iter() {
        let n_new = s.n_new(&shape);
        let n_rows = s.prefix_len + n_new;
        if s.q.len() != n_new * row_q || s.out.len() != s.q.len() {
            return Err(Error::Shape("attention: q/out sizes disagree".into()));
        }
        if s.k.len() < n_rows * row_kv || s.v.len() < n_rows * row_kv {
            return Err(Error::Shape(format!(
                "attention: cache holds fewer than {n_rows} rows"
            )));
        }
        if n_rows > scratch.max_ctx() {
            return Err(Error::Shape(format!(
                "attention: {n_rows} keys exceed the context of {}",
                scratch.max_ctx()
            )));
        }
        if let Visibility::Tree(masks) = s.visibility {
            if masks.len() != n_new || n_new > 64 {
                return Err(Error::Shape(format!(
                    "attention: tree of {n_new} rows needs {n_new} masks (max 64)"
                )));
            }
        }
    }
    if seqs.len() > MAX_SEQS {
        return Err(Error::Shape(format!(
            "attention: at most {MAX_SEQS} sequences per call, got {}",
            seqs.len()
        )));
    }
    // A fixed array, not a Vec: the decode loop allocates nothing per token.
    let mut out_ptrs = [const { OutPtr(std::ptr::null_mut()) }; MAX_SEQS];
    for (p, s) in out_ptrs.iter_mut().zip(seqs.iter_mut()) {
        p.0 = s.out.as_mut_ptr();
    }
    let seqs = &*seqs;
    let total: usize = seqs.iter().map(|s| s.n_new(&shape) * n_heads).sum();
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f32).sqrt();
    pool.run_chunks(total.div_ceil(ITEMS_PER_CHUNK), |chunk, thread_idx| {
        let mine = chunk_range(total, ITEMS_PER_CHUNK, chunk);
        let mut scores = scratch.scores[thread_idx]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut base = 0;
        for (s, out) in seqs.iter().zip(&out_ptrs) {
            let items = s.n_new(&shape) * n_heads;
            let lo = mine.start.max(base);
            let hi = mine.end.min(base + items);
            for item in lo..hi {
                let (row, head) = ((item - base) / n_heads, (item - base) % n_heads);
                let q = &s.q[row * row_q + head * head_dim..][..head_dim];
                // SAFETY: (row, head) is in range and owned by this thread alone.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.0.add(row * row_q + head * head_dim),
                        head_dim,
                    )
                };
                let keys = Keys {
                    prefix_len: s.prefix_len,
                    row,
                    visibility: s.visibility,
                };
                let kv_off = (head / group) * head_dim;
                attend_one(
                    q,
                    &keys,
                    s,
                    row_kv,
                    kv_off,
                    scale,
                    &mut scores,
                    o,
                    scratch.use_avx512,
                );
            }
            base += items;
        }
    });
    Ok(())
}

/// The cache rows new row `row` attends to, in cache order.
struct Keys<'a> {
    prefix_len: usize,
    row: usize,
    visibility: Visibility<'a>,
}

impl Keys<'_> {
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let new = (0..=self.row).filter(move |&j| match self.visibility {
            Visibility::Causal => true,
            Visibility::Tree(m) => m[self.row] >> j & 1 == 1,
        });
        (0..self.prefix_len).chain(new.map(move |j| self.prefix_len + j))
    }
}

#[allow(clippy::too_many_arguments)]
fn attend_one(
    q: &[f32],
    keys: &Keys<'_>,
    s: &AttentionSeq<'_>,
    row_kv: usize,
    kv_off: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
    use_avx512: bool,
) {
    let hd = q.len();
    let fast = use_avx512 && hd.is_multiple_of(LANES);
    let mut n = 0;
    for r in keys.iter() {
        let k = &s.k[r * row_kv + kv_off..][..hd];
        scores[n] = dot_q_k(q, k, fast) * scale;
        n += 1;
    }
    let scores = &mut scores[..n];
    let max = scores.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let inv_sum = 1.0 / softmax_numerators(scores, max, fast);
    out.fill(0.0);
    for (&p, r) in scores.iter().zip(keys.iter()) {
        let v = &s.v[r * row_kv + kv_off..][..hd];
        accumulate_v(out, p, v, fast);
    }
    for o in out.iter_mut() {
        *o *= inv_sum;
    }
}

/// `scores[i] = exp(scores[i] - max)`; returns their sum (16 lanes, fixed order).
fn softmax_numerators(scores: &mut [f32], max: f32, fast: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` implies AVX-512 F and FMA were detected.
        return unsafe { softmax_numerators_avx512(scores, max) };
    }
    let _ = fast;
    softmax_numerators_portable(scores, max)
}

/// The same code compiled for AVX-512 so the exponentials vectorise (identical results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,fma")]
fn softmax_numerators_avx512(scores: &mut [f32], max: f32) -> f32 {
    softmax_numerators_portable(scores, max)
}

#[inline(always)]
fn softmax_numerators_portable(scores: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    for chunk in scores.chunks_mut(LANES) {
        for (lane, sc) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *sc = exp_nonpositive(*sc - max);
            *lane += *sc;
        }
    }
    reduce16(&lanes)
}

fn dot_q_k(q: &[f32], k: &[f16], fast: bool) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` implies AVX-512 F/VL, F16C and FMA were detected, and `len % 16 == 0`.
        return unsafe { avx512::dot_q_k(q, k) };
    }
    let _ = fast;
    let mut acc = [0f32; LANES];
    for (i, (&a, &b)) in q.iter().zip(k).enumerate() {
        acc[i % LANES] = a.mul_add(b.to_f32(), acc[i % LANES]);
    }
    reduce16(&acc)
}

fn accumulate_v(out: &mut [f32], p: f32, v: &[f16], fast: bool) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `dot_q_k`.
        unsafe { avx512::accumulate_v(out, p, v) };
        return;
    }
    let _ = fast;
    for (o, &b) in out.iter_mut().zip(v) {
        *o = p.mul_add(b.to_f32(), *o);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use half::f16;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512 F/DQ/VL, F16C, FMA present; `q.len() == k.len()`, a multiple of 16.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,f16c,fma")]
    pub unsafe fn dot_q_k(q: &[f32], k: &[f16]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        for c in 0..q.len() / 16 {
            // SAFETY: chunk `c` is within both slices (length a multiple of 16).
            let (qc, kc) = unsafe {
                (
                    _mm512_loadu_ps(q.as_ptr().add(16 * c)),
                    _mm256_loadu_si256(k.as_ptr().add(16 * c).cast()),
                )
            };
            acc = _mm512_fmadd_ps(qc, _mm512_cvtph_ps(kc), acc);
        }
        let a = _mm256_add_ps(
            _mm512_castps512_ps256(acc),
            _mm512_extractf32x8_ps::<1>(acc),
        );
        let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps::<1>(c, c)))
    }

    /// # Safety
    /// As [`dot_q_k`], with `out.len() == v.len()`.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,f16c,fma")]
    pub unsafe fn accumulate_v(out: &mut [f32], p: f32, v: &[f16]) {
        let pv = _mm512_set1_ps(p);
        for c in 0..out.len() / 16 {
            // SAFETY: chunk `c` is within both slices.
            unsafe {
                let o = out.as_mut_ptr().add(16 * c);
                let vc = _mm512_cvtph_ps(_mm256_loadu_si256(v.as_ptr().add(16 * c).cast()));
                _mm512_storeu_ps(o, _mm512_fmadd_ps(pv, vc, _mm512_loadu_ps(o)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Plain f64 softmax attention for one (row, head), over an explicit key list.
    fn reference(
        q: &[f32],
        keys: &[usize],
        k: &[f16],
        v: &[f16],
        stride: usize,
        off: usize,
    ) -> Vec<f64> {
        let hd = q.len();
        let sc: Vec<f64> = keys
            .iter()
            .map(|&r| {
                (0..hd)
                    .map(|d| q[d] as f64 * k[r * stride + off + d].to_f64())
                    .sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let max = sc.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = sc.iter().map(|s| (s - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                keys.iter()
                    .zip(&e)
                    .map(|(&r, p)| p * v[r * stride + off + d].to_f64())
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    #[test]
    fn tree_attention_matches_reference_and_paths_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let shape = AttentionShape {
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 32,
        };
        let (prefix, n_new) = (5, 4);
        let row_kv = 64;
        let k: Vec<f16> = (0..(prefix + n_new) * row_kv)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let v: Vec<f16> = (0..(prefix + n_new) * row_kv)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let q: Vec<f32> = (0..n_new * 128)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        // Tree: 0 root; 1, 2 children of 0; 3 child of 2.
        let masks = [0b0001u64, 0b0011, 0b0101, 0b1101];
        let mut results = Vec::new();
        for avx in [false, true] {
            let pool = ThreadPool::new(2);
            let scratch = AttentionScratch::with_isa(2, 64, avx);
            let mut out = vec![0f32; q.len()];
            let mut seqs = [AttentionSeq {
                q: &q,
                k: &k,
                v: &v,
                prefix_len: prefix,
                visibility: Visibility::Tree(&masks),
                out: &mut out,
            }];
            attention(&pool, &scratch, shape, &mut seqs).unwrap();
            results.push(out);
        }
        assert_eq!(results[0], results[1], "portable and AVX-512 paths differ");
        for (row, &mask) in masks.iter().enumerate() {
            let keys: Vec<usize> = (0..prefix)
                .chain(
                    (0..n_new)
                        .filter(|&j| mask >> j & 1 == 1)
                        .map(|j| prefix + j),
                )
                .collect();
            for head in 0..4 {
                let want = reference(
                    &q[row * 128 + head * 32..][..32],
                    &keys,
                    &k,
                    &v,
                    row_kv,
                    (head / 2) * 32,
                );
                for d in 0..32 {
                    assert!((results[0][row * 128 + head * 32 + d] as f64 - want[d]).abs() < 1e-5);
                }
            }
        }
    }
}
