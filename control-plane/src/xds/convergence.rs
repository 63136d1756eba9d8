//! How long a model change takes to reach everyone it affects: from the
//! moment the change was accepted (the first store write of a debounce
//! window) to the moment the last affected stream answered the push (ACK,
//! or NACK: it will not converge, but it has answered). Streams that close
//! stop counting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;

struct Pending {
    accepted_at: Instant,
    waiting: BTreeSet<u64>,
}

/// Tracks generations until every affected stream has answered.
pub struct Convergence {
    pending: Mutex<BTreeMap<u64, Pending>>,
    histogram: Histogram,
}

impl Convergence {
    pub fn new(histogram: Histogram) -> Self {
        Self {
            pending: Mutex::new(BTreeMap::new()),
            histogram,
        }
    }

    /// `stream` was sent something because of `generation`.
    pub fn pushed(&self, generation: u64, accepted_at: Instant, stream: u64) {
        let mut pending = self.lock();
        pending
            .entry(generation)
            .or_insert_with(|| Pending {
                accepted_at,
                waiting: BTreeSet::new(),
            })
            .waiting
            .insert(stream);
    }

    /// `stream` has answered everything up to `generation`.
    pub fn answered(&self, stream: u64, generation: u64) {
        self.settle(|g, waiting| {
            if g <= generation {
                waiting.remove(&stream);
            }
        });
    }

    /// `stream` closed: it no longer holds anything up.
    pub fn closed(&self, stream: u64) {
        self.settle(|_, waiting| {
            waiting.remove(&stream);
        });
    }

    fn settle(&self, mut update: impl FnMut(u64, &mut BTreeSet<u64>)) {
        let mut pending = self.lock();
        for (generation, p) in pending.iter_mut() {
            update(*generation, &mut p.waiting);
        }
        let done: Vec<u64> = pending
            .iter()
            .filter(|(_, p)| p.waiting.is_empty())
            .map(|(g, _)| *g)
            .collect();
        for generation in done {
            if let Some(p) = pending.remove(&generation) {
                self.histogram
                    .observe(p.accepted_at.elapsed().as_secs_f64());
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}
