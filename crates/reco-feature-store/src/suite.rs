//! The shared test suite every FeatureStore backend must pass. Backends call [`run_all`] from their own tests,
//! with a fresh, empty store. Ids are unique per run so a shared server (moto) can host several runs.

use reco_types::{
    Candidate, Event, FeatureValue, FeatureVersion, Features, Item, ItemId, Name, User, UserId,
};

use crate::{FeatureStore, FeatureStoreError};

fn uid(s: &str) -> UserId {
    UserId::parse("user_id", s).unwrap()
}

fn iid(s: &str) -> ItemId {
    ItemId::parse("item_id", s).unwrap()
}

fn features(pairs: &[(&str, FeatureValue)]) -> Features {
    Features::try_from_iter(pairs.iter().map(|(k, v)| (k.to_string(), v.clone()))).unwrap()
}

fn candidate(item: &str, score: f32) -> Candidate {
    Candidate::from_source(iid(item), &Name::parse("source", "cf").unwrap(), 0, score)
}

/// Runs every check against `store`.
pub async fn run_all(store: &dyn FeatureStore) {
    unknown_user_is_empty(store).await;
    users_round_trip_and_merge(store).await;
    items_in_order_with_missing_left_out(store).await;
    sequences_keep_the_last_n(store).await;
    appends_are_idempotent_by_event_id(store).await;
    pools_and_popular(store).await;
    versions_are_isolated_until_activated(store).await;
}

pub async fn unknown_user_is_empty(store: &dyn FeatureStore) {
    let ctx = store
        .user_context(None, &uid("suite-nobody"), 0, 0)
        .await
        .unwrap();
    assert!(!ctx.found());
    assert!(ctx.recall_pool.is_empty() && ctx.recent_events.is_empty() && ctx.user.is_none());
}

pub async fn users_round_trip_and_merge(store: &dyn FeatureStore) {
    let u = uid("suite-u1");
    let user = User {
        user_id: u.clone(),
        features: features(&[
            ("age", FeatureValue::Int(31)),
            ("country", FeatureValue::Str("fr".into())),
        ]),
        embedding: Some(vec![0.5, 0.25].try_into().unwrap()),
    };
    store
        .put_users(None, vec![user.clone()], false)
        .await
        .unwrap();
    let got = store.user_context(None, &u, 0, 0).await.unwrap();
    assert_eq!(got.user.as_ref(), Some(&user));

    let patch = User {
        user_id: u.clone(),
        features: features(&[("age", FeatureValue::Int(32))]),
        embedding: None,
    };
    store.put_users(None, vec![patch], true).await.unwrap();
    let got = store
        .user_context(None, &u, 0, 0)
        .await
        .unwrap()
        .user
        .unwrap();
    assert_eq!(got.features.number("age"), Some(32.0));
    assert_eq!(
        got.features.get("country"),
        Some(&FeatureValue::Str("fr".into()))
    );
    assert_eq!(
        got.embedding, user.embedding,
        "a merge without embedding keeps the stored one"
    );
}

pub async fn items_in_order_with_missing_left_out(store: &dyn FeatureStore) {
    let items: Vec<Item> = (0..5)
        .map(|i| {
            Item::parse(
                &format!("suite-i{i}"),
                vec![format!("cat{}", i % 2)],
                features(&[("popularity", FeatureValue::Float(i as f64))]),
                vec![i as f32, 1.0],
            )
            .unwrap()
        })
        .collect();
    store.put_items(None, items.clone()).await.unwrap();
    let ask = [iid("suite-i3"), iid("suite-missing"), iid("suite-i1")];
    let got = store.items(None, &ask, true).await.unwrap();
    assert_eq!(got, vec![items[3].clone(), items[1].clone()]);
    let got = store.items(None, &ask[..1], false).await.unwrap();
    assert_eq!(got[0].embedding, None, "embeddings only when asked");
    assert_eq!(got[0].categories, items[3].categories);
}

pub async fn sequences_keep_the_last_n(store: &dyn FeatureStore) {
    let u = uid("suite-seq");
    for batch in 0..3 {
        let events: Vec<Event> = (0..4)
            .map(|i| {
                Event::parse(
                    &format!("suite-e{}", batch * 4 + i),
                    "click",
                    1_000 + (batch * 4 + i) as i64,
                    1.0,
                )
                .unwrap()
            })
            .collect();
        let len = store.append_events(&u, events, 10).await.unwrap();
        assert_eq!(len, ((batch + 1) * 4).min(10) as usize);
    }
    let ctx = store.user_context(None, &u, 3, 0).await.unwrap();
    let ids: Vec<_> = ctx
        .recent_events
        .iter()
        .map(|e| e.item_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["suite-e11", "suite-e10", "suite-e9"],
        "most recent first"
    );
    let ctx = store.user_context(None, &u, 0, 0).await.unwrap();
    assert_eq!(ctx.recent_events.len(), 10);
    assert_eq!(
        ctx.recent_events.last().unwrap().item_id.as_str(),
        "suite-e2"
    );
}

