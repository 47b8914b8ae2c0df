//! The mocked-API tier: one reconcile against [`ApiServer`], asserting the exact requests it sends and
//! how it takes each answer (a refusal, a conflict, a race, a newer stored Pack). No Helm process runs in
//! any of these: each scenario ends before one would.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{
    crd::Pack,
    metrics::ReconcileMetrics,
    testing::{ApiRequest, ApiServer},
};
use kube::{
    Client,
    runtime::{controller::Action, events::Reporter},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{Context, FINALIZER, WARM_UP, error_policy, reconcile};
use crate::{
    chart::ChartCache,
    error::Error,
    helm::{Helm, HelmConfig},
    index::{CacheValidators, CachedRepository, HttpFetcher, IndexCache, parse_index},
    metrics::{HelmMetrics, PackStates},
};

const URL: &str = "http://127.0.0.1:1/packs";
const PACK: &str = "/apis/k8s.kubit.ir/v1alpha1/namespaces/apps/packs/web";
const STATUS: &str = "/apis/k8s.kubit.ir/v1alpha1/namespaces/apps/packs/web/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/apps/events";

/// A Context on a mocked client, with the index of ClusterPackRepository `packs` cached.
fn context(client: Client) -> (Arc<Context>, PathBuf) {
    let work_dir = std::env::temp_dir().join(format!(
        "pack-reconcile-test-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let mut registry = Registry::default();
    let helm = Helm::new(
        HelmConfig {
            binary: "/nonexistent/helm".into(),
            work_dir: work_dir.clone(),
            timeout: Duration::from_secs(60),
            max_history: 5,
            concurrency: 1,
            term_grace: Duration::from_secs(1),
        },
        HelmMetrics::register(&mut registry),
    )
    .unwrap();
    let cache = IndexCache::new();
    let index = parse_index(
        b"apiVersion: v1\nentries:\n  genpack:\n    - {version: 0.1.0, urls: [genpack-0.1.0.tgz], digest: aa}\n",
        URL,
    )
    .unwrap();
    cache.insert(
        "packs",
        CachedRepository::new(URL, index, CacheValidators::default()),
    );
    let ctx = Context {
        client: client.clone(),
        cache,
        recorder: common::events::Recorder::new(
            client,
            Reporter {
                controller: "pack-controller".into(),
                instance: Some("test".into()),
            },
        ),
        metrics: ReconcileMetrics::register(&mut registry, "pack"),
        helm,
        charts: ChartCache::new(HttpFetcher::new(), work_dir.join("charts")),
        states: PackStates::register(&mut registry),
        max_index_bytes: 1 << 20,
        max_values_bytes: crate::resolve::DEFAULT_MAX_VALUES_BYTES,
        resync: Duration::from_secs(600),
        stop: CancellationToken::new(),
        errors: Mutex::default(),
        written: Default::default(),
        namespaces: vec![],
        default_service_account: None,
        config: kube::Config::new("http://127.0.0.1:1".parse().unwrap()),
        allow_cross_namespace_dependencies: false,
        packs: kube::runtime::reflector::store().0,
    };
    (Arc::new(ctx), work_dir)
}

fn pack_json(generation: i64, finalizers: &[&str], suspend: bool) -> Value {
    json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "Pack",
        "metadata": {
            "name": "web", "namespace": "apps", "uid": "u-1", "generation": generation,
            "resourceVersion": "7", "finalizers": finalizers,
        },
        "spec": {
            "chart": {
                "repository": {"kind": "ClusterPackRepository", "name": "packs"},
                "name": "genpack",
                "version": "0.1.0",
            },
            "suspend": suspend,
        },
    })
}

fn pack(generation: i64, finalizers: &[&str], suspend: bool) -> Arc<Pack> {
    Arc::new(serde_json::from_value(pack_json(generation, finalizers, suspend)).unwrap())
}

/// Reconciles `pack` while `server` plays the API server, then checks it sent nothing more.
async fn reconcile_with<F, Fut>(
    pack: Arc<Pack>,
    ctx: Arc<Context>,
    server: ApiServer,
    play: F,
) -> Result<Action, Error>
where
    F: FnOnce(ApiServer) -> Fut + Send + 'static,
    Fut: Future<Output = ApiServer> + Send + 'static,
{
    let server = tokio::spawn(play(server));
    let result = reconcile(pack, ctx).await;
    server.await.unwrap().done();
    result
}

/// The delay of a requeue (kube's `Action` shows it only in its Debug form).
fn requeue_seconds(action: &Action) -> f64 {
    let text = format!("{action:?}");
    let inner = text
        .split("Some(")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .unwrap_or_else(|| panic!("no requeue in {text}"));
    match inner.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().unwrap() / 1000.0,
        None => inner.strip_suffix('s').unwrap().parse().unwrap(),
    }
}

