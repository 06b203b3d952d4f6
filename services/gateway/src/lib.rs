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
mod metrics;
pub mod pipeline;
pub mod recall;
pub mod resilience;
pub mod spec;
mod stage;

use std::{collections::HashSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

pub use api::GatewayApi;
pub use error::Error;
pub use pipeline::{Pipeline, PipelineConfig, Rpcs};
use recall::{CfSource, GraphSource, PopularSource, RecallSource, VectorSource};
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
use resilience::{Breaker, BreakerConfig, HedgeConfig, stage_service};
use spec::{Mode, PipelineFile, SourceKind, SourcePlan, SourceSpec};

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
    /// Always send ranking every candidate's item in full. By default an item ranking has been sent before goes as
    /// a 16-byte reference (`RankCandidate.item_ref`); turn this on while a ranking service older than the
    /// reference is still serving.
    #[arg(long, env = "RECO_NO_RANK_ITEM_REFS")]
    pub no_rank_item_refs: bool,

    /// A TOML file shaping the pipeline: recall sources (mode, k, budget, scenes, min and max share, fallback
    /// order), budgets, hedged stages. What it leaves out keeps the value of the flags (docs/configuration.md).
    #[arg(long, env = "RECO_PIPELINE")]
    pub pipeline: Option<PathBuf>,
    /// How long the gateway keeps an item's features, categories and embedding for hydration, ms (0 = ask the
    /// feature service every time). Item features change slowly; a new value shows within this time.
    #[arg(long, env = "RECO_ITEM_CACHE_TTL_MS", default_value_t = 30_000)]
    pub item_cache_ttl_ms: u64,
    /// How long the popular list is kept before it is asked for again, ms (0 = every request).
    #[arg(long, env = "RECO_POPULAR_TTL_MS", default_value_t = 1_000)]
    pub popular_ttl_ms: u64,
    /// Fallback sources run while the merged list has fewer candidates than this or than the request's count.
    #[arg(long, env = "RECO_MIN_CANDIDATES", default_value_t = 0)]
    pub min_candidates: u32,
    /// Stages whose calls are hedged: a second call after the stage's observed latency quantile, the first
    /// answer wins (comma-separated, e.g. recall.vector,hydrate). Off by default.
    #[arg(long, env = "RECO_HEDGE_STAGES", value_delimiter = ',')]
    pub hedge_stages: Vec<String>,
    /// The latency quantile after which a hedged stage sends its second call.
    #[arg(long, env = "RECO_HEDGE_QUANTILE", default_value_t = 0.95)]
    pub hedge_quantile: f64,
    /// Calls a hedged stage observes before it starts hedging.
    #[arg(long, env = "RECO_HEDGE_MIN_SAMPLES", default_value_t = 100)]
    pub hedge_min_samples: u64,
    /// Consecutive failed calls (refused, unavailable, internal errors) that open a downstream's circuit
    /// breaker (0 = no breakers).
    #[arg(long, env = "RECO_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// How long an open breaker refuses calls before one probe may go through, ms.
    #[arg(long, env = "RECO_BREAKER_OPEN_MS", default_value_t = 1000)]
    pub breaker_open_ms: u64,
    /// Count calls cut off by their budget as breaker failures (a hung downstream then gets cut off), not only
    /// errors. Off by default: under load a healthy downstream misses a tight budget now and then.
    #[arg(long, env = "RECO_BREAKER_COUNT_TIMEOUTS")]
    pub breaker_count_timeouts: bool,

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

    /// The recall sources the flags describe: cf and vector always, graph on demand (request flag or
    /// `--graph-scenes`), popular always but at most `--popular-share` of a mixed list.
    pub fn default_sources(&self) -> Vec<SourceSpec> {
        let spec = |name: &str, kind, mode, k| SourceSpec {
            name: name.into(),
            kind,
            mode,
            k,
            budget_ms: None,
            scenes: Vec::new(),
            min_share: 0.0,
            max_share: 1.0,
        };
        vec![
            spec("cf", SourceKind::Cf, Mode::Always, self.cf_k),
            spec("vector", SourceKind::Vector, Mode::Always, self.vector_k),
            SourceSpec {
                scenes: self
                    .graph_scenes
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect(),
                ..spec("graph", SourceKind::Graph, Mode::OnDemand, self.graph_k)
            },
            SourceSpec {
                max_share: self.popular_share,
                ..spec("popular", SourceKind::Popular, Mode::Always, self.popular_k)
            },
        ]
    }

    /// The pipeline's plan: the flags, overlaid with `--pipeline` when given; fails on a value that cannot work
    /// (a bad blocklist id, a share outside 0..=1, an unknown stage to hedge), naming it.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let file = match &self.pipeline {
            Some(path) => PipelineFile::read(path)?,
            None => PipelineFile::default(),
        };
        let ms = Duration::from_millis;
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.popular_share),
            "--popular-share must be between 0 and 1, got {}",
            self.popular_share
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.hedge_quantile) && self.hedge_quantile > 0.0,
            "--hedge-quantile must be between 0 and 1 (exclusive), got {}",
            self.hedge_quantile
        );
        let total = file.total_ms.unwrap_or(self.budget_total_ms);
        anyhow::ensure!(total > 0, "the total budget must be at least 1 ms");
        let max_candidates = file.max_candidates.unwrap_or(self.max_candidates);
        anyhow::ensure!(
            (1..=reco_types::MAX_CANDIDATES as u32).contains(&max_candidates),
            "max_candidates must be between 1 and {}, got {max_candidates}",
            reco_types::MAX_CANDIDATES
        );
        let specs = file.recall.unwrap_or_else(|| self.default_sources());
        let sources = spec::validate_sources(&specs, |kind| match kind {
            SourceKind::Cf => ms(1),
            SourceKind::Vector => ms(self.budget_vector_ms),
            SourceKind::Graph => ms(self.budget_graph_ms),
            SourceKind::Popular => ms(self.budget_features_ms),
        })?;
        let hedged =
            spec::validate_hedge(file.hedge.as_ref().unwrap_or(&self.hedge_stages), &sources)?;
        let pipeline = PipelineConfig {
            total: ms(total),
            features_budget: ms(file.features_ms.unwrap_or(self.budget_features_ms)),
            cache_budget: ms(file.cache_ms.unwrap_or(self.budget_cache_ms)),
            ranking_budget: ms(file.ranking_ms.unwrap_or(self.budget_ranking_ms)),
            rank: file.rank.unwrap_or(!self.no_rank),
            rank_item_refs: !self.no_rank_item_refs,
            max_candidates: max_candidates as usize,
            min_candidates: file.min_candidates.unwrap_or(self.min_candidates) as usize,
            item_cache_ttl: ms(self.item_cache_ttl_ms),
            per_category: file.per_category.unwrap_or(self.per_category) as usize,
            blocklist: spec::blocklist(file.blocklist.as_ref().unwrap_or(&self.blocklist))?,
            rate_limit: (self.rate_limit > 0)
                .then(|| (self.rate_limit, ms(self.rate_window_ms.max(1)))),
            rate_limit_fail_open: !self.rate_limit_fail_closed,
            frequency_cap: (self.frequency_cap > 0)
                .then(|| (self.frequency_cap, ms(self.frequency_window_ms.max(1)))),
            result_ttl: ms(self.result_ttl_ms),
        };
        Ok(Plan {
            pipeline,
            sources,
            hedged,
            hedge: HedgeConfig {
                quantile: self.hedge_quantile,
                min_samples: self.hedge_min_samples,
                ..HedgeConfig::default()
            },
            breaker: BreakerConfig {
                failures: self.breaker_failures,
                open_for: ms(self.breaker_open_ms.max(1)),
                count_timeouts: self.breaker_count_timeouts,
            },
        })
    }
}

