//! Loading EAGLE heads: both public layouts load (written here with the formats crate's
//! safetensors writer), and heads that do not fit the target are rejected at load time with
//! an error naming the tensor and the expected shape (or what is wrong with the vocabulary
//! maps or metadata).

use peregrine_formats::safetensors_io::{Dtype, SafetensorsFile, SafetensorsWriter};
use peregrine_formats::ModelConfig;
use peregrine_spec::eagle::{EagleHead, EagleKind, HeadOptions};
use peregrine_spec::Error;

const H: usize = 64;
const NH: usize = 4;
const NKV: usize = 2;
const HD: usize = 16;
const I: usize = 128;
const V: usize = 300;
const VD: usize = 32;

fn target() -> ModelConfig {
    ModelConfig {
        architecture: "llama".into(),
        n_layers: 12,
        n_heads: NH,
        n_kv_heads: NKV,
        head_dim: HD,
        hidden_size: H,
        ffn_size: 256,
        rope_base: 10000.0,
        rope_scaling: None,
        rms_norm_eps: 1e-5,
        vocab_size: V,
        context_length: 128,
        tied_embeddings: true,
    }
}

/// A head as (name, dtype, shape, raw bytes) entries, so tests can break any of them.
struct Parts {
    tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)>,
    metadata: Vec<(String, String)>,
}

impl Parts {
    fn f(&mut self, name: &str, shape: &[usize]) {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 97) as f32 - 48.0) / 480.0)
            .collect();
        let bytes = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        self.tensors
            .push((name.into(), Dtype::BF16, shape.to_vec(), bytes));
    }

    fn set(&mut self, name: &str, dtype: Dtype, shape: &[usize], bytes: Vec<u8>) {
        self.tensors.retain(|t| t.0 != name);
        self.tensors
            .push((name.into(), dtype, shape.to_vec(), bytes));
    }

    fn remove(&mut self, name: &str) {
        self.tensors.retain(|t| t.0 != name);
    }

    fn reshape(&mut self, name: &str, shape: &[usize]) {
        self.remove(name);
        self.f(name, shape);
    }

    fn bytes(&self) -> Vec<u8> {
        let mut w = SafetensorsWriter::new();
        for (name, dtype, shape, bytes) in &self.tensors {
            w.add_raw(name.clone(), *dtype, shape, bytes.clone())
                .unwrap();
        }
        for (k, v) in &self.metadata {
            w.add_metadata(k.clone(), v.clone());
        }
        w.to_bytes().unwrap()
    }

    fn load(&self) -> peregrine_spec::Result<EagleHead> {
        let file = SafetensorsFile::parse_bytes(self.bytes(), "head.safetensors").unwrap();
        EagleHead::from_safetensors(&file, &target(), HeadOptions::default())
    }
}

fn d2t_t2d(targets: &[usize]) -> (Vec<u8>, Vec<u8>) {
    let d2t = targets
        .iter()
        .enumerate()
        .flat_map(|(i, &t)| (t as i64 - i as i64).to_le_bytes())
        .collect();
    let mut t2d = vec![0u8; V];
    targets.iter().filter(|&&t| t < V).for_each(|&t| t2d[t] = 1);
    (d2t, t2d)
}

fn eagle3() -> Parts {
    let mut p = Parts {
        tensors: Vec::new(),
        metadata: Vec::new(),
    };
    p.f("fc.weight", &[H, 3 * H]);
    p.f("midlayer.input_layernorm.weight", &[H]);
    p.f("midlayer.hidden_norm.weight", &[H]);
    p.f("midlayer.self_attn.q_proj.weight", &[NH * HD, 2 * H]);
    p.f("midlayer.self_attn.k_proj.weight", &[NKV * HD, 2 * H]);
    p.f("midlayer.self_attn.v_proj.weight", &[NKV * HD, 2 * H]);
    p.f("midlayer.self_attn.o_proj.weight", &[H, NH * HD]);
    p.f("midlayer.post_attention_layernorm.weight", &[H]);
    p.f("midlayer.mlp.gate_proj.weight", &[I, H]);
    p.f("midlayer.mlp.up_proj.weight", &[I, H]);
    p.f("midlayer.mlp.down_proj.weight", &[H, I]);
    p.f("norm.weight", &[H]);
    p.f("lm_head.weight", &[VD, H]);
    let targets: Vec<usize> = (0..VD).map(|i| i * 9 + 1).collect();
    let (d2t, t2d) = d2t_t2d(&targets);
    p.set("d2t", Dtype::I64, &[VD], d2t);
    p.set("t2d", Dtype::BOOL, &[V], t2d);
    p
}

