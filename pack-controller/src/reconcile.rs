//! What one Pack reconcile does: resolve the chart against the cached index of its repository, decide
//! what the release needs ([`plan::decide`]), have it done ([`crate::execute`]), and report the outcome on
//! the Pack's status and as Events ([`status::after_apply`]); on deletion, uninstall the release.
//! What wakes a reconcile is in [`crate::controller`].
//!
//! A reconcile whose [`ReleaseDigest`] matches the deployed release runs no Helm process: it costs one
//! metadata list call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    conditions,
    crd::{
        Pack, PackStatus,
        pack::{DriftMode, PackState},
    },
    events::Recorder,
    finalizer::{self, Cleanup},
    metrics::ReconcileMetrics,
    requeue::jitter,
    sync::lock,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{controller::Action, events::EventType, reflector::ObjectRef},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    chart::ChartCache,
    controller, depends, drift,
    error::Error,
    execute,
    helm::{Helm, HelmError},
    identity::Identity,
    index::IndexCache,
    metrics::PackStates,
    observe, offline,
    plan::{self, Facts, Plan, REQUESTED_AT, ReleaseDigest},
    readiness,
    release::{self, PACK_LABEL, ReleaseRecord},
    repository::FIELD_MANAGER,
    repository_kind::{AnyRepository, RepositoryView},
    resolve::{self, RepositoryLookup, Resolution, ResolveError},
    status::{self, Retry},
    values_from::{ValuesFrom, ValuesFromError},
};

/// Finalizer that keeps a Pack until its Helm release is uninstalled.
pub const FINALIZER: &str = "pack-operator.k8s.kubit.ir/helm-release";

/// How soon a Pack is looked at again while this process has not fetched its (ready) repository yet.
const WARM_UP: Duration = Duration::from_secs(2);

/// `spec.wait`: how often a custom resource that is not ready yet is read again (custom resources are
/// not watched; the built-in kinds are, see [`controller::WAKING_KINDS`]).
const CUSTOM_RESOURCE_RECHECK: Duration = Duration::from_secs(10);

/// How long a Pack being deleted that others depend on waits for them to be deleted too (a batch
/// delete) before it is uninstalled anyway.
const DELETION_SETTLE: Duration = Duration::from_secs(5);

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
    /// `--max-values-size`: the most bytes of JSON a Pack's values may expand to.
    pub max_values_bytes: usize,
    /// The safety-net resync interval (`--resync-interval`).
    pub resync: Duration,
    /// Cancelled when this process stops leading: running Helm processes get SIGTERM.
    pub stop: CancellationToken,
    /// Consecutive reconcile errors per Pack, for the error policy's backoff.
    pub errors: Mutex<HashMap<ObjectRef<Pack>, u32>>,
    /// The status this process last wrote (or found stored) per Pack (`namespace/name`): a cached Pack
    /// with another status lags behind that write ([`current`]).
    pub written: common::sync::LastWritten,
    /// The namespaces in scope (empty: all).
    pub namespaces: Vec<String>,
    /// `--default-service-account`: the ServiceAccount of its namespace a Pack without
    /// `spec.serviceAccountName` runs as (None: the controller's own rights).
    pub default_service_account: Option<String>,
    /// The controller's client configuration, from which clients impersonating a Pack's ServiceAccount
    /// are made.
    pub config: kube::Config,
    /// `--allow-cross-namespace-dependencies`: `spec.dependsOn` may name Packs of other namespaces.
    pub allow_cross_namespace_dependencies: bool,
    /// The Pack watch's cache (the Packs in scope).
    pub packs: kube::runtime::reflector::Store<Pack>,
}

pub(crate) async fn reconcile(pack: Arc<Pack>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.namespaces.is_empty() && !ctx.namespaces.contains(&namespace(&pack)) {
        // Another namespace than this controller's (--namespace a,b watches all Packs): not ours.
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.start();
    let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &namespace(&pack));
    let pack = current(&ctx, &api, pack).await?;
    let key = ObjectRef::from_obj(pack.as_ref());
    let original = pack.clone();
    let context = ctx.as_ref();
    let result = finalizer::run(
        &api,
        FINALIZER,
        pack,
        |pack| async move { apply(&pack, context).await },
        |pack| async move { cleanup(&pack, context).await },
    )
    .await
    .map_err(|e| match e {
        finalizer::Error::ApplyFailed(Error::Cancelled)
        | finalizer::Error::CleanupFailed(Error::Cancelled) => Error::Cancelled,
        e => Error::Finalizer(Box::new(e)),
    });
    match &result {
        Ok(_) => {
            lock(&ctx.errors).remove(&key);
        }
        Err(e) => {
            if let Some(message) = e.api_failure() {
                report_api_failure(&ctx, &original, message).await;
            }
        }
    }
    result
}

