//! Row-wise kernels of a Llama layer, JIT-compiled: RMSNorm, residual add, SiLU·mul, RoPE,
//! argmax, softmax weights and attention's softmax, for AVX-512 (zmm, k-mask tails) and AVX2
//! (ymm, `vmaskmovps` tails).
//!
//! Each kernel performs the same IEEE operations in the same order as its portable twin in
//! [`crate::kernel::portable`] ([`rms_norm_lanes16`](crate::kernel::portable::rms_norm_lanes16),
//! [`add_in_place`](crate::kernel::portable::add_in_place),
//! [`silu_mul_in_place`](crate::kernel::portable::silu_mul_in_place),
//! [`rope_row`](crate::kernel::portable::rope_row), [`argmax`](crate::kernel::portable::argmax)),
//! so the JIT, the twin and both ISAs give identical bits (`tests/rowops_match_portable.rs`).
//!
//! A [`RowOpDesc`] names the op, its compile-time shape and the ISA; [`RowKernel::compile`]
//! turns it into code (mapped W^X by [`exec_mem`](crate::jit::exec_mem)), and
//! [`RowKernelCache`] compiles each description once. Row lengths that are part of the op
//! ([`RowOp::RmsNorm`]'s `d`, [`RowOp::Rope`]'s `head_dim`) are compiled in; the number of rows
//! or heads, and the length of the element-wise ops and argmax, are run-time arguments.
//!
//! Every op but RoPE and argmax is also the lowering of a schedule of its
//! [`crate::ir::library`] expression ([`crate::jit::rowops_schedule`]:
//! [`RowOpDesc::from_schedule`], [`RowKernel::compile_schedule`], [`RowOpDesc::schedule`]),
//! and equals the interpreter under that schedule bit for bit
//! (`tests/rowops_match_interpreter.rs`).

mod gen;

use crate::compiled::CompiledByDesc;
use crate::error::{Error, Result};
use crate::jit::exec_mem::{CodeBuffer, ExecutableCode};
use crate::jit::{asm_err, Isa};
use crate::kernel::portable;
use std::sync::Arc;
use std::time::Instant;

/// How RoPE pairs the dimensions of a head for rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF files, whose converter permuted Q/K rows for this.
    Adjacent,
    /// Halves `(i, i + d/2)`: Hugging Face checkpoints.
    Halves,
}

/// A row-wise operation and its compile-time shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowOp {
    /// `out = (x * scale) * w`, `scale = 1 / sqrt(sum(x²) / d + eps)` per row of `d`, the sum
    /// in 16 lanes folded as `portable::reduce16`. Rows and `eps` are run-time arguments.
    RmsNorm {
        /// Row length (the weight's length).
        d: usize,
    },
    /// `x += y` over any length.
    AddInPlace,
    /// `gate = gate / (1 + exp(-gate)) * up` over any length, `exp` by the polynomial of
    /// `portable::exp_clamped`.
    SiluMul,
    /// RoPE of every head of one row by precomputed angles (`head_dim / 2` cosines then sines).
    Rope {
        /// Head dimension (even).
        head_dim: usize,
        /// Which dimensions rotate together.
        layout: RopeLayout,
    },
    /// Index of the largest value, the first on ties; NaNs are skipped (never win); `None`
    /// for an empty or all-NaN row.
    Argmax,
    /// `x = exp((x - shift) * scale)` over any length (`shift` and `scale` are run-time
    /// arguments), `exp` by the polynomial of `portable::exp_clamped`: softmax weights.
    /// Inputs must not be NaN (`-inf` gives 0).
    ExpShifted,
    /// Softmax numerators of rows at a stride: `x = exp(x - max(x))` and the row's sum in 16
    /// lanes folded as `portable::reduce16` (`portable::softmax_rows`); the caller divides.
    /// Length, rows and stride are run-time arguments. Attention's softmax.
    Softmax,
}

