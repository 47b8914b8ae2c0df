//! pack-controller drives the real helm CLI against the real API server: the README's sample Pack
//! installs, upgrades on values, versions and vars, runs no Helm when nothing changed, uninstalls on
//! deletion, reports Helm's failures and recovers, rolls back when asked, leaves releases it does not own
//! alone, and recovers a release left pending by a killed Helm process.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::crd::{Pack, pack::PackState};
use e2e::{
    TestEnv,
    controller::ControllerProcess,
    packs::{
        ServedRepository, helm, helm_operations, publish, served_repository, start_pack_controller,
    },
    test_env, wait,
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(250);

/// The README's sample Pack, with the repository name of this test.
fn sample_pack(repo: &str) -> Value {
    json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "Pack",
        "metadata": {"name": "test"},
        "spec": {
            "chart": {
                "repository": {"kind": "ClusterPackRepository", "name": repo},
                "name": "genpack",
                "version": "~=0.1",
            },
            "values": sample_values(),
        },
    })
}

fn sample_values() -> Value {
    json!({
        "gonbad": {
            "workloads": {
                "web": {
                    "kind": "deployment",
                    "replicaCount": 1,
                    "annotations": {
                        "pack-operator.k8s.kubit.ir/watch-to-redeploy": "configmap/test-cm-1"
                    },
                    "containers": {"web": {"image": {"repository": "nginx"}}},
                },
                "worker": {
                    "kind": "deployment",
                    "replicaCount": 2,
                    "containers": {"web": {"image": {"repository": "nginx"}}},
                },
            }
        }
    })
}

struct Fixture {
    env: TestEnv,
    client: Client,
    ns: e2e::cluster::TestNamespace,
    repo: ServedRepository,
    packs: Api<Pack>,
    helm_home: std::path::PathBuf,
}

async fn fixture(prefix: &str, versions: &[&str]) -> Fixture {
    let env = test_env();
    let ns = env.namespace(prefix).await;
    let client = env.client().await;
    let repo = served_repository(
        &client,
        &ns.name,
        &format!("{}-kubit-packs", ns.name),
        versions,
    )
    .await;
    let helm_home = repo.server.dir.parent().unwrap().join("helm-user");
    Fixture {
        env,
        packs: Api::namespaced(client.clone(), &ns.name),
        client,
        ns,
        repo,
        helm_home,
    }
}

impl Fixture {
    /// Runs helm as a user would, with the test cluster's kubeconfig.
    fn helm(&self, args: &[&str]) -> String {
        let kubeconfig = self.env.kubeconfig.to_str().unwrap().to_owned();
        let mut all = vec![
            "--kubeconfig",
            kubeconfig.as_str(),
            "-n",
            self.ns.name.as_str(),
        ];
        all.extend_from_slice(args);
        helm(&all, &self.helm_home)
    }

