//! Every row kernel lowered from the IR (RMSNorm, add, SiLU·mul, shifted exp, softmax rows),
//! compiled from a schedule of its library expression, equals `interp::run` under that same
//! schedule bit for bit: on every ISA this CPU has and the portable path, for random row
//! counts and lengths with tails (not multiples of 16), every buffer ending at a guard page.
//! Schedules outside the generators' family, other expressions and invalid lane splits are
//! errors, never panics; schedule → description → schedule (and its text) round-trips.
//!
//! Tolerance: none. The IR's `exp` is the kernels' polynomial, RMSNorm's scale is `1 / sqrt`
//! rounded twice, and the sums are lane-split reductions (16 lanes folded as `reduce16`), so
//! results are compared with `to_bits` (a NaN must be a NaN on both sides).

use peregrine_loops::interp::{self, Buffer};
use peregrine_loops::ir::library;
use peregrine_loops::jit::exec_mem::GuardedF32;
use peregrine_loops::{
    Error, Expr, Isa, NodeId, RopeLayout, RowKernel, RowOp, RowOpDesc, Schedule,
};
use proptest::prelude::*;

mod common;
use common::{assert_bits, guarded, isas, Rng};

/// The JIT ISAs of this CPU, then the portable path.
fn all_isas() -> Vec<Isa> {
    let mut v = isas();
    v.push(Isa::Portable);
    v
}

/// `schedule_text`'s lines (`%N loops`) applied to the naive schedule of `expr`: the family
/// written by hand, not taken from the description.
fn from_text(expr: &Expr, text: &str) -> Schedule {
    let mut s = Schedule::naive(expr);
    for line in text.lines() {
        let (node, loops) = line.split_once(' ').expect("`%N loops`");
        let node: u32 = node.trim_start_matches('%').parse().expect("node number");
        s = s.with_node_text(expr, NodeId(node), loops).unwrap();
    }
    s
}

/// The family of `op` on `isa` for `rows` rows of `len`, from its text, and the kernel
/// compiled from it.
fn lowered(op: RowOp, isa: Isa, rows: usize, len: usize) -> (Expr, Schedule, RowKernel) {
    let desc = RowOpDesc { op, isa };
    let (expr, want) = desc.schedule(rows, len).unwrap();
    let schedule = from_text(&expr, &desc.schedule_text().unwrap());
    assert_eq!(schedule, want, "{op:?} {isa}: the text is the schedule");
    let kernel = RowKernel::compile_schedule(&expr, &schedule, isa)
        .unwrap_or_else(|e| panic!("{op:?} on {isa}: {e}"));
    assert_eq!(*kernel.desc(), desc);
    (expr, schedule, kernel)
}

