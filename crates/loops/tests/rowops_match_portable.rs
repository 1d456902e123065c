//! Every JIT row kernel (RMSNorm, add, SiLU·mul, RoPE, argmax, shifted exp, softmax) equals its portable twin in
//! `kernel::portable` bit for bit, on both ISAs this CPU has, for every length 1..=200 and the
//! model sizes (576, 1536, 64-dim heads), with every buffer ending at a guard page so a read
//! or write past a tail faults.
//!
//! Tolerance: none for any op. The generators emit the twin's IEEE operations in the twin's
//! order (16-lane sum folded as `reduce16`, the `exp_clamped` polynomial, two products then a
//! sum for RoPE), so results are compared with `to_bits`; NaN outputs must be NaN on both.

use peregrine_loops::jit::exec_mem::GuardedF32;
use peregrine_loops::kernel::portable;
use peregrine_loops::{Error, Isa, RopeLayout, RowKernel, RowKernelCache, RowOp, RowOpDesc};

mod common;
use common::{assert_bits, guarded, isas, Rng};

const MODEL_SIZES: [usize; 4] = [576, 1536, 49152, 64 * 9];

fn lengths() -> impl Iterator<Item = usize> {
    (1..=200).chain(MODEL_SIZES)
}

fn kernel(cache: &RowKernelCache, op: RowOp, isa: Isa) -> std::sync::Arc<RowKernel> {
    cache
        .get(&RowOpDesc { op, isa })
        .unwrap_or_else(|e| panic!("compile {op:?} for {isa}: {e}"))
}

#[test]
fn rms_norm_matches_portable_bit_for_bit() {
    let cache = RowKernelCache::new();
    let mut rng = Rng(1);
    for isa in isas() {
        for d in lengths().filter(|&d| d <= 4096) {
            for rows in [1, 3] {
                let k = kernel(&cache, RowOp::RmsNorm { d }, isa);
                let x: Vec<f32> = (0..rows * d).map(|_| rng.f(4.0)).collect();
                let w: Vec<f32> = (0..d).map(|_| rng.f(2.0)).collect();
                let mut want = vec![0f32; rows * d];
                portable::rms_norm_lanes16(&x, &w, 1e-5, &mut want);
                let (gx, gw) = (guarded(&x), guarded(&w));
                let mut out = GuardedF32::new(rows * d).unwrap();
                k.rms_norm(gx.as_slice(), gw.as_slice(), 1e-5, out.as_mut_slice())
                    .unwrap();
                assert_bits(
                    out.as_slice(),
                    &want,
                    &format!("rms_norm {isa} d={d} rows={rows}"),
                );
            }
        }
    }
}

#[test]
fn add_and_silu_mul_match_portable_bit_for_bit() {
    let cache = RowKernelCache::new();
    let mut rng = Rng(2);
    for isa in isas() {
        let add = kernel(&cache, RowOp::AddInPlace, isa);
        let silu = kernel(&cache, RowOp::SiluMul, isa);
        for n in (0..=200).chain(MODEL_SIZES) {
            let x: Vec<f32> = (0..n).map(|_| rng.f(3.0)).collect();
            // Gates reach past the clamp (|v| > 88) and the zero cut (v > 87) of the exp.
            let mut g: Vec<f32> = (0..n).map(|_| rng.f(12.0)).collect();
            for (i, v) in g.iter_mut().enumerate() {
                match i % 37 {
                    5 => *v = rng.f(120.0),
                    11 => *v = -87.0,
                    17 => *v = 88.5,
                    23 => *v = 0.0,
                    29 => *v = -0.0,
                    _ => {}
                }
            }
            let y: Vec<f32> = (0..n).map(|_| rng.f(3.0)).collect();

            let mut want = x.clone();
            portable::add_in_place(&mut want, &y);
            let (mut gx, gy) = (guarded(&x), guarded(&y));
            add.add_in_place(gx.as_mut_slice(), gy.as_slice()).unwrap();
            assert_bits(gx.as_slice(), &want, &format!("add {isa} n={n}"));

            let mut want = g.clone();
            portable::silu_mul_in_place(&mut want, &y);
            let mut gg = guarded(&g);
            silu.silu_mul(gg.as_mut_slice(), gy.as_slice()).unwrap();
            assert_bits(gg.as_slice(), &want, &format!("silu_mul {isa} n={n}"));
        }
    }
}

