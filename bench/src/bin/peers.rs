//! Side by side with the peers (`make bench-peers`): redeploy-controller against Stakater Reloader on one
//! local control plane (etcd + kube-apiserver + kube-controller-manager), the same objects, each controller
//! alone in turn, `--rounds` rounds of A/B; medians, spread (min–max) and ratios.
//!
//! 1. `--configmaps` ConfigMaps and `--secrets` Secrets of `--object-bytes` each and `--deployments`
//!    Deployments (0 replicas), each carrying both our annotation (`configmap/cm-i, secret/sec-i`) and
//!    Reloader's (`configmap.reloader.stakater.com/reload: cm-i`, `secret.reloader.stakater.com/reload:
//!    sec-i`); each controller runs `--settle-seconds` after its metrics port answers, then its RSS is read;
//! 2. the same with only 1 Deployment (the others deleted);
//! 3. rollouts for 3 writes of one ConfigMap within 1 s, counted as new ReplicaSets of its Deployment
//!    (kube-controller-manager creates one per pod-template change), not `metadata.generation`.
//!
//! Reloader runs with `--reload-strategy=annotations` (its per-workload annotations above); it always
//! listens on :9090. Peers come from `hack/peers.sh` (built from their Go modules at pinned versions).
//! Writes the table to `--out` (default bench/results/<date>-peers.md) and a PNG bar chart of the ratios
//! beside it (`<date>-peers.png`); `--chart-from FILE` only draws the chart of an existing results file.
//!
//! The pack side (`--only pack`): pack-controller against Flux source-controller v1.7.3 + helm-controller
//! v1.4.3 over `--packs` releases of genpack, install then upgrade; see `peers/pack.rs`.
//!
//!   cargo run --release -p bench --bin peers-bench -- [--deployments 1000 --rounds 2 --only all|redeploy|pack]

#![allow(clippy::print_stdout)] // a benchmark prints its figures

#[path = "peers/pack.rs"]
mod pack_side;

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bench::{Obj, create_all, mib, rss_kib};
use clap::Parser;
use e2e::{
    cluster::{ControlPlane, free_port},
    tools,
};
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{ConfigMap, Namespace},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
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
    #[arg(long, default_value_t = 2048)]
    object_bytes: usize,
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// Rounds of A/B (each controller alone in turn).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Seconds each controller runs after its metrics port answers before its RSS is read.
    #[arg(long, default_value_t = 20)]
    settle_seconds: u64,
    /// The results file (default bench/results/<UTC date>-peers.md).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Which comparison runs: `redeploy` (against Reloader), `pack` (against Flux) or `all`.
    #[arg(long, value_enum, default_value_t = Only::All)]
    only: Only,
    /// Packs (and HelmReleases) of the pack side.
    #[arg(long, default_value_t = 100)]
    packs: usize,
    /// The pack side without Flux: only pack-controller's rounds are printed (no results file), to
    /// compare settings of ours, e.g. the helm children's Go runtime environment.
    #[arg(long)]
    no_peer: bool,
    /// Measure nothing: draw the PNG chart of this results file (beside it, same name) and stop.
    #[arg(long)]
    chart_from: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Only {
    All,
    Redeploy,
    Pack,
}

const OURS: &str = "pack-operator.k8s.kubit.ir/watch-to-redeploy";
const HASHES: &str = "pack-operator.k8s.kubit.ir/watched-hashes";

#[derive(Clone, Copy, PartialEq)]
enum Which {
    Ours,
    Reloader,
}

/// A controller process under test, killed when dropped.
struct Proc {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(which: Which, kubeconfig: &Path, peers: &Path, dir: &Path) -> anyhow::Result<Proc> {
    let (path, port, args): (PathBuf, u16, Vec<String>) = match which {
        Which::Ours => {
            let port = free_port()?;
            let args = ["--delay=1s", "--log-level=warn", "--identity=bench"]
                .map(String::from)
                .to_vec();
            let mut args = args;
            args.push(format!("--metrics-address=127.0.0.1:{port}"));
            let path = tools::workspace_root().join("target/release/redeploy-controller");
            (path, port, args)
        }
        Which::Reloader => (
            peers.join("reloader"),
            9090,
            vec![
                "--reload-strategy=annotations".into(),
                "--log-level=warning".into(),
            ],
        ),
    };
    let log = dir.join(format!("{}.log", label(which)));
    let file = std::fs::File::create(&log)?;
    let child = Command::new(&path)
        .env("KUBECONFIG", kubeconfig)
        .env("POD_NAMESPACE", "default")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    Ok(Proc { child, port, log })
}

fn label(which: Which) -> &'static str {
    match which {
        Which::Ours => "redeploy-controller",
        Which::Reloader => "Reloader",
    }
}

