//! What was last applied, recorded on the workload itself (not its pod template), and the decision
//! "does this workload need a rollout now". Keeping the record on the workload makes the controller
//! level-triggered: a restart or a leader change re-reads it, so it neither misses a change made while
//! it was down nor restarts twice.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::cli::parse_duration;
use sha2::{Digest, Sha256};

/// Annotation on the workload's metadata holding `{"configmap/name": "sha256:…", "secret/x": "absent"}`.
pub const HASHES_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/watched-hashes";
/// Annotation on the pod template that a rollout sets: a hash of the watched objects' hashes. Being a
/// function of the data (not a timestamp), re-applying it is a no-op, so a retried or repeated rollout
/// never restarts pods twice for one change.
pub const CONFIG_HASH_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/config-hash";
/// The same, set on the workloads of a Pack's Helm release when the Pack carries the annotation.
pub const PACK_CONFIG_HASH_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/pack-config-hash";
/// Optional per-workload override of the delay, e.g. `30s`.
pub const DELAY_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/redeploy-delay";

/// Recorded value of a watched object that did not exist.
pub const ABSENT: &str = "absent";

/// Per-source content hashes, keyed by `kind/name`.
pub type Hashes = BTreeMap<String, String>;

/// SHA-256 over the sorted keys and values of `data` and `binaryData` (a Secret's `data`). Metadata is
/// not part of it, so label- or annotation-only writes never look like a change.
pub fn content_hash<'a>(
    data: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    binary: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> String {
    let mut entries: Vec<(u8, &str, &[u8])> = data.into_iter().map(|(k, v)| (0, k, v)).collect();
    entries.extend(binary.into_iter().map(|(k, v)| (1, k, v)));
    entries.sort();
    let mut h = Sha256::new();
    for (section, key, value) in entries {
        // Length-prefixed so no two different maps hash alike.
        h.update([section]);
        h.update((key.len() as u64).to_be_bytes());
        h.update(key.as_bytes());
        h.update((value.len() as u64).to_be_bytes());
        h.update(value);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The pod-template value for a set of source hashes.
pub fn combined_hash(hashes: &Hashes) -> String {
    content_hash(hashes.iter().map(|(k, v)| (k.as_str(), v.as_bytes())), [])
}

/// Parses the recorded hashes; `None` when absent or unreadable (treated as first sight).
pub fn parse_recorded(value: Option<&str>) -> Option<Hashes> {
    serde_json::from_str(value?).ok()
}

/// What to do with a workload, given the recorded and the current hashes of what it watches.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// First sight (or new sources added to the annotation): record the hashes, do not roll.
    Record,
    /// Nothing changed and the record is up to date.
    Nothing,
    /// Only deletions of watched objects: record them, do not roll (pods that need the object would fail).
    RecordDeleted(Vec<String>),
    /// Data changed (or a missing object appeared): roll out, naming the changed sources.
    Rollout(Vec<String>),
}

/// Compares `recorded` with `current` (both keyed `kind/name`).
pub fn decide(recorded: Option<&Hashes>, current: &Hashes) -> Decision {
    let Some(recorded) = recorded else {
        return Decision::Record;
    };
    let mut changed = vec![];
    let mut deleted = vec![];
    let mut added = false;
    for (source, hash) in current {
        match recorded.get(source) {
            None => added = true, // newly watched: baseline, not a change
            Some(old) if old == hash => {}
            Some(_) if hash == ABSENT => deleted.push(source.clone()),
            Some(_) => changed.push(source.clone()),
        }
    }
    let stale = recorded.keys().any(|k| !current.contains_key(k));
    if !changed.is_empty() {
        Decision::Rollout(changed)
    } else if !deleted.is_empty() {
        Decision::RecordDeleted(deleted)
    } else if added || stale {
        Decision::Record
    } else {
        Decision::Nothing
    }
}

/// What one reconcile does about a workload: the [`Decision`] with the change's delay applied.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing changed and the record is up to date.
    Nothing,
    /// Record a baseline (first sight, or the watched set changed); no rollout.
    Record,
    /// Record the deletions of these watched objects; no rollout.
    RecordDeleted(Vec<String>),
    /// A change first seen at `since` is not due yet: look again in `remaining`.
    Wait { since: Instant, remaining: Duration },
    /// A change first seen at `since` is due: roll out (the rate limit permitting), naming `changed`.
    Rollout {
        since: Instant,
        changed: Vec<String>,
    },
}

/// Applies the delay to `decision`: a change first seen at `pending_since` (now when it was not pending)
/// rolls out once `delay` has passed since then, so all changes within the delay make one rollout.
pub fn plan(
    decision: Decision,
    pending_since: Option<Instant>,
    delay: Duration,
    now: Instant,
) -> Plan {
    match decision {
        Decision::Nothing => Plan::Nothing,
        Decision::Record => Plan::Record,
        Decision::RecordDeleted(deleted) => Plan::RecordDeleted(deleted),
        Decision::Rollout(changed) => {
            let since = pending_since.unwrap_or(now);
            let due = since + delay;
            if now < due {
                Plan::Wait {
                    since,
                    remaining: due - now,
                }
            } else {
                Plan::Rollout { since, changed }
            }
        }
    }
}

