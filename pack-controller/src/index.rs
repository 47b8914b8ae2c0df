//! Helm repository index cache: fetches `<spec.url>/index.yaml` of each `ClusterPackRepository`, keeps only
//! what version resolution and chart download need, and shares one parsed copy per repository with every
//! Pack reconcile.
//!
//! Three pieces, each usable alone:
//!
//! * [`parse_index`] — pure: the bytes of an `index.yaml` (or of the JSON form Helm 3.18+ can write) →
//!   [`RepositoryIndex`]. Never panics; errors say what is wrong and, where the parser knows it, on which line.
//! * [`IndexFetcher`] — one HTTP(S) GET of the index with basic auth, an optional custom CA, conditional
//!   requests (`If-None-Match` / `If-Modified-Since` → [`FetchOutcome::NotModified`]), a size cap enforced
//!   while the body streams in, and an [`IndexError`] per cause with a [`IndexError::reason`].
//! * [`IndexCache`] — the shared map repository name → [`CachedRepository`]. Readers clone an `Arc`; they never
//!   fetch. Whoever refreshes a repository inserts only after a successful fetch, so a failed refresh leaves
//!   the previous good index serving.
//!
//! Decisions:
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
//! * **Memory**: only `version`, `urls`, `digest`, `appVersion` and `created` of each chart version are kept;
//!   everything else (descriptions, maintainers, icons, dependencies, annotations, ...) is skipped by serde
//!   without being built. An index that starts with `{` is read with `serde_json`, which streams; YAML is read
//!   with `serde_yaml`, which holds the document's events while parsing (a few times the file size), so each
//!   [`IndexFetcher`] parses one index at a time, on a blocking thread, and drops the raw bytes right after.
//!   The body is capped by [`FetchRequest::max_bytes`] (default [`DEFAULT_MAX_INDEX_BYTES`], Flux's 50 MiB).
//! * **Digests**: [`RepositoryIndex::digest`] is the lowercase hex SHA-256 of the fetched bytes (a changed file
//!   is a new digest). Chart digests are kept as lowercase hex with a `sha256:` prefix removed; a malformed
//!   one is kept as written, so the download's digest check fails loudly instead of being skipped.
//! * **Entries** without a `version` are dropped (Helm skips invalid entries too); everything else is kept
//!   in index order, choosing among versions is [`crate::versions`]' job.
//! * **TLS**: a custom CA replaces the built-in roots for that repository, as Helm's `--ca-file` does. One
//!   `reqwest::Client` (connection pool) is kept per distinct CA. Proxies come from the usual environment
//!   variables. Redirects are followed; reqwest drops the `Authorization` header when one leaves the host.
//! * **Secrets**: passwords are held in [`RedactedString`]; errors and `Debug` output never contain them, nor
//!   the user info or query of a URL.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use reqwest::header::{
    ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tracing::debug;
use url::Url;

/// Default cap on the size of a fetched index (50 MiB, as Flux's `--helm-index-max-size`).
pub const DEFAULT_MAX_INDEX_BYTES: u64 = 50 * 1024 * 1024;

/// Default time allowed for one index fetch, from connecting to the last byte (Flux's default `timeout`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How many distinct custom CAs keep their own HTTP client before the clients are rebuilt from scratch.
const MAX_CLIENTS: usize = 64;

/// Why a repository index could not be fetched or read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// `spec.url` is not an absolute `http://` or `https://` URL.
    #[error("repository URL `{url}` cannot be used: {message}")]
    InvalidUrl {
        /// The URL with user info removed and any query shown as `?<redacted>`.
        url: String,
        message: String,
    },
    /// The server answered with an HTTP error status (401, 404, 500, ...).
    #[error("GET {url} answered HTTP {status}{}{}", status_text(.status), http_hint(.status))]
    Http {
        status: u16,
        /// The index URL with user info removed and any query shown as `?<redacted>`.
        url: String,
    },
    /// The TLS handshake failed (unknown CA, expired or mismatched certificate, not a TLS server), or the
    /// custom CA could not be loaded.
    #[error("TLS with the repository failed: {0}")]
    Tls(String),
    /// The repository could not be reached, or the connection broke (DNS, refused, reset, ...).
    #[error("could not reach the repository: {0}")]
    Connect(String),
    /// The fetch did not complete within [`FetchRequest::timeout`].
    #[error(
        "the repository did not send its index within {after:?}; is it reachable and not overloaded?"
    )]
    Timeout { after: Duration },
    /// The index is larger than [`FetchRequest::max_bytes`].
    #[error(
        "the repository index is larger than the {} limit; raise pack-controller's index size limit \
         or split the repository",
        size_text(.limit)
    )]
    TooLarge { limit: u64 },
    /// The index is not valid YAML (or JSON), or a kept field has the wrong type.
    #[error("cannot parse the repository index: {message}")]
    Parse {
        /// 1-based line of the problem, when the parser knows it (the message says it too).
        line: Option<usize>,
        message: String,
    },
    /// The document parsed but is not a Helm repository index (an HTML page, no `apiVersion`, no `entries`).
    #[error("not a Helm repository index: {detail}")]
    NotAnIndex { detail: String },
    /// The fetch was cut short from inside the process (shutdown).
    #[error("fetching the repository index was interrupted: {0}")]
    Interrupted(String),
}

impl IndexError {
    /// Machine-readable reason for status conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            IndexError::InvalidUrl { .. } => "URLInvalid",
            IndexError::Http {
                status: 401 | 403, ..
            } => "AuthenticationFailed",
            IndexError::Http { .. }
            | IndexError::Tls(_)
            | IndexError::Connect(_)
            | IndexError::Timeout { .. }
            | IndexError::Interrupted(_) => "IndexFetchFailed",
            IndexError::TooLarge { .. } => "IndexTooLarge",
            IndexError::Parse { .. } | IndexError::NotAnIndex { .. } => "IndexInvalid",
        }
    }

    /// Replaces `secret` in the free-text messages; a last line of defence should a library ever quote it.
    fn scrub(self, secret: &str) -> Self {
        if secret.is_empty() {
            return self;
        }
        let clean = |s: String| {
            if s.contains(secret) {
                s.replace(secret, "<redacted>")
            } else {
                s
            }
        };
        match self {
            IndexError::Tls(m) => IndexError::Tls(clean(m)),
            IndexError::Connect(m) => IndexError::Connect(clean(m)),
            IndexError::Interrupted(m) => IndexError::Interrupted(clean(m)),
            IndexError::InvalidUrl { url, message } => IndexError::InvalidUrl {
                url: clean(url),
                message: clean(message),
            },
            other => other,
        }
    }
}

