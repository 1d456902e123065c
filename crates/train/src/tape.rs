//! The tape: a list of nodes in creation order (a topological order), each holding its value
//! and how to send its gradient to its inputs; `backward` walks it in reverse.

use crate::error::{Error, Result};
use crate::matmul::Compute;
use crate::params::{ParamGrads, ParamId, ParamStore};
use crate::tensor::{Shape, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// A value on a [`Tape`] (an index into it; only meaningful for the tape that made it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

enum Value<'a> {
    Owned(Vec<f32>),
    Borrowed(&'a [f32]),
    Param(ParamId),
}

/// What a leaf is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leaf {
    /// Output of an op.
    No,
    /// Constant input: no gradient.
    Constant,
    /// Input whose gradient [`Tape::backward_with`] returns (tests, frozen-feature probes).
    Input,
    /// A parameter of the store.
    Param(ParamId),
}

/// How an op sends the gradient of its output to its inputs.
pub(crate) trait Backward {
    /// The op's name (profiles).
    fn name(&self) -> &'static str;
    /// Adds the input gradients for output gradient `g` of node `out`.
    fn backward(&self, tape: &Tape<'_>, out: Var, g: &[f32], grads: &mut GradBuf) -> Result<()>;
}

struct Node<'a> {
    shape: Shape,
    value: Value<'a>,
    needs_grad: bool,
    leaf: Leaf,
    backward: Option<Box<dyn Backward + 'a>>,
}

/// A reverse-mode autograd tape over f32 tensors.
///
/// Values are computed eagerly as ops are recorded (`tape.linear(x, w, None)?` returns a
/// [`Var`] whose value is ready). Parameters are read from the borrowed [`ParamStore`] without
/// copying; frozen inputs are constants ([`Tape::constant`], or [`Tape::constant_ref`] to
/// borrow caller data). [`Tape::backward`] returns the parameter gradients; the store adds them
/// with [`ParamStore::accumulate`] after the tape is dropped.
pub struct Tape<'a> {
    params: &'a ParamStore,
    cx: &'a Compute,
    nodes: Vec<Node<'a>>,
    param_vars: HashMap<ParamId, Var>,
    profile: Option<RefCell<Profile>>,
}

/// Time spent per op kind, from [`Tape::enable_profiling`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTime {
    /// Nodes recorded.
    pub count: usize,
    /// Seconds of forward (time from the previous node's recording to this one's).
    pub forward_s: f64,
    /// Seconds of backward.
    pub backward_s: f64,
}

struct Profile {
    last: Instant,
    by_op: BTreeMap<&'static str, OpTime>,
}

