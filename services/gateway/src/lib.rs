//! The gateway: one Recommend call fans out to every other service under budgets carved from the request's
//! deadline, and answers with the top items and a report per stage, even when backends are slow or down.
//!
//! ```text
//!   caller ──Recommend──▶ GatewayApi ──▶ Pipeline ──▶ feature, cache, vector-recall, graph-recall, ranking
//!                              ◀── items + stage reports (ok / timeout / error / skipped / cached) + degraded
//! ```

mod api;
pub mod budget;
mod error;
pub mod merge;
pub mod pipeline;
pub mod recall;
mod stage;

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use reco_proto::{
    cache::v1::cache_service_client::CacheServiceClient,
    feature::v1::feature_service_client::FeatureServiceClient,
    gateway::v1::gateway_server::GatewayServer,
    graph_recall::v1::graph_recall_client::GraphRecallClient,
    ranking::v1::ranking_client::RankingClient,
    vector_recall::v1::vector_recall_client::VectorRecallClient,
};
use reco_server::{GrpcServer, ServerArgs, TracedChannel};
use reco_telemetry::TelemetryArgs;
use reco_types::ItemId;

pub use api::GatewayApi;
pub use error::Error;
pub use pipeline::{Clients, Pipeline, PipelineConfig};
use recall::{CfSource, GraphSource, PopularSource, RecallSource, VectorSource};

/// The full name of this service's API.
pub const API: &str = "reco.gateway.v1.Gateway";

/// The RPCs that change data: with `--auth-tokens-file`, only callers with the write permission may call them.
pub const WRITE_RPCS: &[&str] = &[];

/// Where the gateway listens unless told otherwise.
pub const DEFAULT_PORT: u16 = 50051;

