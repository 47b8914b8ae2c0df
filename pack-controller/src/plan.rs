//! What a Pack reconcile should do with Helm, decided from plain data: the digest of what the Pack asks
//! for, Helm's record of the release, and the Pack's status. Pure, unit-tested without a cluster.

use std::time::Duration;

use common::crd::{PackStatus, pack::PackState};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::release::ReleaseRecord;

/// Annotation that asks for a reconcile (and a Helm upgrade) now, whatever the digest: set it to any
/// new value, e.g. `kubectl annotate pack test reconcile.k8s.kubit.ir/requestedAt="$(date +%s)" --overwrite`.
pub const REQUESTED_AT: &str = "reconcile.k8s.kubit.ir/requestedAt";

/// First retry delay after a failed Helm operation; doubled per consecutive failure.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);

/// SHA-256 (lowercase hex) over what a release is made of: chart name, version, chart archive digest and
/// the final values (after vars). Equal digests mean `helm upgrade` would change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseDigest(String);

impl ReleaseDigest {
    pub fn of(chart: &str, version: &str, chart_digest: Option<&str>, values: &Value) -> Self {
        let mut h = Sha256::new();
        // serde_json's map is ordered by key, so the encoding is canonical.
        for part in [
            chart.as_bytes(),
            version.as_bytes(),
            chart_digest.unwrap_or("").as_bytes(),
            values.to_string().as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        ReleaseDigest(hex(&h.finalize()))
    }

    /// This digest keyed by `salt` (the uids of the Secrets the values came from), so that it confirms no
    /// guess of a Secret's value to a reader of the Pack's status or of Helm's release labels, who knows
    /// everything else the digest covers but not the Secrets' uids. No salt: unchanged.
    pub fn salted(self, salt: &[String]) -> Self {
        if salt.is_empty() {
            return self;
        }
        let mut h = Sha256::new();
        for part in std::iter::once(self.0.as_str()).chain(salt.iter().map(String::as_str)) {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        ReleaseDigest(hex(&h.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form kept in a Helm release label (label values are at most 63 characters).
    pub fn label(&self) -> &str {
        &self.0[..32]
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The release is deployed with this digest: run nothing.
    UpToDate,
    /// A release of that name exists that no Pack made: touch nothing, report it.
    NotOwned,
    /// The same spec failed recently: wait this long before trying again.
    Wait(Duration),
    /// Rolled back after a failure of this digest (`rollbackOnFailure`): no retry until something changes.
    HeldAfterRollback,
    /// Run `helm upgrade --install`; `recover` first marks a stuck pending revision failed.
    Apply { install: bool, recover: bool },
}

/// What executing a [`Plan::Apply`] came to: the input of the status and Event report
/// ([`crate::status::after_apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `helm upgrade --install` made this revision.
    Applied { revision: i64, took: Duration },
    /// It failed (the chart could not be had, or Helm refused): `reason` for the condition and the
    /// Event, `error` as Helm said it (values blanked), and the rollback tried after it, if any.
    Failed {
        reason: &'static str,
        error: String,
        took: Duration,
        rollback: Option<RollbackOutcome>,
    },
}

/// A rollback to the revision deployed before a failed upgrade (`spec.rollbackOnFailure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackOutcome {
    /// Helm rolled back to revision `to`, making `revision` (None: the release could not be read after).
    RolledBack {
        to: i64,
        revision: Option<i64>,
        took: Duration,
    },
    /// The rollback failed too.
    Failed {
        to: i64,
        error: String,
        took: Duration,
    },
}

/// Inputs to [`decide`] besides the digest.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub pack: &'a str,
    pub release: Option<&'a ReleaseRecord>,
    pub status: &'a PackStatus,
    /// The `requestedAt` annotation, if set.
    pub requested_at: Option<&'a str>,
    /// Seconds since the last attempt finished (None: never attempted or unknown).
    pub since_last_attempt: Option<Duration>,
    pub rollback_on_failure: bool,
}

/// Decides what to do for `desired`.
pub fn decide(desired: &ReleaseDigest, f: Facts<'_>) -> Plan {
    if let Some(r) = f.release
        && r.pack.as_deref() != Some(f.pack)
    {
        return Plan::NotOwned;
    }
    let requested = f
        .requested_at
        .is_some_and(|r| f.status.last_handled_reconcile_at.as_deref() != Some(r));
    let recover = f.release.is_some_and(ReleaseRecord::is_pending);
    let install = f.release.is_none();
    if !requested
        && let Some(r) = f.release
        && r.is_deployed()
        && r.digest.as_deref() == Some(desired.label())
        && !changed_outside(desired, Some(r), f.status.revision)
    {
        return Plan::UpToDate;
    }
    let failed_before = f.status.last_attempted_digest.as_deref() == Some(desired.as_str())
        && f.status.failures.unwrap_or(0) > 0;
    // A stuck release found after a failure of the same spec still waits out the backoff: recovering it
    // is part of the next attempt.
    if failed_before && !requested {
        if f.rollback_on_failure
            && f.status.state == Some(PackState::ApplyFailed)
            && rolled_back(f.status)
        {
            return Plan::HeldAfterRollback;
        }
        let wait = backoff(f.status.failures.unwrap_or(1));
        match f.since_last_attempt {
            Some(since) if since < wait => return Plan::Wait(wait - since),
            _ => {}
        }
    }
    Plan::Apply { install, recover }
}

/// Whether `plan`, decided on the cached Pack, must be decided again on the stored Pack before it is
/// acted on: one that runs Helm. The cache can lag behind the controller's own last status write (an
/// event such as Helm's release Secret recording a failed upgrade may wake the Pack first), and a
/// decision on the stale status would retry a failure at once instead of after its backoff, or take a
/// revision the Pack just made for one made outside it.
pub fn confirm_on_stored(plan: &Plan) -> bool {
    matches!(plan, Plan::Apply { .. })
}

/// Whether the deployed release carries the Pack's digest but is not the revision the Pack last made: a
/// `helm upgrade` or `helm rollback` run by hand (Helm copies the previous revision's labels, digest
/// included, onto the new one). `recorded` is `status.revision`; unknown (None) counts as no change.
pub fn changed_outside(
    desired: &ReleaseDigest,
    release: Option<&ReleaseRecord>,
    recorded: Option<i64>,
) -> bool {
    release.is_some_and(|r| {
        r.is_deployed()
            && r.digest.as_deref() == Some(desired.label())
            && recorded.is_some_and(|n| n != r.revision)
    })
}

/// During deletion, after failed uninstalls (`status.state` `RemoveFailed`, `status.failures` of them in
/// a row): how long to wait before the next `helm uninstall`. None: run it now.
pub fn uninstall_wait(
    status: &PackStatus,
    since_last_attempt: Option<Duration>,
) -> Option<Duration> {
    if status.state != Some(PackState::RemoveFailed) {
        return None;
    }
    let wait = backoff(status.failures.unwrap_or(1));
    match since_last_attempt {
        Some(since) if since < wait => Some(wait - since),
        _ => None,
    }
}

/// Whether the newest history entry is a successful rollback.
fn rolled_back(status: &PackStatus) -> bool {
    status
        .history
        .first()
        .is_some_and(|a| a.action == "Rollback" && a.result == "Succeeded")
}

/// The delay before retry number `failures` (1 = after the first failure): 10 s, 20 s, 40 s ... 10 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::crd::pack::PackAttempt;
    use serde_json::json;

    fn digest() -> ReleaseDigest {
        ReleaseDigest::of("genpack", "0.1.3", Some("ab"), &json!({"a": 1}))
    }

    fn record(status: &str, digest: Option<&str>, pack: Option<&str>) -> ReleaseRecord {
        ReleaseRecord {
            secret: "sh.helm.release.v1.test.v2".into(),
            revision: 2,
            status: status.into(),
            pack: pack.map(Into::into),
            digest: digest.map(Into::into),
        }
    }

    fn facts<'a>(release: Option<&'a ReleaseRecord>, status: &'a PackStatus) -> Facts<'a> {
        Facts {
            pack: "test",
            release,
            status,
            requested_at: None,
            since_last_attempt: None,
            rollback_on_failure: false,
        }
    }

    #[test]
    fn digest_covers_every_input_and_is_order_independent() {
        let d = digest();
        assert_eq!(d.as_str().len(), 64);
        assert_eq!(d.label().len(), 32);
        assert_eq!(
            d,
            ReleaseDigest::of("genpack", "0.1.3", Some("ab"), &json!({"a": 1}))
        );
        for other in [
            ReleaseDigest::of("genpackx", "0.1.3", Some("ab"), &json!({"a": 1})),
            ReleaseDigest::of("genpack", "0.1.4", Some("ab"), &json!({"a": 1})),
            ReleaseDigest::of("genpack", "0.1.3", Some("ac"), &json!({"a": 1})),
            ReleaseDigest::of("genpack", "0.1.3", None, &json!({"a": 1})),
            ReleaseDigest::of("genpack", "0.1.3", Some("ab"), &json!({"a": "1"})),
            // Boundaries are length-prefixed: moving a character between parts changes the digest.
            ReleaseDigest::of("genpack0", ".1.3", Some("ab"), &json!({"a": 1})),
        ] {
            assert_ne!(d, other);
        }
        let a: Value = serde_json::from_str(r#"{"x": 1, "y": {"b": 2, "a": 1}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"y": {"a": 1, "b": 2}, "x": 1}"#).unwrap();
        assert_eq!(
            ReleaseDigest::of("c", "1", None, &a),
            ReleaseDigest::of("c", "1", None, &b)
        );
    }

    #[test]
    fn a_salt_changes_the_digest_and_none_keeps_it() {
        let d = || ReleaseDigest::of("c", "1", None, &json!({"password": "guessable"}));
        assert_eq!(d().salted(&[]), d());
        let a = d().salted(&["uid-a".into()]);
        assert_ne!(a, d());
        assert_eq!(a, d().salted(&["uid-a".into()]));
        assert_ne!(a, d().salted(&["uid-b".into()]));
        assert_eq!(a.as_str().len(), 64);
    }

    #[test]
    fn decisions() {
        let d = digest();
        let status = PackStatus::default();
        let mine = record("deployed", Some(d.label()), Some("test"));
        assert_eq!(decide(&d, facts(Some(&mine), &status)), Plan::UpToDate);
        assert_eq!(
            decide(&d, facts(None, &status)),
            Plan::Apply {
                install: true,
                recover: false
            }
        );
        let other_digest = record("deployed", Some("0000"), Some("test"));
        assert_eq!(
            decide(&d, facts(Some(&other_digest), &status)),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
        let foreign = record("deployed", None, None);
        assert_eq!(decide(&d, facts(Some(&foreign), &status)), Plan::NotOwned);
        let other_pack = record("deployed", Some(d.label()), Some("other"));
        assert_eq!(
            decide(&d, facts(Some(&other_pack), &status)),
            Plan::NotOwned
        );
        let stuck = record("pending-upgrade", Some(d.label()), Some("test"));
        assert_eq!(
            decide(&d, facts(Some(&stuck), &status)),
            Plan::Apply {
                install: false,
                recover: true
            }
        );
        let failed = record("failed", Some(d.label()), Some("test"));
        assert_eq!(
            decide(&d, facts(Some(&failed), &status)),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
    }

    #[test]
    fn requested_at_forces_an_upgrade_once() {
        let d = digest();
        let mine = record("deployed", Some(d.label()), Some("test"));
        let mut status = PackStatus::default();
        let mut f = facts(Some(&mine), &status);
        f.requested_at = Some("1");
        assert_eq!(
            decide(&d, f),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
        status.last_handled_reconcile_at = Some("1".into());
        let mut f = facts(Some(&mine), &status);
        f.requested_at = Some("1");
        assert_eq!(decide(&d, f), Plan::UpToDate);
    }

    #[test]
    fn failures_back_off_until_the_digest_changes() {
        let d = digest();
        let failed = record("failed", Some(d.label()), Some("test"));
        let status = PackStatus {
            last_attempted_digest: Some(d.as_str().into()),
            failures: Some(3),
            ..Default::default()
        };
        let mut f = facts(Some(&failed), &status);
        f.since_last_attempt = Some(Duration::from_secs(15));
        assert_eq!(decide(&d, f), Plan::Wait(Duration::from_secs(25)));
        f.since_last_attempt = Some(Duration::from_secs(41));
        assert_eq!(
            decide(&d, f),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
        // A new spec (digest) is tried at once.
        let new = ReleaseDigest::of("genpack", "0.1.3", Some("ab"), &json!({"a": 2}));
        f.since_last_attempt = Some(Duration::from_secs(1));
        assert_eq!(
            decide(&new, f),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
        // So is an explicit request.
        f.requested_at = Some("now");
        assert_eq!(
            decide(&d, f),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
    }

    #[test]
    fn rollback_holds_until_something_changes() {
        let d = digest();
        let deployed_old = record("deployed", Some("old"), Some("test"));
        let status = PackStatus {
            state: Some(PackState::ApplyFailed),
            last_attempted_digest: Some(d.as_str().into()),
            failures: Some(1),
            history: vec![PackAttempt {
                action: "Rollback".into(),
                version: Some("0.1.0".into()),
                digest: None,
                result: "Succeeded".into(),
                revision: Some(4),
                time: "t".into(),
                duration_seconds: None,
                message: None,
            }],
            ..Default::default()
        };
        let mut f = facts(Some(&deployed_old), &status);
        f.rollback_on_failure = true;
        f.since_last_attempt = Some(Duration::from_secs(10_000));
        assert_eq!(decide(&d, f), Plan::HeldAfterRollback);
        f.rollback_on_failure = false;
        assert_eq!(
            decide(&d, f),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
    }

    #[test]
    fn a_stale_status_cannot_skip_the_backoff_once_confirmed() {
        let d = digest();
        // Helm recorded the failed upgrade; the cached status still predates the failure...
        let failed = record("failed", Some(d.label()), Some("test"));
        let cached = PackStatus {
            revision: Some(1),
            ..Default::default()
        };
        let stale = decide(&d, facts(Some(&failed), &cached));
        assert!(
            confirm_on_stored(&stale),
            "running helm on the cached status: {stale:?}"
        );
        // ...while the stored one says it failed just now: wait.
        let stored = PackStatus {
            revision: Some(1),
            last_attempted_digest: Some(d.as_str().into()),
            failures: Some(1),
            ..Default::default()
        };
        let mut f = facts(Some(&failed), &stored);
        f.since_last_attempt = Some(Duration::from_secs(1));
        let confirmed = decide(&d, f);
        assert_eq!(confirmed, Plan::Wait(Duration::from_secs(9)));
        assert!(!confirm_on_stored(&confirmed));
        // A revision the Pack just made looks made outside on the cached status (revision 1); the
        // stored status (revision 2) says it is up to date.
        let deployed = record("deployed", Some(d.label()), Some("test"));
        let stale = decide(&d, facts(Some(&deployed), &cached));
        assert!(confirm_on_stored(&stale), "{stale:?}");
        let stored = PackStatus {
            revision: Some(2),
            ..Default::default()
        };
        assert_eq!(decide(&d, facts(Some(&deployed), &stored)), Plan::UpToDate);
        // Decisions that run no Helm are acted on as they are.
        for plan in [
            Plan::UpToDate,
            Plan::NotOwned,
            Plan::Wait(Duration::from_secs(1)),
            Plan::HeldAfterRollback,
        ] {
            assert!(!confirm_on_stored(&plan), "{plan:?}");
        }
    }

    #[test]
    fn a_revision_made_outside_the_pack_is_upgraded_back() {
        let d = digest();
        // Revision 2 carries the Pack's labels (Helm copied them), but the Pack made revision 1.
        let mine = record("deployed", Some(d.label()), Some("test"));
        let mut status = PackStatus {
            revision: Some(1),
            ..Default::default()
        };
        assert!(changed_outside(&d, Some(&mine), Some(1)));
        assert_eq!(
            decide(&d, facts(Some(&mine), &status)),
            Plan::Apply {
                install: false,
                recover: false
            }
        );
        status.revision = Some(2);
        assert_eq!(decide(&d, facts(Some(&mine), &status)), Plan::UpToDate);
        // Unknown (no revision recorded yet): trusted.
        status.revision = None;
        assert_eq!(decide(&d, facts(Some(&mine), &status)), Plan::UpToDate);
        // Another digest or a release not deployed is not "changed outside": the usual rules apply.
        let other = ReleaseDigest::of("genpack", "0.1.3", Some("ab"), &json!({"a": 2}));
        assert!(!changed_outside(&other, Some(&mine), Some(1)));
        let failed = record("failed", Some(d.label()), Some("test"));
        assert!(!changed_outside(&d, Some(&failed), Some(1)));
        assert!(!changed_outside(&d, None, Some(1)));
    }

    #[test]
    fn failed_uninstalls_back_off() {
        let mut status = PackStatus {
            state: Some(PackState::Removing),
            failures: Some(3),
            ..Default::default()
        };
        let recent = Some(Duration::from_secs(5));
        assert_eq!(uninstall_wait(&status, recent), None, "first attempt");
        status.state = Some(PackState::RemoveFailed);
        status.failures = Some(1);
        assert_eq!(
            uninstall_wait(&status, recent),
            Some(Duration::from_secs(5))
        );
        status.failures = Some(3);
        assert_eq!(
            uninstall_wait(&status, recent),
            Some(Duration::from_secs(35))
        );
        assert_eq!(uninstall_wait(&status, Some(Duration::from_secs(40))), None);
        assert_eq!(uninstall_wait(&status, None), None, "unknown time: retry");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(4), Duration::from_secs(80));
        assert_eq!(backoff(7), Duration::from_secs(600));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(600));
    }
}
