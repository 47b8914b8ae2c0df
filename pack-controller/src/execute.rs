//! Executing a [`Plan::Apply`](crate::plan::Plan::Apply): recover a stuck release, fetch the chart,
//! run `helm upgrade --install`, and roll back a failed upgrade when the Pack asks for it. The result is
//! an [`Outcome`] value; what the Pack's status and Events say about it is decided in
//! [`crate::status::after_apply`].

use std::time::Instant;

use common::crd::{Pack, PackStatus};
use kube::{ResourceExt, runtime::events::EventType};
use tracing::warn;

use crate::{
    chart::ChartError,
    error::Error,
    helm::{HelmError, Upgrade},
    identity::Identity,
    plan::{Outcome, ReleaseDigest, RollbackOutcome},
    reconcile::{Context, publish},
    release::{self, DIGEST_LABEL, PACK_LABEL, ReleaseRecord},
    repository,
    resolve::Resolution,
    status,
};

/// What executing one install/upgrade needs to know.
pub struct Apply<'a> {
    pub pack: &'a Pack,
    pub repository: crate::repository_kind::RepositoryView<'a>,
    pub resolution: &'a Resolution,
    pub digest: &'a ReleaseDigest,
    /// The release as it was before (None: installing).
    pub record: Option<&'a ReleaseRecord>,
    /// The ServiceAccount every operation runs as (None: the controller).
    pub identity: Option<&'a Identity>,
}

impl Apply<'_> {
    fn install(&self) -> bool {
        self.record.is_none()
    }
}

/// Runs the install/upgrade (and the rollback after a failed upgrade with `spec.rollbackOnFailure`).
/// `Err` only for what is not the release's outcome: the controller is stopping, or the API server
/// failed a read.
pub async fn apply(ctx: &Context, a: &Apply<'_>) -> Result<Outcome, Error> {
    let ns = a.pack.namespace().unwrap_or_default();
    let name = a.pack.name_any();
    let operation = if a.install() { "install" } else { "upgrade" };
    let started = Instant::now();
    let result = run_helm(ctx, a, &ns, &name, operation).await;
    let took = started.elapsed();
    let e = match result {
        Ok(outcome) => {
            return Ok(Outcome::Applied {
                revision: outcome.revision,
                took,
            });
        }
        Err(ApplyError::Helm(HelmError::Cancelled)) => return Err(Error::Cancelled),
        Err(e) => e,
    };
    let helm_refused = matches!(e, ApplyError::Helm(HelmError::Failed { .. }));
    let reason = match (helm_refused, a.install()) {
        (true, true) => status::INSTALL_FAILED,
        (true, false) => status::UPGRADE_FAILED,
        (false, _) => e.reason(),
    };
    // Roll back only a failed upgrade of a release that was deployed before it.
    let rollback_to = a
        .record
        .filter(|r| r.is_deployed() && a.pack.spec.rollback_on_failure && helm_refused)
        .map(|r| r.revision);
    let rollback = match rollback_to {
        Some(to) => Some(
            rollback(
                ctx,
                a.identity,
                &a.resolution.secret_strings,
                &ns,
                &name,
                to,
            )
            .await?,
        ),
        None => None,
    };
    let mut error = e.to_string();
    if let Some(fix) = a.identity.and_then(|i| i.explain_refusal(&error)) {
        error = format!("{error}; {fix}");
    }
    Ok(Outcome::Failed {
        reason,
        error,
        took,
        rollback,
    })
}

