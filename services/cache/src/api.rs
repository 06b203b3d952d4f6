//! The gRPC edge: validates requests into domain types, calls the store, converts back.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use reco_cache_store::{
    CacheStore, CachedResult, DEFAULT_RESULT_TTL, DEFAULT_SESSION_TTL, MAX_SESSION_BYTES,
    RateDecision,
};
use reco_client::{
    BeginQuery, Begun, CapQuery, EventAppend, EventPush, ImpressionWrite, RateLimit, Readiness,
    ResultWrite, Writes,
};
use reco_proto::{
    cache::v1::{self as pb, cache_service_server::CacheService},
    conversions::{candidates, each},
};
use reco_types::{
    Event, ItemId, MAX_ID_BYTES, Scene, UserId, ValidationError, check_batch, check_id, count,
};

use crate::Error;

/// Recent events kept per user when a push does not say.
const DEFAULT_RECENT_EVENTS: usize = 50;

/// Longest accepted TTL or window: one week.
const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The CacheService implementation over any store.
pub struct CacheApi {
    store: Arc<dyn CacheStore>,
}

impl CacheApi {
    pub fn new(store: Arc<dyn CacheStore>) -> Self {
        Self { store }
    }
}

fn user(s: &str) -> Result<UserId, ValidationError> {
    UserId::parse("user_id", s)
}

/// A duration in milliseconds: 0 takes `default`; over [`MAX_TTL`] is an error.
fn millis(field: &str, ms: u64, default: Duration) -> Result<Duration, ValidationError> {
    if ms == 0 {
        return Ok(default);
    }
    let d = Duration::from_millis(ms);
    if d > MAX_TTL {
        return Err(ValidationError::new(
            field,
            format!("is {ms} ms, the limit is {} ms", MAX_TTL.as_millis()),
        ));
    }
    Ok(d)
}

/// A session id or rate-limit key: an opaque string with the id rules.
fn key(field: &str, s: &str) -> Result<String, ValidationError> {
    check_id(field, s, MAX_ID_BYTES).map(|()| s.to_string())
}

/// A PutRecommendations request, checked.
fn result_write(r: pb::PutRecommendationsRequest) -> Result<ResultWrite, ValidationError> {
    let pb::PutRecommendationsRequest {
        user_id,
        scene,
        items,
        ttl_ms,
        record_impressions,
    } = r;
    Ok(ResultWrite {
        user_id: user(&user_id)?,
        scene: Scene::parse("scene", &scene)?,
        items: candidates("items", items)?,
        ttl: millis("ttl_ms", ttl_ms, DEFAULT_RESULT_TTL)?,
        record_impressions,
    })
}

/// A RecordImpressions request, validated.
fn impression_write(r: pb::RecordImpressionsRequest) -> Result<ImpressionWrite, ValidationError> {
    let pb::RecordImpressionsRequest {
        user_id,
        item_ids,
        timestamp_ms,
    } = r;
    let user_id = user(&user_id)?;
    check_batch("item_ids", item_ids.len())?;
    let item_ids = each("item_ids", item_ids, |s| ItemId::parse("", s))?;
    if timestamp_ms < 0 {
        return Err(ValidationError::new("timestamp_ms", "must not be negative"));
    }
    Ok(ImpressionWrite {
        user_id,
        item_ids,
        at_ms: timestamp_ms,
    })
}

/// A CheckRateLimit request: the key checked; the numbers are checked by [`checked_rate`].
fn rate_limit(r: pb::CheckRateLimitRequest) -> Result<RateLimit, ValidationError> {
    let pb::CheckRateLimitRequest {
        key: k,
        limit,
        window_ms,
        cost,
    } = r;
    let key = key("key", &k)?;
    if window_ms == 0 {
        return Err(ValidationError::new("window_ms", "must be at least 1"));
    }
    Ok(RateLimit {
        key,
        limit,
        window: Duration::from_millis(window_ms),
        cost,
    })
}

