//! The resource types Rampart serves over ADS, named by their protobuf
//! messages (so a URL is never written by hand).

use std::sync::LazyLock;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Name;

/// The resource types, in make-before-break push order: the trust bundle
/// before the clusters and listeners that use it, clusters before their
/// endpoints, listeners before their routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeUrl {
    Secret,
    Cluster,
    Endpoint,
    Listener,
    Route,
}

/// `type.googleapis.com/<full name>` of each type, in `ORDER`.
static URLS: LazyLock<[String; 5]> = LazyLock::new(|| {
    [
        Secret::type_url(),
        Cluster::type_url(),
        ClusterLoadAssignment::type_url(),
        Listener::type_url(),
        RouteConfiguration::type_url(),
    ]
});

impl TypeUrl {
    /// Every type, in push order.
    pub const ORDER: [TypeUrl; 5] = [
        TypeUrl::Secret,
        TypeUrl::Cluster,
        TypeUrl::Endpoint,
        TypeUrl::Listener,
        TypeUrl::Route,
    ];

    /// The `type.googleapis.com/...` URL.
    pub fn as_str(self) -> &'static str {
        &URLS[self as usize]
    }

    /// Parses a type URL.
    pub fn parse(url: &str) -> Option<TypeUrl> {
        TypeUrl::ORDER.into_iter().find(|t| t.as_str() == url)
    }

    /// Short name for logs and metrics: `sds`, `cds`, `eds`, `lds`, `rds`.
    pub fn short(self) -> &'static str {
        match self {
            TypeUrl::Secret => "sds",
            TypeUrl::Cluster => "cds",
            TypeUrl::Endpoint => "eds",
            TypeUrl::Listener => "lds",
            TypeUrl::Route => "rds",
        }
    }

    /// Whether an empty subscription may mean "everything" (LDS and CDS).
    pub fn supports_wildcard(self) -> bool {
        matches!(self, TypeUrl::Cluster | TypeUrl::Listener)
    }
}

impl std::fmt::Display for TypeUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::TypeUrl;

    #[test]
    fn urls_are_envoys() {
        assert_eq!(
            TypeUrl::Endpoint.as_str(),
            "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
        );
        assert_eq!(
            TypeUrl::Secret.as_str(),
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
        );
        for t in TypeUrl::ORDER {
            assert_eq!(TypeUrl::parse(t.as_str()), Some(t));
        }
        assert_eq!(
            TypeUrl::parse("type.googleapis.com/envoy.config.cluster.v3.Clusters"),
            None
        );
    }
}
