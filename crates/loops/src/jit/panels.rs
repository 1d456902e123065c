//! What the panel matmuls ([`super::qgemm`], [`super::fgemm`]) share: weights repacked into
//! 64-byte aligned panels of 16 rows, panel groups (the unit threads split), the generated
//! loops over groups and run-time tiles of activation rows, and the checks that map a range of
//! panels to groups.
//!
//! The generated function is `extern "C" fn(w, x, y, full_groups, run_tail, m)`: it runs
//! `full_groups` groups of `n_panels` panels starting at `w` (columns starting at `y`), then the
//! last, static group if `run_tail != 0`, for `m` activation rows given at run time. Inside a
//! group, the rows go by tiles of `m_tile`; the last tile's row count (1..m_tile) is dispatched
//! at run time. The group's first tile streams the weights from memory and is the one a
//! generator may give software prefetches; the others find them in cache.
//!
//! Both generators are lowered from the same schedule family, `n/S m/T <k loop> m/1:reg
//! n/16:reg n/1:vec`; [`lp`], [`register_loops`] and [`same_loops`] build and compare it.

use crate::error::{Error, Result};
use crate::ir::{Expr, NodeId, VarId};
use crate::schedule::{Annot, Loop, Schedule, Tail};
use iced_x86::code_asm::*;
use std::ops::Range;

/// A 64-byte aligned chunk of packed weights.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zero-initialized byte buffer starting on a 64-byte boundary (a cache line), so every
/// panel load of a packed weight matrix is aligned the same way on every run.
pub(crate) struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// `len` zero bytes.
    pub(crate) fn zeroed(len: usize) -> Self {
        AlignedBytes {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }
    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding, so the Vec's storage is
        // `lines.len() * 64 >= len` initialized bytes, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }
    /// The bytes, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }
    /// The first byte.
    pub(crate) fn as_ptr(&self) -> *const u8 {
        self.lines.as_ptr().cast()
    }
}

/// Full groups of `n_panels` panels for `n` weight rows (threads split these), and the panels
/// of the last, static group (which holds the partial panel when `n % 16 != 0`).
pub(crate) fn panel_groups(n: usize, n_panels: usize) -> (usize, usize) {
    let total = n.div_ceil(16);
    let full = if n % 16 != 0 {
        (total - 1) / n_panels
    } else {
        total / n_panels
    };
    (full, total - full * n_panels)
}

/// The groups that the panel range `panels` covers: `(first group, full groups, run the tail
/// group)`, or `None` when it is empty. The range must start and end at multiples of
/// `n_panels` or at the last panel's end.
pub(crate) fn groups_of_panels(
    op: &'static str,
    panels: &Range<usize>,
    n: usize,
    n_panels: usize,
) -> Result<Option<(usize, usize, bool)>> {
    let total = n.div_ceil(16);
    let (full, tail) = panel_groups(n, n_panels);
    // Group boundaries, and the end of the last (possibly short) group.
    let boundary = |p: usize| p % n_panels == 0 || p == total;
    if panels.start > panels.end
        || panels.end > total
        || !boundary(panels.start)
        || !boundary(panels.end)
    {
        return Err(Error::BadShape {
            op,
            reason: format!(
                "panels {panels:?} of {total}: a range must start and end at multiples of {n_panels} (the group size) or at {total}"
            ),
        });
    }
    if panels.is_empty() {
        return Ok(None);
    }
    let lo = panels.start / n_panels;
    let hi = (panels.end / n_panels).min(full).max(lo);
    Ok(Some((lo, hi - lo, panels.end == total && tail > 0)))
}

/// Calls `run(first group, groups, run the tail group)` on `n_threads` scoped threads that
/// split the `full` groups statically; the last thread also runs the tail group. Each output is
/// computed by exactly one call, in the same order as by one thread, so the bits do not depend
/// on `n_threads`.
pub(crate) fn split_groups(
    full: usize,
    has_tail: bool,
    n_threads: usize,
    run: impl Fn(usize, usize, bool) + Sync,
) {
    let n_threads = n_threads.max(1);
    let run = &run;
    std::thread::scope(|s| {
        for t in 0..n_threads {
            let (lo, hi) = (full * t / n_threads, full * (t + 1) / n_threads);
            let last = t + 1 == n_threads;
            s.spawn(move || run(lo, hi - lo, last && has_tail));
        }
    });
}

