//! Quantized weights (Q4_0, Q4_1, Q8_0) times int8-quantized activations, AVX-512 VNNI.
//!
//! Computes [`crate::ir::library::qmatmul`] exactly as the interpreter does:
//! for output row `i` and weight row `r`, per block `kb`, the exact integer dot
//! `s = sum_lane code_w * code_x` (`vpdpbusd`), then `acc = fma(f32(s), d_w * d_x, acc)` and, for
//! Q4_1, `acc2 = fma(m_w, s_x, acc2)`, in increasing `kb`; `y = acc (+ acc2)`. Each output depends
//! only on its own activation row, so results are bit-identical for every M (batch invariance).
//!
//! Weights are repacked once ([`PackedWeights::pack`]) into panels of 16 rows, one row per
//! 32-bit lane: per block, 16 f16 scales, (Q4_1) 16 f16 mins, then the codes so that one
//! `vpdpbusd` with a broadcast 4-byte group of activations advances all 16 rows by 4 elements.
//! 4-bit codes keep GGML's density (a byte holds elements `4h + b` and `16 + 4h + b`); Q8_0
//! codes are stored `+ 128` (unsigned) and corrected by `128 * sum(code_x)`, Q4_0's `q - 8`
//! by `8 * sum(code_x)`; both corrections are exact integers.
//!
//! `vpdpbusd` takes unsigned bytes on one side: nibbles and offset Q8_0 codes are unsigned,
//! activation codes (-127..127) signed.

use super::panels::{
    emit_panel_loops, groups_of_panels, panel_groups, split_groups, AlignedBytes, PanelLoops,
    PanelTiles,
};
use super::regs::{YMM, ZMM};
use super::{asm_err, Isa};
use crate::error::{Error, Result};
use crate::quant::{BlockRef, QuantType, BLOCK};
use iced_x86::code_asm::*;

/// Bytes of the activation block (see [`crate::quant`]).
const ACT_BLOCK: usize = 48;

/// Weights repacked for [`QGemmKernel`]: `n` rows of `k` (a multiple of 32) in panels of 16 rows.
pub struct PackedWeights {
    ty: QuantType,
    n: usize,
    k: usize,
    bytes: AlignedBytes,
}

/// Bytes of one panel-block: scales, mins, codes.
fn panel_block_bytes(ty: QuantType) -> usize {
    match ty {
        QuantType::Q4_0 => 32 + 256,
        QuantType::Q4_1 => 32 + 32 + 256,
        QuantType::Q8_0 => 32 + 512,
        QuantType::Q8Act => 0,
    }
}

fn codes_offset(ty: QuantType) -> usize {
    if ty == QuantType::Q4_1 {
        64
    } else {
        32
    }
}

fn check_pack_shape(ty: QuantType, n: usize, k: usize) -> Result<()> {
    if ty == QuantType::Q8Act || k % BLOCK != 0 || n == 0 {
        return Err(Error::BadShape {
            op: "qgemm pack",
            reason: format!(
                "{ty} weights of {n} x {k}: need Q4_0/Q4_1/Q8_0, n > 0, k a multiple of 32"
            ),
        });
    }
    Ok(())
}

impl PackedWeights {
    /// Repacks `n` rows of GGML blocks (`n * k / 32` blocks of `ty`, row-major).
    pub fn pack(ty: QuantType, n: usize, k: usize, ggml: &[u8]) -> Result<Self> {
        check_pack_shape(ty, n, k)?;
        let want = n * (k / BLOCK) * ty.block_bytes();
        if ggml.len() != want {
            return Err(Error::BufferLen {
                what: format!("{ty} weights {n} x {k} bytes"),
                want,
                got: ggml.len(),
            });
        }
        let row_bytes = want / n.max(1);
        Self::pack_rows(ty, n, k, |r| &ggml[r * row_bytes..(r + 1) * row_bytes])
    }

