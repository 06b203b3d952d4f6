//! The Recommend pipeline of DESIGN.md, stage by stage, each under a budget carved from the deadline.
//!
//! ```text
//!   admission + result_cache + user_context.recent_clicks (one cache call) ─hit─▶ answer
//!                    │ miss
//!                    ▼
//!   user_context.features
//!                    ▼
//!   recall.cf ‖ recall.vector ‖ recall.graph ‖ recall.popular
//!                    ▼
//!   merge ─▶ frequency_cap ─▶ hydrate ─▶ rank ─▶ rerank ─▶ answer ─▶ (after: result cache, impressions)
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::future::join_all;
use reco_proto::{
    cache::v1::{
        BeginRecommendRequest, BeginRecommendResponse, CheckRateLimitRequest, FilterCappedRequest,
        FilterCappedResponse, PutRecommendationsBatchRequest, PutRecommendationsRequest,
        RecordImpressionsRequest, cache_service_client::CacheServiceClient,
    },
    conversions,
    feature::v1::{
        BatchGetItemFeaturesRequest, BatchGetItemFeaturesResponse, GetUserContextRequest,
        GetUserContextResponse, Item,
    },
    ranking::v1::{EncodedCandidate, RankCandidate, RankRequest, RankResponse},
};
use reco_ranker::features as rank_features;
use reco_server::{ItemCache, TracedChannel};
use reco_types::{
    Candidate, Embedding, FeatureVersion, ItemId, Name, Scene, SourceHit, StageReport, StageStatus,
    UserId,
};
use tokio::sync::mpsc;
use tower::ServiceExt;
use tracing::warn;

use crate::{
    budget::Deadline,
    merge::{self, DropReason, MergePolicy, Ranked},
    recall::{RecallContext, RecallSource},
    resilience::{Breaker, BreakerState, Call, StageService},
    spec::{Mode, SourceKind},
    stage::{self, request},
};

/// Least time each kind of stage needs to be worth running; earlier stages leave this much for later ones.
const MIN_FEATURES: Duration = Duration::from_millis(3);
const MIN_RECALL: Duration = Duration::from_millis(5);
const MIN_HYDRATE: Duration = Duration::from_millis(3);
const MIN_RANK: Duration = Duration::from_millis(5);

/// The begin call's span name; its report is split into the three stages it serves.
const BEGIN: &str = "admission+result_cache+recent_clicks";
/// Recent clicks read with admission, to drop items the user has just seen.
const RECENT_CLICKS: u32 = 50;

/// How the pipeline runs; built from the gateway's flags.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub total: Duration,
    pub features_budget: Duration,
    pub cache_budget: Duration,
    pub ranking_budget: Duration,
    /// Score candidates with the ranking service; off serves the merged recall order (for comparisons).
    pub rank: bool,
    /// Send ranking a reference instead of an item it was sent before (`RankCandidate.item_ref`).
    pub rank_item_refs: bool,
    pub max_candidates: usize,
    /// Fallback sources run while the merged list is shorter than this (or than the request's count).
    pub min_candidates: usize,
    /// How long hydrated items are kept in the gateway (zero: not kept, every hydration asks the feature service).
    pub item_cache_ttl: Duration,
    pub per_category: usize,
    pub blocklist: HashSet<ItemId>,
    /// Requests per window per user; None turns admission off.
    pub rate_limit: Option<(u32, Duration)>,
    /// Serve when the rate limiter cannot be asked.
    pub rate_limit_fail_open: bool,
    /// Impressions within the window that cap an item; None turns frequency control off.
    pub frequency_cap: Option<(u32, Duration)>,
    pub result_ttl: Duration,
}

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
pub enum PipelineError {
    /// The caller is over its rate limit.
    #[error("rate limit reached for user {user}: retry after {retry_after:?}")]
    RateLimited { user: UserId, retry_after: Duration },
    /// The rate limiter could not be asked and admission is configured to fail closed.
    #[error("admission failed closed: {0}")]
    AdmissionUnavailable(String),
}

/// The calls of the stages other than recall, each behind its downstream's breaker (and hedged if configured).
#[derive(Clone)]
pub struct Rpcs {
    /// Admission, the result cache and recent clicks in one call (BeginRecommend).
    pub begin: StageService<BeginRecommendRequest, BeginRecommendResponse>,
    pub user_context: StageService<GetUserContextRequest, GetUserContextResponse>,
    pub frequency_cap: StageService<FilterCappedRequest, FilterCappedResponse>,
    pub hydrate: StageService<BatchGetItemFeaturesRequest, BatchGetItemFeaturesResponse>,
    pub rank: StageService<RankRequest, RankResponse>,
    /// For the writes after the answer (result cache, impressions), which are not stages.
    pub cache: CacheServiceClient<TracedChannel>,
    pub cache_breaker: Arc<Breaker>,
}

/// The pipeline: configuration, the stages' calls and the recall sources it fans out to.
pub struct Pipeline {
    cfg: PipelineConfig,
    rpc: Rpcs,
    sources: Vec<Box<dyn RecallSource>>,
    /// The after-answer writes in flight, so a shutdown can wait for them instead of losing impressions.
    background: tokio_util::task::TaskTracker,
    /// The writes after answers (results to cache, impressions), queued for one writer task that sends them in
    /// batches (started on the first answer, tracked by `background`).
    results: std::sync::OnceLock<mpsc::Sender<AfterAnswer>>,
    /// Tells the writer to send what is queued and stop.
    results_closing: Arc<tokio::sync::Notify>,
    /// Items (features, categories, embedding) of the active feature set, kept for `item_cache_ttl`: item
    /// features change slowly and most candidates recur, so most hydrations need no call at all.
    items: Option<ItemCache<Hydrated>>,
    /// The sources' quotas, fixed by the plan.
    policy: MergePolicy,
}

