//! The interpreter: the reference semantics of an expression under any valid schedule.
//!
//! Each node is materialized in a dense buffer over its space, in topological order, by walking
//! its own loop nest exactly as scheduled (splits, tails, order). Fusion and backend annotations
//! do not change values and are ignored here. `F32` values round to f32 after every operation;
//! `I32` values are exact. `Reduce(Add, Mul(a, b))` over `F32` accumulates `acc = fma(a, b, acc)`
//! in visiting order, and visiting order of the reduced variables is always increasing (splits
//! keep order), so the result does not depend on the schedule. `F16` and `Bf16` inputs
//! ([`Buffer::F16`], [`Buffer::Bf16`]) are converted exactly to f32 as they are read.

use crate::error::{Error, Result};
use crate::ir::{
    Access, BinaryOp, Expr, NodeId, Op, QuantPart, ReduceOp, Scalar, Storage, UnaryOp,
};
use crate::quant::{BlockRef, QuantType};
use crate::schedule::Schedule;

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
    if out.len() < expr.out_len {
        return Err(Error::BufferLen {
            what: "output".into(),
            want: expr.out_len,
            got: out.len(),
        });
    }
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
                        UnaryOp::Exp => x.exp() as f64,
                        UnaryOp::Rsqrt => (1.0 / x.sqrt()) as f64,
                        UnaryOp::Silu => (x / (1.0 + (-x).exp())) as f64,
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
                    let acc = buf[me];
                    buf[me] = match (op, &expr.node(*a).op) {
                        (ReduceOp::Add, Op::Binary(BinaryOp::Mul, x, y)) if f32_node => {
                            (arg(*x) as f32).mul_add(arg(*y) as f32, acc as f32) as f64
                        }
                        (ReduceOp::Add, _) => round(acc + arg(*a)),
                        (ReduceOp::Max, _) => acc.max(arg(*a)),
                    };
                }
            }
        };
        let loops = &schedule.node(NodeId(i as u32)).loops;
        let mut point = vec![0usize; n_vars];
        let mut chunk: Vec<(usize, usize)> = expr.vars.iter().map(|v| (0, v.extent)).collect();
        walk(loops, 0, &mut point, &mut chunk, &mut visit);
        vals.push(buf);
    }
    let o = expr.output.0 as usize;
    let space = &expr.node(expr.output).space;
    let mut point = vec![0usize; n_vars];
    let total = sizes[o];
    for (flat, &val) in vals[o].iter().enumerate().take(total) {
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
