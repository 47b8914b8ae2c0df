//! The one place the kind of a chart repository is decided, and every fetch of an index or a chart archive
//! goes through: the repository reconcile fetches the index with [`ChartSource::fetch_index`], the chart
//! cache downloads archives with [`ChartSource::fetch_archive`].
//!
//! A Helm HTTP(S) repository ([`ChartSource::Http`]) or an OCI registry ([`ChartSource::Oci`], see
//! [`super::oci`]), chosen by the URL's scheme where the request is built. Both yield a
//! [`RepositoryIndex`](super::RepositoryIndex), so resolution and the chart cache do not know which.

use super::cache::CachedRepository;
use super::error::IndexError;
use super::http::{CacheValidators, FetchOutcome, FetchRequest, HttpFetcher};
use super::oci::{self, OciRequest};

/// Where a repository's index and chart archives come from, and how to reach them.
#[derive(Debug, Clone)]
pub enum ChartSource {
    /// A Helm repository served over HTTP(S): `<url>/index.yaml` and the archive URLs it lists.
    Http(FetchRequest),
    /// An OCI registry, `oci://host[:port]/path`: tags of the charts in use, layers pulled by digest.
    Oci(OciRequest),
}

impl ChartSource {
    /// The source of the repository that `request` reaches (see the module docs for the OCI seam).
    pub fn new(request: FetchRequest) -> Self {
        ChartSource::Http(request)
    }

    /// For an OCI registry: list the tags of these `charts` (the ones Packs use); HTTP: unchanged.
    pub fn with_charts(self, charts: Vec<String>) -> Self {
        match self {
            ChartSource::Oci(request) => ChartSource::Oci(OciRequest { charts, ..request }),
            http => http,
        }
    }

    /// The repository URL (`spec.url`): what the cached index was fetched from.
    pub fn url(&self) -> &str {
        match self {
            ChartSource::Http(request) => &request.url,
            ChartSource::Oci(request) => &request.url,
        }
    }

    /// Fetches the repository's index; with `previous` validators (from a fetch of the same URL) an unchanged
    /// index yields [`FetchOutcome::NotModified`]. An OCI registry has no validators: use
    /// [`ChartSource::refresh`].
    pub async fn fetch_index(
        &self,
        http: &HttpFetcher,
        previous: Option<&CacheValidators>,
    ) -> Result<FetchOutcome, IndexError> {
        match self {
            ChartSource::Http(request) => http.fetch_index(request, previous).await,
            ChartSource::Oci(request) => oci::fetch_index(http, request, None).await,
        }
    }

    /// Fetches the repository's index given what the cache holds for it: validators of a fetch of the same
    /// URL for HTTP, the manifest digests already read for OCI; unchanged → [`FetchOutcome::NotModified`].
    pub async fn refresh(
        &self,
        http: &HttpFetcher,
        previous: Option<&CachedRepository>,
    ) -> Result<FetchOutcome, IndexError> {
        match self {
            ChartSource::Http(request) => {
                let validators = previous.and_then(|p| p.validators_for(&request.url));
                http.fetch_index(request, validators).await
            }
            ChartSource::Oci(request) => {
                let same_url = previous.filter(|p| p.url == request.url);
                oci::fetch_index(http, request, same_url.map(|p| p.index.as_ref())).await
            }
        }
    }

    /// Downloads the chart archive at `archive_url` (as the index lists it), at most `max_bytes` of it.
    pub async fn fetch_archive(
        &self,
        http: &HttpFetcher,
        archive_url: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, IndexError> {
        match self {
            ChartSource::Http(request) => {
                let request = FetchRequest {
                    max_bytes,
                    ..request.clone()
                };
                http.fetch_archive(&request, archive_url).await
            }
            ChartSource::Oci(request) => {
                let request = OciRequest {
                    max_bytes,
                    ..request.clone()
                };
                oci::fetch_archive(http, &request, archive_url).await
            }
        }
    }
}
