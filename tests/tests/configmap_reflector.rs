//! ConfigMapReflector on the real control plane: the safety scenarios of the SecretReflector tests
//! (tests/tests/reflector.rs) for ConfigMaps. Each test runs its own controller with
//! `--kinds=configmap`, scoped to its source namespace (`--namespace`).

use std::{collections::BTreeMap, time::Duration};

use common::crd::{ConfigMapReflector, SecretReflector};
use e2e::{
    TestEnv,
    controller::ControllerProcess,
    events::wait_event,
    reflectors::{self, POLL, WAIT, state, wait_metric},
    test_env, wait,
};
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Namespace},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const ACCEPT_LABEL: &str = "pack-operator.k8s.kubit.ir/accept-reflections";
const REFLECT_FROM: &str = "pack-operator.k8s.kubit.ir/reflect-from";
fn start_controller(env: &TestEnv, ns: &str, extra: &[String]) -> ControllerProcess {
    let mut args = vec!["--kinds=configmap".to_owned()];
    args.extend(extra.iter().cloned());
    reflectors::start_controller(env, ns, "cm-reflector", &args)
}

async fn patch_namespace(client: &Client, ns: &str, metadata: serde_json::Value) {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": metadata })),
        )
        .await
        .unwrap();
}

async fn create_configmap(
    client: &Client,
    ns: &str,
    name: &str,
    body: serde_json::Value,
) -> ConfigMap {
    let mut cm: ConfigMap = serde_json::from_value(body).unwrap();
    cm.metadata.name = Some(name.to_owned());
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap()
}

/// A source with `data` {setting: value} and `binaryData` {blob: [0, 1, 2]}.
async fn source(client: &Client, ns: &str, name: &str, value: &str) -> ConfigMap {
    create_configmap(
        client,
        ns,
        name,
        json!({
            "metadata": { "labels": { "team": "web" } },
            "data": { "setting": value },
            "binaryData": { "blob": "AAEC" }
        }),
    )
    .await
}

async fn set_source(client: &Client, ns: &str, name: &str, value: &str) {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "setting": value } })),
        )
        .await
        .unwrap();
}

async fn reflector(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let r: ConfigMapReflector = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "ConfigMapReflector",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    Api::<ConfigMapReflector>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &r)
        .await
        .unwrap();
}

async fn get(client: &Client, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn value_of(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("setting"))
        .cloned()
        .unwrap_or_default()
}

async fn wait_copy(client: &Client, ns: &str, name: &str, value: &str) -> ConfigMap {
    wait::until(
        &format!("copy {ns}/{name} with setting={value}"),
        WAIT,
        POLL,
        || async {
            match get(client, ns, name).await {
                Some(cm) if value_of(&cm) == value => Ok(Some(cm)),
                Some(cm) => Err(format!("setting={}", value_of(&cm))),
                None => Err("absent".to_owned()),
            }
        },
    )
    .await
}

async fn wait_absent(client: &Client, ns: &str, name: &str) {
    wait::until(&format!("no ConfigMap {ns}/{name}"), WAIT, POLL, || async {
        match get(client, ns, name).await {
            None => Ok(Some(())),
            Some(cm) => Err(format!("present, setting={}", value_of(&cm))),
        }
    })
    .await
}

async fn get_reflector(client: &Client, ns: &str, name: &str) -> Option<ConfigMapReflector> {
    reflectors::get_reflector(client, ns, name).await
}

async fn wait_status(
    client: &Client,
    ns: &str,
    name: &str,
    targets: &[String],
    summary: &str,
    ready: &str,
) -> ConfigMapReflector {
    reflectors::wait_status(client, ns, name, targets, summary, ready).await
}

async fn wait_gone(client: &Client, ns: &str, name: &str) {
    wait::until("the ConfigMapReflector gone", WAIT, POLL, || async {
        match get_reflector(client, ns, name).await {
            None => Ok(Some(())),
            Some(r) => Err(r.metadata.finalizers),
        }
    })
    .await;
}

