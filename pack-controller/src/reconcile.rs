//! The Pack reconcile loop: resolve the chart against the cached index of its repository, then make the
//! Helm release match (install, upgrade, recover a stuck release, uninstall on deletion), reporting every
//! decision on the Pack's status and as Events.
//!
//! Packs are reconciled again when the repository they reference changes its index, readiness or spec (a newly published matching
//! version upgrades them), when their Helm release's Secrets change (a manual `helm rollback` or
//! `helm uninstall` is corrected), on spec/annotation changes, and on a periodic resync. A reconcile whose
//! [`ReleaseDigest`] matches the deployed release runs no Helm process: it costs one metadata list call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use common::{
    conditions,
    crd::{
        ClusterPackRepository, Pack, PackStatus,
        pack::{PackState, RepositoryKind},
    },
    events::Recorder,
    metrics::ReconcileMetrics,
    runtime::Leading,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{EventType, Reporter},
        finalizer::{self, finalizer},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    chart::{ChartCache, ChartError},
    helm::{Helm, HelmConfig, HelmError, Upgrade, value_strings},
    index::{IndexCache, IndexFetcher},
    metrics::{HelmMetrics, PackStates},
    plan::{self, Facts, Plan, REQUESTED_AT, ReleaseDigest},
    release::{self, DIGEST_LABEL, PACK_LABEL, ReleaseError, ReleaseRecord},
    repository::{self, FIELD_MANAGER},
    resolve::{self, RepositoryLookup, Resolution, ResolveError},
    status,
};

/// Finalizer that keeps a Pack until its Helm release is uninstalled.
pub const FINALIZER: &str = "pack-operator.k8s.kubit.ir/helm-release";

/// How soon a Pack is looked at again while this process has not fetched its (ready) repository yet.
const WARM_UP: Duration = Duration::from_secs(2);

/// Errors of a Pack reconcile that are retried by the error policy (with backoff). Helm failures of an
/// install/upgrade are not errors here: they are reported on the Pack and retried on its own schedule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Release(#[from] ReleaseError),
    #[error("helm uninstall failed: {source}")]
    Uninstall { source: HelmError, retry: Duration },
    /// A failed uninstall is retried after its backoff, not when the Pack changes.
    #[error("waiting {0:?} before retrying the failed uninstall")]
    UninstallBackoff(Duration),
    #[error("the Helm operation was cancelled because the controller is stopping")]
    Cancelled,
    #[error("{0}")]
    Finalizer(Box<finalizer::Error<Error>>),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Release(_) => "ReleaseRecord",
            Error::Uninstall { .. } => "UninstallFailed",
            Error::UninstallBackoff(_) => "UninstallBackoff",
            Error::Cancelled => "Cancelled",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "Finalizer",
            },
        }
    }

    /// What to tell the Pack's owner when a request to the API server was refused or failed, with how to
    /// fix it. None for errors that are no news to the owner: conflicts (a newer object; retried at once)
    /// and objects gone meanwhile, and errors that are not the API server's answer.
    fn api_failure(&self) -> Option<String> {
        let api = match self {
            Error::Kube(kube::Error::Api(s))
            | Error::Release(ReleaseError::Kube(kube::Error::Api(s))) => s,
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    return e.api_failure();
                }
                // 422: the finalizer's JSON patch tests the list it read, and a cache behind the
                // API server fails that test; the next reconcile reads the new list.
                finalizer::Error::AddFinalizer(kube::Error::Api(s))
                | finalizer::Error::RemoveFinalizer(kube::Error::Api(s))
                    if s.code != 422 =>
                {
                    s
                }
                _ => return None,
            },
            _ => return None,
        };
        if matches!(api.code, 404 | 409) {
            return None;
        }
        let hint = if api.code == 403 {
            "; the pack-controller's ServiceAccount lacks this right: check its RBAC (docs/deploy.md, the \
             chart's packController.rbac)"
        } else {
            ""
        };
        let text: String = api.message.chars().take(512).collect();
        Some(format!(
            "a request of the controller to the API server failed ({} {}): {text}{hint}",
            api.code, api.reason
        ))
    }

    /// When to retry, if this error decides it (from the Pack's status) rather than the error policy.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Uninstall { retry, .. } | Error::UninstallBackoff(retry) => Some(*retry),
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What `run` needs besides the leader's client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only Packs of these namespaces (all when empty). With several, Packs are watched cluster-wide
    /// and those of other namespaces are left alone (no finalizer, no status, no Helm).
    pub namespaces: Vec<String>,
    /// Largest repository index accepted.
    pub max_index_bytes: u64,
    /// Pack reconciles at once (`--concurrency`).
    pub concurrency: u16,
    /// How often a Pack is looked at again when nothing it watches changed (`--resync-interval`, ±10 %).
    pub resync: Duration,
    pub helm: HelmConfig,
}

