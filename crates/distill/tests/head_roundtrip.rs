//! A head trained here runs at inference as it was trained: the file `write_eagle3_head` writes
//! loads in the speculative engine's EAGLE loader, and the engine's head forward (its own code,
//! with a KV cache) gives the training tape's logits — for target-fed rows (TTT step 0) and for
//! a drafted row (TTT step 1: self-fed feature, attending to the real context and itself), which
//! is the correspondence the training-time test relies on.

use peregrine_distill::draft_vocab::DraftVocab;
use peregrine_distill::head_file::write_eagle3_head;
use peregrine_model::Model;
use peregrine_spec::eagle::{HeadCache, HeadInput, HeadLogits, HeadRows, HeadWorkspace};
use peregrine_spec::{EagleHead, HeadOptions};
use peregrine_tensor::ThreadPool;
use peregrine_train::{Compute, Eagle3Config, Eagle3Head, Tape, TttConfig, TttSequence};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;

#[test]
fn the_engine_runs_a_written_head_as_the_training_tape_does() {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 1).expect("model loads");
    let c = model.config();
    let (h, vd, t) = (c.hidden_size, 256, 7);
    let config = Eagle3Config {
        hidden: h,
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        intermediate: 128,
        draft_vocab: vd,
        rms_norm_eps: c.rms_norm_eps,
        rope_theta: c.rope_base,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut head = Eagle3Head::init(config, &mut rng, None, None).unwrap();
    // The file stores bf16: round the tape's weights the same way so both sides see one model.
    let store = head.store_mut();
    for id in store.ids().collect::<Vec<_>>() {
        let v: Vec<f32> = store
            .value(id)
            .data()
            .iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect();
        store.set_value(id, &v).unwrap();
    }
    let counts: Vec<u64> = (0..c.vocab_size as u64)
        .map(|i| (i * 7919) % 1000)
        .collect();
    let vocab = DraftVocab::most_frequent(&counts, vd).unwrap();
    let dir = std::env::temp_dir().join(format!("peregrine-head-roundtrip-{}", std::process::id()));
    let path = dir.join("head.safetensors");
    let layers = [2, c.n_layers / 2, c.n_layers - 3];
    write_eagle3_head(&path, &head, &vocab, &layers, &BTreeMap::new()).unwrap();

    let features: Vec<f32> = (0..t * 3 * h)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let embeds: Vec<f32> = (0..(t + 1) * h)
        .map(|_| rng.random_range(-0.3..0.3))
        .collect();
    let probs = vec![1.0 / vd as f32; (t + 2) * vd];
    let mask = vec![1.0; t + 2];
    let seq = TttSequence {
        features: &features,
        embeddings: &embeds,
        target_probs: &probs,
        loss_mask: &mask,
    };
    let ttt = TttConfig {
        steps: 2,
        step_decay: 0.8,
    };
    let cx = Compute::new(1);
    let norms = head.ttt_normalisers(&[seq], &ttt).unwrap();
    let mut tape = Tape::new(head.store(), &cx);
    let graph = head.ttt_forward(&mut tape, &seq, &ttt, &norms).unwrap();
    let step0 = tape.value(graph.steps[0].logits).to_vec();
    let out0 = tape.value(graph.steps[0].features).to_vec();
    let step1 = tape.value(graph.steps[1].logits).to_vec();

    let loaded = EagleHead::load(&path, c, HeadOptions { quantize: None }).unwrap();
    assert_eq!(loaded.config().feature_layers, layers);
    for d in [0, 17, vd - 1] {
        assert_eq!(loaded.target_id(d), vocab.to_target[d]);
    }
    let pool = ThreadPool::new(1);
    let mut cache = HeadCache::new(&loaded, t + 4);
    let mut ws = HeadWorkspace::new(&loaded, t, &cache, 1);
    let positions: Vec<u32> = (0..t as u32).collect();
    let rows = HeadRows {
        input: HeadInput::Target {
            features: &features,
        },
        embeds: &embeds[..t * h],
        positions: &positions,
        logits: HeadLogits::All,
    };
    loaded
        .forward(&pool, None, &mut ws, &mut cache, &rows)
        .unwrap();
    let close = |got: &[f32], want: &[f32], what: &str| {
        let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-4 * scale,
                "{what}[{i}]: engine {g}, tape {w}"
            );
        }
    };
    for r in 0..t {
        close(
            ws.logits(r),
            &step0[r * vd..(r + 1) * vd],
            &format!("row {r} logits"),
        );
        close(
            ws.out(r),
            &out0[r * h..(r + 1) * h],
            &format!("row {r} output"),
        );
    }
    // The last row's depth-1 draft: fed its own output, the next token's embedding, position t.
    let last = t - 1;
    let parent_out = out0[last * h..(last + 1) * h].to_vec();
    let drafted = HeadRows {
        input: HeadInput::Drafted {
            parent_out: &parent_out,
            parents: &[None],
        },
        embeds: &embeds[(last + 1) * h..(last + 2) * h],
        positions: &[t as u32],
        logits: HeadLogits::All,
    };
    loaded
        .forward(&pool, None, &mut ws, &mut cache, &drafted)
        .unwrap();
    close(
        ws.logits(0),
        &step1[last * vd..(last + 1) * vd],
        "drafted row logits",
    );
    std::fs::remove_dir_all(&dir).ok();
}
