//! Hydration: each candidate's item (features, categories, embedding) from the gateway's item cache, and from the
//! feature service in one batch for the ones it does not hold. An item the feature store does not know (deleted,
//! or not loaded yet) is dropped. When the batch fails, the candidates go on without items: ranking then scores
//! them on their sources alone.
//!
//! Items are kept as ranking reads them (`RankItem`: built once, its numeric inputs worked out once), and the same
//! `Arc` goes to ranking with every request that has the item, by reference in process.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reco_client::ItemsQuery;
use reco_ranker::RankItem;
use reco_server::ItemCache;
use reco_types::{Item, ItemId, StageReport, StageStatus};

use super::{
    candidates::Candidates,
    request::{Run, Step},
    stage,
};
use crate::{merge::DropReason, plan::Plan, resilience::StageService};

/// The least time the call is worth making in.
pub const MIN_TIME: Duration = Duration::from_millis(3);
/// Most items the gateway's item cache holds.
const ITEM_CACHE_CAPACITY: usize = 200_000;

pub struct Hydrate {
    call: StageService<ItemsQuery, Vec<Item>>,
    budget: Duration,
    /// Items of the active feature set, kept for the plan's `item_cache_ttl`: item features change slowly and
    /// most candidates recur, so most hydrations need no call at all.
    items: Option<ItemCache<RankItem>>,
}

impl Hydrate {
    pub fn new(plan: &Plan, call: StageService<ItemsQuery, Vec<Item>>) -> Self {
        Self {
            call,
            budget: plan.features_budget,
            items: (!plan.item_cache_ttl.is_zero())
                .then(|| ItemCache::new(plan.item_cache_ttl, ITEM_CACHE_CAPACITY)),
        }
    }

    pub async fn run(&self, run: &mut Run<'_>, candidates: &mut Candidates) {
        if candidates.is_empty() {
            run.report(StageReport::skipped("hydrate", "no candidates"));
            return;
        }
        let started = Instant::now();
        // Only the active feature set is cached; a request naming a version reads it fresh.
        let cache = self
            .items
            .as_ref()
            .filter(|_| run.q.feature_version.is_none());
        if let Some(cache) = cache {
            let mut kept = Vec::with_capacity(candidates.len());
            cache.get_many(candidates.iter().map(|c| &c.item_id), |_, item| {
                kept.push(item)
            });
            for (c, item) in candidates.iter_mut().zip(kept) {
                c.item = item;
            }
        }
        let missing: Vec<ItemId> = candidates
            .iter()
            .filter(|c| c.item.is_none())
            .map(|c| c.item_id.clone())
            .collect();
        let cached = candidates.len() - missing.len();
        let mut report = if missing.is_empty() {
            StageReport {
                stage: "hydrate".into(),
                status: StageStatus::Cached,
                budget: Duration::ZERO,
                elapsed: started.elapsed(),
                candidates_in: 0,
                candidates_out: 0,
                detail: format!("all {cached} from the gateway's item cache"),
            }
        } else {
            let budget = run.budget(Step::Hydrate, self.budget);
            let fetched = missing.len();
            let query = ItemsQuery {
                item_ids: missing,
                version: run.q.feature_version.clone(),
                include_embeddings: true,
            };
            let out = stage::call("hydrate", budget, &self.call, query).await;
            let mut report = out.report;
            if cached > 0 {
                let sep = if report.detail.is_empty() { "" } else { "; " };
                report.detail = format!(
                    "{cached} from the gateway's item cache, {fetched} asked of the feature service{sep}{}",
                    report.detail
                );
            }
            let Some(items) = out.value else {
                // Not answered: the candidates go on as they are.
                report.candidates_in = candidates.len() as u32;
                report.candidates_out = candidates.len() as u32;
                run.report(report);
                return;
            };
            let fresh: foldhash::HashMap<ItemId, Arc<RankItem>> = items
                .into_iter()
                .map(|i| {
                    let item =
                        RankItem::new(i.item_id.clone(), i.features, i.categories, i.embedding);
                    (i.item_id, Arc::new(item))
                })
                .collect();
            if let Some(cache) = cache {
                cache.insert_many(fresh.iter().map(|(id, item)| (id.clone(), item.clone())));
            }
            for c in candidates.iter_mut().filter(|c| c.item.is_none()) {
                c.item = fresh.get(&c.item_id).cloned();
            }
            report
        };
        report.candidates_in = candidates.len() as u32;
        candidates.drop_where(DropReason::NoFeatures, |c| {
            c.item
                .is_none()
                .then(|| "unknown to the feature store".to_string())
        });
        report.candidates_out = candidates.len() as u32;
        run.report(report);
    }
}
