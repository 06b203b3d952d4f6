//! The clients over gRPC: each query encoded into its request, sent with the budget as `grpc-timeout` over a
//! traced channel (trace context, caller token, TLS when configured), and the answer checked back into domain
//! values. An answer a client cannot read is the service's fault: `DATA_LOSS`, except for single items or events,
//! which are left out (one bad row must not fail every request that meets it).

mod ranking;

use std::time::Duration;

use async_trait::async_trait;
use reco_proto::{
    cache::v1::{self as cache_pb, cache_service_client::CacheServiceClient},
    common::v1 as common_pb,
    conversions,
    feature::v1::{self as feature_pb, feature_service_client::FeatureServiceClient},
    graph_recall::v1::{self as graph_pb, graph_recall_client::GraphRecallClient},
    vector_recall::v1::{self as vector_pb, vector_recall_client::VectorRecallClient},
};
use reco_server::TracedChannel;
use reco_types::{Embedding, Event, Item, ItemId, User, UserId};
use tonic::Status;

pub use self::ranking::{GrpcRanking, RankWire};
use crate::{
    BeginQuery, Begun, Cache, CachedResult, CapQuery, EventAppend, EventPush, Feature, GraphEdge,
    GraphQuery, GraphRecall, Hit, ItemsQuery, PopularQuery, RateDecision, Readiness, Result,
    SearchQuery, UserContext, UserContextQuery, VectorQuery, VectorRecall, Writes,
};

/// A request that tells the service how long it has.
pub fn request<T>(message: T, budget: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.set_timeout(budget);
    r
}

/// Whether the service at the other end of `channel` answers SERVING on `grpc.health.v1.Health`.
pub async fn health(channel: &TracedChannel) -> Readiness {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut client = HealthClient::new(channel.clone());
    let check = HealthCheckRequest {
        service: String::new(),
    };
    match client.check(request(check, Duration::from_secs(1))).await {
        Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
        Ok(r) => Err(format!("not serving (status {})", r.get_ref().status)),
        Err(e) => Err(e.message().to_string()),
    }
}

/// A service's answer that does not validate.
fn malformed(service: &str, e: reco_types::ValidationError) -> Status {
    Status::data_loss(format!("the {service}'s answer does not validate: {e}"))
}

/// Hits from (id, score) pairs, leaving out ids that do not validate.
fn hits(pairs: impl IntoIterator<Item = (String, f32)>) -> Vec<Hit> {
    pairs
        .into_iter()
        .filter_map(|(id, score)| {
            let item_id = ItemId::parse("item_id", &id).ok()?;
            Some(Hit { item_id, score })
        })
        .collect()
}

fn events(list: Vec<common_pb::Event>) -> Vec<Event> {
    list.into_iter()
        .filter_map(|e| Event::try_from(e).ok())
        .collect()
}

