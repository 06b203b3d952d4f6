//! The shared test suite every VectorIndex backend must pass, on a fresh 4-dimensional cosine index.

use reco_types::{Embedding, ItemFilter, ItemId, Name};

use crate::{IndexedItem, VectorIndex, VectorIndexError};

fn item(id: &str, v: [f32; 4], cat: &str) -> IndexedItem {
    IndexedItem {
        item_id: ItemId::parse("item_id", id).unwrap(),
        vector: Embedding::parse("vector", v.to_vec()).unwrap(),
        categories: vec![Name::parse("category", cat).unwrap()],
    }
}

fn q(v: [f32; 4]) -> Embedding {
    Embedding::parse("vector", v.to_vec()).unwrap()
}

fn ids(hits: &[crate::Hit]) -> Vec<&str> {
    hits.iter().map(|h| h.item_id.as_str()).collect()
}

pub async fn run_all(index: &dyn VectorIndex) {
    assert!(
        index
            .search(&q([1.0, 0.0, 0.0, 0.0]), 10, &ItemFilter::default())
            .await
            .unwrap()
            .is_empty(),
        "empty index, empty answer"
    );
    index
        .upsert(vec![
            item("a", [1.0, 0.0, 0.0, 0.0], "x"),
            item("b", [0.9, 0.1, 0.0, 0.0], "y"),
            item("c", [0.0, 1.0, 0.0, 0.0], "x"),
            item("d", [0.0, 0.0, 1.0, 0.0], "y"),
            item("e", [-1.0, 0.0, 0.0, 0.0], "x"),
        ])
        .await
        .unwrap();
    let hits = index
        .search(&q([1.0, 0.0, 0.0, 0.0]), 3, &ItemFilter::default())
        .await
        .unwrap();
    assert_eq!(ids(&hits)[..2], ["a", "b"]);
    assert!(
        ["c", "d"].contains(&ids(&hits)[2]),
        "c and d tie at 0, e is opposite"
    );
    assert!(hits[0].score >= hits[1].score && hits[1].score >= hits[2].score);
    assert!(
        (hits[0].score - 1.0).abs() < 1e-5,
        "cosine of a vector with itself is 1"
    );

    let only_y = ItemFilter::parse(vec!["y".into()], vec![], vec![]).unwrap();
    assert_eq!(
        ids(&index
            .search(&q([1.0, 0.0, 0.0, 0.0]), 10, &only_y)
            .await
            .unwrap()),
        ["b", "d"]
    );
    let not_a = ItemFilter::parse(vec![], vec![], vec!["a".into()]).unwrap();
    assert_eq!(
        ids(&index
            .search(&q([1.0, 0.0, 0.0, 0.0]), 1, &not_a)
            .await
            .unwrap()),
        ["b"]
    );

    // Several excluded (one unknown): still k of the rest, best first.
    let not_ab =
        ItemFilter::parse(vec![], vec![], vec!["a".into(), "zz".into(), "b".into()]).unwrap();
    let mut got = ids(&index
        .search(&q([1.0, 0.0, 0.0, 0.0]), 2, &not_ab)
        .await
        .unwrap())
    .into_iter()
    .map(str::to_string)
    .collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, ["c", "d"], "c and d tie at 0, ahead of e");
    // Excluded ids and a category together.
    let x_not_a = ItemFilter::parse(vec!["x".into()], vec![], vec!["a".into()]).unwrap();
    assert_eq!(
        ids(&index
            .search(&q([1.0, 0.0, 0.0, 0.0]), 10, &x_not_a)
            .await
            .unwrap()),
        ["c", "e"]
    );

    // Upsert replaces.
    index
        .upsert(vec![item("e", [1.0, 0.0, 0.0, 0.0], "x")])
        .await
        .unwrap();
    let top2 = index
        .search(&q([1.0, 0.0, 0.0, 0.0]), 2, &ItemFilter::default())
        .await
        .unwrap();
    let mut got = ids(&top2);
    got.sort();
    assert_eq!(got, ["a", "e"]);

    assert_eq!(
        index
            .delete(&[
                ItemId::parse("i", "a").unwrap(),
                ItemId::parse("i", "zz").unwrap()
            ])
            .await
            .unwrap(),
        1
    );
    assert_eq!(index.stats().await.unwrap().count, 4);
    assert_eq!(
        ids(&index
            .search(&q([1.0, 0.0, 0.0, 0.0]), 1, &ItemFilter::default())
            .await
            .unwrap()),
        ["e"]
    );
    assert_eq!(
        index
            .vectors(&[ItemId::parse("i", "d").unwrap()])
            .await
            .unwrap()
            .len(),
        1
    );

    let err = index
        .search(
            &Embedding::parse("vector", vec![1.0; 3]).unwrap(),
            1,
            &ItemFilter::default(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            VectorIndexError::Dimension {
                got: 3,
                expected: 4,
                ..
            }
        ),
        "{err}"
    );
}
