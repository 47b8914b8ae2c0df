//! redeploy-controller benchmark on a real local control plane:
//!
//! 1. creates N ConfigMaps and N Secrets of ~2 KiB each and M Deployments (0 replicas), each annotated
//!    `configmap/cm-i, secret/sec-i`;
//! 2. starts the controller (release build), and reports the time until every Deployment has its
//!    baseline recorded, and the controller's resident memory (RSS, and its peak);
//! 3. changes K watched objects one at a time and reports the change→patch latency beyond the delay
//!    (p50/p99), measured from the client's write to the Deployment's pod template changing.
//!
//! Figures are printed with ratios against the raw size of the ConfigMap/Secret data, which is what a
//! controller caching every ConfigMap and Secret (Reloader's design) holds at least.
//!
//!   cargo run --release -p bench --bin redeploy-bench -- [--configmaps 5000 --secrets 5000 --deployments 1000]

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::bail;
use clap::Parser;
use e2e::{cluster::ControlPlane, controller::ControllerProcess, tools};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Namespace, Secret},
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5000)]
    configmaps: usize,
    #[arg(long, default_value_t = 5000)]
    secrets: usize,
    #[arg(long, default_value_t = 1000)]
    deployments: usize,
    /// Watched objects changed one by one for the latency figures.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Size of each ConfigMap's and Secret's data.
    #[arg(long, default_value_t = 2048)]
    object_bytes: usize,
    /// The controller's --delay.
    #[arg(long, default_value = "1s")]
    delay: String,
    /// Namespaces to spread the objects over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Auto mode: each Deployment carries `watch-to-redeploy-auto: "true"` and uses cm-i by `envFrom`
    /// and sec-i as a volume, instead of naming them in `watch-to-redeploy`.
    #[arg(long)]
    auto: bool,
}

const ANNOTATION: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy";
const AUTO: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy-auto";

/// Deployment `app-i`, watching `cm-i` and `sec-i` by the explicit list or (auto) through its template.
fn deployment(i: usize, auto: bool) -> Deployment {
    let (annotations, pod) = if auto {
        (
            json!({ AUTO: "true" }),
            json!({
                "containers": [{ "name": "c", "image": "nginx",
                    "envFrom": [{ "configMapRef": { "name": format!("cm-{i}") } }],
                    "volumeMounts": [{ "name": "s", "mountPath": "/s" }] }],
                "volumes": [{ "name": "s", "secret": { "secretName": format!("sec-{i}") } }]
            }),
        )
    } else {
        (
            json!({ ANNOTATION: format!("configmap/cm-{i}, secret/sec-{i}") }),
            json!({ "containers": [{ "name": "c", "image": "nginx" }] }),
        )
    };
    serde_json::from_value(json!({
        "metadata": { "name": format!("app-{i}"), "annotations": annotations },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": format!("app-{i}") } },
            "template": { "metadata": { "labels": { "app": format!("app-{i}") } }, "spec": pod }
        }
    }))
    .unwrap()
}
const HASHES: &str = "pack-operator.k8s.kubit.ir/watched-hashes";
const CONFIG_HASH: &str = "pack-operator.k8s.kubit.ir/config-hash";

