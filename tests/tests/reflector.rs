//! reflector-controller on the real control plane. Each test runs its own controller scoped to its
//! source namespace (`--namespace`), so it handles only its own SecretReflectors; target namespaces
//! are selected by a label unique to the test, so parallel tests never see each other's targets.

use std::{collections::BTreeMap, time::Duration};

use common::crd::SecretReflector;
use e2e::{
    TestEnv,
    cluster::TestNamespace,
    controller::ControllerProcess,
    events::{events_for, events_of, wait_event},
    reflectors::{self, POLL, WAIT, metric, state, wait_metric},
    test_env, wait,
};
use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace, Secret},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

const REFLECTOR_ANNOTATION: &str = "pack-operator.k8s.kubit.ir/reflector";
const MANAGED_LABEL: &str = "pack-operator.k8s.kubit.ir/reflector-namespace";
const ACCEPT_LABEL: &str = "pack-operator.k8s.kubit.ir/accept-reflections";
const REFLECT_FROM: &str = "pack-operator.k8s.kubit.ir/reflect-from";
fn start_controller(env: &TestEnv, ns: &str, extra: &[String]) -> ControllerProcess {
    reflectors::start_controller(env, ns, "reflector", extra)
}

/// A target namespace labelled `labels`.
async fn namespace(env: &TestEnv, prefix: &str, labels: &[(&str, &str)]) -> TestNamespace {
    let ns = env.namespace(prefix).await;
    if !labels.is_empty() {
        label_namespace(&env.client().await, &ns.name, labels).await;
    }
    ns
}

async fn label_namespace(client: &Client, ns: &str, labels: &[(&str, &str)]) {
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| {
            let v = if v.is_empty() { json!(null) } else { json!(v) };
            ((*k).to_owned(), v)
        })
        .collect();
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": labels } })),
        )
        .await
        .unwrap();
}

/// Sets (or, with None, removes) the consent annotation of namespace `ns`.
async fn consent(client: &Client, ns: &str, reflect_from: Option<&str>) {
    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { REFLECT_FROM: reflect_from } } })),
        )
        .await
        .unwrap();
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

async fn create_secret(client: &Client, ns: &str, name: &str, body: serde_json::Value) -> Secret {
    let mut secret: Secret = serde_json::from_value(body).unwrap();
    secret.metadata.name = Some(name.to_owned());
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap()
}

async fn source(client: &Client, ns: &str, name: &str, value: &str) -> Secret {
    create_secret(
        client,
        ns,
        name,
        json!({
            "metadata": {
                "labels": { "team": "web", "app.kubernetes.io/managed-by": "Helm" },
                "annotations": { "note": "copied", "meta.helm.sh/release-name": "certs" }
            },
            "type": "kubernetes.io/tls",
            "stringData": { "tls.crt": value, "tls.key": format!("key-{value}") }
        }),
    )
    .await
}

async fn set_source(client: &Client, ns: &str, name: &str, value: &str) {
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "stringData": { "tls.crt": value, "tls.key": format!("key-{value}") } }),
            ),
        )
        .await
        .unwrap();
}

async fn reflector(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let r: SecretReflector = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "SecretReflector",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    Api::<SecretReflector>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &r)
        .await
        .unwrap();
}