    fn helm_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.helm(args)).unwrap()
    }

    /// `helm history <release>` as JSON (oldest first).
    fn history(&self, release: &str) -> Vec<Value> {
        self.helm_json(&["history", release, "-o", "json"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    async fn create(&self, pack: Value) {
        let pack: Pack = serde_json::from_value(pack).unwrap();
        self.packs
            .create(&PostParams::default(), &pack)
            .await
            .unwrap();
    }

    async fn patch_spec(&self, name: &str, spec: Value) {
        self.packs
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": spec})),
            )
            .await
            .unwrap();
    }

    /// Waits for `state` with Ready reason `reason` (and revision, when given); returns the Pack.
    async fn wait_state(
        &self,
        name: &str,
        state: PackState,
        reason: &str,
        revision: Option<i64>,
        controller: &ControllerProcess,
    ) -> Pack {
        wait::until(
            &format!("Pack {name}: {state:?} / {reason} / revision {revision:?}"),
            TIMEOUT,
            EVERY,
            || async {
                let p = self.packs.get(name).await.unwrap();
                let s = p.status.clone().unwrap_or_default();
                let ready = s.conditions.iter().find(|c| c.type_ == "Ready");
                if s.state == Some(state)
                    && ready.is_some_and(|c| c.reason == reason)
                    && (revision.is_none() || s.revision == revision)
                {
                    Ok(Some(p))
                } else {
                    Err(format!(
                        "state {:?}, ready {:?}, revision {:?}\n--- controller log tail:\n{}",
                        s.state,
                        ready.map(|c| (&c.reason, &c.message)),
                        s.revision,
                        tail(&controller.logs(), 8)
                    ))
                }
            },
        )
        .await
    }

    async fn deployment(&self, name: &str) -> Option<Deployment> {
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns.name)
            .get_opt(name)
            .await
            .unwrap()
    }

    /// Waits for an Event on `object` with `reason` whose note contains `contains`; returns the note.
    async fn wait_event(&self, object: &str, reason: &str, contains: &str) -> String {
        e2e::events::wait_event(&self.client, &self.ns.name, object, reason, contains).await
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Asserts that the controller starts at most `more` Helm processes during `period`.
async fn helm_runs_at_most(controller: &ControllerProcess, more: f64, period: Duration) {
    let start = helm_operations(controller).await;
    wait::holds(
        &format!("at most {more} helm processes within {period:?}"),
        period,
        EVERY,
        || async {
            let n = helm_operations(controller).await;
            if n <= start + more { Ok(()) } else { Err(n) }
        },
    )
    .await;
}

/// A Pack's status and its Ready condition.
fn status_and_ready(
    p: Pack,
) -> (
    common::crd::PackStatus,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    let s = p.status.unwrap();
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .cloned()
        .unwrap();
    (s, ready)
}

/// A metric sample of `controller` that must be there (0 when its family has no such sample yet is not
/// assumed: the exposition is printed instead).
async fn sample(controller: &ControllerProcess, name: &str) -> f64 {
    let (code, body) = controller.get("/metrics").await.expect("read /metrics");
    assert_eq!(code, 200, "{body}");
    e2e::controller::parse_sample(&body, name)
        .unwrap_or_else(|| panic!("no sample {name} in the controller's metrics:\n{body}"))
}

async fn reconciles(controller: &ControllerProcess) -> f64 {
    controller
        .metric("pack_operator_reconciles_total{controller=\"pack\"}")
        .await
        .unwrap()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_pack_installs_upgrades_and_uninstalls_with_real_helm() {
    let f = fixture("pack-helm", &["0.1.0", "0.1.3", "1.0.0"]).await;
    let controller = start_pack_controller(&f.env, &f.ns.name, "pack-0", &[]);
    f.create(sample_pack(&f.repo.name)).await;

    // Installed: ~=0.1 resolves to 0.1.3 (1.0.0 is outside).
    let p = f
        .wait_state("test", PackState::Applied, "Applied", Some(1), &controller)
        .await;
    let s = p.status.unwrap();
    assert_eq!(s.version.as_deref(), Some("0.1.3"));
    assert_eq!(s.applied_version.as_deref(), Some("0.1.3"));
    assert_eq!(s.last_applied_digest.as_ref().map(String::len), Some(64));
    assert_eq!(s.history[0].action, "Install");
    assert_eq!(s.history[0].result, "Succeeded");
    assert!(
        p.metadata
            .finalizers
            .unwrap_or_default()
            .contains(&"pack-operator.k8s.kubit.ir/helm-release".to_owned())
    );

    // As a user sees it with helm.
    let list = f.helm_json(&["list", "-o", "json"]);
    let release = &list.as_array().unwrap()[0];
    assert_eq!(release["name"], "test");
    assert_eq!(release["status"], "deployed");
    assert_eq!(release["chart"], "genpack-0.1.3");
    assert_eq!(
        f.helm_json(&["get", "values", "test", "-o", "json"]),
        sample_values()
    );
    let web = f.deployment("test-web").await.expect("Deployment test-web");
    assert_eq!(
        web.metadata.annotations.unwrap_or_default()["pack-operator.k8s.kubit.ir/watch-to-redeploy"],
        "configmap/test-cm-1"
    );
    let worker = f
        .deployment("test-worker")
        .await
        .expect("Deployment test-worker");
    assert_eq!(worker.spec.unwrap().replicas, Some(2));
    f.wait_event("test", "Installed", "genpack 0.1.3").await;
    assert_eq!(helm_operations(&controller).await, 1.0);
    // This test's own controller (each test runs its own): one install timed, one Pack Applied.
    let install_count =
        "pack_operator_helm_operation_duration_seconds_count{operation=\"install\"}";
    assert_eq!(sample(&controller, install_count).await, 1.0);
    assert!(
        sample(
            &controller,
            "pack_operator_helm_operation_duration_seconds_sum{operation=\"install\"}"
        )
        .await
            > 0.0
    );
    assert_eq!(
        sample(&controller, "pack_operator_packs{state=\"Applied\"}").await,
        1.0
    );

    // Re-applying the same spec (and any change that does not touch the release) runs no helm.
    let before = reconciles(&controller).await;
    let mut same = sample_pack(&f.repo.name);
    same["metadata"]["labels"] = json!({"touched": "yes"});
    f.packs
        .patch(
            "test",
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(&same),
        )
        .await
        .unwrap();
    wait::until(
        "a reconcile after the no-op change",
        TIMEOUT,
        EVERY,
        || async {
            let n = reconciles(&controller).await;
            if n > before { Ok(Some(())) } else { Err(n) }
        },
    )
    .await;
    wait::holds(
        "no helm process for a no-op",
        Duration::from_secs(3),
        EVERY,
        || async {
            let n = helm_operations(&controller).await;
            if n == 1.0 { Ok(()) } else { Err(n) }
        },
    )
    .await;
    assert_eq!(f.history("test").len(), 1);

    // Values change → upgrade, revision 2.
    let mut values = sample_values();
    values["gonbad"]["workloads"]["worker"]["replicaCount"] = json!(3);
    f.patch_spec("test", json!({"values": values})).await;
    f.wait_state("test", PackState::Applied, "Applied", Some(2), &controller)
        .await;
    assert_eq!(
        f.deployment("test-worker")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(3)
    );
    f.wait_event("test", "Upgraded", "changed values").await;

    // A matching version is published: auto-upgrade, and the Event names old → new.
    publish(&f.repo.server.dir, "0.1.5");
    let p = f
        .wait_state("test", PackState::Applied, "Applied", Some(3), &controller)
        .await;
    assert_eq!(p.status.unwrap().applied_version.as_deref(), Some("0.1.5"));
    f.wait_event("test", "Upgraded", "0.1.3 → 0.1.5").await;

    // vars: substituted with their type; a var change upgrades.
    values["gonbad"]["workloads"]["web"]["containers"]["web"]["image"]["tag"] =
        json!("{{ vars.TAG }}");
    values["gonbad"]["workloads"]["web"]["replicaCount"] = json!("{{ vars.REPLICAS }}");
    f.patch_spec(
        "test",
        json!({"vars": {"TAG": "1.4.2", "REPLICAS": 2}, "values": values}),
    )
    .await;
    f.wait_state("test", PackState::Applied, "Applied", Some(4), &controller)
        .await;
    let web = f.deployment("test-web").await.unwrap().spec.unwrap();
    assert_eq!(web.replicas, Some(2), "a number var stays a number");
    assert_eq!(
        web.template.spec.unwrap().containers[0].image.as_deref(),
        Some("nginx:1.4.2")
    );
    f.patch_spec("test", json!({"vars": {"TAG": "1.5.0"}}))
        .await;
    f.wait_state("test", PackState::Applied, "Applied", Some(5), &controller)
        .await;
    let got = f.helm_json(&["get", "values", "test", "-o", "json"]);
    assert_eq!(
        got["gonbad"]["workloads"]["web"]["containers"]["web"]["image"]["tag"],
        "1.5.0"
    );

    // requestedAt forces one upgrade with the same digest; history stays capped at 5 revisions.
    f.packs
        .patch(
            "test",
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {"reconcile.k8s.kubit.ir/requestedAt": "now-1"}}})),
        )
        .await
        .unwrap();
    let p = f
        .wait_state("test", PackState::Applied, "Applied", Some(6), &controller)
        .await;
    let s = p.status.unwrap();
    assert_eq!(s.last_handled_reconcile_at.as_deref(), Some("now-1"));
    assert!(s.history.len() <= 5 && s.history[0].action == "Upgrade");
    assert_eq!(f.history("test").len(), 5, "--history-max 5");
    let ops = helm_operations(&controller).await;
    assert_eq!(ops, 6.0, "one helm process per change, none for no-ops");

    // Suspended: the new generation is observed (kstatus, kubectl wait), Ready says why; no helm.
    f.patch_spec("test", json!({"suspend": true})).await;
    wait::until("suspension observed", TIMEOUT, EVERY, || async {
        let p = f.packs.get("test").await.unwrap();
        let s = p.status.clone().unwrap_or_default();
        let cond = |t: &str| {
            s.conditions
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| (c.status.clone(), c.reason.clone(), c.observed_generation))
        };
        let generation = p.metadata.generation;
        let want = |status: &str| Some((status.to_owned(), "Suspended".to_owned(), generation));
        if s.observed_generation == generation
            && cond("Ready") == want("False")
            && cond("Reconciling") == want("False")
            && s.state == Some(PackState::Applied)
        {
            Ok(Some(()))
        } else {
            Err(format!(
                "generation {generation:?}, observed {:?}, {:?}",
                s.observed_generation, s.conditions
            ))
        }
    })
    .await;

    // Meanwhile a `helm upgrade` by hand (while suspended, so the controller does not take the running
    // upgrade's pending revision for a stuck one). It keeps the Pack's labels (Helm copies them), yet
    // once resumed the Pack notices the revision it did not make and upgrades back to its own values.
    let before = f.helm_json(&["get", "values", "test", "-o", "json"]);
    let chart = e2e::tools::workspace_root().join("tests/charts/genpack");
    f.helm(&[
        "upgrade",
        "test",
        chart.to_str().unwrap(),
        "--reuse-values",
        "--set",
        "gonbad.workloads.worker.replicaCount=5",
    ]);
    assert_eq!(
        helm_operations(&controller).await,
        6.0,
        "suspended: no helm"
    );
    f.patch_spec("test", json!({"suspend": false})).await;
    let p = f
        .wait_state("test", PackState::Applied, "Applied", Some(8), &controller)
        .await;
    assert_eq!(p.status.unwrap().applied_version.as_deref(), Some("0.1.5"));
    assert_eq!(
        f.helm_json(&["get", "values", "test", "-o", "json"]),
        before
    );
    assert_eq!(
        f.deployment("test-worker")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(3)
    );
    f.wait_event("test", "Upgraded", "made outside this Pack")
        .await;
    wait::holds(
        "no more helm after the correction",
        Duration::from_secs(3),
        EVERY,
        || async {
            let n = helm_operations(&controller).await;
            if n == 7.0 { Ok(()) } else { Err(n) }
        },
    )
    .await;

    // Six upgrades timed (revisions 2 to 6 and 8; 7 was made by hand), still one install; the one Pack
    // is Applied.
    assert_eq!(
        sample(
            &controller,
            "pack_operator_helm_operation_duration_seconds_count{operation=\"upgrade\"}"
        )
        .await,
        6.0
    );
    assert_eq!(sample(&controller, install_count).await, 1.0);
    assert_eq!(
        sample(&controller, "pack_operator_packs{state=\"Applied\"}").await,
        1.0
    );

    // Deletion uninstalls, then the Pack goes.
    f.packs
        .delete("test", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("Pack test gone", TIMEOUT, EVERY, || async {
        match f.packs.get_opt("test").await.unwrap() {
            None => Ok(Some(())),
            Some(p) => Err(format!(
                "{:?}\n{}",
                p.status.map(|s| s.state),
                tail(&controller.logs(), 8)
            )),
        }
    })
    .await;
    assert_eq!(f.helm_json(&["list", "-o", "json"]), json!([]));
    assert!(
        f.deployment("test-web")
            .await
            .is_none_or(|d| d.metadata.deletion_timestamp.is_some())
    );
    let secrets =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.client.clone(), &f.ns.name)
            .list_metadata(&ListParams::default().labels("owner=helm,name=test"))
            .await
            .unwrap();
    assert!(secrets.items.is_empty(), "Helm's release records are gone");
    f.wait_event("test", "Uninstalled", "test").await;
    // A deleted Pack is no longer counted.
    assert_eq!(
        sample(&controller, "pack_operator_packs{state=\"Applied\"}").await,
        0.0
    );
    drop(controller);
}

