//! The gateway's merge and re-rank on a realistic request: four recall lists (CF 200, vector 100, graph 100,
//! popular 50) overlapping by a third, 50 seen items, quotas, cut to 500; then the diversity cut to 10.
//!
//! `cargo bench -p reco-gateway --bench merge`

use std::collections::{HashMap, HashSet};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use reco_gateway::merge::{MergePolicy, Ranked, diversify, merge};
use reco_types::{Candidate, ItemId, Name};

fn list(source: &str, n: usize, offset: usize) -> Vec<Candidate> {
    let source = Name::parse("s", source).unwrap();
    (0..n)
        .map(|r| {
            let id = ItemId::parse("i", format!("item{}", offset + r)).unwrap();
            Candidate::from_source(id, &source, r as u32, 1.0 / (1.0 + r as f32))
        })
        .collect()
}

fn merge_and_diversify(c: &mut Criterion) {
    let lists = vec![
        list("cf", 200, 0),
        list("vector", 100, 130),
        list("graph", 100, 200),
        list("popular", 50, 0),
    ];
    let seen: HashSet<ItemId> = (0..50)
        .map(|i| ItemId::parse("i", format!("item{}", i * 7)).unwrap())
        .collect();
    let blocked = HashSet::new();
    let policy = MergePolicy {
        max_candidates: 500,
        max_share: HashMap::from([("popular".to_string(), 0.2)]),
        min_share: HashMap::from([("vector".to_string(), 0.1)]),
    };
    c.bench_function("merge 450 candidates from 4 sources", |b| {
        b.iter_batched(
            || lists.clone(),
            |lists| merge(lists, &seen, &blocked, &policy, &mut Vec::new()),
            BatchSize::SmallInput,
        )
    });
    let merged = merge(lists.clone(), &seen, &blocked, &policy, &mut Vec::new());
    let ranked: Vec<Ranked> = merged
        .iter()
        .enumerate()
        .map(|(i, m)| Ranked {
            item_id: m.item_id.clone(),
            score: m.fused,
            category: Some(Name::parse("c", format!("cat{}", i % 6)).unwrap()),
        })
        .collect();
    c.bench_function("diversify to 10, 3 per category", |b| {
        b.iter_batched(
            || ranked.clone(),
            |ranked| diversify(ranked, 10, 3, Some(&mut Vec::new())),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, merge_and_diversify);
criterion_main!(benches);
