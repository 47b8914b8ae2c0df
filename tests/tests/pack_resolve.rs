//! pack-controller resolves Packs against a real Helm repository: charts packaged with the real helm CLI,
//! indexed with `helm repo index`, and served over HTTP on loopback by the test.

use std::{sync::atomic::Ordering, time::Duration};

use common::crd::{ClusterPackRepository, Pack};
use e2e::{
    packs::{ChartServer, RepositoriesGuard, create_repository, publish, start_pack_controller},
    test_env, wait,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(250);

async fn create_pack(
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
    chart: &str,
    version: &str,
) {
    let pack: Pack = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "Pack",
        "metadata": { "name": name },
        "spec": {
            "chart": {
                "repository": { "kind": "ClusterPackRepository", "name": repo },
                "name": chart,
                "version": version,
            },
            "vars": { "TAG": "1.4.2" },
            "values": { "image": { "tag": "{{ vars.TAG }}" } },
        },
    }))
    .unwrap();
    Api::<Pack>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pack)
        .await
        .unwrap();
}

/// (Ready reason, Ready message, resolved version) of a Pack.
async fn pack_state(api: &Api<Pack>, name: &str) -> (String, String, Option<String>) {
    let pack = api.get(name).await.unwrap();
    let status = pack.status.unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    (
        ready.map(|c| c.reason.clone()).unwrap_or_default(),
        ready.map(|c| c.message.clone()).unwrap_or_default(),
        status.version,
    )
}

