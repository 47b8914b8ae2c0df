//! `spec.valuesFrom`: values read from Secrets and ConfigMaps of the Pack's namespace. Pure: the
//! reconcile reads each referenced object (one GET each, nothing cached) and hands the referenced key
//! here, one at a time, in list order ([`Merge::add`]); the object itself is dropped at once.
//!
//! Rules (as Flux's HelmRelease, docs/pack.md "Values from Secrets and ConfigMaps"):
//! * Without `targetPath` the key holds a YAML map, deep-merged into what the earlier entries gave
//!   (maps merge key by key; anything else is replaced). With `targetPath` the key's content is not
//!   parsed: its raw string is set at that dotted path (`a.b.c`; `\.` is a dot inside a key).
//! * `spec.values` is merged on top of the result, then `vars` are applied ([`crate::resolve`]).
//! * A missing object or key is [`ValuesFromError::NotFound`], unless the entry is `optional`.
//! * What came from a Secret (every leaf string of its YAML document, numbers as written, and
//!   `targetPath` raw strings) is collected in [`ValuesFrom::secret_strings`]: those, and only those, are
//!   blanked out of Helm's messages. Errors here never carry the content (a YAML error gives its line and
//!   column only).
//! * The merged values count against `--max-values-size` as they grow: each entry is measured once
//!   merged, so memory stays bounded by the limit plus one object.

use common::crd::pack::{ValuesReference, ValuesSourceKind, ValuesSourceVersion};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use serde_json::{Map, Value};

/// What the reconcile read for one `valuesFrom` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// No object of that kind and name.
    Missing,
    /// The object, and the referenced key's bytes (None: no such key in `data`/`binaryData`).
    Found {
        resource_version: String,
        value: Option<Vec<u8>>,
    },
}

/// Key `key` of `secret` (its `data`, base64-decoded by the API client), as read.
pub fn secret_key(secret: Option<Secret>, key: &str) -> Fetched {
    let Some(mut secret) = secret else {
        return Fetched::Missing;
    };
    Fetched::Found {
        resource_version: secret.resource_version().unwrap_or_default(),
        value: secret
            .data
            .as_mut()
            .and_then(|d| d.remove(key))
            .map(|b| b.0),
    }
}

/// Key `key` of `config_map`: its `data`, else its `binaryData`.
pub fn config_map_key(config_map: Option<ConfigMap>, key: &str) -> Fetched {
    let Some(mut cm) = config_map else {
        return Fetched::Missing;
    };
    let value = cm
        .data
        .as_mut()
        .and_then(|d| d.remove(key))
        .map(String::into_bytes)
        .or_else(|| {
            cm.binary_data
                .as_mut()
                .and_then(|d| d.remove(key))
                .map(|b| b.0)
        });
    Fetched::Found {
        resource_version: cm.resource_version().unwrap_or_default(),
        value,
    }
}

/// The values of all `valuesFrom` entries, merged in order (before `spec.values`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValuesFrom {
    pub values: Map<String, Value>,
    /// Strings that came from Secrets, to blank out of every message.
    pub secret_strings: Vec<String>,
    /// The objects read, with their resourceVersion (for status and the upgrade's Event).
    pub sources: Vec<ValuesSourceVersion>,
    /// The uids of the Secrets read: they key the release digest ([`crate::plan::ReleaseDigest::salted`]),
    /// never written anywhere.
    pub secret_uids: Vec<String>,
}

/// Why the `valuesFrom` entries could not be merged. Messages name kind, name and key, never content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValuesFromError {
    #[error(
        "{kind} `{name}` (spec.valuesFrom[{index}]) does not exist in namespace {namespace}; create it, fix \
         the name, or set `optional: true` on the entry"
    )]
    ObjectNotFound {
        index: usize,
        kind: &'static str,
        name: String,
        namespace: String,
    },
    #[error(
        "{kind} `{name}` (spec.valuesFrom[{index}]) has no key `{key}`; add the key, fix `valuesKey`, or \
         set `optional: true` on the entry"
    )]
    KeyNotFound {
        index: usize,
        kind: &'static str,
        name: String,
        key: String,
    },
    #[error("key `{key}` of {kind} `{name}` (spec.valuesFrom[{index}]) {problem}")]
    Invalid {
        index: usize,
        kind: &'static str,
        name: String,
        key: String,
        problem: String,
    },
    #[error("spec.valuesFrom[{index}].targetPath `{path}` is invalid: {problem}")]
    InvalidTargetPath {
        index: usize,
        path: String,
        problem: &'static str,
    },
    #[error("{size_at_least} bytes of JSON")]
    TooLarge {
        size_at_least: usize,
        limit: usize,
        /// `valuesFrom[i] (kind name key)`.
        path: String,
    },
}

