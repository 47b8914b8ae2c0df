//! What the three Pack Operator controllers share: CRD types, the process runtime (flags, logs, the
//! `/metrics` `/healthz` `/readyz` server, graceful shutdown), Lease-based leader election and the
//! reconcile metrics every controller reports.
//!
//! A controller binary's `main` parses its flags (with [`RuntimeArgs`] flattened in), builds a
//! [`runtime::Runtime`], registers its own metrics, and hands its controller loop to
//! [`runtime::Runtime::run`], which only runs it while this replica leads.
//!
//! Reconcile helpers every controller uses: [`finalizer`] (a finalizer whose cleanup may wait without an
//! error), [`status::write`] (server-side apply of a status that changed), [`events`] (Events folded by
//! their note), [`requeue::jitter`], [`sync::lock`], [`conditions`], [`watch_index`] (waking the referrers of a ConfigMap or
//! Secret without caching them). Feature `testing` adds [`testing`],
//! the mocked API server of the controllers' reconcile-level unit tests.

pub mod alloc;
pub mod annotation;
pub mod cli;
pub mod condition_metrics;
pub mod conditions;
pub mod crd;
pub mod events;
pub mod finalizer;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod process_metrics;
pub mod requeue;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod sync;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod watch_index;

pub use cli::RuntimeArgs;

/// Errors of the shared runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot build a Kubernetes client (kubeconfig or in-cluster config): {0}")]
    KubeConfig(#[source] kube::Error),
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("health/metrics server failed: {0}")]
    Server(#[source] std::io::Error),
    #[error("the controller loop ended on its own while this replica was leading")]
    ControllerEnded,
    #[error("the controller task panicked: {0}")]
    ControllerPanicked(String),
    #[error("cannot set up logging: {0}")]
    Telemetry(String),
}

impl Error {
    /// Short machine-friendly cause, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::KubeConfig(_) => "KubeConfig",
            Error::Kube(_) => "KubeApi",
            Error::Listen { .. } => "Listen",
            Error::Server(_) => "Server",
            Error::ControllerEnded => "ControllerEnded",
            Error::ControllerPanicked(_) => "ControllerPanicked",
            Error::Telemetry(_) => "Telemetry",
        }
    }
}
