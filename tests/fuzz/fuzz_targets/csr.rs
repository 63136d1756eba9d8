//! CSR handling as the CA does it: any bytes are parsed and their
//! signature checked; what passes is signed for the caller's identity, and
//! the certificate names that identity and nothing the CSR asked for.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use rampart_certs::{CertificateAuthority, SpiffeId, SvidLifetimes, TrustDomain, VerifiedCsr};

static CA: LazyLock<CertificateAuthority> = LazyLock::new(|| {
    let td = TrustDomain::new("fuzz.example").unwrap();
    let root = CertificateAuthority::generate_root(&td).unwrap();
    CertificateAuthority::from_root_pem(td, &root.cert_pem, &root.key_pem, SvidLifetimes::default())
        .unwrap()
});

fuzz_target!(|data: &[u8]| {
    let Ok(csr) = VerifiedCsr::from_der(data) else {
        return;
    };
    let id = SpiffeId::parse("spiffe://fuzz.example/ns/a/sa/b").unwrap();
    if let Ok(issued) = CA.sign(&csr, &id, None) {
        // The certificate names the caller's identity, whatever the CSR asked.
        let leaf = rampart_certs::spiffe_id_of_leaf(&issued.chain[0]).unwrap();
        assert_eq!(leaf, id);
    }
});
