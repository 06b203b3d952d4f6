//! Vector recall: nearest items to a query vector, with category and id filters.
//!
//! Backends: [`HnswIndex`] (embedded default: HNSW from usearch, saved to and loaded from disk) and [`ExactIndex`]
//! (brute force; exact, so it is also the ground truth that approximate indexes are measured against). Every
//! backend runs the shared [`suite`].

mod exact;
mod hnsw;
pub mod opensearch;
pub mod suite;
mod versioned;

use async_trait::async_trait;
use reco_types::{Embedding, ItemFilter, ItemId, Name};

pub use exact::ExactIndex;
pub use hnsw::{HnswIndex, HnswParams, Precision};
pub use opensearch::{Engine, OpenSearchCluster, OpenSearchConfig, OpenSearchIndex};
pub use versioned::{ActivateError, INITIAL_VERSION, UnknownVersion, VersionedIndex, Writer};

/// Largest k a search may ask for.
pub const MAX_K: usize = 1000;

/// How similarity is measured. Higher scores are closer in both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity (vectors are normalised at insert).
    Cosine,
    /// Raw dot product.
    InnerProduct,
}

impl Metric {
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::InnerProduct => "inner_product",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "inner_product" | "ip" => Ok(Metric::InnerProduct),
            other => Err(format!(
                "unknown metric {other:?}: expected cosine or inner_product"
            )),
        }
    }
}

/// Errors of a vector index.
#[derive(Debug, thiserror::Error)]
pub enum VectorIndexError {
    /// A vector's dimension differs from the index's.
    #[error("{field} has {got} dimensions, the index has {expected}")]
    Dimension {
        field: String,
        got: usize,
        expected: usize,
    },
    /// A component is beyond what the index stores (f16 precision).
    #[error(
        "{field} holds {value}, beyond the index's precision limit of ±{limit} (use --hnsw-precision f32)"
    )]
    Range {
        field: String,
        value: f32,
        limit: f32,
    },
    /// The backend failed or could not be reached.
    #[error("vector backend failed: {0}")]
    Backend(String),
}

pub type Result<T, E = VectorIndexError> = std::result::Result<T, E>;

/// Refuses a vector whose dimension is not the index's, naming the field: the check every backend makes first.
pub(crate) fn check_dimension(field: &str, v: &Embedding, expected: usize) -> Result<()> {
    if v.dimension() != expected {
        return Err(VectorIndexError::Dimension {
            field: field.to_string(),
            got: v.dimension(),
            expected,
        });
    }
    Ok(())
}

/// An item's vector and categories.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedItem {
    pub item_id: ItemId,
    pub vector: Embedding,
    pub categories: Vec<Name>,
}

/// One search result.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub item_id: ItemId,
    pub score: f32,
}

/// Index statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexStats {
    pub count: u64,
    pub dimension: usize,
    pub metric: Metric,
    pub version: String,
}

/// A vector index. Object-safe: services hold an `Arc<dyn VectorIndex>` chosen at start-up.
#[async_trait]
pub trait VectorIndex: Send + Sync + 'static {
    /// The `k` items closest to `query` that pass `filter`, best first.
    async fn search(&self, query: &Embedding, k: usize, filter: &ItemFilter) -> Result<Vec<Hit>>;
    /// The stored vectors of these items (unknown ones left out), for "more like these" queries.
    async fn vectors(&self, items: &[ItemId]) -> Result<Vec<Embedding>>;
    /// Inserts or replaces items.
    async fn upsert(&self, items: Vec<IndexedItem>) -> Result<usize>;
    /// Removes items; returns how many existed.
    async fn delete(&self, items: &[ItemId]) -> Result<usize>;
    async fn stats(&self) -> Result<IndexStats>;
    fn dimension(&self) -> usize;
    fn backend(&self) -> &'static str;
    /// Writes the index under `dir` so a restart can load it; false for a backend that keeps nothing on disk.
    fn save(&self, _dir: &std::path::Path) -> Result<bool> {
        Ok(false)
    }
    /// A fresh copy of this index's items, built while this one keeps serving (None: nothing to rebuild).
    fn rebuilt(&self) -> Result<Option<std::sync::Arc<dyn VectorIndex>>> {
        Ok(None)
    }
    /// Called when this (staged) index is about to become the serving one: a remote backend points its alias
    /// here, so every replica serves it too.
    async fn promote(&self) -> Result<()> {
        Ok(())
    }
    /// Share of the structure held by removed or replaced items: what a rebuild would reclaim.
    fn garbage(&self) -> f64 {
        0.0
    }
}
