//! Kernels by description: [`SgemmDesc`] → compiled [`SgemmKernel`] (JIT or portable), cached.

use crate::compiled::CompiledByDesc;
use crate::error::{Error, Result};
use crate::ir::{library, Expr};
use crate::jit::exec_mem::{CodeBuffer, ExecutableCode};
use crate::jit::fgemm::{FGemmDesc, FGemmKernel};
use crate::jit::qgemm::{QGemmDesc, QGemmKernel};
use crate::jit::sgemm::{self, Plan};
use crate::jit::Isa;
use crate::schedule::Schedule;
use std::sync::Arc;
use std::time::Instant;

pub use crate::ir::library::Epilogue;

/// The run-time operands of an [`Epilogue`], one per stage the kernel was compiled with
/// (`None` for the others): `scale` a value, `bias` `n` values, `up` and `residual` `m x n`
/// row-major. [`SgemmKernel::run_epilogue`] checks that they match the kernel.
#[derive(Clone, Copy, Debug, Default)]
pub struct EpilogueArgs<'a> {
    /// The factor of the `scale` stage.
    pub scale: Option<f32>,
    /// The `bias` stage's vector.
    pub bias: Option<&'a [f32]>,
    /// The `silu_mul` stage's `up` matrix.
    pub up: Option<&'a [f32]>,
    /// The `residual` stage's matrix.
    pub residual: Option<&'a [f32]>,
}

impl EpilogueArgs<'_> {
    /// No operands (a kernel without epilogue).
    pub const NONE: EpilogueArgs<'static> = EpilogueArgs {
        scale: None,
        bias: None,
        up: None,
        residual: None,
    };
}

/// What an f32 matmul kernel computes: `C[m, n] = sum_k A[m, k] * B[k, n]` plus its
/// [`Epilogue`], all dense: `B` is `k x n` and `C` is `m x n`, row-major; `A` is `m x k`
/// row-major, or stored transposed (`k x m` row-major) when `a_transposed` is set, which lets
/// `Aᵀ·B` (weight gradients) run without copying `A`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SgemmDesc {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Reduction length.
    pub k: usize,
    /// Instruction set to compile for.
    pub isa: Isa,
    /// Schedule of the reduce node in text form; `None` for the default schedule.
    pub schedule: Option<String>,
    /// Fused epilogue.
    pub epilogue: Epilogue,
    /// `A` is stored as its transpose, `k x m` row-major.
    pub a_transposed: bool,
}

impl SgemmDesc {
    /// A description with the default schedule for this CPU's best ISA.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        SgemmDesc {
            m,
            n,
            k,
            isa: Isa::detect(),
            schedule: None,
            epilogue: Epilogue::NONE,
            a_transposed: false,
        }
    }
    /// The expression ([`library::matmul_general`] with this description's layout and
    /// epilogue): what the kernel computes, run by the interpreter for reference.
    pub fn expr(&self) -> Result<Expr> {
        let a_strides = if self.a_transposed {
            (1, self.m)
        } else {
            (self.k, 1)
        };
        library::matmul_general(self.m, self.n, self.k, a_strides, self.n, self.epilogue)
    }
    /// The schedule text actually used (the default one when none is given).
    pub fn schedule_text(&self) -> String {
        match &self.schedule {
            Some(s) => s.clone(),
            None if self.isa == Isa::Portable => "m/1 n/1 k/1".to_string(),
            None => sgemm::default_schedule_text(self.m, self.n, self.k, self.isa),
        }
    }
    /// The full schedule (default for the non-reduce nodes).
    pub fn schedule(&self, expr: &Expr) -> Result<Schedule> {
        let node = crate::jit::sgemm::matmul_shape(expr)
            .map(|s| s.node)
            .unwrap_or(expr.output);
        Schedule::naive(expr).with_node_text(expr, node, &self.schedule_text())
    }

    /// Errors unless `args` has exactly the operands of the compiled epilogue, each of its
    /// length.
    fn check_epilogue(&self, args: &EpilogueArgs) -> Result<()> {
        let e = &self.epilogue;
        let (m, n) = (self.m, self.n);
        // (stage, compiled with it, given, length given, length wanted)
        let stages = [
            ("scale", e.scale, args.scale.is_some(), None, 1),
            (
                "bias",
                e.bias,
                args.bias.is_some(),
                args.bias.map(<[f32]>::len),
                n,
            ),
            (
                "up",
                e.silu_mul,
                args.up.is_some(),
                args.up.map(<[f32]>::len),
                m * n,
            ),
            (
                "residual",
                e.residual,
                args.residual.is_some(),
                args.residual.map(<[f32]>::len),
                m * n,
            ),
        ];
        for (what, on, given, got, want) in stages {
            if on != given {
                return Err(Error::BadShape {
                    op: "sgemm",
                    reason: format!(
                        "{what} {} but the kernel ({m}x{n}x{}, epilogue {e}) was compiled {}",
                        if given { "given" } else { "not given" },
                        self.k,
                        if on { "with it" } else { "without it" }
                    ),
                });
            }
            if let Some(got) = got.filter(|&got| got != want) {
                return Err(Error::BufferLen {
                    what: format!("sgemm {m}x{n}x{} {what}", self.k),
                    want,
                    got,
                });
            }
        }
        Ok(())
    }

    fn check(&self, a: &[f32], b: &[f32], c: &[f32]) -> Result<()> {
        for (what, got, want) in [
            ("a", a.len(), self.m * self.k),
            ("b", b.len(), self.k * self.n),
            ("c", c.len(), self.m * self.n),
        ] {
            if got != want {
                return Err(Error::BufferLen {
                    what: format!("sgemm {}x{}x{} {what}", self.m, self.n, self.k),
                    want,
                    got,
                });
            }
        }
        self.isa.check()
    }
}

