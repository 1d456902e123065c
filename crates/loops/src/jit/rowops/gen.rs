//! Machine code of the row-wise kernels (see the parent module for what each computes).
//!
//! Every generator writes the same IEEE operations, in the same order, as its portable twin in
//! [`crate::kernel::portable`], so results are bit-identical; no contraction into FMAs where the
//! twin multiplies and adds separately, and reductions fold in the twin's lane order.
//!
//! Registers: only caller-saved ones (rax, rcx, rdx, rsi, rdi, r8–r11, every vector and mask
//! register), so there is no prologue; `vzeroupper` before `ret`. Constants live in a pool
//! after the code, addressed RIP-relative, so the code is position-independent.

use super::RopeLayout;
use crate::jit::vasm::{Gen, Mask, Src, CMP_GT_OQ, R, XMM, YMM, ZMM};
use crate::jit::vexp::{ExpConsts, ExpRegs};
use crate::jit::Isa;
use iced_x86::code_asm::*;
use iced_x86::IcedError;

/// `x += y`: `fn(x: *mut f32, y: *const f32, n: usize)`.
pub(super) fn add_in_place(isa: Isa) -> Result<Vec<u8>, IcedError> {
    let mut g = Gen::new(isa)?;
    g.stream(rdx, &[rdi, rsi], 4, 15, &mut |g, u, disp, mask| {
        g.load(u, rdi + disp, mask)?;
        g.load(u + 4, rsi + disp, mask)?;
        g.vaddps(u, u, Src::R(u + 4))?;
        g.store(rdi + disp, u, mask)
    })?;
    g.finish()
}

/// `gate = silu(gate) * up`: `fn(gate: *mut f32, up: *const f32, n: usize)`.
pub(super) fn silu_mul(isa: Isa) -> Result<Vec<u8>, IcedError> {
    let mut g = Gen::new(isa)?;
    let c = exp_consts(&mut g)?;
    // Two vectors per iteration, 6 registers each (0..6, 6..12); ymm15 is the AVX2 tail mask.
    // (Negating into `t` and `emit` use the 16 constants AVX-512 keeps in registers;
    // `emit_neg` would need a 17th.)
    g.stream(rdx, &[rdi, rsi], 2, 15, &mut |g, u, disp, mask| {
        let b = 6 * u;
        let (v, t, n, r, p, up) = (b, b + 1, b + 2, b + 3, b + 4, b + 5);
        g.load(v, rdi + disp, mask)?;
        g.load(up, rsi + disp, mask)?;
        // p = exp(-v).
        g.xor(t, v, c.sign)?;
        c.emit(g, &[ExpRegs { x: t, p, r, n }])?;
        // v / (1 + e) * u.
        g.vaddps(p, p, c.one)?;
        g.vdivps(v, v, Src::R(p))?;
        g.vmulps(v, v, Src::R(up))?;
        g.store(rdi + disp, v, mask)
    })?;
    g.finish()
}

/// The `exp` constants, with AVX-512 in zmm16.. (AVX2 reads them from memory: 16 ymm are too
/// few).
fn exp_consts(g: &mut Gen) -> Result<ExpConsts, IcedError> {
    let mut c = ExpConsts::new(g)?;
    if g.wide {
        c.hoist(g, &(16..32).collect::<Vec<_>>())?;
    }
    Ok(c)
}

