//! Turning logits into the next token: greedy, or temperature sampling shaped by top-k, top-p
//! and min-p, after repetition, frequency and presence penalties.
//!
//! The order follows llama.cpp's default chain: penalties → top-k → top-p → min-p →
//! temperature → draw. Top-p and min-p look at the distribution at temperature 1, as there.
//! Buffers are allocated once per sampler, so sampling allocates nothing per token.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0 = off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recent tokens by this (1 = off).
    pub repetition_penalty: f32,
    /// Subtract `count * frequency_penalty` from recent tokens' logits.
    pub frequency_penalty: f32,
    /// Subtract `presence_penalty` from every recent token's logit.
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Random seed.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Whether any penalty is active.
    fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
    }

    /// Checks ranges; the message names the bad parameter.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |name: &str, v: f32, range: &str| Err(format!("{name} = {v} is outside {range}"));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad("temperature", self.temperature, "[0, inf)");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top-p", self.top_p, "(0, 1]");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p", self.min_p, "[0, 1]");
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad("repetition penalty", self.repetition_penalty, "(0, inf)");
        }
        Ok(())
    }
}

/// Picks tokens from logits; holds the random state and reusable buffers.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    logits: Vec<f32>,
    candidates: Vec<(f32, u32)>,
    /// Unnormalised weight of every token under the shaped distribution.
    weights: Vec<f32>,
    recent: Vec<(u32, u32)>,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab_size` tokens.
    pub fn new(params: SamplingParams, vocab_size: usize) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self {
            params,
            rng,
            logits: Vec::with_capacity(vocab_size),
            candidates: Vec::with_capacity(vocab_size),
            weights: Vec::with_capacity(vocab_size),
            recent: Vec::with_capacity(64),
        }
    }

    /// The parameters in use.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The next token given `logits` and the tokens so far (`history`, for penalties).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        if p.has_penalties() {
            self.apply_penalties(history);
        }
        if self.params.temperature <= 0.0 {
            return peregrine_tensor::ops::argmax(&self.logits).unwrap_or(0) as u32;
        }
        self.sample_shaped()
    }

    fn apply_penalties(&mut self, history: &[u32]) {
        let p = &self.params;
        let start = history.len().saturating_sub(p.penalty_last_n);
        self.recent.clear();
        for &t in &history[start..] {
            match self.recent.iter_mut().find(|(id, _)| *id == t) {
                Some((_, n)) => *n += 1,
                None => self.recent.push((t, 1)),
            }
        }
        for &(t, count) in &self.recent {
            let Some(l) = self.logits.get_mut(t as usize) else {
                continue;
            };
            *l = if *l > 0.0 {
                *l / p.repetition_penalty
            } else {
                *l * p.repetition_penalty
            };
            *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Writes into `out` (resized to the vocabulary) the probability of each token under
    /// temperature sampling (`temperature > 0`), after the same penalties, top-k, top-p and min-p
    /// as [`Sampler::sample`]: the target distribution speculative verification must preserve.
    pub fn probs(&mut self, logits: &[f32], history: &[u32], out: &mut Vec<f32>) {
        self.logits.clear();
        self.logits.extend_from_slice(logits);
        if self.params.has_penalties() {
            self.apply_penalties(history);
        }
        out.clear();
        out.resize(logits.len(), 0.0);
        let total = self.shaped_weights();
        if total > 0.0 {
            for (o, &w) in out.iter_mut().zip(&self.weights) {
                *o = (w as f64 / total) as f32;
            }
        }
    }

    /// Fills `weights` with each token's unnormalised weight under the shaped distribution,
    /// `exp((l - max) / temperature)` for the tokens top-k, top-p and min-p keep and 0 for the
    /// others (and for NaN logits), and returns their sum (0 when no token is left). The
    /// exponentials run in one vectorised pass (`ops::exp_shifted`): this is most of a
    /// sampled token's cost over a 49k vocabulary.
    fn shaped_weights(&mut self) -> f64 {
        let p = &self.params;
        let n = self.logits.len();
        let truncates = (p.top_k > 0 && p.top_k < n) || p.top_p < 1.0 || p.min_p > 0.0;
        let inv_t = 1.0 / p.temperature;
        self.weights.clear();
        if truncates {
            if !self.shape_candidates() {
                return 0.0;
            }
            self.weights.resize(n, f32::NEG_INFINITY);
            for &(l, id) in &self.candidates {
                self.weights[id as usize] = l;
            }
        } else {
            self.weights.extend(self.logits.iter().map(|&l| {
                if l.is_nan() {
                    f32::NEG_INFINITY
                } else {
                    l
                }
            }));
        }
        let max = self
            .weights
            .iter()
            .fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        if max == f32::NEG_INFINITY {
            return 0.0;
        }
        if max == f32::INFINITY {
            // Infinite logits share all the mass.
            for w in &mut self.weights {
                *w = if *w == f32::INFINITY { 1.0 } else { 0.0 };
            }
        } else {
            peregrine_tensor::ops::exp_shifted(&mut self.weights, max, inv_t);
        }
        self.weights.iter().map(|&w| w as f64).sum()
    }

    /// Keeps in `candidates` the tokens that top-k, top-p and min-p allow (from `logits`);
    /// false when no token is left (all logits NaN).
    fn shape_candidates(&mut self) -> bool {
        let p = &self.params;
        self.candidates.clear();
        self.candidates.extend(
            self.logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (l, i as u32)),
        );
        if self.candidates.is_empty() {
            return false;
        }
        let by_logit_desc =
            |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if p.top_k > 0 && p.top_k < self.candidates.len() {
            self.candidates
                .select_nth_unstable_by(p.top_k - 1, by_logit_desc);
            self.candidates.truncate(p.top_k);
        }
        if p.top_p < 1.0 || p.min_p > 0.0 {
            self.candidates.sort_unstable_by(by_logit_desc);
            let max = self.candidates[0].0;
            let total: f64 = self
                .candidates
                .iter()
                .map(|&(l, _)| ((l - max) as f64).exp())
                .sum();
            let mut keep = self.candidates.len();
            if p.top_p < 1.0 {
                let mut cum = 0.0;
                for (i, &(l, _)) in self.candidates.iter().enumerate() {
                    cum += ((l - max) as f64).exp() / total;
                    if cum >= p.top_p as f64 {
                        keep = i + 1;
                        break;
                    }
                }
            }
            if p.min_p > 0.0 {
                // Relative to the top token: p_i / p_max = exp(l_i - max).
                let floor = (p.min_p as f64).ln();
                let n_min = self
                    .candidates
                    .iter()
                    .take_while(|&&(l, _)| ((l - max) as f64) >= floor)
                    .count()
                    .max(1);
                keep = keep.min(n_min);
            }
            self.candidates.truncate(keep);
        }
        true
    }

    fn sample_shaped(&mut self) -> u32 {
        let total = self.shaped_weights();
        if total <= 0.0 {
            return 0;
        }
        let mut u = self.rng.random::<f64>() * total;
        let mut last = 0;
        for (id, &w) in self.weights.iter().enumerate() {
            if w > 0.0 {
                last = id;
                u -= w as f64;
                if u <= 0.0 {
                    return id as u32;
                }
            }
        }
        // Rounding left a sliver of `u`: the last token with weight.
        last as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(params: SamplingParams) -> Sampler {
        Sampler::new(params, 8)
    }

    #[test]
    fn greedy_is_argmax_and_penalties_apply() {
        let logits = [0.0, 3.0, 2.9, -1.0];
        let mut s = sampler(SamplingParams::default());
        assert_eq!(s.sample(&logits, &[]), 1);
        let mut s = sampler(SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[1]), 2, "3.0/1.5 = 2.0 < 2.9");
        let mut s = sampler(SamplingParams {
            presence_penalty: 0.2,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[1]), 2);
    }

    #[test]
    fn top_k_one_and_min_p_one_are_greedy() {
        let logits = [0.5, 1.0, 0.9, 0.2];
        for params in [
            SamplingParams {
                temperature: 1.0,
                top_k: 1,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                min_p: 1.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: 1.0,
                top_p: 0.01,
                ..Default::default()
            },
        ] {
            let mut s = sampler(params);
            for _ in 0..50 {
                assert_eq!(s.sample(&logits, &[]), 1);
            }
        }
    }

    #[test]
    fn temperature_sampling_matches_softmax_frequencies() {
        let logits = [0.0f32, 1.0, 2.0];
        let mut s = sampler(SamplingParams {
            temperature: 1.0,
            seed: 42,
            ..Default::default()
        });
        let mut counts = [0u32; 3];
        let n = 60_000;
        for _ in 0..n {
            counts[s.sample(&logits, &[]) as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for i in 0..3 {
            let want = (logits[i] as f64).exp() / z;
            let got = counts[i] as f64 / n as f64;
            // 5 standard deviations of a binomial proportion.
            let sd = (want * (1.0 - want) / n as f64).sqrt();
            assert!((got - want).abs() < 5.0 * sd, "token {i}: {got} vs {want}");
        }
    }

    #[test]
    fn probs_are_the_shaped_distribution() {
        let logits = [0.0f32, 1.0, 2.0, 3.0];
        let params = SamplingParams {
            temperature: 0.5,
            top_k: 2,
            ..Default::default()
        };
        let mut s = sampler(params);
        let mut p = Vec::new();
        s.probs(&logits, &[], &mut p);
        assert_eq!(p[0], 0.0);
        assert_eq!(p[1], 0.0);
        // Tokens 2 and 3 at temperature 0.5: weights e^4 and e^6.
        let want3 = (6.0f64).exp() / ((4.0f64).exp() + (6.0f64).exp());
        assert!((p[3] as f64 - want3).abs() < 1e-6);
        assert!((p.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..8).map(|i| (i as f32 * 0.7).sin()).collect();
        let params = SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            seed: 5,
            ..Default::default()
        };
        let mut a = sampler(params.clone());
        let mut b = sampler(params);
        for _ in 0..100 {
            assert_eq!(a.sample(&logits, &[]), b.sample(&logits, &[]));
        }
    }
}
