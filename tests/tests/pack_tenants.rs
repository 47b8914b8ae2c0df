//! Packs as a tenant's: every Helm operation of a Pack runs as a ServiceAccount of its own namespace
//! (`spec.serviceAccountName`, or the controller's `--default-service-account`), so a Pack cannot do more
//! than that account may, whatever rights the controller has. A missing account is reported and heals
//! when it is created; the lock-down mode runs with the chart's minimal controller RBAC.

use std::time::Duration;

use common::crd::{Pack, pack::PackState};
use e2e::{
    chart::{assert_forbidden, chart_service_account},
    cluster::client_from,
    controller::ControllerProcess,
    events::wait_event,
    packs::{Want, pack_work_dir, ready_message, served_repository, wait_pack},
    test_env, tools, wait,
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, ServiceAccount},
    rbac::v1::{ClusterRoleBinding, Role, RoleBinding},
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(250);

/// pack-controller flags for a test in namespace `ns`: its Packs only, the Lease there under the name the
/// chart's Role allows, short leader-election timings, the pinned helm, a work directory of its own.
fn controller_args(ns: &str, work: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        format!("--namespace={ns}"),
        format!("--lease-namespace={ns}"),
        "--lease-name=pack-controller".to_owned(),
        "--lease-duration=3s".to_owned(),
        "--renew-deadline=2s".to_owned(),
        "--retry-period=500ms".to_owned(),
        format!("--helm-binary={}", tools::tool("helm").unwrap().display()),
        format!("--work-dir={}", work.display()),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// Pack `name` of genpack from `repo`, run as `account` (None: no spec.serviceAccountName), with `values`.
fn pack(name: &str, repo: &str, account: Option<&str>, values: Value) -> Pack {
    let mut spec = json!({
        "chart": {
            "repository": {"kind": "ClusterPackRepository", "name": repo},
            "name": "genpack",
            "version": "~=0.1",
        },
        "values": values,
    });
    if let Some(account) = account {
        spec["serviceAccountName"] = json!(account);
    }
    serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap()
}

fn web() -> Value {
    json!({"gonbad": {"workloads": {"web": {"containers": {"web": {"image": {"repository": "nginx"}}}}}}})
}

/// Creates ServiceAccount `ns/name` with every right inside `ns` and none outside: what a platform team
/// grants a team's deployer (a RoleBinding to the built-in `admin` on a real cluster; here a Role with the
/// same reach, since the test control plane runs no ClusterRole aggregation, which fills `admin`).
async fn tenant_deployer(client: &Client, ns: &str, name: &str) {
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-namespace-admin")},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": format!("{name}-admin")},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": format!("{name}-namespace-admin")},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
}

/// Waits until Pack `name` has a Ready condition of `reason`; returns its message.
async fn wait_ready_reason(
    packs: &Api<Pack>,
    name: &str,
    reason: &str,
    controller: &ControllerProcess,
) -> String {
    ready_message(&wait_pack(packs, name, Want::reason(reason), Some(controller)).await)
}

