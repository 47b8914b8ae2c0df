//! The repository reconcile, one implementation for both kinds ([`Repository`]: ClusterPackRepository and
//! PackRepository): fetches each repository's index on its interval into the shared [`IndexCache`] (keyed
//! by [`RepositoryView::cache_key`]) and reports the outcome on the repository's status.
//!
//! ClusterPackRepository is cluster-scoped, so this controller watches every one whatever `--namespace`
//! says: a namespace-scoped pack-controller still needs the indexes its Packs use. PackRepositories are
//! watched where Packs are.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use common::{
    conditions,
    crd::{ClusterPackRepositoryStatus, repository::SecretReference},
    events::Recorder,
    metrics::ReconcileMetrics,
};
use futures::StreamExt;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller,
        controller::Action,
        events::EventType,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::chart::MAX_CHART_BYTES;
use crate::index::{
    CachedRepository, ChartSource, DEFAULT_FETCH_TIMEOUT, FetchOutcome, FetchRequest, HttpFetcher,
    IndexCache, IndexError, OciRequest, RedactedString, registry_credentials, registry_location,
};
use crate::repository_kind::{Repository, RepositoryView};

/// Field manager of every status write of pack-controller.
pub const FIELD_MANAGER: &str = "pack-controller";
/// Refresh interval when `spec.interval` is not set.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// Errors of a repository reconcile that are not reported on its status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
        }
    }
}

/// Why the fetch could not even be attempted (the spec or its Secrets are wrong).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("spec.interval: {0}")]
    Interval(String),
    #[error("{field}: {message}")]
    SecretNamespace {
        field: &'static str,
        message: String,
    },
    #[error("Secret {namespace}/{name} ({field}) does not exist")]
    SecretMissing {
        field: &'static str,
        namespace: String,
        name: String,
    },
    #[error("Secret {namespace}/{name} ({field}) has no key `{key}`")]
    SecretKeyMissing {
        field: &'static str,
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("cannot read Secret {namespace}/{name} ({field}): {source}")]
    SecretRead {
        field: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error(
        "spec.insecure is only for OCI registries (oci://); an http:// or https:// URL already says \
         whether TLS is used: remove spec.insecure"
    )]
    InsecureNotOci,
    #[error("Secret {namespace}/{name} (spec.secretRef) {message}")]
    RegistryCredentials {
        namespace: String,
        name: String,
        message: String,
    },
}

impl SetupError {
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SetupError::Interval(_) => "InvalidInterval",
            SetupError::SecretNamespace { .. } => "SecretNamespaceRefused",
            SetupError::SecretMissing { .. } | SetupError::SecretKeyMissing { .. } => {
                "SecretInvalid"
            }
            SetupError::SecretRead { .. } => "SecretUnreadable",
            SetupError::InsecureNotOci => "InsecureNotOci",
            SetupError::RegistryCredentials { .. } => "SecretInvalid",
        }
    }
}

/// State shared by every repository reconcile of kind `K`.
pub struct Context<K: Repository> {
    pub client: Client,
    pub fetcher: HttpFetcher,
    /// Largest index accepted (`--max-index-size`).
    pub max_index_bytes: u64,
    pub cache: IndexCache,
    pub metrics: ReconcileMetrics,
    pub recorder: Recorder,
    pub store: Store<K>,
    /// Repositories this controller put into `cache`, to forget deleted ones.
    pub cached_names: Mutex<HashSet<ObjectRef<K>>>,
    /// When each repository was last fetched, and which object (uid/generation): the watch also wakes a repository
    /// for its own status writes, which must not trigger a fetch before the interval is over.
    pub last_fetch: Mutex<HashMap<String, (String, Instant)>>,
}

