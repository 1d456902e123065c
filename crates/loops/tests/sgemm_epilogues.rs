//! The f32 matmul's fused epilogue (`t * scale`, `+ bias[n]`, `silu(t) * up[m, n]`,
//! `+ residual[m, n]`): extreme SiLU inputs, rows independent of M, operand checks, register
//! limits, and expressions the generator cannot emit. Random schedules and shapes with every
//! stage combination are in `jit_matches_interpreter.rs`.

use peregrine_loops::interp::{self, Buffer};
use peregrine_loops::ir::library::{matmul_epilogue, matmul_general};
use peregrine_loops::ir::{BinaryOp, Builder, ReduceOp, Storage, UnaryOp};
use peregrine_loops::jit::sgemm::matmul_shape;
use peregrine_loops::{Epilogue, EpilogueArgs, Error, Expr, Isa, SgemmDesc, SgemmKernel};

mod common;
use common::{assert_bits, guarded, isas, Rng};

/// Every combination of the four stages.
fn all_epilogues() -> impl Iterator<Item = Epilogue> {
    (0..16u32).map(|bits| Epilogue {
        scale: bits & 1 != 0,
        bias: bits & 2 != 0,
        silu_mul: bits & 4 != 0,
        residual: bits & 8 != 0,
    })
}

/// The epilogue's operands: `scale`, then `bias` (`n`), `up` and `residual` (`m x n`).
struct Operands {
    scale: f32,
    bias: Vec<f32>,
    up: Vec<f32>,
    residual: Vec<f32>,
}

impl Operands {
    fn random(m: usize, n: usize, rng: &mut Rng) -> Operands {
        Operands {
            scale: 0.125 + rng.f(1.0).abs(),
            bias: (0..n).map(|_| rng.f(2.0)).collect(),
            up: (0..m * n).map(|_| rng.f(2.0)).collect(),
            residual: (0..m * n).map(|_| rng.f(2.0)).collect(),
        }
    }

    fn args(&self, e: Epilogue) -> EpilogueArgs<'_> {
        EpilogueArgs {
            scale: e.scale.then_some(self.scale),
            bias: e.bias.then_some(self.bias.as_slice()),
            up: e.silu_mul.then_some(self.up.as_slice()),
            residual: e.residual.then_some(self.residual.as_slice()),
        }
    }
}

/// The interpreter's result for `desc` (its expression under its schedule).
fn interpret(desc: &SgemmDesc, a: &[f32], b: &[f32], args: &EpilogueArgs) -> Vec<f32> {
    let expr = desc.expr().unwrap();
    let sched = desc.schedule(&expr).unwrap();
    let scale = args.scale.map(|s| [s]);
    let mut inputs = vec![Buffer::F32(a), Buffer::F32(b)];
    inputs.extend(scale.as_ref().map(|s| Buffer::F32(&s[..])));
    inputs.extend(args.bias.map(Buffer::F32));
    inputs.extend(args.up.map(Buffer::F32));
    inputs.extend(args.residual.map(Buffer::F32));
    let mut want = vec![0f32; desc.m * desc.n];
    interp::run(&expr, &sched, &inputs, &mut want).unwrap();
    want
}

/// Runs `desc`'s kernel with every buffer ending at a guard page.
fn run_guarded(desc: &SgemmDesc, a: &[f32], b: &[f32], args: &EpilogueArgs) -> Vec<f32> {
    let kernel = SgemmKernel::compile(desc)
        .unwrap_or_else(|e| panic!("{desc:?} `{}`: {e}", desc.schedule_text()));
    let (ga, gb) = (guarded(a), guarded(b));
    let (bias, up, res) = (
        args.bias.map(guarded),
        args.up.map(guarded),
        args.residual.map(guarded),
    );
    let gargs = EpilogueArgs {
        scale: args.scale,
        bias: bias.as_ref().map(|g| g.as_slice()),
        up: up.as_ref().map(|g| g.as_slice()),
        residual: res.as_ref().map(|g| g.as_slice()),
    };
    let mut c = guarded(&vec![f32::NAN; desc.m * desc.n]);
    kernel
        .run_epilogue(ga.as_slice(), gb.as_slice(), &gargs, c.as_mut_slice())
        .unwrap();
    c.as_slice().to_vec()
}