    /// Repacks `n` rows given one at a time (`row(r)`: row `r`'s `k / 32` GGML blocks), so a
    /// loader can pack straight from a mapped file whatever its row layout, with no copy.
    pub fn pack_rows<'a>(
        ty: QuantType,
        n: usize,
        k: usize,
        row: impl Fn(usize) -> &'a [u8],
    ) -> Result<Self> {
        check_pack_shape(ty, n, k)?;
        let nb = k / BLOCK;
        let pbb = panel_block_bytes(ty);
        let n_panels = n.div_ceil(16);
        let total = n_panels * nb * pbb;
        let mut packed = AlignedBytes::zeroed(total);
        let bytes = packed.as_mut_slice();
        let co = codes_offset(ty);
        for r in 0..n {
            let (p, lane) = (r / 16, r % 16);
            let ggml = row(r);
            if ggml.len() != nb * ty.block_bytes() {
                return Err(Error::BufferLen {
                    what: format!("{ty} weight row {r} of {k} bytes"),
                    want: nb * ty.block_bytes(),
                    got: ggml.len(),
                });
            }
            for kb in 0..nb {
                let blk = BlockRef::at(ty, ggml, kb);
                let base = (p * nb + kb) * pbb;
                bytes[base + 2 * lane..base + 2 * lane + 2].copy_from_slice(&blk.bytes[0..2]);
                if ty == QuantType::Q4_1 {
                    bytes[base + 32 + 2 * lane..base + 32 + 2 * lane + 2]
                        .copy_from_slice(&blk.bytes[2..4]);
                }
                let codes = base + co;
                match ty {
                    QuantType::Q8_0 => {
                        for g in 0..8 {
                            for b in 0..4 {
                                bytes[codes + 64 * g + 4 * lane + b] =
                                    (blk.raw(4 * g + b) + 128) as u8;
                            }
                        }
                    }
                    _ => {
                        for h in 0..4 {
                            for b in 0..4 {
                                let lo = blk.raw(4 * h + b) as u8;
                                let hi = blk.raw(16 + 4 * h + b) as u8;
                                bytes[codes + 64 * h + 4 * lane + b] = lo | (hi << 4);
                            }
                        }
                    }
                }
            }
        }
        Ok(PackedWeights {
            ty,
            n,
            k,
            bytes: packed,
        })
    }
    /// Weight type.
    pub fn quant(&self) -> QuantType {
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
        self.n.div_ceil(16) * (self.k / BLOCK) * panel_block_bytes(self.ty)
    }
    fn as_ptr(&self) -> *const u8 {
        self.bytes.as_ptr()
    }
}

/// Activations quantized per block of 32 ([`QuantType::Q8Act`]), `m` rows of `k`.
///
/// `ActsQ8::default()` is an empty buffer for [`ActsQ8::quantize_into`], which an engine reuses
/// across calls of any shape: it grows to the largest and never allocates again.
#[derive(Default)]
pub struct ActsQ8 {
    bytes: Vec<u8>,
    m: usize,
    k: usize,
}

impl ActsQ8 {
    /// Quantizes `x` (`m` rows of `k`, `k` a multiple of 32).
    pub fn quantize(x: &[f32], m: usize, k: usize) -> Result<Self> {
        let mut a = ActsQ8 {
            bytes: Vec::new(),
            m: 0,
            k,
        };
        a.requantize(x, m)?;
        Ok(a)
    }
    /// Re-quantizes into the same buffer (no allocation once it is large enough).
    pub fn requantize(&mut self, x: &[f32], m: usize) -> Result<()> {
        self.quantize_into(x, m, self.k)
    }
    /// Quantizes `x` (`m` rows of `k`, `k` a multiple of 32) into this buffer, replacing its
    /// shape; no allocation once the buffer has held as many blocks.
    pub fn quantize_into(&mut self, x: &[f32], m: usize, k: usize) -> Result<()> {
        if k % BLOCK != 0 || x.len() != m * k {
            return Err(Error::BufferLen {
                what: format!("activations {m} x {k} (k a multiple of 32)"),
                want: m * k,
                got: x.len(),
            });
        }
        let len = m * k / BLOCK * ACT_BLOCK;
        // Grows only: a decode step after a prefill reuses the prefill's buffer as is.
        if self.bytes.len() < len {
            self.bytes.resize(len, 0);
        }
        crate::quant::quantize_q8act(x, k, &mut self.bytes[..len]);
        (self.m, self.k) = (m, k);
        Ok(())
    }
    /// The raw Q8Act blocks (row-major), as the interpreter reads them.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.m * self.k / BLOCK * ACT_BLOCK]
    }
    /// Columns.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Rows.
    pub fn m(&self) -> usize {
        self.m
    }
}

/// What a quantized matmul kernel computes: `y[m, n] = W[n, k] · x[m, k]` (W quantized, x
/// quantized per block), see the module doc.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QGemmDesc {
    /// Weight block type.
    pub quant: QuantType,
    /// Activation rows.
    pub m: usize,
    /// Weight rows (outputs per activation row).
    pub n: usize,
    /// Reduction length (a multiple of 32).
    pub k: usize,
    /// Activation rows per register tile.
    pub m_tile: usize,
    /// 16-row weight panels per register tile.
    pub n_panels: usize,
    /// Software prefetch this many blocks ahead in every panel, counted through the packed
    /// layout (`n_panels * k / 32` is the same block of the next panel group), plus the whole
    /// first group on entry (`None`: hardware only).
    pub prefetch_blocks: Option<usize>,
    /// `Avx512` (VNNI `vpdpbusd`) or `Avx2` (`vpmaddubsw` + `vpmaddwd`, F16C; exact too:
    /// pair sums stay within i16).
    pub isa: Isa,
}

impl QGemmDesc {
    /// A description with the default register tile for `m` on this CPU's best ISA.
    pub fn new(quant: QuantType, m: usize, n: usize, k: usize) -> Self {
        let isa = if Isa::Avx512.available() {
            Isa::Avx512
        } else {
            Isa::Avx2
        };
        Self::for_isa(quant, m, n, k, isa)
    }

