//! Per-sequence key/value cache with rollback and in-place compaction for speculative decoding.
//!
//! Rows are stored in f16 (as llama.cpp does by default), preallocated for the whole context
//! with zeroed memory, so untouched rows cost no resident memory. Each layer keeps its own
//! length: a LayerSkip draft fills only the first E layers, and verification then fills the
//! rest for the same positions.

use crate::{Error, Result};
use half::f16;

/// One layer's keys and values: `capacity` rows of `kv_dim` values each.
struct LayerKv {
    k: Vec<f16>,
    v: Vec<f16>,
    len: usize,
}

/// The KV cache of one sequence.
pub struct KvCache {
    layers: Vec<LayerKv>,
    kv_dim: usize,
    capacity: usize,
}

impl KvCache {
    /// A cache for `n_layers` layers of `kv_dim` values per row, holding up to `capacity` rows.
    pub fn new(n_layers: usize, kv_dim: usize, capacity: usize) -> Self {
        let layers = (0..n_layers)
            // `zeroed_vec` allocates with `alloc_zeroed`, so rows never written cost no
            // resident memory (`vec![f16::ZERO; n]` would write every element).
            .map(|_| LayerKv {
                k: bytemuck::zeroed_vec(capacity * kv_dim),
                v: bytemuck::zeroed_vec(capacity * kv_dim),
                len: 0,
            })
            .collect();
        Self {
            layers,
            kv_dim,
            capacity,
        }
    }

    /// Rows the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Committed rows of layer 0 (all layers agree outside a LayerSkip draft).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows held by `layer`.
    pub fn layer_len(&self, layer: usize) -> usize {
        self.layers[layer].len
    }

    /// Drops every row at index `len` and beyond, in every layer (rollback after rejection).
    pub fn truncate(&mut self, len: usize) {
        for l in &mut self.layers {
            l.len = l.len.min(len);
        }
    }

    /// Keeps, after the first `base` rows, only rows `base + keep[i]` moved to `base + i`
    /// (the accepted path of a verified tree), in every layer that holds them.
    ///
    /// `keep` must be increasing (a root-to-leaf path in a topologically ordered tree is).
    pub fn compact(&mut self, base: usize, keep: &[usize]) -> Result<()> {
        if keep.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::InvalidRequest(format!(
                "KvCache::compact: rows {keep:?} are not increasing"
            )));
        }
        let d = self.kv_dim;
        for l in &mut self.layers {
            let Some(&last) = keep.last() else {
                l.len = l.len.min(base);
                continue;
            };
            if l.len < base + last + 1 {
                // This layer never received the tree rows (e.g. past a LayerSkip exit).
                l.len = l.len.min(base);
                continue;
            }
            for (i, &src) in keep.iter().enumerate() {
                if src != i {
                    let (from, to) = ((base + src) * d, (base + i) * d);
                    l.k.copy_within(from..from + d, to);
                    l.v.copy_within(from..from + d, to);
                }
            }
            l.len = base + keep.len();
        }
        Ok(())
    }

    /// Room for `n_new` more rows in `layer`, or an error naming the context size.
    pub(crate) fn check_room(&self, layer: usize, n_new: usize) -> Result<()> {
        let len = self.layers[layer].len;
        if len + n_new > self.capacity {
            return Err(Error::InvalidRequest(format!(
                "context full: {len} cached + {n_new} new tokens exceed the context of {} tokens",
                self.capacity
            )));
        }
        Ok(())
    }

    /// Writes `n_new` rows of keys and values (f32, `n_new * kv_dim`) at the end of `layer`
    /// and advances its length.
    pub(crate) fn append(&mut self, layer: usize, k: &[f32], v: &[f32]) {
        let d = self.kv_dim;
        let l = &mut self.layers[layer];
        let start = l.len * d;
        for (dst, &src) in l.k[start..start + k.len()].iter_mut().zip(k) {
            *dst = f16::from_f32(src);
        }
        for (dst, &src) in l.v[start..start + v.len()].iter_mut().zip(v) {
            *dst = f16::from_f32(src);
        }
        l.len += k.len() / d;
    }

    /// Keys and values of `layer` (all rows up to its length).
    pub(crate) fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        let l = &self.layers[layer];
        let n = l.len * self.kv_dim;
        (&l.k[..n], &l.v[..n])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: f32) -> Vec<f32> {
        vec![v; 4]
    }

    #[test]
    fn compact_keeps_accepted_rows_in_order() {
        let mut c = KvCache::new(2, 4, 16);
        for layer in 0..2 {
            for i in 0..6 {
                c.append(layer, &row(i as f32), &row(-(i as f32)));
            }
        }
        // base 2: tree rows 2..6 (tree indices 0..4); accept tree nodes 0, 2, 3.
        c.compact(2, &[0, 2, 3]).unwrap();
        assert_eq!(c.len(), 5);
        let (k, v) = c.layer(1);
        let firsts: Vec<f32> = k.chunks(4).map(|r| r[0].to_f32()).collect();
        assert_eq!(firsts, [0.0, 1.0, 2.0, 4.0, 5.0]);
        assert_eq!(v[3 * 4].to_f32(), -4.0);
    }

    #[test]
    fn truncate_and_room() {
        let mut c = KvCache::new(1, 4, 3);
        c.append(0, &[0.0; 8], &[0.0; 8]);
        assert!(c.check_room(0, 2).is_err());
        c.truncate(1);
        assert_eq!(c.len(), 1);
        assert!(c.check_room(0, 2).is_ok());
        assert!(c.compact(0, &[2, 1]).is_err());
    }
}
