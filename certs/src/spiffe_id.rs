//! SPIFFE IDs and trust domains, parsed exactly as the SPIFFE ID specification
//! (SPIFFE-ID.md, sections 2.1-2.3) says, so that an identity that passes here
//! is one every other SPIFFE implementation accepts too.

use std::fmt;
use std::str::FromStr;

const SCHEME_PREFIX: &str = "spiffe://";

/// Implementations MUST accept SPIFFE IDs up to this many bytes (whole URI).
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// A trust domain name is at most 255 bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Why a string is not a SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("SPIFFE ID is empty")]
    Empty,
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error(
        "trust domain has invalid character {0:?}: only lowercase letters, digits, '.', '-' and '_' are allowed (no port, userinfo or percent-encoding)"
    )]
    BadTrustDomainChar(char),
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")]
    TrustDomainTooLong,
    #[error("trust domain has an empty label: it starts or ends with '.', or has \"..\"")]
    TrustDomainEmptyLabel,
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")]
    TooLong,
    #[error("path has an empty segment (\"//\") or a trailing '/'")]
    EmptySegment,
    #[error("path segments '.' and '..' are not allowed")]
    DotSegment,
    #[error(
        "path has invalid character {0:?}: only letters, digits, '.', '-' and '_' are allowed (no query, fragment or percent-encoding)"
    )]
    BadPathChar(char),
    #[error("SPIFFE ID has no path, but a workload identity needs one")]
    RootPath,
}

