//! Chart archives: downloaded from the URL the repository index gives, checked against the index's
//! SHA-256 digest, and kept on local disk by digest, so Helm always installs a local, verified file and
//! a chart version is downloaded once per process (the cache is an `emptyDir`). An index entry without
//! a digest is refused (`ChartDigestMissing`): `helm repo index` always writes one, and an archive
//! that cannot be checked is not installed.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use sha2::{Digest as _, Sha256};
use tracing::{debug, info};

use crate::{
    index::{ChartSource, HttpFetcher, IndexError, redact_url_text},
    plan::hex,
    resolve::Resolution,
};

/// Largest chart archive accepted.
pub const MAX_CHART_BYTES: u64 = 20 * 1024 * 1024;
/// Archives kept on disk; the least recently used go first.
const MAX_CACHED: usize = 256;
/// An archive used this recently is never pruned (longer than Helm's default timeout), even past
/// [`MAX_CACHED`]: Helm may still be about to read it.
const IN_USE: Duration = Duration::from_secs(15 * 60);

/// Why a chart archive could not be had.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("the repository index lists no download URL for chart {chart} {version}")]
    NoUrl { chart: String, version: String },
    #[error("cannot download chart {chart} {version} from {url}: {source}")]
    Download {
        chart: String,
        version: String,
        url: String,
        source: IndexError,
    },
    #[error(
        "chart {chart} {version} downloaded from {url} has SHA-256 {actual}, but the repository index \
         says {expected}; the repository is inconsistent or the download was tampered with"
    )]
    DigestMismatch {
        chart: String,
        version: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the repository index gives no digest for chart {chart} {version}, so its archive cannot be \
         checked and is not installed; regenerate the index with `helm repo index` (which records each \
         archive's SHA-256)"
    )]
    DigestMissing { chart: String, version: String },
    #[error("cannot write the chart cache: {0}")]
    Io(#[from] std::io::Error),
}

impl ChartError {
    pub fn reason(&self) -> &'static str {
        match self {
            ChartError::NoUrl { .. } | ChartError::Download { .. } => "ChartDownloadFailed",
            ChartError::DigestMismatch { .. } => "ChartDigestMismatch",
            ChartError::DigestMissing { .. } => "ChartDigestMissing",
            ChartError::Io(_) => "ChartCacheFailed",
        }
    }
}

/// The on-disk cache of chart archives.
#[derive(Debug, Clone)]
pub struct ChartCache {
    fetcher: HttpFetcher,
    dir: PathBuf,
}

impl ChartCache {
    /// A cache in `dir` (created by [`crate::helm::Helm::new`]).
    pub fn new(fetcher: HttpFetcher, dir: PathBuf) -> Self {
        ChartCache { fetcher, dir }
    }

