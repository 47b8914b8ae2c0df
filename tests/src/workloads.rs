//! Playing the kubelet for workloads (the test control plane runs no kubelet and no scheduler, so Pods
//! stay Pending): marking a Deployment's Pods running and ready, as the kubelet would report them, lets
//! the ReplicaSet and Deployment controllers (which do run) make the Deployment available.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use crate::wait;

/// Marks every Pod of Deployment `name` in `ns` running and ready (waits for its ReplicaSet to create
/// them first); returns how many were marked.
pub async fn mark_deployment_pods_ready(client: &Client, ns: &str, name: &str) -> usize {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("Deployment");
    let labels = deployment
        .spec
        .and_then(|s| s.selector.match_labels)
        .unwrap_or_default();
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let want = deployment
        .status
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(1) as usize;
    let names: Vec<String> = wait::until(
        &format!("Pods of Deployment {name}"),
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = list
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            Ok::<_, String>((names.len() >= want).then_some(names))
        },
    )
    .await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition =
        |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "conditions": [condition("PodScheduled"), condition("Initialized"),
                       condition("ContainersReady"), condition("Ready")],
    }});
    for pod in &names {
        pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("mark the Pod ready");
    }
    names.len()
}
