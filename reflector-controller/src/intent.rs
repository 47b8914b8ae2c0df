//! What one sync of a reflector means to do, decided from plain data before any request: from
//! its source (present? a type we copy?), its target plan ([`crate::targets`]) and its rivals for the
//! same target name, either a reason it is blocked or an [`Intent`] per target namespace. Pure; the
//! reconcile executes the decision ([`crate::reconcile`]).
//!
//! Also the readings of a reflector every module shares: its key, its target name, its claim.

use std::collections::{BTreeMap, BTreeSet};

use common::crd::ReflectorSpec;
use kube::{Resource, ResourceExt};

use crate::{
    copy::{self, ReflectorKey},
    kind::Reflected,
    status::{Blocked, TargetOutcome, TargetState},
    targets::{
        self, ACCEPT_LABEL, Claimant, NamespaceInfo, Placement, REFLECT_FROM_ANNOTATION,
        TargetPolicy,
    },
};

/// `<namespace>/<name>` of a reflector.
pub fn key_of(r: &impl Resource) -> ReflectorKey {
    ReflectorKey {
        namespace: r.namespace().unwrap_or_default(),
        name: r.name_any(),
    }
}

/// The name of a reflector's copies: `targetName`, else the source's name.
pub fn target_name(spec: &ReflectorSpec) -> &str {
    spec.target_name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(&spec.source.name)
}

/// A reflector as a claimant of its targets (the oldest wins).
pub fn claimant(r: &impl Resource) -> Claimant {
    Claimant {
        reflector: key_of(r),
        created: r.meta().creation_timestamp.clone(),
    }
}

/// What a sync does at one target namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Make the copy there match the source (created, updated or replaced, as what is there asks).
    Write,
    /// An older reflector claims the target too and holds it: not written here. A copy of ours
    /// already there stays until the winner takes it over, so the namespace never goes without one.
    Yield(ReflectorKey),
    /// The placement refuses a copy: the namespace is missing, opted out, denied, has not consented,
    /// or the copy would be the source.
    Refuse(Placement),
}

/// What one sync is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncPlan<'a, K> {
    /// Nothing is copied. `keep_copies`: the copies made before stay (an invalid spec, until it is
    /// fixed) or go (copies follow their source: a deleted or refused source takes them along).
    /// `targets`: the namespaces a copy would go to once unblocked (the N of `0/N`).
    Blocked {
        why: Blocked,
        keep_copies: bool,
        targets: usize,
    },
    /// Copy `source` as each target's intent says.
    Copy {
        source: &'a K,
        targets: Vec<(String, Intent)>,
    },
}

impl<K> SyncPlan<'_, K> {
    pub fn blocked(&self) -> Option<&Blocked> {
        match self {
            SyncPlan::Blocked { why, .. } => Some(why),
            SyncPlan::Copy { .. } => None,
        }
    }

    /// How many targets a blocked plan would copy into (0 for a plan that copies: its outcomes count).
    pub fn blocked_targets(&self) -> usize {
        match self {
            SyncPlan::Blocked { targets, .. } => *targets,
            SyncPlan::Copy { .. } => 0,
        }
    }

    /// The namespaces where a copy of ours (under the target name) may stay; every other copy of ours
    /// goes. None: no copy goes.
    pub fn keep(&self) -> Option<BTreeSet<String>> {
        match self {
            SyncPlan::Blocked {
                keep_copies: true, ..
            } => None,
            SyncPlan::Blocked { .. } => Some(BTreeSet::new()),
            SyncPlan::Copy { targets, .. } => Some(
                targets
                    .iter()
                    .filter(|(_, i)| matches!(i, Intent::Write | Intent::Yield(_)))
                    .map(|(ns, _)| ns.clone())
                    .collect(),
            ),
        }
    }
}

