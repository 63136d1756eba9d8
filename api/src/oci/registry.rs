//! A small client of the OCI distribution API: what signing and verifying
//! images needs (manifests by tag or digest, blobs, and pushing both), with
//! the bearer-token challenge public registries use (anonymous, or with
//! the registry's credentials) and HTTP Basic for registries that ask for
//! it. Every call
//! is bounded by a timeout, and every byte read is checked against the
//! digest it was asked for: a registry is not trusted to say what it holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::cosign::sha256_digest;
use super::credentials::Credentials;

/// Manifests and signature payloads are small; anything larger is refused.
const MAX_BODY: usize = 4 << 20;

/// What `manifest` asks for: images, indexes, and their Docker forms.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A registry call that did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry} is unreachable: {detail}")]
    Unreachable { registry: String, detail: String },
    #[error("registry {registry} did not answer within {seconds}s")]
    Timeout { registry: String, seconds: u64 },
    #[error("{method} {url}: HTTP {status}: {detail}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        detail: String,
    },
    #[error("{url}: the content's digest is {got}, not the {expected} asked for")]
    DigestMismatch {
        url: String,
        expected: String,
        got: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A manifest as the registry holds it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// `sha256:<hex>` of its exact bytes: the image's digest.
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Manifest {
    pub fn json(&self) -> Result<Value, RegistryError> {
        serde_json::from_slice(&self.bytes)
            .map_err(|e| RegistryError::Invalid(format!("manifest {}: {e}", self.digest)))
    }
}

/// The client; cheap to share.
pub struct Registry {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Registries (`host:port`) spoken to in plain HTTP.
    plain_http: Vec<String>,
    timeout: Duration,
    /// User names and passwords by registry (none: anonymous only).
    credentials: Credentials,
    /// `Authorization` values that worked, by (registry, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl Registry {
    /// A client that speaks HTTPS (system roots) to every registry but
    /// `plain_http` ones, and gives each call `timeout`.
    pub fn new(plain_http: Vec<String>, timeout: Duration) -> std::io::Result<Registry> {
        let provider = || rustls::crypto::ring::default_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider())
        {
            Ok(builder) => builder,
            // No system roots (a minimal image): plain-HTTP registries still work.
            Err(_) => {
                let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(std::io::Error::other)?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        Ok(Registry {
            http: Client::builder(TokioExecutor::new()).build(connector),
            plain_http,
            timeout,
            credentials: Credentials::default(),
            tokens: Mutex::default(),
        })
    }

    /// The same client, logging in to registries with `credentials`.
    pub fn with_credentials(mut self, credentials: Credentials) -> Registry {
        self.credentials = credentials;
        self
    }

    /// The same client with the credentials of the Docker config.json at
    /// `path`, if one is given.
    pub fn with_credentials_file(self, path: Option<&std::path::Path>) -> Result<Registry, String> {
        Ok(match path {
            None => self,
            Some(path) => self.with_credentials(Credentials::load(path)?),
        })
    }

    /// The manifest `reference` (a tag or a digest) of `repository`, or
    /// None if the registry has none.
    pub async fn manifest(
        &self,
        registry: &str,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let url = self.url(registry, &format!("/v2/{repository}/manifests/{reference}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            MANIFEST_TYPES.parse().expect("a header value"),
        );
        let (status, response_headers, body) = self
            .call(
                registry,
                repository,
                Method::GET,
                &url,
                headers,
                Bytes::new(),
                false,
            )
            .await?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        expect(Method::GET, &url, status, &body, StatusCode::OK)?;
        let digest = sha256_digest(&body);
        if reference.starts_with("sha256:") && reference != digest {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: reference.to_owned(),
                got: digest,
            });
        }
        let media_type = response_headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok(Some(Manifest {
            digest,
            media_type,
            bytes: body,
        }))
    }

    /// Blob `digest` of `repository`, checked against its digest.
    pub async fn blob(
        &self,
        registry: &str,
        repository: &str,
        digest: &str,
    ) -> Result<Bytes, RegistryError> {
        let url = self.url(registry, &format!("/v2/{repository}/blobs/{digest}"));
        let (status, _, body) = self
            .call(
                registry,
                repository,
                Method::GET,
                &url,
                HeaderMap::new(),
                Bytes::new(),
                false,
            )
            .await?;
        expect(Method::GET, &url, status, &body, StatusCode::OK)?;
        let got = sha256_digest(&body);
        if got != digest {
            return Err(RegistryError::DigestMismatch {
                url,
                expected: digest.to_owned(),
                got,
            });
        }
        Ok(body)
    }

    /// Uploads `bytes` as a blob (monolithic upload) unless the registry
    /// has it; returns its digest.
    pub async fn push_blob(
        &self,
        registry: &str,
        repository: &str,
        bytes: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = sha256_digest(&bytes);
        let url = self.url(registry, &format!("/v2/{repository}/blobs/{digest}"));
        let (status, _, _) = self
            .call(
                registry,
                repository,
                Method::HEAD,
                &url,
                HeaderMap::new(),
                Bytes::new(),
                true,
            )
            .await?;
        if status == StatusCode::OK {
            return Ok(digest);
        }
        let url = self.url(registry, &format!("/v2/{repository}/blobs/uploads/"));
        let (status, headers, body) = self
            .call(
                registry,
                repository,
                Method::POST,
                &url,
                HeaderMap::new(),
                Bytes::new(),
                true,
            )
            .await?;
        expect(Method::POST, &url, status, &body, StatusCode::ACCEPTED)?;
        let location = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Invalid(format!("POST {url}: no upload Location")))?;
        // The Location may be relative, and may carry a query already.
        let mut upload = if location.starts_with('/') {
            self.url(registry, location)
        } else {
            location.to_owned()
        };
        upload.push(if upload.contains('?') { '&' } else { '?' });
        upload.push_str(&format!("digest={digest}"));
        let mut put_headers = HeaderMap::new();
        put_headers.insert(
            header::CONTENT_TYPE,
            "application/octet-stream".parse().expect("a header value"),
        );
        let (status, _, body) = self
            .call(
                registry,
                repository,
                Method::PUT,
                &upload,
                put_headers,
                bytes,
                true,
            )
            .await?;
        expect(Method::PUT, &upload, status, &body, StatusCode::CREATED)?;
        Ok(digest)
    }

    /// Stores `manifest` (of `media_type`) under `tag`.
    pub async fn push_manifest(
        &self,
        registry: &str,
        repository: &str,
        tag: &str,
        media_type: &str,
        manifest: Bytes,
    ) -> Result<(), RegistryError> {
        let url = self.url(registry, &format!("/v2/{repository}/manifests/{tag}"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            media_type
                .parse()
                .map_err(|_| RegistryError::Invalid(format!("media type {media_type:?}")))?,
        );
        let (status, _, body) = self
            .call(
                registry,
                repository,
                Method::PUT,
                &url,
                headers,
                manifest,
                true,
            )
            .await?;
        expect(Method::PUT, &url, status, &body, StatusCode::CREATED)
    }

    fn url(&self, registry: &str, path: &str) -> String {
        let scheme = if self.plain_http.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        // Docker Hub's API is not at its name.
        let host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        format!("{scheme}://{host}{path}")
    }

    /// One request, answering a bearer-token challenge once.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        registry: &str,
        repository: &str,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Bytes,
        push: bool,
    ) -> Result<(StatusCode, HeaderMap, Bytes), RegistryError> {
        let scope = format!(
            "repository:{repository}:{}",
            if push { "pull,push" } else { "pull" }
        );
        let key = (registry.to_owned(), scope.clone());
        let auth = self.tokens.lock().expect("not poisoned").get(&key).cloned();
        let first = self
            .send(
                registry,
                &method,
                url,
                &headers,
                body.clone(),
                auth.as_deref(),
            )
            .await?;
        if first.0 != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first
            .1
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let auth = self.answer(registry, &challenge, &scope).await?;
        self.tokens
            .lock()
            .expect("not poisoned")
            .insert(key, auth.clone());
        self.send(registry, &method, url, &headers, body, Some(&auth))
            .await
    }

    /// The `Authorization` value that answers `challenge`: a bearer token
    /// for `scope` from the challenge's realm (asked for with the
    /// registry's credentials, if any), or the credentials themselves for
    /// HTTP Basic.
    async fn answer(
        &self,
        registry: &str,
        challenge: &str,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let credential = self.credentials.get(registry);
        let needs_credentials = || {
            RegistryError::Invalid(format!(
                "registry {registry} asks for credentials ({challenge:?}) and none are given for it (--registry-auth)"
            ))
        };
        if challenge.len() >= 5 && challenge[..5].eq_ignore_ascii_case("basic") {
            return credential.map(|c| c.basic()).ok_or_else(needs_credentials);
        }
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(needs_credentials());
        };
        let param = |name: &str| {
            params.split(',').find_map(|p| {
                let (k, v) = p.trim().split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm = param("realm").ok_or_else(|| {
            RegistryError::Invalid(format!("registry {registry}: a challenge without a realm"))
        })?;
        let mut url = format!("{realm}?scope={scope}");
        if let Some(service) = param("service") {
            url.push_str(&format!("&service={service}"));
        }
        let basic = credential.map(|c| c.basic());
        let (status, _, body) = self
            .send(
                registry,
                &Method::GET,
                &url,
                &HeaderMap::new(),
                Bytes::new(),
                basic.as_deref(),
            )
            .await?;
        if status == StatusCode::UNAUTHORIZED && credential.is_none() {
            return Err(needs_credentials());
        }
        expect(Method::GET, &url, status, &body, StatusCode::OK)?;
        let answer: Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Invalid(format!("{url}: not a token answer: {e}")))?;
        answer["token"]
            .as_str()
            .or_else(|| answer["access_token"].as_str())
            .map(|token| format!("Bearer {token}"))
            .ok_or_else(|| RegistryError::Invalid(format!("{url}: no token in the answer")))
    }

    async fn send(
        &self,
        registry: &str,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        body: Bytes,
        authorization: Option<&str>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), RegistryError> {
        let mut request = Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| RegistryError::Invalid(format!("{url}: {e}")))?;
        let exchange = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|e| RegistryError::Unreachable {
                        registry: registry.to_owned(),
                        detail: error_chain(&e),
                    })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| RegistryError::Unreachable {
                    registry: registry.to_owned(),
                    detail: format!("reading {url}: {e}"),
                })?
                .to_bytes();
            Ok((parts.status, parts.headers, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RegistryError::Timeout {
                registry: registry.to_owned(),
                seconds: self.timeout.as_secs().max(1),
            })?
    }
}

