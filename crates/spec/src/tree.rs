//! Token trees: the drafted tokens one target forward verifies.
//!
//! A [`TokenTree`] is stored in topological order: node 0 is the root (the last emitted token,
//! not yet in the KV cache), and every other node's parent is an earlier node. From that order
//! follow the attention masks (node `i` sees itself and its ancestors), the positions
//! (`cache length + depth`) and the root-to-leaf paths; an accepted path is increasing, which
//! is what `KvCache::compact` needs.
//!
//! A [`TreeShape`] is a static tree of child ranks ("the 2nd most likely continuation of the
//! most likely one"), as EAGLE writes its trees: each node is the path of ranks from the root.
//! Presets: [`TreeShape::chain`] and [`TreeShape::eagle_default`]; custom shapes are text files
//! in the same notation, one node a line (see [`TreeShape::parse`]).

use crate::{Error, Result};
use std::path::Path;

/// Most nodes (root included) one verification forward takes: the width of a tree mask.
pub const MAX_TREE_NODES: usize = 64;

/// A drafted token tree, root first, parents before children.
#[derive(Clone, Debug, Default)]
pub struct TokenTree {
    tokens: Vec<u32>,
    parents: Vec<usize>,
    depths: Vec<usize>,
    masks: Vec<u64>,
    scores: Vec<f32>,
    /// Per node: the draft distribution its children were sampled from (i.i.d.), if they were.
    child_q: Vec<Option<Vec<f32>>>,
}

impl TokenTree {
    /// An empty tree with room for [`MAX_TREE_NODES`] nodes.
    pub fn new() -> Self {
        let mut t = Self::default();
        t.tokens.reserve(MAX_TREE_NODES);
        t.parents.reserve(MAX_TREE_NODES);
        t.depths.reserve(MAX_TREE_NODES);
        t.masks.reserve(MAX_TREE_NODES);
        t.scores.reserve(MAX_TREE_NODES);
        t.child_q.reserve(MAX_TREE_NODES);
        t
    }

    /// Clears the tree and sets its root (score 1: it is already emitted).
    pub fn reset(&mut self, root: u32) {
        self.tokens.clear();
        self.parents.clear();
        self.depths.clear();
        self.masks.clear();
        self.scores.clear();
        self.child_q.clear();
        self.tokens.push(root);
        self.parents.push(0);
        self.depths.push(0);
        self.masks.push(1);
        self.scores.push(1.0);
        self.child_q.push(None);
    }

    /// Adds `token` under `parent` with a draft score (an estimate of the probability that the
    /// path to it is accepted; higher is better). Returns the new node's index.
    pub fn push(&mut self, parent: usize, token: u32, score: f32) -> Result<usize> {
        let i = self.tokens.len();
        if i >= MAX_TREE_NODES {
            return Err(Error::TreeTooLarge {
                n_nodes: i + 1,
                max: MAX_TREE_NODES,
            });
        }
        if parent >= i {
            return Err(Error::BadParent { node: i, parent });
        }
        self.tokens.push(token);
        self.parents.push(parent);
        self.depths.push(self.depths[parent] + 1);
        self.masks.push(self.masks[parent] | 1u64 << i);
        self.scores.push(score);
        self.child_q.push(None);
        Ok(i)
    }

    /// Records that `node`'s children were sampled i.i.d. from `q` (a distribution over the
    /// vocabulary), which selects the multi-round rule when sampling.
    pub fn set_child_q(&mut self, node: usize, q: Vec<f32>) {
        self.child_q[node] = Some(q);
    }

    /// The distribution `node`'s children were sampled from; `None` for deterministic drafts.
    pub fn child_q(&self, node: usize) -> Option<&[f32]> {
        self.child_q[node].as_deref()
    }

    /// Keeps only the first `n` nodes (a prefix of a topological order is a subtree).
    pub fn truncate(&mut self, n: usize) {
        let n = n.max(1);
        self.tokens.truncate(n);
        self.parents.truncate(n);
        self.depths.truncate(n);
        self.masks.truncate(n);
        self.scores.truncate(n);
        self.child_q.truncate(n);
    }

    /// Nodes, root included.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the tree has no nodes (not even a root).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Node tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Node parents (the root's is 0).
    pub fn parents(&self) -> &[usize] {
        &self.parents
    }

