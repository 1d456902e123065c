//! Shared helpers: the model, the tokenizer, and specbench prompts rendered as chat turns.

#![allow(dead_code)]

use peregrine_model::Model;
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions, Tokenizer};
use std::sync::OnceLock;

pub fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads"))
}

pub fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_gguf(model().source().gguf().expect("a GGUF model")).expect("tokenizer")
    })
}

/// The first turns of `data/specbench/<set>.jsonl`, rendered with the chat template and
/// tokenized.
pub fn specbench_prompts(set: &str, n: usize) -> Vec<Vec<u32>> {
    let path = peregrine_testkit::specbench_path(set);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let tok = tokenizer();
    let template = ChatTemplate::for_tokenizer(tok).expect("chat template");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let turn = v["turns"][0].as_str().expect("a first turn");
            let rendered = template
                .render(&[ChatMessage::new("user", turn)], true)
                .expect("render");
            tok.encode(
                &rendered,
                EncodeOptions {
                    parse_special: true,
                    ..EncodeOptions::default_for(tok)
                },
            )
            .expect("encode")
        })
        .collect()
}

/// Writes a random EAGLE-3 head shaped for the SmolLM2 target (hidden 576, 9/3 heads of 64,
/// MLP width 1536) with a draft vocabulary of `draft_vocab` target ids (sorted, distinct), as
/// bf16 safetensors at `path`. `logit_scale` sharpens its draft distributions.
pub fn write_random_eagle3(
    path: &std::path::Path,
    draft_vocab: &[u32],
    logit_scale: f32,
    seed: u64,
) {
    use peregrine_formats::safetensors_io::{Dtype, SafetensorsWriter};
    use rand::{Rng, SeedableRng};
    let cfg = model().config();
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let (q_dim, kv_dim, ffn) = (
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        1536,
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = SafetensorsWriter::new();
    let mut matrix =
        |w: &mut SafetensorsWriter, name: &str, rows: usize, cols: usize, scale: f32| {
            let s = scale / (cols as f32).sqrt();
            let vals: Vec<f32> = (0..rows * cols)
                .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * 1.7 * s)
                .collect();
            w.add_f32(name, Dtype::BF16, &[rows, cols], &vals).unwrap();
        };
    matrix(&mut w, "fc.weight", h, 3 * h, 1.0);
    matrix(
        &mut w,
        "midlayer.self_attn.q_proj.weight",
        q_dim,
        2 * h,
        1.0,
    );
    matrix(
        &mut w,
        "midlayer.self_attn.k_proj.weight",
        kv_dim,
        2 * h,
        1.0,
    );
    matrix(
        &mut w,
        "midlayer.self_attn.v_proj.weight",
        kv_dim,
        2 * h,
        1.0,
    );
    matrix(&mut w, "midlayer.self_attn.o_proj.weight", h, q_dim, 1.0);
    matrix(&mut w, "midlayer.mlp.gate_proj.weight", ffn, h, 1.0);
    matrix(&mut w, "midlayer.mlp.up_proj.weight", ffn, h, 1.0);
    matrix(&mut w, "midlayer.mlp.down_proj.weight", h, ffn, 1.0);
    let vd = draft_vocab.len();
    matrix(&mut w, "lm_head.weight", vd, h, logit_scale);
    for name in [
        "midlayer.input_layernorm.weight",
        "midlayer.hidden_norm.weight",
        "midlayer.post_attention_layernorm.weight",
        "norm.weight",
    ] {
        w.add_f32(name, Dtype::F32, &[h], &vec![1.0; h]).unwrap();
    }
    let d2t: Vec<u8> = draft_vocab
        .iter()
        .enumerate()
        .flat_map(|(i, &t)| (t as i64 - i as i64).to_le_bytes())
        .collect();
    w.add_raw("d2t", Dtype::I64, &[vd], d2t).unwrap();
    let mut t2d = vec![0u8; v];
    draft_vocab.iter().for_each(|&t| t2d[t as usize] = 1);
    w.add_raw("t2d", Dtype::BOOL, &[v], t2d).unwrap();
    w.add_metadata("feature_layers", "2,15,27");
    w.write(path).unwrap();
}

