//! redeploy-controller on the real control plane (kube-controller-manager makes ReplicaSets, so a
//! rollout is visible as a new ReplicaSet / a new pod-template generation).

use std::time::Duration;

use e2e::{
    TestEnv,
    cluster::TestNamespace,
    controller::ControllerProcess,
    events::{events_for, wait_event},
    test_env,
    tools::{tool, workspace_root},
    wait,
};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    core::v1::{ConfigMap, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Deadline of every wait: generous, because a loaded 2-core CI machine is slow, and a deadline costs
/// nothing when the awaited thing happens.
const PATIENCE: Duration = Duration::from_secs(60);
const ANNOTATION: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy";
const HASHES: &str = "pack-operator.k8s.kubit.ir/watched-hashes";
const DELAY: Duration = Duration::from_secs(2);
/// The pod label of every workload here; the genpack test chart uses the same.
const APP: &str = "app.kubernetes.io/name";

fn start_controller(env: &TestEnv, ns: &str, identity: &str) -> ControllerProcess {
    let args = [
        format!("--namespace={ns}"),
        format!("--lease-namespace={ns}"),
        "--lease-name=redeploy".to_owned(),
        format!("--delay={}s", DELAY.as_secs()),
        "--lease-duration=3s".to_owned(),
        "--renew-deadline=2s".to_owned(),
        "--retry-period=500ms".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControllerProcess::start(env, "redeploy-controller", identity, &args)
        .expect("start redeploy-controller")
}

fn pod_spec(name: &str) -> serde_json::Value {
    json!({
        "selector": { "matchLabels": { APP: name } },
        "template": { "metadata": { "labels": { APP: name } }, "spec": { "containers": [{ "name": "c", "image": "nginx" }] } }
    })
}

async fn create<K>(client: &Client, ns: &str, obj: serde_json::Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).unwrap();
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap()
}

async fn configmap(client: &Client, ns: &str, name: &str, data: serde_json::Value) {
    create::<ConfigMap>(
        client,
        ns,
        json!({ "metadata": { "name": name }, "data": data }),
    )
    .await;
}

async fn patch_cm(client: &Client, ns: &str, name: &str, patch: serde_json::Value) {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn deployment(client: &Client, ns: &str, name: &str, watch: &str, replicas: i32) {
    let mut spec = pod_spec(name);
    spec["replicas"] = json!(replicas);
    create::<Deployment>(
        client,
        ns,
        json!({
            "metadata": { "name": name, "annotations": { ANNOTATION: watch } },
            "spec": spec
        }),
    )
    .await;
}

async fn replicasets(client: &Client, ns: &str, app: &str) -> usize {
    Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{APP}={app}")))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

async fn wait_replicasets(client: &Client, ns: &str, app: &str, want: usize, timeout: Duration) {
    wait::until(
        &format!("{want} ReplicaSet(s) of {app}"),
        timeout,
        Duration::from_millis(100),
        || async {
            let n = replicasets(client, ns, app).await;
            if n == want { Ok(Some(())) } else { Err(n) }
        },
    )
    .await;
}

/// Asserts the ReplicaSet count of `app` stays `want` for `period` (no extra rollout).
async fn hold_replicasets(client: &Client, ns: &str, app: &str, want: usize, period: Duration) {
    wait::holds(
        &format!("{want} ReplicaSet(s) of {app}"),
        period,
        Duration::from_millis(200),
        || async {
            let n = replicasets(client, ns, app).await;
            if n == want { Ok(()) } else { Err(n) }
        },
    )
    .await;
}

async fn wait_recorded<K>(client: &Client, ns: &str, name: &str) -> String
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(client.clone(), ns);
    wait::until(
        &format!("hashes recorded on {name}"),
        PATIENCE,
        Duration::from_millis(100),
        || async {
            let obj = api.get(name).await.map_err(|e| e.to_string())?;
            Ok::<_, String>(
                obj.meta()
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HASHES).cloned()),
            )
        },
    )
    .await
}

