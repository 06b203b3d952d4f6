//! Data for the platform when no dataset is given: a deterministic generator of realistic interactions, and the
//! derivation of everything the online stores serve from them, as the offline side of a deployment would.
//!
//! ```text
//!   generate(seed) ─▶ Dataset { users, items, events, follows }
//!                          │ derive()
//!                          ▼
//!   Snapshot { user features + embeddings, item features + embeddings, CF pools, popular list,
//!              recent sequences, graph edges }
//! ```

mod dataset;
mod derive;
mod generate;
pub mod read;

pub use dataset::{Dataset, DatasetBuilder, Interaction, ItemRecord, UserRecord};
pub use derive::{Snapshot, derive};
pub use generate::{GenConfig, generate};

/// Dimension of the embeddings the derivation produces.
pub const DIMENSION: usize = 64;