/// Flags of the gateway; each also reads `RECO_*` from the environment.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "reco-gateway", about = "The reco gateway", version)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// The feature service.
    #[arg(long, env = "RECO_FEATURE_ADDR", default_value = "127.0.0.1:50052")]
    pub feature_addr: String,
    /// The cache service.
    #[arg(long, env = "RECO_CACHE_ADDR", default_value = "127.0.0.1:50053")]
    pub cache_addr: String,
    /// The vector-recall service.
    #[arg(long, env = "RECO_VECTOR_ADDR", default_value = "127.0.0.1:50054")]
    pub vector_addr: String,
    /// The graph-recall service.
    #[arg(long, env = "RECO_GRAPH_ADDR", default_value = "127.0.0.1:50055")]
    pub graph_addr: String,
    /// The ranking service.
    #[arg(long, env = "RECO_RANKING_ADDR", default_value = "127.0.0.1:50056")]
    pub ranking_addr: String,

    /// Whole-request budget in ms; a caller's smaller grpc-timeout shrinks it.
    #[arg(long, env = "RECO_BUDGET_TOTAL_MS", default_value_t = 200)]
    pub budget_total_ms: u64,
    /// Feature reads (user context, item hydration, popular items), ms.
    #[arg(long, env = "RECO_BUDGET_FEATURES_MS", default_value_t = 10)]
    pub budget_features_ms: u64,
    /// Cache calls (admission, result cache, recent clicks, frequency caps), ms.
    #[arg(long, env = "RECO_BUDGET_CACHE_MS", default_value_t = 2)]
    pub budget_cache_ms: u64,
    /// Vector k-NN recall, ms.
    #[arg(long, env = "RECO_BUDGET_VECTOR_MS", default_value_t = 20)]
    pub budget_vector_ms: u64,
    /// Graph recall, ms.
    #[arg(long, env = "RECO_BUDGET_GRAPH_MS", default_value_t = 50)]
    pub budget_graph_ms: u64,
    /// Ranking, ms.
    #[arg(long, env = "RECO_BUDGET_RANKING_MS", default_value_t = 30)]
    pub budget_ranking_ms: u64,

    /// Serve the merged recall order without calling ranking (to measure what ranking adds).
    #[arg(long, env = "RECO_NO_RANK")]
    pub no_rank: bool,

    /// Candidates taken from the user's CF pool.
    #[arg(long, env = "RECO_RECALL_CF_K", default_value_t = 200)]
    pub cf_k: u32,
    /// Candidates asked of vector recall.
    #[arg(long, env = "RECO_RECALL_VECTOR_K", default_value_t = 100)]
    pub vector_k: u32,
    /// Candidates asked of graph recall.
    #[arg(long, env = "RECO_RECALL_GRAPH_K", default_value_t = 100)]
    pub graph_k: u32,
    /// Popular items fetched as the fallback.
    #[arg(long, env = "RECO_RECALL_POPULAR_K", default_value_t = 100)]
    pub popular_k: u32,
    /// Scenes that run graph recall without the request asking (comma-separated).
    #[arg(long, env = "RECO_GRAPH_SCENES", value_delimiter = ',')]
    pub graph_scenes: Vec<String>,
    /// Most candidates passed from merge to ranking.
    #[arg(long, env = "RECO_MAX_CANDIDATES", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_candidates: u32,
    /// Largest share of the merged list the popular fallback may fill when other sources found items.
    #[arg(long, env = "RECO_POPULAR_SHARE", default_value_t = 0.2)]
    pub popular_share: f32,
    /// Most items of one category in the answer (0 = no cap).
    #[arg(long, env = "RECO_PER_CATEGORY", default_value_t = 3)]
    pub per_category: u32,
    /// Items never served (comma-separated ids).
    #[arg(long, env = "RECO_BLOCKLIST", value_delimiter = ',')]
    pub blocklist: Vec<String>,
    /// Recommend calls allowed per user per rate window (0 = no rate limit).
    #[arg(long, env = "RECO_RATE_LIMIT", default_value_t = 100)]
    pub rate_limit: u32,
    /// Rate window, ms.
    #[arg(long, env = "RECO_RATE_WINDOW_MS", default_value_t = 1000)]
    pub rate_window_ms: u64,
    /// Refuse requests (UNAVAILABLE) when the rate limiter cannot be asked, instead of serving them.
    #[arg(long, env = "RECO_RATE_LIMIT_FAIL_CLOSED")]
    pub rate_limit_fail_closed: bool,
    /// Impressions of an item within the frequency window that stop it being served (0 = off).
    #[arg(long, env = "RECO_FREQUENCY_CAP", default_value_t = 0)]
    pub frequency_cap: u32,
    /// Frequency window, ms.
    #[arg(long, env = "RECO_FREQUENCY_WINDOW_MS", default_value_t = 24 * 3600 * 1000)]
    pub frequency_window_ms: u64,
    /// Result-cache TTL, ms.
    #[arg(long, env = "RECO_RESULT_TTL_MS", default_value_t = 300_000)]
    pub result_ttl_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-gateway"])
    }
}

impl Config {
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }

    /// The pipeline's settings; fails on a value that cannot work (a bad blocklist id, a share outside 0..=1).
    pub fn pipeline(&self) -> anyhow::Result<PipelineConfig> {
        let ms = Duration::from_millis;
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.popular_share),
            "--popular-share must be between 0 and 1, got {}",
            self.popular_share
        );
        anyhow::ensure!(
            self.budget_total_ms > 0,
            "--budget-total-ms must be at least 1"
        );
        let blocklist = self
            .blocklist
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| ItemId::parse("--blocklist", s))
            .collect::<Result<HashSet<_>, _>>()?;
        Ok(PipelineConfig {
            total: ms(self.budget_total_ms),
            features_budget: ms(self.budget_features_ms),
            cache_budget: ms(self.budget_cache_ms),
            ranking_budget: ms(self.budget_ranking_ms),
            rank: !self.no_rank,
            max_candidates: self.max_candidates as usize,
            popular_share: self.popular_share,
            per_category: self.per_category as usize,
            blocklist,
            rate_limit: (self.rate_limit > 0)
                .then(|| (self.rate_limit, ms(self.rate_window_ms.max(1)))),
            rate_limit_fail_open: !self.rate_limit_fail_closed,
            frequency_cap: (self.frequency_cap > 0)
                .then(|| (self.frequency_cap, ms(self.frequency_window_ms.max(1)))),
            result_ttl: ms(self.result_ttl_ms),
            graph_scenes: self
                .graph_scenes
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
        })
    }
}