/// The Pack to reconcile: the cached one, unless its status is not the one this process last wrote.
/// Then the cache lags behind that write (an event of the release's Secrets, or of an object the Pack
/// waits for, can wake the Pack before the cache has the status written a moment before), and a
/// status derived from the cached one would undo the write: the stored Pack is read instead (one GET,
/// only then). A status someone else wrote is taken as found, so this cannot repeat.
async fn current(ctx: &Context, api: &Api<Pack>, pack: Arc<Pack>) -> Result<Arc<Pack>, Error> {
    let key = state_key(&pack);
    if !ctx.written.lags(&key, &pack.status) {
        return Ok(pack);
    }
    debug!("the cached Pack's status is not the one last written; reading the stored Pack");
    let Some(stored) = api.get_opt(&pack.name_any()).await? else {
        return Ok(pack);
    };
    ctx.written.record(&key, &stored.status);
    Ok(Arc::new(stored))
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
    if let Some(waiting) = dependencies(ctx, pack).await? {
        return Ok(waiting);
    }
    // A PackRepository is looked up in the Pack's own namespace only.
    let repo = AnyRepository::of(&ctx.client, pack).await?;
    let repo_name = crate::repository_kind::referenced_key(pack);
    // An OCI registry lists the tags of the charts Packs ask for (the first ask wakes its refresh).
    ctx.cache.want(&repo_name, &pack.spec.chart.name);
    let cached = ctx.cache.get(&repo_name);
    let not_ready_detail;
    let lookup = match (repo.as_ref().map(AnyRepository::view), &cached) {
        (None, _) => RepositoryLookup::NotFound,
        // An index fetched from another URL (spec.url changed, or a deleted repository came back) does
        // not count.
        (Some(r), Some(c)) if c.url == r.spec.url => RepositoryLookup::Ready(&c.index),
        (Some(r), _) if r.reports_ready() => {
            // Another replica (or this process before a restart) fetched it fine: this process has not
            // fetched it yet. Keep the Pack's status as it is rather than flap it to RepositoryNotReady;
            // the fetch writes the repository's status, which wakes this Pack again.
            debug!(repository = %repo_name, "index not cached here yet; waiting for the first fetch");
            return Ok(Action::requeue(WARM_UP));
        }
        (Some(r), _) => {
            not_ready_detail = r
                .status
                .and_then(|s| conditions::find(&s.conditions, conditions::READY))
                .filter(|c| c.status != "True")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "its index has not been fetched yet".into());
            RepositoryLookup::NotReady {
                detail: &not_ready_detail,
            }
        }
    };
    let mut salt = Vec::new();
    let resolution = match read_values_from(ctx, pack, false)
        .await?
        .map_err(ResolveError::from)
        .and_then(|mut from| {
            salt = std::mem::take(&mut from.secret_uids);
            resolve::resolve_from(&pack.spec, from, lookup, ctx.max_values_bytes)
        }) {
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
    install_or_upgrade(pack, ctx, repo.view(), resolution, &salt).await
}

/// `salt`: the uids of the Secrets the values came from ([`ReleaseDigest::salted`]).
async fn install_or_upgrade(
    pack: &Pack,
    ctx: &Context,
    repo: RepositoryView<'_>,
    resolution: Resolution,
    salt: &[String],
) -> Result<Action, Error> {
    let digest = ReleaseDigest::of(
        &resolution.chart,
        &resolution.version,
        resolution.digest.as_deref(),
        &resolution.values,
    )
    .salted(salt);
    let record = release::read(&ctx.client, &namespace(pack), &pack.name_any()).await?;
    let (decision, next) = decide(pack, &resolution, &digest, record.as_ref());
    let stored;
    let (pack, decision, next) = if plan::confirm_on_stored(&decision) {
        // The cached Pack can lag behind this controller's own last status write (the release Secret's
        // event, or the event of the status written before Helm ran, may wake this reconcile first): a
        // decision to run Helm is taken again on the stored status, so a failure just recorded is not
        // retried at once, skipping its backoff. One GET, only when Helm is about to run.
        debug!(
            ?decision,
            "deciding again on the stored Pack before running Helm"
        );
        let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &namespace(pack));
        stored = api.get(&pack.name_any()).await?;
        if stored.metadata.generation != pack.metadata.generation {
            // A newer spec: its own event follows.
            return Ok(Action::requeue(WARM_UP));
        }
        let (decision, next) = decide(&stored, &resolution, &digest, record.as_ref());
        (&stored, decision, next)
    } else {
        (pack, decision, next)
    };
    debug!(?decision, "plan");
    let target = Target {
        pack,
        repo,
        resolution: &resolution,
        digest: &digest,
        record: record.as_ref(),
    };
    match decision {
        Plan::Apply { install, recover } => {
            apply_release(ctx, &target, install, recover, next).await
        }
        decision => hold(ctx, &target, decision, next).await,
    }
}

