//! Single-thread sgemm side by side: our JIT (default and tuned schedules), the `gemm` crate
//! (x86-v4) and `faer`, plus numpy/OpenBLAS results measured by `scripts/bench-sgemm-peers`
//! in the same run. Run through that script; by hand:
//!
//! ```text
//! cargo run --release -p peregrine-loops --example sgemm_peers -- --shapes shapes.txt [--numpy numpy.json]
//! ```
//!
//! `shapes.txt` holds one `m n k` per line. `numpy.json` maps `"m n k"` to GFLOP/s.
//! Prints one table on stdout: GFLOP/s per implementation and our ratios to OpenBLAS.

use peregrine_loops::tune::{self, TuneConfig};
use peregrine_loops::{Epilogue, Isa, SgemmDesc, SgemmKernel};
use std::collections::HashMap;
use std::time::Instant;

fn best_secs(mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    let mut reps = 0;
    while t0.elapsed().as_secs_f64() < 0.01 {
        f();
        reps += 1;
    }
    // Batches of ~2 ms, best of 21: on a shared 2-core machine some batches run alone.
    let reps = (reps / 5).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..21 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    let one = arg("--one").map(|t| {
        let v: Vec<usize> = t
            .split(',')
            .map(|x| x.parse().expect("--one M,N,K"))
            .collect();
        (v[0], v[1], v[2])
    });
    let numpy: HashMap<String, f64> = match arg("--numpy") {
        Some(p) => parse_numpy(&std::fs::read_to_string(p).expect("read numpy json")),
        None => HashMap::new(),
    };
    let cache_dir = arg("--cache-dir").map(std::path::PathBuf::from);
    let shapes: Vec<(usize, usize, usize)> = match one {
        Some(s) => vec![s],
        None => std::fs::read_to_string(arg("--shapes").expect("--shapes FILE or --one M,N,K"))
            .expect("read shapes")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: Vec<usize> = l
                    .split_whitespace()
                    .map(|x| x.parse().expect("number"))
                    .collect();
                (v[0], v[1], v[2])
            })
            .collect(),
    };
    let isa = Isa::detect();
    if one.is_none() {
        println!("isa {isa}; GFLOP/s, single thread; ratio = ours / OpenBLAS");
        println!(
            "{:>6} {:>6} {:>6} | {:>8} {:>8} {:>8} {:>8} {:>8} | {:>7} {:>7} | {:>8}",
            "m",
            "n",
            "k",
            "default",
            "tuned",
            "openblas",
            "gemm",
            "faer",
            "def/ob",
            "tun/ob",
            "comp_ms"
        );
    }
    let mut ratios_def = Vec::new();
    let mut ratios_tun = Vec::new();
    let mut compile_ms = Vec::new();
    for &(m, n, k) in &shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let mut c = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let def = SgemmKernel::compile(&SgemmDesc {
            m,
            n,
            k,
            isa,
            schedule: None,
            epilogue: Epilogue::NONE,
            a_transposed: false,
        })
        .expect("compile default");
        compile_ms.push(def.compile_ms);
        let g_def = flops / best_secs(|| def.run(&a, &b, &mut c).unwrap()) / 1e9;
        let cfg = TuneConfig {
            cache_dir: cache_dir.clone(),
            ..TuneConfig::default()
        };
        let tuned = tune::tune_sgemm(m, n, k, isa, &cfg).expect("tune");
        let tk = SgemmKernel::compile(&SgemmDesc {
            m,
            n,
            k,
            isa,
            schedule: Some(tuned.schedule.clone()),
            epilogue: Epilogue::NONE,
            a_transposed: false,
        })
        .expect("compile tuned");
        let g_tun = flops / best_secs(|| tk.run(&a, &b, &mut c).unwrap()) / 1e9;
        let g_gemm = flops
            / best_secs(|| {
                // SAFETY: all pointers and strides describe the row-major m x k, k x n and
                // m x n buffers above, which outlive the call.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0f32,
                        1.0f32,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            })
            / 1e9;
        let g_faer = flops
            / best_secs(|| {
                let lhs = faer::MatRef::from_row_major_slice(&a, m, k);
                let rhs = faer::MatRef::from_row_major_slice(&b, k, n);
                let dst = faer::MatMut::from_row_major_slice_mut(&mut c, m, n);
                faer::linalg::matmul::matmul(
                    dst,
                    faer::Accum::Replace,
                    lhs,
                    rhs,
                    1.0f32,
                    faer::Par::Seq,
                );
            })
            / 1e9;
        if one.is_some() {
            println!(
                "{{\"m\":{m},\"n\":{n},\"k\":{k},\"default\":{g_def:.2},\"tuned\":{g_tun:.2},\"gemm\":{g_gemm:.2},\"faer\":{g_faer:.2},\"compile_ms\":{:.4},\"schedule\":\"{}\"}}",
                def.compile_ms, tuned.schedule
            );
            continue;
        }
        let ob = numpy.get(&format!("{m} {n} {k}")).copied();
        let (rd, rt) = match ob {
            Some(o) => {
                ratios_def.push(g_def / o);
                ratios_tun.push(g_tun / o);
                (format!("{:.2}", g_def / o), format!("{:.2}", g_tun / o))
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "{m:>6} {n:>6} {k:>6} | {g_def:>8.1} {g_tun:>8.1} {:>8} {g_gemm:>8.1} {g_faer:>8.1} | {rd:>7} {rt:>7} | {:>8.3}   {}",
            ob.map_or("-".into(), |o| format!("{o:.1}")),
            def.compile_ms,
            tuned.schedule
        );
    }
    let median = |v: &mut Vec<f64>| {
        if v.is_empty() {
            return f64::NAN;
        }
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    if one.is_some() {
        return;
    }
    println!(
        "median ratio to OpenBLAS: default {:.2}, tuned {:.2}; median compile {:.3} ms over {} shapes",
        median(&mut ratios_def),
        median(&mut ratios_tun),
        median(&mut compile_ms),
        shapes.len()
    );
}

/// Minimal parser for `{"m n k": gflops, ...}` as written by the peer script.
fn parse_numpy(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for part in text
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
    {
        if let Some((key, val)) = part.split_once(':') {
            out.insert(
                key.trim().trim_matches('"').to_string(),
                val.trim().parse().unwrap_or(f64::NAN),
            );
        }
    }
    out
}