/// Everything the pipeline is built from, checked.
#[derive(Clone, Debug)]
pub struct Plan {
    pub pipeline: PipelineConfig,
    pub sources: Vec<SourcePlan>,
    /// Stages whose calls are hedged.
    pub hedged: HashSet<String>,
    pub hedge: HedgeConfig,
    pub breaker: BreakerConfig,
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

/// A stage's call: `$method` of `$client` behind `$breaker` (its downstream's), hedged when the plan lists one of
/// the stages it serves.
macro_rules! rpc {
    ($plan:expr, $breaker:expr, [$($stage:expr),+], $client:expr, $method:ident) => {{
        let client = $client;
        let hedge = [$($stage),+]
            .iter()
            .any(|s| $plan.hedged.contains(*s))
            .then_some($plan.hedge);
        stage_service($breaker, hedge, move |c: resilience::Call<_>| {
            let mut client = client.clone();
            async move {
                Ok(client
                    .$method(stage::request(c.message, c.budget))
                    .await?
                    .into_inner())
            }
        })
    }};
}

/// Builds the pipeline over the downstream channels: one breaker per downstream, every stage's call behind its
/// downstream's breaker, and the recall sources of the plan.
pub fn pipeline(config: &Config, d: &Downstreams) -> anyhow::Result<Pipeline> {
    let plan = config.plan()?;
    let breaker = |name| Breaker::new(name, plan.breaker);
    let (feature_b, cache_b, vector_b, graph_b, ranking_b) = (
        breaker("feature"),
        breaker("cache"),
        breaker("vector-recall"),
        breaker("graph-recall"),
        breaker("ranking"),
    );
    let feature = FeatureServiceClient::new(d.feature.clone());
    let cache = CacheServiceClient::new(d.cache.clone());
    let ranking = RankingClient::new(d.ranking.clone());
    let rpcs = Rpcs {
        // One call serves three stages; hedged when any of them is.
        begin: rpc!(
            plan,
            &cache_b,
            ["admission", "result_cache", "user_context.recent_clicks"],
            cache.clone(),
            begin_recommend
        ),
        user_context: rpc!(
            plan,
            &feature_b,
            ["user_context.features"],
            feature.clone(),
            get_user_context
        ),
        frequency_cap: rpc!(
            plan,
            &cache_b,
            ["frequency_cap"],
            cache.clone(),
            filter_capped
        ),
        hydrate: rpc!(
            plan,
            &feature_b,
            ["hydrate"],
            feature.clone(),
            batch_get_item_features
        ),
        rank: rpc!(plan, &ranking_b, ["rank"], ranking, rank),
        cache,
        cache_breaker: cache_b,
    };
    let sources: Vec<Box<dyn RecallSource>> = plan
        .sources
        .iter()
        .map(|p| -> Box<dyn RecallSource> {
            let stage = p.stage();
            let plan_ = p.clone();
            match p.kind {
                SourceKind::Cf => Box::new(CfSource { plan: plan_ }),
                SourceKind::Vector => Box::new(VectorSource {
                    plan: plan_,
                    search: rpc!(
                        plan,
                        &vector_b,
                        [stage],
                        VectorRecallClient::new(d.vector.clone()),
                        search
                    ),
                }),
                SourceKind::Graph => Box::new(GraphSource {
                    plan: plan_,
                    recall: rpc!(
                        plan,
                        &graph_b,
                        [stage],
                        GraphRecallClient::new(d.graph.clone()),
                        recall
                    ),
                }),
                SourceKind::Popular => Box::new(PopularSource {
                    plan: plan_,
                    popular: rpc!(
                        plan,
                        &feature_b,
                        [stage],
                        feature.clone(),
                        get_popular_items
                    ),
                    ttl: Duration::from_millis(config.popular_ttl_ms),
                    kept: Default::default(),
                }),
            }
        })
        .collect();
    Ok(Pipeline::new(plan.pipeline, rpcs, sources))
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
