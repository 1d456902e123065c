//! Machine code of the attention kernels (see the parent module for what each computes).
//!
//! Both kernels perform the portable twins' IEEE operations in the twins' order: scores are
//! 16-lane FMA chains over the head (lane = dimension % 16; AVX2 holds the 16 lanes in two
//! ymm) folded as `portable::reduce16`, then one multiply by the scale; values are one FMA
//! chain per output element in key order. The folds transpose a block of keys so that each
//! key's lanes are added in `reduce16`'s pairs: on AVX-512, 8 keys of one head, or 4 keys of
//! up to four heads at once (whole groups in one pass, so each key is converted once); on AVX2,
//! 4 keys of one head. The order of the FMAs between independent chains, and whether an
//! operand comes from a register or memory, does not change any result.
//!
//! Registers: rbx, r12 and r13 are saved in the prologue; everything else used is caller-saved.
//! Constants live in a pool after the code (RIP-relative), so the code is position-independent.

use crate::jit::regs::{ConstPool, XMM, YMM, ZMM};
use crate::jit::Isa;
use iced_x86::code_asm::*;
use iced_x86::IcedError;

type R = Result<(), IcedError>;

/// Keys folded together by the AVX-512 score kernel when the group's accumulators and
/// queries fit in registers (else 4).
const KB512: usize = 8;
/// Keys folded together by the AVX2 score kernel.
const KB256: usize = 4;

/// An assembler with a constant pool.
struct Asm {
    a: CodeAssembler,
    pool: ConstPool,
}

impl Asm {
    fn new() -> Result<Asm, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        a.push(rbx)?;
        a.push(r12)?;
        a.push(r13)?;
        Ok(Asm {
            a,
            pool: ConstPool::default(),
        })
    }
    fn konst(&mut self, words: Vec<u32>) -> CodeLabel {
        self.pool.label(&mut self.a, words)
    }
    /// Epilogue, then the pool; the code assembled at address 0.
    fn finish(mut self) -> Result<Vec<u8>, IcedError> {
        self.a.pop(r13)?;
        self.a.pop(r12)?;
        self.a.pop(rbx)?;
        self.a.vzeroupper()?;
        self.a.ret()?;
        self.pool.emit(&mut self.a)?;
        self.a.assemble(0)
    }
    /// An 8-lane ymm mask with the first `n` lanes set.
    fn ymask(&mut self, d: usize, n: usize) -> R {
        let l = self.konst((0..8).map(|i| if i < n { u32::MAX } else { 0 }).collect());
        self.a.vmovups(YMM[d], ymmword_ptr(l))
    }
}

/// Consecutive ranges `(start, len)`.
pub(super) type Ranges = Vec<(usize, usize)>;

/// `n` split into `parts` near-equal consecutive ranges `(start, len)`.
pub(super) fn split_even(n: usize, parts: usize) -> Ranges {
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let len = base + usize::from(i < extra);
            let r = (start, len);
            start += len;
            r
        })
        .collect()
}

/// Scores of a run of keys for every head of a group:
/// `fn(q: *const f32, k: *const u16, k_stride_bytes: usize, n: usize, scores: *mut f32,
/// s_stride_bytes: usize, scale: f32)`; key `i` is the `hd` f16 values at
/// `k + i * k_stride_bytes`, and head `g`'s score of key `i` goes to
/// `scores + g * s_stride_bytes + 4 i`.
pub(super) fn scores(isa: Isa, hd: usize, group: usize) -> Result<Vec<u8>, IcedError> {
    if isa == Isa::Avx512 {
        scores_avx512(hd, group)
    } else {
        scores_avx2(hd, group)
    }
}

