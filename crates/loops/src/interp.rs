//! The interpreter: the reference semantics of an expression under any valid schedule.
//!
//! Each node is materialized in a dense buffer over its space, in topological order, by walking
//! its own loop nest exactly as scheduled (splits, tails, order). Fusion and backend annotations
//! do not change values and are ignored here, except the lane split ([`Annot::Lanes`]), which
//! is part of the semantics. `F32` values round to f32 after every operation; `I32` values are
//! exact. `Reduce(Add, Mul(a, b))` over `F32` accumulates `acc = fma(a, b, acc)` in visiting
//! order, and visiting order of the reduced variables is always increasing (splits keep order),
//! so the result does not depend on the schedule. A lane-split reduction keeps 16 such
//! accumulators per output (element `i` of the split variable into lane `i mod 16`) and folds
//! them with [`reduce16`] at the end (see [`crate::schedule`]). `Reduce(Max)` keeps the first
//! of equal values and never takes a NaN (`if v > acc { acc = v }`, from `-inf`). The unary
//! ops are those of [`UnaryOp`]: `Exp` is [`exp_clamped`], `Rsqrt` is `1 / sqrt(x)` rounded
//! twice. `F16` and `Bf16` inputs ([`Buffer::F16`], [`Buffer::Bf16`]) are converted exactly to
//! f32 as they are read.

use crate::error::{Error, Result};
use crate::ir::{
    Access, BinaryOp, Expr, NodeId, Op, QuantPart, ReduceOp, Scalar, Storage, UnaryOp,
};
use crate::kernel::portable::{exp_clamped, reduce16};
use crate::quant::{BlockRef, QuantType};
use crate::schedule::{Annot, Schedule, LANES};

