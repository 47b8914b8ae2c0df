//! Reconciles against a mocked API server ([`ApiServer`]): each test plays the API server's side and
//! asserts the exact requests one reconcile sends, in order, and nothing more.

use super::*;
use common::{
    crd::{
        SecretReflector,
        reflector::{SecretReflectorSpec, SourceReference, Targets},
    },
    testing::{ApiRequest, ApiServer},
};
use k8s_openapi::{
    ByteString,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use kube::{
    core::PartialObjectMetaExt,
    runtime::{events::Reporter, reflector, watcher},
};
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::{copy::REFLECTOR_ANNOTATION, metrics::ReflectorMetrics, targets::TargetPolicy};
use k8s_openapi::api::core::v1::Secret;

const SOURCE: &str = "/api/v1/namespaces/certs/secrets/src";
const COPY: &str = "/api/v1/namespaces/apps/secrets/src";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/certs/events";
const STATUS: &str = "/apis/k8s.kubit.ir/v1alpha1/namespaces/certs/secretreflectors/mirror/status";
const RESYNC: Duration = Duration::from_secs(300);

/// SecretReflector `certs/mirror` copying Secret `src` into namespace `apps`, its finalizer in place.
fn mirror() -> SecretReflector {
    let mut r = SecretReflector::new(
        "mirror",
        SecretReflectorSpec {
            source: SourceReference { name: "src".into() },
            targets: Targets {
                namespaces: vec!["apps".into()],
                ..Default::default()
            },
            target_name: None,
        },
    );
    r.metadata = ObjectMeta {
        name: Some("mirror".into()),
        namespace: Some("certs".into()),
        uid: Some("uid-mirror".into()),
        generation: Some(1),
        creation_timestamp: Some(Time(Timestamp::UNIX_EPOCH)),
        finalizers: Some(vec![FINALIZER.into()]),
        ..Default::default()
    };
    r
}

fn source() -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some("src".into()),
            namespace: Some("certs".into()),
            resource_version: Some("7".into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            "token".to_owned(),
            ByteString(b"s3cret".to_vec()),
        )])),
        ..Default::default()
    }
}

/// A Context over `client` whose caches hold namespaces `certs` and `apps`, no copies and no other
/// SecretReflector.
fn context(client: Client) -> Context<Secret> {
    let (namespaces, mut writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    for name in ["certs", "apps"] {
        let ns = ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        }
        .into_response_partial::<Namespace>();
        writer.apply_watcher_event(&watcher::Event::Apply(ns));
    }
    let mut registry = Registry::default();
    Context {
        client: client.clone(),
        settings: Settings {
            policy: TargetPolicy::default(),
            concurrency: 2,
            resync: RESYNC,
        },
        recorder: Recorder::new(
            client,
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: None,
            },
        ),
        metrics: ReflectorMetrics::register(&mut registry).for_kind("secret"),
        reconciles: ReconcileMetrics::register(&mut registry, "reflector"),
        namespaces,
        copies: reflector::store().0,
        reflectors: reflector::store().0,
        wake: mpsc::unbounded().0,
        conflicts: Mutex::default(),
        reported: Mutex::default(),
    }
}

/// Answers an Event create and returns (type, reason, note).
fn event(request: ApiRequest) -> (String, String, String) {
    request.assert("POST", EVENTS);
    let field = |k: &str| request.body[k].as_str().unwrap_or_default().to_owned();
    let seen = (field("type"), field("reason"), field("note"));
    request.echo();
    seen
}

/// Asserts a server-side apply of the status by our field manager, answers it and returns the status.
fn status_patch(request: ApiRequest) -> serde_json::Value {
    request.assert("PATCH", STATUS);
    assert!(
        request.query.contains("fieldManager=reflector-controller")
            && request.query.contains("force=true"),
        "{}",
        request.query
    );
    let status = request.body["status"].clone();
    let mut stored = serde_json::to_value(mirror()).unwrap();
    stored["status"] = status.clone();
    request.respond_json(stored);
    status
}

fn ready(status: &serde_json::Value) -> (String, String) {
    let conditions = status["conditions"].as_array().expect("conditions");
    let ready = conditions
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("a Ready condition");
    (
        ready["status"].as_str().unwrap().to_owned(),
        ready["reason"].as_str().unwrap().to_owned(),
    )
}

/// Asserts the POST of the copy of `src` into `apps`, marked as made by `certs/mirror`.
fn assert_copy_create(request: &ApiRequest) {
    request.assert("POST", "/api/v1/namespaces/apps/secrets");
    assert!(request.query.contains("fieldManager=reflector-controller"));
    assert_eq!(request.body["metadata"]["name"], "src");
    assert_eq!(
        request.body["metadata"]["annotations"][REFLECTOR_ANNOTATION],
        "certs/mirror"
    );
    assert_eq!(request.body["data"]["token"], json!("czNjcmV0"));
}

