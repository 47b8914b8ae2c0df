//! What wakes a Pack reconcile: the watches and the `Controller` of the pack-controller (the reconcile
//! itself is in [`crate::reconcile`]).
//!
//! A Pack is reconciled when its spec or annotations change; when the ClusterPackRepository it references
//! changes its index, readiness or spec (see [`RepositoryFingerprint`]: not on every fetch); when this
//! process's index cache gets another index of that repository (a newly published matching version
//! upgrades it); when its Helm release's Secrets change (a manual `helm rollback` or `helm uninstall` is
//! corrected); when a Secret or ConfigMap its `spec.valuesFrom` names is created, changed or deleted
//! (watched as metadata only through [`common::watch_index`], never cached: the reconcile reads just the
//! ones it names); and on a periodic resync. The ClusterPackRepository loop runs beside it
//! ([`crate::repository::run`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    annotation::WatchKind,
    conditions,
    crd::{ClusterPackRepository, Pack, PackRepository, pack::ValuesSourceKind},
    events::Recorder,
    metrics::ReconcileMetrics,
    runtime::Leading,
    sync::lock,
    watch_index::{Referenced, SourceKey, WatchIndex, source_changes},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::{
    Api, Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt, controller,
        events::Reporter,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use tracing::{Instrument, debug, info_span};

use crate::{
    chart::ChartCache,
    helm::{Helm, HelmConfig},
    identity::Identity,
    index::{HttpFetcher, IndexCache},
    metrics::{HelmMetrics, PackStates},
    reconcile::{Context, error_policy, reconcile},
    release, repository,
    repository_kind::{Repository, RepositoryView, referenced_key},
};

/// What `run` needs besides the leader's client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only Packs of these namespaces (all when empty). With several, Packs are watched cluster-wide
    /// and those of other namespaces are left alone (no finalizer, no status, no Helm).
    pub namespaces: Vec<String>,
    /// Largest repository index accepted.
    pub max_index_bytes: u64,
    /// Most bytes of JSON a Pack's values may expand to (`--max-values-size`).
    pub max_values_bytes: usize,
    /// Pack reconciles at once (`--concurrency`).
    pub concurrency: u16,
    /// How often a Pack is looked at again when nothing it watches changed (`--resync-interval`, ±10 %).
    pub resync: Duration,
    pub helm: HelmConfig,
    /// `--default-service-account`: the ServiceAccount of its own namespace that a Pack without
    /// `spec.serviceAccountName` runs as (lock-down mode of a multi-tenant cluster).
    pub default_service_account: Option<String>,
    /// `--allow-cross-namespace-dependencies`: `spec.dependsOn` may name Packs of other namespaces.
    pub allow_cross_namespace_dependencies: bool,
}

/// The Packs of `store` that reference the repository cached under `key`
/// ([`crate::repository_kind::cache_key`]: a PackRepository only by Packs of its namespace).
fn packs_of(store: &Store<Pack>, key: &str) -> Vec<ObjectRef<Pack>> {
    store
        .state()
        .iter()
        .filter(|p| referenced_key(p) == key)
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// What about a repository matters to its Packs: not the time of its last fetch, which its status records
/// after every refresh (waking every Pack of the repository each interval for nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RepositoryFingerprint {
    generation: Option<i64>,
    url: String,
    index_digest: Option<String>,
    ready: Option<(String, String)>,
}

impl RepositoryFingerprint {
    fn of(repo: RepositoryView<'_>) -> Self {
        let status = repo.status;
        RepositoryFingerprint {
            generation: repo.generation,
            url: repo.spec.url.clone(),
            index_digest: status.and_then(|s| s.index_digest.clone()),
            ready: status
                .and_then(|s| conditions::find(&s.conditions, conditions::READY))
                .map(|c| (c.status.clone(), c.reason.clone())),
        }
    }
}

