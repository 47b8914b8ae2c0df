//! A finalizer around a reconcile, like kube-runtime's `finalizer()` with one difference: cleanup may
//! ask to be called again later ([`Cleanup::Wait`]) without that being an error. kube-runtime removes the
//! finalizer on any `Ok` from cleanup, so a controller that has to wait (a backoff before retrying an
//! uninstall) had to dress the wait up as an error; here a wait is `Ok(Action::requeue(..))` and the
//! error policy only sees real errors.
//!
//! The finalizer is added and removed with JSON patches that test the list first, so another finalizer
//! is never lost to a race (a stale cache fails the test with 422 and the next reconcile reads again).
//! Removing the finalizer of an object that is already gone is success.

use std::sync::Arc;

use json_patch::{
    AddOperation, PatchOperation, RemoveOperation, TestOperation, jsonptr::PointerBuf,
};
pub use kube::runtime::finalizer::Error;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde::{Serialize, de::DeserializeOwned};

/// What a cleanup reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cleanup {
    /// Everything the finalizer guards is gone: remove the finalizer, then this action.
    Done(Action),
    /// Not yet (e.g. a backoff before the next attempt): keep the finalizer, reconcile again per the action.
    Wait(Action),
}

/// Which half of the reconcile to run.
#[derive(Debug)]
pub enum Event<K> {
    /// The object is live: its finalizer is in place, make the world match it.
    Apply(Arc<K>),
    /// The object is being deleted and still has the finalizer: undo what it made.
    Cleanup(Arc<K>),
}

/// Runs `apply` or `cleanup` for `obj`, adding the finalizer before the first apply and removing it once
/// cleanup is [`Cleanup::Done`]. Adding the finalizer ends the reconcile (its own watch event follows).
pub async fn run<K, E, ApplyFut, CleanupFut>(
    api: &Api<K>,
    finalizer: &str,
    obj: Arc<K>,
    apply: impl FnOnce(Arc<K>) -> ApplyFut,
    cleanup: impl FnOnce(Arc<K>) -> CleanupFut,
) -> Result<Action, Error<E>>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
    E: std::error::Error + 'static,
    ApplyFut: Future<Output = Result<Action, E>>,
    CleanupFut: Future<Output = Result<Cleanup, E>>,
{
    let index = obj.finalizers().iter().position(|f| f == finalizer);
    let deleting = obj.meta().deletion_timestamp.is_some();
    let name = obj.meta().name.clone().ok_or(Error::UnnamedObject)?;
    let namespace = obj.meta().namespace.clone();
    match (index, deleting) {
        (Some(_), false) => apply(obj).await.map_err(Error::ApplyFailed),
        (Some(i), true) => match cleanup(obj).await.map_err(Error::CleanupFailed)? {
            Cleanup::Wait(action) => Ok(action),
            Cleanup::Done(action) => {
                match api
                    .patch::<K>(&name, &PatchParams::default(), &remove_patch(finalizer, i)?)
                    .await
                {
                    // Gone already: nothing left to release.
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(Error::RemoveFinalizer(e)),
                    Ok(_) => {}
                }
                // The object goes: so do its condition series.
                let kind = K::kind(&Default::default()).into_owned();
                crate::condition_metrics::forget(&kind, namespace.as_deref(), &name);
                Ok(action)
            }
        },
        (None, false) => {
            api.patch::<K>(
                &name,
                &PatchParams::default(),
                &add_patch(obj.finalizers(), finalizer)?,
            )
            .await
            .map_err(Error::AddFinalizer)?;
            Ok(Action::await_change())
        }
        (None, true) => Ok(Action::await_change()),
    }
}

fn pointer<E: std::error::Error + 'static>(path: &str) -> Result<PointerBuf, Error<E>> {
    PointerBuf::parse(path).map_err(|_| Error::InvalidFinalizer)
}