async fn get_secret(client: &Client, ns: &str, name: &str) -> Option<Secret> {
    Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn value_of(s: &Secret) -> String {
    s.data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default()
}

/// Waits for the copy `ns/name` with `tls.crt` = `value`; returns it.
async fn wait_copy(client: &Client, ns: &str, name: &str, value: &str) -> Secret {
    wait::until(
        &format!("copy {ns}/{name} with tls.crt={value}"),
        WAIT,
        POLL,
        || async {
            match get_secret(client, ns, name).await {
                Some(s) if value_of(&s) == value => Ok(Some(s)),
                Some(s) => Err(format!("tls.crt={}", value_of(&s))),
                None => Err("absent".to_owned()),
            }
        },
    )
    .await
}

async fn wait_absent(client: &Client, ns: &str, name: &str) {
    wait::until(&format!("no Secret {ns}/{name}"), WAIT, POLL, || async {
        match get_secret(client, ns, name).await {
            None => Ok(Some(())),
            Some(s) => Err(format!("present, tls.crt={}", value_of(&s))),
        }
    })
    .await
}

async fn get_reflector(client: &Client, ns: &str, name: &str) -> Option<SecretReflector> {
    reflectors::get_reflector(client, ns, name).await
}

async fn wait_status(
    client: &Client,
    ns: &str,
    name: &str,
    targets: &[String],
    summary: &str,
    ready: &str,
) -> SecretReflector {
    reflectors::wait_status(client, ns, name, targets, summary, ready).await
}

/// Asserts that none of `values` (Secret data the test wrote), raw or base64-encoded as in a
/// serialized Secret, appears in the status of SecretReflector `ns/name`, the Events about it, the
/// controller's log or its /metrics.
async fn assert_no_leak(
    client: &Client,
    ns: &str,
    name: &str,
    controller: &ControllerProcess,
    values: &[&str],
) {
    let status =
        serde_json::to_string(&get_reflector(client, ns, name).await.and_then(|r| r.status))
            .unwrap();
    let events = format!("{:?}", events_of(client, ns, name).await);
    let logs = controller.logs();
    let (_, metrics) = controller.get("/metrics").await.unwrap();
    for value in values {
        let encoded = serde_json::to_string(&ByteString(value.as_bytes().to_vec())).unwrap();
        let encoded = encoded.trim_matches('"');
        for (what, text) in [
            ("status", &status),
            ("Events", &events),
            ("log", &logs),
            ("/metrics", &metrics),
        ] {
            assert!(
                !text.contains(value) && !text.contains(encoded),
                "{what} of {ns}/{name} leaks Secret data {value:?}:\n{text}"
            );
        }
    }
}

fn uid(s: &Secret) -> String {
    s.metadata.uid.clone().unwrap_or_default()
}

#[tokio::test]
async fn copies_follow_names_selector_new_namespaces_and_source_changes() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-src").await;
    let group = src.name.as_str();
    // The selector also selects the source's own namespace, where the copy would be the source
    // itself: skipped quietly (not listed, no Conflict).
    label_namespace(&client, &src.name, &[("e2e-reflect", group)]).await;
    let named = namespace(&env, "refl-named", &[]).await;
    let selected = namespace(&env, "refl-sel", &[("e2e-reflect", group)]).await;
    let _controller = start_controller(&env, &src.name, &[]);

    source(&client, &src.name, "tls", "v1").await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({
            "source": { "name": "tls" },
            "targets": {
                "namespaces": [named.name],
                "namespaceSelector": { "matchLabels": { "e2e-reflect": group } }
            }
        }),
    )
    .await;

    let copy = wait_copy(&client, &named.name, "tls", "v1").await;
    wait_copy(&client, &selected.name, "tls", "v1").await;
    // Type, data and chosen metadata are copied; ownership metadata of other tools is not.
    assert_eq!(copy.type_.as_deref(), Some("kubernetes.io/tls"));
    let labels = copy.metadata.labels.clone().unwrap_or_default();
    let annotations = copy.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    assert!(
        !labels.contains_key("app.kubernetes.io/managed-by"),
        "{labels:?}"
    );
    assert_eq!(labels.get(MANAGED_LABEL), Some(&src.name));
    assert_eq!(annotations.get("note").map(String::as_str), Some("copied"));
    assert!(
        !annotations.contains_key("meta.helm.sh/release-name"),
        "{annotations:?}"
    );
    assert_eq!(
        annotations.get(REFLECTOR_ANNOTATION),
        Some(&format!("{}/wildcard", src.name))
    );
    assert_eq!(
        annotations.get("pack-operator.k8s.kubit.ir/reflected-from"),
        Some(&format!("{}/tls", src.name))
    );
    assert_eq!(
        annotations
            .get("pack-operator.k8s.kubit.ir/source-hash")
            .map(String::len),
        Some(64)
    );
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[
            state(&named.name, "Synced"),
            state(&selected.name, "Synced"),
        ],
        "2/2",
        "True/Synced",
    )
    .await;
    let note = wait_event(&client, &src.name, "wildcard", "Synced", "").await;
    assert!(!note.contains("v1"), "Event leaks Secret data: {note}");

    // A namespace created later with the label gets its copy, without a restart.
    let later = namespace(&env, "refl-later", &[("e2e-reflect", group)]).await;
    wait_copy(&client, &later.name, "tls", "v1").await;

    // Relabelled away: its copy is removed.
    label_namespace(&client, &selected.name, &[("e2e-reflect", "")]).await;
    wait_absent(&client, &selected.name, "tls").await;
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[state(&named.name, "Synced"), state(&later.name, "Synced")],
        "2/2",
        "True/Synced",
    )
    .await;

    // A source change reaches every copy from the watch, not the resync: the wait's deadline (30 s) is
    // far below the 5-minute resync period. How fast is a benchmark figure (`make bench-reflector`).
    let changed = std::time::Instant::now();
    set_source(&client, &src.name, "tls", "v2").await;
    wait_copy(&client, &named.name, "tls", "v2").await;
    wait_copy(&client, &later.name, "tls", "v2").await;
    eprintln!(
        "source change reached the copies in {:?}",
        changed.elapsed()
    );

    // Secret data never appears in the status.
    let r = get_reflector(&client, &src.name, "wildcard").await.unwrap();
    let status = serde_json::to_string(&r.status).unwrap();
    assert!(
        !status.contains("v2") && !status.contains("key-"),
        "{status}"
    );
}

#[tokio::test]
async fn deleting_the_reflector_removes_its_copies_and_nothing_else() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-del").await;
    let group = src.name.as_str();
    let a = namespace(&env, "refl-del-a", &[("e2e-reflect", group)]).await;
    let b = namespace(&env, "refl-del-b", &[("e2e-reflect", group)]).await;
    let bystander = namespace(&env, "refl-del-x", &[]).await;
    let foreign = create_secret(
        &client,
        &bystander.name,
        "tls",
        json!({ "stringData": { "tls.crt": "mine" } }),
    )
    .await;
    let _controller = start_controller(&env, &src.name, &[]);
    source(&client, &src.name, "tls", "v1").await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({
            "source": { "name": "tls" },
            "targets": { "namespaceSelector": { "matchLabels": { "e2e-reflect": group } } }
        }),
    )
    .await;
    wait_copy(&client, &a.name, "tls", "v1").await;
    wait_copy(&client, &b.name, "tls", "v1").await;

    Api::<SecretReflector>::namespaced(client.clone(), &src.name)
        .delete("wildcard", &DeleteParams::default())
        .await
        .unwrap();
    wait_absent(&client, &a.name, "tls").await;
    wait_absent(&client, &b.name, "tls").await;
    wait::until(
        "the SecretReflector gone (finalizer released)",
        WAIT,
        POLL,
        || async {
            match get_reflector(&client, &src.name, "wildcard").await {
                None => Ok(Some(())),
                Some(r) => Err(r.metadata.finalizers),
            }
        },
    )
    .await;
    // The source and the foreign Secret of the same name elsewhere are untouched.
    let after = get_secret(&client, &bystander.name, "tls").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(after.data, foreign.data);
    assert_eq!(
        value_of(&get_secret(&client, &src.name, "tls").await.unwrap()),
        "v1"
    );
}

