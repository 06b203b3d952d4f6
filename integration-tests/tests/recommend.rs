//! Recommend end to end: six real services on loopback, called through real gRPC.

use std::{collections::HashSet, time::Duration};

use reco_cli::platform::PlatformConfig;
use reco_integration_tests::{TestPlatform, Wiring, ask};
use reco_proto::gateway::v1::{DropReason, RecommendRequest, StageStatus};
use tonic::Code;

const STAGES: [&str; 13] = [
    "admission",
    "result_cache",
    "user_context.features",
    "user_context.recent_clicks",
    "recall.cf",
    "recall.vector",
    "recall.graph",
    "recall.popular",
    "merge",
    "frequency_cap",
    "hydrate",
    "rank",
    "rerank",
];

fn status(s: i32) -> StageStatus {
    StageStatus::try_from(s).unwrap()
}

async fn recommend_returns_ten_ranked_items_with_a_report_per_stage(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let r = t.recommend(ask(&t.known_user)).await.unwrap();

    assert_eq!(r.items.len(), 10);
    let ids: HashSet<_> = r.items.iter().map(|i| i.item_id.as_str()).collect();
    assert_eq!(ids.len(), 10, "no duplicates");
    assert!(
        r.items.iter().all(|i| !i.sources.is_empty()),
        "every item says where it came from"
    );
    assert!(
        r.items.windows(2).all(|w| w[0].score >= w[1].score),
        "best first"
    );
    assert!(!r.degraded && !r.from_cache && !r.cold_start);
    assert!(!r.model_version.is_empty());
    assert!(!r.request_id.is_empty());

    let stages: Vec<_> = r.stages.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(stages, STAGES);
    for s in &r.stages {
        let st = status(s.status);
        assert!(
            matches!(st, StageStatus::Ok | StageStatus::Skipped),
            "{s:?}"
        );
    }
    let by_name = |n: &str| r.stages.iter().find(|s| s.stage == n).unwrap();
    assert_eq!(status(by_name("recall.cf").status), StageStatus::Ok);
    assert_eq!(status(by_name("recall.vector").status), StageStatus::Ok);
    assert_eq!(
        status(by_name("recall.graph").status),
        StageStatus::Skipped,
        "graph is on demand"
    );
    assert!(by_name("merge").candidates_out > 10);
    assert_eq!(by_name("rerank").candidates_out, 10);
    assert!(by_name("rank").budget_us > 0);

    // Items the user has already engaged with are never recommended.
    let mut feature = reco_proto::feature::v1::feature_service_client::FeatureServiceClient::new(
        reco_server::channel(&t.platform.addrs.feature.to_string()).unwrap(),
    );
    let ctx = feature
        .get_user_context(reco_proto::feature::v1::GetUserContextRequest {
            user_id: t.known_user.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ctx.recent_events.is_empty());
    assert!(
        ctx.recent_events
            .iter()
            .all(|e| !ids.contains(e.item_id.as_str()))
    );

    // With graph recall asked for, the graph stage runs and can contribute.
    let r = t
        .recommend(RecommendRequest {
            include_graph: true,
            bypass_cache: true,
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    let graph = r.stages.iter().find(|s| s.stage == "recall.graph").unwrap();
    assert_eq!(status(graph.status), StageStatus::Ok);
    assert!(graph.candidates_out > 0);
    t.platform.shutdown().await.unwrap();
}

async fn bad_input_is_invalid_argument_naming_the_field(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let cases = [
        (ask(""), "user_id"),
        (
            RecommendRequest {
                count: Some(0),
                ..ask("u1")
            },
            "count",
        ),
        (
            RecommendRequest {
                count: Some(100_000),
                ..ask("u1")
            },
            "count",
        ),
        (ask(&"x".repeat(10 * 1024)), "user_id"),
        (ask("bad\u{0}id"), "user_id"),
        (
            RecommendRequest {
                scene: "s".repeat(500),
                ..ask("u1")
            },
            "scene",
        ),
        (
            RecommendRequest {
                context: (0..100).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..ask("u1")
            },
            "context",
        ),
    ];
    for (req, field) in cases {
        let err = t.recommend(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    // Asking for 100 is fine, and gets as many as there are (up to 100).
    let r = t
        .recommend(RecommendRequest {
            count: Some(100),
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    assert!(r.items.len() > 10 && r.items.len() <= 100);
    t.platform.shutdown().await.unwrap();
}

async fn an_unknown_user_gets_the_popular_items_as_a_cold_start(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let r = t.recommend(ask("never-seen-before")).await.unwrap();
    assert!(r.cold_start);
    assert!(!r.degraded);
    assert_eq!(r.items.len(), 10);
    assert!(
        r.items
            .iter()
            .all(|i| i.sources.iter().any(|s| s.source == "popular"))
    );
    let skipped: Vec<_> = r
        .stages
        .iter()
        .filter(|s| status(s.status) == StageStatus::Skipped)
        .map(|s| s.stage.as_str())
        .collect();
    assert!(
        skipped.contains(&"recall.cf") && skipped.contains(&"recall.vector"),
        "{skipped:?}"
    );
    t.platform.shutdown().await.unwrap();
}

async fn a_second_call_is_answered_from_the_result_cache(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let first = t.recommend(ask(&t.known_user)).await.unwrap();
    assert!(!first.from_cache);
    // The cache write happens after the answer, off the response path: wait for it to land.
    let mut second = None;
    for _ in 0..100 {
        let r = t.recommend(ask(&t.known_user)).await.unwrap();
        if r.from_cache {
            second = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = second.expect("the result cache answers within 2 s of the first call");
    let ids = |r: &reco_proto::gateway::v1::RecommendResponse| {
        r.items
            .iter()
            .map(|i| i.item_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&first), ids(&second));
    let cache = second
        .stages
        .iter()
        .find(|s| s.stage == "result_cache")
        .unwrap();
    assert_eq!(status(cache.status), StageStatus::Cached);

    let fresh = t
        .recommend(RecommendRequest {
            bypass_cache: true,
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    assert!(!fresh.from_cache);
    t.platform.shutdown().await.unwrap();
}

async fn explain_says_why_each_candidate_is_in_or_out(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let r = t
        .recommend(RecommendRequest {
            explain: true,
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    assert!(!r.from_cache, "explain always computes a fresh answer");
    assert!(r.explanations.len() > r.items.len());
    for (n, item) in r.items.iter().enumerate() {
        let e = r
            .explanations
            .iter()
            .find(|e| e.item_id == item.item_id)
            .unwrap();
        assert_eq!(e.position as usize, n + 1);
        assert_eq!(
            DropReason::try_from(e.dropped).unwrap(),
            DropReason::Unspecified
        );
        assert!(
            e.features.contains_key("embedding_similarity") && e.features.contains_key("cf_score")
        );
    }
    let out: Vec<_> = r.explanations.iter().filter(|e| e.position == 0).collect();
    assert!(!out.is_empty());
    for e in &out {
        let reason = DropReason::try_from(e.dropped).unwrap();
        assert_ne!(reason, DropReason::Unspecified, "{e:?}");
        assert!(!e.detail.is_empty());
    }
    t.platform.shutdown().await.unwrap();
}

async fn a_caller_deadline_shrinks_every_budget(wiring: Wiring) {
    // Every stage is configured with 1 s (relaxed for debug builds); the caller allows 800 ms in all.
    let t = TestPlatform::start_on(wiring).await;
    let mut req = tonic::Request::new(RecommendRequest {
        bypass_cache: true,
        ..ask(&t.known_user)
    });
    req.set_timeout(Duration::from_millis(800));
    let r = t.gateway().recommend(req).await.unwrap().into_inner();
    let ran: Vec<_> = r.stages.iter().filter(|s| s.budget_us > 0).collect();
    assert!(ran.len() >= 6, "{:?}", r.stages);
    for s in &ran {
        assert!(
            s.budget_us < 800_000,
            "{} was given {} us of an 800 ms deadline",
            s.stage,
            s.budget_us
        );
    }
    t.platform.shutdown().await.unwrap();
}

async fn ranking_down_degrades_to_recall_order_and_says_so(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    // A second gateway over the same services, but with ranking pointed at a port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cfg = t.platform.gateway_config.clone();
    cfg.ranking_addr = dead.to_string();
    // Its own event outbox: the platform's gateway holds the other.
    let outbox = tempfile::tempdir().unwrap();
    cfg.event_outbox = outbox.path().join("events.redb");
    // Everything else as the platform's gateway reaches it (in process, or over gRPC).
    let mut downstreams = t.platform.downstreams().unwrap();
    downstreams.ranking = reco_gateway::grpc_downstreams(&cfg).unwrap().ranking;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = reco_gateway::server(&cfg, downstreams).unwrap();
    let server = tokio::spawn(gateway.serve(listener, async {
        let _ = stopped.await;
    }));
    let a = &t.platform.addrs;

    let mut client = reco_proto::gateway::v1::gateway_client::GatewayClient::new(
        reco_server::channel(&addr.to_string()).unwrap(),
    );
    let r = client
        .recommend(ask(&t.known_user))
        .await
        .unwrap()
        .into_inner();
    assert!(r.degraded);
    assert_eq!(r.items.len(), 10, "still a full answer, in recall order");
    let rank = r.stages.iter().find(|s| s.stage == "rank").unwrap();
    assert_eq!(status(rank.status), StageStatus::Error);
    assert!(rank.detail.contains("recall order"), "{}", rank.detail);
    assert!(r.model_version.is_empty());

    // A degraded answer is not cached, but its items were shown: their impressions are recorded after the answer.
    let mut cache = reco_proto::cache::v1::cache_service_client::CacheServiceClient::new(
        reco_server::channel(&a.cache.to_string()).unwrap(),
    );
    let shown: Vec<String> = r.items.iter().map(|i| i.item_id.clone()).collect();
    let mut capped = Vec::new();
    for _ in 0..100 {
        capped = cache
            .filter_capped(reco_proto::cache::v1::FilterCappedRequest {
                user_id: t.known_user.clone(),
                item_ids: shown.clone(),
                cap: 1,
                window_ms: 3_600_000,
            })
            .await
            .unwrap()
            .into_inner()
            .capped_item_ids;
        if capped.len() == shown.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        capped, shown,
        "every item of the degraded answer was recorded as shown"
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    t.platform.shutdown().await.unwrap();
}

async fn over_the_rate_limit_is_resource_exhausted_with_retry_after(wiring: Wiring) {
    let mut cfg = PlatformConfig {
        wiring,
        ..Default::default()
    };
    cfg.gateway.rate_limit = 3;
    cfg.gateway.rate_window_ms = 60_000;
    let t = TestPlatform::start_with(cfg).await;
    let req = || RecommendRequest {
        bypass_cache: true,
        ..ask(&t.known_user)
    };
    for _ in 0..3 {
        t.recommend(req()).await.unwrap();
    }
    let err = t.recommend(req()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let retry: u64 = err
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    // Other users are not affected.
    t.recommend(ask("someone-else")).await.unwrap();
    t.platform.shutdown().await.unwrap();
}

async fn explain_item_ids_says_why_a_chosen_item_is_or_is_not_in_the_top_ten(wiring: Wiring) {
    let t = TestPlatform::start_on(wiring).await;
    let full = t
        .recommend(RecommendRequest {
            explain: true,
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    let served = full.items[3].item_id.clone();
    let cut = full
        .explanations
        .iter()
        .find(|e| {
            e.position == 0 && DropReason::try_from(e.dropped).unwrap() != DropReason::Unspecified
        })
        .expect("some candidate was left out")
        .clone();
    let chosen = vec![
        served.clone(),
        cut.item_id.clone(),
        "never-recalled".to_string(),
    ];
    let r = t
        .recommend(RecommendRequest {
            explain_item_ids: chosen.clone(),
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    let ids: Vec<&str> = r.explanations.iter().map(|e| e.item_id.as_str()).collect();
    assert_eq!(
        ids, chosen,
        "exactly the items asked about, in the order asked"
    );

    let e = &r.explanations[0];
    assert_eq!(e.position, 4, "served at position 4");
    assert_eq!(
        DropReason::try_from(e.dropped).unwrap(),
        DropReason::Unspecified
    );
    assert!(!e.sources.is_empty() && e.features.contains_key("cf_score"));

    let e = &r.explanations[1];
    assert_eq!(e.position, 0);
    assert_eq!(e.dropped, cut.dropped, "{e:?}");
    assert_eq!(e.detail, cut.detail);

    let e = &r.explanations[2];
    assert_eq!(
        DropReason::try_from(e.dropped).unwrap(),
        DropReason::NotRecalled
    );
    assert!(
        e.detail.contains("no recall source returned it")
            && e.detail.contains("recall.cf returned"),
        "{}",
        e.detail
    );

    let bad = t
        .recommend(RecommendRequest {
            explain_item_ids: vec![String::new()],
            ..ask(&t.known_user)
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("explain_item_ids[0]"), "{bad:?}");
    t.platform.shutdown().await.unwrap();
}

/// A pipeline file: popular only as a fallback, a graph source on demand under its own name.
const PIPELINE: &str = r#"
min_candidates = 40

[[recall]]
name = "cf"
kind = "cf"
k = 200

[[recall]]
name = "vector"
kind = "vector"
k = 100
min_share = 0.1

[[recall]]
name = "friends"
kind = "graph"
mode = "on_demand"
scenes = ["social"]
k = 50

[[recall]]
name = "popular"
kind = "popular"
mode = "fallback"
k = 100
"#;

async fn a_pipeline_file_sets_on_demand_sources_and_the_fallback_order(wiring: Wiring) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(&file, PIPELINE).unwrap();
    let mut cfg = PlatformConfig {
        wiring,
        ..Default::default()
    };
    cfg.gateway.pipeline = Some(file);
    let t = TestPlatform::start_with(cfg).await;
    let report = |r: &reco_proto::gateway::v1::RecommendResponse, name: &str| {
        r.stages
            .iter()
            .find(|s| s.stage == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", r.stages))
            .clone()
    };

    // A known user: cf and vector find plenty, so the fallback is not needed; friends is on demand.
    let r = t
        .recommend(RecommendRequest {
            bypass_cache: true,
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    assert_eq!(r.items.len(), 10);
    let popular = report(&r, "recall.popular");
    assert_eq!(status(popular.status), StageStatus::Skipped);
    assert!(
        popular.detail.contains("fallback not needed"),
        "{popular:?}"
    );
    let friends = report(&r, "recall.friends");
    assert_eq!(status(friends.status), StageStatus::Skipped);
    assert!(friends.detail.contains("on demand"), "{friends:?}");

    // Asked for by name, or by its scene, the on-demand source runs.
    for req in [
        RecommendRequest {
            include_sources: vec!["friends".into()],
            bypass_cache: true,
            ..ask(&t.known_user)
        },
        RecommendRequest {
            scene: "social".into(),
            bypass_cache: true,
            ..ask(&t.known_user)
        },
    ] {
        let r = t.recommend(req).await.unwrap();
        assert_eq!(status(report(&r, "recall.friends").status), StageStatus::Ok);
    }

    // A user nobody knows: the first sources have nothing, so the fallback fills the answer.
    let r = t
        .recommend(RecommendRequest {
            bypass_cache: true,
            ..ask("nobody-knows-me")
        })
        .await
        .unwrap();
    let popular = report(&r, "recall.popular");
    assert_eq!(status(popular.status), StageStatus::Ok, "{popular:?}");
    assert_eq!(r.items.len(), 10);
    assert!(
        r.items
            .iter()
            .all(|i| i.sources.iter().any(|s| s.source == "popular"))
    );
    t.platform.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_pipeline_file_stops_the_gateway_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    std::fs::write(
        &file,
        "[[recall]]\nname = \"cf\"\nkind = \"cf\"\nk = 5000\n",
    )
    .unwrap();
    let cfg = reco_gateway::Config {
        pipeline: Some(file.clone()),
        ..Default::default()
    };
    let e = reco_gateway::build(&cfg)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("k must be between 1 and"), "{e}");
    std::fs::write(&file, "[[recall]\nname = \"cf\"").unwrap();
    let e = reco_gateway::build(&cfg)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("pipeline.toml") && e.contains("line 1"), "{e}");
}

async fn items_answered_are_recorded_as_impressions_and_capped_next_time(wiring: Wiring) {
    let mut cfg = PlatformConfig {
        wiring,
        ..Default::default()
    };
    cfg.gateway.frequency_cap = 1;
    let t = TestPlatform::start_with(cfg).await;
    let first = t
        .recommend(RecommendRequest {
            bypass_cache: true,
            ..ask(&t.known_user)
        })
        .await
        .unwrap();
    assert!(
        !first.degraded,
        "a full answer is cached with its impressions"
    );
    let shown: HashSet<String> = first.items.iter().map(|i| i.item_id.clone()).collect();
    assert_eq!(shown.len(), 10);

    // The impressions are written after the answer, off its path: wait for them to land.
    let mut next = None;
    for _ in 0..100 {
        let r = t
            .recommend(RecommendRequest {
                bypass_cache: true,
                explain_item_ids: vec![first.items[0].item_id.clone()],
                ..ask(&t.known_user)
            })
            .await
            .unwrap();
        if r.items.iter().all(|i| !shown.contains(&i.item_id)) {
            next = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = next.expect("the first answer's items are capped within 5 s");
    assert_eq!(next.items.len(), 10, "other items take their places");
    let e = &next.explanations[0];
    assert_eq!(e.item_id, first.items[0].item_id);
    assert_eq!(e.position, 0);
    assert_eq!(
        DropReason::try_from(e.dropped).unwrap(),
        DropReason::FrequencyCap,
        "{e:?}"
    );
    t.platform.shutdown().await.unwrap();
}

/// The two wirings are one platform: for the same data, every user gets the same items with the same scores and
/// sources, and the same stages run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_wirings_give_the_same_answers() {
    let (a, b) = tokio::join!(
        TestPlatform::start_on(Wiring::InProcess),
        TestPlatform::start_on(Wiring::OverGrpc)
    );
    let users: Vec<String> = (0..40)
        .map(|i| format!("u{i}"))
        .chain([a.known_user.clone(), "never-seen-before".into()])
        .collect();
    for user in &users {
        let req = RecommendRequest {
            bypass_cache: true,
            include_graph: true,
            ..ask(user)
        };
        let (x, y) = tokio::join!(a.recommend(req.clone()), b.recommend(req));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(!x.degraded && !y.degraded, "{user}");
        assert_eq!(
            x.items, y.items,
            "{user}: the same items, scores and sources"
        );
        assert_eq!(
            (x.cold_start, &x.model_version),
            (y.cold_start, &y.model_version)
        );
        let outcome =
            |r: &reco_proto::gateway::v1::RecommendResponse| -> Vec<(String, i32, u32, u32)> {
                r.stages
                    .iter()
                    .map(|s| (s.stage.clone(), s.status, s.candidates_in, s.candidates_out))
                    .collect()
            };
        assert_eq!(
            outcome(&x),
            outcome(&y),
            "{user}: the same stages, candidates in and out"
        );
    }
    a.platform.shutdown().await.unwrap();
    b.platform.shutdown().await.unwrap();
}

reco_integration_tests::on_both_wirings!(
    recommend_returns_ten_ranked_items_with_a_report_per_stage,
    bad_input_is_invalid_argument_naming_the_field,
    an_unknown_user_gets_the_popular_items_as_a_cold_start,
    a_second_call_is_answered_from_the_result_cache,
    explain_says_why_each_candidate_is_in_or_out,
    a_caller_deadline_shrinks_every_budget,
    ranking_down_degrades_to_recall_order_and_says_so,
    over_the_rate_limit_is_resource_exhausted_with_retry_after,
    explain_item_ids_says_why_a_chosen_item_is_or_is_not_in_the_top_ten,
    a_pipeline_file_sets_on_demand_sources_and_the_fallback_order,
    items_answered_are_recorded_as_impressions_and_capped_next_time,
);