/// Decides what a sync of `reflector` does. `source`: its source as read now (None: not found);
/// `rivals`: the other reflectors of its kind with the same target name, each with its plan (asked
/// for only when there is a target to claim).
pub fn decide<'a, K: Reflected>(
    reflector: &K::Reflector,
    source: Option<&'a K>,
    namespaces: &BTreeMap<String, NamespaceInfo>,
    policy: &TargetPolicy,
    rivals: impl FnOnce() -> Vec<(Claimant, BTreeMap<String, Placement>)>,
) -> SyncPlan<'a, K> {
    let key = key_of(reflector);
    let spec = K::spec(reflector);
    let source_name = &spec.source.name;
    let planned = targets::plan(
        &spec.targets,
        &key.namespace,
        source_name,
        target_name(spec),
        namespaces,
        policy,
    );
    // A blocked reflector still shows how many targets it has (0/N, not 0/0): those `desired` counts.
    let copies = |plan: &BTreeMap<String, Placement>| {
        let desired = |p: &&Placement| matches!(p, Placement::Copy | Placement::NamespaceNotFound);
        plan.values().filter(desired).count()
    };
    let targets = planned.as_ref().map(copies).unwrap_or_default();
    let Some(source) = source else {
        return SyncPlan::Blocked {
            why: Blocked::SourceNotFound(format!(
                "{} {}/{source_name} not found; copies are removed until it exists again",
                K::KIND,
                key.namespace
            )),
            keep_copies: false,
            targets,
        };
    };
    // A source that another controller would fight over in every target namespace is refused, and
    // copies made before are removed (as for a deleted source).
    if let Some(why) = copy::unsupported(source) {
        return SyncPlan::Blocked {
            why: Blocked::SourceTypeUnsupported(why),
            keep_copies: false,
            targets,
        };
    }
    let plan = match planned {
        Ok(plan) => plan,
        Err(e) => {
            return SyncPlan::Blocked {
                why: Blocked::InvalidSpec(e.to_string()),
                keep_copies: true,
                targets: 0,
            };
        }
    };
    let lost = targets::lost(&claimant(reflector), &plan, &rivals());
    let targets = plan
        .into_iter()
        .map(|(ns, placement)| {
            let intent = match (placement, lost.get(&ns)) {
                (Placement::Copy, None) => Intent::Write,
                (Placement::Copy, Some(winner)) => Intent::Yield(winner.clone()),
                (other, _) => Intent::Refuse(other),
            };
            (ns, intent)
        })
        .collect();
    SyncPlan::Copy { source, targets }
}

/// The outcome of a target that an older reflector of kind `K` (`winner`) holds.
pub fn yielded<K: Reflected>(ns: &str, target_name: &str, winner: &ReflectorKey) -> TargetOutcome {
    let kind = K::REFLECTOR_KIND;
    TargetOutcome {
        namespace: ns.to_owned(),
        state: TargetState::Conflict,
        message: Some(format!(
            "{kind} {winner} also copies into {ns}/{target_name} and holds it (the oldest \
             {kind} claiming a target wins); not written by this one"
        )),
    }
}

