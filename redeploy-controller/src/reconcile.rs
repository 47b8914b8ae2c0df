//! The workload reconcile loop. Workloads are watched as metadata only: the annotation is all this
//! controller needs to decide whether a workload is of interest.

use std::{sync::Arc, time::Duration};

use common::{metrics::ReconcileMetrics, runtime::Leading};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, ResourceExt,
    core::PartialObjectMeta,
    runtime::{Controller, controller::Action, watcher},
};
use tracing::{debug, warn};

/// Errors of a workload reconcile.
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

async fn reconcile(
    deployment: Arc<PartialObjectMeta<Deployment>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.metrics.start();
    debug!(deployment = %format!("{}/{}", deployment.namespace().unwrap_or_default(), deployment.name_any()), "reconcile");
    Ok(Action::await_change())
}

fn error_policy(_: Arc<PartialObjectMeta<Deployment>>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(%error, "reconcile failed");
    ctx.metrics.failure(error.reason());
    Action::requeue(Duration::from_secs(30))
}

/// Runs the redeploy controller until `leading.stop` is cancelled.
pub async fn run(leading: Leading, namespace: Option<String>, metrics: ReconcileMetrics) {
    // Api<PartialObjectMeta<_>> makes metadata-only list/watch requests.
    let deployments: Api<PartialObjectMeta<Deployment>> = match &namespace {
        Some(ns) => Api::namespaced(leading.client.clone(), ns),
        None => Api::all(leading.client.clone()),
    };
    let controller = Controller::new(deployments, watcher::Config::default().any_semantic());
    common::runtime::report_sync_when_ready(controller.store(), leading.health.clone());
    controller
        .graceful_shutdown_on(leading.stop.cancelled_owned())
        .run(reconcile, error_policy, Arc::new(Context { metrics }))
        .for_each(|_| std::future::ready(()))
        .await;
}
