//! Checks a parsed resource for what its types cannot say: names, ranges,
//! references inside the spec, durations. Returns (field, problem) pairs.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::*;
use crate::duration;

type Problems = Vec<(String, String)>;

/// Every problem with `resource`; empty if it is valid.
pub fn check(resource: &Resource) -> Problems {
    let mut p = Problems::new();
    let metadata = resource.metadata();
    label(&mut p, "metadata.name", &metadata.name);
    if resource.kind().namespaced() {
        label(&mut p, "metadata.namespace", &metadata.namespace);
    }
    for key in metadata.labels.keys() {
        if key.is_empty() || key.len() > 253 {
            p.push((
                "metadata.labels".into(),
                format!("label key {key:?} must be 1-253 characters"),
            ));
        }
    }
    match resource {
        Resource::MeshConfig(o) => mesh_config(&mut p, o),
        Resource::Service(o) => service(&mut p, &o.spec),
        Resource::WorkloadEntry(o) => workload_entry(&mut p, &o.spec),
        Resource::TrafficPolicy(o) => traffic_policy(&mut p, &o.spec),
        Resource::AuthorizationPolicy(o) => authorization_policy(&mut p, &o.spec),
        Resource::SecurityPolicy(o) => p.extend(crate::policy::spec::validate(&o.spec)),
        Resource::VulnerabilityReport(o) => {
            p.extend(crate::policy::vulnerability::validate(&o.spec))
        }
    }
    p
}

fn push(p: &mut Problems, field: impl Into<String>, message: impl Into<String>) {
    p.push((field.into(), message.into()));
}

/// An RFC 1123 DNS label.
fn label(p: &mut Problems, field: &str, value: &str) {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        push(
            p,
            field,
            format!(
                "{value:?} is not a DNS label (lowercase letters, digits, '-'; at most 63; starts and ends alphanumeric)"
            ),
        );
    }
}

/// Longer durations are refused: they are typos, and Envoy rejects durations
/// beyond protobuf's range anyway.
const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

fn duration_field(p: &mut Problems, field: &str, value: &Option<String>) {
    let Some(value) = value else { return };
    match duration::parse(value) {
        Err(e) => push(p, field, e),
        Ok(d) if d > MAX_DURATION => push(p, field, format!("{value:?} is longer than 365d")),
        Ok(_) => {}
    }
}

fn percent(p: &mut Problems, field: &str, value: u32) {
    if value > 100 {
        push(p, field, format!("{value} is not a percentage (0-100)"));
    }
}

fn mesh_config(p: &mut Problems, o: &Object<MeshConfigSpec>) {
    if o.metadata.name != "default" {
        push(
            p,
            "metadata.name",
            "the MeshConfig is a singleton and must be named \"default\"",
        );
    }
    let c = &o.spec.connections;
    for (field, value) in [
        ("spec.connections.httpIdleTimeout", &c.http_idle_timeout),
        (
            "spec.connections.requestHeadersTimeout",
            &c.request_headers_timeout,
        ),
        ("spec.connections.tcpIdleTimeout", &c.tcp_idle_timeout),
    ] {
        let Some(value) = value else { continue };
        match duration::parse_timeout(value) {
            Err(e) => push(p, field, e),
            Ok(Some(d)) if d > MAX_DURATION => {
                push(p, field, format!("{value:?} is longer than 365d"))
            }
            Ok(_) => {}
        }
    }
}

