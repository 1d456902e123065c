//! Schedules: how each node's iteration space is walked, as typed data edited by pure functions.
//!
//! A node's schedule is a list of loops, outer to inner. A loop walks one variable in steps of
//! `step` within the chunk its enclosing loop over the same variable hands it (the whole extent
//! for the outermost); so a split of `n` is two loops `n/32` then `n/1`. A chunk that `step`
//! does not divide leaves a partial last iteration, the *tail*: allowed with [`Tail::Masked`]
//! (clamped bounds, masked vector lanes), an error with [`Tail::Exact`]. Every variable of the
//! node's iteration space must be walked down to step 1, so every point is visited once.
//! Annotations tell backends how to run a loop; they never change the result (reductions are
//! always accumulated in increasing order of the reduced variables, see [`crate::ir`]), with
//! one exception that is part of the semantics: the lane split.
//!
//! **Lane-split reductions** ([`Annot::Lanes`], text `i/16:lanes`). On the outermost loop over
//! a variable `i` that an `Add` reduction sums over, with step [`LANES`] (16), it says: the
//! reduction is carried in 16 partial accumulators per output, element `i` going to lane
//! `i mod 16` (its offset in its chunk of 16), each lane starting at 0 and accumulating its
//! elements in visiting order (so in increasing `i`; `Reduce(Add, Mul(a, b))` still one fused
//! multiply-add per point); after the whole nest, the 16 lanes are folded exactly as
//! [`crate::kernel::portable::reduce16`] does: `a[l] = v[l] + v[l + 8]`, `b[l] = a[l] + a[l + 4]`,
//! then `(b0 + b2) + (b1 + b3)`. Lanes no element reaches stay 0. It is the only annotation that
//! changes a reduction's order (and so, in general, its bits), which is why it is explicit:
//! vector code that sums 16 lanes at once (`i/16:lanes i/1:vec`) computes exactly this, and
//! vectorizing a reduced variable without an enclosing lane split is an error. The split is
//! refused on a variable the node does not reduce, on a `Max` reduction, with any step but
//! 16, below another loop over the same variable, or twice in one node. For `I32` nodes the
//! lanes are exact and so is their fold.
//!
//! Edits ([`Schedule::split`], [`Schedule::reorder`], [`Schedule::annotate`], [`Schedule::fuse`])
//! return a new schedule and never mutate; [`Schedule::validate`] says what is wrong with one.

use crate::error::{Error, Result};
use crate::ir::{Expr, InputId, NodeId, Op, ReduceOp, VarId};
use std::fmt;

/// What happens when a loop's step does not divide its chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tail {
    /// The step must divide every chunk the loop sees (checked by `validate`).
    Exact,
    /// The last iteration runs a partial chunk (clamped loops, masked vector lanes).
    Masked,
}

/// How a backend runs a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Annot {
    /// A plain loop.
    Serial,
    /// Unrolled by this factor (1..=64).
    Unroll(u8),
    /// Iterations run in the lanes of vector registers (step 1; over a reduced variable only
    /// inside that variable's [`Annot::Lanes`] loop, whose lanes it then computes).
    Vectorize,
    /// Iterations are split among threads (outermost loop only, not a reduced variable).
    Parallel,
    /// Fully unrolled into registers (accumulators held across inner reduction loops).
    RegisterTile,
    /// A lane-split reduction (module doc): on the outermost loop over a variable an `Add`
    /// reduction sums, with step [`LANES`]; element `i` accumulates into lane `i mod 16`, and
    /// the lanes are folded as [`crate::kernel::portable::reduce16`]. Inner loops over the
    /// variable may then be vectorized.
    Lanes,
}

/// Lanes of a lane-split reduction ([`Annot::Lanes`]): the step of its loop and the width of
/// the [`crate::kernel::portable::reduce16`] fold.
pub const LANES: usize = 16;