#[tokio::test]
async fn configmap_copies_carry_data_and_binary_data_a_foreign_configmap_is_untouched_and_cleanup_is_exact()
 {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("cmr-conf").await;
    let taken = env.namespace("cmr-conf-taken").await;
    let free = env.namespace("cmr-conf-free").await;
    let foreign = create_configmap(
        &client,
        &taken.name,
        "settings",
        json!({ "data": { "mine": "yes" } }),
    )
    .await;
    let controller = start_controller(&env, &src.name, &[]);
    source(&client, &src.name, "settings", "v1").await;
    reflector(
        &client,
        &src.name,
        "shared",
        json!({ "source": { "name": "settings" }, "targets": { "namespaces": [taken.name, free.name] } }),
    )
    .await;
    let copy = wait_copy(&client, &free.name, "settings", "v1").await;
    assert_eq!(
        copy.binary_data,
        Some(BTreeMap::from([(
            "blob".to_owned(),
            ByteString(vec![0, 1, 2])
        )]))
    );
    assert_eq!(
        copy.metadata
            .labels
            .unwrap_or_default()
            .get("team")
            .map(String::as_str),
        Some("web")
    );
    let r = wait_status(
        &client,
        &src.name,
        "shared",
        &[state(&taken.name, "Conflict"), state(&free.name, "Synced")],
        "1/2",
        "False/Conflict",
    )
    .await;
    let message = r
        .status
        .unwrap()
        .targets
        .into_iter()
        .find(|t| t.namespace == taken.name)
        .and_then(|t| t.message)
        .unwrap_or_default();
    assert!(
        message.contains("ConfigMap settings exists and is not managed by a ConfigMapReflector"),
        "{message}"
    );
    let note = wait_event(&client, &src.name, "shared", "Conflict", "").await;
    assert!(note.contains(&taken.name), "{note}");
    wait_metric(&controller, "reflector_conflicts{kind=\"configmap\"}", 1.0).await;
    wait_metric(
        &controller,
        "reflector_copies_managed{kind=\"configmap\"}",
        1.0,
    )
    .await;

    // A source change reaches the copy; the foreign ConfigMap stays byte for byte.
    set_source(&client, &src.name, "settings", "v2").await;
    wait_copy(&client, &free.name, "settings", "v2").await;
    // A hand edit of the copy is restored.
    Api::<ConfigMap>::namespaced(client.clone(), &free.name)
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "setting": "edited", "extra": "x" } })),
        )
        .await
        .unwrap();
    let restored = wait_copy(&client, &free.name, "settings", "v2").await;
    assert!(!restored.data.unwrap_or_default().contains_key("extra"));
    wait::holds(
        "the foreign ConfigMap unchanged",
        Duration::from_secs(2),
        POLL,
        || async {
            let now = get(&client, &taken.name, "settings").await.unwrap();
            if now.metadata.resource_version == foreign.metadata.resource_version
                && now.data == foreign.data
            {
                Ok(())
            } else {
                Err(now.metadata.resource_version)
            }
        },
    )
    .await;

    // Deleting the reflector deletes its copy, and nothing else.
    Api::<ConfigMapReflector>::namespaced(client.clone(), &src.name)
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    wait_absent(&client, &free.name, "settings").await;
    wait_gone(&client, &src.name, "shared").await;
    let now = get(&client, &taken.name, "settings").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(
        value_of(&get(&client, &src.name, "settings").await.unwrap()),
        "v2"
    );
    wait_metric(&controller, "reflector_conflicts{kind=\"configmap\"}", 0.0).await;
}

#[tokio::test]
async fn refused_namespaces_get_no_configmap_copy() {
    // Opt-out label, the deny list and (consent mode) a namespace that has not consented.
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("cmr-opt").await;
    let accepting = env.namespace("cmr-opt-yes").await;
    let opted_out = env.namespace("cmr-opt-no").await;
    let denied = env.namespace("cmr-opt-denied").await;
    let silent = env.namespace("cmr-opt-silent").await;
    for ns in [&accepting.name, &opted_out.name, &denied.name] {
        patch_namespace(
            &client,
            ns,
            json!({ "annotations": { REFLECT_FROM: src.name } }),
        )
        .await;
    }
    patch_namespace(
        &client,
        &opted_out.name,
        json!({ "labels": { ACCEPT_LABEL: "false" } }),
    )
    .await;
    let _controller = start_controller(
        &env,
        &src.name,
        &[
            format!("--deny-target-namespaces=kube-*,{}", denied.name),
            "--require-consent".to_owned(),
        ],
    );
    source(&client, &src.name, "settings", "v1").await;
    reflector(
        &client,
        &src.name,
        "shared",
        json!({ "source": { "name": "settings" }, "targets": { "namespaces":
            [accepting.name, opted_out.name, denied.name, silent.name] } }),
    )
    .await;
    wait_copy(&client, &accepting.name, "settings", "v1").await;
    wait_status(
        &client,
        &src.name,
        "shared",
        &[
            state(&accepting.name, "Synced"),
            state(&opted_out.name, "OptedOut"),
            state(&denied.name, "Denied"),
            state(&silent.name, "NotConsented"),
        ],
        "1/1",
        "True/Synced",
    )
    .await;
    for ns in [&opted_out.name, &denied.name, &silent.name] {
        assert!(get(&client, ns, "settings").await.is_none(), "{ns}");
    }
    // Opting out later removes the copy already made.
    patch_namespace(
        &client,
        &accepting.name,
        json!({ "labels": { ACCEPT_LABEL: "false" } }),
    )
    .await;
    wait_absent(&client, &accepting.name, "settings").await;
}

