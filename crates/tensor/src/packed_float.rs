//! Float weights (f32, f16, bf16) repacked once at load into the panel layout of
//! `peregrine-loops`' float matmul, with the kernel `loops` compiled for their shape.
//!
//! The layout ([`peregrine_loops::PackedFloatWeights`]) is panels of 16 rows, k-major inside a
//! panel, in the weights' own type: f16 and bf16 stay 2 bytes a weight (converted in registers),
//! so memory does not grow. Each output is one fused multiply-add chain over k in increasing
//! order, so it does not depend on the other rows of its batch, the panel split or the code
//! path (JIT or portable): the same bits everywhere.

use crate::packed::panels_portable;
use peregrine_loops::jit::fgemm::fgemm_panel_portable;
use peregrine_loops::{FGemmDesc, FGemmKernel, FloatType, Isa, KernelCache, PackedFloatWeights};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

/// A float matrix in `loops`' panel layout, with its compiled kernel.
pub struct PackedFloatMatrix {
    weights: PackedFloatWeights,
    /// `None` where `loops` has no code generator for this CPU (the portable twin runs).
    kernel: Option<Arc<FGemmKernel>>,
}

/// Kernels by shape, shared by every float matrix of the process (used at load only).
fn kernel_cache() -> &'static KernelCache {
    static CACHE: OnceLock<KernelCache> = OnceLock::new();
    CACHE.get_or_init(KernelCache::new)
}

/// The engine's schedule: one 16-row panel per group (so any chunk of whole panels can run),
/// tiles of up to 8 activation rows on AVX-512 (8 accumulators and a weight vector) or 4 on
/// AVX2 (two ymm per panel), each panel streamed from memory once per tile of rows.
fn engine_desc(ty: FloatType, n: usize, k: usize, isa: Isa) -> peregrine_loops::Result<FGemmDesc> {
    let m_tile = if isa == Isa::Avx512 { 8 } else { 4 };
    FGemmDesc::from_schedule_text(
        ty,
        8,
        n,
        k,
        isa,
        &format!("n/16 m/{m_tile} k/1 m/1:reg n/1:vec"),
    )
}

