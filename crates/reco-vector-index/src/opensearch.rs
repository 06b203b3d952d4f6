//! The OpenSearch k-NN backend (Amazon OpenSearch Service in production), on the `opensearch` crate.
//!
//! ```text
//!   alias  reco-items ──▶ reco-items-v1        (serving)
//!                         reco-items-v2        (a load writes here; activation swaps the alias in one call)
//!   doc    _id = item id, { item_id, categories: [keyword], embedding: knn_vector(dimension, hnsw) }
//! ```
//!
//! Searches send the `knn` query with k and a filter (categories in/out, ids out) inside it, so OpenSearch
//! filters while it searches and still returns k hits. Writes go through `_bulk`. With a region configured,
//! every request is signed with AWS SigV4 (service `es`, or `aoss` for OpenSearch Serverless).

use std::time::Duration;

use async_trait::async_trait;
use opensearch::{
    BulkParts, CountParts, MgetParts, OpenSearch, SearchParts,
    auth::Credentials,
    http::{
        request::JsonBody,
        transport::{SingleNodeConnectionPool, TransportBuilder},
    },
    indices::{IndicesCreateParts, IndicesExistsParts, IndicesGetAliasParts, IndicesRefreshParts},
};
use reco_types::{Embedding, ItemFilter, ItemId};
use serde_json::{Value, json};

use crate::{
    Hit, HnswParams, IndexStats, IndexedItem, Metric, Result, VectorIndex, VectorIndexError,
};

/// The k-NN engine OpenSearch builds the graph with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Faiss,
    Lucene,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Faiss => "faiss",
            Engine::Lucene => "lucene",
        }
    }
}

/// Where and how the index lives.
#[derive(Clone, Debug)]
pub struct OpenSearchConfig {
    /// `https://search-domain.region.es.amazonaws.com` or a local `http://127.0.0.1:9200`.
    pub url: String,
    /// The alias searches go through; each version is the index `ALIAS-VERSION`.
    pub alias: String,
    pub dimension: usize,
    pub metric: Metric,
    pub engine: Engine,
    pub params: HnswParams,
    /// Sign requests with SigV4 for this region (Amazon OpenSearch Service); None sends them unsigned.
    pub aws: Option<reco_aws::AwsSettings>,
    /// `es` for a domain, `aoss` for OpenSearch Serverless.
    pub service: String,
    pub timeout: Duration,
}

fn backend(what: &str, e: impl std::fmt::Display) -> VectorIndexError {
    VectorIndexError::Backend(format!("opensearch {what}: {e}"))
}

/// A connected client and the settings every version shares.
#[derive(Clone)]
pub struct OpenSearchCluster {
    client: OpenSearch,
    config: OpenSearchConfig,
}

impl OpenSearchCluster {
    pub async fn connect(config: OpenSearchConfig) -> Result<Self> {
        // reqwest runs rustls without a provider of its own: use ring, as every other TLS client here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = config.url.parse().map_err(|e| backend("url", e))?;
        let mut transport =
            TransportBuilder::new(SingleNodeConnectionPool::new(url)).timeout(config.timeout);
        if let Some(aws) = &config.aws {
            let sdk = aws.sdk_config().await;
            let credentials = Credentials::try_from(&sdk).map_err(|e| backend("credentials", e))?;
            transport = transport.auth(credentials).service_name(&config.service);
        }
        let client = OpenSearch::new(transport.build().map_err(|e| backend("client", e))?);
        Ok(Self { client, config })
    }

    /// The concrete index of a version.
    pub fn index_name(&self, version: &str) -> String {
        format!("{}-{}", self.config.alias, version.to_ascii_lowercase())
    }

    /// The index's settings and mapping, as OpenSearch's k-NN documentation gives them.
    pub fn mapping(&self) -> Value {
        let c = &self.config;
        json!({
            "settings": {"index": {"knn": true, "knn.algo_param.ef_search": c.params.ef_search}},
            "mappings": {"properties": {
                "item_id": {"type": "keyword"},
                "categories": {"type": "keyword"},
                "embedding": {
                    "type": "knn_vector",
                    "dimension": c.dimension,
                    "method": {
                        "name": "hnsw",
                        "space_type": space(c.metric),
                        "engine": c.engine.as_str(),
                        "parameters": {"m": c.params.m, "ef_construction": c.params.ef_construction}
                    }
                }
            }}
        })
    }

    /// The index of `version`, created with the mapping when it does not exist.
    pub async fn version(&self, version: &str) -> Result<OpenSearchIndex> {
        let index = self.lazy_version(version);
        index.ensure().await?;
        Ok(index)
    }

    /// Creates index `name` with the mapping unless it exists.
    async fn create(&self, name: &str) -> Result<()> {
        let exists = self
            .client
            .indices()
            .exists(IndicesExistsParts::Index(&[name]))
            .send()
            .await
            .map_err(|e| backend("exists", e))?;
        if !exists.status_code().is_success() {
            let r = self
                .client
                .indices()
                .create(IndicesCreateParts::Index(name))
                .body(self.mapping())
                .send()
                .await
                .map_err(|e| backend("create index", e))?;
            ok(r, "create index").await?;
        }
        Ok(())
    }