#[tokio::test]
async fn configmap_copies_of_a_reflector_gone_without_its_cleanup_are_removed_at_start() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("cmr-orphan").await;
    let a = env.namespace("cmr-orphan-a").await;
    let b = env.namespace("cmr-orphan-b").await;
    let controller = start_controller(&env, &src.name, &[]);
    source(&client, &src.name, "settings", "v1").await;
    for (name, ns) in [("gone", &a.name), ("kept", &b.name)] {
        reflector(
            &client,
            &src.name,
            name,
            json!({ "source": { "name": "settings" }, "targets": { "namespaces": [ns] } }),
        )
        .await;
    }
    wait_copy(&client, &a.name, "settings", "v1").await;
    let kept = wait_copy(&client, &b.name, "settings", "v1").await;
    drop(controller);

    let reflectors = Api::<ConfigMapReflector>::namespaced(client.clone(), &src.name);
    reflectors
        .patch(
            "gone",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
    reflectors
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&client, &src.name, "gone").await;
    assert!(get(&client, &a.name, "settings").await.is_some());

    let controller = start_controller(&env, &src.name, &[]);
    wait_absent(&client, &a.name, "settings").await;
    assert!(
        controller
            .logs()
            .contains("deleted a copy whose ConfigMapReflector no longer exists"),
        "{}",
        controller.logs()
    );
    let after = get(&client, &b.name, "settings").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        kept.metadata.resource_version
    );
}

#[tokio::test]
async fn kube_root_ca_and_owned_configmaps_are_refused_as_sources() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("cmr-refused").await;
    let target = env.namespace("cmr-refused-t").await;
    let _controller = start_controller(&env, &src.name, &[]);
    // kube-controller-manager publishes kube-root-ca.crt in every namespace when it has a root CA;
    // the test cluster's has none, so the test plays its part (the refusal goes by name).
    if get(&client, &src.name, "kube-root-ca.crt").await.is_none() {
        create_configmap(
            &client,
            &src.name,
            "kube-root-ca.crt",
            json!({ "data": { "ca.crt": "not a real CA" } }),
        )
        .await;
    }
    let owner = create_configmap(&client, &src.name, "owner", json!({})).await;
    create_configmap(
        &client,
        &src.name,
        "owned",
        json!({
            "metadata": { "ownerReferences": [{
                "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                "uid": owner.metadata.uid.clone().unwrap()
            }] },
            "data": { "setting": "x" }
        }),
    )
    .await;
    for (name, says) in [
        ("kube-root-ca.crt", "root CA publisher"),
        ("owned", "owned by ConfigMap owner"),
    ] {
        reflector(
            &client,
            &src.name,
            &name.replace('.', "-"),
            json!({ "source": { "name": name }, "targets": { "namespaces": [target.name] },
                    "targetName": "copied" }),
        )
        .await;
        let r = wait_status(
            &client,
            &src.name,
            &name.replace('.', "-"),
            &[],
            "0/1",
            "False/SourceTypeUnsupported",
        )
        .await;
        let status = r.status.unwrap();
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert!(ready.message.contains(says), "{}", ready.message);
    }
    assert!(get(&client, &target.name, "copied").await.is_none());
}

#[tokio::test]
async fn selectors_with_invalid_label_keys_or_values_are_refused_for_both_kinds() {
    // A selector no namespace could ever match used to be accepted and show Ready=True Synced 0/0.
    let env = test_env();
    let client = env.client().await;
    let ns = env.namespace("cmr-invalid").await;
    for kind in ["SecretReflector", "ConfigMapReflector"] {
        let create = |selector: serde_json::Value| {
            let client = client.clone();
            let ns = ns.name.clone();
            async move {
                let body = json!({
                    "apiVersion": "k8s.kubit.ir/v1alpha1",
                    "kind": kind,
                    "metadata": { "generateName": "r-" },
                    "spec": { "source": { "name": "src" }, "targets": { "namespaceSelector": selector } },
                });
                if kind == "SecretReflector" {
                    let r: SecretReflector = serde_json::from_value(body).unwrap();
                    Api::<SecretReflector>::namespaced(client, &ns)
                        .create(&PostParams::default(), &r)
                        .await
                        .map(|_| ())
                } else {
                    let r: ConfigMapReflector = serde_json::from_value(body).unwrap();
                    Api::<ConfigMapReflector>::namespaced(client, &ns)
                        .create(&PostParams::default(), &r)
                        .await
                        .map(|_| ())
                }
            }
        };
        for (selector, says) in [
            (
                json!({ "matchLabels": { "Not A Key!": "x" } }),
                "every key must be a label key",
            ),
            (
                json!({ "matchExpressions": [{ "key": "Not A Key!", "operator": "Exists" }] }),
                "every key must be a label key",
            ),
            (
                json!({ "matchLabels": { "team": "not a value" } }),
                "every value must be a label value",
            ),
            (
                json!({ "matchExpressions": [{ "key": "team", "operator": "In", "values": ["a b"] }] }),
                "every value must be a label value",
            ),
        ] {
            match create(selector.clone()).await {
                Err(kube::Error::Api(s)) => {
                    assert_eq!(s.code, 422, "{kind} {selector}: {s:?}");
                    assert!(s.message.contains(says), "{kind} {selector}: {}", s.message);
                }
                other => panic!("{kind} {selector} was not rejected: {other:?}"),
            }
        }
        for selector in [
            json!({ "matchLabels": { "example.com/team": "web", "tier": "" } }),
            json!({ "matchExpressions": [{ "key": "app.kubernetes.io/name", "operator": "In", "values": ["a.b_c-1"] }] }),
        ] {
            create(selector.clone())
                .await
                .unwrap_or_else(|e| panic!("{kind} {selector} was rejected: {e}"));
        }
    }
}
