//! How a Pack's status changes with each outcome. Pure functions over `PackStatus`; the reconcile writes
//! the result with server-side apply.

use common::{
    conditions,
    crd::{
        Pack, PackStatus,
        pack::{PackAttempt, PackState, ValuesSourceVersion},
    },
};
use k8s_openapi::jiff::Timestamp;

use crate::{
    plan::{self, Outcome, ReleaseDigest, RollbackOutcome},
    resolve::{Resolution, ResolveError},
};

/// Entries kept in `status.history`.
pub const HISTORY: usize = 5;
/// Longest message kept in a history entry.
const HISTORY_MESSAGE: usize = 256;

/// Condition reasons.
pub const APPLIED: &str = "Applied";
pub const PROGRESSING: &str = "Progressing";
pub const INSTALL_FAILED: &str = "InstallFailed";
pub const UPGRADE_FAILED: &str = "UpgradeFailed";
pub const RELEASE_NOT_OWNED: &str = "ReleaseNotOwned";
pub const UNINSTALLING: &str = "Uninstalling";
pub const UNINSTALL_FAILED: &str = "UninstallFailed";
pub const SUSPENDED: &str = "Suspended";
pub const API_REQUEST_FAILED: &str = "KubernetesAPIError";
pub const SERVICE_ACCOUNT_NOT_FOUND: &str = "ServiceAccountNotFound";
/// `spec.wait`: the release's objects were not ready within `spec.timeout`.
pub const NOT_READY: &str = "NotReady";
/// `spec.dependsOn`: a dependency is not `Ready`; a cycle.
pub const DEPENDENCY_NOT_READY: &str = "DependencyNotReady";
pub const DEPENDENCY_CYCLE: &str = "DependencyCycle";
/// `spec.dependsOn` names a Pack of another namespace and the controller does not allow it.
pub const CROSS_NAMESPACE_DEPENDENCY: &str = "CrossNamespaceDependency";
/// A Pack being deleted waits until the Packs depending on it, deleted too, are gone.
pub const WAITING_FOR_DEPENDENTS: &str = "WaitingForDependents";

/// The status to start from: the current one with `observedGeneration` of this spec.
pub fn base(pack: &Pack) -> PackStatus {
    let mut status = pack.status.clone().unwrap_or_default();
    status.observed_generation = pack.metadata.generation;
    status
}

/// A Pack whose spec cannot be resolved (repository, chart, version or vars). The release, if any, is left
/// as it is; the last resolved version is kept.
pub fn resolve_failed(pack: &Pack, e: &ResolveError) -> PackStatus {
    let generation = pack.metadata.generation;
    let mut status = base(pack);
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
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    if e.is_invalid_spec() {
        status.state = Some(PackState::Invalid);
        conditions::set(
            &mut status.conditions,
            conditions::new(conditions::STALLED, true, e.reason(), message, generation),
        );
    } else {
        // Nothing handled yet (or only an invalid spec): say so in the STATUS column. Otherwise the state
        // stays what the release last was, and READY/MESSAGE say why the spec does not resolve now.
        if matches!(
            status.state,
            None | Some(PackState::Invalid | PackState::NotResolved)
        ) {
            status.state = Some(PackState::NotResolved);
        }
        conditions::remove(&mut status.conditions, conditions::STALLED);
    }
    status
}

/// Records the resolved chart (before anything is applied).
pub fn resolved(mut status: PackStatus, r: &Resolution) -> PackStatus {
    status.version = Some(r.version.clone());
    status.chart_digest = r.digest.clone();
    status.chart_ref = r.urls.iter().find(|u| u.starts_with("oci://")).cloned();
    if matches!(
        status.state,
        Some(PackState::Invalid | PackState::NotResolved)
    ) {
        status.state = None;
    }
    // Resumed: what the suspension said no longer holds; the outcome of this reconcile sets Ready again.
    for type_ in [conditions::READY, conditions::RECONCILING] {
        if conditions::find(&status.conditions, type_).is_some_and(|c| c.reason == SUSPENDED) {
            conditions::remove(&mut status.conditions, type_);
        }
    }
    status
}

/// `spec.suspend`: this generation is seen and deliberately not acted on. `state` (the release as last
/// handled) stays; `Ready=False`/`Suspended` because nothing vouches that the release matches the spec,
/// `Reconciling=False` so kstatus and `kubectl wait` see a settled object.
pub fn suspended(mut status: PackStatus, generation: Option<i64>) -> PackStatus {
    let message =
        "spec.suspend is true: no install, upgrade or auto-upgrade until it is set back to \
                   false; the Helm release is left as it is"
            .to_owned();
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            SUSPENDED,
            message.clone(),
            generation,
        ),
    );
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::RECONCILING,
            false,
            SUSPENDED,
            message,
            generation,
        ),
    );
    conditions::remove(&mut status.conditions, conditions::STALLED);
    status
}

/// The release is deployed as the Pack asks.
pub fn applied(
    mut status: PackStatus,
    r: &Resolution,
    digest: &ReleaseDigest,
    revision: i64,
    release: &str,
    generation: Option<i64>,
) -> PackStatus {
    status.state = Some(PackState::Applied);
    status.applied_version = Some(r.version.clone());
    status.revision = Some(revision);
    status.last_applied_digest = Some(digest.as_str().to_owned());
    status.values_from = r.sources.clone();
    // Whatever failed before (also another spec, since reverted), the release now is what the Pack asks.
    status.failures = None;
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            true,
            APPLIED,
            format!(
                "release {release} revision {revision} runs chart {} {}",
                r.chart, r.version
            ),
            generation,
        ),
    );
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    conditions::remove(&mut status.conditions, conditions::STALLED);
    status
}

/// A request of the controller to the API server failed (e.g. refused by RBAC): `Ready=False` says so.
/// The state (STATUS column) and the release are left as they are; the retry backs off.
pub fn api_request_failed(
    mut status: PackStatus,
    message: String,
    generation: Option<i64>,
) -> PackStatus {
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            API_REQUEST_FAILED,
            message,
            generation,
        ),
    );
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    // Failed during an install/upgrade: that attempt did not complete.
    if status.state == Some(PackState::Progressing) {
        status.state = Some(PackState::ApplyFailed);
    }
    status
}

