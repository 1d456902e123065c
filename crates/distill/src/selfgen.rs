//! Self-distillation data: the target regenerates a response to every training prompt, so the
//! head learns the target's own continuations (not ShareGPT's original answers).
//!
//! Generation is greedy (the distribution the temperature-0 benchmarks draft against) and
//! batched: up to `batch` sequences decode together, one token each per forward, which runs the
//! weights once for all of them (a k-row forward costs far less than k one-row forwards).

use crate::Result;
use indicatif::ProgressBar;
use peregrine_model::{ForwardOptions, KvCache, LogitRows, Model, SeqInput};

/// A prompt and the target's response, as one token sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Prompt then response tokens (the response ends with a stop token if one came).
    pub tokens: Vec<u32>,
    /// Prompt length: tokens `n_prompt..` are the target's.
    pub n_prompt: usize,
}

/// How responses are generated.
#[derive(Clone, Debug)]
pub struct SelfGenConfig {
    /// Most new tokens per response.
    pub max_new_tokens: usize,
    /// Sequences decoded together.
    pub batch: usize,
    /// Tokens that end a response (kept in the sample).
    pub stop_ids: Vec<u32>,
}

struct Slot {
    prompt_idx: usize,
    cache: KvCache,
    tokens: Vec<u32>,
    n_prompt: usize,
    next: u32,
}

/// Generates a greedy response to each prompt. Results are in prompt order. A prompt must leave
/// room for `max_new_tokens` in a context of `prompt + max_new_tokens`.
pub fn generate_responses(
    model: &Model,
    prompts: &[Vec<u32>],
    cfg: &SelfGenConfig,
    progress: &ProgressBar,
) -> Result<Vec<Sample>> {
    let batch = cfg.batch.max(1);
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let ctx = longest + cfg.max_new_tokens + 1;
    let chunk = longest.max(batch).max(1);
    let mut ws = model.new_workspace(chunk, batch, ctx);
    let opts = ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps: &[],
    };
    let mut out: Vec<Option<Sample>> = vec![None; prompts.len()];
    let mut pending = (0..prompts.len()).rev().collect::<Vec<_>>();
    let mut slots: Vec<Slot> = Vec::with_capacity(batch);
    let mut positions = vec![0u32; chunk];
    loop {
        // Refill free slots: prefill each new prompt on its own.
        while slots.len() < batch {
            let Some(idx) = pending.pop() else { break };
            let prompt = &prompts[idx];
            if prompt.is_empty() {
                out[idx] = Some(Sample {
                    tokens: Vec::new(),
                    n_prompt: 0,
                });
                progress.inc(1);
                continue;
            }
            let mut cache = model.new_cache(prompt.len() + cfg.max_new_tokens + 1);
            for (i, p) in positions[..prompt.len()].iter_mut().enumerate() {
                *p = i as u32;
            }
            let mut seqs = [SeqInput {
                cache: &mut cache,
                tokens: prompt,
                positions: &positions[..prompt.len()],
                tree: None,
                logits: LogitRows::Last,
            }];
            model.forward(&mut ws, &mut seqs, &opts)?;
            let next = argmax(ws.logits(0));
            slots.push(Slot {
                prompt_idx: idx,
                cache,
                tokens: prompt.clone(),
                n_prompt: prompt.len(),
                next,
            });
        }
        // Emit each slot's pending token; retire the finished ones.
        let mut i = 0;
        while i < slots.len() {
            let s = &mut slots[i];
            s.tokens.push(s.next);
            let n_new = s.tokens.len() - s.n_prompt;
            if cfg.stop_ids.contains(&s.next) || n_new >= cfg.max_new_tokens {
                let s = slots.swap_remove(i);
                out[s.prompt_idx] = Some(Sample {
                    tokens: s.tokens,
                    n_prompt: s.n_prompt,
                });
                progress.inc(1);
            } else {
                i += 1;
            }
        }
        if slots.is_empty() {
            if pending.is_empty() {
                break;
            }
            continue;
        }
        // One decoding forward for every live slot.
        let tokens: Vec<[u32; 1]> = slots.iter().map(|s| [s.next]).collect();
        let pos: Vec<[u32; 1]> = slots.iter().map(|s| [s.cache.len() as u32]).collect();
        let mut seqs: Vec<SeqInput<'_>> = slots
            .iter_mut()
            .zip(tokens.iter().zip(&pos))
            .map(|(s, (t, p))| SeqInput {
                cache: &mut s.cache,
                tokens: t,
                positions: p,
                tree: None,
                logits: LogitRows::Last,
            })
            .collect();
        model.forward(&mut ws, &mut seqs, &opts)?;
        drop(seqs);
        for (i, s) in slots.iter_mut().enumerate() {
            s.next = argmax(ws.logits(i));
        }
    }
    Ok(out
        .into_iter()
        .map(|s| s.expect("every prompt answered"))
        .collect())
}

/// The index of the largest logit (the first on ties, like the engine's greedy sampler).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > max {
            (best, max) = (i, l);
        }
    }
    best as u32
}
