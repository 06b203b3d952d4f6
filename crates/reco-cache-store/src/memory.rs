//! The embedded cache: hash maps behind mutexes, with expiry checked on read and swept on write.
//!
//! Written by hand rather than on moka because four of the five structures are not key -> value caches (GCRA
//! state, bounded lists, timestamp lists), and the fifth needs a TTL per entry; plain maps keep one code path.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::Mutex;
use reco_types::{Candidate, Event, ItemId, Scene, UserId, now_ms};

use crate::{CacheStore, CachedResult, RateDecision, Result, Session};

/// Writes between sweeps of expired entries.
const SWEEP_EVERY: u32 = 4096;
/// Impressions older than this are forgotten (the longest frequency-cap window honoured).
const IMPRESSION_HORIZON_MS: i64 = 7 * 24 * 3600 * 1000;

struct Expiring<T> {
    value: T,
    created_at_ms: i64,
    expires: Instant,
}

struct TtlMap<K, V> {
    map: HashMap<K, Expiring<V>>,
    writes: u32,
}

impl<K: std::hash::Hash + Eq, V> Default for TtlMap<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            writes: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlMap<K, V> {
    fn get(&self, key: &K) -> Option<(V, i64, Duration)> {
        let e = self.map.get(key)?;
        let left = e.expires.checked_duration_since(Instant::now())?;
        Some((e.value.clone(), e.created_at_ms, left))
    }

    fn insert(&mut self, key: K, value: V, ttl: Duration) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            let now = Instant::now();
            self.map.retain(|_, e| e.expires > now);
        }
        self.map.insert(
            key,
            Expiring {
                value,
                created_at_ms: now_ms(),
                expires: Instant::now() + ttl,
            },
        );
    }
}

/// In-process cache store.
#[derive(Default)]
pub struct MemoryCacheStore {
    results: Mutex<TtlMap<(UserId, Scene), Vec<Candidate>>>,
    events: Mutex<HashMap<UserId, VecDeque<Event>>>,
    /// GCRA theoretical arrival time per key.
    rates: Mutex<HashMap<String, Instant>>,
    impressions: Mutex<HashMap<(UserId, ItemId), Vec<i64>>>,
    sessions: Mutex<TtlMap<String, Vec<u8>>>,
}

impl MemoryCacheStore {
    pub fn new() -> Self {
        Self::default()
    }
}

/// One GCRA step on the theoretical arrival time `tat`.
pub(crate) fn gcra(
    tat: &mut Instant,
    now: Instant,
    limit: u32,
    window: Duration,
    cost: u32,
) -> RateDecision {
    let interval = window / limit.max(1);
    let base = (*tat).max(now);
    let new_tat = base + interval * cost;
    // The call is allowed when, after it, no more than `window` of allowance is in use.
    let allow_at = new_tat.checked_sub(window).unwrap_or(now);
    if allow_at > now {
        let in_use = base.saturating_duration_since(now);
        let remaining = window.saturating_sub(in_use).as_nanos() / interval.as_nanos().max(1);
        return RateDecision {
            allowed: false,
            remaining: remaining as u32,
            retry_after: allow_at - now,
        };
    }
    *tat = new_tat;
    let in_use = new_tat.saturating_duration_since(now);
    let remaining = window.saturating_sub(in_use).as_nanos() / interval.as_nanos().max(1);
    RateDecision {
        allowed: true,
        remaining: remaining as u32,
        retry_after: Duration::ZERO,
    }
}

#[async_trait]
impl CacheStore for MemoryCacheStore {
    async fn get_result(&self, user: &UserId, scene: &Scene) -> Result<Option<CachedResult>> {
        let key = (user.clone(), scene.clone());
        Ok(self
            .results
            .lock()
            .get(&key)
            .map(|(items, created_at_ms, ttl_remaining)| CachedResult {
                items,
                created_at_ms,
                ttl_remaining,
            }))
    }

    async fn put_result(
        &self,
        user: &UserId,
        scene: &Scene,
        items: Vec<Candidate>,
        ttl: Duration,
    ) -> Result<()> {
        self.results
            .lock()
            .insert((user.clone(), scene.clone()), items, ttl);
        Ok(())
    }

