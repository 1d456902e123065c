//! The self-distillation data is what the engine would generate and compute: batched greedy
//! responses equal plain greedy generation token for token, and the target view's features and
//! distributions are the engine's taps and logits for the same sequence.

use peregrine_distill::draft_vocab::DraftVocab;
use peregrine_distill::selfgen::{generate_responses, Sample, SelfGenConfig};
use peregrine_distill::target::{feature_layers, TargetRunner, TargetTables};
use peregrine_model::{ForwardOptions, GenerateParams, LogitRows, Model, SeqInput, Session};
use peregrine_tokenizer::{ChatMessage, ChatTemplate, EncodeOptions, Tokenizer};

fn setup() -> (Model, Tokenizer) {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 2).expect("model loads");
    let tok = Tokenizer::from_gguf(model.source().gguf().expect("gguf")).expect("tokenizer");
    (model, tok)
}

fn chat(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let template = ChatTemplate::for_tokenizer(tok).expect("template");
    let rendered = template
        .render(&[ChatMessage::new("user", text)], true)
        .expect("render");
    tok.encode(
        &rendered,
        EncodeOptions {
            parse_special: true,
            ..EncodeOptions::default_for(tok)
        },
    )
    .expect("encode")
}

#[test]
fn batched_greedy_responses_equal_plain_greedy_generation() {
    let (model, tok) = setup();
    let prompts: Vec<Vec<u32>> = [
        "Name three rivers in Europe.",
        "What is 17 times 23?",
        "Write a haiku about the sea.",
        "Explain what a hash map is in one paragraph.",
        "Translate 'good morning' into French and Spanish.",
    ]
    .iter()
    .map(|p| chat(&tok, p))
    .collect();
    let max_new = 24;
    let cfg = SelfGenConfig {
        max_new_tokens: max_new,
        batch: 3, // fewer slots than prompts: slots are refilled as responses finish
        stop_ids: tok.stop_ids().to_vec(),
    };
    let batched =
        generate_responses(&model, &prompts, &cfg, &indicatif::ProgressBar::hidden()).unwrap();
    for (prompt, sample) in prompts.iter().zip(&batched) {
        let mut session = Session::new(&model, prompt.len() + max_new + 2);
        let params = GenerateParams {
            max_tokens: max_new,
            ..GenerateParams::default()
        };
        let plain = session
            .generate(&model, &tok, prompt, &params, &mut |_| {})
            .unwrap();
        assert_eq!(&sample.tokens[..prompt.len()], &prompt[..]);
        let response = &sample.tokens[prompt.len()..];
        // Plain generation does not emit the stop token; the sample keeps it.
        let response = match response.last() {
            Some(t) if tok.stop_ids().contains(t) => &response[..response.len() - 1],
            _ => response,
        };
        assert_eq!(response, &plain.tokens[..], "prompt {prompt:?}");
    }
}

#[test]
fn the_target_view_holds_the_engines_taps_and_renormalised_logits() {
    let (model, tok) = setup();
    let mut tokens = chat(&tok, "Say hello.");
    let n_prompt = tokens.len();
    tokens.extend(
        tok.encode("Hello there, friend!", EncodeOptions::default())
            .unwrap(),
    );
    let sample = Sample {
        tokens: tokens.clone(),
        n_prompt,
    };
    let mut counts = vec![0u64; model.config().vocab_size];
    tokens.iter().for_each(|&t| counts[t as usize] += 5);
    (0..2000).for_each(|t| counts[t] += 1);
    let vocab = DraftVocab::most_frequent(&counts, 1024).unwrap();
    let tables = TargetTables::load(&model).unwrap();
    let steps = 3;
    let view = TargetRunner::new(&model, 64)
        .view(&sample, &tables, &vocab, steps)
        .unwrap();

    // The engine, one forward over the whole sequence.
    let taps = feature_layers(model.config().n_layers);
    let mut ws = model.new_workspace(tokens.len(), tokens.len(), tokens.len());
    let mut cache = model.new_cache(tokens.len());
    let positions: Vec<u32> = (0..tokens.len() as u32).collect();
    let opts = ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps: &taps,
    };
    let mut seqs = [SeqInput {
        cache: &mut cache,
        tokens: &tokens,
        positions: &positions,
        tree: None,
        logits: LogitRows::All,
    }];
    model.forward(&mut ws, &mut seqs, &opts).unwrap();
    let h = model.config().hidden_size;
    let vd = vocab.len();
    for j in 0..tokens.len() {
        for (i, _) in taps.iter().enumerate() {
            let got = &view.features[j * 3 * h + i * h..j * 3 * h + (i + 1) * h];
            assert_eq!(got, &ws.tap(i)[j * h..(j + 1) * h], "position {j}, tap {i}");
        }
        let logits = ws.logits(j);
        let z: f64 = vocab
            .to_target
            .iter()
            .map(|&t| (logits[t as usize] as f64).exp())
            .sum();
        for (d, &t) in vocab.to_target.iter().enumerate() {
            let want = (logits[t as usize] as f64).exp() / z;
            let got = view.probs[j * vd + d] as f64;
            assert!(
                (got - want).abs() < 1e-5,
                "position {j}, token {t}: {got} vs {want}"
            );
        }
        let next_is_response = j + 1 >= n_prompt && j + 1 < tokens.len();
        assert_eq!(view.weights[j], if next_is_response { 1.0 } else { 0.0 });
        if j + 1 < tokens.len() {
            assert_eq!(
                &view.embeds[j * h..(j + 1) * h],
                tables.embedding(tokens[j + 1])
            );
        }
    }
    // The tables are the engine's own embeddings.
    let mut row = vec![0f32; h];
    for t in [0u32, 1, 17, 1000, 49151] {
        model.embed_row(t, &mut row).unwrap();
        assert_eq!(tables.embedding(t), &row[..], "embedding of token {t}");
    }
    assert_eq!(tables.final_norm, model.output_norm());
    // Rows past the sequence are padding for the training-time-test steps.
    assert_eq!(view.weights.len(), tokens.len() + steps);
    assert!(view.weights[tokens.len()..].iter().all(|&w| w == 0.0));
}
