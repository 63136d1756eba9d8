//! Leader election on a `coordination.k8s.io/v1` Lease, for the work only
//! one replica may do (keeping the webhook caBundle and the root bundle
//! ConfigMaps in sync; later root rotation and status writes). Every replica
//! serves xDS and the CA; only the holder of the lease runs the singletons.
//!
//! The holder renews the lease every [`RENEW`]; a replica takes it over when
//! it has not been renewed for [`LEASE`], so a killed leader is replaced
//! within about that long. Every write carries the resourceVersion it read,
//! so two replicas racing for the lease cannot both win: the loser gets a
//! conflict and stays a follower.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

/// How long an unrenewed lease stays its holder's.
pub const LEASE: Duration = Duration::from_secs(15);
/// How often the holder renews (and followers look).
pub const RENEW: Duration = Duration::from_secs(2);

/// Whether this replica leads, as it changes.
#[derive(Clone)]
pub struct Leadership {
    leading: watch::Receiver<bool>,
}

impl Leadership {
    /// Whether this replica leads, as it changes.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Runs `task()` whenever this replica leads, and stops it (drops the
    /// future) as soon as it does not.
    pub fn run_while_leading<F, Fut>(&self, name: &'static str, task: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut leading = self.leading.clone();
        tokio::spawn(async move {
            loop {
                if leading.wait_for(|l| *l).await.is_err() {
                    return;
                }
                tracing::info!(singleton = name, "leading: starting");
                tokio::select! {
                    _ = task() => {}
                    _ = leading.wait_for(|l| !*l) => {
                        tracing::info!(singleton = name, "no longer leading: stopped");
                    }
                }
            }
        });
    }
}

/// Campaigns for lease `name` in `namespace` as `identity`, forever.
pub fn campaign(client: kube::Client, namespace: &str, name: &str, identity: String) -> Leadership {
    let (tx, leading) = watch::channel(false);
    let api = Api::<Lease>::namespaced(client, namespace);
    let name = name.to_owned();
    tokio::spawn(async move {
        loop {
            let now = Timestamp::now();
            let result = try_lead(&api, &name, &identity, now).await;
            let leads = match result {
                Ok(leads) => leads,
                Err(e) => {
                    tracing::warn!(lease = name, error = %e, "the leader lease could not be read or written");
                    // A leader that cannot renew must assume it lost.
                    false
                }
            };
            if *tx.borrow() != leads {
                tracing::info!(
                    lease = name,
                    identity,
                    leading = leads,
                    "leadership changed"
                );
                tx.send_replace(leads);
            }
            tokio::time::sleep(RENEW).await;
        }
    });
    Leadership { leading }
}

/// One round: creates, renews or takes over the lease when this replica
/// may; returns whether it holds it now.
async fn try_lead(
    api: &Api<Lease>,
    name: &str,
    identity: &str,
    now: Timestamp,
) -> Result<bool, kube::Error> {
    let ours = |transitions: i32, acquired: Option<MicroTime>| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(LEASE.as_secs() as i32),
        acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    };
    let Some(mut lease) = api.get_opt(name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            spec: Some(ours(0, None)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    let transitions = spec.lease_transitions.unwrap_or(0);
    let next = if holder == identity {
        ours(transitions, spec.acquire_time.clone())
    } else if expired(&spec, now) {
        ours(transitions + 1, None)
    } else {
        return Ok(false);
    };
    lease.spec = Some(next);
    // The resourceVersion we read makes a racing writer's update fail.
    match api.replace(name, &PostParams::default(), &lease).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the holder has not renewed within its lease duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(MicroTime(renewed)) = &spec.renew_time else {
        return true;
    };
    let duration = i64::from(
        spec.lease_duration_seconds
            .unwrap_or(LEASE.as_secs() as i32),
    );
    now.as_second() - renewed.as_second() > duration
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_duration_without_renewal() {
        let renewed = Timestamp::from_second(1_000).unwrap();
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(&spec, Timestamp::from_second(1_015).unwrap()));
        assert!(expired(&spec, Timestamp::from_second(1_016).unwrap()));
        assert!(expired(&LeaseSpec::default(), renewed));
    }
}