/// The Pack and release one install/upgrade decision is about.
struct Target<'a> {
    pack: &'a Pack,
    repo: RepositoryView<'a>,
    resolution: &'a Resolution,
    digest: &'a ReleaseDigest,
    record: Option<&'a ReleaseRecord>,
}

/// Executes [`Plan::Apply`] and reports its outcome.
async fn apply_release(
    ctx: &Context,
    t: &Target<'_>,
    install: bool,
    recover: bool,
    mut next: PackStatus,
) -> Result<Action, Error> {
    let pack = t.pack;
    let identity = Identity::of(pack, ctx.default_service_account.as_deref());
    if let Some(missing) = missing_service_account(ctx, pack, identity.as_ref()).await? {
        return Ok(missing);
    }
    if recover && let Some(r) = t.record {
        execute::recover_stuck(ctx, pack, identity.as_ref(), &mut next, r).await?;
    }
    let message = status::progress_message(install, next.applied_version.as_deref(), t.resolution);
    next = status::progressing(next, message, pack.metadata.generation);
    write_status(ctx, pack, &next).await?;
    let apply = execute::Apply {
        pack,
        repository: t.repo,
        resolution: t.resolution,
        digest: t.digest,
        record: t.record,
        identity: identity.as_ref(),
    };
    let outcome = execute::apply(ctx, &apply).await?;
    let name = pack.name_any();
    let attempted = status::Attempted {
        release: &name,
        resolution: t.resolution,
        digest: t.digest,
        install,
        requested_at: pack.annotations().get(REQUESTED_AT).map(String::as_str),
        changed_outside: plan::changed_outside(
            t.digest,
            t.record,
            pack.status.as_ref().and_then(|s| s.revision),
        )
        .then(|| t.record.map_or(0, |r| r.revision)),
        generation: pack.metadata.generation,
    };
    let mut outcome_report = status::after_apply(next, &attempted, &outcome);
    if pack.spec.wait && matches!(outcome, plan::Outcome::Applied { .. }) {
        outcome_report = status::awaiting_objects(outcome_report, pack.metadata.generation);
    }
    report(ctx, pack, outcome_report).await
}

/// When the ServiceAccount `pack` runs as does not exist: reports it (`Ready=False`
/// `ServiceAccountNotFound`, a Warning Event when new) and says to wait (the ServiceAccount watch wakes the
/// Pack when it is created). None: go ahead.
async fn missing_service_account(
    ctx: &Context,
    pack: &Pack,
    identity: Option<&Identity>,
) -> Result<Option<Action>, Error> {
    let Some(identity) = identity else {
        return Ok(None);
    };
    if identity.exists(&ctx.client).await? {
        return Ok(None);
    }
    let message = identity.not_found_message(pack.spec.service_account_name.is_some());
    let was = pack
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| c.reason.clone());
    let next = status::service_account_missing(
        status::base(pack),
        message.clone(),
        pack.metadata.generation,
    );
    write_status(ctx, pack, &next).await?;
    if was.as_deref() != Some(status::SERVICE_ACCOUNT_NOT_FOUND) {
        warn!("{message}");
        publish(
            ctx,
            pack,
            EventType::Warning,
            status::SERVICE_ACCOUNT_NOT_FOUND,
            "Reconcile",
            &message,
        )
        .await;
    }
    Ok(Some(Action::requeue(jitter(ctx.resync))))
}

/// The plan for `pack` (cached or stored), and the status it starts from.
fn decide(
    pack: &Pack,
    resolution: &Resolution,
    digest: &ReleaseDigest,
    record: Option<&ReleaseRecord>,
) -> (Plan, PackStatus) {
    let next = status::resolved(status::base(pack), resolution);
    let facts = Facts {
        pack: &pack.name_any(),
        release: record,
        status: &next,
        requested_at: pack.annotations().get(REQUESTED_AT).map(String::as_str),
        since_last_attempt: status::since_last_attempt(&next),
        rollback_on_failure: pack.spec.rollback_on_failure,
    };
    (plan::decide(digest, facts), next)
}