fn interp_run(expr: &Expr, schedule: &Schedule, inputs: &[Buffer<'_>]) -> Vec<f32> {
    let mut out = vec![0f32; expr.out_len];
    interp::run(expr, schedule, inputs, &mut out).unwrap();
    out
}

/// `n` values in `[-scale, scale)`, with `specials` mixed in every 13th place.
fn values(rng: &mut Rng, n: usize, scale: f32, specials: &[f32]) -> Vec<f32> {
    (0..n)
        .map(
            |i| match (i % 13, specials.get(i / 13 % specials.len().max(1))) {
                (7, Some(&v)) => v,
                _ => rng.f(scale),
            },
        )
        .collect()
}

fn rms_norm_case(rows: usize, d: usize, eps: f32, seed: u64) {
    let mut rng = Rng(seed);
    let x = values(&mut rng, rows * d, 4.0, &[0.0, -0.0, 1e-20]);
    let w = values(&mut rng, d, 2.0, &[]);
    for isa in all_isas() {
        let (expr, s, kernel) = lowered(RowOp::RmsNorm { d }, isa, rows, d);
        let eps_buf = [eps];
        let want = interp_run(
            &expr,
            &s,
            &[Buffer::F32(&x), Buffer::F32(&w), Buffer::F32(&eps_buf)],
        );
        let (gx, gw) = (guarded(&x), guarded(&w));
        let mut out = GuardedF32::new(rows * d).unwrap();
        kernel
            .rms_norm(gx.as_slice(), gw.as_slice(), eps, out.as_mut_slice())
            .unwrap();
        assert_bits(
            out.as_slice(),
            &want,
            &format!("rms_norm {isa} rows={rows} d={d} eps={eps} seed={seed}"),
        );
    }
}

fn streams_case(n: usize, shift: f32, scale: f32, seed: u64) {
    let mut rng = Rng(seed);
    let x = values(&mut rng, n, 3.0, &[]);
    // Gates past the exp's clamp (|v| > 88) and zero cut (-v < -87), and signed zeros.
    let g = values(&mut rng, n, 12.0, &[120.0, -120.0, -87.0, 88.5, 0.0, -0.0]);
    // Logits with masked (-inf) entries and a long negative tail.
    let logits = values(&mut rng, n, 40.0, &[f32::NEG_INFINITY, -300.0, shift]);
    for isa in all_isas() {
        let what = |op: &str| format!("{op} {isa} n={n} seed={seed}");

        let (expr, s, kernel) = lowered(RowOp::AddInPlace, isa, 1, n);
        let want = interp_run(&expr, &s, &[Buffer::F32(&x), Buffer::F32(&g)]);
        let (mut gx, gy) = (guarded(&x), guarded(&g));
        kernel
            .add_in_place(gx.as_mut_slice(), gy.as_slice())
            .unwrap();
        assert_bits(gx.as_slice(), &want, &what("add_in_place"));

        let (expr, s, kernel) = lowered(RowOp::SiluMul, isa, 1, n);
        let want = interp_run(&expr, &s, &[Buffer::F32(&g), Buffer::F32(&x)]);
        let (mut gg, gu) = (guarded(&g), guarded(&x));
        kernel.silu_mul(gg.as_mut_slice(), gu.as_slice()).unwrap();
        assert_bits(gg.as_slice(), &want, &what("silu_mul"));

        let (expr, s, kernel) = lowered(RowOp::ExpShifted, isa, 1, n);
        let (shift_buf, scale_buf) = ([shift], [scale]);
        let want = interp_run(
            &expr,
            &s,
            &[
                Buffer::F32(&logits),
                Buffer::F32(&shift_buf),
                Buffer::F32(&scale_buf),
            ],
        );
        let mut gl = guarded(&logits);
        kernel.exp_shifted(gl.as_mut_slice(), shift, scale).unwrap();
        assert_bits(gl.as_slice(), &want, &what("exp_shifted"));
    }
}

fn softmax_case(rows: usize, n: usize, pad: usize, seed: u64) {
    let mut rng = Rng(seed);
    let stride = n + pad;
    let expr = library::softmax_rows(rows, n, stride).unwrap();
    let len = expr.inputs[0].len;
    // Masked keys (-inf) and repeats of the maximum, never a whole row of -inf (each row's
    // first value is finite): the kernels take such rows only with a finite maximum.
    let x: Vec<f32> = (0..len)
        .map(|i| match (i % stride, rng.next() % 16) {
            (0, _) => rng.f(12.0),
            (_, 0) => f32::NEG_INFINITY,
            (_, 1) => 6.0,
            _ => rng.f(12.0),
        })
        .collect();
    for isa in all_isas() {
        // The family is built for contiguous rows; the stride is a run-time argument.
        let (_, s, kernel) = lowered(RowOp::Softmax, isa, rows, n);
        assert_eq!(
            RowOpDesc::from_schedule(&expr, &s, isa).unwrap(),
            *kernel.desc()
        );
        let nodes = interp::run_nodes(&expr, &s, &[Buffer::F32(&x)]).unwrap();
        let sums_want = interp_run(&expr, &s, &[Buffer::F32(&x)]);
        assert_bits(&nodes[4], &sums_want, "run_nodes gives the output node");
        // The numerators in place, the gaps between rows untouched.
        let mut want = x.clone();
        for r in 0..rows {
            want[r * stride..r * stride + n].copy_from_slice(&nodes[3][r * n..(r + 1) * n]);
        }
        let mut gx = guarded(&x);
        let mut sums = GuardedF32::new(rows).unwrap();
        kernel
            .softmax_rows(gx.as_mut_slice(), n, rows, stride, sums.as_mut_slice())
            .unwrap();
        let what = format!("softmax {isa} rows={rows} n={n} stride={stride} seed={seed}");
        assert_bits(gx.as_slice(), &want, &what);
        assert_bits(sums.as_slice(), &sums_want, &what);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn rms_norm_matches_interpreter(rows in 0..5usize, d in 1..300usize, eps in prop_oneof![Just(1e-5f32), Just(1e-6), Just(0.0)], seed: u64) {
        rms_norm_case(rows, d, eps, seed);
    }

    #[test]
    fn element_wise_ops_match_interpreter(n in 0..600usize, shift in -2.0f32..40.0, scale in prop_oneof![Just(1.0f32), Just(0.7), Just(2.5)], seed: u64) {
        streams_case(n, shift, scale, seed);
    }

    #[test]
    fn softmax_rows_match_interpreter(rows in 0..5usize, n in 1..300usize, pad in prop_oneof![Just(0usize), 1..20usize], seed: u64) {
        softmax_case(rows, n, pad, seed);
    }
}

/// The model sizes and the edges of the 16-lane chunks, on top of the random ones.
#[test]
fn model_sizes_and_chunk_edges_match_interpreter() {
    for d in [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 576, 1536] {
        rms_norm_case(2, d, 1e-5, d as u64);
        softmax_case(2, d, 3, d as u64);
        streams_case(d, 1.0, 1.0, d as u64);
    }
}

#[test]
fn schedules_round_trip_through_the_lowering() {
    let ops = [
        RowOp::RmsNorm { d: 17 },
        RowOp::AddInPlace,
        RowOp::SiluMul,
        RowOp::ExpShifted,
        RowOp::Softmax,
    ];
    for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
        for op in ops {
            let len = if let RowOp::RmsNorm { d } = op { d } else { 40 };
            let desc = RowOpDesc { op, isa };
            let (expr, s) = desc.schedule(3, len).unwrap();
            let back = RowOpDesc::from_schedule(&expr, &s, isa).unwrap();
            assert_eq!(back, desc);
            assert_eq!(back.schedule(3, len).unwrap(), (expr.clone(), s.clone()));
            assert_eq!(from_text(&expr, &back.schedule_text().unwrap()), s);
            // Another ISA's loops are outside this ISA's family (vector widths, `:vec`);
            // the lane-split sums are the same on AVX-512 and AVX2.
            for other in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
                let got = RowOpDesc::from_schedule(&expr, &s, other);
                let same = other == isa
                    || (op == RowOp::Softmax && other != Isa::Portable && isa != Isa::Portable);
                assert_eq!(
                    got.is_ok(),
                    same,
                    "{op:?}: {isa} family on {other}: {got:?}"
                );
            }
        }
    }
}

