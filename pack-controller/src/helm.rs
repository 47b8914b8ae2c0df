//! The Helm CLI driver: runs the real `helm` binary for install/upgrade, rollback and uninstall.
//!
//! - Values go in a file of mode 0600 in a 0700 directory, deleted when the operation ends; never on the
//!   command line, in logs, Events or status. Helm's stdout (which echoes the values) is parsed for the
//!   revision and status only and then dropped.
//! - Helm's homes (cache, config, data, and the kube discovery cache under `HOME`) live under the work
//!   directory, so the root filesystem can be read-only.
//! - At most `concurrency` Helm processes run at once.
//! - Stopping (SIGTERM to the controller, or losing leadership) sends SIGTERM to running Helm processes
//!   at once, which makes Helm end the operation and record it as failed rather than leave it pending;
//!   a process still running shortly before the controller's shutdown grace ends is killed
//!   ([`kill_after`]). After a lost Lease the controller is aborted sooner (before the Lease can
//!   expire), which kills Helm with it: the `pending-*` release it may leave is recovered by the next
//!   leader. If the controller itself dies, the kernel sends Helm the same SIGTERM (`PR_SET_PDEATHSIG`).

#![allow(unsafe_code)] // pre_exec: prctl(PR_SET_PDEATHSIG) and kill(2).

use std::{
    ffi::OsString,
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;
use tokio::{process::Command, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::HelmMetrics;

/// Longest Helm error kept for conditions, Events and history.
pub const MAX_MESSAGE: usize = 1024;
/// Strings of the values at least this long are blanked wherever they appear in Helm's error messages.
pub const REDACT_MIN_LEN: usize = 8;
/// Shorter strings of the values, down to this length, are blanked where they stand as a whole word
/// (not inside a longer word, so a value such as `web` or `nginx` does not shred Helm's message). Even
/// shorter ones are not blanked.
pub const REDACT_MIN_WORD_LEN: usize = 4;
/// How long before the end of the shutdown grace a Helm process that ignored SIGTERM is killed: time
/// for its reconcile to return and the Lease to be released.
const KILL_MARGIN: Duration = Duration::from_secs(2);

/// How long a Helm process gets to exit after SIGTERM, for a controller that gets `shutdown_grace`
/// (`--shutdown-grace`) to stop: until [`KILL_MARGIN`] (at most half the grace) before it ends.
pub fn kill_after(shutdown_grace: Duration) -> Duration {
    shutdown_grace.saturating_sub(KILL_MARGIN.min(shutdown_grace / 2))
}

/// How to run Helm.
#[derive(Debug, Clone)]
pub struct HelmConfig {
    /// The `helm` binary.
    pub binary: PathBuf,
    /// Writable directory for Helm's homes, values files and the chart cache.
    pub work_dir: PathBuf,
    /// `--timeout` of every operation (hooks, and waiting when a chart asks for it).
    pub timeout: Duration,
    /// `--history-max`: revisions kept per release.
    pub max_history: u32,
    /// Helm processes at once.
    pub concurrency: usize,
    /// How long a Helm process gets to exit after SIGTERM before it is killed ([`kill_after`]).
    pub term_grace: Duration,
}

/// Why a Helm operation did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HelmError {
    /// Helm ran and failed; `message` is its error, trimmed and with the strings that came from Secrets blanked.
    #[error("{message}")]
    Failed { message: String },
    #[error("the Helm operation was cancelled because the controller is stopping")]
    Cancelled,
    #[error("cannot run helm ({binary}): {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("cannot write the values file: {0}")]
    ValuesFile(std::io::Error),
    #[error("helm printed output that is not a release: {0}")]
    Output(String),
}

impl HelmError {
    pub fn reason(&self) -> &'static str {
        match self {
            HelmError::Failed { .. } => "HelmFailed",
            HelmError::Cancelled => "Cancelled",
            HelmError::Spawn { .. } => "HelmNotRunnable",
            HelmError::ValuesFile(_) => "ValuesFile",
            HelmError::Output(_) => "HelmOutput",
        }
    }
}

/// What `helm upgrade --install -o json` tells about the release it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseOutcome {
    pub revision: i64,
    pub status: String,
}