fn status_text(status: &u16) -> String {
    reqwest::StatusCode::from_u16(*status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

fn http_hint(status: &u16) -> &'static str {
    match status {
        401 => {
            "; the repository wants credentials: check the username and password of spec.secretRef"
        }
        403 => "; the credentials of spec.secretRef are not allowed to read this repository",
        404 => {
            "; spec.url must be the repository URL, the directory that holds index.yaml \
             (not the URL of index.yaml itself)"
        }
        304 => "; the server answered Not Modified to a request that had no validators",
        408 | 429 | 500..=599 => "; the repository server has a problem, the fetch will be retried",
        _ => "",
    }
}

fn size_text(bytes: &u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if *bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// A secret string (a password) whose `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedactedString(String);

impl RedactedString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        RedactedString(secret.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for RedactedString {
    fn from(secret: String) -> Self {
        RedactedString(secret)
    }
}

impl fmt::Debug for RedactedString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for RedactedString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One version of a chart in a repository index: what resolving and downloading it needs, nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartVersionEntry {
    /// The version as written in the index (`0.1.0`, `v1.2.3`, ...).
    pub version: String,
    /// Where the chart archive can be downloaded, resolved to absolute URLs (see the module docs).
    pub urls: Vec<String>,
    /// SHA-256 of the chart archive, lowercase hex, when the index has one.
    pub digest: Option<String>,
    /// `appVersion` of the chart, as written.
    pub app_version: Option<String>,
    /// When the chart version was packaged, as written (RFC 3339 in indexes written by Helm).
    pub created: Option<String>,
}

/// The parsed index of one repository: chart name → versions, in index order. Not `Clone` on purpose:
/// it can be large, share it behind an `Arc` (as [`CachedRepository`] does).
pub struct RepositoryIndex {
    charts: BTreeMap<String, Vec<ChartVersionEntry>>,
    /// SHA-256 of the fetched bytes, lowercase hex.
    pub digest: String,
    /// When the bytes were parsed (just after they were fetched).
    pub fetched_at: Timestamp,
}

impl RepositoryIndex {
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

/// HTTP validators of a fetched index, sent back on the next fetch so an unchanged index costs a 304.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheValidators {
    /// The `ETag` response header, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// The `Last-Modified` response header, sent back as `If-Modified-Since`.
    pub last_modified: Option<String>,
}

impl CacheValidators {
    fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: reqwest::header::HeaderName| {
            headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        CacheValidators {
            etag: text(ETAG),
            last_modified: text(LAST_MODIFIED),
        }
    }

    /// Whether there is anything to send.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Parsing

/// Parses an `index.yaml` (or its JSON form). `base_url` is the repository URL (`spec.url`, the directory
/// that holds `index.yaml`); relative chart URLs are resolved against it.
pub fn parse_index(bytes: &[u8], base_url: &str) -> Result<RepositoryIndex, IndexError> {
    let base = repository_base(base_url)?;
    parse_with_base(bytes, &base)
}

fn parse_with_base(bytes: &[u8], base: &Url) -> Result<RepositoryIndex, IndexError> {
    let raw = parse_document(bytes)?;
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
    let Some(entries) = raw.entries else {
        return Err(IndexError::NotAnIndex {
            detail: "it has no `entries`; a Helm index lists its charts under `entries`".into(),
        });
    };
    let resolver = UrlResolver::new(base);
    let charts = entries
        .unwrap_or_default()
        .into_iter()
        .map(|(name, versions)| {
            let mut versions: Vec<ChartVersionEntry> = versions
                .unwrap_or_default()
                .into_iter()
                .filter_map(|raw| raw.into_entry(&resolver))
                .collect();
            versions.shrink_to_fit();
            (name, versions)
        })
        .collect();
    Ok(RepositoryIndex {
        charts,
        digest: format!("{:x}", Sha256::digest(bytes)),
        fetched_at: Timestamp::now(),
    })
}

fn parse_document(bytes: &[u8]) -> Result<RawIndex, IndexError> {
    let text = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = text.iter().position(|b| !b.is_ascii_whitespace());
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
        // not JSON falls back to serde_yaml, whose error is the one reported.
        Some(b'{') => match serde_json::from_slice::<Document>(text) {
            Ok(document) => document,
            Err(json) if json.is_syntax() || json.is_eof() => parse_yaml(text)?,
            Err(json) => {
                return Err(IndexError::Parse {
                    line: (json.line() > 0).then_some(json.line()),
                    message: json.to_string(),
                });
            }
        },
        _ => parse_yaml(text)?,
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

fn parse_yaml(text: &[u8]) -> Result<Document, IndexError> {
    serde_yaml::from_slice::<Document>(text).map_err(|e| {
        let line = e.location().map(|l| l.line());
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

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Helm repository index (a mapping with `apiVersion` and `entries`)")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Document, A::Error> {
        RawIndex::deserialize(de::value::MapAccessDeserializer::new(map)).map(Document::Index)
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

type RawEntries = BTreeMap<String, Option<Vec<RawChartVersion>>>;

/// The kept part of an index; serde skips every other field without building it.
#[derive(Deserialize)]
struct RawIndex {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    /// `None`: no `entries` key (not an index); `Some(None)`: `entries:` with no value (an empty repository).
    #[serde(default, deserialize_with = "present")]
    entries: Option<Option<RawEntries>>,
}

fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RawChartVersion {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    urls: Option<Vec<String>>,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default, rename = "appVersion")]
    app_version: Option<String>,
    #[serde(default)]
    created: Option<String>,
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
            digest: self.digest.and_then(normalize_digest),
            app_version: self.app_version,
            created: self.created,
        })
    }
}

fn normalize_digest(digest: String) -> Option<String> {
    let trimmed = digest.trim();
    let hex = trimmed.strip_prefix("sha256:").unwrap_or(trimmed);
    if hex.is_empty() {
        return None;
    }
    let mut hex = if hex.len() == digest.len() {
        digest
    } else {
        hex.to_owned()
    };
    hex.make_ascii_lowercase();
    Some(hex)
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
fn repository_base(repository_url: &str) -> Result<Url, IndexError> {
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
fn index_url(base: &Url) -> Result<Url, IndexError> {
    let mut url = base
        .join("index.yaml")
        .map_err(|e| IndexError::InvalidUrl {
            url: redact_url(base),
            message: e.to_string(),
        })?;
    url.set_query(base.query());
    Ok(url)
}

/// A URL fit for messages: no user info, and a query (which may hold a token) shown as `?<redacted>`.
fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    if had_query {
        format!("{shown}?<redacted>")
    } else {
        shown.into()
    }
}

pub(crate) fn redact_url_text(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(parsed) => redact_url(&parsed),
        Err(_) => match url.rsplit_once('@') {
            Some((_, rest)) => format!("<redacted>@{rest}"),
            None => url.to_owned(),
        },
    }
}

// ---------------------------------------------------------------------------------------------------------
// Fetching

/// What to fetch and how: built by the repository reconcile from `spec` and its Secrets.
#[derive(Clone)]
pub struct FetchRequest {
    /// The repository URL (`spec.url`); the index is `<url>/index.yaml`.
    pub url: String,
    /// Basic auth (username, password).
    pub basic_auth: Option<(String, RedactedString)>,
    /// PEM CA bundle that replaces the built-in roots for this repository.
    pub ca_pem: Option<Vec<u8>>,
    /// Largest accepted index, in bytes.
    pub max_bytes: u64,
    /// Time allowed for the whole fetch, from connecting to the last byte.
    pub timeout: Duration,
}

impl FetchRequest {
    /// A request for `url` without credentials or custom CA, with the default size cap and timeout.
    pub fn new(url: impl Into<String>) -> Self {
        FetchRequest {
            url: url.into(),
            basic_auth: None,
            ca_pem: None,
            max_bytes: DEFAULT_MAX_INDEX_BYTES,
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

impl fmt::Debug for FetchRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FetchRequest")
            .field("url", &redact_url_text(&self.url))
            // The password is a RedactedString: prints `<redacted>`.
            .field("basic_auth", &self.basic_auth)
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field("max_bytes", &self.max_bytes)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The result of a successful fetch.
#[derive(Debug)]
pub enum FetchOutcome {
    /// The server says the index did not change since the validators were issued (HTTP 304).
    NotModified,
    /// A new index, with the validators to send next time.
    Fetched {
        index: RepositoryIndex,
        validators: CacheValidators,
    },
}

/// Fetches and parses repository indexes. Cheap to clone; clones share HTTP clients and the parse slot.
#[derive(Clone, Default)]
pub struct IndexFetcher {
    inner: Arc<FetcherInner>,
}

struct FetcherInner {
    /// One client (and connection pool) per custom CA, keyed by the SHA-256 of its PEM; `None` = built-in roots.
    clients: Mutex<HashMap<Option<[u8; 32]>, reqwest::Client>>,
    /// One parse at a time: parsing YAML holds a few times the index size, peaks must not add up.
    parse_slot: Semaphore,
}

impl Default for FetcherInner {
    fn default() -> Self {
        FetcherInner {
            clients: Mutex::new(HashMap::new()),
            parse_slot: Semaphore::new(1),
        }
    }
}

impl fmt::Debug for IndexFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndexFetcher").finish_non_exhaustive()
    }
}

impl IndexFetcher {
    /// A fetcher with no clients yet; they are built on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fetches `<req.url>/index.yaml`. With `previous` validators the request is conditional and an
    /// unchanged index yields [`FetchOutcome::NotModified`]. Pass validators only from a fetch of the same
    /// URL (see [`CachedRepository::validators_for`]).
    pub async fn fetch(
        &self,
        req: &FetchRequest,
        previous: Option<&CacheValidators>,
    ) -> Result<FetchOutcome, IndexError> {
        let secret = req
            .basic_auth
            .as_ref()
            .map(|(_, p)| p.expose())
            .unwrap_or("");
        let result = self.fetch_inner(req, previous).await;
        result.map_err(|e| e.scrub(secret))
    }

    async fn fetch_inner(
        &self,
        req: &FetchRequest,
        previous: Option<&CacheValidators>,
    ) -> Result<FetchOutcome, IndexError> {
        let base = repository_base(&req.url)?;
        let url = index_url(&base)?;
        let client = self.client(req.ca_pem.as_deref())?;
        let previous = previous.filter(|v| !v.is_empty());

        let download = download(&client, &url, req, previous);
        let downloaded = tokio::time::timeout(req.timeout, download)
            .await
            .map_err(|_| IndexError::Timeout { after: req.timeout })??;
        let Some((body, validators)) = downloaded else {
            debug!(url = %redact_url(&url), "repository index not modified");
            return Ok(FetchOutcome::NotModified);
        };

        let _slot = self
            .inner
            .parse_slot
            .acquire()
            .await
            .map_err(|e| IndexError::Interrupted(e.to_string()))?;
        let size = body.len();
        let index = tokio::task::spawn_blocking(move || parse_with_base(&body, &base))
            .await
            .map_err(|e| IndexError::Interrupted(e.to_string()))??;
        debug!(
            url = %redact_url(&url),
            bytes = size,
            charts = index.chart_count(),
            versions = index.version_count(),
            "fetched repository index"
        );
        Ok(FetchOutcome::Fetched { index, validators })
    }

    /// Downloads a chart archive from `archive_url` (absolute, as [`ChartVersionEntry::urls`] gives it)
    /// with the repository's TLS settings, under `req.max_bytes` and `req.timeout`. Basic auth is sent
    /// only when the archive is on the repository's own origin, as Helm does without `--pass-credentials`.
    pub async fn fetch_archive(
        &self,
        req: &FetchRequest,
        archive_url: &str,
    ) -> Result<Vec<u8>, IndexError> {
        let secret = req
            .basic_auth
            .as_ref()
            .map(|(_, p)| p.expose())
            .unwrap_or("");
        let result = async {
            let base = repository_base(&req.url)?;
            let url = repository_base(archive_url).and_then(|_| {
                Url::parse(archive_url.trim()).map_err(|e| IndexError::InvalidUrl {
                    url: redact_url_text(archive_url),
                    message: e.to_string(),
                })
            })?;
            let mut req = req.clone();
            if url.origin() != base.origin() {
                req.basic_auth = None;
            }
            let client = self.client(req.ca_pem.as_deref())?;
            let downloaded = tokio::time::timeout(req.timeout, download(&client, &url, &req, None))
                .await
                .map_err(|_| IndexError::Timeout { after: req.timeout })??;
            Ok(downloaded.map(|(body, _)| body).unwrap_or_default())
        }
        .await;
        result.map_err(|e: IndexError| e.scrub(secret))
    }

    fn client(&self, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, IndexError> {
        let key: Option<[u8; 32]> = ca_pem.map(|pem| Sha256::digest(pem).into());
        let mut clients = self
            .inner
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = build_client(ca_pem)?;
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }
}

fn build_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, IndexError> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("pack-operator/", env!("CARGO_PKG_VERSION")))
        .use_rustls_tls();
    if let Some(pem) = ca_pem {
        let certificates = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            IndexError::Tls(format!(
                "the custom CA (spec.caSecretRef) is not valid PEM: {}",
                chain(&e)
            ))
        })?;
        if certificates.is_empty() {
            return Err(IndexError::Tls(
                "the custom CA (spec.caSecretRef) holds no PEM certificate \
                 (-----BEGIN CERTIFICATE-----)"
                    .into(),
            ));
        }
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(|e| {
        IndexError::Tls(format!(
            "the custom CA (spec.caSecretRef) could not be loaded: {}",
            chain(&e)
        ))
    })
}

/// Sends the request and reads the body under the size cap; `None` = 304 Not Modified.
async fn download(
    client: &reqwest::Client,
    url: &Url,
    req: &FetchRequest,
    previous: Option<&CacheValidators>,
) -> Result<Option<(Vec<u8>, CacheValidators)>, IndexError> {
    let mut request = client.get(url.clone()).timeout(req.timeout);
    if let Some((user, password)) = &req.basic_auth {
        request = request.basic_auth(user, Some(password.expose()));
    }
    if let Some(previous) = previous {
        // Validators come from response headers; one that is not a valid header value is just not sent.
        let valid = |v: &Option<String>| v.as_deref().and_then(|v| HeaderValue::from_str(v).ok());
        if let Some(etag) = valid(&previous.etag) {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(modified) = valid(&previous.last_modified) {
            request = request.header(IF_MODIFIED_SINCE, modified);
        }
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| transport_error(e, req.timeout))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_MODIFIED && previous.is_some() {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(IndexError::Http {
            status: status.as_u16(),
            url: redact_url(url),
        });
    }
    let too_large = || IndexError::TooLarge {
        limit: req.max_bytes,
    };
    let announced = response.content_length();
    if announced.is_some_and(|len| len > req.max_bytes) {
        return Err(too_large());
    }
    let validators = CacheValidators::from_headers(response.headers());
    let capacity = usize::try_from(announced.unwrap_or(0).min(req.max_bytes)).unwrap_or(0);
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, req.timeout))?
    {
        if (body.len() as u64).saturating_add(chunk.len() as u64) > req.max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some((body, validators)))
}

fn transport_error(error: reqwest::Error, timeout: Duration) -> IndexError {
    if error.is_timeout() {
        return IndexError::Timeout { after: timeout };
    }
    // reqwest's own message quotes the URL, which may carry credentials.
    let error = error.without_url();
    let message = chain(&error);
    if is_tls(&error) {
        let hint = if message.contains("InvalidContentType") {
            "; the server does not speak TLS on this port (http:// instead of https://?)"
        } else if message.contains("certificate") {
            "; if the repository uses a private CA, put it in spec.caSecretRef"
        } else {
            ""
        };
        IndexError::Tls(format!("{message}{hint}"))
    } else {
        IndexError::Connect(message)
    }
}

/// Whether a rustls error is anywhere in the chain. hyper-rustls wraps it in an `io::Error`, sometimes twice
/// (`io::Error::other(io_error)`), and an `io::Error`'s `source()` skips the error it wraps, so each wrapped
/// error is looked into as well as followed by `source()`.
fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut pending: Vec<&(dyn std::error::Error + 'static)> = vec![error];
    // Bounded: error chains are short, and a cycle must not loop forever.
    for _ in 0..64 {
        let Some(e) = pending.pop() else {
            return false;
        };
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            pending.push(inner);
        }
        if let Some(source) = e.source() {
            pending.push(source);
        }
    }
    false
}

