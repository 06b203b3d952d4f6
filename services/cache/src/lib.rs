//! The cache service: short-lived per-user state over gRPC.
//!
//! ```text
//!   gateway ──Get/PutRecommendations, CheckRateLimit, FilterCapped, RecordImpressions──▶ CacheApi
//!   events  ──PushEvent──▶ CacheApi ──▶ dyn CacheStore (memory | ...)
//! ```

mod api;
mod error;

use std::{net::SocketAddr, sync::Arc};

use reco_cache_store::{CacheStore, MemoryCacheStore};
use reco_proto::cache::v1::cache_service_server::CacheServiceServer;
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;

pub use api::CacheApi;
pub use error::Error;

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50053;

/// Which store backs the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// In-process maps (embedded default).
    Memory,
}

/// Flags of the cache service; each also reads `RECO_*` from the environment.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "reco-cache", about = "The reco cache service", version)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Store backend.
    #[arg(long = "backend", env = "RECO_CACHE_BACKEND", value_enum, default_value_t = Backend::Memory)]
    pub backend: Backend,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-cache"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))
    }
}

/// Opens the configured store.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn CacheStore>> {
    Ok(match config.backend {
        Backend::Memory => Arc::new(MemoryCacheStore::new()),
    })
}

/// The service over a given store, ready to serve.
pub fn server(config: &Config, store: Arc<dyn CacheStore>) -> GrpcServer {
    let probe = store.clone();
    GrpcServer::new("cache", config.server.clone())
        .add_service(CacheServiceServer::new(CacheApi::new(store)))
        .readiness(move || {
            let store = probe.clone();
            async move { store.ping().await.map_err(|e| e.to_string()) }
        })
}

/// Opens the configured store and builds the server.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open_store(config)?))
}