/// Repositories of kind `K` that changed in a way their Packs care about (see
/// [`RepositoryFingerprint`]), and every deleted one.
fn repository_changes<K: Repository>(
    api: Api<K>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    let seen: Arc<Mutex<HashMap<String, RepositoryFingerprint>>> = Arc::default();
    watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .filter_map(move |event| {
            let seen = seen.clone();
            async move {
                let mut seen = lock(&seen);
                match event {
                    Ok(watcher::Event::Apply(r) | watcher::Event::InitApply(r)) => {
                        let fingerprint = RepositoryFingerprint::of(r.view());
                        let changed = seen.insert(r.view().cache_key(), fingerprint.clone())
                            != Some(fingerprint);
                        changed.then_some(Ok(r))
                    }
                    Ok(watcher::Event::Delete(r)) => {
                        seen.remove(&r.view().cache_key());
                        // It has no finalizer: its condition series go here.
                        common::condition_metrics::forget(
                            &K::kind(&()),
                            r.namespace().as_deref(),
                            &r.name_any(),
                        );
                        Some(Ok(r))
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                    Err(e) => Some(Err(e)),
                }
            }
        })
}

/// Metrics of the three loops and of Helm.
#[derive(Clone)]
pub struct Metrics {
    pub packs: ReconcileMetrics,
    /// The ClusterPackRepository loop.
    pub repositories: ReconcileMetrics,
    /// The PackRepository loop.
    pub pack_repositories: ReconcileMetrics,
    pub helm: HelmMetrics,
    pub states: PackStates,
}

/// Runs the Pack, ClusterPackRepository and PackRepository controllers until `leading.stop` is cancelled.
/// `settings.namespace` scopes the Packs and PackRepositories; ClusterPackRepositories are always all
/// watched.
pub async fn run(leading: Leading, settings: Settings, metrics: Metrics) {
    let client = leading.client.clone();
    let helm = match Helm::new(settings.helm.clone(), metrics.helm.clone()) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, dir = %settings.helm.work_dir.display(), "cannot create the work directory; is it writable?");
            leading.stop.cancelled().await;
            return;
        }
    };
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "pack-controller".into());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "pack-controller".into(),
            instance: Some(identity),
        },
    );
    let config = match kube::Config::infer().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the client configuration (for impersonating ServiceAccounts)");
            leading.stop.cancelled().await;
            return;
        }
    };
    let cache = IndexCache::new();
    let controller = pack_controller(&client, &settings, &cache);
    common::runtime::report_sync_when_ready(controller.store(), leading.health.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        cache: cache.clone(),
        recorder: recorder.clone(),
        metrics: metrics.packs,
        charts: ChartCache::new(HttpFetcher::new(), settings.helm.work_dir.join("charts")),
        helm,
        states: metrics.states.clone(),
        max_index_bytes: settings.max_index_bytes,
        max_values_bytes: settings.max_values_bytes,
        resync: settings.resync,
        stop: leading.stop.clone(),
        errors: Mutex::default(),
        written: Default::default(),
        namespaces: settings.namespaces.clone(),
        default_service_account: settings.default_service_account.clone(),
        config,
        allow_cross_namespace_dependencies: settings.allow_cross_namespace_dependencies,
        packs: controller.store(),
    });
    let packs = controller
        .graceful_shutdown_on(leading.stop.clone().cancelled_owned())
        .run(
            |pack, ctx| {
                let span = info_span!(
                    "pack",
                    namespace = %pack.namespace().unwrap_or_default(),
                    name = %pack.name_any()
                );
                async move {
                    debug!("reconcile");
                    reconcile(pack, ctx).await
                }
                .instrument(span)
            },
            error_policy,
            ctx,
        )
        .for_each(|_| std::future::ready(()));
    let repositories = repository::run(
        Api::<ClusterPackRepository>::all(client.clone()),
        client.clone(),
        cache.clone(),
        recorder.clone(),
        metrics.repositories,
        settings.max_index_bytes,
        leading.stop.clone(),
    );
    let pack_repositories = repository::run(
        PackRepository::api(client.clone(), single_namespace(&settings.namespaces)),
        client,
        cache,
        recorder,
        metrics.pack_repositories,
        settings.max_index_bytes,
        leading.stop.clone(),
    );
    futures::future::join3(packs, repositories, pack_repositories).await;
    // Not leading any more: a standby exports no Pack counts.
    metrics.states.clear();
}

/// The one namespace `--namespace` names, if it names exactly one (else every namespace is watched).
fn single_namespace(namespaces: &[String]) -> Option<&str> {
    match namespaces {
        [ns] => Some(ns),
        _ => None,
    }
}

