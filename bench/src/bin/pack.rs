//! pack-controller benchmark on a real local control plane with the real helm:
//!
//! 1. `--packs` Packs of the test chart (one Deployment each) are created at once; reports the wall time
//!    until every one is `Applied`, and the controller's resident memory (RSS, and its peak) — the Helm
//!    processes it runs are separate processes and not counted;
//! 2. steady state for `--steady-seconds`: CPU seconds the controller used, Helm processes run (expected
//!    0), reconciles, and the API requests the controller made (from the API server's
//!    `apiserver_request_total`; the controller is the only client of those resources here). The
//!    repository is refreshed every `--repository-interval` and the controller runs with
//!    `--resync-interval` (default 60 s, not its 10 min default), so the window includes the safety-net
//!    resync of every Pack, which must run no Helm;
//! 3. the overhead of one Pack install over a bare `helm upgrade --install` of the same chart archive with
//!    the same values, measured `--repeat` times each (medians) and given as a ratio.
//!
//! Variants (`--oci`, `--values-from`, `--unrelated-secrets N`, `--wait`, `--drift warn|enabled`): each
//! runs the same measurement on a control plane of its own after the plain case (an HTTP repository,
//! inline values; `--no-plain` skips it), and a table sets each beside the plain case with the ratio.
//! Each variant flag is a scenario of its own; `--combined` makes one scenario of all the flags given.
//! Every scenario also reports the controller's RSS at rest before any Pack exists (after the unrelated
//! Secrets of `--unrelated-secrets`, which exist before the controller starts).
//!
//! With `--index-versions N` it measures instead what a large repository index costs the controller: a
//! generated `index.yaml` of N chart versions (over `--index-charts` charts, about 245 bytes per entry as
//! `helm repo index` writes them, no archives) is served without `ETag`/`Last-Modified`, so every refresh
//! downloads and parses it in full; one ClusterPackRepository refreshes it every `--index-interval`, no
//! Pack exists. Reports the controller's RSS before the repository exists, at rest after the first fetch,
//! after each of `--index-refreshes` refreshes, and its high-water mark (VmHWM: the peak of the whole run).
//!
//!   cargo run --release -p bench --bin pack-bench -- [--packs 100 --steady-seconds 300]
//!   cargo run --release -p bench --bin pack-bench -- --packs 100 --steady-seconds 60 --oci --wait
//!   cargo run --release -p bench --bin pack-bench -- --index-versions 100000

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bench::{
    cpu_seconds, generated_index, mib,
    pack_variants::{
        Variant, create_pack, create_repository, create_unrelated_secrets, spawn_ready_marker,
        values,
    },
    percentile, rss_kib,
};
use clap::Parser;
use common::crd::{ClusterPackRepository, Pack, pack::PackState};
use e2e::{
    cluster::ControlPlane,
    controller::ControllerProcess,
    packs::{ChartServer, apiserver_requests, create_repository_with_interval, helm_operations},
    registry::Registry,
    tools,
};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    packs: usize,
    /// Length of the steady-state window.
    #[arg(long, default_value_t = 300)]
    steady_seconds: u64,
    /// spec.interval of the repository (each refresh wakes every Pack that uses it).
    #[arg(long, default_value = "1m")]
    repository_interval: String,
    /// The controller's --resync-interval: short enough that the steady-state window sees every Pack's
    /// safety-net resync (several times with the default 300 s window).
    #[arg(long, default_value = "60s")]
    resync_interval: String,
    /// The controller's --helm-concurrency.
    #[arg(long, default_value_t = 4)]
    helm_concurrency: usize,
    /// Installs timed for the overhead ratio (each way).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Variant: the chart from a local OCI registry (CNCF Distribution, `oci://`, plain HTTP).
    #[arg(long)]
    oci: bool,
    /// Variant: each Pack's values from a Secret of its own (`spec.valuesFrom`, one key by `targetPath`).
    #[arg(long)]
    values_from: bool,
    /// Variant: this many unrelated Secrets (~2 KiB each) exist before the controller starts.
    #[arg(long, default_value_t = 0)]
    unrelated_secrets: usize,
    /// Variant: `spec.wait: true` (the benchmark marks each Deployment's Pods ready, as a kubelet would).
    #[arg(long)]
    wait: bool,
    /// Variant: `spec.driftDetection.mode`.
    #[arg(long, value_parser = ["warn", "enabled"])]
    drift: Option<String>,
    /// One scenario with all the variant flags given, instead of one scenario per flag.
    #[arg(long)]
    combined: bool,
    /// Skip the plain case (measure only the variants).
    #[arg(long)]
    no_plain: bool,
    /// Measure the memory of a repository index of this many chart versions instead (no Packs).
    #[arg(long)]
    index_versions: Option<usize>,
    /// Charts the versions of `--index-versions` are spread over.
    #[arg(long, default_value_t = 100)]
    index_charts: usize,
    /// Refreshes of that index measured after the first fetch (the server sends no ETag: each one
    /// downloads and parses the whole index).
    #[arg(long, default_value_t = 10)]
    index_refreshes: usize,
    /// spec.interval of the repository of `--index-versions`.
    #[arg(long, default_value = "10s")]
    index_interval: String,
    /// The pack-controller binary (default: target/release/pack-controller), e.g. to compare builds.
    #[arg(long)]
    controller_binary: Option<PathBuf>,
}

