//! The ranking service: one score per candidate, from a model that names the features it reads.
//!
//! ```text
//!   Rank{user features, candidates + provenance} ──▶ RankingApi ──▶ dyn Ranker (linear | sagemaker) ──▶ sorted scores
//! ```

mod api;
mod error;
mod items;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use reco_proto::ranking::v1::ranking_server::RankingServer;
use reco_ranker::{
    LinearModel, PayloadFormat, Ranker, ReloadingModel, SageMakerConfig, SageMakerRanker,
};
use reco_server::{GrpcServer, ServerArgs};
use reco_telemetry::TelemetryArgs;

pub use api::{DEFAULT_ITEM_CACHE, RankingApi};
pub use error::Error;

/// The full name of this service's API.
pub const API: &str = "reco.ranking.v1.Ranking";

/// The RPCs that change data: with `--auth-tokens-file`, only callers with the write permission may call them.
pub const WRITE_RPCS: &[&str] = &[];

/// Where the service listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50056;

/// Which model backend serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// A linear model in process (embedded default).
    Linear,
    /// A SageMaker endpoint: see the `--sagemaker-*` flags.
    Sagemaker,
}

reco_aws::aws_args!(
    /// Where the SageMaker endpoint runs.
    SageMakerAwsArgs,
    "sagemaker",
    "SAGEMAKER"
);

/// Flags of the SageMaker backend.
#[derive(Clone, Debug, clap::Args)]
pub struct SageMakerArgs {
    #[command(flatten)]
    pub aws: SageMakerAwsArgs,
    /// The endpoint's name.
    #[arg(
        long = "sagemaker-endpoint",
        env = "RECO_SAGEMAKER_ENDPOINT",
        default_value = ""
    )]
    pub endpoint: String,
    /// The model's input features, in order, comma-separated (platform features, listed in the README's ranking section).
    #[arg(
        long = "sagemaker-features",
        env = "RECO_SAGEMAKER_FEATURES",
        value_delimiter = ','
    )]
    pub features: Vec<String>,
    /// How rows travel: json (`{"instances": [[...]]}`) or csv (one line per candidate).
    #[arg(long = "sagemaker-format", env = "RECO_SAGEMAKER_FORMAT", value_enum, default_value_t = PayloadFormat::Json)]
    pub format: PayloadFormat,
    /// Content type sent, when not the format's own (application/json, text/csv).
    #[arg(long = "sagemaker-content-type", env = "RECO_SAGEMAKER_CONTENT_TYPE")]
    pub content_type: Option<String>,
    /// Accept header sent.
    #[arg(long = "sagemaker-accept", env = "RECO_SAGEMAKER_ACCEPT")]
    pub accept: Option<String>,
    /// Production variant to call instead of the endpoint's traffic split.
    #[arg(
        long = "sagemaker-target-variant",
        env = "RECO_SAGEMAKER_TARGET_VARIANT"
    )]
    pub target_variant: Option<String>,
    /// Model version answers name (default `sagemaker:<endpoint>`).
    #[arg(long = "sagemaker-model-version", env = "RECO_SAGEMAKER_MODEL_VERSION")]
    pub model_version: Option<String>,
}

impl From<&SageMakerArgs> for SageMakerConfig {
    fn from(a: &SageMakerArgs) -> Self {
        SageMakerConfig {
            aws: (&a.aws).into(),
            endpoint_name: a.endpoint.clone(),
            features: a.features.clone(),
            format: a.format,
            content_type: a.content_type.clone(),
            accept: a.accept.clone(),
            target_variant: a.target_variant.clone(),
            model_version: a.model_version.clone(),
        }
    }
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
    /// Model file (JSON, as `reco train` writes it). Without it the built-in default model serves. The file is
    /// watched: a new valid model replaces the serving one without dropping a request; an invalid one is refused.
    #[arg(long, env = "RECO_RANKING_MODEL")]
    pub model: Option<PathBuf>,
    /// How often the model file is checked for changes, in ms.
    #[arg(long, env = "RECO_RANKING_RELOAD_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    pub reload_ms: u64,
    /// How many candidates' items to keep decoded, by their reference (0: decode every item every time, and
    /// resolve no reference). Items recur from request to request; a caller sends an item kept here as its 16-byte
    /// reference (`RankCandidate.item_ref`) instead of its fields.
    #[arg(long, env = "RECO_RANKING_ITEM_CACHE", default_value_t = DEFAULT_ITEM_CACHE)]
    pub item_cache: usize,
    #[command(flatten)]
    pub sagemaker: SageMakerArgs,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-ranking"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }
}

/// Loads the configured model; a model the platform cannot feed is refused here, at start-up. A model file is
/// then watched from a background task (so this must run inside a Tokio runtime), which stops when the model is
/// dropped.
pub async fn open_ranker(config: &Config) -> anyhow::Result<Arc<dyn Ranker>> {
    Ok(match (config.backend, &config.model) {
        (Backend::Sagemaker, _) => {
            Arc::new(SageMakerRanker::connect((&config.sagemaker).into()).await?)
        }
        (Backend::Linear, Some(path)) => {
            let model = Arc::new(ReloadingModel::open(path)?);
            watch(
                Arc::downgrade(&model),
                Duration::from_millis(config.reload_ms),
            );
            model
        }
        (Backend::Linear, None) => Arc::new(LinearModel::default_model()),
    })
}

fn watch(model: std::sync::Weak<ReloadingModel>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(model) = model.upgrade() else { return };
            match model.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(path = %model.path().display(), version = %model.model_version(), "model reloaded")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(path = %model.path().display(), %error, "new model file refused; the previous model keeps serving")
                }
            }
        }
    });
}

/// The service's implementation over a given model: what its gRPC server serves, and what a gateway in the same
/// process calls directly.
pub fn api(config: &Config, ranker: Arc<dyn Ranker>) -> Arc<RankingApi> {
    Arc::new(RankingApi::with_item_cache(ranker, config.item_cache))
}

/// Loads the configured model and makes the service's implementation over it.
pub async fn open(config: &Config) -> anyhow::Result<Arc<RankingApi>> {
    Ok(api(config, open_ranker(config).await?))
}

/// The gRPC server of an implementation.
pub fn server(config: &Config, api: Arc<RankingApi>) -> GrpcServer {
    GrpcServer::new("ranking", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(RankingServer::from_arc(api))
}

/// Loads the configured model and builds the server.
pub async fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    Ok(server(config, open(config).await?))
}
