//! Recall and merge: every source that runs first, at once, each under its own budget; their lists merged
//! ([`crate::merge`]: dedup with provenance, seen and blocked items dropped, fused, quotas); then the fallbacks,
//! in order, while the merged list is shorter than wanted, merging again after each that found something.
//!
//! ```text
//!   recall.cf ‖ recall.vector ‖ recall.graph (on demand) ‖ recall.popular ─▶ merge ─▶ fallbacks? ─▶ merge
//! ```

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use futures::future::join_all;
use reco_types::{Candidate, ItemId, StageReport, StageStatus};

use super::{
    candidates::Candidates,
    request::{Run, Step},
    sources::RecallSource,
    stage,
    user_context::Context,
};
use crate::{
    merge::{self, MergePolicy},
    plan::{Mode, Plan, SourceKind},
};

/// The least time a recall source is worth running in.
pub const MIN_TIME: Duration = Duration::from_millis(5);

pub struct Recall {
    sources: Vec<Box<dyn RecallSource>>,
    policy: MergePolicy,
    blocklist: HashSet<ItemId>,
    min_candidates: usize,
}

impl Recall {
    pub fn new(plan: &Plan, sources: Vec<Box<dyn RecallSource>>) -> Self {
        let shares = |share: fn(&crate::plan::SourcePlan) -> Option<f32>| {
            plan.sources
                .iter()
                .filter_map(|s| share(s).map(|f| (s.name.to_string(), f)))
                .collect()
        };
        Self {
            sources,
            policy: MergePolicy {
                max_candidates: plan.max_candidates,
                max_share: shares(|p| (p.max_share < 1.0).then_some(p.max_share)),
                min_share: shares(|p| (p.min_share > 0.0).then_some(p.min_share)),
            },
            blocklist: plan.blocklist.clone(),
            min_candidates: plan.min_candidates,
        }
    }

    /// Recalls and merges; reports each source, then merge.
    pub async fn run(&self, run: &mut Run<'_>, ctx: &Context) -> Candidates {
        let (fallbacks, first): (Vec<&dyn RecallSource>, Vec<&dyn RecallSource>) = self
            .sources
            .iter()
            .map(AsRef::as_ref)
            .partition(|s| s.plan().mode == Mode::Fallback);
        let recalls = join_all(first.into_iter().map(|s| self.source(s, run, ctx))).await;
        let mut lists = Vec::new();
        for (list, report) in recalls {
            run.report(report);
            lists.extend(list);
        }
        let mut candidates_in: usize = lists.iter().map(Vec::len).sum();
        let mut merge_elapsed = Duration::ZERO;
        let mut merge = |lists: Vec<Vec<Candidate>>| {
            let started = Instant::now();
            let mut dropped = Vec::new();
            let merged = merge::merge(
                lists,
                &ctx.seen,
                &self.blocklist,
                &self.policy,
                &mut dropped,
            );
            merge_elapsed += started.elapsed();
            Candidates::merged(merged, dropped)
        };
        // The lists are kept for a second merge only when a fallback may add to them.
        let mut merged = if !fallbacks.is_empty() {
            merge(lists.clone())
        } else {
            merge(std::mem::take(&mut lists))
        };
        let needed = self.min_candidates.max(run.q.count);
        for s in fallbacks {
            if merged.len() >= needed {
                let why = format!(
                    "fallback not needed: {} candidates, {needed} wanted",
                    merged.len()
                );
                run.report(StageReport::skipped(s.plan().stage(), why));
                continue;
            }
            let (list, report) = self.source(s, run, ctx).await;
            run.report(report);
            if let Some(list) = list.filter(|l| !l.is_empty()) {
                candidates_in += list.len();
                lists.push(list);
                merged = merge(lists.clone());
            }
        }
        let dropped = merged.dropped().len();
        run.report(StageReport {
            stage: "merge".into(),
            status: StageStatus::Ok,
            budget: Duration::ZERO,
            elapsed: merge_elapsed,
            candidates_in: candidates_in as u32,
            candidates_out: merged.len() as u32,
            detail: format!(
                "{} duplicates merged, {dropped} dropped (seen, blocked or over quota)",
                candidates_in - merged.len() - dropped,
            ),
        });
        merged
    }

    /// Runs one source as a stage: skipped when its mode or the request leaves it out, or it has nothing to go
    /// on; otherwise under its carved budget.
    async fn source(
        &self,
        s: &dyn RecallSource,
        run: &Run<'_>,
        ctx: &Context,
    ) -> (Option<Vec<Candidate>>, StageReport) {
        let plan = s.plan();
        let name = plan.stage();
        let q = run.q;
        let asked = q.include_sources.contains(plan.name.as_str())
            || (q.include_graph && plan.kind == SourceKind::Graph)
            || plan.scenes.contains(q.scene.as_str());
        let why = match plan.mode {
            Mode::Off => Some("off in the pipeline configuration"),
            Mode::OnDemand if !asked => {
                Some("on demand: not asked for by the request (include_sources) or its scene")
            }
            _ => s.skip_reason(ctx),
        };
        if let Some(why) = why {
            return (None, StageReport::skipped(name, why));
        }
        if let Some(list) = s.cached() {
            let mut report = StageReport::skipped(name, "kept from a recent call");
            report.status = StageStatus::Cached;
            report.candidates_out = list.len() as u32;
            return (Some(list), report);
        }
        let budget = run.budget(Step::Recall, plan.budget);
        let out = stage::run(name, budget, s.recall(&q.user_id, ctx, budget)).await;
        let mut report = out.report;
        report.candidates_out = out.value.as_ref().map_or(0, |v| v.len() as u32);
        (out.value, report)
    }
}
