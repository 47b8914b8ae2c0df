//! Lease-based leader election on `coordination.k8s.io/v1` Leases, with client-go's semantics:
//!
//! - A candidate takes the Lease when it is free, released, or has not been renewed for its
//!   `leaseDurationSeconds` as *observed locally* (no trust in clocks of other machines).
//! - Every write carries the `resourceVersion` it read, so two candidates can never both win.
//! - The leader renews every retry period; if it has not renewed for the renew deadline (shorter than
//!   the lease duration) it stops its work *before* anyone else may take the Lease.
//! - On shutdown the leader stops its work and then releases the Lease, so a standby takes over on its
//!   next retry instead of waiting for expiry. While the work winds down (up to the shutdown grace) the
//!   leader keeps renewing the Lease, so no standby starts while it still acts; should a renewal fail,
//!   the work is aborted before the Lease could expire.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{Error, health::Health, metrics::LeaderMetrics};

/// Timing of leader election; see the `--lease-duration`, `--renew-deadline`, `--retry-period` and
/// `--shutdown-grace` flags.
#[derive(Clone, Copy, Debug)]
pub struct LeaseTiming {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// How long the work may take to end after a shutdown signal (the Lease is renewed meanwhile).
    pub shutdown_grace: Duration,
}

impl LeaseTiming {
    /// How long the work may take to end once leadership is lost (or can no longer be renewed): until
    /// just before the Lease could expire and another replica start.
    fn lost_grace(&self) -> Duration {
        self.lease_duration.saturating_sub(self.renew_deadline)
    }
}

/// One candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    lease_name: String,
    identity: String,
    timing: LeaseTiming,
    metrics: LeaderMetrics,
    health: Health,
    /// The holder record last seen, and when it was first seen: a Lease is expired when its record has
    /// not changed for its duration, measured on our own monotonic clock.
    observed: Option<(LeaseRecord, Instant)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LeaseRecord {
    holder: Option<String>,
    duration_seconds: Option<i32>,
    renew_time: Option<Timestamp>,
    transitions: i32,
}

impl LeaseRecord {
    fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        LeaseRecord {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            duration_seconds: spec.lease_duration_seconds,
            renew_time: spec.renew_time.map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// Why a term of leadership ended.
enum TermEnd {
    Shutdown,
    Lost,
    WorkEnded(Result<(), Error>),
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        lease_name: &str,
        identity: String,
        timing: LeaseTiming,
        metrics: LeaderMetrics,
        health: Health,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            lease_name: lease_name.to_owned(),
            identity,
            timing,
            metrics,
            health,
            observed: None,
        }
    }

    /// The identity this candidate writes into the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Campaigns for the Lease until `shutdown`; while leading, runs `work` with a token that is
    /// cancelled when leadership ends (`work` must return soon after). Returns after shutdown (having
    /// released the Lease), or with an error if `work` ends by itself.
    pub async fn run<W, Fut>(
        mut self,
        shutdown: CancellationToken,
        mut work: W,
    ) -> Result<(), Error>
    where
        W: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            if !self.campaign(&shutdown).await {
                return Ok(());
            }
            info!(identity = %self.identity, lease = %self.lease_name, "became leader, starting controller");
            self.metrics.set_leading(true);
            self.health.set_leading(true);

            let stop = shutdown.child_token();
            let mut task = tokio::spawn(work(stop.clone()));
            let (end, last_renew) = self.hold(&shutdown, &mut task).await;
            stop.cancel();
            match end {
                TermEnd::WorkEnded(_) => {}
                // The Lease is still ours: keep it while the work winds down.
                TermEnd::Shutdown => self.drain(&mut task, last_renew).await,
                TermEnd::Lost => {
                    let grace = self.timing.lost_grace();
                    if tokio::time::timeout(grace, &mut task).await.is_err() {
                        warn!(grace = ?grace, "controller did not stop before the Lease could expire, aborting it");
                        abort(&mut task).await;
                    }
                }
            }
            self.metrics.set_leading(false);
            self.health.set_leading(false);

