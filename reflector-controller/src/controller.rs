//! What wakes a reflector reconcile: the watches, the caches they fill, the orphan sweep, and the
//! `Controller` that runs [`crate::reconcile`] with a [`Context`] built here. One such controller runs
//! per kind copied ([`CopiedKind`], flag `--kinds`), each generic over [`Reflected`]: SecretReflectors
//! with Secrets, ConfigMapReflectors with ConfigMaps.
//!
//! Watches of one kind, chosen so that memory does not grow with the objects of the cluster:
//! - the reflectors (the Controller's cache);
//! - managed copies only, by label selector ([`MANAGED_LABEL`]), full objects without managedFields:
//!   they are compared with the desired copy to restore hand edits;
//! - every object of the kind as metadata only and cached nowhere: an event on a source wakes its
//!   reflectors, an event on an object of some reflector's target name wakes that reflector (a
//!   conflict may be gone);
//! - Namespaces, metadata only: selectors, opt-out labels, the consent annotation and Terminating are
//!   read from it (every other annotation is dropped from the cache).
//!
//! A relist of any of these watches (e.g. after the API server expired the watch with 410) wakes
//! every reflector, since events may have been missed meanwhile.
//!
//! Each reconcile is also requeued after a jittered resync period, a safety net should a watch event
//! be missed.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    events::Recorder,
    metrics::ReconcileMetrics,
    runtime::{Leading, store_synced},
};
use futures::{FutureExt, StreamExt, channel::mpsc, future::BoxFuture};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::{
    Api, Resource, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        events::Reporter,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tracing::{debug, info, warn};

use crate::{
    copy::{MANAGED_LABEL, REFLECTOR_ANNOTATION, ReflectorKey},
    intent::{key_of, target_name},
    kind::Reflected,
    metrics::{KindMetrics, ReflectorMetrics},
    reconcile::{self, Context, FIELD_MANAGER, Wake, delete_copy, forget_gone},
    targets::{REFLECT_FROM_ANNOTATION, TargetPolicy},
};

/// Tunables (from flags).
#[derive(Clone, Debug)]
pub struct Settings {
    /// Which namespaces may receive copies at all.
    pub policy: TargetPolicy,
    /// Reconciles at once, and writes to copies at once within one reconcile.
    pub concurrency: u16,
    /// Every reflector is reconciled again after about this long (±10 %), even without events.
    pub resync: Duration,
}

/// A kind of object reflectors copy: flag `--kinds` (`secret`, `configmap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CopiedKind {
    /// Secrets, copied by SecretReflectors.
    Secret,
    /// ConfigMaps, copied by ConfigMapReflectors.
    ConfigMap,
}

impl CopiedKind {
    pub const ALL: [CopiedKind; 2] = [CopiedKind::Secret, CopiedKind::ConfigMap];

    /// The value of flag `--kinds` and of the `kind` metric label.
    pub fn flag(self) -> &'static str {
        match self {
            CopiedKind::Secret => Secret::FLAG,
            CopiedKind::ConfigMap => ConfigMap::FLAG,
        }
    }

    /// The `controller` label of the reconcile metrics (`reflector` for Secrets, as before
    /// ConfigMaps were copied).
    pub fn controller(self) -> &'static str {
        match self {
            CopiedKind::Secret => "reflector",
            CopiedKind::ConfigMap => "configmap-reflector",
        }
    }

    /// Reads a `--kinds` entry.
    pub fn parse(flag: &str) -> Result<Self, String> {
        CopiedKind::ALL
            .into_iter()
            .find(|k| k.flag() == flag.trim())
            .ok_or_else(|| format!("unknown kind {flag:?}: expected secret or configmap"))
    }
}

