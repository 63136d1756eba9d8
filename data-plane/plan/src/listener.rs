//! Listeners: filter chains told apart by transport and ALPN, the network
//! RBAC checked once per connection, and the terminal filter (an HTTP
//! connection manager or a TCP proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::transport_socket;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter, listener_filter};
use envoy_types::pb::envoy::config::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;

use crate::access_log::{self, AccessLogPlan, Of};
use crate::connection_manager::{DEFAULT_IDLE_TIMEOUT, HttpPlan, http_plan};
use crate::proto::{checked_duration, decode, socket_addr};
use crate::rbac;
use crate::{Refusal, Result};

const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

const NETWORK_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";

const HTTP_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";

const TLS_INSPECTOR: &str =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";

const HCM: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

#[derive(Debug, PartialEq)]
pub struct ListenerPlan {
    pub name: String,
    pub address: SocketAddr,
    pub chains: Vec<ChainPlan>,
    /// Bound to its address (false: only reached through capture).
    pub bind: bool,
    /// A sidecar's inbound listener (`inbound|PORT`): with capture it is
    /// reached through the inbound capture port instead of being bound.
    pub inbound: bool,
}

/// Which connections a filter chain takes, told apart on the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Any,
    Tls,
    Plaintext,
}

impl Transport {
    /// Whether a chain of this transport takes a connection that is (or is
    /// not) TLS.
    pub fn takes(self, tls: bool) -> bool {
        match self {
            Transport::Any => true,
            Transport::Tls => tls,
            Transport::Plaintext => !tls,
        }
    }
}

#[derive(Debug, PartialEq)]
pub struct ChainPlan {
    pub name: String,
    pub transport: Transport,
    /// The application protocols the chain takes (`filter_chain_match.
    /// application_protocols`; empty: any): under TLS the ALPN negotiated,
    /// in plaintext `http/1.1` or `h2c` as detected on the first bytes.
    pub application_protocols: Vec<String>,
    /// Terminate TLS, requiring a client SVID (the mesh's mTLS).
    pub terminate_mtls: bool,
    /// Checked once per connection, before any byte reaches the app.
    pub network_rbac: Vec<Rbac>,
    pub app: App,
}

#[derive(Debug, PartialEq)]
pub enum App {
    Http(HttpPlan),
    Tcp {
        cluster: String,
        /// Close the connection after this long with no byte either way
        /// (`TcpProxy.idle_timeout`; Envoy's default 1 h; None: never).
        idle_timeout: Option<Duration>,
        /// One JSON line per connection on stdout, if configured.
        access_log: Option<Arc<AccessLogPlan>>,
    },
}

