//! Fixtures for Pack tests: a Helm repository of the test chart `tests/charts/genpack`, packaged and
//! indexed by the real helm CLI and served over HTTP on loopback; ClusterPackRepositories removed when a
//! test ends; pack-controller started with the pinned helm.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, Uri},
    response::IntoResponse,
};
use common::crd::{
    ClusterPackRepository, Pack, pack::PackState, repository::ClusterPackRepositoryStatus,
};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::json;

use crate::{
    TestEnv,
    controller::ControllerProcess,
    tools::{tool, workspace_root},
};

/// A directory served over HTTP; `broken` makes every request answer 404.
pub struct ChartServer {
    pub dir: PathBuf,
    pub url: String,
    pub broken: Arc<AtomicBool>,
}

#[derive(Clone)]
struct Served {
    dir: PathBuf,
    broken: Arc<AtomicBool>,
}

async fn serve_file(State(s): State<Served>, uri: Uri) -> impl IntoResponse {
    let name = uri.path().trim_start_matches('/');
    if s.broken.load(Ordering::SeqCst) || name.is_empty() || name.contains("..") {
        return (StatusCode::NOT_FOUND, Vec::new());
    }
    match tokio::fs::read(s.dir.join(name)).await {
        Ok(bytes) => (StatusCode::OK, bytes),
        Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
    }
}

impl ChartServer {
    /// A fresh repository for test namespace `ns`, with `versions` of genpack packaged and indexed by the
    /// real helm CLI, served on loopback. Its directory is removed when the server is dropped.
    pub async fn with_versions(ns: &str, versions: &[&str]) -> Self {
        let root = std::env::temp_dir().join(format!("pack-operator-e2e-{ns}"));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("repo");
        std::fs::create_dir_all(&dir).unwrap();
        for v in versions {
            publish(&dir, v);
        }
        Self::start(dir).await
    }