#[tokio::test]
async fn copies_of_a_reflector_gone_without_its_cleanup_are_removed_at_start() {
    // A reflector whose finalizer was removed by hand while no controller ran (e.g. the operator was
    // uninstalled first) leaves copies no cleanup deleted. The next controller deletes them, and only
    // them.
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-orphan").await;
    let a = namespace(&env, "refl-orphan-a", &[]).await;
    let b = namespace(&env, "refl-orphan-b", &[]).await;
    let controller = start_controller(&env, &src.name, &[]);
    source(&client, &src.name, "tls", "v1").await;
    reflector(
        &client,
        &src.name,
        "gone",
        json!({ "source": { "name": "tls" }, "targets": { "namespaces": [a.name] } }),
    )
    .await;
    reflector(
        &client,
        &src.name,
        "kept",
        json!({ "source": { "name": "tls" }, "targets": { "namespaces": [b.name] } }),
    )
    .await;
    wait_copy(&client, &a.name, "tls", "v1").await;
    let kept = wait_copy(&client, &b.name, "tls", "v1").await;
    drop(controller);

    let reflectors = Api::<SecretReflector>::namespaced(client.clone(), &src.name);
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
    wait::until("the SecretReflector gone", WAIT, POLL, || async {
        match get_reflector(&client, &src.name, "gone").await {
            None => Ok(Some(())),
            Some(r) => Err(r.metadata.finalizers),
        }
    })
    .await;
    // Nothing removed the orphan yet.
    assert!(get_secret(&client, &a.name, "tls").await.is_some());

    let controller = start_controller(&env, &src.name, &[]);
    wait_absent(&client, &a.name, "tls").await;
    assert!(
        controller
            .logs()
            .contains("deleted a copy whose SecretReflector no longer exists"),
        "{}",
        controller.logs()
    );
    // The live reflector's copy and the source are untouched.
    let after = get_secret(&client, &b.name, "tls").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        kept.metadata.resource_version
    );
    assert_eq!(
        value_of(&get_secret(&client, &src.name, "tls").await.unwrap()),
        "v1"
    );
}

#[tokio::test]
async fn malformed_specs_are_rejected_at_admission_with_the_reason() {
    // Names no Secret or Namespace can have, and selectors Kubernetes cannot evaluate, are refused by
    // the CRD schema, so they never reach the controller as a retried error.
    let env = test_env();
    let client = env.client().await;
    let ns = env.namespace("refl-invalid").await;
    let api = Api::<SecretReflector>::namespaced(client.clone(), &ns.name);
    let create = |spec: serde_json::Value| {
        let api = api.clone();
        async move {
            let r: SecretReflector = serde_json::from_value(json!({
                "apiVersion": "k8s.kubit.ir/v1alpha1",
                "kind": "SecretReflector",
                "metadata": { "generateName": "r-" },
                "spec": spec,
            }))
            .unwrap();
            api.create(&PostParams::default(), &r).await
        }
    };
    let rejected = [
        (
            json!({ "source": { "name": "tls" }, "targetName": "Bad_Name", "targets": { "namespaces": ["a"] } }),
            "spec.targetName",
        ),
        (
            json!({ "source": { "name": "Bad/Name" }, "targets": { "namespaces": ["a"] } }),
            "spec.source.name",
        ),
        (
            json!({ "source": { "name": "tls" }, "targets": { "namespaces": ["Not_A_Namespace"] } }),
            "spec.targets.namespaces[0]",
        ),
        (
            json!({ "source": { "name": "tls" }, "targets": { "excludeNamespaces": [""] } }),
            "spec.targets.excludeNamespaces[0]",
        ),
        (
            json!({ "source": { "name": "tls" }, "targets": { "namespaceSelector": {
                "matchExpressions": [{ "key": "team", "operator": "Equals", "values": ["a"] }] } } }),
            "operator must be In or NotIn with values",
        ),
        (
            json!({ "source": { "name": "tls" }, "targets": { "namespaceSelector": {
                "matchExpressions": [{ "key": "team", "operator": "In" }] } } }),
            "operator must be In or NotIn with values",
        ),
    ];
    for (spec, says) in rejected {
        match create(spec.clone()).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{spec}: {status:?}");
                assert!(
                    status.message.contains(says),
                    "{spec}: the error should name {says:?}: {}",
                    status.message
                );
            }
            other => panic!("{spec} was not rejected: {other:?}"),
        }
    }
    for spec in [
        json!({ "source": { "name": "wildcard.tls" }, "targetName": "copy-1", "targets": { "namespaces": ["app-a"] } }),
        json!({ "source": { "name": "tls" }, "targets": { "namespaceSelector": {
            "matchExpressions": [{ "key": "team", "operator": "Exists" }, { "key": "tier", "operator": "NotIn", "values": ["x"] }] } } }),
        json!({ "source": { "name": "tls" }, "targets": { "namespaceSelector": {} } }),
    ] {
        create(spec.clone())
            .await
            .unwrap_or_else(|e| panic!("{spec} was rejected: {e}"));
    }
}

