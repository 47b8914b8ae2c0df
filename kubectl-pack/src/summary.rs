//! `kubectl pack get`: one line per Pack — chart, deployed version, Ready, and its current problem.

use common::{conditions, crd::Pack};
use kube::ResourceExt;

/// The columns of one Pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackLine {
    pub namespace: String,
    pub name: String,
    pub chart: String,
    /// `status.appliedVersion`, `-` when nothing is deployed.
    pub version: String,
    /// The Ready condition's status, `Unknown` when there is none.
    pub ready: String,
    /// `REASON: message` of the Ready condition when not ready, on one line; `-` when ready.
    pub problem: String,
}

impl PackLine {
    pub fn of(pack: &Pack) -> Self {
        let status = pack.status.as_ref();
        let ready = status.and_then(|s| conditions::find(&s.conditions, conditions::READY));
        let problem = match ready {
            Some(c) if c.status == "True" => "-".to_owned(),
            Some(c) => one_line(&format!("{}: {}", c.reason, c.message)),
            None if pack.spec.suspend => "Suspended: spec.suspend is true".to_owned(),
            None => {
                "NotReconciled: the pack-controller has not reported on this Pack yet".to_owned()
            }
        };
        PackLine {
            namespace: pack.namespace().unwrap_or_default(),
            name: pack.name_any(),
            chart: pack.spec.chart.name.clone(),
            version: status
                .and_then(|s| s.applied_version.clone())
                .unwrap_or_else(|| "-".into()),
            ready: ready.map_or_else(|| "Unknown".into(), |c| c.status.clone()),
            problem,
        }
    }
}

/// `text` with every run of whitespace (newlines too) as one space.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The table of `lines`, columns aligned, with a NAMESPACE column when `namespaces`.
pub fn table(lines: &[PackLine], namespaces: bool) -> String {
    let mut rows: Vec<Vec<&str>> = vec![];
    let header = ["NAMESPACE", "NAME", "CHART", "VERSION", "READY", "PROBLEM"];
    let skip = usize::from(!namespaces);
    rows.push(header[skip..].to_vec());
    for l in lines {
        let row = [
            l.namespace.as_str(),
            &l.name,
            &l.chart,
            &l.version,
            &l.ready,
            &l.problem,
        ];
        rows.push(row[skip..].to_vec());
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == columns {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pack(status: serde_json::Value) -> Pack {
        serde_json::from_value(json!({
            "apiVersion": "k8s.kubit.ir/v1alpha1", "kind": "Pack",
            "metadata": {"name": "web", "namespace": "apps"},
            "spec": {"chart": {"name": "genpack",
                "repository": {"kind": "ClusterPackRepository", "name": "main"}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_failing_pack_shows_its_ready_reason_and_message_on_one_line() {
        let p = pack(json!({"appliedVersion": "0.1.0", "conditions": [{
            "type": "Ready", "status": "False", "reason": "NoMatchingVersion",
            "message": "no version matches\n`~=9`", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}));
        let line = PackLine::of(&p);
        assert_eq!(line.problem, "NoMatchingVersion: no version matches `~=9`");
        assert_eq!(
            (line.version.as_str(), line.ready.as_str()),
            ("0.1.0", "False")
        );
    }

    #[test]
    fn a_ready_pack_has_no_problem_and_an_unreported_one_says_so() {
        let ready = pack(json!({"conditions": [{"type": "Ready", "status": "True",
            "reason": "Applied", "message": "ok", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}));
        assert_eq!(PackLine::of(&ready).problem, "-");
        let new = pack(json!({}));
        assert_eq!(PackLine::of(&new).ready, "Unknown");
        assert!(PackLine::of(&new).problem.starts_with("NotReconciled"));
        assert_eq!(PackLine::of(&new).version, "-");
    }

    #[test]
    fn the_table_aligns_columns_and_shows_namespaces_only_when_asked() {
        let line = PackLine::of(&pack(json!({})));
        let t = table(std::slice::from_ref(&line), false);
        let rows: Vec<&str> = t.lines().collect();
        assert!(rows[0].starts_with("NAME   CHART"), "{t}");
        assert!(rows[1].starts_with("web    genpack"), "{t}");
        assert!(table(&[line], true).starts_with("NAMESPACE   NAME"));
    }
}
