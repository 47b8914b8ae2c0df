//! The kinds of object a reflector copies: what a copy holds, which sources are refused and why, and
//! the reflector kind that names them. Everything else (targets, ownership marker, winners, cleanup,
//! status) is the same for every kind and generic over [`Reflected`].
//!
//! - `Secret`, copied by a `SecretReflector`: its `type`, `data` and `immutable` flag. Refused:
//!   `kubernetes.io/service-account-token` Secrets (Kubernetes' token controller owns them).
//! - `ConfigMap`, copied by a `ConfigMapReflector`: its `data`, `binaryData` and `immutable` flag.
//!   Refused: `kube-root-ca.crt` (Kubernetes publishes it in every namespace) and ConfigMaps with
//!   `ownerReferences` (another controller owns them).

use std::{collections::BTreeMap, fmt::Debug};

use common::crd::{ConfigMapReflector, ReflectorSpec, ReflectorStatus, SecretReflector};
use k8s_openapi::{
    ByteString, NamespaceResourceScope,
    api::core::v1::{ConfigMap, Secret},
};
use kube::{Resource, api::ObjectMeta, core::object::HasStatus};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// A kind of object a reflector copies, with the reflector kind that copies it.
pub trait Reflected:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Default
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// The reflector custom resource that copies this kind.
    type Reflector: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + HasStatus<Status = ReflectorStatus>
        + Clone
        + Debug
        + DeserializeOwned
        + Serialize
        + Send
        + Sync
        + 'static;

    /// The copied kind, as messages name it: `Secret`.
    const KIND: &'static str;
    /// The reflector kind, as messages name it: `SecretReflector`.
    const REFLECTOR_KIND: &'static str;
    /// The value of flag `--kinds` and of the `kind` metric label: `secret`.
    const FLAG: &'static str;

    /// The spec of a reflector of this kind.
    fn spec(reflector: &Self::Reflector) -> &ReflectorSpec;

    /// A copy of `source`'s content (what is copied, and the immutable flag) with `metadata`.
    fn copy_content(source: &Self, metadata: ObjectMeta) -> Self;

    /// sha256 (hex) of what is copied, for the copy's hash annotation.
    fn content_hash(&self) -> String;

    /// Whether `self` and `other` hold the same copied content (the immutable flag aside).
    fn same_content(&self, other: &Self) -> bool;

    /// Whether `existing` cannot be updated into `desired` in place (beyond the immutable flag, which
    /// every kind shares): a Secret's type cannot change.
    fn needs_replace(existing: &Self, desired: &Self) -> bool;

    /// The object's `immutable` flag.
    fn immutable(&self) -> bool;

    /// Why `source` is never copied (another controller owns objects like it), as a status/Event
    /// message; None when it may be copied.
    fn refused(source: &Self) -> Option<String>;
}

/// Adds `bytes` to `h`, length-prefixed so no two inputs collide.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