fn eagle1() -> Parts {
    let mut p = Parts {
        tensors: Vec::new(),
        metadata: Vec::new(),
    };
    p.f("fc.weight", &[H, 2 * H]);
    p.f("fc.bias", &[H]);
    p.f("embed_tokens.weight", &[V, H]); // some checkpoints carry it; unused
    p.f("layers.0.input_layernorm.weight", &[H]);
    p.f("layers.0.self_attn.q_proj.weight", &[NH * HD, H]);
    p.f("layers.0.self_attn.k_proj.weight", &[NKV * HD, H]);
    p.f("layers.0.self_attn.v_proj.weight", &[NKV * HD, H]);
    p.f("layers.0.self_attn.o_proj.weight", &[H, NH * HD]);
    p.f("layers.0.post_attention_layernorm.weight", &[H]);
    p.f("layers.0.mlp.gate_proj.weight", &[I, H]);
    p.f("layers.0.mlp.up_proj.weight", &[I, H]);
    p.f("layers.0.mlp.down_proj.weight", &[H, I]);
    p
}

#[test]
fn public_layouts_load() {
    let head = eagle3().load().unwrap();
    let c = head.config();
    assert_eq!(c.kind, EagleKind::Eagle3);
    assert_eq!((c.draft_vocab, c.ffn_size), (VD, I));
    assert_eq!(c.feature_layers, [2, 6, 9]);
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-5, 10000.0));
    assert_eq!(head.target_id(3), 28);

    let mut p = eagle3();
    p.metadata = vec![
        ("feature_layers".into(), "1,5,12".into()),
        ("rope_theta".into(), "500000".into()),
        ("rms_norm_eps".into(), "1e-6".into()),
    ];
    let c = p.load().unwrap().config().clone();
    assert_eq!(c.feature_layers, [1, 5, 12]);
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-6, 500000.0));

    // A full-vocabulary EAGLE-3 head needs no maps.
    let mut p = eagle3();
    p.reshape("lm_head.weight", &[V, H]);
    p.remove("d2t");
    p.remove("t2d");
    let head = p.load().unwrap();
    assert_eq!((head.config().draft_vocab, head.target_id(7)), (V, 7));

    let head = eagle1().load().unwrap();
    let c = head.config();
    assert_eq!(c.kind, EagleKind::Eagle1);
    assert_eq!((c.draft_vocab, c.feature_layers.as_slice()), (V, &[12][..]));
}

/// Loads `p` and returns the error's message, after checking it is the expected variant.
fn err(p: &Parts, is_variant: fn(&Error) -> bool) -> String {
    match p.load() {
        Ok(_) => panic!("a bad head loaded"),
        Err(e) => {
            assert!(is_variant(&e), "unexpected variant: {e:?}");
            e.to_string()
        }
    }
}

#[test]
fn shapes_that_do_not_fit_the_target_are_rejected() {
    let shape = |e: &Error| matches!(e, Error::HeadShape { .. });
    let cases: Vec<(Parts, &str)> = vec![
        ({ let mut p = eagle3(); p.reshape("fc.weight", &[H, 2 * H]); p }, "\"fc.weight\" has shape [64, 128], expected [64, 192]"),
        ({ let mut p = eagle3(); p.reshape("midlayer.self_attn.k_proj.weight", &[3 * HD, 2 * H]); p }, "\"midlayer.self_attn.k_proj.weight\" has shape [48, 128], expected [32, 128] (target: 4 heads x 16, 2 KV heads"),
        ({ let mut p = eagle3(); p.reshape("midlayer.self_attn.q_proj.weight", &[NH * HD, H]); p }, "expected [64, 128]"),
        ({ let mut p = eagle3(); p.reshape("midlayer.mlp.down_proj.weight", &[H, I + 32]); p }, "\"midlayer.mlp.down_proj.weight\" has shape [64, 160], expected [64, 128]"),
        ({ let mut p = eagle3(); p.reshape("norm.weight", &[H + 1]); p }, "\"norm.weight\" has shape [65], expected [64]"),
        ({ let mut p = eagle3(); p.reshape("lm_head.weight", &[V + 1, H]); p }, "\"lm_head.weight\" has shape [301, 64]"),
        ({ let mut p = eagle1(); p.reshape("fc.weight", &[H, 3 * H]); p }, "\"fc.weight\" has shape [64, 192], expected [64, 128]"),
        ({ let mut p = eagle1(); p.reshape("layers.0.self_attn.q_proj.weight", &[NH * HD, 2 * H]); p }, "expected [64, 64]"),
    ];
    for (p, want) in cases {
        let msg = err(&p, shape);
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
        assert!(msg.starts_with("head.safetensors: "), "{msg}");
    }
    // More feature layers than fc's input holds.
    let mut p = eagle3();
    p.metadata = vec![("feature_layers".into(), "2,6".into())];
    let msg = err(&p, shape);
    assert!(
        msg.contains("\"fc.weight\" has shape [64, 192], expected [64, 128]")
            && msg.contains("2 feature layers"),
        "{msg}"
    );
}

