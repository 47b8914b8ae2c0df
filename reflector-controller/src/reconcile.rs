//! What one reconcile of a reflector (of any [`Reflected`] kind) does: behind the finalizer, either a sync (decide → execute →
//! report) or the cleanup of its copies. [`crate::intent`] decides, the functions here execute (the
//! writes and deletes of copies, each target's outcome returned as data) and report ([`crate::status`]
//! builds the status, Events tell what changed). What wakes a reconcile is [`crate::controller`]'s.
//!
//! Sources are read with one GET per reconcile; copies, namespaces and rival reflectors from the
//! controller's caches.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    conditions,
    crd::ReflectorStatus,
    events::Recorder,
    finalizer::{self, Cleanup},
    metrics::ReconcileMetrics,
    requeue::jitter,
    sync::lock,
};
use futures::{StreamExt, channel::mpsc};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams, Preconditions},
    core::PartialObjectMeta,
    core::object::HasStatus,
    runtime::{
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
    },
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    controller::Settings,
    copy::{self, Decision, MANAGED_LABEL, Ownership, ReflectorKey},
    intent::{self, Intent, SyncPlan, key_of, target_name},
    kind::Reflected,
    metrics::KindMetrics,
    status::{self, Blocked, TargetOutcome, TargetState},
    targets::{self, Claimant, NamespaceInfo, Placement, REFLECT_FROM_ANNOTATION},
};

/// The field manager of copies, status and Events.
pub(crate) const FIELD_MANAGER: &str = "reflector-controller";
/// Finalizer on every reflector (of either kind): its copies are deleted before it goes.
pub const FINALIZER: &str = "pack-operator.k8s.kubit.ir/reflector-cleanup";
/// Retry delay after a failed target or reconcile.
const RETRY: Duration = Duration::from_secs(10);

/// Errors of a reflector reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error("{0} copies could not be deleted")]
    CleanupIncomplete(usize),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "Finalizer",
            },
            Error::CleanupIncomplete(_) => "CleanupIncomplete",
        }
    }

    /// The finalizer patch (a JSON patch that tests the finalizer list first) was rejected because the
    /// cached object is older than the live one, or the object is already gone. (A 404 when removing
    /// the finalizer is success already in `common::finalizer`.)
    fn is_stale_read(&self) -> bool {
        matches!(
            self,
            Error::Finalizer(e) if matches!(
                e.as_ref(),
                finalizer::Error::AddFinalizer(kube::Error::Api(s))
                    | finalizer::Error::RemoveFinalizer(kube::Error::Api(s))
                    if s.code == 422 || s.code == 409 || s.code == 404
            )
        )
    }
}

/// Wakes a reflector (a reconcile beside the Controller's own triggers).
pub(crate) type Wake<R> = mpsc::UnboundedSender<ObjectRef<R>>;

/// State shared by every reconcile of the reflectors of kind `K`; built by
/// [`crate::controller::run`].
pub struct Context<K: Reflected> {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: KindMetrics,
    pub(crate) reconciles: ReconcileMetrics,
    pub(crate) namespaces: Store<PartialObjectMeta<Namespace>>,
    pub(crate) copies: Store<K>,
    /// The reflectors (the Controller's cache): rivals for a target are read from it.
    pub(crate) reflectors: Store<K::Reflector>,
    /// Reconciles another reflector (e.g. one that may now win a target this one gave up).
    pub(crate) wake: Wake<K::Reflector>,
    /// Targets in Conflict per reflector, for the conflicts gauge.
    pub(crate) conflicts: Mutex<HashMap<ReflectorKey, usize>>,
    /// Conflict/Error targets already reported by an Event, per reflector (`namespace` → state), so a
    /// reconcile on a cached object older than our last status write does not report them again.
    pub(crate) reported: Mutex<HashMap<ReflectorKey, BTreeMap<String, String>>>,
}

