//! What the services answer the gateway with, apart from any transport: a user's context from the feature
//! store, a cached answer and a rate-limit decision from the cache.

use std::time::Duration;

use crate::{Candidate, Event, FeatureVersion, User};

/// Everything the gateway's user-context stage needs, read in one call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserContext {
    /// None when the store has no features for the user.
    pub user: Option<User>,
    /// Best first.
    pub recall_pool: Vec<Candidate>,
    /// Most recent first.
    pub recent_events: Vec<Event>,
    /// The version read.
    pub version: Option<FeatureVersion>,
}

impl UserContext {
    /// Keeps at most `max_pool` candidates and the `max_events` most recent events; 0 keeps all of either.
    pub fn limited(mut self, max_events: usize, max_pool: usize) -> Self {
        if max_pool > 0 {
            self.recall_pool.truncate(max_pool);
        }
        if max_events > 0 {
            self.recent_events.truncate(max_events);
        }
        self
    }

    /// Whether anything at all is known of the user.
    pub fn found(&self) -> bool {
        self.user.is_some() || !self.recall_pool.is_empty() || !self.recent_events.is_empty()
    }
}

/// A cached recommendation list.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedResult {
    pub items: Vec<Candidate>,
    pub created_at_ms: i64,
    pub ttl_remaining: Duration,
}

/// The answer of a rate-limit check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// Calls of cost 1 still allowed right now.
    pub remaining: u32,
    /// When refused, how long until this call would be allowed.
    pub retry_after: Duration,
}
