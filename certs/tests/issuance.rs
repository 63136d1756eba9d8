//! The CA's issued SVIDs, checked field by field against the X509-SVID spec,
//! and independently with `openssl verify -x509_strict`.

use std::process::Command;
use std::time::Duration;

use ::time::OffsetDateTime;
use rampart_certs::ca::{CLOCK_SKEW_GRACE, DEFAULT_SVID_TTL};
use rampart_certs::csr::CsrError;
use rampart_certs::{
    CaError, CertificateAuthority, KeyAndCsr, SpiffeId, SvidLifetimes, TrustDomain, VerifiedCsr,
    der_to_pem,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use x509_parser::prelude::*;

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn id() -> SpiffeId {
    td().workload_id("prod", "api").unwrap()
}

fn root_ca() -> CertificateAuthority {
    let root = CertificateAuthority::generate_root(&td()).unwrap();
    CertificateAuthority::from_root_pem(
        td(),
        &root.cert_pem,
        &root.key_pem,
        SvidLifetimes::default(),
    )
    .unwrap()
}

fn intermediate_ca() -> CertificateAuthority {
    let root = CertificateAuthority::generate_root(&td()).unwrap();
    CertificateAuthority::with_generated_intermediate(
        td(),
        &root.cert_pem,
        &root.key_pem,
        SvidLifetimes::default(),
    )
    .unwrap()
}

fn csr() -> VerifiedCsr {
    VerifiedCsr::from_der(&KeyAndCsr::generate().unwrap().csr_der).unwrap()
}

fn csr_with_uri(key: &KeyPair, uri: &str) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    params.serialize_request(key).unwrap().der().to_vec()
}

#[test]
fn leaf_has_exactly_the_fields_the_spec_requires() {
    let ca = root_ca();
    let issued = ca.sign(&csr(), &id(), None).unwrap();
    assert_eq!(issued.chain.len(), 1, "a root-signed leaf comes alone");
    let (_, leaf) = X509Certificate::from_der(&issued.chain[0]).unwrap();

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "empty subject => SAN critical");
    let uris: Vec<_> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec!["spiffe://example.org/ns/prod/sa/api"]);

    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("basicConstraints present");
    assert!(bc.critical && !bc.value.ca);
    let ku = leaf.key_usage().unwrap().expect("keyUsage present");
    assert!(ku.critical && ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
    let eku = leaf.extended_key_usage().unwrap().expect("EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth);

    let serial = leaf.raw_serial();
    assert!(
        (15..=17).contains(&serial.len()),
        "128-bit serial, got {} bytes",
        serial.len()
    );

    let now = OffsetDateTime::now_utc();
    let not_before = leaf.validity().not_before.to_datetime();
    let not_after = leaf.validity().not_after.to_datetime();
    let backdate = now - not_before;
    assert!(backdate >= CLOCK_SKEW_GRACE - Duration::from_secs(5));
    assert!(backdate <= CLOCK_SKEW_GRACE + Duration::from_secs(5));
    let ttl = not_after - now;
    assert!(ttl <= DEFAULT_SVID_TTL && ttl >= DEFAULT_SVID_TTL - Duration::from_secs(5));
}

#[test]
fn serials_differ_between_certificates() {
    let ca = root_ca();
    let a = ca.sign(&csr(), &id(), None).unwrap();
    let b = ca.sign(&csr(), &id(), None).unwrap();
    let serial = |der: &[u8]| {
        X509Certificate::from_der(der)
            .unwrap()
            .1
            .raw_serial()
            .to_vec()
    };
    assert_ne!(serial(&a.chain[0]), serial(&b.chain[0]));
}

#[test]
fn ttl_is_capped_by_the_configured_maximum() {
    let root = CertificateAuthority::generate_root(&td()).unwrap();
    let lifetimes = SvidLifetimes {
        default_ttl: Duration::from_secs(3600),
        max_ttl: Duration::from_secs(7200),
    };
    let ca = CertificateAuthority::from_root_pem(td(), &root.cert_pem, &root.key_pem, lifetimes)
        .unwrap();
    let default = ca.sign(&csr(), &id(), None).unwrap();
    let asked_too_much = ca
        .sign(&csr(), &id(), Some(Duration::from_secs(86400 * 30)))
        .unwrap();
    let now = OffsetDateTime::now_utc();
    assert!((default.not_after - now) <= Duration::from_secs(3600));
    assert!((asked_too_much.not_after - now) <= Duration::from_secs(7200));
    assert!((asked_too_much.not_after - now) > Duration::from_secs(7100));
}

#[test]
fn never_issues_past_the_issuers_not_after() {
    // A plug-in intermediate that expires in one hour.
    let root_key = KeyPair::generate().unwrap();
    let mut root_params = CertificateParams::default();
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let inter_key = KeyPair::generate().unwrap();
    let mut inter_params = CertificateParams::default();
    inter_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "short-lived intermediate");
    inter_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    inter_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let soon = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    inter_params.not_after = soon;
    let issuer = rcgen::Issuer::new(root_params, root_key);
    let inter = inter_params.signed_by(&inter_key, &issuer).unwrap();

    let ca = CertificateAuthority::from_pem(
        td(),
        &inter.pem(),
        &inter_key.serialize_pem(),
        "",
        &root.pem(),
        SvidLifetimes::default(),
    )
    .unwrap();
    let issued = ca.sign(&csr(), &id(), None).unwrap();
    assert!(issued.not_after <= soon.replace_millisecond(0).unwrap() + Duration::from_secs(1));
    assert_eq!(issued.chain.len(), 2, "leaf + the plug-in intermediate");
    assert_eq!(ca.bundle().roots().len(), 1);
}

