//! `kubectl pack`: drive and inspect Packs from the command line (a kubectl plugin: the binary
//! `kubectl-pack` on PATH). Parses flags and wires the modules; see README "kubectl pack".

#![allow(clippy::print_stdout)] // A CLI: stdout is its output.

mod diff;
mod drive;
mod secrets;
mod summary;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use common::crd::Pack;
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use pack_controller::offline::{Rendered, Renderer};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-pack",
    version,
    about = "Drive and inspect Pack Operator Packs"
)]
struct Cli {
    /// Namespace of the Pack (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Path of the kubeconfig file (default: $KUBECONFIG or ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask the pack-controller to reconcile (and upgrade) a Pack now, and wait for the outcome.
    Reconcile {
        pack: String,
        /// How long to wait for the controller to handle the request.
        #[arg(long, default_value = "5m", value_parser = common::cli::parse_duration)]
        timeout: Duration,
    },
    /// Stop installs, upgrades and auto-upgrades of a Pack (spec.suspend: true).
    Suspend { pack: String },
    /// Resume a suspended Pack (removes spec.suspend).
    Resume { pack: String },
    /// List Packs with chart, deployed version, Ready and their current problem.
    Get {
        pack: Option<String>,
        /// Packs of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Print the manifests the Pack's chart renders with its final values, resolved as the controller does.
    Template {
        pack: String,
        #[command(flatten)]
        render: RenderFlags,
    },
    /// Diff the rendered manifests against the live objects (server-side apply dry-run). Exit code 1
    /// when they differ, as `kubectl diff`.
    Diff {
        pack: String,
        #[command(flatten)]
        render: RenderFlags,
    },
}

#[derive(clap::Args, Debug)]
struct RenderFlags {
    /// The helm binary.
    #[arg(long, default_value = "helm")]
    helm: PathBuf,
    /// Print values from valuesFrom Secrets and rendered Secrets' data as they are.
    #[arg(long)]
    show_secrets: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn client(cli: &Cli) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cli.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cli.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => match Config::from_kubeconfig(&options).await {
            Ok(c) => c,
            Err(e) => Config::incluster().map_err(|_| e)?,
        },
    };
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (client, namespace) = client(&cli).await?;
    let packs: Api<Pack> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Reconcile { pack, timeout } => reconcile(&packs, &namespace, &pack, timeout).await,
        Command::Suspend { pack } => {
            drive::set_suspend(&packs, &pack, true).await?;
            println!("Pack {namespace}/{pack} suspended");
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { pack } => {
            drive::set_suspend(&packs, &pack, false).await?;
            println!("Pack {namespace}/{pack} resumed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Get {
            pack,
            all_namespaces,
        } => get(client, &namespace, pack, all_namespaces).await,
        Command::Template { pack, render } => {
            let (rendered, _) = render_pack(client, &packs, &pack, &render).await?;
            let shown = if render.show_secrets {
                rendered.manifests
            } else {
                secrets::shown_manifests(&rendered.manifests, &rendered.resolution.secret_strings)
            };
            print!("{shown}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff { pack, render } => {
            let (rendered, client) = render_pack(client, &packs, &pack, &render).await?;
            let diffs = diff::diff(
                &client,
                &rendered.manifests,
                &namespace,
                render.show_secrets,
            )
            .await?;
            let mut changed = false;
            for d in diffs.iter().filter(|d| !d.diff.is_empty()) {
                changed = true;
                let text = if render.show_secrets {
                    d.diff.clone()
                } else {
                    pack_controller::helm::redact(&d.diff, &rendered.resolution.secret_strings)
                };
                print!("{text}");
            }
            Ok(if changed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn reconcile(
    packs: &Api<Pack>,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    if packs.get(name).await?.spec.suspend {
        bail!("Pack {namespace}/{name} is suspended; `kubectl pack resume {name}` first");
    }
    println!("► requested a reconcile of Pack {namespace}/{name}; waiting up to {timeout:?}");
    Ok(match drive::reconcile(packs, name, timeout).await? {
        drive::Outcome::Ready(message) => {
            println!("✔ Pack {namespace}/{name} reconciled: {message}");
            ExitCode::SUCCESS
        }
        drive::Outcome::Failed(message) => {
            println!("✗ Pack {namespace}/{name} reconcile failed: {message}");
            ExitCode::from(1)
        }
        drive::Outcome::TimedOut(message) => {
            println!(
                "✗ the pack-controller did not handle the request within {timeout:?} (is it running, \
                 and is this namespace in its scope?); Ready: {message}"
            );
            ExitCode::from(1)
        }
    })
}

async fn get(
    client: Client,
    namespace: &str,
    name: Option<String>,
    all_namespaces: bool,
) -> anyhow::Result<ExitCode> {
    let packs: Vec<Pack> = match (name, all_namespaces) {
        (Some(name), _) => vec![Api::namespaced(client, namespace).get(&name).await?],
        (None, true) => Api::all(client).list(&ListParams::default()).await?.items,
        (None, false) => {
            Api::namespaced(client, namespace)
                .list(&ListParams::default())
                .await?
                .items
        }
    };
    if packs.is_empty() {
        println!("No Packs found");
        return Ok(ExitCode::SUCCESS);
    }
    let lines: Vec<summary::PackLine> = packs.iter().map(summary::PackLine::of).collect();
    print!("{}", summary::table(&lines, all_namespaces));
    Ok(ExitCode::SUCCESS)
}

/// Renders `name` with the controller's code; Helm's homes live in a private directory removed at the
/// end, chart archives in the user's cache directory.
async fn render_pack(
    client: Client,
    packs: &Api<Pack>,
    name: &str,
    flags: &RenderFlags,
) -> anyhow::Result<(Rendered, Client)> {
    let pack = packs.get(name).await?;
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("kubectl-pack");
    let work = cache.join(format!("run-{}", std::process::id()));
    let renderer = Renderer::new(
        client.clone(),
        flags.helm.clone(),
        work.clone(),
        cache.join("charts"),
    )
    .with_context(|| format!("cannot create {}", work.display()))?;
    let rendered = renderer.render(&pack).await;
    let _ = std::fs::remove_dir_all(&work);
    Ok((rendered?, client))
}
