//! Adaptive speculation: each step, whether to draft at all, and which prefix of the drafted
//! tree to verify, down to none (a plain decoding step), to maximise tokens per second.
//!
//! Cost: the time of a target forward over `k` tokens, measured when the controller starts for
//! k = 1, 2, 4, 8 (sizes interleaved over two rounds, the fastest of each kept, so that a
//! change of machine load hits all sizes alike), interpolated between and extrapolated beyond. Only ratios
//! `cost(k)/cost(1)` enter the choice of a prefix, so a load that slows everything alike
//! changes no choice. Drafting time is already spent when the controller chooses the prefix,
//! so it does not enter that choice; it enters whether to draft at all.
//!
//! Gain: a drafted node at depth `d` is accepted with probability `α_0 · … · α_{d-1} · score`,
//! where the score is the drafter's own estimate and `α_j` calibrates it online for children
//! of nodes at depth `j`: at each verified node with children, the drafter predicted that one
//! child is accepted with probability `Σ score(child)/score(node)`; `α_j` is the ratio of
//! accepted children to that sum, over a decaying window with a prior of 0.5 (so after a run
//! of rejections and plain steps it drifts back and tries again). One `α` per depth, because
//! drafters are typically calibrated for the first token and overconfident deeper.
//!
//! Whether to draft: drafting steps are measured in units of a plain step *of the same
//! moment*: the whole step's seconds (drafting included) over a fast moving average of recent
//! plain steps' seconds. The moving averages of its tokens and of that cost give the drafting
//! arm's throughput; a plain step's is 1. The better arm is played, the other explored now and
//! then ([`Controller::worth_drafting`]), more often while the two are close, so that the plain
//! reference stays fresh.
//!
//! Exploration: when it has chosen plain steps for `EXPLORE_EVERY` steps in a row while drafts
//! were available, it verifies the single best drafted token once, so that the acceptance
//! estimates (its own and the drafter's) keep learning; this bounds the cost of a useless
//! drafter to one 2-token forward in `EXPLORE_EVERY + 1` steps.
//!
//! The trees it truncates must come in non-increasing score order (`DraftPlan::Dynamic`), so
//! that every prefix is a subtree and the best tree of its size.

use crate::tree::{TokenTree, MAX_TREE_NODES};

/// Cost and acceptance model; see the module docs.
#[derive(Clone, Debug)]
pub struct Controller {
    /// Seconds of a forward over `k` tokens, index k (0 unused); NaN = not measured.
    cost_s: [f64; MAX_TREE_NODES + 1],
    /// Decayed counts behind `α` for children of nodes at depth `d` (index `d`; the last
    /// index also serves deeper nodes).
    accepted: [f64; ALPHA_DEPTHS],
    predicted: [f64; ALPHA_DEPTHS],
    /// Plain steps chosen in a row while drafts were available.
    n_plain_in_row: usize,
    /// Steps that ran the drafter, their cost in plain steps.
    draft_arm: Arm,
    /// Moving average of the seconds of a whole plain step (the measured 1-token forward
    /// until the first plain step).
    plain_step_s: f64,
    n_plain_steps: usize,
    /// Steps in a row on the better arm.
    n_best_in_row: usize,
    /// Moving average of the drafted nodes kept on steps that drafted; NaN = none yet.
    kept: f64,
    /// Moving average of the expected tokens from kept nodes of each level (index = depth),
    /// over steps that drafted that level; NaN = never drafted.
    level_gain: [f64; MAX_LEVELS],
    /// Moving average of the drafting time per level, in plain steps.
    level_cost: f64,
}

/// One step, as [`Controller::record_step`] needs it.
#[derive(Clone, Copy, Debug)]
pub struct StepReport {
    /// Whether the drafter ran.
    pub drafted: bool,
    /// Levels the drafter was asked for (0 when it was not).
    pub levels: usize,
    /// Tokens in the target forward (the root included).
    pub k: usize,
    /// Tokens the step emitted (accepted drafts and the bonus token).
    pub n_tokens: usize,
    /// Seconds of drafting.
    pub draft_s: f64,
    /// Seconds of the target forward.
    pub forward_s: f64,
    /// Seconds of the whole step, drafting included.
    pub step_s: f64,
}

