//! A real OCI registry for the Pack tests: CNCF Distribution (`registry`, built by `hack/tools.sh`) on a
//! loopback port over plain HTTP, with its blobs in a directory of its own, optionally behind htpasswd auth;
//! charts are pushed to it with the pinned `helm push`.

#![allow(unsafe_code)] // pre_exec (PR_SET_PDEATHSIG), as in controller.rs.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{
    cluster::free_port,
    packs::helm,
    tools::{tool, workspace_root},
    wait,
};

/// The user of an htpasswd-protected [`Registry`].
pub const REGISTRY_USER: &str = "e2e";
/// Its password.
pub const REGISTRY_PASSWORD: &str = "e2e-oci-password";
/// bcrypt of [`REGISTRY_PASSWORD`] (cost 4), made once with golang.org/x/crypto/bcrypt — the library the
/// registry checks it with — so the tests need no bcrypt implementation of their own.
const REGISTRY_PASSWORD_BCRYPT: &str =
    "$2a$04$Vtk5RbreQlqNYZSfmhpXLOIf.dvoodcNfdRsftOoAIKQAWjHQc41u";

/// A running registry; killed and its directory removed when dropped.
pub struct Registry {
    /// `host:port` on loopback.
    pub host: String,
    /// Its storage, helm homes and log.
    pub dir: PathBuf,
    /// Whether it asks for [`REGISTRY_USER`]/[`REGISTRY_PASSWORD`].
    pub auth: bool,
    child: Option<Child>,
}

impl Registry {
    /// A registry for test namespace `ns`, anonymous, or with htpasswd auth when `auth`.
    pub async fn start(ns: &str, auth: bool) -> Self {
        let dir = std::env::temp_dir().join(format!("pack-operator-e2e-registry-{ns}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port().unwrap();
        let mut registry = Registry {
            host: format!("127.0.0.1:{port}"),
            dir,
            auth,
            child: None,
        };
        registry.write_config();
        registry.run().await;
        if auth {
            registry.login();
        }
        registry
    }

    fn write_config(&self) {
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
             delete:\n    enabled: true\nhttp:\n  addr: {}\n",
            self.dir.join("storage").display(),
            self.host
        );
        if self.auth {
            let htpasswd = self.dir.join("htpasswd");
            std::fs::write(
                &htpasswd,
                format!("{REGISTRY_USER}:{REGISTRY_PASSWORD_BCRYPT}\n"),
            )
            .unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: pack-operator-e2e\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(self.dir.join("config.yml"), config).unwrap();
    }

    /// Starts the process (again, after [`Registry::stop`]) and waits until `/v2/` answers.
    pub async fn run(&mut self) {
        let log = std::fs::File::create(self.dir.join("registry.log")).unwrap();
        let mut cmd = Command::new(tool("registry").expect("registry"));
        cmd.arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: only prctl, which is async-signal-safe: the registry dies with the test thread.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("start registry"));
        let url = format!("http://{}/v2/", self.host);
        wait::until(
            "the registry to answer /v2/",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                match reqwest::get(&url).await {
                    Ok(r) if r.status().is_success() || r.status().as_u16() == 401 => Ok(Some(())),
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await
    }

    /// Stops the process (the registry is down until [`Registry::run`]); its storage stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The repository URL a ClusterPackRepository names: `oci://host:port/charts`.
    pub fn repository_url(&self) -> String {
        format!("oci://{}/charts", self.host)
    }

    fn helm_home(&self) -> PathBuf {
        self.dir.join("helm")
    }

    fn login(&self) {
        helm(
            &[
                "registry",
                "login",
                &self.host,
                "--plain-http",
                "--username",
                REGISTRY_USER,
                "--password",
                REGISTRY_PASSWORD,
            ],
            &self.helm_home(),
        );
    }

    /// Packages genpack at `version` and pushes it as `<repository_url>/genpack:<version>` (helm writes
    /// `+` as `_` in the tag).
    pub fn push_genpack(&self, version: &str) {
        let out = self.dir.join("packaged");
        std::fs::create_dir_all(&out).unwrap();
        let chart = workspace_root().join("tests/charts/genpack");
        helm(
            &[
                "package",
                chart.to_str().unwrap(),
                "--version",
                version,
                "--destination",
                out.to_str().unwrap(),
            ],
            &self.helm_home(),
        );
        let archive = out.join(format!("genpack-{version}.tgz"));
        self.push(&archive);
    }

    /// Pushes a packaged chart `archive` under [`Registry::repository_url`].
    pub fn push(&self, archive: &Path) {
        helm(
            &[
                "push",
                archive.to_str().unwrap(),
                &self.repository_url(),
                "--plain-http",
            ],
            &self.helm_home(),
        );
    }

    /// The registry's log so far (for failure messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
