//! `make package` (hack/package.sh) publishes the chart as users install it: from a Helm repository
//! (archive + index.yaml, served over HTTP) and from an OCI registry (CNCF Distribution), each with the
//! product's install command and the pinned helm, onto a private control plane.

use std::{path::Path, process::Command};

use e2e::{
    chart::helm, cluster::ControlPlane, packs::ChartServer, registry::Registry,
    tools::workspace_root,
};
use serde_json::Value;

/// Runs hack/package.sh into `dir` with `env`; returns its stdout, panics with its stderr.
fn package(dir: &Path, env: &[(&str, &str)]) -> String {
    let out = Command::new(workspace_root().join("hack/package.sh"))
        .env("PACKAGE_DIR", dir)
        .envs(env.iter().copied())
        .output()
        .expect("run hack/package.sh");
    assert!(
        out.status.success(),
        "hack/package.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The chart (name-version) and status of release pack-operator.
fn release(kubeconfig: &str) -> (String, String) {
    let list = helm(&["list", "-n", "pack-operator", kubeconfig, "-o", "json"]).unwrap();
    let list: Value = serde_json::from_str(&list).unwrap();
    let r = list
        .as_array()
        .and_then(|l| l.iter().find(|r| r["name"] == "pack-operator"))
        .unwrap_or_else(|| panic!("no release pack-operator: {list}"));
    (
        r["chart"].as_str().unwrap().to_owned(),
        r["status"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_packaged_chart_installs_from_a_helm_repository_and_upgrades_from_an_oci_registry() {
    let suffix = std::process::id();
    let root = std::env::temp_dir().join(format!("pack-operator-e2e-package-{suffix}"));
    let _ = std::fs::remove_dir_all(&root);
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();

    // A Helm repository: the archive and index.yaml, served over HTTP.
    let out = package(&repo, &[]);
    assert!(out.contains("index.yaml"), "{out}");
    let index = std::fs::read_to_string(repo.join("index.yaml")).unwrap();
    assert!(index.contains("pack-operator-0.1.0.tgz"), "{index}");
    let server = ChartServer::start(repo.clone()).await;

    let plane = ControlPlane::start_without_crds(&root.join("plane"))
        .await
        .unwrap();
    let kubeconfig = format!("--kubeconfig={}", plane.kubeconfig.display());
    let install = |source: &[&str]| {
        let mut args = vec![
            "upgrade",
            "--install",
            "pack-operator",
            "--namespace=pack-operator",
            "--create-namespace",
            &kubeconfig,
        ];
        args.extend_from_slice(source);
        helm(&args).unwrap();
    };
    // The product's install command, with --repo instead of a `helm repo add`ed name.
    install(&["pack-operator", "--repo", &server.url]);
    assert_eq!(
        release(&kubeconfig),
        ("pack-operator-0.1.0".to_owned(), "deployed".to_owned())
    );

    // An OCI registry: a release tag's version pushed with OCI_REGISTRY, the release upgraded from it.
    let registry = Registry::start(&format!("package-{suffix}"), false).await;
    let oci = registry.repository_url();
    let out = package(
        &root.join("oci"),
        &[
            ("OCI_REGISTRY", &oci),
            ("OCI_PLAIN_HTTP", "1"),
            ("CHART_VERSION", "v0.2.0"),
        ],
    );
    assert!(out.contains(&format!("pushed to {oci}")), "{out}");
    let chart = format!("{oci}/pack-operator");
    install(&[&chart, "--version", "0.2.0", "--plain-http"]);
    assert_eq!(
        release(&kubeconfig),
        ("pack-operator-0.2.0".to_owned(), "deployed".to_owned()),
        "registry log: {}",
        registry.logs()
    );
    drop(plane);
    let _ = std::fs::remove_dir_all(&root);
}