/// The key-block loop shared by both ISAs: full blocks of `kb` keys, then a tail block whose
/// key `s` is skipped (jump to the fold) unless `s < n % kb`. `r10` walks the key rows, `r11`
/// the first score of the block (head `g0`), `rbx` holds `n`.
fn key_blocks(
    m: &mut Asm,
    kb: usize,
    g0: usize,
    body: &mut dyn FnMut(&mut Asm, Option<CodeLabel>) -> R,
    fold_store: &mut dyn FnMut(&mut Asm, bool) -> R,
) -> R {
    m.a.mov(r10, rsi)?;
    m.a.imul_3(r11, r9, g0 as i32)?;
    m.a.add(r11, r8)?;
    let mut tail = m.a.create_label();
    let mut done = m.a.create_label();
    m.a.mov(rax, rbx)?;
    m.a.shr(rax, kb.trailing_zeros())?;
    m.a.jz(tail)?;
    let mut top = m.a.create_label();
    m.a.set_label(&mut top)?;
    body(m, None)?;
    fold_store(m, false)?;
    m.a.add(r11, (4 * kb) as i32)?;
    m.a.dec(rax)?;
    m.a.jnz(top)?;
    m.a.set_label(&mut tail)?;
    m.a.mov(rax, rbx)?;
    m.a.and(rax, (kb - 1) as i32)?;
    m.a.jz(done)?;
    let mut fold = m.a.create_label();
    body(m, Some(fold))?;
    m.a.set_label(&mut fold)?;
    fold_store(m, true)?;
    m.a.set_label(&mut done)?;
    Ok(())
}

/// How the AVX-512 score kernel tiles a group: head blocks (each a pass over the keys, which
/// converts every key once) and the keys folded together (`kb`, 8 or 4). Each query chunk has
/// a register or, where registers run out, is staged: a whole block loads chunk c of those
/// queries into up to `gb` staging registers once for its `kb` keys (the tail block reads
/// them as memory operands).
///
/// Registers: accumulators `j * kb + s` (head `j` of the block, key `s`) from zmm0; the rest of
/// zmm0..24, then zmm29 and zmm28, hold query chunks (the last of them staging); zmm24/25 the
/// converted key chunks, zmm26/27 fold temporaries, zmm28 a masked query tail read from memory
/// (when some tail chunk has no register), zmm30 the fold's final permutation, zmm31 the
/// scale. Mask registers: k1 the head's tail, k2 the tail block's keys, k3 eight scores, k4
/// the upper half (0xFF00) for the fold's blends.
struct ScorePlan {
    /// Keys folded together: 8 (one head per fold) or 4 (four heads per fold).
    kb: usize,
    /// Head blocks `(g0, gb)`.
    blocks: Ranges,
}

/// Accumulators and query registers available to the score kernel (zmm0..24, 28, 29).
const SCORE_REGS: usize = 26;
/// Most heads in one 4-key block (4 accumulators each, within zmm0..24).
const GB512_4: usize = 6;

fn score_plan(group: usize, nc: usize) -> ScorePlan {
    // Eight keys per fold when the whole group's accumulators and queries fit in registers;
    // else four keys per fold, every head of the group in one pass (queries spilling to memory
    // operands as needed), so each key is converted once.
    if group * (KB512 + nc) <= SCORE_REGS {
        ScorePlan {
            kb: KB512,
            blocks: vec![(0, group)],
        }
    } else {
        ScorePlan {
            kb: 4,
            blocks: split_even(group, group.div_ceil(GB512_4)),
        }
    }
}