    pub async fn start(dir: PathBuf) -> Self {
        let broken = Arc::new(AtomicBool::new(false));
        let app = Router::new().fallback(serve_file).with_state(Served {
            dir: dir.clone(),
            broken: broken.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ChartServer { dir, url, broken }
    }
}

impl Drop for ChartServer {
    fn drop(&mut self) {
        if let Some(root) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

/// Runs the pinned helm with its homes under `home`; panics with helm's stderr when it fails.
pub fn helm(args: &[&str], home: &Path) -> String {
    let out = std::process::Command::new(tool("helm").expect("helm"))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Packages genpack at `version` into `dir` and re-indexes `dir`.
pub fn publish(dir: &Path, version: &str) {
    let chart = workspace_root().join("tests/charts/genpack");
    let d = dir.to_str().unwrap();
    helm(
        &[
            "package",
            chart.to_str().unwrap(),
            "--version",
            version,
            "--destination",
            d,
        ],
        dir.parent().unwrap(),
    );
    helm(&["repo", "index", d], dir.parent().unwrap());
}

/// The work directory [`start_pack_controller`] gives the controller `identity` of namespace `ns`.
pub fn pack_work_dir(ns: &str, identity: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pack-operator-e2e-work-{ns}-{identity}"))
}

/// Starts pack-controller for Packs of namespace `ns` only, with the pinned helm, a work directory of its
/// own ([`pack_work_dir`]), and `extra` flags; an `extra` `--flag=value` replaces the default of that
/// flag (e.g. `--log-level=debug`, `--helm-binary=...`).
pub fn start_pack_controller(
    env: &TestEnv,
    ns: &str,
    identity: &str,
    extra: &[&str],
) -> ControllerProcess {
    let work = pack_work_dir(ns, identity);
    let defaults = [
        format!("--namespace={ns}"),
        format!("--lease-namespace={ns}"),
        "--lease-name=pack".to_owned(),
        "--lease-duration=3s".to_owned(),
        "--renew-deadline=2s".to_owned(),
        "--retry-period=500ms".to_owned(),
        "--log-level=info,pack_controller=debug".to_owned(),
        format!("--helm-binary={}", tool("helm").expect("helm").display()),
        format!("--work-dir={}", work.display()),
    ];
    let flag = |arg: &str| arg.split('=').next().unwrap_or(arg).to_owned();
    let overridden: Vec<String> = extra.iter().map(|a| flag(a)).collect();
    let mut args: Vec<String> = defaults
        .into_iter()
        .filter(|d| !overridden.contains(&flag(d)))
        .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControllerProcess::start(env, "pack-controller", identity, &args)
        .expect("start pack-controller")
}

pub async fn create_repository(client: &Client, name: &str, url: &str) {
    create_repository_with_interval(client, name, url, "2s").await;
}

/// Creates ClusterPackRepository `name` for `url`, refreshed every `interval`.
pub async fn create_repository_with_interval(
    client: &Client,
    name: &str,
    url: &str,
    interval: &str,
) {
    let repo: ClusterPackRepository = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "ClusterPackRepository",
        "metadata": { "name": name },
        "spec": { "url": url, "interval": interval },
    }))
    .unwrap();
    Api::<ClusterPackRepository>::all(client.clone())
        .create(&PostParams::default(), &repo)
        .await
        .unwrap();
}

/// A served repository of genpack and ClusterPackRepository `name` for it (refreshed every 2 s): the
/// server's directory is removed and the repository deleted when dropped.
pub struct ServedRepository {
    pub server: ChartServer,
    pub name: String,
    _guard: RepositoriesGuard,
}

/// Serves genpack at `versions` for test namespace `ns` ([`ChartServer::with_versions`]) and creates
/// ClusterPackRepository `name` for it.
pub async fn served_repository(
    client: &Client,
    ns: &str,
    name: &str,
    versions: &[&str],
) -> ServedRepository {
    let server = ChartServer::with_versions(ns, versions).await;
    let guard = RepositoriesGuard {
        client: client.clone(),
        names: vec![name.to_owned()],
    };
    create_repository(client, name, &server.url).await;
    ServedRepository {
        server,
        name: name.to_owned(),
        _guard: guard,
    }
}

/// Creates Pack `ns/name` of genpack from ClusterPackRepository `repo`: `version` the constraint
/// (None: the highest stable), `values` its values (`null`: none).
pub async fn create_genpack_pack(
    client: &Client,
    ns: &str,
    name: &str,
    repo: &str,
    version: Option<&str>,
    values: serde_json::Value,
) {
    let mut spec = json!({ "chart": {
        "repository": { "kind": "ClusterPackRepository", "name": repo },
        "name": "genpack",
    } });
    if let Some(version) = version {
        spec["chart"]["version"] = json!(version);
    }
    if !values.is_null() {
        spec["values"] = values;
    }
    let pack: Pack = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "Pack",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap();
    Api::<Pack>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pack)
        .await
        .unwrap();
}

/// How long [`wait_pack`] and [`wait_repository`] wait, and how often they look.
const WAIT: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(250);

/// What a test waits for on a Pack; a field left `None` matches anything.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Want<'a> {
    /// The Ready condition's reason.
    pub reason: Option<&'a str>,
    pub state: Option<PackState>,
    /// `status.version`.
    pub version: Option<&'a str>,
    /// `status.revision`.
    pub revision: Option<i64>,
    /// The Ready condition's status (`True`/`False`/`Unknown`).
    pub status: Option<&'a str>,
    /// The Ready condition observed the Pack's current `metadata.generation`.
    pub current: bool,
}

impl<'a> Want<'a> {
    /// A Ready condition of `reason`.
    pub fn reason(reason: &'a str) -> Self {
        Self {
            reason: Some(reason),
            ..Self::default()
        }
    }

    /// Ready with reason `Applied` at chart `version`.
    pub fn applied(version: &'a str) -> Self {
        Self::reason("Applied").version(version)
    }

    pub fn version(self, version: &'a str) -> Self {
        Self {
            version: Some(version),
            ..self
        }
    }

    pub fn state(self, state: PackState) -> Self {
        Self {
            state: Some(state),
            ..self
        }
    }

    pub fn revision(self, revision: i64) -> Self {
        Self {
            revision: Some(revision),
            ..self
        }
    }

    pub fn status(self, status: &'a str) -> Self {
        Self {
            status: Some(status),
            ..self
        }
    }

    /// The Ready condition must be for the Pack's current generation.
    pub fn current(self) -> Self {
        Self {
            current: true,
            ..self
        }
    }

    /// Whether `pack` is what is wanted.
    pub fn matches(&self, pack: &Pack) -> bool {
        let Some(status) = &pack.status else {
            return *self == Self::default();
        };
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        self.reason
            .is_none_or(|r| ready.is_some_and(|c| c.reason == r))
            && self
                .status
                .is_none_or(|s| ready.is_some_and(|c| c.status == s))
            && (!self.current
                || ready.is_some_and(|c| c.observed_generation == pack.metadata.generation))
            && self.state.is_none_or(|s| status.state == Some(s))
            && self
                .version
                .is_none_or(|v| status.version.as_deref() == Some(v))
            && self.revision.is_none_or(|r| status.revision == Some(r))
    }
}

