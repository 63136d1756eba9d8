//! Authorization: the RBAC rules of Envoy's RBAC filters, evaluated against
//! the caller's SPIFFE ID (from its verified certificate), its address and,
//! on HTTP, the request. Rules are DENY or ALLOW, applied in the order the
//! control plane sends them; a request passes only if no DENY rule matches
//! and every ALLOW rule does. Only the matchers implemented here are
//! accepted (`validate`), so an update the proxy cannot enforce is NACKed
//! rather than half-enforced.

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, header_matcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, path_matcher, string_matcher};

use crate::Refusal;

/// Who is calling, and (on HTTP) what they ask for.
pub struct Subject<'a> {
    /// The caller's SPIFFE ID; `None` for a plaintext caller.
    pub peer: Option<&'a str>,
    pub remote: IpAddr,
    pub local_port: u16,
    /// HTTP method and path (with query), when checking a request.
    pub request: Option<(&'a str, &'a str)>,
    pub headers: Option<&'a http::HeaderMap>,
}

/// The outcome, with the rule set that decided a denial (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied by a DENY rule, or matched by no ALLOW rule.
    Deny {
        by_deny_rule: bool,
    },
}

fn matches(p: &Policy, subject: &Subject<'_>) -> bool {
    p.permissions.iter().any(|x| permits(x, subject)) && p.principals.iter().any(|x| is(x, subject))
}

/// What decided: the rule set (filter) and the policy in it that matched,
/// if one did. For an allowed request, the last ALLOW filter, if any.
type Decider<'r> = Option<(&'r Rbac, Option<&'r str>)>;

/// Applies `rules` in order: the decision, and what made it.
fn evaluate<'r>(rules: &'r [Rbac], subject: &Subject<'_>) -> (Decision, Decider<'r>) {
    let mut allowed_by = None;
    for r in rules {
        let matched = r
            .policies
            .iter()
            .find(|(_, p)| matches(p, subject))
            .map(|(name, _)| name.as_str());
        match rbac::Action::try_from(r.action) {
            Ok(rbac::Action::Deny) if matched.is_some() => {
                return (Decision::Deny { by_deny_rule: true }, Some((r, matched)));
            }
            Ok(rbac::Action::Allow) if matched.is_none() => {
                let denied = Decision::Deny {
                    by_deny_rule: false,
                };
                return (denied, Some((r, None)));
            }
            Ok(rbac::Action::Allow) => allowed_by = Some((r, matched)),
            _ => {}
        }
    }
    (Decision::Allow, allowed_by)
}

/// Applies `rules` in order.
pub fn decide(rules: &[Rbac], subject: &Subject<'_>) -> Decision {
    evaluate(rules, subject).0
}

/// The DENY policy that denies `subject`, if one does (not when no ALLOW
/// policy matches): what the access log names as the matched policy.
pub fn denying_policy<'r>(rules: &'r [Rbac], subject: &Subject<'_>) -> Option<&'r str> {
    match evaluate(rules, subject) {
        (Decision::Deny { by_deny_rule: true }, Some((_, name))) => name,
        _ => None,
    }
}

/// The decision `decide` makes, and which policy made it, in words (for
/// `meshctl authz check`). The control plane names each Envoy policy after
/// the AuthorizationPolicies it comes from.
pub fn explain(rules: &[Rbac], subject: &Subject<'_>) -> (Decision, String) {
    let (decision, decider) = evaluate(rules, subject);
    let why = match (decision, decider) {
        (Decision::Deny { by_deny_rule: true }, Some((_, Some(name)))) => {
            format!("denied by DENY policy {name}")
        }
        (Decision::Deny { .. }, Some((r, _))) if r.policies.is_empty() => {
            "denied: ALLOW policies select this workload, and none has a rule for this port and protocol".to_owned()
        }
        (Decision::Deny { .. }, Some((r, _))) => {
            let mut names: Vec<&str> = r.policies.keys().map(String::as_str).collect();
            names.sort();
            format!("denied: no rule of the ALLOW policies {} matches", names.join(","))
        }
        (Decision::Deny { .. }, None) => "denied".to_owned(),
        (Decision::Allow, Some((_, Some(name)))) => {
            format!("allowed by a rule of the ALLOW policies {name}")
        }
        (Decision::Allow, _) => {
            "allowed: no DENY policy matches and no ALLOW policy selects this workload".to_owned()
        }
    };
    (decision, why)
}