fn scores_avx512(hd: usize, group: usize) -> Result<Vec<u8>, IcedError> {
    let mut m = Asm::new()?;
    let (nc, rem) = (hd.div_ceil(16), hd % 16);
    let nfull = hd / 16;
    let (kt, t0, t1, qt, idx, scale) = (24, 26, 27, 28, 30, 31);
    let plan = score_plan(group, nc);
    let kb = plan.kb;
    if rem != 0 {
        m.a.mov(eax, ((1u32 << rem) - 1) as i32)?;
        m.a.kmovw(k1, eax)?;
    }
    m.a.mov(eax, 0xFF)?;
    m.a.kmovw(k3, eax)?;
    m.a.mov(eax, 0xFF00)?;
    m.a.kmovw(k4, eax)?;
    m.a.vbroadcastss(zmm31, xmm0)?;
    let words = if kb == KB512 {
        // After the 8-key fold, key s < 4 sits in lane 4s and key 4 + s in lane 4s + 2.
        (0..16u32)
            .map(|s| match s {
                0..4 => 4 * s,
                4..8 => 4 * (s - 4) + 2,
                _ => 0,
            })
            .collect()
    } else {
        // After the 4-key fold, lane 4s + j holds head j's key s: transpose to quarter j.
        (0..16u32).map(|i| 4 * (i % 4) + i / 4).collect()
    };
    let l = m.konst(words);
    m.a.vmovups(ZMM[idx], zmmword_ptr(l))?;
    m.a.mov(rbx, rcx)?;
    m.a.lea(r13, ptr(rdx + rdx * 2))?;
    for &(g0, gb) in &plan.blocks {
        let acc = |j: usize, s: usize| j * kb + s;
        // Query chunk (j, c) in a register, tail chunks first (a register spares the reload).
        // zmm28 holds one too unless some tail chunk gets no register and is reloaded into it.
        let mut free: Vec<usize> = (gb * kb..kt).chain([29]).collect();
        let n_tail = if rem != 0 { gb } else { 0 };
        if n_tail <= free.len() + 1 {
            free.push(qt);
        }
        let mut qreg = vec![vec![None; nc]; gb];
        let order = (0..gb)
            .filter(|_| rem != 0)
            .map(|j| (j, nc - 1))
            .chain((0..gb).flat_map(|j| (0..nfull).map(move |c| (j, c))));
        // Staging registers, when some queries get no register of their own.
        let stage = if gb * nc > free.len() {
            free.split_off(free.len() - gb.min(free.len() - 1))
        } else {
            Vec::new()
        };
        for ((j, c), r) in order.zip(free.iter().copied()) {
            qreg[j][c] = Some(r);
        }
        for (j, row) in qreg.iter().enumerate() {
            for (c, r) in row.iter().enumerate() {
                if let Some(r) = *r {
                    let qoff = (4 * ((g0 + j) * hd + 16 * c)) as i32;
                    if c < nfull {
                        m.a.vmovups(ZMM[r], zmmword_ptr(rdi + qoff))?;
                    } else {
                        m.a.vmovups(ZMM[r].k1().z(), zmmword_ptr(rdi + qoff))?;
                    }
                }
            }
        }
        let has_reg = |j: usize, c: usize| qreg[j][c].is_some();
        let mut body = |m: &mut Asm, skip: Option<CodeLabel>| -> R {
            for j in 0..gb {
                for s in 0..kb {
                    let r = ZMM[acc(j, s)];
                    m.a.vpxord(r, r, r)?;
                }
            }
            // Chunk c of key s at `at`: converted once, then one FMA per head.
            let chunk = |m: &mut Asm,
                         s: usize,
                         c: usize,
                         at: AsmMemoryOperand,
                         st: &[Option<usize>]|
             -> R {
                let k = kt + (s + c) % 2;
                if c < nfull {
                    m.a.vcvtph2ps(ZMM[k], ymmword_ptr(at))?;
                } else {
                    m.a.vmovdqu16(YMM[k].k1().z(), ymmword_ptr(at))?;
                    m.a.vcvtph2ps(ZMM[k], YMM[k])?;
                }
                for j in 0..gb {
                    let qoff = (4 * ((g0 + j) * hd + 16 * c)) as i32;
                    if let Some(r) = qreg[j][c].or(st[j]) {
                        m.a.vfmadd231ps(ZMM[acc(j, s)], ZMM[k], ZMM[r])?;
                    } else if c < nfull {
                        m.a.vfmadd231ps(ZMM[acc(j, s)], ZMM[k], zmmword_ptr(rdi + qoff))?;
                    } else {
                        m.a.vmovups(ZMM[qt].k1().z(), zmmword_ptr(rdi + qoff))?;
                        m.a.vfmadd231ps(ZMM[acc(j, s)], ZMM[k], ZMM[qt])?;
                    }
                }
                Ok(())
            };
            match skip {
                // The tail block, key by key: key s exists only when s < n % kb.
                Some(l) => {
                    for s in 0..kb {
                        if s > 0 {
                            m.a.cmp(eax, s as i32)?;
                            m.a.jbe(l)?;
                        }
                        for c in 0..nc {
                            chunk(m, s, c, r10 + (32 * c) as i32, &vec![None; gb])?;
                        }
                        m.a.add(r10, rdx)?;
                    }
                }
                // A whole block, chunk by chunk across the keys: an accumulator's next FMA
                // comes gb * kb FMAs later, not gb, so the chains overlap in program order.
                // Key s at r10 (s < 4) or r12 (= r10 + 4 rdx), plus (s % 4) rdx (r13 = 3 rdx).
                None => {
                    if kb == KB512 {
                        m.a.lea(r12, ptr(r10 + rdx * 4))?;
                    }
                    for c in 0..nc {
                        let disp = (32 * c) as i32;
                        let mut st = vec![None; gb];
                        let staged = (0..gb).filter(|&j| !has_reg(j, c));
                        for (j, &r) in staged.zip(&stage) {
                            let qoff = (4 * ((g0 + j) * hd + 16 * c)) as i32;
                            if c < nfull {
                                m.a.vmovups(ZMM[r], zmmword_ptr(rdi + qoff))?;
                            } else {
                                m.a.vmovups(ZMM[r].k1().z(), zmmword_ptr(rdi + qoff))?;
                            }
                            st[j] = Some(r);
                        }
                        for s in 0..kb {
                            let base = if s < 4 { r10 } else { r12 };
                            let at = match s % 4 {
                                0 => base + disp,
                                1 => base + rdx + disp,
                                2 => base + rdx * 2 + disp,
                                _ => base + r13 + disp,
                            };
                            chunk(m, s, c, at, &st)?;
                        }
                    }
                    if kb == KB512 {
                        m.a.lea(r10, ptr(r12 + rdx * 4))?;
                    } else {
                        m.a.lea(r10, ptr(r10 + rdx * 4))?;
                    }
                }
            }
            Ok(())
        };
        let mut fold_store = |m: &mut Asm, tail: bool| -> R {
            if tail {
                // k2 = the first n % kb keys (eax).
                m.a.mov(ecx, eax)?;
                m.a.mov(r12d, 1)?;
                m.a.shl(r12d, cl)?;
                m.a.sub(r12d, 1)?;
                m.a.kmovw(k2, r12d)?;
                m.a.mov(rcx, rbx)?;
            }
            if gb > 3 {
                // Head j >= 3 of the block stores through r12 = r11 + 3 * r9.
                m.a.lea(r12, ptr(r9 + r9 * 2))?;
                m.a.add(r12, r11)?;
            }
            let dst = |j: usize| match j {
                0 => r11 + 0,
                1 => r11 + r9,
                2 => r11 + r9 * 2,
                3 => r12 + 0,
                4 => r12 + r9,
                _ => r12 + r9 * 2,
            };
            if kb == KB512 {
                for j in 0..gb {
                    fold8(m, &|i| ZMM[acc(j, i)], (t0, t1, idx, scale))?;
                    let v = ZMM[acc(j, 0)];
                    if tail {
                        m.a.vmovups(zmmword_ptr(dst(j)).k2(), v)?;
                    } else {
                        m.a.vmovups(zmmword_ptr(dst(j)).k3(), v)?;
                    }
                }
                return Ok(());
            }
            // Four keys: per head, b (reduce16's 4+4 stage) of key s in quarter s.
            for j in 0..gb {
                let v = |s: usize| ZMM[acc(j, s)];
                // a = v[i] + v[i + 8]: keys (0 | 1) in v0, (2 | 3) in v2.
                for p in 0..2 {
                    // One shuffle and a blend (k4 = 0xFF00): [v0 hi | v1 lo] + [v0 lo | v1 hi].
                    m.a.valignd(ZMM[t0], v(2 * p + 1), v(2 * p), 8)?;
                    m.a.vblendmps(ZMM[t1].k4(), v(2 * p), v(2 * p + 1))?;
                    m.a.vaddps(v(2 * p), ZMM[t1], ZMM[t0])?;
                }
                // b = a[i] + a[i + 4]: quarter s holds key s.
                m.a.vshuff32x4(ZMM[t0], v(0), v(2), 0b10_00_10_00)?;
                m.a.vshuff32x4(ZMM[t1], v(0), v(2), 0b11_01_11_01)?;
                m.a.vaddps(v(0), ZMM[t0], ZMM[t1])?;
            }
            // Then four heads at once: c = (b0 + b2, b1 + b3) of two heads per vector, c0 + c1
            // of four heads per vector (lane 4s + h: head h, key s), transposed to quarter h.
            for h0 in (0..gb).step_by(4) {
                let nh = (gb - h0).min(4);
                let b = |h: usize| ZMM[acc(h0 + h.min(nh - 1), 0)];
                let pairs = if nh > 2 { 2 } else { 1 };
                for p in 0..pairs {
                    let (x, y) = (b(2 * p), b(2 * p + 1));
                    m.a.vshufps(ZMM[t0], x, y, 0b01_00_01_00)?;
                    m.a.vshufps(ZMM[t1], x, y, 0b11_10_11_10)?;
                    m.a.vaddps(x, ZMM[t0], ZMM[t1])?;
                }
                let (z, w) = (b(0), if pairs == 2 { b(2) } else { b(0) });
                m.a.vshufps(ZMM[t0], z, w, 0b10_00_10_00)?;
                m.a.vshufps(ZMM[t1], z, w, 0b11_01_11_01)?;
                m.a.vaddps(z, ZMM[t0], ZMM[t1])?;
                m.a.vpermps(z, ZMM[idx], z)?;
                m.a.vmulps(z, z, ZMM[scale])?;
                let zi = acc(h0, 0);
                for h in 0..nh {
                    let d = dst(h0 + h);
                    match (h, tail) {
                        (0, false) => m.a.evex().vmovups(xmmword_ptr(d), XMM[zi])?,
                        (0, true) => m.a.evex().vmovups(xmmword_ptr(d).k2(), XMM[zi])?,
                        (_, false) => m.a.vextractf32x4(xmmword_ptr(d), ZMM[zi], h as u32)?,
                        (_, true) => {
                            // A masked vextractf32x4 to memory can fault on masked-off
                            // elements (seen on Zen 5); a masked vmovups does not.
                            m.a.vextractf32x4(XMM[t0], ZMM[zi], h as u32)?;
                            m.a.evex().vmovups(xmmword_ptr(d).k2(), XMM[t0])?;
                        }
                    }
                }
            }
            Ok(())
        };
        key_blocks(&mut m, kb, g0, &mut body, &mut fold_store)?;
    }
    m.finish()
}