/// Acts on a plan that runs no Helm: records what it found and when to look again.
async fn hold(
    ctx: &Context,
    t: &Target<'_>,
    decision: Plan,
    mut next: PackStatus,
) -> Result<Action, Error> {
    let (pack, generation) = (t.pack, t.pack.metadata.generation);
    let requeue = match decision {
        Plan::UpToDate if pack.spec.wait && !status::ready_at(&next, t.digest, generation) => {
            return wait_for_objects(ctx, t, next).await;
        }
        Plan::UpToDate => {
            let revision = t.record.map_or(0, |r| r.revision);
            next = status::applied(
                next,
                t.resolution,
                t.digest,
                revision,
                &pack.name_any(),
                generation,
            );
            next = drift_detection(ctx, t, next).await;
            jitter(ctx.resync)
        }
        Plan::NotOwned => {
            let message = not_owned_message(&pack.name_any(), &namespace(pack));
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
            debug!(wait = ?d, "backing off after a failure");
            d
        }
        Plan::HeldAfterRollback => jitter(ctx.resync),
        Plan::Apply { .. } => unreachable!("hold is only called for plans that run no Helm"),
    };
    write_status(ctx, pack, &next).await?;
    Ok(Action::requeue(requeue))
}

/// The Packs `spec.dependsOn` relations are looked up among: those of `pack`'s namespace, or of every
/// namespace with `--allow-cross-namespace-dependencies`. One list request.
async fn related_packs(ctx: &Context, pack: &Pack) -> Result<Vec<Pack>, Error> {
    let api: Api<Pack> = if ctx.allow_cross_namespace_dependencies {
        Api::all(ctx.client.clone())
    } else {
        Api::namespaced(ctx.client.clone(), &namespace(pack))
    };
    Ok(api.list(&Default::default()).await?.items)
}

/// `spec.dependsOn`: None to go on; otherwise the Pack was reported waiting (`DependencyNotReady`, woken
/// when a dependency changes) or on a cycle (`DependencyCycle`). One list of the namespace's Packs, only
/// for a Pack with dependencies.
async fn dependencies(ctx: &Context, pack: &Pack) -> Result<Option<Action>, Error> {
    if pack.spec.depends_on.is_empty() {
        return Ok(None);
    }
    let packs = related_packs(ctx, pack).await?;
    let generation = pack.metadata.generation;
    let gate = depends::gate(
        &namespace(pack),
        &pack.name_any(),
        &packs,
        ctx.allow_cross_namespace_dependencies,
    );
    let (next, reason, note) = match gate {
        depends::Gate::Proceed => return Ok(None),
        depends::Gate::Refused(r) => {
            let next = status::dependency_refused(status::base(pack), &r, generation);
            (next, status::CROSS_NAMESPACE_DEPENDENCY, r.join(", "))
        }
        depends::Gate::Waiting(w) => {
            let next = status::dependencies_not_ready(status::base(pack), &w, generation);
            (next, status::DEPENDENCY_NOT_READY, w.join(", "))
        }
        depends::Gate::Cycle(c) => {
            let next = status::dependency_cycle(status::base(pack), &c, generation);
            (next, status::DEPENDENCY_CYCLE, c.join(" → "))
        }
    };
    let was = pack
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| c.message.clone());
    let message = conditions::find(&next.conditions, conditions::READY).map(|c| c.message.clone());
    write_status(ctx, pack, &next).await?;
    if was != message {
        debug!(dependencies = %note, "{reason}");
        let type_ = if reason != status::DEPENDENCY_NOT_READY {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(
            ctx,
            pack,
            type_,
            reason,
            "DependsOn",
            message.as_deref().unwrap_or(""),
        )
        .await;
    }
    Ok(Some(Action::requeue(jitter(ctx.resync))))
}

/// How long `spec.wait` waits: `spec.timeout`, or the controller's `--helm-timeout`.
fn wait_timeout(pack: &Pack, ctx: &Context) -> Duration {
    pack.spec
        .timeout
        .as_deref()
        .and_then(|t| common::cli::parse_duration(t).ok())
        .unwrap_or(ctx.helm.config().timeout)
}

