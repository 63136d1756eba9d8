//! `meshctl policy check`, the offline face of the admission policy: every
//! one of Kubernetes' own Pod Security Admission fixtures (v1.37, baseline
//! and restricted, pass and fail) gets its expected verdict through the
//! real binary, and so do the cases the fixtures leave out
//! (ephemeralContainers, the appArmorProfile field), SecurityPolicy files,
//! namespace labels and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rampart_tests::bin;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/pss")
}

fn check(dir: &Path, args: &[&str], manifest: &str) -> Output {
    let file = dir.join("manifest.yaml");
    std::fs::write(&file, manifest).unwrap();
    Command::new(bin("meshctl"))
        .args(["policy", "check"])
        .args(args)
        .arg(&file)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_pod_security_admission_fixture_gets_its_verdict() {
    let template = format!(
        "{} policy check --pod-security {{level}} {{file}}",
        bin("meshctl").display()
    );
    let out = Command::new("bash")
        .arg(fixtures().join("run.sh"))
        .arg(template)
        .output()
        .expect("running the fixtures' run.sh");
    let text = stdout(&out);
    assert!(
        text.contains("PSS: 148 passed, 0 failed"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
}

/// A pod that meets `restricted`, with `extra` merged into its spec.
fn restricted_pod(extra: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop}}
spec:
  securityContext: {{runAsNonRoot: true, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: app
    image: ghcr.io/acme/web:1
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {{drop: [ALL]}}
{extra}"#
    )
}

#[test]
fn ephemeral_containers_and_the_apparmor_field_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let ok = check(
        dir.path(),
        &["--pod-security", "restricted"],
        &restricted_pod(""),
    );
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));

    // A debug container added with `kubectl debug` is still a container.
    let ephemeral = restricted_pod(
        "  ephemeralContainers:\n  - name: debug\n    image: busybox\n    securityContext: {privileged: true}\n",
    );
    let out = check(dir.path(), &["--pod-security", "baseline"], &ephemeral);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("spec.ephemeralContainers[0].securityContext.privileged"),
        "{}",
        stdout(&out)
    );

    // The appArmorProfile field, pod-level and per container.
    let pod_level = restricted_pod("").replace(
        "seccompProfile: {type: RuntimeDefault}}",
        "seccompProfile: {type: RuntimeDefault}, appArmorProfile: {type: Unconfined}}",
    );
    let out = check(dir.path(), &["--pod-security", "baseline"], &pod_level);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("spec.securityContext.appArmorProfile.type"));
    let container_level = restricted_pod("").replace(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: true\n      appArmorProfile: {type: Unconfined}",
    );
    let out = check(
        dir.path(),
        &["--pod-security", "baseline"],
        &container_level,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains("spec.containers[0].securityContext.appArmorProfile.type"));
    let localhost = restricted_pod("").replace(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: true\n      appArmorProfile: {type: Localhost, localhostProfile: k8s-web}",
    );
    let out = check(dir.path(), &["--pod-security", "restricted"], &localhost);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

const STRICT_POLICY: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: SecurityPolicy
metadata: {name: default, namespace: rampart-system}
spec:
  podSecurity: baseline
  containers:
    requireRunAsNonRoot: true
    requireReadOnlyRootFilesystem: true
    seccompProfileTypes: [RuntimeDefault]
    appArmorProfiles: [RuntimeDefault, Localhost/*]
  images:
    allowedRegistries: [ghcr.io/acme]
  exemptions:
    namespaces: [kube-system]
"#;

#[test]
fn a_security_policy_file_is_enforced_with_reasons_and_exemptions_shown() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, STRICT_POLICY).unwrap();
    let policy = policy.to_str().unwrap();
    let compliant = restricted_pod("").replace(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFilesystem: true\n      appArmorProfile: {type: RuntimeDefault}",
    );
    let out = check(dir.path(), &["--policy", policy], &compliant);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // Root, writable, from Docker Hub, no AppArmor profile: four reasons.
    let bad = restricted_pod("")
        .replace("runAsNonRoot: true", "runAsUser: 0")
        .replace(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
        )
        .replace("ghcr.io/acme/web:1", "nginx:1.27");
    let out = check(dir.path(), &["--policy", policy], &bad);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    for expected in [
        "containers:requireRunAsNonRoot",
        "spec.containers[0].securityContext.runAsUser",
        "containers:requireReadOnlyRootFilesystem",
        "images:allowedRegistries",
        "docker.io/library/nginx",
        "containers:appArmorProfiles",
        "SecurityPolicy rampart-system/default",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }

    // The same pod in an exempt namespace is admitted, and says why.
    let exempt = bad.replace("namespace: shop", "namespace: kube-system");
    let out = check(dir.path(), &["--policy", policy], &exempt);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("namespace kube-system is exempt"));
}

#[test]
fn namespace_labels_and_workload_templates_are_honored() {
    let dir = tempfile::tempdir().unwrap();
    // A Deployment's pod template in a namespace labeled for restricted.
    let manifest = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {pod-security.kubernetes.io/enforce: restricted, pod-security.kubernetes.io/warn: restricted}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: web:1}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
"#;
    let out = check(dir.path(), &["--pod-security", "privileged"], manifest);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("Deployment web: denied"), "{text}");
    assert!(text.contains("namespace label pod-security.kubernetes.io/enforce=restricted"));
    assert!(text.contains("warning:"), "{text}");
}

#[test]
fn unreadable_or_invalid_input_exits_2_and_judges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let level = ["--pod-security", "restricted"];
    for (args, manifest, expected) in [
        (&level[..], "kind: Pod\nspec: [", "not valid YAML"),
        (
            &level[..],
            "kind: ConfigMap\nmetadata: {name: x}\n",
            "no Pods or workloads",
        ),
        (
            &level[..],
            "kind: Deployment\nmetadata: {name: x}\nspec: {}\n",
            "no pod spec",
        ),
        (
            &[][..],
            "kind: Pod\nspec: {containers: []}\n",
            "nothing to check against",
        ),
    ] {
        let out = check(dir.path(), args, manifest);
        assert_eq!(out.status.code(), Some(2), "{manifest}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(stdout(&out).is_empty(), "judged despite bad input");
    }
    // A policy file with a typo is refused, naming the field.
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        STRICT_POLICY.replace("requireRunAsNonRoot", "requireRunAsNonRot"),
    )
    .unwrap();
    let out = check(
        dir.path(),
        &["--policy", policy.to_str().unwrap()],
        &restricted_pod(""),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("requireRunAsNonRot"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
