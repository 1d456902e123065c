//! Arbitrary schedule text and edits never panic: they validate, or fail with an error, before
//! any code is generated (issue 4, item 8).

use peregrine_loops::ir::library::{matmul, qmatmul};
use peregrine_loops::{Isa, NodeId, QGemmDesc, QuantType, Schedule, SgemmDesc, SgemmKernel, Tail};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    let var = prop_oneof![Just("m"), Just("n"), Just("k"), Just("q"), Just("")];
    let annot = prop_oneof![
        Just(""),
        Just(":vec"),
        Just(":reg"),
        Just(":par"),
        Just(":u4"),
        Just(":u0"),
        Just(":u99"),
        Just(":zz")
    ];
    prop_oneof![
        8 => (var, 0..70usize, any::<bool>(), annot).prop_map(|(v, s, exact, a)| format!("{v}/{s}{}{a}", if exact { "!" } else { "" })),
        1 => (0..4usize).prop_map(|d| format!("pack:b@{d}")),
        1 => (0..6u32, 0..5usize).prop_map(|(n, d)| format!("@%{n}/{d}")),
        1 => "[a-z/:@%!0-9]{0,6}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    #[test]
    fn random_schedule_text_never_panics(m in 1..20usize, n in 1..40usize, k in 1..20usize, toks in prop::collection::vec(token(), 0..9)) {
        let text = toks.join(" ");
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            if !isa.available() {
                continue;
            }
            let desc = SgemmDesc { schedule: Some(text.clone()), isa, ..SgemmDesc::new(m, n, k) };
            if let Ok(kernel) = SgemmKernel::compile(&desc) {
                // Whatever compiles must also compute the right thing.
                let (a, b) = (vec![1f32; m * k], vec![1f32; k * n]);
                let mut c = vec![0f32; m * n];
                kernel.run(&a, &b, &mut c).unwrap();
                prop_assert!(c.iter().all(|&v| v == k as f32), "`{text}` on {isa}");
            }
        }
    }

    #[test]
    fn random_edits_never_panic(ops in prop::collection::vec((0..4u8, 0..6usize, 0..6usize, 0..5usize), 0..8)) {
        let e = qmatmul(QuantType::Q4_1, 3, 20, 64).unwrap();
        let mut s = Schedule::naive(&e);
        for (op, a, b, c) in ops {
            let node = NodeId((a % e.nodes.len()) as u32);
            let next = match op {
                0 => s.split(node, b, c, if c % 2 == 0 { Tail::Exact } else { Tail::Masked }),
                1 => s.reorder(node, b, c),
                2 => s.fuse(node, NodeId(c as u32), b),
                _ => s.annotate(node, b, peregrine_loops::Annot::Unroll(c as u8)),
            };
            if let Ok(next) = next {
                let _ = next.validate(&e);
                s = next;
            }
        }
    }
}

#[test]
fn errors_say_what_is_wrong() {
    let e = matmul(10, 20, 7).unwrap();
    let s = Schedule::naive(&e)
        .with_node_text(&e, e.output, "m/1 n/8! n/1 k/1")
        .unwrap();
    let msg = s.validate(&e).unwrap_err().to_string();
    assert_eq!(msg, "node %3: loop 1 splits \"n\" chunks of 20 into steps of 8, which does not divide and the loop allows no tail (use a masked tail)");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
    /// Corrupting any node of an expression gives an error from `verify`, never a panic, and
    /// the interpreter refuses what `verify` refuses.
    #[test]
    fn corrupted_expressions_never_panic(node in 0..13usize, kind in 0..6u8, a in 0..16u32, b in 0..16u32, c in 0..16u32) {
        use peregrine_loops::ir::{Access, BinaryOp, InputId, Op, QuantPart, ReduceOp, VarId};
        let mut e = qmatmul(QuantType::Q4_1, 2, 3, 64).unwrap();
        let i = node % e.nodes.len();
        e.nodes[i].op = match kind {
            0 => Op::Binary(BinaryOp::Add, NodeId(a), NodeId(b)),
            1 => Op::Reduce { op: ReduceOp::Max, arg: NodeId(a), keep: vec![VarId(b), VarId(c)] },
            2 => Op::ToF32(NodeId(a)),
            3 => Op::Read { input: InputId(a % 3), index: vec![VarId(b), VarId(c)], access: Access::Quant { part: QuantPart::Code, row_stride_blocks: c as usize } },
            4 => Op::Read { input: InputId(a % 3), index: vec![VarId(b)], access: Access::Strided { offset: c as usize, strides: vec![-(a as isize)] } },
            _ => Op::Const(a),
        };
        if b % 3 == 0 {
            e.nodes[i].space = vec![VarId(c)];
        }
        let ok = e.verify().is_ok();
        let w = vec![0u8; 3 * 2 * 20];
        let x = vec![0u8; 2 * 2 * 48];
        let mut y = vec![0f32; 6];
        let ran = peregrine_loops::interp::run(&e, &Schedule::naive(&e), &[peregrine_loops::interp::Buffer::Quant(&w), peregrine_loops::interp::Buffer::Quant(&x)], &mut y);
        if !ok {
            prop_assert!(ran.is_err());
        }
    }
}

