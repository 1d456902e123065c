//! The tensor-expression IR: nodes over named index variables.
//!
//! Invariants (checked by [`Expr::verify`]):
//! - nodes are in topological order: a node refers only to nodes before it;
//! - every node has an iteration space, the list of variables it is indexed by; an elementwise
//!   node's space is the union of its arguments' spaces (broadcast), a [`Op::Reduce`] keeps the
//!   listed variables and reduces over the ones that vanish;
//! - reads go through views (offset + one stride per index variable) that stay inside the buffer;
//! - the output node is `F32` and is written through its own view.
//!
//! Semantics are those of [`crate::interp`]; in particular `Reduce(Add, Mul(a, b))` is contracted:
//! the accumulator is updated with one fused multiply-add per point, `acc = fma(a, b, acc)`, in
//! increasing order of the reduced variables. Every backend keeps that order, which makes every
//! kernel of the matmul family bit-identical to the interpreter and batch-invariant. The one
//! schedule annotation that changes a reduction's order, the lane split
//! ([`crate::schedule::Annot::Lanes`]), is part of the semantics, and the interpreter follows it.
//!
//! **The elementwise ops are the kernels' arithmetic**, so that a row kernel can equal the
//! interpreter bit for bit ([`UnaryOp`]):
//! - `Exp` is the polynomial [`crate::kernel::portable::exp_clamped`] (the one every JIT row
//!   kernel and portable twin uses), not libm's `exp`: clamp to `[-87, 88]`, Cody–Waite
//!   reduction, a degree-6 Taylor polynomial by Horner's rule with fused multiply-adds, times
//!   `2^n` built in the exponent bits. On `[-87, 88]` it is within 2.74 ulp (relative error
//!   2.3e-7) of the exact value, against libm's 0.5 ulp (measured on every seventh f32 of the
//!   range, 320 million values; `interp`'s tests check a grid). It differs from libm outside that range by design: below -87 it is 0 (libm gives
//!   values down to about 1e-45 until -103.97), above 88 it stays at `exp(88)` ≈ 1.65e38
//!   (libm reaches 3.4e38 at 88.72, then +inf); `-inf` gives 0 and NaN gives NaN.
//! - `Rsqrt` is `1 / sqrt(x)` rounded twice (a correctly rounded square root, then a correctly
//!   rounded division), as the kernels compute RMSNorm's scale; not a one-rounding reciprocal
//!   square root, and not the hardware's `rsqrt` estimate.
//! - `Silu` is `x / (1 + exp(-x))` with that `Exp`, each operation rounded.

use crate::error::{Error, Result};
use crate::quant::QuantType;
use std::fmt;

/// Handle of an index variable (an index into [`Expr::vars`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VarId(pub u32);
/// Handle of a node (an index into [`Expr::nodes`]); valid across schedule edits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);
/// Handle of an input buffer (an index into [`Expr::inputs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// An index variable with its extent (it ranges over `0..extent`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Var {
    /// Name, for printing and schedule text (`m`, `n`, `k`).
    pub name: String,
    /// Number of values.
    pub extent: usize,
}

/// Scalar type of a node's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scalar {
    /// IEEE single precision; every operation rounds to f32.
    F32,
    /// Exact integers (quantized codes and their dot products).
    I32,
}

/// How an input buffer stores its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Storage {
    /// Plain `f32` elements.
    F32,
    /// IEEE half-precision elements (little-endian); a read converts exactly to f32.
    F16,
    /// bfloat16 elements (the top 16 bits of an f32, little-endian); a read converts exactly
    /// to f32.
    Bf16,
    /// GGML-style blocks of 32 quantized elements.
    Quant(QuantType),
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::F32 => write!(f, "f32"),
            Storage::F16 => write!(f, "f16"),
            Storage::Bf16 => write!(f, "bf16"),
            Storage::Quant(q) => write!(f, "{q}"),
        }
    }
}

/// The float types weights may be stored in (the element types of [`Storage::F32`],
/// [`Storage::F16`] and [`Storage::Bf16`]); every one converts to f32 exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatType {
    /// IEEE single precision, 4 bytes.
    F32,
    /// IEEE half precision, 2 bytes.
    F16,
    /// bfloat16, 2 bytes.
    Bf16,
}

impl FloatType {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::Bf16 => 2,
        }
    }
    /// The IR storage of a buffer of this type.
    pub fn storage(self) -> Storage {
        match self {
            FloatType::F32 => Storage::F32,
            FloatType::F16 => Storage::F16,
            FloatType::Bf16 => Storage::Bf16,
        }
    }
    /// The type of a float storage (`None` for quantized blocks).
    pub fn of_storage(storage: Storage) -> Option<FloatType> {
        match storage {
            Storage::F32 => Some(FloatType::F32),
            Storage::F16 => Some(FloatType::F16),
            Storage::Bf16 => Some(FloatType::Bf16),
            Storage::Quant(_) => None,
        }
    }
    /// Converts little-endian `bytes` of this type (exactly) to f32, one value per element of
    /// `out`; the caller passes `out.len() * self.bytes()` bytes.
    pub(crate) fn decode_le(self, bytes: &[u8], out: &mut [f32]) {
        let chunks = bytes.chunks_exact(self.bytes());
        match self {
            FloatType::F32 => {
                for (o, c) in out.iter_mut().zip(chunks) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            FloatType::F16 => {
                for (o, c) in out.iter_mut().zip(chunks) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            FloatType::Bf16 => {
                for (o, c) in out.iter_mut().zip(chunks) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }
    /// Parses `f32`, `f16`, `bf16`.
    pub fn parse(s: &str) -> Option<FloatType> {
        match s {
            "f32" => Some(FloatType::F32),
            "f16" => Some(FloatType::F16),
            "bf16" => Some(FloatType::Bf16),
            _ => None,
        }
    }
}

impl fmt::Display for FloatType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.storage().fmt(f)
    }
}

/// An input buffer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Input {
    /// Name, for errors (`a`, `w`).
    pub name: String,
    /// Element type.
    pub storage: Storage,
    /// Length in elements (`F32`, `F16`, `Bf16`) or in blocks (`Quant`).
    pub len: usize,
}

/// What a read of a quantized buffer yields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantPart {
    /// The dequantized `f32` value; index `[row, col]`.
    Value,
    /// The integer code as it enters a dot product (`q - 8` for Q4_0, `q` otherwise); index
    /// `[row, block, lane]` with `lane` of extent 32.
    Code,
    /// The block scale `d`; index `[row, block]`.
    Scale,
    /// The block offset `m` (Q4_1) or the block sum `d * sum(q)` (Q8Act); index `[row, block]`.
    Min,
}