type SgemmFn = unsafe extern "C" fn(
    *const f32,
    *const f32,
    *mut f32,
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    *const f32,
    f32,
);

thread_local! {
    /// Per-thread scratch for packed operands; grows to the largest kernel's need, then stays.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer of at least `n` floats.
fn with_scratch<T>(n: usize, f: impl FnOnce(*mut f32) -> T) -> T {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < n {
            s.resize(n, 0.0);
        }
        f(s.as_mut_ptr())
    })
}

/// A compiled f32 matmul.
pub struct SgemmKernel {
    desc: SgemmDesc,
    jit: Option<(Arc<ExecutableCode>, SgemmFn, Plan)>,
    /// Milliseconds spent lowering and assembling (0 for the portable path).
    pub compile_ms: f64,
}

impl SgemmKernel {
    /// Compiles `desc` (validating its schedule first).
    pub fn compile(desc: &SgemmDesc) -> Result<SgemmKernel> {
        let t0 = Instant::now();
        let expr = desc.expr()?;
        let schedule = desc.schedule(&expr)?;
        schedule.validate(&expr)?;
        if desc.isa == Isa::Portable {
            return Ok(SgemmKernel {
                desc: desc.clone(),
                jit: None,
                compile_ms: 0.0,
            });
        }
        let plan = Plan::new(&expr, &schedule, desc.isa)?;
        let code = sgemm::generate(&plan)?;
        let exec = Arc::new(CodeBuffer::new(&code)?.finalize()?);
        // SAFETY: `exec` holds code generated by `sgemm::generate`, a complete SysV function
        // with exactly this signature; the Arc stored beside the pointer keeps it mapped.
        let entry: SgemmFn = unsafe { std::mem::transmute::<*const u8, SgemmFn>(exec.entry()) };
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(m = desc.m, n = desc.n, k = desc.k, isa = %desc.isa, compile_ms, bytes = code.len(), "compiled sgemm");
        Ok(SgemmKernel {
            desc: desc.clone(),
            jit: Some((exec, entry, plan)),
            compile_ms,
        })
    }

    /// The description this kernel was compiled for.
    pub fn desc(&self) -> &SgemmDesc {
        &self.desc
    }

    /// The generated machine code (empty for the portable path).
    pub fn code(&self) -> &[u8] {
        self.jit.as_ref().map_or(&[], |(e, _, _)| e.bytes())
    }

    /// `c = a · b` on the calling thread (a kernel without epilogue).
    pub fn run(&self, a: &[f32], b: &[f32], c: &mut [f32]) -> Result<()> {
        self.run_epilogue(a, b, &EpilogueArgs::NONE, c)
    }

