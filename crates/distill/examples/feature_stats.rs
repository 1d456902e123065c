//! Prints the scale of the target features the EAGLE-3 head reads (RMS, largest magnitudes and
//! the dimensions they sit in) for one chat sequence: outlier dimensions decide how the head's
//! `fc` and norms must be initialised.
//!
//! `cargo run --release -p peregrine-distill --example feature_stats`

use peregrine_distill::draft_vocab::DraftVocab;
use peregrine_distill::selfgen::Sample;
use peregrine_distill::target::{feature_layers, TargetRunner, TargetTables};
use peregrine_model::Model;
use peregrine_tokenizer::{EncodeOptions, Tokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let model = Model::load(&peregrine_testkit::smollm2_path(), 2)?;
    let tok = Tokenizer::from_gguf(model.source().gguf().expect("a GGUF model"))?;
    let text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris, a city known for its art and history.";
    let tokens = tok.encode(text, EncodeOptions::default_for(&tok))?;
    let sample = Sample {
        n_prompt: 10,
        tokens,
    };
    let counts: Vec<u64> = vec![1; model.config().vocab_size];
    let vocab = DraftVocab::most_frequent(&counts, 256)?;
    let tables = TargetTables::load(&model)?;
    let view = TargetRunner::new(&model, 256).view(&sample, &tables, &vocab, 1)?;
    let h = model.config().hidden_size;
    for (i, layer) in feature_layers(model.config().n_layers).iter().enumerate() {
        let mut sq = 0f64;
        let mut top: Vec<(f32, usize)> = Vec::new();
        for t in 0..view.len {
            let row = &view.features[t * 3 * h + i * h..t * 3 * h + (i + 1) * h];
            sq += row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
            top.extend(row.iter().enumerate().map(|(d, &x)| (x.abs(), d)));
        }
        top.sort_by(|a, b| b.0.total_cmp(&a.0));
        top.dedup_by_key(|p| p.1);
        let per_pos: Vec<String> = (0..view.len)
            .map(|t| {
                let row = &view.features[t * 3 * h + i * h..t * 3 * h + (i + 1) * h];
                let r = (row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / h as f64).sqrt();
                format!("{r:.1}")
            })
            .collect();
        println!("layer {layer:>2}: rms per position {}", per_pos.join(" "));
        println!(
            "layer {layer:>2}: rms {:.3}, largest |x| {:?}",
            (sq / (view.len * h) as f64).sqrt(),
            &top[..6]
        );
    }
    Ok(())
}