/// An event whose id the sequence holds is not appended again (a retry, a replayed stream), in one call or a
/// later one, alone or in a batch; events without an id are always appended.
pub async fn appends_are_idempotent_by_event_id(store: &dyn FeatureStore) {
    let (a, b) = (uid("suite-idem-a"), uid("suite-idem-b"));
    let ev = |item: &str, id: Option<&str>| {
        Event::parse(item, "click", 5_000, 1.0)
            .unwrap()
            .with_id(id.map(|i| reco_types::EventId::parse("event_id", i).unwrap()))
    };
    let first = vec![
        ev("i1", Some("e1")),
        ev("i2", Some("e2")),
        ev("i2", Some("e2")),
    ];
    assert_eq!(store.append_events(&a, first, 10).await.unwrap(), 2);
    let again = vec![ev("i1", Some("e1")), ev("i3", Some("e3")), ev("i9", None)];
    assert_eq!(store.append_events(&a, again, 10).await.unwrap(), 4);
    let lengths = store
        .append_events_batch(
            vec![
                (a.clone(), vec![ev("i3", Some("e3")), ev("i9", None)]),
                (b.clone(), vec![ev("i1", Some("e1"))]),
                (b.clone(), vec![ev("i1", Some("e1")), ev("i4", Some("e4"))]),
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(lengths, [5, 1, 2], "each user's length after their append");
    let items = |u: &UserId| {
        let u = u.clone();
        async move {
            let ctx = store.user_context(None, &u, 0, 0).await.unwrap();
            ctx.recent_events
                .iter()
                .map(|e| e.item_id.to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(items(&a).await, ["i9", "i9", "i3", "i2", "i1"]);
    assert_eq!(items(&b).await, ["i4", "i1"]);
    let ctx = store.user_context(None, &b, 0, 0).await.unwrap();
    assert_eq!(
        ctx.recent_events[0].id.as_ref().map(|i| i.as_str()),
        Some("e4"),
        "the id is kept with the event"
    );
}

pub async fn pools_and_popular(store: &dyn FeatureStore) {
    let u = uid("suite-pool");
    let pool = vec![
        candidate("suite-i1", 0.9),
        candidate("suite-i2", 0.5),
        candidate("suite-i0", 0.1),
    ];
    store
        .put_recall_pools(None, vec![(u.clone(), pool.clone())])
        .await
        .unwrap();
    let ctx = store.user_context(None, &u, 0, 2).await.unwrap();
    assert_eq!(ctx.recall_pool, pool[..2].to_vec());
    assert!(ctx.found());

    let popular = vec![
        candidate("suite-i4", 9.0),
        candidate("suite-i3", 8.0),
        candidate("suite-i2", 7.0),
    ];
    store.put_popular(None, popular.clone()).await.unwrap();
    assert_eq!(
        store.popular(None, 2, None).await.unwrap(),
        popular[..2].to_vec()
    );
    // suite-i4 and suite-i2 are in cat0 (written by the items check).
    let cat0 = store.popular(None, 10, Some("cat0")).await.unwrap();
    let ids: Vec<_> = cat0.iter().map(|c| c.item_id.as_str()).collect();
    assert_eq!(ids, ["suite-i4", "suite-i2"]);
}

pub async fn versions_are_isolated_until_activated(store: &dyn FeatureStore) {
    let (before, _) = store.versions().await.unwrap();
    let next = FeatureVersion::parse("feature_version", "suite-next").unwrap();
    let u = uid("suite-versioned");
    let user = |age| User {
        user_id: u.clone(),
        features: features(&[("age", FeatureValue::Int(age))]),
        embedding: None,
    };
    store.put_users(None, vec![user(1)], false).await.unwrap();
    store
        .put_users(Some(&next), vec![user(2)], false)
        .await
        .unwrap();

    let u2 = &u;
    let read_age = |v: Option<FeatureVersion>| async move {
        store
            .user_context(v.as_ref(), u2, 0, 0)
            .await
            .unwrap()
            .user
            .unwrap()
            .features
            .number("age")
    };
    assert_eq!(
        read_age(None).await,
        Some(1.0),
        "the active version is untouched by a load into another"
    );
    assert_eq!(
        read_age(Some(next.clone())).await,
        Some(2.0),
        "a request may read another version"
    );

    let previous = store.activate(&next).await.unwrap();
    assert_eq!(previous, before);
    assert_eq!(read_age(None).await, Some(2.0));
    let (active, all) = store.versions().await.unwrap();
    assert_eq!(active, next);
    assert_eq!(store.active_version().await.unwrap(), next);
    assert!(all.contains(&before) && all.contains(&next));

    let missing = FeatureVersion::parse("feature_version", "suite-missing").unwrap();
    let err = store
        .user_context(Some(&missing), &u, 0, 0)
        .await
        .unwrap_err();
    assert!(matches!(err, FeatureStoreError::UnknownVersion(_)), "{err}");
    // A version nothing was loaded into is not activated: every user would cold-start.
    let err = store.activate(&missing).await.unwrap_err();
    assert!(matches!(err, FeatureStoreError::NotLoaded(_)), "{err}");
    assert_eq!(
        store.active_version().await.unwrap(),
        next,
        "the active version stays"
    );
    // Activating the active one again is fine.
    assert_eq!(store.activate(&next).await.unwrap(), next);
    store.activate(&before).await.unwrap();
}