#[tokio::test]
async fn a_foreign_secret_is_a_conflict_and_stays_untouched() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-conf").await;
    let taken = namespace(&env, "refl-conf-taken", &[]).await;
    let free = namespace(&env, "refl-conf-free", &[]).await;
    // A Secret elsewhere that forged our label (no reflector annotation): never counted as a copy.
    let forged = namespace(&env, "refl-conf-forged", &[]).await;
    create_secret(
        &client,
        &forged.name,
        "forged",
        json!({
            "metadata": { "labels": { MANAGED_LABEL: src.name } },
            "stringData": { "password": "hunter2" }
        }),
    )
    .await;
    let foreign = create_secret(
        &client,
        &taken.name,
        "tls",
        json!({ "type": "Opaque", "stringData": { "password": "hunter2" } }),
    )
    .await;
    let controller = start_controller(&env, &src.name, &[]);
    // Values no log line or metric would contain by chance, to look for leaks.
    let (v1, v2) = ("crt-one-4f1c9", "crt-two-4f1c9");
    source(&client, &src.name, "tls", v1).await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({
            "source": { "name": "tls" },
            "targets": { "namespaces": [taken.name, free.name] }
        }),
    )
    .await;
    wait_copy(&client, &free.name, "tls", v1).await;
    let r = wait_status(
        &client,
        &src.name,
        "wildcard",
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
    assert!(message.contains("not managed"), "{message}");
    let note = wait_event(&client, &src.name, "wildcard", "Conflict", "").await;
    assert!(note.contains(&taken.name), "{note}");
    wait_metric(&controller, "reflector_conflicts{kind=\"secret\"}", 1.0).await;
    wait_metric(
        &controller,
        "reflector_copies_managed{kind=\"secret\"}",
        1.0,
    )
    .await;

    // A source change proceeds elsewhere; the foreign Secret stays byte for byte.
    set_source(&client, &src.name, "tls", v2).await;
    wait_copy(&client, &free.name, "tls", v2).await;
    wait::holds(
        "the foreign Secret unchanged",
        Duration::from_secs(3),
        POLL,
        || async {
            let now = get_secret(&client, &taken.name, "tls").await.unwrap();
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
    // Neither the foreign Secret's data nor the source's reaches status, Events (the Conflict one
    // included), the log or the metrics.
    assert_no_leak(
        &client,
        &src.name,
        "wildcard",
        &controller,
        &["hunter2", v1, v2],
    )
    .await;
    // Deleting the reflector does not delete the foreign Secret either.
    Api::<SecretReflector>::namespaced(client.clone(), &src.name)
        .delete("wildcard", &DeleteParams::default())
        .await
        .unwrap();
    wait_absent(&client, &free.name, "tls").await;
    let now = get_secret(&client, &taken.name, "tls").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        foreign.metadata.resource_version
    );
    assert_eq!(now.data, Some(data(&[("password", "hunter2")])));
    // The conflicts gauge forgets a reflector that is gone.
    wait_metric(&controller, "reflector_conflicts{kind=\"secret\"}", 0.0).await;
    wait_metric(
        &controller,
        "reflector_copies_managed{kind=\"secret\"}",
        0.0,
    )
    .await;
}

#[tokio::test]
async fn hand_edits_are_restored_and_deleted_copies_recreated() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-drift").await;
    let target = namespace(&env, "refl-drift-t", &[]).await;
    let controller = start_controller(&env, &src.name, &[]);
    source(&client, &src.name, "tls", "v1").await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({
            "source": { "name": "tls" },
            "targets": { "namespaces": [target.name] },
            "targetName": "copied-tls"
        }),
    )
    .await;
    wait_copy(&client, &target.name, "copied-tls", "v1").await;

    let copies = Api::<Secret>::namespaced(client.clone(), &target.name);
    copies
        .patch(
            "copied-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "tls.crt": "hacked", "extra": "x" } })),
        )
        .await
        .unwrap();
    let restored = wait_copy(&client, &target.name, "copied-tls", "v1").await;
    assert!(
        !restored.data.unwrap_or_default().contains_key("extra"),
        "keys added by hand are removed"
    );

    // Labels and annotations another tool (e.g. a mutating webhook) adds are left alone: no fight,
    // not even a write that changes nothing.
    let updated = "reflections_total{kind=\"secret\",result=\"updated\"}";
    wait_metric(&controller, updated, 1.0).await; // the data restored above
    let tagged = copies
        .patch(
            "copied-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": {
                "labels": { "webhook.example/injected": "yes" },
                "annotations": { "policy.example/checked": "yes" }
            } })),
        )
        .await
        .unwrap();
    wait::holds(
        "a label and an annotation of another tool stay, the copy is not rewritten",
        Duration::from_secs(3),
        POLL,
        || async {
            let now = get_secret(&client, &target.name, "copied-tls").await;
            match now {
                Some(s) if s.metadata.resource_version == tagged.metadata.resource_version => {
                    Ok(())
                }
                other => Err(other.map(|s| s.metadata)),
            }
        },
    )
    .await;
    assert_eq!(metric(&controller, updated).await, 1.0, "no write");
    // A copied label edited by hand is restored; the other tool's keys survive our update.
    copies
        .patch(
            "copied-tls",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "team": "edited" } } })),
        )
        .await
        .unwrap();
    let restored = wait::until("label team restored", WAIT, POLL, || async {
        let s = get_secret(&client, &target.name, "copied-tls")
            .await
            .unwrap();
        let labels = s.metadata.labels.clone().unwrap_or_default();
        match labels.get("team").map(String::as_str) {
            Some("web") => Ok(Some(s)),
            other => Err(other.map(str::to_owned)),
        }
    })
    .await;
    let labels = restored.metadata.labels.unwrap_or_default();
    let annotations = restored.metadata.annotations.unwrap_or_default();
    assert_eq!(
        labels.get("webhook.example/injected").map(String::as_str),
        Some("yes"),
        "{labels:?}"
    );
    assert_eq!(
        annotations
            .get("policy.example/checked")
            .map(String::as_str),
        Some("yes"),
        "{annotations:?}"
    );
    // A label the source drops is removed from the copy (it was ours); the other tool's stays.
    Api::<Secret>::namespaced(client.clone(), &src.name)
        .patch(
            "tls",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "team": null } } })),
        )
        .await
        .unwrap();
    let dropped = wait::until("label team removed", WAIT, POLL, || async {
        let s = get_secret(&client, &target.name, "copied-tls")
            .await
            .unwrap();
        let labels = s.metadata.labels.clone().unwrap_or_default();
        match labels.get("team") {
            None => Ok(Some(labels)),
            Some(v) => Err(v.clone()),
        }
    })
    .await;
    assert_eq!(
        dropped.get("webhook.example/injected").map(String::as_str),
        Some("yes"),
        "{dropped:?}"
    );

    copies
        .delete("copied-tls", &DeleteParams::default())
        .await
        .unwrap();
    wait_copy(&client, &target.name, "copied-tls", "v1").await;
}

#[tokio::test]
async fn refused_namespaces_get_no_copy() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-opt").await;
    let group = src.name.as_str();
    let accepting = namespace(&env, "refl-opt-yes", &[("e2e-reflect", group)]).await;
    let opted_out = namespace(
        &env,
        "refl-opt-no",
        &[("e2e-reflect", group), (ACCEPT_LABEL, "false")],
    )
    .await;
    let denied = namespace(&env, "refl-opt-denied", &[("e2e-reflect", group)]).await;
    let _controller = start_controller(
        &env,
        &src.name,
        &[format!("--deny-target-namespaces=kube-*,{}", denied.name)],
    );
    source(&client, &src.name, "tls", "v1").await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({
            "source": { "name": "tls" },
            "targets": { "namespaceSelector": { "matchLabels": { "e2e-reflect": group } } }
        }),
    )
    .await;
    wait_copy(&client, &accepting.name, "tls", "v1").await;
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[
            state(&accepting.name, "Synced"),
            state(&opted_out.name, "OptedOut"),
            state(&denied.name, "Denied"),
        ],
        "1/1",
        "True/Synced",
    )
    .await;
    assert!(get_secret(&client, &opted_out.name, "tls").await.is_none());
    assert!(get_secret(&client, &denied.name, "tls").await.is_none());

    // Opting out later removes the copy already made.
    label_namespace(&client, &accepting.name, &[(ACCEPT_LABEL, "false")]).await;
    wait_absent(&client, &accepting.name, "tls").await;
}