/// A release the pack-controller did not make, installed as a user would.
fn install_foreign(f: &Fixture, name: &str) {
    let chart = e2e::tools::workspace_root().join("tests/charts/genpack");
    f.helm(&["install", name, chart.to_str().unwrap()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn helm_failures_are_reported_retried_with_backoff_and_recover() {
    let f = fixture("pack-fail", &["0.1.0"]).await;
    let controller = start_pack_controller(&f.env, &f.ns.name, "pack-0", &[]);
    f.create(sample_pack(&f.repo.name)).await;
    f.wait_state("test", PackState::Applied, "Applied", Some(1), &controller)
        .await;

    // Values the API server rejects: helm fails; its error is on the Pack and in a Warning Event.
    let mut bad = sample_values();
    bad["gonbad"]["workloads"]["worker"]["replicaCount"] = json!("many");
    f.patch_spec("test", json!({"values": bad})).await;
    let p = f
        .wait_state(
            "test",
            PackState::ApplyFailed,
            "UpgradeFailed",
            None,
            &controller,
        )
        .await;
    let (s, ready) = status_and_ready(p);
    assert!(
        ready
            .message
            .contains("helm upgrade of chart genpack 0.1.0 failed"),
        "{}",
        ready.message
    );
    assert!(ready.message.contains("retrying in"), "{}", ready.message);
    assert!(
        ready.message.contains(".spec.replicas"),
        "{}",
        ready.message
    );
    assert_eq!(s.failures, Some(1));
    assert_eq!(s.history[0].result, "Failed");
    // Helm's own words reach the Event (the values never do: see helm::tests for the blanking).
    f.wait_event("test", "UpgradeFailed", ".spec.replicas")
        .await;
    // No hot loop, and no second run right after the failure (the decision to run Helm is confirmed on
    // the stored status, which records the failure): the next try waits 10 s.
    helm_runs_at_most(&controller, 0.0, Duration::from_secs(8)).await;
    // The retry fails the same way: one error is one Event whose series count grows, not an Event per
    // retry (the note carries no "retrying in 10s/20s", which only the condition says).
    let events =
        Api::<k8s_openapi::api::events::v1::Event>::namespaced(f.client.clone(), &f.ns.name);
    wait::until(
        "one UpgradeFailed Event about test, its series count at 2 or more",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let seen: Vec<(Option<String>, Option<i32>)> = events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("UpgradeFailed")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("test")
                })
                .map(|e| (e.note, e.series.map(|s| s.count)))
                .collect();
            match seen.as_slice() {
                [(Some(note), Some(count))] if *count >= 2 && !note.contains("retrying") => {
                    Ok(Some(()))
                }
                _ => Err(seen),
            }
        },
    )
    .await;

    // Fixed: applied again, the failure counter reset.
    f.patch_spec("test", json!({"values": sample_values()}))
        .await;
    let p = f
        .wait_state("test", PackState::Applied, "Applied", None, &controller)
        .await;
    assert_eq!(p.status.unwrap().failures, None);

    // rollbackOnFailure: a failed upgrade is rolled back and not retried until something changes.
    f.patch_spec("test", json!({"rollbackOnFailure": true, "values": bad}))
        .await;
    let p = f
        .wait_state(
            "test",
            PackState::ApplyFailed,
            "UpgradeFailed",
            None,
            &controller,
        )
        .await;
    let (s, ready) = status_and_ready(p);
    assert!(
        ready.message.contains("rolled back to revision"),
        "{}",
        ready.message
    );
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
    assert_eq!(s.history[0].action, "Rollback");
    let last = f.history("test").last().cloned().unwrap();
    assert_eq!(last["status"], "deployed", "{last}");
    let rolled_back = last["revision"].as_i64();
    assert_eq!(
        s.revision, rolled_back,
        "status names the rollback's revision"
    );
    assert_eq!(s.history[0].revision, rolled_back);
    helm_runs_at_most(&controller, 0.0, Duration::from_secs(12)).await;

    // The spec goes back to what the rollback restored: Applied with no helm, the failures forgotten.
    let ops = helm_operations(&controller).await;
    f.patch_spec("test", json!({"values": sample_values()}))
        .await;
    let p = f
        .wait_state(
            "test",
            PackState::Applied,
            "Applied",
            rolled_back,
            &controller,
        )
        .await;
    assert_eq!(p.status.unwrap().failures, None);
    assert_eq!(helm_operations(&controller).await, ops);

    // A release of the same name that no Pack made is never touched, nor uninstalled.
    install_foreign(&f, "foreign");
    let mut foreign = sample_pack(&f.repo.name);
    foreign["metadata"]["name"] = json!("foreign");
    f.create(foreign).await;
    let p = f
        .wait_state(
            "foreign",
            PackState::ApplyFailed,
            "ReleaseNotOwned",
            None,
            &controller,
        )
        .await;
    let s = p.status.unwrap();
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Stalled" && c.status == "True")
    );
    f.wait_event("foreign", "ReleaseNotOwned", "helm uninstall foreign")
        .await;
    f.packs
        .delete("foreign", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("Pack foreign gone", TIMEOUT, EVERY, || async {
        f.packs
            .get_opt("foreign")
            .await
            .unwrap()
            .is_none()
            .then_some(())
            .ok_or(())
            .map(Some)
    })
    .await;
    let history = f.history("foreign");
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["status"], "deployed");

    // A release already gone at deletion is fine: uninstalled by hand (while the Pack is suspended, so it
    // is not installed again), then the Pack is deleted: it goes, without RemoveFailed or a failed
    // uninstall.
    let mut byhand = sample_pack(&f.repo.name);
    byhand["metadata"]["name"] = json!("byhand");
    f.create(byhand).await;
    f.wait_state(
        "byhand",
        PackState::Applied,
        "Applied",
        Some(1),
        &controller,
    )
    .await;
    f.patch_spec("byhand", json!({"suspend": true})).await;
    wait::until("byhand suspended", TIMEOUT, EVERY, || async {
        let p = f.packs.get("byhand").await.unwrap();
        let (s, ready) = status_and_ready(p.clone());
        if ready.reason == "Suspended" && s.observed_generation == p.metadata.generation {
            Ok(Some(()))
        } else {
            Err(ready)
        }
    })
    .await;
    f.helm(&["uninstall", "byhand"]);
    let records =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.client.clone(), &f.ns.name)
            .list_metadata(&ListParams::default().labels("owner=helm,name=byhand"))
            .await
            .unwrap();
    assert!(records.items.is_empty(), "the release is gone");
    let failed_uninstalls = controller
        .metric("pack_operator_helm_operations_total{operation=\"uninstall\",result=\"failure\"}")
        .await
        .unwrap()
        .unwrap_or(0.0);
    f.packs
        .delete("byhand", &DeleteParams::default())
        .await
        .unwrap();
    wait::until("Pack byhand gone", TIMEOUT, EVERY, || async {
        match f.packs.get_opt("byhand").await.unwrap() {
            None => Ok(Some(())),
            Some(p) => {
                let state = p.status.and_then(|s| s.state);
                assert_ne!(
                    state,
                    Some(PackState::RemoveFailed),
                    "{}",
                    tail(&controller.logs(), 8)
                );
                Err(state)
            }
        }
    })
    .await;
    assert!(
        e2e::events::events_for(&f.client, &f.ns.name, "byhand", "UninstallFailed")
            .await
            .is_empty()
    );
    assert_eq!(
        controller
            .metric(
                "pack_operator_helm_operations_total{operation=\"uninstall\",result=\"failure\"}"
            )
            .await
            .unwrap()
            .unwrap_or(0.0),
        failed_uninstalls
    );

    // An uninstall that fails (a pre-delete hook into a namespace that does not exist yet): RemoveFailed,
    // a Warning Event, retries with backoff (no loop), and the Pack goes once the cause is gone.
    let hook_ns = format!("{}-hook", f.ns.name);
    let mut values = sample_values();
    values["gonbad"]["hooks"] = json!({"preDeleteNamespace": hook_ns});
    let mut gone = sample_pack(&f.repo.name);
    gone["metadata"]["name"] = json!("gone");
    gone["spec"]["values"] = values;
    f.create(gone).await;
    f.wait_state("gone", PackState::Applied, "Applied", Some(1), &controller)
        .await;
    let uninstalls = |result: &'static str| {
        let controller = &controller;
        async move {
            controller
                .metric(&format!(
                    "pack_operator_helm_operations_total{{operation=\"uninstall\",result=\"{result}\"}}"
                ))
                .await
                .unwrap()
                .unwrap_or(0.0)
        }
    };
    let recovers = || async {
        let mut n = 0.0;
        for r in ["success", "failure"] {
            n += controller
                .metric(&format!(
                    "pack_operator_helm_operations_total{{operation=\"recover\",result=\"{r}\"}}"
                ))
                .await
                .unwrap()
                .unwrap_or(0.0);
        }
        n
    };
    let recovered_before = recovers().await;
    f.packs
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    let p = f
        .wait_state(
            "gone",
            PackState::RemoveFailed,
            "UninstallFailed",
            None,
            &controller,
        )
        .await;
    let (s, ready) = status_and_ready(p);
    assert!(
        ready.message.starts_with("helm uninstall failed:")
            && ready.message.contains("retrying in"),
        "{}",
        ready.message
    );
    // Inline values are not secret (only strings from valuesFrom Secrets are blanked): Helm's message
    // names the namespace the user must fix.
    assert!(
        ready.message.contains(&hook_ns),
        "inline values are not blanked: {}",
        ready.message
    );
    assert_eq!(s.history[0].action, "Uninstall");
    f.wait_event("gone", "UninstallFailed", "helm uninstall failed")
        .await;
    let failed = uninstalls("failure").await;
    assert!(failed >= 1.0);
    // The first retry is 10 s after the first failure: at most one more run in 8 s, and the Pack stays
    // RemoveFailed meanwhile (no Removing flap, no repair of the release Helm left `uninstalling`).
    wait::holds(
        "failed uninstall retried with backoff",
        Duration::from_secs(8),
        EVERY,
        || async {
            let n = uninstalls("failure").await;
            let state = f.packs.get("gone").await.unwrap().status.unwrap().state;
            if n <= failed + 1.0 && state == Some(PackState::RemoveFailed) {
                Ok(())
            } else {
                Err((n, state))
            }
        },
    )
    .await;
    assert_eq!(
        recovers().await,
        recovered_before,
        "a release being uninstalled is not repaired"
    );

    // The hook's namespace appears: the next retry uninstalls, and the Pack goes.
    let namespaces = Api::<k8s_openapi::api::core::v1::Namespace>::all(f.client.clone());
    let hook_namespace = serde_json::from_value(json!({"metadata": {"name": hook_ns}})).unwrap();
    namespaces
        .create(&PostParams::default(), &hook_namespace)
        .await
        .unwrap();
    wait::until("Pack gone gone", TIMEOUT, EVERY, || async {
        match f.packs.get_opt("gone").await.unwrap() {
            None => Ok(Some(())),
            Some(p) => Err(format!(
                "{:?}\n{}",
                p.status.map(|s| s.state),
                tail(&controller.logs(), 8)
            )),
        }
    })
    .await;
    let records =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.client.clone(), &f.ns.name)
            .list_metadata(&ListParams::default().labels("owner=helm,name=gone"))
            .await
            .unwrap();
    assert!(records.items.is_empty(), "Helm's release records are gone");
    assert_eq!(uninstalls("success").await, 1.0);
    let _ = namespaces.delete(&hook_ns, &DeleteParams::default()).await;
    drop(controller);
}