/// `x = exp((x - shift) * scale)` (the subtraction and the product rounded separately, then
/// `portable::exp_clamped`): `fn(x: *mut f32, n: usize, shift: f32, scale: f32)`.
pub(super) fn exp_shifted(isa: Isa) -> Result<Vec<u8>, IcedError> {
    let mut g = Gen::new(isa)?;
    let c = exp_consts(&mut g)?;
    // shift and scale arrive in xmm0 and xmm1; broadcast to registers 12 and 13.
    let (shift, scale) = (12, 13);
    if g.wide {
        g.a.vbroadcastss(ZMM[shift], xmm0)?;
        g.a.vbroadcastss(ZMM[scale], xmm1)?;
    } else {
        g.a.vbroadcastss(YMM[shift], xmm0)?;
        g.a.vbroadcastss(YMM[scale], xmm1)?;
    }
    // Two vectors per iteration, 6 registers each (0..6, 6..12); ymm15 is the AVX2 tail mask.
    g.stream(rsi, &[rdi], 2, 15, &mut |g, u, disp, mask| {
        let b = 6 * u;
        let (v, t, n, r, p) = (b, b + 1, b + 2, b + 3, b + 4);
        g.load(v, rdi + disp, mask)?;
        g.vsubps(t, v, Src::R(shift))?;
        g.vmulps(t, t, Src::R(scale))?;
        c.emit(g, &[ExpRegs { x: t, p, r, n }])?;
        g.store(rdi + disp, p, mask)
    })?;
    g.finish()
}