/// The chart's default flags: consent mode, `kube-*` denied.
#[tokio::test]
async fn under_the_charts_defaults_only_consenting_namespaces_get_copies() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-cons").await;
    let group = src.name.as_str();
    let selected = [("e2e-reflect", group)];
    let silent = namespace(&env, "refl-cons-silent", &selected).await;
    let other = namespace(&env, "refl-cons-other", &selected).await;
    consent(&client, &other.name, Some("team-b, team-c")).await;
    let yes = namespace(&env, "refl-cons-yes", &selected).await;
    consent(&client, &yes.name, Some(&format!("team-b,{}", src.name))).await;
    let anyone = namespace(&env, "refl-cons-any", &selected).await;
    consent(&client, &anyone.name, Some("*")).await;
    // Matches `kube-*`: denied even though it consents (the real kube-system is left alone).
    let kube = namespace(&env, "kube-e2e", &selected).await;
    consent(&client, &kube.name, Some(&src.name)).await;
    let _controller = start_controller(
        &env,
        &src.name,
        &[
            "--require-consent".to_owned(),
            "--deny-target-namespaces=kube-*".to_owned(),
        ],
    );
    source(&client, &src.name, "tls", "v1").await;
    // The attack of issue 13: a target name of the author's choice, in every namespace it can select.
    reflector(
        &client,
        &src.name,
        "plant",
        json!({
            "source": { "name": "tls" },
            "targets": {
                "namespaces": [silent.name, kube.name],
                "namespaceSelector": { "matchLabels": { "e2e-reflect": group } }
            },
            "targetName": "db-credentials"
        }),
    )
    .await;
    wait_copy(&client, &yes.name, "db-credentials", "v1").await;
    wait_copy(&client, &anyone.name, "db-credentials", "v1").await;
    let r = wait_status(
        &client,
        &src.name,
        "plant",
        &[
            state(&yes.name, "Synced"),
            state(&anyone.name, "Synced"),
            state(&silent.name, "NotConsented"),
            state(&other.name, "NotConsented"),
            state(&kube.name, "Denied"),
        ],
        "2/2",
        "True/Synced",
    )
    .await;
    for ns in [&silent.name, &other.name, &kube.name] {
        assert!(
            get_secret(&client, ns, "db-credentials").await.is_none(),
            "no copy in {ns}"
        );
    }
    // The message says how to consent.
    let status = r.status.unwrap_or_default();
    let message = status
        .targets
        .iter()
        .find(|t| t.namespace == silent.name)
        .and_then(|t| t.message.clone())
        .unwrap_or_default();
    let fix = format!(
        "kubectl annotate namespace {} {REFLECT_FROM}={}",
        silent.name, src.name
    );
    assert!(message.contains(&fix), "{message:?} lacks {fix:?}");

    // Consent withdrawn: the copy made before goes.
    consent(&client, &yes.name, None).await;
    wait_absent(&client, &yes.name, "db-credentials").await;
    // Consent given later: the copy comes, without a restart.
    consent(&client, &silent.name, Some(&src.name)).await;
    wait_copy(&client, &silent.name, "db-credentials", "v1").await;
    wait_status(
        &client,
        &src.name,
        "plant",
        &[
            state(&yes.name, "NotConsented"),
            state(&anyone.name, "Synced"),
            state(&silent.name, "Synced"),
            state(&other.name, "NotConsented"),
            state(&kube.name, "Denied"),
        ],
        "2/2",
        "True/Synced",
    )
    .await;
    assert!(
        get_secret(&client, &yes.name, "db-credentials")
            .await
            .is_none()
    );
    assert!(
        get_secret(&client, &kube.name, "db-credentials")
            .await
            .is_none()
    );
}

#[tokio::test]
async fn two_reflectors_on_one_target_one_wins() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-two").await;
    let target = namespace(&env, "refl-two-t", &[]).await;
    let controller = start_controller(&env, &src.name, &[]);
    let (one, two) = ("first-value-9d2e", "second-value-9d2e");
    source(&client, &src.name, "first", one).await;
    source(&client, &src.name, "second", two).await;
    let spec = |source: &str| {
        json!({
            "source": { "name": source },
            "targets": { "namespaces": [target.name] },
            "targetName": "shared"
        })
    };
    reflector(&client, &src.name, "first", spec("first")).await;
    // The first is the older (or, created in the same second, first by name): it wins.
    wait_copy(&client, &target.name, "shared", one).await;
    reflector(&client, &src.name, "second", spec("second")).await;
    wait_status(
        &client,
        &src.name,
        "second",
        &[state(&target.name, "Conflict")],
        "0/1",
        "False/Conflict",
    )
    .await;
    wait_status(
        &client,
        &src.name,
        "first",
        &[state(&target.name, "Synced")],
        "1/1",
        "True/Synced",
    )
    .await;
    let note = wait_event(&client, &src.name, "second", "Conflict", "").await;
    assert!(note.contains(&format!("{}/first", src.name)), "{note}");
    let winner_holds = |what: &'static str| {
        let (client, target) = (client.clone(), target.name.clone());
        async move {
            wait::holds(what, Duration::from_secs(2), POLL, || async {
                let s = get_secret(&client, &target, "shared").await;
                match s.as_ref().map(value_of).as_deref() {
                    Some(v) if v == one => Ok(()),
                    other => Err(other.map(str::to_owned)),
                }
            })
            .await
        }
    };
    winner_holds("the winner's copy stays").await;

    // Deleted by hand, both reflectors are woken; the same (older) one wins again.
    Api::<Secret>::namespaced(client.clone(), &target.name)
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    wait_copy(&client, &target.name, "shared", one).await;
    winner_holds("the winner's recreated copy stays").await;
    wait_status(
        &client,
        &src.name,
        "second",
        &[state(&target.name, "Conflict")],
        "0/1",
        "False/Conflict",
    )
    .await;
    for name in ["first", "second"] {
        assert_no_leak(&client, &src.name, name, &controller, &[one, two]).await;
    }

    // When the winner goes, the other one takes the target.
    Api::<SecretReflector>::namespaced(client.clone(), &src.name)
        .delete("first", &DeleteParams::default())
        .await
        .unwrap();
    wait_copy(&client, &target.name, "shared", two).await;
    wait_status(
        &client,
        &src.name,
        "second",
        &[state(&target.name, "Synced")],
        "1/1",
        "True/Synced",
    )
    .await;
}