/// `spec.wait` of a deployed release not yet found ready: reads its objects (as the Pack's
/// ServiceAccount) and reports them ready (`Applied`), still waiting (`Progressing`, looked at again
/// when one of them changes), or, past the timeout, `ApplyFailed`/`NotReady` (rolled back with
/// `rollbackOnFailure`). No Helm process runs, except that rollback.
async fn wait_for_objects(
    ctx: &Context,
    t: &Target<'_>,
    next: PackStatus,
) -> Result<Action, Error> {
    let (pack, generation, name) = (t.pack, t.pack.metadata.generation, t.pack.name_any());
    let Some(record) = t.record else {
        return Ok(Action::requeue(WARM_UP));
    };
    let identity = Identity::of(pack, ctx.default_service_account.as_deref());
    let client = match &identity {
        Some(i) => i.client(&ctx.config)?,
        None => ctx.client.clone(),
    };
    let ns = namespace(pack);
    let objects = observe::checked_objects(&client, &ns, record).await?;
    let unready = observe::not_ready(&client, &ns, &objects).await?;
    if unready.is_empty() {
        let was_waiting = next.state == Some(PackState::Progressing);
        let next = status::applied(
            next,
            t.resolution,
            t.digest,
            record.revision,
            &name,
            generation,
        );
        write_status(ctx, pack, &next).await?;
        if was_waiting {
            let note = format!("the release's {} checked objects are ready", objects.len());
            info!("{note}");
            publish(ctx, pack, EventType::Normal, "Ready", "Wait", &note).await;
        }
        return Ok(Action::requeue(jitter(ctx.resync)));
    }
    let timeout = wait_timeout(pack, ctx);
    let elapsed = status::wait_started(&next, t.digest)
        .and_then(|at| {
            Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(at)).ok()
        })
        .unwrap_or_default();
    let summary = readiness::summary(&unready);
    if elapsed < timeout {
        let message = format!(
            "waiting for {} of {} objects to be ready (spec.wait, timeout {}s): {summary}",
            unready.len(),
            objects.len(),
            timeout.as_secs()
        );
        write_status(ctx, pack, &status::waiting(next, message, generation)).await?;
        // The watches of the built-in kinds wake the Pack; custom resources are looked at again.
        let custom = unready
            .iter()
            .any(|(o, _)| !controller::WAKING_KINDS.contains(&o.kind.as_str()));
        let again = if custom {
            CUSTOM_RESOURCE_RECHECK
        } else {
            ctx.resync
        };
        return Ok(Action::requeue((timeout - elapsed).min(again)));
    }
    if status::timed_out_at(&next, t.digest) {
        write_status(ctx, pack, &next).await?;
        return Ok(Action::requeue(jitter(ctx.resync)));
    }
    not_ready_after_timeout(ctx, t, next, identity.as_ref(), &summary, timeout).await
}

/// `spec.driftDetection` of a release deployed as the Pack asks: compares its objects with what Helm
/// applied (as the Pack's ServiceAccount) and, in mode `enabled`, re-applies the drifted ones
/// ([`drift`]). Records `Drifted` and announces a new finding or a correction; a failed check is
/// reported on `Drifted` only (Ready is about the release, which is deployed).
async fn drift_detection(ctx: &Context, t: &Target<'_>, mut next: PackStatus) -> PackStatus {
    let pack = t.pack;
    let generation = pack.metadata.generation;
    let settings = pack.spec.drift_detection.clone().unwrap_or_default();
    let (Some(record), true) = (t.record, settings.mode != DriftMode::Disabled) else {
        conditions::remove(&mut next.conditions, drift::DRIFTED);
        return next;
    };
    let previous = conditions::find(&next.conditions, drift::DRIFTED).cloned();
    let checked = async {
        let identity = Identity::of(pack, ctx.default_service_account.as_deref());
        let client = match &identity {
            Some(i) => i.client(&ctx.config)?,
            None => ctx.client.clone(),
        };
        let ns = namespace(pack);
        let manifest = observe::manifest(&client, &ns, record).await?;
        drift::check(
            &client,
            &ns,
            &pack.name_any(),
            &manifest,
            &settings.ignore,
            settings.mode,
        )
        .await
    }
    .await;
    let (drifted, reason, message) = match &checked {
        Ok(drifts) if drifts.is_empty() => (
            false,
            drift::NO_DRIFT,
            "the release's objects are as Helm applied them".to_owned(),
        ),
        Ok(drifts) if settings.mode == DriftMode::Enabled => (
            false,
            drift::DRIFT_CORRECTED,
            format!(
                "corrected {} drifted objects (re-applied as Helm applied them): {}",
                drifts.len(),
                drift::summary(drifts)
            ),
        ),
        Ok(drifts) => (
            true,
            drift::DRIFT_DETECTED,
            format!(
                "{} objects differ from the release (driftDetection.mode warn; set it to enabled to \
                 correct them, or ignore fields others own): {}",
                drifts.len(),
                drift::summary(drifts)
            ),
        ),
        Err(e) => (
            false,
            drift::DRIFT_CHECK_FAILED,
            format!("cannot compare the release's objects with the cluster: {e}"),
        ),
    };
    let announce = match &checked {
        // Every correction is an action; a finding or a failure only when it is new.
        Ok(drifts) if !drifts.is_empty() && settings.mode == DriftMode::Enabled => true,
        Ok(drifts) if drifts.is_empty() => false,
        _ => previous.as_ref().is_none_or(|c| c.message != message),
    };
    if announce {
        let type_ = if reason == drift::DRIFT_CORRECTED {
            EventType::Normal
        } else {
            EventType::Warning
        };
        info!(reason, "{message}");
        publish(ctx, pack, type_, reason, "DriftDetection", &message).await;
    }
    conditions::set(
        &mut next.conditions,
        conditions::new(drift::DRIFTED, drifted, reason, message, generation),
    );
    next
}