impl RowOp {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            RowOp::RmsNorm { .. } => "rms_norm",
            RowOp::AddInPlace => "add_in_place",
            RowOp::SiluMul => "silu_mul",
            RowOp::Rope { .. } => "rope",
            RowOp::Argmax => "argmax",
            RowOp::ExpShifted => "exp_shifted",
            RowOp::Softmax => "softmax",
        }
    }
}

/// What to compile: an op with its shape, for an ISA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowOpDesc {
    /// The operation and its compile-time shape.
    pub op: RowOp,
    /// Instruction set; [`Isa::Portable`] runs the portable twin.
    pub isa: Isa,
}

impl RowOpDesc {
    /// `op` for this CPU's best ISA.
    pub fn new(op: RowOp) -> Self {
        RowOpDesc {
            op,
            isa: Isa::detect(),
        }
    }
}

/// Largest row (or head) length compiled in: keeps every displacement far inside `i32`.
const MAX_ROW: usize = 1 << 24;
/// Largest argmax input: indices are `i32` lanes.
const MAX_ARGMAX: usize = i32::MAX as usize - gen::ARGMAX_SLOTS;

type RmsNormFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, f32);
type BinaryFn = unsafe extern "C" fn(*mut f32, *const f32, usize);
type ArgmaxFn = unsafe extern "C" fn(*const f32, usize, *mut f32, *mut i32);
type ExpFn = unsafe extern "C" fn(*mut f32, usize, f32, f32);
type SoftmaxFn = unsafe extern "C" fn(*mut f32, usize, usize, usize, *mut f32);

/// The typed entry point of the generated code.
#[derive(Clone, Copy)]
enum Entry {
    RmsNorm(RmsNormFn),
    /// Add, SiLU·mul and RoPE share a shape: (in-out pointer, input pointer, count).
    Binary(BinaryFn),
    Argmax(ArgmaxFn),
    Exp(ExpFn),
    Softmax(SoftmaxFn),
}

/// A compiled row-wise kernel (or the portable twin, for [`Isa::Portable`]).
pub struct RowKernel {
    desc: RowOpDesc,
    /// The mapping `entry` points into; `None` for the portable path.
    jit: Option<(Arc<ExecutableCode>, Entry)>,
    /// Whether this CPU can run `desc.isa` (fixed at compile time: the CPU does not change).
    isa_ok: bool,
    /// Milliseconds spent generating and mapping the code (0 for the portable path).
    pub compile_ms: f64,
}