/// Throughput of drafting steps: moving averages of the tokens a step emits and of its cost in
/// plain steps. The ratio of the two averages has far less variance than an average of
/// per-step rates (a drafting step emits 1 or 2 tokens in about the same time).
#[derive(Clone, Debug, Default)]
struct Arm {
    tokens: f64,
    cost: f64,
    n_steps: usize,
}

impl Arm {
    fn record(&mut self, n_tokens: usize, cost: f64) {
        self.n_steps += 1;
        // A plain mean over the first steps, then a moving average: one unlucky early step
        // (a cold cache) must not decide for long.
        let w = (1.0 / self.n_steps as f64).max(RATE_EWMA);
        self.tokens = (1.0 - w) * self.tokens + w * n_tokens as f64;
        self.cost = (1.0 - w) * self.cost + w * cost.max(1e-9);
    }

    /// Tokens per plain step's time; `None` before the first step.
    fn rate(&self) -> Option<f64> {
        (self.n_steps > 0).then(|| self.tokens / self.cost)
    }
}

/// Weight of a new step in the drafting arm's moving averages.
const RATE_EWMA: f64 = 0.1;

/// Nodes asked for before any step has drafted: enough to learn from, small enough that the
/// first drafting step (which also sets that arm's first throughput) is not a 32-node outlier.
const INITIAL_BUDGET: usize = 8;

/// Drafting steps after which the drafting arm's throughput is trusted enough to explore it
/// only every `EXPLORE_EVERY` steps (before: four times as often).
const TRUSTED_SAMPLES: usize = 8;

/// Plain steps in a row after which one drafted token is verified anyway.
pub const EXPLORE_EVERY: usize = 24;

/// Forward sizes timed when a controller starts.
pub const CALIBRATION_SIZES: [usize; 4] = [1, 2, 4, 8];

/// Weight of a new plain step in the plain step time: faster than `RATE_EWMA`, as it is the
/// unit that follows the machine's load.
const PLAIN_EWMA: f64 = 0.3;

/// Levels the depth decision tracks (trees are asked for at most one fewer levels).
const MAX_LEVELS: usize = 17;

/// Every this many drafting steps, one level deeper than the kept levels justify is drafted,
/// so that a level's gain is measured again.
const LEVEL_PROBE_EVERY: usize = 16;

/// Depths with their own `α` (deeper nodes share the last).
const ALPHA_DEPTHS: usize = 4;

/// Weight of the prior (`α = 0.5`) in pseudo-observations.
const PRIOR_WEIGHT: f64 = 1.0;
/// Per-step decay of the acceptance evidence.
const DECAY: f64 = 0.97;

impl Controller {
    /// A controller from measured forward times: `(k, seconds)` pairs, one of them for k = 1.
    /// Sizes out of range are ignored; a larger forward is never taken to be cheaper than a
    /// smaller one.
    pub fn new(costs: &[(usize, f64)]) -> Self {
        let mut sorted: Vec<(usize, f64)> = costs
            .iter()
            .copied()
            .filter(|&(k, s)| (1..=MAX_TREE_NODES).contains(&k) && s.is_finite() && s > 0.0)
            .collect();
        sorted.sort_by_key(|&(k, _)| k);
        let mut cost_s = [f64::NAN; MAX_TREE_NODES + 1];
        let mut floor = 0.0f64;
        for (k, s) in sorted {
            floor = floor.max(s);
            cost_s[k] = floor;
        }
        if cost_s[1].is_nan() {
            // Without a 1-token time the ratios are relative to the smallest size timed.
            cost_s[1] = (2..=MAX_TREE_NODES)
                .map(|k| cost_s[k])
                .find(|c| !c.is_nan())
                .unwrap_or(1.0);
        }
        Self {
            cost_s,
            accepted: [0.0; ALPHA_DEPTHS],
            predicted: [0.0; ALPHA_DEPTHS],
            n_plain_in_row: 0,
            draft_arm: Arm::default(),
            plain_step_s: cost_s[1],
            n_plain_steps: 0,
            n_best_in_row: 0,
            kept: f64::NAN,
            level_gain: [f64::NAN; MAX_LEVELS],
            level_cost: 0.0,
        }
    }

