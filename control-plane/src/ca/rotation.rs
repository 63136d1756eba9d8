//! Root rotation with one command and no other step: the control plane
//! moves through the phases itself, each only once every connected proxy
//! has taken the last one, so no proxy restarts and no request fails.
//!
//! 1. `trust`: a new root is generated and trusted after the old one
//!    (bundle `[old, new]`); the old root still signs. It ends when every
//!    stream holding secrets has ACKed the `ROOTCA` of the new bundle.
//! 2. `sign`: the new root signs (through a new intermediate if so
//!    configured); the bundle becomes `[new, old]`. A workload whose SVID
//!    does not chain to the bundle's first root renews at once (Rampart's
//!    convention: the first root signs) and then reconnects to the control
//!    plane with it. It ends when every stream has ACKed that bundle and
//!    every client is connected with an SVID of the new root.
//! 3. The old root is dropped from the bundle and its key deleted.
//!
//! Each phase also lasts at least `settle`, so that what is not an xDS
//! stream (a tool holding the bundle file, a proxy reconnecting, the API
//! server's webhook caBundle) has time to follow. Progress is kept with the
//! roots (`roots.rs`), so a restarted control plane carries on where it was.
//!
//! In a cluster the roots are in a Secret all replicas read every second;
//! any replica may start a rotation, only the leader moves it on, and it
//! does so only once every replica reports (`rotation_reports.rs`)
//! that its own streams have followed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use rampart_certs::tls::verify_chain;
use rampart_certs::{CertificateAuthority, SvidLifetimes, TrustDomain};
use tokio::sync::{Mutex, watch};

use super::root_store::RootStore;
use super::roots::{Phase, RootSet, Roots, Rotation};
use super::rotation_reports::{Report, Reports};
use crate::xds::{Published, StreamRegistry, TypeUrl, names, secrets};

/// The CA in use; replaced at each step of a rotation. Readers take the
/// current one per use, or follow changes.
#[derive(Clone)]
pub struct CaHandle {
    current: Arc<watch::Sender<Arc<CertificateAuthority>>>,
}

impl CaHandle {
    pub fn new(ca: CertificateAuthority) -> Self {
        Self {
            current: Arc::new(watch::Sender::new(Arc::new(ca))),
        }
    }

    /// The CA to sign with now.
    pub fn current(&self) -> Arc<CertificateAuthority> {
        self.current.borrow().clone()
    }

    /// Follows the CA as it changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CertificateAuthority>> {
        self.current.subscribe()
    }

    fn replace(&self, ca: CertificateAuthority) {
        self.current.send_replace(Arc::new(ca));
    }
}

/// Where a rotation stands, for the admin API.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// `None` when no rotation is under way.
    pub phase: Option<Phase>,
    pub since_unix: i64,
    pub roots: usize,
    pub streams: usize,
    /// Streams that do not hold the current bundle yet (SPIFFE ID, node).
    pub without_bundle: Vec<String>,
    /// Streams still connected with an SVID of the old root (phase `sign`).
    pub on_old_root: Vec<String>,
}

/// Drives root rotations of the roots the control plane owns.
#[derive(Clone)]
pub struct Rotator {
    inner: Arc<Inner>,
}

struct Inner {
    config: RotatorConfig,
    ca: CaHandle,
    streams: StreamRegistry,
    snapshots: watch::Receiver<Arc<Published>>,
    state: Mutex<State>,
}

/// The replicas of a cluster: who leads, and what each reports.
pub struct Cluster {
    pub leading: watch::Receiver<bool>,
    pub reports: Reports,
}

struct State {
    set: RootSet,
    /// The first snapshot generation serving the current bundle.
    bundle_generation: Option<u64>,
    /// Per stream: whether its client SVID chains to the signing root
    /// (checked once per stream and phase: a chain never changes).
    on_new_root: HashMap<u64, bool>,
}

/// How a rotation is configured.
pub struct RotatorConfig {
    pub store: RootStore,
    pub trust_domain: TrustDomain,
    pub intermediate: bool,
    pub lifetimes: SvidLifetimes,
    pub settle: Duration,
    /// In a cluster (the roots in a Secret).
    pub cluster: Option<Cluster>,
}

/// A replica's report older than this is of a replica that is gone.
const REPORT_FRESH_SECONDS: i64 = 10;

