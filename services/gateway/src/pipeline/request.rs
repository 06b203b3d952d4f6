//! One Recommend call as the stages see it: the validated query, its deadline, the reports of the stages run so
//! far, and the answer the pipeline gives.

use std::{
    collections::{BTreeMap, HashSet},
    time::{Duration, Instant},
};

use reco_types::{FeatureVersion, ItemId, Name, Scene, SourceHit, StageReport, UserId};

use crate::{budget::Deadline, merge::DropReason};

/// One Recommend call, validated.
#[derive(Clone, Debug)]
pub struct Query {
    pub user_id: UserId,
    pub count: usize,
    pub scene: Scene,
    pub context: BTreeMap<String, String>,
    pub explain: bool,
    /// Items to explain (implies `explain`); empty explains every candidate.
    pub explain_items: Vec<ItemId>,
    pub bypass_cache: bool,
    pub include_graph: bool,
    /// On-demand recall sources this request asks for, by name.
    pub include_sources: HashSet<String>,
    pub feature_version: Option<FeatureVersion>,
    pub caller_timeout: Option<Duration>,
}

impl Query {
    /// Whether the answer explains its candidates.
    pub fn explaining(&self) -> bool {
        self.explain || !self.explain_items.is_empty()
    }
}

/// One recommended item.
#[derive(Clone, Debug, PartialEq)]
pub struct AnswerItem {
    pub item_id: ItemId,
    pub score: f32,
    pub sources: Vec<SourceHit>,
}

/// Why a candidate is where it is, for explain mode.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub item_id: ItemId,
    pub sources: Vec<SourceHit>,
    pub categories: Vec<Name>,
    pub features: BTreeMap<String, f64>,
    pub score: f32,
    /// 1-based; 0 when not in the answer.
    pub position: u32,
    pub dropped: Option<DropReason>,
    pub detail: String,
}

/// The pipeline's answer.
#[derive(Clone, Debug, Default)]
pub struct Answer {
    pub items: Vec<AnswerItem>,
    pub stages: Vec<StageReport>,
    pub degraded: bool,
    pub from_cache: bool,
    pub cold_start: bool,
    pub model_version: String,
    pub explanations: Vec<Explanation>,
}

/// Why a Recommend call was refused (as opposed to answered with degradation).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The caller is over its rate limit.
    #[error("rate limit reached for user {user}: retry after {retry_after:?}")]
    RateLimited { user: UserId, retry_after: Duration },
    /// The rate limiter could not be asked and admission is configured to fail closed.
    #[error("admission failed closed: {0}")]
    AdmissionUnavailable(String),
}

/// The stages with calls of their own, in the order they run. Each declares the least time it needs to be worth
/// running (its file's `MIN_TIME`); a stage's budget keeps back what the stages after it need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Admission,
    UserContext,
    Recall,
    FrequencyCap,
    Hydrate,
    Rank,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] = [
        Step::Admission,
        Step::UserContext,
        Step::Recall,
        Step::FrequencyCap,
        Step::Hydrate,
        Step::Rank,
    ];
}

/// What each step keeps back for the steps after it: the sum of their least times.
#[derive(Clone, Copy, Debug)]
pub struct Reserves([Duration; Step::ALL.len()]);

impl Reserves {
    /// From each step's least time.
    pub fn new(min_time: impl Fn(Step) -> Duration) -> Self {
        let mut after = [Duration::ZERO; Step::ALL.len()];
        for i in (0..Step::ALL.len() - 1).rev() {
            after[i] = after[i + 1] + min_time(Step::ALL[i + 1]);
        }
        Self(after)
    }

    pub fn after(&self, step: Step) -> Duration {
        self.0[step as usize]
    }
}

/// A request going through the stages.
pub struct Run<'a> {
    pub q: &'a Query,
    deadline: Deadline,
    reserves: &'a Reserves,
    /// One per stage run so far, in order.
    pub reports: Vec<StageReport>,
}

impl<'a> Run<'a> {
    pub fn new(q: &'a Query, total: Duration, reserves: &'a Reserves) -> Self {
        Self {
            q,
            deadline: Deadline::new(Instant::now(), total, q.caller_timeout),
            reserves,
            reports: Vec::new(),
        }
    }

    /// The budget of `step` configured with `budget`: no more than what is left once the later steps' least
    /// times are kept back.
    pub fn budget(&self, step: Step, budget: Duration) -> Duration {
        self.deadline.carve(budget, self.reserves.after(step))
    }

    pub fn report(&mut self, report: StageReport) {
        self.reports.push(report);
    }

    /// Whether a stage that shapes the answer timed out or failed (admission and the result cache only fail open
    /// or miss: the answer is whole without them).
    pub fn degraded(&self) -> bool {
        self.reports
            .iter()
            .any(|s| s.status.is_degraded() && s.stage != "admission" && s.stage != "result_cache")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_keeps_back_what_the_steps_after_it_need() {
        let ms = Duration::from_millis;
        let r = Reserves::new(|s| match s {
            Step::Admission => ms(1),
            Step::UserContext => ms(3),
            Step::Recall => ms(5),
            Step::FrequencyCap => ms(1),
            Step::Hydrate => ms(3),
            Step::Rank => ms(5),
        });
        assert_eq!(r.after(Step::Admission), ms(17));
        assert_eq!(r.after(Step::UserContext), ms(14));
        assert_eq!(r.after(Step::Recall), ms(9));
        assert_eq!(r.after(Step::Hydrate), ms(5));
        assert_eq!(r.after(Step::Rank), Duration::ZERO);
    }
}