impl RowKernel {
    /// Generates and maps the code of `desc`. Shapes the generator does not take (an empty
    /// or odd head, a zero or huge row) are errors.
    pub fn compile(desc: &RowOpDesc) -> Result<RowKernel> {
        let t0 = Instant::now();
        match desc.op {
            RowOp::RmsNorm { d } if d == 0 || d > MAX_ROW => {
                return Err(bad_shape(format!(
                    "rms_norm row length {d} not in 1..={MAX_ROW}"
                )))
            }
            RowOp::Rope { head_dim, .. }
                if head_dim == 0 || head_dim % 2 == 1 || head_dim > MAX_ROW =>
            {
                return Err(bad_shape(format!(
                    "rope head_dim {head_dim} must be even and in 2..={MAX_ROW}"
                )))
            }
            _ => {}
        }
        let isa_ok = desc.isa.available();
        if desc.isa == Isa::Portable {
            return Ok(RowKernel {
                desc: *desc,
                jit: None,
                isa_ok,
                compile_ms: 0.0,
            });
        }
        let code = match desc.op {
            RowOp::RmsNorm { d } => gen::rms_norm(desc.isa, d),
            RowOp::AddInPlace => gen::add_in_place(desc.isa),
            RowOp::SiluMul => gen::silu_mul(desc.isa),
            RowOp::Rope { head_dim, layout } => gen::rope(desc.isa, head_dim, layout),
            RowOp::Argmax => gen::argmax(desc.isa),
            RowOp::ExpShifted => gen::exp_shifted(desc.isa),
            RowOp::Softmax => gen::softmax_rows(desc.isa),
        }
        .map_err(asm_err)?;
        let exec = Arc::new(CodeBuffer::new(&code)?.finalize()?);
        let p = exec.entry();
        // SAFETY: `exec` holds a complete SysV function generated by `gen` for `desc.op`, whose
        // signature is the one transmuted to here (documented on each `gen` function); the Arc
        // stored beside the pointer keeps the mapping alive as long as the pointer.
        let entry = unsafe {
            match desc.op {
                RowOp::RmsNorm { .. } => {
                    Entry::RmsNorm(std::mem::transmute::<*const u8, RmsNormFn>(p))
                }
                RowOp::Argmax => Entry::Argmax(std::mem::transmute::<*const u8, ArgmaxFn>(p)),
                RowOp::ExpShifted => Entry::Exp(std::mem::transmute::<*const u8, ExpFn>(p)),
                RowOp::Softmax => Entry::Softmax(std::mem::transmute::<*const u8, SoftmaxFn>(p)),
                _ => Entry::Binary(std::mem::transmute::<*const u8, BinaryFn>(p)),
            }
        };
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(op = ?desc.op, isa = %desc.isa, compile_ms, bytes = code.len(), "compiled row kernel");
        Ok(RowKernel {
            desc: *desc,
            jit: Some((exec, entry)),
            isa_ok,
            compile_ms,
        })
    }

    /// The description this kernel was compiled for.
    pub fn desc(&self) -> &RowOpDesc {
        &self.desc
    }

    /// The generated machine code (empty for the portable path).
    pub fn code(&self) -> &[u8] {
        self.jit.as_ref().map_or(&[], |(e, _)| e.bytes())
    }

    fn check_isa(&self) -> Result<()> {
        self.desc.isa.check_known(self.isa_ok)
    }

    fn wrong_op(&self, called: &str) -> Error {
        bad_shape(format!(
            "kernel compiled for {} called as {called}",
            self.desc.op.name()
        ))
    }

