//! What one workload reconcile does: read the workload's annotation and the hashes of what it watches,
//! decide ([`crate::state::decide`], [`crate::state::plan`], pure), execute the plan (record the hashes,
//! roll out) into an [`Outcome`], and report it ([`crate::outcome::report`]: Event, metrics, requeue).
//! What wakes a reconcile is in [`crate::controller`].

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Debug,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{
    annotation::WatchKind,
    crd::Pack,
    events::Recorder,
    metrics::ReconcileMetrics,
    sync::{LastWritten, lock},
};
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        batch::v1::CronJob,
        core::v1::{ConfigMap, Namespace, ObjectReference, PodSpec, Secret},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::PartialObjectMeta,
    runtime::{controller::Action, events::EventType, reflector::Store},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::{
    controller::Settings,
    index::{SourceKey, WatchIndex, WorkloadKey, WorkloadKind},
    limiter::RateLimiter,
    metrics::RedeployMetrics,
    outcome::{Outcome, report},
    podrefs::{Watched, union},
    rollout_crd::Rollout as ArgoRollout,
    state::{
        ABSENT, CONFIG_HASH_ANNOTATION, HASHES_ANNOTATION, Hashes, InvalidAnnotation,
        PACK_CONFIG_HASH_ANNOTATION, Plan, WatchRequest, combined_hash, content_hash, decide,
        parse_recorded, plan, watch_request,
    },
};

const FIELD_MANAGER: &str = "redeploy-controller";
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

/// Per watched object: the resourceVersion read, and the hash per set of keys used at it.
pub(crate) type HashCache = HashMap<SourceKey, (String, BTreeMap<String, String>)>;

/// State shared by every reconcile.
pub struct Context {
    client: Client,
    settings: Settings,
    /// Which workload watches what; read by the source watches to know whom to wake.
    pub(crate) index: Mutex<WatchIndex>,
    /// When a pending change was first seen, per workload (memory only: after a restart the change is
    /// seen again from the record on the workload, and waits one full delay).
    pending: Mutex<HashMap<WorkloadKey, Instant>>,
    /// Hashes of each watched object at a resourceVersion, per set of keys used (`""`: every key);
    /// invalidated by the source watches.
    pub(crate) hashes: Mutex<HashCache>,
    /// The record of hashes this process last wrote (or found stored) per workload: a cached workload
    /// with another record lags behind that write, and is read from the API before a decision.
    pub(crate) written: LastWritten,
    /// Invalid annotation values already reported, so each gets one Event.
    reported_invalid: Mutex<HashMap<WorkloadKey, String>>,
    recorder: Recorder,
    limiter: RateLimiter,
    metrics: RedeployMetrics,
    reconciles: ReconcileMetrics,
    stores: WorkloadStores,
}

/// The caches of workload metadata, where a Pack's rollout finds the workloads of its Helm release.
#[derive(Clone)]
pub struct WorkloadStores {
    pub deployments: Store<PartialObjectMeta<Deployment>>,
    pub statefulsets: Store<PartialObjectMeta<StatefulSet>>,
    pub daemonsets: Store<PartialObjectMeta<DaemonSet>>,
    pub cronjobs: Store<PartialObjectMeta<CronJob>>,
    /// Namespace metadata, only with `--namespace-selector`.
    pub namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        recorder: Recorder,
        metrics: RedeployMetrics,
        reconciles: ReconcileMetrics,
        stores: WorkloadStores,
    ) -> Self {
        Context {
            client,
            limiter: RateLimiter::new(settings.rate, settings.burst),
            settings,
            index: Mutex::default(),
            pending: Mutex::default(),
            hashes: Mutex::default(),
            written: LastWritten::default(),
            reported_invalid: Mutex::default(),
            recorder,
            metrics,
            reconciles,
            stores,
        }
    }
}

impl Context {
    /// Whether workloads in `namespace` are acted on ([`crate::scope`]).
    pub(crate) fn admits(&self, namespace: &str) -> bool {
        let ns = self
            .stores
            .namespaces
            .as_ref()
            .and_then(|s| s.get(&kube::runtime::reflector::ObjectRef::new(namespace)));
        let labels = ns
            .as_ref()
            .map(|n| n.metadata.labels.clone().unwrap_or_default());
        self.settings.scope.admits(namespace, labels.as_ref())
    }

