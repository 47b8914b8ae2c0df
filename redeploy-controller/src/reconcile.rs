//! The reconcile loop. Workloads (Deployments, StatefulSets, DaemonSets, Packs) are watched as metadata
//! only: the annotation is all that decides whether a workload is of interest. ConfigMaps and Secrets
//! are watched as metadata only and never cached; an event on one that some workload watches wakes
//! those workloads, which then read and hash just the objects they name.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    annotation::{WATCH_TO_REDEPLOY, WatchKind, WatchTarget, parse_watch_targets},
    cli::parse_duration,
    crd::Pack,
    events::Recorder,
    metrics::ReconcileMetrics,
    runtime::Leading,
};
use futures::{StreamExt, channel::mpsc};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::{ConfigMap, ObjectReference, Secret},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{EventType, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::{
    index::{SourceKey, WatchIndex, WorkloadKey, WorkloadKind},
    limiter::RateLimiter,
    metrics::RedeployMetrics,
    state::{
        ABSENT, CONFIG_HASH_ANNOTATION, DELAY_ANNOTATION, Decision, HASHES_ANNOTATION, Hashes,
        PACK_CONFIG_HASH_ANNOTATION, combined_hash, content_hash, decide, parse_recorded,
    },
};

const FIELD_MANAGER: &str = "redeploy-controller";
/// How often a paused Deployment with a pending change is looked at again.
const PAUSED_RECHECK: Duration = Duration::from_secs(10);
const HELM_RELEASE_NAME: &str = "meta.helm.sh/release-name";
const HELM_RELEASE_NAMESPACE: &str = "meta.helm.sh/release-namespace";

/// Errors of a workload reconcile.
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

/// Tunables (from flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Wait this long after the first change before rolling out; later changes within it are coalesced.
    pub delay: Duration,
    /// Global rollout rate limit, rollouts per second.
    pub rate: f64,
    /// Rollouts allowed at once before the rate applies.
    pub burst: u32,
    /// Reconciles at once, per workload kind.
    pub concurrency: u16,
}

/// State shared by every reconcile.
pub struct Context {
    client: Client,
    settings: Settings,
    index: Mutex<WatchIndex>,
    /// When a pending change was first seen, per workload (memory only: after a restart the change is
    /// seen again from the record on the workload, and waits one full delay).
    pending: Mutex<HashMap<WorkloadKey, Instant>>,
    /// Hash of each watched object at a resourceVersion; invalidated by the source watch.
    hashes: Mutex<HashMap<SourceKey, (String, String)>>,
    /// Invalid annotation values already reported, so each gets one Event.
    reported_invalid: Mutex<HashMap<WorkloadKey, String>>,
    recorder: Recorder,
    limiter: RateLimiter,
    metrics: RedeployMetrics,
    reconciles: ReconcileMetrics,
    deployments: Store<PartialObjectMeta<Deployment>>,
    statefulsets: Store<PartialObjectMeta<StatefulSet>>,
    daemonsets: Store<PartialObjectMeta<DaemonSet>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A kind of annotated object this controller reconciles.
trait Watcher:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    const KIND: WorkloadKind;
}
impl Watcher for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
}
impl Watcher for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
}
impl Watcher for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
}
impl Watcher for Pack {
    const KIND: WorkloadKind = WorkloadKind::Pack;
}

async fn reconcile<K: Watcher>(
    obj: Arc<PartialObjectMeta<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _timer = ctx.reconciles.start();
    let key = WorkloadKey {
        kind: K::KIND,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    };
    let reference = obj.object_ref(&());
    reconcile_workload(&key, &obj.metadata, &reference, &ctx).await
}

fn error_policy<K: Watcher>(
    _: Arc<PartialObjectMeta<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    warn!(%error, "reconcile failed");
    ctx.reconciles.failure(error.reason());
    Action::requeue(Duration::from_secs(15))
}

