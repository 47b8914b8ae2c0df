//! What wakes a SecretReflector reconcile: the watches, the caches they fill, the orphan sweep, and the
//! `Controller` that runs [`crate::reconcile`] with a [`Context`] built here.
//!
//! Watches, chosen so that memory does not grow with the Secrets of the cluster:
//! - SecretReflectors (the Controller's cache);
//! - managed copies only, by label selector ([`MANAGED_LABEL`]), full objects without managedFields:
//!   they are compared with the desired copy to restore hand edits;
//! - every Secret as metadata only and cached nowhere: an event on a source wakes its reflectors, an
//!   event on a Secret of some reflector's target name wakes that reflector (a conflict may be gone);
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
    crd::SecretReflector,
    events::Recorder,
    metrics::ReconcileMetrics,
    runtime::{Leading, store_synced},
};
use futures::{StreamExt, channel::mpsc};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
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
    metrics::ReflectorMetrics,
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

/// Reflectors that an event on Secret `ns/name` concerns: those whose source it is, and those whose
/// target name it has (a conflicting Secret may have gone, or a copy of theirs changed).
fn concerned(
    reflectors: &Store<SecretReflector>,
    ns: &str,
    name: &str,
    owner: Option<&str>,
) -> Vec<ObjectRef<SecretReflector>> {
    reflectors
        .state()
        .iter()
        .filter(|r| {
            let k = key_of(r);
            (k.namespace == ns && r.spec.source.name == name)
                || target_name(r) == name
                || owner == Some(k.to_string().as_str())
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// After a (re)list: events may have been missed meanwhile, so every reflector is reconciled.
fn wake_all(reflectors: &Store<SecretReflector>, wake: &Wake) {
    for r in reflectors.state() {
        let _ = wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
    }
}

/// Copies in the cache that carry our marker annotation; a Secret that only forged the label is not
/// one.
fn managed(copies: &Store<Secret>) -> i64 {
    copies
        .state()
        .iter()
        .filter(|s| s.annotations().contains_key(REFLECTOR_ANNOTATION))
        .count() as i64
}

/// Whether the label-selected copy watch sees a Secret with these labels too, so the metadata watch
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
async fn watch_copies(
    api: Api<Secret>,
    selector: String,
    writer: reflector::store::Writer<Secret>,
    store: Store<Secret>,
    reflectors: Store<SecretReflector>,
    metrics: ReflectorMetrics,
    wake: Wake,
) {
    let mut events = watcher(
        api,
        watcher::Config::default().labels(&selector).any_semantic(),
    )
    .default_backoff()
    .modify(|s: &mut Secret| {
        s.managed_fields_mut().clear();
    })
    .reflect(writer)
    .boxed();
    while let Some(event) = events.next().await {
        let obj = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => o,
            Ok(watcher::Event::InitDone) => {
                metrics.copies_managed.set(managed(&store));
                wake_all(&reflectors, &wake);
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                debug!(error = %e, "copy watch error (retrying)");
                continue;
            }
        };
        metrics.copies_managed.set(managed(&store));
        let owner = obj
            .annotations()
            .get(REFLECTOR_ANNOTATION)
            .map(String::as_str);
        let ns = obj.namespace().unwrap_or_default();
        for r in concerned(&reflectors, &ns, &obj.name_any(), owner) {
            let _ = wake.unbounded_send(r);
        }
    }
}

/// Every Secret, metadata only and cached nowhere: wakes reflectors whose source or target name it is.
async fn watch_secrets(
    api: Api<PartialObjectMeta<Secret>>,
    scope: Option<String>,
    reflectors: Store<SecretReflector>,
    wake: Wake,
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
                debug!(error = %e, "secret watch error (retrying)");
                continue;
            }
        };
        if seen_by_copy_watch(obj.labels(), scope.as_deref()) {
            continue; // the copy watch has it
        }
        let ns = obj.namespace().unwrap_or_default();
        for r in concerned(&reflectors, &ns, &obj.name_any(), None) {
            let _ = wake.unbounded_send(r);
        }
    }
}

