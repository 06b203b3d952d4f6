//! The Recommend pipeline of DESIGN.md, stage by stage, each under a budget carved from the deadline.
//!
//! ```text
//!   admission ─▶ result_cache ─hit─▶ answer
//!                    │ miss
//!                    ▼
//!   user_context.features ‖ user_context.recent_clicks
//!                    ▼
//!   recall.cf ‖ recall.vector ‖ recall.graph ‖ recall.popular
//!                    ▼
//!   merge ─▶ frequency_cap ─▶ hydrate ─▶ rank ─▶ rerank ─▶ answer ─▶ (after: result cache, impressions)
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::join_all;
use reco_proto::{
    cache::v1::{
        CheckRateLimitRequest, FilterCappedRequest, GetRecentEventsRequest,
        GetRecommendationsRequest, PutRecommendationsRequest, RecordImpressionsRequest,
        cache_service_client::CacheServiceClient,
    },
    conversions,
    feature::v1::{
        BatchGetItemFeaturesRequest, GetUserContextRequest, Item,
        feature_service_client::FeatureServiceClient,
    },
    ranking::v1::{RankCandidate, RankRequest, ranking_client::RankingClient},
};
use reco_ranker::features as rank_features;
use reco_server::TracedChannel;
use reco_types::{
    Candidate, Embedding, FeatureVersion, ItemId, Name, Scene, SourceHit, StageReport, StageStatus,
    UserId,
};
use tracing::warn;

use crate::{
    budget::Deadline,
    merge::{self, DropReason, MergePolicy, Ranked},
    recall::{RecallContext, RecallSource},
    stage::{self, request},
};

/// Least time each kind of stage needs to be worth running; earlier stages leave this much for later ones.
const MIN_CACHE: Duration = Duration::from_millis(1);
const MIN_FEATURES: Duration = Duration::from_millis(3);
const MIN_RECALL: Duration = Duration::from_millis(5);
const MIN_HYDRATE: Duration = Duration::from_millis(3);
const MIN_RANK: Duration = Duration::from_millis(5);

/// How the pipeline runs; built from the gateway's flags.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub total: Duration,
    pub features_budget: Duration,
    pub cache_budget: Duration,
    pub ranking_budget: Duration,
    /// Score candidates with the ranking service; off serves the merged recall order (for comparisons).
    pub rank: bool,
    pub max_candidates: usize,
    pub popular_share: f32,
    pub per_category: usize,
    pub blocklist: HashSet<ItemId>,
    /// Requests per window per user; None turns admission off.
    pub rate_limit: Option<(u32, Duration)>,
    /// Serve when the rate limiter cannot be asked.
    pub rate_limit_fail_open: bool,
    /// Impressions within the window that cap an item; None turns frequency control off.
    pub frequency_cap: Option<(u32, Duration)>,
    pub result_ttl: Duration,
    /// Scenes that run graph recall without being asked.
    pub graph_scenes: HashSet<String>,
}

