//! The demo's live view: what the traffic does (from the client and the
//! frontend) and what the mesh says about it (from the Prometheus metrics
//! of the control plane and of every sidecar).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::load::{RouteStats, WINDOW};
use super::{State, View};
use crate::http::get;
use crate::metrics::{sum, sum_by};

/// One mTLS hop, as the server's sidecar saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub hop: String,
    /// The caller's SPIFFE ID the server's sidecar verified.
    pub verified_caller: String,
    /// Requests it took from that caller since it started.
    pub requests: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub uptime_seconds: u64,
    pub routes: Vec<RouteStats>,
    /// SVIDs the mesh CA issued since the control plane started.
    pub identities_issued: f64,
    /// Proxies with an xDS stream to the control plane.
    pub connected_proxies: f64,
    pub hops: Vec<Hop>,
    /// Backend endpoints outlier detection ejected (frontend sidecar).
    pub ejections: f64,
    /// Requests the backends' sidecars denied by policy.
    pub denied: f64,
    /// Plaintext or untrusted connections the sidecars refused.
    pub refused_handshakes: f64,
    /// The same by sidecar and reason (`frontend: not_tls`), where any.
    pub refused_by_reason: BTreeMap<String, f64>,
    /// Processes of the demo that are not running.
    pub stopped: Vec<String>,
    /// Where the Prometheus metrics are.
    pub metrics: BTreeMap<String, String>,
}

const TRUST_DOMAIN: &str = "spiffe://cluster.local/ns/demo/sa";

/// Handshake refusals per sidecar and reason (the proxy's `reason` label).
fn refusals(sidecars: &BTreeMap<&str, String>) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, metrics) in sidecars {
        let by_reason = sum_by(
            metrics,
            "rampart_proxy_tls_handshake_failures_total",
            "reason",
        );
        for (reason, n) in by_reason.into_iter().filter(|(_, n)| *n > 0.0) {
            out.insert(format!("{name}: {reason}"), n);
        }
    }
    out
}

/// (server sidecar, caller's service account) of each hop.
const HOPS: [(&str, &str); 3] = [
    ("frontend", "client"),
    ("backend-v1", "frontend"),
    ("backend-v2", "frontend"),
];

async fn scrape(addr: &str) -> String {
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        return String::new();
    };
    match tokio::time::timeout(Duration::from_secs(1), get(addr, "/metrics")).await {
        Ok(Ok((200, body))) => String::from_utf8_lossy(&body).into_owned(),
        _ => String::new(),
    }
}

impl Snapshot {
    pub async fn collect(
        uptime: Duration,
        state: &State,
        routes: Vec<RouteStats>,
        stopped: Vec<String>,
    ) -> Snapshot {
        let control = scrape(&state.control_plane_metrics).await;
        let mut sidecars = BTreeMap::new();
        for (name, admin) in &state.sidecars {
            sidecars.insert(name.as_str(), scrape(admin).await);
        }
        let all = |name: &str, labels: &[&str]| -> f64 {
            sidecars.values().map(|m| sum(m, name, labels)).sum()
        };
        let hops = HOPS
            .iter()
            .map(|(server, caller)| {
                let id = format!("{TRUST_DOMAIN}/{caller}");
                let requests = sidecars.get(server).map_or(0.0, |m| {
                    sum(
                        m,
                        "rampart_proxy_requests_total",
                        &[
                            "direction=\"inbound\"",
                            &format!("source_identity=\"{id}\""),
                        ],
                    )
                });
                Hop {
                    hop: format!("{caller} -> {server}"),
                    verified_caller: id,
                    requests,
                }
            })
            .collect();
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "rampart-control".to_owned(),
            format!("http://{}/metrics", state.control_plane_metrics),
        );
        for (name, admin) in &state.sidecars {
            metrics.insert(format!("{name} sidecar"), format!("http://{admin}/metrics"));
        }
        Snapshot {
            uptime_seconds: uptime.as_secs(),
            routes,
            identities_issued: sum(
                &control,
                "rampart_ca_certificates_total",
                &["result=\"issued\""],
            ),
            connected_proxies: sum(&control, "rampart_xds_connected_streams", &[]),
            hops,
            ejections: sidecars.get("frontend").map_or(0.0, |m| {
                sum(m, "rampart_proxy_outlier_ejections_total", &[])
            }),
            denied: all(
                "rampart_proxy_authz_decisions_total",
                &["decision=\"deny\""],
            ),
            refused_handshakes: all("rampart_proxy_tls_handshake_failures_total", &[]),
            refused_by_reason: refusals(&sidecars),
            stopped,
            metrics,
        }
    }
}

