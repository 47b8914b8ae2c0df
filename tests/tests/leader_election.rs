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
    // The last renewal seen before SIGTERM: a Lease not released stays valid until at least
    // `renewed + leaseDuration`, and a standby cannot take it before then.
    let before = leases.get("redeploy").await.unwrap().spec.unwrap();
    let valid_until = before.renew_time.unwrap().0
        + k8s_openapi::jiff::SignedDuration::from_secs(
            before.lease_duration_seconds.unwrap().into(),
        );
    let sent = Instant::now();
    procs[leader].terminate();
    wait::until(
        "standby takes over",
        Duration::from_secs(30),
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
    let after = leases.get("redeploy").await.unwrap().spec.unwrap();
    assert_eq!(
        after.holder_identity.as_deref(),
        Some(procs[standby].identity.as_str())
    );
    // Proof of the release, from the times the API server stored rather than from a stopwatch: the
    // standby acquired the Lease before the old leader's last renewal would have expired.
    let acquired = after.acquire_time.unwrap().0;
    assert!(
        acquired < valid_until,
        "the standby acquired the Lease at {acquired}, not before the old one expired at {valid_until}: it was not released"
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

#[tokio::test]
async fn leader_that_cannot_renew_stops_before_its_lease_expires() {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    use kube::api::{DeleteParams, ObjectMeta};

    let env = test_env();
    let ns = env.namespace("le-renew").await;
    let client = env.client().await;
    // The controller runs as a ServiceAccount allowed to use Leases and watch Deployments here...
    let role = Role {
        metadata: ObjectMeta {
            name: Some("elector".into()),
            ..Default::default()
        },
        rules: Some(vec![
            PolicyRule {
                api_groups: Some(vec!["coordination.k8s.io".into()]),
                resources: Some(vec!["leases".into()]),
                verbs: vec!["get".into(), "create".into(), "update".into()],
                ..Default::default()
            },
            PolicyRule {
                api_groups: Some(vec!["apps".into()]),
                resources: Some(vec!["deployments".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..Default::default()
            },
        ]),
    };
    Api::<Role>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("elector".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "elector".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "elector".into(),
            namespace: Some(ns.name.clone()),
            ..Default::default()
        }]),
    };
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let kubeconfig = env.service_account_kubeconfig(&ns.name, "elector").await;
    let args = args("redeploy", &ns.name);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = ControllerProcess::start_with_kubeconfig(
        &kubeconfig,
        "redeploy-controller",
        "replica-f",
        &args,
    )
    .unwrap();
    wait_single_leader(&[&p], Duration::from_secs(30)).await;

    // ...until its right to update the Lease is revoked: every renewal now fails with 403.
    let leases: Api<Lease> = Api::namespaced(client, &ns.name);
    bindings
        .delete("elector", &DeleteParams::default())
        .await
        .unwrap();
    let revoked = Instant::now();
    wait::until(
        "the leader steps down",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            match leader_flag(&p).await {
                Some(0.0) => Ok(Some(())),
                other => Err(other),
            }
        },
    )
    .await;
    let stepped_down = Instant::now();
    let took = stepped_down - revoked;
    // The last renewal the API server recorded, and how long the Lease is valid after it.
    let spec = leases.get("redeploy").await.unwrap().spec.unwrap();
    let renewed = spec.renew_time.unwrap().0;
    let valid_until = renewed
        + k8s_openapi::jiff::SignedDuration::from_secs(spec.lease_duration_seconds.unwrap().into());
    let now = k8s_openapi::jiff::Timestamp::now();
    assert!(
        now < valid_until,
        "the leader stopped at {now}, after its Lease expired at {valid_until}: another replica could have been acting"
    );
    // Renew deadline (4s) plus one retry period to notice.
    assert!(
        took <= Duration::from_secs(4) + 2 * RETRY,
        "stepped down {took:?} after renewals began failing"
    );
    assert!(p.logs().contains("lost leadership"), "logs:\n{}", p.logs());
    eprintln!(
        "stepped down {took:?} after losing the right to renew; Lease valid for {:?} more",
        valid_until.duration_since(now)
    );
}

/// pack-controller's Lease timing in [`start_pack_controller`].
const PACK_LEASE: Duration = Duration::from_secs(3);

