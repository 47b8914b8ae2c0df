//! The SecretReflector reconcile loop: thin API glue around [`crate::targets`], [`crate::copy`] and
//! [`crate::status`].
//!
//! Watches, chosen so that memory does not grow with the Secrets of the cluster:
//! - SecretReflectors (the Controller's cache);
//! - managed copies only, by label selector ([`MANAGED_LABEL`]), full objects without managedFields:
//!   they are compared with the desired copy to restore hand edits;
//! - every Secret as metadata only and cached nowhere: an event on a source wakes its reflectors, an
//!   event on a Secret of some reflector's target name wakes that reflector (a conflict may be gone);
//! - Namespaces, metadata only: selectors, opt-out labels and Terminating are read from it.
//!
//! A relist of any of these watches (e.g. after the API server expired the watch with 410) wakes
//! every reflector, since events may have been missed meanwhile.
//!
//! Sources are read with one GET per reconcile. Each reconcile is also requeued after a jittered
//! resync period, a safety net should a watch event be missed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    conditions,
    crd::{SecretReflector, SecretReflectorStatus},
    events::Recorder,
    metrics::ReconcileMetrics,
    runtime::{Leading, store_synced},
};
use futures::{StreamExt, channel::mpsc};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, PostParams, Preconditions},
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{EventType, Reporter},
        finalizer::{self, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{
    copy::{self, Decision, MANAGED_LABEL, Ownership, REFLECTOR_ANNOTATION, ReflectorKey},
    metrics::ReflectorMetrics,
    status::{self, Blocked, TargetOutcome, TargetState},
    targets::{self, Claimant, NamespaceInfo, Placement, TargetPolicy},
};

const FIELD_MANAGER: &str = "reflector-controller";
/// Finalizer on every SecretReflector: its copies are deleted before it goes.
pub const FINALIZER: &str = "pack-operator.k8s.kubit.ir/reflector-cleanup";
/// Retry delay after a failed target or reconcile.
const RETRY: Duration = Duration::from_secs(10);

/// Errors of a SecretReflector reconcile.
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
    /// cached object is older than the live one (or the object is already gone after its cleanup).
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

/// Tunables (from flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which namespaces may receive copies at all.
    pub policy: TargetPolicy,
    /// Reconciles at once, and writes to copies at once within one reconcile.
    pub concurrency: u16,
    /// Every reflector is reconciled again after about this long (±10 %), even without events.
    pub resync: Duration,
}

