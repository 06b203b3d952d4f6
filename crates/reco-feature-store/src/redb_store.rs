//! The durable embedded feature store, on redb: a pure-Rust, ACID, copy-on-write B-tree file. Chosen over fjall
//! (an LSM) because this workload is point reads of whole rows far more than writes, which a B-tree answers in
//! one lookup without compaction debt, and because every commit is durable by default (fsync), which is what "no
//! acknowledged write lost on kill -9" needs. Writes run on the blocking pool; reads are a few page lookups.
//!
//! ```text
//!   meta     "active" -> version; "v:<version>" -> ""       (the version pointer: one key, switched atomically)
//!   users    (version, user) -> User          (rows are postcard, see FORMAT)
//!   items    (version, item) -> Item
//!   pools    (version, user) -> [Candidate]
//!   popular  version -> [Candidate]
//!   events   user -> [Event] oldest first, at most N  (real-time, not versioned)
//! ```

use std::{collections::VecDeque, path::Path, sync::Arc};

use async_trait::async_trait;
use reco_types::{Candidate, Event, FeatureVersion, Item, ItemId, User, UserId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Serialize, de::DeserializeOwned};

use crate::{FeatureStore, FeatureStoreError, INITIAL_VERSION, Result, UserContext, VersionSel};

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const USERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("users");
const ITEMS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("items");
const POOLS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("pools");
const POPULAR: TableDefinition<&str, &[u8]> = TableDefinition::new("popular");
const EVENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("events");

fn backend(e: impl std::fmt::Display) -> FeatureStoreError {
    FeatureStoreError::Backend(e.to_string())
}

/// How rows are encoded, recorded in the file so a store of another encoding is refused, not misread.
// postcard-2: events carry their id (idempotent appends).
const FORMAT: &str = "postcard-2";

/// Rows are postcard: compact and an order of magnitude cheaper to decode than JSON, which mattered on the read
/// path (a 200-item hydrate decodes 200 embeddings per request).
fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("domain types serialise")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|e| FeatureStoreError::Backend(format!("corrupt row: {e}")))
}

/// A feature store in one redb file.
pub struct RedbFeatureStore {
    db: Arc<Database>,
}

impl RedbFeatureStore {
    /// Opens (or creates) the store at `path`, creating its tables and the first version.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let db = Database::create(path).map_err(backend)?;
        let tx = db.begin_write().map_err(backend)?;
        {
            let mut meta = tx.open_table(META).map_err(backend)?;
            if meta.get("active").map_err(backend)?.is_none() {
                meta.insert("active", INITIAL_VERSION).map_err(backend)?;
                meta.insert(format!("v:{INITIAL_VERSION}").as_str(), "")
                    .map_err(backend)?;
                meta.insert("format", FORMAT).map_err(backend)?;
            }
            let format = meta
                .get("format")
                .map_err(backend)?
                .map(|f| f.value().to_string());
            if format.as_deref() != Some(FORMAT) {
                return Err(FeatureStoreError::Backend(format!(
                    "{} holds rows in format {}, this build reads {FORMAT}: move it away and load the data again",
                    path.display(),
                    format
                        .as_deref()
                        .unwrap_or("json (before the format was recorded)")
                )));
            }
            tx.open_table(USERS).map_err(backend)?;
            tx.open_table(ITEMS).map_err(backend)?;
            tx.open_table(POOLS).map_err(backend)?;
            tx.open_table(POPULAR).map_err(backend)?;
            tx.open_table(EVENTS).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The version a read names, which must exist, or the active one.
    fn read_version(&self, tx: &redb::ReadTransaction, version: VersionSel<'_>) -> Result<String> {
        let meta = tx.open_table(META).map_err(backend)?;
        match version {
            None => Ok(meta
                .get("active")
                .map_err(backend)?
                .map(|v| v.value().to_string())
                .unwrap_or_default()),
            Some(v) => {
                if meta
                    .get(format!("v:{v}").as_str())
                    .map_err(backend)?
                    .is_none()
                {
                    return Err(FeatureStoreError::UnknownVersion(v.to_string()));
                }
                Ok(v.to_string())
            }
        }
    }

    /// Runs a write transaction on the blocking pool; it is durable once this returns.
    async fn write<T: Send + 'static>(
        &self,
        version: Option<FeatureVersion>,
        f: impl FnOnce(&redb::WriteTransaction, &str) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_write().map_err(backend)?;
            let out = {
                let mut meta = tx.open_table(META).map_err(backend)?;
                let v = match version {
                    Some(v) => {
                        meta.insert(format!("v:{v}").as_str(), "")
                            .map_err(backend)?;
                        v.to_string()
                    }
                    None => meta
                        .get("active")
                        .map_err(backend)?
                        .map(|v| v.value().to_string())
                        .unwrap_or_default(),
                };
                drop(meta);
                f(&tx, &v)?
            };
            tx.commit().map_err(backend)?;
            Ok(out)
        })
        .await
        .map_err(backend)?
    }
}

