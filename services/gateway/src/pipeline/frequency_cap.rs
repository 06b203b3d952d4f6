//! Frequency control: candidates the user was shown `cap` times within the window are dropped (the cache
//! service counts impressions; the after-answer writer records them).

use std::time::Duration;

use reco_client::CapQuery;
use reco_types::{ItemId, StageReport};

use super::{
    candidates::Candidates,
    request::{Run, Step},
    stage,
};
use crate::{merge::DropReason, plan::Plan, resilience::StageService};

/// The least time the call is worth making in.
pub const MIN_TIME: Duration = Duration::from_millis(1);

pub struct FrequencyCap {
    call: StageService<CapQuery, Vec<ItemId>>,
    budget: Duration,
    cap: Option<(u32, Duration)>,
}

impl FrequencyCap {
    pub fn new(plan: &Plan, call: StageService<CapQuery, Vec<ItemId>>) -> Self {
        Self {
            call,
            budget: plan.cache_budget,
            cap: plan.frequency_cap,
        }
    }

    pub async fn run(&self, run: &mut Run<'_>, candidates: &mut Candidates) {
        let Some((cap, window)) = self.cap else {
            run.report(StageReport::skipped(
                "frequency_cap",
                "frequency control is off",
            ));
            return;
        };
        if candidates.is_empty() {
            run.report(StageReport::skipped("frequency_cap", "no candidates"));
            return;
        }
        let budget = run.budget(Step::FrequencyCap, self.budget);
        let query = CapQuery {
            user_id: run.q.user_id.clone(),
            item_ids: candidates.iter().map(|c| c.item_id.clone()).collect(),
            cap,
            window,
        };
        let out = stage::call("frequency_cap", budget, &self.call, query).await;
        let mut report = out.report;
        report.candidates_in = candidates.len() as u32;
        if let Some(capped) = out.value {
            let capped: foldhash::HashSet<ItemId> = capped.into_iter().collect();
            let detail = format!("shown {cap} times within {} s", window.as_secs());
            candidates.drop_where(DropReason::FrequencyCap, |c| {
                capped.contains(&c.item_id).then(|| detail.clone())
            });
        }
        report.candidates_out = candidates.len() as u32;
        run.report(report);
    }
}
