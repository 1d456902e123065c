//! Float weights (f32, f16, bf16) stored as panels, times f32 activations: AVX-512 or AVX2.
//!
//! Computes [`crate::ir::library::matmul_wt`] exactly as the interpreter does: output
//! `y[i, r] = sum_k x[i, k] * w[r, k]` is one fused multiply-add chain over `k` in increasing
//! order, starting from `0.0`, with each weight converted exactly to f32 first (`vcvtph2ps`
//! for f16, zero-extension and a 16-bit shift for bf16). So results are bit-identical to the
//! interpreter under any valid schedule, to the portable twins [`fgemm_portable`] and
//! [`fgemm_panels_portable`], and for every number of rows M (each output depends only on its
//! own activation row): batch invariance.
//!
//! Weights are repacked once at load ([`PackedFloatWeights::pack`]) into panels of 16 rows,
//! k-major inside a panel: for each `kk`, the 16 rows' weights at `kk`, in the storage type
//! (f16 and bf16 keep 2 bytes per weight: the model is never copied as f32). One panel step is
//! then one vector load (a zmm, or two ymm on AVX2) and, per activation row, one
//! `vfmadd231ps` with the activation broadcast from memory (AVX2: `vbroadcastss` once per row).
//! The last panel is zero-padded; its stores are masked (k-mask, or `vmaskmovps` on AVX2), so
//! nothing past `n` columns is written.
//!
//! The code takes M at run time ([`FGemmKernel::run_panels`]); `desc.m` only chooses the
//! register tile (`m_tile` rows by `n_panels` panels, held in registers across all of `k`).

use super::exec_mem::{CodeBuffer, ExecutableCode};
use super::panels::{
    displacements_fit, emit_panel_loops, groups_of_panels, panel_groups, split_groups,
    AlignedBytes, PanelLoops, PanelTiles, R,
};
use super::regs::{ConstPool, YMM, ZMM};
use super::{asm_err, Isa};
use crate::error::{Error, Result};
use crate::ir::FloatType;
use iced_x86::code_asm::*;
use std::ops::Range;
use std::sync::Arc;

/// Steps of `k` per iteration of the generated k loop (the rest of `k` is emitted straight).
const UNROLL: usize = 4;

/// Bytes of a panel group a group's first tile keeps prefetching ahead, split evenly among
/// its panel streams. Measured on f16 1536 x 576, M = 1, cold weights, one thread of a Zen 5
/// EPYC: no prefetch ~32 GB/s, 8 KiB ahead ~40 GB/s with 4 or 8 panels (AVX-512) and ~25 →
/// ~35 GB/s with 3 (AVX2); prefetching the whole first group on entry, as qgemm does, gained
/// nothing.
const PREFETCH_GROUP_BYTES: usize = 8192;

/// The most bytes a panel stream prefetches ahead (one-panel groups).
const PREFETCH_MAX_BYTES: usize = 4096;

/// How far ahead each of a group's `np` panel streams prefetches.
fn prefetch_ahead(np: usize) -> usize {
    (PREFETCH_GROUP_BYTES / np)
        .next_multiple_of(64)
        .clamp(512, PREFETCH_MAX_BYTES)
}

/// Float weights repacked for [`FGemmKernel`]: `n` rows of `k` in panels of 16 rows, k-major
/// inside a panel, in the storage type (module doc); 64-byte aligned, the last panel
/// zero-padded.
pub struct PackedFloatWeights {
    ty: FloatType,
    n: usize,
    k: usize,
    bytes: AlignedBytes,
}

/// Bytes of the packed layout, or an error for an empty or absurd shape.
fn packed_len(ty: FloatType, n: usize, k: usize) -> Result<usize> {
    let bad = |reason: String| Error::BadShape {
        op: "fgemm pack",
        reason,
    };
    if n == 0 || k == 0 {
        return Err(bad(format!(
            "{ty} weights of {n} x {k}: need n > 0 and k > 0"
        )));
    }
    n.div_ceil(16)
        .checked_mul(16 * ty.bytes())
        .and_then(|v| v.checked_mul(k))
        .filter(|&v| v <= isize::MAX as usize)
        .ok_or_else(|| bad(format!("{ty} weights of {n} x {k} do not fit in memory")))
}

