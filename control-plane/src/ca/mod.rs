//! The CA service: signs workload CSRs for the identity the caller proves
//! (a join token now, the current SVID for renewal, Kubernetes ServiceAccount
//! tokens later), and the control plane's own serving identity.

mod authority;
pub mod proof;
mod roots;
mod rotation;
pub mod service;

pub use authority::{CaSource, load_or_create};
pub use proof::Proof;
pub use roots::{Phase, RootFiles};
pub use rotation::{CaHandle, Progress, Rotator, RotatorConfig};
pub use service::CaService;
