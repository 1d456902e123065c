//! Fixed-order f32 reductions shared by every path.
//!
//! Batch invariance and the AVX-512/portable cross-check both need one reduction order,
//! whatever the ISA: values are accumulated in 16 lanes (`lane = index % 16`) and the lanes are
//! folded as `_mm512` code folds a register (8+8, 4+4, 2+2, 1+1). Rust does not reassociate or
//! contract float ops, so these loops give identical bits whether or not they are vectorised.

/// Number of accumulator lanes (one zmm of f32).
pub const LANES: usize = 16;

/// Folds 16 lanes in the order `_mm512` code uses: halves of 8, 4, then pairs.
#[inline(always)]
pub fn reduce16(v: &[f32; LANES]) -> f32 {
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

/// `sum(a[i] * b[i])` with fused multiply-adds into 16 lanes; `a.len()` must be a multiple of 16.
#[inline(always)]
pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    let tail = a.len() / LANES * LANES;
    for (i, (&x, &y)) in a[tail..].iter().zip(&b[tail..]).enumerate() {
        acc[i] = x.mul_add(y, acc[i]);
    }
    reduce16(&acc)
}

/// `sum(a[i]^2)` in the lane order of [`dot16`].
#[inline(always)]
pub fn sum_squares16(a: &[f32]) -> f32 {
    dot16(a, a)
}

/// `2^n` for an integer-valued `n` in `-126..=127`, built in the exponent bits. The same bits as
/// `f32::from_bits(((n as i32 + 127) as u32) << 23)`, but without the saturating float-to-int
/// cast, which does not vectorise: `n + 2^23 + 127` holds `n + 127` in its low mantissa bits.
#[inline(always)]
pub fn pow2i(n: f32) -> f32 {
    let biased = (n + 8_388_735.0).to_bits().wrapping_sub(0x4B00_0000);
    f32::from_bits(biased << 23)
}

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

/// `exp(x)` for any `x`, by the reduction and polynomial of [`exp_nonpositive`]: arguments
/// above 88 give `exp(88)` (finite), below -87 give 0. Vectorises, same bits on every path.
#[inline(always)]
pub fn exp_clamped(x: f32) -> f32 {
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
    // n <= 127 here, so 2^n is a normal number.
    let y = p * pow2i(n);
    if x < -87.0 {
        0.0
    } else {
        y
    }
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
