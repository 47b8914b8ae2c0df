//! Helm's own record of a release, read from (and, to recover a stuck release, written to) the Secrets
//! Helm stores it in: `sh.helm.release.v1.<name>.v<revision>`, labelled `owner=helm`, `name`, `status`,
//! `version`, plus the labels this controller passes with `helm upgrade --labels`.
//!
//! Reading needs only the Secrets' metadata; the body (gzipped release JSON, base64 encoded inside the
//! Secret's base64 data) is decoded only to mark a stuck `pending-*` revision `failed`, as Flux's
//! helm-controller does, so the next `helm upgrade` is allowed to run.

use std::io::{Read as _, Write as _};

use base64::Engine as _;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, PartialObjectMeta, PostParams},
};

/// Label Helm puts on every release Secret.
pub const OWNER_SELECTOR: &str = "owner=helm";
/// Label (passed with `helm upgrade --labels`) naming the Pack that made a revision.
pub const PACK_LABEL: &str = "pack-operator.k8s.kubit.ir/pack";
/// Label (passed with `helm upgrade --labels`) holding the first 32 hex digits of the revision's
/// [`ReleaseDigest`](crate::plan::ReleaseDigest) (label values are at most 63 characters).
pub const DIGEST_LABEL: &str = "pack-operator.k8s.kubit.ir/digest";

/// Errors reading or repairing Helm's release records.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("Helm release Secret {name} cannot be decoded: {detail}")]
    Decode { name: String, detail: String },
}

/// The latest revision of a release, from its Secret's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseRecord {
    /// The Secret holding this revision.
    pub secret: String,
    pub revision: i64,
    /// Helm's status: `deployed`, `failed`, `pending-install`, `pending-upgrade`, `pending-rollback`,
    /// `superseded`, `uninstalling`, `uninstalled`.
    pub status: String,
    /// The Pack named by [`PACK_LABEL`], if a Pack made this revision.
    pub pack: Option<String>,
    /// The digest label, if a Pack made this revision.
    pub digest: Option<String>,
}

impl ReleaseRecord {
    /// A revision left `pending-*` (or `uninstalling`) means the Helm process that wrote it is gone, when no
    /// operation on this release is running here.
    pub fn is_pending(&self) -> bool {
        self.status.starts_with("pending-") || self.status == "uninstalling"
    }

    pub fn is_deployed(&self) -> bool {
        self.status == "deployed"
    }
}

/// The latest revision among release Secrets' metadata (Helm's `version` label is the revision).
pub fn latest(secrets: &[ObjectMeta], release: &str) -> Option<ReleaseRecord> {
    secrets
        .iter()
        .filter_map(|m| {
            let labels = m.labels.as_ref()?;
            if labels.get("owner").map(String::as_str) != Some("helm")
                || labels.get("name").map(String::as_str) != Some(release)
            {
                return None;
            }
            let revision = labels.get("version")?.parse::<i64>().ok()?;
            Some(ReleaseRecord {
                secret: m.name.clone()?,
                revision,
                status: labels.get("status").cloned().unwrap_or_default(),
                pack: labels.get(PACK_LABEL).cloned(),
                digest: labels.get(DIGEST_LABEL).cloned(),
            })
        })
        .max_by_key(|r| r.revision)
}

/// Reads the latest revision of release `name` in `namespace` (metadata only: one list call).
pub async fn read(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<ReleaseRecord>, ReleaseError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let list: kube::core::ObjectList<PartialObjectMeta<Secret>> = api
        .list_metadata(&ListParams::default().labels(&format!("{OWNER_SELECTOR},name={name}")))
        .await?;
    let metas: Vec<ObjectMeta> = list.items.into_iter().map(|p| p.metadata).collect();
    Ok(latest(&metas, name))
}