/// `spec.wait` timed out: rolls back with `rollbackOnFailure` and reports `ApplyFailed`/`NotReady`.
async fn not_ready_after_timeout(
    ctx: &Context,
    t: &Target<'_>,
    next: PackStatus,
    identity: Option<&Identity>,
    summary: &str,
    timeout: Duration,
) -> Result<Action, Error> {
    let pack = t.pack;
    let mut message = format!(
        "the release's objects were not ready within {}s (spec.wait): {summary}",
        timeout.as_secs()
    );
    let found = status::rollback_target(&next, t.digest);
    if pack.spec.rollback_on_failure && found.is_none() {
        // Say why nothing was rolled back (actions and results only: history messages can quote Helm).
        let history: Vec<String> = next
            .history
            .iter()
            .map(|a| format!("{} {} r{:?}", a.action, a.result, a.revision))
            .collect();
        warn!(
            ?history,
            "spec.wait timed out and no revision to roll back to was found"
        );
        message.push_str(status::NO_ROLLBACK_TARGET);
    }
    let target = found.filter(|_| pack.spec.rollback_on_failure);
    let rollback = match &target {
        Some((to, _)) => Some(
            execute::rollback(
                ctx,
                identity,
                &t.resolution.secret_strings,
                &namespace(pack),
                &pack.name_any(),
                *to,
            )
            .await?,
        ),
        None => None,
    };
    let restored = target.and_then(|(_, version)| version);
    let report_ = status::not_ready(
        next,
        t.digest,
        message,
        rollback.as_ref().map(|r| (r, restored)),
        pack.metadata.generation,
    );
    report(ctx, pack, report_).await
}

fn not_owned_message(name: &str, ns: &str) -> String {
    format!(
        "a Helm release named {name} already exists in namespace {ns} and was not installed by this \
         Pack; pack-controller does not take over releases it did not make. Uninstall it (helm \
         uninstall {name} -n {ns}), rename the Pack, or adopt the release with `kubectl label secret \
         -n {ns} -l owner=helm,name={name} {PACK_LABEL}={name}`"
    )
}

/// Writes the status of an attempt, logs and publishes its Event, and says when to look again.
async fn report(ctx: &Context, pack: &Pack, report: status::Report) -> Result<Action, Error> {
    let event = &report.event;
    if event.warning {
        warn!(reason = event.reason, "{}", event.note);
    } else {
        info!(
            revision = report.status.revision,
            version = report.status.applied_version.as_deref(),
            "{}",
            event.note
        );
    }
    write_status(ctx, pack, &report.status).await?;
    let type_ = if event.warning {
        EventType::Warning
    } else {
        EventType::Normal
    };
    publish(ctx, pack, type_, event.reason, &event.action, &event.note).await;
    Ok(Action::requeue(match report.retry {
        Retry::Resync => jitter(ctx.resync),
        Retry::After(d) => d,
    }))
}

