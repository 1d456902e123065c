//! The crate's one error type.

use crate::ir::NodeId;

/// Everything that can go wrong when building, scheduling, compiling or running a kernel.
// Field names say what they hold; the variant docs and messages say the rest.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// An IR node refers to a node, variable or input that does not exist (or comes later).
    #[error("node {node}: {what} {index} does not exist (or is not defined before the node)")]
    DanglingRef {
        node: usize,
        what: &'static str,
        index: usize,
    },
    /// An IR node is ill-typed or ill-formed.
    #[error("node {node} ({op}): {reason}")]
    BadNode {
        node: usize,
        op: &'static str,
        reason: String,
    },
    /// A view would read or write outside its buffer.
    #[error("{tensor:?}: view reaches element {reach} but the buffer holds {len}")]
    ViewOutOfBounds {
        tensor: String,
        reach: i64,
        len: usize,
    },
    /// A schedule names a node the expression does not have.
    #[error("schedule has {got} node schedules but the expression has {want} nodes")]
    ScheduleArity { got: usize, want: usize },
    /// A loop uses a variable outside the node's iteration space.
    #[error("node {node}: loop {loop_idx} uses variable {var:?}, which node {node} does not iterate over (it iterates {space:?})")]
    UnknownVar {
        node: NodeId,
        loop_idx: usize,
        var: String,
        space: Vec<String>,
    },
    /// A variable of the iteration space is never looped over (or not down to step 1).
    #[error(
        "node {node}: variable {var:?} has no loop with step 1, so not every point is visited"
    )]
    MissingVar { node: NodeId, var: String },
    /// Splits of one variable must have strictly decreasing steps, outer to inner.
    #[error("node {node}: loop {loop_idx} over {var:?} has step {step}, not smaller than the enclosing step {outer_step} of the same variable")]
    BadSplitOrder {
        node: NodeId,
        loop_idx: usize,
        var: String,
        step: usize,
        outer_step: usize,
    },
    /// A split that neither divides its chunk nor allows a tail.
    #[error("node {node}: loop {loop_idx} splits {var:?} chunks of {chunk} into steps of {step}, which does not divide and the loop allows no tail (use a masked tail)")]
    SplitNoTail {
        node: NodeId,
        loop_idx: usize,
        var: String,
        chunk: usize,
        step: usize,
    },
    /// An annotation that cannot apply where it is.
    #[error("node {node}: loop {loop_idx} over {var:?}: {reason}")]
    BadAnnotation {
        node: NodeId,
        loop_idx: usize,
        var: String,
        reason: String,
    },
    /// A fusion that does not make sense.
    #[error("node {node}: cannot fuse into node {into}: {reason}")]
    BadFusion {
        node: NodeId,
        into: NodeId,
        reason: String,
    },
    /// Fusion edges form a cycle.
    #[error("fusion cycle through nodes {cycle:?}")]
    FusionCycle { cycle: Vec<NodeId> },
    /// A register tile that needs more vector registers than the ISA has.
    #[error("register tile {rows}x{vectors} vectors needs {needed} vector registers but {isa} has {available}")]
    RegisterTileTooLarge {
        rows: usize,
        vectors: usize,
        needed: usize,
        available: usize,
        isa: String,
    },
    /// The schedule is valid, but this backend cannot lower it.
    #[error("{backend} cannot lower this schedule: {reason}")]
    Unsupported {
        backend: &'static str,
        reason: String,
    },
    /// A schedule could not be parsed from text.
    #[error("schedule text {text:?}: {reason}")]
    ParseSchedule { text: String, reason: String },
    /// A buffer passed to a kernel or the interpreter has the wrong length.
    #[error("{what}: expected {want} elements, got {got}")]
    BufferLen {
        what: String,
        want: usize,
        got: usize,
    },
    /// An input buffer has the wrong storage type.
    #[error("input {name:?}: expected {want}, got {got}")]
    InputType {
        name: String,
        want: String,
        got: String,
    },
    /// The CPU lacks the instruction set a kernel was compiled for.
    #[error("this CPU lacks {isa}, which the kernel was compiled for")]
    IsaUnavailable { isa: String },
    /// The assembler rejected the generated code (a compiler bug).
    #[error("assembler: {0}")]
    Assemble(String),
    /// Mapping or protecting executable memory failed.
    #[error("executable memory: {op} failed: {errno}")]
    ExecMem { op: &'static str, errno: String },
    /// A shape that the kernel cannot take.
    #[error("{op}: {reason}")]
    BadShape { op: &'static str, reason: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn bad_node(node: usize, op: &'static str, reason: impl Into<String>) -> Self {
        Error::BadNode {
            node,
            op,
            reason: reason.into(),
        }
    }
}
