//! `meshctl apply/get/delete` against a real control plane: the mesh model
//! is validated as a whole, stored atomically in sled, and survives restarts.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use rampart_tests::{ControlPlane, bin};

const EXAMPLE: &str = include_str!("../../docs/examples/echo.yaml");

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn apply_stdin(cp: &ControlPlane, yaml: &str) -> Output {
    let mut child = Command::new(bin("meshctl"))
        .arg("--data-dir")
        .arg(&cp.data_dir)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn apply_reports_created_unchanged_configured() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let file = dir.path().join("echo.yaml");
    std::fs::write(&file, EXAMPLE).unwrap();
    let file = file.to_str().unwrap();

    let out = cp.meshctl(&["apply", "-f", file]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.matches(" created").count(), 4, "{stdout}");

    let (stdout, _) = text(&cp.meshctl(&["apply", "-f", file]));
    assert_eq!(stdout.matches(" unchanged").count(), 4, "{stdout}");

    let out = apply_stdin(&cp, &EXAMPLE.replace("timeout: 2s", "timeout: 3s"));
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains("trafficpolicy/echo-split -n default configured"),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" unchanged").count(), 3, "{stdout}");

    let (stdout, _) = text(&cp.meshctl(&[
        "get",
        "trafficpolicy",
        "echo-split",
        "-n",
        "default",
        "-o",
        "json",
    ]));
    let policy: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(policy["spec"]["timeout"], "3s");
    assert_eq!(policy["apiVersion"], "rampart.dev/v1alpha1");
}

#[tokio::test]
async fn an_invalid_input_changes_nothing_and_says_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    assert!(apply_stdin(&cp, EXAMPLE).status.success());

    let broken = EXAMPLE
        .replace("timeout: 2s", "timeout: 9s")
        .replace("protocol: http}", "protocol: htp}")
        .replace("weight: 20", "weight: 30");
    let out = apply_stdin(&cp, &broken);
    assert!(!out.status.success());
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("document 1 (Service default/echo): spec.ports[1].protocol"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "document 4 (TrafficPolicy default/echo-split): spec.split: weights sum to 110"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was applied"), "{stderr}");

    let (stdout, _) = text(&cp.meshctl(&["get", "tp", "echo-split", "-o", "json"]));
    let policy: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        policy["spec"]["timeout"], "2s",
        "the valid documents of a refused input were not applied either"
    );
}

#[tokio::test]
async fn get_filters_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &[]).await;
    assert!(apply_stdin(&cp, EXAMPLE).status.success());
    let other_ns = EXAMPLE
        .split("---")
        .next()
        .unwrap()
        .replace("namespace: default", "namespace: shop");
    assert!(apply_stdin(&cp, &other_ns).status.success());

    let (table, _) = text(&cp.meshctl(&["get", "svc"]));
    assert!(table.starts_with("KIND"), "{table}");
    assert!(
        table.contains("default") && table.contains("shop"),
        "{table}"
    );
    let (table, _) = text(&cp.meshctl(&["get", "services", "-n", "shop"]));
    assert_eq!(table.lines().count(), 2, "{table}");

    let (yaml, _) = text(&cp.meshctl(&["get", "we", "-o", "yaml"]));
    assert_eq!(yaml.matches("kind: WorkloadEntry").count(), 2, "{yaml}");
    // What get prints, apply takes back unchanged.
    let out = apply_stdin(&cp, &yaml);
    assert_eq!(
        text(&out).0.matches(" unchanged").count(),
        2,
        "{}",
        text(&out).1
    );

    let out = cp.meshctl(&["get", "pods"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("unknown kind"), "{}", text(&out).1);
    let out = cp.meshctl(&["get", "svc", "missing", "-n", "default"]);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("not found"));
}

#[tokio::test]
async fn delete_by_name_and_by_file_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), &[]).await;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    let file = manifests.join("echo.yaml");
    std::fs::write(&file, EXAMPLE).unwrap();
    std::fs::write(manifests.join("README.txt"), "not a manifest").unwrap();
    let out = cp.meshctl(&["apply", "-f", manifests.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "a directory applies: {}",
        text(&out).1
    );

    let out = cp.meshctl(&["delete", "workloadentry", "echo-v2"]);
    assert!(out.status.success());
    assert!(
        text(&out)
            .0
            .contains("workloadentry/echo-v2 -n default deleted")
    );
    let out = cp.meshctl(&["delete", "workloadentry", "echo-v2"]);
    assert!(
        !out.status.success(),
        "deleting what is not there is an error"
    );

    assert!(cp.terminate().success());
    let cp = ControlPlane::start(dir.path(), &[]).await;
    let (table, _) = text(&cp.meshctl(&["get", "all"]));
    assert!(
        table.contains("echo-v1") && !table.contains("echo-v2"),
        "{table}"
    );

    let out = cp.meshctl(&["delete", "-f", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    let (table, stderr) = text(&cp.meshctl(&["get", "all"]));
    assert_eq!(table.lines().count(), 1, "only the header is left: {table}");
    assert!(stderr.contains("no resources found"));
}

#[tokio::test]
async fn cross_checks_warnings_and_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(dir.path(), &["--trust-domain", "corp.example"]).await;
    let mesh_config = "apiVersion: rampart.dev/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\nspec: {trustDomain: cluster.local, mtls: {mode: PERMISSIVE}}\n";
    let out = apply_stdin(&cp, mesh_config);
    assert!(!out.status.success());
    assert!(text(&out).1.contains("--trust-domain"), "{}", text(&out).1);
    assert!(
        apply_stdin(&cp, &mesh_config.replace("cluster.local", "corp.example"))
            .status
            .success()
    );

    let lone_policy = EXAMPLE.split("---").last().unwrap();
    let out = apply_stdin(&cp, lone_policy);
    assert!(out.status.success());
    assert!(
        text(&out)
            .1
            .contains("warning: TrafficPolicy default/echo-split refers to Service default/echo"),
        "{}",
        text(&out).1
    );

    let out = cp.meshctl(&["apply", "-f", "-"]);
    assert!(!out.status.success(), "empty input is refused");
    assert!(text(&out).1.contains("no resources"), "{}", text(&out).1);
    let file = dir.path().join("svc.yaml");
    std::fs::write(&file, EXAMPLE.split("---").next().unwrap()).unwrap();
    let out = cp.meshctl(&["apply", "--dry-run", "-f", file.to_str().unwrap()]);
    assert!(
        text(&out).0.contains("created (dry run)"),
        "{}",
        text(&out).0
    );
    let out = cp.meshctl(&["get", "svc", "echo", "-n", "default"]);
    assert!(!out.status.success(), "a dry run stores nothing");
}
