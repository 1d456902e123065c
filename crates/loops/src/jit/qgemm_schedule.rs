//! The quantized matmul as a schedule of [`crate::ir::library::qmatmul`]: what the generator in
//! [`super::qgemm`] emits, written in the schedule language, and the lowering back from it.
//!
//! The generator emits one family of loop nests. With `S = 16 * n_panels` weight rows per
//! panel group and `T = m_tile` activation rows per register tile, the node that accumulates
//! blocks (`acc = sum_kb f32(s) * d_w * d_x`) runs
//!
//! ```text
//! n/S[:par] m/T kb/1 m/1:reg n/16:reg n/1:vec
//! ```
//!
//! (`m/1:reg` only when `T > 1`, `n/16:reg` only when `S > 16`): panel groups outermost (threads
//! split them), then tiles of activation rows, then blocks in increasing order, with the tile's
//! accumulators in registers and 16 weight rows per vector (one zmm, or two ymm on AVX2). The
//! per-block body (the integer dot product, its conversion and scales) is fused into it inside
//! `kb`; the integer dot walks `kl/4 ... kl/1`, the four-byte groups of `vpdpbusd`. For Q4_1 the
//! offset term `sum_kb m_w * s_x` is a second pass with the same loops, and both are fused into
//! the final add at depth 2 (per tile). Reads are views and keep the naive schedule.
//!
//! Every schedule of the expression gives the same bits (see the crate's invariants), so the
//! lowering is a structural match: [`QGemmDesc::from_schedule`] accepts exactly this family and
//! names the node, and the loops it expected, where a schedule leaves it.

use super::panels::{first_unlike, lp, panel_tile_of, register_loops};
use super::qgemm::QGemmDesc;
use super::Isa;
use crate::error::{Error, Result};
use crate::ir::library::qmatmul;
use crate::ir::{args, BinaryOp, Expr, NodeId, Op, Storage, VarId};
use crate::quant::{QuantType, BLOCK};
use crate::schedule::{Annot, Fusion, NodeSchedule, Schedule};

/// The nodes of a `qmatmul` expression the lowering places.
struct QmatmulNodes {
    /// `sum_kb f32(s) * d_w * d_x`.
    acc: NodeId,
    /// Q4_1's `sum_kb m_w * s_x`.
    min: Option<NodeId>,
    /// The output (`acc`, or `acc + min`).
    out: NodeId,
}

impl QmatmulNodes {
    fn find(expr: &Expr) -> QmatmulNodes {
        let out = expr.output;
        match expr.node(out).op {
            Op::Binary(BinaryOp::Add, acc, min) => QmatmulNodes {
                acc,
                min: Some(min),
                out,
            },
            _ => QmatmulNodes {
                acc: out,
                min: None,
                out,
            },
        }
    }
}

/// Variable handles of a `qmatmul` expression, by name.
struct Vars {
    m: VarId,
    n: VarId,
    kb: VarId,
    kl: VarId,
}

impl Vars {
    fn find(expr: &Expr) -> Option<Vars> {
        Some(Vars {
            m: expr.var_named("m")?,
            n: expr.var_named("n")?,
            kb: expr.var_named("kb")?,
            kl: expr.var_named("kl")?,
        })
    }
}

fn unsupported(reason: String) -> Error {
    Error::Unsupported {
        backend: "qgemm",
        reason,
    }
}

/// `(S, T)` from the block-accumulating node's first loops `n/S m/T`.
fn tile_of(expr: &Expr, v: &Vars, schedule: &Schedule, acc: NodeId) -> Result<(usize, usize)> {
    panel_tile_of(expr, schedule, acc, (v.n, v.m), "qgemm", "kb/1")
}

impl QGemmDesc {
    /// The expression this description computes and the schedule its code follows (module
    /// doc): [`crate::interp::run`] under it is the kernel's reference.
    pub fn schedule(&self) -> Result<(Expr, Schedule)> {
        let expr = qmatmul(self.quant, self.m, self.n, self.k)?;
        let schedule = self.schedule_of(&expr)?;
        schedule.validate(&expr)?;
        Ok((expr, schedule))
    }

