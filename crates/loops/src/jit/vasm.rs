//! A vector emitter for code that runs on either ISA: one `Gen` writes either zmm (AVX-512,
//! k-mask tails) or ymm (AVX2, `vmaskmovps` tails) code for the same vector operations, plus a
//! constant pool (RIP-relative, after the code) and the loop skeletons the row kernels share.
//! The row kernels (`rowops::gen`) are written on it, and so is the f32 matmul's epilogue
//! (`sgemm`); the `exp` polynomial on it is [`super::vexp`].

use crate::jit::regs::ConstPool;
pub(super) use crate::jit::regs::{XMM, YMM, ZMM};
use crate::jit::Isa;
use iced_x86::code_asm::*;
use iced_x86::IcedError;

pub(super) type R = Result<(), IcedError>;

/// `vcmpps` predicates (ordered, quiet: NaN compares false).
pub(super) const CMP_LT_OQ: i32 = 0x11;
pub(super) const CMP_GT_OQ: i32 = 0x1E;
/// `vroundps`/`vrndscaleps`: round to nearest even, suppress the precision exception.
pub(super) const ROUND_NEAREST: i32 = 0x08;

/// A second source operand: a vector register, or a full vector in the constant pool.
#[derive(Clone, Copy)]
pub(super) enum Src {
    /// Vector register n.
    R(usize),
    /// A full vector in the pool.
    M(CodeLabel),
}

/// Which lanes a load or store touches: all, those of opmask `k<n>` (AVX-512), or those whose
/// sign bit is set in ymm register `n` (AVX2, `vmaskmovps`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mask {
    /// Every lane.
    All,
    /// Opmask register k1..k3.
    K(u8),
    /// Ymm register n as a `vmaskmovps` mask.
    Y(usize),
}

pub(super) fn kz(r: AsmRegisterZmm, k: u8) -> AsmRegisterZmm {
    match k {
        1 => r.k1().z(),
        2 => r.k2().z(),
        _ => r.k3().z(),
    }
}
pub(super) fn kreg(k: u8) -> AsmRegisterK {
    match k {
        1 => k1,
        2 => k2,
        _ => k3,
    }
}

pub(super) struct Gen {
    pub(super) a: CodeAssembler,
    /// `Avx512` (zmm) or `Avx2` (ymm).
    pub(super) wide: bool,
    pool: ConstPool,
}

macro_rules! vop3 {
    ($($name:ident),*) => {$(
        pub(super) fn $name(&mut self, d: usize, a: usize, b: Src) -> R {
            match (self.wide, b) {
                (true, Src::R(b)) => self.a.$name(ZMM[d], ZMM[a], ZMM[b]),
                (true, Src::M(m)) => self.a.$name(ZMM[d], ZMM[a], zmmword_ptr(m)),
                (false, Src::R(b)) => self.a.$name(YMM[d], YMM[a], YMM[b]),
                (false, Src::M(m)) => self.a.$name(YMM[d], YMM[a], ymmword_ptr(m)),
            }
        }
    )*};
}

impl Gen {
    pub(super) fn new(isa: Isa) -> Result<Gen, IcedError> {
        Ok(Gen {
            a: CodeAssembler::new(64)?,
            wide: isa == Isa::Avx512,
            pool: ConstPool::default(),
        })
    }

    pub(super) fn lanes(&self) -> usize {
        if self.wide {
            16
        } else {
            8
        }
    }

    /// A pool entry holding `words` (deduplicated).
    pub(super) fn konst(&mut self, words: Vec<u32>) -> CodeLabel {
        self.pool.label(&mut self.a, words)
    }
    /// A full vector of `bits` in every lane.
    pub(super) fn splat(&mut self, bits: u32) -> Src {
        let n = self.lanes();
        Src::M(self.konst(vec![bits; n]))
    }
    pub(super) fn splat_f(&mut self, v: f32) -> Src {
        self.splat(v.to_bits())
    }

