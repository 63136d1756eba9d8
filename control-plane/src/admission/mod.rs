//! Admission webhooks, served over HTTPS with the control plane's serving
//! certificate (from the mesh CA; the API server trusts it through the
//! webhook configuration's caBundle, which `k8s::webhook_config` keeps in
//! sync): `/inject` adds the sidecar to pods.

mod review;
mod server;

pub use server::{WebhookConfig, serve};
