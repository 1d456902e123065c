//! The float-weight matmul (f32, f16, bf16 weights), compiled from a schedule of `matmul_wt`,
//! equals the interpreter under that schedule and the portable twin bit for bit, on every ISA
//! this CPU has, for any k (not only multiples of 16), row counts that are not multiples of 16
//! and random register tiles; any split of the panels gives the same bits, each row is
//! identical for every M, activations and outputs end at a guard page, and schedules outside
//! the generator's family, oversized tiles and bad buffers are errors, never panics.

use half::{bf16, f16};
use peregrine_loops::interp::{self, Buffer};
use peregrine_loops::ir::library::matmul_wt;
use peregrine_loops::jit::fgemm::{fgemm_panels_portable, fgemm_portable};
use peregrine_loops::{
    Error, FGemmDesc, FGemmKernel, FloatType, Isa, PackedFloatWeights, Schedule,
};
use proptest::prelude::*;

mod common;
use common::{assert_bits, guarded, isas, Rng};

/// Weights of type `ty`: their little-endian bytes (what `pack` takes) and the interpreter's
/// typed copy.
struct Weights {
    bytes: Vec<u8>,
    f32s: Vec<f32>,
    f16s: Vec<f16>,
    bf16s: Vec<bf16>,
    ty: FloatType,
}

impl Weights {
    fn random(ty: FloatType, len: usize, rng: &mut Rng) -> Self {
        let v: Vec<f32> = (0..len).map(|_| rng.f(2.0)).collect();
        let f16s: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let bf16s: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let bytes = match ty {
            FloatType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            FloatType::F16 => f16s.iter().flat_map(|x| x.to_le_bytes()).collect(),
            FloatType::Bf16 => bf16s.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        Weights {
            bytes,
            f32s: v,
            f16s,
            bf16s,
            ty,
        }
    }
    fn buffer(&self) -> Buffer<'_> {
        match self.ty {
            FloatType::F32 => Buffer::F32(&self.f32s),
            FloatType::F16 => Buffer::F16(&self.f16s),
            FloatType::Bf16 => Buffer::Bf16(&self.bf16s),
        }
    }
}

/// Whether the vector registers a tile needs (what `compile` checks) fit, to draw only tiles
/// that do: accumulators and weight vectors, plus one broadcast register on AVX2.
fn fits(isa: Isa, m_tile: usize, n_panels: usize) -> bool {
    let (vectors, broadcast) = match isa {
        Isa::Avx512 => (1, 0),
        _ => (2, 1),
    };
    let needed = vectors * (m_tile * n_panels + n_panels) + broadcast;
    needed <= isa.n_vregs()
}

/// The largest panel count up to `n_panels` whose tile fits (every drawn case runs).
fn fitting(isa: Isa, m_tile: usize, n_panels: usize) -> usize {
    (1..=n_panels)
        .rev()
        .find(|&p| fits(isa, m_tile, p))
        .unwrap_or(1)
}

#[allow(clippy::too_many_arguments)] // one flat list of what a failing case prints
fn case(
    isa: Isa,
    ty: FloatType,
    m: usize,
    n: usize,
    k: usize,
    m_tile: usize,
    n_panels: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed);
    let w = Weights::random(ty, n * k, &mut rng);
    let x: Vec<f32> = (0..m * k).map(|_| rng.f(1.0)).collect();
    let packed = PackedFloatWeights::pack(ty, n, k, &w.bytes).unwrap();
    let desc = FGemmDesc {
        ty,
        m,
        n,
        k,
        m_tile,
        n_panels,
        isa,
    };
    let ctx = format!("{desc:?} seed {seed}");
    // The kernel is compiled from its schedule, and the interpreter runs that same schedule.
    let (expr, schedule) = desc.schedule().unwrap();
    prop_assert_eq!(&expr, &matmul_wt(ty, m, n, k).unwrap());
    let kernel = FGemmKernel::compile_schedule(&expr, &schedule, isa)
        .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
    prop_assert_eq!(kernel.desc(), &desc);
    let mut want = vec![0f32; m * n];
    interp::run(&expr, &schedule, &[Buffer::F32(&x), w.buffer()], &mut want).unwrap();

    // Activations and outputs end at a guard page: a read or write past them faults.
    let xg = guarded(&x);
    let mut y = guarded(&vec![f32::NAN; m * n]);
    kernel
        .run(&packed, xg.as_slice(), y.as_mut_slice())
        .unwrap();
    assert_bits(y.as_slice(), &want, &format!("jit vs interpreter, {ctx}"));

    let mut port = vec![f32::NAN; m * n];
    fgemm_portable(&packed, &x, &mut port).unwrap();
    assert_bits(&port, &want, &format!("portable vs interpreter, {ctx}"));

    // Any split of the panels at group boundaries gives the same bits.
    let n_groups = packed.n_panels().div_ceil(n_panels);
    let cut = (rng.next() as usize % (n_groups + 1) * n_panels).min(packed.n_panels());
    let mut split = guarded(&vec![f32::NAN; m * n]);
    for range in [cut..packed.n_panels(), 0..cut] {
        // SAFETY: `split` holds `m * n` floats; one call at a time.
        unsafe {
            kernel.run_panels(
                &packed,
                xg.as_slice(),
                m,
                split.as_mut_slice().as_mut_ptr(),
                range,
            )
        }
        .unwrap();
    }
    assert_bits(
        split.as_slice(),
        &want,
        &format!("run_panels cut at {cut}, {ctx}"),
    );
    Ok(())
}