fn is(p: &Principal, s: &Subject<'_>) -> bool {
    use principal::Identifier as I;
    match &p.identifier {
        Some(I::Any(any)) => *any,
        Some(I::AndIds(set)) => set.ids.iter().all(|p| is(p, s)),
        Some(I::OrIds(set)) => set.ids.iter().any(|p| is(p, s)),
        Some(I::NotId(p)) => !is(p, s),
        Some(I::Authenticated(a)) => match (s.peer, &a.principal_name) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(id), Some(m)) => string_matches(m, id),
        },
        Some(I::DirectRemoteIp(c) | I::RemoteIp(c)) => in_cidr(c, s.remote),
        Some(I::Header(h)) => header_matches(h, s),
        Some(I::UrlPath(p)) => url_path_matches(p, s),
        _ => false,
    }
}

fn permits(p: &Permission, s: &Subject<'_>) -> bool {
    use permission::Rule as R;
    match &p.rule {
        Some(R::Any(any)) => *any,
        Some(R::AndRules(set)) => set.rules.iter().all(|p| permits(p, s)),
        Some(R::OrRules(set)) => set.rules.iter().any(|p| permits(p, s)),
        Some(R::NotRule(p)) => !permits(p, s),
        Some(R::DestinationPort(port)) => u32::from(s.local_port) == *port,
        Some(R::DestinationPortRange(r)) => (r.start..r.end).contains(&i32::from(s.local_port)),
        Some(R::Header(h)) => header_matches(h, s),
        Some(R::UrlPath(p)) => url_path_matches(p, s),
        _ => false,
    }
}

