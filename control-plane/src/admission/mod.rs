//! Admission webhooks, served over HTTPS with the control plane's serving
//! certificate (from the mesh CA; the API server trusts it through the
//! webhook configurations' caBundle, which `k8s::webhook_config` keeps in
//! sync): `/inject` adds the sidecar to pods, `/validate` holds them to the
//! security policy (`rampart_api::policy`) and records what it let through,
//! `/pin-images` rewrites verified image tags to their digests.

mod audit;
mod pin;
pub mod review;
pub mod running;
mod server;
mod validate;

pub use audit::AuditTrail;
pub use server::{WebhookConfig, serve};
pub use validate::PolicyInputs;
