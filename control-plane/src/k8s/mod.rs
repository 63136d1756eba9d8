//! Kubernetes: what the control plane takes from the API server when it
//! runs in a cluster (`--kubernetes`). Standalone it needs none of this.

pub mod token_review;

pub use token_review::{ReviewError, TokenReviewer};
