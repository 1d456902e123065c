//! The engine's quantized matmuls on SmolLM2-135M shapes, 2 threads: 30 layers of Q4_1 weights
//! (fused QKV, O, fused gate/up, down; 66 MB, so they stream from memory as in a forward) for
//! M = 1..512 activation rows, and the Q8_0 LM head for M = 1. Throughput is rows (tokens).
//! `cargo bench -p peregrine-tensor --bench matmul`.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use peregrine_tensor::qdot::QuantKind;
use peregrine_tensor::{matmul, MatmulScratch, MatmulTarget, PackedMatrix, ThreadPool, Weights};
use std::time::Duration;

const HIDDEN: usize = 576;
const KV: usize = 192;
const FFN: usize = 1536;
const LAYERS: usize = 30;

/// Random blocks with small f16 scales (values do not change the speed).
fn random_packed(kind: QuantKind, n_rows: usize, n_cols: usize, seed: u64) -> PackedMatrix {
    let bb = kind.block_bytes();
    let row_bytes = n_cols / 32 * bb;
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data: Vec<u8> = (0..n_rows * row_bytes)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect();
    for blk in data.chunks_mut(bb) {
        blk[..2].copy_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
        if kind == QuantKind::Q4_1 {
            blk[2..4].copy_from_slice(&half::f16::from_f32(-0.05).to_le_bytes());
        }
    }
    PackedMatrix::pack(kind, n_rows, n_cols, |r| {
        &data[r * row_bytes..(r + 1) * row_bytes]
    })
}

struct Layer {
    q: PackedMatrix,
    k: PackedMatrix,
    v: PackedMatrix,
    o: PackedMatrix,
    gate: PackedMatrix,
    up: PackedMatrix,
    down: PackedMatrix,
}

fn layers(c: &mut Criterion) {
    let kind = QuantKind::Q4_1;
    let layers: Vec<Layer> = (0..LAYERS as u64)
        .map(|l| Layer {
            q: random_packed(kind, HIDDEN, HIDDEN, 7 * l + 1),
            k: random_packed(kind, KV, HIDDEN, 7 * l + 2),
            v: random_packed(kind, KV, HIDDEN, 7 * l + 3),
            o: random_packed(kind, HIDDEN, HIDDEN, 7 * l + 4),
            gate: random_packed(kind, FFN, HIDDEN, 7 * l + 5),
            up: random_packed(kind, FFN, HIDDEN, 7 * l + 6),
            down: random_packed(kind, HIDDEN, FFN, 7 * l + 7),
        })
        .collect();
    let pool = ThreadPool::new(2);
    let mut scratch = MatmulScratch::new(2, FFN);
    let mut g = c.benchmark_group("layers_q4_1");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    for m in [1usize, 2, 4, 8, 16, 64, 512] {
        let x: Vec<f32> = (0..m * FFN)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.02)
            .collect();
        let (xh, xf) = (&x[..m * HIDDEN], &x[..m * FFN]);
        let mut o1 = vec![0f32; m * HIDDEN];
        let mut o2 = vec![0f32; m * KV];
        let mut o3 = vec![0f32; m * KV];
        let mut f1 = vec![0f32; m * FFN];
        let mut f2 = vec![0f32; m * FFN];
        g.throughput(Throughput::Elements(m as u64));
        g.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter(|| {
                for l in &layers {
                    let mut qkv = [
                        MatmulTarget {
                            w: Weights::Packed(&l.q),
                            out: &mut o1,
                        },
                        MatmulTarget {
                            w: Weights::Packed(&l.k),
                            out: &mut o2,
                        },
                        MatmulTarget {
                            w: Weights::Packed(&l.v),
                            out: &mut o3,
                        },
                    ];
                    matmul(&pool, &mut scratch, xh, m, &mut qkv).unwrap();
                    let mut o = [MatmulTarget {
                        w: Weights::Packed(&l.o),
                        out: &mut o1,
                    }];
                    matmul(&pool, &mut scratch, xh, m, &mut o).unwrap();
                    let mut gu = [
                        MatmulTarget {
                            w: Weights::Packed(&l.gate),
                            out: &mut f1,
                        },
                        MatmulTarget {
                            w: Weights::Packed(&l.up),
                            out: &mut f2,
                        },
                    ];
                    matmul(&pool, &mut scratch, xh, m, &mut gu).unwrap();
                    let mut d = [MatmulTarget {
                        w: Weights::Packed(&l.down),
                        out: &mut o1,
                    }];
                    matmul(&pool, &mut scratch, xf, m, &mut d).unwrap();
                }
            })
        });
    }
    g.finish();
}

fn head(c: &mut Criterion) {
    let vocab = 49152;
    let lm = random_packed(QuantKind::Q8_0, vocab, HIDDEN, 99);
    let pool = ThreadPool::new(2);
    let mut scratch = MatmulScratch::new(2, HIDDEN);
    let x: Vec<f32> = (0..HIDDEN).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    let mut out = vec![0f32; vocab];
    let mut g = c.benchmark_group("head_q8_0");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(lm.len_bytes() as u64));
    g.bench_function("m1", |b| {
        b.iter(|| {
            let mut t = [MatmulTarget {
                w: Weights::Packed(&lm),
                out: &mut out,
            }];
            matmul(&pool, &mut scratch, &x, 1, &mut t).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, layers, head);
criterion_main!(benches);
