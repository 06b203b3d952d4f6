//! The gateway's flags. Each also reads `RECO_*` from the environment; [`Config::plan`] checks them, with the
//! `--pipeline` file laid over them, into the [`Plan`] the pipeline runs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use reco_server::ServerArgs;
use reco_telemetry::TelemetryArgs;

use crate::{
    plan::{self, Mode, Plan, RawPlan, RawSourcePlan, SourceKind},
    resilience::{BreakerPolicy, HedgePolicy},
};

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

    /// The event outbox: a file where RecordEvents keeps every accepted event until the feature, cache and
    /// graph services have applied it (docs/events.md).
    #[arg(
        long,
        env = "RECO_EVENT_OUTBOX",
        default_value = "data/gateway/events.redb"
    )]
    pub event_outbox: PathBuf,
    /// Most events the outbox holds waiting for a service; past it RecordEvents answers RESOURCE_EXHAUSTED.
    #[arg(long, env = "RECO_EVENT_OUTBOX_CAPACITY", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_outbox_capacity: u64,
    /// How many of the latest event ids are remembered, so an event sent again is not applied again.
    #[arg(long, env = "RECO_EVENT_DEDUPE_IDS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_dedupe_ids: u64,
    /// Longest a RecordEvents call waits for its events to be applied before answering (they are on disk
    /// already), ms; a caller's smaller grpc-timeout shrinks it. 0 answers as soon as they are on disk.
    #[arg(long, env = "RECO_EVENT_WAIT_MS", default_value_t = 1_000)]
    pub event_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        <Self as clap::Parser>::parse_from(["reco-gateway"])
    }
}

impl Config {
    /// Where and how RecordEvents keeps events.
    pub(crate) fn events_plan(&self) -> crate::events::EventsPlan {
        crate::events::EventsPlan {
            outbox: self.event_outbox.clone(),
            capacity: self.event_outbox_capacity,
            dedupe: self.event_dedupe_ids,
            wait: Duration::from_millis(self.event_wait_ms),
        }
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen_or(DEFAULT_PORT)
    }

    /// The recall sources the flags describe: cf and vector always, graph on demand (request flag or
    /// `--graph-scenes`), popular always but at most `--popular-share` of a mixed list.
    pub fn default_sources(&self) -> Vec<RawSourcePlan> {
        let spec = |name: &str, kind, mode, k| RawSourcePlan {
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
            RawSourcePlan {
                scenes: self
                    .graph_scenes
                    .iter()
                    .filter(|s| !s.is_empty())
                    .cloned()
                    .collect(),
                ..spec("graph", SourceKind::Graph, Mode::OnDemand, self.graph_k)
            },
            RawSourcePlan {
                max_share: self.popular_share,
                ..spec("popular", SourceKind::Popular, Mode::Always, self.popular_k)
            },
        ]
    }

    /// The pipeline's plan: the flags, overlaid with `--pipeline` when given; fails on a value that cannot work
    /// (a bad blocklist id, a share outside 0..=1, an unknown stage to hedge), naming it.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let file = match &self.pipeline {
            Some(path) => RawPlan::read(path)?,
            None => RawPlan::default(),
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
        let sources = plan::validate_sources(&specs, |kind| match kind {
            SourceKind::Cf => ms(1),
            SourceKind::Vector => ms(self.budget_vector_ms),
            SourceKind::Graph => ms(self.budget_graph_ms),
            SourceKind::Popular => ms(self.budget_features_ms),
        })?;
        let hedged =
            plan::validate_hedge(file.hedge.as_ref().unwrap_or(&self.hedge_stages), &sources)?;
        Ok(Plan {
            total: ms(total),
            features_budget: ms(file.features_ms.unwrap_or(self.budget_features_ms)),
            cache_budget: ms(file.cache_ms.unwrap_or(self.budget_cache_ms)),
            ranking_budget: ms(file.ranking_ms.unwrap_or(self.budget_ranking_ms)),
            rank: file.rank.unwrap_or(!self.no_rank),
            max_candidates: max_candidates as usize,
            min_candidates: file.min_candidates.unwrap_or(self.min_candidates) as usize,
            item_cache_ttl: ms(self.item_cache_ttl_ms),
            popular_ttl: ms(self.popular_ttl_ms),
            per_category: file.per_category.unwrap_or(self.per_category) as usize,
            blocklist: plan::blocklist(file.blocklist.as_ref().unwrap_or(&self.blocklist))?,
            rate_limit: (self.rate_limit > 0)
                .then(|| (self.rate_limit, ms(self.rate_window_ms.max(1)))),
            rate_limit_fail_open: !self.rate_limit_fail_closed,
            frequency_cap: (self.frequency_cap > 0)
                .then(|| (self.frequency_cap, ms(self.frequency_window_ms.max(1)))),
            result_ttl: ms(self.result_ttl_ms),
            sources,
            hedged,
            hedge: HedgePolicy {
                quantile: self.hedge_quantile,
                min_samples: self.hedge_min_samples,
                ..HedgePolicy::default()
            },
            breaker: BreakerPolicy {
                failures: self.breaker_failures,
                open_for: ms(self.breaker_open_ms.max(1)),
                count_timeouts: self.breaker_count_timeouts,
            },
        })
    }
}