/// State shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub cache: IndexCache,
    pub recorder: Recorder,
    pub metrics: ReconcileMetrics,
    pub helm: Helm,
    pub charts: ChartCache,
    pub states: PackStates,
    pub max_index_bytes: u64,
    /// The safety-net resync interval (`--resync-interval`).
    pub resync: Duration,
    /// Cancelled when this process stops leading: running Helm processes get SIGTERM.
    pub stop: CancellationToken,
    /// Consecutive reconcile errors per Pack, for the error policy's backoff.
    pub errors: Mutex<HashMap<ObjectRef<Pack>, u32>>,
    /// The namespaces in scope (empty: all).
    pub namespaces: Vec<String>,
}

async fn reconcile(pack: Arc<Pack>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.namespaces.is_empty() && !ctx.namespaces.contains(&namespace(&pack)) {
        // Another namespace than this controller's (--namespace a,b watches all Packs): not ours.
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.start();
    let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &namespace(&pack));
    let key = ObjectRef::from_obj(pack.as_ref());
    let original = pack.clone();
    let result = finalizer(&api, FINALIZER, pack, |event| async {
        match event {
            finalizer::Event::Apply(pack) => apply(&pack, &ctx).await,
            finalizer::Event::Cleanup(pack) => cleanup(&pack, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(Error::Cancelled)
        | finalizer::Error::CleanupFailed(Error::Cancelled) => Error::Cancelled,
        e => Error::Finalizer(Box::new(e)),
    });
    match &result {
        Ok(_) => {
            ctx.errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        Err(e) => {
            if let Some(message) = e.api_failure() {
                report_api_failure(&ctx, &original, message).await;
            }
        }
    }
    result
}

/// Tells the Pack's owner that a request of this controller to the API server failed (most often RBAC:
/// a 403 names the verb and resource): `Ready=False` with reason `KubernetesAPIError`, and a Warning
/// Event when that message is new. Best effort: when the status write itself is refused, the log says it.
async fn report_api_failure(ctx: &Context, pack: &Pack, message: String) {
    let current = pack
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY));
    if current.is_some_and(|c| c.reason == status::API_REQUEST_FAILED && c.message == message) {
        return;
    }
    let next = status::api_request_failed(
        status::base(pack),
        message.clone(),
        pack.metadata.generation,
    );
    if let Err(e) = write_status(ctx, pack, &next).await {
        warn!(error = %e, "cannot record the API failure in the Pack's status");
    }
    publish(
        ctx,
        pack,
        EventType::Warning,
        status::API_REQUEST_FAILED,
        "Reconcile",
        &message,
    )
    .await;
}

fn namespace(pack: &Pack) -> String {
    pack.namespace().unwrap_or_default()
}

fn state_key(pack: &Pack) -> String {
    format!("{}/{}", namespace(pack), pack.name_any())
}

async fn apply(pack: &Pack, ctx: &Context) -> Result<Action, Error> {
    if pack.spec.suspend {
        debug!("suspended");
        let next = status::suspended(status::base(pack), pack.metadata.generation);
        write_status(ctx, pack, &next).await?;
        return Ok(Action::await_change());
    }
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
    let resolution = match resolve::resolve(&pack.spec, lookup) {
        Ok(r) => r,
        Err(e) => {
            let next = status::resolve_failed(pack, &e);
            write_status(ctx, pack, &next).await?;
            announce_resolve_failure(ctx, pack, &e).await;
            return Ok(Action::requeue(ctx.resync));
        }
    };
    drop(cached);
    // The repository exists here (resolution needs its index).
    let Some(repo) = repo else {
        return Ok(Action::requeue(WARM_UP));
    };
    install_or_upgrade(pack, ctx, &repo, resolution).await
}

async fn install_or_upgrade(
    pack: &Pack,
    ctx: &Context,
    repo: &ClusterPackRepository,
    resolution: Resolution,
) -> Result<Action, Error> {
    let ns = namespace(pack);
    let name = pack.name_any();
    let generation = pack.metadata.generation;
    let digest = ReleaseDigest::of(
        &resolution.chart,
        &resolution.version,
        resolution.digest.as_deref(),
        &resolution.values,
    );
    let record = release::read(&ctx.client, &ns, &name).await?;
    let decide = |pack: &Pack| {
        let next = status::resolved(status::base(pack), &resolution);
        let facts = Facts {
            pack: &name,
            release: record.as_ref(),
            status: &next,
            requested_at: pack.annotations().get(REQUESTED_AT).map(String::as_str),
            since_last_attempt: status::since_last_attempt(&next),
            rollback_on_failure: pack.spec.rollback_on_failure,
        };
        (plan::decide(&digest, facts), next)
    };
    let (mut decision, mut next) = decide(pack);
    let fresh;
    let pack = if plan::confirm_on_stored(&decision) {
        // The cached Pack can lag behind this controller's own last status write (the release Secret's
        // event, or the event of the status written before Helm ran, may wake this reconcile first): a
        // decision to run Helm is taken again on the stored status, so a failure just recorded is not
        // retried at once, skipping its backoff. One GET, only when Helm is about to run.
        debug!(
            ?decision,
            "deciding again on the stored Pack before running Helm"
        );
        let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &ns);
        fresh = api.get(&name).await?;
        if fresh.metadata.generation != pack.metadata.generation {
            // A newer spec: its own event follows.
            return Ok(Action::requeue(WARM_UP));
        }
        (decision, next) = decide(&fresh);
        &fresh
    } else {
        pack
    };
    let requested_at = pack.annotations().get(REQUESTED_AT).map(String::as_str);
    let changed_outside = plan::changed_outside(
        &digest,
        record.as_ref(),
        pack.status.as_ref().and_then(|s| s.revision),
    );
    debug!(?decision, "plan");
    let (install, recover) = match decision {
        Plan::UpToDate => {
            let revision = record.as_ref().map_or(0, |r| r.revision);
            next = status::applied(next, &resolution, &digest, revision, &name, generation);
            write_status(ctx, pack, &next).await?;
            return Ok(Action::requeue(jitter(ctx.resync)));
        }
        Plan::NotOwned => {
            let message = format!(
                "a Helm release named {name} already exists in namespace {ns} and was not installed by \
                 this Pack; pack-controller does not take over releases it did not make. Uninstall it \
                 (helm uninstall {name} -n {ns}), rename the Pack, or adopt the release with \
                 `kubectl label secret -n {ns} -l owner=helm,name={name} {PACK_LABEL}={name}`"
            );
            let was = pack
                .status
                .as_ref()
                .and_then(|s| conditions::find(&s.conditions, conditions::READY))
                .map(|c| c.reason.clone());
            next = status::not_owned(next, message.clone(), generation);
            write_status(ctx, pack, &next).await?;
            if was.as_deref() != Some(status::RELEASE_NOT_OWNED) {
                publish(
                    ctx,
                    pack,
                    EventType::Warning,
                    status::RELEASE_NOT_OWNED,
                    "Install",
                    &message,
                )
                .await;
            }
            return Ok(Action::requeue(jitter(ctx.resync)));
        }
        Plan::Wait(d) => {
            write_status(ctx, pack, &next).await?;
            debug!(wait = ?d, "backing off after a failure");
            return Ok(Action::requeue(d));
        }
        Plan::HeldAfterRollback => {
            write_status(ctx, pack, &next).await?;
            return Ok(Action::requeue(jitter(ctx.resync)));
        }
        Plan::Apply { install, recover } => (install, recover),
    };

    if recover && let Some(r) = &record {
        recover_stuck(ctx, pack, &mut next, r).await?;
    }
    let operation = if install { "install" } else { "upgrade" };
    let verb = if install {
        "Installing"
    } else {
        "Upgrading to"
    };
    next = status::progressing(
        next,
        format!("{verb} chart {} {}", resolution.chart, resolution.version),
        generation,
    );
    write_status(ctx, pack, &next).await?;

    let started = Instant::now();
    let result = run_helm(ctx, repo, &resolution, &digest, &ns, &name, operation).await;
    let took = started.elapsed();
    let action = if install { "Install" } else { "Upgrade" };
    match result {
        Ok(outcome) => {
            let previous = next.applied_version.clone();
            status::push_history(
                &mut next,
                status::attempt(
                    action,
                    Some(&resolution.version),
                    Some(&digest),
                    Ok(Some(outcome.revision)),
                    took,
                ),
            );
            next.last_attempted_digest = Some(digest.as_str().to_owned());
            next.last_handled_reconcile_at = requested_at.map(Into::into);
            next = status::applied(
                next,
                &resolution,
                &digest,
                outcome.revision,
                &name,
                generation,
            );
            write_status(ctx, pack, &next).await?;
            let note = match (install, previous) {
                (true, _) => format!(
                    "Installed chart {} {} as release {name} revision {}",
                    resolution.chart, resolution.version, outcome.revision
                ),
                (false, Some(old)) if old != resolution.version => format!(
                    "Upgraded chart {} {old} → {} (revision {})",
                    resolution.chart, resolution.version, outcome.revision
                ),
                (false, _) if changed_outside => format!(
                    "Upgraded chart {} {} back to the Pack's values: revision {} of the release was \
                     made outside this Pack (revision {})",
                    resolution.chart,
                    resolution.version,
                    record.as_ref().map_or(0, |r| r.revision),
                    outcome.revision
                ),
                (false, _) => format!(
                    "Upgraded chart {} {} with changed values{} (revision {})",
                    resolution.chart,
                    resolution.version,
                    if requested_at.is_some() {
                        " or on request"
                    } else {
                        ""
                    },
                    outcome.revision
                ),
            };
            info!(revision = outcome.revision, version = %resolution.version, "{note}");
            publish(
                ctx,
                pack,
                EventType::Normal,
                if install { "Installed" } else { "Upgraded" },
                // Version and revision in the action: the Event recorder folds Events with equal
                // (reason, action) into one series that keeps the first note.
                &format!("{action} {} r{}", resolution.version, outcome.revision),
                &note,
            )
            .await;
            Ok(Action::requeue(jitter(ctx.resync)))
        }
        Err(ApplyError::Helm(HelmError::Cancelled)) => Err(Error::Cancelled),
        Err(e) => {
            let reason = match &e {
                ApplyError::Helm(HelmError::Failed { .. }) if install => status::INSTALL_FAILED,
                ApplyError::Helm(HelmError::Failed { .. }) => status::UPGRADE_FAILED,
                e => e.reason(),
            };
            let mut message = format!(
                "helm {operation} of chart {} {} failed: {e}",
                resolution.chart, resolution.version
            );
            status::push_history(
                &mut next,
                status::attempt(
                    action,
                    Some(&resolution.version),
                    Some(&digest),
                    Err(e.to_string()),
                    took,
                ),
            );
            next.last_handled_reconcile_at = requested_at.map(Into::into);
            let mut stalled = false;
            // Roll back only a failed upgrade of a release that was deployed before it.
            let rollback_to = record
                .as_ref()
                .filter(|r| r.is_deployed() && pack.spec.rollback_on_failure && !install)
                .map(|r| r.revision);
            if let (Some(revision), ApplyError::Helm(HelmError::Failed { .. })) = (rollback_to, &e)
            {
                let started = Instant::now();
                let redact = value_strings(&resolution.values);
                match ctx
                    .helm
                    .rollback(&ns, &name, revision, &redact, &ctx.stop)
                    .await
                {
                    Ok(()) => {
                        // The rollback made a new revision: the one the Pack now stands on.
                        let rolled_back = release::read(&ctx.client, &ns, &name)
                            .await?
                            .map(|r| r.revision);
                        next.revision = rolled_back.or(next.revision);
                        message.push_str(&format!(
                            "; rolled back to revision {revision} (spec.rollbackOnFailure); not retried \
                             until the spec, the chart version or the requestedAt annotation changes"
                        ));
                        stalled = true;
                        let version = next.applied_version.clone();
                        status::push_history(
                            &mut next,
                            status::attempt(
                                "Rollback",
                                version.as_deref(),
                                None,
                                Ok(rolled_back),
                                started.elapsed(),
                            ),
                        );
                    }
                    Err(HelmError::Cancelled) => return Err(Error::Cancelled),
                    Err(rb) => {
                        message.push_str(&format!(
                            "; rollback to revision {revision} failed too: {rb}"
                        ));
                        status::push_history(
                            &mut next,
                            status::attempt(
                                "Rollback",
                                None,
                                None,
                                Err(rb.to_string()),
                                started.elapsed(),
                            ),
                        );
                    }
                }
            }
            let failures = if next.last_attempted_digest.as_deref() == Some(digest.as_str()) {
                next.failures.unwrap_or(0) + 1
            } else {
                1
            };
            let retry = plan::backoff(failures);
            if !stalled {
                message.push_str(&format!("; retrying in {}s", retry.as_secs()));
            }
            warn!(reason, "{message}");
            next =
                status::apply_failed(next, &digest, reason, message.clone(), stalled, generation);
            write_status(ctx, pack, &next).await?;
            // Repeated failures of one spec fold into one Event series; another spec gets its own.
            let event_action = format!("{action} {} {}", resolution.version, &digest.label()[..8]);
            publish(
                ctx,
                pack,
                EventType::Warning,
                reason,
                &event_action,
                &message,
            )
            .await;
            Ok(Action::requeue(if stalled {
                jitter(ctx.resync)
            } else {
                retry
            }))
        }
    }
}