#[test]
fn silu_mul_special_values() {
    let cache = RowKernelCache::new();
    let g = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        1e-40,
        -1e-40,
        -88.0,
        88.0,
    ];
    let up = [1.0f32; 9];
    let mut want = g;
    portable::silu_mul_in_place(&mut want, &up);
    for isa in isas() {
        let mut got = g;
        kernel(&cache, RowOp::SiluMul, isa)
            .silu_mul(&mut got, &up)
            .unwrap();
        assert_bits(&got, &want, &format!("silu_mul specials {isa}"));
    }
}

#[test]
fn exp_shifted_matches_portable_bit_for_bit_and_exp() {
    let cache = RowKernelCache::new();
    let mut rng = Rng(7);
    for isa in isas() {
        let exp = kernel(&cache, RowOp::ExpShifted, isa);
        for n in (0..=200).chain(MODEL_SIZES) {
            // Logit-like values: a max of 0 after the shift, a long negative tail past the
            // zero cut, and -inf (masked tokens).
            let mut x: Vec<f32> = (0..n).map(|_| rng.f(40.0)).collect();
            for (i, v) in x.iter_mut().enumerate() {
                match i % 41 {
                    3 => *v = f32::NEG_INFINITY,
                    9 => *v = -300.0,
                    _ => {}
                }
            }
            let shift = x.iter().copied().fold(f32::NEG_INFINITY, f32::max).max(0.0);
            for scale in [1.0f32, 0.7, 2.5] {
                let mut want = x.clone();
                portable::exp_shifted_in_place(&mut want, shift, scale);
                let mut gx = guarded(&x);
                exp.exp_shifted(gx.as_mut_slice(), shift, scale).unwrap();
                assert_bits(gx.as_slice(), &want, &format!("exp_shifted {isa} n={n}"));
                // And it is exp: within 2 ulp-ish of the f64 reference where not cut to 0.
                for (&w, &v) in want.iter().zip(&x) {
                    let t = ((v - shift) * scale) as f64;
                    let exact = if t < -87.0 { 0.0 } else { t.exp() };
                    assert!(
                        (w as f64 - exact).abs() <= 3e-7 * exact + 1e-37,
                        "exp({t}) = {w}, want {exact}"
                    );
                }
            }
        }
    }
}

