//! The pack-operator Helm chart: every combination of enabled controllers lints and renders what it
//! should; the CRDs and policies it carries are those of deploy/; installed into an empty control plane
//! with only the redeploy controller it creates nothing of the others; and each controller, run with the
//! token of the ServiceAccount the chart creates and the RBAC it renders (not admin), does its job and is
//! refused what it must not do.

use std::{collections::BTreeSet, path::Path, time::Duration};

use common::crd::{ClusterPackRepository, Pack};
use e2e::{
    chart::{
        CONTROLLERS, assert_forbidden, chart_dir, chart_service_account, component, enable_only,
        helm, kind, name, of_kind, parse_documents, template,
    },
    cluster::{ControlPlane, client_from},
    controller::ControllerProcess,
    packs::{ChartServer, Want, create_genpack_pack, served_repository, wait_pack},
    registry::Registry,
    test_env,
    tools::workspace_root,
    wait,
};
use k8s_openapi::{
    api::{
        admissionregistration::v1::ValidatingAdmissionPolicy,
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        core::v1::{ConfigMap, Pod, Secret, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(200);
const WATCH_TO_REDEPLOY: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy";

/// The controllers (component names) enabled by bit i of `mask`.
fn combination(mask: u8) -> Vec<&'static str> {
    CONTROLLERS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, (_, c))| *c)
        .collect()
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..6)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}

fn container_args(deployment: &Value) -> Vec<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The CRD names (plural.group) each controller brings.
fn crds_of(component: &str) -> &'static [&'static str] {
    match component {
        "pack-controller" => &[
            "clusterpackrepositories.k8s.kubit.ir",
            "packrepositories.k8s.kubit.ir",
            "packs.k8s.kubit.ir",
        ],
        "reflector-controller" => &[
            "configmapreflectors.k8s.kubit.ir",
            "secretreflectors.k8s.kubit.ir",
        ],
        _ => &[],
    }
}

fn policies_of(component: &str) -> &'static [&'static str] {
    match component {
        "pack-controller" => &["pack-operator-pack-vars"],
        "redeploy-controller" => &[
            "pack-operator-redeploy-options",
            "pack-operator-watch-to-redeploy",
        ],
        _ => &[],
    }
}

#[test]
fn every_combination_of_controllers_lints_and_renders_only_what_it_enables() {
    let chart = chart_dir();
    for mask in 0..8u8 {
        let enabled = combination(mask);
        let mut sets = enable_only(&enabled);
        sets.push("metrics.serviceMonitor.enabled=true".into());
        sets.push("metrics.prometheusRule.enabled=true".into());
        let mut lint = vec!["lint", chart.to_str().unwrap(), "--strict"];
        for s in &sets {
            lint.extend(["--set", s.as_str()]);
        }
        helm(&lint).unwrap_or_else(|e| panic!("{enabled:?}: {e}"));
        let docs = template("po", "pack-operator", &sets).unwrap();

        let names = |k: &str| -> BTreeSet<String> {
            of_kind(&docs, k)
                .iter()
                .map(|d| name(d).to_owned())
                .collect()
        };
        let want_crds: BTreeSet<String> = enabled
            .iter()
            .flat_map(|c| crds_of(c).iter().map(|s| s.to_string()))
            .collect();
        assert_eq!(names("CustomResourceDefinition"), want_crds, "{enabled:?}");
        let want_policies: BTreeSet<String> = enabled
            .iter()
            .flat_map(|c| policies_of(c).iter().map(|s| s.to_string()))
            .collect();
        assert_eq!(
            names("ValidatingAdmissionPolicy"),
            want_policies,
            "{enabled:?}"
        );
        assert_eq!(
            names("ValidatingAdmissionPolicyBinding"),
            want_policies,
            "{enabled:?}"
        );

        // Every other object belongs to exactly one enabled controller (the PrometheusRule to all).
        let per_controller = [
            "Deployment",
            "ServiceAccount",
            "Service",
            "PodDisruptionBudget",
            "ServiceMonitor",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
        ];
        for (_, c) in CONTROLLERS {
            let mine: Vec<_> = docs
                .iter()
                .filter(|d| component(d) == Some(c))
                .map(|d| kind(d).to_owned())
                .collect();
            if !enabled.contains(&c) {
                assert!(mine.is_empty(), "{c} is disabled but renders {mine:?}");
                continue;
            }
            for k in per_controller {
                assert!(mine.iter().any(|m| m == k), "{c} has no {k}: {mine:?}");
            }
        }
        for d in &docs {
            let k = kind(d);
            if per_controller.contains(&k) {
                assert!(
                    component(d).is_some_and(|c| enabled.contains(&c)),
                    "{k} {} belongs to no enabled controller",
                    name(d)
                );
            }
        }
        assert_eq!(
            of_kind(&docs, "PrometheusRule").len(),
            usize::from(!enabled.is_empty()),
            "{enabled:?}"
        );

        for d in of_kind(&docs, "Deployment") {
            let c = component(d).unwrap();
            assert_eq!(d["spec"]["replicas"], 2, "{c}");
            let pod = &d["spec"]["template"]["spec"];
            let container = &pod["containers"][0];
            let sc = &container["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{c}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{c}");
            assert_eq!(sc["runAsNonRoot"], true, "{c}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{c}");
            assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{c}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{c}");
            assert_eq!(
                container["ports"],
                json!([{ "name": "metrics", "containerPort": 8080, "protocol": "TCP" }])
            );
            assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
            assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
            assert!(
                container["resources"]["requests"]["memory"].is_string(),
                "{c}"
            );
            assert!(
                container["resources"]["limits"]["memory"].is_string(),
                "{c}"
            );
            assert_eq!(
                pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
                    [0]["podAffinityTerm"]["topologyKey"],
                "kubernetes.io/hostname"
            );
            assert_eq!(pod["serviceAccountName"], name(d), "{c}");
            let args = container_args(d);
            assert!(args.contains(&"--leader-elect=true".to_owned()), "{args:?}");
            assert!(args.contains(&format!("--lease-name={c}")), "{args:?}");

            // The PDB, the metrics Service and the ServiceMonitor select this controller's pods (and
            // its Service): labels must match, or they silently cover nothing.
            let pod_labels = d["spec"]["template"]["metadata"]["labels"]
                .as_object()
                .unwrap();
            let selects_pods = |selector: &Value| {
                let selector = selector.as_object().unwrap();
                !selector.is_empty() && selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
            };
            let of_c = |k: &str| -> Vec<&Value> {
                of_kind(&docs, k)
                    .into_iter()
                    .filter(|x| component(x) == Some(c))
                    .collect()
            };
            let pdb = of_c("PodDisruptionBudget")[0];
            assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{c}");
            assert!(
                selects_pods(&pdb["spec"]["selector"]["matchLabels"]),
                "{c}: {pdb}"
            );
            let service = of_c("Service")[0];
            assert!(selects_pods(&service["spec"]["selector"]), "{c}: {service}");
            assert_eq!(
                service["spec"]["ports"][0]["targetPort"], "metrics",
                "{c}: {service}"
            );
            let monitor = of_c("ServiceMonitor")[0];
            let service_labels = service["metadata"]["labels"].as_object().unwrap();
            let wanted = monitor["spec"]["selector"]["matchLabels"]
                .as_object()
                .unwrap();
            assert!(
                !wanted.is_empty() && wanted.iter().all(|(k, v)| service_labels.get(k) == Some(v)),
                "{c}: {monitor}"
            );
            let endpoint = &monitor["spec"]["endpoints"][0];
            assert_eq!(endpoint["path"], "/metrics", "{c}");
            assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"], "{c}");
        }
    }
}

/// Flags of the chart not yet in a controller binary (none today).
/// Remove an entry when the binary learns the flag (this test then keeps it learned).
const PENDING_FLAGS: &[(&str, &str)] = &[];