            match end {
                TermEnd::Lost => {
                    warn!(identity = %self.identity, "lost leadership, controller stopped; back to standby");
                }
                TermEnd::Shutdown => {
                    self.release().await;
                    return Ok(());
                }
                TermEnd::WorkEnded(result) => {
                    self.release().await;
                    return match result {
                        Ok(()) if shutdown.is_cancelled() => Ok(()),
                        Ok(()) => Err(Error::ControllerEnded),
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }

    /// Tries to acquire the Lease every retry period. Returns false if shut down first.
    async fn campaign(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            match tokio::time::timeout(self.timing.renew_deadline, self.try_acquire_or_renew())
                .await
            {
                Ok(Ok(true)) => return true,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(error = %e, "leader election: cannot read or write the Lease"),
                Err(_) => warn!("leader election: Lease request timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(jittered(self.timing.retry_period)) => {}
            }
        }
    }

    /// Renews the Lease every retry period while `task` runs. Returns why the term ended and when the
    /// last successful renewal was sent.
    async fn hold(
        &mut self,
        shutdown: &CancellationToken,
        task: &mut JoinHandle<()>,
    ) -> (TermEnd, Instant) {
        let mut last_renew = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return (TermEnd::Shutdown, last_renew),
                joined = &mut *task => {
                    let result = joined.map_err(|e| Error::ControllerPanicked(e.to_string()));
                    return (TermEnd::WorkEnded(result), last_renew);
                }
                _ = tokio::time::sleep(self.timing.retry_period) => {}
            }
            match self.renew(last_renew).await {
                Renewal::Renewed(at) => last_renew = at,
                Renewal::Taken => return (TermEnd::Lost, last_renew),
                // A failed renewal is retried until the renew deadline (a timeout is at it).
                Renewal::Failed if Instant::now() >= last_renew + self.timing.renew_deadline => {
                    return (TermEnd::Lost, last_renew);
                }
                Renewal::Failed => {}
            }
        }
    }

    /// One renewal, given up at the renew deadline counted from `last_renew`.
    async fn renew(&mut self, last_renew: Instant) -> Renewal {
        let remaining =
            (last_renew + self.timing.renew_deadline).saturating_duration_since(Instant::now());
        let sent = Instant::now();
        match tokio::time::timeout(remaining, self.try_acquire_or_renew()).await {
            Ok(Ok(true)) => Renewal::Renewed(sent),
            Ok(Ok(false)) => {
                warn!("leader election: another replica holds the Lease");
                Renewal::Taken
            }
            Ok(Err(e)) => {
                warn!(error = %e, "leader election: renewal failed");
                Renewal::Failed
            }
            Err(_) => {
                warn!(deadline = ?self.timing.renew_deadline, "leader election: could not renew before the renew deadline");
                Renewal::Failed
            }
        }
    }

