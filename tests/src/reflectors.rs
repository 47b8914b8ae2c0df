//! What the SecretReflector and ConfigMapReflector e2e tests share: starting the reflector-controller
//! for one test namespace, reading a reflector of either kind and waiting for its status, and its metrics.

use std::time::Duration;

use common::crd::{ConfigMapReflector, ReflectorStatus, SecretReflector};
use kube::{Api, Client, core::NamespaceResourceScope};
use serde::de::DeserializeOwned;

use crate::{
    TestEnv,
    controller::{ControllerProcess, parse_sample},
    wait,
};

pub const WAIT: Duration = Duration::from_secs(30);
pub const POLL: Duration = Duration::from_millis(100);

/// A reflector custom resource: SecretReflector or ConfigMapReflector (same status).
pub trait Reflector:
    kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
{
    fn reflector_status(&self) -> Option<&ReflectorStatus>;
}

impl Reflector for SecretReflector {
    fn reflector_status(&self) -> Option<&ReflectorStatus> {
        self.status.as_ref()
    }
}

impl Reflector for ConfigMapReflector {
    fn reflector_status(&self) -> Option<&ReflectorStatus> {
        self.status.as_ref()
    }
}

/// Starts reflector-controller for the reflectors and namespaces of test namespace `ns`, with its Lease
/// `lease` there, short leader-election timings, then `extra` flags.
pub fn start_controller(
    env: &TestEnv,
    ns: &str,
    lease: &str,
    extra: &[String],
) -> ControllerProcess {
    let mut args = vec![
        format!("--namespace={ns}"),
        format!("--lease-namespace={ns}"),
        format!("--lease-name={lease}"),
        "--lease-duration=3s".to_owned(),
        "--renew-deadline=2s".to_owned(),
        "--retry-period=500ms".to_owned(),
    ];
    args.extend(extra.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControllerProcess::start(env, "reflector-controller", ns, &args)
        .expect("start reflector-controller")
}

pub async fn get_reflector<K: Reflector>(client: &Client, ns: &str, name: &str) -> Option<K> {
    Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

/// Target states as `namespace=State` strings, the summary, and Ready's status/reason.
pub fn describe<K: Reflector>(r: &K) -> (Vec<String>, String, String) {
    let status = r.reflector_status().cloned().unwrap_or_default();
    let targets = status
        .targets
        .iter()
        .map(|t| format!("{}={}", t.namespace, t.state))
        .collect();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("{}/{}", c.status, c.reason))
        .unwrap_or_default();
    (targets, status.summary.unwrap_or_default(), ready)
}

/// Waits until the status lists exactly `targets` (sorted `namespace=State`), `summary` and Ready
/// `status/reason`.
pub async fn wait_status<K: Reflector>(
    client: &Client,
    ns: &str,
    name: &str,
    targets: &[String],
    summary: &str,
    ready: &str,
) -> K {
    let mut want_targets = targets.to_vec();
    want_targets.sort();
    wait::until(
        &format!("status of {name}: {want_targets:?} {summary} Ready={ready}"),
        WAIT,
        POLL,
        || async {
            let Some(r) = get_reflector::<K>(client, ns, name).await else {
                return Err((vec!["gone".to_owned()], String::new(), String::new()));
            };
            let seen = describe(&r);
            if seen.0 == want_targets && seen.1 == summary && seen.2 == ready {
                Ok(Some(r))
            } else {
                Err(seen)
            }
        },
    )
    .await
}

/// `namespace=State`, as [`describe`] lists targets.
pub fn state(ns: &str, state: &str) -> String {
    format!("{ns}={state}")
}

/// The value of `pack_operator_<sample>` on the controller's /metrics (0 when absent).
pub async fn metric(controller: &ControllerProcess, sample: &str) -> f64 {
    let (_, body) = controller.get("/metrics").await.unwrap();
    parse_sample(&body, &format!("pack_operator_{sample}")).unwrap_or(0.0)
}

pub async fn wait_metric(controller: &ControllerProcess, sample: &str, want: f64) {
    wait::until(&format!("{sample} = {want}"), WAIT, POLL, || async {
        match metric(controller, sample).await {
            v if v == want => Ok(Some(())),
            v => Err(v),
        }
    })
    .await
}
