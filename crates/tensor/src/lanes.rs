//! Fixed-order f32 reductions shared by every path.
//!
//! `reduce16`, `dot16`, `pow2i` and `exp_clamped` live in `peregrine_loops::kernel::portable`
//! (re-exported here), because the JIT row kernels replicate exactly their operations.
//!
//! Batch invariance and the AVX-512/portable cross-check both need one reduction order,
//! whatever the ISA: values are accumulated in 16 lanes (`lane = index % 16`) and the lanes are
//! folded as `_mm512` code folds a register (8+8, 4+4, 2+2, 1+1). Rust does not reassociate or
//! contract float ops, so these loops give identical bits whether or not they are vectorised.

/// Number of accumulator lanes (one zmm of f32).
pub const LANES: usize = 16;

pub use peregrine_loops::kernel::portable::{dot16, reduce16};

/// `sum(a[i]^2)` in the lane order of [`dot16`].
#[inline(always)]
pub fn sum_squares16(a: &[f32]) -> f32 {
    dot16(a, a)
}

pub use peregrine_loops::kernel::portable::pow2i;

pub use peregrine_loops::kernel::portable::exp_clamped;

/// `exp(x)` for `x <= 0` (softmax after subtracting the maximum), to ~2 ulp, with plain f32
/// operations in a fixed order: the same bits whether the loop is vectorised or not, and it
/// vectorises (libm's `expf` is a call per element). It is [`exp_clamped`] (Cody–Waite
/// reduction, degree-6 polynomial, `2^n` in the exponent bits; inputs below -87 give 0),
/// whose upper clamp at 88 never acts on these inputs.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    exp_clamped(x)
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_nonpositive_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -(i as f32) * 0.000_435;
            let got = super::exp_nonpositive(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert_eq!(super::exp_nonpositive(0.0), 1.0);
        assert_eq!(super::exp_nonpositive(-100.0), 0.0);
    }

    use super::*;

    #[test]
    fn pow2i_matches_the_integer_cast() {
        for n in -126..=127 {
            let want = f32::from_bits(((n + 127) as u32) << 23);
            assert_eq!(pow2i(n as f32).to_bits(), want.to_bits(), "n = {n}");
        }
    }

    #[test]
    fn exp_clamped_is_accurate() {
        let mut worst = 0f64;
        for i in 0..=400_000 {
            let x = -87.0 + (i as f32) * 0.000_437_5;
            let got = exp_clamped(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        assert!(exp_clamped(1000.0).is_finite());
        assert_eq!(exp_clamped(-1000.0), 0.0);
        assert_eq!(exp_clamped(0.0), 1.0);
    }

    #[test]
    fn dot16_matches_f64_reference() {
        let a: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..100).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((dot16(&a, &b) as f64 - want).abs() < 1e-4);
    }
}