/// The Pack `Controller` and everything that wakes a Pack: its own watch, its repository's changes, its
/// Helm release's Secrets, and this process's index cache.
fn pack_controller(client: &Client, settings: &Settings, cache: &IndexCache) -> Controller<Pack> {
    let packs: Api<Pack> = match settings.namespaces.as_slice() {
        [ns] => Api::namespaced(client.clone(), ns),
        _ => Api::all(client.clone()),
    };
    // The Pack cache holds what reconciles read, not managedFields or kubectl's last-applied copy of the
    // whole Pack (values included): at 1,000 Packs they are most of the controller's memory.
    let (reader, writer) = kube::runtime::reflector::store();
    let sources = ValuesSources::default();
    let (changed_packs, changed_rx) = tokio::sync::mpsc::unbounded_channel();
    let indexing = sources.clone();
    let pack_stream = watcher(packs, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|pack: &mut Pack| {
            pack.metadata.managed_fields = None;
            if let Some(a) = pack.metadata.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .map(move |event| {
            if let Ok(event) = &event {
                indexing.follow(event);
            }
            event
        })
        .reflect(writer)
        // After the cache has the change: a Pack woken by it reads its dependencies' state from there.
        .map(move |event| {
            match &event {
                Ok(watcher::Event::Apply(p)) => {
                    let _ = changed_packs.send(PackChange::of(p, false));
                }
                Ok(watcher::Event::Delete(p)) => {
                    let _ = changed_packs.send(PackChange::of(p, true));
                }
                _ => {}
            }
            event
        })
        .applied_objects();
    let controller = Controller::for_stream(pack_stream, reader)
        .with_config(controller::Config::default().concurrency(settings.concurrency));
    let store = controller.store();
    let mapper_store = store.clone();
    let namespaced_store = store.clone();
    let account_store = store.clone();
    let default_account = settings.default_service_account.clone();
    controller
        .watches_stream(
            repository_changes(Api::<ClusterPackRepository>::all(client.clone())),
            move |repo: ClusterPackRepository| packs_of(&mapper_store, &repo.view().cache_key()),
        )
        .watches_stream(
            repository_changes(PackRepository::api(
                client.clone(),
                single_namespace(&settings.namespaces),
            )),
            move |repo: PackRepository| packs_of(&namespaced_store, &repo.view().cache_key()),
        )
        // Helm's release Secrets: a release changed outside (manual rollback, uninstall, a finished
        // operation) wakes the Pack of the same name.
        .watches_stream(
            metadata_changes::<Secret>(client, &settings.namespaces, Some(release::OWNER_SELECTOR)),
            |secret| {
                let name = secret.labels().get("name")?.clone();
                Some(ObjectRef::<Pack>::new(&name).within(&secret.namespace()?))
            },
        )
        .watches_stream(
            metadata_changes::<ServiceAccount>(client, &settings.namespaces, None),
            move |account| {
                let name = account.name_any();
                account
                    .namespace()
                    .map(|ns| {
                        packs_running_as(&account_store, &ns, &name, default_account.as_deref())
                    })
                    .unwrap_or_default()
            },
        )
        .reconcile_on(dependents(changed_rx, store.clone()))
        .reconcile_on(readiness_wakeups(
            client,
            &settings.namespaces,
            store.clone(),
        ))
        .reconcile_on(index_changes(cache, store))
        .reconcile_on(sources.wakeups(client, &settings.namespaces))
}

/// Which Packs' `spec.valuesFrom` name which Secret or ConfigMap ([`WatchIndex`], kept up to date from
/// the Pack watch), and the wake-ups a change of one of them makes.
#[derive(Clone, Default)]
struct ValuesSources {
    index: Arc<Mutex<WatchIndex<PackKey>>>,
    /// The Packs seen during a relist, to forget those that went away meanwhile.
    relisted: Arc<Mutex<Option<HashSet<PackKey>>>>,
}

/// A Pack's namespace and name.
type PackKey = (String, String);

impl ValuesSources {
    fn key(pack: &Pack) -> PackKey {
        (pack.namespace().unwrap_or_default(), pack.name_any())
    }

    /// The sources `pack` names (in its own namespace only).
    fn of(pack: &Pack) -> Vec<SourceKey> {
        let ns = pack.namespace().unwrap_or_default();
        let mut sources: Vec<SourceKey> = pack
            .spec
            .values_from
            .iter()
            .map(|r| SourceKey {
                kind: match r.kind {
                    ValuesSourceKind::Secret => WatchKind::Secret,
                    ValuesSourceKind::ConfigMap => WatchKind::ConfigMap,
                },
                namespace: ns.clone(),
                name: r.name.clone(),
            })
            .collect();
        sources.sort();
        sources.dedup();
        sources
    }

    /// Follows one event of the Pack watch.
    fn follow(&self, event: &watcher::Event<Pack>) {
        let mut index = lock(&self.index);
        match event {
            watcher::Event::Init => *lock(&self.relisted) = Some(Default::default()),
            watcher::Event::InitApply(p) => {
                if let Some(seen) = lock(&self.relisted).as_mut() {
                    seen.insert(Self::key(p));
                }
                index.set(&Self::key(p), Self::of(p));
            }
            watcher::Event::InitDone => {
                if let Some(seen) = lock(&self.relisted).take() {
                    index.retain(|k| seen.contains(k));
                }
            }
            watcher::Event::Apply(p) => index.set(&Self::key(p), Self::of(p)),
            watcher::Event::Delete(p) => index.remove(&Self::key(p)),
        }
    }

    /// The Packs to reconcile because a Secret or ConfigMap they name changed. One metadata watch per
    /// kind and namespace in scope (or one for all), nothing cached.
    fn wakeups(
        &self,
        client: &Client,
        namespaces: &[String],
    ) -> impl futures::Stream<Item = ObjectRef<Pack>> + Send + 'static {
        let apis = |ns: Option<&String>| -> (
            Api<PartialObjectMeta<Secret>>,
            Api<PartialObjectMeta<ConfigMap>>,
        ) {
            match ns {
                Some(ns) => (
                    Api::namespaced(client.clone(), ns),
                    Api::namespaced(client.clone(), ns),
                ),
                None => (Api::all(client.clone()), Api::all(client.clone())),
            }
        };
        let scopes: Vec<Option<&String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().map(Some).collect()
        };
        let referenced: Referenced = {
            let index = self.index.clone();
            Arc::new(move |kind, ns| lock(&index).sources(kind, ns))
        };
        let mut streams = Vec::new();
        for ns in scopes {
            let (secrets, config_maps) = apis(ns);
            let (ns, r) = (ns.cloned(), &referenced);
            streams.push(source_changes(secrets, WatchKind::Secret, ns.clone(), r.clone()).boxed());
            streams.push(source_changes(config_maps, WatchKind::ConfigMap, ns, r.clone()).boxed());
        }
        let index = self.index.clone();
        futures::stream::select_all(streams).flat_map(move |event| {
            let packs: Vec<ObjectRef<Pack>> = lock(&index)
                .watchers_of(&event.source)
                .into_iter()
                .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
                .collect();
            if !packs.is_empty() {
                debug!(kind = ?event.source.kind, name = %event.source.name, "a valuesFrom source changed");
            }
            futures::stream::iter(packs)
        })
    }
}