    /// The index of `version` without a call: created with the mapping on its first write (a staging index).
    pub fn lazy_version(&self, version: &str) -> OpenSearchIndex {
        OpenSearchIndex {
            cluster: self.clone(),
            name: self.index_name(version),
            created: tokio::sync::OnceCell::new(),
        }
    }

    /// The version the alias points at, if any.
    pub async fn serving_version(&self) -> Result<Option<String>> {
        let r = self
            .client
            .indices()
            .get_alias(IndicesGetAliasParts::Name(&[&self.config.alias]))
            .send()
            .await
            .map_err(|e| backend("get alias", e))?;
        if r.status_code().as_u16() == 404 {
            return Ok(None);
        }
        let body = ok(r, "get alias").await?;
        let prefix = format!("{}-", self.config.alias);
        Ok(body.as_object().and_then(|m| {
            m.keys()
                .find_map(|k| k.strip_prefix(&prefix).map(str::to_string))
        }))
    }
}

/// OpenSearch's space for a metric.
fn space(metric: Metric) -> &'static str {
    match metric {
        Metric::Cosine => "cosinesimil",
        Metric::InnerProduct => "innerproduct",
    }
}

/// Our score from OpenSearch's: its k-NN documentation scores cosine as 1 + cos, and inner product as ip + 1 when
/// ip >= 0, else 1 / (1 - ip).
fn similarity(metric: Metric, score: f64) -> f32 {
    (match metric {
        Metric::Cosine => score - 1.0,
        Metric::InnerProduct if score >= 1.0 => score - 1.0,
        Metric::InnerProduct => 1.0 - 1.0 / score,
    }) as f32
}

/// The body of a successful answer; any other status is an error carrying OpenSearch's reason.
async fn ok(r: opensearch::http::response::Response, what: &str) -> Result<Value> {
    let status = r.status_code();
    let body: Value = r.json().await.map_err(|e| backend(what, e))?;
    if !status.is_success() {
        let reason = body["error"]["reason"]
            .as_str()
            .map_or_else(|| body.to_string(), str::to_string);
        return Err(backend(what, format!("{status}: {reason}")));
    }
    Ok(body)
}

/// One version's index.
pub struct OpenSearchIndex {
    cluster: OpenSearchCluster,
    name: String,
    /// Set once the index is known to exist.
    created: tokio::sync::OnceCell<()>,
}

