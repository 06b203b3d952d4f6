//! Compiles `proto/` with protox (pure Rust, no system protoc) and hands the descriptors to tonic-prost-build.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<PathBuf> = [
        "reco/common/v1/common.proto",
        "reco/gateway/v1/gateway.proto",
        "reco/feature/v1/feature.proto",
        "reco/cache/v1/cache.proto",
        "reco/vector_recall/v1/vector_recall.proto",
        "reco/graph_recall/v1/graph_recall.proto",
        "reco/ranking/v1/ranking.proto",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let descriptors = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let set_path = out.join("reco_descriptor.bin");
    std::fs::write(&set_path, prost::Message::encode_to_vec(&descriptors))?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Maps (feature maps: a handful of entries each, one per item of a 200-item batch) as BTreeMap: one
        // allocation and no hashing for a small map, where a HashMap hashes every key with SipHash and grows
        // by rehashing; and a map encodes in one order, so equal messages encode to equal bytes.
        .btree_map(".")
        // prost over contiguous slices (src/codec.rs says why).
        .codec_path("crate::codec::SliceCodec")
        // Hand-written so that a server can send items it encoded once (src/encoded.rs says why).
        .extern_path(
            ".reco.feature.v1.BatchGetItemFeaturesResponse",
            "crate::feature::v1::BatchGetItemFeaturesResponse",
        )
        .extern_path(
            ".reco.ranking.v1.RankRequest",
            "crate::ranking::v1::RankRequest",
        )
        .compile_fds(descriptors)?;
    Ok(())
}
