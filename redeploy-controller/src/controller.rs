//! What wakes a workload reconcile: the wiring of the redeploy-controller (the reconcile itself is in
//! [`crate::reconcile`]).
//!
//! Workloads (Deployments, StatefulSets, DaemonSets, Packs) are watched as metadata only: the annotation
//! is all that decides whether a workload is of interest. ConfigMaps and Secrets are watched as metadata
//! only and never cached; an event on one that some workload watches (per [`crate::index`]) wakes those
//! workloads through [`Wakers`], and they then read and hash just the objects they name.

use std::{fmt::Debug, sync::Arc, time::Duration};

use common::{
    annotation::WatchKind,
    crd::Pack,
    events::Recorder,
    metrics::ReconcileMetrics,
    runtime::Leading,
    sync::lock,
    watch_index::{Referenced, SourceEvent, source_changes},
};
use futures::{StreamExt, channel::mpsc};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::CronJob,
    core::v1::{ConfigMap, Namespace, Secret},
};
use kube::{
    Api, Client, Resource,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        events::Reporter,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::{
    index::{WorkloadKey, WorkloadKind},
    metrics::RedeployMetrics,
    reconcile::{Context, WorkloadStores, error_policy, reconcile},
    rollout_crd::{ROLLOUT_API, Rollout},
    scope::NamespaceScope,
};

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
    /// The namespaces acted on (`--namespace` list, `--namespace-selector`).
    pub scope: NamespaceScope,
}

/// How often a controller started without the Pack (or Rollout) CRD looks for it again.
const PACK_API_RECHECK: Duration = Duration::from_secs(60);
/// Packs: `k8s.kubit.ir/v1alpha1`, resource `packs`.
const PACK_API: (&str, &str) = ("k8s.kubit.ir/v1alpha1", "packs");

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
    let cronjobs = workload_controller::<CronJob>(&client, &namespace, cc.clone());
    // Packs and Argo Rollouts are watched only where their CRD is installed (the chart can install this
    // controller alone): a watch of a missing API would never sync, and the controller would never be
    // ready.
    let packs = optional_controller::<Pack>(&client, PACK_API, &namespace, cc.clone()).await;
    let rollouts =
        optional_controller::<Rollout>(&client, ROLLOUT_API, &namespace, cc.clone()).await;
    let (namespace_labels, namespace_events) = if settings.scope.needs_labels() {
        let (store, events) = namespace_watch(&client);
        (Some(store), Some(events))
    } else {
        (None, None)
    };
    let stores = WorkloadStores {
        deployments: deployments.store(),
        statefulsets: statefulsets.store(),
        daemonsets: daemonsets.store(),
        cronjobs: cronjobs.store(),
        namespaces: namespace_labels,
    };
    report_ready_when_synced(
        &leading,
        stores.clone(),
        packs.as_ref().map(Controller::store),
        rollouts.as_ref().map(Controller::store),
    );

    let ctx = Arc::new(Context::new(
        client.clone(),
        settings,
        recorder(&client),
        metrics,
        reconciles,
        stores,
    ));

    let (wakers, woken) = Wakers::new();
    let namespaces = wake_on_namespace_changes(namespace_events, ctx.clone(), wakers.clone());
    let sources = futures::future::join3(
        namespaces,
        watch_sources(
            scoped::<PartialObjectMeta<ConfigMap>>(&client, &namespace),
            WatchKind::ConfigMap,
            namespace.clone(),
            ctx.clone(),
            wakers.clone(),
        ),
        watch_sources(
            scoped::<PartialObjectMeta<Secret>>(&client, &namespace),
            WatchKind::Secret,
            namespace.clone(),
            ctx.clone(),
            wakers,
        ),
    );

    let stop = leading.stop.clone();
    let builtin = futures::future::join4(
        run_workload_controller(deployments, woken.deployment, &leading, ctx.clone()),
        run_workload_controller(statefulsets, woken.statefulset, &leading, ctx.clone()),
        run_workload_controller(daemonsets, woken.daemonset, &leading, ctx.clone()),
        run_workload_controller(cronjobs, woken.cronjob, &leading, ctx.clone()),
    );
    let (ns, l) = (namespace, &leading);
    let optional = futures::future::join(
        run_optional_controller(
            rollouts,
            ROLLOUT_API,
            woken.rollout,
            l,
            ns.clone(),
            cc.clone(),
            ctx.clone(),
        ),
        run_optional_controller(packs, PACK_API, woken.pack, l, ns, cc, ctx),
    );
    let controllers = futures::future::join(builtin, optional);
    tokio::select! {
        _ = controllers => {}
        _ = sources => {}
        _ = stop.cancelled() => {}
    }
}