/// Deletion: uninstalls the release this Pack made (a release of its name that it did not make is left
/// in place), then lets the finalizer go.
async fn cleanup(pack: &Pack, ctx: &Context) -> Result<Cleanup, Error> {
    let name = pack.name_any();
    let record = release::read(&ctx.client, &namespace(pack), &name).await?;
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
            if let Some(wait) = dependents_first(ctx, pack).await? {
                return Ok(Cleanup::Wait(wait));
            }
            if let Some(wait) = uninstall(ctx, pack).await? {
                debug!(?wait, "backing off after a failed uninstall");
                return Ok(Cleanup::Wait(Action::requeue(wait)));
            }
        }
    }
    ctx.states.set(&state_key(pack), None);
    ctx.written.forget(&state_key(pack));
    Ok(Cleanup::Done(Action::await_change()))
}

/// Deletion order of `spec.dependsOn`: while Packs that depend on `pack` are being deleted too, its
/// release waits (`WaitingForDependents`; their removal wakes it). Read from the controller's Pack cache:
/// no request.
async fn dependents_first(ctx: &Context, pack: &Pack) -> Result<Option<Action>, Error> {
    // The cached Packs as they are (shared, not copied: they hold their values).
    let packs = ctx.packs.state();
    let dependents = depends::deleting_dependents(
        &namespace(pack),
        &pack.name_any(),
        &packs,
        ctx.allow_cross_namespace_dependencies,
    );
    if dependents.is_empty() {
        // Dependents that stay do not hold it, but a batch delete (`kubectl delete -f`) may be marking
        // them right now: give it DELETION_SETTLE from this Pack's own deletion to arrive.
        let settling = pack
            .metadata
            .deletion_timestamp
            .as_ref()
            .and_then(|at| {
                let since = k8s_openapi::jiff::Timestamp::now().duration_since(at.0);
                DELETION_SETTLE.checked_sub(Duration::try_from(since).ok()?)
            })
            .filter(|left| !left.is_zero());
        let has_dependents = depends::has_dependents(
            &namespace(pack),
            &pack.name_any(),
            &packs,
            ctx.allow_cross_namespace_dependencies,
        );
        return Ok(settling.filter(|_| has_dependents).map(Action::requeue));
    }
    let next =
        status::waiting_for_dependents(status::base(pack), &dependents, pack.metadata.generation);
    let was = pack
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .map(|c| c.reason.clone());
    write_status(ctx, pack, &next).await?;
    if was.as_deref() != Some(status::WAITING_FOR_DEPENDENTS) {
        let note = format!(
            "uninstalling after the Packs that depend on it: {}",
            dependents.join(", ")
        );
        info!("{note}");
        publish(
            ctx,
            pack,
            EventType::Normal,
            status::WAITING_FOR_DEPENDENTS,
            "Uninstall",
            &note,
        )
        .await;
    }
    Ok(Some(Action::requeue(jitter(ctx.resync))))
}

/// Runs `helm uninstall` for the Pack's release, unless a failed one is still in its backoff (then how
/// long to wait). A failure is reported on the Pack and returned as [`Error::Uninstall`] with its retry.
async fn uninstall(ctx: &Context, pack: &Pack) -> Result<Option<Duration>, Error> {
    let (ns, name) = (namespace(pack), pack.name_any());
    let generation = pack.metadata.generation;
    // Every status write wakes the Pack again at once, and the cached Pack can lag behind the last
    // write: the retry of a failed uninstall is decided on the stored status.
    let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &ns);
    let stored = api.get(&name).await?;
    let current = status::base(&stored);
    if let Some(wait) = plan::uninstall_wait(&current, status::since_last_attempt(&current)) {
        return Ok(Some(wait));
    }
    let identity = Identity::of(&stored, ctx.default_service_account.as_deref());
    if missing_service_account(ctx, &stored, identity.as_ref())
        .await?
        .is_some()
    {
        // Never uninstall with more rights than the Pack had: wait for its ServiceAccount.
        return Ok(Some(ctx.resync));
    }
    let mut next = current;
    if next.state != Some(PackState::RemoveFailed) {
        next = status::removing(next, generation);
        write_status(ctx, &stored, &next).await?;
    }
    // A release left pending-* (or `uninstalling`) by an interrupted Helm is uninstalled as it is:
    // `helm uninstall` accepts it, so no repair is needed (nor can a failed one block this).
    let started = Instant::now();
    let result = ctx
        .helm
        .uninstall(
            &ns,
            &name,
            identity.as_ref().map(Identity::username).as_deref(),
            &uninstall_redact(ctx, &stored).await,
            &ctx.stop,
        )
        .await;
    match result {
        Ok(()) => {
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
            Ok(None)
        }
        Err(HelmError::Cancelled) => Err(Error::Cancelled),
        Err(e) => Err(uninstall_failed(ctx, pack, &stored, next, e, started.elapsed()).await?),
    }
}