    /// A description with the default register tile for `m` on `isa`.
    pub fn for_isa(quant: QuantType, m: usize, n: usize, k: usize, isa: Isa) -> Self {
        if isa != Isa::Avx512 {
            // Found by `tune_qgemm` on cold weights (1536x576 and 576x1536, M = 1 and 8): one
            // panel per group with the whole next panel prefetched beats 4 blocks ahead by
            // 36-70% at M = 1 (Q4_1 31 -> 43 GB/s, Q8_0 27 -> 46); Q8_0 fits two rows a tile.
            let m_tile = if quant == QuantType::Q4_1 {
                1
            } else {
                m.clamp(1, 2)
            };
            return QGemmDesc {
                quant,
                m,
                n,
                k,
                m_tile,
                n_panels: 1,
                prefetch_blocks: Some(k / BLOCK),
                isa,
            };
        }
        let (m_tile, n_panels) = match (quant, m) {
            (QuantType::Q4_1, 1) => (1, 8),
            (_, 1) => (1, 8),
            (QuantType::Q4_1, 2..=3) => (m, 3),
            (_, 2..=3) => (m, 4),
            (QuantType::Q4_1, _) => (4, 2),
            _ => (4, 3),
        };
        // Measured on cold weights (examples/qgemv_prefetch.rs): 4 blocks ahead lifts Q4_1
        // from ~30 to ~41 GB/s; Q8_0 blocks are larger and gain little beyond 2.
        let prefetch_blocks = Some(if quant == QuantType::Q8_0 { 2 } else { 4 });
        QGemmDesc {
            quant,
            m,
            n,
            k,
            m_tile,
            n_panels,
            prefetch_blocks,
            isa,
        }
    }

    /// Full groups of `n_panels` panels (threads split these), and panels in the last, static
    /// group (which holds the partial panel when `n % 16 != 0`).
    fn groups(&self) -> (usize, usize) {
        panel_groups(self.n, self.n_panels)
    }

    fn regs_needed(&self) -> usize {
        let per = if self.quant == QuantType::Q4_1 { 2 } else { 1 };
        let accs = self.m_tile * self.n_panels;
        match self.isa {
            // Two ymm halves per 16-row panel, nine temporaries.
            Isa::Avx2 => accs * per * 2 + self.m_tile + 9,
            // Accumulators, two integer sums per row (reused for Q4_1's offset pass), seven
            // temporaries.
            _ => accs + (2 * self.m_tile).max(accs * (per - 1)) + 7,
        }
    }
}

/// `(w, x, y, full groups, run the tail group, activation rows m)`.
type QGemmFn = unsafe extern "C" fn(*const u8, *const u8, *mut f32, usize, usize, usize);

/// A compiled quantized matmul (AVX-512 VNNI).
pub struct QGemmKernel {
    desc: QGemmDesc,
    code: std::sync::Arc<super::exec_mem::ExecutableCode>,
    entry: QGemmFn,
    /// Milliseconds spent generating and assembling.
    pub compile_ms: f64,
}