    /// The schedule text of the block-accumulating node (`n/48 m/4 kb/1 m/1:reg n/16:reg
    /// n/1:vec`): what `kernels bench --op qgemv --schedule FILE` reads.
    pub fn schedule_text(&self) -> Result<String> {
        let (expr, schedule) = self.schedule()?;
        Ok(schedule.node_text(&expr, QmatmulNodes::find(&expr).acc))
    }

    fn schedule_of(&self, expr: &Expr) -> Result<Schedule> {
        if self.m_tile == 0 || self.n_panels == 0 {
            return Err(unsupported(format!(
                "a register tile needs at least one row and one panel (m_tile {}, n_panels {})",
                self.m_tile, self.n_panels
            )));
        }
        let v = Vars::find(expr).ok_or_else(|| unsupported("not a qmatmul expression".into()))?;
        let nodes = QmatmulNodes::find(expr);
        let (t, s) = (self.m_tile, 16 * self.n_panels);
        // Per tile and panel group: the prefix every fused node shares.
        let tile = [lp(v.n, s, Annot::Serial), lp(v.m, t, Annot::Serial)];
        let regs = register_loops(v.m, v.n, t, s);
        let per_block = |with_kl: bool| {
            let mut l = tile.to_vec();
            l.push(lp(v.kb, 1, Annot::Serial));
            if with_kl {
                l.push(lp(v.kl, 4, Annot::Serial));
            }
            l.extend_from_slice(&regs);
            if with_kl {
                l.push(lp(v.kl, 1, Annot::Serial));
            }
            l
        };
        let mut schedule = Schedule::naive(expr);
        for (i, ns) in schedule.nodes.iter_mut().enumerate() {
            let id = NodeId(i as u32);
            let node = expr.node(id);
            if matches!(node.op, Op::Read { .. } | Op::Const(_)) {
                continue;
            }
            let space = expr.iter_space(id);
            let fused_into = |depth| {
                // In `qmatmul` every non-output node has exactly one consumer.
                (0..expr.nodes.len() as u32)
                    .map(NodeId)
                    .find(|&c| args(&expr.node(c).op).contains(&id))
                    .map(|into| Fusion { into, depth })
            };
            *ns = if id == nodes.out && nodes.min.is_some() {
                let mut loops = tile.to_vec();
                loops.extend_from_slice(&regs);
                NodeSchedule {
                    loops,
                    fusion: None,
                    packs: Vec::new(),
                }
            } else if id == nodes.acc || Some(id) == nodes.min {
                NodeSchedule {
                    loops: per_block(false),
                    fusion: if id == nodes.out { None } else { fused_into(2) },
                    packs: Vec::new(),
                }
            } else if [v.m, v.n, v.kb].iter().all(|x| space.contains(x)) {
                NodeSchedule {
                    loops: per_block(space.contains(&v.kl)),
                    fusion: fused_into(3),
                    packs: Vec::new(),
                }
            } else {
                return Err(unsupported(format!(
                    "node {id} of the expression is not one the quantized generator places"
                )));
            };
        }
        Ok(schedule)
    }