async fn wait_pack(api: &Api<Pack>, name: &str, reason: &str, version: Option<&str>) -> String {
    wait::until(
        &format!("Pack {name}: reason {reason}, version {version:?}"),
        TIMEOUT,
        EVERY,
        || async {
            let (r, message, v) = pack_state(api, name).await;
            if r == reason && (version.is_none() || v.as_deref() == version) {
                Ok(Some(message))
            } else {
                Err((r, message, v))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn resolves_packs_against_a_served_repository() {
    let env = test_env();
    let ns = env.namespace("pack-resolve").await;
    let client = env.client().await;

    let server = ChartServer::with_versions(&ns.name, &["0.1.0", "0.1.3", "0.2.0", "1.0.0"]).await;
    let dir = server.dir.clone();

    let repo = format!("{}-packs", ns.name);
    let later = format!("{}-later", ns.name);
    let _guard = RepositoriesGuard {
        client: client.clone(),
        names: vec![repo.clone(), later.clone()],
    };
    create_repository(&client, &repo, &server.url).await;
    let controller = start_pack_controller(&env, &ns.name, "pack-0", &[]);

    let repos = Api::<ClusterPackRepository>::all(client.clone());
    wait::until(
        "repository Ready with 1 chart and 4 versions",
        TIMEOUT,
        EVERY,
        || async {
            let r = repos.get(&repo).await.unwrap();
            let s = r.status.unwrap_or_default();
            let ready = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && s.charts == Some(1) && s.versions == Some(4) && s.index_digest.is_some() {
                Ok(Some(()))
            } else {
                Err(format!("{s:?}\n{}", controller.logs()))
            }
        },
    )
    .await;

    let packs: Api<Pack> = Api::namespaced(client.clone(), &ns.name);
    create_pack(&client, &ns.name, "compat", &repo, "genpack", "~=0.1").await;
    create_pack(&client, &ns.name, "exact", &repo, "genpack", "0.1.3").await;
    create_pack(&client, &ns.name, "caret", &repo, "genpack", "^1.0").await;
    create_pack(&client, &ns.name, "impossible", &repo, "genpack", ">=5").await;
    create_pack(&client, &ns.name, "nochart", &repo, "nochart", "*").await;
    create_pack(&client, &ns.name, "invalid", &repo, "genpack", "~=1").await;
    create_pack(&client, &ns.name, "norepo", &later, "genpack", "~=0.1").await;

    let message = wait_pack(&packs, "compat", "Applied", Some("0.2.0")).await;
    assert!(message.contains("genpack 0.2.0"), "{message}");
    let digest = packs
        .get("compat")
        .await
        .unwrap()
        .status
        .unwrap()
        .chart_digest;
    assert_eq!(digest.map(|d| d.len()), Some(64));
    wait_pack(&packs, "exact", "Applied", Some("0.1.3")).await;
    wait_pack(&packs, "caret", "Applied", Some("1.0.0")).await;
    let message = wait_pack(&packs, "impossible", "NoMatchingVersion", None).await;
    assert!(
        message.contains(">=5") && message.contains("1.0.0, 0.2.0, 0.1.3, 0.1.0"),
        "{message}"
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns.name);
    wait::until(
        "a Warning Event NoMatchingVersion on Pack impossible",
        TIMEOUT,
        EVERY,
        || async {
            let list = events
                .list(&ListParams::default().fields("involvedObject.name=impossible"))
                .await
                .unwrap();
            let reasons: Vec<_> = list
                .items
                .iter()
                .map(|e| (e.type_.clone(), e.reason.clone()))
                .collect();
            if reasons.iter().any(|(t, r)| {
                t.as_deref() == Some("Warning") && r.as_deref() == Some("NoMatchingVersion")
            }) {
                Ok(Some(()))
            } else {
                Err(reasons)
            }
        },
    )
    .await;
    let message = wait_pack(&packs, "nochart", "ChartNotFound", None).await;
    assert!(message.contains("genpack"), "{message}");
    wait_pack(&packs, "invalid", "InvalidVersionConstraint", None).await;
    let invalid = packs.get("invalid").await.unwrap().status.unwrap();
    assert_eq!(invalid.state, Some(common::crd::pack::PackState::Invalid));
    let message = wait_pack(&packs, "norepo", "RepositoryNotFound", None).await;
    assert!(message.contains(&later), "{message}");

    // The missing repository appears: the Pack heals without a restart.
    create_repository(&client, &later, &server.url).await;
    wait_pack(&packs, "norepo", "Applied", Some("0.2.0")).await;

    // A new matching version is published: `~=0.1` moves to it after an interval or two.
    publish(&dir, "0.3.0");
    wait_pack(&packs, "compat", "Applied", Some("0.3.0")).await;
    wait_pack(&packs, "caret", "Applied", Some("1.0.0")).await;

    // The repository answers 404: Ready=False with the HTTP status, the previous index keeps serving.
    server.broken.store(true, Ordering::SeqCst);
    wait::until(
        "repository Ready=False with HTTP 404",
        TIMEOUT,
        EVERY,
        || async {
            let s = repos.get(&repo).await.unwrap().status.unwrap_or_default();
            let ready = s.conditions.iter().find(|c| c.type_ == "Ready").cloned();
            match ready {
                Some(c) if c.status == "False" && c.message.contains("404") => Ok(Some((c, s))),
                other => Err(other),
            }
        },
    )
    .await;
    let s = repos.get(&repo).await.unwrap().status.unwrap();
    assert_eq!((s.charts, s.versions), (Some(1), Some(5)));
    wait::holds(
        "Pack compat stays resolved to 0.3.0",
        Duration::from_secs(5),
        EVERY,
        || async {
            match pack_state(&packs, "compat").await {
                (r, _, Some(v)) if r == "Applied" && v == "0.3.0" => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;

    // Recovery.
    server.broken.store(false, Ordering::SeqCst);
    wait::until("repository Ready again", TIMEOUT, EVERY, || async {
        let s = repos.get(&repo).await.unwrap().status.unwrap_or_default();
        if s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            Ok(Some(()))
        } else {
            Err(s)
        }
    })
    .await;
    drop(controller);
}

/// Waits until repository `name` is Ready=False with `reason`; returns its message.
async fn wait_repository_failure(
    repos: &Api<ClusterPackRepository>,
    name: &str,
    reason: &str,
) -> String {
    wait::until(
        &format!("repository {name} Ready=False/{reason}"),
        TIMEOUT,
        EVERY,
        || async {
            let s = repos
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            match s.conditions.iter().find(|c| c.type_ == "Ready") {
                Some(c) if c.status == "False" && c.reason == reason => Ok(Some(c.message.clone())),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_indexes_are_reported_and_the_previous_index_keeps_serving() {
    let env = test_env();
    let ns = env.namespace("pack-badindex").await;
    let client = env.client().await;
    let server = ChartServer::with_versions(&ns.name, &["0.1.0"]).await;
    let dir = server.dir.clone();
    let repo = format!("{}-packs", ns.name);
    let unreachable = format!("{}-unreachable", ns.name);
    let _guard = RepositoriesGuard {
        client: client.clone(),
        names: vec![repo.clone(), unreachable.clone()],
    };
    create_repository(&client, &repo, &server.url).await;
    let _controller = start_pack_controller(&env, &ns.name, "pack-0", &[]);
    let repos = Api::<ClusterPackRepository>::all(client.clone());
    let packs = Api::<Pack>::namespaced(client.clone(), &ns.name);
    create_pack(&client, &ns.name, "app", &repo, "genpack", "~=0.1").await;
    wait_pack(&packs, "app", "Applied", Some("0.1.0")).await;
    let good_index = std::fs::read(dir.join("index.yaml")).unwrap();

    // Invalid YAML: the message says where, and the previous index keeps serving.
    std::fs::write(
        dir.join("index.yaml"),
        "apiVersion: v1\nentries:\n  genpack:\n    - version: [1.0\n",
    )
    .unwrap();
    let msg = wait_repository_failure(&repos, &repo, "IndexInvalid").await;
    assert!(msg.contains("line"), "the parse error names a line: {msg}");
    let s = repos.get(&repo).await.unwrap().status.unwrap();
    assert_eq!(s.versions, Some(1), "previous index kept");
    wait_pack(&packs, "app", "Applied", Some("0.1.0")).await;

    // Larger than the cap (default 50 MiB): refused without being read whole.
    let mut huge = good_index.clone();
    huge.extend(std::iter::repeat_n(b'#', 51 * 1024 * 1024));
    std::fs::write(dir.join("index.yaml"), &huge).unwrap();
    drop(huge);
    let msg = wait_repository_failure(&repos, &repo, "IndexTooLarge").await;
    assert!(
        msg.contains("MiB") || msg.contains("bytes"),
        "names the limit: {msg}"
    );
    wait_pack(&packs, "app", "Applied", Some("0.1.0")).await;

    // Fixed: Ready again.
    std::fs::write(dir.join("index.yaml"), &good_index).unwrap();
    wait::until("repository Ready again", TIMEOUT, EVERY, || async {
        let s = repos.get(&repo).await.unwrap().status.unwrap_or_default();
        if s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            Ok(Some(()))
        } else {
            Err(s)
        }
    })
    .await;

    // Nothing listens there: a connection error, reported as such.
    let port = e2e::cluster::free_port().unwrap();
    create_repository(
        &client,
        &unreachable,
        &format!("http://127.0.0.1:{port}/charts"),
    )
    .await;
    let msg = wait_repository_failure(&repos, &unreachable, "IndexFetchFailed").await;
    assert!(msg.to_lowercase().contains("connect"), "{msg}");

    // Not an http(s) URL: rejected by the CRD schema at admission.
    let bad: ClusterPackRepository = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "ClusterPackRepository",
        "metadata": { "name": format!("{}-ftp", ns.name) }, "spec": { "url": "ftp://charts.example.com" }
    }))
    .unwrap();
    let err = repos
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("spec.url"), "{err}");
}