/// Folds eight keys' 16-lane accumulators `v(0..8)` into `v(0)` as `reduce16` folds each,
/// times the scale: lane s holds key s.
fn fold8(
    m: &mut Asm,
    v: &dyn Fn(usize) -> AsmRegisterZmm,
    (t0, t1, idx, scale): (usize, usize, usize, usize),
) -> R {
    // a = v[i] + v[i + 8], two keys per vector: [v0 hi | v1 lo] + [v0 lo | v1 hi] (k4 =
    // 0xFF00), one shuffle and a blend.
    for p in 0..4 {
        m.a.valignd(ZMM[t0], v(2 * p + 1), v(2 * p), 8)?;
        m.a.vblendmps(ZMM[t1].k4(), v(2 * p), v(2 * p + 1))?;
        m.a.vaddps(v(p), ZMM[t1], ZMM[t0])?;
    }
    // b = a[i] + a[i + 4]: quarter q holds key q (then 4 + q in the second).
    for p in 0..2 {
        m.a.vshuff32x4(ZMM[t0], v(2 * p), v(2 * p + 1), 0b10_00_10_00)?;
        m.a.vshuff32x4(ZMM[t1], v(2 * p), v(2 * p + 1), 0b11_01_11_01)?;
        m.a.vaddps(v(p), ZMM[t0], ZMM[t1])?;
    }
    // (b0 + b2, b1 + b3) of keys q and 4 + q in quarter q.
    m.a.vshufps(ZMM[t0], v(0), v(1), 0b01_00_01_00)?;
    m.a.vshufps(ZMM[t1], v(0), v(1), 0b11_10_11_10)?;
    m.a.vaddps(v(0), ZMM[t0], ZMM[t1])?;
    // c0 + c1.
    m.a.vmovshdup(ZMM[t0], v(0))?;
    m.a.vaddps(v(0), v(0), ZMM[t0])?;
    m.a.vpermps(v(0), ZMM[idx], v(0))?;
    m.a.vmulps(v(0), v(0), ZMM[scale])
}