async fn reconcile_workload(
    key: &WorkloadKey,
    meta: &ObjectMeta,
    reference: &ObjectReference,
    ctx: &Context,
) -> Result<Action, Error> {
    let annotations = meta.annotations.clone().unwrap_or_default();
    let Some(value) = annotations.get(WATCH_TO_REDEPLOY) else {
        forget(key, ctx);
        return Ok(Action::await_change());
    };
    let targets = match parse_watch_targets(value) {
        Ok(t) => t,
        Err(e) => {
            forget(key, ctx);
            let first_report = lock(&ctx.reported_invalid)
                .insert(key.clone(), value.clone())
                .as_deref()
                != Some(value);
            if first_report {
                ctx.metrics
                    .invalid_annotations
                    .get_or_create(&crate::metrics::KindLabel {
                        kind: key.kind.as_str().into(),
                    })
                    .inc();
                warn!(workload = %key, error = %e, "invalid watch-to-redeploy annotation; not acting on it");
                publish(ctx, reference, EventType::Warning, "InvalidAnnotation", format!(
                    "{e}. Nothing is watched until it is fixed; a valid value looks like: configmap/my-config, secret/my-secret"
                )).await;
            }
            return Ok(Action::await_change());
        }
    };
    lock(&ctx.reported_invalid).remove(key);
    let sources: Vec<SourceKey> = targets
        .iter()
        .map(|t| SourceKey::of(&key.namespace, t))
        .collect();
    {
        let mut index = lock(&ctx.index);
        index.set(key, sources.clone());
        ctx.metrics
            .watched_objects
            .set(index.watched_objects() as i64);
    }

    let mut current = Hashes::new();
    for (target, source) in targets.iter().zip(&sources) {
        current.insert(target.to_string(), source_hash(ctx, target, source).await?);
    }
    let recorded = parse_recorded(annotations.get(HASHES_ANNOTATION).map(String::as_str));
    match decide(recorded.as_ref(), &current) {
        Decision::Nothing => {
            lock(&ctx.pending).remove(key);
            Ok(Action::await_change())
        }
        Decision::Record => {
            lock(&ctx.pending).remove(key);
            record(ctx, key, &current).await?;
            debug!(workload = %key, "recorded baseline of watched objects");
            Ok(Action::await_change())
        }
        Decision::RecordDeleted(deleted) => {
            lock(&ctx.pending).remove(key);
            record(ctx, key, &current).await?;
            publish(ctx, reference, EventType::Normal, "WatchedObjectDeleted", format!(
                "{} deleted; not redeploying (pods that need it would fail to start). Recreating it redeploys.",
                deleted.join(", ")
            )).await;
            Ok(Action::await_change())
        }
        Decision::Rollout(changed) => {
            let delay = annotations
                .get(DELAY_ANNOTATION)
                .and_then(|d| parse_duration(d).ok())
                .unwrap_or(ctx.settings.delay);
            let since = *lock(&ctx.pending)
                .entry(key.clone())
                .or_insert_with(Instant::now);
            let due = since + delay;
            let now = Instant::now();
            if now < due {
                return Ok(Action::requeue(due - now));
            }
            if let Err(wait) = ctx.limiter.try_take() {
                ctx.metrics.redeploy(key.kind.as_str(), "rate_limited");
                return Ok(Action::requeue(wait.max(Duration::from_millis(100))));
            }
            match rollout(ctx, key, &current).await? {
                Rollout::Done(workloads) => {
                    lock(&ctx.pending).remove(key);
                    ctx.metrics.redeploy(key.kind.as_str(), "rolled");
                    ctx.metrics
                        .change_to_patch
                        .observe(since.elapsed().as_secs_f64());
                    info!(workload = %key, changed = ?changed, "redeployed");
                    let what = if key.kind == WorkloadKind::Pack {
                        format!(
                            " ({} workload(s): {})",
                            workloads.len(),
                            workloads.join(", ")
                        )
                    } else {
                        String::new()
                    };
                    publish(
                        ctx,
                        reference,
                        EventType::Normal,
                        "Redeployed",
                        format!("{} changed; rolled out{what}", changed.join(", ")),
                    )
                    .await;
                    Ok(Action::await_change())
                }
                Rollout::Paused => {
                    ctx.metrics.redeploy(key.kind.as_str(), "paused");
                    publish(ctx, reference, EventType::Normal, "RedeployPaused", format!(
                        "{} changed, but the Deployment is paused: it rolls out after `kubectl rollout resume`", changed.join(", ")
                    )).await;
                    Ok(Action::requeue(PAUSED_RECHECK))
                }
            }
        }
    }
}