#[async_trait]
impl FeatureStore for RedbFeatureStore {
    async fn user_context(
        &self,
        version: VersionSel<'_>,
        user_id: &UserId,
        max_events: usize,
        max_pool: usize,
    ) -> Result<UserContext> {
        let tx = self.db.begin_read().map_err(backend)?;
        let v = self.read_version(&tx, version)?;
        let key = (v.as_str(), user_id.as_str());
        let users = tx.open_table(USERS).map_err(backend)?;
        let user: Option<User> = users
            .get(key)
            .map_err(backend)?
            .map(|g| decode(g.value()))
            .transpose()?;
        let pools = tx.open_table(POOLS).map_err(backend)?;
        let recall_pool: Vec<Candidate> = pools
            .get(key)
            .map_err(backend)?
            .map(|g| decode(g.value()))
            .transpose()?
            .unwrap_or_default();
        let events = tx.open_table(EVENTS).map_err(backend)?;
        let seq: Vec<Event> = events
            .get(user_id.as_str())
            .map_err(backend)?
            .map(|g| decode(g.value()))
            .transpose()?
            .unwrap_or_default();
        let recent_events = seq.into_iter().rev().collect();
        Ok(UserContext {
            user,
            recall_pool,
            recent_events,
            version: FeatureVersion::parse("feature_version", &v).ok(),
        }
        .limited(max_events, max_pool))
    }

