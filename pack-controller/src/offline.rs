//! A Pack resolved and rendered outside the controller, for `kubectl pack template|diff`: the same
//! steps as a reconcile — the repository's index fetched with its credentials ([`ChartSource`]),
//! `valuesFrom` read and merged, [`resolve::resolve_from`], the archive from [`ChartCache`] checked
//! against the index's digest — then `helm template` instead of `helm upgrade`. Nothing is written to the
//! cluster.

use std::{collections::HashMap, path::PathBuf};

use common::crd::{Pack, pack::ValuesSourceKind};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::{
    chart::{ChartCache, ChartError},
    helm::{Helm, HelmConfig, HelmError, Upgrade},
    index::{
        ChartSource, DEFAULT_MAX_INDEX_BYTES, FetchOutcome, HttpFetcher, IndexError,
        RepositoryIndex,
    },
    metrics::HelmMetrics,
    repository,
    repository_kind::{AnyRepository, RepositoryView},
    resolve::{self, DEFAULT_MAX_VALUES_BYTES, RepositoryLookup, Resolution, ResolveError},
    values_from::{self, Merge, ValuesFrom, ValuesFromError},
};

/// Why a Pack could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("{0}")]
    Repository(String),
    #[error("cannot fetch the index of {repository}: {source}")]
    Index {
        repository: String,
        source: IndexError,
    },
    #[error("{0}")]
    Chart(#[from] ChartError),
    #[error("helm template failed: {0}")]
    Helm(#[from] HelmError),
    #[error("{0}")]
    Kube(#[from] kube::Error),
}

/// A Pack's chart as the controller would install it now.
#[derive(Debug)]
pub struct Rendered {
    /// Chart, version and final values (which may hold strings from Secrets: see `secret_strings`).
    pub resolution: Resolution,
    /// `helm template`'s output: the release's manifests, as YAML documents.
    pub manifests: String,
}

/// Resolves and renders Packs with the controller's code.
pub struct Renderer {
    client: Client,
    fetcher: HttpFetcher,
    charts: ChartCache,
    helm: Helm,
}

impl Renderer {
    /// `helm`: the binary; `work_dir`: Helm's homes and values files (private to this process);
    /// `charts_dir`: the chart archive cache (may be shared).
    pub fn new(
        client: Client,
        helm: PathBuf,
        work_dir: PathBuf,
        charts_dir: PathBuf,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&charts_dir)?;
        let config = HelmConfig {
            binary: helm,
            work_dir,
            timeout: std::time::Duration::from_secs(300),
            max_history: 10,
            concurrency: 1,
            term_grace: std::time::Duration::from_secs(5),
        };
        let helm = Helm::new(config, HelmMetrics::register(&mut Registry::default()))?;
        let fetcher = HttpFetcher::new();
        Ok(Renderer {
            client,
            charts: ChartCache::new(fetcher.clone(), charts_dir),
            fetcher,
            helm,
        })
    }

    /// The chart version and final values the controller would use for `pack` now, and where its
    /// chart comes from.
    pub async fn resolve(&self, pack: &Pack) -> Result<(Resolution, ChartSource), RenderError> {
        let name = &pack.spec.chart.repository.name;
        let repo = AnyRepository::of(&self.client, pack).await?;
        let from = read_values_from(&self.client, pack, DEFAULT_MAX_VALUES_BYTES, false)
            .await?
            .map_err(ResolveError::from)?;
        let fetched = match &repo {
            Some(repo) => Some(self.fetch_index(repo.view()).await?),
            None => None,
        };
        let lookup = match &fetched {
            Some((index, _)) => RepositoryLookup::Ready(index),
            None => RepositoryLookup::NotFound,
        };
        let resolution = resolve::resolve_from(&pack.spec, from, lookup, DEFAULT_MAX_VALUES_BYTES)?;
        // A resolution needs an index, so the repository was found.
        let (_, source) = fetched.ok_or_else(|| ResolveError::RepositoryNotFound {
            repository: name.clone(),
        })?;
        Ok((resolution, source))
    }

    /// `repo`'s index, fetched now with its credentials and CA, and its chart source.
    async fn fetch_index(
        &self,
        repo: RepositoryView<'_>,
    ) -> Result<(RepositoryIndex, ChartSource), RenderError> {
        let name = repo.describe();
        let source = repository::fetch_request(&self.client, repo, DEFAULT_MAX_INDEX_BYTES)
            .await
            .map_err(|e| RenderError::Repository(e.to_string()))?;
        match source.fetch_index(&self.fetcher, None).await {
            Ok(FetchOutcome::Fetched { index, .. }) => Ok((index, source)),
            // No validators were sent, so no server may answer "not modified".
            Ok(FetchOutcome::NotModified) => Err(RenderError::Repository(format!(
                "the server of {name} answered 304 to a request without validators"
            ))),
            Err(source) => Err(RenderError::Index {
                repository: name,
                source,
            }),
        }
    }

    /// `helm template` of `pack`'s chart with its final values, as release `pack.name` in its namespace.
    pub async fn render(&self, pack: &Pack) -> Result<Rendered, RenderError> {
        let (resolution, source) = self.resolve(pack).await?;
        let chart = self.charts.archive(&source, &resolution).await?;
        let name = pack.name_any();
        let namespace = pack.namespace().unwrap_or_default();
        let request = Upgrade {
            namespace: &namespace,
            release: &name,
            chart: &chart,
            values: &resolution.values,
            redact: &resolution.secret_strings,
            labels: &[],
            as_user: None,
        };
        let stdout = self
            .helm
            .template(&request, &CancellationToken::new())
            .await?;
        Ok(Rendered {
            resolution,
            manifests: String::from_utf8_lossy(&stdout).into_owned(),
        })
    }
}

/// Reads and merges `pack.spec.valuesFrom` from its namespace; `lenient`: a missing or broken entry is
/// skipped instead of failing the merge (for what uninstall must blank out). Each object is read once,
/// however many entries name it.
pub async fn read_values_from(
    client: &Client,
    pack: &Pack,
    max_values_bytes: usize,
    lenient: bool,
) -> Result<Result<ValuesFrom, ValuesFromError>, kube::Error> {
    let ns = pack.namespace().unwrap_or_default();
    let mut merge = Merge::new(&ns, max_values_bytes);
    let mut secrets: HashMap<&str, Option<Secret>> = HashMap::new();
    let mut config_maps: HashMap<&str, Option<ConfigMap>> = HashMap::new();
    for (index, entry) in pack.spec.values_from.iter().enumerate() {
        let key = entry.key();
        let name = entry.name.as_str();
        let fetched = match entry.kind {
            ValuesSourceKind::Secret => {
                if !secrets.contains_key(name) {
                    let read = Api::namespaced(client.clone(), &ns).get_opt(name).await?;
                    secrets.insert(name, read);
                }
                let secret = secrets[name].clone();
                if let Some(uid) = secret.as_ref().and_then(|s| s.metadata.uid.clone()) {
                    merge.secret_uid(uid);
                }
                values_from::secret_key(secret, key)
            }
            ValuesSourceKind::ConfigMap => {
                if !config_maps.contains_key(name) {
                    let read = Api::namespaced(client.clone(), &ns).get_opt(name).await?;
                    config_maps.insert(name, read);
                }
                values_from::config_map_key(config_maps[name].clone(), key)
            }
        };
        let result = if lenient {
            let mut entry = entry.clone();
            entry.optional = true;
            merge.add(index, &entry, fetched)
        } else {
            merge.add(index, entry, fetched)
        };
        if let Err(e) = result
            && !lenient
        {
            return Ok(Err(e));
        }
    }
    Ok(Ok(merge.finish()))
}
