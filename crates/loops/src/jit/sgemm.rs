//! f32 matmul lowered from a schedule to AVX-512 or AVX2 machine code.
//!
//! Accepted schedules (of the reduce node of [`crate::ir::library::matmul_strided`]): any outer
//! loops over `m`, `n`, `k` (splits with tails, any order, the outermost may be parallel),
//! followed by the micro-kernel suffix
//!
//! ```text
//! k/1[:uU]  m/1:reg  n/V:reg  n/1:vec      (V = 16 for AVX-512, 8 for AVX2; the two
//!                                          register-tile loops in either order)
//! ```
//!
//! The register tile is the chunk of `m` x `n` the outer loops leave: its accumulators stay in
//! vector registers for the whole `k` chunk (`vfmadd231ps` with an embedded broadcast of `A`
//! on AVX-512). Shapes are compile-time constants, so every tail is a separately emitted
//! copy of the body: partial row tiles use fewer accumulators, partial column vectors use a
//! k-mask (AVX-512) or `vmaskmovps` (AVX2). When `k` is split by outer loops, a tile loads its
//! accumulators from `C` unless it is the first `k` chunk; every output is one fma chain over
//! `k` in increasing order, the interpreter's order, so results are bit-identical to it.
//!
//! The fused [`Epilogue`] (`t * scale`, `+ bias[n]`, `silu(t) * up[m, n]`, `+ residual[m, n]`,
//! each optional, in this order) runs once per tile, after the last `k` chunk: the scale
//! (one `vmulps` per accumulator by the broadcast value) and the additions (one `vaddps` per
//! accumulator) on the accumulators in registers; with SiLU·mul, the tile is stored first and
//! a short loop over its rows applies `silu(t) * up` (the `exp` polynomial of `jit::vexp`
//! on `-t`, `1 + e`, `vdivps`, `vmulps` by `up`), then the residual, with every vector register
//! free, so AVX-512 keeps the polynomial's 17 constants in registers (from memory, each use is
//! a 64-byte load, which made the fused kernel slower than a separate pass) and evaluates
//! three vectors side by side. Each step is one rounded IEEE operation, as in the interpreter.
//!
//! The generated function is `extern "C" fn(a, b, c, lo, count, run_tail, scratch, bias,
//! residual, up, scale: f32)`: it runs iterations `lo..lo + count` of the outermost loop's full
//! iterations, then its tail iteration if `run_tail != 0`; threads split the outermost loop
//! this way. Epilogue pointers of stages the kernel lacks are never read.

use super::regs::{YMM, ZMM};
use super::vasm::{Gen as VecAsm, Mask, Src};
use super::vexp::{ExpConsts, ExpRegs};
use super::{asm_err, Isa};
use crate::error::{Error, Result};
use crate::ir::library::Epilogue;
use crate::ir::{Access, BinaryOp, Expr, InputId, NodeId, Op, ReduceOp, Storage, UnaryOp, VarId};
use crate::schedule::{Annot, Loop, Schedule};
use iced_x86::code_asm::*;

/// The matmul a schedule is lowered for, read off the expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MatmulShape {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// The reduction length.
    pub k: usize,
    /// Elements between rows of A.
    pub a_row: usize,
    /// Elements between columns of A.
    pub a_col: usize,
    /// Elements between rows of B (columns are contiguous).
    pub ldb: usize,
    /// Elements between rows of C (columns are contiguous).
    pub ldc: usize,
    /// Variable handles of m, n, k.
    pub vars: [VarId; 3],
    /// The reduce node.
    pub node: NodeId,
    /// The input read as B.
    pub b_input: InputId,
    /// The stages fused after the reduction (the expression's nodes above the reduce).
    pub epilogue: Epilogue,
}

/// Vectors of a row the SiLU·mul pass evaluates side by side (four registers each), so the
/// `exp` polynomials of neighbouring vectors overlap.
const SILU_CHAINS: usize = 4;

