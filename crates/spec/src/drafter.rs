//! The drafter interface (DESIGN.md §2): propose a token tree from the context, then hear
//! what the target accepted.

use crate::tree::{TokenTree, TreeShape};
use crate::Result;
use peregrine_model::Workspace;

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
    fn propose(
        &mut self,
        context: &[u32],
        plan: &DraftPlan<'_>,
        tree: &mut TokenTree,
    ) -> Result<()>;

    /// `Some(E)` selects self-speculation through the target's first `E` layers: the engine
    /// then drafts a chain itself, with layers `0..E` and the final norm and LM head, in the
    /// target's own KV cache, keeping each drafted position's hidden state entering layer
    /// `E`; verification resumes from layer `E` over the chain, so layers `0..E` are never
    /// recomputed. [`Drafter::propose`] is not called. Chains stop when the draft's cumulative
    /// probability falls below [`Drafter::min_score`].
    fn shared_exit_layer(&self) -> Option<usize> {
        None
    }

    /// For self-speculation: stop a drafted chain once its cumulative draft probability is
    /// below this.
    fn min_score(&self) -> f32 {
        0.0
    }

    /// Updates the drafter's own state after a verification.
    fn accept(&mut self, context: &[u32], n_accepted: usize) {
        let _ = (context, n_accepted);
    }

    /// Target layers whose input residual stream the drafter reads at every context position
    /// (`n_layers` = the output of the last layer, before the final norm): EAGLE heads. The
    /// engine then taps them in the prefill and in every verification forward and hands the
    /// rows over with [`Drafter::observe_features`]. Empty (the default): none.
    fn feature_layers(&self) -> &[usize] {
        &[]
    }

    /// Called before a prompt is prefilled, for drafters with [`Drafter::feature_layers`]:
    /// the drafter keeps its state for the longest prefix of `prompt` it can and returns that
    /// prefix's length. The engine recomputes the target from at most there, so that features
    /// reach the drafter for every later position.
    fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let _ = prompt;
        usize::MAX
    }

    /// Target features of context positions `pos..pos + rows.len()`: for position `pos + i`,
    /// row `rows[i]` of the last forward's taps (`ws.tap(j)` holds layer
    /// `feature_layers()[j]`). In the prefill the rows are the computed prompt tokens; after a
    /// verification, the root and the accepted path. Positions from `pos` on replace any the
    /// drafter held.
    fn observe_features(&mut self, ws: &Workspace, rows: &[usize], pos: usize) -> Result<()> {
        let _ = (ws, rows, pos);
        Ok(())
    }

    /// Does the work a drafter deferred while the engine was not drafting (an EAGLE head's
    /// catch-up over the features of plain steps), for `context` (root last), leaving what
    /// [`Drafter::propose`] needs for itself. The engine calls it before a drafting step that
    /// follows plain steps and keeps its time out of that step's, so the controller prices a
    /// draft by the drafting alone. The default does nothing.
    fn catch_up(&mut self, context: &[u32]) -> Result<()> {
        let _ = context;
        Ok(())
    }
}

/// The drafter that never drafts: speculative machinery, plain decoding's output and cost.
#[derive(Debug, Default)]
pub struct NoDrafter;

impl Drafter for NoDrafter {
    fn name(&self) -> &'static str {
        "none"
    }

    fn propose(
        &mut self,
        _context: &[u32],
        _plan: &DraftPlan<'_>,
        _tree: &mut TokenTree,
    ) -> Result<()> {
        Ok(())
    }
}

/// LayerSkip self-speculation: the target's first `exit_layer` layers draft, the rest verify
/// (see [`Drafter::shared_exit_layer`]). Holds only settings; the engine does the work.
#[derive(Debug, Clone)]
pub struct LayerSkipDrafter {
    exit_layer: usize,
    min_score: f32,
}

impl LayerSkipDrafter {
    /// Drafts with layers `0..exit_layer` of a model of `n_layers` layers (`1 <= exit_layer <
    /// n_layers`); chains stop below cumulative draft probability `min_score`.
    pub fn new(exit_layer: usize, n_layers: usize, min_score: f32) -> crate::Result<Self> {
        if exit_layer == 0 || exit_layer >= n_layers {
            return Err(crate::Error::ExitLayer {
                exit_layer,
                n_layers,
            });
        }
        Ok(Self {
            exit_layer,
            min_score,
        })
    }
}

impl Drafter for LayerSkipDrafter {
    fn name(&self) -> &'static str {
        "layerskip"
    }

    fn propose(
        &mut self,
        _context: &[u32],
        _plan: &DraftPlan<'_>,
        _tree: &mut TokenTree,
    ) -> Result<()> {
        Ok(())
    }

    fn shared_exit_layer(&self) -> Option<usize> {
        Some(self.exit_layer)
    }

    fn min_score(&self) -> f32 {
        self.min_score
    }
}
