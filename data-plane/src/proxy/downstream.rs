//! What the proxy knows of a downstream connection: where it came from,
//! what it is doing (for its timeouts) and the metrics its last request
//! was counted in. A leaf: the traffic path, the timeouts and the access log
//! all read it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::clock::{instant, now, ticks};
use crate::metrics::traffic::RequestLabels;

/// What the proxy knows of the connection a request came on.
pub struct Downstream {
    pub listener: String,
    pub inbound: bool,
    /// The caller's SPIFFE ID if it came over mTLS.
    pub peer: Option<Arc<str>>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The filter chain the connection matched.
    pub chain: usize,
    pub counted: LastCounted,
    /// Requests in flight and since when idle, for the connection's timeouts.
    pub activity: Activity,
}

/// The metrics the connection's last request was counted in, used again
/// while the next one has the same labels (the usual case: one caller, one
/// service), which saves looking the labels up twice per request.
#[derive(Default)]
pub struct LastCounted(pub(super) Mutex<Option<(RequestLabels, Counter, Histogram)>>);

/// What a connection is doing, for its timeouts.
pub struct Activity {
    /// Requests in flight (their response bodies included).
    pub(super) active: AtomicUsize,
    /// Requests started so far: a changed count means a request head was
    /// completed.
    pub(super) started: AtomicU64,
    /// When the connection last became idle (HTTP) or last carried a byte
    /// (TCP), as [`ticks`].
    pub(super) since: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            active: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            since: AtomicU64::new(ticks(now())),
        }
    }
}

impl Activity {
    /// A request (or its response body) is in flight; pair with [`end`](Self::end).
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        if self.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.touch();
        }
    }

    /// Bytes moved (TCP) or the last request ended (HTTP): idle from now.
    pub fn touch(&self) {
        self.since.store(ticks(now()), Ordering::Relaxed);
    }

    pub(super) fn idle_since(&self) -> Option<Instant> {
        (self.active.load(Ordering::Relaxed) == 0)
            .then(|| instant(self.since.load(Ordering::Relaxed)))
    }
}