/// A namespace with ConfigMap `cfg` and Deployment `app` watching it, a controller running, and the
/// baseline recorded (one ReplicaSet).
async fn watched_app(env: &TestEnv, prefix: &str) -> (TestNamespace, Client, ControllerProcess) {
    let ns = env.namespace(prefix).await;
    let client = env.client().await;
    configmap(&client, &ns.name, "cfg", json!({ "a": "1" })).await;
    deployment(&client, &ns.name, "app", "configmap/cfg", 1).await;
    let controller = start_controller(env, &ns.name, &format!("{prefix}-1"));
    wait_recorded::<Deployment>(&client, &ns.name, "app").await;
    wait_replicasets(&client, &ns.name, "app", 1, PATIENCE).await;
    (ns, client, controller)
}

#[tokio::test]
async fn readme_sample_rolls_once_per_data_change_and_never_for_metadata() {
    let env = test_env();
    let ns = env.namespace("rd-sample").await;
    let client = env.client().await;
    configmap(
        &client,
        &ns.name,
        "test-cm-1",
        json!({ "var1": "value1", "var2": "value2" }),
    )
    .await;
    deployment(&client, &ns.name, "test", "configmap/test-cm-1", 1).await;
    let _controller = start_controller(&env, &ns.name, "rd-sample");

    // First sight records a baseline and does not roll.
    wait_recorded::<Deployment>(&client, &ns.name, "test").await;
    wait_replicasets(&client, &ns.name, "test", 1, PATIENCE).await;
    hold_replicasets(&client, &ns.name, "test", 1, DELAY + Duration::from_secs(1)).await;

    // A data change: exactly one new ReplicaSet, after the delay.
    patch_cm(
        &client,
        &ns.name,
        "test-cm-1",
        json!({ "data": { "var1": "changed" } }),
    )
    .await;
    wait_replicasets(
        &client,
        &ns.name,
        "test",
        2,
        DELAY + Duration::from_secs(10),
    )
    .await;
    hold_replicasets(&client, &ns.name, "test", 2, DELAY + Duration::from_secs(1)).await;
    let note = wait_event(&client, &ns.name, "test", "Redeployed", "").await;
    assert!(
        note.contains("configmap/test-cm-1"),
        "Event names the source: {note}"
    );

    // Labels and annotations only, and a no-op write: nothing.
    patch_cm(
        &client,
        &ns.name,
        "test-cm-1",
        json!({ "metadata": { "labels": { "team": "a" }, "annotations": { "x": "y" } } }),
    )
    .await;
    patch_cm(
        &client,
        &ns.name,
        "test-cm-1",
        json!({ "data": { "var1": "changed" } }),
    )
    .await;
    hold_replicasets(&client, &ns.name, "test", 2, DELAY + Duration::from_secs(2)).await;

    // Three data changes within the delay: exactly one rollout.
    for v in ["a", "b", "c"] {
        patch_cm(
            &client,
            &ns.name,
            "test-cm-1",
            json!({ "data": { "var2": v } }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_replicasets(
        &client,
        &ns.name,
        "test",
        3,
        DELAY + Duration::from_secs(10),
    )
    .await;
    hold_replicasets(&client, &ns.name, "test", 3, DELAY + Duration::from_secs(2)).await;
}

#[tokio::test]
async fn secret_statefulset_daemonset_and_two_sources() {
    let env = test_env();
    let ns = env.namespace("rd-kinds").await;
    let client = env.client().await;
    create::<Secret>(
        &client,
        &ns.name,
        json!({ "metadata": { "name": "sec-2" }, "stringData": { "password": "one" } }),
    )
    .await;
    configmap(&client, &ns.name, "cm-a", json!({ "k": "1" })).await;
    let mut sts = pod_spec("db");
    sts["serviceName"] = json!("db");
    create::<StatefulSet>(&client, &ns.name, json!({ "metadata": { "name": "db", "annotations": { ANNOTATION: "secret/sec-2" } }, "spec": sts })).await;
    create::<DaemonSet>(&client, &ns.name, json!({
        "metadata": { "name": "agent", "annotations": { ANNOTATION: "configmap/cm-a,\n secret/sec-2" } }, "spec": pod_spec("agent")
    }))
    .await;
    let _controller = start_controller(&env, &ns.name, "rd-kinds");
    wait_recorded::<StatefulSet>(&client, &ns.name, "db").await;
    wait_recorded::<DaemonSet>(&client, &ns.name, "agent").await;
    let sts_api = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    let ds_api = Api::<DaemonSet>::namespaced(client.clone(), &ns.name);
    let gen_sts = || async {
        sts_api
            .get("db")
            .await
            .unwrap()
            .metadata
            .generation
            .unwrap()
    };
    let gen_ds = || async {
        ds_api
            .get("agent")
            .await
            .unwrap()
            .metadata
            .generation
            .unwrap()
    };
    assert_eq!(
        (gen_sts().await, gen_ds().await),
        (1, 1),
        "recording the baseline does not touch the pod template"
    );

    // The Secret changes: both roll, each exactly once (one new pod-template generation).
    Api::<Secret>::namespaced(client.clone(), &ns.name)
        .patch(
            "sec-2",
            &PatchParams::default(),
            &Patch::Merge(&json!({ "stringData": { "password": "two" } })),
        )
        .await
        .unwrap();
    wait::until(
        "both rolled",
        DELAY + Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let g = (gen_sts().await, gen_ds().await);
            if g == (2, 2) { Ok(Some(())) } else { Err(g) }
        },
    )
    .await;
    // The DaemonSet's other source changes: only the DaemonSet rolls.
    patch_cm(&client, &ns.name, "cm-a", json!({ "data": { "k": "2" } })).await;
    wait::until(
        "the DaemonSet rolled again",
        DELAY + Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            let g = gen_ds().await;
            if g == 3 { Ok(Some(())) } else { Err(g) }
        },
    )
    .await;
    wait::holds(
        "no further rollouts",
        DELAY + Duration::from_secs(1),
        Duration::from_millis(200),
        || async {
            let g = (gen_sts().await, gen_ds().await);
            if g == (2, 3) { Ok(()) } else { Err(g) }
        },
    )
    .await;
    // Secret data never reaches Events.
    for name in ["db", "agent"] {
        for note in events_for(&client, &ns.name, name, "Redeployed").await {
            assert!(
                !note.contains("one") && !note.contains("two"),
                "Event leaks Secret data: {note}"
            );
        }
    }
}

#[tokio::test]
async fn restart_during_the_delay_rolls_exactly_once_and_a_quiet_restart_rolls_nothing() {
    let env = test_env();
    let (ns, client, mut controller) = watched_app(&env, "rd-restart").await;

    // Change, then the controller dies before the delay ends; its successor acts once.
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "2" } })).await;
    tokio::time::sleep(DELAY / 4).await;
    controller.kill();
    hold_replicasets(&client, &ns.name, "app", 1, DELAY).await;
    let mut controller = start_controller(&env, &ns.name, "rd-restart-2");
    wait_replicasets(&client, &ns.name, "app", 2, PATIENCE).await;
    hold_replicasets(&client, &ns.name, "app", 2, DELAY + Duration::from_secs(2)).await;

    // A change made while no controller runs is acted on when one comes back.
    controller.kill();
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "3" } })).await;
    let mut controller = start_controller(&env, &ns.name, "rd-restart-3");
    wait_replicasets(&client, &ns.name, "app", 3, PATIENCE).await;

    // Restarts with no change roll nothing.
    controller.terminate();
    let _ = controller.wait_exit(Duration::from_secs(10)).await;
    let _controller = start_controller(&env, &ns.name, "rd-restart-4");
    hold_replicasets(&client, &ns.name, "app", 3, DELAY + Duration::from_secs(4)).await;
}

