//! xDS: turning the mesh model into Envoy v3 resources (`translate`, by
//! resource kind in `clusters`, `endpoints`, `routes`, `secrets`, with
//! `names` and `envoy_blocks` shared with the per-sidecar views), the
//! resource sets with content versions (`snapshot`), and the ADS protocol
//! server (`server`). The server knows nothing of mesh semantics and the
//! translator never touches a stream, so each is tested alone.

mod access_log;
mod clusters;
mod convergence;
mod delta;
mod endpoints;
mod envoy_blocks;
mod limits;
pub mod names;
mod node_listeners;
mod node_view;
mod rbac;
mod routes;
pub mod secrets;
pub mod server;
pub mod sidecar;
pub mod snapshot;
mod snapshot_builder;
mod sotw;
mod source;
mod status;
mod timeouts;
pub mod translate;
mod transport;

pub use convergence::Convergence;
pub use server::AdsServer;
pub use snapshot::{Snapshot, TypeUrl};
pub use snapshot_builder::{Published, Sources, spawn_snapshot_builder};
pub use source::{MeshSource, NodeConfig, NodeSource};
pub use status::StreamRegistry;
pub use transport::AdsService;
