//! The feature store: everything the platform knows about users and items, behind one trait.
//!
//! ```text
//!   versioned (bulk-loaded daily, switched atomically)      real-time (appended within seconds)
//!   ├── user features + embedding                           └── user sequence: last N events
//!   ├── recall pools (user -> top-K candidates)
//!   ├── item features + categories + embedding
//!   └── popular items
//! ```
//!
//! Backends: [`RedbFeatureStore`] (durable embedded default, one redb file), [`DynamoFeatureStore`] (production,
//! DynamoDB) and [`MemoryFeatureStore`] (in memory, for tests and throwaway runs), all passing one shared suite
//! ([`suite`]); [`CachedFeatureStore`] puts a hot-key cache in front of any of them.

mod cached;
pub mod dynamo;
mod memory;
mod redb_store;
pub mod suite;

use async_trait::async_trait;
use reco_types::{Candidate, Event, FeatureVersion, Item, ItemId, User, UserId};

pub use reco_types::UserContext;

pub use cached::CachedFeatureStore;
pub use dynamo::{DynamoConfig, DynamoFeatureStore};
pub use memory::MemoryFeatureStore;
pub use redb_store::RedbFeatureStore;

/// Largest stored row (a user, an item, a recall pool, a sequence), in bytes: DynamoDB's item limit, applied to
/// every backend so a row that loads into one loads into all.
pub const MAX_ROW_BYTES: usize = 400 * 1024;

/// Refuses a row whose stored form would pass [`MAX_ROW_BYTES`], naming its size and the limit.
pub fn check_row_size<T: serde::Serialize>(
    field: &str,
    row: &T,
) -> Result<(), reco_types::ValidationError> {
    let size = serde_json::to_vec(row)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_ROW_BYTES {
        return Err(reco_types::ValidationError::new(
            field,
            format!(
                "is {size} bytes stored, the limit is {MAX_ROW_BYTES} (DynamoDB's 400 KB item limit)"
            ),
        ));
    }
    Ok(())
}

/// Sequence length kept per user unless configured otherwise.
pub const DEFAULT_MAX_EVENTS: usize = 50;

/// The version a fresh store reads and writes before any bulk load.
pub const INITIAL_VERSION: &str = "v1";

/// Errors of a feature store.
#[derive(Debug, thiserror::Error)]
pub enum FeatureStoreError {
    /// The request named a feature-set version the store does not have.
    #[error("feature version {0:?} does not exist")]
    UnknownVersion(String),
    /// Activation of a version nothing was ever loaded into (every user would cold-start).
    #[error("feature version {0:?} was never loaded: load it before activating it")]
    NotLoaded(String),
    /// The backend failed or could not be reached.
    #[error("feature backend failed: {0}")]
    Backend(String),
}

pub type Result<T, E = FeatureStoreError> = std::result::Result<T, E>;

/// Which version a call reads or writes: `None` is the active one.
pub type VersionSel<'a> = Option<&'a FeatureVersion>;

/// A feature store. Object-safe: services hold an `Arc<dyn FeatureStore>` chosen at start-up.
#[async_trait]
pub trait FeatureStore: Send + Sync + 'static {
    /// Features, embedding, recall pool (at most `max_pool`, 0 = all) and the last `max_events` events (0 = all).
    async fn user_context(
        &self,
        version: VersionSel<'_>,
        user_id: &UserId,
        max_events: usize,
        max_pool: usize,
    ) -> Result<UserContext>;

    /// The items found among `item_ids`, in the order asked; unknown ones are left out.
    async fn items(
        &self,
        version: VersionSel<'_>,
        item_ids: &[ItemId],
        include_embeddings: bool,
    ) -> Result<Vec<Item>>;

    /// The `k` most popular items, of `category` when given.
    async fn popular(
        &self,
        version: VersionSel<'_>,
        k: usize,
        category: Option<&str>,
    ) -> Result<Vec<Candidate>>;

    /// Writes users; with `merge`, given fields overwrite stored ones and the rest stay.
    async fn put_users(
        &self,
        version: VersionSel<'_>,
        users: Vec<User>,
        merge: bool,
    ) -> Result<usize>;

    async fn put_items(&self, version: VersionSel<'_>, items: Vec<Item>) -> Result<usize>;

    /// Replaces users' recall pools.
    async fn put_recall_pools(
        &self,
        version: VersionSel<'_>,
        pools: Vec<(UserId, Vec<Candidate>)>,
    ) -> Result<usize>;

    /// Replaces the popular list (most popular first).
    async fn put_popular(&self, version: VersionSel<'_>, items: Vec<Candidate>) -> Result<usize>;

    /// Appends events (oldest first) to the user's sequence, keeping the last `max_len`; returns the new length.
    /// An event whose id the sequence already holds is left out ([`reco_types::append_unique`]).
    async fn append_events(
        &self,
        user_id: &UserId,
        events: Vec<Event>,
        max_len: usize,
    ) -> Result<usize>;

    /// Appends many users' events, as [`FeatureStore::append_events`] each; returns each user's new length, in
    /// order. Backends that can write them together (one transaction) do.
    async fn append_events_batch(
        &self,
        appends: Vec<(UserId, Vec<Event>)>,
        max_len: usize,
    ) -> Result<Vec<usize>> {
        let mut lengths = Vec::with_capacity(appends.len());
        for (user, events) in appends {
            lengths.push(self.append_events(&user, events, max_len).await?);
        }
        Ok(lengths)
    }

    /// The active version and every version stored.
    async fn versions(&self) -> Result<(FeatureVersion, Vec<FeatureVersion>)>;

    /// The active version alone: what a read without a version reads. Backends answer it without listing every
    /// version (a key lookup, or a cached pointer).
    async fn active_version(&self) -> Result<FeatureVersion> {
        Ok(self.versions().await?.0)
    }

    /// Makes `version` active; returns the previously active version. A version nothing was written to (and that
    /// is not already active) is refused with [`FeatureStoreError::NotLoaded`].
    async fn activate(&self, version: &FeatureVersion) -> Result<FeatureVersion>;

    /// Whether the backend answers, for readiness.
    async fn ping(&self) -> Result<()>;

    /// The backend's name, for logs and stats.
    fn backend(&self) -> &'static str;
}
