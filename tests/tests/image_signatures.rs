//! Signed images only, against a real registry on loopback: `meshctl image
//! sign/verify` and a real cosign read each other's signatures, and the
//! `/validate` webhook (and `meshctl policy check`) admit a pod whose image
//! a trusted key signed and refuse one unsigned, one signed by another
//! key, one whose tag was re-pushed after signing, and, with the registry
//! down, one they cannot check.

use std::path::Path;
use std::process::{Command, Output};

use rampart_tests::registry::{Registry, cosign};
use rampart_tests::{ControlPlane, bin};
use serde_json::{Value, json};

fn meshctl(args: &[&str]) -> Output {
    Command::new(bin("meshctl"))
        .args(args)
        .output()
        .expect("running meshctl")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `meshctl image keygen` into `dir`; returns (private, public) paths.
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let key = dir.join(name).display().to_string();
    let out = meshctl(&["image", "keygen", "--key", &key]);
    assert!(out.status.success(), "{}", text(&out));
    let public = format!("{key}.pub");
    (key, public)
}

#[tokio::test]
async fn meshctl_and_cosign_read_each_others_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::start(dir.path()).await;
    let addr = registry.addr.clone();
    let app = format!("{addr}/demo/app:1.0");
    let digest = registry.push(dir.path(), "demo/app", "1.0", "/app-v1");
    let (key, public) = keygen(dir.path(), "release.key");
    let (_, other_public) = keygen(dir.path(), "other.key");
    let plain = ["--plain-http", addr.as_str()];

    let signed = meshctl(&[&["image", "sign", "--key", &key, &app][..], &plain].concat());
    assert!(signed.status.success(), "{}", text(&signed));
    assert_eq!(
        String::from_utf8_lossy(&signed.stdout).trim(),
        format!("{app}@{digest}"),
        "sign prints the reference pinned to what it signed"
    );
    let verify = |key: &str, image: &str| {
        meshctl(&[&["image", "verify", "--key", key, image][..], &plain].concat())
    };
    let out = verify(&public, &app);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = verify(&other_public, &app);
    assert_eq!(out.status.code(), Some(1), "another key: {}", text(&out));
    assert!(
        text(&out).contains("1 signature, none valid"),
        "{}",
        text(&out)
    );

    // Real cosign accepts Rampart's signature (no transparency log here).
    let cosign_verify = Command::new(cosign())
        .args(["verify", "--key", &public, "--insecure-ignore-tlog=true"])
        .args(["--allow-http-registry=true", &app])
        .output()
        .unwrap();
    assert!(
        cosign_verify.status.success(),
        "cosign verify: {}",
        text(&cosign_verify)
    );
    assert!(String::from_utf8_lossy(&cosign_verify.stdout).contains(&digest));

    // ... and Rampart accepts cosign's.
    let tool = registry.push(dir.path(), "demo/tool", "2.0", "/tool");
    let generated = Command::new(cosign())
        .current_dir(dir.path())
        .env("COSIGN_PASSWORD", "")
        .args(["generate-key-pair"])
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", text(&generated));
    let cosign_signed = Command::new(cosign())
        .current_dir(dir.path())
        .env("COSIGN_PASSWORD", "")
        .args([
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--yes",
        ])
        .args([
            "--allow-http-registry=true",
            &format!("{addr}/demo/tool@{tool}"),
        ])
        .output()
        .unwrap();
    assert!(cosign_signed.status.success(), "{}", text(&cosign_signed));
    let cosign_public = dir.path().join("cosign.pub").display().to_string();
    let out = verify(&cosign_public, &format!("{addr}/demo/tool:2.0"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = verify(&public, &format!("{addr}/demo/tool:2.0"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Unsigned; then the signed tag re-pushed with other content.
    registry.push(dir.path(), "demo/unsigned", "1.0", "/x");
    let out = verify(&public, &format!("{addr}/demo/unsigned:1.0"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("0 signatures"), "{}", text(&out));
    let repushed = registry.push(dir.path(), "demo/app", "1.0", "/app-evil");
    assert_ne!(repushed, digest);
    let out = verify(&public, &app);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a re-pushed tag: {}",
        text(&out)
    );
    // The signed digest itself still verifies.
    let out = verify(&public, &format!("{addr}/demo/app@{digest}"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // A key that is not a P-256 public key, and a registry that is down.
    let out = verify(&key, &app);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("PUBLIC KEY"), "{}", text(&out));
    registry.stop();
    let out = verify(&public, &app);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unreachable"), "{}", text(&out));
}

/// A SecurityPolicy in `shop` that trusts `public_pem` only.
fn signed_only_policy(public_pem: &str) -> String {
    serde_json::to_string(&json!({
        "apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
        "metadata": {"name": "signed-only", "namespace": "shop"},
        "spec": {"images": {"signedBy": [{"name": "release", "publicKey": public_pem}]}}
    }))
    .unwrap()
}

fn pod(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"containers": [{"name": "app", "image": image}]}})
}

/// POSTs a CREATE review of `pod` to `/validate` with curl (a real HTTPS
/// client trusting the mesh root); returns the response.
fn review(cp: &ControlPlane, pod: &Value) -> Value {
    review_at(cp, "/validate", pod)
}

/// The same to the webhook at `path`.
fn review_at(cp: &ControlPlane, path: &str, pod: &Value) -> Value {
    let body = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "r-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": "shop", "operation": "CREATE", "object": pod}
    });
    let url = format!("https://{}{path}", cp.webhook_addr.as_ref().unwrap());
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "--cacert"])
        .arg(cp.data_dir.join("admin/bundle.pem"))
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string())
        .arg(&url)
        .output()
        .expect("running curl");
    assert!(out.status.success(), "curl {url}: {}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["response"].clone()
}

