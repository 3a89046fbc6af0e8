//! Compiles `proto/` with protox (pure Rust, no system protoc) into prost and
//! tonic code, and writes the descriptor set that reflection and proto3 JSON use.

use std::{error::Error, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate! embeds the migrations; a new file must rebuild the crate.
    println!("cargo:rerun-if-changed=src/store/migrations");
    let mut protos: Vec<PathBuf> = fs::read_dir("proto/copex/v1")?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();

    let descriptors = protox::compile(&protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("copex_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    let encoded = descriptors.encode_to_vec();
    let mut config = tonic_prost_build::Config::new();
    // Full names (`prost::Name`), for the reflective JSON path (`cli/json.rs`).
    config.enable_type_names();
    tonic_prost_build::configure()
        // Deterministic encoding of labels, so equal content encodes equally.
        .btree_map(".")
        // google.rpc.Status is tonic-types' own, so details convert freely.
        .extern_path(".google.rpc", "::tonic_types::pb")
        // The well-known types with proto3 JSON (serde) of their own.
        .extern_path(".google.protobuf.Timestamp", "::pbjson_types::Timestamp")
        .extern_path(".google.protobuf.FieldMask", "::pbjson_types::FieldMask")
        .compile_fds_with_config(descriptors, config)?;

    // proto3 JSON as code generated for each message, not reflection.
    // UpsertResult carries a google.rpc.Status, which has no JSON form here;
    // nothing prints it as JSON.
    pbjson_build::Builder::new()
        .register_descriptors(&encoded)?
        .btree_map(["."])
        .exclude([
            ".copex.v1.UpsertResult",
            ".copex.v1.BatchUpsertRecordsResponse",
        ])
        .build(&[".copex.v1"])?;
    Ok(())
}