/// One loop of a node's nest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Loop {
    /// The variable walked.
    pub var: VarId,
    /// Step within the enclosing chunk.
    pub step: usize,
    /// Tail policy.
    pub tail: Tail,
    /// Backend hint.
    pub annot: Annot,
}

/// A node computed inside another node's loop nest, sharing its first `depth` loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fusion {
    /// The node whose loops this one shares.
    pub into: NodeId,
    /// Number of shared outer loops.
    pub depth: usize,
}

/// Operand packing: at the start of each iteration of the loop at depth `depth` (0 = once,
/// before all loops), the part of `input` the inner loops read is copied into a contiguous
/// scratch buffer in the order they read it (fewer TLB and cache-set conflicts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pack {
    /// The input packed.
    pub input: InputId,
    /// Number of enclosing loops.
    pub depth: usize,
}

/// The schedule of one node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct NodeSchedule {
    /// Loops, outer to inner.
    pub loops: Vec<Loop>,
    /// Fusion into another node, if any.
    pub fusion: Option<Fusion>,
    /// Operands packed, if any.
    pub packs: Vec<Pack>,
}

/// Schedules of all nodes of an expression (indexed by [`NodeId`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Schedule {
    /// One per node.
    pub nodes: Vec<NodeSchedule>,
}

impl Schedule {
    /// The naive schedule: each node walks its iteration space in order, step 1, no fusion.
    pub fn naive(expr: &Expr) -> Self {
        let nodes = (0..expr.nodes.len())
            .map(|i| NodeSchedule {
                loops: expr
                    .iter_space(NodeId(i as u32))
                    .into_iter()
                    .map(|var| Loop {
                        var,
                        step: 1,
                        tail: Tail::Exact,
                        annot: Annot::Serial,
                    })
                    .collect(),
                fusion: None,
                packs: Vec::new(),
            })
            .collect();
        Schedule { nodes }
    }

    /// The schedule of node `id`.
    pub fn node(&self, id: NodeId) -> &NodeSchedule {
        &self.nodes[id.0 as usize]
    }

    fn with_node(
        &self,
        id: NodeId,
        f: impl FnOnce(&mut NodeSchedule) -> Result<()>,
    ) -> Result<Schedule> {
        let mut s = self.clone();
        let ns = s.nodes.get_mut(id.0 as usize).ok_or(Error::ScheduleArity {
            got: id.0 as usize + 1,
            want: self.nodes.len(),
        })?;
        f(ns)?;
        Ok(s)
    }

    /// Splits loop `loop_idx` of `node` by `factor`: the loop becomes an outer loop with step
    /// `step * factor` and tail policy `tail`, around the original loop.
    pub fn split(
        &self,
        node: NodeId,
        loop_idx: usize,
        factor: usize,
        tail: Tail,
    ) -> Result<Schedule> {
        self.with_node(node, |ns| {
            let l = *ns
                .loops
                .get(loop_idx)
                .ok_or_else(|| bad_loop(node, loop_idx))?;
            if factor < 2 {
                return Err(Error::BadAnnotation {
                    node,
                    loop_idx,
                    var: format!("{:?}", l.var),
                    reason: format!("split factor {factor} must be at least 2"),
                });
            }
            let outer = Loop {
                var: l.var,
                step: l.step * factor,
                tail,
                annot: Annot::Serial,
            };
            ns.loops.insert(loop_idx, outer);
            Ok(())
        })
    }

    /// Swaps loops `a` and `b` of `node`.
    pub fn reorder(&self, node: NodeId, a: usize, b: usize) -> Result<Schedule> {
        self.with_node(node, |ns| {
            if a >= ns.loops.len() || b >= ns.loops.len() {
                return Err(bad_loop(node, a.max(b)));
            }
            ns.loops.swap(a, b);
            Ok(())
        })
    }