/// A rate check whose limit, window and cost are within bounds (a cost of 0 is 1).
fn checked_rate(r: RateLimit) -> Result<RateLimit, ValidationError> {
    let limit = count("limit", r.limit, 0, 1, 1_000_000)?;
    if r.window.is_zero() {
        return Err(ValidationError::new("window_ms", "must be at least 1"));
    }
    let window = millis("window_ms", r.window.as_millis() as u64, Duration::ZERO)?;
    let cost = count("cost", r.cost, 1, 1, limit)?;
    Ok(RateLimit {
        key: r.key,
        limit,
        window,
        cost,
    })
}

/// An answer to cache, checked whichever way it came (a zero TTL is the default one).
/// A frequency cap as a request gives it: 1 to 1,000,000 impressions within a window (zero is a day).
fn checked_cap(cap: u32, window: Duration) -> Result<(u32, Duration), ValidationError> {
    let cap = count("cap", cap, 0, 1, 1_000_000)?;
    let window = millis(
        "window_ms",
        window.as_millis() as u64,
        Duration::from_secs(24 * 3600),
    )?;
    Ok((cap, window))
}

/// Most users, and events in all, in one PushEvents call.
const MAX_PUSH_USERS: usize = 1_000;
const MAX_PUSH_EVENTS: usize = 10_000;

fn checked_push(p: &EventPush) -> Result<(), ValidationError> {
    let events: usize = p.users.iter().map(|u| u.events.len()).sum();
    if p.users.len() > MAX_PUSH_USERS {
        return Err(ValidationError::new(
            "users",
            format!(
                "has {} entries, the limit is {MAX_PUSH_USERS}",
                p.users.len()
            ),
        ));
    }
    if events > MAX_PUSH_EVENTS {
        return Err(ValidationError::new(
            "users",
            format!("hold {events} events, the limit is {MAX_PUSH_EVENTS}"),
        ));
    }
    Ok(())
}

fn checked_result(w: ResultWrite) -> Result<ResultWrite, ValidationError> {
    reco_types::check_candidates("items", w.items.len())?;
    let ttl = millis("ttl_ms", w.ttl.as_millis() as u64, DEFAULT_RESULT_TTL)?;
    Ok(ResultWrite { ttl, ..w })
}

fn result_response(hit: Option<CachedResult>) -> pb::GetRecommendationsResponse {
    match hit {
        Some(hit) => pb::GetRecommendationsResponse {
            found: true,
            items: hit.items.into_iter().map(Into::into).collect(),
            created_at_ms: hit.created_at_ms,
            ttl_remaining_ms: hit.ttl_remaining.as_millis() as u64,
        },
        None => pb::GetRecommendationsResponse::default(),
    }
}

fn rate_response(d: RateDecision) -> pb::CheckRateLimitResponse {
    pb::CheckRateLimitResponse {
        allowed: d.allowed,
        remaining: d.remaining,
        retry_after_ms: d.retry_after.as_millis().try_into().unwrap_or(u64::MAX),
    }
}

impl CacheApi {
    async fn get_recommendations(
        &self,
        r: pb::GetRecommendationsRequest,
    ) -> Result<pb::GetRecommendationsResponse, Error> {
        let pb::GetRecommendationsRequest { user_id, scene } = r;
        let (u, s) = (user(&user_id)?, Scene::parse("scene", &scene)?);
        Ok(result_response(self.store.get_result(&u, &s).await?))
    }

    async fn put_recommendations(
        &self,
        r: pb::PutRecommendationsRequest,
    ) -> Result<pb::PutRecommendationsResponse, Error> {
        self.put(result_write(r)?).await?;
        Ok(pb::PutRecommendationsResponse {})
    }

