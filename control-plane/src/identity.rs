//! The control plane's own serving SVID
//! (`spiffe://<td>/ns/rampart-system/sa/rampart-control`), signed by its CA in
//! process and renewed at half-life without restarting the listener.

use std::net::IpAddr;
use std::sync::Arc;

use rampart_certs::tls::CurrentSvid;
use rampart_certs::{CertificateAuthority, KeyAndCsr, Svid, VerifiedCsr, until};

use crate::ca::CaHandle;

use rampart_certs::well_known::control_plane_id;

/// Host names the serving certificate also carries, for clients that check
/// hostnames (gRPC's xDS `tls` channel credentials): `localhost`, loopback,
/// the bound address, and any `--serving-host` given.
#[derive(Debug, Clone, Default)]
pub struct ServingHosts {
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
}

fn issue(ca: &CertificateAuthority, hosts: &ServingHosts) -> anyhow::Result<Svid> {
    let request = KeyAndCsr::generate()?;
    let csr = VerifiedCsr::from_der(&request.csr_der)?;
    let id = control_plane_id(ca.trust_domain());
    let issued = ca.sign_with_hosts(&csr, &id, None, &hosts.dns_names, &hosts.ips)?;
    Ok(Svid::new(issued.chain, request.key)?)
}

/// Issues the serving SVID and keeps renewing it in the background: at
/// half-life, and at once when the CA changes (a root rotation's new
/// signing root), so clients that trust only the new root can connect.
pub fn serving_identity(ca: CaHandle, hosts: ServingHosts) -> anyhow::Result<Arc<CurrentSvid>> {
    let mut changes = ca.subscribe();
    let svid = issue(&changes.borrow_and_update(), &hosts)?;
    let current = CurrentSvid::new(&svid)?;
    let handle = current.clone();
    tokio::spawn(async move {
        let mut deadline = svid.renewal_deadline();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(until(deadline)) => {}
                changed = changes.changed() => if changed.is_err() { return },
            }
            let ca = changes.borrow_and_update().clone();
            match issue(&ca, &hosts).and_then(|svid| Ok((handle.update(&svid)?, svid))) {
                Ok(((), svid)) => {
                    tracing::info!(not_after = %svid.not_after(), "renewed the control plane's serving SVID");
                    deadline = svid.renewal_deadline();
                }
                Err(e) => {
                    tracing::error!(error = %e, "renewing the serving SVID failed; retrying in 30s");
                    deadline = time::OffsetDateTime::now_utc() + std::time::Duration::from_secs(30);
                }
            }
        }
    });
    Ok(current)
}