#[test]
fn plug_in_ca_with_a_foreign_key_is_refused() {
    let root = CertificateAuthority::generate_root(&td()).unwrap();
    let other = KeyPair::generate().unwrap().serialize_pem();
    let err =
        CertificateAuthority::from_root_pem(td(), &root.cert_pem, &other, SvidLifetimes::default())
            .err()
            .expect("must fail");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn plug_in_ca_not_chaining_to_the_root_is_refused() {
    let a = CertificateAuthority::generate_root(&td()).unwrap();
    let b = CertificateAuthority::generate_root(&td()).unwrap();
    let err = CertificateAuthority::from_pem(
        td(),
        &a.cert_pem,
        &a.key_pem,
        "",
        &b.cert_pem,
        SvidLifetimes::default(),
    )
    .err()
    .expect("must fail");
    assert!(err.to_string().contains("does not chain"), "{err}");
}

#[test]
fn csr_naming_another_identity_is_refused() {
    let key = KeyPair::generate().unwrap();
    let der = csr_with_uri(&key, "spiffe://example.org/ns/prod/sa/admin");
    let csr = VerifiedCsr::from_der(&der).unwrap();
    match root_ca().sign(&csr, &id(), None) {
        Err(CaError::Csr(CsrError::IdentityMismatch { requested, proven })) => {
            assert_eq!(requested, "spiffe://example.org/ns/prod/sa/admin");
            assert_eq!(proven, id().to_string());
        }
        other => panic!("expected IdentityMismatch, got {other:?}"),
    }
    // Naming the proven identity itself is fine.
    let same = VerifiedCsr::from_der(&csr_with_uri(&key, &id().to_string())).unwrap();
    assert!(root_ca().sign(&same, &id(), None).is_ok());
}

#[test]
fn csr_with_a_broken_signature_is_refused() {
    let mut der = KeyAndCsr::generate().unwrap().csr_der;
    let last = der.len() - 3;
    der[last] ^= 0x55;
    assert_eq!(
        VerifiedCsr::from_der(&der).unwrap_err(),
        CsrError::BadSignature
    );
}

#[test]
fn garbage_is_a_malformed_csr() {
    assert!(matches!(
        VerifiedCsr::from_der(b"not a csr"),
        Err(CsrError::Malformed(_))
    ));
}

#[test]
fn accepted_key_types_p256_p384_ed25519() {
    let ca = root_ca();
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = VerifiedCsr::from_der(&KeyAndCsr::for_key(&key).unwrap().csr_der).unwrap();
        let issued = ca.sign(&csr, &id(), None).unwrap();
        let (_, leaf) = X509Certificate::from_der(&issued.chain[0]).unwrap();
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }
}

