//! Kubernetes Events as the tests read them: the notes of the Events about one object with one reason,
//! and waiting (with a deadline that prints what was seen) for one to appear.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::{Api, Client, api::ListParams};

use crate::wait;

/// Deadline of [`wait_event`].
pub const EVENT_DEADLINE: Duration = Duration::from_secs(60);

/// (reason, note) of every Event about `object` in `ns`.
pub async fn events_of(client: &Client, ns: &str, object: &str) -> Vec<(String, String)> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default().fields(&format!("involvedObject.name={object}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

/// The notes of the Events about `object` with `reason`.
pub async fn events_for(client: &Client, ns: &str, object: &str, reason: &str) -> Vec<String> {
    events_of(client, ns, object)
        .await
        .into_iter()
        .filter(|(r, _)| r == reason)
        .map(|(_, note)| note)
        .collect()
}

/// Waits for an Event about `object` with `reason` whose note contains `contains`; returns the note.
pub async fn wait_event(
    client: &Client,
    ns: &str,
    object: &str,
    reason: &str,
    contains: &str,
) -> String {
    wait::until(
        &format!("Event {reason} on {object} containing {contains:?}"),
        EVENT_DEADLINE,
        Duration::from_millis(200),
        || async {
            let seen = events_of(client, ns, object).await;
            match seen
                .iter()
                .find(|(r, n)| r == reason && n.contains(contains))
            {
                Some((_, note)) => Ok(Some(note.clone())),
                None => Err(seen),
            }
        },
    )
    .await
}
