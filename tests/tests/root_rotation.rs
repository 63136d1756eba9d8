//! The root rotated hands-free under steady load: one `meshctl ca
//! rotate-root`, and the control plane trusts the new root everywhere,
//! signs with it through a new intermediate, has every proxy's SVID
//! re-issued at once, and drops the old root. The control plane is even
//! killed (SIGKILL) in the middle and carries on where it was. Not one
//! request may fail, no proxy may restart, and at the end nothing of the
//! old root is accepted.

use std::time::{Duration, Instant};

use rampart_certs::Svid;
use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config, verify_chain};
use rampart_certs::well_known::control_plane_id;
use rampart_tests::load::{EchoUnderLoad, apply_echo_split};
use rampart_tests::{
    ControlPlane, Sidecar, counter, eventually, free_port, http_get, rotation_phase, sign,
    until_rotated,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The least time per phase (the default is a minute).
const SETTLE: &str = "3s";

async fn start_on(data: &std::path::Path, port: u16) -> ControlPlane {
    ControlPlane::start(
        data,
        &[
            "--grpc-addr",
            &format!("127.0.0.1:{port}"),
            "--intermediate-ca",
            "--root-rotation-settle",
            SETTLE,
        ],
    )
    .await
}

/// The SVID chain a sidecar uses now (its admin `/certs`).
async fn chain_of(sidecar: &Sidecar) -> Vec<CertificateDer<'static>> {
    let (status, pem) = http_get(&sidecar.admin, "/certs").await.unwrap();
    assert_eq!(status, 200, "{pem}");
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_rotates_hands_free_under_load_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cp");
    let port = free_port();
    let mut cp = start_on(&data, port).await;
    apply_echo_split(&cp, 50, 50).await;
    let under_load = EchoUnderLoad::start(&cp, dir.path(), None).await;
    let sidecars: Vec<&Sidecar> = under_load
        .echoes
        .iter()
        .map(|(s, _)| s)
        .chain([&under_load.client])
        .collect();
    let old_bundle = cp.bundle();
    assert_eq!(old_bundle.roots().len(), 1);
    let mut before = Vec::new();
    for sidecar in &sidecars {
        before.push(chain_of(sidecar).await);
    }
    // A workload credential of the old root, kept to try it at the end.
    let old_svid: Svid = cp.workload_svid("default", "outsider").await;
    let tally = under_load.load.tally.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The one operator step.
    let started = Instant::now();
    let out = cp.meshctl_ok(&["ca", "rotate-root"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("phase: trust"), "{text}");
    let two_roots = eventually(50, || async {
        let metrics = cp.http_get("/metrics").await.unwrap().1;
        counter(&metrics, "rampart_ca_trusted_roots", &[]) == 2.0
    })
    .await;
    assert!(
        two_roots,
        "the metric does not show the rotation's two roots"
    );
    // A second request while one is under way is refused, changing nothing.
    let again = cp.meshctl(&["ca", "rotate-root"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already under way"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // SIGKILL in the middle of the trust phase; back on the same data.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cp.kill9();
    let cp = start_on(&data, port).await;
    // Carried on where it was (it may already have moved on to `sign`).
    let phase = rotation_phase(&cp).await;
    assert!(
        matches!(phase.as_deref(), Some("trust" | "sign")),
        "after the restart: {phase:?}"
    );

    let seen = until_rotated(&[&cp])
        .await
        .unwrap_or_else(|why| panic!("the rotation did not finish: {why}"));
    let took = started.elapsed();
    assert!(seen.ends_with(&["sign".to_owned()]), "{seen:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answered_after = tally.ok();

    // One root, a new one, and nothing kept of the old one (the metric
    // and the admin bundle file follow the last step by a moment).
    let one_root = eventually(50, || async {
        let metrics = cp.http_get("/metrics").await.unwrap().1;
        counter(&metrics, "rampart_ca_trusted_roots", &[]) == 1.0 && cp.bundle().roots().len() == 1
    })
    .await;
    assert!(one_root, "still two roots after the rotation");
    let new_bundle = cp.bundle();
    assert_ne!(new_bundle.roots()[0], old_bundle.roots()[0]);
    let ca_files: Vec<String> = std::fs::read_dir(data.join("ca"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !ca_files.contains(&"root-key.pem".to_owned()),
        "the old root's key is still there: {ca_files:?}"
    );

    // Every sidecar still the same process, on a new SVID of the new root
    // (through an intermediate), re-issued within seconds of the others.
    let mut issued_at = Vec::new();
    for (sidecar, old_chain) in sidecars.iter().zip(&before) {
        assert!(sidecar.is_running(), "a sidecar exited");
        let chain = chain_of(sidecar).await;
        assert_ne!(&chain, old_chain, "{}", sidecar.logs.text());
        assert_eq!(chain.len(), 2, "leaf and intermediate");
        verify_chain(&chain, &new_bundle).unwrap();
        assert!(verify_chain(&chain, &old_bundle).is_err());
        let logs = sidecar.logs.text();
        assert!(
            logs.contains("renewing the SVID early")
                && logs.contains("reconnecting to the control plane with the SVID of the new root"),
            "{logs}"
        );
        let metrics = sidecar.metrics().await;
        issued_at.push(counter(
            &metrics,
            "rampart_proxy_certificate_start_timestamp_seconds",
            &[],
        ));
        assert!(
            counter(
                &metrics,
                "rampart_proxy_svid_renewals_total",
                &["result=\"ok\""]
            ) >= 1.0,
            "{metrics}"
        );
    }
    let spread = issued_at.iter().cloned().fold(f64::MIN, f64::max)
        - issued_at.iter().cloned().fold(f64::MAX, f64::min);

    // Nothing of the old root is accepted any more: the CA refuses to renew
    // its SVID (the handshake fails), and so does the admin API.
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        let tls = client_config(
            Some(CurrentSvid::new(&old_svid).unwrap()),
            &new_bundle,
            PeerPolicy::exactly(control_plane_id(new_bundle.trust_domain())),
        )
        .unwrap();
        let channel = rampart_api::connect(&cp.grpc_addr, tls)
            .await
            .map_err(|e| e.to_string())?;
        sign(channel, None, None, 0)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or(Err("timed out".into()));
    assert!(refused.is_err(), "an SVID of the retired root was renewed");

    // Traffic went on all along and goes on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = under_load.load.stop().await;
    assert!(
        tally.ok() > answered_after,
        "requests answered after the rotation"
    );
    assert_eq!(
        tally.failed(),
        0,
        "requests failed during the rotation; last: {}",
        tally.last_failure.lock().unwrap()
    );
    eprintln!(
        "root rotation under load: done in {:.1}s (control plane SIGKILLed and restarted in the trust phase), \
         {} requests answered, 0 failed; every SVID re-issued within {:.0}s of each other; phases {seen:?}",
        took.as_secs_f64(),
        tally.ok(),
        spread
    );
}