pub(crate) type R = std::result::Result<(), iced_x86::IcedError>;

/// The shape of the loops [`emit_panel_loops`] generates.
pub(crate) struct PanelLoops {
    /// Activation rows per register tile.
    pub m_tile: usize,
    /// Panels per group.
    pub n_panels: usize,
    /// Weight rows (outputs per activation row).
    pub n: usize,
    /// Packed bytes of one 16-row panel (a group's panels are consecutive).
    pub panel_bytes: usize,
    /// Bytes of one activation row.
    pub x_row_bytes: usize,
    /// Stack bytes reserved at `[rsp]` for the tiles.
    pub scratch_bytes: usize,
    /// Prefetch the whole first group on entry: it has no tile before it to prefetch it, and
    /// this way its cache misses overlap instead of waiting one stream at a time.
    pub prefetch_first_group: bool,
}

/// A generator of register tiles for [`emit_panel_loops`].
///
/// Registers when a tile starts: `r12` = the group's first panel, `r11` = the tile's first
/// activation row, `r9` = the tile's first output row at the group's first column, `rsi` =
/// the first activation row. A tile may clobber `rax`, `rdx`, `r8`, `r10`, `rdi`, every
/// vector register (except what [`PanelTiles::constants`] set up) and the scratch at `[rsp]`;
/// `rbx`, `rcx`, `rbp`, `r9` and `r11`..`r15` belong to the loops.
pub(crate) trait PanelTiles {
    /// The assembler.
    fn asm(&mut self) -> &mut CodeAssembler;
    /// Sets up what every tile keeps in registers (after the prologue).
    fn constants(&mut self) -> R;
    /// One register tile of `rows` activation rows by `np` panels over all of `k`; the last
    /// panel is partial (`n % 16` rows) when `last_partial`; `prefetch` in a group's first
    /// tile.
    fn tile(&mut self, np: usize, rows: usize, last_partial: bool, prefetch: bool) -> R;
}

/// Emits the whole function (module doc) around `g`'s tiles, through its `ret`.
pub(crate) fn emit_panel_loops(g: &mut impl PanelTiles, l: &PanelLoops) -> R {
    let a = g.asm();
    a.push(rbx)?;
    a.push(r12)?;
    a.push(r13)?;
    a.push(r14)?;
    a.push(r15)?;
    a.push(rbp)?;
    a.mov(r13, rcx)?;
    a.mov(r14, r8)?;
    a.mov(r12, rdi)?;
    a.mov(rbx, rdx)?;
    // M is known only now: full m-tiles in r15, the rest in rbp.
    a.mov(rax, r9)?;
    a.xor(edx, edx)?;
    a.mov(ecx, l.m_tile as i32)?;
    a.div(rcx)?;
    a.mov(r15, rax)?;
    a.mov(rbp, rdx)?;
    if l.scratch_bytes > 0 {
        a.sub(rsp, l.scratch_bytes as i32)?;
    }
    g.constants()?;
    let a = g.asm();
    if l.prefetch_first_group {
        let lines = (l.n_panels * l.panel_bytes).div_ceil(64);
        let mut top = a.create_label();
        a.mov(r10, r12)?;
        a.mov(ecx, lines as i32)?;
        a.set_label(&mut top)?;
        a.prefetcht0(byte_ptr(r10))?;
        a.add(r10, 64)?;
        a.dec(ecx)?;
        a.jnz(top)?;
    }
    let (full_groups, tail_panels) = panel_groups(l.n, l.n_panels);
    if full_groups > 0 {
        let a = g.asm();
        let mut top = a.create_label();
        let mut after = a.create_label();
        a.test(r13, r13)?;
        a.jz(after)?;
        a.set_label(&mut top)?;
        group(g, l, l.n_panels, false)?;
        let a = g.asm();
        a.dec(r13)?;
        a.jnz(top)?;
        a.set_label(&mut after)?;
        a.nop()?;
    }
    if tail_panels > 0 {
        let a = g.asm();
        let mut done = a.create_label();
        a.test(r14, r14)?;
        a.jz(done)?;
        group(g, l, tail_panels, l.n % 16 != 0)?;
        let a = g.asm();
        a.set_label(&mut done)?;
        a.nop()?;
    }
    let a = g.asm();
    if l.scratch_bytes > 0 {
        a.add(rsp, l.scratch_bytes as i32)?;
    }
    a.pop(rbp)?;
    a.pop(r15)?;
    a.pop(r14)?;
    a.pop(r13)?;
    a.pop(r12)?;
    a.pop(rbx)?;
    a.vzeroupper()?;
    a.ret()
}

