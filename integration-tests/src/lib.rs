//! The end-to-end harness: the whole platform started in-process on free ports of 127.0.0.1, loaded with small
//! generated data, and clients to call it through real gRPC. Tests use their own platform (or their own user
//! ids), so they run in parallel.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub use reco_cli::platform::Wiring;
use reco_cli::platform::{Platform, PlatformConfig};
use reco_proto::gateway::v1::{RecommendRequest, RecommendResponse, gateway_client::GatewayClient};
use reco_server::TracedChannel;

/// Each service's gRPC API, in the order of `Addrs::all()`.
pub const APIS: [(&str, &str); 6] = [
    ("feature", "reco.feature.v1.FeatureService"),
    ("cache", "reco.cache.v1.CacheService"),
    ("vector-recall", "reco.vector_recall.v1.VectorRecall"),
    ("graph-recall", "reco.graph_recall.v1.GraphRecall"),
    ("ranking", "reco.ranking.v1.Ranking"),
    ("gateway", "reco.gateway.v1.Gateway"),
];

/// A platform loaded with generated data.
pub struct TestPlatform {
    pub platform: Platform,
    /// A user with history, features, an embedding and a recall pool.
    pub known_user: String,
}

/// Generated data small enough to load in a moment in a debug build.
pub fn small_data() -> reco_data::Snapshot {
    let cfg = reco_data::GenConfig {
        users: 300,
        items: 250,
        categories: 8,
        ..Default::default()
    };
    reco_data::derive(&reco_data::generate(&cfg), cfg.seed)
}

impl TestPlatform {
    /// Starts every service with default settings and loads [`small_data`].
    pub async fn start() -> Self {
        Self::start_with(PlatformConfig::default()).await
    }

    /// [`TestPlatform::start`], with the gateway wired to the other services as `wiring` says.
    pub async fn start_on(wiring: Wiring) -> Self {
        Self::start_with(PlatformConfig {
            wiring,
            ..Default::default()
        })
        .await
    }

    /// Starts every service with `cfg` (its ports are ignored: every service gets a free one) and loads data.
    pub async fn start_with(mut cfg: PlatformConfig) -> Self {
        cfg.base_port = 0;
        // Debug builds on a shared 2-core machine are slow; the tests check behaviour, not speed.
        relax_budgets(&mut cfg.gateway);
        let platform = Platform::start(cfg).await.expect("platform starts");
        let snap = small_data();
        let known_user = known_user(&snap);
        reco_cli::load::load(snap, &platform.addrs)
            .await
            .expect("data loads");
        Self {
            platform,
            known_user,
        }
    }

    pub fn gateway_addr(&self) -> String {
        self.platform.addrs.gateway.to_string()
    }

    pub fn gateway(&self) -> GatewayClient<TracedChannel> {
        GatewayClient::new(reco_server::channel(&self.gateway_addr()).unwrap())
    }

    /// Recommend with a generous caller deadline.
    pub async fn recommend(
        &self,
        req: RecommendRequest,
    ) -> Result<RecommendResponse, tonic::Status> {
        let mut r = tonic::Request::new(req);
        r.set_timeout(Duration::from_secs(5));
        self.gateway()
            .recommend(r)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A user of `snap` with a recall pool of 50 or more and an embedding.
pub fn known_user(snap: &reco_data::Snapshot) -> String {
    snap.pools
        .iter()
        .find(|(u, pool)| {
            pool.len() >= 50
                && snap
                    .users
                    .iter()
                    .any(|x| &x.user_id == u && x.embedding.is_some())
        })
        .map(|(u, _)| u.to_string())
        .expect("a user with a pool")
}

/// Budgets large enough that a debug build on a loaded machine does not time out, unless a test means it to.
pub fn relax_budgets(g: &mut reco_gateway::Config) {
    g.budget_total_ms = 5_000;
    g.budget_features_ms = 1_000;
    g.budget_cache_ms = 1_000;
    g.budget_vector_ms = 1_000;
    g.budget_graph_ms = 1_000;
    g.budget_ranking_ms = 1_000;
}

/// A request for `user` with everything else default.
pub fn ask(user: &str) -> RecommendRequest {
    RecommendRequest {
        user_id: user.to_string(),
        ..Default::default()
    }
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The grpcurl binary: `$RECO_GRPCURL`, the test tools' venv, or PATH. When the test script asked for it
/// (`RECO_REQUIRE_GRPCURL=1`) a missing grpcurl fails the test; otherwise the test says loudly that it did not
/// run and returns None.
pub fn grpcurl() -> Option<PathBuf> {
    let candidates = std::env::var_os("RECO_GRPCURL")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace_root().join(".tools/venv/bin/grpcurl")])
        .chain(std::env::var_os("PATH").into_iter().flat_map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("grpcurl"))
                .collect::<Vec<_>>()
        }));
    for c in candidates {
        if c.is_file() {
            return Some(c);
        }
    }
    if std::env::var("RECO_REQUIRE_GRPCURL").is_ok_and(|v| v == "1") {
        panic!(
            "RECO_REQUIRE_GRPCURL=1 but no grpcurl was found (set RECO_GRPCURL or run scripts/test.sh)"
        );
    }
    eprintln!(
        "NOT RUN: grpcurl not found; scripts/test.sh installs it and makes this test required"
    );
    None
}

/// Runs grpcurl with `args`, returning stdout; panics with its stderr when it fails.
pub fn run_grpcurl(bin: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .expect("grpcurl runs");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Runs grpcurl expecting failure, returning stderr.
pub fn run_grpcurl_err(bin: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .expect("grpcurl runs");
    assert!(!out.status.success(), "grpcurl {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// 40 string features of 12 KB each: every field is valid, the row is over DynamoDB's 400 KB item limit.
pub fn oversize_features() -> reco_proto::common::v1::Features {
    use reco_proto::common::v1::{FeatureValue, feature_value::Kind};
    reco_proto::common::v1::Features {
        values: (0..40)
            .map(|i| {
                (
                    format!("blob{i}"),
                    FeatureValue {
                        kind: Some(Kind::StringValue("x".repeat(12 * 1024))),
                    },
                )
            })
            .collect(),
    }
}

/// Runs each named test, an `async fn(Wiring)`, on both wirings of the one-process platform: `in_process::name`
/// and `over_grpc::name`. One suite, two setups, so that neither wiring can drift from the other.
#[macro_export]
macro_rules! on_both_wirings {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Wiring::InProcess).await
                }
            )*
        }
        mod over_grpc {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::Wiring::OverGrpc).await
                }
            )*
        }
    };
}

/// A user's recent clicks in the cache service at `cache`, as (item, event id), most recent first.
pub async fn recent_clicks(cache: &str, user: &str) -> Vec<(String, String)> {
    use reco_proto::cache::v1::{GetRecentEventsRequest, cache_service_client::CacheServiceClient};
    CacheServiceClient::new(reco_server::channel(cache).unwrap())
        .get_recent_events(GetRecentEventsRequest {
            user_id: user.into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| (e.item_id, e.event_id))
        .collect()
}

/// A user's real-time sequence in the feature service at `feature`, as (item, event id), most recent first.
pub async fn sequence(feature: &str, user: &str) -> Vec<(String, String)> {
    use reco_proto::feature::v1::{
        GetUserContextRequest, feature_service_client::FeatureServiceClient,
    };
    FeatureServiceClient::new(reco_server::channel(feature).unwrap())
        .get_user_context(GetUserContextRequest {
            user_id: user.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .recent_events
        .into_iter()
        .map(|e| (e.item_id, e.event_id))
        .collect()
}