#[test]
fn rope_and_argmax_have_no_expression() {
    for op in [
        RowOp::Argmax,
        RowOp::Rope {
            head_dim: 64,
            layout: RopeLayout::Halves,
        },
    ] {
        let desc = RowOpDesc { op, isa: Isa::Avx2 };
        let err = desc.schedule(1, 64).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("no IR expression"), "{err}");
    }
}

/// A valid schedule outside the family: an error that names the node and the loops the
/// generator emits there.
#[test]
fn schedules_outside_the_family_are_errors() {
    let isa = Isa::Avx512;
    let desc = RowOpDesc {
        op: RowOp::RmsNorm { d: 40 },
        isa,
    };
    let (expr, family) = desc.schedule(3, 40).unwrap();
    let cases = [
        // One accumulator per row: valid, but not what the kernel computes.
        (
            NodeId(3),
            "m/1 i/16 i/1 @%5/1",
            "m/1 i/16:lanes i/1:vec @%5/1",
        ),
        // The lanes without vectors, and the second pass not vectorized.
        (NodeId(3), "m/1 i/16:lanes i/1 @%5/1", "i/16:lanes i/1:vec"),
        (NodeId(10), "m/1 i/16 i/1", "m/1 i/16 i/1:vec"),
        // Not fused per row.
        (NodeId(9), "m/1 i/16 i/1:vec", "@%10/3"),
    ];
    for (node, text, want) in cases {
        let s = family.with_node_text(&expr, node, text).unwrap();
        s.validate(&expr).unwrap();
        for err in [
            RowOpDesc::from_schedule(&expr, &s, isa).unwrap_err(),
            RowKernel::compile_schedule(&expr, &s, isa).err().unwrap(),
        ] {
            let msg = err.to_string();
            assert!(matches!(err, Error::Unsupported { .. }), "{text}: {msg}");
            assert!(
                msg.contains(&format!("node {node}")) && msg.contains(want),
                "{text}: {msg}"
            );
        }
    }
    // The naive schedule, and expressions that are not row ops.
    let err = RowOpDesc::from_schedule(&expr, &Schedule::naive(&expr), isa).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    for other in [
        library::softmax(3, 40).unwrap(),
        library::matmul(3, 4, 5).unwrap(),
    ] {
        let err = RowOpDesc::from_schedule(&other, &Schedule::naive(&other), isa).unwrap_err();
        assert!(err.to_string().contains("none of ir::library"), "{err}");
    }
    // A zero-length RMSNorm row lowers, but the generator refuses the shape.
    let (e0, s0) = RowOpDesc {
        op: RowOp::RmsNorm { d: 0 },
        isa,
    }
    .schedule(2, 0)
    .unwrap();
    let err = RowKernel::compile_schedule(&e0, &s0, isa).err().unwrap();
    assert!(matches!(err, Error::BadShape { .. }), "{err}");
}