/// Softmax numerators of rows (see `portable::softmax_rows`): `fn(x: *mut f32, n: usize,
/// rows: usize, stride: usize, sums: *mut f32)`. Per row, two passes over chunks of 16 (one
/// zmm, or two ymm for the low and high lanes) and a masked tail: the maximum (lanes padded
/// with -inf), then `exp(v - max)` stored back and summed in 16 lanes, folded as `reduce16`.
pub(super) fn softmax_rows(isa: Isa) -> Result<Vec<u8>, IcedError> {
    let mut g = Gen::new(isa)?;
    let c = exp_consts(&mut g)?;
    let wide = g.wide;
    // Vector registers: sums and maxima (low lanes, and high lanes with AVX2), the exp's
    // scratch, -inf; ymm15 is the AVX2 tail mask.
    let (acc, acc_hi, mx, mx_hi, v, n, r, p, ninf) = (0, 1, 2, 3, 4, 6, 7, 8, 10);
    let neg_inf = g.splat_f(f32::NEG_INFINITY);
    g.mov(ninf, neg_inf)?;
    g.a.mov(r9, rcx)?;
    g.a.shl(r9, 2)?;
    let mut end = g.a.create_label();
    g.a.test(rdx, rdx)?;
    g.a.jz(end)?;
    let mut row = g.a.create_label();
    g.a.set_label(&mut row)?;

    // One chunk's half (`hi`: AVX2 lanes 8..16), at [r10 + disp] with `mask`.
    let max_step = |g: &mut Gen, hi: bool, disp: i32, mask: Mask| -> R {
        let m = if hi { mx_hi } else { mx };
        match mask {
            Mask::All => g.load(v, r10 + disp, Mask::All)?,
            // Masked-off lanes hold -inf.
            Mask::K(_) => {
                g.mov(v, Src::R(ninf))?;
                g.a.vmovups(ZMM[v].k1(), zmmword_ptr(r10 + disp))?;
            }
            Mask::Y(y) => {
                g.load(v, r10 + disp, mask)?;
                g.a.vblendvps(YMM[v], YMM[ninf], YMM[v], YMM[y])?;
            }
        }
        // max(l, v) = if v > l { v } else { l }: vmaxps returns its second source unless the
        // first is greater (NaN never wins).
        g.vmaxps(m, v, Src::R(m))
    };
    let exp_step = |g: &mut Gen, hi: bool, disp: i32, mask: Mask| -> R {
        let a = if hi { acc_hi } else { acc };
        g.load(v, r10 + disp, mask)?;
        g.vsubps(v, v, Src::R(mx))?;
        c.emit(g, &[ExpRegs { x: v, p, r, n }])?;
        g.store(r10 + disp, p, mask)?;
        match mask {
            Mask::All => g.vaddps(a, a, Src::R(p)),
            // Masked-off lanes add nothing (the twin adds +0 or skips them: the same bits).
            Mask::K(_) => g.a.vaddps(ZMM[a].k1(), ZMM[a], ZMM[p]),
            Mask::Y(y) => {
                g.a.vandps(YMM[p], YMM[p], YMM[y])?;
                g.vaddps(a, a, Src::R(p))
            }
        }
    };
    // A pass over the row: whole chunks of 16, then the tail of n % 16.
    let pass = |g: &mut Gen, step: &dyn Fn(&mut Gen, bool, i32, Mask) -> R| -> R {
        g.a.mov(r10, rdi)?;
        g.a.mov(r11, rsi)?;
        g.a.shr(r11, 4)?;
        let mut tail = g.a.create_label();
        g.a.jz(tail)?;
        let mut top = g.a.create_label();
        g.a.set_label(&mut top)?;
        step(g, false, 0, Mask::All)?;
        if !g.wide {
            step(g, true, 32, Mask::All)?;
        }
        g.a.add(r10, 64)?;
        g.a.sub(r11, 1)?;
        g.a.jnz(top)?;
        g.a.set_label(&mut tail)?;
        let mut done = g.a.create_label();
        g.a.mov(rcx, rsi)?;
        g.a.and(rcx, 15)?;
        g.a.jz(done)?;
        if g.wide {
            let mask = g.runtime_mask(15)?;
            step(g, false, 0, mask)?;
        } else {
            // Fewer than 8 left: the low lanes, masked. Otherwise the low lanes whole and
            // the high ones masked (if any).
            let mut low_only = g.a.create_label();
            g.a.cmp(rcx, 8)?;
            g.a.jb(low_only)?;
            step(g, false, 0, Mask::All)?;
            g.a.sub(rcx, 8)?;
            g.a.jz(done)?;
            let mask = g.runtime_mask(15)?;
            step(g, true, 32, mask)?;
            g.a.jmp(done)?;
            g.a.set_label(&mut low_only)?;
            let mask = g.runtime_mask(15)?;
            step(g, false, 0, mask)?;
        }
        g.a.set_label(&mut done)?;
        g.a.nop()
    };

    // Pass 1: the maximum, broadcast to `mx`.
    g.mov(mx, Src::R(ninf))?;
    if !wide {
        g.mov(mx_hi, Src::R(ninf))?;
    }
    pass(&mut g, &max_step)?;
    if wide {
        g.a.vextractf64x4(YMM[v], ZMM[mx], 1)?;
    } else {
        g.a.vmovaps(YMM[v], YMM[mx_hi])?;
    }
    g.a.vmaxps(YMM[mx], YMM[v], YMM[mx])?;
    g.a.vextractf128(XMM[v], YMM[mx], 1)?;
    g.a.vmaxps(XMM[mx], XMM[v], XMM[mx])?;
    g.a.vmovhlps(XMM[v], XMM[mx], XMM[mx])?;
    g.a.vmaxps(XMM[mx], XMM[v], XMM[mx])?;
    g.a.vmovshdup(XMM[v], XMM[mx])?;
    g.a.vmaxss(XMM[mx], XMM[v], XMM[mx])?;
    if wide {
        g.a.vbroadcastss(ZMM[mx], XMM[mx])?;
    } else {
        g.a.vbroadcastss(YMM[mx], XMM[mx])?;
    }

    // Pass 2: numerators and their 16-lane sum, folded 8+8, 4+4, then (0+2) + (1+3).
    g.zero(acc)?;
    g.zero(acc_hi)?;
    pass(&mut g, &exp_step)?;
    if wide {
        g.a.vextractf64x4(YMM[v], ZMM[acc], 1)?;
        g.a.vaddps(YMM[acc], YMM[acc], YMM[v])?;
    } else {
        g.a.vaddps(YMM[acc], YMM[acc], YMM[acc_hi])?;
    }
    g.a.vextractf128(XMM[v], YMM[acc], 1)?;
    g.a.vaddps(XMM[acc], XMM[acc], XMM[v])?;
    g.a.vmovhlps(XMM[v], XMM[acc], XMM[acc])?;
    g.a.vaddps(XMM[acc], XMM[acc], XMM[v])?;
    g.a.vmovshdup(XMM[v], XMM[acc])?;
    g.a.vaddss(XMM[acc], XMM[acc], XMM[v])?;
    g.a.vmovss(dword_ptr(r8), XMM[acc])?;

    g.a.add(r8, 4)?;
    g.a.add(rdi, r9)?;
    g.a.sub(rdx, 1)?;
    g.a.jnz(row)?;
    g.a.set_label(&mut end)?;
    g.finish()
}

