//! Resolving a Pack: its chart + version constraint against the cached index of its repository, and its
//! `vars` against its `values`. Pure: the reconcile looks the repository up and hands the result here.
//!
//! Checks that depend only on the Pack (constraint syntax, vars, the size of the values) come first, so a
//! broken spec is reported as such whatever the repository's state, and before any Helm process starts.

use std::{collections::BTreeMap, fmt::Write as _, io};

use common::crd::{
    PackSpec,
    pack::{RepositoryKind, RepositoryReference, ValuesSourceVersion},
};
use serde_json::Value;

use crate::{
    index::{ChartDigest, ChartVersionEntry, RepositoryIndex},
    values_from::{ValuesFrom, ValuesFromError, merge_maps},
    vars::{self, VarsError},
    versions::{self, VersionConstraint, VersionError},
};

/// How many versions a message lists at most (the highest ones).
pub const LISTED_VERSIONS: usize = 10;

/// The default `--max-values-size`: 1 MiB of values as JSON. Helm keeps each revision's values in a
/// release Secret, itself capped at 1 MiB (compressed), and real charts' values are kilobytes.
pub const DEFAULT_MAX_VALUES_BYTES: usize = 1 << 20;

/// What the reconcile knows about the repository a Pack references.
#[derive(Debug, Clone, Copy)]
pub enum RepositoryLookup<'a> {
    /// No repository object of that name.
    NotFound,
    /// The object exists but no index of it is cached yet; `detail` says why (its Ready message).
    NotReady { detail: &'a str },
    /// The index now serving (possibly older than a failed refresh).
    Ready(&'a RepositoryIndex),
}

/// A Pack's chart resolved to one version of the index.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// Chart name.
    pub chart: String,
    /// The version as the index writes it.
    pub version: String,
    /// SHA-256 of the chart archive (lowercase hex), if the index has one.
    pub digest: Option<String>,
    /// Where the archive can be downloaded.
    pub urls: Vec<String>,
    /// `valuesFrom`, then `values`, merged, with vars substituted.
    pub values: Value,
    /// The strings of `values` that came from Secrets: blanked out of Helm's messages.
    pub secret_strings: Vec<String>,
    /// The `valuesFrom` objects merged in.
    pub sources: Vec<ValuesSourceVersion>,
}

/// Why a Pack could not be resolved. [`ResolveError::reason`] feeds the `Ready` condition and Events.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    #[error("{repository} does not exist; create it or fix spec.chart.repository")]
    RepositoryNotFound { repository: String },
    #[error("{repository} has no index yet: {detail}")]
    RepositoryNotReady { repository: String, detail: String },
    #[error(
        "chart `{chart}` is not in {repository}{}",
        list("; charts there", .available, .more)
    )]
    ChartNotFound {
        repository: String,
        chart: String,
        /// Chart names of the repository (up to [`LISTED_VERSIONS`]).
        available: Vec<String>,
        /// How many more names were left out.
        more: usize,
    },
    #[error("{0}")]
    InvalidVersionConstraint(#[from] VersionError),
    #[error(
        "no version of chart `{chart}` in {repository} matches `{constraint}`{}",
        list("; highest versions", .available, .more)
    )]
    NoMatchingVersion {
        repository: String,
        chart: String,
        constraint: String,
        /// The highest versions of the chart, highest first (up to [`LISTED_VERSIONS`]).
        available: Vec<String>,
        more: usize,
    },
    /// A `valuesFrom` object or key is missing (heals when it appears), its content is not values, or a
    /// `targetPath` does not parse.
    #[error("{0}")]
    ValuesFrom(ValuesFromError),
    #[error("spec.vars cannot be applied to spec.values: {0}")]
    InvalidVars(VarsError),
    /// The values, once vars are applied, are larger than `--max-values-size` (counted as compact JSON;
    /// the expansion stops at the limit, see [`vars`]).
    #[error(
        "the Pack's values expand to more than {limit} bytes (at least {size_at_least} bytes of JSON after \
         vars are applied, when reaching {path}; limit --max-values-size={limit}): reduce values or vars, or \
         raise the controller's limit"
    )]
    ValuesTooLarge {
        size_at_least: usize,
        limit: usize,
        /// Where the limit was crossed: `values…`, or `vars.NAME` when the vars alone expand beyond it.
        path: String,
    },
}