pub(crate) async fn reconcile<K: Reflected>(
    reflector: Arc<K::Reflector>,
    ctx: Arc<Context<K>>,
) -> Result<Action, Error> {
    let _timer = ctx.reconciles.start();
    let key = key_of(reflector.as_ref());
    let span = info_span!("reconcile", kind = K::REFLECTOR_KIND, reflector = %key);
    async move {
        let api: Api<K::Reflector> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let ctx = ctx.as_ref();
        finalizer::run(
            &api,
            FINALIZER,
            reflector,
            |r| async move { sync(r.as_ref(), ctx).await },
            |r| async move { cleanup(r.as_ref(), ctx).await },
        )
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await
}

pub(crate) fn error_policy<K: Reflected>(
    _: Arc<K::Reflector>,
    error: &Error,
    ctx: Arc<Context<K>>,
) -> Action {
    if error.is_stale_read() {
        // A wake-up ran on a cached object older than our own finalizer patch; the watch event of
        // that patch reconciles again anyway.
        debug!(%error, "reconciled a stale cached object; retrying");
        return Action::requeue(Duration::from_secs(1));
    }
    warn!(%error, "reconcile failed");
    ctx.reconciles.failure(error.reason());
    Action::requeue(RETRY)
}

/// Makes the copies match the source: reads the source, decides ([`intent::decide`]), writes and
/// deletes copies, then reports what happened (status, Events, metrics).
async fn sync<K: Reflected>(reflector: &K::Reflector, ctx: &Context<K>) -> Result<Action, Error> {
    let key = key_of(reflector);
    let spec = K::spec(reflector);
    let source = Api::<K>::namespaced(ctx.client.clone(), &key.namespace)
        .get_opt(&spec.source.name)
        .await?;
    let namespaces = namespaces(ctx);
    let plan = intent::decide::<K>(
        reflector,
        source.as_ref(),
        &namespaces,
        &ctx.settings.policy,
        || rivals(ctx, reflector, target_name(spec), &namespaces),
    );
    let outcome = execute(ctx, reflector, &plan, &namespaces).await;
    let blocked = plan.blocked().map(|b| (b, plan.blocked_targets()));
    report_sync(ctx, reflector, blocked, &outcome).await
}

/// What happened at one target, for status, Events and metrics.
struct Applied {
    outcome: TargetOutcome,
    /// `created`, `updated`, `replaced`, or none when nothing was written.
    wrote: Option<&'static str>,
}

/// What one sync did.
struct SyncOutcome {
    /// One per target of the plan.
    applied: Vec<Applied>,
    /// Copies no longer wanted, deleted / that could not be deleted.
    deleted: usize,
    delete_errors: usize,
}

impl SyncOutcome {
    /// Copies written or deleted, by what was done (`created 2`, `deleted 1`), for the Synced Event.
    fn written(&self) -> BTreeMap<&'static str, usize> {
        let mut written: BTreeMap<&str, usize> = BTreeMap::new();
        for a in &self.applied {
            if let Some(w) = a.wrote {
                *written.entry(w).or_default() += 1;
            }
        }
        if self.deleted > 0 {
            written.insert("deleted", self.deleted);
        }
        written
    }

    /// Targets that failed, and copies that could not be deleted: a retry is due.
    fn failed(&self) -> usize {
        let errors = self.applied.iter();
        errors
            .filter(|a| a.outcome.state == TargetState::Error)
            .count()
            + self.delete_errors
    }
}

/// Carries out `plan`: the copies it asks for are written (`concurrency` at once), then the copies
/// of ours it no longer wants are deleted.
async fn execute<K: Reflected>(
    ctx: &Context<K>,
    reflector: &K::Reflector,
    plan: &SyncPlan<'_, K>,
    namespaces: &BTreeMap<String, NamespaceInfo>,
) -> SyncOutcome {
    let key = key_of(reflector);
    let name = target_name(K::spec(reflector));
    let applied = match plan {
        SyncPlan::Blocked { .. } => Vec::new(),
        SyncPlan::Copy { source, targets } => {
            let key = &key;
            // Owned items: a stream of borrowed ones trips the Send check of the reconcile future.
            futures::stream::iter(targets.clone())
                .map(|(ns, intent)| async move {
                    match intent {
                        Intent::Write => apply_target(ctx, key, source, &ns, name).await,
                        Intent::Yield(winner) => {
                            ctx.metrics.reflection("conflict");
                            Applied {
                                outcome: intent::yielded::<K>(&ns, name, &winner),
                                wrote: None,
                            }
                        }
                        Intent::Refuse(placement) => Applied {
                            outcome: intent::refused(&ns, &placement, name, &key.namespace),
                            wrote: None,
                        },
                    }
                })
                .buffer_unordered(ctx.settings.concurrency.into())
                .collect()
                .await
        }
    };
    let (deleted, delete_errors) = match plan.keep() {
        Some(keep) => delete_unwanted(ctx, &key, name, &keep, namespaces).await,
        None => (0, 0),
    };
    SyncOutcome {
        applied,
        deleted,
        delete_errors,
    }
}

