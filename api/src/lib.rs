//! rampart-api: the gRPC APIs Rampart speaks, generated at build time from the
//! documented `.proto` files under `proto/` (no system `protoc` needed).
//!
//! * [`ca`]: the CertificateService workloads use to get and renew SVIDs.
//! * [`admin`]: the AdminService `meshctl` uses.
//! * [`workload`]: the standard SPIFFE Workload API the proxy serves.
//! * [`connect`]: a gRPC channel over a SPIFFE-verifying rustls config.
//! * [`xds`]: the contract with the proxies: resource types, node and cluster metadata.
//! * [`inject`]: the sidecar a pod gets (the admission webhook and `meshctl inject`).
//! * [`policy`]: the admission security policy (the `/validate` webhook and `meshctl policy check`).
//! * [`oci`]: image signatures in their registry (cosign's format), for the policy and `meshctl image`.
//! * [`mesh`]: the mesh model (Service, WorkloadEntry, TrafficPolicy, ...) and its YAML parser.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod channel;
pub mod duration;
pub mod http_serve;
pub mod image;
pub mod image_verifier;
pub mod inject;
pub mod locality;
pub mod mesh;
pub mod oci;
pub mod policy;
pub mod xds;
pub use channel::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, connect};

/// The CA service (`rampart.ca.v1`).
pub mod ca {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("rampart.ca.v1");
}

/// The admin service (`rampart.admin.v1`).
pub mod admin {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("rampart.admin.v1");
}

/// The backend service of `meshctl demo` (`rampart.demo.v1`).
pub mod demo {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("rampart.demo.v1");
}

/// The SPIFFE Workload API. The spec gives it no proto package.
pub mod workload {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("_");
}

/// gRPC metadata key every Workload API call must carry (value `true`).
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";
