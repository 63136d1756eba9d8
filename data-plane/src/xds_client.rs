//! The proxy's ADS stream to rampart-control (delta xDS, over mTLS with its
//! SVID). It subscribes to every cluster and listener, to the endpoints of
//! the EDS clusters and the routes the listeners name, and to `ROOTCA`;
//! it ACKs what it can decode and NACKs, with the resource and the reason,
//! what it cannot, keeping its last good configuration. When the control
//! plane goes away it keeps that configuration, reconnects with backoff and
//! resumes with `initial_resource_versions`, so nothing unchanged is re-sent.
//! The configuration it holds is published for the rest of the proxy.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Node, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use rampart_certs::TrustBundle;
use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config, verify_chain};
use rampart_certs::well_known::control_plane_id;
use rampart_plan::resources::{Config, Held};
use rampart_plan::{Plan, Refusal, compile};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::Identity;
use crate::metrics::{ProxyMetrics, TypeLabels, XdsLabels};
use rampart_api::xds::TypeUrl;

/// The one secret the proxy asks for: the mesh's trust bundle.
pub const ROOTCA: &str = "ROOTCA";

/// Whether `resource` decodes as `type_url`'s message; the reason if not.
fn check(type_url: TypeUrl, resource: &Any) -> Result<(), String> {
    if resource.type_url != type_url.as_str() {
        return Err(format!("is a {}, expected {type_url}", resource.type_url));
    }
    let bytes = resource.value.as_slice();
    let decoded = match type_url {
        TypeUrl::Secret => Secret::decode(bytes).map(drop),
        TypeUrl::Cluster => Cluster::decode(bytes).map(drop),
        TypeUrl::Endpoint => ClusterLoadAssignment::decode(bytes).map(drop),
        TypeUrl::Listener => Listener::decode(bytes).map(drop),
        TypeUrl::Route => RouteConfiguration::decode(bytes).map(drop),
    };
    decoded.map_err(|e| format!("does not decode: {e}"))
}

/// Where to connect and who this proxy is.
pub struct Settings {
    pub control_plane: String,
    pub node: Node,
    /// The proxy takes captured traffic (see `rds_routes`).
    pub capture: bool,
    /// State-of-the-world ADS instead of delta.
    pub sotw: bool,
}

/// Where the client publishes what it holds: the raw resources (for
/// `/config_dump`), their compiled plan (for the traffic path) and the
/// trust bundle of `ROOTCA`, into the identity everything else follows
/// (TLS, the Workload API, SDS).
pub struct Outputs {
    pub config: watch::Sender<Arc<Config>>,
    pub plan: watch::Sender<Arc<Plan>>,
    pub identity: watch::Sender<Arc<Identity>>,
    pub metrics: Arc<ProxyMetrics>,
}

/// Runs the ADS client forever, publishing what it holds.
pub async fn run(settings: Settings, out: Outputs) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let result = if settings.sotw {
            stream_once_sotw(&settings, &out).await
        } else {
            stream_once(&settings, &out).await
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) if refused(&e) => {
                // Not transient: the flags (or the model) must change first.
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "the control plane refused this proxy's node: check --service, --port, --app-port, --label, --dependency and --outbound against the mesh model; keeping the last good configuration");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "xDS stream to the control plane ended; keeping the last good configuration");
            }
        }
        wait_releasing_held_routes(backoff, &out).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Sleeps `duration` while disconnected; a route table held back for
/// warming clusters is still released when its wait runs out (nothing
/// would warm them before the stream is back).
async fn wait_releasing_held_routes(duration: Duration, out: &Outputs) {
    let until = tokio::time::Instant::now() + duration;
    loop {
        let Some(deadline) = out.plan.borrow().warming_deadline() else {
            break;
        };
        if tokio::time::Instant::from_std(deadline) >= until {
            break;
        }
        tokio::time::sleep_until(deadline.into()).await;
        let released = release_held_routes(out);
        // The same deadline again: nothing more to release before `until`.
        if !released || out.plan.borrow().warming_deadline() == Some(deadline) {
            break;
        }
    }
    tokio::time::sleep_until(until).await;
}

