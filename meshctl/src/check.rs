//! `meshctl check`: is the mesh healthy, and if not, what to do. Each check
//! says what it found; a warning or a failure also says how to fix it. The
//! exit status is non-zero when any check fails.

use std::time::{Duration, Instant, SystemTime};

use rampart_api::admin::{GetResourcesRequest, GetTrustBundleRequest};
use rampart_api::mesh::Resource;
use rampart_certs::inspect::describe;
use serde::Serialize;

use crate::client::Target;
use crate::http::get_with_headers;
use crate::mesh::Output;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Warning,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn finding(check: &'static str, status: Status, detail: String, fix: Option<&str>) -> Finding {
    Finding {
        check,
        status,
        detail,
        fix: fix.map(str::to_owned),
    }
}

/// Certificates: warn this long before expiry, fail this long before.
const WARN_DAYS: i64 = 30;
const FAIL_DAYS: i64 = 7;
/// A version sent and not acknowledged for this long is stale, not settling.
const STALE_AFTER: i64 = 30;
/// Clocks further apart than this make fresh certificates look not yet valid.
const MAX_SKEW: Duration = Duration::from_secs(5);

fn days_left(not_after_unix: i64, now: i64) -> i64 {
    (not_after_unix - now).div_euclid(86_400)
}

fn expiry(check: &'static str, what: &str, not_after_unix: i64, now: i64) -> Finding {
    let days = days_left(not_after_unix, now);
    let date = time::OffsetDateTime::from_unix_timestamp(not_after_unix)
        .map(|d| d.date().to_string())
        .unwrap_or_default();
    let detail = format!("{what} expires {date} ({days} days)");
    if days < FAIL_DAYS {
        finding(
            check,
            Status::Failed,
            detail,
            Some("rotate it now: SVIDs chained to it stop validating when it expires"),
        )
    } else if days < WARN_DAYS {
        finding(
            check,
            Status::Warning,
            detail,
            Some(
                "plan the rotation: new roots must reach every workload before the old one expires",
            ),
        )
    } else {
        finding(check, Status::Ok, detail, None)
    }
}

pub async fn check(target: &Target, output: Output) -> anyhow::Result<()> {
    let findings = run(target).await;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        Output::Yaml => print!("{}", serde_saphyr::to_string(&findings)?),
        Output::Table => {
            let rows: Vec<Vec<String>> = findings
                .iter()
                .map(|f| {
                    let status = match f.status {
                        Status::Ok => "ok",
                        Status::Skipped => "skipped",
                        Status::Warning => "WARNING",
                        Status::Failed => "FAILED",
                    };
                    vec![status.to_owned(), f.check.to_owned(), f.detail.clone()]
                })
                .collect();
            crate::table::print(&["STATUS", "CHECK", "FOUND"], &rows);
            for f in findings.iter().filter(|f| f.fix.is_some()) {
                println!("\n{}: {}", f.check, f.fix.as_deref().unwrap_or_default());
            }
        }
    }
    let failed = findings
        .iter()
        .filter(|f| f.status == Status::Failed)
        .count();
    if failed > 0 {
        anyhow::bail!("{failed} check(s) failed");
    }
    Ok(())
}

