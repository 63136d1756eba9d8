//! Registry credentials, read from a Docker `config.json` (what `docker
//! login`, `podman login` and a Kubernetes `kubernetes.io/dockerconfigjson`
//! Secret hold): `{"auths": {"ghcr.io": {"auth": base64("user:password")}}}`
//! or `{"username": ..., "password": ...}` per registry. The password never
//! appears in a message, a log line or a Debug print.

use std::collections::HashMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    password: String,
}

impl Credential {
    /// The `Authorization: Basic` value.
    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.password))
        )
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}, password hidden)", self.username)
    }
}

/// Credentials by registry (`ghcr.io`, `127.0.0.1:5000`, `docker.io`).
#[derive(Debug, Clone, Default)]
pub struct Credentials(HashMap<String, Credential>);

impl Credentials {
    /// Parses a Docker config.json; the error says which entry is wrong
    /// (never what its secret is).
    pub fn from_docker_config(json: &str) -> Result<Credentials, String> {
        let config: Value =
            serde_json::from_str(json).map_err(|e| format!("not a Docker config.json: {e}"))?;
        let auths = config["auths"]
            .as_object()
            .ok_or("not a Docker config.json: no \"auths\" object")?;
        let mut out = HashMap::new();
        for (key, entry) in auths {
            let registry = registry_of(key);
            let bad = |why: &str| format!("auths[{key:?}]: {why}");
            let credential = if let Some(auth) = entry["auth"].as_str() {
                let decoded = B64
                    .decode(auth.trim())
                    .map_err(|_| bad("\"auth\" is not base64"))?;
                let decoded =
                    String::from_utf8(decoded).map_err(|_| bad("\"auth\" is not UTF-8"))?;
                let (username, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| bad("\"auth\" is not base64 of user:password"))?;
                Credential {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            } else if let (Some(username), Some(password)) =
                (entry["username"].as_str(), entry["password"].as_str())
            {
                Credential {
                    username: username.to_owned(),
                    password: password.to_owned(),
                }
            } else if entry["identitytoken"].is_string() {
                return Err(bad(
                    "identity tokens (OAuth refresh tokens) are not supported; give a user name and password or an access token",
                ));
            } else {
                return Err(bad("no \"auth\", nor \"username\" and \"password\""));
            };
            out.insert(registry, credential);
        }
        Ok(Credentials(out))
    }

    /// Reads the Docker config.json at `path`.
    pub fn load(path: &std::path::Path) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the registry credentials {}: {e}", path.display()))?;
        Self::from_docker_config(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The credential for `registry`, if any.
    pub fn get(&self, registry: &str) -> Option<&Credential> {
        self.0.get(registry)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The registry an `auths` key names: keys may be URLs
/// (`https://index.docker.io/v1/`) or bare hosts (`ghcr.io`).
fn registry_of(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_entries_are_read_in_both_forms_and_never_shown() {
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": B64.encode("hub:s3cret")},
            "127.0.0.1:5000": {"username": "ci", "password": "p4ss:word"},
        }})
        .to_string();
        let creds = Credentials::from_docker_config(&config).unwrap();
        let hub = creds.get("docker.io").unwrap();
        assert_eq!(hub.username, "hub");
        assert_eq!(hub.basic(), format!("Basic {}", B64.encode("hub:s3cret")));
        assert_eq!(
            creds.get("127.0.0.1:5000").unwrap().basic(),
            format!("Basic {}", B64.encode("ci:p4ss:word"))
        );
        assert!(creds.get("ghcr.io").is_none());
        let shown = format!("{creds:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("p4ss"),
            "{shown}"
        );

        for (bad, expected) in [
            ("{}", "no \"auths\""),
            (r#"{"auths": {"r": {"auth": "%%%"}}}"#, "not base64"),
            (
                r#"{"auths": {"r": {"identitytoken": "x"}}}"#,
                "not supported",
            ),
            (r#"{"auths": {"r": {}}}"#, "no \"auth\""),
        ] {
            let e = Credentials::from_docker_config(bad).unwrap_err();
            assert!(e.contains(expected), "{bad}: {e}");
        }
    }
}