/// A younger reflector holds a target; an older one starts claiming it: the older one takes the copy
/// over in place (same Secret, no moment without a copy) and the younger one reports the Conflict.
#[tokio::test]
async fn an_older_reflector_takes_a_target_over_from_a_younger_one() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-over").await;
    let target = namespace(&env, "refl-over-t", &[]).await;
    let elsewhere = namespace(&env, "refl-over-e", &[]).await;
    let _controller = start_controller(&env, &src.name, &[]);
    source(&client, &src.name, "older", "older-v").await;
    source(&client, &src.name, "younger", "younger-v").await;
    let spec = |source: &str, ns: &str| {
        json!({
            "source": { "name": source },
            "targets": { "namespaces": [ns] },
            "targetName": "shared"
        })
    };
    reflector(&client, &src.name, "older", spec("older", &elsewhere.name)).await;
    wait_copy(&client, &elsewhere.name, "shared", "older-v").await;
    reflector(&client, &src.name, "younger", spec("younger", &target.name)).await;
    let held = wait_copy(&client, &target.name, "shared", "younger-v").await;

    Api::<SecretReflector>::namespaced(client.clone(), &src.name)
        .patch(
            "older",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "targets": { "namespaces": [target.name] } } })),
        )
        .await
        .unwrap();
    let taken = wait_copy(&client, &target.name, "shared", "older-v").await;
    assert_eq!(
        uid(&taken),
        uid(&held),
        "taken over in place, not recreated"
    );
    assert_eq!(
        taken
            .metadata
            .annotations
            .unwrap_or_default()
            .get(REFLECTOR_ANNOTATION),
        Some(&format!("{}/older", src.name))
    );
    wait_absent(&client, &elsewhere.name, "shared").await;
    wait_status(
        &client,
        &src.name,
        "younger",
        &[state(&target.name, "Conflict")],
        "0/1",
        "False/Conflict",
    )
    .await;
    wait_status(
        &client,
        &src.name,
        "older",
        &[state(&target.name, "Synced")],
        "1/1",
        "True/Synced",
    )
    .await;
    wait_event(
        &client,
        &src.name,
        "younger",
        "Conflict",
        &format!("{}/older", src.name),
    )
    .await;
}

#[tokio::test]
async fn deleted_source_removes_copies_and_recreated_source_restores_them() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-srcdel").await;
    let target = namespace(&env, "refl-srcdel-t", &[]).await;
    let controller = start_controller(&env, &src.name, &[]);
    // An immutable source: its copies are immutable too.
    create_secret(
        &client,
        &src.name,
        "tls",
        json!({ "immutable": true, "stringData": { "tls.crt": "v1" } }),
    )
    .await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({ "source": { "name": "tls" }, "targets": { "namespaces": [target.name] } }),
    )
    .await;
    let copy = wait_copy(&client, &target.name, "tls", "v1").await;
    assert_eq!(copy.immutable, Some(true));

    let sources = Api::<Secret>::namespaced(client.clone(), &src.name);
    sources
        .delete("tls", &DeleteParams::default())
        .await
        .unwrap();
    wait_absent(&client, &target.name, "tls").await;
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[],
        // Its one target still counts while the source is missing.
        "0/1",
        "False/SourceNotFound",
    )
    .await;
    wait_event(&client, &src.name, "wildcard", "SourceNotFound", "").await;
    // The condition metric says so: Ready is False (1), not True (0).
    let ready = |status: &str| {
        format!(
            "condition{{kind=\"SecretReflector\",name=\"wildcard\",namespace=\"{}\",type=\"Ready\",status=\"{status}\"}}",
            src.name
        )
    };
    wait_metric(&controller, &ready("False"), 1.0).await;
    assert_eq!(metric(&controller, &ready("True")).await, 0.0);

    // Recreated with other data (and now mutable, Opaque): the copy comes back as it is now.
    create_secret(
        &client,
        &src.name,
        "tls",
        json!({ "stringData": { "tls.crt": "v2" } }),
    )
    .await;
    let copy = wait_copy(&client, &target.name, "tls", "v2").await;
    assert_eq!(copy.immutable, None);
    assert_eq!(copy.type_.as_deref(), Some("Opaque"));
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[state(&target.name, "Synced")],
        "1/1",
        "True/Synced",
    )
    .await;
    wait_metric(&controller, &ready("True"), 1.0).await;
    assert_eq!(metric(&controller, &ready("False")).await, 0.0);

    // Deleted: its series go (none stays behind at 0).
    Api::<SecretReflector>::namespaced(client.clone(), &src.name)
        .delete("wildcard", &DeleteParams::default())
        .await
        .unwrap();
    let series = format!(
        "kind=\"SecretReflector\",name=\"wildcard\",namespace=\"{}\"",
        src.name
    );
    wait::until(
        "the reflector's condition series are gone",
        WAIT,
        POLL,
        || async {
            let (_, body) = controller.get("/metrics").await.unwrap();
            let left: Vec<String> = body
                .lines()
                .filter(|l| l.contains(&series))
                .map(str::to_owned)
                .collect();
            if left.is_empty() {
                Ok(Some(()))
            } else {
                Err(left)
            }
        },
    )
    .await;
}

