//! The head's forward pass over a batch of rows, with its own KV cache.
//!
//! Rows come in two kinds, one kind per call:
//! - fed by the target ([`HeadInput::Target`]): `g = fc(f)` (EAGLE-3) or
//!   `g = fc([e, f])` (EAGLE-1), from the target's feature row `f`; these rows are *committed*:
//!   appended causally after the committed rows of the cache.
//! - drafted ([`HeadInput::Drafted`]): `g` is the parent row's output `o` (EAGLE-3) or
//!   `fc([e, o])` (EAGLE-1); these rows go after every committed row and each sees the
//!   committed rows, its drafted ancestors and itself. [`HeadCache::drop_drafts`] rolls them back.
//!
//! Then (EAGLE-3) `u = [input_norm(e), hidden_norm(g)]`, or (EAGLE-1) `u = g`; q, k, v of `u`,
//! RoPE (Hugging Face halves layout) at the row's position, GQA attention (scale 1/sqrt(hd)),
//! `h = g + o_proj(attn)`, `o = h + down(silu(gate(n)) * up(n))` with
//! `n = post_attention_layernorm(h)`. Logits: `lm_head(norm(o))` over the draft vocabulary
//! (EAGLE-3) or the target's LM head applied to `o` (EAGLE-1).
//!
//! Matmuls and attention run on the target's thread pool through `peregrine_tensor`'s kernels
//! (Q8_0 tiles; attention over an f16 cache, as the target's).

use super::head::{EagleHead, EagleKind};
use crate::{Error, Result};
use half::f16;
use half::slice::HalfFloatSliceExt;
use peregrine_tensor::ops::{self, RopeLayout, RopeTable};
use peregrine_tensor::{
    attention, matmul, AttentionScratch, AttentionSeq, AttentionShape, MatmulScratch, MatmulTarget,
    ThreadPool, Visibility, Weights,
};

/// Most drafted rows a cache holds beyond its committed rows.
pub const MAX_DRAFT_ROWS: usize = 256;

/// Most draft depth (drafted ancestors of a row).
const MAX_DEPTH: usize = 64;

/// The head's keys and values (f16, as the target's): one row per committed position, then
/// drafted rows.
///
/// Drafted rows live in their own table; to attend, a drafted row's ancestors and itself are
/// copied right after the committed rows, so that the row sees one contiguous causal run
/// (the layout `peregrine_tensor::attention` takes).
pub struct HeadCache {
    kv_dim: usize,
    /// Committed rows the cache can hold.
    context: usize,
    /// `context + MAX_DEPTH` rows: committed rows, then room for one drafted path.
    k: Vec<f16>,
    v: Vec<f16>,
    n_committed: usize,
    /// Drafted rows' keys and values, by drafted index (slot - committed).
    draft_k: Vec<f16>,
    draft_v: Vec<f16>,
    /// Per drafted row: the cache slot of its drafted parent.
    parents: Vec<Option<usize>>,
}

impl HeadCache {
    /// A cache for `context` committed positions (plus [`MAX_DRAFT_ROWS`] drafted rows).
    pub fn new(head: &EagleHead, context: usize) -> Self {
        let c = head.config();
        let kv_dim = c.n_kv_heads * c.head_dim;
        let rows = context + MAX_DEPTH;
        Self {
            kv_dim,
            context,
            k: vec![f16::ZERO; rows * kv_dim],
            v: vec![f16::ZERO; rows * kv_dim],
            n_committed: 0,
            draft_k: vec![f16::ZERO; MAX_DRAFT_ROWS * kv_dim],
            draft_v: vec![f16::ZERO; MAX_DRAFT_ROWS * kv_dim],
            parents: Vec::with_capacity(MAX_DRAFT_ROWS),
        }
    }

    /// Committed rows (positions `0..n`).
    pub fn n_committed(&self) -> usize {
        self.n_committed
    }

