//! The namespaced PackRepository against the real API server and helm: a Pack installs from the
//! PackRepository of its own namespace; a Pack of another namespace naming it is refused (Ready=False
//! RepositoryNotFound saying a Pack cannot use another namespace's, with an Event) and installs nothing,
//! until a PackRepository of that name is created in its own namespace, which heals it by watch. The
//! CRD refuses a Secret reference that names a namespace.

use common::crd::{Pack, PackRepository, pack::PackState};
use e2e::{
    controller::ControllerProcess,
    events::wait_event,
    packs::{ChartServer, Want, helm_operations, ready_message, start_pack_controller, wait_pack},
    test_env,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;

fn pack_repository(name: &str, url: &str) -> PackRepository {
    serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "PackRepository",
        "metadata": {"name": name},
        "spec": {"url": url, "interval": "2s"},
    }))
    .unwrap()
}

async fn create_pack(client: &Client, ns: &str, repository: &str) {
    let pack: Pack = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "Pack",
        "metadata": {"name": "app"},
        "spec": {"chart": {
            "repository": {"kind": "PackRepository", "name": repository},
            "name": "genpack",
        }},
    }))
    .unwrap();
    Api::<Pack>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pack)
        .await
        .unwrap();
}

/// Waits until Pack `ns/app` has Ready reason `reason` (and `state`, when given); returns its message.
async fn wait_ready(
    client: &Client,
    ns: &str,
    state: Option<PackState>,
    reason: &str,
    controller: &ControllerProcess,
) -> String {
    let packs: Api<Pack> = Api::namespaced(client.clone(), ns);
    let want = Want::reason(reason);
    let want = match state {
        Some(state) => want.state(state),
        None => want,
    };
    ready_message(&wait_pack(&packs, "app", want, Some(controller)).await)
}

/// Helm's release Secrets in `ns`.
async fn releases(client: &Client, ns: &str) -> usize {
    Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels("owner=helm"))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_repository_serves_only_the_packs_of_its_namespace() {
    let env = test_env();
    let team = env.namespace("pack-repo-team").await;
    let other = env.namespace("pack-repo-other").await;
    let client = env.client().await;
    let server = ChartServer::with_versions(&team.name, &["0.1.0"]).await;
    let controller = start_pack_controller(
        &env,
        &team.name,
        "pack-repository",
        &[&format!("--namespace={},{}", team.name, other.name)],
    );
    Api::<PackRepository>::namespaced(client.clone(), &team.name)
        .create(
            &PostParams::default(),
            &pack_repository("team-charts", &server.url),
        )
        .await
        .unwrap();

    // Its own namespace: installed.
    create_pack(&client, &team.name, "team-charts").await;
    wait_ready(
        &client,
        &team.name,
        Some(PackState::Applied),
        "Applied",
        &controller,
    )
    .await;
    assert_eq!(releases(&client, &team.name).await, 1);
    let repo = Api::<PackRepository>::namespaced(client.clone(), &team.name)
        .get("team-charts")
        .await
        .unwrap();
    assert_eq!(repo.status.unwrap().charts, Some(1));

    // Another namespace naming it: refused, with the reason on the Pack and in an Event; nothing installed.
    let helm_before = helm_operations(&controller).await;
    create_pack(&client, &other.name, "team-charts").await;
    let message = wait_ready(
        &client,
        &other.name,
        None,
        "RepositoryNotFound",
        &controller,
    )
    .await;
    assert!(
        message.contains("PackRepository `team-charts`")
            && message.contains("a Pack cannot use another namespace's")
            && message.contains("does not exist"),
        "{message}"
    );
    wait_event(
        &client,
        &other.name,
        "app",
        "RepositoryNotFound",
        "a Pack cannot use another namespace's",
    )
    .await;
    assert_eq!(releases(&client, &other.name).await, 0);
    assert_eq!(helm_operations(&controller).await, helm_before);

    // Its own PackRepository of that name appears: healed by watch.
    Api::<PackRepository>::namespaced(client.clone(), &other.name)
        .create(
            &PostParams::default(),
            &pack_repository("team-charts", &server.url),
        )
        .await
        .unwrap();
    wait_ready(
        &client,
        &other.name,
        Some(PackState::Applied),
        "Applied",
        &controller,
    )
    .await;
    assert_eq!(releases(&client, &other.name).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_repository_cannot_name_another_namespaces_secret() {
    let env = test_env();
    let ns = env.namespace("pack-repo-crd").await;
    let client = env.client().await;
    let api: Api<PackRepository> = Api::namespaced(client.clone(), &ns.name);
    for field in ["secretRef", "caSecretRef"] {
        let mut repo = pack_repository("r", "https://charts.example.com");
        let mut spec = serde_json::to_value(&repo.spec).unwrap();
        spec[field] = json!({"name": "creds", "namespace": "kube-system"});
        repo.spec = serde_json::from_value(spec).unwrap();
        let err = api
            .create(&PostParams::default(), &repo)
            .await
            .expect_err("a namespace in a PackRepository's Secret reference is refused");
        assert!(
            err.to_string()
                .contains("a PackRepository reads its Secrets in its own namespace"),
            "{field}: {err}"
        );
    }
    // Without a namespace it is accepted.
    let mut repo = pack_repository("r", "https://charts.example.com");
    let mut spec = serde_json::to_value(&repo.spec).unwrap();
    spec["secretRef"] = json!({"name": "creds"});
    repo.spec = serde_json::from_value(spec).unwrap();
    api.create(&PostParams::default(), &repo).await.unwrap();
}
