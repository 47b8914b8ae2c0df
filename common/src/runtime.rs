//! Wiring shared by the three binaries: client, metrics registry, health server, leader election and
//! graceful shutdown around a controller loop.

use std::{future::Future, sync::Arc};

use kube::Client;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    Error, RuntimeArgs,
    health::Health,
    leader::{LeaderElector, LeaseTiming, default_identity},
    metrics::{self, LeaderMetrics},
    process_metrics::ProcessCollector,
    server, shutdown,
};

/// What a controller loop gets while this replica leads.
#[derive(Clone)]
pub struct Leading {
    /// Client to the API server.
    pub client: Client,
    /// Cancelled when leadership ends or the process shuts down; the loop must return soon after.
    pub stop: CancellationToken,
    /// Report cache sync here (`health.set_synced(true)`) so `/readyz` turns ready.
    pub health: Health,
}

/// A controller process before it starts: register metrics on [`Runtime::registry`], then
/// [`Runtime::run`].
pub struct Runtime {
    name: &'static str,
    args: RuntimeArgs,
    client: Client,
    registry: Registry,
    health: Health,
    leader_metrics: LeaderMetrics,
}

impl Runtime {
    /// Connects to the API server (kubeconfig or in-cluster) and prepares the shared metrics.
    pub async fn new(name: &'static str, version: &str, args: RuntimeArgs) -> Result<Self, Error> {
        if crate::alloc::fix_mmap_threshold() {
            tracing::debug!(
                bytes = crate::alloc::MMAP_THRESHOLD_BYTES,
                "fixed malloc's mmap threshold"
            );
        }
        let client = Client::try_default().await.map_err(Error::KubeConfig)?;
        Ok(Self::with_client(name, version, args, client))
    }

    /// As [`Runtime::new`] with a given client (tests).
    pub fn with_client(
        name: &'static str,
        version: &str,
        args: RuntimeArgs,
        client: Client,
    ) -> Self {
        let (registry, leader_metrics) = base_registry(name, version);
        Runtime {
            name,
            args,
            client,
            registry,
            health: Health::default(),
            leader_metrics,
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The metrics registry, for the controller's own metrics (already prefixed `pack_operator_`).
    pub fn registry(&mut self) -> &mut Registry {
        prefixed(&mut self.registry)
    }

    /// The namespace this process is scoped to, if any (`--namespace`).
    pub fn namespace(&self) -> Option<&str> {
        self.args.namespace.as_deref()
    }

    /// Serves health and metrics, and runs `controller` while this replica leads, until SIGTERM/SIGINT.
    pub async fn run<W, Fut>(self, controller: W) -> Result<(), Error>
    where
        W: FnMut(Leading) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let shutdown = shutdown::on_signal();
        self.run_until(shutdown, controller).await
    }

    /// As [`Runtime::run`], stopping when `shutdown` is cancelled.
    pub async fn run_until<W, Fut>(
        self,
        shutdown: CancellationToken,
        mut controller: W,
    ) -> Result<(), Error>
    where
        W: FnMut(Leading) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Runtime {
            name,
            args,
            client,
            registry,
            health,
            leader_metrics,
        } = self;
        // The server outlives the shutdown signal: while the controller winds down (up to the shutdown
        // grace) its metrics and /healthz still answer. It stops once the controller has.
        let serving = CancellationToken::new();
        let server = server::bind(
            args.metrics_address,
            Arc::new(registry),
            health.clone(),
            serving.clone(),
        )
        .await?;
        let server = tokio::spawn(server);
        // Freed memory goes back to the system (after an initial list, an index refresh), not only
        // from the arenas' tops: see common::alloc.
        let trimming = tokio::spawn(crate::alloc::trim_periodically());

        let mut start = {
            let client = client.clone();
            let health = health.clone();
            move |stop: CancellationToken| {
                controller(Leading {
                    client: client.clone(),
                    stop,
                    health: health.clone(),
                })
            }
        };

        let result = if args.leader_elect {
            let namespace = args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned());
            let lease_name = args.lease_name.clone().unwrap_or_else(|| name.to_owned());
            let identity = args.identity.clone().unwrap_or_else(default_identity);
            info!(%identity, lease = %format!("{namespace}/{lease_name}"), "leader election on; waiting for the Lease");
            let timing = LeaseTiming {
                lease_duration: args.lease_duration,
                renew_deadline: args.renew_deadline,
                retry_period: args.retry_period,
                shutdown_grace: args.shutdown_grace,
            };
            LeaderElector::new(
                client,
                &namespace,
                &lease_name,
                identity,
                timing,
                leader_metrics,
                health,
            )
            .run(shutdown.clone(), start)
            .await
        } else {
            info!("leader election off; this replica acts alone");
            leader_metrics.set_leading(true);
            health.set_leading(true);
            let mut work = tokio::spawn(start(shutdown.clone()));
            let joined = tokio::select! {
                joined = &mut work => joined,
                // Once shut down, the controller gets the shutdown grace to finish.
                () = async {
                    shutdown.cancelled().await;
                    tokio::time::sleep(args.shutdown_grace).await;
                } => {
                    tracing::warn!(grace = ?args.shutdown_grace, "controller did not stop within the shutdown grace, aborting it");
                    crate::leader::abort(&mut work).await;
                    Ok(())
                }
            };
            leader_metrics.set_leading(false);
            match joined {
                Ok(()) if shutdown.is_cancelled() => Ok(()),
                Ok(()) => Err(Error::ControllerEnded),
                Err(e) => Err(Error::ControllerPanicked(e.to_string())),
            }
        };

