//! Compiles a descriptor set of the Envoy v3 messages rampart-control
//! serves, so `meshctl proxy-config` can print them as proto3 JSON. The
//! .proto files are the ones the `envoy-types` crate ships (found in
//! cargo's registry by the version in Cargo.lock); protox compiles them,
//! so no `protoc` is needed.

use std::path::{Path, PathBuf};

/// The messages we send, and what they pack in `Any` fields.
const FILES: &[&str] = &[
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto",
    "envoy/extensions/filters/network/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/http/rbac/v3/rbac.proto",
    "envoy/extensions/filters/http/fault/v3/fault.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = envoy_types_protos()?;
    let includes = [
        "data-plane-api",
        "xds",
        "protoc-gen-validate",
        "googleapis",
        "cel-spec",
        "opentelemetry-proto",
        "client_model",
    ]
    .map(|d| root.join(d));
    let set = protox::compile(FILES, includes)?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptors.bin");
    std::fs::write(out, prost::Message::encode_to_vec(&set))?;
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RAMPART_ENVOY_PROTOS");
    Ok(())
}

/// `envoy-types`' proto directory: `$RAMPART_ENVOY_PROTOS`, else the
/// registry copy of the version in Cargo.lock.
fn envoy_types_protos() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("RAMPART_ENVOY_PROTOS") {
        return Ok(PathBuf::from(dir));
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let lock = std::fs::read_to_string(manifest.join("../Cargo.lock"))
        .map_err(|e| format!("reading Cargo.lock: {e}"))?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .and_then(|v| v.strip_suffix('"'))
        .ok_or("envoy-types is not in Cargo.lock")?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let registry = cargo_home.join("registry/src");
    let found = std::fs::read_dir(&registry)
        .map_err(|e| format!("reading {}: {e}", registry.display()))?
        .filter_map(Result::ok)
        .map(|index| index.path().join(format!("envoy-types-{version}/proto")))
        .find(|p| p.is_dir());
    found.ok_or_else(|| {
        format!(
            "envoy-types {version} protos not found under {}; set RAMPART_ENVOY_PROTOS",
            registry.display()
        )
    })
}