impl Rotator {
    /// The rotator of `set`, which `ca` was built from.
    pub fn new(
        config: RotatorConfig,
        set: RootSet,
        ca: CaHandle,
        streams: StreamRegistry,
        snapshots: watch::Receiver<Arc<Published>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                ca,
                streams,
                snapshots,
                state: Mutex::new(State {
                    set,
                    bundle_generation: None,
                    on_new_root: HashMap::new(),
                }),
            }),
        }
    }

    /// Starts a rotation: a new root, trusted beside the old one.
    pub async fn start(&self) -> anyhow::Result<Progress> {
        let mut state = self.inner.state.lock().await;
        self.sync(&mut state).await?;
        if let Some(rotation) = state.set.roots.rotation {
            bail!(
                "a root rotation is already under way (phase {}); `meshctl ca rotation` shows it",
                rotation.phase.as_str()
            );
        }
        let stem = format!("root-{}", now_unix());
        if state.set.pems.contains_key(&stem) {
            bail!("a root was made this second already; try again");
        }
        let mut next = state.set.clone();
        next.pems.insert(
            stem.clone(),
            RootSet::generate(&self.inner.config.trust_domain)?,
        );
        next.roots = Roots {
            trusted: [state.set.roots.trusted.clone(), vec![stem]].concat(),
            rotation: Some(Rotation {
                phase: Phase::Trust,
                since_unix: now_unix(),
            }),
        };
        self.apply(&mut state, next, true).await?;
        tracing::info!(
            "root rotation started: a new root is trusted beside the old one, which still signs"
        );
        Ok(self.progress_of(&mut state).await)
    }

    /// Where the rotation stands, over every replica.
    pub async fn progress(&self) -> Progress {
        let mut state = self.inner.state.lock().await;
        self.progress_of(&mut state).await
    }

    /// Follows the stored roots, reports, and (when leading) moves the
    /// rotation on if everyone has followed; every second from [`spawn`](Self::spawn).
    pub async fn tick(&self) -> anyhow::Result<()> {
        let mut state = self.inner.state.lock().await;
        self.sync(&mut state).await?;
        let Some(rotation) = state.set.roots.rotation else {
            return Ok(());
        };
        let local = self.local_progress(&mut state);
        if let Some(cluster) = &self.inner.config.cluster {
            let report = Report {
                bundle: self.bundle_hash(),
                at_unix: now_unix(),
                streams: local.streams,
                without_bundle: local.without_bundle.clone(),
                on_old_root: local.on_old_root.clone(),
            };
            cluster.reports.publish(&report).await?;
            if !*cluster.leading.borrow() {
                return Ok(());
            }
        }
        if now_unix() - rotation.since_unix < self.inner.config.settle.as_secs() as i64 {
            return Ok(());
        }
        let progress = self.with_replicas(local, rotation.since_unix).await?;
        if !progress.without_bundle.is_empty() || !progress.on_old_root.is_empty() {
            return Ok(());
        }
        let trusted = &state.set.roots.trusted;
        let mut next = state.set.clone();
        match rotation.phase {
            Phase::Trust => {
                // The newest root (last) signs; the old one is trusted after it.
                let newest = trusted[trusted.len() - 1].clone();
                next.roots = Roots {
                    trusted: [vec![newest], trusted[..trusted.len() - 1].to_vec()].concat(),
                    rotation: Some(Rotation {
                        phase: Phase::Sign,
                        since_unix: now_unix(),
                    }),
                };
            }
            Phase::Sign => {
                next.roots = Roots {
                    trusted: vec![trusted[0].clone()],
                    rotation: None,
                };
                next.pems.retain(|stem, _| *stem == trusted[0]);
            }
        }
        self.apply(&mut state, next, true).await?;
        match rotation.phase {
            Phase::Trust => tracing::info!(
                "root rotation: every proxy trusts the new root; it now signs, and every SVID is being re-issued"
            ),
            Phase::Sign => tracing::info!(
                "root rotation done: every proxy holds an SVID of the new root; the old root is no longer trusted and its key is deleted"
            ),
        }
        Ok(())
    }

    /// Ticks every second until the process ends.
    pub fn spawn(&self) {
        let rotator = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = rotator.tick().await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "root rotation: a step failed; retrying"
                    );
                }
            }
        });
    }

    /// Takes up what is stored if it changed (another replica started or
    /// moved a rotation, or this one restarted).
    async fn sync(&self, state: &mut State) -> anyhow::Result<()> {
        let stored = self.inner.config.store.read().await?;
        if stored != state.set {
            tracing::info!(
                phase = stored.roots.rotation.map_or("none", |r| r.phase.as_str()),
                "the CA's roots changed in the store; following"
            );
            self.apply(state, stored, false).await?;
        }
        Ok(())
    }

    /// Builds the CA of `next` first (one that cannot be built changes
    /// nothing), stores it if `store`, then puts it in use.
    async fn apply(&self, state: &mut State, next: RootSet, store: bool) -> anyhow::Result<()> {
        let inner = &self.inner;
        let config = &inner.config;
        let ca = next.authority(&config.trust_domain, config.intermediate, config.lifetimes)?;
        if store {
            config.store.write(&next).await?;
        }
        state.set = next;
        state.bundle_generation = None;
        state.on_new_root.clear();
        inner.ca.replace(ca);
        Ok(())
    }

    fn bundle_hash(&self) -> String {
        let pem = self.inner.ca.current().bundle().to_pem();
        format!("{:016x}", secrets::rootca_entry(&pem).hash)
    }

    async fn progress_of(&self, state: &mut State) -> Progress {
        let local = self.local_progress(state);
        let since = state.set.roots.rotation.map_or(0, |r| r.since_unix);
        match self.with_replicas(local.clone(), since).await {
            Ok(progress) => progress,
            Err(e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "reading the other replicas' rotation reports failed"
                );
                local
            }
        }
    }

    /// `local` with what the other replicas of a cluster report: a fresh
    /// report of another bundle (not followed yet) counts as waiting.
    async fn with_replicas(
        &self,
        mut local: Progress,
        since_unix: i64,
    ) -> anyhow::Result<Progress> {
        let Some(cluster) = &self.inner.config.cluster else {
            return Ok(local);
        };
        let bundle = self.bundle_hash();
        let now = now_unix();
        for (replica, report) in cluster.reports.others().await? {
            if report.at_unix < now - REPORT_FRESH_SECONDS {
                continue; // a replica that is gone
            }
            let tag = |who: &String| format!("{who} (replica {replica})");
            local.streams += report.streams;
            if report.bundle != bundle || report.at_unix < since_unix {
                local.without_bundle.push(format!(
                    "replica {replica}: has not taken the current roots yet"
                ));
                continue;
            }
            local
                .without_bundle
                .extend(report.without_bundle.iter().map(tag));
            local.on_old_root.extend(report.on_old_root.iter().map(tag));
        }
        Ok(local)
    }

    /// This replica's own streams.
    fn local_progress(&self, state: &mut State) -> Progress {
        let ca = self.inner.ca.current();
        if state.bundle_generation.is_none() {
            let published = self.inner.snapshots.borrow();
            let wanted = secrets::rootca_entry(&ca.bundle().to_pem()).hash;
            let served = published
                .snapshot
                .get(TypeUrl::Secret, names::ROOTCA)
                .map(|e| e.hash);
            if served == Some(wanted) {
                state.bundle_generation = Some(published.generation);
            }
        }
        let streams = self.inner.streams.trust();
        let rotation = state.set.roots.rotation;
        let mut progress = Progress {
            phase: rotation.map(|r| r.phase),
            since_unix: rotation.map_or(0, |r| r.since_unix),
            roots: state.set.roots.trusted.len(),
            streams: streams.len(),
            ..Default::default()
        };
        let signing = ca.bundle().signing_root();
        let live: std::collections::HashSet<u64> = streams.iter().map(|s| s.stream_id).collect();
        state.on_new_root.retain(|id, _| live.contains(id));
        for stream in streams {
            let who = format!("{} (node {})", stream.spiffe_id, stream.node_id);
            let has_bundle = match stream.secrets_acked {
                None => true, // asks for no secrets: the bundle is not its concern
                Some(acked) => {
                    acked
                        && state
                            .bundle_generation
                            .is_some_and(|g| stream.synced_generation.is_some_and(|s| s >= g))
                }
            };
            if !has_bundle {
                progress.without_bundle.push(who.clone());
            }
            if progress.phase == Some(Phase::Sign) && !stream.peer_chain.is_empty() {
                let on_new = *state
                    .on_new_root
                    .entry(stream.stream_id)
                    .or_insert_with(|| verify_chain(&stream.peer_chain, &signing).is_ok());
                if !on_new {
                    progress.on_old_root.push(who);
                }
            }
        }
        progress
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
