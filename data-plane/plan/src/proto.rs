//! Reading protobuf fields as Envoy reads them: durations (unset, zero,
//! malformed) and fractional percentages. A leaf, shared by the plan
//! compiler and what it builds.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use crate::{Refusal, Result};

/// A duration field; unset or zero is `None`.
pub(crate) fn duration(
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
) -> Option<Duration> {
    d.filter(|d| d.seconds > 0 || d.nanos > 0)
        .map(|d| Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32))
}

/// A duration field as Envoy reads a timeout: unset is `default`, zero is
/// none (the timeout off), a negative or malformed one is refused.
pub(crate) fn checked_duration(
    field: &str,
    d: Option<&envoy_types::pb::google::protobuf::Duration>,
    default: Option<Duration>,
) -> Result<Option<Duration>> {
    let Some(d) = d else { return Ok(default) };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(Refusal::invalid(format!(
            "{field}: {}s {}ns is not a valid duration (negative or nanos out of range)",
            d.seconds, d.nanos
        )));
    }
    Ok(duration(Some(d)))
}

/// A fraction as a percentage; unset is 100 %.
pub(crate) fn percent(p: Option<&envoy_types::pb::envoy::r#type::v3::FractionalPercent>) -> f64 {
    use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
    let Some(p) = p else { return 100.0 };
    let denominator = match DenominatorType::try_from(p.denominator) {
        Ok(DenominatorType::TenThousand) => 10_000.0,
        Ok(DenominatorType::Million) => 1_000_000.0,
        _ => 100.0,
    };
    f64::from(p.numerator) * 100.0 / denominator
}

pub(crate) fn decode<M: Message + Default>(any: &Any, expected: &str) -> Result<M> {
    if any.type_url != expected {
        return Err(Refusal::invalid(format!(
            "is a {}, expected {expected}",
            any.type_url
        )));
    }
    M::decode(any.value.as_slice()).map_err(|e| Refusal::invalid(format!("does not decode: {e}")))
}

pub(crate) fn socket_addr(address: Option<&Address>) -> Result<SocketAddr> {
    let Some(address::Address::SocketAddress(s)) = address.and_then(|a| a.address.as_ref()) else {
        return Err(Refusal::unsupported(
            "address: only socket addresses are supported".to_owned(),
        ));
    };
    let Some(socket_address::PortSpecifier::PortValue(port)) = s.port_specifier else {
        return Err(Refusal::invalid("address: needs a port_value".to_owned()));
    };
    let ip: std::net::IpAddr = s
        .address
        .parse()
        .map_err(|_| Refusal::invalid(format!("address: {:?} is not an IP address", s.address)))?;
    let port = u16::try_from(port)
        .map_err(|_| Refusal::invalid(format!("address: port {port} is out of range")))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_as_envoy_reads_them_and_the_rest_refused() {
        use envoy_types::pb::envoy::config::core::v3::{Pipe, SocketAddress};
        let socket = |ip: &str, port: Option<u32>| Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                port_specifier: port.map(socket_address::PortSpecifier::PortValue),
                ..Default::default()
            })),
        };
        assert_eq!(
            socket_addr(Some(&socket("10.0.0.1", Some(8080)))),
            Ok("10.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            socket_addr(Some(&socket("::1", Some(53)))),
            Ok("[::1]:53".parse().unwrap())
        );
        let pipe = Address {
            address: Some(address::Address::Pipe(Pipe {
                path: "/run/x.sock".into(),
                ..Default::default()
            })),
        };
        for (address, why) in [
            (None, "only socket addresses"),
            (Some(pipe), "only socket addresses"),
            (Some(socket("10.0.0.1", None)), "needs a port_value"),
            (Some(socket("web.shop", Some(80))), "is not an IP address"),
            (Some(socket("10.0.0.1", Some(70000))), "out of range"),
        ] {
            let error = socket_addr(address.as_ref()).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        }
    }

    #[test]
    fn timeouts_unset_zero_and_malformed_read_as_envoy_reads_them() {
        use envoy_types::pb::google::protobuf::Duration as Pb;
        let default = Some(Duration::from_secs(15));
        assert_eq!(checked_duration("t", None, default), Ok(default));
        let zero = Pb {
            seconds: 0,
            nanos: 0,
        };
        assert_eq!(checked_duration("t", Some(&zero), default), Ok(None));
        let half = Pb {
            seconds: 0,
            nanos: 500_000_000,
        };
        assert_eq!(
            checked_duration("t", Some(&half), default),
            Ok(Some(Duration::from_millis(500)))
        );
        for bad in [
            Pb {
                seconds: -1,
                nanos: 0,
            },
            Pb {
                seconds: 1,
                nanos: 1_000_000_000,
            },
            Pb {
                seconds: 1,
                nanos: -1,
            },
        ] {
            let error = checked_duration("idle_timeout", Some(&bad), default)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("idle_timeout:"), "{error}");
        }
    }
}
