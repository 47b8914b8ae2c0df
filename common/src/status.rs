//! Status of a custom resource, written with server-side apply under the controller's field manager
//! (the whole status, forced: the controller owns it).

use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::{Serialize, de::DeserializeOwned};

/// Applies `status` to the status subresource of `name`.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    status: &impl Serialize,
) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Applies `new` to the status subresource of `name` unless it equals `old` (the status the object was
/// read with): a reconcile that changes nothing writes nothing. Returns whether it wrote. Either way
/// the status's conditions are reported in [`crate::condition_metrics`].
pub async fn write<K, S>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    old: Option<&S>,
    new: &S,
) -> kube::Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if let Ok(value) = serde_json::to_value(new) {
        crate::condition_metrics::observe_status(&K::kind(&()), api.namespace(), name, &value);
    }
    if old == Some(new) {
        return Ok(false);
    }
    apply(api, name, field_manager, new).await?;
    Ok(true)
}
