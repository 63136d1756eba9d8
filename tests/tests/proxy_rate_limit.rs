//! A local rate limit from a TrafficPolicy: the service's sidecar lets its
//! burst through, answers 429 to the rest without the app seeing them, and
//! lets requests in again as its bucket refills. A caller denied by policy
//! does not use up the allowance.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rampart_tests::apps::{self, get_h1};
use rampart_tests::{ControlPlane, Sidecar, counter, eventually, free_port};

const MODEL: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: limited, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: limited, namespace: default}
spec:
  service: limited
  rateLimit: {requestsPerSecond: 2, burst: 5}
---
apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: default}
spec:
  selector: {app: limited}
  action: DENY
  rules:
  - to: [{paths: ["/admin*"]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_lets_the_burst_through_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let file = dir.path().join("model.yaml");
    std::fs::write(&file, MODEL).unwrap();
    cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let app = apps::echo("limited").await;
    let server = Sidecar::builder(&cp, dir.path(), "limited")
        .args(&[
            "--node-id".into(),
            "limited-1".into(),
            "--service".into(),
            "limited".into(),
            "--label".into(),
            "app=limited".into(),
            "--port".into(),
            format!("http={}", free_port()),
            "--app-port".into(),
            format!("http={}", app.port),
        ])
        .start()
        .await;
    let (client, out) =
        Sidecar::caller(&cp, dir.path(), "client", None, "limited.default:8080").await;
    let up = eventually(150, || async {
        matches!(get_h1(&out, "limited", "/").await, Ok((200, _)))
    })
    .await;
    assert!(up, "never answered\n{}", client.logs.text());

    // Let the bucket fill up again, then: denied calls first (they must not
    // count), then a burst of 20.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    for _ in 0..10 {
        assert_eq!(
            get_h1(&out, "limited", "/admin").await.map(|(c, _)| c),
            Ok(403)
        );
    }
    let before = app.hits.load(Ordering::Relaxed);
    let mut codes = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        codes.push(get_h1(&out, "limited", "/").await);
    }
    let ok = codes.iter().filter(|c| matches!(c, Ok((200, _)))).count();
    let limited = codes
        .iter()
        .filter(|c| matches!(c, Ok((429, body)) if body.contains("local_rate_limited")))
        .count();
    // The burst (5), plus what refilled while the 20 went (2 a second,
    // however long this machine took).
    let refills = 2 * (started.elapsed().as_secs() as usize + 1);
    assert!((5..=5 + refills).contains(&ok), "{codes:?}");
    assert_eq!(ok + limited, 20, "{codes:?}");
    // The app saw only what was let through.
    assert_eq!(app.hits.load(Ordering::Relaxed) - before, ok as u64);
    let metrics = server.metrics().await;
    assert!(
        counter(&metrics, "rampart_proxy_rate_limited_total", &[]) >= limited as f64,
        "{metrics}"
    );

    // The bucket refills: after a second, requests get in again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_h1(&out, "limited", "/").await.map(|(c, _)| c), Ok(200));
}
