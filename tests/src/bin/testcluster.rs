//! Starts and stops the local test control plane.
//!
//!   testcluster up   [--dir .cluster]   start it in the background (or reuse a running one)
//!   testcluster down [--dir .cluster]   stop it
//!   testcluster run  [--dir .cluster]   run it in the foreground until SIGTERM/SIGINT
//!
//! `up` writes `<dir>/kubeconfig` and links the tools it uses into `<dir>/bin`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use e2e::{cluster::ControlPlane, tools};

#[derive(Parser)]
#[command(
    about = "The local Kubernetes control plane used by `make run`, `make cluster` and `make test`"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the control plane in the background, or reuse a healthy one in the same directory.
    Up(DirArg),
    /// Stop the control plane started by `up`.
    Down(DirArg),
    /// Run the control plane in the foreground until SIGTERM or SIGINT.
    Run(DirArg),
}

#[derive(clap::Args)]
struct DirArg {
    /// State directory (kubeconfig, logs, etcd data, tool links).
    #[arg(long, default_value = ".cluster")]
    dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Up(a) => up(&a.dir),
        Cmd::Down(a) => down(&a.dir),
        Cmd::Run(a) => run(&a.dir),
    }
}

fn pid_file(dir: &Path) -> PathBuf {
    dir.join("supervisor.pid")
}

fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

fn up(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    link_tools(&dir)?;
    if running_pid(&dir).is_some() && dir.join("ready").exists() {
        eprintln!("control plane already running (state in {})", dir.display());
        return Ok(());
    }
    let _ = fs::remove_file(dir.join("ready"));
    let log = fs::File::create(dir.join("supervisor.log"))?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["run", "--dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0) // not killed by a Ctrl-C meant for the shell that ran `up`
        .spawn()
        .context("starting the control-plane supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !dir.join("ready").exists() {
        if !matches!(child.try_wait(), Ok(None)) || Instant::now() > deadline {
            let log = fs::read_to_string(dir.join("supervisor.log")).unwrap_or_default();
            bail!("the control plane did not start:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "control plane up; kubeconfig: {}",
        dir.join("kubeconfig").display()
    );
    Ok(())
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(pid) = running_pid(dir) else {
        eprintln!("no control plane running in {}", dir.display());
        return Ok(());
    };
    Command::new("kill").arg(pid.to_string()).status()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = fs::remove_file(pid_file(dir));
    let _ = fs::remove_file(dir.join("ready"));
    eprintln!("control plane stopped");
    Ok(())
}

fn link_tools(dir: &Path) -> anyhow::Result<()> {
    let tools = tools::tools_dir()?;
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    for name in [
        "kubectl",
        "helm",
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "registry",
    ] {
        let link = bin.join(name);
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(tools.join(name), &link)?;
    }
    Ok(())
}

fn run(dir: &Path) -> anyhow::Result<()> {
    fs::create_dir_all(dir)?;
    // Everything on this thread: the children's PR_SET_PDEATHSIG is tied to the spawning thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut plane = ControlPlane::start(dir).await?;
        fs::write(pid_file(&plane.dir), std::process::id().to_string())?;
        fs::write(plane.dir.join("ready"), "")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tick.tick() => {
                    if let Err(e) = plane.check_alive() {
                        eprintln!("control plane failed: {e:#}");
                        break;
                    }
                }
            }
        }
        plane.stop();
        let _ = fs::remove_file(plane.dir.join("ready"));
        anyhow::Ok(())
    })
}