impl From<VarsError> for ResolveError {
    fn from(e: VarsError) -> Self {
        match e {
            VarsError::TooLarge {
                size_at_least,
                limit,
                path,
            } => ResolveError::ValuesTooLarge {
                size_at_least,
                limit,
                path,
            },
            other => ResolveError::InvalidVars(other),
        }
    }
}

impl ResolveError {
    /// The reason for status conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::RepositoryNotFound { .. } => "RepositoryNotFound",
            ResolveError::RepositoryNotReady { .. } => "RepositoryNotReady",
            ResolveError::ChartNotFound { .. } => "ChartNotFound",
            ResolveError::InvalidVersionConstraint(e) => e.reason(),
            ResolveError::NoMatchingVersion { .. } => "NoMatchingVersion",
            ResolveError::InvalidVars(e) => e.reason(),
            ResolveError::ValuesTooLarge { .. } => "ValuesTooLarge",
            ResolveError::ValuesFrom(e) => e.reason(),
        }
    }

    /// Whether only a change of the Pack's spec can fix it (the Pack is `Invalid` and `Stalled`); other
    /// causes heal when the repository changes.
    pub fn is_invalid_spec(&self) -> bool {
        matches!(
            self,
            ResolveError::InvalidVersionConstraint(_)
                | ResolveError::InvalidVars(_)
                | ResolveError::ValuesTooLarge { .. }
                | ResolveError::ValuesFrom(ValuesFromError::InvalidTargetPath { .. })
        )
    }
}

fn list(prefix: &str, items: &[String], more: &usize) -> String {
    if items.is_empty() {
        return "; the repository lists none".into();
    }
    let mut s = format!("{prefix}: {}", items.join(", "));
    if *more > 0 {
        let _ = write!(s, " and {more} more");
    }
    s
}

impl From<ValuesFromError> for ResolveError {
    fn from(e: ValuesFromError) -> Self {
        match e {
            ValuesFromError::TooLarge {
                size_at_least,
                limit,
                path,
            } => ResolveError::ValuesTooLarge {
                size_at_least,
                limit,
                path,
            },
            other => ResolveError::ValuesFrom(other),
        }
    }
}

/// How messages name the repository `r`: `ClusterPackRepository `x``, or `PackRepository `x`` with the
/// reminder that only the Pack's own namespace is searched.
pub fn describe(r: &RepositoryReference) -> String {
    match r.kind {
        RepositoryKind::ClusterPackRepository => format!("ClusterPackRepository `{}`", r.name),
        RepositoryKind::PackRepository => format!(
            "PackRepository `{}` (of the Pack's own namespace: a Pack cannot use another namespace's)",
            r.name
        ),
    }
}

/// Resolves `spec` (without `valuesFrom`) against the repository named `repository` in the state
/// `lookup`; its values, vars applied, may take at most `max_values_bytes` as JSON.
pub fn resolve(
    spec: &PackSpec,
    lookup: RepositoryLookup<'_>,
    max_values_bytes: usize,
) -> Result<Resolution, ResolveError> {
    resolve_from(spec, ValuesFrom::default(), lookup, max_values_bytes)
}