fn version(v: &Option<reco_types::FeatureVersion>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The feature service over gRPC.
#[derive(Clone)]
pub struct GrpcFeature {
    channel: TracedChannel,
}

impl GrpcFeature {
    pub fn new(channel: TracedChannel) -> Self {
        Self { channel }
    }

    fn client(&self) -> FeatureServiceClient<TracedChannel> {
        FeatureServiceClient::new(self.channel.clone())
    }
}

#[async_trait]
impl Feature for GrpcFeature {
    async fn user_context(&self, q: UserContextQuery, budget: Duration) -> Result<UserContext> {
        let message = feature_pb::GetUserContextRequest {
            user_id: q.user_id.to_string(),
            feature_version: version(&q.version),
            max_events: q.max_events,
            max_pool: q.max_pool,
        };
        let r = self
            .client()
            .get_user_context(request(message, budget))
            .await?
            .into_inner();
        let bad = |e| malformed("feature service", e);
        // The service sends features exactly when it has the user.
        let user = match r.features {
            Some(features) => Some(User {
                user_id: q.user_id,
                features: reco_types::Features::try_from(features)
                    .map_err(|e| bad(e.within("features")))?,
                embedding: Embedding::parse_optional("embedding", r.embedding).map_err(bad)?,
            }),
            None => None,
        };
        Ok(UserContext {
            user,
            recall_pool: conversions::candidates("recall_pool", r.recall_pool).map_err(bad)?,
            recent_events: events(r.recent_events),
            version: (!r.feature_version.is_empty())
                .then(|| reco_types::FeatureVersion::parse("feature_version", &r.feature_version))
                .transpose()
                .map_err(bad)?,
        })
    }

    async fn items(&self, q: ItemsQuery, budget: Duration) -> Result<Vec<Item>> {
        let message = feature_pb::BatchGetItemFeaturesRequest {
            item_ids: q.item_ids.iter().map(ToString::to_string).collect(),
            feature_version: version(&q.version),
            include_embeddings: q.include_embeddings,
        };
        let r = self
            .client()
            .batch_get_item_features(request(message, budget))
            .await?
            .into_inner();
        Ok(r.items
            .into_iter()
            .filter_map(|i| Item::try_from(i).ok())
            .collect())
    }

    async fn popular(&self, q: PopularQuery, budget: Duration) -> Result<Vec<Hit>> {
        let message = feature_pb::GetPopularItemsRequest {
            k: q.k,
            category: q.category.map(|c| c.to_string()).unwrap_or_default(),
            feature_version: version(&q.version),
        };
        let r = self
            .client()
            .get_popular_items(request(message, budget))
            .await?
            .into_inner();
        Ok(hits(r.items.into_iter().map(|c| (c.item_id, c.score))))
    }

    async fn append_events(&self, appends: Vec<EventAppend>, budget: Duration) -> Result<()> {
        let message = feature_pb::AppendEventsBatchRequest {
            appends: appends
                .into_iter()
                .map(|a| feature_pb::AppendEventsRequest {
                    user_id: user(&a.user_id),
                    events: a.events.into_iter().map(Into::into).collect(),
                })
                .collect(),
        };
        self.client()
            .append_events_batch(request(message, budget))
            .await?;
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        health(&self.channel).await
    }
}

/// The cache service over gRPC.
#[derive(Clone)]
pub struct GrpcCache {
    channel: TracedChannel,
}

impl GrpcCache {
    pub fn new(channel: TracedChannel) -> Self {
        Self { channel }
    }

    fn client(&self) -> CacheServiceClient<TracedChannel> {
        CacheServiceClient::new(self.channel.clone())
    }
}

fn user(u: &UserId) -> String {
    u.to_string()
}

#[async_trait]
impl Cache for GrpcCache {
    async fn begin(&self, q: BeginQuery, budget: Duration) -> Result<Begun> {
        let message = cache_pb::BeginRecommendRequest {
            user_id: user(&q.user_id),
            rate_limit: q.rate_limit.map(|r| cache_pb::CheckRateLimitRequest {
                key: r.key,
                limit: r.limit,
                window_ms: r.window.as_millis() as u64,
                cost: r.cost,
            }),
            read_result: q.read_result,
            scene: q.scene.to_string(),
            recent_events: q.recent_events,
            frequency_cap: q.frequency_cap.map(|(cap, window)| cache_pb::FrequencyCap {
                cap,
                window_ms: window.as_millis() as u64,
            }),
        };
        let r = self
            .client()
            .begin_recommend(request(message, budget))
            .await?
            .into_inner();
        Ok(Begun {
            rate: r.rate_limit.map(|d| RateDecision {
                allowed: d.allowed,
                remaining: d.remaining,
                retry_after: Duration::from_millis(d.retry_after_ms),
            }),
            // A cached answer that does not read back is as good as none: the request makes a fresh one.
            result: r.result.filter(|h| h.found).and_then(|h| {
                Some(CachedResult {
                    items: conversions::candidates("items", h.items).ok()?,
                    created_at_ms: h.created_at_ms,
                    ttl_remaining: Duration::from_millis(h.ttl_remaining_ms),
                })
            }),
            recent_events: events(r.recent_events),
        })
    }

    async fn filter_capped(&self, q: CapQuery, budget: Duration) -> Result<Vec<ItemId>> {
        let message = cache_pb::FilterCappedRequest {
            user_id: user(&q.user_id),
            item_ids: q.item_ids.iter().map(ToString::to_string).collect(),
            cap: q.cap,
            window_ms: q.window.as_millis() as u64,
        };
        let r = self
            .client()
            .filter_capped(request(message, budget))
            .await?
            .into_inner();
        Ok(r.capped_item_ids
            .iter()
            .filter_map(|id| ItemId::parse("item_id", id).ok())
            .collect())
    }

    async fn write(&self, w: Writes, budget: Duration) -> Result<()> {
        let message = cache_pb::PutRecommendationsBatchRequest {
            puts: w
                .results
                .into_iter()
                .map(|p| cache_pb::PutRecommendationsRequest {
                    user_id: user(&p.user_id),
                    scene: p.scene.to_string(),
                    items: p.items.into_iter().map(Into::into).collect(),
                    ttl_ms: p.ttl.as_millis() as u64,
                    record_impressions: p.record_impressions,
                })
                .collect(),
            impressions: w
                .impressions
                .into_iter()
                .map(|i| cache_pb::RecordImpressionsRequest {
                    user_id: user(&i.user_id),
                    item_ids: i.item_ids.iter().map(ToString::to_string).collect(),
                    timestamp_ms: i.at_ms,
                })
                .collect(),
        };
        self.client()
            .put_recommendations_batch(request(message, budget))
            .await?;
        Ok(())
    }

    async fn push_events(&self, p: EventPush, budget: Duration) -> Result<()> {
        let message = cache_pb::PushEventsRequest {
            users: p
                .users
                .into_iter()
                .map(|a| cache_pb::UserEvents {
                    user_id: user(&a.user_id),
                    events: a.events.into_iter().map(Into::into).collect(),
                })
                .collect(),
            max_len: 0,
            invalidate_results: p.invalidate_results,
        };
        self.client().push_events(request(message, budget)).await?;
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        health(&self.channel).await
    }
}

/// The vector-recall service over gRPC.
#[derive(Clone)]
pub struct GrpcVectorRecall {
    channel: TracedChannel,
}

impl GrpcVectorRecall {
    pub fn new(channel: TracedChannel) -> Self {
        Self { channel }
    }
}

#[async_trait]
impl VectorRecall for GrpcVectorRecall {
    async fn search(&self, q: SearchQuery, budget: Duration) -> Result<Vec<Hit>> {
        use vector_pb::search_request::Query;
        let query = match q.query {
            VectorQuery::Vector(e) => Query::Vector(common_pb::Vector {
                values: e.as_slice().to_vec(),
            }),
            VectorQuery::Items(ids) => Query::ItemIds(vector_pb::ItemIds {
                item_ids: ids.iter().map(ToString::to_string).collect(),
            }),
        };
        let message = vector_pb::SearchRequest {
            query: Some(query),
            k: q.k,
            filter: Some(q.filter.into()),
        };
        let r = VectorRecallClient::new(self.channel.clone())
            .search(request(message, budget))
            .await?
            .into_inner();
        Ok(hits(r.hits.into_iter().map(|h| (h.item_id, h.score))))
    }

    async fn ready(&self) -> Readiness {
        health(&self.channel).await
    }
}

/// The graph-recall service over gRPC.
#[derive(Clone)]
pub struct GrpcGraphRecall {
    channel: TracedChannel,
}

impl GrpcGraphRecall {
    pub fn new(channel: TracedChannel) -> Self {
        Self { channel }
    }
}

#[async_trait]
impl GraphRecall for GrpcGraphRecall {
    async fn recall(&self, q: GraphQuery, budget: Duration) -> Result<Vec<Hit>> {
        let message = graph_pb::RecallRequest {
            user_id: user(&q.user_id),
            strategies: Vec::new(),
            k: q.k,
            max_steps: 0,
            time_budget_ms: (q.time_budget.as_millis() as u32).max(1),
        };
        let r = GraphRecallClient::new(self.channel.clone())
            .recall(request(message, budget))
            .await?
            .into_inner();
        Ok(hits(
            r.candidates
                .into_iter()
                .filter(|c| c.kind == graph_pb::TargetKind::Item as i32)
                .map(|c| (c.id, c.score)),
        ))
    }

    async fn add_edges(&self, edges: Vec<GraphEdge>, budget: Duration) -> Result<()> {
        let edge = |src: &str, dst: &str, kind: graph_pb::EdgeKind, weight: f32| graph_pb::Edge {
            src: src.to_string(),
            dst: dst.to_string(),
            kind: kind as i32,
            weight,
        };
        let message = graph_pb::AddEdgesRequest {
            edges: edges
                .iter()
                .map(|e| match e {
                    GraphEdge::Follows { user, followee } => edge(
                        user.as_str(),
                        followee.as_str(),
                        graph_pb::EdgeKind::Follows,
                        1.0,
                    ),
                    GraphEdge::Engaged { user, item, weight } => edge(
                        user.as_str(),
                        item.as_str(),
                        graph_pb::EdgeKind::Engaged,
                        *weight,
                    ),
                })
                .collect(),
        };
        GraphRecallClient::new(self.channel.clone())
            .add_edges(request(message, budget))
            .await?;
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        health(&self.channel).await
    }
}