/// How a read maps its index variables to a buffer position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Float buffer (`F32`, `F16`, `Bf16`): element `offset + sum(strides[i] * index[i])`
    /// (transposes and slices are strides and offsets).
    Strided {
        /// First element.
        offset: usize,
        /// One stride per index variable, in elements.
        strides: Vec<isize>,
    },
    /// Quantized buffer of rows of blocks; row `r` starts at block `r * row_stride_blocks`.
    Quant {
        /// Which part of a block is read.
        part: QuantPart,
        /// Blocks from one row to the next.
        row_stride_blocks: usize,
    },
}

/// Elementwise unary operations (module doc: their exact arithmetic).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `-x` (exact).
    Neg,
    /// `e^x` by the polynomial [`crate::kernel::portable::exp_clamped`] (within 2.74 ulp on
    /// `[-87, 88]`; 0 below, `exp(88)` above), not libm's `exp`.
    Exp,
    /// `1 / sqrt(x)`: the square root rounded, then the division rounded.
    Rsqrt,
    /// `x / (1 + exp(-x))` with the polynomial `Exp`, each operation rounded.
    Silu,
}

/// Elementwise binary operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Max,
}

/// Reductions over the variables that vanish from a node's space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum (starting at 0).
    Add,
    /// Maximum (starting at -inf).
    Max,
}

/// A node's operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read an input through a view, indexed by `index` (one variable per view dimension).
    Read {
        /// The buffer.
        input: InputId,
        /// Index variables, in view-dimension order.
        index: Vec<VarId>,
        /// How the index maps to the buffer.
        access: Access,
    },
    /// Elementwise unary.
    Unary(UnaryOp, NodeId),
    /// Elementwise binary (broadcasting over the union of spaces).
    Binary(BinaryOp, NodeId, NodeId),
    /// Reduce the argument to the space `keep` (a subset of the argument's space).
    Reduce {
        /// The reduction.
        op: ReduceOp,
        /// What is reduced.
        arg: NodeId,
        /// The variables that remain.
        keep: Vec<VarId>,
    },
    /// Convert an `I32` node to `F32` (exact for |x| < 2^24).
    ToF32(NodeId),
    /// An `F32` constant (its bit pattern), with an empty space.
    Const(u32),
}

impl Op {
    /// Short name for errors and printing.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Unary(..) => "unary",
            Op::Binary(..) => "binary",
            Op::Reduce { .. } => "reduce",
            Op::ToF32(_) => "to_f32",
            Op::Const(_) => "const",
        }
    }
}

/// A node: an operation, its space (derived) and its scalar type (derived).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// The operation.
    pub op: Op,
    /// Output space: the variables that index this node's values.
    pub space: Vec<VarId>,
    /// Value type.
    pub scalar: Scalar,
}

/// A tensor expression: variables, inputs, nodes and an output view.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Expr {
    /// Index variables.
    pub vars: Vec<Var>,
    /// Input buffers.
    pub inputs: Vec<Input>,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// The node written to the output buffer.
    pub output: NodeId,
    /// Output view: offset and one stride per variable of the output node's space.
    pub out_offset: usize,
    /// Output strides, in elements.
    pub out_strides: Vec<isize>,
    /// Output buffer length in elements.
    pub out_len: usize,
}

/// Builds an [`Expr`] node by node, deriving spaces and scalar types.
#[derive(Default)]
pub struct Builder {
    vars: Vec<Var>,
    inputs: Vec<Input>,
    nodes: Vec<Node>,
}

impl Builder {
    /// An empty expression.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds an index variable.
    pub fn var(&mut self, name: &str, extent: usize) -> VarId {
        self.vars.push(Var {
            name: name.to_string(),
            extent,
        });
        VarId(self.vars.len() as u32 - 1)
    }
    /// Adds an input buffer.
    pub fn input(&mut self, name: &str, storage: Storage, len: usize) -> InputId {
        self.inputs.push(Input {
            name: name.to_string(),
            storage,
            len,
        });
        InputId(self.inputs.len() as u32 - 1)
    }
    fn push(&mut self, op: Op, space: Vec<VarId>, scalar: Scalar) -> NodeId {
        self.nodes.push(Node { op, space, scalar });
        NodeId(self.nodes.len() as u32 - 1)
    }
    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }
    /// Reads a float input (`F32`, `F16` or `Bf16`; the value is f32) with strides (one per
    /// index variable).
    pub fn read(
        &mut self,
        input: InputId,
        index: &[VarId],
        offset: usize,
        strides: &[isize],
    ) -> NodeId {
        let access = Access::Strided {
            offset,
            strides: strides.to_vec(),
        };
        self.push(
            Op::Read {
                input,
                index: index.to_vec(),
                access,
            },
            dedup(index),
            Scalar::F32,
        )
    }
    /// Reads a part of a quantized input.
    pub fn read_quant(
        &mut self,
        input: InputId,
        part: QuantPart,
        index: &[VarId],
        row_stride_blocks: usize,
    ) -> NodeId {
        let scalar = if part == QuantPart::Code {
            Scalar::I32
        } else {
            Scalar::F32
        };
        let access = Access::Quant {
            part,
            row_stride_blocks,
        };
        self.push(
            Op::Read {
                input,
                index: index.to_vec(),
                access,
            },
            dedup(index),
            scalar,
        )
    }
    /// Elementwise unary.
    pub fn unary(&mut self, op: UnaryOp, a: NodeId) -> NodeId {
        let n = self.node(a);
        let (space, scalar) = (n.space.clone(), n.scalar);
        self.push(Op::Unary(op, a), space, scalar)
    }
    /// Elementwise binary.
    pub fn binary(&mut self, op: BinaryOp, a: NodeId, b: NodeId) -> NodeId {
        let mut space = self.node(a).space.clone();
        for v in &self.node(b).space {
            if !space.contains(v) {
                space.push(*v);
            }
        }
        let scalar = self.node(a).scalar;
        self.push(Op::Binary(op, a, b), space, scalar)
    }
    /// Reduces `a` to the space `keep`.
    pub fn reduce(&mut self, op: ReduceOp, a: NodeId, keep: &[VarId]) -> NodeId {
        let scalar = self.node(a).scalar;
        self.push(
            Op::Reduce {
                op,
                arg: a,
                keep: keep.to_vec(),
            },
            keep.to_vec(),
            scalar,
        )
    }
    /// Converts an integer node to `F32`.
    pub fn to_f32(&mut self, a: NodeId) -> NodeId {
        let space = self.node(a).space.clone();
        self.push(Op::ToF32(a), space, Scalar::F32)
    }
    /// An `F32` constant.
    pub fn constant(&mut self, value: f32) -> NodeId {
        self.push(Op::Const(value.to_bits()), Vec::new(), Scalar::F32)
    }
    /// Finishes with `output` written through a view, and verifies the expression.
    pub fn finish(
        self,
        output: NodeId,
        out_offset: usize,
        out_strides: &[isize],
        out_len: usize,
    ) -> Result<Expr> {
        let e = Expr {
            vars: self.vars,
            inputs: self.inputs,
            nodes: self.nodes,
            output,
            out_offset,
            out_strides: out_strides.to_vec(),
            out_len,
        };
        e.verify()?;
        Ok(e)
    }
}

