//! Generates the benchmark's order messages and the `Orders` gRPC service from
//! `proto/orders.proto`, with serde derives so the HTTP side sends the very same
//! types as JSON.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate: no system protobuf compiler
//! needed. Without the `protocols` feature (the brokers' benchmark) there is nothing
//! to generate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "protocols")]
    {
        println!("cargo:rerun-if-changed=proto/orders.proto");
        let mut config = tonic_prost_build::Config::new();
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
        tonic_prost_build::configure()
            .message_attribute(
                ".shop.bench",
                "#[derive(serde::Serialize, serde::Deserialize)]",
            )
            .compile_with_config(config, &["proto/orders.proto"], &["proto"])?;
    }
    Ok(())
}
