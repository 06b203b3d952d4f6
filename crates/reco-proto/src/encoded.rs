//! Two messages written by hand instead of generated (build.rs maps them here with `extern_path`), so that a
//! sender can put in parts it encoded once and kept: `reco.feature.v1.BatchGetItemFeaturesResponse` (the feature
//! service's items) and `reco.ranking.v1.RankRequest` (the gateway's candidates, whose item part recurs from
//! request to request while their sources change).
//!
//! Encoding 200 items with their embeddings (≈90 KB) was most of the feature service's work per item batch:
//! cloning each cached item, converting it to its proto type and encoding it, on every request. An entry of
//! `encoded_items` is an `Item` already encoded, and is written to the wire as one more entry of field 1, byte for
//! byte what encoding the `Item` would write. A reader cannot tell the difference: decoding fills `items` as the
//! generated type would, and `encoded_items` stays empty. Likewise an [`EncodedCandidate`] is a `RankCandidate`
//! whose fields but `sources` were encoded once. A decoded `RankRequest` keeps its candidates that way too: each
//! candidate's item part as bytes, its sources decoded, so that a receiver can tell an item it has seen before by
//! its bytes and skip decoding and validating it again (the ranking service does). The tests below hold both types
//! to the proto's fields.

use std::collections::BTreeMap;

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{
        DecodeContext, WireType, btree_map, decode_key, encode_key, encode_varint,
        encoded_len_varint, float, key_len, message, skip_field, string, uint32,
    },
};

use crate::{
    common::v1::{Features, SourceHit},
    feature::v1::Item,
    ranking::v1::RankCandidate,
};

const ITEMS: u32 = 1;
const MISSING_ITEM_IDS: u32 = 2;
const FEATURE_VERSION: u32 = 3;

#[derive(Clone, PartialEq, Default, Debug)]
pub struct BatchGetItemFeaturesResponse {
    /// In the order asked, unknown ones left out.
    pub items: Vec<Item>,
    pub missing_item_ids: Vec<String>,
    pub feature_version: String,
    /// Items already encoded (each the encoding of an [`Item`], without a length prefix), sent after `items` as
    /// more items. Only a sender fills it; a decoded answer has every item in `items`.
    pub encoded_items: Vec<Bytes>,
}

