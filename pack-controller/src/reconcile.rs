//! The Pack reconcile loop: resolves each Pack's chart against the cached index of its repository and
//! reports the outcome on the Pack's status. Installing with Helm comes with issue 5.
//!
//! Packs are reconciled again whenever the repository they reference changes (created, deleted, or its
//! status written after a fetch — the index is inserted into the cache before that write), so a Pack
//! waiting for its repository heals without polling, and a newly published matching version moves the
//! resolved version.

use std::{sync::Arc, time::Duration};

use common::{
    conditions,
    crd::{
        ClusterPackRepository, Pack, PackStatus,
        pack::{PackState, RepositoryKind},
    },
    metrics::ReconcileMetrics,
    runtime::Leading,
};
use futures::StreamExt;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    index::IndexCache,
    repository::{self, FIELD_MANAGER, truncate_note},
    resolve::{self, RepositoryLookup, ResolveError},
};

/// Condition reason of a Pack whose chart version is resolved (the Helm install is not implemented yet).
pub const RESOLVED: &str = "Resolved";

/// How often a Pack is looked at again when nothing it watches changed (a safety net).
const RESYNC: Duration = Duration::from_secs(600);

/// How soon a Pack is looked at again while this process has not fetched its (ready) repository yet.
const WARM_UP: Duration = Duration::from_secs(2);

/// Errors of a Pack reconcile.
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
    pub client: Client,
    pub cache: IndexCache,
    pub recorder: Recorder,
    pub metrics: ReconcileMetrics,
}

async fn reconcile(pack: Arc<Pack>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start();
    let repositories: Api<ClusterPackRepository> = Api::all(ctx.client.clone());
    let repo_name = &pack.spec.chart.repository.name;
    let repo = match pack.spec.chart.repository.kind {
        RepositoryKind::ClusterPackRepository => repositories.get_opt(repo_name).await?,
    };
    let cached = ctx.cache.get(repo_name);
    let not_ready_detail;
    let lookup = match (&repo, &cached) {
        (None, _) => RepositoryLookup::NotFound,
        // An index fetched from another URL (spec.url changed, or a deleted repository came back) does
        // not count.
        (Some(r), Some(c)) if c.url == r.spec.url => RepositoryLookup::Ready(&c.index),
        (Some(r), _) if repository_reports_ready(r) => {
            // Another replica (or this process before a restart) fetched it fine: this process has not
            // fetched it yet. Keep the Pack's status as it is rather than flap it to RepositoryNotReady;
            // the fetch writes the repository's status, which wakes this Pack again.
            debug!(repository = %repo_name, "index not cached here yet; waiting for the first fetch");
            return Ok(Action::requeue(WARM_UP));
        }
        (Some(r), _) => {
            not_ready_detail = r
                .status
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, conditions::READY))
                .filter(|c| c.status != "True")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "its index has not been fetched yet".into());
            RepositoryLookup::NotReady {
                detail: &not_ready_detail,
            }
        }
    };
    let outcome = resolve::resolve(&pack.spec, lookup);
    let status = next_status(&pack, &outcome);
    write_status(&ctx, &pack, status).await?;
    Ok(Action::requeue(RESYNC))
}

fn repository_reports_ready(repo: &ClusterPackRepository) -> bool {
    repo.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .is_some_and(|c| c.status == "True")
}

/// The Pack's status for a resolution outcome, built on its current status.
pub fn next_status(pack: &Pack, outcome: &Result<resolve::Resolution, ResolveError>) -> PackStatus {
    let generation = pack.metadata.generation;
    let mut status = pack.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    match outcome {
        Ok(r) => {
            status.version = Some(r.version.clone());
            status.chart_digest = r.digest.clone();
            // Nothing is applied yet: no summary state until the Helm part sets Applied/ApplyFailed.
            if status.state == Some(PackState::Invalid) {
                status.state = None;
            }
            let message = format!(
                "resolved chart {} {} from ClusterPackRepository {} (constraint `{}`); \
                 installing it with Helm is not implemented yet",
                r.chart,
                r.version,
                pack.spec.chart.repository.name,
                pack.spec.chart.version.as_deref().unwrap_or(""),
            );
            conditions::set(
                &mut status.conditions,
                conditions::new(conditions::READY, false, RESOLVED, message, generation),
            );
            conditions::remove(&mut status.conditions, conditions::STALLED);
        }
        Err(e) => {
            // Keep the last resolved version: it is still what a (future) release runs.
            let message = e.to_string();
            conditions::set(
                &mut status.conditions,
                conditions::new(
                    conditions::READY,
                    false,
                    e.reason(),
                    message.clone(),
                    generation,
                ),
            );
            if e.is_invalid_spec() {
                status.state = Some(PackState::Invalid);
                conditions::set(
                    &mut status.conditions,
                    conditions::new(conditions::STALLED, true, e.reason(), message, generation),
                );
            } else {
                if status.state == Some(PackState::Invalid) {
                    status.state = None;
                }
                conditions::remove(&mut status.conditions, conditions::STALLED);
            }
        }
    }
    status
}