    async fn invalidate(&self, user: &UserId, scene: Option<&Scene>) -> Result<usize> {
        let mut results = self.results.lock();
        let now = Instant::now();
        let before = results.map.len();
        let mut removed_live = 0;
        results.map.retain(|(u, s), e| {
            let hit = u == user && scene.is_none_or(|sc| sc == s);
            if hit && e.expires > now {
                removed_live += 1;
            }
            !hit
        });
        debug_assert!(before >= results.map.len());
        Ok(removed_live)
    }

    async fn push_events(&self, user: &UserId, new: Vec<Event>, max_len: usize) -> Result<usize> {
        let mut events = self.events.lock();
        let seq = events.entry(user.clone()).or_default();
        for event in new {
            if let Some(id) = &event.id
                && seq.iter().any(|e| e.id.as_ref() == Some(id))
            {
                continue;
            }
            seq.push_front(event);
        }
        seq.truncate(max_len.max(1));
        Ok(seq.len())
    }

    async fn recent_events(&self, user: &UserId, limit: usize) -> Result<Vec<Event>> {
        let events = self.events.lock();
        let Some(seq) = events.get(user) else {
            return Ok(Vec::new());
        };
        let n = if limit == 0 { seq.len() } else { limit };
        Ok(seq.iter().take(n).cloned().collect())
    }

    async fn check_rate_limit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        cost: u32,
    ) -> Result<RateDecision> {
        let now = Instant::now();
        let mut rates = self.rates.lock();
        if rates.len() > 100_000 {
            rates.retain(|_, tat| *tat > now);
        }
        let tat = rates.entry(key.to_string()).or_insert(now);
        Ok(gcra(tat, now, limit, window, cost.max(1)))
    }

    async fn record_impressions(&self, user: &UserId, items: &[ItemId], at_ms: i64) -> Result<()> {
        let mut imps = self.impressions.lock();
        let horizon = now_ms() - IMPRESSION_HORIZON_MS;
        for item in items {
            let times = imps.entry((user.clone(), item.clone())).or_default();
            times.retain(|t| *t > horizon);
            times.push(at_ms);
        }
        Ok(())
    }

    async fn filter_capped(
        &self,
        user: &UserId,
        items: &[ItemId],
        cap: u32,
        window: Duration,
    ) -> Result<Vec<ItemId>> {
        let imps = self.impressions.lock();
        let since = now_ms() - window.as_millis() as i64;
        Ok(items
            .iter()
            .filter(|item| {
                imps.get(&(user.clone(), (*item).clone()))
                    .is_some_and(|times| {
                        times.iter().filter(|t| **t > since).count() >= cap as usize
                    })
            })
            .cloned()
            .collect())
    }

    async fn get_session(&self, id: &str) -> Result<Option<Session>> {
        Ok(self
            .sessions
            .lock()
            .get(&id.to_string())
            .map(|(data, _, ttl_remaining)| Session {
                data,
                ttl_remaining,
            }))
    }

    async fn put_session(&self, id: &str, data: Vec<u8>, ttl: Duration) -> Result<()> {
        self.sessions.lock().insert(id.to_string(), data, ttl);
        Ok(())
    }

    async fn delete_session(&self, id: &str) -> Result<bool> {
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        Ok(sessions.map.remove(id).is_some_and(|e| e.expires > now))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_shared_suite() {
        crate::suite::run_all(&MemoryCacheStore::new(), "mem").await;
    }

    #[test]
    fn gcra_allows_a_burst_of_limit_then_refills_smoothly() {
        let start = Instant::now();
        let mut tat = start;
        let window = Duration::from_secs(10);
        let allowed = (0..8)
            .filter(|_| gcra(&mut tat, start, 5, window, 1).allowed)
            .count();
        assert_eq!(allowed, 5);
        let refused = gcra(&mut tat, start, 5, window, 1);
        assert_eq!(refused.retry_after, Duration::from_secs(2));
        // One interval later exactly one more call fits.
        let later = start + Duration::from_secs(2);
        assert!(gcra(&mut tat, later, 5, window, 1).allowed);
        assert!(!gcra(&mut tat, later, 5, window, 1).allowed);
    }
}
