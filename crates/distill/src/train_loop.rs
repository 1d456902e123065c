//! The EAGLE-3 training loop: batches of self-distilled sequences, the target's view of each
//! computed on the fly, the head's training-time-test loss, AdamW, periodic validation on
//! held-out sequences, and resumable checkpoints.

use crate::draft_vocab::DraftVocab;
use crate::selfgen::{argmax, Sample};
use crate::target::{TargetRunner, TargetTables, TargetView};
use crate::{DistillError, Result};
use peregrine_train::{
    clip_grad_norm, load_checkpoint, save_checkpoint, AdamW, AdamWConfig, Compute, Eagle3Head,
    LrSchedule, Tape, TttConfig, TttSequence,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// How to train.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    /// Training-time-test unroll and step decay.
    pub ttt: TttConfig,
    /// AdamW moments and weight decay.
    pub adam: AdamWConfig,
    /// Peak learning rate (after warm-up).
    pub lr: f32,
    /// Learning rate at the end, as a fraction of the peak.
    pub lr_floor_frac: f32,
    /// Warm-up updates.
    pub warmup_steps: u64,
    /// Global gradient-norm clip (0 = off).
    pub clip: f32,
    /// Tokens per update (whole sequences are added until this is reached).
    pub batch_tokens: usize,
    /// Passes over the training sequences.
    pub epochs: usize,
    /// Validate every this many updates (and at the end).
    pub val_every: u64,
    /// Save a checkpoint every this many updates (and at the end), if `checkpoint` is set.
    pub checkpoint_every: u64,
    /// Checkpoint file; an existing one is resumed.
    pub checkpoint: Option<PathBuf>,
    /// Order of sequences.
    pub seed: u64,
    /// Stop after this many updates of this process (`None`: run to the end). The schedule
    /// still spans the whole run, so the checkpoint resumes where this one stopped.
    pub max_updates: Option<u64>,
}

/// One update.
#[derive(Clone, Debug, Serialize)]
pub struct UpdatePoint {
    /// Update index (1-based).
    pub step: u64,
    /// Learning rate used.
    pub lr: f32,
    /// Training TTT loss of the batch.
    pub loss: f64,
    /// Per-step top-1 agreement with the target on the batch.
    pub step_accuracy: Vec<f64>,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Seconds since the start of training (this process).
    pub seconds: f64,
    /// Tokens (sequence positions) in the batch.
    pub tokens: usize,
    /// Seconds this update took: the target's view of the batch, the head's forward and
    /// backward, the optimizer (not validation or checkpoints).
    pub update_seconds: f64,
}

/// One validation.
#[derive(Clone, Debug, Serialize)]
pub struct ValPoint {
    /// After this many updates.
    pub step: u64,
    /// TTT loss on the held-out sequences.
    pub loss: f64,
    /// Per-step top-1 agreement with the target's argmax within the draft vocabulary.
    pub step_accuracy: Vec<f64>,
    /// Mean tokens per target forward of a chain draft of `ttt.steps` tokens: 1 + the mean
    /// number of leading steps whose drafted token is the target's actual greedy token.
    pub chain_tau: f64,
}

/// What training did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrainHistory {
    /// Every update of this process (a resumed run starts after the checkpoint's).
    pub updates: Vec<UpdatePoint>,
    /// Every validation.
    pub validations: Vec<ValPoint>,
    /// Training tokens (prompt and response) per epoch.
    pub tokens_per_epoch: usize,
    /// Updates in the whole run.
    pub total_steps: u64,
}

impl TrainHistory {
    /// Training throughput of this process: batch tokens per second of update time.
    pub fn train_tokens_per_second(&self) -> f64 {
        let tokens: usize = self.updates.iter().map(|u| u.tokens).sum();
        let secs: f64 = self.updates.iter().map(|u| u.update_seconds).sum();
        tokens as f64 / secs.max(1e-9)
    }
}