fn scores_avx2(hd: usize, group: usize) -> Result<Vec<u8>, IcedError> {
    let mut m = Asm::new()?;
    // Per key s: lanes 0..8 in ymm(2s), 8..16 in ymm(2s + 1).
    let (klo, khi, t0, t1, qmask, hmask, idx, scale) = (8, 9, 10, 11, 12, 13, 14, 15);
    let rem16 = hd % 16;
    let nhalves = hd / 8;
    // The one partial half (r = hd % 8 values, even), if any.
    let r = hd % 8;
    if r != 0 {
        m.ymask(qmask, r)?;
        m.ymask(hmask, r / 2)?;
    }
    m.a.vbroadcastss(ymm15, xmm0)?;
    let l = m.konst(vec![0, 4, 2, 6, 0, 0, 0, 0]);
    m.a.vmovups(YMM[idx], ymmword_ptr(l))?;
    let table = m.konst((0..8).map(|i| if i < 4 { u32::MAX } else { 0 }).collect());
    m.a.mov(rbx, rcx)?;
    let _ = rem16;
    for g in 0..group {
        let mut body = |m: &mut Asm, skip: Option<CodeLabel>| -> R {
            for &x in &XMM[..2 * KB256] {
                m.a.vxorps(x, x, x)?;
            }
            for s in 0..KB256 {
                if let (Some(l), true) = (skip, s > 0) {
                    m.a.cmp(eax, s as i32)?;
                    m.a.jbe(l)?;
                }
                // Half h of the head: values 8h..8h + 8, lanes (h % 2) * 8.. of the 16.
                for h in 0..nhalves + usize::from(r != 0) {
                    let (k, a) = if h % 2 == 0 {
                        (klo, 2 * s)
                    } else {
                        (khi, 2 * s + 1)
                    };
                    let disp = (16 * h) as i32;
                    let qoff = (4 * (g * hd + 8 * h)) as i32;
                    if h < nhalves {
                        m.a.vcvtph2ps(YMM[k], xmmword_ptr(r10 + disp))?;
                        m.a.vfmadd231ps(YMM[a], YMM[k], ymmword_ptr(rdi + qoff))?;
                    } else {
                        m.a.vmaskmovps(XMM[k], XMM[hmask], xmmword_ptr(r10 + disp))?;
                        m.a.vcvtph2ps(YMM[k], XMM[k])?;
                        m.a.vmaskmovps(YMM[t0], YMM[qmask], ymmword_ptr(rdi + qoff))?;
                        m.a.vfmadd231ps(YMM[a], YMM[k], YMM[t0])?;
                    }
                }
                m.a.add(r10, rdx)?;
            }
            Ok(())
        };
        let mut fold_store = |m: &mut Asm, tail: bool| -> R {
            // a = lanes 0..8 + lanes 8..16.
            for s in 0..KB256 {
                m.a.vaddps(YMM[2 * s], YMM[2 * s], YMM[2 * s + 1])?;
            }
            // b = a[i] + a[i + 4]: (keys 0 | 1) in ymm0, (2 | 3) in ymm2.
            for p in 0..2 {
                let (x, y) = (YMM[4 * p], YMM[4 * p + 2]);
                m.a.vperm2f128(YMM[t0], x, y, 0x20)?;
                m.a.vperm2f128(YMM[t1], x, y, 0x31)?;
                m.a.vaddps(YMM[2 * p], YMM[t0], YMM[t1])?;
            }
            // (b0 + b2, b1 + b3): keys 0, 2 in the low half, 1, 3 in the high half.
            m.a.vshufps(YMM[t0], ymm0, ymm2, 0b01_00_01_00)?;
            m.a.vshufps(YMM[t1], ymm0, ymm2, 0b11_10_11_10)?;
            m.a.vaddps(ymm0, YMM[t0], YMM[t1])?;
            m.a.vmovshdup(YMM[t0], ymm0)?;
            m.a.vaddps(ymm0, ymm0, YMM[t0])?;
            m.a.vpermps(ymm0, YMM[idx], ymm0)?;
            m.a.vmulps(ymm0, ymm0, YMM[scale])?;
            if tail {
                // The first n % 4 lanes: a window of the -1,-1,-1,-1,0,0,0,0 table.
                m.a.lea(r12, ptr(table))?;
                m.a.mov(rcx, rax)?;
                m.a.shl(rcx, 2)?;
                m.a.sub(r12, rcx)?;
                m.a.vmovdqu(xmm1, xmmword_ptr(r12 + 16))?;
                m.a.vmaskmovps(xmmword_ptr(r11), xmm1, xmm0)?;
                m.a.mov(rcx, rbx)?;
            } else {
                m.a.vmovups(xmmword_ptr(r11), xmm0)?;
            }
            Ok(())
        };
        key_blocks(&mut m, KB256, g, &mut body, &mut fold_store)?;
    }
    m.finish()
}

