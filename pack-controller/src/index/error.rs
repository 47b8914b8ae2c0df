//! What a failed fetch or parse says, and what it never says: [`IndexError`] (one variant per cause, with
//! the [`reason`](IndexError::reason) that feeds status conditions, Events and metric labels),
//! [`RedactedString`] for passwords, and URLs shown without their user info or query.
//!
//! **Secrets**: passwords are held in [`RedactedString`]; errors and `Debug` output never contain them, nor
//! the user info or query of a URL.

use std::fmt;
use std::time::Duration;

use url::Url;

/// Why a repository index could not be fetched or read.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// `spec.url` is not an absolute `http://` or `https://` URL.
    #[error("repository URL `{url}` cannot be used: {message}")]
    InvalidUrl {
        /// The URL with user info removed and any query shown as `?<redacted>`.
        url: String,
        message: String,
    },
    /// The server answered with an HTTP error status (401, 404, 500, ...).
    #[error("GET {url} answered HTTP {status}{}{}", status_text(.status), http_hint(.status, *.target))]
    Http {
        status: u16,
        /// The URL with user info removed and any query shown as `?<redacted>`.
        url: String,
        /// What was fetched: the fix of a 404 depends on it.
        target: HttpTarget,
    },
    /// The TLS handshake failed (unknown CA, expired or mismatched certificate, not a TLS server), or the
    /// custom CA could not be loaded.
    #[error("TLS with the repository failed: {0}")]
    Tls(String),
    /// The repository could not be reached, or the connection broke (DNS, refused, reset, ...).
    #[error("could not reach the repository: {0}")]
    Connect(String),
    /// The fetch did not complete within [`FetchRequest::timeout`](super::FetchRequest::timeout).
    #[error(
        "the repository did not send its index within {after:?}; is it reachable and not overloaded?"
    )]
    Timeout { after: Duration },
    /// The index is larger than [`FetchRequest::max_bytes`](super::FetchRequest::max_bytes).
    #[error(
        "the repository index is larger than the {} limit; raise pack-controller's index size limit \
         or split the repository",
        size_text(.limit)
    )]
    TooLarge { limit: u64 },
    /// The index is not valid YAML (or JSON), or a kept field has the wrong type.
    #[error("cannot parse the repository index: {message}")]
    Parse {
        /// 1-based line of the problem, when the parser knows it (the message says it too).
        line: Option<usize>,
        message: String,
    },
    /// The document parsed but is not a Helm repository index (an HTML page, no `apiVersion`, no `entries`).
    #[error("not a Helm repository index: {detail}")]
    NotAnIndex { detail: String },
    /// The fetch was cut short from inside the process (shutdown).
    #[error("fetching the repository index was interrupted: {0}")]
    Interrupted(String),
}

/// What a GET fetched, for the hint of a failure: `spec.url` names the index, the index names the archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpTarget {
    /// `<spec.url>/index.yaml`.
    Index,
    /// A chart archive URL as the repository index lists it (or an OCI chart layer).
    Archive,
    /// An OCI registry's tag list, manifest or token.
    Registry,
}

impl IndexError {
    /// Machine-readable reason for status conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            IndexError::InvalidUrl { .. } => "URLInvalid",
            IndexError::Http {
                status: 401 | 403, ..
            } => "AuthenticationFailed",
            IndexError::Http { .. }
            | IndexError::Tls(_)
            | IndexError::Connect(_)
            | IndexError::Timeout { .. }
            | IndexError::Interrupted(_) => "IndexFetchFailed",
            IndexError::TooLarge { .. } => "IndexTooLarge",
            IndexError::Parse { .. } | IndexError::NotAnIndex { .. } => "IndexInvalid",
        }
    }

    /// Replaces `secret` in the free-text messages; a last line of defence should a library ever quote it.
    pub(super) fn scrub(self, secret: &str) -> Self {
        if secret.is_empty() {
            return self;
        }
        let clean = |s: String| {
            if s.contains(secret) {
                s.replace(secret, "<redacted>")
            } else {
                s
            }
        };
        match self {
            IndexError::Tls(m) => IndexError::Tls(clean(m)),
            IndexError::Connect(m) => IndexError::Connect(clean(m)),
            IndexError::Interrupted(m) => IndexError::Interrupted(clean(m)),
            IndexError::InvalidUrl { url, message } => IndexError::InvalidUrl {
                url: clean(url),
                message: clean(message),
            },
            other => other,
        }
    }
}