/// Each reflector kind on its own: its CRD, its `--kinds` entry and RBAC on its objects only; none is
/// refused with a message.
/// The aggregated ClusterRoles (the test control plane runs no aggregation controller, so their labels
/// and rules are what is checked): `admin` and `edit` manage Packs and PackRepositories, `view` reads
/// them, none grants ClusterPackRepositories; `aggregateToDefaultRoles=false` ships none.
#[test]
fn pack_controller_aggregates_packs_into_the_built_in_user_roles() {
    let aggregated = |sets: &[String]| -> Vec<Value> {
        template("po", "pack-operator", sets)
            .unwrap()
            .into_iter()
            .filter(|d| {
                kind(d) == "ClusterRole"
                    && d["metadata"]["labels"].as_object().is_some_and(|l| {
                        l.keys()
                            .any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-"))
                    })
            })
            .collect()
    };
    let roles = aggregated(&[]);
    let label = |role: &Value, to: &str| {
        role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")] == "true"
    };
    let strings = |v: &Value| -> BTreeSet<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let rule_of = |to: &str| -> &Value {
        let role = roles
            .iter()
            .find(|r| label(r, to))
            .unwrap_or_else(|| panic!("no ClusterRole aggregated to {to}: {roles:#?}"));
        let rules = role["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "{to}: {rules:#?}");
        &rules[0]
    };
    assert_eq!(roles.len(), 2, "{roles:#?}");
    for to in ["admin", "edit"] {
        let rule = rule_of(to);
        assert_eq!(
            strings(&rule["resources"]),
            BTreeSet::from(["packs".to_owned(), "packrepositories".to_owned()])
        );
        assert!(
            strings(&rule["verbs"]).is_superset(&BTreeSet::from(
                [
                    "create", "update", "patch", "delete", "get", "list", "watch"
                ]
                .map(String::from)
            ))
        );
    }
    let view = rule_of("view");
    assert!(!label(
        roles.iter().find(|r| label(r, "view")).unwrap(),
        "edit"
    ));
    assert_eq!(
        strings(&view["verbs"]),
        BTreeSet::from(["get", "list", "watch"].map(String::from))
    );
    assert!(!strings(&view["resources"]).contains("clusterpackrepositories"));
    assert!(
        aggregated(&["packController.rbac.aggregateToDefaultRoles=false".to_owned()]).is_empty()
    );
    assert!(aggregated(&["packController.enabled=false".to_owned()]).is_empty());
}

#[test]
fn each_reflector_kind_is_enabled_on_its_own_with_rbac_for_it_only() {
    let cases = [
        (true, true, "--kinds=secret,configmap"),
        (true, false, "--kinds=secret"),
        (false, true, "--kinds=configmap"),
    ];
    for (secrets, configmaps, flag) in cases {
        let sets = vec![
            "packController.enabled=false".to_owned(),
            "redeployController.enabled=false".to_owned(),
            format!("reflectorController.kinds.secrets={secrets}"),
            format!("reflectorController.kinds.configMaps={configmaps}"),
        ];
        let docs = template("po", "pack-operator", &sets).unwrap();
        let crds: BTreeSet<String> = of_kind(&docs, "CustomResourceDefinition")
            .iter()
            .map(|d| name(d).to_owned())
            .collect();
        let mut want = BTreeSet::new();
        if secrets {
            want.insert("secretreflectors.k8s.kubit.ir".to_owned());
        }
        if configmaps {
            want.insert("configmapreflectors.k8s.kubit.ir".to_owned());
        }
        assert_eq!(crds, want, "{sets:?}");
        let deployment = of_kind(&docs, "Deployment")[0].clone();
        assert!(
            container_args(&deployment).contains(&flag.to_owned()),
            "{sets:?}"
        );
        let role = of_kind(&docs, "ClusterRole")
            .into_iter()
            .find(|r| name(r).ends_with("reflector-controller"))
            .unwrap()
            .clone();
        let resources: BTreeSet<String> = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        for (on, names) in [
            (
                secrets,
                ["secrets", "secretreflectors", "secretreflectors/status"],
            ),
            (
                configmaps,
                [
                    "configmaps",
                    "configmapreflectors",
                    "configmapreflectors/status",
                ],
            ),
        ] {
            for n in names {
                assert_eq!(
                    resources.contains(n),
                    on,
                    "{n} with {sets:?}: {resources:?}"
                );
            }
        }
    }
    let none = [
        "reflectorController.kinds.secrets=false",
        "reflectorController.kinds.configMaps=false",
    ]
    .map(String::from);
    let err = template("po", "pack-operator", &none).unwrap_err();
    assert!(
        err.to_string().contains("turn on secrets or configMaps"),
        "{err}"
    );
}

#[test]
fn every_flag_the_chart_passes_is_one_the_binary_knows() {
    let all = enable_only(&[
        "pack-controller",
        "redeploy-controller",
        "reflector-controller",
    ]);
    // The defaults, and every value that makes the chart pass a flag it does not pass by default.
    let mut optional = all.clone();
    optional.extend(
        [
            "packController.rbac.scope=namespaces",
            "packController.rbac.namespaces={team-a,team-b}",
            "reflectorController.allowTargetNamespaces={app-*}",
            "reflectorController.denyTargetNamespaces={kube-*,app-secret}",
            "redeployController.leaderElection.enabled=false",
            "redeployController.replicas=1",
        ]
        .map(String::from),
    );
    let mut docs = template("po", "pack-operator", &all).unwrap();
    docs.extend(template("po", "pack-operator", &optional).unwrap());
    let passed: Vec<String> = of_kind(&docs, "Deployment")
        .iter()
        .flat_map(|d| container_args(d))
        .collect();
    for flag in [
        "--namespace=team-a,team-b",
        "--allow-target-namespaces=app-*",
        "--deny-target-namespaces=kube-*",
        "--deny-target-namespaces=kube-*,app-secret",
        "--leader-elect=false",
    ] {
        assert!(passed.iter().any(|a| a == flag), "{flag} not in {passed:?}");
    }
    for d in of_kind(&docs, "Deployment") {
        let c = component(d).unwrap();
        let help = std::process::Command::new(e2e::tools::workspace_binary(c).unwrap())
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for arg in container_args(d) {
            let flag = arg.split('=').next().unwrap();
            let known = help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n"));
            let pending = PENDING_FLAGS.contains(&(c, flag));
            assert!(
                known || pending,
                "the chart passes {flag} to {c}, which does not know it"
            );
            if known && pending {
                eprintln!("{c} now knows {flag}: remove it from PENDING_FLAGS");
            }
        }
    }
}

/// Removes what the chart adds to a resource it copies from deploy/ (labels and annotations).
fn strip_chart_metadata(mut doc: Value) -> Value {
    if let Some(meta) = doc["metadata"].as_object_mut() {
        meta.remove("labels");
        meta.remove("annotations");
    }
    doc
}

#[test]
fn chart_crds_and_admission_policies_are_those_of_deploy() {
    let docs = template("po", "pack-operator", &[]).unwrap();
    let mut sources = vec![];
    for dir in ["deploy/crds", "deploy/admission"] {
        for entry in std::fs::read_dir(workspace_root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                sources.extend(parse_documents(&std::fs::read_to_string(&path).unwrap()).unwrap());
            }
        }
    }
    assert_eq!(
        sources.len(),
        5 + 3 * 2,
        "5 CRDs and 3 policies with their bindings in deploy/"
    );
    for source in sources {
        let (k, n) = (kind(&source).to_owned(), name(&source).to_owned());
        let rendered = docs
            .iter()
            .find(|d| kind(d) == k && name(d) == n)
            .unwrap_or_else(|| panic!("the chart does not render {k} {n}"));
        assert_eq!(
            strip_chart_metadata(rendered.clone()),
            strip_chart_metadata(source),
            "{k} {n} in the chart differs from deploy/: run `make manifests`"
        );
        let labels = &rendered["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/instance"], "po", "{k} {n}");
        if k == "CustomResourceDefinition" {
            assert_eq!(
                rendered["metadata"]["annotations"]["helm.sh/resource-policy"],
                "keep"
            );
        }
    }
    let unkept = template("po", "pack-operator", &["crds.keep=false".to_owned()]).unwrap();
    for crd in of_kind(&unkept, "CustomResourceDefinition") {
        assert!(crd["metadata"]["annotations"].is_null(), "{crd}");
    }
    let none = template(
        "po",
        "pack-operator",
        &[
            "crds.install=false".to_owned(),
            "admissionPolicies.enabled=false".to_owned(),
        ],
    )
    .unwrap();
    assert!(of_kind(&none, "CustomResourceDefinition").is_empty());
    assert!(of_kind(&none, "ValidatingAdmissionPolicy").is_empty());
}