/// Why an install/upgrade could not be done.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("{0}")]
    Helm(HelmError),
    #[error("{0}")]
    Chart(#[from] ChartError),
    #[error("cannot use the ClusterPackRepository's credentials: {0}")]
    Repository(String, &'static str),
}

impl ApplyError {
    fn reason(&self) -> &'static str {
        match self {
            ApplyError::Helm(e) => e.reason(),
            ApplyError::Chart(e) => e.reason(),
            ApplyError::Repository(_, reason) => reason,
        }
    }
}

async fn run_helm(
    ctx: &Context,
    repo: &ClusterPackRepository,
    resolution: &Resolution,
    digest: &ReleaseDigest,
    ns: &str,
    name: &str,
    operation: &'static str,
) -> Result<crate::helm::ReleaseOutcome, ApplyError> {
    let request = repository::fetch_request(&ctx.client, repo, ctx.max_index_bytes)
        .await
        .map_err(|e| ApplyError::Repository(e.to_string(), e.reason()))?;
    let chart = ctx.charts.archive(&request, resolution).await?;
    let labels = [(PACK_LABEL, name), (DIGEST_LABEL, digest.label())];
    let upgrade = Upgrade {
        namespace: ns,
        release: name,
        chart: &chart,
        values: &resolution.values,
        labels: &labels,
    };
    ctx.helm
        .upgrade_install(operation, &upgrade, &ctx.stop)
        .await
        .map_err(ApplyError::Helm)
}