/// Rolls release `name` back to revision `to` (after a failed upgrade, or a readiness timeout of
/// `spec.wait`), as `identity`. `redact`: the strings of the Pack's values from Secrets.
pub async fn rollback(
    ctx: &Context,
    identity: Option<&Identity>,
    redact: &[String],
    ns: &str,
    name: &str,
    to: i64,
) -> Result<RollbackOutcome, Error> {
    let started = Instant::now();
    // Only what came from Secrets is secret (the older values restored are unknown here; see docs/pack.md).
    let as_user = identity.map(Identity::username);
    match ctx
        .helm
        .rollback(ns, name, to, as_user.as_deref(), redact, &ctx.stop)
        .await
    {
        Ok(()) => {
            let revision = release::read(&ctx.client, ns, name)
                .await?
                .map(|r| r.revision);
            Ok(RollbackOutcome::RolledBack {
                to,
                revision,
                took: started.elapsed(),
            })
        }
        Err(HelmError::Cancelled) => Err(Error::Cancelled),
        Err(e) => Ok(RollbackOutcome::Failed {
            to,
            error: e.to_string(),
            took: started.elapsed(),
        }),
    }
}

/// Why an install/upgrade could not be done.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error("{0}")]
    Helm(HelmError),
    #[error("{0}")]
    Chart(#[from] ChartError),
    #[error("cannot use the repository's credentials: {0}")]
    Repository(String, &'static str),
}

impl ApplyError {
    fn reason(&self) -> &'static str {
        match self {
            ApplyError::Helm(e) => e.reason(),
            ApplyError::Chart(e) => e.reason(),
            ApplyError::Repository(_, reason) => reason,
        }
    }
}

async fn run_helm(
    ctx: &Context,
    a: &Apply<'_>,
    ns: &str,
    name: &str,
    operation: &'static str,
) -> Result<crate::helm::ReleaseOutcome, ApplyError> {
    let request = repository::fetch_request(&ctx.client, a.repository, ctx.max_index_bytes)
        .await
        .map_err(|e| ApplyError::Repository(e.to_string(), e.reason()))?;
    let chart = ctx.charts.archive(&request, a.resolution).await?;
    let labels = [(PACK_LABEL, name), (DIGEST_LABEL, a.digest.label())];
    let as_user = a.identity.map(Identity::username);
    let upgrade = Upgrade {
        namespace: ns,
        release: name,
        chart: &chart,
        values: &a.resolution.values,
        redact: &a.resolution.secret_strings,
        labels: &labels,
        as_user: as_user.as_deref(),
    };
    ctx.helm
        .upgrade_install(operation, &upgrade, &ctx.stop)
        .await
        .map_err(ApplyError::Helm)
}

/// Marks a release revision left `pending-*` by an interrupted Helm process failed, so Helm accepts the
/// next operation. Nothing else operates on this release here: the controller runs one reconcile per
/// Pack at a time, and only the leader runs Helm.
pub async fn recover_stuck(
    ctx: &Context,
    pack: &Pack,
    identity: Option<&Identity>,
    next: &mut PackStatus,
    record: &ReleaseRecord,
) -> Result<(), Error> {
    let ns = pack.namespace().unwrap_or_default();
    let started = Instant::now();
    let description = format!(
        "Release marked failed by pack-controller: it was left {} by an interrupted Helm process",
        record.status
    );
    // The release's record is written with the rights Helm would have: the Pack's ServiceAccount's.
    let client = match identity {
        Some(i) => i.client(&ctx.config)?,
        None => ctx.client.clone(),
    };
    let result = release::mark_failed(&client, &ns, record, &description).await;
    let took = started.elapsed();
    ctx.helm.record(
        "recover",
        if result.is_ok() { "success" } else { "failure" },
        took,
    );
    status::push_history(
        next,
        status::attempt(
            "Recover",
            None,
            None,
            result
                .as_ref()
                .map(|()| Some(record.revision))
                .map_err(ToString::to_string),
            took,
        ),
    );
    result?;
    let note = format!(
        "release {} revision {} was stuck in {} (an interrupted Helm process); marked it failed and \
         retrying",
        pack.name_any(),
        record.revision,
        record.status
    );
    warn!("{note}");
    publish(
        ctx,
        pack,
        EventType::Warning,
        "StuckReleaseRecovered",
        "Recover",
        &note,
    )
    .await;
    Ok(())
}
