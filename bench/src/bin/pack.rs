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
//! With `--index-versions N` it measures instead what a large repository index costs the controller: a
//! generated `index.yaml` of N chart versions (over `--index-charts` charts, about 245 bytes per entry as
//! `helm repo index` writes them, no archives) is served without `ETag`/`Last-Modified`, so every refresh
//! downloads and parses it in full; one ClusterPackRepository refreshes it every `--index-interval`, no
//! Pack exists. Reports the controller's RSS before the repository exists, at rest after the first fetch,
//! after each of `--index-refreshes` refreshes, and its high-water mark (VmHWM: the peak of the whole run).
//!
//!   cargo run --release -p bench --bin pack-bench -- [--packs 100 --steady-seconds 300]
//!   cargo run --release -p bench --bin pack-bench -- --index-versions 100000

#![allow(clippy::print_stdout)] // a benchmark prints its figures

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::Parser;
use common::crd::{ClusterPackRepository, Pack, pack::PackState};
use e2e::{
    cluster::ControlPlane,
    controller::ControllerProcess,
    packs::{ChartServer, apiserver_requests, create_repository_with_interval, helm_operations},
    tools,
};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api,
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

fn values(i: usize) -> serde_json::Value {
    json!({"gonbad": {"workloads": {"app": {
        "replicaCount": 1,
        "annotations": {"bench": i.to_string()},
        "containers": {"app": {"image": {"repository": "nginx", "tag": "1.27"}}},
    }}}})
}

fn pack(name: &str, repo: &str, values: serde_json::Value) -> Pack {
    serde_json::from_value(json!({
        "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
        "metadata": {"name": name},
        "spec": {
            "chart": {"repository": {"kind": "ClusterPackRepository", "name": repo}, "name": "genpack", "version": "^1"},
            "values": values,
        },
    }))
    .unwrap()
}

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