/// Recognizes `C[m,n] = sum_k A[m,k] * B[k,n]` with unit column stride in B and C, followed
/// by the [`Epilogue`]'s stages as [`crate::ir::library::matmul_general`] writes them (each
/// optional, each at most once, in the order scale, bias, silu_mul, residual; their operands
/// f32 reads at offset 0: `scale[]`, `bias[n]` stride 1, `up[m, n]` and `residual[m, n]` with
/// strides `(n, 1)`). Anything else is `Error::Unsupported`.
pub fn matmul_shape(expr: &Expr) -> Result<MatmulShape> {
    let unsupported = |reason: &str| Error::Unsupported {
        backend: "sgemm",
        reason: reason.to_string(),
    };
    // Peel the epilogue, outer stage first: the stages met must have decreasing ranks in
    // `Epilogue::STAGES` (scale 0, bias 1, silu_mul 2, residual 3).
    let mut out = expr.output;
    let mut on = [false; 4];
    let mut last_rank = Epilogue::STAGES.len();
    let space = expr.node(expr.output).space.clone();
    // An f32 read at offset 0: its index variables and strides.
    let f32_read = |id: NodeId| match &expr.node(id).op {
        Op::Read {
            input,
            index,
            access: Access::Strided { offset: 0, strides },
        } if expr.inputs[input.0 as usize].storage == Storage::F32 => {
            Some((index.as_slice(), strides.as_slice()))
        }
        _ => None,
    };
    while let [vm, vn] = space[..] {
        let n = expr.var(vn).extent as isize;
        let is_mn = |r: Option<(&[VarId], &[isize])>| r == Some((&[vm, vn], &[n, 1]));
        let stage = match &expr.node(out).op {
            Op::Binary(BinaryOp::Add, x, y) if is_mn(f32_read(*y)) => Some((3, *x)),
            Op::Binary(BinaryOp::Add, x, y) if f32_read(*y) == Some((&[vn], &[1])) => Some((1, *x)),
            Op::Binary(BinaryOp::Mul, x, y) => match (&expr.node(*x).op, f32_read(*y)) {
                (Op::Unary(UnaryOp::Silu, t), r) if is_mn(r) => Some((2, *t)),
                (_, Some((&[], &[]))) => Some((0, *x)),
                _ => None,
            },
            _ => None,
        };
        let Some((rank, inner)) = stage else {
            break;
        };
        if rank >= last_rank {
            let names = Epilogue::STAGES;
            return Err(unsupported(&if rank == last_rank {
                format!("the epilogue stage `{}` appears twice", names[rank])
            } else {
                format!(
                    "the epilogue applies `{}` before `{}`; the fused order is {}",
                    names[rank],
                    names[last_rank],
                    names.join(", ")
                )
            }));
        }
        on[rank] = true;
        last_rank = rank;
        out = inner;
    }
    let [scale, bias, silu_mul, residual] = on;
    let epilogue = Epilogue {
        scale,
        bias,
        silu_mul,
        residual,
    };
    let Op::Reduce {
        op: ReduceOp::Add,
        arg,
        keep,
    } = &expr.node(out).op
    else {
        return Err(unsupported(
            "the output is not a sum reduction followed by the fused epilogue stages (scale, bias, silu_mul, residual, each optional, in this order)",
        ));
    };
    if keep[..] != space[..] {
        return Err(unsupported(
            "the output is not indexed like the reduction (m, n)",
        ));
    }
    let Op::Binary(BinaryOp::Mul, ra, rb) = expr.node(*arg).op else {
        return Err(unsupported("the reduction is not over a product"));
    };
    let (
        Op::Read {
            input: a_input,
            index: ia,
            access:
                Access::Strided {
                    offset: 0,
                    strides: sa,
                },
            ..
        },
        Op::Read {
            input: b_input,
            index: ib,
            access:
                Access::Strided {
                    offset: 0,
                    strides: sb,
                },
        },
    ) = (&expr.node(ra).op, &expr.node(rb).op)
    else {
        return Err(unsupported("operands are not f32 reads at offset 0"));
    };
    // F16/BF16 inputs are strided reads too; this generator loads only f32.
    if [a_input, b_input]
        .iter()
        .any(|i| expr.inputs[i.0 as usize].storage != crate::ir::Storage::F32)
    {
        return Err(unsupported("operands are not f32 reads at offset 0"));
    }
    if keep.len() != 2 || ia.len() != 2 || ib.len() != 2 {
        return Err(unsupported("not a 2-d matmul"));
    }
    let (vm, vn) = (keep[0], keep[1]);
    let vk = ia[1];
    if ia[0] != vm || ib[0] != vk || ib[1] != vn || vk == vm || vk == vn {
        return Err(unsupported("operands are not A[m,k] and B[k,n]"));
    }
    if sb[1] != 1 || expr.out_strides[1] != 1 || expr.out_offset != 0 {
        return Err(unsupported("B and C need unit column stride"));
    }
    if sa[0] < 0 || sa[1] < 0 || sb[0] < 0 || expr.out_strides[0] < 0 {
        return Err(unsupported("negative strides"));
    }
    Ok(MatmulShape {
        m: expr.var(vm).extent,
        n: expr.var(vn).extent,
        k: expr.var(vk).extent,
        a_row: sa[0] as usize,
        a_col: sa[1] as usize,
        ldb: sb[0] as usize,
        ldc: expr.out_strides[0] as usize,
        vars: [vm, vn, vk],
        node: out,
        b_input: *b_input,
        epilogue,
    })
}

/// A schedule checked against what the code generator can emit.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The matmul.
    pub shape: MatmulShape,
    /// Loops above the micro-kernel, outer to inner, as (var 0=m 1=n 2=k, step).
    pub outer: Vec<(usize, usize)>,
    /// k unroll factor in the micro-kernel.
    pub unroll: usize,
    /// Largest register tile: rows.
    pub tile_rows: usize,
    /// Largest register tile: vectors per row.
    pub tile_vecs: usize,
    /// Target.
    pub isa: Isa,
    /// B packed at this outer-loop depth, if at all.
    pub pack_b: Option<usize>,
    /// Width of a packed B tile (the register tile's n chunk).
    pub pack_nr: usize,
    /// Scratch floats the packed B needs.
    pub scratch_floats: usize,
}

