//! `reco.feature.v1.BatchGetItemFeaturesResponse`, written by hand instead of generated (build.rs maps the proto
//! message here with `extern_path`), so that a server can answer with items it encoded once and kept.
//!
//! Encoding 200 items with their embeddings (≈90 KB) was most of the feature service's work per item batch:
//! cloning each cached item, converting it to its proto type and encoding it, on every request. An entry of
//! `encoded_items` is an `Item` already encoded, and is written to the wire as one more entry of field 1, byte for
//! byte what encoding the `Item` would write. A reader cannot tell the difference: decoding fills `items` as the
//! generated type would, and `encoded_items` stays empty. The test below holds this type to the proto's fields.

use prost::{
    DecodeError, Message,
    bytes::{Buf, BufMut, Bytes},
    encoding::{
        DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, key_len, message,
        skip_field, string,
    },
};

use crate::feature::v1::Item;

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
}
