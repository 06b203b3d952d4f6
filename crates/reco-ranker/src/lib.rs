//! Ranking: one score per candidate for one user, from user features, item features and recall provenance.
//!
//! ```text
//!   (user features, user embedding) ─┐
//!   candidate: item features,        ├─▶ feature vector (features.rs) ─▶ model ─▶ score
//!     embedding, sources ────────────┘
//! ```
//!
//! Models name the features they read; [`features::FEATURES`] lists what the platform can supply, and a model
//! that asks for anything else is refused at load. Backends: [`LinearModel`] (embedded default, optionally a
//! [`ReloadingModel`] watching its file) and [`SageMakerRanker`] (a SageMaker endpoint).

pub mod features;
mod linear;
mod reload;
pub mod sagemaker;
pub mod train;

use std::{collections::BTreeMap, sync::Arc};

use async_trait::async_trait;
use reco_types::{Embedding, Features, ItemId, Name, SourceHit, UserId};

pub use linear::{LinearModel, ModelFile};
pub use reload::ReloadingModel;
pub use sagemaker::{PayloadFormat, SageMakerConfig, SageMakerRanker};

/// Most candidates one request may rank.
pub const MAX_CANDIDATES: usize = reco_types::MAX_CANDIDATES;

/// What a candidate is, apart from how this request found it: the same from request to request, so a service
/// can keep it (shared) rather than rebuild it for every request.
#[derive(Clone, Debug, PartialEq)]
pub struct RankItem {
    item_id: ItemId,
    features: Features,
    categories: Vec<Name>,
    embedding: Option<Embedding>,
    /// What the features read of the item, worked out once when it is made (an item is kept and ranked again
    /// and again), not for every candidate of every request. The fields it is worked out from are read-only.
    derived: features::ItemDerived,
}

impl RankItem {
    pub fn new(
        item_id: ItemId,
        features: Features,
        categories: Vec<Name>,
        embedding: Option<Embedding>,
    ) -> Self {
        let derived = features::ItemDerived::new(&features, embedding.as_ref());
        Self {
            item_id,
            features,
            categories,
            embedding,
            derived,
        }
    }

    pub fn item_id(&self) -> &ItemId {
        &self.item_id
    }

    pub fn features(&self) -> &Features {
        &self.features
    }

    pub fn categories(&self) -> &[Name] {
        &self.categories
    }

    pub fn embedding(&self) -> Option<&Embedding> {
        self.embedding.as_ref()
    }
}

/// A candidate to score: its item, and which recall sources found it.
#[derive(Clone, Debug, PartialEq)]
pub struct RankCandidate {
    pub item: Arc<RankItem>,
    pub sources: Vec<SourceHit>,
}

impl RankCandidate {
    pub fn new(
        item_id: ItemId,
        features: Features,
        categories: Vec<Name>,
        sources: Vec<SourceHit>,
        embedding: Option<Embedding>,
    ) -> Self {
        Self {
            item: Arc::new(RankItem::new(item_id, features, categories, embedding)),
            sources,
        }
    }

    pub fn item_id(&self) -> &ItemId {
        &self.item.item_id
    }
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
    /// The model endpoint did not answer in time.
    #[error("model backend timed out: {0}")]
    Timeout(String),
}

pub type Result<T, E = RankerError> = std::result::Result<T, E>;

/// What a model answers for one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scores {
    /// One per candidate, in the candidates' order.
    pub scores: Vec<f32>,
    /// Per feature the model reads, how many candidates had it defaulted because its input was missing (see
    /// [`features::Lookup`]); features never defaulted are left out.
    pub missing: BTreeMap<String, u64>,
}

impl Scores {
    /// Scores from feature rows, with the misses counted by [`features::matrix`].
    pub fn new(scores: Vec<f32>, names: &[String], missing: &[u64]) -> Self {
        Self {
            scores,
            missing: names
                .iter()
                .zip(missing)
                .filter(|(_, m)| **m > 0)
                .map(|(n, m)| (n.clone(), *m))
                .collect(),
        }
    }
}

/// A ranker. Object-safe: services hold an `Arc<dyn Ranker>` chosen at start-up.
#[async_trait]
pub trait Ranker: Send + Sync + 'static {
    /// One score per candidate, in the candidates' order, and the defaulted features.
    async fn score(&self, input: &RankInput) -> Result<Scores>;
    fn model_version(&self) -> String;
    /// The features the model reads, in order.
    fn feature_names(&self) -> Vec<String>;
    fn backend(&self) -> &'static str;
}

/// A ranked answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ranked {
    /// Best first.
    pub items: Vec<Scored>,
    /// As [`Scores::missing`].
    pub missing: BTreeMap<String, u64>,
}

/// Scores and sorts best first (ties by item id), keeping `top_n` (0 = all). Defaulted features are counted in
/// the metric `reco.ranking.missing_features` (by feature) as well as returned.
pub async fn rank(ranker: &dyn Ranker, input: &RankInput, top_n: usize) -> Result<Ranked> {
    let Scores { scores, missing } = ranker.score(input).await?;
    if scores.len() != input.candidates.len() {
        return Err(RankerError::Backend(format!(
            "the model answered {} scores for {} candidates",
            scores.len(),
            input.candidates.len()
        )));
    }
    if let Some(bad) = scores.iter().position(|s| !s.is_finite()) {
        return Err(RankerError::Backend(format!(
            "the model answered a non-finite score ({}) for candidate {bad}",
            scores[bad]
        )));
    }
    record_missing(&missing);
    let mut out: Vec<Scored> = input
        .candidates
        .iter()
        .zip(scores)
        .map(|(c, score)| Scored {
            item_id: c.item.item_id.clone(),
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
    Ok(Ranked {
        items: out,
        missing,
    })
}

fn record_missing(missing: &BTreeMap<String, u64>) {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    if missing.is_empty() {
        return;
    }
    let counter = COUNTER.get_or_init(|| {
        opentelemetry::global::meter("reco-ranker")
            .u64_counter("reco.ranking.missing_features")
            .with_description(
                "candidate feature values defaulted because their input was missing, by feature",
            )
            .build()
    });
    for (feature, n) in missing {
        counter.add(
            *n,
            &[opentelemetry::KeyValue::new("feature", feature.clone())],
        );
    }
}