/// Waits until the process's metrics port accepts connections, then `settle`.
async fn settle(p: &mut Proc, settle: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], p.port));
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "exited ({status}): {}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("port {} not open after 2 minutes", p.port);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(settle).await;
    Ok(())
}

/// The object set: namespaces, ConfigMaps, Secrets and Deployments carrying both controllers' annotations.
async fn create_objects(client: &Client, args: &Args) -> anyhow::Result<()> {
    for i in 0..args.namespaces {
        let obj: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": format!("bench-{i}") } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await?;
    }
    let n = args.namespaces;
    let ns = move |i: usize| format!("bench-{}", i % n);
    let payload = "x".repeat(args.object_bytes);
    create_all(client, args.configmaps, 32, |i| {
        let o = serde_json::from_value(json!({ "metadata": { "name": format!("cm-{i}") }, "data": { "payload": payload, "n": i.to_string() } })).unwrap();
        (ns(i), Obj::ConfigMap(o))
    })
    .await?;
    create_all(client, args.secrets, 32, |i| {
        let o = serde_json::from_value(json!({ "metadata": { "name": format!("sec-{i}") }, "stringData": { "payload": payload, "n": i.to_string() } })).unwrap();
        (ns(i), Obj::Secret(o))
    })
    .await?;
    create_all(client, args.deployments, 32, |i| {
        (
            ns(i),
            Obj::Deployment(Box::new(deployment(
                &format!("app-{i}"),
                &format!("cm-{i}"),
                &format!("sec-{i}"),
            ))),
        )
    })
    .await
}

fn deployment(name: &str, cm: &str, secret: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "peers-bench": "app" }, "annotations": {
            OURS: format!("configmap/{cm}, secret/{secret}"),
            "configmap.reloader.stakater.com/reload": cm,
            "secret.reloader.stakater.com/reload": secret,
        } },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": name } },
            "template": { "metadata": { "labels": { "app": name } }, "spec": { "containers": [{ "name": "c", "image": "nginx" }] } }
        }
    }))
    .unwrap()
}

/// RSS (KiB) of `which` at rest over the current objects.
async fn rest_rss(which: Which, ctx: &Ctx) -> anyhow::Result<u64> {
    let mut p = start(which, &ctx.kubeconfig, &ctx.peers, &ctx.dir)?;
    settle(&mut p, ctx.settle)
        .await
        .with_context(|| label(which))?;
    Ok(rss_kib(p.child.id()).0)
}

/// ReplicaSets created for 3 writes of one ConfigMap within 1 s, minus the Deployment's first one.
async fn rollouts(which: Which, ctx: &Ctx, round: usize) -> anyhow::Result<f64> {
    let ns = "bench-0";
    let name = format!(
        "roll-{}-{round}",
        if which == Which::Ours {
            "ours"
        } else {
            "reloader"
        }
    );
    let cms: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": name }, "data": { "n": "0" } }))?;
    cms.create(&PostParams::default(), &cm).await?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let mut d = deployment(&name, &name, "none");
    d.labels_mut().insert("peers-bench".into(), "roll".into());
    let created = deployments.create(&PostParams::default(), &d).await?;
    let mut p = start(which, &ctx.kubeconfig, &ctx.peers, &ctx.dir)?;
    settle(&mut p, ctx.settle)
        .await
        .with_context(|| label(which))?;
    if which == Which::Ours {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !deployments
            .get(&name)
            .await?
            .annotations()
            .contains_key(HASHES)
        {
            if Instant::now() > deadline {
                bail!("{name}: no baseline after 2 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for k in 1..=3 {
        cms.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "data": { "n": k.to_string() } })),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Our --delay=1s, then time for kube-controller-manager to create the ReplicaSets.
    tokio::time::sleep(Duration::from_secs(10)).await;
    drop(p);
    let uid = created.uid().unwrap_or_default();
    let sets = Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns)
        .list_metadata(&ListParams::default())
        .await?;
    let owned = sets
        .items
        .iter()
        .filter(|rs| rs.owner_references().iter().any(|o| o.uid == uid))
        .count();
    Ok(owned.saturating_sub(1) as f64)
}

struct Ctx {
    client: Client,
    kubeconfig: PathBuf,
    peers: PathBuf,
    dir: PathBuf,
    settle: Duration,
}

/// One figure: the per-round samples of ours and of the peer.
struct Figure {
    name: String,
    unit: &'static str,
    ours: Vec<f64>,
    peer: Vec<f64>,
    peer_name: &'static str,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    bench::percentile(&s, 0.5)
}

