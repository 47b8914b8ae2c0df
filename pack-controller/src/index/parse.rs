//! Parsing and trimming an `index.yaml`: [`parse_index`] turns the bytes of an index (or of the JSON form
//! Helm 3.18+ can write) into a [`RepositoryIndex`] of [`ChartVersionEntry`]s. Pure and never panics; errors
//! say what is wrong and, where the parser knows it, on which line.
//!
//! * **URL resolution** (as Helm's `ResolveReferenceURL`): the repository base is `spec.url` with a trailing
//!   `/` added, so `https://h/repo` and `https://h/repo/` both mean the directory that holds `index.yaml`.
//!   A chart URL with a scheme (`https://...`, `oci://...`) is kept exactly as written; any other URL is a
//!   relative reference resolved by RFC 3986 against that base (`genpack-0.1.0.tgz` →
//!   `https://h/repo/genpack-0.1.0.tgz`, `charts/x.tgz` → `https://h/repo/charts/x.tgz`, `/x.tgz` →
//!   `https://h/x.tgz`). A resolved URL without a query of its own inherits the query of `spec.url` (signed
//!   or token URLs, as Helm does), but only on the repository's own host. Credentials written into `spec.url`
//!   (`https://user:pass@h/`) are used for the index request but never copied into chart URLs, which may end
//!   up in status and Events; the chart download applies the repository's credentials itself.
//! * **Memory**: only what resolution and download need is kept: `version`, `urls` and `digest` of each chart
//!   version; everything else (descriptions, maintainers, icons, dependencies, annotations, `created`,
//!   `appVersion`, ...) is skipped by serde without being built. Both parsers stream: YAML through
//!   `serde-saphyr` (events are pulled one at a time, no document tree and no event list is held), an index
//!   that starts with `{` through `serde_json`. Each chart version becomes its [`ChartVersionEntry`] as soon
//!   as it is read (URLs resolved, digest normalised), so no raw copy of the index is held beside the
//!   result: parsing holds the bytes, the entries built so far and one entry in flight. A 24.7 MB index of
//!   100,000 versions parses within 96 MiB of process RSS (docs/pack.md, "Index memory").
//! * **Digests**: [`RepositoryIndex::digest`] is the lowercase hex SHA-256 of the fetched bytes (a changed file
//!   is a new digest). Chart digests are kept as lowercase hex with a `sha256:` prefix removed; a malformed
//!   one is kept as written, so the download's digest check fails loudly instead of being skipped.
//! * **Entries** without a `version` are dropped (Helm skips invalid entries too); everything else is kept
//!   in index order, choosing among versions is [`crate::versions`]' job.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest as _, Sha256};
use url::Url;

use super::error::{IndexError, redact_url, redact_url_text};

/// One version of a chart in a repository index: what resolving and downloading it needs, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartVersionEntry {
    /// The version as written in the index (`0.1.0`, `v1.2.3`, ...).
    pub version: String,
    /// Where the chart archive can be downloaded, resolved to absolute URLs (see the module docs).
    pub urls: Vec<String>,
    /// SHA-256 of the chart archive, when the index has one.
    pub digest: Option<ChartDigest>,
}

/// A chart archive's digest as an index gives it: 32 bytes when it is a SHA-256 in hex (with or without
/// `sha256:`, any case), kept that way because an index holds one per version (100,000 of them as hex
/// strings cost ~9 MiB); anything else is kept as written, so the download's digest check fails loudly
/// instead of being skipped.
#[derive(Clone, PartialEq, Eq)]
pub enum ChartDigest {
    Sha256([u8; 32]),
    Other(Box<str>),
}

impl ChartDigest {
    /// Parses an index's `digest` field; None when empty.
    pub fn parse(digest: &str) -> Option<ChartDigest> {
        let trimmed = digest.trim();
        let hex = trimmed.strip_prefix("sha256:").unwrap_or(trimmed);
        if hex.is_empty() {
            return None;
        }
        let mut bytes = [0u8; 32];
        let decoded = hex.len() == 64
            && hex
                .as_bytes()
                .chunks(2)
                .zip(bytes.iter_mut())
                .all(|(pair, out)| {
                    std::str::from_utf8(pair)
                        .ok()
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                        .map(|b| *out = b)
                        .is_some()
                });
        Some(if decoded {
            ChartDigest::Sha256(bytes)
        } else {
            ChartDigest::Other(hex.to_ascii_lowercase().into())
        })
    }

