//! `y = x · Wᵀ` for weights that stay in their file layout (quantized or not), over a thread pool.
//!
//! Q4_0, Q4_1 and Q8_0 weights, repacked at load ([`PackedMatrix`]), run on 8-bit activations
//! (`loops`' [`ActsQ8`], llama.cpp's `q8_1` numerics) with the kernels `peregrine-loops`
//! generates; f32, f16 and bf16 weights, repacked at load in their own type
//! ([`PackedFloatMatrix`]), run on f32 activations with `loops`' float kernels. Weights in their
//! file layout ([`Weights::Rows`], any type: K-quants, Q5_x, a quantized matrix kept for f32
//! numerics, or a float matrix not repacked) dequantize one row at a time into a per-thread
//! buffer and take f32 dot products: the model is never copied to f32 as a whole.
//!
//! Work is split over output features (weight rows), never over the reduction, so each output
//! value is computed by the same instructions whatever M, the thread count or the split.

use crate::lanes::dot16;
use crate::packed::{PackedMatrix, TILE_ROWS};
use crate::packed_float::PackedFloatMatrix;
use crate::pool::{chunk_range, ThreadPool};
use crate::{Error, Result};
use peregrine_formats::GgmlType;
use peregrine_loops::{ActsQ8, Isa};
use std::sync::Mutex;

/// A weight matrix of `n_rows` output features by `n_cols` inputs, in its GGML layout.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    ty: GgmlType,
    data: &'a [u8],
    n_rows: usize,
    n_cols: usize,
    row_bytes: usize,
    f32_activations: bool,
}

impl<'a> WeightMatrix<'a> {
    /// Marks the matrix for f32 activations (the reference numerics, slower). A matrix in its
    /// file layout always computes so; the mark tells loaders not to repack it for the 8-bit
    /// kernels ([`WeightMatrix::f32_activations`]).
    pub fn with_f32_activations(mut self) -> Self {
        self.f32_activations = true;
        self
    }
    /// Whether [`WeightMatrix::with_f32_activations`] marked this matrix.
    pub fn f32_activations(&self) -> bool {
        self.f32_activations
    }

    /// Wraps `data` (row-major GGML blocks) after checking its length against the shape.
    pub fn new(ty: GgmlType, data: &'a [u8], n_rows: usize, n_cols: usize) -> Result<Self> {
        let row_bytes = ty.row_bytes(n_cols as u64).map_err(|_| {
            Error::Shape(format!(
                "{n_cols} columns is not a whole number of {} blocks",
                ty.name()
            ))
        })? as usize;
        let want = row_bytes
            .checked_mul(n_rows)
            .ok_or_else(|| Error::Shape("matrix size overflows".into()))?;
        if data.len() != want {
            return Err(Error::Shape(format!(
                "{} matrix {n_rows}x{n_cols} needs {want} bytes, got {}",
                ty.name(),
                data.len()
            )));
        }
        Ok(Self {
            ty,
            data,
            n_rows,
            n_cols,
            row_bytes,
            f32_activations: false,
        })
    }
    /// Output features.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    /// Input features.
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }
    /// Storage type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    /// Bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        &self.data[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
}

/// Buffers reused across matmuls: quantized activations and per-thread dequantized rows.
pub struct MatmulScratch {
    acts: ActsQ8,
    row_bufs: Vec<Mutex<Vec<f32>>>,
    use_jit: bool,
}

impl MatmulScratch {
    /// Scratch for `n_threads` threads and rows of up to `max_cols` values.
    pub fn new(n_threads: usize, max_cols: usize) -> Self {
        Self::with_isa(n_threads, max_cols, true)
    }
    /// As [`MatmulScratch::new`], choosing the kernel path explicitly: `true` runs the kernels
    /// `loops` compiled for this CPU (where it has a code generator), `false` their portable
    /// twins. Results are the same bits either way.
    pub fn with_isa(n_threads: usize, max_cols: usize, use_jit: bool) -> Self {
        Self {
            acts: ActsQ8::default(),
            row_bufs: (0..n_threads.max(1))
                .map(|_| Mutex::new(vec![0f32; max_cols]))
                .collect(),
            use_jit: use_jit && Isa::detect() != Isa::Portable,
        }
    }
}