    /// Sets the annotation of loop `loop_idx` of `node`.
    pub fn annotate(&self, node: NodeId, loop_idx: usize, annot: Annot) -> Result<Schedule> {
        self.with_node(node, |ns| {
            ns.loops
                .get_mut(loop_idx)
                .ok_or_else(|| bad_loop(node, loop_idx))?
                .annot = annot;
            Ok(())
        })
    }

    /// Computes `node` inside `into`'s first `depth` loops (the caller makes the prefixes equal).
    pub fn fuse(&self, node: NodeId, into: NodeId, depth: usize) -> Result<Schedule> {
        self.with_node(node, |ns| {
            ns.fusion = Some(Fusion { into, depth });
            Ok(())
        })
    }

    /// Packs `input` at loop depth `depth` of `node`.
    pub fn pack(&self, node: NodeId, input: InputId, depth: usize) -> Result<Schedule> {
        self.with_node(node, |ns| {
            ns.packs.retain(|p| p.input != input);
            ns.packs.push(Pack { input, depth });
            Ok(())
        })
    }

    /// Checks the schedule against `expr`: every rule in the module doc, fusion prefixes and
    /// cycles. Errors name the node, the loop and the variable.
    pub fn validate(&self, expr: &Expr) -> Result<()> {
        expr.verify()?;
        if self.nodes.len() != expr.nodes.len() {
            return Err(Error::ScheduleArity {
                got: self.nodes.len(),
                want: expr.nodes.len(),
            });
        }
        for i in 0..self.nodes.len() {
            self.validate_node(expr, NodeId(i as u32))?;
        }
        // Fusion cycles first (a cycle is never a valid producer/consumer relation).
        for start in 0..self.nodes.len() {
            let mut seen = vec![NodeId(start as u32)];
            let mut cur = NodeId(start as u32);
            while let Some(f) = self.nodes.get(cur.0 as usize).and_then(|n| n.fusion) {
                if f.into == NodeId(start as u32) {
                    return Err(Error::FusionCycle { cycle: seen });
                }
                if seen.contains(&f.into) || f.into.0 as usize >= self.nodes.len() {
                    break;
                }
                seen.push(f.into);
                cur = f.into;
            }
        }
        for (i, ns) in self.nodes.iter().enumerate() {
            let node = NodeId(i as u32);
            let Some(f) = ns.fusion else { continue };
            let bad = |reason: String| Error::BadFusion {
                node,
                into: f.into,
                reason,
            };
            let Some(other) = self.nodes.get(f.into.0 as usize) else {
                return Err(bad("no such node".into()));
            };
            if f.into == node {
                return Err(Error::FusionCycle { cycle: vec![node] });
            }
            if !crate::ir::args(&expr.node(f.into).op).contains(&node) {
                return Err(bad(format!("{} does not use {node}", f.into)));
            }
            if f.depth > ns.loops.len() || f.depth > other.loops.len() {
                return Err(bad(format!("depth {} exceeds a loop nest", f.depth)));
            }
            for d in 0..f.depth {
                let (a, b) = (ns.loops[d], other.loops[d]);
                if a.var != b.var || a.step != b.step {
                    return Err(bad(format!(
                        "loop {d} differs ({}/{} vs {}/{})",
                        expr.var(a.var).name,
                        a.step,
                        expr.var(b.var).name,
                        b.step
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_node(&self, expr: &Expr, node: NodeId) -> Result<()> {
        let ns = &self.nodes[node.0 as usize];
        let space = expr.iter_space(node);
        let reduced = expr.reduced_vars(node);
        let name = |v: VarId| expr.var(v).name.clone();
        // Chunk sizes each variable's next loop may see.
        let mut chunks: Vec<(VarId, Vec<usize>, usize)> = space
            .iter()
            .map(|&v| (v, vec![expr.var(v).extent], usize::MAX))
            .collect();
        let mut n_vectorized = 0;
        // The variable of this node's lane split, once its loop has been seen.
        let mut lanes_var: Option<VarId> = None;
        let is_add_reduce = matches!(
            expr.node(node).op,
            Op::Reduce {
                op: ReduceOp::Add,
                ..
            }
        );
        for p in &ns.packs {
            if p.input.0 as usize >= expr.inputs.len() || p.depth > ns.loops.len() {
                return Err(Error::BadAnnotation {
                    node,
                    loop_idx: p.depth,
                    var: String::new(),
                    reason: format!(
                        "pack of input #{} at depth {} is out of range",
                        p.input.0, p.depth
                    ),
                });
            }
        }
        for (loop_idx, l) in ns.loops.iter().enumerate() {
            let Some(entry) = chunks.iter_mut().find(|(v, _, _)| *v == l.var) else {
                return Err(Error::UnknownVar {
                    node,
                    loop_idx,
                    var: if (l.var.0 as usize) < expr.vars.len() {
                        name(l.var)
                    } else {
                        format!("#{}", l.var.0)
                    },
                    space: space.iter().map(|&v| name(v)).collect(),
                });
            };
            // Whether an earlier loop already walks this variable (its chunks are not the
            // whole extent).
            let outermost = entry.2 == usize::MAX;
            if l.step == 0 || l.step >= entry.2 {
                return Err(Error::BadSplitOrder {
                    node,
                    loop_idx,
                    var: name(l.var),
                    step: l.step,
                    outer_step: entry.2,
                });
            }
            let mut next = Vec::new();
            for &c in &entry.1 {
                if c % l.step != 0 && c > 0 {
                    if l.tail == Tail::Exact {
                        return Err(Error::SplitNoTail {
                            node,
                            loop_idx,
                            var: name(l.var),
                            chunk: c,
                            step: l.step,
                        });
                    }
                    next.push(c % l.step);
                }
                if c >= l.step {
                    next.push(l.step);
                }
            }
            next.sort_unstable();
            next.dedup();
            entry.1 = next;
            entry.2 = l.step;
            let bad = |reason: &str| Error::BadAnnotation {
                node,
                loop_idx,
                var: name(l.var),
                reason: reason.to_string(),
            };
            match l.annot {
                Annot::Vectorize => {
                    n_vectorized += 1;
                    if l.step != 1 {
                        return Err(bad("a vectorized loop must have step 1"));
                    }
                    if reduced.contains(&l.var) && lanes_var != Some(l.var) {
                        return Err(bad(
                            "vectorizing a reduced variable would change the reduction order (split it into lanes first: `VAR/16:lanes VAR/1:vec`)",
                        ));
                    }
                    if n_vectorized > 1 {
                        return Err(bad("only one loop per node can be vectorized"));
                    }
                }
                Annot::Parallel => {
                    if loop_idx != 0 {
                        return Err(bad("only the outermost loop can be parallel"));
                    }
                    if reduced.contains(&l.var) {
                        return Err(bad(
                            "a parallel reduced variable would race on the accumulator",
                        ));
                    }
                }
                Annot::Unroll(u) if u == 0 || u > 64 => {
                    return Err(bad("unroll factor must be in 1..=64"))
                }
                Annot::RegisterTile if reduced.contains(&l.var) => {
                    return Err(bad(
                        "a register tile over a reduced variable would split the accumulator",
                    ))
                }
                Annot::Lanes => {
                    if !reduced.contains(&l.var) {
                        return Err(bad(
                            "a lane split applies to a variable the node reduces over, and this one is not",
                        ));
                    }
                    if !is_add_reduce {
                        return Err(bad(
                            "a lane split needs an Add reduction (its lanes are folded by a sum)",
                        ));
                    }
                    if l.step != LANES {
                        return Err(Error::BadAnnotation {
                            node,
                            loop_idx,
                            var: name(l.var),
                            reason: format!(
                                "a lane split has step {LANES} (its lanes are folded as reduce16), not {}",
                                l.step
                            ),
                        });
                    }
                    if !outermost {
                        return Err(bad(
                            "a lane split must be the outermost loop over its variable (element i goes to lane i mod 16)",
                        ));
                    }
                    if lanes_var.is_some() {
                        return Err(bad("only one loop per node can be split into lanes"));
                    }
                    lanes_var = Some(l.var);
                }
                _ => {}
            }
        }
        for (v, _, last_step) in &chunks {
            if *last_step != 1 {
                return Err(Error::MissingVar {
                    node,
                    var: name(*v),
                });
            }
        }
        Ok(())
    }

    /// Formats the schedule of one node as text (`m/6 n/32 k/1:u4 m/1:reg n/16:reg n/1:vec`).
    pub fn node_text(&self, expr: &Expr, node: NodeId) -> String {
        let ns = self.node(node);
        let mut parts: Vec<String> = ns
            .loops
            .iter()
            .map(|l| {
                let mut s = format!("{}/{}", expr.var(l.var).name, l.step);
                if l.tail == Tail::Exact && l.step > 1 {
                    s.push('!');
                }
                match l.annot {
                    Annot::Serial => {}
                    Annot::Unroll(u) => s.push_str(&format!(":u{u}")),
                    Annot::Vectorize => s.push_str(":vec"),
                    Annot::Parallel => s.push_str(":par"),
                    Annot::RegisterTile => s.push_str(":reg"),
                    Annot::Lanes => s.push_str(":lanes"),
                }
                s
            })
            .collect();
        if let Some(f) = ns.fusion {
            parts.push(format!("@{}/{}", f.into, f.depth));
        }
        for p in &ns.packs {
            parts.push(format!(
                "pack:{}@{}",
                expr.inputs[p.input.0 as usize].name, p.depth
            ));
        }
        parts.join(" ")
    }

    /// Parses one node's loops from [`Schedule::node_text`]'s format and sets them on `node`.
    pub fn with_node_text(&self, expr: &Expr, node: NodeId, text: &str) -> Result<Schedule> {
        let perr = |reason: String| Error::ParseSchedule {
            text: text.to_string(),
            reason,
        };
        let mut loops = Vec::new();
        let mut fusion = None;
        let mut packs = Vec::new();
        for tok in text.split_whitespace() {
            if let Some(p) = tok.strip_prefix("pack:") {
                let (name, depth) = p
                    .split_once('@')
                    .ok_or_else(|| perr(format!("pack {tok:?} is not pack:INPUT@DEPTH")))?;
                let input = expr
                    .inputs
                    .iter()
                    .position(|i| i.name == name)
                    .ok_or_else(|| perr(format!("unknown input {name:?}")))?;
                let depth = depth
                    .parse()
                    .map_err(|_| perr(format!("bad depth in {tok:?}")))?;
                packs.push(Pack {
                    input: InputId(input as u32),
                    depth,
                });
                continue;
            }
            if let Some(f) = tok.strip_prefix("@%") {
                let (into, depth) = f
                    .split_once('/')
                    .ok_or_else(|| perr(format!("fusion {tok:?} is not @%NODE/DEPTH")))?;
                let into = into
                    .parse()
                    .map_err(|_| perr(format!("bad node in {tok:?}")))?;
                let depth = depth
                    .parse()
                    .map_err(|_| perr(format!("bad depth in {tok:?}")))?;
                fusion = Some(Fusion {
                    into: NodeId(into),
                    depth,
                });
                continue;
            }
            let (body, annot) = match tok.split_once(':') {
                None => (tok, Annot::Serial),
                Some((b, a)) => (
                    b,
                    match a {
                        "vec" => Annot::Vectorize,
                        "par" => Annot::Parallel,
                        "reg" => Annot::RegisterTile,
                        "lanes" => Annot::Lanes,
                        u if u.starts_with('u') => Annot::Unroll(
                            u[1..]
                                .parse()
                                .map_err(|_| perr(format!("bad unroll {a:?}")))?,
                        ),
                        _ => {
                            return Err(perr(format!(
                                "unknown annotation {a:?} (vec, par, reg, lanes, uN)"
                            )))
                        }
                    },
                ),
            };
            let (body, tail) = match body.strip_suffix('!') {
                Some(b) => (b, Tail::Exact),
                None => (body, Tail::Masked),
            };
            let (var, step) = body
                .split_once('/')
                .ok_or_else(|| perr(format!("loop {tok:?} is not VAR/STEP")))?;
            let var = expr
                .vars
                .iter()
                .position(|v| v.name == var)
                .ok_or_else(|| perr(format!("unknown variable {var:?}")))?;
            let step = step
                .parse()
                .map_err(|_| perr(format!("bad step in {tok:?}")))?;
            loops.push(Loop {
                var: VarId(var as u32),
                step,
                tail,
                annot,
            });
        }
        self.with_node(node, |ns| {
            ns.loops = loops;
            ns.fusion = fusion;
            ns.packs = packs;
            Ok(())
        })
    }

    /// The loop tree of one node, one loop per line, indented.
    pub fn loop_tree(&self, expr: &Expr, node: NodeId) -> String {
        let mut out = String::new();
        for (depth, l) in self.node(node).loops.iter().enumerate() {
            let tail = if l.tail == Tail::Masked { "" } else { " exact" };
            let annot = match l.annot {
                Annot::Serial => String::new(),
                a => format!(" [{a:?}]"),
            };
            for p in self.node(node).packs.iter().filter(|p| p.depth == depth) {
                out.push_str(&format!(
                    "{:indent$}pack {}\n",
                    "",
                    expr.inputs[p.input.0 as usize].name,
                    indent = 2 * depth
                ));
            }
            out.push_str(&format!(
                "{:indent$}for {} step {}{tail}{annot}\n",
                "",
                expr.var(l.var).name,
                l.step,
                indent = 2 * depth
            ));
        }
        out.push_str(&format!(
            "{:indent$}{} = ...\n",
            "",
            node,
            indent = 2 * self.node(node).loops.len()
        ));
        out
    }
}

fn bad_loop(node: NodeId, loop_idx: usize) -> Error {
    Error::BadAnnotation {
        node,
        loop_idx,
        var: String::new(),
        reason: "no such loop".into(),
    }
}

impl fmt::Display for Tail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::library::matmul;

    #[test]
    fn split_reorder_are_pure_and_validate() {
        let e = matmul(10, 20, 7).unwrap();
        let s0 = Schedule::naive(&e);
        s0.validate(&e).unwrap();
        let c = NodeId(3);
        let s1 = s0.split(c, 1, 8, Tail::Masked).unwrap();
        assert_eq!(s0, Schedule::naive(&e), "edits do not mutate");
        s1.validate(&e).unwrap();
        assert_eq!(s1.node_text(&e, c), "m/1 n/8 n/1 k/1");
        let s2 = s1.reorder(c, 0, 3).unwrap();
        s2.validate(&e).unwrap();
        assert_eq!(s2.node_text(&e, c), "k/1 n/8 n/1 m/1");
    }

    #[test]
    fn split_without_tail_is_rejected() {
        let e = matmul(10, 20, 7).unwrap();
        let s = Schedule::naive(&e)
            .split(NodeId(3), 1, 8, Tail::Exact)
            .unwrap();
        let err = s.validate(&e).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SplitNoTail {
                    chunk: 20,
                    step: 8,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("does not divide"), "{err}");
    }

    #[test]
    fn unknown_and_missing_vars_are_rejected() {
        let e = matmul(4, 4, 4).unwrap();
        let s = Schedule::naive(&e);
        let err = s
            .with_node_text(&e, NodeId(0), "m/1 n/1 k/1")
            .unwrap()
            .validate(&e)
            .unwrap_err();
        assert!(matches!(err, Error::UnknownVar { .. }), "{err}");
        let err = s
            .with_node_text(&e, NodeId(3), "m/1 n/1")
            .unwrap()
            .validate(&e)
            .unwrap_err();
        assert!(matches!(err, Error::MissingVar { .. }), "{err}");
        let err = s.with_node_text(&e, NodeId(3), "m/1 n/1 q/1").unwrap_err();
        assert!(matches!(err, Error::ParseSchedule { .. }), "{err}");
    }

    #[test]
    fn bad_annotations_are_rejected() {
        let e = matmul(4, 4, 4).unwrap();
        let s = Schedule::naive(&e);
        for text in [
            "m/1 n/1 k/1:vec",
            "m/1 n/1:par k/1",
            "m/1 k/1:reg n/1",
            "m/1 n/2 n/2 k/1",
        ] {
            let err = s
                .with_node_text(&e, NodeId(3), text)
                .unwrap()
                .validate(&e)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::BadAnnotation { .. } | Error::BadSplitOrder { .. }
                ),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn fusion_cycles_and_bad_prefixes_are_rejected() {
        let e = matmul(4, 4, 4).unwrap();
        let s = Schedule::naive(&e);
        let cyc = s
            .fuse(NodeId(2), NodeId(3), 1)
            .unwrap()
            .fuse(NodeId(3), NodeId(2), 1)
            .unwrap();
        assert!(matches!(
            cyc.validate(&e).unwrap_err(),
            Error::FusionCycle { .. }
        ));
        let ok = s.fuse(NodeId(2), NodeId(3), 1).unwrap();
        ok.validate(&e).unwrap();
        let not_user = s.fuse(NodeId(0), NodeId(1), 1).unwrap();
        assert!(matches!(
            not_user.validate(&e).unwrap_err(),
            Error::BadFusion { .. }
        ));
        let bad_prefix = s
            .with_node_text(&e, NodeId(2), "n/1 m/1 k/1 @%3/1")
            .unwrap();
        assert!(matches!(
            bad_prefix.validate(&e).unwrap_err(),
            Error::BadFusion { .. }
        ));
    }

    #[test]
    fn lane_splits_validate_and_print() {
        let e = matmul(4, 4, 40).unwrap();
        let text = "m/1 n/1 k/16:lanes k/4:u4 k/1:vec";
        let s = Schedule::naive(&e)
            .with_node_text(&e, NodeId(3), text)
            .unwrap();
        s.validate(&e).unwrap();
        assert_eq!(s.node_text(&e, NodeId(3)), text);
        // Reordered past the kept variables, the split still applies (lane = k mod 16).
        let s = s.reorder(NodeId(3), 0, 2).unwrap();
        s.validate(&e).unwrap();
        // An exact split of 40 into 16s is refused like any other.
        let exact = Schedule::naive(&e)
            .with_node_text(&e, NodeId(3), "m/1 n/1 k/16!:lanes k/1")
            .unwrap();
        assert!(matches!(
            exact.validate(&e).unwrap_err(),
            Error::SplitNoTail { .. }
        ));
        // A vectorized reduced variable outside its lanes, or a second split, is refused.
        for text in [
            "m/1 k/16:lanes n/1:vec k/1:vec",
            "m/1 n/1 k/16:lanes k/1:lanes",
        ] {
            let err = Schedule::naive(&e)
                .with_node_text(&e, NodeId(3), text)
                .unwrap()
                .validate(&e)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::BadAnnotation { .. } | Error::BadSplitOrder { .. }
                ),
                "{text}: {err}"
            );
        }
    }

    #[test]
    fn text_round_trips() {
        let e = matmul(64, 64, 64).unwrap();
        let text = "n/32 k/16! m/4 k/1:u4 m/1:reg n/16:reg n/1:vec pack:b@2";
        let s = Schedule::naive(&e)
            .with_node_text(&e, NodeId(3), text)
            .unwrap();
        s.validate(&e).unwrap();
        assert_eq!(s.node_text(&e, NodeId(3)), text);
    }
}
