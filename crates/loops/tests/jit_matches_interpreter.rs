//! Every JIT sgemm kernel equals the interpreter bit for bit, under random valid schedules,
//! odd sizes and tails, both layouts of A and every combination of the fused epilogue's
//! stages (scale, bias, SiLU·mul, residual), with every buffer ending at a guard page; and the
//! portable path gives the same bits.

use peregrine_loops::interp::{self, Buffer};
use peregrine_loops::jit::exec_mem::GuardedF32;
use peregrine_loops::{Epilogue, EpilogueArgs, Isa, SgemmDesc, SgemmKernel};
use proptest::prelude::*;

fn fill(buf: &mut [f32], seed: u64) {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for v in buf {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *v = ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
    }
}

/// A random schedule in the family the code generator accepts.
fn schedule_strategy(
    lanes: usize,
    max_rows: usize,
    max_vecs: usize,
) -> impl Strategy<Value = String> {
    (
        1..=max_rows,
        1..=max_vecs,
        0..3usize,
        0..3usize,
        0..3usize,
        any::<u64>(),
        1..=8u8,
    )
        .prop_map(move |(rows, vecs, fm, fn_, fk, perm, unroll)| {
            let nr = vecs * lanes;
            let mut blocks = Vec::new();
            if fm > 0 {
                blocks.push(format!("m/{}", rows * (fm + 1)));
            }
            if fn_ > 0 {
                blocks.push(format!("n/{}", nr * (fn_ + 1)));
            }
            if fk > 0 {
                blocks.push(format!("k/{}", 3 + 4 * fk));
            }
            let mut tiles = [format!("m/{rows}"), format!("n/{nr}")];
            if perm & 1 == 1 {
                blocks.reverse();
            }
            if perm & 2 == 2 && blocks.len() > 1 {
                blocks.swap(0, 1);
            }
            if perm & 4 == 4 {
                tiles.reverse();
            }
            let mut regs = Vec::new();
            if rows > 1 {
                regs.push("m/1:reg".to_string());
            }
            if vecs > 1 {
                regs.push(format!("n/{lanes}:reg"));
            }
            if perm & 8 == 8 {
                regs.reverse();
            }
            let reg = regs.join(" ");
            // Pack B below the blocking loops (AVX-512 only): only the tile loops run inside.
            let pack = if lanes == 16 && perm & 16 == 16 {
                format!(
                    " pack:b@{}",
                    blocks.len() + usize::from(perm & 32 == 32 && tiles[0].starts_with('m'))
                )
            } else {
                String::new()
            };
            format!(
                "{} {} k/1:u{unroll} {reg} n/1:vec{pack}",
                blocks.join(" "),
                tiles.join(" ")
            )
        })
}

