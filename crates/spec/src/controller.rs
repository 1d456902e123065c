//! Adaptive speculation: each step, keep the prefix of the drafted tree that maximises expected
//! tokens per second, down to none (a plain decoding step).
//!
//! Cost: the time of a target forward over `k` tokens, measured for k = 1 and k = 16 when the
//! controller starts and then refined online from every verification forward (a moving average
//! per `k`). Drafting time is already spent when the controller chooses, so it does not enter
//! the choice; it is tracked for reports ([`Controller::draft_s`]).
//!
//! Gain: a drafted node is accepted with probability `α^depth · score`, where the score is the
//! drafter's own estimate and `α` calibrates it online: at each verified node with children,
//! the drafter predicted that one child is accepted with probability `Σ score(child)/score(node)`;
//! `α` is the ratio of accepted children to that sum, over a decaying window with a prior
//! of 0.5 (so after a run of rejections and plain steps it drifts back and tries again).
//!
//! Exploration: when it has chosen plain steps for `EXPLORE_EVERY` steps in a row while drafts
//! were available, it verifies the single best drafted token once, so that the acceptance
//! estimates (its own and the drafter's) keep learning; this bounds the cost of a useless
//! drafter to one 2-token forward in `EXPLORE_EVERY + 1` steps.
//!
//! The trees it truncates must come in non-increasing score order (`DraftPlan::Dynamic`), so
//! that every prefix is a subtree and the best tree of its size.

use crate::tree::{TokenTree, MAX_TREE_NODES};

/// Online cost and acceptance model; see the module docs.
#[derive(Clone, Debug)]
pub struct Controller {
    /// Seconds of a forward over `k` tokens, index k (0 unused); NaN = not measured.
    cost_s: [f64; MAX_TREE_NODES + 1],
    /// Moving average of the drafting time per step.
    draft_s: f64,
    accepted: f64,
    predicted: f64,
    /// Plain steps chosen in a row while drafts were available.
    n_plain_in_row: usize,
    /// Throughput of steps that ran the drafter, and of those that did not.
    draft_rate: Option<f64>,
    plain_rate: Option<f64>,
    /// Steps in a row on the better arm.
    n_best_in_row: usize,
    /// Moving average of the drafted nodes kept on steps that drafted; NaN = none yet.
    kept: f64,
}

/// Weight of a new step in the per-arm throughput averages.
const RATE_EWMA: f64 = 0.1;

/// Plain steps in a row after which one drafted token is verified anyway.
pub const EXPLORE_EVERY: usize = 24;

/// Weight of the prior (`α = 0.5`) in pseudo-observations.
const PRIOR_WEIGHT: f64 = 1.0;
/// Per-step decay of the acceptance evidence.
const DECAY: f64 = 0.97;
/// Weight of a new timing in the per-k moving average.
const COST_EWMA: f64 = 0.2;

impl Controller {
    /// A controller from the measured forward times for 1 and 16 tokens (seconds).
    pub fn new(cost_1_s: f64, cost_16_s: f64) -> Self {
        let mut cost_s = [f64::NAN; MAX_TREE_NODES + 1];
        cost_s[1] = cost_1_s;
        cost_s[16] = cost_16_s.max(cost_1_s);
        Self {
            cost_s,
            draft_s: 0.0,
            accepted: 0.0,
            predicted: 0.0,
            n_plain_in_row: 0,
            draft_rate: None,
            plain_rate: None,
            n_best_in_row: 0,
            kept: f64::NAN,
        }
    }

    /// How many nodes to ask the drafter for: about twice what recent steps kept (at least 1,
    /// at most `max`; `max` until a step has drafted). Drafting a 32-node tree to keep 1 node
    /// would cost a drafter like EAGLE, whose cost grows with the tree, more than the kept
    /// draft gains.
    pub fn draft_budget(&self, max: usize) -> usize {
        if self.kept.is_nan() {
            return max.max(1);
        }
        ((2.0 * self.kept).round() as usize + 1).clamp(1, max.max(1))
    }

    /// Records how many drafted nodes a drafting step kept after [`Controller::choose`].
    pub fn record_kept(&mut self, n_kept: usize) {
        self.kept = if self.kept.is_nan() {
            n_kept as f64
        } else {
            (1.0 - RATE_EWMA) * self.kept + RATE_EWMA * n_kept as f64
        };
    }

    /// The calibration factor `α`.
    pub fn alpha(&self) -> f64 {
        ((self.accepted + 0.5 * PRIOR_WEIGHT) / (self.predicted + PRIOR_WEIGHT)).clamp(0.02, 1.0)
    }

    /// Moving average of the drafting time of steps that drafted.
    pub fn draft_s(&self) -> f64 {
        self.draft_s
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
        let alpha = self.alpha();
        let mut gain = 1.0;
        let mut best = (1.0 / (self.cost(1)), 1);
        for i in 1..tree.len() {
            gain += alpha.powi(tree.depths()[i] as i32) * tree.scores()[i] as f64;
            let rate = gain / self.cost(i + 1);
            if rate > best.0 {
                best = (rate, i + 1);
            }
        }
        if best.1 == 1 && tree.len() > 1 && self.n_plain_in_row >= EXPLORE_EVERY {
            return 2;
        }
        best.1
    }

