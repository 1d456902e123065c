//! `peregrine kernels`: benchmark and inspect the kernels that `peregrine-loops` generates.

use anyhow::{bail, Context, Result};
use peregrine_loops::tune::{self, TuneConfig};
use peregrine_loops::{jit, Isa, SgemmDesc, SgemmKernel};
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
    /// The operation.
    #[arg(long, default_value = "sgemm", value_parser = ["sgemm"])]
    op: String,
    /// Rows of A and C.
    #[arg(long, default_value_t = 256)]
    m: usize,
    /// Columns of B and C.
    #[arg(long, default_value_t = 256)]
    n: usize,
    /// Reduction length.
    #[arg(long, default_value_t = 256)]
    k: usize,
    /// Threads splitting the outermost loop (it must be over m or n).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// `default`, `tuned` (search, cached on disk), or a file holding schedule text.
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
        Some(s) => Isa::parse(s).with_context(|| format!("unknown --isa {s:?} (avx512, avx2, portable)"))?,
    };
    isa.check()?;
    if a.m == 0 || a.n == 0 || a.k == 0 {
        bail!("--m, --n and --k must be positive");
    }
    let mut tune_ms = 0.0;
    let schedule = match a.schedule.as_str() {
        "default" => None,
        "tuned" => {
            let cfg = TuneConfig { cache_dir: a.cache_dir.clone().or_else(default_cache_dir), ..TuneConfig::default() };
            let t0 = Instant::now();
            let t = tune::tune_sgemm(a.m, a.n, a.k, isa, &cfg).context("tuning the schedule")?;
            tune_ms = t0.elapsed().as_secs_f64() * 1e3;
            tracing::info!(n_tried = t.n_tried, cached = t.cached, tune_ms, "tuned: {}", t.schedule);
            Some(t.schedule)
        }
        path => Some(std::fs::read_to_string(path).with_context(|| format!("reading schedule file {path}"))?.trim().to_string()),
    };
    Ok((SgemmDesc { m: a.m, n: a.n, k: a.k, isa, schedule }, tune_ms))
}

fn bench(a: KernelArgs) -> Result<()> {
    let (desc, tune_ms) = describe(&a)?;
    let kernel = SgemmKernel::compile(&desc).with_context(|| format!("compiling sgemm {}x{}x{} with `{}`", a.m, a.n, a.k, desc.schedule_text()))?;
    let (m, n, k) = (a.m, a.n, a.k);
    let av: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let bv: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
    let mut c = vec![0f32; m * n];
    let threads = a.threads.max(1);
    let mut call = || kernel.run_threads(&av, &bv, &mut c, threads);
    call()?;
    let t0 = Instant::now();
    let mut reps = 0usize;
    while t0.elapsed().as_secs_f64() < a.min_secs / 10.0 {
        call()?;
        reps += 1;
    }
    let reps = reps.max(1);
    let mut best = f64::INFINITY;
    for _ in 0..9 {
        let t = Instant::now();
        for _ in 0..reps {
            call()?;
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
    }
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

fn show(a: KernelArgs) -> Result<()> {
    let (desc, _) = describe(&a)?;
    let expr = desc.expr()?;
    let schedule = desc.schedule(&expr)?;
    let kernel = SgemmKernel::compile(&desc)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# expression\n{expr}\n")?;
    writeln!(out, "# schedule of {} ({})\n{}\n", expr.output, desc.isa, schedule.node_text(&expr, expr.output))?;
    writeln!(out, "# loop tree\n{}", schedule.loop_tree(&expr, expr.output))?;
    writeln!(out, "# code: {} bytes, compiled in {:.3} ms\n{}", kernel.code().len(), kernel.compile_ms, jit::disassemble(kernel.code()))?;
    Ok(())
}
