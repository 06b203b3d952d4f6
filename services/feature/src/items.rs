//! Item batches answered from items encoded once.
//!
//! A 200-item batch with embeddings is ≈90 KB of protobuf. Building it on every request (read each item, clone it,
//! convert it to its proto type, encode it) was the feature service's whole cost per batch: at 1,000 batches a
//! second, 60% of a core, and the tail latency that came with it. Here each item of the active version is encoded
//! once, with and without its embedding, and kept for a TTL; a batch copies the encodings it finds into the answer
//! (`BatchGetItemFeaturesResponse::encoded_items`) and reads only the others from the store.
//!
//! What stays correct: items written through this service are dropped at once (and a read that raced the write
//! does not put the old item back); a change of the active version empties the cache; items written to the store
//! by anything else show within the TTL.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prost::{Message, bytes::Bytes};
use reco_feature_store::FeatureStore;
use reco_proto::feature::v1 as pb;
use reco_server::ItemCache;
use reco_types::{FeatureVersion, ItemId};

use crate::Error;

/// One item's answer, both ways it can be asked for.
pub struct Encoded {
    with_embedding: Bytes,
    without_embedding: Bytes,
}

impl Encoded {
    fn of(item: reco_types::Item) -> Self {
        let mut item = pb::Item::from(item);
        let with_embedding = Bytes::from(item.encode_to_vec());
        item.embedding = Vec::new();
        Self {
            with_embedding,
            without_embedding: Bytes::from(item.encode_to_vec()),
        }
    }

    fn get(&self, include_embeddings: bool) -> Bytes {
        if include_embeddings {
            self.with_embedding.clone()
        } else {
            self.without_embedding.clone()
        }
    }
}

/// Encoded items of the active version.
pub struct EncodedItems {
    cache: ItemCache<Encoded>,
    /// The version the entries were read from.
    version: Mutex<Option<FeatureVersion>>,
    /// Counts item writes: a read that saw it change while it was reading does not cache what it read.
    writes: AtomicU64,
}

/// What a batch found: the encoded items in the order asked, and the ids no item has.
pub struct Found {
    pub items: Vec<Bytes>,
    pub missing: Vec<String>,
}

impl EncodedItems {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            cache: ItemCache::new(ttl, capacity),
            version: Mutex::new(None),
            writes: AtomicU64::new(0),
        }
    }

    /// The items of `ids` in `active` (the active version), from the cache where it has them, from `store` (then
    /// cached) otherwise.
    pub async fn read(
        &self,
        store: &dyn FeatureStore,
        active: &FeatureVersion,
        ids: &[ItemId],
        include_embeddings: bool,
    ) -> Result<Found, Error> {
        {
            let mut version = self.version.lock().expect("version lock");
            if version.as_ref() != Some(active) {
                self.cache.clear();
                *version = Some(active.clone());
            }
        }
        let writes = self.writes.load(Ordering::Acquire);
        // One slot per id asked, in order: filled from the cache now, from the store for the rest.
        let mut slots: Vec<Option<Arc<Encoded>>> = Vec::with_capacity(ids.len());
        let mut missing: Vec<ItemId> = Vec::new();
        self.cache.get_many(ids, |id, found| {
            if found.is_none() {
                missing.push(id.clone());
            }
            slots.push(found);
        });
        if !missing.is_empty() {
            let read: HashMap<ItemId, Arc<Encoded>> = store
                .items(Some(active), &missing, true)
                .await?
                .into_iter()
                .map(|item| (item.item_id.clone(), Arc::new(Encoded::of(item))))
                .collect();
            for (slot, id) in slots.iter_mut().zip(ids) {
                if slot.is_none() {
                    *slot = read.get(id).cloned();
                }
            }
            // Cached only if no item was written and the active version did not change meanwhile (the version
            // lock is held while inserting, so a change cannot slip in between).
            let version = self.version.lock().expect("version lock");
            if version.as_ref() == Some(active) && self.writes.load(Ordering::Acquire) == writes {
                self.cache.insert_many(read);
            }
        }
        let mut found = Found {
            items: Vec::with_capacity(ids.len()),
            missing: Vec::new(),
        };
        for (slot, id) in slots.into_iter().zip(ids) {
            match slot {
                Some(e) => found.items.push(e.get(include_embeddings)),
                None => found.missing.push(id.to_string()),
            }
        }
        Ok(found)
    }

    /// Drops written items (of any version: the cache holds only the active one, and a write to another version
    /// costs at most a re-read).
    pub fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a ItemId>) {
        self.writes.fetch_add(1, Ordering::AcqRel);
        self.cache.forget(ids);
    }
}