#[test]
fn missing_tensors_bad_dtypes_and_bad_metadata_are_rejected() {
    let mut p = eagle3();
    p.remove("midlayer.hidden_norm.weight");
    let msg = err(&p, |e| matches!(e, Error::HeadTensorMissing { .. }));
    assert!(
        msg.contains("EAGLE-3 head lacks tensor \"midlayer.hidden_norm.weight\""),
        "{msg}"
    );

    let mut p = eagle1();
    p.remove("layers.0.mlp.up_proj.weight");
    let msg = err(&p, |e| matches!(e, Error::HeadTensorMissing { .. }));
    assert!(
        msg.contains("EAGLE-1 head lacks tensor \"layers.0.mlp.up_proj.weight\""),
        "{msg}"
    );

    let mut p = eagle3();
    p.remove("midlayer.self_attn.q_proj.weight");
    err(&p, |e| matches!(e, Error::NotEagleHead { .. }));

    let mut p = eagle3();
    p.set("norm.weight", Dtype::I32, &[H], vec![0; 4 * H]);
    let msg = err(&p, |e| matches!(e, Error::HeadDtype { .. }));
    assert!(msg.contains("\"norm.weight\" has dtype I32"), "{msg}");

    for (key, value) in [
        ("feature_layers", "2,15"),
        ("feature_layers", "x"),
        ("rope_theta", "-1"),
    ] {
        let mut p = eagle3();
        p.metadata = vec![(key.into(), value.into())];
        let msg = err(&p, |e| matches!(e, Error::HeadMetadata { .. }));
        assert!(msg.contains(key), "{msg}");
    }
}

#[test]
fn inconsistent_vocabulary_maps_are_rejected() {
    let vocab = |e: &Error| matches!(e, Error::HeadVocabMap { .. });
    let good: Vec<usize> = (0..VD).map(|i| i * 9 + 1).collect();
    let with_maps = |targets: &[usize], t2d_fix: &dyn Fn(&mut Vec<u8>)| {
        let mut p = eagle3();
        let (d2t, mut t2d) = d2t_t2d(targets);
        t2d_fix(&mut t2d);
        p.set("d2t", Dtype::I64, &[VD], d2t);
        p.set("t2d", Dtype::BOOL, &[V], t2d);
        p
    };
    // A target id outside the vocabulary.
    let mut t = good.clone();
    t[5] = V + 3;
    let p = with_maps(&t, &|t2d| t2d[6] = 1);
    let msg = err(&p, vocab);
    assert!(
        msg.contains("draft id 5 maps to target id 303, outside the target vocabulary 0..300"),
        "{msg}"
    );
    // Two draft ids onto one target id.
    let mut t = good.clone();
    t[4] = t[3];
    let p = with_maps(&t, &|t2d| t2d[299] = 1);
    assert!(err(&p, vocab).contains("image of two draft ids"));
    // t2d marks a different set than d2t reaches.
    let p = with_maps(&good, &|t2d| {
        t2d[1] = 0;
        t2d[299] = 1;
    });
    assert!(err(&p, vocab).contains("which t2d marks as outside the draft vocabulary"));
    // t2d counts more tokens than the draft vocabulary.
    let p = with_maps(&good, &|t2d| t2d[299] = 1);
    assert!(err(&p, vocab).contains("marks 33 target tokens, but the draft vocabulary has 32"));
    // Wrong lengths.
    let mut p = eagle3();
    p.set("t2d", Dtype::BOOL, &[V - 1], vec![0; V - 1]);
    let msg = err(&p, |e| matches!(e, Error::HeadShape { .. }));
    assert!(
        msg.contains("\"t2d\" has shape [299], expected [300]"),
        "{msg}"
    );
    let mut p = eagle3();
    p.set("d2t", Dtype::I64, &[VD + 1], vec![0; 8 * (VD + 1)]);
    assert!(err(&p, |e| matches!(e, Error::HeadShape { .. }))
        .contains("\"d2t\" has shape [33], expected [32]"));
    // A reduced vocabulary without maps.
    let mut p = eagle3();
    p.remove("d2t");
    p.remove("t2d");
    assert!(err(&p, vocab).contains("needs d2t"));
}
