//! The reduced draft vocabulary of an EAGLE-3 head: the `n` target tokens the target emits most
//! often in the training responses, with the public checkpoints' maps between the two id spaces
//! (`d2t[d] = target_id - d`, `t2d[t] = true` when `t` is in the draft vocabulary).

use crate::{DistillError, Result};

/// Draft ids in ascending target-id order, so `d2t` is non-negative and monotone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraftVocab {
    /// Target id of each draft id.
    pub to_target: Vec<u32>,
    /// Draft id of each target id, if it has one.
    pub to_draft: Vec<Option<u32>>,
}

impl DraftVocab {
    /// The `n` most frequent tokens of `counts` (indexed by target id; ties go to the lower
    /// id). Tokens never seen still fill the vocabulary, lowest ids first, so it is always `n`
    /// long.
    pub fn most_frequent(counts: &[u64], n: usize) -> Result<Self> {
        if n == 0 || n > counts.len() {
            return Err(DistillError::Config(format!(
                "draft vocabulary of {n} tokens for a target vocabulary of {}",
                counts.len()
            )));
        }
        let mut ids: Vec<u32> = (0..counts.len() as u32).collect();
        ids.sort_by_key(|&t| (std::cmp::Reverse(counts[t as usize]), t));
        let mut to_target = ids[..n].to_vec();
        to_target.sort_unstable();
        let mut to_draft = vec![None; counts.len()];
        for (d, &t) in to_target.iter().enumerate() {
            to_draft[t as usize] = Some(d as u32);
        }
        Ok(Self {
            to_target,
            to_draft,
        })
    }

    /// The vocabulary a head file stores as `d2t` (target id minus draft id), for a target of
    /// `target_vocab` tokens: what continuing a head on new data keeps. Target ids must be in
    /// range and strictly increasing (the order [`DraftVocab::most_frequent`] writes).
    pub fn from_d2t(d2t: &[i64], target_vocab: usize) -> Result<Self> {
        let mut to_target = Vec::with_capacity(d2t.len());
        for (d, &off) in d2t.iter().enumerate() {
            let t = d as i64 + off;
            let in_order = to_target.last().is_none_or(|&last| i64::from(last) < t);
            if t < 0 || t >= target_vocab as i64 || !in_order {
                return Err(DistillError::Config(format!(
                    "d2t[{d}] = {off} gives target id {t}: not increasing within a vocabulary of {target_vocab}"
                )));
            }
            to_target.push(t as u32);
        }
        if to_target.is_empty() {
            return Err(DistillError::Config("an empty d2t".into()));
        }
        let mut to_draft = vec![None; target_vocab];
        for (d, &t) in to_target.iter().enumerate() {
            to_draft[t as usize] = Some(d as u32);
        }
        Ok(Self {
            to_target,
            to_draft,
        })
    }

    /// Draft vocabulary size.
    pub fn len(&self) -> usize {
        self.to_target.len()
    }

    /// Never true (a vocabulary has at least one token).
    pub fn is_empty(&self) -> bool {
        self.to_target.is_empty()
    }

    /// The share of `counts`' mass inside the vocabulary (how often the target's next token is
    /// one the head can propose at all).
    pub fn coverage(&self, counts: &[u64]) -> f64 {
        let total: u64 = counts.iter().sum();
        let inside: u64 = self.to_target.iter().map(|&t| counts[t as usize]).sum();
        inside as f64 / total.max(1) as f64
    }

    /// `d2t` as the public checkpoints store it: target id minus draft id.
    pub fn d2t(&self) -> Vec<i64> {
        self.to_target
            .iter()
            .enumerate()
            .map(|(d, &t)| t as i64 - d as i64)
            .collect()
    }

    /// `t2d` as the public checkpoints store it: one flag per target id.
    pub fn t2d(&self) -> Vec<bool> {
        self.to_draft.iter().map(Option::is_some).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_most_frequent_and_maps_both_ways() {
        let counts = [5, 0, 9, 9, 1, 7];
        let v = DraftVocab::most_frequent(&counts, 3).unwrap();
        assert_eq!(v.to_target, vec![2, 3, 5]);
        assert_eq!(v.d2t(), vec![2, 2, 3]);
        assert_eq!(v.t2d(), vec![false, false, true, true, false, true]);
        for (d, &t) in v.to_target.iter().enumerate() {
            assert_eq!(v.to_draft[t as usize], Some(d as u32));
            assert_eq!(d as i64 + v.d2t()[d], t as i64);
        }
        assert!((v.coverage(&counts) - 25.0 / 31.0).abs() < 1e-12);
        assert!(DraftVocab::most_frequent(&counts, 7).is_err());
        assert_eq!(DraftVocab::from_d2t(&v.d2t(), counts.len()).unwrap(), v);
        for bad in [vec![2, 1, 3], vec![-1, 2, 3], vec![2, 2, 4], vec![]] {
            assert!(DraftVocab::from_d2t(&bad, counts.len()).is_err(), "{bad:?}");
        }
        assert!(DraftVocab::most_frequent(&counts, 0).is_err());
    }
}
