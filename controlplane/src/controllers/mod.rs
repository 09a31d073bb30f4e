//! Control loops that run inside the controlplane process.
//!
//! The garbage collector and the namespace controller complete deletions the API server
//! started (ownerReferences, finalizers, namespace contents); they read the watch cache and
//! write through the same generic handler as HTTP requests, so every write is validated and
//! revisioned the same way.

pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod events;
pub mod gc;
pub mod leader;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;
pub mod runtime;

use std::sync::Arc;

use crate::api::Api;

/// Starts every built-in control loop. The garbage collector and namespace controller finish
/// what the API server started and run everywhere; the controllers and the scheduler run only
/// in the controlplane holding the leader Lease (`identity` is stable across restarts, so a
/// restarted controlplane takes its own lease back at once).
pub fn spawn_builtin(api: Arc<Api>, settings: runtime::Settings, identity: String) {
    let ctx = runtime::Context {
        client: runtime::in_process_client(&api),
        api: Arc::clone(&api),
        settings: Arc::new(settings),
        events: events::Recorder::start(runtime::in_process_client(&api), "skiff-controlplane"),
    };
    tokio::spawn(gc::run(Arc::clone(&api)));
    tokio::spawn(namespace::run(api));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let client = ctx.client.clone();
    tokio::spawn(async move {
        leader::lead(client, identity, tx).await;
        // As kube-controller-manager does: a controlplane that lost leadership stops, and its
        // supervisor restarts it as a candidate.
        std::process::exit(1);
    });
    tokio::spawn(async move {
        if rx.await.is_ok() {
            spawn_leading(ctx);
        }
    });
}

fn spawn_leading(ctx: runtime::Context) {
    tokio::spawn(endpointslice::run(ctx.clone()));
    tokio::spawn(replicaset::run(ctx.clone()));
    tokio::spawn(deployment::run(ctx.clone()));
    tokio::spawn(crate::scheduler::run(ctx.clone()));
    tokio::spawn(nodeipam::run(ctx.clone()));
    tokio::spawn(nodelifecycle::run(ctx.clone()));
    tokio::spawn(daemonset::run(ctx.clone()));
}
