//! Harness for whole-mesh tests: real `rampart-control`, `rampart-proxy` and
//! `meshctl` binaries on loopback, so each test reads like the scenario it
//! checks. Binaries come from the same target directory as the test (the test
//! script builds them first).

#![forbid(unsafe_code)]

pub mod ads;
pub mod apps;
mod control_plane;
pub mod demo;
pub mod kube;
pub mod load;
mod model;
pub mod registry;
pub mod scripted;
mod sidecar;
mod support;

pub use control_plane::*;
pub use model::*;
pub use sidecar::*;
pub use support::*;
