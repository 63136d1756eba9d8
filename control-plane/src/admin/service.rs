//! `rampart.admin.v1.AdminService`: every call must come over mTLS with the
//! admin SVID; anyone else gets PermissionDenied (or Unauthenticated with no
//! certificate at all) and learns nothing.

use std::sync::Arc;
use std::time::Duration;

use rampart_api::admin::admin_service_server::AdminService as AdminApi;
use rampart_api::admin::*;
use rampart_certs::{SpiffeId, VerifiedCsr};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::admission::running::RunningReport;
use crate::ca::{self, CaHandle, Progress, Rotator};
use crate::metrics::Metrics;
use crate::model_store::Mesh;
use crate::names::{check_namespace, check_service_account};
use crate::store::JoinTokens;
use crate::xds::StreamRegistry;

/// Default and maximum join-token lifetimes.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Serves the admin API.
pub struct AdminService {
    ca: CaHandle,
    tokens: JoinTokens,
    metrics: Arc<Metrics>,
    mesh: Mesh,
    streams: StreamRegistry,
    /// The continuous evaluation of the security policy (in a cluster).
    running: Option<watch::Receiver<Arc<RunningReport>>>,
    /// Root rotation, for a self-signed CA outside Kubernetes.
    rotator: Option<Rotator>,
    admin: SpiffeId,
}

impl AdminService {
    pub fn new(
        ca: CaHandle,
        tokens: JoinTokens,
        mesh: Mesh,
        streams: StreamRegistry,
        running: Option<watch::Receiver<Arc<RunningReport>>>,
        rotator: Option<Rotator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let admin = rampart_certs::well_known::admin_id(ca.current().trust_domain());
        Self {
            ca,
            tokens,
            metrics,
            mesh,
            streams,
            running,
            rotator,
            admin,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match crate::peer::caller_spiffe_id(request) {
            Some(id) if id == self.admin => Ok(()),
            Some(id) => {
                tracing::warn!(caller = %id, "admin call refused: not the admin identity");
                Err(Status::permission_denied(format!("{id} is not an admin")))
            }
            None => Err(Status::unauthenticated(
                "admin calls need the admin credential (meshctl --data-dir or --credentials)",
            )),
        }
    }
}

fn check_identity(namespace: &str, service_account: &str) -> Result<(), Status> {
    check_namespace(namespace).map_err(|e| Status::invalid_argument(e.to_string()))?;
    check_service_account(service_account).map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl AdminApi for AdminService {
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        check_identity(&req.namespace, &req.service_account)?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s if s > 0 && s as u64 <= MAX_TOKEN_TTL.as_secs() => Duration::from_secs(s as u64),
            s => {
                return Err(Status::invalid_argument(format!(
                    "ttl_seconds {s} is out of range: 1..={} (0 = default 600)",
                    MAX_TOKEN_TTL.as_secs()
                )));
            }
        };
        let spiffe_id = self
            .ca
            .current()
            .trust_domain()
            .workload_id(&req.namespace, &req.service_account)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (token, record) = self
            .tokens
            .create(&req.namespace, &req.service_account, ttl)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.metrics.join_tokens_created.inc();
        tracing::info!(%spiffe_id, ttl_seconds = ttl.as_secs(), "join token created");
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            spiffe_id: spiffe_id.to_string(),
            expires_at_unix: record.expires_at_unix,
        }))
    }

    async fn get_trust_bundle(
        &self,
        request: Request<GetTrustBundleRequest>,
    ) -> Result<Response<GetTrustBundleResponse>, Status> {
        self.authorize(&request)?;
        let ca = self.ca.current();
        Ok(Response::new(GetTrustBundleResponse {
            trust_domain: ca.trust_domain().to_string(),
            roots_der: ca.bundle().roots().iter().map(|r| r.to_vec()).collect(),
        }))
    }

    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<IssueCertificateResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        check_identity(&req.namespace, &req.service_account)?;
        let id = self
            .ca
            .current()
            .trust_domain()
            .workload_id(&req.namespace, &req.service_account)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ttl = ca::service::requested_ttl(req.ttl_seconds)?;
        let authority = self.ca.current();
        let result = VerifiedCsr::from_der(&req.csr_der)
            .map_err(ca::service::csr_status)
            .and_then(|csr| ca::service::sign(&authority, &csr, &id, ttl));
        let issued = match result {
            Ok(issued) => issued,
            Err(status) => {
                self.metrics
                    .count_sign("admin", ca::service::result_label(&status));
                return Err(status);
            }
        };
        self.metrics.count_sign("admin", "issued");
        tracing::info!(spiffe_id = %id, "issued SVID by admin request");
        Ok(Response::new(IssueCertificateResponse {
            spiffe_id: id.to_string(),
            cert_chain_der: issued.chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle_der: authority
                .bundle()
                .roots()
                .iter()
                .map(|c| c.to_vec())
                .collect(),
            expires_at_unix: issued.not_after.unix_timestamp(),
        }))
    }

    async fn apply_resources(
        &self,
        request: Request<ApplyResourcesRequest>,
    ) -> Result<Response<ApplyResourcesResponse>, Status> {
        self.authorize(&request)?;
        let response = super::mesh::apply(
            &self.mesh,
            self.ca.current().trust_domain(),
            request.into_inner(),
        )
        .await?;
        for result in &response.results {
            if let Some(r) = &result.r#ref {
                tracing::info!(kind = %r.kind, namespace = %r.namespace, name = %r.name, outcome = %result.outcome, "applied");
            }
        }
        Ok(Response::new(response))
    }

    async fn get_resources(
        &self,
        request: Request<GetResourcesRequest>,
    ) -> Result<Response<GetResourcesResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(super::mesh::get(
            &self.mesh,
            request.into_inner(),
        )?))
    }

    async fn delete_resources(
        &self,
        request: Request<DeleteResourcesRequest>,
    ) -> Result<Response<DeleteResourcesResponse>, Status> {
        self.authorize(&request)?;
        let response = super::mesh::delete(&self.mesh, request.into_inner()).await?;
        for r in &response.deleted {
            tracing::info!(kind = %r.kind, namespace = %r.namespace, name = %r.name, "deleted");
        }
        Ok(Response::new(response))
    }

    async fn proxy_status(
        &self,
        request: Request<ProxyStatusRequest>,
    ) -> Result<Response<ProxyStatusResponse>, Status> {
        self.authorize(&request)?;
        Ok(Response::new(ProxyStatusResponse {
            proxies: self.streams.list(),
        }))
    }

    async fn proxy_config(
        &self,
        request: Request<ProxyConfigRequest>,
    ) -> Result<Response<ProxyConfigResponse>, Status> {
        self.authorize(&request)?;
        let node_id = request.into_inner().node_id;
        if node_id.is_empty() {
            return Err(Status::invalid_argument("name the proxy (its node id)"));
        }
        let (proxy, resources) = self.streams.config(&node_id).await.ok_or_else(|| {
            Status::not_found(format!(
                "no connected proxy has node id {node_id:?} (see meshctl proxy-status)"
            ))
        })?;
        Ok(Response::new(ProxyConfigResponse {
            proxy: Some(proxy),
            resources,
        }))
    }

    async fn policy_report(
        &self,
        request: Request<PolicyReportRequest>,
    ) -> Result<Response<PolicyReportResponse>, Status> {
        self.authorize(&request)?;
        let namespace = request.into_inner().namespace;
        let running = self.running.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this control plane runs standalone: the running pods are judged only in a cluster (--kubernetes)",
            )
        })?;
        let report = running.borrow().clone();
        Ok(Response::new(policy_report(&report, &namespace)))
    }

    async fn rotate_root(
        &self,
        request: Request<RotateRootRequest>,
    ) -> Result<Response<RootRotationStatus>, Status> {
        self.authorize(&request)?;
        let rotator = self.rotator.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this control plane runs a plug-in CA: it is rotated by changing its files \
                 (add the new root to root-cert.pem, then sign with it, then drop the old one; docs/identity.md)",
            )
        })?;
        let progress = rotator
            .start()
            .await
            .map_err(|e| Status::failed_precondition(format!("{e:#}")))?;
        tracing::info!("root rotation requested by the admin");
        Ok(Response::new(rotation_status(Some(&progress))))
    }

    async fn get_root_rotation(
        &self,
        request: Request<GetRootRotationRequest>,
    ) -> Result<Response<RootRotationStatus>, Status> {
        self.authorize(&request)?;
        let progress = match &self.rotator {
            Some(rotator) => Some(rotator.progress().await),
            None => None,
        };
        let mut status = rotation_status(progress.as_ref());
        if progress.is_none() {
            status.roots = self.ca.current().bundle().roots().len() as u32;
            status.streams = self.streams.list().len() as u32;
        }
        Ok(Response::new(status))
    }
}