    /// Lowercase hex (or the malformed value as written, lowercased).
    pub fn hex(&self) -> String {
        match self {
            ChartDigest::Sha256(bytes) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
            ChartDigest::Other(s) => s.to_string(),
        }
    }
}

impl From<&str> for ChartDigest {
    /// For literals and tests: [`ChartDigest::parse`], an empty string kept as `Other("")`.
    fn from(s: &str) -> Self {
        ChartDigest::parse(s).unwrap_or(ChartDigest::Other("".into()))
    }
}

impl fmt::Debug for ChartDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.hex())
    }
}

/// The parsed index of one repository: chart name → versions, in index order. Not `Clone` on purpose:
/// it can be large, share it behind an `Arc` (as [`CachedRepository`](super::CachedRepository) does).
pub struct RepositoryIndex {
    charts: BTreeMap<String, Vec<ChartVersionEntry>>,
    /// SHA-256 of the fetched bytes, lowercase hex.
    pub digest: String,
    /// When the bytes were parsed (just after they were fetched).
    pub fetched_at: Timestamp,
}

impl RepositoryIndex {
    /// An index built from elsewhere than an `index.yaml` (an OCI registry's tags), fetched now.
    pub(crate) fn from_charts(
        charts: BTreeMap<String, Vec<ChartVersionEntry>>,
        digest: String,
    ) -> Self {
        RepositoryIndex {
            charts,
            digest,
            fetched_at: Timestamp::now(),
        }
    }

    /// The versions of chart `name`, in index order; `None` when the repository has no such chart.
    pub fn chart(&self, name: &str) -> Option<&[ChartVersionEntry]> {
        self.charts.get(name).map(Vec::as_slice)
    }

    /// The chart names, sorted.
    pub fn chart_names(&self) -> impl Iterator<Item = &str> {
        self.charts.keys().map(String::as_str)
    }

    /// Number of charts.
    pub fn chart_count(&self) -> usize {
        self.charts.len()
    }

    /// Number of chart versions over all charts.
    pub fn version_count(&self) -> usize {
        self.charts.values().map(Vec::len).sum()
    }
}

impl fmt::Debug for RepositoryIndex {
    // The charts can be tens of thousands of entries: show the shape, not the content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RepositoryIndex")
            .field("charts", &self.chart_count())
            .field("versions", &self.version_count())
            .field("digest", &self.digest)
            .field("fetched_at", &self.fetched_at)
            .finish()
    }
}

/// Parses an `index.yaml` (or its JSON form). `base_url` is the repository URL (`spec.url`, the directory
/// that holds `index.yaml`); relative chart URLs are resolved against it.
pub fn parse_index(bytes: &[u8], base_url: &str) -> Result<RepositoryIndex, IndexError> {
    let base = repository_base(base_url)?;
    parse_with_base(bytes, &base)
}

pub(super) fn parse_with_base(bytes: &[u8], base: &Url) -> Result<RepositoryIndex, IndexError> {
    let resolver = UrlResolver::new(base);
    let raw = parse_document(bytes, &resolver)?;
    if raw
        .api_version
        .as_deref()
        .is_none_or(|v| v.trim().is_empty())
    {
        return Err(IndexError::NotAnIndex {
            detail: "it has no `apiVersion`; a Helm index starts with `apiVersion: v1` and lists charts \
                     under `entries`"
                .into(),
        });
    }
    let Some(charts) = raw.entries else {
        return Err(IndexError::NotAnIndex {
            detail: "it has no `entries`; a Helm index lists its charts under `entries`".into(),
        });
    };
    Ok(RepositoryIndex {
        charts: charts.unwrap_or_default(),
        digest: format!("{:x}", Sha256::digest(bytes)),
        fetched_at: Timestamp::now(),
    })
}

fn parse_document(bytes: &[u8], resolver: &UrlResolver<'_>) -> Result<RawIndex, IndexError> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
    let seed = DocumentSeed { resolver };
    let document = match start.map(|i| text[i]) {
        Some(b'<') => {
            return Err(IndexError::NotAnIndex {
                detail:
                    "the server sent an HTML or XML page; spec.url must be the repository URL, the \
                         directory that holds index.yaml"
                        .into(),
            });
        }
        // JSON (what `helm repo index --json` writes) streams through serde_json; a YAML flow mapping that is
        // not JSON falls back to the YAML parser, whose error is the one reported.
        Some(b'{') => match parse_json(text, seed) {
            Ok(document) => document,
            Err(json) if json.is_syntax() || json.is_eof() => parse_yaml(text, seed)?,
            Err(json) => {
                return Err(IndexError::Parse {
                    line: (json.line() > 0).then_some(json.line()),
                    message: json.to_string(),
                });
            }
        },
        _ => parse_yaml(text, seed)?,
    };
    match document {
        Document::Index(raw) => Ok(raw),
        Document::Other(found) => Err(IndexError::NotAnIndex {
            detail: format!(
                "the document is {found}, not a mapping with `apiVersion` and `entries`"
            ),
        }),
    }
}