async fn reconcile<K: Repository>(repo: Arc<K>, ctx: Arc<Context<K>>) -> Result<Action, Error> {
    let _timer = ctx.metrics.start();
    let name = repo.view().cache_key();
    prune_deleted(&ctx);

    let interval = match parse_interval(repo.spec().interval.as_deref()) {
        Ok(i) => i,
        Err(e) => {
            let status = failed_status(repo.view(), &ctx.cache, &e.to_string(), e.reason(), true);
            write_status(&ctx, &repo, status).await?;
            return Ok(Action::await_change());
        }
    };
    // An OCI registry lists the tags of the charts Packs use: a newly used chart is fetched at once.
    let wanted = ctx.cache.wanted(&name);
    let version = format!(
        "{}/{}/{}",
        repo.uid().unwrap_or_default(),
        repo.meta().generation.unwrap_or_default(),
        if is_oci(&repo.spec().url) {
            wanted.len()
        } else {
            0
        }
    );
    if let Some(wait) = fetch_due_in(&ctx, &name, version, interval) {
        return Ok(Action::requeue(wait));
    }
    let source = match fetch_request(&ctx.client, repo.view(), ctx.max_index_bytes).await {
        Ok(s) => s.with_charts(wanted),
        Err(e) => {
            let status = failed_status(repo.view(), &ctx.cache, &e.to_string(), e.reason(), false);
            write_status(&ctx, &repo, status)
                .await
                .inspect_err(|_| forget_fetch(&ctx, &name))?;
            return Ok(Action::requeue(interval));
        }
    };

    let previous = ctx.cache.get(&name);
    let now = Timestamp::now();
    let status = match source.refresh(&ctx.fetcher, previous.as_deref()).await {
        Ok(FetchOutcome::Fetched { index, validators }) => {
            let changed = previous
                .as_deref()
                .is_none_or(|p| p.index.digest != index.digest);
            ctx.cached_names
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(ObjectRef::from_obj(repo.as_ref()));
            ctx.cache.insert(
                name.clone(),
                CachedRepository::new(source.url(), index, validators),
            );
            let cached = ctx.cache.get(&name);
            if changed && let Some(c) = &cached {
                info!(
                    charts = c.index.chart_count(),
                    versions = c.index.version_count(),
                    digest = %c.index.digest,
                    "repository index updated"
                );
            }
            ready_status(repo.view(), cached.as_deref(), now)
        }
        Ok(FetchOutcome::NotModified) => ready_status(repo.view(), previous.as_deref(), now),
        Err(e) => {
            warn!(error = %e, "repository index fetch failed");
            failed_status(
                repo.view(),
                &ctx.cache,
                &fetch_message(&e, &ctx.cache, &name),
                e.reason(),
                false,
            )
        }
    };
    write_status(&ctx, &repo, status)
        .await
        .inspect_err(|_| forget_fetch(&ctx, &name))?;
    Ok(Action::requeue(interval))
}

/// `Some(time left)` when this `version` (uid/generation) of the repository was fetched less than
/// `interval` ago; else records a fetch starting now.
fn fetch_due_in<K: Repository>(
    ctx: &Context<K>,
    name: &str,
    version: String,
    interval: Duration,
) -> Option<Duration> {
    let mut last = ctx
        .last_fetch
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let now = Instant::now();
    if let Some((seen, at)) = last.get(name)
        && *seen == version
    {
        let elapsed = now.duration_since(*at);
        // A little slack so that the requeue scheduled by the last fetch is never turned away.
        if elapsed + Duration::from_millis(100) < interval {
            return Some(interval - elapsed);
        }
    }
    last.insert(name.to_owned(), (version, now));
    None
}

/// Lets the next reconcile fetch at once (its status could not be written, it retries soon).
fn forget_fetch<K: Repository>(ctx: &Context<K>, name: &str) {
    ctx.last_fetch
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(name);
}

fn fetch_message(e: &IndexError, cache: &IndexCache, name: &str) -> String {
    match cache.get(name) {
        Some(c) => format!(
            "{e}; still serving the index fetched at {} (digest {})",
            c.index.fetched_at, c.index.digest
        ),
        None => e.to_string(),
    }
}

fn parse_interval(interval: Option<&str>) -> Result<Duration, SetupError> {
    let Some(text) = interval else {
        return Ok(DEFAULT_INTERVAL);
    };
    let d = common::cli::parse_duration(text).map_err(SetupError::Interval)?;
    if d.is_zero() {
        return Err(SetupError::Interval(format!(
            "{text:?} is zero; give a positive duration such as 5m"
        )));
    }
    Ok(d)
}

/// Where `repo`'s index and charts come from: its URL, with the credentials and CA its Secrets give.
pub(crate) async fn fetch_request(
    client: &Client,
    repo: RepositoryView<'_>,
    max_index_bytes: u64,
) -> Result<ChartSource, SetupError> {
    if is_oci(&repo.spec.url) {
        return oci_request(client, repo).await;
    }
    if repo.spec.insecure {
        return Err(SetupError::InsecureNotOci);
    }
    let mut req = FetchRequest::new(repo.spec.url.clone());
    req.max_bytes = max_index_bytes;
    if let Some(r) = &repo.spec.secret_ref {
        let secret = read_secret(client, repo, r, "spec.secretRef").await?;
        let username = secret_key(&secret, r, "spec.secretRef", "username")?;
        let password = secret_key(&secret, r, "spec.secretRef", "password")?;
        req.basic_auth = Some((
            String::from_utf8_lossy(&username).into_owned(),
            RedactedString::new(String::from_utf8_lossy(&password).into_owned()),
        ));
    }
    if let Some(r) = &repo.spec.ca_secret_ref {
        let secret = read_secret(client, repo, r, "spec.caSecretRef").await?;
        req.ca_pem = Some(secret_key(&secret, r, "spec.caSecretRef", "ca.crt")?);
    }
    Ok(ChartSource::new(req))
}

