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
        table.contains("4 connected") && table.contains("Rampart Root CA"),
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
        "configuration accepted",
    ] {
        assert!(checks.contains(&expected), "{expected} missing: {json}");
    }
    assert!(findings.iter().all(|f| f["status"] == "ok"), "{json}");

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