    /// `c = (a · b + bias) + residual` for a kernel compiled with (at most) those two stages:
    /// [`SgemmKernel::run_epilogue`] without `scale` and `up`.
    pub fn run_with(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        c: &mut [f32],
    ) -> Result<()> {
        let args = EpilogueArgs {
            bias,
            residual,
            ..EpilogueArgs::NONE
        };
        self.run_epilogue(a, b, &args, c)
    }

    /// `c = a · b` followed by the compiled [`Epilogue`] with the operands in `args`, in its
    /// order: `t * scale`, `+ bias[n]`, `silu(t) * up[m, n]`, `+ residual[m, n]`. Errors if
    /// `args` lacks an operand of the epilogue, has one it lacks, or one of the wrong length.
    pub fn run_epilogue(
        &self,
        a: &[f32],
        b: &[f32],
        args: &EpilogueArgs,
        c: &mut [f32],
    ) -> Result<()> {
        self.desc.check(a, b, c)?;
        self.desc.check_epilogue(args)?;
        match &self.jit {
            None => {
                let d = &self.desc;
                let a_strides = if d.a_transposed { (1, d.m) } else { (d.k, 1) };
                portable::sgemm(a, a_strides, b, c, (d.m, d.n, d.k));
                portable::epilogue(c, d.n, args);
            }
            Some((_, entry, plan)) => {
                let (full, tail) = plan.outer_iterations();
                let ptr = |v: Option<&[f32]>| v.map_or(std::ptr::null(), <[f32]>::as_ptr);
                let (pbias, pup, pres) = (ptr(args.bias), ptr(args.up), ptr(args.residual));
                // Not read unless the kernel has the stage.
                let scale = args.scale.unwrap_or(1.0);
                with_scratch(plan.scratch_floats, |scratch| {
                    // SAFETY: the code was generated for `self.desc`'s shape and epilogue, whose
                    // buffer lengths `check` (a: m*k, b: k*n, c: m*n, and the ISA) and
                    // `check_epilogue` (bias: n, up and residual: m*n, each present exactly
                    // when the epilogue has its stage) matched; a null epilogue pointer is never
                    // read, as the code for a kernel without that stage does not touch it. It
                    // reads `a`, `b`, `bias`, `up`, `residual` and writes `c` only within those
                    // lengths (tails are masked), writes at most `plan.scratch_floats` floats of
                    // `scratch`, and visits iterations 0..full plus the tail.
                    unsafe {
                        entry(
                            a.as_ptr(),
                            b.as_ptr(),
                            c.as_mut_ptr(),
                            0,
                            full,
                            usize::from(tail),
                            scratch,
                            pbias,
                            pres,
                            pup,
                            scale,
                        )
                    }
                });
            }
        }
        Ok(())
    }

    /// `c = a · b` with the outermost loop split among `n_threads` scoped threads (when it is
    /// over `m` or `n`; otherwise runs on one thread), for a kernel without epilogue (an
    /// error otherwise). Results equal [`SgemmKernel::run`]'s.
    pub fn run_threads(&self, a: &[f32], b: &[f32], c: &mut [f32], n_threads: usize) -> Result<()> {
        self.desc.check(a, b, c)?;
        self.desc.check_epilogue(&EpilogueArgs::NONE)?;
        let Some((_, entry, plan)) = &self.jit else {
            return self.run(a, b, c);
        };
        if n_threads <= 1 || !plan.parallel_ok() {
            return self.run(a, b, c);
        }
        let (full, tail) = plan.outer_iterations();
        let c_addr = c.as_mut_ptr() as usize;
        let (pa, pb) = (a.as_ptr() as usize, b.as_ptr() as usize);
        let entry = *entry;
        let scratch_floats = plan.scratch_floats;
        std::thread::scope(|s| {
            for t in 0..n_threads {
                let lo = full * t / n_threads;
                let hi = full * (t + 1) / n_threads;
                let last = t == n_threads - 1;
                s.spawn(move || {
                    with_scratch(scratch_floats, |scratch| {
                        // SAFETY: as in `run` (each thread has its own scratch); threads get
                        // disjoint ranges of the outermost loop, which is over m or n (not k),
                        // so they write disjoint parts of `c`, and `c` outlives the scope.
                        unsafe {
                            entry(
                                pa as *const f32,
                                pb as *const f32,
                                c_addr as *mut f32,
                                lo,
                                hi - lo,
                                usize::from(tail && last),
                                scratch,
                                std::ptr::null(),
                                std::ptr::null(),
                                std::ptr::null(),
                                1.0,
                            )
                        }
                    });
                });
            }
        });
        Ok(())
    }
}

