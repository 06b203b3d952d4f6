//! The gRPC edge: validates requests into domain types, calls the store, converts back.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use reco_client::{EventAppend, Hit, ItemsQuery, PopularQuery, Readiness, UserContextQuery};

use reco_feature_store::{FeatureStore, check_row_size};
use reco_proto::{
    conversions::{candidates, each},
    feature::v1::{self as pb, feature_service_server::FeatureService},
};
use reco_types::{
    Candidate, FeatureVersion, Item, ItemId, MAX_BATCH, Name, User, UserContext, UserId,
    ValidationError, check_batch, count,
};

use crate::{Error, items::EncodedItems};

/// Most events in one AppendEventsBatch call.
const MAX_BATCH_EVENTS: usize = 10_000;

/// The FeatureService implementation over any store.
pub struct FeatureApi {
    store: Arc<dyn FeatureStore>,
    max_events: usize,
    /// Item batches of the active version, answered from encoded items (None: built from the store every time).
    items: Option<EncodedItems>,
}

impl FeatureApi {
    pub fn new(store: Arc<dyn FeatureStore>, max_events: usize) -> Self {
        Self {
            store,
            max_events,
            items: None,
        }
    }

    /// Keeps the active version's items encoded for `ttl` (at most `capacity` of them).
    pub fn with_item_cache(mut self, ttl: std::time::Duration, capacity: usize) -> Self {
        self.items = Some(EncodedItems::new(ttl, capacity));
        self
    }
}

/// Reads an optional version: empty means the active one.
fn version(s: &str) -> Result<Option<FeatureVersion>, ValidationError> {
    if s.is_empty() {
        Ok(None)
    } else {
        FeatureVersion::parse("feature_version", s).map(Some)
    }
}

impl FeatureApi {
    async fn get_user_context(
        &self,
        request: pb::GetUserContextRequest,
    ) -> Result<pb::GetUserContextResponse, Error> {
        let pb::GetUserContextRequest {
            user_id,
            feature_version,
            max_events,
            max_pool,
        } = request;
        let user_id = UserId::parse("user_id", &user_id)?;
        let version = version(&feature_version)?;
        let ctx = self
            .context(&user_id, version.as_ref(), max_events, max_pool)
            .await?;
        let found = ctx.found();
        let (features, embedding) = match ctx.user {
            Some(u) => (
                Some(u.features.into()),
                u.embedding.map(Into::into).unwrap_or_default(),
            ),
            None => (None, Vec::new()),
        };
        Ok(pb::GetUserContextResponse {
            user_id: user_id.into(),
            found,
            features,
            embedding,
            recall_pool: ctx.recall_pool.into_iter().map(Into::into).collect(),
            recent_events: ctx.recent_events.into_iter().map(Into::into).collect(),
            feature_version: ctx.version.map(Into::into).unwrap_or_default(),
        })
    }

    /// A user's context, whichever way the call came: the counts checked (0 events: the sequence length; 0 pool:
    /// all of it), then one store read.
    async fn context(
        &self,
        user_id: &UserId,
        version: Option<&FeatureVersion>,
        max_events: u32,
        max_pool: u32,
    ) -> Result<UserContext, Error> {
        let max_events = count("max_events", max_events, self.max_events as u32, 1, 10_000)?;
        let max_pool = if max_pool == 0 {
            0
        } else {
            count(
                "max_pool",
                max_pool,
                0,
                1,
                reco_types::MAX_CANDIDATES as u32,
            )?
        };
        Ok(self
            .store
            .user_context(version, user_id, max_events as usize, max_pool as usize)
            .await?)
    }

