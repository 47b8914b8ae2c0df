//! The SecretReflector reconcile loop.

use std::{sync::Arc, time::Duration};

use common::{crd::SecretReflector, metrics::ReconcileMetrics, runtime::Leading};
use futures::StreamExt;
use kube::{
    Api, ResourceExt,
    runtime::{Controller, controller::Action, watcher},
};
use tracing::{debug, warn};

/// Errors of a SecretReflector reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
        }
    }
}

/// State shared by every reconcile.
pub struct Context {
    pub metrics: ReconcileMetrics,
}

async fn reconcile(reflector: Arc<SecretReflector>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start();
    debug!(reflector = %format!("{}/{}", reflector.namespace().unwrap_or_default(), reflector.name_any()), "reconcile");
    Ok(Action::await_change())
}

fn error_policy(_reflector: Arc<SecretReflector>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(%error, "reconcile failed");
    ctx.metrics.failure(error.reason());
    Action::requeue(Duration::from_secs(30))
}

/// Runs the SecretReflector controller until `leading.stop` is cancelled.
pub async fn run(leading: Leading, namespace: Option<String>, metrics: ReconcileMetrics) {
    let reflectors: Api<SecretReflector> = match &namespace {
        Some(ns) => Api::namespaced(leading.client.clone(), ns),
        None => Api::all(leading.client.clone()),
    };
    let controller = Controller::new(reflectors, watcher::Config::default().any_semantic());
    common::runtime::report_sync_when_ready(controller.store(), leading.health.clone());
    controller
        .graceful_shutdown_on(leading.stop.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(Context { metrics }))
        .for_each(|_| std::future::ready(()))
        .await;
}