#[tokio::test]
async fn deletion_does_not_roll_and_recreation_does() {
    let env = test_env();
    let (ns, client, _controller) = watched_app(&env, "rd-delete").await;

    Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .delete("cfg", &DeleteParams::default())
        .await
        .unwrap();
    let note = wait_event(&client, &ns.name, "app", "WatchedObjectDeleted", "").await;
    assert!(note.contains("configmap/cfg"), "{note}");
    hold_replicasets(&client, &ns.name, "app", 1, DELAY + Duration::from_secs(1)).await;

    configmap(&client, &ns.name, "cfg", json!({ "a": "new" })).await;
    wait_replicasets(&client, &ns.name, "app", 2, DELAY + Duration::from_secs(10)).await;
}

/// Waits until the controller counts exactly `want` invalid Deployment annotations.
async fn wait_invalid_annotations(controller: &ControllerProcess, want: f64) {
    let flagged = wait::until(
        "invalid-annotation metric",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            match controller
                .metric("pack_operator_invalid_annotations_total{kind=\"Deployment\"}")
                .await
            {
                Ok(Some(v)) if v >= want => Ok(Some(v)),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(flagged, want);
}

#[tokio::test]
async fn invalid_annotation_warns_and_is_not_acted_on() {
    let env = test_env();
    let ns = env.namespace("rd-invalid").await;
    let client = env.client().await;
    configmap(&client, &ns.name, "cfg", json!({ "a": "1" })).await;
    // An object that got in without the admission policy (the e2e admission test scopes its binding to
    // its own namespaces; retry while a just-changed binding propagates).
    let api = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let bad: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "bad", "annotations": { ANNOTATION: "ConfigMap/cfg" } }, "spec": pod_spec("bad")
    }))
    .unwrap();
    wait::until(
        "the invalid Deployment to be created",
        PATIENCE,
        Duration::from_millis(250),
        || async {
            api.create(&PostParams::default(), &bad)
                .await
                .map(Some)
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let controller = start_controller(&env, &ns.name, "rd-invalid");
    let note = wait_event(&client, &ns.name, "bad", "InvalidAnnotation", "").await;
    assert!(
        note.contains("ConfigMap/cfg") && note.contains("configmap/"),
        "{note}"
    );
    wait_invalid_annotations(&controller, 1.0).await;
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "2" } })).await;
    wait_replicasets(&client, &ns.name, "bad", 1, PATIENCE).await;
    hold_replicasets(&client, &ns.name, "bad", 1, DELAY + Duration::from_secs(1)).await;
    let d = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("bad")
        .await
        .unwrap();
    assert!(
        !d.metadata.annotations.unwrap().contains_key(HASHES),
        "nothing recorded for an invalid annotation"
    );
    assert_eq!(
        controller.get("/healthz").await.unwrap().0,
        200,
        "the controller is alive"
    );
    // One Event per invalid value, not one per reconcile.
    assert_eq!(
        events_for(&client, &ns.name, "bad", "InvalidAnnotation")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn pack_annotation_redeploys_every_workload_of_its_release_once() {
    let env = test_env();
    let ns = env.namespace("rd-pack").await;
    let client = env.client().await;
    configmap(&client, &ns.name, "test-cm-1", json!({ "var1": "value1" })).await;
    // A Helm release installed as a user would, with the real helm CLI.
    let values = std::env::temp_dir().join(format!("{}-values.yaml", ns.name));
    std::fs::write(
        &values,
        "gonbad:\n  workloads:\n    web:\n      replicaCount: 1\n      containers:\n        web: {image: {repository: nginx}}\n    worker:\n      replicaCount: 2\n      containers:\n        web: {image: {repository: nginx}}\n",
    )
    .unwrap();
    helm_release(&env, &ns.name, "install", &values);
    let packs: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &kube::core::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "k8s.kubit.ir",
            "v1alpha1",
            "Pack",
        )),
    );
    let pack: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
        "metadata": { "name": "test", "annotations": { ANNOTATION: "configmap/test-cm-1" } },
        "spec": { "chart": { "repository": { "kind": "ClusterPackRepository", "name": "kubit-packs" }, "name": "genpack" } }
    }))
    .unwrap();
    packs.create(&PostParams::default(), &pack).await.unwrap();
    let _controller = start_controller(&env, &ns.name, "rd-pack");
    wait::until(
        "hashes recorded on the Pack",
        PATIENCE,
        Duration::from_millis(100),
        || async {
            let p = packs.get("test").await.map_err(|e| e.to_string())?;
            Ok::<_, String>(p.metadata.annotations.and_then(|a| a.get(HASHES).cloned()))
        },
    )
    .await;
    for app in ["test-web", "test-worker"] {
        wait_replicasets(&client, &ns.name, app, 1, DELAY + Duration::from_secs(15)).await;
    }

    patch_cm(
        &client,
        &ns.name,
        "test-cm-1",
        json!({ "data": { "var1": "changed" } }),
    )
    .await;
    for app in ["test-web", "test-worker"] {
        wait_replicasets(&client, &ns.name, app, 2, DELAY + Duration::from_secs(15)).await;
    }
    wait::holds(
        "one rollout each",
        DELAY + Duration::from_secs(2),
        Duration::from_millis(200),
        || async {
            let n = (
                replicasets(&client, &ns.name, "test-web").await,
                replicasets(&client, &ns.name, "test-worker").await,
            );
            if n == (2, 2) { Ok(()) } else { Err(n) }
        },
    )
    .await;
    let note = wait_event(&client, &ns.name, "test", "Redeployed", "").await;
    assert!(
        note.contains("Deployment/test-web") && note.contains("Deployment/test-worker"),
        "{note}"
    );

    // The template annotation survives a later helm upgrade of the chart that rendered the workloads.
    helm_release(&env, &ns.name, "upgrade", &values);
    wait::holds(
        "no rollout from helm upgrade",
        Duration::from_secs(3),
        Duration::from_millis(200),
        || async {
            let n = (
                replicasets(&client, &ns.name, "test-web").await,
                replicasets(&client, &ns.name, "test-worker").await,
            );
            if n == (2, 2) { Ok(()) } else { Err(n) }
        },
    )
    .await;
}