/// Prints the snapshot: a table (redrawn in place on a terminal) or a JSON line.
pub fn render(snapshot: &Snapshot, view: View, dir: &Path) {
    let mut out = std::io::stdout().lock();
    if view == View::Json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string(snapshot).unwrap_or_default()
        );
        let _ = out.flush();
        return;
    }
    if out.is_terminal() {
        let _ = write!(out, "\x1b[H\x1b[2J");
    }
    let _ = write!(out, "{}", table(snapshot, dir));
    let _ = out.flush();
}

fn table(s: &Snapshot, dir: &Path) -> String {
    let mut t = String::new();
    let line = |t: &mut String, text: String| {
        t.push_str(&text);
        t.push('\n');
    };
    line(
        &mut t,
        format!(
            "Rampart demo: up {} s, {} proxies connected, {} SVIDs issued by the mesh CA (each sidecar renews its 60 s SVID at half-life)",
            s.uptime_seconds, s.connected_proxies, s.identities_issued
        ),
    );
    line(&mut t, String::new());
    line(
        &mut t,
        format!(
            "{:<28} {:>6} {:>8} {:>9} {:>9}  {:<18} {}",
            format!("ROUTE (last {} s)", WINDOW.as_secs()),
            "RPS",
            "SUCCESS",
            "P50",
            "P99",
            "VERSIONS",
            "FAILURES"
        ),
    );
    for r in &s.routes {
        let versions: Vec<String> = r
            .versions
            .iter()
            .map(|(v, p)| format!("{v} {p:.0}%"))
            .collect();
        let failures: Vec<String> = r
            .failures
            .iter()
            .map(|(why, n)| format!("{n}x {why}"))
            .collect();
        line(
            &mut t,
            format!(
                "{:<28} {:>6.1} {:>7.1}% {:>7.1}ms {:>7.1}ms  {:<18} {}",
                r.route,
                r.rps,
                r.success,
                r.p50_ms,
                r.p99_ms,
                versions.join(" "),
                failures.join(", ")
            ),
        );
    }
    line(&mut t, String::new());
    line(
        &mut t,
        "mTLS, as each server's sidecar verified it:".to_owned(),
    );
    for h in &s.hops {
        let mark = if h.requests > 0.0 { "ok" } else { "--" };
        line(
            &mut t,
            format!(
                "  [{mark}] {:<24} caller {} ({} requests)",
                h.hop, h.verified_caller, h.requests
            ),
        );
    }
    line(
        &mut t,
        format!(
            "  plaintext or untrusted connections refused: {}   requests denied by policy: {}   backends ejected by outlier detection: {}",
            s.refused_handshakes, s.denied, s.ejections
        ),
    );
    if !s.refused_by_reason.is_empty() {
        let reasons: Vec<String> = s
            .refused_by_reason
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        line(&mut t, format!("  refused by: {}", reasons.join(", ")));
    }
    if !s.stopped.is_empty() {
        line(&mut t, format!("not running: {}", s.stopped.join(", ")));
    }
    line(&mut t, String::new());
    let metrics: Vec<String> = s.metrics.iter().map(|(n, u)| format!("{n} {u}")).collect();
    line(&mut t, format!("metrics: {}", metrics.join(" | ")));
    line(
        &mut t,
        format!(
            "Prometheus: prometheus --config.file=deploy/prometheus/prometheus.yml (targets in {}); Grafana: deploy/grafana/",
            dir.join(super::PROMETHEUS_TARGETS).display()
        ),
    );
    let ctl = format!("meshctl --data-dir {} demo", dir.display());
    line(
        &mut t,
        format!(
            "next, in another shell: {ctl} split v1=90,v2=10 | {ctl} deny | {ctl} kill v2 | {ctl} reset     Ctrl-C stops it all"
        ),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_listed_by_sidecar_and_reason() {
        let frontend = "rampart_proxy_tls_handshake_failures_total{listener=\"inbound|8080\",reason=\"not_tls\"} 2\n\
                        rampart_proxy_tls_handshake_failures_total{listener=\"inbound|8081\",reason=\"not_tls\"} 1\n\
                        rampart_proxy_tls_handshake_failures_total{listener=\"inbound|8080\",reason=\"peer_refused\"} 4\n";
        let backend = "rampart_proxy_requests_total{direction=\"inbound\"} 9\n";
        let sidecars = BTreeMap::from([
            ("frontend", frontend.to_owned()),
            ("backend-v1", backend.to_owned()),
        ]);
        let expected = BTreeMap::from([
            ("frontend: not_tls".to_owned(), 3.0),
            ("frontend: peer_refused".to_owned(), 4.0),
        ]);
        assert_eq!(refusals(&sidecars), expected);
    }
}
