//! pack-controller resolves Packs against a real Helm repository: charts packaged with the real helm CLI,
//! indexed with `helm repo index`, and served over HTTP on loopback by the test.

use std::{sync::atomic::Ordering, time::Duration};

use common::crd::{ClusterPackRepository, Pack};
use e2e::{
    packs::{
        ChartServer, RepositoriesGuard, Want, create_repository, pack_holds, publish,
        ready_message, start_pack_controller, wait_pack, wait_repository,
    },
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

    let compat = wait_pack(&packs, "compat", Want::applied("0.2.0"), Some(&controller)).await;
    let message = ready_message(&compat);
    assert!(message.contains("genpack 0.2.0"), "{message}");
    let digest = compat.status.unwrap().chart_digest;
    assert_eq!(digest.map(|d| d.len()), Some(64));
    wait_pack(&packs, "exact", Want::applied("0.1.3"), Some(&controller)).await;
    wait_pack(&packs, "caret", Want::applied("1.0.0"), Some(&controller)).await;
    let message = ready_message(
        &wait_pack(
            &packs,
            "impossible",
            Want::reason("NoMatchingVersion"),
            Some(&controller),
        )
        .await,
    );
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
    let message = ready_message(
        &wait_pack(
            &packs,
            "nochart",
            Want::reason("ChartNotFound"),
            Some(&controller),
        )
        .await,
    );
    assert!(message.contains("genpack"), "{message}");
    wait_pack(
        &packs,
        "invalid",
        Want::reason("InvalidVersionConstraint"),
        Some(&controller),
    )
    .await;
    let invalid = packs.get("invalid").await.unwrap().status.unwrap();
    assert_eq!(invalid.state, Some(common::crd::pack::PackState::Invalid));
    let message = ready_message(
        &wait_pack(
            &packs,
            "norepo",
            Want::reason("RepositoryNotFound"),
            Some(&controller),
        )
        .await,
    );
    assert!(message.contains(&later), "{message}");

    // The missing repository appears: the Pack heals without a restart.
    create_repository(&client, &later, &server.url).await;
    wait_pack(&packs, "norepo", Want::applied("0.2.0"), Some(&controller)).await;

    // A new matching version is published: `~=0.1` moves to it after an interval or two.
    publish(&dir, "0.3.0");
    wait_pack(&packs, "compat", Want::applied("0.3.0"), Some(&controller)).await;
    wait_pack(&packs, "caret", Want::applied("1.0.0"), Some(&controller)).await;

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
    pack_holds(
        &packs,
        "compat",
        Want::applied("0.3.0"),
        Duration::from_secs(5),
    )
    .await;

    // Recovery.
    server.broken.store(false, Ordering::SeqCst);
    wait_repository(&repos, &repo, "True", None, Some(&controller)).await;
    drop(controller);
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
    let controller = start_pack_controller(&env, &ns.name, "pack-0", &[]);
    let repos = Api::<ClusterPackRepository>::all(client.clone());
    let packs = Api::<Pack>::namespaced(client.clone(), &ns.name);
    create_pack(&client, &ns.name, "app", &repo, "genpack", "~=0.1").await;
    wait_pack(&packs, "app", Want::applied("0.1.0"), Some(&controller)).await;
    let good_index = std::fs::read(dir.join("index.yaml")).unwrap();

    // Invalid YAML: the message says where, and the previous index keeps serving.
    std::fs::write(
        dir.join("index.yaml"),
        "apiVersion: v1\nentries:\n  genpack:\n    - version: [1.0\n",
    )
    .unwrap();
    let (msg, _) = wait_repository(
        &repos,
        &repo,
        "False",
        Some("IndexInvalid"),
        Some(&controller),
    )
    .await;
    assert!(msg.contains("line"), "the parse error names a line: {msg}");
    let s = repos.get(&repo).await.unwrap().status.unwrap();
    assert_eq!(s.versions, Some(1), "previous index kept");
    wait_pack(&packs, "app", Want::applied("0.1.0"), Some(&controller)).await;

    // Larger than the cap (default 50 MiB): refused without being read whole.
    let mut huge = good_index.clone();
    huge.extend(std::iter::repeat_n(b'#', 51 * 1024 * 1024));
    std::fs::write(dir.join("index.yaml"), &huge).unwrap();
    drop(huge);
    let (msg, _) = wait_repository(
        &repos,
        &repo,
        "False",
        Some("IndexTooLarge"),
        Some(&controller),
    )
    .await;
    assert!(
        msg.contains("MiB") || msg.contains("bytes"),
        "names the limit: {msg}"
    );
    wait_pack(&packs, "app", Want::applied("0.1.0"), Some(&controller)).await;

    // Fixed: Ready again.
    std::fs::write(dir.join("index.yaml"), &good_index).unwrap();
    wait_repository(&repos, &repo, "True", None, Some(&controller)).await;

    // Nothing listens there: a connection error, reported as such.
    let port = e2e::cluster::free_port().unwrap();
    create_repository(
        &client,
        &unreachable,
        &format!("http://127.0.0.1:{port}/charts"),
    )
    .await;
    let (msg, _) = wait_repository(
        &repos,
        &unreachable,
        "False",
        Some("IndexFetchFailed"),
        Some(&controller),
    )
    .await;
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
