//! Training-time test (TTT) for the EAGLE-3 head: the head is unrolled `S` steps, each step
//! feeding every row its own output feature from the step before, with the attention mask that
//! drafting sees at inference.
//!
//! **Inputs of one sequence** (`T` rows, hidden `H`, draft vocabulary `Vd`):
//! - `features` `F[T, 3H]`: the target's residual streams entering layers 2, L/2 and L−3 at
//!   each position, concatenated in that order. Step 0 uses `g = fc(F[t])`; step `s ≥ 1` uses
//!   the row's own output `o` of step `s − 1` (`fc` is not applied to self-fed features).
//! - `embeddings` `E[n_e, H]`, `n_e ≥ T`: `E[j]` is the target's embedding of token `x_{j+1}`.
//!   Row `t` at step `s` uses `E[t + s]` (true tokens, self-fed features).
//! - `target_probs` `P[n_p, Vd]`: `P[j]` is the target's next-token distribution at position
//!   `j` restricted to the draft vocabulary and renormalised. Row `t` at step `s` predicts
//!   `x_{t+s+2}`, i.e. is trained toward `P[t + s + 1]`.
//! - `loss_mask` `W[n_p]`: `W[j]` weights the loss toward `P[j]`.
//!
//! Row `t` at step `s` has weight `W[t+s+1]` when `t+s+1 < n_p` and `t+s < n_e`, else 0 (its
//! target runs past the sequence), and RoPE position `t + s`. With tokens `x_0..x_{N−1}` and
//! `T = N − 1` rows the natural sizes are `n_e = N − 1`, `n_p = N`; `n_e = n_p = T + S` covers
//! every step of every row.
//!
//! **Mask at step `s`.** Keys are the K/V of steps `0..=s` stacked (`(s+1)·T` rows); query row
//! `t` may attend to step-0 keys of rows `0..=t` and to the step-`j` key of row `t` for each
//! `j` in `1..=s` (the real context plus its own drafted ancestors).
//!
//! **Loss.** `Σ_s decay^s · CE_s` with `CE_s = Σ_rows w · softCE(logits, P) / N_s`, `N_s` the
//! total weight of step `s` over the whole batch (a step without weight contributes nothing).
//! A batch is processed one sequence at a time (one tape each, gradients accumulated into the
//! store), and because the normalisers are the batch's, the sum equals the loss of the batch
//! as one block, at the memory of one sequence.

use super::{Eagle3Head, StepOut};
use crate::error::{Error, Result};
use crate::matmul::Compute;
use crate::ops::{KeyLists, KeyListsBuilder};
use crate::tape::{Tape, Var};
use crate::tensor::{Shape, Tensor};

/// TTT settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TttConfig {
    /// Unrolled steps `S` (≥ 1).
    pub steps: usize,
    /// Weight `decay^s` of step `s`'s loss.
    pub step_decay: f32,
}

impl Default for TttConfig {
    /// 5 steps, decay 0.8 (EAGLE-3's defaults).
    fn default() -> Self {
        TttConfig {
            steps: 5,
            step_decay: 0.8,
        }
    }
}

/// One sequence's TTT inputs (see the module docs for the layout), borrowed.
#[derive(Clone, Copy, Debug)]
pub struct TttSequence<'a> {
    /// `F[T, 3H]`.
    pub features: &'a [f32],
    /// `E[n_e, H]`, `n_e ≥ T`.
    pub embeddings: &'a [f32],
    /// `P[n_p, Vd]`.
    pub target_probs: &'a [f32],
    /// `W[n_p]`.
    pub loss_mask: &'a [f32],
}

/// Rows of a checked sequence.
#[derive(Clone, Copy, Debug)]
struct SeqDims {
    t: usize,
    n_e: usize,
    n_p: usize,
}