/// Marks a release revision left `pending-*` by an interrupted Helm process failed, so Helm accepts the
/// next operation. Nothing else operates on this release here: the controller runs one reconcile per
/// Pack at a time, and only the leader runs Helm.
async fn recover_stuck(
    ctx: &Context,
    pack: &Pack,
    next: &mut PackStatus,
    record: &ReleaseRecord,
) -> Result<(), Error> {
    let ns = namespace(pack);
    let started = Instant::now();
    let description = format!(
        "Release marked failed by pack-controller: it was left {} by an interrupted Helm process",
        record.status
    );
    let result = release::mark_failed(&ctx.client, &ns, record, &description).await;
    let took = started.elapsed();
    ctx.helm.record(
        "recover",
        if result.is_ok() { "success" } else { "failure" },
        took,
    );
    status::push_history(
        next,
        status::attempt(
            "Recover",
            None,
            None,
            result
                .as_ref()
                .map(|()| Some(record.revision))
                .map_err(ToString::to_string),
            took,
        ),
    );
    result?;
    let note = format!(
        "release {} revision {} was stuck in {} (an interrupted Helm process); marked it failed and \
         retrying",
        pack.name_any(),
        record.revision,
        record.status
    );
    warn!("{note}");
    publish(
        ctx,
        pack,
        EventType::Warning,
        "StuckReleaseRecovered",
        "Recover",
        &note,
    )
    .await;
    Ok(())
}

