//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong building a tokenizer, encoding, decoding or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `tokenizer.ggml.model` names a tokenizer family we do not implement.
    #[error("tokenizer model {model:?} is not supported (supported: \"gpt2\", byte-level BPE)")]
    UnsupportedModel {
        /// The model name from the file.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer we do not implement.
    #[error(
        "pre-tokenizer {pre:?} is not supported (supported: smollm, gpt2, llama-bpe/llama3, qwen2, \
         and their llama.cpp aliases)"
    )]
    UnsupportedPreTokenizer {
        /// The pre-tokenizer name from the file.
        pre: String,
    },
    /// A metadata key the tokenizer needs is absent.
    #[error("tokenizer metadata key {key:?} is missing")]
    MissingKey {
        /// The GGUF key.
        key: &'static str,
    },
    /// The vocabulary is empty or too large for 32-bit ids.
    #[error("vocabulary has {n_tokens} tokens; expected 1..=2^31")]
    BadVocabSize {
        /// Number of tokens in the file.
        n_tokens: usize,
    },
    /// `token_types` does not have one entry per token.
    #[error("token_type has {n_types} entries for {n_tokens} tokens")]
    TokenTypeCount {
        /// Entries in `tokenizer.ggml.token_type`.
        n_types: usize,
        /// Entries in `tokenizer.ggml.tokens`.
        n_tokens: usize,
    },
    /// A special token id (bos, eos, eot, ...) lies outside the vocabulary.
    #[error("{what} token id {id} is outside the vocabulary of {vocab_size}")]
    SpecialIdOutOfRange {
        /// Which special token.
        what: &'static str,
        /// The id from the file.
        id: u64,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// A token id passed to `decode` (or the like) is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    UnknownTokenId {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab_size: usize,
    },
    /// `add_bos` was requested but the tokenizer has no BOS token.
    #[error("add_bos was requested but the tokenizer has no BOS token")]
    NoBosToken,
    /// The HF `tokenizers` BPE model rejected the vocabulary or merges.
    #[error("building the BPE model: {0}")]
    Bpe(String),
    /// A line of a tiktoken file is malformed.
    #[error("{path}:{line_no}: {problem}")]
    TiktokenLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line_no: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Reading GGUF metadata failed.
    #[error("reading tokenizer metadata: {0}")]
    Gguf(#[from] peregrine_formats::Error),
    /// A GGUF metadata value has a shape we cannot use.
    #[error("tokenizer metadata key {key:?}: {problem}")]
    BadKey {
        /// The GGUF key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A chat template failed to parse or render.
    #[error("chat template: {0:#}")]
    Template(#[from] minijinja::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
