//! Prompt-lookup (n-gram) drafting: continue the context the way it continued before.
//!
//! The context's last `n` tokens (longest `n` first, from `max_n` down to `min_n`) are looked up
//! in the earlier context, most recent occurrence first. Each occurrence's continuation is a
//! candidate; up to `max_matches` of them are merged into a trie, where a node's score is the
//! fraction of matches that pass through it, times `rate(n)^depth`, where `rate(n)` is the
//! drafter's running estimate of how often a drafted token is accepted after a match of length
//! `n` (learned from `accept`; longer matches are usually more reliable). The trie then fills
//! the requested plan: a static shape (rank `r` = the `r`-th most frequent continuation) or a
//! best-first dynamic tree.

use crate::drafter::{DraftPlan, Drafter};
use crate::tree::{TokenTree, MAX_TREE_NODES};
use crate::Result;

/// Settings of [`NgramDrafter`].
#[derive(Clone, Debug)]
pub struct NgramConfig {
    /// Longest suffix to match.
    pub max_n: usize,
    /// Shortest suffix to match.
    pub min_n: usize,
    /// Occurrences merged into the tree.
    pub max_matches: usize,
}

impl Default for NgramConfig {
    fn default() -> Self {
        Self {
            max_n: 4,
            min_n: 1,
            max_matches: 8,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct TrieNode {
    token: u32,
    parent: usize,
    count: u32,
    /// Order of first appearance (lower = more recent match), to break count ties.
    first: u32,
}

/// The n-gram / prompt-lookup drafter.
#[derive(Debug)]
pub struct NgramDrafter {
    config: NgramConfig,
    trie: Vec<TrieNode>,
    /// Trie node of each tree node, when filling a plan.
    tree_to_trie: Vec<usize>,
    children: Vec<usize>,
    frontier: Vec<(f32, usize, usize)>,
    /// Per match length: (accepted drafted tokens, drafted tokens verified), decayed.
    rates: Vec<(f64, f64)>,
    /// Tree node of each shape node (reused between proposals).
    placed: Vec<Option<usize>>,
    /// Match length and depth of the last proposal (0 = none).
    last: (usize, usize),
}

impl NgramDrafter {
    /// A drafter with these settings.
    pub fn new(config: NgramConfig) -> Self {
        let config = NgramConfig {
            min_n: config.min_n.max(1),
            max_n: config.max_n.max(config.min_n.max(1)),
            ..config
        };
        let rates = vec![(0.0, 0.0); config.max_n + 1];
        Self {
            config,
            trie: Vec::new(),
            tree_to_trie: Vec::new(),
            children: Vec::new(),
            frontier: Vec::new(),
            rates,
            placed: Vec::new(),
            last: (0, 0),
        }
    }

    /// Estimated probability that a drafted token is accepted after a match of length `n`
    /// (prior 0.5, worth two observations).
    pub fn rate(&self, n: usize) -> f32 {
        let (hits, tries) = self.rates[n];
        ((hits + 1.0) / (tries + 2.0)) as f32
    }

    /// Builds the trie of continuations of the context's suffix, up to `depth` tokens each.
    /// Returns the number of matches merged and the match length.
    fn build_trie(&mut self, context: &[u32], depth: usize) -> (u32, usize) {
        self.trie.clear();
        self.trie.push(TrieNode {
            token: context.last().copied().unwrap_or(0),
            parent: 0,
            count: 0,
            first: 0,
        });
        let len = context.len();
        for n in (self.config.min_n..=self.config.max_n).rev() {
            if n >= len {
                continue;
            }
            let suffix = &context[len - n..];
            let mut n_matches = 0u32;
            // `end` is one past an earlier occurrence of the suffix (most recent first).
            for end in (n..len).rev() {
                if n_matches as usize >= self.config.max_matches {
                    break;
                }
                if &context[end - n..end] != suffix {
                    continue;
                }
                let cont = &context[end..len.min(end + depth)];
                if cont.is_empty() {
                    continue;
                }
                n_matches += 1;
                self.trie[0].count += 1;
                let mut node = 0;
                for &t in cont {
                    node = match (1..self.trie.len())
                        .find(|&c| self.trie[c].parent == node && self.trie[c].token == t)
                    {
                        Some(c) => c,
                        None => {
                            let first = self.trie.len() as u32;
                            self.trie.push(TrieNode {
                                token: t,
                                parent: node,
                                count: 0,
                                first,
                            });
                            self.trie.len() - 1
                        }
                    };
                    self.trie[node].count += 1;
                }
            }
            if n_matches > 0 {
                return (n_matches, n);
            }
        }
        (0, 0)
    }

    /// Children of trie node `node`, most frequent first (ties: most recent first), into
    /// `self.children`.
    fn ranked_children(&mut self, node: usize) {
        self.children.clear();
        self.children
            .extend((1..self.trie.len()).filter(|&c| self.trie[c].parent == node));
        let trie = &self.trie;
        self.children.sort_by(|&a, &b| {
            trie[b]
                .count
                .cmp(&trie[a].count)
                .then(trie[a].first.cmp(&trie[b].first))
        });
    }
}

impl Default for NgramDrafter {
    fn default() -> Self {
        Self::new(NgramConfig::default())
    }
}

impl Drafter for NgramDrafter {
    fn name(&self) -> &'static str {
        "ngram"
    }

    fn propose(
        &mut self,
        context: &[u32],
        plan: &DraftPlan<'_>,
        tree: &mut TokenTree,
    ) -> Result<()> {
        let depth = match plan {
            DraftPlan::Shape(shape) => shape.depth(),
            DraftPlan::Dynamic { depth, .. } => *depth,
        };
        self.last = (0, 0);
        let (n_matches, n) = self.build_trie(context, depth.min(MAX_TREE_NODES));
        if n_matches == 0 {
            return Ok(());
        }
        let total = n_matches as f32;
        let rate = self.rate(n);
        let score = |trie: &[TrieNode], c: usize, d: usize| {
            trie[c].count as f32 / total * rate.powi(d as i32)
        };
        self.tree_to_trie.clear();
        self.tree_to_trie.push(0);
        match plan {
            DraftPlan::Shape(shape) => {
                // Shape node i -> tree node (if its parent was placed and the rank exists).
                let mut placed = std::mem::take(&mut self.placed);
                placed.clear();
                placed.resize(shape.len(), None);
                placed[0] = Some(0);
                for i in 1..shape.len() {
                    let Some(parent_tree) = placed[shape.parents()[i]] else {
                        continue;
                    };
                    let parent_trie = self.tree_to_trie[parent_tree];
                    self.ranked_children(parent_trie);
                    let Some(&c) = self.children.get(shape.ranks()[i]) else {
                        continue;
                    };
                    let d = tree.depths()[parent_tree] + 1;
                    let node =
                        tree.push(parent_tree, self.trie[c].token, score(&self.trie, c, d))?;
                    self.tree_to_trie.push(c);
                    placed[i] = Some(node);
                }
                self.placed = placed;
            }
            DraftPlan::Dynamic {
                budget,
                depth: _,
                top_k,
            } => {
                // Best first by score; a child's score never exceeds its parent's, so nodes
                // come out parents first.
                self.frontier.clear();
                self.ranked_children(0);
                for &c in self.children.iter().take(*top_k) {
                    self.frontier.push((score(&self.trie, c, 1), c, 0));
                }
                let budget = (*budget).min(MAX_TREE_NODES - 1);
                while tree.len() <= budget {
                    let Some(best) = (0..self.frontier.len()).max_by(|&a, &b| {
                        self.frontier[a]
                            .0
                            .total_cmp(&self.frontier[b].0)
                            .then(b.cmp(&a))
                    }) else {
                        break;
                    };
                    let (node_score, c, parent_tree) = self.frontier.swap_remove(best);
                    let node = tree.push(parent_tree, self.trie[c].token, node_score)?;
                    self.ranked_children(c);
                    let d = tree.depths()[node] + 1;
                    for &g in self.children.iter().take(*top_k) {
                        self.frontier.push((score(&self.trie, g, d), g, node));
                    }
                }
            }
        }
        self.last = (n, tree.max_depth());
        Ok(())
    }

    fn accept(&mut self, _context: &[u32], n_accepted: usize) {
        let (n, depth) = std::mem::take(&mut self.last);
        if depth == 0 {
            return;
        }
        // Drafted tokens verified along the accepted path: the accepted ones, plus the one
        // rejected after them unless the path reached the tree's depth.
        let tried = (n_accepted + 1).min(depth);
        let r = &mut self.rates[n];
        r.0 = 0.98 * r.0 + n_accepted as f64;
        r.1 = 0.98 * r.1 + tried as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::TreeShape;

    fn propose(d: &mut NgramDrafter, ctx: &[u32], plan: DraftPlan<'_>) -> TokenTree {
        let mut t = TokenTree::new();
        t.reset(*ctx.last().unwrap());
        d.propose(ctx, &plan, &mut t).unwrap();
        t
    }

    #[test]
    fn chain_continues_the_most_recent_match() {
        let mut d = NgramDrafter::new(NgramConfig {
            max_n: 2,
            min_n: 1,
            max_matches: 4,
        });
        // "1 2" occurs twice, followed by 3 4 and by 5 6; the chain takes the more recent
        // only on a tie in counts.
        let ctx = [1, 2, 3, 4, 9, 1, 2, 5, 6, 9, 1, 2];
        let shape = TreeShape::chain(2).unwrap();
        let t = propose(&mut d, &ctx, DraftPlan::Shape(&shape));
        assert_eq!(t.tokens(), &[2, 5, 6]);
        let t = propose(
            &mut d,
            &ctx,
            DraftPlan::Dynamic {
                budget: 4,
                depth: 2,
                top_k: 2,
            },
        );
        assert_eq!(t.tokens(), &[2, 5, 3, 6, 4]);
        assert_eq!(t.parents(), &[0, 0, 0, 1, 2]);
    }

    #[test]
    fn no_match_drafts_nothing() {
        let mut d = NgramDrafter::default();
        let shape = TreeShape::eagle_default();
        let t = propose(&mut d, &[1, 2, 3, 4], DraftPlan::Shape(&shape));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn shape_ranks_follow_counts() {
        let mut d = NgramDrafter::new(NgramConfig {
            max_n: 1,
            min_n: 1,
            max_matches: 8,
        });
        // After 7: 8 twice, 9 once.
        let ctx = [7, 8, 7, 9, 7, 8, 7];
        let shape = TreeShape::parse("0\n1\n2\n0,0\n", "t").unwrap();
        let t = propose(&mut d, &ctx, DraftPlan::Shape(&shape));
        assert_eq!(t.tokens(), &[7, 8, 9, 7]);
        assert_eq!(t.parents(), &[0, 0, 0, 1]);
    }
}