/// Trains `head` on `train` sequences, validating on `val`. `on_update` is called after every
/// update and validation (for progress bars and logs).
#[allow(clippy::too_many_arguments)]
pub fn train_eagle3(
    head: &mut Eagle3Head,
    cx: &Compute,
    runner: &mut TargetRunner<'_>,
    tables: &TargetTables,
    vocab: &DraftVocab,
    train: &[Sample],
    val: &[Sample],
    cfg: &TrainConfig,
    on_update: &mut dyn FnMut(&TrainHistory),
) -> Result<TrainHistory> {
    let batches = batches(train, cfg.batch_tokens, cfg.epochs, cfg.seed);
    let total_steps = batches.len() as u64;
    let schedule = LrSchedule {
        peak: cfg.lr,
        floor: cfg.lr * cfg.lr_floor_frac,
        warmup_steps: cfg.warmup_steps.min(total_steps / 2),
        total_steps,
    };
    let mut adam = AdamW::new(cfg.adam, head.store()).map_err(train_err)?;
    if let Some(path) = cfg.checkpoint.as_ref().filter(|p| p.exists()) {
        let resumed = load_checkpoint(path, head.store_mut()).map_err(train_err)?;
        if resumed.schedule != schedule {
            return Err(DistillError::Config(format!(
                "{}: the checkpoint's schedule {:?} is not this run's {schedule:?} (other settings or data)",
                path.display(),
                resumed.schedule
            )));
        }
        adam = resumed.adam;
        tracing::info!(step = adam.n_steps(), "resumed from {}", path.display());
    }
    let mut history = TrainHistory {
        tokens_per_epoch: train.iter().map(|s| s.tokens.len()).sum(),
        total_steps,
        ..TrainHistory::default()
    };
    let val_views = val
        .iter()
        .map(|s| runner.view(s, tables, vocab, cfg.ttt.steps))
        .collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    if adam.n_steps() == 0 {
        history
            .validations
            .push(validate(head, cx, &val_views, val, vocab, &cfg.ttt, 0)?);
        on_update(&history);
    }
    let stop_at = cfg
        .max_updates
        .map_or(total_steps, |n| (adam.n_steps() + n).min(total_steps));
    while adam.n_steps() < stop_at {
        let update_start = Instant::now();
        let step = adam.n_steps();
        let batch = &batches[step as usize];
        let views = batch
            .iter()
            .map(|&i| runner.view(&train[i], tables, vocab, cfg.ttt.steps))
            .collect::<Result<Vec<_>>>()?;
        let seqs: Vec<TttSequence<'_>> = views.iter().map(ttt_sequence).collect();
        head.store_mut().zero_grads();
        let stats = head
            .ttt_train_batch(cx, &seqs, &cfg.ttt)
            .map_err(train_err)?;
        let grad_norm = clip_grad_norm(head.store_mut(), cfg.clip);
        let lr = schedule.lr(step);
        if !grad_norm.is_finite() || !stats.loss.is_finite() {
            return Err(DistillError::Config(format!(
                "update {}: the loss ({}) or gradient norm ({grad_norm}) is not finite; lower the learning rate",
                step + 1,
                stats.loss
            )));
        }
        adam.step(head.store_mut(), lr).map_err(train_err)?;
        history.updates.push(UpdatePoint {
            step: step + 1,
            lr,
            loss: stats.loss,
            step_accuracy: stats.step_accuracy,
            grad_norm,
            seconds: start.elapsed().as_secs_f64(),
            tokens: views.iter().map(|v| v.len).sum(),
            update_seconds: update_start.elapsed().as_secs_f64(),
        });
        let done = adam.n_steps();
        if done % cfg.val_every.max(1) == 0 || done == stop_at {
            history
                .validations
                .push(validate(head, cx, &val_views, val, vocab, &cfg.ttt, done)?);
        }
        if let Some(path) = &cfg.checkpoint {
            if done % cfg.checkpoint_every.max(1) == 0 || done == stop_at {
                let meta = BTreeMap::from([("updates".to_string(), done.to_string())]);
                save_checkpoint(path, head.store(), &adam, &schedule, &meta).map_err(train_err)?;
            }
        }
        on_update(&history);
    }
    Ok(history)
}

