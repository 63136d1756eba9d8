//! `meshctl proxy-status`: per connected proxy or xDS client, whether each
//! resource type is SYNCED, STALE (sent, not ACKed yet) or NACKED (rejected,
//! with the client's reason).

use rampart_api::admin::{ProxyStatus, ProxyStatusRequest};

use crate::client::Target;
use crate::mesh::Output;

/// Every open ADS stream, as the control plane sees it.
pub async fn proxies(target: &Target) -> anyhow::Result<Vec<ProxyStatus>> {
    Ok(target
        .admin()
        .await?
        .proxy_status(ProxyStatusRequest {})
        .await
        .map_err(crate::client::rpc_error)?
        .into_inner()
        .proxies)
}

/// Prints the status of every open ADS stream.
pub async fn proxy_status(target: &Target, output: Output) -> anyhow::Result<()> {
    let proxies = proxies(target).await?;
    match output {
        Output::Json | Output::Yaml => {
            let value: Vec<serde_json::Value> = proxies.iter().map(to_json).collect();
            if matches!(output, Output::Json) {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print!("{}", serde_saphyr::to_string(&value)?);
            }
        }
        Output::Table => print_table(&proxies),
    }
    if proxies.is_empty() {
        eprintln!("no proxies connected");
    }
    Ok(())
}

fn to_json(p: &ProxyStatus) -> serde_json::Value {
    serde_json::json!({
        "streamId": p.stream_id,
        "spiffeId": p.spiffe_id,
        "nodeId": p.node_id,
        "userAgent": p.user_agent,
        "connectedAtUnix": p.connected_at_unix,
        "adminAddr": p.admin_addr,
        "types": p.types.iter().map(|t| serde_json::json!({
            "type": t.r#type,
            "state": t.state,
            "sentVersion": t.sent_version,
            "ackedVersion": t.acked_version,
            "nackMessage": t.nack_message,
            "resources": t.resources,
            "staleSinceUnix": t.stale_since_unix,
        })).collect::<Vec<_>>(),
    })
}

fn print_table(proxies: &[ProxyStatus]) {
    let rows: Vec<Vec<String>> = proxies
        .iter()
        .map(|p| {
            let state = |short: &str| {
                p.types
                    .iter()
                    .find(|t| t.r#type == short)
                    .map(|t| {
                        format!(
                            "{} ({})",
                            t.state,
                            &t.sent_version[..t.sent_version.len().min(8)]
                        )
                    })
                    .unwrap_or_else(|| "NOT SENT".into())
            };
            vec![
                p.node_id.clone(),
                p.spiffe_id.clone(),
                state("sds"),
                state("cds"),
                state("eds"),
                state("lds"),
                state("rds"),
            ]
        })
        .collect();
    crate::table::print(
        &["NODE", "SPIFFE ID", "SDS", "CDS", "EDS", "LDS", "RDS"],
        &rows,
    );
    for p in proxies {
        for t in p.types.iter().filter(|t| t.state == "NACKED") {
            println!(
                "\n{} {} NACKED version {}: {}",
                p.node_id, t.r#type, t.sent_version, t.nack_message
            );
        }
    }
}