    /// `vzeroupper; ret`, then the constant pool; returns the code assembled at address 0.
    pub(super) fn finish(mut self) -> Result<Vec<u8>, IcedError> {
        self.a.vzeroupper()?;
        self.a.ret()?;
        self.pool.emit(&mut self.a)?;
        self.a.assemble(0)
    }

    vop3!(
        vaddps,
        vsubps,
        vmulps,
        vdivps,
        vmaxps,
        vminps,
        vfmadd231ps,
        vfmadd213ps,
        vpsubd,
        vpaddd
    );

    pub(super) fn mov(&mut self, d: usize, s: Src) -> R {
        match (self.wide, s) {
            (true, Src::R(s)) => self.a.vmovaps(ZMM[d], ZMM[s]),
            (true, Src::M(m)) => self.a.vmovups(ZMM[d], zmmword_ptr(m)),
            (false, Src::R(s)) => self.a.vmovaps(YMM[d], YMM[s]),
            (false, Src::M(m)) => self.a.vmovups(YMM[d], ymmword_ptr(m)),
        }
    }
    pub(super) fn load(&mut self, d: usize, m: AsmMemoryOperand, mask: Mask) -> R {
        match (self.wide, mask) {
            (true, Mask::All) => self.a.vmovups(ZMM[d], zmmword_ptr(m)),
            (true, Mask::K(k)) => self.a.vmovups(kz(ZMM[d], k), zmmword_ptr(m)),
            (false, Mask::All) => self.a.vmovups(YMM[d], ymmword_ptr(m)),
            (false, Mask::Y(y)) => self.a.vmaskmovps(YMM[d], YMM[y], ymmword_ptr(m)),
            _ => unreachable!("mask kind matches the ISA"),
        }
    }
    pub(super) fn store(&mut self, m: AsmMemoryOperand, s: usize, mask: Mask) -> R {
        match (self.wide, mask) {
            (true, Mask::All) => self.a.vmovups(zmmword_ptr(m), ZMM[s]),
            (true, Mask::K(1)) => self.a.vmovups(zmmword_ptr(m).k1(), ZMM[s]),
            (true, Mask::K(_)) => self.a.vmovups(zmmword_ptr(m).k3(), ZMM[s]),
            (false, Mask::All) => self.a.vmovups(ymmword_ptr(m), YMM[s]),
            (false, Mask::Y(y)) => self.a.vmaskmovps(ymmword_ptr(m), YMM[y], YMM[s]),
            _ => unreachable!("mask kind matches the ISA"),
        }
    }
    pub(super) fn zero(&mut self, d: usize) -> R {
        // A VEX xmm write clears the rest of the register.
        self.a.vxorps(XMM[d], XMM[d], XMM[d])
    }

    /// Mask of the first `rem` lanes (0 < rem < lanes), fixed at compile time, in `k<k>` or
    /// ymm register `y`.
    pub(super) fn fixed_mask(&mut self, rem: usize, k: u8, y: usize) -> Result<Mask, IcedError> {
        if self.wide {
            self.a.mov(eax, ((1u32 << rem) - 1) as i32)?;
            self.a.kmovw(kreg(k), eax)?;
            Ok(Mask::K(k))
        } else {
            let words = (0..8).map(|l| if l < rem { u32::MAX } else { 0 }).collect();
            let l = self.konst(words);
            self.a.vmovups(YMM[y], ymmword_ptr(l))?;
            Ok(Mask::Y(y))
        }
    }

    /// Mask of the first `rcx` lanes (0 < rcx < lanes, known at run time) in `k1` or ymm `y`.
    /// Clobbers rax and rcx.
    pub(super) fn runtime_mask(&mut self, y: usize) -> Result<Mask, IcedError> {
        if self.wide {
            self.a.mov(eax, 1)?;
            self.a.shl(eax, cl)?;
            self.a.sub(eax, 1)?;
            self.a.kmovw(k1, eax)?;
            Ok(Mask::K(1))
        } else {
            // Eight -1 then eight 0: the window starting at lane 8 - rcx has rcx leading -1s.
            let words = (0..16).map(|l| if l < 8 { u32::MAX } else { 0 }).collect();
            let table = self.konst(words);
            self.a.lea(rax, ptr(table))?;
            self.a.shl(rcx, 2)?;
            self.a.sub(rax, rcx)?;
            self.a.vmovdqu(YMM[y], ymmword_ptr(rax + 32))?;
            Ok(Mask::Y(y))
        }
    }

