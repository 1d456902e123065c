//! `peregrine kernels`: benchmark and inspect the kernels that `peregrine-loops` generates.

use anyhow::{bail, Context, Result};
use peregrine_loops::tune::{self, TuneConfig};
use peregrine_loops::{
    jit, Epilogue, Isa, RopeLayout, RowKernel, RowOp, RowOpDesc, SgemmDesc, SgemmKernel,
};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `peregrine kernels`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Time one kernel: GFLOP/s and compile time.
    Bench(KernelArgs),
    /// Print a kernel's expression, loop tree, schedule and generated assembly.
    Show(KernelArgs),
}

#[derive(clap::Args)]
struct KernelArgs {
    /// The operation: `sgemm` (f32), `qgemv` (quantized weights x int8 activations, VNNI;
    /// with --m > 1 it is the small-M GEMM), or a row kernel of one row of --n values:
    /// `rmsnorm`, `add`, `silu_mul`, `rope` (heads of 64, adjacent pairs), `argmax`, `exp`
    /// (softmax weights) or `softmax` (attention's numerators and sum).
    #[arg(long, default_value = "sgemm", value_parser = ["sgemm", "qgemv", "rmsnorm", "add", "silu_mul", "rope", "argmax", "exp", "softmax"])]
    op: String,
    /// Weight block type for `qgemv`: q4_0, q4_1 or q8_0.
    #[arg(long, default_value = "q4_1")]
    quant: String,
    /// Rows of A and C.
    #[arg(long, default_value_t = 256)]
    m: usize,
    /// Columns of B and C.
    #[arg(long, default_value_t = 256)]
    n: usize,
    /// Reduction length.
    #[arg(long, default_value_t = 256)]
    k: usize,
    /// `sgemm`: read A stored transposed (`k x m`), the layout of weight gradients `Aᵀ·B`.
    #[arg(long)]
    a_transposed: bool,
    /// Threads splitting the outermost loop (it must be over m or n).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `default`, `tuned` (search, cached on disk; sgemm), or a file holding schedule text
    /// (for `qgemv`, the block loop's node: `n/48 m/4 kb/1 m/1:reg n/16:reg n/1:vec`).
    #[arg(long, default_value = "default")]
    schedule: String,
    /// Instruction set: avx512, avx2 or portable (default: the best this CPU has).
    #[arg(long)]
    isa: Option<String>,
    /// Where tuned schedules are cached (default: $XDG_CACHE_HOME/peregrine or ~/.cache/peregrine).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Minimum seconds of timing.
    #[arg(long, default_value_t = 0.5)]
    min_secs: f64,
    /// `qgemv`: software prefetch this many blocks ahead, 0 for none (default: the kernel's).
    #[arg(long)]
    prefetch_blocks: Option<usize>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// `--json` output of `peregrine kernels bench`: one object.
///
/// `gflops`: best-of-batches floating-point rate (2 m n k per call); `compile_ms`: lowering and
/// assembly time of the kernel (tuning excluded); `tune_ms`: schedule search time (0 unless
/// `--schedule tuned` searched); `schedule`: the schedule text of the reduce node.
#[derive(serde::Serialize)]
struct BenchJson {
    op: String,
    m: usize,
    n: usize,
    k: usize,
    threads: usize,
    isa: String,
    gflops: f64,
    compile_ms: f64,
    tune_ms: f64,
    schedule: String,
    /// `qgemv` only: weight bytes streamed per second (weights cold: rotated copies > L3).
    #[serde(skip_serializing_if = "Option::is_none")]
    gbs: Option<f64>,
    /// `qgemv` only: this core's DRAM read bandwidth, measured in the same run.
    #[serde(skip_serializing_if = "Option::is_none")]
    dram_gbs: Option<f64>,
}

/// Runs `peregrine kernels`.
pub fn run(args: Args) -> Result<()> {
    match args.cmd {
        Sub::Bench(a) => bench(a),
        Sub::Show(a) => show(a),
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("peregrine"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("peregrine"))
}

/// Resolves the ISA and schedule of `a` into a description; returns it with the tuning time.
fn describe(a: &KernelArgs) -> Result<(SgemmDesc, f64)> {
    let isa = match &a.isa {
        None => Isa::detect(),
        Some(s) => Isa::parse(s)
            .with_context(|| format!("unknown --isa {s:?} (avx512, avx2, portable)"))?,
    };
    isa.check()?;
    if a.m == 0 || a.n == 0 || a.k == 0 {
        bail!("--m, --n and --k must be positive");
    }
    let mut tune_ms = 0.0;
    let schedule = match a.schedule.as_str() {
        "default" => None,
        "tuned" => {
            let cfg = TuneConfig {
                cache_dir: a.cache_dir.clone().or_else(default_cache_dir),
                ..TuneConfig::default()
            };
            let t0 = Instant::now();
            let t = tune::tune_sgemm(a.m, a.n, a.k, isa, &cfg).context("tuning the schedule")?;
            tune_ms = t0.elapsed().as_secs_f64() * 1e3;
            tracing::info!(
                n_tried = t.n_tried,
                cached = t.cached,
                tune_ms,
                "tuned: {}",
                t.schedule
            );
            Some(t.schedule)
        }
        path => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading schedule file {path}"))?
                .trim()
                .to_string(),
        ),
    };
    Ok((
        SgemmDesc {
            m: a.m,
            n: a.n,
            k: a.k,
            isa,
            schedule,
            epilogue: Epilogue::NONE,
            a_transposed: a.a_transposed,
        },
        tune_ms,
    ))
}

fn bench(a: KernelArgs) -> Result<()> {
    if a.op == "qgemv" {
        return bench_qgemv(a);
    }
    if let Some(op) = row_op(&a)? {
        return bench_row(&a, op);
    }
    let (desc, tune_ms) = describe(&a)?;
    let kernel = SgemmKernel::compile(&desc).with_context(|| {
        format!(
            "compiling sgemm {}x{}x{} with `{}`",
            a.m,
            a.n,
            a.k,
            desc.schedule_text()
        )
    })?;
    let (m, n, k) = (a.m, a.n, a.k);
    let av: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let bv: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let mut c = vec![0f32; m * n];
    let threads = a.threads.max(1);
    let best = best_secs(a.min_secs, || {
        Ok(kernel.run_threads(&av, &bv, &mut c, threads)?)
    })?;
    let gflops = 2.0 * (m * n * k) as f64 / best / 1e9;
    let out = BenchJson {
        op: a.op.clone(),
        m,
        n,
        k,
        threads,
        isa: desc.isa.to_string(),
        gflops,
        compile_ms: kernel.compile_ms,
        tune_ms,
        schedule: desc.schedule_text(),
        gbs: None,
        dram_gbs: None,
    };
    let mut stdout = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
    } else {
        writeln!(
            stdout,
            "sgemm {m}x{n}x{k} {} threads={threads}: {gflops:.1} GFLOP/s, compile {:.3} ms, schedule `{}`",
            out.isa, out.compile_ms, out.schedule
        )?;
    }
    Ok(())
}

