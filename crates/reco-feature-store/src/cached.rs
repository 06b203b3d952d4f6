//! A hot-key cache in front of any feature store: user contexts and items kept for a short TTL, and concurrent
//! misses on one key coalesced into a single backend read (moka's `try_get_with`), so a hot user cannot stampede
//! the table. Writes through this store invalidate what they change, so one process reads its own writes at
//! once; other processes' writes show within the TTL.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use moka::future::Cache;
use reco_types::{Candidate, Event, FeatureVersion, Item, ItemId, User, UserId};

use crate::{FeatureStore, FeatureStoreError, Result, UserContext, VersionSel};

type Key<T> = (Option<FeatureVersion>, T);

/// The caching decorator.
pub struct CachedFeatureStore {
    inner: Arc<dyn FeatureStore>,
    contexts: Cache<Key<UserId>, Arc<UserContext>>,
    items: Cache<Key<ItemId>, Option<Arc<Item>>>,
}

impl CachedFeatureStore {
    /// Caches at most `capacity` users and as many items, each for `ttl`.
    pub fn new(inner: Arc<dyn FeatureStore>, ttl: Duration, capacity: u64) -> Self {
        Self {
            inner,
            contexts: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            items: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build(),
        }
    }

    /// Drops the cached entries of `ids` as read through `version` and through the active version.
    async fn forget<K, V>(cache: &Cache<Key<K>, V>, version: VersionSel<'_>, ids: Vec<K>)
    where
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        for id in ids {
            cache.invalidate(&(version.cloned(), id.clone())).await;
            cache.invalidate(&(None, id)).await;
        }
    }

    fn forget_all(&self) {
        self.contexts.invalidate_all();
        self.items.invalidate_all();
    }
}

/// Shares one backend error among the callers a coalesced read served.
fn unshare(e: Arc<FeatureStoreError>) -> FeatureStoreError {
    match &*e {
        FeatureStoreError::UnknownVersion(v) => FeatureStoreError::UnknownVersion(v.clone()),
        FeatureStoreError::NotLoaded(v) => FeatureStoreError::NotLoaded(v.clone()),
        FeatureStoreError::Backend(m) => FeatureStoreError::Backend(m.clone()),
    }
}