    /// The local archive of `resolution`, downloaded from `repository` (with its credentials and CA) if not
    /// cached.
    pub async fn archive(
        &self,
        repository: &ChartSource,
        resolution: &Resolution,
    ) -> Result<PathBuf, ChartError> {
        let expected = expected_digest(resolution)?;
        let path = self.dir.join(format!("{expected}.tgz"));
        if matches!(fs::read(&path), Ok(bytes) if sha256(&bytes) == expected) {
            // Its modification time is its last use: a popular chart is not the first pruned.
            let _ = fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()));
            debug!(chart = %resolution.chart, version = %resolution.version, "chart archive cached");
            return Ok(path);
        }
        if resolution.urls.is_empty() {
            return Err(ChartError::NoUrl {
                chart: resolution.chart.clone(),
                version: resolution.version.clone(),
            });
        }
        let mut last_error = None;
        for url in &resolution.urls {
            let bytes = match repository
                .fetch_archive(&self.fetcher, url, MAX_CHART_BYTES)
                .await
            {
                Ok(b) => b,
                Err(source) => {
                    last_error = Some(ChartError::Download {
                        chart: resolution.chart.clone(),
                        version: resolution.version.clone(),
                        url: redact_url_text(url),
                        source,
                    });
                    continue;
                }
            };
            let actual = sha256(&bytes);
            if expected != actual {
                last_error = Some(ChartError::DigestMismatch {
                    chart: resolution.chart.clone(),
                    version: resolution.version.clone(),
                    url: redact_url_text(url),
                    expected: expected.clone(),
                    actual,
                });
                continue;
            }
            let path = self.dir.join(format!("{actual}.tgz"));
            write_atomically(&path, &bytes)?;
            info!(chart = %resolution.chart, version = %resolution.version, bytes = bytes.len(), "downloaded chart archive");
            self.prune();
            return Ok(path);
        }
        Err(last_error.unwrap_or_else(|| ChartError::NoUrl {
            chart: resolution.chart.clone(),
            version: resolution.version.clone(),
        }))
    }

    /// Keeps at most [`MAX_CACHED`] archives, least recently used first, but none used within [`IN_USE`].
    fn prune(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "tgz"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        if files.len() <= MAX_CACHED {
            return;
        }
        files.sort();
        let recent = SystemTime::now() - IN_USE;
        for (modified, path) in &files[..files.len() - MAX_CACHED] {
            if *modified < recent {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// The SHA-256 (lowercase hex) the index gives for `resolution`'s archive; none is an error.
fn expected_digest(resolution: &Resolution) -> Result<String, ChartError> {
    match resolution.digest.as_deref().map(str::trim) {
        Some(d) if !d.is_empty() => Ok(d.to_ascii_lowercase()),
        _ => Err(ChartError::DigestMissing {
            chart: resolution.chart.clone(),
            version: resolution.version.clone(),
        }),
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Writes `bytes` to a temporary file beside `path` and renames it, so Helm never reads half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{:08x}", rand::random::<u32>()));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::FetchRequest;
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    async fn serve(body: &'static [u8], hits: Arc<AtomicUsize>) -> String {
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn resolution(url: &str, digest: Option<String>) -> Resolution {
        Resolution {
            chart: "genpack".into(),
            version: "0.1.0".into(),
            digest,
            urls: vec![format!("{url}/charts/genpack-0.1.0.tgz")],
            values: serde_json::json!({}),
            secret_strings: vec![],
            sources: vec![],
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pack-chart-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn downloads_once_and_verifies_the_digest() {
        let hits = Arc::new(AtomicUsize::new(0));
        let url = serve(b"chart bytes", hits.clone()).await;
        let dir = temp_dir("ok");
        let cache = ChartCache::new(HttpFetcher::new(), dir.clone());
        let repo = ChartSource::new(FetchRequest::new(url.clone()));
        let r = resolution(&url, Some(sha256(b"chart bytes")));
        let path = cache.archive(&repo, &r).await.unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"chart bytes");
        let again = cache.archive(&repo, &r).await.unwrap();
        assert_eq!(path, again);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "the second call is served from disk"
        );

        let bad = resolution(&url, Some("00".repeat(32)));
        let err = cache.archive(&repo, &bad).await.unwrap_err();
        assert_eq!(err.reason(), "ChartDigestMismatch", "{err}");
        assert!(!dir.join(format!("{}.tgz", "00".repeat(32))).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_cache_hit_counts_as_use_and_recent_archives_are_not_pruned() {
        let hits = Arc::new(AtomicUsize::new(0));
        let url = serve(b"popular chart", hits.clone()).await;
        let dir = temp_dir("lru");
        let cache = ChartCache::new(HttpFetcher::new(), dir.clone());
        let repo = ChartSource::new(FetchRequest::new(url.clone()));
        let r = resolution(&url, Some(sha256(b"popular chart")));
        let popular = cache.archive(&repo, &r).await.unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let age = |path: &Path, t: SystemTime| {
            fs::File::options()
                .append(true)
                .open(path)
                .unwrap()
                .set_modified(t)
                .unwrap();
        };
        age(&popular, old - Duration::from_secs(60));
        // MAX_CACHED other archives, all used an hour ago, one of them just now.
        for i in 0..MAX_CACHED {
            let path = dir.join(format!("{i:064x}.tgz"));
            fs::write(&path, b"x").unwrap();
            age(&path, old);
        }
        let just_used = dir.join(format!("{:064x}.tgz", 0));
        age(&just_used, SystemTime::now());
        // Handed out again: its time is refreshed, so pruning takes another.
        assert_eq!(cache.archive(&repo, &r).await.unwrap(), popular);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        cache.prune();
        assert!(popular.exists(), "a cache hit is a use");
        assert!(just_used.exists());
        assert!(
            !dir.join(format!("{:064x}.tgz", 1)).exists(),
            "the oldest goes"
        );
        let left = fs::read_dir(&dir).unwrap().count();
        assert_eq!(left, MAX_CACHED);
        // All used recently: none is pruned, even past the cap.
        for i in 0..3 {
            fs::write(dir.join(format!("{:064x}.tgz", 1000 + i)), b"x").unwrap();
        }
        for e in fs::read_dir(&dir).unwrap().flatten() {
            age(&e.path(), SystemTime::now());
        }
        cache.prune();
        assert_eq!(fs::read_dir(&dir).unwrap().count(), MAX_CACHED + 3);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_index_entry_without_a_digest_is_refused_before_any_download() {
        let hits = Arc::new(AtomicUsize::new(0));
        let url = serve(b"unchecked chart", hits.clone()).await;
        let dir = temp_dir("nodigest");
        let cache = ChartCache::new(HttpFetcher::new(), dir.clone());
        let repo = ChartSource::new(FetchRequest::new(url.clone()));
        for digest in [None, Some(String::new()), Some("  ".into())] {
            let err = cache
                .archive(&repo, &resolution(&url, digest))
                .await
                .unwrap_err();
            assert_eq!(err.reason(), "ChartDigestMissing", "{err}");
            let message = err.to_string();
            assert!(
                message.contains("genpack 0.1.0") && message.contains("helm repo index"),
                "{message}"
            );
        }
        assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing downloaded");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "nothing cached");
        // A digest in capitals is the same digest.
        let r = resolution(&url, Some(sha256(b"unchecked chart").to_ascii_uppercase()));
        cache.archive(&repo, &r).await.unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_archive_the_server_does_not_have_says_the_repository_is_inconsistent() {
        let app = axum::Router::new().route(
            "/index.yaml",
            axum::routing::get(|| async { "apiVersion: v1\nentries: {}\n" }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let dir = temp_dir("gone");
        let cache = ChartCache::new(HttpFetcher::new(), dir.clone());
        let r = resolution(&url, Some("00".repeat(32)));
        let err = cache
            .archive(&ChartSource::new(FetchRequest::new(url.clone())), &r)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ChartDownloadFailed");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!(
                "cannot download chart genpack 0.1.0 from {url}/charts/genpack-0.1.0.tgz: GET "
            )) && message.contains(
                "HTTP 404 Not Found; the repository index lists this chart archive but \
                                     the server does not have it: the repository is inconsistent"
            ),
            "{message}"
        );
        // Not the hint of a wrong spec.url: the index was read from it.
        assert!(!message.contains("spec.url"), "{message}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn unreachable_archive_names_the_url() {
        let dir = temp_dir("down");
        let cache = ChartCache::new(HttpFetcher::new(), dir.clone());
        let r = resolution("http://127.0.0.1:9", Some("00".repeat(32)));
        let err = cache
            .archive(
                &ChartSource::new(FetchRequest::new("http://127.0.0.1:9")),
                &r,
            )
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "ChartDownloadFailed");
        assert!(err.to_string().contains("genpack-0.1.0.tgz"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