impl QGemmKernel {
    /// Compiles `desc`; errors on shapes, register tiles that do not fit, or a CPU without VNNI.
    pub fn compile(desc: &QGemmDesc) -> Result<Self> {
        let t0 = std::time::Instant::now();
        if !matches!(desc.isa, Isa::Avx512 | Isa::Avx2) {
            return Err(Error::Unsupported {
                backend: "qgemm",
                reason: format!("no code generator for {}", desc.isa),
            });
        }
        desc.isa.check()?;
        if desc.quant == QuantType::Q8Act
            || desc.k % BLOCK != 0
            || desc.k == 0
            || desc.n == 0
            || desc.m == 0
        {
            return Err(Error::BadShape {
                op: "qgemm",
                reason: format!(
                    "{} {}x{}x{}: need a weight type, positive sizes, k a multiple of 32",
                    desc.quant, desc.m, desc.n, desc.k
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
        let bytes = generate(desc).map_err(asm_err)?;
        let code = std::sync::Arc::new(super::exec_mem::CodeBuffer::new(&bytes)?.finalize()?);
        // SAFETY: `code` holds a complete SysV function generated by `generate` with exactly
        // this signature; the Arc stored beside the pointer keeps it mapped.
        let entry: QGemmFn = unsafe { std::mem::transmute::<*const u8, QGemmFn>(code.entry()) };
        Ok(QGemmKernel {
            desc: desc.clone(),
            code,
            entry,
            compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Lowers `schedule` of `expr` (a [`crate::ir::library::qmatmul`]) with
    /// [`QGemmDesc::from_schedule`] and compiles it.
    pub fn compile_schedule(
        expr: &crate::ir::Expr,
        schedule: &crate::schedule::Schedule,
        isa: Isa,
    ) -> Result<Self> {
        Self::compile(&QGemmDesc::from_schedule(expr, schedule, isa)?)
    }

    /// The description.
    pub fn desc(&self) -> &QGemmDesc {
        &self.desc
    }

    /// The generated machine code.
    pub fn code(&self) -> &[u8] {
        self.code.bytes()
    }

    /// `y = W · x` for all `m` rows.
    pub fn run(&self, w: &PackedWeights, x: &ActsQ8, y: &mut [f32]) -> Result<()> {
        self.check(w, x, y)?;
        let (full, tail) = self.desc.groups();
        // SAFETY: `check` matched the buffers against `self.desc`; groups 0..full plus the
        // tail are exactly the weight rows of `w` and the columns of `y`.
        unsafe { self.call(w, x, y.as_mut_ptr(), 0, full, tail > 0) };
        Ok(())
    }

    /// Like [`QGemmKernel::run`], with the weight rows split statically among `n_threads`
    /// scoped threads (each output is computed exactly as in `run`: same bits).
    pub fn run_threads(
        &self,
        w: &PackedWeights,
        x: &ActsQ8,
        y: &mut [f32],
        n_threads: usize,
    ) -> Result<()> {
        self.check(w, x, y)?;
        let (full, tail) = self.desc.groups();
        let y_addr = y.as_mut_ptr() as usize;
        split_groups(full, tail > 0, n_threads, |lo, count, run_tail| {
            // SAFETY: as in `run`; threads take disjoint group ranges, so they write disjoint
            // columns of `y`, which outlives the scoped threads.
            unsafe { self.call(w, x, y_addr as *mut f32, lo, count, run_tail) };
        });
        Ok(())
    }

    /// `y = W · x` for the weight rows of panels `panels` only (16 rows each, the last one
    /// partial when `n % 16 != 0`), for any number of activation rows `x.m() >= 1`: the code
    /// takes M at run time (`desc.m` only chose the register tile). Each output is computed
    /// exactly as by [`QGemmKernel::run`], same bits, so an engine can split the panels over
    /// its own threads. `panels` starts and ends at multiples of `desc.n_panels` (a group) or at
    /// the last panel's end; an empty range or `x.m() == 0` computes nothing.
    ///
    /// # Safety
    /// `y` is valid for writes of `x.m() * n` floats (row-major, `n` per row), and nothing else
    /// accesses the columns of `panels` in any of its rows during the call.
    pub unsafe fn run_panels(
        &self,
        w: &PackedWeights,
        x: &ActsQ8,
        y: *mut f32,
        panels: std::ops::Range<usize>,
    ) -> Result<()> {
        self.check_operands(w, x)?;
        let d = &self.desc;
        let Some((lo, count, run_tail)) =
            groups_of_panels("qgemm run_panels", &panels, d.n, d.n_panels)?
        else {
            return Ok(());
        };
        if x.m == 0 {
            return Ok(());
        }
        // SAFETY: operands checked above; groups `lo..lo + count` (and the tail group, only
        // when the range reaches the last panel) are exactly the panels asked for, whose
        // columns the caller vouches for in all `x.m` rows of `y`.
        unsafe { self.call(w, x, y, lo, count, run_tail) };
        Ok(())
    }

    /// # Safety
    /// `w` and `x` must have passed [`QGemmKernel::check_operands`], the `x.m * n` floats at
    /// `y` be writable, and `lo + count` must not exceed the full groups.
    unsafe fn call(
        &self,
        w: &PackedWeights,
        x: &ActsQ8,
        y: *mut f32,
        lo: usize,
        count: usize,
        run_tail: bool,
    ) {
        let d = &self.desc;
        let group_bytes = d.n_panels * (d.k / BLOCK) * panel_block_bytes(d.quant);
        // SAFETY: group `lo` starts inside the packed weights and at column `lo * 16 *
        // n_panels < n` of `y` (the caller's contract); the code reads and writes only the
        // groups it is told to run.
        unsafe {
            (self.entry)(
                w.as_ptr().add(lo * group_bytes),
                x.bytes.as_ptr(),
                y.add(lo * d.n_panels * 16),
                count,
                usize::from(run_tail),
                x.m,
            )
        }
    }

    fn check(&self, w: &PackedWeights, x: &ActsQ8, y: &[f32]) -> Result<()> {
        self.check_operands(w, x)?;
        let d = &self.desc;
        if x.m != d.m {
            return Err(Error::BufferLen {
                what: format!("qgemm activations (k = {})", d.k),
                want: d.m * d.k,
                got: x.m * x.k,
            });
        }
        if y.len() != d.m * d.n {
            return Err(Error::BufferLen {
                what: "qgemm output".into(),
                want: d.m * d.n,
                got: y.len(),
            });
        }
        Ok(())
    }

    /// Weights of the described type and shape, activations of `k` columns, and this CPU.
    fn check_operands(&self, w: &PackedWeights, x: &ActsQ8) -> Result<()> {
        let d = &self.desc;
        if w.ty != d.quant || w.n != d.n || w.k != d.k {
            return Err(Error::BadShape {
                op: "qgemm",
                reason: format!(
                    "weights are {} {}x{}, kernel wants {} {}x{}",
                    w.ty, w.n, w.k, d.quant, d.n, d.k
                ),
            });
        }
        if x.k != d.k {
            return Err(Error::BufferLen {
                what: format!("qgemm activations (k = {})", d.k),
                want: x.m * d.k,
                got: x.m * x.k,
            });
        }
        self.desc.isa.check()
    }
}

/// The portable path: the same arithmetic in the same order, in plain Rust.
pub fn qgemm_portable(ty: QuantType, n: usize, k: usize, w_ggml: &[u8], x: &ActsQ8, y: &mut [f32]) {
    let nb = k / BLOCK;
    for i in 0..x.m {
        for r in 0..n {
            let (mut acc, mut acc2) = (0f32, 0f32);
            for kb in 0..nb {
                let wb = BlockRef::at(ty, w_ggml, r * nb + kb);
                let xb = BlockRef::at(QuantType::Q8Act, &x.bytes, i * nb + kb);
                let s: i32 = (0..BLOCK).map(|l| wb.code(l) * xb.code(l)).sum();
                acc = (s as f32).mul_add(wb.scale() * xb.scale(), acc);
                if ty == QuantType::Q4_1 {
                    acc2 = wb.min().mul_add(xb.min(), acc2);
                }
            }
            y[i * n + r] = if ty == QuantType::Q4_1 {
                acc + acc2
            } else {
                acc
            };
        }
    }
}

/// The portable twin of [`QGemmKernel::run_panels`] for one activation row and one panel,
/// reading the packed layout: `out[l] = (W row 16 * panel + l) · (x row)` for the panel's rows
/// (lanes past `n` are left alone). The same arithmetic in the same order as the JIT and
/// [`qgemm_portable`], so the same bits.
pub fn qgemm_panel_portable(
    w: &PackedWeights,
    x: &ActsQ8,
    row: usize,
    panel: usize,
    out: &mut [f32; 16],
) -> Result<()> {
    if x.k != w.k || row >= x.m || panel >= w.n_panels() {
        return Err(Error::BadShape {
            op: "qgemm_panel_portable",
            reason: format!(
                "row {row} of {} x {}, panel {panel} of {} x {}",
                x.m, x.k, w.n, w.k
            ),
        });
    }
    let (ty, nb, pbb) = (w.ty, w.k / BLOCK, panel_block_bytes(w.ty));
    let bytes = w.bytes.as_slice();
    let f16_at = |at: usize| half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32();
    let lanes = (w.n - 16 * panel).min(16);
    for (lane, o) in out.iter_mut().enumerate().take(lanes) {
        let (mut acc, mut acc2) = (0f32, 0f32);
        for kb in 0..nb {
            let base = (panel * nb + kb) * pbb;
            let codes = base + codes_offset(ty);
            let xb = BlockRef::at(QuantType::Q8Act, &x.bytes, row * nb + kb);
            let mut s = 0i32;
            for g in 0..4 {
                for b in 0..4 {
                    let (lo, hi) = (4 * g + b, 16 + 4 * g + b);
                    if ty == QuantType::Q8_0 {
                        let wq = |at: usize| i32::from(bytes[at]) - 128;
                        s += wq(codes + 64 * g + 4 * lane + b) * xb.code(lo);
                        s += wq(codes + 64 * (g + 4) + 4 * lane + b) * xb.code(hi);
                    } else {
                        let byte = bytes[codes + 64 * g + 4 * lane + b];
                        let off = if ty == QuantType::Q4_0 { 8 } else { 0 };
                        s += (i32::from(byte & 15) - off) * xb.code(lo);
                        s += (i32::from(byte >> 4) - off) * xb.code(hi);
                    }
                }
            }
            acc = (s as f32).mul_add(f16_at(base + 2 * lane) * xb.scale(), acc);
            if ty == QuantType::Q4_1 {
                acc2 = f16_at(base + 32 + 2 * lane).mul_add(xb.min(), acc2);
            }
        }
        *o = if ty == QuantType::Q4_1 {
            acc + acc2
        } else {
            acc
        };
    }
    Ok(())
}

use super::panels::R;

struct QGen<'d> {
    a: CodeAssembler,
    d: &'d QGemmDesc,
}

// Registers: the loops' (see `jit::panels`): rsi = X, r12 = W panel-group cursor, r11 = X
// row-tile cursor, r9 = Y tile cursor; in a tile r8 = W block cursor, rax = X block cursor,
// r10 = block counter.
// Vector registers: 31 = 0x0F bytes, 30 = d_w, 29 = m_w, 28 = codes, 27 = high nibbles,
// 26 = d_w * d_x, 25 = correction; accumulators from 0, then the integer sums (AVX-512).
// AVX2: 15 = 0x0F (or 0x80) bytes, 14 = 1 in every i16, 64 bytes of stack scratch for masks.
fn generate(d: &QGemmDesc) -> R2<Vec<u8>> {
    let mut g = QGen {
        a: CodeAssembler::new(64)?,
        d,
    };
    let loops = PanelLoops {
        m_tile: d.m_tile,
        n_panels: d.n_panels,
        n: d.n,
        panel_bytes: (d.k / BLOCK) * panel_block_bytes(d.quant),
        x_row_bytes: (d.k / BLOCK) * ACT_BLOCK,
        scratch_bytes: if d.isa == Isa::Avx2 { 64 } else { 0 },
        prefetch_first_group: d.prefetch_blocks.is_some(),
    };
    emit_panel_loops(&mut g, &loops)?;
    g.a.assemble(0)
}
type R2<T> = std::result::Result<T, iced_x86::IcedError>;

impl PanelTiles for QGen<'_> {
    fn asm(&mut self) -> &mut CodeAssembler {
        &mut self.a
    }

    fn constants(&mut self) -> R {
        if self.d.isa == Isa::Avx2 {
            let byte = if self.d.quant == QuantType::Q8_0 {
                0x8080_8080u32 as i32
            } else {
                0x0F0F_0F0F
            };
            self.a.mov(eax, byte)?;
            self.a.vmovd(xmm15, eax)?;
            self.a.vpbroadcastd(ymm15, xmm15)?;
            self.a.mov(eax, 0x0001_0001)?;
            self.a.vmovd(xmm14, eax)?;
            self.a.vpbroadcastd(ymm14, xmm14)
        } else {
            self.a.mov(eax, 0x0F0F_0F0F)?;
            self.a.vpbroadcastd(zmm31, eax)
        }
    }

    fn tile(&mut self, np: usize, rows: usize, last_partial: bool, prefetch: bool) -> R {
        QGen::tile(self, np, rows, last_partial, prefetch)
    }
}

impl QGen<'_> {
    /// AVX2 tile: each 16-row panel is two halves of 8 rows (one ymm each).
    fn tile_avx2(&mut self, np: usize, mt: usize, last_partial: bool, prefetch: bool) -> R {
        let d = self.d;
        let ty = d.quant;
        let nb = d.k / BLOCK;
        let pbb = panel_block_bytes(ty);
        let row_bytes = nb * ACT_BLOCK;
        let has_min = ty == QuantType::Q4_1;
        let y = |r: usize| YMM[r];
        let nh = 2 * np;
        let acc = |i: usize, h: usize| y(i * nh + h);
        let acc2 = |i: usize, h: usize| y(mt * nh + i * nh + h);
        let sumi = |i: usize| y(mt * nh * (1 + usize::from(has_min)) + i);
        let (t, prod, xb, hi, v, mw, dw) = (ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13);
        for i in 0..mt {
            for h in 0..nh {
                self.a.vxorps(acc(i, h), acc(i, h), acc(i, h))?;
                if has_min {
                    self.a.vxorps(acc2(i, h), acc2(i, h), acc2(i, h))?;
                }
            }
        }
        self.a.mov(r8, r12)?;
        self.a.mov(rax, r11)?;
        self.a.mov(r10d, nb as i32)?;
        let mut top = self.a.create_label();
        self.a.set_label(&mut top)?;
        let co = codes_offset(ty);
        for p in 0..np {
            let pb = (p * nb * pbb) as i32;
            if let (Some(ahead), true) = (d.prefetch_blocks, prefetch) {
                for line in (0..pbb).step_by(64) {
                    self.a
                        .prefetcht0(byte_ptr(r8 + pb + (ahead * pbb + line) as i32))?;
                }
            }
            for half in 0..2 {
                let hx = p * 2 + half;
                let hb = (32 * half) as i32;
                for i in 0..mt {
                    let xr = (i * row_bytes) as i32;
                    self.a.vpxor(sumi(i), sumi(i), sumi(i))?;
                    let dot = |g: &mut Self, codes: AsmRegisterYmm, x_off: i32| -> R {
                        g.a.vpbroadcastd(xb, dword_ptr(rax + xr + x_off))?;
                        g.a.vpmaddubsw(prod, codes, xb)?;
                        g.a.vpmaddwd(prod, prod, ymm14)?;
                        g.a.vpaddd(sumi(i), sumi(i), prod)
                    };
                    match ty {
                        QuantType::Q8_0 => {
                            for g in 0..8 {
                                self.a
                                    .vmovdqu(v, ymmword_ptr(r8 + pb + (co + 64 * g) as i32 + hb))?;
                                self.a.vpxor(v, v, ymm15)?; // back to signed codes
                                self.a.vpabsb(hi, v)?;
                                self.a
                                    .vpbroadcastd(xb, dword_ptr(rax + xr + (16 + 4 * g) as i32))?;
                                self.a.vpsignb(xb, xb, v)?;
                                self.a.vpmaddubsw(prod, hi, xb)?;
                                self.a.vpmaddwd(prod, prod, ymm14)?;
                                self.a.vpaddd(sumi(i), sumi(i), prod)?;
                            }
                        }
                        _ => {
                            for h in 0..4 {
                                self.a
                                    .vmovdqu(v, ymmword_ptr(r8 + pb + (co + 64 * h) as i32 + hb))?;
                                self.a.vpsrlw(hi, v, 4)?;
                                self.a.vpand(v, v, ymm15)?;
                                self.a.vpand(hi, hi, ymm15)?;
                                dot(self, v, (16 + 4 * h) as i32)?;
                                dot(self, hi, (32 + 4 * h) as i32)?;
                            }
                        }
                    }
                    if ty == QuantType::Q4_0 {
                        self.a.vpbroadcastd(t, dword_ptr(rax + xr + 8))?;
                        self.a.vpslld(t, t, 3)?;
                        self.a.vpsubd(sumi(i), sumi(i), t)?;
                    }
                    self.a
                        .vcvtph2ps(dw, xmmword_ptr(r8 + pb + (16 * half) as i32))?;
                    self.a.vcvtdq2ps(sumi(i), sumi(i))?;
                    self.a.vbroadcastss(t, dword_ptr(rax + xr))?;
                    self.a.vmulps(t, dw, t)?;
                    self.a.vfmadd231ps(acc(i, hx), sumi(i), t)?;
                    if has_min {
                        self.a
                            .vcvtph2ps(mw, xmmword_ptr(r8 + pb + 32 + (16 * half) as i32))?;
                        self.a.vbroadcastss(t, dword_ptr(rax + xr + 4))?;
                        self.a.vfmadd231ps(acc2(i, hx), mw, t)?;
                    }
                }
            }
        }
        self.a.add(r8, pbb as i32)?;
        self.a.add(rax, ACT_BLOCK as i32)?;
        self.a.dec(r10d)?;
        self.a.jnz(top)?;
        let rem = d.n % 16;
        for i in 0..mt {
            for h in 0..nh {
                if has_min {
                    self.a.vaddps(acc(i, h), acc(i, h), acc2(i, h))?;
                }
                let m = r9 + (4 * (i * d.n + 8 * h)) as i32;
                let cols = if last_partial && h / 2 == np - 1 {
                    rem.saturating_sub(8 * (h % 2)).min(8)
                } else {
                    8
                };
                if cols == 8 {
                    self.a.vmovups(ymmword_ptr(m), acc(i, h))?;
                } else if cols > 0 {
                    for l in 0..8 {
                        self.a
                            .mov(dword_ptr(rsp + 4 * l as i32), if l < cols { -1 } else { 0 })?;
                    }
                    self.a.vmovdqu(t, ymmword_ptr(rsp))?;
                    self.a.vmaskmovps(ymmword_ptr(m), t, acc(i, h))?;
                }
            }
        }
        Ok(())
    }

    /// One register tile: `mt` activation rows by `np` 16-row panels, over all of `k`.
    ///
    /// Per block and panel, each row's integer dot product runs in two chains (low and high
    /// nibbles, or the two halves of a Q8_0 block) so that `vpdpbusd` latency overlaps; their
    /// exact sum then takes the float steps. Q4_1's offset term `fma(m_w, s_x, acc2)` runs in a
    /// second pass over the blocks, in the same order, reusing the integer registers.
    fn tile(&mut self, np: usize, mt: usize, last_partial: bool, prefetch: bool) -> R {
        if self.d.isa == Isa::Avx2 {
            return self.tile_avx2(np, mt, last_partial, prefetch);
        }
        let d = self.d;
        let ty = d.quant;
        let nb = d.k / BLOCK;
        let pbb = panel_block_bytes(ty);
        let row_bytes = nb * ACT_BLOCK;
        let has_min = ty == QuantType::Q4_1;
        let acc = |i: usize, p: usize| ZMM[i * np + p];
        let s0 = |i: usize| ZMM[mt * np + 2 * i];
        let s1 = |i: usize| ZMM[mt * np + 2 * i + 1];
        let acc2 = |i: usize, p: usize| ZMM[mt * np + i * np + p];
        for i in 0..mt {
            for p in 0..np {
                self.a.vpxord(acc(i, p), acc(i, p), acc(i, p))?;
            }
        }
        self.a.mov(r8, r12)?;
        self.a.mov(rax, r11)?;
        self.a.mov(r10d, nb as i32)?;
        let mut top = self.a.create_label();
        self.a.set_label(&mut top)?;
        let co = codes_offset(ty);
        for p in 0..np {
            let pb = (p * nb * pbb) as i32;
            if let (Some(ahead), true) = (self.d.prefetch_blocks, prefetch) {
                // Each panel is its own stream; prefetch a few blocks ahead (never faults).
                for line in (0..pbb).step_by(64) {
                    self.a
                        .prefetcht0(byte_ptr(r8 + pb + (ahead * pbb + line) as i32))?;
                }
            }
            for i in 0..mt {
                self.a.vpxord(s0(i), s0(i), s0(i))?;
                self.a.vpxord(s1(i), s1(i), s1(i))?;
            }
            match ty {
                QuantType::Q8_0 => {
                    for g in 0..8 {
                        self.a
                            .vmovdqu32(zmm28, zmmword_ptr(r8 + pb + (co + 64 * g) as i32))?;
                        for i in 0..mt {
                            let sum = if g < 4 { s0(i) } else { s1(i) };
                            self.a.vpdpbusd(
                                sum,
                                zmm28,
                                dword_bcst(rax + (i * row_bytes + 16 + 4 * g) as i32),
                            )?;
                        }
                    }
                }
                _ => {
                    for h in 0..4 {
                        self.a
                            .vmovdqu32(zmm28, zmmword_ptr(r8 + pb + (co + 64 * h) as i32))?;
                        self.a.vpsrlw(zmm27, zmm28, 4)?;
                        self.a.vpandd(zmm28, zmm28, zmm31)?;
                        self.a.vpandd(zmm27, zmm27, zmm31)?;
                        for i in 0..mt {
                            let xb = i * row_bytes + 16;
                            self.a
                                .vpdpbusd(s0(i), zmm28, dword_bcst(rax + (xb + 4 * h) as i32))?;
                            self.a.vpdpbusd(
                                s1(i),
                                zmm27,
                                dword_bcst(rax + (xb + 16 + 4 * h) as i32),
                            )?;
                        }
                    }
                }
            }
            let shift = match ty {
                QuantType::Q4_0 => Some(3),
                QuantType::Q8_0 => Some(7),
                _ => None,
            };
            self.a.vcvtph2ps(zmm30, ymmword_ptr(r8 + pb))?;
            for i in 0..mt {
                let xr = (i * row_bytes) as i32;
                self.a.vpaddd(s0(i), s0(i), s1(i))?;
                if let Some(sh) = shift {
                    self.a.vpbroadcastd(zmm25, dword_ptr(rax + xr + 8))?;
                    self.a.vpslld(zmm25, zmm25, sh)?;
                    self.a.vpsubd(s0(i), s0(i), zmm25)?;
                }
                self.a.vcvtdq2ps(s0(i), s0(i))?;
                self.a.vmulps(zmm26, zmm30, dword_bcst(rax + xr))?;
                self.a.vfmadd231ps(acc(i, p), s0(i), zmm26)?;
            }
        }
        self.a.add(r8, pbb as i32)?;
        self.a.add(rax, ACT_BLOCK as i32)?;
        self.a.dec(r10d)?;
        self.a.jnz(top)?;
        if has_min {
            // The offset pass: acc2 = sum over blocks, in order, of m_w * s_x.
            for i in 0..mt {
                for p in 0..np {
                    self.a.vpxord(acc2(i, p), acc2(i, p), acc2(i, p))?;
                }
            }
            self.a.mov(r8, r12)?;
            self.a.mov(rax, r11)?;
            self.a.mov(r10d, nb as i32)?;
            let mut top2 = self.a.create_label();
            self.a.set_label(&mut top2)?;
            for p in 0..np {
                self.a
                    .vcvtph2ps(zmm29, ymmword_ptr(r8 + (p * nb * pbb + 32) as i32))?;
                for i in 0..mt {
                    let xr = (i * row_bytes) as i32;
                    self.a
                        .vfmadd231ps(acc2(i, p), zmm29, dword_bcst(rax + xr + 4))?;
                }
            }
            self.a.add(r8, pbb as i32)?;
            self.a.add(rax, ACT_BLOCK as i32)?;
            self.a.dec(r10d)?;
            self.a.jnz(top2)?;
        }
        let rem = d.n % 16;
        if last_partial {
            self.a.mov(r10d, ((1u32 << rem) - 1) as i32)?;
            self.a.kmovw(k1, r10d)?;
        }
        for i in 0..mt {
            for p in 0..np {
                if has_min {
                    self.a.vaddps(acc(i, p), acc(i, p), acc2(i, p))?;
                }
                let m = r9 + (4 * (i * d.n + 16 * p)) as i32;
                if last_partial && p == np - 1 {
                    self.a.vmovups(zmmword_ptr(m).k1(), acc(i, p))?;
                } else {
                    self.a.vmovups(zmmword_ptr(m), acc(i, p))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::quantize_ggml;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// `run_panels` over any split into panel ranges, for M given at run time, equals the
    /// portable twins bit for bit, on every ISA this CPU has; empty ranges write nothing.
    #[test]
    fn run_panels_any_split_and_m_matches_portable() {
        let (n, k) = (53, 96);
        for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            let w = quantize_ggml(ty, &data(n * k, 1));
            let packed = PackedWeights::pack(ty, n, k, &w).unwrap();
            for isa in [Isa::Avx512, Isa::Avx2]
                .into_iter()
                .filter(|i| i.available())
            {
                let desc = QGemmDesc {
                    m_tile: if isa == Isa::Avx512 { 8 } else { 1 },
                    n_panels: 1,
                    prefetch_blocks: Some(k / 32),
                    ..QGemmDesc::for_isa(ty, 8, n, k, isa)
                };
                let kernel = QGemmKernel::compile(&desc).unwrap();
                let mut acts = ActsQ8::default();
                for m in [1, 3, 8, 11] {
                    acts.quantize_into(&data(m * k, m as u32), m, k).unwrap();
                    let mut want = vec![0f32; m * n];
                    qgemm_portable(ty, n, k, &w, &acts, &mut want);
                    let mut by_panel = [0f32; 16];
                    for t in 0..m {
                        for p in 0..packed.n_panels() {
                            qgemm_panel_portable(&packed, &acts, t, p, &mut by_panel).unwrap();
                            let cols = 16 * p..(16 * p + 16).min(n);
                            assert_eq!(
                                by_panel[..cols.len()],
                                want[t * n + cols.start..t * n + cols.end]
                            );
                        }
                    }
                    for cut in [0, 1, 2, 4] {
                        let mut y = vec![f32::NAN; m * n];
                        for range in [0..cut, cut..cut, cut..packed.n_panels()] {
                            // SAFETY: `y` holds `m * n` values; one call at a time.
                            unsafe { kernel.run_panels(&packed, &acts, y.as_mut_ptr(), range) }
                                .unwrap();
                        }
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&y), bits(&want), "{ty} {isa} m={m} cut={cut}");
                    }
                }
            }
        }
    }
}
