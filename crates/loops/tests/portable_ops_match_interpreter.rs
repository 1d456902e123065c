//! The portable row ops equal the interpreter bit for bit (same operations, same order, the
//! polynomial `exp` of `portable::exp_clamped` on both sides): the ones named after a library
//! expression under its naive schedule, the engine's twins (`rms_norm_lanes16`,
//! `silu_mul_in_place`, `exp_shifted_in_place`, `softmax_rows`) under the schedules their JIT
//! kernels follow (16-lane sums as lane-split reductions).

use peregrine_loops::interp::{self, Buffer};
use peregrine_loops::ir::library;
use peregrine_loops::kernel::portable;
use peregrine_loops::{Expr, Isa, RowOp, RowOpDesc, Schedule};

fn data(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 12) as f32 / 1048576.0
                - 0.5)
                * 6.0
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `interp::run` of `e` under `s`.
fn interp_run(e: &Expr, s: &Schedule, inputs: &[Buffer<'_>]) -> Vec<f32> {
    let mut out = vec![0f32; e.out_len];
    interp::run(e, s, inputs, &mut out).unwrap();
    out
}

/// The schedule the portable twin of `op` follows (the row kernels' family, portable ISA).
fn twin_schedule(op: RowOp, rows: usize, len: usize) -> (Expr, Schedule) {
    RowOpDesc {
        op,
        isa: Isa::Portable,
    }
    .schedule(rows, len)
    .unwrap()
}

#[test]
fn rms_norm_matches() {
    for (m, d) in [(1, 576), (3, 17), (5, 64), (2, 5)] {
        let (x, w) = (data(m * d, 1), data(d, 2));
        let eps = [1e-5f32];
        let inputs = [Buffer::F32(&x), Buffer::F32(&w), Buffer::F32(&eps)];
        // One accumulator per row: the naive schedule.
        let e = library::rms_norm(m, d).unwrap();
        let want = interp_run(&e, &Schedule::naive(&e), &inputs);
        let mut got = vec![0f32; m * d];
        portable::rms_norm(&x, &w, eps[0], &mut got);
        assert_eq!(bits(&got), bits(&want), "rms_norm {m}x{d}");
        // The engine's 16 lanes: the lane-split schedule.
        let (e, s) = twin_schedule(RowOp::RmsNorm { d }, m, d);
        let want = interp_run(&e, &s, &inputs);
        portable::rms_norm_lanes16(&x, &w, eps[0], &mut got);
        assert_eq!(bits(&got), bits(&want), "rms_norm_lanes16 {m}x{d}");
    }
}

#[test]
fn silu_mul_and_softmax_match() {
    let (m, d) = (4, 37);
    // Gates past the exp's clamp and zero cut too.
    let (mut g, u) = (data(m * d, 3), data(m * d, 4));
    g[..4].copy_from_slice(&[-90.0, 95.0, -87.0, 0.0]);
    let e = library::silu_mul(m * d).unwrap();
    let want = interp_run(
        &e,
        &Schedule::naive(&e),
        &[Buffer::F32(&g), Buffer::F32(&u)],
    );
    let mut got = vec![0f32; m * d];
    portable::silu_mul(&g, &u, &mut got);
    assert_eq!(bits(&got), bits(&want), "silu_mul");
    let mut in_place = g.clone();
    portable::silu_mul_in_place(&mut in_place, &u);
    assert_eq!(bits(&in_place), bits(&want), "silu_mul_in_place");

    let e = library::softmax(m, d).unwrap();
    let want = interp_run(&e, &Schedule::naive(&e), &[Buffer::F32(&g)]);
    portable::softmax(&g, d, &mut got);
    assert_eq!(bits(&got), bits(&want), "softmax");
    for row in got.chunks(d) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
}

/// The engine's element-wise twins and softmax rows equal the interpreter under the schedules
/// their kernels follow (the stream ops under any schedule: nothing is reduced).
#[test]
fn engine_twins_match() {
    let n = 77;
    let (x, y) = (data(n, 5), data(n, 6));
    let e = library::add(n).unwrap();
    let want = interp_run(
        &e,
        &Schedule::naive(&e),
        &[Buffer::F32(&x), Buffer::F32(&y)],
    );
    let mut got = x.clone();
    portable::add_in_place(&mut got, &y);
    assert_eq!(bits(&got), bits(&want), "add_in_place");

    let (shift, scale) = ([1.5f32], [0.7f32]);
    let (e, s) = twin_schedule(RowOp::ExpShifted, 1, n);
    let inputs = [Buffer::F32(&x), Buffer::F32(&shift), Buffer::F32(&scale)];
    for s in [s, Schedule::naive(&e)] {
        let want = interp_run(&e, &s, &inputs);
        let mut got = x.clone();
        portable::exp_shifted_in_place(&mut got, shift[0], scale[0]);
        assert_eq!(bits(&got), bits(&want), "exp_shifted_in_place");
    }

    for (rows, len, stride) in [(3, 37, 40), (1, 16, 16), (2, 5, 9)] {
        let e = library::softmax_rows(rows, len, stride).unwrap();
        let s = twin_schedule(RowOp::Softmax, rows, len).1;
        let x = data(e.inputs[0].len, 7);
        let nodes = interp::run_nodes(&e, &s, &[Buffer::F32(&x)]).unwrap();
        let mut got = x.clone();
        let mut sums = vec![0f32; rows];
        portable::softmax_rows(&mut got, len, rows, stride, &mut sums);
        assert_eq!(
            bits(&sums),
            bits(&nodes[4]),
            "softmax_rows sums {rows}x{len}"
        );
        let numerators: Vec<f32> = (0..rows)
            .flat_map(|r| got[r * stride..r * stride + len].to_vec())
            .collect();
        assert_eq!(
            bits(&numerators),
            bits(&nodes[3]),
            "softmax_rows {rows}x{len}"
        );
    }
}

#[test]
fn argmax_takes_the_first_maximum_and_skips_nan() {
    assert_eq!(portable::argmax(&[1.0, 3.0, f32::NAN, 3.0, -1.0]), Some(1));
    assert_eq!(portable::argmax(&[f32::NAN]), None);
    assert_eq!(portable::argmax(&[]), None);
}

#[test]
fn rope_pairs_rotates_and_keeps_norms() {
    let mut x = data(128, 5);
    let before: Vec<f32> = x.chunks(2).map(|p| p[0] * p[0] + p[1] * p[1]).collect();
    portable::rope_pairs(&mut x, 7, 64, 100000.0);
    let after: Vec<f32> = x.chunks(2).map(|p| p[0] * p[0] + p[1] * p[1]).collect();
    for (a, b) in before.iter().zip(&after) {
        assert!((a - b).abs() <= 1e-4 * a.max(1.0));
    }
    // Pair 0 rotates by exactly `pos` radians.
    let mut y = vec![1.0f32, 0.0];
    portable::rope_pairs(&mut y, 1, 2, 10000.0);
    assert!((y[0] - 1f32.cos()).abs() < 1e-6 && (y[1] - 1f32.sin()).abs() < 1e-6);
}

#[test]
fn tree_attention_matches() {
    // 3 committed keys, then a tree of 4 new tokens: 0 <- 1, 0 <- 2 <- 3.
    let parents = [None, Some(0), Some(0), Some(2)];
    let (n_heads, n_prefix, d) = (2, 3, 8);
    let (n_q, n_kv) = (parents.len(), n_prefix + parents.len());
    let mut mask = vec![0f32; n_q * n_kv];
    portable::tree_mask(n_prefix, &parents, &mut mask);
    // `sees(i, t)`: new row i sees new token t (keys after the prefix).
    let sees = |i: usize, t: usize| mask[i * n_kv + n_prefix + t] == 0.0;
    assert!((0..n_prefix).all(|j| mask[3 * n_kv + j] == 0.0));
    assert!(sees(3, 0) && sees(3, 2) && sees(3, 3) && !sees(3, 1));
    assert!(sees(1, 0) && sees(1, 1) && !sees(1, 2));
    let (q, k, v) = (
        data(n_heads * n_q * d, 6),
        data(n_heads * n_kv * d, 7),
        data(n_heads * n_kv * d, 8),
    );
    let scale = 1.0 / (d as f32).sqrt();
    let e = library::attention(n_heads, n_q, n_kv, d, scale).unwrap();
    let mut want = vec![0f32; n_heads * n_q * d];
    interp::run(
        &e,
        &Schedule::naive(&e),
        &[
            Buffer::F32(&q),
            Buffer::F32(&k),
            Buffer::F32(&v),
            Buffer::F32(&mask),
        ],
        &mut want,
    )
    .unwrap();
    let mut got = vec![0f32; n_heads * n_q * d];
    let mut scratch = vec![0f32; n_kv];
    portable::attention(
        &q,
        &k,
        &v,
        &mask,
        n_q,
        n_kv,
        d,
        scale,
        &mut scratch,
        &mut got,
    );
    assert_eq!(bits(&got), bits(&want), "tree attention");
    // Token 1 does not see token 2: changing key/value 2 (index 3 + 2) leaves row 1 unchanged.
    let mut k2 = k.clone();
    for x in &mut k2[(3 + 2) * d..(3 + 3) * d] {
        *x += 1.0;
    }
    let mut got2 = vec![0f32; n_heads * n_q * d];
    portable::attention(
        &q,
        &k2,
        &v,
        &mask,
        n_q,
        n_kv,
        d,
        scale,
        &mut scratch,
        &mut got2,
    );
    assert_eq!(bits(&got2[d..2 * d]), bits(&got[d..2 * d]));
    assert_ne!(bits(&got2[3 * d..4 * d]), bits(&got[3 * d..4 * d]));
}
