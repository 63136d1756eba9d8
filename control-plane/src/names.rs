//! Kubernetes naming rules for the namespaces and service accounts that make
//! up workload identities, checked before anything is stored or signed.

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} is invalid: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub name: String,
    pub reason: &'static str,
}

/// A namespace: an RFC 1123 DNS label (lowercase alphanumerics and '-',
/// starting and ending alphanumeric, at most 63 characters).
pub fn check_namespace(name: &str) -> Result<(), NameError> {
    check_label(name, 63).map_err(|reason| NameError {
        what: "namespace",
        name: name.to_owned(),
        reason,
    })
}

/// A service account: an RFC 1123 DNS subdomain (labels joined by '.', at
/// most 253 characters).
pub fn check_service_account(name: &str) -> Result<(), NameError> {
    let err = |reason| NameError {
        what: "service account",
        name: name.to_owned(),
        reason,
    };
    if name.len() > 253 {
        return Err(err("longer than 253 characters"));
    }
    name.split('.')
        .try_for_each(|label| check_label(label, 63))
        .map_err(err)
}

fn check_label(label: &str, max: usize) -> Result<(), &'static str> {
    if label.is_empty() {
        return Err("must not be empty");
    }
    if label.len() > max {
        return Err("longer than 63 characters");
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed");
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("must start and end with a letter or digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dns_labels() {
        assert!(check_namespace("default").is_ok());
        assert!(check_namespace("team-a1").is_ok());
        for bad in ["", "Default", "a.b", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_accounts_are_dns_subdomains() {
        assert!(check_service_account("web").is_ok());
        assert!(check_service_account("web.v1").is_ok());
        for bad in ["", "a..b", "Web", "a/b", "a b"] {
            assert!(check_service_account(bad).is_err(), "{bad}");
        }
    }
}
