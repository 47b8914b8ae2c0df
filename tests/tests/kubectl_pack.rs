//! `kubectl pack` (the kubectl-pack binary) against the real API server, a served chart repository and a
//! running pack-controller: reconcile sets requestedAt and waits for the upgrade, suspend/resume change
//! spec.suspend and the controller reports it, get shows an unresolvable Pack's problem on one line,
//! template renders the Pack's values without a valuesFrom Secret's value unless asked, and diff shows a
//! Deployment scaled by hand and nothing for an unchanged release.

use tokio::process::Command;

use common::crd::Pack;
use e2e::{
    TestEnv,
    chart::kubectl,
    controller::ControllerProcess,
    packs::{ServedRepository, Want, served_repository, start_pack_controller, wait_pack},
    test_env,
    tools::{tool, workspace_binary},
};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt, api::PostParams};
use serde_json::{Value, json};

const SECRET_TOKEN: &str = "s3cr3t-token-4711";

struct Fixture {
    env: TestEnv,
    ns: e2e::cluster::TestNamespace,
    repo: ServedRepository,
    packs: Api<Pack>,
    controller: ControllerProcess,
}

async fn fixture(prefix: &str) -> Fixture {
    let env = test_env();
    let ns = env.namespace(prefix).await;
    let client = env.client().await;
    let repo = served_repository(&client, &ns.name, &format!("{}-repo", ns.name), &["0.1.0"]).await;
    let controller = start_pack_controller(&env, &ns.name, prefix, &[]);
    Fixture {
        packs: Api::namespaced(client, &ns.name),
        env,
        ns,
        repo,
        controller,
    }
}