fn forget(key: &WorkloadKey, ctx: &Context) {
    let mut index = lock(&ctx.index);
    index.remove(key);
    ctx.metrics
        .watched_objects
        .set(index.watched_objects() as i64);
    lock(&ctx.pending).remove(key);
}

async fn publish(
    ctx: &Context,
    reference: &ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    common::events::publish(&ctx.recorder, reference, type_, reason, "Redeploy", &note).await;
}

/// The content hash of a watched object (or `absent`), from the cache when its resourceVersion is
/// unchanged, else read from the API server. Secret data is hashed and dropped at once.
async fn source_hash(
    ctx: &Context,
    target: &WatchTarget,
    source: &SourceKey,
) -> Result<String, Error> {
    if let Some((_, hash)) = lock(&ctx.hashes).get(source) {
        return Ok(hash.clone());
    }
    let (rv, hash) = match target.kind {
        WatchKind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &source.namespace);
            match api.get_opt(&source.name).await? {
                None => (None, ABSENT.to_owned()),
                Some(cm) => {
                    let data = cm.data.unwrap_or_default();
                    let binary = cm.binary_data.unwrap_or_default();
                    let hash = content_hash(
                        data.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
                        binary.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())),
                    );
                    (cm.metadata.resource_version, hash)
                }
            }
        }
        WatchKind::Secret => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &source.namespace);
            match api.get_opt(&source.name).await? {
                None => (None, ABSENT.to_owned()),
                Some(secret) => {
                    let data = secret.data.unwrap_or_default();
                    let hash =
                        content_hash(data.iter().map(|(k, v)| (k.as_str(), v.0.as_slice())), []);
                    (secret.metadata.resource_version, hash)
                }
            }
        }
    };
    if let Some(rv) = rv {
        lock(&ctx.hashes).insert(source.clone(), (rv, hash.clone()));
    }
    Ok(hash)
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn record_patch(current: &Hashes) -> serde_json::Value {
    let hashes = serde_json::to_string(current).unwrap_or_default();
    json!({ "metadata": { "annotations": { HASHES_ANNOTATION: hashes } } })
}

/// Writes the hashes record on the workload's metadata (merge patch: touches only our key).
async fn record(ctx: &Context, key: &WorkloadKey, current: &Hashes) -> Result<(), Error> {
    let patch = record_patch(current);
    patch_workload(ctx, key, &patch).await
}

async fn patch_workload(
    ctx: &Context,
    key: &WorkloadKey,
    patch: &serde_json::Value,
) -> Result<(), Error> {
    let (c, ns, name, pp) = (
        ctx.client.clone(),
        key.namespace.as_str(),
        key.name.as_str(),
        patch_params(),
    );
    let p = Patch::Merge(patch);
    match key.kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(c, ns)
            .patch(name, &pp, &p)
            .await
            .map(drop)?,
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(c, ns)
            .patch(name, &pp, &p)
            .await
            .map(drop)?,
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(c, ns)
            .patch(name, &pp, &p)
            .await
            .map(drop)?,
        WorkloadKind::Pack => Api::<Pack>::namespaced(c, ns)
            .patch(name, &pp, &p)
            .await
            .map(drop)?,
    }
    Ok(())
}

enum Rollout {
    Done(Vec<String>),
    Paused,
}

