//! Named parameters: a model is a set of named tensors with their gradients.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Handle of a parameter in its [`ParamStore`] (an index, stable for the store's life).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub(crate) usize);

impl ParamId {
    /// The index in insertion order.
    pub fn index(self) -> usize {
        self.0
    }
}

struct Param {
    name: String,
    value: Tensor,
    grad: Vec<f32>,
    trainable: bool,
    /// The value of a matrix transposed, made on first use after each change: every tape of
    /// an update multiplies by the same weights (`x · wᵀ`), and the JIT kernel wants `wᵀ`
    /// row-major.
    transposed: OnceLock<Vec<f32>>,
}

/// Parameters by name, in insertion order: value, accumulated gradient, trainable flag.
///
/// A [`crate::Tape`] borrows the store to read values; `backward` returns
/// [`ParamGrads`], which [`ParamStore::accumulate`] adds to the stored gradients once the tape
/// is gone. Frozen parameters (`trainable == false`) get no gradient and are skipped by the
/// optimizer.
#[derive(Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, ParamId>,
}

impl ParamStore {
    /// An empty store.
    pub fn new() -> ParamStore {
        ParamStore::default()
    }

    /// Adds a parameter; a name already present is an error.
    pub fn insert(&mut self, name: &str, value: Tensor, trainable: bool) -> Result<ParamId> {
        if self.by_name.contains_key(name) {
            return Err(Error::Param {
                name: name.to_string(),
                reason: "already in the store".into(),
            });
        }
        let id = ParamId(self.params.len());
        let grad = vec![0.0; value.data().len()];
        self.params.push(Param {
            name: name.to_string(),
            value,
            grad,
            trainable,
            transposed: OnceLock::new(),
        });
        self.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// The parameter called `name`.
    pub fn id(&self, name: &str) -> Result<ParamId> {
        self.by_name.get(name).copied().ok_or_else(|| Error::Param {
            name: name.to_string(),
            reason: "not in the store".into(),
        })
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// All ids in insertion order.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + '_ {
        (0..self.params.len()).map(ParamId)
    }

    /// Total number of elements of all parameters.
    pub fn n_elements(&self) -> usize {
        self.params.iter().map(|p| p.value.data().len()).sum()
    }

    /// The name of `id`.
    pub fn name(&self, id: ParamId) -> &str {
        &self.params[id.0].name
    }

    /// The value of `id`.
    pub fn value(&self, id: ParamId) -> &Tensor {
        &self.params[id.0].value
    }

    /// The value of `id`, mutable.
    pub fn value_mut(&mut self, id: ParamId) -> &mut Tensor {
        let p = &mut self.params[id.0];
        p.transposed = OnceLock::new();
        &mut p.value
    }

    /// The value of a matrix parameter `[rows, cols]` as its transpose `[cols, rows]`,
    /// row-major; `None` when `id` is not a matrix. Computed once per value.
    pub fn transposed(&self, id: ParamId) -> Option<&[f32]> {
        let p = &self.params[id.0];
        let dims = p.value.shape().dims();
        let &[rows, cols] = dims else {
            return None;
        };
        Some(
            p.transposed
                .get_or_init(|| crate::matmul::transpose(p.value.data(), rows, cols)),
        )
    }

    /// Replaces the value of `id` with data of the same length.
    pub fn set_value(&mut self, id: ParamId, data: &[f32]) -> Result<()> {
        let p = &mut self.params[id.0];
        if p.value.data().len() != data.len() {
            return Err(Error::BufferLen {
                what: format!("value of {}", p.name),
                want: p.value.data().len(),
                got: data.len(),
            });
        }
        p.value.data_mut().copy_from_slice(data);
        p.transposed = OnceLock::new();
        Ok(())
    }

    /// The accumulated gradient of `id` (zeros for a frozen parameter).
    pub fn grad(&self, id: ParamId) -> &[f32] {
        &self.params[id.0].grad
    }

    /// The accumulated gradient of `id`, mutable (clipping scales it).
    pub fn grad_mut(&mut self, id: ParamId) -> &mut [f32] {
        &mut self.params[id.0].grad
    }

    /// Value and gradient of `id` together (the optimizer updates one from the other).
    pub fn value_and_grad_mut(&mut self, id: ParamId) -> (&mut [f32], &[f32]) {
        let p = &mut self.params[id.0];
        p.transposed = OnceLock::new();
        (p.value.data_mut(), &p.grad)
    }

    /// Whether `id` is trained.
    pub fn trainable(&self, id: ParamId) -> bool {
        self.params[id.0].trainable
    }

    /// Freezes or unfreezes `id`.
    pub fn set_trainable(&mut self, id: ParamId, trainable: bool) {
        self.params[id.0].trainable = trainable;
    }

    /// Sets all gradients to zero.
    pub fn zero_grads(&mut self) {
        for p in &mut self.params {
            p.grad.fill(0.0);
        }
    }

    /// Adds gradients from one backward pass to the stored ones.
    pub fn accumulate(&mut self, grads: &ParamGrads) -> Result<()> {
        for (id, g) in &grads.0 {
            let p = self.params.get_mut(id.0).ok_or_else(|| Error::Param {
                name: format!("#{}", id.0),
                reason: "gradient for a parameter not in this store".into(),
            })?;
            if p.grad.len() != g.len() {
                return Err(Error::BufferLen {
                    what: format!("gradient of {}", p.name),
                    want: p.grad.len(),
                    got: g.len(),
                });
            }
            for (a, b) in p.grad.iter_mut().zip(g) {
                *a += b;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.params
                    .iter()
                    .map(|p| (&p.name, (p.value.shape().dims(), p.trainable))),
            )
            .finish()
    }
}

/// Parameter gradients from one [`crate::Tape::backward`], by parameter.
#[derive(Debug, Default)]
pub struct ParamGrads(pub(crate) Vec<(ParamId, Vec<f32>)>);

impl ParamGrads {
    /// The gradient of `id`, if the loss depends on it.
    pub fn get(&self, id: ParamId) -> Option<&[f32]> {
        self.0
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, g)| g.as_slice())
    }
    /// All (parameter, gradient) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &[f32])> {
        self.0.iter().map(|(i, g)| (*i, g.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cached transpose follows every way the value can change (the optimizer writes
    /// through `value_and_grad_mut`), so a tape never multiplies by stale weights.
    #[test]
    fn transposed_value_follows_changes() {
        let mut store = ParamStore::new();
        let id = store
            .insert(
                "w",
                Tensor::matrix(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap(),
                true,
            )
            .unwrap();
        assert_eq!(store.transposed(id).unwrap(), [1., 4., 2., 5., 3., 6.]);
        store.set_value(id, &[0., 1., 2., 3., 4., 5.]).unwrap();
        assert_eq!(store.transposed(id).unwrap(), [0., 3., 1., 4., 2., 5.]);
        store.value_and_grad_mut(id).0[0] = 9.;
        assert_eq!(store.transposed(id).unwrap(), [9., 3., 1., 4., 2., 5.]);
        store.value_mut(id).data_mut()[1] = 7.;
        assert_eq!(store.transposed(id).unwrap(), [9., 3., 7., 4., 2., 5.]);
        let v = store
            .insert("v", Tensor::vector(vec![1., 2.]), true)
            .unwrap();
        assert!(store.transposed(v).is_none());
    }
}