/// An item as the gateway keeps it: what the feature service answered, and the part of its features ranking
/// reads (projected once, not on every request).
pub struct Hydrated {
    pub item: Item,
    /// The item's part of a ranking candidate (id, the model's item inputs, embedding, categories), encoded once
    /// per cached item instead of built and encoded for every request.
    pub rank_item: prost::bytes::Bytes,
    /// The item's first well-formed category, the one diversity counts it under (parsed once, not per request).
    pub category: Option<Name>,
    /// The reference to `rank_item` (`EncodedCandidate::digest`), sent in its place once ranking holds it.
    pub rank_ref: prost::bytes::Bytes,
    /// Ranking answered a request that carried `rank_item` in full, so it holds the item: later requests send
    /// `rank_ref`. Cleared when ranking says it no longer holds it.
    pub ranking_holds: std::sync::atomic::AtomicBool,
}

impl Hydrated {
    fn new(item: Item) -> Self {
        let rank_features = item
            .features
            .as_ref()
            .map(|f| reco_proto::common::v1::Features {
                values: rank_features::ITEM_INPUTS
                    .iter()
                    .filter_map(|k| f.values.get(*k).map(|v| (k.to_string(), v.clone())))
                    .collect(),
            });
        let rank_item = EncodedCandidate::item_part(&RankCandidate {
            item_id: item.item_id.clone(),
            item_features: rank_features,
            sources: Vec::new(),
            embedding: item.embedding.clone(),
            categories: item.categories.clone(),
            item_ref: Vec::new(),
        });
        let category = item
            .categories
            .iter()
            .find_map(|c| Name::parse("category", c).ok());
        let rank_ref = prost::bytes::Bytes::copy_from_slice(&EncodedCandidate::digest(&rank_item));
        Self {
            item,
            rank_item,
            category,
            rank_ref,
            ranking_holds: Default::default(),
        }
    }
}

impl std::ops::Deref for Hydrated {
    type Target = Item;
    fn deref(&self) -> &Item {
        &self.item
    }
}

/// Most items the gateway's item cache holds.
const ITEM_CACHE_CAPACITY: usize = 200_000;