    /// Rows held, drafted ones included.
    pub fn len(&self) -> usize {
        self.n_committed + self.parents.len()
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Most committed rows.
    pub fn context_capacity(&self) -> usize {
        self.context
    }

    /// Drops every drafted row.
    pub fn drop_drafts(&mut self) {
        self.parents.clear();
    }

    /// Keeps the first `n` committed rows (and no drafted rows).
    pub fn truncate(&mut self, n: usize) {
        self.parents.clear();
        self.n_committed = self.n_committed.min(n);
    }
}

/// Where a call's rows come from; see the module docs.
#[derive(Clone, Copy, Debug)]
pub enum HeadInput<'a> {
    /// Target feature rows (`feature_dim` values each), committed causally.
    Target {
        /// The features, row-major.
        features: &'a [f32],
    },
    /// Drafted rows.
    Drafted {
        /// The parent rows' outputs `o` (`hidden` values each).
        parent_out: &'a [f32],
        /// Per row, the cache slot of its drafted parent, or `None` when its parent is the last
        /// committed row (a depth-1 draft).
        parents: &'a [Option<usize>],
    },
}

/// One forward call's rows.
#[derive(Clone, Copy, Debug)]
pub struct HeadRows<'a> {
    /// Kind and features of the rows.
    pub input: HeadInput<'a>,
    /// Each row's input-token embedding (the target's), `hidden` values each.
    pub embeds: &'a [f32],
    /// RoPE positions.
    pub positions: &'a [u32],
    /// Which rows get logits.
    pub logits: HeadLogits,
}

/// Which rows of a call get logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadLogits {
    /// None.
    None,
    /// The last row only.
    Last,
    /// Every row.
    All,
}

/// Buffers for head forwards of up to `max_rows` rows.
pub struct HeadWorkspace {
    max_rows: usize,
    n_rows: usize,
    n_logit_rows: usize,
    vocab_out: usize,
    fc_in: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    out: Vec<f32>,
    normed: Vec<f32>,
    logits: Vec<f32>,
    angles: Vec<f32>,
    rope: RopeTable,
    mm: MatmulScratch,
    attn_scratch: AttentionScratch,
}

impl HeadWorkspace {
    /// Buffers for `max_rows` rows per call, attention over up to `cache`'s capacity, and
    /// `n_threads` threads.
    pub fn new(head: &EagleHead, max_rows: usize, cache: &HeadCache, n_threads: usize) -> Self {
        let c = head.config();
        let h = c.hidden_size;
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = c.n_kv_heads * c.head_dim;
        let attn_in = match c.kind {
            EagleKind::Eagle3 => 2 * h,
            EagleKind::Eagle1 => h,
        };
        let fc_in = match c.kind {
            EagleKind::Eagle3 => 0,
            EagleKind::Eagle1 => 2 * h,
        };
        let widest = [c.feature_dim(), 2 * h, q_dim, c.ffn_size, h]
            .into_iter()
            .max()
            .unwrap_or(h);
        let n_threads = n_threads.max(1);
        Self {
            max_rows,
            n_rows: 0,
            n_logit_rows: 0,
            vocab_out: c.draft_vocab,
            fc_in: vec![0.0; max_rows * fc_in],
            g: vec![0.0; max_rows * h],
            u: vec![0.0; max_rows * attn_in],
            q: vec![0.0; max_rows * q_dim],
            k: vec![0.0; max_rows * kv_dim],
            v: vec![0.0; max_rows * kv_dim],
            attn: vec![0.0; max_rows * q_dim],
            tmp: vec![0.0; max_rows * h],
            gate: vec![0.0; max_rows * c.ffn_size],
            up: vec![0.0; max_rows * c.ffn_size],
            out: vec![0.0; max_rows * h],
            normed: vec![0.0; max_rows * h],
            logits: vec![0.0; max_rows * c.draft_vocab],
            angles: vec![0.0; c.head_dim],
            rope: RopeTable::new(c.head_dim, c.rope_theta, 1.0, None),
            mm: MatmulScratch::new(n_threads, widest),
            attn_scratch: AttentionScratch::new(n_threads, cache.context + MAX_DEPTH),
        }
    }

    /// Rows per call.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// Output features `o` of the last call's row `i`.
    pub fn out(&self, i: usize) -> &[f32] {
        assert!(i < self.n_rows, "head output row {i} of {}", self.n_rows);
        let h = self.out.len() / self.max_rows;
        &self.out[i * h..(i + 1) * h]
    }

    /// Logits of the last call's `i`-th logit row (draft-vocabulary ids for EAGLE-3; map them
    /// with [`EagleHead::target_id`]).
    pub fn logits(&self, i: usize) -> &[f32] {
        assert!(
            i < self.n_logit_rows,
            "head logit row {i} of {}",
            self.n_logit_rows
        );
        &self.logits[i * self.vocab_out..(i + 1) * self.vocab_out]
    }
}

