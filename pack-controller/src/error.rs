//! Errors of a Pack reconcile: what the error policy retries, and what of them the Pack's owner is told.

use std::time::Duration;

use common::finalizer;

use crate::{helm::HelmError, release::ReleaseError};

/// Errors of a Pack reconcile that are retried by the error policy (with backoff). Helm failures of an
/// install/upgrade are not errors here: they are reported on the Pack and retried on its own schedule.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Release(#[from] ReleaseError),
    #[error("helm uninstall failed: {source}")]
    Uninstall { source: HelmError, retry: Duration },
    #[error("the Helm operation was cancelled because the controller is stopping")]
    Cancelled,
    #[error("{0}")]
    Finalizer(Box<finalizer::Error<Error>>),
}

impl Error {
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeApi",
            Error::Release(_) => "ReleaseRecord",
            Error::Uninstall { .. } => "UninstallFailed",
            Error::Cancelled => "Cancelled",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "Finalizer",
            },
        }
    }

    /// What to tell the Pack's owner when a request to the API server was refused or failed, with how to
    /// fix it. None for errors that are no news to the owner: conflicts (a newer object; retried at once)
    /// and objects gone meanwhile, and errors that are not the API server's answer.
    pub(crate) fn api_failure(&self) -> Option<String> {
        let api = match self {
            Error::Kube(kube::Error::Api(s))
            | Error::Release(ReleaseError::Kube(kube::Error::Api(s))) => s,
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => {
                    return e.api_failure();
                }
                // 422: the finalizer's JSON patch tests the list it read, and a cache behind the
                // API server fails that test; the next reconcile reads the new list.
                finalizer::Error::AddFinalizer(kube::Error::Api(s))
                | finalizer::Error::RemoveFinalizer(kube::Error::Api(s))
                    if s.code != 422 =>
                {
                    s
                }
                _ => return None,
            },
            _ => return None,
        };
        if matches!(api.code, 404 | 409) {
            return None;
        }
        let hint = if api.code == 403 {
            "; the pack-controller's ServiceAccount lacks this right: check its RBAC (docs/deploy.md, the \
             chart's packController.rbac)"
        } else {
            ""
        };
        let text: String = api.message.chars().take(512).collect();
        Some(format!(
            "a request of the controller to the API server failed ({} {}): {text}{hint}",
            api.code, api.reason
        ))
    }

    /// When to retry, if this error decides it (from the Pack's status) rather than the error policy.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Uninstall { retry, .. } => Some(*retry),
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::CleanupFailed(e) => e.retry_after(),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn api_refusals_are_reported_with_the_fix_and_races_are_not() {
        let forbidden = Error::Release(ReleaseError::Kube(api(
            403,
            "Forbidden",
            "secrets is forbidden: cannot list resource \"secrets\"",
        )));
        let message = forbidden.api_failure().unwrap();
        assert!(message.contains("403 Forbidden"), "{message}");
        assert!(message.contains("cannot list resource"), "{message}");
        assert!(message.contains("check its RBAC"), "{message}");
        let in_finalizer = Error::Finalizer(Box::new(finalizer::Error::AddFinalizer(api(
            403,
            "Forbidden",
            "packs is forbidden",
        ))));
        let message = in_finalizer.api_failure().unwrap();
        assert!(
            message.contains("403 Forbidden") && message.contains("RBAC"),
            "{message}"
        );
        let invalid = Error::Kube(api(422, "Invalid", "spec.x: Invalid value"));
        let message = invalid.api_failure().unwrap();
        assert!(
            message.contains("422 Invalid") && !message.contains("RBAC"),
            "{message}"
        );
        // The finalizer's JSON-patch test failing on a stale cache is a race, not news.
        let raced = Error::Finalizer(Box::new(finalizer::Error::AddFinalizer(api(
            422,
            "Invalid",
            "the server rejected our request due to an error in our request",
        ))));
        assert_eq!(raced.api_failure(), None);
        for quiet in [
            Error::Kube(api(409, "Conflict", "the object has been modified")),
            Error::Kube(api(404, "NotFound", "gone")),
            Error::Cancelled,
        ] {
            assert_eq!(quiet.api_failure(), None, "{quiet}");
        }
    }
}
