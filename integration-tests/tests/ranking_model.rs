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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(reco_ranking::build(&cfg).unwrap().serve(listener, async {
        let _ = stopped.await;
    }));
    reco_server::wait_serving(&addr, Duration::from_secs(5))
        .await
        .unwrap();
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
