//! Generates the Rust code for the payments protos: today's schema (v2, client and server) and the
//! first release (v1, client only, for the schema evolution tests).
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a reader needs no system protobuf
//! compiler. Both schemas share one package name, as a real evolving schema does, so each is
//! generated into its own directory under OUT_DIR.
//!
//! For each it also writes the encoded `FileDescriptorSet` (`payments_descriptor.bin`): gRPC server
//! reflection answers `grpcurl list` and `describe` from v2's, so a reader needs no .proto file,
//! and the contract test compares the two to catch a change that would break old clients.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for (version, with_server) in [("v1", false), ("v2", true)] {
        let dir = out_dir.join(version);
        std::fs::create_dir_all(&dir)?;
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        let mut protos = vec![format!("proto/{version}/payments.proto")];
        let builder = tonic_prost_build::configure()
            .build_server(with_server)
            .file_descriptor_set_path(dir.join("payments_descriptor.bin"));
        if with_server {
            protos.push(format!("proto/{version}/queries.proto"));
        }
        builder.out_dir(&dir).compile_with_config(
            config,
            &protos,
            &["proto".to_owned()],
        )?;
    }
    Ok(())
}
