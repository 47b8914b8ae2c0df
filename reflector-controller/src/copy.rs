//! The copy of a source Secret in a target namespace: what it should look like, whose it is, and what
//! to do about an existing Secret of the target name. Pure.
//!
//! A copy carries the source's `type`, `data`, `immutable` flag and its labels/annotations except the
//! ownership metadata of other tools, plus our marker: the label [`MANAGED_LABEL`] (the reflector's
//! namespace, so managed copies are watched by label selector) and annotations naming the reflector,
//! the source, the source's data hash, and the label/annotation keys copied from the source.
//!
//! Data, type and the immutable flag of a copy are ours alone and restored exactly. Labels and
//! annotations are shared with other tools (mutating webhooks, policy engines add theirs): a copy only
//! has to carry the keys we write, with our values, and lose the keys we wrote before that the source
//! no longer has. Which keys those are is recorded on the copy itself, so a restart loses nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use kube::{ResourceExt, api::ObjectMeta};

use crate::kind::Reflected;

/// Label on every copy: the namespace of the reflector that made it. The same marker keys serve every
/// kind: a copied Secret is always a SecretReflector's, a copied ConfigMap a ConfigMapReflector's.
pub const MANAGED_LABEL: &str = "pack-operator.k8s.kubit.ir/reflector-namespace";
/// Annotation on every copy: `<namespace>/<name>` of the reflector that made it.
pub const REFLECTOR_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/reflector";
/// Annotation on every copy: `<namespace>/<name>` of the source.
pub const SOURCE_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/reflected-from";
/// Annotation on every copy: sha256 (hex) of what is copied (a Secret's type and data, a
/// ConfigMap's data and binaryData).
pub const HASH_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/source-hash";
/// Annotation on every copy: the label keys copied from the source at the last write (sorted,
/// comma-separated; label keys cannot contain a comma). Only these are ever removed from a copy.
pub const COPIED_LABELS_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/copied-labels";
/// Annotation on every copy: the annotation keys copied from the source at the last write, as
/// [`COPIED_LABELS_ANNOTATION`].
pub const COPIED_ANNOTATIONS_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/copied-annotations";

/// Label/annotation prefixes owned by the tools that manage a source; never copied (a copy carrying
/// them would be claimed, pruned or overwritten by that tool).
const NOT_COPIED_PREFIXES: &[&str] = &[
    "cert-manager.io/",
    "argocd.argoproj.io/",
    "helm.sh/",
    "meta.helm.sh/",
    "kubectl.kubernetes.io/",
];
/// Exact keys never copied: the managing tool's name, and our own marker.
const NOT_COPIED_KEYS: &[&str] = &[
    "app.kubernetes.io/managed-by",
    MANAGED_LABEL,
    REFLECTOR_ANNOTATION,
    SOURCE_ANNOTATION,
    HASH_ANNOTATION,
    COPIED_LABELS_ANNOTATION,
    COPIED_ANNOTATIONS_ANNOTATION,
];

/// A reflector, as named in markers and logs: `<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReflectorKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ReflectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl ReflectorKey {
    /// Reads a marker `<namespace>/<name>`; None when it is not one.
    pub fn parse(marker: &str) -> Option<Self> {
        let (namespace, name) = marker.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains('/')).then(|| ReflectorKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

fn copied(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| {
            !NOT_COPIED_KEYS.contains(&k.as_str())
                && !NOT_COPIED_PREFIXES.iter().any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Why `source` cannot be copied at all, as a status/Event message; None when it can.
pub fn unsupported<K: Reflected>(source: &K) -> Option<String> {
    K::refused(source)
}

fn key_list(map: &BTreeMap<String, String>) -> String {
    map.keys().map(String::as_str).collect::<Vec<_>>().join(",")
}

/// The keys recorded in annotation `record` of `meta`: what the last write copied from the source.
/// None on a copy made before the record existed.
fn recorded<'a>(meta: &'a ObjectMeta, record: &str) -> Option<BTreeSet<&'a str>> {
    let list = meta.annotations.as_ref()?.get(record)?;
    Some(list.split(',').filter(|k| !k.is_empty()).collect())
}

/// The copy `source` should have at `namespace/name`, marked as made by `reflector`.
pub fn desired<K: Reflected>(
    source: &K,
    reflector: &ReflectorKey,
    namespace: &str,
    name: &str,
) -> K {
    let meta = source.meta();
    let mut labels = copied(meta.labels.as_ref());
    let mut annotations = copied(meta.annotations.as_ref());
    let (copied_labels, copied_annotations) = (key_list(&labels), key_list(&annotations));
    labels.insert(MANAGED_LABEL.into(), reflector.namespace.clone());
    annotations.insert(COPIED_LABELS_ANNOTATION.into(), copied_labels);
    annotations.insert(COPIED_ANNOTATIONS_ANNOTATION.into(), copied_annotations);
    annotations.insert(REFLECTOR_ANNOTATION.into(), reflector.to_string());
    annotations.insert(
        SOURCE_ANNOTATION.into(),
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
    );
    annotations.insert(HASH_ANNOTATION.into(), source.content_hash());
    K::copy_content(
        source,
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
    )
}

/// Whose an existing object is, by its marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Its reflector annotation names this reflector (the label is restored if it was removed).
    Ours,
    /// Made by another reflector (named).
    OtherReflector(String),
    /// Not made by any reflector.
    Foreign,
}

