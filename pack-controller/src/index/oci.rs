//! OCI chart registries: a repository URL `oci://host[:port]/path` holds each chart as the OCI repository
//! `path/<chart>`, one tag per version (Helm writes SemVer's `+` as `_` in tags).
//!
//! A refresh ([`fetch_index`]) lists the tags of the charts some Pack uses (only those: a registry cannot
//! list its charts cheaply, and the catalog API is often disabled), keeps the tags that parse as SemVer,
//! and reads each new tag's manifest once: its digest pins the version and its chart layer's digest is the
//! archive digest [`crate::chart`] verifies. The result is a [`RepositoryIndex`] like an `index.yaml`'s, so
//! version resolution ([`crate::versions`]) and the chart cache are the same for both kinds. An entry's
//! URL is `oci://host/path/<chart>@sha256:<manifest digest>`; [`fetch_archive`] reads that manifest (its
//! bytes checked against the digest), then pulls the chart layer by digest.
//!
//! Tags are taken as immutable: a version once read keeps its manifest digest; a tag pushed again with other
//! content is not followed (push a new version). Removing a tag removes the version at the next refresh.
//!
//! The distribution API is spoken directly with the shared reqwest client of [`HttpFetcher`] (same TLS
//! settings, custom CA, size caps, error texts), not through the `oci-client` crate: its current release
//! (0.18) is built on reqwest 0.13 and `oci-spec`, a second HTTP/TLS stack beside kube's and ours, while the
//! calls needed here are four GETs (tags, manifest, blob, token).
//!
//! **Auth**: anonymous first; on `401` the `WWW-Authenticate` challenge decides: `Basic` → the credentials
//! are sent; `Bearer realm=…,service=…,scope=…` → a token is fetched from the realm (with the credentials
//! as basic auth when there are some) and sent. Credentials never appear in messages.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use url::Url;

use super::error::{HttpTarget, IndexError, RedactedString, redact_url};
use super::http::{CacheValidators, FetchOutcome, HttpFetcher, transport_error};
use super::parse::{ChartDigest, ChartVersionEntry, RepositoryIndex};

/// The media type of a Helm chart's layer in its OCI manifest.
pub const CHART_LAYER_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
const MANIFEST_MEDIA_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
/// Largest manifest or tag list page read.
const MAX_DOCUMENT_BYTES: u64 = 4 * 1024 * 1024;
/// Tag list pages followed per chart (`n` tags each).
const MAX_TAG_PAGES: usize = 100;
const TAGS_PER_PAGE: usize = 1000;

/// What to reach: the registry of an `oci://` repository URL, with the repository's credentials and CA.
#[derive(Clone)]
pub struct OciRequest {
    /// The repository URL (`spec.url`), `oci://host[:port]/path`.
    pub url: String,
    /// Username and password (from `spec.secretRef`: a username/password or dockerconfigjson Secret).
    pub credentials: Option<(String, RedactedString)>,
    /// PEM CA bundle that replaces the built-in roots for this registry.
    pub ca_pem: Option<Vec<u8>>,
    /// Plain HTTP instead of HTTPS (`spec.insecure`).
    pub insecure: bool,
    /// The charts some Pack uses: only their tags are listed.
    pub charts: Vec<String>,
    /// Largest chart archive accepted.
    pub max_bytes: u64,
    /// Time allowed for each GET.
    pub timeout: Duration,
}

impl OciRequest {
    /// The password (empty without credentials): what every error message of a fetch is redacted of.
    fn password(&self) -> String {
        self.credentials
            .as_ref()
            .map(|(_, p)| p.expose().to_owned())
            .unwrap_or_default()
    }
}

impl fmt::Debug for OciRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OciRequest")
            .field("url", &self.url)
            .field("credentials", &self.credentials)
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(Vec::len))
            .field("insecure", &self.insecure)
            .field("charts", &self.charts)
            .finish()
    }
}

