//! Weights repacked at load into 16-row tiles, so one `vpdpbusd` computes 16 rows at once.
//!
//! A tile holds one 32-weight block of 16 consecutive rows:
//! `[d: 16 x f16][m: 16 x f16 (Q4_1 only)][q: 8 or 16 groups of 16 x 4 bytes]`.
//! Group `p`, lane `r` holds four bytes of row `r`'s block, so a zmm of a group is "four weights
//! of each of 16 rows", and `vpdpbusd` against four activation bytes broadcast to all lanes adds
//! each row's partial dot product into its own lane. No horizontal sums; 16 outputs per store.
//!
//! - Q4_0/Q4_1: 4 groups of the block's 16 nibble bytes (`qs[4p..4p+4]`): low nibbles are
//!   elements `4p..4p+4`, high nibbles elements `16+4p..16+4p+4` (GGML's nibble order).
//! - Q8_0: 8 groups of `q + 128` (unsigned), elements `4p..4p+4`; the kernel subtracts
//!   `128 * sum(x)` per block.
//!
//! The repacked bytes are exactly as many as the file's, so memory does not grow.
//!
//! Per token and 16-row tile, the float work is, block by block in order:
//! `acc = fma(float(sumi), d_w * d_x, acc)` and (Q4_1) `accm = fma(m_w, s_x, accm)`, then
//! `out = acc + accm`. The integer `sumi` is exact, so the portable twin matches bit for bit,
//! and no token's result depends on the others in its batch.

use crate::act_q8::QuantizedRows;
use crate::qdot::QuantKind;
use half::f16;

/// Rows per tile.
pub const TILE_ROWS: usize = 16;

/// A matrix in 16-row tiles; see the module docs.
pub struct PackedMatrix {
    kind: QuantKind,
    n_rows: usize,
    n_cols: usize,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Bytes of one tile.
    pub const fn tile_bytes(kind: QuantKind) -> usize {
        match kind {
            QuantKind::Q4_0 => 32 + 256,
            QuantKind::Q4_1 => 64 + 256,
            QuantKind::Q8_0 => 32 + 512,
        }
    }

    /// Repacks `n_rows` GGML rows (`row(r)` gives row `r`'s blocks). `n_rows % 16 == 0`,
    /// `n_cols % 32 == 0`.
    pub fn pack<'a>(
        kind: QuantKind,
        n_rows: usize,
        n_cols: usize,
        row: impl Fn(usize) -> &'a [u8],
    ) -> Self {
        assert!(
            n_rows.is_multiple_of(TILE_ROWS) && n_cols.is_multiple_of(32),
            "PackedMatrix::pack: {n_rows}x{n_cols}"
        );
        let n_blocks = n_cols / 32;
        let tb = Self::tile_bytes(kind);
        let bb = kind.block_bytes();
        let mut data = vec![0u8; n_rows / TILE_ROWS * n_blocks * tb];
        for g in 0..n_rows / TILE_ROWS {
            for b in 0..n_blocks {
                let tile = &mut data[(g * n_blocks + b) * tb..][..tb];
                for r in 0..TILE_ROWS {
                    let blk = &row(g * TILE_ROWS + r)[b * bb..(b + 1) * bb];
                    tile[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
                    let (q_at, qs) = match kind {
                        QuantKind::Q4_1 => {
                            tile[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&blk[2..4]);
                            (64, &blk[4..20])
                        }
                        QuantKind::Q4_0 => (32, &blk[2..18]),
                        QuantKind::Q8_0 => (32, &blk[2..34]),
                    };
                    for p in 0..qs.len() / 4 {
                        let dst = &mut tile[q_at + p * 64 + r * 4..][..4];
                        dst.copy_from_slice(&qs[4 * p..4 * p + 4]);
                        if kind == QuantKind::Q8_0 {
                            dst.iter_mut().for_each(|v| *v ^= 0x80);
                        }
                    }
                }
            }
        }
        Self {
            kind,
            n_rows,
            n_cols,
            data,
        }
    }

    /// Output features.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }
    /// Input features.
    pub fn n_cols(&self) -> usize {
        self.n_cols
    }
    /// Block type.
    pub fn kind(&self) -> QuantKind {
        self.kind
    }
    /// Bytes held.
    pub fn len_bytes(&self) -> usize {
        self.data.len()
    }

    fn group(&self, g: usize) -> &[u8] {
        let n = self.n_cols / 32 * Self::tile_bytes(self.kind);
        &self.data[g * n..(g + 1) * n]
    }
}

