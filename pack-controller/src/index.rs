//! Helm repository indexes: fetches `<spec.url>/index.yaml` of each `ClusterPackRepository`, keeps only what
//! version resolution and chart download need, and shares one parsed copy per repository with every Pack
//! reconcile.
//!
//! Where each concern lives:
//!
//! * `source` — the one place the kind of repository is decided: [`ChartSource`], through
//!   which the repository reconcile fetches an index and [`crate::chart`] downloads an archive. OCI
//!   registries plug in there beside the HTTP repository.
//! * `parse` — pure: the bytes of an `index.yaml` (or its JSON form) → [`RepositoryIndex`] of
//!   [`ChartVersionEntry`]s via [`parse_index`]; trimming to the kept fields, digest normalisation, and
//!   resolution of chart URLs against the repository URL.
//! * `http` — [`HttpFetcher`]: the HTTP(S) client (a connection pool per custom CA) that GETs an index
//!   ([`FetchRequest`] → [`FetchOutcome`], conditional with [`CacheValidators`]) or a chart archive, under a
//!   size cap and a timeout, with transport and TLS failures named.
//! * `cache` — [`IndexCache`], the shared map repository name → [`CachedRepository`]: readers clone an `Arc`
//!   and never fetch; only a successful fetch replaces an entry.
//! * `error` — [`IndexError`] and its `reason()`, [`RedactedString`], and the redaction of URLs in messages.

mod cache;
mod error;
mod http;
mod oci;
mod parse;
mod source;

pub use cache::{CachedRepository, IndexCache};
pub(crate) use error::redact_url_text;
pub use error::{HttpTarget, IndexError, RedactedString};
pub use http::{
    CacheValidators, DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_INDEX_BYTES, FetchOutcome, FetchRequest,
    HttpFetcher,
};
pub use oci::{OciRequest, registry_credentials, registry_location, tag_version};
pub use parse::{ChartDigest, ChartVersionEntry, RepositoryIndex, parse_index};
pub use source::ChartSource;
