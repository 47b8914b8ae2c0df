//! `make run` (hack/run.sh) as a user runs it, on its own state directory and ports so it never meets a
//! developer's `make run`: it installs the admission policies, the sample Pack of its local OCI registry is
//! installed, its logs are plain text, and Ctrl-C (SIGINT to its process group, twice) stops everything it
//! started except the control plane.
//!
//! It starts its own control plane (through run.sh's `testcluster up`): the three controllers run
//! cluster-wide and would act on the objects of the other tests in the shared one.

use std::{
    fs,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use e2e::{
    cluster::free_port,
    tools::{tool, workspace_binary, workspace_root},
};

/// Stops the test's control plane and removes its state when the test ends, however it ends.
struct ControlPlaneGuard {
    dir: PathBuf,
}

impl Drop for ControlPlaneGuard {
    fn drop(&mut self) {
        if let Ok(testcluster) = workspace_binary("testcluster") {
            let _ = Command::new(testcluster)
                .args(["down", "--dir"])
                .arg(&self.dir)
                .status();
        }
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("state of the failed run kept in {}", self.dir.display());
        }
    }
}

/// Kills run.sh's whole process group if the test fails before it ended.
struct RunGuard {
    child: Child,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.child.id() as i32, "KILL");
            let _ = self.child.wait();
        }
    }
}

