//! The recall sources the recall stage fans out to, behind one trait: each is built from its part of the plan
//! ([`SourcePlan`]), says whether it has anything to go on for a request, and recalls candidates tagged with its
//! name.
//!
//! ```text
//!   cf       the user's precomputed pool (already read with the user context: no call)
//!   vector   vector-recall search by the user's embedding, or by their recent items
//!   graph    graph-recall: friends' items and shared interests
//!   popular  the feature service's popular items: the fallback, and all a cold-start user gets
//! ```

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use reco_client::{GraphQuery, Hit, PopularQuery, SearchQuery, VectorQuery};
use reco_types::{Candidate, ItemFilter, Name, UserId};
use tonic::Status;
use tower::ServiceExt;

use super::{
    calls::{Links, stage_call},
    user_context::Context,
};
use crate::{
    plan::{SourceKind, SourcePlan},
    resilience::{Call, StageService},
};

/// Most recent items a vector search by items averages.
const QUERY_ITEMS: usize = 20;

/// One recall source.
#[async_trait]
pub trait RecallSource: Send + Sync {
    /// Its part of the plan: name, kind, mode, k, budget, scenes, shares.
    fn plan(&self) -> &SourcePlan;
    /// Why it has nothing to go on for this request, if it has not.
    fn skip_reason(&self, ctx: &Context) -> Option<&'static str>;
    /// A recent answer that holds for this request too, if the source keeps one.
    fn cached(&self) -> Option<Vec<Candidate>> {
        None
    }
    async fn recall(
        &self,
        user_id: &UserId,
        ctx: &Context,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status>;
}

/// The sources of the plan, in its order, each calling through its downstream's stack.
pub fn build(links: &Links<'_>) -> Vec<Box<dyn RecallSource>> {
    links
        .plan
        .sources
        .iter()
        .map(|p| -> Box<dyn RecallSource> {
            let plan = p.clone();
            let stage = p.stage();
            match p.kind {
                SourceKind::Cf => Box::new(CfSource { plan }),
                SourceKind::Vector => Box::new(VectorSource {
                    plan,
                    search: stage_call!(links, vector, [stage], search),
                }),
                SourceKind::Graph => Box::new(GraphSource {
                    plan,
                    recall: stage_call!(links, graph, [stage], recall),
                }),
                SourceKind::Popular => Box::new(PopularSource {
                    plan,
                    popular: stage_call!(links, feature, [stage], popular),
                    ttl: links.plan.popular_ttl,
                    kept: Mutex::new(None),
                }),
            }
        })
        .collect()
}

/// Candidates of `source` from hits, ranked in their order.
fn tagged(source: &Name, hits: impl IntoIterator<Item = Hit>) -> Vec<Candidate> {
    hits.into_iter()
        .enumerate()
        .map(|(rank, h)| Candidate::from_source(h.item_id, source, rank as u32, h.score))
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
    fn skip_reason(&self, ctx: &Context) -> Option<&'static str> {
        ctx.pool.is_empty().then_some("the user has no recall pool")
    }
    async fn recall(
        &self,
        _user_id: &UserId,
        ctx: &Context,
        _budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        // Re-tag with this source's ranks: the pool's own provenance (from the offline job) is not a recall rank.
        Ok(tagged(
            &self.plan.name,
            ctx.pool.iter().take(self.plan.k as usize).map(|c| Hit {
                item_id: c.item_id.clone(),
                score: c.score,
            }),
        ))
    }
}

/// Vector k-NN through the vector-recall service.
pub struct VectorSource {
    pub plan: SourcePlan,
    pub search: StageService<SearchQuery, Vec<Hit>>,
}

#[async_trait]
impl RecallSource for VectorSource {
    fn plan(&self) -> &SourcePlan {
        &self.plan
    }
    fn skip_reason(&self, ctx: &Context) -> Option<&'static str> {
        (ctx.embedding.is_none() && ctx.recent_items.is_empty())
            .then_some("the user has no embedding and no recent items")
    }
    async fn recall(
        &self,
        _user_id: &UserId,
        ctx: &Context,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let query = match &ctx.embedding {
            Some(e) => VectorQuery::Vector(e.clone()),
            None => {
                VectorQuery::Items(ctx.recent_items.iter().take(QUERY_ITEMS).cloned().collect())
            }
        };
        let filter = ItemFilter {
            exclude_item_ids: ctx
                .recent_items
                .iter()
                .take(reco_types::MAX_CANDIDATES)
                .cloned()
                .collect(),
            ..Default::default()
        };
        let message = SearchQuery {
            query,
            k: self.plan.k,
            filter,
        };
        let hits = self
            .search
            .clone()
            .oneshot(Call { message, budget })
            .await?;
        Ok(tagged(&self.plan.name, hits))
    }
}

/// Graph recall through the graph-recall service.
pub struct GraphSource {
    pub plan: SourcePlan,
    pub recall: StageService<GraphQuery, Vec<Hit>>,
}

#[async_trait]
impl RecallSource for GraphSource {
    fn plan(&self) -> &SourcePlan {
        &self.plan
    }
    fn skip_reason(&self, _ctx: &Context) -> Option<&'static str> {
        None
    }
    async fn recall(
        &self,
        user_id: &UserId,
        _ctx: &Context,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let message = GraphQuery {
            user_id: user_id.clone(),
            k: self.plan.k,
            time_budget: budget,
        };
        let hits = self
            .recall
            .clone()
            .oneshot(Call { message, budget })
            .await?;
        Ok(tagged(&self.plan.name, hits))
    }
}

/// The most popular items: the fallback when other sources find little, and the cold-start answer. The list is
/// the same for every user, so it is kept for `ttl` rather than asked for on every request.
pub struct PopularSource {
    pub plan: SourcePlan,
    pub popular: StageService<PopularQuery, Vec<Hit>>,
    pub ttl: Duration,
    pub kept: Mutex<Option<(Instant, Vec<Candidate>)>>,
}

#[async_trait]
impl RecallSource for PopularSource {
    fn plan(&self) -> &SourcePlan {
        &self.plan
    }
    fn skip_reason(&self, _ctx: &Context) -> Option<&'static str> {
        None
    }
    fn cached(&self) -> Option<Vec<Candidate>> {
        let kept = self.kept.lock().expect("popular lock");
        kept.as_ref()
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, list)| list.clone())
    }
    async fn recall(
        &self,
        _user_id: &UserId,
        _ctx: &Context,
        budget: Duration,
    ) -> Result<Vec<Candidate>, Status> {
        let message = PopularQuery {
            k: self.plan.k,
            category: None,
            version: None,
        };
        let hits = self
            .popular
            .clone()
            .oneshot(Call { message, budget })
            .await?;
        let list = tagged(&self.plan.name, hits);
        if !self.ttl.is_zero() {
            *self.kept.lock().expect("popular lock") = Some((Instant::now(), list.clone()));
        }
        Ok(list)
    }
}
