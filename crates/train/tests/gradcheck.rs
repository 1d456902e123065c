//! Every op's forward against a naive f64 reference, and its backward against central finite
//! differences of that reference in f64, on small random inputs with odd sizes.
//!
//! For an op `y = f(x_1, …)` and a random cotangent `R`, the tape's vector-Jacobian product
//! `∂(Σ R·y)/∂x_i` (f32) is compared with `(L(x + h e) − L(x − h e)) / 2h` of the f64
//! reference `L = Σ R·f` (`h = 1e-5`): `|analytic − fd| ≤ atol + rtol·|fd|`, tolerances per op
//! below (they bound f32 rounding of the op, not the finite difference, whose error in f64 is
//! ~1e-10).

// The f64 references are written as plain index loops on purpose (read like the maths).
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use peregrine_train::{Compute, KeyLists, MatmulBackend, ParamStore, Shape, Tape, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type RefFn<'r> = &'r dyn Fn(&[Vec<f64>]) -> Vec<f64>;

struct Tol {
    fwd: f64,
    atol: f64,
    rtol: f64,
}

fn rand_vec(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Checks forward and backward of `build` against `reference` for the given inputs.
fn check(
    name: &str,
    rng: &mut StdRng,
    inputs: &[Tensor],
    build: &dyn Fn(&mut Tape<'_>, &[Var]) -> Var,
    reference: RefFn<'_>,
    tol: Tol,
) {
    for backend in [MatmulBackend::Gemm, MatmulBackend::Jit] {
        let store = ParamStore::new();
        let cx = Compute::with_backend(2, backend);
        let mut tape = Tape::new(&store, &cx);
        let vars: Vec<Var> = inputs.iter().map(|t| tape.input(t.clone())).collect();
        let out = build(&mut tape, &vars);
        let x64: Vec<Vec<f64>> = inputs
            .iter()
            .map(|t| t.data().iter().map(|&v| v as f64).collect())
            .collect();
        let want = reference(&x64);
        let got = tape.value(out);
        assert_eq!(got.len(), want.len(), "{name}: output length");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.is_finite() && (*g as f64 - w).abs() <= tol.fwd * (1.0 + w.abs()),
                "{name} ({backend:?}) forward [{i}]: {g} vs {w}"
            );
        }
        let seed: Vec<f32> = rand_vec(rng, got.len(), 1.0);
        let grads = tape.backward_with(out, &seed).expect("backward");
        let loss = |x: &[Vec<f64>]| -> f64 {
            reference(x)
                .iter()
                .zip(&seed)
                .map(|(y, r)| y * *r as f64)
                .sum()
        };
        let h = 1e-5;
        for (i, &v) in vars.iter().enumerate() {
            let analytic = grads.input(v);
            let mut x = x64.clone();
            for e in 0..x64[i].len() {
                x[i][e] = x64[i][e] + h;
                let lp = loss(&x);
                x[i][e] = x64[i][e] - h;
                let lm = loss(&x);
                x[i][e] = x64[i][e];
                let fd = (lp - lm) / (2.0 * h);
                let a = analytic.map_or(0.0, |g| g[e] as f64);
                assert!(
                    (a - fd).abs() <= tol.atol + tol.rtol * fd.abs(),
                    "{name} ({backend:?}) d/d input {i} [{e}]: analytic {a} vs finite difference {fd}"
                );
            }
        }
    }
}

fn mat(rng: &mut StdRng, r: usize, c: usize, scale: f32) -> Tensor {
    Tensor::matrix(r, c, rand_vec(rng, r * c, scale)).unwrap()
}

fn vecn(rng: &mut StdRng, n: usize, scale: f32) -> Tensor {
    Tensor::vector(rand_vec(rng, n, scale))
}

const TIGHT: Tol = Tol {
    fwd: 1e-5,
    atol: 1e-5,
    rtol: 1e-4,
};

#[test]
fn linear() {
    let mut rng = StdRng::seed_from_u64(1);
    for &(m, n, k) in &[(1, 1, 1), (3, 5, 7), (9, 4, 13), (70, 11, 67)] {
        let ins = [
            mat(&mut rng, m, k, 1.0),
            mat(&mut rng, n, k, 1.0),
            vecn(&mut rng, n, 1.0),
        ];
        let reference = |x: &[Vec<f64>]| {
            let mut y = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    y[i * n + j] = x[2][j]
                        + (0..k)
                            .map(|p| x[0][i * k + p] * x[1][j * k + p])
                            .sum::<f64>();
                }
            }
            y
        };
        let tol = Tol {
            fwd: 1e-5 * (k as f64).sqrt(),
            atol: 1e-4,
            rtol: 1e-4,
        };
        check(
            "linear",
            &mut rng,
            &ins,
            &|t, v| t.linear(v[0], v[1], Some(v[2])).unwrap(),
            &reference,
            tol,
        );
        let nb = |x: &[Vec<f64>]| {
            let mut y = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    y[i * n + j] = (0..k)
                        .map(|p| x[0][i * k + p] * x[1][j * k + p])
                        .sum::<f64>();
                }
            }
            y
        };
        let tol = Tol {
            fwd: 1e-5 * (k as f64).sqrt(),
            atol: 1e-4,
            rtol: 1e-4,
        };
        check(
            "linear (no bias)",
            &mut rng,
            &ins[..2],
            &|t, v| t.linear(v[0], v[1], None).unwrap(),
            &nb,
            tol,
        );
    }
}

