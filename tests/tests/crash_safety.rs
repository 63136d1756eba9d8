//! The embedded store under crashes: kill -9 the control plane while
//! workloads are redeeming join tokens, or while operators apply, then
//! restart it: no token may work twice, nothing acknowledged may be lost.
//! And a full disk: the write is refused saying why, nothing is corrupted.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_tests::{ControlPlane, sign};
use tonic::Code;

const TOKENS: usize = 300;
const WORKERS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_issuance_never_lets_a_token_work_twice_or_lose_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), &[]).await;

    // Every token here was acknowledged to its creator.
    let mut tokens = Vec::new();
    let mut admin = cp.admin().await;
    for i in 0..TOKENS {
        let token = admin
            .create_join_token(rampart_api::admin::CreateJoinTokenRequest {
                namespace: "crash".into(),
                service_account: format!("sa-{i}"),
                ttl_seconds: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        tokens.push(token);
    }

    // Workers redeem tokens in order until the control plane dies.
    let next = Arc::new(Mutex::new(0usize));
    let issued = Arc::new(Mutex::new(HashSet::new()));
    let attempted = Arc::new(Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (next, issued, attempted, tokens) = (
            next.clone(),
            issued.clone(),
            attempted.clone(),
            tokens.clone(),
        );
        let channel = cp.channel(None).await;
        workers.push(tokio::spawn(async move {
            loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    if *n >= tokens.len() {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                attempted.lock().unwrap().insert(i);
                match sign(channel.clone(), Some(&tokens[i]), None, 0).await {
                    Ok(_) => {
                        issued.lock().unwrap().insert(i);
                    }
                    Err(_) => return, // the control plane is gone
                }
            }
        }));
    }
    // Let some certificates be issued, then pull the plug mid-flight.
    while issued.lock().unwrap().len() < TOKENS / 4 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cp.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let issued_before = issued.lock().unwrap().clone();
    let attempted_before = attempted.lock().unwrap().clone();
    assert!(issued_before.len() >= TOKENS / 4);
    assert!(
        attempted_before.len() < TOKENS,
        "the kill came before every token was tried"
    );

    let cp = ControlPlane::start(dir.path(), &[]).await;
    let channel = cp.channel(None).await;
    let mut reissued_in_flight = 0;
    for (i, token) in tokens.iter().enumerate() {
        let result = sign(channel.clone(), Some(token), None, 0).await;
        if issued_before.contains(&i) {
            let Err(err) = result else {
                panic!("token {i} got a certificate before the kill and worked again after it");
            };
            assert_eq!(err.code(), Code::Unauthenticated);
            assert!(
                err.message().contains("already used"),
                "token {i}: {}",
                err.message()
            );
        } else if attempted_before.contains(&i) {
            // In flight at the kill: it may have been spent (then refused) or
            // not (then it works now), but never both.
            if result.is_ok() {
                reissued_in_flight += 1;
            }
        } else {
            result.unwrap_or_else(|e| panic!("acknowledged token {i} was lost: {e}"));
        }
        // Whatever happened, it is spent now.
        let err = sign(channel.clone(), Some(token), None, 0)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "token {i} worked twice");
    }
    eprintln!(
        "issued before kill: {}, in flight: {}, of which usable after restart: {reissued_in_flight}",
        issued_before.len(),
        attempted_before.len() - issued_before.len()
    );
}

/// A mesh Service named `name`, with `padding` bytes of label values.
fn service(name: &str, padding: usize) -> String {
    let mut labels = String::new();
    for i in 0..padding / 1000 {
        labels.push_str(&format!("pad{i}: \"{}\"\n    ", "x".repeat(1000)));
    }
    format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: crash\n  labels:\n    {labels}app: {name}\nspec:\n  ports: [{{name: http, port: 8080, protocol: http}}]\n"
    )
}

async fn apply(
    admin: &mut rampart_api::admin::admin_service_client::AdminServiceClient<
        tonic::transport::Channel,
    >,
    yaml: String,
) -> Result<(), tonic::Status> {
    admin
        .apply_resources(rampart_api::admin::ApplyResourcesRequest {
            sources: vec![rampart_api::admin::SourceText {
                source: "crash.yaml".into(),
                text: yaml,
            }],
            dry_run: false,
        })
        .await
        .map(|_| ())
}

/// The names of the Services stored in namespace `crash`.
async fn stored(cp: &ControlPlane) -> HashSet<String> {
    let response = cp
        .admin()
        .await
        .get_resources(rampart_api::admin::GetResourcesRequest {
            kind: "service".into(),
            namespace: "crash".into(),
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    response
        .resources_json
        .iter()
        .map(|json| {
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            value["metadata"]["name"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_apply_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut cp = ControlPlane::start(dir.path(), &[]).await;
    let acknowledged = Arc::new(Mutex::new(HashSet::new()));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let acknowledged = acknowledged.clone();
        let mut admin = cp.admin().await;
        workers.push(tokio::spawn(async move {
            for i in 0.. {
                let name = format!("svc-{worker}-{i}");
                if apply(&mut admin, service(&name, 0)).await.is_err() {
                    return; // the control plane is gone
                }
                acknowledged.lock().unwrap().insert(name);
            }
        }));
    }
    while acknowledged.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cp.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let cp = ControlPlane::start(dir.path(), &[]).await;
    let after = stored(&cp).await;
    let lost: Vec<&String> = acknowledged.difference(&after).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged applies lost after kill -9: {lost:?}",
        lost.len()
    );
    eprintln!(
        "{} applies acknowledged before kill -9, {} stored after the restart",
        acknowledged.len(),
        after.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_the_write_clearly_and_corrupts_nothing() {
    // A 256 MiB tmpfs of its own (the tests run as root in CI).
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("running mount");
    assert!(
        mounted.success(),
        "mounting a tmpfs needs root (CI runs the tests as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .args(["-l"])
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let data = disk.join("cp");
    let mut cp = ControlPlane::start(&data, &[]).await;
    let mut admin = cp.admin().await;
    let mut kept = HashSet::new();
    for i in 0..10 {
        let name = format!("before-{i}");
        apply(&mut admin, service(&name, 20_000)).await.unwrap();
        kept.insert(name);
    }
    // Fill the rest of the disk.
    let filler = disk.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    // Writes now fail, saying why; the control plane keeps serving.
    let mut refusal = None;
    for i in 0..200 {
        if let Err(e) = apply(&mut admin, service(&format!("full-{i}"), 50_000)).await {
            refusal = Some(e);
            break;
        }
    }
    let refusal = refusal.expect("a write on a full disk was acknowledged every time");
    assert!(
        refusal.message().contains("No space left on device")
            && refusal.message().contains("restarted"),
        "{}: {}",
        refusal.code(),
        refusal.message()
    );
    assert_eq!(refusal.code(), tonic::Code::Unavailable);
    assert!(kept.is_subset(&stored(&cp).await));
    assert!(cp.http_get("/healthz").await.is_ok());

    // Space again. The store does not write again after an IO error (sled
    // keeps failing), so the control plane is restarted: it finds every
    // acknowledged write, and takes new ones.
    std::fs::remove_file(&filler).unwrap();
    let _ = cp.terminate();
    let cp = ControlPlane::start(&data, &[]).await;
    let after = stored(&cp).await;
    assert!(
        kept.is_subset(&after),
        "lost: {:?}",
        kept.difference(&after)
    );
    apply(&mut cp.admin().await, service("after", 0))
        .await
        .unwrap();
    assert!(stored(&cp).await.contains("after"));
}
