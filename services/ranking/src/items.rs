//! Candidates' items as this service decoded and checked them, kept by the bytes they came as.
//!
//! The gateway sends each candidate's item part (id, the model's item features, embedding, categories) encoded
//! the same way every time it sends that item (`reco_proto::encoded`), and most items recur from request to
//! request. Decoding and validating ~300 item parts per request (their maps, strings and embeddings, each
//! allocated and checked) was half of this service's profile; with them kept, its CPU at 300 Recommend/s went
//! from ~25% to ~21% of a core (the rest is receiving the ~100 KB request). Keyed by the bytes, an entry can never be
//! stale: the same bytes always make the same item, so there is no TTL, only a bound on the entries (the map is
//! emptied when full; the items then decode again on their next request).

use std::sync::{Arc, RwLock};

use prost::bytes::Bytes;
use reco_ranker::RankItem;

pub struct DecodedItems {
    capacity: usize,
    map: RwLock<foldhash::HashMap<Bytes, Arc<RankItem>>>,
}

impl DecodedItems {
    /// Keeps at most `capacity` items; 0 keeps none (every item part is decoded every time).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: RwLock::new(foldhash::HashMap::default()),
        }
    }

    /// The items of `parts`, in order: each one found by its bytes, or made by `decode` (given its index) and kept.
    /// The first error of `decode` is returned, and nothing of that call is kept.
    pub fn get_or_decode<E>(
        &self,
        parts: &[&Bytes],
        decode: impl Fn(usize, &Bytes) -> Result<RankItem, E>,
    ) -> Result<Vec<Arc<RankItem>>, E> {
        let mut found: Vec<Option<Arc<RankItem>>> = if self.capacity == 0 {
            vec![None; parts.len()]
        } else {
            let map = self.map.read().expect("decoded items lock");
            parts.iter().map(|p| map.get(*p).cloned()).collect()
        };
        let mut fresh = Vec::new();
        for (i, slot) in found.iter_mut().enumerate() {
            if slot.is_none() {
                let item = Arc::new(decode(i, parts[i])?);
                fresh.push((parts[i].clone(), item.clone()));
                *slot = Some(item);
            }
        }
        if !fresh.is_empty() && self.capacity > 0 {
            let mut map = self.map.write().expect("decoded items lock");
            for (bytes, item) in fresh {
                if map.len() >= self.capacity {
                    map.clear();
                }
                map.entry(bytes).or_insert(item);
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.read().expect("decoded items lock").len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use reco_types::{Features, ItemId};

    use super::*;

    fn item(id: &str) -> RankItem {
        RankItem::new(
            ItemId::parse("item_id", id).unwrap(),
            Features::new(),
            Vec::new(),
            None,
        )
    }

    #[test]
    fn an_item_part_seen_before_is_not_decoded_again_and_a_bad_one_is_not_kept() {
        let items = DecodedItems::new(3);
        let decoded = AtomicUsize::new(0);
        let decode = |_: usize, b: &Bytes| -> Result<RankItem, String> {
            decoded.fetch_add(1, Ordering::Relaxed);
            match std::str::from_utf8(b).unwrap() {
                "bad" => Err("bad item".into()),
                id => Ok(item(id)),
            }
        };
        let (a, b, c, d) = (
            Bytes::from("a"),
            Bytes::from("b"),
            Bytes::from("c"),
            Bytes::from("d"),
        );
        let got = items.get_or_decode(&[&a, &b, &a], decode).unwrap();
        let ids: Vec<_> = got.iter().map(|i| i.item_id().as_str()).collect();
        assert_eq!(ids, ["a", "b", "a"]);
        // `a` twice in one call is decoded twice (neither was kept yet), then kept once.
        assert_eq!(decoded.load(Ordering::Relaxed), 3);
        assert_eq!(items.len(), 2);
        let again = items.get_or_decode(&[&b, &a], decode).unwrap();
        assert_eq!(decoded.load(Ordering::Relaxed), 3, "both were kept");
        assert!(Arc::ptr_eq(&again[1], &got[0]));

        let bad = Bytes::from("bad");
        assert_eq!(
            items.get_or_decode(&[&c, &bad], decode).unwrap_err(),
            "bad item"
        );
        assert_eq!(items.len(), 2, "nothing of a refused call is kept");

        // Full: emptied, then filled again.
        items.get_or_decode(&[&c, &d], decode).unwrap();
        assert!(items.len() <= 3);
        let unkept = DecodedItems::new(0);
        unkept.get_or_decode(&[&a], decode).unwrap();
        assert_eq!(unkept.len(), 0);
    }
}