#[test]
fn pack_controller_rbac_scope_is_cluster_or_a_list_of_namespaces() {
    let pack = enable_only(&["pack-controller"]);
    let bindings = |docs: &[Value], k: &str| -> BTreeSet<String> {
        of_kind(docs, k)
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["metadata"]["namespace"].as_str().unwrap_or(""),
                    name(d)
                )
            })
            .collect()
    };

    let cluster = template("po", "ops", &pack).unwrap();
    assert_eq!(
        bindings(&cluster, "ClusterRoleBinding"),
        [
            "/po-pack-operator-pack-controller",
            "/po-pack-operator-pack-controller-helm",
            "/po-pack-operator-pack-controller-packs"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(
        bindings(&cluster, "RoleBinding"),
        ["ops/po-pack-operator-pack-controller-leader-election"]
            .map(String::from)
            .into()
    );
    let helm_role = of_kind(&cluster, "ClusterRole")
        .into_iter()
        .find(|r| name(r) == "po-pack-operator-pack-controller-helm")
        .unwrap();
    assert_eq!(
        helm_role["rules"],
        json!([{ "apiGroups": ["*"], "resources": ["*"], "verbs": ["*"] }])
    );

    let mut two = pack.clone();
    two.extend([
        "packController.rbac.scope=namespaces".to_owned(),
        "packController.rbac.namespaces={team-a,team-b}".to_owned(),
        "packController.rbac.helmRules[0].apiGroups={apps}".to_owned(),
        "packController.rbac.helmRules[0].resources={deployments}".to_owned(),
        "packController.rbac.helmRules[0].verbs={get,create}".to_owned(),
    ]);
    let scoped = template("po", "ops", &two).unwrap();
    assert_eq!(
        bindings(&scoped, "ClusterRoleBinding"),
        ["/po-pack-operator-pack-controller"]
            .map(String::from)
            .into()
    );
    let rb = bindings(&scoped, "RoleBinding");
    for want in [
        "team-a/po-pack-operator-pack-controller-helm",
        "team-a/po-pack-operator-pack-controller-packs",
        "team-b/po-pack-operator-pack-controller-helm",
        "team-b/po-pack-operator-pack-controller-packs",
        "ops/po-pack-operator-pack-controller-repository-secrets",
    ] {
        assert!(rb.contains(want), "{want} missing from {rb:?}");
    }
    let helm_role = of_kind(&scoped, "ClusterRole")
        .into_iter()
        .find(|r| name(r) == "po-pack-operator-pack-controller-helm")
        .unwrap();
    assert_eq!(
        helm_role["rules"],
        json!([{ "apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "create"] }])
    );
    // The controller acts on exactly the listed namespaces.
    let deployment = of_kind(&scoped, "Deployment")[0];
    assert!(container_args(deployment).contains(&"--namespace=team-a,team-b".to_owned()));

    // One namespace: the same flag.
    let mut one = pack.clone();
    one.extend([
        "packController.rbac.scope=namespaces".to_owned(),
        "packController.rbac.namespaces={team-a}".to_owned(),
    ]);
    let single = template("po", "ops", &one).unwrap();
    let deployment = of_kind(&single, "Deployment")[0];
    assert!(container_args(deployment).contains(&"--namespace=team-a".to_owned()));

    // Misconfigurations fail at render time with a message.
    let mut empty = pack.clone();
    empty.push("packController.rbac.scope=namespaces".to_owned());
    let err = template("po", "ops", &empty).unwrap_err().to_string();
    assert!(err.contains("packController.rbac.namespaces"), "{err}");
    let mut bad = pack.clone();
    bad.push("packController.rbac.scope=everywhere".to_owned());
    let err = template("po", "ops", &bad).unwrap_err().to_string();
    assert!(err.contains("cluster or namespaces"), "{err}");
    let mut no_leader = pack.clone();
    no_leader.push("packController.leaderElection.enabled=false".to_owned());
    let err = template("po", "ops", &no_leader).unwrap_err().to_string();
    assert!(err.contains("leaderElection"), "{err}");
    // --namespace from both the scope and extraArgs would be passed twice.
    let mut twice = one.clone();
    twice.push("packController.extraArgs={--namespace=team-b}".to_owned());
    let err = template("po", "ops", &twice).unwrap_err().to_string();
    assert!(
        err.contains("remove it from packController.extraArgs"),
        "{err}"
    );
    // Helm's work dir must be on the /tmp emptyDir: the root filesystem is read-only.
    let deployment = of_kind(&cluster, "Deployment")[0];
    assert!(container_args(deployment).contains(&"--work-dir=/tmp/pack-operator".to_owned()));
    let mounts = &deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"];
    assert!(
        mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == "/tmp"),
        "{mounts}"
    );
    let mut elsewhere = pack.clone();
    elsewhere.push("packController.helm.workDir=/var/lib/pack-operator".to_owned());
    let err = template("po", "ops", &elsewhere).unwrap_err().to_string();
    assert!(
        err.contains("packController.helm.workDir must be /tmp or below it"),
        "{err}"
    );
    // Helm's release Secrets (and the controller's own list/watch/update of them) do not depend on
    // helmRules, which the scoped render above narrowed to Deployments.
    let packs_role = of_kind(&scoped, "ClusterRole")
        .into_iter()
        .find(|r| name(r) == "po-pack-operator-pack-controller-packs")
        .unwrap();
    let secret_verbs: BTreeSet<&str> = packs_role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resources"] == json!(["secrets"]))
        .flat_map(|r| r["verbs"].as_array().unwrap().iter())
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        secret_verbs,
        ["create", "delete", "get", "list", "update", "watch"].into(),
        "{packs_role}"
    );
    // Alerts select series by scrape job: without the ServiceMonitor, the job must be named.
    let mut rules = vec!["metrics.prometheusRule.enabled=true".to_owned()];
    let err = template("po", "ops", &rules).unwrap_err().to_string();
    assert!(
        err.contains("metrics.prometheusRule.jobs.pack-controller"),
        "{err}"
    );
    rules.extend(
        CONTROLLERS
            .iter()
            .map(|(_, c)| format!("metrics.prometheusRule.jobs.{c}=scrape-{c}")),
    );
    let text = serde_json::to_string(&of_kind(
        &template("po", "ops", &rules).unwrap(),
        "PrometheusRule",
    ))
    .unwrap();
    for (_, c) in CONTROLLERS {
        assert!(
            text.contains(&format!("job=\\\"scrape-{c}\\\"")),
            "{c}: {text}"
        );
    }
    // A scrape job of the user's own need not set the namespace label: only the job is matched. With
    // the chart's ServiceMonitor, the namespace too.
    assert!(!text.contains("namespace="), "{text}");
    let monitored = template(
        "po",
        "ops",
        &[
            "metrics.prometheusRule.enabled=true".to_owned(),
            "metrics.serviceMonitor.enabled=true".to_owned(),
        ],
    )
    .unwrap();
    let text = serde_json::to_string(&of_kind(&monitored, "PrometheusRule")).unwrap();
    assert_eq!(
        text.matches("namespace=\\\"ops\\\"").count(),
        3 * 3 + 2 + 1,
        "three alerts per controller, NotReady of pack and reflector, and PacksFailing match the release namespace: {text}"
    );

    // Leader election off (one replica): no Lease RBAC for that controller.
    let single_replica = template(
        "po",
        "ops",
        &[
            "redeployController.replicas=1".to_owned(),
            "redeployController.leaderElection.enabled=false".to_owned(),
        ],
    )
    .unwrap();
    let lease_roles: BTreeSet<String> = of_kind(&single_replica, "Role")
        .into_iter()
        .map(|r| name(r).to_owned())
        .filter(|n| n.ends_with("-leader-election"))
        .collect();
    assert_eq!(
        lease_roles,
        [
            "po-pack-operator-pack-controller-leader-election",
            "po-pack-operator-reflector-controller-leader-election"
        ]
        .map(String::from)
        .into()
    );

    // A long release name: every name still fits its kind's limit (63 for a Service).
    let long = template("cluster-ops-operators-for-the-platform-team", "ops", &[]).unwrap();
    for service in of_kind(&long, "Service") {
        assert!(name(service).len() <= 63, "{} is too long", name(service));
    }
    assert_eq!(of_kind(&long, "Service").len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn installing_only_the_redeploy_controller_creates_nothing_of_the_others() {
    // A private, empty control plane: cluster-scoped chart objects must not leak into the shared one.
    let dir = std::env::temp_dir().join(format!("pack-operator-e2e-chart-{}", random_suffix()));
    let plane = ControlPlane::start_without_crds(&dir).await.unwrap();
    let kubeconfig = plane.kubeconfig.clone();
    let chart = chart_dir();
    let mut args = vec![
        "install".to_owned(),
        "pack-operator".to_owned(),
        chart.to_str().unwrap().to_owned(),
        "--namespace=pack-operator".to_owned(),
        "--create-namespace".to_owned(),
        format!("--kubeconfig={}", kubeconfig.display()),
    ];
    for s in enable_only(&["redeploy-controller"]) {
        args.extend(["--set".to_owned(), s]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    helm(&args).unwrap();
    let status = helm(&[
        "status",
        "pack-operator",
        "--namespace=pack-operator",
        &format!("--kubeconfig={}", kubeconfig.display()),
        "-o",
        "json",
    ])
    .unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["info"]["status"], "deployed", "{status}");

    let client = client_from(&kubeconfig).await.unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let ours: Vec<_> = crds
        .items
        .iter()
        .map(|c| c.name_any())
        .filter(|n| n.ends_with(".k8s.kubit.ir"))
        .collect();
    assert!(ours.is_empty(), "no Pack/Reflector CRDs: {ours:?}");

    let selector = ListParams::default().labels("app.kubernetes.io/instance=pack-operator");
    let components = |labels: Vec<std::collections::BTreeMap<String, String>>| -> BTreeSet<String> {
        labels
            .into_iter()
            .filter_map(|l| l.get("app.kubernetes.io/component").cloned())
            .collect()
    };
    let only_redeploy: BTreeSet<String> = ["redeploy-controller".to_owned()].into();
    let cluster_roles = Api::<ClusterRole>::all(client.clone())
        .list(&selector)
        .await
        .unwrap();
    assert_eq!(
        cluster_roles
            .items
            .iter()
            .map(|r| r.name_any())
            .collect::<Vec<_>>(),
        ["pack-operator-redeploy-controller"]
    );
    assert_eq!(
        components(
            cluster_roles
                .items
                .into_iter()
                .map(|r| r.labels().clone())
                .collect()
        ),
        only_redeploy
    );
    let bindings = Api::<ClusterRoleBinding>::all(client.clone())
        .list(&selector)
        .await
        .unwrap();
    assert_eq!(
        components(
            bindings
                .items
                .into_iter()
                .map(|r| r.labels().clone())
                .collect()
        ),
        only_redeploy
    );
    let roles = Api::<Role>::namespaced(client.clone(), "pack-operator")
        .list(&selector)
        .await
        .unwrap();
    assert_eq!(
        components(
            roles
                .items
                .into_iter()
                .map(|r| r.labels().clone())
                .collect()
        ),
        only_redeploy
    );
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), "pack-operator")
        .list(&selector)
        .await
        .unwrap();
    assert_eq!(
        sas.items.iter().map(|s| s.name_any()).collect::<Vec<_>>(),
        ["pack-operator-redeploy-controller"]
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), "pack-operator")
        .list(&selector)
        .await
        .unwrap();
    assert_eq!(
        deployments
            .items
            .iter()
            .map(|d| d.name_any())
            .collect::<Vec<_>>(),
        ["pack-operator-redeploy-controller"]
    );
    let policies: Vec<_> = Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(
        policies,
        [
            "pack-operator-redeploy-options",
            "pack-operator-watch-to-redeploy"
        ]
    );

    // The redeploy controller, with the chart's ServiceAccount, on this cluster without the Pack CRD:
    // it becomes ready (Packs are not watched) and rolls a Deployment out.
    let env = e2e::TestEnv {
        kubeconfig: kubeconfig.clone(),
    };
    let sa = env
        .service_account_kubeconfig("pack-operator", "pack-operator-redeploy-controller")
        .await;
    let controller = ControllerProcess::start_with_kubeconfig(
        &sa,
        "redeploy-controller",
        "redeploy-only-0",
        &[
            "--lease-namespace=pack-operator",
            "--lease-name=redeploy-controller",
            "--delay=1s",
        ],
    )
    .unwrap();
    wait::until("/readyz answers 200", TIMEOUT, EVERY, || async {
        match controller.get("/readyz").await {
            Ok((200, _)) => Ok(Some(())),
            other => Err(format!("{other:?}\n{}", controller.logs())),
        }
    })
    .await;
    assert!(
        controller
            .logs()
            .contains("k8s.kubit.ir/v1alpha1 packs are not served (CRD not installed)"),
        "{}",
        controller.logs()
    );
    let cms = Api::<ConfigMap>::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({ "metadata": { "name": "cm" }, "data": { "k": "v1" } }))
            .unwrap(),
    )
    .await
    .unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), "default");
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {
                    "name": "web",
                    "annotations": { "pack-operator.k8s.kubit.ir/watch-to-redeploy": "configmap/cm" }
                },
                "spec": {
                    "selector": { "matchLabels": { "app": "web" } },
                    "template": {
                        "metadata": { "labels": { "app": "web" } },
                        "spec": { "containers": [{ "name": "c", "image": "nginx" }] }
                    }
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let recorded = "pack-operator.k8s.kubit.ir/watched-hashes";
    wait::until("the baseline recorded", TIMEOUT, EVERY, || async {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        if d.annotations().contains_key(recorded) {
            Ok(Some(()))
        } else {
            Err(controller.logs())
        }
    })
    .await;
    cms.patch(
        "cm",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "k": "v2" } })),
    )
    .await
    .unwrap();
    wait::until("the Deployment rolled", TIMEOUT, EVERY, || async {
        let d = deployments.get("web").await.map_err(|e| e.to_string())?;
        let rolled = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .is_some_and(|a| a.contains_key("pack-operator.k8s.kubit.ir/config-hash"));
        if rolled {
            Ok(Some(()))
        } else {
            Err(controller.logs())
        }
    })
    .await;
    drop(controller);

    // Enabling the pack controller later by `helm upgrade` brings its CRDs (templates, not `crds/`, which
    // Helm installs once and never upgrades), and a later upgrade updates them: `crds.keep=false` drops
    // the keep policy from the live CRD, which stays.
    let upgrade = |extra: &[&str]| {
        let mut args = vec![
            "upgrade".to_owned(),
            "pack-operator".to_owned(),
            chart.to_str().unwrap().to_owned(),
            "--namespace=pack-operator".to_owned(),
            format!("--kubeconfig={}", kubeconfig.display()),
        ];
        for s in enable_only(&["redeploy-controller", "pack-controller"])
            .into_iter()
            .chain(extra.iter().map(|s| s.to_string()))
        {
            args.extend(["--set".to_owned(), s]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        helm(&args).unwrap();
    };
    let crd_api = Api::<CustomResourceDefinition>::all(client.clone());
    let policy =
        |crd: &CustomResourceDefinition| crd.annotations().get("helm.sh/resource-policy").cloned();
    upgrade(&[]);
    for name in ["packs.k8s.kubit.ir", "clusterpackrepositories.k8s.kubit.ir"] {
        let crd = crd_api
            .get(name)
            .await
            .expect("CRD installed by helm upgrade");
        assert_eq!(policy(&crd).as_deref(), Some("keep"), "{name}");
    }
    assert!(
        crd_api
            .get_opt("secretreflectors.k8s.kubit.ir")
            .await
            .unwrap()
            .is_none(),
        "the reflector is still disabled"
    );
    upgrade(&["crds.keep=false"]);
    let crd = crd_api.get("packs.k8s.kubit.ir").await.unwrap();
    assert_eq!(policy(&crd), None, "helm upgrade updated the CRD");
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Controller flags for a test: scoped to `namespace` (parallel tests share the cluster), the Lease in
/// the release namespace under the name the chart's Role allows, short leader-election timings.
/// pack-controller's Helm flags for a test: the pinned helm, a work directory of its own.
fn pack_helm_args(tag: &str) -> Vec<String> {
    vec![
        format!(
            "--helm-binary={}",
            e2e::tools::tool("helm").unwrap().display()
        ),
        format!(
            "--work-dir={}",
            std::env::temp_dir()
                .join(format!("pack-operator-e2e-work-{tag}"))
                .display()
        ),
    ]
}

fn controller_args(namespace: &str, controller: &str, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("--namespace={namespace}"),
        format!("--lease-namespace={namespace}"),
        format!("--lease-name={controller}"),
        "--lease-duration=3s".to_owned(),
        "--renew-deadline=2s".to_owned(),
        "--retry-period=500ms".to_owned(),
    ];
    args.extend_from_slice(extra);
    args
}

async fn replicasets(client: &Client, ns: &str, app: &str) -> usize {
    Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0)
}