    /// Node depths (the root's is 0).
    pub fn depths(&self) -> &[usize] {
        &self.depths
    }

    /// Draft scores.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// Attention masks: bit `j` of `masks()[i]` is set when node `i` sees node `j`.
    pub fn masks(&self) -> &[u64] {
        &self.masks
    }

    /// Greatest depth.
    pub fn max_depth(&self) -> usize {
        self.depths.iter().copied().max().unwrap_or(0)
    }

    /// RoPE positions of the nodes when `base` tokens are cached: `base + depth`.
    pub fn positions(&self, base: usize, out: &mut Vec<u32>) {
        out.clear();
        out.extend(self.depths.iter().map(|&d| (base + d) as u32));
    }

    /// Children of `node`, in insertion (rank) order.
    pub fn children(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        (node + 1..self.tokens.len()).filter(move |&i| self.parents[i] == node)
    }

    /// Root-to-leaf paths (node indices), one per leaf, in leaf order.
    pub fn paths(&self) -> Vec<Vec<usize>> {
        let n = self.tokens.len();
        let mut is_parent = vec![false; n];
        for i in 1..n {
            is_parent[self.parents[i]] = true;
        }
        (0..n)
            .filter(|&i| !is_parent[i])
            .map(|leaf| {
                let mut path = vec![leaf];
                while let Some(&top) = path.last().filter(|&&t| t != 0) {
                    path.push(self.parents[top]);
                }
                path.reverse();
                path
            })
            .collect()
    }
}

/// A static tree of child ranks: node `i > 0` is the `ranks[i]`-th candidate after its parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeShape {
    /// Parent of each node (node 0 is the root).
    parents: Vec<usize>,
    /// Rank of each node among its parent's candidates (0 = the most likely).
    ranks: Vec<usize>,
}

impl TreeShape {
    /// A chain of `n` drafted tokens (rank 0 after rank 0).
    pub fn chain(n: usize) -> Result<Self> {
        let paths: Vec<Vec<usize>> = (1..=n).map(|d| vec![0; d]).collect();
        Self::from_paths(&paths, "chain")
    }

    /// EAGLE's default tree (`mc_sim_7b_63` in EAGLE's `choices.py`): 25 drafted nodes, depth 5,
    /// up to 4 candidates after the root.
    pub fn eagle_default() -> Self {
        #[rustfmt::skip]
        const PATHS: &[&[usize]] = &[
            &[0], &[1], &[2], &[3],
            &[0, 0], &[0, 1], &[0, 2], &[1, 0], &[1, 1], &[2, 0], &[2, 1], &[3, 0],
            &[0, 0, 0], &[0, 0, 1], &[0, 0, 2], &[0, 1, 0], &[0, 1, 1], &[0, 2, 0], &[0, 2, 1], &[1, 0, 0],
            &[0, 0, 0, 0], &[0, 0, 0, 1], &[0, 0, 0, 2],
            &[0, 0, 0, 0, 0], &[0, 0, 0, 0, 1],
        ];
        let paths: Vec<Vec<usize>> = PATHS.iter().map(|p| p.to_vec()).collect();
        Self::from_paths(&paths, "eagle-default").expect("the EAGLE preset is a valid tree")
    }

    /// A shape from rank paths (each path's parent path must come earlier).
    pub fn from_paths(paths: &[Vec<usize>], origin: &str) -> Result<Self> {
        let mut parents = vec![0];
        let mut ranks = vec![0];
        let mut index: std::collections::HashMap<Vec<usize>, usize> =
            std::collections::HashMap::new();
        index.insert(Vec::new(), 0);
        for (line_idx, path) in paths.iter().enumerate() {
            let err = |msg: String| Error::TreeSyntax {
                origin: origin.to_string(),
                line: line_idx + 1,
                msg,
            };
            let Some((&rank, parent_path)) = path.split_last() else {
                return Err(err("an empty path".into()));
            };
            let Some(&parent) = index.get(parent_path) else {
                return Err(err(format!(
                    "path {path:?} comes before its parent {parent_path:?}"
                )));
            };
            if index.contains_key(path.as_slice()) {
                return Err(err(format!("path {path:?} appears twice")));
            }
            if parents.len() >= MAX_TREE_NODES {
                return Err(Error::TreeTooLarge {
                    n_nodes: paths.len() + 1,
                    max: MAX_TREE_NODES,
                });
            }
            index.insert(path.clone(), parents.len());
            parents.push(parent);
            ranks.push(rank);
        }
        Ok(Self { parents, ranks })
    }

