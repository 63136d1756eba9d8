//! Faults under steady load, seen by an app calling through its sidecar:
//! the control plane is killed (SIGKILL) and stays away for a minute, comes
//! back on the same data directory, and then takes 1,000 configuration
//! changes in a burst. Not one request may fail, the proxies must find the
//! restarted control plane by themselves, and the last change must be what
//! they end up serving.

use std::time::{Duration, Instant};

use rampart_api::admin::ProxyStatusRequest;
use rampart_tests::load::{ECHO_SERVICE, EchoUnderLoad, apply_echo_split};
use rampart_tests::{ControlPlane, Sidecar, apps, counter, eventually, free_port};

/// How long the control plane stays dead.
const OUTAGE: Duration = Duration::from_secs(60);
/// Changes in the burst.
const BURST: usize = 1000;

/// Whether `count` proxies are connected with every type ACKed.
async fn all_synced(cp: &ControlPlane, count: usize) -> bool {
    let Ok(status) = cp.admin().await.proxy_status(ProxyStatusRequest {}).await else {
        return false;
    };
    let proxies = status.into_inner().proxies;
    proxies.len() == count
        && proxies
            .iter()
            .all(|p| !p.types.is_empty() && p.types.iter().all(|t| t.state == "SYNCED"))
}

/// A control plane on `data`, serving gRPC on `port` (the same after a
/// restart, as the proxies know it).
async fn start_on(data: &std::path::Path, port: u16) -> ControlPlane {
    ControlPlane::start(data, &["--grpc-addr", &format!("127.0.0.1:{port}")]).await
}

/// A control plane on a fixed port with echo split 100/0 to v1, and
/// steady load through a client sidecar, every proxy SYNCED.
struct Setup {
    dir: tempfile::TempDir,
    data: std::path::PathBuf,
    port: u16,
    cp: ControlPlane,
    under_load: EchoUnderLoad,
}

