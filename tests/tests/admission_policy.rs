//! The watch-to-redeploy ValidatingAdmissionPolicy on the real API server agrees with the Rust parser on
//! every case of the shared corpus, for Deployments, StatefulSets, DaemonSets and Packs.

use std::time::Duration;

use common::annotation::{WATCH_TO_REDEPLOY, parse_watch_targets};
use e2e::{test_env, tools::workspace_root, wait};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    core::{ApiResource, GroupVersionKind},
};
use serde::Deserialize;
use serde_json::json;

const VAP_LABEL: &str = "pack-operator-e2e/admission";

async fn label_namespace(client: &Client, ns: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let patch = json!({ "metadata": { "labels": { VAP_LABEL: "true" } } });
    Api::<Namespace>::all(client.clone())
        .patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

#[derive(Deserialize)]
struct Case {
    value: String,
    valid: bool,
    why: String,
}

async fn install_policy(client: &Client) {
    install_policy_file(client, "watch-to-redeploy-policy.yaml").await;
}

/// Applies `deploy/admission/<file>`, with each binding scoped to namespaces labelled for these tests.
async fn install_policy_file(client: &Client, file: &str) {
    let text =
        std::fs::read_to_string(workspace_root().join("deploy/admission").join(file)).unwrap();
    let pp = PatchParams::apply("pack-operator-e2e").force();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc).unwrap();
        match value.get("kind").and_then(|k| k.as_str()) {
            Some("ValidatingAdmissionPolicy") => {
                let p: ValidatingAdmissionPolicy = serde_yaml::from_value(value).unwrap();
                Api::<ValidatingAdmissionPolicy>::all(client.clone())
                    .patch(&p.name_any(), &pp, &Patch::Apply(&p))
                    .await
                    .unwrap();
            }
            Some("ValidatingAdmissionPolicyBinding") => {
                let mut b: ValidatingAdmissionPolicyBinding =
                    serde_yaml::from_value(value).unwrap();
                // Scoped to this test's namespaces, so other tests can still create objects with invalid
                // annotations (to test the controller's own defence).
                let spec = &mut b.spec;
                spec.match_resources = Some(
                    serde_json::from_value(json!({
                        "namespaceSelector": { "matchLabels": { VAP_LABEL: "true" } }
                    }))
                    .unwrap(),
                );
                Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
                    .patch(&b.name_any(), &pp, &Patch::Apply(&b))
                    .await
                    .unwrap();
            }
            other => panic!("unexpected document kind {other:?} in the policy file"),
        }
    }
}

fn workload(kind: &str, name: &str, annotation: Option<&str>) -> serde_json::Value {
    let mut metadata = json!({ "name": name });
    if let Some(v) = annotation {
        metadata["annotations"] = json!({ WATCH_TO_REDEPLOY: v });
    }
    if kind == "Pack" {
        return json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack", "metadata": metadata,
            "spec": { "chart": { "repository": { "kind": "ClusterPackRepository", "name": "r" }, "name": "genpack" } }
        });
    }
    json!({
        "apiVersion": "apps/v1", "kind": kind, "metadata": metadata,
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "serviceName": name,
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
            }
        }
    })
}

