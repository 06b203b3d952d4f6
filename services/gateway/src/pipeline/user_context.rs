//! The user's context: features, embedding, recall pool and real-time sequence from the feature service, joined
//! with the recent clicks the start of the request read from the cache. What recall, ranking and explain go on.

use std::time::Duration;

use reco_client::UserContextQuery;
use reco_types::{Candidate, Embedding, Event, Features, ItemId, StageReport, UserContext};

use super::{
    request::{Run, Step},
    stage,
};
use crate::{plan::Plan, resilience::StageService};

/// The least time the call is worth making in.
pub const MIN_TIME: Duration = Duration::from_millis(3);

/// What is known of the user for this request.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub features: Features,
    pub embedding: Option<Embedding>,
    /// The precomputed (collaborative-filtering) pool, best first.
    pub pool: Vec<Candidate>,
    /// Recent clicks, then the sequence's items, each once, most recent first.
    pub recent_items: Vec<ItemId>,
    /// The same items, to leave out of the answer.
    pub seen: foldhash::HashSet<ItemId>,
    /// Nothing at all is known of the user (the feature service said so, and they have no recent clicks).
    pub cold_start: bool,
}

pub struct UserContextStage {
    call: StageService<UserContextQuery, UserContext>,
    budget: Duration,
    max_pool: u32,
}

impl UserContextStage {
    pub fn new(plan: &Plan, call: StageService<UserContextQuery, UserContext>) -> Self {
        Self {
            call,
            budget: plan.features_budget,
            max_pool: plan.max_candidates as u32,
        }
    }

    /// Reads the context and reports it, then the recent clicks' report (from the start of the request).
    pub async fn run(
        &self,
        run: &mut Run<'_>,
        recent_clicks: Vec<Event>,
        clicks_report: StageReport,
    ) -> Context {
        let q = run.q;
        let budget = run.budget(Step::UserContext, self.budget);
        let query = UserContextQuery {
            user_id: q.user_id.clone(),
            version: q.feature_version.clone(),
            max_events: 0,
            max_pool: self.max_pool,
        };
        let out = stage::call("user_context.features", budget, &self.call, query).await;
        run.report(out.report);
        run.report(clicks_report);
        let answered = out.value.is_some();
        let ctx = out.value.unwrap_or_default();
        let found = ctx.found();
        let mut context = Context {
            pool: ctx.recall_pool,
            ..Default::default()
        };
        if let Some(user) = ctx.user {
            context.features = user.features;
            context.embedding = user.embedding;
        }
        for e in recent_clicks.into_iter().chain(ctx.recent_events) {
            if context.seen.insert(e.item_id.clone()) {
                context.recent_items.push(e.item_id);
            }
        }
        // Cold start only when the feature service answered that it knows nothing of the user.
        context.cold_start = answered && !found && context.recent_items.is_empty();
        context
    }
}