impl PackedFloatWeights {
    /// Repacks `n` rows of `k` weights of type `ty`, row-major, as little-endian bytes
    /// (`n * k * ty.bytes()` of them, as stored in a model file).
    pub fn pack(ty: FloatType, n: usize, k: usize, bytes: &[u8]) -> Result<Self> {
        packed_len(ty, n, k)?;
        let row_bytes = k * ty.bytes();
        let want = n * row_bytes;
        if bytes.len() != want {
            return Err(Error::BufferLen {
                what: format!("{ty} weights {n} x {k}, bytes"),
                want,
                got: bytes.len(),
            });
        }
        Self::pack_rows(ty, n, k, |r| &bytes[r * row_bytes..(r + 1) * row_bytes])
    }

    /// Repacks `n` rows given one at a time (`row(r)`: row `r`'s `k` weights as little-endian
    /// bytes of `ty`), so a loader can pack straight from a mapped file whatever its row
    /// layout, with no copy.
    pub fn pack_rows<'a>(
        ty: FloatType,
        n: usize,
        k: usize,
        row: impl Fn(usize) -> &'a [u8],
    ) -> Result<Self> {
        let mut packed = AlignedBytes::zeroed(packed_len(ty, n, k)?);
        let dst = packed.as_mut_slice();
        let eb = ty.bytes();
        for r in 0..n {
            let src = row(r);
            if src.len() != k * eb {
                return Err(Error::BufferLen {
                    what: format!("{ty} weight row {r} of {k} elements, bytes"),
                    want: k * eb,
                    got: src.len(),
                });
            }
            // Row r is lane r % 16 of panel r / 16; its weight at kk is kk steps of 16 into it.
            let base = (r / 16) * k * 16 * eb + (r % 16) * eb;
            for (kk, v) in src.chunks_exact(eb).enumerate() {
                let at = base + kk * 16 * eb;
                dst[at..at + eb].copy_from_slice(v);
            }
        }
        Ok(PackedFloatWeights {
            ty,
            n,
            k,
            bytes: packed,
        })
    }
    /// Storage type of the weights.
    pub fn ty(&self) -> FloatType {
        self.ty
    }
    /// Rows.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Columns.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Panels of 16 rows (the last one partial when `n % 16 != 0`).
    pub fn n_panels(&self) -> usize {
        self.n.div_ceil(16)
    }
    /// Bytes of packed data (what a GEMV streams).
    pub fn len_bytes(&self) -> usize {
        self.bytes.as_slice().len()
    }
    fn panel_bytes(&self) -> usize {
        self.k * 16 * self.ty.bytes()
    }
}

/// What a float-weight matmul kernel computes: `y[m, n] = sum_k x[m, k] * w[n, k]`
/// ([`crate::ir::library::matmul_wt`]), `w` packed in panels (module doc).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FGemmDesc {
    /// Weight storage type.
    pub ty: FloatType,
    /// Activation rows the register tile is chosen for (the code takes M at run time).
    pub m: usize,
    /// Weight rows (outputs per activation row).
    pub n: usize,
    /// Reduction length (any `k >= 1`).
    pub k: usize,
    /// Activation rows per register tile.
    pub m_tile: usize,
    /// 16-row weight panels per register tile (and per group, the unit threads split).
    pub n_panels: usize,
    /// `Avx512` (one zmm per panel) or `Avx2` (two ymm per panel, F16C).
    pub isa: Isa,
}

impl FGemmDesc {
    /// A description with the default register tile for `m` on this CPU's best ISA.
    pub fn new(ty: FloatType, m: usize, n: usize, k: usize) -> Self {
        let isa = if Isa::Avx512.available() {
            Isa::Avx512
        } else {
            Isa::Avx2
        };
        Self::for_isa(ty, m, n, k, isa)
    }