/// Attention's softmax: several rows at a stride (only the first `n` of each touched), the
/// last row ending at a guard page; values spread like attention scores, with repeats of the
/// maximum and -inf (masked keys) mixed in.
#[test]
fn softmax_rows_match_portable_bit_for_bit() {
    let cache = RowKernelCache::new();
    let mut rng = Rng(7);
    for isa in isas() {
        let k = kernel(&cache, RowOp::Softmax, isa);
        for n in lengths().filter(|&n| n <= 4096) {
            for (rows, pad) in [(1, 0), (3, 5), (4, 16)] {
                let stride = n + pad;
                let len = (rows - 1) * stride + n;
                let mut x: Vec<f32> = (0..len).map(|_| rng.f(12.0)).collect();
                for v in x.iter_mut() {
                    match rng.next() % 32 {
                        0 => *v = f32::NEG_INFINITY,
                        1 => *v = 6.0,
                        _ => {}
                    }
                }
                let mut want = x.clone();
                let mut want_sums = vec![0f32; rows];
                portable::softmax_rows(&mut want, n, rows, stride, &mut want_sums);
                let mut gx = guarded(&x);
                let mut sums = GuardedF32::new(rows).unwrap();
                k.softmax_rows(gx.as_mut_slice(), n, rows, stride, sums.as_mut_slice())
                    .unwrap();
                let what = format!("softmax {isa} n={n} rows={rows} stride={stride}");
                assert_bits(gx.as_slice(), &want, &what);
                assert_bits(sums.as_slice(), &want_sums, &what);
                // Against plain f64 softmax numerators: the polynomial is within a few ulp.
                for r in 0..rows {
                    let row = &x[r * stride..r * stride + n];
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                    let exact: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                    let got = sums.as_slice()[r] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * exact,
                        "{what}: sum {got} vs {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn rope_matches_portable_bit_for_bit() {
    let cache = RowKernelCache::new();
    let mut rng = Rng(3);
    for isa in isas() {
        for layout in [RopeLayout::Adjacent, RopeLayout::Halves] {
            for head_dim in (2..=200).step_by(2).chain([64, 128, 256]) {
                let k = kernel(&cache, RowOp::Rope { head_dim, layout }, isa);
                for n_heads in [1, 3, 9] {
                    let x: Vec<f32> = (0..n_heads * head_dim).map(|_| rng.f(2.0)).collect();
                    let angles: Vec<f32> = (0..head_dim).map(|_| rng.f(1.0)).collect();
                    let mut want = x.clone();
                    portable::rope_row(&mut want, head_dim, &angles, layout);
                    let (mut gx, ga) = (guarded(&x), guarded(&angles));
                    k.rope(gx.as_mut_slice(), ga.as_slice()).unwrap();
                    assert_bits(
                        gx.as_slice(),
                        &want,
                        &format!("rope {isa} {layout:?} head_dim={head_dim} heads={n_heads}"),
                    );
                }
            }
        }
    }
}

#[test]
fn argmax_matches_portable() {
    let cache = RowKernelCache::new();
    let mut rng = Rng(4);
    for isa in isas() {
        let k = kernel(&cache, RowOp::Argmax, isa);
        for n in (0..=200).chain(MODEL_SIZES).chain([49152 + 17]) {
            for case in 0..6 {
                // Coarse values make ties; some cases add NaNs, -inf or +inf.
                let mut x: Vec<f32> = (0..n).map(|_| (rng.f(8.0) * 2.0).round()).collect();
                for v in x.iter_mut() {
                    let r = rng.next() % 16;
                    match (case, r) {
                        (1, 0..=3) => *v = f32::NAN,
                        (2, _) => *v = f32::NAN,
                        (3, 0..=14) => *v = f32::NEG_INFINITY,
                        (4, 0) => *v = f32::INFINITY,
                        (5, 0..=7) => *v = f32::NAN,
                        (5, _) => *v = f32::NEG_INFINITY,
                        _ => {}
                    }
                }
                let want = portable::argmax(&x);
                let gx = guarded(&x);
                let got = k.argmax(gx.as_slice()).unwrap();
                assert_eq!(got, want, "argmax {isa} n={n} case={case}");
            }
        }
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let cache = RowKernelCache::new();
    for isa in isas().into_iter().chain([Isa::Portable]) {
        let rms = kernel(&cache, RowOp::RmsNorm { d: 8 }, isa);
        let mut out = [0f32; 16];
        assert!(matches!(
            rms.rms_norm(&[0.0; 16], &[1.0; 7], 1e-5, &mut out),
            Err(Error::BufferLen { .. })
        ));
        assert!(matches!(
            rms.rms_norm(&[0.0; 12], &[1.0; 8], 1e-5, &mut out[..12]),
            Err(Error::BadShape { .. })
        ));
        assert!(matches!(
            rms.rms_norm(&[0.0; 16], &[1.0; 8], 1e-5, &mut out[..8]),
            Err(Error::BufferLen { .. })
        ));
        assert!(matches!(
            rms.add_in_place(&mut out, &[0.0; 16]),
            Err(Error::BadShape { .. })
        ));
        let add = kernel(&cache, RowOp::AddInPlace, isa);
        assert!(matches!(
            add.add_in_place(&mut out, &[0.0; 15]),
            Err(Error::BufferLen { .. })
        ));
        let rope = kernel(
            &cache,
            RowOp::Rope {
                head_dim: 8,
                layout: RopeLayout::Adjacent,
            },
            isa,
        );
        assert!(matches!(
            rope.rope(&mut out, &[0.0; 6]),
            Err(Error::BufferLen { .. })
        ));
        assert!(matches!(
            rope.rope(&mut out[..12], &[0.0; 8]),
            Err(Error::BadShape { .. })
        ));
        assert!(matches!(rope.argmax(&out), Err(Error::BadShape { .. })));
    }
    for op in [
        RowOp::RmsNorm { d: 0 },
        RowOp::Rope {
            head_dim: 7,
            layout: RopeLayout::Halves,
        },
        RowOp::Rope {
            head_dim: 0,
            layout: RopeLayout::Halves,
        },
    ] {
        assert!(matches!(
            RowKernel::compile(&RowOpDesc::new(op)),
            Err(Error::BadShape { .. })
        ));
    }
}

#[test]
fn cache_compiles_once_and_keys_on_isa() {
    let cache = RowKernelCache::new();
    let d = RowOpDesc::new(RowOp::RmsNorm { d: 576 });
    assert!(std::sync::Arc::ptr_eq(
        &cache.get(&d).unwrap(),
        &cache.get(&d).unwrap()
    ));
    let p = RowOpDesc {
        isa: Isa::Portable,
        ..d
    };
    assert!(cache.get(&p).unwrap().code().is_empty());
    assert_eq!(cache.len(), if d.isa == Isa::Portable { 1 } else { 2 });
}