fn ready_condition(request: &ApiRequest) -> Value {
    request.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap()
}

#[tokio::test]
async fn a_finalizer_patch_refused_403_is_reported_on_the_pack_with_the_fix() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let result = reconcile_with(pack(1, &[], false), ctx.clone(), server, |mut s| async move {
        let add = s.next().await;
        add.assert("PATCH", PACK);
        assert_eq!(
            add.body,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        );
        add.respond_status(
            403,
            "Forbidden",
            "packs.k8s.kubit.ir \"web\" is forbidden: User \"system:serviceaccount:pack-operator:pack-controller\" cannot patch resource \"packs\"",
        );
        let status = s.next().await;
        status.assert("PATCH", STATUS);
        assert!(status.query.contains("fieldManager=pack-controller"), "{}", status.query);
        let ready = ready_condition(&status);
        assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("KubernetesAPIError")));
        let message = ready["message"].as_str().unwrap();
        assert!(message.contains("403 Forbidden") && message.contains("cannot patch resource \"packs\"") && message.contains("check its RBAC"), "{message}");
        status.echo();
        let event = s.next().await;
        event.assert("POST", EVENTS);
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], "KubernetesAPIError");
        assert_eq!(event.body["note"].as_str(), Some(message));
        event.echo();
        s
    })
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.reason(), "Finalizer");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_stale_finalizer_race_422_is_retried_quietly() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let result = reconcile_with(
        pack(1, &[], false),
        ctx.clone(),
        server,
        |mut s| async move {
            let add = s.next().await;
            add.assert("PATCH", PACK);
            add.respond_status(
                422,
                "Invalid",
                "the server rejected our request due to an error in our request",
            );
            // Nothing else: no status, no Event. The next reconcile reads the new finalizer list.
            s
        },
    )
    .await;
    let error = result.unwrap_err();
    assert_eq!(error.api_failure(), None);
    let action = error_policy(pack(1, &[], false), &error, ctx);
    assert_ne!(action, Action::await_change(), "retried");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_status_write_refused_409_is_retried_without_a_report() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let result = reconcile_with(pack(1, &[FINALIZER], true), ctx.clone(), server, |mut s| async move {
        let status = s.next().await;
        status.assert("PATCH", STATUS);
        let reconciling = status.body["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Reconciling")
            .cloned()
            .unwrap();
        assert_eq!(reconciling["reason"], "Suspended");
        status.respond_status(409, "Conflict", "Operation cannot be fulfilled on packs.k8s.kubit.ir \"web\": the object has been modified");
        // A conflict is no news to the owner: no second status write, no Event.
        s
    })
    .await;
    let error = result.unwrap_err();
    assert!(matches!(&error, Error::Finalizer(_)), "{error}");
    assert_eq!(error.reason(), "KubeApi");
    assert_eq!(error.api_failure(), None);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Answers the reads every install decision makes: the repository, then Helm's release Secrets (none).
async fn repository_and_no_release(s: &mut ApiServer) {
    let repo = s.next().await;
    repo.assert(
        "GET",
        "/apis/k8s.kubit.ir/v1alpha1/clusterpackrepositories/packs",
    );
    repo.respond_json(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "ClusterPackRepository",
        "metadata": {"name": "packs", "generation": 1},
        "spec": {"url": URL},
    }));
    let releases = s.next().await;
    releases.assert("GET", "/api/v1/namespaces/apps/secrets");
    assert!(
        releases
            .query
            .contains("labelSelector=owner%3Dhelm%2Cname%3Dweb"),
        "{}",
        releases.query
    );
    releases.respond_json(json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": "9"}, "items": [],
    }));
}