    /// How many nodes to ask the drafter for: about twice what recent steps kept (at least 1,
    /// at most `max`; `INITIAL_BUDGET` until a step has drafted). Drafting a 32-node tree to keep 1 node
    /// would cost a drafter like EAGLE, whose cost grows with the tree, more than the kept
    /// draft gains.
    pub fn draft_budget(&self, max: usize) -> usize {
        if self.kept.is_nan() {
            return INITIAL_BUDGET.clamp(1, max.max(1));
        }
        ((2.0 * self.kept).round() as usize + 1).clamp(1, max.max(1))
    }

    /// How many levels to ask the drafter for: one more as long as the next level's kept
    /// nodes have been worth what a level costs to draft (a drafter like EAGLE pays a forward
    /// per level, so levels nobody keeps are the costliest part of a tree). A level never
    /// measured is tried, and every `LEVEL_PROBE_EVERY`-th drafting step probes one deeper.
    pub fn draft_depth(&self, max: usize) -> usize {
        let max = max.clamp(1, MAX_LEVELS - 1);
        if self.kept.is_nan() {
            return INITIAL_BUDGET.div_ceil(2).min(max);
        }
        let mut depth = 1;
        while depth < max {
            let gain = self.level_gain[depth + 1];
            if gain.is_nan() {
                depth += 1;
                break;
            }
            if gain < self.level_cost {
                break;
            }
            depth += 1;
        }
        let probe = self.draft_arm.n_steps % LEVEL_PROBE_EVERY == LEVEL_PROBE_EVERY - 1;
        (depth + usize::from(probe)).min(max)
    }

    /// Records what [`Controller::choose`] kept of a drafting step's tree: `keep` nodes (root
    /// included) of `tree`, before truncation.
    pub fn record_choice(&mut self, tree: &TokenTree, keep: usize) {
        let n_kept = keep.saturating_sub(1);
        self.kept = if self.kept.is_nan() {
            n_kept as f64
        } else {
            (1.0 - RATE_EWMA) * self.kept + RATE_EWMA * n_kept as f64
        };
        // Expected tokens from the kept nodes of each drafted level (0 for levels drafted but
        // not kept).
        let mut gain = [0.0f64; MAX_LEVELS];
        let mut deepest = 0;
        for i in 1..tree.len() {
            let depth = tree.depths()[i].min(MAX_LEVELS - 1);
            deepest = deepest.max(depth);
            if i < keep {
                gain[depth] += self.acceptance(tree, i);
            }
        }
        for (g, &new) in self.level_gain[1..=deepest].iter_mut().zip(&gain[1..]) {
            *g = if g.is_nan() {
                new
            } else {
                (1.0 - RATE_EWMA) * *g + RATE_EWMA * new
            };
        }
    }

    /// The calibration factor `α` for a child of a node at depth `parent_depth` (0 = the
    /// root). Each depth has its own: a drafter's scores are often well calibrated for the
    /// first token and overconfident deeper.
    pub fn alpha(&self, parent_depth: usize) -> f64 {
        let d = parent_depth.min(ALPHA_DEPTHS - 1);
        ((self.accepted[d] + 0.5 * PRIOR_WEIGHT) / (self.predicted[d] + PRIOR_WEIGHT))
            .clamp(0.02, 1.0)
    }

    /// Estimated probability that `tree`'s node `i` is accepted: its score calibrated by the
    /// `α` of every depth above it.
    fn acceptance(&self, tree: &TokenTree, i: usize) -> f64 {
        let alpha: f64 = (0..tree.depths()[i]).map(|d| self.alpha(d)).product();
        alpha * tree.scores()[i] as f64
    }

    /// Estimated seconds of a forward over `k` tokens: the measurement for `k` if any, else
    /// linear between the nearest measured sizes (extrapolated from the two largest).
    pub fn cost(&self, k: usize) -> f64 {
        let k = k.clamp(1, MAX_TREE_NODES);
        if !self.cost_s[k].is_nan() {
            return self.cost_s[k];
        }
        let below = (1..k)
            .rev()
            .find(|&i| !self.cost_s[i].is_nan())
            .expect("cost of 1 token is known");
        match (k + 1..=MAX_TREE_NODES).find(|&i| !self.cost_s[i].is_nan()) {
            Some(above) => {
                let t = (k - below) as f64 / (above - below) as f64;
                self.cost_s[below] + t * (self.cost_s[above] - self.cost_s[below])
            }
            None => {
                let lower = (1..below).rev().find(|&i| !self.cost_s[i].is_nan());
                match lower {
                    Some(lo) => {
                        let slope =
                            ((self.cost_s[below] - self.cost_s[lo]) / (below - lo) as f64).max(0.0);
                        self.cost_s[below] + slope * (k - below) as f64
                    }
                    None => self.cost_s[below] * k as f64,
                }
            }
        }
    }

