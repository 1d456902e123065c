//! The tape's EAGLE-3 head against an independent naive f64 implementation (loops over rows,
//! heads and keys): step-0 logits, the full TTT loss of a two-sequence batch, and f64 finite
//! differences of that loss with respect to elements of every parameter.

// The f64 references are written as plain index loops on purpose (read like the maths).
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use peregrine_train::eagle3::{ttt::step_keys, PARAM_NAMES};
use peregrine_train::{Compute, Eagle3Config, Eagle3Head, Tape, TttConfig, TttSequence};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

fn cfg() -> Eagle3Config {
    Eagle3Config {
        hidden: 12,
        n_heads: 3,
        n_kv_heads: 1,
        intermediate: 10,
        draft_vocab: 11,
        rms_norm_eps: 1e-5,
        rope_theta: 1000.0,
    }
}

struct Seq {
    f: Vec<f32>,
    e: Vec<f32>,
    p: Vec<f32>,
    w: Vec<f32>,
}

impl Seq {
    fn random(rng: &mut StdRng, c: &Eagle3Config, t: usize, n_e: usize, n_p: usize) -> Seq {
        let h = c.hidden;
        let mut r = |n: usize, s: f32| {
            (0..n)
                .map(|_| rng.random_range(-s..s))
                .collect::<Vec<f32>>()
        };
        let f = r(t * 3 * h, 1.0);
        let e = r(n_e * h, 1.0);
        let mut p: Vec<f32> = r(n_p * c.draft_vocab, 1.0)
            .iter()
            .map(|x| x.abs() + 0.01)
            .collect();
        for row in p.chunks_mut(c.draft_vocab) {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= s);
        }
        let w: Vec<f32> = (0..n_p)
            .map(|j| if j % 4 == 2 { 0.0 } else { 1.0 })
            .collect();
        Seq { f, e, p, w }
    }
    fn view(&self) -> TttSequence<'_> {
        TttSequence {
            features: &self.f,
            embeddings: &self.e,
            target_probs: &self.p,
            loss_mask: &self.w,
        }
    }
}

/// Parameters as f64, by name.
type Params = BTreeMap<String, Vec<f64>>;

fn params_of(head: &Eagle3Head) -> Params {
    let s = head.store();
    s.ids()
        .map(|id| {
            (
                s.name(id).to_string(),
                s.value(id).data().iter().map(|&x| x as f64).collect(),
            )
        })
        .collect()
}

fn lin(w: &[f64], x: &[f64]) -> Vec<f64> {
    let k = x.len();
    w.chunks(k)
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

fn rms(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * r * b).collect()
}

fn rope(x: &mut [f64], pos: usize, hd: usize, theta: f64) {
    let half = hd / 2;
    for head in x.chunks_mut(hd) {
        for i in 0..half {
            let a = pos as f64 * theta.powf(-2.0 * i as f64 / hd as f64);
            let (x1, x2) = (head[i], head[i + half]);
            head[i] = x1 * a.cos() - x2 * a.sin();
            head[i + half] = x2 * a.cos() + x1 * a.sin();
        }
    }
}

struct RefOut {
    loss: f64,
    /// Logits per step, per row.
    logits: Vec<Vec<Vec<f64>>>,
}

