#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
pub mod generate;
pub mod kv_cache;
pub mod model;
pub mod sampling;
pub mod stop;
pub mod weights;

pub use error::{Error, Result};
pub use generate::{GenerateParams, Generation, Session, StopReason};
pub use kv_cache::KvCache;
pub use model::{ForwardOptions, LoadOptions, LogitRows, Model, SeqInput, Workspace};
pub use sampling::{Sampler, SamplingParams};
pub use stop::StopScanner;
