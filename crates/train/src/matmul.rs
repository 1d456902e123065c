//! Matrix products for the tape: the JIT sgemm of `peregrine-loops` for large products, the
//! `gemm` crate for small ones (and on CPUs without a JIT ISA), both split over threads.
//!
//! The three products autograd needs are `A·B`, `A·Bᵀ` (linear forward) and `Aᵀ·B` (weight
//! gradients). The JIT kernel reads `A` row-major or transposed (so `Aᵀ·B` needs no copy, which
//! matters: its `A` is an output gradient, as large as the logits) and `B[k,n]` row-major, so
//! for `A·Bᵀ` the weight `B` is first copied transposed: `O(k·n)` copies against `O(m·n·k)`
//! flops. The `gemm` crate reads strided operands directly and needs no copy.

use crate::error::{Error, Result};
use peregrine_loops::{Isa, KernelCache, SgemmDesc};

/// Which matmul implementation the tape uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulBackend {
    /// JIT sgemm for products of at least [`JIT_MIN_FLOPS`] multiply-adds when the CPU has a JIT
    /// ISA (AVX-512 or AVX2), the `gemm` crate otherwise.
    Auto,
    /// Always the `gemm` crate.
    Gemm,
    /// Always the JIT sgemm (its portable path on CPUs without a JIT ISA).
    Jit,
}

/// Products smaller than this many multiply-adds go to the `gemm` crate under
/// [`MatmulBackend::Auto`] (compiling a kernel per shape does not pay for itself there).
pub const JIT_MIN_FLOPS: usize = 64 * 64 * 64;

/// Products smaller than this many multiply-adds run on one thread.
const PARALLEL_MIN_FLOPS: usize = 128 * 128 * 128;

/// Shared compute context of a tape: kernel cache, thread count, backend choice.
pub struct Compute {
    cache: KernelCache,
    n_threads: usize,
    backend: MatmulBackend,
    jit_isa: bool,
}

impl Compute {
    /// A context using `n_threads` threads (at least 1) for large products and
    /// [`MatmulBackend::Auto`].
    pub fn new(n_threads: usize) -> Compute {
        Compute::with_backend(n_threads, MatmulBackend::Auto)
    }

    /// A context with an explicit matmul backend.
    pub fn with_backend(n_threads: usize, backend: MatmulBackend) -> Compute {
        Compute {
            cache: KernelCache::new(),
            n_threads: n_threads.max(1),
            backend,
            jit_isa: Isa::detect() != Isa::Portable,
        }
    }

    /// Threads used by large products (and the attention op).
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Number of JIT kernels compiled so far.
    pub fn n_kernels(&self) -> usize {
        self.cache.len()
    }

    fn use_jit(&self, m: usize, n: usize, k: usize) -> bool {
        match self.backend {
            MatmulBackend::Gemm => false,
            MatmulBackend::Jit => true,
            MatmulBackend::Auto => self.jit_isa && m * n * k >= JIT_MIN_FLOPS,
        }
    }

    fn threads_for(&self, m: usize, n: usize, k: usize) -> usize {
        if m * n * k >= PARALLEL_MIN_FLOPS {
            self.n_threads
        } else {
            1
        }
    }

    /// `c[m,n] (+)= a[m,k] · b[k,n]`; adds to `c` when `accumulate`.
    pub fn nn(
        &self,
        mnk: (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        self.product(Layout::Nn, mnk, a, b, c, accumulate)
    }

    /// `c[m,n] (+)= a[m,k] · b[n,k]ᵀ` (the product of `nn.Linear`).
    pub fn nt(
        &self,
        mnk: (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        self.product(Layout::Nt, mnk, a, b, c, accumulate)
    }

    /// `c[m,n] (+)= a[k,m]ᵀ · b[k,n]` (weight gradients).
    pub fn tn(
        &self,
        mnk: (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        self.product(Layout::Tn, mnk, a, b, c, accumulate)
    }

    /// The three products: the JIT kernel (reading a transposed `A` itself, a transposed `B`
    /// through a copy) or the `gemm` crate with the layout's strides.
    fn product(
        &self,
        layout: Layout,
        (m, n, k): (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        check(layout.name(), m, n, k, a, b, c)?;
        if !self.use_jit(m, n, k) {
            self.gemm(m, n, k, a, b, layout.strides(m, n, k), c, accumulate);
            return Ok(());
        }
        let desc = SgemmDesc {
            a_transposed: layout == Layout::Tn,
            ..SgemmDesc::new(m, n, k)
        };
        if layout == Layout::Nt {
            let bt = transpose(b, n, k);
            self.jit(&desc, a, &bt, c, accumulate)
        } else {
            self.jit(&desc, a, b, c, accumulate)
        }
    }

    fn jit(
        &self,
        desc: &SgemmDesc,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        accumulate: bool,
    ) -> Result<()> {
        let (m, n, k) = (desc.m, desc.n, desc.k);
        let kernel = self.cache.sgemm(desc)?;
        let threads = self.threads_for(m, n, k);
        if accumulate {
            let mut tmp = vec![0f32; m * n];
            kernel.run_threads(a, b, &mut tmp, threads)?;
            for (cv, t) in c.iter_mut().zip(&tmp) {
                *cv += t;
            }
        } else {
            kernel.run_threads(a, b, c, threads)?;
        }
        Ok(())
    }

    /// The `gemm` crate with `m` split among threads. Lengths were checked by the caller for
    /// the dense layouts that `s` describes.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: &[f32],
        b: &[f32],
        s: Strides,
        c: &mut [f32],
        accumulate: bool,
    ) {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                c.fill(0.0);
            }
            return;
        }
        let threads = self.threads_for(m, n, k).min(m);
        let rows = m.div_ceil(threads);
        std::thread::scope(|scope| {
            for (chunk_idx, c_chunk) in c.chunks_mut(rows * n).enumerate() {
                let m0 = chunk_idx * rows;
                let mm = c_chunk.len() / n;
                let mut job = move || {
                    // SAFETY: `check` matched `a` to m·k and `b` to k·n elements; with the
                    // strides of `s` (a dense row-major or transposed layout of those shapes)
                    // every element read, rows m0..m0+mm of A and all of B, lies inside them.
                    // `c_chunk` is rows m0..m0+mm of the m·n output, written with row stride n.
                    unsafe {
                        gemm::gemm(
                            mm,
                            n,
                            k,
                            c_chunk.as_mut_ptr(),
                            1,
                            n as isize,
                            accumulate,
                            a.as_ptr().add(m0 * s.a_rs),
                            s.a_cs as isize,
                            s.a_rs as isize,
                            b.as_ptr(),
                            s.b_cs as isize,
                            s.b_rs as isize,
                            if accumulate { 1.0 } else { 0.0 },
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        )
                    }
                };
                if threads == 1 {
                    job();
                } else {
                    scope.spawn(job);
                }
            }
        });
    }
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("n_threads", &self.n_threads)
            .field("backend", &self.backend)
            .field("jit_isa", &self.jit_isa)
            .field("n_kernels", &self.cache.len())
            .finish()
    }
}

