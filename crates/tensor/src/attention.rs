//! Attention of new rows over an f16 KV cache, with causal or tree visibility.
//!
//! New row `i` of a sequence sees every committed row (`0..prefix_len`) and, among the new rows,
//! itself plus the rows its mask allows: all earlier ones (causal) or its tree ancestors. Keys are
//! visited in cache order and the masked ones are skipped, so a row sees the same keys in the
//! same order whether its ancestors are committed or new: results are batch invariant.
//!
//! Grouped-query attention: query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
//!
//! The loops come from `peregrine-loops`, JIT-compiled for AVX-512 or AVX2, or their portable
//! twins, which give the same bits: the scores `q·k` of a group's query heads over a run of
//! consecutive visible cache rows and the accumulation `out += p·v` over such a run
//! (`jit::attention`, per head dim, group and ISA), and between them the softmax numerators of
//! the group's score rows with their sums (`RowOp::Softmax`). This module keeps the
//! orchestration: the visible rows as runs (one for causal rows; the prefix, then runs of
//! consecutive ancestors for tree rows), the final `1 / sum` scaling, and the split over the
//! thread pool.

use crate::pool::{chunk_range, ThreadPool};
use crate::{Error, Result};
use half::f16;
use peregrine_loops::jit::attention::{pv_portable, scores_portable};
use peregrine_loops::kernel::portable::softmax_rows;
use peregrine_loops::{AttnDesc, AttnKernel, Isa, RowKernel, RowOp, RowOpDesc};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

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

/// Compiled kernels by (head dim, group): a few slots, each filled once, read lock-free. A
/// model has one attention shape (a draft head perhaps a second); past the slots, or if a
/// shape cannot be compiled, the portable twins run (same bits).
const KERNEL_SLOTS: usize = 4;

/// A compiled kernel and its (head dim, group); `None` if it could not be compiled.
type KernelSlot = ((usize, usize), Option<AttnKernel>);

/// Per-thread score buffers, sized for the longest context, and the attention kernels.
pub struct AttentionScratch {
    scores: Vec<Mutex<Vec<f32>>>,
    isa: Isa,
    scale: ScalePath,
    /// The JIT softmax (`None`: the portable twin).
    softmax: Option<RowKernel>,
    kernels: [OnceLock<KernelSlot>; KERNEL_SLOTS],
}

impl AttentionScratch {
    /// Buffers for `n_threads` threads and up to `max_ctx` visible keys, kernels for this CPU.
    pub fn new(n_threads: usize, max_ctx: usize) -> Self {
        Self::with_isa(n_threads, max_ctx, Isa::detect())
    }
    /// As [`AttentionScratch::new`] with the kernels' instruction set chosen
    /// ([`Isa::Portable`]: the portable twins); one this CPU lacks is lowered to the best it has.
    pub fn with_isa(n_threads: usize, max_ctx: usize, isa: Isa) -> Self {
        let isa = isa.min(Isa::detect());
        Self {
            scores: (0..n_threads.max(1))
                .map(|_| Mutex::new(vec![0f32; max_ctx * MAX_GROUP]))
                .collect(),
            isa,
            scale: ScalePath::for_isa(isa),
            softmax: (isa != Isa::Portable)
                .then(|| {
                    RowKernel::compile(&RowOpDesc {
                        op: RowOp::Softmax,
                        isa,
                    })
                    .ok()
                })
                .flatten(),
            kernels: [const { OnceLock::new() }; KERNEL_SLOTS],
        }
    }
    fn max_ctx(&self) -> usize {
        self.scores[0].lock().map_or(0, |s| s.len() / MAX_GROUP)
    }
    /// The kernel for heads of `head_dim` in groups of `group`, compiled on first use.
    fn kernel(&self, head_dim: usize, group: usize) -> Option<&AttnKernel> {
        for slot in &self.kernels {
            let (key, kernel) = slot.get_or_init(|| {
                let desc = AttnDesc {
                    head_dim,
                    group,
                    isa: self.isa,
                };
                ((head_dim, group), AttnKernel::compile(&desc).ok())
            });
            if *key == (head_dim, group) {
                return kernel.as_ref();
            }
        }
        None
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
    if n_kv_heads == 0 || n_heads % n_kv_heads != 0 || head_dim % 2 != 0 || head_dim == 0 {
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
    let kernel = scratch.kernel(head_dim, group);
    let failed = AtomicBool::new(false);
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
                let loops = Loops {
                    kernel,
                    softmax: scratch.softmax.as_ref(),
                    scale: scratch.scale,
                };
                if attend_group(&job, &mut scores, o, loops).is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
            }
            base += items;
        }
    });
    if failed.load(Ordering::Relaxed) {
        return Err(Error::Shape(
            "attention: a kernel refused its buffers (internal size error)".into(),
        ));
    }
    Ok(())
}