    async fn batch_get_item_features(
        &self,
        request: pb::BatchGetItemFeaturesRequest,
    ) -> Result<pb::BatchGetItemFeaturesResponse, Error> {
        let pb::BatchGetItemFeaturesRequest {
            item_ids,
            feature_version,
            include_embeddings,
        } = request;
        check_batch("item_ids", item_ids.len())?;
        let ids = each("item_ids", item_ids, |s| ItemId::parse("", s))?;
        let version = version(&feature_version)?;
        if let (None, Some(cache)) = (&version, &self.items) {
            let active = self.store.active_version().await?;
            let found = cache
                .read(&*self.store, &active, &ids, include_embeddings)
                .await?;
            return Ok(pb::BatchGetItemFeaturesResponse {
                encoded_items: found.items,
                missing_item_ids: found.missing,
                feature_version: active.into(),
                ..Default::default()
            });
        }
        let items = self
            .store
            .items(version.as_ref(), &ids, include_embeddings)
            .await?;
        let found: std::collections::HashSet<&str> =
            items.iter().map(|i| i.item_id.as_str()).collect();
        let missing_item_ids = ids
            .iter()
            .filter(|id| !found.contains(id.as_str()))
            .map(|id| id.to_string())
            .collect();
        let feature_version = match version {
            Some(v) => v.into(),
            None => self.store.active_version().await?.into(),
        };
        Ok(pb::BatchGetItemFeaturesResponse {
            items: items.into_iter().map(Into::into).collect(),
            missing_item_ids,
            feature_version,
            ..Default::default()
        })
    }

    async fn get_popular_items(
        &self,
        request: pb::GetPopularItemsRequest,
    ) -> Result<pb::GetPopularItemsResponse, Error> {
        let pb::GetPopularItemsRequest {
            k,
            category,
            feature_version,
        } = request;
        let category = if category.is_empty() {
            None
        } else {
            Some(Name::parse("category", &category)?)
        };
        let version = version(&feature_version)?;
        let items = self.popular(k, category.as_ref(), version.as_ref()).await?;
        Ok(pb::GetPopularItemsResponse {
            items: items.into_iter().map(Into::into).collect(),
        })
    }

    /// The `k` most popular items (0: 100), of `category` when given.
    async fn popular(
        &self,
        k: u32,
        category: Option<&Name>,
        version: Option<&FeatureVersion>,
    ) -> Result<Vec<Candidate>, Error> {
        let k = count("k", k, 100, 1, MAX_BATCH as u32)?;
        Ok(self
            .store
            .popular(version, k as usize, category.map(Name::as_str))
            .await?)
    }

    async fn put_user_features(
        &self,
        request: pb::PutUserFeaturesRequest,
    ) -> Result<pb::PutUserFeaturesResponse, Error> {
        let pb::PutUserFeaturesRequest {
            users,
            feature_version,
            merge,
        } = request;
        check_batch("users", users.len())?;
        let users = each("users", users, |u| {
            let u = User::try_from(u)?;
            check_row_size("", &u)?;
            Ok(u)
        })?;
        let version = version(&feature_version)?;
        let written = self.store.put_users(version.as_ref(), users, merge).await?;
        Ok(pb::PutUserFeaturesResponse {
            written: written as u32,
        })
    }

    async fn put_item_features(
        &self,
        request: pb::PutItemFeaturesRequest,
    ) -> Result<pb::PutItemFeaturesResponse, Error> {
        let pb::PutItemFeaturesRequest {
            items,
            feature_version,
        } = request;
        check_batch("items", items.len())?;
        let items = each("items", items, |i| {
            let i = Item::try_from(i)?;
            check_row_size("", &i)?;
            Ok(i)
        })?;
        let version = version(&feature_version)?;
        let ids: Vec<ItemId> = items.iter().map(|i| i.item_id.clone()).collect();
        let written = self.store.put_items(version.as_ref(), items).await;
        if let Some(cache) = &self.items {
            // Also after a failed write: part of it may have landed.
            cache.forget(&ids);
        }
        let written = written?;
        Ok(pb::PutItemFeaturesResponse {
            written: written as u32,
        })
    }

