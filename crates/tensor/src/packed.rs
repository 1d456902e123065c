//! Weights repacked once at load into the layout of `peregrine-loops`' quantized matmul, with
//! the kernel that `loops` compiled for their shape.
//!
//! The layout ([`peregrine_loops::PackedWeights`]) is panels of 16 rows: per 32-weight block,
//! 16 f16 scales, (Q4_1) 16 f16 mins, then the codes in groups of four bytes per row, so one
//! VNNI `vpdpbusd` against four broadcast activation bytes advances all 16 rows. The bytes are
//! as many as the file's, so memory does not grow.
//!
//! Per activation row and weight row the arithmetic is, block by block in order:
//! `acc = fma(float(sumi), d_w * d_x, acc)` and (Q4_1) `accm = fma(m_w, s_x, accm)`, then
//! `out = acc + accm`, with an exact integer `sumi`. No output depends on the other rows of its
//! batch, the panel split or the code path (JIT or portable): the same bits everywhere.

use crate::qdot::QuantKind;
use peregrine_loops::jit::qgemm::qgemm_panel_portable;
use peregrine_loops::{ActsQ8, Isa, KernelCache, PackedWeights, QGemmDesc, QGemmKernel};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// Rows per panel: the unit in which work is split.
pub const TILE_ROWS: usize = 16;

/// A quantized matrix in `loops`' panel layout, with its compiled kernel.
pub struct PackedMatrix {
    kind: QuantKind,
    weights: PackedWeights,
    /// `None` where `loops` has no code generator for this CPU (the portable twin runs).
    kernel: Option<Arc<QGemmKernel>>,
}

/// Kernels by shape, shared by every matrix of the process: a model has a handful of distinct
/// shapes, and compiling once per shape keeps loading fast. Used at load only.
fn kernel_cache() -> &'static KernelCache {
    static CACHE: OnceLock<KernelCache> = OnceLock::new();
    CACHE.get_or_init(KernelCache::new)
}

/// The engine's register tile: one 16-row panel by up to 8 activation rows (for Q4_1, 8
/// accumulators, 8 offset accumulators and 8 integer sums fill the 32 zmm registers), so any
/// chunk of whole panels can be run and each panel is streamed from memory once per M <= 8.
fn engine_desc(
    kind: QuantKind,
    n: usize,
    k: usize,
    isa: Isa,
) -> peregrine_loops::Result<QGemmDesc> {
    // One 16-row panel per group, tiles of up to 8 activation rows (AVX-512: 32 zmm) or
    // fewer on AVX2 (16 ymm, two halves per panel, plus offsets for Q4_1).
    let m_tile = match isa {
        Isa::Avx512 => 8,
        _ if kind == QuantKind::Q4_1 => 1,
        _ => 2,
    };
    let reg = if m_tile > 1 { " m/1:reg" } else { "" };
    let schedule = format!("n/16 m/{m_tile} kb/1{reg} n/1:vec");
    let mut desc = QGemmDesc::from_schedule_text(kind.quant_type(), 8, n, k, isa, &schedule)?;
    // Prefetch the next panel while computing this one: a whole panel of lead time (the M = 8
    // tile computes long enough on each panel to hide a memory stream behind it).
    desc.prefetch_blocks = Some(k / 32);
    Ok(desc)
}

