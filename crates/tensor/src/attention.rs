//! Attention of new rows over an f16 KV cache, with causal or tree visibility.
//!
//! New row `i` of a sequence sees every committed row (`0..prefix_len`) and, among the new rows,
//! itself plus the rows its mask allows: all earlier ones (causal) or its tree ancestors. Keys are
//! visited in cache order and the masked ones are skipped, so a row sees the same keys in the
//! same order whether its ancestors are committed or new: results are batch invariant.
//!
//! Grouped-query attention: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.

use crate::lanes::{dot16, exp_nonpositive, reduce16, LANES};
use crate::pool::{chunk_range, ThreadPool};
use crate::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
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
                .map(|_| Mutex::new(vec![0f32; max_ctx * MAX_GROUP]))
                .collect(),
            use_avx512: use_avx512 && crate::qdot::avx512_available(),
        }
    }
    fn max_ctx(&self) -> usize {
        self.scores[0].lock().map_or(0, |s| s.len() / MAX_GROUP)
    }
}

/// (row, KV head) items per pool chunk.
const ITEMS_PER_CHUNK: usize = 2;
/// Most query heads per KV head (Llama 3 8B/70B: 4 and 8; SmolLM2: 3).
const MAX_GROUP: usize = 16;
/// Largest head dimension.
const MAX_HEAD_DIM: usize = 256;

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
    let group = n_heads / n_kv_heads;
    if group > MAX_GROUP || head_dim > MAX_HEAD_DIM {
        return Err(Error::Shape(format!(
            "attention: {group} query heads per KV head (max {MAX_GROUP}) of dim {head_dim} (max {MAX_HEAD_DIM})"
        )));
    }
    // One item = one new row and one KV head with all the query heads that share it, so each
    // key and value row is converted from f16 once per group rather than once per head.
    let total: usize = seqs.iter().map(|s| s.n_new(&shape) * n_kv_heads).sum();
    let scale = 1.0 / (head_dim as f32).sqrt();
    pool.run_chunks(total.div_ceil(ITEMS_PER_CHUNK), |chunk, thread_idx| {
        let mine = chunk_range(total, ITEMS_PER_CHUNK, chunk);
        let mut scores = scratch.scores[thread_idx]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut base = 0;
        for (s, out) in seqs.iter().zip(&out_ptrs) {
            let n_new = s.n_new(&shape);
            let items = n_new * n_kv_heads;
            let lo = mine.start.max(base);
            let hi = mine.end.min(base + items);
            for item in lo..hi {
                // KV-head major: a chunk's items are rows of one KV head, which share the
                // head's keys and values in the cache.
                let (kv_head, row) = ((item - base) / n_new, (item - base) % n_new);
                let at = row * row_q + kv_head * group * head_dim;
                let q = &s.q[at..at + group * head_dim];
                // SAFETY: (row, kv_head) is in range and its heads' outputs are owned by this
                // chunk alone.
                let o = unsafe { std::slice::from_raw_parts_mut(out.0.add(at), group * head_dim) };
                let keys = Keys {
                    prefix_len: s.prefix_len,
                    row,
                    visibility: s.visibility,
                };
                let job = GroupJob {
                    q,
                    keys: &keys,
                    s,
                    head_dim,
                    row_kv,
                    kv_off: kv_head * head_dim,
                    scale,
                };
                attend_group(&job, &mut scores, o, scratch.use_avx512);
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

/// One (row, KV head) item: the group's queries and where its keys and values live.
struct GroupJob<'j, 'a> {
    /// `group * head_dim` queries (the heads sharing this KV head, consecutive).
    q: &'j [f32],
    keys: &'j Keys<'a>,
    s: &'j AttentionSeq<'a>,
    head_dim: usize,
    row_kv: usize,
    kv_off: usize,
    scale: f32,
}

fn attend_group(job: &GroupJob<'_, '_>, scores: &mut [f32], out: &mut [f32], use_avx512: bool) {
    #[cfg(target_arch = "x86_64")]
    if use_avx512 {
        // `use_avx512` is set only after `avx512_available()` (AVX-512 F/VL, FMA, F16C), and
        // `NC * 16` is the head dimension, as the kernel requires.
        let group = job.q.len() / job.head_dim.max(1);
        macro_rules! go {
            ($g:literal, $nc:literal) => {
                // SAFETY: as above.
                return unsafe { avx512::attend_group::<$g, $nc>(job, scores, out) }
            };
        }
        match (group, job.head_dim) {
            (1, 64) => go!(1, 4),
            (2, 64) => go!(2, 4),
            (3, 64) => go!(3, 4),
            (4, 64) => go!(4, 4),
            (1, 128) => go!(1, 8),
            (2, 128) => go!(2, 8),
            (3, 128) => go!(3, 8),
            (4, 128) => go!(4, 8),
            _ => {}
        }
    }
    let _ = use_avx512;
    attend_group_portable(job, scores, out);
}

impl Keys<'_> {
    /// The visible keys in cache order: rows `0..n_contiguous`, then `listed[..n_listed]`
    /// (tree rows visible through the mask, at most 64). Returns `(n_contiguous, n_listed)`.
    fn visible(&self, listed: &mut [usize; 64]) -> (usize, usize) {
        match self.visibility {
            Visibility::Causal => (self.prefix_len + self.row + 1, 0),
            Visibility::Tree(m) => {
                let mut n = 0;
                for j in 0..=self.row {
                    if m[self.row] >> j & 1 == 1 {
                        listed[n] = self.prefix_len + j;
                        n += 1;
                    }
                }
                (self.prefix_len, n)
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{softmax_numerators, GroupJob, LANES, MAX_GROUP};
    use std::arch::x86_64::*;

    /// Folds 16 vectors at once, each as `lanes::reduce16` folds one (8+8, 4+4, 2+2, 1+1):
    /// lane `i` of the result is the fold of `v[i]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn reduce16x16(v: &[__m512; 16]) -> __m512 {
        // a[i] = v[i] + v[i + 8]: quarters (0,1) + (2,3), two vectors per result.
        let mut a = [_mm512_setzero_ps(); 8];
        for (j, aj) in a.iter_mut().enumerate() {
            let (x, y) = (v[2 * j], v[2 * j + 1]);
            let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y);
            let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(x, y);
            *aj = _mm512_add_ps(lo, hi);
        }
        // b[i] = a[i] + a[i + 4]: quarters (0,2) + (1,3); result quarters are v[4j..4j+4].
        let mut b = [_mm512_setzero_ps(); 4];
        for (j, bj) in b.iter_mut().enumerate() {
            let (x, y) = (a[2 * j], a[2 * j + 1]);
            let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(x, y);
            let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(x, y);
            *bj = _mm512_add_ps(lo, hi);
        }
        // c0 = b0 + b2, c1 = b1 + b3 within each quarter.
        let mut c = [_mm512_setzero_ps(); 2];
        for (j, cj) in c.iter_mut().enumerate() {
            let (x, y) = (b[2 * j], b[2 * j + 1]);
            let lo = _mm512_shuffle_ps::<0b01_00_01_00>(x, y);
            let hi = _mm512_shuffle_ps::<0b11_10_11_10>(x, y);
            *cj = _mm512_add_ps(lo, hi);
        }
        // c0 + c1; quarter q, slot s then holds vector 4s + q.
        let lo = _mm512_shuffle_ps::<0b10_00_10_00>(c[0], c[1]);
        let hi = _mm512_shuffle_ps::<0b11_01_11_01>(c[0], c[1]);
        let r = _mm512_add_ps(lo, hi);
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        _mm512_permutexvar_ps(idx, r)
    }

    /// 16 f16 values at `p` as f32.
    ///
    /// # Safety
    /// 32 bytes are readable at `p`.
    #[inline]
    #[target_feature(enable = "avx512f,f16c")]
    unsafe fn load_f16x16(p: *const half::f16) -> __m512 {
        // SAFETY: the caller guarantees 16 readable f16 values.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
    }

    /// The AVX-512 twin of `attend_group_portable`: the same operations in the same order
    /// (scores by 16-lane FMA chains folded as `reduce16`, the same softmax, values accumulated
    /// key by key), with keys and values converted from f16 in registers, the queries held in
    /// registers, and the score folds done 16 keys at a time. `G` query heads share the KV head;
    /// `NC * 16` is the head dimension.
    ///
    /// # Safety
    /// AVX-512 F/VL, FMA and F16C are present; `job.head_dim == 16 * NC` and
    /// `job.q.len() == G * job.head_dim`.
    #[target_feature(enable = "avx512f,avx512vl,fma,f16c")]
    pub unsafe fn attend_group<const G: usize, const NC: usize>(
        job: &GroupJob<'_, '_>,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let hd = job.head_dim;
        assert!(
            hd == NC * LANES && job.q.len() == G * hd && out.len() == G * hd && G <= MAX_GROUP,
            "attention: head shape"
        );
        let stride = scores.len() / MAX_GROUP;
        let mut listed = [0usize; 64];
        let (n_contiguous, n_listed) = job.keys.visible(&mut listed);
        let n_keys = n_contiguous + n_listed;
        let row_kv = job.row_kv;
        let n_rows = job.keys.prefix_len + job.keys.row + 1;
        // Every key row read below lies within the cache: the visible rows are below `n_rows`,
        // and `k`/`v` hold `n_rows` rows of `row_kv` with the head at `kv_off..kv_off + hd`.
        assert!(
            n_keys <= stride
                && job.s.k.len() >= n_rows * row_kv
                && job.s.v.len() >= n_rows * row_kv
                && job.kv_off + hd <= row_kv
                && listed[..n_listed].iter().all(|&r| r < n_rows)
                && n_contiguous <= n_rows,
            "attention: scratch or cache too small"
        );
        let k_base = job.s.k.as_ptr().wrapping_add(job.kv_off);
        let v_base = job.s.v.as_ptr().wrapping_add(job.kv_off);
        // Offset of the row of the `i`-th visible key (`i < n_keys`).
        let row_at = |i: usize| {
            let r = if i < n_contiguous {
                i
            } else {
                // SAFETY: `i - n_contiguous < n_listed <= 64`.
                unsafe { *listed.get_unchecked(i - n_contiguous) }
            };
            r * row_kv
        };
        let scale = _mm512_set1_ps(job.scale);
        let sc = scores.as_mut_ptr();

        // Scores: per key and head, a 16-lane FMA chain over the head's chunks, folded 16 keys
        // at a time.
        let mut q = [[_mm512_setzero_ps(); NC]; G];
        for (g, qg) in q.iter_mut().enumerate() {
            for (c, x) in qg.iter_mut().enumerate() {
                // SAFETY: `q` holds `G * hd` values.
                *x = unsafe { _mm512_loadu_ps(job.q.as_ptr().add(g * hd + 16 * c)) };
            }
        }
        let mut lanes = [[_mm512_setzero_ps(); 16]; G];
        let mut n0 = 0;
        while n0 < n_keys {
            let n_blk = (n_keys - n0).min(16);
            for s in 0..16 {
                if s >= n_blk {
                    for lg in lanes.iter_mut() {
                        lg[s] = _mm512_setzero_ps();
                    }
                    continue;
                }
                let kr = k_base.wrapping_add(row_at(n0 + s));
                let mut kv = [_mm512_setzero_ps(); NC];
                for (c, x) in kv.iter_mut().enumerate() {
                    // SAFETY: the row is within the cache (checked above).
                    *x = unsafe { load_f16x16(kr.add(16 * c)) };
                }
                for (lg, qg) in lanes.iter_mut().zip(&q) {
                    let mut acc = _mm512_setzero_ps();
                    for (&qv, &x) in qg.iter().zip(&kv) {
                        acc = _mm512_fmadd_ps(qv, x, acc);
                    }
                    lg[s] = acc;
                }
            }
            for (g, lg) in lanes.iter().enumerate() {
                let r = _mm512_mul_ps(reduce16x16(lg), scale);
                // SAFETY: `g * stride + n0 + n_blk <= g * stride + n_keys`, inside `scores`;
                // the mask stores exactly `n_blk` values.
                unsafe {
                    _mm512_mask_storeu_ps(sc.add(g * stride + n0), ((1u32 << n_blk) - 1) as u16, r)
                };
            }
            n0 += n_blk;
        }

        // Softmax numerators and their sums (the portable code, compiled here).
        let mut inv_sum = [0f32; G];
        for (g, inv) in inv_sum.iter_mut().enumerate() {
            let sg = &mut scores[g * stride..g * stride + n_keys];
            let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut chunks = sg.chunks_exact(16);
            for ch in &mut chunks {
                // SAFETY: 16 values.
                m = _mm512_max_ps(unsafe { _mm512_loadu_ps(ch.as_ptr()) }, m);
            }
            let mut max = _mm512_reduce_max_ps(m);
            for &v in chunks.remainder() {
                max = max.max(v);
            }
            *inv = 1.0 / softmax_numerators(sg, max);
        }

        // Values: out[g] = sum_i p[g][i] v_i, key by key, 64 dims at a time.
        let sc = scores.as_ptr();
        for d0 in (0..NC).step_by(4) {
            let nc = (NC - d0).min(4);
            let mut acc = [[_mm512_setzero_ps(); 4]; G];
            for i in 0..n_keys {
                let vr = v_base.wrapping_add(row_at(i) + 16 * d0);
                let mut vv = [_mm512_setzero_ps(); 4];
                for (c, x) in vv.iter_mut().enumerate().take(nc) {
                    // SAFETY: the row is within the cache (checked above).
                    *x = unsafe { load_f16x16(vr.add(16 * c)) };
                }
                for (g, ag) in acc.iter_mut().enumerate() {
                    // SAFETY: `g * stride + i < g * stride + n_keys`, inside `scores`.
                    let p = _mm512_set1_ps(unsafe { *sc.add(g * stride + i) });
                    for (a, &x) in ag.iter_mut().zip(&vv).take(nc) {
                        *a = _mm512_fmadd_ps(p, x, *a);
                    }
                }
            }
            for (g, ag) in acc.iter().enumerate() {
                let inv = _mm512_set1_ps(inv_sum[g]);
                for (c, &a) in ag.iter().enumerate().take(nc) {
                    // SAFETY: `g * hd + 16 * (d0 + c) + 16 <= G * hd = out.len()`.
                    unsafe {
                        _mm512_storeu_ps(
                            out.as_mut_ptr().add(g * hd + 16 * (d0 + c)),
                            _mm512_mul_ps(a, inv),
                        )
                    };
                }
            }
        }
    }
}

/// Softmax attention of each query head of the group over the visible keys, in cache order.
/// Per head: scores in 16 lanes (`dot16`), exponentials and their sum in a fixed order, then
/// `sum_j p_j v_j` accumulated key by key and scaled by `1 / sum_j p_j`. Each key and value row
/// is converted from f16 once for the whole group.
#[inline(always)]
fn attend_group_portable(job: &GroupJob<'_, '_>, scores: &mut [f32], out: &mut [f32]) {
    let hd = job.head_dim;
    let group = job.q.len() / hd;
    let stride = scores.len() / MAX_GROUP;
    let mut row_buf = [0f32; MAX_HEAD_DIM];
    let row = &mut row_buf[..hd];
    let mut n = 0;
    for r in job.keys.iter() {
        job.s.k[r * job.row_kv + job.kv_off..][..hd].convert_to_f32_slice(row);
        for g in 0..group {
            scores[g * stride + n] = dot16(&job.q[g * hd..(g + 1) * hd], row) * job.scale;
        }
        n += 1;
    }
    let mut inv_sum = [0f32; MAX_GROUP];
    for (g, inv) in inv_sum.iter_mut().enumerate().take(group) {
        let sc = &mut scores[g * stride..g * stride + n];
        let max = sc.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        *inv = 1.0 / softmax_numerators(sc, max);
    }
    out.fill(0.0);
    for (i, r) in job.keys.iter().enumerate() {
        job.s.v[r * job.row_kv + job.kv_off..][..hd].convert_to_f32_slice(row);
        for g in 0..group {
            let p = scores[g * stride + i];
            for (o, &v) in out[g * hd..(g + 1) * hd].iter_mut().zip(row.iter()) {
                *o = p.mul_add(v, *o);
            }
        }
    }
    for (g, &inv) in inv_sum.iter().enumerate().take(group) {
        for o in &mut out[g * hd..(g + 1) * hd] {
            *o *= inv;
        }
    }
}

/// `scores[i] = exp(scores[i] - max)`; returns their sum (16 lanes, fixed order).
#[inline(always)]
fn softmax_numerators(scores: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0f32; LANES];
    for chunk in scores.chunks_mut(LANES) {
        for (lane, sc) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *sc = exp_nonpositive(*sc - max);
            *lane += *sc;
        }
    }
    reduce16(&lanes)
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
        // (heads, KV heads, head dim, prefix): the portable fallback (head dim 32, groups of 5),
        // and the AVX-512 kernels (64, 128: one and two passes over the values) with key counts
        // below, at and past a 16-key fold, and groups of 1 to 4 heads.
        for (case, &(n_heads, n_kv_heads, hd, prefix)) in [
            (4, 2, 32, 5),
            (9, 3, 64, 5),
            (9, 3, 64, 12),
            (9, 3, 64, 37),
            (2, 2, 64, 16),
            (8, 2, 128, 29),
            (4, 2, 128, 3),
            (10, 2, 128, 29),
        ]
        .iter()
        .enumerate()
        {
            for tree in [true, false] {
                attention_case(case as u64, n_heads, n_kv_heads, hd, prefix, tree);
            }
        }
    }

    fn attention_case(
        seed: u64,
        n_heads: usize,
        n_kv_heads: usize,
        hd: usize,
        prefix: usize,
        tree: bool,
    ) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3 + seed);
        let shape = AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim: hd,
        };
        let n_new = 4;
        let row_kv = n_kv_heads * hd;
        let row_q = n_heads * hd;
        let group = n_heads / n_kv_heads;
        let k: Vec<f16> = (0..(prefix + n_new) * row_kv)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let v: Vec<f16> = (0..(prefix + n_new) * row_kv)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let q: Vec<f32> = (0..n_new * row_q)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        // Tree: 0 root; 1, 2 children of 0; 3 child of 2. Causal: each row sees all before it.
        let masks = if tree {
            [0b0001u64, 0b0011, 0b0101, 0b1101]
        } else {
            [0b0001u64, 0b0011, 0b0111, 0b1111]
        };
        let visibility = if tree {
            Visibility::Tree(&masks)
        } else {
            Visibility::Causal
        };
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
                visibility,
                out: &mut out,
            }];
            attention(&pool, &scratch, shape, &mut seqs).unwrap();
            results.push(out);
        }
        assert_eq!(
            results[0], results[1],
            "portable and AVX-512 paths differ: {n_heads}/{n_kv_heads} heads of {hd}, prefix {prefix}"
        );
        for (row, &mask) in masks.iter().enumerate() {
            let keys: Vec<usize> = (0..prefix)
                .chain(
                    (0..n_new)
                        .filter(|&j| mask >> j & 1 == 1)
                        .map(|j| prefix + j),
                )
                .collect();
            for head in 0..n_heads {
                let want = reference(
                    &q[row * row_q + head * hd..][..hd],
                    &keys,
                    &k,
                    &v,
                    row_kv,
                    (head / group) * hd,
                );
                for d in 0..hd {
                    assert!(
                        (results[0][row * row_q + head * hd + d] as f64 - want[d]).abs() < 1e-5
                    );
                }
            }
        }
    }
}
