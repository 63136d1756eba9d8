//! Kubernetes ServiceAccount tokens as a proof of identity. A workload
//! sends the projected token the kubelet mounts for it (audience
//! `rampart-ca`); the API server checks it with a TokenReview (signature,
//! expiry, audience, and that its ServiceAccount, and the Pod it is bound
//! to, still exist), and the CA signs `spiffe://<td>/ns/<ns>/sa/<sa>`.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// The audience a token must be minted for: a token for any other service
/// (the API server's own, a vault's) is no proof to the CA.
pub const AUDIENCE: &str = "rampart-ca";

/// Why a token is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server does not vouch for it (expired, wrong audience,
    /// revoked, its ServiceAccount deleted, not a token at all).
    #[error("the Kubernetes API server does not accept the token: {0}")]
    Refused(String),
    /// It is valid, but not a ServiceAccount's.
    #[error("the token is not a ServiceAccount token (user {0:?})")]
    NotServiceAccount(String),
    /// The review could not be made.
    #[error("TokenReview failed: {0}")]
    Unavailable(String),
}

/// Reviews tokens with the API server.
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
}

impl TokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// The (namespace, service account) the token was issued to.
    pub async fn review(&self, token: &str) -> Result<(String, String), ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let reviewed = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| ReviewError::Unavailable(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status
                .error
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "not authenticated".to_owned());
            return Err(ReviewError::Refused(reason));
        }
        // The server answers with the audiences the token is valid for
        // among those asked; an empty answer would mean "the server's own".
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == AUDIENCE)
        {
            return Err(ReviewError::Refused(format!(
                "the token is not for audience {AUDIENCE}"
            )));
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        service_account_of(&user).ok_or(ReviewError::NotServiceAccount(user))
    }
}

/// `system:serviceaccount:<ns>:<sa>` -> (ns, sa).
fn service_account_of(username: &str) -> Option<(String, String)> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    let valid = |s: &str| !s.is_empty() && !s.contains(':');
    (valid(namespace) && valid(name)).then(|| (namespace.to_owned(), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_users_map_to_an_identity() {
        assert_eq!(
            service_account_of("system:serviceaccount:shop:cart"),
            Some(("shop".into(), "cart".into()))
        );
        for user in [
            "kube-test-admin",
            "system:serviceaccount:shop",
            "system:serviceaccount::cart",
            "system:serviceaccount:shop:",
            "system:serviceaccount:a:b:c",
            "system:node:n1",
        ] {
            assert_eq!(service_account_of(user), None, "{user}");
        }
    }
}
