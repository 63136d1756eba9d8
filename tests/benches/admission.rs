//! The admission webhook's latency: AdmissionReviews POSTed to a real
//! rampart-control's `/validate` over one HTTPS keep-alive connection, one
//! after another, round trip measured at the client, for
//! - `no-lookups`: a `restricted` policy with container and registry rules
//!   (everything from memory: the baseline),
//! - `signed-pinned`: `images.signedBy` and a vulnerability budget on an
//!   image written by digest, its verdicts cached (no registry call),
//! - `signed-tag`: the same image by tag: the tag is resolved on every
//!   review (one registry round trip), the verdicts come from the cache,
//! - `signed-uncached`: a digest never seen before each time: the
//!   signature and the attestation are fetched and verified.
//!
//! The registry is Debian's docker-registry on loopback (a remote one adds
//! its network round trip to the last two). Scenarios take turns in rounds
//! so a noisy moment falls on all of them.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p rampart-tests --bench admission`
//! (`-- --reviews=N` per scenario and round, default 500; `-- --fresh=N`
//! uncached images, default 40).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rampart_tests::ControlPlane;
use rampart_tests::registry::Registry;
use serde_json::{Value, json};

const ROUNDS: usize = 3;

fn flag(name: &str, default: usize) -> usize {
    std::env::args()
        .find_map(|a| a.strip_prefix(&format!("--{name}=")).map(str::to_owned))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// A CREATE review of a pod running `image` in `namespace`, compliant
/// with the restricted level and the container rules.
fn review(namespace: &str, image: &str, uid: usize) -> Vec<u8> {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("web-{uid}"), "namespace": namespace},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": image, "securityContext": {
                "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]}}}]
        }
    });
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": format!("u-{uid}"), "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": namespace, "operation": "CREATE", "object": pod}
    }))
    .unwrap()
}

/// One HTTPS keep-alive connection to the webhook.
struct Client {
    sender: http1::SendRequest<Full<Bytes>>,
    authority: String,
}

impl Client {
    async fn connect(cp: &ControlPlane) -> Client {
        let addr = cp.webhook_addr.clone().unwrap();
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(cp.bundle().root_store().unwrap())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let (sender, connection) = http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(connection);
        Client {
            sender,
            authority: addr,
        }
    }

    /// POSTs `body` to /validate; whether it was allowed, and how long it took.
    async fn validate(&mut self, body: Vec<u8>) -> (bool, Duration) {
        let request = hyper::Request::post(format!("https://{}/validate", self.authority))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let started = Instant::now();
        let response = self.sender.send_request(request).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let took = started.elapsed();
        let review: Value = serde_json::from_slice(&bytes).unwrap();
        (review["response"]["allowed"] == true, took)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let reviews = flag("reviews", 500);
    let fresh = flag("fresh", 40);
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let registry = Registry::start(work).await;
    let addr = registry.addr.clone();
    let key = work.join("release.key").display().to_string();
    Registry::keygen(&key);
    let sign = |repository: &str, content: &str| {
        registry.push(work, repository, "1.0", content);
        registry.sign(&key, &format!("{addr}/{repository}:1.0"))
    };
    let pinned = sign("shop/web", "/web");
    eprintln!("pushing and signing {fresh} images for the uncached scenario...");
    let fresh_images: Vec<String> = (0..fresh * ROUNDS)
        .map(|i| sign(&format!("shop/fresh-{i}"), &format!("/fresh-{i}")))
        .collect();

    let cp = ControlPlane::start(
        &work.join("cp"),
        &[
            "--webhook-addr",
            "127.0.0.1:0",
            "--registry-plain-http",
            &addr,
        ],
    )
    .await;
    let public = std::fs::read_to_string(format!("{key}.pub")).unwrap();
    let containers = json!({"requireRunAsNonRoot": true, "requireReadOnlyRootFilesystem": true,
                            "forbidPrivileged": true, "seccompProfileTypes": ["RuntimeDefault"]});
    let policies = [
        json!({"apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
               "metadata": {"name": "plain", "namespace": "plain"},
               "spec": {"podSecurity": "restricted", "containers": containers,
                        "images": {"allowedRegistries": [addr]}}}),
        json!({"apiVersion": "rampart.dev/v1alpha1", "kind": "SecurityPolicy",
               "metadata": {"name": "signed", "namespace": "signed"},
               "spec": {"podSecurity": "restricted", "containers": containers,
                        "images": {"allowedRegistries": [addr],
                                   "signedBy": [{"name": "release", "publicKey": public}],
                                   // No attestation exists: the lookup is made
                                   // (and cached) but none is required.
                                   "vulnerabilities": {"maxCritical": 0, "requireReport": false}}}}),
    ];
    let file = work.join("policies.yaml");
    let text: Vec<String> = policies.iter().map(Value::to_string).collect();
    std::fs::write(&file, text.join("\n---\n")).unwrap();
    cp.meshctl_ok(&["apply", "-f", file.to_str().unwrap()]);
    let tagged = format!("{addr}/shop/web:1.0");

    let mut client = Client::connect(&cp).await;
    // Warm up: the connection, the caches, the allocator.
    for i in 0..100 {
        let (allowed, _) = client.validate(review("signed", &tagged, i)).await;
        assert!(allowed, "the signed image must be admitted");
    }
    let scenarios = [
        "no-lookups",
        "signed-pinned",
        "signed-tag",
        "signed-uncached",
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); scenarios.len()];
    let mut uid = 1000;
    for round in 0..ROUNDS {
        for (s, name) in scenarios.iter().enumerate() {
            let count = if *name == "signed-uncached" {
                fresh
            } else {
                reviews
            };
            for i in 0..count {
                uid += 1;
                let body = match *name {
                    "no-lookups" => review("plain", &tagged, uid),
                    "signed-pinned" => review("signed", &pinned, uid),
                    "signed-tag" => review("signed", &tagged, uid),
                    _ => review("signed", &fresh_images[round * fresh + i], uid),
                };
                let (allowed, took) = client.validate(body).await;
                assert!(allowed, "{name}: refused");
                samples[s].push(took);
            }
        }
    }

    println!("/validate round trip, one HTTPS keep-alive connection, sequential; {ROUNDS} rounds");
    println!(
        "{:<16} {:>7} {:>9} {:>9} {:>9} {:>12}",
        "scenario", "reviews", "p50 ms", "p99 ms", "max ms", "p99/baseline"
    );
    let mut baseline_p99 = None;
    for (name, mut times) in scenarios.iter().zip(samples) {
        times.sort();
        let p99 = percentile(&times, 0.99);
        let base = *baseline_p99.get_or_insert(p99);
        println!(
            "{:<16} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>11.1}x",
            name,
            times.len(),
            ms(percentile(&times, 0.50)),
            ms(p99),
            ms(*times.last().unwrap()),
            p99.as_secs_f64() / base.as_secs_f64()
        );
    }
}
