//! The graph-recall service: candidates from who follows whom and who engaged what.
//!
//! ```text
//!   Recall{user, strategies} ──▶ GraphApi ──▶ dyn GraphStore (adjacency | ...)
//!   AddEdges / RemoveEdges   ──▶ (real-time, visible at once)
//! ```

mod api;
mod error;

use std::{net::SocketAddr, sync::Arc};

use reco_graph_store::{AdjacencyGraph, GraphStore};
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
    /// In-memory adjacency lists (embedded default).
    Adjacency,
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
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn GraphStore>> {
    Ok(match config.backend {
        Backend::Adjacency => Arc::new(AdjacencyGraph::new()),
    })
}

/// The service over a given store, ready to serve.
pub fn server(config: &Config, store: Arc<dyn GraphStore>) -> GrpcServer {
    let probe = store.clone();
    GrpcServer::new("graph-recall", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(GraphRecallServer::new(GraphApi::new(store)))
        .readiness(move || {
            let store = probe.clone();
            async move { store.stats().await.map(|_| ()).map_err(|e| e.to_string()) }
        })
}

/// Opens the configured store and builds the server.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open_store(config)?))
}