/// Weights as a matmul operand: repacked 16-row tiles, or rows in the file's layout.
#[derive(Clone, Copy)]
pub enum Weights<'a> {
    /// Repacked at load (Q4_0/Q4_1/Q8_0): the fast path, on 8-bit activations.
    Packed(&'a PackedMatrix),
    /// Repacked at load (f32/f16/bf16): the fast path for float weights, f32 activations.
    PackedFloat(&'a PackedFloatMatrix),
    /// In the file's layout: dequantized row by row, f32 dot products.
    Rows(WeightMatrix<'a>),
}

impl Weights<'_> {
    /// Output features.
    pub fn n_rows(&self) -> usize {
        match self {
            Weights::Packed(p) => p.n_rows(),
            Weights::PackedFloat(p) => p.n_rows(),
            Weights::Rows(w) => w.n_rows,
        }
    }
    /// Input features.
    pub fn n_cols(&self) -> usize {
        match self {
            Weights::Packed(p) => p.n_cols(),
            Weights::PackedFloat(p) => p.n_cols(),
            Weights::Rows(w) => w.n_cols,
        }
    }
}

/// One output of a fused matmul: `out` (`m × w.n_rows()`, row-major) receives `x · wᵀ`.
pub struct MatmulTarget<'w, 'o> {
    /// The weights.
    pub w: Weights<'w>,
    /// The destination, `m * w.n_rows()` values.
    pub out: &'o mut [f32],
}

/// Output pointers shared with the workers; each writes a disjoint set of columns.
struct OutPtr {
    ptr: *mut f32,
    n_rows: usize,
}
// SAFETY: workers write disjoint (token, row) cells, chosen by a static split of rows.
unsafe impl Sync for OutPtr {}
// SAFETY: as above.
unsafe impl Send for OutPtr {}

/// How a matmul's output rows are cut into pool chunks: big chunks first (each starts a new
/// stream of weights from memory, which costs a cache-miss latency, so fewer is better), then
/// small ones at the end, so that the threads finish together. The cut depends only on the row
/// count and the thread count, and every row's result is the same whatever the cut.
#[derive(Clone, Copy, Debug)]
struct ChunkPlan {
    total: usize,
    big: usize,
    n_big: usize,
    small: usize,
}

impl ChunkPlan {
    /// Rows of a big chunk (at most) and of a small one, and rows left for small chunks per
    /// thread. Multiples of the 16-row tile.
    const BIG_ROWS: usize = 256;
    const SMALL_ROWS: usize = 32;
    const TAIL_ROWS_PER_THREAD: usize = 128;

    fn new(total: usize, n_threads: usize) -> Self {
        if n_threads <= 1 {
            return Self {
                total,
                big: Self::BIG_ROWS,
                n_big: total.div_ceil(Self::BIG_ROWS),
                small: Self::SMALL_ROWS,
            };
        }
        let tail = (n_threads * Self::TAIL_ROWS_PER_THREAD).min(total);
        let head = total - tail;
        // Big chunks of equal size (at most BIG_ROWS), a multiple of 16 rows, covering `head`.
        let n_big = head.div_ceil(Self::BIG_ROWS);
        let big = if n_big == 0 {
            Self::BIG_ROWS
        } else {
            head.div_ceil(n_big).div_ceil(TILE_ROWS) * TILE_ROWS
        };
        Self {
            total,
            big,
            n_big: head.div_ceil(big),
            small: Self::SMALL_ROWS,
        }
    }

    fn n_chunks(&self) -> usize {
        let head = (self.n_big * self.big).min(self.total);
        self.n_big + (self.total - head).div_ceil(self.small)
    }

    fn range(&self, chunk: usize) -> std::ops::Range<usize> {
        if chunk < self.n_big {
            return chunk_range(self.total, self.big, chunk);
        }
        let head = (self.n_big * self.big).min(self.total);
        let start = (head + (chunk - self.n_big) * self.small).min(self.total);
        start..(start + self.small).min(self.total)
    }
}

/// Computes every target's `out = x · wᵀ` in one pool job (e.g. Q, K and V together).
///
/// `x` holds `m` rows of `k` values; every target's weights have `k` columns.
pub fn matmul(
    pool: &ThreadPool,
    scratch: &mut MatmulScratch,
    x: &[f32],
    m: usize,
    targets: &mut [MatmulTarget<'_, '_>],
) -> Result<()> {
    let k = targets.first().map_or(0, |t| t.w.n_cols());
    if x.len() != m * k {
        return Err(Error::Shape(format!(
            "matmul: x has {} values, expected {m}x{k}",
            x.len()
        )));
    }
    for t in targets.iter() {
        if t.w.n_cols() != k || t.out.len() != m * t.w.n_rows() {
            return Err(Error::Shape(format!(
                "matmul: weights {}x{} and output of {} values do not fit x of {m}x{k}",
                t.w.n_rows(),
                t.w.n_cols(),
                t.out.len()
            )));
        }
        if matches!(t.w, Weights::Rows(_)) && k > scratch.row_bufs[0].lock().map_or(0, |b| b.len())
        {
            return Err(Error::Shape(format!(
                "matmul: {k} columns exceed the scratch row buffer"
            )));
        }
    }
    if targets.iter().any(|t| matches!(t.w, Weights::Packed(_))) {
        scratch
            .acts
            .quantize_into(x, m, k)
            .map_err(|e| Error::Shape(format!("matmul: {e}")))?;
    }
    let mut outs = [const { None::<(Weights<'_>, OutPtr)> }; 4];
    if targets.len() > outs.len() {
        return Err(Error::Shape(format!(
            "matmul: at most {} fused targets",
            outs.len()
        )));
    }
    for (slot, t) in outs.iter_mut().zip(targets.iter_mut()) {
        *slot = Some((
            t.w,
            OutPtr {
                ptr: t.out.as_mut_ptr(),
                n_rows: t.w.n_rows(),
            },
        ));
    }
    let outs = &outs[..targets.len()];
    let total_rows: usize = outs.iter().flatten().map(|(w, _)| w.n_rows()).sum();
    // Panels must not straddle chunks: every packed matrix starts at a multiple of 16 rows
    // (chunks are cut at multiples of 16, so a partial last panel is never cut either).
    let mut base = 0;
    for (w, _) in outs.iter().flatten() {
        if matches!(w, Weights::Packed(_) | Weights::PackedFloat(_)) && base % TILE_ROWS != 0 {
            return Err(Error::Shape(format!(
                "matmul: a packed matrix at row {base} of a fused call"
            )));
        }
        base += w.n_rows();
    }
    let scratch = &*scratch;
    let plan = ChunkPlan::new(total_rows, pool.n_threads());
    pool.run_chunks(plan.n_chunks(), |chunk, thread_idx| {
        let mine = plan.range(chunk);
        let mut base = 0;
        for (w, out) in outs.iter().flatten() {
            let lo = mine.start.max(base);
            let hi = mine.end.min(base + w.n_rows());
            if lo < hi {
                let rows = lo - base..hi - base;
                match w {
                    Weights::Packed(p) => compute_packed(scratch, p, out, m, rows),
                    Weights::PackedFloat(p) => compute_packed_float(scratch, p, out, x, m, rows),
                    Weights::Rows(w) => compute_rows(scratch, thread_idx, w, out, x, m, rows),
                }
            }
            base += w.n_rows();
        }
    });
    Ok(())
}

fn compute_packed(
    scratch: &MatmulScratch,
    p: &PackedMatrix,
    out: &OutPtr,
    m: usize,
    rows: std::ops::Range<usize>,
) {
    debug_assert!(rows.start.is_multiple_of(TILE_ROWS));
    debug_assert!(rows.end.is_multiple_of(TILE_ROWS) || rows.end == out.n_rows);
    debug_assert_eq!(scratch.acts.m(), m);
    // SAFETY: the output holds `m` rows of `n_rows` values, and the columns `rows` of it
    // belong to this chunk alone (the chunk plan never splits a panel).
    unsafe {
        p.panels_dot_into(
            rows.start / TILE_ROWS..rows.end.div_ceil(TILE_ROWS),
            &scratch.acts,
            scratch.use_jit,
            out.ptr,
        )
    };
}

fn compute_packed_float(
    scratch: &MatmulScratch,
    p: &PackedFloatMatrix,
    out: &OutPtr,
    x: &[f32],
    m: usize,
    rows: std::ops::Range<usize>,
) {
    debug_assert!(rows.start.is_multiple_of(TILE_ROWS));
    debug_assert!(rows.end.is_multiple_of(TILE_ROWS) || rows.end == out.n_rows);
    // SAFETY: as in `compute_packed`: `m` rows of `n_rows` values, and the columns `rows` of
    // them belong to this chunk alone.
    unsafe {
        p.panels_dot_into(
            rows.start / TILE_ROWS..rows.end.div_ceil(TILE_ROWS),
            x,
            m,
            scratch.use_jit,
            out.ptr,
        )
    };
}

fn compute_rows(
    scratch: &MatmulScratch,
    thread_idx: usize,
    w: &WeightMatrix<'_>,
    out: &OutPtr,
    x: &[f32],
    m: usize,
    rows: std::ops::Range<usize>,
) {
    let write = |t: usize, r: usize, v: f32| {
        debug_assert!(t < m && r < out.n_rows);
        // SAFETY: `t < m` and `r < n_rows`, so the cell is inside the `m * n_rows` output, and
        // only this thread owns row `r` (static split).
        unsafe { *out.ptr.add(t * out.n_rows + r) = v };
    };
    let mut buf = scratch.row_bufs[thread_idx]
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let k = w.n_cols;
    for r in rows {
        peregrine_formats::quant::dequantize_row(w.ty, w.row(r), &mut buf[..k])
            .expect("row length was validated by WeightMatrix::new");
        for t in 0..m {
            write(t, r, dot_f32(&buf[..k], &x[t * k..(t + 1) * k]));
        }
    }
}

/// [`dot16`] compiled with AVX-512 + FMA where the CPU has them (identical results either way).
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the features were just detected.
        return unsafe { dot_f32_avx512(a, b) };
    }
    dot16(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn dot_f32_avx512(a: &[f32], b: &[f32]) -> f32 {
    dot16(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plans_cover_every_row_once_in_whole_tiles() {
        for total in [16, 48, 64, 192, 576, 960, 1536, 3072, 49152, 50000] {
            for n_threads in 1..=4 {
                let plan = ChunkPlan::new(total, n_threads);
                let mut next = 0;
                for c in 0..plan.n_chunks() {
                    let r = plan.range(c);
                    assert_eq!(r.start, next, "{total} rows, {n_threads} threads: {plan:?}");
                    assert!(r.end > r.start && r.end - r.start <= ChunkPlan::BIG_ROWS);
                    assert!(r.start.is_multiple_of(TILE_ROWS));
                    next = r.end;
                }
                assert_eq!(next, total, "{total} rows, {n_threads} threads: {plan:?}");
            }
        }
    }
}
