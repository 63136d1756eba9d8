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
//! stream (a tool holding the bundle file, a proxy reconnecting) has time
//! to follow. Progress is kept in `roots.json`, so a restarted control
//! plane carries on where it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use rampart_certs::tls::verify_chain;
use rampart_certs::{CertificateAuthority, SvidLifetimes, TrustDomain};
use tokio::sync::watch;

use super::roots::{Phase, RootFiles, Roots, Rotation};
use crate::xds::{Published, StreamRegistry, TypeUrl, translate};

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

/// Drives root rotations of the self-signed CA.
#[derive(Clone)]
pub struct Rotator {
    inner: Arc<Inner>,
}

struct Inner {
    files: RootFiles,
    trust_domain: TrustDomain,
    intermediate: bool,
    lifetimes: SvidLifetimes,
    ca: CaHandle,
    streams: StreamRegistry,
    snapshots: watch::Receiver<Arc<Published>>,
    settle: Duration,
    state: Mutex<State>,
}

struct State {
    roots: Roots,
    /// The first snapshot generation serving the current bundle.
    bundle_generation: Option<u64>,
    /// Per stream: whether its client SVID chains to the signing root
    /// (checked once per stream and phase: a chain never changes).
    on_new_root: HashMap<u64, bool>,
}

/// How a rotation is configured.
pub struct RotatorConfig {
    pub files: RootFiles,
    pub trust_domain: TrustDomain,
    pub intermediate: bool,
    pub lifetimes: SvidLifetimes,
    pub settle: Duration,
}

impl Rotator {
    pub fn new(
        config: RotatorConfig,
        ca: CaHandle,
        streams: StreamRegistry,
        snapshots: watch::Receiver<Arc<Published>>,
    ) -> anyhow::Result<Self> {
        let roots = config.files.load()?;
        Ok(Self {
            inner: Arc::new(Inner {
                files: config.files,
                trust_domain: config.trust_domain,
                intermediate: config.intermediate,
                lifetimes: config.lifetimes,
                ca,
                streams,
                snapshots,
                settle: config.settle,
                state: Mutex::new(State {
                    roots,
                    bundle_generation: None,
                    on_new_root: HashMap::new(),
                }),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a rotation: a new root, trusted beside the old one.
    pub fn start(&self) -> anyhow::Result<Progress> {
        let mut state = self.lock();
        if let Some(rotation) = state.roots.rotation {
            bail!(
                "a root rotation is already under way (phase {}); `meshctl ca rotation` shows it",
                rotation.phase.as_str()
            );
        }
        let stem = format!("root-{}", now_unix());
        if state.roots.trusted.contains(&stem) {
            bail!("a root was made this second already; try again");
        }
        self.inner.files.generate(&stem, &self.inner.trust_domain)?;
        let mut trusted = state.roots.trusted.clone();
        trusted.push(stem);
        let next = Roots {
            trusted,
            rotation: Some(Rotation {
                phase: Phase::Trust,
                since_unix: now_unix(),
            }),
        };
        self.apply(&mut state, next)?;
        tracing::info!(
            "root rotation started: a new root is trusted beside the old one, which still signs"
        );
        Ok(self.progress_of(&mut state))
    }

    /// Where the rotation stands.
    pub fn progress(&self) -> Progress {
        let mut state = self.lock();
        self.progress_of(&mut state)
    }

    /// Moves the rotation on if every stream has followed; called every
    /// second by [`spawn`](Self::spawn).
    pub fn step(&self) -> anyhow::Result<()> {
        let mut state = self.lock();
        let Some(rotation) = state.roots.rotation else {
            return Ok(());
        };
        if now_unix() - rotation.since_unix < self.inner.settle.as_secs() as i64 {
            return Ok(());
        }
        let progress = self.progress_of(&mut state);
        if !progress.without_bundle.is_empty() || !progress.on_old_root.is_empty() {
            return Ok(());
        }
        let trusted = &state.roots.trusted;
        let next = match rotation.phase {
            Phase::Trust => {
                // The newest root (last) signs; the old one is trusted after it.
                let mut order = vec![trusted[trusted.len() - 1].clone()];
                order.extend(trusted[..trusted.len() - 1].iter().cloned());
                Roots {
                    trusted: order,
                    rotation: Some(Rotation {
                        phase: Phase::Sign,
                        since_unix: now_unix(),
                    }),
                }
            }
            Phase::Sign => Roots {
                trusted: vec![trusted[0].clone()],
                rotation: None,
            },
        };
        let retired: Vec<String> = trusted
            .iter()
            .filter(|s| !next.trusted.contains(s))
            .cloned()
            .collect();
        self.apply(&mut state, next)?;
        // Only once nothing trusts it any more.
        for stem in retired {
            self.inner.files.remove(&stem)?;
        }
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

    /// Steps every second until the process ends.
    pub fn spawn(&self) {
        let rotator = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if let Err(e) = rotator.step() {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "root rotation step failed; retrying"
                    );
                }
            }
        });
    }

    /// Builds the CA of `next` first, then records it and puts it in use:
    /// a CA that cannot be built changes nothing.
    fn apply(&self, state: &mut State, next: Roots) -> anyhow::Result<()> {
        let inner = &self.inner;
        let ca = inner.files.authority(
            &next,
            &inner.trust_domain,
            inner.intermediate,
            inner.lifetimes,
        )?;
        inner.files.save(&next)?;
        state.roots = next;
        state.bundle_generation = None;
        state.on_new_root.clear();
        inner.ca.replace(ca);
        Ok(())
    }

    fn progress_of(&self, state: &mut State) -> Progress {
        let ca = self.inner.ca.current();
        if state.bundle_generation.is_none() {
            let published = self.inner.snapshots.borrow();
            let wanted = translate::rootca_entry(&ca.bundle().to_pem()).hash;
            let served = published
                .snapshot
                .get(TypeUrl::Secret, translate::ROOTCA)
                .map(|e| e.hash);
            if served == Some(wanted) {
                state.bundle_generation = Some(published.generation);
            }
        }
        let streams = self.inner.streams.trust();
        let mut progress = Progress {
            phase: state.roots.rotation.map(|r| r.phase),
            since_unix: state.roots.rotation.map_or(0, |r| r.since_unix),
            roots: state.roots.trusted.len(),
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