impl Pipeline {
    pub fn new(cfg: PipelineConfig, rpc: Rpcs, sources: Vec<Box<dyn RecallSource>>) -> Self {
        let items = (!cfg.item_cache_ttl.is_zero())
            .then(|| ItemCache::new(cfg.item_cache_ttl, ITEM_CACHE_CAPACITY));
        let shares = |share: fn(&crate::spec::SourcePlan) -> Option<f32>| {
            sources
                .iter()
                .filter_map(|s| share(s.plan()).map(|f| (s.plan().name.to_string(), f)))
                .collect()
        };
        let policy = MergePolicy {
            max_candidates: cfg.max_candidates,
            max_share: shares(|p| (p.max_share < 1.0).then_some(p.max_share)),
            min_share: shares(|p| (p.min_share > 0.0).then_some(p.min_share)),
        };
        Self {
            cfg,
            rpc,
            sources,
            background: tokio_util::task::TaskTracker::new(),
            results: Default::default(),
            results_closing: Default::default(),
            items,
            policy,
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// Completes when every after-answer write started so far has finished; no new ones start after.
    pub fn finish_background(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.background.close();
        // A permit is stored if the writer is busy sending: it closes its queue as soon as it looks.
        self.results_closing.notify_one();
        let tracker = self.background.clone();
        async move { tracker.wait().await }
    }

    /// Runs the whole pipeline for one request, and records its metrics.
    pub async fn recommend(self: &Arc<Self>, q: Query) -> Result<Answer, PipelineError> {
        let started = Instant::now();
        let result = self.run(q).await;
        let outcome = match &result {
            Ok(a) => {
                for s in &a.stages {
                    crate::metrics::stage(&s.stage, s.status, s.elapsed);
                }
                if a.from_cache {
                    "cached"
                } else if a.degraded {
                    "degraded"
                } else {
                    "ok"
                }
            }
            Err(_) => "refused",
        };
        crate::metrics::recommend(outcome, started.elapsed());
        result
    }

    async fn run(self: &Arc<Self>, q: Query) -> Result<Answer, PipelineError> {
        let deadline = Deadline::new(Instant::now(), self.cfg.total, q.caller_timeout);
        let mut answer = Answer::default();

        // admission, result cache and recent clicks: one BeginRecommend call to the cache service
        let read_result = !(q.bypass_cache || q.explain || !q.explain_items.is_empty());
        let mut begin = self.begin(&q, read_result, &deadline).await;
        answer.stages.push(self.admission(&q, &begin)?);
        if read_result {
            let mut report = begin.part("result_cache");
            let hit = begin.value.as_mut().and_then(|b| b.result.take());
            if let Some(hit) = hit.filter(|r| r.found) {
                let items: Vec<Candidate> =
                    conversions::candidates("items", hit.items).unwrap_or_default();
                if !items.is_empty() {
                    report.status = StageStatus::Cached;
                    report.candidates_out = items.len() as u32;
                    answer.stages.push(report);
                    answer.from_cache = true;
                    answer.items = items
                        .into_iter()
                        .take(q.count)
                        .map(|c| AnswerItem {
                            item_id: c.item_id,
                            score: c.score,
                            sources: c.sources,
                        })
                        .collect();
                    return Ok(answer);
                }
            }
            answer.stages.push(report);
        } else {
            let why = if q.explain {
                "explain asks for a fresh answer"
            } else {
                "bypass_cache"
            };
            answer
                .stages
                .push(StageReport::skipped("result_cache", why));
        }

        // user context: features, embedding, pool and sequence from the feature service (clicks came with admission)
        let after_context = MIN_RECALL + MIN_HYDRATE + MIN_RANK;
        let features_out = {
            let fb = deadline.carve(self.cfg.features_budget, after_context);
            let fmsg = GetUserContextRequest {
                user_id: q.user_id.to_string(),
                feature_version: q
                    .feature_version
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                max_events: 0,
                max_pool: self.cfg.max_candidates as u32,
            };
            stage::run(
                "user_context.features",
                fb,
                call(&self.rpc.user_context, fmsg, fb),
            )
            .await
        };
        let clicks_report = begin.part("user_context.recent_clicks");
        let clicks = begin.value.map(|b| b.recent_events).unwrap_or_default();
        let context_answered = features_out.value.is_some();
        let ctx = features_out.value.unwrap_or_default();
        answer.stages.push(features_out.report);
        answer.stages.push(clicks_report);

        let user_features = conversions::features("features", ctx.features).unwrap_or_default();
        let user_embedding = Embedding::parse_optional("embedding", ctx.embedding)
            .ok()
            .flatten();
        let pool = conversions::candidates("recall_pool", ctx.recall_pool).unwrap_or_default();
        let mut recent_items: Vec<ItemId> = Vec::new();
        let mut seen: foldhash::HashSet<ItemId> = foldhash::HashSet::default();
        for id in clicks
            .iter()
            .map(|e| &e.item_id)
            .chain(ctx.recent_events.iter().map(|e| &e.item_id))
        {
            if let Ok(id) = ItemId::parse("item_id", id)
                && seen.insert(id.clone())
            {
                recent_items.push(id);
            }
        }
        // Cold start only when the feature service answered that it knows nothing of the user.
        answer.cold_start = context_answered && !ctx.found && recent_items.is_empty();

        // recall: every source that runs first, at once; then the fallbacks in order while the list is short
        let rctx = RecallContext {
            user_id: q.user_id.clone(),
            embedding: user_embedding.clone(),
            pool,
            recent_items,
        };
        let after_recall = MIN_HYDRATE + MIN_RANK;
        let first: Vec<&dyn RecallSource> = self
            .sources
            .iter()
            .map(AsRef::as_ref)
            .filter(|s| s.plan().mode != Mode::Fallback)
            .collect();
        let recalls = join_all(
            first
                .iter()
                .map(|s| self.recall_stage(*s, &q, &rctx, &deadline, after_recall)),
        )
        .await;
        let mut lists = Vec::new();
        for (list, report) in recalls {
            answer.stages.push(report);
            lists.extend(list);
        }

        // merge
        let policy = &self.policy;
        let merge_started = Instant::now();
        let mut dropped = Vec::new();
        let mut candidates_in: usize = lists.iter().map(Vec::len).sum();
        // The lists are kept for a second merge only when a fallback may add to them.
        let has_fallbacks = self.sources.iter().any(|s| s.plan().mode == Mode::Fallback);
        let mut merged = merge::merge(
            if has_fallbacks {
                lists.clone()
            } else {
                std::mem::take(&mut lists)
            },
            &seen,
            &self.cfg.blocklist,
            policy,
            &mut dropped,
        );
        let mut merge_elapsed = merge_started.elapsed();

        // fallbacks, in the configured order
        let needed = self.cfg.min_candidates.max(q.count);
        for s in self
            .sources
            .iter()
            .filter(|s| s.plan().mode == Mode::Fallback)
        {
            let report = if merged.len() >= needed {
                StageReport::skipped(
                    s.plan().stage(),
                    format!(
                        "fallback not needed: {} candidates, {needed} wanted",
                        merged.len()
                    ),
                )
            } else {
                let (list, report) = self
                    .recall_stage(s.as_ref(), &q, &rctx, &deadline, after_recall)
                    .await;
                if let Some(list) = list.filter(|l| !l.is_empty()) {
                    candidates_in += list.len();
                    lists.push(list);
                    let again = Instant::now();
                    dropped.clear();
                    merged = merge::merge(
                        lists.clone(),
                        &seen,
                        &self.cfg.blocklist,
                        policy,
                        &mut dropped,
                    );
                    merge_elapsed += again.elapsed();
                }
                report
            };
            answer.stages.push(report);
        }
        answer.stages.push(StageReport {
            stage: "merge".into(),
            status: StageStatus::Ok,
            budget: Duration::ZERO,
            elapsed: merge_elapsed,
            candidates_in: candidates_in as u32,
            candidates_out: merged.len() as u32,
            detail: format!(
                "{} duplicates merged, {} dropped (seen, blocked or over quota)",
                candidates_in - merged.len() - dropped.len(),
                dropped.len()
            ),
        });

        // frequency cap
        let after_cap = MIN_HYDRATE + MIN_RANK;
        match self.cfg.frequency_cap {
            Some((cap, window)) if !merged.is_empty() => {
                let budget = deadline.carve(self.cfg.cache_budget, after_cap);
                let msg = FilterCappedRequest {
                    user_id: q.user_id.to_string(),
                    item_ids: merged.iter().map(|m| m.item_id.to_string()).collect(),
                    cap,
                    window_ms: window.as_millis() as u64,
                };
                let out = stage::run(
                    "frequency_cap",
                    budget,
                    call(&self.rpc.frequency_cap, msg, budget),
                )
                .await;
                let mut report = out.report;
                report.candidates_in = merged.len() as u32;
                if let Some(capped) = out.value {
                    let capped: HashSet<String> = capped.capped_item_ids.into_iter().collect();
                    merged.retain(|m| {
                        let hit = capped.contains(m.item_id.as_str());
                        if hit {
                            dropped.push(merge::Dropped {
                                item_id: m.item_id.clone(),
                                sources: m.sources.clone(),
                                reason: DropReason::FrequencyCap,
                                detail: format!("shown {cap} times within {} s", window.as_secs()),
                            });
                        }
                        !hit
                    });
                }
                report.candidates_out = merged.len() as u32;
                answer.stages.push(report);
            }
            Some(_) => answer
                .stages
                .push(StageReport::skipped("frequency_cap", "no candidates")),
            None => answer.stages.push(StageReport::skipped(
                "frequency_cap",
                "frequency control is off",
            )),
        }

        // hydrate: from the gateway's item cache, and the feature service for what it does not hold
        // The hydrated item of each merged candidate, by position (None: not hydrated), kept in step with `merged`
        // so that no later stage looks an item up by its id again.
        let mut hydrated: Vec<Option<Arc<Hydrated>>> = Vec::with_capacity(merged.len());
        if merged.is_empty() {
            answer
                .stages
                .push(StageReport::skipped("hydrate", "no candidates"));
        } else {
            let started = Instant::now();
            // Only the active feature set is cached; a request naming a version reads it fresh.
            let cache = self.items.as_ref().filter(|_| q.feature_version.is_none());
            let mut missing = Vec::new();
            match cache {
                Some(c) => c.get_many(merged.iter().map(|m| &m.item_id), |id, found| {
                    if found.is_none() {
                        missing.push(id.to_string());
                    }
                    hydrated.push(found);
                }),
                None => {
                    missing.extend(merged.iter().map(|m| m.item_id.to_string()));
                    hydrated.resize(merged.len(), None);
                }
            }
            let cached = merged.len() - missing.len();
            let mut report;
            let answered = if missing.is_empty() {
                report = StageReport {
                    stage: "hydrate".into(),
                    status: StageStatus::Cached,
                    budget: Duration::ZERO,
                    elapsed: started.elapsed(),
                    candidates_in: 0,
                    candidates_out: 0,
                    detail: format!("all {cached} from the gateway's item cache"),
                };
                true
            } else {
                let budget = deadline.carve(self.cfg.features_budget, MIN_RANK);
                let fetched = missing.len();
                let msg = BatchGetItemFeaturesRequest {
                    item_ids: missing,
                    feature_version: q
                        .feature_version
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    include_embeddings: true,
                };
                let out = stage::run("hydrate", budget, call(&self.rpc.hydrate, msg, budget)).await;
                report = out.report;
                if cached > 0 {
                    let sep = if report.detail.is_empty() { "" } else { "; " };
                    report.detail = format!(
                        "{cached} from the gateway's item cache, {fetched} asked of the feature service{sep}{}",
                        report.detail
                    );
                }
                match out.value {
                    Some(resp) => {
                        let fresh: foldhash::HashMap<ItemId, Arc<Hydrated>> = resp
                            .items
                            .into_iter()
                            .filter_map(|item| {
                                let id = ItemId::parse("item_id", &item.item_id).ok()?;
                                Some((id, Arc::new(Hydrated::new(item))))
                            })
                            .collect();
                        if let Some(c) = cache {
                            c.insert_many(fresh.iter().map(|(id, h)| (id.clone(), h.clone())));
                        }
                        for (slot, m) in hydrated.iter_mut().zip(&merged) {
                            if slot.is_none() {
                                *slot = fresh.get(&m.item_id).cloned();
                            }
                        }
                        true
                    }
                    None => false,
                }
            };
            report.candidates_in = merged.len() as u32;
            if answered {
                // An item the feature store does not know (deleted, or not loaded yet) is not served.
                let mut known_at = hydrated.iter().map(Option::is_some);
                merged.retain(|m| {
                    // `retain` visits every element once, in order: in step with `hydrated`.
                    let known = known_at.next().unwrap_or(false);
                    if !known {
                        dropped.push(merge::Dropped {
                            item_id: m.item_id.clone(),
                            sources: m.sources.clone(),
                            reason: DropReason::NoFeatures,
                            detail: "unknown to the feature store".into(),
                        });
                    }
                    known
                });
                hydrated.retain(Option::is_some);
            }
            report.candidates_out = merged.len() as u32;
            answer.stages.push(report);
        }

        // rank: the model's inputs only (rank_features::ITEM_INPUTS, USER_INPUTS), not whole feature maps; each
        // item's part encoded once (Hydrated::rank_item) and, once ranking holds it, sent as its reference; its
        // sources per request
        let rank_input = |(m, h): (&merge::Merged, &Option<Arc<Hydrated>>), by_ref: bool| {
            let sources = m.sources.iter().cloned().map(Into::into).collect();
            match h {
                Some(h) if by_ref && h.ranking_holds.load(Ordering::Relaxed) => EncodedCandidate {
                    item: Default::default(),
                    sources,
                    item_ref: h.rank_ref.clone(),
                },
                Some(h) => EncodedCandidate {
                    item: h.rank_item.clone(),
                    sources,
                    item_ref: Default::default(),
                },
                None => EncodedCandidate {
                    item: EncodedCandidate::item_part(&RankCandidate {
                        item_id: m.item_id.to_string(),
                        ..Default::default()
                    }),
                    sources,
                    item_ref: Default::default(),
                },
            }
        };
        let mut scores: foldhash::HashMap<ItemId, f32> = foldhash::HashMap::default();
        if merged.is_empty() {
            answer
                .stages
                .push(StageReport::skipped("rank", "no candidates"));
        } else if !self.cfg.rank {
            answer
                .stages
                .push(StageReport::skipped("rank", "ranking is off: recall order"));
        } else {
            let budget = deadline.carve(self.cfg.ranking_budget, Duration::ZERO);
            let request = |by_ref: bool| RankRequest {
                user_id: q.user_id.to_string(),
                user_features: Some(reco_proto::common::v1::Features {
                    values: rank_features::USER_INPUTS
                        .iter()
                        .filter_map(|k| {
                            user_features
                                .get(k)
                                .map(|v| (k.to_string(), v.clone().into()))
                        })
                        .collect(),
                }),
                user_embedding: user_embedding
                    .as_ref()
                    .map(|e| e.as_slice().to_vec())
                    .unwrap_or_default(),
                candidates: Vec::new(),
                top_n: 0,
                context: q.context.clone().into_iter().collect(),
                encoded_candidates: merged
                    .iter()
                    .zip(&hydrated)
                    .map(|c| rank_input(c, by_ref))
                    .collect(),
            };
            let by_ref = self.cfg.rank_item_refs;
            let msg = request(by_ref);
            let started = Instant::now();
            let rank = async {
                let resp = call(&self.rpc.rank, msg, budget).await?;
                if resp.unresolved_item_refs.is_empty() {
                    return Ok((resp, 0));
                }
                let resent = resp.unresolved_item_refs.len();
                // Ranking no longer holds some items (it restarted, or let them go): forget that it did, and
                // send every item in full once, within what is left of the stage's budget.
                for &i in &resp.unresolved_item_refs {
                    if let Some(Some(h)) = hydrated.get(i as usize) {
                        h.ranking_holds.store(false, Ordering::Relaxed);
                    }
                }
                let left = budget.saturating_sub(started.elapsed());
                let resp = call(&self.rpc.rank, request(false), left).await?;
                Ok::<_, tonic::Status>((resp, resent))
            };
            let out = stage::run("rank", budget, rank).await;
            let mut report = out.report;
            report.candidates_in = merged.len() as u32;
            match out.value {
                Some((resp, resent)) if resp.unresolved_item_refs.is_empty() => {
                    if by_ref {
                        for h in hydrated.iter().flatten() {
                            if !h.ranking_holds.load(Ordering::Relaxed) {
                                h.ranking_holds.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                    if resent > 0 {
                        report.detail = format!(
                            "ranking no longer held {resent} items sent by reference: sent again in full"
                        );
                    }
                    answer.model_version = resp.model_version;
                    for s in resp.scores {
                        if let Ok(id) = ItemId::parse("item_id", &s.item_id) {
                            scores.insert(id, s.score);
                        }
                    }
                    report.candidates_out = scores.len() as u32;
                    if !resp.missing_features.is_empty() {
                        let mut missing: Vec<_> = resp.missing_features.into_iter().collect();
                        missing.sort();
                        let list: Vec<String> =
                            missing.iter().map(|(f, n)| format!("{f} {n}")).collect();
                        let defaulted = format!("defaulted features: {}", list.join(", "));
                        report.detail = if report.detail.is_empty() {
                            defaulted
                        } else {
                            format!("{}; {defaulted}", report.detail)
                        };
                    }
                }
                Some((resp, _)) => {
                    report.status = StageStatus::Error;
                    report.detail = format!(
                        "ranking did not hold {} items sent in full; fell back to recall order",
                        resp.unresolved_item_refs.len()
                    );
                }
                None => report.detail = format!("{}; fell back to recall order", report.detail),
            }
            answer.stages.push(report);
        }

        // re-rank: by model score when ranking answered, else by fused recall score; diversity; top N
        let rerank_started = Instant::now();
        let categories_of = |h: Option<&Arc<Hydrated>>| -> Vec<Name> {
            h.map(|i| {
                i.categories
                    .iter()
                    .filter_map(|c| Name::parse("category", c).ok())
                    .collect()
            })
            .unwrap_or_default()
        };
        let mut ranked: Vec<Ranked> = merged
            .iter()
            .zip(&hydrated)
            .map(|(m, h)| Ranked {
                item_id: m.item_id.clone(),
                score: if scores.is_empty() {
                    m.fused
                } else {
                    scores.get(&m.item_id).copied().unwrap_or(f32::MIN)
                },
                category: h.as_ref().and_then(|i| i.category.clone()),
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.item_id.cmp(&b.item_id))
        });
        let mut cut = Vec::new();
        let explaining = q.explain || !q.explain_items.is_empty();
        let top = merge::diversify(
            ranked,
            q.count,
            self.cfg.per_category,
            explaining.then_some(&mut cut),
        );
        answer.stages.push(StageReport {
            stage: "rerank".into(),
            status: StageStatus::Ok,
            budget: Duration::ZERO,
            elapsed: rerank_started.elapsed(),
            candidates_in: merged.len() as u32,
            candidates_out: top.len() as u32,
            detail: format!("at most {} per category", self.cfg.per_category),
        });

        let sources_of: foldhash::HashMap<&ItemId, &Vec<SourceHit>> =
            merged.iter().map(|m| (&m.item_id, &m.sources)).collect();
        answer.items = top
            .iter()
            .map(|r| AnswerItem {
                item_id: r.item_id.clone(),
                score: r.score,
                sources: sources_of
                    .get(&r.item_id)
                    .map(|s| (*s).clone())
                    .unwrap_or_default(),
            })
            .collect();
        answer.degraded = answer
            .stages
            .iter()
            .any(|s| s.status.is_degraded() && s.stage != "admission" && s.stage != "result_cache");

        if explaining {
            let positions: HashMap<&ItemId, u32> = top
                .iter()
                .enumerate()
                .map(|(i, r)| (&r.item_id, i as u32 + 1))
                .collect();
            let reasons: HashMap<&ItemId, (DropReason, &str)> = cut
                .iter()
                .map(|(id, r, d)| (id, (*r, d.as_str())))
                .collect();
            let input = reco_ranker::RankInput {
                user_id: q.user_id.clone(),
                user_features: user_features.clone(),
                user_embedding: user_embedding.clone(),
                candidates: Vec::new(),
                context: q.context.clone(),
            };
            for (m, h) in merged.iter().zip(&hydrated) {
                let rc = reco_ranker::RankCandidate::new(
                    m.item_id.clone(),
                    h.as_ref()
                        .and_then(|i| conversions::features("features", i.features.clone()).ok())
                        .unwrap_or_default(),
                    categories_of(h.as_ref()),
                    m.sources.clone(),
                    h.as_ref().and_then(|i| {
                        Embedding::parse_optional("embedding", i.embedding.clone())
                            .ok()
                            .flatten()
                    }),
                );
                let features = rank_features::known()
                    .into_iter()
                    .filter_map(|f| {
                        rank_features::value(f, &input, &rc).map(|v| (f.to_string(), v))
                    })
                    .collect();
                let (dropped_reason, detail) = match reasons.get(&m.item_id) {
                    Some((r, d)) => (Some(*r), d.to_string()),
                    None => (None, String::new()),
                };
                answer.explanations.push(Explanation {
                    item_id: m.item_id.clone(),
                    sources: m.sources.clone(),
                    categories: rc.item.categories().to_vec(),
                    features,
                    score: scores.get(&m.item_id).copied().unwrap_or(m.fused),
                    position: positions.get(&m.item_id).copied().unwrap_or(0),
                    dropped: dropped_reason,
                    detail,
                });
            }
            for d in dropped {
                answer.explanations.push(Explanation {
                    // Dropped before hydration, or for having no features: none were read.
                    categories: Vec::new(),
                    item_id: d.item_id,
                    sources: d.sources,
                    features: BTreeMap::new(),
                    score: 0.0,
                    position: 0,
                    dropped: Some(d.reason),
                    detail: d.detail,
                });
            }
            if !q.explain_items.is_empty() {
                // Only the items asked about, each once (a candidate can be dropped once per merge pass), in the
                // order asked, and a line for each one no source found.
                let mut wanted: HashSet<&ItemId> = q.explain_items.iter().collect();
                answer.explanations.retain(|e| wanted.remove(&e.item_id));
                let asked: HashMap<&ItemId, usize> = q
                    .explain_items
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (id, i))
                    .collect();
                answer.explanations.sort_by_key(|e| asked[&e.item_id]);
                // What each recall stage did, from its report, for the items no source returned.
                let recall_summary: Vec<String> = answer
                    .stages
                    .iter()
                    .filter(|r| r.stage.starts_with("recall."))
                    .map(summary)
                    .collect();
                for id in q.explain_items.iter().filter(|id| wanted.contains(id)) {
                    answer.explanations.push(Explanation {
                        item_id: id.clone(),
                        sources: Vec::new(),
                        categories: Vec::new(),
                        features: BTreeMap::new(),
                        score: 0.0,
                        position: 0,
                        dropped: Some(DropReason::NotRecalled),
                        detail: format!(
                            "no recall source returned it ({})",
                            recall_summary.join("; ")
                        ),
                    });
                }
            }
        }

        self.after_answer(&q, &answer);
        Ok(answer)
    }

    /// Runs one recall source as a stage: skipped when its mode or the request leaves it out, or it has nothing
    /// to go on; otherwise under its carved budget.
    async fn recall_stage(
        &self,
        s: &dyn RecallSource,
        q: &Query,
        rctx: &RecallContext,
        deadline: &Deadline,
        reserve: Duration,
    ) -> (Option<Vec<Candidate>>, StageReport) {
        let plan = s.plan();
        let stage = plan.stage();
        let asked = q.include_sources.contains(plan.name.as_str())
            || (q.include_graph && plan.kind == SourceKind::Graph)
            || plan.scenes.contains(q.scene.as_str());
        let why = match plan.mode {
            Mode::Off => Some("off in the pipeline configuration"),
            Mode::OnDemand if !asked => {
                Some("on demand: not asked for by the request (include_sources) or its scene")
            }
            _ => s.skip_reason(rctx),
        };
        if let Some(why) = why {
            return (None, StageReport::skipped(stage, why));
        }
        if let Some(list) = s.cached(rctx) {
            let mut report = StageReport::skipped(stage, "kept from a recent call");
            report.status = StageStatus::Cached;
            report.candidates_out = list.len() as u32;
            return (Some(list), report);
        }
        let budget = deadline.carve(plan.budget, reserve);
        let out = stage::run(stage, budget, s.recall(rctx, budget)).await;
        let mut report = out.report;
        report.candidates_out = out.value.as_ref().map_or(0, |v| v.len() as u32);
        (out.value, report)
    }

    /// The cache's part of the start of a request in one call: the rate check (when rate limiting is on), the
    /// cached result (when `read_result`) and the recent clicks, under the cache's budget.
    async fn begin(
        &self,
        q: &Query,
        read_result: bool,
        deadline: &Deadline,
    ) -> stage::Outcome<BeginRecommendResponse> {
        let reserve = MIN_FEATURES + MIN_RECALL + MIN_HYDRATE + MIN_RANK;
        let budget = deadline.carve(self.cfg.cache_budget, reserve);
        let msg = BeginRecommendRequest {
            user_id: q.user_id.to_string(),
            rate_limit: self
                .cfg
                .rate_limit
                .map(|(limit, window)| CheckRateLimitRequest {
                    key: format!("recommend:{}", q.user_id),
                    limit,
                    window_ms: window.as_millis() as u64,
                    cost: 1,
                }),
            read_result,
            scene: q.scene.to_string(),
            recent_events: RECENT_CLICKS,
        };
        stage::run(BEGIN, budget, call(&self.rpc.begin, msg, budget)).await
    }

    /// Admission from the rate check's part of the begin call: refused, admitted, or failed open or closed.
    fn admission(
        &self,
        q: &Query,
        begin: &stage::Outcome<BeginRecommendResponse>,
    ) -> Result<StageReport, PipelineError> {
        if self.cfg.rate_limit.is_none() {
            return Ok(StageReport::skipped("admission", "rate limiting is off"));
        }
        let report = begin.part("admission");
        match begin.value.as_ref().map(|b| b.rate_limit.as_ref()) {
            Some(Some(d)) if !d.allowed => Err(PipelineError::RateLimited {
                user: q.user_id.clone(),
                retry_after: Duration::from_millis(d.retry_after_ms),
            }),
            Some(Some(_)) => Ok(report),
            // A cache service that answered without the rate check it was asked for cannot be trusted with it.
            Some(None) | None if self.cfg.rate_limit_fail_open => {
                let mut report = report;
                if report.status == StageStatus::Ok {
                    report.status = StageStatus::Error;
                    report.detail = "the cache service did not answer the rate check".into();
                }
                report.detail = format!("{}; failed open", report.detail);
                Ok(report)
            }
            Some(None) => Err(PipelineError::AdmissionUnavailable(
                "the cache service did not answer the rate check".into(),
            )),
            None => Err(PipelineError::AdmissionUnavailable(report.detail)),
        }
    }

    /// Writes the result cache and records impressions, off the response path.
    fn after_answer(&self, q: &Query, answer: &Answer) {
        if answer.items.is_empty() {
            return;
        }
        if self.rpc.cache_breaker.state() == BreakerState::Open {
            // The cache is known to be down: do not queue writes that would only time out.
            return;
        }
        let user_id = q.user_id.to_string();
        let write = if answer.degraded {
            // A degraded answer is not cached, so the next call gets a chance at a full one; its items were shown
            // all the same. Queued with the results, not a call of its own: under overload most answers are
            // degraded, and a call each would add to the load that degraded them.
            AfterAnswer::Impressions(RecordImpressionsRequest {
                user_id,
                item_ids: answer.items.iter().map(|i| i.item_id.to_string()).collect(),
                timestamp_ms: 0,
            })
        } else {
            // The cache service records the impressions with the result.
            AfterAnswer::Result(PutRecommendationsRequest {
                user_id,
                scene: q.scene.to_string(),
                items: answer
                    .items
                    .iter()
                    .map(|i| {
                        reco_proto::common::v1::Candidate::from(Candidate {
                            item_id: i.item_id.clone(),
                            score: i.score,
                            sources: i.sources.clone(),
                        })
                    })
                    .collect(),
                ttl_ms: self.cfg.result_ttl.as_millis() as u64,
                record_impressions: true,
            })
        };
        match self.result_writer().try_send(write) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => warn!(
                "{RESULT_QUEUE} after-answer writes are queued: this answer is neither cached nor its impressions recorded"
            ),
        }
    }

    /// The queue of after-answer writes, and its writer, started on first use.
    fn result_writer(&self) -> &mpsc::Sender<AfterAnswer> {
        self.results.get_or_init(|| {
            let (tx, rx) = mpsc::channel(RESULT_QUEUE);
            self.background.spawn(write_results_to(
                self.rpc.cache.clone(),
                rx,
                self.results_closing.clone(),
            ));
            tx
        })
    }
}

/// A write after an answer, off the response path.
#[derive(Debug)]
enum AfterAnswer {
    /// The answer, to cache; its impressions are recorded with it.
    Result(PutRecommendationsRequest),
    /// The impressions of an answer that is not cached (a degraded one).
    Impressions(RecordImpressionsRequest),
}

/// Most after-answer writes waiting for the writer; past it an answer is neither cached nor its impressions
/// recorded (and a warning says so).
const RESULT_QUEUE: usize = 4_096;
/// Most writes in one PutRecommendationsBatch.
const RESULT_BATCH: usize = 256;
/// How long the writer waits for more writes to send with the first one. The result cache and the impressions
/// are read by later requests, seconds to minutes apart, so a few ms of delay cost nothing.
const RESULT_LINGER: Duration = Duration::from_millis(5);
/// How long a batch of result writes may take: up to [`RESULT_BATCH`] writes, each a result and its impressions.
/// Only the writer waits for it (the queue holds what arrives meanwhile), never a request.
const RESULT_BATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Sends the queued after-answer writes one call at a time. A call takes every write queued so far and those
/// that arrive within [`RESULT_LINGER`] of the first (up to [`RESULT_BATCH`]): at 1,000 answers a second that is
/// ~5 writes a call instead of one each, and under heavier load the queue also fills while a call is in flight.
/// When `closing` is notified it sends what is queued and returns.
async fn write_results<T, F>(
    mut queue: mpsc::Receiver<T>,
    closing: Arc<tokio::sync::Notify>,
    mut send: impl FnMut(Vec<T>) -> F,
) where
    F: std::future::Future<Output = ()>,
{
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, RESULT_BATCH) => {
                if n == 0 {
                    return;
                }
                let until = tokio::time::Instant::now() + RESULT_LINGER;
                while batch.len() < RESULT_BATCH {
                    let room = RESULT_BATCH - batch.len();
                    match tokio::time::timeout_at(until, queue.recv_many(&mut batch, room)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                send(std::mem::take(&mut batch)).await;
            }
            () = closing.notified() => queue.close(),
        }
    }
}

/// [`write_results`] through the cache service's PutRecommendationsBatch.
async fn write_results_to(
    cache: CacheServiceClient<TracedChannel>,
    queue: mpsc::Receiver<AfterAnswer>,
    closing: Arc<tokio::sync::Notify>,
) {
    write_results(queue, closing, |writes| {
        let mut cache = cache.clone();
        async move {
            let n = writes.len();
            let mut msg = PutRecommendationsBatchRequest::default();
            for w in writes {
                match w {
                    AfterAnswer::Result(put) => msg.puts.push(put),
                    AfterAnswer::Impressions(imp) => msg.impressions.push(imp),
                }
            }
            if let Err(error) = cache
                .put_recommendations_batch(request(msg, RESULT_BATCH_TIMEOUT))
                .await
            {
                warn!(%error, writes = n, "result cache and impression writes failed");
            }
        }
    })
    .await
}

/// A stage's call through its service stack.
fn call<M, R>(
    svc: &StageService<M, R>,
    message: M,
    budget: Duration,
) -> impl std::future::Future<Output = Result<R, tonic::Status>> + use<M, R>
where
    M: Send + 'static,
    R: Send + 'static,
{
    svc.clone().oneshot(Call { message, budget })
}

/// How a recall stage went, in a few words, for explaining why an item was not recalled.
fn summary(r: &StageReport) -> String {
    match r.status {
        StageStatus::Ok | StageStatus::Cached => {
            format!("{} returned {}", r.stage, r.candidates_out)
        }
        status => format!("{} {}", r.stage, status.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn put(user: &str) -> PutRecommendationsRequest {
        PutRecommendationsRequest {
            user_id: user.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_result_writer_batches_what_queued_during_a_call_and_sends_it_all_before_stopping()
    {
        let (tx, rx) = mpsc::channel(16);
        let closing = Arc::new(tokio::sync::Notify::new());
        let sent: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        // The first call blocks until released, so the writes queued meanwhile wait for the next.
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let writer = tokio::spawn(write_results(rx, closing.clone(), {
            let sent = sent.clone();
            move |puts: Vec<PutRecommendationsRequest>| {
                let (sent, released) = (sent.clone(), released.clone());
                async move {
                    sent.lock()
                        .unwrap()
                        .push(puts.into_iter().map(|p| p.user_id).collect());
                    if let Some(r) = released.lock().await.take() {
                        let _ = r.await;
                    }
                }
            }
        }));
        tx.send(put("a")).await.unwrap();
        while sent.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for u in ["b", "c", "d"] {
            tx.send(put(u)).await.unwrap();
        }
        // Asked to stop while the first call is in flight and three writes wait: they are still sent, in one call.
        closing.notify_one();
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer stops once the queue is sent")
            .unwrap();
        assert_eq!(*sent.lock().unwrap(), [vec!["a"], vec!["b", "c", "d"]]);
        assert!(tx.send(put("late")).await.is_err(), "the queue is closed");
    }

    #[tokio::test(start_paused = true)]
    async fn writes_within_the_linger_of_the_first_share_its_call() {
        let (tx, rx) = mpsc::channel(16);
        let closing = Arc::new(tokio::sync::Notify::new());
        let sent: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let writer = tokio::spawn(write_results(rx, closing.clone(), {
            let sent = sent.clone();
            move |puts: Vec<PutRecommendationsRequest>| {
                sent.lock()
                    .unwrap()
                    .push(puts.into_iter().map(|p| p.user_id).collect());
                std::future::ready(())
            }
        }));
        tx.send(put("a")).await.unwrap();
        tokio::time::sleep(RESULT_LINGER / 2).await;
        tx.send(put("b")).await.unwrap();
        tokio::time::sleep(RESULT_LINGER * 2).await;
        tx.send(put("c")).await.unwrap();
        closing.notify_one();
        writer.await.unwrap();
        assert_eq!(*sent.lock().unwrap(), [vec!["a", "b"], vec!["c"]]);
    }
}