fn is_oci(url: &str) -> bool {
    url.trim_start().starts_with("oci://")
}

/// [`fetch_request`] of an OCI registry: credentials from a dockerconfigjson or username/password Secret.
async fn oci_request(client: &Client, repo: RepositoryView<'_>) -> Result<ChartSource, SetupError> {
    let url = repo.spec.url.trim().to_owned();
    let mut req = OciRequest {
        credentials: None,
        ca_pem: None,
        insecure: repo.spec.insecure,
        charts: Vec::new(),
        max_bytes: MAX_CHART_BYTES,
        timeout: DEFAULT_FETCH_TIMEOUT,
        url,
    };
    if let Some(r) = &repo.spec.secret_ref {
        let secret = read_secret(client, repo, r, "spec.secretRef").await?;
        let data: BTreeMap<String, Vec<u8>> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let host = registry_location(&req.url, req.insecure)
            .ok()
            .and_then(|(base, _)| {
                let port = base.port().map(|p| format!(":{p}")).unwrap_or_default();
                Some(format!("{}{port}", base.host_str()?))
            })
            .unwrap_or_default();
        let credentials = registry_credentials(&data, &host).map_err(|message| {
            SetupError::RegistryCredentials {
                namespace: secret.metadata.namespace.clone().unwrap_or_default(),
                name: r.name.clone(),
                message,
            }
        })?;
        req.credentials = Some(credentials);
    }
    if let Some(r) = &repo.spec.ca_secret_ref {
        let secret = read_secret(client, repo, r, "spec.caSecretRef").await?;
        req.ca_pem = Some(secret_key(&secret, r, "spec.caSecretRef", "ca.crt")?);
    }
    Ok(ChartSource::Oci(req))
}

/// The Secret `r` names, in the namespace [`RepositoryView::secret_namespace`] allows.
async fn read_secret(
    client: &Client,
    repo: RepositoryView<'_>,
    r: &SecretReference,
    field: &'static str,
) -> Result<Secret, SetupError> {
    let namespace = repo
        .secret_namespace(r)
        .map_err(|message| SetupError::SecretNamespace { field, message })?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(&r.name).await {
        Ok(Some(s)) => Ok(s),
        Ok(None) => Err(SetupError::SecretMissing {
            field,
            namespace: namespace.to_owned(),
            name: r.name.clone(),
        }),
        Err(source) => Err(SetupError::SecretRead {
            field,
            namespace: namespace.to_owned(),
            name: r.name.clone(),
            source: Box::new(source),
        }),
    }
}

fn secret_key(
    secret: &Secret,
    r: &SecretReference,
    field: &'static str,
    key: &'static str,
) -> Result<Vec<u8>, SetupError> {
    let from_data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone());
    let from_string = || {
        secret
            .string_data
            .as_ref()
            .and_then(|d| d.get(key))
            .map(|s| s.as_bytes().to_vec())
    };
    from_data
        .or_else(from_string)
        .ok_or_else(|| SetupError::SecretKeyMissing {
            field,
            namespace: secret.metadata.namespace.clone().unwrap_or_default(),
            name: r.name.clone(),
            key,
        })
}

/// Status after a successful fetch (or a 304): counts and digest of the index now serving.
fn ready_status(
    repo: RepositoryView<'_>,
    cached: Option<&CachedRepository>,
    now: Timestamp,
) -> ClusterPackRepositoryStatus {
    let generation = repo.generation;
    let mut status = repo.status.cloned().unwrap_or_default();
    status.observed_generation = generation;
    if let Some(c) = cached {
        status.charts = Some(c.index.chart_count() as i64);
        status.versions = Some(c.index.version_count() as i64);
        status.index_digest = Some(c.index.digest.clone());
        let message = format!(
            "fetched index: {} charts, {} versions",
            c.index.chart_count(),
            c.index.version_count()
        );
        conditions::set(
            &mut status.conditions,
            conditions::new(conditions::READY, true, "Succeeded", message, generation),
        );
    }
    // Whole seconds, as Kubernetes writes its own timestamps.
    status.last_fetch_time = Some(format!("{now:.0}"));
    conditions::remove(&mut status.conditions, conditions::STALLED);
    status
}