    /// A loop over `n_chunks` chunks known at compile time, `unroll` per iteration then the
    /// rest unrolled, every pointer advancing `chunk_bytes` per chunk. `body(g, slot, disp)`
    /// emits one chunk at displacement `disp` from the pointers. Returns the displacement just
    /// past the last chunk (where a tail starts). Clobbers r11.
    pub(super) fn fixed_loop(
        &mut self,
        n_chunks: usize,
        unroll: usize,
        chunk_bytes: usize,
        ptrs: &[AsmRegister64],
        body: &mut dyn FnMut(&mut Gen, usize, i32) -> R,
    ) -> Result<i32, IcedError> {
        let iters = n_chunks / unroll;
        if iters > 1 {
            self.a.mov(r11d, iters as i32)?;
            let mut top = self.a.create_label();
            self.a.set_label(&mut top)?;
            for u in 0..unroll {
                body(self, u, (u * chunk_bytes) as i32)?;
            }
            for &p in ptrs {
                self.a.add(p, (unroll * chunk_bytes) as i32)?;
            }
            self.a.sub(r11d, 1)?;
            self.a.jnz(top)?;
        }
        let done = if iters > 1 { iters * unroll } else { 0 };
        for (u, c) in (done..n_chunks).enumerate() {
            body(self, u % unroll, ((c - done) * chunk_bytes) as i32)?;
        }
        Ok(((n_chunks - done) * chunk_bytes) as i32)
    }

    /// A loop over `n` elements (a register, known at run time): blocks of `unroll` vectors,
    /// then single vectors, then a masked tail; each pointer advances 4 bytes per element.
    /// `body(g, slot, disp, mask)` emits one vector. Clobbers rax, rcx, r10 and the tail mask
    /// (`k1` or ymm `ymask`).
    pub(super) fn stream(
        &mut self,
        n: AsmRegister64,
        ptrs: &[AsmRegister64],
        unroll: usize,
        ymask: usize,
        body: &mut dyn FnMut(&mut Gen, usize, i32, Mask) -> R,
    ) -> R {
        let lanes = self.lanes();
        let block = unroll * lanes;
        let vbytes = (4 * lanes) as i32;
        let mut after_blocks = self.a.create_label();
        let mut after_singles = self.a.create_label();
        let mut done = self.a.create_label();
        self.a.mov(r10, n)?;
        self.a.shr(r10, block.trailing_zeros())?;
        self.a.jz(after_blocks)?;
        let mut top = self.a.create_label();
        self.a.set_label(&mut top)?;
        for u in 0..unroll {
            body(self, u, u as i32 * vbytes, Mask::All)?;
        }
        for &p in ptrs {
            self.a.add(p, unroll as i32 * vbytes)?;
        }
        self.a.sub(r10, 1)?;
        self.a.jnz(top)?;
        self.a.set_label(&mut after_blocks)?;
        if unroll > 1 {
            self.a.mov(r10, n)?;
            self.a.and(r10, (block - 1) as i32)?;
            self.a.shr(r10, lanes.trailing_zeros())?;
            self.a.jz(after_singles)?;
            let mut top = self.a.create_label();
            self.a.set_label(&mut top)?;
            body(self, 0, 0, Mask::All)?;
            for &p in ptrs {
                self.a.add(p, vbytes)?;
            }
            self.a.sub(r10, 1)?;
            self.a.jnz(top)?;
        }
        self.a.set_label(&mut after_singles)?;
        self.a.mov(rcx, n)?;
        self.a.and(rcx, (lanes - 1) as i32)?;
        self.a.jz(done)?;
        let mask = self.runtime_mask(ymask)?;
        body(self, 0, 0, mask)?;
        self.a.set_label(&mut done)?;
        Ok(())
    }
}

