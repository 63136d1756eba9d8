//! Mutual TLS by SPIFFE ID over real sockets: peers chain to the bundle, their
//! IDs are exposed and checked against an allowed set.

use std::sync::Arc;

use rampart_certs::tls::{
    ClientAuth, CurrentSvid, PeerPolicy, client_config, peer_spiffe_id, server_config,
};
use rampart_certs::{
    CertificateAuthority, KeyAndCsr, SpiffeId, Svid, SvidLifetimes, TrustBundle, TrustDomain,
    VerifiedCsr,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

fn ca() -> CertificateAuthority {
    let root = CertificateAuthority::generate_root(&td()).unwrap();
    CertificateAuthority::with_generated_intermediate(
        td(),
        &root.cert_pem,
        &root.key_pem,
        SvidLifetimes::default(),
    )
    .unwrap()
}

fn svid(ca: &CertificateAuthority, sa: &str) -> Svid {
    let kc = KeyAndCsr::generate().unwrap();
    let id = td().workload_id("default", sa).unwrap();
    let issued = ca
        .sign(&VerifiedCsr::from_der(&kc.csr_der).unwrap(), &id, None)
        .unwrap();
    Svid::new(issued.chain, kc.key).unwrap()
}

/// Runs one handshake; returns (what the server saw, what the client saw) or the error text.
async fn handshake(
    server_svid: &Svid,
    server_bundle: &TrustBundle,
    client_auth: ClientAuth,
    client_svid: Option<&Svid>,
    client_bundle: &TrustBundle,
    expect_server: PeerPolicy,
) -> Result<(Option<SpiffeId>, Option<SpiffeId>), String> {
    let server = server_config(
        CurrentSvid::new(server_svid).unwrap(),
        server_bundle,
        client_auth,
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(tls.get_ref().1.peer_certificates().and_then(peer_spiffe_id))
    });
    let client = client_config(
        client_svid.map(|s| CurrentSvid::new(s).unwrap()),
        client_bundle,
        expect_server,
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client_result = async {
        let mut tls = connector
            .connect(ServerName::try_from("rampart").unwrap(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(tls.get_ref().1.peer_certificates().and_then(peer_spiffe_id))
    }
    .await;
    let server_result = server_task.await.unwrap();
    match (server_result, client_result) {
        (Ok(s), Ok(c)) => Ok((s, c)),
        (_, Err(e)) | (Err(e), _) => Err(e),
    }
}

#[tokio::test]
async fn both_sides_see_each_others_spiffe_id() {
    let ca = ca();
    let (server, client) = (svid(&ca, "server"), svid(&ca, "client"));
    let (seen_by_server, seen_by_client) = handshake(
        &server,
        ca.bundle(),
        ClientAuth::Required(PeerPolicy::TrustDomain(td())),
        Some(&client),
        ca.bundle(),
        PeerPolicy::exactly(server.spiffe_id().clone()),
    )
    .await
    .unwrap();
    assert_eq!(seen_by_server.as_ref(), Some(client.spiffe_id()));
    assert_eq!(seen_by_client.as_ref(), Some(server.spiffe_id()));
}

#[tokio::test]
async fn a_server_with_an_unexpected_identity_is_refused() {
    let ca = ca();
    let (server, client) = (svid(&ca, "impostor"), svid(&ca, "client"));
    let expected = td().workload_id("default", "server").unwrap();
    let err = handshake(
        &server,
        ca.bundle(),
        ClientAuth::Required(PeerPolicy::TrustDomain(td())),
        Some(&client),
        ca.bundle(),
        PeerPolicy::exactly(expected),
    )
    .await
    .unwrap_err();
    assert!(err.contains("impostor"), "{err}");
}

#[tokio::test]
async fn a_client_outside_the_allowed_set_is_refused() {
    let ca = ca();
    let (server, client) = (svid(&ca, "server"), svid(&ca, "stranger"));
    let allowed = PeerPolicy::exactly(td().workload_id("default", "friend").unwrap());
    let result = handshake(
        &server,
        ca.bundle(),
        ClientAuth::Required(allowed),
        Some(&client),
        ca.bundle(),
        PeerPolicy::TrustDomain(td()),
    )
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_when_required_and_anonymous_when_optional() {
    let ca = ca();
    let server = svid(&ca, "server");
    let policy = PeerPolicy::TrustDomain(td());
    let required = handshake(
        &server,
        ca.bundle(),
        ClientAuth::Required(policy.clone()),
        None,
        ca.bundle(),
        policy.clone(),
    )
    .await;
    assert!(required.is_err());
    let (seen, _) = handshake(
        &server,
        ca.bundle(),
        ClientAuth::Optional(policy.clone()),
        None,
        ca.bundle(),
        policy,
    )
    .await
    .unwrap();
    assert_eq!(seen, None);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let (ours, theirs) = (ca(), ca());
    let server = svid(&ours, "server");
    let client = svid(&theirs, "client");
    let policy = PeerPolicy::TrustDomain(td());
    let result = handshake(
        &server,
        ours.bundle(),
        ClientAuth::Required(policy.clone()),
        Some(&client),
        ours.bundle(),
        policy,
    )
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn a_bundle_with_two_roots_trusts_both_during_rotation() {
    let (old, new) = (ca(), ca());
    let mut both = old.bundle().clone();
    for root in new.bundle().roots() {
        both.add_root(root.clone());
    }
    assert_eq!(both.roots().len(), 2);
    let server = svid(&old, "server");
    let client = svid(&new, "client");
    let policy = PeerPolicy::TrustDomain(td());
    let (seen, _) = handshake(
        &server,
        &both,
        ClientAuth::Required(policy.clone()),
        Some(&client),
        &both,
        policy,
    )
    .await
    .unwrap();
    assert_eq!(seen.as_ref(), Some(client.spiffe_id()));
}