/// The cache rows new row `row` attends to, in cache order.
struct Keys<'a> {
    prefix_len: usize,
    row: usize,
    visibility: Visibility<'a>,
}

impl Keys<'_> {
    /// Calls `f(first_row, n_rows)` for each run of consecutive visible rows, in cache order:
    /// one run for a causal row; the committed prefix, then each run of consecutive visible
    /// new rows for a tree row.
    fn runs(&self, mut f: impl FnMut(usize, usize) -> Result<()>) -> Result<()> {
        match self.visibility {
            Visibility::Causal => f(0, self.prefix_len + self.row + 1),
            Visibility::Tree(m) => {
                if self.prefix_len > 0 {
                    f(0, self.prefix_len)?;
                }
                let upto = self.row + 1;
                let mut bits = m[self.row] & if upto >= 64 { !0 } else { (1u64 << upto) - 1 };
                while bits != 0 {
                    let start = bits.trailing_zeros() as usize;
                    let len = (!(bits >> start)).trailing_zeros() as usize;
                    f(self.prefix_len + start, len)?;
                    let end = start + len;
                    bits = if end >= 64 {
                        0
                    } else {
                        bits & !((1u64 << end) - 1)
                    };
                }
                Ok(())
            }
        }
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

/// The loops an item runs: the JIT kernels (`None`: the portable twins) and the build of the
/// final scaling.
#[derive(Clone, Copy)]
struct Loops<'k> {
    kernel: Option<&'k AttnKernel>,
    softmax: Option<&'k RowKernel>,
    scale: ScalePath,
}

/// Softmax attention of each query head of the group over the visible keys, in cache order.
/// Per head: scores in 16 lanes (`dot16`) times the scale, exponentials and their sum in a
/// fixed order, then `sum_j p_j v_j` accumulated key by key and scaled by `1 / sum_j p_j`. The
/// scores and the accumulation run per run of consecutive rows on the JIT kernels (each key and
/// value row converted from f16 once for the whole group); splitting into runs does not change
/// the bits (the accumulators pass through memory unchanged).
fn attend_group(
    job: &GroupJob<'_, '_>,
    scores: &mut [f32],
    out: &mut [f32],
    loops: Loops<'_>,
) -> Result<()> {
    let hd = job.head_dim;
    let group = job.q.len() / hd;
    let stride = scores.len() / MAX_GROUP;
    let at = |r: usize| r * job.row_kv + job.kv_off;
    let loop_err = |e: peregrine_loops::Error| Error::Shape(format!("attention: {e}"));
    let mut n = 0;
    job.keys.runs(|r0, len| {
        let (k, sc) = (&job.s.k[at(r0)..], &mut scores[n..]);
        match loops.kernel {
            Some(kern) => kern.scores(job.q, k, job.row_kv, len, job.scale, sc, stride),
            None => scores_portable(hd, job.q, k, job.row_kv, len, job.scale, sc, stride),
        }
        .map_err(loop_err)?;
        n += len;
        Ok(())
    })?;
    // Per head: scores become exp(s - max), summed in 16 lanes.
    let mut inv_sum = [0f32; MAX_GROUP];
    let sums = &mut inv_sum[..group];
    match loops.softmax {
        Some(k) => k
            .softmax_rows(scores, n, group, stride, sums)
            .map_err(loop_err)?,
        None => softmax_rows(scores, n, group, stride, sums),
    }
    for s in sums.iter_mut() {
        *s = 1.0 / *s;
    }
    out.fill(0.0);
    let mut i = 0;
    job.keys.runs(|r0, len| {
        let (v, p) = (&job.s.v[at(r0)..], &scores[i..]);
        match loops.kernel {
            Some(kern) => kern.pv(p, stride, v, job.row_kv, len, out),
            None => pv_portable(hd, p, stride, v, job.row_kv, len, out),
        }
        .map_err(loop_err)?;
        i += len;
        Ok(())
    })?;
    loops.scale.run(out, &inv_sum[..group]);
    Ok(())
}

