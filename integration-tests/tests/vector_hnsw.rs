//! The vector-recall service on its default HNSW index: a versioned load is saved when activated and loaded again
//! by a restarted service, so a restart serves what was loaded without a new sync.

use std::time::Duration;

use reco_proto::vector_recall::v1::{self as vr, vector_recall_client::VectorRecallClient};

async fn start(
    dir: &std::path::Path,
) -> (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cfg = reco_vector_recall::Config {
        dimension: 4,
        data_dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = reco_vector_recall::build(&cfg).await.unwrap();
    let task = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .map_err(anyhow::Error::from)
    });
    reco_server::wait_serving(&addr, Duration::from_secs(5))
        .await
        .unwrap();
    (addr, stop, task)
}

fn client(addr: &str) -> VectorRecallClient<reco_server::TracedChannel> {
    VectorRecallClient::new(reco_server::channel(addr).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activated_index_is_saved_and_served_again_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, task) = start(dir.path()).await;
    let mut c = client(&addr);
    let stats = c.stats(vr::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.backend, "hnsw", "HNSW is the embedded default");
    let items = (0..300)
        .map(|i| vr::ItemVector {
            item_id: format!("i{i}"),
            vector: vec![
                (i as f32).cos(),
                (i as f32).sin(),
                0.5,
                (i % 7) as f32 / 7.0,
            ],
            categories: vec![if i % 2 == 0 { "even" } else { "odd" }.into()],
        })
        .collect();
    c.upsert(vr::UpsertRequest {
        items,
        index_version: "v2".into(),
    })
    .await
    .unwrap();
    c.activate_index(vr::ActivateIndexRequest {
        index_version: "v2".into(),
    })
    .await
    .unwrap();
    let graph = dir.path().join("index.usearch");
    let started = std::time::Instant::now();
    while !graph.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the activated index was not saved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The meta file is renamed last: wait for both.
    while !dir.path().join("index.meta.json").exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ask = vr::SearchRequest {
        query: Some(vr::search_request::Query::Vector(
            reco_proto::common::v1::Vector {
                values: vec![1.0, 0.0, 0.5, 0.0],
            },
        )),
        k: 10,
        ..Default::default()
    };
    let before = c.search(ask.clone()).await.unwrap().into_inner().hits;
    assert_eq!(before.len(), 10);
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    let (addr, stop, task) = start(dir.path()).await;
    let mut c = client(&addr);
    let stats = c.stats(vr::StatsRequest {}).await.unwrap().into_inner();
    assert_eq!(stats.count, 300, "{stats:?}");
    let after = c.search(ask).await.unwrap().into_inner().hits;
    let ids = |h: &[vr::Hit]| h.iter().map(|h| h.item_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&before), ids(&after), "the same graph answers the same");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
