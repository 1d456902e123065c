//! The speculative generation loop: draft a tree, verify it with one target forward, keep the
//! accepted path's KV rows, emit the accepted tokens and the bonus token, repeat.
//!
//! Node 0 of every tree is the last emitted token, which is not yet in the KV cache; so each
//! step forwards `1 + drafted` tokens and emits `1 + accepted` (tau counts both). With nothing
//! drafted a step is exactly a plain decoding step. Greedy output equals plain greedy decoding
//! token for token, because logits do not depend on the tree they are computed in (DESIGN.md §2).
//! Sampling is distributed as plain sampling and reproducible for a seed with a fixed tree; with
//! `TreeSpec::Auto` the trees depend on measured timings, so the draws (not their distribution)
//! vary from run to run.

use crate::controller::{Controller, StepReport, CALIBRATION_SIZES};
use crate::drafter::{DraftPlan, Drafter};
use crate::early_exit::EarlyExitDrafts;
use crate::tree::{TokenTree, TreeShape, MAX_TREE_NODES};
use crate::verify::{sample_from, walk_sampled, TargetShaper, WalkBuffers};
use crate::{Error, Result};
use peregrine_model::generate::{prefill_reusing_prefix_with_taps, PREFILL_CHUNK};
use peregrine_model::{
    ForwardOptions, GenerateParams, Generation, KvCache, LogitRows, Model, Sampler, SeqInput,
    StopReason, StopScanner, Workspace,
};
use peregrine_tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::path::Path;
use std::time::Instant;

/// Which trees to draft.
#[derive(Clone, Debug)]
pub enum TreeSpec {
    /// A static shape (`chain:N`, `eagle-default`, or a tree file).
    Shape(TreeShape),
    /// Best-first trees from drafter scores: `dynamic:BUDGET,DEPTH,TOPK`.
    Dynamic {
        /// Drafted nodes.
        budget: usize,
        /// Levels.
        depth: usize,
        /// Children per node.
        top_k: usize,
    },
    /// Dynamic trees cut each step by the adaptive [`Controller`] (down to plain decoding).
    Auto,
}

/// The most a `dynamic` or `auto` tree drafts below the root.
const AUTO_BUDGET: usize = 32;
const AUTO_DEPTH: usize = 16;
const AUTO_TOP_K: usize = 4;

impl TreeSpec {
    /// Parses `chain:N`, `eagle-default`, `dynamic:BUDGET,DEPTH,TOPK`, `auto`, or else reads a
    /// tree file at that path.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |msg: &str| Error::TreeSpec {
            spec: spec.to_string(),
            msg: msg.to_string(),
        };
        if spec == "auto" {
            return Ok(Self::Auto);
        }
        if spec == "eagle-default" {
            return Ok(Self::Shape(TreeShape::eagle_default()));
        }
        if let Some(n) = spec.strip_prefix("chain:") {
            let n: usize = n.parse().map_err(|_| bad("N must be a number"))?;
            if n == 0 || n >= MAX_TREE_NODES {
                return Err(bad(&format!("N must be in 1..{MAX_TREE_NODES}")));
            }
            return Ok(Self::Shape(TreeShape::chain(n)?));
        }
        if let Some(rest) = spec.strip_prefix("dynamic:") {
            let parts: Vec<usize> = rest
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<usize>()
                        .map_err(|_| bad("BUDGET, DEPTH and TOPK must be numbers"))
                })
                .collect::<Result<_>>()?;
            let [budget, depth, top_k] = parts[..] else {
                return Err(bad("expected three numbers"));
            };
            if budget == 0 || budget >= MAX_TREE_NODES || depth == 0 || top_k == 0 {
                return Err(bad(&format!(
                    "BUDGET must be in 1..{MAX_TREE_NODES}; DEPTH and TOPK at least 1"
                )));
            }
            return Ok(Self::Dynamic {
                budget,
                depth,
                top_k,
            });
        }
        let path = Path::new(spec);
        if !path.exists() {
            return Err(bad("no such preset or file"));
        }
        Ok(Self::Shape(TreeShape::load(path)?))
    }

    fn plan(&self) -> DraftPlan<'_> {
        match self {
            Self::Shape(shape) => DraftPlan::Shape(shape),
            Self::Dynamic {
                budget,
                depth,
                top_k,
            } => DraftPlan::Dynamic {
                budget: *budget,
                depth: *depth,
                top_k: *top_k,
            },
            Self::Auto => DraftPlan::Dynamic {
                budget: AUTO_BUDGET,
                depth: AUTO_DEPTH,
                top_k: AUTO_TOP_K,
            },
        }
    }
}

