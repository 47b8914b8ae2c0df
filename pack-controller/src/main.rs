use clap::Parser;
use common::{RuntimeArgs, metrics::ReconcileMetrics, runtime::Runtime};

/// pack-controller: installs, upgrades and uninstalls the Helm release of each Pack.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.runtime.validate().map_err(anyhow::Error::msg)?;
    common::telemetry::init(cli.runtime.log_format, &cli.runtime.log_level)?;
    let namespace = cli.runtime.namespace.clone();
    let mut runtime =
        Runtime::new("pack-controller", env!("CARGO_PKG_VERSION"), cli.runtime).await?;
    let metrics = pack_controller::reconcile::Metrics {
        packs: ReconcileMetrics::register(runtime.registry(), "pack"),
        // A sub-registry: the same families registered twice would be duplicates in the exposition.
        repositories: ReconcileMetrics::register(
            runtime.registry().sub_registry_with_prefix("repository"),
            "clusterpackrepository",
        ),
    };
    runtime
        .run(move |leading| pack_controller::run(leading, namespace.clone(), metrics.clone()))
        .await?;
    Ok(())
}
