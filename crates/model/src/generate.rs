//! Plain (non-speculative) generation: prefill, then one token per forward until a stop.
//!
//! A [`Session`] owns one sequence's KV cache and remembers which tokens it holds, so a chat
//! that re-renders the whole conversation each turn only computes the new suffix: the common
//! prefix stays cached, the rest is rolled back (`KvCache::truncate`).

use crate::model::{ForwardOptions, LogitRows, Model, SeqInput, Workspace};
use crate::sampling::{Sampler, SamplingParams};
use crate::stop::StopScanner;
use crate::{Error, KvCache, Result};
use peregrine_tokenizer::Tokenizer;
use std::time::Instant;

/// Prompt tokens per prefill forward (longer prompts run in chunks of this size). The
/// workspace holds one chunk's activations: 128 rows instead of 512 cut `peregrine bench`'s
/// peak RSS by 17 MiB for about 2% of prefill speed (the weights are still read once per 128
/// rows, where the matmuls are compute-bound).
pub const PREFILL_CHUNK: usize = 128;

/// What to generate.
#[derive(Clone, Debug, Default)]
pub struct GenerateParams {
    /// Stop after this many new tokens.
    pub max_tokens: usize,
    /// How tokens are picked.
    pub sampling: SamplingParams,
    /// Stop when the text contains one of these (the stop string is not part of the output).
    pub stop_strings: Vec<String>,
}

/// Why generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` reached.
    MaxTokens,
    /// An end-of-generation token (EOS, end of turn).
    StopToken(u32),
    /// One of the stop strings appeared.
    StopString(String),
    /// The context is full.
    ContextFull,
}

/// The result of one `generate` call.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (without a final stop token).
    pub tokens: Vec<u32>,
    /// Their text, cut before any stop string.
    pub text: String,
    /// Prompt tokens.
    pub n_prompt: usize,
    /// Prompt tokens computed (the rest were already cached).
    pub n_prompt_computed: usize,
    /// Seconds spent on the prompt.
    pub prefill_s: f64,
    /// Seconds spent generating.
    pub decode_s: f64,
    /// Why it stopped.
    pub stop_reason: StopReason,
}

/// Brings `cache` (holding the tokens in `history`) to `prompt`: keeps the longest cached
/// common prefix (rolling back the rest), then computes the remaining tokens in chunks of
/// [`PREFILL_CHUNK`], the last with logits for its final row (at least one token is always
/// computed, so there are logits to sample from). Returns the number of tokens computed.
///
/// Shared by plain generation and speculative decoding, so both start from the same state.
pub fn prefill_reusing_prefix(
    model: &Model,
    cache: &mut KvCache,
    ws: &mut Workspace,
    history: &mut Vec<u32>,
    prompt: &[u32],
) -> Result<usize> {
    prefill_reusing_prefix_with_taps(model, cache, ws, history, prompt, &[], &mut |_, _, _| {})
}

/// [`prefill_reusing_prefix`] that also copies out the residual stream entering each layer of
/// `taps` (`n_layers` = after the last layer) for every computed prompt token: after each
/// chunk's forward, `on_chunk(ws, pos, n)` sees the taps of positions `pos..pos + n` as rows
/// `0..n` of `ws.tap(i)` (EAGLE heads read the target's features this way).
pub fn prefill_reusing_prefix_with_taps(
    model: &Model,
    cache: &mut KvCache,
    ws: &mut Workspace,
    history: &mut Vec<u32>,
    prompt: &[u32],
    taps: &[usize],
    on_chunk: &mut dyn FnMut(&Workspace, usize, usize),
) -> Result<usize> {
    let capacity = cache.capacity();
    if prompt.is_empty() {
        return Err(Error::InvalidRequest("the prompt is empty".into()));
    }
    if prompt.len() >= capacity {
        return Err(Error::InvalidRequest(format!(
            "the prompt has {} tokens but the context holds {capacity} (and one more is needed to generate)",
            prompt.len()
        )));
    }
    let common = history
        .iter()
        .zip(prompt)
        .take_while(|(a, b)| a == b)
        .count();
    let keep = common.min(prompt.len() - 1);
    cache.truncate(keep);
    history.truncate(keep);
    let opts = ForwardOptions {
        layers: 0..model.config().n_layers,
        head: true,
        taps,
    };
    let mut positions = [0u32; PREFILL_CHUNK];
    let mut pos = keep;
    while pos < prompt.len() {
        let end = (pos + PREFILL_CHUNK).min(prompt.len());
        let logits = if end == prompt.len() {
            LogitRows::Last
        } else {
            LogitRows::None
        };
        for (i, p) in positions[..end - pos].iter_mut().enumerate() {
            *p = (pos + i) as u32;
        }
        let mut seqs = [SeqInput {
            cache: &mut *cache,
            tokens: &prompt[pos..end],
            positions: &positions[..end - pos],
            tree: None,
            logits,
        }];
        model.forward(ws, &mut seqs, &opts)?;
        if !taps.is_empty() {
            on_chunk(ws, pos, end - pos);
        }
        history.extend_from_slice(&prompt[pos..end]);
        pos = end;
    }
    Ok(prompt.len() - keep)
}