    /// Nodes to keep (root included, at least 1) of a best-first tree.
    pub fn choose(&self, tree: &TokenTree) -> usize {
        let mut gain = 1.0;
        let mut best = (1.0 / (self.cost(1)), 1);
        for i in 1..tree.len() {
            gain += self.acceptance(tree, i);
            let rate = gain / self.cost(i + 1);
            if rate > best.0 {
                best = (rate, i + 1);
            }
        }
        if best.1 == 1 && tree.len() > 1 && self.n_plain_in_row >= EXPLORE_EVERY {
            return 2;
        }
        tracing::trace!(
            nodes = tree.len(),
            keep = best.1,
            first = (tree.len() > 1).then(|| self.acceptance(tree, 1)),
            cost2 = self.cost(2) / self.cost(1),
            "choose"
        );
        best.1
    }

    /// Whether to run the drafter this step. Two arms are compared by measured throughput:
    /// steps that drafted (moving averages of the tokens emitted and of the whole step's time,
    /// drafting included, in units of the current plain step time) and plain steps (1 token per
    /// unit). Measuring drafting steps against a plain step time that follows the machine's
    /// load keeps the comparison fair when the load changes between the arms' samples. The
    /// better arm is played, the other once every `EXPLORE_EVERY / 3` steps (`4 *
    /// EXPLORE_EVERY` when it is clearly worse, `EXPLORE_EVERY / 4` while drafting has fewer
    /// than `TRUSTED_SAMPLES` steps); drafting is tried first. This catches drafters whose own
    /// cost the acceptance model cannot see (a LayerSkip draft forward that proposes nothing).
    pub fn worth_drafting(&mut self) -> bool {
        // Plain steps run at 1 token per plain step's time, by the unit's definition.
        let (best, interval) = match self.draft_arm.rate() {
            None => (true, EXPLORE_EVERY),
            // Few samples: explore often, the estimate is mostly noise.
            Some(d) if self.draft_arm.n_steps < TRUSTED_SAMPLES => (d >= 1.0, EXPLORE_EVERY / 4),
            // A clearly worse arm (below 80% of the better) is revisited 4x less often.
            Some(d) if d.min(1.0) < 0.8 * d.max(1.0) => (d >= 1.0, 4 * EXPLORE_EVERY),
            // Close arms: the plain reference must stay fresh for the comparison to hold.
            Some(d) => (d >= 1.0, EXPLORE_EVERY / 3),
        };
        let choice = if self.n_best_in_row >= interval {
            !best
        } else {
            best
        };
        tracing::trace!(
            rate = self.draft_arm.rate(),
            n = self.draft_arm.n_steps,
            choice,
            "worth_drafting"
        );
        self.n_best_in_row = if choice == best {
            self.n_best_in_row + 1
        } else {
            0
        };
        choice
    }

    /// Records a whole step's times and tokens (see [`StepReport`]).
    pub fn record_step(&mut self, step: &StepReport) {
        if !step.drafted {
            self.n_plain_steps += 1;
            let w = (1.0 / self.n_plain_steps as f64).max(PLAIN_EWMA);
            self.plain_step_s = (1.0 - w) * self.plain_step_s + w * step.step_s;
            return;
        }
        // Seconds to plain steps of this moment.
        let unit = 1.0 / self.plain_step_s.max(1e-9);
        self.draft_arm.record(step.n_tokens, step.step_s * unit);
        if step.levels > 0 {
            let per_level = step.draft_s * unit / step.levels as f64;
            self.level_cost = if self.draft_arm.n_steps == 1 {
                per_level
            } else {
                (1.0 - RATE_EWMA) * self.level_cost + RATE_EWMA * per_level
            };
        }
    }

