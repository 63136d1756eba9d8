//! Image references, normalized the way the container runtime resolves
//! them, so that a registry allow-list cannot be dodged by spelling:
//! `nginx` is `docker.io/library/nginx:latest`, `localhost:5000/app` is on
//! registry `localhost:5000`, and `docker.io/nginx@sha256:…` is pinned.

use std::fmt;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/nginx`, `acme/shop/cart`.
    pub repository: String,
    /// `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `reference`; the error says what is wrong with it.
    pub fn parse(reference: &str) -> Result<ImageRef, String> {
        let bad = |why: &str| Err(format!("image {reference:?}: {why}"));
        if reference.is_empty() {
            return bad("empty");
        }
        if reference != reference.trim() || reference.contains(char::is_whitespace) {
            return bad("contains whitespace");
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let Some(hex) = digest.strip_prefix("sha256:") else {
                    return bad("the digest must be sha256:<64 hex digits>");
                };
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return bad("the digest must be sha256:<64 hex digits>");
                }
                (rest, Some(digest.to_ascii_lowercase()))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag
            && (tag.is_empty()
                || tag.len() > 128
                || !tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            return bad("a tag is up to 128 letters, digits, '.', '_' or '-'");
        }
        let (registry, repository) = split_registry(name);
        if repository.is_empty()
            || !repository.split('/').all(|part| {
                !part.is_empty()
                    && part.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return bad("the repository must be lower-case path components");
        }
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry: registry.to_ascii_lowercase(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// This image pinned to `digest` (what runs is what was verified).
    pub fn pinned(&self, digest: &str) -> ImageRef {
        ImageRef {
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// The first component is a registry if it looks like a host (has a '.' or
/// a ':', or is `localhost`); otherwise the image is on Docker Hub.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (
                if first == "index.docker.io" {
                    "docker.io"
                } else {
                    first
                },
                rest,
            )
        }
        _ => ("docker.io", name),
    }
}

/// An allow-list entry: a registry (`ghcr.io`), a repository path prefix
/// (`ghcr.io/acme/`, `ghcr.io/acme`) or one repository (`nginx`, which
/// means `docker.io/library/nginx`). It matches whole path components, so
/// `ghcr.io/acme` does not admit `ghcr.io/acme-evil/x`.
pub fn allowed_by(image: &ImageRef, entry: &str) -> bool {
    let entry = entry.trim_end_matches('/');
    let normalized = match entry.split_once('/') {
        // A bare registry.
        None if entry.contains('.') || entry.contains(':') || entry == "localhost" => {
            return image.registry == entry.to_ascii_lowercase();
        }
        _ => match ImageRef::parse(entry) {
            Ok(r) => r.name(),
            Err(_) => return false,
        },
    };
    let name = image.name();
    name == normalized
        || name
            .strip_prefix(&normalized)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap()
    }

    #[test]
    fn references_normalize_as_the_runtime_resolves_them() {
        assert_eq!(parse("nginx").to_string(), "docker.io/library/nginx:latest");
        assert_eq!(parse("acme/app:1").to_string(), "docker.io/acme/app:1");
        assert_eq!(
            parse("index.docker.io/library/nginx:1.27").to_string(),
            "docker.io/library/nginx:1.27"
        );
        let local = parse("localhost:5000/demo/app:1.0");
        assert_eq!(
            (local.registry.as_str(), local.repository.as_str()),
            ("localhost:5000", "demo/app")
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned = parse(&format!("127.0.0.1:5000/app@{digest}"));
        assert_eq!((pinned.tag, pinned.digest), (None, Some(digest.clone())));
        let both = parse(&format!("ghcr.io/a/b:2@{digest}"));
        assert_eq!(both.tag.as_deref(), Some("2"));
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        for (bad, why) in [
            ("", "empty"),
            ("nginx@sha256:abc", "64 hex"),
            ("nginx@md5:abc", "sha256"),
            ("Nginx", "lower-case"),
            ("nginx:", "tag"),
            ("ghcr.io//x", "lower-case"),
            ("nginx latest", "whitespace"),
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn allow_list_entries_match_whole_components() {
        let img = parse("ghcr.io/acme/shop/cart:1");
        assert!(allowed_by(&img, "ghcr.io"));
        assert!(allowed_by(&img, "ghcr.io/acme/"));
        assert!(allowed_by(&img, "ghcr.io/acme"));
        assert!(allowed_by(&img, "ghcr.io/acme/shop/cart"));
        assert!(!allowed_by(&img, "ghcr.io/ac"));
        assert!(!allowed_by(&parse("ghcr.io/acme-evil/x"), "ghcr.io/acme"));
        assert!(!allowed_by(&img, "docker.io"));
        // `nginx` is Docker Hub's library/nginx, nothing else.
        assert!(allowed_by(&parse("nginx:1.27"), "nginx"));
        assert!(allowed_by(&parse("docker.io/library/nginx"), "nginx"));
        assert!(!allowed_by(&parse("evil.io/nginx"), "nginx"));
        assert!(!allowed_by(&parse("nginx-evil"), "nginx"));
    }
}
