//! The row kernels as schedules of IR expressions: what each generator in [`super::rowops`]
//! emits, written in the schedule language over its [`crate::ir::library`] expression, and the
//! lowering back from it ([`RowOpDesc::from_schedule`], [`RowKernel::compile_schedule`]).
//!
//! Each generator emits one loop nest per ISA. Below, `V` is the ISA's vector width (16 f32
//! on AVX-512, 8 on AVX2) and `:vec` marks the loop whose iterations are vector lanes; the
//! portable twins run the same loops without `:vec`, and their element-wise loops are plain
//! `i/1` (fusion depths `@%N/D`, node N's first D loops, shrink with them). Every split has a
//! masked tail (lengths need not be multiples of 16).
//!
//! ```text
//! rms_norm(m, d)          per row (m/1), two passes over the row:
//!   %2 x*x                m/1 i/16 i/1:vec         @%3/3
//!   %3 sum over i         m/1 i/16:lanes i/1:vec   @%5/1   16 lanes (two ymm on AVX2)
//!   %5 /d, %7 +eps, %8    m/1                      @%7/1, @%8/1, @%9/1
//!   %9 x*r                m/1 i/V i/1:vec          @%10/3
//!   %10 *w                m/1 i/V i/1:vec
//! softmax_rows(m, n, s)   per row (m/1), two passes over the row:
//!   %1 max over i         m/1 i/16 i/1             @%2/1
//!   %2 x-max, %3 exp      m/1 i/16 i/1:vec         @%3/3, @%4/3
//!   %4 sum over i         m/1 i/16:lanes i/1:vec
//! add(n)                  %2                       i/V i/1:vec
//! silu_mul(n)             %2 silu @%3/2, %3 *u     i/V i/1:vec
//! exp_shifted(n)          %2 -shift @%4/2, %4 *scale @%5/2, %5 exp    i/V i/1:vec
//! ```
//!
//! Reads and constants keep the naive schedule (the scalars `eps`, `shift` and `scale` are
//! inputs of one value: the kernels' run-time arguments). The sums are lane-split
//! ([`crate::schedule::Annot::Lanes`]): 16 partial sums folded as `reduce16`, which is what
//! the kernels compute, so the interpreter under this schedule gives the kernels' bits. The
//! maximum is written `i/16 i/1` without lanes: the kernels keep 16 lane maxima, but a
//! maximum (NaN skipped) has the same value in any order except perhaps the sign of a zero,
//! which `exp(x - max)` does not show. Unrolling (by 4 in RMSNorm's passes and the add, by 2
//! in the exp streams) is a code-generation choice the family leaves out, as software
//! prefetch is for the matmuls. A `:par` on the outermost loop is accepted (rows, or runs of
//! elements, are independent, so a caller may split them among threads).
//!
//! Bit for bit on every input without NaN whose softmax rows have a finite maximum: the JIT's
//! `exp` of a NaN is not NaN (its clamp, `vmaxps`/`vminps`, returns the bound), while the IR's
//! and the portable twins' is; a row of only `-inf` gives `-inf - -inf` = NaN.
//!
//! The lowering is a structural match: [`RowOpDesc::from_schedule`] recognizes the expression
//! (by rebuilding the library expression of its shape and comparing), builds the family above
//! for the ISA, and accepts exactly it, naming the first node that differs and the loops the
//! generator emits there. [`RowOp::Rope`] and [`RowOp::Argmax`] have no expression (the IR has
//! no select and no index-valued reduction; see the crate's "Not yet here").

use super::panels::{first_unlike, lp};
use super::rowops::{RowKernel, RowOp, RowOpDesc};
use super::Isa;
use crate::error::{Error, Result};
use crate::ir::{library, Access, Expr, NodeId, Op};
use crate::schedule::{Annot, Fusion, Loop, NodeSchedule, Schedule, LANES};

fn unsupported(reason: String) -> Error {
    Error::Unsupported {
        backend: "rowops",
        reason,
    }
}

/// The row op `expr` is (the library expression of its own shape), if any.
fn identify(expr: &Expr) -> Option<RowOp> {
    let extent = |name: &str| expr.var_named(name).map(|v| expr.var(v).extent);
    let n = extent("i")?;
    let is = |e: Result<Expr>| e.is_ok_and(|e| e == *expr);
    match extent("m") {
        Some(m) => {
            if is(library::rms_norm(m, n)) {
                return Some(RowOp::RmsNorm { d: n });
            }
            // The row stride is the read's first stride.
            let stride = match expr.nodes.first().map(|n| &n.op) {
                Some(Op::Read {
                    access: Access::Strided { strides, .. },
                    ..
                }) => usize::try_from(*strides.first()?).ok()?,
                _ => return None,
            };
            is(library::softmax_rows(m, n, stride)).then_some(RowOp::Softmax)
        }
        None => [
            (RowOp::AddInPlace, library::add(n)),
            (RowOp::SiluMul, library::silu_mul(n)),
            (RowOp::ExpShifted, library::exp_shifted(n)),
        ]
        .into_iter()
        .find_map(|(op, e)| is(e).then_some(op)),
    }
}

