//! The whole platform with the feature service on DynamoDB (a moto server of the test's own): a snapshot loads,
//! the gateway recommends from it, real-time events land in the sequence, and a
//! row over DynamoDB's item limit is refused at the edge.

use reco_cli::platform::PlatformConfig;
use reco_integration_tests::{TestPlatform, ask};
use reco_proto::{
    common::v1::Event,
    feature::v1::{self as feature, feature_service_client::FeatureServiceClient},
    gateway::v1::StageStatus,
};
use reco_test_support::MotoServer;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_serves_recommendations_from_dynamodb() {
    let Some(moto) = MotoServer::start() else {
        return;
    };
    let mut cfg = PlatformConfig::default();
    cfg.feature.backend = reco_feature::Backend::Dynamodb;
    cfg.feature.dynamodb.aws.endpoint_url = Some(moto.endpoint());
    cfg.feature.dynamodb.aws.region = Some("us-east-1".into());
    cfg.feature.dynamodb.create_tables = true;
    let t = TestPlatform::start_with(cfg).await;

    let r = t.recommend(ask(&t.known_user)).await.unwrap();
    assert_eq!(r.items.len(), 10, "{r:?}");
    let stage = |n: &str| r.stages.iter().find(|s| s.stage == n).unwrap().clone();
    assert_eq!(
        stage("user_context.features").status,
        StageStatus::Ok as i32,
        "{:?}",
        stage("user_context.features")
    );
    assert!(
        stage("recall.cf").candidates_out > 0,
        "the pool came from DynamoDB"
    );

    let mut f = FeatureServiceClient::new(
        reco_server::channel(&t.platform.addrs.feature.to_string()).unwrap(),
    );
    f.append_events(feature::AppendEventsRequest {
        user_id: t.known_user.clone(),
        events: vec![Event {
            item_id: "fresh-click".into(),
            kind: "click".into(),
            timestamp_ms: 4_102_444_800_000,
            weight: 1.0,
            event_id: String::new(),
        }],
    })
    .await
    .unwrap();
    let ctx = f
        .get_user_context(feature::GetUserContextRequest {
            user_id: t.known_user.clone(),
            max_events: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ctx.recent_events[0].item_id, "fresh-click");
    assert!(!ctx.embedding.is_empty() && !ctx.recall_pool.is_empty());

    // Over the item limit: refused with the size and the limit, and nothing of the batch reaches the table.
    let big = reco_integration_tests::oversize_features();
    let err = f
        .put_user_features(feature::PutUserFeaturesRequest {
            users: vec![
                feature::User {
                    user_id: "dyn-small".into(),
                    ..Default::default()
                },
                feature::User {
                    user_id: "dyn-huge".into(),
                    features: Some(big),
                    ..Default::default()
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("409600"), "{}", err.message());
    let ctx = f
        .get_user_context(feature::GetUserContextRequest {
            user_id: "dyn-small".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ctx.found, "nothing of the refused batch was written");
    t.platform.shutdown().await.unwrap();
}