/// The Ready condition's message of `pack` (empty without one).
pub fn ready_message(pack: &Pack) -> String {
    pack.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Waits until Pack `name` matches `want` and returns it. A timeout's panic shows the Pack's state,
/// Ready condition, version and revision, and the last lines of `controller`'s log when given.
pub async fn wait_pack(
    packs: &Api<Pack>,
    name: &str,
    want: Want<'_>,
    controller: Option<&ControllerProcess>,
) -> Pack {
    crate::wait::until(&format!("Pack {name}: {want:?}"), WAIT, EVERY, || async {
        let pack = packs.get(name).await.map_err(|e| e.to_string())?;
        if want.matches(&pack) {
            return Ok(Some(pack));
        }
        Err(format!(
            "{}{}",
            seen(&pack),
            controller
                .map(|c| log_tail(&c.logs(), 8))
                .unwrap_or_default()
        ))
    })
    .await
}

/// Asserts that Pack `name` matches `want` all through `period`.
pub async fn pack_holds(packs: &Api<Pack>, name: &str, want: Want<'_>, period: Duration) {
    crate::wait::holds(&format!("Pack {name}: {want:?}"), period, EVERY, || async {
        let pack = packs.get(name).await.map_err(|e| e.to_string())?;
        if want.matches(&pack) {
            Ok(())
        } else {
            Err(seen(&pack))
        }
    })
    .await;
}

/// What a failed wait saw of `pack`: state, Ready condition, version, revision and generations.
fn seen(pack: &Pack) -> String {
    let status = pack.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    format!(
        "state {:?}, ready {:?}, version {:?}, revision {:?}, generation {:?}",
        status.state,
        ready.map(|c| (&c.status, &c.reason, &c.message, c.observed_generation)),
        status.version,
        status.revision,
        pack.metadata.generation,
    )
}

/// Waits until ClusterPackRepository `name`'s Ready condition is `status` (with `reason`, when given)
/// and returns that condition's message with the repository's status.
pub async fn wait_repository(
    repos: &Api<ClusterPackRepository>,
    name: &str,
    status: &str,
    reason: Option<&str>,
    controller: Option<&ControllerProcess>,
) -> (String, ClusterPackRepositoryStatus) {
    crate::wait::until(
        &format!("repository {name} Ready={status} {reason:?}"),
        WAIT,
        EVERY,
        || async {
            let s = repos
                .get(name)
                .await
                .map_err(|e| e.to_string())?
                .status
                .unwrap_or_default();
            match s.conditions.iter().find(|c| c.type_ == "Ready") {
                Some(c) if c.status == status && reason.is_none_or(|r| c.reason == r) => {
                    Ok(Some((c.message.clone(), s.clone())))
                }
                other => Err(format!(
                    "{other:?}{}",
                    controller
                        .map(|c| log_tail(&c.logs(), 8))
                        .unwrap_or_default()
                )),
            }
        },
    )
    .await
}

/// The last `lines` lines of `log`, on lines of their own after a heading.
fn log_tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    format!(
        "\ncontroller log tail:\n{}",
        all[all.len().saturating_sub(lines)..].join("\n")
    )
}

/// Deletes the cluster-scoped repositories of a test, pass or fail.
pub struct RepositoriesGuard {
    pub client: Client,
    pub names: Vec<String>,
}

impl Drop for RepositoriesGuard {
    /// Needs a multi-thread test runtime: `client`'s worker lives on the test's runtime, which is blocked
    /// while this runs (on a current-thread runtime the deletion would wait forever).
    fn drop(&mut self) {
        let client = self.client.clone();
        let names = std::mem::take(&mut self.names);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let api = Api::<ClusterPackRepository>::all(client);
                for n in names {
                    let _ = api.delete(&n, &DeleteParams::default()).await;
                }
            });
        })
        .join();
    }
}

/// Helm processes a pack-controller ran (any operation, any result), from its metrics. Panics when the
/// metrics cannot be read: a count of 0 would make "no helm ran" pass whatever happened.
pub async fn helm_operations(controller: &ControllerProcess) -> f64 {
    let body = match controller.get("/metrics").await {
        Ok((200, body)) => body,
        other => panic!(
            "cannot read the metrics of {} ({}): {other:?}",
            controller.name, controller.identity
        ),
    };
    helm_operations_in(&body)
}