    /// Records a verification: the tree verified and the accepted path (node indices from the
    /// root).
    pub fn observe(&mut self, tree: &TokenTree, path: &[usize]) {
        self.n_plain_in_row = if tree.len() > 1 {
            0
        } else {
            self.n_plain_in_row + 1
        };
        self.accepted.iter_mut().for_each(|a| *a *= DECAY);
        self.predicted.iter_mut().for_each(|p| *p *= DECAY);
        for (step, &node) in path.iter().enumerate() {
            let parent_score = tree.scores()[node].max(1e-6) as f64;
            let predicted: f64 = tree
                .children(node)
                .map(|c| tree.scores()[c] as f64 / parent_score)
                .sum();
            if predicted > 0.0 {
                let d = step.min(ALPHA_DEPTHS - 1);
                self.predicted[d] += predicted.min(1.0);
                self.accepted[d] += if step + 1 < path.len() { 1.0 } else { 0.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step that verified `k` tokens in a `forward_s` forward and took `step_s` in all, the
    /// rest being one level of drafting when it drafted.
    fn step(drafted: bool, k: usize, n_tokens: usize, forward_s: f64, step_s: f64) -> StepReport {
        StepReport {
            drafted,
            levels: usize::from(drafted),
            k,
            n_tokens,
            draft_s: step_s - forward_s,
            forward_s,
            step_s,
        }
    }

    /// A chain whose nodes have cumulative scores `scores`.
    fn chain_scored(scores: &[f32]) -> TokenTree {
        let mut t = TokenTree::new();
        t.reset(0);
        for (i, &s) in scores.iter().enumerate() {
            t.push(i, 1, s).unwrap();
        }
        t
    }

    fn chain(n: usize, score: f32) -> TokenTree {
        let mut t = TokenTree::new();
        t.reset(0);
        for i in 0..n {
            t.push(i, 1, score).unwrap();
        }
        t
    }

    #[test]
    fn cheap_verification_and_good_drafts_speculate_bad_drafts_do_not() {
        // A 16-token forward costs 1.5 single-token forwards.
        let mut c = Controller::new(&[(1, 1.0), (16, 1.5)]);
        let t = chain(8, 1.0);
        assert!(c.choose(&t) > 1);
        // Every draft rejected, many times: alpha falls and the controller stops drafting.
        for _ in 0..200 {
            c.observe(&t, &[0]);
        }
        assert!(c.alpha(0) < 0.05, "alpha {}", c.alpha(0));
        assert_eq!(c.choose(&t), 1);
        // After a run of plain steps it tries one drafted token, then goes back to plain.
        let root = chain(0, 1.0);
        for _ in 0..EXPLORE_EVERY {
            c.observe(&root, &[0]);
        }
        assert_eq!(c.choose(&t), 2);
        c.observe(&chain(1, 1.0), &[0]);
        assert_eq!(c.choose(&t), 1);
    }

    #[test]
    fn the_slower_arm_is_played_only_to_explore() {
        let mut c = Controller::new(&[(1, 1.0), (16, 1.5)]);
        let mut n_drafted = 0;
        for _ in 0..400 {
            let drafted = c.worth_drafting();
            // Drafting steps emit 1 token in 2 s, plain steps 1 token in 1 s.
            c.record_step(&if drafted {
                step(true, 2, 1, 1.0, 2.0)
            } else {
                step(false, 1, 1, 1.0, 1.0)
            });
            n_drafted += usize::from(drafted);
        }
        // Early exploration until the drafting arm is trusted, then once in 4 * EXPLORE_EVERY.
        let bound = TRUSTED_SAMPLES + 400 / (4 * EXPLORE_EVERY) + 2;
        assert!(n_drafted <= bound, "drafted {n_drafted} times");
        // And the other way round.
        let mut c = Controller::new(&[(1, 1.0), (16, 1.5)]);
        let mut n_plain = 0;
        for _ in 0..400 {
            let drafted = c.worth_drafting();
            c.record_step(&if drafted {
                step(true, 2, 3, 1.0, 1.1)
            } else {
                step(false, 1, 1, 1.0, 1.0)
            });
            n_plain += usize::from(!drafted);
        }
        assert!(n_plain <= bound, "plain {n_plain} times");
    }

    #[test]
    fn a_change_of_machine_load_is_absorbed() {
        // Drafting steps emit 1.5 tokens in 1.25 plain steps' time, then the machine gets 3x
        // slower for everything: once the plain reference has caught up (at the next plain
        // steps), the drafting arm's throughput is what it was, and drafting goes on.
        let mut c = Controller::new(&[(1, 1.0), (16, 1.5)]);
        let (mut rates, mut n_drafted) = (Vec::new(), [0usize; 2]);
        for i in 0..600 {
            let slow = if i < 300 { 1.0 } else { 3.0 };
            let drafted = c.worth_drafting();
            let report = if drafted {
                step(true, 2, 1 + i % 2, slow, 1.25 * slow)
            } else {
                step(false, 1, 1, slow, slow)
            };
            c.record_step(&report);
            n_drafted[i / 300] += usize::from(drafted);
            rates.push(c.draft_arm.rate().unwrap());
        }
        for r in [rates[299], rates[599]] {
            assert!((r - 1.2).abs() < 0.1, "rate {r}, want 1.2");
        }
        // Plain steps only to explore (more often while the drafting arm has few samples), and
        // for a while after the change, until the stale reference is refreshed.
        assert!(n_drafted[0] > 250 && n_drafted[1] > 200, "{n_drafted:?}");
    }

    #[test]
    fn calibration_is_monotone_and_needs_no_fixed_sizes() {
        // A noisy 4-token time below the 2-token one is raised to it; sizes out of range go.
        let c = Controller::new(&[(2, 1.2), (1, 1.0), (4, 1.1), (0, 9.0), (999, 9.0)]);
        assert_eq!(c.cost(4), 1.2);
        assert_eq!(c.cost(1), 1.0);
        // No 1-token time: the smallest size stands in.
        let c = Controller::new(&[(8, 2.0)]);
        assert_eq!(c.cost(1), 2.0);
    }

    #[test]
    fn the_budget_follows_what_is_kept() {
        let mut c = Controller::new(&[(1, 1.0), (16, 1.5)]);
        assert_eq!(c.draft_budget(32), INITIAL_BUDGET);
        let tree = chain(24, 0.5);
        for _ in 0..100 {
            c.record_choice(&tree, 2);
        }
        assert_eq!(c.draft_budget(32), 3);
        for _ in 0..100 {
            c.record_choice(&tree, 1);
        }
        assert_eq!(c.draft_budget(32), 1);
        for _ in 0..100 {
            c.record_choice(&tree, 21);
        }
        assert_eq!(c.draft_budget(32), 32);
    }

    #[test]
    fn levels_are_drafted_while_their_kept_nodes_pay_for_them() {
        let mut c = Controller::new(&[(1, 1.0), (16, 1.5)]);
        assert_eq!(c.draft_depth(16), INITIAL_BUDGET.div_ceil(2));
        // One drafting step: 3 levels in 0.3 plain steps, so 0.1 per level.
        let forward_s = c.cost(4);
        c.record_step(&StepReport {
            drafted: true,
            levels: 3,
            k: 4,
            n_tokens: 1,
            draft_s: 0.3,
            forward_s,
            step_s: forward_s + 0.3,
        });
        // Level 2 is worth 0.5 · 0.5 · 0.1 = 0.025 tokens (prior α 0.5): not its cost.
        for _ in 0..100 {
            c.record_choice(&chain_scored(&[0.6, 0.1, 0.05]), 4);
        }
        assert_eq!(c.draft_depth(16), 1);
        // Level 2 worth 0.125, level 3 0.5^3 · 0.3 = 0.0375: two levels.
        for _ in 0..100 {
            c.record_choice(&chain_scored(&[0.9, 0.5, 0.3]), 4);
        }
        assert_eq!(c.draft_depth(16), 2);
        // A level never drafted is tried.
        let mut c = Controller::new(&[(1, 1.0), (16, 1.5)]);
        c.record_choice(&chain_scored(&[0.9]), 2);
        assert_eq!(c.draft_depth(16), 2);
    }

    #[test]
    fn cost_interpolates() {
        let c = Controller::new(&[(1, 1.0), (16, 2.5)]);
        assert!((c.cost(6) - 1.5).abs() < 1e-9);
        assert!((c.cost(31) - 4.0).abs() < 1e-9);
    }
}
