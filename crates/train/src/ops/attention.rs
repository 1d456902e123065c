//! Masked grouped-query attention: `softmax(q·kᵀ/√hd + mask) · v` per head, query head `h`
//! reading KV head `h / (n_heads / n_kv_heads)`.
//!
//! The mask is kept as per-row lists of allowed keys ([`KeyLists`]), so the work is
//! proportional to the allowed pairs (causal masks cost half of dense, and the training-time
//! test masks of EAGLE-3 add only a diagonal per step). The forward saves the log-sum-exp per
//! (row, head) and the backward recomputes the probabilities from it (no `[T, S]` matrix per
//! head is kept). A row with no allowed key outputs zeros and passes no gradient. Rows are
//! split among the compute context's threads, balanced by allowed pairs.

use crate::error::{shape_err, Error, Result};
use crate::simd::{axpy, dot, exp, multiversion};
use crate::tape::{Backward, GradBuf, Tape, Var};

/// Allowed keys per query row (compressed rows of a boolean attention mask).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLists {
    n_keys: usize,
    offsets: Vec<usize>,
    keys: Vec<u32>,
}

impl KeyLists {
    /// From a row-major boolean mask `[rows, n_keys]` (`true` = may attend).
    pub fn from_mask(rows: usize, n_keys: usize, mask: &[bool]) -> Result<KeyLists> {
        if mask.len() != rows * n_keys {
            return Err(Error::BufferLen {
                what: format!("attention mask [{rows}, {n_keys}]"),
                want: rows * n_keys,
                got: mask.len(),
            });
        }
        let mut b = KeyListsBuilder::new(n_keys);
        for r in 0..rows {
            for (j, &ok) in mask[r * n_keys..(r + 1) * n_keys].iter().enumerate() {
                if ok {
                    b.push(j)?;
                }
            }
            b.end_row();
        }
        Ok(b.finish())
    }

    /// The causal mask of `t` rows over `t` keys (row `i` sees keys `0..=i`).
    pub fn causal(t: usize) -> KeyLists {
        let mut b = KeyListsBuilder::new(t);
        for i in 0..t {
            for j in 0..=i {
                b.keys.push(j as u32);
            }
            b.end_row();
        }
        b.finish()
    }

    /// Number of query rows.
    pub fn rows(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of keys the rows index into.
    pub fn n_keys(&self) -> usize {
        self.n_keys
    }

    /// The allowed keys of row `r`, in increasing order of insertion.
    pub fn row(&self, r: usize) -> &[u32] {
        &self.keys[self.offsets[r]..self.offsets[r + 1]]
    }

    /// Total allowed (row, key) pairs.
    pub fn n_pairs(&self) -> usize {
        self.keys.len()
    }

    /// Splits rows into at most `n` contiguous ranges of about equal pair counts.
    fn split(&self, n: usize) -> Vec<(usize, usize)> {
        let rows = self.rows();
        let total = self.n_pairs().max(1);
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        for part in 1..=n {
            let target = total * part / n;
            let mut end = start;
            while end < rows && (self.offsets[end + 1] <= target || part == n) {
                end += 1;
            }
            if end > start {
                out.push((start, end));
            }
            start = end;
        }
        out
    }
}

/// Builds [`KeyLists`] row by row.
#[derive(Debug)]
pub struct KeyListsBuilder {
    n_keys: usize,
    offsets: Vec<usize>,
    keys: Vec<u32>,
}

impl KeyListsBuilder {
    /// An empty builder over `n_keys` keys.
    pub fn new(n_keys: usize) -> KeyListsBuilder {
        KeyListsBuilder {
            n_keys,
            offsets: vec![0],
            keys: Vec::new(),
        }
    }
    /// Allows key `j` for the current row.
    pub fn push(&mut self, j: usize) -> Result<()> {
        if j >= self.n_keys || j > u32::MAX as usize {
            return Err(Error::Index {
                op: "attention mask",
                index: j,
                size: self.n_keys,
            });
        }
        self.keys.push(j as u32);
        Ok(())
    }
    /// Ends the current row.
    pub fn end_row(&mut self) {
        self.offsets.push(self.keys.len());
    }
    /// The lists.
    pub fn finish(self) -> KeyLists {
        KeyLists {
            n_keys: self.n_keys,
            offsets: self.offsets,
            keys: self.keys,
        }
    }
}

#[derive(Clone, Copy)]
struct Dims {
    n_heads: usize,
    group: usize,
    hd: usize,
    scale: f32,
}

impl Dims {
    fn q_cols(&self) -> usize {
        self.n_heads * self.hd
    }
    fn kv_cols(&self) -> usize {
        self.n_heads / self.group * self.hd
    }
}

struct AttentionBack {
    q: Var,
    k: Var,
    v: Var,
    keys: KeyLists,
    dims: Dims,
    /// Log-sum-exp of the scaled scores per (row, head); `-inf` for rows with no key.
    lse: Vec<f32>,
}

/// Forward for rows `r0..r1`: writes their outputs (`out` holds exactly those rows) and lse.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn forward_rows(
    rows: (usize, usize),
    d: Dims,
    keys: &KeyLists,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (r0, r1) = rows;
    let (qc, kc, hd) = (d.q_cols(), d.kv_cols(), d.hd);
    let mut p = Vec::new();
    for r in r0..r1 {
        let list = keys.row(r);
        p.resize(list.len(), 0.0);
        for h in 0..d.n_heads {
            let g = h / d.group;
            let o = &mut out[(r - r0) * qc + h * hd..][..hd];
            if list.is_empty() {
                o.fill(0.0);
                lse[(r - r0) * d.n_heads + h] = f32::NEG_INFINITY;
                continue;
            }
            let qh = &q[r * qc + h * hd..][..hd];
            let mut mx = f32::NEG_INFINITY;
            for (pj, &j) in p.iter_mut().zip(list) {
                *pj = dot(qh, &k[j as usize * kc + g * hd..][..hd]) * d.scale;
                mx = mx.max(*pj);
            }
            let mut den = 0f32;
            for pj in p.iter_mut() {
                *pj = exp(*pj - mx);
                den += *pj;
            }
            o.fill(0.0);
            let inv = 1.0 / den;
            for (pj, &j) in p.iter().zip(list) {
                axpy(pj * inv, &v[j as usize * kc + g * hd..][..hd], o);
            }
            lse[(r - r0) * d.n_heads + h] = mx + den.ln();
        }
    }
}