    /// Parses the text format: one node a line as its rank path from the root, ranks separated
    /// by commas (`0`, `0,1`, `2,0,0`), optionally in brackets; blank lines and `#` comments are
    /// ignored; a node's parent path must appear on an earlier line.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut paths = Vec::new();
        let mut lines = Vec::new();
        for (line_idx, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            let line = line
                .trim_start_matches('[')
                .trim_end_matches(',')
                .trim_end_matches(']')
                .trim();
            if line.is_empty() {
                continue;
            }
            let err = |msg: String| Error::TreeSyntax {
                origin: origin.to_string(),
                line: line_idx + 1,
                msg,
            };
            let path = line
                .split(',')
                .map(|s| {
                    let s = s.trim();
                    s.parse::<usize>()
                        .ok()
                        .filter(|&r| r < MAX_TREE_NODES)
                        .ok_or_else(|| {
                            err(format!("{s:?} is not a child rank (0..{MAX_TREE_NODES})"))
                        })
                })
                .collect::<Result<Vec<usize>>>()?;
            paths.push(path);
            lines.push(line_idx + 1);
        }
        if paths.is_empty() {
            return Err(Error::TreeSyntax {
                origin: origin.to_string(),
                line: 1,
                msg: "no nodes".into(),
            });
        }
        Self::from_paths(&paths, origin).map_err(|e| match e {
            // Report the file's line, not the index among non-blank lines.
            Error::TreeSyntax { origin, line, msg } => Error::TreeSyntax {
                origin,
                line: lines[line - 1],
                msg,
            },
            other => other,
        })
    }

    /// Reads a tree file (see [`TreeShape::parse`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Nodes, root included.
    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// Always false: a shape has at least its root.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Parent of each node.
    pub fn parents(&self) -> &[usize] {
        &self.parents
    }

    /// Rank of each node among its siblings' candidates.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    /// Greatest depth.
    pub fn depth(&self) -> usize {
        let mut depth = vec![0usize; self.parents.len()];
        for i in 1..self.parents.len() {
            depth[i] = depth[self.parents[i]] + 1;
        }
        depth.into_iter().max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eagle_default_has_25_nodes_and_depth_5() {
        let s = TreeShape::eagle_default();
        assert_eq!(s.len(), 26);
        assert_eq!(s.depth(), 5);
        assert_eq!(s.ranks()[1..5], [0, 1, 2, 3]);
    }

    #[test]
    fn masks_positions_and_paths() {
        let mut t = TokenTree::new();
        t.reset(7);
        let a = t.push(0, 1, 0.9).unwrap();
        let b = t.push(0, 2, 0.1).unwrap();
        let c = t.push(a, 3, 0.5).unwrap();
        assert_eq!(t.masks(), &[0b1, 0b11, 0b101, 0b1011]);
        let mut pos = Vec::new();
        t.positions(10, &mut pos);
        assert_eq!(pos, [10, 11, 11, 12]);
        assert_eq!(t.paths(), vec![vec![0, b], vec![0, a, c]]);
        assert_eq!(t.children(0).collect::<Vec<_>>(), [a, b]);
        assert!(matches!(
            t.push(9, 1, 0.0),
            Err(Error::BadParent { node: 4, parent: 9 })
        ));
    }

    #[test]
    fn parse_accepts_eagle_notation_and_rejects_orphans() {
        let s = TreeShape::parse("# a tree\n[0]\n[1],\n0, 0\n\n0,0,1 # deep\n", "t.txt").unwrap();
        assert_eq!(s.parents(), &[0, 0, 0, 1, 3]);
        assert_eq!(s.ranks(), &[0, 0, 1, 0, 1]);
        let err = TreeShape::parse("0\n1,0\n", "bad.txt")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.txt:2") && err.contains("before its parent"),
            "{err}"
        );
        let err = TreeShape::parse("0\nx\n", "bad.txt")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.txt:2"), "{err}");
        assert!(TreeShape::parse("", "empty").is_err());
        assert!(TreeShape::chain(64).is_err());
        assert_eq!(TreeShape::chain(63).unwrap().depth(), 63);
    }
}
