//! Cosign's signature format (sigstore/cosign `specs/SIGNATURE_SPEC.md`),
//! key-based: a signature of image digest `sha256:<hex>` lives in the same
//! repository under tag `sha256-<hex>.sig`, an OCI manifest with one layer
//! per signature. Each layer is a Simple Signing payload naming the digest;
//! its annotation `dev.cosignproject.cosign/signature` is the base64 ECDSA
//! P-256 / SHA-256 signature (ASN.1 DER) of the payload's exact bytes.
//! Keys are PEM: PKCS#8 `PRIVATE KEY` to sign, SPKI `PUBLIC KEY` to verify,
//! the forms `openssl` writes and `cosign verify --key` reads.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use rustls_pki_types::pem::{PemObject, SectionKind};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Media type of a signature layer.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation holding the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of an image signature payload.
const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The DER header of a P-256 SubjectPublicKeyInfo (id-ecPublicKey,
/// prime256v1, then a BIT STRING of the 65-byte uncompressed point).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A key problem, said plainly.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM {0} block")]
    NotPem(&'static str),
    #[error("not an ECDSA P-256 key: {0}")]
    NotP256(String),
}

/// A public key signatures are checked with.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// The uncompressed point.
    point: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) of a P-256 key.
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(pem.as_bytes())
            .map_err(|_| KeyError::NotPem("PUBLIC KEY"))?;
        if kind != SectionKind::PublicKey {
            return Err(KeyError::NotPem("PUBLIC KEY"));
        }
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 4 => Ok(PublicKey {
                point: point.to_vec(),
            }),
            _ => Err(KeyError::NotP256(
                "the SubjectPublicKeyInfo is not an uncompressed prime256v1 point".into(),
            )),
        }
    }

    /// The PEM `PUBLIC KEY` form.
    pub fn to_pem(&self) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        pem("PUBLIC KEY", &der)
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo: names the key in reports.
    pub fn fingerprint(&self) -> String {
        let mut der = P256_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.point);
        format!("sha256:{}", hex(&Sha256::digest(&der)))
    }

    /// Whether `signature` (ASN.1 DER) signs `payload` with this key.
    pub fn verifies(&self, payload: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(payload, signature)
            .is_ok()
    }
}

/// A key to sign with. Never logged (no Debug).
pub struct SigningKey {
    pair: EcdsaKeyPair,
}

impl SigningKey {
    /// Reads a PEM PKCS#8 `PRIVATE KEY` of a P-256 key (what `openssl
    /// genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` writes).
    pub fn from_pem(pem: &str) -> Result<SigningKey, KeyError> {
        let (kind, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(pem.as_bytes())
            .map_err(|_| KeyError::NotPem("PRIVATE KEY"))?;
        if kind != SectionKind::PrivateKey {
            return Err(KeyError::NotPem("PRIVATE KEY (PKCS#8)"));
        }
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der, &SystemRandom::new())
                .map_err(|e| KeyError::NotP256(e.to_string()))?;
        Ok(SigningKey { pair })
    }

    /// A new key, as PEM PKCS#8.
    pub fn generate_pem() -> String {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                .expect("the system random source works");
        pem("PRIVATE KEY", pkcs8.as_ref())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// The ASN.1 DER signature of `payload`.
    pub fn sign(&self, payload: &[u8]) -> Vec<u8> {
        self.pair
            .sign(&SystemRandom::new(), payload)
            .expect("signing with a valid key does not fail")
            .as_ref()
            .to_vec()
    }
}

/// The tag of the signatures of `digest` (`sha256:<hex>`).
pub fn signature_tag(digest: &str) -> String {
    format!("{}.sig", digest.replacen(':', "-", 1))
}

/// The Simple Signing payload for image `repository` (`registry/repo`) at
/// `digest`, as cosign writes it.
pub fn payload(repository: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": repository},
            "image": {"docker-manifest-digest": digest},
            "type": SIGNATURE_TYPE
        },
        "optional": null
    }))
    .expect("a payload serializes")
}

/// The digest a payload vouches for, if it is an image signature payload.
/// The `docker-reference` is not checked (the spec says verifiers ignore
/// it: an image copied to a mirror keeps its signatures).
pub fn signed_digest(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    let critical = &value["critical"];
    if critical["type"] != SIGNATURE_TYPE {
        return None;
    }
    critical["image"]["docker-manifest-digest"]
        .as_str()
        .map(str::to_owned)
}

/// One signature layer of a `.sig` manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// The payload blob's digest.
    pub digest: String,
    pub size: u64,
    /// The signature, decoded.
    pub signature: Vec<u8>,
}

/// The signature layers of a `.sig` manifest; layers of other types, or
/// without a readable signature annotation, are not signatures.
pub fn signature_layers(manifest: &Value) -> Vec<SignatureLayer> {
    manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["mediaType"] == SIMPLE_SIGNING)
        .filter_map(|l| {
            Some(SignatureLayer {
                digest: l["digest"].as_str()?.to_owned(),
                size: l["size"].as_u64()?,
                signature: B64
                    .decode(l["annotations"][SIGNATURE_ANNOTATION].as_str()?)
                    .ok()?,
            })
        })
        .collect()
}

/// The JSON of a signature layer for a manifest.
pub fn layer_descriptor(payload: &[u8], signature: &[u8]) -> Value {
    json!({
        "mediaType": SIMPLE_SIGNING,
        "size": payload.len(),
        "digest": sha256_digest(payload),
        "annotations": {SIGNATURE_ANNOTATION: B64.encode(signature)}
    })
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_key_only() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let other = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let body = payload("127.0.0.1:5000/demo/app", &digest);
        let signature = key.sign(&body);
        let public = PublicKey::from_pem(&key.public_key().to_pem()).unwrap();
        assert!(public.verifies(&body, &signature));
        assert!(!other.public_key().verifies(&body, &signature));
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert!(!public.verifies(&tampered, &signature));
        assert_eq!(signed_digest(&body), Some(digest.clone()));
        assert_eq!(
            signature_tag(&digest),
            format!("sha256-{}.sig", "ab".repeat(32))
        );
    }

    #[test]
    fn the_layer_round_trips_and_other_layers_are_not_signatures() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let body = payload("r/a", "sha256:00");
        let layer = layer_descriptor(&body, &key.sign(&body));
        let manifest = json!({"layers": [layer, {"mediaType": "application/octet-stream", "digest": "sha256:1", "size": 1}]});
        let layers = signature_layers(&manifest);
        assert_eq!(layers.len(), 1);
        assert_eq!(layers[0].digest, sha256_digest(&body));
        assert!(key.public_key().verifies(&body, &layers[0].signature));
    }

    #[test]
    fn keys_that_are_not_p256_pem_are_refused_by_kind() {
        assert!(matches!(
            PublicKey::from_pem("hello"),
            Err(KeyError::NotPem(_))
        ));
        let private = SigningKey::generate_pem();
        assert!(matches!(
            PublicKey::from_pem(&private),
            Err(KeyError::NotPem(_))
        ));
        // An Ed25519 SubjectPublicKeyInfo.
        let ed = pem(
            "PUBLIC KEY",
            &[
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00, 1, 2, 3,
            ],
        );
        assert!(matches!(
            PublicKey::from_pem(&ed),
            Err(KeyError::NotP256(_))
        ));
        // A payload of another type vouches for nothing.
        assert_eq!(
            signed_digest(
                br#"{"critical": {"type": "x", "image": {"docker-manifest-digest": "sha256:0"}}}"#
            ),
            None
        );
    }
}
