//! Errors of model loading and evaluation.

use std::path::PathBuf;

/// What went wrong loading or running a model. Messages name the file, tensor or sizes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model file could not be read or parsed.
    #[error(transparent)]
    Format(#[from] peregrine_formats::Error),
    /// The tokenizer could not be built or used.
    #[error(transparent)]
    Tokenizer(#[from] peregrine_tokenizer::Error),
    /// A kernel rejected its operands.
    #[error(transparent)]
    Kernel(#[from] peregrine_tensor::Error),
    /// The file describes an architecture this engine does not run.
    #[error("{path}: architecture {architecture:?} is not supported (supported: llama)")]
    UnsupportedArchitecture {
        /// The model file.
        path: PathBuf,
        /// `general.architecture`.
        architecture: String,
    },
    /// A tensor required by the architecture is missing.
    #[error("{path}: missing tensor {name:?}")]
    MissingTensor {
        /// The model file.
        path: PathBuf,
        /// Its name in the file's convention.
        name: String,
    },
    /// A tensor's shape disagrees with the model config.
    #[error("{path}: tensor {name:?} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The model file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Shape in the file (innermost first, as GGUF lists dims).
        got: Vec<u64>,
        /// Shape the config implies.
        expected: Vec<u64>,
    },
    /// A request that cannot be served: too long for the context, a bad token id, a bad tree.
    #[error("{0}")]
    InvalidRequest(String),
}

/// Result of model operations.
pub type Result<T> = std::result::Result<T, Error>;
