//! Ranking: one score per candidate for one user, from user features, item features and recall provenance.
//!
//! ```text
//!   (user features, user embedding) ─┐
//!   candidate: item features,        ├─▶ feature vector (features.rs) ─▶ model ─▶ score
//!     embedding, sources ────────────┘
//! ```
//!
//! Models name the features they read; [`features::FEATURES`] lists what the platform can supply, and a model
//! that asks for anything else is refused at load. Backends: [`LinearModel`] (embedded default).

pub mod features;
mod linear;
mod reload;
pub mod train;

use std::collections::BTreeMap;

use async_trait::async_trait;
use reco_types::{Embedding, Features, ItemId, Name, SourceHit, UserId};

pub use linear::{LinearModel, ModelFile};
pub use reload::ReloadingModel;

/// Most candidates one request may rank.
pub const MAX_CANDIDATES: usize = reco_types::MAX_CANDIDATES;

/// A candidate to score.
#[derive(Clone, Debug, PartialEq)]
pub struct RankCandidate {
    pub item_id: ItemId,
    pub features: Features,
    pub categories: Vec<Name>,
    pub sources: Vec<SourceHit>,
    pub embedding: Option<Embedding>,
}

/// A ranking request.
#[derive(Clone, Debug, PartialEq)]
pub struct RankInput {
    pub user_id: UserId,
    pub user_features: Features,
    pub user_embedding: Option<Embedding>,
    pub candidates: Vec<RankCandidate>,
    pub context: BTreeMap<String, String>,
}

/// One scored item.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    pub item_id: ItemId,
    pub score: f32,
}

/// Errors of a ranker.
#[derive(Debug, thiserror::Error)]
pub enum RankerError {
    /// The model file could not be read or parsed.
    #[error("cannot load model {path}: {reason}")]
    Load { path: String, reason: String },
    /// The model reads features the platform cannot supply.
    #[error(
        "model {version} reads features the platform cannot supply: {missing:?} (known: {known:?})"
    )]
    UnsupportedFeatures {
        version: String,
        missing: Vec<String>,
        known: Vec<&'static str>,
    },
    /// The model endpoint failed.
    #[error("model backend failed: {0}")]
    Backend(String),
}

pub type Result<T, E = RankerError> = std::result::Result<T, E>;

/// A ranker. Object-safe: services hold an `Arc<dyn Ranker>` chosen at start-up.
#[async_trait]
pub trait Ranker: Send + Sync + 'static {
    /// One score per candidate, in the candidates' order.
    async fn score(&self, input: &RankInput) -> Result<Vec<f32>>;
    fn model_version(&self) -> String;
    /// The features the model reads, in order.
    fn feature_names(&self) -> Vec<String>;
    fn backend(&self) -> &'static str;
}

/// Scores and sorts best first (ties by item id), keeping `top_n` (0 = all).
pub async fn rank(ranker: &dyn Ranker, input: &RankInput, top_n: usize) -> Result<Vec<Scored>> {
    let scores = ranker.score(input).await?;
    let mut out: Vec<Scored> = input
        .candidates
        .iter()
        .zip(scores)
        .map(|(c, score)| Scored {
            item_id: c.item_id.clone(),
            score,
        })
        .collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.item_id.cmp(&b.item_id))
    });
    if top_n > 0 {
        out.truncate(top_n);
    }
    Ok(out)
}
