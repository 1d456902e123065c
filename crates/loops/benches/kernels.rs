//! Micro-benchmarks: sgemm (GFLOP/s via elements = flops), quantized GEMV (GB/s of weights),
//! and JIT compile time. End-to-end comparisons with peers: `scripts/bench-sgemm-peers` and
//! `peregrine kernels bench`.
#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use peregrine_loops::quant::quantize_ggml;
use peregrine_loops::{
    ActsQ8, Isa, PackedWeights, QGemmDesc, QGemmKernel, QuantType, SgemmDesc, SgemmKernel,
};

fn sgemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("sgemm");
    for (m, n, k) in [(128, 128, 128), (16, 576, 576), (1, 1536, 576)] {
        let kernel = SgemmKernel::compile(&SgemmDesc::new(m, n, k)).unwrap();
        let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; k * n]);
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        g.bench_function(format!("{m}x{n}x{k}_{}", Isa::detect()), |bch| {
            bch.iter(|| kernel.run(&a, &b, &mut out).unwrap())
        });
    }
    g.finish();
}

fn qgemv(c: &mut Criterion) {
    if !Isa::Avx512.available() {
        return;
    }
    let mut g = c.benchmark_group("qgemv");
    let (n, k) = (1536, 576);
    for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        let w: Vec<f32> = (0..n * k).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
        let packed = PackedWeights::pack(ty, n, k, &quantize_ggml(ty, &w)).unwrap();
        let x = ActsQ8::quantize(&vec![0.3f32; k], 1, k).unwrap();
        let kernel = QGemmKernel::compile(&QGemmDesc::new(ty, 1, n, k)).unwrap();
        let mut y = vec![0f32; n];
        g.throughput(Throughput::Bytes(packed.len_bytes() as u64));
        g.bench_function(format!("gemv_{ty}_q8act_{n}x{k}_warm"), |b| {
            b.iter(|| kernel.run(&packed, &x, &mut y).unwrap())
        });
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    c.bench_function("jit_compile_sgemm_128x128x128", |b| {
        b.iter(|| SgemmKernel::compile(&SgemmDesc::new(128, 128, 128)).unwrap())
    });
}

criterion_group!(benches, sgemm, qgemv, compile);
criterion_main!(benches);
