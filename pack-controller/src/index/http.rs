//! The HTTP(S) client of Helm repositories: [`HttpFetcher`] GETs a repository's `index.yaml` (and hands it
//! to [`parse`](super::parse) on a blocking thread) and the chart archives its entries point to.
//!
//! One GET with basic auth, an optional custom CA, conditional requests (`If-None-Match` /
//! `If-Modified-Since` → [`FetchOutcome::NotModified`]), a size cap enforced while the body streams in
//! ([`FetchRequest::max_bytes`], default [`DEFAULT_MAX_INDEX_BYTES`], Flux's 50 MiB), and an
//! [`IndexError`] per cause, whose transport and TLS text names the cause without reqwest's wrappers.
//!
//! * **Memory**: each [`HttpFetcher`] parses one index at a time, on a blocking thread, and drops the raw
//!   bytes right after: parsing YAML holds a few times the index size, peaks must not add up.
//! * **TLS**: a custom CA replaces the built-in roots for that repository, as Helm's `--ca-file` does. One
//!   `reqwest::Client` (connection pool) is kept per distinct CA. Proxies come from the usual environment
//!   variables. Redirects are followed; reqwest drops the `Authorization` header when one leaves the host.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{
    ETAG, HeaderMap, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tracing::debug;
use url::Url;

use super::error::{HttpTarget, IndexError, RedactedString, redact_url, redact_url_text};
use super::parse::{RepositoryIndex, index_url, parse_with_base, repository_base};

/// Default cap on the size of a fetched index (50 MiB, as Flux's `--helm-index-max-size`).
pub const DEFAULT_MAX_INDEX_BYTES: u64 = 50 * 1024 * 1024;

/// Default time allowed for one index fetch, from connecting to the last byte (Flux's default `timeout`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// How many distinct custom CAs keep their own HTTP client before the clients are rebuilt from scratch.
const MAX_CLIENTS: usize = 64;

/// HTTP validators of a fetched index, sent back on the next fetch so an unchanged index costs a 304.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheValidators {
    /// The `ETag` response header, sent back as `If-None-Match`.
    pub etag: Option<String>,
    /// The `Last-Modified` response header, sent back as `If-Modified-Since`.
    pub last_modified: Option<String>,
    /// SHA-256 (lowercase hex) of the index bytes these validators came with. For a server that sends
    /// neither header, a body with this digest is the same index and is not parsed again
    /// ([`FetchOutcome::NotModified`]): parsing is what costs memory and CPU, downloading is cheap.
    pub digest: Option<String>,
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
            digest: None,
        }
    }

    /// Whether there is nothing to send (the digest is not sent: it is compared on arrival).
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

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