/// An install/upgrade.
#[derive(Debug)]
pub struct Upgrade<'a> {
    pub namespace: &'a str,
    pub release: &'a str,
    pub chart: &'a Path,
    /// Final values (after vars).
    pub values: &'a Value,
    /// The strings to blank out of Helm's messages: those that came from Secrets.
    pub redact: &'a [String],
    /// `helm upgrade --labels` (stored on Helm's release Secret).
    pub labels: &'a [(&'a str, &'a str)],
    /// The user Helm impersonates (`--kube-as-user`; see [`crate::identity`]); None: the controller.
    pub as_user: Option<&'a str>,
}

/// `--kube-as-user` for an operation run as `as_user`. No groups: for a ServiceAccount user name the API
/// server adds its groups itself.
fn impersonation(as_user: Option<&str>) -> Vec<OsString> {
    match as_user {
        Some(user) => vec!["--kube-as-user".into(), user.into()],
        None => vec![],
    }
}

/// Runs Helm. Cheap to clone.
#[derive(Clone)]
pub struct Helm {
    config: Arc<HelmConfig>,
    slots: Arc<Semaphore>,
    metrics: HelmMetrics,
}

impl std::fmt::Debug for Helm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helm")
            .field("config", &self.config)
            .finish()
    }
}

/// Creates the work directory's parts (mode 0700): values files, charts, Helm's homes. `main` calls it
/// before anything else, so a work directory that cannot be written stops the process with a clear error
/// instead of a leader that holds its Lease and does nothing.
pub fn prepare_work_dir(work_dir: &Path) -> std::io::Result<()> {
    for dir in [
        "values",
        "charts",
        "helm/cache",
        "helm/config",
        "helm/data",
        "home",
    ] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(work_dir.join(dir))?;
    }
    Ok(())
}

impl Helm {
    /// Creates the work directories (mode 0700) and removes values files left by a process that died
    /// without its cleanup (OOM, SIGKILL): the work directory outlives container restarts.
    pub fn new(config: HelmConfig, metrics: HelmMetrics) -> std::io::Result<Self> {
        prepare_work_dir(&config.work_dir)?;
        // No Helm process of this controller runs yet; each process has a work directory of its own.
        for entry in fs::read_dir(config.work_dir.join("values"))?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok(Helm {
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config: Arc::new(config),
            metrics,
        })
    }

    pub fn config(&self) -> &HelmConfig {
        &self.config
    }

    /// `helm upgrade --install`; `operation` (`install` or `upgrade`) labels the metrics.
    pub async fn upgrade_install(
        &self,
        operation: &'static str,
        req: &Upgrade<'_>,
        stop: &CancellationToken,
    ) -> Result<ReleaseOutcome, HelmError> {
        let values = ValuesFile::write(&self.config.work_dir.join("values"), req.values)?;
        let labels = req
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut args: Vec<OsString> = vec![
            "upgrade".into(),
            req.release.into(),
            req.chart.into(),
            "--install".into(),
            "--namespace".into(),
            req.namespace.into(),
            "--values".into(),
            values.path.clone().into(),
            "--reset-values".into(),
            // The API server validates every applied object itself (Helm applies with
            // `fieldValidation=Strict`; unknown or duplicate fields fail the operation the same way).
            // Helm's client-side check only asks the server whether it validates, by fetching and
            // parsing its OpenAPI v3 documents in every process: 38 % of a helm upgrade's CPU and
            // 5 MiB of its peak (docs/pack.md, "Helm's cost per operation").
            "--disable-openapi-validation".into(),
            "--history-max".into(),
            self.config.max_history.to_string().into(),
            "--timeout".into(),
            format!("{}s", self.config.timeout.as_secs()).into(),
            "--labels".into(),
            labels.into(),
            "--output".into(),
            "json".into(),
        ];
        args.extend(impersonation(req.as_user));
        let stdout = self.run(operation, args, req.redact, stop).await?;
        drop(values);
        parse_release(&stdout)
    }