/// Best seconds per call of `f` over 21 short batches (about `min_secs / 50` each): on a
/// shared machine some batches run alone, and the best of them is the kernel's speed.
fn best_secs(min_secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let t0 = Instant::now();
    let mut reps = 0usize;
    while t0.elapsed().as_secs_f64() < min_secs / 10.0 {
        f()?;
        reps += 1;
    }
    let reps = (reps / 5).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..21 {
        let t = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    Ok(best)
}

/// Single-thread DRAM read bandwidth: sums a 128 MiB buffer (4x L3).
fn dram_read_gbs() -> Result<f64> {
    let words = vec![1u64; 16 << 20];
    let secs = best_secs(0.3, || {
        let mut acc = [0u64; 8];
        for chunk in words.chunks_exact(8) {
            for (a, w) in acc.iter_mut().zip(chunk) {
                *a = a.wrapping_add(*w);
            }
        }
        std::hint::black_box(acc);
        Ok(())
    })?;
    Ok((words.len() * 8) as f64 / secs / 1e9)
}

/// The quantized kernel's description for `a` (default, tuned or from a schedule file), its
/// block type, and the search time in ms (0 unless `--schedule tuned` searched).
fn qgemv_parts(
    a: &KernelArgs,
) -> Result<(peregrine_loops::QGemmDesc, peregrine_loops::QuantType, f64)> {
    use peregrine_loops::QGemmDesc;
    let quant = peregrine_loops::QuantType::parse(&a.quant)
        .with_context(|| format!("unknown --quant {:?} (q4_0, q4_1, q8_0)", a.quant))?;
    if !a.k.is_multiple_of(32) || a.m == 0 || a.n == 0 || a.k == 0 {
        bail!("qgemv needs positive sizes and --k a multiple of 32");
    }
    let isa = match &a.isa {
        None if Isa::Avx512.available() => Isa::Avx512,
        None => Isa::Avx2,
        Some(s) => Isa::parse(s).with_context(|| format!("unknown --isa {s:?} (avx512, avx2)"))?,
    };
    let mut tune_ms = 0.0;
    let mut desc = match a.schedule.as_str() {
        "default" => QGemmDesc::for_isa(quant, a.m, a.n, a.k, isa),
        "tuned" => {
            let cfg = TuneConfig {
                cache_dir: a.cache_dir.clone().or_else(default_cache_dir),
                ..TuneConfig::default()
            };
            let t0 = Instant::now();
            let t = tune::tune_qgemm(quant, a.m, a.n, a.k, isa, &cfg)
                .context("tuning the quantized schedule")?;
            tune_ms = t0.elapsed().as_secs_f64() * 1e3;
            tracing::info!(
                n_tried = t.n_tried,
                cached = t.cached,
                tune_ms,
                "tuned qgemm"
            );
            t.desc
        }
        path => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading schedule file {path}"))?;
            QGemmDesc::from_schedule_text(quant, a.m, a.n, a.k, isa, text.trim())
                .with_context(|| format!("lowering the schedule in {path}"))?
        }
    };
    if let Some(blocks) = a.prefetch_blocks {
        desc.prefetch_blocks = (blocks > 0).then_some(blocks);
    }
    Ok((desc, quant, tune_ms))
}