    /// The cached workloads (not Packs) of `namespace`.
    pub(crate) fn workloads_in(&self, namespace: &str) -> Vec<WorkloadKey> {
        let kinds = [
            WorkloadKind::Deployment,
            WorkloadKind::StatefulSet,
            WorkloadKind::DaemonSet,
            WorkloadKind::CronJob,
        ];
        kinds
            .into_iter()
            .flat_map(|kind| {
                names_in(&self.stores, kind, namespace)
                    .into_iter()
                    .map(move |name| WorkloadKey {
                        kind,
                        namespace: namespace.to_owned(),
                        name,
                    })
            })
            .collect()
    }
}

/// Names of the cached workloads of `kind` in `namespace`.
fn names_in(stores: &WorkloadStores, kind: WorkloadKind, namespace: &str) -> Vec<String> {
    fn of<K>(store: &Store<PartialObjectMeta<K>>, namespace: &str) -> Vec<String>
    where
        K: Resource<DynamicType = ()> + Clone,
        PartialObjectMeta<K>: Resource<DynamicType = ()> + Clone,
    {
        store
            .state()
            .iter()
            .filter(|o| o.namespace().as_deref() == Some(namespace))
            .map(|o| o.name_any())
            .collect()
    }
    match kind {
        WorkloadKind::Deployment => of(&stores.deployments, namespace),
        WorkloadKind::StatefulSet => of(&stores.statefulsets, namespace),
        WorkloadKind::DaemonSet => of(&stores.daemonsets, namespace),
        WorkloadKind::CronJob => of(&stores.cronjobs, namespace),
        WorkloadKind::Rollout | WorkloadKind::Pack => vec![],
    }
}

/// A kind of annotated object this controller reconciles.
pub(crate) trait Watcher:
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
impl Watcher for CronJob {
    const KIND: WorkloadKind = WorkloadKind::CronJob;
}
impl Watcher for ArgoRollout {
    const KIND: WorkloadKind = WorkloadKind::Rollout;
}
impl Watcher for Pack {
    const KIND: WorkloadKind = WorkloadKind::Pack;
}

pub(crate) async fn reconcile<K: Watcher<Scope = kube::core::NamespaceResourceScope>>(
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
    let stored;
    let meta = if ctx
        .written
        .lags(&key.to_string(), &recorded_in(&obj.metadata))
    {
        // The cache lags behind this process's last record on the workload (its watch event has not
        // arrived yet): deciding on the older record would take a recorded deletion for a first
        // sight, or a recorded change for a new one. One GET, only then.
        debug!(workload = %key, "the cached record of hashes is not the one last written; reading the workload");
        let api = Api::<K>::namespaced(ctx.client.clone(), &key.namespace);
        let Some(found) = api.get_metadata_opt(&key.name).await? else {
            return Ok(Action::await_change());
        };
        ctx.written
            .record(&key.to_string(), &recorded_in(&found.metadata));
        stored = found.metadata;
        &stored
    } else {
        &obj.metadata
    };
    reconcile_workload(&key, meta, &reference, &ctx).await
}

/// The record of hashes on a workload's metadata, as this process writes it.
fn recorded_in(meta: &ObjectMeta) -> Option<&String> {
    meta.annotations.as_ref()?.get(HASHES_ANNOTATION)
}

pub(crate) fn error_policy<K: Watcher>(
    _: Arc<PartialObjectMeta<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    warn!(%error, "reconcile failed");
    ctx.reconciles.failure(error.reason());
    Action::requeue(Duration::from_secs(15))
}

