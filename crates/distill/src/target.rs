//! The target's side of a training sequence, computed on the fly (online distillation): its
//! features at the EAGLE-3 tap layers, the embeddings of the next tokens, and its next-token
//! distribution restricted to the draft vocabulary.

use crate::draft_vocab::DraftVocab;
use crate::selfgen::Sample;
use crate::{DistillError, Result};
use peregrine_model::{ForwardOptions, LogitRows, Model, SeqInput, Workspace};

/// Rows the target computes per forward while building a view.
const CHUNK: usize = 256;

/// The target layers whose input residual streams EAGLE-3 fuses: 2, L/2 and L−3.
pub fn feature_layers(n_layers: usize) -> [usize; 3] {
    [2, n_layers / 2, n_layers.saturating_sub(3)]
}

/// The target's frozen tables the head shares: token embeddings and the final norm.
pub struct TargetTables {
    /// `[vocab, hidden]` token embeddings, f32.
    pub embed: Vec<f32>,
    /// Final RMSNorm weight.
    pub final_norm: Vec<f32>,
    /// Hidden size.
    pub hidden: usize,
}

impl TargetTables {
    /// Copies the tables out of the model (any file type the engine loads).
    pub fn load(model: &Model) -> Result<Self> {
        let (vocab, hidden) = (model.config().vocab_size, model.config().hidden_size);
        let mut embed = vec![0f32; vocab * hidden];
        for (t, row) in embed.chunks_exact_mut(hidden).enumerate() {
            model.embed_row(t as u32, row)?;
        }
        Ok(Self {
            embed,
            final_norm: model.output_norm().to_vec(),
            hidden,
        })
    }

    /// The embedding row of `token`.
    pub fn embedding(&self, token: u32) -> &[f32] {
        let h = self.hidden;
        &self.embed[token as usize * h..(token as usize + 1) * h]
    }
}

/// One sequence as the head trains on it. Row `j` of `embeds`, `probs` and `weights` belongs
/// to position `j`; they run `steps` rows past the sequence (zeros, weight 0) so that a
/// training-time-test step `s` can read row `t + s + 1` for every `t`.
pub struct TargetView {
    /// Positions in the sequence (T).
    pub len: usize,
    /// `[T, 3H]`: residual streams entering the three feature layers, concatenated.
    pub features: Vec<f32>,
    /// `[T + steps, H]`: row `j` is the embedding of token `j + 1`.
    pub embeds: Vec<f32>,
    /// `[T + steps, Vd]`: row `j` is the target's distribution for token `j + 1`, restricted
    /// to the draft vocabulary and renormalised.
    pub probs: Vec<f32>,
    /// `[T + steps]`: 1 where token `j + 1` is a response token, else 0.
    pub weights: Vec<f32>,
}

/// Runs the target over training sequences.
pub struct TargetRunner<'m> {
    model: &'m Model,
    ws: Workspace,
    taps: [usize; 3],
    max_len: usize,
    positions: Vec<u32>,
}

impl<'m> TargetRunner<'m> {
    /// A runner for sequences of up to `max_len` tokens.
    pub fn new(model: &'m Model, max_len: usize) -> Self {
        Self {
            model,
            ws: model.new_workspace(CHUNK, CHUNK, max_len),
            taps: feature_layers(model.config().n_layers),
            max_len,
            positions: Vec::with_capacity(CHUNK),
        }
    }

    /// The view of `sample` for a head with draft vocabulary `vocab` trained with `steps`
    /// training-time-test steps.
    pub fn view(
        &mut self,
        sample: &Sample,
        tables: &TargetTables,
        vocab: &DraftVocab,
        steps: usize,
    ) -> Result<TargetView> {
        let t_len = sample.tokens.len();
        if t_len < 2 || t_len > self.max_len || sample.n_prompt == 0 || sample.n_prompt > t_len {
            return Err(DistillError::Data(format!(
                "a training sequence of {t_len} tokens (prompt {}) for a runner of {}",
                sample.n_prompt, self.max_len
            )));
        }
        let h = tables.hidden;
        let vd = vocab.len();
        let rows = t_len + steps;
        let mut view = TargetView {
            len: t_len,
            features: vec![0.0; t_len * 3 * h],
            embeds: vec![0.0; rows * h],
            probs: vec![0.0; rows * vd],
            weights: vec![0.0; rows],
        };
        for j in 0..t_len - 1 {
            view.embeds[j * h..(j + 1) * h].copy_from_slice(tables.embedding(sample.tokens[j + 1]));
            view.weights[j] = if j + 1 >= sample.n_prompt { 1.0 } else { 0.0 };
        }
        let mut cache = self.model.new_cache(t_len);
        let opts = ForwardOptions {
            layers: 0..self.model.config().n_layers,
            head: true,
            taps: &self.taps,
        };
        let mut pos = 0;
        while pos < t_len {
            let end = (pos + CHUNK).min(t_len);
            self.positions.clear();
            self.positions.extend((pos..end).map(|p| p as u32));
            let mut seqs = [SeqInput {
                cache: &mut cache,
                tokens: &sample.tokens[pos..end],
                positions: &self.positions,
                tree: None,
                logits: LogitRows::All,
            }];
            self.model.forward(&mut self.ws, &mut seqs, &opts)?;
            for r in 0..end - pos {
                let row = &mut view.features[(pos + r) * 3 * h..(pos + r + 1) * 3 * h];
                for (i, part) in row.chunks_exact_mut(h).enumerate() {
                    part.copy_from_slice(&self.ws.tap(i)[r * h..(r + 1) * h]);
                }
                let logits = self.ws.logits(r);
                let out = &mut view.probs[(pos + r) * vd..(pos + r + 1) * vd];
                restricted_softmax(logits, &vocab.to_target, out);
            }
            pos = end;
        }
        Ok(view)
    }
}

/// Softmax over the logits of the draft vocabulary's tokens only.
fn restricted_softmax(logits: &[f32], ids: &[u32], out: &mut [f32]) {
    let max = ids
        .iter()
        .map(|&t| logits[t as usize])
        .fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f64;
    for (o, &t) in out.iter_mut().zip(ids) {
        *o = (logits[t as usize] - max).exp();
        sum += *o as f64;
    }
    let inv = (1.0 / sum) as f32;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_softmax_matches_the_renormalised_full_softmax() {
        let logits = [1.0f32, -2.0, 0.5, 3.0, 0.0];
        let ids = [0u32, 2, 3];
        let mut out = [0.0; 3];
        restricted_softmax(&logits, &ids, &mut out);
        let full: Vec<f64> = logits.iter().map(|&l| (l as f64).exp()).collect();
        let z: f64 = ids.iter().map(|&t| full[t as usize]).sum();
        for (o, &t) in out.iter().zip(&ids) {
            assert!((*o as f64 - full[t as usize] / z).abs() < 1e-6);
        }
    }

    #[test]
    fn feature_layers_follow_eagle3() {
        assert_eq!(feature_layers(30), [2, 15, 27]);
        assert_eq!(feature_layers(32), [2, 16, 29]);
    }
}