impl ValuesFromError {
    /// The reason for status conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ValuesFromError::ObjectNotFound { .. } | ValuesFromError::KeyNotFound { .. } => {
                "ValuesSourceNotFound"
            }
            ValuesFromError::Invalid { .. } => "ValuesSourceInvalid",
            ValuesFromError::InvalidTargetPath { .. } => "InvalidValuesFrom",
            ValuesFromError::TooLarge { .. } => "ValuesTooLarge",
        }
    }
}

/// Merges `valuesFrom` entries in order, within a size limit.
#[derive(Debug)]
pub struct Merge {
    namespace: String,
    limit: usize,
    done: ValuesFrom,
}

impl Merge {
    /// A merge for a Pack of `namespace` whose values may take at most `limit` bytes of JSON.
    pub fn new(namespace: &str, limit: usize) -> Self {
        Merge {
            namespace: namespace.to_owned(),
            limit,
            done: ValuesFrom::default(),
        }
    }

    /// Records the uid of a Secret read for an entry (see [`ValuesFrom::secret_uids`]).
    pub fn secret_uid(&mut self, uid: String) {
        if !self.done.secret_uids.contains(&uid) {
            self.done.secret_uids.push(uid);
        }
    }

    /// Merges entry `index` (`r`), as read (`fetched`).
    pub fn add(
        &mut self,
        index: usize,
        r: &ValuesReference,
        fetched: Fetched,
    ) -> Result<(), ValuesFromError> {
        let kind = r.kind.as_str();
        let key = r.key();
        let Some((resource_version, bytes)) = self.present(index, r, fetched)? else {
            return Ok(());
        };
        let invalid = |problem: String| ValuesFromError::Invalid {
            index,
            kind,
            name: r.name.clone(),
            key: key.to_owned(),
            problem,
        };
        let text = String::from_utf8(bytes).map_err(|e| {
            invalid(format!(
                "is not UTF-8 text (at byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        let secret = r.kind == ValuesSourceKind::Secret;
        match &r.target_path {
            Some(path) => {
                let segments = parse_target_path(path).map_err(|problem| {
                    ValuesFromError::InvalidTargetPath {
                        index,
                        path: path.clone(),
                        problem,
                    }
                })?;
                if secret {
                    self.done.secret_strings.push(text.clone());
                }
                set_path(&mut self.done.values, &segments, Value::String(text));
            }
            None => {
                let doc = document(&text).map_err(invalid)?;
                if secret {
                    leaf_strings(&Value::Object(doc.clone()), &mut self.done.secret_strings);
                }
                merge_maps(&mut self.done.values, doc);
            }
        }
        self.done.sources.push(ValuesSourceVersion {
            kind: r.kind,
            name: r.name.clone(),
            resource_version,
        });
        // Measured in place: no copy of the values merged so far.
        let size = crate::resolve::serialized_len(&self.done.values);
        if size > self.limit {
            return Err(ValuesFromError::TooLarge {
                size_at_least: size,
                limit: self.limit,
                path: format!("valuesFrom[{index}] ({kind} {} key {key})", r.name),
            });
        }
        Ok(())
    }

    /// The resourceVersion and bytes of entry `index`'s key, None when an optional object or key is
    /// missing, an error when a required one is.
    fn present(
        &self,
        index: usize,
        r: &ValuesReference,
        fetched: Fetched,
    ) -> Result<Option<(String, Vec<u8>)>, ValuesFromError> {
        let (resource_version, bytes) = match fetched {
            Fetched::Missing if r.optional => return Ok(None),
            Fetched::Missing => {
                return Err(ValuesFromError::ObjectNotFound {
                    index,
                    kind: r.kind.as_str(),
                    name: r.name.clone(),
                    namespace: self.namespace.clone(),
                });
            }
            Fetched::Found {
                resource_version,
                value,
            } => (resource_version, value),
        };
        match bytes {
            Some(bytes) => Ok(Some((resource_version, bytes))),
            None if r.optional => Ok(None),
            None => Err(ValuesFromError::KeyNotFound {
                index,
                kind: r.kind.as_str(),
                name: r.name.clone(),
                key: r.key().to_owned(),
            }),
        }
    }

    /// The merged values.
    pub fn finish(mut self) -> ValuesFrom {
        // Longest first (as helm's blanking wants), without repeats; shorter ones are never blanked
        // (`1` or `true` would shred every message).
        self.done
            .secret_strings
            .retain(|s| s.chars().count() >= crate::helm::REDACT_MIN_WORD_LEN);
        // Longest first (as helm's blanking wants), without repeats.
        self.done
            .secret_strings
            .sort_by_key(|s| std::cmp::Reverse(s.len()));
        self.done.secret_strings.dedup();
        self.done
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// Every string leaf of `v`, and numbers as written (a numeric password is a secret too).
fn leaf_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(a) => a.iter().for_each(|v| leaf_strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| leaf_strings(v, out)),
        _ => {}
    }
}

/// Deep merge, `top` over `base`: maps merge key by key, anything else is replaced (Flux's and Helm's
/// rule for values files).
pub fn merge_maps(base: &mut Map<String, Value>, top: Map<String, Value>) {
    for (key, value) in top {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(b)), Value::Object(t)) => merge_maps(b, t),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// `a.b\.c` → `["a", "b.c"]`.
fn parse_target_path(path: &str) -> Result<Vec<String>, &'static str> {
    let mut segments = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(c @ ('.' | '\\')) => segments.last_mut().unwrap_or(&mut String::new()).push(c),
                _ => return Err("`\\` must be followed by `.` or `\\`"),
            },
            '.' => segments.push(String::new()),
            c => {
                if let Some(s) = segments.last_mut() {
                    s.push(c);
                }
            }
        }
    }
    if segments.iter().any(String::is_empty) {
        return Err("a key between dots is empty");
    }
    Ok(segments)
}

