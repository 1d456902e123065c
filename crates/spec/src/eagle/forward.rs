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
//! Matmuls run on the target's thread pool through `peregrine_tensor::matmul`; attention is
//! computed here in f32 (the head's cache is small: one layer).

use super::head::{EagleHead, EagleKind};
use crate::{Error, Result};
use peregrine_tensor::ops::{self, RopeLayout, RopeTable};
use peregrine_tensor::{matmul, MatmulScratch, MatmulTarget, ThreadPool, Weights};
use std::sync::Mutex;

/// Most drafted rows a cache holds beyond its committed rows.
pub const MAX_DRAFT_ROWS: usize = 256;

/// Most draft depth (drafted ancestors of a row).
const MAX_DEPTH: usize = 64;

/// The head's keys and values, one row per committed position, then drafted rows.
pub struct HeadCache {
    kv_dim: usize,
    capacity: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    n_committed: usize,
    /// Per drafted row (after the committed ones): the cache slot of its drafted parent.
    parents: Vec<Option<usize>>,
}

impl HeadCache {
    /// A cache for `context` committed positions (plus [`MAX_DRAFT_ROWS`] drafted rows).
    pub fn new(head: &EagleHead, context: usize) -> Self {
        let c = head.config();
        let kv_dim = c.n_kv_heads * c.head_dim;
        let capacity = context + MAX_DRAFT_ROWS;
        Self {
            kv_dim,
            capacity,
            k: vec![0.0; capacity * kv_dim],
            v: vec![0.0; capacity * kv_dim],
            n_committed: 0,
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
        self.capacity - MAX_DRAFT_ROWS
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
    /// Per thread: attention scores and probabilities.
    scores: Vec<Mutex<Vec<f32>>>,
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
        let group = c.n_heads / c.n_kv_heads.max(1);
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
            scores: (0..n_threads)
                .map(|_| {
                    Mutex::new(vec![
                        0.0;
                        (cache.capacity + MAX_DEPTH) * group + group * c.head_dim
                    ])
                })
                .collect(),
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
            return bad(format!("{} embedding values for {m} rows", rows.embeds.len()));
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
                    self.input_norm.as_deref().expect("EAGLE-3 has input_layernorm"),
                    self.hidden_norm.as_deref().expect("EAGLE-3 has hidden_norm"),
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
        // Append the rows to the cache.
        let slots = first_slot * kv_dim..(first_slot + m) * kv_dim;
        cache.k[slots.clone()].copy_from_slice(&ws.k[..m * kv_dim]);
        cache.v[slots].copy_from_slice(&ws.v[..m * kv_dim]);
        match rows.input {
            HeadInput::Target { .. } => cache.n_committed += m,
            HeadInput::Drafted { parents, .. } => cache.parents.extend_from_slice(parents),
        }
        self.attend(pool, ws, cache, first_slot, m);

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
        ops::rms_norm(out, &self.post_norm, c.rms_norm_eps, &mut ws.normed[..m * h]);
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
        cache: &HeadCache,
        first_slot: usize,
        m: usize,
    ) {
        let c = &self.cfg;
        let hd = c.head_dim;
        let q_dim = c.n_heads * hd;
        let kv_dim = cache.kv_dim;
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let n_items = m * c.n_kv_heads;
        let q = &ws.q[..m * q_dim];
        let scores = &ws.scores;
        let out = Mutex::new(&mut ws.attn[..m * q_dim]);
        let work = |item: usize, thread_idx: usize| {
            let (r, kv_head) = (item / c.n_kv_heads, item % c.n_kv_heads);
            let slot = first_slot + r;
            // Visible keys: a run of committed rows, then drafted ancestors (root first).
            let n_prefix = if slot < cache.n_committed {
                slot + 1
            } else {
                cache.n_committed
            };
            let mut extra = [0usize; MAX_DEPTH];
            let mut n_extra = 0;
            if slot >= cache.n_committed {
                let mut s = Some(slot);
                while let Some(cur) = s {
                    if n_extra == MAX_DEPTH {
                        break;
                    }
                    extra[n_extra] = cur;
                    n_extra += 1;
                    s = cache.parents[cur - cache.n_committed];
                }
                extra[..n_extra].reverse();
            }
            let n_keys = n_prefix + n_extra;
            let key = |i: usize| if i < n_prefix { i } else { extra[i - n_prefix] };
            let mut guard = scores[thread_idx]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let (acc, buf) = guard.split_at_mut(group * hd);
            let kv = kv_head * hd..(kv_head + 1) * hd;
            for j in 0..group {
                let head = kv_head * group + j;
                let qh = &q[r * q_dim + head * hd..r * q_dim + (head + 1) * hd];
                let s = &mut buf[j * n_keys..(j + 1) * n_keys];
                for (i, sv) in s.iter_mut().enumerate() {
                    let kr = key(i) * kv_dim;
                    *sv = dot(qh, &cache.k[kr + kv.start..kr + kv.end]) * scale;
                }
                softmax(s);
            }
            acc.fill(0.0);
            for i in 0..n_keys {
                let vr = key(i) * kv_dim;
                let vrow = &cache.v[vr + kv.start..vr + kv.end];
                for j in 0..group {
                    let p = buf[j * n_keys + i];
                    for (a, &v) in acc[j * hd..(j + 1) * hd].iter_mut().zip(vrow) {
                        *a += p * v;
                    }
                }
            }
            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
            let at = r * q_dim + kv_head * group * hd;
            o[at..at + group * hd].copy_from_slice(acc);
        };
        // Small calls run on this thread: a pool job costs more than it saves.
        let ctx = first_slot + m;
        if n_items * ctx < 4096 {
            (0..n_items).for_each(|i| work(i, 0));
        } else {
            pool.run_chunks(n_items, work);
        }
    }
}

fn add_bias(x: &mut [f32], bias: Option<&[f32]>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            ops::add_in_place(row, b);
        }
    }
}

/// Dot product in 16 lanes with separate multiply and add (vectorises without FMA).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    let mut s = [0f32; 8];
    for l in 0..8 {
        s[l] = acc[l] + acc[l + 8];
    }
    (s[0] + s[4]) + (s[1] + s[5]) + ((s[2] + s[6]) + (s[3] + s[7]))
}

/// In-place softmax.
pub(crate) fn softmax(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    s.iter_mut().for_each(|v| *v *= inv);
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
    fn exp_and_dot_are_accurate() {
        for i in 0..2000 {
            let x = -(i as f32) * 0.05;
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            assert!((got - want).abs() <= 4e-7 * want + 1e-38, "{x}: {got} vs {want}");
        }
        let a: Vec<f32> = (0..70).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..70).map(|i| 1.0 - i as f32 * 0.01).collect();
        let want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert!((dot(&a, &b) as f64 - want).abs() < 1e-3);
    }
}