async fn wait_replicasets(client: &Client, ns: &str, app: &str, want: usize) {
    wait::until(
        &format!("{want} ReplicaSet(s) of {app}"),
        TIMEOUT,
        EVERY,
        || async {
            let n = replicasets(client, ns, app).await;
            if n == want { Ok(Some(())) } else { Err(n) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redeploy_controller_with_the_chart_rbac_rolls_out_and_nothing_more() {
    let env = test_env();
    let ns = env.namespace("chart-rd").await;
    let release = format!("rd-{}", random_suffix());
    let (kubeconfig, _guard) =
        chart_service_account(&release, &ns.name, "redeploy-controller", &[]).await;
    let admin = env.client().await;

    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns.name);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({ "metadata": { "name": "test-cm-1" }, "data": { "var1": "value1" } }),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({ "metadata": { "name": "creds" }, "stringData": { "k": "v" } }),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns.name);
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "web", "annotations": { WATCH_TO_REDEPLOY: "configmap/test-cm-1, secret/creds" } },
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": { "app": "web" } },
                    "template": { "metadata": { "labels": { "app": "web" } },
                                  "spec": { "containers": [{ "name": "web", "image": "nginx" }] } }
                }
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    // A StatefulSet and a DaemonSet too: their rights are list/watch/patch only.
    let template = json!({
        "selector": { "matchLabels": { "app": "other" } },
        "template": { "metadata": { "labels": { "app": "other" } },
                      "spec": { "containers": [{ "name": "c", "image": "nginx" }] } }
    });
    let meta =
        json!({ "name": "other", "annotations": { WATCH_TO_REDEPLOY: "configmap/test-cm-1" } });
    let mut sts = template.clone();
    sts["serviceName"] = json!("other");
    Api::<StatefulSet>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": meta, "spec": sts })).unwrap(),
        )
        .await
        .unwrap();
    Api::<DaemonSet>::namespaced(admin.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({ "metadata": meta, "spec": template })).unwrap(),
        )
        .await
        .unwrap();

    let args = controller_args(&ns.name, "redeploy-controller", &["--delay=1s".to_owned()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with_kubeconfig(
        &kubeconfig,
        "redeploy-controller",
        &format!("{release}-0"),
        &args,
    )
    .unwrap();

    // The baselines are recorded (a patch of each workload), then a data change rolls them out.
    let recorded = "pack-operator.k8s.kubit.ir/watched-hashes";
    let sts_api = Api::<StatefulSet>::namespaced(admin.clone(), &ns.name);
    let ds_api = Api::<DaemonSet>::namespaced(admin.clone(), &ns.name);
    wait::until(
        "hashes recorded on every workload",
        TIMEOUT,
        EVERY,
        || async {
            let d = deployments.get("web").await.map_err(|e| e.to_string())?;
            let s = sts_api.get("other").await.map_err(|e| e.to_string())?;
            let x = ds_api.get("other").await.map_err(|e| e.to_string())?;
            if d.annotations().contains_key(recorded)
                && s.annotations().contains_key(recorded)
                && x.annotations().contains_key(recorded)
            {
                Ok(Some(()))
            } else {
                Err(controller.logs())
            }
        },
    )
    .await;
    wait_replicasets(&admin, &ns.name, "web", 1).await;
    cms.patch(
        "test-cm-1",
        &PatchParams::default(),
        &Patch::Merge(json!({ "data": { "var1": "changed" } })),
    )
    .await
    .unwrap();
    wait_replicasets(&admin, &ns.name, "web", 2).await;
    e2e::events::wait_event(&admin, &ns.name, "web", "Redeployed", "").await;
    let hash = "pack-operator.k8s.kubit.ir/config-hash";
    wait::until(
        "StatefulSet and DaemonSet rolled",
        TIMEOUT,
        EVERY,
        || async {
            let s = sts_api.get("other").await.map_err(|e| e.to_string())?;
            let d = ds_api.get("other").await.map_err(|e| e.to_string())?;
            let rolled = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
                t.and_then(|t| t.metadata.as_ref())
                    .and_then(|m| m.annotations.as_ref())
                    .is_some_and(|a| a.contains_key(hash))
            };
            if rolled(s.spec.as_ref().map(|s| &s.template))
                && rolled(d.spec.as_ref().map(|d| &d.template))
            {
                Ok(Some(()))
            } else {
                Err(controller.logs())
            }
        },
    )
    .await;
    // The Secret it watches is read through the same rights.
    secrets
        .patch(
            "creds",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "k": "v2" } })),
        )
        .await
        .unwrap();
    wait_replicasets(&admin, &ns.name, "web", 3).await;
    assert_eq!(
        controller.metric("pack_operator_leader").await.unwrap(),
        Some(1.0)
    );

    // What it must not do, refused by the API server.
    let sa = client_from(&kubeconfig).await.unwrap();
    let sa_secrets: Api<Secret> = Api::namespaced(sa.clone(), &ns.name);
    assert_forbidden(
        "redeploy deletes a Secret",
        sa_secrets.delete("creds", &DeleteParams::default()).await,
    );
    assert_forbidden(
        "redeploy creates a Secret",
        sa_secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": "stolen" } })).unwrap(),
            )
            .await,
    );
    assert_forbidden(
        "redeploy creates a Pod",
        Api::<Pod>::namespaced(sa.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": { "name": "p" },
                    "spec": { "containers": [{ "name": "c", "image": "busybox" }] }
                }))
                .unwrap(),
            )
            .await,
    );
    assert_forbidden(
        "redeploy deletes a Deployment",
        Api::<Deployment>::namespaced(sa.clone(), &ns.name)
            .delete("web", &DeleteParams::default())
            .await,
    );
    assert_forbidden(
        "redeploy patches a ConfigMap",
        Api::<ConfigMap>::namespaced(sa, &ns.name)
            .patch(
                "test-cm-1",
                &PatchParams::default(),
                &Patch::Merge(json!({ "data": { "x": "y" } })),
            )
            .await,
    );
}