/// Sum of the `pack_operator_helm_operations_total` samples of an exposition.
fn helm_operations_in(body: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with("pack_operator_helm_operations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Requests the API server has served so far (`apiserver_request_total`, WATCH not counted), by
/// "VERB resource[/subresource]", for the given resources only. Read from the API server's own
/// `/metrics`, so it counts every client: use it on a control plane where the controller under test is
/// the only client of these resources.
pub async fn apiserver_requests(
    client: &Client,
    resources: &[&str],
) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let body = client.request_text(request).await?;
    Ok(apiserver_requests_in(&body, resources))
}

fn apiserver_requests_in(
    body: &str,
    resources: &[&str],
) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
            continue;
        };
        if verb == "WATCH" || !resources.contains(&resource.as_str()) {
            continue;
        }
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        // `resource.group` as kubectl spells it: core `events` (kube-controller-manager's recorder) and
        // `events.events.k8s.io` (kube-runtime's, the controllers') are then told apart.
        let resource = match label("group").filter(|g| !g.is_empty()) {
            Some(group) => format!("{resource}.{group}"),
            None => resource,
        };
        let key = match label("subresource").filter(|s| !s.is_empty()) {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        *out.entry(key).or_insert(0.0) += n;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_helm_operations_and_api_requests() {
        let body = "# TYPE pack_operator_helm_operations_total counter\n\
            pack_operator_helm_operations_total{operation=\"install\",result=\"success\"} 2\n\
            pack_operator_helm_operations_total{operation=\"upgrade\",result=\"failure\"} 1\n\
            pack_operator_helm_operation_duration_seconds_count{operation=\"install\"} 2\n";
        assert_eq!(helm_operations_in(body), 3.0);
        let api = "apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"\",resource=\"secrets\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 4\n\
            apiserver_request_total{code=\"404\",component=\"apiserver\",group=\"\",resource=\"secrets\",scope=\"namespace\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 1\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"k8s.kubit.ir\",resource=\"packs\",scope=\"namespace\",subresource=\"status\",verb=\"APPLY\",version=\"v1alpha1\"} 3\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"\",resource=\"secrets\",scope=\"cluster\",subresource=\"\",verb=\"WATCH\",version=\"v1\"} 9\n\
            apiserver_request_total{code=\"200\",component=\"apiserver\",group=\"\",resource=\"pods\",scope=\"cluster\",subresource=\"\",verb=\"LIST\",version=\"v1\"} 7\n";
        let got = apiserver_requests_in(api, &["secrets", "packs"]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["LIST secrets"], 5.0);
        assert_eq!(got["APPLY packs.k8s.kubit.ir/status"], 3.0);
    }

    fn pack(generation: i64, observed: i64, status: &str, reason: &str) -> Pack {
        serde_json::from_value(json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
            "metadata": {"name": "app", "generation": generation},
            "spec": {"chart": {
                "repository": {"kind": "ClusterPackRepository", "name": "r"},
                "name": "genpack",
            }},
            "status": {
                "state": "Applied", "version": "0.1.0", "revision": 1,
                "conditions": [{
                    "type": "Ready", "status": status, "reason": reason, "message": "",
                    "observedGeneration": observed, "lastTransitionTime": "2026-12-05T00:00:00Z",
                }],
            },
        }))
        .unwrap()
    }

    #[test]
    fn want_matches_every_field_it_names_and_ignores_the_others() {
        let p = pack(2, 2, "True", "Applied");
        assert!(Want::default().matches(&p));
        assert!(
            Want::applied("0.1.0")
                .state(PackState::Applied)
                .revision(1)
                .matches(&p)
        );
        assert!(Want::reason("Applied").status("True").current().matches(&p));
        assert!(!Want::applied("0.2.0").matches(&p));
        assert!(!Want::reason("Applied").status("False").matches(&p));
        assert!(!Want::default().revision(2).matches(&p));
        // A Ready condition of an older generation is not current.
        let stale = pack(3, 2, "True", "Applied");
        assert!(Want::reason("Applied").matches(&stale));
        assert!(!Want::reason("Applied").current().matches(&stale));
        // No status at all: only the empty want matches.
        let mut bare = p.clone();
        bare.status = None;
        assert!(Want::default().matches(&bare));
        assert!(!Want::default().current().matches(&bare));
    }
}