/// The Packs of `store` in namespace `ns` whose Helm operations run as ServiceAccount `name`.
fn packs_running_as(
    store: &Store<Pack>,
    ns: &str,
    name: &str,
    default_account: Option<&str>,
) -> Vec<ObjectRef<Pack>> {
    store
        .state()
        .iter()
        .filter(|p| {
            Identity::of(p, default_account).is_some_and(|i| i.namespace == ns && i.name == name)
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Objects of kind `K` in the namespaces in scope, metadata only (selected by `labels`), as they change.
/// One watch per namespace in scope (the RBAC of a namespace-scoped install allows no cluster-wide list),
/// or one for all. Nothing is cached: only the names map to Packs.
fn metadata_changes<K>(
    client: &Client,
    namespaces: &[String],
    labels: Option<&str>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let apis: Vec<Api<PartialObjectMeta<K>>> = if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    };
    let config = match labels {
        Some(l) => watcher::Config::default().labels(l),
        None => watcher::Config::default(),
    }
    .any_semantic();
    futures::stream::select_all(apis.into_iter().map(move |api| {
        watcher(api, config.clone())
            .default_backoff()
            .touched_objects()
            .boxed()
    }))
}

/// A Pack seen by the Pack watch, for `spec.dependsOn` wake-ups.
struct PackChange {
    namespace: String,
    name: String,
    /// The Packs it depends on, when it is being deleted or gone: a dependency waiting to be uninstalled
    /// after it ([`crate::depends::deleting_dependents`]) goes on.
    release_dependencies: Vec<(String, String)>,
}

impl PackChange {
    fn of(p: &Pack, gone: bool) -> Self {
        let leaving = gone || p.metadata.deletion_timestamp.is_some();
        PackChange {
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            release_dependencies: if leaving {
                crate::depends::dependencies(p)
            } else {
                Vec::new()
            },
        }
    }
}

/// `spec.dependsOn`: a Pack changed (its status too): the Packs that depend on it; and when it is being
/// deleted or gone, the Packs it depends on.
fn dependents(
    changed: tokio::sync::mpsc::UnboundedReceiver<PackChange>,
    store: Store<Pack>,
) -> impl futures::Stream<Item = ObjectRef<Pack>> + Send + 'static {
    futures::stream::unfold(
        changed,
        |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
    )
    .flat_map(move |change| {
        let mut packs: Vec<ObjectRef<Pack>> = store
            .state()
            .iter()
            .filter(|p| crate::depends::depends_on(p, &change.namespace, &change.name))
            .map(|p| ObjectRef::from_obj(p.as_ref()))
            .collect();
        packs.extend(
            change
                .release_dependencies
                .iter()
                .map(|(ns, name)| ObjectRef::new(name).within(ns)),
        );
        futures::stream::iter(packs)
    })
}

/// The kinds whose changes wake a Pack waiting for its release's objects (`spec.wait`); custom
/// resources are read again on a short requeue instead.
pub const WAKING_KINDS: [&str; 6] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "PersistentVolumeClaim",
    "Service",
];