#[test]
fn elementwise() {
    let mut rng = StdRng::seed_from_u64(2);
    for &(r, c) in &[(1, 1), (3, 7), (5, 13)] {
        let ab = [mat(&mut rng, r, c, 2.0), mat(&mut rng, r, c, 2.0)];
        check(
            "add",
            &mut rng,
            &ab,
            &|t, v| t.add(v[0], v[1]).unwrap(),
            &|x| x[0].iter().zip(&x[1]).map(|(a, b)| a + b).collect(),
            TIGHT,
        );
        check(
            "sub",
            &mut rng,
            &ab,
            &|t, v| t.sub(v[0], v[1]).unwrap(),
            &|x| x[0].iter().zip(&x[1]).map(|(a, b)| a - b).collect(),
            TIGHT,
        );
        check(
            "mul",
            &mut rng,
            &ab,
            &|t, v| t.mul(v[0], v[1]).unwrap(),
            &|x| x[0].iter().zip(&x[1]).map(|(a, b)| a * b).collect(),
            TIGHT,
        );
        check(
            "mul (aliased)",
            &mut rng,
            &ab[..1],
            &|t, v| t.mul(v[0], v[0]).unwrap(),
            &|x| x[0].iter().map(|a| a * a).collect(),
            TIGHT,
        );
        let xv = [mat(&mut rng, r, c, 2.0), vecn(&mut rng, c, 2.0)];
        check(
            "mul_row",
            &mut rng,
            &xv,
            &|t, v| t.mul_row(v[0], v[1]).unwrap(),
            &|x| {
                x[0].iter()
                    .enumerate()
                    .map(|(i, a)| a * x[1][i % c])
                    .collect()
            },
            TIGHT,
        );
        check(
            "scale",
            &mut rng,
            &ab[..1],
            &|t, v| t.scale(v[0], -1.7).unwrap(),
            &|x| x[0].iter().map(|a| a * -1.7f32 as f64).collect(),
            TIGHT,
        );
        let big = [mat(&mut rng, r, c, 6.0)];
        check(
            "silu",
            &mut rng,
            &big,
            &|t, v| t.silu(v[0]).unwrap(),
            &|x| x[0].iter().map(|a| a / (1.0 + (-a).exp())).collect(),
            TIGHT,
        );
    }
}

