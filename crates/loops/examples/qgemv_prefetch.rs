//! Cold-weight quantized GEMV bandwidth with and without software prefetch, alternating
//! in one run: `cargo run --release -p peregrine-loops --example qgemv_prefetch -- q4_1 1536 576`.

use peregrine_loops::quant::quantize_ggml;
use peregrine_loops::{ActsQ8, PackedWeights, QGemmDesc, QGemmKernel, QuantType};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ty = QuantType::parse(args.get(1).map_or("q4_1", |s| s)).expect("q4_0, q4_1 or q8_0");
    let n: usize = args.get(2).map_or(1536, |s| s.parse().expect("n"));
    let k: usize = args.get(3).map_or(576, |s| s.parse().expect("k"));
    let w: Vec<f32> = (0..n * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let ggml = quantize_ggml(ty, &w);
    let one = PackedWeights::pack(ty, n, k, &ggml).unwrap();
    let n_copies = (128usize << 20).div_ceil(one.len_bytes()).clamp(1, 64);
    let copies: Vec<PackedWeights> = (0..n_copies)
        .map(|_| PackedWeights::pack(ty, n, k, &ggml).unwrap())
        .collect();
    let x = ActsQ8::quantize(&vec![0.25f32; k], 1, k).unwrap();
    let mut y = vec![0f32; n];
    for round in 0..3 {
        for pf in [None, Some(1), Some(2), Some(4), Some(8)] {
            let mut desc = QGemmDesc::new(ty, 1, n, k);
            desc.prefetch_blocks = pf;
            let kernel = QGemmKernel::compile(&desc).unwrap();
            let mut best = f64::INFINITY;
            let mut idx = 0;
            for _ in 0..21 {
                let t = Instant::now();
                for _ in 0..20 {
                    idx = (idx + 1) % copies.len();
                    kernel.run(&copies[idx], &x, &mut y).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64() / 20.0);
            }
            println!(
                "round {round} {ty} 1x{n}x{k} prefetch {pf:?}: {:.1} GB/s",
                one.len_bytes() as f64 / best / 1e9
            );
        }
    }
}
