//! The standard `process_*` metrics (the names of the Prometheus client libraries, which stock dashboards
//! and alerts query), read from /proc at scrape time (Linux only; absent elsewhere). They carry no
//! `pack_operator_` prefix: [`crate::runtime::Runtime`] registers the collector on the unprefixed root.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

/// Collector for resident and virtual memory, CPU time, open and maximum file descriptors and start time
/// of this process.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// A snapshot of the figures the collector reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    /// The soft limit on open files; `None` when unlimited.
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads this process's figures; `None` where /proc is not available.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = 100.0; // USER_HZ: 100 on every Linux platform we ship to.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        let start_ticks: f64 = fields.get(19)?.parse().ok()?;
        let vsize: u64 = fields.get(20)?.parse().ok()?;
        let rss_pages: u64 = fields.get(21)?.parse().ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| max_open_files(&l));
        Some(ProcessStats {
            resident_memory_bytes: rss_pages * 4096,
            virtual_memory_bytes: vsize,
            cpu_seconds: (utime + stime) / ticks,
            open_fds,
            max_fds,
            start_time_seconds: boot_time + start_ticks / ticks,
        })
    }
}

/// The soft limit of the `Max open files` line of /proc/self/limits (`None` when unlimited or absent).
fn max_open_files(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let rss = ConstGauge::new(stats.resident_memory_bytes as i64);
        rss.encode(encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            rss.metric_type(),
        )?)?;
        let vsize = ConstGauge::new(stats.virtual_memory_bytes as i64);
        vsize.encode(encoder.encode_descriptor(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            None,
            vsize.metric_type(),
        )?)?;
        // A counter: encoded as process_cpu_seconds_total.
        let cpu = ConstCounter::new(stats.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let fds = ConstGauge::new(stats.open_fds as i64);
        fds.encode(encoder.encode_descriptor(
            "process_open_fds",
            "Number of open file descriptors",
            None,
            fds.metric_type(),
        )?)?;
        if let Some(max) = stats.max_fds {
            let max = ConstGauge::new(max as i64);
            max.encode(encoder.encode_descriptor(
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                max.metric_type(),
            )?)?;
        }
        let start = ConstGauge::new(stats.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let stats = ProcessStats::read().expect("/proc is available on Linux");
        assert!(stats.resident_memory_bytes > 1024 * 1024, "{stats:?}");
        assert!(stats.open_fds >= 3, "{stats:?}");
        assert!(
            stats.virtual_memory_bytes >= stats.resident_memory_bytes,
            "{stats:?}"
        );
        assert!(
            stats.max_fds.is_none_or(|m| m >= stats.open_fds),
            "{stats:?}"
        );
        assert!(stats.start_time_seconds > 1.6e9, "{stats:?}");
    }

    #[test]
    fn max_open_files_is_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63448                63448                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(max_open_files(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files     \n";
        assert_eq!(max_open_files(unlimited), None);
    }
}