    async fn put_recommendations_batch(
        &self,
        r: pb::PutRecommendationsBatchRequest,
    ) -> Result<pb::PutRecommendationsBatchResponse, Error> {
        let (written, recorded) = (r.puts.len() as u32, r.impressions.len() as u32);
        let writes = Writes {
            results: each("puts", r.puts, result_write)?,
            impressions: each("impressions", r.impressions, impression_write)?,
        };
        self.write(writes).await?;
        Ok(pb::PutRecommendationsBatchResponse { written, recorded })
    }

    /// Answers to cache and impressions to record, all at once (against Redis they share the connection's
    /// pipeline). Either list may be empty (every answer of a batch degraded, or none), not both.
    async fn write(&self, w: Writes) -> Result<(), Error> {
        let Writes {
            results,
            impressions,
        } = w;
        if results.is_empty() && impressions.is_empty() {
            return Err(ValidationError::new("puts", "and impressions are both empty").into());
        }
        for (field, n) in [("puts", results.len()), ("impressions", impressions.len())] {
            if n > 0 {
                check_batch(field, n)?;
            }
        }
        let results = each("puts", results, checked_result)?;
        let now = reco_types::now_ms();
        let (put, record) = tokio::join!(
            futures::future::try_join_all(results.into_iter().map(|p| self.put(p))),
            futures::future::try_join_all(impressions.iter().map(|i| {
                let at = if i.at_ms > 0 { i.at_ms } else { now };
                self.store.record_impressions(&i.user_id, &i.item_ids, at)
            })),
        );
        put?;
        record?;
        Ok(())
    }

    async fn put(&self, p: ResultWrite) -> Result<(), Error> {
        let ResultWrite {
            user_id: user,
            scene,
            items,
            ttl,
            record_impressions,
        } = p;
        if record_impressions {
            let ids: Vec<ItemId> = items.iter().map(|c| c.item_id.clone()).collect();
            let (put, recorded) = tokio::join!(
                self.store.put_result(&user, &scene, items, ttl),
                self.store
                    .record_impressions(&user, &ids, reco_types::now_ms()),
            );
            put?;
            recorded?;
        } else {
            self.store.put_result(&user, &scene, items, ttl).await?;
        }
        Ok(())
    }

    async fn invalidate(&self, r: pb::InvalidateRequest) -> Result<pb::InvalidateResponse, Error> {
        let pb::InvalidateRequest { user_id, scene } = r;
        let u = user(&user_id)?;
        let scene = if scene.is_empty() {
            None
        } else {
            Some(Scene::parse("scene", &scene)?)
        };
        let removed = self.store.invalidate(&u, scene.as_ref()).await?;
        Ok(pb::InvalidateResponse {
            removed: removed as u32,
        })
    }

    async fn push_event(&self, r: pb::PushEventRequest) -> Result<pb::PushEventResponse, Error> {
        let pb::PushEventRequest {
            user_id,
            event,
            max_len,
        } = r;
        let u = user(&user_id)?;
        let event =
            Event::try_from(event.ok_or_else(|| ValidationError::new("event", "is required"))?)
                .map_err(|e| e.within("event"))?;
        let max_len = count("max_len", max_len, 50, 1, 10_000)?;
        let length = self.store.push_event(&u, event, max_len as usize).await?;
        Ok(pb::PushEventResponse {
            length: length as u32,
        })
    }

    async fn push_events(&self, r: pb::PushEventsRequest) -> Result<pb::PushEventsResponse, Error> {
        let pb::PushEventsRequest {
            users,
            max_len,
            invalidate_results,
        } = r;
        let max_len = count("max_len", max_len, 50, 1, 10_000)?;
        check_batch("users", users.len())?;
        let users = each("users", users, |u| {
            let pb::UserEvents { user_id, events } = u;
            check_batch("events", events.len())?;
            Ok(EventAppend {
                user_id: user(&user_id)?,
                events: each("events", events, Event::try_from)?,
            })
        })?;
        let push = EventPush {
            users,
            invalidate_results,
        };
        checked_push(&push)?;
        let (pushed, invalidated) = self.push(push, max_len as usize).await?;
        Ok(pb::PushEventsResponse {
            pushed: pushed as u32,
            invalidated: invalidated as u32,
        })
    }

