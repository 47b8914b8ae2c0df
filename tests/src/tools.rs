//! Where the pinned tool binaries and the workspace's own binaries are.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The workspace root (the directory of the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Directory holding kube-apiserver, kube-controller-manager, kubectl, etcd and helm. Builds them on
/// first use (through `hack/tools.sh`, which caches them outside the checkout).
pub fn tools_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PACK_OPERATOR_TOOLS") {
        return Ok(PathBuf::from(dir));
    }
    let script = workspace_root().join("hack/tools.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let dir = String::from_utf8(out.stdout)?.trim().to_owned();
    Ok(PathBuf::from(dir))
}

/// Path of one tool binary.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = tools_dir()?.join(name);
    if !path.exists() {
        bail!("{} is missing; run hack/tools.sh", path.display());
    }
    Ok(path)
}

/// Path of a binary of this workspace (built by `cargo build`), e.g. `redeploy-controller`.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    let profile = std::env::var("PACK_OPERATOR_PROFILE").unwrap_or_else(|_| "debug".into());
    let path = target.join(profile).join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first with `cargo build --bins` (make test does)",
            path.display()
        );
    }
    Ok(path)
}