fn float_type() -> impl Strategy<Value = FloatType> {
    prop_oneof![
        Just(FloatType::F32),
        Just(FloatType::F16),
        Just(FloatType::Bf16)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn avx512_matches_interpreter(ty in float_type(), m in 1..9usize, n in 1..70usize, k in 1..100usize, m_tile in 1..8usize, n_panels in 1..6usize, seed in any::<u64>()) {
        if Isa::Avx512.available() {
            case(Isa::Avx512, ty, m, n, k, m_tile, fitting(Isa::Avx512, m_tile, n_panels), seed)?;
        }
    }

    #[test]
    fn avx2_matches_interpreter(ty in float_type(), m in 1..9usize, n in 1..70usize, k in 1..100usize, m_tile in 1..4usize, n_panels in 1..4usize, seed in any::<u64>()) {
        if Isa::Avx2.available() {
            case(Isa::Avx2, ty, m, n, k, m_tile, fitting(Isa::Avx2, m_tile, n_panels), seed)?;
        }
    }
}

#[test]
fn default_tiles_on_odd_shapes() {
    for isa in isas() {
        for ty in [FloatType::F32, FloatType::F16, FloatType::Bf16] {
            for (m, n, k) in [
                (1, 37, 64),
                (3, 100, 5),
                (2, 8, 1),
                (6, 16, 33),
                (7, 129, 17),
            ] {
                let d = FGemmDesc::for_isa(ty, m, n, k, isa);
                case(isa, ty, m, n, k, d.m_tile, d.n_panels, 11).unwrap();
            }
        }
    }
}

#[test]
fn rows_are_identical_for_every_m() {
    let (n, k) = (53, 77);
    let mut rng = Rng(3);
    let xs: Vec<f32> = (0..64 * k).map(|_| rng.f(1.0)).collect();
    for isa in isas() {
        for ty in [FloatType::F32, FloatType::F16, FloatType::Bf16] {
            let w = Weights::random(ty, n * k, &mut rng);
            let packed = PackedFloatWeights::pack(ty, n, k, &w.bytes).unwrap();
            let one = FGemmKernel::compile(&FGemmDesc::for_isa(ty, 1, n, k, isa)).unwrap();
            let rows_alone: Vec<Vec<f32>> = (0..64)
                .map(|r| {
                    let mut y = vec![0f32; n];
                    one.run(&packed, &xs[r * k..(r + 1) * k], &mut y).unwrap();
                    y
                })
                .collect();
            for m in [2, 5, 17, 64] {
                // Each M gets its own default tile, and the M = 1 kernel runs M rows too.
                for desc in [FGemmDesc::for_isa(ty, m, n, k, isa), one.desc().clone()] {
                    let kernel = FGemmKernel::compile(&desc).unwrap();
                    let mut y = vec![f32::NAN; m * n];
                    kernel.run(&packed, &xs[..m * k], &mut y).unwrap();
                    for (r, alone) in rows_alone.iter().enumerate().take(m) {
                        assert_bits(
                            &y[r * n..(r + 1) * n],
                            alone,
                            &format!(
                                "{ty} {isa} row {r} at M = {m} ({}x{} tile)",
                                desc.m_tile, desc.n_panels
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn threads_give_the_same_bits() {
    let mut rng = Rng(8);
    for isa in isas() {
        for (ty, m, n, k) in [
            (FloatType::F16, 1, 1000, 64),
            (FloatType::Bf16, 3, 37, 96),
            (FloatType::F32, 5, 300, 31),
        ] {
            let w = Weights::random(ty, n * k, &mut rng);
            let packed = PackedFloatWeights::pack(ty, n, k, &w.bytes).unwrap();
            let x: Vec<f32> = (0..m * k).map(|_| rng.f(1.0)).collect();
            let kernel = FGemmKernel::compile(&FGemmDesc::for_isa(ty, m, n, k, isa)).unwrap();
            let mut y1 = vec![0f32; m * n];
            kernel.run(&packed, &x, &mut y1).unwrap();
            for threads in [2, 3, 7] {
                let mut y2 = vec![f32::NAN; m * n];
                kernel.run_threads(&packed, &x, &mut y2, threads).unwrap();
                assert_bits(
                    &y2,
                    &y1,
                    &format!("{ty} {isa} {m}x{n}x{k} threads {threads}"),
                );
            }
            // The portable twin over any panel ranges, too.
            let mut y3 = vec![f32::NAN; m * n];
            let cut = packed.n_panels() / 3;
            for range in [cut..packed.n_panels(), 0..cut] {
                fgemm_panels_portable(&packed, &x, &mut y3, range).unwrap();
            }
            assert_bits(&y3, &y1, &format!("{ty} {isa} portable panels"));
        }
    }
}

#[test]
fn schedules_outside_the_family_are_errors() {
    let (ty, m, n, k) = (FloatType::F16, 4, 40, 24);
    let isa = Isa::Avx512;
    let text = |t: &str| FGemmDesc::from_schedule_text(ty, m, n, k, isa, t);
    for bad in [
        "m/1 n/1 k/1",
        "k/1 n/16 m/1 n/1:vec",
        "n/24 m/2 k/1 m/1:reg n/1:vec",
        "n/32 m/2 k/2 k/1 m/1:reg n/16:reg n/1:vec",
        "n/32 m/2 k/1 n/16:reg m/1:reg n/1:vec",
        "n/32 m/2 k/1 m/1:reg n/16:reg n/1:vec pack:w@1",
        "n/32 m/2 k/1 m/1:reg n/16:reg n/1:u2",
        "n/32 m/2 k/1:u4 m/1:reg n/16:reg n/1:vec",
    ] {
        let err = text(bad).expect_err(bad);
        assert!(
            matches!(
                err,
                Error::Unsupported {
                    backend: "fgemm",
                    ..
                }
            ),
            "{bad}: {err}"
        );
    }
    // Invalid schedules are the schedule's own errors.
    assert!(matches!(
        text("n/32 m/2 k/1 m/1:reg n/16:reg"),
        Err(Error::MissingVar { .. })
    ));
    assert!(matches!(text("n/32 m/x"), Err(Error::ParseSchedule { .. })));
    // The message says what the generator emits.
    let err = text("k/1 n/16 m/1 n/1:vec").unwrap_err().to_string();
    assert!(err.contains("n/S m/T k/1"), "{err}");
    let expr = matmul_wt(ty, m, n, k).unwrap();
    let desc = FGemmDesc {
        m_tile: 2,
        n_panels: 3,
        ..FGemmDesc::for_isa(ty, m, n, k, isa)
    };
    let mut s = desc.schedule().unwrap().1;
    s.nodes[2].fusion = None;
    let err = FGemmDesc::from_schedule(&expr, &s, isa)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node %2: the float-weight generator emits `n/48 m/2 k/1 m/1:reg n/16:reg n/1:vec @%3/3`"),
        "{err}"
    );
    // A naive schedule is valid, but not what the generator emits.
    assert!(matches!(
        FGemmDesc::from_schedule(&expr, &Schedule::naive(&expr), isa),
        Err(Error::Unsupported { .. })
    ));
    // Another expression is refused, whatever its schedule.
    let other = peregrine_loops::ir::library::matmul(m, n, k).unwrap();
    assert!(matches!(
        FGemmDesc::from_schedule(&other, &Schedule::naive(&other), isa),
        Err(Error::Unsupported { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn random_schedule_text_never_panics(m in 1..6usize, n in 1..40usize, k in 1..20usize, toks in prop::collection::vec(prop_oneof![
        Just("n/16"), Just("n/32"), Just("n/48"), Just("m/1"), Just("m/2"), Just("m/3"), Just("k/1"), Just("k/4"),
        Just("m/1:reg"), Just("n/16:reg"), Just("n/1:vec"), Just("n/1"), Just("n/0"), Just("m/0"), Just("k/1:par"),
        Just("n/32:par"), Just("@%3/3"), Just("pack:x@0"), Just("bogus"),
    ], 0..8)) {
        let text = toks.join(" ");
        for isa in [Isa::Avx512, Isa::Avx2] {
            if let Ok(desc) = FGemmDesc::from_schedule_text(FloatType::Bf16, m, n, k, isa, &text) {
                // What is accepted compiles or is refused with an error, never a panic.
                if isa.available() {
                    let _ = FGemmKernel::compile(&desc);
                }
            }
        }
    }
}

#[test]
fn bad_tiles_shapes_and_buffers_are_errors() {
    let isa = if Isa::Avx512.available() {
        Isa::Avx512
    } else {
        Isa::Avx2
    };
    let d = FGemmDesc::for_isa(FloatType::F16, 8, 64, 32, isa);
    let too_big = FGemmDesc {
        m_tile: 8,
        n_panels: 4,
        ..d.clone()
    };
    assert!(matches!(
        FGemmKernel::compile(&too_big),
        Err(Error::RegisterTileTooLarge { .. })
    ));
    assert!(matches!(
        FGemmKernel::compile(&FGemmDesc {
            m_tile: 0,
            ..d.clone()
        }),
        Err(Error::RegisterTileTooLarge { .. })
    ));
    for (m, n, k) in [(0, 64, 32), (8, 0, 32), (8, 64, 0)] {
        assert!(matches!(
            FGemmKernel::compile(&FGemmDesc {
                m,
                n,
                k,
                ..d.clone()
            }),
            Err(Error::BadShape { .. })
        ));
    }
    assert!(matches!(
        FGemmKernel::compile(&FGemmDesc {
            isa: Isa::Portable,
            ..d.clone()
        }),
        Err(Error::Unsupported { .. })
    ));
    let huge = FGemmDesc {
        k: 1 << 28,
        ..d.clone()
    };
    assert!(matches!(
        FGemmKernel::compile(&huge),
        Err(Error::BadShape { .. })
    ));
    if !isa.available() {
        return;
    }
    let kernel = FGemmKernel::compile(&d).unwrap();
    let packed = PackedFloatWeights::pack(FloatType::F16, 64, 32, &[0; 64 * 32 * 2]).unwrap();
    let other = PackedFloatWeights::pack(FloatType::Bf16, 64, 32, &[0; 64 * 32 * 2]).unwrap();
    let x = vec![0f32; 3 * 32];
    let mut y = vec![0f32; 3 * 64];
    kernel.run(&packed, &x, &mut y).unwrap();
    assert!(matches!(
        kernel.run(&other, &x, &mut y),
        Err(Error::BadShape { .. })
    ));
    assert!(matches!(
        kernel.run(&packed, &x[..95], &mut y),
        Err(Error::BadShape { .. })
    ));
    assert!(matches!(
        kernel.run(&packed, &x, &mut y[..190]),
        Err(Error::BufferLen {
            want: 192,
            got: 190,
            ..
        })
    ));
    assert!(matches!(
        kernel.run_threads(&packed, &x[..64], &mut y, 2),
        Err(Error::BufferLen { .. })
    ));
    // No rows: nothing to do.
    kernel.run(&packed, &[], &mut []).unwrap();
    // SAFETY: every call below is refused before the code runs, or writes within `y`.
    unsafe {
        let p = y.as_mut_ptr();
        assert!(matches!(
            kernel.run_panels(&packed, &x, 2, p, 0..4),
            Err(Error::BufferLen { .. })
        ));
        assert!(matches!(
            kernel.run_panels(&packed, &x, 3, p, 1..4),
            Err(Error::BadShape { .. })
        ));
        assert!(matches!(
            kernel.run_panels(&packed, &x, 3, p, 0..5),
            Err(Error::BadShape { .. })
        ));
        kernel.run_panels(&packed, &x, 3, p, 4..4).unwrap();
    }
    let mut short = vec![0f32; 10];
    assert!(fgemm_portable(&packed, &x, &mut short).is_err());
    assert!(fgemm_panels_portable(&packed, &x, &mut y, 2..5).is_err());
}
