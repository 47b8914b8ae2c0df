//! Idle memory of the three controllers on a real local control plane (its own) with next to no
//! objects: starts each release binary (leader election off), waits, and prints its binary size and
//! RSS split into anonymous memory and file-backed pages (the executable's own, libc, the loader).
//! See docs/runtime.md "Idle memory".
//!
//!   make bench-idle                       (builds the controllers and this benchmark first)
//!   target/release/idle-bench [--settle-seconds 40] [--profile release]

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::time::Duration;

use anyhow::bail;
use bench::{mib, rss_split_kib};
use clap::Parser;
use e2e::{cluster::ControlPlane, controller::ControllerProcess, tools};

#[derive(Parser)]
struct Args {
    /// How long each controller runs before its memory is read.
    #[arg(long, default_value_t = 40)]
    settle_seconds: u64,
    /// The Cargo profile directory under target/ whose binaries are measured.
    #[arg(long, default_value = "release")]
    profile: String,
}

const CONTROLLERS: [&str; 3] = [
    "pack-controller",
    "reflector-controller",
    "redeploy-controller",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("pack-operator-idle-{}", std::process::id()));
    let plane = ControlPlane::start(&dir).await?;
    let helm = tools::tool("helm")?;
    let work = dir.join("pack-work");
    let mut running = Vec::new();
    for name in CONTROLLERS {
        let binary = tools::workspace_root()
            .join("target")
            .join(&args.profile)
            .join(name);
        if !binary.exists() {
            bail!(
                "{} is missing: `cargo build --profile {} --bins` first (make bench-idle does)",
                binary.display(),
                args.profile
            );
        }
        let mut flags = vec!["--leader-elect=false".to_owned()];
        if name == "pack-controller" {
            flags.push(format!("--helm-binary={}", helm.display()));
            flags.push(format!("--work-dir={}", work.display()));
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let process = ControllerProcess::start_path(&plane.kubeconfig, &binary, "idle", &flags)?;
        running.push((name, std::fs::metadata(&binary)?.len(), process));
    }
    // All three at once: each is idle, and the control plane is shared.
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    println!(
        "idle, {} s after start, `target/{}` builds, a control plane with next to no objects:",
        args.settle_seconds, args.profile
    );
    for (name, size, process) in &running {
        let (rss, anonymous, file) = rss_split_kib(process.pid());
        println!(
            "  {name:<21} binary {:.1} MB  RSS {:.1} MiB  anonymous {:.1} MiB  file-backed {:.1} MiB",
            *size as f64 / 1e6,
            mib(rss),
            mib(anonymous),
            mib(file)
        );
    }
    drop(running);
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