/// Runs `desc`'s kernel (its schedule text, or the default one) on random inputs and compares
/// every output bit with the interpreter running the same expression and schedule, and with
/// the portable path.
fn check(desc: &SgemmDesc, seed: u64) -> Result<(), TestCaseError> {
    let (m, n, k, isa, epilogue) = (desc.m, desc.n, desc.k, desc.isa, desc.epilogue);
    let (text, a_transposed) = (desc.schedule_text(), desc.a_transposed);
    let kernel = SgemmKernel::compile(desc)
        .map_err(|e| TestCaseError::fail(format!("{m}x{n}x{k} {isa} `{text}`: {e}")))?;
    let (mut a, mut b, mut c) = (
        GuardedF32::new(m * k).unwrap(),
        GuardedF32::new(k * n).unwrap(),
        GuardedF32::new(m * n).unwrap(),
    );
    fill(a.as_mut_slice(), seed);
    fill(b.as_mut_slice(), seed + 1);
    c.as_mut_slice().fill(f32::NAN);
    let (mut bias, mut up, mut res) = (
        GuardedF32::new(n).unwrap(),
        GuardedF32::new(m * n).unwrap(),
        GuardedF32::new(m * n).unwrap(),
    );
    fill(bias.as_mut_slice(), seed + 2);
    fill(up.as_mut_slice(), seed + 4);
    fill(res.as_mut_slice(), seed + 3);
    // A scale that is not a power of two, so its rounding shows.
    let scale = [1.0 + (seed % 1000) as f32 / 997.0];
    let args = EpilogueArgs {
        scale: epilogue.scale.then_some(scale[0]),
        bias: epilogue.bias.then(|| bias.as_slice()),
        up: epilogue.silu_mul.then(|| up.as_slice()),
        residual: epilogue.residual.then(|| res.as_slice()),
    };
    kernel
        .run_epilogue(a.as_slice(), b.as_slice(), &args, c.as_mut_slice())
        .unwrap();
    let expr = desc.expr().unwrap();
    let sched = desc.schedule(&expr).unwrap();
    let mut want = vec![0f32; m * n];
    let mut inputs = vec![Buffer::F32(a.as_slice()), Buffer::F32(b.as_slice())];
    inputs.extend(epilogue.scale.then_some(Buffer::F32(&scale)));
    inputs.extend(args.bias.map(Buffer::F32));
    inputs.extend(args.up.map(Buffer::F32));
    inputs.extend(args.residual.map(Buffer::F32));
    interp::run(&expr, &sched, &inputs, &mut want).unwrap();
    let portable = SgemmKernel::compile(&SgemmDesc {
        isa: Isa::Portable,
        schedule: None,
        ..desc.clone()
    })
    .unwrap();
    let mut twin = vec![f32::NAN; m * n];
    portable
        .run_epilogue(a.as_slice(), b.as_slice(), &args, &mut twin)
        .unwrap();
    let got = c.as_slice();
    let layout = if a_transposed { " (A transposed)" } else { "" };
    for i in 0..m * n {
        prop_assert!(
            got[i].to_bits() == want[i].to_bits(),
            "{m}x{n}x{k}{layout} {isa} epilogue {epilogue} `{text}` seed {seed}: c[{i}] = {} but the interpreter gives {}",
            got[i],
            want[i]
        );
        prop_assert!(
            twin[i].to_bits() == want[i].to_bits(),
            "{m}x{n}x{k}{layout} portable epilogue {epilogue} seed {seed}: c[{i}] = {} but the interpreter gives {}",
            twin[i],
            want[i]
        );
    }
    Ok(())
}

/// An epilogue from its four stage flags (scale, bias, silu_mul, residual).
fn epilogue([scale, bias, silu_mul, residual]: [bool; 4]) -> Epilogue {
    Epilogue {
        scale,
        bias,
        silu_mul,
        residual,
    }
}

fn random_desc(
    (m, n, k): (usize, usize, usize),
    isa: Isa,
    schedule: String,
    epilogue: Epilogue,
    a_transposed: bool,
) -> SgemmDesc {
    SgemmDesc {
        isa,
        schedule: Some(schedule),
        epilogue,
        a_transposed,
        ..SgemmDesc::new(m, n, k)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]
    #[test]
    fn avx512_random_schedules(m in 1..40usize, n in 1..90usize, k in 1..40usize, text in schedule_strategy(16, 6, 4), seed in any::<u64>(), stages in any::<[bool; 4]>(), a_t in any::<bool>()) {
        if Isa::Avx512.available() {
            check(&random_desc((m, n, k), Isa::Avx512, text, epilogue(stages), a_t), seed)?;
        }
    }

    #[test]
    fn avx2_random_schedules(m in 1..30usize, n in 1..50usize, k in 1..30usize, text in schedule_strategy(8, 4, 2), seed in any::<u64>(), stages in any::<[bool; 4]>(), a_t in any::<bool>()) {
        if Isa::Avx2.available() {
            check(&random_desc((m, n, k), Isa::Avx2, text, epilogue(stages), a_t), seed)?;
        }
    }
}

#[test]
fn default_schedules_on_odd_shapes() {
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        if !isa.available() {
            continue;
        }
        for (m, n, k) in [
            (1, 1, 1),
            (1, 577, 33),
            (2, 300, 20),
            (3, 300, 20),
            (4, 300, 20),
            (7, 17, 9),
            (13, 130, 600),
            (64, 64, 64),
            (5, 192, 576),
        ] {
            let desc = SgemmDesc {
                m,
                n,
                k,
                isa,
                schedule: None,
                epilogue: Epilogue::NONE,
                a_transposed: false,
            };
            for a_t in [false, true] {
                check(
                    &SgemmDesc {
                        a_transposed: a_t,
                        ..desc.clone()
                    },
                    7,
                )
                .unwrap();
            }
        }
    }
}