fn bench_qgemv(a: KernelArgs) -> Result<()> {
    use peregrine_loops::{tune::ColdQgemm, QGemmKernel};
    let (desc, quant, tune_ms) = qgemv_parts(&a)?;
    let (m, n, k) = (a.m, a.n, a.k);
    let kernel = QGemmKernel::compile(&desc).context("compiling qgemv")?;
    let ColdQgemm {
        weights: copies,
        acts: xq,
    } = ColdQgemm::new(quant, m, n, k)?;
    let mut y = vec![0f32; m * n];
    let mut idx = 0;
    let secs = best_secs(a.min_secs, || {
        idx = (idx + 1) % copies.len();
        if a.threads > 1 {
            kernel.run_threads(&copies[idx], &xq, &mut y, a.threads)?;
        } else {
            kernel.run(&copies[idx], &xq, &mut y)?;
        }
        Ok(())
    })?;
    let bytes = copies[0].len_bytes() as f64;
    let gbs = bytes / secs / 1e9;
    let dram = dram_read_gbs()?;
    let out = BenchJson {
        op: format!("qgemv-{quant}"),
        m,
        n,
        k,
        threads: a.threads.max(1),
        isa: desc.isa.to_string(),
        gflops: 2.0 * (m * n * k) as f64 / secs / 1e9,
        compile_ms: kernel.compile_ms,
        tune_ms,
        schedule: format!(
            "{} (prefetch {:?} blocks)",
            desc.schedule_text()?,
            desc.prefetch_blocks
        ),
        gbs: Some(gbs),
        dram_gbs: Some(dram),
    };
    let mut stdout = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut stdout, &out)?;
        writeln!(stdout)?;
    } else {
        writeln!(
            stdout,
            "qgemv {quant} {m}x{n}x{k}: {gbs:.1} GB/s of weights ({:.0}% of DRAM read {dram:.1} GB/s), {:.1} GFLOP/s, compile {:.3} ms",
            100.0 * gbs / dram,
            out.gflops,
            out.compile_ms
        )?;
    }
    Ok(())
}

/// Head size of `--op rope`.
const ROPE_HEAD_DIM: usize = 64;

