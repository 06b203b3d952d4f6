//! The shared test suite every CacheStore backend must pass, on a fresh store. Ids are unique per run.

use std::time::Duration;

use reco_types::{Candidate, Event, ItemId, Name, Scene, UserId};

use crate::CacheStore;

fn uid(s: &str) -> UserId {
    UserId::parse("user_id", s).unwrap()
}

fn iid(s: &str) -> ItemId {
    ItemId::parse("item_id", s).unwrap()
}

fn scene(s: &str) -> Scene {
    Scene::parse("scene", s).unwrap()
}

/// Runs every check against `store`; `prefix` keeps keys apart on a shared server.
pub async fn run_all(store: &dyn CacheStore, prefix: &str) {
    results_round_trip_expire_and_invalidate(store, prefix).await;
    events_keep_the_last_n(store, prefix).await;
    events_are_pushed_once_by_id(store, prefix).await;
    rate_limit_allows_exactly_the_limit(store, prefix).await;
    frequency_caps(store, prefix).await;
    sessions(store, prefix).await;
}

pub async fn results_round_trip_expire_and_invalidate(store: &dyn CacheStore, p: &str) {
    let u = uid(&format!("{p}-u1"));
    let items = vec![Candidate::from_source(
        iid("i1"),
        &Name::parse("s", "cf").unwrap(),
        0,
        0.5,
    )];
    assert!(
        store
            .get_result(&u, &scene("home"))
            .await
            .unwrap()
            .is_none()
    );
    store
        .put_result(&u, &scene("home"), items.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    store
        .put_result(
            &u,
            &scene("related"),
            items.clone(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let got = store.get_result(&u, &scene("home")).await.unwrap().unwrap();
    assert_eq!(got.items, items);
    assert!(
        got.ttl_remaining > Duration::from_secs(50) && got.ttl_remaining <= Duration::from_secs(60)
    );

    assert_eq!(store.invalidate(&u, Some(&scene("home"))).await.unwrap(), 1);
    assert!(
        store
            .get_result(&u, &scene("home"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_result(&u, &scene("related"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.invalidate(&u, None).await.unwrap(), 1);
    assert!(
        store
            .get_result(&u, &scene("related"))
            .await
            .unwrap()
            .is_none()
    );

    store
        .put_result(&u, &scene("short"), items, Duration::from_millis(50))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        store
            .get_result(&u, &scene("short"))
            .await
            .unwrap()
            .is_none(),
        "expired after its TTL"
    );
}

/// An event whose id the recent list holds is not pushed again; events without an id always are.
pub async fn events_are_pushed_once_by_id(store: &dyn CacheStore, p: &str) {
    let u = uid(&format!("{p}-events-once"));
    let ev = |item: &str, id: Option<&str>| {
        Event::parse(item, "click", 1000, 1.0)
            .unwrap()
            .with_id(id.map(|i| reco_types::EventId::parse("event_id", i).unwrap()))
    };
    let first = vec![
        ev("a", Some("e1")),
        ev("b", Some("e2")),
        ev("b", Some("e2")),
    ];
    assert_eq!(store.push_events(&u, first, 10).await.unwrap(), 2);
    let again = vec![ev("a", Some("e1")), ev("c", None), ev("c", None)];
    assert_eq!(store.push_events(&u, again, 10).await.unwrap(), 4);
    assert_eq!(
        store.push_event(&u, ev("b", Some("e2")), 10).await.unwrap(),
        4
    );
    let got = store.recent_events(&u, 0).await.unwrap();
    let items: Vec<_> = got.iter().map(|e| e.item_id.as_str()).collect();
    assert_eq!(items, ["c", "c", "b", "a"], "most recent first");
    assert_eq!(got[2].id.as_ref().map(|i| i.as_str()), Some("e2"));
}

pub async fn events_keep_the_last_n(store: &dyn CacheStore, p: &str) {
    let u = uid(&format!("{p}-events"));
    for i in 0..7 {
        let e = Event::parse(&format!("e{i}"), "click", 1000 + i, 1.0).unwrap();
        let len = store.push_event(&u, e, 5).await.unwrap();
        assert_eq!(len, (i as usize + 1).min(5));
    }
    let got = store.recent_events(&u, 3).await.unwrap();
    let ids: Vec<_> = got.iter().map(|e| e.item_id.as_str()).collect();
    assert_eq!(ids, ["e6", "e5", "e4"]);
    assert_eq!(store.recent_events(&u, 0).await.unwrap().len(), 5);
    assert!(
        store
            .recent_events(&uid(&format!("{p}-nobody")), 0)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn rate_limit_allows_exactly_the_limit(store: &dyn CacheStore, p: &str) {
    let key = format!("{p}-rl");
    let window = Duration::from_secs(60);
    let mut allowed = 0;
    let mut last = None;
    for _ in 0..15 {
        let d = store.check_rate_limit(&key, 10, window, 1).await.unwrap();
        if d.allowed {
            allowed += 1;
        }
        last = Some(d);
    }
    assert_eq!(allowed, 10);
    let last = last.unwrap();
    assert!(!last.allowed);
    assert_eq!(last.remaining, 0);
    assert!(
        last.retry_after > Duration::ZERO && last.retry_after <= Duration::from_secs(6),
        "{last:?}"
    );
}

pub async fn frequency_caps(store: &dyn CacheStore, p: &str) {
    let u = uid(&format!("{p}-fc"));
    let (a, b, c) = (iid("fa"), iid("fb"), iid("fc"));
    let now = reco_types::now_ms();
    for _ in 0..3 {
        store
            .record_impressions(&u, std::slice::from_ref(&a), now)
            .await
            .unwrap();
    }
    store
        .record_impressions(&u, std::slice::from_ref(&b), now)
        .await
        .unwrap();
    // An impression older than the window does not count.
    store
        .record_impressions(&u, std::slice::from_ref(&c), now - 3_600_000)
        .await
        .unwrap();
    store
        .record_impressions(&u, std::slice::from_ref(&c), now - 3_600_000)
        .await
        .unwrap();
    store
        .record_impressions(&u, std::slice::from_ref(&c), now - 3_600_000)
        .await
        .unwrap();
    let capped = store
        .filter_capped(
            &u,
            &[a.clone(), b.clone(), c.clone()],
            3,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(capped, vec![a.clone()]);
    let capped = store
        .filter_capped(&u, &[a, b, c], 1, Duration::from_secs(24 * 3600))
        .await
        .unwrap();
    assert_eq!(capped.len(), 3);
}

pub async fn sessions(store: &dyn CacheStore, p: &str) {
    let id = format!("{p}-sess");
    assert!(store.get_session(&id).await.unwrap().is_none());
    store
        .put_session(&id, b"blob".to_vec(), Duration::from_secs(30))
        .await
        .unwrap();
    let s = store.get_session(&id).await.unwrap().unwrap();
    assert_eq!(s.data, b"blob");
    assert!(store.delete_session(&id).await.unwrap());
    assert!(!store.delete_session(&id).await.unwrap());
    assert!(store.get_session(&id).await.unwrap().is_none());
}