    async fn put_recall_pools(
        &self,
        request: pb::PutRecallPoolsRequest,
    ) -> Result<pb::PutRecallPoolsResponse, Error> {
        let pb::PutRecallPoolsRequest {
            pools,
            feature_version,
        } = request;
        check_batch("pools", pools.len())?;
        let pools = each("pools", pools, |p| {
            let pb::RecallPool {
                user_id,
                candidates: c,
            } = p;
            let list = candidates("candidates", c)?;
            check_row_size("candidates", &list)?;
            Ok((UserId::parse("user_id", &user_id)?, list))
        })?;
        let version = version(&feature_version)?;
        let written = self.store.put_recall_pools(version.as_ref(), pools).await?;
        Ok(pb::PutRecallPoolsResponse {
            written: written as u32,
        })
    }

    async fn put_popular_items(
        &self,
        request: pb::PutPopularItemsRequest,
    ) -> Result<pb::PutPopularItemsResponse, Error> {
        let pb::PutPopularItemsRequest {
            items,
            feature_version,
        } = request;
        let items = candidates("items", items)?;
        let version = version(&feature_version)?;
        let written = self.store.put_popular(version.as_ref(), items).await?;
        Ok(pb::PutPopularItemsResponse {
            written: written as u32,
        })
    }

    async fn append_events(
        &self,
        request: pb::AppendEventsRequest,
    ) -> Result<pb::AppendEventsResponse, Error> {
        let pb::AppendEventsRequest { user_id, events } = request;
        let user_id = UserId::parse("user_id", &user_id)?;
        check_batch("events", events.len())?;
        let events = each("events", events, reco_types::Event::try_from)?;
        let length = self
            .store
            .append_events(&user_id, events, self.max_events)
            .await?;
        Ok(pb::AppendEventsResponse {
            length: length as u32,
        })
    }

    async fn append_events_batch(
        &self,
        request: pb::AppendEventsBatchRequest,
    ) -> Result<pb::AppendEventsBatchResponse, Error> {
        let pb::AppendEventsBatchRequest { appends } = request;
        check_batch("appends", appends.len())?;
        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        if total > MAX_BATCH_EVENTS {
            return Err(ValidationError::new(
                "appends",
                format!("hold {total} events, the limit is {MAX_BATCH_EVENTS} per call"),
            )
            .into());
        }
        let appends = each("appends", appends, |a| {
            let pb::AppendEventsRequest { user_id, events } = a;
            check_batch("events", events.len())?;
            Ok(EventAppend {
                user_id: UserId::parse("user_id", &user_id)?,
                events: each("events", events, reco_types::Event::try_from)?,
            })
        })?;
        let lengths = self.append_batch(appends).await?;
        Ok(pb::AppendEventsBatchResponse {
            lengths: lengths.into_iter().map(|n| n as u32).collect(),
        })
    }

    /// Appends checked events, every user's in one store call.
    async fn append_batch(&self, appends: Vec<EventAppend>) -> Result<Vec<usize>, Error> {
        let appends = appends.into_iter().map(|a| (a.user_id, a.events)).collect();
        Ok(self
            .store
            .append_events_batch(appends, self.max_events)
            .await?)
    }

    async fn list_versions(
        &self,
        _request: pb::ListVersionsRequest,
    ) -> Result<pb::ListVersionsResponse, Error> {
        let (active, all) = self.store.versions().await?;
        Ok(pb::ListVersionsResponse {
            active_version: active.into(),
            versions: all.into_iter().map(Into::into).collect(),
        })
    }

    async fn activate_version(
        &self,
        request: pb::ActivateVersionRequest,
    ) -> Result<pb::ActivateVersionResponse, Error> {
        let pb::ActivateVersionRequest { feature_version } = request;
        let v = FeatureVersion::parse("feature_version", &feature_version)?;
        let previous = self.store.activate(&v).await?;
        tracing::info!(version = %v, %previous, "feature version activated");
        Ok(pb::ActivateVersionResponse {
            previous_version: previous.into(),
        })
    }
}