        // Stop serving whatever ended the controller, then report the first error.
        shutdown.cancel();
        serving.cancel();
        trimming.abort();
        let served = server
            .await
            .map_err(|e| Error::ControllerPanicked(e.to_string()))?;
        result.and(served)
    }
}

/// Waits until `store` holds its first complete listing; false if its writer was dropped first (the
/// controller stopped before syncing).
pub async fn store_synced<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // Re-poll instead of awaiting once: kube-runtime's DelayedInit wakes only the most recently
    // registered waiter, and the Controller registers its own after ours, so a single await may never
    // be woken.
    loop {
        match tokio::time::timeout(
            std::time::Duration::from_millis(250),
            store.wait_until_ready(),
        )
        .await
        {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_) => {} // not yet, or not woken: look again
        }
    }
}

/// Marks `health` synced once `synced` resolves true (e.g. every cache of a controller is ready).
pub fn report_sync_when(synced: impl Future<Output = bool> + Send + 'static, health: Health) {
    tokio::spawn(async move {
        if synced.await {
            tracing::info!("caches synced; ready");
            health.set_synced(true);
        }
    });
}

/// Marks `health` synced once `store` holds its first complete listing.
pub fn report_sync_when_ready<K>(store: kube::runtime::reflector::Store<K>, health: Health)
where
    K: kube::Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
{
    report_sync_when(async move { store_synced(&store).await }, health);
}

/// The registry a process serves: the standard `process_*` metrics on its unprefixed root (the names
/// stock dashboards and alerts query), build info and leadership under `pack_operator_`.
fn base_registry(name: &str, version: &str) -> (Registry, LeaderMetrics) {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    let own = prefixed(&mut registry);
    metrics::register_build_info(own, name, version);
    crate::condition_metrics::register(own);
    let leader_metrics = LeaderMetrics::register(own);
    (registry, leader_metrics)
}

/// A new `pack_operator_` sub-registry of `root`. Each call adds one, which is harmless: a family is
/// registered once, in whichever sub-registry, and the root encodes them all.
fn prefixed(root: &mut Registry) -> &mut Registry {
    root.sub_registry_with_prefix(metrics::PREFIX)
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn process_metrics_carry_the_standard_names_and_the_rest_the_prefix() {
        let (mut registry, leader) = base_registry("pack-controller", "0.1.0");
        leader.set_leading(true);
        drop(metrics::ReconcileMetrics::register(prefixed(&mut registry), "pack").start());
        let text = metrics::encode(&registry).unwrap();
        for name in [
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
            "pack_operator_leader",
            "pack_operator_build_info",
            "pack_operator_reconciles_total",
        ] {
            assert!(
                text.lines()
                    .any(|l| l.split([' ', '{']).next() == Some(name)),
                "no sample of {name} in:\n{text}"
            );
        }
        assert!(!text.contains("pack_operator_process_"), "{text}");
    }
}
