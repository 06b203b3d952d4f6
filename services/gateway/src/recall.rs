//! The recall sources the gateway fans out to, behind one trait: each says whether it applies to a request,
//! and recalls candidates tagged with its name.
//!
//! ```text
//!   cf       the user's precomputed pool (already read with the user context: no RPC)
//!   vector   vector-recall Search by the user's embedding, or by their recent items
//!   graph    graph-recall Recall (on demand: the request's include_graph, or a graph scene)
//!   popular  feature GetPopularItems: the fallback, and all a cold-start user gets
//! ```

use std::time::Duration;

use async_trait::async_trait;
use reco_proto::{
    common::v1::{ItemFilter, Vector},
    feature::v1::{GetPopularItemsRequest, feature_service_client::FeatureServiceClient},
    graph_recall::v1::{RecallRequest, TargetKind, graph_recall_client::GraphRecallClient},
    vector_recall::v1::{
        ItemIds, SearchRequest, search_request::Query, vector_recall_client::VectorRecallClient,
    },
};
use reco_server::TracedChannel;
use reco_types::{Candidate, Embedding, ItemId, Name, UserId};
use tonic::Status;

use crate::stage::request;

/// What recall sources know of the request.
pub struct RecallContext {
    pub user_id: UserId,
    pub embedding: Option<Embedding>,
    pub pool: Vec<Candidate>,
    /// Most recent first; also excluded from vector recall.
    pub recent_items: Vec<ItemId>,
    pub include_graph: bool,
}

/// One recall source.
#[async_trait]
pub trait RecallSource: Send + Sync {
    /// The stage's name in reports: `recall.<source>`.
    fn stage(&self) -> &'static str;
    /// The source name candidates are tagged with.
    fn source(&self) -> &Name;
    /// Its configured budget.
    fn budget(&self) -> Duration;
    /// Why it does not apply to this request, if it does not.
    fn skip_reason(&self, ctx: &RecallContext) -> Option<&'static str>;
    async fn recall(&self, ctx: &RecallContext, budget: Duration)
    -> Result<Vec<Candidate>, Status>;
}

fn name(s: &str) -> Name {
    Name::parse("source", s).expect("source names are valid constants")
}

/// Turns (id, score) pairs from a downstream into candidates of `source`, skipping ids that do not validate.
fn tagged(source: &Name, hits: impl IntoIterator<Item = (String, f32)>) -> Vec<Candidate> {
    hits.into_iter()
        .filter_map(|(id, score)| ItemId::parse("item_id", &id).ok().map(|id| (id, score)))
        .enumerate()
        .map(|(rank, (id, score))| Candidate::from_source(id, source, rank as u32, score))
        .collect()
}

/// The collaborative-filtering pool read with the user's context.
pub struct CfSource {
    pub name: Name,
    pub k: usize,
}

impl CfSource {
    pub fn new(k: usize) -> Self {
        Self {
            name: name("cf"),
            k,
        }
    }
}

#[async_trait]
impl RecallSource for CfSource {
    fn stage(&self) -> &'static str {
        "recall.cf"
    }
    fn source(&self) -> &Name {
        &self.name
    }
    fn budget(&self) -> Duration {
        Duration::from_millis(1)
    }
    fn skip_reason(&self, ctx: &RecallContext) -> Option<&'static str> {
        ctx.pool.is_empty().then_some("the user has no recall pool")
    }
    async fn recall(
        &self,
        ctx: &RecallContext,
        _budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        // Re-tag with this source's ranks: the pool's own provenance (from the offline job) is not a recall rank.
        Ok(tagged(
            &self.name,
            ctx.pool
                .iter()
                .take(self.k)
                .map(|c| (c.item_id.to_string(), c.score)),
        ))
    }
}

/// Vector k-NN through the vector-recall service.
pub struct VectorSource {
    pub name: Name,
    pub client: VectorRecallClient<TracedChannel>,
    pub k: u32,
    pub budget: Duration,
}

