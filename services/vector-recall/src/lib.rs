//! The vector-recall service: the items nearest to a vector, to a user's embedding, or to a set of items.
//!
//! ```text
//!   Search{vector}   ─────────────────────────────▶ serving version of a VersionedIndex (hnsw | exact)
//!   Search{user_id}  ─▶ feature service: embedding ─┘   (or the mean of the user's recent items' vectors)
//!   Search{item_ids} ─▶ mean of those items' vectors ┘
//! ```

mod api;
mod error;

use std::net::SocketAddr;
use std::{path::PathBuf, sync::Arc, time::Duration};

use reco_proto::{
    feature::v1::feature_service_client::FeatureServiceClient,
    vector_recall::v1::vector_recall_server::VectorRecallServer,
};
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;
use reco_vector_index::{
    Engine, ExactIndex, HnswIndex, HnswParams, INITIAL_VERSION, Metric, OpenSearchCluster,
    OpenSearchConfig, Precision, VectorIndex, VersionedIndex,
};

pub use api::VectorApi;
pub use error::Error;

/// The full name of this service's API.
pub const API: &str = "reco.vector_recall.v1.VectorRecall";

/// The RPCs that change data: with `--auth-tokens-file`, only callers with the write permission may call them.
pub const WRITE_RPCS: &[&str] = &["Upsert", "Delete", "ActivateIndex"];

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50054;

/// Which index backs the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// HNSW graph in process (usearch; embedded default), saved under `--data-dir`.
    Hnsw,
    /// Exact brute-force search in process (the ground truth; fine up to tens of thousands of items).
    Exact,
    /// OpenSearch k-NN (Amazon OpenSearch Service), `--opensearch-*`.
    Opensearch,
}

/// The k-NN engine of an OpenSearch index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineArg {
    Faiss,
    Lucene,
}

reco_aws::aws_args!(
    /// Signing for Amazon OpenSearch Service: with a region, every request is SigV4-signed.
    OpenSearchAwsArgs,
    "opensearch",
    "OPENSEARCH"
);

/// Flags of the OpenSearch backend.
#[derive(Clone, Debug, clap::Args)]
pub struct OpenSearchArgs {
    /// The domain endpoint (https://search-NAME-ID.REGION.es.amazonaws.com, or http://127.0.0.1:9200).
    #[arg(
        long = "opensearch-url",
        env = "RECO_OPENSEARCH_URL",
        default_value = "http://127.0.0.1:9200"
    )]
    pub url: String,
    /// The alias searches go through; version V of the index is ALIAS-V, and activation moves the alias.
    #[arg(
        long = "opensearch-alias",
        env = "RECO_OPENSEARCH_ALIAS",
        default_value = "reco-items"
    )]
    pub alias: String,
    /// The k-NN engine.
    #[arg(long = "opensearch-engine", env = "RECO_OPENSEARCH_ENGINE", value_enum, default_value_t = EngineArg::Faiss)]
    pub engine: EngineArg,
    /// SigV4 service name: es for a domain, aoss for OpenSearch Serverless.
    #[arg(
        long = "opensearch-service",
        env = "RECO_OPENSEARCH_SERVICE",
        default_value = "es"
    )]
    pub service: String,
    /// Sign requests with SigV4 (needs a region: --opensearch-region or the SDK's chain).
    #[arg(long = "opensearch-sigv4", env = "RECO_OPENSEARCH_SIGV4")]
    pub sigv4: bool,
    #[command(flatten)]
    pub aws: OpenSearchAwsArgs,
}

