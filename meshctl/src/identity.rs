//! `meshctl identity NODE`: the SVID a connected proxy holds right now:
//! its SPIFFE ID, serial, validity and chain, read from the proxy's own
//! admin endpoint (`/certs`, certificates only), found through the control
//! plane's view of connected proxies.

use std::time::SystemTime;

use anyhow::{Context, bail};
use rampart_certs::inspect::{CertificateInfo, describe};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::client::Target;
use crate::http::get;
use crate::mesh::Output;

pub async fn identity(target: &Target, node: &str, output: Output) -> anyhow::Result<()> {
    let proxies = crate::proxy_status::proxies(target).await?;
    let Some(proxy) = proxies.iter().find(|p| p.node_id == node) else {
        let known: Vec<&str> = proxies.iter().map(|p| p.node_id.as_str()).collect();
        bail!(
            "no connected proxy has node id {node:?}; connected: {} (see meshctl proxy-status)",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        );
    };
    if proxy.admin_addr.is_empty() {
        bail!(
            "{node} did not say where its admin endpoint is (an Envoy, or an older rampart-proxy); ask it directly: curl http://ADMIN/certs"
        );
    }
    let addr = proxy
        .admin_addr
        .parse()
        .context("the proxy's admin address")?;
    let (status, body) = get(addr, "/certs").await.map_err(|e| {
        anyhow::anyhow!(
            "{node}'s admin endpoint {addr}: {e} (it listens on the proxy's host; run meshctl there)"
        )
    })?;
    if status != 200 {
        bail!(
            "{node}'s admin endpoint answered {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let chain = CertificateDer::pem_slice_iter(&body)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{node} sent a chain that is not PEM: {e}"))?;
    let chain: Vec<CertificateInfo> = chain
        .iter()
        .map(|c| describe(c).map_err(anyhow::Error::msg))
        .collect::<Result<_, _>>()?;
    let Some(leaf) = chain.first() else {
        bail!("{node} holds no SVID yet");
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match output {
        Output::Table => {
            let left = leaf.not_after.unix_timestamp() - now;
            println!(
                "node:        {node} (stream {}, {})",
                proxy.stream_id, proxy.user_agent
            );
            println!("SPIFFE ID:   {}", leaf.uris.join(", "));
            println!("serial:      {}", leaf.serial);
            println!("valid:       {} .. {}", leaf.not_before, leaf.not_after);
            println!(
                "time left:   {left} s (the proxy renews halfway from obtaining it to expiry)"
            );
            println!("chain:");
            let rows: Vec<Vec<String>> = chain
                .iter()
                .map(|c| {
                    vec![
                        if c.is_ca { "CA" } else { "leaf" }.to_owned(),
                        if c.subject.is_empty() {
                            "-".to_owned()
                        } else {
                            c.subject.clone()
                        },
                        c.issuer.clone(),
                        c.serial.clone(),
                        c.not_after.to_string(),
                    ]
                })
                .collect();
            crate::table::print(&["KIND", "SUBJECT", "ISSUER", "SERIAL", "NOT AFTER"], &rows);
        }
        Output::Json | Output::Yaml => {
            let value = serde_json::json!({
                "node": node,
                "spiffeId": leaf.uris.first(),
                "serial": leaf.serial,
                "notBefore": leaf.not_before.unix_timestamp(),
                "notAfter": leaf.not_after.unix_timestamp(),
                "secondsLeft": leaf.not_after.unix_timestamp() - now,
                "chain": chain.iter().map(|c| serde_json::json!({
                    "subject": c.subject,
                    "issuer": c.issuer,
                    "serial": c.serial,
                    "uris": c.uris,
                    "isCa": c.is_ca,
                    "notBefore": c.not_before.unix_timestamp(),
                    "notAfter": c.not_after.unix_timestamp(),
                })).collect::<Vec<_>>(),
            });
            if matches!(output, Output::Json) {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", serde_saphyr::to_string(&value)?);
            }
        }
    }
    Ok(())
}