/// Decide → execute → report, for one workload.
async fn reconcile_workload(
    key: &WorkloadKey,
    meta: &ObjectMeta,
    reference: &ObjectReference,
    ctx: &Context,
) -> Result<Action, Error> {
    if !ctx.admits(&key.namespace) {
        forget(key, ctx);
        return Ok(Action::await_change());
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let Some(request) = read_request(ctx, key, &annotations, reference).await else {
        return Ok(Action::await_change());
    };
    let watched = watched_objects(ctx, key, &request).await?;
    let sources = track(ctx, key, &watched);
    let current = current_hashes(ctx, &watched, &sources).await?;
    let recorded = parse_recorded(annotations.get(HASHES_ANNOTATION).map(String::as_str));
    let pending_since = lock(&ctx.pending).get(key).copied();
    let plan = plan(
        decide(recorded.as_ref(), &current),
        pending_since,
        request.delay,
        Instant::now(),
    );
    let outcome = execute(ctx, key, plan, &current).await?;
    Ok(publish_outcome(ctx, key, reference, outcome).await)
}

/// What the workload's annotations ask for, or `None` (the workload forgotten) when they ask for
/// nothing or one is invalid; an invalid value is reported once (a Warning Event and a metric).
async fn read_request(
    ctx: &Context,
    key: &WorkloadKey,
    annotations: &BTreeMap<String, String>,
    reference: &ObjectReference,
) -> Option<WatchRequest> {
    let InvalidAnnotation { seen, message } = match watch_request(annotations, ctx.settings.delay) {
        Ok(request) => {
            lock(&ctx.reported_invalid).remove(key);
            if request.is_none() {
                forget(key, ctx);
            }
            return request;
        }
        Err(e) => e,
    };
    forget(key, ctx);
    let first_report = lock(&ctx.reported_invalid)
        .insert(key.clone(), seen.clone())
        .as_deref()
        != Some(seen.as_str());
    if first_report {
        ctx.metrics
            .invalid_annotations
            .get_or_create(&crate::metrics::KindLabel {
                kind: key.kind.as_str().into(),
            })
            .inc();
        warn!(workload = %key, error = %message, "invalid redeploy annotation; not acting on it");
        publish(
            ctx,
            reference,
            EventType::Warning,
            "InvalidAnnotation",
            message,
        )
        .await;
    }
    None
}

/// The explicit list, plus (auto discovery) what the pod templates reference: the workload's own, or
/// those of every workload of a Pack's release. Templates are read when needed, never cached, so auto
/// mode keeps no more in memory than the explicit list.
async fn watched_objects(
    ctx: &Context,
    key: &WorkloadKey,
    request: &WatchRequest,
) -> Result<Vec<Watched>, Error> {
    let mut specs = vec![];
    if request.auto {
        let workloads = match key.kind {
            WorkloadKind::Pack => release_workloads(ctx, &key.namespace, &key.name),
            kind => vec![(kind, key.name.clone())],
        };
        for (kind, name) in workloads {
            specs.extend(pod_spec(ctx, kind, &key.namespace, &name).await?);
        }
    }
    Ok(union(&request.explicit, &specs))
}

/// The pod spec of a workload's template (`None` when it is gone).
async fn pod_spec(
    ctx: &Context,
    kind: WorkloadKind,
    namespace: &str,
    name: &str,
) -> Result<Option<PodSpec>, Error> {
    let c = ctx.client.clone();
    Ok(match kind {
        WorkloadKind::Deployment => Api::<Deployment>::namespaced(c, namespace)
            .get_opt(name)
            .await?
            .and_then(|w| w.spec?.template.spec),
        WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(c, namespace)
            .get_opt(name)
            .await?
            .and_then(|w| w.spec?.template.spec),
        WorkloadKind::DaemonSet => Api::<DaemonSet>::namespaced(c, namespace)
            .get_opt(name)
            .await?
            .and_then(|w| w.spec?.template.spec),
        WorkloadKind::CronJob => Api::<CronJob>::namespaced(c, namespace)
            .get_opt(name)
            .await?
            .and_then(|w| w.spec.job_template.spec?.template.spec),
        WorkloadKind::Rollout => Api::<ArgoRollout>::namespaced(c, namespace)
            .get_opt(name)
            .await?
            .and_then(|w| w.spec.template?.spec),
        WorkloadKind::Pack => None,
    })
}

/// Records in the index that `key` watches `watched` (so their changes wake it); their source keys.
fn track(ctx: &Context, key: &WorkloadKey, watched: &[Watched]) -> Vec<SourceKey> {
    let sources: Vec<SourceKey> = watched
        .iter()
        .map(|w| SourceKey::of(&key.namespace, &w.target))
        .collect();
    let mut index = lock(&ctx.index);
    index.set(key, sources.clone());
    ctx.metrics
        .watched_objects
        .set(index.watched_objects() as i64);
    sources
}

async fn current_hashes(
    ctx: &Context,
    watched: &[Watched],
    sources: &[SourceKey],
) -> Result<Hashes, Error> {
    let mut current = Hashes::new();
    for (w, source) in watched.iter().zip(sources) {
        current.insert(w.to_string(), source_hash(ctx, w, source).await?);
    }
    Ok(current)
}

/// Carries out `plan`: records hashes, rolls out, keeps the pending change's first sight.
async fn execute(
    ctx: &Context,
    key: &WorkloadKey,
    plan: Plan,
    current: &Hashes,
) -> Result<Outcome, Error> {
    match plan {
        Plan::Nothing => {
            lock(&ctx.pending).remove(key);
            Ok(Outcome::Unchanged)
        }
        Plan::Record => {
            lock(&ctx.pending).remove(key);
            record(ctx, key, current).await?;
            Ok(Outcome::Recorded)
        }
        Plan::RecordDeleted(deleted) => {
            lock(&ctx.pending).remove(key);
            record(ctx, key, current).await?;
            Ok(Outcome::RecordedDeleted(deleted))
        }
        Plan::Wait { since, remaining } => {
            lock(&ctx.pending).insert(key.clone(), since);
            Ok(Outcome::Waiting(remaining))
        }
        Plan::Rollout { since, changed } => {
            lock(&ctx.pending).insert(key.clone(), since);
            if let Err(wait) = ctx.limiter.try_take() {
                return Ok(Outcome::RateLimited(wait));
            }
            match rollout(ctx, key, current).await? {
                Rollout::Done(workloads) => {
                    lock(&ctx.pending).remove(key);
                    Ok(Outcome::Rolled {
                        changed,
                        workloads,
                        since,
                    })
                }
                Rollout::Paused => Ok(Outcome::Paused { changed }),
            }
        }
    }
}

/// Reports `outcome` (metrics, log, Event on the workload) and says when to look again.
async fn publish_outcome(
    ctx: &Context,
    key: &WorkloadKey,
    reference: &ObjectReference,
    outcome: Outcome,
) -> Action {
    let report = report(key.kind, &outcome);
    if let Some(result) = report.result {
        ctx.metrics.redeploy(key.kind.as_str(), result);
    }
    match &outcome {
        Outcome::Recorded => debug!(workload = %key, "recorded baseline of watched objects"),
        Outcome::Rolled { changed, since, .. } => {
            ctx.metrics
                .change_to_patch
                .observe(since.elapsed().as_secs_f64());
            info!(workload = %key, changed = ?changed, "redeployed");
        }
        _ => {}
    }
    if let Some(event) = report.event {
        publish(ctx, reference, event.type_, event.reason, event.note).await;
    }
    report.action
}

fn forget(key: &WorkloadKey, ctx: &Context) {
    ctx.written.forget(&key.to_string());
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

/// The content hash of a watched object (or `absent`) over the keys it is watched for, from the cache
/// when its resourceVersion is unchanged, else read from the API server. Secret data is hashed and
/// dropped at once.
async fn source_hash(
    ctx: &Context,
    watched: &Watched,
    source: &SourceKey,
) -> Result<String, Error> {
    let selection = watched.keys.as_ref().map(|k| {
        let k: Vec<&str> = k.iter().map(String::as_str).collect();
        k.join(",")
    });
    let selection = selection.unwrap_or_default();
    if let Some(hash) = lock(&ctx.hashes)
        .get(source)
        .and_then(|(_, by_keys)| by_keys.get(&selection))
    {
        return Ok(hash.clone());
    }
    let used = |key: &str| watched.keys.as_ref().is_none_or(|keys| keys.contains(key));
    let (rv, hash) = match watched.target.kind {
        WatchKind::ConfigMap => {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &source.namespace);
            match api.get_opt(&source.name).await? {
                None => (None, ABSENT.to_owned()),
                Some(cm) => {
                    let data = cm.data.unwrap_or_default();
                    let binary = cm.binary_data.unwrap_or_default();
                    let hash = content_hash(
                        data.iter()
                            .filter(|(k, _)| used(k))
                            .map(|(k, v)| (k.as_str(), v.as_bytes())),
                        binary
                            .iter()
                            .filter(|(k, _)| used(k))
                            .map(|(k, v)| (k.as_str(), v.0.as_slice())),
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
                    let hash = content_hash(
                        data.iter()
                            .filter(|(k, _)| used(k))
                            .map(|(k, v)| (k.as_str(), v.0.as_slice())),
                        [],
                    );
                    (secret.metadata.resource_version, hash)
                }
            }
        }
    };
    if let Some(rv) = rv {
        let mut hashes = lock(&ctx.hashes);
        let entry = hashes
            .entry(source.clone())
            .or_insert_with(|| (rv.clone(), BTreeMap::new()));
        if entry.0 != rv {
            *entry = (rv, BTreeMap::new());
        }
        entry.1.insert(selection, hash.clone());
    }
    Ok(hash)
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

fn record_value(current: &Hashes) -> String {
    serde_json::to_string(current).unwrap_or_default()
}

fn record_patch(current: &Hashes) -> serde_json::Value {
    json!({ "metadata": { "annotations": { HASHES_ANNOTATION: record_value(current) } } })
}

/// Writes the hashes record on the workload's metadata (merge patch: touches only our key).
async fn record(ctx: &Context, key: &WorkloadKey, current: &Hashes) -> Result<(), Error> {
    let patch = record_patch(current);
    patch_workload(ctx, key, &patch).await?;
    recorded(ctx, key, current);
    Ok(())
}

/// Notes the record this process just wrote on the workload (see [`Context::written`]).
fn recorded(ctx: &Context, key: &WorkloadKey, current: &Hashes) {
    ctx.written
        .record(&key.to_string(), &Some(&record_value(current)));
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
        WorkloadKind::CronJob => Api::<CronJob>::namespaced(c, ns)
            .patch(name, &pp, &p)
            .await
            .map(drop)?,
        WorkloadKind::Rollout => Api::<ArgoRollout>::namespaced(c, ns)
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
        patch["spec"] = template_patch(key.kind, CONFIG_HASH_ANNOTATION, &config_hash);
        patch_workload(ctx, key, &patch).await?;
        recorded(ctx, key, current);
        return Ok(Rollout::Done(vec![key.name.clone()]));
    }
    // A Pack: its release's workloads, found by Helm's ownership annotations.
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
        let patch =
            json!({ "spec": template_patch(kind, PACK_CONFIG_HASH_ANNOTATION, &config_hash) });
        patch_workload(ctx, &child, &patch).await?;
        rolled.push(format!("{}/{name}", kind.as_str()));
    }
    // Recorded after the children: a crash in between repeats the same (idempotent) template patches.
    record(ctx, key, current).await?;
    Ok(Rollout::Done(rolled))
}

/// The `spec` part of a rollout: the pod template's annotation; a CronJob's is its Jobs' template, so
/// the next Job runs with the new configuration and running Jobs are left alone.
fn template_patch(kind: WorkloadKind, annotation: &str, config_hash: &str) -> serde_json::Value {
    let template = json!({ "metadata": { "annotations": { annotation: config_hash } } });
    match kind {
        WorkloadKind::CronJob => json!({ "jobTemplate": { "spec": { "template": template } } }),
        _ => json!({ "template": template }),
    }
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
        &ctx.stores.deployments,
        WorkloadKind::Deployment,
        namespace,
        release,
        &mut out,
    );
    of(
        &ctx.stores.statefulsets,
        WorkloadKind::StatefulSet,
        namespace,
        release,
        &mut out,
    );
    of(
        &ctx.stores.daemonsets,
        WorkloadKind::DaemonSet,
        namespace,
        release,
        &mut out,
    );
    of(
        &ctx.stores.cronjobs,
        WorkloadKind::CronJob,
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

/// The mocked-API tier: the exact requests one reconcile sends, answered as the API server would.
#[cfg(test)]
mod tests {
    use super::*;
    use common::{
        annotation::WATCH_TO_REDEPLOY,
        testing::{ApiRequest, ApiServer},
    };
    use kube::{
        core::PartialObjectMetaExt,
        runtime::{events::Reporter, reflector, watcher},
    };
    use serde_json::Value;

    const CONFIGMAP: &str = "/api/v1/namespaces/ns/configmaps/app";
    const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/ns/deployments/web";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";

    fn context(client: Client, stores: WorkloadStores) -> Arc<Context> {
        let mut registry = prometheus_client::registry::Registry::default();
        let settings = Settings {
            delay: Duration::ZERO,
            rate: 2.0,
            burst: 20,
            concurrency: 1,
            scope: Default::default(),
        };
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "redeploy-controller".into(),
                instance: None,
            },
        );
        Arc::new(Context::new(
            client,
            settings,
            recorder,
            RedeployMetrics::register(&mut registry),
            ReconcileMetrics::register(&mut registry, "redeploy"),
            stores,
        ))
    }

    fn empty_stores() -> WorkloadStores {
        WorkloadStores {
            deployments: reflector::store().0,
            statefulsets: reflector::store().0,
            daemonsets: reflector::store().0,
            cronjobs: reflector::store().0,
            namespaces: None,
        }
    }

    /// Metadata of a workload watching `configmap/app`, with `recorded` as its record (if any).
    fn watching(name: &str, recorded: Option<&Hashes>) -> ObjectMeta {
        let mut annotations =
            BTreeMap::from([(WATCH_TO_REDEPLOY.to_owned(), "configmap/app".to_owned())]);
        if let Some(recorded) = recorded {
            annotations.insert(
                HASHES_ANNOTATION.to_owned(),
                serde_json::to_string(recorded).unwrap(),
            );
        }
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("{name}-uid")),
            annotations: Some(annotations),
            ..Default::default()
        }
    }

    /// The record of `configmap/app` holding `hash`.
    fn record_of(hash: &str) -> Hashes {
        Hashes::from([("configmap/app".to_owned(), hash.to_owned())])
    }

    /// The hash of the ConfigMap [`answer_configmap`] serves.
    fn new_hash() -> String {
        content_hash([("key", b"new".as_slice())], [])
    }

    fn answer_configmap(request: ApiRequest) {
        request.assert("GET", CONFIGMAP);
        request.respond_json(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "app", "namespace": "ns", "resourceVersion": "7"},
            "data": {"key": "new"},
        }));
    }

    fn answer_deployment(request: ApiRequest, paused: bool) {
        request.assert("GET", DEPLOYMENT);
        request.respond_json(deployment_json(paused));
    }

    fn deployment_json(paused: bool) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"paused": paused, "selector": {}, "template": {}},
        })
    }

    /// Asserts the request publishes an Event of `reason` with `note` on Deployment `web`, and accepts it.
    fn answer_event(request: ApiRequest, reason: &str, note: &str) {
        request.assert("POST", EVENTS);
        assert_eq!(request.body["reason"], reason, "{}", request.body);
        assert_eq!(request.body["note"], note, "{}", request.body);
        assert_eq!(request.body["regarding"]["kind"], "Deployment");
        assert_eq!(request.body["regarding"]["name"], "web");
        request.echo();
    }

    fn redeploys(ctx: &Context, result: &str) -> u64 {
        ctx.metrics
            .redeploys
            .get_or_create(&crate::metrics::KindResult {
                kind: "Deployment".into(),
                result: result.into(),
            })
            .get()
    }

    async fn reconcile_deployment(meta: ObjectMeta, ctx: &Arc<Context>) -> Action {
        let obj = Arc::new(meta.into_response_partial::<Deployment>());
        reconcile::<Deployment>(obj, ctx.clone()).await.unwrap()
    }

    #[tokio::test]
    async fn a_changed_configmap_of_a_paused_deployment_is_not_rolled_out_and_looked_at_again() {
        let (client, mut server) = ApiServer::new();
        let ctx = context(client, empty_stores());
        let server = tokio::spawn(async move {
            answer_configmap(server.next().await);
            // Paused: no PATCH of the pod template, nor of the record.
            answer_deployment(server.next().await, true);
            answer_event(
                server.next().await,
                "RedeployPaused",
                "configmap/app changed, but the Deployment is paused: it rolls out after `kubectl rollout resume`",
            );
            server
        });
        let meta = watching("web", Some(&record_of("sha256:old")));
        let action = reconcile_deployment(meta, &ctx).await;
        server.await.unwrap().done();
        assert_eq!(action, Action::requeue(crate::outcome::PAUSED_RECHECK));
        assert_eq!(redeploys(&ctx, "paused"), 1);
        assert!(
            lock(&ctx.pending).contains_key(&WorkloadKey {
                kind: WorkloadKind::Deployment,
                namespace: "ns".into(),
                name: "web".into(),
            }),
            "the change stays pending until the Deployment is resumed"
        );
    }

    #[tokio::test]
    async fn a_changed_configmap_rolls_out_the_deployment_in_one_patch_with_the_record() {
        let (client, mut server) = ApiServer::new();
        let ctx = context(client, empty_stores());
        let current = record_of(&new_hash());
        let expected_patch = json!({
            "metadata": {"annotations": {HASHES_ANNOTATION: serde_json::to_string(&current).unwrap()}},
            "spec": {"template": {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: combined_hash(&current)}}}},
        });
        let server = tokio::spawn(async move {
            answer_configmap(server.next().await);
            answer_deployment(server.next().await, false);
            let patch = server.next().await;
            patch.assert("PATCH", DEPLOYMENT);
            assert!(
                patch.query.contains("fieldManager=redeploy-controller"),
                "{}",
                patch.query
            );
            assert_eq!(patch.body, expected_patch);
            patch.respond_json(deployment_json(false));
            answer_event(
                server.next().await,
                "Redeployed",
                "configmap/app changed; rolled out",
            );
            server
        });
        let meta = watching("web", Some(&record_of("sha256:old")));
        let action = reconcile_deployment(meta, &ctx).await;
        server.await.unwrap().done();
        assert_eq!(action, Action::await_change());
        assert_eq!(redeploys(&ctx, "rolled"), 1);
        assert!(lock(&ctx.pending).is_empty());
    }

    #[tokio::test]
    async fn first_sight_records_a_baseline_and_nothing_more() {
        let (client, mut server) = ApiServer::new();
        let ctx = context(client, empty_stores());
        let server = tokio::spawn(async move {
            answer_configmap(server.next().await);
            let patch = server.next().await;
            patch.assert("PATCH", DEPLOYMENT);
            assert_eq!(
                patch.body,
                json!({"metadata": {"annotations": {
                    HASHES_ANNOTATION: serde_json::to_string(&record_of(&new_hash())).unwrap()
                }}})
            );
            patch.respond_json(deployment_json(false));
            server
        });
        let action = reconcile_deployment(watching("web", None), &ctx).await;
        server.await.unwrap().done();
        assert_eq!(action, Action::await_change());
    }

    #[tokio::test]
    async fn a_deletion_seen_before_the_cache_has_the_baseline_is_reported_from_the_stored_record()
    {
        let (client, mut server) = ApiServer::new();
        let ctx = context(client, empty_stores());
        let baseline = serde_json::to_string(&record_of(&new_hash())).unwrap();
        let stored_record = baseline.clone();
        let server = tokio::spawn(async move {
            // First sight: the baseline is recorded.
            answer_configmap(server.next().await);
            let patch = server.next().await;
            patch.assert("PATCH", DEPLOYMENT);
            patch.respond_json(deployment_json(false));
            // The ConfigMap is deleted and wakes the Deployment before the cache has the record: the
            // stored Deployment is read first, so the deletion is told from the stored baseline ...
            let get = server.next().await;
            get.assert("GET", DEPLOYMENT);
            get.respond_json(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "web", "namespace": "ns", "annotations": {
                    WATCH_TO_REDEPLOY: "configmap/app", HASHES_ANNOTATION: stored_record,
                }},
            }));
            server
                .next()
                .await
                .respond_status(404, "NotFound", "configmaps \"app\" not found");
            let record = server.next().await;
            record.assert("PATCH", DEPLOYMENT);
            record.respond_json(deployment_json(false));
            // ... and reported, where the cached metadata alone looked like a first sight.
            let event = server.next().await;
            event.assert("POST", EVENTS);
            assert_eq!(
                event.body["reason"], "WatchedObjectDeleted",
                "{}",
                event.body
            );
            event.echo();
            server
        });
        let stale = watching("web", None);
        assert_eq!(
            reconcile_deployment(stale.clone(), &ctx).await,
            Action::await_change()
        );
        lock(&ctx.hashes).clear(); // what the source watch does on the deletion
        assert_eq!(
            reconcile_deployment(stale, &ctx).await,
            Action::await_change()
        );
        server.await.unwrap().done();
    }

    #[tokio::test]
    async fn an_unchanged_configmap_read_once_is_then_hashed_from_the_cache() {
        let (client, mut server) = ApiServer::new();
        let ctx = context(client, empty_stores());
        let server = tokio::spawn(async move {
            answer_configmap(server.next().await);
            server
        });
        let meta = watching("web", Some(&record_of(&new_hash())));
        assert_eq!(
            reconcile_deployment(meta.clone(), &ctx).await,
            Action::await_change()
        );
        let server = server.await.unwrap();
        // Same resourceVersion cached: no request at all.
        assert_eq!(
            reconcile_deployment(meta, &ctx).await,
            Action::await_change()
        );
        server.done();
    }

    #[tokio::test]
    async fn a_pack_rolls_out_the_workloads_of_its_release_then_records() {
        let (client, mut server) = ApiServer::new();
        let (deployments, mut writer) = reflector::store();
        let helm = |name: &str, release: &str| ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            annotations: Some(BTreeMap::from([
                (HELM_RELEASE_NAME.to_owned(), release.to_owned()),
                (HELM_RELEASE_NAMESPACE.to_owned(), "ns".to_owned()),
            ])),
            ..Default::default()
        };
        for meta in [helm("web", "app"), helm("other", "another-release")] {
            writer.apply_watcher_event(&watcher::Event::Apply(
                meta.into_response_partial::<Deployment>(),
            ));
        }
        let stores = WorkloadStores {
            deployments,
            ..empty_stores()
        };
        let ctx = context(client, stores);
        let current = record_of(&new_hash());
        let pack_json = json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
            "metadata": {"name": "app", "namespace": "ns"},
            "spec": {"chart": {"repository": {"kind": "ClusterPackRepository", "name": "repo"}, "name": "chart"}},
        });
        let server = tokio::spawn(async move {
            answer_configmap(server.next().await);
            answer_deployment(server.next().await, false);
            let template = server.next().await;
            template.assert("PATCH", DEPLOYMENT);
            assert_eq!(
                template.body,
                json!({"spec": {"template": {"metadata": {"annotations": {
                    PACK_CONFIG_HASH_ANNOTATION: combined_hash(&current)
                }}}}})
            );
            template.respond_json(deployment_json(false));
            let record = server.next().await;
            record.assert(
                "PATCH",
                "/apis/k8s.kubit.ir/v1alpha1/namespaces/ns/packs/app",
            );
            assert_eq!(record.body, record_patch(&current));
            record.respond_json(pack_json);
            let event = server.next().await;
            event.assert("POST", EVENTS);
            assert_eq!(
                event.body["note"],
                "configmap/app changed; rolled out (1 workload(s): Deployment/web)"
            );
            assert_eq!(event.body["regarding"]["kind"], "Pack");
            event.echo();
            server
        });
        let obj = Arc::new(
            watching("app", Some(&record_of("sha256:old"))).into_response_partial::<Pack>(),
        );
        let action = reconcile::<Pack>(obj, ctx).await.unwrap();
        server.await.unwrap().done();
        assert_eq!(action, Action::await_change());
    }
}