impl Args {
    /// The scenarios to run: the plain case (unless `--no-plain`), then each variant flag on its own,
    /// or all of them together with `--combined`.
    fn scenarios(&self) -> Vec<Variant> {
        let all = Variant {
            oci: self.oci,
            values_from: self.values_from,
            unrelated_secrets: self.unrelated_secrets,
            wait: self.wait,
            drift: self.drift.clone(),
        };
        let plain = Variant::default();
        let variants = if self.combined {
            vec![all]
        } else {
            vec![
                Variant {
                    oci: all.oci,
                    ..Variant::default()
                },
                Variant {
                    values_from: all.values_from,
                    ..Variant::default()
                },
                Variant {
                    unrelated_secrets: all.unrelated_secrets,
                    ..Variant::default()
                },
                Variant {
                    wait: all.wait,
                    ..Variant::default()
                },
                Variant {
                    drift: all.drift.clone(),
                    ..Variant::default()
                },
            ]
        };
        let mut out = if self.no_plain {
            Vec::new()
        } else {
            vec![plain.clone()]
        };
        out.extend(variants.into_iter().filter(|v| *v != plain));
        if out.is_empty() {
            out.push(plain);
        }
        out
    }
}

/// The namespaces of the Packs of phase 1 and of phase 3.
const PACKS_NS: &str = "bench-packs";
const ONE_NS: &str = "bench-one";
/// The Deployments of both, for the kubelet the `--wait` variant plays.
const PACK_NAMESPACES: &[&str] = &[PACKS_NS, ONE_NS];
/// The repository every Pack names.
const REPO: &str = "bench";

async fn applied(api: &Api<Pack>) -> anyhow::Result<usize> {
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.state) == Some(PackState::Applied))
        .count())
}