fn parse_json(text: &[u8], seed: DocumentSeed<'_, '_>) -> Result<Document, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let document = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(document)
}

/// The YAML parser's settings: its budgets grow with the input, which `--max-index-size` already caps (an
/// index of 100,000 versions is millions of events, past the defaults made for configuration files);
/// every node and event costs at least a byte of input. The alias limits keep their defaults: they are
/// what stops an alias bomb.
fn yaml_options(len: usize) -> serde_saphyr::Options {
    let scaled = len.saturating_mul(2).saturating_add(1024);
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = budget.max_events.max(scaled);
    budget.max_nodes = budget.max_nodes.max(scaled);
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(scaled);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // The message goes to status: the line is enough, no quoted snippet of the index.
    options.with_snippet = false;
    options
}

fn parse_yaml(text: &[u8], seed: DocumentSeed<'_, '_>) -> Result<Document, IndexError> {
    serde_saphyr::with_deserializer_from_slice_with_options(text, yaml_options(text.len()), |de| {
        seed.deserialize(de)
    })
    .map_err(|e| {
        let line = e
            .location()
            .and_then(|l| usize::try_from(l.line()).ok())
            .filter(|l| *l > 0);
        let mut message = e.to_string();
        if let Some(line) = line
            && !message.contains(&format!("line {line}"))
        {
            message = format!("line {line}: {message}");
        }
        IndexError::Parse { line, message }
    })
}

