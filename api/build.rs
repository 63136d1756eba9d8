//! Compiles the .proto files with protox (pure Rust), so building Rampart never
//! needs a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Without the services (rampart-plan's use), there is nothing to generate.
    if std::env::var_os("CARGO_FEATURE_SERVICES").is_none() {
        return Ok(());
    }
    let protos = [
        "proto/rampart/ca/v1/ca.proto",
        "proto/rampart/admin/v1/admin.proto",
        "proto/spiffe/workload.proto",
        "proto/rampart/demo/v1/demo.proto",
    ];
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
