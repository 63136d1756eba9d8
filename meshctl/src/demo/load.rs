//! The demo's traffic: a client calling the frontend through its own
//! sidecar at a fixed rate, and what it and the frontend saw, per route,
//! over a sliding window (rate, success, latency percentiles, which backend
//! version answered, why calls failed).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::apps::{Call, FrontendReply};
use crate::http::get;

/// The routes the demo shows, in order.
pub const ROUTES: [&str; 3] = [
    "client -> frontend (http)",
    "frontend -> backend (http)",
    "frontend -> backend (grpc)",
];

struct Sample {
    at: Instant,
    route: usize,
    call: Call,
}

/// Samples of the last `WINDOW`.
#[derive(Default)]
pub struct Stats {
    samples: Mutex<VecDeque<Sample>>,
}

pub const WINDOW: Duration = Duration::from_secs(5);

/// One route over the window.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStats {
    pub route: &'static str,
    pub requests: usize,
    pub rps: f64,
    /// Percent of calls that succeeded (100 with no calls).
    pub success: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Percent of successful calls each backend version answered.
    pub versions: BTreeMap<String, f64>,
    /// Failed calls by what went wrong (a status, or the error).
    pub failures: BTreeMap<String, usize>,
}

impl Stats {
    fn record(&self, route: usize, call: Call) {
        let mut samples = self.samples.lock().expect("stats lock");
        let now = Instant::now();
        samples.push_back(Sample {
            at: now,
            route,
            call,
        });
        while samples.front().is_some_and(|s| now - s.at > WINDOW) {
            samples.pop_front();
        }
    }

    /// Every route over the last `WINDOW`.
    pub fn window(&self) -> Vec<RouteStats> {
        let samples = self.samples.lock().expect("stats lock");
        let now = Instant::now();
        let recent: Vec<&Sample> = samples.iter().filter(|s| now - s.at <= WINDOW).collect();
        ROUTES
            .iter()
            .enumerate()
            .map(|(i, route)| {
                let calls: Vec<&Call> = recent
                    .iter()
                    .filter(|s| s.route == i)
                    .map(|s| &s.call)
                    .collect();
                summarize(route, &calls)
            })
            .collect()
    }
}

fn summarize(route: &'static str, calls: &[&Call]) -> RouteStats {
    let mut millis: Vec<f64> = calls.iter().map(|c| c.millis).collect();
    millis.sort_by(f64::total_cmp);
    let ok: Vec<&&Call> = calls.iter().filter(|c| c.ok).collect();
    let mut versions = BTreeMap::new();
    for call in &ok {
        if let Some(v) = &call.version {
            *versions.entry(v.clone()).or_insert(0.0) += 100.0 / ok.len() as f64;
        }
    }
    let mut failures = BTreeMap::new();
    for call in calls.iter().filter(|c| !c.ok) {
        *failures.entry(call.outcome.clone()).or_insert(0) += 1;
    }
    RouteStats {
        route,
        requests: calls.len(),
        rps: calls.len() as f64 / WINDOW.as_secs_f64(),
        success: if calls.is_empty() {
            100.0
        } else {
            100.0 * ok.len() as f64 / calls.len() as f64
        },
        p50_ms: quantile(&millis, 0.50),
        p99_ms: quantile(&millis, 0.99),
        versions,
        failures,
    }
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Calls the frontend through `entry` (the client sidecar's outbound
/// listener) `rate` times a second, open loop: a slow answer does not slow
/// the next call.
pub async fn generate(entry: SocketAddr, rate: u32, stats: Arc<Stats>) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let stats = stats.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(Duration::from_secs(10), get(entry, "/")).await;
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            let (outcome, reply) = match answer {
                Ok(Ok((200, body))) => match serde_json::from_slice::<FrontendReply>(&body) {
                    Ok(reply) => ("200".to_owned(), Some(reply)),
                    Err(_) => ("200 without the frontend's answer".to_owned(), None),
                },
                Ok(Ok((status, _))) => (status.to_string(), None),
                Ok(Err(e)) => (e, None),
                Err(_) => ("timeout".to_owned(), None),
            };
            stats.record(
                0,
                Call {
                    version: None,
                    ok: reply.is_some(),
                    outcome,
                    millis,
                },
            );
            if let Some(reply) = reply {
                stats.record(1, reply.http);
                stats.record(2, reply.grpc);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(ok: bool, millis: f64, version: &str) -> Call {
        Call {
            version: ok.then(|| version.to_owned()),
            outcome: if ok { "200" } else { "403" }.to_owned(),
            ok,
            millis,
        }
    }

    #[test]
    fn a_window_summarizes_its_calls() {
        let calls: Vec<Call> = (1..=100)
            .map(|i| {
                call(
                    i % 10 != 0,
                    f64::from(i),
                    if i % 4 == 0 { "v2" } else { "v1" },
                )
            })
            .collect();
        let refs: Vec<&Call> = calls.iter().collect();
        let s = summarize("r", &refs);
        assert_eq!(s.requests, 100);
        assert_eq!(s.success, 90.0);
        assert_eq!(s.p50_ms, 50.0);
        assert_eq!(s.p99_ms, 99.0);
        assert_eq!(s.failures["403"], 10);
        // 90 successes: 20 of them by v2 (multiples of 4 but not of 10... and
        // not 20, 40, ...): 25 multiples of 4 minus 5 multiples of 20.
        assert!(
            (s.versions["v2"] - 100.0 * 20.0 / 90.0).abs() < 1e-9,
            "{:?}",
            s.versions
        );
        let empty = summarize("r", &[]);
        assert_eq!((empty.success, empty.p99_ms), (100.0, 0.0));
    }
}
