//! Leader election of a real controller binary (redeploy-controller) on the real API server: exactly one
//! of two replicas leads; SIGTERM hands over at once; kill -9 hands over once the Lease expires; a
//! replica that finds the Lease taken from it stops acting.

use std::time::{Duration, Instant};

use e2e::{controller::ControllerProcess, test_env, wait};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, api::PostParams};

const LEASE: Duration = Duration::from_secs(6);
const RETRY: Duration = Duration::from_secs(1);

fn args<'a>(lease_name: &'a str, namespace: &'a str) -> Vec<String> {
    vec![
        format!("--lease-name={lease_name}"),
        format!("--lease-namespace={namespace}"),
        format!("--namespace={namespace}"),
        format!("--lease-duration={}s", LEASE.as_secs()),
        "--renew-deadline=4s".to_owned(),
        format!("--retry-period={}s", RETRY.as_secs()),
    ]
}

fn start(env: &e2e::TestEnv, identity: &str, lease: &str, ns: &str) -> ControllerProcess {
    let args = args(lease, ns);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControllerProcess::start(env, "redeploy-controller", identity, &args).expect("start controller")
}

async fn leader_flag(p: &ControllerProcess) -> Option<f64> {
    p.metric("pack_operator_leader").await.ok().flatten()
}

/// Waits until exactly one of `procs` reports `pack_operator_leader 1` and all others 0; returns its index.
async fn wait_single_leader(procs: &[&ControllerProcess], timeout: Duration) -> usize {
    wait::until(
        "exactly one leader",
        timeout,
        Duration::from_millis(100),
        || async {
            let mut flags = vec![];
            for p in procs {
                flags.push(leader_flag(p).await);
            }
            let leaders: Vec<usize> = flags
                .iter()
                .enumerate()
                .filter(|(_, f)| **f == Some(1.0))
                .map(|(i, _)| i)
                .collect();
            let standbys = flags.iter().filter(|f| **f == Some(0.0)).count();
            if leaders.len() == 1 && standbys == procs.len() - 1 {
                Ok(Some(leaders[0]))
            } else {
                Err(format!("leader flags {flags:?}"))
            }
        },
    )
    .await
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get(name).await.ok()?.spec?.holder_identity
}

#[tokio::test]
async fn two_replicas_one_leads_and_sigterm_hands_over_at_once() {
    let env = test_env();
    let ns = env.namespace("le-term").await;
    let leases: Api<Lease> = Api::namespaced(env.client().await, &ns.name);
    let a = start(&env, "replica-a", "redeploy", &ns.name);
    let b = start(&env, "replica-b", "redeploy", &ns.name);
    let mut procs = [a, b];

    let leader = wait_single_leader(&[&procs[0], &procs[1]], Duration::from_secs(30)).await;
    let standby = 1 - leader;
    assert_eq!(
        holder(&leases, "redeploy").await.as_deref(),
        Some(procs[leader].identity.as_str())
    );

    // Both are ready: the leader once its caches synced, the standby while it waits.
    for p in &procs {
        wait::until(
            "/readyz 200",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || async {
                match p.get("/readyz").await {
                    Ok((200, _)) => Ok(Some(())),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        assert_eq!(p.get("/healthz").await.unwrap().0, 200);
    }

    // Leadership is stable: never two leaders, never none, across several renewals.
    wait::holds(
        "a single stable leader",
        3 * RETRY,
        Duration::from_millis(200),
        || async {
            let flags = (
                leader_flag(&procs[leader]).await,
                leader_flag(&procs[standby]).await,
            );
            if flags == (Some(1.0), Some(0.0)) {
                Ok(())
            } else {
                Err(flags)
            }
        },
    )
    .await;

    // SIGTERM: the leader stops, releases the Lease and exits 0; the standby takes over at its next try.
    let sent = Instant::now();
    procs[leader].terminate();
    wait::until(
        "standby takes over",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            match leader_flag(&procs[standby]).await {
                Some(1.0) => Ok(Some(())),
                other => Err(other),
            }
        },
    )
    .await;
    let took = sent.elapsed();
    let status = procs[leader]
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("leader exits after SIGTERM");
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status}; logs:\n{}",
        procs[leader].logs()
    );
    assert!(
        procs[leader]
            .logs()
            .contains("released the leader-election Lease"),
        "logs:\n{}",
        procs[leader].logs()
    );
    assert!(
        took < Duration::from_secs(3),
        "handover after SIGTERM took {took:?}, want < 3s (retry period {RETRY:?})"
    );
    assert_eq!(
        holder(&leases, "redeploy").await.as_deref(),
        Some(procs[standby].identity.as_str())
    );
    eprintln!("SIGTERM handover: {took:?}");
}

