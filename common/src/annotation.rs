//! The `pack-operator.k8s.kubit.ir/watch-to-redeploy` annotation: which ConfigMaps and Secrets a
//! workload (Deployment, StatefulSet, DaemonSet) or a Pack watches.
//!
//! # Grammar
//!
//! ```text
//! value     = [sep] segment { sep segment } [sep]
//! sep       = one or more of ',' ' ' '\t' '\n' '\r' '\f'
//! segment   = resource "/" name
//! resource  = "configmap" | "secret"            (lower case only)
//! name      = DNS-1123 subdomain, at most 253 characters
//! ```
//!
//! - Segments are separated by any run of commas and ASCII whitespace, so `configmap/a, secret/b`,
//!   `configmap/a secret/b` and YAML block scalars (one segment per line) all work. A run is one
//!   separator: `configmap/a,,secret/b` is the same as `configmap/a, secret/b`, and separators before
//!   the first or after the last segment are ignored (`configmap/a,` and `configmap/a,\n` are valid).
//! - Whitespace means exactly RE2's `\s` (`[\t\n\f\r ]`); vertical tab and non-ASCII spaces (such as
//!   U+00A0) are not separators, so they end up inside a segment and make it invalid.
//! - The resource is `configmap` or `secret`, spelled in lower case. `ConfigMap/x` is rejected (with a
//!   hint to write `configmap/x`) so that there is one spelling to grep for.
//! - The name is a Kubernetes DNS-1123 subdomain (`IsDNS1123Subdomain`): lower-case alphanumerics, `-`
//!   and `.`, every dot-separated label starting and ending with an alphanumeric, 253 characters at
//!   most. It names an object in the annotated object's namespace; `namespace/name` forms are invalid.
//! - The whole value is at most [`MAX_VALUE_LEN`] characters, and names at least one object.
//! - Duplicates are dropped, keeping the first-seen order.
//!
//! The same rules are enforced at admission by the ValidatingAdmissionPolicy in
//! `deploy/admission/watch-to-redeploy-policy.yaml`; both are checked against the shared corpus
//! `tests/corpus/watch-to-redeploy.yaml`. Change all three together.

use std::{collections::HashSet, fmt};

/// The annotation key, on a Deployment, StatefulSet, DaemonSet or Pack.
pub const WATCH_TO_REDEPLOY: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy";

/// The longest accepted annotation value, in characters (Unicode code points, as CEL's `size()`
/// counts them). It bounds the admission policy's CEL cost; a value this long would already name
/// hundreds of objects.
pub const MAX_VALUE_LEN: usize = 8192;

/// The longest DNS-1123 subdomain, hence the longest ConfigMap or Secret name.
pub const MAX_NAME_LEN: usize = 253;

/// The example every error message points to.
const EXAMPLE: &str = "configmap/my-config, secret/my-secret";

/// Characters that separate segments: the comma and RE2's `\s`.
fn is_separator(c: char) -> bool {
    matches!(c, ',' | ' ' | '\t' | '\n' | '\r' | '\x0C')
}

/// The kind of object a workload watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchKind {
    ConfigMap,
    Secret,
}

impl WatchKind {
    /// The spelling used in the annotation: `configmap` or `secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchKind::ConfigMap => "configmap",
            WatchKind::Secret => "secret",
        }
    }

    fn from_annotation(resource: &str) -> Option<Self> {
        match resource {
            "configmap" => Some(WatchKind::ConfigMap),
            "secret" => Some(WatchKind::Secret),
            _ => None,
        }
    }
}

impl fmt::Display for WatchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One watched object, in the annotated object's namespace. Displays as the annotation spells it,
/// `kind/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchTarget {
    pub kind: WatchKind,
    pub name: String,
}

impl fmt::Display for WatchTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Why a `watch-to-redeploy` value is invalid: the offending segment (if one segment is to blame)
/// and a message that says what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct AnnotationError {
    segment: Option<String>,
    message: String,
}

/// How much of a bad segment an error message quotes; the rest is elided.
const QUOTED_SEGMENT_CHARS: usize = 80;

impl AnnotationError {
    fn value(message: impl Into<String>) -> Self {
        AnnotationError {
            segment: None,
            message: message.into(),
        }
    }