/// Events are reported as this replica (the pod's name).
fn recorder(client: &Client) -> Recorder {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "redeploy-controller".into());
    Recorder::new(
        client.clone(),
        Reporter {
            controller: "redeploy-controller".into(),
            instance: Some(identity),
        },
    )
}

/// Ready once every workload cache holds a complete listing.
fn report_ready_when_synced(
    leading: &Leading,
    stores: WorkloadStores,
    packs: Option<Store<PartialObjectMeta<Pack>>>,
    rollouts: Option<Store<PartialObjectMeta<Rollout>>>,
) {
    common::runtime::report_sync_when(
        async move {
            use common::runtime::store_synced;
            store_synced(&stores.deployments).await
                && store_synced(&stores.statefulsets).await
                && store_synced(&stores.daemonsets).await
                && store_synced(&stores.cronjobs).await
                && match &packs {
                    Some(packs) => store_synced(packs).await,
                    None => true,
                }
                && match &rollouts {
                    Some(rollouts) => store_synced(rollouts).await,
                    None => true,
                }
        },
        leading.health.clone(),
    );
}

/// Runs one workload kind's controller, reconciling also each workload `woken` names, until stopped.
async fn run_workload_controller<K>(
    controller: Controller<PartialObjectMeta<K>>,
    woken: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<K>>>,
    leading: &Leading,
    ctx: Arc<Context>,
) where
    K: crate::reconcile::Watcher<Scope = kube::core::NamespaceResourceScope>,
{
    controller
        .reconcile_on(woken)
        .graceful_shutdown_on(leading.stop.clone().cancelled_owned())
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

/// The controller of a kind served by a CRD that may be missing (Packs, Argo Rollouts), once its API is
/// served: until then, looks for it every [`PACK_API_RECHECK`].
async fn run_optional_controller<K>(
    controller: Option<Controller<PartialObjectMeta<K>>>,
    api: (&str, &str),
    woken: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<K>>>,
    leading: &Leading,
    namespace: Option<String>,
    cc: kube::runtime::controller::Config,
    ctx: Arc<Context>,
) where
    K: crate::reconcile::Watcher<Scope = kube::core::NamespaceResourceScope>,
{
    let (client, stop) = (&leading.client, &leading.stop);
    let controller = match controller {
        Some(controller) => controller,
        None => loop {
            tokio::select! {
                () = tokio::time::sleep(PACK_API_RECHECK) => {}
                () = stop.cancelled() => return,
            }
            if api_served(client, api).await {
                info!("{} {} are served now: watching them", api.0, api.1);
                break workload_controller::<K>(client, &namespace, cc);
            }
        },
    };
    run_workload_controller(controller, woken, leading, ctx).await;
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

/// Watches ConfigMaps or Secrets (metadata only, nothing cached: [`source_changes`]) and wakes the
/// workloads that watch one when it changes, is created or is deleted (a watched object a (re)list
/// lacks counts as deleted).
async fn watch_sources<S>(
    api: Api<PartialObjectMeta<S>>,
    kind: WatchKind,
    namespace: Option<String>,
    ctx: Arc<Context>,
    wake: Wakers,
) where
    S: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    PartialObjectMeta<S>:
        Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
{
    let referenced: Referenced = {
        let ctx = ctx.clone();
        Arc::new(move |kind, ns| lock(&ctx.index).sources(kind, ns))
    };
    let mut events = source_changes(api, kind, namespace, referenced).boxed();
    while let Some(SourceEvent {
        source,
        resource_version,
        deleted,
    }) = events.next().await
    {
        let watchers = lock(&ctx.index).watchers_of(&source);
        if watchers.is_empty() {
            continue;
        }
        {
            let mut hashes = lock(&ctx.hashes);
            let fresh = !deleted
                && hashes.get(&source).map(|(rv, _)| Some(rv)) == Some(resource_version.as_ref());
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

/// The namespaces' metadata (labels), for `--namespace-selector`: a store, and the stream that fills it.
fn namespace_watch(
    client: &Client,
) -> (
    Store<PartialObjectMeta<Namespace>>,
    futures::stream::BoxStream<'static, PartialObjectMeta<Namespace>>,
) {
    let (reader, writer) = kube::runtime::reflector::store();
    let api = Api::<PartialObjectMeta<Namespace>>::all(client.clone());
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|ns: &mut PartialObjectMeta<Namespace>| {
            ns.metadata.managed_fields = None;
            ns.metadata.annotations = None;
        })
        .reflect(writer)
        .applied_objects()
        .filter_map(|r| std::future::ready(r.ok()))
        .boxed();
    (reader, stream)
}

/// Wakes the workloads of a namespace whose labels changed, so one that enters the selector is
/// baselined and one that leaves it is forgotten (Packs are looked at again at their next change).
async fn wake_on_namespace_changes(
    events: Option<futures::stream::BoxStream<'static, PartialObjectMeta<Namespace>>>,
    ctx: Arc<Context>,
    wake: Wakers,
) {
    let Some(mut events) = events else {
        return std::future::pending().await;
    };
    let mut admitted = std::collections::HashMap::<String, bool>::new();
    while let Some(ns) = events.next().await {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let now = ctx.admits(&name);
        if admitted.insert(name.clone(), now) == Some(now) {
            continue;
        }
        for key in ctx.workloads_in(&name) {
            wake.wake(&key);
        }
    }
}

/// Senders that make the per-kind controllers reconcile a workload now.
#[derive(Clone)]
struct Wakers {
    deployment: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<Deployment>>>,
    statefulset: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<StatefulSet>>>,
    daemonset: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<DaemonSet>>>,
    cronjob: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<CronJob>>>,
    rollout: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<Rollout>>>,
    pack: mpsc::UnboundedSender<ObjectRef<PartialObjectMeta<Pack>>>,
}

/// The receiving ends of [`Wakers`], one per workload controller.
struct Woken {
    deployment: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<Deployment>>>,
    statefulset: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<StatefulSet>>>,
    daemonset: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<DaemonSet>>>,
    cronjob: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<CronJob>>>,
    rollout: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<Rollout>>>,
    pack: mpsc::UnboundedReceiver<ObjectRef<PartialObjectMeta<Pack>>>,
}

impl Wakers {
    fn new() -> (Wakers, Woken) {
        let (deployment, deployment_rx) = mpsc::unbounded();
        let (statefulset, statefulset_rx) = mpsc::unbounded();
        let (daemonset, daemonset_rx) = mpsc::unbounded();
        let (cronjob, cronjob_rx) = mpsc::unbounded();
        let (rollout, rollout_rx) = mpsc::unbounded();
        let (pack, pack_rx) = mpsc::unbounded();
        (
            Wakers {
                deployment,
                statefulset,
                daemonset,
                cronjob,
                rollout,
                pack,
            },
            Woken {
                deployment: deployment_rx,
                statefulset: statefulset_rx,
                daemonset: daemonset_rx,
                cronjob: cronjob_rx,
                rollout: rollout_rx,
                pack: pack_rx,
            },
        )
    }

    fn wake(&self, w: &WorkloadKey) {
        let (ns, name) = (w.namespace.as_str(), w.name.as_str());
        // A send fails only when that controller has ended (shutdown): nothing left to wake.
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
            WorkloadKind::CronJob => self
                .cronjob
                .unbounded_send(ObjectRef::new(name).within(ns))
                .is_ok(),
            WorkloadKind::Rollout => self
                .rollout
                .unbounded_send(ObjectRef::new(name).within(ns))
                .is_ok(),
            WorkloadKind::Pack => self
                .pack
                .unbounded_send(ObjectRef::new(name).within(ns))
                .is_ok(),
        };
    }
}

/// Whether the API server serves `api` (group/version, resource), e.g. Packs (`k8s.kubit.ir/v1alpha1`,
/// `packs`). An error other than "not found" counts as served: the watch then retries as any watch does.
async fn api_served(client: &Client, (group_version, resource): (&str, &str)) -> bool {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == resource),
        Err(kube::Error::Api(status)) if status.code == 404 => false,
        Err(e) => {
            warn!(error = %e, "cannot tell whether {group_version} {resource} are served; watching them");
            true
        }
    }
}

/// A controller of a CRD-served kind if its API is served now, else `None` (logged).
async fn optional_controller<K>(
    client: &Client,
    api: (&str, &str),
    namespace: &Option<String>,
    cc: kube::runtime::controller::Config,
) -> Option<Controller<PartialObjectMeta<K>>>
where
    K: crate::reconcile::Watcher<Scope = kube::core::NamespaceResourceScope>,
{
    if api_served(client, api).await {
        return Some(workload_controller::<K>(client, namespace, cc));
    }
    info!(
        "{} {} are not served (CRD not installed): they will be watched once the CRD appears \
         (checked every {PACK_API_RECHECK:?})",
        api.0, api.1
    );
    None
}
