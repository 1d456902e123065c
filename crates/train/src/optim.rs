//! AdamW, the learning-rate schedule, and global-norm gradient clipping.

use crate::error::{Error, Result};
use crate::params::{ParamId, ParamStore};

/// AdamW hyper-parameters (learning rate comes from [`LrSchedule`] per step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Added to `√v̂` in the denominator.
    pub eps: f32,
    /// Decoupled weight decay, applied as `p ← p · (1 − lr · weight_decay)` to parameters of
    /// two dimensions (matrices) only; vectors (norm weights, biases) are not decayed.
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    /// torch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    fn validate(&self) -> Result<()> {
        let ok = (0.0..1.0).contains(&self.beta1)
            && (0.0..1.0).contains(&self.beta2)
            && self.eps.is_finite()
            && self.eps >= 0.0
            && self.weight_decay.is_finite()
            && self.weight_decay >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Invalid {
                what: "AdamW config",
                reason: format!("{self:?}: betas must be in [0, 1), eps and weight decay ≥ 0"),
            })
        }
    }
}

/// AdamW (Loshchilov & Hutter) with bias correction, in torch's update order:
/// `p ← p·(1 − lr·wd)`, `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`,
/// `p ← p − lr/(1−β₁ᵗ) · m / (√v/√(1−β₂ᵗ) + eps)`. Frozen parameters are skipped.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    step: u64,
}

impl AdamW {
    /// Zeroed moments for every parameter of `store`.
    pub fn new(config: AdamWConfig, store: &ParamStore) -> Result<AdamW> {
        config.validate()?;
        let zeros = |id: ParamId| vec![0f32; store.value(id).data().len()];
        Ok(AdamW {
            config,
            m: store.ids().map(zeros).collect(),
            v: store.ids().map(zeros).collect(),
            step: 0,
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Number of updates done (the next update is number `n_steps() + 1` for bias correction).
    pub fn n_steps(&self) -> u64 {
        self.step
    }

    /// First and second moments of `id`.
    pub fn moments(&self, id: ParamId) -> (&[f32], &[f32]) {
        (&self.m[id.0], &self.v[id.0])
    }

    /// Rebuilds the state from saved parts (checkpoint resume).
    pub(crate) fn from_parts(
        config: AdamWConfig,
        m: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        step: u64,
    ) -> Result<AdamW> {
        config.validate()?;
        Ok(AdamW { config, m, v, step })
    }

    /// One update of every trainable parameter of `store` from its accumulated gradient, with
    /// learning rate `lr`. Gradients are left as they are (zero them before the next batch).
    pub fn step(&mut self, store: &mut ParamStore, lr: f32) -> Result<()> {
        if store.len() != self.m.len() {
            return Err(Error::Invalid {
                what: "AdamW step",
                reason: format!(
                    "optimizer built for {} parameters, store has {}",
                    self.m.len(),
                    store.len()
                ),
            });
        }
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Invalid {
                what: "learning rate",
                reason: format!("{lr}"),
            });
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - (c.beta1 as f64).powi(t);
        let bc2 = 1.0 - (c.beta2 as f64).powi(t);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let ids: Vec<ParamId> = store.ids().collect();
        for id in ids {
            if !store.trainable(id) {
                continue;
            }
            let decay = if store.value(id).shape().dims().len() == 2 {
                1.0 - lr * c.weight_decay
            } else {
                1.0
            };
            let (m, v) = (&mut self.m[id.0], &mut self.v[id.0]);
            let (p, g) = store.value_and_grad_mut(id);
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p *= decay;
                *m += (g - *m) * (1.0 - c.beta1);
                *v = *v * c.beta2 + (1.0 - c.beta2) * g * g;
                let denom = v.sqrt() / bc2_sqrt + c.eps;
                *p -= step_size * *m / denom;
            }
        }
        Ok(())
    }
}

/// Linear warm-up to `peak` over `warmup_steps`, then cosine decay to `floor` at
/// `total_steps`, then `floor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    /// Learning rate at the end of warm-up.
    pub peak: f32,
    /// Floor reached at `total_steps`.
    pub floor: f32,
    /// Steps of linear warm-up (0 = none).
    pub warmup_steps: u64,
    /// Total steps of the run.
    pub total_steps: u64,
}

