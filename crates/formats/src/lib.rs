#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod config;
mod error;
pub mod ggml_type;
pub mod gguf;
pub mod gguf_writer;
mod mmap;
pub mod names;
pub mod quant;
pub mod safetensors_io;

pub use config::{ModelConfig, RopeScaling};
pub use error::{Error, Result};
pub use ggml_type::GgmlType;
pub use gguf::{GgufFile, MetadataValue, StringArray, TensorInfo};
pub use gguf_writer::GgufWriter;