/// Compiles one listener (`None` for an API listener, which binds nothing).
pub fn listener_plan(listener: &Listener) -> Result<Option<ListenerPlan>> {
    if listener.api_listener.is_some() {
        return Ok(None);
    }
    let address = socket_addr(listener.address.as_ref())?;
    for f in &listener.listener_filters {
        match &f.config_type {
            Some(listener_filter::ConfigType::TypedConfig(any))
                if any.type_url == TLS_INSPECTOR || any.type_url == HTTP_INSPECTOR => {}
            _ => {
                return Err(Refusal::unsupported(format!(
                    "listener filter {:?} is not supported (only the TLS and HTTP inspectors)",
                    f.name
                )));
            }
        }
    }
    let mut chains = Vec::new();
    for (i, chain) in listener.filter_chains.iter().enumerate() {
        let at = |e: Refusal| e.at(format!("filter_chains[{i}]"));
        let matching = chain.filter_chain_match.clone().unwrap_or_default();
        let transport = match matching.transport_protocol.as_str() {
            "" => Transport::Any,
            "tls" => Transport::Tls,
            "raw_buffer" => Transport::Plaintext,
            other => {
                return Err(at(Refusal::unsupported(format!(
                    "transport_protocol {other:?} is not supported"
                ))));
            }
        };
        let unsupported = [
            ("destination_port", matching.destination_port.is_some()),
            ("prefix_ranges", !matching.prefix_ranges.is_empty()),
            (
                "direct_source_prefix_ranges",
                !matching.direct_source_prefix_ranges.is_empty(),
            ),
            (
                "source_prefix_ranges",
                !matching.source_prefix_ranges.is_empty(),
            ),
            ("source_ports", !matching.source_ports.is_empty()),
            ("server_names", !matching.server_names.is_empty()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(at(Refusal::unsupported(format!(
                "filter_chain_match.{field} is not supported"
            ))));
        }
        let terminate_mtls = match &chain.transport_socket {
            None => false,
            Some(socket) => {
                let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type
                else {
                    return Err(at(Refusal::invalid(
                        "transport_socket has no typed_config".to_owned(),
                    )));
                };
                let tls: DownstreamTlsContext = decode(any, DOWNSTREAM_TLS).map_err(at)?;
                if !tls.require_client_certificate.is_some_and(|b| b.value) {
                    return Err(at(Refusal::unsupported("TLS without a required client certificate is not supported (the mesh is mTLS)".to_owned())));
                }
                true
            }
        };
        let mut network_rbac = Vec::new();
        let mut app = None;
        for f in &chain.filters {
            let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                return Err(at(Refusal::invalid(format!(
                    "filter {:?} has no typed_config",
                    f.name
                ))));
            };
            if app.is_some() {
                return Err(at(Refusal::invalid(format!(
                    "filter {:?} comes after the terminal filter",
                    f.name
                ))));
            }
            match any.type_url.as_str() {
                NETWORK_RBAC => {
                    let r: NetworkRbac = decode(any, NETWORK_RBAC).map_err(at)?;
                    if let Some(rules) = r.rules {
                        rbac::validate(&rules).map_err(at)?;
                        network_rbac.push(rules);
                    }
                }
                TCP_PROXY => {
                    let t: TcpProxy = decode(any, TCP_PROXY).map_err(at)?;
                    let idle_timeout = checked_duration(
                        "tcp_proxy.idle_timeout",
                        t.idle_timeout.as_ref(),
                        Some(DEFAULT_IDLE_TIMEOUT),
                    )
                    .map_err(at)?;
                    let access_log = access_log::compile(&t.access_log, Of::Tcp).map_err(at)?;
                    match t.cluster_specifier {
                        Some(tcp_proxy::ClusterSpecifier::Cluster(cluster)) => {
                            app = Some(App::Tcp {
                                cluster,
                                idle_timeout,
                                access_log,
                            })
                        }
                        _ => {
                            return Err(at(Refusal::unsupported(
                                "tcp_proxy needs a single cluster".to_owned(),
                            )));
                        }
                    }
                }
                HCM => {
                    let m: HttpConnectionManager = decode(any, HCM).map_err(at)?;
                    app = Some(App::Http(http_plan(&m).map_err(at)?));
                }
                other => {
                    return Err(at(Refusal::unsupported(format!(
                        "network filter {other} is not supported"
                    ))));
                }
            }
        }
        let Some(app) = app else {
            return Err(at(Refusal::invalid(
                "no terminal filter (http_connection_manager or tcp_proxy)".to_owned(),
            )));
        };
        if !matching.application_protocols.is_empty()
            && transport == Transport::Tls
            && !terminate_mtls
        {
            return Err(at(Refusal::unsupported("application_protocols on TLS passed through is not supported (the proxy matches the ALPN it negotiates itself)".to_owned())));
        }
        chains.push(ChainPlan {
            name: chain.name.clone(),
            transport,
            application_protocols: matching.application_protocols,
            terminate_mtls,
            network_rbac,
            app,
        });
    }
    if chains.is_empty() {
        return Err(Refusal::invalid("no filter chains".to_owned()));
    }
    // Chains told apart by ALPN are chosen after the handshake, so the
    // handshake must not depend on which one is chosen.
    for tls in [true, false] {
        let on = |c: &&ChainPlan| c.transport.takes(tls);
        let by_protocol = chains
            .iter()
            .filter(on)
            .any(|c| !c.application_protocols.is_empty());
        let mut terminate = chains.iter().filter(on).map(|c| c.terminate_mtls);
        let first = terminate.next();
        if by_protocol && terminate.any(|t| Some(t) != first) {
            return Err(Refusal::unsupported("filter chains that differ in application_protocols must all terminate mTLS or none (the chain is chosen by the negotiated ALPN)".to_owned()));
        }
    }
    Ok(Some(ListenerPlan {
        name: listener.name.clone(),
        address,
        chains,
        bind: true,
        inbound: listener.name.starts_with("inbound|"),
    }))
}
