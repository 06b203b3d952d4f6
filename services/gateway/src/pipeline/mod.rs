//! The Recommend pipeline, one stage a file, each under a budget carved from the request's deadline.
//!
//! ```text
//!   admission + result_cache + user_context.recent_clicks (one cache call) ─hit─▶ answer
//!                    │ miss
//!                    ▼
//!   user_context.features
//!                    ▼
//!   recall.cf ‖ recall.vector ‖ recall.graph ‖ recall.popular ─▶ fallbacks ─▶ merge      (recall.rs)
//!                    ▼
//!   frequency_cap ─▶ hydrate ─▶ rank ─▶ rerank ─▶ explain ─▶ answer ─▶ after_answer (result cache, impressions)
//! ```
//!
//! Candidates travel from merge to the answer as one value ([`candidates::Candidates`]) that keeps why each
//! dropped one was dropped. A stage that calls a downstream declares the least time it needs (`MIN_TIME`), and each
//! stage's budget keeps back what the stages after it need ([`request::Reserves`]). Every call goes through its
//! downstream's breaker and, when planned, hedging ([`calls`]), to a client that is gRPC or in process.

mod admission;
mod after_answer;
mod calls;
mod candidates;
mod explain;
mod frequency_cap;
mod hydrate;
mod rank;
mod recall;
mod request;
mod rerank;
mod sources;
mod stage;
#[cfg(test)]
mod tests;
mod user_context;

use std::{sync::Arc, time::Instant};

use reco_client::Downstreams;

pub use self::request::{Answer, Query, Refused};
use self::{
    admission::{Admission, Start},
    after_answer::AfterAnswer,
    calls::{Links, stage_call},
    frequency_cap::FrequencyCap,
    hydrate::Hydrate,
    rank::Rank,
    recall::Recall,
    request::{AnswerItem, Reserves, Run, Step},
    rerank::Rerank,
    user_context::UserContextStage,
};
use crate::plan::Plan;

/// The stages, built from a plan over the downstreams' clients.
pub struct Pipeline {
    total: std::time::Duration,
    reserves: Reserves,
    admission: Admission,
    user_context: UserContextStage,
    recall: Recall,
    frequency_cap: FrequencyCap,
    hydrate: Hydrate,
    rank: Rank,
    rerank: Rerank,
    after_answer: AfterAnswer,
}

impl Pipeline {
    pub fn new(plan: Plan, downstreams: &Downstreams) -> Self {
        let links = Links::new(&plan, downstreams);
        Self {
            total: plan.total,
            reserves: Reserves::new(|step| match step {
                Step::Admission => admission::MIN_TIME,
                Step::UserContext => user_context::MIN_TIME,
                Step::Recall => recall::MIN_TIME,
                Step::FrequencyCap => frequency_cap::MIN_TIME,
                Step::Hydrate => hydrate::MIN_TIME,
                Step::Rank => rank::MIN_TIME,
            }),
            // One call serves three stages: hedged when any of them is.
            admission: Admission::new(
                &plan,
                stage_call!(
                    links,
                    cache,
                    ["admission", "result_cache", "user_context.recent_clicks"],
                    begin
                ),
            ),
            user_context: UserContextStage::new(
                &plan,
                stage_call!(links, feature, ["user_context.features"], user_context),
            ),
            recall: Recall::new(&plan, sources::build(&links)),
            frequency_cap: FrequencyCap::new(
                &plan,
                stage_call!(links, cache, ["frequency_cap"], filter_capped),
            ),
            hydrate: Hydrate::new(&plan, stage_call!(links, feature, ["hydrate"], items)),
            rank: Rank::new(&plan, stage_call!(links, ranking, ["rank"], rank)),
            rerank: Rerank::new(&plan),
            after_answer: AfterAnswer::new(
                &plan,
                downstreams.cache.clone(),
                links.breakers.cache.clone(),
            ),
        }
    }

    /// Completes when every after-answer write started so far has finished; no new ones start after.
    pub fn finish_background(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.after_answer.finish()
    }

    /// Runs the whole pipeline for one request, and records its metrics.
    pub async fn recommend(self: &Arc<Self>, q: Query) -> Result<Answer, Refused> {
        let started = Instant::now();
        let result = self.run(&q).await;
        let outcome = match &result {
            Ok(a) => {
                for s in &a.stages {
                    crate::metrics::stage(&s.stage, s.status, s.elapsed);
                }
                match (a.from_cache, a.degraded) {
                    (true, _) => "cached",
                    (false, true) => "degraded",
                    (false, false) => "ok",
                }
            }
            Err(_) => "refused",
        };
        crate::metrics::recommend(outcome, started.elapsed());
        result
    }

    /// The stages in order.
    async fn run(&self, q: &Query) -> Result<Answer, Refused> {
        let mut run = Run::new(q, self.total, &self.reserves);
        let (recent_clicks, clicks_report) = match self.admission.run(&mut run).await? {
            Start::Cached(items) => {
                // Shown again: its impressions count toward the frequency cap.
                let answer = cached(run, items);
                self.after_answer.queue(q, &answer);
                return Ok(answer);
            }
            Start::Fresh {
                recent_clicks,
                report,
            } => (recent_clicks, report),
        };
        let ctx = self
            .user_context
            .run(&mut run, recent_clicks, clicks_report)
            .await;
        let mut candidates = self.recall.run(&mut run, &ctx).await;
        self.frequency_cap.run(&mut run, &mut candidates).await;
        self.hydrate.run(&mut run, &mut candidates).await;
        let ranked = self.rank.run(&mut run, &ctx, &mut candidates).await;
        let cut = self.rerank.run(&mut run, &candidates, ranked.scored);
        let explanations = if q.explaining() {
            explain::explain(q, &ctx, &candidates, &cut, &run.reports)
        } else {
            Vec::new()
        };
        let answer = Answer {
            degraded: run.degraded(),
            items: cut.top,
            stages: run.reports,
            from_cache: false,
            cold_start: ctx.cold_start,
            model_version: ranked.model_version,
            explanations,
        };
        self.after_answer.queue(q, &answer);
        Ok(answer)
    }
}

/// The answer cached for this user and scene, cut to the count asked.
fn cached(run: Run<'_>, items: Vec<reco_types::Candidate>) -> Answer {
    Answer {
        items: items
            .into_iter()
            .take(run.q.count)
            .map(|c| AnswerItem {
                item_id: c.item_id,
                score: c.score,
                sources: c.sources,
            })
            .collect(),
        stages: run.reports,
        from_cache: true,
        ..Default::default()
    }
}