    async fn items(
        &self,
        version: VersionSel<'_>,
        item_ids: &[ItemId],
        include_embeddings: bool,
    ) -> Result<Vec<Item>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let v = self.read_version(&tx, version)?;
        let items = tx.open_table(ITEMS).map_err(backend)?;
        let mut out = Vec::with_capacity(item_ids.len());
        for id in item_ids {
            if let Some(g) = items.get((v.as_str(), id.as_str())).map_err(backend)? {
                let mut item: Item = decode(g.value())?;
                if !include_embeddings {
                    item.embedding = None;
                }
                out.push(item);
            }
        }
        Ok(out)
    }

    async fn popular(
        &self,
        version: VersionSel<'_>,
        k: usize,
        category: Option<&str>,
    ) -> Result<Vec<Candidate>> {
        let tx = self.db.begin_read().map_err(backend)?;
        let v = self.read_version(&tx, version)?;
        let popular = tx.open_table(POPULAR).map_err(backend)?;
        let list: Vec<Candidate> = popular
            .get(v.as_str())
            .map_err(backend)?
            .map(|g| decode(g.value()))
            .transpose()?
            .unwrap_or_default();
        let Some(category) = category else {
            return Ok(list.into_iter().take(k).collect());
        };
        let items = tx.open_table(ITEMS).map_err(backend)?;
        let mut out = Vec::new();
        for c in list {
            if out.len() >= k {
                break;
            }
            if let Some(g) = items
                .get((v.as_str(), c.item_id.as_str()))
                .map_err(backend)?
            {
                let item: Item = decode(g.value())?;
                if item.categories.iter().any(|x| x.as_str() == category) {
                    out.push(c);
                }
            }
        }
        Ok(out)
    }

    async fn put_users(
        &self,
        version: VersionSel<'_>,
        users: Vec<User>,
        merge: bool,
    ) -> Result<usize> {
        self.write(version.cloned(), move |tx, v| {
            let mut table = tx.open_table(USERS).map_err(backend)?;
            let n = users.len();
            for user in users {
                let key = (v, user.user_id.as_str());
                let stored: Option<User> = table
                    .get(key)
                    .map_err(backend)?
                    .map(|g| decode(g.value()))
                    .transpose()?;
                let row = match stored {
                    Some(mut s) if merge => {
                        s.features.merge(user.features);
                        if user.embedding.is_some() {
                            s.embedding = user.embedding;
                        }
                        s
                    }
                    Some(s) => User {
                        embedding: user.embedding.or(s.embedding),
                        ..user
                    },
                    None => user,
                };
                table
                    .insert((v, row.user_id.as_str()), encode(&row).as_slice())
                    .map_err(backend)?;
            }
            Ok(n)
        })
        .await
    }

    async fn put_items(&self, version: VersionSel<'_>, items: Vec<Item>) -> Result<usize> {
        self.write(version.cloned(), move |tx, v| {
            let mut table = tx.open_table(ITEMS).map_err(backend)?;
            for item in &items {
                table
                    .insert((v, item.item_id.as_str()), encode(item).as_slice())
                    .map_err(backend)?;
            }
            Ok(items.len())
        })
        .await
    }

    async fn put_recall_pools(
        &self,
        version: VersionSel<'_>,
        pools: Vec<(UserId, Vec<Candidate>)>,
    ) -> Result<usize> {
        self.write(version.cloned(), move |tx, v| {
            let mut table = tx.open_table(POOLS).map_err(backend)?;
            for (user, pool) in &pools {
                table
                    .insert((v, user.as_str()), encode(pool).as_slice())
                    .map_err(backend)?;
            }
            Ok(pools.len())
        })
        .await
    }

    async fn put_popular(&self, version: VersionSel<'_>, items: Vec<Candidate>) -> Result<usize> {
        self.write(version.cloned(), move |tx, v| {
            let mut table = tx.open_table(POPULAR).map_err(backend)?;
            table
                .insert(v, encode(&items).as_slice())
                .map_err(backend)?;
            Ok(items.len())
        })
        .await
    }

    async fn append_events(
        &self,
        user_id: &UserId,
        events: Vec<Event>,
        max_len: usize,
    ) -> Result<usize> {
        let lengths = self
            .append_events_batch(vec![(user_id.clone(), events)], max_len)
            .await?;
        Ok(lengths[0])
    }

    async fn append_events_batch(
        &self,
        appends: Vec<(UserId, Vec<Event>)>,
        max_len: usize,
    ) -> Result<Vec<usize>> {
        // One write transaction for every user: read, append, trim, write back. redb serialises writers, so no
        // append is lost between the read and the write, and the batch costs one commit.
        self.write(None, move |tx, _| {
            let mut table = tx.open_table(EVENTS).map_err(backend)?;
            let mut lengths = Vec::with_capacity(appends.len());
            for (user, events) in appends {
                let mut seq: VecDeque<Event> = table
                    .get(user.as_str())
                    .map_err(backend)?
                    .map(|g| decode(g.value()))
                    .transpose()?
                    .unwrap_or_default();
                if reco_types::append_unique(&mut seq, events, max_len) > 0 {
                    table
                        .insert(user.as_str(), encode(&seq).as_slice())
                        .map_err(backend)?;
                }
                lengths.push(seq.len());
            }
            Ok(lengths)
        })
        .await
    }

    async fn versions(&self) -> Result<(FeatureVersion, Vec<FeatureVersion>)> {
        let tx = self.db.begin_read().map_err(backend)?;
        let meta = tx.open_table(META).map_err(backend)?;
        let active = meta
            .get("active")
            .map_err(backend)?
            .map(|v| v.value().to_string())
            .unwrap_or_default();
        let mut all = Vec::new();
        for row in meta.range("v:".."v;").map_err(backend)? {
            let (k, _) = row.map_err(backend)?;
            if let Ok(v) = FeatureVersion::parse("feature_version", &k.value()[2..]) {
                all.push(v);
            }
        }
        all.sort();
        Ok((
            FeatureVersion::parse("feature_version", &active)
                .map_err(|e| backend(e.to_string()))?,
            all,
        ))
    }

    async fn active_version(&self) -> Result<FeatureVersion> {
        let tx = self.db.begin_read().map_err(backend)?;
        let v = self.read_version(&tx, None)?;
        FeatureVersion::parse("feature_version", &v).map_err(|e| backend(e.to_string()))
    }

    async fn activate(&self, version: &FeatureVersion) -> Result<FeatureVersion> {
        let v = version.to_string();
        let previous = self
            .write(None, move |tx, _| {
                let mut meta = tx.open_table(META).map_err(backend)?;
                let known = meta
                    .get(format!("v:{v}").as_str())
                    .map_err(backend)?
                    .is_some();
                let active = meta
                    .get("active")
                    .map_err(backend)?
                    .is_some_and(|a| a.value() == v);
                if !known && !active {
                    return Err(FeatureStoreError::NotLoaded(v));
                }
                meta.insert(format!("v:{v}").as_str(), "")
                    .map_err(backend)?;
                let previous = meta
                    .insert("active", v.as_str())
                    .map_err(backend)?
                    .map(|g| g.value().to_string());
                Ok(previous.unwrap_or_default())
            })
            .await?;
        FeatureVersion::parse("feature_version", &previous).map_err(|e| backend(e.to_string()))
    }

    async fn ping(&self) -> Result<()> {
        self.db.begin_read().map_err(backend).map(drop)
    }

    fn backend(&self) -> &'static str {
        "redb"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_store_passes_the_shared_suite_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.redb");
        let store = RedbFeatureStore::open(&path).unwrap();
        crate::suite::run_all(&store).await;
        let u = UserId::parse("u", "suite-u1").unwrap();
        let before = store.user_context(None, &u, 0, 0).await.unwrap();
        drop(store);
        let reopened = RedbFeatureStore::open(&path).unwrap();
        assert_eq!(reopened.user_context(None, &u, 0, 0).await.unwrap(), before);
        assert!(reopened.versions().await.unwrap().1.len() >= 2);
    }
}
