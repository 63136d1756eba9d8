//! Image signatures: signing and verifying images in their registry in
//! cosign's key-based format, so `meshctl image sign` in a pipeline, the
//! admission webhook and `cosign` itself all read and write the same
//! signatures. `registry` speaks the OCI distribution API; `cosign` is the
//! format and the keys.

pub mod attestation;
pub mod cosign;
pub mod credentials;
pub mod registry;

use bytes::Bytes;
use serde_json::json;

use crate::image::ImageRef;
use cosign::{PublicKey, SigningKey};
pub use registry::{Registry, RegistryError};

/// What the registry says of an image's signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Signed at `digest` by the keys with these fingerprints.
    Verified { digest: String, by: Vec<String> },
    /// `digest` has no valid signature by any key asked about; `found`
    /// signatures (by other keys, or not valid) were there.
    Unsigned { digest: String, found: usize },
    /// The image or its signatures could not be read.
    Failed(String),
}

/// What the registry holds of an image's vulnerability reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportCheck {
    /// The newest vulnerability attestation signed by a trusted key.
    Found {
        counts: attestation::SeverityCounts,
        by: Vec<String>,
    },
    /// None signed by a trusted key.
    Missing,
    Failed(String),
}

/// The vulnerability report attested for `image` (pinned to a digest) by
/// one of `keys`.
pub async fn vulnerability_report(
    registry: &Registry,
    image: &ImageRef,
    keys: &[PublicKey],
) -> ReportCheck {
    let digest = match resolve(registry, image).await {
        Ok(digest) => digest,
        Err(e) => return ReportCheck::Failed(e),
    };
    let tag = attestation::attestation_tag(&digest);
    let manifest = match registry
        .manifest(&image.registry, &image.repository, &tag)
        .await
    {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return ReportCheck::Missing,
        Err(e) => return ReportCheck::Failed(e.to_string()),
    };
    let json = match manifest.json() {
        Ok(json) => json,
        Err(e) => return ReportCheck::Failed(e.to_string()),
    };
    let layers: Vec<&serde_json::Value> = json["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["mediaType"] == attestation::DSSE_ENVELOPE
                && l["annotations"]["predicateType"] == attestation::VULN_PREDICATE
        })
        .collect();
    // Attestations are appended: the last one is the newest scan.
    for layer in layers.into_iter().rev() {
        let Some(blob_digest) = layer["digest"].as_str() else {
            continue;
        };
        let envelope = match registry
            .blob(&image.registry, &image.repository, blob_digest)
            .await
        {
            Ok(envelope) => envelope,
            Err(e) => return ReportCheck::Failed(e.to_string()),
        };
        if let Some((counts, by)) = attestation::verified_counts(&envelope, &digest, keys) {
            return ReportCheck::Found { counts, by };
        }
    }
    ReportCheck::Missing
}

/// The digest `image` names, or the one its tag points at now.
pub async fn resolve(registry: &Registry, image: &ImageRef) -> Result<String, String> {
    if let Some(digest) = &image.digest {
        return Ok(digest.clone());
    }
    let tag = image.tag.as_deref().unwrap_or("latest");
    match registry
        .manifest(&image.registry, &image.repository, tag)
        .await
    {
        Ok(Some(manifest)) => Ok(manifest.digest),
        Ok(None) => Err(format!("{image}: no such image in its registry")),
        Err(e) => Err(e.to_string()),
    }
}

/// Checks `image`'s cosign signatures against `keys`.
pub async fn verify(registry: &Registry, image: &ImageRef, keys: &[PublicKey]) -> SignatureCheck {
    let digest = match resolve(registry, image).await {
        Ok(digest) => digest,
        Err(e) => return SignatureCheck::Failed(e),
    };
    let tag = cosign::signature_tag(&digest);
    let manifest = match registry
        .manifest(&image.registry, &image.repository, &tag)
        .await
    {
        Ok(Some(manifest)) => manifest,
        Ok(None) => return SignatureCheck::Unsigned { digest, found: 0 },
        Err(e) => return SignatureCheck::Failed(e.to_string()),
    };
    let layers = match manifest.json() {
        Ok(json) => cosign::signature_layers(&json),
        Err(e) => return SignatureCheck::Failed(e.to_string()),
    };
    let mut by = Vec::new();
    for layer in &layers {
        let candidates: Vec<&PublicKey> = keys
            .iter()
            .filter(|k| !by.contains(&k.fingerprint()))
            .collect();
        if candidates.is_empty() {
            break;
        }
        let payload = match registry
            .blob(&image.registry, &image.repository, &layer.digest)
            .await
        {
            Ok(payload) => payload,
            Err(e) => return SignatureCheck::Failed(e.to_string()),
        };
        // A signature of another digest (copied next to this one) vouches
        // for nothing here.
        if cosign::signed_digest(&payload).as_deref() != Some(digest.as_str()) {
            continue;
        }
        for key in candidates {
            if key.verifies(&payload, &layer.signature) {
                by.push(key.fingerprint());
            }
        }
    }
    if by.is_empty() {
        SignatureCheck::Unsigned {
            digest,
            found: layers.len(),
        }
    } else {
        SignatureCheck::Verified { digest, by }
    }
}

/// Signs `image` (at the digest its tag points at now) with `key`, adding
/// the signature to any already there; returns the digest signed.
pub async fn sign(
    registry: &Registry,
    image: &ImageRef,
    key: &SigningKey,
) -> Result<String, String> {
    let digest = resolve(registry, image).await?;
    let payload = cosign::payload(&image.name(), &digest);
    let signature = key.sign(&payload);
    let tag = cosign::signature_tag(&digest);
    let (reg, repo) = (&image.registry, &image.repository);
    let mut layers = match registry
        .manifest(reg, repo, &tag)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(existing) => {
            let json = existing.json().map_err(|e| e.to_string())?;
            json["layers"].as_array().cloned().unwrap_or_default()
        }
        None => Vec::new(),
    };
    registry
        .push_blob(reg, repo, Bytes::from(payload.clone()))
        .await
        .map_err(|e| e.to_string())?;
    layers.push(cosign::layer_descriptor(&payload, &signature));
    let diff_ids: Vec<&serde_json::Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .expect("a config serializes");
    let config_digest = registry
        .push_blob(reg, repo, Bytes::from(config.clone()))
        .await
        .map_err(|e| e.to_string())?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": config.len(),
            "digest": config_digest
        },
        "layers": layers
    }))
    .expect("a manifest serializes");
    registry
        .push_manifest(
            reg,
            repo,
            &tag,
            "application/vnd.oci.image.manifest.v1+json",
            Bytes::from(manifest),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(digest)
}