    /// RMSNorm of each row of `x` (rows of `w.len()`) into `out`; `eps` is added to the mean
    /// square. Errors unless the kernel is a [`RowOp::RmsNorm`] of `d = w.len()`, `x.len()` is a
    /// multiple of `d` and `out.len() == x.len()`.
    pub fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
        let RowOp::RmsNorm { d } = self.desc.op else {
            return Err(self.wrong_op("rms_norm"));
        };
        check_len("rms_norm weight", w.len(), d)?;
        check_len("rms_norm out", out.len(), x.len())?;
        if x.len() % d != 0 {
            return Err(bad_shape(format!(
                "rms_norm: x holds {} values, not whole rows of {d}",
                x.len()
            )));
        }
        self.check_isa()?;
        match &self.jit {
            Some((_, Entry::RmsNorm(f))) => {
                // SAFETY: the code was generated for rows of `d` (checked against `w`); it
                // reads `x.len() / d` rows of `x`, `d` values of `w`, and writes as many rows
                // of `out` (checked to match `x`), tails masked; the ISA was checked.
                unsafe { f(x.as_ptr(), w.as_ptr(), out.as_mut_ptr(), x.len() / d, eps) };
            }
            _ => portable::rms_norm_lanes16(x, w, eps, out),
        }
        Ok(())
    }

    /// `x += y`. Errors unless the kernel is [`RowOp::AddInPlace`] and the lengths match.
    pub fn add_in_place(&self, x: &mut [f32], y: &[f32]) -> Result<()> {
        if self.desc.op != RowOp::AddInPlace {
            return Err(self.wrong_op("add_in_place"));
        }
        check_len("add_in_place y", y.len(), x.len())?;
        self.check_isa()?;
        match &self.jit {
            Some((_, Entry::Binary(f))) => {
                // SAFETY: the add code reads and writes `x.len()` values of `x` and reads as
                // many of `y` (lengths checked equal), tail masked; the ISA was checked.
                unsafe { f(x.as_mut_ptr(), y.as_ptr(), x.len()) };
            }
            _ => portable::add_in_place(x, y),
        }
        Ok(())
    }

    /// `gate = silu(gate) * up`. Errors unless the kernel is [`RowOp::SiluMul`] and the
    /// lengths match.
    pub fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<()> {
        if self.desc.op != RowOp::SiluMul {
            return Err(self.wrong_op("silu_mul"));
        }
        check_len("silu_mul up", up.len(), gate.len())?;
        self.check_isa()?;
        match &self.jit {
            Some((_, Entry::Binary(f))) => {
                // SAFETY: the SiLU code reads and writes `gate.len()` values of `gate` and
                // reads as many of `up` (lengths checked equal), tail masked; ISA checked.
                unsafe { f(gate.as_mut_ptr(), up.as_ptr(), gate.len()) };
            }
            _ => portable::silu_mul_in_place(gate, up),
        }
        Ok(())
    }

    /// Rotates every head of `x` by `angles` (`head_dim / 2` cosines, then the sines). Errors
    /// unless the kernel is a [`RowOp::Rope`], `angles.len() == head_dim` and `x.len()` is a
    /// multiple of `head_dim`.
    pub fn rope(&self, x: &mut [f32], angles: &[f32]) -> Result<()> {
        let RowOp::Rope { head_dim, layout } = self.desc.op else {
            return Err(self.wrong_op("rope"));
        };
        check_len("rope angles", angles.len(), head_dim)?;
        if x.len() % head_dim != 0 {
            return Err(bad_shape(format!(
                "rope: x holds {} values, not whole heads of {head_dim}",
                x.len()
            )));
        }
        self.check_isa()?;
        match &self.jit {
            Some((_, Entry::Binary(f))) => {
                // SAFETY: the RoPE code for `head_dim` reads `head_dim` angles (checked) and
                // rewrites `x.len() / head_dim` whole heads of `x` (checked), tails masked;
                // the ISA was checked.
                unsafe { f(x.as_mut_ptr(), angles.as_ptr(), x.len() / head_dim) };
            }
            _ => portable::rope_row(x, head_dim, angles, layout),
        }
        Ok(())
    }

    /// `x = exp((x - shift) * scale)`, elementwise (softmax weights: `shift` the largest
    /// value, `scale` the inverse temperature). Errors unless the kernel is
    /// [`RowOp::ExpShifted`]. NaN inputs give unspecified values; `-inf` gives 0.
    pub fn exp_shifted(&self, x: &mut [f32], shift: f32, scale: f32) -> Result<()> {
        if self.desc.op != RowOp::ExpShifted {
            return Err(self.wrong_op("exp_shifted"));
        }
        self.check_isa()?;
        match &self.jit {
            Some((_, Entry::Exp(f))) => {
                // SAFETY: the exp code reads and rewrites `x.len()` values of `x`, tail
                // masked; the ISA was checked.
                unsafe { f(x.as_mut_ptr(), x.len(), shift, scale) };
            }
            _ => portable::exp_shifted_in_place(x, shift, scale),
        }
        Ok(())
    }

    /// Softmax numerators of `rows` rows of `n` values, row `r` at `x[r * stride..]`, in
    /// place; `sums[r]` gets row `r`'s sum (see [`RowOp::Softmax`]).
    pub fn softmax_rows(
        &self,
        x: &mut [f32],
        n: usize,
        rows: usize,
        stride: usize,
        sums: &mut [f32],
    ) -> Result<()> {
        if self.desc.op != RowOp::Softmax {
            return Err(self.wrong_op("softmax_rows"));
        }
        if n > MAX_ROW || (rows > 1 && stride < n) {
            return Err(bad_shape(format!(
                "softmax rows of {n} at a stride of {stride}: rows overlap or are too long"
            )));
        }
        let need = match rows {
            0 => 0,
            r => (r - 1) * stride + n,
        };
        if x.len() < need {
            return Err(Error::BufferLen {
                what: format!("softmax: {rows} rows of {n} at stride {stride}"),
                want: need,
                got: x.len(),
            });
        }
        if sums.len() < rows {
            return Err(Error::BufferLen {
                what: "softmax sums".into(),
                want: rows,
                got: sums.len(),
            });
        }
        self.check_isa()?;
        match &self.jit {
            // SAFETY: the code reads and writes `rows` rows of `n` floats at `stride` from
            // `x` and writes `rows` floats of `sums`, all within the lengths checked above.
            Some((_, Entry::Softmax(f))) if n > 0 => unsafe {
                f(x.as_mut_ptr(), n, rows, stride, sums.as_mut_ptr())
            },
            Some(_) => sums[..rows].fill(0.0),
            None => portable::softmax_rows(x, n, rows, stride, sums),
        }
        Ok(())
    }

    /// Index of the largest value of `x`, the first on ties, NaNs skipped; `None` when `x` is
    /// empty or all NaN. Errors unless the kernel is [`RowOp::Argmax`] and `x` has fewer than
    /// 2^31 - 64 values.
    pub fn argmax(&self, x: &[f32]) -> Result<Option<usize>> {
        if self.desc.op != RowOp::Argmax {
            return Err(self.wrong_op("argmax"));
        }
        if x.len() > MAX_ARGMAX {
            return Err(bad_shape(format!(
                "argmax of {} values: at most {MAX_ARGMAX} (indices are i32 lanes)",
                x.len()
            )));
        }
        self.check_isa()?;
        let Some((_, Entry::Argmax(f))) = &self.jit else {
            return Ok(portable::argmax(x));
        };
        let mut vals = [0f32; gen::ARGMAX_SLOTS];
        let mut idx = [-1i32; gen::ARGMAX_SLOTS];
        // SAFETY: the argmax code reads `x.len()` values of `x` (tail masked) and writes at
        // most `ARGMAX_SLOTS` values to each of `vals` and `idx`, which hold that many;
        // `x.len()` fits the i32 lanes (checked); the ISA was checked.
        unsafe { f(x.as_ptr(), x.len(), vals.as_mut_ptr(), idx.as_mut_ptr()) };
        // Largest value, then smallest index; a lane that never took a value holds -1.
        let mut best: Option<(f32, usize)> = None;
        for (&v, &i) in vals.iter().zip(&idx) {
            let Ok(i) = usize::try_from(i) else { continue };
            if best.is_none_or(|(bv, bi)| v > bv || (v == bv && i < bi)) {
                best = Some((v, i));
            }
        }
        Ok(match best {
            Some((_, i)) if i < x.len() => Some(i),
            // No lane moved off -inf: every non-NaN value is -inf, so the first one wins.
            _ => x.iter().position(|v| !v.is_nan()),
        })
    }
}

fn bad_shape(reason: String) -> Error {
    Error::BadShape {
        op: "rowops",
        reason,
    }
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::BufferLen {
            what: what.to_string(),
            want,
            got,
        })
    }
}

/// Compiled row kernels by description, so each is compiled once.
#[derive(Default)]
pub struct RowKernelCache {
    kernels: CompiledByDesc<RowOpDesc, RowKernel>,
}

impl RowKernelCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }
    /// The kernel for `desc`, compiling it on first use.
    pub fn get(&self, desc: &RowOpDesc) -> Result<Arc<RowKernel>> {
        self.kernels.get_or_compile(desc, RowKernel::compile)
    }
    /// Number of compiled kernels held.
    pub fn len(&self) -> usize {
        self.kernels.len()
    }
    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