/// Removes the finalizer at `index`, testing that it is still there (never someone else's).
fn remove_patch<K: Serialize, E: std::error::Error + 'static>(
    finalizer: &str,
    index: usize,
) -> Result<Patch<K>, Error<E>> {
    let path = format!("/metadata/finalizers/{index}");
    Ok(Patch::Json(json_patch::Patch(vec![
        PatchOperation::Test(TestOperation {
            path: pointer(&path)?,
            value: finalizer.into(),
        }),
        PatchOperation::Remove(RemoveOperation {
            path: pointer(&path)?,
        }),
    ])))
}

/// Adds the finalizer, testing the list read (the API server does not deduplicate finalizers).
fn add_patch<K: Serialize, E: std::error::Error + 'static>(
    current: &[String],
    finalizer: &str,
) -> Result<Patch<K>, Error<E>> {
    let operations = if current.is_empty() {
        vec![
            PatchOperation::Test(TestOperation {
                path: pointer("/metadata/finalizers")?,
                value: serde_json::Value::Null,
            }),
            PatchOperation::Add(AddOperation {
                path: pointer("/metadata/finalizers")?,
                value: vec![finalizer].into(),
            }),
        ]
    } else {
        vec![
            PatchOperation::Test(TestOperation {
                path: pointer("/metadata/finalizers")?,
                value: current.into(),
            }),
            PatchOperation::Add(AddOperation {
                path: pointer("/metadata/finalizers/-")?,
                value: finalizer.into(),
            }),
        ]
    };
    Ok(Patch::Json(json_patch::Patch(operations)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ApiServer;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    fn object(finalizers: &[&str], deleting: bool) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some("cm".into()),
                namespace: Some("ns".into()),
                finalizers: Some(finalizers.iter().map(|f| f.to_string()).collect()),
                deletion_timestamp: deleting.then_some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                    ),
                ),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    async fn run_on(
        api: &Api<ConfigMap>,
        obj: Arc<ConfigMap>,
        cleanup: Cleanup,
    ) -> Result<Action, Error<Never>> {
        run(
            api,
            "example.com/f",
            obj,
            |_| async { Ok::<_, Never>(Action::requeue(Duration::from_secs(1))) },
            |_| async move { Ok::<_, Never>(cleanup) },
        )
        .await
    }

    #[tokio::test]
    async fn a_wait_keeps_the_finalizer_and_sends_nothing() {
        let (client, server) = ApiServer::new();
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let wait = Action::requeue(Duration::from_secs(30));
        let obj = object(&["other", "example.com/f"], true);
        let action = run_on(&api, obj, Cleanup::Wait(wait.clone()))
            .await
            .unwrap();
        assert_eq!(action, wait);
        server.done();
    }

    #[tokio::test]
    async fn done_removes_exactly_our_finalizer_and_a_gone_object_is_success() {
        let (client, mut server) = ApiServer::new();
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let obj = object(&["other", "example.com/f"], true);
        let check = tokio::spawn(async move {
            let request = server.next().await;
            request.assert("PATCH", "/api/v1/namespaces/ns/configmaps/cm");
            assert_eq!(
                request.body,
                serde_json::json!([
                    {"op": "test", "path": "/metadata/finalizers/1", "value": "example.com/f"},
                    {"op": "remove", "path": "/metadata/finalizers/1"},
                ])
            );
            request.respond_status(404, "NotFound", "configmaps \"cm\" not found");
            server
        });
        let action = run_on(&api, obj, Cleanup::Done(Action::await_change()))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        check.await.unwrap().done();
    }

    #[tokio::test]
    async fn a_new_object_gets_the_finalizer_first_and_apply_waits_for_its_event() {
        let (client, mut server) = ApiServer::new();
        let api: Api<ConfigMap> = Api::namespaced(client, "ns");
        let obj = object(&[], false);
        let check = tokio::spawn(async move {
            let request = server.next().await;
            request.assert("PATCH", "/api/v1/namespaces/ns/configmaps/cm");
            assert_eq!(
                request.body,
                serde_json::json!([
                    {"op": "test", "path": "/metadata/finalizers", "value": null},
                    {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/f"]},
                ])
            );
            request.respond_json(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "cm", "namespace": "ns", "finalizers": ["example.com/f"]}
            }));
            server
        });
        let action = run_on(&api, obj, Cleanup::Done(Action::await_change()))
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        check.await.unwrap().done();
    }
}
