//! Where the ADS server gets what to serve. The server runs the protocol
//! (versions, nonces, ACK/NACK, subscriptions) and asks a [`NodeSource`]
//! who the node of a new stream is and, on every publication, what that
//! node is served; it knows nothing of sidecars or of the mesh model.
//!
//! [`MeshSource`] is the mesh's source: it reads a node's `rampart.*`
//! metadata, checks it against the caller's SVID and the model, registers
//! the endpoint a sidecar serves for as long as its stream lasts, and
//! serves the node its [`NodeView`]. Kubernetes discovery feeds the same
//! model, so it needs nothing here.

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use rampart_certs::SpiffeId;
use tonic::Status;

use super::node_view::NodeView;
use super::sidecar::SidecarError;
use super::snapshot::Snapshot;
use super::snapshot_builder::Published;
use crate::discovery::Registrations;

/// Who a stream's node is and what it is served.
pub trait NodeSource: Send + Sync {
    /// Admits the node of stream `stream`'s first request, made by `peer`,
    /// or refuses it with the status the stream is closed with.
    fn admit(
        &self,
        node: Option<&Node>,
        peer: &SpiffeId,
        stream: u64,
        published: &Published,
    ) -> Result<Box<dyn NodeConfig>, Status>;

    /// Stream `stream` (admitted or not) has closed.
    fn leave(&self, stream: u64);
}

/// What one admitted node is served.
pub trait NodeConfig: Send {
    /// The resources this node is served from `published`.
    fn of(&mut self, published: &Published) -> Arc<Snapshot>;
}

/// The mesh's nodes: sidecars, proxies naming their outbound listeners,
/// and plain xDS clients (proxyless gRPC, which get the shared snapshot).
pub struct MeshSource {
    registrations: Registrations,
}

impl MeshSource {
    /// A source registering sidecar endpoints in `registrations`.
    pub fn new(registrations: Registrations) -> Self {
        Self { registrations }
    }
}

impl NodeSource for MeshSource {
    fn admit(
        &self,
        node: Option<&Node>,
        peer: &SpiffeId,
        stream: u64,
        published: &Published,
    ) -> Result<Box<dyn NodeConfig>, Status> {
        let refuse = |e: SidecarError| {
            tracing::warn!(peer = %peer, stream, error = %e, "xDS node refused");
            match e {
                SidecarError::Invalid(m) => Status::invalid_argument(m),
                SidecarError::Forbidden(m) => Status::permission_denied(m),
            }
        };
        let view = NodeView::new(node, peer).map_err(refuse)?;
        if let Some(sidecar) = view.sidecar() {
            sidecar.check(&published.sidecars).map_err(refuse)?;
            if let Some(endpoint) = sidecar.endpoint() {
                self.registrations.register(stream, endpoint);
            }
        }
        Ok(Box::new(view))
    }

    fn leave(&self, stream: u64) {
        self.registrations.leave(stream);
    }
}

impl NodeConfig for NodeView {
    fn of(&mut self, published: &Published) -> Arc<Snapshot> {
        NodeView::of(self, published)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::xds::snapshot::TypeUrl;
    use crate::xds::translate::test_config;
    use rampart_api::xds::{Serves, SidecarMetadata};
    use tonic::Code;

    const MODEL: &str = include_str!("../../../docs/examples/echo.yaml");

    fn published(yaml: &str) -> Published {
        let config = test_config(yaml);
        Published {
            snapshot: Arc::new(config.snapshot),
            sidecars: Arc::new(config.sidecars),
            ..Default::default()
        }
    }

    fn source() -> (MeshSource, Registrations) {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let registrations = Registrations::load(db.open_tree("r").unwrap(), Duration::ZERO);
        (MeshSource::new(registrations.clone()), registrations)
    }

    /// A sidecar node serving echo's http port on 10.0.0.7:15006.
    fn sidecar_node(port_name: &str) -> Node {
        let metadata = SidecarMetadata {
            sidecar: true,
            serves: Some(Serves {
                service: "echo".into(),
                address: "10.0.0.7".parse().unwrap(),
                ports: [(port_name.to_owned(), 15006)].into(),
                app_ports: Default::default(),
            }),
            ..Default::default()
        };
        Node {
            id: "echo-abc".into(),
            metadata: Some(metadata.to_struct()),
            ..Default::default()
        }
    }

    fn sa(name: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://example.org/ns/default/sa/{name}")).unwrap()
    }

    #[tokio::test]
    async fn a_sidecar_is_served_its_view_and_registered_while_its_stream_lasts() {
        let (source, registrations) = source();
        let published = published(MODEL);
        let mut node = source
            .admit(Some(&sidecar_node("http")), &sa("echo"), 1, &published)
            .unwrap();
        let entries = registrations.entries();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].metadata.name, "echo-abc");
        assert_eq!(entries[0].spec.address, "10.0.0.7");
        let view = node.of(&published);
        assert!(view.get(TypeUrl::Listener, "inbound|15006").is_some());
        // The shared snapshot's API listeners are not a sidecar's.
        assert!(view.get(TypeUrl::Listener, "echo.default:8080").is_none());

        let mut revision = registrations.revision();
        source.leave(1);
        tokio::time::timeout(Duration::from_secs(10), revision.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(registrations.entries().is_empty());
    }

    #[tokio::test]
    async fn ports_the_service_does_not_have_are_ignored_not_fatal() {
        let (source, registrations) = source();
        let mut node = sidecar_node("http");
        let mut metadata = SidecarMetadata::from_node(&node).unwrap();
        if let Some(serves) = metadata.serves.as_mut() {
            serves.ports.insert("metrics".into(), 9102);
        }
        node.metadata = Some(metadata.to_struct());
        let published = published(MODEL);
        source
            .admit(Some(&node), &sa("echo"), 1, &published)
            .unwrap();
        assert_eq!(registrations.entries().len(), 1);
    }

    #[test]
    fn a_plain_client_gets_the_shared_snapshot() {
        let (source, _) = source();
        let published = published(MODEL);
        let mut node = source.admit(None, &sa("client"), 1, &published).unwrap();
        assert!(Arc::ptr_eq(&node.of(&published), &published.snapshot));
    }

    #[test]
    fn a_refused_node_registers_nothing() {
        let (source, registrations) = source();
        let restricted = MODEL.replace(
            "protocol: http}]",
            "protocol: http}]\n  serviceAccounts: [echo]",
        );
        let published = published(&restricted);
        let cases = [
            (sidecar_node("http"), sa("intruder"), Code::PermissionDenied),
            (sidecar_node("admin"), sa("echo"), Code::InvalidArgument),
            (
                sidecar_node("http"),
                SpiffeId::parse("spiffe://example.org/gateway").unwrap(),
                Code::PermissionDenied,
            ),
        ];
        for (node, peer, code) in cases {
            let Err(status) = source.admit(Some(&node), &peer, 1, &published) else {
                panic!("{peer} admitted");
            };
            assert_eq!(status.code(), code, "{peer}: {}", status.message());
        }
        assert!(registrations.entries().is_empty());
    }
}
