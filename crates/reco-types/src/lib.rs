//! The domain of reco, free of any transport: identifiers, features, embeddings, candidates with provenance,
//! behaviour events and the gateway's stage reports.
//!
//! Every type validates when it is built, so a value of one of these types is always well-formed: an id is never
//! empty, an embedding never holds NaN. Errors say which field was wrong and why ([`ValidationError`]), which the
//! services turn into `INVALID_ARGUMENT` with that message.

mod answers;
mod error;
mod events;
mod features;
mod ids;
mod items;
mod limits;
mod stage;

pub use answers::{CachedResult, RateDecision, UserContext};
pub use error::{ValidationError, each};
pub use events::{
    EventKind, EventTarget, MAX_EVENT_AGE_MS, MAX_EVENT_SKEW_MS, RawEvent, UserEvent,
};
pub use features::{Embedding, FeatureValue, Features, dot};
pub use ids::{EventId, FeatureVersion, ItemId, Name, Scene, UserId, check_id};
pub use items::{
    Candidate, Event, Item, ItemFilter, SourceHit, User, append_unique, check_batch,
    check_candidates,
};
pub use limits::*;
pub use stage::{StageReport, StageStatus};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads a bounded count from a request: 0 takes `default`, anything over `max` (or under `min`) is an error.
pub fn count(
    field: &str,
    value: u32,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ValidationError> {
    let v = if value == 0 { default } else { value };
    if v < min || v > max {
        return Err(ValidationError::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(v)
}