/// The pids of `helm` processes whose parent is `parent`.
fn helm_children(parent: u32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) =
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((comm, rest)) = stat.split_once(") ") else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm.ends_with("(helm") && ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

async fn wait_release_status(f: &Fixture, status: &str) -> Value {
    wait::until(
        &format!("release test latest {status}"),
        TIMEOUT,
        EVERY,
        || async {
            let last = f.history("test").last().cloned().unwrap_or_default();
            if last["status"] == status {
                Ok(Some(last))
            } else {
                Err(last)
            }
        },
    )
    .await
}

/// Value strings of the stuck-release test's Pack that must never show on helm's command line nor in the
/// controller's logs: one in the values, one a var substituted into them.
const SECRET_VALUE: &str = "pack-e2e-value-5f2c9a41d7";
const SECRET_VAR: &str = "pack-e2e-var-8d41b7c3e0";

/// The hook Job of the genpack chart, if there is one: its uid.
async fn hook_job(f: &Fixture) -> Option<String> {
    Api::<k8s_openapi::api::batch::v1::Job>::namespaced(f.client.clone(), &f.ns.name)
        .get_opt("test-pre-upgrade")
        .await
        .unwrap()
        .and_then(|j| j.metadata.uid)
}

/// Waits for a hook Job other than `previous` (by uid): the one a Helm run created since; its uid.
async fn new_hook_job(
    f: &Fixture,
    previous: Option<&str>,
    controller: &ControllerProcess,
) -> String {
    wait::until("a new hook Job", TIMEOUT, EVERY, || async {
        match hook_job(f).await {
            Some(uid) if Some(uid.as_str()) != previous => Ok(Some(uid)),
            other => Err(format!("{other:?}\n{}", tail(&controller.logs(), 6))),
        }
    })
    .await
}

