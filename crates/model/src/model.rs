//! The Llama forward pass, built for speculative decoding (DESIGN.md §2).
//!
//! One entry point, [`Model::forward`], evaluates a batch of sequences. Each brings new tokens,
//! their positions, optionally a tree mask over them, and its own [`KvCache`]; the new rows'
//! keys and values are appended to the cache. The call can run a sub-range of layers (stop after
//! layer E for a LayerSkip draft; resume from E, reading the hidden states left in the
//! [`Workspace`]), apply the final norm and LM head to chosen rows, and copy the residual stream
//! entering chosen layers ("taps", for EAGLE heads).
//!
//! Rows are concatenated across sequences for every matmul; since each kernel computes an output
//! row with the same instructions whatever M, a token's logits do not depend on its batch.

use crate::kv_cache::KvCache;
use crate::weights::{self, LlamaWeights, Source};
use crate::{Error, Result};
use peregrine_formats::{ModelConfig, RopeScaling};
use peregrine_tensor::ops::{self, RopeTable};
use peregrine_tensor::{
    attention, matmul, AttentionScratch, AttentionSeq, AttentionShape, MatmulScratch, MatmulTarget,
    ThreadPool, Visibility, Weights,
};
use std::ops::Range;
use std::path::Path;

/// A loaded Llama-family model and the thread pool that runs it.
pub struct Model {
    config: ModelConfig,
    source: Source,
    weights: LlamaWeights,
    rope: RopeTable,
    pool: ThreadPool,
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Threads that run each forward.
    pub n_threads: usize,
    /// Keep activations in f32 for every matmul (reference numerics; slower). By default
    /// Q4_0/Q4_1/Q8_0 matmuls quantize activations to 8 bits, as llama.cpp does, for integer
    /// dot products.
    pub f32_activations: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            n_threads: 1,
            f32_activations: false,
        }
    }
}

/// Which rows of a sequence's new tokens get logits.
#[derive(Clone, Copy, Debug)]
pub enum LogitRows<'a> {
    /// No logits (a prefix chunk, or a forward that stops early).
    None,
    /// The last new token only (plain decoding, prefill).
    Last,
    /// Every new token (tree verification, teacher forcing).
    All,
    /// These new-token indices.
    Rows(&'a [usize]),
}

/// One sequence's part of a forward call.
pub struct SeqInput<'a> {
    /// The sequence's cache; the new rows are appended to it.
    pub cache: &'a mut KvCache,
    /// New tokens.
    pub tokens: &'a [u32],
    /// Their positions (RoPE); for a tree, `cache length + depth`.
    pub positions: &'a [u32],
    /// Tree visibility among the new tokens: bit `j` of `tree[i]` set when token `i` sees token
    /// `j` (itself and its ancestors). `None` means causal. At most 64 tokens.
    pub tree: Option<&'a [u64]>,
    /// Rows that need logits.
    pub logits: LogitRows<'a>,
}

/// What part of the network to run and what to keep.
#[derive(Clone, Debug)]
pub struct ForwardOptions<'a> {
    /// Layers to run. Starting after 0 resumes from the hidden states left in the workspace by
    /// an earlier call that stopped there (same rows, same order).
    pub layers: Range<usize>,
    /// Apply the final norm and LM head after the last layer run (early exit when the range
    /// stops before the top).
    pub head: bool,
    /// Layers whose input residual stream to copy out (`n_layers` = after the last layer).
    pub taps: &'a [usize],
}

impl Model {
    /// Loads a model file (GGUF, or safetensors with `config.json`) and starts `n_threads` threads.
    pub fn load(path: &Path, n_threads: usize) -> Result<Self> {
        Self::load_with(
            path,
            &LoadOptions {
                n_threads,
                ..LoadOptions::default()
            },
        )
    }

