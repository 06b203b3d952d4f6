//! The gRPC edge: validates requests into domain types, calls the store, converts back.

use std::{sync::Arc, time::Duration};

use reco_cache_store::{CacheStore, DEFAULT_RESULT_TTL, DEFAULT_SESSION_TTL, MAX_SESSION_BYTES};
use reco_proto::{
    cache::v1::{self as pb, cache_service_server::CacheService},
    conversions::{candidates, each},
};
use reco_types::{
    Event, ItemId, MAX_ID_BYTES, Scene, UserId, ValidationError, check_batch, check_id, count,
};

use crate::Error;

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

/// Puts a part's validation error under its field in the enclosing request.
fn within(e: Error, parent: &str) -> Error {
    match e {
        Error::Invalid(v) => Error::Invalid(v.within(parent)),
        other => other,
    }
}

/// A session id or rate-limit key: an opaque string with the id rules.
fn key(field: &str, s: &str) -> Result<String, ValidationError> {
    check_id(field, s, MAX_ID_BYTES).map(|()| s.to_string())
}

/// A PutRecommendations request, checked.
struct Put {
    user: UserId,
    scene: Scene,
    items: Vec<reco_types::Candidate>,
    ttl: Duration,
    record_impressions: bool,
}

impl Put {
    fn parse(r: pb::PutRecommendationsRequest) -> Result<Self, ValidationError> {
        let pb::PutRecommendationsRequest {
            user_id,
            scene,
            items,
            ttl_ms,
            record_impressions,
        } = r;
        Ok(Self {
            user: user(&user_id)?,
            scene: Scene::parse("scene", &scene)?,
            items: candidates("items", items)?,
            ttl: millis("ttl_ms", ttl_ms, DEFAULT_RESULT_TTL)?,
            record_impressions,
        })
    }
}

/// A RecordImpressions request, validated.
struct Impressions {
    user: UserId,
    items: Vec<ItemId>,
    at_ms: i64,
}

impl Impressions {
    fn parse(r: pb::RecordImpressionsRequest) -> Result<Self, ValidationError> {
        let pb::RecordImpressionsRequest {
            user_id,
            item_ids,
            timestamp_ms,
        } = r;
        let user = user(&user_id)?;
        check_batch("item_ids", item_ids.len())?;
        let items = each("item_ids", item_ids, |s| ItemId::parse("", s))?;
        if timestamp_ms < 0 {
            return Err(ValidationError::new("timestamp_ms", "must not be negative"));
        }
        let at_ms = if timestamp_ms == 0 {
            reco_types::now_ms()
        } else {
            timestamp_ms
        };
        Ok(Self { user, items, at_ms })
    }
}

impl CacheApi {
    async fn get_recommendations(
        &self,
        r: pb::GetRecommendationsRequest,
    ) -> Result<pb::GetRecommendationsResponse, Error> {
        let pb::GetRecommendationsRequest { user_id, scene } = r;
        let (u, s) = (user(&user_id)?, Scene::parse("scene", &scene)?);
        Ok(match self.store.get_result(&u, &s).await? {
            Some(hit) => pb::GetRecommendationsResponse {
                found: true,
                items: hit.items.into_iter().map(Into::into).collect(),
                created_at_ms: hit.created_at_ms,
                ttl_remaining_ms: hit.ttl_remaining.as_millis() as u64,
            },
            None => pb::GetRecommendationsResponse::default(),
        })
    }

    async fn put_recommendations(
        &self,
        r: pb::PutRecommendationsRequest,
    ) -> Result<pb::PutRecommendationsResponse, Error> {
        self.put(Put::parse(r)?).await?;
        Ok(pb::PutRecommendationsResponse {})
    }

