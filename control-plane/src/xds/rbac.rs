//! AuthorizationPolicy -> Envoy RBAC filters for one inbound port of one
//! workload.
//!
//! Semantics (as documented in docs/mesh-model.md): DENY policies are
//! checked first; then, if any ALLOW policy selects the workload, a request
//! must match one of their rules. Envoy runs its RBAC filters in order, so
//! this is a DENY filter followed by an ALLOW filter, each present only when
//! some policy of that action selects the workload.
//!
//! Each filter holds a single Envoy policy whose principals are an OR over
//! the rules, named after the AuthorizationPolicy it comes from (DENY: a
//! filter per policy; ALLOW: one filter for all, named after them all), so
//! a decision can say which policy made it. A rule's ports are resolved
//! here (each listener serves one port), so what is left of a rule, its
//! callers and its methods and paths, fits Envoy's principal matchers.
//!
//! On a TCP port methods and paths cannot be seen. An ALLOW rule that needs
//! them then matches nothing (fail closed); a DENY rule ignores them and
//! denies the callers it names (fail closed too).

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    PathMatcher, StringMatcher, path_matcher, string_matcher,
};
use rampart_api::mesh::{
    AuthorizationAction, AuthorizationPolicySpec, AuthorizationRule, Object, Operation, Source,
};

/// The policies of a namespace that select a workload with `labels`.
pub fn selecting<'a>(
    policies: &'a [Object<AuthorizationPolicySpec>],
    labels: &BTreeMap<String, String>,
) -> Vec<&'a Object<AuthorizationPolicySpec>> {
    policies
        .iter()
        .filter(|p| {
            p.spec
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect()
}

/// `namespace/name`: the Envoy policy name, so a decision names its policy.
fn policy_name(p: &Object<AuthorizationPolicySpec>) -> String {
    format!("{}/{}", p.metadata.namespace, p.metadata.name)
}

/// The RBAC configurations for `port`: one DENY filter per DENY policy
/// (any of them denies, and a denial names its policy), then one ALLOW
/// filter whose single policy is named after every ALLOW policy (a request
/// must match any of them).
pub fn rules_for_port(
    policies: &[&Object<AuthorizationPolicySpec>],
    port: u16,
    http: bool,
    trust_domain: &str,
) -> Vec<Rbac> {
    let principals = |p: &Object<AuthorizationPolicySpec>| -> Vec<Principal> {
        p.spec
            .rules
            .iter()
            .filter_map(|rule| rule_principal(rule, p.spec.action, port, http, trust_domain))
            .collect()
    };
    let mut out = Vec::new();
    for p in policies
        .iter()
        .filter(|p| p.spec.action == AuthorizationAction::Deny)
    {
        let principals = principals(p);
        if !principals.is_empty() {
            out.push(filter(rbac::Action::Deny, policy_name(p), principals));
        }
    }
    let allow: Vec<_> = policies
        .iter()
        .filter(|p| p.spec.action == AuthorizationAction::Allow)
        .collect();
    if !allow.is_empty() {
        let mut names: Vec<String> = allow.iter().map(|p| policy_name(p)).collect();
        names.sort();
        let principals = allow.iter().flat_map(|p| principals(p)).collect();
        out.push(filter(rbac::Action::Allow, names.join(","), principals));
    }
    out
}

/// One RBAC filter with one policy (none if nothing can match: for ALLOW,
/// that allows nothing). One policy per filter also keeps the encoding
/// deterministic: `policies` is a map, and prost writes maps in hash order.
fn filter(action: rbac::Action, name: String, principals: Vec<Principal>) -> Rbac {
    let mut policies = HashMap::new();
    if !principals.is_empty() {
        policies.insert(
            name,
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                principals: vec![or(principals)],
                ..Default::default()
            },
        );
    }
    Rbac {
        action: action as i32,
        policies,
        ..Default::default()
    }
}

/// One rule as a principal matcher, or `None` if it cannot match on this port.
fn rule_principal(
    rule: &AuthorizationRule,
    action: AuthorizationAction,
    port: u16,
    http: bool,
    trust_domain: &str,
) -> Option<Principal> {
    let from = if rule.from.is_empty() {
        any()
    } else {
        or(rule.from.iter().map(|s| source(s, trust_domain)).collect())
    };
    if rule.to.is_empty() {
        return Some(from);
    }
    let operations: Vec<&Operation> = rule
        .to
        .iter()
        .filter(|o| o.ports.is_empty() || o.ports.contains(&port))
        .collect();
    if operations.is_empty() {
        return None;
    }
    let needs_http = |o: &&Operation| !o.methods.is_empty() || !o.paths.is_empty();
    let to = match (http, action) {
        (true, _) => or(operations.iter().map(|o| operation(o)).collect()),
        (false, AuthorizationAction::Allow) if operations.iter().all(needs_http) => return None,
        (false, _) => any(),
    };
    Some(and(vec![from, to]))
}

