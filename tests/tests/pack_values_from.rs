//! `spec.valuesFrom` against the real API server and the real helm: a Pack whose password comes from a
//! Secret reports the missing Secret and heals when it is created, installs with the password (helm has
//! it, the Pack does not), upgrades exactly once when the Secret is rotated (the Event names the Secret),
//! and the password appears nowhere the controller writes: its log, Events, the Pack, `/metrics` (raw and
//! base64).

use std::time::Duration;

use common::crd::{Pack, pack::PackState};
use e2e::{
    events::{events_of, wait_event},
    packs::{Want, helm, helm_operations, served_repository, start_pack_controller, wait_pack},
    test_env, wait,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(250);

const PASSWORD: &str = "pw-Zq8vN3xK7rT2mL9pWd";
const ROTATED: &str = "pw-Hj4kD8sW1qB6nC5xYe";

fn secret(password: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-credentials"},
        "stringData": {
            "password": password,
            "values.yaml": format!("auth:\n  user: app\n  dsn: 'postgres://app:{password}@{{{{ vars.HOST }}}}/db'\n"),
        },
    }))
    .unwrap()
}

/// Asserts that neither password, nor its base64, is in `text` (`what` names where it was looked for).
fn assert_absent(what: &str, text: &str) {
    for pw in [PASSWORD, ROTATED] {
        // A ByteString serializes as base64, as a Secret's data does.
        let encoded =
            serde_json::to_value(k8s_openapi::ByteString(pw.as_bytes().to_vec())).unwrap();
        let encoded = encoded.as_str().unwrap();
        for needle in [pw, encoded, encoded.trim_end_matches('=')] {
            assert!(
                !text.contains(needle),
                "{what} contains a Secret's password ({needle}):\n{text}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_password_from_a_secret_installs_rotates_once_and_is_never_shown() {
    let env = test_env();
    let ns = env.namespace("pack-vf").await;
    let client = env.client().await;
    let repo = served_repository(
        &client,
        &ns.name,
        &format!("{}-kubit-packs", ns.name),
        &["0.1.0"],
    )
    .await;
    let helm_home = repo.server.dir.parent().unwrap().join("helm-user");
    let kubeconfig = env.kubeconfig.to_str().unwrap().to_owned();
    let helm_values = || -> Value {
        let out = helm(
            &[
                "--kubeconfig",
                &kubeconfig,
                "-n",
                &ns.name,
                "get",
                "values",
                "app",
                "-o",
                "json",
            ],
            &helm_home,
        );
        serde_json::from_str(&out).unwrap()
    };
    let packs: Api<Pack> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let controller = start_pack_controller(&env, &ns.name, "pack-values-from", &[]);

    // Defaults from a ConfigMap; the password and a document from a Secret that does not exist yet.
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "defaults"},
                "data": {"values.yaml": "auth: {user: default, password: from-configmap}\nreplicas: 1\n"},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let pack: Pack = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "Pack",
        "metadata": {"name": "app"},
        "spec": {
            "chart": {
                "repository": {"kind": "ClusterPackRepository", "name": repo.name},
                "name": "genpack",
                "version": "~=0.1",
            },
            "vars": {"HOST": "pg.internal"},
            "valuesFrom": [
                {"kind": "ConfigMap", "name": "defaults"},
                {"kind": "Secret", "name": "db-credentials"},
                {"kind": "Secret", "name": "db-credentials", "valuesKey": "password",
                 "targetPath": "auth.password"},
                {"kind": "ConfigMap", "name": "absent", "optional": true},
            ],
            "values": {"replicas": 2},
        },
    }))
    .unwrap();
    packs.create(&PostParams::default(), &pack).await.unwrap();

    // Missing: reported, no Helm.
    let p = wait_pack(
        &packs,
        "app",
        Want::reason("ValuesSourceNotFound"),
        Some(&controller),
    )
    .await;
    let ready = p
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready
            .message
            .contains("Secret `db-credentials` (spec.valuesFrom[1]) does not exist")
            && ready.message.contains("optional: true"),
        "{}",
        ready.message
    );
    wait_event(
        &client,
        &ns.name,
        "app",
        "ValuesSourceNotFound",
        "db-credentials",
    )
    .await;
    assert_eq!(helm_operations(&controller).await, 0.0);

    // Created: the watch heals it (no resync needed: the default is 10 minutes).
    secrets
        .create(&PostParams::default(), &secret(PASSWORD))
        .await
        .unwrap();
    wait_pack(
        &packs,
        "app",
        Want::reason("Applied")
            .state(PackState::Applied)
            .revision(1),
        Some(&controller),
    )
    .await;
    let values = helm_values();
    assert_eq!(
        values,
        json!({
            "auth": {
                "user": "app",
                "password": PASSWORD,
                "dsn": format!("postgres://app:{PASSWORD}@pg.internal/db"),
            },
            "replicas": 2,
        }),
        "merge order: ConfigMap, Secret document, Secret targetPath, then values; vars applied"
    );

    // Rotated: exactly one upgrade, and the Event names the Secret.
    let before = helm_operations(&controller).await;
    let mut rotated = secret(ROTATED);
    rotated.metadata.resource_version = None;
    secrets
        .patch(
            "db-credentials",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": rotated.string_data})),
        )
        .await
        .unwrap();
    wait_pack(
        &packs,
        "app",
        Want::reason("Applied")
            .state(PackState::Applied)
            .revision(2),
        Some(&controller),
    )
    .await;
    let note = wait_event(
        &client,
        &ns.name,
        "app",
        "Upgraded",
        "values from Secret db-credentials changed",
    )
    .await;
    assert!(!note.contains(ROTATED), "{note}");
    assert_eq!(helm_values()["auth"]["password"], json!(ROTATED));
    wait::holds(
        "one helm upgrade for one rotation",
        Duration::from_secs(5),
        EVERY,
        || async {
            let n = helm_operations(&controller).await;
            if n == before + 1.0 { Ok(()) } else { Err(n) }
        },
    )
    .await;

    // Nowhere the controller writes.
    let pack = serde_json::to_string(&packs.get("app").await.unwrap()).unwrap();
    assert_absent("the Pack", &pack);
    let events = format!("{:?}", events_of(&client, &ns.name, "app").await);
    assert_absent("the Pack's Events", &events);
    let (code, metrics) = controller.get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert_absent("/metrics", &metrics);

    // Deleted: uninstalled (its finalizer would hold the namespace otherwise).
    packs.delete("app", &DeleteParams::default()).await.unwrap();
    wait::until("Pack app gone", TIMEOUT, EVERY, || async {
        match packs.get_opt("app").await.unwrap() {
            None => Ok(Some(())),
            Some(p) => Err(format!("{:?}", p.status.map(|s| s.state))),
        }
    })
    .await;
    assert_absent("the controller's log", &controller.logs());
}
