//! The CA service: signs workload CSRs for the identity the caller proves
//! (a join token now, the current SVID for renewal, Kubernetes ServiceAccount
//! tokens later), and the control plane's own serving identity.

mod authority;
pub mod proof;
pub mod service;

pub use authority::{CaSource, load_or_create};
pub use proof::Proof;
pub use service::CaService;