/// Plays the Job controller (the test control plane runs none) for the hook Job Helm created after
/// `stale` (the one a killed Helm left behind): waits for it and marks it succeeded, as the Job
/// controller would once its Pod succeeded. Helm, waiting for the hook, then goes on.
async fn complete_hook_job(f: &Fixture, stale: Option<&str>, controller: &ControllerProcess) {
    let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(f.client.clone(), &f.ns.name);
    new_hook_job(f, stale, controller).await;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let condition = |type_: &str| {
        json!({"type": type_, "status": "True", "reason": "CompletionsReached",
               "message": "Reached expected number of succeeded pods",
               "lastProbeTime": now, "lastTransitionTime": now})
    };
    let status = json!({"status": {
        "startTime": now, "completionTime": now, "active": 0, "ready": 0, "succeeded": 1,
        "conditions": [condition("SuccessCriteriaMet"), condition("Complete")],
    }});
    jobs.patch_status(
        "test-pre-upgrade",
        &PatchParams::default(),
        &Patch::Merge(&status),
    )
    .await
    .unwrap();
}

/// The arguments of process `pid`.
fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Kills the controller's helm processes with SIGKILL (no chance to record anything); their pids.
async fn kill_helm(controller: &ControllerProcess) -> Vec<i32> {
    let pids = wait::until("the controller's helm process", TIMEOUT, EVERY, || async {
        let pids = helm_children(controller.pid());
        if pids.is_empty() {
            Err(pids)
        } else {
            Ok(Some(pids))
        }
    })
    .await;
    for pid in &pids {
        // SAFETY: kill(2) of a helm process started by the controller under test.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(*pid, libc::SIGKILL);
        }
    }
    pids
}

/// The revision of the release's latest record, which must be `pending-upgrade`.
fn pending_revision(f: &Fixture) -> i64 {
    let last = f.history("test").last().cloned().unwrap();
    assert_eq!(last["status"], "pending-upgrade", "{last}");
    last["revision"].as_i64().unwrap()
}

