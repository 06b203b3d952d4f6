//! The recall sources the gateway fans out to, behind one trait: each is built from its configured plan
//! ([`crate::spec`]), says whether it has anything to go on for a request, and recalls candidates tagged with its
//! name.
//!
//! ```text
//!   cf       the user's precomputed pool (already read with the user context: no call)
//!   vector   vector-recall Search by the user's embedding, or by their recent items
//!   graph    graph-recall Recall
//!   popular  feature GetPopularItems: the fallback, and all a cold-start user gets
//! ```

use std::time::Duration;

use async_trait::async_trait;
use reco_proto::{
    common::v1::{ItemFilter, Vector},
    feature::v1::{GetPopularItemsRequest, GetPopularItemsResponse},
    graph_recall::v1::{RecallRequest, RecallResponse, TargetKind},
    vector_recall::v1::{ItemIds, SearchRequest, SearchResponse, search_request::Query},
};
use reco_types::{Candidate, Embedding, ItemId, Name, UserId};
use tonic::Status;
use tower::ServiceExt;

use crate::{
    resilience::{Call, StageService},
    spec::SourcePlan,
};

/// What recall sources know of the request.
pub struct RecallContext {
    pub user_id: UserId,
    pub embedding: Option<Embedding>,
    pub pool: Vec<Candidate>,
    /// Most recent first; also excluded from vector recall.
    pub recent_items: Vec<ItemId>,
}

/// One recall source.
#[async_trait]
pub trait RecallSource: Send + Sync {
    /// Its configuration: name, kind, mode, k, budget, scenes, shares.
    fn plan(&self) -> &SourcePlan;
    /// Why it has nothing to go on for this request, if it has not.
    fn skip_reason(&self, ctx: &RecallContext) -> Option<&'static str>;
    /// A recent answer that holds for this request too, if the source keeps one.
    fn cached(&self, _ctx: &RecallContext) -> Option<Vec<Candidate>> {
        None
    }
    async fn recall(&self, ctx: &RecallContext, budget: Duration)
    -> Result<Vec<Candidate>, Status>;
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
    pub plan: SourcePlan,
}

#[async_trait]
impl RecallSource for CfSource {
    fn plan(&self) -> &SourcePlan {
        &self.plan
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
            &self.plan.name,
            ctx.pool
                .iter()
                .take(self.plan.k as usize)
                .map(|c| (c.item_id.to_string(), c.score)),
        ))
    }
}

/// Vector k-NN through the vector-recall service.
pub struct VectorSource {
    pub plan: SourcePlan,
    pub search: StageService<SearchRequest, SearchResponse>,
}

#[async_trait]
impl RecallSource for VectorSource {
    fn plan(&self) -> &SourcePlan {
        &self.plan
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
        let message = SearchRequest {
            query: Some(query),
            k: self.plan.k,
            filter: Some(filter),
        };
        let hits = self
            .search
            .clone()
            .oneshot(Call { message, budget })
            .await?
            .hits;
        Ok(tagged(
            &self.plan.name,
            hits.into_iter().map(|h| (h.item_id, h.score)),
        ))
    }
}

/// Graph recall through the graph-recall service.
pub struct GraphSource {
    pub plan: SourcePlan,
    pub recall: StageService<RecallRequest, RecallResponse>,
}

#[async_trait]
impl RecallSource for GraphSource {
    fn plan(&self) -> &SourcePlan {
        &self.plan
    }
    fn skip_reason(&self, _ctx: &RecallContext) -> Option<&'static str> {
        None
    }
    async fn recall(
        &self,
        ctx: &RecallContext,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let message = RecallRequest {
            user_id: ctx.user_id.to_string(),
            strategies: Vec::new(),
            k: self.plan.k,
            max_steps: 0,
            time_budget_ms: (budget.as_millis() as u32).max(1),
        };
        let candidates = self
            .recall
            .clone()
            .oneshot(Call { message, budget })
            .await?
            .candidates;
        Ok(tagged(
            &self.plan.name,
            candidates
                .into_iter()
                .filter(|c| c.kind == TargetKind::Item as i32)
                .map(|c| (c.id, c.score)),
        ))
    }
}

/// The most popular items: the fallback when other sources find little, and the cold-start answer. The list is
/// the same for every user, so it is kept for `ttl` rather than asked for on every request.
pub struct PopularSource {
    pub plan: SourcePlan,
    pub popular: StageService<GetPopularItemsRequest, GetPopularItemsResponse>,
    pub ttl: Duration,
    pub kept: std::sync::Mutex<Option<(std::time::Instant, Vec<Candidate>)>>,
}

#[async_trait]
impl RecallSource for PopularSource {
    fn plan(&self) -> &SourcePlan {
        &self.plan
    }
    fn skip_reason(&self, _ctx: &RecallContext) -> Option<&'static str> {
        None
    }
    fn cached(&self, _ctx: &RecallContext) -> Option<Vec<Candidate>> {
        let kept = self.kept.lock().expect("popular lock");
        kept.as_ref()
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, list)| list.clone())
    }
    async fn recall(
        &self,
        _ctx: &RecallContext,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let message = GetPopularItemsRequest {
            k: self.plan.k,
            category: String::new(),
            feature_version: String::new(),
        };
        let items = self
            .popular
            .clone()
            .oneshot(Call { message, budget })
            .await?
            .items;
        let list = tagged(
            &self.plan.name,
            items.into_iter().map(|c| (c.item_id, c.score)),
        );
        if !self.ttl.is_zero() {
            *self.kept.lock().expect("popular lock") =
                Some((std::time::Instant::now(), list.clone()));
        }
        Ok(list)
    }
}