fn spread(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.1}–{max:.1}")
}

/// Runs `measure` for ours then the peer, `rounds` times (A/B/A/B…).
async fn ab<F, Fut>(rounds: usize, mut measure: F) -> anyhow::Result<(Vec<f64>, Vec<f64>)>
where
    F: FnMut(Which, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let (mut ours, mut peer) = (vec![], vec![]);
    for round in 0..rounds {
        ours.push(measure(Which::Ours, round).await?);
        peer.push(measure(Which::Reloader, round).await?);
        println!(
            "  round {}: ours {:.1}, Reloader {:.1}",
            round + 1,
            ours[round],
            peer[round]
        );
    }
    Ok((ours, peer))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(results) = &args.chart_from {
        return write_chart(results);
    }
    if args.no_peer && args.only != Only::Pack {
        bail!("--no-peer measures the pack side only: add --only pack");
    }
    let peers = if args.no_peer {
        PathBuf::new()
    } else {
        peers_dir()?
    };
    for (binary, needed) in [
        ("redeploy-controller", args.only != Only::Pack),
        ("pack-controller", args.only != Only::Redeploy),
    ] {
        let path = tools::workspace_root().join("target/release").join(binary);
        if needed && !path.exists() {
            bail!("{} is missing: make bench-peers builds it", path.display());
        }
    }
    let dir = std::env::temp_dir().join(format!("pack-operator-peers-{}", std::process::id()));
    let plane = ControlPlane::start(&dir).await?;
    let client = e2e::cluster::client_from(&plane.kubeconfig).await?;
    let mut figures = vec![];
    if args.only != Only::Pack {
        figures = redeploy_figures(&args, &client, &plane, &peers, &dir).await?;
    }
    if args.only != Only::Redeploy {
        println!(
            "pack-controller against Flux, {} releases (Flux with disableWait: no kubelet here)",
            args.packs
        );
        let name = format!("peers-bench-{}", std::process::id());
        let ctx = pack_side::PackCtx {
            client: client.clone(),
            plane: &plane,
            peers: peers.clone(),
            dir: dir.clone(),
            server: e2e::packs::ChartServer::with_versions(&name, &["1.0.0"]).await,
            packs: args.packs,
            with_peer: !args.no_peer,
        };
        figures.extend(pack_side::figures(&ctx, args.rounds).await?);
    }
    if args.no_peer {
        drop(plane);
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    }
    let table = table(&figures);
    println!("\n{table}");
    let results = write_results(&args, &peers, &table)?;
    write_chart(&results)?;
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The redeploy-controller against Reloader.
async fn redeploy_figures(
    args: &Args,
    client: &Client,
    plane: &ControlPlane,
    peers: &Path,
    dir: &Path,
) -> anyhow::Result<Vec<Figure>> {
    let started = Instant::now();
    create_objects(client, args).await?;
    println!(
        "created {} ConfigMaps + {} Secrets ({} B) + {} Deployments in {:.1}s",
        args.configmaps,
        args.secrets,
        args.object_bytes,
        args.deployments,
        started.elapsed().as_secs_f64()
    );
    let ctx = Ctx {
        client: client.clone(),
        kubeconfig: plane.kubeconfig.clone(),
        peers: peers.to_owned(),
        dir: dir.to_owned(),
        settle: Duration::from_secs(args.settle_seconds),
    };
    let ctx = &ctx;
    let mut figures = vec![];
    let objects = format!(
        "{}k ConfigMaps + {}k Secrets ({} KiB)",
        args.configmaps as f64 / 1000.0,
        args.secrets as f64 / 1000.0,
        args.object_bytes / 1024
    );
    println!("RSS with {} Deployments (MiB)", args.deployments);
    let (ours, peer) = ab(args.rounds, |w, _| async move {
        Ok(mib(rest_rss(w, ctx).await?))
    })
    .await?;
    figures.push(Figure {
        name: format!("redeploy RSS, {objects} + {} Deployments", args.deployments),
        unit: "MiB",
        ours,
        peer,
        peer_name: "Reloader",
    });
    keep_one_deployment(client, args).await?;
    println!("RSS with 1 Deployment (MiB)");
    let (ours, peer) = ab(args.rounds, |w, _| async move {
        Ok(mib(rest_rss(w, ctx).await?))
    })
    .await?;
    figures.push(Figure {
        name: format!("redeploy RSS, {objects} + 1 Deployment"),
        unit: "MiB",
        ours,
        peer,
        peer_name: "Reloader",
    });
    println!("rollouts for 3 writes within 1 s");
    let (ours, peer) = ab(args.rounds, |w, r| rollouts(w, ctx, r)).await?;
    figures.push(Figure {
        name: "redeploy rollouts for 3 writes within 1 s".into(),
        unit: "",
        ours,
        peer,
        peer_name: "Reloader",
    });
    Ok(figures)
}

/// Deletes the benchmark's Deployments and creates `app-0` again.
async fn keep_one_deployment(client: &Client, args: &Args) -> anyhow::Result<()> {
    for ns in 0..args.namespaces {
        Api::<Deployment>::namespaced(client.clone(), &format!("bench-{ns}"))
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels("peers-bench=app"),
            )
            .await?;
    }
    create_all(client, 1, 1, |_| {
        (
            "bench-0".into(),
            Obj::Deployment(Box::new(deployment("app-0", "cm-0", "sec-0"))),
        )
    })
    .await?;
    Ok(())
}

