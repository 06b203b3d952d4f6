//! k-NN search on the embedded index: 100 nearest of 20,000 items of 64 dimensions (the design's k and
//! dimension), without a filter and with a selective category filter.
//!
//! `cargo bench -p reco-vector-index --bench knn`

use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::StdRng};
use reco_types::{Embedding, ItemFilter, ItemId, Name};
use reco_vector_index::{ExactIndex, IndexedItem, Metric, VectorIndex};

fn vector(rng: &mut StdRng) -> Embedding {
    Embedding::parse("v", (0..64).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap()
}

fn knn(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let index = ExactIndex::new(64, Metric::Cosine);
    let items: Vec<IndexedItem> = (0..20_000)
        .map(|i| IndexedItem {
            item_id: ItemId::parse("i", format!("item{i}")).unwrap(),
            vector: vector(&mut rng),
            categories: vec![Name::parse("c", format!("cat{}", i % 50)).unwrap()],
        })
        .collect();
    rt.block_on(index.upsert(items)).unwrap();
    let queries: Vec<Embedding> = (0..64).map(|_| vector(&mut rng)).collect();
    let none = ItemFilter::default();
    let one_category = ItemFilter {
        include_categories: vec![Name::parse("c", "cat7").unwrap()],
        ..Default::default()
    };
    let mut q = 0;
    c.bench_function("exact k=100 of 20k x 64d", |b| {
        b.iter(|| {
            q = (q + 1) % queries.len();
            rt.block_on(index.search(&queries[q], 100, &none)).unwrap()
        })
    });
    c.bench_function("exact k=100 of 20k x 64d, 2% pass the filter", |b| {
        b.iter(|| {
            q = (q + 1) % queries.len();
            rt.block_on(index.search(&queries[q], 100, &one_category))
                .unwrap()
        })
    });
}

criterion_group!(benches, knn);
criterion_main!(benches);
