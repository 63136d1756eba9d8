//! rampart-certs: SPIFFE identities for Rampart. Parsing SPIFFE IDs to the
//! letter of the spec, the CA that signs X.509-SVIDs from CSRs for identities
//! the caller proved, trust bundles with several roots, renewal timing, and
//! rustls configs that authenticate peers by SPIFFE ID rather than hostname.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod bundle;
pub mod ca;
pub mod csr;
pub mod inspect;
mod spiffe_id;
mod svid;
pub mod tls;
pub mod well_known;

pub use bundle::{BundleError, TrustBundle, der_to_pem, key_to_pem};
pub use ca::{CaError, CertificateAuthority, IssuedSvid, SvidLifetimes};
pub use csr::{CsrError, VerifiedCsr};
pub use spiffe_id::{SpiffeId, SpiffeIdError, TrustDomain};
pub use svid::{KeyAndCsr, Svid, SvidError, renewal_deadline, spiffe_id_of_leaf, until};