/// Fetches (and parses) repository indexes and downloads chart archives over HTTP(S). Cheap to clone; clones
/// share HTTP clients and the parse slot.
#[derive(Clone, Default)]
pub struct HttpFetcher {
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

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcher").finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// A fetcher with no clients yet; they are built on first use.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fetches `<req.url>/index.yaml`. With `previous` validators the request is conditional and an
    /// unchanged index yields [`FetchOutcome::NotModified`]. Pass validators only from a fetch of the same
    /// URL (see [`CachedRepository::validators_for`](super::CachedRepository::validators_for)).
    pub async fn fetch_index(
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
        let same_digest = previous.and_then(|v| v.digest.as_deref());
        let previous = previous.filter(|v| !v.is_empty());

        let download = download(&client, &url, req, previous, HttpTarget::Index);
        let downloaded = tokio::time::timeout(req.timeout, download)
            .await
            .map_err(|_| IndexError::Timeout { after: req.timeout })??;
        let Some((body, mut validators)) = downloaded else {
            debug!(url = %redact_url(&url), "repository index not modified");
            return Ok(FetchOutcome::NotModified);
        };
        // The same bytes again (a server without ETag or Last-Modified): nothing to parse.
        let digest = format!("{:x}", Sha256::digest(&body));
        if same_digest == Some(digest.as_str()) {
            debug!(url = %redact_url(&url), bytes = body.len(), "repository index unchanged (same digest)");
            return Ok(FetchOutcome::NotModified);
        }
        validators.digest = Some(digest);

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

    /// Downloads a chart archive from `archive_url` (absolute, as [`ChartVersionEntry::urls`](super::ChartVersionEntry::urls) gives it)
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
            let downloaded = tokio::time::timeout(
                req.timeout,
                download(&client, &url, &req, None, HttpTarget::Archive),
            )
            .await
            .map_err(|_| IndexError::Timeout { after: req.timeout })??;
            Ok(downloaded.map(|(body, _)| body).unwrap_or_default())
        }
        .await;
        result.map_err(|e: IndexError| e.scrub(secret))
    }

    pub(super) fn client(&self, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, IndexError> {
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
    target: HttpTarget,
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
            target,
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

pub(super) fn transport_error(error: reqwest::Error, timeout: Duration) -> IndexError {
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

    use crate::index::{CachedRepository, IndexCache};

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
        let fetcher = HttpFetcher::new();

        let (index, validators) = fetched(fetcher.fetch_index(&request(&url), None).await.unwrap());
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
            .fetch_index(&request(&url), cached.validators_for(&url))
            .await
            .unwrap();
        assert!(matches!(again, FetchOutcome::NotModified), "{again:?}");

        // Validators that no longer match: a full fetch again.
        let stale = CacheValidators {
            etag: Some("\"index-v0\"".into()),
            last_modified: None,
            digest: None,
        };
        fetched(
            fetcher
                .fetch_index(&request(&url), Some(&stale))
                .await
                .unwrap(),
        );

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
    async fn the_same_bytes_from_a_server_without_validators_are_not_parsed_again() {
        let version = Arc::new(AtomicUsize::new(1));
        let served = version.clone();
        let app = Router::new().route(
            "/repo/index.yaml",
            get(move || {
                let v = served.load(Ordering::SeqCst);
                async move {
                    format!(
                        "apiVersion: v1\nentries:\n  genpack:\n  - version: 0.{v}.0\n    urls: [g.tgz]\n"
                    )
                }
            }),
        );
        let url = serve(app).await;
        let fetcher = HttpFetcher::new();
        let (index, validators) = fetched(fetcher.fetch_index(&request(&url), None).await.unwrap());
        // No header to send, only the digest to compare.
        assert!(validators.is_empty());
        assert_eq!(validators.digest.as_deref(), Some(index.digest.as_str()));
        let again = fetcher
            .fetch_index(&request(&url), Some(&validators))
            .await
            .unwrap();
        assert!(matches!(again, FetchOutcome::NotModified), "{again:?}");
        // Other bytes: parsed.
        version.store(2, Ordering::SeqCst);
        let (index, next) = fetched(
            fetcher
                .fetch_index(&request(&url), Some(&validators))
                .await
                .unwrap(),
        );
        assert_eq!(index.chart("genpack").unwrap()[0].version, "0.2.0");
        assert_ne!(next.digest, validators.digest);
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
        let fetcher = HttpFetcher::new();
        let with_auth = |password: &str| FetchRequest {
            basic_auth: Some((USER.into(), RedactedString::new(password))),
            ..request(&url)
        };

        let (index, _) = fetched(
            fetcher
                .fetch_index(&with_auth(PASSWORD), None)
                .await
                .unwrap(),
        );
        assert_eq!(index.version_count(), 1);
        // Credentials written into the URL are sent too, and stay out of chart URLs.
        let in_url = url.replace("http://", &format!("http://{USER}:{PASSWORD}@"));
        let (index, _) = fetched(fetcher.fetch_index(&request(&in_url), None).await.unwrap());
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
            let err = fetcher.fetch_index(&req, None).await.unwrap_err();
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
        let fetcher = HttpFetcher::new();

        let err = fetcher
            .fetch_index(&request(&format!("{url}/index.yaml")), None)
            .await
            .unwrap_err();
        match &err {
            IndexError::Http {
                status,
                url: shown,
                target: HttpTarget::Index,
            } => {
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
        let err = fetcher
            .fetch_index(&request(&broken), None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, IndexError::Http { status: 503, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("503 Service Unavailable"), "{err}");

        let html = url.replace("/repo", "/html");
        let err = fetcher
            .fetch_index(&request(&html), None)
            .await
            .unwrap_err();
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
        let fetcher = HttpFetcher::new();
        let capped = |path: &str| FetchRequest {
            max_bytes: 10_000,
            ..request(&url.replace("/repo", path))
        };

        for path in ["/sized", "/endless"] {
            let err = fetcher.fetch_index(&capped(path), None).await.unwrap_err();
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
        fetched(fetcher.fetch_index(&exact, None).await.unwrap());
    }

    #[tokio::test]
    async fn fetch_names_connection_timeout_and_tls_failures() {
        let fetcher = HttpFetcher::new();

        // Nothing listens on a port that was just released.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        let err = fetcher
            .fetch_index(&request(&format!("http://{closed}/repo")), None)
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
        let err = fetcher.fetch_index(&slow, None).await.unwrap_err();
        assert!(
            matches!(err, IndexError::Timeout { after } if after == Duration::from_millis(300)),
            "{err:?}"
        );
        assert!(err.to_string().contains("300ms"), "{err}");

        // TLS to a server that speaks plain HTTP: the handshake fails, and says it is TLS.
        let https = url.replace("http://", "https://");
        let err = fetcher
            .fetch_index(&request(&https), None)
            .await
            .unwrap_err();
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
            let err = fetcher.fetch_index(&req, None).await.unwrap_err();
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
        let fetcher = HttpFetcher::new();
        let with_ca = |pem: &str| FetchRequest {
            ca_pem: Some(pem.as_bytes().to_vec()),
            ..request(&url)
        };

        let (index, _) = fetched(fetcher.fetch_index(&with_ca(TEST_CA), None).await.unwrap());
        assert_eq!(
            index.chart("genpack").unwrap()[0].urls,
            [format!("{url}/genpack-0.1.0.tgz")]
        );
        // A bundle works too, whatever the order.
        let bundle = format!("{TEST_SERVER_CERT}{TEST_CA}");
        fetched(fetcher.fetch_index(&with_ca(&bundle), None).await.unwrap());
        fetched(fetcher.fetch_index(&with_ca(TEST_CA), None).await.unwrap());

        // The built-in roots do not know the test CA.
        let err = fetcher.fetch_index(&request(&url), None).await.unwrap_err();
        assert!(matches!(err, IndexError::Tls(_)), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("UnknownIssuer") && message.contains("spec.caSecretRef"),
            "{message}"
        );
        // A custom CA replaces the built-in roots rather than adding to them (as Helm's --ca-file): a CA
        // that did not sign the server certificate is not rescued by them.
        let err = fetcher
            .fetch_index(&with_ca(TEST_SERVER_CERT), None)
            .await
            .unwrap_err();
        assert!(matches!(err, IndexError::Tls(_)), "{err:?}");

        // One client per distinct CA (and one for the built-in roots), reused across fetches.
        let clients = fetcher.inner.clients.lock().unwrap().len();
        assert_eq!(clients, 4);
    }
}
