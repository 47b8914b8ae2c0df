//! reflector-controller benchmark on a real local control plane (its own, or `--kubeconfig`):
//!
//! 1. creates N target namespaces (labelled for the reflector) and U unrelated Secrets of ~2 KiB each
//!    spread over them;
//! 2. starts the controller (release build) and reports its resident memory (RSS) with only the
//!    unrelated Secrets in the cluster;
//! 3. creates one source Secret and a SecretReflector selecting the N namespaces, and reports the time
//!    until every namespace holds the copy;
//! 4. changes the source and reports the time until every copy has the new data;
//! 5. reports RSS (and its peak) again.
//!
//! Times are measured by the benchmark from its own write to the last copy seen by its own watch.
//!
//!   cargo build --release -p reflector-controller -p bench
//!   target/release/reflector-bench [--namespaces 500 --unrelated-secrets 10000]

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use common::crd::SecretReflector;
use e2e::{cluster::ControlPlane, controller::ControllerProcess, tools};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Target namespaces selected by the reflector.
    #[arg(long, default_value_t = 500)]
    namespaces: usize,
    /// Secrets that no reflector names, spread over the target namespaces.
    #[arg(long, default_value_t = 10_000)]
    unrelated_secrets: usize,
    /// Size of each unrelated Secret's data.
    #[arg(long, default_value_t = 2048)]
    secret_bytes: usize,
    /// Use this cluster instead of starting a control plane (CRDs must be installed).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The controller's --concurrency.
    #[arg(long, default_value_t = 8)]
    concurrency: u16,
}

const MANAGED_LABEL: &str = "pack-operator.k8s.kubit.ir/reflector-namespace";
const SOURCE_NS: &str = "bench-reflector-source";
const SELECT: &str = "bench-reflect";

/// Copies seen by the benchmark's own watch: namespace → (value of `v`, first seen with it).
type Seen = Arc<Mutex<HashMap<String, (String, Instant)>>>;