    /// Lowers a schedule of [`qmatmul`] to the generator's parameters, for `isa`. Accepts the
    /// family in the module doc; anything else is [`Error::Unsupported`] naming the first
    /// node that differs and the loops the generator would emit there. Software prefetch is a
    /// code-generation choice, not a loop transformation: it takes the default for the block
    /// type (set `prefetch_blocks` after to change it).
    pub fn from_schedule(expr: &Expr, schedule: &Schedule, isa: Isa) -> Result<QGemmDesc> {
        schedule.validate(expr)?;
        let not_qmatmul = || unsupported("the expression is not `library::qmatmul`".into());
        let v = Vars::find(expr).ok_or_else(not_qmatmul)?;
        let quant = match expr.inputs.first().map(|i| i.storage) {
            Some(Storage::Quant(q)) if q != QuantType::Q8Act => q,
            _ => return Err(not_qmatmul()),
        };
        let extent = |x: VarId| expr.var(x).extent;
        let (m, n, k) = (extent(v.m), extent(v.n), extent(v.kb) * BLOCK);
        if *expr != qmatmul(quant, m, n, k)? {
            return Err(not_qmatmul());
        }
        let nodes = QmatmulNodes::find(expr);
        let text = |id| schedule.node_text(expr, id);
        let (s, t) = tile_of(expr, &v, schedule, nodes.acc)?;
        let mut desc = QGemmDesc::for_isa(quant, m, n, k, isa);
        desc.m_tile = t;
        desc.n_panels = s / 16;
        let want = desc.schedule_of(expr)?;
        if let Some(id) = first_unlike(schedule, &want) {
            return Err(unsupported(format!(
                "node {id}: the quantized generator emits `{}` here, not `{}` (the loop family is in jit::qgemm_schedule)",
                want.node_text(expr, id),
                text(id)
            )));
        }
        Ok(desc)
    }

    /// [`QGemmDesc::from_schedule`] from the text of the block-accumulating node alone (as
    /// [`QGemmDesc::schedule_text`] prints it); the other nodes are placed as the family
    /// places them.
    pub fn from_schedule_text(
        quant: QuantType,
        m: usize,
        n: usize,
        k: usize,
        isa: Isa,
        text: &str,
    ) -> Result<QGemmDesc> {
        let expr = qmatmul(quant, m, n, k)?;
        let acc = QmatmulNodes::find(&expr).acc;
        let given = Schedule::naive(&expr).with_node_text(&expr, acc, text)?;
        // Take S and T from the text, place every node, then put the text's own loops back so
        // that a text outside the family is reported as such.
        let v = Vars::find(&expr).expect("qmatmul has its variables");
        let (s, t) = tile_of(&expr, &v, &given, acc)?;
        let probe = QGemmDesc {
            m_tile: t,
            n_panels: s / 16,
            ..QGemmDesc::for_isa(quant, m, n, k, isa)
        };
        let mut schedule = probe.schedule_of(&expr)?;
        schedule.nodes[acc.0 as usize].loops = given.node(acc).loops.clone();
        QGemmDesc::from_schedule(&expr, &schedule, isa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_round_trip_through_the_lowering() {
        for quant in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            for (m, n, t, p) in [(1, 40, 1, 8), (5, 33, 4, 2), (8, 576, 8, 1), (3, 16, 3, 3)] {
                let desc = QGemmDesc {
                    m_tile: t,
                    n_panels: p,
                    ..QGemmDesc::for_isa(quant, m, n, 64, Isa::Avx512)
                };
                let (expr, s) = desc.schedule().unwrap();
                let back = QGemmDesc::from_schedule(&expr, &s, Isa::Avx512).unwrap();
                assert_eq!((back.m_tile, back.n_panels), (t, p), "{quant} {m}x{n}");
                let text = desc.schedule_text().unwrap();
                let parsed =
                    QGemmDesc::from_schedule_text(quant, m, n, 64, Isa::Avx512, &text).unwrap();
                assert_eq!((parsed.m_tile, parsed.n_panels), (t, p), "{text}");
            }
        }
    }

    #[test]
    fn the_documented_form_is_the_printed_one() {
        let desc = QGemmDesc {
            m_tile: 4,
            n_panels: 3,
            ..QGemmDesc::for_isa(QuantType::Q4_1, 8, 96, 64, Isa::Avx512)
        };
        assert_eq!(
            desc.schedule_text().unwrap(),
            "n/48 m/4 kb/1 m/1:reg n/16:reg n/1:vec @%14/2"
        );
    }
}