/// Packages tests/charts/genpack at `versions` into `dir` and indexes it, with the pinned helm.
/// `packController.rbac.helmRules` narrowed to the kinds the test chart renders.
fn narrowed_helm_rules() -> String {
    format!(
        "json:packController.rbac.helmRules={}",
        json!([
            { "apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"],
              "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"] },
            { "apiGroups": [""], "resources": ["configmaps"],
              "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"] },
        ])
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_controller_refused_by_rbac_says_so_on_the_pack_and_recovers() {
    let env = test_env();
    let ns = env.namespace("chart-pk-rbac").await;
    let release = format!("pkr-{}", random_suffix());
    let scope = format!("packController.rbac.namespaces={{{}}}", ns.name);
    let (kubeconfig, _guard) = chart_service_account(
        &release,
        &ns.name,
        "pack-controller",
        &[
            "packController.rbac.scope=namespaces",
            &scope,
            &narrowed_helm_rules(),
        ],
    )
    .await;
    let admin = env.client().await;
    // An administrator trims the Secret rights (Helm's release records) from the chart's role.
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    let role_name = format!("{release}-pack-operator-pack-controller-packs");
    let full = roles.get(&role_name).await.unwrap();
    let mut trimmed = full.clone();
    trimmed.rules = Some(
        full.rules
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r.resources.as_deref() != Some(&["secrets".to_owned()][..]))
            .collect(),
    );
    assert_ne!(trimmed.rules, full.rules, "the role had a Secret rule");
    roles
        .replace(&role_name, &PostParams::default(), &trimmed)
        .await
        .unwrap();

    let repo = served_repository(&admin, &ns.name, &format!("{}-packs", ns.name), &["0.1.0"]).await;
    create_genpack_pack(
        &admin,
        &ns.name,
        "test",
        &repo.name,
        Some("0.1.0"),
        Value::Null,
    )
    .await;
    let packs: Api<Pack> = Api::namespaced(admin.clone(), &ns.name);
    let args = controller_args(&ns.name, "pack-controller", &pack_helm_args(&ns.name));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with_kubeconfig(
        &kubeconfig,
        "pack-controller",
        &format!("{release}-0"),
        &args,
    )
    .unwrap();

    // The refusal is on the Pack, with the verb, the resource and where to look.
    let ready = |p: &Pack| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned())
    };
    wait::until("Pack test reports the 403", TIMEOUT, EVERY, || async {
        let p = packs.get("test").await.unwrap();
        match ready(&p) {
            Some(c)
                if c.status == "False"
                    && c.reason == "KubernetesAPIError"
                    && c.message.contains("403")
                    && c.message.contains("secrets")
                    && c.message.contains("RBAC") =>
            {
                Ok(Some(()))
            }
            other => Err(format!("{other:?}\n{}", controller.logs())),
        }
    })
    .await;
    let note = e2e::events::wait_event(
        &admin,
        &ns.name,
        "test",
        "KubernetesAPIError",
        "cannot list resource \"secrets\"",
    )
    .await;
    assert!(note.contains("RBAC"), "{note}");
    assert!(
        Api::<Secret>::namespaced(admin.clone(), &ns.name)
            .list_metadata(&ListParams::default().labels("owner=helm"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "no release was installed"
    );

    // The rights back: the next retry installs, and Ready says so.
    let mut restored = roles.get(&role_name).await.unwrap();
    restored.rules = full.rules.clone();
    roles
        .replace(&role_name, &PostParams::default(), &restored)
        .await
        .unwrap();
    // No nudge: the next retry sees the rights. Retries back off 10 s, 20 s, 40 s, 80 s (±10 %) from
    // the first refusal, so the deadline covers the fourth.
    let retries = Duration::from_secs(10 + 20 + 40 + 80 + 20);
    wait::until("Pack test Applied", retries, EVERY, || async {
        let p = packs.get("test").await.unwrap();
        let s = p.status.clone().unwrap_or_default();
        match ready(&p) {
            Some(c)
                if c.status == "True" && s.state == Some(common::crd::pack::PackState::Applied) =>
            {
                Ok(Some(()))
            }
            other => Err(format!("{other:?} {:?}\n{}", s.state, controller.logs())),
        }
    })
    .await;
    // One Event for the one refusal, however many retries it took (no Event per retry).
    let refusals = e2e::events::events_for(&admin, &ns.name, "test", "KubernetesAPIError").await;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pack_controller_with_the_chart_rbac_resolves_packs_only_in_its_namespaces() {
    let env = test_env();
    let ns = env.namespace("chart-pk").await;
    let ns2 = env.namespace("chart-pk2").await;
    let outside = env.namespace("chart-pk-out").await;
    let release = format!("pk-{}", random_suffix());
    let scope = format!(
        "packController.rbac.namespaces={{{},{}}}",
        ns.name, ns2.name
    );
    // helmRules narrowed to the kinds the test chart renders: Helm's release Secrets and the
    // controller's own watch and recovery of them must not depend on helmRules.
    let narrowed = narrowed_helm_rules();
    let (kubeconfig, _guard) = chart_service_account(
        &release,
        &ns.name,
        "pack-controller",
        &["packController.rbac.scope=namespaces", &scope, &narrowed],
    )
    .await;
    let admin = env.client().await;

    let served = served_repository(
        &admin,
        &ns.name,
        &format!("{}-packs", ns.name),
        &["0.1.0", "0.1.3", "0.2.0", "1.0.0"],
    )
    .await;
    let repo = served.name.clone();
    let repos: Api<ClusterPackRepository> = Api::all(admin.clone());
    let packs: Api<Pack> = Api::namespaced(admin.clone(), &ns.name);
    let web = json!({ "gonbad": { "workloads": { "web": {
        "containers": { "web": { "image": { "repository": "nginx" } } } } } } });
    for (pack, version) in [("test", "~=0.1"), ("impossible", ">=5")] {
        create_genpack_pack(&admin, &ns.name, pack, &repo, Some(version), web.clone()).await;
    }

    // Two namespaces in scope, as the chart passes them; a Pack in each, and one outside.
    let packs2: Api<Pack> = Api::namespaced(admin.clone(), &ns2.name);
    let strangers: Api<Pack> = Api::namespaced(admin.clone(), &outside.name);
    for (ns, name) in [(&ns2.name, "test2"), (&outside.name, "stranger")] {
        create_genpack_pack(&admin, ns, name, &repo, Some("~=0.1"), Value::Null).await;
    }
    let mut args = controller_args(&ns.name, "pack-controller", &pack_helm_args(&ns.name));
    args[0] = format!("--namespace={},{}", ns.name, ns2.name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with_kubeconfig(
        &kubeconfig,
        "pack-controller",
        &format!("{release}-0"),
        &args,
    )
    .unwrap();

    wait::until(
        "repository Ready with 4 versions",
        TIMEOUT,
        EVERY,
        || async {
            let s = repos.get(&repo).await.unwrap().status.unwrap_or_default();
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && s.versions == Some(4) {
                Ok(Some(()))
            } else {
                Err(format!("{s:?}\n{}", controller.logs()))
            }
        },
    )
    .await;
    wait::until("Pack test resolved to 0.2.0", TIMEOUT, EVERY, || async {
        let s = packs.get("test").await.unwrap().status.unwrap_or_default();
        if s.version.as_deref() == Some("0.2.0") {
            Ok(Some(()))
        } else {
            Err(format!("{s:?}\n{}", controller.logs()))
        }
    })
    .await;
    e2e::events::wait_event(&admin, &ns.name, "impossible", "NoMatchingVersion", "").await;
    // Helm installs the releases with these rights in both namespaces, and uninstalls on deletion.
    for (api, name) in [(&packs, "test"), (&packs2, "test2")] {
        wait::until(&format!("Pack {name} Applied"), TIMEOUT, EVERY, || async {
            let s = api.get(name).await.unwrap().status.unwrap_or_default();
            if s.state == Some(common::crd::pack::PackState::Applied) && s.revision == Some(1) {
                Ok(Some(()))
            } else {
                Err(format!("{s:?}\n{}", controller.logs()))
            }
        })
        .await;
    }
    // Helm created the chart's Deployment with the narrowed rules.
    Api::<Deployment>::namespaced(admin.clone(), &ns.name)
        .get("test-web")
        .await
        .expect("Deployment test-web installed by helm");
    // A Pack outside the scope is left alone: no finalizer, no status.
    let stranger = strangers.get("stranger").await.unwrap();
    assert!(stranger.status.is_none(), "{:?}", stranger.status);
    assert!(
        stranger.metadata.finalizers.unwrap_or_default().is_empty(),
        "no finalizer outside the scope"
    );
    // ... and nothing this controller does runs into its RBAC (no Pack patch or Secret watch outside).
    let logs = controller.logs().to_lowercase();
    assert!(
        !logs.contains("forbidden"),
        "the controller hit a 403:\n{logs}"
    );
    packs.delete("test", &Default::default()).await.unwrap();
    wait::until("Pack test uninstalled and gone", TIMEOUT, EVERY, || async {
        match packs.get_opt("test").await.unwrap() {
            None => Ok(Some(())),
            Some(p) => Err(format!("{:?}\n{}", p.status, controller.logs())),
        }
    })
    .await;
    let records = Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .list_metadata(&ListParams::default().labels("owner=helm,name=test"))
        .await
        .unwrap();
    assert!(
        records.items.is_empty(),
        "helm uninstall ran with the chart's rights"
    );

    // Helm's rights hold in its namespace and nowhere else.
    let sa = client_from(&kubeconfig).await.unwrap();
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({ "metadata": { "name": name }, "data": { "a": "1" } }))
            .unwrap()
    };
    Api::<ConfigMap>::namespaced(sa.clone(), &ns.name)
        .create(&PostParams::default(), &cm("helm-may"))
        .await
        .expect("helm's rights in its namespace");
    assert_forbidden(
        "pack controller creates a kind helmRules leave out (a ServiceAccount) in its namespace",
        Api::<ServiceAccount>::namespaced(sa.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({ "metadata": { "name": "not-in-helm-rules" } }))
                    .unwrap(),
            )
            .await,
    );
    assert_forbidden(
        "pack controller creates a ConfigMap outside its namespaces",
        Api::<ConfigMap>::namespaced(sa.clone(), &outside.name)
            .create(&PostParams::default(), &cm("helm-may-not"))
            .await,
    );
    assert_forbidden(
        "pack controller reads Secrets outside its namespaces",
        Api::<Secret>::namespaced(sa.clone(), &outside.name)
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "pack controller creates a Deployment outside its namespaces",
        Api::<Deployment>::namespaced(sa.clone(), &outside.name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": { "name": "d" },
                    "spec": { "selector": { "matchLabels": { "a": "b" } },
                              "template": { "metadata": { "labels": { "a": "b" } },
                                            "spec": { "containers": [{ "name": "c", "image": "x" }] } } }
                }))
                .unwrap(),
            )
            .await,
    );
    assert_forbidden(
        "pack controller writes a Pack's status outside its namespaces",
        Api::<Pack>::namespaced(sa, &outside.name)
            .patch_status(
                "any",
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": {} })),
            )
            .await,
    );
    drop(controller);
}