#[test]
fn threads_give_the_same_bits() {
    let (m, n, k) = (37, 200, 50);
    let l = Isa::detect().lanes();
    let desc = SgemmDesc {
        m,
        n,
        k,
        isa: Isa::detect(),
        schedule: Some(format!(
            "n/{}:par m/5 n/{} k/1:u2 m/1:reg n/{l}:reg n/1:vec",
            6 * l,
            3 * l
        )),
        epilogue: Epilogue::NONE,
        a_transposed: false,
    };
    if Isa::detect() == Isa::Portable {
        return;
    }
    let kernel = SgemmKernel::compile(&desc).unwrap();
    let (mut a, mut b) = (vec![0f32; m * k], vec![0f32; k * n]);
    fill(&mut a, 1);
    fill(&mut b, 2);
    let mut c1 = vec![0f32; m * n];
    let mut c3 = vec![1f32; m * n];
    kernel.run(&a, &b, &mut c1).unwrap();
    kernel.run_threads(&a, &b, &mut c3, 3).unwrap();
    assert_eq!(c1, c3);
}

#[test]
fn wrong_buffer_lengths_are_errors() {
    let kernel = SgemmKernel::compile(&SgemmDesc::new(4, 4, 4)).unwrap();
    let err = kernel
        .run(&[0.0; 16], &[0.0; 15], &mut [0.0; 16])
        .unwrap_err();
    assert!(
        err.to_string().contains("expected 16 elements, got 15"),
        "{err}"
    );
}

#[test]
fn oversized_register_tile_is_rejected_before_codegen() {
    let desc = SgemmDesc {
        m: 64,
        n: 64,
        k: 8,
        isa: Isa::Avx512,
        schedule: Some("m/16 k/1 m/1:reg n/16:reg n/1:vec".into()),
        epilogue: Epilogue::NONE,
        a_transposed: false,
    };
    let err = SgemmKernel::compile(&desc)
        .err()
        .expect("16x4 tile does not fit");
    assert!(
        matches!(
            err,
            peregrine_loops::Error::RegisterTileTooLarge {
                needed: 69,
                available: 32,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn epilogue_inputs_must_match_the_kernel() {
    let desc = SgemmDesc {
        m: 2,
        n: 3,
        k: 4,
        isa: Isa::detect(),
        schedule: None,
        epilogue: Epilogue {
            bias: true,
            ..Epilogue::NONE
        },
        a_transposed: false,
    };
    let kernel = SgemmKernel::compile(&desc).unwrap();
    let (a, b) = ([1f32; 8], [1f32; 12]);
    let mut c = [0f32; 6];
    assert!(kernel.run(&a, &b, &mut c).is_err(), "bias missing");
    assert!(
        kernel
            .run_with(&a, &b, Some(&[1.0; 2]), None, &mut c)
            .is_err(),
        "bias too short"
    );
    kernel
        .run_with(&a, &b, Some(&[1.0, 2.0, 3.0]), None, &mut c)
        .unwrap();
    assert_eq!(c, [5.0, 6.0, 7.0, 5.0, 6.0, 7.0]);
}

#[test]
fn default_schedule_compiles_for_every_small_shape() {
    for isa in [Isa::Avx512, Isa::Avx2] {
        if !isa.available() {
            continue;
        }
        for m in 1..=40 {
            for n in [1, 7, 8, 15, 16, 17, 100, 577] {
                // The default tiles leave room for every epilogue (SiLU·mul needs three free
                // vector registers).
                for (k, stages) in [(1, false), (600, false), (600, true)] {
                    let desc = SgemmDesc {
                        isa,
                        epilogue: epilogue([stages; 4]),
                        ..SgemmDesc::new(m, n, k)
                    };
                    SgemmKernel::compile(&desc).unwrap_or_else(|e| {
                        panic!(
                            "{m}x{n}x{k} {isa} epilogue {} `{}`: {e}",
                            desc.epilogue,
                            desc.schedule_text()
                        )
                    });
                }
            }
        }
    }
}
