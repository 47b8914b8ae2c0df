//! A real local control plane: etcd + kube-apiserver + kube-controller-manager on free loopback ports,
//! a static admin token, a ServiceAccount signing key (so ServiceAccount tokens and RBAC work), and the
//! apiserver's own self-signed serving certificate as the kubeconfig's CA.

#![allow(unsafe_code)] // pre_exec: tie each child's life to the supervisor (PR_SET_PDEATHSIG).

use std::{
    fs,
    net::TcpListener,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::{
    api::core::v1::{Namespace, ServiceAccount},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::tools;

/// The processes of a running control plane. Dropping it stops them.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_port: u16,
    children: Vec<(&'static str, Child)>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager with state under `dir`, waits until the
    /// API answers and the controller manager works, and installs the project's CRDs.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, true).await
    }

    /// As [`ControlPlane::start`], without installing the project's CRDs: an empty cluster, e.g. to
    /// install the Helm chart into.
    pub async fn start_without_crds(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, false).await
    }

    /// Starts the control plane; when a process lost the race for a port (another process bound it
    /// between [`free_port`] and the process's own bind), starts again on new ports, up to 3 times.
    async fn start_with(dir: &Path, with_crds: bool) -> anyhow::Result<Self> {
        let mut attempt = 1;
        loop {
            match Self::try_start(dir, with_crds).await {
                Ok(plane) => return Ok(plane),
                Err(e) if attempt < 3 && logs_show_port_clash(&dir.join("logs")) => {
                    eprintln!(
                        "control plane lost a port race ({e:#}); starting again on new ports"
                    );
                    let _ = fs::remove_dir_all(dir.join("pki"));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn try_start(dir: &Path, with_crds: bool) -> anyhow::Result<Self> {
        let bin = tools::tools_dir()?;
        fs::create_dir_all(dir.join("logs"))?;
        fs::create_dir_all(dir.join("pki"))?;
        let dir = dir.canonicalize()?;
        let started = Instant::now();

        let token = random_token();
        fs::write(
            dir.join("tokens.csv"),
            format!("{token},admin,admin,\"system:masters\"\n"),
        )?;
        let sa_key = rcgen::KeyPair::generate()?; // ECDSA P-256; the apiserver signs tokens with ES256
        write_private(&dir.join("sa.key"), sa_key.serialize_pem().as_bytes())?;
        fs::write(dir.join("sa.pub"), sa_key.public_key_pem())?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let api_port = free_port()?;
        let mut plane = ControlPlane {
            dir: dir.clone(),
            kubeconfig: dir.join("kubeconfig"),
            api_port,
            children: vec![],
        };

        let etcd_data = dir.join("etcd-data");
        let _ = fs::remove_dir_all(&etcd_data);
        plane.spawn(
            "etcd",
            Command::new(bin.join("etcd")).args([
                "--name=default",
                &format!("--data-dir={}", etcd_data.display()),
                &format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                &format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                &format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"),
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]),
        )?;
        wait_http(
            &format!("http://127.0.0.1:{etcd_port}/health"),
            Duration::from_secs(30),
            &mut plane,
        )
        .await?;

        let pki = dir.join("pki");
        let sa = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        plane.spawn(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver")).args([
                &format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={api_port}"),
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                &format!("--cert-dir={}", pki.display()),
                &format!("--token-auth-file={}", dir.join("tokens.csv").display()),
                &format!("--service-account-issuer=https://127.0.0.1:{api_port}"),
                &format!("--service-account-key-file={}", sa_pub.display()),
                &format!("--service-account-signing-key-file={}", sa.display()),
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--v=1",
            ]),
        )?;

        // The serving certificate (leaf + self-signed CA) is written before the port opens.
        let ca = pki.join("apiserver.crt");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: pack-operator-test\n  cluster:\n    server: https://127.0.0.1:{api_port}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: pack-operator-test\n  context:\n    cluster: pack-operator-test\n    user: admin\n    namespace: default\ncurrent-context: pack-operator-test\n",
            ca.display()
        );
        write_private(&plane.kubeconfig, kubeconfig.as_bytes())?;
        let kubeconfig_path = plane.kubeconfig.clone();
        let client = wait_api(&kubeconfig_path, Duration::from_secs(90), &mut plane).await?;

        plane.spawn("kube-controller-manager", Command::new(bin.join("kube-controller-manager")).args([
            &format!("--kubeconfig={}", plane.kubeconfig.display()),
            "--leader-elect=false",
            "--controllers=deployment-controller,replicaset-controller,statefulset-controller,daemonset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--v=1",
        ]))?;
        // The serviceaccount controller creating `default/default` proves the controller manager runs.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        while sas.get_opt("default").await?.is_none() {
            plane.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "kube-controller-manager did not create default/default in 60s; see {}/logs",
                    dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        if with_crds {
            install_crds(&client, &tools::workspace_root().join("deploy/crds")).await?;
        }
        eprintln!(
            "control plane ready in {:.1}s: KUBECONFIG={}",
            started.elapsed().as_secs_f64(),
            plane.kubeconfig.display()
        );
        Ok(plane)
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> anyhow::Result<()> {
        let log = fs::File::create(self.dir.join("logs").join(format!("{name}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child with SIGKILL when
        // the thread that spawned it ends, so no control-plane process outlives its supervisor.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.children.push((name, child));
        Ok(())
    }

    /// Fails if any process of the control plane has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let log = self.dir.join("logs").join(format!("{name}.log"));
                bail!(
                    "{name} exited ({status}); see {}{}",
                    log.display(),
                    last_error_line(&log)
                        .map(|line| format!("; it said: {line}"))
                        .unwrap_or_default()
                );
            }
        }
        Ok(())
    }

    /// Stops every process (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) {
        for (_, child) in self.children.iter().rev() {
            // SAFETY: plain kill(2) on a pid we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in self.children.iter_mut().rev() {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    Ok(())
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:x}", rng.random_range(0..16u8)))
        .collect()
}

/// A free loopback port for a process that binds it itself.
///
/// The port is taken below the kernel's ephemeral range (`ip_local_port_range`): a port from that range
/// can be handed to any outgoing connection between our check and the process's own bind (this once
/// made kube-apiserver fail with "address already in use"). Ports are handed out once per test
/// process and checked free by binding.
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    use std::{collections::BTreeSet, sync::Mutex};
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low);
    if high <= low + 1_000 {
        // No room below the ephemeral range: fall back to the kernel's choice.
        return Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = rand::rng();
    for _ in 0..1_000 {
        let port = rng.random_range(low..high);
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port in {low}..{high}")
}

/// Whether a control-plane log says a process could not bind its port.
fn logs_show_port_clash(logs: &Path) -> bool {
    fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            fs::read_to_string(entry.path())
                .is_ok_and(|text| text.contains("address already in use"))
        })
}

