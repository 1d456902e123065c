//! The float-weight matmul as a schedule of [`crate::ir::library::matmul_wt`]: what the
//! generator in [`super::fgemm`] emits, written in the schedule language, and the lowering back
//! from it.
//!
//! The generator emits one family of loop nests. With `S = 16 * n_panels` weight rows per
//! panel group and `T = m_tile` activation rows per register tile, the reduction runs
//!
//! ```text
//! n/S[:par] m/T k/1 m/1:reg n/16:reg n/1:vec
//! ```
//!
//! (`m/1:reg` only when `T > 1`, `n/16:reg` only when `S > 16`): panel groups outermost (threads
//! split them), then tiles of activation rows, then `k` in increasing order, with the tile's
//! accumulators in registers and 16 weight rows per vector (one zmm, or two ymm on AVX2). The
//! product is fused into it inside `k` (the same loops, `@%3/3`): one fma per point. Reads are
//! views and keep the naive schedule.
//!
//! Every schedule of the expression gives the same bits (see the crate's invariants), so the
//! lowering is a structural match: [`FGemmDesc::from_schedule`] accepts exactly this family and
//! names the node, and the loops it expected, where a schedule leaves it.

use super::fgemm::FGemmDesc;
use super::panels::{first_unlike, lp, node_matches, panel_tile_of, register_loops};
use super::Isa;
use crate::error::{Error, Result};
use crate::ir::library::matmul_wt;
use crate::ir::{Expr, FloatType, NodeId, VarId};
use crate::schedule::{Annot, Fusion, NodeSchedule, Schedule};

/// The product node of `matmul_wt`.
const MUL: NodeId = NodeId(2);
/// The reduction (the output) of `matmul_wt`.
const REDUCE: NodeId = NodeId(3);

/// Variable handles of a `matmul_wt` expression, by name.
struct Vars {
    m: VarId,
    n: VarId,
    k: VarId,
}

impl Vars {
    fn find(expr: &Expr) -> Option<Vars> {
        Some(Vars {
            m: expr.var_named("m")?,
            n: expr.var_named("n")?,
            k: expr.var_named("k")?,
        })
    }
}

fn unsupported(reason: String) -> Error {
    Error::Unsupported {
        backend: "fgemm",
        reason,
    }
}

/// `(S, T)` from the reduction's first loops `n/S m/T`.
fn tile_of(expr: &Expr, v: &Vars, schedule: &Schedule) -> Result<(usize, usize)> {
    panel_tile_of(expr, schedule, REDUCE, (v.n, v.m), "fgemm", "k/1")
}

impl FGemmDesc {
    /// The expression this description computes and the schedule its code follows (module
    /// doc): [`crate::interp::run`] under it is the kernel's reference.
    pub fn schedule(&self) -> Result<(Expr, Schedule)> {
        let expr = matmul_wt(self.ty, self.m, self.n, self.k)?;
        let schedule = self.schedule_of(&expr)?;
        schedule.validate(&expr)?;
        Ok((expr, schedule))
    }

    /// The schedule text of the reduction (`n/64 m/4 k/1 m/1:reg n/16:reg n/1:vec`), which
    /// [`FGemmDesc::from_schedule_text`] reads back.
    pub fn schedule_text(&self) -> Result<String> {
        let (expr, schedule) = self.schedule()?;
        Ok(schedule.node_text(&expr, REDUCE))
    }

    fn schedule_of(&self, expr: &Expr) -> Result<Schedule> {
        if self.m_tile == 0 || self.n_panels == 0 {
            return Err(unsupported(format!(
                "a register tile needs at least one row and one panel (m_tile {}, n_panels {})",
                self.m_tile, self.n_panels
            )));
        }
        let v = Vars::find(expr).ok_or_else(|| unsupported("not a matmul_wt expression".into()))?;
        let (t, s) = (self.m_tile, 16 * self.n_panels);
        let mut loops = vec![
            lp(v.n, s, Annot::Serial),
            lp(v.m, t, Annot::Serial),
            lp(v.k, 1, Annot::Serial),
        ];
        loops.extend(register_loops(v.m, v.n, t, s));
        let mut schedule = Schedule::naive(expr);
        schedule.nodes[REDUCE.0 as usize] = NodeSchedule {
            loops: loops.clone(),
            fusion: None,
            packs: Vec::new(),
        };
        schedule.nodes[MUL.0 as usize] = NodeSchedule {
            loops,
            fusion: Some(Fusion {
                into: REDUCE,
                depth: 3,
            }),
            packs: Vec::new(),
        };
        Ok(schedule)
    }