/// State shared by every reconcile.
pub struct Context {
    client: Client,
    settings: Settings,
    recorder: Recorder,
    metrics: ReflectorMetrics,
    reconciles: ReconcileMetrics,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    copies: Store<Secret>,
    /// The SecretReflectors (the Controller's cache): rivals for a target are read from it.
    reflectors: Store<SecretReflector>,
    /// Reconciles another reflector (e.g. one that may now win a target this one gave up).
    wake: Wake,
    /// Targets in Conflict per reflector, for the conflicts gauge.
    conflicts: Mutex<HashMap<ReflectorKey, usize>>,
    /// Conflict/Error targets already reported by an Event, per reflector (`namespace` → state), so a
    /// reconcile on a cached object older than our last status write does not report them again.
    reported: Mutex<HashMap<ReflectorKey, BTreeMap<String, String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of(r: &SecretReflector) -> ReflectorKey {
    ReflectorKey {
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
    }
}

fn target_name(r: &SecretReflector) -> &str {
    r.spec
        .target_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(&r.spec.source.name)
}

async fn reconcile(reflector: Arc<SecretReflector>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.reconciles.start();
    let key = key_of(&reflector);
    let span = info_span!("reconcile", reflector = %key);
    async move {
        let api: Api<SecretReflector> = Api::namespaced(ctx.client.clone(), &key.namespace);
        finalizer(&api, FINALIZER, reflector, |event| async {
            match event {
                finalizer::Event::Apply(r) => sync(&r, &ctx).await,
                finalizer::Event::Cleanup(r) => cleanup(&r, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await
}

fn error_policy(_: Arc<SecretReflector>, error: &Error, ctx: Arc<Context>) -> Action {
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

fn jittered(period: Duration) -> Action {
    let factor = 0.9 + 0.2 * rand::random::<f64>();
    Action::requeue(period.mul_f64(factor))
}

/// Copies of `key` in the cache (the label-selected watch), whatever their namespace or name.
fn copies_of(ctx: &Context, key: &ReflectorKey) -> Vec<Arc<Secret>> {
    ctx.copies
        .state()
        .into_iter()
        .filter(|s| copy::ownership(&s.metadata, key) == Ownership::Ours)
        .collect()
}

fn namespaces(ctx: &Context) -> BTreeMap<String, NamespaceInfo> {
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
                    terminating: ns.metadata.deletion_timestamp.is_some(),
                },
            )
        })
        .collect()
}

/// What happened at one target, for status, Events and metrics.
struct Applied {
    outcome: TargetOutcome,
    /// `created`, `updated`, `replaced`, or none when nothing was written.
    wrote: Option<&'static str>,
}

async fn sync(reflector: &SecretReflector, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(reflector);
    let source_name = &reflector.spec.source.name;
    let target_name = target_name(reflector).to_owned();
    let source = Api::<Secret>::namespaced(ctx.client.clone(), &key.namespace)
        .get_opt(source_name)
        .await?;
    let all_namespaces = namespaces(ctx);

    let mut blocked = None;
    let mut applied: Vec<Applied> = Vec::new();
    // Namespaces where a copy of ours may stay (named `target_name`).
    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut delete_stale = true;
    let unsupported = source.as_ref().and_then(copy::unsupported);
    match (source, unsupported) {
        (None, _) => {
            // Decision: copies follow their source; a deleted source takes its copies with it.
            blocked = Some(Blocked::SourceNotFound(format!(
                "Secret {}/{source_name} not found; copies are removed until it exists again",
                key.namespace
            )));
        }
        // Decision: a source that another controller would fight over in every target namespace is
        // refused, and copies made before are removed (as for a deleted source).
        (Some(_), Some(why)) => blocked = Some(Blocked::SourceTypeUnsupported(why)),
        (Some(source), None) => match targets::plan(
            &reflector.spec.targets,
            &key.namespace,
            source_name,
            &target_name,
            &all_namespaces,
            &ctx.settings.policy,
        ) {
            Err(e) => {
                // Leave existing copies alone until the spec is fixed.
                delete_stale = false;
                blocked = Some(Blocked::InvalidSpec(e.to_string()));
            }
            Ok(plan) => {
                // Targets an older SecretReflector claims too: never written here. A copy of ours
                // already there stays (kept below) until the winner takes it over, so the target
                // namespace never goes without one.
                let lost = targets::lost(
                    &claimant(reflector),
                    &plan,
                    &rivals(ctx, reflector, &target_name, &all_namespaces),
                );
                let (source, key_ref, name, lost) = (&source, &key, target_name.as_str(), &lost);
                let items: Vec<(String, Placement)> =
                    plan.iter().map(|(n, p)| (n.clone(), p.clone())).collect();
                applied = futures::stream::iter(items)
                    .map(|(ns, placement)| async move {
                        match (placement, lost.get(&ns)) {
                            (Placement::Copy, None) => {
                                apply_target(ctx, key_ref, source, &ns, name).await
                            }
                            (Placement::Copy, Some(winner)) => {
                                ctx.metrics.reflection("conflict");
                                Applied {
                                    outcome: yielded(&ns, name, winner),
                                    wrote: None,
                                }
                            }
                            (other, _) => Applied {
                                outcome: refused(&ns, &other, name),
                                wrote: None,
                            },
                        }
                    })
                    .buffer_unordered(ctx.settings.concurrency.into())
                    .collect()
                    .await;
                keep = plan
                    .iter()
                    .filter(|(_, p)| **p == Placement::Copy)
                    .map(|(ns, _)| ns.clone())
                    .collect();
            }
        },
    }

    let mut deleted = 0;
    let mut delete_errors = 0;
    if delete_stale {
        for stale in copies_of(ctx, &key) {
            let ns = stale.namespace().unwrap_or_default();
            let terminating = all_namespaces.get(&ns).is_some_and(|n| n.terminating);
            if terminating || (keep.contains(&ns) && stale.name_any() == target_name) {
                continue;
            }
            match delete_copy(ctx, &stale, &key).await {
                Ok(true) => deleted += 1,
                Ok(false) => {}
                Err(e) => {
                    delete_errors += 1;
                    warn!(namespace = %ns, error = %e, "cannot delete a copy no longer wanted");
                }
            }
        }
    }

    let outcomes: Vec<TargetOutcome> = applied.iter().map(|a| a.outcome.clone()).collect();
    let old = reflector.status.clone().unwrap_or_default();
    let new = status::build(
        &old,
        reflector.meta().generation,
        blocked.as_ref(),
        &outcomes,
    );
    let conflicts = outcomes
        .iter()
        .filter(|o| o.state == TargetState::Conflict)
        .count();
    count_conflicts(ctx, &key, Some(conflicts));
    let mut written: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &applied {
        if let Some(w) = a.wrote {
            *written.entry(w).or_default() += 1;
        }
    }
    if deleted > 0 {
        written.insert("deleted", deleted);
    }
    report(ctx, reflector, &old, &new, &written).await;
    write_status(ctx, reflector, &old, new).await?;
    if reflector.meta().generation != old.observed_generation {
        // Its targets may have changed: a target it gave up may go to a reflector that lost it.
        wake_conflicted(ctx, &key);
    }

    let failed = outcomes
        .iter()
        .filter(|o| o.state == TargetState::Error)
        .count()
        + delete_errors;
    Ok(if failed > 0 {
        Action::requeue(RETRY)
    } else {
        jittered(ctx.settings.resync)
    })
}

fn claimant(r: &SecretReflector) -> Claimant {
    Claimant {
        reflector: key_of(r),
        created: r.metadata.creation_timestamp.clone(),
    }
}

/// The other SecretReflectors of the cache with the same target name (not being deleted), each with
/// the namespaces it would copy into.
fn rivals(
    ctx: &Context,
    reflector: &SecretReflector,
    target_name: &str,
    namespaces: &BTreeMap<String, NamespaceInfo>,
) -> Vec<(Claimant, BTreeMap<String, Placement>)> {
    let me = key_of(reflector);
    ctx.reflectors
        .state()
        .iter()
        .filter(|r| {
            r.metadata.deletion_timestamp.is_none()
                && self::target_name(r) == target_name
                && key_of(r) != me
        })
        .filter_map(|r| {
            let plan = targets::plan(
                &r.spec.targets,
                &r.namespace().unwrap_or_default(),
                &r.spec.source.name,
                target_name,
                namespaces,
                &ctx.settings.policy,
            )
            .ok()?;
            Some((claimant(r), plan))
        })
        .collect()
}

/// A target an older SecretReflector (`winner`) claims too.
fn yielded(ns: &str, target_name: &str, winner: &ReflectorKey) -> TargetOutcome {
    TargetOutcome {
        namespace: ns.to_owned(),
        state: TargetState::Conflict,
        message: Some(format!(
            "SecretReflector {winner} also copies into {ns}/{target_name} and holds it (the oldest \
             SecretReflector claiming a target wins); not written by this one"
        )),
    }
}

/// Records the targets in Conflict of `key` (None: it is going) and sets the gauge.
fn count_conflicts(ctx: &Context, key: &ReflectorKey, conflicts: Option<usize>) {
    let mut all = lock(&ctx.conflicts);
    match conflicts {
        Some(n) => all.insert(key.clone(), n),
        None => all.remove(key),
    };
    ctx.metrics
        .conflicts
        .set(all.values().sum::<usize>() as i64);
}

/// Forgets the conflicts and reported targets of reflectors no longer in the cache (e.g. deleted
/// without their cleanup, their finalizer removed by hand), and sets the conflicts gauge. Run by the
/// orphan sweep, once per resync: a reflector that goes through its cleanup is forgotten there.
fn forget_gone(ctx: &Context) {
    let mut all = lock(&ctx.conflicts);
    all.retain(|k, _| cached(ctx, k));
    ctx.metrics
        .conflicts
        .set(all.values().sum::<usize>() as i64);
    drop(all);
    lock(&ctx.reported).retain(|k, _| cached(ctx, k));
}

fn cached(ctx: &Context, key: &ReflectorKey) -> bool {
    ctx.reflectors
        .get(&ObjectRef::new(&key.name).within(&key.namespace))
        .is_some()
}

/// Wakes the other reflectors that report a Conflict: one may now win a target `key` gave up.
fn wake_conflicted(ctx: &Context, key: &ReflectorKey) {
    for r in ctx.reflectors.state() {
        let conflicted = r.status.as_ref().is_some_and(|s| {
            s.targets
                .iter()
                .any(|t| t.state == TargetState::Conflict.as_str())
        });
        if conflicted && key_of(&r) != *key {
            let _ = ctx.wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
        }
    }
}

fn refused(ns: &str, placement: &Placement, target_name: &str) -> TargetOutcome {
    let (state, message) = match placement {
        Placement::NamespaceNotFound => (
            TargetState::NamespaceNotFound,
            "namespace does not exist; the copy is made when it is created".to_owned(),
        ),
        Placement::OptedOut => (
            TargetState::OptedOut,
            format!("namespace is labelled {}=false", targets::ACCEPT_LABEL),
        ),
        Placement::Denied => (
            TargetState::Denied,
            "the controller's --allow/--deny-target-namespaces refuse this namespace".to_owned(),
        ),
        Placement::IsSource | Placement::Copy => (
            TargetState::Conflict,
            format!("the copy {ns}/{target_name} would be the source itself"),
        ),
    };
    TargetOutcome {
        namespace: ns.to_owned(),
        state,
        message: Some(message),
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Makes the copy at `ns/name` match the source, unless a Secret there is not ours.
async fn apply_target(
    ctx: &Context,
    key: &ReflectorKey,
    source: &Secret,
    ns: &str,
    name: &str,
) -> Applied {
    let want = copy::desired(source, key, ns, name);
    let cached = ctx.copies.get(&ObjectRef::new(name).within(ns));
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
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

async fn write_target(
    ctx: &Context,
    api: &Api<Secret>,
    cached: Option<&Secret>,
    want: &Secret,
    key: &ReflectorKey,
) -> Result<Written, kube::Error> {
    let name = want.metadata.name.as_deref().unwrap_or_default();
    let mut existing = cached.cloned();
    // The cache may lag behind our own last write, or miss a Secret outside the label watch (foreign,
    // or our label removed): when the API server says so (409), read the live Secret and decide again,
    // once.
    for attempt in 0..2 {
        match write_once(ctx, api, existing.as_ref(), want, key).await {
            Err(kube::Error::Api(s)) if attempt == 0 && s.code == 409 => {
                debug!(namespace = ?want.metadata.namespace, reason = %s.reason, "cache behind the API server; reading the live Secret");
                existing = api.get_opt(name).await?;
            }
            other => return other,
        }
    }
    unreachable!("the second attempt always returns")
}

async fn write_once(
    ctx: &Context,
    api: &Api<Secret>,
    existing: Option<&Secret>,
    want: &Secret,
    key: &ReflectorKey,
) -> Result<Written, kube::Error> {
    let previous = existing.map(|e| copy::ownership(&e.metadata, key));
    let take_over = match &previous {
        Some(Ownership::OtherReflector(owner)) => gives_way(ctx, owner).await,
        _ => false,
    };
    let decision = copy::decide(existing, want, key, take_over);
    if take_over && matches!(decision, Decision::Update | Decision::Replace) {
        info!(namespace = ?want.metadata.namespace, previous = ?previous, "taking over the copy of a SecretReflector that gives way");
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
            // Optimistic concurrency: fails if the Secret changed since it was read (and checked).
            next.metadata.resource_version = existing.metadata.resource_version.clone();
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

/// Whether the SecretReflector `owner` named in a copy's marker gives way to this one, at a target this
/// one won (only those are written): it is in the cache, so it lost the target or no longer claims
/// it; or the API server says it does not exist. One outside the cache that exists (another
/// controller's scope), or that cannot be checked, keeps its copy: a Conflict.
async fn gives_way(ctx: &Context, owner: &str) -> bool {
    let Some(owner) = ReflectorKey::parse(owner) else {
        return false;
    };
    if cached(ctx, &owner) {
        return true;
    }
    match Api::<SecretReflector>::namespaced(ctx.client.clone(), &owner.namespace)
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

/// Deletes exactly the Secret that was checked: same uid, same resourceVersion.
async fn delete_checked(api: &Api<Secret>, secret: &Secret) -> Result<(), kube::Error> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
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
async fn delete_copy(
    ctx: &Context,
    secret: &Secret,
    key: &ReflectorKey,
) -> Result<bool, kube::Error> {
    if copy::ownership(&secret.metadata, key) != Ownership::Ours {
        return Ok(false);
    }
    let ns = secret.namespace().unwrap_or_default();
    let api = Api::namespaced(ctx.client.clone(), &ns);
    match delete_checked(&api, secret).await {
        // Changed since it was cached: check the live Secret's marker, then delete exactly that one.
        Err(kube::Error::Api(s)) if s.code == 409 => match api.get_opt(&secret.name_any()).await? {
            Some(live) if copy::ownership(&live.metadata, key) == Ownership::Ours => {
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

/// The SecretReflector is being deleted: delete every copy it made, found by label on the API server
/// (not from memory), then let the finalizer go.
async fn cleanup(reflector: &SecretReflector, ctx: &Context) -> Result<Action, Error> {
    let key = key_of(reflector);
    let all: Api<Secret> = Api::all(ctx.client.clone());
    let listed = all
        .list(&ListParams::default().labels(&format!("{MANAGED_LABEL}={}", key.namespace)))
        .await?;
    let mut deleted = 0;
    let mut failed = 0;
    for secret in listed
        .items
        .iter()
        .filter(|s| copy::ownership(&s.metadata, &key) == Ownership::Ours)
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
    info!(deleted, "SecretReflector deleted; its copies are removed");
    publish(
        ctx,
        &reflector.object_ref(&()),
        EventType::Normal,
        "CopiesDeleted",
        format!("deleted {deleted} copies before the SecretReflector goes"),
    )
    .await;
    Ok(Action::await_change())
}

async fn publish(
    ctx: &Context,
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
async fn report(
    ctx: &Context,
    reflector: &SecretReflector,
    old: &SecretReflectorStatus,
    new: &SecretReflectorStatus,
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
    let ready = |s: &SecretReflectorStatus| {
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

/// Writes the status (server-side apply on the status subresource) unless nothing changed.
async fn write_status(
    ctx: &Context,
    reflector: &SecretReflector,
    old: &SecretReflectorStatus,
    new: SecretReflectorStatus,
) -> Result<(), Error> {
    if *old == new {
        return Ok(());
    }
    let api: Api<SecretReflector> = Api::namespaced(
        ctx.client.clone(),
        &reflector.namespace().unwrap_or_default(),
    );
    common::status::apply(&api, &reflector.name_any(), FIELD_MANAGER, &new).await?;
    Ok(())
}

/// Reflectors that an event on Secret `ns/name` concerns: those whose source it is, and those whose
/// target name it has (a conflicting Secret may have gone, or a copy of theirs changed).
fn concerned(
    reflectors: &Store<SecretReflector>,
    ns: &str,
    name: &str,
    owner: Option<&str>,
) -> Vec<ObjectRef<SecretReflector>> {
    reflectors
        .state()
        .iter()
        .filter(|r| {
            let k = key_of(r);
            (k.namespace == ns && r.spec.source.name == name)
                || target_name(r) == name
                || owner == Some(k.to_string().as_str())
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

type Wake = mpsc::UnboundedSender<ObjectRef<SecretReflector>>;

/// After a (re)list: events may have been missed meanwhile, so every reflector is reconciled.
fn wake_all(reflectors: &Store<SecretReflector>, wake: &Wake) {
    for r in reflectors.state() {
        let _ = wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
    }
}

/// Copies in the cache that carry our marker annotation; a Secret that only forged the label is not
/// one.
fn managed(copies: &Store<Secret>) -> i64 {
    copies
        .state()
        .iter()
        .filter(|s| s.annotations().contains_key(REFLECTOR_ANNOTATION))
        .count() as i64
}

/// Whether the label-selected copy watch sees a Secret with these labels too, so the metadata watch
/// can leave it to that one: it carries the managed label with this controller's own value (any value
/// without `--namespace`). A copy made for another namespace's reflectors may be the source of one
/// of ours, and must still be seen.
fn seen_by_copy_watch(labels: &BTreeMap<String, String>, scope: Option<&str>) -> bool {
    match (labels.get(MANAGED_LABEL), scope) {
        (Some(value), Some(namespace)) => value == namespace,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Managed copies (label-selected, cached without managedFields): any change wakes their reflector.
async fn watch_copies(
    api: Api<Secret>,
    selector: String,
    writer: reflector::store::Writer<Secret>,
    store: Store<Secret>,
    reflectors: Store<SecretReflector>,
    metrics: ReflectorMetrics,
    wake: Wake,
) {
    let mut events = watcher(
        api,
        watcher::Config::default().labels(&selector).any_semantic(),
    )
    .default_backoff()
    .modify(|s: &mut Secret| {
        s.managed_fields_mut().clear();
    })
    .reflect(writer)
    .boxed();
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
            Ok(watcher::Event::InitDone) => {
                metrics.copies_managed.set(managed(&store));
                wake_all(&reflectors, &wake);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "copy watch error (retrying)");
                continue;
            }
        };
        metrics.copies_managed.set(managed(&store));
        let owner = obj
            .annotations()
            .get(REFLECTOR_ANNOTATION)
            .map(String::as_str);
        let ns = obj.namespace().unwrap_or_default();
        for r in concerned(&reflectors, &ns, &obj.name_any(), owner) {
            let _ = wake.unbounded_send(r);
        }
    }
}

/// Every Secret, metadata only and cached nowhere: wakes reflectors whose source or target name it is.
async fn watch_secrets(
    api: Api<PartialObjectMeta<Secret>>,
    scope: Option<String>,
    reflectors: Store<SecretReflector>,
    wake: Wake,
) {
    let mut events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
            Ok(watcher::Event::InitDone) => {
                wake_all(&reflectors, &wake);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "secret watch error (retrying)");
                continue;
            }
        };
        if seen_by_copy_watch(obj.labels(), scope.as_deref()) {
            continue; // the copy watch has it
        }
        let ns = obj.namespace().unwrap_or_default();
        for r in concerned(&reflectors, &ns, &obj.name_any(), None) {
            let _ = wake.unbounded_send(r);
        }
    }
}

/// Namespaces, metadata only: a new, relabelled or deleted namespace wakes the reflectors that name
/// it or select by label; a relist wakes every reflector.
async fn watch_namespaces(
    api: Api<PartialObjectMeta<Namespace>>,
    writer: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    reflectors: Store<SecretReflector>,
    wake: Wake,
) {
    let mut events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|ns: &mut PartialObjectMeta<Namespace>| {
            ns.managed_fields_mut().clear();
            ns.annotations_mut().clear();
        })
        .reflect(writer)
        .boxed();
    while let Some(event) = events.next().await {
        let name = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => Some(o.name_any()),
            Ok(watcher::Event::InitDone) => None,
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "namespace watch error (retrying)");
                continue;
            }
        };
        for r in reflectors.state() {
            let concerned = match &name {
                None => true,
                Some(n) => {
                    r.spec.targets.namespace_selector.is_some()
                        || r.spec.targets.namespaces.contains(n)
                }
            };
            if concerned {
                let _ = wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
            }
        }
    }
}

/// Deletes copies whose SecretReflector no longer exists: its finalizer was removed by hand, or it went
/// while no controller ran, so its cleanup never happened. Runs once every cache is complete, then
/// every resync period. A copy is judged by its marker, and its reflector's absence is confirmed by a
/// GET on the API server (not the cache) before the copy is deleted (uid + resourceVersion checked).
async fn sweep_orphans(ctx: Arc<Context>, reflectors: Store<SecretReflector>) {
    loop {
        if store_synced(&reflectors).await {
            let live: BTreeSet<String> = reflectors
                .state()
                .iter()
                .map(|r| key_of(r).to_string())
                .collect();
            for secret in ctx.copies.state() {
                let Some(key) = secret
                    .annotations()
                    .get(REFLECTOR_ANNOTATION)
                    .filter(|owner| !live.contains(owner.as_str()))
                    .and_then(|owner| ReflectorKey::parse(owner))
                else {
                    continue;
                };
                let api: Api<SecretReflector> = Api::namespaced(ctx.client.clone(), &key.namespace);
                match api.get_opt(&key.name).await {
                    Ok(None) => match delete_copy(&ctx, &secret, &key).await {
                        Ok(true) => info!(
                            namespace = %secret.namespace().unwrap_or_default(),
                            name = %secret.name_any(),
                            reflector = %key,
                            "deleted a copy whose SecretReflector no longer exists"
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            warn!(reflector = %key, error = %e, "cannot delete an orphaned copy")
                        }
                    },
                    Ok(Some(_)) => {}
                    Err(e) => {
                        debug!(reflector = %key, error = %e, "cannot check a copy's reflector")
                    }
                }
            }
            // Reflectors gone without their cleanup leave no conflicts or reported targets behind.
            forget_gone(&ctx);
        }
        tokio::time::sleep(ctx.settings.resync).await;
    }
}

/// Runs the SecretReflector controller until `leading.stop` is cancelled. With `namespace`, only the
/// SecretReflectors of that namespace (and their copies) are handled; targets may be anywhere.
pub async fn run(
    leading: Leading,
    namespace: Option<String>,
    settings: Settings,
    metrics: ReflectorMetrics,
    reconciles: ReconcileMetrics,
) {
    let client = leading.client.clone();
    let reflectors: Api<SecretReflector> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (wake, woken) = mpsc::unbounded();
    let controller = Controller::new(reflectors, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .reconcile_on(woken);
    let reflector_store = controller.store();

    let (namespaces, ns_writer) = reflector::store();
    let (copies, copy_writer) = reflector::store();
    let selector = match &namespace {
        Some(ns) => format!("{MANAGED_LABEL}={ns}"),
        None => MANAGED_LABEL.to_owned(),
    };
    let watches = futures::future::join3(
        watch_namespaces(
            Api::all(client.clone()),
            ns_writer,
            reflector_store.clone(),
            wake.clone(),
        ),
        watch_copies(
            Api::all(client.clone()),
            selector,
            copy_writer,
            copies.clone(),
            reflector_store.clone(),
            metrics.clone(),
            wake.clone(),
        ),
        watch_secrets(
            Api::all(client.clone()),
            namespace.clone(),
            reflector_store.clone(),
            wake.clone(),
        ),
    );

    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "reflector-controller".into());
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity),
            },
        ),
        metrics,
        reconciles,
        namespaces: namespaces.clone(),
        copies: copies.clone(),
        reflectors: reflector_store.clone(),
        wake,
        conflicts: Mutex::default(),
        reported: Mutex::default(),
    });

    // Ready once every cache is complete.
    {
        let (r, n, c) = (reflector_store.clone(), namespaces.clone(), copies.clone());
        common::runtime::report_sync_when(
            async move { store_synced(&r).await && store_synced(&n).await && store_synced(&c).await },
            leading.health.clone(),
        );
    }
    let stop = leading.stop.clone();
    let reconciling = async move {
        // Never plan from an incomplete cache: a namespace or copy not yet listed would look absent,
        // and its copy would be created twice or deleted.
        if !(store_synced(&namespaces).await && store_synced(&copies).await) {
            return;
        }
        let sweeping = sweep_orphans(ctx.clone(), reflector_store);
        let running = controller
            .graceful_shutdown_on(stop.clone().cancelled_owned())
            .run(reconcile, error_policy, ctx)
            .for_each(|_| std::future::ready(()));
        tokio::select! {
            _ = running => {}
            _ = sweeping => {}
        }
    };
    tokio::select! {
        _ = reconciling => {}
        _ = watches => {}
        _ = leading.stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_watch_leaves_to_the_copy_watch_only_what_it_sees() {
        let labels = |value: Option<&str>| -> BTreeMap<String, String> {
            value
                .map(|v| BTreeMap::from([(MANAGED_LABEL.to_owned(), v.to_owned())]))
                .unwrap_or_default()
        };
        let cases = [
            (None, Some("certs"), false, "not a copy"),
            (
                Some("certs"),
                Some("certs"),
                true,
                "a copy of our reflectors",
            ),
            (
                Some("other"),
                Some("certs"),
                false,
                "a copy for another namespace's reflectors: maybe a chained source",
            ),
            (
                Some("other"),
                None,
                true,
                "without --namespace the copy watch sees all",
            ),
            (None, None, false, "not a copy, all namespaces"),
        ];
        for (value, scope, seen, what) in cases {
            assert_eq!(seen_by_copy_watch(&labels(value), scope), seen, "{what}");
        }
    }
}