use bench::{Obj, create_all, percentile, rss_kib};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("pack-operator-bench-{}", std::process::id()));
    let plane = ControlPlane::start(&dir).await?;
    let client = e2e::cluster::client_from(&plane.kubeconfig).await?;
    let namespaces: Vec<String> = (0..args.namespaces).map(|i| format!("bench-{i}")).collect();
    for ns in &namespaces {
        let obj: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await?;
    }
    let ns_of = |i: usize| namespaces[i % namespaces.len()].clone();
    let payload = "x".repeat(args.object_bytes);

    let started = Instant::now();
    create_all(&client, args.configmaps, 32, |i| {
        let cm: ConfigMap = serde_json::from_value(json!({ "metadata": { "name": format!("cm-{i}") }, "data": { "payload": payload, "n": i.to_string() } })).unwrap();
        (ns_of(i), Obj::ConfigMap(cm))
    })
    .await?;
    create_all(&client, args.secrets, 32, |i| {
        let s: Secret = serde_json::from_value(json!({ "metadata": { "name": format!("sec-{i}") }, "stringData": { "payload": payload, "n": i.to_string() } })).unwrap();
        (ns_of(i), Obj::Secret(s))
    })
    .await?;
    create_all(&client, args.deployments, 32, |i| {
        (
            ns_of(i),
            Obj::Deployment(Box::new(deployment(i, args.auto))),
        )
    })
    .await?;
    let raw_bytes = (args.configmaps + args.secrets) * args.object_bytes;
    println!(
        "created {} ConfigMaps + {} Secrets ({} B each, {:.1} MiB of data) + {} annotated Deployments ({} mode) in {:.1}s",
        args.configmaps,
        args.secrets,
        args.object_bytes,
        raw_bytes as f64 / 1048576.0,
        args.deployments,
        if args.auto { "auto" } else { "explicit" },
        started.elapsed().as_secs_f64()
    );

    // The controller under test: release build, leader election on, as deployed.
    let binary = tools::workspace_root().join("target/release/redeploy-controller");
    if !binary.exists() {
        bail!(
            "{} is missing: `cargo build --release -p redeploy-controller` first (make bench does)",
            binary.display()
        );
    }
    let controller = ControllerProcess::start_path(
        &plane.kubeconfig,
        &binary,
        "bench",
        &[
            &format!("--delay={}", args.delay),
            "--rate=1000",
            "--burst=1000",
            "--log-level=warn",
        ],
    )?;
    let t0 = Instant::now();
    let deployments: Api<Deployment> = Api::all(client.clone());
    loop {
        let list = deployments.list_metadata(&ListParams::default()).await?;
        let recorded = list
            .items
            .iter()
            .filter(|d| d.annotations().contains_key(HASHES))
            .count();
        if recorded >= args.deployments {
            break;
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {recorded}/{} baselines recorded after 10 minutes; log: {}",
                args.deployments,
                controller.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let baseline = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = controller.pid();
    let (rss, hwm) = rss_kib(pid);

    // Latency: record when each Deployment's pod template changes.
    let changed_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = changed_at.clone();
    let watch_client = client.clone();
    let watch = tokio::spawn(async move {
        let mut events = watcher(
            Api::<Deployment>::all(watch_client),
            watcher::Config::default(),
        )
        .applied_objects()
        .boxed();
        while let Ok(Some(d)) = events.try_next().await {
            let rolled = d
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .is_some_and(|a| a.contains_key(CONFIG_HASH));
            if rolled {
                seen.lock()
                    .unwrap()
                    .entry(d.name_any())
                    .or_insert_with(Instant::now);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let delay = common::cli::parse_duration(&args.delay).map_err(anyhow::Error::msg)?;
    let mut latencies = vec![];
    let step = (args.deployments / args.changes.max(1)).max(1);
    for k in 0..args.changes.min(args.deployments) {
        let i = k * step;
        let name = format!("app-{i}");
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns_of(i));
        let written = Instant::now();
        api.patch(
            &format!("cm-{i}"),
            &PatchParams::default(),
            &Patch::Merge(&json!({ "data": { "n": format!("changed-{k}") } })),
        )
        .await?;
        let deadline = Instant::now() + delay + Duration::from_secs(30);
        loop {
            if let Some(at) = changed_at.lock().unwrap().get(&name) {
                latencies.push(
                    at.duration_since(written)
                        .saturating_sub(delay)
                        .as_secs_f64()
                        * 1000.0,
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} was not redeployed within delay + 30s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    watch.abort();
    latencies.sort_by(f64::total_cmp);
    let (rss_after, hwm_after) = rss_kib(pid);

    println!();
    println!(
        "redeploy-controller (release), {} namespaces",
        args.namespaces
    );
    println!(
        "  baseline recorded for {} Deployments in {:.2}s",
        args.deployments,
        baseline.as_secs_f64()
    );
    println!(
        "  RSS after baseline: {:.1} MiB (peak {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  RSS after {} redeploys: {:.1} MiB (peak {:.1} MiB)",
        latencies.len(),
        rss_after as f64 / 1024.0,
        hwm_after as f64 / 1024.0
    );
    println!(
        "  RSS / raw ConfigMap+Secret data: {:.3} (a controller that caches every object holds >= 1.0; Reloader reports ~5x)",
        (hwm_after as f64 * 1024.0) / raw_bytes as f64
    );
    println!(
        "  change -> patch latency beyond the {:?} delay over {} changes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        delay,
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    drop(controller);
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
