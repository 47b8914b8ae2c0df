//! What the benchmarks share: reading a controller process's memory and CPU from /proc, summarising
//! samples, and generating a large Helm repository index.

use std::fmt::Write as _;

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret},
};
use kube::{Api, Client, api::PostParams};

pub mod pack_variants;
pub mod ratio_chart;

/// (resident set, its high-water mark) of process `pid`, in KiB; 0 when unreadable.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (kib_field(&status, "VmRSS:"), kib_field(&status, "VmHWM:"))
}

/// (resident set, its anonymous part, its file-backed part) of process `pid`, in KiB; 0 when unreadable.
pub fn rss_split_kib(pid: u32) -> (u64, u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (
        kib_field(&status, "VmRSS:"),
        kib_field(&status, "RssAnon:"),
        kib_field(&status, "RssFile:"),
    )
}

/// The proportional set size of process `pid` in KiB (a page shared by n processes counts 1/n in
/// each; `/proc/<pid>/smaps_rollup`), 0 when unreadable.
pub fn pss_kib(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    kib_field(&rollup, "Pss:")
}

/// The number after `name` (e.g. `VmRSS:`) on its line of a `/proc` file of `Name: N kB` lines, 0
/// without one.
fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// User + system CPU seconds of process `pid` (clock ticks of 1/100 s).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state is field 0, utime 11, stime 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The `p` quantile (0..=1) of `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A Helm repository `index.yaml` of `versions` chart versions spread over `charts` charts (at least one),
/// shaped as `helm repo index` writes it: each entry has a description, keywords, a maintainer, a unique
/// SHA-256 digest, `created` and a relative URL, about 245 bytes each (100,000 versions ≈ 24 MB). No archive
/// exists for any of them: the index alone is what the memory case of `pack-bench` measures.
pub fn generated_index(versions: usize, charts: usize) -> String {
    let charts = charts.max(1);
    let mut text = String::with_capacity(versions * 240 + 64);
    text.push_str("apiVersion: v1\nentries:\n");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    // splitmix64: distinct, reproducible digests without a hashing dependency.
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for chart in 0..charts {
        let count = versions / charts + usize::from(chart < versions % charts);
        let _ = writeln!(text, "  chart-{chart}:");
        for v in 0..count {
            let (major, minor, patch) = (v / 10_000, v / 100 % 100, v % 100);
            let _ = write!(
                text,
                "  - created: \"2024-05-{:02}T10:{:02}:{:02}Z\"\n    description: Bench chart\n    \
                 digest: {:016x}{:016x}{:016x}{:016x}\n    keywords: [bench]\n    \
                 maintainers: [{{name: ops}}]\n    urls: [chart-{chart}-{major}.{minor}.{patch}.tgz]\n    \
                 version: {major}.{minor}.{patch}\n",
                v % 28 + 1,
                v / 60 % 60,
                v % 60,
                next(),
                next(),
                next(),
                next(),
            );
        }
    }
    text.push_str("generated: \"2024-05-03T10:11:12Z\"\n");
    text
}

/// An object the benchmarks create in bulk.
pub enum Obj {
    ConfigMap(ConfigMap),
    Secret(Secret),
    Deployment(Box<Deployment>),
}

/// Creates `n` objects made by `make` (namespace, object), `concurrency` at a time.
pub async fn create_all(
    client: &Client,
    n: usize,
    concurrency: usize,
    make: impl Fn(usize) -> (String, Obj),
) -> anyhow::Result<()> {
    let pp = PostParams::default();
    stream::iter((0..n).map(make))
        .map(|(ns, obj)| {
            let client = client.clone();
            let pp = pp.clone();
            async move {
                match obj {
                    Obj::ConfigMap(o) => Api::<ConfigMap>::namespaced(client, &ns)
                        .create(&pp, &o)
                        .await
                        .map(drop),
                    Obj::Secret(o) => Api::<Secret>::namespaced(client, &ns)
                        .create(&pp, &o)
                        .await
                        .map(drop),
                    Obj::Deployment(o) => Api::<Deployment>::namespaced(client, &ns)
                        .create(&pp, &*o)
                        .await
                        .map(drop),
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await
        .context("creating benchmark objects")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_this_process() {
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0, 5.0], 0.5), 3.0);
        assert_eq!(percentile(&[1.0, 2.0], 0.99), 2.0);
        assert!(percentile(&[], 0.5).is_nan());
        let (rss, hwm) = rss_kib(std::process::id());
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn the_generated_index_has_every_version_once_at_about_245_bytes_each() {
        let text = generated_index(1000, 7);
        assert!(text.starts_with("apiVersion: v1\nentries:\n  chart-0:\n"));
        assert_eq!(text.matches("\n    version: ").count(), 1000);
        assert_eq!(text.matches("\n  chart-").count(), 7);
        let per_entry = text.len() / 1000;
        assert!(
            (220..270).contains(&per_entry),
            "{per_entry} bytes per entry"
        );
        let digests: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("    digest: "))
            .collect();
        assert_eq!(digests.len(), 1000);
        assert!(digests.iter().all(|d| d.len() == 64));
    }

    #[test]
    fn proc_fields_are_read_in_kib_and_a_missing_one_is_zero() {
        let rollup = "Rss:               55524 kB\nPss:               41297 kB\nPss_Anon:           8664 kB\n";
        assert_eq!(kib_field(rollup, "Pss:"), 41297);
        assert_eq!(kib_field(rollup, "Pss_Anon:"), 8664);
        assert_eq!(kib_field(rollup, "Swap:"), 0);
        let me = std::process::id();
        let pss = pss_kib(me);
        assert!(
            pss > 0 && pss <= rss_kib(me).1,
            "PSS {pss} KiB within the high-water mark"
        );
        let (rss, anonymous, file) = rss_split_kib(me);
        assert!(
            anonymous > 0 && file > 0 && anonymous + file <= rss,
            "RSS {rss} KiB = anonymous {anonymous} + file-backed {file} (+ shared memory)"
        );
    }
}
