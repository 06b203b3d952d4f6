//! The feature service: what the platform knows about users and items, served over gRPC.
//!
//! ```text
//!   gateway ──GetUserContext──▶ FeatureApi ──▶ dyn FeatureStore (redb | dynamodb | memory), optionally cached
//!           ──BatchGetItemFeatures──▶
//!   sync / events ──Put* / AppendEvents──▶
//! ```

mod api;
mod error;
mod items;

use std::{net::SocketAddr, sync::Arc};

use reco_feature_store::{
    CachedFeatureStore, DEFAULT_MAX_EVENTS, DynamoConfig, DynamoFeatureStore, FeatureStore,
    MemoryFeatureStore, RedbFeatureStore,
};
use reco_proto::feature::v1::feature_service_server::FeatureServiceServer;
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;

pub use api::FeatureApi;
pub use error::Error;

/// The full name of this service's API.
pub const API: &str = "reco.feature.v1.FeatureService";

/// The RPCs that change data: with `--auth-tokens-file`, only callers with the write permission may call them.
pub const WRITE_RPCS: &[&str] = &[
    "PutUserFeatures",
    "PutItemFeatures",
    "PutRecallPools",
    "PutPopularItems",
    "AppendEvents",
    "AppendEventsBatch",
    "ActivateVersion",
];

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50052;

/// Which store backs the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A durable file under `--data-dir` (redb; embedded default).
    Redb,
    /// In-process maps, lost on exit (tests, throwaway runs).
    Memory,
    /// DynamoDB (production): see the `--dynamodb-*` flags.
    Dynamodb,
}

reco_aws::aws_args!(
    /// Where the DynamoDB backend's tables live.
    DynamoAwsArgs,
    "dynamodb",
    "DYNAMODB"
);

/// Flags of the DynamoDB backend.
#[derive(Clone, Debug, clap::Args)]
pub struct DynamoArgs {
    #[command(flatten)]
    pub aws: DynamoAwsArgs,
    /// Prefix of every table name: PREFIXuser_features, PREFIXrecall_u2u_cf, PREFIXuser_realtime,
    /// PREFIXitem_features, PREFIXmeta.
    #[arg(
        long = "dynamodb-table-prefix",
        env = "RECO_DYNAMODB_TABLE_PREFIX",
        default_value = "reco_"
    )]
    pub table_prefix: String,
    /// Strongly consistent reads (twice the read units) instead of eventually consistent ones.
    #[arg(
        long = "dynamodb-consistent-reads",
        env = "RECO_DYNAMODB_CONSISTENT_READS"
    )]
    pub consistent_reads: bool,
    /// Create missing tables at start, on-demand billing (development; create production tables with your
    /// infrastructure code: the layout is in the README).
    #[arg(long = "dynamodb-create-tables", env = "RECO_DYNAMODB_CREATE_TABLES")]
    pub create_tables: bool,
    /// How long the active feature version is trusted before it is read again, in ms: another process's switch
    /// shows within it.
    #[arg(
        long = "dynamodb-version-refresh-ms",
        env = "RECO_DYNAMODB_VERSION_REFRESH_MS",
        default_value_t = 1_000
    )]
    pub version_refresh_ms: u64,
}

impl From<&DynamoArgs> for DynamoConfig {
    fn from(a: &DynamoArgs) -> Self {
        DynamoConfig {
            aws: (&a.aws).into(),
            table_prefix: a.table_prefix.clone(),
            consistent_reads: a.consistent_reads,
            create_tables: a.create_tables,
            version_refresh: std::time::Duration::from_millis(a.version_refresh_ms),
        }
    }
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
    /// Keep the active version's items encoded this long, in ms, so that an item batch copies them into the answer
    /// instead of reading, converting and encoding each item again (0 = off). Items written through this service
    /// and a change of the active version show at once; items written to the store by anything else, within it.
    #[arg(long, env = "RECO_FEATURE_ITEM_CACHE_TTL_MS", default_value_t = 30_000)]
    pub item_cache_ttl_ms: u64,
    /// Most users (and as many items) the hot-key cache holds; also the most items kept encoded.
    #[arg(long, env = "RECO_FEATURE_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// Events kept per user in the real-time sequence.
    #[arg(long, env = "RECO_FEATURE_MAX_EVENTS", default_value_t = DEFAULT_MAX_EVENTS, value_parser = parse_max_events)]
    pub max_events: usize,
    #[command(flatten)]
    pub dynamodb: DynamoArgs,
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
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn FeatureStore>> {
    let store: Arc<dyn FeatureStore> = match config.backend {
        Backend::Memory => Arc::new(MemoryFeatureStore::new()),
        Backend::Redb => Arc::new(RedbFeatureStore::open(
            &config.data_dir.join("features.redb"),
        )?),
        Backend::Dynamodb => {
            Arc::new(DynamoFeatureStore::connect((&config.dynamodb).into()).await?)
        }
    };
    Ok(if config.cache_ttl_ms > 0 {
        let ttl = std::time::Duration::from_millis(config.cache_ttl_ms);
        Arc::new(CachedFeatureStore::new(store, ttl, config.cache_capacity))
    } else {
        store
    })
}

/// The service's implementation over a given store: what its gRPC server serves, and what a gateway in the same
/// process calls directly.
pub fn api(config: &Config, store: Arc<dyn FeatureStore>) -> Arc<FeatureApi> {
    let api = FeatureApi::new(store, config.max_events);
    Arc::new(if config.item_cache_ttl_ms > 0 {
        api.with_item_cache(
            std::time::Duration::from_millis(config.item_cache_ttl_ms),
            config.cache_capacity as usize,
        )
    } else {
        api
    })
}

/// Opens the configured store and makes the service's implementation over it.
pub async fn open(config: &Config) -> anyhow::Result<Arc<FeatureApi>> {
    Ok(api(config, open_store(config).await?))
}

/// The gRPC server of an implementation, ready to serve once its store answers.
pub fn server(config: &Config, api: Arc<FeatureApi>) -> GrpcServer {
    let probe = api.clone();
    GrpcServer::new("feature", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(FeatureServiceServer::from_arc(api))
        .readiness(move || {
            let api = probe.clone();
            async move { reco_client::Feature::ready(&*api).await }
        })
}

/// Opens the configured store and builds the server.
pub async fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open(config).await?))
}