/// Writes the status (server-side apply on the status subresource) unless nothing changed, and emits an
/// Event when the Ready reason (or the resolved version) changes.
async fn write_status(ctx: &Context, pack: &Pack, status: PackStatus) -> Result<(), Error> {
    let old = pack.status.clone().unwrap_or_default();
    if old == status {
        return Ok(());
    }
    let old_ready = conditions::find(&old.conditions, conditions::READY).cloned();
    let new_ready = conditions::find(&status.conditions, conditions::READY).cloned();
    let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &pack.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": Pack::api_version(&()),
        "kind": Pack::kind(&()),
        "status": status,
    });
    api.patch_status(
        &pack.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    let Some(new) = new_ready else {
        return Ok(());
    };
    let reason_changed = old_ready.as_ref().map(|c| &c.reason) != Some(&new.reason);
    let version_changed = new.reason == RESOLVED && old.version != status.version;
    if reason_changed || version_changed {
        info!(reason = %new.reason, message = %new.message, "pack status changed");
        let event = Event {
            type_: if new.reason == RESOLVED {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: new.reason.clone(),
            note: Some(truncate_note(&new.message)),
            action: "Resolve".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &pack.object_ref(&())).await {
            warn!(error = %e, "cannot publish Event");
        }
    }
    Ok(())
}

fn error_policy(_pack: Arc<Pack>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(%error, "reconcile failed");
    ctx.metrics.failure(error.reason());
    Action::requeue(Duration::from_secs(30))
}

/// The Packs of `store` that reference repository `name`.
fn packs_of(store: &Store<Pack>, name: &str) -> Vec<ObjectRef<Pack>> {
    store
        .state()
        .iter()
        .filter(|p| {
            p.spec.chart.repository.kind == RepositoryKind::ClusterPackRepository
                && p.spec.chart.repository.name == name
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Metrics of the two loops.
#[derive(Clone)]
pub struct Metrics {
    pub packs: ReconcileMetrics,
    pub repositories: ReconcileMetrics,
}

/// Runs the Pack controller and the ClusterPackRepository controller until `leading.stop` is cancelled.
/// `namespace` scopes the Packs; repositories are cluster-scoped and always all watched.
/// Runs the Pack and ClusterPackRepository controllers until `leading.stop` is cancelled.
pub async fn run(
    leading: Leading,
    namespace: Option<String>,
    metrics: Metrics,
    max_index_bytes: u64,
) {
    let client = leading.client.clone();
    let packs: Api<Pack> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "pack-controller".into());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "pack-controller".into(),
            instance: Some(identity),
        },
    );
    let cache = IndexCache::new();

    let controller = Controller::new(packs, watcher::Config::default().any_semantic());
    let store = controller.store();
    common::runtime::report_sync_when_ready(store.clone(), leading.health.clone());
    let mapper_store = store.clone();
    let controller = controller.watches(
        Api::<ClusterPackRepository>::all(client.clone()),
        watcher::Config::default().any_semantic(),
        move |repo: ClusterPackRepository| packs_of(&mapper_store, &repo.name_any()),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        cache: cache.clone(),
        recorder: recorder.clone(),
        metrics: metrics.packs,
    });
    let packs = controller
        .graceful_shutdown_on(leading.stop.clone().cancelled_owned())
        .run(
            |pack, ctx| {
                let span = info_span!(
                    "pack",
                    namespace = %pack.namespace().unwrap_or_default(),
                    name = %pack.name_any()
                );
                async move {
                    debug!("reconcile");
                    reconcile(pack, ctx).await
                }
                .instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|_| std::future::ready(()));
    let repositories = repository::run(
        client,
        cache,
        recorder,
        metrics.repositories,
        max_index_bytes,
        leading.stop.clone(),
    );
    futures::future::join(packs, repositories).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Resolution;
    use common::crd::PackSpec;
    use serde_json::json;

    fn pack() -> Pack {
        let spec: PackSpec = serde_json::from_value(json!({
            "chart": {
                "repository": {"kind": "ClusterPackRepository", "name": "packs"},
                "name": "genpack",
                "version": "~=0.1",
            }
        }))
        .unwrap();
        let mut pack = Pack::new("p", spec);
        pack.metadata.generation = Some(3);
        pack
    }

    fn resolved(version: &str) -> Result<Resolution, ResolveError> {
        Ok(Resolution {
            chart: "genpack".into(),
            version: version.into(),
            digest: Some("ab".into()),
            urls: vec![],
            values: json!({}),
        })
    }

    #[test]
    fn resolved_is_not_ready_until_helm_applies_it() {
        let status = next_status(&pack(), &resolved("0.2.0"));
        assert_eq!(status.version.as_deref(), Some("0.2.0"));
        assert_eq!(status.chart_digest.as_deref(), Some("ab"));
        assert_eq!(status.observed_generation, Some(3));
        let ready = conditions::find(&status.conditions, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", RESOLVED)
        );
        assert!(ready.message.contains("genpack 0.2.0"), "{}", ready.message);
        assert!(conditions::find(&status.conditions, conditions::STALLED).is_none());
    }

    #[test]
    fn invalid_spec_stalls_and_recovers() {
        let mut p = pack();
        let err = Err(ResolveError::InvalidVersionConstraint(
            crate::versions::VersionConstraint::parse("~=1").unwrap_err(),
        ));
        let status = next_status(&p, &err);
        assert_eq!(status.state, Some(PackState::Invalid));
        let stalled = conditions::find(&status.conditions, conditions::STALLED).unwrap();
        assert_eq!(stalled.reason, "InvalidVersionConstraint");

        p.status = Some(status);
        let status = next_status(&p, &resolved("0.1.0"));
        assert_eq!(status.state, None);
        assert!(conditions::find(&status.conditions, conditions::STALLED).is_none());
    }

    #[test]
    fn a_repository_problem_keeps_the_last_resolved_version() {
        let mut p = pack();
        p.status = Some(next_status(&p, &resolved("0.2.0")));
        let err = Err(ResolveError::RepositoryNotFound {
            repository: "packs".into(),
        });
        let status = next_status(&p, &err);
        assert_eq!(status.version.as_deref(), Some("0.2.0"));
        let ready = conditions::find(&status.conditions, conditions::READY).unwrap();
        assert_eq!(ready.reason, "RepositoryNotFound");
        assert_eq!(status.state, None);
    }
}