/// Wrapper messages of reqwest and hyper that say nothing about the cause.
const GENERIC_MESSAGES: [&str; 4] = [
    "error sending request",
    "client error (Connect)",
    "client error (SendRequest)",
    "builder error",
];

/// An error and its sources as one line, skipping generic wrappers and a source its parent already quotes.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        let generic = GENERIC_MESSAGES.contains(&text.as_str()) && e.source().is_some();
        if !generic && !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

// ---------------------------------------------------------------------------------------------------------
// The shared cache

/// A repository's index as last fetched successfully.
#[derive(Clone)]
pub struct CachedRepository {
    /// The parsed index, shared with every reader.
    pub index: Arc<RepositoryIndex>,
    /// Validators to make the next fetch conditional.
    pub validators: CacheValidators,
    /// The repository URL (`spec.url`) the index was fetched from.
    pub url: String,
}

impl CachedRepository {
    /// Wraps a freshly fetched index.
    pub fn new(
        url: impl Into<String>,
        index: RepositoryIndex,
        validators: CacheValidators,
    ) -> Self {
        CachedRepository {
            index: Arc::new(index),
            validators,
            url: url.into(),
        }
    }

    /// The validators to send when fetching `url`: none if the index came from another URL (`spec.url`
    /// changed), so that the new URL is always fetched in full.
    pub fn validators_for(&self, url: &str) -> Option<&CacheValidators> {
        (self.url == url).then_some(&self.validators)
    }
}

