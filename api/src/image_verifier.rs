//! Image signatures and vulnerability reports, asked of the images'
//! registries for `/validate` and `meshctl policy check`, and cached by
//! digest (reports for a minute: a new scan is attached to the same
//! digest): a digest's signatures never change meaning, so a verified
//! digest is not asked about again for a while, while a tag is resolved on
//! every check, once for both lookups (it can be re-pushed: what was
//! signed is not what a re-pushed tag now names). A registry that cannot be reached gives
//! a `Failed` check, which the policy turns into a denial (fail closed),
//! except for digests verified within the cache's lifetime.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::image::ImageRef;
use crate::oci::cosign::PublicKey;
use crate::oci::{self, Registry, ReportCheck, SignatureCheck};
use crate::policy::Lookups;
use crate::policy::SuppliedReport;

/// How long a verified digest stays verified without asking again.
const VERIFIED_FOR: Duration = Duration::from_secs(600);
/// How long "not signed" is believed: a pipeline that signs after pushing
/// sees its pods admitted within this.
const UNSIGNED_FOR: Duration = Duration::from_secs(10);
/// How long a vulnerability report is believed.
const REPORT_FOR: Duration = Duration::from_secs(60);
/// Entries kept at most (when full, the expired go, then all).
const CACHE_ENTRIES: usize = 10_000;

/// (repository, digest, key fingerprints)
type CacheKey = (String, String, Vec<String>);

pub struct ImageVerifier {
    registry: Registry,
    cache: Cache<SignatureCheck>,
    reports: Cache<ReportCheck>,
}

/// Answers by (repository, digest, keys) until their deadline.
struct Cache<T>(Mutex<HashMap<CacheKey, (T, Instant)>>);

impl<T: Clone> Cache<T> {
    fn get(&self, key: &CacheKey) -> Option<T> {
        let cache = self.0.lock().expect("not poisoned");
        let (value, until) = cache.get(key)?;
        (*until > Instant::now()).then(|| value.clone())
    }

    fn put(&self, key: CacheKey, value: T, lifetime: Duration) {
        let mut cache = self.0.lock().expect("not poisoned");
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (value, Instant::now() + lifetime));
    }
}

impl ImageVerifier {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            cache: Cache(Mutex::default()),
            reports: Cache(Mutex::default()),
        }
    }

    /// The signature checks (and, if asked, the vulnerability reports) of
    /// the images in `lookups`.
    pub async fn check(
        &self,
        lookups: &Lookups,
    ) -> (
        BTreeMap<String, SignatureCheck>,
        BTreeMap<String, ReportCheck>,
    ) {
        let (mut signatures, mut reports) = (BTreeMap::new(), BTreeMap::new());
        let mut fingerprints: Vec<String> =
            lookups.keys.iter().map(PublicKey::fingerprint).collect();
        fingerprints.sort();
        for image in &lookups.images {
            let (parsed, digest) = match self.resolve(image).await {
                Ok(resolved) => resolved,
                Err(e) => {
                    signatures.insert(image.clone(), SignatureCheck::Failed(e.clone()));
                    reports.insert(image.clone(), ReportCheck::Failed(e));
                    continue;
                }
            };
            let pinned = parsed.pinned(&digest);
            let supplied = lookups
                .supplied
                .iter()
                .find(|s| s.repository == parsed.name() && s.digest == digest);
            let key = (parsed.name(), digest, fingerprints.clone());
            // Without keys there is nothing to verify a signature or an
            // attestation with: no registry call for them.
            if lookups.keys.is_empty() {
                if lookups.reports {
                    reports.insert(image.clone(), with_supplied(ReportCheck::Missing, supplied));
                }
                continue;
            }
            signatures.insert(
                image.clone(),
                self.signature(&key, &pinned, &lookups.keys).await,
            );
            if lookups.reports {
                let attested = self.report(&key, &pinned, &lookups.keys).await;
                reports.insert(image.clone(), with_supplied(attested, supplied));
            }
        }
        (signatures, reports)
    }

    /// `image` parsed, and the digest it names (a tag resolved now).
    async fn resolve(&self, image: &str) -> Result<(ImageRef, String), String> {
        let parsed = ImageRef::parse(image)?;
        let digest = oci::resolve(&self.registry, &parsed).await?;
        Ok((parsed, digest))
    }

    async fn signature(
        &self,
        key: &CacheKey,
        image: &ImageRef,
        keys: &[PublicKey],
    ) -> SignatureCheck {
        if let Some(cached) = self.cache.get(key) {
            return cached;
        }
        let check = oci::verify(&self.registry, image, keys).await;
        let lifetime = match &check {
            SignatureCheck::Verified { .. } => VERIFIED_FOR,
            SignatureCheck::Unsigned { .. } => UNSIGNED_FOR,
            SignatureCheck::Failed(_) => return check,
        };
        self.cache.put(key.clone(), check.clone(), lifetime);
        check
    }

    async fn report(&self, key: &CacheKey, image: &ImageRef, keys: &[PublicKey]) -> ReportCheck {
        if let Some(cached) = self.reports.get(key) {
            return cached;
        }
        let check = oci::vulnerability_report(&self.registry, image, keys).await;
        if !matches!(check, ReportCheck::Failed(_)) {
            self.reports.put(key.clone(), check.clone(), REPORT_FOR);
        }
        check
    }
}

/// The attested report and the supplied one together: with both, the
/// worse count of each severity. A report that could not be read stays
/// unreadable (fail closed): it might be the worse one.
fn with_supplied(attested: ReportCheck, supplied: Option<&SuppliedReport>) -> ReportCheck {
    let Some(supplied) = supplied else {
        return attested;
    };
    match attested {
        ReportCheck::Found { counts, mut by } => {
            by.push(supplied.source.clone());
            ReportCheck::Found {
                counts: counts.worst(&supplied.counts),
                by,
            }
        }
        ReportCheck::Missing => ReportCheck::Found {
            counts: supplied.counts.clone(),
            by: vec![supplied.source.clone()],
        },
        failed @ ReportCheck::Failed(_) => failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::attestation::SeverityCounts;

    #[test]
    fn a_supplied_report_counts_and_the_worse_of_two_wins() {
        let supplied = SuppliedReport {
            source: "VulnerabilityReport web".into(),
            repository: "reg.example/web".into(),
            digest: "sha256:00".into(),
            counts: SeverityCounts {
                critical: 1,
                low: 2,
                ..Default::default()
            },
        };
        let ReportCheck::Found { counts, by } =
            with_supplied(ReportCheck::Missing, Some(&supplied))
        else {
            panic!("a supplied report is a report");
        };
        assert_eq!(
            (counts.critical, by),
            (1, vec!["VulnerabilityReport web".to_owned()])
        );
        let attested = ReportCheck::Found {
            counts: SeverityCounts {
                high: 3,
                low: 1,
                ..Default::default()
            },
            by: vec!["key".into()],
        };
        let ReportCheck::Found { counts, by } = with_supplied(attested, Some(&supplied)) else {
            panic!("two reports are a report");
        };
        assert_eq!((counts.critical, counts.high, counts.low), (1, 3, 2));
        assert_eq!(by.len(), 2);
        assert!(matches!(
            with_supplied(ReportCheck::Failed("down".into()), Some(&supplied)),
            ReportCheck::Failed(_)
        ));
    }
}
