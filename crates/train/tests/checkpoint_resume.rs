//! Resuming from a checkpoint continues bit-exactly; bf16 export loads back.

use peregrine_train::{
    clip_grad_norm, export_bf16, load_checkpoint, load_params, save_checkpoint, AdamW, AdamWConfig,
    Compute, LrSchedule, ParamStore, Tape, Tensor,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("peregrine-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn model(seed: u64) -> ParamStore {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut s = ParamStore::new();
    let mut m = |r: usize, c: usize| {
        Tensor::matrix(
            r,
            c,
            (0..r * c).map(|_| rng.random_range(-0.5..0.5)).collect(),
        )
        .unwrap()
    };
    s.insert("l1.weight", m(16, 8), true).unwrap();
    s.insert("l2.weight", m(5, 16), true).unwrap();
    s.insert("norm.weight", Tensor::vector(vec![1.0; 16]), true)
        .unwrap();
    s
}

/// One step on a batch derived from the step number only.
fn train_step(store: &mut ParamStore, adam: &mut AdamW, sched: &LrSchedule, cx: &Compute) -> f32 {
    let step = adam.n_steps();
    let mut rng = StdRng::seed_from_u64(1000 + step);
    let x = Tensor::matrix(6, 8, (0..48).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap();
    let y: Vec<u32> = (0..6).map(|_| rng.random_range(0..5)).collect();
    store.zero_grads();
    let grads = {
        let mut tape = Tape::new(store, cx);
        let xv = tape.constant(x);
        let (w1, w2, n) = (
            tape.param_named("l1.weight").unwrap(),
            tape.param_named("l2.weight").unwrap(),
            tape.param_named("norm.weight").unwrap(),
        );
        let h = tape.linear(xv, w1, None).unwrap();
        let h = tape.silu(h).unwrap();
        let h = tape.rms_norm(h, n, 1e-6).unwrap();
        let z = tape.linear(h, w2, None).unwrap();
        let l = tape
            .softmax_cross_entropy_hard(z, &y, &[1.0; 6], 6.0)
            .unwrap();
        tape.backward(l).unwrap()
    };
    store.accumulate(&grads).unwrap();
    let norm = clip_grad_norm(store, 0.5);
    adam.step(store, sched.lr(step)).unwrap();
    norm
}

#[test]
fn resume_is_bit_exact() {
    let cx = Compute::new(1);
    let cfg = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    let sched = LrSchedule {
        peak: 3e-2,
        floor: 1e-3,
        warmup_steps: 3,
        total_steps: 20,
    };
    let n = 12;

    let mut straight = model(5);
    let mut adam = AdamW::new(cfg, &straight).unwrap();
    for _ in 0..n {
        train_step(&mut straight, &mut adam, &sched, &cx);
    }

    let mut first = model(5);
    let mut adam1 = AdamW::new(cfg, &first).unwrap();
    for _ in 0..n / 2 {
        train_step(&mut first, &mut adam1, &sched, &cx);
    }
    let path = tmp("resume.safetensors");
    let meta = BTreeMap::from([("run".to_string(), "test".to_string())]);
    save_checkpoint(&path, &first, &adam1, &sched, &meta).unwrap();
    drop(first);

    let mut resumed = model(99); // different init: everything must come from the file
    let r = load_checkpoint(&path, &mut resumed).unwrap();
    assert_eq!(r.metadata, meta);
    assert_eq!(r.schedule, sched);
    assert_eq!(r.adam.config(), &cfg);
    assert_eq!(r.adam.n_steps(), n / 2);
    let mut adam2 = r.adam;
    for _ in 0..n / 2 {
        train_step(&mut resumed, &mut adam2, &sched, &cx);
    }
    for id in straight.ids() {
        let (a, b) = (straight.value(id).data(), resumed.value(id).data());
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{} differs after resume",
            straight.name(id)
        );
    }
    assert!(save_checkpoint(
        &path,
        &straight,
        &adam,
        &sched,
        &BTreeMap::from([("step".into(), "1".into())])
    )
    .is_err());
}

#[test]
fn bf16_export_loads_back() {
    let store = model(3);
    let path = tmp("export.safetensors");
    let meta = BTreeMap::from([("architecture".to_string(), "toy".to_string())]);
    export_bf16(&path, &store, &meta).unwrap();
    let mut back = model(4);
    let got = load_params(&path, &mut back).unwrap();
    assert_eq!(got, meta);
    for id in store.ids() {
        for (a, b) in store.value(id).data().iter().zip(back.value(id).data()) {
            assert!(
                (a - b).abs() <= a.abs() / 256.0,
                "bf16 keeps 8 bits of mantissa"
            );
            assert_eq!(*b, half::bf16::from_f32(*a).to_f32());
        }
    }
    // A training checkpoint is not accepted where the format is wrong, and vice versa.
    assert!(load_checkpoint(&path, &mut back).is_err());
    let mut wrong = ParamStore::new();
    wrong
        .insert(
            "l1.weight",
            Tensor::zeros(peregrine_train::Shape::matrix(8, 16)),
            true,
        )
        .unwrap();
    assert!(
        load_params(&path, &mut wrong).is_err(),
        "shape mismatch is an error"
    );
    assert!(load_params(&tmp("missing.safetensors"), &mut wrong).is_err());
}
