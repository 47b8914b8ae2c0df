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
//! `--kind configmap` runs the same with ConfigMaps and a ConfigMapReflector (`--kinds=configmap`).
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
use e2e::{cluster::ControlPlane, controller::ControllerProcess, tools};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
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
    /// What is copied (and what the unrelated objects are): `secret` or `configmap`.
    #[arg(long, default_value = "secret", value_parser = ["secret", "configmap"])]
    kind: String,
}

/// The copied kind: its API, its reflector's kind, and how data is written and read.
struct Kind {
    secret: bool,
}

impl Kind {
    fn name(&self) -> &'static str {
        if self.secret { "Secret" } else { "ConfigMap" }
    }
    fn reflector(&self) -> &'static str {
        if self.secret {
            "SecretReflector"
        } else {
            "ConfigMapReflector"
        }
    }
    fn resource(&self) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", self.name()))
    }
    fn reflector_resource(&self) -> ApiResource {
        ApiResource::from_gvk(&GroupVersionKind::gvk(
            "k8s.kubit.ir",
            "v1alpha1",
            self.reflector(),
        ))
    }
    /// `{stringData|data: data}`: a Secret takes plain strings in stringData.
    fn data(&self, data: serde_json::Value) -> serde_json::Value {
        if self.secret {
            json!({ "stringData": data })
        } else {
            json!({ "data": data })
        }
    }
    /// The value of key `v` of an object of this kind.
    fn read_v(&self, o: &DynamicObject) -> String {
        let v = o.data.pointer("/data/v").and_then(|v| v.as_str());
        match (v, self.secret) {
            (Some(b64), true) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default()
            }
            (Some(v), false) => v.to_owned(),
            (None, _) => String::new(),
        }
    }
    fn object(&self, name: &str, data: serde_json::Value) -> anyhow::Result<DynamicObject> {
        let mut o = json!({
            "apiVersion": "v1", "kind": self.name(), "metadata": { "name": name },
        });
        if let (Some(o), serde_json::Value::Object(d)) = (o.as_object_mut(), self.data(data)) {
            o.extend(d);
        }
        Ok(serde_json::from_value(o)?)
    }
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
    let kind = Arc::new(Kind {
        secret: args.kind == "secret",
    });
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
            let kind = kind.clone();
            async move {
                let o = kind.object(
                    &format!("unrelated-{i}"),
                    json!({ "payload": payload, "n": i.to_string() }),
                )?;
                Api::<DynamicObject>::namespaced_with(client, &ns, &kind.resource())
                    .create(&PostParams::default(), &o)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating unrelated objects")?;
    let raw_bytes = args.unrelated_secrets * args.secret_bytes;
    println!(
        "created {} namespaces and {} unrelated {}s ({} B each, {:.1} MiB of data) in {:.1}s",
        args.namespaces,
        args.unrelated_secrets,
        kind.name(),
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
            &format!("--kinds={}", args.kind),
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
    let watch_kind = kind.clone();
    let watch = tokio::spawn(async move {
        let mut events = watcher(
            Api::<DynamicObject>::all_with(watch_client, &watch_kind.resource()),
            watcher::Config::default().labels(MANAGED_LABEL),
        )
        .applied_objects()
        .boxed();
        while let Ok(Some(s)) = events.try_next().await {
            let v = watch_kind.read_v(&s);
            let mut seen = record.lock().unwrap();
            let ns = s.namespace().unwrap_or_default();
            if seen.get(&ns).map(|(old, _)| old) != Some(&v) {
                seen.insert(ns, (v, Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let secrets: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), SOURCE_NS, &kind.resource());
    let source = kind.object("shared", json!({ "v": "one", "payload": "y".repeat(2048) }))?;
    secrets.create(&PostParams::default(), &source).await?;
    let reflectors: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), SOURCE_NS, &kind.reflector_resource());
    let reflector: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1",
        "kind": kind.reflector(),
        "metadata": { "name": "shared" },
        "spec": {
            "source": { "name": "shared" },
            "targets": { "namespaceSelector": { "matchLabels": { SELECT: "yes" } } }
        }
    }))?;
    let created = Instant::now();
    reflectors
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
            &Patch::Merge(kind.data(json!({ "v": "two" }))),
        )
        .await?;
    let update = wait_all(&seen, "two", args.namespaces, changed).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_after, hwm_after) = rss_kib(pid);
    watch.abort();
    let summary = reflectors
        .get("shared")
        .await?
        .data
        .pointer("/status/summary")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_owned();

    println!();
    println!(
        "reflector-controller (release, --concurrency={}, --kinds={}), {} target namespaces, {} unrelated {}s",
        args.concurrency,
        args.kind,
        args.namespaces,
        args.unrelated_secrets,
        kind.name()
    );
    println!(
        "  ready (caches synced) {:.2}s after start",
        ready_after.as_secs_f64()
    );
    println!(
        "  RSS with only the unrelated objects: {:.1} MiB (peak {:.1} MiB; their raw data: {:.1} MiB)",
        mib(rss_idle),
        mib(hwm_idle),
        raw_bytes as f64 / 1048576.0
    );
    println!(
        "  one source -> {} namespaces: {:.2}s ({} created -> last copy seen)",
        args.namespaces,
        first.as_secs_f64(),
        kind.reflector()
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
