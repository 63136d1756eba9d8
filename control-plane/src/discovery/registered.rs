//! Endpoints that sidecars report when they connect (see `xds::sidecar`).
//!
//! A sidecar is an endpoint of its service while its ADS stream is open.
//! When the stream closes the endpoint stays for a grace period, so a
//! control-plane restart or a reconnect does not pull it from every
//! client's endpoint set; if the same node (namespace and node id) comes
//! back within the period, its registration simply continues. The period
//! only runs out while some xDS client is connected (see `expire_later`).
//!
//! Registrations are also written to the store, so after a control-plane
//! restart the endpoints are served at once (each with a fresh grace period
//! to reconnect in) instead of vanishing until their sidecars return.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_api::mesh::{Object, WorkloadEntrySpec};
use tokio::sync::watch;

/// The default grace period after a sidecar disconnects.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// Registered endpoints, shared by the xDS streams and the snapshot builder.
#[derive(Clone)]
pub struct Registrations {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Mutex<BTreeMap<String, Slot>>,
    tree: sled::Tree,
    revision: watch::Sender<u64>,
    grace: Duration,
    /// Whether any xDS client is connected now.
    connected: Mutex<Arc<dyn Fn() -> bool + Send + Sync>>,
}

struct Slot {
    entry: Object<WorkloadEntrySpec>,
    /// The stream holding the registration; None once it closed.
    stream: Option<u64>,
    /// Changes with every (re-)registration, so a stale expiry is ignored.
    epoch: u64,
}

fn key(entry: &Object<WorkloadEntrySpec>) -> String {
    format!("{}/{}", entry.metadata.namespace, entry.metadata.name)
}

impl Registrations {
    /// Loads what was registered before a restart; each entry gets `grace`
    /// for its sidecar to reconnect. Unreadable records are dropped.
    pub fn load(tree: sled::Tree, grace: Duration) -> Self {
        let (revision, _) = watch::channel(0);
        let registrations = Self {
            inner: Arc::new(Inner {
                slots: Mutex::new(BTreeMap::new()),
                tree,
                revision,
                grace,
                connected: Mutex::new(Arc::new(|| true)),
            }),
        };
        let mut restored = Vec::new();
        for record in registrations.inner.tree.iter() {
            let Ok((k, v)) = record else { continue };
            match serde_json::from_slice::<Object<WorkloadEntrySpec>>(&v) {
                Ok(entry) => restored.push(entry),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&k), error = %e, "dropping an unreadable registration");
                    let _ = registrations.inner.tree.remove(k);
                }
            }
        }
        {
            let mut slots = registrations.inner.slots.lock().unwrap();
            for entry in restored {
                let k = key(&entry);
                slots.insert(
                    k.clone(),
                    Slot {
                        entry,
                        stream: None,
                        epoch: 0,
                    },
                );
                registrations.expire_later(k, 0);
            }
        }
        registrations
    }

    /// Tells the registrations how to know whether any xDS client is
    /// connected (by default they assume one is).
    pub fn set_connected(&self, probe: impl Fn() -> bool + Send + Sync + 'static) {
        *self.inner.connected.lock().unwrap() = Arc::new(probe);
    }

    /// Registers (or renews) the endpoint of the sidecar on `stream`.
    pub fn register(&self, stream: u64, entry: Object<WorkloadEntrySpec>) {
        let k = key(&entry);
        let mut slots = self.inner.slots.lock().unwrap();
        let epoch = slots.get(&k).map_or(0, |s| s.epoch + 1);
        let changed = slots.get(&k).is_none_or(|s| s.entry != entry);
        if changed && let Ok(json) = serde_json::to_vec(&entry) {
            let _ = self.inner.tree.insert(k.as_bytes(), json);
        }
        slots.insert(
            k,
            Slot {
                entry,
                stream: Some(stream),
                epoch,
            },
        );
        drop(slots);
        if changed {
            self.inner.revision.send_modify(|r| *r += 1);
        }
    }

    /// The sidecar on `stream` disconnected: its endpoint leaves after the
    /// grace period unless it registers again.
    pub fn leave(&self, stream: u64) {
        let mut slots = self.inner.slots.lock().unwrap();
        for (k, slot) in slots.iter_mut() {
            if slot.stream == Some(stream) {
                slot.stream = None;
                self.expire_later(k.clone(), slot.epoch);
            }
        }
    }

    /// Removes `k` once its grace period is over, unless it registered
    /// again. While no xDS client at all is connected the removal waits:
    /// the control plane cannot tell dead workloads from a network cut
    /// between it and them (or from its own restart during one), and the
    /// clients that would be told are cut off too; when the network heals,
    /// clients and servers come back together instead of the first clients
    /// back learning that every server is gone.
    fn expire_later(&self, k: String, epoch: u64) {
        let inner = self.inner.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(inner.grace).await;
                // Asked before taking the slots' lock: the probe takes others.
                let probe = inner.connected.lock().unwrap().clone();
                let anyone_connected = probe();
                let mut slots = inner.slots.lock().unwrap();
                let still_gone = slots
                    .get(&k)
                    .is_some_and(|s| s.stream.is_none() && s.epoch == epoch);
                if !still_gone {
                    return;
                }
                if !anyone_connected {
                    tracing::debug!(
                        endpoint = k,
                        "no xDS client is connected: keeping the endpoint for another grace period"
                    );
                    continue;
                }
                slots.remove(&k);
                let _ = inner.tree.remove(k.as_bytes());
                drop(slots);
                tracing::info!(
                    endpoint = k,
                    "registered endpoint left after its grace period"
                );
                inner.revision.send_modify(|r| *r += 1);
                return;
            }
        });
    }

    /// Every registered endpoint.
    pub fn entries(&self) -> Vec<Object<WorkloadEntrySpec>> {
        let slots = self.inner.slots.lock().unwrap();
        slots.values().map(|s| s.entry.clone()).collect()
    }

    /// A number that changes whenever the set of entries does.
    pub fn revision(&self) -> watch::Receiver<u64> {
        self.inner.revision.subscribe()
    }
}