/// The outcome of a target whose placement refuses a copy, for a source in `source_namespace`.
pub fn refused(
    ns: &str,
    placement: &Placement,
    target_name: &str,
    source_namespace: &str,
) -> TargetOutcome {
    let (state, message) = match placement {
        Placement::NamespaceNotFound => (
            TargetState::NamespaceNotFound,
            "namespace does not exist; the copy is made when it is created".to_owned(),
        ),
        Placement::OptedOut => (
            TargetState::OptedOut,
            format!("namespace is labelled {ACCEPT_LABEL}=false"),
        ),
        Placement::Denied => (
            TargetState::Denied,
            "the controller's --allow/--deny-target-namespaces refuse this namespace".to_owned(),
        ),
        Placement::NotConsented => (
            TargetState::NotConsented,
            format!(
                "namespace {ns} has not consented to copies from {source_namespace} (the controller \
                 runs with --require-consent); its owner can consent with: kubectl annotate \
                 namespace {ns} {REFLECT_FROM_ANNOTATION}={source_namespace} (if the annotation \
                 exists, add {source_namespace} to its list with --overwrite)"
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use common::crd::{
        SecretReflector,
        reflector::{SecretReflectorSpec, SourceReference, Targets},
    };
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::{
        apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, Time},
        jiff::Timestamp,
    };
    use kube::api::ObjectMeta;

    fn reflector(name: &str, created: i64, namespaces: &[&str]) -> SecretReflector {
        let mut r = SecretReflector::new(
            name,
            SecretReflectorSpec {
                source: SourceReference { name: "src".into() },
                targets: Targets {
                    namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
                    ..Default::default()
                },
                target_name: None,
            },
        );
        r.metadata.namespace = Some("certs".into());
        r.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
        r
    }

    fn secret(type_: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("src".into()),
                namespace: Some("certs".into()),
                ..Default::default()
            },
            type_: type_.map(str::to_owned),
            ..Default::default()
        }
    }

    fn namespaces(names: &[&str]) -> BTreeMap<String, NamespaceInfo> {
        names
            .iter()
            .map(|n| {
                let info = NamespaceInfo {
                    name: n.to_string(),
                    labels: BTreeMap::new(),
                    reflect_from: None,
                    terminating: false,
                };
                (n.to_string(), info)
            })
            .collect()
    }

    fn no_rivals() -> Vec<(Claimant, BTreeMap<String, Placement>)> {
        vec![]
    }

    #[test]
    fn a_missing_or_refused_source_removes_the_copies_an_invalid_spec_keeps_them() {
        let r = reflector("a", 100, &["apps"]);
        let all = namespaces(&["certs", "apps"]);
        let policy = TargetPolicy::default();

        let missing = decide::<Secret>(&r, None, &all, &policy, no_rivals);
        assert!(matches!(
            missing.blocked(),
            Some(Blocked::SourceNotFound(_))
        ));
        assert_eq!(missing.keep(), Some(BTreeSet::new()));
        // Still counted: the status shows 0/N, N the targets it would copy into.
        let two = reflector("a", 100, &["apps", "gone"]);
        assert_eq!(
            decide::<Secret>(&two, None, &all, &policy, no_rivals).blocked_targets(),
            2,
            "apps, and gone (named, counted as desired until it exists)"
        );

        let token = secret(Some("kubernetes.io/service-account-token"));
        let refused = decide(&r, Some(&token), &all, &policy, no_rivals);
        assert!(matches!(
            refused.blocked(),
            Some(Blocked::SourceTypeUnsupported(_))
        ));
        assert_eq!(refused.keep(), Some(BTreeSet::new()));
        assert_eq!(refused.blocked_targets(), 1);

        let mut invalid = r.clone();
        invalid.spec.targets.namespace_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: "Sideways".into(),
                values: None,
            }]),
            ..Default::default()
        });
        let source = secret(None);
        let blocked = decide(&invalid, Some(&source), &all, &policy, no_rivals);
        assert!(matches!(blocked.blocked(), Some(Blocked::InvalidSpec(_))));
        assert_eq!(blocked.keep(), None, "copies stay until the spec is fixed");
        assert_eq!(
            blocked.blocked_targets(),
            0,
            "no targets known from an invalid spec"
        );
    }

    #[test]
    fn each_target_gets_its_intent_and_a_yielded_target_keeps_our_copy() {
        let r = reflector("young", 200, &["apps", "web", "gone"]);
        let older = reflector("old", 100, &["web"]);
        let all = namespaces(&["certs", "apps", "web"]);
        let policy = TargetPolicy::default();
        let source = secret(None);
        let rivals = || {
            let plan =
                targets::plan(&older.spec.targets, "certs", "src", "src", &all, &policy).unwrap();
            vec![(claimant(&older), plan)]
        };
        let decided = decide(&r, Some(&source), &all, &policy, rivals);
        let SyncPlan::Copy { targets, .. } = &decided else {
            panic!("not blocked: {decided:?}");
        };
        assert_eq!(
            targets,
            &vec![
                ("apps".to_owned(), Intent::Write),
                (
                    "gone".to_owned(),
                    Intent::Refuse(Placement::NamespaceNotFound)
                ),
                ("web".to_owned(), Intent::Yield(key_of(&older))),
            ]
        );
        assert_eq!(
            decided.keep(),
            Some(BTreeSet::from(["apps".to_owned(), "web".to_owned()]))
        );
    }

    #[test]
    fn a_namespace_without_consent_is_refused_its_copy_removed_and_the_fix_named() {
        let r = reflector("a", 100, &["apps", "web"]);
        let mut all = namespaces(&["certs", "apps", "web"]);
        all.get_mut("web").unwrap().reflect_from = Some("certs".into());
        let policy = TargetPolicy {
            require_consent: true,
            ..Default::default()
        };
        let source = secret(None);
        let decided = decide(&r, Some(&source), &all, &policy, no_rivals);
        let SyncPlan::Copy { targets, .. } = &decided else {
            panic!("not blocked: {decided:?}");
        };
        assert_eq!(
            targets,
            &vec![
                ("apps".to_owned(), Intent::Refuse(Placement::NotConsented)),
                ("web".to_owned(), Intent::Write),
            ]
        );
        // A copy made in `apps` before (e.g. before consent mode) goes.
        assert_eq!(decided.keep(), Some(BTreeSet::from(["web".to_owned()])));
        let outcome = refused("apps", &Placement::NotConsented, "src", "certs");
        assert_eq!(outcome.state, TargetState::NotConsented);
        let message = outcome.message.unwrap();
        assert!(
            message.contains(
                "kubectl annotate namespace apps pack-operator.k8s.kubit.ir/reflect-from=certs"
            ),
            "{message}"
        );
    }

    #[test]
    fn rivals_are_not_asked_for_when_the_sync_is_blocked() {
        let r = reflector("a", 100, &["apps"]);
        let plan = decide::<Secret>(
            &r,
            None,
            &namespaces(&["apps"]),
            &TargetPolicy::default(),
            || panic!("rivals read for a blocked sync"),
        );
        assert!(plan.blocked().is_some());
    }
}
