//! The whole platform with vector recall on OpenSearch (the REST API stub of reco-test-support, which checks the
//! documented formats): the service creates and aliases a first index, a snapshot loads through `_bulk`, the
//! gateway's vector stage recalls from it, and a versioned sync writes a new index and moves the alias to it.

use reco_cli::{
    load::{LoadOptions, Targets, load_with},
    platform::PlatformConfig,
};
use reco_integration_tests::{TestPlatform, ask, small_data};
use reco_proto::gateway::v1::StageStatus;
use reco_test_support::OpenSearchStub;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_recalls_from_opensearch_and_a_sync_moves_the_alias() {
    let stub = OpenSearchStub::start();
    let mut cfg = PlatformConfig::default();
    cfg.vector.backend = reco_vector_recall::Backend::Opensearch;
    cfg.vector.opensearch.url = stub.url().to_string();
    let t = TestPlatform::start_with(cfg).await;
    assert_eq!(
        stub.aliases().get("reco-items-v1").map(String::as_str),
        Some("reco-items"),
        "a fresh service creates its first index and aliases it"
    );
    let loaded = stub.count("reco-items-v1");
    assert!(
        loaded > 100,
        "the snapshot's vectors went through _bulk: {loaded}"
    );

    let r = t.recommend(ask(&t.known_user)).await.unwrap();
    let stage = r
        .stages
        .iter()
        .find(|s| s.stage == "recall.vector")
        .expect("a vector stage");
    assert_eq!(stage.status, StageStatus::Ok as i32, "{stage:?}");
    assert!(stage.candidates_out > 0, "{stage:?}");

    let report = load_with(
        small_data(),
        &Targets::from(&t.platform.addrs),
        LoadOptions {
            version: Some("v2".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.activated.as_deref(), Some("v2"));
    let aliases = stub.aliases();
    assert_eq!(aliases.len(), 1, "{aliases:?}");
    assert_eq!(
        aliases.get("reco-items-v2").map(String::as_str),
        Some("reco-items")
    );
    assert_eq!(
        stub.count("reco-items-v2"),
        loaded,
        "the new version holds the whole snapshot"
    );
    // Past the result cache, which holds the first answer.
    let mut again = ask(&t.known_user);
    again.bypass_cache = true;
    let r = t.recommend(again).await.unwrap();
    let stage = r
        .stages
        .iter()
        .find(|s| s.stage == "recall.vector")
        .expect("a vector stage");
    assert!(stage.candidates_out > 0, "{stage:?}");
}
