//! Item batches answered from encoded items (the default) read exactly as batches built from the store, and show
//! writes and version switches made through the service at once.

use std::{sync::Arc, time::Duration};

use reco_feature::{Backend, Config};
use reco_feature_store::MemoryFeatureStore;
use reco_proto::feature::v1::{
    ActivateVersionRequest, BatchGetItemFeaturesRequest, BatchGetItemFeaturesResponse, Item,
    PutItemFeaturesRequest, feature_service_client::FeatureServiceClient,
};

type Client = FeatureServiceClient<reco_server::TracedChannel>;

/// A feature service on the memory backend; `item_cache_ttl_ms` 0 turns the encoded items off.
async fn start(item_cache_ttl_ms: u64) -> (Client, tokio::sync::oneshot::Sender<()>) {
    let config = Config {
        backend: Backend::Memory,
        item_cache_ttl_ms,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = reco_feature::server(
        &config,
        reco_feature::api(&config, Arc::new(MemoryFeatureStore::new())),
    );
    tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    reco_server::wait_serving(&addr, Duration::from_secs(10))
        .await
        .unwrap();
    (
        FeatureServiceClient::new(reco_server::channel(&addr).unwrap()),
        stop,
    )
}

fn item(id: &str, rating: i64) -> Item {
    Item {
        item_id: id.into(),
        categories: vec!["Drama".into()],
        features: Some(reco_proto::common::v1::Features {
            values: [(
                "rating_count".to_string(),
                reco_proto::common::v1::FeatureValue {
                    kind: Some(reco_proto::common::v1::feature_value::Kind::IntValue(
                        rating,
                    )),
                },
            )]
            .into(),
        }),
        embedding: vec![0.25, -0.5, rating as f32, 1.0],
    }
}

async fn put(c: &mut Client, version: &str, items: Vec<Item>) {
    c.put_item_features(PutItemFeaturesRequest {
        items,
        feature_version: version.into(),
    })
    .await
    .unwrap();
}

async fn batch(
    c: &mut Client,
    ids: &[&str],
    include_embeddings: bool,
    version: &str,
) -> BatchGetItemFeaturesResponse {
    c.batch_get_item_features(BatchGetItemFeaturesRequest {
        item_ids: ids.iter().map(|s| s.to_string()).collect(),
        feature_version: version.into(),
        include_embeddings,
    })
    .await
    .unwrap()
    .into_inner()
}

fn ratings(r: &BatchGetItemFeaturesResponse) -> Vec<(String, i64)> {
    r.items
        .iter()
        .map(|i| {
            let v = &i.features.as_ref().unwrap().values["rating_count"];
            match v.kind {
                Some(reco_proto::common::v1::feature_value::Kind::IntValue(n)) => {
                    (i.item_id.clone(), n)
                }
                ref other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_items_answer_as_the_store_does() {
    let (mut cached, _stop_cached) = start(60_000).await;
    let (mut plain, _stop_plain) = start(0).await;
    for c in [&mut cached, &mut plain] {
        put(c, "", (0..50).map(|i| item(&format!("i{i}"), i)).collect()).await;
    }
    let ids = ["i7", "nope", "i3", "i49", "i3", "gone"];
    for include_embeddings in [true, false, true] {
        let (a, b) = (
            batch(&mut cached, &ids, include_embeddings, "").await,
            batch(&mut plain, &ids, include_embeddings, "").await,
        );
        assert_eq!(a, b, "include_embeddings {include_embeddings}");
        assert_eq!(
            a.items
                .iter()
                .map(|i| i.item_id.as_str())
                .collect::<Vec<_>>(),
            ["i7", "i3", "i49", "i3"],
            "in the order asked, unknown ones left out"
        );
        assert_eq!(a.missing_item_ids, ["nope", "gone"]);
        assert!(
            a.items
                .iter()
                .all(|i| i.embedding.is_empty() != include_embeddings)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_version_switches_show_at_once() {
    let (mut c, _stop) = start(60_000).await;
    put(&mut c, "", vec![item("a", 1), item("b", 2)]).await;
    let active = batch(&mut c, &["a", "b"], true, "").await;
    assert_eq!(ratings(&active), [("a".into(), 1), ("b".into(), 2)]);

    // A write through the service replaces the cached item.
    put(&mut c, "", vec![item("a", 10)]).await;
    assert_eq!(
        ratings(&batch(&mut c, &["a", "b"], true, "").await),
        [("a".into(), 10), ("b".into(), 2)]
    );

    // A new version, loaded and then activated: read by default only once active; asked for by name before.
    put(&mut c, "v2", vec![item("a", 100), item("c", 300)]).await;
    assert_eq!(
        ratings(&batch(&mut c, &["a", "c"], true, "").await),
        [("a".into(), 10)]
    );
    assert_eq!(
        ratings(&batch(&mut c, &["a", "c"], true, "v2").await),
        [("a".into(), 100), ("c".into(), 300)]
    );
    c.activate_version(ActivateVersionRequest {
        feature_version: "v2".into(),
    })
    .await
    .unwrap();
    let switched = batch(&mut c, &["a", "b", "c"], true, "").await;
    assert_eq!(switched.feature_version, "v2");
    assert_eq!(ratings(&switched), [("a".into(), 100), ("c".into(), 300)]);
    assert_eq!(switched.missing_item_ids, ["b"]);
}
