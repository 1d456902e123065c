//! The drafter interface (DESIGN.md §2): propose a token tree from the context, then hear
//! what the target accepted.

use crate::tree::{TokenTree, TreeShape};
use crate::Result;

/// How a drafter should lay out its proposal.
#[derive(Clone, Debug)]
pub enum DraftPlan<'a> {
    /// Fill this static shape: each node is the `rank`-th candidate after its parent's token.
    /// Nodes without a candidate (and their subtrees) are left out.
    Shape(&'a TreeShape),
    /// Grow the tree best first by cumulative draft score (EAGLE-2 style): at most `budget`
    /// drafted nodes, `depth` levels and `top_k` children per node. Nodes come out in
    /// non-increasing score order, so any prefix of the tree is the best smaller tree.
    Dynamic {
        /// Drafted nodes (root excluded).
        budget: usize,
        /// Levels below the root.
        depth: usize,
        /// Children per node.
        top_k: usize,
    },
}

/// Proposes token trees for the verifier.
///
/// The engine calls [`Drafter::propose`] with the context (prompt and every emitted token; its
/// last token is the tree's root, already emitted but not yet in the target's KV cache) and a
/// tree holding only that root. The drafter adds nodes with [`TokenTree::push`], giving each a
/// score (its estimate that the path to the node is accepted). If it samples a node's children
/// i.i.d. from a distribution, it records that distribution with [`TokenTree::set_child_q`] so
/// that sampling verification uses the multi-round rule; otherwise drafts are deterministic and
/// the point-mass rule applies. It may add nothing (the step becomes a plain decoding step).
///
/// After verification, [`Drafter::accept`] gets the new context and how many drafted tokens
/// were accepted (the bonus token, which no drafter proposed, is the context's last token).
pub trait Drafter {
    /// A short name for reports (`ngram`, `draft`, `layerskip`).
    fn name(&self) -> &'static str;

    /// Adds drafted nodes under `tree`'s root (see the trait docs).
    fn propose(&mut self, context: &[u32], plan: &DraftPlan<'_>, tree: &mut TokenTree) -> Result<()>;

    /// Updates the drafter's own state after a verification.
    fn accept(&mut self, context: &[u32], n_accepted: usize) {
        let _ = (context, n_accepted);
    }
}

/// The drafter that never drafts: speculative machinery, plain decoding's output and cost.
#[derive(Debug, Default)]
pub struct NoDrafter;

impl Drafter for NoDrafter {
    fn name(&self) -> &'static str {
        "none"
    }

    fn propose(&mut self, _context: &[u32], _plan: &DraftPlan<'_>, _tree: &mut TokenTree) -> Result<()> {
        Ok(())
    }
}