    /// A description with the default register tile for `m` on `isa`.
    pub fn for_isa(ty: FloatType, m: usize, n: usize, k: usize, isa: Isa) -> Self {
        // Measured on f16 1536 x 576 (AVX-512): M = 1 streams weights (8 panels: ~41 GB/s
        // cold); from M = 8 the 8 x 3 tile is fastest (~230 GFLOP/s warm, vs ~207 for 6 x 4).
        let (m_tile, n_panels) = match (isa, m) {
            (Isa::Avx512, 0..=1) => (1, 8),
            (Isa::Avx512, 2..=3) => (m, 6),
            (Isa::Avx512, 4..=5) => (4, 5),
            (Isa::Avx512, 6..=7) => (6, 4),
            (Isa::Avx512, _) => (8, 3),
            (_, 0..=1) => (1, 3),
            _ => (2, 2),
        };
        FGemmDesc {
            ty,
            m,
            n,
            k,
            m_tile,
            n_panels,
            isa,
        }
    }

    /// Vector registers the register tile needs.
    fn regs_needed(&self) -> usize {
        match self.isa {
            // Two ymm accumulators and two weight vectors per panel, one broadcast.
            Isa::Avx2 => 2 * self.m_tile * self.n_panels + 2 * self.n_panels + 1,
            // Accumulators and one weight vector per panel (activations broadcast from memory).
            _ => self.m_tile * self.n_panels + self.n_panels,
        }
    }

    /// Bytes of one packed 16-row panel (the same as [`PackedFloatWeights`]' panels).
    fn panel_bytes(&self) -> usize {
        self.k * 16 * self.ty.bytes()
    }

    fn loops(&self) -> PanelLoops {
        PanelLoops {
            m_tile: self.m_tile,
            n_panels: self.n_panels,
            n: self.n,
            panel_bytes: self.panel_bytes(),
            x_row_bytes: self.k * 4,
            scratch_bytes: 0,
            prefetch_first_group: false,
        }
    }
}

/// `(w, x, y, full groups, run the tail group, activation rows m)`.
type FGemmFn = unsafe extern "C" fn(*const u8, *const f32, *mut f32, usize, usize, usize);

/// A compiled float-weight matmul.
pub struct FGemmKernel {
    desc: FGemmDesc,
    code: Arc<ExecutableCode>,
    entry: FGemmFn,
    /// Milliseconds spent generating and assembling.
    pub compile_ms: f64,
}

impl FGemmKernel {
    /// Compiles `desc`. Errors: [`Error::Unsupported`] for an ISA without a generator
    /// (`Portable`: use [`fgemm_portable`]), [`Error::IsaUnavailable`] when this CPU lacks it,
    /// [`Error::BadShape`] for empty sizes (or sizes past 32-bit displacements),
    /// [`Error::RegisterTileTooLarge`] for a tile that does not fit the vector registers.
    pub fn compile(desc: &FGemmDesc) -> Result<Self> {
        let t0 = std::time::Instant::now();
        if !matches!(desc.isa, Isa::Avx512 | Isa::Avx2) {
            return Err(Error::Unsupported {
                backend: "fgemm",
                reason: format!(
                    "no code generator for {} (jit::fgemm::fgemm_portable is the portable path)",
                    desc.isa
                ),
            });
        }
        desc.isa.check()?;
        if desc.m == 0 || desc.n == 0 || desc.k == 0 {
            return Err(Error::BadShape {
                op: "fgemm",
                reason: format!(
                    "{} {}x{}x{}: need positive sizes",
                    desc.ty, desc.m, desc.n, desc.k
                ),
            });
        }
        if desc.m_tile == 0 || desc.n_panels == 0 || desc.regs_needed() > desc.isa.n_vregs() {
            return Err(Error::RegisterTileTooLarge {
                rows: desc.m_tile,
                vectors: desc.n_panels,
                needed: desc.regs_needed(),
                available: desc.isa.n_vregs(),
                isa: desc.isa.to_string(),
            });
        }
        if !displacements_fit(&desc.loops(), PREFETCH_MAX_BYTES + UNROLL * 64) {
            return Err(Error::BadShape {
                op: "fgemm",
                reason: format!(
                    "{} {}x{}x{} with a {}x{} tile: offsets exceed 32-bit displacements",
                    desc.ty, desc.m, desc.n, desc.k, desc.m_tile, desc.n_panels
                ),
            });
        }
        let bytes = generate(desc).map_err(asm_err)?;
        let code = Arc::new(CodeBuffer::new(&bytes)?.finalize()?);
        // SAFETY: `code` holds a complete SysV function generated by `generate` with exactly
        // this signature; the Arc stored beside the pointer keeps it mapped.
        let entry: FGemmFn = unsafe { std::mem::transmute::<*const u8, FGemmFn>(code.entry()) };
        let compile_ms = t0.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(ty = %desc.ty, m = desc.m, n = desc.n, k = desc.k, isa = %desc.isa, m_tile = desc.m_tile, n_panels = desc.n_panels, compile_ms, bytes = bytes.len(), "compiled fgemm");
        Ok(FGemmKernel {
            desc: desc.clone(),
            code,
            entry,
            compile_ms,
        })
    }