/// One sequence being generated: its cache, buffers, and the tokens the cache holds.
pub struct Session {
    cache: KvCache,
    ws: Workspace,
    history: Vec<u32>,
}

impl Session {
    /// A session with room for `context` tokens.
    pub fn new(model: &Model, context: usize) -> Self {
        Self {
            cache: model.new_cache(context),
            ws: model.new_workspace(PREFILL_CHUNK.min(context.max(1)), 1, context),
            history: Vec::with_capacity(context),
        }
    }

    /// Tokens currently cached.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Generates after `prompt` (the whole sequence so far: a cached common prefix is reused),
    /// calling `on_text` with each piece of text as soon as it is final.
    pub fn generate(
        &mut self,
        model: &Model,
        tokenizer: &Tokenizer,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        params.sampling.validate().map_err(Error::InvalidRequest)?;
        let start = Instant::now();
        let n_prompt_computed = prefill_reusing_prefix(
            model,
            &mut self.cache,
            &mut self.ws,
            &mut self.history,
            prompt,
        )?;
        let prefill_s = start.elapsed().as_secs_f64();

        let decode_start = Instant::now();
        let mut sampler = Sampler::new(params.sampling.clone(), model.config().vocab_size);
        let mut stream = tokenizer.stream_decoder();
        let mut text = StopScanner::new(&params.stop_strings);
        let mut tokens = Vec::with_capacity(params.max_tokens);
        let stop_reason = loop {
            if tokens.len() >= params.max_tokens {
                break StopReason::MaxTokens;
            }
            let next = sampler.sample(self.ws.logits(0), &self.history);
            if tokenizer.stop_ids().contains(&next) {
                break StopReason::StopToken(next);
            }
            tokens.push(next);
            if let Some(piece) = stream.push(next) {
                if let Some(stop) = text.push(&piece, on_text) {
                    break StopReason::StopString(stop);
                }
            }
            if self.history.len() + 1 >= self.cache.capacity() {
                break StopReason::ContextFull;
            }
            self.step(model, &[next], self.history.len(), LogitRows::Last)?;
        };
        if !matches!(stop_reason, StopReason::StopString(_)) {
            if let Some(rest) = stream.finish() {
                if let Some(stop) = text.push(&rest, on_text) {
                    return Ok(self.finish(
                        tokens,
                        text,
                        prompt.len(),
                        n_prompt_computed,
                        prefill_s,
                        decode_start,
                        StopReason::StopString(stop),
                    ));
                }
            }
            text.flush(on_text);
        }
        Ok(self.finish(
            tokens,
            text,
            prompt.len(),
            n_prompt_computed,
            prefill_s,
            decode_start,
            stop_reason,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        tokens: Vec<u32>,
        text: StopScanner<'_>,
        n_prompt: usize,
        n_prompt_computed: usize,
        prefill_s: f64,
        decode_start: Instant,
        stop_reason: StopReason,
    ) -> Generation {
        Generation {
            tokens,
            text: text.into_text(),
            n_prompt,
            n_prompt_computed,
            prefill_s,
            decode_s: decode_start.elapsed().as_secs_f64(),
            stop_reason,
        }
    }

    /// One forward over `tokens` at positions `pos..`, appending them to the history.
    fn step(
        &mut self,
        model: &Model,
        tokens: &[u32],
        pos: usize,
        logits: LogitRows<'_>,
    ) -> Result<()> {
        let mut positions = [0u32; PREFILL_CHUNK];
        for (i, p) in positions[..tokens.len()].iter_mut().enumerate() {
            *p = (pos + i) as u32;
        }
        let opts = ForwardOptions {
            layers: 0..model.config().n_layers,
            head: true,
            taps: &[],
        };
        let mut seqs = [SeqInput {
            cache: &mut self.cache,
            tokens,
            positions: &positions[..tokens.len()],
            tree: None,
            logits,
        }];
        model.forward(&mut self.ws, &mut seqs, &opts)?;
        self.history.extend_from_slice(tokens);
        Ok(())
    }
}
