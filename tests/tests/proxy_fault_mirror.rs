//! A TrafficPolicy's fault injection and mirroring, carried out by a
//! rampart-proxy between a caller and real apps: every request is copied to
//! the mirror service (whose answers the caller never sees, and whose
//! copies carry a `-shadow` authority), streamed bodies included, an abort
//! fault
//! answers with its status before any app is reached, and a delay fault
//! holds requests back.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rampart_tests::apps::{self, get_h1, post_chunked_h1};
use rampart_tests::{ControlPlane, Sidecar, counter, eventually};

fn model(shop: u16, shadow: u16, fault: &str) -> String {
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: shop, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: shop-1, namespace: default}}
spec: {{service: shop, address: 127.0.0.1, ports: {{http: {shop}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: shadow, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: shadow-1, namespace: default}}
spec: {{service: shadow, address: 127.0.0.1, ports: {{http: {shadow}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: shop, namespace: default}}
spec:
  service: shop
  mirror: {{service: shadow}}
{fault}"#
    )
}

fn apply(cp: &ControlPlane, dir: &Path, text: &str) {
    let path = dir.join("shop.yaml");
    std::fs::write(&path, text).unwrap();
    cp.meshctl_ok(&["apply", "-f", path.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_mirrors_are_carried_out_as_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let shop = apps::echo("shop").await;
    let shadow = apps::echo("shadow").await;
    apply(&cp, dir.path(), &model(shop.port, shadow.port, ""));
    let (client, out) = Sidecar::caller(&cp, dir.path(), "client", None, "shop.default:8080").await;
    let up = eventually(150, || async {
        matches!(get_h1(&out, "shop", "/").await, Ok((200, b)) if b.contains("name=shop"))
    })
    .await;
    assert!(up, "shop never answered\n{}", client.logs.text());

    // Mirroring: the caller gets the shop's answers, the shadow gets a copy
    // of each request; a streamed (chunked) body too, once it has been sent.
    let mirrored = shadow.hits.load(Ordering::Relaxed);
    for i in 0..10 {
        let answer = if i % 2 == 0 {
            get_h1(&out, "shop", "/order").await
        } else {
            let body = vec![Bytes::from_static(b"order="), Bytes::from_static(b"42")];
            post_chunked_h1(&out, "shop", "/order", body).await
        };
        assert!(
            matches!(&answer, Ok((200, b)) if b.contains("name=shop")),
            "{answer:?}"
        );
    }
    let copies = eventually(100, || async {
        shadow.hits.load(Ordering::Relaxed) >= mirrored + 10
    })
    .await;
    assert!(
        copies,
        "the shadow got {} of 10 copies\n{}",
        shadow.hits.load(Ordering::Relaxed) - mirrored,
        client.logs.text()
    );
    // A copy says it is one, as Envoy's do: `-shadow` on its authority.
    let hosts = shadow.hosts.lock().unwrap().clone();
    assert!(
        hosts.iter().rev().take(10).all(|h| h == "shop-shadow"),
        "{hosts:?}"
    );
    assert!(
        !shop
            .hosts
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.contains("shadow"))
    );

    // An abort fault answers for the app: the shop is not reached, and the
    // answers are counted like any other.
    let abort = "  fault: {abort: {httpStatus: 418, percent: 100}}\n";
    apply(&cp, dir.path(), &model(shop.port, shadow.port, abort));
    let aborted = eventually(150, || async {
        matches!(get_h1(&out, "shop", "/").await, Ok((418, _)))
    })
    .await;
    assert!(aborted, "no 418\n{}", client.logs.text());
    let reached = shop.hits.load(Ordering::Relaxed);
    for _ in 0..5 {
        assert!(matches!(get_h1(&out, "shop", "/").await, Ok((418, _))));
    }
    assert_eq!(shop.hits.load(Ordering::Relaxed), reached);
    let metrics = client.metrics().await;
    assert!(
        counter(
            &metrics,
            "rampart_proxy_requests_total",
            // The proxy's own answer, with Envoy's flag for a fault abort.
            &["response_code=\"418\"", "response_flags=\"FI\""]
        ) >= 5.0,
        "{metrics}"
    );

    // Half aborted: on one keep-alive connection the answers alternate
    // between the app's and the fault's, and each is counted under its own
    // code (the proxy keeps the last request's counters per connection).
    let half = "  fault: {abort: {httpStatus: 418, percent: 50}}\n";
    apply(&cp, dir.path(), &model(shop.port, shadow.port, half));
    let mixed = eventually(150, || async {
        let mut seen = [false; 2];
        for _ in 0..20 {
            match get_h1(&out, "shop", "/").await {
                Ok((200, _)) => seen[0] = true,
                Ok((418, _)) => seen[1] = true,
                _ => {}
            }
        }
        seen == [true, true]
    })
    .await;
    assert!(
        mixed,
        "the 50% abort never took effect\n{}",
        client.logs.text()
    );
    let count = |metrics: &str, code: &str| {
        let code = format!("response_code=\"{code}\"");
        counter(metrics, "rampart_proxy_requests_total", &[&code])
    };
    let before = client.metrics().await;
    let mut conn = apps::KeepAlive::new(&out);
    let mut seen = [0.0; 2];
    for _ in 0..40 {
        match conn.get("shop", "/").await {
            Ok((200, _)) => seen[0] += 1.0,
            Ok((418, _)) => seen[1] += 1.0,
            other => panic!("{other:?}"),
        }
    }
    let after = client.metrics().await;
    assert!(seen[0] > 0.0 && seen[1] > 0.0, "{seen:?}");
    assert_eq!(
        count(&after, "200") - count(&before, "200"),
        seen[0],
        "{after}"
    );
    assert_eq!(
        count(&after, "418") - count(&before, "418"),
        seen[1],
        "{after}"
    );

    // A delay fault holds every request back at least that long, then
    // lets it through.
    let delay = "  fault: {delay: {fixed: 400ms, percent: 100}}\n";
    apply(&cp, dir.path(), &model(shop.port, shadow.port, delay));
    let through = eventually(150, || async {
        let started = Instant::now();
        matches!(get_h1(&out, "shop", "/").await, Ok((200, _)))
            && started.elapsed() >= Duration::from_millis(400)
    })
    .await;
    assert!(through, "the delay never took over\n{}", client.logs.text());
    let started = Instant::now();
    let answer = get_h1(&out, "shop", "/").await;
    assert!(matches!(answer, Ok((200, _))), "{answer:?}");
    assert!(started.elapsed() >= Duration::from_millis(400));
    // The app answered, after a delay the fault injected: Envoy's `DI`.
    let delayed = counter(
        &client.metrics().await,
        "rampart_proxy_requests_total",
        &["response_code=\"200\"", "response_flags=\"DI\""],
    );
    assert!(delayed >= 2.0, "{delayed}");
}