    /// `helm rollback <release> <revision>`; `redact`: the strings to blank out of its error (those that
    /// came from Secrets; the revision rolled back to holds values too).
    pub async fn rollback(
        &self,
        namespace: &str,
        release: &str,
        revision: i64,
        as_user: Option<&str>,
        redact: &[String],
        stop: &CancellationToken,
    ) -> Result<(), HelmError> {
        let mut args: Vec<OsString> = vec![
            "rollback".into(),
            release.into(),
            revision.to_string().into(),
            "--namespace".into(),
            namespace.into(),
            "--history-max".into(),
            self.config.max_history.to_string().into(),
            "--timeout".into(),
            format!("{}s", self.config.timeout.as_secs()).into(),
        ];
        args.extend(impersonation(as_user));
        self.run("rollback", args, redact, stop).await.map(drop)
    }

    /// `helm uninstall --ignore-not-found`: a release already gone is success. `redact`: the strings to
    /// blank out of its error (those that came from Secrets; hooks run at uninstall render the values).
    pub async fn uninstall(
        &self,
        namespace: &str,
        release: &str,
        as_user: Option<&str>,
        redact: &[String],
        stop: &CancellationToken,
    ) -> Result<(), HelmError> {
        let mut args: Vec<OsString> = vec![
            "uninstall".into(),
            release.into(),
            "--namespace".into(),
            namespace.into(),
            "--ignore-not-found".into(),
            "--timeout".into(),
            format!("{}s", self.config.timeout.as_secs()).into(),
        ];
        args.extend(impersonation(as_user));
        self.run("uninstall", args, redact, stop).await.map(drop)
    }

    /// `helm template`: the manifests `upgrade_install` of the same request would apply, rendered without
    /// touching the cluster (for `kubectl pack template|diff`). The output holds the values as rendered;
    /// the caller decides what of it may be shown.
    pub async fn template(
        &self,
        req: &Upgrade<'_>,
        stop: &CancellationToken,
    ) -> Result<Vec<u8>, HelmError> {
        let values = ValuesFile::write(&self.config.work_dir.join("values"), req.values)?;
        let args: Vec<OsString> = vec![
            "template".into(),
            req.release.into(),
            req.chart.into(),
            "--namespace".into(),
            req.namespace.into(),
            "--values".into(),
            values.path.clone().into(),
        ];
        let stdout = self.run("template", args, req.redact, stop).await?;
        drop(values);
        Ok(stdout)
    }

    /// Records an operation that ran outside Helm (marking a stuck release failed).
    pub fn record(&self, operation: &str, result: &str, took: Duration) {
        self.metrics.record(operation, result, took);
    }

    async fn run(
        &self,
        operation: &'static str,
        args: Vec<OsString>,
        redact: &[String],
        stop: &CancellationToken,
    ) -> Result<Vec<u8>, HelmError> {
        let _slot = tokio::select! {
            slot = self.slots.acquire() => slot.map_err(|_| HelmError::Cancelled)?,
            () = stop.cancelled() => return Err(HelmError::Cancelled),
        };
        let started = Instant::now();
        let result = self.spawn_and_wait(args, redact, stop).await;
        let outcome = match &result {
            Ok(_) => "success",
            Err(HelmError::Cancelled) => "cancelled",
            Err(_) => "failure",
        };
        self.metrics.record(operation, outcome, started.elapsed());
        debug!(operation, outcome, took = ?started.elapsed(), "helm finished");
        result
    }

