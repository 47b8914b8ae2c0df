//! The pack side of `make bench-peers`: pack-controller against Flux source-controller + helm-controller,
//! the same chart (genpack, served over HTTP by the e2e harness's `ChartServer`), the same values, each
//! alone in turn. Flux runs with `install/upgrade.disableWait` and `disableWaitForJobs` (no kubelet here),
//! like-for-like with Packs without `spec.wait`.
//!
//! Per side and round: `--packs` objects created at once until all are ready (Pack `Applied`, HelmRelease
//! `Ready=True`, both at their generation); the controllers' process trees sampled every 100 ms for the
//! peak of their summed RSS and of their summed PSS (`/proc/<pid>/smaps_rollup`: a page shared by n
//! processes counts 1/n in each, so the executable pages of concurrent helm processes count once, as the
//! node's memory holds them once); CPU seconds from /proc (utime+stime, plus cutime+cstime: exited helm
//! children); RSS at rest 5 s after; then an upgrade of all of them (one value changed).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bench::{mib, pack_variants::values, pss_kib};
use e2e::{
    cluster::{ControlPlane, free_port, install_crds},
    controller::ControllerProcess,
    packs::ChartServer,
    tools,
};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;

use super::{Figure, Proc};

const REPO: &str = "peers-genpack";
const REPO_NS: &str = "default";
/// Namespaces the objects of one side and round are spread over.
const NAMESPACES: usize = 4;

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Ours,
    Flux,
}

fn resource(side: Side) -> ApiResource {
    let (group, version, kind, plural) = match side {
        Side::Ours => ("k8s.kubit.ir", "v1alpha1", "Pack", "packs"),
        Side::Flux => (
            "helm.toolkit.fluxcd.io",
            "v2",
            "HelmRelease",
            "helmreleases",
        ),
    };
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: format!("{group}/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

fn helm_repository() -> ApiResource {
    ApiResource {
        group: "source.toolkit.fluxcd.io".into(),
        version: "v1".into(),
        api_version: "source.toolkit.fluxcd.io/v1".into(),
        kind: "HelmRepository".into(),
        plural: "helmrepositories".into(),
    }
}

/// The object `i` of `side`: genpack `^1` with the pack bench's values, annotation `bench` set to `tag`.
fn object(side: Side, i: usize, tag: &str) -> anyhow::Result<DynamicObject> {
    let mut vals = values(i);
    vals["gonbad"]["workloads"]["app"]["annotations"]["bench"] = json!(tag);
    let ar = resource(side);
    let spec = match side {
        Side::Ours => json!({
            "chart": {"repository": {"kind": "ClusterPackRepository", "name": REPO}, "name": "genpack", "version": "^1"},
            "values": vals,
        }),
        Side::Flux => {
            let no_wait = json!({"disableWait": true, "disableWaitForJobs": true});
            json!({
                "interval": "10m",
                "chart": {"spec": {"chart": "genpack", "version": "^1",
                    "sourceRef": {"kind": "HelmRepository", "name": REPO, "namespace": REPO_NS}}},
                "install": no_wait, "upgrade": no_wait,
                "values": vals,
            })
        }
    };
    Ok(serde_json::from_value(json!({
        "apiVersion": ar.api_version, "kind": ar.kind,
        "metadata": {"name": format!("r-{i}")},
        "spec": spec,
    }))?)
}

/// Ready at its current generation: a Pack `Applied`, anything else `Ready=True`.
fn ready(side: Side, o: &DynamicObject) -> bool {
    let status = &o.data["status"];
    let generation = o.metadata.generation.unwrap_or(0);
    if status["observedGeneration"].as_i64() != Some(generation) {
        return false;
    }
    match side {
        Side::Ours => status["state"] == "Applied",
        Side::Flux => status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True"),
    }
}

/// Processes of one side: ours the controller (its helm children are its descendants), Flux's two.
struct Running {
    ours: Option<ControllerProcess>,
    flux: Vec<Proc>,
}

impl Running {
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.flux.iter().map(|p| p.child.id()).collect();
        pids.extend(self.ours.as_ref().map(ControllerProcess::pid));
        pids
    }
}

/// (parent, RSS KiB) of every process in /proc.
fn processes() -> Vec<(u32, u32, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After "pid (comm) ": ppid is field 1, rss (pages) field 21.
            let ppid = f.get(1)?.parse().ok()?;
            let pages: u64 = f.get(21)?.parse().ok()?;
            Some((pid, ppid, pages * 4))
        })
        .collect()
}