/// Compiles the plan again so that route tables whose warming wait has run
/// out are used; `false` if that failed (it compiled before, so it cannot,
/// but a timer must not spin on it).
fn release_held_routes(out: &Outputs) -> bool {
    let previous = out.plan.borrow().clone();
    let config = out.config.borrow().clone();
    match compile(&config, &previous) {
        Ok(plan) => {
            out.plan.send_replace(Arc::new(plan));
            true
        }
        Err(_) => false,
    }
}

/// Whether the control plane refused the node itself (bad metadata, or an
/// identity that may not serve the service).
fn refused(error: &anyhow::Error) -> bool {
    error.downcast_ref::<tonic::Status>().is_some_and(|s| {
        matches!(
            s.code(),
            tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
        )
    })
}

/// An mTLS channel to the control plane with `current`'s SVID, checking
/// the control plane's SPIFFE ID.
async fn channel(
    settings: &Settings,
    current: &Identity,
) -> anyhow::Result<tonic::transport::Channel> {
    let trust_domain = current.bundle.trust_domain().clone();
    let tls = client_config(
        Some(CurrentSvid::new(&current.svid)?),
        &current.bundle,
        PeerPolicy::exactly(control_plane_id(&trust_domain)),
    )?;
    Ok(rampart_api::connect(&settings.control_plane, tls).await?)
}

/// Which types a response of `type_url` may change the subscriptions of:
/// clusters name endpoints (and, with capture, routes); listeners name routes.
fn follow(type_url: TypeUrl, capture: bool) -> &'static [TypeUrl] {
    match type_url {
        TypeUrl::Cluster if capture => &[TypeUrl::Endpoint, TypeUrl::Route],
        TypeUrl::Cluster => &[TypeUrl::Endpoint],
        TypeUrl::Listener => &[TypeUrl::Route],
        _ => &[],
    }
}

/// The names to subscribe to for EDS and RDS, given what is held.
struct Subscriptions {
    eds: BTreeSet<String>,
    rds: BTreeSet<String>,
}

impl Subscriptions {
    fn of(held: &Config, capture: bool) -> Subscriptions {
        Subscriptions {
            eds: held.eds_clusters(),
            rds: held.rds_routes(capture),
        }
    }

    /// Recomputes `type_url`'s names from `held`; `Some((old, new))` if they changed.
    fn update(
        &mut self,
        type_url: TypeUrl,
        held: &Config,
        capture: bool,
    ) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
        let (wanted, had) = if type_url == TypeUrl::Endpoint {
            (held.eds_clusters(), &mut self.eds)
        } else {
            (held.rds_routes(capture), &mut self.rds)
        };
        (wanted != *had).then(|| (std::mem::replace(had, wanted.clone()), wanted))
    }
}