/// How the final scaling by `1 / sum` is compiled: plain Rust, built for the baseline or with
/// AVX-512 / AVX2 enabled (the same operations; only the vector width differs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScalePath {
    Plain,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl ScalePath {
    fn for_isa(isa: Isa) -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if isa == Isa::Avx512 && has!("avx512f") && has!("fma") {
                return ScalePath::Avx512;
            }
            if isa >= Isa::Avx2 && has!("avx2") && has!("fma") {
                return ScalePath::Avx2;
            }
        }
        let _ = isa;
        ScalePath::Plain
    }

    /// For each head `g`: `out[g * hd..][..hd] *= inv_sum[g]`, `hd = out.len() / inv_sum.len()`.
    fn run(self, out: &mut [f32], inv_sum: &[f32]) {
        match self {
            ScalePath::Plain => scale_heads(out, inv_sum),
            // SAFETY: `for_isa` chose this path only after detecting AVX-512 F and FMA.
            #[cfg(target_arch = "x86_64")]
            ScalePath::Avx512 => unsafe { scale_heads_avx512(out, inv_sum) },
            // SAFETY: `for_isa` chose this path only after detecting AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            ScalePath::Avx2 => unsafe { scale_heads_avx2(out, inv_sum) },
        }
    }
}

/// [`scale_heads`] compiled with AVX-512.
///
/// # Safety
/// The CPU has AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,fma")]
unsafe fn scale_heads_avx512(out: &mut [f32], inv_sum: &[f32]) {
    scale_heads(out, inv_sum)
}

/// [`scale_heads`] compiled with AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn scale_heads_avx2(out: &mut [f32], inv_sum: &[f32]) {
    scale_heads(out, inv_sum)
}

#[inline(always)]
fn scale_heads(out: &mut [f32], inv_sum: &[f32]) {
    let hd = out.len() / inv_sum.len().max(1);
    for (o, &inv) in out.chunks_exact_mut(hd.max(1)).zip(inv_sum) {
        for x in o {
            *x *= inv;
        }
    }
}

/// The portable code this module ran before the JIT loops, kept in the tests to show the JIT
/// path gives the same bits. (The AVX-512 intrinsics it replaced gave these same bits: checked
/// by this module's tests until they were removed, over the shapes of
/// `same_bits_as_the_previous_kernels`.)
#[cfg(test)]
mod previous {
    use super::{GroupJob, Keys, Visibility, MAX_GROUP, MAX_HEAD_DIM};
    use crate::lanes::{dot16, exp_nonpositive, reduce16, LANES};
    use half::slice::HalfFloatSliceExt;

    /// `scores[i] = exp(scores[i] - max)`; returns their sum (16 lanes, fixed order).
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

