//! A model trained from interactions, served by the ranking service, and replaced on disk while requests flow.

use std::time::Duration;

use reco_proto::{
    common::v1::SourceHit,
    ranking::v1::{ModelInfoRequest, RankCandidate, RankRequest, ranking_client::RankingClient},
};

fn rank_request() -> RankRequest {
    RankRequest {
        user_id: "u1".into(),
        candidates: (0..50)
            .map(|i| RankCandidate {
                item_id: format!("i{i}"),
                sources: vec![SourceHit {
                    source: "cf".into(),
                    rank: i,
                    score: 1.0 / (i as f32 + 1.0),
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// Starts a ranking service with `cfg` on a free port and waits until it serves; send on the sender to stop it.
async fn start(
    cfg: &reco_ranking::Config,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), reco_server::ServerError>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        reco_ranking::build(cfg)
            .await
            .unwrap()
            .serve(listener, async {
                let _ = stopped.await;
            }),
    );
    reco_server::wait_serving(&addr, Duration::from_secs(5))
        .await
        .unwrap();
    (addr, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trained_model_serves_and_is_replaced_without_dropping_a_request() {
    let data = reco_data::generate(&reco_data::GenConfig {
        users: 300,
        items: 200,
        seed: 3,
        ..Default::default()
    });
    let first = reco_cli::train::train_on(&data, 3, "trained-a").unwrap();
    assert!(first.auc > 0.6, "AUC {:.3}", first.auc);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.json");
    first.model.save(&path).unwrap();

    let cfg = reco_ranking::Config {
        model: Some(path.clone()),
        reload_ms: 20,
        ..Default::default()
    };
    let (addr, stop, server) = start(&cfg).await;
    let mut client = RankingClient::new(reco_server::channel(&addr).unwrap());
    let version = |c: &mut RankingClient<_>| {
        let mut c = c.clone();
        async move {
            c.model_info(ModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .model_version
        }
    };
    assert_eq!(version(&mut client).await, "trained-a");
    assert_eq!(
        client
            .rank(rank_request())
            .await
            .unwrap()
            .into_inner()
            .model_version,
        "trained-a"
    );

    // Requests keep flowing while the file is replaced.
    let traffic = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut versions = std::collections::BTreeSet::new();
            for _ in 0..200 {
                let r = client
                    .clone()
                    .rank(rank_request())
                    .await
                    .expect("no request fails during a reload");
                assert_eq!(r.get_ref().scores.len(), 50);
                versions.insert(r.into_inner().model_version);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            versions
        })
    };
    let second = reco_cli::train::train_on(&data, 4, "trained-bb").unwrap();
    second.model.save(&path).unwrap();
    let mut swapped = false;
    for _ in 0..250 {
        if version(&mut client).await == "trained-bb" {
            swapped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(swapped, "the new model file was picked up");
    let seen = traffic.await.unwrap();
    assert!(
        seen.iter().all(|v| v == "trained-a" || v == "trained-bb"),
        "{seen:?}"
    );

    // A broken file is refused and the serving model stays.
    std::fs::write(&path, "{\"version\": \"half a model\"").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(version(&mut client).await, "trained-bb");
    client.rank(rank_request()).await.unwrap();

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// The ranking service on a SageMaker endpoint (moto's runtime with canned answers): scores come from the
/// endpoint, defaulted features are reported, and an endpoint that answers the wrong count is UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ranking_service_scores_through_a_sagemaker_endpoint() {
    let Some(moto) = reco_test_support::MotoServer::start() else {
        return;
    };
    let scores: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 / 50.0).collect();
    let canned = serde_json::json!({
        "results": [
            {"Body": serde_json::json!({"predictions": scores}).to_string(), "ContentType": "application/json"},
            {"Body": "[0.5, 0.5]", "ContentType": "application/json"},
        ],
        "region": "us-east-1",
    });
    assert_eq!(
        moto.post_json(
            "/moto-api/static/sagemaker/endpoint-results",
            &canned.to_string()
        ),
        201
    );
    let mut cfg = reco_ranking::Config {
        backend: reco_ranking::Backend::Sagemaker,
        ..Default::default()
    };
    cfg.sagemaker.endpoint = "ranker".into();
    cfg.sagemaker.features = vec!["cf_score".into(), "log_popularity".into()];
    cfg.sagemaker.aws.endpoint_url = Some(moto.endpoint());
    cfg.sagemaker.aws.region = Some("us-east-1".into());
    let (addr, stop, server) = start(&cfg).await;
    let mut client = RankingClient::new(reco_server::channel(&addr).unwrap());
    let r = client
        .rank(RankRequest {
            top_n: 3,
            ..rank_request()
        })
        .await
        .unwrap()
        .into_inner();
    let best: Vec<_> = r.scores.iter().map(|s| s.item_id.as_str()).collect();
    // The endpoint scored i(k) = (37k mod 50) / 50: the best are 49/50 (k=27), 48/50 (k=4), 47/50 (k=31).
    assert_eq!(best, ["i27", "i4", "i31"]);
    assert_eq!(r.model_version, "sagemaker:ranker");
    assert_eq!(
        r.missing_features.get("log_popularity"),
        Some(&50),
        "no popularity: defaulted and counted"
    );
    let info = client
        .model_info(ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.backend, "sagemaker");

    // Another body (moto answers a repeated body with the same result): the next canned answer has 2 scores.
    let mut other = rank_request();
    other.candidates[0].sources[0].score = 0.123;
    let err = client.rank(other).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("2 scores for 50 candidates"),
        "{err:?}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