/// One Recommend call, validated.
#[derive(Clone, Debug)]
pub struct Query {
    pub user_id: UserId,
    pub count: usize,
    pub scene: Scene,
    pub context: BTreeMap<String, String>,
    pub explain: bool,
    pub bypass_cache: bool,
    pub include_graph: bool,
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

/// The gateway's downstream clients.
#[derive(Clone)]
pub struct Clients {
    pub feature: FeatureServiceClient<TracedChannel>,
    pub cache: CacheServiceClient<TracedChannel>,
    pub ranking: RankingClient<TracedChannel>,
}

/// The pipeline: configuration, clients and the recall sources it fans out to.
pub struct Pipeline {
    cfg: PipelineConfig,
    clients: Clients,
    sources: Vec<Box<dyn RecallSource>>,
    /// The after-answer writes in flight, so a shutdown can wait for them instead of losing impressions.
    background: tokio_util::task::TaskTracker,
}

impl Pipeline {
    pub fn new(cfg: PipelineConfig, clients: Clients, sources: Vec<Box<dyn RecallSource>>) -> Self {
        Self {
            cfg,
            clients,
            sources,
            background: tokio_util::task::TaskTracker::new(),
        }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// Completes when every after-answer write started so far has finished; no new ones start after.
    pub fn finish_background(&self) -> impl std::future::Future<Output = ()> + use<> {
        self.background.close();
        let tracker = self.background.clone();
        async move { tracker.wait().await }
    }

    /// Runs the whole pipeline for one request.
    pub async fn recommend(self: &Arc<Self>, q: Query) -> Result<Answer, PipelineError> {
        let deadline = Deadline::new(Instant::now(), self.cfg.total, q.caller_timeout);
        let mut answer = Answer::default();
        let after_admission = MIN_CACHE + MIN_FEATURES + MIN_RECALL + MIN_HYDRATE + MIN_RANK;

        // admission
        answer
            .stages
            .push(self.admission(&q, &deadline, after_admission).await?);

        // result cache
        let after_cache = MIN_FEATURES + MIN_RECALL + MIN_HYDRATE + MIN_RANK;
        if q.bypass_cache || q.explain {
            let why = if q.explain {
                "explain asks for a fresh answer"
            } else {
                "bypass_cache"
            };
            answer
                .stages
                .push(StageReport::skipped("result_cache", why));
        } else {
            let mut cache = self.clients.cache.clone();
            let budget = deadline.carve(self.cfg.cache_budget, after_cache);
            let msg = GetRecommendationsRequest {
                user_id: q.user_id.to_string(),
                scene: q.scene.to_string(),
            };
            let out = stage::run("result_cache", budget, async move {
                Ok(cache
                    .get_recommendations(request(msg, budget))
                    .await?
                    .into_inner())
            })
            .await;
            let mut report = out.report;
            if let Some(hit) = out.value.filter(|r| r.found) {
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
        }

        // user context: features, embedding, pool and sequence from the feature service, clicks from the cache
        let after_context = MIN_RECALL + MIN_HYDRATE + MIN_RANK;
        let (features_out, clicks_out) = {
            let mut feature = self.clients.feature.clone();
            let mut cache = self.clients.cache.clone();
            let fb = deadline.carve(self.cfg.features_budget, after_context);
            let cb = deadline.carve(self.cfg.cache_budget, after_context);
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
            let cmsg = GetRecentEventsRequest {
                user_id: q.user_id.to_string(),
                limit: 50,
            };
            tokio::join!(
                stage::run("user_context.features", fb, async move {
                    Ok(feature
                        .get_user_context(request(fmsg, fb))
                        .await?
                        .into_inner())
                }),
                stage::run("user_context.recent_clicks", cb, async move {
                    Ok(cache
                        .get_recent_events(request(cmsg, cb))
                        .await?
                        .into_inner())
                }),
            )
        };
        let context_answered = features_out.value.is_some();
        let ctx = features_out.value.unwrap_or_default();
        let clicks = clicks_out.value.map(|c| c.events).unwrap_or_default();
        answer.stages.push(features_out.report);
        answer.stages.push(clicks_out.report);

        let user_features = conversions::features("features", ctx.features).unwrap_or_default();
        let user_embedding = Embedding::parse_optional("embedding", ctx.embedding)
            .ok()
            .flatten();
        let pool = conversions::candidates("recall_pool", ctx.recall_pool).unwrap_or_default();
        let mut recent_items: Vec<ItemId> = Vec::new();
        let mut seen: HashSet<ItemId> = HashSet::new();
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

        // recall, every source at once
        let rctx = RecallContext {
            user_id: q.user_id.clone(),
            embedding: user_embedding.clone(),
            pool,
            recent_items,
            include_graph: q.include_graph || self.cfg.graph_scenes.contains(q.scene.as_str()),
        };
        let after_recall = MIN_HYDRATE + MIN_RANK;
        let recalls = join_all(self.sources.iter().map(|s| {
            let rctx = &rctx;
            let budget = deadline.carve(s.budget(), after_recall);
            async move {
                match s.skip_reason(rctx) {
                    Some(why) => (
                        s.source().clone(),
                        None,
                        StageReport::skipped(s.stage(), why),
                    ),
                    None => {
                        let out = stage::run(s.stage(), budget, s.recall(rctx, budget)).await;
                        let mut report = out.report;
                        report.candidates_out = out.value.as_ref().map_or(0, |v| v.len() as u32);
                        (s.source().clone(), out.value, report)
                    }
                }
            }
        }))
        .await;
        let mut lists = Vec::new();
        let mut personal_found = false;
        for (source, list, report) in recalls {
            answer.stages.push(report);
            if let Some(list) = list {
                personal_found |= source.as_str() != "popular" && !list.is_empty();
                lists.push(list);
            }
        }

        // merge
        let merge_started = Instant::now();
        let candidates_in: usize = lists.iter().map(Vec::len).sum();
        let mut max_share = HashMap::new();
        if personal_found {
            // The fallback fills at most its share while personal sources have something to say.
            max_share.insert("popular".to_string(), self.cfg.popular_share);
        }
        let policy = MergePolicy {
            max_candidates: self.cfg.max_candidates,
            max_share,
        };
        let mut dropped = Vec::new();
        let mut merged = merge::merge(lists, &seen, &self.cfg.blocklist, &policy, &mut dropped);
        answer.stages.push(StageReport {
            stage: "merge".into(),
            status: StageStatus::Ok,
            budget: Duration::ZERO,
            elapsed: merge_started.elapsed(),
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
                let mut cache = self.clients.cache.clone();
                let budget = deadline.carve(self.cfg.cache_budget, after_cap);
                let msg = FilterCappedRequest {
                    user_id: q.user_id.to_string(),
                    item_ids: merged.iter().map(|m| m.item_id.to_string()).collect(),
                    cap,
                    window_ms: window.as_millis() as u64,
                };
                let out = stage::run("frequency_cap", budget, async move {
                    Ok(cache
                        .filter_capped(request(msg, budget))
                        .await?
                        .into_inner())
                })
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

        // hydrate
        let mut hydrated: HashMap<ItemId, Item> = HashMap::new();
        if merged.is_empty() {
            answer
                .stages
                .push(StageReport::skipped("hydrate", "no candidates"));
        } else {
            let mut feature = self.clients.feature.clone();
            let budget = deadline.carve(self.cfg.features_budget, MIN_RANK);
            let msg = BatchGetItemFeaturesRequest {
                item_ids: merged.iter().map(|m| m.item_id.to_string()).collect(),
                feature_version: q
                    .feature_version
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                include_embeddings: true,
            };
            let out = stage::run("hydrate", budget, async move {
                Ok(feature
                    .batch_get_item_features(request(msg, budget))
                    .await?
                    .into_inner())
            })
            .await;
            let mut report = out.report;
            report.candidates_in = merged.len() as u32;
            if let Some(resp) = out.value {
                for item in resp.items {
                    if let Ok(id) = ItemId::parse("item_id", &item.item_id) {
                        hydrated.insert(id, item);
                    }
                }
                // An item the feature store does not know (deleted, or not loaded yet) is not served.
                merged.retain(|m| {
                    let known = hydrated.contains_key(&m.item_id);
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
            }
            report.candidates_out = merged.len() as u32;
            answer.stages.push(report);
        }

        // rank
        let rank_input = |m: &merge::Merged| {
            let item = hydrated.get(&m.item_id).cloned();
            let (features, embedding, categories) = match item {
                Some(i) => (i.features, i.embedding, i.categories),
                None => (None, Vec::new(), Vec::new()),
            };
            RankCandidate {
                item_id: m.item_id.to_string(),
                item_features: features,
                sources: m.sources.iter().cloned().map(Into::into).collect(),
                embedding,
                categories,
            }
        };
        let mut scores: HashMap<ItemId, f32> = HashMap::new();
        if merged.is_empty() {
            answer
                .stages
                .push(StageReport::skipped("rank", "no candidates"));
        } else if !self.cfg.rank {
            answer
                .stages
                .push(StageReport::skipped("rank", "ranking is off: recall order"));
        } else {
            let mut ranking = self.clients.ranking.clone();
            let budget = deadline.carve(self.cfg.ranking_budget, Duration::ZERO);
            let msg = RankRequest {
                user_id: q.user_id.to_string(),
                user_features: Some(user_features.clone().into()),
                user_embedding: user_embedding
                    .as_ref()
                    .map(|e| e.as_slice().to_vec())
                    .unwrap_or_default(),
                candidates: merged.iter().map(rank_input).collect(),
                top_n: 0,
                context: q.context.clone().into_iter().collect(),
            };
            let out = stage::run("rank", budget, async move {
                Ok(ranking.rank(request(msg, budget)).await?.into_inner())
            })
            .await;
            let mut report = out.report;
            report.candidates_in = merged.len() as u32;
            match out.value {
                Some(resp) => {
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
                        report.detail = format!("defaulted features: {}", list.join(", "));
                    }
                }
                None => report.detail = format!("{}; fell back to recall order", report.detail),
            }
            answer.stages.push(report);
        }

        // re-rank: by model score when ranking answered, else by fused recall score; diversity; top N
        let rerank_started = Instant::now();
        let categories_of = |id: &ItemId| -> Vec<Name> {
            hydrated
                .get(id)
                .map(|i| {
                    i.categories
                        .iter()
                        .filter_map(|c| Name::parse("category", c).ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut ranked: Vec<Ranked> = merged
            .iter()
            .map(|m| Ranked {
                item_id: m.item_id.clone(),
                score: if scores.is_empty() {
                    m.fused
                } else {
                    scores.get(&m.item_id).copied().unwrap_or(f32::MIN)
                },
                category: categories_of(&m.item_id).into_iter().next(),
            })
            .collect();
        ranked.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.item_id.cmp(&b.item_id))
        });
        let mut cut = Vec::new();
        let top = merge::diversify(ranked, q.count, self.cfg.per_category, &mut cut);
        answer.stages.push(StageReport {
            stage: "rerank".into(),
            status: StageStatus::Ok,
            budget: Duration::ZERO,
            elapsed: rerank_started.elapsed(),
            candidates_in: merged.len() as u32,
            candidates_out: top.len() as u32,
            detail: format!("at most {} per category", self.cfg.per_category),
        });

        let sources_of: HashMap<&ItemId, &Vec<SourceHit>> =
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

        if q.explain {
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
            for m in &merged {
                let rc = reco_ranker::RankCandidate {
                    item_id: m.item_id.clone(),
                    features: hydrated
                        .get(&m.item_id)
                        .and_then(|i| conversions::features("features", i.features.clone()).ok())
                        .unwrap_or_default(),
                    categories: categories_of(&m.item_id),
                    sources: m.sources.clone(),
                    embedding: hydrated.get(&m.item_id).and_then(|i| {
                        Embedding::parse_optional("embedding", i.embedding.clone())
                            .ok()
                            .flatten()
                    }),
                };
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
                    categories: rc.categories,
                    features,
                    score: scores.get(&m.item_id).copied().unwrap_or(m.fused),
                    position: positions.get(&m.item_id).copied().unwrap_or(0),
                    dropped: dropped_reason,
                    detail,
                });
            }
            for d in dropped {
                answer.explanations.push(Explanation {
                    categories: categories_of(&d.item_id),
                    item_id: d.item_id,
                    sources: d.sources,
                    features: BTreeMap::new(),
                    score: 0.0,
                    position: 0,
                    dropped: Some(d.reason),
                    detail: d.detail,
                });
            }
        }

        self.after_answer(&q, &answer);
        Ok(answer)
    }

    async fn admission(
        &self,
        q: &Query,
        deadline: &Deadline,
        reserve: Duration,
    ) -> Result<StageReport, PipelineError> {
        let Some((limit, window)) = self.cfg.rate_limit else {
            return Ok(StageReport::skipped("admission", "rate limiting is off"));
        };
        let mut cache = self.clients.cache.clone();
        let budget = deadline.carve(self.cfg.cache_budget, reserve);
        let msg = CheckRateLimitRequest {
            key: format!("recommend:{}", q.user_id),
            limit,
            window_ms: window.as_millis() as u64,
            cost: 1,
        };
        let out = stage::run("admission", budget, async move {
            Ok(cache
                .check_rate_limit(request(msg, budget))
                .await?
                .into_inner())
        })
        .await;
        match out.value {
            Some(d) if !d.allowed => Err(PipelineError::RateLimited {
                user: q.user_id.clone(),
                retry_after: Duration::from_millis(d.retry_after_ms),
            }),
            Some(_) => Ok(out.report),
            None if self.cfg.rate_limit_fail_open => {
                let mut report = out.report;
                report.detail = format!("{}; failed open", report.detail);
                Ok(report)
            }
            None => Err(PipelineError::AdmissionUnavailable(out.report.detail)),
        }
    }

    /// Writes the result cache and records impressions, off the response path.
    fn after_answer(&self, q: &Query, answer: &Answer) {
        if answer.items.is_empty() {
            return;
        }
        let mut cache = self.clients.cache.clone();
        let user_id = q.user_id.to_string();
        let scene = q.scene.to_string();
        let items: Vec<_> = answer
            .items
            .iter()
            .map(|i| {
                reco_proto::common::v1::Candidate::from(Candidate {
                    item_id: i.item_id.clone(),
                    score: i.score,
                    sources: i.sources.clone(),
                })
            })
            .collect();
        let ttl = self.cfg.result_ttl;
        let write_cache = !answer.degraded;
        self.background.spawn(async move {
            let ids = items.iter().map(|c| c.item_id.clone()).collect();
            // A degraded answer is not cached, so the next call gets a chance at a full one.
            if write_cache {
                let put = PutRecommendationsRequest {
                    user_id: user_id.clone(),
                    scene,
                    items,
                    ttl_ms: ttl.as_millis() as u64,
                };
                if let Err(error) = cache
                    .put_recommendations(request(put, Duration::from_millis(100)))
                    .await
                {
                    warn!(%error, "result cache write failed");
                }
            }
            let imp = RecordImpressionsRequest {
                user_id,
                item_ids: ids,
                timestamp_ms: 0,
            };
            if let Err(error) = cache
                .record_impressions(request(imp, Duration::from_millis(100)))
                .await
            {
                warn!(%error, "impression write failed");
            }
        });
    }
}