/// A stand-in for helm that takes `after_term` to end after SIGTERM (as a Helm waiting for a hook to
/// wind down may) and records in `<dir>/helm.log` when it started (with its pid), got SIGTERM, and
/// exited by itself.
fn slow_helm(
    dir: &std::path::Path,
    after_term: Duration,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).unwrap();
    let log = dir.join("helm.log");
    let script = dir.join("helm");
    let secs = after_term.as_secs();
    let log_s = log.display();
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"started $$\" >> '{log_s}'\n\
             trap 'echo term >> \"{log_s}\"; sleep {secs}; echo exit >> \"{log_s}\"; kill $child 2>/dev/null; exit 1' TERM\n\
             sleep 60 &\n\
             child=$!\n\
             wait $child\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, log)
}

/// A repository of the test chart, a Pack of it, and pack-controller `identity` with the slow helm.
struct SlowHelmFixture {
    env: e2e::TestEnv,
    ns: e2e::cluster::TestNamespace,
    client: kube::Client,
    repo: e2e::packs::ServedRepository,
    helm: std::path::PathBuf,
    helm_log: std::path::PathBuf,
}

async fn slow_helm_fixture(prefix: &str, after_term: Duration) -> SlowHelmFixture {
    let env = test_env();
    let ns = env.namespace(prefix).await;
    let client = env.client().await;
    let repo =
        e2e::packs::served_repository(&client, &ns.name, &format!("{}-repo", ns.name), &["0.1.0"])
            .await;
    let fake_helm = repo.server.dir.parent().unwrap().join("fake-helm");
    let (helm, helm_log) = slow_helm(&fake_helm, after_term);
    e2e::packs::create_genpack_pack(
        &client,
        &ns.name,
        "slow",
        &repo.name,
        None,
        serde_json::Value::Null,
    )
    .await;
    SlowHelmFixture {
        env,
        ns,
        client,
        repo,
        helm,
        helm_log,
    }
}

impl SlowHelmFixture {
    fn start(&self, identity: &str, extra: &[&str]) -> ControllerProcess {
        let helm = format!("--helm-binary={}", self.helm.display());
        let mut args = vec![helm.as_str()];
        args.extend_from_slice(extra);
        e2e::packs::start_pack_controller(&self.env, &self.ns.name, identity, &args)
    }

    fn helm_log(&self) -> String {
        std::fs::read_to_string(&self.helm_log).unwrap_or_default()
    }

    /// Waits until the slow helm runs (for the Pack); its pid.
    async fn helm_started(&self, controller: &ControllerProcess) -> i32 {
        wait::until(
            "the slow helm runs",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                let log = self.helm_log();
                match log.lines().find_map(|l| l.strip_prefix("started ")) {
                    Some(pid) => Ok(Some(pid.trim().parse::<i32>().unwrap())),
                    None => Err(format!(
                        "helm log {log:?}; controller log:\n{}",
                        controller.logs()
                    )),
                }
            },
        )
        .await
    }

    fn leases(&self) -> Api<Lease> {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }
}

