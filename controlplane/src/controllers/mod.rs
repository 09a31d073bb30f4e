//! Control loops that run inside the controlplane process.
//!
//! The garbage collector and the namespace controller complete deletions the API server
//! started (ownerReferences, finalizers, namespace contents); they read the watch cache and
//! write through the same generic handler as HTTP requests, so every write is validated and
//! revisioned the same way.

pub mod daemonset;
pub mod deployment;
pub mod endpointslice;
pub mod gc;
pub mod namespace;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod podutil;
pub mod replicaset;
pub mod runtime;

use std::sync::Arc;

use crate::api::Api;

/// Starts every built-in control loop.
pub fn spawn_builtin(api: Arc<Api>, settings: runtime::Settings) {
    let ctx = runtime::Context {
        client: runtime::in_process_client(&api),
        api: Arc::clone(&api),
        settings: Arc::new(settings),
    };
    tokio::spawn(endpointslice::run(ctx.clone()));
    tokio::spawn(replicaset::run(ctx.clone()));
    tokio::spawn(deployment::run(ctx.clone()));
    tokio::spawn(gc::run(Arc::clone(&api)));
    tokio::spawn(namespace::run(api));
    tokio::spawn(crate::scheduler::run(ctx.clone()));
    tokio::spawn(nodeipam::run(ctx.clone()));
    tokio::spawn(nodelifecycle::run(ctx.clone()));
    tokio::spawn(daemonset::run(ctx.clone()));
}
