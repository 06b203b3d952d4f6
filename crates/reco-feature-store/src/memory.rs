//! The embedded feature store: versioned snapshots in memory, one lock per concern.
//!
//! Readers take a read lock on the version map only to clone an `Arc` of the snapshot they read, so a bulk load
//! into another version never blocks them, and activating a version is one pointer swap.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use async_trait::async_trait;
use parking_lot::RwLock;
use reco_types::{Candidate, Event, FeatureVersion, Item, ItemId, User, UserId};

use crate::{FeatureStore, FeatureStoreError, INITIAL_VERSION, Result, UserContext, VersionSel};

#[derive(Default)]
struct Snapshot {
    users: RwLock<HashMap<UserId, User>>,
    pools: RwLock<HashMap<UserId, Vec<Candidate>>>,
    items: RwLock<HashMap<ItemId, Item>>,
    popular: RwLock<Vec<Candidate>>,
}

struct Versions {
    active: FeatureVersion,
    all: HashMap<FeatureVersion, Arc<Snapshot>>,
}

/// In-memory feature store. Not durable: the durable embedded store replaces it.
pub struct MemoryFeatureStore {
    versions: RwLock<Versions>,
    events: RwLock<HashMap<UserId, VecDeque<Event>>>,
}

impl Default for MemoryFeatureStore {
    fn default() -> Self {
        let v1 = FeatureVersion::parse("feature_version", INITIAL_VERSION).expect("valid constant");
        Self {
            versions: RwLock::new(Versions {
                active: v1.clone(),
                all: HashMap::from([(v1, Arc::default())]),
            }),
            events: RwLock::default(),
        }
    }
}

impl MemoryFeatureStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The snapshot to read: the named version (which must exist) or the active one.
    fn read(&self, version: VersionSel<'_>) -> Result<(FeatureVersion, Arc<Snapshot>)> {
        let v = self.versions.read();
        let name = version.unwrap_or(&v.active);
        v.all
            .get(name)
            .map(|s| (name.clone(), s.clone()))
            .ok_or_else(|| FeatureStoreError::UnknownVersion(name.to_string()))
    }

    /// The snapshot to write: the named version (created if new) or the active one.
    fn write(&self, version: VersionSel<'_>) -> Arc<Snapshot> {
        let mut v = self.versions.write();
        let name = version.cloned().unwrap_or_else(|| v.active.clone());
        v.all.entry(name).or_default().clone()
    }
}

#[async_trait]
impl FeatureStore for MemoryFeatureStore {
    async fn user_context(
        &self,
        version: VersionSel<'_>,
        user_id: &UserId,
        max_events: usize,
        max_pool: usize,
    ) -> Result<UserContext> {
        let (name, snap) = self.read(version)?;
        let user = snap.users.read().get(user_id).cloned();
        let recall_pool = snap.pools.read().get(user_id).cloned().unwrap_or_default();
        let recent_events = self
            .events
            .read()
            .get(user_id)
            .map(|q| q.iter().rev().cloned().collect())
            .unwrap_or_default();
        Ok(UserContext {
            user,
            recall_pool,
            recent_events,
            version: Some(name),
        }
        .limited(max_events, max_pool))
    }

    async fn items(
        &self,
        version: VersionSel<'_>,
        item_ids: &[ItemId],
        include_embeddings: bool,
    ) -> Result<Vec<Item>> {
        let (_, snap) = self.read(version)?;
        let items = snap.items.read();
        Ok(item_ids
            .iter()
            .filter_map(|id| items.get(id))
            .map(|item| {
                let mut item = item.clone();
                if !include_embeddings {
                    item.embedding = None;
                }
                item
            })
            .collect())
    }

    async fn popular(
        &self,
        version: VersionSel<'_>,
        k: usize,
        category: Option<&str>,
    ) -> Result<Vec<Candidate>> {
        let (_, snap) = self.read(version)?;
        let popular = snap.popular.read();
        let Some(category) = category else {
            return Ok(popular.iter().take(k).cloned().collect());
        };
        let items = snap.items.read();
        Ok(popular
            .iter()
            .filter(|c| {
                items
                    .get(&c.item_id)
                    .is_some_and(|i| i.categories.iter().any(|x| x.as_str() == category))
            })
            .take(k)
            .cloned()
            .collect())
    }

    async fn put_users(
        &self,
        version: VersionSel<'_>,
        users: Vec<User>,
        merge: bool,
    ) -> Result<usize> {
        let snap = self.write(version);
        let mut map = snap.users.write();
        let n = users.len();
        for user in users {
            match map.get_mut(&user.user_id) {
                Some(stored) if merge => {
                    stored.features.merge(user.features);
                    if user.embedding.is_some() {
                        stored.embedding = user.embedding;
                    }
                }
                Some(stored) => {
                    let embedding = user.embedding.or(stored.embedding.take());
                    *stored = User { embedding, ..user };
                }
                None => {
                    map.insert(user.user_id.clone(), user);
                }
            }
        }
        Ok(n)
    }

    async fn put_items(&self, version: VersionSel<'_>, items: Vec<Item>) -> Result<usize> {
        let snap = self.write(version);
        let mut map = snap.items.write();
        let n = items.len();
        for item in items {
            map.insert(item.item_id.clone(), item);
        }
        Ok(n)
    }

    async fn put_recall_pools(
        &self,
        version: VersionSel<'_>,
        pools: Vec<(UserId, Vec<Candidate>)>,
    ) -> Result<usize> {
        let snap = self.write(version);
        let mut map = snap.pools.write();
        let n = pools.len();
        map.extend(pools);
        Ok(n)
    }

    async fn put_popular(&self, version: VersionSel<'_>, items: Vec<Candidate>) -> Result<usize> {
        let snap = self.write(version);
        let n = items.len();
        *snap.popular.write() = items;
        Ok(n)
    }

    async fn append_events(
        &self,
        user_id: &UserId,
        events: Vec<Event>,
        max_len: usize,
    ) -> Result<usize> {
        let mut all = self.events.write();
        let seq = all.entry(user_id.clone()).or_default();
        reco_types::append_unique(seq, events, max_len);
        Ok(seq.len())
    }

    async fn versions(&self) -> Result<(FeatureVersion, Vec<FeatureVersion>)> {
        let v = self.versions.read();
        let mut all: Vec<_> = v.all.keys().cloned().collect();
        all.sort();
        Ok((v.active.clone(), all))
    }

    async fn activate(&self, version: &FeatureVersion) -> Result<FeatureVersion> {
        let mut v = self.versions.write();
        if !v.all.contains_key(version) && v.active != *version {
            return Err(FeatureStoreError::NotLoaded(version.to_string()));
        }
        v.all.entry(version.clone()).or_default();
        Ok(std::mem::replace(&mut v.active, version.clone()))
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
        crate::suite::run_all(&MemoryFeatureStore::new()).await;
    }
}