/// One group of `np` panels for all M rows, then the group cursors advance.
fn group(g: &mut impl PanelTiles, l: &PanelLoops, np: usize, last_partial: bool) -> R {
    let a = g.asm();
    a.mov(r11, rsi)?;
    a.mov(r9, rbx)?;
    let mut tails = a.create_label();
    let mut first_tails = a.create_label();
    let mut done = a.create_label();
    a.mov(rcx, r15)?;
    a.test(rcx, rcx)?;
    a.jz(first_tails)?;
    g.tile(np, l.m_tile, last_partial, true)?;
    next_m_tile(g.asm(), l)?;
    let a = g.asm();
    a.dec(rcx)?;
    a.jz(tails)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    g.tile(np, l.m_tile, last_partial, false)?;
    next_m_tile(g.asm(), l)?;
    let a = g.asm();
    a.dec(rcx)?;
    a.jnz(top)?;
    a.set_label(&mut tails)?;
    a.nop()?;
    // The last m-tile's row count, 1..m_tile, is dispatched at run time; it prefetches only
    // when it is the group's first tile.
    for prefetch in [false, true] {
        for rows in 1..l.m_tile {
            let a = g.asm();
            let mut next = a.create_label();
            a.cmp(rbp, rows as i32)?;
            a.jne(next)?;
            g.tile(np, rows, last_partial, prefetch)?;
            let a = g.asm();
            a.jmp(done)?;
            a.set_label(&mut next)?;
            a.nop()?;
        }
        if !prefetch {
            let a = g.asm();
            a.jmp(done)?;
            a.set_label(&mut first_tails)?;
            a.nop()?;
        }
    }
    let a = g.asm();
    a.set_label(&mut done)?;
    a.nop()?;
    a.add(r12, (np * l.panel_bytes) as i32)?;
    a.add(rbx, (np * 16 * 4) as i32)?;
    Ok(())
}

/// Advances the activation and output cursors by one m-tile.
fn next_m_tile(a: &mut CodeAssembler, l: &PanelLoops) -> R {
    a.add(r11, (l.m_tile * l.x_row_bytes) as i32)?;
    a.add(r9, (l.m_tile * l.n * 4) as i32)
}

/// Whether every displacement the loops and a tile of `m_tile` rows by `n_panels` panels use
/// fits the 32-bit immediates of x86-64 addressing (`extra` bytes past a panel group for
/// prefetches).
pub(crate) fn displacements_fit(l: &PanelLoops, extra: usize) -> bool {
    let fits = |v: Option<usize>| v.is_some_and(|v| v <= i32::MAX as usize);
    fits(
        l.n_panels
            .checked_mul(l.panel_bytes)
            .and_then(|b| b.checked_add(extra)),
    ) && fits(l.m_tile.checked_mul(l.x_row_bytes))
        && fits(l.m_tile.checked_mul(l.n).and_then(|v| v.checked_mul(4)))
}

/// A loop of the panel family's schedules (masked tails: panel groups and tiles need not
/// divide the extents).
pub(crate) fn lp(var: VarId, step: usize, annot: Annot) -> Loop {
    Loop {
        var,
        step,
        tail: Tail::Masked,
        annot,
    }
}