    fn segment(segment: &str, message: impl Into<String>) -> Self {
        AnnotationError {
            segment: Some(segment.to_owned()),
            message: message.into(),
        }
    }

    /// The segment that is invalid, as written; `None` when the value as a whole is (empty or too
    /// long).
    pub fn bad_segment(&self) -> Option<&str> {
        self.segment.as_deref()
    }

    /// What is wrong, without the segment.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Short machine-friendly cause, for condition reasons, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        "InvalidAnnotation"
    }

    fn describe(&self) -> String {
        match &self.segment {
            None => format!("invalid {WATCH_TO_REDEPLOY} value: {}", self.message),
            Some(segment) => {
                // Quote a bounded, escaped prefix: the segment is user input and may be long or
                // hold control characters.
                let mut quoted: String = segment.chars().take(QUOTED_SEGMENT_CHARS).collect();
                if quoted.len() < segment.len() {
                    quoted.push_str("...");
                }
                format!("invalid segment {quoted:?}: {}", self.message)
            }
        }
    }
}

/// Parses a `watch-to-redeploy` value into the objects it names, de-duplicated in first-seen order.
///
/// See the [module documentation](self) for the grammar. Never panics.
pub fn parse_watch_targets(value: &str) -> Result<Vec<WatchTarget>, AnnotationError> {
    // Counted in characters, as CEL's size() counts; the cheap byte length rules out most values.
    if value.len() > MAX_VALUE_LEN && value.chars().count() > MAX_VALUE_LEN {
        return Err(AnnotationError::value(format!(
            "the value is {} characters long; at most {MAX_VALUE_LEN} are allowed",
            value.chars().count()
        )));
    }
    let mut targets = Vec::new();
    let mut seen = HashSet::new();
    for segment in value.split(is_separator).filter(|s| !s.is_empty()) {
        let target = parse_segment(segment)?;
        if seen.insert(target.clone()) {
            targets.push(target);
        }
    }
    if targets.is_empty() {
        return Err(AnnotationError::value(format!(
            "the value names no ConfigMap or Secret; expected e.g. {EXAMPLE}"
        )));
    }
    Ok(targets)
}

fn parse_segment(segment: &str) -> Result<WatchTarget, AnnotationError> {
    let bad = |message: String| AnnotationError::segment(segment, message);
    let Some((resource, name)) = segment.split_once('/') else {
        return Err(bad(format!(
            "expected resource/name, e.g. {EXAMPLE} (separate segments with commas or whitespace)"
        )));
    };
    if name.contains('/') {
        return Err(bad(format!(
            "expected exactly one \"/\" between resource and name (the object must be in the same \
             namespace), e.g. {EXAMPLE}"
        )));
    }
    let Some(kind) = WatchKind::from_annotation(resource) else {
        let lower = resource.to_ascii_lowercase();
        let hint = match WatchKind::from_annotation(&lower) {
            Some(kind) if is_dns1123_subdomain(name) => format!("{kind}/{name}"),
            Some(WatchKind::ConfigMap) => "configmap/my-config".to_owned(),
            Some(WatchKind::Secret) => "secret/my-secret".to_owned(),
            None => "configmap/my-config".to_owned(),
        };
        return Err(bad(format!(
            "resource must be \"configmap\" or \"secret\" (lower case), e.g. {hint}"
        )));
    };
    if name.is_empty() {
        return Err(bad(format!("name is empty, e.g. {EXAMPLE}")));
    }
    let name_chars = name.chars().count();
    if name_chars > MAX_NAME_LEN {
        return Err(bad(format!(
            "name is {name_chars} characters long; at most {MAX_NAME_LEN} are allowed"
        )));
    }
    if !is_dns1123_subdomain(name) {
        let lower = name.to_ascii_lowercase();
        let message = if lower != name && is_dns1123_subdomain(&lower) {
            format!("name must be lower case, e.g. {kind}/{lower}")
        } else {
            format!(
                "name must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.', each \
                 dot-separated part starting and ending with a letter or digit), e.g. {EXAMPLE}"
            )
        };
        return Err(bad(message));
    }
    Ok(WatchTarget {
        kind,
        name: name.to_owned(),
    })
}