impl OpenSearchIndex {
    /// Creates the index with the mapping on first use.
    async fn ensure(&self) -> Result<()> {
        self.created
            .get_or_try_init(|| self.cluster.create(&self.name))
            .await
            .map(|_| ())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn client(&self) -> &OpenSearch {
        &self.cluster.client
    }

    fn check(&self, field: &str, v: &Embedding) -> Result<()> {
        crate::check_dimension(field, v, self.cluster.config.dimension)
    }

    async fn bulk(&self, lines: Vec<JsonBody<Value>>, what: &str) -> Result<Value> {
        let r = self
            .client()
            .bulk(BulkParts::Index(&self.name))
            .body(lines)
            .send()
            .await
            .map_err(|e| backend(what, e))?;
        let body = ok(r, what).await?;
        if body["errors"].as_bool() == Some(true) {
            let first = body["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i.as_object().and_then(|o| o.values().next()))
                .find(|i| i.get("error").is_some());
            return Err(backend(
                what,
                format!(
                    "an item was refused: {}",
                    first.map_or(Value::Null, |i| i["error"].clone())
                ),
            ));
        }
        Ok(body)
    }
}

/// The `knn` query's filter for an item filter, or None when it filters nothing.
pub fn knn_filter(filter: &ItemFilter) -> Option<Value> {
    let mut must = Vec::new();
    let mut must_not = Vec::new();
    if !filter.include_categories.is_empty() {
        must.push(json!({"terms": {"categories": filter.include_categories.iter().map(|c| c.as_str()).collect::<Vec<_>>()}}));
    }
    if !filter.exclude_categories.is_empty() {
        must_not.push(json!({"terms": {"categories": filter.exclude_categories.iter().map(|c| c.as_str()).collect::<Vec<_>>()}}));
    }
    if !filter.exclude_item_ids.is_empty() {
        must_not.push(json!({"ids": {"values": filter.exclude_item_ids.iter().map(|c| c.as_str()).collect::<Vec<_>>()}}));
    }
    if must.is_empty() && must_not.is_empty() {
        return None;
    }
    Some(json!({"bool": {"filter": must, "must_not": must_not}}))
}

#[async_trait]
impl VectorIndex for OpenSearchIndex {
    async fn search(&self, query: &Embedding, k: usize, filter: &ItemFilter) -> Result<Vec<Hit>> {
        self.check("vector", query)?;
        let mut knn = json!({"vector": query.as_slice(), "k": k});
        if let Some(f) = knn_filter(filter) {
            knn["filter"] = f;
        }
        let body = json!({"size": k, "_source": false, "query": {"knn": {"embedding": knn}}});
        let r = self
            .client()
            .search(SearchParts::Index(&[&self.name]))
            .body(body)
            .send()
            .await
            .map_err(|e| backend("search", e))?;
        let answer = ok(r, "search").await?;
        let metric = self.cluster.config.metric;
        answer["hits"]["hits"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|h| {
                let id = h["_id"]
                    .as_str()
                    .ok_or_else(|| backend("search", format!("a hit without _id: {h}")))?;
                let score = h["_score"]
                    .as_f64()
                    .ok_or_else(|| backend("search", format!("a hit without _score: {h}")))?;
                Ok(Hit {
                    item_id: ItemId::parse("_id", id).map_err(|e| backend("search", e))?,
                    score: similarity(metric, score),
                })
            })
            .collect()
    }

    async fn vectors(&self, items: &[ItemId]) -> Result<Vec<Embedding>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = items.iter().map(ItemId::as_str).collect();
        let r = self
            .client()
            .mget(MgetParts::Index(&self.name))
            .body(json!({"ids": ids}))
            ._source_includes(&["embedding"])
            .send()
            .await
            .map_err(|e| backend("mget", e))?;
        let answer = ok(r, "mget").await?;
        answer["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["found"].as_bool() == Some(true))
            .map(|d| {
                let v: Vec<f32> = serde_json::from_value(d["_source"]["embedding"].clone())
                    .map_err(|e| backend("mget", e))?;
                Embedding::parse("embedding", v).map_err(|e| backend("mget", e))
            })
            .collect()
    }

    async fn upsert(&self, items: Vec<IndexedItem>) -> Result<usize> {
        for (i, item) in items.iter().enumerate() {
            self.check(&format!("items[{i}].vector"), &item.vector)?;
        }
        if items.is_empty() {
            return Ok(0);
        }
        self.ensure().await?;
        let n = items.len();
        let mut lines = Vec::with_capacity(2 * n);
        for item in items {
            lines.push(JsonBody::new(
                json!({"index": {"_id": item.item_id.as_str()}}),
            ));
            lines.push(JsonBody::new(json!({
                "item_id": item.item_id.as_str(),
                "categories": item.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "embedding": item.vector.as_slice(),
            })));
        }
        self.bulk(lines, "bulk index").await?;
        Ok(n)
    }

    async fn delete(&self, items: &[ItemId]) -> Result<usize> {
        if items.is_empty() {
            return Ok(0);
        }
        self.ensure().await?;
        let lines = items
            .iter()
            .map(|id| JsonBody::new(json!({"delete": {"_id": id.as_str()}})))
            .collect();
        let body = self.bulk(lines, "bulk delete").await?;
        Ok(body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["delete"]["result"].as_str() == Some("deleted"))
            .count())
    }

    async fn stats(&self) -> Result<IndexStats> {
        let r = self
            .client()
            .count(CountParts::Index(&[&self.name]))
            .send()
            .await
            .map_err(|e| backend("count", e))?;
        let answer = ok(r, "count").await?;
        Ok(IndexStats {
            count: answer["count"].as_u64().unwrap_or(0),
            dimension: self.cluster.config.dimension,
            metric: self.cluster.config.metric,
            version: self.name.clone(),
        })
    }

    fn dimension(&self) -> usize {
        self.cluster.config.dimension
    }

    fn backend(&self) -> &'static str {
        "opensearch"
    }

    /// Activation: refresh the index (so everything loaded is searchable), then point the alias at it and away
    /// from every other index in one `_aliases` call, which OpenSearch applies atomically.
    async fn promote(&self) -> Result<()> {
        self.ensure().await?;
        let r = self
            .client()
            .indices()
            .refresh(IndicesRefreshParts::Index(&[&self.name]))
            .send()
            .await
            .map_err(|e| backend("refresh", e))?;
        ok(r, "refresh").await?;
        let alias = &self.cluster.config.alias;
        let r = self
            .client()
            .indices()
            .get_alias(IndicesGetAliasParts::Name(&[alias]))
            .send()
            .await
            .map_err(|e| backend("get alias", e))?;
        let current: Vec<String> = if r.status_code().as_u16() == 404 {
            Vec::new()
        } else {
            ok(r, "get alias")
                .await?
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        let mut actions: Vec<Value> = current
            .iter()
            .filter(|i| **i != self.name)
            .map(|i| json!({"remove": {"index": i, "alias": alias}}))
            .collect();
        actions.push(json!({"add": {"index": self.name, "alias": alias}}));
        let r = self
            .client()
            .indices()
            .update_aliases()
            .body(json!({"actions": actions}))
            .send()
            .await
            .map_err(|e| backend("swap alias", e))?;
        ok(r, "swap alias").await?;
        Ok(())
    }
}
