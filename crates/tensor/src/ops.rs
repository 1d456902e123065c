//! Row-wise f32 operations of a Llama layer: RMSNorm, RoPE, SiLU·mul, residual add, argmax.
//!
//! These are cheap next to the matmuls and run on the calling thread. Each row's result depends
//! only on that row, so they are batch invariant by construction.
//!
//! The kernels come from `peregrine-loops`: JIT code for this CPU (AVX-512 or AVX2), compiled
//! on first use per shape into a process-wide set read without locks or allocation, or the
//! portable twins in `peregrine_loops::kernel::portable` elsewhere. The two give identical
//! bits (the JIT performs the twin's operations in the twin's order), so results do not
//! depend on the CPU's ISA.

use peregrine_loops::kernel::portable;
use peregrine_loops::{RowKernel, RowOp, RowOpDesc};
use std::sync::OnceLock;

pub use peregrine_loops::RopeLayout;

/// Compiled kernels of one op keyed by shape: a few slots, each filled once, read lock-free.
/// A model has one RMSNorm width and one head size, so a handful of slots is plenty; past them
/// the caller falls back to the portable twin (same bits).
struct Slots<K> {
    slots: [OnceLock<(K, Option<RowKernel>)>; 8],
}

impl<K: Copy + Eq> Slots<K> {
    const fn new() -> Self {
        Slots {
            slots: [const { OnceLock::new() }; 8],
        }
    }

    fn get(&self, key: K, op: impl Fn(K) -> RowOp) -> Option<&RowKernel> {
        for slot in &self.slots {
            let (k, kernel) = slot.get_or_init(|| (key, compile(op(key))));
            if *k == key {
                return kernel.as_ref();
            }
        }
        None
    }
}

/// The kernel of `op` for this CPU; `None` if it cannot be compiled (then callers use the
/// portable twin, which gives the same bits).
fn compile(op: RowOp) -> Option<RowKernel> {
    RowKernel::compile(&RowOpDesc::new(op)).ok()
}

struct Kernels {
    rms_norm: Slots<usize>,
    rope: Slots<(usize, RopeLayout)>,
    add: OnceLock<Option<RowKernel>>,
    silu_mul: OnceLock<Option<RowKernel>>,
    argmax: OnceLock<Option<RowKernel>>,
    exp_shifted: OnceLock<Option<RowKernel>>,
}

static KERNELS: Kernels = Kernels {
    rms_norm: Slots::new(),
    rope: Slots::new(),
    add: OnceLock::new(),
    silu_mul: OnceLock::new(),
    argmax: OnceLock::new(),
    exp_shifted: OnceLock::new(),
};

/// `out = x / sqrt(mean(x²) + eps) * weight`, row by row (rows of `weight.len()` values): the
/// sum of squares in 16 lanes folded as `lanes::reduce16`, then `(x * scale) * weight`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    if d == 0 {
        return;
    }
    if let Some(k) = KERNELS.rms_norm.get(d, |d| RowOp::RmsNorm { d }) {
        if k.rms_norm(x, weight, eps, out).is_ok() {
            return;
        }
    }
    // Another shape, or lengths that are not whole rows: the twin does the whole rows.
    portable::rms_norm_lanes16(x, weight, eps, out);
}

/// `x += y`.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    if let Some(k) = KERNELS.add.get_or_init(|| compile(RowOp::AddInPlace)) {
        if k.add_in_place(x, y).is_ok() {
            return;
        }
    }
    portable::add_in_place(x, y);
}

/// `gate = silu(gate) * up`, the SwiGLU activation, in place: `v / (1 + exp(-v)) * u` with
/// [`crate::lanes::exp_clamped`] (a polynomial that vectorises; libm's `expf` is a call per
/// element). Below v = -88 the result is a tiny negative number rather than the exact one
/// (`|v| e^v < 1e-36`).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    if let Some(k) = KERNELS.silu_mul.get_or_init(|| compile(RowOp::SiluMul)) {
        if k.silu_mul(gate, up).is_ok() {
            return;
        }
    }
    portable::silu_mul_in_place(gate, up);
}