async fn cleanup(pack: &Pack, ctx: &Context) -> Result<Action, Error> {
    let ns = namespace(pack);
    let name = pack.name_any();
    let generation = pack.metadata.generation;
    let record = release::read(&ctx.client, &ns, &name).await?;
    match &record {
        None => {
            info!("no Helm release to uninstall");
        }
        Some(r) if r.pack.as_deref() != Some(name.as_str()) => {
            let note = format!("release {name} was not installed by this Pack; left in place");
            publish(
                ctx,
                pack,
                EventType::Normal,
                "ReleaseKept",
                "Uninstall",
                &note,
            )
            .await;
        }
        Some(_) => {
            // Every status write wakes the Pack again at once, and the cached Pack can lag behind the
            // last write: the retry of a failed uninstall is decided on the stored status.
            let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &ns);
            let stored = api.get(&name).await?;
            let current = status::base(&stored);
            if let Some(wait) = plan::uninstall_wait(&current, status::since_last_attempt(&current))
            {
                debug!(?wait, "backing off after a failed uninstall");
                return Err(Error::UninstallBackoff(wait));
            }
            let mut next = current;
            if next.state != Some(PackState::RemoveFailed) {
                next = status::removing(next, generation);
                write_status(ctx, &stored, &next).await?;
            }
            // A release left pending-* (or `uninstalling`) by an interrupted Helm is uninstalled as it
            // is: `helm uninstall` accepts it, so no repair is needed (nor can a failed one block this).
            let started = Instant::now();
            let result = ctx
                .helm
                .uninstall(&ns, &name, &pack_value_strings(pack), &ctx.stop)
                .await;
            if let Err(e) = result {
                if matches!(e, HelmError::Cancelled) {
                    return Err(Error::Cancelled);
                }
                let version = next.applied_version.clone();
                status::push_history(
                    &mut next,
                    status::attempt(
                        "Uninstall",
                        version.as_deref(),
                        None,
                        Err(e.to_string()),
                        started.elapsed(),
                    ),
                );
                next = status::remove_failed(next, &e.to_string(), generation);
                let retry = plan::backoff(next.failures.unwrap_or(1));
                let message = conditions::find(&next.conditions, conditions::READY)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                warn!("{message}");
                write_status(ctx, &stored, &next).await?;
                publish(
                    ctx,
                    pack,
                    EventType::Warning,
                    status::UNINSTALL_FAILED,
                    "Uninstall",
                    &message,
                )
                .await;
                return Err(Error::Uninstall { source: e, retry });
            }
            let note = format!("Uninstalled release {name}");
            info!("{note}");
            publish(
                ctx,
                pack,
                EventType::Normal,
                "Uninstalled",
                "Uninstall",
                &note,
            )
            .await;
        }
    }
    ctx.states.set(&state_key(pack), None);
    Ok(Action::await_change())
}

