//! Candidates' items as this service decoded and checked them, kept by their reference.
//!
//! The gateway sends each candidate's item part (id, the model's item features, embedding, categories) encoded
//! the same way every time it sends that item (`reco_proto::encoded`), and most items recur from request to
//! request. Decoding and validating ~300 item parts per request (their maps, strings and embeddings, each
//! allocated and checked) was half of this service's profile, so decoded items are kept. They are kept by the
//! item part's reference ([`EncodedCandidate::digest`], worked out here from the bytes received), which lets a
//! caller that has sent an item in full send only its reference afterwards: receiving the ~100 KB of item parts
//! of every request, and hashing and comparing them to find them here, was most of what was left. Keyed by what
//! the bytes are, an entry can never be stale: the same bytes always make the same item, so there is no TTL, only
//! a bound on the entries (the map is emptied when full; its items' references then go unresolved once, and the
//! caller sends them in full again).

use std::sync::{Arc, RwLock};

use prost::bytes::Bytes;
use reco_proto::ranking::v1::{EncodedCandidate, ITEM_REF_LEN};
use reco_ranker::RankItem;

type Ref = [u8; ITEM_REF_LEN];

/// How a request names a candidate's item.
#[derive(Clone, Copy, Debug)]
pub enum ItemPart<'a> {
    /// The item part itself.
    Full(&'a Bytes),
    /// The reference to an item part sent before.
    Ref(&'a Ref),
}

pub struct DecodedItems {
    capacity: usize,
    map: RwLock<foldhash::HashMap<Ref, Arc<RankItem>>>,
}

impl DecodedItems {
    /// Keeps at most `capacity` items; 0 keeps none (every item part is decoded every time, and no reference
    /// resolves).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            map: RwLock::new(foldhash::HashMap::default()),
        }
    }

    /// The items of `parts`, in order: each one found by its reference, or made by `decode` (given its index) from
    /// a full part and kept. A reference this service does not hold is `None`. The first error of `decode` is
    /// returned, and nothing of that call is kept.
    pub fn get_or_decode<E>(
        &self,
        parts: &[ItemPart<'_>],
        decode: impl Fn(usize, &Bytes) -> Result<RankItem, E>,
    ) -> Result<Vec<Option<Arc<RankItem>>>, E> {
        let keys: Vec<Ref> = parts
            .iter()
            .map(|p| match p {
                ItemPart::Full(b) => EncodedCandidate::digest(b),
                ItemPart::Ref(r) => **r,
            })
            .collect();
        let mut found: Vec<Option<Arc<RankItem>>> = if self.capacity == 0 {
            vec![None; parts.len()]
        } else {
            let map = self.map.read().expect("decoded items lock");
            keys.iter().map(|k| map.get(k).cloned()).collect()
        };
        let mut fresh = Vec::new();
        for (i, slot) in found.iter_mut().enumerate() {
            if let (None, ItemPart::Full(part)) = (&slot, parts[i]) {
                let item = Arc::new(decode(i, part)?);
                fresh.push((keys[i], item.clone()));
                *slot = Some(item);
            }
        }
        if !fresh.is_empty() && self.capacity > 0 {
            let mut map = self.map.write().expect("decoded items lock");
            for (key, item) in fresh {
                if map.len() >= self.capacity {
                    map.clear();
                }
                map.entry(key).or_insert(item);
            }
        }
        Ok(found)
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
        let full = |b| ItemPart::Full(b);
        let ids = |got: &[Option<Arc<RankItem>>]| -> Vec<String> {
            got.iter()
                .map(|i| i.as_ref().map_or("-".into(), |i| i.item_id().to_string()))
                .collect()
        };
        let got = items
            .get_or_decode(&[full(&a), full(&b), full(&a)], decode)
            .unwrap();
        assert_eq!(ids(&got), ["a", "b", "a"]);
        // `a` twice in one call is decoded twice (neither was kept yet), then kept once.
        assert_eq!(decoded.load(Ordering::Relaxed), 3);
        assert_eq!(items.len(), 2);
        let again = items.get_or_decode(&[full(&b), full(&a)], decode).unwrap();
        assert_eq!(decoded.load(Ordering::Relaxed), 3, "both were kept");
        assert!(Arc::ptr_eq(
            again[1].as_ref().unwrap(),
            got[0].as_ref().unwrap()
        ));

        // By reference: a kept part resolves to the same item, an unknown one is None and nothing is decoded.
        let (ref_a, ref_c) = (EncodedCandidate::digest(&a), EncodedCandidate::digest(&c));
        let by_ref = items
            .get_or_decode(&[ItemPart::Ref(&ref_a), ItemPart::Ref(&ref_c)], decode)
            .unwrap();
        assert_eq!(ids(&by_ref), ["a", "-"]);
        assert!(Arc::ptr_eq(
            by_ref[0].as_ref().unwrap(),
            got[0].as_ref().unwrap()
        ));
        assert_eq!(decoded.load(Ordering::Relaxed), 3);

        let bad = Bytes::from("bad");
        assert_eq!(
            items
                .get_or_decode(&[full(&c), full(&bad)], decode)
                .unwrap_err(),
            "bad item"
        );
        assert_eq!(items.len(), 2, "nothing of a refused call is kept");

        // Full: emptied, then filled again.
        items.get_or_decode(&[full(&c), full(&d)], decode).unwrap();
        assert!(items.len() <= 3);
        let unkept = DecodedItems::new(0);
        unkept.get_or_decode(&[full(&a)], decode).unwrap();
        assert_eq!(unkept.len(), 0);
        let unresolved = unkept
            .get_or_decode(&[ItemPart::Ref(&ref_a)], decode)
            .unwrap();
        assert!(
            unresolved[0].is_none(),
            "a service that keeps nothing resolves nothing"
        );
    }
}
