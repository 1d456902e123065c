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

use crate::act_q8::{GroupPtrs, QuantizedRows, GROUP_TOKENS};
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

/// Fetches tile group `g` of `m` into the cache (all of it, so its misses overlap).
pub fn prefetch_group(m: &PackedMatrix, g: usize) {
    #[cfg(target_arch = "x86_64")]
    if g < m.n_rows / TILE_ROWS {
        let tiles = m.group(g);
        for at in (0..tiles.len()).step_by(64) {
            // SAFETY: SSE is part of x86-64; a prefetch reads nothing architecturally.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    tiles.as_ptr().add(at).cast(),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, g);
}

/// Most tokens one [`tile_dot`] call computes (one token group of the activation layout).
pub const TILE_TOKENS: usize = GROUP_TOKENS;

/// `out[t*16..t*16+16] = rows 16g..16g+16 · token t0 + t`, for `t < n`. The tokens lie in one
/// group of the activation layout: `t0 % 8 + n <= 8`. With `prefetch = Some(h)`, tile group `h`
/// is fetched into the cache along the way (the next group, so that streaming weights from
/// memory overlaps with computing on cached ones).
#[allow(clippy::too_many_arguments)]
pub fn tile_dot(
    m: &PackedMatrix,
    g: usize,
    acts: &QuantizedRows,
    t0: usize,
    n: usize,
    prefetch: Option<usize>,
    use_avx512: bool,
    out: &mut [f32; TILE_ROWS * TILE_TOKENS],
) {
    assert!(
        n >= 1
            && t0 % GROUP_TOKENS + n <= GROUP_TOKENS
            && t0 + n <= acts.m()
            && acts.k() == m.n_cols
            && g < m.n_rows / TILE_ROWS,
        "tile_dot: bad operands"
    );
    let tiles = m.group(g);
    #[cfg(target_arch = "x86_64")]
    if use_avx512 {
        let a = acts.group(t0 / GROUP_TOKENS);
        let off = t0 % GROUP_TOKENS;
        // SAFETY: offsetting within the group's first block (`off < 8` tokens).
        let a = unsafe {
            GroupPtrs {
                qs: a.qs.add(off * 32),
                d: a.d.add(off),
                s: a.s.add(off),
                corr: a.corr.add(off),
            }
        };
        let nb = m.n_cols / 32;
        let (t, o) = (tiles.as_ptr(), out.as_mut_ptr());
        let pf = match prefetch {
            Some(h) if h < m.n_rows / TILE_ROWS => m.group(h).as_ptr(),
            _ => std::ptr::null(),
        };
        macro_rules! dispatch {
            ($kernel:ident) => {
                // SAFETY: callers pass `use_avx512` only when `qdot::avx512_available()`;
                // `tiles` holds `nb` tiles of this kind; the group holds `nb` blocks of tokens
                // `off..off + n` (asserted above); `out` holds `16 * n` values.
                unsafe {
                    match n {
                        1 => avx512::$kernel::<1>(t, nb, a, pf, o, 16),
                        2 => avx512::$kernel::<2>(t, nb, a, pf, o, 16),
                        3 => avx512::$kernel::<3>(t, nb, a, pf, o, 16),
                        4 => avx512::$kernel::<4>(t, nb, a, pf, o, 16),
                        5 => avx512::$kernel::<5>(t, nb, a, pf, o, 16),
                        6 => avx512::$kernel::<6>(t, nb, a, pf, o, 16),
                        7 => avx512::$kernel::<7>(t, nb, a, pf, o, 16),
                        _ => avx512::$kernel::<8>(t, nb, a, pf, o, 16),
                    }
                }
            };
        }
        match m.kind {
            QuantKind::Q4_0 => dispatch!(tile_dot_q4_0),
            QuantKind::Q4_1 => dispatch!(tile_dot_q4_1),
            QuantKind::Q8_0 => dispatch!(tile_dot_q8_0),
        }
        return;
    }
    let _ = (use_avx512, prefetch);
    tile_dot_portable(m.kind, tiles, acts, t0, n, out);
}

/// Every token's dot products with tile groups `groups`, written straight into a row-major
/// output: `out[t * out_stride + 16 * g + r] = row 16g + r · token t` for `t < acts.m()`. The
/// first tile group is prefetched whole, and the first pass over each group fetches the next.
/// Same results as [`tile_dot`], bit for bit.
///
/// # Safety
/// `out` is valid for writes at `t * out_stride + 16 * g .. + 16` for every `t < acts.m()` and
/// `g` in `groups`, and nothing else accesses those cells during the call.
pub unsafe fn tiles_dot_into(
    m: &PackedMatrix,
    groups: std::ops::Range<usize>,
    acts: &QuantizedRows,
    use_avx512: bool,
    out: *mut f32,
    out_stride: usize,
) {
    assert!(
        acts.k() == m.n_cols && groups.end <= m.n_rows / TILE_ROWS,
        "tiles_dot_into: bad operands"
    );
    if groups.is_empty() {
        return;
    }
    let n_tok = acts.m();
    prefetch_group(m, groups.start);
    #[cfg(target_arch = "x86_64")]
    if use_avx512 {
        let nb = m.n_cols / 32;
        for g in groups.clone() {
            let t = m.group(g).as_ptr();
            let next = if g + 1 < groups.end {
                m.group(g + 1).as_ptr()
            } else {
                std::ptr::null()
            };
            for (grp, t0) in (0..n_tok).step_by(GROUP_TOKENS).enumerate() {
                let n = (n_tok - t0).min(GROUP_TOKENS);
                let a = acts.group(grp);
                let pf = if grp == 0 { next } else { std::ptr::null() };
                let o = out.wrapping_add(t0 * out_stride + g * TILE_ROWS);
                macro_rules! dispatch {
                    ($kernel:ident) => {
                        // SAFETY: AVX-512 was detected by the caller's scratch; tile group `g`
                        // and the token group hold `nb` blocks; the caller vouches for `out`.
                        unsafe {
                            match n {
                                1 => avx512::$kernel::<1>(t, nb, a, pf, o, out_stride),
                                2 => avx512::$kernel::<2>(t, nb, a, pf, o, out_stride),
                                3 => avx512::$kernel::<3>(t, nb, a, pf, o, out_stride),
                                4 => avx512::$kernel::<4>(t, nb, a, pf, o, out_stride),
                                5 => avx512::$kernel::<5>(t, nb, a, pf, o, out_stride),
                                6 => avx512::$kernel::<6>(t, nb, a, pf, o, out_stride),
                                7 => avx512::$kernel::<7>(t, nb, a, pf, o, out_stride),
                                _ => avx512::$kernel::<8>(t, nb, a, pf, o, out_stride),
                            }
                        }
                    };
                }
                match m.kind {
                    QuantKind::Q4_0 => dispatch!(tile_dot_q4_0),
                    QuantKind::Q4_1 => dispatch!(tile_dot_q4_1),
                    QuantKind::Q8_0 => dispatch!(tile_dot_q8_0),
                }
            }
        }
        return;
    }
    let _ = use_avx512;
    let mut res = [0f32; TILE_ROWS * TILE_TOKENS];
    for g in groups {
        for t0 in (0..n_tok).step_by(GROUP_TOKENS) {
            let n = (n_tok - t0).min(GROUP_TOKENS);
            tile_dot_portable(m.kind, m.group(g), acts, t0, n, &mut res);
            for t in 0..n {
                // SAFETY: the caller vouches for these 16 cells.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.add((t0 + t) * out_stride + g * TILE_ROWS),
                        TILE_ROWS,
                    )
                };
                dst.copy_from_slice(&res[t * TILE_ROWS..(t + 1) * TILE_ROWS]);
            }
        }
    }
}

