//! The workload's identity: a key made here and kept in memory, an SVID
//! obtained with a join token, then renewed at half-life over mTLS with the
//! current SVID. Every change is published on a watch channel that the
//! Workload API (and, later, the listeners) follow.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rampart_api::ca::certificate_service_client::CertificateServiceClient;
use rampart_api::ca::{SignRequest, SignResponse};
use rampart_certs::tls::{CurrentSvid, PeerPolicy, client_config, verify_chain};
use rampart_certs::well_known::control_plane_id;
use rampart_certs::{KeyAndCsr, Svid, TrustBundle, until};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

/// What the workload currently holds.
#[derive(Debug)]
pub struct Identity {
    pub svid: Svid,
    pub bundle: TrustBundle,
}

/// Where and how to get certificates.
#[derive(Clone)]
pub struct CaClient {
    pub control_plane: String,
    /// Roots that authenticate the control plane at bootstrap (renewals use
    /// the bundle in use).
    pub trust_anchor: TrustBundle,
    /// Requested SVID lifetime; `None` for the CA default.
    pub svid_ttl: Option<Duration>,
}

/// Why bootstrapping failed; `Refused` is final (the token is bad).
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("the control plane refused the join token: {0}")]
    Refused(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CaClient {
    /// Signs a new key's CSR, verifying the control plane against `roots`.
    async fn sign(
        &self,
        identity: Option<&Svid>,
        token: Option<&str>,
        roots: &TrustBundle,
    ) -> Result<(Svid, TrustBundle), tonic::Status> {
        let request = KeyAndCsr::generate().map_err(|e| tonic::Status::internal(e.to_string()))?;
        let client_svid = match identity {
            Some(svid) => {
                Some(CurrentSvid::new(svid).map_err(|e| tonic::Status::internal(e.to_string()))?)
            }
            None => None,
        };
        let server = PeerPolicy::exactly(control_plane_id(roots.trust_domain()));
        let tls = client_config(client_svid, roots, server)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        let channel = rampart_api::connect(&self.control_plane, tls)
            .await
            .map_err(|e| {
                tonic::Status::unavailable(format!("connecting to {}: {e}", self.control_plane))
            })?;
        let mut sign = tonic::Request::new(SignRequest {
            csr_der: request.csr_der,
            ttl_seconds: self.svid_ttl.map_or(0, |d| d.as_secs() as i64),
        });
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                tonic::Status::invalid_argument(
                    "the join token has characters not allowed in metadata",
                )
            })?;
            sign.metadata_mut().insert("authorization", value);
        }
        let response = CertificateServiceClient::new(channel)
            .sign(sign)
            .await?
            .into_inner();
        into_identity(response, request.key, roots)
            .map_err(|e| tonic::Status::internal(format!("the CA's answer is unusable: {e:#}")))
    }

    /// Gets the first SVID with a bearer token: a join token or a
    /// Kubernetes ServiceAccount token.
    pub async fn bootstrap(&self, token: &str) -> Result<Identity, BootstrapError> {
        match self.sign(None, Some(token), &self.trust_anchor).await {
            Ok((svid, bundle)) => Ok(Identity { svid, bundle }),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unauthenticated
                        | tonic::Code::PermissionDenied
                        | tonic::Code::InvalidArgument
                ) =>
            {
                Err(BootstrapError::Refused(format!(
                    "{:?}: {}",
                    s.code(),
                    s.message()
                )))
            }
            Err(s) => Err(anyhow::anyhow!("{:?}: {}", s.code(), s.message()).into()),
        }
    }

    /// Renews an SVID, proving identity with it. The control plane is
    /// verified with the bundle in use, which follows root rotations
    /// (`ROOTCA`), not with the anchor the proxy started with.
    pub async fn renew(&self, current: &Identity) -> Result<Identity, tonic::Status> {
        let (svid, bundle) = self
            .sign(Some(&current.svid), None, &current.bundle)
            .await?;
        let wanted = current.svid.spiffe_id();
        if svid.spiffe_id() != wanted {
            return Err(tonic::Status::internal(format!(
                "renewal returned {} instead of {wanted}",
                svid.spiffe_id()
            )));
        }
        Ok(Identity { svid, bundle })
    }
}

