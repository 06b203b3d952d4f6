//! The OpenSearch backend against the stub of the OpenSearch REST API in reco-test-support (it checks requests
//! against OpenSearch's documented formats and answers as OpenSearch does): the shared suite, the mapping, an
//! alias swap through the versioned index, SigV4 signing.

use std::{sync::Arc, time::Duration};

use reco_test_support::OpenSearchStub as Stub;
use reco_types::{Embedding, ItemFilter, ItemId, Name};
use reco_vector_index::{
    Engine, HnswParams, IndexedItem, Metric, OpenSearchCluster, OpenSearchConfig, VectorIndex,
    VersionedIndex,
};

fn config(stub: &Stub, dimension: usize, aws: bool) -> OpenSearchConfig {
    OpenSearchConfig {
        url: stub.url().to_string(),
        alias: "reco-items".into(),
        dimension,
        metric: Metric::Cosine,
        engine: Engine::Faiss,
        params: HnswParams::default(),
        aws: aws.then(|| reco_aws::AwsSettings::local(stub.url())),
        service: "es".into(),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn opensearch_index_passes_the_shared_suite_on_the_stub() {
    let stub = Stub::start();
    let cluster = OpenSearchCluster::connect(config(&stub, 4, false))
        .await
        .unwrap();
    let index = cluster.version("v1").await.unwrap();
    assert_eq!(index.name(), "reco-items-v1");
    reco_vector_index::suite::run_all(&index).await;
    let mapping = stub.mapping("reco-items-v1").unwrap();
    let method = &mapping["mappings"]["properties"]["embedding"]["method"];
    assert_eq!(method["engine"], "faiss");
    assert_eq!(method["space_type"], "cosinesimil");
    assert_eq!(method["parameters"]["m"], 16);
    assert_eq!(method["parameters"]["ef_construction"], 256);
    assert_eq!(
        mapping["mappings"]["properties"]["embedding"]["dimension"],
        4
    );
}

#[tokio::test]
async fn activation_swaps_the_alias_and_signs_with_sigv4() {
    let stub = Stub::start();
    let cluster = OpenSearchCluster::connect(config(&stub, 2, true))
        .await
        .unwrap();
    assert_eq!(cluster.serving_version().await.unwrap(), None);
    let first = cluster.version("v1").await.unwrap();
    let versions = {
        let c = cluster.clone();
        VersionedIndex::serving_from("v1", Arc::new(first), move |v| {
            Ok(Arc::new(c.lazy_version(v)))
        })
        .unwrap()
    };
    // v1 serves; promote it so the alias exists, as a fresh deployment does.
    versions.serving().1.promote().await.unwrap();
    assert_eq!(
        cluster.serving_version().await.unwrap().as_deref(),
        Some("v1")
    );

    // Staged through the versioned index, as the service does: created on its first write.
    let next = versions.for_write(Some("v2")).await.unwrap();
    let item = |id: &str, v: Vec<f32>| IndexedItem {
        item_id: ItemId::parse("i", id).unwrap(),
        vector: Embedding::parse("v", v).unwrap(),
        categories: vec![Name::parse("c", "x").unwrap()],
    };
    next.upsert(vec![item("a", vec![1.0, 0.0]), item("b", vec![0.0, 1.0])])
        .await
        .unwrap();
    drop(next);
    assert_eq!(versions.activate("v2").await.unwrap(), "v1");
    assert_eq!(
        cluster.serving_version().await.unwrap().as_deref(),
        Some("v2"),
        "the alias moved in one call"
    );
    let next = versions.serving().1;
    {
        let aliases = stub.aliases();
        assert_eq!(
            aliases.len(),
            1,
            "the alias is on one index only: {aliases:?}"
        );
        for (method, path, auth) in &stub.requests() {
            assert!(
                auth.starts_with("AWS4-HMAC-SHA256 ") && auth.contains("/es/aws4_request"),
                "{method} {path} is SigV4-signed for es: {auth:?}"
            );
        }
    }
    let hits = next
        .search(
            &Embedding::parse("q", vec![1.0, 0.1]).unwrap(),
            1,
            &ItemFilter::default(),
        )
        .await
        .unwrap();
    assert_eq!(hits[0].item_id.as_str(), "a");
    assert!(
        (hits[0].score - 0.995).abs() < 1e-3,
        "OpenSearch's 1 + cos read back as cos: {}",
        hits[0].score
    );

    let err = cluster
        .version("v2")
        .await
        .unwrap()
        .search(
            &Embedding::parse("q", vec![1.0]).unwrap(),
            1,
            &ItemFilter::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("1 dimensions, the index has 2"),
        "{err}"
    );
}
