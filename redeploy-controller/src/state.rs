//! What was last applied, recorded on the workload itself (not its pod template), and the decision
//! "does this workload need a rollout now". Keeping the record on the workload makes the controller
//! level-triggered: a restart or a leader change re-reads it, so it neither misses a change made while
//! it was down nor restarts twice.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::{
    annotation::{WATCH_TO_REDEPLOY, WatchTarget, parse_watch_targets},
    cli::parse_duration,
};
use sha2::{Digest, Sha256};

use crate::podrefs::{AUTO_ANNOTATION, parse_auto};

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

/// What a workload's annotations ask for: the explicit list, auto discovery, and the delay.
#[derive(Debug, PartialEq, Eq)]
pub struct WatchRequest {
    /// `watch-to-redeploy` (whole objects).
    pub explicit: Vec<WatchTarget>,
    /// `watch-to-redeploy-auto: "true"`: also what the pod template references.
    pub auto: bool,
    /// `redeploy-delay`, else the controller's default.
    pub delay: Duration,
}

/// An annotation whose value is invalid: nothing is acted on until it is fixed.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidAnnotation {
    /// `annotation=value`, so a workload is reported once per bad value.
    pub seen: String,
    /// What is wrong and what to write instead (Event note, log).
    pub message: String,
}

/// Reads the annotations: `Ok(None)` when the workload asks for nothing (no list, auto absent or
/// `"false"`), an error naming the first invalid annotation otherwise. An invalid `redeploy-delay` is
/// an error too, not the default: a typo must not go unnoticed (the admission policy refuses it).
pub fn watch_request(
    annotations: &BTreeMap<String, String>,
    default_delay: Duration,
) -> Result<Option<WatchRequest>, InvalidAnnotation> {
    let invalid = |name: &str, value: &str, message: String| InvalidAnnotation {
        seen: format!("{name}={value}"),
        message: format!("{message}. Nothing is watched until it is fixed"),
    };
    let explicit = match annotations.get(WATCH_TO_REDEPLOY) {
        None => vec![],
        Some(v) => parse_watch_targets(v).map_err(|e| {
            invalid(
                WATCH_TO_REDEPLOY,
                v,
                format!("{e}. A valid value looks like: configmap/my-config, secret/my-secret"),
            )
        })?,
    };
    let auto = match annotations.get(AUTO_ANNOTATION) {
        None => false,
        Some(v) => parse_auto(v).map_err(|e| invalid(AUTO_ANNOTATION, v, e))?,
    };
    if explicit.is_empty() && !auto {
        return Ok(None);
    }
    let delay = match annotations.get(DELAY_ANNOTATION) {
        None => default_delay,
        Some(v) => parse_duration(v).map_err(|e| {
            invalid(
                DELAY_ANNOTATION,
                v,
                format!("annotation {DELAY_ANNOTATION}: {e}"),
            )
        })?,
    };
    Ok(Some(WatchRequest {
        explicit,
        auto,
        delay,
    }))
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
    fn watch_requests() {
        let default = Duration::from_secs(5);
        let with = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let req = |pairs: &[(&str, &str)]| watch_request(&with(pairs), default);
        let cm = WatchTarget {
            kind: common::annotation::WatchKind::ConfigMap,
            name: "a".into(),
        };
        assert_eq!(req(&[]), Ok(None));
        assert_eq!(req(&[(AUTO_ANNOTATION, "false")]), Ok(None));
        assert_eq!(
            req(&[(DELAY_ANNOTATION, "abc")]),
            Ok(None),
            "a delay alone asks for nothing"
        );
        let ok = |explicit: Vec<WatchTarget>, auto, delay| {
            Ok(Some(WatchRequest {
                explicit,
                auto,
                delay,
            }))
        };
        assert_eq!(
            req(&[(WATCH_TO_REDEPLOY, "configmap/a")]),
            ok(vec![cm.clone()], false, default)
        );
        assert_eq!(
            req(&[(AUTO_ANNOTATION, "true"), (DELAY_ANNOTATION, "30s")]),
            ok(vec![], true, Duration::from_secs(30))
        );
        assert_eq!(
            req(&[
                (WATCH_TO_REDEPLOY, "configmap/a"),
                (AUTO_ANNOTATION, "true"),
                (DELAY_ANNOTATION, "0s")
            ]),
            ok(vec![cm], true, Duration::ZERO)
        );
        // (annotations, the annotation blamed, what the message says)
        type Bad<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let bad: Vec<Bad> = vec![
            (
                &[(WATCH_TO_REDEPLOY, "configmap/A")],
                WATCH_TO_REDEPLOY,
                "configmap/my-config",
            ),
            (
                &[(AUTO_ANNOTATION, "yes")],
                AUTO_ANNOTATION,
                "\"true\" or \"false\"",
            ),
            (
                &[(AUTO_ANNOTATION, "true"), (DELAY_ANNOTATION, "abc")],
                DELAY_ANNOTATION,
                "invalid duration \"abc\"",
            ),
        ];
        for (pairs, annotation, says) in bad {
            let e = req(pairs).unwrap_err();
            assert!(e.seen.starts_with(annotation), "{pairs:?}: {e:?}");
            assert!(e.message.contains(says), "{pairs:?}: {e:?}");
            assert!(
                e.message.ends_with("Nothing is watched until it is fixed"),
                "{e:?}"
            );
        }
    }
}