fn source(source: &Source, trust_domain: &str) -> Principal {
    let mut parts = Vec::new();
    if !source.principals.is_empty() {
        parts.push(or(source
            .principals
            .iter()
            .map(|p| spiffe_id(pattern(p)))
            .collect()));
    }
    if !source.namespaces.is_empty() {
        parts.push(or(source
            .namespaces
            .iter()
            .map(|ns| match ns.as_str() {
                "*" => spiffe_id(string_matcher::MatchPattern::Prefix(format!(
                    "spiffe://{trust_domain}/ns/"
                ))),
                ns => spiffe_id(string_matcher::MatchPattern::Prefix(format!(
                    "spiffe://{trust_domain}/ns/{ns}/"
                ))),
            })
            .collect()));
    }
    and(parts)
}

fn operation(operation: &Operation) -> Principal {
    let mut parts = Vec::new();
    if !operation.methods.is_empty() {
        parts.push(or(operation
            .methods
            .iter()
            .map(|m| Principal {
                identifier: Some(principal::Identifier::Header(HeaderMatcher {
                    name: ":method".to_owned(),
                    header_match_specifier: Some(
                        header_matcher::HeaderMatchSpecifier::StringMatch(matcher(
                            string_matcher::MatchPattern::Exact(m.clone()),
                        )),
                    ),
                    ..Default::default()
                })),
            })
            .collect()));
    }
    if !operation.paths.is_empty() {
        parts.push(or(operation
            .paths
            .iter()
            .map(|p| Principal {
                identifier: Some(principal::Identifier::UrlPath(PathMatcher {
                    rule: Some(path_matcher::Rule::Path(matcher(pattern(p)))),
                })),
            })
            .collect()));
    }
    and(parts)
}

/// `*` -> anything, `x*` -> prefix, `*x` -> suffix, else exact.
fn pattern(text: &str) -> string_matcher::MatchPattern {
    use string_matcher::MatchPattern;
    if let Some(prefix) = text.strip_suffix('*') {
        MatchPattern::Prefix(prefix.to_owned())
    } else if let Some(suffix) = text.strip_prefix('*') {
        MatchPattern::Suffix(suffix.to_owned())
    } else {
        MatchPattern::Exact(text.to_owned())
    }
}

fn matcher(pattern: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    }
}

/// The peer certificate's URI SAN (its SPIFFE ID) matches `pattern`.
fn spiffe_id(pattern: string_matcher::MatchPattern) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(matcher(pattern)),
            },
        )),
    }
}

fn any() -> Principal {
    Principal {
        identifier: Some(principal::Identifier::Any(true)),
    }
}

fn or(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => any(),
        1 => ids.remove(0),
        _ => Principal {
            identifier: Some(principal::Identifier::OrIds(principal::Set { ids })),
        },
    }
}

fn and(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => any(),
        1 => ids.remove(0),
        _ => Principal {
            identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(yaml: &str) -> Vec<Object<AuthorizationPolicySpec>> {
        rampart_api::mesh::parse_documents("t", yaml)
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                rampart_api::mesh::Resource::AuthorizationPolicy(p) => Some(p),
                _ => None,
            })
            .collect()
    }

    const POLICIES: &str = r#"
apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: default}
spec:
  selector: {app: echo}
  action: ALLOW
  rules:
  - from: [{principals: ["spiffe://example.org/ns/default/sa/frontend"]}]
    to: [{ports: [8080], methods: [GET], paths: ["/api/*"]}]
---
apiVersion: rampart.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: default}
spec:
  action: DENY
  rules:
  - from: [{namespaces: [legacy]}]
"#;

    #[test]
    fn deny_comes_first_then_allow_and_ports_are_resolved() {
        let all = policies(POLICIES);
        let labels = BTreeMap::from([("app".to_owned(), "echo".to_owned())]);
        let selected = selecting(&all, &labels);
        assert_eq!(selected.len(), 2);
        let on_8080 = rules_for_port(&selected, 8080, true, "example.org");
        assert_eq!(on_8080.len(), 2);
        assert_eq!(on_8080[0].action, rbac::Action::Deny as i32);
        assert!(on_8080[0].policies.contains_key("default/deny-legacy"));
        assert_eq!(on_8080[1].action, rbac::Action::Allow as i32);
        assert_eq!(on_8080[1].policies.len(), 1);
        // On another port the ALLOW rule cannot match: an ALLOW filter with
        // no policy, which denies everything.
        let on_9090 = rules_for_port(&selected, 9090, true, "example.org");
        assert!(on_9090[1].policies.is_empty());
        // A workload without the label only gets the DENY policy.
        let other = selecting(&all, &BTreeMap::new());
        let rules = rules_for_port(&other, 8080, true, "example.org");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].action, rbac::Action::Deny as i32);
    }

    #[test]
    fn on_tcp_an_allow_rule_needing_http_matches_nothing() {
        let all = policies(POLICIES);
        let labels = BTreeMap::from([("app".to_owned(), "echo".to_owned())]);
        let rules = rules_for_port(&selecting(&all, &labels), 8080, false, "example.org");
        assert!(rules[1].policies.is_empty(), "fail closed");
        assert_eq!(rules[0].policies.len(), 1, "the DENY rule still applies");
    }
}
