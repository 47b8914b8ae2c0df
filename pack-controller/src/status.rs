//! How a Pack's status changes with each outcome. Pure functions over `PackStatus`; the reconcile writes
//! the result with server-side apply.

use common::{
    conditions,
    crd::{
        Pack, PackStatus,
        pack::{PackAttempt, PackState},
    },
};
use k8s_openapi::jiff::Timestamp;

use crate::{
    plan::ReleaseDigest,
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
        if status.state == Some(PackState::Invalid) {
            status.state = None;
        }
        conditions::remove(&mut status.conditions, conditions::STALLED);
    }
    status
}

/// Records the resolved chart (before anything is applied).
pub fn resolved(mut status: PackStatus, r: &Resolution) -> PackStatus {
    status.version = Some(r.version.clone());
    status.chart_digest = r.digest.clone();
    if status.state == Some(PackState::Invalid) {
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
    status
}

/// A Helm operation is about to run.
pub fn progressing(mut status: PackStatus, message: String, generation: Option<i64>) -> PackStatus {
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

/// An install/upgrade of `digest` failed. Counts consecutive failures of the same digest.
pub fn apply_failed(
    mut status: PackStatus,
    digest: &ReleaseDigest,
    reason: &str,
    message: String,
    stalled: bool,
    generation: Option<i64>,
) -> PackStatus {
    let failures = if status.last_attempted_digest.as_deref() == Some(digest.as_str()) {
        status.failures.unwrap_or(0).saturating_add(1)
    } else {
        1
    };
    status.failures = Some(failures);
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
        "helm uninstall failed: {error}; retrying in {}s",
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
        let s = api_request_failed(
            progressing(s, "upgrading".into(), Some(3)),
            "403 Forbidden: secrets is forbidden".into(),
            Some(3),
        );
        assert_eq!(
            s.state,
            Some(PackState::Applied),
            "the release is as it was"
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
}