impl PackedFloatMatrix {
    /// Repacks `n_rows` rows of `n_cols` values of `ty` (`row(r)` gives row `r`'s little-endian
    /// bytes) and gets the kernel for the shape. Errors name the shape when a row has the wrong
    /// length.
    pub fn pack<'a>(
        ty: FloatType,
        n_rows: usize,
        n_cols: usize,
        row: impl Fn(usize) -> &'a [u8],
    ) -> crate::Result<Self> {
        let weights = PackedFloatWeights::pack_rows(ty, n_rows, n_cols, row).map_err(|e| {
            crate::Error::Shape(format!("packing a {n_rows}x{n_cols} {ty:?} matrix: {e}"))
        })?;
        let isa = Isa::detect();
        let kernel = match isa {
            Isa::Portable => None,
            _ => {
                match engine_desc(ty, n_rows, n_cols, isa).and_then(|d| kernel_cache().fgemm(&d)) {
                    Ok(k) => Some(k),
                    Err(e) => {
                        tracing::warn!(
                            "no float matmul kernel for {n_rows}x{n_cols} ({e}); portable path"
                        );
                        None
                    }
                }
            }
        };
        Ok(Self { weights, kernel })
    }

    /// Output features.
    pub fn n_rows(&self) -> usize {
        self.weights.n()
    }
    /// Input features.
    pub fn n_cols(&self) -> usize {
        self.weights.k()
    }
    /// Element type.
    pub fn ty(&self) -> FloatType {
        self.weights.ty()
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
    /// into a row-major output: `out[t * n_rows + r] = row r · x row t` for the rows `r` of those
    /// panels and `t < m`. With `use_jit`, the compiled kernel runs; else (or if there is none)
    /// the portable twin, with the same bits.
    ///
    /// # Safety
    /// `out` is valid for writes of `m * n_rows` values, and nothing else accesses the columns
    /// of `panels` during the call.
    ///
    /// # Panics
    /// If `x` is not `m` rows of `n_cols` or `panels` is out of range (the caller checked both).
    pub unsafe fn panels_dot_into(
        &self,
        panels: Range<usize>,
        x: &[f32],
        m: usize,
        use_jit: bool,
        out: *mut f32,
    ) {
        let fail = |e: peregrine_loops::Error| panic!("PackedFloatMatrix::panels_dot_into: {e}");
        if let (true, Some(kernel)) = (use_jit, &self.kernel) {
            // SAFETY: the caller vouches for `out` and the columns of `panels`.
            unsafe { kernel.run_panels(&self.weights, x, m, out, panels) }.unwrap_or_else(fail);
            return;
        }
        let k = self.n_cols();
        // SAFETY: the caller vouches for `out` and the columns of `panels`.
        unsafe {
            panels_portable(self.n_rows(), m, panels, out, |t, p, res| {
                fgemm_panel_portable(&self.weights, &x[t * k..(t + 1) * k], p, res)
                    .unwrap_or_else(fail)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::TILE_ROWS;
    use half::{bf16, f16};
    use rand::{Rng, SeedableRng};

    /// Rows of `n_rows x k` random weights in `ty`'s little-endian bytes, and their f32 values.
    fn random_rows(ty: FloatType, n_rows: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut bytes = Vec::new();
        let mut values = Vec::new();
        for _ in 0..n_rows * k {
            let v: f32 = rng.random_range(-0.5..0.5);
            let v = match ty {
                FloatType::F32 => {
                    bytes.extend(v.to_le_bytes());
                    v
                }
                FloatType::F16 => {
                    let h = f16::from_f32(v);
                    bytes.extend(h.to_le_bytes());
                    h.to_f32()
                }
                FloatType::Bf16 => {
                    let h = bf16::from_f32(v);
                    bytes.extend(h.to_le_bytes());
                    h.to_f32()
                }
            };
            values.push(v);
        }
        (bytes, values)
    }

    #[test]
    fn jit_and_portable_agree_bit_for_bit_in_any_split_and_match_f64() {
        for ty in [FloatType::F32, FloatType::F16, FloatType::Bf16] {
            for (n_rows, k) in [(48, 192), (37, 70)] {
                let (bytes, values) = random_rows(ty, n_rows, k, 3);
                let row_bytes = k * ty.bytes();
                let packed = PackedFloatMatrix::pack(ty, n_rows, k, |r| {
                    &bytes[r * row_bytes..(r + 1) * row_bytes]
                })
                .unwrap();
                let m = 11;
                let mut rng = rand::rngs::StdRng::seed_from_u64(5);
                let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
                let n_panels = n_rows.div_ceil(TILE_ROWS);
                let mut portable = vec![f32::NAN; m * n_rows];
                // SAFETY: `portable` holds `m * n_rows` values.
                unsafe { packed.panels_dot_into(0..n_panels, &x, m, false, portable.as_mut_ptr()) };
                // Against an f64 dot product of the same (converted) weights: f32 rounding only.
                for t in 0..m {
                    for r in 0..n_rows {
                        let xs = &x[t * k..(t + 1) * k];
                        let want: f64 = values[r * k..(r + 1) * k]
                            .iter()
                            .zip(xs)
                            .map(|(&w, &v)| w as f64 * v as f64)
                            .sum();
                        let got = portable[t * n_rows + r] as f64;
                        assert!(
                            (got - want).abs() < 1e-4,
                            "{ty:?} t={t} r={r}: {got} vs {want}"
                        );
                    }
                }
                if !packed.has_kernel() {
                    continue;
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let mut jit = vec![f32::NAN; m * n_rows];
                for p in 0..n_panels {
                    // SAFETY: `jit` holds `m * n_rows` values; one call at a time.
                    unsafe { packed.panels_dot_into(p..p + 1, &x, m, true, jit.as_mut_ptr()) };
                }
                assert_eq!(bits(&jit), bits(&portable), "{ty:?} {n_rows}x{k}");
                // Every prefix M gives the same bits (batch invariance).
                for mm in [1, 2, 7, 8, 9] {
                    let mut y = vec![f32::NAN; mm * n_rows];
                    // SAFETY: `y` holds `mm * n_rows` values.
                    unsafe {
                        packed.panels_dot_into(0..n_panels, &x[..mm * k], mm, true, y.as_mut_ptr())
                    };
                    assert_eq!(bits(&y), bits(&portable[..mm * n_rows]), "{ty:?} M={mm}");
                }
            }
        }
    }

    #[test]
    fn rows_of_the_wrong_length_are_errors() {
        let bytes = [0u8; 10];
        let err = PackedFloatMatrix::pack(FloatType::F16, 2, 4, |_| &bytes[..])
            .err()
            .unwrap();
        assert!(err.to_string().contains("2x4"), "{err}");
    }
}
