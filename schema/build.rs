//! Compiles the .proto files with protox (pure Rust: no `protoc` on the
//! machine) and generates prost types plus their proto3-JSON serde impls.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/im/v1/common.proto",
        "proto/im/v1/events.proto",
        "proto/im/v1/client.proto",
        "proto/im/v1/internal.proto",
        "proto/im/v1/readmodel.proto",
        "proto/im/v1/query.proto",
        "proto/im/v1/archive.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out.join("im_descriptor.bin");
    std::fs::write(&descriptor_path, prost::Message::encode_to_vec(&fds))?;

    let mut config = prost_build::Config::new();
    // BTreeMap keeps map fields in key order, so encoding is deterministic:
    // the hash chain hashes stored bytes, and digests must be reproducible.
    config.btree_map(["."]);
    config.compile_fds(fds)?;

    let descriptor_set = std::fs::read(&descriptor_path)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_set)?
        .btree_map(["."])
        .build(&[".im"])?;
    Ok(())
}