/// Portable twin of the AVX-512 tile kernels.
pub fn tile_dot_portable(
    kind: QuantKind,
    tiles: &[u8],
    acts: &QuantizedRows,
    t0: usize,
    n: usize,
    out: &mut [f32; TILE_ROWS * TILE_TOKENS],
) {
    let tb = PackedMatrix::tile_bytes(kind);
    let n_blocks = acts.k() / 32;
    for t in 0..n {
        let mut acc = [0f32; TILE_ROWS];
        let mut accm = [0f32; TILE_ROWS];
        for b in 0..n_blocks {
            let tile = &tiles[b * tb..(b + 1) * tb];
            let xb = acts.block_qs(t0 + t, b);
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
    use crate::act_q8::{GroupPtrs, GROUP_TOKENS};
    use std::arch::x86_64::*;

    /// Tokens `0..N` of the group: their four activation bytes `4p..4p+4` of block `b`, as a
    /// broadcast operand.
    ///
    /// # Safety
    /// Block `b` of the group exists; `t < 8`, `at + 4 <= 32`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn x4(a: &GroupPtrs, b: usize, t: usize, at: usize) -> __m512i {
        // SAFETY: the caller keeps the offset within block `b`'s 8 x 32 bytes.
        _mm512_set1_epi32(unsafe {
            a.qs.add((b * GROUP_TOKENS + t) * 32 + at)
                .cast::<i32>()
                .read_unaligned()
        })
    }

    /// Prefetches tile `b` (`tb` bytes) of the tile group at `pf`, if not null.
    #[inline]
    #[target_feature(enable = "sse")]
    fn prefetch_tile(pf: *const u8, b: usize, tb: usize) {
        if pf.is_null() {
            return;
        }
        let mut at = b * tb;
        while at < (b + 1) * tb {
            // A prefetch never faults; the address stays inside the group anyway.
            _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(at).cast());
            at += 64;
        }
    }

    /// Scalar `v[b][t]` of the group's per-block arrays.
    ///
    /// # Safety
    /// Block `b` of the group exists; `t < 8`.
    #[inline(always)]
    unsafe fn at<T: Copy>(p: *const T, b: usize, t: usize) -> T {
        // SAFETY: as the caller guarantees.
        unsafe { *p.add(b * GROUP_TOKENS + t) }
    }

    macro_rules! q4_kernel {
        ($name:ident, $q4_1:expr) => {
            /// 16 rows of 4-bit weights times tokens `0..N` of a group; see `tile_dot`.
            ///
            /// # Safety
            /// AVX-512 F/BW/VNNI, F16C and FMA are present; `tiles` holds `nb` tiles of this
            /// kind; `a` points at a group offset by at most `8 - N` tokens with `nb` blocks;
            /// `out` holds `16 * N` floats.
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
            pub unsafe fn $name<const N: usize>(
                tiles: *const u8,
                nb: usize,
                a: GroupPtrs,
                pf: *const u8,
                out: *mut f32,
                out_stride: usize,
            ) {
                const Q4_1: bool = $q4_1;
                let (tb, q_at) = if Q4_1 { (320, 64) } else { (288, 32) };
                let nib = _mm512_set1_epi8(0x0F);
                let mut acc = [_mm512_setzero_ps(); N];
                for b in 0..nb {
                    // All reads in this loop: tile `b < nb` and block `b` of the group exist,
                    // and every offset stays inside them (see the function's contract).
                    // SAFETY: as above.
                    let tile = unsafe { tiles.add(b * tb) };
                    prefetch_tile(pf, b, tb);
                    // SAFETY: as above.
                    let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.cast()) });
                    let mut lo = [_mm512_setzero_si512(); 4];
                    let mut hi = [_mm512_setzero_si512(); 4];
                    for p in 0..4 {
                        // SAFETY: as above.
                        let w = unsafe { _mm512_loadu_si512(tile.add(q_at + 64 * p).cast()) };
                        lo[p] = _mm512_and_si512(w, nib);
                        hi[p] = _mm512_and_si512(_mm512_srli_epi16::<4>(w), nib);
                    }
                    for t in 0..N {
                        let mut s0 = if Q4_1 {
                            _mm512_setzero_si512()
                        } else {
                            // -8 * sum(x) = (-128 * sum(x)) / 16, exact.
                            // SAFETY: as above.
                            _mm512_set1_epi32(unsafe { at(a.corr, b, t) } >> 4)
                        };
                        let mut s1 = _mm512_setzero_si512();
                        for p in 0..4 {
                            // SAFETY: as above.
                            let xl = unsafe { x4(&a, b, t, 4 * p) };
                            // SAFETY: as above.
                            let xh = unsafe { x4(&a, b, t, 16 + 4 * p) };
                            s0 = _mm512_dpbusd_epi32(s0, lo[p], xl);
                            s1 = _mm512_dpbusd_epi32(s1, hi[p], xh);
                        }
                        let sumi = _mm512_add_epi32(s0, s1);
                        // SAFETY: as above.
                        let scale = _mm512_mul_ps(dw, _mm512_set1_ps(unsafe { at(a.d, b, t) }));
                        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), scale, acc[t]);
                    }
                }
                // The offset term `sum_b m_w[b] * s_x[b]`, block by block in order, in a pass of
                // its own so the main loop keeps its registers.
                let mut accm = [_mm512_setzero_ps(); N];
                if Q4_1 {
                    for b in 0..nb {
                        // SAFETY: as in the main loop.
                        let mw = _mm512_cvtph_ps(unsafe {
                            _mm256_loadu_si256(tiles.add(b * tb + 32).cast())
                        });
                        for (t, am) in accm.iter_mut().enumerate() {
                            // SAFETY: as in the main loop.
                            let sx = unsafe { at(a.s, b, t) };
                            *am = _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), *am);
                        }
                    }
                }
                for t in 0..N {
                    // SAFETY: `out` holds 16 floats at every `t * out_stride`, `t < N`.
                    unsafe {
                        _mm512_storeu_ps(out.add(out_stride * t), _mm512_add_ps(acc[t], accm[t]))
                    };
                }
            }
        };
    }

    q4_kernel!(tile_dot_q4_0, false);
    q4_kernel!(tile_dot_q4_1, true);

    /// 16 rows of Q8_0 weights (stored `+128`) times tokens `0..N` of a group.
    ///
    /// # Safety
    /// As for the 4-bit kernels.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma")]
    pub unsafe fn tile_dot_q8_0<const N: usize>(
        tiles: *const u8,
        nb: usize,
        a: GroupPtrs,
        pf: *const u8,
        out: *mut f32,
        out_stride: usize,
    ) {
        let tb = 544;
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            // All reads in this loop: tile `b < nb` and block `b` of the group exist, and every
            // offset stays inside them.
            // SAFETY: as above.
            let tile = unsafe { tiles.add(b * tb) };
            prefetch_tile(pf, b, tb);
            // SAFETY: as above.
            let dw = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(tile.cast()) });
            let mut w = [_mm512_setzero_si512(); 8];
            for (p, wp) in w.iter_mut().enumerate() {
                // SAFETY: as above.
                *wp = unsafe { _mm512_loadu_si512(tile.add(32 + 64 * p).cast()) };
            }
            for (t, acc_t) in acc.iter_mut().enumerate() {
                // SAFETY: as above.
                let mut s0 = _mm512_set1_epi32(unsafe { at(a.corr, b, t) });
                let mut s1 = _mm512_setzero_si512();
                for p in 0..4 {
                    // SAFETY: as above.
                    let (xa, xb) = unsafe { (x4(&a, b, t, 4 * p), x4(&a, b, t, 16 + 4 * p)) };
                    s0 = _mm512_dpbusd_epi32(s0, w[p], xa);
                    s1 = _mm512_dpbusd_epi32(s1, w[p + 4], xb);
                }
                let sumi = _mm512_add_epi32(s0, s1);
                // SAFETY: as above.
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(unsafe { at(a.d, b, t) }));
                *acc_t = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sumi), scale, *acc_t);
            }
        }
        for (t, &a) in acc.iter().enumerate() {
            // SAFETY: `out` holds 16 floats at every `t * out_stride`, `t < N`; `+ 0` as the
            // portable twin's `acc + accm`.
            unsafe {
                _mm512_storeu_ps(
                    out.add(out_stride * t),
                    _mm512_add_ps(a, _mm512_setzero_ps()),
                )
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
            let m = 13;
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-3.0..3.0)).collect();
            let mut acts = QuantizedRows::default();
            acts.quantize(&x, m, k);
            for g in 0..2 {
                // Portable, one token at a time, against the row kernel.
                let mut portable = vec![0f32; 16 * m];
                for t in 0..m {
                    let mut one = [0f32; TILE_ROWS * TILE_TOKENS];
                    tile_dot(&packed, g, &acts, t, 1, None, false, &mut one);
                    portable[16 * t..16 * t + 16].copy_from_slice(&one[..16]);
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
                // Straight into a strided output, both paths, same bits.
                for avx in [false, true] {
                    if avx && !avx512_available() {
                        continue;
                    }
                    let stride = 16 * 2 + 5;
                    let mut out = vec![f32::NAN; m * stride];
                    // SAFETY: `out` holds `m` rows of `stride >= 16 * (g + 1)` values.
                    unsafe {
                        tiles_dot_into(&packed, g..g + 1, &acts, avx, out.as_mut_ptr(), stride)
                    };
                    for t in 0..m {
                        assert_eq!(
                            out[t * stride + 16 * g..][..16],
                            portable[16 * t..16 * t + 16],
                            "{kind:?} g={g} t={t} avx={avx}"
                        );
                    }
                }
                // Every (t0, n) within a token group, both paths, same bits.
                let mut tiles_only = QuantizedRows::default();
                tiles_only.quantize_for_tiles(&x, m, k);
                for avx in [false, true] {
                    if avx && !avx512_available() {
                        continue;
                    }
                    for t0 in 0..m {
                        for n in 1..=(TILE_TOKENS - t0 % TILE_TOKENS).min(m - t0) {
                            let mut got = [0f32; TILE_ROWS * TILE_TOKENS];
                            tile_dot(&packed, g, &tiles_only, t0, n, Some(g + 1), avx, &mut got);
                            assert_eq!(
                                got[..16 * n],
                                portable[16 * t0..16 * (t0 + n)],
                                "{kind:?} g={g} t0={t0} n={n} avx={avx}"
                            );
                        }
                    }
                }
            }
        }
    }
}
