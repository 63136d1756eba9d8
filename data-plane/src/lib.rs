//! rampart-proxy as a library: the binary (`main.rs`) wires these together;
//! meshctl uses the traffic path's plan compiler and RBAC evaluator to answer
//! `meshctl authz check` exactly as the proxy would.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod admin;
pub mod identity;
pub mod init;
pub mod metrics;
pub mod proxy;
pub mod sds;
pub mod uds_authority;
pub mod wait;
pub mod workload_api;
pub mod xds_client;