impl RowOpDesc {
    /// The expression of one call over `rows` rows of `len` values, and the schedule this
    /// description's code follows (module doc): [`crate::interp::run`] under it gives the
    /// kernel's bits. `RmsNorm { d }` takes `len == d`; the element-wise ops see the
    /// `rows * len` values as one run, as their kernels do; `Softmax` takes contiguous rows
    /// (the stride of `library::softmax_rows` is a run-time argument: any stride lowers to
    /// the same kernel). [`RowOp::Rope`] and [`RowOp::Argmax`] have no expression
    /// ([`Error::Unsupported`]).
    pub fn schedule(&self, rows: usize, len: usize) -> Result<(Expr, Schedule)> {
        let n = rows.checked_mul(len).ok_or_else(|| Error::BadShape {
            op: "rowops",
            reason: format!("{rows} rows of {len} values overflow"),
        })?;
        let expr = match self.op {
            RowOp::RmsNorm { d } if len != d => {
                return Err(Error::BadShape {
                    op: "rowops",
                    reason: format!("rms_norm rows have d = {d} values, not {len}"),
                })
            }
            RowOp::RmsNorm { d } => library::rms_norm(rows, d)?,
            RowOp::Softmax => library::softmax_rows(rows, len, len)?,
            RowOp::AddInPlace => library::add(n)?,
            RowOp::SiluMul => library::silu_mul(n)?,
            RowOp::ExpShifted => library::exp_shifted(n)?,
            RowOp::Rope { .. } | RowOp::Argmax => return Err(no_expression(self.op)),
        };
        let schedule = self.schedule_of(&expr)?;
        schedule.validate(&expr)?;
        Ok((expr, schedule))
    }

    /// The schedule of every node that has loops, one line each (`%3 m/1 i/16:lanes i/1:vec
    /// @%5/1`), reads and constants left out: the family of the module doc for this op and
    /// ISA. The text does not depend on the extents.
    pub fn schedule_text(&self) -> Result<String> {
        let len = match self.op {
            RowOp::RmsNorm { d } => d,
            _ => LANES,
        };
        let (expr, schedule) = self.schedule(1, len)?;
        let lines: Vec<String> = (0..expr.nodes.len() as u32)
            .map(NodeId)
            .filter(|&id| !matches!(expr.node(id).op, Op::Read { .. } | Op::Const(_)))
            .map(|id| format!("{id} {}", schedule.node_text(&expr, id)))
            .collect();
        Ok(lines.join("\n"))
    }

    /// The family (module doc) placed on `expr`, an expression of this op.
    fn schedule_of(&self, expr: &Expr) -> Result<Schedule> {
        let (i, m) = (expr.var_named("i"), expr.var_named("m"));
        let i = i.ok_or_else(|| unsupported("a row expression has a variable `i`".into()))?;
        let portable = self.isa == Isa::Portable;
        let inner = if portable {
            Annot::Serial
        } else {
            Annot::Vectorize
        };
        // Element-wise loops over vectors of the ISA's width.
        let vector = if portable {
            vec![lp(i, 1, Annot::Serial)]
        } else {
            vec![lp(i, self.isa.lanes(), Annot::Serial), lp(i, 1, inner)]
        };
        // The lane-split sum, and the same chunks of 16 without the split for the nodes
        // fused into it.
        let lanes = vec![lp(i, LANES, Annot::Lanes), lp(i, 1, inner)];
        let chunks = vec![lp(i, LANES, Annot::Serial), lp(i, 1, inner)];
        let per_row = |rest: &[Loop]| -> Result<Vec<Loop>> {
            let m = m.ok_or_else(|| unsupported("a row expression has a variable `m`".into()))?;
            let mut l = vec![lp(m, 1, Annot::Serial)];
            l.extend_from_slice(rest);
            Ok(l)
        };
        let places: Vec<(u32, Vec<Loop>)> = match self.op {
            RowOp::RmsNorm { .. } => vec![
                (2, per_row(&chunks)?),
                (3, per_row(&lanes)?),
                (5, per_row(&[])?),
                (7, per_row(&[])?),
                (8, per_row(&[])?),
                (9, per_row(&vector)?),
                (10, per_row(&vector)?),
            ],
            RowOp::Softmax => vec![
                (
                    1,
                    per_row(&[lp(i, LANES, Annot::Serial), lp(i, 1, Annot::Serial)])?,
                ),
                (2, per_row(&chunks)?),
                (3, per_row(&chunks)?),
                (4, per_row(&lanes)?),
            ],
            RowOp::AddInPlace => vec![(2, vector)],
            RowOp::SiluMul => vec![(2, vector.clone()), (3, vector)],
            RowOp::ExpShifted => vec![(2, vector.clone()), (4, vector.clone()), (5, vector)],
            RowOp::Rope { .. } | RowOp::Argmax => return Err(no_expression(self.op)),
        };
        let mut schedule = Schedule::naive(expr);
        for (node, loops) in places {
            let id = NodeId(node);
            let space = &expr
                .nodes
                .get(node as usize)
                .ok_or_else(|| unsupported(format!("no node {id} in the expression")))?
                .space;
            // Every placed node but the output runs inside its one consumer: an element-wise
            // node at the consumer's point (all its loops), a reduction once per row (the
            // loops over the variables it keeps: it must finish before the row goes on).
            let depth = loops.iter().take_while(|l| space.contains(&l.var)).count();
            let fusion = match expr.users(id).first() {
                Some(&into) if id != expr.output => Some(Fusion { into, depth }),
                _ => None,
            };
            schedule.nodes[node as usize] = NodeSchedule {
                loops,
                fusion,
                packs: Vec::new(),
            };
        }
        Ok(schedule)
    }