fn status_text(status: &u16) -> String {
    reqwest::StatusCode::from_u16(*status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default()
}

fn http_hint(status: &u16, target: HttpTarget) -> &'static str {
    // spec.url is right (the index was read from it): the index names an archive that is not there.
    if target == HttpTarget::Archive && matches!(status, 404 | 410) {
        return "; the repository index lists this chart archive but the server does not have it: the \
                repository is inconsistent; republish the chart archive, or regenerate the index \
                (helm repo index) where the repository is published";
    }
    if target == HttpTarget::Registry && matches!(status, 401 | 403 | 404) {
        return match status {
            401 => {
                "; the registry wants credentials: check spec.secretRef (username and password, or a \
                    kubernetes.io/dockerconfigjson Secret with an entry for this registry)"
            }
            403 => "; the credentials of spec.secretRef may not pull from this registry repository",
            _ => {
                "; the registry has no such manifest: check spec.url (oci://host/path) and the chart name"
            }
        };
    }
    match status {
        401 => {
            "; the repository wants credentials: check the username and password of spec.secretRef"
        }
        403 => "; the credentials of spec.secretRef are not allowed to read this repository",
        404 => {
            "; spec.url must be the repository URL, the directory that holds index.yaml \
             (not the URL of index.yaml itself)"
        }
        304 => "; the server answered Not Modified to a request that had no validators",
        408 | 429 | 500..=599 => "; the repository server has a problem, the fetch will be retried",
        _ => "",
    }
}

fn size_text(bytes: &u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if *bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// A secret string (a password) whose `Debug` and `Display` print `<redacted>`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedactedString(String);

impl RedactedString {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        RedactedString(secret.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for RedactedString {
    fn from(secret: String) -> Self {
        RedactedString(secret)
    }
}

impl fmt::Debug for RedactedString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for RedactedString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A URL fit for messages: no user info, and a query (which may hold a token) shown as `?<redacted>`.
pub(super) fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    if had_query {
        format!("{shown}?<redacted>")
    } else {
        shown.into()
    }
}

pub(crate) fn redact_url_text(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(parsed) => redact_url(&parsed),
        Err(_) => match url.rsplit_once('@') {
            Some((_, rest)) => format!("<redacted>@{rest}"),
            None => url.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_404_hint_names_the_fix_of_what_was_fetched() {
        let http = |status, target| {
            IndexError::Http {
                status,
                url: "https://h/repo/x".into(),
                target,
            }
            .to_string()
        };
        // The index: spec.url is wrong.
        assert_eq!(
            http(404, HttpTarget::Index),
            "GET https://h/repo/x answered HTTP 404 Not Found; spec.url must be the repository URL, the \
             directory that holds index.yaml (not the URL of index.yaml itself)"
        );
        // An archive the index lists: spec.url is right, the repository is inconsistent.
        for status in [404, 410] {
            let message = http(status, HttpTarget::Archive);
            assert!(
                message.ends_with(
                    "; the repository index lists this chart archive but the server does not have it: \
                     the repository is inconsistent; republish the chart archive, or regenerate the \
                     index (helm repo index) where the repository is published"
                ),
                "{message}"
            );
            assert!(!message.contains("spec.url"), "{message}");
        }
        // Other statuses have the same fix whatever was fetched.
        for status in [401, 403, 503] {
            assert_eq!(
                http(status, HttpTarget::Index),
                http(status, HttpTarget::Archive)
            );
        }
        assert!(http(401, HttpTarget::Archive).contains("spec.secretRef"));
    }
}
