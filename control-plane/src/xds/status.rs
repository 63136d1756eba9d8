//! What every open ADS stream has been sent and has ACKed or NACKed, for
//! `meshctl proxy-status`. Streams write their summary here after each
//! exchange; readers get a copy. For `meshctl proxy-config` a reader asks
//! the stream itself (through a small channel), so streams keep no second
//! copy of their configuration.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rampart_api::admin::{ProxyResource, ProxyStatus, TypeStatus};
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot};

use super::snapshot::TypeUrl;
use super::sotw::TypeSummary;
use envoy_types::pb::envoy::config::core::v3::Node;

/// A request for a stream's served resources.
pub type ConfigRequest = oneshot::Sender<Vec<ProxyResource>>;

/// The registry of open streams.
#[derive(Clone, Default)]
pub struct StreamRegistry {
    streams: Arc<Mutex<BTreeMap<u64, Stream>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

struct Stream {
    status: ProxyStatus,
    config: mpsc::Sender<ConfigRequest>,
    /// The certificates the client presented (empty if anonymous).
    peer_chain: Arc<Vec<CertificateDer<'static>>>,
    /// The newest snapshot generation of which it holds everything sent
    /// (every response answered).
    synced_generation: Option<u64>,
}

/// What a root rotation needs to know of one stream.
#[derive(Debug, Clone)]
pub struct StreamTrust {
    pub stream_id: u64,
    pub spiffe_id: String,
    pub node_id: String,
    pub peer_chain: Arc<Vec<CertificateDer<'static>>>,
    pub synced_generation: Option<u64>,
    /// `None` if it never asked for a Secret; else whether the last one
    /// sent was ACKed (not NACKed, not in flight).
    pub secrets_acked: Option<bool>,
}

impl StreamRegistry {
    /// Registers a new stream; returns its id and where it is asked for its
    /// configuration.
    pub fn open(
        &self,
        spiffe_id: String,
        peer_chain: Vec<CertificateDer<'static>>,
        variant: &str,
    ) -> (u64, mpsc::Receiver<ConfigRequest>) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let status = ProxyStatus {
            stream_id: id,
            spiffe_id,
            variant: variant.to_owned(),
            connected_at_unix: time::OffsetDateTime::now_utc().unix_timestamp(),
            ..Default::default()
        };
        let (config, requests) = mpsc::channel(1);
        self.lock().insert(
            id,
            Stream {
                status,
                config,
                peer_chain: Arc::new(peer_chain),
                synced_generation: None,
            },
        );
        (id, requests)
    }

