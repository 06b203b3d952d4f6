//! The feature service's hottest read: 200 items with their features and embeddings, as the gateway's hydrate
//! stage asks for them. Three steps timed apart: the store read (redb lookups and row decoding), the conversion
//! to the wire types, and the protobuf encoding of the response.
//!
//! `cargo bench -p reco-feature-store --bench items_200`

use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use reco_feature_store::{FeatureStore, RedbFeatureStore};
use reco_proto::feature::v1 as pb;
use reco_types::{FeatureValue, Features, Item, ItemId};

fn item(i: usize) -> Item {
    Item::parse(
        &format!("item{i}"),
        vec![format!("c{}", i % 8), "movie".into()],
        Features::try_from_iter(
            (0..8).map(|k| (format!("feature{k}"), FeatureValue::Float(k as f64 * 0.5))),
        )
        .unwrap(),
        (0..64).map(|d| (d as f32 * 0.37).sin()).collect(),
    )
    .unwrap()
}

fn items_200(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = RedbFeatureStore::open(&dir.path().join("features.redb")).unwrap();
    rt.block_on(store.put_items(None, (0..5_000).map(item).collect()))
        .unwrap();
    let ids: Vec<ItemId> = (0..200)
        .map(|i| ItemId::parse("item_id", format!("item{}", i * 23)).unwrap())
        .collect();

    c.bench_function("redb items(200) with embeddings", |b| {
        b.iter(|| rt.block_on(store.items(None, &ids, true)).unwrap())
    });
    c.bench_function("redb items(200) without embeddings", |b| {
        b.iter(|| rt.block_on(store.items(None, &ids, false)).unwrap())
    });
    let items = rt.block_on(store.items(None, &ids, true)).unwrap();
    c.bench_function("200 items to protobuf types", |b| {
        b.iter_batched(
            || items.clone(),
            |items| items.into_iter().map(pb::Item::from).collect::<Vec<_>>(),
            criterion::BatchSize::SmallInput,
        )
    });
    let response = pb::BatchGetItemFeaturesResponse {
        items: items.into_iter().map(Into::into).collect(),
        ..Default::default()
    };
    c.bench_function("encode a 200-item response", |b| {
        b.iter(|| response.encode_to_vec())
    });
}

criterion_group!(benches, items_200);
criterion_main!(benches);