fn service(p: &mut Problems, spec: &ServiceSpec) {
    if spec.ports.is_empty() {
        push(p, "spec.ports", "at least one port is required");
    }
    for (i, account) in spec.service_accounts.iter().enumerate() {
        service_account(p, &format!("spec.serviceAccounts[{i}]"), account);
    }
    let mut addresses = BTreeSet::new();
    for (i, address) in spec.addresses.iter().enumerate() {
        let field = format!("spec.addresses[{i}]");
        match address.parse::<IpAddr>() {
            Err(_) => push(p, field, format!("{address:?} is not an IP address")),
            // Never captured (loopback is excluded), or not one host.
            Ok(ip) if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() => push(
                p,
                field,
                format!(
                    "{address} cannot be a service address (loopback, unspecified or multicast)"
                ),
            ),
            Ok(ip) if !addresses.insert(ip) => push(p, field, format!("{address} is listed twice")),
            Ok(_) => {}
        }
    }
    let (mut names, mut numbers) = (BTreeSet::new(), BTreeSet::new());
    for (i, port) in spec.ports.iter().enumerate() {
        label(p, &format!("spec.ports[{i}].name"), &port.name);
        if !names.insert(&port.name) {
            push(
                p,
                format!("spec.ports[{i}].name"),
                format!("{:?} is used twice", port.name),
            );
        }
        if port.port == 0 {
            push(p, format!("spec.ports[{i}].port"), "must be 1-65535");
        } else if !numbers.insert(port.port) {
            push(
                p,
                format!("spec.ports[{i}].port"),
                format!("{} is used twice", port.port),
            );
        }
    }
}

/// A Kubernetes ServiceAccount name: dot-separated DNS labels.
fn service_account(p: &mut Problems, field: &str, name: &str) {
    for part in name.split('.') {
        label(p, field, part);
    }
}

fn workload_entry(p: &mut Problems, spec: &WorkloadEntrySpec) {
    label(p, "spec.service", &spec.service);
    if spec.address.parse::<IpAddr>().is_err() {
        push(
            p,
            "spec.address",
            format!("{:?} is not an IP address", spec.address),
        );
    }
    if spec.ports.is_empty() {
        push(
            p,
            "spec.ports",
            "at least one port (service port name: number) is required",
        );
    }
    for (name, port) in &spec.ports {
        label(p, &format!("spec.ports.{name}"), name);
        if *port == 0 {
            push(p, format!("spec.ports.{name}"), "must be 1-65535");
        }
    }
    service_account(p, "spec.serviceAccount", &spec.service_account);
    if !spec.locality.is_empty()
        && let Err(e) = crate::locality::parse(&spec.locality)
    {
        push(p, "spec.locality", e);
    }
    if spec.weight == 0 {
        push(p, "spec.weight", "must be at least 1");
    }
}

const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