/// How the value kernel tiles (heads × head chunks) over the vector registers: head blocks
/// and chunk passes, each a full pass over the keys.
pub(super) fn pv_plan(group: usize, n_chunks: usize, avail: usize) -> (Ranges, Ranges) {
    let mut best = (usize::MAX, 1, n_chunks);
    for nh in 1..=group {
        let gb = group.div_ceil(nh);
        let db_max = avail / (gb + 1);
        if db_max == 0 {
            continue;
        }
        let np = n_chunks.div_ceil(db_max);
        if nh * np < best.0 {
            best = (nh * np, nh, np);
        }
    }
    (split_even(group, best.1), split_even(n_chunks, best.2))
}

/// Values of a run of keys, accumulated into the group's outputs:
/// `fn(p: *const f32, p_stride_bytes: usize, v: *const u16, v_stride_bytes: usize, n: usize,
/// out: *mut f32)`; `out[g * hd + d] = fma(p_g[i], v_i[d], out[g * hd + d])` for i in 0..n,
/// where `p_g = p + g * p_stride_bytes` and `v_i = v + i * v_stride_bytes`.
pub(super) fn pv(isa: Isa, hd: usize, group: usize) -> Result<Vec<u8>, IcedError> {
    let mut m = Asm::new()?;
    let wide = isa == Isa::Avx512;
    let lanes = if wide { 16 } else { 8 };
    let (nc, rem) = (hd.div_ceil(lanes), hd % lanes);
    let nfull = hd / lanes;
    // AVX2 tail masks: f32 lanes in ymm14, f16 pairs in xmm13.
    let (bcast, avail) = if wide {
        (31, 31)
    } else if rem != 0 {
        (15, 13)
    } else {
        (15, 15)
    };
    if rem != 0 {
        if wide {
            m.a.mov(eax, ((1u32 << rem) - 1) as i32)?;
            m.a.kmovw(k1, eax)?;
        } else {
            m.ymask(14, rem)?;
            m.ymask(13, rem / 2)?;
        }
    }
    let (hblocks, passes) = pv_plan(group, nc, avail);
    for &(g0, gb) in &hblocks {
        for &(c0, db) in &passes {
            let acc = |j: usize, c: usize| j * db + c;
            let vreg = |c: usize| gb * db + c;
            let out_at = |j: usize, c: usize| r9 + (4 * ((g0 + j) * hd + lanes * (c0 + c))) as i32;
            for j in 0..gb {
                for c in 0..db {
                    let full = c0 + c < nfull;
                    match (wide, full) {
                        (true, true) => m.a.vmovups(ZMM[acc(j, c)], zmmword_ptr(out_at(j, c)))?,
                        (true, false) => {
                            m.a.vmovups(ZMM[acc(j, c)].k1().z(), zmmword_ptr(out_at(j, c)))?
                        }
                        (false, true) => m.a.vmovups(YMM[acc(j, c)], ymmword_ptr(out_at(j, c)))?,
                        (false, false) => {
                            m.a.vmaskmovps(YMM[acc(j, c)], ymm14, ymmword_ptr(out_at(j, c)))?
                        }
                    }
                }
            }
            let mut store = m.a.create_label();
            m.a.mov(r10, rdx)?;
            m.a.imul_3(r11, rsi, g0 as i32)?;
            m.a.add(r11, rdi)?;
            m.a.mov(rax, r8)?;
            m.a.test(rax, rax)?;
            m.a.jz(store)?;
            let mut top = m.a.create_label();
            m.a.set_label(&mut top)?;
            for c in 0..db {
                let full = c0 + c < nfull;
                let disp = (2 * lanes * (c0 + c)) as i32;
                let d = vreg(c);
                match (wide, full) {
                    (true, true) => m.a.vcvtph2ps(ZMM[d], ymmword_ptr(r10 + disp))?,
                    (true, false) => {
                        m.a.vmovdqu16(YMM[d].k1().z(), ymmword_ptr(r10 + disp))?;
                        m.a.vcvtph2ps(ZMM[d], YMM[d])?;
                    }
                    (false, true) => m.a.vcvtph2ps(YMM[d], xmmword_ptr(r10 + disp))?,
                    (false, false) => {
                        m.a.vmaskmovps(XMM[d], xmm13, xmmword_ptr(r10 + disp))?;
                        m.a.vcvtph2ps(YMM[d], XMM[d])?;
                    }
                }
            }
            // Head j's weight: [r11 + j * rsi], direct for j < 3, else walked by r12.
            if gb > 3 {
                m.a.lea(r12, ptr(r11 + rsi * 2))?;
            }
            for j in 0..gb {
                let w = match j {
                    0 => dword_ptr(r11),
                    1 => dword_ptr(r11 + rsi),
                    2 => dword_ptr(r11 + rsi * 2),
                    _ => {
                        m.a.add(r12, rsi)?;
                        dword_ptr(r12)
                    }
                };
                if wide {
                    m.a.vbroadcastss(ZMM[bcast], w)?;
                } else {
                    m.a.vbroadcastss(YMM[bcast], w)?;
                }
                for c in 0..db {
                    if wide {
                        m.a.vfmadd231ps(ZMM[acc(j, c)], ZMM[bcast], ZMM[vreg(c)])?;
                    } else {
                        m.a.vfmadd231ps(YMM[acc(j, c)], YMM[bcast], YMM[vreg(c)])?;
                    }
                }
            }
            m.a.add(r10, rcx)?;
            m.a.add(r11, 4)?;
            m.a.dec(rax)?;
            m.a.jnz(top)?;
            m.a.set_label(&mut store)?;
            for j in 0..gb {
                for c in 0..db {
                    let full = c0 + c < nfull;
                    match (wide, full) {
                        (true, true) => m.a.vmovups(zmmword_ptr(out_at(j, c)), ZMM[acc(j, c)])?,
                        (true, false) => {
                            m.a.vmovups(zmmword_ptr(out_at(j, c)).k1(), ZMM[acc(j, c)])?
                        }
                        (false, true) => m.a.vmovups(ymmword_ptr(out_at(j, c)), YMM[acc(j, c)])?,
                        (false, false) => {
                            m.a.vmaskmovps(ymmword_ptr(out_at(j, c)), ymm14, YMM[acc(j, c)])?
                        }
                    }
                }
            }
        }
    }
    m.finish()
}