fn dedup(index: &[VarId]) -> Vec<VarId> {
    let mut out: Vec<VarId> = Vec::new();
    for v in index {
        if !out.contains(v) {
            out.push(*v);
        }
    }
    out
}

impl Expr {
    /// The node with handle `id`.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }
    /// The variable with handle `id`.
    pub fn var(&self, id: VarId) -> &Var {
        &self.vars[id.0 as usize]
    }
    /// The handle of the (first) variable named `name`.
    pub fn var_named(&self, name: &str) -> Option<VarId> {
        self.vars
            .iter()
            .position(|v| v.name == name)
            .map(|i| VarId(i as u32))
    }
    /// The space a node's loops iterate: its own space, plus the reduced variables for a reduce.
    pub fn iter_space(&self, id: NodeId) -> Vec<VarId> {
        let node = self.node(id);
        match &node.op {
            Op::Reduce { arg, keep, .. } => {
                let mut s = keep.clone();
                // `get`: callers may ask before `verify` (a dangling argument adds nothing).
                for v in self
                    .nodes
                    .get(arg.0 as usize)
                    .map_or(&[][..], |a| &a.space[..])
                {
                    if !s.contains(v) {
                        s.push(*v);
                    }
                }
                s
            }
            _ => node.space.clone(),
        }
    }
    /// The variables a reduce node sums (or maxes) over; empty for other nodes.
    pub fn reduced_vars(&self, id: NodeId) -> Vec<VarId> {
        match &self.node(id).op {
            Op::Reduce { arg, keep, .. } => {
                self.nodes.get(arg.0 as usize).map_or(Vec::new(), |a| {
                    a.space
                        .iter()
                        .copied()
                        .filter(|v| !keep.contains(v))
                        .collect()
                })
            }
            _ => Vec::new(),
        }
    }
    /// The nodes that use `id` as an argument.
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        (0..self.nodes.len() as u32)
            .map(NodeId)
            .filter(|&u| args(&self.node(u).op).contains(&id))
            .collect()
    }
    /// Floating-point operations of one evaluation (2 per multiply-add point of a reduce).
    pub fn flops(&self) -> u64 {
        let mut total = 0u64;
        for (i, n) in self.nodes.iter().enumerate() {
            let points: u64 = self
                .iter_space(NodeId(i as u32))
                .iter()
                .map(|v| self.var(*v).extent as u64)
                .product();
            total += match n.op {
                Op::Read { .. } | Op::Const(_) => 0,
                Op::Reduce { .. } => points,
                _ => points,
            };
        }
        total
    }

    /// Checks every invariant listed in the module doc; the error names the node.
    pub fn verify(&self) -> Result<()> {
        for (i, node) in self.nodes.iter().enumerate() {
            let check_node = |id: NodeId| -> Result<&Node> {
                if (id.0 as usize) < i {
                    Ok(&self.nodes[id.0 as usize])
                } else {
                    Err(Error::DanglingRef {
                        node: i,
                        what: "node",
                        index: id.0 as usize,
                    })
                }
            };
            for v in &node.space {
                if v.0 as usize >= self.vars.len() {
                    return Err(Error::DanglingRef {
                        node: i,
                        what: "variable",
                        index: v.0 as usize,
                    });
                }
            }
            let name = node.op.name();
            match &node.op {
                Op::Read {
                    input,
                    index,
                    access,
                } => {
                    let inp = self
                        .inputs
                        .get(input.0 as usize)
                        .ok_or(Error::DanglingRef {
                            node: i,
                            what: "input",
                            index: input.0 as usize,
                        })?;
                    if index.iter().any(|v| v.0 as usize >= self.vars.len()) {
                        return Err(Error::bad_node(i, name, "index names an unknown variable"));
                    }
                    self.verify_read(i, inp, index, access, node.scalar)?;
                }
                Op::Unary(op, a) => {
                    let a = check_node(*a)?;
                    if a.scalar != Scalar::F32 && *op != UnaryOp::Neg {
                        return Err(Error::bad_node(
                            i,
                            name,
                            format!("{op:?} needs an F32 argument"),
                        ));
                    }
                    if node.space != a.space || node.scalar != a.scalar {
                        return Err(Error::bad_node(
                            i,
                            name,
                            "space or type differs from the argument",
                        ));
                    }
                }
                Op::Binary(op, a, b) => {
                    let (a, b) = (check_node(*a)?, check_node(*b)?);
                    if a.scalar != b.scalar || node.scalar != a.scalar {
                        return Err(Error::bad_node(
                            i,
                            name,
                            format!("{op:?} mixes {:?} and {:?}", a.scalar, b.scalar),
                        ));
                    }
                    if node.scalar == Scalar::I32 && matches!(op, BinaryOp::Div) {
                        return Err(Error::bad_node(
                            i,
                            name,
                            "integer division is not supported",
                        ));
                    }
                    let covers = |s: &[VarId]| s.iter().all(|v| node.space.contains(v));
                    if !covers(&a.space)
                        || !covers(&b.space)
                        || node.space.len()
                            != dedup(&[a.space.clone(), b.space.clone()].concat()).len()
                    {
                        return Err(Error::bad_node(
                            i,
                            name,
                            "space is not the union of the arguments' spaces",
                        ));
                    }
                }
                Op::Reduce { arg, keep, .. } => {
                    let a = check_node(*arg)?;
                    if let Some(v) = keep.iter().find(|v| v.0 as usize >= self.vars.len()) {
                        return Err(Error::DanglingRef {
                            node: i,
                            what: "variable",
                            index: v.0 as usize,
                        });
                    }
                    if let Some(v) = keep.iter().find(|v| !a.space.contains(v)) {
                        return Err(Error::bad_node(
                            i,
                            name,
                            format!(
                                "kept variable {:?} is not in the argument's space",
                                self.vars[v.0 as usize].name
                            ),
                        ));
                    }
                    if &node.space != keep || node.scalar != a.scalar {
                        return Err(Error::bad_node(
                            i,
                            name,
                            "space differs from the kept variables",
                        ));
                    }
                }
                Op::Const(_) => {
                    if !node.space.is_empty() || node.scalar != Scalar::F32 {
                        return Err(Error::bad_node(
                            i,
                            name,
                            "a constant is an F32 with an empty space",
                        ));
                    }
                }
                Op::ToF32(a) => {
                    let a = check_node(*a)?;
                    if a.scalar != Scalar::I32
                        || node.scalar != Scalar::F32
                        || node.space != a.space
                    {
                        return Err(Error::bad_node(
                            i,
                            name,
                            "to_f32 takes an I32 node and keeps its space",
                        ));
                    }
                }
            }
        }
        let out = self
            .nodes
            .get(self.output.0 as usize)
            .ok_or(Error::DanglingRef {
                node: self.nodes.len(),
                what: "output node",
                index: self.output.0 as usize,
            })?;
        if out.scalar != Scalar::F32 {
            return Err(Error::bad_node(
                self.output.0 as usize,
                "output",
                "the output must be F32",
            ));
        }
        if self.out_strides.len() != out.space.len() {
            return Err(Error::bad_node(
                self.output.0 as usize,
                "output",
                format!(
                    "output view has {} strides for a space of {} variables",
                    self.out_strides.len(),
                    out.space.len()
                ),
            ));
        }
        let extents: Vec<usize> = out.space.iter().map(|v| self.var(*v).extent).collect();
        check_view(
            "output",
            self.out_offset,
            &self.out_strides,
            &extents,
            self.out_len,
        )
    }

    fn verify_read(
        &self,
        i: usize,
        inp: &Input,
        index: &[VarId],
        access: &Access,
        scalar: Scalar,
    ) -> Result<()> {
        let extents: Vec<usize> = index.iter().map(|v| self.var(*v).extent).collect();
        match (inp.storage, access) {
            (Storage::F32 | Storage::F16 | Storage::Bf16, Access::Strided { offset, strides }) => {
                if strides.len() != index.len() {
                    return Err(Error::bad_node(
                        i,
                        "read",
                        format!(
                            "{} strides for {} index variables",
                            strides.len(),
                            index.len()
                        ),
                    ));
                }
                if scalar != Scalar::F32 {
                    return Err(Error::bad_node(i, "read", "an f32 read yields F32"));
                }
                check_view(&inp.name, *offset, strides, &extents, inp.len)
            }
            (
                Storage::Quant(q),
                Access::Quant {
                    part,
                    row_stride_blocks,
                },
            ) => {
                let want_rank = match part {
                    QuantPart::Value => 2,
                    QuantPart::Code => 3,
                    QuantPart::Scale | QuantPart::Min => 2,
                };
                if index.len() != want_rank {
                    return Err(Error::bad_node(
                        i,
                        "read",
                        format!(
                            "{part:?} of {q} takes {want_rank} index variables, got {}",
                            index.len()
                        ),
                    ));
                }
                if *part == QuantPart::Min && !q.has_min() {
                    return Err(Error::bad_node(
                        i,
                        "read",
                        format!("{q} has no min/sum field"),
                    ));
                }
                let blocks_per_row = match part {
                    QuantPart::Value => extents[1].div_ceil(32),
                    _ => extents[1],
                };
                if *part == QuantPart::Code && extents[2] != 32 {
                    return Err(Error::bad_node(
                        i,
                        "read",
                        format!(
                            "the lane variable of a code read must have extent 32, got {}",
                            extents[2]
                        ),
                    ));
                }
                if blocks_per_row > *row_stride_blocks {
                    return Err(Error::bad_node(i, "read", format!("rows of {blocks_per_row} blocks overlap with a row stride of {row_stride_blocks}")));
                }
                let reach = (extents[0].max(1) - 1) * row_stride_blocks + blocks_per_row;
                if extents[0] > 0 && reach > inp.len {
                    return Err(Error::ViewOutOfBounds {
                        tensor: inp.name.clone(),
                        reach: reach as i64,
                        len: inp.len,
                    });
                }
                Ok(())
            }
            (storage, _) => Err(Error::InputType {
                name: inp.name.clone(),
                want: format!("{access:?}"),
                got: storage.to_string(),
            }),
        }
    }
}