#[test]
fn reductions() {
    let mut rng = StdRng::seed_from_u64(3);
    let x = [mat(&mut rng, 7, 5, 1.0)];
    check(
        "sum",
        &mut rng,
        &x,
        &|t, v| t.sum(v[0]).unwrap(),
        &|x| vec![x[0].iter().sum()],
        TIGHT,
    );
    check(
        "mean",
        &mut rng,
        &x,
        &|t, v| t.mean(v[0]).unwrap(),
        &|x| vec![x[0].iter().sum::<f64>() / 35.0],
        TIGHT,
    );
}

#[test]
fn concat_and_slice() {
    let mut rng = StdRng::seed_from_u64(4);
    let ins = [
        mat(&mut rng, 3, 2, 1.0),
        mat(&mut rng, 3, 5, 1.0),
        mat(&mut rng, 3, 1, 1.0),
    ];
    let cat = |x: &[Vec<f64>]| {
        let mut y = Vec::new();
        for r in 0..3 {
            y.extend_from_slice(&x[0][r * 2..r * 2 + 2]);
            y.extend_from_slice(&x[1][r * 5..r * 5 + 5]);
            y.extend_from_slice(&x[2][r..r + 1]);
        }
        y
    };
    check(
        "concat_cols",
        &mut rng,
        &ins,
        &|t, v| t.concat_cols(v).unwrap(),
        &cat,
        TIGHT,
    );
    let x = [mat(&mut rng, 4, 9, 1.0)];
    let sl = |x: &[Vec<f64>]| {
        (0..4)
            .flat_map(|r| x[0][r * 9 + 2..r * 9 + 7].to_vec())
            .collect()
    };
    check(
        "slice_cols",
        &mut rng,
        &x,
        &|t, v| t.slice_cols(v[0], 2, 5).unwrap(),
        &sl,
        TIGHT,
    );
    let rows = [mat(&mut rng, 2, 3, 1.0), mat(&mut rng, 5, 3, 1.0)];
    check(
        "concat_rows",
        &mut rng,
        &rows,
        &|t, v| t.concat_rows(v).unwrap(),
        &|x| [x[0].clone(), x[1].clone()].concat(),
        TIGHT,
    );
}

#[test]
fn embedding() {
    let mut rng = StdRng::seed_from_u64(5);
    let ids = [3u32, 0, 3, 6, 1];
    let table = [mat(&mut rng, 7, 5, 1.0)];
    let reference = |x: &[Vec<f64>]| {
        ids.iter()
            .flat_map(|&i| x[0][i as usize * 5..i as usize * 5 + 5].to_vec())
            .collect()
    };
    check(
        "embedding",
        &mut rng,
        &table,
        &|t, v| t.embedding(v[0], &ids).unwrap(),
        &reference,
        TIGHT,
    );
    // A frozen table: a constant gets no gradient and the op still works.
    let store = ParamStore::new();
    let cx = Compute::new(1);
    let mut tape = Tape::new(&store, &cx);
    let c = tape.constant(table[0].clone());
    let e = tape.embedding(c, &ids).unwrap();
    assert!(!tape.needs_grad(e));
    assert!(
        tape.embedding(c, &[7]).is_err(),
        "out-of-range id is an error"
    );
}