pub fn ownership(existing: &ObjectMeta, reflector: &ReflectorKey) -> Ownership {
    match existing
        .annotations
        .as_ref()
        .and_then(|a| a.get(REFLECTOR_ANNOTATION))
    {
        Some(owner) if *owner == reflector.to_string() => Ownership::Ours,
        Some(owner) => Ownership::OtherReflector(owner.clone()),
        None => Ownership::Foreign,
    }
}

/// What to do at a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Secret of the target name: create the copy.
    Create,
    /// Our copy, already as desired.
    Unchanged,
    /// Our copy (or one we take over), differing in data, the immutable flag, or the labels and
    /// annotations we write: update it in place, with [`merged`].
    Update,
    /// Our copy, but its type differs, or it is immutable and its data differs: delete and create.
    Replace,
    /// Not ours: left untouched, reported.
    Conflict(String),
}

/// Decides what to do at a target given the object already there (if any). `take_over`: the reflector
/// named in the existing object's marker gives way to this one (it lost the target to it, or no
/// longer exists), so its copy is treated as ours. An object without our marker is never taken over.
pub fn decide<K: Reflected>(
    existing: Option<&K>,
    desired: &K,
    reflector: &ReflectorKey,
    take_over: bool,
) -> Decision {
    let Some(existing) = existing else {
        return Decision::Create;
    };
    let (kind, reflector_kind) = (K::KIND, K::REFLECTOR_KIND);
    let name = existing.meta().name.as_deref().unwrap_or_default();
    match ownership(existing.meta(), reflector) {
        Ownership::Ours => {}
        Ownership::OtherReflector(_) if take_over => {}
        Ownership::OtherReflector(other) => {
            return Decision::Conflict(format!(
                "{kind} {name} already holds a copy made by {reflector_kind} {other}"
            ));
        }
        Ownership::Foreign => {
            return Decision::Conflict(format!(
                "{kind} {name} exists and is not managed by a {reflector_kind}; left untouched"
            ));
        }
    }
    let data_same = existing.same_content(desired);
    let immutable = existing.immutable();
    if K::needs_replace(existing, desired) || (immutable && !data_same) {
        return Decision::Replace;
    }
    // The labels and annotations an update would write (ours over theirs) are those already there.
    let next = merged(existing, desired);
    let meta_same = next.meta().labels == Some(existing.labels().clone())
        && next.meta().annotations == Some(existing.annotations().clone());
    let immutable_same = immutable == desired.immutable();
    match (data_same && meta_same && immutable_same, immutable) {
        (true, _) => Decision::Unchanged,
        // An immutable object cannot be made mutable again.
        (false, true) if !immutable_same => Decision::Replace,
        (false, _) => Decision::Update,
    }
}

