//! The quantized matmul, compiled from a schedule of `qmatmul`, equals the interpreter under
//! that schedule (and the portable path) bit for bit, for Q4_0, Q4_1 and Q8_0, odd row counts
//! and tiles; each row is identical for every M.

use peregrine_loops::interp::{self, Buffer};
use peregrine_loops::ir::library::qmatmul;
use peregrine_loops::jit::qgemm::qgemm_portable;
use peregrine_loops::quant::quantize_ggml;
use peregrine_loops::{ActsQ8, Isa, PackedWeights, QGemmDesc, QGemmKernel, QuantType};
use proptest::prelude::*;

fn data(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_add(0x9E3779B97F4A7C15);
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        })
        .collect()
}

#[allow(clippy::too_many_arguments)] // one flat list of what a failing case prints
fn case(
    isa: Isa,
    ty: QuantType,
    m: usize,
    n: usize,
    k: usize,
    m_tile: usize,
    n_panels: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let w = quantize_ggml(ty, &data(n * k, seed));
    let x = ActsQ8::quantize(&data(m * k, seed + 1), m, k).unwrap();
    let packed = PackedWeights::pack(ty, n, k, &w).unwrap();
    let desc = QGemmDesc {
        quant: ty,
        m,
        n,
        k,
        m_tile,
        n_panels,
        prefetch_blocks: (seed % 3 == 0).then_some(4),
        isa,
    };
    // The kernel is compiled from its schedule, and the interpreter runs that same schedule.
    let (expr, schedule) = desc.schedule().unwrap();
    prop_assert_eq!(&expr, &qmatmul(ty, m, n, k).unwrap());
    let mut kernel = QGemmKernel::compile_schedule(&expr, &schedule, isa)
        .map_err(|e| TestCaseError::fail(format!("{desc:?}: {e}")))?;
    prop_assert_eq!(
        (kernel.desc().m_tile, kernel.desc().n_panels),
        (m_tile, n_panels)
    );
    if kernel.desc().prefetch_blocks != desc.prefetch_blocks {
        kernel = QGemmKernel::compile(&desc).unwrap();
    }
    let mut y = vec![f32::NAN; m * n];
    kernel.run(&packed, &x, &mut y).unwrap();
    let mut want = vec![0f32; m * n];
    interp::run(
        &expr,
        &schedule,
        &[Buffer::Quant(&w), Buffer::Quant(x.bytes())],
        &mut want,
    )
    .unwrap();
    let mut port = vec![0f32; m * n];
    qgemm_portable(ty, n, k, &w, &x, &mut port);
    for i in 0..m * n {
        prop_assert!(
            y[i].to_bits() == want[i].to_bits(),
            "{desc:?} seed {seed}: y[{i}] = {} but the interpreter gives {}",
            y[i],
            want[i]
        );
        prop_assert!(
            port[i].to_bits() == want[i].to_bits(),
            "portable {desc:?}: y[{i}] = {} vs {}",
            port[i],
            want[i]
        );
    }
    Ok(())
}