async fn wait_applied(packs: &Api<Pack>, name: &str, controller: &ControllerProcess) {
    let want = Want::default().state(PackState::Applied).status("True");
    wait_pack(packs, name, want, Some(controller)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_runs_as_its_service_account_and_cannot_do_more_than_it_may() {
    let env = test_env();
    let ns = env.namespace("tenant-a").await;
    let other = env.namespace("tenant-b").await;
    let admin = env.client().await;
    let served =
        served_repository(&admin, &ns.name, &format!("{}-packs", ns.name), &["0.1.0"]).await;
    // The controller runs with the chart's default RBAC (scope cluster, helmRules `*` on `*`): it may do
    // anything, so only the ServiceAccount limits the Packs.
    let release = format!("tn-{}", &ns.name[ns.name.len() - 6..]);
    let (kubeconfig, _guard) =
        chart_service_account(&release, &ns.name, "pack-controller", &[]).await;
    let work = pack_work_dir(&ns.name, "tenant-0");
    let args = controller_args(&ns.name, &work, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller =
        ControllerProcess::start_with_kubeconfig(&kubeconfig, "pack-controller", "tenant-0", &args)
            .unwrap();
    let packs: Api<Pack> = Api::namespaced(admin.clone(), &ns.name);

    // Values that would make the tenant cluster-admin, and plant a ConfigMap in another team's namespace.
    let escalate = json!({"gonbad": {"escalate": {"clusterAdminFor": {"name": "deployer", "namespace": ns.name}}}});
    let plant = json!({"gonbad": {"escalate": {"configMapIn": other.name}}});
    for (name, values) in [("escalate", escalate), ("plant", plant), ("web", web())] {
        packs
            .create(
                &PostParams::default(),
                &pack(name, &served.name, Some("deployer"), values),
            )
            .await
            .unwrap();
    }

    // The ServiceAccount does not exist yet: said clearly, nothing runs.
    let message = wait_ready_reason(&packs, "web", "ServiceAccountNotFound", &controller).await;
    assert!(
        message.contains(&format!("ServiceAccount {}/deployer", ns.name))
            && message.contains("spec.serviceAccountName"),
        "{message}"
    );
    wait_event(
        &admin,
        &ns.name,
        "web",
        "ServiceAccountNotFound",
        "does not exist",
    )
    .await;
    let records = Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .list_metadata(&ListParams::default().labels("owner=helm"))
        .await
        .unwrap();
    assert!(
        records.items.is_empty(),
        "no Helm ran without the ServiceAccount"
    );

    // It appears, with the namespace's admin role only: the Packs proceed at once (watched, not polled).
    tenant_deployer(&admin, &ns.name, "deployer").await;
    wait_applied(&packs, "web", &controller).await;
    Api::<Deployment>::namespaced(admin.clone(), &ns.name)
        .get("web-web")
        .await
        .expect("the chart's Deployment, installed as the ServiceAccount");

    // What the ServiceAccount may not do, the Pack cannot do, and the status names the fix.
    let message = wait_ready_reason(&packs, "escalate", "InstallFailed", &controller).await;
    assert!(
        message.contains("is forbidden")
            && message.contains("resource \"clusterrolebindings\"")
            && message.contains(&format!("grant it to ServiceAccount {}/deployer", ns.name)),
        "{message}"
    );
    let bindings = Api::<ClusterRoleBinding>::all(admin.clone());
    assert!(
        bindings
            .get_opt(&format!("{}-escalate-cluster-admin", ns.name))
            .await
            .unwrap()
            .is_none(),
        "the tenant did not become cluster-admin"
    );
    let message = wait_ready_reason(&packs, "plant", "InstallFailed", &controller).await;
    assert!(
        message.contains("is forbidden")
            && message.contains("resource \"configmaps\"")
            && message.contains(&format!("grant it to ServiceAccount {}/deployer", ns.name)),
        "{message}"
    );
    assert!(
        Api::<ConfigMap>::namespaced(admin.clone(), &other.name)
            .get_opt("plant-planted")
            .await
            .unwrap()
            .is_none(),
        "nothing planted in another team's namespace"
    );

    // Deletion uninstalls as the ServiceAccount too.
    packs.delete("web", &Default::default()).await.unwrap();
    wait::until("Pack web uninstalled and gone", TIMEOUT, EVERY, || async {
        match packs.get_opt("web").await.unwrap() {
            None => Ok(Some(())),
            Some(p) => Err(format!("{:?}\n{}", p.status, controller.logs())),
        }
    })
    .await;
    assert!(
        Api::<Deployment>::namespaced(admin.clone(), &ns.name)
            .get_opt("web-web")
            .await
            .unwrap()
            .is_none()
    );
    let _ = std::fs::remove_dir_all(work);
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_down_mode_runs_packs_as_the_default_account_with_minimal_controller_rbac() {
    let env = test_env();
    let ns = env.namespace("lockdown").await;
    let admin = env.client().await;
    let release = format!("ld-{}", &ns.name[ns.name.len() - 6..]);
    let scope = format!("packController.rbac.namespaces={{{}}}", ns.name);
    let (kubeconfig, _guard) = chart_service_account(
        &release,
        &ns.name,
        "pack-controller",
        &[
            "packController.defaultServiceAccount=deployer",
            "packController.rbac.scope=namespaces",
            &scope,
        ],
    )
    .await;
    let served =
        served_repository(&admin, &ns.name, &format!("{}-packs", ns.name), &["0.1.0"]).await;
    let work = pack_work_dir(&ns.name, "lockdown-0");
    let args = controller_args(&ns.name, &work, &["--default-service-account=deployer"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with_kubeconfig(
        &kubeconfig,
        "pack-controller",
        "lockdown-0",
        &args,
    )
    .unwrap();
    let packs: Api<Pack> = Api::namespaced(admin.clone(), &ns.name);
    packs
        .create(
            &PostParams::default(),
            &pack("web", &served.name, None, web()),
        )
        .await
        .unwrap();
    let message = wait_ready_reason(&packs, "web", "ServiceAccountNotFound", &controller).await;
    assert!(message.contains("--default-service-account"), "{message}");
    tenant_deployer(&admin, &ns.name, "deployer").await;
    wait_applied(&packs, "web", &controller).await;
    Api::<Deployment>::namespaced(admin.clone(), &ns.name)
        .get("web-web")
        .await
        .expect("installed as the namespace's deployer");
    // The controller's own rights: none of Helm's.
    let sa = client_from(&kubeconfig).await.unwrap();
    assert_forbidden(
        "the lock-down controller creates a ConfigMap itself",
        Api::<ConfigMap>::namespaced(sa.clone(), &ns.name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
            )
            .await,
    );
    assert_forbidden(
        "the lock-down controller writes a Secret itself",
        Api::<Secret>::namespaced(sa, &ns.name)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
            )
            .await,
    );
    packs.delete("web", &Default::default()).await.unwrap();
    wait::until("Pack web uninstalled and gone", TIMEOUT, EVERY, || async {
        match packs.get_opt("web").await.unwrap() {
            None => Ok(Some(())),
            Some(p) => Err(format!("{:?}\n{}", p.status, controller.logs())),
        }
    })
    .await;
    let logs = controller.logs().to_lowercase();
    assert!(
        !logs.contains("forbidden"),
        "the controller hit a 403:\n{logs}"
    );
    let _ = std::fs::remove_dir_all(work);
}
