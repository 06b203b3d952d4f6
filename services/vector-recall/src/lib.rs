//! The vector-recall service: the items nearest to a vector, to a user's embedding, or to a set of items.
//!
//! ```text
//!   Search{vector}   ─────────────────────────────▶ serving version of a VersionedIndex (exact | ...)
//!   Search{user_id}  ─▶ feature service: embedding ─┘   (or the mean of the user's recent items' vectors)
//!   Search{item_ids} ─▶ mean of those items' vectors ┘
//! ```

mod api;
mod error;

use std::{net::SocketAddr, sync::Arc};

use reco_proto::{
    feature::v1::feature_service_client::FeatureServiceClient,
    vector_recall::v1::vector_recall_server::VectorRecallServer,
};
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;
use reco_vector_index::{ExactIndex, Metric, VersionedIndex};

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
    /// Exact brute-force search in process (embedded default).
    Exact,
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
    #[arg(long = "backend", env = "RECO_VECTOR_BACKEND", value_enum, default_value_t = Backend::Exact)]
    pub backend: Backend,
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

/// Opens the configured index, serving an empty first version.
pub fn open_index(config: &Config) -> anyhow::Result<Arc<VersionedIndex>> {
    let (dimension, metric) = (config.dimension as usize, config.metric);
    Ok(Arc::new(match config.backend {
        Backend::Exact => VersionedIndex::new(move || Arc::new(ExactIndex::new(dimension, metric))),
    }))
}

/// The service over a given index, ready to serve.
pub fn server(config: &Config, index: Arc<VersionedIndex>) -> anyhow::Result<GrpcServer> {
    let tls = config.server.tls.client()?;
    let features = config
        .feature_addr
        .as_deref()
        .map(|a| reco_server::channel_tls(a, tls.as_ref()).map(FeatureServiceClient::new))
        .transpose()?;
    let probe = index.clone();
    Ok(GrpcServer::new("vector-recall", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(VectorRecallServer::new(VectorApi::new(index, features)))
        .readiness(move || {
            let index = probe.clone();
            async move {
                index
                    .serving()
                    .1
                    .stats()
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }))
}

/// Opens the configured index and builds the server.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    server(config, open_index(config)?)
}
