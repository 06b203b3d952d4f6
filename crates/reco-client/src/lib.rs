//! One client interface per service the gateway calls, in domain types, and two ways to reach each:
//!
//! ```text
//!   gateway stage ──▶ dyn Feature / Cache / VectorRecall / GraphRecall / Ranking
//!                        ├── grpc::*        protobuf over a (traced, TLS, authorised) channel: separate deployments
//!                        └── the service's own API type, called in process: no encoding, no socket, no extra task
//! ```
//!
//! Each trait holds what a caller of that service needs, not its whole gRPC API (sync and the admin RPCs stay on
//! gRPC). Queries and answers are `reco-types` values, valid by construction, so an in-process call skips the
//! decoding and validating a gRPC edge does; large parts go by shared reference (a ranking candidate's item is an
//! `Arc<RankItem>`, the same one from request to request). Both ways answer errors as the `tonic::Status` the
//! service would send, so a caller's breakers and stage reports read them the same way whichever way it is wired.
//!
//! Every call takes the budget its stage was given: over gRPC it is sent as `grpc-timeout`, so the service can give
//! up too; in process it is what a service bounds its own work by (graph walks). The caller still cancels a call
//! that runs past it, by dropping the future.

pub mod grpc;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use reco_ranker::RankInput;
pub use reco_types::{CachedResult, RateDecision, UserContext};
use reco_types::{
    Candidate, Embedding, Event, FeatureVersion, Item, ItemFilter, ItemId, Name, Scene, UserId,
};

/// What a call fails with: the status the service answers (the same in process as over gRPC).
pub type Result<T> = std::result::Result<T, tonic::Status>;

/// Whether a service can answer: `Err` says why not (for a caller's readiness).
pub type Readiness = std::result::Result<(), String>;

/// One item a recall found, with its score there (higher is better).
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub item_id: ItemId,
    pub score: f32,
}

// ---------------------------------------------------------------------------------------------------------------
// feature

/// A user's context: features, embedding, recall pool and latest events.
#[derive(Clone, Debug)]
pub struct UserContextQuery {
    pub user_id: UserId,
    /// None reads the active feature set.
    pub version: Option<FeatureVersion>,
    /// Most events (0: the service's sequence length).
    pub max_events: u32,
    /// Most recall-pool candidates (0: all).
    pub max_pool: u32,
}

/// Items by id.
#[derive(Clone, Debug)]
pub struct ItemsQuery {
    pub item_ids: Vec<ItemId>,
    /// None reads the active feature set.
    pub version: Option<FeatureVersion>,
    pub include_embeddings: bool,
}

/// The most popular items.
#[derive(Clone, Debug)]
pub struct PopularQuery {
    pub k: u32,
    pub category: Option<Name>,
    pub version: Option<FeatureVersion>,
}

/// The feature service, as the gateway reads it.
#[async_trait]
pub trait Feature: Send + Sync + 'static {
    async fn user_context(&self, q: UserContextQuery, budget: Duration) -> Result<UserContext>;
    /// The items found, in the order asked; unknown ids are left out.
    async fn items(&self, q: ItemsQuery, budget: Duration) -> Result<Vec<Item>>;
    /// Best first.
    async fn popular(&self, q: PopularQuery, budget: Duration) -> Result<Vec<Hit>>;
    /// Appends each user's events (oldest first) to their real-time sequence; an event whose id the sequence
    /// already holds is left out, so a retry changes nothing.
    async fn append_events(&self, appends: Vec<EventAppend>, budget: Duration) -> Result<()>;
    async fn ready(&self) -> Readiness;
}

/// One user's events, oldest first.
#[derive(Clone, Debug)]
pub struct EventAppend {
    pub user_id: UserId,
    pub events: Vec<Event>,
}

// ---------------------------------------------------------------------------------------------------------------
// cache

/// A rate check: take `cost` from `key`'s allowance of `limit` per `window`.
#[derive(Clone, Debug)]
pub struct RateLimit {
    pub key: String,
    pub limit: u32,
    pub window: Duration,
    pub cost: u32,
}

/// The cache's part of the start of a request, in one call.
#[derive(Clone, Debug)]
pub struct BeginQuery {
    pub user_id: UserId,
    pub scene: Scene,
    /// None: no rate check.
    pub rate_limit: Option<RateLimit>,
    /// Read the cached answer of (user, scene).
    pub read_result: bool,
    /// Most recent events to read (0: none).
    pub recent_events: u32,
    /// Leave out of the cached result the items shown `cap` times within the window.
    pub frequency_cap: Option<(u32, Duration)>,
}

/// What [`Cache::begin`] found. When the rate check refused the call, nothing else was read.
#[derive(Clone, Debug, Default)]
pub struct Begun {
    pub rate: Option<RateDecision>,
    pub result: Option<CachedResult>,
    /// Most recent first.
    pub recent_events: Vec<Event>,
}

/// Which of `item_ids` the user was shown at least `cap` times within `window`.
#[derive(Clone, Debug)]
pub struct CapQuery {
    pub user_id: UserId,
    pub item_ids: Vec<ItemId>,
    pub cap: u32,
    pub window: Duration,
}