/// Deletes the copies of `key` outside `keep` (or not named `name`), except in terminating namespaces
/// (they go with the namespace). Returns (deleted, failed).
async fn delete_unwanted<K: Reflected>(
    ctx: &Context<K>,
    key: &ReflectorKey,
    name: &str,
    keep: &BTreeSet<String>,
    namespaces: &BTreeMap<String, NamespaceInfo>,
) -> (usize, usize) {
    let (mut deleted, mut failed) = (0, 0);
    for stale in copies_of(ctx, key) {
        let ns = stale.namespace().unwrap_or_default();
        let terminating = namespaces.get(&ns).is_some_and(|n| n.terminating);
        if terminating || (keep.contains(&ns) && stale.name_any() == name) {
            continue;
        }
        match delete_copy(ctx, &stale, key).await {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                warn!(namespace = %ns, error = %e, "cannot delete a copy no longer wanted");
            }
        }
    }
    (deleted, failed)
}

/// Reports what a sync did: the status (built by [`status::build`], written when it changed), Events,
/// the conflicts gauge; wakes the reflectors it may have made way for; and says when to look again.
async fn report_sync<K: Reflected>(
    ctx: &Context<K>,
    reflector: &K::Reflector,
    blocked: Option<(&Blocked, usize)>,
    outcome: &SyncOutcome,
) -> Result<Action, Error> {
    let key = key_of(reflector);
    let outcomes: Vec<TargetOutcome> = outcome.applied.iter().map(|a| a.outcome.clone()).collect();
    let old = reflector.status().cloned().unwrap_or_default();
    let new = status::build(&old, reflector.meta().generation, blocked, &outcomes);
    let conflicts = outcomes
        .iter()
        .filter(|o| o.state == TargetState::Conflict)
        .count();
    count_conflicts(ctx, &key, Some(conflicts));
    report(ctx, reflector, &old, &new, &outcome.written()).await;
    let api: Api<K::Reflector> = Api::namespaced(ctx.client.clone(), &key.namespace);
    common::status::write(&api, &key.name, FIELD_MANAGER, Some(&old), &new).await?;
    if reflector.meta().generation != old.observed_generation {
        // Its targets may have changed: a target it gave up may go to a reflector that lost it.
        wake_conflicted(ctx, &key);
    }
    Ok(if outcome.failed() > 0 {
        Action::requeue(RETRY)
    } else {
        Action::requeue(jitter(ctx.settings.resync))
    })
}

/// Copies of `key` in the cache (the label-selected watch), whatever their namespace or name.
fn copies_of<K: Reflected>(ctx: &Context<K>, key: &ReflectorKey) -> Vec<Arc<K>> {
    ctx.copies
        .state()
        .into_iter()
        .filter(|s| copy::ownership(s.meta(), key) == Ownership::Ours)
        .collect()
}

fn namespaces<K: Reflected>(ctx: &Context<K>) -> BTreeMap<String, NamespaceInfo> {
    ctx.namespaces
        .state()
        .iter()
        .map(|ns| {
            let name = ns.name_any();
            (
                name.clone(),
                NamespaceInfo {
                    name,
                    labels: ns.labels().clone(),
                    reflect_from: ns.annotations().get(REFLECT_FROM_ANNOTATION).cloned(),
                    terminating: ns.metadata.deletion_timestamp.is_some(),
                },
            )
        })
        .collect()
}

/// The other reflectors of the cache with the same target name (not being deleted), each with the
/// namespaces it would copy into.
fn rivals<K: Reflected>(
    ctx: &Context<K>,
    reflector: &K::Reflector,
    target_name: &str,
    namespaces: &BTreeMap<String, NamespaceInfo>,
) -> Vec<(Claimant, BTreeMap<String, Placement>)> {
    let me = key_of(reflector);
    ctx.reflectors
        .state()
        .iter()
        .filter(|r| {
            r.meta().deletion_timestamp.is_none()
                && intent::target_name(K::spec(r)) == target_name
                && key_of(r.as_ref()) != me
        })
        .filter_map(|r| {
            let spec = K::spec(r);
            let plan = targets::plan(
                &spec.targets,
                &r.namespace().unwrap_or_default(),
                &spec.source.name,
                target_name,
                namespaces,
                &ctx.settings.policy,
            )
            .ok()?;
            Some((intent::claimant(r.as_ref()), plan))
        })
        .collect()
}

