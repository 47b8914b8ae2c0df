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

/// Parses durations such as `500ms`, `15s`, `5m`, `1h`, `1h30m` or a bare number of seconds.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {input:?}: expected a number, e.g. 15s or 5m"
            ));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {input:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            _ => {
                return Err(format!(
                    "invalid duration {input:?}: unit must be ms, s, m or h"
                ));
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
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
    fn durations() {
        for (input, want) in [
            ("15s", Duration::from_secs(15)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("7", Duration::from_secs(7)),
        ] {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
        for bad in ["", "s", "10x", "1.5s", "-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
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
