//! The gRPC edge: validates Recommend into a pipeline query and turns the answer into the response.

use std::{collections::BTreeMap, sync::Arc};

use reco_proto::gateway::v1::{self as pb, gateway_server::Gateway};
use reco_types::{FeatureVersion, ItemId, RawEvent, Scene, UserEvent, UserId, ValidationError};
use tonic::{Request, Response, Status};

use crate::{
    budget::parse_grpc_timeout,
    error::Error,
    events::{self, AppendError, Recorder},
    merge::DropReason,
    pipeline::{Pipeline, Query},
};

/// Most items one call may ask for.
pub const MAX_COUNT: u32 = 100;
/// Items returned when the call does not say.
pub const DEFAULT_COUNT: u32 = 10;
/// Most context entries, and their sizes.
const MAX_CONTEXT: usize = 64;
const MAX_CONTEXT_VALUE: usize = 1024;
/// Most items one call may ask to have explained.
const MAX_EXPLAIN_ITEMS: usize = 100;
/// Most on-demand sources one call may name.
const MAX_INCLUDE_SOURCES: usize = 16;

/// Most events in one RecordEvents call.
pub const MAX_EVENTS: usize = 1_000;

/// The Gateway implementation.
pub struct GatewayApi {
    pipeline: Arc<Pipeline>,
    recorder: Arc<Recorder>,
}

impl GatewayApi {
    pub fn new(pipeline: Arc<Pipeline>, recorder: Arc<Recorder>) -> Self {
        Self { pipeline, recorder }
    }
}

/// Checks every event of a RecordEvents call; the first bad one refuses the call, named by its position.
fn user_events(events: Vec<pb::UserEvent>) -> Result<Vec<UserEvent>, ValidationError> {
    if events.is_empty() {
        return Err(ValidationError::new("events", "must not be empty"));
    }
    if events.len() > MAX_EVENTS {
        return Err(ValidationError::new(
            "events",
            format!("has {} events, the limit is {MAX_EVENTS}", events.len()),
        ));
    }
    let now = reco_types::now_ms();
    reco_types::each("events", events, |e| {
        UserEvent::parse(RawEvent::from(e), events::fresh_id, now)
    })
}

fn query(
    r: pb::RecommendRequest,
    caller_timeout: Option<std::time::Duration>,
) -> Result<Query, ValidationError> {
    let pb::RecommendRequest {
        user_id,
        count: n,
        scene,
        context,
        explain,
        bypass_cache,
        include_graph,
        feature_version,
        explain_item_ids,
        include_sources,
    } = r;
    if explain_item_ids.len() > MAX_EXPLAIN_ITEMS {
        return Err(ValidationError::new(
            "explain_item_ids",
            format!(
                "has {} ids, the limit is {MAX_EXPLAIN_ITEMS}",
                explain_item_ids.len()
            ),
        ));
    }
    let mut explain_items: Vec<ItemId> = Vec::with_capacity(explain_item_ids.len());
    for (i, id) in explain_item_ids.iter().enumerate() {
        let id = ItemId::parse(&format!("explain_item_ids[{i}]"), id)?;
        if !explain_items.contains(&id) {
            explain_items.push(id);
        }
    }
    if include_sources.len() > MAX_INCLUDE_SOURCES {
        return Err(ValidationError::new(
            "include_sources",
            format!(
                "has {} names, the limit is {MAX_INCLUDE_SOURCES}",
                include_sources.len()
            ),
        ));
    }
    for (i, name) in include_sources.iter().enumerate() {
        reco_types::Name::parse(&format!("include_sources[{i}]"), name)?;
    }
    if context.len() > MAX_CONTEXT {
        return Err(ValidationError::new(
            "context",
            format!("has {} entries, the limit is {MAX_CONTEXT}", context.len()),
        ));
    }
    let mut ctx = BTreeMap::new();
    for (k, v) in context {
        reco_types::Name::parse("context", &k)
            .map_err(|e| ValidationError::new(format!("context[{k:.32}]"), e.reason))?;
        if v.len() > MAX_CONTEXT_VALUE {
            return Err(ValidationError::new(
                format!("context[{k}]"),
                format!(
                    "is {} bytes long, the limit is {MAX_CONTEXT_VALUE}",
                    v.len()
                ),
            ));
        }
        ctx.insert(k, v);
    }
    Ok(Query {
        user_id: UserId::parse("user_id", &user_id)?,
        count: match n {
            None => DEFAULT_COUNT as usize,
            Some(n) if (1..=MAX_COUNT).contains(&n) => n as usize,
            Some(n) => {
                return Err(ValidationError::new(
                    "count",
                    format!("must be between 1 and {MAX_COUNT}, got {n}"),
                ));
            }
        },
        scene: Scene::parse("scene", &scene)?,
        context: ctx,
        explain,
        explain_items,
        bypass_cache,
        include_graph,
        include_sources: include_sources.into_iter().collect(),
        feature_version: if feature_version.is_empty() {
            None
        } else {
            Some(FeatureVersion::parse("feature_version", &feature_version)?)
        },
        caller_timeout,
    })
}