/// The strings to blank out of Helm's errors for `pack`: those of its final values and, should its vars
/// no longer apply, of its values and vars as written.
fn pack_value_strings(pack: &Pack) -> Vec<String> {
    let values = pack.spec.values.clone().unwrap_or(serde_json::Value::Null);
    let mut all = vec![values.clone(), serde_json::json!(pack.spec.vars)];
    if let Ok(v) = crate::vars::substitute(&pack.spec.vars, &values) {
        all.push(v);
    }
    value_strings(&serde_json::Value::Array(all))
}

fn repository_reports_ready(repo: &ClusterPackRepository) -> bool {
    repo.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .is_some_and(|c| c.status == "True")
}

/// Writes the status (server-side apply on the status subresource) unless nothing changed.
async fn write_status(ctx: &Context, pack: &Pack, status: &PackStatus) -> Result<(), Error> {
    ctx.states.set(&state_key(pack), Some(status.state));
    if pack.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &namespace(pack));
    common::status::apply(&api, &pack.name_any(), FIELD_MANAGER, status).await?;
    Ok(())
}

/// A Warning Event when the reason a Pack cannot be resolved changes.
async fn announce_resolve_failure(ctx: &Context, pack: &Pack, e: &ResolveError) {
    let old = pack
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| c.reason.as_str());
    if old != Some(e.reason()) {
        info!(reason = e.reason(), "{e}");
        publish(
            ctx,
            pack,
            EventType::Warning,
            e.reason(),
            "Resolve",
            &e.to_string(),
        )
        .await;
    }
}