/// Sends `signal` to the process group `pgid` (as the terminal does on Ctrl-C); true on success.
fn signal_group(pgid: i32, signal: &str) -> bool {
    Command::new("kill")
        .args([format!("-{signal}"), "--".into(), format!("-{pgid}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// A process of run.sh's group: pid and command line.
#[derive(Debug, Clone)]
struct Process {
    pid: i32,
    cmdline: String,
}

/// Live (not zombie) processes whose process group is `pgid`.
fn group(pgid: i32) -> Vec<Process> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // After the command name (in parentheses): state, ppid, pgrp.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") || fields.get(2) != Some(&pgid.to_string().as_str()) {
            continue;
        }
        let cmdline = fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        found.push(Process { pid, cmdline });
    }
    found
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 2..].starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

/// Three consecutive free ports (the controllers' metrics: run.sh counts up from the first).
fn three_ports() -> u16 {
    for _ in 0..50 {
        let first = free_port().unwrap();
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        if first < u16::MAX - 2 && free(first + 1) && free(first + 2) {
            return first;
        }
    }
    panic!("no three consecutive free ports");
}

fn output(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// `kubectl apply --dry-run=server` of `manifest` on the run's control plane: Ok(stdout) or Err(stderr).
fn dry_run(kubeconfig: &Path, manifest: &str) -> Result<String, String> {
    let mut child = Command::new(tool("kubectl").unwrap())
        .args(["apply", "--dry-run=server", "-f", "-", "--kubeconfig"])
        .arg(kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifest.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Waits (up to 60s) until the sample Pack `test-oci` (deploy/samples/oci-repository.yaml, from run.sh's
/// registry on `port`) is Ready=True Applied with a `status.chartRef` from that registry; returns it.
fn oci_sample_chart_ref(kubeconfig: &Path, port: u16) -> String {
    let from = format!("oci://127.0.0.1:{port}/charts/genpack");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(tool("kubectl").unwrap())
            .args(["get", "pack", "test-oci", "-n", "default", "-o", "json"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .output()
            .unwrap();
        let pack: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let status = &pack["status"];
        let ready = status["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
        if let (Some(ready), Some(chart_ref)) = (ready, status["chartRef"].as_str())
            && ready["status"] == "True"
            && ready["reason"] == "Applied"
            && chart_ref.starts_with(&from)
        {
            return chart_ref.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "Pack test-oci is not Ready=True Applied from {from} after 60s: {status:#}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

const INVALID_WATCH: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: make-run-invalid-watch
  namespace: default
  annotations:
    pack-operator.k8s.kubit.ir/watch-to-redeploy: "ConfigMap/test-cm-1"
spec:
  selector: {matchLabels: {app: make-run}}
  template:
    metadata: {labels: {app: make-run}}
    spec: {containers: [{name: app, image: busybox}]}
"#;

#[test]
fn make_run_installs_the_admission_policies_and_ctrl_c_stops_all_but_the_control_plane() {
    let testcluster = workspace_binary("testcluster").unwrap();
    let bin_dir = testcluster.parent().unwrap().to_path_buf();
    let dir = std::env::temp_dir().join(format!("pack-operator-make-run-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let _control_plane = ControlPlaneGuard { dir: dir.clone() };
    // As from a terminal; then as a background job of a script (`make run &`), which starts with SIGINT
    // ignored (the report's case: run.sh and chartrepo ignored Ctrl-C). The second run reuses the
    // control plane the first one left running.
    run_then_ctrl_c(&dir, &bin_dir, false);
    run_then_ctrl_c(&dir, &bin_dir, true);
}

fn run_then_ctrl_c(dir: &Path, bin_dir: &Path, sigint_ignored_on_entry: bool) {
    let root = workspace_root();
    let out_path = dir.join(format!("run-sigint-ignored-{sigint_ignored_on_entry}.out"));
    let out = fs::File::create(&out_path).unwrap();
    let registry_port = free_port().unwrap();
    let mut run = Command::new("env");
    if sigint_ignored_on_entry {
        run.arg("--ignore-signal=INT");
    }
    let run = run
        .arg("bash")
        .arg(root.join("hack/run.sh"))
        .env("PACK_OPERATOR_RUN_DIR", dir)
        .env("PACK_OPERATOR_CHART_PORT", free_port().unwrap().to_string())
        .env("PACK_OPERATOR_REGISTRY_PORT", registry_port.to_string())
        .env("PACK_OPERATOR_METRICS_PORT", three_ports().to_string())
        // The binaries `cargo test` built: a `cargo build` from inside the test would fight it.
        .env("PACK_OPERATOR_BIN_DIR", bin_dir)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        // Its own process group, as a shell gives `make run`: Ctrl-C is SIGINT to the group.
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = run.id() as i32;
    let mut run = RunGuard { child: run };

    // Up: control plane, policies, chart repository, controllers, samples, then the closing message.
    let deadline = Instant::now() + Duration::from_secs(240);
    while !output(&out_path).contains("Ctrl-C stops the controllers") {
        if let Ok(Some(status)) = run.child.try_wait() {
            panic!(
                "run.sh ended ({status}) before it was up:\n{}",
                output(&out_path)
            );
        }
        assert!(
            Instant::now() < deadline,
            "run.sh is not up after 240s:\n{}",
            output(&out_path)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let started = output(&out_path);
    assert!(
        started.contains("admission policies") && !started.contains("not Applied"),
        "{started}"
    );

    // The policies are installed: invalid watch-to-redeploy syntax is refused at admission. (A new policy
    // reaches the admission chain through an informer: give it a few seconds.)
    let kubeconfig = dir.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        match dry_run(&kubeconfig, INVALID_WATCH) {
            Err(e) if e.contains("pack-operator-watch-to-redeploy") => break e,
            seen => assert!(
                Instant::now() < deadline,
                "the invalid annotation is still admitted after 30s: {seen:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(refusal.contains("ConfigMap/test-cm-1"), "{refusal}");

    // The OCI sample: genpack pushed to this run's registry (the second run's port differs: the Pack
    // follows its repository's new URL), installed from it, pinned by manifest digest.
    let chart_ref = oci_sample_chart_ref(&kubeconfig, registry_port);
    assert!(chart_ref.contains("@sha256:"), "{chart_ref}");
    assert!(
        dir.join("bin/registry").exists(),
        "no bin/registry in the run dir"
    );

    // What Ctrl-C must stop: run.sh, chartrepo, the registry and the three controllers.
    let before = group(pgid);
    for name in [
        "hack/run.sh",
        "chartrepo",
        "registry serve",
        "pack-controller",
        "reflector-controller",
        "redeploy-controller",
    ] {
        assert!(
            before.iter().any(|p| p.cmdline.contains(name)),
            "no {name} in run.sh's process group: {before:#?}"
        );
    }

    // Ctrl-C, twice, as an impatient user does.
    for _ in 0..2 {
        assert!(signal_group(pgid, "INT"), "kill -INT -{pgid} failed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "run.sh still runs 40s after Ctrl-C; its group: {:#?}\n{}",
            group(pgid),
            output(&out_path)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<&Process> = before.iter().filter(|p| alive(p.pid)).collect();
        if left.is_empty() && group(pgid).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10s after run.sh ended: {left:#?}, group: {:#?}",
            group(pgid)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Interrupted: the status of a shell killed by SIGINT, as make and shells expect.
    assert_eq!(
        status.code(),
        Some(130),
        "run.sh ended with {status}:\n{}",
        output(&out_path)
    );

    // The control plane is not run.sh's to stop.
    let supervisor: i32 = fs::read_to_string(dir.join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(supervisor), "the control plane stopped with run.sh");
    let ready = Command::new(tool("kubectl").unwrap())
        .args(["get", "--raw", "/readyz", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(ready.status.success(), "{ready:?}");

    // Logs written to files carry no colour codes.
    for c in [
        "pack-controller",
        "reflector-controller",
        "redeploy-controller",
        "registry",
    ] {
        let log = output(&dir.join(format!("{c}.log")));
        assert!(!log.is_empty(), "{c}.log is empty");
        assert!(
            !log.contains("\x1b["),
            "{c}.log has ANSI escape codes: {}",
            log.lines().next().unwrap_or_default()
        );
    }
}