async fn run(target: &Target) -> Vec<Finding> {
    let mut out = Vec::new();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let started = Instant::now();
    let connected = async {
        let proxies = crate::proxy_status::proxies(target).await?;
        anyhow::Ok((target.admin().await?, proxies))
    }
    .await;
    let (mut admin, proxies) = match connected {
        Ok(c) => c,
        Err(e) => {
            out.push(finding(
                "control plane",
                Status::Failed,
                format!("{e:#}"),
                Some("start rampart-control (--data-dir DIR), or pass --data-dir / --control-plane and --credentials that match it"),
            ));
            return out;
        }
    };
    out.push(finding(
        "control plane",
        Status::Ok,
        format!(
            "reachable over mTLS, answered in {} ms",
            started.elapsed().as_millis()
        ),
        None,
    ));

    // The trust bundle's roots.
    match admin.get_trust_bundle(GetTrustBundleRequest {}).await {
        Ok(bundle) => {
            let bundle = bundle.into_inner();
            for der in &bundle.roots_der {
                match describe(der) {
                    Ok(root) => out.push(expiry(
                        "trust root",
                        &format!("root {} (serial {})", root.subject, root.serial),
                        root.not_after.unix_timestamp(),
                        now,
                    )),
                    Err(e) => out.push(finding(
                        "trust root",
                        Status::Failed,
                        format!("the bundle holds a certificate that does not parse: {e}"),
                        Some("check the CA's files in the control plane's data directory"),
                    )),
                }
            }
        }
        Err(e) => out.push(finding(
            "trust root",
            Status::Failed,
            e.message().to_owned(),
            None,
        )),
    }

    // Virtual IPs: a captured call to one goes to one service only.
    match admin
        .get_resources(GetResourcesRequest {
            kind: "Service".to_owned(),
            ..Default::default()
        })
        .await
    {
        Ok(response) => {
            let services: Vec<Resource> = response
                .into_inner()
                .resources_json
                .iter()
                .filter_map(|json| Resource::from_json(json).ok())
                .collect();
            out.push(service_addresses(&services));
        }
        Err(e) => out.push(finding(
            "service addresses",
            Status::Failed,
            e.message().to_owned(),
            None,
        )),
    }

    // The signing chain and the clock: from the local control plane's metrics endpoint.
    match target.local_metrics_addr() {
        Some(addr) => match get_with_headers(addr, "/metrics").await {
            Ok((200, headers, body)) => {
                let text = String::from_utf8_lossy(&body);
                match crate::metrics::value(&text, "rampart_ca_expiry_timestamp_seconds") {
                    Some(v) => out.push(expiry(
                        "CA signing chain",
                        "the signing chain",
                        v as i64,
                        now,
                    )),
                    None => out.push(finding(
                        "CA signing chain",
                        Status::Warning,
                        "the control plane does not export rampart_ca_expiry_timestamp_seconds"
                            .into(),
                        None,
                    )),
                }
                out.push(clock(&headers, now));
            }
            Ok((status, _, _)) => out.push(finding(
                "CA signing chain",
                Status::Warning,
                format!("metrics endpoint {addr} answered {status}"),
                None,
            )),
            Err(e) => out.push(finding(
                "CA signing chain",
                Status::Warning,
                format!("metrics endpoint {addr}: {e}"),
                None,
            )),
        },
        None => {
            for check in ["CA signing chain", "clock skew"] {
                out.push(finding(
                    check,
                    Status::Skipped,
                    "needs the control plane's metrics endpoint (use --data-dir on its host)"
                        .into(),
                    None,
                ));
            }
        }
    }

    // The proxies.
    if proxies.is_empty() {
        out.push(finding(
            "proxies",
            Status::Warning,
            "no proxy is connected".into(),
            Some("start rampart-proxy with a join token (meshctl token create), or meshctl demo"),
        ));
    } else {
        out.push(finding(
            "proxies",
            Status::Ok,
            format!("{} connected", proxies.len()),
            None,
        ));
    }
    out.push(proxy_certificates(&proxies, now).await);
    let mut nacked = Vec::new();
    let mut stale = Vec::new();
    let mut settling = Vec::new();
    for p in &proxies {
        for t in &p.types {
            match t.state.as_str() {
                "NACKED" => nacked.push(format!("{} {}: {}", p.node_id, t.r#type, t.nack_message)),
                "STALE" => {
                    let age = now - t.stale_since_unix;
                    let entry = format!("{} {} ({age} s)", p.node_id, t.r#type);
                    if age >= STALE_AFTER {
                        stale.push(entry);
                    } else {
                        settling.push(entry);
                    }
                }
                _ => {}
            }
        }
    }
    out.push(if nacked.is_empty() {
        finding("configuration accepted", Status::Ok, "no proxy rejected its configuration".into(), None)
    } else {
        finding(
            "configuration accepted",
            Status::Failed,
            nacked.join("; "),
            Some("meshctl proxy-config NODE shows what was sent; fix the resource the message names (the proxies keep their last good configuration meanwhile)"),
        )
    });
    out.push(match (stale.is_empty(), settling.is_empty()) {
        (true, true) => finding(
            "configuration current",
            Status::Ok,
            "every proxy acknowledged the latest version".into(),
            None,
        ),
        (true, false) => finding(
            "configuration current",
            Status::Ok,
            format!("just sent, waiting for the ACK: {}", settling.join(", ")),
            None,
        ),
        (false, _) => finding(
            "configuration current",
            Status::Warning,
            format!("not acknowledged for {STALE_AFTER} s or more: {}", stale.join(", ")),
            Some("the proxy is stuck or overloaded: look at its log and meshctl proxy-status; it keeps serving its previous configuration"),
        ),
    });
    out
}

/// Service virtual IPs claimed by more than one service: a captured call
/// to one goes to the first service by name, which is rarely what was meant.
fn service_addresses(resources: &[Resource]) -> Finding {
    // By IP, not by text: `fd00::a` and `fd00:0::a` are one address.
    let mut claims: std::collections::BTreeMap<std::net::IpAddr, Vec<String>> = Default::default();
    for r in resources {
        if let Resource::Service(s) = r {
            for ip in s.spec.addresses.iter().filter_map(|a| a.parse().ok()) {
                let name = format!("{}/{}", s.metadata.namespace, s.metadata.name);
                claims.entry(ip).or_default().push(name);
            }
        }
    }
    let total = claims.len();
    let shared: Vec<String> = claims
        .into_iter()
        .filter(|(_, services)| services.len() > 1)
        .map(|(address, services)| format!("{address}: {}", services.join(", ")))
        .collect();
    if shared.is_empty() {
        finding(
            "service addresses",
            Status::Ok,
            format!("{total} virtual IPs, each of one service"),
            None,
        )
    } else {
        finding(
            "service addresses",
            Status::Failed,
            format!("claimed by more than one service: {}", shared.join("; ")),
            Some(
                "give each Service its own spec.addresses; a captured call goes to the first by name",
            ),
        )
    }
}

/// An SVID valid from `start` to `end`: failed once expired, a warning
/// once past three quarters of its lifetime (renewal is due at half-life).
fn svid_state(start: i64, end: i64, now: i64) -> Status {
    if end <= now {
        Status::Failed
    } else if now - start > (end - start) * 3 / 4 {
        Status::Warning
    } else {
        Status::Ok
    }
}

/// Each rampart-proxy's SVID, from the validity gauges on its admin
/// endpoint: renewal is due at half-life, so one past three quarters of its
/// lifetime is overdue, and an expired one fails every connection it makes.
async fn proxy_certificates(proxies: &[rampart_api::admin::ProxyStatus], now: i64) -> Finding {
    const CHECK: &str = "proxy certificates";
    let (mut fresh, mut overdue, mut expired, mut unreachable) = (0, Vec::new(), Vec::new(), 0);
    for p in proxies {
        let Ok(addr) = p.admin_addr.parse() else {
            unreachable += 1; // an Envoy, or a proxy that did not say
            continue;
        };
        let Ok((200, body)) = crate::http::get(addr, "/metrics").await else {
            unreachable += 1;
            continue;
        };
        let text = String::from_utf8_lossy(&body);
        let gauge = |name| crate::metrics::value(&text, name).map(|v| v as i64);
        let (Some(start), Some(end)) = (
            gauge("rampart_proxy_certificate_start_timestamp_seconds"),
            gauge("rampart_proxy_certificate_expiry_timestamp_seconds"),
        ) else {
            unreachable += 1;
            continue;
        };
        match svid_state(start, end, now) {
            Status::Failed => expired.push(format!("{} (expired {} s ago)", p.node_id, now - end)),
            Status::Warning => overdue.push(format!("{} ({} s left)", p.node_id, end - now)),
            _ => fresh += 1,
        }
    }
    let unread = if unreachable > 0 {
        format!("; {unreachable} not readable here (Envoys, or admin endpoints on other hosts)")
    } else {
        String::new()
    };
    if !expired.is_empty() {
        finding(
            CHECK,
            Status::Failed,
            format!("expired: {}{unread}", expired.join(", ")),
            Some(
                "the proxy cannot renew: look at its log (rampart_proxy_svid_renewals_total{result=\"error\"}) and whether it reaches the control plane; restart it with a new join token if its SVID is gone",
            ),
        )
    } else if !overdue.is_empty() {
        finding(
            CHECK,
            Status::Warning,
            format!(
                "past three quarters of their lifetime, renewal overdue: {}{unread}",
                overdue.join(", ")
            ),
            Some(
                "look at the proxy's log for renewal errors; meshctl identity NODE shows its SVID",
            ),
        )
    } else {
        finding(CHECK, Status::Ok, format!("{fresh} current{unread}"), None)
    }
}

/// The control plane's clock (its HTTP `Date`) against ours.
fn clock(headers: &hyper::header::HeaderMap, now: i64) -> Finding {
    let theirs = headers
        .get(hyper::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64);
    match theirs {
        None => finding(
            "clock skew",
            Status::Skipped,
            "the control plane sent no Date".into(),
            None,
        ),
        Some(t) => {
            let skew = (t - now).unsigned_abs();
            let detail = format!("control plane and this host differ by about {skew} s");
            if Duration::from_secs(skew) > MAX_SKEW {
                finding(
                    "clock skew",
                    Status::Warning,
                    detail,
                    Some(
                        "synchronise clocks (NTP): SVIDs are valid from the CA's time, so a host behind it sees new certificates as not yet valid",
                    ),
                )
            } else {
                finding("clock skew", Status::Ok, detail, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_svid_past_renewal_warns_and_an_expired_one_fails() {
        // 60 s SVIDs issued at t=1000, renewed at half-life normally.
        assert_eq!(svid_state(1000, 1060, 1030), Status::Ok);
        assert_eq!(svid_state(1000, 1060, 1045), Status::Ok);
        assert_eq!(svid_state(1000, 1060, 1046), Status::Warning);
        assert_eq!(svid_state(1000, 1060, 1060), Status::Failed);
    }

    #[test]
    fn a_virtual_ip_of_two_services_fails() {
        let services = |first: &str, second: &str| {
            let yaml = format!(
                "apiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: a, namespace: default}}\nspec: {{ports: [{{name: http, port: 80}}], addresses: [\"{first}\"]}}\n---\napiVersion: rampart.dev/v1alpha1\nkind: Service\nmetadata: {{name: b, namespace: shop}}\nspec: {{ports: [{{name: http, port: 80}}], addresses: [\"{second}\"]}}\n"
            );
            rampart_api::mesh::parse_documents("s.yaml", &yaml).unwrap()
        };
        let fine = service_addresses(&services("10.96.0.1", "10.96.0.2"));
        assert_eq!(fine.status, Status::Ok, "{fine:?}");
        let clash = service_addresses(&services("10.96.0.1", "10.96.0.1"));
        assert_eq!(clash.status, Status::Failed);
        assert!(
            clash.detail.contains("10.96.0.1: default/a, shop/b"),
            "{clash:?}"
        );
        // The same address written differently is the same address.
        let spelled = service_addresses(&services("fd00::a", "fd00:0::a"));
        assert_eq!(spelled.status, Status::Failed, "{spelled:?}");
    }

    #[test]
    fn expiry_warns_then_fails() {
        let day = 86_400;
        assert_eq!(expiry("c", "x", 100 * day, 0).status, Status::Ok);
        assert_eq!(expiry("c", "x", 20 * day, 0).status, Status::Warning);
        assert_eq!(expiry("c", "x", 3 * day, 0).status, Status::Failed);
        assert_eq!(expiry("c", "x", -day, 0).status, Status::Failed);
        assert!(expiry("c", "x", 20 * day, 0).detail.contains("20 days"));
    }
}