    /// Lowers a schedule of [`matmul_wt`] to the generator's parameters, for `isa`. Accepts the
    /// family in the module doc; anything else is [`Error::Unsupported`] naming the first node
    /// that differs and the loops the generator would emit there.
    pub fn from_schedule(expr: &Expr, schedule: &Schedule, isa: Isa) -> Result<FGemmDesc> {
        schedule.validate(expr)?;
        let not_matmul_wt = || unsupported("the expression is not `library::matmul_wt`".into());
        let v = Vars::find(expr).ok_or_else(not_matmul_wt)?;
        let ty = expr
            .inputs
            .get(1)
            .and_then(|i| FloatType::of_storage(i.storage))
            .ok_or_else(not_matmul_wt)?;
        let extent = |x: VarId| expr.var(x).extent;
        let (m, n, k) = (extent(v.m), extent(v.n), extent(v.k));
        if *expr != matmul_wt(ty, m, n, k)? {
            return Err(not_matmul_wt());
        }
        let (s, t) = tile_of(expr, &v, schedule)?;
        let desc = FGemmDesc {
            m_tile: t,
            n_panels: s / 16,
            ..FGemmDesc::for_isa(ty, m, n, k, isa)
        };
        let want = desc.schedule_of(expr)?;
        if let Some(id) = first_unlike(schedule, &want) {
            same_node(expr, id, schedule, &want)?;
        }
        Ok(desc)
    }

    /// [`FGemmDesc::from_schedule`] from the text of the reduction alone (as
    /// [`FGemmDesc::schedule_text`] prints it); the other nodes are placed as the family
    /// places them.
    pub fn from_schedule_text(
        ty: FloatType,
        m: usize,
        n: usize,
        k: usize,
        isa: Isa,
        text: &str,
    ) -> Result<FGemmDesc> {
        let expr = matmul_wt(ty, m, n, k)?;
        let given = Schedule::naive(&expr).with_node_text(&expr, REDUCE, text)?;
        // The text's own errors first (unknown variables, missing loops, bad splits).
        given.validate(&expr)?;
        // Take S and T from the text, place every node, and check the text against the
        // family before putting it back (it may carry a `:par`).
        let v = Vars::find(&expr).expect("matmul_wt has its variables");
        let (s, t) = tile_of(&expr, &v, &given)?;
        let probe = FGemmDesc {
            m_tile: t,
            n_panels: s / 16,
            ..FGemmDesc::for_isa(ty, m, n, k, isa)
        };
        let mut schedule = probe.schedule_of(&expr)?;
        same_node(&expr, REDUCE, &given, &schedule)?;
        schedule.nodes[REDUCE.0 as usize] = given.node(REDUCE).clone();
        FGemmDesc::from_schedule(&expr, &schedule, isa)
    }
}

/// Errors unless node `id` has the same loops, fusion and (no) packs in `got` as in `want`,
/// naming the loops the generator emits there.
fn same_node(expr: &Expr, id: NodeId, got: &Schedule, want: &Schedule) -> Result<()> {
    if node_matches(got, want, id) {
        return Ok(());
    }
    Err(unsupported(format!(
        "node {id}: the float-weight generator emits `{}` here, not `{}` (the loop family is in jit::fgemm_schedule)",
        want.node_text(expr, id),
        got.node_text(expr, id)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_round_trip_through_the_lowering() {
        for ty in [FloatType::F32, FloatType::F16, FloatType::Bf16] {
            for (m, n, k, t, p) in [(1, 40, 7, 1, 8), (5, 33, 64, 4, 2), (3, 16, 1, 3, 3)] {
                let desc = FGemmDesc {
                    m_tile: t,
                    n_panels: p,
                    ..FGemmDesc::for_isa(ty, m, n, k, Isa::Avx512)
                };
                let (expr, s) = desc.schedule().unwrap();
                let back = FGemmDesc::from_schedule(&expr, &s, Isa::Avx512).unwrap();
                assert_eq!(back, desc, "{ty} {m}x{n}x{k}");
                let text = desc.schedule_text().unwrap();
                let parsed =
                    FGemmDesc::from_schedule_text(ty, m, n, k, Isa::Avx512, &text).unwrap();
                assert_eq!(parsed, desc, "{text}");
            }
        }
    }

    #[test]
    fn the_documented_form_is_the_printed_one() {
        let desc = FGemmDesc {
            m_tile: 4,
            n_panels: 3,
            ..FGemmDesc::for_isa(FloatType::F16, 8, 96, 64, Isa::Avx512)
        };
        assert_eq!(
            desc.schedule_text().unwrap(),
            "n/48 m/4 k/1 m/1:reg n/16:reg n/1:vec"
        );
        let (expr, s) = desc.schedule().unwrap();
        assert_eq!(
            s.node_text(&expr, MUL),
            "n/48 m/4 k/1 m/1:reg n/16:reg n/1:vec @%3/3"
        );
        let one = FGemmDesc {
            m_tile: 1,
            n_panels: 1,
            ..desc
        };
        assert_eq!(one.schedule_text().unwrap(), "n/16 m/1 k/1 n/1:vec");
    }
}
