//! Runs a controller binary of this workspace as a real process against the test cluster.

#![allow(unsafe_code)] // pre_exec (PR_SET_PDEATHSIG) and kill(2) for SIGTERM.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context;

use crate::{TestEnv, cluster::free_port, tools};

/// A running controller process; killed when dropped.
pub struct ControllerProcess {
    pub name: String,
    pub identity: String,
    pub metrics_port: u16,
    pub log: PathBuf,
    child: Child,
}

impl ControllerProcess {
    /// Starts `binary` (e.g. `redeploy-controller`) with the test cluster's kubeconfig, a free metrics
    /// port, identity `identity`, and `args`.
    pub fn start(
        env: &TestEnv,
        binary: &str,
        identity: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_kubeconfig(&env.kubeconfig, binary, identity, args)
    }

    /// As [`ControllerProcess::start`], authenticating with `kubeconfig` (e.g. a ServiceAccount's).
    pub fn start_with_kubeconfig(
        kubeconfig: &std::path::Path,
        binary: &str,
        identity: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let path = tools::workspace_binary(binary)?;
        Self::start_path(kubeconfig, &path, identity, args)
    }

    /// Starts the controller binary at `path` (e.g. a release build, for benchmarks).
    pub fn start_path(
        kubeconfig: &std::path::Path,
        path: &std::path::Path,
        identity: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("controller")
            .to_owned();
        let binary = binary.as_str();
        let metrics_port = free_port()?;
        let log_dir = std::env::temp_dir().join("pack-operator-e2e-logs");
        fs::create_dir_all(&log_dir)?;
        // Unique per process: tests of one file run at once and may share an identity.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = log_dir.join(format!(
            "{binary}-{identity}-{}-{n}.log",
            std::process::id()
        ));
        let file = fs::File::create(&log)?;
        let mut cmd = Command::new(path);
        cmd.env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .arg(format!("--metrics-address=127.0.0.1:{metrics_port}"))
            .arg(format!("--identity={identity}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        // SAFETY: only prctl, which is async-signal-safe: the child dies with the test thread.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(ControllerProcess {
            name: binary.to_owned(),
            identity: identity.to_owned(),
            metrics_port,
            log,
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.metrics_port)
    }

    /// GETs `path` from the health/metrics server: (status code, body).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let resp = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(self.url(path))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }

    /// The value of an unlabelled metric sample such as `pack_operator_leader`, if present.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<Option<f64>> {
        let (_, body) = self.get("/metrics").await?;
        Ok(parse_sample(&body, sample))
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit; its exit code if it did.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The process's log so far (for failure messages).
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `name value` in Prometheus/OpenMetrics text (exact sample name, labels included if given).
pub fn parse_sample(body: &str, sample: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(sample)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_samples() {
        let body = "# TYPE x gauge\npack_operator_leader 1\npack_operator_leader_acquisitions_total 3\nfoo{a=\"b\"} 2.5\n";
        assert_eq!(super::parse_sample(body, "pack_operator_leader"), Some(1.0));
        assert_eq!(
            super::parse_sample(body, "pack_operator_leader_acquisitions_total"),
            Some(3.0)
        );
        assert_eq!(super::parse_sample(body, "foo{a=\"b\"}"), Some(2.5));
        assert_eq!(super::parse_sample(body, "missing"), None);
    }
}
