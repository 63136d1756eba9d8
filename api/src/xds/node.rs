//! The `rampart.*` keys of an xDS node's metadata: what a proxy says it is,
//! serves and calls. Every value is a string, so any xDS client (Envoy's
//! bootstrap, grpcio, rampart-proxy) can send them:
//!
//! ```text
//! rampart.sidecar            = "true"
//! rampart.admin              = "127.0.0.1:15000"       its admin port (meshctl identity)
//! rampart.service            = "echo"                  the service it serves (its namespace)
//! rampart.address            = "127.0.0.1"             where peers reach it
//! rampart.ports              = "http=18081,grpc=15061" per service port: where it listens for peers
//! rampart.app_ports          = "http=8081"             where the app listens on 127.0.0.1
//!                                                      (default: the service port number)
//! rampart.labels             = "app=echo,version=v1"
//! rampart.locality           = "region/zone"
//! rampart.dependencies       = "db.data,auth.default"  only these services
//! rampart.outbound_listeners = "127.0.0.1:15080=echo.default:8080,..."
//! ```
//!
//! A node's namespace and service account are never part of it: the
//! control plane takes them from the SVID the node connected with.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};

const SIDECAR: &str = "rampart.sidecar";
const ADMIN: &str = "rampart.admin";
const SERVICE: &str = "rampart.service";
const ADDRESS: &str = "rampart.address";
const PORTS: &str = "rampart.ports";
const APP_PORTS: &str = "rampart.app_ports";
const LABELS: &str = "rampart.labels";
const LOCALITY: &str = "rampart.locality";
const DEPENDENCIES: &str = "rampart.dependencies";
const OUTBOUND_LISTENERS: &str = "rampart.outbound_listeners";

/// What was wrong with a node's metadata, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MetadataError(pub(crate) String);

fn invalid(message: String) -> MetadataError {
    MetadataError(message)
}

/// Everything a node's `rampart.*` metadata says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SidecarMetadata {
    /// It is a sidecar (it gets an inbound side and its own view).
    pub sidecar: bool,
    /// Where operators reach its admin endpoints.
    pub admin: Option<SocketAddr>,
    /// The endpoint it fronts, if it serves a service.
    pub serves: Option<Serves>,
    pub labels: BTreeMap<String, String>,
    /// `region[/zone[/sub-zone]]`, checked by [`crate::locality::parse`].
    pub locality: Option<String>,
    /// `svc.ns` names it may call; None = every service.
    pub dependencies: Option<BTreeSet<String>>,
    /// The local listeners it asks for; None = none named.
    pub outbound: Option<Vec<OutboundListener>>,
}

/// The service a sidecar serves and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serves {
    pub service: String,
    pub address: IpAddr,
    /// Service port name -> where the sidecar listens for peers (never empty).
    pub ports: BTreeMap<String, u16>,
    /// Service port name -> where the app listens on loopback (a subset of `ports`).
    pub app_ports: BTreeMap<String, u16>,
}

/// One requested listener: local address -> service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundListener {
    pub local: SocketAddr,
    pub service: String,
    pub namespace: String,
    pub port: u16,
}