impl Plan {
    /// Checks `schedule` (validated first) and extracts the loop structure.
    pub fn new(expr: &Expr, schedule: &Schedule, isa: Isa) -> Result<Plan> {
        schedule.validate(expr)?;
        let shape = matmul_shape(expr)?;
        if !matches!(isa, Isa::Avx512 | Isa::Avx2) {
            return Err(Error::Unsupported {
                backend: "sgemm",
                reason: format!("no code generator for {isa}"),
            });
        }
        let lanes = isa.lanes();
        let loops = &schedule.node(shape.node).loops;
        let unsupported = |reason: String| Error::Unsupported {
            backend: "sgemm",
            reason,
        };
        let var_idx = |l: &Loop| {
            shape
                .vars
                .iter()
                .position(|v| *v == l.var)
                .expect("validated: loops use m, n, k")
        };
        let suffix_err = || {
            unsupported(format!(
                "the innermost loops must be `k/1[:uN] [m/1:reg] [n/{lanes}:reg] n/1:vec` (register tiles in either order) for {isa}; got `{}`",
                schedule.node_text(expr, shape.node)
            ))
        };
        let mut idx = loops.len();
        let vec_ok = idx > 0
            && var_idx(&loops[idx - 1]) == 1
            && loops[idx - 1].step == 1
            && loops[idx - 1].annot == Annot::Vectorize;
        if !vec_ok {
            return Err(suffix_err());
        }
        idx -= 1;
        let (mut reg_m, mut reg_n) = (false, false);
        while idx > 0 && loops[idx - 1].annot == Annot::RegisterTile {
            let l = &loops[idx - 1];
            match (var_idx(l), l.step) {
                (0, 1) if !reg_m => reg_m = true,
                (1, s) if s == lanes && !reg_n => reg_n = true,
                _ => return Err(suffix_err()),
            }
            idx -= 1;
        }
        if idx == 0 || var_idx(&loops[idx - 1]) != 2 || loops[idx - 1].step != 1 {
            return Err(suffix_err());
        }
        let kloop = &loops[idx - 1];
        let unroll = match kloop.annot {
            Annot::Unroll(u) => u as usize,
            Annot::Serial => 1,
            a => return Err(unsupported(format!("the k/1 loop cannot be {a:?}"))),
        };
        let outer_loops = &loops[..idx - 1];
        let mut outer = Vec::new();
        for (i, l) in outer_loops.iter().enumerate() {
            match l.annot {
                Annot::Serial | Annot::Unroll(_) => {}
                Annot::Parallel if i == 0 => {}
                a => return Err(unsupported(format!("outer loop {i} cannot be {a:?}"))),
            }
            outer.push((var_idx(l), l.step));
        }
        let extents = [shape.m, shape.n, shape.k];
        let chunk = |v: usize| {
            outer
                .iter()
                .rev()
                .find(|(w, _)| *w == v)
                .map_or(extents[v], |(_, s)| (*s).min(extents[v]))
        };
        let tile_rows = chunk(0);
        let tile_vecs = chunk(1).div_ceil(lanes);
        if !reg_m && tile_rows > 1 {
            return Err(unsupported(format!("without an m/1:reg loop the outer loops must walk m down to 1 row (chunk is {tile_rows})")));
        }
        if !reg_n && tile_vecs > 1 {
            return Err(unsupported(format!(
                "without an n/{lanes}:reg loop the n chunk must fit one vector (chunk is {})",
                chunk(1)
            )));
        }
        // Accumulators, one B vector per column vector, a broadcast register (AVX2, or AVX-512
        // with several vectors per row) and the AVX2 lane mask. (The epilogue needs one
        // register besides the accumulators, and SiLU·mul runs after the tile is stored.)
        let needed = tile_rows * tile_vecs
            + tile_vecs
            + usize::from(isa == Isa::Avx2 || tile_vecs > 1)
            + usize::from(isa == Isa::Avx2);
        if needed > isa.n_vregs() {
            return Err(Error::RegisterTileTooLarge {
                rows: tile_rows,
                vectors: tile_vecs,
                needed,
                available: isa.n_vregs(),
                isa: isa.to_string(),
            });
        }
        let max_disp = [
            shape.a_row * tile_rows + shape.a_col * unroll,
            shape.ldb * unroll + chunk(1),
            shape.ldc * tile_rows + chunk(1),
        ];
        if max_disp.iter().any(|d| d * 4 > i32::MAX as usize / 2) {
            return Err(unsupported(
                "strides too large for 32-bit displacements".into(),
            ));
        }
        let sched = schedule.node(shape.node);
        let mut pack_b = None;
        let mut scratch_floats = 0;
        for p in &sched.packs {
            if p.input != shape.b_input {
                return Err(unsupported("only B can be packed".into()));
            }
            if isa != Isa::Avx512 {
                return Err(unsupported(format!("packing is not implemented for {isa}")));
            }
            if p.depth > outer.len() {
                return Err(unsupported(format!(
                    "B must be packed above the micro-kernel (depth <= {})",
                    outer.len()
                )));
            }
            let last_n = outer.iter().rposition(|(v, _)| *v == 1);
            for (i, &(v, _)) in outer.iter().enumerate().skip(p.depth) {
                if v == 2 || (v == 1 && Some(i) != last_n) {
                    return Err(unsupported(format!(
                        "below the packing depth {} only m loops and the n tile loop may run (loop {i} is over {})",
                        p.depth,
                        ["m", "n", "k"][v]
                    )));
                }
            }
            let at = |v: usize| {
                outer[..p.depth]
                    .iter()
                    .rev()
                    .find(|(w, _)| *w == v)
                    .map_or(extents[v], |(_, s)| (*s).min(extents[v]))
            };
            scratch_floats = at(1).div_ceil(chunk(1)) * chunk(1) * at(2);
            pack_b = Some(p.depth);
        }
        let pack_nr = chunk(1);
        Ok(Plan {
            shape,
            outer,
            unroll,
            tile_rows,
            tile_vecs,
            isa,
            pack_b,
            pack_nr,
            scratch_floats,
        })
    }

