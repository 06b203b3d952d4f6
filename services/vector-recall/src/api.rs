//! The gRPC edge: validates requests into domain types, resolves the query vector, searches.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use reco_client::{Hit, Readiness, SearchQuery, VectorQuery};

use reco_proto::{
    conversions::each,
    feature::v1::{GetUserContextRequest, feature_service_client::FeatureServiceClient},
    vector_recall::v1::{self as pb, search_request::Query, vector_recall_server::VectorRecall},
};
use reco_server::TracedChannel;
use reco_types::{
    Embedding, ItemFilter, ItemId, MAX_CANDIDATES, Name, UserId, ValidationError, check_batch,
    count,
};
use reco_vector_index::{IndexedItem, MAX_K, VersionedIndex};

use crate::Error;

/// Recent items averaged into a query vector for a user without an embedding.
const RECENT_ITEMS_FOR_QUERY: u32 = 20;

/// The VectorRecall implementation over any index.
pub struct VectorApi {
    index: Arc<VersionedIndex>,
    features: Option<FeatureServiceClient<TracedChannel>>,
    /// Told when a new version serves, so it is saved at once.
    saver: Option<Arc<tokio::sync::Notify>>,
}

/// Reads an index version from a write request: empty means the serving index.
fn version(s: &str) -> Result<Option<&str>, ValidationError> {
    if s.is_empty() {
        return Ok(None);
    }
    Name::parse("index_version", s)?;
    Ok(Some(s))
}

impl VectorApi {
    pub fn new(
        index: Arc<VersionedIndex>,
        features: Option<FeatureServiceClient<TracedChannel>>,
    ) -> Self {
        Self {
            index,
            features,
            saver: None,
        }
    }

    /// Notifies `saver` whenever a version is activated.
    pub fn with_saver(mut self, saver: Arc<tokio::sync::Notify>) -> Self {
        self.saver = Some(saver);
        self
    }

    /// The mean of the items' vectors; None when none of them has one.
    async fn mean_of(&self, item_ids: &[ItemId]) -> Result<Option<Embedding>, Error> {
        let vectors = self.index.serving().1.vectors(item_ids).await?;
        Ok(Embedding::mean(&vectors))
    }

    /// A user's query vector: their embedding from the feature service, or the mean of their recent items'.
    async fn user_vector(&self, user_id: UserId) -> Result<Option<Embedding>, Error> {
        let mut client = self.features.clone().ok_or(Error::NoFeatureService)?;
        let ctx = client
            .get_user_context(GetUserContextRequest {
                user_id: user_id.into(),
                feature_version: String::new(),
                max_events: RECENT_ITEMS_FOR_QUERY,
                max_pool: 1,
            })
            .await
            .map_err(Error::Features)?
            .into_inner();
        if !ctx.embedding.is_empty() {
            // The stored embedding was validated when written; a bad one is the store's fault.
            let e = Embedding::parse("embedding", ctx.embedding)
                .map_err(|e| Error::Features(tonic::Status::data_loss(e.to_string())))?;
            return Ok(Some(e));
        }
        let recent: Vec<ItemId> = ctx
            .recent_events
            .into_iter()
            .filter_map(|e| ItemId::parse("item_id", &e.item_id).ok())
            .collect();
        self.mean_of(&recent).await
    }

    async fn search(&self, r: pb::SearchRequest) -> Result<pb::SearchResponse, Error> {
        let pb::SearchRequest { query, k, filter } = r;
        let k = count("k", k, 100, 1, MAX_K as u32)?;
        let filter = filter
            .map(ItemFilter::try_from)
            .transpose()
            .map_err(|e| e.within("filter"))?
            .unwrap_or_default();
        let query = query.ok_or_else(|| {
            ValidationError::new("query", "set one of vector, user_id or item_ids")
        })?;
        let vector = match query {
            Query::Vector(v) => Some(Embedding::parse("vector.values", v.values)?),
            Query::ItemIds(pb::ItemIds { item_ids }) => {
                check_batch("item_ids.item_ids", item_ids.len())?;
                let ids = each("item_ids.item_ids", item_ids, |s| ItemId::parse("", s))?;
                self.mean_of(&ids).await?
            }
            Query::UserId(user_id) => {
                self.user_vector(UserId::parse("user_id", &user_id)?)
                    .await?
            }
        };
        let (index_version, hits) = self.nearest(vector, k, &filter).await?;
        Ok(pb::SearchResponse {
            hits: hits
                .into_iter()
                .map(|h| pb::Hit {
                    item_id: h.item_id.into(),
                    score: h.score,
                })
                .collect(),
            index_version,
        })
    }