/// [`resolve`], with `from` (the merged `valuesFrom` entries) under `spec.values`: `values` is merged on
/// top, then vars are applied to the result (so values from a Secret may use `{{ vars.X }}`).
pub fn resolve_from(
    spec: &PackSpec,
    from: ValuesFrom,
    lookup: RepositoryLookup<'_>,
    max_values_bytes: usize,
) -> Result<Resolution, ResolveError> {
    let repository = describe(&spec.chart.repository);
    let chart = spec.chart.name.clone();
    let constraint = VersionConstraint::parse(spec.chart.version.as_deref().unwrap_or(""))?;
    let ValuesFrom {
        values: mut merged,
        secret_strings,
        sources,
        // The caller keys the release digest with them.
        secret_uids: _,
    } = from;
    let values = match spec.values.clone() {
        Some(Value::Object(inline)) => {
            merge_maps(&mut merged, inline);
            Value::Object(merged)
        }
        // Not a map (the CRD allows only maps): kept as written, as before valuesFrom.
        Some(other) if merged.is_empty() => other,
        _ => Value::Object(merged),
    };
    let values = vars::substitute(&spec.vars, &values, max_values_bytes).map_err(|e| match e {
        // Its text is part of a value, which may have come from a Secret.
        VarsError::MalformedReference { path, reference } => VarsError::MalformedReference {
            path,
            reference: crate::helm::redact(&reference, &secret_strings),
        },
        e => e,
    })?;
    let secret_strings = secret_forms(&spec.vars, secret_strings, max_values_bytes);
    // `substitute` counts exactly as it goes; this is the size as written, checked once more without
    // building the bytes.
    let size = serialized_len(&values);
    if size > max_values_bytes {
        return Err(ResolveError::ValuesTooLarge {
            size_at_least: size,
            limit: max_values_bytes,
            path: "values".into(),
        });
    }

    let index = match lookup {
        RepositoryLookup::NotFound => return Err(ResolveError::RepositoryNotFound { repository }),
        RepositoryLookup::NotReady { detail } => {
            return Err(ResolveError::RepositoryNotReady {
                repository,
                detail: detail.to_owned(),
            });
        }
        RepositoryLookup::Ready(index) => index,
    };
    let Some(entries) = index.chart(&chart) else {
        let names: Vec<String> = index.chart_names().map(str::to_owned).collect();
        let (available, more) = truncate(names);
        return Err(ResolveError::ChartNotFound {
            repository,
            chart,
            available,
            more,
        });
    };
    let Some(entry) = versions::highest_match_by(&constraint, entries.iter(), |e| &e.version)
    else {
        let (available, more) = truncate(highest_first(entries));
        return Err(ResolveError::NoMatchingVersion {
            repository,
            chart,
            constraint: constraint.original().to_owned(),
            available,
            more,
        });
    };
    Ok(Resolution {
        chart,
        version: entry.version.clone(),
        digest: entry.digest.as_ref().map(ChartDigest::hex),
        urls: entry.urls.clone(),
        values,
        secret_strings,
        sources,
    })
}

/// The strings that came from Secrets as written and, where they hold a var, with vars applied (the form
/// that reaches Helm): longest first, no repeats.
pub fn secret_forms(
    vars: &BTreeMap<String, Value>,
    mut strings: Vec<String>,
    max_values_bytes: usize,
) -> Vec<String> {
    let substituted: Vec<String> = strings
        .iter()
        .filter(|s| s.contains("{{"))
        .filter_map(
            |s| match vars::substitute(vars, &Value::String(s.clone()), max_values_bytes) {
                Ok(Value::String(t)) => Some(t),
                _ => None,
            },
        )
        .collect();
    strings.extend(substituted);
    strings.sort_by_key(|s| std::cmp::Reverse(s.len()));
    strings.dedup();
    strings
}