/// Applies a response (as delta), counts it, publishes what applies and
/// returns the delta-form ACK or NACK.
fn take(out: &Outputs, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
    let kind = TypeUrl::parse(&response.type_url).map_or("other", TypeUrl::short);
    let previous = out.plan.borrow().clone();
    let identity = out.identity.borrow().clone();
    let (ack, next) = apply(&out.config.borrow(), &previous, &identity, response);
    let result = if ack.error_detail.is_some() {
        "nack"
    } else {
        "ack"
    };
    out.metrics
        .xds_updates
        .get_or_create(&XdsLabels {
            r#type: kind,
            result,
        })
        .inc();
    if let Some((next, plan, trust)) = next {
        for t in [
            TypeUrl::Secret,
            TypeUrl::Cluster,
            TypeUrl::Endpoint,
            TypeUrl::Listener,
            TypeUrl::Route,
        ] {
            let held = next.of(t).count() as i64;
            out.metrics
                .xds_resources
                .get_or_create(&TypeLabels { r#type: t.short() })
                .set(held);
        }
        out.config.send_replace(Arc::new(next));
        out.plan.send_replace(Arc::new(plan));
        if let Some(bundle) = trust {
            tracing::info!(
                roots = bundle.roots().len(),
                "trust bundle updated from ROOTCA; new connections verify peers against it"
            );
            out.identity.send_modify(|identity| {
                *identity = Arc::new(Identity {
                    svid: identity.svid.clone(),
                    bundle,
                })
            });
        }
    }
    ack
}

/// What ends a wait on the stream.
enum Next<T> {
    Response(T),
    Closed,
    /// The proxy renewed under a rotation's new signing root: the
    /// connection, made with an SVID of the old root, is made again.
    Rekey,
}

/// The identity an xDS connection is made with, and the identity to
/// follow while it is up.
struct Connected {
    with: Arc<Identity>,
    identity: watch::Receiver<Arc<Identity>>,
}

impl Connected {
    /// Taken before the channel is made with it, so no change is missed.
    fn new(out: &Outputs) -> Self {
        let mut identity = out.identity.subscribe();
        let with = identity.borrow_and_update().clone();
        Self { with, identity }
    }

    /// Whether the SVID now held chains to the bundle's signing root and the
    /// one connected with does not.
    fn stale(&self) -> bool {
        let current = self.identity.borrow();
        let signing = current.bundle.signing_root();
        verify_chain(self.with.svid.chain(), &signing).is_err()
            && crate::identity::issued_by_signing_root(&current)
    }
}

/// The next response on the stream. While a route table is held back for
/// warming clusters, the plan is compiled again when its wait runs out,
/// even if nothing else arrives.
async fn next_response<T>(
    responses: &mut tonic::Streaming<T>,
    out: &Outputs,
    connected: &mut Connected,
) -> Result<Next<T>, tonic::Status> {
    let mut use_timer = true;
    loop {
        let deadline = out.plan.borrow().warming_deadline().filter(|_| use_timer);
        tokio::select! {
            // `message` is cancel safe: nothing is lost if another branch wins.
            response = responses.message() => {
                return Ok(response?.map_or(Next::Closed, Next::Response));
            }
            Ok(()) = connected.identity.changed() => {
                connected.identity.borrow_and_update();
                if connected.stale() {
                    return Ok(Next::Rekey);
                }
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(std::time::Instant::now).into()), if deadline.is_some() => {
                use_timer = release_held_routes(out);
            }
        }
    }
}

/// How a stream loop ended well: reconnect now for a new SVID, else the
/// control plane closed it.
fn ended<T>(next: Next<T>) -> anyhow::Result<()> {
    match next {
        Next::Rekey => {
            tracing::info!("reconnecting to the control plane with the SVID of the new root");
            Ok(())
        }
        _ => anyhow::bail!("the control plane closed the stream"),
    }
}

/// One delta connection: subscribe, resume, ACK/NACK until the stream ends.
async fn stream_once(settings: &Settings, out: &Outputs) -> anyhow::Result<()> {
    let mut connected = Connected::new(out);
    let channel = channel(settings, &connected.with).await?;
    let (tx, rx) = mpsc::channel(16);
    let held = out.config.borrow().clone();
    // Wildcard types first, then what they name; each resumes from what is held.
    let first = |type_url: TypeUrl, names: Vec<String>| DeltaDiscoveryRequest {
        node: Some(settings.node.clone()),
        type_url: type_url.as_str().to_owned(),
        resource_names_subscribe: names,
        initial_resource_versions: held
            .of(type_url)
            .map(|(n, h)| (n.clone(), h.version.clone()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    };
    let mut subscriptions = Subscriptions::of(&held, settings.capture);
    tx.send(first(TypeUrl::Secret, vec![ROOTCA.to_owned()]))
        .await?;
    tx.send(first(TypeUrl::Cluster, Vec::new())).await?;
    tx.send(first(TypeUrl::Listener, Vec::new())).await?;
    tx.send(first(
        TypeUrl::Endpoint,
        subscriptions.eds.iter().cloned().collect(),
    ))
    .await?;
    tx.send(first(
        TypeUrl::Route,
        subscriptions.rds.iter().cloned().collect(),
    ))
    .await?;
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(control_plane = %settings.control_plane, resumed = held.of(TypeUrl::Cluster).count() + held.of(TypeUrl::Listener).count(), "xDS stream open (delta)");
    loop {
        let response = match next_response(&mut responses, out, &mut connected).await? {
            Next::Response(response) => response,
            other => return ended(other),
        };
        let follows =
            TypeUrl::parse(&response.type_url).map_or(&[][..], |t| follow(t, settings.capture));
        tx.send(take(out, response)).await?;
        let now = out.config.borrow().clone();
        for &type_url in follows {
            if let Some((had, wanted)) = subscriptions.update(type_url, &now, settings.capture) {
                tx.send(DeltaDiscoveryRequest {
                    type_url: type_url.as_str().to_owned(),
                    resource_names_subscribe: wanted.difference(&had).cloned().collect(),
                    resource_names_unsubscribe: had.difference(&wanted).cloned().collect(),
                    ..Default::default()
                })
                .await?;
            }
        }
    }
}

/// A resource's name, from the message itself (SotW responses carry none).
fn resource_name(type_url: TypeUrl, any: &Any) -> Result<String, String> {
    let bytes = any.value.as_slice();
    let name = match type_url {
        TypeUrl::Secret => Secret::decode(bytes).map(|r| r.name),
        TypeUrl::Cluster => Cluster::decode(bytes).map(|r| r.name),
        TypeUrl::Endpoint => ClusterLoadAssignment::decode(bytes).map(|r| r.cluster_name),
        TypeUrl::Listener => Listener::decode(bytes).map(|r| r.name),
        TypeUrl::Route => RouteConfiguration::decode(bytes).map(|r| r.name),
    };
    name.map_err(|e| format!("does not decode: {e}"))
}

/// One state-of-the-world connection. Each response is the whole set of a
/// type's resources the proxy asked for: it is applied as a delta against
/// what is held (absent = removed), and ACKed with its version or NACKed
/// with the last accepted one.
async fn stream_once_sotw(settings: &Settings, out: &Outputs) -> anyhow::Result<()> {
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, Resource};
    let mut connected = Connected::new(out);
    let channel = channel(settings, &connected.with).await?;
    let (tx, rx) = mpsc::channel(16);
    let held = out.config.borrow().clone();
    let mut subscriptions = Subscriptions::of(&held, settings.capture);
    // Per type: (accepted version, last nonce).
    let mut state: HashMap<TypeUrl, (String, String)> = HashMap::new();
    let names = |type_url: TypeUrl, s: &Subscriptions| -> Vec<String> {
        match type_url {
            TypeUrl::Secret => vec![ROOTCA.to_owned()],
            TypeUrl::Endpoint => s.eds.iter().cloned().collect(),
            TypeUrl::Route => s.rds.iter().cloned().collect(),
            _ => Vec::new(),
        }
    };
    for type_url in [
        TypeUrl::Secret,
        TypeUrl::Cluster,
        TypeUrl::Listener,
        TypeUrl::Endpoint,
        TypeUrl::Route,
    ] {
        // EDS and RDS are not wildcard types: ask once there are names.
        if matches!(type_url, TypeUrl::Endpoint | TypeUrl::Route)
            && names(type_url, &subscriptions).is_empty()
        {
            continue;
        }
        tx.send(DiscoveryRequest {
            node: Some(settings.node.clone()),
            type_url: type_url.as_str().to_owned(),
            resource_names: names(type_url, &subscriptions),
            ..Default::default()
        })
        .await?;
    }
    let mut responses = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    tracing::info!(control_plane = %settings.control_plane, "xDS stream open (state of the world)");
    loop {
        let response = match next_response(&mut responses, out, &mut connected).await? {
            Next::Response(response) => response,
            other => return ended(other),
        };
        let Some(type_url) = TypeUrl::parse(&response.type_url) else {
            continue;
        };
        let mut resources = Vec::new();
        let mut problems = Vec::new();
        for any in &response.resources {
            match resource_name(type_url, any) {
                Ok(name) => resources.push(Resource {
                    name,
                    version: response.version_info.clone(),
                    resource: Some(any.clone()),
                    ..Default::default()
                }),
                Err(e) => problems.push(e),
            }
        }
        let present: BTreeSet<&str> = resources.iter().map(|r| r.name.as_str()).collect();
        let removed = out
            .config
            .borrow()
            .of(type_url)
            .map(|(n, _)| n.clone())
            .filter(|n| !present.contains(n.as_str()))
            .collect();
        let ack = if problems.is_empty() {
            take(
                out,
                DeltaDiscoveryResponse {
                    type_url: type_url.as_str().to_owned(),
                    nonce: response.nonce.clone(),
                    resources,
                    removed_resources: removed,
                    ..Default::default()
                },
            )
        } else {
            DeltaDiscoveryRequest {
                error_detail: Some(RpcStatus {
                    code: 3,
                    message: problems.join("; "),
                    details: Vec::new(),
                }),
                ..Default::default()
            }
        };
        let entry = state.entry(type_url).or_default();
        if ack.error_detail.is_none() {
            entry.0 = response.version_info.clone();
        }
        entry.1 = response.nonce.clone();
        let now = out.config.borrow().clone();
        let changed: Vec<TypeUrl> = follow(type_url, settings.capture)
            .iter()
            .copied()
            .filter(|f| subscriptions.update(*f, &now, settings.capture).is_some())
            .collect();
        tx.send(DiscoveryRequest {
            type_url: type_url.as_str().to_owned(),
            version_info: entry.0.clone(),
            response_nonce: entry.1.clone(),
            resource_names: names(type_url, &subscriptions),
            error_detail: ack.error_detail,
            ..Default::default()
        })
        .await?;
        // A changed subscription is a new request for that type.
        for follow in changed {
            let (version, nonce) = state.get(&follow).cloned().unwrap_or_default();
            tx.send(DiscoveryRequest {
                type_url: follow.as_str().to_owned(),
                version_info: version,
                response_nonce: nonce,
                resource_names: names(follow, &subscriptions),
                ..Default::default()
            })
            .await?;
        }
    }
}

/// What a response changes: the configuration, its plan, and the trust
/// bundle if a new `ROOTCA` came.
type Applied = (Config, Plan, Option<TrustBundle>);

/// The ACK or NACK for `response`, and what it changes if it applies.
fn apply(
    current: &Config,
    previous: &Plan,
    identity: &Identity,
    response: DeltaDiscoveryResponse,
) -> (DeltaDiscoveryRequest, Option<Applied>) {
    let mut reply = DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    };
    let Some(type_url) = TypeUrl::parse(&response.type_url) else {
        reply.error_detail = Some(RpcStatus {
            code: 3,
            message: format!("{} is not a type this proxy uses", response.type_url),
            details: Vec::new(),
        });
        return (reply, None);
    };
    let problems: Vec<String> = response
        .resources
        .iter()
        .filter_map(|r| {
            let any = r.resource.as_ref()?;
            check(type_url, any)
                .err()
                .map(|e| format!("{}: {e}", r.name))
        })
        .collect();
    if !problems.is_empty() {
        tracing::warn!(r#type = type_url.short(), problems = ?problems, "rejecting an xDS update; keeping the last good configuration");
        reply.error_detail = Some(RpcStatus {
            code: 3,
            message: problems.join("; "),
            details: Vec::new(),
        });
        return (reply, None);
    }
    let mut next = current.clone();
    let map = next.types.entry(type_url).or_default();
    for r in response.resources {
        if let Some(resource) = r.resource {
            map.insert(
                r.name,
                Held {
                    version: r.version,
                    resource: Arc::new(resource),
                },
            );
        }
    }
    for name in response.removed_resources {
        map.remove(&name);
    }
    // The problems, and whether they are all features this proxy lacks
    // (UNIMPLEMENTED) rather than configuration that is wrong
    // (INVALID_ARGUMENT): the NACK's status says which.
    let trust = if type_url == TypeUrl::Secret {
        trust_update(&next, identity).map_err(|e| (vec![e], false))
    } else {
        Ok(None)
    };
    let compiled = compile(&next, previous).map_err(|errors| {
        let unsupported = errors
            .iter()
            .all(|e| matches!(e.reason, Refusal::Unsupported(_)));
        (
            errors.iter().map(ToString::to_string).collect(),
            unsupported,
        )
    });
    match compiled.and_then(|plan| Ok((plan, trust?))) {
        Ok((plan, trust)) => (reply, Some((next, plan, trust))),
        Err((errors, unsupported)) => {
            let message = errors.join("; ");
            let (code, kind) = if unsupported {
                (tonic::Code::Unimplemented, "unsupported")
            } else {
                (tonic::Code::InvalidArgument, "invalid")
            };
            tracing::warn!(r#type = type_url.short(), kind, problems = %message, "rejecting an xDS update this proxy cannot carry; keeping the last good configuration");
            reply.error_detail = Some(RpcStatus {
                code: code as i32,
                message,
                details: Vec::new(),
            });
            (reply, None)
        }
    }
}

/// The trust bundle of the held `ROOTCA`, if it differs from the one in use.
/// A bundle that does not accept this proxy's own SVID is refused: a peer
/// holding it would refuse this proxy, so it can only be a mistake (a root
/// rotation adds the new root before it signs anything).
fn trust_update(config: &Config, identity: &Identity) -> Result<Option<TrustBundle>, String> {
    let Some(held) = config
        .types
        .get(&TypeUrl::Secret)
        .and_then(|m| m.get(ROOTCA))
    else {
        return Ok(None);
    };
    let secret = Secret::decode(held.resource.value.as_slice())
        .map_err(|e| format!("{ROOTCA}: does not decode: {e}"))?;
    let source = match secret.r#type {
        Some(secret::Type::ValidationContext(CertificateValidationContext {
            trusted_ca:
                Some(DataSource {
                    specifier: Some(source),
                    ..
                }),
            ..
        })) => source,
        _ => {
            return Err(format!(
                "{ROOTCA}: not a validation context with trusted_ca"
            ));
        }
    };
    let pem = match source {
        data_source::Specifier::InlineString(text) => text.into_bytes(),
        data_source::Specifier::InlineBytes(bytes) => bytes,
        _ => {
            return Err(format!(
                "{ROOTCA}: trusted_ca must be inline PEM (a file or variable names nothing on this proxy's machine)"
            ));
        }
    };
    let bundle = TrustBundle::from_pem(identity.bundle.trust_domain().clone(), &pem)
        .map_err(|e| format!("{ROOTCA}: {e}"))?;
    verify_chain(identity.svid.chain(), &bundle).map_err(|e| {
        format!("{ROOTCA}: this bundle does not accept the proxy's own SVID ({e}); keeping the bundle in use")
    })?;
    Ok((bundle != identity.bundle).then_some(bundle))
}

#[cfg(test)]
mod tests {
    use envoy_types::util::pack_any;
    use rampart_certs::{
        CertificateAuthority, KeyAndCsr, SpiffeId, Svid, TrustDomain, VerifiedCsr,
    };

    use super::*;

    fn ca(td: &TrustDomain) -> CertificateAuthority {
        let root = CertificateAuthority::generate_root(td).unwrap();
        CertificateAuthority::from_root_pem(
            td.clone(),
            &root.cert_pem,
            &root.key_pem,
            Default::default(),
        )
        .unwrap()
    }

    /// A proxy holding an SVID of `ca` and `ca`'s bundle.
    fn identity(ca: &CertificateAuthority) -> Identity {
        let request = KeyAndCsr::generate().unwrap();
        let csr = VerifiedCsr::from_der(&request.csr_der).unwrap();
        let id = SpiffeId::new(ca.trust_domain().clone(), "/ns/default/sa/me").unwrap();
        let issued = ca.sign(&csr, &id, None).unwrap();
        Identity {
            svid: Svid::new(issued.chain, request.key).unwrap(),
            bundle: ca.bundle().clone(),
        }
    }

    fn holding(source: data_source::Specifier) -> Config {
        let secret = Secret {
            name: ROOTCA.to_owned(),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(DataSource {
                        specifier: Some(source),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
        };
        let mut config = Config::default();
        config.types.entry(TypeUrl::Secret).or_default().insert(
            ROOTCA.to_owned(),
            Held {
                version: "1".to_owned(),
                resource: Arc::new(pack_any(secret)),
            },
        );
        config
    }

    fn pem(text: String) -> data_source::Specifier {
        data_source::Specifier::InlineString(text)
    }

    #[test]
    fn a_rootca_adding_a_root_replaces_the_bundle_in_use() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let (old, new) = (ca(&td), ca(&td));
        let me = identity(&old);
        let both = format!("{}{}", old.bundle().to_pem(), new.bundle().to_pem());
        let bundle = trust_update(&holding(pem(both)), &me).unwrap().unwrap();
        assert_eq!(bundle.roots().len(), 2);
        // The same roots again change nothing.
        let same = holding(pem(old.bundle().to_pem()));
        assert_eq!(trust_update(&same, &me).unwrap(), None);
        // Nothing held: nothing to change.
        assert_eq!(trust_update(&Config::default(), &me).unwrap(), None);
    }

    #[test]
    fn a_rootca_that_would_lock_this_proxy_out_is_refused_with_the_reason() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let (old, new) = (ca(&td), ca(&td));
        let me = identity(&old);
        let cases = [
            (
                pem(new.bundle().to_pem()),
                "does not accept the proxy's own SVID",
            ),
            (pem("not a certificate".into()), "ROOTCA:"),
            (
                data_source::Specifier::Filename("/etc/roots.pem".into()),
                "must be inline PEM",
            ),
        ];
        for (source, reason) in cases {
            let error = trust_update(&holding(source), &me).unwrap_err();
            assert!(error.contains(reason), "{error}");
        }
    }

    #[tokio::test]
    async fn a_held_route_is_released_while_the_control_plane_is_away() {
        use rampart_plan::fixtures::{config, target};
        let first = compile(&config("a"), &Plan::default()).unwrap();
        // The route moved to `b`, which never warms: the old table is held.
        let mut held = compile(&config("b"), &first).unwrap();
        assert_eq!(target(&held), ["a"]);
        // Its wait has run out by now.
        for since in held.held_back.values_mut() {
            *since -= rampart_plan::WARMING_TIMEOUT;
        }
        let td = TrustDomain::new("cluster.local").unwrap();
        let out = Outputs {
            config: watch::channel(Arc::new(config("b"))).0,
            plan: watch::channel(Arc::new(held)).0,
            identity: watch::channel(Arc::new(identity(&ca(&td)))).0,
            metrics: crate::metrics::ProxyMetrics::new(),
        };
        // Disconnected, between two attempts to reconnect.
        wait_releasing_held_routes(Duration::from_millis(50), &out).await;
        assert_eq!(target(&out.plan.borrow()), ["b"]);
    }
}