use bench::{cpu_seconds, generated_index, mib, percentile, rss_kib};

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
    client: &kube::Client,
) -> anyhow::Result<()> {
    // ChartServer removes the parent of what it serves when dropped.
    let repo_dir = dir.join("index").join("repo");
    std::fs::create_dir_all(&repo_dir)?;
    let text = generated_index(versions, args.index_charts);
    let bytes = text.len();
    std::fs::write(repo_dir.join("index.yaml"), text)?;
    // Serves files as they are, without ETag or Last-Modified: no refresh can be a 304.
    let server = ChartServer::start(repo_dir).await;

    let binary = controller_binary(args)?;
    let work = dir.join("work");
    let controller_args = [
        "--lease-namespace=bench-packs".to_owned(),
        "--log-level=info".to_owned(),
        format!("--helm-binary={}", tools::tool("helm")?.display()),
        format!("--work-dir={}", work.display()),
    ];
    let controller_args: Vec<&str> = controller_args.iter().map(String::as_str).collect();
    let controller =
        ControllerProcess::start_path(&plane.kubeconfig, &binary, "pack-bench", &controller_args)
            .context("start pack-controller")?;
    let pid = controller.pid();
    // Leading and idle before the repository exists.
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
        binary.display(),
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
    let dir = std::env::temp_dir().join(format!("pack-operator-pack-bench-{}", std::process::id()));
    let plane = ControlPlane::start(&dir).await?;
    let client = e2e::cluster::client_from(&plane.kubeconfig).await?;
    for ns in ["bench-packs", "bench-helm", "bench-one"] {
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await?;
    }
    if let Some(versions) = args.index_versions {
        let result = index_memory(&args, versions, &dir, &plane, &client).await;
        drop(plane);
        let _ = std::fs::remove_dir_all(&dir);
        return result;
    }
    let server = ChartServer::with_versions("pack-bench", &["1.0.0"]).await;
    create_repository_with_interval(&client, "bench", &server.url, &args.repository_interval).await;

    let binary = controller_binary(&args)?;
    let helm = tools::tool("helm")?;
    let work = dir.join("work");
    let controller_args = [
        "--lease-namespace=bench-packs".to_owned(),
        "--log-level=info".to_owned(),
        format!("--helm-binary={}", helm.display()),
        format!("--work-dir={}", work.display()),
        format!("--helm-concurrency={}", args.helm_concurrency),
        format!("--resync-interval={}", args.resync_interval),
    ];
    let controller_args: Vec<&str> = controller_args.iter().map(String::as_str).collect();
    let controller =
        ControllerProcess::start_path(&plane.kubeconfig, &binary, "pack-bench", &controller_args)
            .context("start pack-controller")?;
    let pid = controller.pid();

    // 1. N Packs at once.
    let packs: Api<Pack> = Api::namespaced(client.clone(), "bench-packs");
    let started = Instant::now();
    stream::iter(0..args.packs)
        .map(|i| {
            let packs = packs.clone();
            async move {
                packs
                    .create(
                        &PostParams::default(),
                        &pack(&format!("p-{i}"), "bench", values(i)),
                    )
                    .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let mut peak_rss = 0;
    let install_all = loop {
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
    let ops_after_install = helm_operations(&controller).await;

    // 2. Steady state. The resources the controller reads and writes (the benchmark itself only sleeps
    // meanwhile). kube-controller-manager writes core Events of the Deployments the Packs made (still
    // catching up after a large install) and renews Leases: both are told apart below.
    let resources = [
        "packs",
        "clusterpackrepositories",
        "secrets",
        "events",
        "leases",
    ];
    tokio::time::sleep(Duration::from_secs(5)).await;
    let api0 = apiserver_requests(&client, &resources).await?;
    let cpu0 = cpu_seconds(pid);
    let ops0 = helm_operations(&controller).await;
    let rec0 = controller
        .metric("pack_operator_reconciles_total{controller=\"pack\"}")
        .await?
        .unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
    let cpu1 = cpu_seconds(pid);
    let ops1 = helm_operations(&controller).await;
    let rec1 = controller
        .metric("pack_operator_reconciles_total{controller=\"pack\"}")
        .await?
        .unwrap_or(0.0);
    let rss_steady = rss_kib(pid).0;
    let api1 = apiserver_requests(&client, &resources).await?;
    let api: Vec<(String, f64)> = api1
        .iter()
        .map(|(k, n)| (k.clone(), n - api0.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .collect();
    let api_total: f64 = api.iter().map(|(_, n)| n).sum();

    // 3. One Pack install vs a bare helm upgrade --install of the same archive and values.
    let archive = std::fs::read_dir(&server.dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("chart archive")?;
    let home = dir.join("helm-bare");
    let values_file = dir.join("bare-values.json");
    let mut bare = Vec::new();
    let mut via_pack = Vec::new();
    let install_sum = "pack_operator_helm_operation_duration_seconds_sum{operation=\"install\"}";
    let install_count =
        "pack_operator_helm_operation_duration_seconds_count{operation=\"install\"}";
    let helm0 = (
        controller.metric(install_sum).await?.unwrap_or(0.0),
        controller.metric(install_count).await?.unwrap_or(0.0),
    );
    let one: Api<Pack> = Api::namespaced(client.clone(), "bench-one");
    for r in 0..args.repeat {
        std::fs::write(&values_file, serde_json::to_vec(&values(r))?)?;
        let t = Instant::now();
        let out = std::process::Command::new(&helm)
            .args([
                "--kubeconfig",
                plane.kubeconfig.to_str().unwrap(),
                "upgrade",
                &format!("bare-{r}"),
                archive.to_str().unwrap(),
                "--install",
                "-n",
                "bench-helm",
                "-f",
                values_file.to_str().unwrap(),
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
        bare.push(t.elapsed().as_secs_f64());

        let t = Instant::now();
        one.create(
            &PostParams::default(),
            &pack(&format!("one-{r}"), "bench", values(r)),
        )
        .await?;
        wait_applied(&one, r + 1, Duration::from_secs(120)).await?;
        via_pack.push(t.elapsed().as_secs_f64());
    }
    let helm_in_controller = (controller.metric(install_sum).await?.unwrap_or(0.0) - helm0.0)
        / (controller.metric(install_count).await?.unwrap_or(0.0) - helm0.1);
    bare.sort_by(f64::total_cmp);
    via_pack.sort_by(f64::total_cmp);
    let bare_median = percentile(&bare, 0.5);
    let pack_median = percentile(&via_pack, 0.5);

    let steady = args.steady_seconds as f64;
    println!(
        "pack-controller (release), helm {}, {} Packs, --helm-concurrency {}",
        helm.display(),
        args.packs,
        args.helm_concurrency
    );
    println!(
        "install {} Packs: {:.1} s wall ({:.2} s per Pack), {} helm processes",
        args.packs,
        install_all.as_secs_f64(),
        install_all.as_secs_f64() / args.packs as f64,
        ops_after_install
    );
    println!(
        "controller RSS: {:.1} MiB after installing, {:.1} MiB peak sampled, {:.1} MiB high-water mark",
        rss_after as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "steady state over {steady:.0} s (repository interval {}, resync interval {}): {:.2} CPU s ({:.3}% of one core), {} helm processes, {} reconciles, RSS {:.1} MiB",
        args.repository_interval,
        args.resync_interval,
        cpu1 - cpu0,
        (cpu1 - cpu0) / steady * 100.0,
        ops1 - ops0,
        rec1 - rec0,
        rss_steady as f64 / 1024.0
    );
    let api_list: Vec<String> = api.iter().map(|(k, n)| format!("{k} {n}")).collect();
    // Leases: leader election, and the API server's own identity Lease. Core `events`: kube-controller-
    // manager's (the controller's Events are events.k8s.io).
    let pack_work: f64 = api
        .iter()
        .filter(|(k, _)| !k.contains(" leases.") && !k.ends_with(" events"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "  API requests meanwhile (WATCH not counted): {api_total}; the controller's own (without Leases and kube-controller-manager's core Events) {pack_work} ({:.2} per reconcile): {}",
        pack_work / (rec1 - rec0).max(1.0),
        api_list.join(", ")
    );
    println!(
        "one install, median of {}: bare helm upgrade --install {:.2} s, Pack → Applied {:.2} s, ratio {:.2}×",
        args.repeat,
        bare_median,
        pack_median,
        pack_median / bare_median
    );
    println!(
        "  of which helm inside the controller: {helm_in_controller:.2} s (mean); the rest ({:.2} s) is watch, \
         finalizer, status writes and the chart cache",
        pack_median - helm_in_controller
    );
    drop(controller);
    drop(plane);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