fn api_for(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let (group, version) = if kind == "Pack" {
        ("k8s.kubit.ir", "v1alpha1")
    } else {
        ("apps", "v1")
    };
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Dry-run create: Ok(()) if admitted, Err(message) if denied.
async fn admit(api: &Api<DynamicObject>, object: serde_json::Value) -> Result<(), String> {
    let obj: DynamicObject = serde_json::from_value(object).unwrap();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match api.create(&pp, &obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(format!("{} {}", s.code, s.message)),
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[tokio::test]
async fn policy_and_parser_agree_on_the_corpus() {
    let env = test_env();
    let ns = env.namespace("vap").await;
    let client = env.client().await;
    label_namespace(&client, &ns.name).await;
    install_policy(&client).await;
    let deployments = api_for(&client, &ns.name, "Deployment");

    // New policies reach the admission chain through an informer: wait until one is enforced.
    wait::until(
        "the policy to be enforced",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            match admit(
                &deployments,
                workload("Deployment", "probe", Some("Secret/x")),
            )
            .await
            {
                Err(_) => Ok(Some(())),
                Ok(()) => Err("invalid value still admitted"),
            }
        },
    )
    .await;

    let corpus: Vec<Case> = serde_yaml::from_str(
        &std::fs::read_to_string(workspace_root().join("tests/corpus/watch-to-redeploy.yaml"))
            .unwrap(),
    )
    .unwrap();
    assert!(corpus.len() >= 40, "corpus has {} cases", corpus.len());
    let kinds = ["Deployment", "StatefulSet", "DaemonSet", "Pack"];
    let mut disagreements = vec![];
    for (i, case) in corpus.iter().enumerate() {
        let parser = parse_watch_targets(&case.value);
        assert_eq!(
            parser.is_ok(),
            case.valid,
            "parser vs corpus on {:?} ({})",
            case.value,
            case.why
        );
        // Every case against Deployments; each case also against one other kind, in turn.
        for kind in ["Deployment", kinds[1 + i % 3]] {
            let api = api_for(&client, &ns.name, kind);
            let verdict = admit(&api, workload(kind, &format!("w{i}"), Some(&case.value))).await;
            if verdict.is_ok() != case.valid {
                disagreements.push(format!(
                    "{kind} {:?} ({}): apiserver said {verdict:?}",
                    case.value, case.why
                ));
            }
            if let (Err(msg), false) = (&verdict, case.valid) {
                assert!(
                    msg.contains("watch-to-redeploy"),
                    "denial names the annotation: {msg}"
                );
                assert!(msg.contains("e.g."), "denial shows a valid example: {msg}");
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "apiserver and parser disagree:\n{}",
        disagreements.join("\n")
    );

    // Objects without the annotation are never affected.
    for kind in kinds {
        let api = api_for(&client, &ns.name, kind);
        admit(&api, workload(kind, "plain", None))
            .await
            .unwrap_or_else(|e| panic!("{kind} without annotation denied: {e}"));
    }
}

#[tokio::test]
async fn denial_names_the_bad_segment() {
    let env = test_env();
    let ns = env.namespace("vap-msg").await;
    let client = env.client().await;
    label_namespace(&client, &ns.name).await;
    install_policy(&client).await;
    let deployments = api_for(&client, &ns.name, "Deployment");
    let msg = wait::until(
        "a denial",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            match admit(
                &deployments,
                workload("Deployment", "bad", Some("configmap/ok, ConfigMap/Bad")),
            )
            .await
            {
                Err(msg) => Ok(Some(msg)),
                Ok(()) => Err("admitted"),
            }
        },
    )
    .await;
    assert!(msg.contains("ConfigMap/Bad"), "{msg}");
    let parser = parse_watch_targets("configmap/ok, ConfigMap/Bad").unwrap_err();
    assert_eq!(parser.bad_segment(), Some("ConfigMap/Bad"));
}

#[tokio::test]
async fn pack_vars_must_be_scalars() {
    let env = test_env();
    let ns = env.namespace("vap-vars").await;
    let client = env.client().await;
    label_namespace(&client, &ns.name).await;
    install_policy_file(&client, "pack-vars-policy.yaml").await;
    let packs = api_for(&client, &ns.name, "Pack");
    let pack = |vars: serde_json::Value| {
        let mut p = workload("Pack", "p", None);
        p["spec"]["vars"] = vars;
        p
    };
    let msg = wait::until(
        "the vars policy to be enforced",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            match admit(&packs, pack(json!({ "TAG": "1.0", "LIST": [1, 2] }))).await {
                Err(msg) => Ok(Some(msg)),
                Ok(()) => Err("list var admitted"),
            }
        },
    )
    .await;
    assert!(
        msg.contains("spec.vars.LIST") && msg.contains("scalars"),
        "{msg}"
    );
    let msg = admit(&packs, pack(json!({ "OBJ": { "a": 1 } })))
        .await
        .unwrap_err();
    assert!(msg.contains("spec.vars.OBJ is a map"), "{msg}");
    admit(
        &packs,
        pack(json!({ "S": "x", "N": 3, "F": 1.5, "B": true, "Z": null })),
    )
    .await
    .unwrap_or_else(|e| panic!("scalar vars denied: {e}"));
    admit(&packs, workload("Pack", "novars", None))
        .await
        .unwrap_or_else(|e| panic!("Pack without vars denied: {e}"));
}

#[tokio::test]
async fn pack_names_helm_cannot_use_are_rejected_by_the_crd() {
    // A Pack's name is its Helm release name; Helm refuses names over 53 characters, so the CRD does.
    let env = test_env();
    let ns = env.namespace("crd-pack-name").await;
    let packs = api_for(&env.client().await, &ns.name, "Pack");
    let longest = "p".repeat(common::crd::MAX_PACK_NAME);
    admit(&packs, workload("Pack", &longest, None))
        .await
        .unwrap_or_else(|e| panic!("a {}-character name denied: {e}", longest.len()));
    let msg = admit(&packs, workload("Pack", &format!("{longest}x"), None))
        .await
        .unwrap_err();
    assert!(
        msg.starts_with("422") && msg.contains("Helm limits to 53 characters"),
        "{msg}"
    );
}

#[tokio::test]
async fn repository_intervals_the_parser_refuses_are_refused_by_the_crd() {
    // The CRD's pattern and common::cli::parse_duration agree on the same table, on the real API server:
    // `interval: 5 minutes` is refused at creation instead of only being reported in status.
    let client = test_env().client().await;
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "k8s.kubit.ir",
        "v1alpha1",
        "ClusterPackRepository",
    ));
    let repos = Api::<DynamicObject>::all_with(client, &ar);
    let repo = |interval: &str| {
        json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1",
            "kind": "ClusterPackRepository",
            "metadata": { "name": "e2e-interval-grammar" },
            "spec": { "url": "https://charts.example.com", "interval": interval },
        })
    };
    for (input, want) in common::cli::DURATION_EXAMPLES {
        let admitted = admit(&repos, repo(input)).await;
        assert_eq!(
            admitted.is_ok(),
            want.is_some(),
            "interval {input:?}: parser says {want:?}, API server {admitted:?}"
        );
    }
    let msg = admit(&repos, repo("5 minutes")).await.unwrap_err();
    assert!(
        msg.starts_with("422")
            && msg.contains("spec.interval")
            && msg.contains("5 minutes")
            && msg.contains(common::cli::DURATION_PATTERN),
        "{msg}"
    );
}