    async fn spawn_and_wait(
        &self,
        args: Vec<OsString>,
        redact: &[String],
        stop: &CancellationToken,
    ) -> Result<Vec<u8>, HelmError> {
        let work = &self.config.work_dir;
        let mut cmd = Command::new(&self.config.binary);
        cmd.args(&args)
            .env("HELM_CACHE_HOME", work.join("helm/cache"))
            .env("HELM_CONFIG_HOME", work.join("helm/config"))
            .env("HELM_DATA_HOME", work.join("helm/data"))
            .env("HOME", work.join("home"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // HOME moved: keep a user's default kubeconfig reachable when running outside a cluster.
        if std::env::var_os("KUBECONFIG").is_none()
            && let Some(home) = std::env::var_os("HOME")
        {
            let default = Path::new(&home).join(".kube/config");
            if default.exists() {
                cmd.env("KUBECONFIG", default);
            }
        }
        // SAFETY: only prctl, which is async-signal-safe. Helm gets SIGTERM if this thread dies, and
        // cancels its operation cleanly.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| HelmError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        let pid = child.id();
        let output = child.wait_with_output();
        tokio::pin!(output);
        let output = tokio::select! {
            out = &mut output => out,
            () = stop.cancelled() => {
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    info!(pid, "stopping: sending SIGTERM to helm");
                    // SAFETY: kill(2) on our own child's pid; it has not been reaped (we still await it).
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
                match tokio::time::timeout(self.config.term_grace, &mut output).await {
                    Ok(_) => return Err(HelmError::Cancelled),
                    Err(_) => {
                        warn!("helm did not exit after SIGTERM; killing it");
                        // Dropping the future drops the child, which kills it (kill_on_drop).
                        return Err(HelmError::Cancelled);
                    }
                }
            }
        };
        let output = output.map_err(|source| HelmError::Spawn {
            binary: self.config.binary.display().to_string(),
            source,
        })?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut message = error_message(&stderr, redact);
        if message.is_empty() {
            message = format!("helm exited with {}", output.status);
        }
        Err(HelmError::Failed { message })
    }
}

/// A values file that only this user can read, removed on drop.
struct ValuesFile {
    path: PathBuf,
}

impl ValuesFile {
    fn write(dir: &Path, values: &Value) -> Result<Self, HelmError> {
        let path = dir.join(format!("{:016x}.yaml", rand::random::<u64>()));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(HelmError::ValuesFile)?;
        let guard = ValuesFile { path };
        // JSON is YAML.
        let bytes = serde_json::to_vec(values).map_err(|e| HelmError::ValuesFile(e.into()))?;
        file.write_all(&bytes).map_err(HelmError::ValuesFile)?;
        Ok(guard)
    }
}

impl Drop for ValuesFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[derive(Deserialize)]
struct ReleaseJson {
    version: i64,
    info: InfoJson,
}

#[derive(Deserialize)]
struct InfoJson {
    status: String,
}

fn parse_release(stdout: &[u8]) -> Result<ReleaseOutcome, HelmError> {
    // Helm may print warnings before the JSON document.
    let start = stdout.iter().position(|b| *b == b'{').unwrap_or(0);
    let r: ReleaseJson = serde_json::from_slice(&stdout[start..])
        // Not the error's text: serde quotes the offending value, and the output holds the values.
        .map_err(|e| {
            HelmError::Output(format!(
                "{:?} error at line {} column {} of {} bytes",
                e.classify(),
                e.line(),
                e.column(),
                stdout.len()
            ))
        })?;
    Ok(ReleaseOutcome {
        revision: r.version,
        status: r.info.status,
    })
}

/// Every string leaf of `values` long enough to be worth hiding (see [`REDACT_MIN_WORD_LEN`]), longest
/// first (the blanking tests build their lists with it; the controller blanks only strings from Secrets).
pub fn value_strings(values: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.chars().count() >= REDACT_MIN_WORD_LEN => out.push(s.clone()),
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(values, &mut out);
    // Longest first, so a value containing another is blanked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

/// Stands for a blanked value while blanking goes on (no value can match it); `<value>` in the end.
const BLANK: char = '\0';

/// The forms in which `value` can show up in Helm's stderr: as is; JSON/Go-quoted (`\"`, `\n`, `\\`);
/// whitespace collapsed; each line of a multi-line value (a PEM block indented in rendered YAML); base64
/// (a Secret's `data`).
fn forms(value: &str) -> Vec<String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = vec![value.to_owned()];
    if let Ok(quoted) = serde_json::to_string(value) {
        out.push(quoted[1..quoted.len() - 1].to_owned());
    }
    out.push(value.split_whitespace().collect::<Vec<_>>().join(" "));
    out.extend(
        value
            .lines()
            .map(str::trim)
            .filter(|l| l.chars().count() >= REDACT_MIN_LEN)
            .map(str::to_owned),
    );
    let encoded = base64::Engine::encode(&engine, value);
    out.push(encoded.trim_end_matches('=').to_owned());
    out.push(encoded);
    out.retain(|f| f.chars().count() >= REDACT_MIN_WORD_LEN);
    out
}

/// `text` with every `needle` replaced by [`BLANK`]; a needle shorter than [`REDACT_MIN_LEN`] only where
/// it is a whole word.
fn blank(text: &str, needle: &str) -> String {
    if !text.contains(needle) {
        return text.to_owned();
    }
    if needle.chars().count() >= REDACT_MIN_LEN {
        return text.replace(needle, &BLANK.to_string());
    }
    let is_word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(needle) {
        out.push_str(&rest[..i]);
        let after = &rest[i + needle.len()..];
        if !is_word(out.chars().next_back()) && !is_word(after.chars().next()) {
            out.push(BLANK);
        } else {
            out.push_str(needle);
        }
        rest = after;
    }
    out.push_str(rest);
    out
}

/// `text` with every form (see [`forms`]) of the `redact` strings blanked as `<value>` (for messages
/// that are not Helm's).
pub fn redact(text: &str, redact: &[String]) -> String {
    let mut needles: Vec<String> = redact.iter().flat_map(|s| forms(s)).collect();
    needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
    needles.dedup();
    let mut text = text.replace(BLANK, "");
    for needle in &needles {
        text = blank(&text, needle);
    }
    text.replace(BLANK, "<value>")
}

/// Helm's error from its stderr: the text after the last `Error: ` (or all of it), on one line, with
/// every form (see [`forms`]) of the `redact` strings blanked as `<value>`, at most [`MAX_MESSAGE`]
/// bytes. Blanking runs on the raw text (multi-line values still match) and again once whitespace is
/// collapsed.
pub fn error_message(stderr: &str, redact: &[String]) -> String {
    let mut needles: Vec<String> = redact.iter().flat_map(|s| forms(s)).collect();
    needles.sort_by_key(|s| std::cmp::Reverse(s.len()));
    needles.dedup();
    let mut text = stderr.replace(BLANK, "");
    for needle in &needles {
        text = blank(&text, needle);
    }
    let text = match text.rfind("Error: ") {
        Some(i) => &text[i + "Error: ".len()..],
        None => &text,
    };
    let mut message = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for needle in &needles {
        message = blank(&message, needle);
    }
    common::events::truncate(&message.replace(BLANK, "<value>"), MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_message_keeps_helms_error_on_one_line_without_values() {
        let stderr = "level=WARN msg=\"something\"\nError: UPGRADE FAILED: template: genpack/templates/x.yaml:3:\n  hunter2hunter2 is not valid\n";
        let values = json!({"a": {"password": "hunter2hunter2"}, "short": "abc", "n": 1});
        let m = error_message(stderr, &value_strings(&values));
        assert_eq!(
            m,
            "UPGRADE FAILED: template: genpack/templates/x.yaml:3: <value> is not valid"
        );
        assert_eq!(error_message("no prefix", &[]), "no prefix");
        let long = "x".repeat(5000);
        let m = error_message(&format!("Error: {long}"), &[]);
        assert!(m.len() <= MAX_MESSAGE && m.ends_with('…'));
    }

    const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\nVJTUt9Us8cKjMzEfYyjiWA4R4/M2bS1G\n-----END PRIVATE KEY-----\n";

    /// Asserts that no line of the PEM body (nor the whole) is left in `m`.
    fn assert_no_pem(m: &str) {
        for line in PEM.lines().filter(|l| l.len() >= REDACT_MIN_LEN) {
            assert!(!m.contains(line), "{line} left in {m}");
        }
    }

    #[test]
    fn multi_line_values_are_blanked_raw_and_line_by_line() {
        let redact = value_strings(&json!({"tls": {"key": PEM}}));
        // As is, then re-indented inside rendered YAML.
        let indented: String = PEM.lines().map(|l| format!("    {l}\n")).collect();
        for shown in [PEM.to_owned(), indented] {
            let stderr = format!("Error: YAML parse error near\n{shown}: bad indentation");
            let m = error_message(&stderr, &redact);
            assert_no_pem(&m);
            assert!(m.starts_with("YAML parse error near <value>"), "{m}");
        }
    }

    #[test]
    fn escaped_and_encoded_forms_are_blanked() {
        let password = "hunter2 \"quoted\" \\ path";
        let redact = value_strings(&json!({"password": password, "key": PEM}));
        let go_quoted = serde_json::to_string(password).unwrap();
        let pem_quoted = serde_json::to_string(PEM).unwrap();
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, password);
        let stderr = format!(
            "Error: UPGRADE FAILED: Secret \"s\" is invalid: data[x]: Invalid value: {go_quoted}; \
             key: Invalid value: {pem_quoted}; data: {{\"p\":\"{b64}\"}}; unpadded {}",
            b64.trim_end_matches('=')
        );
        let m = error_message(&stderr, &redact);
        assert!(!m.contains("hunter2"), "{m}");
        assert!(
            !m.contains(&b64) && !m.contains(b64.trim_end_matches('=')),
            "{m}"
        );
        assert_no_pem(&m);
        assert!(m.contains("data[x]: Invalid value: \"<value>\""), "{m}");
    }

    #[test]
    fn short_values_are_blanked_as_whole_words_only() {
        let redact = value_strings(&json!({"pin": "4711", "kind": "web", "name": "nginx"}));
        assert_eq!(
            redact,
            vec!["nginx", "4711"],
            "3 characters and less are kept"
        );
        let m = error_message(
            "Error: pin 4711 rejected; image nginx:1.27 in nginxes, id a4711b, web",
            &redact,
        );
        assert_eq!(
            m,
            "pin <value> rejected; image <value>:1.27 in nginxes, id a4711b, web"
        );
        // A value that reads like the placeholder does not blank it again.
        let m = error_message("Error: x is bad value", &["value".to_owned()]);
        assert_eq!(m, "x is bad <value>");
    }

    #[test]
    fn value_strings_are_longest_first_and_unique() {
        let values = json!({"a": ["password1", "password1-longer"], "b": "password1", "c": true, "d": "abc"});
        assert_eq!(
            value_strings(&values),
            vec!["password1-longer", "password1"]
        );
    }

    #[test]
    fn parse_release_reads_revision_and_status_only() {
        let out = br#"WARNING: x
{"name":"t","info":{"status":"deployed","description":"Upgrade complete"},"config":{"s":"v"},"version":3}"#;
        assert_eq!(
            parse_release(out).unwrap(),
            ReleaseOutcome {
                revision: 3,
                status: "deployed".into()
            }
        );
        let err = parse_release(b"{\"config\": {\"password\": \"hunter2\"}}").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn leftover_values_files_are_removed_at_start() {
        let dir = std::env::temp_dir().join(format!("pack-helm-new-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("values")).unwrap();
        let left = dir.join("values/0123456789abcdef.yaml");
        fs::write(&left, "password: hunter2").unwrap();
        let config = HelmConfig {
            binary: "helm".into(),
            work_dir: dir.clone(),
            timeout: Duration::from_secs(1),
            max_history: 1,
            concurrency: 1,
            term_grace: Duration::from_secs(1),
        };
        let metrics = HelmMetrics::register(&mut prometheus_client::registry::Registry::default());
        Helm::new(config, metrics).unwrap();
        assert!(!left.exists());
        assert!(dir.join("values").is_dir() && dir.join("charts").is_dir());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn helm_is_killed_shortly_before_the_shutdown_grace_ends() {
        let s = Duration::from_secs;
        assert_eq!(kill_after(s(20)), s(18));
        assert_eq!(kill_after(s(60)), s(58));
        // A short grace keeps half of it for the rest of the shutdown.
        assert_eq!(kill_after(s(2)), s(1));
        assert_eq!(kill_after(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn values_file_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("pack-values-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = ValuesFile::write(&dir, &json!({"a": 1})).unwrap();
        let mode = fs::metadata(&file.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::read_to_string(&file.path).unwrap(), r#"{"a":1}"#);
        let path = file.path.clone();
        drop(file);
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