impl BatchGetItemFeaturesResponse {
    /// How many items the answer holds, decoded or encoded.
    pub fn len(&self) -> usize {
        self.items.len() + self.encoded_items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Message for BatchGetItemFeaturesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        message::encode_repeated(ITEMS, &self.items, buf);
        for item in &self.encoded_items {
            encode_key(ITEMS, WireType::LengthDelimited, buf);
            encode_varint(item.len() as u64, buf);
            buf.put_slice(item);
        }
        string::encode_repeated(MISSING_ITEM_IDS, &self.missing_item_ids, buf);
        if !self.feature_version.is_empty() {
            string::encode(FEATURE_VERSION, &self.feature_version, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let (what, merged) = match tag {
            ITEMS => (
                "items",
                message::merge_repeated(wire_type, &mut self.items, buf, ctx),
            ),
            MISSING_ITEM_IDS => (
                "missing_item_ids",
                string::merge_repeated(wire_type, &mut self.missing_item_ids, buf, ctx),
            ),
            FEATURE_VERSION => (
                "feature_version",
                string::merge(wire_type, &mut self.feature_version, buf, ctx),
            ),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        merged.map_err(|mut e| {
            e.push("BatchGetItemFeaturesResponse", what);
            e
        })
    }

    fn encoded_len(&self) -> usize {
        message::encoded_len_repeated(ITEMS, &self.items)
            + self
                .encoded_items
                .iter()
                .map(|b| key_len(ITEMS) + encoded_len_varint(b.len() as u64) + b.len())
                .sum::<usize>()
            + string::encoded_len_repeated(MISSING_ITEM_IDS, &self.missing_item_ids)
            + if self.feature_version.is_empty() {
                0
            } else {
                string::encoded_len(FEATURE_VERSION, &self.feature_version)
            }
    }

    fn clear(&mut self) {
        self.items.clear();
        self.missing_item_ids.clear();
        self.feature_version.clear();
        self.encoded_items.clear();
    }
}

/// `reco.ranking.v1.RankRequest`, with candidates that may come partly encoded.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct RankRequest {
    pub user_id: String,
    pub user_features: Option<Features>,
    pub user_embedding: Vec<f32>,
    /// At most 2,000 (with `encoded_candidates`). Only a sender fills it: decoding fills `encoded_candidates`.
    pub candidates: Vec<RankCandidate>,
    /// Return only the best `top_n`; 0 means all.
    pub top_n: u32,
    /// Request context (device, locale, ...).
    pub context: BTreeMap<String, String>,
    /// Candidates whose item part was encoded once, sent after `candidates` as more candidates. A decoded request
    /// has every candidate here, in the order sent: [`EncodedCandidate::decode_item`] reads its item part.
    pub encoded_candidates: Vec<EncodedCandidate>,
}

/// A `RankCandidate` as its item part (fields `item_id`, `item_features`, `embedding`, `categories` of a
/// `RankCandidate`, encoded: [`EncodedCandidate::item_part`]) and its sources, which change per request. A
/// candidate whose item the receiver holds already can be sent by reference instead: `item` empty, `item_ref` the
/// part's [`EncodedCandidate::digest`].
#[derive(Clone, PartialEq, Default, Debug)]
pub struct EncodedCandidate {
    pub item: Bytes,
    pub sources: Vec<SourceHit>,
    /// Field `item_ref`: empty, or the digest of an item part sent before.
    pub item_ref: Bytes,
}

const CANDIDATE_SOURCES: u32 = 3;
const CANDIDATE_ITEM_REF: u32 = 6;

/// How many bytes of an item part's SHA-256 make its reference: 128 bits, so two different parts never share
/// one in practice.
pub const ITEM_REF_LEN: usize = 16;

impl EncodedCandidate {
    /// The item part of a candidate: `candidate` encoded without its sources.
    pub fn item_part(candidate: &RankCandidate) -> Bytes {
        debug_assert!(candidate.sources.is_empty(), "sources are sent per request");
        Bytes::from(candidate.encode_to_vec())
    }

    /// The reference to an item part: the first [`ITEM_REF_LEN`] bytes of its SHA-256. The sender and the receiver
    /// each work it out from the bytes, so a reference can only ever name the part it was made from.
    pub fn digest(part: &[u8]) -> [u8; ITEM_REF_LEN] {
        use sha2::Digest;
        let full = sha2::Sha256::digest(part);
        let mut out = [0; ITEM_REF_LEN];
        out.copy_from_slice(&full[..ITEM_REF_LEN]);
        out
    }

    /// The candidate's fields but `sources`, decoded.
    pub fn decode_item(&self) -> Result<RankCandidate, DecodeError> {
        RankCandidate::decode(self.item.as_ref())
    }

    /// Reads one `RankCandidate` off the wire: its sources and `item_ref` decoded, every other field kept as it
    /// came (key, length and value) in the item part, so that the same item sent twice gives the same bytes. prost
    /// checks the framing (`bytes::merge`, `skip_field`).
    fn merge(
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<EncodedCandidate, DecodeError> {
        let mut body = Vec::new();
        prost::encoding::bytes::merge(wire_type, &mut body, buf, ctx.clone())?;
        let mut item = Vec::with_capacity(body.len());
        let mut sources = Vec::new();
        let mut item_ref = Vec::new();
        let mut rest = body.as_slice();
        while !rest.is_empty() {
            let start = body.len() - rest.len();
            let (tag, wire_type) = decode_key(&mut rest)?;
            if tag == CANDIDATE_SOURCES {
                let mut hit = SourceHit::default();
                message::merge(wire_type, &mut hit, &mut rest, ctx.clone())?;
                sources.push(hit);
            } else if tag == CANDIDATE_ITEM_REF {
                prost::encoding::bytes::merge(wire_type, &mut item_ref, &mut rest, ctx.clone())?;
            } else {
                skip_field(wire_type, tag, &mut rest, ctx.clone())?;
                item.extend_from_slice(&body[start..body.len() - rest.len()]);
            }
        }
        Ok(EncodedCandidate {
            item: Bytes::from(item),
            sources,
            item_ref: Bytes::from(item_ref),
        })
    }

    fn body_len(&self) -> usize {
        self.item.len()
            + message::encoded_len_repeated(CANDIDATE_SOURCES, &self.sources)
            + if self.item_ref.is_empty() {
                0
            } else {
                prost::encoding::bytes::encoded_len(CANDIDATE_ITEM_REF, &self.item_ref)
            }
    }
}

impl RankRequest {
    /// How many candidates the request holds, decoded or encoded.
    pub fn len(&self) -> usize {
        self.candidates.len() + self.encoded_candidates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Message for RankRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.user_id.is_empty() {
            string::encode(1, &self.user_id, buf);
        }
        if let Some(f) = &self.user_features {
            message::encode(2, f, buf);
        }
        float::encode_packed(3, &self.user_embedding, buf);
        message::encode_repeated(4, &self.candidates, buf);
        for c in &self.encoded_candidates {
            // A message's fields may come in any order: the item part, then the sources.
            encode_key(4, WireType::LengthDelimited, buf);
            encode_varint(c.body_len() as u64, buf);
            buf.put_slice(&c.item);
            message::encode_repeated(CANDIDATE_SOURCES, &c.sources, buf);
            if !c.item_ref.is_empty() {
                prost::encoding::bytes::encode(CANDIDATE_ITEM_REF, &c.item_ref, buf);
            }
        }
        if self.top_n != 0 {
            uint32::encode(5, &self.top_n, buf);
        }
        btree_map::encode(
            string::encode,
            string::encoded_len,
            string::encode,
            string::encoded_len,
            6,
            &self.context,
            buf,
        );
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let (what, merged) = match tag {
            1 => (
                "user_id",
                string::merge(wire_type, &mut self.user_id, buf, ctx),
            ),
            2 => (
                "user_features",
                message::merge(
                    wire_type,
                    self.user_features.get_or_insert_with(Default::default),
                    buf,
                    ctx,
                ),
            ),
            3 => (
                "user_embedding",
                float::merge_repeated(wire_type, &mut self.user_embedding, buf, ctx),
            ),
            4 => (
                "candidates",
                EncodedCandidate::merge(wire_type, buf, ctx)
                    .map(|c| self.encoded_candidates.push(c)),
            ),
            5 => ("top_n", uint32::merge(wire_type, &mut self.top_n, buf, ctx)),
            6 => (
                "context",
                btree_map::merge(string::merge, string::merge, &mut self.context, buf, ctx),
            ),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        merged.map_err(|mut e| {
            e.push("RankRequest", what);
            e
        })
    }

    fn encoded_len(&self) -> usize {
        (if self.user_id.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.user_id)
        }) + self
            .user_features
            .as_ref()
            .map_or(0, |f| message::encoded_len(2, f))
            + float::encoded_len_packed(3, &self.user_embedding)
            + message::encoded_len_repeated(4, &self.candidates)
            + self
                .encoded_candidates
                .iter()
                .map(|c| key_len(4) + encoded_len_varint(c.body_len() as u64) + c.body_len())
                .sum::<usize>()
            + if self.top_n == 0 {
                0
            } else {
                uint32::encoded_len(5, &self.top_n)
            }
            + btree_map::encoded_len(string::encoded_len, string::encoded_len, 6, &self.context)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::common::v1::{FeatureValue, Features, feature_value};

    fn item(id: &str) -> Item {
        Item {
            item_id: id.into(),
            categories: vec!["Drama".into(), "War".into()],
            features: Some(Features {
                values: [(
                    "popularity".to_string(),
                    FeatureValue {
                        kind: Some(feature_value::Kind::FloatValue(0.25)),
                    },
                )]
                .into(),
            }),
            embedding: vec![0.5, -1.0, 3.25],
        }
    }

    #[test]
    fn encoded_items_read_back_as_the_items_they_encode() {
        let items = vec![item("a"), item("b"), item("c")];
        let decoded = BatchGetItemFeaturesResponse {
            items: items.clone(),
            missing_item_ids: vec!["x".into()],
            feature_version: "v7".into(),
            encoded_items: vec![],
        };
        let pre_encoded = BatchGetItemFeaturesResponse {
            items: vec![items[0].clone()],
            encoded_items: items[1..]
                .iter()
                .map(|i| Bytes::from(i.encode_to_vec()))
                .collect(),
            ..decoded.clone()
        };
        let wire = pre_encoded.encode_to_vec();
        assert_eq!(wire.len(), pre_encoded.encoded_len());
        assert_eq!(
            wire,
            decoded.encode_to_vec(),
            "the same bytes as encoding the items"
        );
        let back = BatchGetItemFeaturesResponse::decode(wire.as_slice()).unwrap();
        assert_eq!(back, decoded);
        assert_eq!(back.len(), 3);
    }

    #[test]
    fn unknown_fields_are_skipped_and_a_bad_item_is_an_error_naming_the_field() {
        let mut wire = BatchGetItemFeaturesResponse {
            feature_version: "v1".into(),
            ..Default::default()
        }
        .encode_to_vec();
        // Field 9, varint 1: a field a newer sender might add.
        wire.extend([9 << 3, 1]);
        let back = BatchGetItemFeaturesResponse::decode(wire.as_slice()).unwrap();
        assert_eq!(back.feature_version, "v1");

        // Field 1 claiming 5 bytes of item where 2 follow.
        let err = BatchGetItemFeaturesResponse::decode([(1 << 3) | 2, 5, 0, 0].as_slice())
            .unwrap_err()
            .to_string();
        assert!(err.contains("items"), "{err}");
    }

    /// The proto is the contract: this hand-written type must hold exactly its fields, numbered and typed alike.
    #[test]
    fn the_fields_are_the_protos() {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("descriptors");
        let message = set
            .file
            .iter()
            .filter(|f| f.package() == "reco.feature.v1")
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == "BatchGetItemFeaturesResponse")
            .expect("the message is in the proto");
        let fields: Vec<(&str, i32, &str)> = message
            .field
            .iter()
            .map(|f| (f.name(), f.number(), f.type_name()))
            .collect();
        assert_eq!(
            fields,
            [
                ("items", ITEMS as i32, ".reco.feature.v1.Item"),
                ("missing_item_ids", MISSING_ITEM_IDS as i32, ""),
                ("feature_version", FEATURE_VERSION as i32, ""),
            ]
        );
    }

    fn candidate(id: &str, sources: Vec<SourceHit>) -> RankCandidate {
        RankCandidate {
            item_id: id.into(),
            item_features: item(id).features,
            sources,
            embedding: vec![1.0, 2.0],
            categories: vec!["Comedy".into()],
            item_ref: Vec::new(),
        }
    }

    #[test]
    fn encoded_candidates_read_back_as_the_candidates_they_encode() {
        let hit = |s: &str, rank| SourceHit {
            source: s.into(),
            rank,
            score: 0.5,
        };
        let full = [
            candidate("a", vec![hit("cf", 0)]),
            candidate("b", vec![hit("cf", 1), hit("vector", 3)]),
            candidate("c", vec![]),
        ];
        let base = RankRequest {
            user_id: "u1".into(),
            user_features: item("u").features,
            user_embedding: vec![0.5, 0.25],
            top_n: 7,
            context: [("device".to_string(), "tv".to_string())].into(),
            ..Default::default()
        };
        let decoded = RankRequest {
            candidates: full.to_vec(),
            ..base.clone()
        };
        let pre_encoded = RankRequest {
            candidates: vec![full[0].clone()],
            encoded_candidates: full[1..]
                .iter()
                .map(|c| EncodedCandidate {
                    item: EncodedCandidate::item_part(&RankCandidate {
                        sources: vec![],
                        ..c.clone()
                    }),
                    sources: c.sources.clone(),
                    item_ref: Bytes::new(),
                })
                .collect(),
            ..base
        };
        let wire = pre_encoded.encode_to_vec();
        assert_eq!(wire.len(), pre_encoded.encoded_len());
        assert_eq!(pre_encoded.len(), 3);
        // Decoded, candidates come as item part and sources, and read back as the candidates sent.
        let whole = |r: RankRequest| RankRequest {
            candidates: r
                .encoded_candidates
                .iter()
                .map(|c| RankCandidate {
                    sources: c.sources.clone(),
                    ..c.decode_item().unwrap()
                })
                .collect(),
            encoded_candidates: Vec::new(),
            ..r
        };
        let back = RankRequest::decode(wire.as_slice()).unwrap();
        assert!(back.candidates.is_empty());
        assert_eq!(back.len(), 3);
        assert_eq!(whole(back.clone()), decoded);
        let generated = RankRequest::decode(decoded.encode_to_vec().as_slice()).unwrap();
        assert_eq!(whole(generated.clone()), decoded);
        // The same item gives the same item part, however it was sent.
        for (a, b) in back
            .encoded_candidates
            .iter()
            .zip(&generated.encoded_candidates)
        {
            assert_eq!(a.item, b.item);
        }
        // A candidate whose fields come in another order (sources first, the embedding unpacked) still reads back.
        let mut odd = Vec::new();
        message::encode(CANDIDATE_SOURCES, &hit("graph", 9), &mut odd);
        string::encode(1, &"z".to_string(), &mut odd);
        float::encode_repeated(4, &[1.5, -2.0], &mut odd);
        let mut wire = Vec::new();
        encode_key(4, WireType::LengthDelimited, &mut wire);
        encode_varint(odd.len() as u64, &mut wire);
        wire.extend_from_slice(&odd);
        let c = &RankRequest::decode(wire.as_slice())
            .unwrap()
            .encoded_candidates[0];
        assert_eq!(c.sources, vec![hit("graph", 9)]);
        let item = c.decode_item().unwrap();
        assert_eq!(
            (item.item_id.as_str(), item.embedding),
            ("z", vec![1.5, -2.0])
        );
        // A cut candidate is refused, not read short.
        assert!(RankRequest::decode(&wire[..wire.len() - 2]).is_err());
    }

    #[test]
    fn a_candidate_sent_by_reference_reads_back_as_its_reference_and_sources() {
        let part = EncodedCandidate::item_part(&candidate("a", vec![]));
        let digest = EncodedCandidate::digest(&part);
        assert_eq!(digest.len(), ITEM_REF_LEN);
        assert_ne!(
            digest,
            EncodedCandidate::digest(&EncodedCandidate::item_part(&candidate("b", vec![])))
        );
        let hit = SourceHit {
            source: "cf".into(),
            rank: 2,
            score: 0.5,
        };
        let sent = RankRequest {
            user_id: "u1".into(),
            encoded_candidates: vec![
                EncodedCandidate {
                    item: Bytes::new(),
                    sources: vec![hit.clone()],
                    item_ref: Bytes::copy_from_slice(&digest),
                },
                EncodedCandidate {
                    item: part.clone(),
                    sources: vec![],
                    item_ref: Bytes::new(),
                },
            ],
            ..Default::default()
        };
        let wire = sent.encode_to_vec();
        assert_eq!(wire.len(), sent.encoded_len());
        let back = RankRequest::decode(wire.as_slice()).unwrap();
        assert_eq!(back.encoded_candidates, sent.encoded_candidates);
        // The receiver works the same reference out of the part it was sent in full.
        assert_eq!(
            EncodedCandidate::digest(&back.encoded_candidates[1].item),
            digest
        );
        // A generated `RankCandidate` with `item_ref` set reads back the same way.
        let generated = RankRequest {
            candidates: vec![RankCandidate {
                item_ref: digest.to_vec(),
                sources: vec![hit],
                ..Default::default()
            }],
            ..Default::default()
        };
        let back = RankRequest::decode(generated.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.encoded_candidates[..], sent.encoded_candidates[..1]);
    }

    #[test]
    fn the_rank_request_fields_are_the_protos() {
        assert_eq!(
            fields("reco.ranking.v1", "RankRequest"),
            [
                ("user_id".to_string(), 1, String::new()),
                ("user_features".into(), 2, ".reco.common.v1.Features".into()),
                ("user_embedding".into(), 3, String::new()),
                (
                    "candidates".into(),
                    4,
                    ".reco.ranking.v1.RankCandidate".into()
                ),
                ("top_n".into(), 5, String::new()),
                (
                    "context".into(),
                    6,
                    ".reco.ranking.v1.RankRequest.ContextEntry".into()
                ),
            ]
        );
        let candidate = fields("reco.ranking.v1", "RankCandidate");
        for (name, number) in [
            ("sources", CANDIDATE_SOURCES),
            ("item_ref", CANDIDATE_ITEM_REF),
        ] {
            assert_eq!(
                candidate.iter().find(|f| f.0 == name).map(|f| f.1),
                Some(number as i32),
                "{name}"
            );
        }
    }

    fn fields(package: &str, name: &str) -> Vec<(String, i32, String)> {
        let set = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET)
            .expect("descriptors");
        set.file
            .iter()
            .filter(|f| f.package() == package)
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == name)
            .expect("the message is in the proto")
            .field
            .iter()
            .map(|f| (f.name().to_string(), f.number(), f.type_name().to_string()))
            .collect()
    }
}