/// RMSNorm of rows of `d`: `fn(x: *const f32, w: *const f32, out: *mut f32, rows: usize,
/// eps: f32)`. Sum of squares in 16 lanes (AVX2: two ymm), folded as `portable::reduce16`.
pub(super) fn rms_norm(isa: Isa, d: usize) -> Result<Vec<u8>, IcedError> {
    let mut g = Gen::new(isa)?;
    let lanes = g.lanes();
    let (acc, acc_hi, scale, ymask) = (1, 2, 5, 14);
    let rem8 = d % 8;
    let rem = d % lanes;
    // One mask serves both passes: d % 16 lanes (AVX-512), or d % 8 (AVX2: d % 16 mod 8).
    let mask = match (g.wide, rem, rem8) {
        (true, 0, _) | (false, _, 0) => Mask::All,
        (true, r, _) => g.fixed_mask(r, 1, ymask)?,
        (false, _, r) => g.fixed_mask(r, 1, ymask)?,
    };
    let inv_d = g.konst(vec![(d as f32).to_bits()]);
    let one = g.konst(vec![1f32.to_bits()]);
    g.a.vmovaps(xmm15, xmm0)?;
    let mut end = g.a.create_label();
    g.a.test(rcx, rcx)?;
    g.a.jz(end)?;
    let mut row = g.a.create_label();
    g.a.set_label(&mut row)?;

    // Pass 1: acc[l] = fma(x, x, acc[l]) over chunks of 16, then the tail.
    g.zero(acc)?;
    g.zero(acc_hi)?;
    g.a.mov(r8, rdi)?;
    let wide = g.wide;
    let tail = g.fixed_loop(d / 16, 4, 64, &[r8], &mut |g, u, disp| {
        let t = 3 + u;
        g.load(t, r8 + disp, Mask::All)?;
        g.vfmadd231ps(acc, t, Src::R(t))?;
        if !wide {
            g.load(t + 4, r8 + disp + 32, Mask::All)?;
            g.vfmadd231ps(acc_hi, t + 4, Src::R(t + 4))?;
        }
        Ok(())
    })?;
    // Masked-off lanes load 0, and fma(0, 0, acc) = acc (acc >= +0).
    let rem16 = d % 16;
    if rem16 > 0 {
        if wide {
            g.load(3, r8 + tail, mask)?;
            g.vfmadd231ps(acc, 3, Src::R(3))?;
        } else {
            let lo_mask = if rem16 >= 8 { Mask::All } else { mask };
            g.load(3, r8 + tail, lo_mask)?;
            g.vfmadd231ps(acc, 3, Src::R(3))?;
            if rem16 > 8 {
                g.load(4, r8 + tail + 32, mask)?;
                g.vfmadd231ps(acc_hi, 4, Src::R(4))?;
            }
        }
    }
    // Fold: 8+8, 4+4, then (0+2) + (1+3).
    if wide {
        g.a.vextractf64x4(ymm3, zmm1, 1)?;
        g.a.vaddps(ymm1, ymm1, ymm3)?;
    } else {
        g.a.vaddps(ymm1, ymm1, ymm2)?;
    }
    g.a.vextractf128(xmm3, ymm1, 1)?;
    g.a.vaddps(xmm1, xmm1, xmm3)?;
    g.a.vmovhlps(xmm3, xmm1, xmm1)?;
    g.a.vaddps(xmm1, xmm1, xmm3)?;
    g.a.vmovshdup(xmm3, xmm1)?;
    g.a.vaddss(xmm1, xmm1, xmm3)?;
    // scale = 1 / sqrt(sum / d + eps).
    g.a.vdivss(xmm1, xmm1, dword_ptr(inv_d))?;
    g.a.vaddss(xmm1, xmm1, xmm15)?;
    g.a.vsqrtss(xmm1, xmm1, xmm1)?;
    g.a.vmovss(xmm3, dword_ptr(one))?;
    g.a.vdivss(xmm3, xmm3, xmm1)?;
    if wide {
        g.a.vbroadcastss(zmm5, xmm3)?;
    } else {
        g.a.vbroadcastss(ymm5, xmm3)?;
    }

    // Pass 2: out = (x * scale) * w.
    g.a.mov(r8, rdi)?;
    g.a.mov(r9, rsi)?;
    g.a.mov(r10, rdx)?;
    let vbytes = 4 * lanes;
    let tail = g.fixed_loop(d / lanes, 4, vbytes, &[r8, r9, r10], &mut |g, u, disp| {
        let t = 6 + u;
        g.load(t, r8 + disp, Mask::All)?;
        g.vmulps(t, t, Src::R(scale))?;
        g.load(10 + u, r9 + disp, Mask::All)?;
        g.vmulps(t, t, Src::R(10 + u))?;
        g.store(r10 + disp, t, Mask::All)
    })?;
    if rem > 0 {
        g.load(6, r8 + tail, mask)?;
        g.vmulps(6, 6, Src::R(scale))?;
        g.load(10, r9 + tail, mask)?;
        g.vmulps(6, 6, Src::R(10))?;
        g.store(r10 + tail, 6, mask)?;
    }
    g.a.add(rdi, (4 * d) as i32)?;
    g.a.add(rdx, (4 * d) as i32)?;
    g.a.sub(rcx, 1)?;
    g.a.jnz(row)?;
    g.a.set_label(&mut end)?;
    g.finish()
}