#[async_trait]
impl FeatureStore for CachedFeatureStore {
    async fn user_context(
        &self,
        version: VersionSel<'_>,
        user_id: &UserId,
        max_events: usize,
        max_pool: usize,
    ) -> Result<UserContext> {
        // One entry per user holds everything; the limits are applied to the cached whole.
        let key = (version.cloned(), user_id.clone());
        let full = self
            .contexts
            .try_get_with(key, async {
                self.inner
                    .user_context(version, user_id, 0, 0)
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(unshare)?;
        Ok((*full).clone().limited(max_events, max_pool))
    }

    async fn items(
        &self,
        version: VersionSel<'_>,
        item_ids: &[ItemId],
        include_embeddings: bool,
    ) -> Result<Vec<Item>> {
        let mut found: Vec<Option<Option<Arc<Item>>>> = Vec::with_capacity(item_ids.len());
        let mut missing = Vec::new();
        for id in item_ids {
            let hit = self.items.get(&(version.cloned(), id.clone())).await;
            if hit.is_none() {
                missing.push(id.clone());
            }
            found.push(hit);
        }
        if !missing.is_empty() {
            // Misses are read in one batch, with embeddings, so the cached copy serves both kinds of request.
            let fetched = self.inner.items(version, &missing, true).await?;
            let mut by_id: std::collections::HashMap<ItemId, Arc<Item>> = fetched
                .into_iter()
                .map(|i| (i.item_id.clone(), Arc::new(i)))
                .collect();
            for id in &missing {
                let v = by_id.get(id).cloned();
                self.items.insert((version.cloned(), id.clone()), v).await;
            }
            for (slot, id) in found.iter_mut().zip(item_ids) {
                if slot.is_none() {
                    *slot = Some(by_id.remove(id));
                }
            }
        }
        Ok(found
            .into_iter()
            .flatten()
            .flatten()
            .map(|i| {
                let mut item = (*i).clone();
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
        self.inner.popular(version, k, category).await
    }

    async fn put_users(
        &self,
        version: VersionSel<'_>,
        users: Vec<User>,
        merge: bool,
    ) -> Result<usize> {
        let ids: Vec<UserId> = users.iter().map(|u| u.user_id.clone()).collect();
        let n = self.inner.put_users(version, users, merge).await?;
        Self::forget(&self.contexts, version, ids).await;
        Ok(n)
    }

    async fn put_items(&self, version: VersionSel<'_>, items: Vec<Item>) -> Result<usize> {
        let ids: Vec<ItemId> = items.iter().map(|i| i.item_id.clone()).collect();
        let n = self.inner.put_items(version, items).await?;
        Self::forget(&self.items, version, ids).await;
        Ok(n)
    }

    async fn put_recall_pools(
        &self,
        version: VersionSel<'_>,
        pools: Vec<(UserId, Vec<Candidate>)>,
    ) -> Result<usize> {
        let ids: Vec<UserId> = pools.iter().map(|(u, _)| u.clone()).collect();
        let n = self.inner.put_recall_pools(version, pools).await?;
        Self::forget(&self.contexts, version, ids).await;
        Ok(n)
    }

    async fn put_popular(&self, version: VersionSel<'_>, items: Vec<Candidate>) -> Result<usize> {
        self.inner.put_popular(version, items).await
    }

    async fn append_events(
        &self,
        user_id: &UserId,
        events: Vec<Event>,
        max_len: usize,
    ) -> Result<usize> {
        let n = self.inner.append_events(user_id, events, max_len).await?;
        // Sequences are not versioned: every cached version of this user is stale now.
        self.contexts.invalidate(&(None, user_id.clone())).await;
        let user = user_id.clone();
        self.contexts
            .invalidate_entries_if(move |k, _| k.1 == user)
            .expect("built with support_invalidation_closures");
        Ok(n)
    }

    async fn append_events_batch(
        &self,
        appends: Vec<(UserId, Vec<Event>)>,
        max_len: usize,
    ) -> Result<Vec<usize>> {
        let users: std::collections::HashSet<UserId> =
            appends.iter().map(|(u, _)| u.clone()).collect();
        let lengths = self.inner.append_events_batch(appends, max_len).await?;
        // One predicate for the batch, not one per user: the cache tests each on its entries.
        self.contexts
            .invalidate_entries_if(move |k, _| users.contains(&k.1))
            .expect("built with support_invalidation_closures");
        Ok(lengths)
    }

    async fn versions(&self) -> Result<(FeatureVersion, Vec<FeatureVersion>)> {
        self.inner.versions().await
    }

    async fn active_version(&self) -> Result<FeatureVersion> {
        self.inner.active_version().await
    }

    async fn activate(&self, version: &FeatureVersion) -> Result<FeatureVersion> {
        let previous = self.inner.activate(version).await?;
        // "The active version" now means another one.
        self.forget_all();
        Ok(previous)
    }

    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::MemoryFeatureStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cached_store_passes_the_shared_suite() {
        let store = CachedFeatureStore::new(
            Arc::new(MemoryFeatureStore::new()),
            Duration::from_secs(60),
            10_000,
        );
        crate::suite::run_all(&store).await;
    }

    /// A backend that is slow and counts its reads.
    struct Slow {
        inner: MemoryFeatureStore,
        reads: AtomicUsize,
    }

    #[async_trait]
    impl FeatureStore for Slow {
        async fn user_context(
            &self,
            v: VersionSel<'_>,
            u: &UserId,
            e: usize,
            p: usize,
        ) -> Result<UserContext> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.inner.user_context(v, u, e, p).await
        }
        async fn items(&self, v: VersionSel<'_>, i: &[ItemId], e: bool) -> Result<Vec<Item>> {
            self.inner.items(v, i, e).await
        }
        async fn popular(
            &self,
            v: VersionSel<'_>,
            k: usize,
            c: Option<&str>,
        ) -> Result<Vec<Candidate>> {
            self.inner.popular(v, k, c).await
        }
        async fn put_users(&self, v: VersionSel<'_>, u: Vec<User>, m: bool) -> Result<usize> {
            self.inner.put_users(v, u, m).await
        }
        async fn put_items(&self, v: VersionSel<'_>, i: Vec<Item>) -> Result<usize> {
            self.inner.put_items(v, i).await
        }
        async fn put_recall_pools(
            &self,
            v: VersionSel<'_>,
            p: Vec<(UserId, Vec<Candidate>)>,
        ) -> Result<usize> {
            self.inner.put_recall_pools(v, p).await
        }
        async fn put_popular(&self, v: VersionSel<'_>, i: Vec<Candidate>) -> Result<usize> {
            self.inner.put_popular(v, i).await
        }
        async fn append_events(&self, u: &UserId, e: Vec<Event>, m: usize) -> Result<usize> {
            self.inner.append_events(u, e, m).await
        }
        async fn versions(&self) -> Result<(FeatureVersion, Vec<FeatureVersion>)> {
            self.inner.versions().await
        }
        async fn activate(&self, v: &FeatureVersion) -> Result<FeatureVersion> {
            self.inner.activate(v).await
        }
        async fn ping(&self) -> Result<()> {
            Ok(())
        }
        fn backend(&self) -> &'static str {
            "slow"
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hot_user_read_by_many_at_once_costs_one_backend_read() {
        let slow = Arc::new(Slow {
            inner: MemoryFeatureStore::new(),
            reads: AtomicUsize::new(0),
        });
        let store = Arc::new(CachedFeatureStore::new(
            slow.clone(),
            Duration::from_secs(60),
            1000,
        ));
        let u = UserId::parse("u", "hot").unwrap();
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let (s, u) = (store.clone(), u.clone());
                tokio::spawn(async move { s.user_context(None, &u, 0, 0).await.unwrap() })
            })
            .collect();
        for c in calls {
            c.await.unwrap();
        }
        assert_eq!(slow.reads.load(Ordering::SeqCst), 1);
        // A write through the cache makes the next read go to the backend again.
        let e = Event::parse("i1", "click", 1, 1.0).unwrap();
        store.append_events(&u, vec![e], 10).await.unwrap();
        assert_eq!(
            store
                .user_context(None, &u, 0, 0)
                .await
                .unwrap()
                .recent_events
                .len(),
            1
        );
        assert_eq!(slow.reads.load(Ordering::SeqCst), 2);
    }
}