/// The row kernel `a.op` names, if it names one, for rows of `a.n`.
fn row_op(a: &KernelArgs) -> Result<Option<RowOp>> {
    let op = match a.op.as_str() {
        "rmsnorm" => RowOp::RmsNorm { d: a.n },
        "add" => RowOp::AddInPlace,
        "silu_mul" => RowOp::SiluMul,
        "rope" => RowOp::Rope {
            head_dim: ROPE_HEAD_DIM,
            layout: RopeLayout::Adjacent,
        },
        "argmax" => RowOp::Argmax,
        "exp" => RowOp::ExpShifted,
        "softmax" => RowOp::Softmax,
        _ => return Ok(None),
    };
    if a.n == 0 {
        bail!("--n must be positive");
    }
    if a.op == "rope" && !a.n.is_multiple_of(ROPE_HEAD_DIM) {
        bail!("--op rope takes --n a multiple of the head size {ROPE_HEAD_DIM}");
    }
    Ok(Some(op))
}

/// `--json` output of `peregrine kernels bench` for a row kernel (`--op rmsnorm|add|silu_mul|
/// rope|argmax|exp|softmax`): one object. `jit_ns` / `portable_ns`: best-of-batches nanoseconds per call
/// of the JIT kernel and of its portable twin (`peregrine_loops::kernel::portable`, the
/// fallback on CPUs without AVX2; same results bit for bit) on one row of `n` values, hot in
/// cache; `*_gbs`: bytes read and written per call over that time; `speedup`: portable / JIT.
#[derive(serde::Serialize)]
struct RowBenchJson {
    op: String,
    n: usize,
    isa: String,
    jit_ns: f64,
    portable_ns: f64,
    jit_gbs: f64,
    portable_gbs: f64,
    speedup: f64,
    compile_ms: f64,
}

fn bench_row(a: &KernelArgs, op: RowOp) -> Result<()> {
    use peregrine_loops::kernel::portable;
    let isa = match &a.isa {
        None => Isa::detect(),
        Some(s) => Isa::parse(s)
            .with_context(|| format!("unknown --isa {s:?} (avx512, avx2, portable)"))?,
    };
    isa.check()?;
    let kernel = RowKernel::compile(&RowOpDesc { op, isa })
        .with_context(|| format!("compiling {} for {isa}", a.op))?;
    let n = a.n;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    let y: Vec<f32> = (0..n)
        .map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let angles: Vec<f32> = (0..ROPE_HEAD_DIM).map(|i| (i as f32 * 0.1).cos()).collect();
    let mut out = vec![0f32; n];
    let mut sum = [0f32; 1];
    // Bytes each call reads and writes.
    let bytes = 4 * match op {
        RowOp::Argmax => n,
        RowOp::Rope { .. } => 2 * n + ROPE_HEAD_DIM,
        RowOp::ExpShifted | RowOp::Softmax => 2 * n,
        _ => 3 * n,
    };
    let mut run = |jit: bool| -> Result<f64> {
        out.copy_from_slice(&x);
        best_secs(a.min_secs / 2.0, || {
            match (op, jit) {
                (RowOp::RmsNorm { .. }, true) => kernel.rms_norm(&x, &y, 1e-5, &mut out)?,
                (RowOp::RmsNorm { .. }, false) => {
                    portable::rms_norm_lanes16(&x, &y, 1e-5, &mut out)
                }
                // In-place ops rewrite `out` (a copy of x made once): the values drift but
                // stay finite, and the work per call is the same.
                (RowOp::AddInPlace, true) => kernel.add_in_place(&mut out, &y)?,
                (RowOp::AddInPlace, false) => portable::add_in_place(&mut out, &y),
                (RowOp::SiluMul, true) => {
                    out.copy_from_slice(&x);
                    kernel.silu_mul(&mut out, &y)?
                }
                (RowOp::SiluMul, false) => {
                    out.copy_from_slice(&x);
                    portable::silu_mul_in_place(&mut out, &y)
                }
                (RowOp::Rope { .. }, true) => kernel.rope(&mut out, &angles)?,
                (RowOp::Rope { head_dim, layout }, false) => {
                    portable::rope_row(&mut out, head_dim, &angles, layout)
                }
                (RowOp::Argmax, true) => {
                    std::hint::black_box(kernel.argmax(&x)?);
                }
                (RowOp::Argmax, false) => {
                    std::hint::black_box(portable::argmax(&x));
                }
                // Softmax weights of logits in [-2, 2): shift by the largest.
                (RowOp::ExpShifted, true) => {
                    out.copy_from_slice(&x);
                    kernel.exp_shifted(&mut out, 2.0, 1.0)?
                }
                (RowOp::ExpShifted, false) => {
                    out.copy_from_slice(&x);
                    portable::exp_shifted_in_place(&mut out, 2.0, 1.0)
                }
                // One row of attention scores.
                (RowOp::Softmax, true) => {
                    out.copy_from_slice(&x);
                    kernel.softmax_rows(&mut out, n, 1, n, &mut sum)?
                }
                (RowOp::Softmax, false) => {
                    out.copy_from_slice(&x);
                    portable::softmax_rows(&mut out, n, 1, n, &mut sum)
                }
            }
            std::hint::black_box(&mut out);
            Ok(())
        })
    };
    let jit_s = run(true)?;
    let portable_s = run(false)?;
    let res = RowBenchJson {
        op: a.op.clone(),
        n,
        isa: isa.to_string(),
        jit_ns: jit_s * 1e9,
        portable_ns: portable_s * 1e9,
        jit_gbs: bytes as f64 / jit_s / 1e9,
        portable_gbs: bytes as f64 / portable_s / 1e9,
        speedup: portable_s / jit_s,
        compile_ms: kernel.compile_ms,
    };
    let mut stdout = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut stdout, &res)?;
        writeln!(stdout)?;
    } else {
        writeln!(
            stdout,
            "{} n={n} {isa}: jit {:.1} ns ({:.1} GB/s), portable {:.1} ns ({:.1} GB/s), {:.2}x; compile {:.3} ms",
            res.op, res.jit_ns, res.jit_gbs, res.portable_ns, res.portable_gbs, res.speedup, res.compile_ms
        )?;
    }
    Ok(())
}