/// Writes a random EAGLE-1 head for the SmolLM2 target at `path`.
pub fn write_random_eagle1(path: &std::path::Path, seed: u64) {
    use peregrine_formats::safetensors_io::{Dtype, SafetensorsWriter};
    use rand::{Rng, SeedableRng};
    let cfg = model().config();
    let h = cfg.hidden_size;
    let (q_dim, kv_dim, ffn) = (
        cfg.n_heads * cfg.head_dim,
        cfg.n_kv_heads * cfg.head_dim,
        1536,
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut w = SafetensorsWriter::new();
    let mut matrix = |w: &mut SafetensorsWriter, name: &str, rows: usize, cols: usize| {
        let s = 1.0 / (cols as f32).sqrt();
        let vals: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * 1.7 * s)
            .collect();
        w.add_f32(name, Dtype::F16, &[rows, cols], &vals).unwrap();
    };
    matrix(&mut w, "fc.weight", h, 2 * h);
    matrix(&mut w, "layers.0.self_attn.q_proj.weight", q_dim, h);
    matrix(&mut w, "layers.0.self_attn.k_proj.weight", kv_dim, h);
    matrix(&mut w, "layers.0.self_attn.v_proj.weight", kv_dim, h);
    matrix(&mut w, "layers.0.self_attn.o_proj.weight", h, q_dim);
    matrix(&mut w, "layers.0.mlp.gate_proj.weight", ffn, h);
    matrix(&mut w, "layers.0.mlp.up_proj.weight", ffn, h);
    matrix(&mut w, "layers.0.mlp.down_proj.weight", h, ffn);
    w.add_f32(
        "layers.0.post_attention_layernorm.weight",
        Dtype::F32,
        &[h],
        &vec![1.0; h],
    )
    .unwrap();
    w.write(path).unwrap();
}

/// A random EAGLE-3 head for SmolLM2 with a 2048-token draft vocabulary (every 24th id), loaded
/// once.
pub fn random_eagle3() -> &'static peregrine_spec::EagleHead {
    static HEAD: OnceLock<peregrine_spec::EagleHead> = OnceLock::new();
    HEAD.get_or_init(|| {
        let path = std::env::temp_dir().join(format!(
            "peregrine-eagle3-{}.safetensors",
            std::process::id()
        ));
        let vocab: Vec<u32> = (0..2048u32).map(|i| i * 24).collect();
        write_random_eagle3(&path, &vocab, 6.0, 5);
        let head = peregrine_spec::EagleHead::load(&path, model().config(), Default::default())
            .expect("the random head loads");
        let _ = std::fs::remove_file(&path);
        head
    })
}

/// The tree a fresh drafter drafts for `context` (its last token the root), with the target's
/// features computed by one prefill of everything before the root.
pub fn eagle_tree(
    head: &peregrine_spec::EagleHead,
    context: &[u32],
    plan: &peregrine_spec::DraftPlan<'_>,
) -> peregrine_spec::TokenTree {
    use peregrine_spec::Drafter;
    let mut d = eagle_drafter_at(head, context);
    let mut tree = peregrine_spec::TokenTree::new();
    tree.reset(context[context.len() - 1]);
    d.propose(context, plan, &mut tree).unwrap();
    tree
}

/// A fresh EAGLE drafter that has seen the target's features of `context` but its last token
/// (the root of the next proposal).
#[allow(dead_code)] // not every test file drafts with EAGLE
pub fn eagle_drafter_at<'a>(
    head: &'a peregrine_spec::EagleHead,
    context: &[u32],
) -> peregrine_spec::EagleDrafter<'a> {
    use peregrine_spec::Drafter;
    let m = model();
    let n = context.len() - 1;
    let mut d = peregrine_spec::EagleDrafter::new(m, head, n + 8).unwrap();
    let mut cache = m.new_cache(n + 8);
    let mut ws = m.new_workspace(512, 1, n + 8);
    let mut history = Vec::new();
    let layers = d.feature_layers().to_vec();
    assert_eq!(d.reuse_prefix(&context[..n]), 0);
    let rows: Vec<usize> = (0..512).collect();
    let mut err = None;
    peregrine_model::generate::prefill_reusing_prefix_with_taps(
        m,
        &mut cache,
        &mut ws,
        &mut history,
        &context[..n],
        &layers,
        &mut |ws, pos, k| {
            if let Err(e) = d.observe_features(ws, &rows[..k], pos) {
                err = Some(e);
            }
        },
    )
    .unwrap();
    assert!(err.is_none());
    d
}