/// Rolls the workload (or, for a Pack, every workload of its Helm release) by setting the pod-template
/// config hash, and records the new hashes, in one patch per object.
async fn rollout(ctx: &Context, key: &WorkloadKey, current: &Hashes) -> Result<Rollout, Error> {
    let config_hash = combined_hash(current);
    if key.kind != WorkloadKind::Pack {
        if key.kind == WorkloadKind::Deployment
            && deployment_paused(ctx, &key.namespace, &key.name).await?
        {
            return Ok(Rollout::Paused);
        }
        let mut patch = record_patch(current);
        patch["spec"] = json!({ "template": { "metadata": { "annotations": { CONFIG_HASH_ANNOTATION: config_hash } } } });
        patch_workload(ctx, key, &patch).await?;
        return Ok(Rollout::Done(vec![key.name.clone()]));
    }
    // A Pack: its release's workloads, found by Helm's ownership annotations.
    let template = json!({ "spec": { "template": { "metadata": { "annotations": { PACK_CONFIG_HASH_ANNOTATION: config_hash } } } } });
    let mut rolled = vec![];
    for (kind, name) in release_workloads(ctx, &key.namespace, &key.name) {
        let child = WorkloadKey {
            kind,
            namespace: key.namespace.clone(),
            name: name.clone(),
        };
        if kind == WorkloadKind::Deployment && deployment_paused(ctx, &key.namespace, &name).await?
        {
            info!(workload = %child, "paused; not redeployed with its Pack");
            continue;
        }
        patch_workload(ctx, &child, &template).await?;
        rolled.push(format!("{}/{name}", kind.as_str()));
    }
    // Recorded after the children: a crash in between repeats the same (idempotent) template patches.
    record(ctx, key, current).await?;
    Ok(Rollout::Done(rolled))
}

fn release_workloads(ctx: &Context, namespace: &str, release: &str) -> Vec<(WorkloadKind, String)> {
    fn of<K: Resource<DynamicType = ()> + Clone>(
        store: &Store<PartialObjectMeta<K>>,
        kind: WorkloadKind,
        namespace: &str,
        release: &str,
        out: &mut Vec<(WorkloadKind, String)>,
    ) where
        PartialObjectMeta<K>: Resource<DynamicType = ()> + Clone,
    {
        for obj in store.state() {
            let a = obj.annotations();
            if obj.namespace().as_deref() == Some(namespace)
                && a.get(HELM_RELEASE_NAME).map(String::as_str) == Some(release)
                && a.get(HELM_RELEASE_NAMESPACE).map(String::as_str) == Some(namespace)
            {
                out.push((kind, obj.name_any()));
            }
        }
    }
    let mut out = vec![];
    of(
        &ctx.deployments,
        WorkloadKind::Deployment,
        namespace,
        release,
        &mut out,
    );
    of(
        &ctx.statefulsets,
        WorkloadKind::StatefulSet,
        namespace,
        release,
        &mut out,
    );
    of(
        &ctx.daemonsets,
        WorkloadKind::DaemonSet,
        namespace,
        release,
        &mut out,
    );
    out.sort();
    out
}

async fn deployment_paused(ctx: &Context, namespace: &str, name: &str) -> Result<bool, Error> {
    let d = Api::<Deployment>::namespaced(ctx.client.clone(), namespace)
        .get(name)
        .await?;
    Ok(d.spec.and_then(|s| s.paused).unwrap_or(false))
}

fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<DynamicType = ()>,
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A controller over the metadata of one workload kind. What it caches is trimmed to what reconciles
/// read: managedFields and kubectl's last-applied copy of the whole object are dropped before they
/// reach the store (they are most of a workload's metadata).
fn workload_controller<K>(
    client: &Client,
    namespace: &Option<String>,
    config: kube::runtime::controller::Config,
) -> Controller<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = kube::runtime::reflector::store();
    let stream = watcher(
        scoped::<PartialObjectMeta<K>>(client, namespace),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|obj: &mut PartialObjectMeta<K>| {
        obj.metadata.managed_fields = None;
        if let Some(a) = obj.metadata.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    })
    .reflect(writer)
    .applied_objects();
    Controller::for_stream(stream, reader).with_config(config)
}