impl fmt::Debug for CachedRepository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedRepository")
            .field("url", &redact_url_text(&self.url))
            .field("index", &self.index)
            .field("validators", &self.validators)
            .finish()
    }
}

/// The shared in-memory cache: repository name → its last good index. Cheap to clone; clones share the map.
///
/// Readers (Pack reconciles) only [`get`](Self::get), which clones an `Arc`. The repository reconcile
/// fetches and calls [`insert`](Self::insert) only when the fetch succeeded: after a failed refresh the
/// previous index keeps serving and the failure is reported on the repository's status. A deleted
/// repository is [`remove`](Self::remove)d.
#[derive(Clone)]
pub struct IndexCache {
    repositories: Arc<RwLock<HashMap<String, Arc<CachedRepository>>>>,
    /// Names of repositories whose cached index changed (another digest or URL), for the Packs to
    /// follow: the cache of *this* process is what a Pack resolves against.
    changes: tokio::sync::broadcast::Sender<String>,
}

impl Default for IndexCache {
    fn default() -> Self {
        IndexCache {
            repositories: Arc::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
        }
    }
}

impl IndexCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The cached index of repository `name`.
    pub fn get(&self, name: &str) -> Option<Arc<CachedRepository>> {
        self.read().get(name).cloned()
    }

    /// Stores the index of repository `name` (replacing the previous one, which is returned). Call only with
    /// the result of a successful fetch.
    pub fn insert(
        &self,
        name: impl Into<String>,
        repository: CachedRepository,
    ) -> Option<Arc<CachedRepository>> {
        let name = name.into();
        let key = (repository.url.clone(), repository.index.digest.clone());
        let previous = self.write().insert(name.clone(), Arc::new(repository));
        if previous
            .as_ref()
            .map(|p| (p.url.clone(), p.index.digest.clone()))
            != Some(key)
        {
            // No receiver (nothing subscribed yet) is fine.
            let _ = self.changes.send(name);
        }
        previous
    }

    /// Names of repositories whose cached index changes from now on. A receiver that falls behind gets
    /// `Lagged` and should treat every repository as changed.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.changes.subscribe()
    }

    /// Forgets repository `name`; readers holding its `Arc` keep their copy until they drop it.
    pub fn remove(&self, name: &str) -> Option<Arc<CachedRepository>> {
        self.write().remove(name)
    }

    /// Number of cached repositories.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no repository is cached.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // A panic elsewhere while holding the lock cannot leave the map half-updated (each operation is one
    // HashMap call), so a poisoned lock is still safe to use.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<CachedRepository>>> {
        self.repositories
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<CachedRepository>>> {
        self.repositories
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.read();
        let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("IndexCache")
            .field("repositories", &names)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::{
        Router,
        body::{Body, Bytes},
        http::{HeaderMap as AxumHeaders, StatusCode, header},
        response::{IntoResponse, Response},
        routing::get,
    };
    use proptest::prelude::*;

    const BASE: &str = "https://charts.example.com/kubit-packs";
    const DIGEST_A: &str = "5b2a4b4c9c1f0e8d8a5d3f2e1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b";
    const DIGEST_B: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    /// As `helm repo index` writes it (fields sorted, every chart metadata field present), plus a chart
    /// served from another host with absolute URLs.
    const HELM_INDEX: &str = r#"apiVersion: v1
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
                app_version: Some("1.16.0".into()),
                created: Some("2024-05-02T10:11:12.123456789Z".into()),
            }
        );
        // `sha256:` prefix removed and lowercased; an unquoted `1.10` stays `1.10`, not the float 1.1.
        assert_eq!(genpack[1].version, "0.1.0");
        assert_eq!(
            genpack[1].urls,
            ["https://charts.example.com/kubit-packs/genpack-0.1.0.tgz"]
        );
        assert_eq!(genpack[1].digest.as_deref(), Some(DIGEST_B));
        assert_eq!(genpack[1].app_version.as_deref(), Some("1.10"));
        assert_eq!(
            genpack[1].created.as_deref(),
            Some("2024-04-01T09:00:00.5+02:00")
        );
        assert_eq!(genpack[2].app_version.as_deref(), Some("1.10"));
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
            ("apiVersion: v1\nentries:\n  a:\n  - version: \"1.0.0\n", 5),
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

    #[test]
    fn redacted_strings_and_requests_never_print_the_secret() {
        let secret = RedactedString::new("hunter2");
        assert_eq!(secret.expose(), "hunter2");
        assert_eq!(
            format!("{secret} {secret:?} {:?}", Some(&secret)),
            "<redacted> <redacted> Some(<redacted>)"
        );
        let req = FetchRequest {
            basic_auth: Some(("admin".into(), secret)),
            ca_pem: Some(b"-----BEGIN CERTIFICATE-----".to_vec()),
            ..FetchRequest::new("https://admin:urlpass@h/repo?token=querysecret")
        };
        let debug = format!("{req:?}");
        assert!(
            debug.contains("admin") && debug.contains("<redacted>"),
            "{debug}"
        );
        for leak in ["hunter2", "urlpass", "querysecret", "BEGIN"] {
            assert!(!debug.contains(leak), "{debug}");
        }
    }

    #[test]
    fn the_cache_announces_another_index_not_the_same_one_again() {
        let cache = IndexCache::new();
        let mut changes = cache.subscribe();
        let repo = |text: &[u8]| {
            CachedRepository::new(
                BASE,
                parse_index(text, BASE).unwrap(),
                CacheValidators::default(),
            )
        };
        cache.insert("r", repo(HELM_INDEX.as_bytes()));
        assert_eq!(changes.try_recv().unwrap(), "r");
        // The same bytes fetched again (no ETag support on the server): nothing to announce.
        cache.insert("r", repo(HELM_INDEX.as_bytes()));
        assert!(changes.try_recv().is_err());
        cache.insert("r", repo(b"apiVersion: v1\nentries: {}\n"));
        assert_eq!(changes.try_recv().unwrap(), "r");
    }

    #[test]
    fn the_cache_shares_one_copy_and_only_changes_on_insert_and_remove() {
        let cache = IndexCache::new();
        let reader = cache.clone();
        assert!(reader.get("kubit-packs").is_none());
        let index = parse_index(HELM_INDEX.as_bytes(), BASE).unwrap();
        let validators = CacheValidators {
            etag: Some("\"v1\"".into()),
            last_modified: None,
        };
        assert!(
            cache
                .insert(
                    "kubit-packs",
                    CachedRepository::new(BASE, index, validators.clone())
                )
                .is_none()
        );

        let first = reader.get("kubit-packs").unwrap();
        let second = reader.get("kubit-packs").unwrap();
        assert!(Arc::ptr_eq(&first.index, &second.index));
        assert_eq!(first.index.chart("genpack").unwrap().len(), 3);
        assert_eq!(first.validators_for(BASE), Some(&validators));
        assert_eq!(
            first.validators_for("https://elsewhere.example.com/repo"),
            None
        );
        assert_eq!((cache.len(), cache.is_empty()), (1, false));
        assert!(format!("{cache:?}").contains("kubit-packs"));

        let newer = parse_index(b"apiVersion: v1\nentries: {}\n", BASE).unwrap();
        let replaced = cache.insert(
            "kubit-packs",
            CachedRepository::new(BASE, newer, CacheValidators::default()),
        );
        assert!(Arc::ptr_eq(&replaced.unwrap().index, &first.index));
        // A reader keeps the copy it holds; new readers see the new index.
        assert_eq!(first.index.chart_count(), 3);
        assert_eq!(reader.get("kubit-packs").unwrap().index.chart_count(), 0);

        assert!(cache.remove("kubit-packs").is_some());
        assert!(reader.get("kubit-packs").is_none());
        assert!(cache.is_empty());
    }

    // ----- fetching from a real HTTP server on 127.0.0.1 -----

    const INDEX: &str = "apiVersion: v1\nentries:\n  genpack:\n  - version: 0.1.0\n    urls: [genpack-0.1.0.tgz]\n    \
                         digest: 5b2a4b4c9c1f0e8d8a5d3f2e1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b\n";
    const USER: &str = "admin";
    const PASSWORD: &str = "s3cr3t-pa55";
    /// `Basic base64("admin:s3cr3t-pa55")`, written out so the test does not trust the code under test.
    const AUTHORIZATION: &str = "Basic YWRtaW46czNjcjN0LXBhNTU=";

    /// Serves `app` on 127.0.0.1 and returns the repository URL `http://127.0.0.1:PORT/repo`.
    async fn serve(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}/repo")
    }

    fn request(url: &str) -> FetchRequest {
        FetchRequest {
            timeout: Duration::from_secs(10),
            ..FetchRequest::new(url)
        }
    }

    fn fetched(outcome: FetchOutcome) -> (RepositoryIndex, CacheValidators) {
        match outcome {
            FetchOutcome::Fetched { index, validators } => (index, validators),
            FetchOutcome::NotModified => panic!("expected a fetched index, got NotModified"),
        }
    }

    #[tokio::test]
    async fn fetch_sends_validators_and_maps_304_to_not_modified() {
        const ETAG: &str = "\"index-v1\"";
        const MODIFIED: &str = "Wed, 01 May 2024 10:00:00 GMT";
        let seen = Arc::new(Mutex::new(Vec::<(Option<String>, Option<String>)>::new()));
        let log = seen.clone();
        let app = Router::new().route(
            "/repo/index.yaml",
            get(move |headers: AxumHeaders| {
                let log = log.clone();
                async move {
                    let text = |name| {
                        headers
                            .get(name)
                            .and_then(|v: &axum::http::HeaderValue| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    let (none_match, since) =
                        (text(header::IF_NONE_MATCH), text(header::IF_MODIFIED_SINCE));
                    log.lock().unwrap().push((none_match.clone(), since));
                    let headers = [(header::ETAG, ETAG), (header::LAST_MODIFIED, MODIFIED)];
                    if none_match.as_deref() == Some(ETAG) {
                        (StatusCode::NOT_MODIFIED, headers).into_response()
                    } else {
                        (headers, INDEX).into_response()
                    }
                }
            }),
        );
        let url = serve(app).await;
        let fetcher = IndexFetcher::new();

        let (index, validators) = fetched(fetcher.fetch(&request(&url), None).await.unwrap());
        assert_eq!(validators.etag.as_deref(), Some(ETAG));
        assert_eq!(validators.last_modified.as_deref(), Some(MODIFIED));
        assert_eq!(
            index.chart("genpack").unwrap()[0].urls,
            [format!("{url}/genpack-0.1.0.tgz")]
        );
        assert_eq!(
            index.digest,
            format!("{:x}", Sha256::digest(INDEX.as_bytes()))
        );

        let cache = IndexCache::new();
        cache.insert("repo", CachedRepository::new(&url, index, validators));
        let cached = cache.get("repo").unwrap();
        let again = fetcher
            .fetch(&request(&url), cached.validators_for(&url))
            .await
            .unwrap();
        assert!(matches!(again, FetchOutcome::NotModified), "{again:?}");

        // Validators that no longer match: a full fetch again.
        let stale = CacheValidators {
            etag: Some("\"index-v0\"".into()),
            last_modified: None,
        };
        fetched(fetcher.fetch(&request(&url), Some(&stale)).await.unwrap());

        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                (None, None),
                (Some(ETAG.into()), Some(MODIFIED.into())),
                (Some("\"index-v0\"".into()), None),
            ]
        );
    }

    #[tokio::test]
    async fn fetch_sends_basic_auth_and_never_leaks_the_password() {
        let app = Router::new().route(
            "/repo/index.yaml",
            get(|headers: AxumHeaders| async move {
                if headers
                    .get(header::AUTHORIZATION)
                    .is_some_and(|v| v == AUTHORIZATION)
                {
                    INDEX.into_response()
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"charts\"")],
                    )
                        .into_response()
                }
            }),
        );
        let url = serve(app).await;
        let fetcher = IndexFetcher::new();
        let with_auth = |password: &str| FetchRequest {
            basic_auth: Some((USER.into(), RedactedString::new(password))),
            ..request(&url)
        };

        let (index, _) = fetched(fetcher.fetch(&with_auth(PASSWORD), None).await.unwrap());
        assert_eq!(index.version_count(), 1);
        // Credentials written into the URL are sent too, and stay out of chart URLs.
        let in_url = url.replace("http://", &format!("http://{USER}:{PASSWORD}@"));
        let (index, _) = fetched(fetcher.fetch(&request(&in_url), None).await.unwrap());
        assert!(!index.chart("genpack").unwrap()[0].urls[0].contains(PASSWORD));

        for (req, leak) in [
            (request(&url), PASSWORD),
            (with_auth("wr0ng-pa55word"), "wr0ng-pa55word"),
            (
                request(&in_url.replace(PASSWORD, "wr0ng-pa55word")),
                "wr0ng-pa55word",
            ),
            (request(&format!("{in_url}/missing")), PASSWORD),
        ] {
            let err = fetcher.fetch(&req, None).await.unwrap_err();
            let status = if req.url.ends_with("/missing") {
                404
            } else {
                401
            };
            assert!(
                matches!(&err, IndexError::Http { status: s, .. } if *s == status),
                "{err:?}"
            );
            let text = format!("{err} {err:?} {req:?}");
            assert!(
                !text.contains(leak) && !text.contains(AUTHORIZATION),
                "{text}"
            );
            if status == 401 {
                assert_eq!(err.reason(), "AuthenticationFailed");
                assert!(err.to_string().contains("401 Unauthorized"), "{err}");
                assert!(err.to_string().contains("secretRef"), "{err}");
            }
        }
    }

    #[tokio::test]
    async fn fetch_maps_404_and_other_statuses_to_http_errors() {
        let app = Router::new()
            .route("/repo/index.yaml", get(|| async { INDEX }))
            .route(
                "/broken/index.yaml",
                get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
            )
            .route(
                "/html/index.yaml",
                get(|| async { "<!doctype html><html><body>Login</body></html>" }),
            );
        let url = serve(app).await;
        let fetcher = IndexFetcher::new();

        let err = fetcher
            .fetch(&request(&format!("{url}/index.yaml")), None)
            .await
            .unwrap_err();
        match &err {
            IndexError::Http { status, url: shown } => {
                assert_eq!(*status, 404);
                assert_eq!(*shown, format!("{url}/index.yaml/index.yaml"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(err.reason(), "IndexFetchFailed");
        let message = err.to_string();
        assert!(
            message.contains("404 Not Found")
                && message.contains("directory that holds index.yaml"),
            "{message}"
        );

        let broken = url.replace("/repo", "/broken");
        let err = fetcher.fetch(&request(&broken), None).await.unwrap_err();
        assert!(
            matches!(err, IndexError::Http { status: 503, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("503 Service Unavailable"), "{err}");

        let html = url.replace("/repo", "/html");
        let err = fetcher.fetch(&request(&html), None).await.unwrap_err();
        assert!(matches!(err, IndexError::NotAnIndex { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn fetch_rejects_an_oversized_index_with_or_without_content_length() {
        let streamed = Arc::new(AtomicUsize::new(0));
        let counter = streamed.clone();
        let app = Router::new()
            .route(
                "/sized/index.yaml",
                get(|| async {
                    format!("apiVersion: v1\nentries: {{}}\n#{}\n", "x".repeat(20_000))
                }),
            )
            .route(
                "/endless/index.yaml",
                get(move || {
                    let counter = counter.clone();
                    async move {
                        // A body without Content-Length that never ends: only the streaming cap stops it.
                        let chunks = futures::stream::repeat_with(move || {
                            counter.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, std::io::Error>(Bytes::from_static(&[b'#'; 1024]))
                        });
                        Response::new(Body::from_stream(chunks))
                    }
                }),
            )
            .route("/small/index.yaml", get(|| async { INDEX }));
        let url = serve(app).await;
        let fetcher = IndexFetcher::new();
        let capped = |path: &str| FetchRequest {
            max_bytes: 10_000,
            ..request(&url.replace("/repo", path))
        };

        for path in ["/sized", "/endless"] {
            let err = fetcher.fetch(&capped(path), None).await.unwrap_err();
            assert!(
                matches!(err, IndexError::TooLarge { limit: 10_000 }),
                "{path}: {err:?}"
            );
            assert_eq!(err.reason(), "IndexTooLarge");
            assert!(err.to_string().contains("10000 bytes limit"), "{err}");
        }
        assert!(
            streamed.load(Ordering::Relaxed) > 0,
            "the endless body was served"
        );
        let limit = IndexError::TooLarge {
            limit: DEFAULT_MAX_INDEX_BYTES,
        };
        assert!(limit.to_string().contains("50 MiB limit"), "{limit}");

        // Exactly at the limit is fine.
        let exact = FetchRequest {
            max_bytes: INDEX.len() as u64,
            ..request(&url.replace("/repo", "/small"))
        };
        fetched(fetcher.fetch(&exact, None).await.unwrap());
    }

    #[tokio::test]
    async fn fetch_names_connection_timeout_and_tls_failures() {
        let fetcher = IndexFetcher::new();

        // Nothing listens on a port that was just released.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let err = fetcher
            .fetch(&request(&format!("http://{closed}/repo")), None)
            .await
            .unwrap_err();
        assert!(matches!(err, IndexError::Connect(_)), "{err:?}");
        assert_eq!(err.reason(), "IndexFetchFailed");
        // The cause, without reqwest's wrappers: "could not reach the repository: tcp connect error: Connection
        // refused (os error 111)".
        let message = err.to_string();
        assert!(
            message.starts_with("could not reach the repository: tcp connect error: "),
            "{message}"
        );
        assert!(message.contains("refused"), "{message}");

        let app = Router::new()
            .route(
                "/slow/index.yaml",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    INDEX
                }),
            )
            .route("/repo/index.yaml", get(|| async { INDEX }));
        let url = serve(app).await;
        let slow = FetchRequest {
            timeout: Duration::from_millis(300),
            ..request(&url.replace("/repo", "/slow"))
        };
        let err = fetcher.fetch(&slow, None).await.unwrap_err();
        assert!(
            matches!(err, IndexError::Timeout { after } if after == Duration::from_millis(300)),
            "{err:?}"
        );
        assert!(err.to_string().contains("300ms"), "{err}");

        // TLS to a server that speaks plain HTTP: the handshake fails, and says it is TLS.
        let https = url.replace("http://", "https://");
        let err = fetcher.fetch(&request(&https), None).await.unwrap_err();
        assert!(matches!(err, IndexError::Tls(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with("TLS with the repository failed: "),
            "{message}"
        );
        assert!(message.contains("does not speak TLS"), "{message}");

        // A custom CA that is not a certificate is a TLS configuration error, before any connection.
        for pem in [
            &b"not a certificate"[..],
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        ] {
            let req = FetchRequest {
                ca_pem: Some(pem.to_vec()),
                ..request(&https)
            };
            let err = fetcher.fetch(&req, None).await.unwrap_err();
            assert!(
                matches!(&err, IndexError::Tls(m) if m.contains("custom CA")),
                "{err:?}"
            );
        }
    }

    // ----- HTTPS with a custom CA -----

    /// A test CA and a server certificate it signed for 127.0.0.1 and localhost (ECDSA P-256, valid
    /// 2024-01-01 to 2124-01-01). Made with `openssl ca`; only ever used by these tests.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBczCCARqgAwIBAgICEAAwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVcGFjay1v
cGVyYXRvciB0ZXN0IENBMCAXDTI0MDEwMTAwMDAwMFoYDzIxMjQwMTAxMDAwMDAw
WjAgMR4wHAYDVQQDDBVwYWNrLW9wZXJhdG9yIHRlc3QgQ0EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASdc74MkI69QAENsNMdzIWqkTapLrjISABHHt4EXOgLSWvy
+nkbIjBQ4131d+ELAHk5WP8CNUo7kEMfhtp7ezFLo0IwQDAPBgNVHRMBAf8EBTAD
AQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUGmYtTdL6jS+PntZqEkKBCT5c
KXwwCgYIKoZIzj0EAwIDRwAwRAIgELdbQso0WOZrzzaYSLmToFoC9n9oOajuE4lQ
tbD3K2wCIBs++1Eu9bbaPqKHrpYv45BYFwLyAM/wyjKGHpLgZdEY
-----END CERTIFICATE-----
";
    const TEST_SERVER_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBuDCCAV+gAwIBAgICEAEwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVcGFjay1v
cGVyYXRvciB0ZXN0IENBMCAXDTI0MDEwMTAwMDAwMFoYDzIxMjQwMTAxMDAwMDAw
WjAUMRIwEAYDVQQDDAkxMjcuMC4wLjEwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AASoLxDRc8pvWZ6k0I8DXLTXP/XEi9ta2QXNn/7SUW2SLIkf84tZwyrNSRKLjoED
XfnC4cDvOZBIUPRkEHnjVlRAo4GSMIGPMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/
BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMBMBoGA1UdEQQTMBGHBH8AAAGCCWxv
Y2FsaG9zdDAdBgNVHQ4EFgQULraqeMvf5/GuvArUDAm7GFBoHREwHwYDVR0jBBgw
FoAUGmYtTdL6jS+PntZqEkKBCT5cKXwwCgYIKoZIzj0EAwIDRwAwRAIgV1Dz/Nct
4RrfU4F/WTwwfan/SkNgbQ2DKBP6WIALnggCIARdPaRkPukisRrMA0xcA8BQZgBY
bELgTFpnNZNJN8LK
-----END CERTIFICATE-----
";
    const TEST_SERVER_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg+tmiTnEfjtPDKGJU
QntZfajBTdkC3+G+w3IpoJlRNkuhRANCAASoLxDRc8pvWZ6k0I8DXLTXP/XEi9ta
2QXNn/7SUW2SLIkf84tZwyrNSRKLjoEDXfnC4cDvOZBIUPRkEHnjVlRA
-----END PRIVATE KEY-----
";

    /// Accepts TCP connections and completes the TLS handshake before handing them to axum; a failed
    /// handshake (the client rejected the certificate) just drops that connection.
    struct TlsListener {
        tcp: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        type Addr = std::net::SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// Serves `app` over HTTPS with the test server certificate; returns `https://127.0.0.1:PORT/repo`.
    async fn serve_tls(app: Router) -> String {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certs = CertificateDer::pem_slice_iter(TEST_SERVER_CERT.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(TEST_SERVER_KEY.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        };
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("https://{addr}/repo")
    }

    #[tokio::test]
    async fn fetch_over_https_trusts_exactly_the_custom_ca() {
        let url = serve_tls(Router::new().route("/repo/index.yaml", get(|| async { INDEX }))).await;
        let fetcher = IndexFetcher::new();
        let with_ca = |pem: &str| FetchRequest {
            ca_pem: Some(pem.as_bytes().to_vec()),
            ..request(&url)
        };

        let (index, _) = fetched(fetcher.fetch(&with_ca(TEST_CA), None).await.unwrap());
        assert_eq!(
            index.chart("genpack").unwrap()[0].urls,
            [format!("{url}/genpack-0.1.0.tgz")]
        );
        // A bundle works too, whatever the order.
        let bundle = format!("{TEST_SERVER_CERT}{TEST_CA}");
        fetched(fetcher.fetch(&with_ca(&bundle), None).await.unwrap());
        fetched(fetcher.fetch(&with_ca(TEST_CA), None).await.unwrap());

        // The built-in roots do not know the test CA.
        let err = fetcher.fetch(&request(&url), None).await.unwrap_err();
        assert!(matches!(err, IndexError::Tls(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("UnknownIssuer") && message.contains("spec.caSecretRef"),
            "{message}"
        );
        // A custom CA replaces the built-in roots rather than adding to them (as Helm's --ca-file): a CA
        // that did not sign the server certificate is not rescued by them.
        let err = fetcher
            .fetch(&with_ca(TEST_SERVER_CERT), None)
            .await
            .unwrap_err();
        assert!(matches!(err, IndexError::Tls(_)), "{err:?}");

        // One client per distinct CA (and one for the built-in roots), reused across fetches.
        let clients = fetcher.inner.clients.lock().unwrap().len();
        assert_eq!(clients, 4);
    }
}
