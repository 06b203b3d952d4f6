//! Swapping indexes under load: searches running while a new version is staged and activated, and while the
//! serving index is rebuilt and swapped, all succeed and each sees one whole index, never a half-built one; and a
//! write racing a rebuild is never lost.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use reco_types::{Embedding, ItemFilter, ItemId, Name};
use reco_vector_index::{HnswIndex, HnswParams, IndexedItem, Metric, VectorIndex, VersionedIndex};

const DIM: usize = 16;

fn vector(rng: &mut SmallRng) -> Embedding {
    Embedding::parse("v", (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect()).unwrap()
}

fn items(prefix: &str, n: usize, seed: u64) -> Vec<IndexedItem> {
    let mut rng = SmallRng::seed_from_u64(seed);
    (0..n)
        .map(|i| IndexedItem {
            item_id: ItemId::parse("i", format!("{prefix}-{i}")).unwrap(),
            vector: vector(&mut rng),
            categories: vec![Name::parse("c", if i % 2 == 0 { "even" } else { "odd" }).unwrap()],
        })
        .collect()
}

fn versioned() -> Arc<VersionedIndex> {
    Arc::new(
        VersionedIndex::new(|_| {
            Ok(
                Arc::new(HnswIndex::new(DIM, Metric::Cosine, HnswParams::default())?)
                    as Arc<dyn VectorIndex>,
            )
        })
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn searches_during_activation_and_rebuild_all_see_one_whole_index() {
    let index = versioned();
    for chunk in items("old", 3000, 1).chunks(500) {
        index
            .for_write(None)
            .await
            .unwrap()
            .upsert(chunk.to_vec())
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let mut searchers = Vec::new();
    for s in 0..3u64 {
        let (index, stop, answers) = (index.clone(), stop.clone(), answers.clone());
        searchers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(100 + s);
            let odd_only = ItemFilter::parse(vec!["odd".into()], vec![], vec![]).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let filter = if rng.random_bool(0.3) {
                    odd_only.clone()
                } else {
                    ItemFilter::default()
                };
                let (_, serving) = index.serving();
                let hits = serving
                    .search(&vector(&mut rng), 50, &filter)
                    .await
                    .expect("no search fails");
                assert_eq!(hits.len(), 50, "a whole index answers k");
                let old = hits[0].item_id.as_str().starts_with("old-");
                assert!(
                    hits.iter().all(|h| h.item_id.as_str().starts_with(if old {
                        "old-"
                    } else {
                        "new-"
                    })),
                    "one answer, one index: {hits:?}"
                );
                answers[usize::from(!old)].fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }));
    }

    // Stage a new version in chunks while the old one serves, then activate it.
    for chunk in items("new", 3000, 2).chunks(250) {
        index
            .for_write(Some("v2"))
            .await
            .unwrap()
            .upsert(chunk.to_vec())
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    assert_eq!(index.activate("v2").await.unwrap(), "v1");
    // Remove 40% of it, then rebuild: the rebuilt graph carries no removed node.
    let gone: Vec<ItemId> = (0..1200)
        .map(|i| ItemId::parse("i", format!("new-{}", i * 2 + 1)).unwrap())
        .collect();
    index
        .for_write(None)
        .await
        .unwrap()
        .delete(&gone)
        .await
        .unwrap();
    let (_, before) = index.serving();
    assert!(before.garbage() > 0.3, "{}", before.garbage());
    assert!(
        index.rebuild_serving().await.unwrap(),
        "nothing wrote during the rebuild"
    );
    let (_, after) = index.serving();
    assert!(!Arc::ptr_eq(&before, &after));
    assert_eq!(after.garbage(), 0.0);
    assert_eq!(after.stats().await.unwrap().count, 1800);

    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for s in searchers {
        s.await.expect("no searcher panicked");
    }
    let [old, new] = &*answers;
    let (old, new) = (old.load(Ordering::Relaxed), new.load(Ordering::Relaxed));
    assert!(
        old > 0 && new > 0,
        "searches ran on both sides of the swap: {old} old, {new} new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_racing_a_rebuild_is_never_lost() {
    let index = versioned();
    index
        .for_write(None)
        .await
        .unwrap()
        .upsert(items("base", 2000, 3))
        .await
        .unwrap();
    let mut swapped = 0;
    for round in 0..10 {
        let writer = {
            let index = index.clone();
            tokio::spawn(async move {
                let mut item = items("late", 1, 10 + round).remove(0);
                item.item_id = ItemId::parse("i", format!("late-{round}")).unwrap();
                index
                    .for_write(None)
                    .await
                    .unwrap()
                    .upsert(vec![item])
                    .await
                    .unwrap();
            })
        };
        swapped += usize::from(index.rebuild_serving().await.unwrap());
        writer.await.unwrap();
        let id = ItemId::parse("i", format!("late-{round}")).unwrap();
        let (_, serving) = index.serving();
        assert_eq!(
            serving.vectors(&[id]).await.unwrap().len(),
            1,
            "round {round}: the write survived"
        );
    }
    eprintln!("{swapped} of 10 rebuilds swapped; the others saw a write and stood down");
}