fn check_view(
    name: &str,
    offset: usize,
    strides: &[isize],
    extents: &[usize],
    len: usize,
) -> Result<()> {
    if extents.contains(&0) {
        return Ok(());
    }
    let (mut lo, mut hi) = (offset as i64, offset as i64);
    for (&s, &e) in strides.iter().zip(extents) {
        let span = s as i64 * (e as i64 - 1);
        if span < 0 {
            lo += span;
        } else {
            hi += span;
        }
    }
    if lo < 0 {
        return Err(Error::ViewOutOfBounds {
            tensor: name.to_string(),
            reach: lo,
            len,
        });
    }
    if hi >= len as i64 {
        return Err(Error::ViewOutOfBounds {
            tensor: name.to_string(),
            reach: hi,
            len,
        });
    }
    Ok(())
}

/// The nodes an operation reads.
pub fn args(op: &Op) -> Vec<NodeId> {
    match op {
        Op::Read { .. } | Op::Const(_) => vec![],
        Op::Unary(_, a) | Op::ToF32(a) => vec![*a],
        Op::Binary(_, a, b) => vec![*a, *b],
        Op::Reduce { arg, .. } => vec![*arg],
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |s: &[VarId]| {
            s.iter()
                .map(|v| self.var(*v).name.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        for (i, n) in self.nodes.iter().enumerate() {
            write!(f, "%{i}[{}]:{:?} = ", names(&n.space), n.scalar)?;
            match &n.op {
                Op::Read {
                    input,
                    index,
                    access,
                } => {
                    let inp = &self.inputs[input.0 as usize];
                    match access {
                        Access::Strided { offset, strides } if inp.storage == Storage::F32 => {
                            write!(
                                f,
                                "read {}[{}] (offset {offset}, strides {strides:?})",
                                inp.name,
                                names(index)
                            )?
                        }
                        Access::Strided { offset, strides } => write!(
                            f,
                            "read {}[{}] ({}, offset {offset}, strides {strides:?})",
                            inp.name,
                            names(index),
                            inp.storage
                        )?,
                        Access::Quant { part, .. } => write!(
                            f,
                            "read {}.{part:?}[{}] ({})",
                            inp.name,
                            names(index),
                            inp.storage
                        )?,
                    }
                }
                Op::Unary(op, a) => write!(f, "{op:?}({a})")?,
                Op::Binary(op, a, b) => write!(f, "{op:?}({a}, {b})")?,
                Op::Reduce { op, arg, .. } => write!(
                    f,
                    "reduce_{op:?}({arg}) over [{}]",
                    names(&self.reduced_vars(NodeId(i as u32)))
                )?,
                Op::ToF32(a) => write!(f, "to_f32({a})")?,
                Op::Const(bits) => write!(f, "{}", f32::from_bits(*bits))?,
            }
            writeln!(f)?;
        }
        write!(f, "out = %{}", self.output.0)
    }
}

/// Common expressions.
pub mod library {
    use super::*;

    /// `C[m, n] = sum_k A[m, k] * B[k, n]`, row-major, with leading dimensions equal to the
    /// widths. Nodes: `%0 = A`, `%1 = B`, `%2 = mul`, `%3 = reduce`.
    pub fn matmul(m: usize, n: usize, k: usize) -> Result<Expr> {
        matmul_strided(m, n, k, k, 1, n)
    }

    /// Work fused after a matmul's reduction: four optional stages, always applied in this
    /// order to each output `t = sum_k A[m, k] * B[k, n]` (one fma chain, as without them):
    ///
    /// ```text
    /// t = t * scale                      scale:    one f32, a run-time argument
    /// t = t + bias[n]                    bias:     n values
    /// t = silu(t) * up[m, n]             silu_mul: silu(x) = x / (1 + exp(-x)), the IR's Exp
    /// t = t + residual[m, n]             residual: m x n, row-major
    /// ```
    ///
    /// Each operation is rounded to f32 on its own (no contraction), so the kernels, their
    /// portable twin and the interpreter agree bit for bit. With everything off it is the
    /// plain matmul. Uses: attention scores `q·kᵀ / sqrt(d)` (+ mask as the residual), the Llama
    /// MLP's gate `silu(x·W_gate) * (x·W_up)` with `up` computed first, a projection plus the
    /// residual stream.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Epilogue {
        /// Multiply by a scalar (given when the kernel runs).
        pub scale: bool,
        /// Add a bias vector of `n`.
        pub bias: bool,
        /// Replace `t` by `silu(t) * up[m, n]` (`up` row-major `m x n`).
        pub silu_mul: bool,
        /// Add a residual matrix of `m x n` (row-major).
        pub residual: bool,
    }

    impl Epilogue {
        /// No epilogue.
        pub const NONE: Epilogue = Epilogue {
            scale: false,
            bias: false,
            silu_mul: false,
            residual: false,
        };
        /// Stage names in the order they apply (the order of the extra inputs, too).
        pub const STAGES: [&'static str; 4] = ["scale", "bias", "silu_mul", "residual"];

        /// Whether any stage is on.
        pub fn any(&self) -> bool {
            self.scale || self.bias || self.silu_mul || self.residual
        }

        /// The stages' flags in [`Epilogue::STAGES`] order.
        pub fn flags(&self) -> [bool; 4] {
            [self.scale, self.bias, self.silu_mul, self.residual]
        }
    }

    impl fmt::Display for Epilogue {
        /// The stages that are on, joined by `+` (`scale+bias`), or `none`.
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let on: Vec<&str> = Self::STAGES
                .into_iter()
                .zip(self.flags())
                .filter_map(|(name, on)| on.then_some(name))
                .collect();
            if on.is_empty() {
                f.write_str("none")
            } else {
                f.write_str(&on.join("+"))
            }
        }
    }

    /// `C = A·B` followed by `epilogue` ([`Epilogue`]: `scale`, `bias`, `silu_mul`,
    /// `residual`, in that order). Inputs in order: a, b, then `scale` (one value), `bias`,
    /// `up`, `residual`, each when present.
    pub fn matmul_epilogue(m: usize, n: usize, k: usize, epilogue: Epilogue) -> Result<Expr> {
        matmul_general(m, n, k, (k, 1), n, epilogue)
    }

    /// Matmul where `A[m, k]` is at `m * a_row + k * a_col` (so `a_col = m_len, a_row = 1` reads a
    /// transposed A), `B[k, n]` at `k * ldb + n`, and `C` row-major.
    pub fn matmul_strided(
        m: usize,
        n: usize,
        k: usize,
        a_row: usize,
        a_col: usize,
        ldb: usize,
    ) -> Result<Expr> {
        matmul_general(m, n, k, (a_row, a_col), ldb, Epilogue::NONE)
    }

    /// The matmul family in one builder: `A[m, k]` at `m * a_row + k * a_col`, `B[k, n]` at
    /// `k * ldb + n`, `C` row-major, then the [`Epilogue`]'s stages in its order. Inputs in
    /// order: a, b, then `scale` (one value), `bias` (`n`), `up` (`m x n`) and `residual`
    /// (`m x n`), each when present. Nodes: `%0 = A`, `%1 = B`, `%2 = mul`, `%3 = reduce`,
    /// then per stage: `Mul(t, read scale[])`; `Add(t, read bias[n])`;
    /// `Mul(Unary(Silu, t), read up[m, n])`; `Add(t, read residual[m, n])`.
    pub fn matmul_general(
        m: usize,
        n: usize,
        k: usize,
        (a_row, a_col): (usize, usize),
        ldb: usize,
        epilogue: Epilogue,
    ) -> Result<Expr> {
        let mut b = Builder::new();
        let (vm, vn, vk) = (b.var("m", m), b.var("n", n), b.var("k", k));
        let a_len = if m == 0 || k == 0 {
            0
        } else {
            (m - 1) * a_row + (k - 1) * a_col + 1
        };
        let ia = b.input("a", Storage::F32, a_len);
        let ib = b.input(
            "b",
            Storage::F32,
            if k == 0 { 0 } else { (k - 1) * ldb + n },
        );
        let ra = b.read(ia, &[vm, vk], 0, &[a_row as isize, a_col as isize]);
        let rb = b.read(ib, &[vk, vn], 0, &[ldb as isize, 1]);
        let p = b.binary(BinaryOp::Mul, ra, rb);
        let mut c = b.reduce(ReduceOp::Add, p, &[vm, vn]);
        if epilogue.scale {
            let i = b.input("scale", Storage::F32, 1);
            let r = b.read(i, &[], 0, &[]);
            c = b.binary(BinaryOp::Mul, c, r);
        }
        if epilogue.bias {
            let i = b.input("bias", Storage::F32, n);
            let r = b.read(i, &[vn], 0, &[1]);
            c = b.binary(BinaryOp::Add, c, r);
        }
        if epilogue.silu_mul {
            let i = b.input("up", Storage::F32, m * n);
            let r = b.read(i, &[vm, vn], 0, &[n as isize, 1]);
            let g = b.unary(UnaryOp::Silu, c);
            c = b.binary(BinaryOp::Mul, g, r);
        }
        if epilogue.residual {
            let i = b.input("residual", Storage::F32, m * n);
            let r = b.read(i, &[vm, vn], 0, &[n as isize, 1]);
            c = b.binary(BinaryOp::Add, c, r);
        }
        b.finish(c, 0, &[n as isize, 1], m * n)
    }

    /// `C[m, n] = sum_k x[m, k] * w[n, k]`: f32 activations `x` (`m x k`, row-major) times
    /// weights `w` stored as `ty` (`n x k`, row-major; each row is one output's weights, as
    /// in model files). Inputs in order: x, w. Nodes: `%0 = x`, `%1 = w`, `%2 = mul`,
    /// `%3 = reduce` over `k` (one fma per point, `k` increasing, from 0.0).
    pub fn matmul_wt(ty: FloatType, m: usize, n: usize, k: usize) -> Result<Expr> {
        let mut b = Builder::new();
        let (vm, vn, vk) = (b.var("m", m), b.var("n", n), b.var("k", k));
        let ix = b.input("x", Storage::F32, m * k);
        let iw = b.input("w", ty.storage(), n * k);
        let x = b.read(ix, &[vm, vk], 0, &[k as isize, 1]);
        let w = b.read(iw, &[vn, vk], 0, &[k as isize, 1]);
        let p = b.binary(BinaryOp::Mul, x, w);
        let c = b.reduce(ReduceOp::Add, p, &[vm, vn]);
        b.finish(c, 0, &[n as isize, 1], m * n)
    }

    /// Quantized matmul in int8 dot-product form: `W` is `n` rows of `k/32` blocks of type `wq`,
    /// `X` is `m` rows of [`QuantType::Q8Act`] blocks (activations quantized per block of 32),
    /// `C[m, n] = sum_kb (d_w d_x) * sum_lane(code_w * code_x)` (+ `sum_kb m_w * s_x` for Q4_1).
    pub fn qmatmul(wq: QuantType, m: usize, n: usize, k: usize) -> Result<Expr> {
        if k % 32 != 0 {
            return Err(Error::BadShape {
                op: "qmatmul",
                reason: format!("k = {k} is not a multiple of 32"),
            });
        }
        let nb = k / 32;
        let mut b = Builder::new();
        let (vm, vn, vb, vl) = (
            b.var("m", m),
            b.var("n", n),
            b.var("kb", nb),
            b.var("kl", 32),
        );
        let iw = b.input("w", Storage::Quant(wq), n * nb);
        let ix = b.input("x", Storage::Quant(QuantType::Q8Act), m * nb);
        let cw = b.read_quant(iw, QuantPart::Code, &[vn, vb, vl], nb);
        let cx = b.read_quant(ix, QuantPart::Code, &[vm, vb, vl], nb);
        let p = b.binary(BinaryOp::Mul, cw, cx);
        let s = b.reduce(ReduceOp::Add, p, &[vm, vn, vb]);
        let sf = b.to_f32(s);
        let dw = b.read_quant(iw, QuantPart::Scale, &[vn, vb], nb);
        let dx = b.read_quant(ix, QuantPart::Scale, &[vm, vb], nb);
        let dd = b.binary(BinaryOp::Mul, dw, dx);
        let t = b.binary(BinaryOp::Mul, sf, dd);
        let mut out = b.reduce(ReduceOp::Add, t, &[vm, vn]);
        if wq.has_min() {
            let mw = b.read_quant(iw, QuantPart::Min, &[vn, vb], nb);
            let sx = b.read_quant(ix, QuantPart::Min, &[vm, vb], nb);
            let u = b.binary(BinaryOp::Mul, mw, sx);
            let r = b.reduce(ReduceOp::Add, u, &[vm, vn]);
            out = b.binary(BinaryOp::Add, out, r);
        }
        b.finish(out, 0, &[n as isize, 1], m * n)
    }

    /// RMSNorm of `m` rows of `d`: `y = (x * rsqrt(sum(x^2) / d + eps)) * w`, the kernels'
    /// arithmetic (`RowOp::RmsNorm`). Inputs in order: `x` (`m x d`, row-major), `w` (`d`),
    /// `eps` (one value, a run-time argument of the kernel). Nodes: `%0 = x`, `%1 = w`,
    /// `%2 = x * x`, `%3 = reduce` over `i` (one fma per point), `%4 = d`, `%5 = %3 / d`,
    /// `%6 = eps`, `%7 = %5 + eps`, `%8 = rsqrt`, `%9 = x * %8`, `%10 = %9 * w`.
    pub fn rms_norm(m: usize, d: usize) -> Result<Expr> {
        let mut b = Builder::new();
        let (vm, vi) = (b.var("m", m), b.var("i", d));
        let ix = b.input("x", Storage::F32, m * d);
        let iw = b.input("w", Storage::F32, d);
        let ieps = b.input("eps", Storage::F32, 1);
        let x = b.read(ix, &[vm, vi], 0, &[d as isize, 1]);
        let w = b.read(iw, &[vi], 0, &[1]);
        let sq = b.binary(BinaryOp::Mul, x, x);
        let ss = b.reduce(ReduceOp::Add, sq, &[vm]);
        let n = b.constant(d as f32);
        let mean = b.binary(BinaryOp::Div, ss, n);
        let e = b.read(ieps, &[], 0, &[]);
        let var = b.binary(BinaryOp::Add, mean, e);
        let r = b.unary(UnaryOp::Rsqrt, var);
        let xr = b.binary(BinaryOp::Mul, x, r);
        let y = b.binary(BinaryOp::Mul, xr, w);
        b.finish(y, 0, &[d as isize, 1], m * d)
    }

    /// `y = x + y'` over `n` values (`RowOp::AddInPlace`). Inputs: `x`, `y`. Nodes: `%0 = x`,
    /// `%1 = y`, `%2 = x + y`.
    pub fn add(n: usize) -> Result<Expr> {
        let mut b = Builder::new();
        let vi = b.var("i", n);
        let ix = b.input("x", Storage::F32, n);
        let iy = b.input("y", Storage::F32, n);
        let x = b.read(ix, &[vi], 0, &[1]);
        let y = b.read(iy, &[vi], 0, &[1]);
        let s = b.binary(BinaryOp::Add, x, y);
        b.finish(s, 0, &[1], n)
    }

    /// `y = silu(g) * u` over `n` values, the Llama MLP gate (`RowOp::SiluMul`). Inputs: `g`,
    /// `u`. Nodes: `%0 = g`, `%1 = u`, `%2 = silu(g)`, `%3 = %2 * u`.
    pub fn silu_mul(n: usize) -> Result<Expr> {
        let mut b = Builder::new();
        let vi = b.var("i", n);
        let ig = b.input("g", Storage::F32, n);
        let iu = b.input("u", Storage::F32, n);
        let g = b.read(ig, &[vi], 0, &[1]);
        let u = b.read(iu, &[vi], 0, &[1]);
        let s = b.unary(UnaryOp::Silu, g);
        let y = b.binary(BinaryOp::Mul, s, u);
        b.finish(y, 0, &[1], n)
    }

    /// `y = exp((x - shift) * scale)` over `n` values, softmax weights (`RowOp::ExpShifted`).
    /// Inputs: `x`, `shift` and `scale` (one value each, run-time arguments of the kernel).
    /// Nodes: `%0 = x`, `%1 = shift`, `%2 = x - shift`, `%3 = scale`, `%4 = %2 * scale`,
    /// `%5 = exp`.
    pub fn exp_shifted(n: usize) -> Result<Expr> {
        let mut b = Builder::new();
        let vi = b.var("i", n);
        let ix = b.input("x", Storage::F32, n);
        let ishift = b.input("shift", Storage::F32, 1);
        let iscale = b.input("scale", Storage::F32, 1);
        let x = b.read(ix, &[vi], 0, &[1]);
        let shift = b.read(ishift, &[], 0, &[]);
        let z = b.binary(BinaryOp::Sub, x, shift);
        let scale = b.read(iscale, &[], 0, &[]);
        let t = b.binary(BinaryOp::Mul, z, scale);
        let e = b.unary(UnaryOp::Exp, t);
        b.finish(e, 0, &[1], n)
    }

    /// Row softmax over `m` rows of `d`: `e = exp(x - max(x))`, `y = e / sum(e)`.
    pub fn softmax(m: usize, d: usize) -> Result<Expr> {
        let mut b = Builder::new();
        let (vm, vi) = (b.var("m", m), b.var("i", d));
        let ix = b.input("x", Storage::F32, m * d);
        let x = b.read(ix, &[vm, vi], 0, &[d as isize, 1]);
        let mx = b.reduce(ReduceOp::Max, x, &[vm]);
        let z = b.binary(BinaryOp::Sub, x, mx);
        let e = b.unary(UnaryOp::Exp, z);
        let s = b.reduce(ReduceOp::Add, e, &[vm]);
        let y = b.binary(BinaryOp::Div, e, s);
        b.finish(y, 0, &[d as isize, 1], m * d)
    }

    /// Softmax numerators and row sums of `m` rows of `n` values, row `r` at `x[r * stride..]`
    /// (`RowOp::Softmax`, attention's softmax; the caller divides): the output is the sums
    /// `s[m] = sum_i e[m, i]`, and node `%3` holds the numerators `e = exp(x - max(x))` that
    /// the kernel writes in place ([`crate::interp::run_nodes`] reads them). Input: `x`.
    /// Nodes: `%0 = x`, `%1 = max` over `i`, `%2 = x - %1`, `%3 = exp`, `%4 = sum` over `i`.
    /// Rows must not overlap (`stride >= n` when `m > 1`).
    pub fn softmax_rows(m: usize, n: usize, stride: usize) -> Result<Expr> {
        if m > 1 && stride < n {
            return Err(Error::BadShape {
                op: "softmax_rows",
                reason: format!("rows of {n} at a stride of {stride} overlap"),
            });
        }
        let len = match m {
            0 => 0,
            _ => (m - 1) * stride + n,
        };
        let mut b = Builder::new();
        let (vm, vi) = (b.var("m", m), b.var("i", n));
        let ix = b.input("x", Storage::F32, len);
        let x = b.read(ix, &[vm, vi], 0, &[stride as isize, 1]);
        let mx = b.reduce(ReduceOp::Max, x, &[vm]);
        let z = b.binary(BinaryOp::Sub, x, mx);
        let e = b.unary(UnaryOp::Exp, z);
        let s = b.reduce(ReduceOp::Add, e, &[vm]);
        b.finish(s, 0, &[1], m)
    }

    /// Attention with an additive mask: for head `h`, query row `i`, key row `j`:
    /// `s = (sum_d q[h,i,d] k[h,j,d]) * scale + mask[i,j]`, `p = softmax_j(s)`,
    /// `out[h,i,e] = sum_j p v[h,j,e]`. A tree mask is 0 where row `i` may see key `j` (the
    /// committed prefix, itself and its ancestors) and -inf elsewhere ([`crate::kernel::portable::tree_mask`]).
    /// q is `[h, n_q, d]`, k and v are `[h, n_kv, d]`, all row-major.
    pub fn attention(
        n_heads: usize,
        n_q: usize,
        n_kv: usize,
        d: usize,
        scale: f32,
    ) -> Result<Expr> {
        let mut b = Builder::new();
        let (vh, vi, vj, vd, ve) = (
            b.var("h", n_heads),
            b.var("i", n_q),
            b.var("j", n_kv),
            b.var("d", d),
            b.var("e", d),
        );
        let iq = b.input("q", Storage::F32, n_heads * n_q * d);
        let ik = b.input("k", Storage::F32, n_heads * n_kv * d);
        let iv = b.input("v", Storage::F32, n_heads * n_kv * d);
        let im = b.input("mask", Storage::F32, n_q * n_kv);
        let (dq, dk) = ((n_q * d) as isize, (n_kv * d) as isize);
        let q = b.read(iq, &[vh, vi, vd], 0, &[dq, d as isize, 1]);
        let k = b.read(ik, &[vh, vj, vd], 0, &[dk, d as isize, 1]);
        let qk = b.binary(BinaryOp::Mul, q, k);
        let s = b.reduce(ReduceOp::Add, qk, &[vh, vi, vj]);
        let c = b.constant(scale);
        let t = b.binary(BinaryOp::Mul, s, c);
        let mask = b.read(im, &[vi, vj], 0, &[n_kv as isize, 1]);
        let u = b.binary(BinaryOp::Add, t, mask);
        let mx = b.reduce(ReduceOp::Max, u, &[vh, vi]);
        let z = b.binary(BinaryOp::Sub, u, mx);
        let ex = b.unary(UnaryOp::Exp, z);
        let den = b.reduce(ReduceOp::Add, ex, &[vh, vi]);
        let p = b.binary(BinaryOp::Div, ex, den);
        let v = b.read(iv, &[vh, vj, ve], 0, &[dk, d as isize, 1]);
        let pv = b.binary(BinaryOp::Mul, p, v);
        let out = b.reduce(ReduceOp::Add, pv, &[vh, vi, ve]);
        b.finish(out, 0, &[dq, d as isize, 1], n_heads * n_q * d)
    }

    /// `Y[m, n] = sum_k dequant(W)[n, k] * X[m, k]`: dequantize-then-dot form, reference for the
    /// int8 form's approximation error.
    pub fn dequant_matmul(wq: QuantType, m: usize, n: usize, k: usize) -> Result<Expr> {
        let nb = k.div_ceil(32);
        let mut b = Builder::new();
        let (vm, vn, vk) = (b.var("m", m), b.var("n", n), b.var("k", k));
        let iw = b.input("w", Storage::Quant(wq), n * nb);
        let ix = b.input("x", Storage::F32, m * k);
        let w = b.read_quant(iw, QuantPart::Value, &[vn, vk], nb);
        let x = b.read(ix, &[vm, vk], 0, &[k as isize, 1]);
        let p = b.binary(BinaryOp::Mul, x, w);
        let c = b.reduce(ReduceOp::Add, p, &[vm, vn]);
        b.finish(c, 0, &[n as isize, 1], m * n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_out_of_bounds_are_rejected() {
        let mut b = Builder::new();
        let (m, k) = (b.var("m", 4), b.var("k", 5));
        let a = b.input("a", Storage::F32, 19);
        let r = b.read(a, &[m, k], 0, &[5, 1]);
        let err = b.finish(r, 0, &[5, 1], 20).unwrap_err();
        assert_eq!(
            err,
            Error::ViewOutOfBounds {
                tensor: "a".into(),
                reach: 19,
                len: 19
            }
        );
        assert_eq!(
            err.to_string(),
            "\"a\": view reaches element 19 but the buffer holds 19"
        );
    }

    #[test]
    fn negative_strides_and_transposes_are_checked() {
        let mut b = Builder::new();
        let i = b.var("i", 4);
        let a = b.input("a", Storage::F32, 4);
        let rev = b.read(a, &[i], 3, &[-1]);
        assert!(b.finish(rev, 0, &[1], 4).is_ok(), "reversed view fits");
        let mut b = Builder::new();
        let i = b.var("i", 4);
        let a = b.input("a", Storage::F32, 4);
        let rev = b.read(a, &[i], 2, &[-1]);
        assert!(matches!(
            b.finish(rev, 0, &[1], 4),
            Err(Error::ViewOutOfBounds { reach: -1, .. })
        ));
    }

    #[test]
    fn ill_typed_nodes_are_rejected() {
        let e = library::qmatmul(QuantType::Q4_1, 2, 3, 64).unwrap();
        // Mixing the integer dot with a float scale without ToF32.
        let mut bad = e.clone();
        bad.nodes[7].op = Op::Binary(BinaryOp::Mul, NodeId(3), NodeId(6));
        let err = bad.verify().unwrap_err();
        assert!(matches!(err, Error::BadNode { node: 7, .. }), "{err}");
        // A node that refers forward.
        let mut bad = e.clone();
        bad.nodes[2].op = Op::Binary(BinaryOp::Mul, NodeId(0), NodeId(5));
        assert!(matches!(
            bad.verify().unwrap_err(),
            Error::DanglingRef {
                node: 2,
                what: "node",
                index: 5
            }
        ));
        // A reduce keeping a variable its argument does not have.
        let mut bad = e;
        bad.nodes[3].op = Op::Reduce {
            op: ReduceOp::Add,
            arg: NodeId(2),
            keep: vec![VarId(0), VarId(1), VarId(7)],
        };
        assert!(bad.verify().is_err());
    }

    #[test]
    fn quant_reads_check_arity_and_lane_extent() {
        let mut b = Builder::new();
        let (n, kb, kl) = (b.var("n", 2), b.var("kb", 2), b.var("kl", 16));
        let w = b.input("w", Storage::Quant(QuantType::Q4_0), 4);
        let c = b.read_quant(w, QuantPart::Code, &[n, kb, kl], 2);
        let f = b.to_f32(c);
        let err = b.finish(f, 0, &[32, 16, 1], 64).unwrap_err();
        assert!(err.to_string().contains("extent 32"), "{err}");
        let mut b = Builder::new();
        let (n, kb) = (b.var("n", 2), b.var("kb", 2));
        let w = b.input("w", Storage::Quant(QuantType::Q4_0), 4);
        let m = b.read_quant(w, QuantPart::Min, &[n, kb], 2);
        let err = b.finish(m, 0, &[2, 1], 4).unwrap_err();
        assert!(err.to_string().contains("no min"), "{err}");
    }

    #[test]
    fn interpreter_matches_naive_dequantized_dot() {
        // The int8 form approximates the dequantized dot product; checks the IR wiring.
        let (m, n, k) = (2, 5, 64);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let wf: Vec<f32> = (0..n * k)
            .map(|i| ((i * 53) % 29) as f32 / 14.0 - 1.0)
            .collect();
        for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            let w = crate::quant::quantize_ggml(ty, &wf);
            let mut xq = vec![0u8; m * k / 32 * 48];
            crate::quant::quantize_q8act(&x, k, &mut xq);
            let e = library::qmatmul(ty, m, n, k).unwrap();
            let mut y = vec![0f32; m * n];
            crate::interp::run(
                &e,
                &crate::Schedule::naive(&e),
                &[
                    crate::interp::Buffer::Quant(&w),
                    crate::interp::Buffer::Quant(&xq),
                ],
                &mut y,
            )
            .unwrap();
            let d = library::dequant_matmul(ty, m, n, k).unwrap();
            let mut want = vec![0f32; m * n];
            crate::interp::run(
                &d,
                &crate::Schedule::naive(&d),
                &[
                    crate::interp::Buffer::Quant(&w),
                    crate::interp::Buffer::F32(&x),
                ],
                &mut want,
            )
            .unwrap();
            for (g, w) in y.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 0.02 * (1.0 + w.abs()),
                    "{ty}: int8 form {g} vs dequantized {w}"
                );
            }
        }
    }
}