impl PackedMatrix {
    /// Repacks `n_rows` GGML rows (`row(r)` gives row `r`'s blocks) and gets the kernel for
    /// the shape. `n_cols % 32 == 0`; `n_rows` need not be a multiple of 16 (the last panel is
    /// then partial).
    ///
    /// # Panics
    /// On shapes that are not whole blocks or rows of the wrong length (loaders check these).
    pub fn pack<'a>(
        kind: QuantKind,
        n_rows: usize,
        n_cols: usize,
        row: impl Fn(usize) -> &'a [u8],
    ) -> Self {
        let weights = PackedWeights::pack_rows(kind.quant_type(), n_rows, n_cols, row)
            .unwrap_or_else(|e| panic!("PackedMatrix::pack {n_rows}x{n_cols}: {e}"));
        let isa = Isa::detect();
        let kernel = match isa {
            Isa::Portable => None,
            _ => {
                match engine_desc(kind, n_rows, n_cols, isa).and_then(|d| kernel_cache().qgemm(&d))
                {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::warn!(
                            "no quantized matmul kernel for {n_rows}x{n_cols} ({e}); portable path"
                        );
                        None
                    }
                }
            }
        };
        Self {
            kind,
            weights,
            kernel,
        }
    }

    /// Output features.
    pub fn n_rows(&self) -> usize {
        self.weights.n()
    }
    /// Input features.
    pub fn n_cols(&self) -> usize {
        self.weights.k()
    }
    /// Block type.
    pub fn kind(&self) -> QuantKind {
        self.kind
    }
    /// Bytes held.
    pub fn len_bytes(&self) -> usize {
        self.weights.len_bytes()
    }
    /// Whether a compiled kernel (rather than the portable twin) runs this matrix.
    pub fn has_kernel(&self) -> bool {
        self.kernel.is_some()
    }

    /// Every activation row's dot products with the rows of panels `panels`, written straight
    /// into a row-major output: `out[t * n_rows + r] = row r · acts row t` for the rows `r` of
    /// those panels and `t < acts.m()`. With `use_jit`, the compiled kernel runs; else (or if
    /// there is none) the portable twin, with the same bits.
    ///
    /// # Safety
    /// `out` is valid for writes of `acts.m() * n_rows` values, and nothing else accesses the
    /// columns of `panels` during the call.
    ///
    /// # Panics
    /// If `acts` does not have `n_cols` columns or `panels` is out of range.
    pub unsafe fn panels_dot_into(
        &self,
        panels: Range<usize>,
        acts: &ActsQ8,
        use_jit: bool,
        out: *mut f32,
    ) {
        let n = self.n_rows();
        if let (true, Some(kernel)) = (use_jit, &self.kernel) {
            // SAFETY: the caller vouches for `out` and the columns of `panels`.
            unsafe { kernel.run_panels(&self.weights, acts, out, panels) }
                .unwrap_or_else(|e| panic!("PackedMatrix::panels_dot_into: {e}"));
            return;
        }
        // SAFETY: the caller vouches for `out` and the columns of `panels`.
        unsafe {
            panels_portable(n, acts.m(), panels, out, |t, p, res| {
                qgemm_panel_portable(&self.weights, acts, t, p, res)
                    .unwrap_or_else(|e| panic!("PackedMatrix::panels_dot_into: {e}"))
            })
        }
    }
}

