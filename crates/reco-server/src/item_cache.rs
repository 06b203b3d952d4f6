//! A cache of what a service makes of an item (the gateway: the hydrated item; the feature service: the item's
//! encoded answer), kept for a TTL. Item features change slowly and most items recur from request to request.
//!
//! A map under one lock rather than moka: a request looks up its ~200 items at once, and under one read lock that
//! costs a fraction of moka's per-entry bookkeeping (which showed as 9% of the gateway's CPU at 300 requests/s).
//! Expiry is checked on read; the map is swept of expired entries when it reaches its capacity, and emptied if that
//! is not enough.
//!
//! Each entry lives for a lifetime drawn between three quarters of the TTL and the TTL. Items are cached in bursts
//! (a service's first requests bring in most of the catalogue within a second), and with one fixed lifetime they
//! would all expire within that same second, sending a burst of misses to the store: that burst showed as the p99
//! of the feature service's item batches. Spread over a quarter of the TTL, the misses are a trickle.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use rand::Rng;
use reco_types::ItemId;
use tokio::time::Instant;

/// Values of type `V` (what a service makes of an item) by item id.
pub struct ItemCache<V> {
    ttl: Duration,
    capacity: usize,
    /// Each entry with the instant it expires.
    map: RwLock<foldhash::HashMap<ItemId, (Instant, Arc<V>)>>,
}

impl<V> ItemCache<V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            map: RwLock::new(foldhash::HashMap::default()),
        }
    }

    /// Looks every id up under one read lock, in order: `each` gets the id and its live entry, or None.
    pub fn get_many<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a ItemId>,
        mut each: impl FnMut(&'a ItemId, Option<Arc<V>>),
    ) {
        let now = Instant::now();
        let map = self.map.read().expect("item cache lock");
        for id in ids {
            let live = map.get(id).filter(|(expires, _)| now < *expires);
            each(id, live.map(|(_, item)| item.clone()));
        }
    }

    pub fn insert_many(&self, items: impl IntoIterator<Item = (ItemId, Arc<V>)>) {
        let now = Instant::now();
        let mut map = self.map.write().expect("item cache lock");
        let mut rng = rand::rng();
        for (id, item) in items {
            if map.len() >= self.capacity && !map.contains_key(&id) {
                map.retain(|_, (expires, _)| now < *expires);
                if map.len() >= self.capacity {
                    map.clear();
                }
            }
            let lifetime = self.ttl.mul_f64(1.0 - rng.random_range(0.0..0.25));
            map.insert(id, (now + lifetime, item));
        }
    }

    /// Drops the entries of `ids` (their items were written).
    pub fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a ItemId>) {
        let mut map = self.map.write().expect("item cache lock");
        for id in ids {
            map.remove(id);
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.map.write().expect("item cache lock").clear();
    }

    /// Entries held, live or expired.
    pub fn len(&self) -> usize {
        self.map.read().expect("item cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use reco_proto::feature::v1::Item;

    use super::*;

    fn item(id: &str) -> (ItemId, Arc<Item>) {
        (
            ItemId::parse("i", id).unwrap(),
            Arc::new(Item {
                item_id: id.into(),
                ..Default::default()
            }),
        )
    }

    fn lookup(c: &ItemCache<Item>, ids: &[&str]) -> (Vec<String>, Vec<String>) {
        let ids: Vec<ItemId> = ids.iter().map(|i| ItemId::parse("i", i).unwrap()).collect();
        let mut hits = Vec::new();
        let mut missing = Vec::new();
        c.get_many(&ids, |id, found| match found {
            Some(item) => {
                assert_eq!(id.as_str(), item.item_id);
                hits.push(item.item_id.clone());
            }
            None => missing.push(id.to_string()),
        });
        (hits, missing)
    }

    #[tokio::test(start_paused = true)]
    async fn entries_live_for_the_ttl() {
        let c = ItemCache::new(Duration::from_secs(30), 100);
        c.insert_many([item("a"), item("b")]);
        assert_eq!(
            lookup(&c, &["a", "x", "b"]),
            (vec!["a".into(), "b".into()], vec!["x".into()])
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        c.insert_many([item("b")]);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(
            lookup(&c, &["a", "b"]),
            (vec!["b".into()], vec!["a".into()]),
            "a expired, b was refreshed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn entries_cached_together_expire_spread_over_the_last_quarter_of_the_ttl() {
        let c = ItemCache::new(Duration::from_secs(40), 1_000);
        let names: Vec<String> = (0..400).map(|i| format!("i{i}")).collect();
        c.insert_many(names.iter().map(|n| item(n)));
        let ids: Vec<&str> = names.iter().map(String::as_str).collect();
        let live = |c: &ItemCache<Item>| lookup(c, &ids).0.len();
        tokio::time::advance(Duration::from_millis(29_990)).await;
        assert_eq!(live(&c), 400, "none expires before 3/4 of the TTL");
        tokio::time::advance(Duration::from_secs(5)).await;
        let halfway = live(&c);
        assert!(
            (100..300).contains(&halfway),
            "half way through the last quarter about half are live: {halfway}"
        );
        tokio::time::advance(Duration::from_millis(5_010)).await;
        assert_eq!(live(&c), 0, "all expired at the TTL");
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_stays_within_its_capacity() {
        let c = ItemCache::new(Duration::from_secs(30), 3);
        c.insert_many([item("a"), item("b")]);
        tokio::time::advance(Duration::from_secs(31)).await;
        c.insert_many([item("c"), item("d")]);
        assert_eq!(c.len(), 2, "the expired entries were swept to make room");
        c.insert_many([item("e"), item("f")]);
        assert!(c.len() <= 3);
        let (hits, _) = lookup(&c, &["f"]);
        assert_eq!(hits, ["f"], "the newest entry is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_and_cleared_entries_are_missed() {
        let c = ItemCache::new(Duration::from_secs(30), 100);
        c.insert_many([item("a"), item("b"), item("c")]);
        c.forget(&[ItemId::parse("i", "b").unwrap()]);
        assert_eq!(
            lookup(&c, &["a", "b", "c"]),
            (vec!["a".into(), "c".into()], vec!["b".into()])
        );
        c.clear();
        assert!(c.is_empty());
        assert_eq!(lookup(&c, &["a"]).1, ["a"]);
    }
}