/// Naive TTT of one sequence; `norms[s]` divides step `s`'s weighted CE.
fn reference(
    c: &Eagle3Config,
    p: &Params,
    seq: &Seq,
    steps: usize,
    decay: f64,
    norms: &[f64],
) -> RefOut {
    let (h, vd, nh, nkv) = (c.hidden, c.draft_vocab, c.n_heads, c.n_kv_heads);
    let hd = h / nh;
    let eps = c.rms_norm_eps as f64;
    let theta = c.rope_theta as f64;
    let t_rows = seq.f.len() / (3 * h);
    let n_e = seq.e.len() / h;
    let n_p = seq.w.len();
    let f64v = |x: &[f32]| x.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let mut g: Vec<Vec<f64>> = (0..t_rows)
        .map(|t| lin(&p["fc.weight"], &f64v(&seq.f[t * 3 * h..(t + 1) * 3 * h])))
        .collect();
    let mut ks: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut vs: Vec<Vec<Vec<f64>>> = Vec::new();
    let mut out = RefOut {
        loss: 0.0,
        logits: Vec::new(),
    };
    for s in 0..steps {
        let mut qs = Vec::new();
        let (mut kstep, mut vstep) = (Vec::new(), Vec::new());
        for t in 0..t_rows {
            let e = if t + s < n_e {
                f64v(&seq.e[(t + s) * h..(t + s + 1) * h])
            } else {
                vec![0.0; h]
            };
            let mut u = rms(&e, &p["midlayer.input_layernorm.weight"], eps);
            u.extend(rms(&g[t], &p["midlayer.hidden_norm.weight"], eps));
            let mut q = lin(&p["midlayer.self_attn.q_proj.weight"], &u);
            let mut k = lin(&p["midlayer.self_attn.k_proj.weight"], &u);
            let v = lin(&p["midlayer.self_attn.v_proj.weight"], &u);
            rope(&mut q, t + s, hd, theta);
            rope(&mut k, t + s, hd, theta);
            qs.push(q);
            kstep.push(k);
            vstep.push(v);
        }
        ks.push(kstep);
        vs.push(vstep);
        let mut new_g = Vec::new();
        let mut step_logits = Vec::new();
        for t in 0..t_rows {
            let keys: Vec<(usize, usize)> = (0..=t)
                .map(|r| (0, r))
                .chain((1..=s).map(|j| (j, t)))
                .collect();
            let mut attn = vec![0f64; nh * hd];
            for head in 0..nh {
                let gk = head / (nh / nkv);
                let q = &qs[t][head * hd..(head + 1) * hd];
                let sc: Vec<f64> = keys
                    .iter()
                    .map(|&(j, r)| {
                        q.iter()
                            .zip(&ks[j][r][gk * hd..(gk + 1) * hd])
                            .map(|(a, b)| a * b)
                            .sum::<f64>()
                            / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let den: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                for (i, &(j, r)) in keys.iter().enumerate() {
                    let pr = (sc[i] - mx).exp() / den;
                    for d in 0..hd {
                        attn[head * hd + d] += pr * vs[j][r][gk * hd + d];
                    }
                }
            }
            let a = lin(&p["midlayer.self_attn.o_proj.weight"], &attn);
            let hres: Vec<f64> = g[t].iter().zip(&a).map(|(x, y)| x + y).collect();
            let x = rms(&hres, &p["midlayer.post_attention_layernorm.weight"], eps);
            let gate = lin(&p["midlayer.mlp.gate_proj.weight"], &x);
            let up = lin(&p["midlayer.mlp.up_proj.weight"], &x);
            let m: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let dn = lin(&p["midlayer.mlp.down_proj.weight"], &m);
            let o: Vec<f64> = hres.iter().zip(&dn).map(|(x, y)| x + y).collect();
            let z = lin(&p["lm_head.weight"], &rms(&o, &p["norm.weight"], eps));
            let w = if t + s < n_e && t + s + 1 < n_p {
                seq.w[t + s + 1] as f64
            } else {
                0.0
            };
            if w > 0.0 {
                let mx = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
                let pr = &seq.p[(t + s + 1) * vd..(t + s + 2) * vd];
                let ce: f64 = pr.iter().zip(&z).map(|(p, z)| *p as f64 * (lse - z)).sum();
                out.loss += decay.powi(s as i32) * w * ce / norms[s];
            }
            step_logits.push(z);
            new_g.push(o);
        }
        out.logits.push(step_logits);
        g = new_g;
    }
    out
}

fn head(rng: &mut StdRng) -> Eagle3Head {
    let c = cfg();
    let lm: Vec<f32> = (0..c.draft_vocab * c.hidden)
        .map(|_| rng.random_range(-0.5..0.5))
        .collect();
    let norm: Vec<f32> = (0..c.hidden).map(|_| rng.random_range(0.5..1.5)).collect();
    let mut head = Eagle3Head::init(c, rng, Some(&lm), Some(&norm)).unwrap();
    // Random (non-unit) norm weights, so their gradients and roles are exercised.
    let store = head.store_mut();
    for id in store.ids().collect::<Vec<_>>() {
        if store.value(id).shape().is_vector() {
            let v: Vec<f32> = store
                .value(id)
                .data()
                .iter()
                .map(|x| x * rng.random_range(0.6..1.4))
                .collect();
            store.set_value(id, &v).unwrap();
        }
    }
    head
}

#[test]
fn step0_logits_match_naive_f64() {
    let mut rng = StdRng::seed_from_u64(21);
    let head = head(&mut rng);
    let c = cfg();
    let seq = Seq::random(&mut rng, &c, 7, 7, 8);
    let cx = Compute::new(1);
    let mut tape = Tape::new(head.store(), &cx);
    let ttt = TttConfig {
        steps: 1,
        step_decay: 0.8,
    };
    let norms = head.ttt_normalisers(&[seq.view()], &ttt).unwrap();
    let graph = head
        .ttt_forward(&mut tape, &seq.view(), &ttt, &norms)
        .unwrap();
    let want = reference(&c, &params_of(&head), &seq, 1, 0.8, &[norms[0] as f64]);
    let got = tape.value(graph.steps[0].logits);
    for t in 0..7 {
        for v in 0..c.draft_vocab {
            let (g, w) = (got[t * c.draft_vocab + v] as f64, want.logits[0][t][v]);
            assert!(
                (g - w).abs() < 1e-5 * (1.0 + w.abs()),
                "row {t} token {v}: {g} vs {w}"
            );
        }
    }
    let l = tape.scalar(graph.loss).unwrap() as f64;
    assert!(
        (l - want.loss).abs() < 1e-5 * (1.0 + want.loss.abs()),
        "{l} vs {}",
        want.loss
    );
}

#[test]
fn ttt_loss_and_gradients_match_f64_finite_differences() {
    let mut rng = StdRng::seed_from_u64(22);
    let mut head = head(&mut rng);
    let c = cfg();
    let steps = 3;
    let ttt = TttConfig {
        steps,
        step_decay: 0.8,
    };
    // One sequence covering every step, one that ends early (natural sizes n_e = T, n_p = T+1).
    let seqs = [
        Seq::random(&mut rng, &c, 6, 6 + steps - 1, 6 + steps),
        Seq::random(&mut rng, &c, 5, 5, 6),
    ];
    let views: Vec<TttSequence<'_>> = seqs.iter().map(Seq::view).collect();
    let norms: Vec<f64> = head
        .ttt_normalisers(&views, &ttt)
        .unwrap()
        .iter()
        .map(|&x| x as f64)
        .collect();
    let ref_loss = |p: &Params| {
        seqs.iter()
            .map(|s| reference(&c, p, s, steps, 0.8, &norms).loss)
            .sum::<f64>()
    };

    let cx = Compute::new(2);
    head.store_mut().zero_grads();
    let stats = head.ttt_train_batch(&cx, &views, &ttt).unwrap();
    let p0 = params_of(&head);
    let want = ref_loss(&p0);
    assert!(
        (stats.loss - want).abs() < 1e-5 * (1.0 + want.abs()),
        "loss {} vs {want}",
        stats.loss
    );
    assert_eq!(stats.step_loss.len(), steps);
    assert!(stats.step_accuracy.iter().all(|a| (0.0..=1.0).contains(a)));
    let decayed: f64 = stats
        .step_loss
        .iter()
        .enumerate()
        .map(|(s, l)| 0.8f64.powi(s as i32) * l)
        .sum();
    assert!((decayed - stats.loss).abs() < 1e-5);

    let h = 1e-6;
    for name in PARAM_NAMES {
        let id = head.store().id(name).unwrap();
        let grad = head.store().grad(id).to_vec();
        let n = grad.len();
        for e in [0, n / 3, n - 1] {
            let mut p = p0.clone();
            p.get_mut(name).unwrap()[e] += h;
            let lp = ref_loss(&p);
            p.get_mut(name).unwrap()[e] -= 2.0 * h;
            let lm = ref_loss(&p);
            let fd = (lp - lm) / (2.0 * h);
            assert!(
                (grad[e] as f64 - fd).abs() <= 2e-5 + 1e-3 * fd.abs(),
                "d loss / d {name}[{e}]: tape {} vs finite difference {fd}",
                grad[e]
            );
        }
    }
}

#[test]
fn step_mask_is_context_plus_own_ancestors() {
    let k = step_keys(3, 2);
    assert_eq!(k.n_keys(), 9);
    assert_eq!(k.row(0), &[0, 3, 6]);
    assert_eq!(k.row(2), &[0, 1, 2, 5, 8]);
    assert_eq!(step_keys(4, 0).row(3), &[0, 1, 2, 3]);
}

#[test]
fn bf16_save_load_uses_public_names() {
    let mut rng = StdRng::seed_from_u64(23);
    let head = head(&mut rng);
    let dir = std::env::temp_dir().join(format!("peregrine-train-e3-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("head.safetensors");
    head.save_bf16(&path, &BTreeMap::from([("eagle".into(), "3".into())]))
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut want: Vec<String> = PARAM_NAMES.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(
        st.tensor("midlayer.self_attn.q_proj.weight")
            .unwrap()
            .shape(),
        &[12, 24]
    );
    assert_eq!(st.tensor("fc.weight").unwrap().shape(), &[12, 36]);
    let mut other = Eagle3Head::init(cfg(), &mut rng, None, None).unwrap();
    other.load(&path).unwrap();
    let id = other.store().id("lm_head.weight").unwrap();
    let a = head.store().value(id).data()[5];
    assert_eq!(
        other.store().value(id).data()[5],
        half::bf16::from_f32(a).to_f32()
    );
}

#[test]
fn bad_inputs_are_errors() {
    let mut rng = StdRng::seed_from_u64(24);
    let mut head = head(&mut rng);
    let c = cfg();
    let seq = Seq::random(&mut rng, &c, 4, 4, 5);
    let cx = Compute::new(1);
    let ttt = TttConfig::default();
    let mut bad = seq.view();
    bad.features = &seq.f[..seq.f.len() - 1];
    assert!(head.ttt_train_batch(&cx, &[bad], &ttt).is_err());
    let mut bad = seq.view();
    bad.embeddings = &seq.e[..c.hidden * 3];
    assert!(head.ttt_train_batch(&cx, &[bad], &ttt).is_err());
    let mut bad = seq.view();
    bad.loss_mask = &seq.w[..2];
    assert!(head.ttt_train_batch(&cx, &[bad], &ttt).is_err());
    let bad_cfg = Eagle3Config {
        n_kv_heads: 2,
        ..cfg()
    };
    assert!(Eagle3Head::init(bad_cfg, &mut rng, None, None).is_err());
    assert!(Eagle3Head::init(cfg(), &mut rng, Some(&[0.0; 3]), None).is_err());
}
