//! Identities every Rampart component agrees on, so that each side of a
//! connection knows whom to expect without configuration.

use crate::{SpiffeId, TrustDomain};

/// Namespace of Rampart's own identities.
pub const SYSTEM_NAMESPACE: &str = "rampart-system";
/// Service account of the control plane's serving identity.
pub const CONTROL_PLANE_SA: &str = "rampart-control";
/// Service account of the admin credential used by meshctl.
pub const ADMIN_SA: &str = "rampart-admin";

/// `spiffe://<td>/ns/rampart-system/sa/rampart-control`
pub fn control_plane_id(td: &TrustDomain) -> SpiffeId {
    td.workload_id(SYSTEM_NAMESPACE, CONTROL_PLANE_SA)
        .expect("a valid SPIFFE ID")
}

/// `spiffe://<td>/ns/rampart-system/sa/rampart-admin`
pub fn admin_id(td: &TrustDomain) -> SpiffeId {
    td.workload_id(SYSTEM_NAMESPACE, ADMIN_SA)
        .expect("a valid SPIFFE ID")
}