/// RoPE of `n_heads` heads of `head_dim`: `fn(x: *mut f32, angles: *const f32, n_heads: usize)`
/// (angles: `head_dim / 2` cosines, then as many sines). Chunks of the head are the outer loop
/// (their cos/sin vectors are built once), heads the inner one.
pub(super) fn rope(isa: Isa, head_dim: usize, layout: RopeLayout) -> Result<Vec<u8>, IcedError> {
    let mut g = Gen::new(isa)?;
    let lanes = g.lanes();
    let half = head_dim / 2;
    let mut end = g.a.create_label();
    g.a.test(rdx, rdx)?;
    g.a.jz(end)?;
    let (cos, sin, x0, x1, t1, t2, t3) = (0, 1, 2, 3, 4, 5, 6);
    let head_bytes = (4 * head_dim) as i32;
    // Inner loop over heads for one chunk; `emit` writes the chunk of one head at [r8].
    let heads = |g: &mut Gen, emit: &mut dyn FnMut(&mut Gen) -> R| -> R {
        g.a.mov(r8, rdi)?;
        g.a.mov(r9, rdx)?;
        let mut top = g.a.create_label();
        g.a.set_label(&mut top)?;
        emit(g)?;
        g.a.add(r8, head_bytes)?;
        g.a.sub(r9, 1)?;
        g.a.jnz(top)
    };
    match layout {
        RopeLayout::Halves => {
            // Lanes over i: x0 = head[i], x1 = head[half + i].
            let n_chunks = half.div_ceil(lanes);
            for j in 0..n_chunks {
                let n = (half - j * lanes).min(lanes);
                let mask = if n < lanes {
                    g.fixed_mask(n, 1, 15)?
                } else {
                    Mask::All
                };
                let (lo, hi) = ((4 * j * lanes) as i32, (4 * (half + j * lanes)) as i32);
                g.load(cos, rsi + lo, mask)?;
                g.load(sin, rsi + hi, mask)?;
                heads(&mut g, &mut |g| {
                    g.load(x0, r8 + lo, mask)?;
                    g.load(x1, r8 + hi, mask)?;
                    // head[i] = x0 * c - x1 * s; head[half + i] = x0 * s + x1 * c.
                    g.vmulps(t1, x0, Src::R(cos))?;
                    g.vmulps(t2, x1, Src::R(sin))?;
                    g.vsubps(t1, t1, Src::R(t2))?;
                    g.vmulps(t2, x0, Src::R(sin))?;
                    g.vmulps(t3, x1, Src::R(cos))?;
                    g.vaddps(t2, t2, Src::R(t3))?;
                    g.store(r8 + lo, t1, mask)?;
                    g.store(r8 + hi, t2, mask)
                })?;
            }
        }
        RopeLayout::Adjacent => {
            // Lanes over 2i, 2i+1: a vector holds lanes/2 pairs; cos and sin are duplicated
            // per pair, and the pair-swapped x gives both products in one multiply each.
            let pairs = lanes / 2;
            let n_chunks = half.div_ceil(pairs);
            if g.wide {
                g.a.mov(eax, 0xAAAA)?;
                g.a.kmovw(k2, eax)?;
            }
            for j in 0..n_chunks {
                let n = (half - j * pairs).min(pairs);
                let (xmask, amask) = if n < pairs {
                    (g.fixed_mask(2 * n, 1, 15)?, g.fixed_mask(n, 3, 14)?)
                } else {
                    (Mask::All, Mask::All)
                };
                let (lo, hi) = ((4 * j * pairs) as i32, (4 * (half + j * pairs)) as i32);
                for (reg, disp) in [(cos, lo), (sin, hi)] {
                    g.load_half(reg, rsi + disp, amask)?;
                    // [c0, c1, ..] -> [c0, 0, c1, 0, ..] -> [c0, c0, c1, c1, ..].
                    g.dup_pairs(reg)?;
                }
                let x_disp = (4 * j * lanes) as i32;
                heads(&mut g, &mut |g| {
                    g.load(x0, r8 + x_disp, xmask)?;
                    g.swap_pairs(x1, x0)?;
                    // t1 = [x0 c, x1 c], t2 = [x1 s, x0 s]: even lanes t1 - t2, odd t1 + t2.
                    g.vmulps(t1, x0, Src::R(cos))?;
                    g.vmulps(t2, x1, Src::R(sin))?;
                    if g.wide {
                        g.a.vsubps(zmm6, zmm4, zmm5)?;
                        g.a.vaddps(zmm6.k2(), zmm4, zmm5)?;
                    } else {
                        g.a.vaddsubps(ymm6, ymm4, ymm5)?;
                    }
                    g.store(r8 + x_disp, t3, xmask)
                })?;
            }
        }
    }
    g.a.set_label(&mut end)?;
    g.finish()
}

