use clap::Parser;
use common::{RuntimeArgs, metrics::ReconcileMetrics, runtime::Runtime};

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.runtime.validate().map_err(anyhow::Error::msg)?;
    common::telemetry::init(cli.runtime.log_format, &cli.runtime.log_level)?;
    let namespace = cli.runtime.namespace.clone();
    let max_index_size = cli.max_index_size;
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
        .run(move |leading| {
            pack_controller::run(leading, namespace.clone(), metrics.clone(), max_index_size)
        })
        .await?;
    Ok(())
}