/// Records the targets in Conflict of `key` (None: it is going) and sets the gauge.
fn count_conflicts<K: Reflected>(ctx: &Context<K>, key: &ReflectorKey, conflicts: Option<usize>) {
    let mut all = lock(&ctx.conflicts);
    match conflicts {
        Some(n) => all.insert(key.clone(), n),
        None => all.remove(key),
    };
    ctx.metrics
        .set_conflicts(all.values().sum::<usize>() as i64);
}

/// Forgets the conflicts and reported targets of reflectors no longer in the cache (e.g. deleted
/// without their cleanup, their finalizer removed by hand), and sets the conflicts gauge. Run by the
/// orphan sweep, once per resync: a reflector that goes through its cleanup is forgotten there.
pub(crate) fn forget_gone<K: Reflected>(ctx: &Context<K>) {
    let mut all = lock(&ctx.conflicts);
    all.retain(|k, _| cached(ctx, k));
    ctx.metrics
        .set_conflicts(all.values().sum::<usize>() as i64);
    drop(all);
    lock(&ctx.reported).retain(|k, _| cached(ctx, k));
}

fn cached<K: Reflected>(ctx: &Context<K>, key: &ReflectorKey) -> bool {
    ctx.reflectors
        .get(&ObjectRef::new(&key.name).within(&key.namespace))
        .is_some()
}