/// Namespaces, metadata only: a new, relabelled, re-annotated (consent) or deleted namespace wakes the
/// reflectors that name it or select by label (every event does: nothing is compared); a relist wakes
/// every reflector.
async fn watch_namespaces(
    api: Api<PartialObjectMeta<Namespace>>,
    writer: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    reflectors: Store<SecretReflector>,
    wake: Wake,
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
            let concerned = match &name {
                None => true,
                Some(n) => {
                    r.spec.targets.namespace_selector.is_some()
                        || r.spec.targets.namespaces.contains(n)
                }
            };
            if concerned {
                let _ = wake.unbounded_send(ObjectRef::from_obj(r.as_ref()));
            }
        }
    }
}

/// Deletes copies whose SecretReflector no longer exists: its finalizer was removed by hand, or it went
/// while no controller ran, so its cleanup never happened. Runs once every cache is complete, then
/// every resync period. A copy is judged by its marker, and its reflector's absence is confirmed by a
/// GET on the API server (not the cache) before the copy is deleted (uid + resourceVersion checked).
async fn sweep_orphans(ctx: Arc<Context>, reflectors: Store<SecretReflector>) {
    loop {
        if store_synced(&reflectors).await {
            let live: BTreeSet<String> = reflectors
                .state()
                .iter()
                .map(|r| key_of(r).to_string())
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
                let api: Api<SecretReflector> = Api::namespaced(ctx.client.clone(), &key.namespace);
                match api.get_opt(&key.name).await {
                    Ok(None) => match delete_copy(&ctx, &secret, &key).await {
                        Ok(true) => info!(
                            namespace = %secret.namespace().unwrap_or_default(),
                            name = %secret.name_any(),
                            reflector = %key,
                            "deleted a copy whose SecretReflector no longer exists"
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

/// Runs the SecretReflector controller until `leading.stop` is cancelled. With `namespace`, only the
/// SecretReflectors of that namespace (and their copies) are handled; targets may be anywhere.
pub async fn run(
    leading: Leading,
    namespace: Option<String>,
    settings: Settings,
    metrics: ReflectorMetrics,
    reconciles: ReconcileMetrics,
) {
    let client = leading.client.clone();
    let reflectors: Api<SecretReflector> = match &namespace {
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
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder: Recorder::new(
            client,
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity),
            },
        ),
        metrics,
        reconciles,
        namespaces: namespaces.clone(),
        copies: copies.clone(),
        reflectors: reflector_store.clone(),
        wake,
        conflicts: Mutex::default(),
        reported: Mutex::default(),
    });
    let watches = watch_all(&ctx, namespace, ns_writer, copy_writer);

    // Ready once every cache is complete.
    {
        let (r, n, c) = (reflector_store.clone(), namespaces.clone(), copies.clone());
        common::runtime::report_sync_when(
            async move { store_synced(&r).await && store_synced(&n).await && store_synced(&c).await },
            leading.health.clone(),
        );
    }
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
            .run(reconcile::reconcile, reconcile::error_policy, ctx)
            .for_each(|_| std::future::ready(()));
        tokio::select! {
            _ = running => {}
            _ = sweeping => {}
        }
    };
    tokio::select! {
        _ = reconciling => {}
        _ = watches => {}
        _ = leading.stop.cancelled() => {}
    }
}

/// The three watches beside the Controller's own (namespaces, managed copies, every Secret's
/// metadata): they fill the namespace and copy caches of `ctx` and wake its reflectors.
fn watch_all(
    ctx: &Context,
    namespace: Option<String>,
    ns_writer: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    copy_writer: reflector::store::Writer<Secret>,
) -> impl Future<Output = ()> + use<> {
    let selector = match &namespace {
        Some(ns) => format!("{MANAGED_LABEL}={ns}"),
        None => MANAGED_LABEL.to_owned(),
    };
    let watches = futures::future::join3(
        watch_namespaces(
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
        watch_secrets(
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
