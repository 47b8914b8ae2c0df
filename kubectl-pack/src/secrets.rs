//! What of a rendered release may be printed. Unless `--show-secrets`:
//! - every form of a string that came from a `valuesFrom` Secret (as written, quoted, base64…) is blanked
//!   as `<value>` wherever it appears, with the controller's own redaction ([`pack_controller::helm::redact`]);
//! - the `data` and `stringData` values of every rendered `Secret` are masked, whatever they came from
//!   (a chart may also derive Secret content from values in ways no string match can follow), as
//!   `kubectl diff` does: `***`, or `*** (before)` / `*** (after)` where a diff changes them.

use serde_json::Value;

/// A masked Secret value.
pub const MASK: &str = "***";

const SECRET_FIELDS: [&str; 2] = ["data", "stringData"];

fn is_secret(object: &Value) -> bool {
    object.get("kind").and_then(Value::as_str) == Some("Secret")
        && object.get("apiVersion").and_then(Value::as_str) == Some("v1")
}

/// Masks the `data`/`stringData` values of `object` if it is a Secret.
pub fn mask(object: &mut Value) {
    if !is_secret(object) {
        return;
    }
    for field in SECRET_FIELDS {
        if let Some(Value::Object(map)) = object.get_mut(field) {
            map.values_mut().for_each(|v| *v = MASK.into());
        }
    }
}

/// Masks the Secret values of `live` and `desired` (the same object), keeping visible which keys changed.
pub fn mask_pair(live: &mut Value, desired: &mut Value) {
    if !is_secret(live) && !is_secret(desired) {
        return;
    }
    for field in SECRET_FIELDS {
        let before = live.get(field).cloned().unwrap_or(Value::Null);
        if let Some(Value::Object(after)) = desired.get_mut(field) {
            for (key, value) in after.iter_mut() {
                let changed = before.get(key) != Some(value);
                *value = if changed { "*** (after)" } else { MASK }.into();
            }
        }
        let after = desired.get(field).cloned().unwrap_or(Value::Null);
        if let Some(Value::Object(map)) = live.get_mut(field) {
            for (key, value) in map.iter_mut() {
                let same = after.get(key).and_then(Value::as_str) == Some(MASK);
                *value = if same { MASK } else { "*** (before)" }.into();
            }
        }
    }
}

/// `helm template`'s output as it may be printed: Secret objects masked, strings from Secrets blanked.
pub fn shown_manifests(manifests: &str, secret_strings: &[String]) -> String {
    let mut out = String::with_capacity(manifests.len());
    for (i, document) in split_documents(manifests).iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&masked_document(document));
    }
    pack_controller::helm::redact(&out, secret_strings)
}

/// The YAML documents of a stream, split at `---` lines (Helm writes one before each).
pub fn split_documents(stream: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in stream.lines() {
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else if let Some(last) = documents.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    documents.retain(|d| !d.trim().is_empty());
    documents
}

/// `document` unchanged unless it is a Secret; a Secret is written again with its values masked, after
/// its leading comments (Helm's `# Source:` line).
fn masked_document(document: &str) -> String {
    let Ok(mut object) = serde_yaml::from_str::<Value>(document) else {
        return document.to_owned();
    };
    if !is_secret(&object) {
        return document.to_owned();
    }
    mask(&mut object);
    let comments: String = document
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    comments + &serde_yaml::to_string(&object).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RENDERED: &str = "---\n# Source: app/templates/secret.yaml\napiVersion: v1\nkind: Secret\n\
        metadata:\n  name: app\ndata:\n  password: aHVudGVyMjIy\nstringData:\n  token: hunter222\n\
        ---\n# Source: app/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\n\
        data:\n  password: hunter222\n  color: blue\n";

    #[test]
    fn rendered_secrets_are_masked_and_secret_strings_blanked_elsewhere() {
        let shown = shown_manifests(RENDERED, &["hunter222".into()]);
        assert!(!shown.contains("hunter222"), "{shown}");
        assert!(!shown.contains("aHVudGVyMjIy"), "{shown}");
        assert!(
            shown.contains("password: '***'") || shown.contains("password: \"***\""),
            "{shown}"
        );
        assert!(
            shown.contains("# Source: app/templates/secret.yaml"),
            "{shown}"
        );
        assert!(shown.contains("password: <value>"), "{shown}");
        assert!(shown.contains("color: blue"), "{shown}");
        assert_eq!(split_documents(&shown).len(), 2);
    }

    #[test]
    fn a_diff_of_secrets_shows_which_keys_changed_but_no_value() {
        let mut live = json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"same": "YQ==", "changed": "Yg==", "gone": "Yw=="}});
        let mut desired = json!({"apiVersion": "v1", "kind": "Secret",
            "data": {"same": "YQ==", "changed": "ZA==", "new": "ZQ=="}});
        mask_pair(&mut live, &mut desired);
        assert_eq!(
            live["data"],
            json!({"same": "***", "changed": "*** (before)", "gone": "*** (before)"})
        );
        assert_eq!(
            desired["data"],
            json!({"same": "***", "changed": "*** (after)", "new": "*** (after)"})
        );
    }

    #[test]
    fn other_objects_are_not_masked() {
        let mut cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}});
        mask(&mut cm);
        assert_eq!(cm["data"]["a"], "b");
    }
}
