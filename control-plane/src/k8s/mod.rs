//! Kubernetes: what the control plane takes from the API server when it
//! runs in a cluster (`--kubernetes`). Standalone it needs none of this.

pub mod discovery;
pub mod token_review;
pub mod webhook_config;

pub use token_review::{ReviewError, TokenReviewer};

/// Whether the API server runs native sidecars (init containers with
/// `restartPolicy: Always`, on by default since Kubernetes 1.29).
pub async fn supports_native_sidecars(client: &kube::Client) -> anyhow::Result<bool> {
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| anyhow::anyhow!("asking the API server for its version: {e}"))?;
    // `minor` may carry a suffix ("29+") on vendor builds.
    let minor: u32 = info
        .minor
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .map_err(|_| anyhow::anyhow!("the API server reports minor version {:?}", info.minor))?;
    Ok(info.major == "1" && minor >= 29)
}