/// `oci://host[:port]/path` split: the registry's base URL (`https://host[:port]`, or `http://` when
/// `insecure`) and the repository path (no leading or trailing `/`).
pub fn registry_location(url: &str, insecure: bool) -> Result<(Url, String), IndexError> {
    let invalid = |message: &str| IndexError::InvalidUrl {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let rest = url
        .trim()
        .strip_prefix("oci://")
        .ok_or_else(|| invalid("an OCI repository URL starts with oci://"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.contains('@') {
        return Err(invalid(
            "give the registry host as oci://host[:port]/path, without credentials (use spec.secretRef)",
        ));
    }
    let path = path.trim_matches('/');
    if path.contains(['?', '#', '@', ':'])
        || path.split('/').any(|p| p.is_empty() && !path.is_empty())
    {
        return Err(invalid(
            "the path must be slash-separated names, without tag, digest or query",
        ));
    }
    let scheme = if insecure { "http" } else { "https" };
    let base = Url::parse(&format!("{scheme}://{host}/")).map_err(|e| invalid(&e.to_string()))?;
    Ok((base, path.to_owned()))
}

/// The chart version a tag stands for: Helm writes SemVer's `+` as `_`; `None` when it is not strict SemVer
/// (`latest`, `main`, `1.2`, `v1.2.3`: tags that name no chart version Helm would push).
pub fn tag_version(tag: &str) -> Option<String> {
    let version = tag.replace('_', "+");
    semver::Version::parse(&version).ok().map(|_| version)
}

/// The credentials for `host` (`host[:port]` of the registry) in a Secret's `data`: a
/// `kubernetes.io/dockerconfigjson` Secret's `.dockerconfigjson` entry for that host (`username` and
/// `password`, or `auth` = base64 of `user:password`), or `username` and `password` keys. `Err` says what
/// is missing, never a value.
pub fn registry_credentials(
    data: &BTreeMap<String, Vec<u8>>,
    host: &str,
) -> Result<(String, RedactedString), String> {
    let Some(config) = data.get(".dockerconfigjson") else {
        return match (data.get("username"), data.get("password")) {
            (Some(user), Some(password)) => Ok((
                String::from_utf8_lossy(user).into_owned(),
                RedactedString::new(String::from_utf8_lossy(password).into_owned()),
            )),
            _ => Err("has neither a .dockerconfigjson key nor username and password keys".into()),
        };
    };
    #[derive(Deserialize)]
    struct DockerConfig {
        #[serde(default)]
        auths: BTreeMap<String, DockerAuth>,
    }
    #[derive(Deserialize)]
    struct DockerAuth {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let config: DockerConfig = serde_json::from_slice(config)
        .map_err(|_| ".dockerconfigjson is not a Docker config JSON document".to_owned())?;
    let entry_host = |key: &str| {
        let key = key.split_once("://").map_or(key, |(_, rest)| rest);
        key.split('/').next().unwrap_or_default().to_owned()
    };
    let entry = config
        .auths
        .iter()
        .find(|(key, _)| entry_host(key) == host)
        .map(|(_, auth)| auth)
        .ok_or_else(|| format!(".dockerconfigjson has no entry for the registry {host}"))?;
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok((user.clone(), RedactedString::new(password.clone())));
    }
    use base64::Engine as _;
    entry
        .auth
        .as_deref()
        .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
        .and_then(|decoded| {
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':')?;
            Some((user.to_owned(), RedactedString::new(password.to_owned())))
        })
        .ok_or_else(|| {
            format!(
                ".dockerconfigjson's entry for {host} has neither username and password nor a \
                 base64 user:password auth"
            )
        })
}

/// The OCI repository name of `chart` under `path`.
fn repository_name(path: &str, chart: &str) -> String {
    if path.is_empty() {
        chart.to_owned()
    } else {
        format!("{path}/{chart}")
    }
}

/// Lists the tags of every chart of `req.charts` and builds the index of their SemVer tags, reusing the
/// manifest digests `previous` already holds. A chart the registry does not have is left out (a Pack
/// naming it reports the chart missing), any other failure fails the refresh.
pub async fn fetch_index(
    http: &HttpFetcher,
    req: &OciRequest,
    previous: Option<&RepositoryIndex>,
) -> Result<FetchOutcome, IndexError> {
    let secret = req.password();
    let result = async {
        let session = Session::new(http, req)?;
        let mut charts = BTreeMap::new();
        for chart in &req.charts {
            let name = repository_name(&session.path, chart);
            let Some(tags) = session.tags(&name).await? else {
                continue;
            };
            let known = previous.and_then(|p| p.chart(chart)).unwrap_or_default();
            let mut entries = Vec::new();
            for tag in tags {
                let Some(version) = tag_version(&tag) else {
                    continue;
                };
                if let Some(entry) = known.iter().find(|e| e.version == version) {
                    entries.push(entry.clone());
                    continue;
                }
                let manifest = session.manifest(&name, &tag).await?;
                entries.push(ChartVersionEntry {
                    version,
                    urls: vec![format!(
                        "{}@sha256:{}",
                        session.chart_url(chart),
                        manifest.digest
                    )],
                    digest: ChartDigest::parse(&manifest.chart_layer),
                });
            }
            charts.insert(chart.clone(), entries);
        }
        Ok(outcome(charts, previous))
    }
    .await;
    result.map_err(|e: IndexError| e.scrub(&secret))
}

/// The index of `charts`, or `NotModified` when it is the one `previous` holds.
fn outcome(
    charts: BTreeMap<String, Vec<ChartVersionEntry>>,
    previous: Option<&RepositoryIndex>,
) -> FetchOutcome {
    let mut hasher = Sha256::new();
    for (chart, entries) in &charts {
        hasher.update(chart.as_bytes());
        for e in entries {
            hasher.update(b"\0");
            hasher.update(e.version.as_bytes());
            hasher.update(e.urls.concat().as_bytes());
        }
        hasher.update(b"\n");
    }
    let digest = format!("{:x}", hasher.finalize());
    if previous.is_some_and(|p| p.digest == digest) {
        return FetchOutcome::NotModified;
    }
    FetchOutcome::Fetched {
        index: RepositoryIndex::from_charts(charts, digest),
        validators: CacheValidators::default(),
    }
}

/// Downloads the chart layer of the manifest `archive_url` pins (`oci://host/path/<chart>@sha256:<hex>`):
/// the manifest's bytes must have that digest; the caller checks the layer's bytes against the index digest.
pub async fn fetch_archive(
    http: &HttpFetcher,
    req: &OciRequest,
    archive_url: &str,
) -> Result<Vec<u8>, IndexError> {
    let secret = req.password();
    let result = async {
        let session = Session::new(http, req)?;
        let (name, digest) = archive_url
            .strip_prefix(&session.chart_url(""))
            .and_then(|rest| rest.split_once("@sha256:"))
            .map(|(chart, digest)| (repository_name(&session.path, chart), digest))
            .ok_or_else(|| IndexError::InvalidUrl {
                url: archive_url.to_owned(),
                message: format!("not a chart of {} pinned by digest", req.url),
            })?;
        let manifest = session.manifest(&name, &format!("sha256:{digest}")).await?;
        if manifest.digest != digest {
            return Err(IndexError::NotAnIndex {
                detail: format!(
                    "the registry answered the manifest sha256:{digest} of {name} with other bytes \
                     (sha256:{}); refusing them",
                    manifest.digest
                ),
            });
        }
        let url = session.url(&format!("v2/{name}/blobs/sha256:{}", manifest.chart_layer))?;
        session
            .get(&url, None, req.max_bytes, HttpTarget::Archive)
            .await
    }
    .await;
    result.map_err(|e: IndexError| e.scrub(&secret))
}

/// A manifest read: its digest (hex of the SHA-256 of its bytes) and its chart layer's digest (hex).
struct Manifest {
    digest: String,
    chart_layer: String,
}

#[derive(Deserialize)]
struct ManifestDocument {
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct TagList {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The requests of one refresh or download: one client, the registry, and the tokens fetched so far.
struct Session<'a> {
    client: reqwest::Client,
    req: &'a OciRequest,
    base: Url,
    path: String,
    /// Bearer tokens by OCI repository, fetched on a challenge.
    tokens: tokio::sync::Mutex<HashMap<String, HeaderValue>>,
}

impl<'a> Session<'a> {
    fn new(http: &HttpFetcher, req: &'a OciRequest) -> Result<Self, IndexError> {
        let (base, path) = registry_location(&req.url, req.insecure)?;
        Ok(Session {
            client: http.client(req.ca_pem.as_deref())?,
            req,
            base,
            path,
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// `oci://host[:port]/path/<chart>` as the index lists it.
    fn chart_url(&self, chart: &str) -> String {
        let host = self.base.host_str().unwrap_or_default();
        let port = self
            .base
            .port()
            .map(|p| format!(":{p}"))
            .unwrap_or_default();
        let path = if self.path.is_empty() {
            String::new()
        } else {
            format!("{}/", self.path)
        };
        format!("oci://{host}{port}/{path}{chart}")
    }

    fn url(&self, path: &str) -> Result<Url, IndexError> {
        self.base.join(path).map_err(|e| IndexError::InvalidUrl {
            url: self.req.url.clone(),
            message: e.to_string(),
        })
    }

    /// Every tag of `name` (following `Link` pages); `None` when the registry has no such repository.
    async fn tags(&self, name: &str) -> Result<Option<Vec<String>>, IndexError> {
        let mut tags = Vec::new();
        let mut next = Some(self.url(&format!("v2/{name}/tags/list?n={TAGS_PER_PAGE}"))?);
        for _ in 0..MAX_TAG_PAGES {
            let Some(url) = next.take() else { break };
            let response = self.send(&url, None).await?;
            if response.status() == StatusCode::NOT_FOUND {
                return Ok(None);
            }
            next = next_page(&url, response.headers().get(reqwest::header::LINK));
            let what = format!("the tag list of {name} is not the distribution API's JSON");
            let page: TagList = read_json(response, &url, self.req.timeout, &what).await?;
            tags.extend(page.tags.unwrap_or_default());
        }
        Ok(Some(tags))
    }

    /// The manifest `reference` (tag or `sha256:…`) of `name` and its chart layer.
    async fn manifest(&self, name: &str, reference: &str) -> Result<Manifest, IndexError> {
        let url = self.url(&format!("v2/{name}/manifests/{reference}"))?;
        let body = self
            .get(
                &url,
                Some(MANIFEST_MEDIA_TYPES),
                MAX_DOCUMENT_BYTES,
                HttpTarget::Registry,
            )
            .await?;
        let digest = format!("{:x}", Sha256::digest(&body));
        let document: ManifestDocument =
            serde_json::from_slice(&body).map_err(|e| IndexError::NotAnIndex {
                detail: format!("the manifest {reference} of {name} is not an OCI manifest: {e}"),
            })?;
        let layer = document
            .layers
            .iter()
            .find(|l| l.media_type == CHART_LAYER_MEDIA_TYPE)
            .ok_or_else(|| IndexError::NotAnIndex {
                detail: format!(
                    "{name}:{reference} is not a Helm chart: its manifest has no {CHART_LAYER_MEDIA_TYPE} layer"
                ),
            })?;
        let chart_layer = layer
            .digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| IndexError::NotAnIndex {
                detail: format!("{name}:{reference}: the chart layer's digest is not sha256"),
            })?
            .to_ascii_lowercase();
        Ok(Manifest {
            digest,
            chart_layer,
        })
    }

    /// GETs `url` (authenticating on a challenge) and reads its body under `max_bytes`.
    async fn get(
        &self,
        url: &Url,
        accept: Option<&str>,
        max_bytes: u64,
        target: HttpTarget,
    ) -> Result<Vec<u8>, IndexError> {
        let response = self.send(url, accept).await?;
        read_body(response, url, max_bytes, self.req.timeout, target).await
    }

    /// Sends a GET; on `401` answers the challenge once and sends it again.
    async fn send(&self, url: &Url, accept: Option<&str>) -> Result<reqwest::Response, IndexError> {
        let repository = repository_of(url.path()).to_owned();
        let cached = self.tokens.lock().await.get(&repository).cloned();
        let mut authorization = cached.map(Authorization::Bearer);
        for attempt in 0..2 {
            let mut request = self.client.get(url.clone()).timeout(self.req.timeout);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            request = self.authorize(request, authorization.as_ref());
            let response = request
                .send()
                .await
                .map_err(|e| transport_error(e, self.req.timeout))?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(Challenge::parse);
            authorization = match challenge {
                Some(Challenge::Bearer(params)) => {
                    let token = self.token(&params).await?;
                    self.tokens
                        .lock()
                        .await
                        .insert(repository.clone(), token.clone());
                    Some(Authorization::Bearer(token))
                }
                Some(Challenge::Basic) if self.req.credentials.is_some() => {
                    Some(Authorization::Basic)
                }
                _ => return Ok(response),
            };
        }
        unreachable!("the loop returns on its second attempt")
    }

    fn authorize(
        &self,
        request: reqwest::RequestBuilder,
        authorization: Option<&Authorization>,
    ) -> reqwest::RequestBuilder {
        match (authorization, &self.req.credentials) {
            (Some(Authorization::Bearer(token)), _) => request.header(AUTHORIZATION, token.clone()),
            (Some(Authorization::Basic), Some((user, password))) => {
                request.basic_auth(user, Some(password.expose()))
            }
            _ => request,
        }
    }

    /// The token flow of the distribution spec: GET `realm?service=…&scope=…`, with basic auth when there
    /// are credentials; the `Authorization` value of the token.
    async fn token(&self, params: &BTreeMap<String, String>) -> Result<HeaderValue, IndexError> {
        let realm = params.get("realm").ok_or_else(|| IndexError::NotAnIndex {
            detail: "the registry's Bearer challenge names no realm".into(),
        })?;
        let mut url = Url::parse(realm).map_err(|e| IndexError::InvalidUrl {
            url: realm.clone(),
            message: format!("the registry's token realm: {e}"),
        })?;
        {
            let mut query = url.query_pairs_mut();
            for key in ["service", "scope"] {
                if let Some(v) = params.get(key) {
                    query.append_pair(key, v);
                }
            }
        }
        let request = self.client.get(url.clone()).timeout(self.req.timeout);
        let basic = self
            .req
            .credentials
            .is_some()
            .then_some(Authorization::Basic);
        let response = self
            .authorize(request, basic.as_ref())
            .send()
            .await
            .map_err(|e| transport_error(e, self.req.timeout))?;
        let what = "the registry's token service answered no token";
        let token: TokenResponse = read_json(response, &url, self.req.timeout, what).await?;
        let token = token
            .token
            .or(token.access_token)
            .ok_or_else(|| IndexError::NotAnIndex {
                detail: "the registry's token service answered no token".into(),
            })?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            IndexError::NotAnIndex {
                detail: "the registry's token is not a valid header value".into(),
            }
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// How a request authenticates after a challenge.
enum Authorization {
    /// The repository's credentials as basic auth.
    Basic,
    /// A token from the registry's token service.
    Bearer(HeaderValue),
}

/// The OCI repository of an API path (`/v2/<name>/tags/list`, `/v2/<name>/manifests/<ref>`,
/// `/v2/<name>/blobs/<digest>` → `<name>`): tokens are scoped to it.
fn repository_of(path: &str) -> &str {
    let name = path.strip_prefix("/v2/").unwrap_or(path);
    name.rsplit_once('/')
        .and_then(|(rest, _)| rest.rsplit_once('/'))
        .map_or(name, |(repository, _)| repository)
}

/// Reads a successful response's JSON body (at most [`MAX_DOCUMENT_BYTES`]); `what` says what a body that
/// does not parse is.
async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    url: &Url,
    timeout: Duration,
    what: &str,
) -> Result<T, IndexError> {
    let body = read_body(
        response,
        url,
        MAX_DOCUMENT_BYTES,
        timeout,
        HttpTarget::Registry,
    )
    .await?;
    serde_json::from_slice(&body).map_err(|e| IndexError::NotAnIndex {
        detail: format!("{what}: {e}"),
    })
}

/// Reads a successful response's body under `max_bytes`; an error status is [`IndexError::Http`].
async fn read_body(
    mut response: reqwest::Response,
    url: &Url,
    max_bytes: u64,
    timeout: Duration,
    target: HttpTarget,
) -> Result<Vec<u8>, IndexError> {
    if !response.status().is_success() {
        return Err(IndexError::Http {
            status: response.status().as_u16(),
            url: redact_url(url),
            target,
        });
    }
    let too_large = || IndexError::TooLarge { limit: max_bytes };
    if response.content_length().is_some_and(|len| len > max_bytes) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, timeout))?
    {
        if (body.len() as u64).saturating_add(chunk.len() as u64) > max_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The next page of a tag list from its `Link: </v2/…?n=…&last=…>; rel="next"` header.
fn next_page(url: &Url, link: Option<&HeaderValue>) -> Option<Url> {
    let link = link?.to_str().ok()?;
    let target = link
        .split(';')
        .next()?
        .trim()
        .strip_prefix('<')?
        .strip_suffix('>')?;
    link.contains("rel=\"next\"")
        .then(|| url.join(target).ok())?
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer(BTreeMap<String, String>),
    Other,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let (scheme, params) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Other;
        }
        let mut map = BTreeMap::new();
        let mut rest = params.trim();
        while let Some((key, after)) = rest.split_once('=') {
            let key = key
                .trim()
                .trim_start_matches(',')
                .trim()
                .to_ascii_lowercase();
            let (value, tail) = match after.strip_prefix('"') {
                Some(quoted) => quoted.split_once('"').unwrap_or((quoted, "")),
                None => after.split_once(',').unwrap_or((after, "")),
            };
            map.insert(key, value.to_owned());
            rest = tail.trim_start_matches([',', ' ']);
        }
        Challenge::Bearer(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oci_url_names_the_registry_and_the_path() {
        let (base, path) = registry_location("oci://127.0.0.1:5000/charts/team", true).unwrap();
        assert_eq!(base.as_str(), "http://127.0.0.1:5000/");
        assert_eq!(path, "charts/team");
        let (base, path) = registry_location("oci://ghcr.io/org/", false).unwrap();
        assert_eq!((base.as_str(), path.as_str()), ("https://ghcr.io/", "org"));
        for bad in [
            "https://ghcr.io/org",
            "oci://",
            "oci://user:pw@ghcr.io/org",
            "oci://h/a//b",
            "oci://h/a:1",
        ] {
            assert!(registry_location(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_semver_tags_are_versions_with_underscore_for_plus() {
        assert_eq!(tag_version("1.2.3").as_deref(), Some("1.2.3"));
        assert_eq!(
            tag_version("1.2.3_build.5").as_deref(),
            Some("1.2.3+build.5")
        );
        assert_eq!(tag_version("2.0.0-rc.1").as_deref(), Some("2.0.0-rc.1"));
        for tag in [
            "latest",
            "main",
            "sha-abc123",
            "1.2.3_bad build",
            "9",
            "1.2",
            "v1.2.3",
        ] {
            assert_eq!(tag_version(tag), None, "{tag}");
        }
    }

    #[test]
    fn credentials_come_from_a_dockerconfigjson_or_username_and_password() {
        let data = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect::<BTreeMap<_, _>>()
        };
        let plain = data(&[("username", "u"), ("password", "p")]);
        let (user, password) = registry_credentials(&plain, "r:5000").unwrap();
        assert_eq!((user.as_str(), password.expose()), ("u", "p"));
        // "dTpwdw==" is base64 of "u:pw".
        let config = data(&[(
            ".dockerconfigjson",
            r#"{"auths":{"https://r:5000/v1/":{"auth":"dTpwdw=="},"other:1":{"username":"x","password":"y"}}}"#,
        )]);
        let (user, password) = registry_credentials(&config, "r:5000").unwrap();
        assert_eq!((user.as_str(), password.expose()), ("u", "pw"));
        let (user, _) = registry_credentials(&config, "other:1").unwrap();
        assert_eq!(user, "x");
        let missing = registry_credentials(&config, "elsewhere").unwrap_err();
        assert_eq!(
            missing,
            ".dockerconfigjson has no entry for the registry elsewhere"
        );
        assert!(registry_credentials(&data(&[("token", "t")]), "r").is_err());
    }

    #[test]
    fn challenges_are_parsed() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="registry""#),
            Challenge::Basic
        );
        let Challenge::Bearer(p) = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:charts/genpack:pull""#,
        ) else {
            panic!("not bearer")
        };
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:charts/genpack:pull");
        assert_eq!(Challenge::parse("Negotiate"), Challenge::Other);
    }

    #[test]
    fn tokens_are_scoped_to_the_repository_of_a_path() {
        for path in [
            "/v2/charts/genpack/tags/list",
            "/v2/charts/genpack/manifests/1.0.0",
            "/v2/charts/genpack/blobs/sha256:ab",
        ] {
            assert_eq!(repository_of(path), "charts/genpack", "{path}");
        }
    }

    #[test]
    fn the_next_tag_page_comes_from_the_link_header() {
        let url = Url::parse("http://r:5000/v2/c/genpack/tags/list?n=2").unwrap();
        let link = HeaderValue::from_static(r#"</v2/c/genpack/tags/list?last=b&n=2>; rel="next""#);
        assert_eq!(
            next_page(&url, Some(&link)).unwrap().as_str(),
            "http://r:5000/v2/c/genpack/tags/list?last=b&n=2"
        );
        assert_eq!(next_page(&url, None), None);
    }

    #[test]
    fn the_index_digest_changes_only_with_the_versions() {
        let entry = |v: &str| ChartVersionEntry {
            version: v.into(),
            urls: vec![format!("oci://r/c/genpack@sha256:{v}")],
            digest: Some("ab".into()),
        };
        let charts = |vs: &[&str]| {
            BTreeMap::from([("genpack".to_owned(), vs.iter().map(|v| entry(v)).collect())])
        };
        let FetchOutcome::Fetched { index, .. } = outcome(charts(&["1.0.0"]), None) else {
            panic!("first fetch")
        };
        assert!(matches!(
            outcome(charts(&["1.0.0"]), Some(&index)),
            FetchOutcome::NotModified
        ));
        assert!(matches!(
            outcome(charts(&["1.0.0", "1.1.0"]), Some(&index)),
            FetchOutcome::Fetched { .. }
        ));
    }
}
