//! Kernels by description: [`KernelDesc`] → compiled [`SgemmKernel`] (JIT or portable), cached.

use crate::error::{Error, Result};
use crate::ir::{library, Expr};
use crate::jit::exec_mem::{CodeBuffer, ExecutableCode};
use crate::jit::qgemm::{QGemmDesc, QGemmKernel};
use crate::jit::sgemm::{self, Plan};
use crate::jit::Isa;
use crate::schedule::Schedule;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Work fused after the reduction, in this order: `C = (A·B + bias[n]) + residual[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Epilogue {
    /// Add a bias vector of `n`.
    pub bias: bool,
    /// Add a residual matrix of `m x n` (row-major).
    pub residual: bool,
}

impl Epilogue {
    /// No epilogue.
    pub const NONE: Epilogue = Epilogue {
        bias: false,
        residual: false,
    };
}

/// What an f32 matmul kernel computes: `C[m, n] = sum_k A[m, k] * B[k, n]` plus its
/// [`Epilogue`], all row-major and dense (`A` is `m x k`, `B` is `k x n`, `C` is `m x n`).
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
        }
    }
    /// The expression.
    pub fn expr(&self) -> Result<Expr> {
        library::matmul_epilogue(
            self.m,
            self.n,
            self.k,
            self.epilogue.bias,
            self.epilogue.residual,
        )
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

    fn check_epilogue(&self, bias: Option<&[f32]>, residual: Option<&[f32]>) -> Result<()> {
        for (what, got, on, want) in [
            ("bias", bias.map(|v| v.len()), self.epilogue.bias, self.n),
            (
                "residual",
                residual.map(|v| v.len()),
                self.epilogue.residual,
                self.m * self.n,
            ),
        ] {
            match (got, on) {
                (Some(got), true) if got != want => {
                    return Err(Error::BufferLen {
                        what: format!("sgemm {}x{}x{} {what}", self.m, self.n, self.k),
                        want,
                        got,
                    })
                }
                (Some(_), true) | (None, false) => {}
                (None, true) | (Some(_), false) => {
                    return Err(Error::BadShape {
                        op: "sgemm",
                        reason: format!(
                            "{what} given {} but the kernel was compiled {}",
                            if got.is_some() { "" } else { "not" },
                            if on { "with it" } else { "without it" }
                        ),
                    })
                }
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
        self.run_with(a, b, None, None, c)
    }

    /// `c = (a · b + bias) + residual`, with the epilogue inputs the kernel was compiled for.
    pub fn run_with(
        &self,
        a: &[f32],
        b: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        c: &mut [f32],
    ) -> Result<()> {
        self.desc.check(a, b, c)?;
        self.desc.check_epilogue(bias, residual)?;
        match &self.jit {
            None => {
                portable::sgemm(a, b, c, self.desc.m, self.desc.n, self.desc.k);
                portable::epilogue(c, self.desc.n, bias, residual);
            }
            Some((_, entry, plan)) => {
                let (full, tail) = plan.outer_iterations();
                let (pbias, pres) = (
                    bias.map_or(std::ptr::null(), |v| v.as_ptr()),
                    residual.map_or(std::ptr::null(), |v| v.as_ptr()),
                );
                with_scratch(plan.scratch_floats, |scratch| {
                    // SAFETY: the code was generated for `self.desc`'s shape and epilogue, whose
                    // buffer lengths `check`/`check_epilogue` matched (a null epilogue pointer is
                    // never read: the code for a kernel without it does not touch it); it reads
                    // `a`, `b`, `bias`, `residual` and writes `c` only within those lengths
                    // (tails are masked), writes at most `plan.scratch_floats` floats of
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
                        )
                    }
                });
            }
        }
        Ok(())
    }

    /// `c = a · b` with the outermost loop split among `n_threads` scoped threads (when it is
    /// over `m` or `n`; otherwise runs on one thread). Results equal [`SgemmKernel::run`]'s.
    pub fn run_threads(&self, a: &[f32], b: &[f32], c: &mut [f32], n_threads: usize) -> Result<()> {
        self.desc.check(a, b, c)?;
        self.desc.check_epilogue(None, None)?;
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
    sgemm: Mutex<HashMap<SgemmDesc, Arc<SgemmKernel>>>,
    qgemm: Mutex<HashMap<QGemmDesc, Arc<QGemmKernel>>>,
}

impl KernelCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// The kernel for `desc`, compiling it on first use.
    pub fn sgemm(&self, desc: &SgemmDesc) -> Result<Arc<SgemmKernel>> {
        if let Some(k) = self
            .sgemm
            .lock()
            .expect("kernel cache lock is never poisoned")
            .get(desc)
        {
            return Ok(k.clone());
        }
        let k = Arc::new(SgemmKernel::compile(desc)?);
        self.sgemm
            .lock()
            .expect("kernel cache lock is never poisoned")
            .insert(desc.clone(), k.clone());
        Ok(k)
    }
    /// The quantized matmul kernel for `desc`, compiling it on first use.
    pub fn qgemm(&self, desc: &QGemmDesc) -> Result<Arc<QGemmKernel>> {
        if let Some(k) = self
            .qgemm
            .lock()
            .expect("kernel cache lock is never poisoned")
            .get(desc)
        {
            return Ok(k.clone());
        }
        let k = Arc::new(QGemmKernel::compile(desc)?);
        self.qgemm
            .lock()
            .expect("kernel cache lock is never poisoned")
            .insert(desc.clone(), k.clone());
        Ok(k)
    }
    /// Number of compiled kernels held.
    pub fn len(&self) -> usize {
        self.sgemm
            .lock()
            .expect("kernel cache lock is never poisoned")
            .len()
            + self
                .qgemm
                .lock()
                .expect("kernel cache lock is never poisoned")
                .len()
    }
    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Portable Rust kernels with the same semantics (and reduction order) as the interpreter, so
/// results are bit-identical to it (`tests/portable_ops_match_interpreter.rs`).
pub mod portable {
    /// `c = (c + bias) + residual` (the sgemm epilogue).
    pub fn epilogue(c: &mut [f32], n: usize, bias: Option<&[f32]>, residual: Option<&[f32]>) {
        if let Some(bias) = bias {
            for row in c.chunks_exact_mut(n) {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v += b;
                }
            }
        }
        if let Some(res) = residual {
            for (v, r) in c.iter_mut().zip(res) {
                *v += r;
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
                    mx = mx.max(u);
                }
                let mut den = 0f32;
                for sj in scratch[..n_kv].iter_mut() {
                    *sj = (*sj - mx).exp();
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

    /// RMSNorm of rows of `w.len()`: `y = x * rsqrt(sum(x^2) * (1/d) + eps) * w`
    /// ([`crate::ir::library::rms_norm`]).
    pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
        let d = w.len();
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let ss = xr.iter().fold(0f32, |acc, v| v.mul_add(*v, acc));
            let r = 1.0 / (ss * (1.0 / d as f32) + eps).sqrt();
            for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(w) {
                *yv = (xv * r) * wv;
            }
        }
    }

    /// `y = silu(g) * u` ([`crate::ir::library::silu_mul`]).
    pub fn silu_mul(g: &[f32], u: &[f32], y: &mut [f32]) {
        for ((yv, gv), uv) in y.iter_mut().zip(g).zip(u) {
            *yv = (gv / (1.0 + (-gv).exp())) * uv;
        }
    }

    /// Softmax of rows of `d` ([`crate::ir::library::softmax`]).
    pub fn softmax(x: &[f32], d: usize, y: &mut [f32]) {
        for (xr, yr) in x.chunks_exact(d).zip(y.chunks_exact_mut(d)) {
            let mx = xr.iter().fold(f32::NEG_INFINITY, |a, v| a.max(*v));
            let mut s = 0f32;
            for (yv, xv) in yr.iter_mut().zip(xr) {
                *yv = (xv - mx).exp();
                s += *yv;
            }
            for yv in yr.iter_mut() {
                *yv /= s;
            }
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

    /// `c = a · b`, one fma chain per output in increasing `k`.
    pub fn sgemm(a: &[f32], b: &[f32], c: &mut [f32], m: usize, n: usize, k: usize) {
        c.fill(0.0);
        for i in 0..m {
            let crow = &mut c[i * n..(i + 1) * n];
            for p in 0..k {
                let av = a[i * k + p];
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
        if Isa::Avx512.available() {
            let q = crate::quant::QuantType::Q4_1;
            let d = QGemmDesc::new(q, 1, 32, 64);
            assert!(Arc::ptr_eq(
                &cache.qgemm(&d).unwrap(),
                &cache.qgemm(&d).unwrap()
            ));
        }
    }
}
