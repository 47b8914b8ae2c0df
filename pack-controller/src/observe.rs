//! The reads of `spec.wait`: a release's manifest from Helm's release Secret, and each of its objects that
//! [`readiness`](crate::readiness) checks, as the API server has them. With the client of the Pack's
//! ServiceAccount when it has one: a Pack reads no object its ServiceAccount may not read.
//!
//! Cost per check: one GET of the release Secret, plus one GET per checked object (Deployments,
//! StatefulSets, DaemonSets, Jobs, PVCs, Services, custom resources); a custom resource's kind costs one
//! discovery request of its group version. Checks run only while a Pack waits.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    core::GroupVersionKind,
    discovery::{self, Scope},
};

use crate::{
    error::Error,
    readiness::{self, ReleaseObject},
    release::{self, ReleaseError, ReleaseRecord},
};

/// The objects of `record`'s manifest that readiness checks.
pub async fn checked_objects(
    client: &Client,
    namespace: &str,
    record: &ReleaseRecord,
) -> Result<Vec<ReleaseObject>, Error> {
    let manifest = manifest(client, namespace, record).await?;
    Ok(readiness::manifest_objects(&manifest)
        .into_iter()
        .filter(readiness::is_checked)
        .collect())
}

/// `record`'s manifest (what Helm applied), from its release Secret: one GET.
pub async fn manifest(
    client: &Client,
    namespace: &str,
    record: &ReleaseRecord,
) -> Result<String, Error> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(&record.secret)
        .await?;
    let body = secret
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or_else(|| ReleaseError::Decode {
            name: record.secret.clone(),
            detail: "no `release` key".into(),
        })?;
    Ok(
        release::manifest(&body.0).map_err(|detail| ReleaseError::Decode {
            name: record.secret.clone(),
            detail,
        })?,
    )
}

/// Those of `objects` that are not ready, with why (a missing object is not ready: "not found").
pub async fn not_ready(
    client: &Client,
    namespace: &str,
    objects: &[ReleaseObject],
) -> Result<Vec<(ReleaseObject, String)>, Error> {
    let mut out = Vec::new();
    for o in objects {
        let (resource, namespaced) = api_resource(client, o).await?;
        let api: Api<DynamicObject> = if namespaced {
            let ns = o.namespace.as_deref().unwrap_or(namespace);
            Api::namespaced_with(client.clone(), ns, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let why = match api.get_opt(&o.name).await? {
            None => Some("not found".to_owned()),
            Some(obj) => {
                let value = serde_json::to_value(&obj).unwrap_or_default();
                readiness::not_ready(&o.kind, &value)
            }
        };
        if let Some(why) = why {
            out.push((o.clone(), why));
        }
    }
    Ok(out)
}

/// The API resource of `o`: known for the built-in kinds readiness checks, discovered for others.
async fn api_resource(client: &Client, o: &ReleaseObject) -> Result<(ApiResource, bool), Error> {
    let (group, version) = match o.api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", o.api_version.as_str()),
    };
    let gvk = GroupVersionKind::gvk(group, version, &o.kind);
    let plural = match (group, o.kind.as_str()) {
        ("apps", "Deployment") => Some("deployments"),
        ("apps", "StatefulSet") => Some("statefulsets"),
        ("apps", "DaemonSet") => Some("daemonsets"),
        ("batch", "Job") => Some("jobs"),
        ("", "PersistentVolumeClaim") => Some("persistentvolumeclaims"),
        ("", "Service") => Some("services"),
        _ => None,
    };
    if let Some(plural) = plural {
        return Ok((ApiResource::from_gvk_with_plural(&gvk, plural), true));
    }
    let (resource, caps) = discovery::pinned_kind(client, &gvk).await?;
    Ok((resource, caps.scope == Scope::Namespaced))
}