/// Pre-activations at and around every edge of `silu` with the polynomial `exp`: zeros of
/// both signs, subnormals, `±87` (where `exp(-t)` is cut to 0 or clamped), `±88`, huge values,
/// infinities and a NaN.
const EXTREMES: [f32; 24] = [
    0.0,
    -0.0,
    1e-40,
    -1e-40,
    1e-7,
    -1e-7,
    1.5,
    -1.5,
    86.99999,
    87.0,
    87.00001,
    -86.99999,
    -87.0,
    -87.00001,
    88.0,
    -88.0,
    100.0,
    -100.0,
    1e30,
    -1e30,
    f32::MAX,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
];

#[test]
fn silu_mul_of_extreme_inputs_matches_interpreter_and_portable() {
    // A's first column holds the extremes, the rest zeros, and B's first row is 1: every sum is
    // the extreme itself (fma(0, b, t) = t), so the epilogue sees exactly these values;
    // B's other rows are random, and `k/2` splits the sum so the accumulators go through C.
    let (m, n, k) = (EXTREMES.len(), 21, 3);
    let mut rng = Rng(11);
    let mut a = vec![0f32; m * k];
    for (i, x) in EXTREMES.iter().enumerate() {
        a[i * k] = *x;
    }
    let mut b: Vec<f32> = (0..k * n).map(|_| rng.f(1.0)).collect();
    b[..n].fill(1.0);
    let mut ops = Operands::random(m, n, &mut rng);
    // Zero bias and a scale of ±1 leave the extremes as they are, or negate them (a sum from
    // +0.0 is never -0.0, but its negation is); up = 0 and ±1 included.
    ops.bias.fill(0.0);
    for (i, u) in ops.up.iter_mut().enumerate() {
        match i % 5 {
            0 => *u = 0.0,
            1 => *u = 1.0,
            2 => *u = -1.0,
            _ => {}
        }
    }
    for isa in isas().into_iter().chain([Isa::Portable]) {
        let lanes = isa.lanes().max(1);
        let schedules = if isa == Isa::Portable {
            vec![None]
        } else {
            vec![
                None,
                Some(format!("k/2 m/2 k/1:u2 m/1:reg n/{lanes}:reg n/1:vec")),
                Some(format!("m/3 n/{lanes} k/1 m/1:reg n/1:vec")),
            ]
        };
        for schedule in schedules {
            for (e, scale) in all_epilogues()
                .filter(|e| e.silu_mul)
                .flat_map(|e| [(e, 1.0), (e, -1.0)])
            {
                ops.scale = scale;
                for a_transposed in [false, true] {
                    let a_data = if a_transposed {
                        transpose(&a, m, k)
                    } else {
                        a.clone()
                    };
                    let desc = SgemmDesc {
                        isa,
                        schedule: schedule.clone(),
                        epilogue: e,
                        a_transposed,
                        ..SgemmDesc::new(m, n, k)
                    };
                    let args = ops.args(e);
                    let want = interpret(&desc, &a_data, &b, &args);
                    let got = run_guarded(&desc, &a_data, &b, &args);
                    let ctx = format!(
                        "{isa} epilogue {e} scale {scale} `{}` a_transposed {a_transposed}",
                        desc.schedule_text()
                    );
                    assert_bits(&got, &want, &ctx);
                }
            }
        }
    }
    // The values themselves: silu(t) * 1 for a few of them, with unit `up`.
    let desc = SgemmDesc {
        epilogue: Epilogue {
            silu_mul: true,
            ..Epilogue::NONE
        },
        ..SgemmDesc::new(m, n, k)
    };
    let ones = vec![1f32; m * n];
    let args = EpilogueArgs {
        up: Some(&ones),
        ..EpilogueArgs::NONE
    };
    let got = run_guarded(&desc, &a, &b, &args);
    let at = |x: f32| {
        got[EXTREMES
            .iter()
            .position(|v| v.to_bits() == x.to_bits())
            .unwrap()
            * n]
    };
    assert_eq!(at(0.0).to_bits(), 0f32.to_bits());
    assert_eq!(at(100.0), 100.0, "exp(-100) is 0: silu(t) = t");
    assert_eq!(at(f32::INFINITY), f32::INFINITY);
    assert_eq!(at(f32::NEG_INFINITY), f32::NEG_INFINITY);
    assert!(at(-100.0) < 0.0 && at(-100.0) > -1e-35, "{}", at(-100.0));
    assert!(at(f32::NAN).is_nan());
}

fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; a.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = a[i * cols + j];
        }
    }
    t
}

#[test]
fn rows_with_epilogue_do_not_depend_on_m() {
    let (n, k) = (100, 70);
    let max_m = 29;
    let mut rng = Rng(5);
    let a: Vec<f32> = (0..max_m * k).map(|_| rng.f(1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.f(1.0)).collect();
    let ops = Operands::random(max_m, n, &mut rng);
    let full = Epilogue {
        scale: true,
        bias: true,
        silu_mul: true,
        residual: true,
    };
    let silu_only = Epilogue {
        silu_mul: true,
        ..Epilogue::NONE
    };
    for isa in isas().into_iter().chain([Isa::Portable]) {
        for e in [full, silu_only] {
            // Row r of M = 1, fed row r of A, up and residual.
            let single = |r: usize, schedule: Option<String>| {
                let desc = SgemmDesc {
                    isa,
                    schedule,
                    epilogue: e,
                    ..SgemmDesc::new(1, n, k)
                };
                let row = r * n..(r + 1) * n;
                let args = EpilogueArgs {
                    up: e.silu_mul.then(|| &ops.up[row.clone()]),
                    residual: e.residual.then(|| &ops.residual[row.clone()]),
                    ..ops.args(e)
                };
                run_guarded(&desc, &a[r * k..(r + 1) * k], &b, &args)
            };
            for m in [1, 3, 8, 29] {
                let mut schedules = vec![None];
                if isa != Isa::Portable {
                    let l = isa.lanes();
                    let rows = m.min(4);
                    let reg = if rows > 1 { "m/1:reg " } else { "" };
                    schedules.push(Some(format!(
                        "k/32 n/{} m/{rows} k/1:u3 {reg}n/{l}:reg n/1:vec",
                        2 * l
                    )));
                }
                for schedule in schedules {
                    let desc = SgemmDesc {
                        isa,
                        schedule: schedule.clone(),
                        epilogue: e,
                        ..SgemmDesc::new(m, n, k)
                    };
                    let (up, res) = (&ops.up[..m * n], &ops.residual[..m * n]);
                    let args = EpilogueArgs {
                        up: e.silu_mul.then_some(up),
                        residual: e.residual.then_some(res),
                        ..ops.args(e)
                    };
                    let c = run_guarded(&desc, &a[..m * k], &b, &args);
                    for r in [0, m / 2, m - 1] {
                        let one = single(r, None);
                        assert_bits(
                            &c[r * n..(r + 1) * n],
                            &one,
                            &format!(
                                "{isa} {e} row {r} of M = {m} `{}` vs M = 1",
                                desc.schedule_text()
                            ),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn epilogue_operands_are_checked() {
    let (m, n, k) = (3, 5, 4);
    let (a, b) = (vec![0.5f32; m * k], vec![0.25f32; k * n]);
    let mut c = vec![0f32; m * n];
    let mut rng = Rng(3);
    let ops = Operands::random(m, n, &mut rng);
    for isa in isas().into_iter().chain([Isa::Portable]) {
        for e in all_epilogues() {
            let desc = SgemmDesc {
                isa,
                epilogue: e,
                ..SgemmDesc::new(m, n, k)
            };
            let kernel = SgemmKernel::compile(&desc).unwrap();
            let good = ops.args(e);
            kernel.run_epilogue(&a, &b, &good, &mut c).unwrap();
            let short = |v: &[f32]| -> Vec<f32> { v[..v.len() - 1].to_vec() };
            let (bias, up, res) = (short(&ops.bias), short(&ops.up), short(&ops.residual));
            let ctx = format!("{isa} epilogue {e}");
            // A wrong length of each operand the kernel takes.
            for (stage, bad) in [
                (
                    e.bias,
                    EpilogueArgs {
                        bias: Some(&bias),
                        ..good
                    },
                ),
                (
                    e.silu_mul,
                    EpilogueArgs {
                        up: Some(&up),
                        ..good
                    },
                ),
                (
                    e.residual,
                    EpilogueArgs {
                        residual: Some(&res),
                        ..good
                    },
                ),
            ] {
                if stage {
                    let err = kernel.run_epilogue(&a, &b, &bad, &mut c).unwrap_err();
                    assert!(matches!(err, Error::BufferLen { .. }), "{ctx}: {err}");
                }
            }
            // Each operand missing or extra.
            let flip = [
                EpilogueArgs {
                    scale: if e.scale { None } else { Some(2.0) },
                    ..good
                },
                EpilogueArgs {
                    bias: if e.bias { None } else { Some(&ops.bias) },
                    ..good
                },
                EpilogueArgs {
                    up: if e.silu_mul { None } else { Some(&ops.up) },
                    ..good
                },
                EpilogueArgs {
                    residual: if e.residual {
                        None
                    } else {
                        Some(&ops.residual)
                    },
                    ..good
                },
            ];
            for bad in flip {
                let err = kernel.run_epilogue(&a, &b, &bad, &mut c).unwrap_err();
                assert!(matches!(err, Error::BadShape { .. }), "{ctx}: {err}");
            }
            if e.any() {
                assert!(
                    kernel.run(&a, &b, &mut c).is_err(),
                    "{ctx}: run without operands"
                );
            }
        }
    }
}

#[test]
fn library_epilogues_are_recognised() {
    for e in all_epilogues() {
        let expr = matmul_epilogue(3, 7, 5, e).unwrap();
        assert_eq!(matmul_shape(&expr).unwrap().epilogue, e);
        let t = matmul_general(3, 7, 5, (1, 3), 7, e).unwrap();
        assert_eq!(matmul_shape(&t).unwrap().epilogue, e);
    }
}

/// A matmul `m x n x k` whose reduce node `finish` builds on: `(builder, reduce, vm, vn)`.
fn matmul_head(
    m: usize,
    n: usize,
    k: usize,
) -> (
    Builder,
    peregrine_loops::NodeId,
    peregrine_loops::VarId,
    peregrine_loops::VarId,
) {
    let mut b = Builder::new();
    let (vm, vn, vk) = (b.var("m", m), b.var("n", n), b.var("k", k));
    let ia = b.input("a", Storage::F32, m * k);
    let ib = b.input("b", Storage::F32, k * n);
    let ra = b.read(ia, &[vm, vk], 0, &[k as isize, 1]);
    let rb = b.read(ib, &[vk, vn], 0, &[n as isize, 1]);
    let p = b.binary(BinaryOp::Mul, ra, rb);
    let c = b.reduce(ReduceOp::Add, p, &[vm, vn]);
    (b, c, vm, vn)
}

#[test]
fn epilogues_the_generator_cannot_emit_are_unsupported() {
    let (m, n, k) = (4, 9, 6);
    type Build = fn(
        &mut Builder,
        peregrine_loops::NodeId,
        [peregrine_loops::VarId; 2],
    ) -> peregrine_loops::NodeId;
    let cases: [(&str, Build); 7] = [
        ("residual inside silu", |b, c, [vm, vn]| {
            let i = b.input("residual", Storage::F32, 36);
            let r = b.read(i, &[vm, vn], 0, &[9, 1]);
            let t = b.binary(BinaryOp::Add, c, r);
            let g = b.unary(UnaryOp::Silu, t);
            let i = b.input("up", Storage::F32, 36);
            let u = b.read(i, &[vm, vn], 0, &[9, 1]);
            b.binary(BinaryOp::Mul, g, u)
        }),
        ("scale after bias", |b, c, [_, vn]| {
            let i = b.input("bias", Storage::F32, 9);
            let r = b.read(i, &[vn], 0, &[1]);
            let t = b.binary(BinaryOp::Add, c, r);
            let i = b.input("scale", Storage::F32, 1);
            let s = b.read(i, &[], 0, &[]);
            b.binary(BinaryOp::Mul, t, s)
        }),
        ("bias twice", |b, c, [_, vn]| {
            let i = b.input("bias", Storage::F32, 9);
            let r = b.read(i, &[vn], 0, &[1]);
            let t = b.binary(BinaryOp::Add, c, r);
            b.binary(BinaryOp::Add, t, r)
        }),
        ("silu without up", |b, c, _| b.unary(UnaryOp::Silu, c)),
        ("exp instead of silu", |b, c, [vm, vn]| {
            let g = b.unary(UnaryOp::Exp, c);
            let i = b.input("up", Storage::F32, 36);
            let u = b.read(i, &[vm, vn], 0, &[9, 1]);
            b.binary(BinaryOp::Mul, g, u)
        }),
        ("f16 up", |b, c, [vm, vn]| {
            let g = b.unary(UnaryOp::Silu, c);
            let i = b.input("up", Storage::F16, 36);
            let u = b.read(i, &[vm, vn], 0, &[9, 1]);
            b.binary(BinaryOp::Mul, g, u)
        }),
        ("up read transposed", |b, c, [vm, vn]| {
            let g = b.unary(UnaryOp::Silu, c);
            let i = b.input("up", Storage::F32, 36);
            let u = b.read(i, &[vm, vn], 0, &[1, 4]);
            b.binary(BinaryOp::Mul, g, u)
        }),
    ];
    for (what, build) in cases {
        let (mut b, c, vm, vn) = matmul_head(m, n, k);
        let out = build(&mut b, c, [vm, vn]);
        let expr: Expr = b.finish(out, 0, &[n as isize, 1], m * n).unwrap();
        let err = matmul_shape(&expr).expect_err(what);
        assert!(matches!(err, Error::Unsupported { .. }), "{what}: {err}");
        if what.contains("inside") || what.contains("after") {
            assert!(
                err.to_string().contains("the fused order is"),
                "{what}: {err}"
            );
        }
    }
}

#[test]
fn widest_tiles_take_every_epilogue() {
    // The tallest one-vector tiles leave a single register beside the accumulators, and the
    // widest one-row tiles give the SiLU·mul pass more vectors per row than it evaluates side
    // by side; both with a masked last vector.
    for (isa, tall, wide_n, two_row_n) in [(Isa::Avx512, 31, 125, 125), (Isa::Avx2, 13, 45, 29)] {
        if !isa.available() {
            continue;
        }
        let lanes = isa.lanes();
        let cases = [
            (tall, lanes - 3, "k/1:u2 m/1:reg n/1:vec".to_string()),
            (1, wide_n, format!("m/1 k/1:u2 n/{lanes}:reg n/1:vec")),
            (
                2,
                two_row_n,
                format!("k/4 k/1 m/1:reg n/{lanes}:reg n/1:vec"),
            ),
        ];
        for (m, n, schedule) in cases {
            let k = 9;
            let mut rng = Rng(9);
            let a: Vec<f32> = (0..m * k).map(|_| rng.f(3.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.f(3.0)).collect();
            let ops = Operands::random(m, n, &mut rng);
            for e in all_epilogues() {
                let d = SgemmDesc {
                    isa,
                    schedule: Some(schedule.clone()),
                    epilogue: e,
                    ..SgemmDesc::new(m, n, k)
                };
                let args = ops.args(e);
                assert_bits(
                    &run_guarded(&d, &a, &b, &args),
                    &interpret(&d, &a, &b, &args),
                    &format!("{isa} {m}x{n}x{k} `{schedule}` epilogue {e}"),
                );
            }
        }
    }
}