    /// Lowers a schedule of one of the row expressions of [`crate::ir::library`]
    /// (`rms_norm`, `add`, `silu_mul`, `exp_shifted`, `softmax_rows`) to the description of
    /// the kernel that computes it on `isa`. Accepts the family in the module doc; anything
    /// else is [`Error::Unsupported`] naming the first node that differs and the loops the
    /// generator emits there (an invalid schedule is the error of
    /// [`Schedule::validate`]). The extents, `eps`, `shift`, `scale` and the softmax stride
    /// are run-time arguments of the kernel, not part of the description.
    pub fn from_schedule(expr: &Expr, schedule: &Schedule, isa: Isa) -> Result<RowOpDesc> {
        schedule.validate(expr)?;
        let op = identify(expr).ok_or_else(|| {
            unsupported(
                "the expression is none of ir::library::{rms_norm, add, silu_mul, exp_shifted, softmax_rows}"
                    .into(),
            )
        })?;
        let desc = RowOpDesc { op, isa };
        let want = desc.schedule_of(expr)?;
        if let Some(id) = first_unlike(schedule, &want) {
            return Err(unsupported(format!(
                "node {id}: the {} generator for {isa} emits `{}` here, not `{}` (the loop family is in jit::rowops_schedule)",
                op.name(),
                want.node_text(expr, id),
                schedule.node_text(expr, id)
            )));
        }
        Ok(desc)
    }
}

fn no_expression(op: RowOp) -> Error {
    unsupported(format!(
        "{} has no IR expression (the IR has no select and no index-valued reduction), so it is not lowered from a schedule",
        op.name()
    ))
}

impl RowKernel {
    /// Lowers `schedule` of `expr` ([`RowOpDesc::from_schedule`]) and compiles the kernel for
    /// `isa`; its results equal [`crate::interp::run`] of `expr` under `schedule` bit for bit.
    pub fn compile_schedule(expr: &Expr, schedule: &Schedule, isa: Isa) -> Result<RowKernel> {
        RowKernel::compile(&RowOpDesc::from_schedule(expr, schedule, isa)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_forms_are_the_printed_ones() {
        let text = |op, isa| RowOpDesc { op, isa }.schedule_text().unwrap();
        assert_eq!(
            text(RowOp::RmsNorm { d: 40 }, Isa::Avx512),
            "%2 m/1 i/16 i/1:vec @%3/3\n\
             %3 m/1 i/16:lanes i/1:vec @%5/1\n\
             %5 m/1 @%7/1\n\
             %7 m/1 @%8/1\n\
             %8 m/1 @%9/1\n\
             %9 m/1 i/16 i/1:vec @%10/3\n\
             %10 m/1 i/16 i/1:vec"
        );
        assert_eq!(
            text(RowOp::Softmax, Isa::Avx2),
            "%1 m/1 i/16 i/1 @%2/1\n\
             %2 m/1 i/16 i/1:vec @%3/3\n\
             %3 m/1 i/16 i/1:vec @%4/3\n\
             %4 m/1 i/16:lanes i/1:vec"
        );
        assert_eq!(
            text(RowOp::SiluMul, Isa::Avx2),
            "%2 i/8 i/1:vec @%3/2\n%3 i/8 i/1:vec"
        );
        assert_eq!(
            text(RowOp::ExpShifted, Isa::Portable),
            "%2 i/1 @%4/1\n%4 i/1 @%5/1\n%5 i/1"
        );
        assert!(matches!(
            RowOpDesc {
                op: RowOp::Argmax,
                isa: Isa::Avx2
            }
            .schedule_text(),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn expressions_are_recognized_by_shape() {
        let e = library::softmax_rows(3, 20, 24).unwrap();
        assert_eq!(identify(&e), Some(RowOp::Softmax));
        assert_eq!(
            identify(&library::rms_norm(2, 7).unwrap()),
            Some(RowOp::RmsNorm { d: 7 })
        );
        assert_eq!(identify(&library::softmax(2, 7).unwrap()), None);
        assert_eq!(identify(&library::matmul(2, 3, 4).unwrap()), None);
    }
}