fn rms_ref(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let d = w.len();
    x.chunks(d)
        .flat_map(|r| {
            let ms = r.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let s = 1.0 / (ms + eps).sqrt();
            r.iter()
                .zip(w)
                .map(move |(v, w)| v * s * w)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn rms_norm() {
    let mut rng = StdRng::seed_from_u64(6);
    for &(r, d) in &[(1, 1), (3, 7), (6, 33)] {
        let ins = [mat(&mut rng, r, d, 2.0), vecn(&mut rng, d, 1.5)];
        let tol = Tol {
            fwd: 1e-5,
            atol: 2e-4,
            rtol: 2e-4,
        };
        check(
            "rms_norm",
            &mut rng,
            &ins,
            &|t, v| t.rms_norm(v[0], v[1], 1e-5).unwrap(),
            &|x| rms_ref(&x[0], &x[1], 1e-5f32 as f64),
            tol,
        );
    }
}

fn rope_ref(x: &[f64], pos: &[usize], hd: usize, theta: f64) -> Vec<f64> {
    let cols = x.len() / pos.len();
    let half = hd / 2;
    let mut y = x.to_vec();
    for (r, &p) in pos.iter().enumerate() {
        for h in 0..cols / hd {
            for i in 0..half {
                let a = p as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
                let (x1, x2) = (x[r * cols + h * hd + i], x[r * cols + h * hd + i + half]);
                y[r * cols + h * hd + i] = x1 * a.cos() - x2 * a.sin();
                y[r * cols + h * hd + i + half] = x2 * a.cos() + x1 * a.sin();
            }
        }
    }
    y
}

#[test]
fn rope() {
    let mut rng = StdRng::seed_from_u64(7);
    for &(t, nh, hd) in &[(1, 1, 2), (5, 3, 6), (4, 2, 10)] {
        let pos: Vec<usize> = (0..t).map(|i| i * 3 + 1).collect();
        let ins = [mat(&mut rng, t, nh * hd, 1.0)];
        let p2 = pos.clone();
        check(
            "rope",
            &mut rng,
            &ins,
            &|tp, v| tp.rope(v[0], &p2, hd, 10000.0).unwrap(),
            &|x| rope_ref(&x[0], &pos, hd, 10000.0),
            TIGHT,
        );
    }
}

fn attn_ref(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &[bool],
    t: usize,
    s: usize,
    nh: usize,
    nkv: usize,
) -> Vec<f64> {
    let hd = q.len() / t / nh;
    let (qc, kc) = (nh * hd, nkv * hd);
    let mut out = vec![0f64; t * qc];
    for h in 0..nh {
        let g = h / (nh / nkv);
        for i in 0..t {
            let allowed: Vec<usize> = (0..s).filter(|&j| mask[i * s + j]).collect();
            if allowed.is_empty() {
                continue;
            }
            let sc: Vec<f64> = allowed
                .iter()
                .map(|&j| {
                    (0..hd)
                        .map(|d| q[i * qc + h * hd + d] * k[j * kc + g * hd + d])
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let den: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
            for (a, &j) in allowed.iter().enumerate() {
                let p = (sc[a] - mx).exp() / den;
                for d in 0..hd {
                    out[i * qc + h * hd + d] += p * v[j * kc + g * hd + d];
                }
            }
        }
    }
    out
}

#[test]
fn attention_gqa_and_empty_rows() {
    let mut rng = StdRng::seed_from_u64(8);
    // (T, S, heads, KV heads, head dim): GQA 4:1 and 3:1, MHA, MQA.
    for &(t, s, nh, nkv, hd) in &[
        (5, 7, 4, 1, 3),
        (6, 6, 6, 2, 5),
        (3, 4, 2, 2, 4),
        (4, 9, 3, 1, 2),
    ] {
        let mut mask: Vec<bool> = (0..t * s).map(|_| rng.random_bool(0.6)).collect();
        // Row 1 sees nothing; row 0 sees exactly one key.
        mask[s..2 * s].fill(false);
        mask[..s].fill(false);
        mask[2] = true;
        let ins = [
            mat(&mut rng, t, nh * hd, 1.5),
            mat(&mut rng, s, nkv * hd, 1.5),
            mat(&mut rng, s, nkv * hd, 1.5),
        ];
        let m2 = mask.clone();
        check(
            "attention",
            &mut rng,
            &ins,
            &|tp, v| tp.attention(v[0], v[1], v[2], &m2, nh, nkv).unwrap(),
            &|x| attn_ref(&x[0], &x[1], &x[2], &mask, t, s, nh, nkv),
            Tol {
                fwd: 1e-5,
                atol: 1e-4,
                rtol: 1e-4,
            },
        );
    }
}

#[test]
fn attention_threads_agree_on_long_causal() {
    // Big enough to take the threaded path; compared with the f64 reference.
    let mut rng = StdRng::seed_from_u64(9);
    let (t, nh, nkv, hd) = (97, 4, 1, 16);
    let q = mat(&mut rng, t, nh * hd, 1.0);
    let k = mat(&mut rng, t, nkv * hd, 1.0);
    let v = mat(&mut rng, t, nkv * hd, 1.0);
    let mask: Vec<bool> = (0..t * t).map(|i| i % t <= i / t).collect();
    let store = ParamStore::new();
    let cx = Compute::new(2);
    let mut tape = Tape::new(&store, &cx);
    let (qv, kv, vv) = (
        tape.input(q.clone()),
        tape.input(k.clone()),
        tape.input(v.clone()),
    );
    let o = tape
        .attention_keys(qv, kv, vv, KeyLists::causal(t), nh, nkv)
        .unwrap();
    let o2 = tape.attention(qv, kv, vv, &mask, nh, nkv).unwrap();
    assert_eq!(tape.value(o), tape.value(o2));
    let f = |t: &Tensor| t.data().iter().map(|&x| x as f64).collect::<Vec<_>>();
    let want = attn_ref(&f(&q), &f(&k), &f(&v), &mask, t, t, nh, nkv);
    for (g, w) in tape.value(o).iter().zip(&want) {
        assert!((*g as f64 - w).abs() < 1e-5);
    }
    let seed = rand_vec(&mut rng, t * nh * hd, 1.0);
    let g1 = tape.backward_with(o, &seed).unwrap();
    let g2 = tape.backward_with(o2, &seed).unwrap();
    for x in [qv, kv, vv] {
        let (a, b) = (g1.input(x).unwrap(), g2.input(x).unwrap());
        assert!(a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}

fn lse(z: &[f64]) -> f64 {
    let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln()
}

#[test]
fn cross_entropy_hard_and_soft() {
    let mut rng = StdRng::seed_from_u64(10);
    let (t, v) = (5, 11);
    let targets: Vec<u32> = (0..t).map(|_| rng.random_range(0..v as u32)).collect();
    let weights = [1.0f32, 0.0, 0.5, 2.0, 1.0];
    let norm = 3.5f32;
    let logits = [mat(&mut rng, t, v, 3.0)];
    let hard = |x: &[Vec<f64>]| {
        let l: f64 = (0..t)
            .map(|r| {
                let z = &x[0][r * v..(r + 1) * v];
                weights[r] as f64 * (lse(z) - z[targets[r] as usize])
            })
            .sum();
        vec![l / norm as f64]
    };
    let tg = targets.clone();
    check(
        "ce hard",
        &mut rng,
        &logits,
        &|tp, x| {
            tp.softmax_cross_entropy_hard(x[0], &tg, &weights, norm)
                .unwrap()
        },
        &hard,
        TIGHT,
    );
    let mut probs = rand_vec(&mut rng, t * v, 1.0)
        .iter()
        .map(|x| x.abs())
        .collect::<Vec<f32>>();
    for r in probs.chunks_mut(v) {
        let s: f32 = r.iter().sum();
        r.iter_mut().for_each(|p| *p /= s);
    }
    probs[3] = 0.0;
    let soft = |x: &[Vec<f64>]| {
        let l: f64 = (0..t)
            .map(|r| {
                let z = &x[0][r * v..(r + 1) * v];
                let ls = lse(z);
                weights[r] as f64
                    * (0..v)
                        .map(|j| probs[r * v + j] as f64 * (ls - z[j]))
                        .sum::<f64>()
            })
            .sum();
        vec![l / norm as f64]
    };
    let p2 = probs.clone();
    let p2: &'static [f32] = Box::leak(p2.into_boxed_slice());
    check(
        "ce soft",
        &mut rng,
        &logits,
        &|tp, x| {
            tp.softmax_cross_entropy_soft(x[0], p2, &weights, norm)
                .unwrap()
        },
        &soft,
        TIGHT,
    );
}

#[test]
fn composite_mlp_through_params() {
    // A small Llama MLP block through the ParamStore path: grads land on params, frozen ones
    // get none, and agree with the f64 finite difference of the composed reference.
    let mut rng = StdRng::seed_from_u64(11);
    let (t, h, i) = (4, 6, 10);
    let mut store = ParamStore::new();
    let gate = store
        .insert("gate", mat(&mut rng, i, h, 0.5), true)
        .unwrap();
    let up = store.insert("up", mat(&mut rng, i, h, 0.5), true).unwrap();
    let down = store
        .insert("down", mat(&mut rng, h, i, 0.5), false)
        .unwrap();
    let x = mat(&mut rng, t, h, 1.0);
    let cx = Compute::new(1);
    let run = |store: &ParamStore| -> (f32, peregrine_train::ParamGrads) {
        let mut tape = Tape::new(store, &cx);
        let xv = tape.constant(x.clone());
        let (g, u, d) = (tape.param(gate), tape.param(up), tape.param(down));
        let a = tape.linear(xv, g, None).unwrap();
        let a = tape.silu(a).unwrap();
        let b = tape.linear(xv, u, None).unwrap();
        let m = tape.mul(a, b).unwrap();
        let y = tape.linear(m, d, None).unwrap();
        let y2 = tape.mul(y, y).unwrap();
        let l = tape.mean(y2).unwrap();
        (tape.scalar(l).unwrap(), tape.backward(l).unwrap())
    };
    let (_, grads) = run(&store);
    assert!(
        grads.get(down).is_none(),
        "frozen parameter has no gradient"
    );
    let g_gate = grads.get(gate).unwrap().to_vec();
    store.accumulate(&grads).unwrap();
    assert_eq!(store.grad(gate), &g_gate[..]);
    // Finite differences in f32 at a few coordinates (loose: f32 forward).
    for e in [0usize, 7, 23, 59] {
        let orig = store.value(gate).data()[e];
        let hh = 1e-2f32;
        store.value_mut(gate).data_mut()[e] = orig + hh;
        let (lp, _) = run(&store);
        store.value_mut(gate).data_mut()[e] = orig - hh;
        let (lm, _) = run(&store);
        store.value_mut(gate).data_mut()[e] = orig;
        let fd = (lp - lm) / (2.0 * hh);
        assert!(
            (fd - g_gate[e]).abs() < 2e-3 + 2e-2 * fd.abs(),
            "gate[{e}]: {fd} vs {}",
            g_gate[e]
        );
    }
}

#[test]
fn shape_errors_are_errors() {
    let store = ParamStore::new();
    let cx = Compute::new(1);
    let mut tape = Tape::new(&store, &cx);
    let a = tape.input(Tensor::zeros(Shape::matrix(2, 3)));
    let b = tape.input(Tensor::zeros(Shape::matrix(3, 2)));
    assert!(tape.add(a, b).is_err());
    assert!(tape.linear(a, b, None).is_err());
    assert!(tape.rope(a, &[0, 1], 2, 1e4).is_err());
    assert!(tape.attention(a, b, b, &[true; 6], 1, 1).is_err());
    assert!(tape
        .softmax_cross_entropy_hard(a, &[0, 5], &[1.0, 1.0], 1.0)
        .is_err());
    assert!(tape
        .softmax_cross_entropy_hard(a, &[0, 1], &[1.0, 1.0], 0.0)
        .is_err());
    assert!(tape.backward(a).is_err(), "backward needs a scalar");
}