/// Marks revision `record` failed, in the release body and in its `status` label, so Helm allows the
/// next operation. Guarded by the Secret's resourceVersion: a Helm process still writing it wins.
pub async fn mark_failed(
    client: &Client,
    namespace: &str,
    record: &ReleaseRecord,
    description: &str,
) -> Result<(), ReleaseError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secret = api.get(&record.secret).await?;
    let decode_error = |detail: String| ReleaseError::Decode {
        name: record.secret.clone(),
        detail,
    };
    let body = secret
        .data
        .as_ref()
        .and_then(|d| d.get("release"))
        .ok_or_else(|| decode_error("no `release` key".into()))?;
    let updated = set_status(&body.0, "failed", description).map_err(decode_error)?;
    secret
        .data
        .get_or_insert_with(Default::default)
        .insert("release".into(), ByteString(updated));
    secret
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("status".into(), "failed".into());
    secret.metadata.managed_fields = None;
    api.replace(&record.secret, &PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// Rewrites Helm's encoded release (base64 of gzipped JSON) with `info.status` = `status` and
/// `info.description` = `description`. Pure, so it is tested without a cluster.
pub fn set_status(encoded: &[u8], status: &str, description: &str) -> Result<Vec<u8>, String> {
    let engine = base64::engine::general_purpose::STANDARD;
    let mut release = decode(encoded)?;
    let info = release
        .get_mut("info")
        .and_then(|i| i.as_object_mut())
        .ok_or("no `info` object")?;
    info.insert("status".into(), status.into());
    info.insert("description".into(), description.into());
    let json = serde_json::to_vec(&release).map_err(|e| e.to_string())?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&json).map_err(|e| e.to_string())?;
    let gz = gz.finish().map_err(|e| e.to_string())?;
    Ok(engine.encode(gz).into_bytes())
}

/// Helm's encoded release (base64 of gzipped JSON) as JSON.
fn decode(encoded: &[u8]) -> Result<serde_json::Value, String> {
    let gz = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim_ascii())
        .map_err(|e| format!("not base64: {e}"))?;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut json)
        .map_err(|e| format!("not gzip: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("not JSON: {e}"))
}

/// The manifest (multi-document YAML of the release's objects, hooks apart) of Helm's encoded release.
pub fn manifest(encoded: &[u8]) -> Result<String, String> {
    match decode(encoded)?.get("manifest") {
        Some(serde_json::Value::String(m)) => Ok(m.clone()),
        _ => Err("no `manifest` string".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn latest_is_the_highest_revision_of_that_release() {
        let secrets = vec![
            meta(
                "sh.helm.release.v1.web.v9",
                &[
                    ("owner", "helm"),
                    ("name", "web"),
                    ("version", "9"),
                    ("status", "superseded"),
                ],
            ),
            meta(
                "sh.helm.release.v1.web.v10",
                &[
                    ("owner", "helm"),
                    ("name", "web"),
                    ("version", "10"),
                    ("status", "pending-upgrade"),
                    (PACK_LABEL, "web"),
                    (DIGEST_LABEL, "abc"),
                ],
            ),
            meta(
                "sh.helm.release.v1.webx.v11",
                &[
                    ("owner", "helm"),
                    ("name", "webx"),
                    ("version", "11"),
                    ("status", "deployed"),
                ],
            ),
            meta("other", &[("name", "web"), ("version", "12")]),
        ];
        let r = latest(&secrets, "web").unwrap();
        assert_eq!(r.revision, 10, "numeric, not lexical, order");
        assert!(r.is_pending());
        assert_eq!(r.pack.as_deref(), Some("web"));
        assert_eq!(r.digest.as_deref(), Some("abc"));
        assert_eq!(latest(&secrets, "nope"), None);
    }

    #[test]
    fn set_status_rewrites_only_the_status_and_description() {
        let release = serde_json::json!({
            "name": "web", "version": 3,
            "info": {"status": "pending-upgrade", "description": "Preparing upgrade"},
            "config": {"password": "kept as is"},
        });
        let engine = base64::engine::general_purpose::STANDARD;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&serde_json::to_vec(&release).unwrap())
            .unwrap();
        let encoded = engine.encode(gz.finish().unwrap());

        let out = set_status(encoded.as_bytes(), "failed", "marked failed").unwrap();
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(engine.decode(&out).unwrap().as_slice())
            .read_to_end(&mut json)
            .unwrap();
        let back: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(back["info"]["status"], "failed");
        assert_eq!(back["info"]["description"], "marked failed");
        assert_eq!(back["config"], release["config"]);
        assert_eq!(back["version"], 3);
        assert!(manifest(&out).unwrap_err().contains("manifest"));

        assert!(
            set_status(b"%%%", "failed", "x")
                .unwrap_err()
                .contains("base64")
        );
    }
}