/// Labels (or annotations) to write over `existing`: `desired`, plus the keys of `existing` that were
/// not copied by the last write (other tools' keys). Without a record, `desired` alone.
fn merge(
    existing: Option<&BTreeMap<String, String>>,
    desired: Option<&BTreeMap<String, String>>,
    previously: Option<&BTreeSet<&str>>,
) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = existing
        .into_iter()
        .flatten()
        .filter(|(k, _)| previously.is_some_and(|p| !p.contains(k.as_str())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.extend(
        desired
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out
}

/// The object to PUT over `existing` for [`Decision::Update`]: `desired`'s content, flag and
/// labels/annotations, keeping the labels and annotations other tools added to `existing`.
pub fn merged<K: Reflected>(existing: &K, desired: &K) -> K {
    let mut next = desired.clone();
    let (old, want) = (existing.meta(), desired.meta());
    let labels = merge(
        old.labels.as_ref(),
        want.labels.as_ref(),
        recorded(old, COPIED_LABELS_ANNOTATION).as_ref(),
    );
    let annotations = merge(
        old.annotations.as_ref(),
        want.annotations.as_ref(),
        recorded(old, COPIED_ANNOTATIONS_ANNOTATION).as_ref(),
    );
    next.meta_mut().labels = Some(labels);
    next.meta_mut().annotations = Some(annotations);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{ByteString, api::core::v1::Secret};

    fn key() -> ReflectorKey {
        ReflectorKey {
            namespace: "certs".into(),
            name: "wildcard".into(),
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn source() -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("tls".into()),
                namespace: Some("certs".into()),
                labels: Some(map(&[
                    ("team", "web"),
                    ("app.kubernetes.io/managed-by", "Helm"),
                    ("helm.sh/chart", "x-1"),
                    (MANAGED_LABEL, "elsewhere"),
                ])),
                annotations: Some(map(&[
                    ("note", "kept"),
                    ("cert-manager.io/certificate-name", "tls"),
                    ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
                    ("argocd.argoproj.io/tracking-id", "x"),
                    ("meta.helm.sh/release-name", "x"),
                    (REFLECTOR_ANNOTATION, "other/one"),
                ])),
                owner_references: Some(vec![Default::default()]),
                resource_version: Some("42".into()),
                uid: Some("u".into()),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(BTreeMap::from([
                ("tls.crt".to_owned(), ByteString(b"crt".to_vec())),
                ("tls.key".to_owned(), ByteString(b"key".to_vec())),
            ])),
            ..Default::default()
        }
    }

    #[test]
    fn copy_carries_type_data_and_chosen_metadata_with_our_marker() {
        let copy = desired(&source(), &key(), "app-a", "tls");
        assert_eq!(copy.metadata.namespace.as_deref(), Some("app-a"));
        assert_eq!(copy.metadata.name.as_deref(), Some("tls"));
        assert_eq!(copy.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(copy.data, source().data);
        assert_eq!(
            copy.metadata.labels,
            Some(map(&[("team", "web"), (MANAGED_LABEL, "certs")]))
        );
        let hash = crate::kind::data_hash("kubernetes.io/tls", source().data.as_ref().unwrap());
        assert_eq!(
            copy.metadata.annotations,
            Some(map(&[
                ("note", "kept"),
                (REFLECTOR_ANNOTATION, "certs/wildcard"),
                (SOURCE_ANNOTATION, "certs/tls"),
                (HASH_ANNOTATION, &hash),
                (COPIED_LABELS_ANNOTATION, "team"),
                (COPIED_ANNOTATIONS_ANNOTATION, "note"),
            ]))
        );
        assert!(copy.metadata.owner_references.is_none());
        assert!(copy.metadata.resource_version.is_none());
        assert!(copy.metadata.uid.is_none());
        assert_eq!(copy.immutable, None);
    }

    /// One table of cases, one row each: long because the cases are many.
    #[test]
    fn decisions() {
        let want = desired(&source(), &key(), "app-a", "tls");
        let with = |f: &dyn Fn(&mut Secret)| {
            let mut s = want.clone();
            s.metadata.resource_version = Some("7".into());
            f(&mut s);
            s
        };
        let cases: Vec<(&str, Option<Secret>, Decision)> = vec![
            ("absent", None, Decision::Create),
            ("identical", Some(with(&|_| {})), Decision::Unchanged),
            (
                "data edited by hand",
                Some(with(&|s| {
                    s.data
                        .as_mut()
                        .unwrap()
                        .insert("tls.key".into(), ByteString(b"x".to_vec()));
                })),
                Decision::Update,
            ),
            (
                "label and annotation added by another tool (e.g. a mutating webhook) are left alone",
                Some(with(&|s| {
                    s.metadata
                        .labels
                        .as_mut()
                        .unwrap()
                        .insert("x".into(), "y".into());
                    s.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .insert("policy.example/checked".into(), "yes".into());
                })),
                Decision::Unchanged,
            ),
            (
                "a copied label's value edited by hand",
                Some(with(&|s| {
                    s.metadata
                        .labels
                        .as_mut()
                        .unwrap()
                        .insert("team".into(), "db".into());
                })),
                Decision::Update,
            ),
            (
                "a copied annotation removed by hand",
                Some(with(&|s| {
                    s.metadata.annotations.as_mut().unwrap().remove("note");
                })),
                Decision::Update,
            ),
            (
                "a label copied before that the source no longer has",
                Some(with(&|s| {
                    s.metadata
                        .labels
                        .as_mut()
                        .unwrap()
                        .insert("old".into(), "x".into());
                    s.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .insert(COPIED_LABELS_ANNOTATION.into(), "old,team".into());
                })),
                Decision::Update,
            ),
            (
                "a copy made before the key record existed: every extra key counts as ours",
                Some(with(&|s| {
                    let a = s.metadata.annotations.as_mut().unwrap();
                    a.remove(COPIED_LABELS_ANNOTATION);
                    a.remove(COPIED_ANNOTATIONS_ANNOTATION);
                })),
                Decision::Update,
            ),
            (
                "our label removed, annotation still ours",
                Some(with(&|s| {
                    s.metadata.labels.as_mut().unwrap().remove(MANAGED_LABEL);
                })),
                Decision::Update,
            ),
            (
                "type changed",
                Some(with(&|s| s.type_ = Some("Opaque".into()))),
                Decision::Replace,
            ),
            (
                "immutable copy with other data",
                Some(with(&|s| {
                    s.immutable = Some(true);
                    s.data = Some(BTreeMap::new());
                })),
                Decision::Replace,
            ),
            (
                "immutable copy, source now mutable",
                Some(with(&|s| s.immutable = Some(true))),
                Decision::Replace,
            ),
            (
                "foreign Secret",
                Some(Secret {
                    metadata: ObjectMeta {
                        name: Some("tls".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                Decision::Conflict(
                    "Secret tls exists and is not managed by a SecretReflector; left untouched"
                        .into(),
                ),
            ),
            (
                "foreign Secret that forged only our label",
                Some(with(&|s| {
                    s.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .remove(REFLECTOR_ANNOTATION);
                })),
                Decision::Conflict(
                    "Secret tls exists and is not managed by a SecretReflector; left untouched"
                        .into(),
                ),
            ),
            (
                "copy of another reflector",
                Some(with(&|s| {
                    s.metadata
                        .annotations
                        .as_mut()
                        .unwrap()
                        .insert(REFLECTOR_ANNOTATION.into(), "certs/other".into());
                })),
                Decision::Conflict(
                    "Secret tls already holds a copy made by SecretReflector certs/other".into(),
                ),
            ),
        ];
        for (what, existing, decision) in cases {
            assert_eq!(
                decide(existing.as_ref(), &want, &key(), false),
                decision,
                "{what}"
            );
        }
    }

    #[test]
    fn a_copy_of_a_reflector_that_gives_way_is_taken_over_but_a_foreign_secret_never() {
        let want = desired(&source(), &key(), "app-a", "tls");
        let other = ReflectorKey {
            namespace: "certs".into(),
            name: "younger".into(),
        };
        let theirs = desired(&source(), &other, "app-a", "tls");
        assert_eq!(decide(Some(&theirs), &want, &key(), true), Decision::Update);
        let mut foreign = want.clone();
        foreign.metadata.annotations = None;
        assert!(matches!(
            decide(Some(&foreign), &want, &key(), true),
            Decision::Conflict(_)
        ));
        // The update writes our marker.
        let next = merged(&theirs, &want);
        assert_eq!(
            ownership(&next.metadata, &key()),
            Ownership::Ours,
            "{next:?}"
        );
    }

    #[test]
    fn updates_keep_other_tools_keys_and_drop_keys_the_source_lost() {
        let want = desired(&source(), &key(), "app-a", "tls");
        let mut existing = want.clone();
        existing.data = Some(BTreeMap::new()); // needs an update
        let labels = existing.metadata.labels.as_mut().unwrap();
        labels.insert("webhook.example/injected".into(), "yes".into());
        labels.insert("old".into(), "copied before".into());
        labels.insert("team".into(), "edited".into());
        let annotations = existing.metadata.annotations.as_mut().unwrap();
        annotations.insert(COPIED_LABELS_ANNOTATION.into(), "old,team".into());
        annotations.insert("policy.example/checked".into(), "yes".into());
        annotations.remove("note");

        assert_eq!(
            decide(Some(&existing), &want, &key(), false),
            Decision::Update
        );
        let next = merged(&existing, &want);
        assert_eq!(next.data, want.data);
        assert_eq!(
            next.metadata.labels,
            Some(map(&[
                ("team", "web"),
                ("webhook.example/injected", "yes"),
                (MANAGED_LABEL, "certs"),
            ]))
        );
        let annotations = next.metadata.annotations.clone().unwrap();
        assert_eq!(annotations.get("note").map(String::as_str), Some("kept"));
        assert_eq!(
            annotations
                .get("policy.example/checked")
                .map(String::as_str),
            Some("yes")
        );
        assert_eq!(
            annotations
                .get(COPIED_LABELS_ANNOTATION)
                .map(String::as_str),
            Some("team")
        );
        // What was written is stable: the next look finds nothing to do.
        assert_eq!(
            decide(Some(&next), &want, &key(), false),
            Decision::Unchanged
        );

        // A copy made before the record existed: only what we write now stays.
        let mut legacy = existing.clone();
        let a = legacy.metadata.annotations.as_mut().unwrap();
        a.remove(COPIED_LABELS_ANNOTATION);
        a.remove(COPIED_ANNOTATIONS_ANNOTATION);
        let next = merged(&legacy, &want);
        assert_eq!(next.metadata.labels, want.metadata.labels);
        assert_eq!(next.metadata.annotations, want.metadata.annotations);
    }

    #[test]
    fn a_key_record_on_the_source_is_not_copied() {
        // A copy used as the source of another reflector: its record names its own keys.
        let first = desired(&source(), &key(), "app-a", "tls");
        let second = ReflectorKey {
            namespace: "app-a".into(),
            name: "chained".into(),
        };
        let copy = desired(&first, &second, "app-b", "tls");
        let a = copy.metadata.annotations.unwrap();
        assert_eq!(
            a.get(COPIED_ANNOTATIONS_ANNOTATION).map(String::as_str),
            Some("note")
        );
        assert_eq!(
            a.get(SOURCE_ANNOTATION).map(String::as_str),
            Some("app-a/tls")
        );
        assert_eq!(
            a.get(REFLECTOR_ANNOTATION).map(String::as_str),
            Some("app-a/chained")
        );
    }

    #[test]
    fn service_account_tokens_are_not_copied() {
        let mut token = source();
        token.type_ = Some("kubernetes.io/service-account-token".into());
        token.data = Some(BTreeMap::from([(
            "token".to_owned(),
            ByteString(b"s3cr3t-value".to_vec()),
        )]));
        let why = unsupported(&token).expect("refused");
        assert!(why.contains("certs/tls"), "{why}");
        assert!(why.contains("kubernetes.io/service-account-token"), "{why}");
        assert!(why.contains("TokenRequest"), "{why}");
        assert!(!why.contains("s3cr3t"), "no data: {why}");
        assert_eq!(unsupported(&source()), None);
        assert_eq!(unsupported(&Secret::default()), None, "Opaque by default");
    }

    #[test]
    fn immutable_source_makes_immutable_copies() {
        let mut src = source();
        src.immutable = Some(true);
        let want = desired(&src, &key(), "app-a", "tls");
        assert_eq!(want.immutable, Some(true));
        let mut mutable_copy = desired(&source(), &key(), "app-a", "tls");
        assert_eq!(
            decide(Some(&mutable_copy), &want, &key(), false),
            Decision::Update,
            "a mutable copy may be made immutable in place"
        );
        mutable_copy.immutable = Some(true);
        assert_eq!(
            decide(Some(&mutable_copy), &want, &key(), false),
            Decision::Unchanged
        );
    }

    #[test]
    fn markers_parse_back_into_keys() {
        assert_eq!(ReflectorKey::parse(&key().to_string()), Some(key()));
        for bad in ["", "certs", "/name", "certs/", "a/b/c"] {
            assert_eq!(ReflectorKey::parse(bad), None, "{bad:?}");
        }
    }
}