/// Forward values the backward reads.
#[derive(Clone, Copy)]
struct Saved<'s> {
    q: &'s [f32],
    k: &'s [f32],
    v: &'s [f32],
    o: &'s [f32],
    lse: &'s [f32],
}

/// Backward for rows `r0..r1`: writes their `dq` rows, adds to `dk`, `dv` (full size).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_rows(
    rows: (usize, usize),
    d: Dims,
    keys: &KeyLists,
    saved: Saved<'_>,
    g: &[f32],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (r0, r1) = rows;
    let (qc, kc, hd) = (d.q_cols(), d.kv_cols(), d.hd);
    let Saved { q, k, v, o, lse } = saved;
    for r in r0..r1 {
        let list = keys.row(r);
        for h in 0..d.n_heads {
            let l = lse[r * d.n_heads + h];
            if list.is_empty() || l == f32::NEG_INFINITY {
                continue;
            }
            let gi = h / d.group;
            let qh = &q[r * qc + h * hd..][..hd];
            let gh = &g[r * qc + h * hd..][..hd];
            let big_d = dot(gh, &o[r * qc + h * hd..][..hd]);
            let dqh = &mut dq[(r - r0) * qc + h * hd..][..hd];
            for &j in list {
                let (ko, vo) = (j as usize * kc + gi * hd, j as usize * kc + gi * hd);
                let kj = &k[ko..][..hd];
                let p = exp(dot(qh, kj) * d.scale - l);
                let dp = dot(gh, &v[vo..][..hd]);
                let ds = p * (dp - big_d) * d.scale;
                axpy(ds, kj, dqh);
                axpy(ds, qh, &mut dk[ko..][..hd]);
                axpy(p, gh, &mut dv[vo..][..hd]);
            }
        }
    }
}

multiversion! {
    fn forward_rows_best(
        rows: (usize, usize),
        d: Dims,
        keys: &KeyLists,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
        lse: &mut [f32],
    ) => forward_rows;
}