/// Starts the head as "the target's layer L−3 state, through the target's head": `fc` passes
/// the third feature (the residual stream entering layer L−3) through unchanged and the two
/// residual branches (`o_proj`, `down_proj`) start at zero, so the first logits are the
/// target's early exit at L−3 instead of random vectors amplified by the target's final norm
/// (which start the loss near 40 with gradient norms in the hundreds). With `lm_head` and
/// `norm` initialised from the target (see [`Eagle3Head::init`]) nothing starts random except
/// the branches' inner weights.
pub fn warm_start(head: &mut Eagle3Head) -> Result<()> {
    let h = head.config().hidden;
    let mut fc = vec![0f32; h * 3 * h];
    for i in 0..h {
        fc[i * 3 * h + 2 * h + i] = 1.0;
    }
    let store = head.store_mut();
    // An empty value means zeros of the parameter's own size.
    for (name, value) in [
        ("fc.weight", fc),
        ("midlayer.self_attn.o_proj.weight", Vec::new()),
        ("midlayer.mlp.down_proj.weight", Vec::new()),
    ] {
        let id = store.id(name).map_err(train_err)?;
        let value = if value.is_empty() {
            vec![0.0; store.value(id).data().len()]
        } else {
            value
        };
        store.set_value(id, &value).map_err(train_err)?;
    }
    Ok(())
}

/// Sequence indices per update: each epoch shuffled with `seed + epoch`, cut into groups of at
/// least `batch_tokens` tokens (the last group of an epoch may be smaller).
fn batches(train: &[Sample], batch_tokens: usize, epochs: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for epoch in 0..epochs {
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed + epoch as u64));
        let mut batch = Vec::new();
        let mut tokens = 0;
        for i in order {
            batch.push(i);
            tokens += train[i].tokens.len();
            if tokens >= batch_tokens {
                out.push(std::mem::take(&mut batch));
                tokens = 0;
            }
        }
        if !batch.is_empty() {
            out.push(batch);
        }
    }
    out
}

fn ttt_sequence(v: &TargetView) -> TttSequence<'_> {
    TttSequence {
        features: &v.features,
        embeddings: &v.embeds,
        target_probs: &v.probs,
        loss_mask: &v.weights,
    }
}

/// Loss, per-step agreement and chain acceptance on held-out sequences.
fn validate(
    head: &mut Eagle3Head,
    cx: &Compute,
    views: &[TargetView],
    samples: &[Sample],
    vocab: &DraftVocab,
    ttt: &TttConfig,
    step: u64,
) -> Result<ValPoint> {
    let seqs: Vec<TttSequence<'_>> = views.iter().map(ttt_sequence).collect();
    let stats = head.ttt_eval_batch(cx, &seqs, ttt).map_err(train_err)?;
    let (mut accepted, mut rows) = (0usize, 0usize);
    for ((view, seq), sample) in views.iter().zip(&seqs).zip(samples) {
        let norms = head.ttt_normalisers(&[*seq], ttt).map_err(train_err)?;
        let mut tape = Tape::new(head.store(), cx);
        let graph = head
            .ttt_forward(&mut tape, seq, ttt, &norms)
            .map_err(train_err)?;
        let vd = vocab.len();
        // Rows whose first drafted token (x_{t+2}) is a response token.
        for t in 0..view.len {
            if graph.step_weights[0][t] == 0.0 {
                continue;
            }
            rows += 1;
            for (s, out) in graph.steps.iter().enumerate() {
                let Some(&actual) = sample.tokens.get(t + s + 2) else {
                    break;
                };
                let logits = &tape.value(out.logits)[t * vd..(t + 1) * vd];
                if vocab.to_target[argmax(logits) as usize] != actual {
                    break;
                }
                accepted += 1;
            }
        }
    }
    Ok(ValPoint {
        step,
        loss: stats.loss,
        step_accuracy: stats.step_accuracy,
        chain_tau: 1.0 + accepted as f64 / rows.max(1) as f64,
    })
}

fn train_err(e: peregrine_train::Error) -> DistillError {
    DistillError::Config(format!("training: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_sequence_once_per_epoch() {
        let train: Vec<Sample> = (0..10)
            .map(|i| Sample {
                tokens: vec![0; 3 + i],
                n_prompt: 1,
            })
            .collect();
        let b = batches(&train, 20, 2, 7);
        let mut seen = vec![0; 10];
        b.iter().flatten().for_each(|&i| seen[i] += 1);
        assert_eq!(seen, vec![2; 10]);
        // Within an epoch every batch but the last reaches the token budget.
        let mut n = 0;
        for batch in &b {
            n += batch.len();
            let tokens: usize = batch.iter().map(|&i| train[i].tokens.len()).sum();
            assert!(tokens >= 20 || n == 10, "{batch:?} has {tokens} tokens");
            if n == 10 {
                break;
            }
        }
        assert_eq!(b, batches(&train, 20, 2, 7), "deterministic for a seed");
    }
}