    /// Lowers `schedule` of `expr` (a [`crate::ir::library::matmul_wt`]) with
    /// [`FGemmDesc::from_schedule`] and compiles it.
    pub fn compile_schedule(
        expr: &crate::ir::Expr,
        schedule: &crate::schedule::Schedule,
        isa: Isa,
    ) -> Result<Self> {
        Self::compile(&FGemmDesc::from_schedule(expr, schedule, isa)?)
    }

    /// The description.
    pub fn desc(&self) -> &FGemmDesc {
        &self.desc
    }

    /// The generated machine code.
    pub fn code(&self) -> &[u8] {
        self.code.bytes()
    }

    /// `y = x · Wᵀ` for M = `x.len() / k` activation rows (any M; `y` holds `M * n`).
    pub fn run(&self, w: &PackedFloatWeights, x: &[f32], y: &mut [f32]) -> Result<()> {
        let m = self.check(w, x, y.len())?;
        let (full, tail) = panel_groups(self.desc.n, self.desc.n_panels);
        // SAFETY: `check` matched `w` against the description and found `x` to hold `m` rows
        // of `k` and `y` `m` rows of `n`; groups 0..full plus the tail are exactly the weight
        // rows of `w` and the columns of `y`.
        unsafe { self.call(w, x, y.as_mut_ptr(), m, 0, full, tail > 0) };
        Ok(())
    }

    /// Like [`FGemmKernel::run`], with the panel groups split statically among `n_threads`
    /// scoped threads (each output is computed exactly as in `run`: same bits).
    pub fn run_threads(
        &self,
        w: &PackedFloatWeights,
        x: &[f32],
        y: &mut [f32],
        n_threads: usize,
    ) -> Result<()> {
        let m = self.check(w, x, y.len())?;
        let (full, tail) = panel_groups(self.desc.n, self.desc.n_panels);
        let y_addr = y.as_mut_ptr() as usize;
        split_groups(full, tail > 0, n_threads, |lo, count, run_tail| {
            // SAFETY: as in `run`; threads take disjoint group ranges, so they write disjoint
            // columns of `y`, which outlives the scoped threads.
            unsafe { self.call(w, x, y_addr as *mut f32, m, lo, count, run_tail) };
        });
        Ok(())
    }