reco_server::delegate_rpcs! { FeatureService => FeatureApi {
    get_user_context(pb::GetUserContextRequest) -> pb::GetUserContextResponse;
    batch_get_item_features(pb::BatchGetItemFeaturesRequest) -> pb::BatchGetItemFeaturesResponse;
    get_popular_items(pb::GetPopularItemsRequest) -> pb::GetPopularItemsResponse;
    put_user_features(pb::PutUserFeaturesRequest) -> pb::PutUserFeaturesResponse;
    put_item_features(pb::PutItemFeaturesRequest) -> pb::PutItemFeaturesResponse;
    put_recall_pools(pb::PutRecallPoolsRequest) -> pb::PutRecallPoolsResponse;
    put_popular_items(pb::PutPopularItemsRequest) -> pb::PutPopularItemsResponse;
    append_events(pb::AppendEventsRequest) -> pb::AppendEventsResponse;
    append_events_batch(pb::AppendEventsBatchRequest) -> pb::AppendEventsBatchResponse;
    list_versions(pb::ListVersionsRequest) -> pb::ListVersionsResponse;
    activate_version(pb::ActivateVersionRequest) -> pb::ActivateVersionResponse;
}}

/// The service called in process (`reco_client::Feature`): the same checks and store reads as its RPCs, on domain
/// values, with nothing encoded.
#[async_trait]
impl reco_client::Feature for FeatureApi {
    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "feature",
            rpc = "/reco.feature.v1.FeatureService/GetUserContext"
        )
    )]
    async fn user_context(
        &self,
        q: UserContextQuery,
        _budget: Duration,
    ) -> reco_client::Result<UserContext> {
        let UserContextQuery {
            user_id,
            version,
            max_events,
            max_pool,
        } = q;
        Ok(self
            .context(&user_id, version.as_ref(), max_events, max_pool)
            .await?)
    }

    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "feature",
            rpc = "/reco.feature.v1.FeatureService/BatchGetItemFeatures"
        )
    )]
    async fn items(&self, q: ItemsQuery, _budget: Duration) -> reco_client::Result<Vec<Item>> {
        let ItemsQuery {
            item_ids,
            version,
            include_embeddings,
        } = q;
        check_batch("item_ids", item_ids.len()).map_err(Error::from)?;
        Ok(self
            .store
            .items(version.as_ref(), &item_ids, include_embeddings)
            .await
            .map_err(Error::from)?)
    }

    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "feature",
            rpc = "/reco.feature.v1.FeatureService/GetPopularItems"
        )
    )]
    async fn popular(&self, q: PopularQuery, _budget: Duration) -> reco_client::Result<Vec<Hit>> {
        let PopularQuery {
            k,
            category,
            version,
        } = q;
        let items = self.popular(k, category.as_ref(), version.as_ref()).await?;
        Ok(items
            .into_iter()
            .map(|c| Hit {
                item_id: c.item_id,
                score: c.score,
            })
            .collect())
    }

    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "feature",
            rpc = "/reco.feature.v1.FeatureService/AppendEventsBatch"
        )
    )]
    async fn append_events(
        &self,
        appends: Vec<EventAppend>,
        _budget: Duration,
    ) -> reco_client::Result<()> {
        let total: usize = appends.iter().map(|a| a.events.len()).sum();
        if appends.len() > MAX_BATCH || total > MAX_BATCH_EVENTS {
            return Err(tonic::Status::invalid_argument(format!(
                "appends: {} users and {total} events, the limits are {MAX_BATCH} and {MAX_BATCH_EVENTS}",
                appends.len()
            )));
        }
        self.append_batch(appends).await?;
        Ok(())
    }

    async fn ready(&self) -> Readiness {
        self.store.ping().await.map_err(|e| e.to_string())
    }
}