    async fn put_recommendations_batch(
        &self,
        r: pb::PutRecommendationsBatchRequest,
    ) -> Result<pb::PutRecommendationsBatchResponse, Error> {
        // Either list may be empty (every answer of a batch degraded, or none), not both.
        if r.puts.is_empty() && r.impressions.is_empty() {
            return Err(ValidationError::new("puts", "and impressions are both empty").into());
        }
        for (field, n) in [("puts", r.puts.len()), ("impressions", r.impressions.len())] {
            if n > 0 {
                check_batch(field, n)?;
            }
        }
        let puts = each("puts", r.puts, Put::parse)?;
        let impressions = each("impressions", r.impressions, Impressions::parse)?;
        let (written, recorded) = (puts.len() as u32, impressions.len() as u32);
        // At once: against Redis the writes share the connection's pipeline.
        let (put, record) = tokio::join!(
            futures::future::try_join_all(puts.into_iter().map(|p| self.put(p))),
            futures::future::try_join_all(
                impressions
                    .iter()
                    .map(|i| self.store.record_impressions(&i.user, &i.items, i.at_ms))
            ),
        );
        put?;
        record?;
        Ok(pb::PutRecommendationsBatchResponse { written, recorded })
    }

    async fn put(&self, p: Put) -> Result<(), Error> {
        let Put {
            user,
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
        let pb::CheckRateLimitRequest {
            key: k,
            limit,
            window_ms,
            cost,
        } = r;
        let k = key("key", &k)?;
        let limit = count("limit", limit, 0, 1, 1_000_000)?;
        if window_ms == 0 {
            return Err(ValidationError::new("window_ms", "must be at least 1").into());
        }
        let window = millis("window_ms", window_ms, Duration::ZERO)?;
        let cost = count("cost", cost, 1, 1, limit)?;
        let d = self.store.check_rate_limit(&k, limit, window, cost).await?;
        Ok(pb::CheckRateLimitResponse {
            allowed: d.allowed,
            remaining: d.remaining,
            retry_after_ms: d.retry_after.as_millis().try_into().unwrap_or(u64::MAX),
        })
    }

    async fn record_impressions(
        &self,
        r: pb::RecordImpressionsRequest,
    ) -> Result<pb::RecordImpressionsResponse, Error> {
        let i = Impressions::parse(r)?;
        self.store
            .record_impressions(&i.user, &i.items, i.at_ms)
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
        let u = user(&user_id)?;
        check_batch("item_ids", item_ids.len())?;
        let items = each("item_ids", item_ids, |s| ItemId::parse("", s))?;
        let cap = count("cap", cap, 0, 1, 1_000_000)?;
        let window = millis("window_ms", window_ms, Duration::from_secs(24 * 3600))?;
        let capped = self.store.filter_capped(&u, &items, cap, window).await?;
        Ok(pb::FilterCappedResponse {
            capped_item_ids: capped.into_iter().map(Into::into).collect(),
        })
    }

    async fn begin_recommend(
        &self,
        r: pb::BeginRecommendRequest,
    ) -> Result<pb::BeginRecommendResponse, Error> {
        let pb::BeginRecommendRequest {
            user_id,
            rate_limit,
            read_result,
            scene,
            recent_events,
        } = r;
        // Every part is checked before any runs, so a bad part touches nothing.
        user(&user_id)?;
        Scene::parse("scene", &scene)?;
        if recent_events > 0 {
            count("recent_events", recent_events, 0, 1, 10_000)?;
        }
        let rate = async {
            match rate_limit {
                Some(r) => self.check_rate_limit(r).await.map(Some),
                None => Ok(None),
            }
        };
        // The reads run beside the rate check rather than after it: one store round trip, not two. A refused
        // call throws them away, which is rare and costs only the reads.
        let result = async {
            if !read_result {
                return Ok(None);
            }
            let request = pb::GetRecommendationsRequest {
                user_id: user_id.clone(),
                scene: scene.clone(),
            };
            self.get_recommendations(request).await.map(Some)
        };
        let events = async {
            if recent_events == 0 {
                return Ok::<_, Error>(Vec::new());
            }
            let request = pb::GetRecentEventsRequest {
                user_id: user_id.clone(),
                limit: recent_events,
            };
            Ok(self.get_recent_events(request).await?.events)
        };
        let (rate, result, events) = tokio::join!(
            async { rate.await.map_err(|e| within(e, "rate_limit")) },
            result,
            events
        );
        let rate = rate?;
        if rate.as_ref().is_some_and(|r| !r.allowed) {
            return Ok(pb::BeginRecommendResponse {
                rate_limit: rate,
                ..Default::default()
            });
        }
        Ok(pb::BeginRecommendResponse {
            rate_limit: rate,
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
}}
