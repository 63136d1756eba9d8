//! One-time join tokens. A token is 256 random bits shown once to the
//! operator; the store keeps only its SHA-256, the identity it proves, its
//! expiry and whether it was used. Using a token is an atomic
//! compare-and-swap that is on disk before any certificate is signed, so a
//! crash can burn a token but never let it be used twice.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::StoreError;

/// Every join token starts with this, so it is recognisable (and greppable by
/// secret scanners) and cannot be mistaken for a Kubernetes token.
pub const TOKEN_PREFIX: &str = "rjt_";

/// What the store remembers about a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub namespace: String,
    pub service_account: String,
    pub expires_at_unix: i64,
    /// Set when the token is used.
    pub used_at_unix: Option<i64>,
}

/// Why a token does not prove anything.
#[derive(Debug, thiserror::Error)]
pub enum JoinTokenError {
    #[error("join token is not in the expected format")]
    Malformed,
    #[error("join token is unknown")]
    Unknown,
    #[error("join token expired")]
    Expired,
    #[error("join token was already used")]
    AlreadyUsed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The join-token table.
#[derive(Clone)]
pub struct JoinTokens {
    tree: sled::Tree,
}

fn hash_key(token: &str) -> Result<[u8; 32], JoinTokenError> {
    let body = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(JoinTokenError::Malformed)?;
    match URL_SAFE_NO_PAD.decode(body) {
        Ok(bytes) if bytes.len() == 32 => Ok(Sha256::digest(token.as_bytes()).into()),
        _ => Err(JoinTokenError::Malformed),
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

impl JoinTokens {
    pub(super) fn new(tree: sled::Tree) -> Self {
        Self { tree }
    }

    /// Creates a token; it is durable when this returns.
    pub async fn create(
        &self,
        namespace: &str,
        service_account: &str,
        ttl: std::time::Duration,
    ) -> Result<(String, JoinTokenRecord), JoinTokenError> {
        let secret: [u8; 32] = rand::random();
        let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
        let record = JoinTokenRecord {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            expires_at_unix: now_unix() + ttl.as_secs() as i64,
            used_at_unix: None,
        };
        let value = serde_json::to_vec(&record).expect("record serializes");
        self.tree
            .insert(hash_key(&token)?, value)
            .map_err(StoreError::from)?;
        super::flush(&self.tree).await?;
        Ok((token, record))
    }

    /// Looks a token up without using it.
    pub fn peek(&self, token: &str) -> Result<JoinTokenRecord, JoinTokenError> {
        let key = hash_key(token)?;
        let raw = self
            .tree
            .get(key)
            .map_err(StoreError::from)?
            .ok_or(JoinTokenError::Unknown)?;
        let record = decode(&key, &raw)?;
        check_usable(&record)?;
        Ok(record)
    }

    /// Marks a token used, atomically and durably. Exactly one caller wins.
    pub async fn consume(&self, token: &str) -> Result<JoinTokenRecord, JoinTokenError> {
        let key = hash_key(token)?;
        loop {
            let raw = self
                .tree
                .get(key)
                .map_err(StoreError::from)?
                .ok_or(JoinTokenError::Unknown)?;
            let record = decode(&key, &raw)?;
            check_usable(&record)?;
            let used = JoinTokenRecord {
                used_at_unix: Some(now_unix()),
                ..record.clone()
            };
            let new = serde_json::to_vec(&used).expect("record serializes");
            let swapped = self
                .tree
                .compare_and_swap(key, Some(raw), Some(new))
                .map_err(StoreError::from)?;
            if swapped.is_ok() {
                super::flush(&self.tree).await?;
                return Ok(used);
            }
            // Someone else changed it between get and swap: look again.
        }
    }

    /// Deletes records that expired more than `keep` ago; returns how many.
    pub fn purge_expired(&self, keep: std::time::Duration) -> Result<usize, StoreError> {
        let cutoff = now_unix() - keep.as_secs() as i64;
        let mut purged = 0;
        for entry in self.tree.iter() {
            let (key, raw) = entry?;
            if let Ok(record) = serde_json::from_slice::<JoinTokenRecord>(&raw)
                && record.expires_at_unix < cutoff
            {
                self.tree.remove(key)?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}

fn decode(key: &[u8], raw: &[u8]) -> Result<JoinTokenRecord, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt {
        key: format!("join_tokens/{}", hex(key)),
        reason: e.to_string(),
    })
}

fn check_usable(record: &JoinTokenRecord) -> Result<(), JoinTokenError> {
    if record.used_at_unix.is_some() {
        Err(JoinTokenError::AlreadyUsed)
    } else if record.expires_at_unix <= now_unix() {
        Err(JoinTokenError::Expired)
    } else {
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tokens() -> (tempfile::TempDir, JoinTokens) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        (dir, store.join_tokens().unwrap())
    }

    #[tokio::test]
    async fn a_token_works_once() {
        let (_dir, tokens) = tokens();
        let (token, _) = tokens
            .create("ns", "sa", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(tokens.peek(&token).unwrap().service_account, "sa");
        tokens.consume(&token).await.unwrap();
        assert!(matches!(
            tokens.consume(&token).await,
            Err(JoinTokenError::AlreadyUsed)
        ));
        assert!(matches!(
            tokens.peek(&token),
            Err(JoinTokenError::AlreadyUsed)
        ));
    }

    #[tokio::test]
    async fn only_the_hash_is_stored() {
        let (_dir, tokens) = tokens();
        let (token, _) = tokens
            .create("ns", "sa", Duration::from_secs(60))
            .await
            .unwrap();
        for entry in tokens.tree.iter() {
            let (k, v) = entry.unwrap();
            let secret = token.strip_prefix(TOKEN_PREFIX).unwrap().as_bytes();
            assert!(!k.windows(secret.len()).any(|w| w == secret));
            assert!(!v.windows(secret.len()).any(|w| w == secret));
        }
    }

    #[tokio::test]
    async fn expired_unknown_and_malformed_tokens_are_refused() {
        let (_dir, tokens) = tokens();
        let (token, _) = tokens.create("ns", "sa", Duration::ZERO).await.unwrap();
        assert!(matches!(
            tokens.consume(&token).await,
            Err(JoinTokenError::Expired)
        ));
        let unknown = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(matches!(
            tokens.consume(&unknown).await,
            Err(JoinTokenError::Unknown)
        ));
        assert!(matches!(
            tokens.consume("hello").await,
            Err(JoinTokenError::Malformed)
        ));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(tokens.purge_expired(Duration::ZERO).unwrap(), 1);
        assert!(matches!(
            tokens.consume(&token).await,
            Err(JoinTokenError::Unknown)
        ));
    }

    #[tokio::test]
    async fn concurrent_uses_have_exactly_one_winner() {
        let (_dir, tokens) = tokens();
        let (token, _) = tokens
            .create("ns", "sa", Duration::from_secs(60))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (tokens, token) = (tokens.clone(), token.clone());
            tasks.push(tokio::spawn(
                async move { tokens.consume(&token).await.is_ok() },
            ));
        }
        let mut winners = 0;
        for task in tasks {
            winners += usize::from(task.await.unwrap());
        }
        assert_eq!(winners, 1);
    }
}