    /// Applies checked events: every user's at once (a store round trip each, in flight together).
    async fn push(&self, p: EventPush, max_len: usize) -> Result<(usize, usize), Error> {
        let invalidate = p.invalidate_results;
        let done = futures::future::try_join_all(p.users.into_iter().map(|u| async move {
            let pushed = if u.events.is_empty() {
                0
            } else {
                let n = u.events.len();
                self.store
                    .push_events(&u.user_id, u.events, max_len)
                    .await?;
                n
            };
            let invalidated = if invalidate {
                self.store.invalidate(&u.user_id, None).await?
            } else {
                0
            };
            Ok::<_, Error>((pushed, invalidated))
        }))
        .await?;
        Ok(done
            .into_iter()
            .fold((0, 0), |(p, i), (dp, di)| (p + dp, i + di)))
    }

    async fn get_recent_events(
        &self,
        r: pb::GetRecentEventsRequest,
    ) -> Result<pb::GetRecentEventsResponse, Error> {
        let pb::GetRecentEventsRequest { user_id, limit } = r;
        let u = user(&user_id)?;
        let limit = if limit == 0 {
            0
        } else {
            count("limit", limit, 0, 1, 10_000)?
        };
        let events = self.store.recent_events(&u, limit as usize).await?;
        Ok(pb::GetRecentEventsResponse {
            events: events.into_iter().map(Into::into).collect(),
        })
    }

    async fn check_rate_limit(
        &self,
        r: pb::CheckRateLimitRequest,
    ) -> Result<pb::CheckRateLimitResponse, Error> {
        let d = self.rate(checked_rate(rate_limit(r)?)?).await?;
        Ok(rate_response(d))
    }

    async fn rate(&self, r: RateLimit) -> Result<RateDecision, Error> {
        Ok(self
            .store
            .check_rate_limit(&r.key, r.limit, r.window, r.cost)
            .await?)
    }

    async fn record_impressions(
        &self,
        r: pb::RecordImpressionsRequest,
    ) -> Result<pb::RecordImpressionsResponse, Error> {
        let i = impression_write(r)?;
        let at = if i.at_ms > 0 {
            i.at_ms
        } else {
            reco_types::now_ms()
        };
        self.store
            .record_impressions(&i.user_id, &i.item_ids, at)
            .await?;
        Ok(pb::RecordImpressionsResponse {})
    }

    async fn filter_capped(
        &self,
        r: pb::FilterCappedRequest,
    ) -> Result<pb::FilterCappedResponse, Error> {
        let pb::FilterCappedRequest {
            user_id,
            item_ids,
            cap,
            window_ms,
        } = r;
        let user_id = user(&user_id)?;
        check_batch("item_ids", item_ids.len())?;
        let item_ids = each("item_ids", item_ids, |s| ItemId::parse("", s))?;
        let q = CapQuery {
            user_id,
            item_ids,
            cap,
            window: Duration::from_millis(window_ms),
        };
        Ok(pb::FilterCappedResponse {
            capped_item_ids: self.capped(q).await?.into_iter().map(Into::into).collect(),
        })
    }

    /// The capped items among those asked (a zero window is a day).
    async fn capped(&self, q: CapQuery) -> Result<Vec<ItemId>, Error> {
        check_batch("item_ids", q.item_ids.len())?;
        let (cap, window) = checked_cap(q.cap, q.window)?;
        Ok(self
            .store
            .filter_capped(&q.user_id, &q.item_ids, cap, window)
            .await?)
    }

