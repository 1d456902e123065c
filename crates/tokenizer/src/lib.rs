#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod chat;
mod error;
mod gguf;
mod pretokenize;
mod rank_bpe;
mod special;
mod stream;
mod tokenizer;
mod unicode;
mod unicode_data;

pub use chat::{ChatMessage, ChatTemplate};
pub use error::{Error, Result};
pub use pretokenize::PreTokenizerKind;
pub use stream::StreamDecoder;
pub use tokenizer::{EncodeOptions, TokenType, Tokenizer, TokenizerSpec};