/// An answer to keep for (user, scene).
#[derive(Clone, Debug)]
pub struct ResultWrite {
    pub user_id: UserId,
    pub scene: Scene,
    pub items: Vec<Candidate>,
    pub ttl: Duration,
    /// Also count the items as shown (frequency control).
    pub record_impressions: bool,
}

/// Items shown to a user.
#[derive(Clone, Debug)]
pub struct ImpressionWrite {
    pub user_id: UserId,
    pub item_ids: Vec<ItemId>,
    /// Milliseconds since the epoch; 0 is now.
    pub at_ms: i64,
}

/// The writes after answers, sent together. Either list may be empty, not both.
#[derive(Clone, Debug, Default)]
pub struct Writes {
    pub results: Vec<ResultWrite>,
    pub impressions: Vec<ImpressionWrite>,
}

/// The cache service, as the gateway uses it.
#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn begin(&self, q: BeginQuery, budget: Duration) -> Result<Begun>;
    /// The capped items among those asked.
    async fn filter_capped(&self, q: CapQuery, budget: Duration) -> Result<Vec<ItemId>>;
    async fn write(&self, w: Writes, budget: Duration) -> Result<()>;
    /// What users' events do to the cache: pushed onto their recent events (an event whose id is there already is
    /// left out), and their cached answers dropped when asked.
    async fn push_events(&self, p: EventPush, budget: Duration) -> Result<()>;
    async fn ready(&self) -> Readiness;
}

/// Events for the cache, per user (oldest first; a user's list may be empty when only invalidating).
#[derive(Clone, Debug, Default)]
pub struct EventPush {
    pub users: Vec<EventAppend>,
    /// Drop every listed user's cached answers, in every scene.
    pub invalidate_results: bool,
}

// ---------------------------------------------------------------------------------------------------------------
// vector-recall

/// What to search near.
#[derive(Clone, Debug)]
pub enum VectorQuery {
    Vector(Embedding),
    /// The mean of these items' vectors.
    Items(Vec<ItemId>),
}

/// A k-NN search with a filter.
#[derive(Clone, Debug)]
pub struct SearchQuery {
    pub query: VectorQuery,
    pub k: u32,
    pub filter: ItemFilter,
}

/// The vector-recall service, as the gateway searches it.
#[async_trait]
pub trait VectorRecall: Send + Sync + 'static {
    /// Nearest first.
    async fn search(&self, q: SearchQuery, budget: Duration) -> Result<Vec<Hit>>;
    async fn ready(&self) -> Readiness;
}

// ---------------------------------------------------------------------------------------------------------------
// graph-recall

/// Items for a user from the graph, by the service's default strategies (friends' items, shared interests).
#[derive(Clone, Debug)]
pub struct GraphQuery {
    pub user_id: UserId,
    pub k: u32,
    /// How long the service may walk the graph.
    pub time_budget: Duration,
}

/// The graph-recall service, as the gateway asks it for items.
#[async_trait]
pub trait GraphRecall: Send + Sync + 'static {
    /// Items only, best first.
    async fn recall(&self, q: GraphQuery, budget: Duration) -> Result<Vec<Hit>>;
    /// Adds edges; an edge that exists has its weight replaced, so adding one twice changes nothing.
    async fn add_edges(&self, edges: Vec<GraphEdge>, budget: Duration) -> Result<()>;
    async fn ready(&self) -> Readiness;
}

/// An edge events add to the graph.
#[derive(Clone, Debug, PartialEq)]
pub enum GraphEdge {
    Follows {
        user: UserId,
        followee: UserId,
    },
    Engaged {
        user: UserId,
        item: ItemId,
        weight: f32,
    },
}

// ---------------------------------------------------------------------------------------------------------------
// ranking

/// What ranking answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RankAnswer {
    /// Best first.
    pub scores: Vec<reco_ranker::Scored>,
    /// Per feature the model reads, how many candidates had it defaulted.
    pub missing: BTreeMap<String, u64>,
    pub model_version: String,
    /// What the way the call went adds to the stage's report (over gRPC: items sent again in full).
    pub notes: Vec<String>,
}

/// The ranking service. The input is shared so that a hedged call does not copy it.
#[async_trait]
pub trait Ranking: Send + Sync + 'static {
    async fn rank(&self, input: Arc<RankInput>, budget: Duration) -> Result<RankAnswer>;
    async fn ready(&self) -> Readiness;
}

/// Every service the gateway calls, one client each.
#[derive(Clone)]
pub struct Downstreams {
    pub feature: Arc<dyn Feature>,
    pub cache: Arc<dyn Cache>,
    pub vector: Arc<dyn VectorRecall>,
    pub graph: Arc<dyn GraphRecall>,
    pub ranking: Arc<dyn Ranking>,
}

impl Downstreams {
    /// Every downstream the request path needs answers. Graph recall is on demand, so it is not required.
    pub async fn ready(&self) -> Readiness {
        let named = |name: &'static str| move |e: String| format!("{name}: {e}");
        self.feature.ready().await.map_err(named("feature"))?;
        self.cache.ready().await.map_err(named("cache"))?;
        self.vector.ready().await.map_err(named("vector-recall"))?;
        self.ranking.ready().await.map_err(named("ranking"))?;
        Ok(())
    }
}