impl<'a> Tape<'a> {
    /// An empty tape reading parameters from `params` and running products on `cx`.
    pub fn new(params: &'a ParamStore, cx: &'a Compute) -> Tape<'a> {
        Tape {
            params,
            cx,
            nodes: Vec::new(),
            param_vars: HashMap::new(),
            profile: None,
        }
    }

    /// Starts timing ops: forward time of a node is the time since the previous node was
    /// recorded (ops compute eagerly), backward time is measured around its backward.
    pub fn enable_profiling(&mut self) {
        self.profile = Some(RefCell::new(Profile {
            last: Instant::now(),
            by_op: BTreeMap::new(),
        }));
    }

    /// Time per op kind so far (empty unless [`Tape::enable_profiling`] was called).
    pub fn profile(&self) -> Vec<(&'static str, OpTime)> {
        self.profile.as_ref().map_or(Vec::new(), |p| {
            p.borrow().by_op.iter().map(|(k, v)| (*k, *v)).collect()
        })
    }

    /// The compute context.
    pub fn compute(&self) -> &'a Compute {
        self.cx
    }

    /// The parameter store.
    pub fn params(&self) -> &'a ParamStore {
        self.params
    }

    /// Number of nodes recorded.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A constant (no gradient).
    pub fn constant(&mut self, t: Tensor) -> Var {
        let (shape, data) = t.into_parts();
        self.push_leaf(shape, Value::Owned(data), Leaf::Constant)
    }

    /// A constant borrowing `data` (no copy); `data` must have `shape.numel()` elements.
    pub fn constant_ref(&mut self, shape: Shape, data: &'a [f32]) -> Result<Var> {
        if shape.numel() != data.len() {
            return Err(Error::BufferLen {
                what: format!("constant of shape {shape}"),
                want: shape.numel(),
                got: data.len(),
            });
        }
        Ok(self.push_leaf(shape, Value::Borrowed(data), Leaf::Constant))
    }

    /// An input whose gradient [`Tape::backward_with`] reports (not a parameter).
    pub fn input(&mut self, t: Tensor) -> Var {
        let (shape, data) = t.into_parts();
        self.push_leaf(shape, Value::Owned(data), Leaf::Input)
    }

    /// The parameter `id` (one node per parameter per tape; frozen ones get no gradient).
    pub fn param(&mut self, id: ParamId) -> Var {
        if let Some(v) = self.param_vars.get(&id) {
            return *v;
        }
        let shape = self.params.value(id).shape().clone();
        let needs = self.params.trainable(id);
        let v = Var(self.nodes.len());
        self.nodes.push(Node {
            shape,
            value: Value::Param(id),
            needs_grad: needs,
            leaf: Leaf::Param(id),
            backward: None,
        });
        self.param_vars.insert(id, v);
        v
    }

    /// The parameter called `name`.
    pub fn param_named(&mut self, name: &str) -> Result<Var> {
        let id = self.params.id(name)?;
        Ok(self.param(id))
    }

    fn push_leaf(&mut self, shape: Shape, value: Value<'a>, leaf: Leaf) -> Var {
        let v = Var(self.nodes.len());
        self.nodes.push(Node {
            shape,
            value,
            needs_grad: leaf == Leaf::Input,
            leaf,
            backward: None,
        });
        v
    }

    /// Records an op output. `backward` is kept only when some input needs a gradient.
    pub(crate) fn push_op(
        &mut self,
        shape: Shape,
        data: Vec<f32>,
        inputs: &[Var],
        backward: impl Backward + 'a,
    ) -> Var {
        debug_assert_eq!(shape.numel(), data.len());
        if let Some(p) = &self.profile {
            let mut p = p.borrow_mut();
            let now = Instant::now();
            let dt = (now - p.last).as_secs_f64();
            p.last = now;
            let e = p.by_op.entry(backward.name()).or_default();
            e.count += 1;
            e.forward_s += dt;
        }
        let needs = inputs.iter().any(|v| self.nodes[v.0].needs_grad);
        let v = Var(self.nodes.len());
        self.nodes.push(Node {
            shape,
            value: Value::Owned(data),
            needs_grad: needs,
            leaf: Leaf::No,
            backward: if needs {
                Some(Box::new(backward))
            } else {
                None
            },
        });
        v
    }

    /// The value of `v`, row-major.
    pub fn value(&self, v: Var) -> &[f32] {
        match &self.nodes[v.0].value {
            Value::Owned(d) => d,
            Value::Borrowed(d) => d,
            Value::Param(id) => self.params.value(*id).data(),
        }
    }

    /// The transpose of `v` when it is a matrix parameter (cached in the store across tapes).
    pub(crate) fn param_transposed(&self, v: Var) -> Option<&[f32]> {
        match &self.nodes[v.0].value {
            Value::Param(id) => self.params.transposed(*id),
            _ => None,
        }
    }

    /// The shape of `v`.
    pub fn shape(&self, v: Var) -> &Shape {
        &self.nodes[v.0].shape
    }

    /// Whether a gradient flows to `v`.
    pub fn needs_grad(&self, v: Var) -> bool {
        self.nodes[v.0].needs_grad
    }

    /// A copy of `v` as a tensor.
    pub fn to_tensor(&self, v: Var) -> Tensor {
        Tensor::new(self.shape(v).clone(), self.value(v).to_vec())
            .expect("node values always match their shapes")
    }

    /// The single value of a one-element node (a loss).
    pub fn scalar(&self, v: Var) -> Result<f32> {
        match self.value(v) {
            [x] => Ok(*x),
            d => Err(Error::Shape {
                op: "scalar",
                reason: format!("node has {} elements, not 1", d.len()),
            }),
        }
    }

    /// Gradients of the one-element `loss` with respect to every trainable parameter it
    /// depends on.
    pub fn backward(&self, loss: Var) -> Result<ParamGrads> {
        if self.shape(loss).numel() != 1 {
            return Err(Error::Shape {
                op: "backward",
                reason: format!("loss has shape {}, not one element", self.shape(loss)),
            });
        }
        Ok(self.backward_with(loss, &[1.0])?.params)
    }

    /// Gradients of `Σ seed · out` (a vector-Jacobian product): parameters and
    /// [`Tape::input`]s.
    pub fn backward_with(&self, out: Var, seed: &[f32]) -> Result<Gradients> {
        if seed.len() != self.shape(out).numel() {
            return Err(Error::BufferLen {
                what: "backward seed".into(),
                want: self.shape(out).numel(),
                got: seed.len(),
            });
        }
        let mut grads = GradBuf {
            slots: (0..self.nodes.len()).map(|_| None).collect(),
            needs: self.nodes.iter().map(|n| n.needs_grad).collect(),
            numel: self.nodes.iter().map(|n| n.shape.numel()).collect(),
        };
        let mut result = Gradients::default();
        if !self.nodes[out.0].needs_grad {
            return Ok(result);
        }
        grads.slots[out.0] = Some(seed.to_vec());
        for idx in (0..=out.0).rev() {
            let Some(g) = grads.slots[idx].take() else {
                continue;
            };
            let node = &self.nodes[idx];
            match node.leaf {
                Leaf::Param(id) => result.params.0.push((id, g)),
                Leaf::Input => {
                    result.inputs.insert(Var(idx), g);
                }
                Leaf::Constant => {}
                Leaf::No => {
                    if let Some(b) = &node.backward {
                        let t0 = self.profile.as_ref().map(|_| Instant::now());
                        b.backward(self, Var(idx), &g, &mut grads)?;
                        if let (Some(p), Some(t0)) = (&self.profile, t0) {
                            let dt = t0.elapsed().as_secs_f64();
                            p.borrow_mut().by_op.entry(b.name()).or_default().backward_s += dt;
                        }
                    }
                }
            }
        }
        result.params.0.sort_by_key(|(id, _)| *id);
        Ok(result)
    }
}