impl Setup {
    async fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("cp");
        let port = free_port();
        let cp = start_on(&data, port).await;
        apply_echo_split(&cp, 100, 0).await;
        let under_load = EchoUnderLoad::start(&cp, dir.path(), None).await;
        assert!(eventually(100, || all_synced(&cp, 3)).await);
        Setup {
            dir,
            data,
            port,
            cp,
            under_load,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_control_plane_outage_a_restart_and_a_burst_of_changes() {
    let Setup {
        dir: _dir,
        data,
        port,
        mut cp,
        under_load,
    } = Setup::start().await;
    // (`under_load.echoes` keeps the backends' sidecars alive to the end.)
    let (client, load) = (&under_load.client, under_load.load);
    let tally = load.tally.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // SIGKILL, and a minute without a control plane.
    cp.kill9();
    let before_outage = tally.ok();
    tokio::time::sleep(OUTAGE).await;
    let during_outage = tally.ok() - before_outage;

    // Back on the same data directory and address: the proxies reconnect
    // by themselves and are served the model they had.
    let restarted = Instant::now();
    let cp = start_on(&data, port).await;
    let resynced = eventually(300, || all_synced(&cp, 3)).await;
    assert!(
        resynced,
        "the proxies did not come back to the restarted control plane\n{}",
        client.logs.text()
    );
    let reconnect = restarted.elapsed();

    // 1,000 changes as fast as the admin API takes them; the last sends
    // everything to v2.
    let burst_started = Instant::now();
    for i in 0..BURST {
        let v1 = (i % 101) as u32;
        apply_echo_split(&cp, v1, 100 - v1).await;
    }
    apply_echo_split(&cp, 0, 100).await;
    let burst = burst_started.elapsed();
    let converged = eventually(300, || async {
        let v1 = tally.answered_by("v1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        tally.answered_by("v1") == v1 && all_synced(&cp, 3).await
    })
    .await;
    assert!(converged, "the burst never settled\n{}", client.logs.text());
    let settled = burst_started.elapsed();
    let v2_before = tally.answered_by("v2");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tally = load.stop().await;
    assert!(
        tally.answered_by("v2") > v2_before,
        "v2 answers after the burst"
    );

    let metrics = cp.http_get("/metrics").await.unwrap().1;
    let pushes = counter(&metrics, "rampart_xds_pushes_total", &[]);
    eprintln!(
        "load: {} ok, {} failed; {during_outage} answered during the {}s outage; \
         proxies resynced {:.1}s after the restart; {BURST} changes applied in {:.1}s, \
         settled {:.1}s after the first; {pushes} xDS responses sent by the restarted control plane",
        tally.ok(),
        tally.failed(),
        OUTAGE.as_secs(),
        reconnect.as_secs_f64(),
        burst.as_secs_f64(),
        settled.as_secs_f64(),
    );
    assert_eq!(
        tally.failed(),
        0,
        "{} requests failed; last: {}\n{}",
        tally.failed(),
        tally.last_failure.lock().unwrap(),
        client.logs.text()
    );
    assert!(
        during_outage > 1000,
        "traffic stalled without the control plane: {during_outage} answers in {}s",
        OUTAGE.as_secs()
    );
    // Debounced: far fewer responses than changes, and none lost.
    assert!(
        pushes < BURST as f64,
        "{pushes} xDS responses for {BURST} changes"
    );
    let stored = cp.meshctl_ok(&["get", "trafficpolicy", "echo-split", "-o", "json"]);
    let stored: serde_json::Value = serde_json::from_slice(&stored.stdout).unwrap();
    assert_eq!(stored["spec"]["split"][1]["weight"], 100, "{stored}");
}

/// iptables rules dropping every packet to and from a TCP port on this
/// host, removed when dropped (the tests run as root in CI).
struct Partition(Vec<Vec<String>>);

impl Partition {
    fn cut(port: u16) -> Partition {
        let rules: Vec<Vec<String>> = [("INPUT", "--dport"), ("INPUT", "--sport")]
            .iter()
            .map(|(chain, side)| {
                [chain, "-p", "tcp", side, &port.to_string(), "-j", "DROP"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
            .collect();
        for rule in &rules {
            let ok = std::process::Command::new("iptables")
                .arg("-I")
                .args(rule)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "iptables -I {rule:?} (needs root and iptables)");
        }
        Partition(rules)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in &self.0 {
            let _ = std::process::Command::new("iptables")
                .arg("-D")
                .args(rule)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_survives_a_network_cut_to_the_control_plane_and_resyncs_after() {
    let Setup {
        dir: _dir,
        data,
        port,
        mut cp,
        under_load,
    } = Setup::start().await;
    let (client, load) = (&under_load.client, under_load.load);
    let tally = load.tally.clone();

    // The network to the control plane goes silent (packets dropped, no
    // reset), and while it is, the control plane is replaced: the proxies'
    // streams to the old one are dead and nobody tells them.
    let partition = Partition::cut(port);
    let before = tally.ok();
    tokio::time::sleep(OUTAGE / 2).await;
    cp.kill9();
    let cp = start_on(&data, port).await;
    tokio::time::sleep(OUTAGE / 2).await;
    let during = tally.ok() - before;
    drop(partition);

    // Back: the proxies find the new control plane (HTTP/2 pings told them
    // the old stream was dead; without them it would wait out TCP's
    // timeout) and take a change.
    let healed = Instant::now();
    let reconnected = eventually(600, || all_synced(&cp, 3)).await;
    assert!(
        reconnected,
        "the proxies never came back to the new control plane\n{}",
        client.logs.text()
    );
    let resynced = healed.elapsed();
    apply_echo_split(&cp, 0, 100).await;
    let moved = eventually(600, || async {
        let v1 = tally.answered_by("v1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        tally.answered_by("v1") == v1 && tally.answered_by("v2") > 0 && all_synced(&cp, 3).await
    })
    .await;
    assert!(
        moved,
        "the proxies never took a change after the cut\n{}",
        client.logs.text()
    );
    let tally = load.stop().await;
    eprintln!(
        "network cut: {} ok, {} failed; {during} answered during the {}s cut; \
         the proxies SYNCED with the new control plane {:.1}s after it healed",
        tally.ok(),
        tally.failed(),
        OUTAGE.as_secs(),
        resynced.as_secs_f64()
    );
    assert_eq!(
        tally.failed(),
        0,
        "last failure: {}",
        tally.last_failure.lock().unwrap()
    );
    assert!(during > 1000, "traffic stalled during the cut: {during}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_under_load_fails_only_responses_it_had_begun() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    // One service, both versions as its endpoints, and what an operator
    // sets for this: retries on resets and refused connections, outlier
    // detection. (A weighted split by version would pin half the requests
    // to v2's subset, where retries have nowhere else to go.)
    let policy = format!(
        "{}---\napiVersion: rampart.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: echo-split, namespace: default}}\nspec:\n  service: echo\n  retries: {{attempts: 3, retryOn: [reset, connect-failure, gateway-error]}}\n  outlierDetection: {{consecutive5xx: 2, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}}\n",
        ECHO_SERVICE
    );
    let file = dir.path().join("split.yaml");
    std::fs::write(&file, policy).unwrap();
    cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let EchoUnderLoad {
        mut echoes,
        client,
        load,
    } = EchoUnderLoad::start(&cp, dir.path(), None).await;
    let tally = load.tally.clone();
    let both = eventually(100, || async {
        tally.answered_by("v1") > 50 && tally.answered_by("v2") > 50
    })
    .await;
    assert!(both, "both versions answer\n{}", client.logs.text());

    // v2's sidecar dies (SIGKILL) with requests in flight through it.
    let (v2, _) = &mut echoes[1];
    v2.child.kill().unwrap();
    let killed_at = tally.ok();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tally = load.stop().await;
    eprintln!(
        "backend killed: {} ok ({} v1, {} v2), {} failed ({} cut off); {} answered in the 5 s after the kill",
        tally.ok(),
        tally.answered_by("v1"),
        tally.answered_by("v2"),
        tally.failed(),
        tally.cut_off(),
        tally.ok() - killed_at
    );
    // Retries replay what never got an answer. A response the dying backend
    // had already begun cannot be replayed (as in Envoy): its caller's
    // connection is closed. That can be at most the requests in flight, one
    // per client connection (4); no error status, nothing else.
    let failures = tally.failures.lock().unwrap().clone();
    assert!(
        failures.len() <= 4 && tally.cut_off() == failures.len(),
        "failures beyond responses cut off in flight: {failures:?}\n{}",
        client.logs.text()
    );
    assert!(
        tally.ok() - killed_at > 500,
        "traffic went on after the kill"
    );
}

/// A backend that dies in the middle of a response body, behind its
/// sidecar: the caller must see a response that ends in an error, never
/// a short body passed off as whole, on HTTP/1.1 (both framings) and
/// HTTP/2; and the same path through the same sidecars works again next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_body_is_an_error_to_the_caller_not_a_short_answer() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
    let model = dir.path().join("cut.yaml");
    std::fs::write(
        &model,
        "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {name: cut, namespace: default}\nspec:\n  ports: [{name: http, port: 8080, protocol: http}]\n  serviceAccounts: [cut]\n",
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
    let app = apps::dies_mid_body().await;
    let args = [
        "--service".into(),
        "cut".into(),
        "--port".into(),
        format!("http={}", free_port()),
        "--app-port".into(),
        format!("http={app}"),
    ];
    let backend = Sidecar::builder(&cp, dir.path(), "cut")
        .args(&args)
        .start()
        .await;
    let (client, out) = Sidecar::caller(&cp, dir.path(), "client", None, "cut.default:8080").await;
    let up = eventually(150, || async {
        matches!(apps::get_h1(&out, "cut", "/").await, Ok((200, b)) if b == "ok\n")
    })
    .await;
    assert!(up, "no answer through the sidecars\n{}", client.logs.text());

    for (name, answer) in [
        (
            "HTTP/1.1, content-length",
            apps::get_h1(&out, "cut", "/cut").await,
        ),
        (
            "HTTP/1.1, chunked",
            apps::get_h1(&out, "cut", "/cut/chunked").await,
        ),
        ("HTTP/2", apps::get_h2(&out, "cut", "/cut").await),
    ] {
        eprintln!(
            "{name}: the caller saw {:?}",
            answer.as_ref().map(|(s, b)| (s, b.len()))
        );
        // An error while reading the body; a 5xx before any byte is also
        // honest. A 200 with a body is the one thing that must not happen.
        match &answer {
            Err(_) => {}
            Ok((status, _)) => assert!(
                *status >= 500,
                "{name}: a cut response reached the caller as {status} with a complete-looking body"
            ),
        }
        // The next request on the same path through the same sidecars works.
        let again = apps::get_h1(&out, "cut", "/").await;
        assert!(
            matches!(&again, Ok((200, b)) if b == "ok\n"),
            "{name}: then {again:?}"
        );
    }
    for sidecar in [&backend, &client] {
        assert!(sidecar.is_running(), "a sidecar exited");
    }
}