/// Whether process `pid` still runs (a zombie does not count).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_keeps_the_lease_renewed_while_helm_winds_down_then_hands_over() {
    // Helm takes more than twice the lease duration to end after SIGTERM: without renewals the Lease
    // would expire and the standby start while the old leader's Helm still runs.
    let after_term = 2 * PACK_LEASE + Duration::from_secs(1);
    let f = slow_helm_fixture("le-grace", after_term).await;
    let mut a = f.start("grace-a", &[]);
    wait_single_leader(&[&a], Duration::from_secs(30)).await;
    let helm_pid = f.helm_started(&a).await;
    let b = f.start("grace-b", &[]);
    wait_single_leader(&[&a, &b], Duration::from_secs(30)).await;
    let leases = f.leases();
    let before = leases.get("pack").await.unwrap().spec.unwrap();
    assert_eq!(before.holder_identity.as_deref(), Some("grace-a"));

    a.terminate();
    let sent = Instant::now();
    // While helm winds down the old leader still holds and renews the Lease, and still serves its
    // metrics (it leads); the standby stays a standby.
    wait::holds(
        "the old leader holds the Lease while its helm ends",
        after_term - Duration::from_secs(1),
        Duration::from_millis(100),
        || async {
            let holder = holder(&leases, "pack").await;
            let standby = leader_flag(&b).await;
            let draining = leader_flag(&a).await;
            if holder.as_deref() == Some("grace-a")
                && standby == Some(0.0)
                && draining == Some(1.0)
            {
                Ok(())
            } else {
                Err(format!(
                    "holder {holder:?}, standby's leader flag {standby:?}, old leader's {draining:?}\n{}",
                    a.logs()
                ))
            }
        },
    )
    .await;
    assert!(
        a.wait_exit(Duration::ZERO).await.is_none(),
        "the old leader still runs"
    );
    let during = leases.get("pack").await.unwrap().spec.unwrap();
    let renewed_for = during
        .renew_time
        .unwrap()
        .0
        .duration_since(before.renew_time.unwrap().0);
    assert!(
        renewed_for
            >= k8s_openapi::jiff::SignedDuration::try_from(PACK_LEASE + Duration::from_secs(1))
                .unwrap(),
        "the Lease was renewed until {renewed_for:?} after its last renewal before SIGTERM; without renewals it would have expired {PACK_LEASE:?} after it"
    );
    assert!(
        running(helm_pid) || f.helm_log().contains("exit"),
        "helm was not killed"
    );

    // Helm ends by itself (SIGTERM, not SIGKILL), the old leader exits 0 having released the Lease, and
    // the standby takes over at once.
    let status = a
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the old leader exits");
    let exited = sent.elapsed();
    assert!(status.success(), "exit {status}; logs:\n{}", a.logs());
    let log = f.helm_log();
    assert!(
        log.contains("term") && log.contains("exit"),
        "helm got SIGTERM and ended by itself: {log:?}"
    );
    assert!(
        exited >= after_term,
        "the leader exited {exited:?} after SIGTERM, before its helm ended ({after_term:?})"
    );
    assert!(
        a.logs().contains("released the leader-election Lease"),
        "logs:\n{}",
        a.logs()
    );
    wait::until(
        "the standby takes over",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            match leader_flag(&b).await {
                Some(1.0) => Ok(Some(())),
                other => Err(other),
            }
        },
    )
    .await;
    let took_over = sent.elapsed() - exited;
    let after = leases.get("pack").await.unwrap().spec.unwrap();
    assert_eq!(after.holder_identity.as_deref(), Some("grace-b"));
    assert_eq!(
        after.lease_transitions,
        Some(before.lease_transitions.unwrap_or(0) + 1)
    );
    eprintln!(
        "SIGTERM with a slow helm: old leader exited after {exited:?}, standby led {took_over:?} later"
    );
    drop(b);
    drop(f.repo);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_a_lease_taken_meanwhile_stops_before_it_could_expire() {
    // Helm would take 30 s and the grace allows 60 s, but the Lease cannot be kept: the leader must stop
    // (killing helm) within the lease duration of its last renewal.
    let f = slow_helm_fixture("le-grace-lost", Duration::from_secs(30)).await;
    let mut a = f.start("grace-c", &["--shutdown-grace=60s"]);
    wait_single_leader(&[&a], Duration::from_secs(30)).await;
    let helm_pid = f.helm_started(&a).await;
    a.terminate();
    // A renewal or two during the drain, then another party takes the Lease.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        a.wait_exit(Duration::ZERO).await.is_none(),
        "still winding down"
    );
    let leases = f.leases();
    let mut lease = leases.get("pack").await.unwrap();
    let spec = lease.spec.as_mut().unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("grace-c"));
    spec.holder_identity = Some("someone-else".into());
    spec.lease_duration_seconds = Some(3600);
    leases
        .replace("pack", &PostParams::default(), &lease)
        .await
        .unwrap();
    let taken = Instant::now();
    let status = a
        .wait_exit(PACK_LEASE + Duration::from_secs(3))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the leader did not stop after losing the Lease; logs:\n{}",
                a.logs()
            )
        });
    let took = taken.elapsed();
    assert!(status.success(), "exit {status}; logs:\n{}", a.logs());
    assert!(
        took <= PACK_LEASE + Duration::from_millis(500),
        "stopped {took:?} after the Lease was taken; its last renewal was before that, so it had at most {PACK_LEASE:?}"
    );
    assert!(
        a.logs().contains("cannot keep the Lease while stopping"),
        "logs:\n{}",
        a.logs()
    );
    // Helm was killed with the controller, not left to end by itself.
    let log = f.helm_log();
    assert!(log.contains("term") && !log.contains("exit"), "{log:?}");
    wait::until(
        "helm gone",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            if running(helm_pid) {
                Err(helm_pid)
            } else {
                Ok(Some(()))
            }
        },
    )
    .await;
    assert_eq!(
        holder(&leases, "pack").await.as_deref(),
        Some("someone-else")
    );
    drop(f.repo);
}
