//! `kubectl pack reconcile|suspend|resume`: what the pack-controller honours, written with merge patches
//! (as `flux reconcile|suspend|resume`) under the field manager `kubectl-pack`:
//! - reconcile sets the `reconcile.k8s.kubit.ir/requestedAt` annotation to the current time and waits
//!   until `status.lastHandledReconcileAt` names it, then reports the Ready condition;
//! - suspend sets `spec.suspend: true`; resume removes `spec.suspend` (its default is false), so no
//!   field is left owned by this tool. A GitOps tool that owns `spec.suspend` sets it back on its next sync.

use std::time::{Duration, Instant};

use common::{conditions, crd::Pack};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use pack_controller::plan::REQUESTED_AT;
use serde_json::{Value, json};

const FIELD_MANAGER: &str = "kubectl-pack";
const POLL: Duration = Duration::from_millis(500);

/// How a requested reconcile ended.
#[derive(Debug)]
pub enum Outcome {
    /// Handled and Ready.
    Ready(String),
    /// Handled, not Ready: `REASON: message`.
    Failed(String),
    /// Not handled within the timeout; the Pack's Ready condition as it stands.
    TimedOut(String),
}

async fn merge(api: &Api<Pack>, name: &str, patch: Value) -> kube::Result<Pack> {
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Merge(patch),
    )
    .await
}

/// Sets `spec.suspend` (`true`) or removes it (`false`).
pub async fn set_suspend(api: &Api<Pack>, name: &str, suspend: bool) -> kube::Result<Pack> {
    let value = if suspend {
        Value::Bool(true)
    } else {
        Value::Null
    };
    merge(api, name, json!({"spec": {"suspend": value}})).await
}

fn ready(pack: &Pack) -> Option<&Condition> {
    pack.status
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
}

fn describe(c: Option<&Condition>) -> String {
    c.map_or_else(
        || "the Pack has no Ready condition yet".into(),
        |c| format!("{}: {}", c.reason, c.message),
    )
}

/// Requests a reconcile of `name` and waits up to `timeout` for the controller to handle it.
pub async fn reconcile(api: &Api<Pack>, name: &str, timeout: Duration) -> kube::Result<Outcome> {
    let requested = jiff::Timestamp::now().to_string();
    merge(
        api,
        name,
        json!({"metadata": {"annotations": {REQUESTED_AT: requested}}}),
    )
    .await?;
    let deadline = Instant::now() + timeout;
    loop {
        let pack = api.get(name).await?;
        let handled = pack
            .status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref());
        if handled == Some(requested.as_str()) {
            let c = ready(&pack);
            return Ok(if c.is_some_and(|c| c.status == "True") {
                Outcome::Ready(describe(c))
            } else {
                Outcome::Failed(describe(c))
            });
        }
        if Instant::now() >= deadline {
            return Ok(Outcome::TimedOut(describe(ready(&pack))));
        }
        tokio::time::sleep(POLL).await;
    }
}
