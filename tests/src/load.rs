//! Steady load through a sidecar for fault tests: a few keep-alive
//! clients calling one route in a loop, counting what answered (by the
//! `name=` the echo app puts in its body) and what failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::path::Path;

use crate::apps::{Echo, KeepAlive, get_h1};
use crate::{ControlPlane, Sidecar, eventually};

/// The `echo` service, whose endpoints its sidecars register.
pub const ECHO_SERVICE: &str = r#"apiVersion: rampart.dev/v1alpha1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports: [{name: http, port: 8080, protocol: http}]
  serviceAccounts: [echo]
"#;

/// [`ECHO_SERVICE`] split between its v1 and v2 by weight.
pub fn echo_split(v1: u32, v2: u32) -> String {
    format!("{ECHO_SERVICE}---\n{}", crate::split_policy((v1, v2)))
}

/// Applies [`echo_split`]`(v1, v2)` through the admin API.
pub async fn apply_echo_split(cp: &ControlPlane, v1: u32, v2: u32) {
    cp.admin()
        .await
        .apply_resources(rampart_api::admin::ApplyResourcesRequest {
            sources: vec![rampart_api::admin::SourceText {
                source: "split.yaml".into(),
                text: echo_split(v1, v2),
            }],
            dry_run: false,
        })
        .await
        .unwrap();
}

/// Echo v1 and v2 behind their sidecars, a client sidecar calling
/// `echo.default:8080`, and steady load through it once v1 answers (apply
/// an [`echo_split`] sending traffic to v1 first).
pub struct EchoUnderLoad {
    pub echoes: Vec<(Sidecar, Echo)>,
    pub client: Sidecar,
    pub load: Load,
}

impl EchoUnderLoad {
    /// Starts it all, with SVIDs of `ttl` seconds: 4 keep-alive clients,
    /// one request each every 5 ms.
    pub async fn start(cp: &ControlPlane, dir: &Path, ttl: Option<u64>) -> EchoUnderLoad {
        let echoes = Sidecar::echo_versions(cp, dir, ttl, &["v1", "v2"]).await;
        let (client, out) = Sidecar::caller(cp, dir, "client", ttl, "echo.default:8080").await;
        let up = eventually(150, || async {
            matches!(get_h1(&out, "echo", "/").await, Ok((200, b)) if b.contains("name=v1"))
        })
        .await;
        assert!(up, "no answer from v1\n{}", client.logs.text());
        let load = Load::start(
            &out,
            "echo.default:8080",
            "/load",
            4,
            Duration::from_millis(5),
        );
        EchoUnderLoad {
            echoes,
            client,
            load,
        }
    }
}

/// What a load run has seen so far.
#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// Answers by the echo app's `name=` (v1, v2, ...).
    by_name: Mutex<BTreeMap<String, u64>>,
    pub last_failure: Mutex<String>,
    /// What each failure was (the first 100).
    pub failures: Mutex<Vec<String>>,
}

impl Tally {
    /// Answers from the echo app called `name`.
    pub fn answered_by(&self, name: &str) -> u64 {
        self.by_name.lock().unwrap().get(name).copied().unwrap_or(0)
    }

    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Failures where the connection closed without a whole answer (no
    /// status at all, or a body cut short), as opposed to an error status.
    pub fn cut_off(&self) -> usize {
        self.failures
            .lock()
            .unwrap()
            .iter()
            .filter(|f| {
                f.contains("connection closed before message completed")
                    || f.contains("error reading a body")
            })
            .count()
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// A running load; stop it with [`Load::stop`].
pub struct Load {
    pub tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `workers` clients calling `http://{host}{path}` through `entry`
    /// (a sidecar's outbound address), each pausing `pause` between calls.
    pub fn start(entry: &str, host: &str, path: &str, workers: usize, pause: Duration) -> Load {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|_| {
                let (tally, stop) = (tally.clone(), stop.clone());
                let (entry, host, path) = (entry.to_owned(), host.to_owned(), path.to_owned());
                tokio::spawn(async move {
                    let mut client = KeepAlive::new(&entry);
                    while !stop.load(Ordering::Relaxed) {
                        match client.get(&host, &path).await {
                            Ok((200, body)) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                if let Some(name) = body
                                    .split_whitespace()
                                    .find_map(|w| w.strip_prefix("name="))
                                {
                                    *tally
                                        .by_name
                                        .lock()
                                        .unwrap()
                                        .entry(name.to_owned())
                                        .or_default() += 1;
                                }
                            }
                            other => {
                                tally.failed.fetch_add(1, Ordering::Relaxed);
                                let what = format!("{other:?}");
                                let mut failures = tally.failures.lock().unwrap();
                                if failures.len() < 100 {
                                    failures.push(what.clone());
                                }
                                *tally.last_failure.lock().unwrap() = what;
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            tally,
            stop,
            workers,
        }
    }

    /// Stops every client and waits for them.
    pub async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.tally
    }
}