    /// Loads with explicit options.
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let n_threads = opts.n_threads;
        let (source, config) = weights::open(path)?;
        let weights = LlamaWeights::load(&source, &config, opts.f32_activations)?;
        let freq_scale = match config.rope_scaling {
            Some(RopeScaling::Linear { factor }) if factor > 0.0 => 1.0 / factor,
            _ => 1.0,
        };
        let rope = RopeTable::new(
            config.head_dim,
            config.rope_base,
            freq_scale,
            weights.rope_freq_factors.as_deref(),
        );
        tracing::info!(
            path = %path.display(),
            layers = config.n_layers,
            hidden = config.hidden_size,
            threads = n_threads,
            "model loaded"
        );
        Ok(Self {
            config,
            source,
            weights,
            rope,
            pool: ThreadPool::new(n_threads),
        })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The file the model came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Threads that run each forward.
    pub fn n_threads(&self) -> usize {
        self.pool.n_threads()
    }

    /// The thread pool that runs each forward, for work that runs beside it (draft heads).
    pub fn pool(&self) -> &ThreadPool {
        &self.pool
    }

    /// Writes the token embedding of `token` (`hidden_size` values) into `out`.
    pub fn embed_row(&self, token: u32, out: &mut [f32]) -> Result<()> {
        let c = &self.config;
        if token as usize >= c.vocab_size || out.len() != c.hidden_size {
            return Err(Error::InvalidRequest(format!(
                "embedding of token {token} (vocabulary {}) into {} values (hidden {})",
                c.vocab_size,
                out.len(),
                c.hidden_size
            )));
        }
        let table = self.weights.token_embd.matrix(&self.source);
        peregrine_formats::quant::dequantize_row(table.ty(), table.row(token as usize), out)?;
        Ok(())
    }

    /// Weights of the final RMSNorm (before the LM head).
    pub fn output_norm(&self) -> &[f32] {
        &self.weights.output_norm
    }

