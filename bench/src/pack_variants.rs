//! What the variants of `pack-bench` change about its Packs and its cluster: the chart from an OCI
//! registry, values from Secrets (`spec.valuesFrom`), unrelated Secrets in the cluster, `spec.wait` (with
//! the benchmark playing the kubelet), and `spec.driftDetection`.

use std::{collections::HashSet, time::Duration};

use anyhow::Context as _;
use common::crd::{ClusterPackRepository, Pack};
use futures::{StreamExt as _, stream};
use k8s_openapi::{
    ByteString,
    api::{apps::v1::Deployment, core::v1::Secret},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;

use crate::{Obj, create_all};

/// The path of genpack's image tag, set from a Secret's key by `targetPath` in the `valuesFrom` variant.
const TAG_PATH: &str = "gonbad.workloads.app.containers.app.image.tag";

/// How the Packs of one scenario differ from the plain case (chart from an HTTP repository, inline
/// `spec.values`, no wait, no drift detection, no other Secrets).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Variant {
    /// The chart comes from a local CNCF Distribution registry (`oci://`, plain HTTP).
    pub oci: bool,
    /// Each Pack's values come from a Secret of its own (`spec.valuesFrom`, one key by `targetPath`).
    pub values_from: bool,
    /// Unrelated Secrets (~2 KiB each) created before the controller starts.
    pub unrelated_secrets: usize,
    /// `spec.wait: true`.
    pub wait: bool,
    /// `spec.driftDetection.mode` (`warn` or `enabled`).
    pub drift: Option<String>,
}

impl Variant {
    /// "plain", or the variant's flags as given on the command line.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if self.oci {
            parts.push("--oci".to_owned());
        }
        if self.values_from {
            parts.push("--values-from".to_owned());
        }
        if self.unrelated_secrets > 0 {
            parts.push(format!("--unrelated-secrets {}", self.unrelated_secrets));
        }
        if self.wait {
            parts.push("--wait".to_owned());
        }
        if let Some(mode) = &self.drift {
            parts.push(format!("--drift {mode}"));
        }
        if parts.is_empty() {
            "plain".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// The values of the `i`th Pack: one Deployment of one replica.
pub fn values(i: usize) -> serde_json::Value {
    json!({"gonbad": {"workloads": {"app": {
        "replicaCount": 1,
        "annotations": {"bench": i.to_string()},
        "containers": {"app": {"image": {"repository": "nginx", "tag": "1.27"}}},
    }}}})
}

/// The name of the Secret that holds the values of Pack `pack` in the `valuesFrom` variant.
fn values_secret_name(pack: &str) -> String {
    format!("values-{pack}")
}

/// Pack `name` (the `i`th) of genpack `^1` from ClusterPackRepository `repo`, as `variant` asks.
pub fn pack(name: &str, repo: &str, i: usize, variant: &Variant) -> Pack {
    let mut spec = json!({
        "chart": {"repository": {"kind": "ClusterPackRepository", "name": repo}, "name": "genpack", "version": "^1"},
    });
    if variant.values_from {
        let secret = values_secret_name(name);
        spec["valuesFrom"] = json!([
            {"kind": "Secret", "name": secret},
            {"kind": "Secret", "name": secret, "valuesKey": "tag", "targetPath": TAG_PATH},
        ]);
    } else {
        spec["values"] = values(i);
    }
    if variant.wait {
        spec["wait"] = json!(true);
    }
    if let Some(mode) = &variant.drift {
        spec["driftDetection"] = json!({"mode": mode});
    }
    serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid Pack")
}

/// Creates the `i`th Pack `name` in `ns` (and, for `valuesFrom`, its Secret first).
pub async fn create_pack(
    client: &Client,
    ns: &str,
    name: &str,
    i: usize,
    repo: &str,
    variant: &Variant,
) -> anyhow::Result<()> {
    if variant.values_from {
        let mut doc = values(i);
        // The tag comes from its own key by targetPath: left out of the document.
        doc["gonbad"]["workloads"]["app"]["containers"]["app"]["image"]
            .as_object_mut()
            .expect("image map")
            .remove("tag");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": values_secret_name(name)},
            // JSON is YAML.
            "stringData": {"values.yaml": doc.to_string(), "tag": "1.27"},
        }))?;
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await
            .with_context(|| format!("create the values Secret of {name}"))?;
    }
    Api::<Pack>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pack(name, repo, i, variant))
        .await
        .with_context(|| format!("create Pack {name}"))?;
    Ok(())
}

/// Creates ClusterPackRepository `name` for `url` refreshed every `interval`; `insecure` for a registry
/// over plain HTTP.
pub async fn create_repository(
    client: &Client,
    name: &str,
    url: &str,
    interval: &str,
    insecure: bool,
) -> anyhow::Result<()> {
    let mut spec = json!({"url": url, "interval": interval});
    if insecure {
        spec["insecure"] = json!(true);
    }
    let repo: ClusterPackRepository = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "ClusterPackRepository",
        "metadata": {"name": name},
        "spec": spec,
    }))?;
    Api::<ClusterPackRepository>::all(client.clone())
        .create(&PostParams::default(), &repo)
        .await?;
    Ok(())
}

/// Creates `n` Secrets of 2 KiB of data each in `ns`, which no Pack names.
pub async fn create_unrelated_secrets(client: &Client, ns: &str, n: usize) -> anyhow::Result<()> {
    create_all(client, n, 32, |i| {
        let data = format!("{i:08}").repeat(256);
        let mut secret = Secret::default();
        secret.metadata.name = Some(format!("unrelated-{i}"));
        secret.data = Some([("data".to_owned(), ByteString(data.into_bytes()))].into());
        (ns.to_owned(), Obj::Secret(secret))
    })
    .await
}

/// Plays the kubelet for `spec.wait`: every 500 ms, marks the Pods of each new Deployment in
/// `namespaces` running and ready ([`e2e::workloads::mark_deployment_pods_ready`], 8 at a time), so the
/// Deployment controller makes the Deployment available. Runs until aborted.
pub fn spawn_ready_marker(
    client: Client,
    namespaces: &'static [&'static str],
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut marked: HashSet<(String, String)> = HashSet::new();
        loop {
            let mut new = Vec::new();
            for ns in namespaces {
                let api = Api::<Deployment>::namespaced(client.clone(), ns);
                let Ok(list) = api.list(&ListParams::default()).await else {
                    continue;
                };
                for d in list.items {
                    let key = (ns.to_string(), d.metadata.name.clone().unwrap_or_default());
                    // The ReplicaSet exists (its Pods follow) once status.replicas is set.
                    let started = d.status.and_then(|s| s.replicas).unwrap_or(0) > 0;
                    if started && marked.insert(key.clone()) {
                        new.push(key);
                    }
                }
            }
            stream::iter(new)
                .for_each_concurrent(8, |(ns, name)| {
                    let client = client.clone();
                    async move {
                        e2e::workloads::mark_deployment_pods_ready(&client, &ns, &name).await;
                    }
                })
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}