#[derive(Deserialize)]
struct OptionCase {
    annotation: String,
    value: String,
    valid: bool,
    why: String,
}

#[tokio::test]
async fn redeploy_options_policy_and_parsers_agree_on_the_corpus() {
    // watch-to-redeploy-auto accepts exactly "true"/"false", redeploy-delay a duration (issue 16: "abc"
    // was silently the default); the parsers are checked against the same corpus by
    // redeploy-controller's podrefs::tests::option_corpus.
    const AUTO: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy-auto";
    const DELAY: &str = "pack-operator.k8s.kubit.ir/redeploy-delay";
    let env = test_env();
    let ns = env.namespace("vap-options").await;
    let client = env.client().await;
    label_namespace(&client, &ns.name).await;
    install_policy(&client).await;
    let with = |kind: &str, name: &str, annotation: &str, value: &str| {
        let mut w = workload(kind, name, None);
        w["metadata"]["annotations"] = json!({ annotation: value });
        w
    };
    let deployments = api_for(&client, &ns.name, "Deployment");
    wait::until(
        "the options policy to be enforced",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            match admit(&deployments, with("Deployment", "probe", DELAY, "abc")).await {
                Err(_) => Ok(Some(())),
                Ok(()) => Err("redeploy-delay: abc still admitted"),
            }
        },
    )
    .await;
    let corpus: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("tests/corpus/redeploy-options.json"))
            .unwrap(),
    )
    .unwrap();
    let cases: Vec<OptionCase> = serde_json::from_value(corpus["cases"].clone()).unwrap();
    let kinds = ["StatefulSet", "DaemonSet", "Pack"];
    let mut disagreements = vec![];
    for (i, case) in cases.iter().enumerate() {
        let annotation = if case.annotation == "auto" {
            AUTO
        } else {
            DELAY
        };
        for kind in ["Deployment", kinds[i % 3]] {
            let api = api_for(&client, &ns.name, kind);
            let verdict = admit(&api, with(kind, &format!("o{i}"), annotation, &case.value)).await;
            if verdict.is_ok() != case.valid {
                disagreements.push(format!(
                    "{kind} {annotation}={:?} ({}): apiserver said {verdict:?}",
                    case.value, case.why
                ));
            }
            if let Err(msg) = &verdict {
                assert!(
                    msg.contains(annotation),
                    "denial names the annotation: {msg}"
                );
                assert!(
                    msg.contains("e.g.") || msg.contains("\"true\" or \"false\""),
                    "{msg}"
                );
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "apiserver and corpus disagree:\n{}",
        disagreements.join("\n")
    );
}