/// The ServiceAccount the Pack's Helm operations run as does not exist: nothing runs. The state (STATUS
/// column) and the release are left as they are.
pub fn service_account_missing(
    mut status: PackStatus,
    message: String,
    generation: Option<i64>,
) -> PackStatus {
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            SERVICE_ACCOUNT_NOT_FOUND,
            message,
            generation,
        ),
    );
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    status
}

/// A Helm operation is about to run: `Progressing` in the STATUS column, `Ready=False` (nothing vouches
/// for the release until Helm is done), `appliedVersion` still what is deployed.
pub fn progressing(mut status: PackStatus, message: String, generation: Option<i64>) -> PackStatus {
    status.state = Some(PackState::Progressing);
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            PROGRESSING,
            message.clone(),
            generation,
        ),
    );
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::RECONCILING,
            true,
            PROGRESSING,
            message,
            generation,
        ),
    );
    status
}

/// `spec.dependsOn`: waiting for `waiting` (names and why); nothing runs. The state stays (`NotResolved`
/// style: unset means nothing was applied).
pub fn dependencies_not_ready(
    mut status: PackStatus,
    waiting: &[String],
    generation: Option<i64>,
) -> PackStatus {
    let message = format!(
        "waiting for spec.dependsOn: {} not Ready at its current generation",
        waiting.join(", ")
    );
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            DEPENDENCY_NOT_READY,
            message,
            generation,
        ),
    );
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    conditions::remove(&mut status.conditions, conditions::STALLED);
    status
}

/// `spec.dependsOn` forms a cycle: `Invalid`, `Stalled` until a spec on it changes.
pub fn dependency_cycle(
    mut status: PackStatus,
    cycle: &[String],
    generation: Option<i64>,
) -> PackStatus {
    let message = format!(
        "spec.dependsOn forms a cycle: {}; remove one of these dependencies",
        cycle.join(" → ")
    );
    status.state = Some(PackState::Invalid);
    for (type_, is) in [(conditions::READY, false), (conditions::STALLED, true)] {
        conditions::set(
            &mut status.conditions,
            conditions::new(type_, is, DEPENDENCY_CYCLE, message.clone(), generation),
        );
    }
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    status
}

/// `spec.dependsOn` names Packs of other namespaces, which the controller does not allow: `Invalid`,
/// `Stalled` until the spec changes.
pub fn dependency_refused(
    mut status: PackStatus,
    refused: &[String],
    generation: Option<i64>,
) -> PackStatus {
    let message = format!(
        "spec.dependsOn names Packs of other namespaces ({}), which this controller does not allow: \
         depend on Packs of this namespace only, or run the controller with \
         --allow-cross-namespace-dependencies (chart: packController.allowCrossNamespaceDependencies)",
        refused.join(", ")
    );
    status.state = Some(PackState::Invalid);
    for (type_, is) in [(conditions::READY, false), (conditions::STALLED, true)] {
        conditions::set(
            &mut status.conditions,
            conditions::new(
                type_,
                is,
                CROSS_NAMESPACE_DEPENDENCY,
                message.clone(),
                generation,
            ),
        );
    }
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    status
}

/// A Pack being deleted waits for the Packs that depend on it and are deleted too.
pub fn waiting_for_dependents(
    mut status: PackStatus,
    dependents: &[String],
    generation: Option<i64>,
) -> PackStatus {
    let message = format!(
        "deleting: the release is uninstalled once the Packs that depend on it and are deleted too \
         are gone: {}",
        dependents.join(", ")
    );
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            WAITING_FOR_DEPENDENTS,
            message,
            generation,
        ),
    );
    status
}

/// What the `Progressing` condition says: the target, and for an upgrade the version still deployed.
pub fn progress_message(install: bool, deployed: Option<&str>, r: &Resolution) -> String {
    match (install, deployed) {
        (true, _) => format!("Installing chart {} {}", r.chart, r.version),
        (false, None) => format!("Upgrading to chart {} {}", r.chart, r.version),
        (false, Some(d)) if d == r.version => format!(
            "Upgrading chart {} {} (new values or a request)",
            r.chart, r.version
        ),
        (false, Some(d)) => format!(
            "Upgrading chart {} from {d} (deployed) to {}",
            r.chart, r.version
        ),
    }
}

/// `spec.wait`: the release is deployed as the Pack asks and its objects are not all ready yet.
/// `Progressing`, `Ready=False` and `Reconciling=True` with `message` (which objects, why).
pub fn waiting(mut status: PackStatus, message: String, generation: Option<i64>) -> PackStatus {
    status.state = Some(PackState::Progressing);
    for type_ in [conditions::READY, conditions::RECONCILING] {
        let is = type_ == conditions::RECONCILING;
        conditions::set(
            &mut status.conditions,
            conditions::new(type_, is, PROGRESSING, message.clone(), generation),
        );
    }
    conditions::remove(&mut status.conditions, conditions::STALLED);
    status
}

/// Whether the Pack was found `Ready` at `digest` for this `generation`: `spec.wait` checks no more.
pub fn ready_at(status: &PackStatus, digest: &ReleaseDigest, generation: Option<i64>) -> bool {
    status.last_applied_digest.as_deref() == Some(digest.as_str())
        && conditions::find(&status.conditions, conditions::READY)
            .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
}

/// Whether the objects of `digest` already timed out (`ApplyFailed`/`NotReady`): reported once.
pub fn timed_out_at(status: &PackStatus, digest: &ReleaseDigest) -> bool {
    status.last_attempted_digest.as_deref() == Some(digest.as_str())
        && conditions::find(&status.conditions, conditions::READY)
            .is_some_and(|c| c.reason == NOT_READY)
}

/// The install/upgrade that deployed `digest` (newest first), and the newest successful operation
/// before it (what a rollback returns to).
fn applying_entry<'a>(
    status: &'a PackStatus,
    digest: &ReleaseDigest,
) -> Option<(usize, &'a PackAttempt)> {
    status.history.iter().enumerate().find(|(_, a)| {
        matches!(a.action.as_str(), "Install" | "Upgrade")
            && a.result == "Succeeded"
            && a.digest.as_deref() == Some(digest.label())
    })
}

/// When the wait for `digest`'s objects started: when its install/upgrade finished.
pub fn wait_started(status: &PackStatus, digest: &ReleaseDigest) -> Option<Timestamp> {
    applying_entry(status, digest)?.1.time.parse().ok()
}

