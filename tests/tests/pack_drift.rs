//! `spec.driftDetection` against the real API server and a running pack-controller: `kubectl scale` of a
//! release's Deployment is reported in mode `warn` (Drifted=True and an Event naming the object and the
//! path, never the value) and left as it is; in mode `enabled` it is reverted, while an annotation
//! another manager added stays; an `ignore` rule lets another manager own replicas while a changed image
//! is still corrected.

use std::time::Duration;

use common::crd::Pack;
use e2e::{
    chart::kubectl,
    events::wait_event,
    packs::{Want, create_genpack_pack, served_repository, start_pack_controller, wait_pack},
    test_env, wait,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(250);

/// The Drifted condition's (status, reason, message) once `f` accepts it.
async fn wait_drifted(
    packs: &Api<Pack>,
    name: &str,
    what: &str,
    f: impl Fn(&str, &str, &str) -> bool,
) -> (String, String, String) {
    wait::until(what, TIMEOUT, EVERY, || async {
        let p = packs.get(name).await.unwrap();
        let c = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Drifted").cloned());
        match c {
            Some(c) if f(&c.status, &c.reason, &c.message) => {
                Ok(Some((c.status, c.reason, c.message)))
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

async fn replicas(deployments: &Api<Deployment>) -> i32 {
    deployments
        .get("app-web")
        .await
        .unwrap()
        .spec
        .unwrap()
        .replicas
        .unwrap()
}

async fn image(deployments: &Api<Deployment>) -> String {
    let d = deployments.get("app-web").await.unwrap();
    d.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

/// Sets `spec.driftDetection` and waits until the controller has reconciled that generation (its Ready
/// condition observed it), so a change made next is judged by the new rules, not by a reconcile of the
/// old ones still under way.
async fn set_drift(packs: &Api<Pack>, detection: serde_json::Value) {
    packs
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"driftDetection": detection}})),
        )
        .await
        .unwrap();
    wait_pack(packs, "app", Want::default().current(), None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drift_is_reported_in_warn_mode_corrected_in_enabled_mode_and_ignored_fields_stay() {
    let env = test_env();
    let ns = env.namespace("pack-drift").await;
    let client = env.client().await;
    let repo = served_repository(&client, &ns.name, &format!("{}-repo", ns.name), &["0.1.0"]).await;
    let controller = start_pack_controller(&env, &ns.name, "pack-drift", &[]);
    let packs: Api<Pack> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create_genpack_pack(
        &client,
        &ns.name,
        "app",
        &repo.name,
        None,
        json!({"gonbad": {"workloads": {"web": {
            "replicaCount": 1,
            "containers": {"web": {"image": {"repository": "nginx"}}},
        }}}}),
    )
    .await;
    set_drift(&packs, json!({"mode": "warn"})).await;
    let (_, reason, _) = wait_drifted(&packs, "app", "no drift after install", |s, r, _| {
        s == "False" && r == "NoDrift"
    })
    .await;
    assert_eq!(reason, "NoDrift", "{}", controller.logs());
    let kc = &env.kubeconfig;
    let n = ns.name.as_str();

    // warn: scaled by hand, reported with the object and the path, not corrected.
    kubectl(
        kc,
        &["-n", n, "scale", "deployment", "app-web", "--replicas=3"],
        "",
    )
    .unwrap();
    kubectl(
        kc,
        &[
            "-n",
            n,
            "annotate",
            "deployment",
            "app-web",
            "example.com/owner=team-a",
        ],
        "",
    )
    .unwrap();
    let (_, _, message) = wait_drifted(&packs, "app", "Drifted=True", |s, r, _| {
        s == "True" && r == "DriftDetected"
    })
    .await;
    assert!(
        message.contains("Deployment/app-web: /spec/replicas"),
        "{message}"
    );
    assert!(
        !message.contains("owner") && !message.contains("team-a"),
        "an annotation only another manager sets is not drift: {message}"
    );
    let note = wait_event(&client, n, "app", "DriftDetected", "Deployment/app-web").await;
    assert!(
        !note.contains("replicas: 3") && !note.contains(" 3 "),
        "{note}"
    );
    assert_eq!(replicas(&deployments).await, 3, "warn corrects nothing");

    // enabled: reverted to the chart's value; the other manager's annotation stays.
    set_drift(&packs, json!({"mode": "enabled"})).await;
    wait::until("replicas reverted to 1", TIMEOUT, EVERY, || async {
        match replicas(&deployments).await {
            1 => Ok(Some(())),
            r => Err(r),
        }
    })
    .await;
    wait_event(&client, n, "app", "DriftCorrected", "/spec/replicas").await;
    let d = deployments.get("app-web").await.unwrap();
    assert_eq!(
        d.metadata
            .annotations
            .unwrap_or_default()
            .get("example.com/owner")
            .map(String::as_str),
        Some("team-a")
    );
    wait_drifted(
        &packs,
        "app",
        "Drifted=False after the correction",
        |s, _, _| s == "False",
    )
    .await;

    // ignore: replicas belong to someone else now; a changed image is still corrected, replicas stay.
    set_drift(
        &packs,
        json!({"mode": "enabled", "ignore": [
            {"paths": ["/spec/replicas"], "target": {"kind": "Deployment"}}
        ]}),
    )
    .await;
    let chart_image = image(&deployments).await;
    kubectl(
        kc,
        &["-n", n, "scale", "deployment", "app-web", "--replicas=5"],
        "",
    )
    .unwrap();
    kubectl(
        kc,
        &[
            "-n",
            n,
            "patch",
            "deployment",
            "app-web",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"nginx:drifted"}]"#,
        ],
        "",
    )
    .unwrap();
    wait::until("image corrected", TIMEOUT, EVERY, || async {
        let now = image(&deployments).await;
        if now == chart_image {
            Ok(Some(()))
        } else {
            Err(now)
        }
    })
    .await;
    let note = wait_event(
        &client,
        n,
        "app",
        "DriftCorrected",
        "/spec/template/spec/containers/0/image",
    )
    .await;
    assert!(!note.contains("nginx:drifted"), "no values: {note}");
    assert_eq!(
        replicas(&deployments).await,
        5,
        "an ignored field is applied as it is live"
    );
}