/// Compiled kernels by description (expression, shapes, dtypes, schedule and ISA are all in the
/// description), so each is compiled once.
#[derive(Default)]
pub struct KernelCache {
    sgemm: CompiledByDesc<SgemmDesc, SgemmKernel>,
    qgemm: CompiledByDesc<QGemmDesc, QGemmKernel>,
    fgemm: CompiledByDesc<FGemmDesc, FGemmKernel>,
}

impl KernelCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// The kernel for `desc`, compiling it on first use.
    pub fn sgemm(&self, desc: &SgemmDesc) -> Result<Arc<SgemmKernel>> {
        self.sgemm.get_or_compile(desc, SgemmKernel::compile)
    }
    /// The quantized matmul kernel for `desc`, compiling it on first use.
    pub fn qgemm(&self, desc: &QGemmDesc) -> Result<Arc<QGemmKernel>> {
        self.qgemm.get_or_compile(desc, QGemmKernel::compile)
    }
    /// The float-weight matmul kernel for `desc`, compiling it on first use.
    pub fn fgemm(&self, desc: &FGemmDesc) -> Result<Arc<FGemmKernel>> {
        self.fgemm.get_or_compile(desc, FGemmKernel::compile)
    }
    /// Number of compiled kernels held.
    pub fn len(&self) -> usize {
        self.sgemm.len() + self.qgemm.len() + self.fgemm.len()
    }
    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Portable Rust kernels with the same semantics (and reduction order) as the interpreter, so
/// results are bit-identical to it (`tests/portable_ops_match_interpreter.rs`): the ones named
/// after an [`crate::ir::library`] expression under its naive schedule, the engine's row ops
/// (`rms_norm_lanes16`, `add_in_place`, `silu_mul_in_place`, `exp_shifted_in_place`,
/// `softmax_rows`) under the schedule their JIT kernels follow
/// ([`crate::jit::rowops_schedule`]). `exp` is
/// [`exp_clamped`](crate::kernel::portable::exp_clamped) everywhere, as in the IR.
pub mod portable {
    /// The sgemm [`Epilogue`](crate::Epilogue) over `c` (rows of `n`, the matmul's sums), in
    /// its order, each operation rounded: `t * scale`, `+ bias[j]`,
    /// `(t / (1 + exp_clamped(-t))) * up`, `+ residual`. Stages whose operand is `None` are
    /// skipped; operands have the lengths `SgemmKernel::run_epilogue` checks (elements a short
    /// one does not cover skip its stage rather than panic).
    pub fn epilogue(c: &mut [f32], n: usize, args: &crate::kernel::EpilogueArgs) {
        if n == 0 {
            return;
        }
        for (i, row) in c.chunks_exact_mut(n).enumerate() {
            let rows = i * n..(i + 1) * n;
            let up = args.up.and_then(|v| v.get(rows.clone()));
            let res = args.residual.and_then(|v| v.get(rows));
            for (j, t) in row.iter_mut().enumerate() {
                let mut v = *t;
                if let Some(s) = args.scale {
                    v *= s;
                }
                if let Some(b) = args.bias.and_then(|b| b.get(j)) {
                    v += b;
                }
                if let Some(u) = up.map(|u| u[j]) {
                    v = (v / (1.0 + exp_clamped(-v))) * u;
                }
                if let Some(r) = res.map(|r| r[j]) {
                    v += r;
                }
                *t = v;
            }
        }
    }