/// The RBAC rules documented in docs/reflector.md are enough: a controller running as a ServiceAccount
/// with exactly those rules copies, reports a conflict, follows a change, cleans up, and is never
/// refused by the API server.
#[tokio::test]
async fn least_privilege_rbac_is_enough() {
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-rbac").await;
    let target = namespace(&env, "refl-rbac-t", &[]).await;
    let taken = namespace(&env, "refl-rbac-taken", &[]).await;
    create_secret(
        &client,
        &taken.name,
        "tls",
        json!({ "stringData": { "tls.crt": "theirs" } }),
    )
    .await;
    let name = format!("e2e-{}", src.name);
    let cluster_role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": name },
        "rules": [
            { "apiGroups": ["k8s.kubit.ir"], "resources": ["secretreflectors"], "verbs": ["get", "list", "watch", "patch"] },
            { "apiGroups": ["k8s.kubit.ir"], "resources": ["secretreflectors/status"], "verbs": ["patch"] },
            { "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create", "update", "delete"] },
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"] },
            { "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] }
        ]
    }))
    .unwrap();
    let subject = json!([{ "kind": "ServiceAccount", "name": "reflector", "namespace": src.name }]);
    let cluster_binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
        "subjects": subject
    }))
    .unwrap();
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": "reflector-leases" },
        "rules": [{ "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"] }]
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "reflector-leases" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reflector-leases" },
        "subjects": subject
    }))
    .unwrap();
    let pp = PostParams::default();
    let cluster_roles = Api::<ClusterRole>::all(client.clone());
    let cluster_bindings = Api::<ClusterRoleBinding>::all(client.clone());
    cluster_roles.create(&pp, &cluster_role).await.unwrap();
    cluster_bindings
        .create(&pp, &cluster_binding)
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), &src.name)
        .create(&pp, &role)
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), &src.name)
        .create(&pp, &binding)
        .await
        .unwrap();
    let kubeconfig = env.service_account_kubeconfig(&src.name, "reflector").await;
    let args = [
        format!("--namespace={}", src.name),
        format!("--lease-namespace={}", src.name),
        "--lease-name=reflector".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with_kubeconfig(
        &kubeconfig,
        "reflector-controller",
        &src.name,
        &args,
    )
    .expect("start reflector-controller");

    source(&client, &src.name, "tls", "v1").await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({ "source": { "name": "tls" }, "targets": { "namespaces": [target.name, taken.name] } }),
    )
    .await;
    wait_copy(&client, &target.name, "tls", "v1").await;
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[
            state(&target.name, "Synced"),
            state(&taken.name, "Conflict"),
        ],
        "1/2",
        "False/Conflict",
    )
    .await;
    wait_event(&client, &src.name, "wildcard", "Conflict", "").await;
    set_source(&client, &src.name, "tls", "v2").await;
    wait_copy(&client, &target.name, "tls", "v2").await;
    Api::<SecretReflector>::namespaced(client.clone(), &src.name)
        .delete("wildcard", &DeleteParams::default())
        .await
        .unwrap();
    wait_absent(&client, &target.name, "tls").await;
    wait::until("the SecretReflector gone", WAIT, POLL, || async {
        match get_reflector(&client, &src.name, "wildcard").await {
            None => Ok(Some(())),
            Some(r) => Err(r.metadata.finalizers),
        }
    })
    .await;
    let logs = controller.logs();
    let _ = cluster_bindings
        .delete(&name, &DeleteParams::default())
        .await;
    let _ = cluster_roles.delete(&name, &DeleteParams::default()).await;
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "the controller was refused something:\n{logs}"
    );
}

/// A Terminating namespace is skipped quietly: no write is attempted (the API server would refuse
/// it), no Error, and it is not listed.
#[tokio::test]
async fn terminating_namespaces_are_skipped_quietly() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-term").await;
    let group = src.name.as_str();
    let staying = namespace(&env, "refl-term-stay", &[("e2e-reflect", group)]).await;
    let leaving = namespace(&env, "refl-term-go", &[("e2e-reflect", group)]).await;
    // Holds `leaving` in Terminating until the test removes the finalizer.
    create_secret(
        &client,
        &leaving.name,
        "blocker",
        json!({ "metadata": { "finalizers": ["e2e.pack-operator/hold"] } }),
    )
    .await;
    let _controller = start_controller(&env, &src.name, &[]);
    source(&client, &src.name, "tls", "v1").await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({
            "source": { "name": "tls" },
            "targets": { "namespaceSelector": { "matchLabels": { "e2e-reflect": group } } }
        }),
    )
    .await;
    wait_copy(&client, &leaving.name, "tls", "v1").await;

    Api::<Namespace>::all(client.clone())
        .delete(&leaving.name, &DeleteParams::default())
        .await
        .unwrap();
    // The namespace controller removes the copy; the reflector does not put it back nor report it.
    wait_absent(&client, &leaving.name, "tls").await;
    set_source(&client, &src.name, "tls", "v2").await;
    wait_copy(&client, &staying.name, "tls", "v2").await;
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[state(&staying.name, "Synced")],
        "1/1",
        "True/Synced",
    )
    .await;
    let phase = Api::<Namespace>::all(client.clone())
        .get(&leaving.name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Terminating"));
    assert!(get_secret(&client, &leaving.name, "tls").await.is_none());
    assert!(
        events_for(&client, &src.name, "wildcard", "Error")
            .await
            .is_empty()
    );

    Api::<Secret>::namespaced(client.clone(), &leaving.name)
        .patch(
            "blocker",
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "finalizers": null } })),
        )
        .await
        .unwrap();
}

/// A ServiceAccount token Secret is refused as a source: Kubernetes' token controller would delete or
/// rewrite every copy and the reflector recreate it, forever. (This control plane runs no token
/// controller, so the Secret stays as created.)
#[tokio::test]
async fn service_account_token_sources_are_refused() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-sat").await;
    let target = namespace(&env, "refl-sat-t", &[]).await;
    let controller = start_controller(&env, &src.name, &[]);
    let token = "sa-token-7c1d0";
    create_secret(
        &client,
        &src.name,
        "token",
        json!({
            "metadata": { "annotations": { "kubernetes.io/service-account.name": "default" } },
            "type": "kubernetes.io/service-account-token",
            "stringData": { "token": token }
        }),
    )
    .await;
    reflector(
        &client,
        &src.name,
        "token",
        json!({ "source": { "name": "token" }, "targets": { "namespaces": [target.name] } }),
    )
    .await;
    let r = wait_status(
        &client,
        &src.name,
        "token",
        &[],
        "0/1",
        "False/SourceTypeUnsupported",
    )
    .await;
    let conditions = r.status.unwrap_or_default().conditions;
    let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(
        ready
            .message
            .contains("kubernetes.io/service-account-token")
            && ready.message.contains("TokenRequest"),
        "says why and what to do instead: {}",
        ready.message
    );
    let stalled = conditions.iter().find(|c| c.type_ == "Stalled");
    assert_eq!(
        stalled.map(|c| (c.status.as_str(), c.reason.as_str())),
        Some(("True", "SourceTypeUnsupported")),
        "{conditions:?}"
    );
    wait_event(
        &client,
        &src.name,
        "token",
        "SourceTypeUnsupported",
        "service-account-token",
    )
    .await;
    wait::holds(
        "no copy of the token",
        Duration::from_secs(2),
        POLL,
        || async {
            match get_secret(&client, &target.name, "token").await {
                None => Ok(()),
                Some(s) => Err(s.metadata),
            }
        },
    )
    .await;
    assert_no_leak(&client, &src.name, "token", &controller, &[token]).await;
}

