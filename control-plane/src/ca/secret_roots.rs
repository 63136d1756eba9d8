//! The CA's roots in a Kubernetes Secret, so every control plane replica
//! signs with the same key and the mesh has one trust bundle. The first
//! replica to start generates the root and creates the Secret; one that
//! loses that race reads the winner's. A root rotation rewrites the Secret
//! (`<stem>-cert.pem`, `<stem>-key.pem`, `roots.json`, as in the data
//! directory), guarded by its resourceVersion, and every replica follows
//! it. The keys never touch the disk and are never logged.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::Context;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rampart_certs::TrustDomain;

use super::roots::{FIRST, LIST, RootPem, RootSet, Roots};

/// The roots kept in Secret `namespace/name`.
pub struct SecretRoots {
    api: Api<Secret>,
    name: String,
    /// `namespace/name`, for messages.
    what: String,
    /// The resourceVersion last read: a write over a newer one is refused.
    read_version: Mutex<Option<String>>,
}

impl SecretRoots {
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            what: format!("{namespace}/{name}"),
            read_version: Mutex::new(None),
        }
    }

    /// The roots, creating the Secret with a new root if there is none.
    pub async fn open(&self, trust_domain: &TrustDomain) -> anyhow::Result<RootSet> {
        let secret = match self.api.get_opt(&self.name).await? {
            Some(secret) => secret,
            None => self.create(trust_domain).await?,
        };
        self.taken(&secret)
    }

    /// The roots; a Secret gone is an error (never a new root).
    pub async fn read(&self) -> anyhow::Result<RootSet> {
        let secret = self.api.get_opt(&self.name).await?.with_context(|| {
            format!(
                "the CA Secret {} is gone; keeping the roots in use (restore it from a backup)",
                self.what
            )
        })?;
        self.taken(&secret)
    }

    /// Parses `secret`, remembering its resourceVersion for the next write.
    fn taken(&self, secret: &Secret) -> anyhow::Result<RootSet> {
        *self.read_version.lock().unwrap_or_else(|e| e.into_inner()) =
            secret.metadata.resource_version.clone();
        self.parse(secret)
    }

    async fn create(&self, trust_domain: &TrustDomain) -> anyhow::Result<Secret> {
        let set = RootSet {
            roots: Roots::first(),
            pems: [(FIRST.to_owned(), RootSet::generate(trust_domain)?)].into(),
        };
        let mut secret = self.secret(&set)?;
        // The first root needs no list: it is what a list-less Secret means.
        if let Some(data) = secret.data.as_mut() {
            data.remove(LIST);
        }
        match self.api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                tracing::info!(secret = %self.what, "generated the mesh root CA into a Secret");
                Ok(created)
            }
            // Another replica created it first: use its root, not ours.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(self.api.get(&self.name).await?),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the Secret's roots with `set`, unless it changed since read.
    pub async fn write(&self, set: &RootSet) -> anyhow::Result<()> {
        let mut secret = self.secret(set)?;
        secret.metadata.resource_version = self
            .read_version
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let written = self
            .api
            .replace(&self.name, &PostParams::default(), &secret)
            .await
            .with_context(|| format!("writing the roots to Secret {}", self.what))?;
        *self.read_version.lock().unwrap_or_else(|e| e.into_inner()) =
            written.metadata.resource_version;
        Ok(())
    }

    fn secret(&self, set: &RootSet) -> anyhow::Result<Secret> {
        let mut data = BTreeMap::new();
        for (stem, pem) in &set.pems {
            data.insert(
                format!("{stem}-cert.pem"),
                ByteString(pem.cert.clone().into_bytes()),
            );
            data.insert(
                format!("{stem}-key.pem"),
                ByteString(pem.key.clone().into_bytes()),
            );
        }
        data.insert(LIST.to_owned(), ByteString(serde_json::to_vec(&set.roots)?));
        Ok(Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some(
                    [("app.kubernetes.io/part-of".to_owned(), "rampart".to_owned())].into(),
                ),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        })
    }

    fn parse(&self, secret: &Secret) -> anyhow::Result<RootSet> {
        let what = &self.what;
        let data = secret.data.clone().unwrap_or_default();
        let text = |key: &str| -> anyhow::Result<String> {
            let bytes = data
                .get(key)
                .ok_or_else(|| anyhow::anyhow!("Secret {what} has no {key}"))?;
            String::from_utf8(bytes.0.clone())
                .map_err(|_| anyhow::anyhow!("Secret {what}: {key} is not PEM text"))
        };
        let roots = match data.get(LIST) {
            Some(list) => Roots::parse(&list.0, &format!("Secret {what}: {LIST}"))?,
            None => Roots::first(),
        };
        let mut pems = BTreeMap::new();
        for stem in &roots.trusted {
            let pem = RootPem {
                cert: text(&format!("{stem}-cert.pem"))?,
                key: text(&format!("{stem}-key.pem"))?,
            };
            pems.insert(stem.clone(), pem);
        }
        Ok(RootSet { roots, pems })
    }
}
