//! The whole platform with graph recall on FalkorDB (a server of the test's own, through the same openCypher the
//! Neptune backend sends): the snapshot's edges load, the gateway's graph stage recalls from it, a hostile id
//! round-trips as data, and bad input is refused.

use reco_cli::platform::PlatformConfig;
use reco_integration_tests::{TestPlatform, ask};
use reco_proto::{
    gateway::v1::StageStatus,
    graph_recall::v1::{self as graph, graph_recall_client::GraphRecallClient},
};
use reco_test_support::RedisServer;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_recalls_from_falkordb() {
    let Some(falkor) = RedisServer::start_falkordb() else {
        return;
    };
    let mut cfg = PlatformConfig::default();
    cfg.graph.backend = reco_graph_recall::Backend::Falkordb;
    cfg.graph.cypher.falkordb_url = falkor.url();
    cfg.graph.cypher.query_timeout_ms = 5_000;
    let t = TestPlatform::start_with(cfg).await;

    let mut g =
        GraphRecallClient::new(reco_server::channel(&t.platform.addrs.graph.to_string()).unwrap());
    let stats = g.stats(graph::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.backend, "falkordb");
    assert!(
        stats.edges > 1000,
        "the snapshot's edges are in FalkorDB: {stats:?}"
    );

    let mut req = ask(&t.known_user);
    req.include_graph = true;
    let r = t.recommend(req).await.unwrap();
    let stage = r
        .stages
        .iter()
        .find(|s| s.stage == "recall.graph")
        .expect("a graph stage");
    assert_eq!(stage.status, StageStatus::Ok as i32, "{stage:?}");
    assert!(stage.candidates_out > 0, "{stage:?}");

    let hostile = reco_graph_store::suite::HOSTILE;
    let edge = |src: &str, dst: &str, kind: graph::EdgeKind| graph::Edge {
        src: src.into(),
        dst: dst.into(),
        kind: kind as i32,
        weight: 1.0,
    };
    let added = g
        .add_edges(graph::AddEdgesRequest {
            edges: vec![
                edge(hostile, "f1", graph::EdgeKind::Follows),
                edge("f1", "f2", graph::EdgeKind::Follows),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.added, 2);
    let fof = g
        .recall(graph::RecallRequest {
            user_id: hostile.into(),
            strategies: vec![graph::Strategy::FriendsOfFriends as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = fof.candidates.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["f2"]);

    let unknown = g
        .recall(graph::RecallRequest {
            user_id: "nobody-at-all".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        unknown.candidates.is_empty(),
        "cold start is an empty answer"
    );
    let bad = g
        .recall(graph::RecallRequest {
            user_id: "x".repeat(10_000),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("user_id"), "{bad:?}");
}