    /// The `k` items nearest `vector` that pass `filter`, from the serving index, and its version; none when there
    /// is nothing to search with.
    async fn nearest(
        &self,
        vector: Option<Embedding>,
        k: u32,
        filter: &ItemFilter,
    ) -> Result<(String, Vec<reco_vector_index::Hit>), Error> {
        let k = count("k", k, 100, 1, MAX_K as u32)?;
        if filter.exclude_item_ids.len() > MAX_CANDIDATES {
            return Err(ValidationError::new(
                "filter.exclude_item_ids",
                format!(
                    "has {} entries, the limit is {MAX_CANDIDATES}",
                    filter.exclude_item_ids.len()
                ),
            )
            .into());
        }
        let (version, index) = self.index.serving();
        let hits = match vector {
            Some(q) => index.search(&q, k as usize, filter).await?,
            None => Vec::new(),
        };
        Ok((version, hits))
    }

    async fn upsert(&self, r: pb::UpsertRequest) -> Result<pb::UpsertResponse, Error> {
        check_batch("items", r.items.len())?;
        let index = self.index.for_write(version(&r.index_version)?).await?;
        let dimension = index.dimension();
        let items = each("items", r.items, |i| {
            let pb::ItemVector {
                item_id,
                vector,
                categories,
            } = i;
            let vector = Embedding::parse("vector", vector)?;
            vector.expect_dimension("vector", dimension)?;
            Ok(IndexedItem {
                item_id: ItemId::parse("item_id", &item_id)?,
                vector,
                categories: each("categories", categories, |c| Name::parse("", c))?,
            })
        })?;
        let upserted = index.upsert(items).await?;
        Ok(pb::UpsertResponse {
            upserted: upserted as u32,
        })
    }

    async fn delete(&self, r: pb::DeleteRequest) -> Result<pb::DeleteResponse, Error> {
        check_batch("item_ids", r.item_ids.len())?;
        let ids = each("item_ids", r.item_ids, |s| ItemId::parse("", s))?;
        let deleted = self
            .index
            .for_write(version(&r.index_version)?)
            .await?
            .delete(&ids)
            .await?;
        Ok(pb::DeleteResponse {
            deleted: deleted as u32,
        })
    }

    async fn activate_index(
        &self,
        r: pb::ActivateIndexRequest,
    ) -> Result<pb::ActivateIndexResponse, Error> {
        let v = Name::parse("index_version", &r.index_version)?;
        let previous_version = self.index.activate(v.as_str()).await?;
        tracing::info!(version = %v, previous = %previous_version, "vector index version activated");
        if let Some(saver) = &self.saver {
            saver.notify_one();
        }
        Ok(pb::ActivateIndexResponse { previous_version })
    }

    async fn stats(&self, _r: pb::StatsRequest) -> Result<pb::StatsResponse, Error> {
        let (version, index) = self.index.serving();
        let s = index.stats().await?;
        Ok(pb::StatsResponse {
            count: s.count,
            dimension: s.dimension as u32,
            metric: s.metric.as_str().to_string(),
            backend: index.backend().to_string(),
            index_version: version,
        })
    }
}

reco_server::delegate_rpcs! { VectorRecall => VectorApi {
    search(pb::SearchRequest) -> pb::SearchResponse;
    upsert(pb::UpsertRequest) -> pb::UpsertResponse;
    delete(pb::DeleteRequest) -> pb::DeleteResponse;
    activate_index(pb::ActivateIndexRequest) -> pb::ActivateIndexResponse;
    stats(pb::StatsRequest) -> pb::StatsResponse;
}}

/// The service called in process (`reco_client::VectorRecall`): the same checks and index search as Search, on
/// domain values, with nothing encoded.
#[async_trait]
impl reco_client::VectorRecall for VectorApi {
    #[tracing::instrument(
        name = "in_process",
        skip_all,
        fields(
            service = "vector-recall",
            rpc = "/reco.vector_recall.v1.VectorRecall/Search"
        )
    )]
    async fn search(&self, q: SearchQuery, _budget: Duration) -> reco_client::Result<Vec<Hit>> {
        let SearchQuery { query, k, filter } = q;
        let vector = match query {
            VectorQuery::Vector(v) => Some(v),
            VectorQuery::Items(ids) => {
                check_batch("item_ids.item_ids", ids.len()).map_err(Error::from)?;
                self.mean_of(&ids).await?
            }
        };
        let (_, hits) = self.nearest(vector, k, &filter).await?;
        Ok(hits
            .into_iter()
            .map(|h| Hit {
                item_id: h.item_id,
                score: h.score,
            })
            .collect())
    }

    async fn ready(&self) -> Readiness {
        let (_, index) = self.index.serving();
        index.stats().await.map(|_| ()).map_err(|e| e.to_string())
    }
}