async fn publish(
    ctx: &Context,
    pack: &Pack,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let regarding = pack.object_ref(&());
    common::events::publish(&ctx.recorder, &regarding, type_, reason, action, note).await;
}

/// `d` ± 10 %, so Packs created together do not resync together.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.9..1.1))
}

fn error_policy(pack: Arc<Pack>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::Cancelled) {
        return Action::await_change();
    }
    if let Some(retry) = error.retry_after() {
        // Decided from the Pack's status (it survives restarts); a backoff wait is no failure.
        if error.reason() != "UninstallBackoff" {
            ctx.metrics.failure(error.reason());
        }
        return Action::requeue(retry);
    }
    ctx.metrics.failure(error.reason());
    let mut errors = ctx.errors.lock().unwrap_or_else(PoisonError::into_inner);
    let n = errors
        .entry(ObjectRef::from_obj(pack.as_ref()))
        .or_insert(0);
    *n = n.saturating_add(1);
    let delay = jitter(plan::backoff(*n));
    warn!(%error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
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

/// What about a repository matters to its Packs: not the time of its last fetch, which its status records
/// after every refresh (waking every Pack of the repository each interval for nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RepositoryFingerprint {
    generation: Option<i64>,
    url: String,
    index_digest: Option<String>,
    ready: Option<(String, String)>,
}

impl RepositoryFingerprint {
    fn of(repo: &ClusterPackRepository) -> Self {
        let status = repo.status.as_ref();
        RepositoryFingerprint {
            generation: repo.metadata.generation,
            url: repo.spec.url.clone(),
            index_digest: status.and_then(|s| s.index_digest.clone()),
            ready: status
                .and_then(|s| conditions::find(&s.conditions, conditions::READY))
                .map(|c| (c.status.clone(), c.reason.clone())),
        }
    }
}

