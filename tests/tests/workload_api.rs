//! rampart-proxy gets its SVID with a join token, renews it at half-life and
//! serves the SPIFFE Workload API; an independent client (PyPI `spiffe`)
//! checks what it serves.

use std::process::{Command, Stdio};
use std::time::Duration;

use rampart_tests::{ControlPlane, Logs, http_get, python};

/// SVID lifetime asked for by the proxy: renewal comes at about half of it.
const SHORT_TTL_SECONDS: u64 = 16;

/// The proxy command and its admin address.
fn proxy(
    cp: &ControlPlane,
    token: &str,
    socket: &std::path::Path,
    ttl: Option<u64>,
) -> (Command, String) {
    let (mut cmd, admin) = rampart_tests::proxy(cp, token, socket);
    if let Some(ttl) = ttl {
        cmd.args(["--svid-ttl-seconds", &ttl.to_string()]);
    }
    (cmd, admin)
}

/// The value of an unlabelled or fully labelled sample in a /metrics text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_the_svid_and_sees_it_renewed() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let token = cp.join_token("default", "web", 0).await;
    let socket = dir.path().join("workload.sock");
    let (mut command, admin) = proxy(&cp, &token, &socket, Some(SHORT_TTL_SECONDS));
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let logs = Logs::default();
    logs.capture_public(child.stderr.take().unwrap());
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        socket.exists(),
        "the proxy never served the socket:\n{}",
        logs.text()
    );

    // Wait a bit longer than half the TTL plus jitter, so one renewal happens.
    let wait = SHORT_TTL_SECONDS as f64 * 0.5 + 3.0;
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/python/workload_api_client.py"
        ))
        .arg(&socket)
        .arg("spiffe://cluster.local/ns/default/sa/web")
        .arg(wait.to_string())
        .output()
        .unwrap();
    // The admin port: ready, the SVID's expiry, and the renewal counted.
    let (ready, _) = http_get(&admin, "/ready").await.unwrap();
    let (_, metrics) = http_get(&admin, "/metrics").await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ready, 200);
    let expiry = sample(
        &metrics,
        "rampart_proxy_certificate_expiry_timestamp_seconds",
    )
    .expect("the expiry gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry <= now + SHORT_TTL_SECONDS as f64 + 5.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            r#"rampart_proxy_svid_renewals_total{result="ok"}"#
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-spiffe checks failed:\n{stdout}\n{}\nproxy log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs.text()
    );
    assert!(stdout.contains("all checks passed"));
    assert!(logs.text().contains("renewed SVID"));
    assert!(
        !logs.text().contains(&token),
        "the token must never be logged"
    );
    assert!(
        !cp.logs.text().contains(&token),
        "the token must never be logged"
    );
}

#[tokio::test]
async fn a_refused_token_stops_the_proxy_with_a_one_line_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let token = cp.join_token("default", "web", 0).await;
    rampart_tests::sign(cp.channel(None).await, Some(&token), None, 0)
        .await
        .unwrap();

    let out = proxy(&cp, &token, &dir.path().join("s.sock"), None)
        .0
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("join token refused") && last.contains("already used"),
        "{stderr}"
    );
    assert!(!stderr.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_waits_for_a_control_plane_that_starts_after_it() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed port, so the restarted control plane is where the proxy looks.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut cp = ControlPlane::start(dir.path(), &["--grpc-addr", &addr]).await;
    let token = cp.join_token("default", "late", 0).await;
    assert!(cp.terminate().success());

    let socket = dir.path().join("late.sock");
    let (mut command, admin) = proxy(&cp, &token, &socket, None);
    let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
    let logs = Logs::default();
    logs.capture_public(child.stderr.take().unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the proxy gave up:\n{}",
        logs.text()
    );
    assert!(logs.text().contains("cannot get the first SVID yet"));
    // Alive, but not ready without an SVID.
    assert_eq!(http_get(&admin, "/live").await.unwrap().0, 200);
    assert_eq!(http_get(&admin, "/ready").await.unwrap().0, 503);

    let _cp = ControlPlane::start(dir.path(), &["--grpc-addr", &addr]).await;
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        socket.exists(),
        "no SVID after the control plane came up:\n{}",
        logs.text()
    );
    assert!(logs.text().contains("obtained SVID"));
}