    /// After a shutdown signal, while the cancelled `task` winds down (Helm processes ending, in-flight
    /// reconciles writing their status): the Lease is still ours, so it is renewed every retry period,
    /// and `task` gets up to the shutdown grace. Should a renewal fail, renewals stop and `task` only
    /// gets until the Lease could expire, as when leadership is lost: `last_renew` + lease duration
    /// (another replica waits at least that long after it saw the renewal, which came after we sent
    /// it). Aborts `task` when its time is up.
    async fn drain(&mut self, task: &mut JoinHandle<()>, mut last_renew: Instant) {
        let grace = self.timing.shutdown_grace;
        let mut deadline = Instant::now() + grace;
        let mut renewing = true;
        loop {
            let wake = if renewing {
                deadline.min(Instant::now() + self.timing.retry_period)
            } else {
                deadline
            };
            tokio::select! {
                _ = &mut *task => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if Instant::now() >= deadline {
                if renewing {
                    warn!(grace = ?grace, "controller did not stop within the shutdown grace, aborting it");
                } else {
                    warn!("controller did not stop before the Lease could expire, aborting it");
                }
                abort(task).await;
                return;
            }
            if !renewing {
                continue;
            }
            if let Renewal::Renewed(at) = self.renew(last_renew).await {
                last_renew = at;
            } else {
                // While stopping, one failed renewal ends the renewals: the time left is bounded by
                // the last one that succeeded.
                renewing = false;
                deadline = deadline.min(last_renew + self.timing.lease_duration);
                warn!(left = ?deadline.saturating_duration_since(Instant::now()), "cannot keep the Lease while stopping; the controller gets until just before it could expire");
            }
        }
    }

    /// One acquire-or-renew attempt: true if we hold the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = MicroTime(Timestamp::now());
        let duration_seconds = i32::try_from(self.timing.lease_duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1);
        let Some(current) = self.api.get_opt(&self.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e.into()),
            };
        };

        let record = LeaseRecord::of(&current);
        self.observe(&current);
        let ours = record.holder.as_deref() == Some(self.identity.as_str());
        if !ours && record.holder.is_some() {
            let held_for = record
                .duration_seconds
                .map(|s| Duration::from_secs(s.max(0) as u64))
                .unwrap_or(self.timing.lease_duration);
            let (_, seen_at) = self.observed.as_ref().expect("observed just above");
            if seen_at.elapsed() < held_for {
                debug!(holder = ?record.holder, "Lease held by another replica");
                return Ok(false);
            }
            info!(holder = ?record.holder, "Lease expired, taking over");
        }

        let mut lease = current;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !ours {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(record.transitions + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(duration_seconds);
        spec.renew_time = Some(now);
        // `replace` sends our resourceVersion: a concurrent writer makes this a 409, not a double leader.
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(&updated);
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let record = LeaseRecord::of(lease);
        match &self.observed {
            Some((seen, _)) if *seen == record => {}
            _ => self.observed = Some((record, Instant::now())),
        }
    }

    /// Gives the Lease up (if we still hold it) so a standby can take it at once.
    async fn release(&mut self) {
        let result: Result<bool, Error> = async {
            let Some(mut lease) = self.api.get_opt(&self.lease_name).await? else {
                return Ok(false);
            };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(false);
            }
            let now = MicroTime(Timestamp::now());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now.clone());
            spec.acquire_time = Some(now);
            self.api
                .replace(&self.lease_name, &PostParams::default(), &lease)
                .await?;
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => info!(lease = %self.lease_name, "released the leader-election Lease"),
            Ok(false) => {
                info!(lease = %self.lease_name, "the Lease is no longer ours; nothing to release")
            }
            Err(e) => {
                warn!(error = %e, "could not release the Lease; a standby takes over when it expires")
            }
        }
    }
}

/// The outcome of one renewal attempt.
enum Renewal {
    /// Renewed; the attempt was sent at this instant (the Lease runs from no earlier than that).
    Renewed(Instant),
    /// Another replica holds the Lease.
    Taken,
    /// The request failed or timed out.
    Failed,
}

/// Aborts `task` and waits until it is gone (its Helm children are killed as it drops them), so the
/// Lease is released, or the process ends, only once nothing of the work runs.
pub(crate) async fn abort(task: &mut JoinHandle<()>) {
    task.abort();
    let _ = task.await;
}

/// Adds up to 20% jitter so candidates do not hit the API server in lockstep.
fn jittered(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 1000.0 * 0.2)
}

/// A default identity: POD_NAME or the host name, plus a random suffix so two processes on one host
/// never share an identity.
pub fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "pack-operator".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{base}_{:08x}",
        (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_differ_and_name_the_host() {
        let a = default_identity();
        std::thread::sleep(Duration::from_millis(2));
        let b = default_identity();
        assert_ne!(a, b);
        assert!(a.contains('_'));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(2));
            assert!(
                d >= Duration::from_secs(2) && d <= Duration::from_millis(2400),
                "{d:?}"
            );
        }
    }
}
