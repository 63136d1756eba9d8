//! What rampart-proxy does when things go wrong, seen by an app calling
//! through it: failing endpoints hidden by retries and then ejected, a
//! slow one cut off by the route timeout; and traffic that keeps flowing,
//! with no failed request, while weights move from v1 to v2, certificates
//! rotate and the control plane is killed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rampart_tests::apps::{self, KeepAlive, get_h1, post_chunked_h1};
use rampart_tests::load::{EchoUnderLoad, echo_split};
use rampart_tests::{ControlPlane, Sidecar, counter, eventually, free_port};

fn flaky_model(good: u16, bad: u16, dead: u16) -> String {
    format!(
        r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: flaky, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: good, namespace: default}}
spec: {{service: flaky, address: 127.0.0.1, ports: {{http: {good}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: bad, namespace: default}}
spec: {{service: flaky, address: 127.0.0.1, ports: {{http: {bad}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: dead, namespace: default}}
spec: {{service: flaky, address: 127.0.0.1, ports: {{http: {dead}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: flaky, namespace: default}}
spec:
  service: flaky
  loadBalancer: ROUND_ROBIN
  timeout: 1s
  retries: {{attempts: 3, retryOn: [5xx, connect-failure]}}
  outlierDetection: {{consecutive5xx: 2, baseEjectionTime: 60s, maxEjectionPercent: 100}}
"#
    )
}

const CLUSTER: &str = "outbound|8080||flaky.default";

/// A `client` sidecar calling `SERVICE.default:8080`, once a GET of `/`
/// through it answers 200; returns it and the address the app calls.
async fn answering_caller(cp: &ControlPlane, dir: &Path, service: &str) -> (Sidecar, String) {
    let target = format!("{service}.default:8080");
    let (client, out) = Sidecar::caller(cp, dir, "client", None, &target).await;
    let up = eventually(150, || async {
        matches!(get_h1(&out, service, "/").await, Ok((200, _)))
    })
    .await;
    assert!(
        up,
        "{service} never answered through the sidecar\n{}",
        client.logs.text()
    );
    (client, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_failures_outliers_are_ejected_and_timeouts_fire() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let cp = ControlPlane::start(dir.path(), &["--grpc-addr", &addr]).await;
    let good = apps::echo("good").await;
    let bad = apps::echo_failing("bad").await;
    let dead = free_port(); // nothing listens here
    let model = dir.path().join("flaky.yaml");
    std::fs::write(&model, flaky_model(good.port, bad.port, dead)).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);

    let (client, out) = answering_caller(&cp, dir.path(), "flaky").await;

    // Every request succeeds although two of three endpoints fail.
    let mut codes = Vec::new();
    for _ in 0..30 {
        codes.push(get_h1(&out, "flaky", "/ok").await.map(|(c, _)| c));
    }
    assert!(
        codes.iter().all(|c| *c == Ok(200)),
        "{codes:?}\n{}",
        client.logs.text()
    );
    let metrics = client.metrics().await;
    let cluster = format!("cluster=\"{CLUSTER}\"");
    assert!(
        counter(&metrics, "rampart_proxy_retries_total", &[&cluster]) >= 1.0,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "rampart_proxy_outlier_ejections_total",
            &[&cluster]
        ) >= 2.0,
        "{metrics}"
    );

    // Ejected: the failing endpoint gets no more requests.
    let before = bad.hits.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(get_h1(&out, "flaky", "/ok").await.map(|(c, _)| c), Ok(200));
    }
    assert_eq!(
        bad.hits.load(Ordering::Relaxed),
        before,
        "an ejected endpoint must get no traffic"
    );

    // The route's 1 s timeout cuts off a 3 s answer.
    let (code, body) = get_h1(&out, "flaky", "/slow/3000").await.unwrap();
    assert_eq!(code, 504, "{body}");
    assert!(body.contains("upstream request timeout"), "{body}");
}

/// `flaky` without outlier detection: its failing endpoints stay in the
/// rotation, so every other first try fails.
fn unejected(model: &str) -> String {
    let cut = model.find("  outlierDetection:").unwrap();
    model[..cut].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_is_retried_whole_a_long_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let good = apps::echo("good").await;
    let bad = apps::echo_failing("bad").await;
    let dead = free_port(); // nothing listens here
    let model = dir.path().join("flaky.yaml");
    std::fs::write(&model, unejected(&flaky_model(good.port, bad.port, dead))).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
    let (client, out) = answering_caller(&cp, dir.path(), "flaky").await;

    // Chunked, no length: the body goes out as it comes, recorded on the
    // way, and a retry (after a 503 or a refused connection) sends it
    // again whole.
    let chunks = |n: usize| vec![Bytes::from(vec![b'a'; 4096]); n];
    let mut answers = Vec::new();
    for _ in 0..12 {
        answers.push(post_chunked_h1(&out, "flaky", "/upload", chunks(5)).await);
    }
    assert!(
        answers.iter().all(
            |a| matches!(a, Ok((200, body)) if body.contains("name=good") && body.contains("body=20480 "))
        ),
        "{answers:?}\n{}",
        client.logs.text()
    );

    // Longer than the 64 KiB kept: a try that got a 503 after sending it
    // is not repeated (as in Envoy), so some calls fail; the ones that
    // reach the good endpoint carry the whole body.
    let mut codes = Vec::new();
    for _ in 0..12 {
        match post_chunked_h1(&out, "flaky", "/upload", chunks(20)).await {
            Ok((200, body)) => {
                assert!(body.contains("body=81920 "), "{body}");
                codes.push(200);
            }
            Ok((code, _)) => codes.push(code),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(codes.contains(&200) && codes.contains(&503), "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_weights_move_certificates_rotate_and_the_control_plane_dies() {
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cp = ControlPlane::start(dir.path(), &["--grpc-addr", &addr]).await;
    let apply = |v1: u32, v2: u32| {
        let path = dir.path().join(format!("split-{v1}-{v2}.yaml"));
        std::fs::write(&path, echo_split(v1, v2)).unwrap();
        cp.meshctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    };
    apply(100, 0);

    // Short-lived SVIDs: each proxy renews several times during the run.
    let ttl = Some(16);
    let EchoUnderLoad {
        echoes,
        client,
        load,
    } = EchoUnderLoad::start(&cp, dir.path(), ttl).await;
    let tally = load.tally.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 100/0 -> 0/100: once it lands, only v2 answers.
    apply(0, 100);
    let moved = eventually(100, || async {
        let v1 = tally.answered_by("v1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        tally.answered_by("v1") == v1 && tally.answered_by("v2") > 0
    })
    .await;
    assert!(moved, "traffic never moved to v2\n{}", client.logs.text());

    // Every proxy renews its SVID under load.
    let renewed = eventually(300, || async {
        let mut all = true;
        for s in echoes.iter().map(|(s, _)| s).chain([&client]) {
            all &= counter(
                &s.metrics().await,
                "rampart_proxy_svid_renewals_total",
                &["result=\"ok\""],
            ) >= 1.0;
        }
        all
    })
    .await;
    assert!(
        renewed,
        "not every proxy renewed its SVID\n{}",
        client.logs.text()
    );

    // The control plane dies; traffic continues on the last configuration.
    cp.kill9();
    let before = tally.ok();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = tally.ok();
    let tally = load.stop().await;

    let failed = tally.failed();
    eprintln!(
        "load: {} ok ({} v1, {} v2), {failed} failed; {} answered in the 3 s after the control plane died",
        tally.ok(),
        tally.answered_by("v1"),
        tally.answered_by("v2"),
        after - before
    );
    assert_eq!(
        failed,
        0,
        "{failed} requests failed (of {}); last: {}\n{}",
        tally.ok(),
        tally.last_failure.lock().unwrap(),
        client.logs.text()
    );
    assert!(
        after > before + 100,
        "traffic stalled after the control plane died: {before} -> {after}"
    );
}

const HELLO: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: hello, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
"#;

/// SIGTERM: the proxy stops taking connections, lets the request in flight
/// finish, then exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let model = dir.path().join("hello.yaml");
    std::fs::write(&model, HELLO).unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
    let app = apps::echo("hello").await;
    let _server = Sidecar::builder(&cp, dir.path(), "hello")
        .args(&[
            "--node-id".into(),
            "hello-1".into(),
            "--service".into(),
            "hello".into(),
            "--port".into(),
            format!("http={}", free_port()),
            "--app-port".into(),
            format!("http={}", app.port),
        ])
        .start()
        .await;
    let (mut caller, out) =
        Sidecar::caller(&cp, dir.path(), "frontend", None, "hello.default:8080").await;
    let up = eventually(150, || async {
        matches!(get_h1(&out, "hello", "/").await, Ok((200, _)))
    })
    .await;
    assert!(up, "{}", caller.logs.text());

    let slow = {
        let out = out.clone();
        tokio::spawn(async move { get_h1(&out, "hello", "/slow/1500").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = std::process::Command::new("kill")
        .arg(caller.child.id().to_string())
        .status();
    // Listeners close at once...
    let closed = eventually(50, || async {
        tokio::net::TcpStream::connect(&out).await.is_err()
    })
    .await;
    assert!(closed, "the listener still accepts after SIGTERM");
    // ...the request in flight still gets its answer...
    let answer = slow.await.unwrap();
    assert!(
        matches!(&answer, Ok((200, body)) if body.contains("path=/slow/1500")),
        "{answer:?}\n{}",
        caller.logs.text()
    );
    // ...and the proxy exits cleanly.
    let status = tokio::task::spawn_blocking(move || {
        let status = caller.child.wait().unwrap();
        (status, caller)
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit {:?}\n{}",
        status.0,
        status.1.logs.text()
    );
}

/// A circuit breaker at one request in flight: a second concurrent request
/// is refused at once with 503 and the reason, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_refuses_what_is_over_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let app = apps::echo("narrow").await;
    let model = dir.path().join("narrow.yaml");
    std::fs::write(
        &model,
        format!(
            r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {{name: narrow, namespace: default}}
spec:
  ports: [{{name: http, port: 8080, protocol: http}}]
---
apiVersion: rampart.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: narrow-1, namespace: default}}
spec: {{service: narrow, address: 127.0.0.1, ports: {{http: {}}}}}
---
apiVersion: rampart.dev/v1alpha1
kind: TrafficPolicy
metadata: {{name: narrow, namespace: default}}
spec:
  service: narrow
  circuitBreakers: {{maxRequests: 1}}
"#,
            app.port
        ),
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
    let (client, out) = answering_caller(&cp, dir.path(), "narrow").await;

    let slow = {
        let out = out.clone();
        tokio::spawn(async move { get_h1(&out, "narrow", "/slow/1000").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = get_h1(&out, "narrow", "/now").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("circuit breaker open") && body.contains("max_requests"),
        "{body}"
    );
    assert!(matches!(slow.await.unwrap(), Ok((200, _))));
    let metrics = client.metrics().await;
    assert!(
        counter(
            &metrics,
            "rampart_proxy_circuit_breaker_overflows_total",
            &["limit=\"max_requests\""]
        ) >= 1.0,
        "{metrics}"
    );
    // Under the limit again, requests pass.
    assert!(matches!(
        get_h1(&out, "narrow", "/after").await,
        Ok((200, _))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_port_is_taken_is_counted_and_binds_once_it_is_free() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let app = apps::echo("late").await;
    let model = dir.path().join("late.yaml");
    std::fs::write(
        &model,
        format!(
            "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: late, namespace: default}}\nspec:\n  ports: [{{name: http, port: 8080, protocol: http}}]\n---\napiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: late-1, namespace: default}}\nspec: {{service: late, address: 127.0.0.1, ports: {{http: {}}}}}\n",
            app.port
        ),
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);

    // Another process holds the port the outbound listener is to take.
    let entry = format!("127.0.0.1:{}", free_port());
    let squatter = std::net::TcpListener::bind(&entry).unwrap();
    let args = [
        "--node-id".to_owned(),
        "client-1".to_owned(),
        "--outbound".to_owned(),
        format!("{entry}=late.default:8080"),
    ];
    let client = Sidecar::builder(&cp, dir.path(), "client")
        .args(&args)
        .start()
        .await;
    let failures = || async {
        counter(
            &client.metrics().await,
            "rampart_proxy_listener_bind_failures_total",
            &[],
        )
    };
    let counted = eventually(150, || async { failures().await >= 1.0 }).await;
    assert!(counted, "no bind failure counted\n{}", client.logs.text());

    // Freed: the proxy takes the port on its own, without a new update.
    drop(squatter);
    let up = eventually(150, || async {
        matches!(get_h1(&entry, "late", "/").await, Ok((200, _)))
    })
    .await;
    assert!(
        up,
        "the listener never bound after the port was freed\n{}",
        client.logs.text()
    );
}

/// An HTTP/2 (h2c) app that says GOAWAY on each connection as soon as a
/// request arrives on it, and takes new connections, as a server with a
/// maximum connection age does. `/slow` is answered after 500 ms. Returns
/// its port and how many connections it has taken.
async fn h2_app_closing_each_connection() -> (u16, Arc<AtomicU64>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicU64::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let arrived = Arc::new(tokio::sync::Notify::new());
                let notify = arrived.clone();
                let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    notify.notify_one();
                    let slow = req.uri().path() == "/slow";
                    async move {
                        if slow {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        let body = http_body_util::Full::new(Bytes::from_static(b"answered"));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    }
                });
                let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => return,
                    () = arrived.notified() => conn.as_mut().graceful_shutdown(),
                }
                let _ = conn.await;
            });
        }
    });
    (port, connections)
}

/// A shared HTTP/2 connection the upstream closes with GOAWAY while a
/// request is still in flight on it: that request gets its answer, and the
/// next one goes on a new connection instead of failing (no retry policy
/// is involved).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_goaway_goes_on_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let (port, connections) = h2_app_closing_each_connection().await;
    let model = format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: legacy, namespace: default}}\nspec:\n  ports: [{{name: web, port: 8080, protocol: http2}}]\n---\napiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: legacy-1, namespace: default}}\nspec: {{service: legacy, address: 127.0.0.1, ports: {{web: {port}}}}}\n"
    );
    let path = dir.path().join("legacy.yaml");
    std::fs::write(&path, model).unwrap();
    cp.meshctl_ok(&["apply", "-f", path.to_str().unwrap()]);
    let (caller, out) =
        Sidecar::caller(&cp, dir.path(), "frontend", None, "legacy.default:8080").await;
    let up = eventually(150, || async {
        matches!(get_h1(&out, "legacy", "/").await, Ok((200, _)))
    })
    .await;
    assert!(up, "{}", caller.logs.text());
    let before = connections.load(Ordering::Relaxed);
    for i in 0..5 {
        let slow = {
            let out = out.clone();
            tokio::spawn(async move { get_h1(&out, "legacy", "/slow").await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let next = get_h1(&out, "legacy", "/").await;
        assert!(
            matches!(&next, Ok((200, b)) if b == "answered"),
            "round {i}, the request after GOAWAY: {next:?}\n{}",
            caller.logs.text()
        );
        let slow = slow.await.unwrap();
        assert!(
            matches!(&slow, Ok((200, _))),
            "round {i}, the request in flight: {slow:?}"
        );
    }
    assert!(connections.load(Ordering::Relaxed) - before >= 10);
}

/// An app that drops each connection when its second request arrives,
/// unanswered (a keep-alive timeout running out just then): a bodyless GET
/// on a reused connection that ended before any response is sent again on a
/// new connection, with no retry policy: every call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_pooled_connection_closed_under_it_goes_on_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let port = apps::one_request_per_connection().await;
    let model = dir.path().join("closing.yaml");
    std::fs::write(
        &model,
        format!(
            "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: closing, namespace: default}}\nspec:\n  ports: [{{name: http, port: 8080, protocol: http}}]\n---\napiVersion: rampart.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: closing, namespace: default}}\nspec: {{service: closing, address: 127.0.0.1, ports: {{http: {port}}}}}\n"
        ),
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
    let (client, out) = answering_caller(&cp, dir.path(), "closing").await;
    let mut keep_alive = KeepAlive::new(&out);
    let mut failed = Vec::new();
    for i in 0..500 {
        match keep_alive.get("closing", "/").await {
            Ok((200, _)) => {}
            other => failed.push((i, other)),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 500 failed, e.g. {:?}\n{}",
        failed.len(),
        failed.first(),
        client.logs.text()
    );
    // Every call on a reused connection was sent again, and counted.
    let metrics = client.metrics().await;
    let resends = counter(
        &metrics,
        "rampart_proxy_upstream_resends_total",
        &["cluster=\"outbound|8080||closing.default\""],
    );
    assert!(resends >= 100.0, "{metrics}");
}
