//! EAGLE draft heads at inference: loading (EAGLE-3 and EAGLE-1 checkpoints in their public
//! tensor names, checked against the target), the head's forward pass with its own KV cache,
//! and [`EagleDrafter`], which drafts EAGLE-2 dynamic trees from the target's hidden states.
//!
//! - [`head`]: [`EagleHead::load`], [`EagleConfig`], [`HeadOptions`] (Q8_0 weights by default).
//! - [`forward`]: [`EagleHead::forward`] over [`HeadRows`] with a [`HeadCache`] and
//!   [`HeadWorkspace`].
//! - [`drafter`]: [`EagleDrafter`] (the `Drafter` the engine runs).

pub mod drafter;
pub mod forward;
pub mod head;

pub use drafter::EagleDrafter;
pub use forward::{HeadCache, HeadInput, HeadLogits, HeadRows, HeadWorkspace, MAX_DRAFT_ROWS};
pub use head::{default_eagle3_layers, EagleConfig, EagleHead, EagleKind, HeadOptions};