/// `x = exp((x - shift) * scale)` elementwise: softmax weights over a vocabulary (`shift` the
/// largest logit, `scale` the inverse temperature), by the same `exp` polynomial as
/// [`silu_mul`] (relative error < 3e-7; below an exponent of -87 the weight is 0). Inputs must
/// not be NaN; `-inf` gives 0.
pub fn exp_shifted(x: &mut [f32], shift: f32, scale: f32) {
    if let Some(k) = KERNELS
        .exp_shifted
        .get_or_init(|| compile(RowOp::ExpShifted))
    {
        if k.exp_shifted(x, shift, scale).is_ok() {
            return;
        }
    }
    portable::exp_shifted_in_place(x, shift, scale);
}

/// Rotation angles for one position: `cos`/`sin` of each of the `head_dim / 2` frequencies.
pub struct RopeTable {
    head_dim: usize,
    /// Per frequency `i`, the angle per position step: `freq_scale * base^(-2i/d) / factor_i`.
    inv_freq: Vec<f32>,
}

impl RopeTable {
    /// Frequencies as llama.cpp computes them (`theta_scale = base^(-2/d)`, multiplied up
    /// step by step), divided by `freq_factors` (Llama 3 scaling) and scaled by `freq_scale`
    /// (linear scaling: `1 / factor`).
    pub fn new(head_dim: usize, base: f32, freq_scale: f32, freq_factors: Option<&[f32]>) -> Self {
        let theta_scale = base.powf(-2.0 / head_dim as f32);
        let mut theta = 1.0f32;
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let ff = freq_factors.map_or(1.0, |f| f[i]);
                let v = freq_scale * (theta / ff);
                theta *= theta_scale;
                v
            })
            .collect();
        Self { head_dim, inv_freq }
    }

    /// Head dimension this table rotates.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Writes `cos` and `sin` of every frequency at `pos` into `cs` (`head_dim` values: cos then sin).
    pub fn angles(&self, pos: u32, cs: &mut [f32]) {
        let half = self.head_dim / 2;
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let theta = pos as f32 * f;
            cs[i] = theta.cos();
            cs[half + i] = theta.sin();
        }
    }
}

/// Rotates every head of one row (`n_heads * head_dim` values) by precomputed `angles`
/// (`head_dim / 2` cosines, then the sines): `x_a' = x_a c - x_b s`, `x_b' = x_a s + x_b c`.
pub fn rope_row(x: &mut [f32], head_dim: usize, angles: &[f32], layout: RopeLayout) {
    if let Some(k) = KERNELS
        .rope
        .get((head_dim, layout), |(head_dim, layout)| RowOp::Rope {
            head_dim,
            layout,
        })
    {
        if k.rope(x, angles).is_ok() {
            return;
        }
    }
    portable::rope_row(x, head_dim, angles, layout);
}