/// The register-tile suffix of the family `n/S m/T ... m/1:reg n/16:reg n/1:vec`: rows of the
/// tile (only when `T > 1`), panels (only when `S > 16`), then 16 weight rows per vector.
pub(crate) fn register_loops(m: VarId, n: VarId, t: usize, s: usize) -> Vec<Loop> {
    let mut regs = Vec::new();
    if t > 1 {
        regs.push(lp(m, 1, Annot::RegisterTile));
    }
    if s > 16 {
        regs.push(lp(n, 16, Annot::RegisterTile));
    }
    regs.push(lp(n, 1, Annot::Vectorize));
    regs
}

/// Loops and annotations equal, tails ignored (validation checks them) and a parallel
/// outermost loop read as serial (it only says how threads split the groups).
pub(crate) fn same_loops(a: &[Loop], b: &[Loop]) -> bool {
    let norm = |(i, l): (usize, &Loop)| {
        let annot = match l.annot {
            Annot::Parallel if i == 0 => Annot::Serial,
            a => a,
        };
        (l.var, l.step, annot)
    };
    a.len() == b.len()
        && a.iter()
            .enumerate()
            .map(norm)
            .eq(b.iter().enumerate().map(norm))
}

/// Whether node `id` has in `got` the loops ([`same_loops`]), fusion and (no) packs it has in
/// `want`, the schedule a generator emits: the one rule every schedule lowering matches by.
pub(crate) fn node_matches(got: &Schedule, want: &Schedule, id: NodeId) -> bool {
    let (g, w) = (got.node(id), want.node(id));
    same_loops(&g.loops, &w.loops) && g.fusion == w.fusion && g.packs.is_empty()
}

/// The first node that [`node_matches`] refuses, if any.
pub(crate) fn first_unlike(got: &Schedule, want: &Schedule) -> Option<NodeId> {
    (0..want.nodes.len() as u32)
        .map(NodeId)
        .find(|&id| !node_matches(got, want, id))
}

/// `(S, T)` from the first loops `n/S m/T` of `node`, the panel kernels' outer loops (panel
/// groups of `S` rows, a multiple of 16, then tiles of `T` activation rows); `inner` names the
/// reduction loop that follows, for the error.
pub(crate) fn panel_tile_of(
    expr: &Expr,
    schedule: &Schedule,
    node: NodeId,
    (n, m): (VarId, VarId),
    backend: &'static str,
    inner: &str,
) -> Result<(usize, usize)> {
    match schedule.node(node).loops.as_slice() {
        [a, b, ..] if a.var == n && a.step % 16 == 0 && b.var == m => Ok((a.step, b.step)),
        _ => Err(Error::Unsupported {
            backend,
            reason: format!(
                "node {node} must start `n/S m/T {inner}` with S a multiple of 16 (panel groups, then tiles of rows); got `{}`",
                schedule.node_text(expr, node)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panel_ranges_map_to_groups() {
        // 53 rows: 4 panels, the last partial; groups of 2: one full group, a tail of 2.
        assert_eq!(panel_groups(53, 2), (1, 2));
        assert_eq!(panel_groups(64, 2), (2, 0));
        let g = |r: Range<usize>| groups_of_panels("t", &r, 53, 2);
        assert_eq!(g(0..4).unwrap(), Some((0, 1, true)));
        assert_eq!(g(0..2).unwrap(), Some((0, 1, false)));
        assert_eq!(g(2..4).unwrap(), Some((1, 0, true)));
        assert_eq!(g(2..2).unwrap(), None);
        assert_eq!(g(4..4).unwrap(), None);
        // The end of a short last group is a boundary too: 40 rows are 3 panels.
        assert_eq!(groups_of_panels("t", &(3..3), 40, 2).unwrap(), None);
        assert_eq!(
            groups_of_panels("t", &(2..3), 40, 2).unwrap(),
            Some((1, 0, true))
        );
        assert!(g(1..4).is_err());
        assert!(g(0..5).is_err());
        assert!(g(0..3).is_err());
    }

    #[test]
    fn aligned_bytes_are_aligned_and_zeroed() {
        let mut b = AlignedBytes::zeroed(100);
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[99] = 7;
        assert_eq!(b.as_slice().len(), 100);
        assert_eq!(b.as_slice()[99], 7);
    }
}
