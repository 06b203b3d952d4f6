//! The graph-recall service: candidates from who follows whom and who engaged what.
//!
//! ```text
//!   Recall{user, strategies} ──▶ GraphApi ──▶ dyn GraphStore ─┬─ adjacency (embedded CSR)
//!   AddEdges / RemoveEdges   ──▶ (real-time, visible at once)  └─ CypherGraph ─┬─ Neptune (openCypher, SigV4)
//!                                                                              └─ FalkorDB
//! ```

mod api;
mod error;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use reco_graph_store::{AdjacencyGraph, CypherGraph, FalkorRunner, GraphStore, NeptuneRunner};
use reco_proto::graph_recall::v1::graph_recall_server::GraphRecallServer;
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;

pub use api::GraphApi;
pub use error::Error;

/// The full name of this service's API.
pub const API: &str = "reco.graph_recall.v1.GraphRecall";

/// The RPCs that change data: with `--auth-tokens-file`, only callers with the write permission may call them.
pub const WRITE_RPCS: &[&str] = &["AddEdges", "RemoveEdges"];

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50055;

/// Which store backs the service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// In-memory CSR graph (embedded default).
    Adjacency,
    /// Amazon Neptune, openCypher over its data API (`--neptune-*`).
    Neptune,
    /// FalkorDB, openCypher over the Redis protocol (`--falkordb-*`).
    Falkordb,
}

reco_aws::aws_args!(
    /// Where the Neptune cluster is: its endpoint (`https://CLUSTER:8182`) goes in `--neptune-endpoint-url`.
    NeptuneAwsArgs,
    "neptune",
    "NEPTUNE"
);

/// Flags of the openCypher backends.
#[derive(Clone, Debug, clap::Args)]
pub struct CypherArgs {
    #[command(flatten)]
    pub neptune: NeptuneAwsArgs,
    /// FalkorDB server (redis://HOST:PORT).
    #[arg(
        long = "falkordb-url",
        env = "RECO_FALKORDB_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub falkordb_url: String,
    /// FalkorDB graph name.
    #[arg(
        long = "falkordb-graph",
        env = "RECO_FALKORDB_GRAPH",
        default_value = "reco"
    )]
    pub falkordb_graph: String,
    /// Timeout of one openCypher query, in ms (a random walk is bounded by the request's time budget instead).
    #[arg(
        long = "cypher-query-timeout-ms",
        env = "RECO_CYPHER_QUERY_TIMEOUT_MS",
        default_value_t = 1_000
    )]
    pub query_timeout_ms: u64,
}

/// Flags of the graph-recall service; each also reads `RECO_*` from the environment.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "reco-graph-recall",
    about = "The reco graph-recall service",
    version
)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Store backend.
    #[arg(long = "backend", env = "RECO_GRAPH_BACKEND", value_enum, default_value_t = Backend::Adjacency)]
    pub backend: Backend,
    /// Neighbours expanded per node by the embedded graph (the heaviest first).
    #[arg(long = "fanout", env = "RECO_GRAPH_FANOUT", default_value_t = reco_graph_store::DEFAULT_FANOUT)]
    pub fanout: usize,
    #[command(flatten)]
    pub cypher: CypherArgs,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-graph-recall"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }
}

/// Opens the configured store.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn GraphStore>> {
    let timeout = Duration::from_millis(config.cypher.query_timeout_ms.max(1));
    Ok(match config.backend {
        Backend::Adjacency => Arc::new(AdjacencyGraph::with_fanout(config.fanout)),
        Backend::Neptune => {
            if config.cypher.neptune.endpoint_url.is_none() {
                anyhow::bail!(
                    "--backend neptune needs --neptune-endpoint-url (the cluster endpoint, https://CLUSTER:8182)"
                );
            }
            let runner = NeptuneRunner::connect(&(&config.cypher.neptune).into()).await;
            Arc::new(CypherGraph::new(Arc::new(runner), timeout))
        }
        Backend::Falkordb => {
            let runner =
                FalkorRunner::connect(&config.cypher.falkordb_url, &config.cypher.falkordb_graph)
                    .await?;
            Arc::new(CypherGraph::new(Arc::new(runner), timeout))
        }
    })
}

/// Opens the configured store and makes the service's implementation over it: what its gRPC server serves, and
/// what a gateway in the same process calls directly.
pub async fn open(config: &Config) -> anyhow::Result<Arc<GraphApi>> {
    Ok(Arc::new(GraphApi::new(open_store(config).await?)))
}

/// The gRPC server of an implementation, ready to serve once its store answers.
pub fn server(config: &Config, api: Arc<GraphApi>) -> GrpcServer {
    let probe = api.clone();
    GrpcServer::new("graph-recall", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(GraphRecallServer::from_arc(api))
        .readiness(move || {
            let api = probe.clone();
            async move { reco_client::GraphRecall::ready(&*api).await }
        })
}

/// Opens the configured store and builds the server.
pub async fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open(config).await?))
}