/// Gradients from [`Tape::backward_with`].
#[derive(Debug, Default)]
pub struct Gradients {
    /// Parameter gradients.
    pub params: ParamGrads,
    inputs: HashMap<Var, Vec<f32>>,
}

impl Gradients {
    /// The gradient of an [`Tape::input`], if the output depends on it.
    pub fn input(&self, v: Var) -> Option<&[f32]> {
        self.inputs.get(&v).map(|g| g.as_slice())
    }
}

/// Gradient accumulators of the nodes during backward.
pub(crate) struct GradBuf {
    slots: Vec<Option<Vec<f32>>>,
    needs: Vec<bool>,
    numel: Vec<usize>,
}

impl GradBuf {
    /// Adds `g` to the gradient of `v` (ignored when `v` takes none).
    pub(crate) fn add(&mut self, v: Var, g: Vec<f32>) {
        if !self.needs[v.0] {
            return;
        }
        debug_assert_eq!(g.len(), self.numel[v.0]);
        match &mut self.slots[v.0] {
            Some(acc) => {
                for (a, b) in acc.iter_mut().zip(&g) {
                    *a += b;
                }
            }
            slot @ None => *slot = Some(g),
        }
    }

    /// Runs `f(acc, accumulate)` on the gradient accumulator of `v`: a fresh zeroed buffer with
    /// `accumulate == false` (so `f` may overwrite it) when `v` has no gradient yet, the running
    /// sum with `accumulate == true` otherwise. `None` when `v` takes no gradient.
    pub(crate) fn with<R>(&mut self, v: Var, f: impl FnOnce(&mut [f32], bool) -> R) -> Option<R> {
        if !self.needs[v.0] {
            return None;
        }
        let n = self.numel[v.0];
        let fresh = self.slots[v.0].is_none();
        let slot = self.slots[v.0].get_or_insert_with(|| vec![0.0; n]);
        Some(f(slot, !fresh))
    }
}
