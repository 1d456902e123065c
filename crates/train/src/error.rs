//! The crate's one error type.

/// Errors from building a graph, running backward, the optimizer and checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Operand shapes do not fit the op.
    #[error("{op}: shape mismatch: {reason}")]
    Shape {
        /// The op that checked.
        op: &'static str,
        /// What did not fit, with the values.
        reason: String,
    },
    /// A buffer has the wrong number of elements.
    #[error("{what}: expected {want} elements, got {got}")]
    BufferLen {
        /// Which buffer.
        what: String,
        /// Elements expected.
        want: usize,
        /// Elements given.
        got: usize,
    },
    /// A token id or index is out of range.
    #[error("{op}: index {index} out of range (size {size})")]
    Index {
        /// The op that checked.
        op: &'static str,
        /// The offending index.
        index: usize,
        /// The size it must be below.
        size: usize,
    },
    /// A parameter name is unknown or already taken.
    #[error("parameter {name:?}: {reason}")]
    Param {
        /// The parameter name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A value is out of its valid range (a configuration, a scalar argument).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was checked.
        what: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A kernel from `peregrine-loops` failed to compile or run.
    #[error("kernel: {0}")]
    Kernel(#[from] peregrine_loops::Error),
    /// A safetensors file could not be read or written.
    #[error("safetensors {path}: {reason}")]
    Safetensors {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a shape error.
pub(crate) fn shape_err(op: &'static str, reason: impl Into<String>) -> Error {
    Error::Shape {
        op,
        reason: reason.into(),
    }
}
