//! Time of one EAGLE-3 TTT forward + backward for a SmolLM2-135M-shaped head (H 576, 9/3
//! heads, I 1536) on random data. Run:
//! `cargo run --release -p peregrine-train --example ttt_speed -- [T=512] [Vd=8192] [threads=2] [steps=5] [gemm]`
//! (`gemm` forces the `gemm` crate for every product instead of the JIT sgemm).

use peregrine_train::{
    Compute, Eagle3Config, Eagle3Head, MatmulBackend, Tape, TttConfig, TttSequence,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

fn main() -> peregrine_train::Result<()> {
    peregrine_train::keep_freed_memory();
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (t, vd, threads, steps) = (arg(0, 512), arg(1, 8192), arg(2, 2), arg(3, 5));
    let config = Eagle3Config {
        hidden: 576,
        n_heads: 9,
        n_kv_heads: 3,
        intermediate: 1536,
        draft_vocab: vd,
        rms_norm_eps: 1e-5,
        rope_theta: 100000.0,
    };
    let h = config.hidden;
    let mut rng = StdRng::seed_from_u64(1);
    let mut head = Eagle3Head::init(config, &mut rng, None, None)?;
    let mut r = |n: usize| {
        (0..n)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect::<Vec<_>>()
    };
    let f = r(t * 3 * h);
    let e = r((t + steps) * h);
    let mut p: Vec<f32> = r((t + steps) * vd).iter().map(|x| x.abs()).collect();
    for row in p.chunks_mut(vd) {
        let s: f32 = row.iter().sum();
        row.iter_mut().for_each(|x| *x /= s);
    }
    let w = vec![1.0f32; t + steps];
    let seq = TttSequence {
        features: &f,
        embeddings: &e,
        target_probs: &p,
        loss_mask: &w,
    };
    let backend = if std::env::args().any(|a| a == "gemm") {
        MatmulBackend::Gemm
    } else {
        MatmulBackend::Auto
    };
    let cx = Compute::with_backend(threads, backend);
    let ttt = TttConfig {
        steps,
        step_decay: 0.8,
    };
    // Multiply-adds of the linears per row and step (fc once per row), ×2 flops, ×3 for
    // forward + backward.
    let (q, kv, i) = (h, 3 * 64, 1536);
    let per_row_step = 2 * h * (q + 2 * kv) + q * h + 3 * h * i + h * vd;
    let lin_flops = 6.0 * (t * (steps * per_row_step + 3 * h * h)) as f64;
    for rep in 0..3 {
        head.store_mut().zero_grads();
        let t0 = Instant::now();
        let stats = head.ttt_train_batch(&cx, &[seq], &ttt)?;
        let dt = t0.elapsed().as_secs_f64();
        println!(
            "T {t} Vd {vd} steps {steps} threads {threads} {backend:?} rep {rep}: {:.3} s, {:.0} rows/s, linear part {:.1} GFLOP/s effective, loss {:.3}",
            dt,
            t as f64 / dt,
            lin_flops / dt / 1e9,
            stats.loss
        );
    }
    // One more sequence on a profiled tape: where the time goes, per op kind.
    let norms = head.ttt_normalisers(&[seq], &ttt)?;
    let mut tape = Tape::new(head.store(), &cx);
    tape.enable_profiling();
    let graph = head.ttt_forward(&mut tape, &seq, &ttt, &norms)?;
    tape.backward(graph.loss)?;
    let mut prof = tape.profile();
    prof.sort_by(|a, b| {
        (b.1.forward_s + b.1.backward_s).total_cmp(&(a.1.forward_s + a.1.backward_s))
    });
    for (op, t) in prof {
        println!(
            "  {op:<20} x{:<4} forward {:7.1} ms  backward {:7.1} ms",
            t.count,
            t.forward_s * 1e3,
            t.backward_s * 1e3
        );
    }
    Ok(())
}
