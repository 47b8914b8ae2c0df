use std::{path::PathBuf, time::Duration};

use clap::Parser;
use common::{
    RuntimeArgs,
    cli::parse_duration,
    crd::{ClusterPackRepository, PackRepository},
    metrics::ReconcileMetrics,
    runtime::Runtime,
};
use pack_controller::{
    controller::{Metrics, Settings},
    helm::HelmConfig,
    metrics::{HelmMetrics, PackStates},
    repository_kind::Repository,
};

/// pack-controller: installs, upgrades and uninstalls the Helm release of each Pack.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,

    /// Largest repository index.yaml accepted, in bytes (real indexes reach 15-100 MB). A larger one
    /// leaves the repository Ready=False (IndexTooLarge) and keeps serving the previous index.
    #[arg(long, env = "MAX_INDEX_SIZE", default_value_t = pack_controller::index::DEFAULT_MAX_INDEX_BYTES)]
    max_index_size: u64,

    /// Largest a Pack's values may get once its vars are applied, in bytes of JSON (default 1 MiB: Helm
    /// stores values in a release Secret capped at 1 MiB; real charts' values are kilobytes). A larger
    /// Pack is Ready=False (ValuesTooLarge) and no Helm runs for it.
    #[arg(long, env = "MAX_VALUES_SIZE", default_value_t = pack_controller::resolve::DEFAULT_MAX_VALUES_BYTES)]
    max_values_size: usize,

    /// The helm binary (Helm 3.13+ or 4).
    #[arg(long, env = "HELM_BINARY", default_value = "helm")]
    helm_binary: PathBuf,

    /// Writable directory for Helm's cache/config, values files and downloaded charts.
    #[arg(long, env = "PACK_WORK_DIR", default_value = "/tmp/pack-operator")]
    work_dir: PathBuf,

    /// `helm --timeout` of each install, upgrade, rollback and uninstall.
    #[arg(long, env = "HELM_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    helm_timeout: Duration,

    /// `helm --history-max`: release revisions kept (each holds the values, in a Secret capped at 1 MiB).
    /// `--max-history` is its deprecated name.
    #[arg(
        long = "helm-max-history",
        alias = "max-history",
        env = "HELM_MAX_HISTORY",
        default_value_t = 5
    )]
    max_history: u32,

    /// Helm processes at once, across all Packs (one per Pack at a time in any case).
    #[arg(long, env = "HELM_CONCURRENCY", default_value_t = 4)]
    helm_concurrency: usize,

    /// How often each Pack is looked at again when nothing it watches changed (a safety net, ±10 %;
    /// an up-to-date Pack costs two API reads and no Helm process). At least 1s.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    resync_interval: Duration,

    /// The ServiceAccount of its own namespace that a Pack without spec.serviceAccountName runs as: every
    /// Helm operation of its release is impersonated as it (lock-down mode of a multi-tenant cluster).
    /// Empty: such Packs run with the controller's own rights.
    #[arg(long, env = "DEFAULT_SERVICE_ACCOUNT", default_value = "")]
    default_service_account: String,

    /// Lets `spec.dependsOn` name Packs of other namespaces (refused as CrossNamespaceDependency
    /// otherwise). Off by default: a tenant's Pack then cannot observe or wait on another team's Packs.
    #[arg(
        long,
        env = "ALLOW_CROSS_NAMESPACE_DEPENDENCIES",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    allow_cross_namespace_dependencies: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.runtime
        .validate_allowing_namespace_list()
        .map_err(anyhow::Error::msg)?;
    if cli.helm_concurrency == 0 {
        anyhow::bail!("--helm-concurrency must be at least 1");
    }
    if cli.resync_interval < Duration::from_secs(1) {
        anyhow::bail!("--resync-interval must be at least 1s");
    }
    common::telemetry::init(cli.runtime.log_format, &cli.runtime.log_level)?;
    pack_controller::helm::prepare_work_dir(&cli.work_dir).map_err(|e| {
        anyhow::anyhow!(
            "--work-dir {} is not writable ({e}): point it at a writable directory (the chart mounts an emptyDir at /tmp)",
            cli.work_dir.display()
        )
    })?;
    let settings = Settings {
        namespaces: cli.runtime.namespaces(),
        max_index_bytes: cli.max_index_size,
        max_values_bytes: cli.max_values_size,
        concurrency: cli.runtime.concurrency,
        resync: cli.resync_interval,
        default_service_account: Some(cli.default_service_account).filter(|s| !s.is_empty()),
        allow_cross_namespace_dependencies: cli.allow_cross_namespace_dependencies,
        helm: HelmConfig {
            binary: cli.helm_binary,
            work_dir: cli.work_dir,
            timeout: cli.helm_timeout,
            max_history: cli.max_history,
            concurrency: cli.helm_concurrency,
            term_grace: pack_controller::helm::kill_after(cli.runtime.shutdown_grace),
        },
    };
    let mut runtime =
        Runtime::new("pack-controller", env!("CARGO_PKG_VERSION"), cli.runtime).await?;
    let packs = ReconcileMetrics::register(runtime.registry(), "pack");
    let metrics = Metrics {
        // The repository loop's series are those of the same families, labelled controller="clusterpackrepository".
        repositories: packs.for_controller(ClusterPackRepository::CONTROLLER),
        pack_repositories: packs.for_controller(PackRepository::CONTROLLER),
        packs,
        helm: HelmMetrics::register(runtime.registry()),
        states: PackStates::register(runtime.registry()),
    };
    runtime
        .run(move |leading| pack_controller::run(leading, settings.clone(), metrics.clone()))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn helm_max_history_keeps_its_deprecated_name() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .unwrap()
                .max_history
        };
        // (HELM_MAX_HISTORY is not set in the test environment.)
        assert_eq!(parse(&[]), 5);
        assert_eq!(parse(&["--helm-max-history=7"]), 7);
        assert_eq!(parse(&["--max-history=3"]), 3);
        assert!(
            !Cli::command()
                .render_help()
                .to_string()
                .contains("--max-history <"),
            "the old name is hidden (only the doc names it)"
        );
    }
}