fn show(a: KernelArgs) -> Result<()> {
    if let Some(op) = row_op(&a)? {
        let isa = match &a.isa {
            None => Isa::detect(),
            Some(s) => Isa::parse(s).with_context(|| format!("unknown --isa {s:?}"))?,
        };
        let kernel = RowKernel::compile(&RowOpDesc { op, isa })?;
        writeln!(
            std::io::stdout().lock(),
            "# {op:?} ({isa})\n# code: {} bytes, compiled in {:.3} ms\n{}",
            kernel.code().len(),
            kernel.compile_ms,
            jit::disassemble(kernel.code())
        )?;
        return Ok(());
    }
    if a.op == "qgemv" {
        let (desc, _, _) = qgemv_parts(&a)?;
        let kernel = peregrine_loops::QGemmKernel::compile(&desc)?;
        let (expr, schedule) = desc.schedule()?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "# expression\n{expr}\n")?;
        writeln!(
            out,
            "# register tile: {} activation rows x {} panels of 16 weight rows",
            desc.m_tile, desc.n_panels
        )?;
        writeln!(out, "# schedule (per node; reads keep the naive loops)")?;
        for i in 0..expr.nodes.len() {
            let id = peregrine_loops::NodeId(i as u32);
            if !matches!(expr.node(id).op, peregrine_loops::ir::Op::Read { .. }) {
                writeln!(out, "{id}: {}", schedule.node_text(&expr, id))?;
            }
        }
        let acc = match expr.node(expr.output).op {
            peregrine_loops::ir::Op::Binary(_, acc, _) => acc,
            _ => expr.output,
        };
        writeln!(
            out,
            "\n# loop tree of {acc}\n{}",
            schedule.loop_tree(&expr, acc)
        )?;
        writeln!(
            out,
            "# code: {} bytes, compiled in {:.3} ms\n{}",
            kernel.code().len(),
            kernel.compile_ms,
            jit::disassemble(kernel.code())
        )?;
        return Ok(());
    }
    let (desc, _) = describe(&a)?;
    let expr = desc.expr()?;
    let schedule = desc.schedule(&expr)?;
    let kernel = SgemmKernel::compile(&desc)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# expression\n{expr}\n")?;
    writeln!(
        out,
        "# schedule of {} ({})\n{}\n",
        expr.output,
        desc.isa,
        schedule.node_text(&expr, expr.output)
    )?;
    writeln!(
        out,
        "# loop tree\n{}",
        schedule.loop_tree(&expr, expr.output)
    )?;
    writeln!(
        out,
        "# code: {} bytes, compiled in {:.3} ms\n{}",
        kernel.code().len(),
        kernel.compile_ms,
        jit::disassemble(kernel.code())
    )?;
    Ok(())
}