/// The top of the document: an index, or something else (a list, a scalar, nothing) named for the error.
enum Document {
    Index(RawIndex),
    Other(&'static str),
}

/// Reads the whole document; chart versions are resolved against the repository as they are read.
#[derive(Clone, Copy)]
struct DocumentSeed<'r, 'b> {
    resolver: &'r UrlResolver<'b>,
}

impl<'de> DeserializeSeed<'de> for DocumentSeed<'_, '_> {
    type Value = Document;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Document, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocumentSeed<'_, '_> {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Helm repository index (a mapping with `apiVersion` and `entries`)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let mut raw = RawIndex {
            api_version: None,
            entries: None,
        };
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::ApiVersion => {
                    if raw.api_version.is_some() {
                        return Err(de::Error::duplicate_field("apiVersion"));
                    }
                    raw.api_version = Some(map.next_value::<Option<String>>()?.unwrap_or_default());
                }
                Key::Entries => {
                    if raw.entries.is_some() {
                        return Err(de::Error::duplicate_field("entries"));
                    }
                    raw.entries = Some(map.next_value_seed(ChartsSeed {
                        resolver: self.resolver,
                    })?);
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Document::Index(raw))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Document::Other("a list"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Document, E> {
        Ok(Document::Other("a single string"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Document, E> {
        Ok(Document::Other("a single boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Document, E> {
        Ok(Document::Other("a single number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Document, E> {
        Ok(Document::Other("a single number"))
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<Document, E> {
        Ok(Document::Other("a single number"))
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<Document, E> {
        Ok(Document::Other("a single number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Document, E> {
        Ok(Document::Other("a single number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Document, E> {
        Ok(Document::Other("empty"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Document, E> {
        Ok(Document::Other("empty"))
    }
}

/// Chart name → its versions, as kept.
type Charts = BTreeMap<String, Vec<ChartVersionEntry>>;

/// The kept part of an index.
struct RawIndex {
    api_version: Option<String>,
    /// `None`: no `entries` key (not an index); `Some(None)`: `entries:` with no value (an empty repository).
    entries: Option<Option<Charts>>,
}

/// A key of the index's top mapping; every other key's value is skipped without being built.
enum Key {
    ApiVersion,
    Entries,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "apiVersion" => Key::ApiVersion,
                    "entries" => Key::Entries,
                    _ => Key::Other,
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Key, E> {
                Ok(Key::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Key, E> {
                Ok(Key::Other)
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

/// `entries`: null (an empty repository) or a mapping chart name → versions.
struct ChartsSeed<'r, 'b> {
    resolver: &'r UrlResolver<'b>,
}

impl<'de> DeserializeSeed<'de> for ChartsSeed<'_, '_> {
    type Value = Option<Charts>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ChartsSeed<'_, '_> {
    type Value = Option<Charts>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of chart names to lists of chart versions")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut charts = Charts::new();
        while let Some(name) = map.next_key::<String>()? {
            let versions = map.next_value_seed(VersionsSeed {
                resolver: self.resolver,
            })?;
            charts.insert(name, versions);
        }
        Ok(Some(charts))
    }
}

/// The versions of one chart: null or a list; each entry is trimmed to a [`ChartVersionEntry`] as it is read.
struct VersionsSeed<'r, 'b> {
    resolver: &'r UrlResolver<'b>,
}

impl<'de> DeserializeSeed<'de> for VersionsSeed<'_, '_> {
    type Value = Vec<ChartVersionEntry>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for VersionsSeed<'_, '_> {
    type Value = Vec<ChartVersionEntry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of chart versions")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut versions = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(raw) = seq.next_element::<RawChartVersion>()? {
            versions.extend(raw.into_entry(self.resolver));
        }
        versions.shrink_to_fit();
        Ok(versions)
    }
}

#[derive(Deserialize)]
struct RawChartVersion {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    urls: Option<Vec<String>>,
    #[serde(default)]
    digest: Option<String>,
}

impl RawChartVersion {
    fn into_entry(self, resolver: &UrlResolver<'_>) -> Option<ChartVersionEntry> {
        let version = self.version.filter(|v| !v.trim().is_empty())?;
        let urls = self
            .urls
            .unwrap_or_default()
            .into_iter()
            .filter(|u| !u.trim().is_empty())
            .map(|u| resolver.resolve(u))
            .collect();
        Some(ChartVersionEntry {
            version,
            urls,
            digest: self.digest.as_deref().and_then(ChartDigest::parse),
        })
    }
}

/// Resolves chart URLs of one index against the repository base (see the module docs).
struct UrlResolver<'a> {
    /// The base without user info: credentials never travel into chart URLs.
    base: Url,
    query: Option<&'a str>,
}

impl<'a> UrlResolver<'a> {
    fn new(base: &'a Url) -> Self {
        let mut clean = base.clone();
        // Only fails for URLs that cannot be a base, which `repository_base` rejects.
        let _ = clean.set_username("");
        let _ = clean.set_password(None);
        clean.set_query(None);
        UrlResolver {
            base: clean,
            query: base.query(),
        }
    }

    fn resolve(&self, reference: String) -> String {
        match Url::parse(&reference) {
            // Absolute: kept exactly as written.
            Ok(_) => reference,
            Err(url::ParseError::RelativeUrlWithoutBase) => match self.base.join(&reference) {
                Ok(mut resolved) => {
                    if resolved.query().is_none()
                        && resolved.host() == self.base.host()
                        && resolved.port_or_known_default() == self.base.port_or_known_default()
                    {
                        resolved.set_query(self.query);
                    }
                    resolved.into()
                }
                // Kept as written: the download reports it as an unusable URL.
                Err(_) => reference,
            },
            Err(_) => reference,
        }
    }
}

/// `spec.url` as the directory base: http(s) only, trailing `/`, no fragment.
pub(super) fn repository_base(repository_url: &str) -> Result<Url, IndexError> {
    let invalid = |message: String| IndexError::InvalidUrl {
        url: redact_url_text(repository_url),
        message,
    };
    let mut url = Url::parse(repository_url.trim()).map_err(|e| {
        invalid(format!(
            "{e}; expected an absolute http:// or https:// URL such as https://charts.example.com/stable"
        ))
    })?;
    match url.scheme() {
        "http" | "https" => {}
        "oci" => {
            return Err(invalid(
                "OCI repositories are not supported yet; use an http:// or https:// Helm repository".into(),
            ));
        }
        other => {
            return Err(invalid(format!(
                "scheme `{other}` is not supported; use http:// or https://"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("the URL has no host".into()));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_fragment(None);
    Ok(url)
}

/// `<base>index.yaml`, keeping the query of `spec.url`.
pub(super) fn index_url(base: &Url) -> Result<Url, IndexError> {
    let mut url = base
        .join("index.yaml")
        .map_err(|e| IndexError::InvalidUrl {
            url: redact_url(base),
            message: e.to_string(),
        })?;
    url.set_query(base.query());
    Ok(url)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn chart_digests_are_kept_as_bytes_and_malformed_ones_as_written() {
        let hex = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let d = ChartDigest::parse(&format!("sha256:{}", hex.to_uppercase())).unwrap();
        assert!(matches!(d, ChartDigest::Sha256(_)));
        assert_eq!(d.hex(), hex);
        assert_eq!(ChartDigest::parse(hex), Some(d));
        let odd = ChartDigest::parse(" sha256:XYZ ").unwrap();
        assert_eq!(odd, ChartDigest::Other("xyz".into()));
        assert_eq!(odd.hex(), "xyz");
        assert_eq!(ChartDigest::parse("sha256:"), None);
        assert_eq!(
            ChartDigest::parse(&format!("{hex}0")).unwrap().hex(),
            format!("{hex}0")
        );
    }

    use proptest::prelude::*;

    /// The repository URL of the fixtures below; the cache tests use them too.
    pub(crate) const BASE: &str = "https://charts.example.com/kubit-packs";
    const DIGEST_A: &str = "5b2a4b4c9c1f0e8d8a5d3f2e1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
    const DIGEST_B: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    /// As `helm repo index` writes it (fields sorted, every chart metadata field present), plus a chart
    /// served from another host with absolute URLs.
    pub(crate) const HELM_INDEX: &str = r#"apiVersion: v1
entries:
  genpack:
  - annotations:
      category: Infrastructure
    apiVersion: v2
    appVersion: 1.16.0
    created: "2024-05-02T10:11:12.123456789Z"
    dependencies:
    - name: common
      repository: https://charts.example.com/common
      version: 2.x.x
    description: A generic application chart
    digest: 5b2a4b4c9c1f0e8d8a5d3f2e1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b
    home: https://github.com/kubit-ir/genpack
    icon: https://example.com/icon.png
    keywords:
    - generic
    - app
    maintainers:
    - email: ops@kubit.ir
      name: ops
    name: genpack
    sources:
    - https://github.com/kubit-ir/genpack
    type: application
    urls:
    - charts/genpack-0.2.0.tgz
    version: 0.2.0
  - apiVersion: v2
    appVersion: "1.10"
    created: 2024-04-01T09:00:00.5+02:00
    description: A generic application chart
    digest: sha256:0F1E2D3C4B5A69788796A5B4C3D2E1F00F1E2D3C4B5A69788796A5B4C3D2E1F0
    name: genpack
    type: application
    urls:
    - genpack-0.1.0.tgz
    version: 0.1.0
  - apiVersion: v2
    appVersion: 1.10
    created: "2024-05-03T00:00:00Z"
    name: genpack
    urls:
    - /archive/genpack-0.3.0-rc.1.tgz
    version: 0.3.0-rc.1
  redis:
  - apiVersion: v2
    appVersion: 7.2.4
    created: "2024-03-01T00:00:00Z"
    description: |
      Redis(R) is an open source, advanced key-value store.
      It is often referred to as a data structure server.
    digest: 0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0
    icon: https://bitnami.com/assets/stacks/redis/img/redis-stack-220x234.png
    name: redis
    urls:
    - https://cdn.example.org/redis/redis-18.0.0.tgz
    - oci://registry.example.org/charts/redis:18.0.0
    version: 18.0.0
  empty: []
generated: "2024-05-03T10:11:12.987654321Z"
serverInfo:
  contextPath: /kubit-packs
"#;

    fn parse_err(text: &str) -> IndexError {
        parse_index(text.as_bytes(), BASE).unwrap_err()
    }

    #[test]
    fn parses_an_index_written_by_helm() {
        let index = parse_index(HELM_INDEX.as_bytes(), BASE).unwrap();
        assert_eq!(index.chart_count(), 3);
        assert_eq!(index.version_count(), 4);
        assert_eq!(
            index.chart_names().collect::<Vec<_>>(),
            ["empty", "genpack", "redis"]
        );
        assert_eq!(index.chart("empty"), Some(&[][..]));
        assert_eq!(index.chart("nginx"), None);

        let genpack = index.chart("genpack").unwrap();
        assert_eq!(
            genpack[0],
            ChartVersionEntry {
                version: "0.2.0".into(),
                urls: vec![
                    "https://charts.example.com/kubit-packs/charts/genpack-0.2.0.tgz".into()
                ],
                digest: Some(DIGEST_A.into()),
            }
        );
        // `sha256:` prefix removed and lowercased.
        assert_eq!(genpack[1].version, "0.1.0");
        assert_eq!(
            genpack[1].urls,
            ["https://charts.example.com/kubit-packs/genpack-0.1.0.tgz"]
        );
        assert_eq!(
            genpack[1].digest.as_ref().map(ChartDigest::hex).as_deref(),
            Some(DIGEST_B)
        );
        assert_eq!(
            genpack[2].urls,
            ["https://charts.example.com/archive/genpack-0.3.0-rc.1.tgz"]
        );
        assert_eq!(genpack[2].digest, None);

        let redis = &index.chart("redis").unwrap()[0];
        assert_eq!(
            redis.urls,
            [
                "https://cdn.example.org/redis/redis-18.0.0.tgz",
                "oci://registry.example.org/charts/redis:18.0.0"
            ]
        );

        assert_eq!(
            index.digest,
            format!("{:x}", Sha256::digest(HELM_INDEX.as_bytes()))
        );
        assert_eq!(index.digest.len(), 64);
        // Debug shows the shape, not the content.
        let debug = format!("{index:?}");
        assert!(
            debug.contains("charts: 3") && debug.contains("versions: 4"),
            "{debug}"
        );
        assert!(!debug.contains("genpack"), "{debug}");
    }

    #[test]
    fn the_json_form_gives_the_same_index() {
        let json = r#"{"apiVersion":"v1","generated":"2024-05-03T10:11:12Z","entries":{
            "genpack":[{"name":"genpack","version":"0.1.0","appVersion":"1.0","urls":["genpack-0.1.0.tgz"],
                        "digest":"5b2a4b4c9c1f0e8d8a5d3f2e1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b",
                        "maintainers":[{"name":"ops"}],"dependencies":[{"name":"x","version":"1"}]}]}}"#;
        let from_json = parse_index(json.as_bytes(), BASE).unwrap();
        let yaml = "apiVersion: v1\nentries:\n  genpack:\n  - version: 0.1.0\n    appVersion: \"1.0\"\n    \
                    urls: [genpack-0.1.0.tgz]\n    digest: 5b2a4b4c9c1f0e8d8a5d3f2e1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b\n";
        let from_yaml = parse_index(yaml.as_bytes(), BASE).unwrap();
        assert_eq!(from_json.chart("genpack"), from_yaml.chart("genpack"));
        // A YAML flow mapping that is not JSON still parses (serde_json fails, serde_yaml takes over).
        let flow =
            "{apiVersion: v1, entries: {genpack: [{version: 0.1.0, urls: [genpack-0.1.0.tgz]}]}}";
        assert_eq!(
            parse_index(flow.as_bytes(), BASE).unwrap().version_count(),
            1
        );
        // JSON with a kept field of the wrong type: a parse error with its line.
        let bad = "{\"apiVersion\": \"v1\",\n\"entries\": {\"a\": [{\"version\": \"1.0.0\",\n\"urls\": 7}]}}";
        match parse_err(bad) {
            IndexError::Parse { line, message } => {
                assert_eq!(line, Some(3), "{message}");
                assert!(message.contains("line 3"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chart_urls_resolve_against_the_repository_directory() {
        // (spec.url, url in the index, resolved)
        let cases = [
            (
                "https://h/repo",
                "genpack-0.1.0.tgz",
                "https://h/repo/genpack-0.1.0.tgz",
            ),
            (
                "https://h/repo/",
                "genpack-0.1.0.tgz",
                "https://h/repo/genpack-0.1.0.tgz",
            ),
            (
                "https://h/repo",
                "charts/genpack-0.1.0.tgz",
                "https://h/repo/charts/genpack-0.1.0.tgz",
            ),
            (
                "https://h/repo",
                "./charts/g.tgz",
                "https://h/repo/charts/g.tgz",
            ),
            (
                "https://h/a/repo",
                "../other/g.tgz",
                "https://h/a/other/g.tgz",
            ),
            ("https://h/repo", "/g.tgz", "https://h/g.tgz"),
            ("https://h", "g.tgz", "https://h/g.tgz"),
            ("https://h:8443/repo", "g.tgz", "https://h:8443/repo/g.tgz"),
            ("http://h/repo", "g.tgz", "http://h/repo/g.tgz"),
            ("https://h/repo", "g 1.tgz", "https://h/repo/g%201.tgz"),
            // Absolute URLs are kept exactly as written.
            (
                "https://h/repo",
                "https://cdn.example.org/g.tgz",
                "https://cdn.example.org/g.tgz",
            ),
            (
                "https://h/repo",
                "HTTPS://CDN.example.org/a/../g.tgz",
                "HTTPS://CDN.example.org/a/../g.tgz",
            ),
            (
                "https://h/repo",
                "oci://r.example.org/charts/g:1.0.0",
                "oci://r.example.org/charts/g:1.0.0",
            ),
            // The query of spec.url (a token) follows relative URLs on the same host, not other hosts.
            (
                "https://h/repo?token=t",
                "g.tgz",
                "https://h/repo/g.tgz?token=t",
            ),
            (
                "https://h/repo?token=t",
                "g.tgz?sig=s",
                "https://h/repo/g.tgz?sig=s",
            ),
            (
                "https://h/repo?token=t",
                "//cdn.example.org/g.tgz",
                "https://cdn.example.org/g.tgz",
            ),
            (
                "https://h/repo?token=t",
                "https://h/g.tgz",
                "https://h/g.tgz",
            ),
            // Credentials in spec.url never reach chart URLs.
            ("https://user:pw@h/repo", "g.tgz", "https://h/repo/g.tgz"),
            ("https://h/repo#frag", "g.tgz", "https://h/repo/g.tgz"),
        ];
        for (base, reference, expected) in cases {
            let text = format!(
                "apiVersion: v1\nentries:\n  g:\n  - version: 1.0.0\n    urls: ['{reference}']\n"
            );
            let index =
                parse_index(text.as_bytes(), base).unwrap_or_else(|e| panic!("{base}: {e}"));
            assert_eq!(
                index.chart("g").unwrap()[0].urls,
                [expected],
                "base {base}, reference {reference}"
            );
        }
        assert_eq!(
            index_url(&repository_base("https://h/repo").unwrap())
                .unwrap()
                .as_str(),
            "https://h/repo/index.yaml"
        );
        assert_eq!(
            index_url(&repository_base("https://h/repo/").unwrap())
                .unwrap()
                .as_str(),
            "https://h/repo/index.yaml"
        );
        assert_eq!(
            index_url(&repository_base("https://h/repo?token=t").unwrap())
                .unwrap()
                .as_str(),
            "https://h/repo/index.yaml?token=t"
        );
    }

    #[test]
    fn unusable_repository_urls_are_rejected_without_their_credentials() {
        for (url, needle) in [
            ("charts.example.com/stable", "absolute"),
            ("", "absolute"),
            ("oci://r.example.org/charts", "OCI"),
            ("ftp://h/repo", "`ftp`"),
            ("file:///tmp/repo", "`file`"),
            ("https://user:hunter2@[::1/repo", "absolute"),
        ] {
            let err = parse_index(b"apiVersion: v1\nentries: {}\n", url).unwrap_err();
            assert!(
                matches!(err, IndexError::InvalidUrl { .. }),
                "{url}: {err:?}"
            );
            assert_eq!(err.reason(), "URLInvalid");
            let text = format!("{err} {err:?}");
            assert!(text.contains(needle), "{url}: {text}");
            assert!(!text.contains("hunter2"), "{text}");
        }
    }

    #[test]
    fn entries_without_version_are_dropped_and_empty_values_tolerated() {
        let text = "apiVersion: v1\nentries:\n  a:\n  - version: 1.0.0\n    urls: []\n    digest: ''\n  \
                    - urls: [a.tgz]\n  - version: ''\n  - version: 2.0.0\n    urls: ['', a-2.tgz]\n  b:\n  c: []\n";
        let index = parse_index(text.as_bytes(), BASE).unwrap();
        let a = index.chart("a").unwrap();
        assert_eq!(
            a.iter().map(|e| e.version.as_str()).collect::<Vec<_>>(),
            ["1.0.0", "2.0.0"]
        );
        assert!(a[0].urls.is_empty());
        assert_eq!(a[0].digest, None);
        assert_eq!(a[1].urls, [format!("{BASE}/a-2.tgz")]);
        assert_eq!(index.chart("b"), Some(&[][..]));
        assert_eq!(index.chart_count(), 3);

        // An empty repository, as `helm repo index` writes it for an empty directory, and with `entries:` null.
        for text in [
            "apiVersion: v1\nentries: {}\ngenerated: \"2024-01-01T00:00:00Z\"\n",
            "apiVersion: v1\nentries:\n",
        ] {
            let index = parse_index(text.as_bytes(), BASE).unwrap();
            assert_eq!(
                (index.chart_count(), index.version_count()),
                (0, 0),
                "{text}"
            );
        }
    }

    #[test]
    fn an_index_with_2000_versions_parses() {
        let mut text = String::from("apiVersion: v1\nentries:\n");
        for chart in 0..20 {
            text.push_str(&format!("  chart-{chart}:\n"));
            for version in 0..100 {
                text.push_str(&format!(
                    "  - apiVersion: v2\n    appVersion: {version}.0\n    created: \"2024-01-01T00:00:00Z\"\n    \
                     description: Chart {chart} version {version} with a long description nobody needs\n    \
                     digest: {DIGEST_A}\n    maintainers:\n    - name: ops\n      email: ops@example.com\n    \
                     name: chart-{chart}\n    urls:\n    - chart-{chart}-1.{version}.0.tgz\n    version: 1.{version}.0\n"
                ));
            }
        }
        text.push_str("generated: \"2024-01-01T00:00:00Z\"\n");
        let index = parse_index(text.as_bytes(), BASE).unwrap();
        assert_eq!(index.chart_count(), 20);
        assert_eq!(index.version_count(), 2000);
        let last = &index.chart("chart-19").unwrap()[99];
        assert_eq!(last.version, "1.99.0");
        assert_eq!(last.urls, [format!("{BASE}/chart-19-1.99.0.tgz")]);
    }

    #[test]
    fn invalid_yaml_reports_its_line() {
        // (document, line of the problem)
        let cases = [
            (
                "apiVersion: v1\nentries:\n  a:\n  - version: 1.0.0\n    urls: [a.tgz\n  b: []\n",
                6,
            ),
            // An unclosed quote: the line where it opens.
            ("apiVersion: v1\nentries:\n  a:\n  - version: \"1.0.0\n", 4),
            ("apiVersion: v1\nentries:\n  a:\n\t- version: 1.0.0\n", 4),
            (
                "apiVersion: v1\nentries:\n  a:\n  - version: 1.0.0\n    urls: a.tgz\n",
                5,
            ),
            ("apiVersion: v1\nentries:\n  a:\n  - version: [1]\n", 4),
            ("apiVersion: v1\nentries: [a, b]\n", 2),
        ];
        for (text, expected) in cases {
            let err = parse_err(text);
            match &err {
                IndexError::Parse { line, message } => {
                    assert_eq!(*line, Some(expected), "{text:?}: {message}");
                    assert!(
                        err.to_string().contains(&format!("line {expected}")),
                        "{err}"
                    );
                }
                other => panic!("{text:?}: {other:?}"),
            }
            assert_eq!(err.reason(), "IndexInvalid");
        }
        // More than one document is refused rather than half-read.
        assert!(matches!(
            parse_err("apiVersion: v1\nentries: {}\n---\napiVersion: v1\n"),
            IndexError::Parse { .. }
        ));
    }

    #[test]
    fn documents_that_are_not_an_index_say_so() {
        // (document, words the error must contain)
        let cases = [
            ("entries: {}\n", "apiVersion"),
            ("apiVersion: ''\nentries: {}\n", "apiVersion"),
            ("apiVersion: v1\n", "entries"),
            ("kind: ConfigMap\napiVersion: v1\ndata: {}\n", "entries"),
            ("foo: bar\n", "apiVersion"),
            ("- a\n- b\n", "a list"),
            ("just some text\n", "a single string"),
            ("42\n", "a single number"),
            ("", "empty"),
            ("   \n\n", "empty"),
            (
                "<!DOCTYPE html>\n<html><head><title>Charts</title></head><body>: x</body></html>\n",
                "HTML",
            ),
            (
                "\u{feff}  <?xml version=\"1.0\"?><Error><Code>NoSuchKey</Code></Error>",
                "HTML",
            ),
        ];
        for (text, needle) in cases {
            let err = parse_err(text);
            assert!(
                matches!(err, IndexError::NotAnIndex { .. }),
                "{text:?}: {err:?}"
            );
            assert_eq!(err.reason(), "IndexInvalid");
            let message = err.to_string();
            assert!(
                message.starts_with("not a Helm repository index"),
                "{message}"
            );
            assert!(message.contains(needle), "{text:?}: {message}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_index(&bytes, BASE);
        }

        #[test]
        fn parse_never_panics_on_index_like_text(text in "(apiVersion: v1\n)?(entries:\n)?([ \\-a-z0-9:.{}\\[\\]\"'/#&*!|>\n]{0,200})") {
            let _ = parse_index(text.as_bytes(), BASE);
        }
    }
}