multiversion! {
    fn backward_rows_best(
        rows: (usize, usize),
        d: Dims,
        keys: &KeyLists,
        saved: Saved<'_>,
        g: &[f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) => backward_rows;
}

impl Tape<'_> {
    /// Attention with a boolean mask `[T, S]` (row-major, `true` = may attend): `q[T, nh·hd]`,
    /// `k`, `v` `[S, nkv·hd]`, `n_heads % n_kv_heads == 0`, scale `1/√hd`. Output `[T, nh·hd]`.
    pub fn attention(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        mask: &[bool],
        n_heads: usize,
        n_kv_heads: usize,
    ) -> Result<Var> {
        let (t, s) = (self.shape(q).rows(), self.shape(k).rows());
        let keys = KeyLists::from_mask(t, s, mask)?;
        self.attention_keys(q, k, v, keys, n_heads, n_kv_heads)
    }

    /// [`Tape::attention`] with the mask given as allowed-key lists.
    pub fn attention_keys(
        &mut self,
        q: Var,
        k: Var,
        v: Var,
        keys: KeyLists,
        n_heads: usize,
        n_kv_heads: usize,
    ) -> Result<Var> {
        let (qs, ks, vs) = (
            self.shape(q).clone(),
            self.shape(k).clone(),
            self.shape(v).clone(),
        );
        let bad = |why: &str| {
            shape_err(
                "attention",
                format!("q {qs}, k {ks}, v {vs}, {n_heads} heads, {n_kv_heads} KV heads, mask [{}, {}]: {why}", keys.rows(), keys.n_keys()),
            )
        };
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad("heads must be a positive multiple of KV heads"));
        }
        if qs.dims().len() != 2 || ks.dims().len() != 2 || ks != vs {
            return Err(bad("want matrices q [T, nh·hd] and k = v [S, nkv·hd]"));
        }
        if qs.cols() % n_heads != 0 {
            return Err(bad("q columns not a multiple of the heads"));
        }
        let hd = qs.cols() / n_heads;
        if ks.cols() != n_kv_heads * hd {
            return Err(bad("k columns differ from KV heads × head dim"));
        }
        if keys.rows() != qs.rows() || keys.n_keys() != ks.rows() {
            return Err(bad("mask shape differs from [T, S]"));
        }
        let d = Dims {
            n_heads,
            group: n_heads / n_kv_heads,
            hd,
            scale: 1.0 / (hd as f32).sqrt(),
        };
        let t = qs.rows();
        let mut out = vec![0f32; t * d.q_cols()];
        let mut lse = vec![0f32; t * n_heads];
        let (qv, kv, vv) = (self.value(q), self.value(k), self.value(v));
        let ranges = keys.split(self.threads_for_pairs(&keys, d));
        let mut out_rest = out.as_mut_slice();
        let mut lse_rest = lse.as_mut_slice();
        std::thread::scope(|scope| {
            for &(r0, r1) in &ranges {
                let (o, rest) = std::mem::take(&mut out_rest).split_at_mut((r1 - r0) * d.q_cols());
                out_rest = rest;
                let (l, rest) = std::mem::take(&mut lse_rest).split_at_mut((r1 - r0) * n_heads);
                lse_rest = rest;
                let keys = &keys;
                let mut job = move || forward_rows_best((r0, r1), d, keys, qv, kv, vv, o, l);
                if ranges.len() == 1 {
                    job();
                } else {
                    scope.spawn(job);
                }
            }
        });
        let back = AttentionBack {
            q,
            k,
            v,
            keys,
            dims: d,
            lse,
        };
        Ok(self.push_op(qs, out, &[q, k, v], back))
    }

    fn threads_for_pairs(&self, keys: &KeyLists, d: Dims) -> usize {
        // Below ~2 MFLOP a thread costs more than it saves.
        if keys.n_pairs() * d.q_cols() < 1 << 19 {
            1
        } else {
            self.compute().n_threads()
        }
    }
}

impl Backward for AttentionBack {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn backward(&self, tape: &Tape<'_>, out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()> {
        let d = self.dims;
        let (q, k, v, o) = (
            tape.value(self.q),
            tape.value(self.k),
            tape.value(self.v),
            tape.value(out),
        );
        let t = tape.shape(self.q).rows();
        let mut dq = vec![0f32; q.len()];
        let ranges = self.keys.split(tape.threads_for_pairs(&self.keys, d));
        let mut partial: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
        let mut dq_rest = dq.as_mut_slice();
        let lse = &self.lse;
        let keys = &self.keys;
        std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for &(r0, r1) in &ranges {
                let (dqp, rest) = std::mem::take(&mut dq_rest).split_at_mut((r1 - r0) * d.q_cols());
                dq_rest = rest;
                let mut job = move || {
                    let mut dk = vec![0f32; k.len()];
                    let mut dv = vec![0f32; v.len()];
                    let saved = Saved { q, k, v, o, lse };
                    backward_rows_best((r0, r1), d, keys, saved, g, dqp, &mut dk, &mut dv);
                    (dk, dv)
                };
                if ranges.len() == 1 {
                    partial.push(job());
                } else {
                    handles.push(scope.spawn(job));
                }
            }
            for h in handles {
                partial.push(h.join().expect("attention backward threads do not panic"));
            }
        });
        debug_assert_eq!(dq.len(), t * d.q_cols());
        grads.add(self.q, dq);
        for (dk, dv) in partial {
            grads.add(self.k, dk);
            grads.add(self.v, dv);
        }
        Ok(())
    }
}