/// Quantized schedules outside the generator's loop family are refused before code generation,
/// with the loops it would emit; so are register tiles that do not fit.
#[test]
fn quantized_schedules_outside_the_family_are_errors() {
    let lower = |text: &str| {
        QGemmDesc::from_schedule_text(QuantType::Q4_1, 8, 96, 128, Isa::Avx512, text)
            .map(|d| (d.m_tile, d.n_panels))
            .map_err(|e| e.to_string())
    };
    assert_eq!(lower("n/48 m/4 kb/1 m/1:reg n/16:reg n/1:vec"), Ok((4, 3)));
    assert_eq!(lower("n/16:par m/8 kb/1 m/1:reg n/1:vec"), Ok((8, 1)));
    for (text, says) in [
        (
            "m/4 n/48 kb/1 m/1:reg n/16:reg n/1:vec",
            "must start `n/S m/T kb/1`",
        ),
        ("n/24 m/4 kb/1 m/1:reg n/1:vec", "must start `n/S m/T kb/1`"),
        (
            "n/48 m/4 kb/1 n/16:reg m/1:reg n/1:vec",
            "emits `n/48 m/4 kb/1 m/1:reg n/16:reg n/1:vec",
        ),
        (
            "n/48 m/4 kb/1:u2 m/1:reg n/16:reg n/1:vec",
            "emits `n/48 m/4 kb/1 m/1:reg",
        ),
        ("n/48 m/4 kb/1 m/1:reg n/16:reg", "node %9"),
        ("n/48 m/4 kb/1 m/1:reg n/16:reg n/1:vec n/1", "node %9"),
    ] {
        let err = lower(text).unwrap_err();
        assert!(err.contains(says), "`{text}`: {err}");
    }
    // Unfused per-block nodes are outside the family too.
    let desc = QGemmDesc::for_isa(QuantType::Q8_0, 4, 32, 64, Isa::Avx512);
    let (expr, mut schedule) = desc.schedule().unwrap();
    schedule.nodes[3].fusion = None;
    let err = QGemmDesc::from_schedule(&expr, &schedule, Isa::Avx512).unwrap_err();
    assert!(err.to_string().contains("node %3"), "{err}");
    // A tile too large for the registers: lowered, then refused by the compiler.
    let big = QGemmDesc::from_schedule_text(
        QuantType::Q8_0,
        16,
        512,
        64,
        Isa::Avx512,
        "n/256 m/16 kb/1 m/1:reg n/16:reg n/1:vec",
    )
    .unwrap();
    let err = peregrine_loops::QGemmKernel::compile(&big).err().unwrap();
    assert!(err.to_string().contains("register"), "{err}");
    // Not a quantized matmul at all.
    let e = matmul(4, 4, 4).unwrap();
    let err = QGemmDesc::from_schedule(&e, &Schedule::naive(&e), Isa::Avx512).unwrap_err();
    assert!(err.to_string().contains("not `library::qmatmul`"), "{err}");
}