/// Counters of one speculative generation.
#[derive(Clone, Debug, Default)]
pub struct SpecStats {
    /// Drafter name.
    pub method: String,
    /// Target forwards after the prompt (verification steps, plain steps included).
    pub steps: usize,
    /// Tokens those steps produced (accepted drafts plus bonus tokens).
    pub n_step_tokens: usize,
    /// Drafted nodes verified, over all steps.
    pub n_drafted: usize,
    /// Steps that accepted a drafted token at depth `d + 1`, for each `d`.
    pub accepted_per_depth: Vec<u64>,
    /// Seconds spent drafting (and choosing the tree).
    pub draft_s: f64,
    /// Seconds spent in verification forwards and the acceptance walk.
    pub verify_s: f64,
    /// Seconds the drafter spent taking in the target's features after verifications and
    /// catching up on them (EAGLE heads; part of `verify_s` and outside it before drafting
    /// steps that follow plain ones), prefill excluded.
    pub features_s: f64,
}

impl SpecStats {
    /// Tokens per target forward, bonus token included (1 for plain decoding).
    pub fn tau(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.n_step_tokens as f64 / self.steps as f64
        }
    }
}

/// A generation and how speculation went.
#[derive(Clone, Debug)]
pub struct SpecGeneration {
    /// Tokens, text, timings and stop reason, as plain generation reports them.
    pub generation: Generation,
    /// Speculation counters.
    pub stats: SpecStats,
}

/// One sequence generated speculatively: the target's KV cache, buffers, the tokens it holds.
pub struct SpecSession {
    cache: KvCache,
    ws: Workspace,
    /// Tokens in the cache.
    history: Vec<u32>,
    tree: TokenTree,
    positions: Vec<u32>,
    path: Vec<usize>,
    walk: WalkBuffers,
    /// Hidden states entering the exit layer of early-exit drafts, row by row.
    hidden: Vec<f32>,
    early_exit: EarlyExitDrafts,
    controller: Option<Controller>,
    /// `0..PREFILL_CHUNK`: the rows of a prefill chunk, for `Drafter::observe_features`.
    tap_rows: Vec<usize>,
}

impl SpecSession {
    /// A session with room for `context` tokens.
    pub fn new(model: &Model, context: usize) -> Self {
        let rows = PREFILL_CHUNK.min(context.max(1)).max(MAX_TREE_NODES);
        Self {
            cache: model.new_cache(context),
            ws: model.new_workspace(rows, MAX_TREE_NODES, context),
            history: Vec::with_capacity(context),
            tree: TokenTree::new(),
            positions: Vec::with_capacity(PREFILL_CHUNK),
            path: Vec::with_capacity(MAX_TREE_NODES),
            walk: WalkBuffers::default(),
            hidden: Vec::new(),
            early_exit: EarlyExitDrafts::default(),
            controller: None,
            tap_rows: (0..PREFILL_CHUNK).collect(),
        }
    }

    /// Tokens currently cached.
    pub fn history(&self) -> &[u32] {
        &self.history
    }

