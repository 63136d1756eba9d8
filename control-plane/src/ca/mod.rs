//! The CA service: signs workload CSRs for the identity the caller proves
//! (a join token now, the current SVID for renewal, Kubernetes ServiceAccount
//! tokens later), and the control plane's own serving identity.

mod authority;
pub mod proof;
pub mod root_store;
pub mod roots;
mod rotation;
pub mod rotation_reports;
pub mod secret_roots;
pub mod service;

pub use authority::{CaSource, from_store, plug_in};
pub use proof::Proof;
pub use root_store::RootStore;
pub use roots::{Phase, RootFiles};
pub use rotation::{CaHandle, Cluster, Progress, Rotator, RotatorConfig};
pub use service::CaService;
