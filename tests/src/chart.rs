//! The pack-operator Helm chart (deploy/charts/pack-operator) driven by the pinned helm: rendering,
//! applying parts of it with kubectl, and checking what a ServiceAccount may do.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

use crate::tools::{tool, workspace_root};

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("deploy/charts/pack-operator")
}

/// The three controllers: (values key, component name = binary name).
pub const CONTROLLERS: [(&str, &str); 3] = [
    ("packController", "pack-controller"),
    ("redeployController", "redeploy-controller"),
    ("reflectorController", "reflector-controller"),
];

/// Runs the pinned helm with a private HOME (cache, config, data) and returns its stdout; an error
/// carries its stderr.
pub fn helm(args: &[&str]) -> anyhow::Result<String> {
    let home = std::env::temp_dir().join(format!("pack-operator-e2e-helm-{}", std::process::id()));
    let out = Command::new(tool("helm")?)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .stdin(Stdio::null())
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `--set` flags enabling exactly the controllers in `enabled` (component names).
pub fn enable_only(enabled: &[&str]) -> Vec<String> {
    CONTROLLERS
        .iter()
        .map(|(key, component)| format!("{key}.enabled={}", enabled.contains(component)))
        .collect()
}

/// `helm template <release> <chart> -n <namespace> --set <each of sets>`, parsed into documents. A set
/// that starts with `json:` goes as `--set-json` (e.g. `json:packController.rbac.helmRules=[...]`).
pub fn template(release: &str, namespace: &str, sets: &[String]) -> anyhow::Result<Vec<Value>> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    for s in sets {
        match s.strip_prefix("json:") {
            Some(json) => args.extend(["--set-json", json]),
            None => args.extend(["--set", s.as_str()]),
        }
    }
    parse_documents(&helm(&args)?)
}

/// Every non-empty YAML document of a multi-document text, as JSON values.
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = vec![];
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(value)?);
    }
    Ok(docs)
}

/// The `kind` of a document.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// The `metadata.name` of a document.
pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// The `app.kubernetes.io/component` label of a document.
pub fn component(doc: &Value) -> Option<&str> {
    doc["metadata"]["labels"]["app.kubernetes.io/component"].as_str()
}

/// Documents of `kind`.
pub fn of_kind<'a>(docs: &'a [Value], k: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| kind(d) == k).collect()
}

/// The ServiceAccount and RBAC objects of a rendering (what a controller's rights are made of).
pub fn rbac_documents(docs: &[Value]) -> Vec<Value> {
    const KINDS: [&str; 5] = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ];
    docs.iter()
        .filter(|d| KINDS.contains(&kind(d)))
        .cloned()
        .collect()
}

/// `kubectl --kubeconfig <kubeconfig> <args>` with `stdin`; its stdout, or an error with its stderr.
pub fn kubectl(kubeconfig: &Path, args: &[&str], stdin: &str) -> anyhow::Result<String> {
    let mut child = Command::new(tool("kubectl")?)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Applies `docs` with `kubectl apply --server-side`.
pub fn apply(kubeconfig: &Path, docs: &[Value]) -> anyhow::Result<()> {
    let mut text = String::new();
    for d in docs {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(d)?);
    }
    kubectl(
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--field-manager=pack-operator-e2e",
            "-f",
            "-",
        ],
        &text,
    )?;
    Ok(())
}

/// Deletes the cluster-scoped RBAC objects of a chart release when dropped (its namespaced objects go
/// with the test namespace).
pub struct ReleaseRbacGuard {
    pub kubeconfig: PathBuf,
    pub release: String,
}

impl Drop for ReleaseRbacGuard {
    fn drop(&mut self) {
        let selector = format!("app.kubernetes.io/instance={}", self.release);
        let _ = kubectl(
            &self.kubeconfig,
            &[
                "delete",
                "clusterrole,clusterrolebinding",
                "-l",
                &selector,
                "--ignore-not-found",
                "--wait=false",
            ],
            "",
        );
    }
}

/// Panics unless `result` is the API server's 403 Forbidden.
pub fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: Result<T, kube::Error>) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}

/// Renders the chart for one controller as release `release` in `namespace` (unique names, so its
/// ClusterRoles cannot collide with another test's), applies its ServiceAccount and RBAC to the shared
/// test cluster, and returns a kubeconfig holding that ServiceAccount's token.
pub async fn chart_service_account(
    release: &str,
    namespace: &str,
    controller: &str,
    extra: &[&str],
) -> (PathBuf, ReleaseRbacGuard) {
    let env = crate::test_env();
    let mut sets = enable_only(&[controller]);
    sets.extend(extra.iter().map(|s| s.to_string()));
    let docs = template(release, namespace, &sets).unwrap();
    let rbac = rbac_documents(&docs);
    let guard = ReleaseRbacGuard {
        kubeconfig: env.kubeconfig.clone(),
        release: release.to_owned(),
    };
    apply(&env.kubeconfig, &rbac).unwrap();
    let sa = of_kind(&rbac, "ServiceAccount");
    assert_eq!(sa.len(), 1, "one ServiceAccount for {controller}");
    let kubeconfig = env.service_account_kubeconfig(namespace, name(sa[0])).await;
    (kubeconfig, guard)
}