    /// Generates after `prompt` with `drafter` proposing `tree`s; see the module docs.
    /// `on_text` receives text as soon as it is final, as with plain generation.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &mut self,
        model: &Model,
        tokenizer: &Tokenizer,
        drafter: &mut dyn Drafter,
        tree_spec: &TreeSpec,
        prompt: &[u32],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<SpecGeneration> {
        params.sampling.validate().map_err(Error::InvalidRequest)?;
        let capacity = self.cache.capacity();
        let vocab = model.config().vocab_size;
        let start = Instant::now();
        // Drafters that read the target's hidden states (EAGLE) get them for every position.
        let feature_layers: Vec<usize> = drafter.feature_layers().to_vec();
        if !feature_layers.is_empty() {
            let keep = drafter.reuse_prefix(prompt);
            if self.history.len() > keep {
                self.history.truncate(keep);
                self.cache.truncate(keep);
            }
        }
        let mut feature_err = None;
        let rows = &self.tap_rows;
        let n_prompt_computed = prefill_reusing_prefix_with_taps(
            model,
            &mut self.cache,
            &mut self.ws,
            &mut self.history,
            prompt,
            &feature_layers,
            &mut |ws, pos, n| {
                if feature_err.is_none() {
                    feature_err = drafter.observe_features(ws, &rows[..n], pos).err();
                }
            },
        )?;
        if let Some(e) = feature_err {
            return Err(e);
        }
        let prefill_s = start.elapsed().as_secs_f64();

        let decode_start = Instant::now();
        let greedy = params.sampling.temperature <= 0.0;
        let mut sampler = Sampler::new(params.sampling.clone(), vocab);
        let mut shaper = TargetShaper::new(params.sampling.clone(), vocab);
        let mut rng = StdRng::seed_from_u64(params.sampling.seed);
        let mut stats = SpecStats {
            method: drafter.name().to_string(),
            ..SpecStats::default()
        };
        // The controller (kept across generations, with its measurements) steers `auto` trees
        // only: a fixed tree is drafted and verified as asked.
        let adaptive = matches!(tree_spec, TreeSpec::Auto);
        if adaptive && self.controller.is_none() {
            self.controller = Some(self.measure_costs(model)?);
        }
        let plan = tree_spec.plan();
        let exit_layer = drafter.shared_exit_layer();
        if let Some(e) = exit_layer {
            let n_layers = model.config().n_layers;
            if e == 0 || e >= n_layers {
                return Err(Error::ExitLayer {
                    exit_layer: e,
                    n_layers,
                });
            }
        }
        let mut emitter = Emitter::new(tokenizer, params, prompt.len(), capacity);

        // `ctx` is the whole sequence: the cached history plus the pending root.
        let mut ctx: Vec<u32> = Vec::with_capacity(capacity);
        ctx.extend_from_slice(&self.history);
        let root = if greedy {
            sampler.sample(self.ws.logits(0), &ctx)
        } else {
            shaper.probs(self.ws.logits(0), &ctx, &mut self.walk.probs);
            sample_from(&self.walk.probs, &mut rng).unwrap_or(0)
        };
        let stop_reason = 'gen: {
            if let Some(stop) = emitter.emit(root, on_text) {
                break 'gen stop;
            }
            ctx.push(root);
            // Whether the last step was plain; the prompt's features may also wait for a catch-up.
            let mut prev_skipped = true;
            loop {
                // Plain generation runs one more forward after its last token; this does not.
                if emitter.tokens.len() >= params.max_tokens {
                    break 'gen emitter.finish(StopReason::MaxTokens, on_text);
                }
                let base = self.cache.len();
                debug_assert_eq!(base + 1, ctx.len());
                let skip = self
                    .controller
                    .as_mut()
                    .filter(|_| adaptive)
                    .is_some_and(|c| !c.worth_drafting());
                if !skip && prev_skipped {
                    // Work deferred over plain steps is not this draft's cost.
                    let t = Instant::now();
                    drafter.catch_up(&ctx)?;
                    stats.features_s += t.elapsed().as_secs_f64();
                }
                prev_skipped = skip;
                let draft_start = Instant::now();
                self.tree.reset(*ctx.last().expect("the root is in ctx"));
                // Rows whose hidden state entering the exit layer is in `self.hidden`.
                let mut n_early = 0;
                if !skip {
                    // Auto: ask for a tree about the size the controller keeps.
                    let sized = match (&plan, self.controller.as_ref().filter(|_| adaptive)) {
                        (DraftPlan::Dynamic { top_k, .. }, Some(c)) => {
                            let depth = c.draft_depth(AUTO_DEPTH);
                            DraftPlan::Dynamic {
                                budget: c.draft_budget(AUTO_BUDGET).max(depth),
                                depth,
                                top_k: *top_k,
                            }
                        }
                        _ => plan.clone(),
                    };
                    match exit_layer {
                        Some(e) => {
                            n_early = self.early_exit.draft(
                                model,
                                &mut self.cache,
                                &mut self.ws,
                                e,
                                &sized,
                                drafter.min_score(),
                                &mut self.tree,
                                &mut self.hidden,
                            )?
                        }
                        None => drafter.propose(&ctx, &sized, &mut self.tree)?,
                    }
                }
                // Levels drafted (a drafter pays about one forward per level).
                let levels = self.tree.depths().iter().copied().max().unwrap_or(0);
                if let Some(c) = self.controller.as_mut().filter(|_| adaptive) {
                    let keep = c.choose(&self.tree);
                    if !skip {
                        c.record_choice(&self.tree, keep);
                    }
                    self.tree.truncate(keep);
                }
                // Room in the cache, and no deeper than the tokens still to emit: cut before
                // the first node below that depth (all of them, for trees drafted level by
                // level; a prefix keeps every node's ancestors).
                let remaining = params.max_tokens.saturating_sub(emitter.tokens.len());
                let too_deep = self.tree.depths().iter().position(|&d| d > remaining);
                self.tree
                    .truncate((capacity - base).min(too_deep.unwrap_or(usize::MAX)));
                let n = self.tree.len();
                if n_early > 0 {
                    // Drop the early layers' rows of drafts cut from the chain.
                    self.cache.truncate(base + n);
                }
                let draft_s = draft_start.elapsed().as_secs_f64();

                let verify_start = Instant::now();
                self.tree.positions(base, &mut self.positions);
                let first_layer = match exit_layer {
                    Some(e) if n_early > 0 => {
                        let h = model.config().hidden_size;
                        self.ws.set_hidden(&self.hidden[..n * h], n)?;
                        e
                    }
                    _ => 0,
                };
                let opts = ForwardOptions {
                    layers: first_layer..model.config().n_layers,
                    head: true,
                    taps: &feature_layers,
                };
                let mut seqs = [SeqInput {
                    cache: &mut self.cache,
                    tokens: self.tree.tokens(),
                    positions: &self.positions,
                    tree: (n > 1).then(|| self.tree.masks()),
                    logits: LogitRows::All,
                }];
                model.forward(&mut self.ws, &mut seqs, &opts)?;
                let forward_s = verify_start.elapsed().as_secs_f64();

                // Walk down the tree; accepted tokens join `ctx` (the penalties' history).
                // A tree of the root alone is a plain step: sample as plain decoding does (one
                // pass over the vocabulary, not the full distribution the walk needs).
                let bonus = if greedy || n == 1 {
                    self.path.clear();
                    self.path.push(0);
                    let mut node = 0;
                    loop {
                        let next = sampler.sample(self.ws.logits(node), &ctx);
                        match self
                            .tree
                            .children(node)
                            .find(|&c| self.tree.tokens()[c] == next)
                        {
                            Some(c) => {
                                node = c;
                                self.path.push(c);
                                ctx.push(next);
                            }
                            None => break next,
                        }
                    }
                } else {
                    let (tree, ws) = (&self.tree, &self.ws);
                    let target = |node: usize, out: &mut Vec<f32>| {
                        if node != 0 {
                            ctx.push(tree.tokens()[node]);
                        }
                        shaper.probs(ws.logits(node), &ctx, out);
                    };
                    walk_sampled(tree, target, &mut self.walk, &mut self.path, &mut rng)
                };
                self.cache.compact(base, &self.path).map_err(Error::Model)?;
                if !feature_layers.is_empty() {
                    // The root and the accepted path are positions base.. of the context.
                    let t = Instant::now();
                    drafter.observe_features(&self.ws, &self.path, base)?;
                    stats.features_s += t.elapsed().as_secs_f64();
                }
                let n_accepted = self.path.len() - 1;
                stats.steps += 1;
                stats.n_step_tokens += n_accepted + 1;
                stats.n_drafted += n - 1;
                if stats.accepted_per_depth.len() < n_accepted {
                    stats.accepted_per_depth.resize(n_accepted, 0);
                }
                stats.accepted_per_depth[..n_accepted]
                    .iter_mut()
                    .for_each(|c| *c += 1);
                if let Some(c) = self.controller.as_mut().filter(|_| adaptive) {
                    c.observe(&self.tree, &self.path);
                    c.record_step(&StepReport {
                        drafted: !skip,
                        levels,
                        k: n,
                        n_tokens: n_accepted + 1,
                        draft_s,
                        forward_s,
                        step_s: draft_start.elapsed().as_secs_f64(),
                    });
                }
                stats.draft_s += draft_s;
                stats.verify_s += verify_start.elapsed().as_secs_f64();

                for &node in &self.path[1..] {
                    if let Some(stop) = emitter.emit(self.tree.tokens()[node], on_text) {
                        break 'gen stop;
                    }
                }
                if let Some(stop) = emitter.emit(bonus, on_text) {
                    break 'gen stop;
                }
                ctx.push(bonus);
                drafter.accept(&ctx, n_accepted);
            }
        };
        // The cache holds a prefix of the true sequence (possibly past a stop).
        self.history.clear();
        self.history
            .extend_from_slice(&ctx[..self.cache.len().min(ctx.len())]);
        self.cache.truncate(self.history.len());
        let Emitter {
            tokens,
            text,
            stream,
            ..
        } = emitter;
        drop(stream);
        let generation = Generation {
            tokens,
            text: text.into_text(),
            n_prompt: prompt.len(),
            n_prompt_computed,
            prefill_s,
            decode_s: decode_start.elapsed().as_secs_f64(),
            stop_reason,
        };
        Ok(SpecGeneration { generation, stats })
    }

    /// Times target forwards of [`CALIBRATION_SIZES`] tokens on the current cache (then
    /// rolled back): two rounds over the sizes, the fastest of each kept, so that a change of
    /// machine load mid-way hits every size alike.
    fn measure_costs(&mut self, model: &Model) -> Result<Controller> {
        let base = self.cache.len();
        let max_k = CALIBRATION_SIZES[CALIBRATION_SIZES.len() - 1];
        let tokens = vec![self.history.last().copied().unwrap_or(0); max_k];
        let positions: Vec<u32> = (0..max_k).map(|i| (base + i) as u32).collect();
        let sizes: Vec<usize> = CALIBRATION_SIZES
            .iter()
            .map(|&k| k.min(self.cache.capacity() - base))
            .filter(|&k| k > 0)
            .collect();
        let mut times: Vec<(usize, f64)> = sizes.iter().map(|&k| (k, f64::INFINITY)).collect();
        for _round in 0..2 {
            for (k, best) in &mut times {
                let t = Instant::now();
                let opts = ForwardOptions {
                    layers: 0..model.config().n_layers,
                    head: true,
                    taps: &[],
                };
                let mut seqs = [SeqInput {
                    cache: &mut self.cache,
                    tokens: &tokens[..*k],
                    positions: &positions[..*k],
                    tree: None,
                    logits: LogitRows::All,
                }];
                let r = model.forward(&mut self.ws, &mut seqs, &opts);
                self.cache.truncate(base);
                r?;
                *best = best.min(t.elapsed().as_secs_f64());
            }
        }
        // The probe overwrote the prefill logits: recompute the last prompt token's.
        let last = *self.history.last().expect("the prompt is prefilled");
        self.cache.truncate(base - 1);
        self.history.pop();
        self.chunk(model, &[last], base - 1, LogitRows::Last)?;
        tracing::debug!(?times, "controller costs measured");
        Ok(Controller::new(&times))
    }

    /// One causal forward over `tokens` at positions `pos..`, appending them to the history.
    fn chunk(
        &mut self,
        model: &Model,
        tokens: &[u32],
        pos: usize,
        logits: LogitRows<'_>,
    ) -> Result<()> {
        self.positions.clear();
        self.positions
            .extend((0..tokens.len()).map(|i| (pos + i) as u32));
        let opts = ForwardOptions {
            layers: 0..model.config().n_layers,
            head: true,
            taps: &[],
        };
        let mut seqs = [SeqInput {
            cache: &mut self.cache,
            tokens,
            positions: &self.positions,
            tree: None,
            logits,
        }];
        model.forward(&mut self.ws, &mut seqs, &opts)?;
        self.history.extend_from_slice(tokens);
        Ok(())
    }
}

