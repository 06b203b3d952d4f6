//! The start of a request, in one call to the cache service: admission (the user's rate limit), the result cache
//! and the user's recent clicks. Reported as three stages (`admission`, `result_cache`,
//! `user_context.recent_clicks`), one span.
//!
//! Admission fails open by default: when the rate limiter cannot be asked the request is served and the report
//! says so; with `--rate-limit-fail-closed` it is refused (UNAVAILABLE).

use std::time::Duration;

use reco_client::{BeginQuery, Begun, RateLimit};
use reco_types::{Candidate, Event, ItemId, StageReport, StageStatus};

use super::{
    request::{Refused, Run, Step},
    stage::{self, Outcome},
};
use crate::{plan::Plan, resilience::StageService};

/// The least time the call is worth making in.
pub const MIN_TIME: Duration = Duration::from_millis(1);
/// The call's span: one call serves three stages.
const SPAN: &str = "admission+result_cache+recent_clicks";
/// Recent clicks read with admission, to leave out items the user has just seen.
const RECENT_CLICKS: u32 = 50;

/// What the start of a request found.
pub enum Start {
    /// The answer cached for this user and scene.
    Cached(Vec<Candidate>),
    /// No cached answer to serve: the request goes on with the user's recent clicks, and their stage's report
    /// (which goes after the user context's).
    Fresh {
        recent_clicks: Vec<Event>,
        report: StageReport,
    },
}

pub struct Admission {
    begin: StageService<BeginQuery, Begun>,
    budget: Duration,
    rate_limit: Option<(u32, Duration)>,
    fail_open: bool,
    frequency_cap: Option<(u32, Duration)>,
    blocklist: foldhash::HashSet<ItemId>,
}

impl Admission {
    pub fn new(plan: &Plan, begin: StageService<BeginQuery, Begun>) -> Self {
        Self {
            begin,
            budget: plan.cache_budget,
            rate_limit: plan.rate_limit,
            fail_open: plan.rate_limit_fail_open,
            frequency_cap: plan.frequency_cap,
            blocklist: plan.blocklist.iter().cloned().collect(),
        }
    }

    pub async fn run(&self, run: &mut Run<'_>) -> Result<Start, Refused> {
        let q = run.q;
        // Explain and bypass_cache ask for a fresh answer.
        let read_result = !(q.bypass_cache || q.explaining());
        let budget = run.budget(Step::Admission, self.budget);
        let query = BeginQuery {
            user_id: q.user_id.clone(),
            scene: q.scene.clone(),
            rate_limit: self.rate_limit.map(|(limit, window)| RateLimit {
                key: format!("recommend:{}", q.user_id),
                limit,
                window,
                cost: 1,
            }),
            read_result,
            recent_events: RECENT_CLICKS,
            // The cache service leaves out of a cached answer what is over the cap now.
            frequency_cap: self.frequency_cap.filter(|_| read_result),
        };
        let mut begun = stage::call(SPAN, budget, &self.begin, query).await;
        let admission = self.admission(run, &begun)?;
        run.report(admission);
        let mut report = begun.part("result_cache");
        if !read_result {
            let why = if q.explaining() {
                "explain asks for a fresh answer"
            } else {
                "bypass_cache"
            };
            run.report(StageReport::skipped("result_cache", why));
        } else {
            let hit = begun.value.as_mut().and_then(|b| b.result.take());
            let recent = begun
                .value
                .as_ref()
                .map(|b| b.recent_events.as_slice())
                .unwrap_or_default();
            match hit.filter(|h| !h.items.is_empty()) {
                Some(hit) => {
                    let cached = hit.items.len();
                    let items = self.still_good(hit.items, recent);
                    if items.len() >= q.count {
                        report.status = StageStatus::Cached;
                        report.candidates_in = cached as u32;
                        report.candidates_out = items.len() as u32;
                        if items.len() < cached {
                            report.detail = format!(
                                "{} of the cached items left out: engaged with since, blocked or over the frequency cap",
                                cached - items.len()
                            );
                        }
                        run.report(report);
                        return Ok(Start::Cached(items));
                    }
                    report.candidates_in = cached as u32;
                    report.detail = format!(
                        "the cached answer has {} items the user may still see, fewer than the {} asked: a fresh one",
                        items.len(),
                        q.count
                    );
                    run.report(report);
                }
                None => run.report(report),
            }
        }
        Ok(Start::Fresh {
            report: begun.part("user_context.recent_clicks"),
            recent_clicks: begun.value.map(|b| b.recent_events).unwrap_or_default(),
        })
    }

    /// The cached items the user may see now: not engaged with since the answer was made (their recent events),
    /// not blocked since. Those over the frequency cap the cache service has left out already. Every event also
    /// drops the user's cached answers; this holds the line when that has not happened yet (the cache service was
    /// down when the event came, so the event waits in the outbox).
    fn still_good(&self, mut items: Vec<Candidate>, recent: &[Event]) -> Vec<Candidate> {
        if recent.is_empty() && self.blocklist.is_empty() {
            return items;
        }
        let seen: foldhash::HashSet<&ItemId> = recent.iter().map(|e| &e.item_id).collect();
        items.retain(|c| !seen.contains(&c.item_id) && !self.blocklist.contains(&c.item_id));
        items
    }

    /// Admission from the rate check's part of the call: refused, admitted, or failed open or closed.
    fn admission(&self, run: &Run<'_>, begun: &Outcome<Begun>) -> Result<StageReport, Refused> {
        if self.rate_limit.is_none() {
            return Ok(StageReport::skipped("admission", "rate limiting is off"));
        }
        let mut report = begun.part("admission");
        match begun.value.as_ref().map(|b| b.rate) {
            Some(Some(d)) if !d.allowed => Err(Refused::RateLimited {
                user: run.q.user_id.clone(),
                retry_after: d.retry_after,
            }),
            Some(Some(_)) => Ok(report),
            // A cache service that answered without the rate check it was asked for cannot be trusted with it.
            Some(None) | None if self.fail_open => {
                if report.status == StageStatus::Ok {
                    report.status = StageStatus::Error;
                    report.detail = "the cache service did not answer the rate check".into();
                }
                report.detail = format!("{}; failed open", report.detail);
                Ok(report)
            }
            Some(None) => Err(Refused::AdmissionUnavailable(
                "the cache service did not answer the rate check".into(),
            )),
            None => Err(Refused::AdmissionUnavailable(report.detail)),
        }
    }
}