/// The revision a rollback after a readiness timeout returns to: the operation deployed before the
/// upgrade of `digest`, when that upgrade is the newest operation (the wait started with it).
pub fn rollback_target(
    status: &PackStatus,
    digest: &ReleaseDigest,
) -> Option<(i64, Option<String>)> {
    let (at, _) = applying_entry(status, digest).filter(|(at, _)| *at == 0)?;
    status.history[at + 1..]
        .iter()
        .find(|a| a.result == "Succeeded" && a.action != "Recover" && a.action != "Uninstall")
        .and_then(|a| Some((a.revision?, a.version.clone())))
}

/// Ends the `NotReady` message when `spec.rollbackOnFailure` asked for a rollback and [`rollback_target`]
/// found nothing to return to.
pub const NO_ROLLBACK_TARGET: &str = "; not rolled back (spec.rollbackOnFailure): status.history holds \
     no successful install, upgrade or rollback before this upgrade to return to";

/// `spec.wait` timed out: `ApplyFailed`/`NotReady` with `message` (the objects and why), and the
/// rollback after it (`spec.rollbackOnFailure`), if one ran to `restored` (its revision and version).
pub fn not_ready(
    mut previous: PackStatus,
    digest: &ReleaseDigest,
    mut message: String,
    rollback: Option<(&RollbackOutcome, Option<String>)>,
    generation: Option<i64>,
) -> Report {
    let stalled = match rollback {
        Some((outcome, version)) => {
            if matches!(outcome, RollbackOutcome::RolledBack { .. }) {
                previous.applied_version = version;
            }
            record_rollback(&mut previous, outcome, &mut message)
        }
        None => false,
    };
    let note = message.clone();
    let status = apply_failed(previous, digest, NOT_READY, message, stalled, generation);
    Report {
        status,
        event: Announcement {
            warning: true,
            reason: NOT_READY,
            action: format!("Wait {}", &digest.label()[..8]),
            note,
        },
        retry: Retry::Resync,
    }
}

/// An install/upgrade of `digest` failed. Counts consecutive failures of the same digest.
pub fn apply_failed(
    mut status: PackStatus,
    digest: &ReleaseDigest,
    reason: &str,
    message: String,
    stalled: bool,
    generation: Option<i64>,
) -> PackStatus {
    status.failures = Some(failures_with(&status, digest));
    status.last_attempted_digest = Some(digest.as_str().to_owned());
    status.state = Some(PackState::ApplyFailed);
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            reason,
            message.clone(),
            generation,
        ),
    );
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    if stalled {
        conditions::set(
            &mut status.conditions,
            conditions::new(conditions::STALLED, true, reason, message, generation),
        );
    } else {
        conditions::remove(&mut status.conditions, conditions::STALLED);
    }
    status
}

/// Consecutive failures of `digest` once another one is counted.
fn failures_with(status: &PackStatus, digest: &ReleaseDigest) -> u32 {
    if status.last_attempted_digest.as_deref() == Some(digest.as_str()) {
        status.failures.unwrap_or(0).saturating_add(1)
    } else {
        1
    }
}

/// A release of the Pack's name exists that no Pack made.
pub fn not_owned(mut status: PackStatus, message: String, generation: Option<i64>) -> PackStatus {
    status.state = Some(PackState::ApplyFailed);
    for type_ in [conditions::READY, conditions::STALLED] {
        conditions::set(
            &mut status.conditions,
            conditions::new(
                type_,
                type_ == conditions::STALLED,
                RELEASE_NOT_OWNED,
                message.clone(),
                generation,
            ),
        );
    }
    conditions::remove(&mut status.conditions, conditions::RECONCILING);
    status
}

/// Deletion: uninstalling.
pub fn removing(mut status: PackStatus, generation: Option<i64>) -> PackStatus {
    status.state = Some(PackState::Removing);
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            UNINSTALLING,
            "uninstalling the Helm release".to_owned(),
            generation,
        ),
    );
    status
}

/// Deletion: `helm uninstall` failed with `error`. `failures` counts failed uninstalls in a row (it
/// restarts at 1 after the install/upgrade failures it may have counted before); the message says when
/// the next try is.
pub fn remove_failed(mut status: PackStatus, error: &str, generation: Option<i64>) -> PackStatus {
    let failures = if status.state == Some(PackState::RemoveFailed) {
        status.failures.unwrap_or(0).saturating_add(1)
    } else {
        1
    };
    status.failures = Some(failures);
    status.state = Some(PackState::RemoveFailed);
    let message = format!(
        "{}; retrying in {}s",
        remove_failed_note(error),
        crate::plan::backoff(failures).as_secs()
    );
    conditions::set(
        &mut status.conditions,
        conditions::new(
            conditions::READY,
            false,
            UNINSTALL_FAILED,
            message,
            generation,
        ),
    );
    status
}

/// The Event note of a failed uninstall: the error, not when the next try is (the condition says that),
/// so that the retries of one error are one Event series with a growing count.
pub fn remove_failed_note(error: &str) -> String {
    format!("helm uninstall failed: {error}")
}

/// An install or upgrade that was run: what [`after_apply`] reports on besides its [`Outcome`].
#[derive(Debug, Clone, Copy)]
pub struct Attempted<'a> {
    /// The release (the Pack's name).
    pub release: &'a str,
    pub resolution: &'a Resolution,
    pub digest: &'a ReleaseDigest,
    /// `helm install` (no release before) rather than an upgrade.
    pub install: bool,
    /// The `requestedAt` annotation the attempt handled, if any.
    pub requested_at: Option<&'a str>,
    /// The revision of the release made outside this Pack (a manual `helm upgrade`/`rollback`) that the
    /// attempt corrected, if it was one.
    pub changed_outside: Option<i64>,
    pub generation: Option<i64>,
}

/// An Event to publish on the Pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub warning: bool,
    pub reason: &'static str,
    /// Part of what makes two Events one series: a repeat of the same failure of the same spec folds.
    pub action: String,
    pub note: String,
}

/// When to look at the Pack again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// On the periodic resync (nothing to retry, or held until something changes).
    Resync,
    /// After this backoff.
    After(std::time::Duration),
}

