//! Helpers for the tape's own loops (attention, softmax, cross-entropy, SiLU): a branch-free
//! `exp` that vectorizes, reductions with a fixed order of 16 partial results, and
//! `multiversion!`, which compiles a kernel for AVX-512 or AVX2+FMA beside the baseline.
//!
//! The crate is built for baseline x86-64 (SSE2); kernels are `#[inline(always)]` so that
//! inside `multiversion!`'s `#[target_feature]` copies they are compiled for the wider ISA. Results do not depend on the ISA: no fused multiply-add is introduced (Rust never
//! contracts `a * b + c`), and reductions use the same 16 partial sums everywhere.

/// Defines `fn $name(args) -> R` that calls the `#[inline(always)]` kernel `$kernel(args)`
/// from a copy compiled with AVX-512 (or AVX2 + FMA) enabled when the CPU has it, so the
/// kernel's loops are vectorized for that ISA; the baseline copy otherwise.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $kernel:path;) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v512($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v256($($arg: $ty),*) $(-> $ret)? {
                    $kernel($($arg),*)
                }
                if std::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F (and so AVX2 and FMA), checked above.
                    return unsafe { v512($($arg),*) };
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports AVX2 and FMA, checked above.
                    return unsafe { v256($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `Σ a·b` with 16 partial sums (fixed order, vectorizes to any width up to 16).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// `Σ x` with 16 partial sums.
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let c = x.chunks_exact(16);
    let rest = c.remainder();
    for ch in c {
        for i in 0..16 {
            acc[i] += ch[i];
        }
    }
    let mut s = 0f32;
    for v in acc {
        s += v;
    }
    for v in rest {
        s += v;
    }
    s
}

/// `max x` (−inf when empty) with 16 partial maxima.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let c = x.chunks_exact(16);
    let rest = c.remainder();
    for ch in c {
        for i in 0..16 {
            acc[i] = if ch[i] > acc[i] { ch[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.into_iter().chain(rest.iter().copied()) {
        m = if v > m { v } else { m };
    }
    m
}

/// `y += alpha · x`.
#[inline(always)]
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

/// `e^x` for f32 without branches or calls (so loops over it vectorize): `x = n·ln2 + r`,
/// a degree-6 polynomial for `e^r` on `|r| ≤ ln2/2`, and `2^n` through the exponent bits.
/// Relative error below 3e-7 (≈ 2 ulp) on `[-87, 88]`; returns 0 below −87.3 (also for
/// `-inf`) and saturates to `f32::MAX·2` (`inf`) above 88.7.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-87.3, 88.7);
    // Round to nearest (even) by the 1.5·2^23 trick: no libm call, vectorizes.
    const MAGIC: f32 = 12_582_912.0;
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    // The low mantissa bits of `t` hold n + 2^22: the integer without a float→int convert.
    let n_int = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Taylor coefficients 1/k! up to k = 6 in Horner form.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let bits = ((n_int + 127) as u32) << 23;
    let y = p * f32::from_bits(bits);
    if x < -87.3 {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (super::exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(super::exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(super::exp(-100.0), 0.0);
        assert_eq!(super::exp(0.0), 1.0);
    }

    super::multiversion! {
        fn dot_best(a: &[f32], b: &[f32]) -> f32 => super::dot;
    }

    #[test]
    fn dispatch_gives_the_same_bits() {
        let a: Vec<f32> = (0..77).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..77).map(|i| (i as f32 * 0.11).cos()).collect();
        assert_eq!(super::dot(&a, &b).to_bits(), dot_best(&a, &b).to_bits());
        let x: Vec<f32> = (0..77).map(|i| i as f32 * 0.5 - 20.0).collect();
        let (mut y1, mut y2) = (vec![0f32; 77], vec![0f32; 77]);
        exp_all(&x, &mut y1);
        exp_best(&x, &mut y2);
        assert_eq!(y1, y2);
    }

    #[inline(always)]
    fn exp_all(x: &[f32], y: &mut [f32]) {
        for (a, b) in y.iter_mut().zip(x) {
            *a = super::exp(*b);
        }
    }

    super::multiversion! {
        fn exp_best(x: &[f32], y: &mut [f32]) => exp_all;
    }
}
