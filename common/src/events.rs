//! Kubernetes Events, published the same way by every controller: the note capped at the API's 1 KiB,
//! and a failure to publish logged, never fatal (an Event is a report, not the work).
//!
//! [`Recorder`] is kube-runtime's recorder with one difference that matters to the reader of
//! `kubectl describe`: the note is part of what makes two Events the same. kube-runtime (5.0) keys its
//! series by type, reason, action and object only, so within its 6-minute window a second Event of the same
//! reason with another note (`Upgraded 0.1.3 → 0.1.5` after `Upgraded 0.1.0 → 0.1.3`, a 403 after a 422)
//! only bumps the first Event's count and its note is never seen. Here the same note repeated is one Event
//! with a growing `series.count` (no Event storm on retries), and a new note is a new Event.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::runtime::events::EventType;
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::Reporter,
};
use tracing::warn;

/// Longest Event note kept (the API server refuses notes over 1 KiB).
pub const MAX_NOTE: usize = 1000;

/// How long a published Event is remembered: a repeat within this window raises its `series.count`
/// instead of creating another Event (kube-runtime's window).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What makes two Events the same Event (a series): everything the reader sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SeriesKey {
    type_: &'static str,
    reason: String,
    action: String,
    note: String,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

/// Publishes `events.k8s.io/v1` Events for one controller (see the module docs). Cheap to clone; clones
/// share the series memory.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    reporter: Reporter,
    recent: Arc<Mutex<HashMap<SeriesKey, (Instant, K8sEvent)>>>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            recent: Arc::default(),
        }
    }

    /// Creates the Event, or raises the count of the same Event published within the window.
    pub async fn publish(
        &self,
        type_: EventType,
        reason: &str,
        action: &str,
        note: &str,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let key = SeriesKey {
            type_: type_name(type_),
            reason: reason.to_owned(),
            action: action.to_owned(),
            note: note.to_owned(),
            kind: regarding.kind.clone(),
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            uid: regarding.uid.clone(),
        };
        let now = Instant::now();
        let earlier = {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.retain(|_, (at, _)| now.duration_since(*at) < SERIES_WINDOW);
            recent.get(&key).map(|(_, event)| event.clone())
        };
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        let event = match earlier {
            Some(mut event) => {
                event.series = Some(EventSeries {
                    count: event.series.as_ref().map_or(2, |s| s.count + 1),
                    last_observed_time: MicroTime(Timestamp::now()),
                });
                api.patch(
                    &event.metadata.name.clone().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(&event),
                )
                .await?;
                event
            }
            None => {
                let event = self.new_event(&key, regarding);
                api.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (now, event));
        Ok(())
    }

    fn new_event(&self, key: &SeriesKey, regarding: &ObjectReference) -> K8sEvent {
        let now = Timestamp::now();
        let controller = &self.reporter.controller;
        K8sEvent {
            action: Some(key.action.clone()),
            reason: Some(key.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            note: Some(key.note.clone()),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(key.type_.to_owned()),
            ..Default::default()
        }
    }
}

fn type_name(type_: EventType) -> &'static str {
    match type_ {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// Publishes an Event about `regarding`.
pub async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let note = truncate(note, MAX_NOTE);
    if let Err(e) = recorder
        .publish(type_, reason, action, &note, regarding)
        .await
    {
        warn!(error = %e, reason, "cannot publish Event");
    }
}

/// `text` cut to at most `max` bytes on a character boundary, ending with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, Request, Response};
    use kube::client::Body;
    use tower_test::mock;

    #[test]
    fn truncate_keeps_short_text_and_cuts_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        let cut = truncate(&"é".repeat(600), MAX_NOTE);
        assert!(cut.len() <= MAX_NOTE && cut.ends_with('…'), "{}", cut.len());
        assert_eq!(truncate("abcdef", 5), "ab…");
    }

    /// What the API server was asked: (method, path, the Event's note and series count).
    async fn serve(
        mut handle: mock::Handle<Request<Body>, Response<Body>>,
        requests: usize,
    ) -> Vec<(Method, String, String, Option<i32>)> {
        let mut seen = vec![];
        for _ in 0..requests {
            let (request, respond) = handle.next_request().await.expect("a request");
            let (parts, body) = request.into_parts();
            let body = body.collect_bytes().await.unwrap();
            let event: K8sEvent = serde_json::from_slice(&body).unwrap();
            seen.push((
                parts.method,
                parts.uri.path().to_owned(),
                event.note.clone().unwrap_or_default(),
                event.series.as_ref().map(|s| s.count),
            ));
            respond.send_response(Response::new(Body::from(body.to_vec())));
        }
        seen
    }

    #[tokio::test]
    async fn a_repeated_note_is_one_series_and_a_new_note_a_new_event() {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let recorder = Recorder::new(
            Client::new(service, "default"),
            Reporter {
                controller: "test-controller".into(),
                instance: None,
            },
        );
        let regarding = ObjectReference {
            kind: Some("Pack".into()),
            namespace: Some("apps".into()),
            name: Some("web".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let server = tokio::spawn(serve(handle, 4));
        for note in ["a 422", "a 422", "a 403", "a 422"] {
            recorder
                .publish(
                    EventType::Warning,
                    "KubernetesAPIError",
                    "Reconcile",
                    note,
                    &regarding,
                )
                .await
                .unwrap();
        }
        let seen = server.await.unwrap();
        let create = "/apis/events.k8s.io/v1/namespaces/apps/events";
        assert_eq!(seen[0], (Method::POST, create.into(), "a 422".into(), None));
        assert_eq!(seen[1].0, Method::PATCH);
        assert_eq!((seen[1].2.as_str(), seen[1].3), ("a 422", Some(2)));
        assert_eq!(seen[2], (Method::POST, create.into(), "a 403".into(), None));
        assert_eq!(seen[3].0, Method::PATCH);
        assert_eq!((seen[3].2.as_str(), seen[3].3), ("a 422", Some(3)));
        assert!(
            seen[1].1.starts_with(&format!("{create}/web.")),
            "{}",
            seen[1].1
        );
    }
}