    /// Every open stream's peer and how far it is synced.
    pub fn trust(&self) -> Vec<StreamTrust> {
        let secret = TypeUrl::Secret.short();
        self.lock()
            .values()
            .map(|s| StreamTrust {
                stream_id: s.status.stream_id,
                spiffe_id: s.status.spiffe_id.clone(),
                node_id: s.status.node_id.clone(),
                peer_chain: s.peer_chain.clone(),
                synced_generation: s.synced_generation,
                secrets_acked: s
                    .status
                    .types
                    .iter()
                    .find(|t| t.r#type == secret)
                    .map(|t| t.state == "SYNCED"),
            })
            .collect()
    }

    /// Records the stream's current protocol state and, if it holds
    /// everything of a snapshot generation, which.
    pub fn update(
        &self,
        id: u64,
        node: Option<&Node>,
        types: &[TypeSummary<'_>],
        synced: Option<u64>,
    ) {
        let mut streams = self.lock();
        let Some(Stream {
            status,
            synced_generation,
            ..
        }) = streams.get_mut(&id)
        else {
            return;
        };
        if synced.is_some() {
            *synced_generation = synced;
        }
        // The node never changes on a stream: record it once.
        if let Some(node) =
            node.filter(|_| status.node_id.is_empty() && status.user_agent.is_empty())
        {
            status.node_id = node.id.clone();
            status.user_agent = format!("{} {}", node.user_agent_name, version_of(node))
                .trim()
                .to_owned();
            status.admin_addr = rampart_api::xds::SidecarMetadata::from_node(node)
                .ok()
                .and_then(|m| m.admin)
                .map(|a| a.to_string())
                .unwrap_or_default();
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let previous = std::mem::take(&mut status.types);
        status.types = types
            .iter()
            .filter_map(|(t, sent, acked, nack)| {
                let sent = (*sent)?;
                let acked = acked.cloned().unwrap_or_default();
                let nack = nack.filter(|n| n.version == sent.version);
                let label = if nack.is_some() {
                    "NACKED"
                } else if acked == sent.version {
                    "SYNCED"
                } else {
                    "STALE"
                };
                // When this version was first seen unacknowledged, kept
                // across updates so "stale for N s" can be told from "just sent".
                let stale_since_unix = match label {
                    "STALE" => previous
                        .iter()
                        .find(|p| {
                            p.r#type == t.short()
                                && p.sent_version == sent.version
                                && p.state == "STALE"
                        })
                        .map_or(now, |p| p.stale_since_unix),
                    _ => 0,
                };
                Some(TypeStatus {
                    r#type: t.short().to_owned(),
                    stale_since_unix,
                    state: label.to_owned(),
                    sent_version: sent.version.clone(),
                    acked_version: acked,
                    nack_message: nack.map(|n| n.message.clone()).unwrap_or_default(),
                    resources: sent.resources as u32,
                })
            })
            .collect();
    }

    /// Forgets a closed stream.
    pub fn close(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A copy of every stream's status, oldest first.
    pub fn list(&self) -> Vec<ProxyStatus> {
        self.lock().values().map(|s| s.status.clone()).collect()
    }

    /// The status and served resources of the newest stream of `node_id`.
    pub async fn config(&self, node_id: &str) -> Option<(ProxyStatus, Vec<ProxyResource>)> {
        let (status, config) = {
            let streams = self.lock();
            let stream = streams
                .values()
                .rev()
                .find(|s| s.status.node_id == node_id)?;
            (stream.status.clone(), stream.config.clone())
        };
        let (reply, answer) = oneshot::channel();
        config.send(reply).await.ok()?;
        Some((status, answer.await.ok()?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Stream>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn version_of(node: &Node) -> String {
    use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
    match &node.user_agent_version_type {
        Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
        Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
            .version
            .as_ref()
            .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
            .unwrap_or_default(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::sotw::Sent;

    fn sent(version: &str) -> Sent {
        Sent {
            version: version.to_owned(),
            version_bits: 0,
            nonce: "n".to_owned(),
            names_hash: 0,
            resources: 1,
        }
    }

    #[test]
    fn a_stale_version_keeps_the_time_it_was_first_seen() {
        let registry = StreamRegistry::default();
        let (id, _requests) = registry.open("spiffe://x/ns/a/sa/b".to_owned(), Vec::new(), "delta");
        let (v1, v2) = (sent("v1"), sent("v2"));
        registry.update(id, None, &[(TypeUrl::Cluster, Some(&v1), None, None)], None);
        let first = registry.list()[0].types[0].clone();
        assert_eq!(first.state, "STALE");
        assert!(first.stale_since_unix > 0);
        // Backdate it, as if sent a minute ago; another update keeps it.
        registry.lock().get_mut(&id).unwrap().status.types[0].stale_since_unix -= 60;
        registry.update(id, None, &[(TypeUrl::Cluster, Some(&v1), None, None)], None);
        assert_eq!(
            registry.list()[0].types[0].stale_since_unix,
            first.stale_since_unix - 60
        );
        // Acknowledged: no longer stale. A new version starts afresh.
        let acked = "v1".to_owned();
        registry.update(
            id,
            None,
            &[(TypeUrl::Cluster, Some(&v1), Some(&acked), None)],
            None,
        );
        assert_eq!(registry.list()[0].types[0].stale_since_unix, 0);
        registry.update(
            id,
            None,
            &[(TypeUrl::Cluster, Some(&v2), Some(&acked), None)],
            None,
        );
        assert!(registry.list()[0].types[0].stale_since_unix >= first.stale_since_unix);
    }
}
