//! The feature service: what the platform knows about users and items, served over gRPC.
//!
//! ```text
//!   gateway ──GetUserContext──▶ FeatureApi ──▶ dyn FeatureStore (memory | ...)
//!           ──BatchGetItemFeatures──▶
//!   sync / events ──Put* / AppendEvents──▶
//! ```

mod api;
mod error;

use std::{net::SocketAddr, sync::Arc};

use reco_feature_store::{
    CachedFeatureStore, DEFAULT_MAX_EVENTS, FeatureStore, MemoryFeatureStore, RedbFeatureStore,
};
use reco_proto::feature::v1::feature_service_server::FeatureServiceServer;
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;

pub use api::FeatureApi;
pub use error::Error;

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50052;

/// Which store backs the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A durable file under `--data-dir` (redb; embedded default).
    Redb,
    /// In-process maps, lost on exit (tests, throwaway runs).
    Memory,
}

/// Flags of the feature service; each also reads `RECO_*` from the environment.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "reco-feature", about = "The reco feature service", version)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Store backend.
    #[arg(long = "backend", env = "RECO_FEATURE_BACKEND", value_enum, default_value_t = Backend::Redb)]
    pub backend: Backend,
    /// Where the redb backend keeps its file (`features.redb`).
    #[arg(long, env = "RECO_DATA_DIR", default_value = "data")]
    pub data_dir: std::path::PathBuf,
    /// Keep hot user contexts and items in memory this long, in ms, coalescing concurrent reads of one key into
    /// one backend read (0 = off). Writes through this service invalidate at once; other writers' show within it.
    #[arg(long, env = "RECO_FEATURE_CACHE_TTL_MS", default_value_t = 0)]
    pub cache_ttl_ms: u64,
    /// Most users (and as many items) the hot-key cache holds.
    #[arg(long, env = "RECO_FEATURE_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// Events kept per user in the real-time sequence.
    #[arg(long, env = "RECO_FEATURE_MAX_EVENTS", default_value_t = DEFAULT_MAX_EVENTS, value_parser = parse_max_events)]
    pub max_events: usize,
}

fn parse_max_events(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if (1..=10_000).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be between 1 and 10000, got {n}"))
    }
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-feature"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }
}

/// Opens the configured store, behind the hot-key cache when it is on.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn FeatureStore>> {
    let store: Arc<dyn FeatureStore> = match config.backend {
        Backend::Memory => Arc::new(MemoryFeatureStore::new()),
        Backend::Redb => Arc::new(RedbFeatureStore::open(
            &config.data_dir.join("features.redb"),
        )?),
    };
    Ok(if config.cache_ttl_ms > 0 {
        let ttl = std::time::Duration::from_millis(config.cache_ttl_ms);
        Arc::new(CachedFeatureStore::new(store, ttl, config.cache_capacity))
    } else {
        store
    })
}

/// The service over a given store, ready to serve.
pub fn server(config: &Config, store: Arc<dyn FeatureStore>) -> GrpcServer {
    let probe = store.clone();
    GrpcServer::new("feature", config.server.clone())
        .add_service(FeatureServiceServer::new(FeatureApi::new(
            store,
            config.max_events,
        )))
        .readiness(move || {
            let store = probe.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        })
}

/// Opens the configured store and builds the server.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open_store(config)?))
}