fn url_path_matches(
    p: &envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher,
    s: &Subject<'_>,
) -> bool {
    let Some((_, path)) = s.request else {
        return false;
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    matches!(&p.rule, Some(path_matcher::Rule::Path(m)) if string_matches(m, path))
}

fn header_matches(h: &HeaderMatcher, s: &Subject<'_>) -> bool {
    use header_matcher::HeaderMatchSpecifier as H;
    let Some((method, path)) = s.request else {
        return false;
    };
    let value: Option<&str> = match h.name.as_str() {
        ":method" => Some(method),
        ":path" => Some(path),
        name => s
            .headers
            .and_then(|hs| hs.get(name))
            .and_then(|v| v.to_str().ok()),
    };
    let matched = match (&h.header_match_specifier, value) {
        (Some(H::PresentMatch(present)), v) => v.is_some() == *present,
        (_, None) => false,
        (Some(H::StringMatch(m)), Some(v)) => string_matches(m, v),
        _ => false,
    };
    matched != h.invert_match
}

fn string_matches(m: &StringMatcher, value: &str) -> bool {
    use string_matcher::MatchPattern as M;
    let (value, fold) = if m.ignore_case {
        (value.to_ascii_lowercase(), true)
    } else {
        (value.to_owned(), false)
    };
    let norm = |p: &str| {
        if fold {
            p.to_ascii_lowercase()
        } else {
            p.to_owned()
        }
    };
    match &m.match_pattern {
        Some(M::Exact(p)) => value == norm(p),
        Some(M::Prefix(p)) => value.starts_with(&norm(p)),
        Some(M::Suffix(p)) => value.ends_with(&norm(p)),
        Some(M::Contains(p)) => value.contains(&norm(p)),
        _ => false,
    }
}

fn in_cidr(c: &CidrRange, ip: IpAddr) -> bool {
    let Ok(net) = c.address_prefix.parse::<IpAddr>() else {
        return false;
    };
    let len = c.prefix_len.map_or(0, |l| l.value);
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - len.min(128)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Checks that every matcher in `rules` is one this proxy evaluates.
pub fn validate(rules: &Rbac) -> Result<(), Refusal> {
    match rbac::Action::try_from(rules.action) {
        Ok(rbac::Action::Allow | rbac::Action::Deny) => {}
        _ => {
            return Err(Refusal::unsupported(
                "RBAC action must be ALLOW or DENY".to_owned(),
            ));
        }
    }
    let mut names: Vec<_> = rules.policies.keys().collect();
    names.sort();
    for name in names {
        let p = &rules.policies[name];
        if p.condition.is_some() || p.checked_condition.is_some() {
            return Err(Refusal::unsupported(format!(
                "RBAC policy {name:?}: conditions are not supported"
            )));
        }
        for x in &p.permissions {
            check_permission(x).map_err(|e| e.at(format!("RBAC policy {name:?}")))?;
        }
        for x in &p.principals {
            check_principal(x).map_err(|e| e.at(format!("RBAC policy {name:?}")))?;
        }
    }
    Ok(())
}

fn check_string(m: &StringMatcher) -> Result<(), Refusal> {
    use string_matcher::MatchPattern as M;
    match &m.match_pattern {
        Some(M::Exact(_) | M::Prefix(_) | M::Suffix(_) | M::Contains(_)) => Ok(()),
        _ => Err(Refusal::unsupported(
            "only exact, prefix, suffix and contains string matchers are supported".to_owned(),
        )),
    }
}

fn check_header(h: &HeaderMatcher) -> Result<(), Refusal> {
    use header_matcher::HeaderMatchSpecifier as H;
    match &h.header_match_specifier {
        Some(H::StringMatch(m)) => check_string(m),
        Some(H::PresentMatch(_)) => Ok(()),
        _ => Err(Refusal::unsupported(format!(
            "header matcher for {:?} is not supported",
            h.name
        ))),
    }
}

fn check_path(p: &envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher) -> Result<(), Refusal> {
    match &p.rule {
        Some(path_matcher::Rule::Path(m)) => check_string(m),
        None => Err(Refusal::invalid("an empty path matcher".to_owned())),
    }
}

fn check_principal(p: &Principal) -> Result<(), Refusal> {
    use principal::Identifier as I;
    match &p.identifier {
        Some(I::Any(_)) => Ok(()),
        Some(I::AndIds(set) | I::OrIds(set)) => set.ids.iter().try_for_each(check_principal),
        Some(I::NotId(p)) => check_principal(p),
        Some(I::Authenticated(a)) => a.principal_name.as_ref().map_or(Ok(()), check_string),
        Some(I::DirectRemoteIp(c) | I::RemoteIp(c)) => c
            .address_prefix
            .parse::<IpAddr>()
            .map(drop)
            .map_err(|_| Refusal::invalid(format!("{:?} is not an IP address", c.address_prefix))),
        Some(I::Header(h)) => check_header(h),
        Some(I::UrlPath(p)) => check_path(p),
        _ => Err(Refusal::unsupported("principal kind is not supported (any, and/or/not, authenticated, remote_ip, header, url_path are)".to_owned())),
    }
}

fn check_permission(p: &Permission) -> Result<(), Refusal> {
    use permission::Rule as R;
    match &p.rule {
        Some(R::Any(_) | R::DestinationPort(_) | R::DestinationPortRange(_)) => Ok(()),
        Some(R::AndRules(set) | R::OrRules(set)) => set.rules.iter().try_for_each(check_permission),
        Some(R::NotRule(p)) => check_permission(p),
        Some(R::Header(h)) => check_header(h),
        Some(R::UrlPath(p)) => check_path(p),
        _ => Err(Refusal::unsupported("permission kind is not supported (any, and/or/not, destination_port(_range), header, url_path are)".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::rbac::v3::Policy;

    fn exact(id: &str) -> Principal {
        Principal {
            identifier: Some(principal::Identifier::Authenticated(
                principal::Authenticated {
                    principal_name: Some(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Exact(id.to_owned())),
                        ..Default::default()
                    }),
                },
            )),
        }
    }

    fn rules(action: rbac::Action, principal: Principal, permission: Permission) -> Rbac {
        Rbac {
            action: action as i32,
            policies: [(
                "p".to_owned(),
                Policy {
                    permissions: vec![permission],
                    principals: vec![principal],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    fn any_permission() -> Permission {
        Permission {
            rule: Some(permission::Rule::Any(true)),
        }
    }

    fn subject<'a>(peer: Option<&'a str>, request: Option<(&'a str, &'a str)>) -> Subject<'a> {
        Subject {
            peer,
            remote: "127.0.0.1".parse().unwrap(),
            local_port: 8080,
            request,
            headers: None,
        }
    }

    const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";

    #[test]
    fn allow_admits_only_the_named_identity() {
        let r = [rules(
            rbac::Action::Allow,
            exact(FRONTEND),
            any_permission(),
        )];
        assert_eq!(decide(&r, &subject(Some(FRONTEND), None)), Decision::Allow);
        assert_eq!(
            decide(
                &r,
                &subject(Some("spiffe://cluster.local/ns/default/sa/other"), None)
            ),
            Decision::Deny {
                by_deny_rule: false
            }
        );
        // A plaintext caller has no identity, so it cannot match.
        assert_eq!(
            decide(&r, &subject(None, None)),
            Decision::Deny {
                by_deny_rule: false
            }
        );
    }

    #[test]
    fn deny_wins_and_paths_ignore_the_query() {
        let path = Principal {
            identifier: Some(principal::Identifier::UrlPath(
                envoy_types::pb::envoy::r#type::matcher::v3::PathMatcher {
                    rule: Some(path_matcher::Rule::Path(StringMatcher {
                        match_pattern: Some(string_matcher::MatchPattern::Prefix(
                            "/admin".to_owned(),
                        )),
                        ..Default::default()
                    })),
                },
            )),
        };
        let r = [rules(rbac::Action::Deny, path, any_permission())];
        assert_eq!(
            decide(&r, &subject(Some(FRONTEND), Some(("GET", "/admin?x=1")))),
            Decision::Deny { by_deny_rule: true }
        );
        let admin = subject(Some(FRONTEND), Some(("GET", "/admin")));
        assert_eq!(denying_policy(&r, &admin), Some("p"));
        assert_eq!(
            decide(&r, &subject(Some(FRONTEND), Some(("GET", "/ok")))),
            Decision::Allow
        );
        // Without a request (a TCP connection) a path rule cannot match.
        assert_eq!(decide(&r, &subject(Some(FRONTEND), None)), Decision::Allow);
    }

    #[test]
    fn cidr_ranges_match_by_prefix() {
        let c = CidrRange {
            address_prefix: "10.1.0.0".to_owned(),
            prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 16 }),
        };
        assert!(in_cidr(&c, "10.1.200.3".parse().unwrap()));
        assert!(!in_cidr(&c, "10.2.0.1".parse().unwrap()));
    }

    #[test]
    fn unsupported_matchers_are_refused() {
        let r = rules(
            rbac::Action::Allow,
            Principal {
                identifier: Some(principal::Identifier::FilterState(Default::default())),
            },
            any_permission(),
        );
        let refused = validate(&r).unwrap_err();
        assert!(matches!(refused, Refusal::Unsupported(_)), "{refused:?}");
        assert!(
            refused
                .to_string()
                .contains("principal kind is not supported")
        );
    }
}