/// A key's text as a YAML map of values (empty for an empty document); the problem otherwise, told
/// without quoting the content.
fn document(text: &str) -> Result<Map<String, Value>, String> {
    let doc: Value = serde_yaml::from_str(text).map_err(|e| match e.location() {
        // The error's text can quote the content: only where it is.
        Some(l) => format!(
            "is not valid YAML (line {} column {})",
            l.line(),
            l.column()
        ),
        None => "is not valid YAML".to_owned(),
    })?;
    match doc {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(format!(
            "holds {}, not a YAML map of values (set `targetPath` to use its text as one value)",
            type_name(&other)
        )),
    }
}

/// Sets `value` at `path` of `values`, making maps on the way (replacing what is not a map).
fn set_path(values: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = values;
    for key in parents {
        let slot = at
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(next) = slot else {
            return;
        };
        at = next;
    }
    at.insert(last.clone(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(
        kind: ValuesSourceKind,
        name: &str,
        key: Option<&str>,
        target: Option<&str>,
    ) -> ValuesReference {
        ValuesReference {
            kind,
            name: name.into(),
            values_key: key.map(Into::into),
            target_path: target.map(Into::into),
            optional: false,
        }
    }

    fn found(text: &str) -> Fetched {
        Fetched::Found {
            resource_version: "1".into(),
            value: Some(text.as_bytes().to_vec()),
        }
    }

    const LIMIT: usize = 1 << 20;

    #[test]
    fn merges_in_list_order_and_sets_target_paths() {
        use ValuesSourceKind::*;
        let mut m = Merge::new("ns", LIMIT);
        m.add(
            0,
            &r(ConfigMap, "defaults", None, None),
            found("image: {repo: web, tag: '1'}\nreplicas: 1\nauth: {user: app}\n"),
        )
        .unwrap();
        m.add(
            1,
            &r(Secret, "db", None, None),
            found("auth: {password: from-doc, port: 54321}\nreplicas: 2\n"),
        )
        .unwrap();
        m.add(
            2,
            &r(Secret, "db", Some("password"), Some("auth.password")),
            found("s3cr3t-raw: {not: yaml"),
        )
        .unwrap();
        m.add(
            3,
            &r(
                ConfigMap,
                "x",
                Some("host"),
                Some(r"ingress.annotations.example\.com/host"),
            ),
            found("a.example"),
        )
        .unwrap();
        let got = m.finish();
        assert_eq!(
            Value::Object(got.values),
            json!({
                "image": {"repo": "web", "tag": "1"},
                "replicas": 2,
                "auth": {"user": "app", "password": "s3cr3t-raw: {not: yaml", "port": 54321},
                "ingress": {"annotations": {"example.com/host": "a.example"}},
            })
        );
        // Only what came from Secrets; longest first.
        assert_eq!(
            got.secret_strings,
            vec!["s3cr3t-raw: {not: yaml", "from-doc", "54321"]
        );
        assert_eq!(got.sources.len(), 4);
    }

    #[test]
    fn reads_data_and_binary_data() {
        use k8s_openapi::ByteString;
        let mut cm = ConfigMap::default();
        cm.metadata.resource_version = Some("7".into());
        cm.data = Some([("a".to_string(), "x: 1".to_string())].into());
        cm.binary_data = Some([("b".to_string(), ByteString(b"y: 2".to_vec()))].into());
        assert_eq!(config_map_key(Some(cm.clone()), "a"), found_rv("x: 1", "7"));
        assert_eq!(config_map_key(Some(cm.clone()), "b"), found_rv("y: 2", "7"));
        assert_eq!(
            config_map_key(Some(cm), "c"),
            Fetched::Found {
                resource_version: "7".into(),
                value: None
            }
        );
        assert_eq!(config_map_key(None, "a"), Fetched::Missing);
        let mut secret = Secret::default();
        secret.metadata.resource_version = Some("8".into());
        secret.data = Some([("p".to_string(), ByteString(b"pw".to_vec()))].into());
        assert_eq!(secret_key(Some(secret), "p"), found_rv("pw", "8"));
        assert_eq!(secret_key(None, "p"), Fetched::Missing);
    }

    fn found_rv(text: &str, rv: &str) -> Fetched {
        Fetched::Found {
            resource_version: rv.into(),
            value: Some(text.as_bytes().to_vec()),
        }
    }

    #[test]
    fn target_path_escaping() {
        let cases: [(&str, Result<Vec<&str>, ()>); 6] = [
            ("a", Ok(vec!["a"])),
            ("a.b.c", Ok(vec!["a", "b", "c"])),
            (r"a\.b.c", Ok(vec!["a.b", "c"])),
            (r"a\\.b", Ok(vec![r"a\", "b"])),
            ("a..b", Err(())),
            (r"a\b", Err(())),
        ];
        for (path, want) in cases {
            let got = parse_target_path(path).map_err(|_| ());
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{path}");
        }
        // A targetPath through a non-map replaces it.
        let mut values = json!({"a": "x"}).as_object().cloned().unwrap();
        set_path(&mut values, &["a".into(), "b".into()], json!("v"));
        assert_eq!(Value::Object(values), json!({"a": {"b": "v"}}));
    }

    #[test]
    fn missing_objects_and_keys() {
        use ValuesSourceKind::*;
        let mut m = Merge::new("team", LIMIT);
        let e = m
            .add(0, &r(Secret, "db", None, None), Fetched::Missing)
            .unwrap_err();
        assert_eq!(e.reason(), "ValuesSourceNotFound");
        assert_eq!(
            e.to_string(),
            "Secret `db` (spec.valuesFrom[0]) does not exist in namespace team; create it, fix the name, \
             or set `optional: true` on the entry"
        );
        let no_key = Fetched::Found {
            resource_version: "1".into(),
            value: None,
        };
        let e = m
            .add(1, &r(ConfigMap, "cm", Some("k"), None), no_key.clone())
            .unwrap_err();
        assert_eq!(e.reason(), "ValuesSourceNotFound");
        assert!(e.to_string().contains("has no key `k`"), "{e}");
        // Optional: skipped, and not recorded as a source.
        let mut opt = r(Secret, "db", None, None);
        opt.optional = true;
        m.add(2, &opt, Fetched::Missing).unwrap();
        m.add(3, &opt, no_key).unwrap();
        let got = m.finish();
        assert!(got.values.is_empty() && got.sources.is_empty());
    }

    #[test]
    fn invalid_content_is_reported_without_it() {
        use ValuesSourceKind::*;
        let mut m = Merge::new("ns", LIMIT);
        let e = m
            .add(
                0,
                &r(Secret, "db", None, None),
                found("password: [hunter2hunter2"),
            )
            .unwrap_err();
        assert_eq!(e.reason(), "ValuesSourceInvalid");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("line"), "{e}");
        let e = m
            .add(
                0,
                &r(Secret, "db", None, None),
                found("just-a-password-hunter2"),
            )
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("targetPath"), "{e}");
        let bad = Fetched::Found {
            resource_version: "1".into(),
            value: Some(vec![0xff, 0xfe]),
        };
        let e = m.add(0, &r(ConfigMap, "bin", None, None), bad).unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn counts_against_the_values_limit() {
        use ValuesSourceKind::*;
        let mut m = Merge::new("ns", 100);
        // `{"a":"` … `"}`: 8 bytes around the text.
        m.add(
            0,
            &r(ConfigMap, "a", Some("k"), Some("a")),
            found(&"x".repeat(92)),
        )
        .unwrap();
        let e = m
            .add(1, &r(Secret, "b", Some("k"), Some("b")), found("y"))
            .unwrap_err();
        assert_eq!(
            e,
            ValuesFromError::TooLarge {
                size_at_least: 108,
                limit: 100,
                path: "valuesFrom[1] (Secret b key k)".into()
            }
        );
        assert_eq!(e.reason(), "ValuesTooLarge");
    }
}