    /// `y = x · Wᵀ` for the weight rows of panels `panels` only (16 rows each, the last one
    /// partial when `n % 16 != 0`), for `m` activation rows given at run time (`x` holds
    /// `m * k` floats). Each output is computed exactly as by [`FGemmKernel::run`], same bits,
    /// so an engine can split the panels over its own threads. `panels` starts and ends at
    /// multiples of `desc.n_panels` (a group) or at the last panel's end; an empty range or
    /// `m == 0` computes nothing.
    ///
    /// # Safety
    /// `y` is valid for writes of `m * n` floats (row-major, `n` per row), and nothing else
    /// accesses the columns of `panels` in any of its rows during the call.
    pub unsafe fn run_panels(
        &self,
        w: &PackedFloatWeights,
        x: &[f32],
        m: usize,
        y: *mut f32,
        panels: Range<usize>,
    ) -> Result<()> {
        self.check_weights(w)?;
        let d = &self.desc;
        if Some(x.len()) != m.checked_mul(d.k) {
            return Err(Error::BufferLen {
                what: format!("fgemm activations ({m} rows of k = {})", d.k),
                want: m.saturating_mul(d.k),
                got: x.len(),
            });
        }
        let Some((lo, count, run_tail)) =
            groups_of_panels("fgemm run_panels", &panels, d.n, d.n_panels)?
        else {
            return Ok(());
        };
        // SAFETY: `w` matches the description and `x` holds `m` rows of `k` (checked above);
        // groups `lo..lo + count` (and the tail group, only when the range reaches the last
        // panel) are exactly the panels asked for, whose columns the caller vouches for in all
        // `m` rows of `y`.
        unsafe { self.call(w, x, y, m, lo, count, run_tail) };
        Ok(())
    }

    /// # Safety
    /// `w` must have passed [`FGemmKernel::check_weights`], `x` hold `m` rows of `k`, the
    /// `m * n` floats at `y` be writable, and `lo + count` must not exceed the full groups.
    #[allow(clippy::too_many_arguments)] // the generated function's arguments, one each
    unsafe fn call(
        &self,
        w: &PackedFloatWeights,
        x: &[f32],
        y: *mut f32,
        m: usize,
        lo: usize,
        count: usize,
        run_tail: bool,
    ) {
        if m == 0 {
            return;
        }
        let d = &self.desc;
        let group_bytes = d.n_panels * w.panel_bytes();
        // SAFETY: group `lo` starts inside the packed weights (or at their end when it runs
        // nothing) and at column `lo * 16 * n_panels <= n` of `y` (the caller's contract); the
        // code reads only the groups it is told to run, the `m` rows of `x`, and writes only
        // those groups' columns of the `m` rows of `y` (masked past `n`).
        unsafe {
            (self.entry)(
                w.bytes.as_ptr().add(lo * group_bytes),
                x.as_ptr(),
                y.add(lo * d.n_panels * 16),
                count,
                usize::from(run_tail),
                m,
            )
        }
    }

    /// Rows of `x`, after checking the weights, `x` (whole rows of `k`) and `y` (`M * n`).
    fn check(&self, w: &PackedFloatWeights, x: &[f32], y_len: usize) -> Result<usize> {
        self.check_weights(w)?;
        let d = &self.desc;
        let m = x.len() / d.k;
        if x.len() != m * d.k {
            return Err(Error::BadShape {
                op: "fgemm",
                reason: format!(
                    "activations hold {} floats, not whole rows of k = {}",
                    x.len(),
                    d.k
                ),
            });
        }
        if y_len != m * d.n {
            return Err(Error::BufferLen {
                what: format!("fgemm output ({m} rows of n = {})", d.n),
                want: m * d.n,
                got: y_len,
            });
        }
        Ok(m)
    }

    /// Weights of the described type and shape, and this CPU.
    fn check_weights(&self, w: &PackedFloatWeights) -> Result<()> {
        let d = &self.desc;
        if w.ty != d.ty || w.n != d.n || w.k != d.k {
            return Err(Error::BadShape {
                op: "fgemm",
                reason: format!(
                    "weights are {} {}x{}, kernel wants {} {}x{}",
                    w.ty, w.n, w.k, d.ty, d.n, d.k
                ),
            });
        }
        d.isa.check()
    }
}

/// The portable twin of [`FGemmKernel::run`]: `y = x · Wᵀ` for M = `x.len() / k` rows, on
/// the packed layout, with the same arithmetic in the same order (`f32::mul_add` over `k`
/// from `0.0`), so the same bits.
pub fn fgemm_portable(w: &PackedFloatWeights, x: &[f32], y: &mut [f32]) -> Result<()> {
    fgemm_panels_portable(w, x, y, 0..w.n_panels())
}

