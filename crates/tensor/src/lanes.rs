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

/// `exp(x)` for `x <= 0` (softmax after subtracting the maximum), to ~2 ulp, with plain f32
/// operations in a fixed order: the same bits whether the loop is vectorised or not, and it
/// vectorises (libm's `expf` is a call per element).
///
/// Cody–Waite reduction `x = n ln2 + r`, `|r| <= ln2/2`, then a degree-6 polynomial for `e^r`
/// and `2^n` built in the exponent bits. Inputs below -87 return 0 (smaller than any softmax
/// weight that matters, and it keeps `2^n` a normal number).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = if x < -87.0 { -87.0 } else { x };
    let n = (xc * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
    // Taylor coefficients 1/k!, evaluated by Horner's rule.
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

pub use peregrine_loops::kernel::portable::exp_clamped;

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