/// Which operand is stored transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `a[m,k] · b[k,n]`.
    Nn,
    /// `a[m,k] · b[n,k]ᵀ`.
    Nt,
    /// `a[k,m]ᵀ · b[k,n]`.
    Tn,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Nn => "matmul a·b",
            Layout::Nt => "matmul a·bᵀ",
            Layout::Tn => "matmul aᵀ·b",
        }
    }

    /// Row and column strides of `A[m,k]` and `B[k,n]` as stored.
    fn strides(self, m: usize, n: usize, k: usize) -> Strides {
        let (a_rs, a_cs) = if self == Layout::Tn { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if self == Layout::Nt { (1, k) } else { (n, 1) };
        Strides {
            a_rs,
            a_cs,
            b_rs,
            b_cs,
        }
    }
}

#[derive(Clone, Copy)]
struct Strides {
    a_rs: usize,
    a_cs: usize,
    b_rs: usize,
    b_cs: usize,
}

fn check(what: &str, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &[f32]) -> Result<()> {
    for (name, got, want) in [
        ("a", a.len(), m * k),
        ("b", b.len(), k * n),
        ("c", c.len(), m * n),
    ] {
        if got != want {
            return Err(Error::BufferLen {
                what: format!("{what} {m}x{n}x{k} operand {name}"),
                want,
                got,
            });
        }
    }
    Ok(())
}

/// The transpose of row-major `x[rows, cols]`, as row-major `[cols, rows]`, in cache blocks.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    const B: usize = 32;
    let mut out = vec![0f32; rows * cols];
    for r0 in (0..rows).step_by(B) {
        for c0 in (0..cols).step_by(B) {
            for r in r0..(r0 + B).min(rows) {
                for c in c0..(c0 + B).min(cols) {
                    out[c * rows + r] = x[r * cols + c];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn naive(
        m: usize,
        n: usize,
        k: usize,
        a: impl Fn(usize, usize) -> f32,
        b: impl Fn(usize, usize) -> f32,
    ) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a(i, p) as f64 * b(p, j) as f64).sum();
            }
        }
        c
    }

    #[test]
    fn all_layouts_and_backends_match_naive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (70, 33, 65),
            (129, 67, 131),
            (2, 300, 1),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let c0: Vec<f32> = (0..m * n).map(|_| rng.random_range(-1.0..1.0)).collect();
            for backend in [MatmulBackend::Gemm, MatmulBackend::Jit, MatmulBackend::Auto] {
                for threads in [1, 2] {
                    let cx = Compute::with_backend(threads, backend);
                    let cases: [(&str, Vec<f64>, Vec<f32>); 3] = [
                        (
                            "nn",
                            naive(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]),
                            {
                                let mut c = c0.clone();
                                cx.nn((m, n, k), &a, &b, &mut c, true).unwrap();
                                c
                            },
                        ),
                        (
                            "nt",
                            naive(m, n, k, |i, p| a[i * k + p], |p, j| b[j * k + p]),
                            {
                                let mut c = c0.clone();
                                cx.nt((m, n, k), &a, &b, &mut c, true).unwrap();
                                c
                            },
                        ),
                        (
                            "tn",
                            naive(m, n, k, |i, p| a[p * m + i], |p, j| b[p * n + j]),
                            {
                                let mut c = c0.clone();
                                cx.tn((m, n, k), &a, &b, &mut c, true).unwrap();
                                c
                            },
                        ),
                    ];
                    for (what, want, got) in cases {
                        for i in 0..m * n {
                            let w = want[i] + c0[i] as f64;
                            assert!(
                                (got[i] as f64 - w).abs() < 1e-4 * (1.0 + k as f64).sqrt(),
                                "{what} {backend:?} {threads}t {m}x{n}x{k} [{i}]: {} vs {w}",
                                got[i]
                            );
                        }
                    }
                    let mut c = vec![9f32; m * n];
                    cx.nn((m, n, k), &a, &b, &mut c, false).unwrap();
                    let want = naive(m, n, k, |i, p| a[i * k + p], |p, j| b[p * n + j]);
                    assert!(c
                        .iter()
                        .zip(&want)
                        .all(|(g, w)| (*g as f64 - w).abs() < 1e-3));
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let cx = Compute::new(1);
        let mut c = vec![0f32; 4];
        assert!(cx
            .nn((2, 2, 2), &[0.0; 3], &[0.0; 4], &mut c, false)
            .is_err());
    }
}
