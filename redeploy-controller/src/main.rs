use std::time::Duration;

use clap::Parser;
use common::{RuntimeArgs, cli::parse_duration, metrics::ReconcileMetrics, runtime::Runtime};
use redeploy_controller::{
    Settings,
    metrics::RedeployMetrics,
    scope::{NamespaceScope, Selector},
};

/// redeploy-controller: rolls out workloads annotated watch-to-redeploy when a ConfigMap or Secret they name changes.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,

    /// Wait this long after a watched object's data changes before rolling out; all changes within it
    /// make one rollout. A workload can override it with `pack-operator.k8s.kubit.ir/redeploy-delay`.
    #[arg(long, env = "REDEPLOY_DELAY", default_value = "5s", value_parser = parse_duration)]
    delay: Duration,

    /// Global rollout rate limit (rollouts per second), protecting the cluster from a flapping Secret.
    #[arg(long, env = "REDEPLOY_RATE", default_value_t = 2.0)]
    rate: f64,

    /// Rollouts that may start at once before the rate limit applies.
    #[arg(long, env = "REDEPLOY_BURST", default_value_t = 20)]
    burst: u32,

    /// Act only in namespaces whose labels match this equality-based selector, e.g. `team=a,env!=dev`
    /// (`key`, `!key`, `key=value`, `key!=value`); with `--namespace a,b` both must hold. Needs
    /// list/watch on namespaces.
    #[arg(long, env = "REDEPLOY_NAMESPACE_SELECTOR", default_value = "")]
    namespace_selector: Selector,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.runtime
        .validate_allowing_namespace_list()
        .map_err(anyhow::Error::msg)?;
    common::telemetry::init(cli.runtime.log_format, &cli.runtime.log_level)?;
    // One namespace: watched alone (namespaced RBAC works); several: watched cluster-wide and filtered.
    let names = cli.runtime.namespaces();
    let namespace = match names.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    };
    let settings = Settings {
        delay: cli.delay,
        rate: cli.rate,
        burst: cli.burst,
        concurrency: cli.runtime.concurrency,
        scope: NamespaceScope {
            names,
            selector: cli.namespace_selector.0,
        },
    };
    let mut runtime = Runtime::new(
        "redeploy-controller",
        env!("CARGO_PKG_VERSION"),
        cli.runtime,
    )
    .await?;
    let reconciles = ReconcileMetrics::register(runtime.registry(), "redeploy");
    let metrics = RedeployMetrics::register(runtime.registry());
    runtime
        .run(move |leading| {
            redeploy_controller::run(
                leading,
                namespace.clone(),
                settings.clone(),
                metrics.clone(),
                reconciles.clone(),
            )
        })
        .await?;
    Ok(())
}