#[tokio::test]
async fn a_decision_to_run_helm_is_taken_again_on_the_stored_pack() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let result = reconcile_with(
        pack(1, &[FINALIZER], false),
        ctx.clone(),
        server,
        |mut s| async move {
            repository_and_no_release(&mut s).await;
            // An install is planned on the cached Pack: the stored one is read first ...
            let stored = s.next().await;
            stored.assert("GET", PACK);
            // ... and it has a newer spec: nothing runs now, that spec's own event follows.
            stored.respond_json(pack_json(2, &[FINALIZER], false));
            s
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(WARM_UP));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_failure_recorded_on_the_stored_pack_is_waited_out_not_retried() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let result = reconcile_with(
        pack(1, &[FINALIZER], false),
        ctx.clone(),
        server,
        |mut s| async move {
            repository_and_no_release(&mut s).await;
            let stored = s.next().await;
            stored.assert("GET", PACK);
            // The stored Pack records a failure of this very spec a moment ago (the cache had not seen it).
            let digest = crate::plan::ReleaseDigest::of("genpack", "0.1.0", Some("aa"), &json!({}));
            let mut fresh = pack_json(1, &[FINALIZER], false);
            fresh["status"] = json!({
                "observedGeneration": 1,
                "version": "0.1.0",
                "chartDigest": "aa",
                "state": "ApplyFailed",
                "failures": 1,
                "lastAttemptedDigest": digest.as_str(),
                "history": [{
                    "action": "Install", "version": "0.1.0", "result": "Failed",
                    "time": k8s_openapi::jiff::Timestamp::now().to_string(),
                }],
            });
            stored.respond_json(fresh);
            // No Helm and no write: the stored status already says it all.
            s
        },
    )
    .await;
    // The rest of the 10 s backoff after the first failure.
    let wait = requeue_seconds(&result.unwrap());
    assert!(wait > 5.0 && wait <= 10.0, "{wait}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn an_uninstall_backoff_is_a_wait_that_keeps_the_finalizer_not_an_error() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let mut deleting = pack_json(1, &[FINALIZER], false);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let deleting: Arc<Pack> = Arc::new(serde_json::from_value(deleting.clone()).unwrap());
    let stored = {
        let mut p = serde_json::to_value(deleting.as_ref()).unwrap();
        // The last `helm uninstall` failed a moment ago.
        p["status"] = json!({
            "observedGeneration": 1,
            "state": "RemoveFailed",
            "failures": 1,
            "history": [{
                "action": "Uninstall", "result": "Failed",
                "time": k8s_openapi::jiff::Timestamp::now().to_string(),
            }],
        });
        p
    };
    let result = reconcile_with(deleting, ctx.clone(), server, |mut s| async move {
        let releases = s.next().await;
        releases.assert("GET", "/api/v1/namespaces/apps/secrets");
        releases.respond_json(json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": "9"},
            "items": [{"metadata": {"name": "sh.helm.release.v1.web.v1", "namespace": "apps", "labels": {
                "owner": "helm", "name": "web", "version": "1", "status": "deployed",
                "pack-operator.k8s.kubit.ir/pack": "web",
            }}}],
        }));
        let get = s.next().await;
        get.assert("GET", PACK);
        get.respond_json(stored.clone());
        // No helm uninstall, no status write, and above all no finalizer removal.
        s
    })
    .await;
    let wait = requeue_seconds(&result.expect("a wait is not an error"));
    assert!(wait > 5.0 && wait <= 10.0, "{wait}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn pack_with_values_from() -> Arc<Pack> {
    let mut p = pack_json(1, &[FINALIZER], false);
    p["spec"]["valuesFrom"] = json!([
        {"kind": "Secret", "name": "db", "valuesKey": "password", "targetPath": "auth.password"},
        {"kind": "Secret", "name": "db", "valuesKey": "user", "targetPath": "auth.user"},
    ]);
    Arc::new(serde_json::from_value(p).unwrap())
}

fn answer_repository(repo: ApiRequest) {
    repo.assert(
        "GET",
        "/apis/k8s.kubit.ir/v1alpha1/clusterpackrepositories/packs",
    );
    repo.respond_json(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "ClusterPackRepository",
        "metadata": {"name": "packs", "generation": 1},
        "spec": {"url": URL},
    }));
}