fn peers_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new(tools::workspace_root().join("hack/peers.sh"))
        .arg("--print")
        .output()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    if !dir.join("reloader").exists() {
        bail!(
            "{} has no reloader: run hack/peers.sh (make bench-peers does)",
            dir.display()
        );
    }
    Ok(dir)
}

fn table(figures: &[Figure]) -> String {
    let mut t = String::from(
        "| figure (same cluster, same objects, A/B rounds) | ours: median (min–max) | peer: median (min–max) | ratio |\n|---|---|---|---|\n",
    );
    for f in figures {
        let (o, p) = (median(&f.ours), median(&f.peer));
        let ratio = if f.unit.is_empty() {
            "—".to_owned()
        } else {
            format!("{:.2}", o / p)
        };
        let _ = writeln!(
            t,
            "| {} | {o:.1} {u} ({}) | {} {p:.1} {u} ({}) | {ratio} |",
            f.name,
            spread(&f.ours),
            f.peer_name,
            spread(&f.peer),
            u = f.unit
        );
    }
    t
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let cores = cpu.lines().filter(|l| l.starts_with("processor")).count();
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total = mem.lines().next().unwrap_or_default().to_owned();
    format!("{cores} cores ({model}), {total}")
}

/// Draws the ratios of results file `results` into the PNG beside it (`<date>-peers.png`).
fn write_chart(results: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let png = results.with_extension("png");
    let stem = results.file_stem().unwrap_or_default().to_string_lossy();
    bench::ratio_chart::write_png(
        &png,
        &format!("Pack Operator against its peers ({stem})"),
        &bench::ratio_chart::bars_from_markdown(&text),
    )?;
    println!("wrote {}", png.display());
    Ok(())
}

/// Writes the results file; returns its path.
fn write_results(args: &Args, peers: &Path, table: &str) -> anyhow::Result<PathBuf> {
    let date = Command::new("date").args(["-u", "+%Y-%m-%d"]).output()?;
    let date = String::from_utf8(date.stdout)?.trim().to_owned();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| tools::workspace_root().join(format!("bench/results/{date}-peers.md")));
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let text = format!(
        "# Side by side with the peers, {date}\n\n\
         Machine: {}.\n\n\
         Versions: redeploy-controller from this tree (release build, `--delay=1s`); Stakater Reloader v1.4.22 \
         (`--reload-strategy=annotations`, per-workload `configmap/secret.reloader.stakater.com/reload` \
         annotations), built by `hack/peers.sh` into `{}`.\n\n\
         Command: `make bench-peers BENCH_ARGS=\"{}\"`; one local control plane (etcd, kube-apiserver, \
         kube-controller-manager; no kubelet), each controller alone in turn, {} rounds of A/B, RSS read \
         {} s after the metrics port answers. Rollouts are new ReplicaSets (pod-template changes).\n\n\
         Pack rows: pack-controller from this tree (release build, pinned helm) against Flux source-controller \
         v1.7.3 + helm-controller v1.4.3, one ClusterPackRepository / HelmRepository of genpack served over HTTP, \
         the same values; Flux runs with `install/upgrade.disableWait` and `disableWaitForJobs` (no kubelet \
         here), like-for-like with Packs without `spec.wait`. Memory and CPU are of the process trees (ours: \
         the controller and its helm children; Flux: both controllers). Peak RSS sums each process's resident \
         pages, so the executable pages that concurrent helm processes share count once per process; peak PSS \
         (`smaps_rollup`) counts a shared page once across them, which is what the node's memory holds.\n\n{table}",
        machine(),
        peers.display(),
        argv.join(" "),
        args.rounds,
        args.settle_seconds,
    );
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, text)?;
    println!("wrote {}", out.display());
    Ok(out)
}
