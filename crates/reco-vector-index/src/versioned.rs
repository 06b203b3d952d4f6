//! Index versions: one serving index that searches read, and staging indexes that a bulk load or a rebuild
//! fills while the serving one keeps answering. Activating a version is one pointer swap; the replaced index is
//! dropped once the last search holding it finishes.

use std::{collections::HashMap, sync::Arc};

use parking_lot::{Mutex, RwLock};

use crate::VectorIndex;

/// The name of the index a fresh service serves.
pub const INITIAL_VERSION: &str = "v1";

type Factory = Box<dyn Fn(&str) -> crate::Result<Arc<dyn VectorIndex>> + Send + Sync>;

/// An index to write, holding off rebuild swaps until dropped.
pub struct Writer {
    index: Arc<dyn VectorIndex>,
    _gate: tokio::sync::OwnedRwLockReadGuard<()>,
}

impl std::ops::Deref for Writer {
    type Target = dyn VectorIndex;
    fn deref(&self) -> &Self::Target {
        &*self.index
    }
}

/// A serving index and its staged successors.
pub struct VersionedIndex {
    serving: RwLock<(String, Arc<dyn VectorIndex>)>,
    staging: Mutex<HashMap<String, Arc<dyn VectorIndex>>>,
    make: Factory,
    gate: Arc<tokio::sync::RwLock<()>>,
}

/// Activation of a version that was never staged.
#[derive(Debug, thiserror::Error)]
#[error("index version {0:?} has not been staged")]
pub struct UnknownVersion(pub String);

impl VersionedIndex {
    /// Serves an empty index from `make`, which also builds every staging index (given its version).
    pub fn new(
        make: impl Fn(&str) -> crate::Result<Arc<dyn VectorIndex>> + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        Self::serving_from(INITIAL_VERSION, make(INITIAL_VERSION)?, make)
    }

    /// Serves `index` (loaded from disk, say) as `version`; `make` builds staging indexes.
    pub fn serving_from(
        version: &str,
        index: Arc<dyn VectorIndex>,
        make: impl Fn(&str) -> crate::Result<Arc<dyn VectorIndex>> + Send + Sync + 'static,
    ) -> crate::Result<Self> {
        Ok(Self {
            serving: RwLock::new((version.to_string(), index)),
            staging: Mutex::default(),
            make: Box::new(make),
            gate: Arc::default(),
        })
    }

    /// The serving version and index.
    pub fn serving(&self) -> (String, Arc<dyn VectorIndex>) {
        let s = self.serving.read();
        (s.0.clone(), s.1.clone())
    }

    /// The index to write for `version`: the serving one for None or its own name, else a staging index
    /// (created empty on first use). Hold the writer for the whole write: a rebuild does not swap while one is
    /// held, so no write lands on an index about to be replaced.
    pub async fn for_write(&self, version: Option<&str>) -> crate::Result<Writer> {
        let gate = self.gate.clone().read_owned().await;
        let index = {
            let serving = self.serving.read();
            match version {
                None => serving.1.clone(),
                Some(v) if v == serving.0 => serving.1.clone(),
                Some(v) => {
                    let mut staging = self.staging.lock();
                    match staging.get(v) {
                        Some(i) => i.clone(),
                        None => {
                            let i = (self.make)(v)?;
                            staging.insert(v.to_string(), i.clone());
                            i
                        }
                    }
                }
            }
        };
        Ok(Writer { index, _gate: gate })
    }

    /// Rebuilds the serving index beside it and swaps the copy in, unless the serving index changed meanwhile (a
    /// write or an activation: the copy would miss it; the caller tries again later). Searches run on the old
    /// index until the swap and on the new one after, and none waits for the build, which runs on a blocking
    /// thread. True when swapped.
    pub async fn rebuild_serving(&self) -> crate::Result<bool> {
        let (name, old) = self.serving();
        let before = old.stats().await?.version;
        let source = old.clone();
        let fresh = tokio::task::spawn_blocking(move || source.rebuilt())
            .await
            .map_err(|e| crate::VectorIndexError::Backend(format!("rebuild: {e}")))??;
        let Some(fresh) = fresh else {
            return Ok(false);
        };
        // No write is in flight while the gate is held, so the stamp compared is the final one.
        let _gate = self.gate.clone().write_owned().await;
        if old.stats().await?.version != before {
            return Ok(false);
        }
        let mut serving = self.serving.write();
        if !Arc::ptr_eq(&serving.1, &old) {
            return Ok(false);
        }
        *serving = (name, fresh);
        Ok(true)
    }

    /// Makes a staged version the serving one; returns the version it replaced. The staged index is promoted first
    /// (a remote backend swaps its alias); if that fails, it stays staged and the serving one keeps serving.
    pub async fn activate(&self, version: &str) -> Result<String, ActivateError> {
        if self.serving.read().0 == version {
            return Ok(version.to_string());
        }
        let staged = self
            .staging
            .lock()
            .get(version)
            .cloned()
            .ok_or_else(|| UnknownVersion(version.to_string()))?;
        staged.promote().await?;
        self.staging.lock().remove(version);
        let mut serving = self.serving.write();
        let previous = std::mem::replace(&mut *serving, (version.to_string(), staged));
        Ok(previous.0)
    }
}

/// Why an activation failed.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error(transparent)]
    Unknown(#[from] UnknownVersion),
    #[error(transparent)]
    Backend(#[from] crate::VectorIndexError),
}

#[cfg(test)]
mod tests {
    use reco_types::{Embedding, ItemFilter, ItemId};

    use super::*;
    use crate::{ExactIndex, IndexedItem, Metric};

    fn item(id: &str) -> IndexedItem {
        IndexedItem {
            item_id: ItemId::parse("i", id).unwrap(),
            vector: Embedding::parse("v", vec![1.0, 0.0]).unwrap(),
            categories: vec![],
        }
    }

    #[tokio::test]
    async fn a_staged_version_serves_only_once_activated_and_searches_never_see_it_half_built() {
        let idx =
            VersionedIndex::new(|_| Ok(Arc::new(ExactIndex::new(2, Metric::Cosine)))).unwrap();
        idx.for_write(None)
            .await
            .unwrap()
            .upsert(vec![item("old")])
            .await
            .unwrap();
        idx.for_write(Some("next"))
            .await
            .unwrap()
            .upsert(vec![item("new-1")])
            .await
            .unwrap();
        let q = Embedding::parse("q", vec![1.0, 0.0]).unwrap();
        let q = &q;
        let search = |idx: &VersionedIndex| {
            let (_, i) = idx.serving();
            async move { i.search(q, 10, &ItemFilter::default()).await.unwrap() }
        };
        assert_eq!(search(&idx).await[0].item_id.as_str(), "old");
        // A search that took the serving index before the switch finishes on it.
        let (_, held) = idx.serving();
        idx.for_write(Some("next"))
            .await
            .unwrap()
            .upsert(vec![item("new-2")])
            .await
            .unwrap();
        assert_eq!(idx.activate("next").await.unwrap(), "v1");
        assert_eq!(search(&idx).await.len(), 2);
        assert_eq!(
            held.search(q, 10, &ItemFilter::default())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(idx.activate("never").await.is_err());
        assert_eq!(idx.serving().0, "next");
    }
}