/// Size of argmax's per-lane result buffers: at least lanes times accumulator sets (64 for
/// AVX-512, 16 for AVX2, which leaves the rest untouched).
pub(super) const ARGMAX_SLOTS: usize = 64;

/// Per-lane argmax: `fn(x: *const f32, n: usize, vals: *mut f32, idx: *mut i32)`. Each of
/// the accumulator sets keeps, per lane, the largest value seen (`v > max`, so NaN never wins
/// and ties keep the first) and its index (-1 while none); the caller folds the
/// `ARGMAX_SLOTS` lanes (largest value, then smallest index). Within a lane indices only grow,
/// so each lane holds the first index of its maximum.
pub(super) fn argmax(isa: Isa) -> Result<Vec<u8>, IcedError> {
    let mut g = Gen::new(isa)?;
    let lanes = g.lanes();
    // 4 sets of zmm (64 lanes), 2 of ymm (16 lanes; 16 registers are too few for more).
    let sets = if g.wide { 4 } else { 2 };
    let block = sets * lanes;
    // Registers: max 0..s, idx s..2s, cur 2s..3s, block step 3s, vector step 3s+1, value
    // 3s+2, compare mask 3s+3 (AVX2), tail mask 15 (AVX2).
    let (mx, ix, cur) = (0, sets, 2 * sets);
    let (step, one_step, v, cm) = (3 * sets, 3 * sets + 1, 3 * sets + 2, 3 * sets + 3);
    g.a.mov(r9, rcx)?;
    let neg_inf = g.splat_f(f32::NEG_INFINITY);
    let minus_one = g.splat(u32::MAX);
    let iota = g.konst((0..lanes as u32).collect());
    let s_all = g.splat(block as u32);
    let s_one = g.splat(lanes as u32);
    g.mov(step, s_all)?;
    g.mov(one_step, s_one)?;
    for s in 0..sets {
        g.mov(mx + s, neg_inf)?;
        g.mov(ix + s, minus_one)?;
        if s == 0 {
            g.mov(cur, Src::M(iota))?;
        } else {
            g.vpaddd(cur + s, cur + s - 1, Src::R(one_step))?;
        }
    }
    let update = |g: &mut Gen, s: usize, disp: i32, mask: Mask| -> R {
        g.load(v, rdi + disp, mask)?;
        if g.wide {
            let (m, val, i, c) = (ZMM[mx + s], ZMM[v], ZMM[ix + s], ZMM[cur + s]);
            match mask {
                Mask::All => g.a.vcmpps(k2, val, m, CMP_GT_OQ)?,
                _ => g.a.vcmpps(k2.k1(), val, m, CMP_GT_OQ)?,
            }
            g.a.vmovaps(m.k2(), val)?;
            g.a.vmovdqa32(i.k2(), c)
        } else {
            let (m, val, i, c, k) = (YMM[mx + s], YMM[v], YMM[ix + s], YMM[cur + s], YMM[cm]);
            g.a.vcmpps(k, val, m, CMP_GT_OQ)?;
            if let Mask::Y(y) = mask {
                g.a.vandps(k, k, YMM[y])?;
            }
            g.a.vblendvps(m, m, val, k)?;
            g.a.vblendvps(i, i, c, k)
        }
    };
    let vbytes = (4 * lanes) as i32;
    // Blocks of `sets` vectors, one per set; every set's index steps by a block.
    let mut after_blocks = g.a.create_label();
    g.a.mov(r10, rsi)?;
    g.a.shr(r10, block.trailing_zeros())?;
    g.a.jz(after_blocks)?;
    let mut top = g.a.create_label();
    g.a.set_label(&mut top)?;
    for s in 0..sets {
        update(&mut g, s, s as i32 * vbytes, Mask::All)?;
        g.vpaddd(cur + s, cur + s, Src::R(step))?;
    }
    g.a.add(rdi, sets as i32 * vbytes)?;
    g.a.sub(r10, 1)?;
    g.a.jnz(top)?;
    g.a.set_label(&mut after_blocks)?;
    // Single vectors through set 0, whose index now steps by one vector.
    let mut after_singles = g.a.create_label();
    g.a.mov(r10, rsi)?;
    g.a.and(r10, (block - 1) as i32)?;
    g.a.shr(r10, lanes.trailing_zeros())?;
    g.a.jz(after_singles)?;
    let mut top = g.a.create_label();
    g.a.set_label(&mut top)?;
    update(&mut g, 0, 0, Mask::All)?;
    g.vpaddd(cur, cur, Src::R(one_step))?;
    g.a.add(rdi, vbytes)?;
    g.a.sub(r10, 1)?;
    g.a.jnz(top)?;
    g.a.set_label(&mut after_singles)?;
    // The masked tail, also through set 0.
    let mut store = g.a.create_label();
    g.a.mov(rcx, rsi)?;
    g.a.and(rcx, (lanes - 1) as i32)?;
    g.a.jz(store)?;
    let mask = g.runtime_mask(15)?;
    update(&mut g, 0, 0, mask)?;
    g.a.set_label(&mut store)?;
    for s in 0..sets {
        let disp = s as i32 * vbytes;
        g.store(rdx + disp, mx + s, Mask::All)?;
        g.store(r9 + disp, ix + s, Mask::All)?;
    }
    g.finish()
}