/// Waits until the stuck revision `revision` is marked failed by the controller (Event) and the retried
/// upgrade, unblocked by completing its hook Job, is deployed: `Applied`, with no spec change.
async fn recovers_on_its_own(
    f: &Fixture,
    revision: i64,
    stale_job: &str,
    generation: Option<i64>,
    controller: &ControllerProcess,
) {
    f.wait_event(
        "test",
        "StuckReleaseRecovered",
        &format!("revision {revision} was stuck in pending-upgrade"),
    )
    .await;
    complete_hook_job(f, Some(stale_job), controller).await;
    let p = f
        .wait_state(
            "test",
            PackState::Applied,
            "Applied",
            Some(revision + 1),
            controller,
        )
        .await;
    assert_eq!(p.metadata.generation, generation, "nobody changed the Pack");
    let s = p.status.unwrap();
    assert!(
        s.history.iter().any(|a| a.action == "Recover"
            && a.result == "Succeeded"
            && a.revision == Some(revision)),
        "{:?}",
        s.history
    );
    let history = f.history("test");
    let statuses: Vec<(i64, &str)> = history
        .iter()
        .map(|h| {
            (
                h["revision"].as_i64().unwrap(),
                h["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses.last(),
        Some(&(revision + 1, "deployed")),
        "{statuses:?}"
    );
    assert!(
        !statuses.iter().any(|(_, s)| s.starts_with("pending")),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_helm_is_cancelled_cleanly_and_stuck_releases_recover() {
    let f = fixture("pack-stuck", &["0.1.0"]).await;
    let mut controller =
        start_pack_controller(&f.env, &f.ns.name, "pack-0", &["--helm-timeout=2m"]);
    f.create(sample_pack(&f.repo.name)).await;
    f.wait_state("test", PackState::Applied, "Applied", Some(1), &controller)
        .await;

    // An upgrade that hangs on a pre-upgrade hook Job (no Job controller here), with a value and a var
    // that must stay secret.
    let mut hanging = sample_values();
    hanging["gonbad"]["hooks"] = json!({"preUpgradeJob": true});
    hanging["gonbad"]["workloads"]["web"]["annotations"]["e2e/secret"] = json!(SECRET_VALUE);
    hanging["gonbad"]["workloads"]["web"]["annotations"]["e2e/var"] = json!("{{ vars.TOKEN }}");
    f.patch_spec(
        "test",
        json!({"values": hanging, "vars": {"TOKEN": SECRET_VAR}}),
    )
    .await;
    wait_release_status(&f, "pending-upgrade").await;

    // SIGTERM: the controller stops its helm, which records the upgrade failed instead of pending.
    controller.terminate();
    let exit = controller.wait_exit(Duration::from_secs(30)).await;
    assert!(
        exit.is_some(),
        "controller exits after SIGTERM\n{}",
        tail(&controller.logs(), 8)
    );
    wait_release_status(&f, "failed").await;
    let interrupted_job = hook_job(&f).await;

    // A new controller (logging at debug) retries, and hangs again.
    let debug = ["--helm-timeout=2m", "--log-level=debug"];
    let controller = start_pack_controller(&f.env, &f.ns.name, "pack-1", &debug);
    wait_release_status(&f, "pending-upgrade").await;
    let pid = wait::until("the controller's helm process", TIMEOUT, EVERY, || async {
        match helm_children(controller.pid()).as_slice() {
            [pid] => Ok(Some(*pid)),
            other => Err(other.to_vec()),
        }
    })
    .await;
    // Values never reach helm's command line: they are in a file only this user can read, in a
    // directory only this user can enter.
    let args = cmdline(pid);
    assert!(
        args.first().is_some_and(|a| a.ends_with("helm")),
        "{args:?}"
    );
    let value_strings: Vec<String> = [SECRET_VALUE, SECRET_VAR, "configmap/test-cm-1", "nginx"]
        .map(String::from)
        .to_vec();
    for v in &value_strings {
        assert!(
            !args.iter().any(|a| a.contains(v.as_str())),
            "{v} on helm's command line: {args:?}"
        );
    }
    let values_file = args
        .iter()
        .position(|a| a == "--values")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("no --values in {args:?}"));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&values_file), 0o600, "{}", values_file.display());
        assert_eq!(mode(values_file.parent().unwrap()), 0o700);
        let content = std::fs::read_to_string(&values_file).unwrap();
        assert!(
            content.contains(SECRET_VALUE) && content.contains(SECRET_VAR),
            "the file holds the final values (vars substituted)"
        );
    }

    // Its helm is killed -9 while it waits for its hook Job: the release is left pending-upgrade, and
    // the values file goes all the same.
    let stale_job = new_hook_job(&f, interrupted_job.as_deref(), &controller).await;
    let generation = f.packs.get("test").await.unwrap().metadata.generation;
    kill_helm(&controller).await;
    f.wait_state(
        "test",
        PackState::ApplyFailed,
        "UpgradeFailed",
        None,
        &controller,
    )
    .await;
    let stuck = pending_revision(&f);
    assert!(
        !values_file.exists(),
        "{} left behind",
        values_file.display()
    );
    assert_eq!(
        std::fs::read_dir(values_file.parent().unwrap())
            .unwrap()
            .count(),
        0,
        "no values file left"
    );

    // Nobody touches the Pack: after its backoff the controller marks the stuck revision failed and
    // upgrades again; that upgrade's hook Job completes (the test plays the Job controller) and the
    // release is deployed.
    recovers_on_its_own(&f, stuck, &stale_job, generation, &controller).await;

    // Startup: a release left pending while no controller runs is recovered by the next one. Another
    // upgrade hangs on its hook; its helm and then the controller are killed -9.
    hanging["gonbad"]["workloads"]["worker"]["replicaCount"] = json!(3);
    let completed_job = hook_job(&f).await;
    f.patch_spec("test", json!({"values": hanging})).await;
    wait_release_status(&f, "pending-upgrade").await;
    let stale_job = new_hook_job(&f, completed_job.as_deref(), &controller).await;
    let generation = f.packs.get("test").await.unwrap().metadata.generation;
    let mut controller = controller;
    kill_helm(&controller).await;
    controller.kill();
    let stuck = pending_revision(&f);
    let logs = controller.logs();
    let controller = start_pack_controller(&f.env, &f.ns.name, "pack-2", &debug);
    recovers_on_its_own(&f, stuck, &stale_job, generation, &controller).await;

    // No value string in the logs of either controller that logged at debug.
    let logs = logs + &controller.logs();
    assert!(logs.contains("DEBUG"), "the controllers logged at debug");
    for v in &value_strings {
        assert!(!logs.contains(v.as_str()), "{v} in the controller's logs");
    }
    drop(controller);
}

/// `kubectl get pack <name> -o wide` as column name → cell. kubectl aligns every cell under its header,
/// so a cell is the text from its header's offset to the next header's (cells may hold spaces).
fn table_row(f: &Fixture, name: &str) -> std::collections::BTreeMap<String, String> {
    let out = e2e::chart::kubectl(
        &f.env.kubeconfig,
        &["get", "pack", name, "-n", &f.ns.name, "-o", "wide"],
        "",
    )
    .unwrap();
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default();
    let row = lines.next().unwrap_or_default();
    let starts: Vec<(usize, &str)> = header
        .match_indices(|c: char| !c.is_whitespace())
        .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| (i, header[i..].split_whitespace().next().unwrap()))
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, (at, column))| {
            let end = starts.get(n + 1).map_or(row.len(), |(next, _)| *next);
            let cell = row.get(*at..end.min(row.len())).unwrap_or("").trim();
            // kubectl prints <none> for a field the object does not have.
            let cell = if cell == "<none>" { "" } else { cell };
            (column.to_string(), cell.to_owned())
        })
        .collect()
}