fn traffic_policy(p: &mut Problems, spec: &TrafficPolicySpec) {
    label(p, "spec.service", &spec.service);
    if let Some(limit) = &spec.rate_limit {
        if !(1..=1_000_000).contains(&limit.requests_per_second) {
            push(
                p,
                "spec.rateLimit.requestsPerSecond",
                format!("{} is out of range 1-1000000", limit.requests_per_second),
            );
        }
        if limit.burst == Some(0) {
            push(
                p,
                "spec.rateLimit.burst",
                "0 lets nothing through; at least 1",
            );
        }
    }
    for (i, port) in spec.ports.iter().enumerate() {
        label(p, &format!("spec.ports[{i}]"), port);
    }
    duration_field(p, "spec.timeout", &spec.timeout);
    if let Some(retries) = &spec.retries {
        if !(1..=10).contains(&retries.attempts) {
            push(
                p,
                "spec.retries.attempts",
                format!("{} is out of range 1-10", retries.attempts),
            );
        }
        for (i, condition) in retries.retry_on.iter().enumerate() {
            if !RETRY_ON.contains(&condition.as_str()) {
                push(
                    p,
                    format!("spec.retries.retryOn[{i}]"),
                    format!(
                        "unknown condition {condition:?}; known: {}",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
        duration_field(p, "spec.retries.perTryTimeout", &retries.per_try_timeout);
        if let Some(budget) = retries.budget_percent
            && !(1..=100).contains(&budget)
        {
            push(
                p,
                "spec.retries.budgetPercent",
                format!("{budget} is out of range 1-100"),
            );
        }
    }
    if let Some(cb) = &spec.circuit_breakers {
        let limits = [
            ("maxConnections", cb.max_connections),
            ("maxPendingRequests", cb.max_pending_requests),
            ("maxRequests", cb.max_requests),
            ("maxRetries", cb.max_retries),
        ];
        for (name, value) in limits {
            if value == Some(0) {
                push(
                    p,
                    format!("spec.circuitBreakers.{name}"),
                    "must be at least 1",
                );
            }
        }
    }
    if let Some(od) = &spec.outlier_detection {
        if od.consecutive_5xx == Some(0) {
            push(
                p,
                "spec.outlierDetection.consecutive5xx",
                "must be at least 1",
            );
        }
        duration_field(p, "spec.outlierDetection.interval", &od.interval);
        duration_field(
            p,
            "spec.outlierDetection.baseEjectionTime",
            &od.base_ejection_time,
        );
        if let Some(max) = od.max_ejection_percent {
            percent(p, "spec.outlierDetection.maxEjectionPercent", max);
        }
    }
    if !spec.split.is_empty() {
        let mut subsets = BTreeSet::new();
        for (i, target) in spec.split.iter().enumerate() {
            if target.subset.is_empty() {
                push(
                    p,
                    format!("spec.split[{i}].subset"),
                    "needs at least one label",
                );
            }
            if !subsets.insert(&target.subset) {
                push(
                    p,
                    format!("spec.split[{i}].subset"),
                    "the same subset appears twice",
                );
            }
            percent(p, &format!("spec.split[{i}].weight"), target.weight);
        }
        let total: u32 = spec.split.iter().map(|t| t.weight).sum();
        if total != 100 {
            push(
                p,
                "spec.split",
                format!("weights sum to {total}; they must sum to 100"),
            );
        }
    }
    if let Some(fault) = &spec.fault {
        if let Some(delay) = &fault.delay {
            duration_field(p, "spec.fault.delay.fixed", &Some(delay.fixed.clone()));
            percent(p, "spec.fault.delay.percent", delay.percent);
        }
        if let Some(abort) = &fault.abort {
            if !(200..=599).contains(&abort.http_status) {
                push(
                    p,
                    "spec.fault.abort.httpStatus",
                    format!("{} is not an HTTP status (200-599)", abort.http_status),
                );
            }
            percent(p, "spec.fault.abort.percent", abort.percent);
        }
    }
    if let Some(mirror) = &spec.mirror {
        label(p, "spec.mirror.service", &mirror.service);
        percent(p, "spec.mirror.percent", mirror.percent);
    }
}

fn authorization_policy(p: &mut Problems, spec: &AuthorizationPolicySpec) {
    for (i, rule) in spec.rules.iter().enumerate() {
        for (j, source) in rule.from.iter().enumerate() {
            let at = format!("spec.rules[{i}].from[{j}]");
            if source.principals.is_empty() && source.namespaces.is_empty() {
                push(p, &at, "give principals and/or namespaces");
            }
            for (k, principal) in source.principals.iter().enumerate() {
                if !valid_principal(principal) {
                    push(
                        p,
                        format!("{at}.principals[{k}]"),
                        format!(
                            "{principal:?} is not \"*\", a SPIFFE ID, or a SPIFFE ID prefix ending in \"*\""
                        ),
                    );
                }
            }
            for (k, namespace) in source.namespaces.iter().enumerate() {
                if namespace != "*" {
                    label(p, &format!("{at}.namespaces[{k}]"), namespace);
                }
            }
        }
        for (j, operation) in rule.to.iter().enumerate() {
            let at = format!("spec.rules[{i}].to[{j}]");
            if operation.ports.contains(&0) {
                push(p, format!("{at}.ports"), "ports must be 1-65535");
            }
            for (k, method) in operation.methods.iter().enumerate() {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    push(
                        p,
                        format!("{at}.methods[{k}]"),
                        format!("{method:?} is not an HTTP method (uppercase, e.g. GET)"),
                    );
                }
            }
            for (k, path) in operation.paths.iter().enumerate() {
                if !(path.starts_with('/') || path.starts_with('*'))
                    || path[1..].contains('*') && !path.ends_with('*')
                {
                    push(
                        p,
                        format!("{at}.paths[{k}]"),
                        format!("{path:?} must be an exact path, \"prefix*\" or \"*suffix\""),
                    );
                }
            }
        }
    }
}

fn valid_principal(principal: &str) -> bool {
    if principal == "*" {
        return true;
    }
    match principal.strip_suffix('*') {
        Some(prefix) => prefix.starts_with("spiffe://") && !prefix.contains('*'),
        None => principal.starts_with("spiffe://") && !principal.contains('*'),
    }
}
