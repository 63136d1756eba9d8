//! docs/getting-started.md, run: `meshctl demo` brings up the mesh with
//! live traffic; a split moves the versions' shares, a deny policy brings
//! 403s and taking it away ends them, a killed backend is routed around by
//! outlier detection; Ctrl-C stops every process; a second run finds the
//! CA, the policies and an unused join token of the first.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rampart_tests::demo::{CLIENT, Demo, GRPC, HTTP, meshctl, route, share, success};
use rampart_tests::{bin, counter, free_port, http_get};
use serde_json::Value;

/// Every process the demo recorded in demo.json.
fn recorded_pids(dir: &Path) -> Vec<u32> {
    let text = std::fs::read_to_string(dir.join("demo.json")).unwrap();
    let state: Value = serde_json::from_str(&text).unwrap();
    let mut pids: Vec<u32> = state["apps"]
        .as_object()
        .unwrap()
        .values()
        .map(|a| a["pid"].as_u64().unwrap() as u32)
        .collect();
    pids.push(state["pid"].as_u64().unwrap() as u32);
    pids
}

/// Every rampart process whose command line names `dir`.
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect()
}

#[test]
fn the_getting_started_walk_through() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let mut demo = Demo::start(&dir);

    // 1. The mesh comes up: traffic on every route, mTLS on every hop.
    let up = demo.until("traffic flowing on every route over mTLS", 120, |s| {
        [CLIENT, HTTP, GRPC]
            .iter()
            .all(|r| route(s, r)["requests"].as_u64() > Some(20) && success(s, r) == 100.0)
            && s["hops"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["requests"].as_f64() > Some(0.0))
    });
    assert!(up["identities_issued"].as_f64().unwrap() >= 4.0, "{up}");
    assert_eq!(up["connected_proxies"].as_f64(), Some(4.0), "{up}");
    assert!(
        share(&up, HTTP, "v1") > 0.0 && share(&up, HTTP, "v2") > 0.0,
        "{up}"
    );
    let bundle = meshctl(&dir, &["ca", "bundle"]);

    // 2. A split: the shares follow it, and no call fails while the new
    // subset clusters arrive, nor when they go away again (three times).
    let failed = std::cell::RefCell::new(Vec::new());
    let no_failures = |s: &Value| {
        for r in [CLIENT, HTTP, GRPC] {
            if success(s, r) < 100.0 {
                failed
                    .borrow_mut()
                    .push(format!("{r}: {}", route(s, r)["failures"]));
            }
        }
    };
    for _ in 0..2 {
        let applied = meshctl(&dir, &["demo", "split", "v1=10,v2=90"]);
        assert!(applied.contains("weight: 90"), "{applied}");
        demo.until("v2 taking about 90% after the split", 60, |s| {
            no_failures(s);
            [HTTP, GRPC].iter().all(|r| share(s, r, "v2") >= 75.0)
        });
        meshctl(&dir, &["demo", "reset"]);
        demo.until("both versions after the reset", 60, |s| {
            no_failures(s);
            [HTTP, GRPC].iter().all(|r| share(s, r, "v1") >= 30.0)
        });
    }
    meshctl(&dir, &["demo", "split", "v1=10,v2=90"]);
    demo.until("v2 taking about 90% after the split", 60, |s| {
        no_failures(s);
        [HTTP, GRPC].iter().all(|r| share(s, r, "v2") >= 75.0)
    });
    assert!(
        failed.borrow().is_empty(),
        "calls failed while the split changed: {:?}",
        failed.borrow()
    );

    // 3. A deny policy: 403s on the HTTP route only, counted by the sidecars.
    meshctl(&dir, &["demo", "deny"]);
    let denied = demo.until("403s on the HTTP route", 60, |s| {
        route(s, HTTP)["failures"]["403"].as_u64() > Some(10)
    });
    assert!(denied["denied"].as_f64() > Some(0.0), "{denied}");
    assert!(
        success(&denied, GRPC) == 100.0,
        "gRPC must stay allowed: {denied}"
    );
    meshctl(&dir, &["demo", "allow"]);
    demo.until("no more 403s after allow", 60, |s| {
        success(s, HTTP) == 100.0
    });

    // 4. Back to no split; kill v2: outlier detection ejects it and every
    // call goes to v1 with no failures.
    meshctl(&dir, &["demo", "reset"]);
    demo.until("both versions serving after reset", 60, |s| {
        share(s, HTTP, "v2") > 20.0
    });
    meshctl(&dir, &["demo", "kill", "v2"]);
    let routed_around = demo.until("v2 ejected, all on v1, no failures", 60, |s| {
        s["ejections"].as_f64() >= Some(1.0)
            && [HTTP, GRPC]
                .iter()
                .all(|r| share(s, r, "v1") == 100.0 && success(s, r) == 100.0)
    });
    assert!(
        routed_around["stopped"].to_string().contains("backend-v2"),
        "{routed_around}"
    );
    meshctl(&dir, &["demo", "revive", "v2"]);

    // A deny policy and an unused join token to find in the next run.
    meshctl(&dir, &["demo", "deny"]);
    let token = meshctl(
        &dir,
        &[
            "token",
            "create",
            "-n",
            "demo",
            "--service-account",
            "later",
            "--ttl",
            "1h",
        ],
    );

    // 5. Ctrl-C stops everything it started.
    let pids = recorded_pids(&dir);
    let status = demo.interrupt();
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !processes_using(&dir).is_empty() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        processes_using(&dir).is_empty(),
        "left running: {:?}",
        processes_using(&dir)
    );
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} left"
        );
    }

    // 6. Again on the same directory: same CA, the deny policy still applies
    // (403s from the start), and the join token from before still works.
    let demo = Demo::start(&dir);
    demo.until("403s again after the restart", 120, |s| {
        route(s, HTTP)["failures"]["403"].as_u64() > Some(5) && success(s, GRPC) == 100.0
    });
    assert!(
        demo.stderr
            .lock()
            .unwrap()
            .contains("found the mesh of an earlier run"),
        "{}",
        demo.stderr.lock().unwrap()
    );
    assert_eq!(meshctl(&dir, &["ca", "bundle"]), bundle, "the CA changed");
    let discovery: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("control-plane.json")).unwrap())
            .unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let mut proxy = Command::new(bin("rampart-proxy"))
        .env("RAMPART_JOIN_TOKEN", token.trim())
        .args(["--control-plane", discovery["grpc_addr"].as_str().unwrap()])
        .arg("--trust-anchor")
        .arg(dir.join("admin/bundle.pem"))
        .arg("--workload-api-socket")
        .arg(tmp.path().join("later.sock"))
        .args(["--node-id", "later-1", "--admin-addr", &admin])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let got_svid = runtime.block_on(rampart_tests::eventually(100, || async {
        let metrics = http_get(&admin, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        counter(
            &metrics,
            "rampart_proxy_certificate_expiry_timestamp_seconds",
            &[],
        ) > 0.0
    }));
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(
        got_svid,
        "the join token of the first run did not work after the restart"
    );
}
