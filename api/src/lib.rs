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

#[cfg(feature = "services")]
mod channel;
#[cfg(feature = "services")]
pub mod duration;
#[cfg(feature = "services")]
pub mod http_serve;
#[cfg(feature = "services")]
pub mod image;
#[cfg(feature = "services")]
pub mod image_verifier;
#[cfg(feature = "services")]
pub mod inject;
pub mod locality;
#[cfg(feature = "services")]
pub mod mesh;
#[cfg(feature = "services")]
pub mod oci;
#[cfg(feature = "services")]
pub mod policy;
pub mod xds;
#[cfg(feature = "services")]
pub use channel::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT, connect};

/// The CA service (`rampart.ca.v1`).
#[cfg(feature = "services")]
pub mod ca {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("rampart.ca.v1");
}

/// The admin service (`rampart.admin.v1`).
#[cfg(feature = "services")]
pub mod admin {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("rampart.admin.v1");
}

/// The backend service of `meshctl demo` (`rampart.demo.v1`).
#[cfg(feature = "services")]
pub mod demo {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("rampart.demo.v1");
}

/// The SPIFFE Workload API. The spec gives it no proto package.
#[cfg(feature = "services")]
pub mod workload {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("_");
}

/// gRPC metadata key every Workload API call must carry (value `true`).
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";
