#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod controller;
pub mod drafter;
pub mod eagle;
mod early_exit;
pub mod engine;
mod error;
pub mod model_drafter;
pub mod ngram;
pub mod tree;
mod tree_search;
pub mod verify;

pub use controller::Controller;
pub use drafter::{DraftPlan, Drafter, LayerSkipDrafter, NoDrafter};
pub use eagle::{EagleDrafter, EagleHead, EagleKind, HeadOptions};
pub use engine::{SpecGeneration, SpecSession, SpecStats, TreeSpec};
pub use error::{Error, Result};
pub use model_drafter::ModelDrafter;
pub use ngram::{NgramConfig, NgramDrafter};
pub use tree::{TokenTree, TreeShape, MAX_TREE_NODES};
pub use verify::{sample_from, verify_children, walk_sampled, TargetShaper, Verdict, WalkBuffers};
