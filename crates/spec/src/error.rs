//! Errors of speculative decoding.

use std::path::PathBuf;

/// What went wrong setting up or running speculative decoding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target (or draft) model rejected a forward.
    #[error(transparent)]
    Model(#[from] peregrine_model::Error),
    /// A tree file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The tree file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tree description is malformed.
    #[error("{origin}:{line}: {msg} (expected one path per line: child ranks separated by commas, e.g. `0,1`; `#` starts a comment)")]
    TreeSyntax {
        /// File name, or the preset/flag the text came from.
        origin: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// A tree has more nodes than one forward can verify.
    #[error("a token tree of {n_nodes} nodes (root included) exceeds the limit of {max} nodes")]
    TreeTooLarge {
        /// Nodes requested.
        n_nodes: usize,
        /// The limit.
        max: usize,
    },
    /// A node's parent is not an earlier node.
    #[error("tree node {node} has parent {parent}, which is not an earlier node")]
    BadParent {
        /// The node.
        node: usize,
        /// Its parent.
        parent: usize,
    },
    /// A tree flag could not be parsed.
    #[error("bad tree spec {spec:?}: {msg} (expected chain:N, eagle-default, dynamic:BUDGET,DEPTH,TOPK, auto, or a tree file)")]
    TreeSpec {
        /// The text given.
        spec: String,
        /// What is wrong.
        msg: String,
    },
    /// The LayerSkip exit layer is outside the model.
    #[error("exit layer {exit_layer} is out of range: the model has {n_layers} layers, so use 1..={max}", max = n_layers - 1)]
    ExitLayer {
        /// Layer requested.
        exit_layer: usize,
        /// Layers of the model.
        n_layers: usize,
    },
    /// The draft model's vocabulary differs from the target's.
    #[error("the draft model has a vocabulary of {draft} tokens but the target has {target}; a draft model must share the target's tokenizer")]
    VocabMismatch {
        /// Draft vocabulary size.
        draft: usize,
        /// Target vocabulary size.
        target: usize,
    },
    /// A bad generation request (empty prompt, prompt too long, bad sampling parameters).
    #[error("{0}")]
    InvalidRequest(String),
}

/// Result of speculative decoding operations.
pub type Result<T> = std::result::Result<T, Error>;