/// Reflectors that an event on object `ns/name` concerns: those whose source it is, and those whose
/// target name it has (a conflicting object may have gone, or a copy of theirs changed).
fn concerned<K: Reflected>(
    reflectors: &Store<K::Reflector>,
    ns: &str,
    name: &str,
    owner: Option<&str>,
) -> Vec<ObjectRef<K::Reflector>> {
    reflectors
        .state()
        .iter()
        .filter(|r| {
            let k = key_of(r.as_ref());
            let spec = K::spec(r);
            (k.namespace == ns && spec.source.name == name)
                || target_name(spec) == name
                || owner == Some(k.to_string().as_str())
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// After a (re)list: events may have been missed meanwhile, so every reflector is reconciled.
fn wake_all<R: Resource<DynamicType = ()> + Clone>(reflectors: &Store<R>, wake: &Wake<R>) {
    for r in reflectors.state() {
        let _ = wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
    }
}

/// Copies in the cache that carry our marker annotation; an object that only forged the label is not
/// one.
fn managed<K: Reflected>(copies: &Store<K>) -> i64 {
    copies
        .state()
        .iter()
        .filter(|s| s.annotations().contains_key(REFLECTOR_ANNOTATION))
        .count() as i64
}

/// Whether the label-selected copy watch sees an object with these labels too, so the metadata watch
/// can leave it to that one: it carries the managed label with this controller's own value (any value
/// without `--namespace`). A copy made for another namespace's reflectors may be the source of one
/// of ours, and must still be seen.
fn seen_by_copy_watch(labels: &BTreeMap<String, String>, scope: Option<&str>) -> bool {
    match (labels.get(MANAGED_LABEL), scope) {
        (Some(value), Some(namespace)) => value == namespace,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Managed copies (label-selected, cached without managedFields): any change wakes their reflector.
async fn watch_copies<K: Reflected>(
    api: Api<K>,
    selector: String,
    writer: reflector::store::Writer<K>,
    store: Store<K>,
    reflectors: Store<K::Reflector>,
    metrics: KindMetrics,
    wake: Wake<K::Reflector>,
) {
    let mut events = watcher(
        api,
        watcher::Config::default().labels(&selector).any_semantic(),
    )
    .default_backoff()
    .modify(|s: &mut K| {
        s.managed_fields_mut().clear();
    })
    .reflect(writer)
    .boxed();
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
            Ok(watcher::Event::InitDone) => {
                metrics.set_copies_managed(managed(&store));
                wake_all(&reflectors, &wake);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                debug!(kind = K::KIND, error = %e, "copy watch error (retrying)");
                continue;
            }
        };
        metrics.set_copies_managed(managed(&store));
        let owner = obj
            .annotations()
            .get(REFLECTOR_ANNOTATION)
            .map(String::as_str);
        let ns = obj.namespace().unwrap_or_default();
        for r in concerned::<K>(&reflectors, &ns, &obj.name_any(), owner) {
            let _ = wake.unbounded_send(r);
        }
    }
}

/// Every object of the kind, metadata only and cached nowhere: wakes reflectors whose source or target
/// name it is.
async fn watch_objects<K: Reflected>(
    api: Api<PartialObjectMeta<K>>,
    scope: Option<String>,
    reflectors: Store<K::Reflector>,
    wake: Wake<K::Reflector>,
) {
    let mut events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .boxed();
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
            Ok(watcher::Event::InitDone) => {
                wake_all(&reflectors, &wake);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                debug!(kind = K::KIND, error = %e, "metadata watch error (retrying)");
                continue;
            }
        };
        if seen_by_copy_watch(obj.labels(), scope.as_deref()) {
            continue; // the copy watch has it
        }
        let ns = obj.namespace().unwrap_or_default();
        for r in concerned::<K>(&reflectors, &ns, &obj.name_any(), None) {
            let _ = wake.unbounded_send(r);
        }
    }
}

/// Namespaces, metadata only: a new, relabelled, re-annotated (consent) or deleted namespace wakes the
/// reflectors that name it or select by label (every event does: nothing is compared); a relist wakes
/// every reflector.
async fn watch_namespaces<K: Reflected>(
    api: Api<PartialObjectMeta<Namespace>>,
    writer: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    reflectors: Store<K::Reflector>,
    wake: Wake<K::Reflector>,
) {
    let mut events = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|ns: &mut PartialObjectMeta<Namespace>| {
            ns.managed_fields_mut().clear();
            ns.annotations_mut()
                .retain(|k, _| k == REFLECT_FROM_ANNOTATION);
        })
        .reflect(writer)
        .boxed();
    while let Some(event) = events.next().await {
        let name = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => Some(o.name_any()),
            Ok(watcher::Event::InitDone) => None,
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "namespace watch error (retrying)");
                continue;
            }
        };
        for r in reflectors.state() {
            let targets = &K::spec(&r).targets;
            let concerned = match &name {
                None => true,
                Some(n) => targets.namespace_selector.is_some() || targets.namespaces.contains(n),
            };
            if concerned {
                let _ = wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
            }
        }
    }
}