/// Emits tokens one at a time with plain generation's stop rules, in its order: the token
/// budget, stop tokens, stop strings, then a full context.
struct Emitter<'t, 'p> {
    tokenizer: &'t Tokenizer,
    stream: peregrine_tokenizer::StreamDecoder<'t>,
    text: StopScanner<'p>,
    tokens: Vec<u32>,
    max_tokens: usize,
    n_prompt: usize,
    capacity: usize,
}

impl<'t, 'p> Emitter<'t, 'p> {
    fn new(
        tokenizer: &'t Tokenizer,
        params: &'p GenerateParams,
        n_prompt: usize,
        capacity: usize,
    ) -> Self {
        Self {
            tokenizer,
            stream: tokenizer.stream_decoder(),
            text: StopScanner::new(&params.stop_strings),
            tokens: Vec::with_capacity(params.max_tokens),
            max_tokens: params.max_tokens,
            n_prompt,
            capacity,
        }
    }

    /// Emits `token`, or says why generation stops instead (or right after it).
    fn emit(&mut self, token: u32, on_text: &mut dyn FnMut(&str)) -> Option<StopReason> {
        if self.tokens.len() >= self.max_tokens {
            return Some(self.finish(StopReason::MaxTokens, on_text));
        }
        if self.tokenizer.stop_ids().contains(&token) {
            return Some(self.finish(StopReason::StopToken(token), on_text));
        }
        self.tokens.push(token);
        if let Some(piece) = self.stream.push(token) {
            if let Some(stop) = self.text.push(&piece, on_text) {
                return Some(StopReason::StopString(stop));
            }
        }
        if self.n_prompt + self.tokens.len() >= self.capacity {
            return Some(self.finish(StopReason::ContextFull, on_text));
        }
        None
    }

    /// Flushes the held-back text (which may still hold a stop string).
    fn finish(&mut self, reason: StopReason, on_text: &mut dyn FnMut(&str)) -> StopReason {
        if let Some(rest) = self.stream.finish() {
            if let Some(stop) = self.text.push(&rest, on_text) {
                return StopReason::StopString(stop);
            }
        }
        self.text.flush(on_text);
        reason
    }
}