    /// Full iterations of the outermost loop (threads split these) and whether it has a tail.
    pub fn outer_iterations(&self) -> (usize, bool) {
        match self.outer.first() {
            None => (1, false),
            Some(&(v, step)) => {
                let e = [self.shape.m, self.shape.n, self.shape.k][v];
                (e / step, e % step != 0)
            }
        }
    }

    /// Whether the outermost loop can be split among threads (not a reduction loop).
    pub fn parallel_ok(&self) -> bool {
        self.outer.first().is_some_and(|&(v, _)| v != 2)
    }
}

// Register roles: rdi = A cursor, rsi = B cursor, rdx = C cursor, r10 = k offset (elements),
// r11 / rax = A / B cursors inside the micro-kernel, rbx = k counter, rcx/r8/r9 = lo, count,
// run_tail, r12 / r13 / r14 = bias / residual / up cursors. Outer loop counters live on the
// stack.
struct Gen<'p> {
    /// The assembler (`v.a`), with the vector helpers and constant pool of `vasm`.
    v: VecAsm,
    plan: &'p Plan,
    has_outer_k: bool,
    /// While emitting below the packing depth: the packed k chunk.
    packed_ck: Option<usize>,
    /// The `exp` polynomial's constants (in the pool), when the epilogue has SiLU·mul.
    exp: Option<ExpConsts>,
}

// Stack frame: [0] count, [8] run_tail, [16] scratch, [24] saved B cursor, [32] the scale,
// [40 + 8 * level] loop counters, then 32 bytes for the AVX2 lane mask.
const SLOT_SCRATCH: i32 = 16;
const SLOT_SAVED_B: i32 = 24;
const SLOT_SCALE: i32 = 32;
const SLOT_LOOPS: i32 = 40;

/// Emits the machine code of `plan` (assembled at address 0, position-independent; the
/// constants of the SiLU·mul epilogue follow the code).
pub fn generate(plan: &Plan) -> Result<Vec<u8>> {
    let mut v = VecAsm::new(plan.isa).map_err(asm_err)?;
    let exp = if plan.shape.epilogue.silu_mul {
        Some(ExpConsts::new(&mut v).map_err(asm_err)?)
    } else {
        None
    };
    let mut g = Gen {
        v,
        plan,
        has_outer_k: plan.outer.iter().any(|(v, _)| *v == 2),
        packed_ck: None,
        exp,
    };
    g.emit().map_err(asm_err)?;
    g.v.finish().map_err(asm_err)
}

type R = std::result::Result<(), iced_x86::IcedError>;

/// The pointers the loops move: A, B, C, bias, residual, up.
const CURSORS: [AsmRegister64; 6] = [rdi, rsi, rdx, r12, r13, r14];