    impl Keys<'_> {
        fn iter(&self) -> impl Iterator<Item = usize> + '_ {
            let new = (0..=self.row).filter(move |&j| match self.visibility {
                Visibility::Causal => true,
                Visibility::Tree(m) => m[self.row] >> j & 1 == 1,
            });
            (0..self.prefix_len).chain(new.map(move |j| self.prefix_len + j))
        }
    }

    pub(super) fn attend_group(job: &GroupJob<'_, '_>, scores: &mut [f32], out: &mut [f32]) {
        attend_group_portable(job, scores, out);
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
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            let pool = ThreadPool::new(2);
            let scratch = AttentionScratch::with_isa(2, 64, isa);
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
        for r in &results[1..] {
            assert_eq!(
                bits(&results[0]),
                bits(r),
                "portable and JIT paths differ: {n_heads}/{n_kv_heads} heads of {hd}, prefix {prefix}"
            );
        }
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

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    /// The previous portable kernel, item by item.
    fn previous_attention(shape: AttentionShape, seq: &AttentionSeq<'_>) -> Vec<f32> {
        let AttentionShape {
            n_heads,
            n_kv_heads,
            head_dim: hd,
        } = shape;
        let group = n_heads / n_kv_heads;
        let n_new = seq.n_new(&shape);
        let mut out = vec![0f32; seq.q.len()];
        let mut scores = vec![0f32; (seq.prefix_len + n_new) * MAX_GROUP];
        for row in 0..n_new {
            for kv_head in 0..n_kv_heads {
                let at = row * n_heads * hd + kv_head * group * hd;
                let keys = Keys {
                    prefix_len: seq.prefix_len,
                    row,
                    visibility: seq.visibility,
                };
                let job = GroupJob {
                    q: &seq.q[at..at + group * hd],
                    keys: &keys,
                    s: seq,
                    head_dim: hd,
                    row_kv: n_kv_heads * hd,
                    kv_off: kv_head * hd,
                    scale: 1.0 / (hd as f32).sqrt(),
                };
                previous::attend_group(&job, &mut scores, &mut out[at..at + group * hd]);
            }
        }
        out
    }

    /// The JIT loops (both ISAs) and the portable twins give the bits the previous kernels
    /// gave: decode rows, prefill rows and tree rows, prefixes around every key-block size,
    /// random trees, SmolLM2's and Llama 3's head shapes and some the intrinsics never took.
    #[test]
    fn same_bits_as_the_previous_kernels() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(41);
        let isas = [Isa::Portable, Isa::Avx2, Isa::Avx512];
        let scratches: Vec<AttentionScratch> = isas
            .iter()
            .map(|&i| AttentionScratch::with_isa(2, 700, i))
            .collect();
        let pool = ThreadPool::new(2);
        for (n_heads, n_kv_heads, hd) in [
            (9, 3, 64),
            (8, 2, 128),
            (4, 4, 64),
            (32, 8, 128),
            (6, 2, 32),
            (12, 2, 80),
            (3, 1, 64),
        ] {
            let shape = AttentionShape {
                n_heads,
                n_kv_heads,
                head_dim: hd,
            };
            let row_kv = n_kv_heads * hd;
            for (prefix, n_new, kind) in [
                (0, 1, 0),
                (1, 1, 0),
                (15, 1, 0),
                (16, 1, 0),
                (17, 1, 0),
                (100, 1, 0),
                (0, 37, 0),
                (5, 64, 0),
                (3, 8, 1),
                (40, 13, 1),
                (0, 64, 1),
                (123, 21, 1),
            ] {
                let n_rows = prefix + n_new;
                let k: Vec<f16> = (0..n_rows * row_kv)
                    .map(|_| f16::from_f32(rng.random_range(-2.0..2.0)))
                    .collect();
                let v: Vec<f16> = (0..n_rows * row_kv)
                    .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
                    .collect();
                let q: Vec<f32> = (0..n_new * n_heads * hd)
                    .map(|_| rng.random_range(-3.0..3.0))
                    .collect();
                // A random tree: each node's parent is an earlier node (node 0 is the root).
                let mut masks = vec![0u64; n_new];
                for i in 0..n_new {
                    masks[i] = 1 << i;
                    if i > 0 {
                        let parent = rng.random_range(0..i);
                        masks[i] |= masks[parent];
                    }
                }
                let visibility = if kind == 1 {
                    Visibility::Tree(&masks)
                } else {
                    Visibility::Causal
                };
                macro_rules! seq {
                    ($out:expr) => {
                        AttentionSeq {
                            q: &q,
                            k: &k,
                            v: &v,
                            prefix_len: prefix,
                            visibility,
                            out: $out,
                        }
                    };
                }
                let want = previous_attention(shape, &seq!(&mut []));
                for (isa, scratch) in isas.iter().zip(&scratches) {
                    let mut out = vec![0f32; q.len()];
                    attention(&pool, scratch, shape, &mut [seq!(&mut out)]).unwrap();
                    assert_eq!(
                        bits(&out),
                        bits(&want),
                        "{isa}: {n_heads}/{n_kv_heads} heads of {hd}, prefix {prefix}, {n_new} new, tree {kind}"
                    );
                }
            }
        }
    }
}