/// The summed RSS and PSS (KiB) of `roots` and all their descendants.
fn tree_memory(roots: &[u32]) -> (u64, u64) {
    let all = processes();
    let mut tree: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(all.iter().filter(|p| p.1 == parent).map(|p| p.0));
        i += 1;
    }
    all.iter()
        .filter(|p| tree.contains(&p.0))
        .map(|p| (p.2, pss_kib(p.0)))
        .fold((0, 0), |(rss, pss), p| (rss + p.0, pss + p.1))
}

/// utime+stime+cutime+cstime of `pids`, in seconds (ticks of 1/100 s).
fn cpu(pids: &[u32]) -> f64 {
    let one = |pid: &u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            return 0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        (11..=14)
            .map(|i| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum::<u64>()
    };
    pids.iter().map(one).sum::<u64>() as f64 / 100.0
}

/// Samples the summed RSS and PSS of `roots`' trees every 100 ms until the returned flag is set; the
/// peak of each (KiB).
fn sample_peak(roots: Vec<u32>) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut peak = (0, 0);
        while !s.load(Ordering::SeqCst) {
            let (rss, pss) = tree_memory(&roots);
            peak = (peak.0.max(rss), peak.1.max(pss));
            std::thread::sleep(Duration::from_millis(100));
        }
        peak
    });
    (stop, task)
}

/// The figures of one side and round.
struct Run {
    install: f64,
    install_cpu: f64,
    peak: u64,
    peak_pss: u64,
    rest: u64,
    upgrade: f64,
    upgrade_cpu: f64,
}

/// Everything both sides share: the cluster, the served chart, the peers' directory.
pub struct PackCtx<'a> {
    pub client: Client,
    pub plane: &'a ControlPlane,
    pub peers: PathBuf,
    pub dir: PathBuf,
    pub server: ChartServer,
    pub packs: usize,
    /// false (`--no-peer`): only ours runs, to compare settings of our own (no figures, rounds printed).
    pub with_peer: bool,
}