/// Runs a portable per-panel twin for every activation row `t < m` and panel of `panels`
/// (`panel(t, p, res)` fills the 16 outputs of panel `p` for row `t`) and writes each result
/// into its cells of a row-major `m x n` output: only those cells, never a `&mut` over the
/// whole output, which other threads are writing elsewhere.
///
/// # Safety
/// `out` is valid for writes of `m * n` values, and nothing else accesses the columns of
/// `panels` during the call.
pub(crate) unsafe fn panels_portable(
    n: usize,
    m: usize,
    panels: Range<usize>,
    out: *mut f32,
    mut panel: impl FnMut(usize, usize, &mut [f32; TILE_ROWS]),
) {
    let mut res = [0f32; TILE_ROWS];
    for p in panels {
        let cols = p * TILE_ROWS..((p + 1) * TILE_ROWS).min(n);
        for t in 0..m {
            panel(t, p, &mut res);
            // SAFETY: the caller vouches for these cells of row `t`.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(out.add(t * n + cols.start), cols.len()) };
            dst.copy_from_slice(&res[..cols.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use rand::{Rng, SeedableRng};

    fn random_rows(kind: QuantKind, n_rows: usize, k: usize, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let bb = kind.block_bytes();
        let mut rows = vec![0u8; n_rows * k / 32 * bb];
        rng.fill(&mut rows[..]);
        for blk in rows.chunks_mut(bb) {
            blk[..2].copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
            if kind == QuantKind::Q4_1 {
                blk[2..4]
                    .copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
            }
        }
        rows
    }

    /// The f32 dot product of a dequantized row with the activations, which the int8
    /// arithmetic approximates, and a bound on the difference: each activation moves by at most
    /// half a step, `amax / 254`, with `|x| < 3`.
    fn reference(kind: QuantKind, row: &[u8], x: &[f32]) -> (f32, f32) {
        let ty = match kind {
            QuantKind::Q4_0 => peregrine_formats::GgmlType::Q4_0,
            QuantKind::Q4_1 => peregrine_formats::GgmlType::Q4_1,
            QuantKind::Q8_0 => peregrine_formats::GgmlType::Q8_0,
        };
        let mut w = vec![0f32; x.len()];
        peregrine_formats::quant::dequantize_row(ty, row, &mut w).unwrap();
        let dot = w.iter().zip(x).map(|(a, b)| a * b).sum();
        let bound = w.iter().map(|a| a.abs()).sum::<f32>() * 3.0 / 254.0 + 1e-3;
        (dot, bound)
    }

    #[test]
    fn jit_and_portable_agree_bit_for_bit_in_any_split_and_approximate_f32() {
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            for (n_rows, k) in [(48, 192), (37, 64)] {
                let rows = random_rows(kind, n_rows, k, 11);
                let row_bytes = k / 32 * kind.block_bytes();
                let row = |r: usize| &rows[r * row_bytes..(r + 1) * row_bytes];
                let packed = PackedMatrix::pack(kind, n_rows, k, row);
                let m = 13;
                let mut rng = rand::rngs::StdRng::seed_from_u64(5);
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
                let mut acts = ActsQ8::default();
                acts.quantize_into(&x, m, k).unwrap();
                let n_panels = n_rows.div_ceil(TILE_ROWS);
                let mut portable = vec![f32::NAN; m * n_rows];
                // SAFETY: `portable` holds `m * n_rows` values.
                unsafe { packed.panels_dot_into(0..n_panels, &acts, false, portable.as_mut_ptr()) };
                for t in 0..m {
                    for r in 0..n_rows {
                        let (want, bound) = reference(kind, row(r), &x[t * k..(t + 1) * k]);
                        let got = portable[t * n_rows + r];
                        assert!(
                            (got - want).abs() <= bound,
                            "{kind:?} t={t} r={r}: {got} vs {want}"
                        );
                    }
                }
                if !packed.has_kernel() {
                    continue;
                }
                // One panel at a time, and all at once.
                let mut jit = vec![f32::NAN; m * n_rows];
                for p in 0..n_panels {
                    // SAFETY: `jit` holds `m * n_rows` values; one call at a time.
                    unsafe { packed.panels_dot_into(p..p + 1, &acts, true, jit.as_mut_ptr()) };
                }
                let mut whole = vec![f32::NAN; m * n_rows];
                // SAFETY: as above.
                unsafe { packed.panels_dot_into(0..n_panels, &acts, true, whole.as_mut_ptr()) };
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&jit), bits(&portable), "{kind:?} {n_rows}x{k}");
                assert_eq!(bits(&whole), bits(&portable), "{kind:?} {n_rows}x{k}");
                // Each row alone (M = 1) and every prefix M gives the same bits.
                for mm in [1, 2, 7, 8, 9] {
                    let mut sub = ActsQ8::default();
                    sub.quantize_into(&x[..mm * k], mm, k).unwrap();
                    let mut y = vec![f32::NAN; mm * n_rows];
                    // SAFETY: as above.
                    unsafe { packed.panels_dot_into(0..n_panels, &sub, true, y.as_mut_ptr()) };
                    assert_eq!(bits(&y), bits(&portable[..mm * n_rows]), "{kind:?} M={mm}");
                }
            }
        }
    }
}
