//! `portable::exp_clamped` as vector code on the [`super::vasm`] emitter, for every generator
//! that needs the IR's `Exp` (the row kernels' SiLU·mul, shifted exp and softmax, and the f32
//! matmul's SiLU·mul epilogue): the same IEEE operations in the same order as the portable
//! function, so the bits are the same on both ISAs.

use super::vasm::{Gen, Src, CMP_GT_OQ, CMP_LT_OQ, R};
use iced_x86::IcedError;

/// Constants of the `exp` polynomial (the operands of `portable::exp_clamped`), each in the
/// pool or, once hoisted, in a register.
#[derive(Clone, Copy)]
pub(super) struct ExpConsts {
    /// The sign bit in every lane (`x ^ sign` is `-x`).
    pub(super) sign: Src,
    lo: Src,
    hi: Src,
    log2e: Src,
    neg_ln2_hi: Src,
    neg_ln2_lo: Src,
    poly: [Src; 7],
    magic: Src,
    bias: Src,
    /// `-LO`, the threshold of [`ExpConsts::emit_neg`].
    neg_lo: Src,
    /// 1.0 in every lane.
    pub(super) one: Src,
}

impl ExpConsts {
    /// The constants, in the pool.
    pub(super) fn new(g: &mut Gen) -> Result<ExpConsts, IcedError> {
        use crate::kernel::portable::exp_consts as e;
        let mut c = ExpConsts {
            sign: g.splat(0x8000_0000),
            lo: g.splat_f(e::LO),
            hi: g.splat_f(e::HI),
            log2e: g.splat_f(e::LOG2E),
            neg_ln2_hi: g.splat_f(-e::LN2_HI),
            neg_ln2_lo: g.splat_f(-e::LN2_LO),
            poly: [Src::R(0); 7],
            magic: g.splat_f(e::POW2I_MAGIC),
            bias: g.splat(e::POW2I_BIAS),
            neg_lo: g.splat_f(-e::LO),
            one: g.splat_f(1.0),
        };
        for (p, v) in c.poly.iter_mut().zip(e::POLY) {
            *p = g.splat_f(v);
        }
        Ok(c)
    }

    /// Constants this many registers hold all of them.
    pub(super) const N_CONSTS: usize = 17;

    /// Loads the constants into `regs`, as many as there are registers, in the order `one`,
    /// the polynomial's, then `sign` and `-LO` (which only [`ExpConsts::emit_neg`] reads); the
    /// rest stay in memory. Worth it with AVX-512, where every zmm memory operand is a full
    /// 64-byte load (AMD Zen 4 does one a cycle); AVX2 code has no registers to spare.
    pub(super) fn hoist(&mut self, g: &mut Gen, regs: &[usize]) -> R {
        let mut slots: Vec<&mut Src> = vec![
            &mut self.one,
            &mut self.lo,
            &mut self.hi,
            &mut self.log2e,
            &mut self.neg_ln2_hi,
            &mut self.neg_ln2_lo,
            &mut self.magic,
            &mut self.bias,
        ];
        slots.extend(self.poly.iter_mut());
        slots.push(&mut self.sign);
        slots.push(&mut self.neg_lo);
        for (s, &r) in slots.into_iter().zip(regs) {
            g.mov(r, *s)?;
            *s = Src::R(r);
        }
        Ok(())
    }

    /// `p = portable::exp_clamped(x)` for each register set, `x` kept (`r`, `n` scratch).
    /// The sets' instructions are interleaved step by step, so independent chains sit side by
    /// side for the scheduler.
    pub(super) fn emit(&self, g: &mut Gen, sets: &[ExpRegs]) -> R {
        for s in sets {
            // xc = clamp(x, LO, HI), the first half.
            g.vmaxps(s.r, s.x, self.lo)?;
        }
        self.body(g, sets)?;
        for s in sets {
            // x < LO gives 0.
            g.zero_where(s.p, s.x, CMP_LT_OQ, self.lo, s.r)?;
        }
        Ok(())
    }

    /// `p = portable::exp_clamped(-x)` for each register set, `x` kept (`r`, `n` scratch),
    /// interleaved as in [`ExpConsts::emit`]. One register fewer than negating into a
    /// register and calling `emit`, with the same bits: `-x < LO` is tested as `x > -LO`
    /// (negation is exact, and NaN fails both).
    pub(super) fn emit_neg(&self, g: &mut Gen, sets: &[ExpRegs]) -> R {
        for s in sets {
            g.xor(s.r, s.x, self.sign)?;
        }
        for s in sets {
            g.vmaxps(s.r, s.r, self.lo)?;
        }
        self.body(g, sets)?;
        for s in sets {
            g.zero_where(s.p, s.x, CMP_GT_OQ, self.neg_lo, s.r)?;
        }
        Ok(())
    }

    /// From `r = max(x, LO)`: `p = poly(r') * 2^n` without the final zeroing; `r` and `n` end
    /// free.
    fn body(&self, g: &mut Gen, sets: &[ExpRegs]) -> R {
        for s in sets {
            g.vminps(s.r, s.r, self.hi)?;
        }
        // n = round_ties_even(xc * log2e); r = fma(n, -ln2_lo, fma(n, -ln2_hi, xc)).
        for s in sets {
            g.vmulps(s.n, s.r, self.log2e)?;
        }
        for s in sets {
            g.round(s.n, s.n)?;
        }
        for s in sets {
            g.vfmadd231ps(s.r, s.n, self.neg_ln2_hi)?;
        }
        for s in sets {
            g.vfmadd231ps(s.r, s.n, self.neg_ln2_lo)?;
        }
        // Horner: p = fma(p, r, c_k).
        for s in sets {
            g.mov(s.p, self.poly[0])?;
        }
        for &ck in &self.poly[1..] {
            for s in sets {
                g.vfmadd213ps(s.p, s.r, ck)?;
            }
        }
        // 2^n in the exponent bits: ((n + magic) as bits - bias) << 23.
        for s in sets {
            g.vaddps(s.n, s.n, self.magic)?;
        }
        for s in sets {
            g.vpsubd(s.n, s.n, self.bias)?;
        }
        for s in sets {
            g.shl23(s.n)?;
        }
        for s in sets {
            g.vmulps(s.p, s.p, Src::R(s.n))?;
        }
        Ok(())
    }
}

/// Vector registers of one `exp` evaluation.
#[derive(Clone, Copy, Debug)]
pub(super) struct ExpRegs {
    /// The argument (kept).
    pub(super) x: usize,
    /// The result.
    pub(super) p: usize,
    /// Scratch: the reduced argument (and the AVX2 compare mask at the end).
    pub(super) r: usize,
    /// Scratch: the integer part, then `2^n`.
    pub(super) n: usize,
}
