//! The one place the kind of a chart repository is decided, and every fetch of an index or a chart archive
//! goes through: the repository reconcile fetches the index with [`ChartSource::fetch_index`], the chart
//! cache downloads archives with [`ChartSource::fetch_archive`].
//!
//! Every repository is a Helm HTTP(S) repository today: an `oci://` URL reaches the HTTP fetcher, which
//! refuses it as `URLInvalid`. OCI registries (issue 12) plug in here: a second variant holding what a
//! registry needs, chosen in [`ChartSource::new`] by the `oci://` scheme, and one more arm in each method.

use super::error::IndexError;
use super::http::{CacheValidators, FetchOutcome, FetchRequest, HttpFetcher};

/// Where a repository's index and chart archives come from, and how to reach them.
#[derive(Debug, Clone)]
pub enum ChartSource {
    /// A Helm repository served over HTTP(S): `<url>/index.yaml` and the archive URLs it lists.
    Http(FetchRequest),
}

impl ChartSource {
    /// The source of the repository that `request` reaches (see the module docs for the OCI seam).
    pub fn new(request: FetchRequest) -> Self {
        ChartSource::Http(request)
    }

    /// The repository URL (`spec.url`): what the cached index was fetched from.
    pub fn url(&self) -> &str {
        match self {
            ChartSource::Http(request) => &request.url,
        }
    }

    /// Fetches the repository's index; with `previous` validators (from a fetch of the same URL) an unchanged
    /// index yields [`FetchOutcome::NotModified`].
    pub async fn fetch_index(
        &self,
        http: &HttpFetcher,
        previous: Option<&CacheValidators>,
    ) -> Result<FetchOutcome, IndexError> {
        match self {
            ChartSource::Http(request) => http.fetch_index(request, previous).await,
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
        }
    }
}