async fn wait_all(seen: &Seen, value: &str, n: usize, since: Instant) -> anyhow::Result<Duration> {
    loop {
        let (count, last) = {
            let seen = seen.lock().unwrap();
            let with: Vec<Instant> = seen
                .values()
                .filter(|(v, _)| v == value)
                .map(|(_, at)| *at)
                .collect();
            (with.len(), with.into_iter().max())
        };
        if count >= n {
            return Ok(last.map_or(Duration::ZERO, |l| l.duration_since(since)));
        }
        if since.elapsed() > Duration::from_secs(600) {
            bail!("only {count}/{n} copies with v={value} after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

use bench::{mib, rss_kib};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("pack-operator-bench-{}", std::process::id()));
    let (plane, kubeconfig) = match &args.kubeconfig {
        Some(k) => (None, k.clone()),
        None => {
            let plane = ControlPlane::start(&dir).await?;
            let k = plane.kubeconfig.clone();
            (Some(plane), k)
        }
    };
    let client = e2e::cluster::client_from(&kubeconfig).await?;
    let namespaces: Vec<String> = (0..args.namespaces)
        .map(|i| format!("bench-reflect-{i}"))
        .collect();
    let started = Instant::now();
    let mut all_ns = namespaces.clone();
    all_ns.push(SOURCE_NS.to_owned());
    stream::iter(all_ns)
        .map(|ns| {
            let client = client.clone();
            async move {
                let labels = if ns == SOURCE_NS {
                    json!({})
                } else {
                    json!({ SELECT: "yes" })
                };
                let obj: Namespace = serde_json::from_value(
                    json!({ "metadata": { "name": ns, "labels": labels } }),
                )?;
                Api::<Namespace>::all(client)
                    .create(&PostParams::default(), &obj)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating namespaces")?;
    let payload = "x".repeat(args.secret_bytes);
    stream::iter(0..args.unrelated_secrets)
        .map(|i| {
            let client = client.clone();
            let ns = namespaces[i % namespaces.len()].clone();
            let payload = payload.clone();
            async move {
                let s: Secret = serde_json::from_value(json!({
                    "metadata": { "name": format!("unrelated-{i}") },
                    "stringData": { "payload": payload, "n": i.to_string() }
                }))?;
                Api::<Secret>::namespaced(client, &ns)
                    .create(&PostParams::default(), &s)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating unrelated Secrets")?;
    let raw_bytes = args.unrelated_secrets * args.secret_bytes;
    println!(
        "created {} namespaces and {} unrelated Secrets ({} B each, {:.1} MiB of data) in {:.1}s",
        args.namespaces,
        args.unrelated_secrets,
        args.secret_bytes,
        raw_bytes as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    );

    // The controller under test: release build, leader election on, as deployed.
    let binary = tools::workspace_root().join("target/release/reflector-controller");
    if !binary.exists() {
        bail!(
            "{} is missing: `cargo build --release -p reflector-controller` first",
            binary.display()
        );
    }
    let controller = ControllerProcess::start_path(
        &kubeconfig,
        &binary,
        "bench",
        &[
            "--log-level=warn",
            "--lease-namespace=default",
            &format!("--concurrency={}", args.concurrency),
        ],
    )?;
    let pid = controller.pid();
    let t0 = Instant::now();
    loop {
        let ready = controller.get("/readyz").await.map(|(code, _)| code == 200);
        if matches!(ready, Ok(true)) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!(
                "controller not ready after 2 minutes; log: {}",
                controller.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_idle, hwm_idle) = rss_kib(pid);

    // The benchmark's own view of the copies.
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let watch_client = client.clone();
    let watch = tokio::spawn(async move {
        let mut events = watcher(
            Api::<Secret>::all(watch_client),
            watcher::Config::default().labels(MANAGED_LABEL),
        )
        .applied_objects()
        .boxed();
        while let Ok(Some(s)) = events.try_next().await {
            let v = s
                .data
                .as_ref()
                .and_then(|d| d.get("v"))
                .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                .unwrap_or_default();
            let mut seen = record.lock().unwrap();
            let ns = s.namespace().unwrap_or_default();
            if seen.get(&ns).map(|(old, _)| old) != Some(&v) {
                seen.insert(ns, (v, Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), SOURCE_NS);
    let source: Secret = serde_json::from_value(json!({
        "metadata": { "name": "shared" },
        "type": "Opaque",
        "stringData": { "v": "one", "payload": "y".repeat(2048) }
    }))?;
    secrets.create(&PostParams::default(), &source).await?;
    let reflector: SecretReflector = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": "SecretReflector",
        "metadata": { "name": "shared" },
        "spec": {
            "source": { "name": "shared" },
            "targets": { "namespaceSelector": { "matchLabels": { SELECT: "yes" } } }
        }
    }))?;
    let created = Instant::now();
    Api::<SecretReflector>::namespaced(client.clone(), SOURCE_NS)
        .create(&PostParams::default(), &reflector)
        .await?;
    let first = wait_all(&seen, "one", args.namespaces, created).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_copied, hwm_copied) = rss_kib(pid);

    let changed = Instant::now();
    secrets
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "v": "two" } })),
        )
        .await?;
    let update = wait_all(&seen, "two", args.namespaces, changed).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, hwm_after) = rss_kib(pid);
    watch.abort();
    let summary = Api::<SecretReflector>::namespaced(client.clone(), SOURCE_NS)
        .get("shared")
        .await?
        .status
        .and_then(|s| s.summary)
        .unwrap_or_default();

    println!();
    println!(
        "reflector-controller (release, --concurrency={}), {} target namespaces, {} unrelated Secrets",
        args.concurrency, args.namespaces, args.unrelated_secrets
    );
    println!(
        "  ready (caches synced) {:.2}s after start",
        ready_after.as_secs_f64()
    );
    println!(
        "  RSS with only the unrelated Secrets: {:.1} MiB (peak {:.1} MiB; their raw data: {:.1} MiB)",
        mib(rss_idle),
        mib(hwm_idle),
        raw_bytes as f64 / 1048576.0
    );
    println!(
        "  one source -> {} namespaces: {:.2}s (SecretReflector created -> last copy seen)",
        args.namespaces,
        first.as_secs_f64()
    );
    println!(
        "  RSS holding {} copies: {:.1} MiB (peak {:.1} MiB)",
        args.namespaces,
        mib(rss_copied),
        mib(hwm_copied)
    );
    println!(
        "  source update -> all {} copies: {:.2}s (source patched -> last copy seen updated)",
        args.namespaces,
        update.as_secs_f64()
    );
    println!(
        "  RSS after the update: {:.1} MiB (peak {:.1} MiB); status summary {summary}",
        mib(rss_after),
        mib(hwm_after)
    );
    drop(controller);
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