/// Watches ConfigMaps or Secrets (metadata only, nothing cached) and wakes the workloads that watch one
/// when it changes, is created or is deleted.
async fn watch_sources<S>(
    api: Api<PartialObjectMeta<S>>,
    kind: WatchKind,
    ctx: Arc<Context>,
    wake: Wakers,
) where
    S: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    PartialObjectMeta<S>:
        Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let mut events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let (obj, deleted) = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
            Ok(watcher::Event::Delete(o)) => (o, true),
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "source watch error (retrying)");
                continue;
            }
        };
        let source = SourceKey {
            kind,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        };
        let watchers = lock(&ctx.index).watchers_of(&source);
        if watchers.is_empty() {
            continue;
        }
        {
            let mut hashes = lock(&ctx.hashes);
            let fresh = !deleted
                && hashes.get(&source).map(|(rv, _)| Some(rv))
                    == Some(obj.resource_version().as_ref());
            if fresh {
                continue; // our own earlier read: nothing new
            }
            hashes.remove(&source);
        }
        for w in watchers {
            wake.wake(&w);
        }
    }
}

/// Senders that make the per-kind controllers reconcile a workload now.
#[derive(Clone)]
struct Wakers {
    deployment: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<Deployment>>>,
    statefulset: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<StatefulSet>>>,
    daemonset: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<DaemonSet>>>,
    pack: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<Pack>>>,
}

impl Wakers {
    fn wake(&self, w: &WorkloadKey) {
        let (ns, name) = (w.namespace.as_str(), w.name.as_str());
        let _ = match w.kind {
            WorkloadKind::Deployment => self
                .deployment
                .unbounded_send(ObjectRef::new(name).within(ns))
                .is_ok(),
            WorkloadKind::StatefulSet => self
                .statefulset
                .unbounded_send(ObjectRef::new(name).within(ns))
                .is_ok(),
            WorkloadKind::DaemonSet => self
                .daemonset
                .unbounded_send(ObjectRef::new(name).within(ns))
                .is_ok(),
            WorkloadKind::Pack => self
                .pack
                .unbounded_send(ObjectRef::new(name).within(ns))
                .is_ok(),
        };
    }
}

/// How often a controller started without the Pack CRD looks for it again.
const PACK_API_RECHECK: Duration = Duration::from_secs(60);

/// Whether the API server serves Packs (`k8s.kubit.ir/v1alpha1`, resource `packs`). An error other
/// than "not found" counts as served: the watch then retries as any watch does.
async fn pack_api_served(client: &Client) -> bool {
    let group_version = format!("{}/{}", common::crd::GROUP, common::crd::VERSION);
    match client.list_api_group_resources(&group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == "packs"),
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(e) => {
            warn!(error = %e, "cannot tell whether the Pack API is installed; watching Packs");
            true
        }
    }
}

