//! meshctl's operator commands against a running demo mesh: `check`,
//! `identity`, `completions`, and what they say when something is wrong.

use std::process::Command;

use rampart_tests::bin;
use rampart_tests::demo::{Demo, HTTP, route};
use serde_json::Value;

fn meshctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("meshctl")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_identity_and_completions() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh");
    let d = dir.to_str().unwrap();
    let demo = Demo::start(&dir);
    demo.until("traffic", 120, |s| {
        route(s, HTTP)["requests"].as_u64() > Some(10)
    });

    // check: everything fine, for people and for scripts.
    let (ok, table, err) = meshctl(&["--data-dir", d, "check"]);
    assert!(ok, "{table}{err}");
    assert!(
        table.contains("4 connected")
            && table.contains("Rampart Root CA")
            && table.contains("4 current"),
        "{table}"
    );
    let (ok, json, _) = meshctl(&["--data-dir", d, "check", "-o", "json"]);
    assert!(ok);
    let findings: Vec<Value> = serde_json::from_str(&json).unwrap();
    let checks: Vec<&str> = findings
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    for expected in [
        "control plane",
        "trust root",
        "CA signing chain",
        "clock skew",
        "proxies",
        "proxy certificates",
        "configuration accepted",
        "service addresses",
    ] {
        assert!(checks.contains(&expected), "{expected} missing: {json}");
    }
    assert!(findings.iter().all(|f| f["status"] == "ok"), "{json}");

    // status and version: the mesh at a glance.
    let (ok, json, err) = meshctl(&["--data-dir", d, "status", "-o", "json"]);
    assert!(ok, "{err}");
    let status: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["proxies"], 4, "{json}");
    assert_eq!(status["trustDomain"], "cluster.local", "{json}");
    assert_eq!(status["resources"]["Service"], 2, "{json}");
    assert_eq!(
        status["controlPlaneVersion"],
        env!("CARGO_PKG_VERSION"),
        "{json}"
    );
    let (ok, version, _) = meshctl(&["--data-dir", d, "version"]);
    assert!(
        ok && version.contains("rampart-control") && version.contains("4 x rampart-proxy"),
        "{version}"
    );

    // policy report: standalone there are no pods to judge, and it says so.
    let (ok, _, err) = meshctl(&["--data-dir", d, "policy", "report"]);
    assert!(!ok && err.contains("runs standalone"), "{err}");

    // identity: the SVID the frontend's proxy holds, signed by the mesh's root.
    let (ok, json, err) = meshctl(&["--data-dir", d, "identity", "frontend", "-o", "json"]);
    assert!(ok, "{err}");
    let id: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        id["spiffeId"], "spiffe://cluster.local/ns/demo/sa/frontend",
        "{json}"
    );
    assert!(id["secondsLeft"].as_i64() > Some(0), "{json}");
    assert!(
        id["chain"][0]["issuer"]
            .as_str()
            .unwrap()
            .contains("Rampart Root CA"),
        "{json}"
    );
    assert_eq!(id["chain"][0]["isCa"], false);
    let (ok, _, err) = meshctl(&["--data-dir", d, "identity", "nosuch"]);
    assert!(
        !ok && err.contains("connected: ") && err.contains("frontend"),
        "{err}"
    );

    // authz check: the proxies' own evaluator on the listeners they are served.
    let frontend = "spiffe://cluster.local/ns/demo/sa/frontend";
    let authz = |args: &[&str]| -> Vec<Value> {
        let mut all = vec!["--data-dir", d, "authz", "check", "-o", "json"];
        all.extend_from_slice(args);
        let (ok, json, err) = meshctl(&all);
        assert!(ok, "authz check {args:?}: {err}");
        serde_json::from_str(&json).unwrap()
    };
    let to_api = [
        "--from",
        frontend,
        "--to",
        "backend.demo",
        "--path",
        "/api/work",
    ];
    let verdicts = authz(&to_api);
    assert_eq!(
        verdicts.len(),
        2,
        "one verdict per backend proxy: {verdicts:?}"
    );
    let mut bad_ip = vec!["--data-dir", d, "authz", "check"];
    bad_ip.extend_from_slice(&to_api);
    bad_ip.extend_from_slice(&["--from-ip", "10.0.0.300"]);
    let (ok, _, err) = meshctl(&bad_ip);
    assert!(!ok && err.contains("--from-ip"), "{err}");
    assert!(
        verdicts.iter().all(|v| v["allowed"] == true),
        "{verdicts:?}"
    );
    let (ok, _, _) = meshctl(&["--data-dir", d, "demo", "deny"]);
    assert!(ok);
    let denied = |v: &Vec<Value>, why: &str| {
        v.iter()
            .all(|x| x["allowed"] == false && x["why"].as_str().unwrap().contains(why))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !denied(
        &authz(&to_api),
        "denied by DENY policy demo/deny-frontend-api",
    ) {
        assert!(std::time::Instant::now() < deadline, "{:?}", authz(&to_api));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The same caller on the gRPC port is still allowed: the policy names /api/* only.
    let grpc = authz(&[
        "--from",
        frontend,
        "--to",
        "backend.demo",
        "--port",
        "grpc",
        "--method",
        "POST",
        "--path",
        "/rampart.demo.v1.Backend/Work",
    ]);
    assert!(grpc.iter().all(|v| v["allowed"] == true), "{grpc:?}");
    // An ALLOW policy for someone else: the frontend matches none of its rules.
    let allow = tmp.path().join("allow.yaml");
    std::fs::write(
        &allow,
        "apiVersion: rampart.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: only-client, namespace: demo}\nspec:\n  selector: {app: backend}\n  action: ALLOW\n  rules: [{from: [{principals: [\"spiffe://cluster.local/ns/demo/sa/client\"]}]}]\n",
    )
    .unwrap();
    let (ok, _, err) = meshctl(&["--data-dir", d, "apply", "-f", allow.to_str().unwrap()]);
    assert!(ok, "{err}");
    let to_grpc = ["--from", frontend, "--to", "backend.demo", "--port", "9090"];
    while !denied(
        &authz(&to_grpc),
        "no rule of the ALLOW policies demo/only-client matches",
    ) {
        assert!(
            std::time::Instant::now() < deadline + std::time::Duration::from_secs(20),
            "{:?}",
            authz(&to_grpc)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let client = authz(&[
        "--from",
        "spiffe://cluster.local/ns/demo/sa/client",
        "--to",
        "backend.demo",
        "--port",
        "grpc",
    ]);
    assert!(
        client.iter().all(|v| v["allowed"] == true
            && v["why"]
                .as_str()
                .unwrap()
                .contains("ALLOW policies demo/only-client")),
        "{client:?}"
    );
    let (ok, _, err) = meshctl(&[
        "--data-dir",
        d,
        "authz",
        "check",
        "--from",
        "frontend",
        "--to",
        "backend.demo",
    ]);
    assert!(!ok && err.contains("not a SPIFFE ID"), "{err}");

    // A demo killed with SIGKILL cannot stop its processes; the next run on
    // the same directory does.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("demo.json")).unwrap()).unwrap();
    let left: Vec<u64> = state["children"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(
        left.len() == 8,
        "control plane, 4 sidecars, 3 apps: {state}"
    );
    let mut demo = demo;
    demo.child.kill().unwrap();
    demo.child.wait().unwrap();
    assert!(
        left.iter()
            .all(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    );
    let again = Demo::start(&dir);
    again.until("traffic again", 120, |s| {
        route(s, HTTP)["requests"].as_u64() > Some(10)
    });
    assert!(
        again
            .stderr
            .lock()
            .unwrap()
            .contains("processes an earlier demo"),
        "{}",
        again.stderr.lock().unwrap()
    );
    for p in &left {
        let alive =
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "pid {p} of the killed demo is still running");
    }
    drop(again);

    // A control plane that is not there: the check fails and says what to do.
    let missing = tmp.path().join("nothing-here");
    let (ok, table, _) = meshctl(&["--data-dir", missing.to_str().unwrap(), "check"]);
    assert!(!ok);
    assert!(
        table.contains("FAILED") && table.contains("start rampart-control"),
        "{table}"
    );

    // Completions for the shells clap knows.
    for shell in ["bash", "zsh", "fish"] {
        let (ok, script, _) = meshctl(&["completions", shell]);
        assert!(
            ok && script.contains("meshctl") && script.contains("identity"),
            "{shell}"
        );
    }
}