/// ClusterPackRepositories that changed in a way their Packs care about (see [`RepositoryFingerprint`]),
/// and every deleted one.
fn repository_changes(
    api: Api<ClusterPackRepository>,
) -> impl futures::Stream<Item = Result<ClusterPackRepository, watcher::Error>> + Send + 'static {
    let seen: Arc<Mutex<HashMap<String, RepositoryFingerprint>>> = Arc::default();
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |event| {
            let seen = seen.clone();
            async move {
                let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
                match event {
                    Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => {
                        let fingerprint = RepositoryFingerprint::of(&r);
                        let changed =
                            seen.insert(r.name_any(), fingerprint.clone()) != Some(fingerprint);
                        changed.then_some(Ok(r))
                    }
                    Ok(watcher::Event::Delete(r)) => {
                        seen.remove(&r.name_any());
                        Some(Ok(r))
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        })
}

/// Metrics of the two loops and of Helm.
#[derive(Clone)]
pub struct Metrics {
    pub packs: ReconcileMetrics,
    pub repositories: ReconcileMetrics,
    pub helm: HelmMetrics,
    pub states: PackStates,
}

/// Runs the Pack and ClusterPackRepository controllers until `leading.stop` is cancelled.
/// `settings.namespace` scopes the Packs; repositories are cluster-scoped and always all watched.
pub async fn run(leading: Leading, settings: Settings, metrics: Metrics) {
    let client = leading.client.clone();
    let helm = match Helm::new(settings.helm.clone(), metrics.helm.clone()) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, dir = %settings.helm.work_dir.display(), "cannot create the work directory; is it writable?");
            leading.stop.cancelled().await;
            return;
        }
    };
    let packs: Api<Pack> = match settings.namespaces.as_slice() {
        [ns] => Api::namespaced(client.clone(), ns),
        _ => Api::all(client.clone()),
    };
    // Helm's release Secrets: one watch per namespace in scope (the RBAC of a namespace-scoped install
    // allows no cluster-wide Secret list), or one for all.
    let secrets: Vec<Api<PartialObjectMeta<Secret>>> = if settings.namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        settings
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
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

    // The Pack cache holds what reconciles read, not managedFields or kubectl's last-applied copy of the
    // whole Pack (values included): at 1,000 Packs they are most of the controller's memory.
    let (reader, writer) = kube::runtime::reflector::store();
    let pack_stream = watcher(packs, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|pack: &mut Pack| {
            pack.metadata.managed_fields = None;
            if let Some(a) = pack.metadata.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .reflect(writer)
        .applied_objects();
    let controller = Controller::for_stream(pack_stream, reader)
        .with_config(controller::Config::default().concurrency(settings.concurrency));
    let store = controller.store();
    common::runtime::report_sync_when_ready(store.clone(), leading.health.clone());
    let mapper_store = store.clone();
    // Helm's release Secrets, metadata only: a release changed outside (manual rollback, uninstall, a
    // finished operation) wakes the Pack of the same name.
    let releases = futures::stream::select_all(secrets.into_iter().map(|api| {
        watcher(
            api,
            watcher::Config::default()
                .labels(release::OWNER_SELECTOR)
                .any_semantic(),
        )
        .default_backoff()
        .touched_objects()
        .boxed()
    }));
    let controller = controller
        .watches_stream(
            repository_changes(Api::<ClusterPackRepository>::all(client.clone())),
            move |repo: ClusterPackRepository| packs_of(&mapper_store, &repo.name_any()),
        )
        .watches_stream(releases, |secret| {
            let name = secret.labels().get("name")?.clone();
            Some(ObjectRef::<Pack>::new(&name).within(&secret.namespace()?))
        });
    // This process's cache got another index of a repository: wake its Packs (a newer matching version
    // upgrades them). Tied to the cache, not to the repository's status, which another process may have
    // written first.
    let index_store = store.clone();
    let index_changes = futures::stream::unfold(cache.subscribe(), |mut rx| async move {
        match rx.recv().await {
            Ok(name) => Some((Some(name), rx)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
    .flat_map(move |name| {
        let packs = match name {
            Some(name) => packs_of(&index_store, &name),
            // Missed some: every Pack.
            None => index_store
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect(),
        };
        futures::stream::iter(packs)
    });
    let controller = controller.reconcile_on(index_changes);
    let ctx = Arc::new(Context {
        client: client.clone(),
        cache: cache.clone(),
        recorder: recorder.clone(),
        metrics: metrics.packs,
        charts: ChartCache::new(IndexFetcher::new(), settings.helm.work_dir.join("charts")),
        helm,
        states: metrics.states.clone(),
        max_index_bytes: settings.max_index_bytes,
        resync: settings.resync,
        stop: leading.stop.clone(),
        errors: Mutex::default(),
        namespaces: settings.namespaces.clone(),
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
        settings.max_index_bytes,
        leading.stop.clone(),
    );
    futures::future::join(packs, repositories).await;
    // Not leading any more: a standby exports no Pack counts.
    metrics.states.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn api_refusals_are_reported_with_the_fix_and_races_are_not() {
        let forbidden = Error::Release(ReleaseError::Kube(api(
            403,
            "Forbidden",
            "secrets is forbidden: cannot list resource \"secrets\"",
        )));
        let message = forbidden.api_failure().unwrap();
        assert!(message.contains("403 Forbidden"), "{message}");
        assert!(message.contains("cannot list resource"), "{message}");
        assert!(message.contains("check its RBAC"), "{message}");
        let in_finalizer = Error::Finalizer(Box::new(finalizer::Error::AddFinalizer(api(
            403,
            "Forbidden",
            "packs is forbidden",
        ))));
        let message = in_finalizer.api_failure().unwrap();
        assert!(
            message.contains("403 Forbidden") && message.contains("RBAC"),
            "{message}"
        );
        let invalid = Error::Kube(api(422, "Invalid", "spec.x: Invalid value"));
        let message = invalid.api_failure().unwrap();
        assert!(
            message.contains("422 Invalid") && !message.contains("RBAC"),
            "{message}"
        );
        // The finalizer's JSON-patch test failing on a stale cache is a race, not news.
        let raced = Error::Finalizer(Box::new(finalizer::Error::AddFinalizer(api(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        ))));
        assert_eq!(raced.api_failure(), None);
        for quiet in [
            Error::Kube(api(409, "Conflict", "the object has been modified")),
            Error::Kube(api(404, "NotFound", "gone")),
            Error::Cancelled,
            Error::UninstallBackoff(Duration::from_secs(1)),
        ] {
            assert_eq!(quiet.api_failure(), None, "{quiet}");
        }
    }
}