/// The portable twin of [`FGemmKernel::run_panels`]: only the columns of panels `panels` (any
/// range of panels) of the M = `x.len() / k` rows of `y` are written, the rest is left alone.
pub fn fgemm_panels_portable(
    w: &PackedFloatWeights,
    x: &[f32],
    y: &mut [f32],
    panels: Range<usize>,
) -> Result<()> {
    let (n, k, ty) = (w.n, w.k, w.ty);
    let m = x.len() / k;
    if x.len() != m * k
        || y.len() != m * n
        || panels.start > panels.end
        || panels.end > w.n_panels()
    {
        return Err(Error::BadShape {
            op: "fgemm_panels_portable",
            reason: format!(
                "x of {} floats, y of {}, panels {panels:?} for {ty} weights {n} x {k} ({} panels)",
                x.len(),
                y.len(),
                w.n_panels()
            ),
        });
    }
    let mut acc = [0f32; 16];
    for p in panels {
        let lanes = (n - 16 * p).min(16);
        for i in 0..m {
            panel_dot(w, &x[i * k..(i + 1) * k], p, &mut acc);
            y[i * n + 16 * p..i * n + 16 * p + lanes].copy_from_slice(&acc[..lanes]);
        }
    }
    Ok(())
}

/// The portable twin for one activation row and one panel: `out[j]` = row `16 * panel + j` of
/// the weights · `x_row` (lanes past the last row are 0). What an engine's threads call when
/// each owns some columns of a shared output (no `&mut` over the whole of it).
pub fn fgemm_panel_portable(
    w: &PackedFloatWeights,
    x_row: &[f32],
    panel: usize,
    out: &mut [f32; 16],
) -> Result<()> {
    if x_row.len() != w.k || panel >= w.n_panels() {
        return Err(Error::BadShape {
            op: "fgemm_panel_portable",
            reason: format!(
                "a row of {} floats, panel {panel} for {} weights {} x {} ({} panels)",
                x_row.len(),
                w.ty,
                w.n,
                w.k,
                w.n_panels()
            ),
        });
    }
    panel_dot(w, x_row, panel, out);
    Ok(())
}

/// One fma chain per lane over `k` in increasing order from 0.0: the kernels' arithmetic.
fn panel_dot(w: &PackedFloatWeights, x_row: &[f32], panel: usize, acc: &mut [f32; 16]) {
    let (k, ty) = (w.k, w.ty);
    let step_bytes = 16 * ty.bytes();
    let lanes = (w.n - 16 * panel).min(16);
    let mut wv = [0f32; 16];
    *acc = [0f32; 16];
    for (kk, &xv) in x_row.iter().enumerate() {
        let at = (panel * k + kk) * step_bytes;
        ty.decode_le(&w.bytes.as_slice()[at..at + step_bytes], &mut wv[..lanes]);
        for (a, &v) in acc.iter_mut().zip(&wv).take(lanes) {
            *a = xv.mul_add(v, *a);
        }
    }
}

struct FGen<'d> {
    a: CodeAssembler,
    d: &'d FGemmDesc,
    pool: ConstPool,
}

// Registers: the loops' (see `jit::panels`): r12 = the group's first panel, r11 = the tile's
// first activation row, r9 = the tile's outputs; in a tile r8 = weight cursor (panel step
// `kk` of the group's first panel), rax = activation cursor (column `kk` of the tile's first
// row), r10 = k-loop counter.
// Vector registers, for a tile of `rows` by `np` panels with `vp` vectors per panel (1 zmm, or
// 2 ymm): accumulators 0..rows * np * vp (row-major), then the np * vp weight vectors of the
// current `kk`, then (AVX2) the activation broadcast.
fn generate(d: &FGemmDesc) -> std::result::Result<Vec<u8>, iced_x86::IcedError> {
    let mut g = FGen {
        a: CodeAssembler::new(64)?,
        d,
        pool: ConstPool::default(),
    };
    emit_panel_loops(&mut g, &d.loops())?;
    g.pool.emit(&mut g.a)?;
    g.a.assemble(0)
}