    async fn begin_recommend(
        &self,
        r: pb::BeginRecommendRequest,
    ) -> Result<pb::BeginRecommendResponse, Error> {
        let pb::BeginRecommendRequest {
            user_id,
            rate_limit: rate,
            read_result,
            scene,
            recent_events,
            frequency_cap,
        } = r;
        let q = BeginQuery {
            user_id: user(&user_id)?,
            scene: Scene::parse("scene", &scene)?,
            rate_limit: rate
                .map(rate_limit)
                .transpose()
                .map_err(|e| e.within("rate_limit"))?,
            read_result,
            recent_events,
            frequency_cap: frequency_cap
                .map(|c| (c.cap, Duration::from_millis(c.window_ms)))
                .filter(|_| read_result),
        };
        let begun = self.begin(q).await?;
        let refused = begun.rate.is_some_and(|d| !d.allowed);
        Ok(pb::BeginRecommendResponse {
            rate_limit: begun.rate.map(rate_response),
            result: (read_result && !refused).then(|| result_response(begun.result)),
            recent_events: begun.recent_events.into_iter().map(Into::into).collect(),
        })
    }

    /// The cache's part of the start of a request. Every part is checked before any runs, so a bad part touches
    /// nothing; the reads run beside the rate check rather than after it (one store round trip, not two), and a
    /// refused call throws them away, which is rare and costs only the reads.
    async fn begin(&self, q: BeginQuery) -> Result<Begun, Error> {
        let BeginQuery {
            user_id,
            scene,
            rate_limit,
            read_result,
            recent_events,
            frequency_cap,
        } = q;
        if recent_events > 0 {
            count("recent_events", recent_events, 0, 1, 10_000)?;
        }
        let frequency_cap = frequency_cap
            .map(|(cap, window)| checked_cap(cap, window))
            .transpose()
            .map_err(|e| e.within("frequency_cap"))?;
        let rate_limit = rate_limit
            .map(checked_rate)
            .transpose()
            .map_err(|e| e.within("rate_limit"))?;
        let rate = async {
            match rate_limit {
                Some(r) => self.rate(r).await.map(Some),
                None => Ok(None),
            }
        };
        let result = async {
            if !read_result {
                return Ok::<_, Error>(None);
            }
            let Some(mut hit) = self.store.get_result(&user_id, &scene).await? else {
                return Ok(None);
            };
            // A cached answer is shown again: what it would show over the cap is left out, as a fresh answer's
            // frequency_cap stage would (a second round trip, only on a hit).
            if let Some((cap, window)) = frequency_cap
                && !hit.items.is_empty()
            {
                let ids: Vec<ItemId> = hit.items.iter().map(|c| c.item_id.clone()).collect();
                let capped: std::collections::HashSet<ItemId> = self
                    .store
                    .filter_capped(&user_id, &ids, cap, window)
                    .await?
                    .into_iter()
                    .collect();
                hit.items.retain(|c| !capped.contains(&c.item_id));
            }
            Ok(Some(hit))
        };
        let events = async {
            if recent_events == 0 {
                return Ok::<_, Error>(Vec::new());
            }
            Ok(self
                .store
                .recent_events(&user_id, recent_events as usize)
                .await?)
        };
        let (rate, result, events) = tokio::join!(rate, result, events);
        let rate = rate?;
        if rate.as_ref().is_some_and(|r| !r.allowed) {
            return Ok(Begun {
                rate,
                ..Default::default()
            });
        }
        Ok(Begun {
            rate,
            result: result?,
            recent_events: events?,
        })
    }

    async fn get_session(&self, r: pb::GetSessionRequest) -> Result<pb::GetSessionResponse, Error> {
        let id = key("session_id", &r.session_id)?;
        Ok(match self.store.get_session(&id).await? {
            Some(s) => pb::GetSessionResponse {
                found: true,
                data: s.data,
                ttl_remaining_ms: s.ttl_remaining.as_millis() as u64,
            },
            None => pb::GetSessionResponse::default(),
        })
    }