/// Index of the largest value (the first one on ties); NaNs are skipped; `None` for an empty
/// slice or NaN-only input.
pub fn argmax(x: &[f32]) -> Option<usize> {
    if let Some(k) = KERNELS.argmax.get_or_init(|| compile(RowOp::Argmax)) {
        if let Ok(i) = k.argmax(x) {
            return i;
        }
    }
    portable::argmax(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's row kernels before they moved to `peregrine-loops` (commit 202ed81),
    /// verbatim but for names: the reference the JIT kernels must match bit for bit. (They ran
    /// compiled with AVX-512 target features; Rust neither reassociates nor contracts, so this
    /// plain build gives the same bits.)
    mod previous {
        use super::RopeLayout;

        fn reduce16(v: &[f32; 16]) -> f32 {
            let mut a = [0f32; 8];
            for i in 0..8 {
                a[i] = v[i] + v[i + 8];
            }
            let mut b = [0f32; 4];
            for i in 0..4 {
                b[i] = a[i] + a[i + 4];
            }
            let c0 = b[0] + b[2];
            let c1 = b[1] + b[3];
            c0 + c1
        }

        fn dot16(a: &[f32], b: &[f32]) -> f32 {
            let mut acc = [0f32; 16];
            for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
                for l in 0..16 {
                    acc[l] = ca[l].mul_add(cb[l], acc[l]);
                }
            }
            let tail = a.len() / 16 * 16;
            for (i, (&x, &y)) in a[tail..].iter().zip(&b[tail..]).enumerate() {
                acc[i] = x.mul_add(y, acc[i]);
            }
            reduce16(&acc)
        }

        fn pow2i(n: f32) -> f32 {
            let biased = (n + 8_388_735.0).to_bits().wrapping_sub(0x4B00_0000);
            f32::from_bits(biased << 23)
        }

        fn exp_clamped(x: f32) -> f32 {
            const LOG2E: f32 = std::f32::consts::LOG2_E;
            const LN2_HI: f32 = 0.693_145_75;
            const LN2_LO: f32 = 1.428_606_8e-6;
            let xc = x.clamp(-87.0, 88.0);
            let n = (xc * LOG2E).round_ties_even();
            let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
            let mut p = 1.0 / 720.0f32;
            p = p.mul_add(r, 1.0 / 120.0);
            p = p.mul_add(r, 1.0 / 24.0);
            p = p.mul_add(r, 1.0 / 6.0);
            p = p.mul_add(r, 0.5);
            p = p.mul_add(r, 1.0);
            p = p.mul_add(r, 1.0);
            let y = p * pow2i(n);
            if x < -87.0 {
                0.0
            } else {
                y
            }
        }

        pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
            let n = weight.len();
            for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                let mean = dot16(xr, xr) / n as f32;
                let scale = 1.0 / (mean + eps).sqrt();
                for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
                    *o = v * scale * w;
                }
            }
        }

        pub fn add_in_place(x: &mut [f32], y: &[f32]) {
            for (a, &b) in x.iter_mut().zip(y) {
                *a += b;
            }
        }

        pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
            for (g, &u) in gate.iter_mut().zip(up) {
                let v = *g;
                *g = v / (1.0 + exp_clamped(-v)) * u;
            }
        }

        pub fn rope_row(x: &mut [f32], head_dim: usize, angles: &[f32], layout: RopeLayout) {
            let half = head_dim / 2;
            for head in x.chunks_exact_mut(head_dim) {
                for i in 0..half {
                    let (c, s) = (angles[i], angles[half + i]);
                    let (a, b) = match layout {
                        RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                        RopeLayout::Halves => (i, i + half),
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * c - x1 * s;
                    head[b] = x0 * s + x1 * c;
                }
            }
        }

        pub fn argmax(x: &[f32]) -> Option<usize> {
            let mut best: Option<(usize, f32)> = None;
            for (i, &v) in x.iter().enumerate() {
                if v.is_nan() {
                    continue;
                }
                if best.is_none_or(|(_, b)| v > b) {
                    best = Some((i, v));
                }
            }
            best.map(|(i, _)| i)
        }
    }

    struct Rng(u64);
    impl Rng {
        fn f(&mut self, scale: f32) -> f32 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        }
    }

    fn lengths() -> impl Iterator<Item = usize> {
        (1..=200).chain([576, 1536, 49152])
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    // Tolerance for every op below: none (bit-identical to the previous engine kernels).

    #[test]
    fn rms_norm_equals_previous_engine_kernel() {
        let mut rng = Rng(1);
        for d in lengths() {
            for rows in [1, 4] {
                let x: Vec<f32> = (0..rows * d).map(|_| rng.f(3.0)).collect();
                let w: Vec<f32> = (0..d).map(|_| rng.f(1.5)).collect();
                let (mut got, mut want) = (vec![0f32; rows * d], vec![0f32; rows * d]);
                rms_norm(&x, &w, 1e-5, &mut got);
                previous::rms_norm(&x, &w, 1e-5, &mut want);
                assert!(same_bits(&got, &want), "d={d} rows={rows}");
            }
        }
    }

    #[test]
    fn add_and_silu_mul_equal_previous_engine_kernels() {
        let mut rng = Rng(2);
        for n in lengths() {
            let x: Vec<f32> = (0..n).map(|_| rng.f(3.0)).collect();
            let g: Vec<f32> = (0..n).map(|_| rng.f(100.0)).collect();
            let (mut got, mut want) = (x.clone(), x.clone());
            add_in_place(&mut got, &g);
            previous::add_in_place(&mut want, &g);
            assert!(same_bits(&got, &want), "add n={n}");
            let (mut got, mut want) = (g.clone(), g.clone());
            silu_mul(&mut got, &x);
            previous::silu_mul(&mut want, &x);
            assert!(same_bits(&got, &want), "silu_mul n={n}");
        }
    }

    #[test]
    fn rope_equals_previous_engine_kernel() {
        let mut rng = Rng(3);
        for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
            for head_dim in [2, 6, 14, 30, 64, 80, 128] {
                for n_heads in 1..=9 {
                    let x: Vec<f32> = (0..n_heads * head_dim).map(|_| rng.f(2.0)).collect();
                    let table = RopeTable::new(head_dim, 100000.0, 1.0, None);
                    let mut cs = vec![0f32; head_dim];
                    table.angles(1 + (n_heads * 37) as u32, &mut cs);
                    let (mut got, mut want) = (x.clone(), x.clone());
                    rope_row(&mut got, head_dim, &cs, layout);
                    previous::rope_row(&mut want, head_dim, &cs, layout);
                    assert!(
                        same_bits(&got, &want),
                        "{layout:?} head_dim={head_dim} heads={n_heads}"
                    );
                }
            }
        }
    }

    #[test]
    fn argmax_equals_previous_engine_kernel() {
        let mut rng = Rng(4);
        for n in lengths() {
            for case in 0..4 {
                let mut x: Vec<f32> = (0..n).map(|_| (rng.f(6.0)).round()).collect();
                for (i, v) in x.iter_mut().enumerate() {
                    match (case, i % 5) {
                        (1, 0) => *v = f32::NAN,
                        (2, _) => *v = f32::NEG_INFINITY,
                        (3, 0..=3) => *v = f32::NAN,
                        _ => {}
                    }
                }
                assert_eq!(argmax(&x), previous::argmax(&x), "n={n} case={case}");
            }
        }
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN; 40]), None);
    }

    #[test]
    fn mismatched_lengths_do_whole_rows_and_never_panic() {
        let w = [1.0f32; 8];
        let x = [2.0f32; 20];
        let mut out = [0f32; 20];
        rms_norm(&x, &w, 1e-5, &mut out);
        assert!(out[..16].iter().all(|&v| v != 0.0) && out[16..] == [0.0; 4]);
        let mut a = [1.0f32; 5];
        add_in_place(&mut a, &[1.0; 3]);
        assert_eq!(a, [2.0, 2.0, 2.0, 1.0, 1.0]);
        rms_norm(&x, &[], 1e-5, &mut out);
    }

    #[test]
    fn rms_norm_matches_definition() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 0.5, 2.0, 1.0];
        let mut out = [0f32; 4];
        rms_norm(&x, &w, 1e-5, &mut out);
        let rms = ((1.0 + 4.0 + 9.0 + 0.25) / 4.0 + 1e-5f64).sqrt();
        for i in 0..4 {
            assert!((out[i] as f64 - x[i] as f64 / rms * w[i] as f64).abs() < 1e-6);
        }
    }

    #[test]
    fn silu_mul_matches_definition() {
        let g: Vec<f32> = (0..999).map(|i| (i as f32 - 499.0) * 0.23).collect();
        let u: Vec<f32> = (0..999)
            .map(|i| ((i * 7) % 13) as f32 * 0.5 - 3.0)
            .collect();
        let mut fast = g.clone();
        silu_mul(&mut fast, &u);
        for i in 0..g.len() {
            let v = g[i] as f64;
            let want = v / (1.0 + (-v).exp()) * u[i] as f64;
            assert!(
                (fast[i] as f64 - want).abs() <= 2e-6 * want.abs() + 1e-30,
                "v={v}"
            );
        }
    }

    #[test]
    fn rope_layouts_agree_after_permutation() {
        // HF halves layout rotates (i, i+d/2); GGUF permutes rows so adjacent pairs rotate the same.
        let d = 8;
        let table = RopeTable::new(d, 10000.0, 1.0, None);
        let mut cs = vec![0f32; d];
        table.angles(5, &mut cs);
        let hf: Vec<f32> = (0..d).map(|i| i as f32 + 1.0).collect();
        let mut gguf = vec![0f32; d];
        for i in 0..d / 2 {
            gguf[2 * i] = hf[i];
            gguf[2 * i + 1] = hf[i + d / 2];
        }
        let mut a = hf.clone();
        rope_row(&mut a, d, &cs, RopeLayout::Halves);
        rope_row(&mut gguf, d, &cs, RopeLayout::Adjacent);
        for i in 0..d / 2 {
            assert_eq!(a[i], gguf[2 * i]);
            assert_eq!(a[i + d / 2], gguf[2 * i + 1]);
        }
    }

    #[test]
    fn argmax_prefers_first_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), Some(1));
        assert_eq!(
            argmax(&[f32::NAN, f32::NEG_INFINITY, f32::NEG_INFINITY]),
            Some(1)
        );
        assert_eq!(argmax(&[]), None);
    }
}