#[tokio::test]
async fn the_webhook_admits_only_images_a_trusted_key_signed() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut registry = Registry::start(&work).await;
    let addr = registry.addr.clone();
    let plain = ["--plain-http", addr.as_str()];
    let (key, public) = keygen(&work, "release.key");
    let (other_key, _) = keygen(&work, "other.key");
    let sign = |key: &str, image: &str| registry.sign(key, image);
    let signed_digest = registry.push(&work, "shop/web", "1.0", "/web");
    sign(&key, &format!("{addr}/shop/web:1.0"));
    registry.push(&work, "shop/unsigned", "1.0", "/u");
    registry.push(&work, "shop/theirs", "1.0", "/t");
    sign(&other_key, &format!("{addr}/shop/theirs:1.0"));
    registry.push(&work, "shop/moving", "1.0", "/m1");
    sign(&key, &format!("{addr}/shop/moving:1.0"));
    registry.push(&work, "shop/moving", "1.0", "/m2");

    let data = dir.path().join("cp");
    let cp = ControlPlane::start(
        &data,
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--registry-plain-http",
            &addr,
        ],
    )
    .await;
    let policy_file = work.join("policy.yaml");
    std::fs::write(
        &policy_file,
        signed_only_policy(&std::fs::read_to_string(&public).unwrap()),
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", policy_file.to_str().unwrap()]);

    let admitted = |response: &Value| response["allowed"] == true;
    let message = |response: &Value| {
        response["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let signed = review(&cp, &pod(&format!("{addr}/shop/web:1.0")));
    assert!(admitted(&signed), "{signed}");
    for (image, expected) in [
        (
            "shop/unsigned:1.0",
            "no valid signature by release (0 found)",
        ),
        ("shop/theirs:1.0", "no valid signature by release (1 found)"),
        ("shop/moving:1.0", "no valid signature by release (0 found)"),
    ] {
        let response = review(&cp, &pod(&format!("{addr}/{image}")));
        assert!(!admitted(&response), "{image} was admitted");
        let message = message(&response);
        assert!(message.contains(expected), "{image}: {message}");
        assert!(message.contains("spec.containers[0].image"), "{message}");
    }

    // /pin-images rewrites the verified tag to the digest it verified, and
    // leaves alone what it could not verify (a re-pushed tag included).
    let pin = review_at(&cp, "/pin-images", &pod(&format!("{addr}/shop/web:1.0")));
    assert_eq!(pin["allowed"], true, "{pin}");
    assert_eq!(pin["patchType"], "JSONPatch", "{pin}");
    use base64::Engine;
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(pin["patch"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        patch,
        json!([{"op": "replace", "path": "/spec/containers/0/image",
                "value": format!("{addr}/shop/web:1.0@{signed_digest}")}])
    );
    for image in ["shop/unsigned:1.0", "shop/moving:1.0"] {
        let left = review_at(&cp, "/pin-images", &pod(&format!("{addr}/{image}")));
        assert_eq!(left["allowed"], true, "{left}");
        assert!(left["patch"].is_null(), "{image}: {left}");
    }

    // The same verdicts offline, from the same engine.
    let manifests = work.join("pods.yaml");
    let check = |image: &str| {
        std::fs::write(&manifests, serde_json::to_string(&pod(image)).unwrap()).unwrap();
        meshctl(
            &[
                &["policy", "check", "--policy", policy_file.to_str().unwrap()][..],
                &plain,
                &[manifests.to_str().unwrap()],
            ]
            .concat(),
        )
    };
    let out = check(&format!("{addr}/shop/web:1.0"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = check(&format!("{addr}/shop/theirs:1.0"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // Registry down: what cannot be checked is refused, saying why; a
    // digest verified moments ago is still admitted from the cache.
    registry.stop();
    let response = review(&cp, &pod(&format!("{addr}/shop/web:1.0")));
    assert!(!admitted(&response));
    assert!(
        message(&response).contains("cannot be checked"),
        "{response}"
    );
    assert!(message(&response).contains("unreachable"), "{response}");
    let pinned = review(&cp, &pod(&format!("{addr}/shop/web@{signed_digest}")));
    assert!(admitted(&pinned), "{pinned}");
    let out = check(&format!("{addr}/shop/web:1.0"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    registry.restart().await;
    let again = review(&cp, &pod(&format!("{addr}/shop/web:1.0")));
    assert!(admitted(&again), "{again}");
}

/// A cosign vulnerability predicate (what `trivy image --format
/// cosign-vuln` writes) with findings of these severities.
fn vuln_predicate(severities: &[&str]) -> String {
    let findings: Vec<Value> = severities
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"VulnerabilityID": format!("CVE-2026-{i}"), "PkgName": "libx", "Severity": s}))
        .collect();
    json!({
        "invocation": {"parameters": null, "uri": "", "event_id": "", "builder.id": ""},
        "scanner": {"uri": "pkg:github/aquasecurity/trivy@v0.74.0", "version": "0.74.0",
                    "db": {"uri": "", "version": ""},
                    "result": {"SchemaVersion": 2, "ArtifactName": "app",
                               "Results": [{"Target": "app", "Vulnerabilities": findings}]}},
        "metadata": {"scanStartedOn": "2026-12-06T00:00:00Z", "scanFinishedOn": "2026-12-06T00:00:00Z"}
    })
    .to_string()
}

#[tokio::test]
async fn images_over_the_vulnerability_budget_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let registry = Registry::start(&work).await;
    let addr = registry.addr.clone();
    let cosign_in_work = |args: &[&str]| {
        let out = Command::new(cosign())
            .current_dir(&work)
            .env("COSIGN_PASSWORD", "")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "cosign {args:?}: {}", text(&out));
    };
    cosign_in_work(&["generate-key-pair"]);
    // Signed, and attested by cosign with a Trivy report (or not at all).
    let mut digests = std::collections::BTreeMap::new();
    for (repository, findings) in [
        ("shop/clean", Some(&["HIGH", "HIGH", "MEDIUM"][..])),
        ("shop/critical", Some(&["CRITICAL", "LOW"][..])),
        ("shop/unscanned", None),
    ] {
        let digest = registry.push(&work, repository, "1.0", repository);
        let pinned = format!("{addr}/{repository}@{digest}");
        digests.insert(repository, pinned.clone());
        cosign_in_work(&[
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--yes",
            "--allow-http-registry=true",
            &pinned,
        ]);
        if let Some(findings) = findings {
            let predicate = work.join(format!("{}.json", repository.replace('/', "-")));
            std::fs::write(&predicate, vuln_predicate(findings)).unwrap();
            cosign_in_work(&[
                "attest",
                "--key",
                "cosign.key",
                "--type",
                "vuln",
                "--predicate",
                predicate.to_str().unwrap(),
                "--tlog-upload=false",
                "--yes",
                "--allow-http-registry=true",
                &pinned,
            ]);
        }
    }
    let cp = ControlPlane::start(
        &dir.path().join("cp"),
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--registry-plain-http",
            &addr,
        ],
    )
    .await;
    let public = std::fs::read_to_string(work.join("cosign.pub")).unwrap();
    let policy_file = work.join("policy.yaml");
    std::fs::write(
        &policy_file,
        serde_json::to_string(&json!({
            "apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "scanned", "namespace": "shop"},
            "spec": {"images": {
                "signedBy": [{"name": "ci", "publicKey": public}],
                "vulnerabilities": {"maxCritical": 0, "maxHigh": 3}
            }}
        }))
        .unwrap(),
    )
    .unwrap();
    cp.meshctl_ok(&["apply", "-f", policy_file.to_str().unwrap()]);

    let clean = review(&cp, &pod(&format!("{addr}/shop/clean:1.0")));
    assert_eq!(clean["allowed"], true, "{clean}");
    for (image, expected) in [
        (
            "shop/critical:1.0",
            "over the vulnerability budget: 1 critical (at most 0)",
        ),
        (
            "shop/unscanned:1.0",
            "has no vulnerability report (none attested by a trusted key",
        ),
    ] {
        let response = review(&cp, &pod(&format!("{addr}/{image}")));
        assert_eq!(response["allowed"], false, "{image} was admitted");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{image}: {message}");
    }

    // meshctl policy check reads the same attestations.
    let manifests = work.join("pod.yaml");
    std::fs::write(
        &manifests,
        serde_json::to_string(&pod(&format!("{addr}/shop/critical:1.0"))).unwrap(),
    )
    .unwrap();
    let out = meshctl(&[
        "policy",
        "check",
        "--policy",
        policy_file.to_str().unwrap(),
        "--plain-http",
        &addr,
        manifests.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("1 critical (at most 0)"),
        "{}",
        text(&out)
    );

    // Reports supplied to the control plane (a Trivy JSON report made
    // into a VulnerabilityReport): the unscanned image now has one within
    // the budget, and the clean one a second, worse report, which wins.
    let trivy = |name: &str, severities: &[&str]| {
        let predicate: Value = serde_json::from_str(&vuln_predicate(severities)).unwrap();
        let path = work.join(name);
        std::fs::write(&path, predicate["scanner"]["result"].to_string()).unwrap();
        path.display().to_string()
    };
    let unscanned_report = trivy("unscanned-trivy.json", &["HIGH", "HIGH"]);
    let out = cp.meshctl_ok(&[
        "image",
        "report",
        "--trivy",
        &unscanned_report,
        &digests["shop/unscanned"],
    ]);
    assert!(text(&out).contains("created"), "{}", text(&out));
    cp.meshctl_ok(&[
        "image",
        "report",
        "--trivy",
        &trivy("clean-rescan.json", &["CRITICAL"]),
        &digests["shop/clean"],
    ]);
    let unscanned = review(&cp, &pod(&format!("{addr}/shop/unscanned:1.0")));
    assert_eq!(unscanned["allowed"], true, "{unscanned}");
    let rescanned = review(&cp, &pod(&format!("{addr}/shop/clean:1.0")));
    assert_eq!(rescanned["allowed"], false, "{rescanned}");
    assert!(
        rescanned["status"]["message"]
            .as_str()
            .unwrap()
            .contains("1 critical (at most 0)"),
        "{rescanned}"
    );
    // -o yaml prints the resource instead (for kubectl or a Git repository).
    let out = meshctl(&[
        "image",
        "report",
        "--trivy",
        &unscanned_report,
        "-o",
        "yaml",
        &digests["shop/unscanned"],
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(yaml.contains("kind: VulnerabilityReport"), "{yaml}");

    // Offline, a budget without keys reads the reports given beside the
    // policy: the unscanned image's is within it, the critical one has none.
    let report_file = work.join("report.yaml");
    std::fs::write(&report_file, &yaml).unwrap();
    let budget_only = work.join("budget.yaml");
    std::fs::write(
        &budget_only,
        serde_json::to_string(&json!({
            "apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
            "metadata": {"name": "budget", "namespace": "shop"},
            "spec": {"images": {"vulnerabilities": {"maxCritical": 0}}}
        }))
        .unwrap(),
    )
    .unwrap();
    let check = |image: &str| {
        std::fs::write(&manifests, serde_json::to_string(&pod(image)).unwrap()).unwrap();
        meshctl(&[
            "policy",
            "check",
            "--policy",
            budget_only.to_str().unwrap(),
            "--policy",
            report_file.to_str().unwrap(),
            "--plain-http",
            &addr,
            manifests.to_str().unwrap(),
        ])
    };
    let out = check(&format!("{addr}/shop/unscanned:1.0"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = check(&format!("{addr}/shop/critical:1.0"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no VulnerabilityReport of its digest"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_registry_that_wants_a_login_gets_the_configured_one() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let password = "s3cret-for-the-test";
    let registry = Registry::start_with_login(work, "ci", password).await;
    let addr = registry.addr.clone();
    let auth = registry.auth_file.clone().unwrap();
    registry.push(work, "shop/web", "1.0", "/web");
    let (key, public) = keygen(work, "release.key");
    let image = format!("{addr}/shop/web:1.0");
    // Signing and verifying with the login; without it, a clear refusal.
    let pinned = registry.sign(&key, &image);
    assert!(pinned.contains("@sha256:"), "{pinned}");
    let verify = |with_login: bool| {
        let mut args = vec!["image", "verify", "--key", &public, "--plain-http", &addr];
        if with_login {
            args.extend(["--registry-auth", auth.to_str().unwrap()]);
        }
        args.push(&image);
        meshctl(&args)
    };
    let out = verify(true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = verify(false);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("asks for credentials") && text(&out).contains("--registry-auth"),
        "{}",
        text(&out)
    );

    // The webhook with the login admits the signed image; one without
    // refuses it, saying why.
    let policy_file = work.join("policy.yaml");
    std::fs::write(
        &policy_file,
        signed_only_policy(&std::fs::read_to_string(&public).unwrap()),
    )
    .unwrap();
    for (name, with_login) in [("with", true), ("without", false)] {
        let mut args = vec![
            "--webhook-addr",
            "127.0.0.1:0",
            "--registry-plain-http",
            &addr,
        ];
        if with_login {
            args.extend(["--registry-auth", auth.to_str().unwrap()]);
        }
        let cp = ControlPlane::start(&work.join(name), &args).await;
        cp.meshctl_ok(&["apply", "-f", policy_file.to_str().unwrap()]);
        let response = review(&cp, &pod(&image));
        assert_eq!(response["allowed"], with_login, "{name}: {response}");
        if !with_login {
            let message = response["status"]["message"].as_str().unwrap();
            assert!(message.contains("asks for credentials"), "{message}");
        }
        assert!(
            !cp.logs.text().contains(password),
            "the registry password is in the control plane's log"
        );
    }
    // A credentials file that is not one is refused at start, naming the problem.
    let bad = work.join("bad.json");
    std::fs::write(&bad, r#"{"auths": {"x": {"auth": "%%"}}}"#).unwrap();
    let out = std::process::Command::new(rampart_tests::bin("rampart-control"))
        .args(["--data-dir", work.join("bad").to_str().unwrap()])
        .args(["--registry-auth", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("\"auth\" is not base64"),
        "{}",
        text(&out)
    );
}