/// Waits until `kubectl get pack <name> -o wide` shows `expected` (column → cell, MESSAGE by substring).
async fn wait_row(
    f: &Fixture,
    name: &str,
    expected: &[(&str, &str)],
    controller: &ControllerProcess,
) {
    wait::until(
        &format!("kubectl get pack {name}: {expected:?}"),
        TIMEOUT,
        EVERY,
        || async {
            let row = table_row(f, name);
            let matches = expected.iter().all(|(column, want)| {
                let cell = row.get(*column).map(String::as_str).unwrap_or("");
                if *column == "MESSAGE" {
                    cell.contains(want)
                } else {
                    cell == *want
                }
            });
            if matches {
                Ok(Some(()))
            } else {
                Err(format!("{row:?}\n{}", tail(&controller.logs(), 10)))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_table_shows_what_is_deployed_during_an_upgrade_and_why_a_pack_does_not_resolve() {
    let f = fixture("pack-table", &["0.1.0", "0.1.1"]).await;
    let controller = start_pack_controller(&f.env, &f.ns.name, "pack-0", &["--helm-timeout=2m"]);
    let mut pack = sample_pack(&f.repo.name);
    pack["spec"]["chart"]["version"] = json!("0.1.0");
    f.create(pack).await;
    f.wait_state("test", PackState::Applied, "Applied", Some(1), &controller)
        .await;
    wait_row(
        &f,
        "test",
        &[
            ("VERSION", "0.1.0"),
            ("TARGET", "0.1.0"),
            ("STATUS", "Applied"),
            ("READY", "True"),
        ],
        &controller,
    )
    .await;

    // An upgrade to 0.1.1 that waits on its pre-upgrade hook Job (no Job controller here): the table
    // shows 0.1.0 deployed, the upgrade in progress and its target.
    let mut values = sample_values();
    values["gonbad"]["hooks"] = json!({"preUpgradeJob": true});
    f.patch_spec(
        "test",
        json!({"chart": {"version": "0.1.1"}, "values": values}),
    )
    .await;
    new_hook_job(&f, None, &controller).await;
    wait_row(
        &f,
        "test",
        &[
            ("VERSION", "0.1.0"),
            ("TARGET", "0.1.1"),
            ("STATUS", "Progressing"),
            ("READY", "False"),
            (
                "MESSAGE",
                "Upgrading chart genpack from 0.1.0 (deployed) to 0.1.1",
            ),
        ],
        &controller,
    )
    .await;
    assert_eq!(
        wait_release_status(&f, "pending-upgrade").await["chart"],
        "genpack-0.1.1"
    );

    // The hook completes (the test plays the Job controller): 0.1.1 is deployed and the table says so.
    complete_hook_job(&f, None, &controller).await;
    f.wait_state("test", PackState::Applied, "Applied", Some(2), &controller)
        .await;
    wait_row(
        &f,
        "test",
        &[
            ("VERSION", "0.1.1"),
            ("STATUS", "Applied"),
            ("READY", "True"),
            ("MESSAGE", "revision 2"),
        ],
        &controller,
    )
    .await;

    // A Pack whose version no repository has: NotResolved, and the table says why.
    let mut missing = sample_pack(&f.repo.name);
    missing["metadata"]["name"] = json!("missing");
    missing["spec"]["chart"]["version"] = json!("9.9.9");
    f.create(missing).await;
    wait_row(
        &f,
        "missing",
        &[
            ("VERSION", ""),
            ("STATUS", "NotResolved"),
            ("READY", "False"),
            ("MESSAGE", "9.9.9"),
        ],
        &controller,
    )
    .await;
}

/// One Deployment `test-web` of one replica, with image tag `tag`.
fn one_deployment(tag: &str) -> Value {
    json!({"gonbad": {"workloads": {"web": {
        "kind": "deployment",
        "replicaCount": 1,
        "containers": {"web": {"image": {"repository": "nginx", "tag": tag}}},
    }}}})
}

/// Waits for `state` with Ready reason `reason` and a Ready message containing `contains`; the message.
async fn wait_message(
    f: &Fixture,
    state: PackState,
    reason: &str,
    contains: &str,
    controller: &ControllerProcess,
) -> String {
    wait::until(
        &format!("Pack test: {state:?} / {reason} / {contains:?}"),
        TIMEOUT,
        EVERY,
        || async {
            let s = f
                .packs
                .get("test")
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            let ready = s.conditions.iter().find(|c| c.type_ == "Ready");
            match ready {
                Some(r)
                    if s.state == Some(state)
                        && r.reason == reason
                        && r.message.contains(contains) =>
                {
                    Ok(Some(r.message.clone()))
                }
                _ => Err(format!(
                    "{:?} {:?}\nhistory: {:?}\n{}",
                    s.state,
                    ready.map(|r| (&r.reason, &r.message)),
                    s.history
                        .iter()
                        .map(|a| (&a.action, &a.result, a.revision))
                        .collect::<Vec<_>>(),
                    tail(&controller.logs(), 6)
                )),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_holds_ready_until_the_objects_are_ready_and_a_timeout_rolls_back() {
    let f = fixture("pack-wait", &["0.1.0"]).await;
    let controller = start_pack_controller(&f.env, &f.ns.name, "pack-0", &["--helm-timeout=2m"]);
    let mut pack = sample_pack(&f.repo.name);
    pack["spec"]["values"] = one_deployment("1");
    pack["spec"]["wait"] = json!(true);
    pack["spec"]["rollbackOnFailure"] = json!(true);
    f.create(pack).await;

    // Installed, but its Deployment is not available (no kubelet here): Progressing, naming it.
    let message = wait_message(
        &f,
        PackState::Progressing,
        "Progressing",
        "Deployment/test-web (",
        &controller,
    )
    .await;
    assert!(message.contains("waiting for 1 of 1 objects"), "{message}");
    let p = f.packs.get("test").await.unwrap();
    let reconciling = p
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Reconciling");
    assert_eq!(reconciling.map(|c| c.status).as_deref(), Some("True"));
    wait_row(
        &f,
        "test",
        &[("STATUS", "Progressing"), ("READY", "False")],
        &controller,
    )
    .await;

    // The test plays the kubelet: the Pod runs and is ready, the Deployment becomes available, and
    // its change wakes the Pack.
    e2e::workloads::mark_deployment_pods_ready(&f.client, &f.ns.name, "test-web").await;
    f.wait_state("test", PackState::Applied, "Applied", Some(1), &controller)
        .await;
    f.wait_event("test", "Ready", "objects are ready").await;

    // An upgrade whose Pod never gets ready, with a short timeout: NotReady, rolled back.
    f.patch_spec(
        "test",
        json!({"values": one_deployment("2"), "timeout": "3s"}),
    )
    .await;
    let message = wait_message(
        &f,
        PackState::ApplyFailed,
        "NotReady",
        "rolled back to revision 1",
        &controller,
    )
    .await;
    assert!(message.contains("Deployment/test-web ("), "{message}");
    assert!(message.contains("not ready within 3s"), "{message}");
    let history = f.history("test");
    let last = history.last().unwrap();
    assert_eq!(last["status"], "deployed", "{history:?}");
    assert_eq!(last["revision"], 3, "{history:?}");
    assert!(
        last["description"]
            .as_str()
            .unwrap_or("")
            .contains("Rollback to 1"),
        "{history:?}"
    );
    f.wait_event("test", "NotReady", "rolled back to revision 1")
        .await;
    let (s, _) = status_and_ready(f.packs.get("test").await.unwrap());
    assert_eq!(s.history[0].action, "Rollback", "{:?}", s.history);
}

/// A Pack named `name` of the sample chart that depends on `deps`.
fn dependent_pack(repo: &str, name: &str, deps: &[&str]) -> Value {
    let mut p = sample_pack(repo);
    p["metadata"]["name"] = json!(name);
    p["spec"]["values"] = one_deployment("1");
    p["spec"]["dependsOn"] = json!(deps.iter().map(|d| json!({"name": d})).collect::<Vec<_>>());
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn depends_on_orders_two_packs_and_reports_a_cycle() {
    let f = fixture("pack-deps", &["0.1.0"]).await;
    let controller = start_pack_controller(&f.env, &f.ns.name, "pack-0", &[]);
    // The app first: it waits for its database, which does not exist yet; nothing is installed.
    f.create(dependent_pack(&f.repo.name, "app", &["db"])).await;
    wait_row(
        &f,
        "app",
        &[
            ("READY", "False"),
            ("MESSAGE", "waiting for spec.dependsOn: db (not found)"),
        ],
        &controller,
    )
    .await;
    let records =
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(f.client.clone(), &f.ns.name)
            .list(&ListParams::default().labels("owner=helm,name=app"))
            .await
            .unwrap();
    assert!(records.items.is_empty(), "nothing installed before db");
    // The database comes: once it is Ready, the app proceeds at once (woken by the database's change).
    f.create(dependent_pack(&f.repo.name, "db", &[])).await;
    wait::until("app Applied", TIMEOUT, EVERY, || async {
        let state = f
            .packs
            .get("app")
            .await
            .unwrap()
            .status
            .and_then(|s| s.state);
        match state {
            Some(PackState::Applied) => Ok(Some(())),
            other => Err(format!("{other:?}\n{}", tail(&controller.logs(), 6))),
        }
    })
    .await;
    let db = f.packs.get("db").await.unwrap();
    let app = f.packs.get("app").await.unwrap();
    let installed = |p: &Pack| {
        p.status
            .as_ref()
            .unwrap()
            .history
            .last()
            .unwrap()
            .time
            .clone()
    };
    assert!(installed(&db) <= installed(&app), "db installed before app");
    f.wait_event("app", "DependencyNotReady", "db (not found)")
        .await;

    // A cycle: Stalled DependencyCycle naming it, Invalid in the table.
    f.create(dependent_pack(&f.repo.name, "x", &["y"])).await;
    f.create(dependent_pack(&f.repo.name, "y", &["x"])).await;
    wait_row(
        &f,
        "x",
        &[
            ("STATUS", "Invalid"),
            ("MESSAGE", "spec.dependsOn forms a cycle: x → y → x"),
        ],
        &controller,
    )
    .await;
    let x = f.packs.get("x").await.unwrap().status.unwrap();
    let stalled = x.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "DependencyCycle")
    );
    f.wait_event("x", "DependencyCycle", "x → y → x").await;

    // Another namespace: refused without --allow-cross-namespace-dependencies, saying how to allow it.
    let mut far = dependent_pack(&f.repo.name, "far", &[]);
    far["spec"]["dependsOn"] = json!([{"name": "db", "namespace": "elsewhere"}]);
    f.create(far).await;
    wait_row(
        &f,
        "far",
        &[
            ("STATUS", "Invalid"),
            (
                "MESSAGE",
                "spec.dependsOn names Packs of other namespaces (elsewhere/db)",
            ),
        ],
        &controller,
    )
    .await;
    f.wait_event(
        "far",
        "CrossNamespaceDependency",
        "--allow-cross-namespace-dependencies",
    )
    .await;

    // Deleted together, the database is uninstalled after the app that depends on it: deleted first
    // here, db waits (WaitingForDependents) until app is gone.
    let order = Arc::new(Mutex::new(Vec::<String>::new()));
    for name in ["db", "app"] {
        f.packs.delete(name, &Default::default()).await.unwrap();
    }
    wait::until(
        "db and app gone",
        TIMEOUT,
        Duration::from_millis(50),
        || async {
            // app first: when both went within one poll, the order cannot be told and the Event decides.
            for name in ["app", "db"] {
                if f.packs.get_opt(name).await.unwrap().is_none() {
                    let mut order = order.lock().unwrap();
                    if !order.iter().any(|n| n == name) {
                        order.push(name.to_owned());
                    }
                }
            }
            let order = order.lock().unwrap().clone();
            if order.len() == 2 {
                Ok(Some(()))
            } else {
                Err(order)
            }
        },
    )
    .await;
    f.wait_event("db", "WaitingForDependents", "app").await;
    assert_eq!(
        *order.lock().unwrap(),
        ["app", "db"],
        "the dependency goes last"
    );
}