/// Reports a failed `helm uninstall` on the Pack (status with the next try, one Event series per error)
/// and returns it as [`Error::Uninstall`] with its retry.
async fn uninstall_failed(
    ctx: &Context,
    pack: &Pack,
    stored: &Pack,
    mut next: PackStatus,
    e: HelmError,
    took: Duration,
) -> Result<Error, Error> {
    let version = next.applied_version.clone();
    status::push_history(
        &mut next,
        status::attempt(
            "Uninstall",
            version.as_deref(),
            None,
            Err(e.to_string()),
            took,
        ),
    );
    next = status::remove_failed(next, &e.to_string(), stored.metadata.generation);
    let retry = plan::backoff(next.failures.unwrap_or(1));
    let message = conditions::find(&next.conditions, conditions::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    warn!("{message}");
    write_status(ctx, stored, &next).await?;
    publish(
        ctx,
        pack,
        EventType::Warning,
        status::UNINSTALL_FAILED,
        "Uninstall",
        // Without the retry time the message has: one error, one Event series.
        &status::remove_failed_note(&e.to_string()),
    )
    .await;
    Ok(Error::Uninstall { source: e, retry })
}

/// Reads the objects `spec.valuesFrom` names (one GET each, in list order; nothing is cached, and each
/// object is dropped once its key is merged) and merges them ([`values_from`]). The inner error is the
/// Pack's (a missing object, content that is not values, too large); the outer one the API's. `lenient`:
/// every entry counts as optional and a bad one is skipped (for blanking only).
async fn read_values_from(
    ctx: &Context,
    pack: &Pack,
    lenient: bool,
) -> Result<Result<ValuesFrom, ValuesFromError>, Error> {
    Ok(offline::read_values_from(&ctx.client, pack, ctx.max_values_bytes, lenient).await?)
}

/// The strings to blank out of Helm's messages at uninstall: those of the Pack's Secrets as they are now
/// (as written and with vars applied). Best effort: what cannot be read is not blanked.
async fn uninstall_redact(ctx: &Context, pack: &Pack) -> Vec<String> {
    match read_values_from(ctx, pack, true).await {
        Ok(Ok(from)) => {
            resolve::secret_forms(&pack.spec.vars, from.secret_strings, ctx.max_values_bytes)
        }
        _ => vec![],
    }
}

/// Writes the status (server-side apply on the status subresource) unless nothing changed.
async fn write_status(ctx: &Context, pack: &Pack, status: &PackStatus) -> Result<(), Error> {
    ctx.states.set(&state_key(pack), Some(status.state));
    let api: Api<Pack> = Api::namespaced(ctx.client.clone(), &namespace(pack));
    common::status::write(
        &api,
        &pack.name_any(),
        FIELD_MANAGER,
        pack.status.as_ref(),
        status,
    )
    .await?;
    ctx.written.record(&state_key(pack), &Some(status));
    Ok(())
}

/// A Warning Event when the reason a Pack cannot be resolved changes.
async fn announce_resolve_failure(ctx: &Context, pack: &Pack, e: &ResolveError) {
    let old = pack
        .status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY));
    let new_reason = old.map(|c| c.reason.as_str()) != Some(e.reason());
    // A valuesFrom entry names its object: another missing object is news too.
    let new_source = matches!(e, ResolveError::ValuesFrom(_))
        && old.map(|c| c.message.as_str()) != Some(e.to_string().as_str());
    if new_reason || new_source {
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

pub(crate) async fn publish(
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

/// Retries a failed reconcile: after the delay its error carries (decided from the Pack's status, which
/// survives restarts), or with a backoff per Pack. Waits are not errors: they never get here.
pub(crate) fn error_policy(pack: Arc<Pack>, error: &Error, ctx: Arc<Context>) -> Action {
    if matches!(error, Error::Cancelled) {
        return Action::await_change();
    }
    ctx.metrics.failure(error.reason());
    if let Some(retry) = error.retry_after() {
        return Action::requeue(retry);
    }
    let mut errors = lock(&ctx.errors);
    let n = errors
        .entry(ObjectRef::from_obj(pack.as_ref()))
        .or_insert(0);
    *n = n.saturating_add(1);
    let delay = jitter(plan::backoff(*n));
    warn!(%error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests;