#[tokio::test(flavor = "multi_thread")]
async fn reflector_controller_with_the_chart_rbac_reflects_and_never_touches_workloads() {
    let env = test_env();
    let ns = env.namespace("chart-rf").await;
    let target = env.namespace("chart-rf-to").await;
    let release = format!("rf-{}", random_suffix());
    // Only the Secret kind on: the chart grants nothing on ConfigMaps then (asserted at the end).
    let (kubeconfig, _guard) = chart_service_account(
        &release,
        &ns.name,
        "reflector-controller",
        &["reflectorController.kinds.configMaps=false"],
    )
    .await;
    let admin = env.client().await;

    // The main scenario with the chart's rights: a copy is made, follows its source, and is removed
    // with its SecretReflector.
    let sources: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    sources
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({ "metadata": { "name": "src" }, "stringData": { "k": "v1" } }),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let reflectors: Api<common::crd::SecretReflector> = Api::namespaced(admin.clone(), &ns.name);
    reflectors
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "SecretReflector",
                "metadata": { "name": "r" },
                "spec": { "source": { "name": "src" }, "targets": { "namespaces": [target.name] } }
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let args = controller_args(&ns.name, "reflector-controller", &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with_kubeconfig(
        &kubeconfig,
        "reflector-controller",
        &format!("{release}-0"),
        &args,
    )
    .unwrap();
    let copies: Api<Secret> = Api::namespaced(admin.clone(), &target.name);
    let copy_is = |want: &'static str| {
        let copies = copies.clone();
        let logs = controller.logs();
        async move {
            wait::until(&format!("copy with k={want}"), TIMEOUT, EVERY, || async {
                let data = copies
                    .get_opt("src")
                    .await
                    .unwrap()
                    .and_then(|c| c.data)
                    .and_then(|d| d.get("k").cloned());
                if data.as_ref().map(|b| b.0.as_slice()) == Some(want.as_bytes()) {
                    Ok(Some(()))
                } else {
                    Err(format!("{data:?}\n{logs}"))
                }
            })
            .await
        }
    };
    copy_is("v1").await;
    sources
        .patch(
            "src",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "k": "v2" } })),
        )
        .await
        .unwrap();
    copy_is("v2").await;
    reflectors
        .delete("r", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("copy and reflector gone", TIMEOUT, EVERY, || async {
        let copy = copies.get_opt("src").await.unwrap().is_some();
        let reflector = reflectors.get_opt("r").await.unwrap().is_some();
        if !copy && !reflector {
            Ok(Some(()))
        } else {
            Err((copy, reflector, controller.logs()))
        }
    })
    .await;
    Api::<Deployment>::namespaced(admin, &ns.name)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "app" },
                "spec": { "selector": { "matchLabels": { "a": "b" } },
                          "template": { "metadata": { "labels": { "a": "b" } },
                                        "spec": { "containers": [{ "name": "c", "image": "x" }] } } }
            }))
            .unwrap(),
        )
        .await
        .unwrap();

    let sa = client_from(&kubeconfig).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(sa.clone(), &ns.name);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({ "metadata": { "name": "copy" }, "stringData": { "k": "v" } }),
            )
            .unwrap(),
        )
        .await
        .expect("the reflector may create Secrets");
    secrets
        .delete("copy", &DeleteParams::default())
        .await
        .expect("the reflector may delete Secrets");
    let deployments: Api<Deployment> = Api::namespaced(sa.clone(), &ns.name);
    assert_forbidden("reflector gets a Deployment", deployments.get("app").await);
    assert_forbidden(
        "reflector patches a Deployment",
        deployments
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "replicas": 0 } })),
            )
            .await,
    );
    assert_forbidden(
        "reflector lists Pods",
        Api::<Pod>::namespaced(sa.clone(), &ns.name)
            .list(&ListParams::default())
            .await,
    );
    assert_forbidden(
        "reflector reads ConfigMaps",
        Api::<ConfigMap>::namespaced(sa, &ns.name)
            .list(&ListParams::default())
            .await,
    );
}

/// The `NAME=value` assignment in `text` (first occurrence; value up to whitespace).
fn assignment<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let rest = line
            .trim_start()
            .trim_start_matches("ARG ")
            .strip_prefix(name)?;
        rest.strip_prefix('=')?.split_whitespace().next()
    })
}