/// Wakes the other reflectors that report a Conflict: one may now win a target `key` gave up.
fn wake_conflicted<K: Reflected>(ctx: &Context<K>, key: &ReflectorKey) {
    for r in ctx.reflectors.state() {
        let conflicted = r.status().is_some_and(|s| {
            s.targets
                .iter()
                .any(|t| t.state == TargetState::Conflict.as_str())
        });
        if conflicted && key_of(r.as_ref()) != *key {
            let _ = ctx.wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Makes the copy at `ns/name` match the source, unless an object there is not ours.
async fn apply_target<K: Reflected>(
    ctx: &Context<K>,
    key: &ReflectorKey,
    source: &K,
    ns: &str,
    name: &str,
) -> Applied {
    let want = copy::desired(source, key, ns, name);
    let cached = ctx.copies.get(&ObjectRef::new(name).within(ns));
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let result = write_target(ctx, &api, cached.as_deref(), &want, key).await;
    let (state, message, wrote) = match result {
        Ok(Written::Wrote(what)) => (TargetState::Synced, None, Some(what)),
        Ok(Written::Unchanged) => (TargetState::Synced, None, None),
        Ok(Written::Conflict(message)) => (TargetState::Conflict, Some(message), None),
        Err(e) => {
            warn!(namespace = %ns, error = %e, "cannot write the copy");
            (TargetState::Error, Some(api_message(&e)), None)
        }
    };
    match (state, wrote) {
        (_, Some(what)) => ctx.metrics.reflection(what),
        (TargetState::Conflict, _) => ctx.metrics.reflection("conflict"),
        (TargetState::Error, _) => ctx.metrics.reflection("error"),
        _ => {}
    }
    Applied {
        outcome: TargetOutcome {
            namespace: ns.to_owned(),
            state,
            message,
        },
        wrote,
    }
}

/// A status/Event message for an API error: its status message only (never a request body).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}

enum Written {
    Wrote(&'static str),
    Unchanged,
    Conflict(String),
}

async fn write_target<K: Reflected>(
    ctx: &Context<K>,
    api: &Api<K>,
    cached: Option<&K>,
    want: &K,
    key: &ReflectorKey,
) -> Result<Written, kube::Error> {
    let name = want.meta().name.as_deref().unwrap_or_default();
    let mut existing = cached.cloned();
    // The cache may lag behind our own last write, or miss an object outside the label watch
    // (foreign, or our label removed): when the API server says so (409), read the live object and
    // decide again, once.
    for attempt in 0..2 {
        match write_once(ctx, api, existing.as_ref(), want, key).await {
            Err(kube::Error::Api(s)) if attempt == 0 && s.code == 409 => {
                debug!(namespace = ?want.meta().namespace, reason = %s.reason, "cache behind the API server; reading the live object");
                existing = api.get_opt(name).await?;
            }
            other => return other,
        }
    }
    unreachable!("the second attempt always returns")
}

async fn write_once<K: Reflected>(
    ctx: &Context<K>,
    api: &Api<K>,
    existing: Option<&K>,
    want: &K,
    key: &ReflectorKey,
) -> Result<Written, kube::Error> {
    let previous = existing.map(|e| copy::ownership(e.meta(), key));
    let take_over = match &previous {
        Some(Ownership::OtherReflector(owner)) => gives_way(ctx, owner).await,
        _ => false,
    };
    let decision = copy::decide(existing, want, key, take_over);
    if take_over && matches!(decision, Decision::Update | Decision::Replace) {
        info!(namespace = ?want.meta().namespace, previous = ?previous, "taking over the copy of a reflector that gives way");
    }
    match decision {
        Decision::Unchanged => Ok(Written::Unchanged),
        Decision::Conflict(message) => Ok(Written::Conflict(message)),
        Decision::Create => {
            api.create(&post_params(), want).await?;
            Ok(Written::Wrote("created"))
        }
        Decision::Update => {
            let existing = existing.cloned().unwrap_or_default();
            // Other tools' labels and annotations on the copy are kept.
            let mut next = copy::merged(&existing, want);
            // Optimistic concurrency: fails if the object changed since it was read (and checked).
            next.meta_mut().resource_version = existing.meta().resource_version.clone();
            api.replace(&existing.name_any(), &post_params(), &next)
                .await?;
            Ok(Written::Wrote("updated"))
        }
        Decision::Replace => {
            let existing = existing.cloned().unwrap_or_default();
            delete_checked(api, &existing).await?;
            api.create(&post_params(), want).await?;
            Ok(Written::Wrote("replaced"))
        }
    }
}

/// Whether the reflector `owner` named in a copy's marker gives way to this one, at a target this
/// one won (only those are written): it is in the cache, so it lost the target or no longer claims
/// it; or the API server says it does not exist. One outside the cache that exists (another
/// controller's scope), or that cannot be checked, keeps its copy: a Conflict.
async fn gives_way<K: Reflected>(ctx: &Context<K>, owner: &str) -> bool {
    let Some(owner) = ReflectorKey::parse(owner) else {
        return false;
    };
    if cached(ctx, &owner) {
        return true;
    }
    match Api::<K::Reflector>::namespaced(ctx.client.clone(), &owner.namespace)
        .get_opt(&owner.name)
        .await
    {
        Ok(found) => found.is_none(),
        Err(e) => {
            debug!(reflector = %owner, error = %e, "cannot check a copy's reflector");
            false
        }
    }
}

/// Deletes exactly the object that was checked: same uid, same resourceVersion.
async fn delete_checked<K: Reflected>(api: &Api<K>, secret: &K) -> Result<(), kube::Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.meta().uid.clone(),
            resource_version: secret.meta().resource_version.clone(),
        }),
        ..Default::default()
    };
    match api.delete(&secret.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes a copy after checking its marker names `key`; false when it turned out not to be ours (or
/// was already gone).
pub(crate) async fn delete_copy<K: Reflected>(
    ctx: &Context<K>,
    secret: &K,
    key: &ReflectorKey,
) -> Result<bool, kube::Error> {
    if copy::ownership(secret.meta(), key) != Ownership::Ours {
        return Ok(false);
    }
    let ns = secret.namespace().unwrap_or_default();
    let api = Api::namespaced(ctx.client.clone(), &ns);
    match delete_checked(&api, secret).await {
        // Changed since it was cached: check the live object's marker, then delete exactly that one.
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&secret.name_any()).await? {
            Some(live) if copy::ownership(live.meta(), key) == Ownership::Ours => {
                delete_checked(&api, &live).await?
            }
            _ => return Ok(false),
        },
        other => other?,
    }
    ctx.metrics.reflection("deleted");
    debug!(namespace = %ns, "copy deleted");
    Ok(true)
}

/// The reflector is being deleted: delete every copy it made, found by label on the API server (not
/// from memory), then let the finalizer go.
async fn cleanup<K: Reflected>(
    reflector: &K::Reflector,
    ctx: &Context<K>,
) -> Result<Cleanup, Error> {
    let key = key_of(reflector);
    let all: Api<K> = Api::all(ctx.client.clone());
    let listed = all
        .list(&ListParams::default().labels(&format!("{MANAGED_LABEL}={}", key.namespace)))
        .await?;
    let mut deleted = 0;
    let mut failed = 0;
    for secret in listed
        .items
        .iter()
        .filter(|s| copy::ownership(s.meta(), &key) == Ownership::Ours)
    {
        match delete_copy(ctx, secret, &key).await {
            Ok(true) => deleted += 1,
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                warn!(namespace = %secret.namespace().unwrap_or_default(), error = %e, "cannot delete a copy");
            }
        }
    }
    count_conflicts(ctx, &key, None);
    lock(&ctx.reported).remove(&key);
    wake_conflicted(ctx, &key);
    if failed > 0 {
        return Err(Error::CleanupIncomplete(failed));
    }
    info!(
        deleted,
        "{} deleted; its copies are removed",
        K::REFLECTOR_KIND
    );
    publish(
        ctx,
        &reflector.object_ref(&()),
        EventType::Normal,
        "CopiesDeleted",
        format!(
            "deleted {deleted} copies before the {} goes",
            K::REFLECTOR_KIND
        ),
    )
    .await;
    Ok(Cleanup::Done(Action::await_change()))
}

async fn publish<K: Reflected>(
    ctx: &Context<K>,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    common::events::publish(&ctx.recorder, reference, type_, reason, "Reflect", &note).await;
}

/// Events for what this reconcile did or newly found: writes (Synced), new conflicts (Conflict), new
/// failures (Error), and a change of a blocking reason (SourceNotFound, InvalidSpec,
/// SourceTypeUnsupported).
async fn report<K: Reflected>(
    ctx: &Context<K>,
    reflector: &K::Reflector,
    old: &ReflectorStatus,
    new: &ReflectorStatus,
    written: &BTreeMap<&str, usize>,
) {
    let reference = reflector.object_ref(&());
    let summary = new.summary.clone().unwrap_or_default();
    if !written.is_empty() {
        let what: Vec<String> = written.iter().map(|(k, n)| format!("{k} {n}")).collect();
        info!(written = %what.join(", "), %summary, "copies written");
        publish(
            ctx,
            &reference,
            EventType::Normal,
            "Synced",
            format!("copies {}; {summary} targets synced", what.join(", ")),
        )
        .await;
    }
    let key = key_of(reflector);
    let previously: BTreeMap<String, String> = {
        let mut reported = lock(&ctx.reported);
        let now: BTreeMap<String, String> = new
            .targets
            .iter()
            .filter(|t| matches!(t.state.as_str(), "Conflict" | "Error"))
            .map(|t| (t.namespace.clone(), t.state.clone()))
            .collect();
        // After a restart, what the status already shows counts as reported.
        reported.insert(key, now).unwrap_or_else(|| {
            old.targets
                .iter()
                .map(|t| (t.namespace.clone(), t.state.clone()))
                .collect()
        })
    };
    let was = |ns: &str, state: &str| previously.get(ns).map(String::as_str) == Some(state);
    for state in [TargetState::Conflict, TargetState::Error] {
        let fresh: Vec<String> = new
            .targets
            .iter()
            .filter(|t| t.state == state.as_str() && !was(&t.namespace, state.as_str()))
            .map(|t| {
                format!(
                    "{}: {}",
                    t.namespace,
                    t.message.as_deref().unwrap_or_default()
                )
            })
            .collect();
        if !fresh.is_empty() {
            warn!(state = state.as_str(), targets = %fresh.join("; "), "targets not synced");
            publish(
                ctx,
                &reference,
                EventType::Warning,
                state.as_str(),
                fresh.join("; "),
            )
            .await;
        }
    }
    let ready = |s: &ReflectorStatus| {
        conditions::find(&s.conditions, conditions::READY)
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    if let Some((reason, message)) = ready(new)
        && matches!(
            reason.as_str(),
            "SourceNotFound" | "InvalidSpec" | "SourceTypeUnsupported"
        )
        && ready(old).map(|(r, _)| r) != Some(reason.clone())
    {
        publish(ctx, &reference, EventType::Warning, &reason, message).await;
    }
}

#[cfg(test)]
mod tests;