/// The exit code and stdout of `kubectl-pack --kubeconfig … -n <ns> <args>`.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Fixture {
    /// Async: the chart repository is served by this test's runtime.
    async fn kubectl_pack(&self, args: &[&str]) -> Run {
        let out =
            Command::new(workspace_binary("kubectl-pack").expect("cargo build -p kubectl-pack"))
                .arg(format!("--kubeconfig={}", self.env.kubeconfig.display()))
                .args(["-n", &self.ns.name])
                .args(args)
                .env(
                    "XDG_CACHE_HOME",
                    std::env::temp_dir().join(format!("kubectl-pack-{}", self.ns.name)),
                )
                .output()
                .await
                .expect("run kubectl-pack");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn helm_flag(&self) -> String {
        format!("--helm={}", tool("helm").expect("helm").display())
    }

    async fn create(&self, name: &str, version: &str, extra: Value) {
        let mut pack = json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1",
            "kind": "Pack",
            "metadata": {"name": name},
            "spec": {
                "chart": {
                    "repository": {"kind": "ClusterPackRepository", "name": self.repo.name},
                    "name": "genpack",
                    "version": version,
                },
                "values": {"gonbad": {"workloads": {"web": {
                    "replicaCount": 1,
                    "containers": {"web": {"image": {"repository": "nginx"}}},
                }}}},
            },
        });
        if let Value::Object(extra) = extra {
            pack["spec"].as_object_mut().unwrap().extend(extra);
        }
        let pack: Pack = serde_json::from_value(pack).unwrap();
        self.packs
            .create(&PostParams::default(), &pack)
            .await
            .unwrap();
    }

    /// Waits until Pack `name`'s Ready condition has `status` and `reason`.
    async fn wait_ready(&self, name: &str, status: &str, reason: &str) -> Pack {
        let want = Want::reason(reason).status(status);
        wait_pack(&self.packs, name, want, Some(&self.controller)).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reconcile_suspend_resume_and_get() {
    let f = fixture("kpack-drive").await;
    f.create("app", "~=0.1", json!({})).await;
    let before = f.wait_ready("app", "True", "Applied").await;
    let revision = before.status.unwrap().revision.unwrap();

    // reconcile: the annotation is set, the controller handles it (an upgrade), the command says so.
    let run = f.kubectl_pack(&["reconcile", "app", "--timeout=90s"]).await;
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("reconciled"), "{}", run.stdout);
    let p = f.packs.get("app").await.unwrap();
    let requested = p
        .annotations()
        .get("reconcile.k8s.kubit.ir/requestedAt")
        .cloned();
    let status = p.status.unwrap();
    assert!(requested.is_some());
    assert_eq!(status.last_handled_reconcile_at, requested);
    assert_eq!(
        status.revision,
        Some(revision + 1),
        "requestedAt forces one upgrade"
    );

    // suspend: spec.suspend is set and the controller reports Suspended; reconcile refuses.
    let run = f.kubectl_pack(&["suspend", "app"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(f.packs.get("app").await.unwrap().spec.suspend);
    f.wait_ready("app", "False", "Suspended").await;
    let run = f.kubectl_pack(&["get", "app"]).await;
    assert!(run.stdout.contains("Suspended"), "{}", run.stdout);
    let run = f.kubectl_pack(&["reconcile", "app"]).await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("is suspended"), "{}", run.stderr);

    // resume: spec.suspend is gone and the Pack is Ready again.
    let run = f.kubectl_pack(&["resume", "app"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!f.packs.get("app").await.unwrap().spec.suspend);
    f.wait_ready("app", "True", "Applied").await;

    // get: an unresolvable Pack's problem on its one line; -A adds the namespace column.
    f.create("broken", "~=9.0", json!({})).await;
    f.wait_ready("broken", "False", "NoMatchingVersion").await;
    let run = f.kubectl_pack(&["get"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let line = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", run.stdout))
            .to_owned()
    };
    let broken = line("broken");
    assert!(
        broken.contains("genpack") && broken.contains("False"),
        "{broken}"
    );
    assert!(
        broken.contains("NoMatchingVersion: no version of chart `genpack`"),
        "{broken}"
    );
    assert!(
        broken.contains("0.1.0"),
        "the message lists the versions there: {broken}"
    );
    let app = line("app");
    assert!(app.contains("0.1.0") && app.contains("True"), "{app}");
    let all = f.kubectl_pack(&["get", "-A"]).await;
    assert!(
        all.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{} ", f.ns.name)) && l.contains("broken")),
        "{}",
        all.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn template_and_diff() {
    let f = fixture("kpack-render").await;
    let client = f.env.client().await;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"token": SECRET_TOKEN},
    }))
    .unwrap();
    Api::<Secret>::namespaced(client, &f.ns.name)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    f.create(
        "app",
        "~=0.1",
        json!({"valuesFrom": [{"kind": "Secret", "name": "creds", "valuesKey": "token",
            "targetPath": "gonbad.workloads.web.annotations.token"}]}),
    )
    .await;
    f.wait_ready("app", "True", "Applied").await;
    let helm = f.helm_flag();

    // template: the Pack's values rendered; the Secret's value blanked unless asked.
    let run = f.kubectl_pack(&["template", "app", &helm]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("name: app-web"), "{}", run.stdout);
    assert!(run.stdout.contains("replicas: 1"), "{}", run.stdout);
    assert!(
        run.stdout.contains("image: \"nginx:latest\""),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("token: <value>"), "{}", run.stdout);
    assert!(!run.stdout.contains(SECRET_TOKEN), "{}", run.stdout);
    assert!(!run.stderr.contains(SECRET_TOKEN), "{}", run.stderr);
    let shown = f
        .kubectl_pack(&["template", "app", &helm, "--show-secrets"])
        .await;
    assert!(
        shown.stdout.contains(&format!("token: {SECRET_TOKEN}")),
        "{}",
        shown.stdout
    );

    // diff: nothing for the release as installed.
    let run = f.kubectl_pack(&["diff", "app", &helm]).await;
    assert_eq!(
        run.code, 0,
        "no difference expected:\n{}{}",
        run.stdout, run.stderr
    );
    assert_eq!(run.stdout, "");

    // Scaled by hand: the diff shows the rendered replicas against the live ones, exit code 1.
    kubectl(
        &f.env.kubeconfig,
        &[
            "-n",
            &f.ns.name,
            "scale",
            "deployment",
            "app-web",
            "--replicas=3",
        ],
        "",
    )
    .unwrap();
    let run = f.kubectl_pack(&["diff", "app", &helm]).await;
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains(&format!("--- live/Deployment/{}/app-web", f.ns.name)),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("-  replicas: 3") && run.stdout.contains("+  replicas: 1"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(SECRET_TOKEN), "{}", run.stdout);
}
