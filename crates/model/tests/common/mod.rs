//! Shared by the oracle tests: teacher-forced logits, and agreement statistics against
//! llama.cpp's per-position records (argmax and top-5 `[id, logit]` pairs).

#![allow(dead_code)]

use peregrine_model::{ForwardOptions, LogitRows, Model, SeqInput};

/// Index of the largest logit (the first on ties, as llama.cpp's greedy sampler).
pub fn argmax(x: &[f32]) -> u32 {
    peregrine_tensor::ops::argmax(x).expect("non-empty logits") as u32
}

/// Runs `ids` through the model causally, `chunk` tokens per forward, and calls
/// `f(position, logits)` for every position (the prediction of token `position + 1`).
pub fn teacher_forced(model: &Model, ids: &[u32], chunk: usize, mut f: impl FnMut(usize, &[f32])) {
    let n = ids.len();
    let mut cache = model.new_cache(n);
    let mut ws = model.new_workspace(chunk, chunk, n);
    let opts = ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps: &[],
    };
    for start in (0..n).step_by(chunk) {
        let end = (start + chunk).min(n);
        let positions: Vec<u32> = (start as u32..end as u32).collect();
        let mut seqs = [SeqInput {
            cache: &mut cache,
            tokens: &ids[start..end],
            positions: &positions,
            tree: None,
            logits: LogitRows::All,
        }];
        model.forward(&mut ws, &mut seqs, &opts).expect("forward");
        for i in start..end {
            f(i, ws.logits(i - start));
        }
    }
}

/// Agreement of our logits with llama.cpp's, position by position.
#[derive(Default)]
pub struct Agreement {
    /// Positions where our argmax equals llama.cpp's.
    pub agree: usize,
    /// Positions compared.
    pub total: usize,
    /// `(label, position, llama.cpp's top-2 margin)` where the argmaxes differ.
    pub flips: Vec<(String, usize, f32)>,
    /// `|ours - llama.cpp|` at llama.cpp's top-5 tokens.
    errors: Vec<f32>,
}

impl Agreement {
    /// Records one position.
    pub fn record(
        &mut self,
        label: &str,
        position: usize,
        logits: &[f32],
        want: u32,
        top5: &[(u32, f32)],
    ) {
        self.total += 1;
        if argmax(logits) == want {
            self.agree += 1;
        } else {
            self.flips
                .push((label.to_string(), position, top5[0].1 - top5[1].1));
        }
        self.errors
            .extend(top5.iter().map(|&(id, l)| (logits[id as usize] - l).abs()));
    }

    /// Fraction of positions that agree.
    pub fn fraction(&self) -> f64 {
        self.agree as f64 / self.total.max(1) as f64
    }

    /// The `q`-quantile of the logit errors.
    pub fn error_quantile(&self, q: f64) -> f32 {
        let mut e = self.errors.clone();
        e.sort_by(f32::total_cmp);
        e[((e.len() - 1) as f64 * q) as usize]
    }

    /// Largest llama.cpp top-2 margin at which the argmaxes differ (0 without flips).
    pub fn max_flip_margin(&self) -> f32 {
        self.flips.iter().fold(0.0, |m, f| m.max(f.2))
    }

    /// One line for the test log.
    pub fn summary(&self, what: &str) -> String {
        format!(
            "{what}: argmax agreement {}/{} ({:.3}%); |logit error| at llama.cpp's top-5: median {:.4} p90 {:.4} p99 {:.4} max {:.4}; flips (label, position, margin): {:?}",
            self.agree,
            self.total,
            100.0 * self.fraction(),
            self.error_quantile(0.5),
            self.error_quantile(0.9),
            self.error_quantile(0.99),
            self.error_quantile(1.0),
            self.flips
        )
    }
}