/// `out[t][0..16] = rows 16g..16g+16 · token t0 + t`, for `t < n` (n ≤ 4), into `out[t*16..]`.
pub fn tile_dot(
    m: &PackedMatrix,
    g: usize,
    acts: &QuantizedRows,
    t0: usize,
    n: usize,
    use_avx512: bool,
    out: &mut [f32; 64],
) {
    assert!(
        n <= 4 && t0 + n <= acts.m() && acts.k() == m.n_cols,
        "tile_dot: bad operands"
    );
    let tiles = m.group(g);
    #[cfg(target_arch = "x86_64")]
    if use_avx512 {
        // SAFETY: callers pass `use_avx512` only when `qdot::avx512_available()`; the assert above
        // bounds the activation rows, and `tiles` holds `k/32` tiles of this kind.
        // SAFETY: within bounds, as stated at the top of this loop.
        unsafe {
            match n {
                1 => avx512::tile_dot::<1>(m.kind, tiles, acts, t0, out),
                2 => avx512::tile_dot::<2>(m.kind, tiles, acts, t0, out),
                3 => avx512::tile_dot::<3>(m.kind, tiles, acts, t0, out),
                4 => avx512::tile_dot::<4>(m.kind, tiles, acts, t0, out),
                _ => {}
            }
        }
        return;
    }
    let _ = use_avx512;
    tile_dot_portable(m.kind, tiles, acts, t0, n, out);
}

