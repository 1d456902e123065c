//! The three products on random shapes (odd sizes, tails of every register tile) and both
//! backends agree with a naive f64 product.

use peregrine_train::{Compute, MatmulBackend};
use proptest::prelude::*;

fn naive(
    m: usize,
    n: usize,
    k: usize,
    a: impl Fn(usize, usize) -> f32,
    b: impl Fn(usize, usize) -> f32,
) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
        }
    }
    c
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn products_match_naive(m in 1usize..90, n in 1usize..90, k in 1usize..90, seed in 0u32..1000, jit in any::<bool>()) {
        let val = |i: usize| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0;
        let a: Vec<f32> = (0..m * k).map(val).collect();
        let b: Vec<f32> = (0..k * n).map(|i| val(i + 7)).collect();
        let backend = if jit { MatmulBackend::Jit } else { MatmulBackend::Gemm };
        let cx = Compute::with_backend(2, backend);
        let tol = 1e-5 * (k as f64).sqrt() * 4.0;
        let mut c = vec![0f32; m * n];
        cx.nn((m, n, k), &a, &b, &mut c, false).unwrap();
        let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
        prop_assert!(c.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() <= tol));
        cx.nt((m, n, k), &a, &b, &mut c, false).unwrap();
        let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| b[j * k + p]);
        prop_assert!(c.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() <= tol));
        cx.tn((m, n, k), &a, &b, &mut c, false).unwrap();
        let want = naive(m, n, k, |i, p| a[p * m + i], |p, j| b[p * n + j]);
        prop_assert!(c.iter().zip(&want).all(|(g, w)| (*g as f64 - w).abs() <= tol));
    }
}
