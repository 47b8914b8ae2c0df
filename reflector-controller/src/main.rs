use std::time::Duration;

use clap::Parser;
use common::{RuntimeArgs, cli::parse_duration, metrics::ReconcileMetrics, runtime::Runtime};
use reflector_controller::{
    CopiedKind, Settings,
    metrics::ReflectorMetrics,
    targets::{NamespacePattern, TargetPolicy},
};

/// reflector-controller: keeps copies of a Secret (or a ConfigMap) in other namespaces, as each
/// SecretReflector (ConfigMapReflector) says.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    runtime: RuntimeArgs,

    /// The kinds copied, one controller each: `secret` (SecretReflectors), `configmap`
    /// (ConfigMapReflectors); comma-separated. Only the CRDs of these kinds need to be installed,
    /// and only their RBAC granted.
    #[arg(
        long,
        env = "REFLECTOR_KINDS",
        value_delimiter = ',',
        default_value = "secret",
        value_parser = CopiedKind::parse
    )]
    kinds: Vec<CopiedKind>,

    /// Only these namespaces may receive copies (comma-separated names; a trailing `*` matches a
    /// prefix, e.g. `team-*`). Empty: every namespace may.
    #[arg(long, env = "ALLOW_TARGET_NAMESPACES", value_delimiter = ',')]
    allow_target_namespaces: Vec<String>,

    /// These namespaces never receive copies (comma-separated names or `prefix*`); wins over the
    /// allow list. E.g. `kube-*`.
    #[arg(long, env = "DENY_TARGET_NAMESPACES", value_delimiter = ',')]
    deny_target_namespaces: Vec<String>,

    /// Consent mode: a namespace receives copies only from the source namespaces it names in its
    /// annotation `pack-operator.k8s.kubit.ir/reflect-from` (names or `prefix*`, comma- or
    /// space-separated; `*` = from any namespace). The source's own namespace needs no consent.
    #[arg(
        long,
        env = "REQUIRE_CONSENT",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    require_consent: bool,

    /// Every reflector is reconciled again after about this long (jittered ±10 %), as a safety
    /// net should a watch event be missed [default: 5m]. The same name as pack-controller's;
    /// `--resync` and RESYNC_PERIOD are its deprecated names.
    #[arg(long, alias = "resync", env = "RESYNC_INTERVAL", value_parser = parse_duration)]
    resync_interval: Option<Duration>,

    /// Deprecated: RESYNC_PERIOD, read when RESYNC_INTERVAL/--resync-interval is not given.
    #[arg(long, hide = true, env = "RESYNC_PERIOD", value_parser = parse_duration)]
    resync_period: Option<Duration>,
}

fn patterns(list: &[String]) -> Vec<NamespacePattern> {
    list.iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| NamespacePattern::new(p))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cli.runtime.validate().map_err(anyhow::Error::msg)?;
    common::telemetry::init(cli.runtime.log_format, &cli.runtime.log_level)?;
    let namespace = cli.runtime.namespace.clone();
    let settings = Settings {
        policy: TargetPolicy {
            allow: patterns(&cli.allow_target_namespaces),
            deny: patterns(&cli.deny_target_namespaces),
            require_consent: cli.require_consent,
        },
        concurrency: cli.runtime.concurrency,
        resync: cli
            .resync_interval
            .or(cli.resync_period)
            .unwrap_or(Duration::from_secs(5 * 60)),
    };
    let mut runtime = Runtime::new(
        "reflector-controller",
        env!("CARGO_PKG_VERSION"),
        cli.runtime,
    )
    .await?;
    let mut kinds = cli.kinds.clone();
    kinds.sort();
    kinds.dedup();
    // One set of families; each kind's controller has its own `controller` label.
    let reconciles = ReconcileMetrics::register(runtime.registry(), "reflector");
    let kinds: Vec<(CopiedKind, ReconcileMetrics)> = kinds
        .into_iter()
        .map(|k| (k, reconciles.for_controller(k.controller())))
        .collect();
    let metrics = ReflectorMetrics::register(runtime.registry());
    runtime
        .run(move |leading| {
            reflector_controller::run(
                leading,
                namespace.clone(),
                settings.clone(),
                kinds.clone(),
                metrics.clone(),
            )
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_consent_is_off_by_default_and_takes_a_bare_flag_or_a_value() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
                .unwrap()
                .require_consent
        };
        // (REQUIRE_CONSENT is not set in the test environment.)
        assert!(!parse(&[]));
        assert!(parse(&["--require-consent"]));
        assert!(parse(&["--require-consent=true"]));
        assert!(!parse(&["--require-consent=false"]));
    }

    #[test]
    fn kinds_default_to_secrets_and_take_a_list() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.kinds)
        };
        // (REFLECTOR_KINDS is not set in the test environment.)
        assert_eq!(parse(&[]).unwrap(), vec![CopiedKind::Secret]);
        assert_eq!(
            parse(&["--kinds=secret,configmap"]).unwrap(),
            vec![CopiedKind::Secret, CopiedKind::ConfigMap]
        );
        assert_eq!(
            parse(&["--kinds=configmap"]).unwrap(),
            vec![CopiedKind::ConfigMap]
        );
        assert!(parse(&["--kinds=pods"]).is_err());
    }
}
