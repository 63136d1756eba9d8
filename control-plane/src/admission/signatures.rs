//! Image signatures for `/validate`, asked of the images' registries and
//! cached by digest: a digest's signatures never change meaning, so a
//! verified digest is not asked about again for a while, while a tag is
//! resolved on every review (it can be re-pushed: what was signed is not
//! what a re-pushed tag now names). A registry that cannot be reached gives
//! a `Failed` check, which the policy turns into a denial (fail closed),
//! except for digests verified within the cache's lifetime.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rampart_api::oci::cosign::PublicKey;
use rampart_api::oci::{self, Registry, SignatureCheck};
use rampart_api::policy::image::ImageRef;

/// How long a verified digest stays verified without asking again.
const VERIFIED_FOR: Duration = Duration::from_secs(600);
/// How long "not signed" is believed: a pipeline that signs after pushing
/// sees its pods admitted within this.
const UNSIGNED_FOR: Duration = Duration::from_secs(10);
/// Entries kept at most (the oldest go first).
const CACHE_ENTRIES: usize = 10_000;

/// (repository, digest, key fingerprints)
type CacheKey = (String, String, Vec<String>);

pub struct SignatureVerifier {
    registry: Registry,
    cache: Mutex<HashMap<CacheKey, (SignatureCheck, Instant)>>,
}

impl SignatureVerifier {
    pub fn new(registry: Registry) -> Self {
        Self {
            registry,
            cache: Mutex::default(),
        }
    }

    /// The signature checks of `images` against `keys`.
    pub async fn check(
        &self,
        images: &[String],
        keys: &[PublicKey],
    ) -> BTreeMap<String, SignatureCheck> {
        let mut out = BTreeMap::new();
        for image in images {
            let check = match ImageRef::parse(image) {
                Ok(parsed) => self.check_one(&parsed, keys).await,
                Err(e) => SignatureCheck::Failed(e),
            };
            out.insert(image.clone(), check);
        }
        out
    }

    async fn check_one(&self, image: &ImageRef, keys: &[PublicKey]) -> SignatureCheck {
        let digest = match oci::resolve(&self.registry, image).await {
            Ok(digest) => digest,
            Err(e) => return SignatureCheck::Failed(e),
        };
        let mut fingerprints: Vec<String> = keys.iter().map(PublicKey::fingerprint).collect();
        fingerprints.sort();
        let key = (image.name(), digest.clone(), fingerprints);
        if let Some(cached) = self.cached(&key) {
            return cached;
        }
        let check = oci::verify(&self.registry, &image.pinned(&digest), keys).await;
        let lifetime = match &check {
            SignatureCheck::Verified { .. } => VERIFIED_FOR,
            SignatureCheck::Unsigned { .. } => UNSIGNED_FOR,
            SignatureCheck::Failed(_) => return check,
        };
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (check.clone(), Instant::now() + lifetime));
        check
    }

    fn cached(&self, key: &CacheKey) -> Option<SignatureCheck> {
        let cache = self.cache.lock().expect("not poisoned");
        let (check, until) = cache.get(key)?;
        (*until > Instant::now()).then(|| check.clone())
    }
}