fn into_identity(
    response: SignResponse,
    key: rustls_pki_types::PrivatePkcs8KeyDer<'static>,
    anchor: &TrustBundle,
) -> anyhow::Result<(Svid, TrustBundle)> {
    let chain = response
        .cert_chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let svid = Svid::new(chain, key).context("the issued certificate is not a valid SVID")?;
    let roots: Vec<_> = response
        .trust_bundle_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let bundle = if roots.is_empty() {
        anchor.clone()
    } else {
        TrustBundle::new(anchor.trust_domain().clone(), roots)
    };
    Ok((svid, bundle))
}

/// Whether `identity`'s SVID chains to the root its CA signs with now (the
/// bundle's first root). Not so during a root rotation's switch: the SVID
/// is renewed at once rather than at its half-life.
pub fn issued_by_signing_root(identity: &Identity) -> bool {
    verify_chain(identity.svid.chain(), &identity.bundle.signing_root()).is_ok()
}

/// At most this long after a rotation's new signing root arrives, the SVID
/// is renewed: spread so that every proxy does not call the CA at once.
const EARLY_RENEWAL_SPREAD: Duration = Duration::from_secs(5);

/// Renews forever: at each deadline, then with backoff on failure; early
/// (within [`EARLY_RENEWAL_SPREAD`]) when the bundle says the CA signs
/// with another root now.
pub async fn keep_renewed(
    client: CaClient,
    updates: watch::Sender<Arc<Identity>>,
    metrics: Arc<crate::metrics::ProxyMetrics>,
) {
    use crate::metrics::RenewalLabels;
    let mut changes = updates.subscribe();
    let mut backoff = Duration::from_secs(1);
    let mut deadline = updates.borrow().svid.renewal_deadline();
    // The bundle an early renewal was made for: once per bundle, so a CA
    // that does not sign with its first root cannot make this spin.
    let mut renewed_early_for: Option<TrustBundle> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(until(deadline)) => {}
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                let current = changes.borrow_and_update().clone();
                if !issued_by_signing_root(&current)
                    && renewed_early_for.as_ref() != Some(&current.bundle)
                {
                    renewed_early_for = Some(current.bundle.clone());
                    let spread = EARLY_RENEWAL_SPREAD.mul_f64(rand::random::<f64>());
                    tracing::info!(in_ms = spread.as_millis() as u64, "the CA signs with a new root; renewing the SVID early");
                    deadline = deadline.min(time::OffsetDateTime::now_utc() + spread);
                }
                continue;
            }
        }
        let current = updates.borrow().clone();
        match client.renew(&current).await {
            Ok(identity) => {
                tracing::info!(
                    spiffe_id = %identity.svid.spiffe_id(),
                    serial = %identity.svid.serial_hex(),
                    not_after = %identity.svid.not_after(),
                    "renewed SVID"
                );
                deadline = identity.svid.renewal_deadline();
                backoff = Duration::from_secs(1);
                metrics.svid_in_use(&identity.svid);
                metrics
                    .renewals
                    .get_or_create(&RenewalLabels { result: "ok" })
                    .inc();
                updates.send_replace(Arc::new(identity));
            }
            Err(status) => {
                metrics
                    .renewals
                    .get_or_create(&RenewalLabels { result: "error" })
                    .inc();
                let left = until(current.svid.not_after());
                tracing::warn!(code = ?status.code(), reason = status.message(), expires_in_s = left.as_secs(), "SVID renewal failed; retrying");
                deadline = time::OffsetDateTime::now_utc() + backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}
