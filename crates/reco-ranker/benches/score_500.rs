//! Scoring 500 candidates in process with the linear model, one core: the latency of one `rank` call, features
//! computed from the request as serving does (embedding cosine over 64 dimensions, source lookups, item features).
//! Run: `cargo bench -p reco-ranker --bench score_500` (`RECO_BENCH_N` calls, default 20000). The latency
//! distribution (p99 against the target) comes first, then criterion's estimate of the mean for tracking
//! regressions from run to run.

use std::time::Instant;

use hdrhistogram::Histogram;
use reco_ranker::{LinearModel, RankCandidate, RankInput, rank};
use reco_types::{Embedding, FeatureValue, Features, ItemId, Name, SourceHit, UserId};

fn main() {
    let n: usize = std::env::var("RECO_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let emb = |seed: usize| {
        Embedding::parse(
            "e",
            (0..64)
                .map(|j| (((seed * 31 + j * 17) % 97) as f32 / 97.0) - 0.5)
                .collect(),
        )
        .unwrap()
    };
    let name = |s: &str| Name::parse("n", s).unwrap();
    let mut user_features = Features::new();
    user_features.insert(
        "top_categories",
        FeatureValue::StringList(vec!["drama".into(), "comedy".into()]),
    );
    let candidates: Vec<RankCandidate> = (0..500)
        .map(|i| {
            let mut f = Features::new();
            f.insert("popularity", FeatureValue::Int((i * 7 % 300) as i64));
            f.insert("avg_rating", FeatureValue::Float(3.5));
            let mut sources = vec![SourceHit {
                source: name("cf"),
                rank: i as u32,
                score: 1.0 / (i as f32 + 1.0),
            }];
            if i % 3 == 0 {
                sources.push(SourceHit {
                    source: name("vector"),
                    rank: (i / 3) as u32,
                    score: 0.5,
                });
            }
            RankCandidate::new(
                ItemId::parse("i", format!("item-{i}")).unwrap(),
                f,
                vec![name(if i % 2 == 0 { "drama" } else { "action" })],
                sources,
                Some(emb(i)),
            )
        })
        .collect();
    let input = RankInput {
        user_id: UserId::parse("u", "bench").unwrap(),
        user_features,
        user_embedding: Some(emb(12345)),
        candidates,
        context: Default::default(),
    };
    let model = LinearModel::default_model();
    let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).unwrap();
    rt.block_on(async {
        for _ in 0..1000 {
            rank(&model, &input, 0).await.unwrap();
        }
        for _ in 0..n {
            let t = Instant::now();
            let out = rank(&model, &input, 0).await.unwrap();
            h.record(t.elapsed().as_nanos() as u64).unwrap();
            assert_eq!(out.items.len(), 500);
        }
    });
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "rank 500 candidates ({n} calls, one core), µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (target p99 < 2000)",
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        h.max() as f64 / 1000.0
    );

    let mut c = criterion::Criterion::default().configure_from_args();
    c.bench_function("rank 500 candidates, linear model", |b| {
        b.iter(|| rt.block_on(rank(&model, &input, 0)).unwrap())
    });
    c.final_summary();
}