impl TttSequence<'_> {
    fn dims(&self, head: &Eagle3Head) -> Result<SeqDims> {
        let (h, vd) = (head.config.hidden, head.config.draft_vocab);
        let bad = |what: &str, len: usize, unit: usize| Error::BufferLen {
            what: format!("TTT {what} (a multiple of {unit})"),
            want: len.div_ceil(unit) * unit,
            got: len,
        };
        if self.features.is_empty() || self.features.len() % (3 * h) != 0 {
            return Err(bad("features [T, 3H], T ≥ 1", self.features.len(), 3 * h));
        }
        let t = self.features.len() / (3 * h);
        if self.embeddings.len() % h != 0 || self.embeddings.len() < t * h {
            return Err(Error::BufferLen {
                what: format!("TTT embeddings [n_e ≥ {t}, {h}]"),
                want: t * h,
                got: self.embeddings.len(),
            });
        }
        if self.target_probs.len() % vd != 0 {
            return Err(bad(
                "target probabilities [n_p, Vd]",
                self.target_probs.len(),
                vd,
            ));
        }
        let n_p = self.target_probs.len() / vd;
        if self.loss_mask.len() != n_p {
            return Err(Error::BufferLen {
                what: "TTT loss mask (one weight per target distribution)".into(),
                want: n_p,
                got: self.loss_mask.len(),
            });
        }
        if let Some(w) = self.loss_mask.iter().find(|w| !w.is_finite() || **w < 0.0) {
            return Err(Error::Invalid {
                what: "TTT loss mask",
                reason: format!("weight {w} is not a non-negative finite number"),
            });
        }
        Ok(SeqDims {
            t,
            n_e: self.embeddings.len() / h,
            n_p,
        })
    }

    /// Row weights per step: `[steps][T]`.
    fn weights(&self, d: SeqDims, steps: usize) -> Vec<Vec<f32>> {
        (0..steps)
            .map(|s| {
                (0..d.t)
                    .map(|t| {
                        if t + s < d.n_e && t + s + 1 < d.n_p {
                            self.loss_mask[t + s + 1]
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// The recorded TTT graph of one sequence.
#[derive(Debug)]
pub struct TttGraph {
    /// The scalar loss (this sequence's share of the batch loss).
    pub loss: Var,
    /// Per step: the normalised cross-entropy before the step decay (`None` when the step has
    /// no weight).
    pub step_ce: Vec<Option<Var>>,
    /// Per step: head outputs (features, keys, values, logits).
    pub steps: Vec<StepOut>,
    /// Per step: row weights `[T]`.
    pub step_weights: Vec<Vec<f32>>,
}

/// Loss and monitoring numbers of a TTT batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TttStats {
    /// The batch loss `Σ_s decay^s · CE_s`.
    pub loss: f64,
    /// `CE_s` per step (normalised by the step's total weight, before decay).
    pub step_loss: Vec<f64>,
    /// Total row weight per step.
    pub step_weight: Vec<f64>,
    /// Top-1 accuracy per step: weight of rows whose draft argmax equals the argmax of their
    /// target distribution, over the step's total weight (0 when the step has no weight).
    pub step_accuracy: Vec<f64>,
}

/// Allowed keys at step `s` for `t` rows (module docs).
pub fn step_keys(t: usize, s: usize) -> KeyLists {
    let mut b = KeyListsBuilder::new((s + 1) * t);
    for row in 0..t {
        for j in 0..=row {
            b.push(j).expect("key below (s+1)·t");
        }
        for step in 1..=s {
            b.push(step * t + row).expect("key below (s+1)·t");
        }
        b.end_row();
    }
    b.finish()
}

fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

impl Eagle3Head {
    /// Per-step total weight of a batch (the normalisers of [`Eagle3Head::ttt_forward`]).
    pub fn ttt_normalisers(&self, batch: &[TttSequence<'_>], ttt: &TttConfig) -> Result<Vec<f32>> {
        let mut n = vec![0f64; ttt.steps];
        for seq in batch {
            let d = seq.dims(self)?;
            for (acc, w) in n.iter_mut().zip(seq.weights(d, ttt.steps)) {
                *acc += w.iter().map(|&x| x as f64).sum::<f64>();
            }
        }
        Ok(n.into_iter().map(|x| x as f32).collect())
    }

    /// Records the TTT unroll of one sequence on `tape`; `normalisers[s]` divides step `s`'s
    /// weighted cross-entropy (use [`Eagle3Head::ttt_normalisers`] of the whole batch).
    pub fn ttt_forward<'a>(
        &self,
        tape: &mut Tape<'a>,
        seq: &TttSequence<'a>,
        ttt: &TttConfig,
        normalisers: &[f32],
    ) -> Result<TttGraph> {
        if ttt.steps == 0 || !ttt.step_decay.is_finite() {
            return Err(Error::Invalid {
                what: "TTT config",
                reason: format!("{ttt:?}: want at least one step and a finite decay"),
            });
        }
        if normalisers.len() != ttt.steps {
            return Err(Error::BufferLen {
                what: "TTT normalisers (one per step)".into(),
                want: ttt.steps,
                got: normalisers.len(),
            });
        }
        let d = seq.dims(self)?;
        let (h, vd, t) = (self.config.hidden, self.config.draft_vocab, d.t);
        let weights = seq.weights(d, ttt.steps);
        let f = tape.constant_ref(Shape::matrix(t, 3 * h), seq.features)?;
        let mut g = self.fc(tape, f)?;
        let (mut past_k, mut past_v) = (Vec::new(), Vec::new());
        let mut steps = Vec::with_capacity(ttt.steps);
        let mut step_ce = Vec::with_capacity(ttt.steps);
        let mut loss: Option<Var> = None;
        for s in 0..ttt.steps {
            let e = if s + t <= d.n_e {
                tape.constant_ref(Shape::matrix(t, h), &seq.embeddings[s * h..(s + t) * h])?
            } else {
                let mut data = vec![0f32; t * h];
                let avail = d.n_e.saturating_sub(s).min(t);
                data[..avail * h].copy_from_slice(&seq.embeddings[s * h..(s + avail) * h]);
                tape.constant(Tensor::matrix(t, h, data)?)
            };
            let positions: Vec<usize> = (s..s + t).collect();
            let out = self.step(tape, g, e, &positions, &past_k, &past_v, step_keys(t, s))?;
            past_k.push(out.k);
            past_v.push(out.v);
            let w = &weights[s];
            let ce = if normalisers[s] > 0.0 && w.iter().any(|&x| x > 0.0) {
                let first = (s + 1).min(d.n_p);
                let last = (s + 1 + t).min(d.n_p);
                let probs = &seq.target_probs[first * vd..last * vd];
                let ce = tape.softmax_cross_entropy_soft(out.logits, probs, w, normalisers[s])?;
                let term = tape.scale(ce, ttt.step_decay.powi(s as i32))?;
                loss = Some(match loss {
                    None => term,
                    Some(l) => tape.add(l, term)?,
                });
                Some(ce)
            } else {
                None
            };
            step_ce.push(ce);
            steps.push(out);
            g = out.features;
        }
        let loss = match loss {
            Some(l) => l,
            None => tape.constant(Tensor::scalar(0.0)),
        };
        Ok(TttGraph {
            loss,
            step_ce,
            steps,
            step_weights: weights,
        })
    }

    fn graph_stats(
        &self,
        tape: &Tape<'_>,
        seq: &TttSequence<'_>,
        graph: &TttGraph,
        stats: &mut TttStats,
    ) -> Result<()> {
        let vd = self.config.draft_vocab;
        stats.loss += tape.scalar(graph.loss)? as f64;
        for (s, (out, w)) in graph.steps.iter().zip(&graph.step_weights).enumerate() {
            if let Some(ce) = graph.step_ce[s] {
                stats.step_loss[s] += tape.scalar(ce)? as f64;
            }
            let logits = tape.value(out.logits);
            for (row, &wt) in w.iter().enumerate() {
                if wt == 0.0 {
                    continue;
                }
                let j = row + s + 1;
                let hit = argmax(&logits[row * vd..(row + 1) * vd])
                    == argmax(&seq.target_probs[j * vd..(j + 1) * vd]);
                stats.step_weight[s] += wt as f64;
                if hit {
                    stats.step_accuracy[s] += wt as f64;
                }
            }
        }
        Ok(())
    }

    fn run_batch(
        &mut self,
        cx: &Compute,
        batch: &[TttSequence<'_>],
        ttt: &TttConfig,
        train: bool,
    ) -> Result<TttStats> {
        let norms = self.ttt_normalisers(batch, ttt)?;
        let mut stats = TttStats {
            loss: 0.0,
            step_loss: vec![0.0; ttt.steps],
            step_weight: vec![0.0; ttt.steps],
            step_accuracy: vec![0.0; ttt.steps],
        };
        for seq in batch {
            let grads = {
                let mut tape = Tape::new(&self.store, cx);
                let graph = self.ttt_forward(&mut tape, seq, ttt, &norms)?;
                self.graph_stats(&tape, seq, &graph, &mut stats)?;
                if train {
                    Some(tape.backward(graph.loss)?)
                } else {
                    None
                }
            };
            if let Some(g) = grads {
                self.store.accumulate(&g)?;
            }
        }
        for (acc, w) in stats.step_accuracy.iter_mut().zip(&stats.step_weight) {
            *acc = if *w > 0.0 { *acc / w } else { 0.0 };
        }
        Ok(stats)
    }

    /// Forward and backward of the TTT loss over `batch`, adding the gradients to the head's
    /// store (zero them first with `store_mut().zero_grads()` when starting a batch).
    pub fn ttt_train_batch(
        &mut self,
        cx: &Compute,
        batch: &[TttSequence<'_>],
        ttt: &TttConfig,
    ) -> Result<TttStats> {
        self.run_batch(cx, batch, ttt, true)
    }

    /// The TTT loss and accuracies over `batch` without gradients (validation).
    pub fn ttt_eval_batch(
        &mut self,
        cx: &Compute,
        batch: &[TttSequence<'_>],
        ttt: &TttConfig,
    ) -> Result<TttStats> {
        self.run_batch(cx, batch, ttt, false)
    }
}