/// The workload's own delay ([`DELAY_ANNOTATION`]), else `default`; an unreadable value counts as none.
pub fn delay(annotations: &BTreeMap<String, String>, default: Duration) -> Duration {
    annotations
        .get(DELAY_ANNOTATION)
        .and_then(|d| parse_duration(d).ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Hashes {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hash_ignores_order_and_separates_sections() {
        let a = content_hash([("a", b"1".as_slice()), ("b", b"2".as_slice())], []);
        let b = content_hash([("b", b"2".as_slice()), ("a", b"1".as_slice())], []);
        assert_eq!(a, b);
        assert!(a.starts_with("sha256:") && a.len() == 71, "{a}");
        assert_ne!(
            a,
            content_hash([("a", b"1".as_slice())], [("b", b"2".as_slice())])
        );
        assert_ne!(
            content_hash([("ab", b"".as_slice())], []),
            content_hash([("a", b"b".as_slice())], [])
        );
        assert_ne!(
            a,
            content_hash([("a", b"1".as_slice()), ("b", b"3".as_slice())], [])
        );
    }

    #[test]
    fn decisions() {
        let cur = h(&[("configmap/a", "1"), ("secret/b", "2")]);
        assert_eq!(
            decide(None, &cur),
            Decision::Record,
            "first sight records a baseline"
        );
        assert_eq!(decide(Some(&cur), &cur), Decision::Nothing);
        assert_eq!(
            decide(Some(&h(&[("configmap/a", "0"), ("secret/b", "2")])), &cur),
            Decision::Rollout(vec!["configmap/a".into()])
        );
        assert_eq!(
            decide(
                Some(&h(&[("configmap/a", ABSENT), ("secret/b", "2")])),
                &cur
            ),
            Decision::Rollout(vec!["configmap/a".into()]),
            "a missing object that appears is a change"
        );
        let deleted = h(&[("configmap/a", ABSENT), ("secret/b", "2")]);
        assert_eq!(
            decide(Some(&cur), &deleted),
            Decision::RecordDeleted(vec!["configmap/a".into()])
        );
        assert_eq!(
            decide(Some(&h(&[("configmap/a", "1")])), &cur),
            Decision::Record,
            "newly watched source"
        );
        assert_eq!(
            decide(
                Some(&h(&[
                    ("configmap/a", "1"),
                    ("secret/b", "2"),
                    ("secret/old", "9")
                ])),
                &cur
            ),
            Decision::Record
        );
        assert_eq!(
            parse_recorded(Some("{\"configmap/a\":\"1\"}")),
            Some(h(&[("configmap/a", "1")]))
        );
        assert_eq!(parse_recorded(Some("not json")), None);
    }

    #[test]
    fn plans() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let rollout = || Decision::Rollout(vec!["configmap/a".into()]);
        let cases: Vec<(&str, Decision, Option<Instant>, Duration, Plan)> = vec![
            ("nothing", Decision::Nothing, None, s(5), Plan::Nothing),
            (
                "nothing, even with a stale pending change",
                Decision::Nothing,
                Some(now - s(9)),
                s(5),
                Plan::Nothing,
            ),
            ("baseline", Decision::Record, None, s(5), Plan::Record),
            (
                "deletions",
                Decision::RecordDeleted(vec!["secret/b".into()]),
                None,
                s(5),
                Plan::RecordDeleted(vec!["secret/b".into()]),
            ),
            (
                "a new change waits the whole delay",
                rollout(),
                None,
                s(5),
                Plan::Wait {
                    since: now,
                    remaining: s(5),
                },
            ),
            (
                "a pending change waits the rest of it",
                rollout(),
                Some(now - s(2)),
                s(5),
                Plan::Wait {
                    since: now - s(2),
                    remaining: s(3),
                },
            ),
            (
                "a pending change is due once the delay has passed",
                rollout(),
                Some(now - s(5)),
                s(5),
                Plan::Rollout {
                    since: now - s(5),
                    changed: vec!["configmap/a".into()],
                },
            ),
            (
                "no delay rolls out at once",
                rollout(),
                None,
                Duration::ZERO,
                Plan::Rollout {
                    since: now,
                    changed: vec!["configmap/a".into()],
                },
            ),
        ];
        for (name, decision, pending, delay, expected) in cases {
            assert_eq!(plan(decision, pending, delay, now), expected, "{name}");
        }
    }

    #[test]
    fn delays() {
        let default = Duration::from_secs(5);
        let with = |v: &str| BTreeMap::from([(DELAY_ANNOTATION.to_owned(), v.to_owned())]);
        assert_eq!(delay(&BTreeMap::new(), default), default);
        assert_eq!(delay(&with("30s"), default), Duration::from_secs(30));
        assert_eq!(delay(&with("0s"), default), Duration::ZERO);
        assert_eq!(
            delay(&with("soon"), default),
            default,
            "unreadable: the default"
        );
    }
}