/// The cache did not know the Secret at the target: the create is refused with 409, the reconcile reads
/// the live Secret, finds it is not a copy, leaves it alone and reports a Conflict (Event and status);
/// the reconcile itself succeeds and waits for the resync, not for the error retry.
#[tokio::test]
async fn a_copy_write_refused_with_409_by_a_foreign_secret_is_reported_as_a_conflict() {
    let (client, mut server) = ApiServer::new();
    let ctx = Arc::new(context(client));
    let api = tokio::spawn(async move {
        let get = server.next().await;
        get.assert("GET", SOURCE);
        get.respond_json(serde_json::to_value(source()).unwrap());

        let create = server.next().await;
        assert_copy_create(&create);
        create.respond_status(409, "AlreadyExists", "secrets \"src\" already exists");

        let live = server.next().await;
        live.assert("GET", COPY);
        let foreign = Secret {
            metadata: ObjectMeta {
                name: Some("src".into()),
                namespace: Some("apps".into()),
                resource_version: Some("3".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        live.respond_json(serde_json::to_value(foreign).unwrap());

        let (type_, reason, note) = event(server.next().await);
        assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "Conflict"));
        assert_eq!(
            note,
            "apps: Secret src exists and is not managed by a SecretReflector; left untouched"
        );

        let status = status_patch(server.next().await);
        assert_eq!(ready(&status), ("False".into(), "Conflict".into()));
        assert_eq!(
            status["targets"],
            json!([{
                "namespace": "apps",
                "state": "Conflict",
                "message": "Secret src exists and is not managed by a SecretReflector; left untouched",
            }])
        );
        server
    });
    let action = reconcile(Arc::new(mirror()), ctx.clone()).await.unwrap();
    api.await.unwrap().done();
    assert_ne!(action, Action::requeue(RETRY), "a conflict is not retried");
    assert_eq!(
        lock(&ctx.conflicts).get(&key_of(&mirror())),
        Some(&1),
        "counted in the conflicts gauge"
    );
}

/// The create is refused with 409 but the live Secret is gone again by the time it is read: the
/// reconcile creates once more, is refused again, and reports the target as an Error with the API
/// server's message, to be retried soon.
#[tokio::test]
async fn a_copy_write_refused_with_409_twice_is_an_error_retried_soon() {
    let (client, mut server) = ApiServer::new();
    let ctx = Arc::new(context(client));
    let api = tokio::spawn(async move {
        let get = server.next().await;
        get.assert("GET", SOURCE);
        get.respond_json(serde_json::to_value(source()).unwrap());
        for attempt in 0..2 {
            let create = server.next().await;
            assert_copy_create(&create);
            create.respond_status(409, "AlreadyExists", "secrets \"src\" already exists");
            if attempt == 0 {
                let live = server.next().await;
                live.assert("GET", COPY);
                live.respond_status(404, "NotFound", "secrets \"src\" not found");
            }
        }
        let (type_, reason, note) = event(server.next().await);
        assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "Error"));
        assert_eq!(note, "apps: secrets \"src\" already exists (AlreadyExists)");

        let status = status_patch(server.next().await);
        assert_eq!(ready(&status), ("False".into(), "Error".into()));
        assert_eq!(status["targets"][0]["state"], "Error");
        server
    });
    let action = reconcile(Arc::new(mirror()), ctx).await.unwrap();
    api.await.unwrap().done();
    assert_eq!(action, Action::requeue(RETRY));
}

/// No source: nothing is written anywhere; the status says SourceNotFound, with one Warning Event.
#[tokio::test]
async fn a_missing_source_is_reported_and_nothing_is_copied() {
    let (client, mut server) = ApiServer::new();
    let ctx = Arc::new(context(client));
    let api = tokio::spawn(async move {
        let get = server.next().await;
        get.assert("GET", SOURCE);
        get.respond_status(404, "NotFound", "secrets \"src\" not found");

        let (type_, reason, note) = event(server.next().await);
        assert_eq!(
            (type_.as_str(), reason.as_str()),
            ("Warning", "SourceNotFound")
        );
        assert_eq!(
            note,
            "Secret certs/src not found; copies are removed until it exists again"
        );
        let status = status_patch(server.next().await);
        assert_eq!(ready(&status), ("False".into(), "SourceNotFound".into()));
        server
    });
    let action = reconcile(Arc::new(mirror()), ctx).await.unwrap();
    api.await.unwrap().done();
    assert_ne!(action, Action::requeue(RETRY));
}
