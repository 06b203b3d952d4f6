//! The cache store: short-lived per-user state, behind one trait.
//!
//! ```text
//!   result cache   (user, scene) -> ranked list, TTL 5 min
//!   recent events  user -> last N events
//!   rate limits    key -> GCRA state
//!   frequency caps (user, item) -> impression times
//!   sessions       id -> small blob, TTL
//! ```
//!
//! Backends: [`MemoryCacheStore`] (embedded default) and [`RedisCacheStore`] (Redis / ElastiCache). Every backend
//! runs the shared [`suite`].

mod memory;
mod redis;
pub mod suite;

use std::time::Duration;

use async_trait::async_trait;
use reco_types::{Candidate, Event, ItemId, Scene, UserId};

pub use memory::MemoryCacheStore;
pub use redis::{RedisCacheStore, RedisConfig};

/// Result-cache TTL unless the caller sets one.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(300);
/// Session TTL unless the caller sets one.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(1800);
/// Largest session blob.
pub const MAX_SESSION_BYTES: usize = 64 * 1024;

/// Errors of a cache store.
#[derive(Debug, thiserror::Error)]
pub enum CacheStoreError {
    /// The backend did not answer within its timeout.
    #[error("cache backend timed out after {0:?}")]
    Timeout(Duration),
    /// The backend failed or could not be reached.
    #[error("cache backend unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = CacheStoreError> = std::result::Result<T, E>;

pub use reco_types::{CachedResult, RateDecision};

/// A cached session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub data: Vec<u8>,
    pub ttl_remaining: Duration,
}

/// A cache store. Object-safe: services hold an `Arc<dyn CacheStore>` chosen at start-up.
#[async_trait]
pub trait CacheStore: Send + Sync + 'static {
    async fn get_result(&self, user: &UserId, scene: &Scene) -> Result<Option<CachedResult>>;
    async fn put_result(
        &self,
        user: &UserId,
        scene: &Scene,
        items: Vec<Candidate>,
        ttl: Duration,
    ) -> Result<()>;
    /// Drops cached results for one scene, or all scenes; returns how many were dropped.
    async fn invalidate(&self, user: &UserId, scene: Option<&Scene>) -> Result<usize>;

    /// Pushes one event, keeping the last `max_len`; returns the new length. As [`CacheStore::push_events`].
    async fn push_event(&self, user: &UserId, event: Event, max_len: usize) -> Result<usize> {
        self.push_events(user, vec![event], max_len).await
    }
    /// Pushes events (oldest first), keeping the last `max_len`, and leaving out each event whose id the list
    /// holds already (a retry, a replay); returns the new length.
    async fn push_events(&self, user: &UserId, events: Vec<Event>, max_len: usize)
    -> Result<usize>;
    /// The last `limit` events (0 = all kept), most recent first.
    async fn recent_events(&self, user: &UserId, limit: usize) -> Result<Vec<Event>>;

    /// Takes `cost` from `key`'s allowance of `limit` per `window` (GCRA: the allowance refills smoothly).
    async fn check_rate_limit(
        &self,
        key: &str,
        limit: u32,
        window: Duration,
        cost: u32,
    ) -> Result<RateDecision>;

    async fn record_impressions(&self, user: &UserId, items: &[ItemId], at_ms: i64) -> Result<()>;
    /// The items among `items` shown to the user at least `cap` times within `window` before now.
    async fn filter_capped(
        &self,
        user: &UserId,
        items: &[ItemId],
        cap: u32,
        window: Duration,
    ) -> Result<Vec<ItemId>>;

    async fn get_session(&self, id: &str) -> Result<Option<Session>>;
    async fn put_session(&self, id: &str, data: Vec<u8>, ttl: Duration) -> Result<()>;
    async fn delete_session(&self, id: &str) -> Result<bool>;

    /// Whether the backend answers, for readiness.
    async fn ping(&self) -> Result<()>;

    fn backend(&self) -> &'static str;
}
