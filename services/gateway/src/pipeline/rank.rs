//! Ranking: the model scores every candidate. The request carries only the model's user inputs
//! (`reco_ranker::features::USER_INPUTS`), and each candidate its hydrated item as a shared `Arc<RankItem>` with
//! its sources; the ranking client decides how that travels (in process: as it is; over gRPC: each item encoded
//! once and sent by reference once ranking holds it). When ranking fails or is late, the answer keeps recall order.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use reco_client::RankAnswer;
use reco_ranker::{RankCandidate, RankInput, RankItem, features::USER_INPUTS};
use reco_types::{Features, StageReport};

use super::{
    candidates::Candidates,
    request::{Run, Step},
    stage,
    user_context::Context,
};
use crate::{plan::Plan, resilience::StageService};

/// The least time the call is worth making in.
pub const MIN_TIME: Duration = Duration::from_millis(5);

pub struct Rank {
    call: StageService<Arc<RankInput>, RankAnswer>,
    budget: Duration,
    enabled: bool,
}

/// What ranking gave the answer.
#[derive(Debug, Default)]
pub struct Ranked {
    /// The candidates carry model scores (otherwise they are in recall order).
    pub scored: bool,
    pub model_version: String,
}

impl Rank {
    pub fn new(plan: &Plan, call: StageService<Arc<RankInput>, RankAnswer>) -> Self {
        Self {
            call,
            budget: plan.ranking_budget,
            enabled: plan.rank,
        }
    }

    pub async fn run(
        &self,
        run: &mut Run<'_>,
        ctx: &Context,
        candidates: &mut Candidates,
    ) -> Ranked {
        if candidates.is_empty() {
            run.report(StageReport::skipped("rank", "no candidates"));
            return Ranked::default();
        }
        if !self.enabled {
            run.report(StageReport::skipped("rank", "ranking is off: recall order"));
            return Ranked::default();
        }
        let budget = run.budget(Step::Rank, self.budget);
        let input = Arc::new(input(run, ctx, candidates));
        let out = stage::call("rank", budget, &self.call, input).await;
        let mut report = out.report;
        report.candidates_in = candidates.len() as u32;
        let Some(answer) = out.value else {
            report.detail = format!("{}; fell back to recall order", report.detail);
            run.report(report);
            return Ranked::default();
        };
        let scores: foldhash::HashMap<_, f32> = answer
            .scores
            .into_iter()
            .map(|s| (s.item_id, s.score))
            .collect();
        for c in candidates.iter_mut() {
            c.score = scores.get(&c.item_id).copied();
        }
        report.candidates_out = scores.len() as u32;
        let mut notes = answer.notes;
        if !answer.missing.is_empty() {
            let list: Vec<String> = answer
                .missing
                .iter()
                .map(|(f, n)| format!("{f} {n}"))
                .collect();
            notes.push(format!("defaulted features: {}", list.join(", ")));
        }
        report.detail = notes.join("; ");
        run.report(report);
        Ranked {
            scored: !scores.is_empty(),
            model_version: answer.model_version,
        }
    }
}

/// The user's inputs to the model: the features it may read, nothing else.
pub fn user_inputs(features: &Features) -> Features {
    let mut inputs = Features::new();
    for k in USER_INPUTS {
        if let Some(v) = features.get(k) {
            inputs.insert(*k, v.clone());
        }
    }
    inputs
}

/// The request: each candidate's item shared, not copied; a candidate hydration did not reach goes by its id.
fn input(run: &Run<'_>, ctx: &Context, candidates: &Candidates) -> RankInput {
    RankInput {
        user_id: run.q.user_id.clone(),
        user_features: user_inputs(&ctx.features),
        user_embedding: ctx.embedding.clone(),
        candidates: candidates
            .iter()
            .map(|c| RankCandidate {
                item: c.item.clone().unwrap_or_else(|| {
                    Arc::new(RankItem::new(
                        c.item_id.clone(),
                        Features::new(),
                        Vec::new(),
                        None,
                    ))
                }),
                sources: c.sources.clone(),
            })
            .collect(),
        context: run
            .q
            .context
            .clone()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
    }
}