/// Status after a failure: Ready=False with the cause; counts of a still-cached index are kept.
fn failed_status(
    repo: RepositoryView<'_>,
    cache: &IndexCache,
    message: &str,
    reason: &str,
    stalled: bool,
) -> ClusterPackRepositoryStatus {
    let generation = repo.generation;
    let mut status = repo.status.cloned().unwrap_or_default();
    status.observed_generation = generation;
    if let Some(c) = cache.get(&repo.cache_key()) {
        status.charts = Some(c.index.chart_count() as i64);
        status.versions = Some(c.index.version_count() as i64);
        status.index_digest = Some(c.index.digest.clone());
    }
    conditions::set(
        &mut status.conditions,
        conditions::new(conditions::READY, false, reason, message, generation),
    );
    if stalled {
        conditions::set(
            &mut status.conditions,
            conditions::new(conditions::STALLED, true, reason, message, generation),
        );
    } else {
        conditions::remove(&mut status.conditions, conditions::STALLED);
    }
    status
}

/// Writes the status (server-side apply on the status subresource) unless nothing changed, and emits an
/// Event when the Ready reason changes.
async fn write_status<K: Repository>(
    ctx: &Context<K>,
    repo: &K,
    status: ClusterPackRepositoryStatus,
) -> Result<(), Error> {
    let old = repo.status().cloned().unwrap_or_default();
    let api = K::api(ctx.client.clone(), repo.meta().namespace.as_deref());
    if !common::status::write(&api, &repo.name_any(), FIELD_MANAGER, Some(&old), &status).await? {
        return Ok(());
    }
    let old_ready = conditions::find(&old.conditions, conditions::READY);
    let new_ready = conditions::find(&status.conditions, conditions::READY);
    if let Some(new) = new_ready
        && old_ready.as_ref().map(|c| (&c.reason, &c.status)) != Some((&new.reason, &new.status))
    {
        let type_ = if new.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let regarding = repo.object_ref(&());
        common::events::publish(
            &ctx.recorder,
            &regarding,
            type_,
            &new.reason,
            "FetchIndex",
            &new.message,
        )
        .await;
    }
    Ok(())
}

/// Drops cached indexes of repositories that no longer exist.
fn prune_deleted<K: Repository>(ctx: &Context<K>) {
    let mut names = ctx
        .cached_names
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    names.retain(|oref| {
        let exists = ctx.store.get(oref).is_some();
        if !exists {
            let key =
                crate::repository_kind::cache_key(K::KIND, oref.namespace.as_deref(), &oref.name);
            ctx.cache.remove(&key);
            ctx.last_fetch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&key);
        }
        exists
    });
}

fn error_policy<K: Repository>(_repo: Arc<K>, error: &Error, ctx: Arc<Context<K>>) -> Action {
    warn!(%error, "repository reconcile failed");
    ctx.metrics.failure(error.reason());
    Action::requeue(Duration::from_secs(10))
}

/// Runs the controller of repositories of kind `K` that `api` lists until `stop` is cancelled.
pub async fn run<K: Repository>(
    api: Api<K>,
    client: Client,
    cache: IndexCache,
    recorder: Recorder,
    metrics: ReconcileMetrics,
    max_index_bytes: u64,
    stop: CancellationToken,
) {
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let wants = newly_wanted(&cache, controller.store());
    let controller = controller.reconcile_on(wants);
    let ctx = Arc::new(Context {
        client,
        fetcher: HttpFetcher::new(),
        max_index_bytes,
        cache,
        metrics,
        recorder,
        store: controller.store(),
        cached_names: Mutex::default(),
        last_fetch: Mutex::default(),
    });
    controller
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(
            |repo, ctx| {
                let span = info_span!(
                    "repository",
                    kind = ?K::KIND,
                    namespace = %repo.namespace().unwrap_or_default(),
                    name = %repo.name_any()
                );
                reconcile(repo, ctx).instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|_| std::future::ready(()))
        .await;
}

/// The repositories of `store` asked for a chart they were not asked for before (an OCI registry then lists
/// that chart's tags at once instead of at its next interval).
fn newly_wanted<K: Repository>(
    cache: &IndexCache,
    store: Store<K>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static {
    futures::stream::unfold(cache.subscribe_wants(), |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(key) => return Some((key, rx)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter_map(move |key| {
        let found = store
            .state()
            .into_iter()
            .find(|r| r.view().cache_key() == key)
            .map(|r| ObjectRef::from_obj(r.as_ref()));
        std::future::ready(found)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval(None).unwrap(), DEFAULT_INTERVAL);
        assert_eq!(parse_interval(Some("2s")).unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_interval(Some("5m")).unwrap(),
            Duration::from_secs(300)
        );
        assert_eq!(
            parse_interval(Some("nope")).unwrap_err().reason(),
            "InvalidInterval"
        );
        assert!(parse_interval(Some("0s")).is_err());
    }
}