    /// The additive tree mask of [`crate::ir::library::attention`]: `n_prefix` committed keys
    /// that every new row sees, then one key per new token; new token `i` sees new token `j` iff
    /// `j` is `i` or an ancestor of `i` (`parents[i]` is `i`'s parent among the new tokens, or
    /// `None` for a child of the prefix). Parents must come before their children.
    pub fn tree_mask(n_prefix: usize, parents: &[Option<usize>], mask: &mut [f32]) {
        let n_new = parents.len();
        let n_kv = n_prefix + n_new;
        mask.fill(f32::NEG_INFINITY);
        for i in 0..n_new {
            let row = &mut mask[i * n_kv..(i + 1) * n_kv];
            row[..n_prefix].fill(0.0);
            let mut cur = Some(i);
            while let Some(j) = cur {
                row[n_prefix + j] = 0.0;
                cur = parents[j].filter(|&p| p < j);
            }
        }
    }

    /// Attention with an additive mask, in the interpreter's order
    /// ([`crate::ir::library::attention`]): q `[h, n_q, d]`, k and v `[h, n_kv, d]`,
    /// mask `[n_q, n_kv]`, out `[h, n_q, d]`; `scratch` holds `n_kv` floats.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        mask: &[f32],
        n_q: usize,
        n_kv: usize,
        d: usize,
        scale: f32,
        scratch: &mut [f32],
        out: &mut [f32],
    ) {
        let n_heads = q.len() / (n_q * d).max(1);
        for h in 0..n_heads {
            for i in 0..n_q {
                let qi = &q[(h * n_q + i) * d..][..d];
                let mut mx = f32::NEG_INFINITY;
                for j in 0..n_kv {
                    let kj = &k[(h * n_kv + j) * d..][..d];
                    let s = qi
                        .iter()
                        .zip(kj)
                        .fold(0f32, |acc, (a, b)| a.mul_add(*b, acc));
                    let u = s * scale + mask[i * n_kv + j];
                    scratch[j] = u;
                    mx = max_first(mx, u);
                }
                let mut den = 0f32;
                for sj in scratch[..n_kv].iter_mut() {
                    *sj = exp_clamped(*sj - mx);
                    den += *sj;
                }
                let oi = &mut out[(h * n_q + i) * d..][..d];
                oi.fill(0.0);
                for j in 0..n_kv {
                    let p = scratch[j] / den;
                    let vj = &v[(h * n_kv + j) * d..][..d];
                    for (o, vv) in oi.iter_mut().zip(vj) {
                        *o = p.mul_add(*vv, *o);
                    }
                }
            }
        }
    }

    /// RMSNorm of rows of `w.len()`: `y = (x * (1 / sqrt(sum(x^2) / d + eps))) * w`, the sum
    /// one fma chain ([`crate::ir::library::rms_norm`] under its naive schedule; the engine's
    /// 16-lane order is [`rms_norm_lanes16`]).
    pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        let d = w.len();
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let ss = xr.iter().fold(0f32, |acc, v| v.mul_add(*v, acc));
            let r = 1.0 / (ss / d as f32 + eps).sqrt();
            for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                *yv = (xv * r) * wv;
            }
        }
    }

    /// `y = silu(g) * u` ([`crate::ir::library::silu_mul`]; into a separate output, the same
    /// bits as [`silu_mul_in_place`]).
    pub fn silu_mul(g: &[f32], u: &[f32], y: &mut [f32]) {
        for ((yv, gv), uv) in y.iter_mut().zip(g).zip(u) {
            *yv = (gv / (1.0 + exp_clamped(-gv))) * uv;
        }
    }

    /// Softmax of rows of `d` ([`crate::ir::library::softmax`]: one accumulator per row).
    pub fn softmax(x: &[f32], d: usize, y: &mut [f32]) {
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let mx = xr.iter().fold(f32::NEG_INFINITY, |a, v| max_first(a, *v));
            let mut s = 0f32;
            for (yv, xv) in yr.iter_mut().zip(xr) {
                *yv = exp_clamped(xv - mx);
                s += *yv;
            }
            for yv in yr.iter_mut() {
                *yv /= s;
            }
        }
    }

    /// `max(acc, v)` as the IR's `Reduce(Max)` takes it: `v` only if it is greater, so the
    /// first of equal values stays and NaN never wins.
    #[inline(always)]
    fn max_first(acc: f32, v: f32) -> f32 {
        if v > acc {
            v
        } else {
            acc
        }
    }

    /// Index of the largest element (the first on ties; NaNs never win); `None` when empty.
    pub fn argmax(x: &[f32]) -> Option<usize> {
        let mut best: Option<(usize, f32)> = None;
        for (i, &v) in x.iter().enumerate() {
            if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        best.map(|(i, _)| i)
    }

    /// RoPE on adjacent pairs in place: for each head of `head_dim` in `x`, pair `(2i, 2i+1)`
    /// rotates by `pos * base^(-2i / head_dim)` (GGML's "normal" mode, which SmolLM2's permuted
    /// Q/K rows expect).
    pub fn rope_pairs(x: &mut [f32], pos: usize, head_dim: usize, base: f32) {
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..head_dim / 2 {
                let theta = pos as f32 * base.powf(-2.0 * i as f32 / head_dim as f32);
                let (s, c) = theta.sin_cos();
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * c - b * s;
                head[2 * i + 1] = a * s + b * c;
            }
        }
    }

    /// Operands of [`exp_clamped`], shared with the JIT so both compute the same bits.
    pub mod exp_consts {
        /// Arguments below this give 0 (and are clamped to it first).
        pub const LO: f32 = -87.0;
        /// Arguments are clamped to at most this (so `2^n` stays a normal number).
        pub const HI: f32 = 88.0;
        /// `log2(e)`, to find `n = round(x log2 e)`.
        pub const LOG2E: f32 = std::f32::consts::LOG2_E;
        /// High part of `ln 2` (Cody–Waite): `n * LN2_HI` is exact.
        pub const LN2_HI: f32 = 0.693_145_75;
        /// Low part of `ln 2`.
        pub const LN2_LO: f32 = 1.428_606_8e-6;
        /// Taylor coefficients `1/k!`, highest first, for Horner's rule (`p = 1/720`, then
        /// `p = fma(p, r, c)` for each following `c`).
        pub const POLY: [f32; 7] = [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ];
        /// [`super::pow2i`]: `n + MAGIC` holds `n + 127` in its low mantissa bits.
        pub const POW2I_MAGIC: f32 = 8_388_735.0;
        /// [`super::pow2i`]: the bits of `2^23`, subtracted to leave `n + 127`.
        pub const POW2I_BIAS: u32 = 0x4B00_0000;
    }

    /// Folds 16 lanes in the order `_mm512` code uses: halves of 8, 4, then pairs
    /// (`(v0 + v2) + (v1 + v3)` after two halvings).
    #[inline(always)]
    pub fn reduce16(v: &[f32; 16]) -> f32 {
        let mut a = [0f32; 8];
        for i in 0..8 {
            a[i] = v[i] + v[i + 8];
        }
        let mut b = [0f32; 4];
        for i in 0..4 {
            b[i] = a[i] + a[i + 4];
        }
        let c0 = b[0] + b[2];
        let c1 = b[1] + b[3];
        c0 + c1
    }

    /// `sum(a[i] * b[i])` with fused multiply-adds into 16 lanes (`lane = i % 16`, the tail
    /// into the first lanes), folded by [`reduce16`]. Rust neither reassociates nor contracts,
    /// so the bits are the same whether or not the loop is vectorised.
    #[inline(always)]
    pub fn dot16(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
            for l in 0..16 {
                acc[l] = ca[l].mul_add(cb[l], acc[l]);
            }
        }
        let tail = a.len().min(b.len()) / 16 * 16;
        for (i, (&x, &y)) in a[tail..].iter().zip(&b[tail..]).enumerate() {
            acc[i] = x.mul_add(y, acc[i]);
        }
        reduce16(&acc)
    }

    /// `2^n` for an integer-valued `n` in `-126..=127`, built in the exponent bits: the same
    /// bits as `f32::from_bits(((n as i32 + 127) as u32) << 23)` without the saturating
    /// float-to-int cast, which does not vectorise.
    #[inline(always)]
    pub fn pow2i(n: f32) -> f32 {
        let biased = (n + exp_consts::POW2I_MAGIC)
            .to_bits()
            .wrapping_sub(exp_consts::POW2I_BIAS);
        f32::from_bits(biased << 23)
    }

    /// `exp(x)` to ~2 ulp with plain f32 operations in a fixed order (the JIT emits the same
    /// ones): clamp to `[-87, 88]`, Cody–Waite reduction `x = n ln2 + r`, a degree-6 Taylor
    /// polynomial by Horner's rule, times `2^n`; below -87 the result is 0.
    #[inline(always)]
    pub fn exp_clamped(x: f32) -> f32 {
        use exp_consts::*;
        let xc = x.clamp(LO, HI);
        let n = (xc * LOG2E).round_ties_even();
        let r = n.mul_add(-LN2_LO, n.mul_add(-LN2_HI, xc));
        let mut p = POLY[0];
        for &c in &POLY[1..] {
            p = p.mul_add(r, c);
        }
        let y = p * pow2i(n);
        if x < LO {
            0.0
        } else {
            y
        }
    }

    /// RMSNorm of rows of `w.len()` as the engine computes it: `out = (x * scale) * w` with
    /// `scale = 1 / sqrt(dot16(x, x) / d + eps)`. The JIT's `RowOp::RmsNorm` equals it bit
    /// for bit, and so does the interpreter of [`crate::ir::library::rms_norm`] under the
    /// lane-split schedule (`m/1 i/16:lanes i/1:vec` on the sum); [`rms_norm`] is the naive
    /// schedule's order.
    #[inline(always)]
    pub fn rms_norm_lanes16(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let d = w.len();
        if d == 0 {
            return;
        }
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mean = dot16(xr, xr) / d as f32;
            let scale = 1.0 / (mean + eps).sqrt();
            for ((o, &v), &wv) in or.iter_mut().zip(xr).zip(w) {
                *o = v * scale * wv;
            }
        }
    }

    /// `x += y` (over the shorter length).
    #[inline(always)]
    pub fn add_in_place(x: &mut [f32], y: &[f32]) {
        for (a, &b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }

    /// `gate = gate / (1 + exp_clamped(-gate)) * up`, SwiGLU in place with the polynomial
    /// [`exp_clamped`] (not libm's `exp`: see [`silu_mul`]). For gate < -88 the result is a
    /// tiny number rather than the exact one (`|v| e^v < 1e-36`).
    #[inline(always)]
    pub fn silu_mul_in_place(gate: &mut [f32], up: &[f32]) {
        for (g, &u) in gate.iter_mut().zip(up) {
            let v = *g;
            *g = v / (1.0 + exp_clamped(-v)) * u;
        }
    }

    /// `x = exp_clamped((x - shift) * scale)` elementwise, the subtraction and the product
    /// rounded separately: softmax weights. The JIT's `RowOp::ExpShifted` equals it bit for bit
    /// on every non-NaN input.
    #[inline(always)]
    pub fn exp_shifted_in_place(x: &mut [f32], shift: f32, scale: f32) {
        for v in x {
            *v = exp_clamped((*v - shift) * scale);
        }
    }

    /// Softmax numerators of `rows` rows of `n` values, row `r` at `x[r * stride..]`: each
    /// value becomes `exp_clamped(v - max)` (`max` over 16 lanes padded with -inf; NaN never
    /// wins) and `sums[r]` their sum in 16 lanes (`lane = i % 16`) folded by [`reduce16`].
    /// The JIT's `RowOp::Softmax` gives the same bits; attention's softmax is this.
    #[inline(always)]
    pub fn softmax_rows(x: &mut [f32], n: usize, rows: usize, stride: usize, sums: &mut [f32]) {
        for (r, sum) in sums.iter_mut().enumerate().take(rows) {
            let row = &mut x[r * stride..r * stride + n];
            let max = max16(row);
            let mut lanes = [0f32; 16];
            let mut chunks = row.chunks_exact_mut(16);
            for chunk in &mut chunks {
                for (lane, v) in lanes.iter_mut().zip(chunk.iter_mut()) {
                    *v = exp_clamped(*v - max);
                    *lane += *v;
                }
            }
            for (lane, v) in lanes.iter_mut().zip(chunks.into_remainder()) {
                *v = exp_clamped(*v - max);
                *lane += *v;
            }
            *sum = reduce16(&lanes);
        }
    }

    /// The largest value of `x` (`-inf` for an empty row), NaN skipped: 16 lanes, then folded.
    /// The same value as one pass in order (the IR's `Reduce(Max)`), except perhaps the sign
    /// of a zero maximum, which `exp_clamped(v - max)` does not show.
    #[inline(always)]
    fn max16(x: &[f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 16];
        for chunk in x.chunks(16) {
            for (l, &v) in lanes.iter_mut().zip(chunk) {
                *l = max_first(*l, v);
            }
        }
        lanes.into_iter().fold(f32::NEG_INFINITY, max_first)
    }

    /// Rotates every head of `x` (heads of `head_dim`) by precomputed `angles` (`head_dim / 2`
    /// cosines, then the sines), pairing dimensions as `layout` says:
    /// `x_a' = x_a c - x_b s`, `x_b' = x_a s + x_b c` (two products, then the sum: no FMA).
    #[inline(always)]
    pub fn rope_row(
        x: &mut [f32],
        head_dim: usize,
        angles: &[f32],
        layout: crate::jit::rowops::RopeLayout,
    ) {
        use crate::jit::rowops::RopeLayout;
        let half = head_dim / 2;
        if half == 0 || angles.len() < 2 * half {
            return;
        }
        for head in x.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (c, s) = (angles[i], angles[half + i]);
                let (a, b) = match layout {
                    RopeLayout::Adjacent => (2 * i, 2 * i + 1),
                    RopeLayout::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }

    /// `c = a · b` with `A[i, p]` at `i * a_row + p * a_col`, one fma chain per output in
    /// increasing `k`.
    pub fn sgemm(
        a: &[f32],
        (a_row, a_col): (usize, usize),
        b: &[f32],
        c: &mut [f32],
        (m, n, k): (usize, usize, usize),
    ) {
        c.fill(0.0);
        for i in 0..m {
            let crow = &mut c[i * n..(i + 1) * n];
            for p in 0..k {
                let av = a[i * a_row + p * a_col];
                for (cv, bv) in crow.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                    *cv = av.mul_add(*bv, *cv);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_compiles_once_per_description() {
        let cache = KernelCache::new();
        let a = cache.sgemm(&SgemmDesc::new(8, 8, 8)).unwrap();
        let b = cache.sgemm(&SgemmDesc::new(8, 8, 8)).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let mut other = SgemmDesc::new(8, 8, 8);
        other.schedule = Some("m/1 k/1 n/1:vec".into());
        if other.isa != Isa::Portable {
            let c = cache.sgemm(&other).unwrap();
            assert!(!Arc::ptr_eq(&a, &c), "the schedule is part of the key");
        }
        // Each epilogue stage is part of the key (the scale's value is a run-time argument).
        let mut seen = vec![a.clone()];
        for e in [
            Epilogue {
                scale: true,
                ..Epilogue::NONE
            },
            Epilogue {
                silu_mul: true,
                ..Epilogue::NONE
            },
            Epilogue {
                scale: true,
                silu_mul: true,
                ..Epilogue::NONE
            },
        ] {
            let desc = SgemmDesc {
                epilogue: e,
                ..SgemmDesc::new(8, 8, 8)
            };
            let k = cache.sgemm(&desc).unwrap();
            assert!(Arc::ptr_eq(&k, &cache.sgemm(&desc).unwrap()));
            assert!(
                seen.iter().all(|s| !Arc::ptr_eq(s, &k)),
                "{e} is in the key"
            );
            seen.push(k);
        }
        if Isa::Avx512.available() {
            let q = crate::quant::QuantType::Q4_1;
            let d = QGemmDesc::new(q, 1, 32, 64);
            assert!(Arc::ptr_eq(
                &cache.qgemm(&d).unwrap(),
                &cache.qgemm(&d).unwrap()
            ));
        }
        if Isa::Avx2.available() {
            let d = FGemmDesc::new(crate::ir::FloatType::F16, 1, 32, 64);
            let f = cache.fgemm(&d).unwrap();
            assert!(Arc::ptr_eq(&f, &cache.fgemm(&d).unwrap()));
            let bf = FGemmDesc {
                ty: crate::ir::FloatType::Bf16,
                ..d
            };
            assert!(
                !Arc::ptr_eq(&f, &cache.fgemm(&bf).unwrap()),
                "ty is in the key"
            );
        }
    }
}