/// Runs the redeploy controller until `leading.stop` is cancelled.
pub async fn run(
    leading: Leading,
    namespace: Option<String>,
    settings: Settings,
    metrics: RedeployMetrics,
    reconciles: ReconcileMetrics,
) {
    let client = leading.client.clone();
    let cc = kube::runtime::controller::Config::default().concurrency(settings.concurrency);
    let deployments = workload_controller::<Deployment>(&client, &namespace, cc.clone());
    let statefulsets = workload_controller::<StatefulSet>(&client, &namespace, cc.clone());
    let daemonsets = workload_controller::<DaemonSet>(&client, &namespace, cc.clone());
    // Packs are watched only where their CRD is installed (the chart can install this controller
    // alone): a watch of a missing API would never sync, and the controller would never be ready.
    let packs = if pack_api_served(&client).await {
        Some(workload_controller::<Pack>(&client, &namespace, cc.clone()))
    } else {
        info!(
            "the Pack API (packs.k8s.kubit.ir/v1alpha1) is not installed: Deployments, StatefulSets and \
             DaemonSets are watched; Packs will be once the CRD appears (checked every {PACK_API_RECHECK:?})"
        );
        None
    };
    // Ready once every workload cache holds a complete listing.
    let stores = (
        deployments.store(),
        statefulsets.store(),
        daemonsets.store(),
        packs.as_ref().map(Controller::store),
    );
    common::runtime::report_sync_when(
        async move {
            use common::runtime::store_synced;
            store_synced(&stores.0).await
                && store_synced(&stores.1).await
                && store_synced(&stores.2).await
                && match &stores.3 {
                    Some(packs) => store_synced(packs).await,
                    None => true,
                }
        },
        leading.health.clone(),
    );

    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "redeploy-controller".into());
    let ctx = Arc::new(Context {
        client: client.clone(),
        limiter: RateLimiter::new(settings.rate, settings.burst),
        settings,
        index: Mutex::default(),
        pending: Mutex::default(),
        hashes: Mutex::default(),
        reported_invalid: Mutex::default(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "redeploy-controller".into(),
                instance: Some(identity),
            },
        ),
        metrics,
        reconciles,
        deployments: deployments.store(),
        statefulsets: statefulsets.store(),
        daemonsets: daemonsets.store(),
    });

    let (dtx, drx) = mpsc::unbounded();
    let (stx, srx) = mpsc::unbounded();
    let (xtx, xrx) = mpsc::unbounded();
    let (ptx, prx) = mpsc::unbounded();
    let wakers = Wakers {
        deployment: dtx,
        statefulset: stx,
        daemonset: xtx,
        pack: ptx,
    };
    let sources = futures::future::join(
        watch_sources(
            scoped::<PartialObjectMeta<ConfigMap>>(&client, &namespace),
            WatchKind::ConfigMap,
            ctx.clone(),
            wakers.clone(),
        ),
        watch_sources(
            scoped::<PartialObjectMeta<Secret>>(&client, &namespace),
            WatchKind::Secret,
            ctx.clone(),
            wakers,
        ),
    );

    let stop = leading.stop.clone();
    let drain =
        |s: futures::stream::BoxStream<'static, ()>| s.for_each(|()| std::future::ready(()));
    let controllers = futures::future::join4(
        drain(
            deployments
                .reconcile_on(drx)
                .graceful_shutdown_on(stop.clone().cancelled_owned())
                .run(
                    reconcile::<Deployment>,
                    error_policy::<Deployment>,
                    ctx.clone(),
                )
                .map(|_| ())
                .boxed(),
        ),
        drain(
            statefulsets
                .reconcile_on(srx)
                .graceful_shutdown_on(stop.clone().cancelled_owned())
                .run(
                    reconcile::<StatefulSet>,
                    error_policy::<StatefulSet>,
                    ctx.clone(),
                )
                .map(|_| ())
                .boxed(),
        ),
        drain(
            daemonsets
                .reconcile_on(xrx)
                .graceful_shutdown_on(stop.clone().cancelled_owned())
                .run(
                    reconcile::<DaemonSet>,
                    error_policy::<DaemonSet>,
                    ctx.clone(),
                )
                .map(|_| ())
                .boxed(),
        ),
        {
            let (client, stop, ctx) = (client.clone(), stop.clone(), ctx.clone());
            async move {
                let packs = match packs {
                    Some(packs) => packs,
                    None => loop {
                        tokio::select! {
                            () = tokio::time::sleep(PACK_API_RECHECK) => {}
                            () = stop.cancelled() => return,
                        }
                        if pack_api_served(&client).await {
                            info!("the Pack API is installed now: watching Packs");
                            break workload_controller::<Pack>(&client, &namespace, cc);
                        }
                    },
                };
                packs
                    .reconcile_on(prx)
                    .graceful_shutdown_on(stop.cancelled_owned())
                    .run(reconcile::<Pack>, error_policy::<Pack>, ctx)
                    .for_each(|_| std::future::ready(()))
                    .await;
            }
        },
    );
    tokio::select! {
        _ = controllers => {}
        _ = sources => {}
        _ = stop.cancelled() => {}
    }
}