impl SidecarMetadata {
    /// The node's metadata as this crate reads it; every `rampart.*` key is
    /// checked, and the first wrong one named.
    pub fn from_node(node: &Node) -> Result<SidecarMetadata, MetadataError> {
        let fields = node.metadata.as_ref().map(|m| &m.fields);
        let get = |key: &str| -> Result<Option<&str>, MetadataError> {
            match fields
                .and_then(|f| f.get(key))
                .and_then(|v| v.kind.as_ref())
            {
                None => Ok(None),
                Some(Kind::StringValue(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(invalid(format!("{key} must be a string"))),
            }
        };
        let serves = match get(SERVICE)? {
            None => None,
            Some(service) => {
                let address = get(ADDRESS)?
                    .ok_or_else(|| invalid(format!("{SERVICE} needs {ADDRESS}")))?
                    .parse::<IpAddr>()
                    .map_err(|_| invalid(format!("{ADDRESS} is not an IP address")))?;
                let ports = ports_of(PORTS, get(PORTS)?.unwrap_or_default())?;
                if ports.is_empty() {
                    return Err(invalid(format!(
                        "{SERVICE} needs {PORTS} (service port name=listen port)"
                    )));
                }
                let app_ports = ports_of(APP_PORTS, get(APP_PORTS)?.unwrap_or_default())?;
                if let Some(name) = app_ports.keys().find(|n| !ports.contains_key(*n)) {
                    return Err(invalid(format!(
                        "{APP_PORTS} names {name:?}, which {PORTS} does not"
                    )));
                }
                Some(Serves {
                    service: service.to_owned(),
                    address,
                    ports,
                    app_ports,
                })
            }
        };
        let locality = match get(LOCALITY)? {
            None => None,
            Some(text) => {
                crate::locality::parse(text).map_err(|e| invalid(format!("{LOCALITY}: {e}")))?;
                Some(text.to_owned())
            }
        };
        let admin = match get(ADMIN)? {
            None => None,
            Some(text) => Some(
                text.parse()
                    .map_err(|_| invalid(format!("{ADMIN}: {text:?} is not IP:PORT")))?,
            ),
        };
        Ok(SidecarMetadata {
            sidecar: get(SIDECAR)? == Some("true"),
            admin,
            serves,
            labels: pairs(LABELS, get(LABELS)?.unwrap_or_default())?,
            locality,
            dependencies: get(DEPENDENCIES)?.map(dependencies).transpose()?,
            outbound: get(OUTBOUND_LISTENERS)?.map(outbound).transpose()?,
        })
    }

    /// The metadata as a node carries it (only the keys that say something).
    pub fn to_struct(&self) -> Struct {
        let mut fields = Vec::new();
        if self.sidecar {
            fields.push((SIDECAR, "true".to_owned()));
        }
        if let Some(admin) = self.admin {
            fields.push((ADMIN, admin.to_string()));
        }
        if let Some(s) = &self.serves {
            fields.push((SERVICE, s.service.clone()));
            fields.push((ADDRESS, s.address.to_string()));
            fields.push((PORTS, joined(&s.ports)));
            if !s.app_ports.is_empty() {
                fields.push((APP_PORTS, joined(&s.app_ports)));
            }
        }
        if !self.labels.is_empty() {
            fields.push((LABELS, joined(&self.labels)));
        }
        if let Some(l) = &self.locality {
            fields.push((LOCALITY, l.clone()));
        }
        if let Some(d) = &self.dependencies {
            fields.push((
                DEPENDENCIES,
                d.iter().cloned().collect::<Vec<_>>().join(","),
            ));
        }
        if let Some(o) = &self.outbound {
            let items: Vec<String> = o
                .iter()
                .map(|l| format!("{}={}.{}:{}", l.local, l.service, l.namespace, l.port))
                .collect();
            fields.push((OUTBOUND_LISTENERS, items.join(",")));
        }
        Struct {
            fields: fields
                .into_iter()
                .map(|(k, v)| {
                    let value = Value {
                        kind: Some(Kind::StringValue(v)),
                    };
                    (k.to_owned(), value)
                })
                .collect(),
        }
    }
}

/// `k=v,k=v`, as [`pairs`] reads it.
fn joined<V: std::fmt::Display>(map: &BTreeMap<String, V>) -> String {
    let items: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    items.join(",")
}

/// Parses `k=v,k=v`.
fn pairs(key: &str, text: &str) -> Result<BTreeMap<String, String>, MetadataError> {
    let mut out = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| invalid(format!("{key}: {item:?} is not NAME=VALUE")))?;
        if out.insert(k.to_owned(), v.to_owned()).is_some() {
            return Err(invalid(format!("{key}: {k:?} is given twice")));
        }
    }
    Ok(out)
}

/// Parses `name=port,name=port`.
fn ports_of(key: &str, text: &str) -> Result<BTreeMap<String, u16>, MetadataError> {
    pairs(key, text)?
        .into_iter()
        .map(|(name, port)| match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok((name, p)),
            _ => Err(invalid(format!(
                "{key}: {port:?} (for {name}) is not a port"
            ))),
        })
        .collect()
}

/// Parses `svc.ns,svc.ns`.
fn dependencies(text: &str) -> Result<BTreeSet<String>, MetadataError> {
    let mut names = BTreeSet::new();
    for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if name
            .split_once('.')
            .is_none_or(|(s, n)| s.is_empty() || n.is_empty())
        {
            return Err(invalid(format!(
                "{DEPENDENCIES}: {name:?} is not SERVICE.NAMESPACE"
            )));
        }
        names.insert(name.to_owned());
    }
    Ok(names)
}

/// Parses `LOCAL_IP:PORT=SERVICE.NAMESPACE:PORT,...`.
fn outbound(text: &str) -> Result<Vec<OutboundListener>, MetadataError> {
    let mut out: Vec<OutboundListener> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let listener: OutboundListener = item
            .parse()
            .map_err(|e| invalid(format!("{OUTBOUND_LISTENERS}: {e}")))?;
        if out.iter().any(|o| o.local == listener.local) {
            return Err(invalid(format!(
                "{OUTBOUND_LISTENERS}: {item:?}: another listener already listens on {}",
                listener.local
            )));
        }
        out.push(listener);
    }
    Ok(out)
}

/// `LOCAL_IP:PORT=SERVICE.NAMESPACE:PORT` (also rampart-proxy's `--outbound`).
impl std::str::FromStr for OutboundListener {
    type Err = String;