impl Gen {
    pub(super) fn xor(&mut self, d: usize, a: usize, b: Src) -> R {
        match (self.wide, b) {
            (true, Src::R(b)) => self.a.vpxord(ZMM[d], ZMM[a], ZMM[b]),
            (true, Src::M(m)) => self.a.vpxord(ZMM[d], ZMM[a], zmmword_ptr(m)),
            (false, Src::R(b)) => self.a.vxorps(YMM[d], YMM[a], YMM[b]),
            (false, Src::M(m)) => self.a.vxorps(YMM[d], YMM[a], ymmword_ptr(m)),
        }
    }
    pub(super) fn round(&mut self, d: usize, s: usize) -> R {
        if self.wide {
            self.a.vrndscaleps(ZMM[d], ZMM[s], ROUND_NEAREST)
        } else {
            self.a.vroundps(YMM[d], YMM[s], ROUND_NEAREST)
        }
    }
    pub(super) fn shl23(&mut self, d: usize) -> R {
        if self.wide {
            self.a.vpslld(ZMM[d], ZMM[d], 23)
        } else {
            self.a.vpslld(YMM[d], YMM[d], 23)
        }
    }
    /// `d = if cmp(x, lim) { 0 } else { d }` for a `vcmpps` predicate `pred` (`CMP_LT_OQ`,
    /// `CMP_GT_OQ`: NaN compares false, so keeps `d`); `tmp` is free for the AVX2 compare mask,
    /// AVX-512 uses `k2`.
    pub(super) fn zero_where(&mut self, d: usize, x: usize, pred: i32, lim: Src, tmp: usize) -> R {
        match (self.wide, lim) {
            (true, Src::R(l)) => {
                self.a.vcmpps(k2, ZMM[x], ZMM[l], pred)?;
                self.a.vpxord(ZMM[d].k2(), ZMM[d], ZMM[d])
            }
            (true, Src::M(m)) => {
                self.a.vcmpps(k2, ZMM[x], zmmword_ptr(m), pred)?;
                self.a.vpxord(ZMM[d].k2(), ZMM[d], ZMM[d])
            }
            (false, Src::R(l)) => {
                self.a.vcmpps(YMM[tmp], YMM[x], YMM[l], pred)?;
                self.a.vandnps(YMM[d], YMM[tmp], YMM[d])
            }
            (false, Src::M(m)) => {
                self.a.vcmpps(YMM[tmp], YMM[x], ymmword_ptr(m), pred)?;
                self.a.vandnps(YMM[d], YMM[tmp], YMM[d])
            }
        }
    }
}

impl Gen {
    /// Loads half a vector (ymm for AVX-512, xmm for AVX2) into register `d`.
    pub(super) fn load_half(&mut self, d: usize, m: AsmMemoryOperand, mask: Mask) -> R {
        match (self.wide, mask) {
            (true, Mask::All) => self.a.vmovups(YMM[d], ymmword_ptr(m)),
            // A masked ymm needs EVEX (the assembler would pick VEX and drop the mask).
            (true, Mask::K(3)) => self.a.evex().vmovups(YMM[d].k3().z(), ymmword_ptr(m)),
            (false, Mask::All) => self.a.vmovups(XMM[d], xmmword_ptr(m)),
            (false, Mask::Y(y)) => self.a.vmaskmovps(XMM[d], XMM[y], xmmword_ptr(m)),
            _ => unreachable!("mask kind matches the ISA"),
        }
    }
    pub(super) fn dup_pairs(&mut self, d: usize) -> R {
        if self.wide {
            self.a.vpmovzxdq(ZMM[d], YMM[d])?;
            self.a.vmovsldup(ZMM[d], ZMM[d])
        } else {
            self.a.vpmovzxdq(YMM[d], XMM[d])?;
            self.a.vmovsldup(YMM[d], YMM[d])
        }
    }
    pub(super) fn swap_pairs(&mut self, d: usize, s: usize) -> R {
        if self.wide {
            self.a.vpermilps(ZMM[d], ZMM[s], 0xB1)
        } else {
            self.a.vpermilps(YMM[d], YMM[s], 0xB1)
        }
    }
}