impl EagleHead {
    /// Runs the head over `rows`, appending their keys and values to `cache`; outputs and
    /// logits land in `ws`. `pool` runs the matmuls; `target_lm_head` is the target's LM head,
    /// required by EAGLE-1 heads for logits. Returns the cache slot of the first row (rows take
    /// consecutive slots).
    pub fn forward(
        &self,
        pool: &ThreadPool,
        target_lm_head: Option<Weights<'_>>,
        ws: &mut HeadWorkspace,
        cache: &mut HeadCache,
        rows: &HeadRows<'_>,
    ) -> Result<usize> {
        let c = &self.cfg;
        let h = c.hidden_size;
        let (hd, q_dim) = (c.head_dim, c.n_heads * c.head_dim);
        let kv_dim = c.n_kv_heads * hd;
        let m = rows.positions.len();
        let bad = |msg: String| Err(Error::InvalidRequest(format!("EAGLE head forward: {msg}")));
        if m == 0 {
            ws.n_rows = 0;
            ws.n_logit_rows = 0;
            return Ok(cache.len());
        }
        if m > ws.max_rows {
            return bad(format!("{m} rows exceed the workspace's {}", ws.max_rows));
        }
        if rows.embeds.len() != m * h {
            return bad(format!(
                "{} embedding values for {m} rows",
                rows.embeds.len()
            ));
        }
        let first_slot = cache.len();
        match rows.input {
            HeadInput::Target { features } => {
                if features.len() != m * c.feature_dim() {
                    return bad(format!(
                        "{} feature values for {m} rows of {}",
                        features.len(),
                        c.feature_dim()
                    ));
                }
                if !cache.parents.is_empty() {
                    return bad("target rows after drafted rows (drop the drafts first)".into());
                }
                if cache.n_committed + m > cache.context_capacity() {
                    return bad(format!(
                        "{} committed rows exceed the cache's {}",
                        cache.n_committed + m,
                        cache.context_capacity()
                    ));
                }
            }
            HeadInput::Drafted {
                parent_out,
                parents,
            } => {
                if parent_out.len() != m * h || parents.len() != m {
                    return bad(format!(
                        "{} parent outputs and {} parents for {m} rows",
                        parent_out.len(),
                        parents.len()
                    ));
                }
                if cache.parents.len() + m > MAX_DRAFT_ROWS {
                    return bad(format!("more than {MAX_DRAFT_ROWS} drafted rows"));
                }
                if let Some(p) = parents
                    .iter()
                    .flatten()
                    .find(|&&p| p < cache.n_committed || p >= first_slot)
                {
                    return bad(format!("parent slot {p} is not an earlier drafted row"));
                }
            }
        }
        if c.kind == EagleKind::Eagle1 && rows.logits != HeadLogits::None {
            match target_lm_head {
                Some(w) if w.n_rows() == c.draft_vocab && w.n_cols() == h => {}
                _ => return bad("an EAGLE-1 head needs the target's LM head for logits".into()),
            }
        }
        ws.n_rows = m;

        // g: the residual stream entering the layer.
        let g = &mut ws.g[..m * h];
        match (c.kind, rows.input) {
            (EagleKind::Eagle3, HeadInput::Target { features }) => {
                matmul(
                    pool,
                    &mut ws.mm,
                    features,
                    m,
                    &mut [MatmulTarget {
                        w: self.fc.weights(),
                        out: g,
                    }],
                )?;
                add_bias(g, self.fc_bias.as_deref());
            }
            (EagleKind::Eagle3, HeadInput::Drafted { parent_out, .. }) => {
                g.copy_from_slice(parent_out);
            }
            (EagleKind::Eagle1, input) => {
                let f = match input {
                    HeadInput::Target { features } => features,
                    HeadInput::Drafted { parent_out, .. } => parent_out,
                };
                let fc_in = &mut ws.fc_in[..m * 2 * h];
                for r in 0..m {
                    fc_in[r * 2 * h..r * 2 * h + h]
                        .copy_from_slice(&rows.embeds[r * h..(r + 1) * h]);
                    fc_in[r * 2 * h + h..(r + 1) * 2 * h].copy_from_slice(&f[r * h..(r + 1) * h]);
                }
                matmul(
                    pool,
                    &mut ws.mm,
                    fc_in,
                    m,
                    &mut [MatmulTarget {
                        w: self.fc.weights(),
                        out: g,
                    }],
                )?;
                add_bias(g, self.fc_bias.as_deref());
            }
        }

        // u: the attention input.
        let attn_in = match c.kind {
            EagleKind::Eagle3 => {
                let u = &mut ws.u[..m * 2 * h];
                let (input_norm, hidden_norm) = (
                    self.input_norm
                        .as_deref()
                        .expect("EAGLE-3 has input_layernorm"),
                    self.hidden_norm
                        .as_deref()
                        .expect("EAGLE-3 has hidden_norm"),
                );
                for r in 0..m {
                    let (ue, ug) = u[r * 2 * h..(r + 1) * 2 * h].split_at_mut(h);
                    ops::rms_norm(
                        &rows.embeds[r * h..(r + 1) * h],
                        input_norm,
                        c.rms_norm_eps,
                        ue,
                    );
                    ops::rms_norm(&ws.g[r * h..(r + 1) * h], hidden_norm, c.rms_norm_eps, ug);
                }
                &ws.u[..m * 2 * h]
            }
            EagleKind::Eagle1 => &ws.g[..m * h],
        };
        matmul(
            pool,
            &mut ws.mm,
            attn_in,
            m,
            &mut [
                MatmulTarget {
                    w: self.wq.weights(),
                    out: &mut ws.q[..m * q_dim],
                },
                MatmulTarget {
                    w: self.wk.weights(),
                    out: &mut ws.k[..m * kv_dim],
                },
                MatmulTarget {
                    w: self.wv.weights(),
                    out: &mut ws.v[..m * kv_dim],
                },
            ],
        )?;
        for (r, &pos) in rows.positions.iter().enumerate() {
            ws.rope.angles(pos, &mut ws.angles);
            ops::rope_row(
                &mut ws.q[r * q_dim..(r + 1) * q_dim],
                hd,
                &ws.angles,
                RopeLayout::Halves,
            );
            ops::rope_row(
                &mut ws.k[r * kv_dim..(r + 1) * kv_dim],
                hd,
                &ws.angles,
                RopeLayout::Halves,
            );
        }
        // Store the rows' keys and values, then attend.
        match rows.input {
            HeadInput::Target { .. } => {
                let at = first_slot * kv_dim..(first_slot + m) * kv_dim;
                cache.k[at.clone()].convert_from_f32_slice(&ws.k[..m * kv_dim]);
                cache.v[at].convert_from_f32_slice(&ws.v[..m * kv_dim]);
                cache.n_committed += m;
            }
            HeadInput::Drafted { parents, .. } => {
                let d0 = first_slot - cache.n_committed;
                let at = d0 * kv_dim..(d0 + m) * kv_dim;
                cache.draft_k[at.clone()].convert_from_f32_slice(&ws.k[..m * kv_dim]);
                cache.draft_v[at].convert_from_f32_slice(&ws.v[..m * kv_dim]);
                cache.parents.extend_from_slice(parents);
            }
        }
        self.attend(pool, ws, cache, rows.input, first_slot, m)?;

        // h = g + o_proj(attn); o = h + mlp(post_norm(h)).
        matmul(
            pool,
            &mut ws.mm,
            &ws.attn[..m * q_dim],
            m,
            &mut [MatmulTarget {
                w: self.wo.weights(),
                out: &mut ws.tmp[..m * h],
            }],
        )?;
        let out = &mut ws.out[..m * h];
        out.copy_from_slice(&ws.g[..m * h]);
        ops::add_in_place(out, &ws.tmp[..m * h]);
        ops::rms_norm(
            out,
            &self.post_norm,
            c.rms_norm_eps,
            &mut ws.normed[..m * h],
        );
        let f = c.ffn_size;
        matmul(
            pool,
            &mut ws.mm,
            &ws.normed[..m * h],
            m,
            &mut [
                MatmulTarget {
                    w: self.w_gate.weights(),
                    out: &mut ws.gate[..m * f],
                },
                MatmulTarget {
                    w: self.w_up.weights(),
                    out: &mut ws.up[..m * f],
                },
            ],
        )?;
        ops::silu_mul(&mut ws.gate[..m * f], &ws.up[..m * f]);
        matmul(
            pool,
            &mut ws.mm,
            &ws.gate[..m * f],
            m,
            &mut [MatmulTarget {
                w: self.w_down.weights(),
                out: &mut ws.tmp[..m * h],
            }],
        )?;
        ops::add_in_place(&mut ws.out[..m * h], &ws.tmp[..m * h]);

        // Logits.
        let (first, n) = match rows.logits {
            HeadLogits::None => (0, 0),
            HeadLogits::Last => (m - 1, 1),
            HeadLogits::All => (0, m),
        };
        ws.n_logit_rows = n;
        if n > 0 {
            let vocab = c.draft_vocab;
            let src = &ws.out[first * h..(first + n) * h];
            let (x, w) = match c.kind {
                EagleKind::Eagle3 => {
                    let norm = self.norm.as_deref().expect("EAGLE-3 has norm");
                    ops::rms_norm(src, norm, c.rms_norm_eps, &mut ws.normed[..n * h]);
                    (
                        &ws.normed[..n * h],
                        self.lm_head
                            .as_ref()
                            .expect("EAGLE-3 has lm_head")
                            .weights(),
                    )
                }
                EagleKind::Eagle1 => (src, target_lm_head.expect("checked above")),
            };
            matmul(
                pool,
                &mut ws.mm,
                x,
                n,
                &mut [MatmulTarget {
                    w,
                    out: &mut ws.logits[..n * vocab],
                }],
            )?;
        }
        Ok(first_slot)
    }