    /// The LM head as a matmul operand (`vocab_size` rows of `hidden_size`).
    pub fn lm_head(&self) -> Weights<'_> {
        self.weights.output.weights(&self.source)
    }

    /// A KV cache for one sequence of up to `capacity` tokens.
    pub fn new_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(
            self.config.n_layers,
            self.config.n_kv_heads * self.config.head_dim,
            capacity,
        )
    }

    /// Buffers for forwards of up to `max_rows` tokens in all, `max_logit_rows` of them with
    /// logits, over contexts of up to `max_ctx` tokens.
    pub fn new_workspace(
        &self,
        max_rows: usize,
        max_logit_rows: usize,
        max_ctx: usize,
    ) -> Workspace {
        let c = &self.config;
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let widest = c.hidden_size.max(q_dim).max(c.ffn_size);
        let n = self.pool.n_threads();
        Workspace {
            max_rows,
            max_logit_rows,
            n_rows: 0,
            n_logit_rows: 0,
            x: vec![0.0; max_rows * c.hidden_size],
            xn: vec![0.0; max_rows * c.hidden_size],
            q: vec![0.0; max_rows * q_dim],
            k: vec![0.0; max_rows * kv_dim],
            v: vec![0.0; max_rows * kv_dim],
            attn: vec![0.0; max_rows * q_dim],
            gate: vec![0.0; max_rows * c.ffn_size],
            up: vec![0.0; max_rows * c.ffn_size],
            angles: vec![0.0; max_rows * c.head_dim],
            head_in: vec![0.0; max_logit_rows * c.hidden_size],
            logits: vec![0.0; max_logit_rows * c.vocab_size],
            taps: Vec::new(),
            mm: MatmulScratch::new(n, widest),
            attn_scratch: AttentionScratch::new(n, max_ctx),
        }
    }

    /// Runs the network over every sequence's new tokens; see the module docs.
    pub fn forward(
        &self,
        ws: &mut Workspace,
        seqs: &mut [SeqInput<'_>],
        opts: &ForwardOptions<'_>,
    ) -> Result<()> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let q_dim = c.n_heads * hd;
        let kv_dim = c.n_kv_heads * hd;
        let m = self.validate(ws, seqs, opts)?;
        ws.n_rows = m;

        if opts.layers.start == 0 {
            self.embed(ws, seqs)?;
        }
        let mut row = 0;
        for s in seqs.iter() {
            for (i, &pos) in s.positions.iter().enumerate() {
                self.rope
                    .angles(pos, &mut ws.angles[(row + i) * hd..(row + i + 1) * hd]);
            }
            row += s.tokens.len();
        }
        ws.prepare_taps(opts.taps, m * h);

        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
        };
        for layer_idx in opts.layers.clone() {
            ws.record_tap(opts.taps, layer_idx, m * h);
            let lw = &self.weights.layers[layer_idx];
            let src = &self.source;
            ops::rms_norm(
                &ws.x[..m * h],
                &lw.attn_norm,
                c.rms_norm_eps,
                &mut ws.xn[..m * h],
            );
            matmul(
                &self.pool,
                &mut ws.mm,
                &ws.xn[..m * h],
                m,
                &mut [
                    MatmulTarget {
                        w: lw.wq.weights(src),
                        out: &mut ws.q[..m * q_dim],
                    },
                    MatmulTarget {
                        w: lw.wk.weights(src),
                        out: &mut ws.k[..m * kv_dim],
                    },
                    MatmulTarget {
                        w: lw.wv.weights(src),
                        out: &mut ws.v[..m * kv_dim],
                    },
                ],
            )?;
            for r in 0..m {
                let angles = &ws.angles[r * hd..(r + 1) * hd];
                ops::rope_row(
                    &mut ws.q[r * q_dim..(r + 1) * q_dim],
                    hd,
                    angles,
                    self.weights.rope_layout,
                );
                ops::rope_row(
                    &mut ws.k[r * kv_dim..(r + 1) * kv_dim],
                    hd,
                    angles,
                    self.weights.rope_layout,
                );
            }
            self.attend(ws, seqs, layer_idx, shape)?;
            matmul(
                &self.pool,
                &mut ws.mm,
                &ws.attn[..m * q_dim],
                m,
                &mut [MatmulTarget {
                    w: lw.wo.weights(src),
                    out: &mut ws.xn[..m * h],
                }],
            )?;
            ops::add_in_place(&mut ws.x[..m * h], &ws.xn[..m * h]);

            ops::rms_norm(
                &ws.x[..m * h],
                &lw.ffn_norm,
                c.rms_norm_eps,
                &mut ws.xn[..m * h],
            );
            let f = c.ffn_size;
            matmul(
                &self.pool,
                &mut ws.mm,
                &ws.xn[..m * h],
                m,
                &mut [
                    MatmulTarget {
                        w: lw.w_gate.weights(src),
                        out: &mut ws.gate[..m * f],
                    },
                    MatmulTarget {
                        w: lw.w_up.weights(src),
                        out: &mut ws.up[..m * f],
                    },
                ],
            )?;
            ops::silu_mul(&mut ws.gate[..m * f], &ws.up[..m * f]);
            matmul(
                &self.pool,
                &mut ws.mm,
                &ws.gate[..m * f],
                m,
                &mut [MatmulTarget {
                    w: lw.w_down.weights(src),
                    out: &mut ws.xn[..m * h],
                }],
            )?;
            ops::add_in_place(&mut ws.x[..m * h], &ws.xn[..m * h]);
        }
        ws.record_tap(opts.taps, opts.layers.end, m * h);
        if opts.head {
            self.head(ws, seqs)?;
        } else {
            ws.n_logit_rows = 0;
        }
        Ok(())
    }

    /// Checks the request against the model, the workspace and the caches; returns the row count.
    fn validate(
        &self,
        ws: &Workspace,
        seqs: &[SeqInput<'_>],
        opts: &ForwardOptions<'_>,
    ) -> Result<usize> {
        let c = &self.config;
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if opts.layers.start > opts.layers.end || opts.layers.end > c.n_layers {
            return bad(format!(
                "layers {:?} outside 0..{}",
                opts.layers, c.n_layers
            ));
        }
        if let Some(&t) = opts.taps.iter().find(|&&t| t > c.n_layers) {
            return bad(format!("tap at layer {t} beyond the {} layers", c.n_layers));
        }
        let mut m = 0;
        let mut n_logits = 0;
        for s in seqs.iter() {
            let n = s.tokens.len();
            if s.positions.len() != n {
                return bad(format!("{n} tokens but {} positions", s.positions.len()));
            }
            if let Some(&t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return bad(format!(
                    "token id {t} is outside the vocabulary of {}",
                    c.vocab_size
                ));
            }
            if let Some(tree) = s.tree {
                if tree.len() != n || n > 64 {
                    return bad(format!(
                        "a tree of {n} tokens needs {n} masks and at most 64 nodes"
                    ));
                }
                for (i, &mask) in tree.iter().enumerate() {
                    if mask >> i & 1 == 0 || (i < 63 && mask >> (i + 1) != 0) {
                        return bad(format!(
                            "tree mask {i} must include itself and only earlier nodes"
                        ));
                    }
                }
            }
            for layer in opts.layers.clone() {
                s.cache.check_room(layer, n)?;
            }
            n_logits += match s.logits {
                LogitRows::None => 0,
                LogitRows::Last => usize::from(n > 0),
                LogitRows::All => n,
                LogitRows::Rows(rows) => {
                    if let Some(&r) = rows.iter().find(|&&r| r >= n) {
                        return bad(format!("logit row {r} of {n} new tokens"));
                    }
                    rows.len()
                }
            };
            m += n;
        }
        if m > ws.max_rows {
            return bad(format!(
                "{m} tokens exceed the workspace's {} rows",
                ws.max_rows
            ));
        }
        if opts.head && n_logits > ws.max_logit_rows {
            return bad(format!(
                "{n_logits} logit rows exceed the workspace's {}",
                ws.max_logit_rows
            ));
        }
        if opts.layers.start > 0 && ws.n_rows < m {
            return bad(format!(
                "resuming at layer {} needs hidden states for {m} rows",
                opts.layers.start
            ));
        }
        Ok(m)
    }

    fn embed(&self, ws: &mut Workspace, seqs: &[SeqInput<'_>]) -> Result<()> {
        let h = self.config.hidden_size;
        let table = self.weights.token_embd.matrix(&self.source);
        let mut row = 0;
        for s in seqs {
            for &t in s.tokens {
                peregrine_formats::quant::dequantize_row(
                    table.ty(),
                    table.row(t as usize),
                    &mut ws.x[row * h..(row + 1) * h],
                )?;
                row += 1;
            }
        }
        Ok(())
    }

    fn attend(
        &self,
        ws: &mut Workspace,
        seqs: &mut [SeqInput<'_>],
        layer_idx: usize,
        shape: AttentionShape,
    ) -> Result<()> {
        let q_dim = shape.n_heads * shape.head_dim;
        let kv_dim = shape.n_kv_heads * shape.head_dim;
        // Append the new keys/values first, remembering where each sequence's prefix ends.
        let mut prefix = [0usize; peregrine_tensor::attention::MAX_SEQS];
        if seqs.len() > prefix.len() {
            return Err(Error::InvalidRequest(format!(
                "at most {} sequences per forward",
                prefix.len()
            )));
        }
        let mut row = 0;
        for (s, p) in seqs.iter_mut().zip(prefix.iter_mut()) {
            let n = s.tokens.len();
            *p = s.cache.layer_len(layer_idx);
            s.cache.append(
                layer_idx,
                &ws.k[row * kv_dim..(row + n) * kv_dim],
                &ws.v[row * kv_dim..(row + n) * kv_dim],
            );
            row += n;
        }
        // A fixed-size array of per-sequence jobs (unused slots empty): no allocation per layer.
        const CHUNK: usize = 8;
        let mut q_rest: &[f32] = &ws.q;
        let mut out_rest: &mut [f32] = &mut ws.attn;
        for (chunk_seqs, chunk_prefix) in seqs.chunks(CHUNK).zip(prefix.chunks(CHUNK)) {
            let mut jobs: [AttentionSeq<'_>; CHUNK] = std::array::from_fn(|_| AttentionSeq {
                q: &[],
                k: &[],
                v: &[],
                prefix_len: 0,
                visibility: Visibility::Causal,
                out: &mut [],
            });
            for ((s, &p), job) in chunk_seqs.iter().zip(chunk_prefix).zip(jobs.iter_mut()) {
                let n = s.tokens.len();
                let (q, qr) = q_rest.split_at(n * q_dim);
                let (out, or) = std::mem::take(&mut out_rest).split_at_mut(n * q_dim);
                q_rest = qr;
                out_rest = or;
                let (k, v) = s.cache.layer(layer_idx);
                let visibility = s.tree.map_or(Visibility::Causal, Visibility::Tree);
                *job = AttentionSeq {
                    q,
                    k,
                    v,
                    prefix_len: p,
                    visibility,
                    out,
                };
            }
            attention(
                &self.pool,
                &ws.attn_scratch,
                shape,
                &mut jobs[..chunk_seqs.len()],
            )?;
        }
        Ok(())
    }

    /// Final norm and LM head over the rows that asked for logits.
    fn head(&self, ws: &mut Workspace, seqs: &[SeqInput<'_>]) -> Result<()> {
        let h = self.config.hidden_size;
        let mut n = 0;
        let mut row = 0;
        for s in seqs {
            let len = s.tokens.len();
            let mut take = |r: usize, ws: &mut Workspace| {
                let src = (row + r) * h;
                ops::rms_norm(
                    &ws.x[src..src + h],
                    &self.weights.output_norm,
                    self.config.rms_norm_eps,
                    &mut ws.head_in[n * h..(n + 1) * h],
                );
                n += 1;
            };
            match s.logits {
                LogitRows::None => {}
                LogitRows::Last if len > 0 => take(len - 1, ws),
                LogitRows::Last => {}
                LogitRows::All => (0..len).for_each(|r| take(r, ws)),
                LogitRows::Rows(rows) => rows.iter().for_each(|&r| take(r, ws)),
            }
            row += len;
        }
        ws.n_logit_rows = n;
        if n > 0 {
            let vocab = self.config.vocab_size;
            matmul(
                &self.pool,
                &mut ws.mm,
                &ws.head_in[..n * h],
                n,
                &mut [MatmulTarget {
                    w: self.weights.output.weights(&self.source),
                    out: &mut ws.logits[..n * vocab],
                }],
            )?;
        }
        Ok(())
    }
}

/// Activation buffers for forwards up to a fixed size, reused across calls.
pub struct Workspace {
    max_rows: usize,
    max_logit_rows: usize,
    n_rows: usize,
    n_logit_rows: usize,
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    angles: Vec<f32>,
    head_in: Vec<f32>,
    logits: Vec<f32>,
    taps: Vec<f32>,
    mm: MatmulScratch,
    attn_scratch: AttentionScratch,
}

impl Workspace {
    /// Rows of the last forward.
    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Logit rows of the last forward, in request order (sequence by sequence).
    pub fn n_logit_rows(&self) -> usize {
        self.n_logit_rows
    }

    /// Logits of the `i`-th requested row of the last forward.
    pub fn logits(&self, i: usize) -> &[f32] {
        assert!(
            i < self.n_logit_rows,
            "logit row {i} of {}",
            self.n_logit_rows
        );
        let vocab = self.logits.len() / self.max_logit_rows;
        &self.logits[i * vocab..(i + 1) * vocab]
    }

    /// Residual stream of every row after the last layer run (the input of the next layer).
    pub fn hidden(&self) -> &[f32] {
        let h = self.x.len() / self.max_rows;
        &self.x[..self.n_rows * h]
    }

    /// Overwrites the residual stream for `n_rows` rows, to resume a forward from a later layer
    /// with hidden states saved from an earlier one.
    pub fn set_hidden(&mut self, hidden: &[f32], n_rows: usize) -> Result<()> {
        let h = self.x.len() / self.max_rows;
        if hidden.len() != n_rows * h || n_rows > self.max_rows {
            return Err(Error::InvalidRequest(format!(
                "set_hidden: {} values for {n_rows} rows of {h}",
                hidden.len()
            )));
        }
        self.x[..hidden.len()].copy_from_slice(hidden);
        self.n_rows = n_rows;
        Ok(())
    }

    /// The residual stream entering layer `taps[i]` (as requested in the last forward).
    pub fn tap(&self, i: usize) -> &[f32] {
        let n = self.n_rows * (self.x.len() / self.max_rows);
        &self.taps[i * n..(i + 1) * n]
    }

    fn prepare_taps(&mut self, taps: &[usize], n: usize) {
        // Grows once to the largest request, then is reused.
        if self.taps.len() < taps.len() * n {
            self.taps.resize(taps.len() * n, 0.0);
        }
    }

    fn record_tap(&mut self, taps: &[usize], layer_idx: usize, n: usize) {
        for (i, _) in taps.iter().enumerate().filter(|(_, &t)| t == layer_idx) {
            self.taps[i * n..(i + 1) * n].copy_from_slice(&self.x[..n]);
        }
    }
}
