//! The contract between rampart-control and the proxies it configures: the
//! xDS resource types served, the `rampart.*` node metadata a sidecar sends,
//! and the cluster metadata traffic capture reads. Each has one encoder and
//! one decoder here, so the two sides cannot drift apart by a typo.

mod capture;
mod node;
mod type_url;

pub use capture::CaptureMetadata;
pub use node::{MetadataError, OutboundListener, Serves, SidecarMetadata};
pub use type_url::TypeUrl;