impl Gen<'_> {
    fn emit(&mut self) -> R {
        let n_slots = self.plan.outer.len() + 9;
        self.v.a.push(rbx)?;
        self.v.a.push(r12)?;
        self.v.a.push(r13)?;
        self.v.a.push(r14)?;
        self.v.a.sub(rsp, (8 * n_slots) as i32)?;
        // The scale arrives in xmm0 (the one float argument), before any vector register is
        // written.
        self.v.a.vmovss(dword_ptr(rsp + SLOT_SCALE), xmm0)?;
        // Stack arguments 7..10 (scratch, bias, residual, up) sit above the return address and
        // the four saved registers.
        let args = (8 * n_slots + 40) as i32;
        self.v.a.mov(r11, qword_ptr(rsp + args))?;
        self.v.a.mov(qword_ptr(rsp + SLOT_SCRATCH), r11)?;
        self.v.a.mov(r12, qword_ptr(rsp + args + 8))?;
        self.v.a.mov(r13, qword_ptr(rsp + args + 16))?;
        self.v.a.mov(r14, qword_ptr(rsp + args + 24))?;
        self.v.a.mov(qword_ptr(rsp + 8), r9)?;
        self.v.a.mov(qword_ptr(rsp), r8)?;
        self.v.a.xor(r10d, r10d)?;
        let extents = [self.plan.shape.m, self.plan.shape.n, self.plan.shape.k];
        if self.plan.pack_b == Some(0) {
            self.pack(extents)?;
        }
        if self.plan.outer.is_empty() {
            self.micro(extents[0], extents[1], extents[2])?;
        } else {
            self.outermost(extents)?;
        }
        if self.plan.pack_b == Some(0) {
            self.unpack()?;
        }
        self.v.a.add(rsp, (8 * n_slots) as i32)?;
        self.v.a.pop(r14)?;
        self.v.a.pop(r13)?;
        self.v.a.pop(r12)?;
        self.v.a.pop(rbx)
        // `generate` ends with `vzeroupper; ret` and the constant pool.
    }

    /// Bytes a pointer moves per element of variable `v`: (A, B, C, bias, residual, up), the
    /// order of [`CURSORS`].
    fn deltas(&self, v: usize) -> [i64; 6] {
        let s = &self.plan.shape;
        let e = s.epilogue;
        let (bias, res, up) = (
            i64::from(e.bias),
            i64::from(e.residual),
            i64::from(e.silu_mul),
        );
        let n = s.n as i64;
        match v {
            0 => [
                4 * s.a_row as i64,
                0,
                4 * s.ldc as i64,
                0,
                4 * res * n,
                4 * up * n,
            ],
            1 => [
                0,
                4 * self.packed_ck.unwrap_or(1) as i64,
                4,
                4 * bias,
                4 * res,
                4 * up,
            ],
            _ => [4 * s.a_col as i64, 4 * s.ldb as i64, 0, 0, 0, 0],
        }
    }

    fn advance(&mut self, v: usize, elems: i64) -> R {
        if elems == 0 {
            return Ok(());
        }
        let d = self.deltas(v);
        for (reg, dd) in CURSORS.into_iter().zip(d) {
            if dd != 0 {
                self.v.a.add(reg, (dd * elems) as i32)?;
            }
        }
        if v == 2 && self.has_outer_k {
            self.v.a.add(r10, elems as i32)?;
        }
        Ok(())
    }

    fn outermost(&mut self, extents: [usize; 3]) -> R {
        let (v, step) = self.plan.outer[0];
        let full = extents[v] / step;
        let tail = extents[v] % step;
        // Skip to iteration `lo`.
        let d = self.deltas(v);
        for (reg, dd) in CURSORS.into_iter().zip(d) {
            if dd != 0 {
                self.v.a.imul_3(r11, rcx, (dd * step as i64) as i32)?;
                self.v.a.add(reg, r11)?;
            }
        }
        if v == 2 {
            self.v.a.imul_3(r11, rcx, step as i32)?;
            self.v.a.add(r10, r11)?;
        }
        let mut after = self.v.a.create_label();
        let mut top = self.v.a.create_label();
        if full > 0 {
            self.v.a.cmp(qword_ptr(rsp), 0)?;
            self.v.a.je(after)?;
            self.v.a.set_label(&mut top)?;
            let mut sub = extents;
            sub[v] = step;
            self.level(1, sub)?;
            self.advance(v, step as i64)?;
            self.v.a.dec(qword_ptr(rsp))?;
            self.v.a.jnz(top)?;
        }
        self.v.a.set_label(&mut after)?;
        self.v.a.nop()?;
        if tail > 0 {
            let mut done = self.v.a.create_label();
            self.v.a.cmp(qword_ptr(rsp + 8), 0)?;
            self.v.a.je(done)?;
            let mut sub = extents;
            sub[v] = tail;
            self.level(1, sub)?;
            self.v.a.set_label(&mut done)?;
            self.v.a.nop()?;
        }
        Ok(())
    }

    /// Copies the B chunk (`chunk[1]` columns x `chunk[2]` rows at the B cursor) into the
    /// scratch as tiles of `pack_nr` columns, each `chunk[2]` rows of `pack_nr` floats, then
    /// points the B cursor at the scratch.
    fn pack(&mut self, chunk: [usize; 3]) -> R {
        let (cn, ck, nr) = (chunk[1], chunk[2], self.plan.pack_nr);
        let lanes = 16;
        self.v.a.mov(qword_ptr(rsp + SLOT_SAVED_B), rsi)?;
        self.v.a.mov(r8, rsi)?;
        self.v.a.mov(r9, qword_ptr(rsp + SLOT_SCRATCH))?;
        self.v.a.mov(ebx, ck as i32)?;
        let mut top = self.v.a.create_label();
        self.v.a.set_label(&mut top)?;
        for t in 0..cn.div_ceil(nr) {
            let width = nr.min(cn - t * nr);
            for j in 0..width.div_ceil(lanes) {
                let cols = lanes.min(width - j * lanes);
                let src = r8 + (4 * (t * nr + j * lanes)) as i32;
                let dst = r9 + (4 * (t * ck * nr + j * lanes)) as i32;
                if cols == lanes {
                    self.v.a.vmovups(zmm31, zmmword_ptr(src))?;
                    self.v.a.vmovups(zmmword_ptr(dst), zmm31)?;
                } else {
                    self.v.a.mov(r11d, ((1u32 << cols) - 1) as i32)?;
                    self.v.a.kmovw(k2, r11d)?;
                    self.v.a.vmovups(zmm31.k2().z(), zmmword_ptr(src))?;
                    self.v.a.vmovups(zmmword_ptr(dst).k2(), zmm31)?;
                }
            }
        }
        self.v.a.add(r8, (4 * self.plan.shape.ldb) as i32)?;
        self.v.a.add(r9, (4 * nr) as i32)?;
        self.v.a.dec(ebx)?;
        self.v.a.jnz(top)?;
        self.v.a.mov(rsi, qword_ptr(rsp + SLOT_SCRATCH))?;
        self.packed_ck = Some(ck);
        Ok(())
    }

    fn unpack(&mut self) -> R {
        self.v.a.mov(rsi, qword_ptr(rsp + SLOT_SAVED_B))?;
        self.packed_ck = None;
        Ok(())
    }

    fn level(&mut self, level: usize, chunk: [usize; 3]) -> R {
        if self.plan.pack_b == Some(level) && level > 0 {
            self.pack(chunk)?;
            self.level_body(level, chunk)?;
            return self.unpack();
        }
        self.level_body(level, chunk)
    }

    fn level_body(&mut self, level: usize, chunk: [usize; 3]) -> R {
        if level == self.plan.outer.len() {
            return self.micro(chunk[0], chunk[1], chunk[2]);
        }
        let (v, step) = self.plan.outer[level];
        let c = chunk[v];
        let full = c / step;
        let tail = c % step;
        let slot = SLOT_LOOPS + 8 * level as i32;
        let mut sub = chunk;
        sub[v] = step;
        if full == 1 {
            self.level(level + 1, sub)?;
        } else if full > 1 {
            self.v.a.mov(qword_ptr(rsp + slot), full as i32)?;
            let mut top = self.v.a.create_label();
            self.v.a.set_label(&mut top)?;
            self.level(level + 1, sub)?;
            self.advance(v, step as i64)?;
            self.v.a.dec(qword_ptr(rsp + slot))?;
            self.v.a.jnz(top)?;
            self.advance(v, -((full * step) as i64))?;
        }
        if tail > 0 {
            self.advance(v, (full * step) as i64)?;
            sub[v] = tail;
            self.level(level + 1, sub)?;
            self.advance(v, -((full * step) as i64))?;
        }
        Ok(())
    }

    /// Vector register `d` = the f32 at `m` in every lane.
    fn broadcast(&mut self, d: usize, m: AsmMemoryOperand) -> R {
        match self.plan.isa {
            Isa::Avx512 => self.v.a.vbroadcastss(ZMM[d], m),
            _ => self.v.a.vbroadcastss(YMM[d], m),
        }
    }

    /// `acc(i, j) += [base + 4 * (i * ld + j * lanes)]` for the tile's `rows x nv` vectors
    /// (`ld` 0: a row vector added to every row), the last vector through `lane_mask`'s
    /// mask; `tmp` is free for masked loads.
    #[allow(clippy::too_many_arguments)]
    fn add_rows(
        &mut self,
        base: AsmRegister64,
        ld: usize,
        rows: usize,
        nv: usize,
        tmp: usize,
        acc: &dyn Fn(usize, usize) -> usize,
        lane_mask: &dyn Fn(usize) -> Mask,
    ) -> R {
        let lanes = self.plan.isa.lanes();
        for i in 0..rows {
            for j in 0..nv {
                let m = base + (4 * (i * ld + j * lanes)) as i32;
                let a = acc(i, j);
                match (self.plan.isa, lane_mask(j)) {
                    // A full vector: the addition reads memory directly.
                    (Isa::Avx512, Mask::All) => self.v.a.vaddps(ZMM[a], ZMM[a], zmmword_ptr(m))?,
                    (_, Mask::All) => self.v.a.vaddps(YMM[a], YMM[a], ymmword_ptr(m))?,
                    (_, partial) => {
                        self.v.load(tmp, m, partial)?;
                        self.v.vaddps(a, a, Src::R(tmp))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// SiLU·mul, then the residual, over the stored tile of `rows x nv` vectors at `rdx`, in
    /// the epilogue's order and roundings: `c = (c / (1 + exp(-c))) * up (+ residual)`. A
    /// loop over the rows (small code); within a row, up to [`SILU_CHAINS`] vectors side by side, each in four registers from
    /// `free` (with AVX-512, the last 17 of `free` hold the constants), the last vector
    /// through `lane_mask`'s mask. Clobbers rax, rbx, r8, r9, `k2`.
    fn silu_pass(
        &mut self,
        rows: usize,
        nv: usize,
        free: &[usize],
        lane_mask: &dyn Fn(usize) -> Mask,
    ) -> R {
        let s = self.plan.shape;
        let lanes = self.plan.isa.lanes();
        let residual = s.epilogue.residual;
        let mut exp = self
            .exp
            .expect("the plan has SiLU·mul, so generate made the constants");
        let a = &mut self.v;
        // AVX-512: the constants in registers (loaded once per tile, instead of a 64-byte
        // memory operand per use), the rest for the chains.
        let free = if self.plan.isa == Isa::Avx512 {
            let (chains, consts) = free.split_at(free.len() - ExpConsts::N_CONSTS);
            exp.hoist(a, consts)?;
            chains
        } else {
            free
        };
        let n_chains = (free.len() / 4).min(nv).clamp(1, SILU_CHAINS);
        a.a.mov(rax, rdx)?;
        a.a.mov(r8, r14)?;
        if residual {
            a.a.mov(r9, r13)?;
        }
        let mut top = a.a.create_label();
        if rows > 1 {
            a.a.mov(ebx, rows as i32)?;
            a.a.set_label(&mut top)?;
        }
        let vecs: Vec<usize> = (0..nv).collect();
        for group in vecs.chunks(n_chains) {
            let sets: Vec<ExpRegs> = free
                .chunks_exact(4)
                .take(group.len())
                .map(|f| ExpRegs {
                    x: f[0],
                    p: f[1],
                    r: f[2],
                    n: f[3],
                })
                .collect();
            for (&j, r) in group.iter().zip(&sets) {
                a.load(r.x, rax + (4 * j * lanes) as i32, lane_mask(j))?;
            }
            exp.emit_neg(a, &sets)?;
            for r in &sets {
                a.vaddps(r.p, r.p, exp.one)?;
            }
            for r in &sets {
                a.vdivps(r.x, r.x, Src::R(r.p))?;
            }
            for (&j, r) in group.iter().zip(&sets) {
                let d = (4 * j * lanes) as i32;
                a.load(r.p, r8 + d, lane_mask(j))?;
                a.vmulps(r.x, r.x, Src::R(r.p))?;
                if residual {
                    a.load(r.p, r9 + d, lane_mask(j))?;
                    a.vaddps(r.x, r.x, Src::R(r.p))?;
                }
                a.store(rax + d, r.x, lane_mask(j))?;
            }
        }
        if rows > 1 {
            a.a.add(rax, (4 * s.ldc) as i32)?;
            a.a.add(r8, (4 * s.n) as i32)?;
            if residual {
                a.a.add(r9, (4 * s.n) as i32)?;
            }
            a.a.dec(ebx)?;
            a.a.jnz(top)?;
        }
        Ok(())
    }

    fn micro(&mut self, rows: usize, cols: usize, ck: usize) -> R {
        let isa = self.plan.isa;
        let lanes = isa.lanes();
        let nv = cols.div_ceil(lanes);
        let rem = cols % lanes;
        let s = self.plan.shape;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        // Register map: accumulators 0..rows*nv, then B vectors, then (AVX2) broadcast and mask.
        let acc = |i: usize, j: usize| i * nv + j;
        let breg = |j: usize| rows * nv + j;
        let (bcast, mask) = (rows * nv + nv, rows * nv + nv + 1);
        if rem > 0 {
            match isa {
                Isa::Avx512 => {
                    self.v.a.mov(eax, ((1u32 << rem) - 1) as i32)?;
                    self.v.a.kmovw(k1, eax)?;
                }
                _ => {
                    // Build the lane mask on the stack (after the loop counters): `rem` lanes
                    // of -1, then zeros.
                    let base = SLOT_LOOPS + 8 * self.plan.outer.len() as i32;
                    for l in 0..8 {
                        self.v.a.mov(
                            dword_ptr(rsp + (base + 4 * l as i32)),
                            if l < rem { -1 } else { 0 },
                        )?;
                    }
                    self.v.a.vmovdqu(YMM[mask], ymmword_ptr(rsp + base))?;
                }
            }
        }
        let c_disp = |i: usize, j: usize| (4 * (i * s.ldc + j * lanes)) as i32;
        let last_masked = |j: usize| rem > 0 && j == nv - 1;
        // Initialize accumulators: zero for the first k chunk, else load C.
        let zero = |g: &mut Self| -> R {
            for i in 0..rows {
                for j in 0..nv {
                    match isa {
                        Isa::Avx512 => {
                            g.v.a
                                .vpxord(ZMM[acc(i, j)], ZMM[acc(i, j)], ZMM[acc(i, j)])?
                        }
                        _ => {
                            g.v.a
                                .vxorps(YMM[acc(i, j)], YMM[acc(i, j)], YMM[acc(i, j)])?
                        }
                    }
                }
            }
            Ok(())
        };
        if self.has_outer_k {
            let mut load = self.v.a.create_label();
            let mut go = self.v.a.create_label();
            self.v.a.test(r10, r10)?;
            self.v.a.jnz(load)?;
            zero(self)?;
            self.v.a.jmp(go)?;
            self.v.a.set_label(&mut load)?;
            for i in 0..rows {
                for j in 0..nv {
                    let m = rdx + c_disp(i, j);
                    match (isa, last_masked(j)) {
                        (Isa::Avx512, false) => self.v.a.vmovups(ZMM[acc(i, j)], zmmword_ptr(m))?,
                        (Isa::Avx512, true) => {
                            self.v.a.vmovups(ZMM[acc(i, j)].k1().z(), zmmword_ptr(m))?
                        }
                        (_, false) => self.v.a.vmovups(YMM[acc(i, j)], ymmword_ptr(m))?,
                        (_, true) => {
                            self.v
                                .a
                                .vmaskmovps(YMM[acc(i, j)], YMM[mask], ymmword_ptr(m))?
                        }
                    }
                }
            }
            self.v.a.set_label(&mut go)?;
            self.v.a.nop()?;
        } else {
            zero(self)?;
        }
        // The k loop.
        self.v.a.mov(r11, rdi)?;
        self.v.a.mov(rax, rsi)?;
        let ldb = if self.packed_ck.is_some() {
            self.plan.pack_nr
        } else {
            s.ldb
        };
        let u = self.plan.unroll.min(ck.max(1));
        let iters = ck / u;
        let step = |g: &mut Self, t: usize| -> R {
            for j in 0..nv {
                let m = rax + (4 * (t * ldb + j * lanes)) as i32;
                match (isa, last_masked(j)) {
                    (Isa::Avx512, false) => g.v.a.vmovups(ZMM[breg(j)], zmmword_ptr(m))?,
                    (Isa::Avx512, true) => g.v.a.vmovups(ZMM[breg(j)].k1().z(), zmmword_ptr(m))?,
                    (_, false) => g.v.a.vmovups(YMM[breg(j)], ymmword_ptr(m))?,
                    (_, true) => g.v.a.vmaskmovps(YMM[breg(j)], YMM[mask], ymmword_ptr(m))?,
                }
            }
            for i in 0..rows {
                let am = r11 + (4 * (i * s.a_row + t * s.a_col)) as i32;
                match isa {
                    Isa::Avx512 if nv == 1 => {
                        g.v.a
                            .vfmadd231ps(ZMM[acc(i, 0)], ZMM[breg(0)], dword_bcst(am))?
                    }
                    Isa::Avx512 => {
                        // One broadcast feeds the row's vectors (an embedded broadcast would
                        // reload A for each).
                        g.v.a.vbroadcastss(ZMM[bcast], dword_ptr(am))?;
                        for j in 0..nv {
                            g.v.a
                                .vfmadd231ps(ZMM[acc(i, j)], ZMM[breg(j)], ZMM[bcast])?;
                        }
                    }
                    _ => {
                        g.v.a.vbroadcastss(YMM[bcast], dword_ptr(am))?;
                        for j in 0..nv {
                            g.v.a
                                .vfmadd231ps(YMM[acc(i, j)], YMM[breg(j)], YMM[bcast])?;
                        }
                    }
                }
            }
            Ok(())
        };
        if iters > 0 {
            let mut top = self.v.a.create_label();
            if iters > 1 {
                self.v.a.mov(ebx, iters as i32)?;
                self.v.a.set_label(&mut top)?;
            }
            for t in 0..u {
                step(self, t)?;
            }
            if iters > 1 {
                self.v.a.add(r11, (4 * u * s.a_col) as i32)?;
                self.v.a.add(rax, (4 * u * ldb) as i32)?;
                self.v.a.dec(ebx)?;
                self.v.a.jnz(top)?;
            } else {
                self.v.a.add(r11, (4 * u * s.a_col) as i32)?;
                self.v.a.add(rax, (4 * u * ldb) as i32)?;
            }
        }
        for t in 0..ck - iters * u {
            step(self, t)?;
        }
        let e = s.epilogue;
        let lane_mask = |j: usize| match (isa, last_masked(j)) {
            (_, false) => Mask::All,
            (Isa::Avx512, true) => Mask::K(1),
            (_, true) => Mask::Y(mask),
        };
        // The epilogue runs once, after the last k chunk: on the accumulators for the scale,
        // the bias and (without SiLU·mul) the residual; then, after the tile is stored, in a
        // pass over it for SiLU·mul and the residual.
        let last_chunk = |g: &mut Self, skip: CodeLabel| -> R {
            if g.has_outer_k {
                g.v.a.cmp(r10, (s.k - ck) as i32)?;
                g.v.a.jne(skip)?;
            }
            Ok(())
        };
        if e.scale || e.bias || (e.residual && !e.silu_mul) {
            let mut skip = self.v.a.create_label();
            last_chunk(self, skip)?;
            // Free after the k loop: the first B vector's register.
            let tmp = breg(0);
            if e.scale {
                self.broadcast(tmp, dword_ptr(rsp + SLOT_SCALE))?;
                for i in 0..rows {
                    for j in 0..nv {
                        self.v.vmulps(acc(i, j), acc(i, j), Src::R(tmp))?;
                    }
                }
            }
            if e.bias {
                self.add_rows(r12, 0, rows, nv, tmp, &acc, &lane_mask)?;
            }
            if e.residual && !e.silu_mul {
                self.add_rows(r13, s.n, rows, nv, tmp, &acc, &lane_mask)?;
            }
            self.v.a.set_label(&mut skip)?;
            self.v.a.nop()?;
        }
        for i in 0..rows {
            for j in 0..nv {
                let m = rdx + c_disp(i, j);
                match (isa, last_masked(j)) {
                    (Isa::Avx512, false) => self.v.a.vmovups(zmmword_ptr(m), ZMM[acc(i, j)])?,
                    (Isa::Avx512, true) => self.v.a.vmovups(zmmword_ptr(m).k1(), ZMM[acc(i, j)])?,
                    (_, false) => self.v.a.vmovups(ymmword_ptr(m), YMM[acc(i, j)])?,
                    (_, true) => self
                        .v
                        .a
                        .vmaskmovps(ymmword_ptr(m), YMM[mask], YMM[acc(i, j)])?,
                }
            }
        }
        if e.silu_mul {
            let mut skip = self.v.a.create_label();
            last_chunk(self, skip)?;
            // Every vector register but the AVX2 mask is free once the tile is stored.
            let free: Vec<usize> = (0..isa.n_vregs())
                .filter(|&r| isa == Isa::Avx512 || r != mask)
                .collect();
            self.silu_pass(rows, nv, &free, &lane_mask)?;
            self.v.a.set_label(&mut skip)?;
            self.v.a.nop()?;
        }
        Ok(())
    }
}

/// A good schedule for `m x n x k` on `isa` without search: a register tile sized for the
/// rows available, `n` blocked by the tile width, `k` blocked when long.
pub fn default_schedule_text(m: usize, n: usize, k: usize, isa: Isa) -> String {
    let lanes = isa.lanes();
    let regs = isa.n_vregs();
    let extra = if isa == Isa::Avx2 { 2 } else { 0 };
    // (rows, vectors): prefer 6x4 on AVX-512 (24 accumulators), fewer rows for small m.
    let (rows, vecs) = match isa {
        Isa::Avx512 if m >= 14 => (14, 2),
        Isa::Avx512 if m >= 6 => (6, 4),
        Isa::Avx2 if m >= 6 => (6, 2),
        _ => {
            let rows = m.clamp(1, 8);
            // Accumulators + B vectors + one broadcast register must fit.
            let vecs = ((regs - extra - 1) / (rows + 1)).clamp(1, 8);
            (rows, vecs)
        }
    };
    let vecs = vecs.min(n.div_ceil(lanes)).max(1);
    let nr = vecs * lanes;
    let mut s = String::new();
    if n > nr {
        s.push_str(&format!("n/{nr} "));
    }
    if k > 512 {
        s.push_str("k/256 ");
    }
    if m > rows || m == 1 {
        s.push_str(&format!("m/{rows} "));
    }
    s.push_str("k/1:u4 ");
    if m.min(rows) > 1 {
        s.push_str("m/1:reg ");
    }
    if n.min(nr) > lanes {
        s.push_str(&format!("n/{lanes}:reg "));
    }
    s.push_str("n/1:vec");
    // Pack the B panel under the n and k blocks when enough row tiles reuse it.
    if isa == Isa::Avx512 && m >= 2 * rows && k >= 32 {
        let depth = usize::from(n > nr) + usize::from(k > 512);
        s.push_str(&format!(" pack:b@{depth}"));
    }
    s
}