/// The last line of a log that reports an error, for a failure message.
fn last_error_line(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with('E') || l.contains("error") || l.contains("err="))
        .map(|l| l.chars().take(400).collect())
}

async fn wait_http(url: &str, timeout: Duration, plane: &mut ControlPlane) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        plane.check_alive()?;
        if let Ok(resp) = client.get(url).send().await
            && resp.status().is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_api(
    kubeconfig: &Path,
    timeout: Duration,
    plane: &mut ControlPlane,
) -> anyhow::Result<Client> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        plane.check_alive()?;
        if plane.dir.join("pki/apiserver.crt").exists() {
            match try_ready(kubeconfig).await {
                Ok(client) => return Ok(client),
                Err(e) => last = format!("{e:#}"),
            }
        }
        if Instant::now() > deadline {
            bail!(
                "kube-apiserver not ready in {timeout:?}: {last}; see {}/logs",
                plane.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn try_ready(kubeconfig: &Path) -> anyhow::Result<Client> {
    let client = client_from(kubeconfig).await?;
    let req = http::Request::get("/readyz").body(Vec::new())?;
    let text = client.request_text(req).await?;
    if text.trim() != "ok" {
        bail!("readyz: {text}");
    }
    Api::<Namespace>::all(client.clone()).get("default").await?;
    Ok(client)
}

/// A client for a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Applies every CustomResourceDefinition in `dir/*.yaml` (server-side) and waits until each is
/// Established.
pub async fn install_crds(client: &Client, dir: &Path) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = vec![];
    let mut files: Vec<_> = match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => return Ok(()),
    };
    files.sort();
    for file in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = fs::read_to_string(file)?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition = serde_yaml::from_value(value)
                .with_context(|| format!("{} is not a CustomResourceDefinition", file.display()))?;
            let name = crd.name_any();
            api.patch(
                &name,
                &PatchParams::apply("pack-operator-tests").force(),
                &Patch::Apply(&crd),
            )
            .await?;
            names.push(name);
        }
    }
    for name in names {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crd = api.get(&name).await?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if Instant::now() > deadline {
                bail!("CRD {name} not Established in 30s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

use serde::Deserialize;

/// The cluster the tests of this run use.
pub struct TestEnv {
    pub kubeconfig: PathBuf,
}

/// Finds the shared test cluster: `PACK_OPERATOR_TEST_KUBECONFIG` (set by `make test`), else
/// `.cluster/kubeconfig` (from `make cluster`).
pub fn test_env() -> TestEnv {
    let path = std::env::var("PACK_OPERATOR_TEST_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tools::workspace_root().join(".cluster/kubeconfig"));
    assert!(
        path.exists(),
        "no test cluster: {} does not exist. Run the suite with `make test` (it starts one), or start one with `make cluster`.",
        path.display()
    );
    TestEnv { kubeconfig: path }
}

impl TestEnv {
    /// A client with admin rights.
    pub async fn client(&self) -> Client {
        client_from(&self.kubeconfig)
            .await
            .expect("client for the test cluster")
    }

    /// Creates a fresh namespace `<prefix>-<random>` for one test; it is deleted when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let client = self.client().await;
        let name = format!("{prefix}-{}", &random_token()[..6]);
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

impl TestEnv {
    /// Creates ServiceAccount `namespace/name` (if missing), asks the API server for a one-hour token,
    /// and writes a kubeconfig that authenticates as it. Returns the kubeconfig's path. This is how
    /// tests run a controller with exactly the rights RBAC gives it, not as admin.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        let client = self.client().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        if sas
            .get_opt(name)
            .await
            .expect("get service account")
            .is_none()
        {
            let sa = ServiceAccount {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_owned()),
                    ..Default::default()
                },
                ..Default::default()
            };
            sas.create(&PostParams::default(), &sa)
                .await
                .expect("create service account");
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..Default::default()
            }),
            ..Default::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("token request")
            .status
            .expect("token in status")
            .token
            .expect("token");
        let mut kc = Kubeconfig::read_from(&self.kubeconfig).expect("read admin kubeconfig");
        for user in &mut kc.auth_infos {
            if let Some(auth) = user.auth_info.as_mut() {
                auth.token = Some(token.clone().into());
            }
        }
        let path =
            std::env::temp_dir().join(format!("pack-operator-e2e-{namespace}-{name}.kubeconfig"));
        write_private(
            &path,
            serde_yaml::to_string(&kc)
                .expect("kubeconfig yaml")
                .as_bytes(),
        )
        .expect("write kubeconfig");
        path
    }
}

/// A namespace owned by one test.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Best effort, on a runtime of its own with a client of its own: a kube Client's background
        // worker lives on the runtime that made it, which is blocked while this drop runs.
        let kubeconfig = self.kubeconfig.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async move {
                    if let Ok(client) = client_from(&kubeconfig).await {
                        // The test's controllers are gone: finalizers they would have removed must
                        // not keep the namespace Terminating forever.
                        release_finalizers::<common::crd::Pack>(&client, &name).await;
                        release_finalizers::<common::crd::SecretReflector>(&client, &name).await;
                        let _ = Api::<Namespace>::all(client)
                            .delete(&name, &DeleteParams::background())
                            .await;
                    }
                });
            }
        })
        .join()
        .ok();
    }
}

/// Removes the finalizers of every `K` in `namespace` (best effort).
async fn release_finalizers<K>(client: &Client, namespace: &str)
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = api.list_metadata(&Default::default()).await else {
        return;
    };
    for item in list.items {
        if item
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
            && let Some(name) = item.metadata.name
        {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let _ = api
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ephemeral_low: u16 = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..50).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for port in ports {
            if ephemeral_low > 11_000 {
                assert!(port < ephemeral_low, "{port} is in the ephemeral range");
            }
            TcpListener::bind(("127.0.0.1", port)).unwrap();
        }
    }

    #[test]
    fn a_port_clash_is_recognised_in_the_logs() {
        let dir = std::env::temp_dir().join(format!("pack-operator-clash-{}", random_token()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("etcd.log"), "started\n").unwrap();
        assert!(!logs_show_port_clash(&dir));
        fs::write(
            dir.join("kube-apiserver.log"),
            "E1125 run.go:72] \"command failed\" err=\"failed to create listener: listen tcp 127.0.0.1:38489: bind: address already in use\"\n",
        )
        .unwrap();
        assert!(logs_show_port_clash(&dir));
        assert!(
            last_error_line(&dir.join("kube-apiserver.log"))
                .unwrap()
                .contains("address already in use")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