/// What copy.rs decides for immutable copies and type changes, each through its replace path
/// (delete + create). The controller is stopped while the source is recreated, so that it meets the
/// old copy and the new source (running, it would see the source gone and remove the copy first).
#[tokio::test]
async fn immutable_and_type_changes_replace_the_copies() {
    let env = test_env();
    let client = env.client().await;
    let src = env.namespace("refl-imm").await;
    let target = namespace(&env, "refl-imm-t", &[]).await;
    let body = |type_: &str, immutable: bool, value: &str| {
        json!({
            "type": type_,
            "immutable": immutable,
            "stringData": { "tls.crt": value, "tls.key": format!("key-{value}") }
        })
    };
    let (one, two, three) = ("imm-one-b7e2", "imm-two-b7e2", "imm-three-b7e2");
    let sources = Api::<Secret>::namespaced(client.clone(), &src.name);
    let recreate_source = |body: serde_json::Value| {
        let (client, sources, ns) = (client.clone(), sources.clone(), src.name.clone());
        async move {
            sources
                .delete("tls", &DeleteParams::default())
                .await
                .unwrap();
            wait_absent(&client, &ns, "tls").await;
            create_secret(&client, &ns, "tls", body).await;
        }
    };
    let controller = start_controller(&env, &src.name, &[]);
    create_secret(&client, &src.name, "tls", body("Opaque", false, one)).await;
    reflector(
        &client,
        &src.name,
        "wildcard",
        json!({ "source": { "name": "tls" }, "targets": { "namespaces": [target.name] } }),
    )
    .await;
    let first = wait_copy(&client, &target.name, "tls", one).await;
    assert_eq!(first.immutable, None);

    // The source is made immutable: the copy is made immutable in place (same Secret).
    sources
        .patch(
            "tls",
            &PatchParams::default(),
            &Patch::Merge(json!({ "immutable": true })),
        )
        .await
        .unwrap();
    let frozen = wait::until("the copy immutable", WAIT, POLL, || async {
        match get_secret(&client, &target.name, "tls").await {
            Some(s) if s.immutable == Some(true) => Ok(Some(s)),
            other => Err(other.map(|s| s.immutable)),
        }
    })
    .await;
    assert_eq!(uid(&frozen), uid(&first), "made immutable in place");

    // An immutable source cannot change its data; recreated (still immutable) with new data, the
    // immutable copy is replaced: a new Secret, immutable, with the new data.
    drop(controller);
    recreate_source(body("Opaque", true, two)).await;
    let controller = start_controller(&env, &src.name, &[]);
    let replaced = wait_copy(&client, &target.name, "tls", two).await;
    assert_ne!(uid(&replaced), uid(&first), "replaced, not updated");
    assert_eq!(replaced.immutable, Some(true));
    wait_metric(
        &controller,
        "reflections_total{kind=\"secret\",result=\"replaced\"}",
        1.0,
    )
    .await;
    assert_no_leak(&client, &src.name, "wildcard", &controller, &[one, two]).await;

    // Recreated with another type (and mutable): replaced again, with the new type.
    drop(controller);
    recreate_source(body("kubernetes.io/tls", false, three)).await;
    let controller = start_controller(&env, &src.name, &[]);
    let retyped = wait_copy(&client, &target.name, "tls", three).await;
    assert_ne!(uid(&retyped), uid(&replaced), "replaced, not updated");
    assert_eq!(retyped.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(retyped.immutable, None);
    wait_metric(
        &controller,
        "reflections_total{kind=\"secret\",result=\"replaced\"}",
        1.0,
    )
    .await;
    wait_status(
        &client,
        &src.name,
        "wildcard",
        &[state(&target.name, "Synced")],
        "1/1",
        "True/Synced",
    )
    .await;
    assert_no_leak(&client, &src.name, "wildcard", &controller, &[two, three]).await;
}

/// A copy may be the source of a SecretReflector in its own namespace, handled by another controller
/// (each runs with `--namespace`): a change of the first source travels down the chain from the
/// watches, long before the resync.
#[tokio::test]
async fn a_copy_can_be_the_source_of_another_reflector() {
    let env = test_env();
    let client = env.client().await;
    let first = env.namespace("refl-chain-a").await;
    let second = env.namespace("refl-chain-b").await;
    let last = namespace(&env, "refl-chain-c", &[]).await;
    let _first_controller = start_controller(&env, &first.name, &[]);
    let _second_controller = start_controller(&env, &second.name, &[]);
    source(&client, &first.name, "tls", "chain-v1").await;
    reflector(
        &client,
        &first.name,
        "onward",
        json!({ "source": { "name": "tls" }, "targets": { "namespaces": [second.name] } }),
    )
    .await;
    reflector(
        &client,
        &second.name,
        "onward",
        json!({ "source": { "name": "tls" }, "targets": { "namespaces": [last.name] } }),
    )
    .await;
    wait_copy(&client, &last.name, "tls", "chain-v1").await;

    set_source(&client, &first.name, "tls", "chain-v2").await;
    wait_copy(&client, &second.name, "tls", "chain-v2").await;
    let end = wait_copy(&client, &last.name, "tls", "chain-v2").await;
    let annotations = end.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get(REFLECTOR_ANNOTATION),
        Some(&format!("{}/onward", second.name))
    );
    assert_eq!(
        annotations.get("pack-operator.k8s.kubit.ir/reflected-from"),
        Some(&format!("{}/tls", second.name))
    );
    assert_eq!(
        end.metadata.labels.unwrap_or_default().get(MANAGED_LABEL),
        Some(&second.name)
    );
}