async fn wait_applied(api: &Api<Pack>, n: usize, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        if applied(api).await? >= n {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!(
                "only {} of {n} Packs Applied after {timeout:?}",
                applied(api).await?
            );
        }
        // Fine-grained: this times single installs of a fraction of a second.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A sample of the controller's metrics; 0 when absent.
async fn metric(controller: &ControllerProcess, sample: &str) -> anyhow::Result<f64> {
    Ok(controller.metric(sample).await?.unwrap_or(0.0))
}

const INSTALL_SUM: &str =
    "pack_operator_helm_operation_duration_seconds_sum{operation=\"install\"}";
const INSTALL_COUNT: &str =
    "pack_operator_helm_operation_duration_seconds_count{operation=\"install\"}";
const RECONCILES: &str = "pack_operator_reconciles_total{controller=\"pack\"}";

/// Starts the pack-controller (`--controller-binary`) on `plane` with the benchmark's flags and `extra`.
fn start_controller(
    args: &Args,
    plane: &ControlPlane,
    dir: &Path,
    extra: &[String],
) -> anyhow::Result<ControllerProcess> {
    let binary = controller_binary(args)?;
    let mut controller_args = vec![
        format!("--lease-namespace={PACKS_NS}"),
        "--log-level=info".to_owned(),
        format!("--helm-binary={}", tools::tool("helm")?.display()),
        format!("--work-dir={}", dir.join("work").display()),
    ];
    controller_args.extend_from_slice(extra);
    let controller_args: Vec<&str> = controller_args.iter().map(String::as_str).collect();
    ControllerProcess::start_path(&plane.kubeconfig, &binary, "pack-bench", &controller_args)
        .context("start pack-controller")
}

/// Waits until the controller leads (its informers start then).
async fn wait_leading(controller: &ControllerProcess) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while controller
        .metric("pack_operator_leader")
        .await
        .ok()
        .flatten()
        != Some(1.0)
    {
        if Instant::now() > deadline {
            bail!(
                "pack-controller not leading after 60 s:\n{}",
                controller.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Phase 1: `--packs` Packs created at once until all are `Applied`.
struct Install {
    wall: Duration,
    /// Helm processes run, and the seconds they took (the install histogram's sum).
    helm_ops: f64,
    helm_seconds: f64,
    rss_after: u64,
    peak_rss: u64,
    hwm: u64,
}

async fn install_all(
    args: &Args,
    variant: &Variant,
    client: &Client,
    controller: &ControllerProcess,
) -> anyhow::Result<Install> {
    let pid = controller.pid();
    let helm_seconds0 = metric(controller, INSTALL_SUM).await?;
    let packs: Api<Pack> = Api::namespaced(client.clone(), PACKS_NS);
    let started = Instant::now();
    stream::iter(0..args.packs)
        .map(|i| async move {
            create_pack(client, PACKS_NS, &format!("p-{i}"), i, REPO, variant).await
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let mut peak_rss = 0;
    let wall = loop {
        peak_rss = peak_rss.max(rss_kib(pid).0);
        if applied(&packs).await? >= args.packs {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("Packs not Applied after 30 min:\n{}", controller.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (rss_after, hwm) = rss_kib(pid);
    Ok(Install {
        wall,
        helm_ops: helm_operations(controller).await,
        helm_seconds: metric(controller, INSTALL_SUM).await? - helm_seconds0,
        rss_after,
        peak_rss,
        hwm,
    })
}

/// Phase 2: the steady state.
struct Steady {
    cpu: f64,
    helm_ops: f64,
    reconciles: f64,
    rss: u64,
    /// API requests by "VERB resource", all of them, and the controller's own.
    api: Vec<(String, f64)>,
    api_total: f64,
    own: f64,
}

/// The resources whose requests are counted: those the controller reads and writes, with or without a
/// variant (the release's workloads for `spec.wait` and drift detection). kube-controller-manager writes
/// core Events of the Deployments the Packs made (still catching up after a large install) and renews
/// Leases: both are told apart.
const RESOURCES: &[&str] = &[
    "packs",
    "clusterpackrepositories",
    "secrets",
    "configmaps",
    "events",
    "leases",
    "deployments",
    "services",
];

async fn steady_state(
    args: &Args,
    client: &Client,
    controller: &ControllerProcess,
) -> anyhow::Result<Steady> {
    let pid = controller.pid();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api0 = apiserver_requests(client, RESOURCES).await?;
    let cpu0 = cpu_seconds(pid);
    let ops0 = helm_operations(controller).await;
    let rec0 = metric(controller, RECONCILES).await?;
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let cpu = cpu_seconds(pid) - cpu0;
    let helm_ops = helm_operations(controller).await - ops0;
    let reconciles = metric(controller, RECONCILES).await? - rec0;
    let rss = rss_kib(pid).0;
    let api1 = apiserver_requests(client, RESOURCES).await?;
    let api: Vec<(String, f64)> = api1
        .iter()
        .map(|(k, n)| (k.clone(), n - api0.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let api_total = api.iter().map(|(_, n)| n).sum();
    // Leases: leader election, and the API server's own identity Lease. Core `events`: kube-controller-
    // manager's (the controller's Events are events.k8s.io), as are Deployment status writes (the
    // controller never writes a status of the release's objects).
    let own = api
        .iter()
        .filter(|(k, _)| {
            !k.contains(" leases.")
                && !k.ends_with(" events")
                && !k.ends_with(" deployments.apps/status")
        })
        .map(|(_, n)| n)
        .sum();
    Ok(Steady {
        cpu,
        helm_ops,
        reconciles,
        rss,
        api,
        api_total,
        own,
    })
}

/// Phase 3: medians of one install, bare helm and through a Pack, and helm's share inside the controller.
struct OneInstall {
    bare: f64,
    pack: f64,
    helm_in_controller: f64,
}

/// One bare `helm upgrade --install` of `archive` as release `bare-{r}` with `values(r)`; its seconds.
fn bare_install(plane: &ControlPlane, dir: &Path, archive: &Path, r: usize) -> anyhow::Result<f64> {
    let home = dir.join("helm-bare");
    let values_file = dir.join("bare-values.json");
    std::fs::write(&values_file, serde_json::to_vec(&values(r))?)?;
    let t = Instant::now();
    let out = std::process::Command::new(tools::tool("helm")?)
        .args([
            "--kubeconfig",
            plane.kubeconfig.to_str().context("kubeconfig path")?,
            "upgrade",
            &format!("bare-{r}"),
            archive.to_str().context("archive path")?,
            "--install",
            "-n",
            "bench-helm",
            "-f",
            values_file.to_str().context("values path")?,
            "--history-max",
            "5",
            "-o",
            "json",
        ])
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()?;
    if !out.status.success() {
        bail!("helm: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

async fn one_install(
    args: &Args,
    variant: &Variant,
    plane: &ControlPlane,
    (dir, server): (&Path, &ChartServer),
    client: &Client,
    controller: &ControllerProcess,
) -> anyhow::Result<OneInstall> {
    let archive = std::fs::read_dir(&server.dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("chart archive")?;
    let mut bare = Vec::new();
    let mut via_pack = Vec::new();
    let helm0 = (
        metric(controller, INSTALL_SUM).await?,
        metric(controller, INSTALL_COUNT).await?,
    );
    let one: Api<Pack> = Api::namespaced(client.clone(), ONE_NS);
    for r in 0..args.repeat {
        bare.push(bare_install(plane, dir, &archive, r)?);
        let t = Instant::now();
        create_pack(client, ONE_NS, &format!("one-{r}"), r, REPO, variant).await?;
        wait_applied(&one, r + 1, Duration::from_secs(120)).await?;
        via_pack.push(t.elapsed().as_secs_f64());
    }
    let helm_in_controller = (metric(controller, INSTALL_SUM).await? - helm0.0)
        / (metric(controller, INSTALL_COUNT).await? - helm0.1);
    bare.sort_by(f64::total_cmp);
    via_pack.sort_by(f64::total_cmp);
    Ok(OneInstall {
        bare: percentile(&bare, 0.5),
        pack: percentile(&via_pack, 0.5),
        helm_in_controller,
    })
}

/// The repository's `status.lastFetchTime` once it serves an index of `versions` versions.
async fn last_fetch(
    repos: &Api<ClusterPackRepository>,
    name: &str,
    versions: usize,
) -> Option<String> {
    let repo = repos.get(name).await.ok()?;
    let status = repo.status?;
    (status.versions == Some(versions as i64))
        .then_some(status.last_fetch_time)
        .flatten()
}

/// Waits until the repository's `lastFetchTime` differs from `previous` (a fetch completed: the index is
/// parsed and in the cache before the status is written).
async fn wait_fetch(
    repos: &Api<ClusterPackRepository>,
    name: &str,
    versions: usize,
    previous: Option<&str>,
    controller: &ControllerProcess,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(time) = last_fetch(repos, name, versions).await
            && Some(time.as_str()) != previous
        {
            return Ok(time);
        }
        if Instant::now() > deadline {
            let status = repos.get(name).await.ok().and_then(|r| r.status);
            bail!(
                "repository {name} not fetched (again) within 300 s; status {status:?}\n{}",
                controller.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The memory case: one large index, fetched and refreshed, no Packs.
async fn index_memory(
    args: &Args,
    versions: usize,
    dir: &std::path::Path,
    plane: &ControlPlane,
    client: &Client,
) -> anyhow::Result<()> {
    // ChartServer removes the parent of what it serves when dropped.
    let repo_dir = dir.join("index").join("repo");
    std::fs::create_dir_all(&repo_dir)?;
    let text = generated_index(versions, args.index_charts);
    let bytes = text.len();
    std::fs::write(repo_dir.join("index.yaml"), text)?;
    // Serves files as they are, without ETag or Last-Modified: no refresh can be a 304.
    let server = ChartServer::start(repo_dir).await;

    let controller = start_controller(args, plane, dir, &[])?;
    let pid = controller.pid();
    // Leading and idle before the repository exists.
    wait_leading(&controller).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_kib(pid).0;

    let name = "bench-index";
    create_repository_with_interval(client, name, &server.url, &args.index_interval).await;
    let repos: Api<ClusterPackRepository> = Api::all(client.clone());
    let started = Instant::now();
    let mut fetched = wait_fetch(&repos, name, versions, None, &controller).await?;
    let first_fetch = started.elapsed();
    // Between two fetches: the first fetch's temporaries are gone, the next fetch has not started.
    let settle = Duration::from_secs(3);
    tokio::time::sleep(settle).await;
    let (at_rest, hwm_first) = rss_kib(pid);
    let mut after = Vec::with_capacity(args.index_refreshes);
    for _ in 0..args.index_refreshes {
        fetched = wait_fetch(&repos, name, versions, Some(&fetched), &controller).await?;
        tokio::time::sleep(settle).await;
        after.push(rss_kib(pid).0);
    }
    let (last, hwm) = rss_kib(pid);

    println!(
        "pack-controller ({}), index of {versions} versions over {} charts, {:.1} MB ({bytes} bytes), \
         no ETag, interval {}",
        controller_binary(args)?.display(),
        args.index_charts.max(1),
        bytes as f64 / 1e6,
        args.index_interval
    );
    println!(
        "controller RSS: {:.1} MiB idle before the repository; first fetch took {:.1} s; {:.1} MiB at rest \
         after it (high-water mark {:.1} MiB then)",
        mib(idle),
        first_fetch.as_secs_f64(),
        mib(at_rest),
        mib(hwm_first)
    );
    let series: Vec<String> = after.iter().map(|k| format!("{:.1}", mib(*k))).collect();
    println!(
        "  after each of {} refreshes ({} s after the status says it was fetched): {} MiB",
        args.index_refreshes,
        settle.as_secs(),
        series.join(", ")
    );
    println!(
        "  at rest {:.1} MiB, after {} refreshes {:.1} MiB (growth {:+.1} MiB), peak (VmHWM) {:.1} MiB",
        mib(at_rest),
        args.index_refreshes,
        mib(last),
        mib(last) - mib(at_rest),
        mib(hwm)
    );
    drop(controller);
    drop(server);
    Ok(())
}

/// What one scenario measured.
struct Figures {
    variant: Variant,
    /// The controller's RSS at rest, leading, before any Pack exists (KiB).
    rss_rest: u64,
    install: Install,
    steady: Steady,
    one: OneInstall,
}

/// Runs one scenario on a control plane of its own (`n` numbers its directory).
async fn run_scenario(args: &Args, variant: &Variant, n: usize) -> anyhow::Result<Figures> {
    let dir = std::env::temp_dir().join(format!(
        "pack-operator-pack-bench-{}-{n}",
        std::process::id()
    ));
    let plane = ControlPlane::start(&dir).await?;
    let client = e2e::cluster::client_from(&plane.kubeconfig).await?;
    let result = measure(args, variant, &dir, &plane, &client).await;
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn create_namespaces(client: &Client) -> anyhow::Result<()> {
    for ns in [PACKS_NS, "bench-helm", ONE_NS] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await?;
    }
    Ok(())
}

async fn measure(
    args: &Args,
    variant: &Variant,
    dir: &Path,
    plane: &ControlPlane,
    client: &Client,
) -> anyhow::Result<Figures> {
    create_namespaces(client).await?;
    let name = format!("pack-bench-{}", std::process::id());
    // The HTTP repository always runs: phase 3's bare helm installs its archive.
    let server = ChartServer::with_versions(&name, &["1.0.0"]).await;
    let registry = if variant.oci {
        let registry = Registry::start(&name, false).await;
        registry.push_genpack("1.0.0");
        Some(registry)
    } else {
        None
    };
    let url = registry
        .as_ref()
        .map_or_else(|| server.url.clone(), Registry::repository_url);
    create_repository(client, REPO, &url, &args.repository_interval, variant.oci).await?;
    if variant.unrelated_secrets > 0 {
        create_unrelated_secrets(client, PACKS_NS, variant.unrelated_secrets).await?;
    }
    let extra = [
        format!("--helm-concurrency={}", args.helm_concurrency),
        format!("--resync-interval={}", args.resync_interval),
    ];
    let controller = start_controller(args, plane, dir, &extra)?;
    wait_leading(&controller).await?;
    // The informers' first lists are done and their temporaries freed.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_rest = rss_kib(controller.pid()).0;
    // The stand-in kubelet of `--wait` lists Deployments: it is stopped over the steady state, whose
    // requests are the controller's alone.
    let marker = || {
        variant
            .wait
            .then(|| spawn_ready_marker(client.clone(), PACK_NAMESPACES))
    };
    let installing = marker();
    let install = install_all(args, variant, client, &controller).await;
    installing.inspect(tokio::task::JoinHandle::abort);
    let install = install.with_context(|| format!("{} Packs: {}", args.packs, variant.label()))?;
    let steady = steady_state(args, client, &controller).await?;
    let installing = marker();
    let one = one_install(args, variant, plane, (dir, &server), client, &controller).await;
    installing.inspect(tokio::task::JoinHandle::abort);
    let one = one?;
    Ok(Figures {
        variant: variant.clone(),
        rss_rest,
        install,
        steady,
        one,
    })
}

fn print_figures(args: &Args, f: &Figures) {
    let (i, s, o) = (&f.install, &f.steady, &f.one);
    println!(
        "== {} — pack-controller (release), {} Packs, --helm-concurrency {}",
        f.variant.label(),
        args.packs,
        args.helm_concurrency
    );
    println!(
        "controller RSS at rest before any Pack: {:.1} MiB",
        mib(f.rss_rest)
    );
    println!(
        "install {} Packs: {:.1} s wall ({:.2} s per Pack), {} helm processes taking {:.1} s together",
        args.packs,
        i.wall.as_secs_f64(),
        i.wall.as_secs_f64() / args.packs as f64,
        i.helm_ops,
        i.helm_seconds
    );
    println!(
        "controller RSS: {:.1} MiB after installing, {:.1} MiB peak sampled, {:.1} MiB high-water mark",
        mib(i.rss_after),
        mib(i.peak_rss),
        mib(i.hwm)
    );
    let steady = args.steady_seconds as f64;
    println!(
        "steady state over {steady:.0} s (repository interval {}, resync interval {}): {:.2} CPU s ({:.3}% of one core), {} helm processes, {} reconciles, RSS {:.1} MiB",
        args.repository_interval,
        args.resync_interval,
        s.cpu,
        s.cpu / steady * 100.0,
        s.helm_ops,
        s.reconciles,
        mib(s.rss)
    );
    let api_list: Vec<String> = s.api.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!(
        "  API requests meanwhile (WATCH not counted): {}; the controller's own (without Leases and kube-controller-manager's core Events and Deployment status writes) {} ({:.2} per reconcile): {}",
        s.api_total,
        s.own,
        s.own / s.reconciles.max(1.0),
        api_list.join(", ")
    );
    println!(
        "one install, median of {}: bare helm upgrade --install {:.2} s, Pack → Applied {:.2} s, ratio {:.2}×",
        args.repeat,
        o.bare,
        o.pack,
        o.pack / o.bare
    );
    println!(
        "  of which helm inside the controller: {:.2} s (mean); the rest ({:.2} s) is watch, \
         finalizer, status writes and the chart cache",
        o.helm_in_controller,
        o.pack - o.helm_in_controller
    );
}

/// The rows of the comparison: name, value of a scenario, decimals.
type Row = (&'static str, fn(&Figures) -> f64, usize);

const ROWS: &[Row] = &[
    ("RSS at rest before any Pack (MiB)", |f| mib(f.rss_rest), 1),
    (
        "create all → all Applied (s)",
        |f| f.install.wall.as_secs_f64(),
        1,
    ),
    ("helm processes to install", |f| f.install.helm_ops, 0),
    (
        "helm seconds to install (sum)",
        |f| f.install.helm_seconds,
        1,
    ),
    (
        "RSS after installing (MiB)",
        |f| mib(f.install.rss_after),
        1,
    ),
    ("RSS high-water mark (MiB)", |f| mib(f.install.hwm), 1),
    ("steady: CPU s", |f| f.steady.cpu, 2),
    ("steady: helm processes", |f| f.steady.helm_ops, 0),
    ("steady: reconciles", |f| f.steady.reconciles, 0),
    ("steady: controller's API requests", |f| f.steady.own, 0),
    (
        "steady: API requests per reconcile",
        |f| f.steady.own / f.steady.reconciles.max(1.0),
        2,
    ),
    ("steady: RSS (MiB)", |f| mib(f.steady.rss), 1),
    ("one install: Pack → Applied, median (s)", |f| f.one.pack, 2),
    (
        "one install: ratio to bare helm",
        |f| f.one.pack / f.one.bare,
        2,
    ),
];

/// A Markdown table: each scenario beside the first (the plain case), with the ratio.
fn print_comparison(all: &[Figures]) {
    let Some((first, rest)) = all.split_first() else {
        return;
    };
    let heads: Vec<String> = all
        .iter()
        .map(|f| format!("`{}`", f.variant.label()))
        .collect();
    println!("\n| | {} |", heads.join(" | "));
    println!("|---|{}", "---|".repeat(all.len()));
    for &(name, value, decimals) in ROWS {
        let base = value(first);
        let mut cells = vec![format!("{base:.decimals$}")];
        for f in rest {
            let v = value(f);
            let ratio = if base == 0.0 {
                String::new()
            } else {
                format!(" ({:.2}×)", v / base)
            };
            cells.push(format!("{v:.decimals$}{ratio}"));
        }
        println!("| {name} | {} |", cells.join(" | "));
    }
}

fn controller_binary(args: &Args) -> anyhow::Result<PathBuf> {
    let binary = args
        .controller_binary
        .clone()
        .unwrap_or_else(|| tools::workspace_root().join("target/release/pack-controller"));
    if !binary.exists() {
        bail!(
            "{} is missing: `cargo build --release -p pack-controller` first (make bench-pack does)",
            binary.display()
        );
    }
    Ok(binary)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(versions) = args.index_versions {
        let dir =
            std::env::temp_dir().join(format!("pack-operator-pack-bench-{}", std::process::id()));
        let plane = ControlPlane::start(&dir).await?;
        let client = e2e::cluster::client_from(&plane.kubeconfig).await?;
        create_namespaces(&client).await?;
        let result = index_memory(&args, versions, &dir, &plane, &client).await;
        drop(plane);
        let _ = std::fs::remove_dir_all(&dir);
        return result;
    }
    let mut all = Vec::new();
    for (n, variant) in args.scenarios().iter().enumerate() {
        let figures = run_scenario(&args, variant, n).await?;
        print_figures(&args, &figures);
        all.push(figures);
    }
    if all.len() > 1 {
        print_comparison(&all);
    }
    Ok(())
}
