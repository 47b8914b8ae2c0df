//! pack-controller resolves and installs charts from a real OCI registry (CNCF Distribution, built by
//! hack/tools.sh) on loopback, charts pushed with the pinned `helm push`.

use std::time::Duration;

use common::crd::{ClusterPackRepository, Pack};
use e2e::{
    packs::{
        RepositoriesGuard, Want, create_genpack_pack, pack_holds, ready_message,
        start_pack_controller, wait_pack, wait_repository,
    },
    registry::{REGISTRY_PASSWORD, REGISTRY_USER, Registry},
    test_env,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use serde_json::json;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Creates ClusterPackRepository `name` for the registry, plain HTTP, refreshed every 2 s, with
/// `secret` (in `ns`) as spec.secretRef.
async fn create_oci_repository(
    client: &Client,
    name: &str,
    url: &str,
    secret: Option<(&str, &str)>,
) {
    let mut spec = json!({ "url": url, "interval": "2s", "insecure": true });
    if let Some((ns, secret)) = secret {
        spec["secretRef"] = json!({ "name": secret, "namespace": ns });
    }
    let repo: ClusterPackRepository = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "ClusterPackRepository",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    Api::<ClusterPackRepository>::all(client.clone())
        .create(&PostParams::default(), &repo)
        .await
        .unwrap();
}

/// Tags the manifest of `genpack:from` as `genpack:to` through the registry API (helm pushes only
/// version tags).
async fn retag(registry: &Registry, from: &str, to: &str) {
    let base = format!("http://{}/v2/charts/genpack/manifests", registry.host);
    let http = reqwest::Client::new();
    let manifest = http
        .get(format!("{base}/{from}"))
        .header("Accept", MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let put = http
        .put(format!("{base}/{to}"))
        .header("Content-Type", MANIFEST)
        .body(manifest)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT {to}: {}", put.status());
}

/// The registry's file holding the chart layer of `genpack:version`.
async fn layer_file(registry: &Registry, version: &str) -> std::path::PathBuf {
    let url = format!(
        "http://{}/v2/charts/genpack/manifests/{version}",
        registry.host
    );
    let body = reqwest::Client::new()
        .get(url)
        .header("Accept", MANIFEST)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let hex = layer.strip_prefix("sha256:").unwrap();
    registry
        .dir
        .join("storage/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data")
}

#[tokio::test(flavor = "multi_thread")]
async fn resolves_installs_upgrades_and_survives_the_registry_going_down() {
    let env = test_env();
    let ns = env.namespace("pack-oci").await;
    let client = env.client().await;
    let mut registry = Registry::start(&ns.name, false).await;
    registry.push_genpack("0.1.0");
    registry.push_genpack("0.1.1");
    // Tags that are not SemVer are no versions, even when they look like a higher one.
    retag(&registry, "0.1.1", "latest").await;
    retag(&registry, "0.1.1", "9").await;

    let repo = format!("{}-oci", ns.name);
    let _guard = RepositoriesGuard {
        client: client.clone(),
        names: vec![repo.clone()],
    };
    create_oci_repository(&client, &repo, &registry.repository_url(), None).await;
    let controller = start_pack_controller(&env, &ns.name, "pack-0", &[]);
    let repos = Api::<ClusterPackRepository>::all(client.clone());
    let packs: Api<Pack> = Api::namespaced(client.clone(), &ns.name);
    create_genpack_pack(&client, &ns.name, "app", &repo, Some("<0.5.0"), json!(null)).await;

    let app = wait_pack(&packs, "app", Want::applied("0.1.1"), Some(&controller)).await;
    let pinned = format!("{}/genpack@sha256:", registry.repository_url());
    let first = app.status.and_then(|s| s.chart_ref).unwrap_or_default();
    assert!(first.starts_with(&pinned), "{first} pins a manifest digest");
    let (_, status) = wait_repository(&repos, &repo, "True", None, Some(&controller)).await;
    assert_eq!(status.versions, Some(2), "latest and 9 are not versions");

    // A newer matching tag is pushed: the Pack upgrades to it on the repository's interval.
    registry.push_genpack("0.2.0");
    let app = wait_pack(&packs, "app", Want::applied("0.2.0"), Some(&controller)).await;
    assert_ne!(
        app.status.and_then(|s| s.chart_ref).as_deref(),
        Some(first.as_str()),
        "another manifest is pinned"
    );

    // A chart layer whose bytes are not the ones its manifest names is refused.
    registry.push_genpack("0.5.0");
    let data = layer_file(&registry, "0.5.0").await;
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    create_genpack_pack(
        &client,
        &ns.name,
        "tampered",
        &repo,
        Some("0.5.0"),
        json!(null),
    )
    .await;
    let tampered = wait_pack(
        &packs,
        "tampered",
        Want::reason("ChartDigestMismatch"),
        Some(&controller),
    )
    .await;
    let message = ready_message(&tampered);
    assert!(message.contains("SHA-256"), "{message}");

    // The registry goes down: the repository says so, the previous resolution keeps serving.
    registry.stop();
    let (message, _) = wait_repository(
        &repos,
        &repo,
        "False",
        Some("IndexFetchFailed"),
        Some(&controller),
    )
    .await;
    assert!(message.contains("still serving"), "{message}");
    pack_holds(
        &packs,
        "app",
        Want::applied("0.2.0"),
        Duration::from_secs(5),
    )
    .await;
    registry.run().await;
    wait_repository(&repos, &repo, "True", None, Some(&controller)).await;
    drop(controller);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_with_auth_takes_credentials_from_secrets() {
    let env = test_env();
    let ns = env.namespace("pack-oci-auth").await;
    let client = env.client().await;
    let registry = Registry::start(&ns.name, true).await;
    registry.push_genpack("0.1.0");

    // Right credentials, as a kubernetes.io/dockerconfigjson Secret; wrong ones as username/password.
    let config = json!({ "auths": { registry.host.clone(): {
        "username": REGISTRY_USER, "password": REGISTRY_PASSWORD,
    } } });
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let docker: Secret = serde_json::from_value(json!({
        "metadata": { "name": "registry-docker" },
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": { ".dockerconfigjson": config.to_string() },
    }))
    .unwrap();
    let wrong: Secret = serde_json::from_value(json!({
        "metadata": { "name": "registry-wrong" },
        "stringData": { "username": REGISTRY_USER, "password": "not-the-password" },
    }))
    .unwrap();
    for s in [&docker, &wrong] {
        secrets.create(&PostParams::default(), s).await.unwrap();
    }
    let good = format!("{}-good", ns.name);
    let bad = format!("{}-bad", ns.name);
    let _guard = RepositoriesGuard {
        client: client.clone(),
        names: vec![good.clone(), bad.clone()],
    };
    let url = registry.repository_url();
    create_oci_repository(&client, &good, &url, Some((&ns.name, "registry-docker"))).await;
    create_oci_repository(&client, &bad, &url, Some((&ns.name, "registry-wrong"))).await;
    let controller = start_pack_controller(&env, &ns.name, "pack-0", &[]);
    let repos = Api::<ClusterPackRepository>::all(client.clone());
    let packs: Api<Pack> = Api::namespaced(client.clone(), &ns.name);
    create_genpack_pack(&client, &ns.name, "good", &good, None, json!(null)).await;
    create_genpack_pack(&client, &ns.name, "bad", &bad, None, json!(null)).await;

    wait_pack(&packs, "good", Want::applied("0.1.0"), Some(&controller)).await;
    let (message, _) = wait_repository(
        &repos,
        &bad,
        "False",
        Some("AuthenticationFailed"),
        Some(&controller),
    )
    .await;
    assert!(
        message.contains("401") && message.contains("spec.secretRef"),
        "{message}"
    );
    for text in [message, controller.logs()] {
        assert!(!text.contains("not-the-password") && !text.contains(REGISTRY_PASSWORD));
    }
    let bad_pack = packs.get("bad").await.unwrap();
    assert_ne!(
        bad_pack.status.as_ref().and_then(|s| s.version.clone()),
        Some("0.1.0".into()),
        "{} resolved without credentials",
        bad_pack.name_any()
    );
    drop(controller);
}