/// Flags of the vector-recall service; each also reads `RECO_*` from the environment.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "reco-vector-recall",
    about = "The reco vector-recall service",
    version
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Index backend.
    #[arg(long = "backend", env = "RECO_VECTOR_BACKEND", value_enum, default_value_t = Backend::Hnsw)]
    pub backend: Backend,
    /// Where the HNSW index is saved (`index.usearch` and `index.meta.json`) and loaded from at start. Without
    /// it the index lives in memory only.
    #[arg(long = "data-dir", env = "RECO_VECTOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HNSW links per node.
    #[arg(long = "hnsw-m", env = "RECO_HNSW_M", default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=256))]
    pub hnsw_m: u32,
    /// HNSW candidates kept while inserting.
    #[arg(long = "hnsw-ef-construction", env = "RECO_HNSW_EF_CONSTRUCTION", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub hnsw_ef_construction: u32,
    /// HNSW candidates kept while searching (k when k is larger): recall against speed.
    #[arg(long = "hnsw-ef-search", env = "RECO_HNSW_EF_SEARCH", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub hnsw_ef_search: u32,
    /// How often the serving index is saved when it changed, and checked for a rebuild, in ms.
    #[arg(
        long = "maintenance-interval-ms",
        env = "RECO_VECTOR_MAINTENANCE_INTERVAL_MS",
        default_value_t = 30_000
    )]
    pub maintenance_interval_ms: u64,
    /// Rebuild the serving HNSW graph in the background once this share of it is removed or replaced items.
    #[arg(
        long = "rebuild-garbage",
        env = "RECO_VECTOR_REBUILD_GARBAGE",
        default_value_t = 0.2
    )]
    pub rebuild_garbage: f64,
    /// How the HNSW graph stores vectors: bf16 (half the memory, the fastest at equal recall), f16 (half the
    /// memory; components within ±65,504), f32, or i8 (a quarter of the memory, lower recall; cosine only).
    #[arg(long = "hnsw-precision", env = "RECO_HNSW_PRECISION", value_enum, default_value_t = PrecisionArg::Bf16)]
    pub hnsw_precision: PrecisionArg,
    /// With a precision below f32, keep an f32 copy of each vector too and re-score the search's candidates with
    /// it, so answers come in exact order with exact scores; costs 4 bytes a component more memory and a read per
    /// candidate, and on our data leaves recall where it was.
    #[arg(long = "hnsw-rescore", env = "RECO_HNSW_RESCORE", default_value_t = false, action = clap::ArgAction::Set)]
    pub hnsw_rescore: bool,
    #[command(flatten)]
    pub opensearch: OpenSearchArgs,
    /// Dimension of every vector in the index.
    #[arg(long, env = "RECO_VECTOR_DIMENSION", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub dimension: u32,
    /// Similarity: cosine or inner_product.
    #[arg(long, env = "RECO_VECTOR_METRIC", default_value = "cosine")]
    pub metric: Metric,
    /// The feature service, for searches by user id (`host:port`). Without it such searches are refused.
    #[arg(long, env = "RECO_FEATURE_ADDR")]
    pub feature_addr: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-vector-recall"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }
}

impl Config {
    fn params(&self) -> HnswParams {
        HnswParams {
            m: self.hnsw_m as usize,
            ef_construction: self.hnsw_ef_construction as usize,
            ef_search: self.hnsw_ef_search as usize,
            precision: match self.hnsw_precision {
                PrecisionArg::F32 => Precision::F32,
                PrecisionArg::F16 => Precision::F16,
                PrecisionArg::Bf16 => Precision::BF16,
                PrecisionArg::I8 => Precision::I8,
            },
            rescore: self.hnsw_rescore,
        }
    }
}

/// How the HNSW graph stores vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    F32,
    F16,
    Bf16,
    I8,
}

/// Opens the configured index: the one saved under `--data-dir` when there is one, else an empty first version;
/// on OpenSearch, the version the alias points at (or a new first one, aliased).
pub async fn open_index(config: &Config) -> anyhow::Result<Arc<VersionedIndex>> {
    let (dimension, metric, params) = (config.dimension as usize, config.metric, config.params());
    Ok(Arc::new(match config.backend {
        Backend::Exact => {
            VersionedIndex::new(move |_| Ok(Arc::new(ExactIndex::new(dimension, metric))))?
        }
        Backend::Opensearch => {
            let o = &config.opensearch;
            let cluster = OpenSearchCluster::connect(OpenSearchConfig {
                url: o.url.clone(),
                alias: o.alias.clone(),
                dimension,
                metric,
                engine: match o.engine {
                    EngineArg::Faiss => Engine::Faiss,
                    EngineArg::Lucene => Engine::Lucene,
                },
                params,
                aws: o.sigv4.then(|| (&o.aws).into()),
                service: o.service.clone(),
                timeout: Duration::from_millis(o.aws.operation_timeout_ms),
            })
            .await?;
            let (version, serving) = match cluster.serving_version().await? {
                Some(v) => (v.clone(), cluster.version(&v).await?),
                None => {
                    let first = cluster.version(INITIAL_VERSION).await?;
                    first.promote().await?;
                    (INITIAL_VERSION.to_string(), first)
                }
            };
            VersionedIndex::serving_from(&version, Arc::new(serving), move |v| {
                Ok(Arc::new(cluster.lazy_version(v)))
            })?
        }
        Backend::Hnsw => {
            let make = move |_: &str| -> reco_vector_index::Result<Arc<dyn VectorIndex>> {
                Ok(Arc::new(HnswIndex::new(dimension, metric, params)?))
            };
            let saved = match &config.data_dir {
                Some(dir) => HnswIndex::load(dir, dimension, metric)?,
                None => None,
            };
            match saved {
                Some(index) => {
                    tracing::info!(dir = ?config.data_dir, "vector index loaded");
                    VersionedIndex::serving_from(INITIAL_VERSION, Arc::new(index), make)?
                }
                None => VersionedIndex::new(make)?,
            }
        }
    }))
}

