//! Flags every controller binary accepts. Each has an environment-variable fallback so the Helm chart
//! can set them either way.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable text.
    Text,
}

/// Runtime flags shared by the three controllers; flatten into each binary's clap struct.
#[derive(Clone, Debug, Args)]
pub struct RuntimeArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,kube=debug`.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Address of the HTTP server that serves /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,

    /// Watch and act on this namespace only (default: all namespaces). Useful to shard or to run with
    /// namespaced RBAC. pack-controller also accepts a comma-separated list.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Take part in Lease-based leader election so that only one replica acts. Turn off only when
    /// running a single replica.
    #[arg(
        long,
        env = "LEADER_ELECT",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub leader_elect: bool,

    /// Name of the coordination.k8s.io Lease used for leader election (default: the controller's name).
    #[arg(long, env = "LEADER_ELECTION_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Namespace of the leader-election Lease (default: the pod's namespace from the service account,
    /// else `default`).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a Lease is valid without renewal: a standby takes over at most this long after a leader
    /// dies without releasing it.
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// A leader that has not renewed its Lease for this long stops acting. Must be shorter than the
    /// lease duration, so a leader that cannot reach the API server stops before anyone else may start.
    #[arg(long, env = "LEADER_ELECTION_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,

    /// How often candidates try to acquire, and the leader renews, the Lease.
    #[arg(long, env = "LEADER_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,

    /// After SIGTERM/SIGINT, how long the controller may take to finish in-flight work (pack-controller:
    /// running Helm processes, which get SIGTERM at once and SIGKILL shortly before this ends). The
    /// leader keeps renewing its Lease meanwhile, then releases it. Keep it below the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Reconciles run at once, per controller loop. Bounds API connections and memory: each concurrent
    /// reconcile may hold its own HTTP/TLS connection.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Identity of this replica in the Lease (default: POD_NAME or the host name, plus a random suffix).
    #[arg(long, env = "LEADER_ELECTION_IDENTITY")]
    pub identity: Option<String>,
}

impl RuntimeArgs {
    /// The namespaces of `--namespace` (comma-separated, trimmed); empty = all namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespace
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Checks relations between flags that clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.namespaces().len() > 1 {
            return Err(format!(
                "--namespace {:?}: this controller watches one namespace or all (only pack-controller \
                 accepts a list)",
                self.namespace.as_deref().unwrap_or_default()
            ));
        }
        self.validate_allowing_namespace_list()
    }

    /// As [`RuntimeArgs::validate`], for a controller that accepts a list of namespaces.
    pub fn validate_allowing_namespace_list(&self) -> Result<(), String> {
        if self.namespace.is_some() && self.namespaces().is_empty() {
            return Err("--namespace is empty; omit it to watch all namespaces".into());
        }
        if self.leader_elect {
            if self.renew_deadline >= self.lease_duration {
                return Err(format!(
                    "--renew-deadline ({:?}) must be shorter than --lease-duration ({:?})",
                    self.renew_deadline, self.lease_duration
                ));
            }
            if self.retry_period >= self.renew_deadline {
                return Err(format!(
                    "--retry-period ({:?}) must be shorter than --renew-deadline ({:?})",
                    self.retry_period, self.renew_deadline
                ));
            }
        }
        Ok(())
    }
}

/// The grammar of every duration Pack Operator reads, in the CRDs' schemas (as Flux's) and in the flags
/// and annotations [`parse_duration`] parses: one or more decimal numbers, each with a unit `ms`, `s`, `m`
/// or `h`, e.g. `500ms`, `15s`, `1.5h`, `1h30m`. No sign, no spaces, no bare number.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Inputs of the duration grammar with what they mean (`None`: refused). The unit test of
/// [`parse_duration`] and the e2e test of the CRDs' [`DURATION_PATTERN`] on the API server both run it,
/// so the parser and the schema cannot drift apart.
pub const DURATION_EXAMPLES: &[(&str, Option<Duration>)] = &[
    ("15s", Some(Duration::from_secs(15))),
    ("500ms", Some(Duration::from_millis(500))),
    ("5m", Some(Duration::from_secs(300))),
    ("1h", Some(Duration::from_secs(3600))),
    ("1h30m", Some(Duration::from_secs(5400))),
    ("1m30s500ms", Some(Duration::from_millis(90_500))),
    ("1.5s", Some(Duration::from_millis(1500))),
    ("0.5ms", Some(Duration::from_micros(500))),
    ("1.25h", Some(Duration::from_secs(4500))),
    ("0s", Some(Duration::ZERO)),
    ("10s10s", Some(Duration::from_secs(20))),
    ("007s", Some(Duration::from_secs(7))),
    ("", None),
    ("7", None),
    ("s", None),
    ("10x", None),
    ("5 minutes", None),
    ("5min", None),
    ("-3s", None),
    ("+3s", None),
    (" 5m", None),
    ("5m ", None),
    ("1.s", None),
    (".5s", None),
    ("1,5s", None),
    ("1d", None),
    ("1us", None),
    ("5M", None),
];

/// Parses a duration of the [`DURATION_PATTERN`] grammar, e.g. `500ms`, `15s`, `5m`, `1.5h` or `1h30m`
/// (exactly what the CRDs' schemas admit). Too large a value saturates.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    if input.is_empty() {
        return Err("empty duration: give a number with a unit, e.g. 15s or 5m".into());
    }
    let bad = |why: &str| format!("invalid duration {input:?}: {why}, e.g. 15s, 5m or 1h30m");
    let mut total: u128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let whole_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if whole_len == 0 {
            return Err(bad("expected a number"));
        }
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(f) => {
                let len = f.find(|c: char| !c.is_ascii_digit()).unwrap_or(f.len());
                if len == 0 {
                    return Err(bad("expected digits after the decimal point"));
                }
                f.split_at(len)
            }
            None => ("", after),
        };
        let (nanos_per_unit, after): (u128, &str) = if let Some(a) = after.strip_prefix("ms") {
            (1_000_000, a)
        } else if let Some(a) = after.strip_prefix('s') {
            (1_000_000_000, a)
        } else if let Some(a) = after.strip_prefix('m') {
            (60_000_000_000, a)
        } else if let Some(a) = after.strip_prefix('h') {
            (3_600_000_000_000, a)
        } else {
            return Err(bad("each number needs a unit: ms, s, m or h"));
        };
        // Digits beyond a unit's nanoseconds cannot change the result: 19 leading ones are plenty.
        let whole: u128 = whole.parse().unwrap_or(u128::MAX);
        let mut part = whole.saturating_mul(nanos_per_unit);
        let digits = &fraction[..fraction.len().min(19)];
        if !digits.is_empty() {
            let numerator: u128 = digits.parse().expect("ASCII digits");
            part =
                part.saturating_add(numerator * nanos_per_unit / 10u128.pow(digits.len() as u32));
        }
        total = total.saturating_add(part);
        rest = after;
    }
    let secs = u64::try_from(total / 1_000_000_000).unwrap_or(u64::MAX);
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        runtime: RuntimeArgs,
    }

    #[test]
    fn durations_follow_the_crd_grammar() {
        for (input, want) in DURATION_EXAMPLES {
            match want {
                Some(d) => assert_eq!(parse_duration(input), Ok(*d), "{input:?}"),
                None => assert!(
                    parse_duration(input).is_err(),
                    "{input:?} should be refused"
                ),
            }
        }
        // Saturates rather than overflows.
        assert!(
            parse_duration(&format!("{}h", "9".repeat(40))).unwrap() > Duration::from_secs(1 << 60)
        );
        let err = parse_duration("5 minutes").unwrap_err();
        assert!(
            err.contains("\"5 minutes\"") && err.contains("ms, s, m or h"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_consistent() {
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert!(cli.runtime.leader_elect);
        assert_eq!(cli.runtime.lease_duration, Duration::from_secs(15));
        assert_eq!(cli.runtime.shutdown_grace, Duration::from_secs(20));
        cli.runtime.validate().unwrap();
    }

    #[test]
    fn renew_deadline_must_be_shorter_than_lease() {
        let cli =
            Cli::try_parse_from(["x", "--lease-duration", "5s", "--renew-deadline", "5s"]).unwrap();
        let err = cli.runtime.validate().unwrap_err();
        assert!(err.contains("--renew-deadline"), "{err}");
        let cli = Cli::try_parse_from(["x", "--leader-elect", "false", "--lease-duration", "1s"])
            .unwrap();
        cli.runtime.validate().unwrap();
    }

    #[test]
    fn namespace_lists_only_where_accepted() {
        let cli = Cli::try_parse_from(["x", "--namespace", "a, b,,c"]).unwrap();
        assert_eq!(cli.runtime.namespaces(), vec!["a", "b", "c"]);
        let err = cli.runtime.validate().unwrap_err();
        assert!(err.contains("only pack-controller"), "{err}");
        cli.runtime.validate_allowing_namespace_list().unwrap();
        let one = Cli::try_parse_from(["x", "--namespace", "a"]).unwrap();
        one.runtime.validate().unwrap();
        let empty = Cli::try_parse_from(["x", "--namespace", " ,"]).unwrap();
        assert!(empty.runtime.validate_allowing_namespace_list().is_err());
        let all = Cli::try_parse_from(["x"]).unwrap();
        assert!(all.runtime.namespaces().is_empty());
    }
}