#[tokio::test]
async fn paused_deployment_is_not_touched_until_resumed() {
    let env = test_env();
    let (ns, client, _controller) = watched_app(&env, "rd-paused").await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let pause = |paused: bool| json!({ "spec": { "paused": paused } });
    deployments
        .patch("app", &PatchParams::default(), &Patch::Merge(&pause(true)))
        .await
        .unwrap();
    let generation = deployments.get("app").await.unwrap().metadata.generation;

    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "2" } })).await;
    let note = wait_event(&client, &ns.name, "app", "RedeployPaused", "").await;
    assert!(
        note.contains("paused") && note.contains("configmap/cfg"),
        "{note}"
    );
    wait::holds(
        "the paused Deployment's spec is untouched",
        Duration::from_secs(2),
        Duration::from_millis(200),
        || async {
            let g = deployments.get("app").await.unwrap().metadata.generation;
            if g == generation { Ok(()) } else { Err(g) }
        },
    )
    .await;

    // Resumed: the pending change rolls out (the controller re-checks paused workloads periodically).
    deployments
        .patch("app", &PatchParams::default(), &Patch::Merge(&pause(false)))
        .await
        .unwrap();
    wait_replicasets(&client, &ns.name, "app", 2, Duration::from_secs(45)).await;
}

/// `helm <verb> test tests/charts/genpack -n <ns> -f <values>` with the real helm CLI, as a user would.
fn helm_release(env: &TestEnv, ns: &str, verb: &str, values: &std::path::Path) {
    let out = std::process::Command::new(tool("helm").unwrap())
        .args([verb, "test"])
        .arg(workspace_root().join("tests/charts/genpack"))
        .args(["--namespace", ns, "--kubeconfig"])
        .arg(&env.kubeconfig)
        .arg("-f")
        .arg(values)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "helm {verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const AUTO: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy-auto";

/// A Deployment in auto mode (no explicit list) with `template_spec` as its pod spec.
async fn auto_deployment(client: &Client, ns: &str, name: &str, template_spec: serde_json::Value) {
    let mut spec = pod_spec(name);
    spec["template"]["spec"] = template_spec;
    create::<Deployment>(
        client,
        ns,
        json!({ "metadata": { "name": name, "annotations": { AUTO: "true" } }, "spec": spec }),
    )
    .await;
}

async fn patch_secret(client: &Client, ns: &str, name: &str, data: serde_json::Value) {
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": data })),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn auto_rolls_for_env_from_and_a_volume_secret_not_for_an_unused_key() {
    let env = test_env();
    let ns = env.namespace("rd-auto").await;
    let client = env.client().await;
    configmap(&client, &ns.name, "env", json!({ "LEVEL": "info" })).await;
    configmap(
        &client,
        &ns.name,
        "keys",
        json!({ "used": "1", "unused": "1" }),
    )
    .await;
    create::<Secret>(
        &client,
        &ns.name,
        json!({ "metadata": { "name": "tls" }, "stringData": { "tls.crt": "a" } }),
    )
    .await;
    auto_deployment(
        &client,
        &ns.name,
        "app",
        json!({
            "containers": [{ "name": "c", "image": "nginx",
                "envFrom": [{ "configMapRef": { "name": "env" } }],
                "env": [{ "name": "USED", "valueFrom": { "configMapKeyRef": { "name": "keys", "key": "used" } } }],
                "volumeMounts": [{ "name": "tls", "mountPath": "/tls" }] }],
            "volumes": [{ "name": "tls", "secret": { "secretName": "tls" } }],
            "imagePullSecrets": [{ "name": "not-watched" }]
        }),
    )
    .await;
    let _controller = start_controller(&env, &ns.name, "rd-auto");
    let recorded = wait_recorded::<Deployment>(&client, &ns.name, "app").await;
    for source in ["configmap/env", "configmap/keys:used", "secret/tls"] {
        assert!(recorded.contains(&format!("\"{source}\"")), "{recorded}");
    }
    assert!(!recorded.contains("not-watched"), "{recorded}");
    wait_replicasets(&client, &ns.name, "app", 1, PATIENCE).await;

    // A key the pod does not use: no rollout.
    patch_cm(
        &client,
        &ns.name,
        "keys",
        json!({ "data": { "unused": "2" } }),
    )
    .await;
    hold_replicasets(&client, &ns.name, "app", 1, DELAY + Duration::from_secs(2)).await;
    // envFrom: every key counts.
    patch_cm(
        &client,
        &ns.name,
        "env",
        json!({ "data": { "LEVEL": "debug" } }),
    )
    .await;
    wait_replicasets(&client, &ns.name, "app", 2, PATIENCE).await;
    // A Secret mounted as a volume.
    patch_secret(&client, &ns.name, "tls", json!({ "tls.crt": "b" })).await;
    wait_replicasets(&client, &ns.name, "app", 3, PATIENCE).await;
    // The key the pod uses.
    patch_cm(
        &client,
        &ns.name,
        "keys",
        json!({ "data": { "used": "2" } }),
    )
    .await;
    wait_replicasets(&client, &ns.name, "app", 4, PATIENCE).await;
    hold_replicasets(&client, &ns.name, "app", 4, DELAY + Duration::from_secs(1)).await;
}

#[tokio::test]
async fn auto_picks_up_a_new_reference_with_a_baseline_not_a_rollout() {
    let env = test_env();
    let ns = env.namespace("rd-auto-new").await;
    let client = env.client().await;
    configmap(&client, &ns.name, "one", json!({ "a": "1" })).await;
    configmap(&client, &ns.name, "two", json!({ "b": "1" })).await;
    let container = |from: serde_json::Value| json!({ "containers": [{ "name": "c", "image": "nginx", "envFrom": from }] });
    auto_deployment(
        &client,
        &ns.name,
        "app",
        container(json!([{ "configMapRef": { "name": "one" } }])),
    )
    .await;
    let _controller = start_controller(&env, &ns.name, "rd-auto-new");
    wait_recorded::<Deployment>(&client, &ns.name, "app").await;
    wait_replicasets(&client, &ns.name, "app", 1, PATIENCE).await;

    // The template starts using `two`: the template change is itself a rollout (2 ReplicaSets); the
    // controller only records `two`'s baseline.
    let api = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let template = container(json!([
        { "configMapRef": { "name": "one" } },
        { "configMapRef": { "name": "two" } }
    ]));
    api.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "template": { "spec": template } } })),
    )
    .await
    .unwrap();
    wait::until(
        "configmap/two recorded",
        PATIENCE,
        Duration::from_millis(100),
        || async {
            let d = api.get("app").await.map_err(|e| e.to_string())?;
            let hashes = d.metadata.annotations.unwrap_or_default().remove(HASHES);
            match hashes {
                Some(h) if h.contains("\"configmap/two\"") => Ok(Some(())),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    hold_replicasets(&client, &ns.name, "app", 2, DELAY + Duration::from_secs(2)).await;
    // From then on, `two` is watched.
    patch_cm(&client, &ns.name, "two", json!({ "data": { "b": "2" } })).await;
    wait_replicasets(&client, &ns.name, "app", 3, PATIENCE).await;
}

#[tokio::test]
async fn invalid_auto_or_delay_values_warn_and_are_not_acted_on() {
    let env = test_env();
    let ns = env.namespace("rd-auto-invalid").await;
    let client = env.client().await;
    configmap(&client, &ns.name, "cfg", json!({ "a": "1" })).await;
    let api = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let cases = [
        ("bad-auto", json!({ AUTO: "yes" }), AUTO),
        (
            "bad-delay",
            json!({ AUTO: "true", "pack-operator.k8s.kubit.ir/redeploy-delay": "abc" }),
            "redeploy-delay",
        ),
    ];
    for (name, annotations, _) in &cases {
        let mut spec = pod_spec(name);
        spec["template"]["spec"]["containers"][0]["envFrom"] =
            json!([{ "configMapRef": { "name": "cfg" } }]);
        let bad: Deployment = serde_json::from_value(json!({
            "metadata": { "name": name, "annotations": annotations }, "spec": spec
        }))
        .unwrap();
        // Objects that got in without the admission policy (retry while a binding propagates).
        wait::until(
            "the invalid Deployment to be created",
            PATIENCE,
            Duration::from_millis(250),
            || async {
                api.create(&PostParams::default(), &bad)
                    .await
                    .map(Some)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }
    let controller = start_controller(&env, &ns.name, "rd-auto-invalid");
    for (name, _, annotation) in &cases {
        let note = wait_event(&client, &ns.name, name, "InvalidAnnotation", "").await;
        assert!(
            note.contains(annotation) && note.contains("Nothing is watched"),
            "{note}"
        );
    }
    wait_invalid_annotations(&controller, 2.0).await;
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "2" } })).await;
    for (name, _, _) in &cases {
        wait_replicasets(&client, &ns.name, name, 1, PATIENCE).await;
        hold_replicasets(&client, &ns.name, name, 1, DELAY + Duration::from_secs(1)).await;
        let d = api.get(name).await.unwrap();
        assert!(
            !d.metadata.annotations.unwrap().contains_key(HASHES),
            "{name}"
        );
    }
}

