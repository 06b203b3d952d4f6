//! The cache service: short-lived per-user state over gRPC.
//!
//! ```text
//!   gateway ──Get/PutRecommendations, CheckRateLimit, FilterCapped, RecordImpressions──▶ CacheApi
//!   events  ──PushEvent──▶ CacheApi ──▶ dyn CacheStore (memory | redis)
//! ```

mod api;
mod error;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use reco_cache_store::{CacheStore, MemoryCacheStore, RedisCacheStore, RedisConfig};
use reco_proto::cache::v1::cache_service_server::CacheServiceServer;
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;

pub use api::CacheApi;
pub use error::Error;

/// The full name of this service's API.
pub const API: &str = "reco.cache.v1.CacheService";

/// The RPCs that change data: with `--auth-tokens-file`, only callers with the write permission may call them.
pub const WRITE_RPCS: &[&str] = &[
    "PutRecommendations",
    "PutRecommendationsBatch",
    "Invalidate",
    "PushEvent",
    "PushEvents",
    "RecordImpressions",
    "PutSession",
    "DeleteSession",
];

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50053;

/// Which store backs the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// In-process maps (embedded default).
    Memory,
    /// Redis or ElastiCache (`--redis-url`).
    Redis,
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
    /// Redis URL: `redis://host:port`, `rediss://` for TLS (in-transit encryption), `redis-cluster://host:port`
    /// for cluster mode (`rediss-cluster://` for both); user and password may be given in the URL.
    #[arg(long, env = "RECO_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Treat the URL as a cluster even with a plain scheme (ElastiCache with cluster mode enabled).
    #[arg(long, env = "RECO_REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// Connections in the Redis pool.
    #[arg(long, env = "RECO_REDIS_POOL_SIZE", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub redis_pool_size: u32,
    /// Longest one Redis command may take before the call fails with DEADLINE_EXCEEDED, in ms.
    #[arg(long, env = "RECO_REDIS_TIMEOUT_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    pub redis_timeout_ms: u64,
    /// Longest a Redis connection attempt may take, in ms.
    #[arg(long, env = "RECO_REDIS_CONNECT_TIMEOUT_MS", default_value_t = 500)]
    pub redis_connect_timeout_ms: u64,
    /// Prefix of every Redis key, so deployments can share a server.
    #[arg(long, env = "RECO_REDIS_KEY_PREFIX", default_value = "reco")]
    pub redis_key_prefix: String,
    /// With a `rediss://` URL, trust only this CA (PEM) instead of the system roots.
    #[arg(long, env = "RECO_REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-cache"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }
}

/// Opens the configured store.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn CacheStore>> {
    Ok(match config.backend {
        Backend::Memory => Arc::new(MemoryCacheStore::new()),
        Backend::Redis => Arc::new(RedisCacheStore::connect(&RedisConfig {
            url: config.redis_url.clone(),
            cluster: config.redis_cluster,
            pool_size: config.redis_pool_size as usize,
            command_timeout: Duration::from_millis(config.redis_timeout_ms),
            connect_timeout: Duration::from_millis(config.redis_connect_timeout_ms),
            key_prefix: config.redis_key_prefix.clone(),
            tls_ca_file: config.redis_tls_ca_file.clone(),
        })?),
    })
}

/// Opens the configured store and makes the service's implementation over it: what its gRPC server serves, and
/// what a gateway in the same process calls directly.
pub fn open(config: &Config) -> anyhow::Result<Arc<CacheApi>> {
    Ok(Arc::new(CacheApi::new(open_store(config)?)))
}

/// The gRPC server of an implementation, ready to serve once its store answers.
pub fn server(config: &Config, api: Arc<CacheApi>) -> GrpcServer {
    let probe = api.clone();
    GrpcServer::new("cache", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(CacheServiceServer::from_arc(api))
        .readiness(move || {
            let api = probe.clone();
            async move { reco_client::Cache::ready(&*api).await }
        })
}

/// Opens the configured store and builds the server.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open(config)?))
}