/// Helm's annotations on every object of a release.
const RELEASE_NAME: &str = "meta.helm.sh/release-name";
const RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";

/// `spec.wait` and `spec.driftDetection`: a change of a Deployment, StatefulSet, DaemonSet, Job, PVC or
/// Service of a release ([`WAKING_KINDS`], by Helm's `meta.helm.sh/release-*` annotations) wakes its Pack
/// while the Pack waits (`Progressing` after Helm, or `NotReady`), and always when it detects drift. Metadata-only watches (a status change bumps the
/// resourceVersion), nothing cached; the reconcile reads the objects it checks.
fn readiness_wakeups(
    client: &Client,
    namespaces: &[String],
    store: Store<Pack>,
) -> impl futures::Stream<Item = ObjectRef<Pack>> + Send + 'static {
    use k8s_openapi::api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        batch::v1::Job,
        core::v1::{PersistentVolumeClaim, Service},
    };
    fn release_of<K>(o: Result<PartialObjectMeta<K>, watcher::Error>) -> Option<(String, String)> {
        let o = o.ok()?;
        let a = o.metadata.annotations.as_ref()?;
        Some((
            a.get(RELEASE_NAMESPACE)?.clone(),
            a.get(RELEASE_NAME)?.clone(),
        ))
    }
    let streams = vec![
        metadata_changes::<Deployment>(client, namespaces, None)
            .map(release_of)
            .boxed(),
        metadata_changes::<StatefulSet>(client, namespaces, None)
            .map(release_of)
            .boxed(),
        metadata_changes::<DaemonSet>(client, namespaces, None)
            .map(release_of)
            .boxed(),
        metadata_changes::<Job>(client, namespaces, None)
            .map(release_of)
            .boxed(),
        metadata_changes::<PersistentVolumeClaim>(client, namespaces, None)
            .map(release_of)
            .boxed(),
        metadata_changes::<Service>(client, namespaces, None)
            .map(release_of)
            .boxed(),
    ];
    futures::stream::select_all(streams).filter_map(move |release| {
        let pack = release.and_then(|(ns, name)| {
            let r = ObjectRef::<Pack>::new(&name).within(&ns);
            store
                .get(&r)
                .filter(|p| waits(p) || detects_drift(p))
                .map(|_| r)
        });
        std::future::ready(pack)
    })
}

/// Whether `pack` compares its release's objects with the cluster (`spec.driftDetection`): a change of
/// one of them is looked at at once, not at the next resync.
fn detects_drift(pack: &Pack) -> bool {
    pack.spec
        .drift_detection
        .as_ref()
        .is_some_and(|d| d.mode != common::crd::pack::DriftMode::Disabled)
}

/// Whether `pack` waits for its release's objects now (`spec.wait`, and `Progressing` or `NotReady`).
fn waits(pack: &Pack) -> bool {
    use common::crd::pack::PackState;
    let Some(status) = pack.status.as_ref().filter(|_| pack.spec.wait) else {
        return false;
    };
    status.state == Some(PackState::Progressing)
        || conditions::find(&status.conditions, conditions::READY)
            .is_some_and(|c| c.reason == crate::status::NOT_READY)
}

/// This process's cache got another index of a repository: its Packs (a newer matching version upgrades
/// them). Tied to the cache, not to the repository's status, which another process may have written
/// first.
fn index_changes(
    cache: &IndexCache,
    store: Store<Pack>,
) -> impl futures::Stream<Item = ObjectRef<Pack>> + Send + 'static {
    futures::stream::unfold(cache.subscribe(), |mut rx| async move {
        match rx.recv().await {
            Ok(name) => Some((Some(name), rx)),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some((None, rx)),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
        }
    })
    .flat_map(move |name| {
        let packs = match name {
            Some(name) => packs_of(&store, &name),
            // Missed some: every Pack.
            None => store
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect(),
        };
        futures::stream::iter(packs)
    })
}