#[tokio::test]
async fn cronjob_job_template_changes_for_its_next_job() {
    use k8s_openapi::api::batch::v1::CronJob;
    const CONFIG_HASH: &str = "pack-operator.k8s.kubit.ir/config-hash";
    let env = test_env();
    let ns = env.namespace("rd-cron").await;
    let client = env.client().await;
    configmap(&client, &ns.name, "cfg", json!({ "a": "1" })).await;
    create::<CronJob>(
        &client,
        &ns.name,
        json!({
            "metadata": { "name": "nightly", "annotations": { AUTO: "true" } },
            "spec": { "schedule": "0 3 * * *", "suspend": true, "jobTemplate": { "spec": { "template": { "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "c", "image": "busybox",
                    "env": [{ "name": "A", "valueFrom": { "configMapKeyRef": { "name": "cfg", "key": "a" } } }] }]
            } } } } }
        }),
    )
    .await;
    let _controller = start_controller(&env, &ns.name, "rd-cron");
    let recorded = wait_recorded::<CronJob>(&client, &ns.name, "nightly").await;
    assert!(recorded.contains("\"configmap/cfg:a\""), "{recorded}");
    let api = Api::<CronJob>::namespaced(client.clone(), &ns.name);
    let template_hash = |c: CronJob| {
        c.spec
            .job_template
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .and_then(|mut a| a.remove(CONFIG_HASH))
    };
    assert_eq!(template_hash(api.get("nightly").await.unwrap()), None);
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "2" } })).await;
    wait::until(
        "the job template's config hash",
        PATIENCE,
        Duration::from_millis(100),
        || async {
            let c = api.get("nightly").await.map_err(|e| e.to_string())?;
            Ok::<_, String>(template_hash(c))
        },
    )
    .await;
    let c = api.get("nightly").await.unwrap();
    assert_eq!(
        c.spec.suspend,
        Some(true),
        "only the job template is patched"
    );
}

