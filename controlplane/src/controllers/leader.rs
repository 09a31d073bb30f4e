//! Leader election over a coordination.k8s.io Lease (`kube-system/skiff-controlplane`), so that
//! several controlplanes sharing one store (etcd) run the controllers and the scheduler exactly
//! once. The holder renews every `RENEW`; a challenger takes the Lease over only after it has
//! gone unrenewed for its `leaseDurationSeconds`. Every write is a compare-and-swap on the
//! Lease's resourceVersion, so two candidates can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use serde_json::json;

pub const LEASE_NAME: &str = "skiff-controlplane";
const NAMESPACE: &str = "kube-system";
pub const LEASE_SECONDS: i64 = 15;
const RENEW: Duration = Duration::from_secs(2);

fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// One attempt to take or keep the Lease. True when `identity` holds it afterwards.
pub async fn try_acquire(client: &kube::Client, identity: &str) -> Result<bool, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let spec = |transitions: i32, acquired: String| {
        json!({"holderIdentity": identity, "leaseDurationSeconds": LEASE_SECONDS,
               "acquireTime": acquired, "renewTime": now_micro(), "leaseTransitions": transitions})
    };
    let Some(mut lease) = leases.get_opt(LEASE_NAME).await? else {
        let fresh: Lease = serde_json::from_value(json!({
            "metadata": {"name": LEASE_NAME, "namespace": NAMESPACE},
            "spec": spec(0, now_micro()),
        }))
        .unwrap_or_default();
        return match leases.create(&PostParams::default(), &fresh).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = lease.spec.clone().unwrap_or_default();
    let holder = current.holder_identity.clone().unwrap_or_default();
    let renewed = current.renew_time.as_ref().map_or(0, |t| t.0.as_second());
    let duration = i64::from(
        current
            .lease_duration_seconds
            .unwrap_or(LEASE_SECONDS as i32),
    );
    let expired = jiff::Timestamp::now().as_second() > renewed + duration;
    if holder != identity && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let transitions = current.lease_transitions.unwrap_or(0) + i32::from(holder != identity);
    let acquired = if holder == identity {
        current
            .acquire_time
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string())
            .unwrap_or_else(now_micro)
    } else {
        now_micro()
    };
    lease.spec = serde_json::from_value(spec(transitions, acquired)).ok();
    // `replace` carries the resourceVersion we read: a concurrent winner makes this a 409.
    match leases
        .replace(LEASE_NAME, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Waits until `identity` leads, then keeps renewing; resolves if leadership is lost.
pub async fn lead(
    client: kube::Client,
    identity: String,
    became_leader: tokio::sync::oneshot::Sender<()>,
) {
    let mut announce = Some(became_leader);
    let mut last_renewal = None::<std::time::Instant>;
    let mut tick = tokio::time::interval(RENEW);
    loop {
        tick.tick().await;
        match try_acquire(&client, &identity).await {
            Ok(true) => {
                last_renewal = Some(std::time::Instant::now());
                if let Some(tx) = announce.take() {
                    tracing::info!(
                        identity,
                        "became the leader; starting controllers and the scheduler"
                    );
                    let _ = tx.send(());
                }
            }
            Ok(false) if announce.is_none() => {
                tracing::error!(identity, "lost the leader lease to another controlplane");
                return;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("leader lease: {e}"),
        }
        // A leader that cannot renew for a whole lease period must assume it was replaced.
        if announce.is_none()
            && last_renewal.is_some_and(|t| t.elapsed() > Duration::from_secs(LEASE_SECONDS as u64))
        {
            tracing::error!(identity, "could not renew the leader lease in time");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::Arc;

    use super::*;
    use crate::api::Api as ApiServer;
    use crate::controllers::runtime::in_process_client;
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn only_one_candidate_leads_and_the_leader_keeps_its_lease() {
        let api = ApiServer::new(
            Arc::new(SqliteStore::in_memory().unwrap()),
            Default::default(),
            "x".into(),
        )
        .await
        .unwrap();
        let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(in_process_client(&api));
        let sys = serde_json::from_value(json!({"metadata": {"name": "kube-system"}})).unwrap();
        ns.create(&PostParams::default(), &sys).await.unwrap();
        let client = in_process_client(&api);
        assert!(try_acquire(&client, "a").await.unwrap());
        assert!(
            !try_acquire(&client, "b").await.unwrap(),
            "b must wait for a's lease to expire"
        );
        assert!(try_acquire(&client, "a").await.unwrap(), "a renews");
        // An expired lease is taken over, with the transition counted.
        let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
        let mut lease = leases.get(LEASE_NAME).await.unwrap();
        let stale = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(LEASE_SECONDS + 5);
        lease.spec.as_mut().unwrap().renew_time = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(stale),
        );
        leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
            .unwrap();
        assert!(try_acquire(&client, "b").await.unwrap());
        let lease = leases.get(LEASE_NAME).await.unwrap();
        assert_eq!(
            lease.spec.as_ref().unwrap().holder_identity.as_deref(),
            Some("b")
        );
        assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
    }
}