    fn from_str(item: &str) -> Result<Self, String> {
        let bad = |what: String| format!("{item:?}: {what}");
        let (local, target) = item
            .split_once('=')
            .ok_or_else(|| bad("expected LOCAL_IP:PORT=SERVICE.NAMESPACE:PORT".into()))?;
        let local: SocketAddr = local
            .parse()
            .map_err(|_| bad(format!("{local:?} is not IP:PORT")))?;
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{target:?} has no :PORT")))?;
        let (service, namespace) = host
            .split_once('.')
            .filter(|(s, n)| !s.is_empty() && !n.is_empty())
            .ok_or_else(|| bad(format!("{host:?} is not SERVICE.NAMESPACE")))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad(format!("{port:?} is not a port")))?;
        Ok(OutboundListener {
            local,
            service: service.to_owned(),
            namespace: namespace.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(pairs: &[(&str, &str)]) -> Node {
        Node {
            metadata: Some(Struct {
                fields: pairs
                    .iter()
                    .map(|(k, v)| {
                        let value = Value {
                            kind: Some(Kind::StringValue((*v).to_owned())),
                        };
                        ((*k).to_owned(), value)
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let metadata = SidecarMetadata {
            sidecar: true,
            admin: Some("127.0.0.1:15000".parse().unwrap()),
            serves: Some(Serves {
                service: "echo".into(),
                address: "10.0.0.7".parse().unwrap(),
                ports: [("http".into(), 18081), ("grpc".into(), 15061)].into(),
                app_ports: [("http".into(), 8081)].into(),
            }),
            labels: [
                ("app".into(), "echo".into()),
                ("version".into(), "v1".into()),
            ]
            .into(),
            locality: Some("r1/z1".into()),
            dependencies: Some(["db.data".to_owned()].into()),
            outbound: Some(vec![OutboundListener {
                local: "127.0.0.1:15080".parse().unwrap(),
                service: "echo".into(),
                namespace: "default".into(),
                port: 8080,
            }]),
        };
        let node = Node {
            metadata: Some(metadata.to_struct()),
            ..Default::default()
        };
        assert_eq!(SidecarMetadata::from_node(&node), Ok(metadata));
        assert_eq!(
            SidecarMetadata::from_node(&Node::default()),
            Ok(SidecarMetadata::default())
        );
    }

    #[test]
    fn each_mistake_names_its_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("rampart.service", "echo")],
                "rampart.service needs rampart.address",
            ),
            (
                &[("rampart.service", "echo"), ("rampart.address", "here")],
                "rampart.address is not an IP address",
            ),
            (
                &[("rampart.service", "echo"), ("rampart.address", "10.0.0.1")],
                "rampart.service needs rampart.ports",
            ),
            (
                &[
                    ("rampart.service", "echo"),
                    ("rampart.address", "10.0.0.1"),
                    ("rampart.ports", "http=port"),
                ],
                "rampart.ports: \"port\" (for http) is not a port",
            ),
            (
                &[
                    ("rampart.service", "echo"),
                    ("rampart.address", "10.0.0.1"),
                    ("rampart.ports", "http=1"),
                    ("rampart.app_ports", "grpc=2"),
                ],
                "rampart.app_ports names \"grpc\", which rampart.ports does not",
            ),
            (
                &[("rampart.labels", "a=1,a=2")],
                "rampart.labels: \"a\" is given twice",
            ),
            (
                &[("rampart.labels", "a")],
                "rampart.labels: \"a\" is not NAME=VALUE",
            ),
            (
                &[("rampart.locality", "a b")],
                "rampart.locality: \"a b\" is not a locality",
            ),
            (
                &[("rampart.dependencies", "db")],
                "\"db\" is not SERVICE.NAMESPACE",
            ),
            (
                &[("rampart.admin", "x")],
                "rampart.admin: \"x\" is not IP:PORT",
            ),
            (
                &[("rampart.outbound_listeners", "127.0.0.1:1=echo:80")],
                "\"echo\" is not SERVICE.NAMESPACE",
            ),
            (
                &[(
                    "rampart.outbound_listeners",
                    "127.0.0.1:1=a.b:80,127.0.0.1:1=c.d:80",
                )],
                "already listens on 127.0.0.1:1",
            ),
        ];
        for (pairs, expected) in cases {
            let error = SidecarMetadata::from_node(&node(pairs))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{pairs:?}: {error}");
        }
        let mut not_a_string = node(&[]);
        not_a_string.metadata.as_mut().unwrap().fields.insert(
            "rampart.sidecar".into(),
            Value {
                kind: Some(Kind::BoolValue(true)),
            },
        );
        assert_eq!(
            SidecarMetadata::from_node(&not_a_string)
                .unwrap_err()
                .to_string(),
            "rampart.sidecar must be a string"
        );
    }
}