/// An input buffer handed to the interpreter.
#[derive(Clone, Copy, Debug)]
pub enum Buffer<'a> {
    /// An `F32` input.
    F32(&'a [f32]),
    /// An `F16` input (values convert exactly to f32 when read).
    F16(&'a [half::f16]),
    /// A `Bf16` input (values convert exactly to f32 when read).
    Bf16(&'a [half::bf16]),
    /// A quantized input: raw blocks.
    Quant(&'a [u8]),
}

impl Buffer<'_> {
    /// What the buffer holds, for errors.
    fn storage_name(&self) -> &'static str {
        match self {
            Buffer::F32(_) => "f32",
            Buffer::F16(_) => "f16",
            Buffer::Bf16(_) => "bf16",
            Buffer::Quant(_) => "quantized blocks",
        }
    }
}

/// Evaluates `expr` under `schedule` and writes the output view of `out`.
pub fn run(expr: &Expr, schedule: &Schedule, inputs: &[Buffer<'_>], out: &mut [f32]) -> Result<()> {
    check_inputs(expr, schedule, inputs)?;
    if out.len() < expr.out_len {
        return Err(Error::BufferLen {
            what: "output".into(),
            want: expr.out_len,
            got: out.len(),
        });
    }
    let vals = eval(expr, schedule, inputs);
    let n_vars = expr.vars.len();
    let o = expr.output.0 as usize;
    let space = &expr.node(expr.output).space;
    let mut point = vec![0usize; n_vars];
    for (flat, &val) in vals[o].iter().enumerate() {
        // Unflatten row-major over the output space.
        let mut rem = flat;
        for v in space.iter().rev() {
            let e = expr.var(*v).extent;
            point[v.0 as usize] = rem % e;
            rem /= e;
        }
        let pos = expr.out_offset as isize
            + space
                .iter()
                .zip(&expr.out_strides)
                .map(|(v, s)| s * point[v.0 as usize] as isize)
                .sum::<isize>();
        out[pos as usize] = val as f32;
    }
    Ok(())
}

/// Evaluates `expr` under `schedule` and returns every node's values, dense and row-major
/// over the node's space ([`crate::ir::Node::space`]; one value for an empty space), as f32
/// (`I32` nodes converted). For kernels with more than one result: the softmax row kernel
/// writes both the numerators (an inner node) and the row sums (the output).
pub fn run_nodes(expr: &Expr, schedule: &Schedule, inputs: &[Buffer<'_>]) -> Result<Vec<Vec<f32>>> {
    check_inputs(expr, schedule, inputs)?;
    Ok(eval(expr, schedule, inputs)
        .into_iter()
        .map(|v| v.into_iter().map(|x| x as f32).collect())
        .collect())
}

/// Verifies the expression and the schedule and checks the inputs against the expression.
fn check_inputs(expr: &Expr, schedule: &Schedule, inputs: &[Buffer<'_>]) -> Result<()> {
    expr.verify()?;
    schedule.validate(expr)?;
    if inputs.len() != expr.inputs.len() {
        return Err(Error::BufferLen {
            what: "inputs".into(),
            want: expr.inputs.len(),
            got: inputs.len(),
        });
    }
    for (inp, buf) in expr.inputs.iter().zip(inputs) {
        let float_len = match (inp.storage, buf) {
            (Storage::F32, Buffer::F32(b)) => Some(b.len()),
            (Storage::F16, Buffer::F16(b)) => Some(b.len()),
            (Storage::Bf16, Buffer::Bf16(b)) => Some(b.len()),
            _ => None,
        };
        match (inp.storage, buf) {
            _ if float_len.is_some_and(|len| len >= inp.len) => {}
            (Storage::Quant(q), Buffer::Quant(b)) if b.len() >= inp.len * q.block_bytes() => {}
            _ if float_len.is_some() => {
                return Err(Error::BufferLen {
                    what: format!("input {:?}", inp.name),
                    want: inp.len,
                    got: float_len.unwrap_or(0),
                })
            }
            (Storage::Quant(q), Buffer::Quant(b)) => {
                return Err(Error::BufferLen {
                    what: format!("input {:?} bytes", inp.name),
                    want: inp.len * q.block_bytes(),
                    got: b.len(),
                })
            }
            (s, _) => {
                return Err(Error::InputType {
                    name: inp.name.clone(),
                    want: s.to_string(),
                    got: buf.storage_name().into(),
                })
            }
        }
    }
    Ok(())
}

/// Every node's values (dense over its space, f32 values held as f64), once `check_inputs`
/// has passed.
fn eval(expr: &Expr, schedule: &Schedule, inputs: &[Buffer<'_>]) -> Vec<Vec<f64>> {
    let n_vars = expr.vars.len();
    // Dense row-major strides of each node's buffer, per variable (0 when not in its space).
    let strides: Vec<Vec<usize>> = expr
        .nodes
        .iter()
        .map(|n| {
            let mut st = vec![0usize; n_vars];
            let mut acc = 1;
            for v in n.space.iter().rev() {
                st[v.0 as usize] = acc;
                acc *= expr.var(*v).extent;
            }
            st
        })
        .collect();
    let sizes: Vec<usize> = expr
        .nodes
        .iter()
        .map(|n| n.space.iter().map(|v| expr.var(*v).extent).product())
        .collect();
    let mut vals: Vec<Vec<f64>> = Vec::with_capacity(expr.nodes.len());
    for (i, node) in expr.nodes.iter().enumerate() {
        let init = match node.op {
            Op::Reduce {
                op: ReduceOp::Max, ..
            } => f64::NEG_INFINITY,
            _ => 0.0,
        };
        let mut buf = vec![init; sizes[i]];
        let loops = &schedule.node(NodeId(i as u32)).loops;
        // A lane split (validated: an Add reduction) keeps `LANES` accumulators per output,
        // `acc[me * LANES + lane]`, in `lanes`; other reductions accumulate in `buf` itself.
        let lane_var = loops
            .iter()
            .find(|l| l.annot == Annot::Lanes)
            .map(|l| l.var.0 as usize);
        let n_lane_accs = lane_var.map_or(0, |_| sizes[i] * LANES);
        let mut lanes = vec![0f64; n_lane_accs];
        let at = |st: &[usize], p: &[usize]| st.iter().zip(p).map(|(a, b)| a * b).sum::<usize>();
        let f32_node = node.scalar == Scalar::F32;
        let round = |x: f64| if f32_node { x as f32 as f64 } else { x };
        let mut visit = |p: &[usize]| {
            let me = at(&strides[i], p);
            let arg = |a: NodeId| vals[a.0 as usize][at(&strides[a.0 as usize], p)];
            match &node.op {
                Op::Read {
                    input,
                    index,
                    access,
                } => {
                    buf[me] = read(
                        expr,
                        inputs[input.0 as usize],
                        index,
                        access,
                        p,
                        input.0 as usize,
                    )
                }
                Op::Unary(op, a) => {
                    let x = arg(*a) as f32;
                    buf[me] = match op {
                        UnaryOp::Neg if !f32_node => -arg(*a),
                        UnaryOp::Neg => (-x) as f64,
                        UnaryOp::Exp => exp_clamped(x) as f64,
                        UnaryOp::Rsqrt => (1.0 / x.sqrt()) as f64,
                        UnaryOp::Silu => (x / (1.0 + exp_clamped(-x))) as f64,
                    }
                }
                Op::Binary(op, a, b) => {
                    let (x, y) = (arg(*a), arg(*b));
                    buf[me] = if f32_node {
                        let (x, y) = (x as f32, y as f32);
                        (match op {
                            BinaryOp::Add => x + y,
                            BinaryOp::Sub => x - y,
                            BinaryOp::Mul => x * y,
                            BinaryOp::Div => x / y,
                            BinaryOp::Max => x.max(y),
                        }) as f64
                    } else {
                        match op {
                            BinaryOp::Add => x + y,
                            BinaryOp::Sub => x - y,
                            BinaryOp::Mul => x * y,
                            BinaryOp::Div => x / y,
                            BinaryOp::Max => x.max(y),
                        }
                    };
                }
                Op::ToF32(a) => buf[me] = arg(*a) as f32 as f64,
                Op::Const(bits) => buf[me] = f32::from_bits(*bits) as f64,
                Op::Reduce { op, arg: a, .. } => {
                    let slot = match lane_var {
                        Some(v) => &mut lanes[me * LANES + p[v] % LANES],
                        None => &mut buf[me],
                    };
                    let acc = *slot;
                    *slot = match (op, &expr.node(*a).op) {
                        (ReduceOp::Add, Op::Binary(BinaryOp::Mul, x, y)) if f32_node => {
                            (arg(*x) as f32).mul_add(arg(*y) as f32, acc as f32) as f64
                        }
                        (ReduceOp::Add, _) => round(acc + arg(*a)),
                        // The first of equal values stays; NaN never compares greater.
                        (ReduceOp::Max, _) => {
                            let v = arg(*a);
                            if v > acc {
                                v
                            } else {
                                acc
                            }
                        }
                    };
                }
            }
        };
        let mut point = vec![0usize; n_vars];
        let mut chunk: Vec<(usize, usize)> = expr.vars.iter().map(|v| (0, v.extent)).collect();
        walk(loops, 0, &mut point, &mut chunk, &mut visit);
        if lane_var.is_some() {
            for (out, acc) in buf.iter_mut().zip(lanes.chunks_exact(LANES)) {
                *out = if f32_node {
                    let v: [f32; LANES] = std::array::from_fn(|l| acc[l] as f32);
                    reduce16(&v) as f64
                } else {
                    // Exact integers: any fold gives the same sum.
                    acc.iter().sum()
                };
            }
        }
        vals.push(buf);
    }
    vals
}

fn walk(
    loops: &[crate::schedule::Loop],
    level: usize,
    point: &mut [usize],
    chunk: &mut [(usize, usize)],
    visit: &mut dyn FnMut(&[usize]),
) {
    let Some(l) = loops.get(level) else {
        visit(point);
        return;
    };
    let v = l.var.0 as usize;
    let (base, len) = chunk[v];
    let mut start = base;
    while start < base + len {
        let sub = l.step.min(base + len - start);
        chunk[v] = (start, sub);
        point[v] = start;
        walk(loops, level + 1, point, chunk, visit);
        start += l.step;
    }
    chunk[v] = (base, len);
}

fn read(
    expr: &Expr,
    buf: Buffer<'_>,
    index: &[crate::ir::VarId],
    access: &Access,
    p: &[usize],
    _input: usize,
) -> f64 {
    let idx = |j: usize| p[index[j].0 as usize];
    let pos = |offset: usize, strides: &[isize]| {
        (offset as isize
            + strides
                .iter()
                .enumerate()
                .map(|(j, s)| s * idx(j) as isize)
                .sum::<isize>()) as usize
    };
    match (access, buf) {
        (Access::Strided { offset, strides }, Buffer::F32(b)) => b[pos(*offset, strides)] as f64,
        (Access::Strided { offset, strides }, Buffer::F16(b)) => {
            b[pos(*offset, strides)].to_f32() as f64
        }
        (Access::Strided { offset, strides }, Buffer::Bf16(b)) => {
            b[pos(*offset, strides)].to_f32() as f64
        }
        (
            Access::Quant {
                part,
                row_stride_blocks,
            },
            Buffer::Quant(b),
        ) => {
            let ty = match expr.inputs[_input].storage {
                Storage::Quant(q) => q,
                _ => QuantType::Q8Act,
            };
            let row = idx(0) * row_stride_blocks;
            match part {
                QuantPart::Value => {
                    let col = idx(1);
                    BlockRef::at(ty, b, row + col / 32).value(col % 32) as f64
                }
                QuantPart::Code => BlockRef::at(ty, b, row + idx(1)).code(idx(2)) as f64,
                QuantPart::Scale => BlockRef::at(ty, b, row + idx(1)).scale() as f64,
                QuantPart::Min => BlockRef::at(ty, b, row + idx(1)).min() as f64,
            }
        }
        _ => unreachable!("storage checked against the access by Expr::verify and run"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::library::{matmul, matmul_strided};

    fn naive(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f32;
                for p in 0..k {
                    acc = a[i * k + p].mul_add(b[p * n + j], acc);
                }
                c[i * n + j] = acc;
            }
        }
        c
    }

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) as f32 / 65536.0
                    - 0.5
            })
            .collect()
    }

    #[test]
    fn matmul_matches_naive_rust_under_schedules() {
        let (m, n, k) = (7, 13, 9);
        let e = matmul(m, n, k).unwrap();
        let (a, b) = (data(m * k, 1), data(k * n, 2));
        let want = naive(&a, &b, m, n, k);
        for text in [
            "m/1 n/1 k/1",
            "k/1 n/1 m/1",
            "n/4 m/3 k/2 n/1 m/1 k/1",
            "k/4 n/8 m/1 k/1 n/1:vec",
        ] {
            let s = Schedule::naive(&e)
                .with_node_text(&e, NodeId(3), text)
                .unwrap();
            let mut c = vec![0f32; m * n];
            run(&e, &s, &[Buffer::F32(&a), Buffer::F32(&b)], &mut c).unwrap();
            assert_eq!(c, want, "schedule {text}");
        }
    }

    #[test]
    fn transposed_view_reads_columns() {
        let (m, n, k) = (3, 4, 5);
        // A stored as [k, m] (A^T row-major): A[i, p] at p * m + i.
        let e = matmul_strided(m, n, k, 1, m, n).unwrap();
        let at = data(m * k, 3);
        let b = data(k * n, 4);
        let a: Vec<f32> = (0..m * k).map(|x| at[(x % k) * m + x / k]).collect();
        let mut c = vec![0f32; m * n];
        run(
            &e,
            &Schedule::naive(&e),
            &[Buffer::F32(&at), Buffer::F32(&b)],
            &mut c,
        )
        .unwrap();
        assert_eq!(c, naive(&a, &b, m, n, k));
    }

    #[test]
    fn matmul_wt_matches_naive_rust_for_every_weight_type() {
        use crate::ir::{library::matmul_wt, FloatType};
        let (m, n, k) = (3, 5, 7);
        let x = data(m * k, 5);
        let w = data(n * k, 6);
        let f16s: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
        let bf16s: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
        for ty in [FloatType::F32, FloatType::F16, FloatType::Bf16] {
            let (buf, wf): (Buffer<'_>, Vec<f32>) = match ty {
                FloatType::F32 => (Buffer::F32(&w), w.clone()),
                FloatType::F16 => (
                    Buffer::F16(&f16s),
                    f16s.iter().map(|v| v.to_f32()).collect(),
                ),
                FloatType::Bf16 => (
                    Buffer::Bf16(&bf16s),
                    bf16s.iter().map(|v| v.to_f32()).collect(),
                ),
            };
            // w is n x k: the naive product against its transpose.
            let wt: Vec<f32> = (0..k * n).map(|i| wf[(i % n) * k + i / n]).collect();
            let want = naive(&x, &wt, m, n, k);
            let e = matmul_wt(ty, m, n, k).unwrap();
            for text in ["m/1 n/1 k/1", "n/16 m/2 k/1 m/1:reg n/1:vec"] {
                let s = Schedule::naive(&e)
                    .with_node_text(&e, NodeId(3), text)
                    .unwrap();
                let mut c = vec![0f32; m * n];
                run(&e, &s, &[Buffer::F32(&x), buf], &mut c).unwrap();
                assert_eq!(c, want, "{ty} under {text}");
            }
            // The wrong buffer type, or too few weights, is an error.
            let wrong = if ty == FloatType::F32 {
                Buffer::F16(&f16s)
            } else {
                Buffer::F32(&w)
            };
            let mut c = vec![0f32; m * n];
            let err = run(&e, &Schedule::naive(&e), &[Buffer::F32(&x), wrong], &mut c);
            assert!(matches!(err, Err(Error::InputType { .. })), "{err:?}");
            let short = Buffer::Bf16(&bf16s[1..]);
            if ty == FloatType::Bf16 {
                let err = run(&e, &Schedule::naive(&e), &[Buffer::F32(&x), short], &mut c);
                assert!(matches!(err, Err(Error::BufferLen { .. })), "{err:?}");
            }
        }
    }

    #[test]
    fn lane_split_sums_are_dot16() {
        use crate::kernel::portable::{dot16, reduce16};
        for k in [1, 15, 16, 17, 40, 100] {
            let e = matmul(1, 1, k).unwrap();
            let (a, b) = (data(k, 7), data(k, 8));
            for text in ["m/1 n/1 k/16:lanes k/1", "k/16:lanes m/1 n/1 k/1:vec"] {
                let s = Schedule::naive(&e)
                    .with_node_text(&e, NodeId(3), text)
                    .unwrap();
                let mut c = [0f32];
                run(&e, &s, &[Buffer::F32(&a), Buffer::F32(&b)], &mut c).unwrap();
                assert_eq!(c[0].to_bits(), dot16(&a, &b).to_bits(), "k={k} {text}");
            }
            // A plain sum: lane l adds the elements l, l + 16, ... in order.
            let mut bld = crate::ir::Builder::new();
            let i = bld.var("i", k);
            let x = bld.input("x", Storage::F32, k);
            let r = bld.read(x, &[i], 0, &[1]);
            let sum = bld.reduce(ReduceOp::Add, r, &[]);
            let e = bld.finish(sum, 0, &[], 1).unwrap();
            let s = Schedule::naive(&e)
                .with_node_text(&e, NodeId(1), "i/16:lanes i/1")
                .unwrap();
            let mut lanes = [0f32; 16];
            for (j, v) in a.iter().enumerate() {
                lanes[j % 16] += v;
            }
            let mut c = [0f32];
            run(&e, &s, &[Buffer::F32(&a)], &mut c).unwrap();
            assert_eq!(c[0].to_bits(), reduce16(&lanes).to_bits(), "sum k={k}");
        }
    }

    #[test]
    fn lane_split_integer_sums_are_exact() {
        use crate::ir::library::qmatmul;
        use crate::quant::{quantize_ggml, quantize_q8act, QuantType};
        let (m, n, k) = (2, 3, 64);
        let w = quantize_ggml(QuantType::Q4_0, &data(n * k, 9));
        let mut x = vec![0u8; m * k / 32 * 48];
        quantize_q8act(&data(m * k, 10), k, &mut x);
        let e = qmatmul(QuantType::Q4_0, m, n, k).unwrap();
        let inputs = [Buffer::Quant(&w), Buffer::Quant(&x)];
        let mut want = vec![0f32; m * n];
        run(&e, &Schedule::naive(&e), &inputs, &mut want).unwrap();
        let s = Schedule::naive(&e)
            .with_node_text(&e, NodeId(3), "m/1 n/1 kb/1 kl/16:lanes kl/1")
            .unwrap();
        let mut got = vec![0f32; m * n];
        run(&e, &s, &inputs, &mut got).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn exp_is_the_polynomial_within_three_ulp() {
        let mut b = crate::ir::Builder::new();
        let xs: Vec<f32> = (0..=35_000)
            .map(|j| -87.0 + j as f32 * 0.005)
            .chain([-1e-30, 0.0, -0.0, 1e-7, -90.0, -87.5, 88.5, 100.0])
            .chain([f32::NEG_INFINITY, f32::INFINITY, f32::NAN])
            .collect();
        let i = b.var("i", xs.len());
        let x = b.input("x", Storage::F32, xs.len());
        let r = b.read(x, &[i], 0, &[1]);
        let ex = b.unary(UnaryOp::Exp, r);
        let e = b.finish(ex, 0, &[1], xs.len()).unwrap();
        let mut y = vec![0f32; xs.len()];
        run(&e, &Schedule::naive(&e), &[Buffer::F32(&xs)], &mut y).unwrap();
        let exp88 = exp_clamped(88.0);
        for (&v, &got) in xs.iter().zip(&y) {
            let want = match v {
                _ if v.is_nan() => {
                    assert!(got.is_nan(), "exp(NaN) = {got}");
                    continue;
                }
                _ if v < -87.0 => 0.0,
                _ if v > 88.0 => exp88 as f64,
                _ => (v as f64).exp(),
            };
            let f = want as f32;
            let ulp = (f32::from_bits(f.to_bits() + 1) - f) as f64;
            assert!(
                (got as f64 - want).abs() <= 3.0 * ulp,
                "exp({v}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn short_buffers_are_errors() {
        let e = matmul(3, 3, 3).unwrap();
        let a = vec![0f32; 8];
        let mut c = vec![0f32; 9];
        let err = run(
            &e,
            &Schedule::naive(&e),
            &[Buffer::F32(&a), Buffer::F32(&a)],
            &mut c,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::BufferLen {
                    want: 9,
                    got: 8,
                    ..
                }
            ),
            "{err}"
        );
    }
}