fn hex(h: Sha256) -> String {
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 (hex) of a Secret's type and data: each field length-prefixed so no two inputs collide.
pub fn data_hash(type_: &str, data: &BTreeMap<String, ByteString>) -> String {
    let mut h = Sha256::new();
    field(&mut h, type_.as_bytes());
    for (k, v) in data {
        field(&mut h, k.as_bytes());
        field(&mut h, &v.0);
    }
    hex(h)
}

/// sha256 (hex) of a ConfigMap's data and binaryData: each part counted, each field length-prefixed.
pub fn config_hash(
    data: &BTreeMap<String, String>,
    binary_data: &BTreeMap<String, ByteString>,
) -> String {
    let mut h = Sha256::new();
    field(&mut h, &(data.len() as u64).to_be_bytes());
    for (k, v) in data {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    field(&mut h, &(binary_data.len() as u64).to_be_bytes());
    for (k, v) in binary_data {
        field(&mut h, k.as_bytes());
        field(&mut h, &v.0);
    }
    hex(h)
}

fn secret_type(s: &Secret) -> &str {
    s.type_.as_deref().unwrap_or("Opaque")
}

fn named(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Secret types that are not copied: another controller owns Secrets of the type in every namespace
/// and would delete or rewrite a copy, which we would recreate forever.
const UNSUPPORTED_TYPES: &[(&str, &str)] = &[(
    "kubernetes.io/service-account-token",
    "Kubernetes' token controller owns Secrets of this type: it deletes or rewrites a copy (its token \
     belongs to a ServiceAccount of the source's namespace), so copies would be recreated forever. \
     Create a token Secret for a ServiceAccount in each namespace that needs one, or use the \
     TokenRequest API (projected ServiceAccount tokens)",
)];

impl Reflected for Secret {
    type Reflector = SecretReflector;
    const KIND: &'static str = "Secret";
    const REFLECTOR_KIND: &'static str = "SecretReflector";
    const FLAG: &'static str = "secret";

    fn spec(reflector: &SecretReflector) -> &ReflectorSpec {
        &reflector.spec
    }

    fn copy_content(source: &Self, metadata: ObjectMeta) -> Self {
        Secret {
            metadata,
            type_: Some(secret_type(source).to_owned()),
            data: Some(source.data.clone().unwrap_or_default()),
            immutable: source.immutable.filter(|i| *i),
            string_data: None,
        }
    }

    fn content_hash(&self) -> String {
        data_hash(
            secret_type(self),
            self.data.as_ref().unwrap_or(&BTreeMap::new()),
        )
    }

    fn same_content(&self, other: &Self) -> bool {
        let empty = BTreeMap::new();
        self.data.as_ref().unwrap_or(&empty) == other.data.as_ref().unwrap_or(&empty)
    }

    fn needs_replace(existing: &Self, desired: &Self) -> bool {
        secret_type(existing) != secret_type(desired)
    }

    fn immutable(&self) -> bool {
        self.immutable == Some(true)
    }

    fn refused(source: &Self) -> Option<String> {
        let type_ = secret_type(source);
        UNSUPPORTED_TYPES
            .iter()
            .find(|(t, _)| *t == type_)
            .map(|(_, why)| {
                format!(
                    "Secret {} is of type {type_} and is not copied: {why}",
                    named(&source.metadata)
                )
            })
    }
}

/// The ConfigMap Kubernetes' root CA publisher keeps in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

impl Reflected for ConfigMap {
    type Reflector = ConfigMapReflector;
    const KIND: &'static str = "ConfigMap";
    const REFLECTOR_KIND: &'static str = "ConfigMapReflector";
    const FLAG: &'static str = "configmap";

    fn spec(reflector: &ConfigMapReflector) -> &ReflectorSpec {
        &reflector.spec.reflector
    }

    fn copy_content(source: &Self, metadata: ObjectMeta) -> Self {
        ConfigMap {
            metadata,
            data: Some(source.data.clone().unwrap_or_default()),
            binary_data: Some(source.binary_data.clone().unwrap_or_default()),
            immutable: source.immutable.filter(|i| *i),
        }
    }

    fn content_hash(&self) -> String {
        config_hash(
            self.data.as_ref().unwrap_or(&BTreeMap::new()),
            self.binary_data.as_ref().unwrap_or(&BTreeMap::new()),
        )
    }

    fn same_content(&self, other: &Self) -> bool {
        let (text, binary) = (BTreeMap::new(), BTreeMap::new());
        self.data.as_ref().unwrap_or(&text) == other.data.as_ref().unwrap_or(&text)
            && self.binary_data.as_ref().unwrap_or(&binary)
                == other.binary_data.as_ref().unwrap_or(&binary)
    }

    fn needs_replace(_: &Self, _: &Self) -> bool {
        false
    }

    fn immutable(&self) -> bool {
        self.immutable == Some(true)
    }

    fn refused(source: &Self) -> Option<String> {
        let name = named(&source.metadata);
        if source.metadata.name.as_deref() == Some(ROOT_CA_CONFIGMAP) {
            return Some(format!(
                "ConfigMap {name} is not copied: Kubernetes' root CA publisher keeps a \
                 {ROOT_CA_CONFIGMAP} ConfigMap in every namespace and rewrites it, so every \
                 namespace already has its own. Mount that one (it is the same everywhere)"
            ));
        }
        let owners = source
            .metadata
            .owner_references
            .as_deref()
            .unwrap_or_default();
        owners.first().map(|owner| {
            format!(
                "ConfigMap {name} is not copied: it is owned by {} {} (ownerReferences), whose \
                 controller may rewrite or delete it at any time; copy the object that controller \
                 reads from, or have it write to each namespace",
                owner.kind, owner.name
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn secret_hash_depends_on_type_and_data_only() {
        let data = BTreeMap::from([("tls.crt".to_owned(), ByteString(b"crt".to_vec()))]);
        let h = data_hash("Opaque", &data);
        assert_eq!(h.len(), 64);
        assert_eq!(h, data_hash("Opaque", &data));
        assert_ne!(h, data_hash("kubernetes.io/tls", &data));
        let mut other = data.clone();
        other.insert("x".into(), ByteString(vec![]));
        assert_ne!(h, data_hash("Opaque", &other));
        // Length prefixes: moving bytes between key and value changes the hash.
        let a = BTreeMap::from([("ab".to_owned(), ByteString(b"c".to_vec()))]);
        let b = BTreeMap::from([("a".to_owned(), ByteString(b"bc".to_vec()))]);
        assert_ne!(data_hash("Opaque", &a), data_hash("Opaque", &b));
    }

    #[test]
    fn configmap_hash_tells_data_from_binary_data() {
        let text = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let binary = BTreeMap::from([("k".to_owned(), ByteString(b"v".to_vec()))]);
        let none = (BTreeMap::new(), BTreeMap::new());
        let h = config_hash(&text, &none.1);
        assert_eq!(h.len(), 64);
        assert_ne!(h, config_hash(&none.0, &binary));
        assert_ne!(h, config_hash(&none.0, &none.1));
    }

    #[test]
    fn configmaps_copy_data_and_binary_data_and_compare_both() {
        let source = ConfigMap {
            metadata: ObjectMeta {
                name: Some("settings".into()),
                namespace: Some("platform".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("a".to_owned(), "1".to_owned())])),
            binary_data: Some(BTreeMap::from([("b".to_owned(), ByteString(vec![0, 1]))])),
            immutable: Some(false),
        };
        let copy = ConfigMap::copy_content(&source, ObjectMeta::default());
        assert_eq!(copy.data, source.data);
        assert_eq!(copy.binary_data, source.binary_data);
        assert_eq!(copy.immutable, None, "only true is written");
        assert!(copy.same_content(&source));
        let mut edited = copy.clone();
        edited.binary_data = None;
        assert!(!edited.same_content(&source));
        assert!(!ConfigMap::needs_replace(&edited, &source));
    }

    #[test]
    fn refused_sources() {
        let token = Secret {
            type_: Some("kubernetes.io/service-account-token".into()),
            ..Default::default()
        };
        assert!(Secret::refused(&token).is_some());
        assert_eq!(
            Secret::refused(&Secret::default()),
            None,
            "Opaque by default"
        );

        let configmap = |name: &str, owned: bool| ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("platform".into()),
                owner_references: owned.then(|| {
                    vec![OwnerReference {
                        kind: "Deployment".into(),
                        name: "web".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let why = ConfigMap::refused(&configmap(ROOT_CA_CONFIGMAP, false)).expect("refused");
        assert!(why.contains("platform/kube-root-ca.crt"), "{why}");
        let why = ConfigMap::refused(&configmap("settings", true)).expect("refused");
        assert!(why.contains("owned by Deployment web"), "{why}");
        assert_eq!(ConfigMap::refused(&configmap("settings", false)), None);
    }
}
