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
    /// A draft-head file could not be opened or parsed.
    #[error(transparent)]
    Format(#[from] peregrine_formats::Error),
    /// A draft-head kernel rejected its operands.
    #[error(transparent)]
    Kernel(#[from] peregrine_tensor::Error),
    /// The file holds neither an EAGLE-3 nor an EAGLE-1 head.
    #[error("{path}: not an EAGLE head: it has neither `midlayer.self_attn.q_proj.weight` (EAGLE-3) nor `layers.0.self_attn.q_proj.weight` (EAGLE-1)")]
    NotEagleHead {
        /// The head file.
        path: PathBuf,
    },
    /// A tensor the head format requires is absent.
    #[error("{path}: {format} head lacks tensor {name:?}")]
    HeadTensorMissing {
        /// The head file.
        path: PathBuf,
        /// `EAGLE-3` or `EAGLE-1`.
        format: &'static str,
        /// The tensor.
        name: String,
    },
    /// A head tensor's shape does not fit the target model.
    #[error("{path}: tensor {name:?} has shape {got:?}, expected {expected:?} ({why})")]
    HeadShape {
        /// The head file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Shape found.
        got: Box<[usize]>,
        /// Shape the target implies.
        expected: Box<[usize]>,
        /// Where the expected sizes come from.
        why: String,
    },
    /// A head tensor has an element type the loader does not take.
    #[error("{path}: tensor {name:?} has dtype {dtype}, expected {expected}")]
    HeadDtype {
        /// The head file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Dtype found.
        dtype: String,
        /// Dtypes accepted.
        expected: &'static str,
    },
    /// The draft-to-target vocabulary maps (`d2t`, `t2d`) are inconsistent with each other or
    /// with the target's vocabulary.
    #[error("{path}: vocabulary map {name:?}: {msg}")]
    HeadVocabMap {
        /// The head file.
        path: PathBuf,
        /// `d2t` or `t2d`.
        name: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A `__metadata__` entry of the head cannot be used.
    #[error("{path}: metadata {key:?} = {value:?}: {msg}")]
    HeadMetadata {
        /// The head file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        msg: String,
    },
    /// The head was loaded for a different target than the one it is used with.
    #[error("the EAGLE head was loaded for a target with hidden size {head_hidden} and vocabulary {head_vocab}, but the model has {model_hidden} and {model_vocab}")]
    HeadTargetMismatch {
        /// Hidden size the head was checked against.
        head_hidden: usize,
        /// Vocabulary the head was checked against.
        head_vocab: usize,
        /// The model's hidden size.
        model_hidden: usize,
        /// The model's vocabulary.
        model_vocab: usize,
    },
}

/// Result of speculative decoding operations.
pub type Result<T> = std::result::Result<T, Error>;