#[tokio::test]
async fn kill_9_leader_standby_takes_over_within_lease_duration() {
    let env = test_env();
    let ns = env.namespace("le-kill").await;
    let leases: Api<Lease> = Api::namespaced(env.client().await, &ns.name);
    let a = start(&env, "replica-c", "redeploy", &ns.name);
    let b = start(&env, "replica-d", "redeploy", &ns.name);
    let mut procs = [a, b];
    let leader = wait_single_leader(&[&procs[0], &procs[1]], Duration::from_secs(30)).await;
    let standby = 1 - leader;

    let killed = Instant::now();
    procs[leader].kill();
    wait::until(
        "standby takes over",
        LEASE + 3 * RETRY,
        Duration::from_millis(50),
        || async {
            match leader_flag(&procs[standby]).await {
                Some(1.0) => Ok(Some(())),
                other => Err(other),
            }
        },
    )
    .await;
    let took = killed.elapsed();
    // No release happened, so the standby must have waited for the Lease to expire (not stolen it)...
    assert!(
        took >= LEASE - 2 * RETRY,
        "took over after {took:?}, before the Lease ({LEASE:?}) could have expired"
    );
    // ...and no longer than the lease duration plus detection: the standby's expiry clock starts when it
    // *observes* the last renewal (client-go semantics, immune to clock skew), up to one retry late, and
    // it notices expiry on its next retry.
    assert!(
        took <= LEASE + 3 * RETRY,
        "took over after {took:?}, want <= lease duration {LEASE:?} + 3 retries"
    );
    let lease = leases.get("redeploy").await.unwrap().spec.unwrap();
    assert_eq!(
        lease.holder_identity.as_deref(),
        Some(procs[standby].identity.as_str())
    );
    assert_eq!(lease.lease_transitions, Some(1), "one change of holder");
    eprintln!("kill -9 handover: {took:?}");
}

#[tokio::test]
async fn leader_whose_lease_is_taken_stops_acting() {
    let env = test_env();
    let ns = env.namespace("le-lost").await;
    let leases: Api<Lease> = Api::namespaced(env.client().await, &ns.name);
    let p = start(&env, "replica-e", "redeploy", &ns.name);
    wait_single_leader(&[&p], Duration::from_secs(30)).await;

    // Another party takes the Lease over (as a new leader would after a partition).
    let mut lease = leases.get("redeploy").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    spec.holder_identity = Some("someone-else".into());
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace("redeploy", &PostParams::default(), &lease)
        .await
        .unwrap();

    wait::until(
        "the old leader steps down",
        2 * RETRY + Duration::from_secs(2),
        Duration::from_millis(50),
        || async {
            match leader_flag(&p).await {
                Some(0.0) => Ok(Some(())),
                other => Err(other),
            }
        },
    )
    .await;
    // And it stays a standby: it does not take a Lease that is validly held.
    wait::holds(
        "standby while the Lease is held",
        3 * RETRY,
        Duration::from_millis(200),
        || async {
            match leader_flag(&p).await {
                Some(0.0) => Ok(()),
                other => Err(other),
            }
        },
    )
    .await;
    assert_eq!(
        holder(&leases, "redeploy").await.as_deref(),
        Some("someone-else")
    );
    assert!(p.logs().contains("lost leadership"), "logs:\n{}", p.logs());
}