fn drop_reason(r: Option<DropReason>) -> pb::DropReason {
    match r {
        None => pb::DropReason::Unspecified,
        Some(DropReason::Seen) => pb::DropReason::Seen,
        Some(DropReason::FrequencyCap) => pb::DropReason::FrequencyCap,
        Some(DropReason::Blocked) => pb::DropReason::Blocked,
        Some(DropReason::Quota) => pb::DropReason::Quota,
        Some(DropReason::Diversity) => pb::DropReason::Diversity,
        Some(DropReason::BelowCut) => pb::DropReason::BelowCut,
        Some(DropReason::NoFeatures) => pb::DropReason::NoFeatures,
        Some(DropReason::NotRecalled) => pb::DropReason::NotRecalled,
    }
}

/// The deadline the caller sent (`grpc-timeout`), if any.
fn caller_timeout<T>(request: &Request<T>) -> Option<std::time::Duration> {
    request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

#[tonic::async_trait]
impl Gateway for GatewayApi {
    async fn record_events(
        &self,
        request: Request<pb::RecordEventsRequest>,
    ) -> Result<Response<pb::RecordEventsResponse>, Status> {
        // The call answers a little before the caller's deadline, with what is pending, rather than past it.
        let wait = caller_timeout(&request).map(|t| t.mul_f64(0.8));
        let events = user_events(request.into_inner().events).map_err(Error::from)?;
        let event_ids = events::ids(&events);
        let recorded = self
            .recorder
            .record(events, wait)
            .await
            .map_err(|e| match e {
                AppendError::Full(full) => Status::resource_exhausted(full.to_string()),
                AppendError::Io(io) => Status::unavailable(io.to_string()),
            })?;
        Ok(Response::new(pb::RecordEventsResponse {
            accepted: recorded.accepted,
            duplicates: recorded.duplicates,
            pending: recorded.pending,
            event_ids: event_ids.into_iter().map(Into::into).collect(),
        }))
    }

    async fn recommend(
        &self,
        request: Request<pb::RecommendRequest>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        let caller_timeout = caller_timeout(&request);
        let q = query(request.into_inner(), caller_timeout).map_err(Error::from)?;
        let request_id = uuid::Uuid::new_v4().to_string();
        tracing::Span::current().record("request_id", request_id.as_str());
        let a = self.pipeline.recommend(q).await.map_err(Error::from)?;
        Ok(Response::new(pb::RecommendResponse {
            items: a
                .items
                .into_iter()
                .map(|i| pb::RecommendedItem {
                    item_id: i.item_id.into(),
                    score: i.score,
                    sources: i.sources.into_iter().map(Into::into).collect(),
                })
                .collect(),
            stages: a.stages.into_iter().map(Into::into).collect(),
            degraded: a.degraded,
            from_cache: a.from_cache,
            request_id,
            explanations: a
                .explanations
                .into_iter()
                .map(|e| pb::Explanation {
                    item_id: e.item_id.into(),
                    sources: e.sources.into_iter().map(Into::into).collect(),
                    features: e.features.into_iter().collect(),
                    score: e.score,
                    position: e.position,
                    dropped: drop_reason(e.dropped) as i32,
                    detail: e.detail,
                    categories: e.categories.into_iter().map(Into::into).collect(),
                })
                .collect(),
            cold_start: a.cold_start,
            model_version: a.model_version,
        }))
    }
}