fn expect(
    method: Method,
    url: &str,
    status: StatusCode,
    body: &[u8],
    wanted: StatusCode,
) -> Result<(), RegistryError> {
    if status == wanted {
        return Ok(());
    }
    let detail = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
    Err(RegistryError::Status {
        method,
        url: url.to_owned(),
        status,
        detail,
    })
}

/// An error and its causes, on one line ("connection refused" is the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::credentials::Credentials;
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A registry whose token service wants `ci:pw` (what Docker Hub and
    /// GHCR do for private repositories): `/v2/...` answers 401 with a
    /// Bearer challenge unless given the token, `/token` gives the token
    /// only for the right Basic credentials and scope.
    async fn token_registry() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let realm = format!("http://{addr}/token");
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let realm = realm.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 8192];
                    let n = stream.read(&mut buf).await.unwrap();
                    let request = String::from_utf8_lossy(&buf[..n]).to_string();
                    let line = request.lines().next().unwrap_or_default().to_owned();
                    let authorization = request
                        .lines()
                        .find_map(|l| l.strip_prefix("authorization: "))
                        .unwrap_or_default()
                        .to_owned();
                    let basic = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("ci:pw")
                    );
                    let (status, headers, body) = if line
                        .starts_with("GET /token?scope=repository:shop/web:pull&service=test")
                    {
                        if authorization == basic {
                            ("200 OK", String::new(), r#"{"token": "t0k"}"#.to_owned())
                        } else {
                            ("401 Unauthorized", String::new(), String::new())
                        }
                    } else if authorization == "Bearer t0k" {
                        (
                            "200 OK",
                            String::new(),
                            r#"{"schemaVersion": 2}"#.to_owned(),
                        )
                    } else {
                        (
                            "401 Unauthorized",
                            format!(
                                "www-authenticate: Bearer realm=\"{realm}\",service=\"test\"\r\n"
                            ),
                            String::new(),
                        )
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_bearer_token_is_asked_for_with_the_credentials() {
        let addr = token_registry().await;
        let anonymous = Registry::new(vec![addr.clone()], Duration::from_secs(5)).unwrap();
        let e = anonymous
            .manifest(&addr, "shop/web", "1.0")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("asks for credentials"), "{e}");
        let config = serde_json::json!({"auths": {&addr: {"username": "ci", "password": "pw"}}});
        let logged_in = Registry::new(vec![addr.clone()], Duration::from_secs(5))
            .unwrap()
            .with_credentials(Credentials::from_docker_config(&config.to_string()).unwrap());
        let manifest = logged_in.manifest(&addr, "shop/web", "1.0").await.unwrap();
        assert!(manifest.is_some(), "the token opened the repository");
    }
}