#[tokio::test]
async fn namespace_list_and_selector_scope_what_is_acted_on() {
    use k8s_openapi::api::core::v1::Namespace;
    const SCOPE: &str = "pack-operator-e2e/redeploy-scope";
    let env = test_env();
    let ns = env.namespace("rd-scope").await;
    let client = env.client().await;
    configmap(&client, &ns.name, "cfg", json!({ "a": "1" })).await;
    deployment(&client, &ns.name, "app", "configmap/cfg", 1).await;
    // Two names: the controller watches cluster-wide and filters; the selector must hold too.
    let args = [
        format!("--namespace={},{}-elsewhere", ns.name, ns.name),
        format!("--namespace-selector={SCOPE}=on"),
        format!("--lease-namespace={}", ns.name),
        "--lease-name=redeploy".to_owned(),
        format!("--delay={}s", DELAY.as_secs()),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _controller = ControllerProcess::start(&env, "redeploy-controller", "rd-scope", &args)
        .expect("start redeploy-controller");
    wait_replicasets(&client, &ns.name, "app", 1, PATIENCE).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let recorded = || async {
        let d = deployments.get("app").await.unwrap();
        d.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(HASHES)
    };
    // Not selected: nothing recorded, a change rolls nothing.
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "2" } })).await;
    hold_replicasets(&client, &ns.name, "app", 1, DELAY + Duration::from_secs(2)).await;
    assert!(!recorded().await, "nothing recorded outside the scope");
    // Labelled into the selector: the workload is baselined (no rollout), then watched.
    Api::<Namespace>::all(client.clone())
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { SCOPE: "on" } } })),
        )
        .await
        .unwrap();
    wait_recorded::<Deployment>(&client, &ns.name, "app").await;
    hold_replicasets(&client, &ns.name, "app", 1, DELAY + Duration::from_secs(1)).await;
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "3" } })).await;
    wait_replicasets(&client, &ns.name, "app", 2, PATIENCE).await;
}