/// The report of an attempt: the status to write, the Event to publish, when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub status: PackStatus,
    pub event: Announcement,
    pub retry: Retry,
}

/// How the status (starting from `previous`, the status written while Helm ran) and the Event follow
/// from an install/upgrade and its [`Outcome`]. Pure: the reconcile writes and publishes the result.
pub fn after_apply(mut previous: PackStatus, a: &Attempted<'_>, outcome: &Outcome) -> Report {
    let (r, digest) = (a.resolution, a.digest);
    let action = if a.install { "Install" } else { "Upgrade" };
    previous.last_handled_reconcile_at = a.requested_at.map(Into::into);
    match outcome {
        Outcome::Applied { revision, took } => {
            let earlier_version = previous.applied_version.clone();
            let changed = changed_sources(&previous.values_from, &r.sources);
            push_history(
                &mut previous,
                attempt(
                    action,
                    Some(&r.version),
                    Some(digest),
                    Ok(Some(*revision)),
                    *took,
                ),
            );
            previous.last_attempted_digest = Some(digest.as_str().to_owned());
            let status = applied(previous, r, digest, *revision, a.release, a.generation);
            Report {
                status,
                event: Announcement {
                    warning: false,
                    reason: if a.install { "Installed" } else { "Upgraded" },
                    action: format!("{action} {} r{revision}", r.version),
                    note: applied_note(a, earlier_version.as_deref(), &changed, *revision),
                },
                retry: Retry::Resync,
            }
        }
        Outcome::Failed {
            reason,
            error,
            took,
            rollback,
        } => after_failure(previous, a, reason, error, *took, rollback.as_ref()),
    }
}

/// [`after_apply`]'s report of a successful install/upgrade of a Pack with `spec.wait`: not `Ready`
/// yet, its objects are checked at once (the next reconcile).
pub fn awaiting_objects(mut report: Report, generation: Option<i64>) -> Report {
    report.status = waiting(
        report.status,
        "Helm is done; checking whether the release's objects are ready (spec.wait)".into(),
        generation,
    );
    report.retry = Retry::After(std::time::Duration::ZERO);
    report
}

/// [`after_apply`] for a failed install/upgrade: `Ready=False` with Helm's error and what came of the
/// rollback; retried after the backoff of the spec's consecutive failures, or held after a rollback.
fn after_failure(
    mut previous: PackStatus,
    a: &Attempted<'_>,
    reason: &'static str,
    error: &str,
    took: std::time::Duration,
    rollback: Option<&RollbackOutcome>,
) -> Report {
    let (r, digest) = (a.resolution, a.digest);
    let action = if a.install { "Install" } else { "Upgrade" };
    let operation = if a.install { "install" } else { "upgrade" };
    let mut message = format!(
        "helm {operation} of chart {} {} failed: {error}",
        r.chart, r.version
    );
    push_history(
        &mut previous,
        attempt(
            action,
            Some(&r.version),
            Some(digest),
            Err(error.to_owned()),
            took,
        ),
    );
    let stalled = match rollback {
        Some(rollback) => record_rollback(&mut previous, rollback, &mut message),
        None => false,
    };
    let retry = plan::backoff(failures_with(&previous, digest));
    // The condition says when the next try is; the Event note does not, so that the retries of one error
    // are one Event series with a growing count (common::events), not an Event per retry.
    let note = message.clone();
    if !stalled {
        message.push_str(&format!("; retrying in {}s", retry.as_secs()));
    }
    let status = apply_failed(previous, digest, reason, message, stalled, a.generation);
    Report {
        status,
        event: Announcement {
            warning: true,
            reason,
            // Repeated failures of one spec fold into one Event series; another spec gets its own.
            action: format!("{action} {} {}", r.version, &digest.label()[..8]),
            note,
        },
        retry: if stalled {
            Retry::Resync
        } else {
            Retry::After(retry)
        },
    }
}

/// The note of a successful install/upgrade: what changed.
fn applied_note(
    a: &Attempted<'_>,
    earlier_version: Option<&str>,
    changed_sources: &str,
    revision: i64,
) -> String {
    let (r, release) = (a.resolution, a.release);
    match (a.install, earlier_version, a.changed_outside) {
        (true, _, _) => format!(
            "Installed chart {} {} as release {release} revision {revision}",
            r.chart, r.version
        ),
        (false, Some(old), _) if old != r.version => format!(
            "Upgraded chart {} {old} → {} (revision {revision})",
            r.chart, r.version
        ),
        (false, _, Some(outside)) => format!(
            "Upgraded chart {} {} back to the Pack's values: revision {outside} of the release was \
             made outside this Pack (revision {revision})",
            r.chart, r.version
        ),
        (false, _, None) if !changed_sources.is_empty() => format!(
            "Upgraded chart {} {}: values from {changed_sources} changed (revision {revision})",
            r.chart, r.version
        ),
        (false, _, None) => format!(
            "Upgraded chart {} {} with changed values{} (revision {revision})",
            r.chart,
            r.version,
            if a.requested_at.is_some() {
                " or on request"
            } else {
                ""
            },
        ),
    }
}

