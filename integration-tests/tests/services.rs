//! Every service on its own: health, validation at the gRPC edge, and graceful shutdown.

use reco_integration_tests::{APIS, TestPlatform};
use reco_proto::{
    cache::v1::{self as cache, cache_service_client::CacheServiceClient},
    common::v1::{Event, Vector},
    feature::v1::{self as feature, feature_service_client::FeatureServiceClient},
    graph_recall::v1::{self as graph, graph_recall_client::GraphRecallClient},
    ranking::v1::{self as ranking, ranking_client::RankingClient},
    vector_recall::v1::{
        self as vector, search_request::Query, vector_recall_client::VectorRecallClient,
    },
};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn ch(addr: std::net::SocketAddr) -> reco_server::TracedChannel {
    reco_server::channel(&addr.to_string()).unwrap()
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, tonic::Status>, field: &str) {
    let err = r.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(field),
        "expected {field:?} in {:?}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_reports_serving_for_itself_and_its_api() {
    let t = TestPlatform::start().await;
    for ((name, addr), (api_service, api)) in t.platform.addrs.all().into_iter().zip(APIS) {
        assert_eq!(name, api_service);
        let mut h = HealthClient::new(ch(addr));
        for service in ["", api] {
            let s = h
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            assert_eq!(s, ServingStatus::Serving as i32, "{name} {service:?}");
        }
        let err = h
            .check(HealthCheckRequest {
                service: "reco.nothing.v1.Nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    t.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_refuses_bad_input_with_the_reason() {
    let t = TestPlatform::start().await;
    let a = t.platform.addrs.clone();

    let mut f = FeatureServiceClient::new(ch(a.feature));
    assert_invalid(
        f.batch_get_item_features(feature::BatchGetItemFeaturesRequest {
            item_ids: (0..1001).map(|i| format!("i{i}")).collect(),
            ..Default::default()
        })
        .await,
        "item_ids",
    );
    assert_invalid(
        f.put_item_features(feature::PutItemFeaturesRequest {
            items: vec![feature::Item {
                item_id: "ok".into(),
                embedding: vec![1.0, f32::NAN],
                ..Default::default()
            }],
            feature_version: String::new(),
        })
        .await,
        "items[0].embedding[1]",
    );
    assert_invalid(
        f.append_events(feature::AppendEventsRequest {
            user_id: "u1".into(),
            events: vec![Event {
                item_id: String::new(),
                ..Default::default()
            }],
        })
        .await,
        "events[0].item_id",
    );
    let missing = f
        .get_user_context(feature::GetUserContextRequest {
            user_id: "u1".into(),
            feature_version: "no-such-version".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let mut c = CacheServiceClient::new(ch(a.cache));
    assert_invalid(
        c.put_session(cache::PutSessionRequest {
            session_id: "s1".into(),
            data: vec![0; 65 * 1024],
            ttl_ms: 0,
        })
        .await,
        "data",
    );
    assert_invalid(
        c.check_rate_limit(cache::CheckRateLimitRequest {
            key: "k".into(),
            limit: 0,
            window_ms: 1000,
            cost: 1,
        })
        .await,
        "limit",
    );

    let mut v = VectorRecallClient::new(ch(a.vector));
    let search = |values: Vec<f32>, k: u32| vector::SearchRequest {
        query: Some(Query::Vector(Vector { values })),
        k,
        filter: None,
    };
    assert_invalid(v.search(search(vec![0.5; 3], 10)).await, "dimensions");
    assert_invalid(
        v.search(search(vec![f32::INFINITY; 64], 10)).await,
        "vector.values[0]",
    );
    assert_invalid(v.search(search(vec![0.5; 64], 1001)).await, "k");
    assert_invalid(v.search(vector::SearchRequest::default()).await, "query");
    let ok = v
        .search(search(vec![0.5; 64], 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.hits.len(), 5);

    let mut g = GraphRecallClient::new(ch(a.graph));
    assert_invalid(
        g.add_edges(graph::AddEdgesRequest {
            edges: vec![graph::Edge {
                src: "u1".into(),
                dst: "u2".into(),
                kind: 0,
                weight: 1.0,
            }],
        })
        .await,
        "edges[0].kind",
    );
    // A strategy named twice would run twice, each under its own time budget.
    let walk = graph::Strategy::RandomWalk as i32;
    assert_invalid(
        g.recall(graph::RecallRequest {
            user_id: "u1".into(),
            strategies: vec![walk, graph::Strategy::FriendsItems as i32, walk],
            ..Default::default()
        })
        .await,
        "strategies[2]: repeats",
    );
    assert_invalid(
        g.recall(graph::RecallRequest {
            user_id: "u1".into(),
            strategies: vec![walk; 100_000],
            ..Default::default()
        })
        .await,
        "the limit is 4",
    );
    // An unknown user is a cold start, not an error.
    let empty = g
        .recall(graph::RecallRequest {
            user_id: "stranger".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.candidates.is_empty());

    let mut r = RankingClient::new(ch(a.ranking));
    assert_invalid(
        r.rank(ranking::RankRequest {
            user_id: "u1".into(),
            user_embedding: vec![f32::NAN],
            ..Default::default()
        })
        .await,
        "user_embedding[0]",
    );
    assert_invalid(
        r.rank(ranking::RankRequest {
            user_id: "u1".into(),
            candidates: (0..2001)
                .map(|i| ranking::RankCandidate {
                    item_id: format!("i{i}"),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .await,
        "candidates",
    );
    t.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_begins_a_recommend_call_in_one_round_trip() {
    let t = TestPlatform::start().await;
    let mut c = CacheServiceClient::new(ch(t.platform.addrs.cache));
    let user = "begin-user";
    for (i, item) in ["m-1", "m-2"].into_iter().enumerate() {
        c.push_event(cache::PushEventRequest {
            user_id: user.into(),
            event: Some(Event {
                item_id: item.into(),
                kind: "click".into(),
                timestamp_ms: 1_000 + i as i64,
                weight: 1.0,
                event_id: String::new(),
            }),
            max_len: 0,
        })
        .await
        .unwrap();
    }
    c.put_recommendations(cache::PutRecommendationsRequest {
        user_id: user.into(),
        scene: "home".into(),
        items: vec![reco_proto::common::v1::Candidate {
            item_id: "m-9".into(),
            score: 0.5,
            sources: Vec::new(),
        }],
        ttl_ms: 60_000,
        record_impressions: false,
    })
    .await
    .unwrap();
    let begin =
        |limit: Option<u32>, read_result: bool, recent_events: u32| cache::BeginRecommendRequest {
            user_id: user.into(),
            rate_limit: limit.map(|limit| cache::CheckRateLimitRequest {
                key: format!("begin:{user}"),
                limit,
                window_ms: 60_000,
                cost: 1,
            }),
            read_result,
            scene: "home".into(),
            recent_events,
            frequency_cap: None,
        };

    // Allowed: the rate check, the cached result and the clicks (most recent first) in one answer.
    let first = c
        .begin_recommend(begin(Some(2), true, 10))
        .await
        .unwrap()
        .into_inner();
    let rate = first.rate_limit.unwrap();
    assert!(rate.allowed);
    assert_eq!(rate.remaining, 1);
    let result = first.result.unwrap();
    assert!(result.found);
    assert_eq!(result.items[0].item_id, "m-9");
    let clicks: Vec<_> = first
        .recent_events
        .iter()
        .map(|e| e.item_id.as_str())
        .collect();
    assert_eq!(clicks, ["m-2", "m-1"]);

    // Only the parts asked for.
    let reads_only = c
        .begin_recommend(begin(None, false, 1))
        .await
        .unwrap()
        .into_inner();
    assert!(reads_only.rate_limit.is_none() && reads_only.result.is_none());
    assert_eq!(reads_only.recent_events.len(), 1);

    // A bad part is refused by name and takes nothing from the allowance.
    assert_invalid(
        c.begin_recommend(begin(Some(0), true, 10)).await,
        "rate_limit.limit",
    );
    assert_invalid(
        c.begin_recommend(begin(Some(2), true, 20_000)).await,
        "recent_events",
    );
    let mut no_user = begin(Some(2), true, 10);
    no_user.user_id.clear();
    assert_invalid(c.begin_recommend(no_user).await, "user_id");

    // The second call takes the last of the allowance; the third is refused, with nothing read for it.
    let second = c
        .begin_recommend(begin(Some(2), true, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.rate_limit.unwrap().remaining, 0);
    let refused = c
        .begin_recommend(begin(Some(2), true, 10))
        .await
        .unwrap()
        .into_inner();
    let rate = refused.rate_limit.unwrap();
    assert!(!rate.allowed);
    assert!(rate.retry_after_ms > 0);
    assert!(refused.result.is_none() && refused.recent_events.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_writes_many_answers_in_one_call_or_none_when_one_is_bad() {
    let t = TestPlatform::start().await;
    let mut c = CacheServiceClient::new(ch(t.platform.addrs.cache));
    let put = |user: &str, item: &str| cache::PutRecommendationsRequest {
        user_id: user.into(),
        items: vec![reco_proto::common::v1::Candidate {
            item_id: item.into(),
            score: 1.0,
            sources: vec![],
        }],
        record_impressions: true,
        ..Default::default()
    };
    let get = |user: &str| cache::GetRecommendationsRequest {
        user_id: user.into(),
        scene: String::new(),
    };
    let impressions = |user: &str, item: &str| cache::RecordImpressionsRequest {
        user_id: user.into(),
        item_ids: vec![item.into()],
        timestamp_ms: 0,
    };
    let capped = |user: &str, item: &str| cache::FilterCappedRequest {
        user_id: user.into(),
        item_ids: vec![item.into()],
        cap: 1,
        window_ms: 3_600_000,
    };
    let written = c
        .put_recommendations_batch(cache::PutRecommendationsBatchRequest {
            puts: vec![put("batch-a", "i1"), put("batch-b", "i2")],
            // A degraded answer's impressions, recorded without a cached result.
            impressions: vec![impressions("batch-d", "i5")],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((written.written, written.recorded), (2, 1));
    // The puts' impressions and the impressions alone both count towards the frequency cap.
    for (user, item) in [("batch-a", "i1"), ("batch-d", "i5")] {
        let r = c
            .filter_capped(capped(user, item))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.capped_item_ids, [item], "{user}'s impression of {item}");
    }
    assert!(
        !c.get_recommendations(get("batch-d"))
            .await
            .unwrap()
            .into_inner()
            .found,
        "impressions alone cache no result"
    );
    for (user, item) in [("batch-a", "i1"), ("batch-b", "i2")] {
        let r = c.get_recommendations(get(user)).await.unwrap().into_inner();
        assert!(r.found);
        assert_eq!(r.items[0].item_id, item);
    }
    // One bad put refuses the call by its position, and none of the others is written.
    assert_invalid(
        c.put_recommendations_batch(cache::PutRecommendationsBatchRequest {
            puts: vec![put("batch-c", "i3"), put("", "i4")],
            impressions: vec![],
        })
        .await,
        "puts[1].user_id",
    );
    assert_invalid(
        c.put_recommendations_batch(cache::PutRecommendationsBatchRequest {
            puts: vec![put("batch-c", "i3")],
            impressions: vec![impressions("batch-e", "")],
        })
        .await,
        "impressions[0].item_ids[0]",
    );
    assert!(
        !c.get_recommendations(get("batch-c"))
            .await
            .unwrap()
            .into_inner()
            .found
    );
    assert_invalid(
        c.put_recommendations_batch(cache::PutRecommendationsBatchRequest::default())
            .await,
        "puts",
    );
    t.platform.shutdown().await.unwrap();
}

/// The ranking service keeps the items it decoded (by their reference): the same request answers the same the
/// second time, sources are still read per request, an item refused once (NaN in its embedding) is refused again,
/// never kept, and an item sent before can be sent by its reference alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranking_keeps_the_items_it_decoded_but_never_a_refused_one() {
    let t = TestPlatform::start().await;
    let mut r = RankingClient::new(ch(t.platform.addrs.ranking));
    let candidate = |id: &str, embedding: Vec<f32>, source: &str| ranking::RankCandidate {
        item_id: id.into(),
        embedding,
        categories: vec!["Drama".into()],
        sources: vec![reco_proto::common::v1::SourceHit {
            source: source.into(),
            rank: 0,
            score: 0.5,
        }],
        ..Default::default()
    };
    let good = ranking::RankRequest {
        user_id: "u1".into(),
        user_embedding: vec![1.0, 0.0],
        candidates: vec![
            candidate("near", vec![1.0, 0.1], "vector"),
            candidate("far", vec![-1.0, 0.1], "vector"),
        ],
        ..Default::default()
    };
    let first = r.rank(good.clone()).await.unwrap().into_inner();
    let second = r.rank(good.clone()).await.unwrap().into_inner();
    assert_eq!(first.scores, second.scores);
    assert_eq!(first.scores[0].item_id, "near");
    // The same items found by another source score differently: sources are read per request.
    let mut other = good.clone();
    for c in &mut other.candidates {
        c.sources[0].source = "popular".into();
    }
    let third = r.rank(other).await.unwrap().into_inner();
    assert_ne!(third.scores, first.scores);
    for _ in 0..2 {
        let mut bad = good.clone();
        bad.candidates
            .push(candidate("nan", vec![f32::NAN, 0.0], "vector"));
        assert_invalid(r.rank(bad).await, "candidates[2].embedding[0]");
    }
    let mut bad_source = good.clone();
    bad_source.candidates[1].sources[0].source = String::new();
    assert_invalid(r.rank(bad_source).await, "candidates[1].sources[0]");

    // Items it was sent before can come by reference: the SHA-256 of the item's fields, sources left out.
    let by_ref = |c: &ranking::RankCandidate| ranking::RankCandidate {
        item_ref: ranking::EncodedCandidate::digest(&ranking::EncodedCandidate::item_part(
            &ranking::RankCandidate {
                sources: vec![],
                ..c.clone()
            },
        ))
        .to_vec(),
        sources: c.sources.clone(),
        ..Default::default()
    };
    let referred = ranking::RankRequest {
        candidates: good.candidates.iter().map(by_ref).collect(),
        ..good.clone()
    };
    let fourth = r.rank(referred.clone()).await.unwrap().into_inner();
    assert_eq!(fourth.scores, first.scores);
    assert!(fourth.unresolved_item_refs.is_empty());
    // One it never saw is listed by position, and nothing is scored.
    let mut unseen = referred.clone();
    unseen
        .candidates
        .push(by_ref(&candidate("never-sent", vec![0.5, 0.5], "cf")));
    let unresolved = r.rank(unseen).await.unwrap().into_inner();
    assert_eq!(unresolved.unresolved_item_refs, [2]);
    assert!(unresolved.scores.is_empty());
    // A reference of the wrong length, or one beside the item's fields, is refused.
    let mut short = referred.clone();
    short.candidates[1].item_ref.truncate(8);
    assert_invalid(r.rank(short).await, "candidates[1].item_ref");
    let mut both = referred;
    both.candidates[0].item_id = "near".into();
    assert_invalid(r.rank(both).await, "candidates[0].item_ref");
    t.platform.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_stops_serving_on_shutdown_and_releases_its_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        reco_ranking::build(&Default::default())
            .await
            .unwrap()
            .serve(listener, async {
                let _ = stopped.await;
            }),
    );
    reco_server::wait_serving(&addr.to_string(), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let mut h = HealthClient::new(ch(addr));
    let mut watch = h
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let _ = stop.send(());
    // Health flips to NOT_SERVING before the server drains, so watchers (load balancers) see it first; then the
    // watch ends instead of holding the draining server open.
    let last = watch
        .message()
        .await
        .unwrap()
        .expect("a last status before the watch ends");
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    server
        .await
        .unwrap()
        .expect("drained within the drain timeout");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the port is released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_over_400_kb_is_refused_naming_its_size_and_the_limit() {
    let t = TestPlatform::start().await;
    let mut f = FeatureServiceClient::new(ch(t.platform.addrs.feature));
    let big = reco_integration_tests::oversize_features();
    let err = f
        .put_item_features(feature::PutItemFeaturesRequest {
            items: vec![
                feature::Item {
                    item_id: "small".into(),
                    ..Default::default()
                },
                feature::Item {
                    item_id: "huge".into(),
                    features: Some(big),
                    ..Default::default()
                },
            ],
            feature_version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("items[1]") && err.message().contains("409600"),
        "{}",
        err.message()
    );
    // Nothing of the batch was written.
    let got = f
        .batch_get_item_features(feature::BatchGetItemFeaturesRequest {
            item_ids: vec!["small".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing_item_ids, ["small"]);
    t.platform.shutdown().await.unwrap();
}