/// One channel per downstream service, shared by every client of it (HTTP/2 multiplexes the calls).
#[derive(Clone)]
pub struct Downstreams {
    pub feature: TracedChannel,
    pub cache: TracedChannel,
    pub vector: TracedChannel,
    pub graph: TracedChannel,
    pub ranking: TracedChannel,
}

impl Downstreams {
    /// Lazily connected channels to the configured addresses.
    /// Over TLS when `--tls-ca` is set.
    pub fn connect(config: &Config) -> anyhow::Result<Self> {
        let tls = config.server.tls.client()?;
        let channel = |addr: &str| reco_server::channel_tls(addr, tls.as_ref());
        Ok(Self {
            feature: channel(&config.feature_addr)?,
            cache: channel(&config.cache_addr)?,
            vector: channel(&config.vector_addr)?,
            graph: channel(&config.graph_addr)?,
            ranking: channel(&config.ranking_addr)?,
        })
    }

    /// Every downstream the request path needs answers SERVING. Graph recall is on demand, so it is not
    /// required. Probing also opens the connections, so the first request does not pay for the handshakes.
    pub async fn ready(&self) -> Result<(), String> {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        for (name, ch) in [
            ("feature", &self.feature),
            ("cache", &self.cache),
            ("vector-recall", &self.vector),
            ("ranking", &self.ranking),
        ] {
            let mut client = HealthClient::new(ch.clone());
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            });
            request.set_timeout(Duration::from_secs(1));
            match client.check(request).await {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => {}
                Ok(r) => {
                    return Err(format!(
                        "{name} is not serving (status {})",
                        r.get_ref().status
                    ));
                }
                Err(e) => return Err(format!("{name}: {}", e.message())),
            }
        }
        Ok(())
    }
}

/// Builds the pipeline over the downstream channels.
pub fn pipeline(config: &Config, d: &Downstreams) -> anyhow::Result<Pipeline> {
    let ms = Duration::from_millis;
    let feature = FeatureServiceClient::new(d.feature.clone());
    let clients = Clients {
        feature: feature.clone(),
        cache: CacheServiceClient::new(d.cache.clone()),
        ranking: RankingClient::new(d.ranking.clone()),
    };
    let sources: Vec<Box<dyn RecallSource>> = vec![
        Box::new(CfSource::new(config.cf_k as usize)),
        Box::new(VectorSource {
            name: reco_types::Name::parse("source", "vector")?,
            client: VectorRecallClient::new(d.vector.clone()),
            k: config.vector_k,
            budget: ms(config.budget_vector_ms),
        }),
        Box::new(GraphSource {
            name: reco_types::Name::parse("source", "graph")?,
            client: GraphRecallClient::new(d.graph.clone()),
            k: config.graph_k,
            budget: ms(config.budget_graph_ms),
        }),
        Box::new(PopularSource {
            name: reco_types::Name::parse("source", "popular")?,
            client: feature,
            k: config.popular_k,
            budget: ms(config.budget_features_ms),
        }),
    ];
    Ok(Pipeline::new(config.pipeline()?, clients, sources))
}

/// The gateway over a pipeline, ready to serve once its downstreams are.
pub fn server(config: &Config, pipeline: Pipeline, downstreams: Downstreams) -> GrpcServer {
    let pipeline = Arc::new(pipeline);
    let background = pipeline.clone();
    GrpcServer::new("gateway", config.server.clone())
        .write_rpcs(API, WRITE_RPCS)
        .add_service(GatewayServer::new(GatewayApi::new(pipeline)))
        // Result-cache and impression writes started by answered requests complete before the process exits.
        .after_drain(async move { background.finish_background().await })
        .readiness(move || {
            let d = downstreams.clone();
            async move { d.ready().await }
        })
}

/// Connects to the downstreams, builds the pipeline and the server.
pub fn build(config: &Config) -> anyhow::Result<GrpcServer> {
    let downstreams = Downstreams::connect(config)?;
    Ok(server(config, pipeline(config, &downstreams)?, downstreams))
}