impl PanelTiles for FGen<'_> {
    fn asm(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }

    fn constants(&mut self) -> R {
        Ok(())
    }

    fn tile(&mut self, np: usize, rows: usize, last_partial: bool, prefetch: bool) -> R {
        let d = self.d;
        let vp = if d.isa == Isa::Avx512 { 1 } else { 2 };
        let nv = np * vp;
        let step_bytes = 16 * d.ty.bytes();
        for r in 0..rows * nv {
            self.zero(r)?;
        }
        self.a.mov(r8, r12)?;
        self.a.mov(rax, r11)?;
        let iters = d.k / UNROLL;
        if iters > 0 {
            let mut top = self.a.create_label();
            if iters > 1 {
                self.a.mov(r10d, iters as i32)?;
                self.a.set_label(&mut top)?;
            }
            if prefetch {
                // Each panel is its own stream; its next lines, `ahead` bytes on (a prefetch
                // never faults, even past the end of the weights).
                let ahead = prefetch_ahead(np);
                for p in 0..np {
                    for line in 0..UNROLL * step_bytes / 64 {
                        let at = p * d.k * step_bytes + ahead + 64 * line;
                        self.a.prefetcht0(byte_ptr(r8 + at as i32))?;
                    }
                }
            }
            for t in 0..UNROLL {
                self.k_step(np, rows, t)?;
            }
            self.a.add(r8, (UNROLL * step_bytes) as i32)?;
            self.a.add(rax, (UNROLL * 4) as i32)?;
            if iters > 1 {
                self.a.dec(r10d)?;
                self.a.jnz(top)?;
            }
        }
        for t in 0..d.k % UNROLL {
            self.k_step(np, rows, t)?;
        }
        self.store(np, rows, last_partial)
    }
}