impl PackCtx<'_> {
    fn label(&self, side: Side, round: usize) -> String {
        let s = if side == Side::Ours { "ours" } else { "flux" };
        format!("{s}-{round}")
    }

    /// Starts `side` and waits until it works: ours leading, Flux's HelmRepository `Ready`.
    async fn start(&self, side: Side, round: usize) -> anyhow::Result<Running> {
        let label = self.label(side, round);
        let mut running = match side {
            Side::Ours => Running {
                ours: Some(self.start_ours(&label)?),
                flux: vec![],
            },
            Side::Flux => Running {
                ours: None,
                flux: self.start_flux(&label)?,
            },
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.working(&mut running).await? {
            if Instant::now() > deadline {
                bail!(
                    "{label} not working after 2 minutes (logs in {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The informers' first lists are done and their temporaries freed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(running)
    }

    async fn working(&self, running: &mut Running) -> anyhow::Result<bool> {
        if let Some(ours) = &running.ours {
            return Ok(ours.metric("pack_operator_leader").await.ok().flatten() == Some(1.0));
        }
        for p in &mut running.flux {
            if let Some(status) = p.child.try_wait()? {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                bail!("exited ({status}): {log}");
            }
        }
        let repos: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), REPO_NS, &helm_repository());
        Ok(repos.get(REPO).await.is_ok_and(|r| ready(Side::Flux, &r)))
    }

    fn start_ours(&self, label: &str) -> anyhow::Result<ControllerProcess> {
        let binary = tools::workspace_root().join("target/release/pack-controller");
        let args = [
            format!("--lease-namespace={REPO_NS}"),
            "--log-level=warn".to_owned(),
            format!("--helm-binary={}", tools::tool("helm")?.display()),
            format!(
                "--work-dir={}",
                self.dir.join(format!("work-{label}")).display()
            ),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ControllerProcess::start_path(&self.plane.kubeconfig, &binary, "peers-bench", &args)
            .context("start pack-controller")
    }

    fn start_flux(&self, label: &str) -> anyhow::Result<Vec<Proc>> {
        let storage = free_port()?;
        let path = self.dir.join(format!("storage-{label}"));
        std::fs::create_dir_all(&path)?;
        let source = [
            format!("--storage-path={}", path.display()),
            format!("--storage-addr=127.0.0.1:{storage}"),
            format!("--storage-adv-addr=127.0.0.1:{storage}"),
        ];
        Ok(vec![
            self.spawn_flux("source-controller", label, &source)?,
            self.spawn_flux("helm-controller", label, &[])?,
        ])
    }

    fn spawn_flux(&self, name: &str, label: &str, extra: &[String]) -> anyhow::Result<Proc> {
        let (metrics, health) = (free_port()?, free_port()?);
        let log = self.dir.join(format!("{name}-{label}.log"));
        let file = std::fs::File::create(&log)?;
        let path = self.peers.join(name);
        let child = Command::new(&path)
            .env("KUBECONFIG", &self.plane.kubeconfig)
            .env("RUNTIME_NAMESPACE", REPO_NS)
            .arg(format!("--metrics-addr=127.0.0.1:{metrics}"))
            .arg(format!("--health-addr=127.0.0.1:{health}"))
            .arg("--enable-leader-election=false")
            .arg("--log-level=error")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        Ok(Proc {
            child,
            port: health,
            log,
        })
    }

    fn api(&self, side: Side) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &resource(side))
    }

    /// Waits until all `packs` objects labelled `label` are ready at their generation.
    async fn wait_ready(&self, side: Side, label: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let lp = ListParams::default().labels(&format!("peers-bench={label}"));
        loop {
            let list = self.api(side).list(&lp).await?;
            let n = list.items.iter().filter(|o| ready(side, o)).count();
            if n >= self.packs {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(1800) {
                bail!(
                    "{label}: {n} of {} ready after 30 min (logs in {})",
                    self.packs,
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl PackCtx<'_> {
    fn namespace(label: &str, i: usize) -> String {
        format!("{label}-{}", i % NAMESPACES)
    }

    /// Creates (or, `upgrade`, patches) all objects of `label` at once, 16 requests in flight.
    async fn write_all(&self, side: Side, label: &str, upgrade: bool) -> anyhow::Result<()> {
        stream::iter(0..self.packs)
            .map(|i| async move {
                let ns = Self::namespace(label, i);
                let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &ns, &resource(side));
                if upgrade {
                    let patch = json!({"spec": {"values": {"gonbad": {"workloads": {"app": {"annotations": {"bench": "upgraded"}}}}}}});
                    api.patch(&format!("r-{i}"), &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                } else {
                    let mut o = object(side, i, &i.to_string())?;
                    o.labels_mut().insert("peers-bench".into(), label.to_owned());
                    api.create(&PostParams::default(), &o).await?;
                }
                anyhow::Ok(())
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// One side, one round: install, rest, upgrade.
    async fn run(&self, side: Side, round: usize) -> anyhow::Result<Run> {
        let label = self.label(side, round);
        for k in 0..NAMESPACES.min(self.packs) {
            let obj: Namespace =
                serde_json::from_value(json!({"metadata": {"name": Self::namespace(&label, k)}}))?;
            Api::<Namespace>::all(self.client.clone())
                .create(&PostParams::default(), &obj)
                .await?;
        }
        let running = self.start(side, round).await?;
        let pids = running.pids();
        let (cpu0, started) = (cpu(&pids), Instant::now());
        let (stop, peak) = sample_peak(pids.clone());
        self.write_all(side, &label, false).await?;
        let installed = self.wait_ready(side, &label).await;
        stop.store(true, Ordering::SeqCst);
        let (peak, peak_pss) = peak.await?;
        installed?;
        let (install, install_cpu) = (started.elapsed().as_secs_f64(), cpu(&pids) - cpu0);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (rest, _) = tree_memory(&pids);
        let (cpu1, started) = (cpu(&pids), Instant::now());
        self.write_all(side, &label, true).await?;
        self.wait_ready(side, &label).await?;
        let (upgrade, upgrade_cpu) = (started.elapsed().as_secs_f64(), cpu(&pids) - cpu1);
        drop(running);
        Ok(Run {
            install,
            install_cpu,
            peak,
            peak_pss,
            rest,
            upgrade,
            upgrade_cpu,
        })
    }

    /// The Flux CRDs, the ClusterPackRepository and the HelmRepository of the served chart.
    async fn setup(&self) -> anyhow::Result<()> {
        bench::pack_variants::create_repository(&self.client, REPO, &self.server.url, "10m", false)
            .await?;
        if !self.with_peer {
            return Ok(());
        }
        install_crds(&self.client, &self.peers.join("crds")).await?;
        let repo: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "HelmRepository",
            "metadata": {"name": REPO, "namespace": REPO_NS},
            "spec": {"url": self.server.url, "interval": "10m"},
        }))?;
        Api::<DynamicObject>::namespaced_with(self.client.clone(), REPO_NS, &helm_repository())
            .create(&PostParams::default(), &repo)
            .await?;
        Ok(())
    }
}

/// The pack side's figures: `rounds` of A/B, ours then Flux.
pub async fn figures(ctx: &PackCtx<'_>, rounds: usize) -> anyhow::Result<Vec<Figure>> {
    ctx.setup().await?;
    let (mut ours, mut flux) = (vec![], vec![]);
    for round in 0..rounds {
        let sides = [(Side::Ours, &mut ours), (Side::Flux, &mut flux)];
        let sides = sides.into_iter().take(if ctx.with_peer { 2 } else { 1 });
        for (side, runs) in sides {
            let run: Run = ctx.run(side, round).await?;
            println!(
                "  round {} {}: install {:.1} s ({:.1} CPU s, peak RSS {:.1} MiB, PSS {:.1} MiB), rest {:.1} MiB, upgrade {:.1} s ({:.1} CPU s)",
                round + 1,
                if side == Side::Ours {
                    "pack-controller"
                } else {
                    "Flux"
                },
                run.install,
                run.install_cpu,
                mib(run.peak),
                mib(run.peak_pss),
                mib(run.rest),
                run.upgrade,
                run.upgrade_cpu
            );
            runs.push(run);
        }
    }
    if !ctx.with_peer {
        return Ok(vec![]);
    }
    let n = ctx.packs;
    let figure = |name: String, unit: &'static str, f: fn(&Run) -> f64| Figure {
        name,
        unit,
        ours: ours.iter().map(f).collect(),
        peer: flux.iter().map(f).collect(),
        peer_name: "Flux",
    };
    Ok(vec![
        figure(
            format!("pack: install {n} releases, wall to all ready"),
            "s",
            |r| r.install,
        ),
        figure(
            format!("pack: install {n}, CPU (incl. helm children)"),
            "s",
            |r| r.install_cpu,
        ),
        figure(
            "pack: peak RSS during install (process trees, 100 ms samples)".to_owned(),
            "MiB",
            |r| mib(r.peak),
        ),
        figure(
            "pack: peak PSS during install (process trees; shared pages counted once)".to_owned(),
            "MiB",
            |r| mib(r.peak_pss),
        ),
        figure(
            format!("pack: RSS at rest after {n} installed"),
            "MiB",
            |r| mib(r.rest),
        ),
        figure(
            format!("pack: upgrade {n} (one value), wall to all ready"),
            "s",
            |r| r.upgrade,
        ),
        figure(format!("pack: upgrade {n}, CPU"), "s", |r| r.upgrade_cpu),
    ])
}
