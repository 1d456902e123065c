//! Throughput of `linear` forward + backward on the tape at the EAGLE-3 `fc`-like shape
//! `x[1024, 1152] · w[576, 1152]ᵀ` (6·M·N·K flops: forward, `dx`, `dw`), per backend and
//! thread count. Run: `cargo run --release -p peregrine-train --example linear_speed`.

use peregrine_train::{Compute, MatmulBackend, ParamStore, Tape, Tensor};
use std::time::Instant;

fn main() -> peregrine_train::Result<()> {
    peregrine_train::keep_freed_memory();
    let (m, n, k) = (1024usize, 576usize, 1152usize);
    let x = Tensor::matrix(
        m,
        k,
        (0..m * k).map(|i| ((i * 7) % 13) as f32 * 0.01).collect(),
    )?;
    let mut store = ParamStore::new();
    let w = store.insert(
        "w",
        Tensor::matrix(
            n,
            k,
            (0..n * k).map(|i| ((i * 5) % 11) as f32 * 0.01).collect(),
        )?,
        true,
    )?;
    let seed = vec![1e-3f32; m * n];
    let flops = 2.0 * (m * n * k) as f64;
    for backend in [MatmulBackend::Auto, MatmulBackend::Gemm] {
        for threads in [1, 2] {
            let cx = Compute::with_backend(threads, backend);
            let reps = 20;
            let (mut t_fwd, mut t_bwd) = (0.0, 0.0);
            for rep in 0..reps + 2 {
                let mut tape = Tape::new(&store, &cx);
                let xv = tape.input(x.clone());
                let wv = tape.param(w);
                let t0 = Instant::now();
                let y = tape.linear(xv, wv, None)?;
                let t1 = Instant::now();
                let g = tape.backward_with(y, &seed)?;
                let t2 = Instant::now();
                assert!(g.input(xv).is_some() && g.params.get(w).is_some());
                if rep >= 2 {
                    t_fwd += (t1 - t0).as_secs_f64();
                    t_bwd += (t2 - t1).as_secs_f64();
                }
            }
            let (t_fwd, t_bwd) = (t_fwd / reps as f64, t_bwd / reps as f64);
            println!(
                "linear [{m}x{k}]·[{n}x{k}]ᵀ {backend:?} {threads} thread(s): fwd {:.1} GFLOP/s ({:.2} ms), bwd {:.1} GFLOP/s ({:.2} ms), fwd+bwd {:.1} GFLOP/s",
                flops / t_fwd / 1e9,
                t_fwd * 1e3,
                2.0 * flops / t_bwd / 1e9,
                t_bwd * 1e3,
                3.0 * flops / (t_fwd + t_bwd) / 1e9
            );
        }
    }
    // The bare JIT kernels on pre-transposed operands, for the wrapper's overhead.
    let cache = peregrine_loops::KernelCache::new();
    for threads in [1, 2] {
        let mut total = 0.0;
        for (mm, nn, kk) in [(m, n, k), (m, k, n), (n, k, m)] {
            let a = vec![0.01f32; mm * kk];
            let b = vec![0.02f32; kk * nn];
            let mut c = vec![0f32; mm * nn];
            let kern = cache.sgemm(&peregrine_loops::SgemmDesc::new(mm, nn, kk))?;
            kern.run_threads(&a, &b, &mut c, threads)?;
            let reps = 20;
            let t0 = Instant::now();
            for _ in 0..reps {
                kern.run_threads(&a, &b, &mut c, threads)?;
            }
            total += t0.elapsed().as_secs_f64() / reps as f64;
        }
        println!(
            "bare JIT sgemm, the same three products, {threads} thread(s): {:.1} GFLOP/s ({:.2} ms)",
            3.0 * flops / total / 1e9,
            total * 1e3
        );
    }
    Ok(())
}