    /// Whether to run the drafter this step. Two arms are compared by their measured
    /// throughput (tokens per second of whole steps, drafting included, as moving averages):
    /// steps that drafted and steps that did not. The better arm is played, the other once
    /// every `EXPLORE_EVERY` steps (`4 * EXPLORE_EVERY` when it is clearly worse); each is
    /// tried once first. This catches drafters whose own
    /// cost the acceptance model cannot see (a LayerSkip draft forward that proposes nothing).
    pub fn worth_drafting(&mut self) -> bool {
        let (best, interval) = match (self.draft_rate, self.plain_rate) {
            (None, _) => (true, EXPLORE_EVERY),
            (Some(_), None) => (false, EXPLORE_EVERY),
            // A clearly worse arm (below 80% of the better) is revisited 4x less often.
            (Some(d), Some(p)) if d.min(p) < 0.8 * d.max(p) => (d >= p, 4 * EXPLORE_EVERY),
            (Some(d), Some(p)) => (d >= p, EXPLORE_EVERY),
        };
        let choice = if self.n_best_in_row >= interval {
            !best
        } else {
            best
        };
        self.n_best_in_row = if choice == best {
            self.n_best_in_row + 1
        } else {
            0
        };
        choice
    }

    /// Records a whole step: whether the drafter ran, tokens emitted, seconds taken.
    pub fn record_step(&mut self, drafted: bool, n_tokens: usize, step_s: f64) {
        let rate = n_tokens as f64 / step_s.max(1e-9);
        let arm = if drafted {
            &mut self.draft_rate
        } else {
            &mut self.plain_rate
        };
        *arm = Some(match *arm {
            None => rate,
            Some(r) => (1.0 - RATE_EWMA) * r + RATE_EWMA * rate,
        });
    }

    /// Records a verification: the tree verified, the accepted path (node indices from the
    /// root), and the seconds the forward and the drafting took.
    pub fn observe(&mut self, tree: &TokenTree, path: &[usize], forward_s: f64, draft_s: f64) {
        let k = tree.len();
        self.n_plain_in_row = if k > 1 { 0 } else { self.n_plain_in_row + 1 };
        self.cost_s[k] = if self.cost_s[k].is_nan() {
            forward_s
        } else {
            (1.0 - COST_EWMA) * self.cost_s[k] + COST_EWMA * forward_s
        };
        if k > 1 {
            self.draft_s = (1.0 - COST_EWMA) * self.draft_s + COST_EWMA * draft_s;
        }
        self.accepted *= DECAY;
        self.predicted *= DECAY;
        for (step, &node) in path.iter().enumerate() {
            let parent_score = tree.scores()[node].max(1e-6) as f64;
            let predicted: f64 = tree
                .children(node)
                .map(|c| tree.scores()[c] as f64 / parent_score)
                .sum();
            if predicted > 0.0 {
                self.predicted += predicted.min(1.0);
                self.accepted += if step + 1 < path.len() { 1.0 } else { 0.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut c = Controller::new(1.0, 1.5);
        let t = chain(8, 1.0);
        assert!(c.choose(&t) > 1);
        // Every draft rejected, many times: alpha falls and the controller stops drafting.
        for _ in 0..200 {
            c.observe(&t, &[0], 1.2, 0.0);
        }
        assert!(c.alpha() < 0.05, "alpha {}", c.alpha());
        assert_eq!(c.choose(&t), 1);
        // After a run of plain steps it tries one drafted token, then goes back to plain.
        let root = chain(0, 1.0);
        for _ in 0..EXPLORE_EVERY {
            c.observe(&root, &[0], 1.0, 0.0);
        }
        assert_eq!(c.choose(&t), 2);
        c.observe(&chain(1, 1.0), &[0], 1.2, 0.0);
        assert_eq!(c.choose(&t), 1);
    }

    #[test]
    fn the_slower_arm_is_played_only_to_explore() {
        let mut c = Controller::new(1.0, 1.5);
        let mut n_drafted = 0;
        for _ in 0..400 {
            let drafted = c.worth_drafting();
            // Drafting steps emit 1 token in 2 s, plain steps 1 token in 1 s.
            c.record_step(drafted, 1, if drafted { 2.0 } else { 1.0 });
            n_drafted += usize::from(drafted);
        }
        assert!(
            n_drafted <= 400 / (4 * EXPLORE_EVERY) + 2,
            "drafted {n_drafted} times"
        );
        // And the other way round.
        let mut c = Controller::new(1.0, 1.5);
        let mut n_plain = 0;
        for _ in 0..400 {
            let drafted = c.worth_drafting();
            c.record_step(drafted, if drafted { 3 } else { 1 }, 1.0);
            n_plain += usize::from(!drafted);
        }
        assert!(
            n_plain <= 400 / (4 * EXPLORE_EVERY) + 2,
            "plain {n_plain} times"
        );
    }

    #[test]
    fn the_budget_follows_what_is_kept() {
        let mut c = Controller::new(1.0, 1.5);
        assert_eq!(c.draft_budget(32), 32);
        for _ in 0..100 {
            c.record_kept(1);
        }
        assert_eq!(c.draft_budget(32), 3);
        for _ in 0..100 {
            c.record_kept(0);
        }
        assert_eq!(c.draft_budget(32), 1);
        for _ in 0..100 {
            c.record_kept(20);
        }
        assert_eq!(c.draft_budget(32), 32);
    }

    #[test]
    fn cost_interpolates() {
        let c = Controller::new(1.0, 2.5);
        assert!((c.cost(6) - 1.5).abs() < 1e-9);
        assert!((c.cost(31) - 4.0).abs() < 1e-9);
    }
}