fn quant() -> impl Strategy<Value = QuantType> {
    prop_oneof![
        Just(QuantType::Q4_0),
        Just(QuantType::Q4_1),
        Just(QuantType::Q8_0)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn vnni_matches_interpreter(ty in quant(), m in 1..9usize, n in 1..70usize, kb in 1..6usize, m_tile in 1..5usize, n_panels in 1..4usize, seed in any::<u64>()) {
        let regs = m_tile * n_panels * if ty == QuantType::Q4_1 { 2 } else { 1 } + m_tile + 7;
        if Isa::Avx512.available() && regs <= 32 {
            case(Isa::Avx512, ty, m, n, 32 * kb, m_tile, n_panels, seed)?;
        }
    }

    #[test]
    fn avx2_matches_interpreter(ty in quant(), m in 1..6usize, n in 1..70usize, kb in 1..6usize, m_tile in 1..3usize, n_panels in 1..4usize, seed in any::<u64>()) {
        let regs = 2 * m_tile * n_panels * if ty == QuantType::Q4_1 { 2 } else { 1 } + m_tile + 9;
        if Isa::Avx2.available() && regs <= 16 {
            case(Isa::Avx2, ty, m, n, 32 * kb, m_tile, n_panels, seed)?;
        }
    }
}

#[test]
fn rows_are_identical_for_every_m() {
    if !Isa::Avx512.available() {
        return;
    }
    let (n, k) = (48, 128);
    for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        let w = quantize_ggml(ty, &data(n * k, 3));
        let packed = PackedWeights::pack(ty, n, k, &w).unwrap();
        let xs = data(64 * k, 4);
        let one = {
            let x = ActsQ8::quantize(&xs[..k], 1, k).unwrap();
            let mut y = vec![0f32; n];
            QGemmKernel::compile(&QGemmDesc::new(ty, 1, n, k))
                .unwrap()
                .run(&packed, &x, &mut y)
                .unwrap();
            y
        };
        for m in [2, 3, 5, 17, 64] {
            let x = ActsQ8::quantize(&xs[..m * k], m, k).unwrap();
            let mut y = vec![0f32; m * n];
            QGemmKernel::compile(&QGemmDesc::new(ty, m, n, k))
                .unwrap()
                .run(&packed, &x, &mut y)
                .unwrap();
            assert_eq!(
                &y[..n],
                &one[..],
                "{ty} row 0 differs between M = 1 and M = {m}"
            );
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    let err = PackedWeights::pack(QuantType::Q4_1, 4, 40, &[0u8; 100])
        .err()
        .unwrap();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    if Isa::Avx512.available() {
        let desc = QGemmDesc {
            quant: QuantType::Q4_1,
            m: 8,
            n: 64,
            k: 64,
            m_tile: 8,
            n_panels: 4,
            prefetch_blocks: None,
            isa: Isa::Avx512,
        };
        assert!(matches!(
            QGemmKernel::compile(&desc),
            Err(peregrine_loops::Error::RegisterTileTooLarge { .. })
        ));
    }
}

#[test]
fn threads_give_the_same_bits() {
    if !Isa::Avx512.available() {
        return;
    }
    for (ty, m, n, k) in [
        (QuantType::Q4_1, 1, 1000, 64),
        (QuantType::Q8_0, 3, 37, 96),
        (QuantType::Q4_0, 5, 300, 32),
    ] {
        let w = quantize_ggml(ty, &data(n * k, 8));
        let packed = PackedWeights::pack(ty, n, k, &w).unwrap();
        let x = ActsQ8::quantize(&data(m * k, 9), m, k).unwrap();
        let kernel = QGemmKernel::compile(&QGemmDesc::new(ty, m, n, k)).unwrap();
        let mut y1 = vec![0f32; m * n];
        kernel.run(&packed, &x, &mut y1).unwrap();
        for threads in [2, 3, 7] {
            let mut y2 = vec![f32::NAN; m * n];
            kernel.run_threads(&packed, &x, &mut y2, threads).unwrap();
            assert_eq!(
                y1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                y2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{ty} {m}x{n}x{k} threads {threads}"
            );
        }
    }
}

#[test]
fn avx2_default_tiles_on_odd_shapes() {
    if !Isa::Avx2.available() {
        return;
    }
    for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        for (m, n, k) in [(1, 37, 64), (3, 100, 96), (2, 8, 32), (1, 16, 576)] {
            let d = QGemmDesc {
                isa: Isa::Avx2,
                ..QGemmDesc::new(ty, m, n, k)
            };
            let d = QGemmDesc {
                m_tile: 1,
                n_panels: if ty == QuantType::Q4_1 { 1 } else { 3 },
                ..d
            };
            case(Isa::Avx2, ty, m, n, k, d.m_tile, d.n_panels, 11).unwrap();
        }
    }
}