/// Portable twin of the AVX-512 tile kernel.
pub fn tile_dot_portable(
    kind: QuantKind,
    tiles: &[u8],
    acts: &QuantizedRows,
    t0: usize,
    n: usize,
    out: &mut [f32; 64],
) {
    let tb = PackedMatrix::tile_bytes(kind);
    let n_blocks = acts.k() / 32;
    for t in 0..n {
        let x = acts.row_qs(t0 + t);
        let mut acc = [0f32; TILE_ROWS];
        let mut accm = [0f32; TILE_ROWS];
        for b in 0..n_blocks {
            let tile = &tiles[b * tb..(b + 1) * tb];
            let xb = &x[32 * b..32 * b + 32];
            let (dx, sx, sumx) = acts.block(t0 + t, b);
            for r in 0..TILE_ROWS {
                let dw = f16::from_le_bytes([tile[2 * r], tile[2 * r + 1]]).to_f32();
                let mut sumi: i32 = match kind {
                    QuantKind::Q4_0 => -8 * sumx,
                    QuantKind::Q4_1 => 0,
                    QuantKind::Q8_0 => -128 * sumx,
                };
                let q_at = if kind == QuantKind::Q4_1 { 64 } else { 32 };
                let n_groups = if kind == QuantKind::Q8_0 { 8 } else { 4 };
                for p in 0..n_groups {
                    for i in 0..4 {
                        let byte = tile[q_at + p * 64 + r * 4 + i];
                        if kind == QuantKind::Q8_0 {
                            sumi += i32::from(byte) * i32::from(xb[4 * p + i]);
                        } else {
                            sumi += i32::from(byte & 0x0F) * i32::from(xb[4 * p + i]);
                            sumi += i32::from(byte >> 4) * i32::from(xb[16 + 4 * p + i]);
                        }
                    }
                }
                acc[r] = (sumi as f32).mul_add(dw * dx, acc[r]);
                if kind == QuantKind::Q4_1 {
                    let mw = f16::from_le_bytes([tile[32 + 2 * r], tile[33 + 2 * r]]).to_f32();
                    accm[r] = mw.mul_add(sx, accm[r]);
                }
            }
        }
        for r in 0..TILE_ROWS {
            out[t * TILE_ROWS + r] = acc[r] + accm[r];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{PackedMatrix, QuantKind};
    use crate::act_q8::QuantizedRows;
    use std::arch::x86_64::*;

    /// # Safety
    /// AVX-512 F/BW/VL/VNNI, F16C and FMA are present; `tiles` holds `acts.k()/32` tiles of
    /// `kind`; rows `t0..t0+N` exist in `acts`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    pub unsafe fn tile_dot<const N: usize>(
        kind: QuantKind,
        tiles: &[u8],
        acts: &QuantizedRows,
        t0: usize,
        out: &mut [f32; 64],
    ) {
        let tb = PackedMatrix::tile_bytes(kind);
        let n_blocks = acts.k() / 32;
        let mut xq = [std::ptr::null::<i8>(); N];
        for (t, p) in xq.iter_mut().enumerate() {
            *p = acts.row_qs(t0 + t).as_ptr();
        }
        let mut acc = [_mm512_setzero_ps(); N];
        let mut accm = [_mm512_setzero_ps(); N];
        let nib = _mm512_set1_epi8(0x0F);
        for b in 0..n_blocks {
            // SAFETY (pointer reads below): tile `b` lies within `tiles` (k/32 tiles), and
            // activation bytes `32b..32b+32` within each row of `k`.
            // SAFETY: within bounds, as stated at the top of this loop.
            let tile = unsafe { tiles.as_ptr().add(b * tb) };
            // SAFETY: within bounds, as stated at the top of this loop.
            let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.cast()) });
            match kind {
                QuantKind::Q4_0 | QuantKind::Q4_1 => {
                    let q_at = if kind == QuantKind::Q4_1 { 64 } else { 32 };
                    let mut lo = [_mm512_setzero_si512(); 4];
                    let mut hi = [_mm512_setzero_si512(); 4];
                    for p in 0..4 {
                        // SAFETY: within bounds, as stated at the top of this loop.
                        let packed = unsafe { _mm512_loadu_si512(tile.add(q_at + 64 * p).cast()) };
                        lo[p] = _mm512_and_si512(packed, nib);
                        hi[p] = _mm512_and_si512(_mm512_srli_epi16::<4>(packed), nib);
                    }
                    let mw = if kind == QuantKind::Q4_1 {
                        // SAFETY: within bounds, as stated at the top of this loop.
                        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.add(32).cast()) })
                    } else {
                        _mm512_setzero_ps()
                    };
                    for t in 0..N {
                        let (dx, sx, sumx) = acts.block(t0 + t, b);
                        // SAFETY: within bounds, as stated at the top of this loop.
                        let x = unsafe { xq[t].add(32 * b) };
                        let init = if kind == QuantKind::Q4_0 {
                            -8 * sumx
                        } else {
                            0
                        };
                        let mut s0 = _mm512_set1_epi32(init);
                        let mut s1 = _mm512_setzero_si512();
                        for p in 0..4 {
                            // SAFETY: within bounds, as stated at the top of this loop.
                            let xl = unsafe { x.add(4 * p).cast::<i32>().read_unaligned() };
                            // SAFETY: within bounds, as stated at the top of this loop.
                            let xh = unsafe { x.add(16 + 4 * p).cast::<i32>().read_unaligned() };
                            s0 = _mm512_dpbusd_epi32(s0, lo[p], _mm512_set1_epi32(xl));
                            s1 = _mm512_dpbusd_epi32(s1, hi[p], _mm512_set1_epi32(xh));
                        }
                        let sumi = _mm512_add_epi32(s0, s1);
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(dx));
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), scale, acc[t]);
                        if kind == QuantKind::Q4_1 {
                            accm[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), accm[t]);
                        }
                    }
                }
                QuantKind::Q8_0 => {
                    let mut w = [_mm512_setzero_si512(); 8];
                    for (p, wp) in w.iter_mut().enumerate() {
                        // SAFETY: within bounds, as stated at the top of this loop.
                        *wp = unsafe { _mm512_loadu_si512(tile.add(32 + 64 * p).cast()) };
                    }
                    for t in 0..N {
                        let (dx, _, sumx) = acts.block(t0 + t, b);
                        // SAFETY: within bounds, as stated at the top of this loop.
                        let x = unsafe { xq[t].add(32 * b) };
                        let mut s0 = _mm512_set1_epi32(-128 * sumx);
                        let mut s1 = _mm512_setzero_si512();
                        for p in 0..4 {
                            // SAFETY: within bounds, as stated at the top of this loop.
                            let xa = unsafe { x.add(4 * p).cast::<i32>().read_unaligned() };
                            // SAFETY: within bounds, as stated at the top of this loop.
                            let xb = unsafe { x.add(16 + 4 * p).cast::<i32>().read_unaligned() };
                            s0 = _mm512_dpbusd_epi32(s0, w[p], _mm512_set1_epi32(xa));
                            s1 = _mm512_dpbusd_epi32(s1, w[p + 4], _mm512_set1_epi32(xb));
                        }
                        let sumi = _mm512_add_epi32(s0, s1);
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(dx));
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), scale, acc[t]);
                    }
                }
            }
        }
        for t in 0..N {
            // SAFETY: `out` has 64 = 4 x 16 floats and t < N <= 4.
            unsafe {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * t), _mm512_add_ps(acc[t], accm[t]))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdot::{avx512_available, dot_rows_portable};
    use rand::{Rng, SeedableRng};

    #[test]
    fn packed_tiles_match_row_kernel_and_paths_agree() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for kind in [QuantKind::Q4_0, QuantKind::Q4_1, QuantKind::Q8_0] {
            let (n_rows, k) = (32, 192);
            let bb = kind.block_bytes();
            let mut rows = vec![0u8; n_rows * k / 32 * bb];
            rng.fill(&mut rows[..]);
            for blk in rows.chunks_mut(bb) {
                blk[..2].copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
                if kind == QuantKind::Q4_1 {
                    blk[2..4]
                        .copy_from_slice(&f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
                }
            }
            let row_bytes = k / 32 * bb;
            let packed = PackedMatrix::pack(kind, n_rows, k, |r| {
                &rows[r * row_bytes..(r + 1) * row_bytes]
            });
            let x: Vec<f32> = (0..4 * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            let mut acts = QuantizedRows::default();
            acts.quantize(&x, 4, k);
            for g in 0..2 {
                let mut portable = [0f32; 64];
                tile_dot(&packed, g, &acts, 0, 4, false, &mut portable);
                for t in 0..4 {
                    for r in 0..16 {
                        let mut want = [0f32];
                        dot_rows_portable(
                            kind,
                            &rows[(16 * g + r) * row_bytes..][..row_bytes],
                            &acts,
                            t,
                            &mut want,
                        );
                        let got = portable[16 * t + r];
                        assert!(
                            (got - want[0]).abs() <= 1e-4 * want[0].abs().max(1.0),
                            "{kind:?} g={g} t={t} r={r}: {got} vs {}",
                            want[0]
                        );
                    }
                }
                if avx512_available() {
                    for n in 1..=4 {
                        let mut fast = [0f32; 64];
                        tile_dot(&packed, g, &acts, 4 - n, n, true, &mut fast);
                        assert_eq!(fast[..16 * n], portable[16 * (4 - n)..], "{kind:?} n={n}");
                    }
                }
            }
        }
    }
}
