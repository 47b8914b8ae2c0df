//! What one reconcile did to a workload ([`Outcome`]) and how that is reported: the Event on the
//! workload, the `redeploys` metric result and when to look again ([`report`], pure).

use std::time::{Duration, Instant};

use kube::runtime::{controller::Action, events::EventType};

use crate::index::WorkloadKind;

/// How often a paused Deployment with a pending change is looked at again.
pub const PAUSED_RECHECK: Duration = Duration::from_secs(10);
/// Shortest wait for a rollout held back by the rate limit.
const RATE_LIMITED_MIN_WAIT: Duration = Duration::from_millis(100);

/// What executing a [`crate::state::Plan`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed since the record.
    Unchanged,
    /// A baseline was recorded.
    Recorded,
    /// The deletions of these watched objects were recorded; nothing rolled.
    RecordedDeleted(Vec<String>),
    /// A change waits for its delay to pass; look again after this.
    Waiting(Duration),
    /// A due change is held back by the global rate limit this long.
    RateLimited(Duration),
    /// Rolled out because `changed` changed: the workloads patched (for a Pack, `kind/name` of each
    /// workload of its release), and when the change was first seen.
    Rolled {
        changed: Vec<String>,
        workloads: Vec<String>,
        since: Instant,
    },
    /// `changed` changed but the Deployment is paused: nothing patched.
    Paused { changed: Vec<String> },
}

/// An Event to publish on the workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// How an [`Outcome`] is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub event: Option<EventNote>,
    /// The `result` label of the `redeploys` metric to count, if any.
    pub result: Option<&'static str>,
    pub action: Action,
}

/// The Event, metric result and requeue of `outcome` on a workload of `kind`.
pub fn report(kind: WorkloadKind, outcome: &Outcome) -> Report {
    let normal = |reason, note| {
        Some(EventNote {
            type_: EventType::Normal,
            reason,
            note,
        })
    };
    let (event, result, action) = match outcome {
        Outcome::Unchanged | Outcome::Recorded => (None, None, Action::await_change()),
        Outcome::RecordedDeleted(deleted) => (
            normal(
                "WatchedObjectDeleted",
                format!(
                    "{} deleted; not redeploying (pods that need it would fail to start). Recreating it redeploys.",
                    deleted.join(", ")
                ),
            ),
            None,
            Action::await_change(),
        ),
        Outcome::Waiting(remaining) => (None, None, Action::requeue(*remaining)),
        Outcome::RateLimited(wait) => (
            None,
            Some("rate_limited"),
            Action::requeue((*wait).max(RATE_LIMITED_MIN_WAIT)),
        ),
        Outcome::Rolled {
            changed, workloads, ..
        } => {
            let what = if kind == WorkloadKind::Pack {
                format!(
                    " ({} workload(s): {})",
                    workloads.len(),
                    workloads.join(", ")
                )
            } else {
                String::new()
            };
            let note = format!("{} changed; rolled out{what}", changed.join(", "));
            (
                normal("Redeployed", note),
                Some("rolled"),
                Action::await_change(),
            )
        }
        Outcome::Paused { changed } => (
            normal(
                "RedeployPaused",
                format!(
                    "{} changed, but the Deployment is paused: it rolls out after `kubectl rollout resume`",
                    changed.join(", ")
                ),
            ),
            Some("paused"),
            Action::requeue(PAUSED_RECHECK),
        ),
    };
    Report {
        event,
        result,
        action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    // One table (longer than a function should be): every outcome's Event, metric and requeue side by
    // side, as a reader of `kubectl describe` and of the metrics sees them.
    #[test]
    fn reports() {
        let now = Instant::now();
        let quiet = |action| Report {
            event: None,
            result: None,
            action,
        };
        let event = |reason, note: &str| {
            Some(EventNote {
                type_: EventType::Normal,
                reason,
                note: note.into(),
            })
        };
        let cases = vec![
            (
                "unchanged",
                WorkloadKind::Deployment,
                Outcome::Unchanged,
                quiet(Action::await_change()),
            ),
            (
                "baseline",
                WorkloadKind::StatefulSet,
                Outcome::Recorded,
                quiet(Action::await_change()),
            ),
            (
                "waiting",
                WorkloadKind::Deployment,
                Outcome::Waiting(Duration::from_secs(3)),
                quiet(Action::requeue(Duration::from_secs(3))),
            ),
            (
                "deleted",
                WorkloadKind::DaemonSet,
                Outcome::RecordedDeleted(names(&["configmap/a", "secret/b"])),
                Report {
                    event: event(
                        "WatchedObjectDeleted",
                        "configmap/a, secret/b deleted; not redeploying (pods that need it would fail to start). Recreating it redeploys.",
                    ),
                    result: None,
                    action: Action::await_change(),
                },
            ),
            (
                "rate limited, briefly",
                WorkloadKind::Deployment,
                Outcome::RateLimited(Duration::from_millis(1)),
                Report {
                    event: None,
                    result: Some("rate_limited"),
                    action: Action::requeue(Duration::from_millis(100)),
                },
            ),
            (
                "rate limited",
                WorkloadKind::Deployment,
                Outcome::RateLimited(Duration::from_secs(2)),
                Report {
                    event: None,
                    result: Some("rate_limited"),
                    action: Action::requeue(Duration::from_secs(2)),
                },
            ),
            (
                "rolled",
                WorkloadKind::Deployment,
                Outcome::Rolled {
                    changed: names(&["configmap/a", "secret/b"]),
                    workloads: names(&["web"]),
                    since: now,
                },
                Report {
                    event: event("Redeployed", "configmap/a, secret/b changed; rolled out"),
                    result: Some("rolled"),
                    action: Action::await_change(),
                },
            ),
            (
                "a Pack names its workloads",
                WorkloadKind::Pack,
                Outcome::Rolled {
                    changed: names(&["secret/b"]),
                    workloads: names(&["Deployment/web", "StatefulSet/db"]),
                    since: now,
                },
                Report {
                    event: event(
                        "Redeployed",
                        "secret/b changed; rolled out (2 workload(s): Deployment/web, StatefulSet/db)",
                    ),
                    result: Some("rolled"),
                    action: Action::await_change(),
                },
            ),
            (
                "paused",
                WorkloadKind::Deployment,
                Outcome::Paused {
                    changed: names(&["configmap/a"]),
                },
                Report {
                    event: event(
                        "RedeployPaused",
                        "configmap/a changed, but the Deployment is paused: it rolls out after `kubectl rollout resume`",
                    ),
                    result: Some("paused"),
                    action: Action::requeue(PAUSED_RECHECK),
                },
            ),
        ];
        for (name, kind, outcome, expected) in cases {
            assert_eq!(report(kind, &outcome), expected, "{name}");
        }
    }
}