/// Lane splits where they cannot apply are errors from `validate`, and so from the lowering.
#[test]
fn invalid_lane_splits_are_errors() {
    let rms = library::rms_norm(3, 40).unwrap();
    let soft = library::softmax_rows(2, 20, 20).unwrap();
    let cases: [(&Expr, u32, &str, &str); 8] = [
        (&rms, 3, "m/1 i/8:lanes i/1:vec", "step 16"),
        (&rms, 3, "m/1 i/32:lanes i/1", "step 16"),
        (&rms, 3, "m/1:lanes i/1", "reduces over"),
        (&rms, 3, "m/1 i/1:vec", "lanes first"),
        (&rms, 3, "m/1 i/32 i/16:lanes i/1:vec", "outermost"),
        (&rms, 10, "m/1 i/16:lanes i/1", "reduces over"),
        (&soft, 1, "m/1 i/16:lanes i/1:vec", "Add reduction"),
        (
            &soft,
            4,
            "m/1 i/16:lanes i/1:vec:lanes",
            "unknown annotation",
        ),
    ];
    for (expr, node, text, why) in cases {
        let err = match Schedule::naive(expr).with_node_text(expr, NodeId(node), text) {
            Err(e) => e,
            Ok(s) => {
                let err = s.validate(expr).unwrap_err();
                for isa in all_isas() {
                    assert_eq!(RowOpDesc::from_schedule(expr, &s, isa).unwrap_err(), err);
                    let mut out = vec![0f32; expr.out_len];
                    let x = vec![1f32; expr.inputs[0].len];
                    let inputs: Vec<Buffer<'_>> =
                        expr.inputs.iter().map(|_| Buffer::F32(&x)).collect();
                    assert_eq!(interp::run(expr, &s, &inputs, &mut out).unwrap_err(), err);
                }
                err
            }
        };
        assert!(
            matches!(
                err,
                Error::BadAnnotation { .. } | Error::ParseSchedule { .. }
            ),
            "{text}: {err}"
        );
        assert!(err.to_string().contains(why), "{text}: {err}");
    }
}

fn token() -> impl Strategy<Value = String> {
    let var = prop_oneof![Just("m"), Just("i"), Just("q")];
    let annot = prop_oneof![
        Just(""),
        Just(":vec"),
        Just(":lanes"),
        Just(":reg"),
        Just(":par"),
        Just(":u4")
    ];
    prop_oneof![
        8 => (var, prop_oneof![Just(1usize), Just(8), Just(16), 0..40usize], any::<bool>(), annot)
            .prop_map(|(v, s, exact, a)| format!("{v}/{s}{}{a}", if exact { "!" } else { "" })),
        1 => (0..12u32, 0..4usize).prop_map(|(n, d)| format!("@%{n}/{d}")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random loops on one node of a family never panic: they are invalid, outside the
    /// family, or the family itself, whose kernel then equals the interpreter.
    #[test]
    fn random_node_schedules_never_panic(op_idx in 0..5usize, node in 0..11u32, toks in prop::collection::vec(token(), 0..6)) {
        let ops = [
            RowOp::RmsNorm { d: 21 },
            RowOp::AddInPlace,
            RowOp::SiluMul,
            RowOp::ExpShifted,
            RowOp::Softmax,
        ];
        let op = ops[op_idx];
        let text = toks.join(" ");
        let rows = 2;
        let len = 21;
        for isa in all_isas() {
            let (expr, family) = RowOpDesc { op, isa }.schedule(rows, len).unwrap();
            let node = NodeId(node % expr.nodes.len() as u32);
            let Ok(s) = family.with_node_text(&expr, node, &text) else { continue };
            let Ok(kernel) = RowKernel::compile_schedule(&expr, &s, isa) else { continue };
            prop_assert_eq!(*kernel.desc(), RowOpDesc { op, isa });
            let x: Vec<f32> = (0..expr.inputs[0].len).map(|i| (i % 7) as f32 - 3.0).collect();
            let inputs: Vec<Buffer<'_>> = expr.inputs.iter().map(|_| Buffer::F32(&x)).collect();
            let want = interp_run(&expr, &s, &inputs);
            let fam = interp_run(&expr, &family, &inputs);
            prop_assert_eq!(
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                fam.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "`{}` on node {} lowered, so it computes the family's bits", text, node
            );
        }
    }
}