/// A minimal copy of Argo Rollouts' CRD: the API the controller discovers, no Argo controller.
async fn install_rollout_crd(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": { "name": "rollouts.argoproj.io" },
        "spec": {
            "group": "argoproj.io", "scope": "Namespaced",
            "names": { "kind": "Rollout", "listKind": "RolloutList", "plural": "rollouts", "singular": "rollout" },
            "versions": [{ "name": "v1alpha1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": { "type": "object", "properties": {
                    "spec": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true } } } },
                "subresources": { "status": {} } }]
        }
    }))
    .unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.patch(
        "rollouts.argoproj.io",
        &PatchParams::apply("pack-operator-e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    wait::until(
        "the Rollout API to be served",
        PATIENCE,
        Duration::from_millis(200),
        || async {
            match client
                .list_api_group_resources("argoproj.io/v1alpha1")
                .await
            {
                Ok(l) if l.resources.iter().any(|r| r.name == "rollouts") => Ok(Some(())),
                other => Err(format!("{:?}", other.map(|l| l.resources.len()))),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn argo_rollout_is_patched_through_its_pod_template_when_its_crd_exists() {
    use kube::{
        api::DynamicObject,
        core::{ApiResource, GroupVersionKind},
    };
    const CONFIG_HASH: &str = "pack-operator.k8s.kubit.ir/config-hash";
    let env = test_env();
    let ns = env.namespace("rd-argo").await;
    let client = env.client().await;
    install_rollout_crd(&client).await;
    configmap(&client, &ns.name, "cfg", json!({ "a": "1" })).await;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"));
    let rollouts = Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &ar);
    let rollout: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": { "name": "web", "annotations": { AUTO: "true" } },
        "spec": { "replicas": 1, "strategy": { "canary": { "steps": [{ "setWeight": 20 }] } },
            "selector": { "matchLabels": { APP: "web" } },
            "template": { "metadata": { "labels": { APP: "web" } }, "spec": { "containers": [{
                "name": "c", "image": "nginx", "envFrom": [{ "configMapRef": { "name": "cfg" } }] }] } } }
    }))
    .unwrap();
    rollouts
        .create(&PostParams::default(), &rollout)
        .await
        .unwrap();
    let _controller = start_controller(&env, &ns.name, "rd-argo");
    let annotation = |o: &DynamicObject, path: &[&str], key: &str| {
        let mut v = &o.data;
        for p in path {
            v = &v[p];
        }
        v["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_owned)
    };
    let read = || async { rollouts.get("web").await.map_err(|e| e.to_string()) };
    wait::until(
        "hashes recorded on the Rollout",
        PATIENCE,
        Duration::from_millis(100),
        || async {
            let o = read().await?;
            Ok::<_, String>(o.metadata.annotations.unwrap_or_default().remove(HASHES))
        },
    )
    .await;
    let before = read().await.unwrap();
    assert_eq!(
        annotation(&before, &["spec", "template"], CONFIG_HASH),
        None
    );
    patch_cm(&client, &ns.name, "cfg", json!({ "data": { "a": "2" } })).await;
    wait::until(
        "the Rollout's pod-template config hash",
        PATIENCE,
        Duration::from_millis(100),
        || async {
            let o = read().await?;
            Ok::<_, String>(annotation(&o, &["spec", "template"], CONFIG_HASH))
        },
    )
    .await;
    let after = read().await.unwrap();
    assert_eq!(
        after.data["spec"]["strategy"], before.data["spec"]["strategy"],
        "the rest untouched"
    );
}