#[test]
fn the_pack_controller_image_bundles_the_helm_the_tests_use() {
    let root = workspace_root();
    let tools = std::fs::read_to_string(root.join("hack/tools.sh")).unwrap();
    let dockerfile = std::fs::read_to_string(root.join("deploy/docker/Dockerfile")).unwrap();
    let pinned = assignment(&tools, "HELM_VERSION").expect("HELM_VERSION in hack/tools.sh");
    assert_eq!(assignment(&dockerfile, "HELM_VERSION"), Some(pinned));
    assert!(dockerfile.contains("COPY tests/tools/helm/go.mod tests/tools/helm/go.sum"));
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    assert!(dockerfile.contains("COPY --from=helm /out/helm /usr/local/bin/helm"));
    assert!(values.contains("binary: /usr/local/bin/helm"));
}

/// `kubectl apply` that retries while the API server's discovery catches up with just-installed CRDs.
async fn apply_text(kubeconfig: &Path, text: &str) {
    let mut last = String::new();
    for _ in 0..30 {
        match e2e::chart::kubectl(kubeconfig, &["apply", "-f", "-"], text) {
            Ok(_) => return,
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("kubectl apply failed: {last}");
}

/// Waits until sample Pack `name` is Applied at 0.2.0; its `status.chartRef` must start `chart_ref`.
async fn wait_sample_pack(
    packs: &Api<Pack>,
    name: &str,
    chart_ref: Option<&str>,
    controller: &ControllerProcess,
) {
    let want = Want::default()
        .state(common::crd::pack::PackState::Applied)
        .version("0.2.0");
    let pack = wait_pack(packs, name, want, Some(controller)).await;
    if let Some(prefix) = chart_ref {
        let pinned = pack.status.and_then(|s| s.chart_ref).unwrap_or_default();
        assert!(pinned.starts_with(prefix), "{name} is pinned by {pinned}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn samples_apply_and_work_on_a_cluster_with_the_chart_installed() {
    // A private control plane: the whole chart (CRDs, policies, RBAC) installed as a user would.
    let dir = std::env::temp_dir().join(format!("pack-operator-e2e-samples-{}", random_suffix()));
    let plane = ControlPlane::start_without_crds(&dir).await.unwrap();
    let kubeconfig = plane.kubeconfig.clone();
    let release_ns = format!("po-{}", random_suffix());
    helm(&[
        "install",
        "pack-operator",
        chart_dir().to_str().unwrap(),
        &format!("--namespace={release_ns}"),
        "--create-namespace",
        &format!("--kubeconfig={}", kubeconfig.display()),
    ])
    .unwrap();

    // The samples, as they are; only the repository URL moves to this test's server.
    let server = ChartServer::with_versions(
        &format!("chart-samples-{}", random_suffix()),
        &["0.1.0", "0.1.3", "0.2.0", "1.0.0"],
    )
    .await;
    // The OCI sample's registry (make run's 127.0.0.1:8880): the e2e registry with the same versions.
    let registry = Registry::start(&format!("chart-samples-{}", random_suffix()), false).await;
    for v in ["0.1.0", "0.1.3", "0.2.0", "1.0.0"] {
        registry.push_genpack(v);
    }
    let samples = workspace_root().join("deploy/samples");
    let mut files: Vec<_> = std::fs::read_dir(&samples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file)
            .unwrap()
            .replace("http://127.0.0.1:8879/", &server.url)
            .replace("oci://127.0.0.1:8880/charts", &registry.repository_url());
        apply_text(&kubeconfig, &text).await;
    }

    // The controllers, each with the token of the ServiceAccount the chart made.
    let env = e2e::TestEnv {
        kubeconfig: kubeconfig.clone(),
    };
    let start = |controller: &str, sa: std::path::PathBuf, extra: &[&str]| {
        let mut args = vec![
            format!("--lease-namespace={release_ns}"),
            format!("--lease-name={controller}"),
            "--lease-duration=3s".to_owned(),
            "--renew-deadline=2s".to_owned(),
            "--retry-period=500ms".to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ControllerProcess::start_with_kubeconfig(
            &sa,
            controller,
            &format!("samples-{controller}"),
            &args,
        )
        .unwrap()
    };
    let redeploy = start(
        "redeploy-controller",
        env.service_account_kubeconfig(&release_ns, "pack-operator-redeploy-controller")
            .await,
        &["--delay=1s"],
    );
    let helm_args = pack_helm_args(&release_ns);
    let helm_args: Vec<&str> = helm_args.iter().map(String::as_str).collect();
    let pack = start(
        "pack-controller",
        env.service_account_kubeconfig(&release_ns, "pack-operator-pack-controller")
            .await,
        &helm_args,
    );

    let reflector = start(
        "reflector-controller",
        env.service_account_kubeconfig(&release_ns, "pack-operator-reflector-controller")
            .await,
        &[],
    );

    let client = client_from(&kubeconfig).await.unwrap();
    // The sample SecretReflector: platform/shared-credentials copied to app-a (named) and app-b (label).
    for target in ["app-a", "app-b"] {
        let copies: Api<Secret> = Api::namespaced(client.clone(), target);
        wait::until(
            &format!("the sample copy of shared-credentials in {target}"),
            TIMEOUT,
            EVERY,
            || async {
                match copies.get_opt("shared-credentials").await {
                    Ok(Some(c)) if c.data.as_ref().is_some_and(|d| d.contains_key("password")) => {
                        Ok(Some(()))
                    }
                    other => Err(format!(
                        "{:?}\n{}",
                        other.map(|c| c.is_some()),
                        reflector.logs()
                    )),
                }
            },
        )
        .await;
    }
    let packs: Api<Pack> = Api::namespaced(client.clone(), "default");
    wait_sample_pack(&packs, "test", None, &pack).await;
    // The OCI sample: installed from the registry, pinned by manifest digest.
    let oci_ref = format!("{}/genpack@sha256:", registry.repository_url());
    wait_sample_pack(&packs, "test-oci", Some(&oci_ref), &pack).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    for name in ["test-web", "test-worker"] {
        deployments
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("the sample Pack's Deployment {name}: {e}"));
    }
    wait::until(
        "sample Deployment test recorded",
        TIMEOUT,
        EVERY,
        || async {
            let d = deployments.get("test").await.map_err(|e| e.to_string())?;
            if d.annotations()
                .contains_key("pack-operator.k8s.kubit.ir/watched-hashes")
            {
                Ok(Some(()))
            } else {
                Err(redeploy.logs())
            }
        },
    )
    .await;
    let rs = |n: usize| {
        let client = client.clone();
        async move {
            wait::until(
                &format!("{n} ReplicaSet(s) of test"),
                TIMEOUT,
                EVERY,
                || async {
                    let got = Api::<ReplicaSet>::namespaced(client.clone(), "default")
                        .list(&ListParams::default().labels("app.kubernetes.io/name=test"))
                        .await
                        .map(|l| l.items.len())
                        .unwrap_or(0);
                    if got == n { Ok(Some(())) } else { Err(got) }
                },
            )
            .await
        }
    };
    rs(1).await;
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .patch(
            "test-cm-1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "var1": "changed" } })),
        )
        .await
        .unwrap();
    rs(2).await;

    // The chart's admission policy is in force: an invalid annotation is refused.
    let err = deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "bad", "annotations": { WATCH_TO_REDEPLOY: "ConfigMap/test-cm-1" } },
                "spec": { "selector": { "matchLabels": { "a": "b" } },
                          "template": { "metadata": { "labels": { "a": "b" } },
                                        "spec": { "containers": [{ "name": "c", "image": "x" }] } } }
            }))
            .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("watch-to-redeploy"), "{err}");

    drop((redeploy, pack));

    // Uninstall keeps the CRDs and so the custom resources (helm.sh/resource-policy: keep); installing
    // the same release again adopts them.
    let kc = format!("--kubeconfig={}", kubeconfig.display());
    let ns_flag = format!("--namespace={release_ns}");
    helm(&["uninstall", "pack-operator", &ns_flag, &kc]).unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for crd in [
        "packs.k8s.kubit.ir",
        "clusterpackrepositories.k8s.kubit.ir",
        "secretreflectors.k8s.kubit.ir",
    ] {
        assert!(crds.get_opt(crd).await.unwrap().is_some(), "{crd} kept");
    }
    assert!(
        packs.get_opt("test").await.unwrap().is_some(),
        "Pack test kept"
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt("pack-operator-redeploy-controller")
            .await
            .unwrap()
            .is_none(),
        "everything else is removed"
    );
    helm(&[
        "install",
        "pack-operator",
        chart_dir().to_str().unwrap(),
        &ns_flag,
        &kc,
    ])
    .unwrap();

    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Metric names the dashboard and alerts use before their controller exports them (issues 5 and 6).
/// Remove an entry when the controller registers it; this test then keeps the names in step.
const PENDING_METRICS: &[&str] = &[];