/// The `valuesFrom` objects of `now` whose resourceVersion differs from when the release was last applied
/// (`before`), as `Secret db, ConfigMap defaults`; empty when none (or nothing was recorded before).
fn changed_sources(before: &[ValuesSourceVersion], now: &[ValuesSourceVersion]) -> String {
    if before.is_empty() {
        return String::new();
    }
    let mut names: Vec<String> = Vec::new();
    for n in now.iter().filter(|n| !before.contains(n)) {
        let name = format!("{} {}", n.kind.as_str(), n.name);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(", ")
}

/// Records the rollback after a failed upgrade in the history and the message; whether the Pack is now
/// held (rolled back: not retried until something changes).
fn record_rollback(
    status: &mut PackStatus,
    rollback: &RollbackOutcome,
    message: &mut String,
) -> bool {
    match rollback {
        RollbackOutcome::RolledBack { to, revision, took } => {
            // The rollback made a new revision: the one the Pack now stands on.
            status.revision = revision.or(status.revision);
            message.push_str(&format!(
                "; rolled back to revision {to} (spec.rollbackOnFailure); not retried until the spec, \
                 the chart version or the requestedAt annotation changes"
            ));
            let version = status.applied_version.clone();
            push_history(
                status,
                attempt("Rollback", version.as_deref(), None, Ok(*revision), *took),
            );
            true
        }
        RollbackOutcome::Failed { to, error, took } => {
            message.push_str(&format!("; rollback to revision {to} failed too: {error}"));
            push_history(
                status,
                attempt("Rollback", None, None, Err(error.clone()), *took),
            );
            false
        }
    }
}

/// Adds `attempt` to the front of the history, keeping [`HISTORY`] entries.
pub fn push_history(status: &mut PackStatus, mut attempt: PackAttempt) {
    attempt.message = attempt
        .message
        .map(|m| common::events::truncate(&m, HISTORY_MESSAGE));
    status.history.insert(0, attempt);
    status.history.truncate(HISTORY);
}

/// A history entry stamped now.
pub fn attempt(
    action: &str,
    version: Option<&str>,
    digest: Option<&ReleaseDigest>,
    result: Result<Option<i64>, String>,
    took: std::time::Duration,
) -> PackAttempt {
    let (result, revision, message) = match result {
        Ok(revision) => ("Succeeded", revision, None),
        Err(m) => ("Failed", None, Some(m)),
    };
    PackAttempt {
        action: action.into(),
        version: version.map(Into::into),
        digest: digest.map(|d| d.label().to_owned()),
        result: result.into(),
        revision,
        time: Timestamp::now().to_string(),
        duration_seconds: Some((took.as_secs_f64() * 1000.0).round() / 1000.0),
        message,
    }
}

/// Time since the newest history entry.
pub fn since_last_attempt(status: &PackStatus) -> Option<std::time::Duration> {
    let t: Timestamp = status.history.first()?.time.parse().ok()?;
    let since = Timestamp::now().duration_since(t);
    std::time::Duration::try_from(since).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::crd::PackSpec;
    use serde_json::json;
    use std::time::Duration;

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

    fn resolution(version: &str) -> Resolution {
        Resolution {
            chart: "genpack".into(),
            version: version.into(),
            digest: Some("ab".into()),
            urls: vec![],
            values: json!({}),
            secret_strings: vec![],
            sources: vec![],
        }
    }

    #[test]
    fn invalid_spec_stalls_and_recovers() {
        let mut p = pack();
        let err = ResolveError::InvalidVersionConstraint(
            crate::versions::VersionConstraint::parse("~=1").unwrap_err(),
        );
        let status = resolve_failed(&p, &err);
        assert_eq!(status.state, Some(PackState::Invalid));
        assert_eq!(status.observed_generation, Some(3));
        let stalled = conditions::find(&status.conditions, conditions::STALLED).unwrap();
        assert_eq!(stalled.reason, "InvalidVersionConstraint");

        p.status = Some(status);
        let status = resolved(base(&p), &resolution("0.1.0"));
        assert_eq!(status.state, None);
        assert_eq!(status.version.as_deref(), Some("0.1.0"));
    }

    #[test]
    fn an_unresolvable_pack_with_nothing_deployed_is_not_resolved_until_it_resolves() {
        let mut p = pack();
        let status = resolve_failed(
            &p,
            &ResolveError::RepositoryNotFound {
                repository: "packs".into(),
            },
        );
        assert_eq!(status.state, Some(PackState::NotResolved));
        assert!(conditions::find(&status.conditions, conditions::STALLED).is_none());
        p.status = Some(status);
        assert_eq!(resolved(base(&p), &resolution("0.1.0")).state, None);
    }

    #[test]
    fn while_helm_runs_the_state_is_progressing_and_names_deployed_and_target() {
        let p = pack();
        let r = resolution("0.2.0");
        let old = resolution("0.1.0");
        let d = ReleaseDigest::of("genpack", "0.1.0", Some("ab"), &json!({}));
        let s = resolved(
            applied(resolved(base(&p), &old), &old, &d, 1, "p", Some(3)),
            &r,
        );
        let message = progress_message(false, s.applied_version.as_deref(), &r);
        assert_eq!(
            message,
            "Upgrading chart genpack from 0.1.0 (deployed) to 0.2.0"
        );
        let s = progressing(s, message.clone(), Some(3));
        assert_eq!(s.state, Some(PackState::Progressing));
        assert_eq!(s.applied_version.as_deref(), Some("0.1.0"));
        assert_eq!(s.version.as_deref(), Some("0.2.0"));
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_str(),
                ready.message.as_str()
            ),
            ("False", PROGRESSING, message.as_str())
        );
        assert_eq!(
            progress_message(true, None, &r),
            "Installing chart genpack 0.2.0"
        );
        assert_eq!(
            progress_message(false, Some("0.2.0"), &r),
            "Upgrading chart genpack 0.2.0 (new values or a request)"
        );
    }

    #[test]
    fn a_repository_problem_keeps_the_release_state() {
        let mut p = pack();
        let r = resolution("0.2.0");
        let d = ReleaseDigest::of("genpack", "0.2.0", Some("ab"), &json!({}));
        p.status = Some(applied(resolved(base(&p), &r), &r, &d, 1, "p", Some(3)));
        let status = resolve_failed(
            &p,
            &ResolveError::RepositoryNotFound {
                repository: "packs".into(),
            },
        );
        assert_eq!(status.version.as_deref(), Some("0.2.0"));
        assert_eq!(status.state, Some(PackState::Applied));
        let ready = conditions::find(&status.conditions, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RepositoryNotFound")
        );
    }

    #[test]
    fn failures_count_per_digest_and_reset_on_success() {
        let p = pack();
        let r = resolution("0.1.0");
        let d1 = ReleaseDigest::of("genpack", "0.1.0", None, &json!({"a": 1}));
        let d2 = ReleaseDigest::of("genpack", "0.1.0", None, &json!({"a": 2}));
        let s = apply_failed(base(&p), &d1, UPGRADE_FAILED, "boom".into(), false, Some(3));
        let s = apply_failed(s, &d1, UPGRADE_FAILED, "boom".into(), false, Some(3));
        assert_eq!(s.failures, Some(2));
        assert_eq!(s.state, Some(PackState::ApplyFailed));
        let s = apply_failed(s, &d2, UPGRADE_FAILED, "boom".into(), false, Some(3));
        assert_eq!(s.failures, Some(1), "a new spec starts counting again");
        let s = applied(s, &r, &d2, 4, "p", Some(3));
        assert_eq!(s.failures, None);
        assert_eq!(s.revision, Some(4));
        assert_eq!(s.applied_version.as_deref(), Some("0.1.0"));
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(ready.status, "True");
        assert!(conditions::find(&s.conditions, conditions::RECONCILING).is_none());
    }

    #[test]
    fn reverting_to_the_deployed_spec_clears_the_failures() {
        let p = pack();
        let r = resolution("0.1.0");
        let good = ReleaseDigest::of("genpack", "0.1.0", None, &json!({"a": 1}));
        let bad = ReleaseDigest::of("genpack", "0.1.0", None, &json!({"a": "x"}));
        let s = applied(base(&p), &r, &good, 1, "p", Some(3));
        let s = apply_failed(s, &bad, UPGRADE_FAILED, "boom".into(), false, Some(3));
        let s = apply_failed(s, &bad, UPGRADE_FAILED, "boom".into(), false, Some(3));
        assert_eq!(s.failures, Some(2));
        // The spec goes back to what is deployed: nothing runs, and nothing has failed any more.
        let s = applied(s, &r, &good, 1, "p", Some(4));
        assert_eq!(s.failures, None);
        // The bad spec again starts at the first backoff step.
        let s = apply_failed(s, &bad, UPGRADE_FAILED, "boom".into(), false, Some(5));
        assert_eq!(s.failures, Some(1));
    }

    #[test]
    fn failed_uninstalls_count_from_one_and_keep_state() {
        let p = pack();
        let d = ReleaseDigest::of("genpack", "0.1.0", None, &json!({}));
        let s = apply_failed(base(&p), &d, UPGRADE_FAILED, "boom".into(), false, Some(3));
        let s = apply_failed(s, &d, UPGRADE_FAILED, "boom".into(), false, Some(3));
        let s = removing(s, Some(3));
        assert_eq!(s.state, Some(PackState::Removing));
        let s = remove_failed(s, "hook failed", Some(3));
        assert_eq!(s.failures, Some(1), "install failures do not count");
        assert_eq!(s.state, Some(PackState::RemoveFailed));
        let s = remove_failed(s, "hook failed", Some(3));
        assert_eq!(s.failures, Some(2));
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(ready.reason, UNINSTALL_FAILED);
        assert_eq!(
            ready.message,
            "helm uninstall failed: hook failed; retrying in 20s"
        );
        assert_eq!(
            remove_failed_note("hook failed"),
            "helm uninstall failed: hook failed",
            "the Event note has no retry time: one error is one series"
        );
    }

    #[test]
    fn retries_of_one_error_are_one_event_series_while_the_backoff_grows() {
        let p = pack();
        let r = resolution("0.1.5");
        let d = ReleaseDigest::of("genpack", "0.1.5", None, &json!({}));
        let a = Attempted {
            release: "p",
            resolution: &r,
            digest: &d,
            install: true,
            requested_at: None,
            changed_outside: None,
            generation: Some(3),
        };
        let outcome = Outcome::Failed {
            reason: INSTALL_FAILED,
            error: "boom".into(),
            took: std::time::Duration::from_secs(1),
            rollback: None,
        };
        let (mut status, mut events) = (base(&p), vec![]);
        let mut messages = std::collections::BTreeSet::new();
        for _ in 0..7 {
            let report = after_apply(status, &a, &outcome);
            status = report.status;
            events.push(report.event);
            let ready = conditions::find(&status.conditions, conditions::READY).unwrap();
            messages.insert(ready.message.clone());
        }
        assert!(events.iter().all(|e| *e == events[0]), "{events:#?}");
        assert_eq!(messages.len(), 7, "the condition says when: {messages:?}");
    }

    #[test]
    fn suspension_is_observed_and_lifted() {
        let mut p = pack();
        let r = resolution("0.1.0");
        let d = ReleaseDigest::of("genpack", "0.1.0", None, &json!({}));
        p.status = Some(applied(base(&p), &r, &d, 1, "p", Some(3)));
        p.metadata.generation = Some(4);
        let s = suspended(base(&p), Some(4));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.state, Some(PackState::Applied), "state is kept");
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", SUSPENDED)
        );
        assert_eq!(ready.observed_generation, Some(4));
        let rec = conditions::find(&s.conditions, conditions::RECONCILING).unwrap();
        assert_eq!(
            (rec.status.as_str(), rec.reason.as_str()),
            ("False", SUSPENDED)
        );
        p.status = Some(s);
        let s = resolved(base(&p), &r);
        assert!(conditions::find(&s.conditions, conditions::READY).is_none());
        assert!(conditions::find(&s.conditions, conditions::RECONCILING).is_none());
    }

    #[test]
    fn the_rollback_after_a_timeout_returns_to_the_success_before_the_newest_upgrade() {
        let d1 = ReleaseDigest::of("genpack", "0.1.0", None, &json!({"v": 1}));
        let d2 = ReleaseDigest::of("genpack", "0.1.0", None, &json!({"v": 2}));
        let ok = |action, d: Option<&ReleaseDigest>, r| {
            attempt(action, Some("0.1.0"), d, Ok(Some(r)), Duration::ZERO)
        };
        let failed = |action, d| attempt(action, None, d, Err("boom".into()), Duration::ZERO);
        let with = |entries: Vec<PackAttempt>| PackStatus {
            history: entries,
            ..PackStatus::default()
        };
        let cases = [
            (
                "upgrade over an install",
                vec![ok("Upgrade", Some(&d2), 2), ok("Install", Some(&d1), 1)],
                Some(1),
            ),
            (
                "a recovery and a failure are skipped",
                vec![
                    ok("Upgrade", Some(&d2), 4),
                    ok("Recover", None, 3),
                    failed("Upgrade", Some(&d2)),
                    ok("Upgrade", Some(&d1), 2),
                ],
                Some(2),
            ),
            (
                "already rolled back",
                vec![
                    ok("Rollback", None, 3),
                    ok("Upgrade", Some(&d2), 2),
                    ok("Install", Some(&d1), 1),
                ],
                None,
            ),
            ("nothing before", vec![ok("Install", Some(&d2), 1)], None),
            ("never applied", vec![ok("Install", Some(&d1), 1)], None),
        ];
        for (name, history, want) in cases {
            let got = rollback_target(&with(history), &d2).map(|(r, _)| r);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn history_is_capped_newest_first() {
        let mut s = PackStatus::default();
        for i in 0..7 {
            push_history(
                &mut s,
                attempt(
                    "Upgrade",
                    Some("1.0.0"),
                    None,
                    Ok(Some(i)),
                    Duration::from_millis(1500),
                ),
            );
        }
        assert_eq!(s.history.len(), HISTORY);
        assert_eq!(s.history[0].revision, Some(6));
        assert_eq!(s.history[0].duration_seconds, Some(1.5));
        assert!(since_last_attempt(&s).unwrap() < Duration::from_secs(5));
        push_history(
            &mut s,
            attempt("Upgrade", None, None, Err("x".repeat(1000)), Duration::ZERO),
        );
        assert!(s.history[0].message.as_ref().unwrap().len() <= 256);
    }
    #[test]
    fn an_api_failure_keeps_the_state_and_the_next_apply_clears_it() {
        let p = pack();
        let mut s = base(&p);
        s.state = Some(PackState::Applied);
        s.revision = Some(2);
        let before = api_request_failed(
            s.clone(),
            "403 Forbidden: secrets is forbidden".into(),
            Some(3),
        );
        assert_eq!(
            before.state,
            Some(PackState::Applied),
            "the release is as it was"
        );
        let s = api_request_failed(
            progressing(s, "upgrading".into(), Some(3)),
            "403 Forbidden: secrets is forbidden".into(),
            Some(3),
        );
        assert_eq!(
            s.state,
            Some(PackState::ApplyFailed),
            "the upgrade did not complete"
        );
        assert_eq!(s.revision, Some(2));
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", API_REQUEST_FAILED)
        );
        assert!(conditions::find(&s.conditions, conditions::RECONCILING).is_none());
        let digest = ReleaseDigest::of("genpack", "0.1.0", Some("ab"), &json!({}));
        let s = applied(s, &resolution("0.1.0"), &digest, 3, "p", Some(3));
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", APPLIED)
        );
    }

    /// One row of the [`after_apply`] table: the status before, the attempt, the outcome, and what the
    /// report must say.
    struct Case {
        name: &'static str,
        before: PackStatus,
        install: bool,
        requested_at: Option<&'static str>,
        changed_outside: Option<i64>,
        outcome: Outcome,
        state: PackState,
        ready: (&'static str, &'static str),
        message_has: &'static [&'static str],
        event: (bool, &'static str, &'static str),
        stalled: bool,
        revision: Option<i64>,
        failures: Option<u32>,
        history: &'static [(&'static str, &'static str)],
        retry: Retry,
    }

    #[test]
    fn after_apply_reports_each_outcome() {
        let p = pack();
        let r = resolution("0.1.5");
        let digest = ReleaseDigest::of("genpack", "0.1.5", Some("ab"), &json!({"a": 1}));
        let d8 = &digest.label()[..8];
        let secs = Duration::from_secs;
        let deployed = {
            let mut s = applied(base(&p), &resolution("0.1.0"), &digest, 2, "p", Some(3));
            s.history.clear();
            s
        };
        let failed_once = {
            let mut s = deployed.clone();
            s.last_attempted_digest = Some(digest.as_str().to_owned());
            s.failures = Some(1);
            s
        };
        let failed = |reason, rollback| Outcome::Failed {
            reason,
            error: "UPGRADE FAILED: boom".into(),
            took: secs(1),
            rollback,
        };
        let cases = [
            Case {
                name: "install",
                before: base(&p),
                install: true,
                requested_at: None,
                changed_outside: None,
                outcome: Outcome::Applied {
                    revision: 1,
                    took: secs(2),
                },
                state: PackState::Applied,
                ready: ("True", APPLIED),
                message_has: &["release p revision 1 runs chart genpack 0.1.5"],
                event: (
                    false,
                    "Installed",
                    "Installed chart genpack 0.1.5 as release p revision 1",
                ),
                stalled: false,
                revision: Some(1),
                failures: None,
                history: &[("Install", "Succeeded")],
                retry: Retry::Resync,
            },
            Case {
                name: "upgrade to a new version names both",
                before: deployed.clone(),
                install: false,
                requested_at: None,
                changed_outside: None,
                outcome: Outcome::Applied {
                    revision: 3,
                    took: secs(2),
                },
                state: PackState::Applied,
                ready: ("True", APPLIED),
                message_has: &["revision 3"],
                event: (
                    false,
                    "Upgraded",
                    "Upgraded chart genpack 0.1.0 → 0.1.5 (revision 3)",
                ),
                stalled: false,
                revision: Some(3),
                failures: None,
                history: &[("Upgrade", "Succeeded")],
                retry: Retry::Resync,
            },
            Case {
                name: "a release changed outside is put back",
                before: {
                    let mut s = applied(base(&p), &r, &digest, 2, "p", Some(3));
                    s.history.clear();
                    s
                },
                install: false,
                requested_at: None,
                changed_outside: Some(4),
                outcome: Outcome::Applied {
                    revision: 5,
                    took: secs(2),
                },
                state: PackState::Applied,
                ready: ("True", APPLIED),
                message_has: &["revision 5"],
                event: (
                    false,
                    "Upgraded",
                    "Upgraded chart genpack 0.1.5 back to the Pack's values: revision 4 of the release \
                     was made outside this Pack (revision 5)",
                ),
                stalled: false,
                revision: Some(5),
                failures: None,
                history: &[("Upgrade", "Succeeded")],
                retry: Retry::Resync,
            },
            Case {
                name: "same version on request",
                before: {
                    let mut s = applied(base(&p), &r, &digest, 2, "p", Some(3));
                    s.history.clear();
                    s
                },
                install: false,
                requested_at: Some("now"),
                changed_outside: None,
                outcome: Outcome::Applied {
                    revision: 3,
                    took: secs(2),
                },
                state: PackState::Applied,
                ready: ("True", APPLIED),
                message_has: &[],
                event: (
                    false,
                    "Upgraded",
                    "Upgraded chart genpack 0.1.5 with changed values or on request (revision 3)",
                ),
                stalled: false,
                revision: Some(3),
                failures: None,
                history: &[("Upgrade", "Succeeded")],
                retry: Retry::Resync,
            },
            Case {
                name: "a second failure of the same spec backs off longer",
                before: failed_once.clone(),
                install: false,
                requested_at: None,
                changed_outside: None,
                outcome: failed(UPGRADE_FAILED, None),
                state: PackState::ApplyFailed,
                ready: ("False", UPGRADE_FAILED),
                message_has: &[
                    "helm upgrade of chart genpack 0.1.5 failed: UPGRADE FAILED: boom",
                    "; retrying in 20s",
                ],
                event: (
                    true,
                    UPGRADE_FAILED,
                    "helm upgrade of chart genpack 0.1.5 failed: UPGRADE FAILED: boom",
                ),
                stalled: false,
                revision: Some(2),
                failures: Some(2),
                history: &[("Upgrade", "Failed")],
                retry: Retry::After(secs(20)),
            },
            Case {
                name: "rolled back: held, stalled, standing on the rollback's revision",
                before: deployed.clone(),
                install: false,
                requested_at: None,
                changed_outside: None,
                outcome: failed(
                    UPGRADE_FAILED,
                    Some(RollbackOutcome::RolledBack {
                        to: 2,
                        revision: Some(4),
                        took: secs(1),
                    }),
                ),
                state: PackState::ApplyFailed,
                ready: ("False", UPGRADE_FAILED),
                message_has: &["; rolled back to revision 2 (spec.rollbackOnFailure); not retried"],
                event: (
                    true,
                    UPGRADE_FAILED,
                    "helm upgrade of chart genpack 0.1.5 failed: UPGRADE FAILED: boom; rolled back to revision 2 (spec.rollbackOnFailure); not retried until the spec, the chart version or the requestedAt annotation changes",
                ),
                stalled: true,
                revision: Some(4),
                failures: Some(1),
                history: &[("Rollback", "Succeeded"), ("Upgrade", "Failed")],
                retry: Retry::Resync,
            },
            Case {
                name: "a failed rollback is retried like a failure",
                before: deployed.clone(),
                install: false,
                requested_at: None,
                changed_outside: None,
                outcome: failed(
                    UPGRADE_FAILED,
                    Some(RollbackOutcome::Failed {
                        to: 2,
                        error: "no".into(),
                        took: secs(1),
                    }),
                ),
                state: PackState::ApplyFailed,
                ready: ("False", UPGRADE_FAILED),
                message_has: &["; rollback to revision 2 failed too: no; retrying in 10s"],
                event: (
                    true,
                    UPGRADE_FAILED,
                    "helm upgrade of chart genpack 0.1.5 failed: UPGRADE FAILED: boom; rollback to revision 2 failed too: no",
                ),
                stalled: false,
                revision: Some(2),
                failures: Some(1),
                history: &[("Rollback", "Failed"), ("Upgrade", "Failed")],
                retry: Retry::After(secs(10)),
            },
            Case {
                name: "a chart that cannot be had keeps its own reason",
                before: base(&p),
                install: true,
                requested_at: None,
                changed_outside: None,
                outcome: failed("ChartDigestMismatch", None),
                state: PackState::ApplyFailed,
                ready: ("False", "ChartDigestMismatch"),
                message_has: &["helm install of chart genpack 0.1.5 failed"],
                event: (
                    true,
                    "ChartDigestMismatch",
                    "helm install of chart genpack 0.1.5 failed: UPGRADE FAILED: boom",
                ),
                stalled: false,
                revision: None,
                failures: Some(1),
                history: &[("Install", "Failed")],
                retry: Retry::After(secs(10)),
            },
        ];
        for c in cases {
            let attempted = Attempted {
                release: "p",
                resolution: &r,
                digest: &digest,
                install: c.install,
                requested_at: c.requested_at,
                changed_outside: c.changed_outside,
                generation: Some(3),
            };
            let report = after_apply(c.before, &attempted, &c.outcome);
            let s = &report.status;
            assert_eq!(s.state, Some(c.state), "{}", c.name);
            let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
            assert_eq!(
                (ready.status.as_str(), ready.reason.as_str()),
                c.ready,
                "{}",
                c.name
            );
            for part in c.message_has {
                assert!(
                    ready.message.contains(part),
                    "{}: {}",
                    c.name,
                    ready.message
                );
            }
            assert_eq!(
                conditions::find(&s.conditions, conditions::STALLED).is_some(),
                c.stalled,
                "{}",
                c.name
            );
            assert!(
                conditions::find(&s.conditions, conditions::RECONCILING).is_none(),
                "{}",
                c.name
            );
            assert_eq!(s.revision, c.revision, "{}", c.name);
            assert_eq!(s.failures, c.failures, "{}", c.name);
            assert_eq!(
                s.last_attempted_digest.as_deref(),
                Some(digest.as_str()),
                "{}",
                c.name
            );
            assert_eq!(
                s.last_handled_reconcile_at.as_deref(),
                c.requested_at,
                "{}",
                c.name
            );
            let history: Vec<_> = s
                .history
                .iter()
                .map(|h| (h.action.as_str(), h.result.as_str()))
                .collect();
            assert_eq!(history, c.history, "{}", c.name);
            let e = &report.event;
            assert_eq!(
                (e.warning, e.reason, e.note.as_str()),
                c.event,
                "{}",
                c.name
            );
            assert_eq!(report.retry, c.retry, "{}", c.name);
            if e.warning {
                assert_eq!(
                    e.action,
                    format!(
                        "{} 0.1.5 {d8}",
                        if c.install { "Install" } else { "Upgrade" }
                    ),
                    "{}",
                    c.name
                );
                // The condition says when the next try is; the note does not, so that the retries of one
                // error are one Event series with a growing count.
                let want = match c.retry {
                    Retry::After(d) => format!("{}; retrying in {}s", e.note, d.as_secs()),
                    Retry::Resync => e.note.clone(),
                };
                assert_eq!(ready.message, want, "{}", c.name);
            } else {
                assert_eq!(
                    e.action,
                    format!(
                        "{} 0.1.5 r{}",
                        if c.install { "Install" } else { "Upgrade" },
                        c.revision.unwrap()
                    ),
                    "{}",
                    c.name
                );
            }
        }
    }
}
