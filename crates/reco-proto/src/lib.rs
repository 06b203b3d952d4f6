//! Generated code for every reco gRPC API, the encoded file descriptor set that server reflection serves, and the
//! conversions between proto messages and `reco-types` domain types. Proto types stop at the gRPC edge: services
//! convert with `TryFrom` on the way in (validating) and `From` on the way out.
//!
//! Module paths mirror the proto packages: `reco.feature.v1` is [`feature::v1`].

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod common {
    pub mod v1 {
        tonic::include_proto!("reco.common.v1");
    }
}
pub mod gateway {
    pub mod v1 {
        tonic::include_proto!("reco.gateway.v1");
    }
}
pub mod feature {
    pub mod v1 {
        tonic::include_proto!("reco.feature.v1");
        pub use crate::encoded::BatchGetItemFeaturesResponse;
    }
}
pub mod cache {
    pub mod v1 {
        tonic::include_proto!("reco.cache.v1");
    }
}
pub mod vector_recall {
    pub mod v1 {
        tonic::include_proto!("reco.vector_recall.v1");
    }
}
pub mod graph_recall {
    pub mod v1 {
        tonic::include_proto!("reco.graph_recall.v1");
    }
}
pub mod ranking {
    pub mod v1 {
        tonic::include_proto!("reco.ranking.v1");
        pub use crate::encoded::{EncodedCandidate, ITEM_REF_LEN, RankRequest};
    }
}

pub mod codec;
pub mod conversions;
mod encoded;

/// Every reco service, message and enum as an encoded `FileDescriptorSet`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/reco_descriptor.bin"));
