//! Batch invariance of the quantized matmul (DESIGN.md §2) through the engine's entry point:
//! every output row is bit-identical for M = 1..512, any thread count, fused or alone, and on
//! the compiled (`loops` JIT) and portable paths.

use half::f16;
use peregrine_tensor::qdot::QuantKind;
use peregrine_tensor::{matmul, MatmulScratch, MatmulTarget, PackedMatrix, ThreadPool, Weights};
use rand::{Rng, SeedableRng};

fn packed(kind: QuantKind, n_rows: usize, k: usize, seed: u64) -> PackedMatrix {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let bb = kind.block_bytes();
    let row_bytes = k / 32 * bb;
    let mut rows = vec![0u8; n_rows * row_bytes];
    rng.fill(&mut rows[..]);
    for blk in rows.chunks_mut(bb) {
        blk[..2].copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
        if kind == QuantKind::Q4_1 {
            blk[2..4].copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
        }
    }
    PackedMatrix::pack(kind, n_rows, k, |r| {
        &rows[r * row_bytes..(r + 1) * row_bytes]
    })
}

/// `x · wᵀ` for two fused targets, with `threads` workers on the compiled or portable path.
fn run(threads: usize, jit: bool, ws: [&PackedMatrix; 2], x: &[f32], m: usize) -> [Vec<f32>; 2] {
    let k = ws[0].n_cols();
    let pool = ThreadPool::new(threads);
    let mut scratch = MatmulScratch::with_isa(threads, k, jit);
    let mut a = vec![f32::NAN; m * ws[0].n_rows()];
    let mut b = vec![f32::NAN; m * ws[1].n_rows()];
    let mut targets = [
        MatmulTarget {
            w: Weights::Packed(ws[0]),
            out: &mut a,
        },
        MatmulTarget {
            w: Weights::Packed(ws[1]),
            out: &mut b,
        },
    ];
    matmul(&pool, &mut scratch, &x[..m * k], m, &mut targets).unwrap();
    [a, b]
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn rows_are_identical_for_every_m_thread_count_and_path() {
    let k = 576;
    for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
        // 320 rows: big and small chunks; 37: a partial panel at the end of the fused call.
        let (w0, w1) = (packed(kind, 320, k, 1), packed(kind, 37, k, 2));
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let x: Vec<f32> = (0..512 * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let full = run(2, true, [&w0, &w1], &x, 512);
        for m in [1, 2, 3, 7, 8, 9, 16, 64] {
            for threads in [1, 2, 3] {
                for jit in [true, false] {
                    let got = run(threads, jit, [&w0, &w1], &x, m);
                    for (g, f) in got.iter().zip(&full) {
                        assert_eq!(
                            bits(g),
                            bits(&f[..g.len()]),
                            "{kind:?} M={m} threads={threads} jit={jit}"
                        );
                    }
                }
            }
        }
    }
}