/// Keeps the serving index saved under `dir` (at once when `activated` is notified, else every `every` when it
/// changed) and rebuilds it in the background once `garbage` of it is dead. Runs until the process ends.
pub async fn maintain(
    index: Arc<VersionedIndex>,
    dir: Option<PathBuf>,
    activated: Arc<tokio::sync::Notify>,
    every: Duration,
    garbage: f64,
) {
    let mut saved: Option<(usize, String)> = None;
    loop {
        tokio::select! {
            _ = activated.notified() => {}
            _ = tokio::time::sleep(every) => {}
        }
        let (_, serving) = index.serving();
        if serving.garbage() > garbage {
            match index.rebuild_serving().await {
                Ok(true) => tracing::info!("vector index rebuilt and swapped"),
                Ok(false) => tracing::debug!("vector index rebuild deferred: it changed meanwhile"),
                Err(e) => tracing::warn!(error = %e, "vector index rebuild failed"),
            }
        }
        let Some(dir) = &dir else { continue };
        let (_, serving) = index.serving();
        let Ok(stats) = serving.stats().await else {
            continue;
        };
        let stamp = (Arc::as_ptr(&serving) as *const () as usize, stats.version);
        if saved.as_ref() == Some(&stamp) {
            continue;
        }
        let dir = dir.clone();
        match tokio::task::spawn_blocking(move || serving.save(&dir)).await {
            Ok(Ok(_)) => saved = Some(stamp),
            Ok(Err(e)) => tracing::warn!(error = %e, "vector index not saved"),
            Err(e) => tracing::warn!(error = %e, "vector index save task failed"),
        }
    }
}

/// The service's implementation over a given index (and its maintenance task, started here): what its gRPC
/// server serves, and what a gateway in the same process calls directly.
pub fn api(config: &Config, index: Arc<VersionedIndex>) -> anyhow::Result<Arc<VectorApi>> {
    let tls = config.server.tls.client()?;
    let features = config
        .feature_addr
        .as_deref()
        .map(|a| reco_server::channel_tls(a, tls.as_ref()).map(FeatureServiceClient::new))
        .transpose()?;
    let activated = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(maintain(
        index.clone(),
        config.data_dir.clone(),
        activated.clone(),
        Duration::from_millis(config.maintenance_interval_ms.max(100)),
        config.rebuild_garbage,
    ));
    Ok(Arc::new(
        VectorApi::new(index, features).with_saver(activated),
    ))
}

/// Opens the configured index and makes the service's implementation over it.
pub async fn open(config: &Config) -> anyhow::Result<Arc<VectorApi>> {
    api(config, open_index(config).await?)
}

/// The gRPC server of an implementation, ready to serve once its index answers.
pub fn server(config: &Config, api: Arc<VectorApi>) -> GrpcServer {
    let probe = api.clone();
    GrpcServer::new("vector-recall", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(VectorRecallServer::from_arc(api))
        .readiness(move || {
            let api = probe.clone();
            async move { reco_client::VectorRecall::ready(&*api).await }
        })
}

/// Opens the configured index and builds the server.
pub async fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open(config).await?))
}