    /// Attention of the `m` new rows at slots `first_slot..` over the cache (see the module
    /// docs for who sees whom), into `ws.attn`.
    fn attend(
        &self,
        pool: &ThreadPool,
        ws: &mut HeadWorkspace,
        cache: &mut HeadCache,
        input: HeadInput<'_>,
        first_slot: usize,
        m: usize,
    ) -> Result<()> {
        let c = &self.cfg;
        let shape = AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
        };
        let q_dim = c.n_heads * c.head_dim;
        let kv_dim = cache.kv_dim;
        if let HeadInput::Target { .. } = input {
            // Causal over the committed rows: one call.
            let mut seqs = [AttentionSeq {
                q: &ws.q[..m * q_dim],
                k: &cache.k,
                v: &cache.v,
                prefix_len: first_slot,
                visibility: Visibility::Causal,
                out: &mut ws.attn[..m * q_dim],
            }];
            attention(pool, &ws.attn_scratch, shape, &mut seqs)?;
            return Ok(());
        }
        // Drafted rows: lay out each row's path (drafted ancestors, root side first, then the
        // row) right after the committed rows and attend causally from its last row.
        let committed = cache.n_committed;
        for r in 0..m {
            let mut chain = [0usize; MAX_DEPTH];
            let mut n = 0;
            let mut s = Some(first_slot + r);
            while let Some(slot) = s {
                if n == MAX_DEPTH {
                    return Err(Error::InvalidRequest(format!(
                        "EAGLE head forward: drafts deeper than {MAX_DEPTH}"
                    )));
                }
                chain[n] = slot - committed;
                n += 1;
                s = cache.parents[slot - committed];
            }
            for (i, &d) in chain[..n].iter().rev().enumerate() {
                let dst = (committed + i) * kv_dim..(committed + i + 1) * kv_dim;
                let src = d * kv_dim..(d + 1) * kv_dim;
                cache.k[dst.clone()].copy_from_slice(&cache.draft_k[src.clone()]);
                cache.v[dst].copy_from_slice(&cache.draft_v[src]);
            }
            let mut seqs = [AttentionSeq {
                q: &ws.q[r * q_dim..(r + 1) * q_dim],
                k: &cache.k,
                v: &cache.v,
                prefix_len: committed + n - 1,
                visibility: Visibility::Causal,
                out: &mut ws.attn[r * q_dim..(r + 1) * q_dim],
            }];
            attention(pool, &ws.attn_scratch, shape, &mut seqs)?;
        }
        Ok(())
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            ops::add_in_place(row, b);
        }
    }
}

/// `exp(x)` for `x <= 0` with plain f32 operations (vectorises; no libm call per element):
/// the reduction and polynomial of `peregrine_tensor::lanes::exp_nonpositive`, without FMA.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = if x < -87.0 { -87.0 } else { x };
    let n = (xc * LOG2E).round_ties_even();
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 720.0f32;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate() {
        for i in 0..1700 {
            let x = -(i as f32) * 0.05;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            assert!(
                (got - want).abs() <= 4e-7 * want + 1e-38,
                "{x}: {got} vs {want}"
            );
        }
    }
}