/// Whether `s` is a DNS-1123 subdomain as Kubernetes' `IsDNS1123Subdomain` defines it: at most 253
/// characters matching `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('.').all(is_dns1123_label_chars)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, without the 63-character limit of a DNS label (Kubernetes does
/// not apply it to the labels of a subdomain).
fn is_dns1123_label_chars(label: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cm(name: &str) -> WatchTarget {
        WatchTarget {
            kind: WatchKind::ConfigMap,
            name: name.to_owned(),
        }
    }

    fn sec(name: &str) -> WatchTarget {
        WatchTarget {
            kind: WatchKind::Secret,
            name: name.to_owned(),
        }
    }

    #[test]
    fn parses_valid_values() {
        let cases: &[(&str, Vec<WatchTarget>)] = &[
            ("configmap/a", vec![cm("a")]),
            ("secret/a", vec![sec("a")]),
            (
                "configmap/cm-1, secret/sec-2, secret/tls-secret",
                vec![cm("cm-1"), sec("sec-2"), sec("tls-secret")],
            ),
            ("configmap/a,secret/b", vec![cm("a"), sec("b")]),
            ("configmap/a secret/b", vec![cm("a"), sec("b")]),
            ("configmap/a\tsecret/b", vec![cm("a"), sec("b")]),
            ("configmap/a\nsecret/b\n", vec![cm("a"), sec("b")]),
            ("configmap/a\r\nsecret/b", vec![cm("a"), sec("b")]),
            ("configmap/a\x0Csecret/b", vec![cm("a"), sec("b")]),
            ("configmap/a,,secret/b", vec![cm("a"), sec("b")]),
            (" , configmap/a ,", vec![cm("a")]),
            ("configmap/a,", vec![cm("a")]),
            ("configmap/a,\n", vec![cm("a")]),
            ("configmap/a, secret/a", vec![cm("a"), sec("a")]),
            (
                "secret/b configmap/a secret/b configmap/a",
                vec![sec("b"), cm("a")],
            ),
            ("configmap/a.b-c.0", vec![cm("a.b-c.0")]),
            ("configmap/0", vec![cm("0")]),
        ];
        for (value, want) in cases {
            assert_eq!(parse_watch_targets(value).as_ref(), Ok(want), "{value:?}");
        }
    }

    #[test]
    fn rejects_invalid_values() {
        // (value, the segment to blame, a fragment of the message)
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("", None, "names no ConfigMap or Secret"),
            (" \t\n", None, "names no ConfigMap or Secret"),
            (",", None, "names no ConfigMap or Secret"),
            (
                "ConfigMap/x",
                Some("ConfigMap/x"),
                "(lower case), e.g. configmap/x",
            ),
            ("SECRET/x", Some("SECRET/x"), "(lower case), e.g. secret/x"),
            (
                "Secret/X",
                Some("Secret/X"),
                "(lower case), e.g. secret/my-secret",
            ),
            (
                "configmap/a, deployment/x",
                Some("deployment/x"),
                "(lower case), e.g. configmap/my-config",
            ),
            ("configmaps/x", Some("configmaps/x"), "resource must be"),
            ("cm/x", Some("cm/x"), "resource must be"),
            ("configmap/", Some("configmap/"), "name is empty"),
            ("/x", Some("/x"), "resource must be"),
            ("a/b/c", Some("a/b/c"), "exactly one \"/\""),
            (
                "configmap/ns/x",
                Some("configmap/ns/x"),
                "exactly one \"/\"",
            ),
            ("configmap", Some("configmap"), "expected resource/name"),
            (
                "configmap/My-Config",
                Some("configmap/My-Config"),
                "e.g. configmap/my-config",
            ),
            ("configmap/a_b", Some("configmap/a_b"), "DNS-1123"),
            ("configmap/-a", Some("configmap/-a"), "DNS-1123"),
            ("configmap/a-", Some("configmap/a-"), "DNS-1123"),
            ("configmap/a..b", Some("configmap/a..b"), "DNS-1123"),
            ("configmap/.a", Some("configmap/.a"), "DNS-1123"),
            ("configmap/a.", Some("configmap/a."), "DNS-1123"),
            ("configmap/a.-b", Some("configmap/a.-b"), "DNS-1123"),
            ("configmap/café", Some("configmap/café"), "DNS-1123"),
            ("configmap/a\u{a0}", Some("configmap/a\u{a0}"), "DNS-1123"),
            (
                "configmap/a\u{a0}secret/b",
                Some("configmap/a\u{a0}secret/b"),
                "exactly one",
            ),
            (
                "configmap/a\x0Bsecret/b",
                Some("configmap/a\x0Bsecret/b"),
                "exactly one",
            ),
            (
                "configmap/a;secret/b",
                Some("configmap/a;secret/b"),
                "exactly one",
            ),
        ];
        for (value, segment, fragment) in cases {
            let err = parse_watch_targets(value).expect_err(value);
            assert_eq!(err.bad_segment(), *segment, "{value:?}");
            assert!(
                err.to_string().contains(fragment),
                "{value:?}: {err} does not contain {fragment:?}"
            );
            assert_eq!(err.reason(), "InvalidAnnotation");
        }
    }

    #[test]
    fn error_names_the_segment() {
        let err = parse_watch_targets("secret/ok, ConfigMap/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid segment \"ConfigMap/x\": resource must be \"configmap\" or \"secret\" \
             (lower case), e.g. configmap/x"
        );
        let err = parse_watch_targets("deployment/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid segment \"deployment/x\": resource must be \"configmap\" or \"secret\" \
             (lower case), e.g. configmap/my-config"
        );
    }

    #[test]
    fn error_quotes_a_bounded_escaped_segment() {
        let long = format!("configmap/{}", "é".repeat(500));
        let err = parse_watch_targets(&long).unwrap_err();
        assert_eq!(err.bad_segment(), Some(long.as_str()));
        let shown = err.to_string();
        assert!(shown.len() < 400, "{shown}");
        assert!(shown.contains("...\""), "{shown}");
        let err = parse_watch_targets("configmap/a\x0Bb").unwrap_err();
        assert!(err.to_string().contains(r#""configmap/a\u{b}b""#), "{err}");
    }

    #[test]
    fn name_length_limit() {
        let name = |len: usize| "a".repeat(len);
        let ok = format!("secret/{}", name(253));
        assert_eq!(parse_watch_targets(&ok), Ok(vec![sec(&name(253))]));
        let dotted = format!("{}.{}", name(126), name(126));
        assert_eq!(dotted.len(), 253);
        assert!(is_dns1123_subdomain(&dotted));
        let too_long = format!("secret/{}", name(254));
        let err = parse_watch_targets(&too_long).unwrap_err();
        assert!(err.message().contains("254 characters"), "{err}");
        assert!(!is_dns1123_subdomain(&name(254)));
    }

    #[test]
    fn value_length_limit() {
        // "configmap/" + 243 chars + "," = 254 bytes; fill to exactly MAX_VALUE_LEN with separators.
        let one = |i: usize| format!("configmap/{:0>243},", i);
        let mut value: String = (0..32).map(one).collect();
        assert_eq!(value.len(), 32 * 254);
        value.push_str(&" ".repeat(MAX_VALUE_LEN - value.len()));
        assert_eq!(value.len(), MAX_VALUE_LEN);
        assert_eq!(parse_watch_targets(&value).map(|t| t.len()), Ok(32));
        value.push(' ');
        let err = parse_watch_targets(&value).unwrap_err();
        assert_eq!(err.bad_segment(), None);
        assert!(err.message().contains("8193 characters"), "{err}");
        // Characters, not bytes, are counted; a non-ASCII value is invalid for its segment instead.
        let err = parse_watch_targets(&format!("configmap/{}", "é".repeat(5000))).unwrap_err();
        assert!(err.bad_segment().is_some(), "{err}");
    }

    #[test]
    fn dns1123_subdomain() {
        for ok in ["a", "0", "a-b", "a.b", "a--b", "1.2.3", "a-0.b-1"] {
            assert!(is_dns1123_subdomain(ok), "{ok}");
        }
        for bad in [
            "", "A", "a_b", "-a", "a-", ".", "a.", ".a", "a..b", "a.-b", "a b", "é",
        ] {
            assert!(!is_dns1123_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn display() {
        assert_eq!(WatchKind::ConfigMap.to_string(), "configmap");
        assert_eq!(WatchKind::Secret.as_str(), "secret");
        assert_eq!(sec("tls").to_string(), "secret/tls");
    }

    /// One case of `tests/corpus/watch-to-redeploy.yaml`, shared with the admission policy's test.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct CorpusCase {
        value: String,
        valid: bool,
        #[serde(default)]
        targets: Vec<String>,
        why: String,
    }

    #[test]
    fn agrees_with_the_shared_corpus() {
        let corpus: Vec<CorpusCase> =
            serde_yaml::from_str(include_str!("../../tests/corpus/watch-to-redeploy.yaml"))
                .expect("the corpus is a YAML list of cases");
        assert!(corpus.len() >= 40, "only {} cases", corpus.len());
        for case in &corpus {
            let got = parse_watch_targets(&case.value);
            let context = format!("value {:?} ({}): got {got:?}", case.value, case.why);
            assert_eq!(got.is_ok(), case.valid, "{context}");
            match got {
                Ok(targets) => {
                    let shown: Vec<String> = targets.iter().map(ToString::to_string).collect();
                    assert_eq!(shown, case.targets, "{context}");
                }
                Err(_) => assert!(
                    case.targets.is_empty(),
                    "{context}: invalid cases list no targets"
                ),
            }
        }
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?){0,3}"
    }

    fn target_strategy() -> impl Strategy<Value = WatchTarget> {
        (
            prop_oneof![Just(WatchKind::ConfigMap), Just(WatchKind::Secret)],
            name_strategy(),
        )
            .prop_map(|(kind, name)| WatchTarget { kind, name })
    }

    fn dedup(targets: &[WatchTarget]) -> Vec<WatchTarget> {
        let mut seen = HashSet::new();
        targets
            .iter()
            .filter(|t| seen.insert((*t).clone()))
            .cloned()
            .collect()
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_strings(value in any::<String>()) {
            if let Err(err) = parse_watch_targets(&value) {
                let _ = err.to_string();
            }
        }

        #[test]
        fn never_panics_on_near_misses(value in "[a-zA-Z0-9/,.;_ \t\n\r\x0B\x0C\u{a0}é-]{0,300}") {
            match parse_watch_targets(&value) {
                Ok(targets) => prop_assert!(!targets.is_empty()),
                Err(err) => { let _ = err.to_string(); }
            }
        }

        #[test]
        fn valid_lists_round_trip(
            targets in prop::collection::vec(target_strategy(), 1..12),
            seps in prop::collection::vec("[, \t\n\r\x0C]{1,4}", 12),
            lead in "[, \t\n\r\x0C]{0,3}",
            trail in "[, \t\n\r\x0C]{0,3}",
            repeat in 0usize..3,
        ) {
            // Repeat a prefix of the list so that duplicates occur.
            let mut written = targets.clone();
            written.extend(targets.iter().take(repeat).cloned());
            let mut value = lead;
            for (i, target) in written.iter().enumerate() {
                if i > 0 {
                    value.push_str(&seps[i % seps.len()]);
                }
                value.push_str(&target.to_string());
            }
            value.push_str(&trail);
            let parsed = parse_watch_targets(&value);
            prop_assert_eq!(parsed.as_ref(), Ok(&dedup(&written)), "{:?}", value);
            // Display re-parses to the same list.
            let shown: Vec<String> = parsed.unwrap().iter().map(ToString::to_string).collect();
            prop_assert_eq!(parse_watch_targets(&shown.join(", ")), Ok(dedup(&written)));
        }

        #[test]
        fn upper_case_in_a_name_is_rejected(
            targets in prop::collection::vec(target_strategy(), 1..6),
            which in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            upper in "[A-Z]",
        ) {
            let i = which.index(targets.len());
            let mut bad = targets[i].clone();
            let pos = at.index(bad.name.len());
            bad.name.replace_range(pos..=pos, &upper);
            let segment = bad.to_string();
            let value = targets
                .iter()
                .enumerate()
                .map(|(j, t)| if j == i { segment.clone() } else { t.to_string() })
                .collect::<Vec<_>>()
                .join(", ");
            let err = parse_watch_targets(&value).unwrap_err();
            prop_assert_eq!(err.bad_segment(), Some(segment.as_str()));
        }
    }
}