#[async_trait]
impl RecallSource for VectorSource {
    fn stage(&self) -> &'static str {
        "recall.vector"
    }
    fn source(&self) -> &Name {
        &self.name
    }
    fn budget(&self) -> Duration {
        self.budget
    }
    fn skip_reason(&self, ctx: &RecallContext) -> Option<&'static str> {
        (ctx.embedding.is_none() && ctx.recent_items.is_empty())
            .then_some("the user has no embedding and no recent items")
    }
    async fn recall(
        &self,
        ctx: &RecallContext,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let query = match &ctx.embedding {
            Some(e) => Query::Vector(Vector {
                values: e.as_slice().to_vec(),
            }),
            None => Query::ItemIds(ItemIds {
                item_ids: ctx
                    .recent_items
                    .iter()
                    .take(20)
                    .map(ToString::to_string)
                    .collect(),
            }),
        };
        let filter = ItemFilter {
            exclude_item_ids: ctx
                .recent_items
                .iter()
                .take(reco_types::MAX_CANDIDATES)
                .map(ToString::to_string)
                .collect(),
            ..Default::default()
        };
        let hits = self
            .client
            .clone()
            .search(request(
                SearchRequest {
                    query: Some(query),
                    k: self.k,
                    filter: Some(filter),
                },
                budget,
            ))
            .await?
            .into_inner()
            .hits;
        Ok(tagged(
            &self.name,
            hits.into_iter().map(|h| (h.item_id, h.score)),
        ))
    }
}

/// Graph recall through the graph-recall service, on demand.
pub struct GraphSource {
    pub name: Name,
    pub client: GraphRecallClient<TracedChannel>,
    pub k: u32,
    pub budget: Duration,
}

#[async_trait]
impl RecallSource for GraphSource {
    fn stage(&self) -> &'static str {
        "recall.graph"
    }
    fn source(&self) -> &Name {
        &self.name
    }
    fn budget(&self) -> Duration {
        self.budget
    }
    fn skip_reason(&self, ctx: &RecallContext) -> Option<&'static str> {
        (!ctx.include_graph).then_some("on demand: set include_graph or use a graph scene")
    }
    async fn recall(
        &self,
        ctx: &RecallContext,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let candidates = self
            .client
            .clone()
            .recall(request(
                RecallRequest {
                    user_id: ctx.user_id.to_string(),
                    strategies: Vec::new(),
                    k: self.k,
                    max_steps: 0,
                    time_budget_ms: (budget.as_millis() as u32).max(1),
                },
                budget,
            ))
            .await?
            .into_inner()
            .candidates;
        Ok(tagged(
            &self.name,
            candidates
                .into_iter()
                .filter(|c| c.kind == TargetKind::Item as i32)
                .map(|c| (c.id, c.score)),
        ))
    }
}

/// The most popular items: the fallback when other sources find little, and the cold-start answer.
pub struct PopularSource {
    pub name: Name,
    pub client: FeatureServiceClient<TracedChannel>,
    pub k: u32,
    pub budget: Duration,
}

#[async_trait]
impl RecallSource for PopularSource {
    fn stage(&self) -> &'static str {
        "recall.popular"
    }
    fn source(&self) -> &Name {
        &self.name
    }
    fn budget(&self) -> Duration {
        self.budget
    }
    fn skip_reason(&self, _ctx: &RecallContext) -> Option<&'static str> {
        None
    }
    async fn recall(
        &self,
        _ctx: &RecallContext,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let items = self
            .client
            .clone()
            .get_popular_items(request(
                GetPopularItemsRequest {
                    k: self.k,
                    category: String::new(),
                    feature_version: String::new(),
                },
                budget,
            ))
            .await?
            .into_inner()
            .items;
        Ok(tagged(
            &self.name,
            items.into_iter().map(|c| (c.item_id, c.score)),
        ))
    }
}