/// Every `pack_operator_*` and `process_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["pack_operator_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(tail.len());
            // A name starts at a word boundary: `pack_operator_process_x` is not `process_x`.
            let before = rest[..at].chars().next_back();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn the_dashboard_and_alerts_query_metrics_the_controllers_register() {
    let root = workspace_root();
    let dashboard =
        std::fs::read_to_string(root.join("deploy/dashboards/pack-operator.json")).unwrap();
    let parsed: Value = serde_json::from_str(&dashboard).expect("dashboard is JSON");
    assert_eq!(parsed["uid"], "pack-operator");
    let rules = template(
        "po",
        "pack-operator",
        &[
            "metrics.prometheusRule.enabled=true".to_owned(),
            "metrics.serviceMonitor.enabled=true".to_owned(),
        ],
    )
    .unwrap();
    let rules = serde_json::to_string(&of_kind(&rules, "PrometheusRule")).unwrap();

    // What the controllers register: string literals in their sources (names are registered without the
    // prefix, counters without _total).
    let mut sources = String::new();
    for dir in [
        "common/src",
        "pack-controller/src",
        "redeploy-controller/src",
        "reflector-controller/src",
    ] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let names: BTreeSet<String> = metric_names(&dashboard)
        .into_iter()
        .chain(metric_names(&rules))
        .collect();
    assert!(names.len() > 10, "{names:?}");
    for full in names {
        // Prometheus conventions: the process metrics have the standard names (no project prefix), and
        // the project's prefix is said once (pack-controller's repository loop is a `controller` label).
        let own = full.strip_prefix("pack_operator_");
        assert!(
            !own.is_some_and(|n| n.starts_with("process_") || n.starts_with("repository_")),
            "{full} does not follow the metric naming conventions (docs/runtime.md)"
        );
        let mut base = own.unwrap_or(&full);
        for suffix in ["_total", "_bucket", "_info"] {
            base = base.strip_suffix(suffix).unwrap_or(base);
        }
        let registered = |n: &str| sources.contains(&format!("\"{n}\""));
        let known = registered(base);
        let pending = PENDING_METRICS.contains(&base);
        assert!(
            known || pending,
            "{full} is queried but no controller registers it"
        );
    }
}

/// What `helm lint --strict` and `helm template` say when both refuse the chart with `sets` (`--set`, or
/// `--set-json` after `json:`); panics if either accepts it.
fn refusal(sets: &[&str]) -> String {
    let chart = chart_dir();
    let mut lint = vec!["lint", chart.to_str().unwrap(), "--strict"];
    for s in sets {
        match s.strip_prefix("json:") {
            Some(json) => lint.extend(["--set-json", json]),
            None => lint.extend(["--set", s]),
        }
    }
    let linted = helm(&lint).expect_err(&format!("helm lint accepted {sets:?}"));
    let owned: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let rendered = template("po", "pack-operator", &owned)
        .expect_err(&format!("helm template accepted {sets:?}"));
    format!("{linted:#}\n{rendered:#}")
}

#[test]
fn values_schema_refuses_unknown_keys_and_wrong_types() {
    // A typo is refused, naming the key, instead of silently installing everything.
    for (set, key) in [
        ("redeployController.enable=false", "enable"),
        ("crd.keep=false", "crd"),
        ("packController.helm.timout=1m", "timout"),
        ("reflectorController.leaderElection.enable=false", "enable"),
        ("metrics.serviceMonitor.enable=true", "enable"),
        (
            "metrics.prometheusRule.jobs.pack-controler=scrape",
            "pack-controler",
        ),
        ("packController.rbac.scopes=cluster", "scopes"),
    ] {
        let err = refusal(&[set]);
        assert!(err.contains(&format!("'{key}'")), "{set}: {err}");
        assert!(err.contains("not allowed"), "{set}: {err}");
    }
    // A wrong type is refused, naming where.
    for (set, path) in [
        ("packController.replicas=two", "/packController/replicas"),
        ("crds.keep=yes", "/crds/keep"),
        (
            "reflectorController.requireConsent=maybe",
            "/reflectorController/requireConsent",
        ),
        (
            "packController.maxValuesSize=1MiB",
            "/packController/maxValuesSize",
        ),
        (
            "packController.defaultServiceAccount=true",
            "/packController/defaultServiceAccount",
        ),
        (
            "json:packController.extraArgs=\"--namespace=a\"",
            "/packController/extraArgs",
        ),
        (
            "json:redeployController.podAnnotations={\"a\":1}",
            "/redeployController/podAnnotations/a",
        ),
        ("logFormat=yaml", "/logFormat"),
        ("redeployController.rate=fast", "/redeployController/rate"),
        (
            "packController.image.pullPolicy=Sometimes",
            "/packController/image/pullPolicy",
        ),
        // Durations the binaries parse follow their grammar (and that of the CRDs).
        (
            "redeployController.delay=5 minutes",
            "/redeployController/delay",
        ),
        (
            "packController.helm.timeout=300",
            "/packController/helm/timeout",
        ),
        (
            "reflectorController.resync=5min",
            "/reflectorController/resync",
        ),
    ] {
        let err = refusal(&[set]);
        assert!(err.contains(path), "{set}: {err}");
    }
    // Free-form Kubernetes objects stay free-form, and every typed value takes its kind of value.
    let docs = template(
        "po",
        "pack-operator",
        &[
            "json:packController.resources={\"limits\":{\"cpu\":\"2\",\"memory\":\"1Gi\"}}".into(),
            "json:packController.extraEnv=[{\"name\":\"A\",\"valueFrom\":{\"fieldRef\":{\"fieldPath\":\"spec.nodeName\"}}}]".into(),
            "json:redeployController.affinity={\"nodeAffinity\":{}}".into(),
            "json:reflectorController.tolerations=[{\"operator\":\"Exists\"}]".into(),
            "redeployController.podAnnotations.example\\.com/team=platform".into(),
            "redeployController.podDisruptionBudget.maxUnavailable=50%".into(),
            "redeployController.rate=0.5".into(),
            "metrics.prometheusRule.reconcileErrorRate=0.05".into(),
            "redeployController.delay=1m30s".into(),
            "packController.helm.timeout=1.5h".into(),
            "packController.defaultServiceAccount=deployer".into(),
            "packController.maxValuesSize=2097152".into(),
            "reflectorController.requireConsent=false".into(),
            "json:imagePullSecrets=[{\"name\":\"regcred\"}]".into(),
            "commonLabels.team=platform".into(),
        ],
    )
    .unwrap();
    assert!(!of_kind(&docs, "Deployment").is_empty());
}

/// The keys of the objects the schema closes (`additionalProperties: false`), as dotted paths.
fn closed_schema_keys(schema: &Value, defs: &Value, path: &str, out: &mut BTreeSet<String>) {
    let schema = match schema["$ref"].as_str() {
        Some(r) => &defs[r.trim_start_matches("#/$defs/")],
        None => schema,
    };
    if schema["additionalProperties"] != json!(false) {
        return;
    }
    for (key, sub) in schema["properties"].as_object().unwrap() {
        let p = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        out.insert(p.clone());
        closed_schema_keys(sub, defs, &p, out);
    }
}

#[test]
fn values_schema_names_exactly_the_keys_of_values_yaml() {
    // Rendering the defaults proves the schema allows every key of values.yaml; this proves it invents
    // none, so a key renamed in values.yaml cannot linger in the schema.
    let chart = chart_dir();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart.join("values.schema.json")).unwrap())
            .unwrap();
    let values: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap()).unwrap();
    let mut keys = BTreeSet::new();
    closed_schema_keys(&schema, &schema["$defs"], "", &mut keys);
    // Optional by design: one scrape job per controller, none by default.
    let optional = |k: &str| k.starts_with("metrics.prometheusRule.jobs.");
    for key in keys.iter().filter(|k| !optional(k)) {
        let found = key.split('.').try_fold(&values, |v, part| v.get(part));
        assert!(
            found.is_some(),
            "the schema allows {key}, which values.yaml lacks"
        );
    }
    assert!(keys.contains("redeployController.enabled"), "{keys:?}");
}

/// The NOTES `helm install` prints for the chart with `sets`.
fn notes(sets: &[String]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "install",
        "po",
        chart.to_str().unwrap(),
        "--namespace=ops",
        "--dry-run=client",
        "-o",
        "json",
    ];
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    let release: Value = serde_json::from_str(&helm(&args).unwrap()).unwrap();
    release["info"]["notes"].as_str().unwrap().to_owned()
}

#[test]
fn notes_say_crds_are_kept_only_when_the_release_installs_and_keeps_some() {
    for mask in 0..8u8 {
        let enabled = combination(mask);
        let has_crds = enabled.iter().any(|c| !crds_of(c).is_empty());
        for (install, keep) in [(true, true), (true, false), (false, true), (false, false)] {
            let mut sets = enable_only(&enabled);
            sets.push(format!("crds.install={install}"));
            sets.push(format!("crds.keep={keep}"));
            let text = notes(&sets);
            let what = format!("{enabled:?} install={install} keep={keep}:\n{text}");
            assert_eq!(
                text.contains("CRDs are kept on uninstall"),
                has_crds && install && keep,
                "{what}"
            );
            assert_eq!(
                text.contains("helm uninstall deletes the CRDs"),
                has_crds && install && !keep,
                "{what}"
            );
        }
    }
}