/// The admin API's view of a rotation; `None` if this CA cannot rotate.
fn rotation_status(progress: Option<&Progress>) -> RootRotationStatus {
    let Some(p) = progress else {
        return RootRotationStatus::default();
    };
    RootRotationStatus {
        phase: p.phase.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        since_unix: p.since_unix,
        roots: p.roots as u32,
        streams: p.streams as u32,
        without_bundle: p.without_bundle.clone(),
        on_old_root: p.on_old_root.clone(),
        supported: true,
    }
}

/// The admin API's view of the continuous evaluation, for `namespace` (all if empty).
fn policy_report(report: &RunningReport, namespace: &str) -> PolicyReportResponse {
    let wanted = |ns: &str| namespace.is_empty() || ns == namespace;
    let pods = report
        .pods
        .iter()
        .filter(|p| wanted(&p.namespace))
        .map(|p| PodPolicyReport {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            findings: p
                .report
                .findings
                .iter()
                .map(|f| PolicyFinding {
                    policy: f.source.clone(),
                    action: f.action.as_str().to_owned(),
                    violations: f
                        .violations
                        .iter()
                        .map(|v| PolicyViolation {
                            rule: v.rule.clone(),
                            path: v.path.clone(),
                            message: v.message.clone(),
                            fix: v.fix.clone(),
                        })
                        .collect(),
                })
                .collect(),
            exemptions: p.report.exemptions.clone(),
        })
        .collect();
    let pods_checked = match namespace.is_empty() {
        true => report.pods_checked(),
        false => report.checked.get(namespace).copied().unwrap_or(0),
    };
    PolicyReportResponse {
        evaluated_at_unix: report
            .evaluated_at
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs() as i64),
        pods_checked: pods_checked as u32,
        pods,
        error: report.error.clone().unwrap_or_default(),
    }
}
