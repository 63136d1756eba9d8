//! The trust bundle Secret (`ROOTCA`).

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};

use super::snapshot::Entry;

use super::names::ROOTCA;

/// The `ROOTCA` entry served for the bundle `pem`: what a root rotation
/// waits for every stream to hold.
pub fn rootca_entry(pem: &str) -> Entry {
    Entry::new(roots(pem))
}

pub(super) fn roots(pem: &str) -> Secret {
    Secret {
        name: ROOTCA.to_owned(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(pem.to_owned())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}
