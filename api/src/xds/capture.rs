//! What rampart-proxy's traffic capture needs of a service cluster, carried
//! in the cluster's metadata under the `rampart` filter namespace (Envoy
//! ignores it): `protocol: auto` for a port whose protocol is detected per
//! connection, and the service's virtual IPs as `addresses`.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};

use super::MetadataError;

/// The filter metadata namespace.
const NAMESPACE: &str = "rampart";
const PROTOCOL: &str = "protocol";
const ADDRESSES: &str = "addresses";

/// A service cluster's capture metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureMetadata {
    /// The port's protocol is `auto`: detect HTTP or TCP per connection.
    pub detect_protocol: bool,
    /// The service's virtual IPs.
    pub addresses: Vec<IpAddr>,
}

impl CaptureMetadata {
    /// As cluster metadata; None when there is nothing to say.
    pub fn to_metadata(&self) -> Option<Metadata> {
        let string = |s: String| Value {
            kind: Some(Kind::StringValue(s)),
        };
        let mut fields = Vec::new();
        if self.detect_protocol {
            fields.push((PROTOCOL.to_owned(), string("auto".to_owned())));
        }
        if !self.addresses.is_empty() {
            let values = self
                .addresses
                .iter()
                .map(|a| string(a.to_string()))
                .collect();
            let list = Kind::ListValue(ListValue { values });
            fields.push((ADDRESSES.to_owned(), Value { kind: Some(list) }));
        }
        (!fields.is_empty()).then(|| Metadata {
            filter_metadata: [(
                NAMESPACE.to_owned(),
                Struct {
                    fields: fields.into_iter().collect(),
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
    }

    /// Reads a cluster's capture metadata (none is the default).
    pub fn from_cluster(cluster: &Cluster) -> Result<CaptureMetadata, MetadataError> {
        let Some(fields) = cluster
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get(NAMESPACE))
            .map(|s| &s.fields)
        else {
            return Ok(CaptureMetadata::default());
        };
        let detect_protocol = matches!(
            fields.get(PROTOCOL).and_then(|v| v.kind.as_ref()),
            Some(Kind::StringValue(p)) if p == "auto"
        );
        let bad = |what: String| MetadataError(format!("metadata {NAMESPACE}.{ADDRESSES}: {what}"));
        let addresses = match fields.get(ADDRESSES).and_then(|v| v.kind.as_ref()) {
            None => Vec::new(),
            Some(Kind::ListValue(list)) => list
                .values
                .iter()
                .map(|v| match &v.kind {
                    Some(Kind::StringValue(a)) => a
                        .parse::<IpAddr>()
                        .map_err(|_| bad(format!("{a:?} is not an IP address"))),
                    _ => Err(bad("holds a value that is not a string".to_owned())),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(bad("not a list".to_owned())),
        };
        Ok(CaptureMetadata {
            detect_protocol,
            addresses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let capture = CaptureMetadata {
            detect_protocol: true,
            addresses: vec!["10.96.0.10".parse().unwrap(), "fd00::a".parse().unwrap()],
        };
        let cluster = Cluster {
            metadata: capture.to_metadata(),
            ..Default::default()
        };
        assert_eq!(CaptureMetadata::from_cluster(&cluster), Ok(capture));
        assert_eq!(CaptureMetadata::default().to_metadata(), None);
        assert_eq!(
            CaptureMetadata::from_cluster(&Cluster::default()),
            Ok(CaptureMetadata::default())
        );
        let mut wrong = Cluster {
            metadata: CaptureMetadata {
                detect_protocol: false,
                addresses: vec!["10.0.0.1".parse().unwrap()],
            }
            .to_metadata(),
            ..Default::default()
        };
        let fields = &mut wrong
            .metadata
            .as_mut()
            .unwrap()
            .filter_metadata
            .get_mut(NAMESPACE)
            .unwrap()
            .fields;
        fields.insert(
            ADDRESSES.to_owned(),
            Value {
                kind: Some(Kind::StringValue("10.0.0.1".into())),
            },
        );
        assert_eq!(
            CaptureMetadata::from_cluster(&wrong)
                .unwrap_err()
                .to_string(),
            "metadata rampart.addresses: not a list"
        );
    }
}