/// A trust domain name: the authority of a SPIFFE ID (e.g. `cluster.local`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name, or the trust domain of `spiffe://name`.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        if let Some(rest) = name.strip_prefix(SCHEME_PREFIX) {
            let id = SpiffeId::parse_any(name)?;
            if !id.path.is_empty() || rest.contains('/') {
                return Err(SpiffeIdError::BadTrustDomainChar('/'));
            }
            return Ok(id.trust_domain);
        }
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, used as the key of
    /// bundle maps in the Workload API.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }

    /// The Istio-compatible workload identity
    /// `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn workload_id(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::new(
            self.clone(),
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A SPIFFE ID naming a workload: `spiffe://<trust-domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: TrustDomain,
    /// Empty, or starting with '/'.
    path: String,
}

impl SpiffeId {
    /// Builds an ID from a trust domain and a path such as `/ns/a/sa/b`.
    pub fn new(trust_domain: TrustDomain, path: &str) -> Result<Self, SpiffeIdError> {
        validate_path(path)?;
        if path.is_empty() {
            return Err(SpiffeIdError::RootPath);
        }
        let id = Self {
            trust_domain,
            path: path.to_owned(),
        };
        if id.to_string().len() > MAX_SPIFFE_ID_BYTES {
            return Err(SpiffeIdError::TooLong);
        }
        Ok(id)
    }

    /// Parses a workload SPIFFE ID; the path must be non-empty, as X.509-SVID
    /// leaves require.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        let id = Self::parse_any(s)?;
        if id.path.is_empty() {
            return Err(SpiffeIdError::RootPath);
        }
        Ok(id)
    }

    /// Parses any SPIFFE ID, including a bare trust domain ID `spiffe://td`.
    fn parse_any(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_BYTES {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s
            .strip_prefix(SCHEME_PREFIX)
            .ok_or(SpiffeIdError::WrongScheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(authority)?;
        validate_path(path)?;
        Ok(Self {
            trust_domain: TrustDomain(authority.to_owned()),
            path: path.to_owned(),
        })
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, starting with '/'.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Namespace and service account if the ID has the form `/ns/<ns>/sa/<sa>`.
    pub fn namespace_and_service_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path.strip_prefix('/')?.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa)) if parts.next().is_none() => {
                Some((ns, sa))
            }
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(name: &str) -> Result<(), SpiffeIdError> {
    if name.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if name.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(SpiffeIdError::TrustDomainTooLong);
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        return Err(SpiffeIdError::BadTrustDomainChar(c));
    }
    // Names of DNS shape: `spiffe://../x` or `spiffe://a..b/x` parse under
    // the SPIFFE grammar, but are no one's trust domain and read like
    // paths to anything that normalizes URLs.
    if name.split('.').any(str::is_empty) {
        return Err(SpiffeIdError::TrustDomainEmptyLabel);
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(segments) = path.strip_prefix('/') else {
        return Err(SpiffeIdError::BadPathChar(
            path.chars().next().unwrap_or('?'),
        ));
    };
    for segment in segments.split('/') {
        if segment.is_empty() {
            return Err(SpiffeIdError::EmptySegment);
        }
        if segment == "." || segment == ".." {
            return Err(SpiffeIdError::DotSegment);
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError::*;

    fn err(s: &str) -> SpiffeIdError {
        SpiffeId::parse(s).unwrap_err()
    }

    #[test]
    fn accepts_a_plain_workload_id() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/web");
        assert_eq!(id.namespace_and_service_account(), Some(("default", "web")));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    }

    // 2: scheme must be "spiffe".
    #[test]
    fn rule_scheme_is_spiffe() {
        assert_eq!(err(""), Empty);
        assert_eq!(err("http://td/a"), WrongScheme);
        assert_eq!(err("spiffe:/td/a"), WrongScheme);
        assert_eq!(err("td/a"), WrongScheme);
        assert_eq!(err("SPIFFE://td/a"), WrongScheme);
    }

    // 2.1: the trust domain is required.
    #[test]
    fn rule_trust_domain_required() {
        assert_eq!(err("spiffe://"), MissingTrustDomain);
        assert_eq!(err("spiffe:///path"), MissingTrustDomain);
    }

    // 2.1: trust domain charset is [a-z0-9.-_]; uppercase is not allowed.
    #[test]
    fn rule_trust_domain_charset() {
        for ok in ["a", "example.org", "my-td_1.0", "10.0.0.1", "x.y.z"] {
            assert!(TrustDomain::new(ok).is_ok(), "{ok} should be valid");
        }
        assert_eq!(err("spiffe://Example.org/a"), BadTrustDomainChar('E'));
        assert_eq!(err("spiffe://ex ample/a"), BadTrustDomainChar(' '));
        assert_eq!(err("spiffe://[::1]/a"), BadTrustDomainChar('['));
    }

    // 2.1: no port, no userinfo, no percent-encoding in the authority.
    #[test]
    fn rule_no_port_userinfo_or_percent_encoding_in_trust_domain() {
        assert_eq!(err("spiffe://td:8080/a"), BadTrustDomainChar(':'));
        assert_eq!(err("spiffe://user:pw@td/a"), BadTrustDomainChar(':'));
        assert_eq!(err("spiffe://user@td/a"), BadTrustDomainChar('@'));
        assert_eq!(err("spiffe://t%64/a"), BadTrustDomainChar('%'));
    }

    // 2.1: trust domain at most 255 bytes.
    #[test]
    fn rule_trust_domain_length() {
        assert!(TrustDomain::new(&"a".repeat(255)).is_ok());
        assert_eq!(TrustDomain::new(&"a".repeat(256)), Err(TrustDomainTooLong));
    }

    // 2.2: path segment charset [a-zA-Z0-9.-_]; case is preserved.
    #[test]
    fn rule_path_charset() {
        let id = SpiffeId::parse("spiffe://td/Ns/A-b_c.D").unwrap();
        assert_eq!(id.path(), "/Ns/A-b_c.D");
        assert_eq!(err("spiffe://td/a b"), BadPathChar(' '));
        assert_eq!(err("spiffe://td/a%20b"), BadPathChar('%'));
        assert_eq!(err("spiffe://td/é"), BadPathChar('é'));
    }

    // 2.2: no empty segments and no trailing slash.
    #[test]
    fn rule_no_empty_segments() {
        assert_eq!(err("spiffe://td//a"), EmptySegment);
        assert_eq!(err("spiffe://td/a//b"), EmptySegment);
        assert_eq!(err("spiffe://td/a/"), EmptySegment);
        assert_eq!(err("spiffe://td/"), EmptySegment);
    }

    // 2.2: no relative segments.
    #[test]
    fn rule_no_dot_segments() {
        assert_eq!(err("spiffe://td/./a"), DotSegment);
        assert_eq!(err("spiffe://td/a/.."), DotSegment);
        assert_eq!(err("spiffe://../sa/b"), TrustDomainEmptyLabel);
        assert_eq!(err("spiffe://a..b/x"), TrustDomainEmptyLabel);
        assert_eq!(err("spiffe://.td/x"), TrustDomainEmptyLabel);
        assert!(SpiffeId::parse("spiffe://td/.a/..b/...").is_ok());
    }

    // 2: no query and no fragment.
    #[test]
    fn rule_no_query_or_fragment() {
        assert_eq!(err("spiffe://td/a?x=1"), BadPathChar('?'));
        assert_eq!(err("spiffe://td/a#frag"), BadPathChar('#'));
        assert_eq!(err("spiffe://td?x=1"), BadTrustDomainChar('?'));
        assert_eq!(err("spiffe://td#f"), BadTrustDomainChar('#'));
    }

    // 2.3: up to 2048 bytes must be accepted; longer is refused.
    #[test]
    fn rule_maximum_length() {
        let prefix = "spiffe://td/";
        let ok = format!("{prefix}{}", "a".repeat(MAX_SPIFFE_ID_BYTES - prefix.len()));
        assert_eq!(ok.len(), 2048);
        assert!(SpiffeId::parse(&ok).is_ok());
        assert_eq!(err(&format!("{ok}a")), TooLong);
    }

    // X509-SVID 2: a workload SVID's ID has a non-root path.
    #[test]
    fn rule_workload_id_needs_a_path() {
        assert_eq!(err("spiffe://td"), RootPath);
        let td = TrustDomain::new("spiffe://td").unwrap();
        assert_eq!(td.id_string(), "spiffe://td");
        assert!(TrustDomain::new("spiffe://td/a").is_err());
    }

    #[test]
    fn workload_ids_follow_the_istio_form() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let id = td.workload_id("prod", "api").unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/prod/sa/api");
        assert!(
            td.workload_id("bad/ns", "api")
                .is_ok_and(|id| id.namespace_and_service_account().is_none())
        );
        assert!(td.workload_id("", "api").is_err());
    }
}