impl FGen<'_> {
    fn zero(&mut self, r: usize) -> R {
        if self.d.isa == Isa::Avx512 {
            self.a.vpxord(ZMM[r], ZMM[r], ZMM[r])
        } else {
            self.a.vxorps(YMM[r], YMM[r], YMM[r])
        }
    }

    /// Step `t` of the unrolled k loop: the weights of every panel at `kk + t` (converted to
    /// f32), then one fma per accumulator with the activation at `kk + t` of its row.
    fn k_step(&mut self, np: usize, rows: usize, t: usize) -> R {
        let d = self.d;
        let eb = d.ty.bytes();
        let panel_bytes = d.panel_bytes();
        if d.isa == Isa::Avx512 {
            let acc = |i: usize, p: usize| ZMM[i * np + p];
            let wv = |p: usize| ZMM[rows * np + p];
            for p in 0..np {
                let m = r8 + (p * panel_bytes + t * 16 * eb) as i32;
                match d.ty {
                    FloatType::F32 => self.a.vmovups(wv(p), zmmword_ptr(m))?,
                    FloatType::F16 => self.a.vcvtph2ps(wv(p), ymmword_ptr(m))?,
                    FloatType::Bf16 => {
                        self.a.vpmovzxwd(wv(p), ymmword_ptr(m))?;
                        self.a.vpslld(wv(p), wv(p), 16)?;
                    }
                }
            }
            for i in 0..rows {
                let xm = rax + (i * d.k * 4 + 4 * t) as i32;
                for p in 0..np {
                    self.a.vfmadd231ps(acc(i, p), wv(p), dword_bcst(xm))?;
                }
            }
        } else {
            let nv = 2 * np;
            let acc = |i: usize, v: usize| YMM[i * nv + v];
            let wv = |v: usize| YMM[rows * nv + v];
            let bcast = YMM[rows * nv + nv];
            for v in 0..nv {
                let m = r8 + ((v / 2) * panel_bytes + t * 16 * eb + (v % 2) * 8 * eb) as i32;
                match d.ty {
                    FloatType::F32 => self.a.vmovups(wv(v), ymmword_ptr(m))?,
                    FloatType::F16 => self.a.vcvtph2ps(wv(v), xmmword_ptr(m))?,
                    FloatType::Bf16 => {
                        self.a.vpmovzxwd(wv(v), xmmword_ptr(m))?;
                        self.a.vpslld(wv(v), wv(v), 16)?;
                    }
                }
            }
            for i in 0..rows {
                self.a
                    .vbroadcastss(bcast, dword_ptr(rax + (i * d.k * 4 + 4 * t) as i32))?;
                for v in 0..nv {
                    self.a.vfmadd231ps(acc(i, v), wv(v), bcast)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the tile's accumulators; the partial last panel's lanes past `n` are masked off
    /// (masked-off lanes are never accessed, so the row may end at a guard page).
    fn store(&mut self, np: usize, rows: usize, last_partial: bool) -> R {
        let d = self.d;
        let rem = d.n % 16;
        if d.isa == Isa::Avx512 {
            if last_partial {
                self.a.mov(r10d, ((1u32 << rem) - 1) as i32)?;
                self.a.kmovw(k1, r10d)?;
            }
            for i in 0..rows {
                for p in 0..np {
                    let m = r9 + (4 * (i * d.n + 16 * p)) as i32;
                    let acc = ZMM[i * np + p];
                    if last_partial && p == np - 1 {
                        self.a.vmovups(zmmword_ptr(m).k1(), acc)?;
                    } else {
                        self.a.vmovups(zmmword_ptr(m), acc)?;
                    }
                }
            }
            return Ok(());
        }
        let nv = 2 * np;
        // The weight registers are free now; the first holds the partial half's lane mask.
        let mask = YMM[rows * nv];
        let partial_cols = if last_partial { rem % 8 } else { 0 };
        if partial_cols > 0 {
            let words = (0..8)
                .map(|l| if l < partial_cols { u32::MAX } else { 0 })
                .collect();
            let label = self.pool.label(&mut self.a, words);
            self.a.vmovdqu(mask, ymmword_ptr(label))?;
        }
        for i in 0..rows {
            for v in 0..nv {
                let m = r9 + (4 * (i * d.n + 8 * v)) as i32;
                let acc = YMM[i * nv + v];
                let cols = if last_partial && v / 2 == np - 1 {
                    rem.saturating_sub(8 * (v % 2)).min(8)
                } else {
                    8
                };
                match cols {
                    0 => {}
                    8 => self.a.vmovups(ymmword_ptr(m), acc)?,
                    _ => self.a.vmaskmovps(ymmword_ptr(m), mask, acc)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect()
    }

    #[test]
    fn packed_layout_is_panels_of_16_rows_k_major() {
        let (n, k) = (19, 3);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let p = PackedFloatWeights::pack(FloatType::F16, n, k, &f16_bytes(&w)).unwrap();
        assert_eq!((p.n(), p.k(), p.n_panels()), (19, 3, 2));
        assert_eq!(p.len_bytes(), 2 * 16 * 3 * 2);
        assert_eq!(p.bytes.as_ptr() as usize % 64, 0);
        let at = |idx: usize| {
            let mut v = [0f32];
            FloatType::F16.decode_le(&p.bytes.as_slice()[2 * idx..2 * idx + 2], &mut v);
            v[0]
        };
        for r in 0..32 {
            for kk in 0..k {
                let want = if r < n { w[r * k + kk] } else { 0.0 };
                assert_eq!(
                    at(((r / 16) * k + kk) * 16 + r % 16),
                    want,
                    "row {r} col {kk}"
                );
            }
        }
    }

    #[test]
    fn pack_errors_name_the_shape() {
        let err = PackedFloatWeights::pack(FloatType::Bf16, 4, 5, &[0; 39])
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                Error::BufferLen {
                    want: 40,
                    got: 39,
                    ..
                }
            ),
            "{err}"
        );
        let err = PackedFloatWeights::pack_rows(FloatType::F32, 2, 3, |r| {
            if r == 0 {
                &[0u8; 12][..]
            } else {
                &[0u8; 8][..]
            }
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("row 1"), "{err}");
        assert!(matches!(
            PackedFloatWeights::pack(FloatType::F32, 0, 3, &[]),
            Err(Error::BadShape { .. })
        ));
        assert!(matches!(
            PackedFloatWeights::pack_rows(FloatType::F32, usize::MAX, usize::MAX, |_| &[][..]),
            Err(Error::BadShape { .. })
        ));
    }
}