/// Deletes copies whose reflector no longer exists: its finalizer was removed by hand, or it went
/// while no controller ran, so its cleanup never happened. Runs once every cache is complete, then
/// every resync period. A copy is judged by its marker, and its reflector's absence is confirmed by a
/// GET on the API server (not the cache) before the copy is deleted (uid + resourceVersion checked).
async fn sweep_orphans<K: Reflected>(ctx: Arc<Context<K>>, reflectors: Store<K::Reflector>) {
    loop {
        if store_synced(&reflectors).await {
            let live: BTreeSet<String> = reflectors
                .state()
                .iter()
                .map(|r| key_of(r.as_ref()).to_string())
                .collect();
            for secret in ctx.copies.state() {
                let Some(key) = secret
                    .annotations()
                    .get(REFLECTOR_ANNOTATION)
                    .filter(|owner| !live.contains(owner.as_str()))
                    .and_then(|owner| ReflectorKey::parse(owner))
                else {
                    continue;
                };
                let api: Api<K::Reflector> = Api::namespaced(ctx.client.clone(), &key.namespace);
                match api.get_opt(&key.name).await {
                    Ok(None) => match delete_copy(&ctx, &secret, &key).await {
                        Ok(true) => info!(
                            namespace = %secret.namespace().unwrap_or_default(),
                            name = %secret.name_any(),
                            reflector = %key,
                            "deleted a copy whose {} no longer exists",
                            K::REFLECTOR_KIND
                        ),
                        Ok(false) => {}
                        Err(e) => {
                            warn!(reflector = %key, error = %e, "cannot delete an orphaned copy")
                        }
                    },
                    Ok(Some(_)) => {}
                    Err(e) => {
                        debug!(reflector = %key, error = %e, "cannot check a copy's reflector")
                    }
                }
            }
            // Reflectors gone without their cleanup leave no conflicts or reported targets behind.
            forget_gone(&ctx);
        }
        tokio::time::sleep(ctx.settings.resync).await;
    }
}

/// Runs one controller per kind in `kinds` (each with its reconcile metrics) until `leading.stop`
/// is cancelled; ready once every one has complete caches. With `namespace`, only the reflectors of
/// that namespace (and their copies) are handled; targets may be anywhere.
pub async fn run(
    leading: Leading,
    namespace: Option<String>,
    settings: Settings,
    kinds: Vec<(CopiedKind, ReconcileMetrics)>,
    metrics: ReflectorMetrics,
) {
    let (synced, running): (Vec<_>, Vec<_>) = kinds
        .into_iter()
        .map(|(kind, reconciles)| {
            let (namespace, settings) = (namespace.clone(), settings.clone());
            match kind {
                CopiedKind::Secret => {
                    prepare::<Secret>(&leading, namespace, settings, &metrics, reconciles)
                }
                CopiedKind::ConfigMap => {
                    prepare::<ConfigMap>(&leading, namespace, settings, &metrics, reconciles)
                }
            }
        })
        .unzip();
    common::runtime::report_sync_when(
        async move {
            futures::future::join_all(synced)
                .await
                .into_iter()
                .all(|s| s)
        },
        leading.health.clone(),
    );
    tokio::select! {
        _ = futures::future::join_all(running) => {}
        _ = leading.stop.cancelled() => {}
    }
}

