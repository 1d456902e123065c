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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot16_matches_f64_reference() {
        let a: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..100).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((dot16(&a, &b) as f64 - want).abs() < 1e-4);
    }
}
