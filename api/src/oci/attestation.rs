//! Vulnerability reports attached to an image as cosign attestations
//! (`cosign attest --type vuln`): the tag `sha256-<hex>.att` holds DSSE
//! envelopes, each signing (over DSSE's pre-authentication encoding) an
//! in-toto statement whose subject is the image digest and whose predicate
//! (`https://cosign.sigstore.dev/attestation/vuln/v1`) carries the scanner's
//! result: a Trivy JSON report (`trivy image --format json`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use super::cosign::PublicKey;

/// `predicateType` of a vulnerability attestation.
pub const VULN_PREDICATE: &str = "https://cosign.sigstore.dev/attestation/vuln/v1";
/// Media type of an attestation layer.
pub const DSSE_ENVELOPE: &str = "application/vnd.dsse.envelope.v1+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// The tag of the attestations of `digest`.
pub fn attestation_tag(digest: &str) -> String {
    format!("{}.att", digest.replacen(':', "-", 1))
}

/// Vulnerabilities by severity, as Trivy grades them.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct SeverityCounts {
    #[serde(default)]
    pub critical: u32,
    #[serde(default)]
    pub high: u32,
    #[serde(default)]
    pub medium: u32,
    #[serde(default)]
    pub low: u32,
    #[serde(default)]
    pub unknown: u32,
}

impl SeverityCounts {
    /// The larger count of each severity: two reports of one image are
    /// held to the budget by the worse of them.
    pub fn worst(&self, other: &SeverityCounts) -> SeverityCounts {
        SeverityCounts {
            critical: self.critical.max(other.critical),
            high: self.high.max(other.high),
            medium: self.medium.max(other.medium),
            low: self.low.max(other.low),
            unknown: self.unknown.max(other.unknown),
        }
    }
}

impl std::fmt::Display for SeverityCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} critical, {} high, {} medium, {} low",
            self.critical, self.high, self.medium, self.low
        )
    }
}

/// Counts the findings of a Trivy JSON report (`Results[].Vulnerabilities[]`).
pub fn trivy_counts(report: &Value) -> Result<SeverityCounts, String> {
    let results = report["Results"]
        .as_array()
        .ok_or("not a Trivy JSON report: no Results array")?;
    let mut counts = SeverityCounts::default();
    for vulnerability in results
        .iter()
        .flat_map(|r| r["Vulnerabilities"].as_array().into_iter().flatten())
    {
        match vulnerability["Severity"].as_str().unwrap_or("UNKNOWN") {
            "CRITICAL" => counts.critical += 1,
            "HIGH" => counts.high += 1,
            "MEDIUM" => counts.medium += 1,
            "LOW" => counts.low += 1,
            _ => counts.unknown += 1,
        }
    }
    Ok(counts)
}

/// DSSE's pre-authentication encoding: what the signature covers.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The vulnerability counts an envelope attests for `digest`, with the
/// fingerprints of the `keys` that signed it; None if it is not a
/// vulnerability attestation of that digest signed by one of them.
pub fn verified_counts(
    envelope: &[u8],
    digest: &str,
    keys: &[PublicKey],
) -> Option<(SeverityCounts, Vec<String>)> {
    let envelope: Value = serde_json::from_slice(envelope).ok()?;
    if envelope["payloadType"] != IN_TOTO {
        return None;
    }
    let payload = B64.decode(envelope["payload"].as_str()?).ok()?;
    let signed = pae(IN_TOTO, &payload);
    let signatures: Vec<Vec<u8>> = envelope["signatures"]
        .as_array()?
        .iter()
        .filter_map(|s| B64.decode(s["sig"].as_str()?).ok())
        .collect();
    let by: Vec<String> = keys
        .iter()
        .filter(|k| signatures.iter().any(|s| k.verifies(&signed, s)))
        .map(PublicKey::fingerprint)
        .collect();
    if by.is_empty() {
        return None;
    }
    let statement: Value = serde_json::from_slice(&payload).ok()?;
    if statement["predicateType"] != VULN_PREDICATE {
        return None;
    }
    let hex = digest.strip_prefix("sha256:")?;
    let about_digest = statement["subject"]
        .as_array()?
        .iter()
        .any(|s| s["digest"]["sha256"] == hex);
    if !about_digest {
        return None;
    }
    let counts = trivy_counts(&statement["predicate"]["scanner"]["result"]).ok()?;
    Some((counts, by))
}

#[cfg(test)]
mod tests {
    use super::super::cosign::SigningKey;
    use super::*;
    use serde_json::json;

    fn envelope(key: &SigningKey, statement: &Value) -> Vec<u8> {
        let payload = serde_json::to_vec(statement).unwrap();
        let sig = key.sign(&pae(IN_TOTO, &payload));
        serde_json::to_vec(&json!({
            "payloadType": IN_TOTO, "payload": B64.encode(&payload),
            "signatures": [{"keyid": "", "sig": B64.encode(sig)}]
        }))
        .unwrap()
    }

    #[test]
    fn a_signed_report_of_the_digest_is_counted_and_nothing_else() {
        let key = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let other = SigningKey::from_pem(&SigningKey::generate_pem()).unwrap();
        let hex = "ab".repeat(32);
        let digest = format!("sha256:{hex}");
        let statement = |subject: &str| {
            json!({"_type": "https://in-toto.io/Statement/v0.1", "predicateType": VULN_PREDICATE,
                   "subject": [{"name": "r/a", "digest": {"sha256": subject}}],
                   "predicate": {"scanner": {"result": {"Results": [
                       {"Vulnerabilities": [{"Severity": "CRITICAL"}, {"Severity": "HIGH"}, {"Severity": "HIGH"}]},
                       {"Target": "no findings"}]}}}})
        };
        let good = envelope(&key, &statement(&hex));
        let (counts, by) = verified_counts(&good, &digest, &[key.public_key()]).unwrap();
        assert_eq!((counts.critical, counts.high), (1, 2));
        assert_eq!(by, [key.public_key().fingerprint()]);
        assert!(verified_counts(&good, &digest, &[other.public_key()]).is_none());
        let elsewhere = envelope(&key, &statement(&"cd".repeat(32)));
        assert!(verified_counts(&elsewhere, &digest, &[key.public_key()]).is_none());
    }
}
