//! The ranking service: one score per candidate, from a model that names the features it reads.
//!
//! ```text
//!   Rank{user features, candidates + provenance} ──▶ RankingApi ──▶ dyn Ranker (linear | ...) ──▶ sorted scores
//! ```

mod api;
mod error;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use reco_proto::ranking::v1::ranking_server::RankingServer;
use reco_ranker::{LinearModel, Ranker};
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;

pub use api::RankingApi;
pub use error::Error;

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50056;

/// Which model backend serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A linear model in process (embedded default).
    Linear,
}

/// Flags of the ranking service; each also reads `RECO_*` from the environment.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "reco-ranking", about = "The reco ranking service", version)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Model backend.
    #[arg(long = "backend", env = "RECO_RANKING_BACKEND", value_enum, default_value_t = Backend::Linear)]
    pub backend: Backend,
    /// Model file (JSON). Without it the built-in default model serves.
    #[arg(long, env = "RECO_RANKING_MODEL")]
    pub model: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-ranking"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server
            .listen
            .unwrap_or(SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))
    }
}

/// Loads the configured model; a model the platform cannot feed is refused here, at start-up.
pub fn open_ranker(config: &Config) -> anyhow::Result<Arc<dyn Ranker>> {
    Ok(match (config.backend, &config.model) {
        (Backend::Linear, Some(path)) => Arc::new(LinearModel::load(path)?),
        (Backend::Linear, None) => Arc::new(LinearModel::default_model()),
    })
}

/// The service over a given model, ready to serve.
pub fn server(config: &Config, ranker: Arc<dyn Ranker>) -> GrpcServer {
    GrpcServer::new("ranking", config.server.clone())
        .add_service(RankingServer::new(RankingApi::new(ranker)))
}

/// Loads the configured model and builds the server.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open_ranker(config)?))
}