    async fn put_session(&self, r: pb::PutSessionRequest) -> Result<pb::PutSessionResponse, Error> {
        let pb::PutSessionRequest {
            session_id,
            data,
            ttl_ms,
        } = r;
        let id = key("session_id", &session_id)?;
        if data.len() > MAX_SESSION_BYTES {
            return Err(ValidationError::new(
                "data",
                format!("is {} bytes, the limit is {MAX_SESSION_BYTES}", data.len()),
            )
            .into());
        }
        let ttl = millis("ttl_ms", ttl_ms, DEFAULT_SESSION_TTL)?;
        self.store.put_session(&id, data, ttl).await?;
        Ok(pb::PutSessionResponse {})
    }

    async fn delete_session(
        &self,
        r: pb::DeleteSessionRequest,
    ) -> Result<pb::DeleteSessionResponse, Error> {
        let id = key("session_id", &r.session_id)?;
        Ok(pb::DeleteSessionResponse {
            deleted: self.store.delete_session(&id).await?,
        })
    }
}

reco_server::delegate_rpcs! { CacheService => CacheApi {
    get_recommendations(pb::GetRecommendationsRequest) -> pb::GetRecommendationsResponse;
    put_recommendations(pb::PutRecommendationsRequest) -> pb::PutRecommendationsResponse;
    invalidate(pb::InvalidateRequest) -> pb::InvalidateResponse;
    push_event(pb::PushEventRequest) -> pb::PushEventResponse;
    get_recent_events(pb::GetRecentEventsRequest) -> pb::GetRecentEventsResponse;
    check_rate_limit(pb::CheckRateLimitRequest) -> pb::CheckRateLimitResponse;
    record_impressions(pb::RecordImpressionsRequest) -> pb::RecordImpressionsResponse;
    filter_capped(pb::FilterCappedRequest) -> pb::FilterCappedResponse;
    get_session(pb::GetSessionRequest) -> pb::GetSessionResponse;
    put_session(pb::PutSessionRequest) -> pb::PutSessionResponse;
    delete_session(pb::DeleteSessionRequest) -> pb::DeleteSessionResponse;
    begin_recommend(pb::BeginRecommendRequest) -> pb::BeginRecommendResponse;
    put_recommendations_batch(pb::PutRecommendationsBatchRequest) -> pb::PutRecommendationsBatchResponse;
    push_events(pb::PushEventsRequest) -> pb::PushEventsResponse;
}}

/// The service called in process (`reco_client::Cache`): the same checks and store calls as its RPCs, on domain
/// values, with nothing encoded.
#[async_trait]
impl reco_client::Cache for CacheApi {
    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(service = "cache", rpc = "/reco.cache.v1.CacheService/BeginRecommend")
    )]
    async fn begin(&self, q: BeginQuery, _budget: Duration) -> reco_client::Result<Begun> {
        Ok(self.begin(q).await?)
    }

    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(service = "cache", rpc = "/reco.cache.v1.CacheService/FilterCapped")
    )]
    async fn filter_capped(
        &self,
        q: CapQuery,
        _budget: Duration,
    ) -> reco_client::Result<Vec<ItemId>> {
        Ok(self.capped(q).await?)
    }

    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "cache",
            rpc = "/reco.cache.v1.CacheService/PutRecommendationsBatch"
        )
    )]
    async fn write(&self, w: Writes, _budget: Duration) -> reco_client::Result<()> {
        Ok(self.write(w).await?)
    }

    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(service = "cache", rpc = "/reco.cache.v1.CacheService/PushEvents")
    )]
    async fn push_events(&self, p: EventPush, _budget: Duration) -> reco_client::Result<()> {
        checked_push(&p).map_err(Error::from)?;
        self.push(p, DEFAULT_RECENT_EVENTS).await?;
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        self.store.ping().await.map_err(|e| e.to_string())
    }
}