#[tokio::test]
async fn a_missing_values_secret_is_reported_and_runs_nothing() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let result = reconcile_with(pack_with_values_from(), ctx.clone(), server, |mut s| async move {
        answer_repository(s.next().await);
        // Only the Secret the Pack names is read, in its namespace.
        let secret = s.next().await;
        secret.assert("GET", "/api/v1/namespaces/apps/secrets/db");
        secret.respond_status(404, "NotFound", "secrets \"db\" not found");
        let status = s.next().await;
        status.assert("PATCH", STATUS);
        let ready = ready_condition(&status);
        assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ValuesSourceNotFound")));
        let message = ready["message"].as_str().unwrap().to_owned();
        assert_eq!(message, "Secret `db` (spec.valuesFrom[0]) does not exist in namespace apps; create it, fix the name, or set `optional: true` on the entry");
        let mut stored = pack_json(1, &[FINALIZER], false);
        stored["status"] = status.body["status"].clone();
        status.respond_json(stored);
        let event = s.next().await;
        event.assert("POST", EVENTS);
        assert_eq!(event.body["reason"], "ValuesSourceNotFound");
        assert_eq!(event.body["note"].as_str(), Some(message.as_str()));
        event.echo();
        // No release read, no Helm: the Secret watch wakes the Pack when it appears.
        s
    })
    .await;
    assert!(result.is_ok(), "{result:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_values_secret_is_read_by_one_get_in_the_packs_namespace_before_the_release() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    let result = reconcile_with(
        pack_with_values_from(),
        ctx.clone(),
        server,
        |mut s| async move {
            answer_repository(s.next().await);
            let secret = s.next().await;
            secret.assert("GET", "/api/v1/namespaces/apps/secrets/db");
            secret.respond_json(json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "namespace": "apps", "uid": "s-1", "resourceVersion": "41"},
            // "hunter2hunter2", "app"
            "data": {"password": "aHVudGVyMmh1bnRlcjI=", "user": "YXBw"},
        }));
            // Both entries name `db`: it was read once; next comes the release.
            let releases = s.next().await;
            releases.assert("GET", "/api/v1/namespaces/apps/secrets");
            releases.respond_json(json!({
                "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                "metadata": {"resourceVersion": "9"}, "items": [],
            }));
            // An install is planned: decided again on the stored Pack, which has a newer spec (ends here,
            // before Helm).
            let stored = s.next().await;
            stored.assert("GET", PACK);
            stored.respond_json(pack_json(2, &[FINALIZER], false));
            s
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::requeue(WARM_UP));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_cached_pack_behind_this_processs_last_status_write_is_read_from_the_api_first() {
    let (client, server) = ApiServer::new();
    let (ctx, dir) = context(client);
    // This process last wrote a status with an install in its history; the cache still has none.
    let mut stored = pack_json(1, &[FINALIZER], true);
    stored["status"] = json!({
        "state": "Applied",
        "revision": 1,
        "history": [{
            "action": "Install", "version": "0.1.0", "result": "Succeeded", "revision": 1,
            "time": "2026-12-06T03:00:00Z",
        }],
    });
    let written: common::crd::PackStatus =
        serde_json::from_value(stored["status"].clone()).unwrap();
    ctx.written.record("apps/web", &Some(&written));
    let result = reconcile_with(
        pack(1, &[FINALIZER], true),
        ctx.clone(),
        server,
        |mut s| async move {
            let get = s.next().await;
            get.assert("GET", PACK);
            get.respond_json(stored.clone());
            // The status written next (suspended) starts from the stored one: the install stays in history.
            let status = s.next().await;
            status.assert("PATCH", STATUS);
            assert_eq!(
                status.body["status"]["history"][0]["action"], "Install",
                "{}",
                status.body
            );
            assert_eq!(status.body["status"]["revision"], 1, "{}", status.body);
            status.respond_json(pack_json(1, &[FINALIZER], true));
            s
        },
    )
    .await;
    assert_eq!(result.unwrap(), Action::await_change());
    std::fs::remove_dir_all(dir).unwrap();
}