/// The controller of kind `K`: a future that says when its caches are complete, and the one that
/// runs it (watches, reconciles, the orphan sweep).
fn prepare<K: Reflected>(
    leading: &Leading,
    namespace: Option<String>,
    settings: Settings,
    metrics: &ReflectorMetrics,
    reconciles: ReconcileMetrics,
) -> (BoxFuture<'static, bool>, BoxFuture<'static, ()>) {
    let client = leading.client.clone();
    let reflectors: Api<K::Reflector> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (wake, woken) = mpsc::unbounded();
    let controller = Controller::new(reflectors, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .reconcile_on(woken);
    let reflector_store = controller.store();
    let (namespaces, ns_writer) = reflector::store();
    let (copies, copy_writer) = reflector::store();
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| "reflector-controller".into());
    let ctx = Arc::new(Context::<K> {
        client: client.clone(),
        settings,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity),
            },
        ),
        metrics: metrics.for_kind(K::FLAG),
        reconciles,
        namespaces: namespaces.clone(),
        copies: copies.clone(),
        reflectors: reflector_store.clone(),
        wake,
        conflicts: Mutex::default(),
        reported: Mutex::default(),
    });
    let watches = watch_all(&ctx, namespace, ns_writer, copy_writer);

    let synced = {
        let (r, n, c) = (reflector_store.clone(), namespaces.clone(), copies.clone());
        async move { store_synced(&r).await && store_synced(&n).await && store_synced(&c).await }
    };
    let stop = leading.stop.clone();
    let reconciling = async move {
        // Never plan from an incomplete cache: a namespace or copy not yet listed would look absent,
        // and its copy would be created twice or deleted.
        if !(store_synced(&namespaces).await && store_synced(&copies).await) {
            return;
        }
        let sweeping = sweep_orphans(ctx.clone(), reflector_store);
        let running = controller
            .graceful_shutdown_on(stop.clone().cancelled_owned())
            .run(reconcile::reconcile::<K>, reconcile::error_policy::<K>, ctx)
            .for_each(|_| std::future::ready(()));
        tokio::select! {
            _ = running => {}
            _ = sweeping => {}
        }
    };
    let running = async move {
        tokio::select! {
            _ = reconciling => {}
            _ = watches => {}
        }
    };
    (synced.boxed(), running.boxed())
}

/// The three watches beside the Controller's own (namespaces, managed copies, every object's
/// metadata): they fill the namespace and copy caches of `ctx` and wake its reflectors.
fn watch_all<K: Reflected>(
    ctx: &Context<K>,
    namespace: Option<String>,
    ns_writer: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    copy_writer: reflector::store::Writer<K>,
) -> impl Future<Output = ()> + use<K> {
    let selector = match &namespace {
        Some(ns) => format!("{MANAGED_LABEL}={ns}"),
        None => MANAGED_LABEL.to_owned(),
    };
    let watches = futures::future::join3(
        watch_namespaces::<K>(
            Api::all(ctx.client.clone()),
            ns_writer,
            ctx.reflectors.clone(),
            ctx.wake.clone(),
        ),
        watch_copies(
            Api::all(ctx.client.clone()),
            selector,
            copy_writer,
            ctx.copies.clone(),
            ctx.reflectors.clone(),
            ctx.metrics.clone(),
            ctx.wake.clone(),
        ),
        watch_objects::<K>(
            Api::all(ctx.client.clone()),
            namespace,
            ctx.reflectors.clone(),
            ctx.wake.clone(),
        ),
    );
    async move {
        watches.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_watch_leaves_to_the_copy_watch_only_what_it_sees() {
        let labels = |value: Option<&str>| -> BTreeMap<String, String> {
            value
                .map(|v| BTreeMap::from([(MANAGED_LABEL.to_owned(), v.to_owned())]))
                .unwrap_or_default()
        };
        let cases = [
            (None, Some("certs"), false, "not a copy"),
            (
                Some("certs"),
                Some("certs"),
                true,
                "a copy of our reflectors",
            ),
            (
                Some("other"),
                Some("certs"),
                false,
                "a copy for another namespace's reflectors: maybe a chained source",
            ),
            (
                Some("other"),
                None,
                true,
                "without --namespace the copy watch sees all",
            ),
            (None, None, false, "not a copy, all namespaces"),
        ];
        for (value, scope, seen, what) in cases {
            assert_eq!(seen_by_copy_watch(&labels(value), scope), seen, "{what}");
        }
    }
}