/// RSA and unsupported curves come from the openssl CLI (a test tool only).
fn openssl_csr(newkey: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("csr.der");
    let status = Command::new("openssl")
        .args(["req", "-new", "-nodes", "-subj", "/CN=x", "-outform", "DER"])
        .args(newkey)
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(&out)
        .output()
        .expect("the openssl CLI is needed by this test (scripts/test.sh installs it)");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    std::fs::read(out).unwrap()
}

#[test]
fn rsa_2048_is_accepted_and_rsa_1024_refused() {
    let ok = VerifiedCsr::from_der(&openssl_csr(&["-newkey", "rsa:2048"])).unwrap();
    assert!(root_ca().sign(&ok, &id(), None).is_ok());
    let small = openssl_csr(&["-newkey", "rsa:1024"]);
    assert_eq!(
        VerifiedCsr::from_der(&small).unwrap_err(),
        CsrError::RsaKeyTooSmall(1024)
    );
}

#[test]
fn other_curves_are_refused_with_a_clear_error() {
    let der = openssl_csr(&["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-521"]);
    let err = VerifiedCsr::from_der(&der).unwrap_err();
    assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err:?}");
    assert!(
        err.to_string().contains("P-256"),
        "the error says what to use: {err}"
    );
}

fn openssl_verify(ca: &CertificateAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let issued = ca.sign(&csr(), &id(), None).unwrap();
    let write = |name: &str, ders: &[rustls_pki_types::CertificateDer<'static>]| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            ders.iter().map(|d| der_to_pem(d)).collect::<String>(),
        )
        .unwrap();
        path
    };
    let root = write("root.pem", ca.bundle().roots());
    let leaf = write("leaf.pem", &issued.chain[..1]);
    let untrusted = write("chain.pem", &issued.chain[1..]);
    let mut cmd = Command::new("openssl");
    cmd.args(["verify", "-x509_strict", "-purpose", "any", "-CAfile"])
        .arg(&root);
    if issued.chain.len() > 1 {
        cmd.arg("-untrusted").arg(&untrusted);
    }
    let out = cmd.arg(&leaf).output().expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Also as a TLS client and server certificate specifically.
    for purpose in ["sslclient", "sslserver"] {
        let mut cmd = Command::new("openssl");
        cmd.args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
            .arg(&root);
        if issued.chain.len() > 1 {
            cmd.arg("-untrusted").arg(&untrusted);
        }
        let out = cmd.arg(&leaf).output().unwrap();
        assert!(
            out.status.success(),
            "{purpose}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn openssl_strictly_verifies_a_root_signed_chain() {
    openssl_verify(&root_ca());
}

#[test]
fn openssl_strictly_verifies_an_intermediate_signed_chain() {
    let ca = intermediate_ca();
    assert_eq!(ca.sign(&csr(), &id(), None).unwrap().chain.len(), 2);
    openssl_verify(&ca);
}

#[test]
fn renewal_deadline_is_at_half_life_with_bounded_jitter() {
    let start = OffsetDateTime::now_utc();
    let end = start + Duration::from_secs(24 * 3600);
    let half = start + Duration::from_secs(12 * 3600);
    assert_eq!(rampart_certs::renewal_deadline(start, end, 0.0), half);
    let later = rampart_certs::renewal_deadline(start, end, 0.05);
    assert_eq!(later - half, Duration::from_secs(72 * 60));
    let ca = root_ca();
    let issued = ca.sign(&csr(), &id(), None).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let svid = rampart_certs::Svid::new(
        issued.chain.clone(),
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    )
    .unwrap();
    // Counted from now, not from the backdated notBefore.
    let obtained = OffsetDateTime::now_utc();
    let lifetime = svid.not_after() - obtained;
    for _ in 0..50 {
        let deadline = svid.renewal_deadline();
        let fraction = (deadline - obtained) / lifetime;
        assert!((0.44..=0.56).contains(&fraction), "{fraction}");
    }
}