/// The length of `value` as compact JSON (`serde_json::to_vec`), counted without allocating it.
pub(crate) fn serialized_len(value: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing values (a `Value` or its map) into a writer that never fails cannot fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn truncate(mut items: Vec<String>) -> (Vec<String>, usize) {
    let more = items.len().saturating_sub(LISTED_VERSIONS);
    items.truncate(LISTED_VERSIONS);
    (items, more)
}

/// Versions of a chart, highest first; unparsable ones last, as written.
fn highest_first(entries: &[ChartVersionEntry]) -> Vec<String> {
    let mut parsed: BTreeMap<semver::Version, String> = BTreeMap::new();
    let mut unparsed = Vec::new();
    for e in entries {
        match versions::parse_version(&e.version) {
            Ok(v) => {
                parsed.insert(v, e.version.clone());
            }
            Err(_) => unparsed.push(e.version.clone()),
        }
    }
    parsed.into_values().rev().chain(unparsed).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::parse_index;
    use serde_json::json;

    const LIMIT: usize = DEFAULT_MAX_VALUES_BYTES;

    fn index() -> RepositoryIndex {
        let yaml = br#"
apiVersion: v1
entries:
  genpack:
    - {version: 0.1.0, urls: [genpack-0.1.0.tgz], digest: aa}
    - {version: 0.1.3, urls: [genpack-0.1.3.tgz], digest: bb}
    - {version: 0.2.0, urls: [genpack-0.2.0.tgz], digest: cc}
    - {version: 1.0.0, urls: [genpack-1.0.0.tgz], digest: dd}
    - {version: 1.1.0-rc.1, urls: [genpack-1.1.0-rc.1.tgz]}
  other:
    - {version: 2.0.0, urls: [other-2.0.0.tgz]}
"#;
        parse_index(yaml, "http://127.0.0.1:1/repo").unwrap()
    }

    /// A spec as a Pack author writes it; optional fields absent (deserialized, so that new optional
    /// fields of the CRD need no change here).
    fn spec(chart: &str, version: &str) -> PackSpec {
        serde_json::from_value(json!({
            "chart": {
                "repository": {"kind": "ClusterPackRepository", "name": "packs"},
                "name": chart,
                "version": version,
            },
        }))
        .unwrap()
    }

    #[test]
    fn resolves_the_highest_match() {
        let idx = index();
        let cases = [
            ("~=0.1", "0.2.0"),
            ("0.1.3", "0.1.3"),
            ("^1.0", "1.0.0"),
            ("", "1.0.0"),
            (">=1.1.0-0", "1.1.0-rc.1"),
        ];
        for (constraint, want) in cases {
            let got = resolve(
                &spec("genpack", constraint),
                RepositoryLookup::Ready(&idx),
                LIMIT,
            )
            .unwrap_or_else(|e| panic!("{constraint}: {e}"));
            assert_eq!(got.version, want, "{constraint}");
        }
        let got = resolve(
            &spec("genpack", "0.1.3"),
            RepositoryLookup::Ready(&idx),
            LIMIT,
        )
        .unwrap();
        assert_eq!(got.digest.as_deref(), Some("bb"));
        assert_eq!(
            got.urls,
            vec!["http://127.0.0.1:1/repo/genpack-0.1.3.tgz".to_string()]
        );
    }

    #[test]
    fn reports_each_cause() {
        let idx = index();
        let ready = RepositoryLookup::Ready(&idx);
        let err = resolve(&spec("genpack", ">=5"), ready, LIMIT).unwrap_err();
        assert_eq!(err.reason(), "NoMatchingVersion");
        let msg = err.to_string();
        assert!(msg.contains("`>=5`") && msg.contains("packs"), "{msg}");
        assert!(
            msg.contains("1.1.0-rc.1, 1.0.0, 0.2.0, 0.1.3, 0.1.0"),
            "{msg}"
        );

        let err = resolve(&spec("nope", "1"), ready, LIMIT).unwrap_err();
        assert_eq!(err.reason(), "ChartNotFound");
        assert!(err.to_string().contains("genpack, other"), "{err}");

        let err = resolve(&spec("genpack", "~=1"), ready, LIMIT).unwrap_err();
        assert_eq!(err.reason(), "InvalidVersionConstraint");
        assert!(err.is_invalid_spec());

        let err = resolve(&spec("genpack", "1"), RepositoryLookup::NotFound, LIMIT).unwrap_err();
        assert_eq!(err.reason(), "RepositoryNotFound");
        assert!(!err.is_invalid_spec());

        let err = resolve(
            &spec("genpack", "1"),
            RepositoryLookup::NotReady { detail: "HTTP 404" },
            LIMIT,
        )
        .unwrap_err();
        assert_eq!(err.reason(), "RepositoryNotReady");
        assert!(err.to_string().contains("HTTP 404"));
    }

    #[test]
    fn spec_errors_come_before_repository_errors() {
        let mut s = spec("genpack", "1");
        s.values = Some(json!({"tag": "{{ vars.MISSING }}"}));
        let err = resolve(&s, RepositoryLookup::NotFound, LIMIT).unwrap_err();
        assert_eq!(err.reason(), "InvalidVars");
        assert!(err.is_invalid_spec());
        assert!(err.to_string().contains("MISSING"), "{err}");
    }

    #[test]
    fn substitutes_vars() {
        let idx = index();
        let mut s = spec("genpack", "0.1.0");
        s.vars.insert("TAG".into(), json!("1.4.2"));
        s.values = Some(json!({"image": {"tag": "{{ vars.TAG }}"}}));
        let got = resolve(&s, RepositoryLookup::Ready(&idx), LIMIT).unwrap();
        assert_eq!(got.values, json!({"image": {"tag": "1.4.2"}}));
    }

    #[test]
    fn oversized_values_are_a_spec_error_before_the_repository() {
        let idx = index();
        let mut s = spec("genpack", "0.1.0");
        // 150 KB of Pack, 200 MB expanded.
        s.vars.insert("BIG".into(), json!("x".repeat(100_000)));
        s.values = Some(json!({"items": vec!["{{ vars.BIG }}"; 2000]}));
        for lookup in [RepositoryLookup::Ready(&idx), RepositoryLookup::NotFound] {
            let err = resolve(&s, lookup, LIMIT).unwrap_err();
            assert_eq!(err.reason(), "ValuesTooLarge");
            assert!(err.is_invalid_spec());
            let ResolveError::ValuesTooLarge { size_at_least, .. } = err else {
                panic!("{err:?}");
            };
            assert!(size_at_least <= LIMIT + 100_010, "{size_at_least}");
            let msg = err.to_string();
            assert!(
                msg.starts_with("the Pack's values expand to more than 1048576 bytes (at least ")
                    && msg.contains("when reaching values.items[")
                    && msg.ends_with(
                        "limit --max-values-size=1048576): reduce values or vars, or raise the \
                         controller's limit"
                    ),
                "{msg}"
            );
        }
    }

    #[test]
    fn values_without_vars_are_measured_too() {
        let idx = index();
        let mut s = spec("genpack", "0.1.0");
        // `{"a":"` and `"}`: 8 bytes around the text.
        s.values = Some(json!({"a": "x".repeat(92)}));
        let got = resolve(&s, RepositoryLookup::Ready(&idx), 100).unwrap();
        assert_eq!(serialized_len(&got.values), 100);
        assert_eq!(serde_json::to_vec(&got.values).unwrap().len(), 100);
        let err = resolve(&s, RepositoryLookup::Ready(&idx), 99).unwrap_err();
        assert_eq!(
            err,
            ResolveError::ValuesTooLarge {
                size_at_least: 100,
                limit: 99,
                path: "values.a".into()
            }
        );
        // No values at all is `{}`.
        s.values = None;
        assert!(resolve(&s, RepositoryLookup::Ready(&idx), 2).is_ok());
        assert!(resolve(&s, RepositoryLookup::Ready(&idx), 1).is_err());
    }

    #[test]
    fn merge_order_values_from_then_values_then_vars() {
        use crate::values_from::{Fetched, Merge};
        use common::crd::pack::{ValuesReference, ValuesSourceKind};
        let idx = index();
        let entry = |kind, name: &str, key: Option<&str>, target: Option<&str>| ValuesReference {
            kind,
            name: name.into(),
            values_key: key.map(Into::into),
            target_path: target.map(Into::into),
            optional: false,
        };
        let found = |t: &str| Fetched::Found {
            resource_version: "1".into(),
            value: Some(t.as_bytes().to_vec()),
        };
        let mut m = Merge::new("ns", LIMIT);
        m.add(
            0,
            &entry(ValuesSourceKind::ConfigMap, "defaults", None, None),
            found("a: cm\nb: cm\nc: cm\nd: {x: cm, y: cm}\n"),
        )
        .unwrap();
        m.add(
            1,
            &entry(ValuesSourceKind::Secret, "db", None, None),
            found("b: secret-b-value\nc: secret-c-value\nd: {y: secret-y-value}\nurl: 'db://{{ vars.HOST }}/app'\n"),
        )
        .unwrap();
        m.add(
            2,
            &entry(
                ValuesSourceKind::Secret,
                "db",
                Some("password"),
                Some("auth.password"),
            ),
            found("hunter2hunter2"),
        )
        .unwrap();
        let mut s = spec("genpack", "0.1.0");
        s.vars.insert("HOST".into(), json!("pg.internal"));
        s.vars.insert("TAG".into(), json!("inline-tag-value"));
        s.values = Some(json!({"c": "inline", "tag": "{{ vars.TAG }}"}));
        let got = resolve_from(&s, m.finish(), RepositoryLookup::Ready(&idx), LIMIT).unwrap();
        // Later entries win over earlier ones, values over all; vars apply to what Secrets gave too.
        assert_eq!(
            got.values,
            json!({
                "a": "cm",
                "b": "secret-b-value",
                "c": "inline",
                "d": {"x": "cm", "y": "secret-y-value"},
                "url": "db://pg.internal/app",
                "auth": {"password": "hunter2hunter2"},
                "tag": "inline-tag-value",
            })
        );
        // Blanked: exactly what came from Secrets (as written and with vars applied), not inline values,
        // vars or ConfigMaps.
        let mut blanked = got.secret_strings.clone();
        blanked.sort();
        assert_eq!(
            blanked,
            vec![
                "db://pg.internal/app",
                "db://{{ vars.HOST }}/app",
                "hunter2hunter2",
                "secret-b-value",
                "secret-c-value",
                "secret-y-value",
            ]
        );
        let message = crate::helm::error_message(
            "Error: x: invalid value hunter2hunter2 for inline-tag-value at db://pg.internal/app (cm)",
            &got.secret_strings,
        );
        assert_eq!(
            message,
            "x: invalid value <value> for inline-tag-value at <value> (cm)"
        );
    }

    #[test]
    fn values_from_counts_against_the_limit_with_values() {
        use crate::values_from::{Fetched, Merge};
        use common::crd::pack::{ValuesReference, ValuesSourceKind};
        let idx = index();
        let mut m = Merge::new("ns", 100);
        m.add(
            0,
            &ValuesReference {
                kind: ValuesSourceKind::Secret,
                name: "s".into(),
                values_key: None,
                target_path: Some("a".into()),
                optional: false,
            },
            Fetched::Found {
                resource_version: "1".into(),
                value: Some(vec![b'x'; 80]),
            },
        )
        .unwrap();
        let mut s = spec("genpack", "0.1.0");
        // 88 bytes from the Secret, then `,"b":"…"` on top.
        s.values = Some(json!({"b": "y".repeat(10)}));
        let err = resolve_from(&s, m.finish(), RepositoryLookup::Ready(&idx), 100).unwrap_err();
        assert_eq!(err.reason(), "ValuesTooLarge");
    }

    #[test]
    fn lists_at_most_ten_versions() {
        let mut yaml = String::from("apiVersion: v1\nentries:\n  c:\n");
        for i in 0..15 {
            let _ = writeln!(yaml, "    - {{version: 0.0.{i}, urls: [c.tgz]}}");
        }
        let idx = parse_index(yaml.as_bytes(), "http://h/").unwrap();
        let err = resolve(&spec("c", ">=1"), RepositoryLookup::Ready(&idx), LIMIT).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("0.0.14, 0.0.13"), "{msg}");
        assert!(msg.contains("and 5 more"), "{msg}");
        assert!(!msg.contains("0.0.4,"), "{msg}");
    }
}