impl LrSchedule {
    /// The learning rate of update `step` (0-based): `peak·(step+1)/warmup` during warm-up,
    /// then `floor + (peak − floor)·(1 + cos(π·progress))/2` with progress from 0 at the end of
    /// warm-up to 1 at `total_steps`.
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup_steps {
            return self.peak * (step + 1) as f32 / self.warmup_steps as f32;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        (self.floor as f64 + (self.peak - self.floor) as f64 * cos) as f32
    }
}

/// Scales all trainable gradients so that their global L2 norm is at most `max_norm` (when
/// `max_norm > 0`), as torch's `clip_grad_norm_` (factor `max_norm / (norm + 1e-6)`). Returns
/// the norm before clipping (computed in f64); a non-finite norm is returned without scaling so
/// the caller can skip the step.
pub fn clip_grad_norm(store: &mut ParamStore, max_norm: f32) -> f32 {
    let ids: Vec<ParamId> = store.ids().filter(|&id| store.trainable(id)).collect();
    let sq: f64 = ids
        .iter()
        .map(|&id| {
            store
                .grad(id)
                .iter()
                .map(|&g| g as f64 * g as f64)
                .sum::<f64>()
        })
        .sum();
    let norm = sq.sqrt() as f32;
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for id in ids {
            store.grad_mut(id).iter_mut().for_each(|g| *g *= s);
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Tensor;

    #[test]
    fn schedule_shape() {
        let s = LrSchedule {
            peak: 1e-3,
            floor: 1e-5,
            warmup_steps: 10,
            total_steps: 110,
        };
        assert!((s.lr(0) - 1e-4).abs() < 1e-9);
        assert!((s.lr(9) - 1e-3).abs() < 1e-9);
        assert!((s.lr(10) - 1e-3).abs() < 1e-9);
        assert!((s.lr(60) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-8);
        assert!((s.lr(110) - 1e-5).abs() < 1e-10);
        assert!((s.lr(10_000) - 1e-5).abs() < 1e-10);
        assert!((1..110).all(|i| s.lr(i + 10) <= s.lr(i + 9)));
    }

    #[test]
    fn adamw_matches_hand_computed_two_steps() {
        let mut store = ParamStore::new();
        let w = store
            .insert("w", Tensor::matrix(1, 2, vec![1.0, -2.0]).unwrap(), true)
            .unwrap();
        let b = store.insert("b", Tensor::vector(vec![0.5]), true).unwrap();
        let f = store.insert("f", Tensor::vector(vec![3.0]), false).unwrap();
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(cfg, &store).unwrap();
        let grads = [[0.5f64, -1.0], [0.25, 2.0]];
        let (mut p, mut m, mut v) = ([1.0f64, -2.0], [0f64; 2], [0f64; 2]);
        for (t, g) in grads.iter().enumerate() {
            store.zero_grads();
            store
                .grad_mut(w)
                .copy_from_slice(&[g[0] as f32, g[1] as f32]);
            store.grad_mut(b)[0] = 1.0;
            store.grad_mut(f)[0] = 1.0;
            opt.step(&mut store, 0.01).unwrap();
            let t = t as i32 + 1;
            for i in 0..2 {
                p[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.99f64.powi(t));
                p[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for (got, want) in store.value(w).data().iter().zip(p) {
            assert!((*got as f64 - want).abs() < 1e-6);
        }
        // The vector is not decayed: two steps of Adam with g = 1 move it by 2·lr.
        assert!((store.value(b).data()[0] - (0.5 - 0.02)).abs() < 1e-6);
        assert_eq!(store.value(f).data()[0], 3.0, "frozen parameter untouched");
    }

    #[test]
    fn clipping_reports_pre_clip_norm() {
        let mut store = ParamStore::new();
        let a = store
            .insert("a", Tensor::vector(vec![0.0; 2]), true)
            .unwrap();
        store.grad_mut(a).copy_from_slice(&[3.0, 4.0]);
        assert_eq!(clip_grad_norm(&mut store, 1.0), 5.0);
        let g = store.grad(a);
        assert!(((g[0] * g[0] + g[1] * g[1]).sqrt() - 1.0).abs() < 1e-5);
        assert!((clip_grad_norm(&mut store, 10.0) - 1.0).abs() < 1e-5);
    }
}
